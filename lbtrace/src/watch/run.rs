//! The tripwire's main loop: drain the rings into the flight recorder, turn findings into alerts,
//! and answer `dump`, metrics scrapes and SIGUSR1 from the same loop (the recorder has one owner,
//! no locks).

use std::{
    collections::BTreeMap,
    future::Future,
    io::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde_json::json;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{TcpListener, UnixListener, UnixStream},
    signal::unix::{SignalKind, signal},
};

use super::{
    alerts::{Alerts, Notice, Thresholds},
    history::{self, Query, Render},
    metrics::{self, Snapshot},
    recorder::{Finding, Recorder},
    socket,
};
use crate::{
    cli::WatchArgs,
    event::{Detail, KernelEvent},
    kernel::{self, Tracer},
    render::{self, Clock, Format, IfNames},
    trace,
};

/// Removes the socket file when the tripwire ends.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `--on-alert`: at most this many commands per minute; the rest are counted and logged.
const ON_ALERT_PER_MINUTE: usize = 6;

struct OnAlert {
    cmd: String,
    recent: Vec<Instant>,
    suppressed: u64,
}

impl OnAlert {
    fn run(&mut self, alert_json: &str) {
        self.recent
            .retain(|t| t.elapsed() < Duration::from_secs(60));
        if self.recent.len() >= ON_ALERT_PER_MINUTE {
            self.suppressed += 1;
            eprintln!(
                "lbtrace: --on-alert rate limit ({ON_ALERT_PER_MINUTE}/min): not run for this alert ({} suppressed so far)",
                self.suppressed
            );
            return;
        }
        self.recent.push(Instant::now());
        let child = std::process::Command::new("sh")
            .arg("-c")
            .arg(&self.cmd)
            .stdin(std::process::Stdio::piped())
            .spawn();
        match child {
            Ok(mut c) => {
                if let Some(mut stdin) = c.stdin.take() {
                    let _ = stdin.write_all(alert_json.as_bytes());
                    let _ = stdin.write_all(b"\n");
                }
                // Reap it in the background; its exit status is logged.
                std::thread::spawn(move || match c.wait() {
                    Ok(s) if !s.success() => {
                        eprintln!("lbtrace: --on-alert command exited with {s}")
                    }
                    Err(e) => eprintln!("lbtrace: --on-alert command: {e}"),
                    _ => {}
                });
            }
            Err(e) => eprintln!("lbtrace: --on-alert: cannot run `sh -c {}`: {e}", self.cmd),
        }
    }
}

/// Per-VIP tallies for the health line and the metrics.
#[derive(Default)]
struct Tally {
    failures: BTreeMap<(String, u8), u64>,
    findings: BTreeMap<String, u64>,
    drops: BTreeMap<String, u64>,
}

struct Loop {
    format: Format,
    clock: Clock,
    ifnames: IfNames,
    tracer: Tracer,
    rec: Recorder,
    alerts: Alerts,
    on_alert: Option<OnAlert>,
    tally: Tally,
    show_events: bool,
}

impl Loop {
    fn print(&self, line: &str) {
        let mut out = std::io::stdout().lock();
        let _ = render::write_line(&mut out, line);
        let _ = out.flush();
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
    }

    fn findings(&mut self, now: u64, found: Vec<(u64, Finding)>) {
        for (id, f) in found {
            // Borrow the recorded connection, don't copy it: the borrow ends before `notice`.
            let Some(conn) = self.rec.conn(id) else {
                continue;
            };
            *self.tally.findings.entry(f.alert_key()).or_default() += 1;
            if conn.findings.len() == 1 {
                *self
                    .tally
                    .failures
                    .entry((conn.vip.to_string(), f.step()))
                    .or_default() += 1;
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
        }
    }

    fn tick(&mut self) {
        let now = Clock::monotonic_ns();
        let found = self.rec.expire(now);
        self.findings(now, found);
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
                        .filter(|((v, st), _)| {
                            *st == s && v.parse().is_ok_and(|sa| w.endpoint.matches(&sa))
                        })
                        .map(|(_, n)| n)
                        .sum()
                })
                .collect();
            let line = match self.format {
                Format::Json => json!({
                    "type": "health", "time": self.clock.rfc3339(Clock::monotonic_ns()), "vip": w.endpoint.to_string(),
                    "connections": opened,
                    "failures": {"client-to-lb": fails[0], "lb-handling": fails[1], "lb-to-backend": fails[2], "return-path": fails[3]},
                    "lost": c.lost(), "active_alerts": self.alerts.active().len(), "recorder": acct,
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
                ),
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
        history::dump_json(&sel, self.rec.accounting(), &mut r)
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            connections: self
                .rec
                .opened()
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            failures: self.tally.failures.clone(),
            findings: self.tally.findings.clone(),
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
        }
    }
}

async fn serve_dump(stream: UnixStream, reply: Result<String, String>) {
    let mut stream = stream;
    let body = match reply {
        Ok(s) => s,
        Err(e) => json!({"type": "error", "error": e}).to_string(),
    };
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.write_all(b"\n").await;
    let _ = stream.shutdown().await;
}

async fn read_query(stream: &mut UnixStream) -> Result<Query, String> {
    let mut line = String::new();
    let mut r = BufReader::new(stream);
    match tokio::time::timeout(Duration::from_secs(2), r.read_line(&mut line)).await {
        Ok(Ok(_)) => serde_json::from_str(line.trim()).map_err(|e| format!("bad request: {e}")),
        Ok(Err(e)) => Err(format!("reading the request: {e}")),
        Err(_) => Err("no request within 2 s".to_owned()),
    }
}

fn write_usr1_dump(l: &mut Loop, dir: &Path, netns: u64) -> Result<PathBuf> {
    let path = dir.join(format!(
        "dump-{netns}-{}.json",
        time::OffsetDateTime::now_utc().unix_timestamp()
    ));
    let body = l.dump(&Query::default());
    std::fs::write(&path, body.to_string())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

pub async fn run(args: WatchArgs, shutdown: impl Future<Output = ()>) -> Result<u8> {
    let WatchArgs {
        trace: targs,
        socket: sock,
        history: limit,
        events,
        on_alert,
        metrics: metrics_addr,
        alert_count,
        alert_window,
        recover_after,
        health_interval,
    } = args;
    kernel::preflight::check()?;
    let cfg = trace::tracer_config(&targs.filter)?;
    let metrics_listener = match metrics_addr {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .with_context(|| format!("--metrics {a}: cannot listen there"))?,
        ),
        None => None,
    };
    let tracer = Tracer::start(&cfg)?;
    let netns = tracer.netns_inum;
    let sock_path = sock.unwrap_or_else(|| socket::default_path(netns));
    let listener: UnixListener = socket::bind(&sock_path).await?;
    let _sock_file = SocketFile(sock_path.clone());
    let mut tracer = tracer;
    let mut rings = tracer.rings()?;
    trace::announce(&tracer);
    eprintln!(
        "lbtrace: tripwire armed; history of {limit} connections; `lbtrace dump` reads it from {}",
        sock_path.display()
    );
    trace::write_ready_file(targs.ready_file.as_deref())?;

    let vips = targs.filter.vip.clone();
    let backends = targs.filter.backend.clone();
    let mut ifnames = IfNames::default();
    for l in &cfg.ifaces {
        ifnames.insert(l.ifindex, l.name.clone());
    }
    let reasons = tracer.reasons.clone();
    let mut l = Loop {
        format: targs.format,
        clock: Clock::new(),
        ifnames,
        rec: Recorder::new(vips, backends, limit, reasons),
        alerts: Alerts::new(Thresholds {
            count: alert_count,
            window: alert_window,
            recover_after,
        }),
        on_alert: on_alert.map(|cmd| OnAlert {
            cmd,
            recent: Vec::new(),
            suppressed: 0,
        }),
        tally: Tally::default(),
        show_events: events,
        tracer,
    };
    let mut usr1 = signal(SignalKind::user_defined1()).context("installing the SIGUSR1 handler")?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut health = tokio::time::interval(health_interval);
    health.tick().await;
    let mut decode_errors = 0;
    let deadline = trace::deadline(targs.duration);
    tokio::pin!(shutdown, deadline);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = &mut deadline => break,
            () = rings.wait() => {
                let evs = trace::drain(&mut rings, &mut decode_errors);
                l.ingest(evs);
            }
            _ = tick.tick() => l.tick(),
            _ = health.tick() => l.health(),
            Ok((mut stream, _)) = listener.accept() => {
                // Read the request in every case: closing with it unread would reset the
                // connection before the client sees the answer.
                let query = read_query(&mut stream).await;
                let reply = if socket::peer_uid(&stream) == Some(0) {
                    query.map(|q| l.dump(&q).to_string())
                } else {
                    Err("permission denied: only root may read the tripwire's history (run lbtrace dump with sudo)".to_owned())
                };
                tokio::spawn(serve_dump(stream, reply));
            }
            Ok((mut stream, _)) = async { metrics_listener.as_ref().expect("guarded").accept().await }, if metrics_listener.is_some() => {
                let body = metrics::render(&l.snapshot());
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = tokio::time::timeout(Duration::from_secs(1), tokio::io::AsyncReadExt::read(&mut stream, &mut buf)).await;
                    let head = format!("HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n", body.len());
                    let _ = stream.write_all(head.as_bytes()).await;
                    let _ = stream.write_all(body.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
            _ = usr1.recv() => {
                let dir = sock_path.parent().map_or_else(|| PathBuf::from("/tmp"), Path::to_path_buf);
                match write_usr1_dump(&mut l, &dir, netns) {
                    Ok(p) => eprintln!("lbtrace: SIGUSR1: wrote the history to {}", p.display()),
                    Err(e) => eprintln!("lbtrace: SIGUSR1: {}", crate::one_line(&e)),
                }
            }
        }
    }
    l.tracer.detach();
    let evs = trace::drain(&mut rings, &mut decode_errors);
    l.ingest(evs);
    l.tick();
    l.health();
    let c = l.tracer.counters();
    eprintln!(
        "lbtrace: tripwire stopped: {} connections recorded ({} evicted), {} events, {} lost, {} packets parsed",
        l.rec.accounting().total,
        l.rec.accounting().evicted,
        c.emitted(),
        c.lost(),
        c.packets
    );
    Ok(0)
}
