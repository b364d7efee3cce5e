//! `lbtrace check`: the 4-step checklist, once.
//!
//! Attach the tracer, probe every backend (and the VIP) from the LB host, watch real client
//! connections for the observation window, then judge (`verdict`) and report (`report`).
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
    probe::{self, HttpSpec, ProbeReport, ProbeSpec, TcpOutcome, TlsSpec},
    render::Clock,
    session,
};
use observe::ProbeResults;
use verdict::{Facts, ProbeFacts, Status, TcpResult};

/// Everything a check collected, for the report.
pub struct Collected {
    /// The kernel events kept, in time order.
    pub events: Vec<KernelEvent>,
    pub probes: Vec<ProbeReport>,
    pub vip_probe: Option<ProbeReport>,
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
        tcp,
        why,
        http_status,
    }
}

/// The probes' reports reduced to what the verdict engine uses.
pub struct ProbeSet {
    pub backends: Vec<ProbeFacts>,
    pub vip: Option<ProbeFacts>,
}

impl ProbeSet {
    pub fn of(backends: &[ProbeReport], vip: Option<&ProbeReport>) -> Self {
        Self {
            backends: backends.iter().map(facts_of).collect(),
            vip: vip.map(facts_of),
        }
    }
}

/// The facts the verdict engine judges, from the arguments, the probes and the events so far.
pub fn facts<'a>(
    args: &'a CheckArgs,
    probes: &'a ProbeSet,
    events: &'a [KernelEvent],
    window: Duration,
    reasons: &'a DropReasons,
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
        reasons,
        host,
    }
}

fn spec(args: &CheckArgs, target: SocketAddr, is_vip: bool) -> ProbeSpec {
    let host = args
        .host
        .clone()
        .unwrap_or_else(|| match args.sni.as_ref() {
            Some(s) if is_vip => s.clone(),
            _ => target.ip().to_string(),
        });
    ProbeSpec {
        target,
        timeout: args.probe_timeout,
        tls: (is_vip && args.tls).then(|| TlsSpec {
            sni: args.sni.clone(),
        }),
        http: (!args.no_http).then(|| HttpSpec {
            path: args.http_path.clone(),
            host,
        }),
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

/// Starts every probe (backends concurrently, then the VIP); their SYNs are in the kernel
/// events too.
fn spawn_probes(args: &CheckArgs, vip: SocketAddr) -> JoinHandle<ProbeResults> {
    let backend_specs: Vec<ProbeSpec> = args
        .backend
        .iter()
        .map(|b| spec(args, SocketAddr::new(b.addr, b.port.unwrap_or(0)), false))
        .collect();
    let vip_spec = spec(args, vip, true);
    tokio::spawn(async move {
        let backend = futures_join(backend_specs).await;
        let vip = probe::run(&vip_spec).await;
        (backend, vip)
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
        window: started.elapsed(),
        counters: tracer.counters(),
        data_drops: tracer.data_drop_reasons(),
        capabilities: session::Capabilities::of(&tracer, &cfg),
        host: verdict::HostFacts {
            before: host_before,
            after: host_after,
        },
    };
    let probes = ProbeSet::of(&collected.probes, collected.vip_probe.as_ref());
    let v = verdict::judge(&facts(
        &args,
        &probes,
        &collected.events,
        collected.window,
        &reasons,
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

/// Runs the probes concurrently; the reports come back in the order of `specs`.
async fn futures_join(specs: Vec<ProbeSpec>) -> Vec<ProbeReport> {
    let handles: Vec<_> = specs
        .iter()
        .cloned()
        .map(|s| tokio::spawn(async move { probe::run(&s).await }))
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
