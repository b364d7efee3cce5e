//! Turning kernel events into output: tcpdump-like text lines or one JSON object per line.
//!
//! The JSON objects are documented in docs/output.md; later commands embed the same event objects.

use std::{collections::HashMap, io::Write};

use serde_json::Value;

use crate::{
    event::{Dir, Hook, KernelEvent},
    kernel::btf::DropReasons,
    record::{DataRecord, EventRecord, Tcp},
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
    serde_json::to_value(EventRecord::of(ev, clock, ifnames, reasons)).unwrap_or(Value::Null)
}

/// The time column of a text line: relative to `base_ns` when given (evidence in reports and
/// timelines), else wall-clock time of day.
pub fn time_text(ts_ns: u64, clock: &Clock, base_ns: Option<u64>) -> String {
    match base_ns {
        Some(b) => format!(
            "{:+10.6}s",
            (i128::from(ts_ns) - i128::from(b)) as f64 / 1e9
        ),
        None => {
            let t = clock.wall(ts_ns);
            format!(
                "{:02}:{:02}:{:02}.{:06}",
                t.hour(),
                t.minute(),
                t.second(),
                t.microsecond()
            )
        }
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
    record_text(
        &EventRecord::of(ev, clock, ifnames, reasons),
        &time_text(ev.ts_ns, clock, base_ns),
    )
}

/// The tcpdump-like text line of an event record, after the time column `time`.
pub fn record_text(rec: &EventRecord, time: &str) -> String {
    let iface = rec.iface().unwrap_or("-");
    let dir = match rec {
        EventRecord::Packet(p) => p.dir,
        EventRecord::Icmp(i) => i.dir,
        EventRecord::Drop(_) => None,
        EventRecord::Retrans(r) => r.dir.or(Some(Dir::Out)),
        EventRecord::Data(d) => d.dir,
        EventRecord::Reset(r) => r.dir,
    };
    let dir = match (rec.seen().hook, dir) {
        (Hook::Xdp, _) => "in(xdp)",
        (Hook::TcpRetransmit, _) => "RETRANS",
        (Hook::TcpSendReset | Hook::TcpReceiveReset, _) => "RESET",
        (_, Some(Dir::In)) => "in",
        (_, Some(Dir::Out)) => "out",
        (_, None) => "drop",
    };
    // A retransmission's ack is not traced (it is written when the segment leaves).
    let with_ack = !matches!(rec, EventRecord::Retrans(r) if r.dir.is_none());
    let tcp = |t: &Tcp| {
        let mut s = format!("{} > {}: Flags [{}], seq {}", t.src, t.dst, t.flags, t.seq);
        if with_ack && t.flags.contains('.') {
            s.push_str(&format!(", ack {}", t.ack));
        }
        if let Some(mss) = t.mss {
            s.push_str(&format!(", mss {mss}"));
        }
        s.push_str(&format!(", length {}", t.len));
        s
    };
    match rec {
        EventRecord::Packet(p) => match &p.tunnel {
            Some(t) => format!(
                "{time} {iface:<10} {dir:<7} {}, in {} {} > {}",
                tcp(&p.tcp),
                t.kind,
                t.src,
                t.dst
            ),
            None => format!("{time} {iface:<10} {dir:<7} {}", tcp(&p.tcp)),
        },
        EventRecord::Drop(d) => match &d.location {
            Some(at) => format!(
                "{time} {iface:<10} {dir:<7} {}, drop {} at {at}",
                tcp(&d.tcp),
                d.reason
            ),
            None => format!(
                "{time} {iface:<10} {dir:<7} {}, drop {}",
                tcp(&d.tcp),
                d.reason
            ),
        },
        EventRecord::Retrans(r) => format!(
            "{time} {iface:<10} {dir:<7} {}{}{}",
            tcp(&r.tcp),
            // Seen again at an interface (data-path mode), not sent again by this host.
            if r.dir.is_some() {
                ", retransmission"
            } else {
                ""
            },
            if r.full_size { ", full-size" } else { "" }
        ),
        EventRecord::Data(d) => {
            let mut mark = match (d.mark.as_str(), d.since_peer_ns) {
                (DataRecord::FIRST_BYTE, Some(ns)) => format!(
                    "first data, {:.3} ms after the other side's first data",
                    ns as f64 / 1e6
                ),
                (DataRecord::FIRST_BYTE, None) => "first data".to_owned(),
                (DataRecord::AFTER_FIN, _) => "data after the other side's FIN".to_owned(),
                (other, _) => other.to_owned(),
            };
            if let Some(code) = d.http_status {
                mark.push_str(&format!(", HTTP {code}"));
            }
            format!("{time} {iface:<10} {dir:<7} {}, {mark}", tcp(&d.tcp))
        }
        EventRecord::Reset(r) => {
            let mut s = format!(
                "{time} {iface:<10} {dir:<7} {} > {}: Flags [R], {}",
                r.src,
                r.dst,
                if r.dir == Some(Dir::In) {
                    "received"
                } else {
                    "sent"
                }
            );
            match &r.state {
                Some(st) => s.push_str(&format!(", socket {st}")),
                None => s.push_str(", no socket"),
            }
            if r.active {
                s.push_str(", aborted");
            }
            if let Some(reason) = &r.reason {
                s.push_str(&format!(", reason {reason}"));
            }
            s
        }
        EventRecord::Icmp(i) => format!(
            "{time} {iface:<10} {dir:<7} ICMP {} > {}: {} (type {} code {}) for {} > {} seq {}",
            i.src, i.dst, i.what, i.icmp_type, i.icmp_code, i.inner_src, i.inner_dst, i.inner_seq
        ),
    }
}

/// Writes one line; a closed stdout (`lbtrace trace | head`) ends output quietly.
pub fn write_line(out: &mut impl Write, line: &str) -> std::io::Result<()> {
    out.write_all(line.as_bytes())?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use lbtrace_common::tcp_flag::{ACK, SYN};

    use super::*;
    use crate::{event::KernelEvent, testutil::pkt};

    #[test]
    fn syn_lines_show_the_mss() {
        let line = |ev: &KernelEvent| {
            let (clock, reasons) = (Clock::new(), DropReasons::default());
            event_text(ev, &clock, &mut IfNames::default(), &reasons, Some(0))
        };
        let syn = KernelEvent {
            mss: 1460,
            ..pkt(1, Dir::In, "10.0.0.5:4000", "10.0.0.10:80", SYN, 7, 0)
        };
        assert!(
            line(&syn)
                .ends_with("10.0.0.5:4000 > 10.0.0.10:80: Flags [S], seq 7, mss 1460, length 0"),
            "{}",
            line(&syn)
        );
        let ack = pkt(
            2,
            Dir::Out,
            "10.0.0.10:80",
            "10.0.0.5:4000",
            SYN | ACK,
            9,
            8,
        );
        assert!(
            line(&ack).ends_with("Flags [S.], seq 9, ack 8, length 0"),
            "{}",
            line(&ack)
        );
        let retrans = KernelEvent {
            ifindex: 0,
            hook: Hook::TcpRetransmit,
            payload_len: 1448,
            mss: 1448,
            detail: crate::event::Detail::Retrans,
            ..pkt(3, Dir::Out, "10.0.0.10:80", "10.0.0.5:4000", ACK, 5000, 0)
        };
        assert!(
            line(&retrans).ends_with(
                " -          RETRANS 10.0.0.10:80 > 10.0.0.5:4000: Flags [.], seq 5000, mss 1448, length 1448, full-size"
            ),
            "{}",
            line(&retrans)
        );
    }

    #[test]
    fn reset_lines_and_records() {
        use crate::event::{Detail, ResetInfo, TCP_SYN_SENT};
        let clock = Clock::new();
        let reasons = DropReasons::default()
            .with_rst_reasons([(1, "NO_SOCKET".to_owned())].into_iter().collect());
        let reset = |hook, dir, src, dst, info| KernelEvent {
            ifindex: 0,
            hook,
            detail: Detail::Reset(info),
            ..pkt(5, dir, src, dst, lbtrace_common::tcp_flag::RST, 0, 0)
        };
        let line =
            |ev: &KernelEvent| event_text(ev, &clock, &mut IfNames::default(), &reasons, Some(0));
        let no_socket = reset(
            Hook::TcpSendReset,
            Dir::Out,
            "10.0.0.10:81",
            "10.0.0.5:4000",
            ResetInfo {
                state: None,
                active: false,
                reason: Some(1),
            },
        );
        assert!(
            line(&no_socket).ends_with(
                " -          RESET   10.0.0.10:81 > 10.0.0.5:4000: Flags [R], sent, no socket, reason NO_SOCKET"
            ),
            "{}",
            line(&no_socket)
        );
        let refused = reset(
            Hook::TcpReceiveReset,
            Dir::In,
            "10.0.1.11:8080",
            "10.0.1.1:40000",
            ResetInfo {
                state: Some(TCP_SYN_SENT),
                active: false,
                reason: None,
            },
        );
        assert!(
            line(&refused).ends_with(
                " -          RESET   10.0.1.11:8080 > 10.0.1.1:40000: Flags [R], received, socket SYN_SENT"
            ),
            "{}",
            line(&refused)
        );
        let aborted = reset(
            Hook::TcpSendReset,
            Dir::Out,
            "10.0.0.10:82",
            "10.0.0.5:4000",
            ResetInfo {
                state: Some(7),
                active: true,
                reason: Some(9),
            },
        );
        assert!(
            line(&aborted).ends_with("sent, socket CLOSE, aborted, reason RST_REASON_9"),
            "{}",
            line(&aborted)
        );
        // The JSON record reads back into the same event.
        for ev in [&no_socket, &refused, &aborted] {
            let rec = EventRecord::of(ev, &clock, &mut IfNames::default(), &reasons);
            let json = serde_json::to_value(&rec).unwrap();
            assert_eq!(json["type"], "reset", "{json}");
            let back: EventRecord = serde_json::from_value(json).unwrap();
            assert_eq!(back.to_event().as_ref(), Some(ev));
        }
    }

    #[test]
    fn data_path_lines_and_records() {
        use crate::event::{DataMark, Detail};
        let (clock, reasons) = (Clock::new(), DropReasons::default());
        let line =
            |ev: &KernelEvent| event_text(ev, &clock, &mut IfNames::default(), &reasons, Some(0));
        let seg = |detail, len| KernelEvent {
            payload_len: len,
            mss: 1448,
            detail,
            ..pkt(4, Dir::Out, "10.0.0.10:80", "10.0.0.5:4000", ACK, 5000, 90)
        };
        // Seen again at an interface: its direction and ack, and the word.
        let again = seg(Detail::Retrans, 1448);
        assert!(
            line(&again).ends_with(
                " out     10.0.0.10:80 > 10.0.0.5:4000: Flags [.], seq 5000, ack 90, mss 1448, length 1448, retransmission, full-size"
            ),
            "{}",
            line(&again)
        );
        let first = seg(
            Detail::Data(DataMark::FirstByte {
                since_ns: Some(1_843_210),
                http_status: Some(503),
            }),
            100,
        );
        assert!(
            line(&first).ends_with(
                "length 100, first data, 1.843 ms after the other side's first data, HTTP 503"
            ),
            "{}",
            line(&first)
        );
        let after = seg(Detail::Data(DataMark::AfterFin), 100);
        assert!(
            line(&after).ends_with("length 100, data after the other side's FIN"),
            "{}",
            line(&after)
        );
        // The JSON records carry what the text shows and give the events back.
        for ev in [&again, &first, &after] {
            let rec = EventRecord::of(ev, &clock, &mut IfNames::default(), &reasons);
            let json = serde_json::to_value(&rec).unwrap();
            let back: EventRecord = serde_json::from_value(json.clone()).unwrap();
            let got = back.to_event().unwrap();
            assert_eq!((&got.detail, got.dir), (&ev.detail, ev.dir), "{json}");
        }
        let json = |ev| {
            serde_json::to_value(EventRecord::of(
                ev,
                &clock,
                &mut IfNames::default(),
                &reasons,
            ))
            .unwrap()
        };
        let j = json(&first);
        assert_eq!(
            (&j["type"], &j["mark"], &j["since_peer_ns"], &j["dir"]),
            (
                &serde_json::json!("data"),
                &serde_json::json!("first_byte"),
                &serde_json::json!(1_843_210),
                &serde_json::json!("out")
            )
        );
        assert_eq!(j["http_status"], serde_json::json!(503));
        let j = json(&again);
        assert_eq!(
            (&j["type"], &j["hook"], &j["dir"], &j["full_size"]),
            (
                &serde_json::json!("retrans"),
                &serde_json::json!("tc"),
                &serde_json::json!("out"),
                &serde_json::json!(true)
            )
        );
    }
}
