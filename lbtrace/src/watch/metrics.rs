//! Prometheus text metrics of the tripwire (`--metrics ADDR:PORT`), so a fleet of LB hosts feeds
//! an existing Prometheus. Rendered from a snapshot the main loop takes; served over plain
//! HTTP/1.0 on any path.

use std::{collections::BTreeMap, fmt::Write as _};

use lbtrace_common::EndpointStats;

use super::recorder::Accounting;
use crate::{endpoint::Watched, kernel::counters::Counters};

#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub connections: BTreeMap<String, u64>,
    /// (vip, step) -> failed connections.
    pub failures: BTreeMap<(String, u8), u64>,
    /// finding kind -> count.
    pub findings: BTreeMap<String, u64>,
    pub drops: BTreeMap<String, u64>,
    pub endpoints: Vec<(Watched, EndpointStats)>,
    pub counters: Counters,
    pub recorder: Accounting,
    /// Active alerts: key, step.
    pub active: Vec<(String, u8)>,
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

pub fn render(s: &Snapshot) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# HELP lbtrace_connections_total Client connections to the VIP seen by the tripwire.\n# TYPE lbtrace_connections_total counter"
    );
    for (vip, n) in &s.connections {
        let _ = writeln!(o, "lbtrace_connections_total{{vip=\"{}\"}} {n}", esc(vip));
    }
    let _ = writeln!(
        o,
        "# HELP lbtrace_connection_failures_total Failed client connections by the checklist step that failed.\n# TYPE lbtrace_connection_failures_total counter"
    );
    for ((vip, step), n) in &s.failures {
        let _ = writeln!(
            o,
            "lbtrace_connection_failures_total{{vip=\"{}\",step=\"{step}\"}} {n}",
            esc(vip)
        );
    }
    let _ = writeln!(
        o,
        "# HELP lbtrace_findings_total Findings by kind (and backend).\n# TYPE lbtrace_findings_total counter"
    );
    for (k, n) in &s.findings {
        let (kind, target) = k.split_once(':').unwrap_or((k, ""));
        let _ = writeln!(
            o,
            "lbtrace_findings_total{{kind=\"{}\",target=\"{}\"}} {n}",
            esc(kind),
            esc(target)
        );
    }
    let _ = writeln!(
        o,
        "# HELP lbtrace_kernel_drops_total Watched packets the kernel dropped, by drop reason.\n# TYPE lbtrace_kernel_drops_total counter"
    );
    for (r, n) in &s.drops {
        let _ = writeln!(o, "lbtrace_kernel_drops_total{{reason=\"{}\"}} {n}", esc(r));
    }
    let _ = writeln!(
        o,
        "# HELP lbtrace_packets_total Control packets per watched endpoint, counted in the kernel (exact even when events are lost).\n# TYPE lbtrace_packets_total counter"
    );
    for (w, st) in &s.endpoints {
        let role = format!("{:?}", w.role).to_lowercase();
        for (flag, n) in [
            ("syn", st.syn),
            ("syn_ack", st.syn_ack),
            ("rst", st.rst),
            ("fin", st.fin),
            ("icmp", st.icmp),
            ("drop", st.drops),
        ] {
            let _ = writeln!(
                o,
                "lbtrace_packets_total{{endpoint=\"{}\",role=\"{role}\",kind=\"{flag}\"}} {n}",
                esc(&w.endpoint.to_string())
            );
        }
    }
    let c = &s.counters;
    for (name, help, v) in [
        (
            "lbtrace_events_lost_total",
            "Kernel events lost because the ring buffer was full.",
            c.lost(),
        ),
        (
            "lbtrace_events_emitted_total",
            "Kernel events written to the ring buffers.",
            c.emitted(),
        ),
        (
            "lbtrace_packets_parsed_total",
            "Packets the TC/XDP programs looked at.",
            c.packets,
        ),
        (
            "lbtrace_parse_errors_total",
            "Packets whose headers could not be parsed.",
            c.parse_errors,
        ),
        (
            "lbtrace_recorder_evicted_total",
            "Connections evicted from the flight recorder (oldest first).",
            s.recorder.evicted,
        ),
    ] {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
    }
    for (name, help, v) in [
        (
            "lbtrace_recorder_entries",
            "Connections held by the flight recorder.",
            s.recorder.entries as u64,
        ),
        (
            "lbtrace_recorder_bytes",
            "Bytes held by the flight recorder (its own accounting).",
            s.recorder.bytes as u64,
        ),
        (
            "lbtrace_recorder_limit",
            "Connections the flight recorder keeps at most (--history).",
            s.recorder.limit as u64,
        ),
    ] {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    }
    let _ = writeln!(
        o,
        "# HELP lbtrace_alert_active 1 while an alert is active.\n# TYPE lbtrace_alert_active gauge"
    );
    for (k, step) in &s.active {
        let _ = writeln!(
            o,
            "lbtrace_alert_active{{alert=\"{}\",step=\"{step}\"}} 1",
            esc(k)
        );
    }
    o
}
