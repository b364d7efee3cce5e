//! lbtrace: proves, with kernel evidence, whether a load balancer is the problem.
//!
//! # Layout
//! ```text
//! kernel::Tracer ──(ring buffers)──▶ event::decode ──KernelEvent──▶ render::{text,json}
//!     │  btf: offsets + drop-reason names from /sys/kernel/btf/vmlinux
//!     │  counters: per-CPU sums (emitted, lost, parsed, per-endpoint)
//! netif: which interfaces carry the endpoints' traffic; XDP holders
//! endpoint: `--vip` / `--backend` parsing and map keys
//! trace / doctor: the commands
//! ```

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
