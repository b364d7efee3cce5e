//! `lbtrace dump`: asks the running tripwire for its recorded, correlated history and prints it
//! as timelines (client leg and backend leg side by side, times relative to the first SYN), as
//! JSON objects, and optionally as a pcap file.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::UnixStream,
};

use crate::{
    cli::DumpArgs,
    event::{Detail, Dir, Hook, KernelEvent},
    kernel::tracer::netns_inum,
    render::{Clock, Format},
    watch::{history::Query, socket},
};

/// Rebuilds a kernel event from its JSON object (for the pcap file).
pub fn event_from_json(v: &Value) -> Option<KernelEvent> {
    let s = |k: &str| v.get(k).and_then(Value::as_str);
    let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let flags = s("flags").map_or(0, |f| {
        f.chars().fold(0u8, |acc, c| {
            acc | match c {
                'F' => 0x01,
                'S' => 0x02,
                'R' => 0x04,
                'P' => 0x08,
                '.' => 0x10,
                'U' => 0x20,
                'E' => 0x40,
                'W' => 0x80,
                _ => 0,
            }
        })
    });
    let dir = match s("dir") {
        Some("in") => Some(Dir::In),
        Some("out") => Some(Dir::Out),
        _ => None,
    };
    let hook = match s("hook") {
        Some("xdp") => Hook::Xdp,
        Some("kfree_skb") => Hook::KfreeSkb,
        _ => Hook::Tc,
    };
    let (src, dst, detail): (SocketAddr, SocketAddr, Detail) = match s("type")? {
        "packet" => (
            s("src")?.parse().ok()?,
            s("dst")?.parse().ok()?,
            Detail::Packet,
        ),
        "drop" => (
            s("src")?.parse().ok()?,
            s("dst")?.parse().ok()?,
            Detail::Drop {
                reason: u32::try_from(n("reason_code")).ok()?,
            },
        ),
        "icmp" => (
            s("inner_src")?.parse().ok()?,
            s("inner_dst")?.parse().ok()?,
            Detail::Icmp {
                outer_src: s("src")?.parse().ok()?,
                outer_dst: s("dst")?.parse().ok()?,
                icmp_type: u8::try_from(n("icmp_type")).ok()?,
                icmp_code: u8::try_from(n("icmp_code")).ok()?,
            },
        ),
        _ => return None,
    };
    Some(KernelEvent {
        ts_ns: n("ts_ns"),
        ifindex: u32::try_from(n("ifindex")).unwrap_or(0),
        hook,
        dir,
        src,
        dst,
        flags,
        seq: u32::try_from(n(if matches!(detail, Detail::Icmp { .. }) {
            "inner_seq"
        } else {
            "seq"
        }))
        .unwrap_or(0),
        ack: u32::try_from(n("ack")).unwrap_or(0),
        payload_len: u16::try_from(n("len")).unwrap_or(0),
        detail,
    })
}

/// One event object as a timeline line, its time relative to `base_ns`.
fn event_line(v: &Value, base_ns: u64) -> String {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("");
    let ts = v.get("ts_ns").and_then(Value::as_u64).unwrap_or(base_ns);
    let rel = (i128::from(ts) - i128::from(base_ns)) as f64 / 1e9;
    let iface = v.get("iface").and_then(Value::as_str).unwrap_or("-");
    match s("type") {
        "icmp" => format!(
            "{rel:+10.6}s {iface:<10} {:<4} ICMP {} > {}: {} for {} > {}",
            s("dir"),
            s("src"),
            s("dst"),
            s("what"),
            s("inner_src"),
            s("inner_dst")
        ),
        "drop" => format!(
            "{rel:+10.6}s {iface:<10} drop {} > {}: Flags [{}], seq {}, drop {}",
            s("src"),
            s("dst"),
            s("flags"),
            v["seq"],
            s("reason")
        ),
        _ => format!(
            "{rel:+10.6}s {iface:<10} {:<4} {} > {}: Flags [{}], seq {}{}",
            s("dir"),
            s("src"),
            s("dst"),
            s("flags"),
            v["seq"],
            if s("flags").contains('.') {
                format!(", ack {}", v["ack"])
            } else {
                String::new()
            }
        ),
    }
}

fn findings_text(c: &Value) -> String {
    c["findings"]
        .as_array()
        .map(|fs| {
            fs.iter()
                .filter_map(|f| f["kind"].as_str())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

pub fn timeline_text(c: &Value) -> String {
    let base = c["start_ns"].as_u64().unwrap_or(0);
    let status = match (c["status"].as_str(), c["step"].as_u64()) {
        (Some("fail"), Some(step)) => format!("FAIL at step {step} ({})", findings_text(c)),
        (Some(s), _) => s.to_owned(),
        _ => String::new(),
    };
    let mut out = format!(
        "#{} {} > {}  {}  started {}, {:.1} ms\n",
        c["id"],
        c["client"].as_str().unwrap_or(""),
        c["vip"].as_str().unwrap_or(""),
        status,
        c["start"].as_str().unwrap_or(""),
        c["duration_ms"].as_f64().unwrap_or(0.0)
    );
    out.push_str("  client leg:\n");
    for e in c["client_leg"].as_array().into_iter().flatten() {
        out.push_str(&format!("    {}\n", event_line(e, base)));
    }
    match c.get("backend_leg").filter(|b| !b.is_null()) {
        Some(b) => {
            out.push_str(&format!(
                "  backend leg {} > {} (joined by {}{}):\n",
                b["lb"].as_str().unwrap_or(""),
                b["backend"].as_str().unwrap_or(""),
                b["join"].as_str().unwrap_or(""),
                if b["join"] == "inferred" {
                    ": the LB's own connection, matched by time"
                } else {
                    ": the client's ISN"
                }
            ));
            for e in b["events"].as_array().into_iter().flatten() {
                out.push_str(&format!("    {}\n", event_line(e, base)));
            }
        }
        None => out.push_str("  backend leg: none seen\n"),
    }
    if c["truncated_events"].as_u64().unwrap_or(0) > 0 {
        out.push_str(&format!(
            "  ({} more events not kept)\n",
            c["truncated_events"]
        ));
    }
    out
}

fn permission_denied(path: &std::path::Path) -> anyhow::Error {
    anyhow::anyhow!(
        "permission denied on {}: the tripwire's history is root-only; run lbtrace dump with sudo",
        path.display()
    )
}

async fn request(path: &PathBuf, q: &Query) -> Result<Value> {
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
    Ok(v)
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
    let v = request(&path, &q).await?;
    let conns = v["connections"].as_array().cloned().unwrap_or_default();
    match args.format {
        Format::Json => {
            for c in &conns {
                println!("{c}");
            }
            println!(
                "{}",
                serde_json::json!({"type": "recorder", "recorder": v["recorder"]})
            );
        }
        Format::Text => {
            for c in &conns {
                println!("{}", timeline_text(c));
            }
            let r = &v["recorder"];
            println!(
                "{} connection(s) shown; the recorder holds {} of at most {} ({} KiB), {} evicted",
                conns.len(),
                r["entries"],
                r["limit"],
                r["bytes"].as_u64().unwrap_or(0) / 1024,
                r["evicted"]
            );
        }
    }
    if let Some(p) = &args.pcap {
        let mut evs: Vec<KernelEvent> = conns
            .iter()
            .flat_map(|c| {
                let mut v: Vec<Value> = c["client_leg"].as_array().cloned().unwrap_or_default();
                v.extend(
                    c["backend_leg"]["events"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default(),
                );
                v
            })
            .filter_map(|e| event_from_json(&e))
            .collect();
        evs.sort_by_key(|e| e.ts_ns);
        let refs: Vec<&KernelEvent> = evs.iter().collect();
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        );
        crate::pcap::write(&mut f, &refs, &Clock::new())
            .with_context(|| format!("writing {}", p.display()))?;
        eprintln!("lbtrace: wrote {} packets to {}", refs.len(), p.display());
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{kernel::btf::DropReasons, render::IfNames, testutil::pkt};

    #[test]
    fn event_objects_round_trip_for_the_pcap() {
        let ev = pkt(5, Dir::Out, "10.0.0.10:80", "10.0.0.5:4000", 0x12, 77, 1001);
        let v = crate::render::event_json(
            &ev,
            &Clock::new(),
            &mut IfNames::default(),
            &DropReasons::default(),
        );
        let back = event_from_json(&v).unwrap();
        assert_eq!(back, KernelEvent { ifindex: 2, ..ev });
    }
}
