//! `lbtrace check`: the 4-step checklist, once.
//!
//! Attach the tracer, probe every backend (and the VIP) from the LB host, watch real client
//! connections for the observation window, then judge (`verdict`) and report (`report`).
//! Exit codes: 0 no step fails and none is unknown; 1 a step fails; 3 none fails, some unknown;
//! 2 the check could not run.

pub mod report;
pub mod verdict;

use std::{future::Future, net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result, bail};

use crate::{
    cli::{CheckArgs, FilterArgs},
    event::KernelEvent,
    kernel::{self, Tracer},
    probe::{self, HttpSpec, ProbeReport, ProbeSpec, TcpOutcome, TlsSpec},
    render::Clock,
    session,
};
use verdict::{Facts, ProbeFacts, Status, TcpResult};

/// Everything a check collected, for the report.
pub struct Collected {
    pub events: Vec<KernelEvent>,
    pub probes: Vec<ProbeReport>,
    pub vip_probe: Option<ProbeReport>,
    pub window: Duration,
    pub counters: kernel::counters::Counters,
    pub data_drops: Vec<(String, u64)>,
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

/// Ends the observation early once every step has its verdict and all pass.
fn all_pass(f: &Facts<'_>) -> bool {
    let v = verdict::judge(f);
    v.steps.iter().all(|s| s.status == Status::Pass)
}

pub async fn run(args: CheckArgs, shutdown: impl Future<Output = ()>) -> Result<u8> {
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
    kernel::preflight::check()?;
    let filter = FilterArgs {
        vip: vec![vip],
        backend: args.backend.clone(),
        iface: args.iface.clone(),
        xdp: args.xdp,
        ring_size: 8,
    };
    let cfg = session::tracer_config(&filter)?;
    let mut tracer = Tracer::start(&cfg)?;
    let mut rings = tracer.rings()?;
    session::announce(&tracer);
    session::write_ready_file(args.ready_file.as_deref())?;

    // The probes run while the window is open; their SYNs are in the kernel events too.
    let backend_specs: Vec<ProbeSpec> = args
        .backend
        .iter()
        .map(|b| spec(&args, SocketAddr::new(b.addr, b.port.unwrap_or(0)), false))
        .collect();
    let vip_spec = spec(&args, SocketAddr::new(vip.addr, vip_port), true);
    let probes = tokio::spawn(async move {
        let backend = futures_join(backend_specs).await;
        let vip = probe::run(&vip_spec).await;
        (backend, vip)
    });

    let who = args
        .client
        .map_or_else(String::new, |c| format!(" from {c}"));
    eprintln!(
        "lbtrace: waiting for client connections to {vip}{who} - connect from a client in another subnet now (telnet {} {vip_port}); observing for {}",
        vip.addr,
        humantime::format_duration(args.observe)
    );
    let clock = Clock::new();
    let started = tokio::time::Instant::now();
    let mut events: Vec<KernelEvent> = Vec::new();
    let mut decode_errors = 0;
    let mut probes_done: Option<(Vec<ProbeReport>, ProbeReport)> = None;
    let mut probes = Some(probes);
    let mut last_progress = started;
    let reasons = tracer.reasons.clone();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep_until(started + args.observe) => break,
            r = async { probes.as_mut().expect("polled only while pending").await }, if probes.is_some() => {
                probes = None;
                probes_done = Some(r.context("the probe task failed")?);
            }
            () = rings.wait() => {
                events.extend(session::drain(&mut rings, &mut decode_errors));
            }
        }
        if last_progress.elapsed() >= Duration::from_secs(2) {
            last_progress = tokio::time::Instant::now();
            let vip_sa = SocketAddr::new(vip.addr, vip_port);
            let syns = events
                .iter()
                .filter(|e| {
                    e.dst == vip_sa
                        && e.flags & lbtrace_common::tcp_flag::SYN != 0
                        && e.flags & lbtrace_common::tcp_flag::ACK == 0
                })
                .count();
            eprintln!(
                "lbtrace: {:>3.0} s: {syns} client SYN(s) to {vip} so far, backend probes {}",
                started.elapsed().as_secs_f64(),
                if probes_done.is_some() {
                    "done"
                } else {
                    "running"
                }
            );
        }
        if let Some((bp, vp)) = &probes_done {
            let facts: Vec<ProbeFacts> = bp.iter().map(facts_of).collect();
            let vf = facts_of(vp);
            let f = Facts {
                vip,
                backends: &args.backend,
                client: args.client,
                events: &events,
                probes: &facts,
                vip_probe: Some(&vf),
                window_secs: started.elapsed().as_secs_f64(),
                reasons: &reasons,
            };
            if all_pass(&f) {
                break;
            }
        }
    }
    // Probes still running when the window closes are given their own timeout to finish.
    if let Some(p) = probes.take() {
        probes_done = Some(p.await.context("the probe task failed")?);
    }
    tracer.detach();
    events.extend(session::drain(&mut rings, &mut decode_errors));
    events.sort_by_key(|e| e.ts_ns);
    let (probe_reports, vip_probe) = probes_done.context("probes did not run")?;
    let collected = Collected {
        events,
        probes: probe_reports,
        vip_probe: Some(vip_probe),
        window: started.elapsed(),
        counters: tracer.counters(),
        data_drops: tracer.data_drop_reasons(),
    };
    let facts: Vec<ProbeFacts> = collected.probes.iter().map(facts_of).collect();
    let vip_facts = collected.vip_probe.as_ref().map(facts_of);
    let f = Facts {
        vip,
        backends: &args.backend,
        client: args.client,
        events: &collected.events,
        probes: &facts,
        vip_probe: vip_facts.as_ref(),
        window_secs: collected.window.as_secs_f64(),
        reasons: &reasons,
    };
    let v = verdict::judge(&f);
    if let Some(path) = &args.pcap {
        let mut file = std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        );
        let evs: Vec<&KernelEvent> = collected.events.iter().collect();
        crate::pcap::write(&mut file, &evs, &clock)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "lbtrace: wrote {} packets of evidence to {}",
            evs.len(),
            path.display()
        );
    }
    let mut ifnames = crate::render::IfNames::default();
    for l in &cfg.ifaces {
        ifnames.insert(l.ifindex, l.name.clone());
    }
    let ctx = report::Ctx {
        vip,
        collected: &collected,
        verdict: &v,
        clock: &clock,
        reasons: &reasons,
        ifnames,
    };
    report::print(ctx, args.format);
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
        out.push(h.await.unwrap_or_else(|e| ProbeReport {
            target: s.target,
            local: None,
            started_ns: 0,
            ended_ns: 0,
            tcp: TcpOutcome::Error {
                error: format!("the probe task failed: {e}"),
            },
            tls: None,
            http: None,
        }));
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
