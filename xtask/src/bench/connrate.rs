//! Part 3 of the bench, connection rate: short TCP connections from the client to the VIP (DNAT to
//! the server) at rising rates, with no tracer, `lbtrace watch` (TCX), `lbtrace trace --format
//! json` (to a file) and tcpdump (one per lb interface, filtered, to files). For each: the control
//! packets it recorded against what the kernel's own counters imply, events lost (lbtrace) or
//! packets dropped (tcpdump), CPU time and peak RSS of the tracer.
//!
//! Implied count: every connection is SYN, SYN-ACK, FIN, FIN (see `load`), and each crosses both
//! lb interfaces, so 8 control packets per connection the server accepted (`PassiveOpens` of the
//! server namespace's /proc/net/snmp). Retransmissions add to what the tracers see; they are
//! counted (`RetransSegs` of client and server) and said.

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::{Context as _, Result};

use super::{
    interrupted,
    lab::{CONN_PORT, Lab, Running, Tool, VIP, tcp_snmp},
    load::{self, Server},
    stats::Figure,
    sys,
};

pub const SECTION: &str = "connection rate: short TCP connections client -> VIP (DNAT) -> server";
const CLIENT_THREADS: usize = 8;

fn configs() -> [Option<Tool>; 4] {
    [
        None,
        Some(Tool::Watch { xdp: false }),
        Some(Tool::Trace),
        Some(Tool::Tcpdump),
    ]
}

pub fn rate_label(rate: Option<u32>) -> String {
    rate.map_or_else(|| "max rate".to_owned(), |r| format!("{r}/s"))
}

/// The figures of one rate.
pub struct PerRate {
    pub rate: Option<u32>,
    /// Achieved connections/s with no tracer.
    pub achieved: Figure,
    /// Per tool (configs()[1..]): achieved, recorded %, lost, CPU %, peak RSS.
    pub tools: Vec<ToolFigures>,
}

pub struct ToolFigures {
    pub tool: &'static str,
    pub achieved: Figure,
    pub recorded: Figure,
    pub lost: Figure,
    pub cpu: Figure,
    pub rss: Figure,
}

pub struct ConnRate {
    pub rates: Vec<PerRate>,
    /// Retransmitted segments seen over all runs (client + server).
    pub retrans: i64,
    /// Connections that failed over all runs.
    pub failed: u64,
}

impl ConnRate {
    pub fn all(&self) -> Vec<Figure> {
        let mut out = Vec::new();
        let last = self.rates.len().saturating_sub(1);
        for (i, r) in self.rates.iter().enumerate() {
            out.push(r.achieved.clone());
            for t in &r.tools {
                if r.rate.is_none() {
                    out.push(t.achieved.clone());
                }
                out.push(t.recorded.clone());
                out.push(t.lost.clone());
                out.push(t.cpu.clone());
                if i == last {
                    out.push(t.rss.clone());
                }
            }
        }
        out
    }
}

struct RunOut {
    achieved: f64,
    implied: i64,
    recorded: u64,
    lost: u64,
    cpu_pct: f64,
    rss_mib: f64,
    failed: u64,
    retrans: i64,
}

fn delta(
    a: &std::collections::BTreeMap<String, i64>,
    b: &std::collections::BTreeMap<String, i64>,
    k: &str,
) -> i64 {
    b.get(k).copied().unwrap_or(0) - a.get(k).copied().unwrap_or(0)
}

fn one(
    lab: &Lab,
    lbtrace: &Path,
    tool: Option<&Tool>,
    rate: Option<u32>,
    secs: f64,
    tag: &str,
) -> Result<RunOut> {
    let target: SocketAddr = format!("{VIP}:{CONN_PORT}").parse()?;
    let running = match tool {
        Some(t) => Some(Running::start(lab, t, lbtrace, CONN_PORT, tag)?),
        None => None,
    };
    let (c0, s0) = (tcp_snmp(&lab.client)?, tcp_snmp(&lab.server)?);
    let cpu0 = running.as_ref().map(Running::cpu_seconds).transpose()?;
    let t0 = std::time::Instant::now();
    let out = load::generate(&lab.client, target, rate, secs, CLIENT_THREADS)?;
    // The last FINs and ACKs cross the lb.
    sys::sleep(Duration::from_millis(300))?;
    let window = t0.elapsed().as_secs_f64();
    let (c1, s1) = (tcp_snmp(&lab.client)?, tcp_snmp(&lab.server)?);
    let (cpu_pct, rss_mib) = match &running {
        Some(r) => (
            100.0 * (r.cpu_seconds()? - cpu0.unwrap_or(0.0)) / window,
            r.peak_rss_mib()?,
        ),
        None => (0.0, 0.0),
    };
    let report = running.map(Running::stop).transpose()?.unwrap_or_default();
    Ok(RunOut {
        achieved: out.rate(),
        implied: 8 * delta(&s0, &s1, "PassiveOpens"),
        recorded: report.recorded,
        lost: report.lost,
        cpu_pct,
        rss_mib,
        failed: out.failed,
        retrans: delta(&c0, &c1, "RetransSegs") + delta(&s0, &s1, "RetransSegs"),
    })
}

pub fn measure(
    lab: &Lab,
    lbtrace: &Path,
    rates: &[Option<u32>],
    rounds: usize,
    secs: f64,
) -> Result<ConnRate> {
    let _server = Server::start(&lab.server, CONN_PORT).context("starting the accept server")?;
    let cfgs = configs();
    let mut res = ConnRate {
        rates: Vec::new(),
        retrans: 0,
        failed: 0,
    };
    // Warm-up (ARP, conntrack, code paths), not recorded.
    let target: SocketAddr = format!("{VIP}:{CONN_PORT}").parse()?;
    load::generate(&lab.client, target, Some(500), 0.3, 2)?;
    for &rate in rates {
        let rl = rate_label(rate);
        let mut pr = PerRate {
            rate,
            achieved: Figure::new(SECTION, format!("{rl}: achieved, no tracer"), "conn/s"),
            tools: cfgs[1..]
                .iter()
                .flatten()
                .map(|t| {
                    let n = |what: &str| format!("{rl}: {}: {what}", t.label());
                    ToolFigures {
                        tool: t.label(),
                        achieved: Figure::new(SECTION, n("achieved"), "conn/s")
                            .with_baseline("no tracer"),
                        recorded: Figure::new(SECTION, n("control packets recorded"), "% implied"),
                        lost: Figure::new(
                            SECTION,
                            n(if matches!(t, Tool::Tcpdump) {
                                "packets dropped by kernel"
                            } else {
                                "events lost"
                            }),
                            "count",
                        ),
                        cpu: Figure::new(SECTION, n("CPU"), "% core"),
                        rss: Figure::new(SECTION, n("peak RSS (VmHWM)"), "MiB"),
                    }
                })
                .collect(),
        };
        for round in 0..rounds {
            let mut line = Vec::new();
            for k in 0..cfgs.len() {
                interrupted()?;
                let ci = (k + round) % cfgs.len();
                let tag = format!("conn-{}-{round}-{ci}", rate.unwrap_or(0));
                let r = one(lab, lbtrace, cfgs[ci].as_ref(), rate, secs, &tag)?;
                res.retrans += r.retrans;
                res.failed += r.failed;
                line.push(format!(
                    "{}: {:.0}/s {}/{}{}",
                    cfgs[ci].as_ref().map_or("none", Tool::label),
                    r.achieved,
                    r.recorded,
                    r.implied,
                    if r.lost > 0 {
                        format!(" LOST {}", r.lost)
                    } else {
                        String::new()
                    }
                ));
                if ci == 0 {
                    pr.achieved.samples.push(r.achieved);
                    continue;
                }
                let t = &mut pr.tools[ci - 1];
                t.achieved.samples.push(r.achieved);
                t.recorded
                    .samples
                    .push(100.0 * r.recorded as f64 / r.implied.max(1) as f64);
                t.lost.samples.push(r.lost as f64);
                t.cpu.samples.push(r.cpu_pct);
                t.rss.samples.push(r.rss_mib);
            }
            eprintln!(
                "xtask: bench: connections {rl} round {}/{rounds}: {}",
                round + 1,
                line.join(", ")
            );
        }
        let base = pr.achieved.samples.clone();
        for t in &mut pr.tools {
            if let Some(b) = t.achieved.baseline.as_mut() {
                b.samples = base.clone();
            }
        }
        res.rates.push(pr);
    }
    let note = if res.retrans > 0 || res.failed > 0 {
        format!(
            "{} retransmitted segments, {} failed connections over all runs (implied count is then a lower bound)",
            res.retrans, res.failed
        )
    } else {
        "no retransmissions, no failed connections".to_owned()
    };
    if let Some(first) = res.rates.first_mut() {
        first.achieved.note = note;
    }
    for pr in &mut res.rates {
        for t in &mut pr.tools {
            if t.tool.starts_with("lbtrace") {
                t.rss.note = "includes the ring buffers' mapping".to_owned();
            }
            t.recorded.note = if t.tool.starts_with("lbtrace watch") {
                "events the kernel emitted (all drained at stop)".to_owned()
            } else if t.tool.starts_with("lbtrace trace") {
                "events delivered".to_owned()
            } else {
                "packets captured (both tcpdumps)".to_owned()
            };
        }
    }
    Ok(res)
}
