//! `lbtrace dump`: asks the running tripwire for its recorded, correlated history and prints it
//! as timelines (client leg and backend leg side by side, times relative to the first SYN), as
//! JSON objects, and optionally as a pcap file.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::UnixStream,
};

use crate::{
    cli::DumpArgs,
    event::KernelEvent,
    kernel::tracer::netns_inum,
    record::{ConnRecord, ConnStatus, DumpRecord, EventRecord, RecorderRecord},
    render::{self, Clock, Format},
    watch::{history::Query, recorder::Join, socket},
};

/// How long `dump` waits for the tripwire: connecting, sending the request, reading the answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

fn findings_text(c: &ConnRecord) -> String {
    c.findings
        .iter()
        .filter_map(|f| serde_json::to_value(f).ok())
        .filter_map(|v| v["kind"].as_str().map(str::to_owned))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A connection's timeline: a header line, then its client leg and backend leg, each event as
/// `trace` prints it, times relative to the connection's start.
pub fn timeline_text(c: &ConnRecord) -> String {
    let base = Some(c.start_ns);
    let clock = Clock::new();
    let line =
        |e: &EventRecord| render::record_text(e, &render::time_text(e.ts_ns(), &clock, base));
    let status = match (c.status, c.step) {
        (ConnStatus::Fail, Some(step)) => {
            format!("FAIL at step {} ({})", step.number(), findings_text(c))
        }
        (ConnStatus::Fail, None) => "fail".to_owned(),
        (ConnStatus::Ok, _) => "ok".to_owned(),
        (ConnStatus::Open, _) => "open".to_owned(),
    };
    let mut out = format!(
        "#{} {} > {}  {}  started {}, {:.1} ms\n",
        c.id, c.client, c.vip, status, c.start, c.duration_ms
    );
    out.push_str("  client leg:\n");
    for e in &c.client_leg {
        out.push_str(&format!("    {}\n", line(e)));
    }
    match &c.backend_leg {
        Some(b) => {
            out.push_str(&format!(
                "  backend leg {} > {} (joined by {}):\n",
                b.lb,
                b.backend,
                match b.join {
                    Join::Inferred => "inferred: the LB's own connection, matched by time",
                    Join::Isn => "isn: the client's ISN",
                }
            ));
            for e in &b.events {
                out.push_str(&format!("    {}\n", line(e)));
            }
        }
        None => out.push_str("  backend leg: none seen\n"),
    }
    if c.truncated_events > 0 {
        out.push_str(&format!(
            "  ({} more events not kept)\n",
            c.truncated_events
        ));
    }
    out
}

/// An alert or recovery in the words of the tripwire's text output (without its example
/// connection), from its JSON object.
pub fn notice_text(v: &Value) -> Option<String> {
    let time = v["time"].as_str().unwrap_or("?");
    let s = |o: &Value, k: &str| o[k].as_str().unwrap_or("?").to_owned();
    match v["type"].as_str()? {
        "alert" => {
            let a = &v["alert"];
            let count = match (a["count"].as_u64(), a["window_seconds"].as_u64()) {
                (Some(n), Some(w)) if w > 0 => format!(" ({n} in {w} s)"),
                _ => String::new(),
            };
            Some(format!(
                "{time} ALERT step {} {}: {}{count}",
                a["step"],
                s(a, "step_name"),
                s(a, "message")
            ))
        }
        "recovered" => {
            let r = &v["recovered"];
            Some(format!(
                "{time} RECOVERED step {} {}: {} ({} findings over {:.0} s)",
                r["step"],
                s(r, "step_name"),
                s(r, "message"),
                r["total"],
                r["active_seconds"].as_f64().unwrap_or(0.0)
            ))
        }
        _ => None,
    }
}

fn permission_denied(path: &std::path::Path) -> anyhow::Error {
    anyhow::anyhow!(
        "permission denied on {}: the tripwire's history is root-only; run lbtrace dump with sudo",
        path.display()
    )
}

async fn request(path: &PathBuf, q: &Query) -> Result<DumpRecord> {
    let mut s = UnixStream::connect(path).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            permission_denied(path)
        } else {
            anyhow::anyhow!(
                "no lbtrace watch is running in this network namespace ({}: {e}): start one with `lbtrace watch --vip ADDR:PORT`",
                path.display()
            )
        }
    })?;
    let mut line = serde_json::to_string(q)?;
    line.push('\n');
    s.write_all(line.as_bytes())
        .await
        .context("sending the request")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .await
        .context("reading the answer")?;
    let v: Value = serde_json::from_slice(&buf).context("the tripwire's answer is not JSON")?;
    if v["type"] == "error" {
        bail!(
            "the tripwire refused: {}",
            v["error"].as_str().unwrap_or("?")
        );
    }
    if v["type"] != "dump" {
        bail!("the tripwire's answer is not a dump: {}", v["type"]);
    }
    serde_json::from_value(v).context("the tripwire's answer is not a dump")
}

/// [`request`], asked again while the tripwire says it is busy (all its client slots taken),
/// given up after `timeout`.
async fn request_within(path: &PathBuf, q: &Query, timeout: Duration) -> Result<DumpRecord> {
    let again = async {
        loop {
            match request(path, q).await {
                // Busy, or closed by a tripwire at its limit of clients: ask again.
                Err(e)
                    if e.to_string().contains(socket::BUSY)
                        || e.chain().any(|c| {
                            c.downcast_ref::<std::io::Error>()
                                .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionReset)
                        }) =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => return other,
            }
        }
    };
    tokio::time::timeout(timeout, again)
        .await
        .unwrap_or_else(|_| {
            bail!(
                "the tripwire at {} did not answer within {} s: it is stalled or overloaded; try again, and look at its health lines",
                path.display(),
                timeout.as_secs()
            )
        })
}

pub async fn run(args: &DumpArgs) -> Result<u8> {
    let path = match &args.socket {
        Some(p) => p.clone(),
        None => socket::default_path(netns_inum()?),
    };
    match std::fs::symlink_metadata(&path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(permission_denied(&path));
        }
        Err(_) => bail!(
            "no lbtrace watch is running in this network namespace (no socket at {}): start one with `lbtrace watch --vip ADDR:PORT`",
            path.display()
        ),
    }
    let q = Query {
        last: args.last,
        since_secs: args.since.map(|d| d.as_secs_f64()),
        client: args.client.map(|c| c.to_string()),
        backend: args.backend.map(|b| b.to_string()),
        failed: args.failed,
    };
    let d = request_within(&path, &q, ANSWER_TIMEOUT).await?;
    let conns = &d.connections;
    match args.format {
        Format::Json => {
            for n in &d.notices {
                println!("{n}");
            }
            for c in conns {
                println!("{}", serde_json::to_string(c)?);
            }
            println!(
                "{}",
                serde_json::to_string(&RecorderRecord {
                    recorder: d.recorder
                })?
            );
        }
        Format::Text => {
            for c in conns {
                println!("{}", timeline_text(c));
            }
            if !d.notices.is_empty() {
                let older = match d.notices_dropped {
                    0 => String::new(),
                    n => format!("; {n} older ones no longer kept"),
                };
                println!("alerts and recoveries ({}{older}):", d.notices.len());
                for line in d.notices.iter().filter_map(notice_text) {
                    println!("  {line}");
                }
            }
            let r = &d.recorder;
            println!(
                "{} connection(s) shown; the recorder holds {} of at most {} ({} KiB), {} evicted",
                conns.len(),
                r.entries,
                r.limit,
                r.bytes / 1024,
                r.evicted
            );
        }
    }
    if let Some(p) = &args.pcap {
        let mut evs: Vec<KernelEvent> = conns
            .iter()
            .flat_map(|c| {
                c.client_leg
                    .iter()
                    .chain(c.backend_leg.iter().flat_map(|b| &b.events))
            })
            .filter_map(EventRecord::to_event)
            .collect();
        evs.sort_by_key(|e| e.ts_ns);
        let refs: Vec<&KernelEvent> = evs.iter().collect();
        crate::pcap::write_file(p, &refs, &Clock::new())
            .with_context(|| format!("--pcap {}", p.display()))?;
        eprintln!("lbtrace: wrote {} packets to {}", refs.len(), p.display());
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use lbtrace_common::tcp_flag::{ACK, RST, SYN};

    use super::*;
    use crate::{
        event::Dir,
        kernel::btf::DropReasons,
        render::IfNames,
        testutil::{drop, pkt},
        watch::recorder::Finding,
    };

    #[test]
    fn notices_in_the_tripwire_words() {
        let alert = serde_json::json!({"type": "alert", "time": "2026-11-29T10:00:00Z",
            "alert": {"key": "backend_refused:10.0.0.2:80", "step": 3, "step_name": "lb-to-backend",
                      "message": "backend 10.0.0.2:80 refused", "count": 3, "window_seconds": 30}});
        assert_eq!(
            notice_text(&alert).as_deref(),
            Some(
                "2026-11-29T10:00:00Z ALERT step 3 lb-to-backend: backend 10.0.0.2:80 refused (3 in 30 s)"
            )
        );
        let rec = serde_json::json!({"type": "recovered", "time": "t",
            "recovered": {"step": 3, "step_name": "lb-to-backend", "message": "m", "total": 7,
                          "active_seconds": 61.2}});
        assert_eq!(
            notice_text(&rec).as_deref(),
            Some("t RECOVERED step 3 lb-to-backend: m (7 findings over 61 s)")
        );
        assert_eq!(notice_text(&serde_json::json!({"type": "health"})), None);
        assert_eq!(notice_text(&serde_json::json!([])), None);
    }

    /// `dump`'s timeline lines are `trace`'s lines, times relative to the connection's start.
    #[test]
    fn timelines_use_the_trace_lines() {
        let clock = Clock::new();
        let reasons = DropReasons::from_pairs(&[(2, "NO_SOCKET")]);
        let evs = [
            pkt(1000, Dir::In, "10.0.0.5:4000", "10.0.0.10:80", SYN, 77, 0),
            drop(1000, "10.0.0.5:4000", "10.0.0.10:80", SYN, 77, 2),
            pkt(
                1001,
                Dir::Out,
                "10.0.0.10:80",
                "10.0.0.5:4000",
                RST | ACK,
                0,
                78,
            ),
        ];
        let mut names = IfNames::default();
        names.insert(2, "eth0".into());
        let c = ConnRecord {
            id: 7,
            vip: "10.0.0.10:80".parse().unwrap(),
            client: "10.0.0.5:4000".parse().unwrap(),
            start: clock.rfc3339(evs[0].ts_ns),
            start_ns: evs[0].ts_ns,
            duration_ms: 1.0,
            step: Some(crate::checklist::Step::LbHandling),
            status: ConnStatus::Fail,
            findings: vec![Finding::NoListener],
            client_leg: evs
                .iter()
                .map(|e| EventRecord::of(e, &clock, &mut names, &reasons))
                .collect(),
            backend_leg: None,
            truncated_events: 0,
        };
        let text = timeline_text(&c);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("#7 10.0.0.5:4000 > 10.0.0.10:80  FAIL at step 2 (no_listener)"),
            "{text}"
        );
        for (i, e) in evs.iter().enumerate() {
            let trace = render::event_text(e, &clock, &mut names, &reasons, Some(c.start_ns));
            assert_eq!(lines[2 + i], format!("    {trace}"));
        }
        assert_eq!(
            lines[3],
            "     +0.000000s eth0       drop    10.0.0.5:4000 > 10.0.0.10:80: Flags [S], seq 77, length 0, drop NO_SOCKET"
        );
        assert_eq!(lines[5], "  backend leg: none seen");
    }

    /// A tripwire that accepts the connection and never answers: `dump` gives up after its
    /// timeout with one line that says so.
    #[tokio::test]
    async fn a_silent_tripwire_times_out_with_a_clear_message() {
        let path = std::env::temp_dir().join(format!(
            "lbtrace-dump-test-{}-{}.sock",
            std::process::id(),
            Clock::monotonic_ns()
        ));
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let silent = tokio::spawn(async move {
            let (conn, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            std::mem::drop(conn);
        });
        let started = std::time::Instant::now();
        let err = request_within(&path, &Query::default(), Duration::from_millis(300))
            .await
            .unwrap_err();
        let msg = crate::one_line(&err);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            msg.starts_with(&format!(
                "the tripwire at {} did not answer within",
                path.display()
            )) && !msg.contains('\n'),
            "{msg}"
        );
        silent.abort();
        std::fs::remove_file(&path).unwrap();
    }
}
