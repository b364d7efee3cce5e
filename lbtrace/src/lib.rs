//! lbtrace: proves, with kernel evidence, whether a load balancer is the problem.
//!
//! # Layout
//! ```text
//! kernel::Tracer ──(per-CPU rings, ring buffer)──▶ session::drain ──KernelEvent──┐
//!   │ btf: sk_buff offsets and drop-reason names from /sys/kernel/btf/vmlinux     │
//!   │ counters: per-CPU sums (emitted, lost, parsed, per endpoint)                │
//!   ▼                                                                             ▼
//! trace   render: text / JSON lines (record: the typed JSON shared with dump)
//! check   probe (TCP / TLS / HTTP, series) + host (the LB's own limits) + events
//!           ──▶ check::verdict: one module per checklist step ──▶ check::report
//! watch   watch::recorder (connections, findings) ──▶ watch::alerts ──▶ stdout,
//!           --on-alert (watch::on_alert), metrics, the dump socket (watch::socket)
//! dump    asks watch's socket; doctor: what this host supports
//! ```
//! `checklist` is the vocabulary check and watch share (steps, TCP flag and sequence rules, drop
//! classes); `session` the plumbing every tracing command shares (config, signals, ready file,
//! non-blocking output); `files` how files are created as root; `netif` which interfaces carry
//! the endpoints' traffic; `endpoint` the `--vip` / `--backend` values.

pub mod check;
pub mod checklist;
pub mod cli;
pub mod doctor;
pub mod dump;
pub mod endpoint;
pub mod event;
pub mod files;
pub mod host;
pub mod kernel;
pub mod netif;
pub mod pcap;
pub mod probe;
pub mod record;
pub mod render;
pub mod replies;
pub mod session;
pub mod trace;
pub mod watch;

#[cfg(test)]
mod testutil;

/// An error chain as one line: "what failed: because: because". A verifier log, which is long
/// by nature, follows on the next lines.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if parts.last().is_some_and(|p| p.contains(&s)) {
            continue;
        }
        parts.push(s);
    }
    parts.join(": ")
}
