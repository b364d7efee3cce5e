//! Turning kernel events into output: tcpdump-like text lines or one JSON object per line.
//!
//! The JSON objects are documented in docs/output.md; later commands embed the same event objects.

use std::{collections::HashMap, io::Write};

use serde_json::{Value, json};

use crate::{
    event::{Detail, Dir, Hook, KernelEvent, flags_str, icmp_what},
    kernel::btf::DropReasons,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Converts CLOCK_MONOTONIC kernel timestamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// realtime - monotonic, in ns.
    offset_ns: i128,
}

fn now_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write to.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl Clock {
    pub fn new() -> Self {
        Self {
            offset_ns: now_ns(libc::CLOCK_REALTIME) - now_ns(libc::CLOCK_MONOTONIC),
        }
    }

    /// Current CLOCK_MONOTONIC ns (the clock of `bpf_ktime_get_ns`).
    pub fn monotonic_ns() -> u64 {
        u64::try_from(now_ns(libc::CLOCK_MONOTONIC)).unwrap_or(0)
    }

    pub fn wall(&self, mono_ns: u64) -> time::OffsetDateTime {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(mono_ns) + self.offset_ns)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
    }

    pub fn rfc3339(&self, mono_ns: u64) -> String {
        self.wall(mono_ns)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// Interface names by index, as seen in the traced namespace; resolved once and cached.
#[derive(Default)]
pub struct IfNames {
    cache: HashMap<u32, Option<String>>,
}

impl IfNames {
    pub fn name(&mut self, ifindex: u32) -> Option<String> {
        if ifindex == 0 {
            return None;
        }
        self.cache
            .entry(ifindex)
            .or_insert_with(|| {
                let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
                // SAFETY: buf has IF_NAMESIZE bytes as if_indextoname requires.
                let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
                if p.is_null() {
                    return None;
                }
                // SAFETY: on success buf holds a NUL-terminated name.
                Some(
                    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
                        .to_string_lossy()
                        .into_owned(),
                )
            })
            .clone()
    }

    pub fn insert(&mut self, ifindex: u32, name: String) {
        self.cache.insert(ifindex, Some(name));
    }
}

/// The shared event object: what `trace` prints and what later commands embed as evidence.
pub fn event_json(
    ev: &KernelEvent,
    clock: &Clock,
    ifnames: &mut IfNames,
    reasons: &DropReasons,
) -> Value {
    let iface = ifnames.name(ev.ifindex);
    let hook = match ev.hook {
        Hook::Tc => "tc",
        Hook::Xdp => "xdp",
        Hook::KfreeSkb => "kfree_skb",
    };
    let dir = ev.dir.map(|d| match d {
        Dir::In => "in",
        Dir::Out => "out",
    });
    match &ev.detail {
        Detail::Packet => json!({
            "type": "packet", "time": clock.rfc3339(ev.ts_ns), "ts_ns": ev.ts_ns,
            "iface": iface, "ifindex": ev.ifindex, "hook": hook, "dir": dir,
            "src": ev.src.to_string(), "dst": ev.dst.to_string(), "flags": flags_str(ev.flags),
            "seq": ev.seq, "ack": ev.ack, "len": ev.payload_len,
        }),
        Detail::Icmp {
            outer_src,
            outer_dst,
            icmp_type,
            icmp_code,
        } => json!({
            "type": "icmp", "time": clock.rfc3339(ev.ts_ns), "ts_ns": ev.ts_ns,
            "iface": iface, "ifindex": ev.ifindex, "hook": hook, "dir": dir,
            "src": outer_src.to_string(), "dst": outer_dst.to_string(),
            "icmp_type": icmp_type, "icmp_code": icmp_code,
            "what": icmp_what(outer_src.is_ipv6(), *icmp_type, *icmp_code),
            "inner_src": ev.src.to_string(), "inner_dst": ev.dst.to_string(), "inner_seq": ev.seq,
        }),
        Detail::Drop { reason } => json!({
            "type": "drop", "time": clock.rfc3339(ev.ts_ns), "ts_ns": ev.ts_ns,
            "iface": iface, "ifindex": ev.ifindex, "hook": hook,
            "reason": reasons.name(*reason), "reason_code": reason,
            "src": ev.src.to_string(), "dst": ev.dst.to_string(), "flags": flags_str(ev.flags),
            "seq": ev.seq, "ack": ev.ack, "len": ev.payload_len,
        }),
    }
}

/// The tcpdump-like text line of an event. `base_ns`: print times relative to it (evidence in
/// reports) instead of wall-clock time.
pub fn event_text(
    ev: &KernelEvent,
    clock: &Clock,
    ifnames: &mut IfNames,
    reasons: &DropReasons,
    base_ns: Option<u64>,
) -> String {
    let time = match base_ns {
        Some(b) => format!(
            "{:+10.6}s",
            (i128::from(ev.ts_ns) - i128::from(b)) as f64 / 1e9
        ),
        None => {
            let t = clock.wall(ev.ts_ns);
            format!(
                "{:02}:{:02}:{:02}.{:06}",
                t.hour(),
                t.minute(),
                t.second(),
                t.microsecond()
            )
        }
    };
    let iface = ifnames.name(ev.ifindex).unwrap_or_else(|| "-".to_owned());
    let dir = match (ev.hook, ev.dir) {
        (Hook::Xdp, _) => "in(xdp)",
        (_, Some(Dir::In)) => "in",
        (_, Some(Dir::Out)) => "out",
        (_, None) => "drop",
    };
    let tcp = |ev: &KernelEvent| {
        let mut s = format!(
            "{} > {}: Flags [{}], seq {}",
            ev.src,
            ev.dst,
            flags_str(ev.flags),
            ev.seq
        );
        if ev.flags & lbtrace_common::tcp_flag::ACK != 0 {
            s.push_str(&format!(", ack {}", ev.ack));
        }
        s.push_str(&format!(", length {}", ev.payload_len));
        s
    };
    match &ev.detail {
        Detail::Packet => format!("{time} {iface:<10} {dir:<7} {}", tcp(ev)),
        Detail::Drop { reason } => {
            format!(
                "{time} {iface:<10} {dir:<7} {}, drop {}",
                tcp(ev),
                reasons.name(*reason)
            )
        }
        Detail::Icmp {
            outer_src,
            outer_dst,
            icmp_type,
            icmp_code,
        } => format!(
            "{time} {iface:<10} {dir:<7} ICMP {outer_src} > {outer_dst}: {} (type {icmp_type} code {icmp_code}) for {} > {} seq {}",
            icmp_what(outer_src.is_ipv6(), *icmp_type, *icmp_code),
            ev.src,
            ev.dst,
            ev.seq
        ),
    }
}

/// Writes one line; a closed stdout (`lbtrace trace | head`) ends output quietly.
pub fn write_line(out: &mut impl Write, line: &str) -> std::io::Result<()> {
    out.write_all(line.as_bytes())?;
    out.write_all(b"\n")
}
