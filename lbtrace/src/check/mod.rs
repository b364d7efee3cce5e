//! `lbtrace check`: the 4-step checklist, once.
//!
//! Attach the tracer, probe every backend (and the VIP) from the LB host, watch real client
//! connections for the observation window, then judge (`verdict`) and report (`report`).
//!
//! Each target is probed `--probe-count` times ([`probe::series`]), one probe after the other
//! [`PROBE_GAP`] apart; the targets (every backend and the VIP) are probed in parallel, so the
//! probes take at most `count x 3 x --probe-timeout + (count - 1) x PROBE_GAP` however many
//! backends there are.
//! Exit codes: 0 no step fails and none is unknown; 1 a step fails; 3 none fails, some unknown;
//! 2 the check could not run.

pub mod observe;
pub mod report;
pub mod verdict;

use std::{future::Future, net::SocketAddr, path::Path, time::Duration};

use anyhow::{Context as _, Result, bail};
use tokio::task::JoinHandle;

use crate::{
    cli::{CheckArgs, DEFAULT_RING_MIB, FilterArgs},
    event::KernelEvent,
    kernel::{self, Tracer, btf::DropReasons},
    probe::{
        self, ProbeReport, ProbeSpec, TcpOutcome,
        series::{self, Summary},
    },
    render::Clock,
    session,
};
use observe::ProbeResults;
use verdict::{Facts, ProbeFacts, Status, TcpResult};

/// Everything a check collected, for the report.
pub struct Collected {
    /// The kernel events kept, in time order.
    pub events: Vec<KernelEvent>,
    /// Each backend's series of probes, in `--backend` order.
    pub probes: Vec<Vec<ProbeReport>>,
    /// The VIP's series of probes from the LB host.
    pub vip_probe: Option<Vec<ProbeReport>>,
    /// `--slow`.
    pub slow: Duration,
    pub window: Duration,
    pub counters: kernel::counters::Counters,
    pub data_drops: Vec<(String, u64)>,
    /// The most events a check keeps ([`observe::MAX_EVENTS`]).
    pub events_cap: usize,
    /// Events that arrived once `events_cap` were kept.
    pub events_not_kept: u64,
    /// Records the rings held that did not decode (should be 0).
    pub decode_errors: u64,
    /// The LB host's limits before and after the window.
    pub host: verdict::HostFacts,
    /// How the kernel side traced (the report's `capabilities`).
    pub capabilities: session::Capabilities,
    /// The tcp_info of the LB's connections that looked stalled during the window (step 4).
    pub tcp_info: Vec<observe::TcpInfoSnapshot>,
}

/// The time between two probes of one target.
pub const PROBE_GAP: Duration = Duration::from_millis(200);

/// The probe of a series that speaks for it in the verdict and the report, its worst: the first
/// whose TCP connect failed, else the first that got no HTTP answer, else the first answered with
/// a 5xx, else the first. `None` for an empty series.
pub fn representative(series: &[ProbeReport]) -> Option<&ProbeReport> {
    series
        .iter()
        .find(|p| !matches!(p.tcp, TcpOutcome::Connected { .. }))
        .or_else(|| {
            series.iter().find(|p| {
                p.http
                    .as_ref()
                    .is_some_and(|h| !matches!(h, probe::HttpOutcome::Response { .. }))
            })
        })
        .or_else(|| {
            series.iter().find(|p| {
                matches!(p.http, Some(probe::HttpOutcome::Response { status, .. }) if status >= 500)
            })
        })
        .or_else(|| series.first())
}

/// A series of probes reduced to what the verdict engine uses: the TCP result of its
/// [`representative`], the local port of every probe, and the series' [`Summary`].
pub fn series_facts(series: &[ProbeReport], slow: Duration) -> Option<ProbeFacts> {
    let mut f = facts_of(representative(series)?);
    f.ports = series
        .iter()
        .filter_map(|p| p.local.map(|l| l.port()))
        .collect();
    f.series = Some(series::judge(series, slow));
    Some(f)
}

pub fn facts_of(p: &ProbeReport) -> ProbeFacts {
    let (tcp, why) = match &p.tcp {
        TcpOutcome::Connected { .. } => (TcpResult::Connected, None),
        TcpOutcome::Refused { .. } => (TcpResult::Refused, None),
        TcpOutcome::Timeout { .. } => (TcpResult::Timeout, None),
        TcpOutcome::Unreachable { why, .. } => (TcpResult::Unreachable, Some(why.clone())),
        TcpOutcome::Error { error } => (TcpResult::Error, Some(error.clone())),
    };
    let http_status = match &p.http {
        Some(probe::HttpOutcome::Response { status, .. }) => Some(*status),
        _ => None,
    };
    ProbeFacts {
        target: p.target,
        local_port: p.local.map(|l| l.port()),
        ports: p.local.map(|l| l.port()).into_iter().collect(),
        tcp,
        why,
        http_status,
        series: None,
    }
}

/// The probes' reports reduced to what the verdict engine uses.
pub struct ProbeSet {
    pub backends: Vec<ProbeFacts>,
    pub vip: Option<ProbeFacts>,
}

impl ProbeSet {
    /// Backends whose series is empty (none is: a series has at least one probe) are left out.
    pub fn of(backends: &[Vec<ProbeReport>], vip: Option<&[ProbeReport]>, slow: Duration) -> Self {
        Self {
            backends: backends
                .iter()
                .filter_map(|s| series_facts(s, slow))
                .collect(),
            vip: vip.and_then(|s| series_facts(s, slow)),
        }
    }
}

/// A series' summary, for the report.
pub fn summary_of(series: &[ProbeReport], slow: Duration) -> Option<Summary> {
    (!series.is_empty()).then(|| series::judge(series, slow))
}

/// The facts the verdict engine judges, from the arguments, the probes and the events so far.
pub fn facts<'a>(
    args: &'a CheckArgs,
    probes: &'a ProbeSet,
    events: &'a [KernelEvent],
    window: Duration,
    reasons: &'a DropReasons,
    resets: Option<crate::kernel::loader::ResetMode>,
    host: Option<&'a verdict::HostFacts>,
) -> Facts<'a> {
    Facts {
        vip: args.vip,
        backends: &args.backend,
        client: args.client,
        events,
        probes: &probes.backends,
        vip_probe: probes.vip.as_ref(),
        window_secs: window.as_secs_f64(),
        slow: args.probe.slow,
        reasons,
        resets,
        host,
    }
}

/// The VIP as ADDR:PORT; the arguments check needs and `clap` cannot check.
fn vip_addr(args: &CheckArgs) -> Result<SocketAddr> {
    let vip = args.vip;
    let Some(vip_port) = vip.port else {
        bail!(
            "--vip {vip} has no port: check needs ADDR:PORT, e.g. {}:80",
            vip.addr
        );
    };
    if let Some(b) = args.backend.iter().find(|b| b.port.is_none()) {
        bail!("--backend {b} has no port: check probes backends, give ADDR:PORT");
    }
    Ok(SocketAddr::new(vip.addr, vip_port))
}

/// Starts every series of probes (the backends and the VIP concurrently, each series one probe
/// after the other); their SYNs are in the kernel events too.
fn spawn_probes(args: &CheckArgs, vip: SocketAddr) -> JoinHandle<ProbeResults> {
    let mut specs: Vec<ProbeSpec> = args
        .backend
        .iter()
        .map(|b| {
            args.probe
                .spec(SocketAddr::new(b.addr, b.port.unwrap_or(0)), false)
        })
        .collect();
    specs.push(args.probe.spec(vip, true));
    let count = args.probe_count;
    tokio::spawn(async move {
        let mut all = futures_join(specs, count).await;
        let vip = all.pop().unwrap_or_default();
        (all, vip)
    })
}

/// Writes the kept events to a pcap file for the teams who own the network.
fn write_pcap(path: &Path, events: &[KernelEvent], clock: &Clock) -> Result<()> {
    let evs: Vec<&KernelEvent> = events.iter().collect();
    crate::pcap::write_file(path, &evs, clock)
        .with_context(|| format!("--pcap {}", path.display()))?;
    eprintln!(
        "lbtrace: wrote {} packets of evidence to {}",
        evs.len(),
        path.display()
    );
    Ok(())
}

pub async fn run(args: CheckArgs, shutdown: impl Future<Output = ()>) -> Result<u8> {
    let vip = vip_addr(&args)?;
    kernel::preflight::check()?;
    // Every file is checked before anything is loaded.
    session::check_ready_file(args.ready_file.as_deref())?;
    if let Some(p) = &args.pcap {
        crate::files::check_target(p).with_context(|| format!("--pcap {}", p.display()))?;
    }
    let filter = FilterArgs {
        vip: vec![args.vip],
        backend: args.backend.clone(),
        iface: args.iface.clone(),
        xdp: args.xdp,
        data: args.data,
        ring_size: DEFAULT_RING_MIB,
    };
    let cfg = session::tracer_config(&filter)?;
    let mut tracer = Tracer::start(&cfg)?;
    let mut rings = tracer.rings()?;
    session::announce(&tracer);
    session::write_ready_file(args.ready_file.as_deref())?;
    // The host's limits before the window: what moves until the second sample is evidence.
    let host_ifaces: Vec<String> = cfg.ifaces.iter().map(|l| l.name.clone()).collect();
    let sample_host = {
        let (vips, backends) = (vec![args.vip], args.backend.clone());
        move || crate::host::sample(&vips, &backends, &host_ifaces)
    };
    let host_before = sample_host();
    let probes = spawn_probes(&args, vip);

    let who = args
        .client
        .map_or_else(String::new, |c| format!(" from {c}"));
    eprintln!(
        "lbtrace: waiting for client connections to {}{who} - connect from a client in another subnet now (telnet {} {}); observing for {}",
        args.vip,
        vip.ip(),
        vip.port(),
        humantime::format_duration(args.observe)
    );
    let clock = Clock::new();
    let started = tokio::time::Instant::now();
    let reasons = tracer.reasons.clone();
    let mut decode_errors = 0;
    let observed = observe::observe(
        &args,
        vip,
        started,
        &mut rings,
        probes,
        &reasons,
        &mut decode_errors,
        shutdown,
    )
    .await?;
    // Probes still running when the window closes are given their own timeout to finish.
    let (probe_reports, vip_probe) = match (observed.probes, observed.pending) {
        (Some(done), _) => done,
        (None, Some(p)) => p.await.context("the probe task failed")?,
        (None, None) => bail!("probes did not run"),
    };
    let tcp_info = observed.stalls.finish().await;
    let host_after = sample_host();
    tracer.detach();
    let mut log = observed.log;
    log.extend(session::drain(&mut rings, &mut decode_errors));
    let collected = Collected {
        events_cap: log.cap(),
        events_not_kept: log.not_kept(),
        decode_errors,
        events: log.into_sorted(),
        probes: probe_reports,
        vip_probe: Some(vip_probe),
        slow: args.probe.slow,
        window: started.elapsed(),
        counters: tracer.counters(),
        data_drops: tracer.data_drop_reasons(),
        capabilities: session::Capabilities::of(&tracer, &cfg),
        tcp_info,
        host: verdict::HostFacts {
            before: host_before,
            after: host_after,
        },
    };
    let probes = ProbeSet::of(
        &collected.probes,
        collected.vip_probe.as_deref(),
        collected.slow,
    );
    let v = verdict::judge(&facts(
        &args,
        &probes,
        &collected.events,
        collected.window,
        &reasons,
        tracer.resets,
        Some(&collected.host),
    ));
    let mut ifnames = crate::render::IfNames::default();
    for l in &cfg.ifaces {
        ifnames.insert(l.ifindex, l.name.clone());
    }
    let ctx = report::Ctx {
        vip: args.vip,
        collected: &collected,
        verdict: &v,
        clock: &clock,
        reasons: &reasons,
        ifnames,
    };
    report::print(ctx, args.format);
    // After the report: a capture that cannot be written must not cost the verdict.
    if let Some(path) = &args.pcap {
        write_pcap(path, &collected.events, &clock)?;
    }
    Ok(exit_code(&v))
}

/// Runs a series of `count` probes of each spec, the series concurrently; they come back in
/// the order of `specs`.
async fn futures_join(specs: Vec<ProbeSpec>, count: u32) -> Vec<Vec<ProbeReport>> {
    let handles: Vec<_> = specs
        .iter()
        .cloned()
        .map(|s| tokio::spawn(async move { series::run_series(&s, count, PROBE_GAP).await }))
        .collect();
    let mut out = Vec::with_capacity(handles.len());
    for (h, s) in handles.into_iter().zip(specs) {
        match h.await {
            Ok(r) => out.push(r),
            // A bug in lbtrace is never a verdict about a backend: the panic goes on up and
            // ends the check with an error (exit 2).
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("the probe of {} was cancelled: {e}", s.target),
        }
    }
    out
}

/// 0: no step fails and none is unknown; 1: a step fails; 3: none fails, some unknown.
pub fn exit_code(v: &verdict::Verdict) -> u8 {
    if v.first_failed_step.is_some() {
        1
    } else if v.steps.iter().any(|s| s.status == Status::Unknown) {
        3
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::HttpOutcome;

    fn probe(tcp: TcpOutcome, status: Option<u16>) -> ProbeReport {
        ProbeReport {
            target: "10.0.0.2:8080".parse().unwrap(),
            local: Some("10.0.0.1:40000".parse().unwrap()),
            started_ns: 0,
            ended_ns: 0,
            tcp,
            tls: None,
            http: status.map(|status| HttpOutcome::Response {
                status,
                reason: String::new(),
                ttfb_ms: 1.0,
                server: None,
            }),
        }
    }

    #[test]
    fn the_worst_probe_speaks_for_its_series() {
        let ok = probe(TcpOutcome::Connected { connect_ms: 0.2 }, Some(200));
        let err = probe(TcpOutcome::Connected { connect_ms: 0.2 }, Some(503));
        let refused = probe(TcpOutcome::Refused { after_ms: 0.1 }, None);
        let status =
            |s: &[ProbeReport]| representative(s).map(|p| (p.tcp.name(), facts_of(p).http_status));
        assert_eq!(
            status(&[ok.clone(), err.clone()]),
            Some(("connected", Some(503)))
        );
        assert_eq!(status(&[ok.clone(), err, refused]), Some(("refused", None)));
        assert_eq!(
            status(std::slice::from_ref(&ok)),
            Some(("connected", Some(200)))
        );
        assert_eq!(status(&[]), None);
        let f = series_facts(&[ok.clone(), ok], Duration::from_secs(1)).unwrap();
        assert_eq!(f.ports, vec![40000, 40000]);
        assert_eq!(f.series.map(|s| s.probes), Some(2));
    }
}
