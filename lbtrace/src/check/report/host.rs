//! The LB host's limits in the check report: each finding in words, what to check next, the
//! counters behind it before -> after, and the host's samples in JSON and text.

use serde_json::{Value, json};

use super::status_str;
use crate::{
    check::verdict::{HostFacts, HostFinding, Status, Verdict},
    host::{PortsBy, Pressure, words},
};

/// One host finding: the pressure as `host::Pressure` serializes it (`kind`, its counters with
/// `before` and `after`), plus its step, status and words.
pub(super) fn host_finding_json(h: &HostFinding) -> Value {
    let mut o = serde_json::to_value(&h.pressure).unwrap_or_else(|_| json!({}));
    o["step"] = json!(h.step());
    o["status"] = json!(status_str(h.status));
    o["summary"] = json!(host_words(h));
    o["next"] = json!(host_next(&h.pressure));
    if let Some((n, of)) = h.unanswered {
        o["unanswered"] = json!(n);
        o["connections"] = json!(of);
    }
    o
}

/// The host's samples before and after the window, and every finding.
pub(super) fn host_json(h: &HostFacts, v: &Verdict) -> Value {
    let counters: serde_json::Map<String, Value> = h
        .after
        .counters
        .iter()
        .map(|(k, a)| {
            let b = h.before.counters.get(k).copied();
            (k.clone(), json!({"before": b, "after": a}))
        })
        .collect();
    let pressure: Vec<Value> = v
        .steps
        .iter()
        .flat_map(|s| s.host.iter().map(host_finding_json))
        .collect();
    json!({
        "listen": {"before": h.before.listen, "after": h.after.listen},
        "counters": counters,
        "conntrack": {"before": h.before.conntrack, "after": h.after.conntrack},
        "ports": {"before": h.before.ports, "after": h.after.ports},
        "ip_forward": h.after.ip_forward,
        "rp_filter_strict": h.after.rp_filter_strict,
        "syncookies": h.after.syncookies,
        "nat": h.after.nat,
        "conntrack_read": h.after.conntrack_read,
        "pressure": pressure,
    })
}

/// A host finding in words (the wording `watch`'s alerts use too).
pub fn host_words(h: &HostFinding) -> String {
    words::words(&h.pressure, h.unanswered, h.status == Status::Fail)
}

/// What to look at for a host finding.
pub(super) fn host_next(p: &Pressure) -> Option<String> {
    Some(match p {
        Pressure::AcceptQueueFull { .. } => "check the LB's maxconn (HAProxy: global and frontend), its listen backlog (and net.core.somaxconn), and whether its workers are saturated (CPU, connections held by slow clients or backends)".to_owned(),
        Pressure::SynCookies { .. } => "a SYN flood, or a SYN queue too small for the load: net.ipv4.tcp_max_syn_backlog, the listen backlog, net.ipv4.tcp_syncookies".to_owned(),
        Pressure::Conntrack { .. } => "raise net.netfilter.nf_conntrack_max, shorten conntrack timeouts, or find what fills the table (conntrack -S, conntrack -L)".to_owned(),
        Pressure::SourcePorts { ports, .. } if ports.by == PortsBy::Conntrack => "widen the SNAT rule's port range (or drop it: 1024-65535), SNAT to more addresses toward the backend, or shorten conntrack's TIME_WAIT timeout".to_owned(),
        Pressure::SourcePorts { .. } | Pressure::NoLocalPort { .. } => "widen net.ipv4.ip_local_port_range, give the LB more source addresses toward the backend, or reuse backend connections (keep-alive)".to_owned(),
        Pressure::NoForwarding { .. } => "enable forwarding: sysctl -w net.ipv4.ip_forward=1".to_owned(),
        Pressure::StrictRpFilter { .. } => "set rp_filter to loose (2) on that interface, or route the replies to those clients through it".to_owned(),
    })
}

/// The counters and readings behind a host finding, before -> after.
pub(super) fn host_evidence(p: &Pressure) -> Vec<String> {
    words::evidence(p)
}

/// The host's limits before -> after the window, for the text report.
pub(super) fn host_text(h: &HostFacts) -> String {
    let mut out = String::from("\nLB host (before -> after the window):\n");
    for l in &h.after.listen {
        let before = h
            .before
            .listen
            .iter()
            .find(|b| b.listener == l.listener)
            .map_or_else(|| "-".to_owned(), |b| format!("{}/{}", b.depth, b.backlog));
        out.push_str(&format!(
            "  listener {:<22} accept queue {before} -> {}/{}\n",
            l.listener.to_string(),
            l.depth,
            l.backlog
        ));
    }
    let moved: Vec<String> = h
        .after
        .counters
        .iter()
        .map(|(k, a)| {
            let b = h.before.counters.get(k).copied().unwrap_or(*a);
            let name = k.rsplit('.').next().unwrap_or(k);
            if *a == b {
                format!("{name} {a}")
            } else {
                format!("{name} {b} -> {a}")
            }
        })
        .collect();
    if !moved.is_empty() {
        out.push_str(&format!("  {}\n", moved.join(", ")));
    }
    if let (Some(b), Some(a)) = (&h.before.conntrack, &h.after.conntrack) {
        let stat =
            |c: &crate::host::procfs::Conntrack, k: &str| c.stats.get(k).copied().unwrap_or(0);
        out.push_str(&format!(
            "  conntrack {} -> {} of {}, insert_failed {} -> {}, drop {} -> {}, early_drop {} -> {}\n",
            b.count,
            a.count,
            a.max,
            stat(b, "insert_failed"),
            stat(a, "insert_failed"),
            stat(b, "drop"),
            stat(a, "drop"),
            stat(b, "early_drop"),
            stat(a, "early_drop")
        ));
    }
    for p in &h.after.ports {
        out.push_str(&format!("  {}\n", words::port_line(p)));
    }
    out
}
