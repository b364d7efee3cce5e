//! The tripwire's main loop: drain the rings into the flight recorder, turn findings into alerts,
//! and answer `dump`, metrics scrapes and SIGUSR1 from the same loop (the recorder has one owner,
//! no locks).

use std::{
    collections::BTreeMap,
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result};
use serde_json::json;
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
};

use super::{
    alerts::{Alerts, Notice, Thresholds},
    history::{self, Query, Render},
    metrics::{self, Labels, Snapshot},
    on_alert::OnAlert,
    probes::{self, Prober},
    recorder::{self, Evidence, Finding, OwnFinding, Recorder},
    replies::{Judged, ReplyWatch},
    socket::{self, DumpRequest},
};
use crate::{
    check::verdict::ProbeFacts,
    cli::WatchArgs,
    event::{Detail, KernelEvent},
    files, host,
    kernel::{self, Tracer},
    probe::series::Health,
    render::{self, Clock, Format, IfNames},
    replies::Reply,
    session::{self, Output},
};

/// Lines of stdout (alerts, health, `--events`) that may wait for a slow reader; beyond that they
/// are dropped and counted.
const STDOUT_QUEUE: usize = 16 * 1024;
/// Lines of lbtrace's own log (stderr) that may wait likewise.
const STDERR_QUEUE: usize = 1024;

/// Per-VIP tallies for the health line and the metrics.
#[derive(Default)]
struct Tally {
    failures: BTreeMap<(SocketAddr, u8), u64>,
    findings: BTreeMap<String, u64>,
    drops: BTreeMap<String, u64>,
}

struct Loop {
    out: Output,
    host: tokio::sync::watch::Receiver<Option<host::Sample>>,
    /// The host sample the last pressure was computed against.
    host_prev: Option<host::Sample>,
    log: Arc<Output>,
    labels: Labels,
    format: Format,
    clock: Clock,
    ifnames: IfNames,
    tracer: Tracer,
    /// How `tracer` traces, in every JSON health line.
    capabilities: session::Capabilities,
    rec: Recorder,
    alerts: Alerts,
    /// The alerts and recoveries printed, for `dump`.
    notices: history::Notices,
    on_alert: Option<OnAlert>,
    tally: Tally,
    show_events: bool,
    /// The background probes; `None` with `--probe-interval 0` or no backend port.
    prober: Option<Prober>,
    /// The backends' replies on the wire; `None` without `--data`.
    replies: Option<ReplyWatch>,
}

impl Loop {
    fn print(&self, line: &str) {
        self.out.line(line);
    }

    fn notice(&mut self, n: Notice) {
        let (line, json) = match &n {
            Notice::Alert(a) => {
                let j = json!({"type": "alert", "time": self.clock.rfc3339(Clock::monotonic_ns()), "alert": a});
                let eg = match (&a.example_client, &a.example_vip) {
                    (Some(c), Some(v)) => format!(
                        ", e.g. {c} > {v}{}",
                        a.example_backend
                            .as_ref()
                            .map(|b| format!(" via {b}"))
                            .unwrap_or_default()
                    ),
                    _ => String::new(),
                };
                let count = if a.window_seconds > 0 {
                    format!(" ({} in {} s{eg})", a.count, a.window_seconds)
                } else {
                    String::new()
                };
                (
                    format!(
                        "ALERT step {} {}: {}{count}",
                        a.step, a.step_name, a.message
                    ),
                    j,
                )
            }
            Notice::Recovered(r) => (
                format!(
                    "RECOVERED step {} {}: {} ({} findings over {:.0} s)",
                    r.step, r.step_name, r.message, r.total, r.active_seconds
                ),
                json!({"type": "recovered", "time": self.clock.rfc3339(Clock::monotonic_ns()), "recovered": r}),
            ),
        };
        match self.format {
            Format::Json => self.print(&json.to_string()),
            Format::Text => self.print(&format!(
                "{} {line}",
                self.clock.rfc3339(Clock::monotonic_ns())
            )),
        }
        if let (Notice::Alert(_), Some(oa)) = (&n, self.on_alert.as_mut()) {
            oa.run(&json.to_string());
        }
        self.notices.push(Clock::monotonic_ns(), json);
    }

    fn findings(&mut self, now: u64, found: Vec<(u64, Finding)>) {
        for (id, f) in found {
            // Borrow the recorded connection, don't copy it: the borrow ends before `notice`.
            let Some(conn) = self.rec.conn(id) else {
                continue;
            };
            *self.tally.findings.entry(f.alert_key()).or_default() += 1;
            if conn.findings.len() == 1 {
                *self.tally.failures.entry((conn.vip, f.step())).or_default() += 1;
            }
            if let Some(n) = self.alerts.record(now, conn, &f) {
                self.notice(n);
            }
        }
    }

    fn ingest(&mut self, evs: Vec<KernelEvent>) {
        for ev in evs {
            if self.show_events {
                let line = match self.format {
                    Format::Json => render::event_json(
                        &ev,
                        &self.clock,
                        &mut self.ifnames,
                        &self.tracer.reasons,
                    )
                    .to_string(),
                    Format::Text => render::event_text(
                        &ev,
                        &self.clock,
                        &mut self.ifnames,
                        &self.tracer.reasons,
                        None,
                    ),
                };
                self.print(&line);
            }
            if let Detail::Drop { reason } = ev.detail {
                *self
                    .tally
                    .drops
                    .entry(self.tracer.reasons.name(reason))
                    .or_default() += 1;
            }
            let found = self.rec.ingest(&ev);
            self.findings(ev.ts_ns, found);
            self.own_findings(ev.ts_ns);
            self.reply(&ev);
        }
    }

    /// `--data`: a backend's reply on the wire (not a probe's), judged with its latest ones.
    fn reply(&mut self, ev: &KernelEvent) {
        let Some(r) = Reply::of(ev) else { return };
        if self.rec.is_probe(r.to, r.from, r.ts_ns) {
            return;
        }
        let Some(judged) = self.replies.as_mut().and_then(|w| w.reply(r)) else {
            return;
        };
        match judged {
            Judged::Degraded(finding) => {
                *self.tally.findings.entry(finding.alert_key()).or_default() += 1;
                let o = OwnFinding {
                    lb: r.to,
                    finding,
                    evidence: Evidence::Traffic,
                };
                if let Some(n) = self.alerts.own(r.ts_ns, &o) {
                    self.notice(n);
                }
            }
            Judged::Fine(backend) => {
                for n in self.alerts.replies_fine(r.ts_ns, backend) {
                    self.notice(n);
                }
            }
        }
    }

    /// Findings on the LB's own backend connections with no client connection behind them.
    fn own_findings(&mut self, now: u64) {
        for o in self.rec.take_own() {
            *self
                .tally
                .findings
                .entry(o.finding.alert_key())
                .or_default() += 1;
            if let Some(n) = self.alerts.own(now, &o) {
                self.notice(n);
            }
        }
    }

    /// Starts a probe of each backend not being probed.
    fn probe_round(&mut self) {
        if let Some(p) = self.prober.as_mut() {
            let rec = &mut self.rec;
            p.round(|target| rec.probe_started(target));
        }
    }

    /// A probe's report: a backend's finding (evidence `probe`), or, connected, the backend's
    /// step-3 alerts about connecting recover; judged with its last probes, the findings of a
    /// backend or a VIP serving badly, or their recovery.
    fn probe_done(&mut self, d: probes::Done) {
        let now = Clock::monotonic_ns();
        let started_ns = d.started_ns;
        let Some(p) = self.prober.as_mut() else {
            return;
        };
        let j = p.done(d);
        let backends_fine = p.backends_fine();
        let target = j.facts.target;
        self.rec.probe_done(&j.facts, now);
        self.own_findings(now);
        let mut notices = Vec::new();
        if j.vip {
            if let Some(f) = j.serves_errors(backends_fine) {
                self.probe_finding(now, &j.facts, f);
            } else if j.health().is_none_or(|h| *h == Health::Fine) {
                notices.extend(self.alerts.vip_fine(started_ns));
            }
        } else {
            if j.facts.tcp == crate::check::verdict::TcpResult::Connected {
                notices.extend(self.alerts.probe_ok(started_ns, target));
            }
            if let Some(f) = j.degraded() {
                self.probe_finding(now, &j.facts, f);
            } else if j.health() == Some(&Health::Fine) {
                notices.extend(self.alerts.probes_fine(started_ns, target));
            }
        }
        for n in notices {
            self.notice(n);
        }
    }

    /// A finding of the probe `p` itself, counted and alerted on with the evidence `probe`.
    fn probe_finding(&mut self, now: u64, p: &ProbeFacts, finding: Finding) {
        *self.tally.findings.entry(finding.alert_key()).or_default() += 1;
        let o = OwnFinding {
            lb: recorder::probe_side(p),
            finding,
            evidence: Evidence::Probe,
        };
        if let Some(n) = self.alerts.own(now, &o) {
            self.notice(n);
        }
    }

    /// Compares a new host sample with the previous one and counts what ran out.
    fn host_pressure(&mut self, now: u64) {
        if !self.host.has_changed().unwrap_or(false) {
            return;
        }
        let Some(cur) = self.host.borrow_and_update().clone() else {
            return;
        };
        if let Some(prev) = self.host_prev.replace(cur.clone()) {
            for p in host::pressure(&prev, &cur, None) {
                *self.tally.findings.entry(p.alert_key()).or_default() += 1;
                if let Some(n) = self.alerts.host(now, &p) {
                    self.notice(n);
                }
            }
        }
    }

    fn tick(&mut self) {
        let now = Clock::monotonic_ns();
        self.host_pressure(now);
        let found = self.rec.expire(now);
        self.findings(now, found);
        self.own_findings(now);
        let lost = self.tracer.counters().lost();
        if let Some(n) = self.alerts.lost(now, lost) {
            self.notice(n);
        }
        for n in self.alerts.tick(now) {
            self.notice(n);
        }
    }

    fn health(&mut self) {
        let c = self.tracer.counters();
        let acct = self.rec.accounting();
        for w in self
            .tracer
            .endpoints
            .iter()
            .filter(|w| w.role == crate::endpoint::Role::Vip)
        {
            let opened: u64 = self
                .rec
                .opened()
                .iter()
                .filter(|(sa, _)| w.endpoint.matches(sa))
                .map(|(_, n)| n)
                .sum();
            let fails: Vec<u64> = (1..=4u8)
                .map(|s| {
                    self.tally
                        .failures
                        .iter()
                        .filter(|((v, st), _)| *st == s && w.endpoint.matches(v))
                        .map(|(_, n)| n)
                        .sum()
                })
                .collect();
            let probes = self.prober.as_ref().map(|p| &p.state);
            let replies = self.replies.as_ref().map(ReplyWatch::state);
            let line = match self.format {
                Format::Json => json!({
                    "type": "health", "time": self.clock.rfc3339(Clock::monotonic_ns()), "vip": w.endpoint.to_string(),
                    "probes": probes.map(|s| s.iter().map(|(t, st)| (t.to_string(), st.result)).collect::<BTreeMap<_, _>>()),
                    "replies": replies.as_ref().map(|s| s.iter().map(|(b, h)| (b.to_string(), *h)).collect::<BTreeMap<_, _>>()),
                    "connections": opened,
                    "failures": {"client-to-lb": fails[0], "lb-handling": fails[1], "lb-to-backend": fails[2], "return-path": fails[3]},
                    "lost": c.lost(), "active_alerts": self.alerts.active().len(), "recorder": acct,
                    "output_dropped": self.out.dropped(), "capabilities": self.capabilities,
                })
                .to_string(),
                Format::Text => format!(
                    "{} health {}: {opened} connections, failed at step 1/2/3/4: {}/{}/{}/{}, {} lost events, {} active alerts, recorder {}/{} ({} KiB, {} evicted)",
                    self.clock.rfc3339(Clock::monotonic_ns()),
                    w.endpoint,
                    fails[0],
                    fails[1],
                    fails[2],
                    fails[3],
                    c.lost(),
                    self.alerts.active().len(),
                    acct.entries,
                    acct.limit,
                    acct.bytes / 1024,
                    acct.evicted
                ) + &probes.map_or_else(String::new, |s| {
                    let each: Vec<String> = s
                        .iter()
                        .map(|(t, st)| format!("{t}{} {}", if st.vip { " (vip)" } else { "" }, st.result))
                        .collect();
                    format!(", probes: {}", each.join(", "))
                }) + &replies.as_ref().map_or_else(String::new, |s| {
                    let each: Vec<String> = s.iter().map(|(b, h)| format!("{b} {h}")).collect();
                    format!(", replies: {}", each.join(", "))
                }),
            };
            self.print(&line);
        }
    }

    fn dump(&mut self, q: &Query) -> serde_json::Value {
        let now = Clock::monotonic_ns();
        let sel = history::select(self.rec.conns(), q, now);
        let mut r = Render {
            clock: &self.clock,
            ifnames: &mut self.ifnames,
            reasons: &self.tracer.reasons,
        };
        history::dump_json(&sel, self.rec.accounting(), &self.notices, q, now, &mut r)
    }

    fn snapshot(&mut self) -> Snapshot {
        let opened = self.rec.opened().iter().map(|(k, v)| ((*k, ()), *v));
        let connections = self
            .labels
            .fold(opened)
            .into_iter()
            .map(|((label, ()), n)| (label, n))
            .collect();
        let failures = self.labels.fold(self.tally.failures.clone());
        // Finding keys are `kind` or `kind:ADDR:PORT`: the address part gets a bounded label.
        let mut findings = BTreeMap::new();
        for (key, n) in &self.tally.findings {
            let key = match key.split_once(':') {
                Some((kind, target)) => match target.parse::<SocketAddr>() {
                    Ok(sa) => format!("{kind}:{}", self.labels.label(sa)),
                    Err(_) => key.clone(),
                },
                None => key.clone(),
            };
            *findings.entry(key).or_default() += n;
        }
        Snapshot {
            connections,
            failures,
            findings,
            drops: {
                let mut d = self.tally.drops.clone();
                for (r, n) in self.tracer.data_drop_reasons() {
                    *d.entry(r).or_default() += n;
                }
                d
            },
            endpoints: self
                .tracer
                .endpoints
                .iter()
                .copied()
                .zip(self.tracer.endpoint_stats())
                .collect(),
            counters: self.tracer.counters(),
            recorder: self.rec.accounting(),
            active: self.alerts.active(),
            output_dropped: self.out.dropped(),
            host: self.host.borrow().clone(),
            probes: self.prober.as_ref().map_or_else(BTreeMap::new, |p| {
                p.state
                    .iter()
                    .filter(|(_, st)| !st.vip)
                    .map(|(b, st)| (b.to_string(), (st.result, st.up)))
                    .collect()
            }),
            replies: self.replies.as_ref().map_or_else(BTreeMap::new, |w| {
                w.state()
                    .into_iter()
                    .map(|(b, h)| (b.to_string(), h))
                    .collect()
            }),
        }
    }
}

/// Writes the whole history for SIGUSR1 into a new file in `dir` (0600, `O_EXCL | O_NOFOLLOW`:
/// a name planted in advance is skipped, never followed or overwritten).
fn write_usr1_dump(l: &mut Loop, dir: &Path, netns: u64) -> Result<PathBuf> {
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let body = l.dump(&Query::default()).to_string();
    files::check_dir(dir)?;
    let mut last_err = None;
    for n in 0..16u32 {
        let name = if n == 0 {
            format!("dump-{netns}-{stamp}.json")
        } else {
            format!("dump-{netns}-{stamp}-{n}.json")
        };
        let path = dir.join(name);
        match files::create_new(&path) {
            Ok(mut f) => {
                std::io::Write::write_all(&mut f, body.as_bytes())
                    .with_context(|| format!("writing {}", path.display()))?;
                return Ok(path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last_err = Some(e),
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        }
    }
    Err(last_err.map_or_else(|| anyhow::anyhow!("no free file name"), anyhow::Error::from))
        .with_context(|| format!("creating a history file in {}", dir.display()))
}

/// Says where the metrics are served, and warns when that is beyond this host.
fn announce_metrics(addr: SocketAddr) {
    eprintln!("lbtrace: Prometheus metrics on http://{addr}/metrics");
    if !addr.ip().is_loopback() {
        eprintln!(
            "lbtrace: warning: --metrics {addr} is not a loopback address: anyone who can reach it reads the VIPs, backends and alerts (bind 127.0.0.1 or firewall it)"
        );
    }
}

pub async fn run(args: WatchArgs, shutdown: impl Future<Output = ()>) -> Result<u8> {
    let WatchArgs {
        trace: targs,
        socket: sock,
        history: limit,
        events,
        on_alert,
        on_alert_timeout,
        metrics: metrics_addr,
        alert_count,
        alert_window,
        recover_after,
        health_interval,
        probe_interval,
        probe: probe_args,
    } = args;
    // Everything that can be refused is checked before any program is loaded.
    kernel::preflight::check()?;
    session::check_ready_file(targs.ready_file.as_deref())?;
    let netns = kernel::tracer::netns_inum()?;
    let sock_path = sock.unwrap_or_else(|| socket::default_path(netns));
    let mut claim = socket::claim(&sock_path).await?;
    let metrics_listener = match metrics_addr {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .with_context(|| format!("--metrics {a}: cannot listen there"))?,
        ),
        None => None,
    };
    let cfg = session::tracer_config(&targs.filter)?;
    let mut usr1 = signal(SignalKind::user_defined1()).context("installing the SIGUSR1 handler")?;

    let tracer = Tracer::start(&cfg)?;
    let listener = socket::bind(&mut claim)?;
    let mut tracer = tracer;
    let mut rings = tracer.rings()?;
    session::announce(&tracer);
    eprintln!(
        "lbtrace: tripwire armed; history of {limit} connections; `lbtrace dump` reads it from {}",
        sock_path.display()
    );
    let (dump_tx, mut dump_rx) = mpsc::channel::<DumpRequest>(socket::MAX_CLIENTS);
    let dump_server = tokio::spawn(socket::serve(listener, dump_tx));
    let (metrics_tx, mut metrics_rx) = mpsc::channel::<oneshot::Sender<String>>(8);
    let metrics_server = metrics_listener.map(|l| {
        if let Ok(a) = l.local_addr() {
            announce_metrics(a);
        }
        tokio::spawn(metrics::serve(l, metrics_tx))
    });

    let vips = targs.filter.vip.clone();
    let backends = targs.filter.backend.clone();
    let mut ifnames = IfNames::default();
    for l in &cfg.ifaces {
        ifnames.insert(l.ifindex, l.name.clone());
    }
    let reasons = tracer.reasons.clone();
    let replies = targs
        .filter
        .data
        .then(|| ReplyWatch::new(backends.clone(), probe_args.slow));
    let (prober, mut probe_rx) = match Prober::new(&vips, &backends, probe_args) {
        Some((p, rx)) if !probe_interval.is_zero() => (Some(p), Some(rx)),
        _ => (None, None),
    };
    let log = Arc::new(Output::spawn("stderr", std::io::stderr(), STDERR_QUEUE));
    let sampler = host::Sampler::new(
        vips.clone(),
        backends.clone(),
        cfg.ifaces.iter().map(|l| l.name.clone()).collect(),
    );
    // Settings that do not change are said once, not alerted on every sample.
    for iface in sampler
        .ifaces
        .iter()
        .filter(|i| host::procfs::rp_filter(i) == Some(1))
    {
        eprintln!(
            "lbtrace: note: strict reverse-path filtering on {iface} (rp_filter=1): clients reaching the VIP over an asymmetric path are dropped (IP_RPFILTER)"
        );
    }
    if host::procfs::ip_forward() == Some(false) {
        eprintln!(
            "lbtrace: note: this host does not forward IPv4 (ip_forward=0): a Layer-4 (NAT) VIP cannot reach its backends"
        );
    }
    let host = sampler
        .spawn(Duration::from_secs(1))
        .context("starting the host sampler thread")?;
    let mut l = Loop {
        out: Output::spawn("stdout", std::io::stdout(), STDOUT_QUEUE),
        host,
        host_prev: None,
        log: Arc::clone(&log),
        labels: Labels::default(),
        format: targs.format,
        clock: Clock::new(),
        ifnames,
        rec: Recorder::new(vips, backends, limit, reasons),
        alerts: Alerts::new(Thresholds {
            count: alert_count,
            window: alert_window,
            recover_after,
        }),
        notices: history::Notices::default(),
        on_alert: on_alert.map(|cmd| OnAlert::new(cmd, on_alert_timeout, Arc::clone(&log))),
        tally: Tally::default(),
        show_events: events,
        capabilities: session::Capabilities::of(&tracer, &cfg),
        tracer,
        prober,
        replies,
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut health = tokio::time::interval(health_interval);
    health.tick().await;
    let mut probe_tick = tokio::time::interval(probe_interval.max(Duration::from_secs(1)));
    probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut decode_errors = 0;
    let deadline = session::deadline(targs.duration);
    tokio::pin!(shutdown, deadline);
    // Last: whoever waits for the ready file may signal or connect at once.
    session::write_ready_file(targs.ready_file.as_deref())?;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = &mut deadline => break,
            () = rings.wait() => {
                let evs = session::drain(&mut rings, &mut decode_errors);
                l.ingest(evs);
            }
            _ = tick.tick() => l.tick(),
            _ = health.tick() => l.health(),
            _ = probe_tick.tick(), if l.prober.is_some() => l.probe_round(),
            Some(d) = async {
                match probe_rx.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => l.probe_done(d),
            Some(req) = dump_rx.recv() => {
                let _ = req.reply.send(l.dump(&req.query).to_string());
            }
            Some(reply) = metrics_rx.recv() => {
                let _ = reply.send(metrics::render(&l.snapshot()));
            }
            _ = usr1.recv() => {
                let dir = sock_path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
                let msg = match write_usr1_dump(&mut l, &dir, netns) {
                    Ok(p) => format!("lbtrace: SIGUSR1: wrote the history to {}", p.display()),
                    Err(e) => format!("lbtrace: SIGUSR1: {}", crate::one_line(&e)),
                };
                l.log.line(&msg);
            }
        }
    }
    dump_server.abort();
    if let Some(m) = metrics_server {
        m.abort();
    }
    l.tracer.detach();
    let evs = session::drain(&mut rings, &mut decode_errors);
    l.ingest(evs);
    l.tick();
    l.health();
    let on_alert = l
        .on_alert
        .take()
        .map(|oa| (oa.started, oa.skipped_rate + oa.skipped_busy, oa.shutdown()));
    let on_alert_line = match on_alert {
        Some((started, skipped, stopping)) => {
            stopping.await;
            format!(", --on-alert run {started} times ({skipped} skipped)")
        }
        None => String::new(),
    };
    let c = l.tracer.counters();
    let (total, evicted) = (l.rec.accounting().total, l.rec.accounting().evicted);
    let Loop { out, .. } = l;
    // A reader that stopped reading gets a moment, not forever.
    let unwritten = out.finish(Duration::from_secs(2));
    log.line(&format!(
        "lbtrace: tripwire stopped: {total} connections recorded ({evicted} evicted), {} events, {} lost, {} packets parsed, {decode_errors} decode errors, {unwritten} output lines not written (stdout too slow){on_alert_line}",
        c.emitted(),
        c.lost(),
        c.packets,
    ));
    log.finish(Duration::from_secs(2));
    Ok(0)
}
