//! The JSON records lbtrace prints, as types: one [`EventRecord`] per kernel event (what `trace`
//! prints and what `check`, `watch` and `dump` embed) and one [`ConnRecord`] per recorded
//! connection (what the tripwire hands to `dump`). Written by `render` and `watch::history`,
//! read back by `dump`; field order is the order of docs/output.md.

use std::net::{IpAddr, SocketAddr};

use crate::{
    checklist::Step,
    event::{
        DataMark, Detail, Dir, Hook, KernelEvent, ResetInfo, Tunnel, flags_from_str, flags_str,
        icmp_what, tcp_state_name, tcp_state_value,
    },
    kernel::btf::DropReasons,
    render::{Clock, IfNames},
    watch::recorder::{Accounting, Finding, Join},
};

/// Where and when an event was seen: the keys every event object starts with.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Seen {
    pub time: String,
    pub ts_ns: u64,
    pub iface: Option<String>,
    pub ifindex: u32,
    pub hook: Hook,
}

/// A TCP header's tuple and control fields: the keys packet and drop objects end with.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Tcp {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub flags: String,
    pub seq: u32,
    pub ack: u32,
    pub len: u16,
    /// The MSS option of a SYN or SYN-ACK; absent for other packets and a SYN without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mss: Option<u16>,
}

/// A TCP control packet of a watched tuple (`"type": "packet"`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PacketRecord {
    #[serde(flatten)]
    pub seen: Seen,
    pub dir: Option<Dir>,
    #[serde(flatten)]
    pub tcp: Tcp,
    /// The tunnel the packet was found in (absent for a plain packet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelRecord>,
}

/// The outer header of a tunnelled packet: `ipip`, `sit`, `ip6tnl` or `gre`, and its addresses.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TunnelRecord {
    pub kind: String,
    pub src: IpAddr,
    pub dst: IpAddr,
}

/// An ICMP error quoting a watched tuple (`"type": "icmp"`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct IcmpRecord {
    #[serde(flatten)]
    pub seen: Seen,
    pub dir: Option<Dir>,
    /// The ICMP packet's own addresses.
    pub src: IpAddr,
    pub dst: IpAddr,
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub what: String,
    /// The quoted TCP packet's tuple.
    pub inner_src: SocketAddr,
    pub inner_dst: SocketAddr,
    pub inner_seq: u32,
}

/// A packet of a watched tuple the kernel freed with a drop reason (`"type": "drop"`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DropRecord {
    #[serde(flatten)]
    pub seen: Seen,
    pub reason: String,
    pub reason_code: u32,
    /// Where the kernel freed the packet (`nf_hook_slow+0x5c`): on kernels without drop reasons
    /// (before 5.17) only, where `reason` is lbtrace's nearest reason for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(flatten)]
    pub tcp: Tcp,
}

/// A segment of a watched tuple retransmitted (`"type": "retrans"`): by the LB host's TCP
/// stack (hook `tcp_retransmit`), or seen again at an interface in the data-path mode (hook `tc`
/// or `xdp`, with `dir`: a forwarded retransmission).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RetransRecord {
    #[serde(flatten)]
    pub seen: Seen,
    /// Seen at an interface (data-path mode): which way; absent for the LB host's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<Dir>,
    /// At least a full MSS of data (`len` >= `mss`).
    pub full_size: bool,
    #[serde(flatten)]
    pub tcp: Tcp,
}

/// A data segment the data-path mode (`--data`) marks (`"type": "data"`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DataRecord {
    #[serde(flatten)]
    pub seen: Seen,
    pub dir: Option<Dir>,
    /// `first_byte` (the first data of this direction seen at this interface) or `after_fin`
    /// (new data after the other side's FIN).
    pub mark: String,
    /// `first_byte` only: nanoseconds since the other direction's first byte (for a reply, the
    /// time to first byte); absent when this direction sent first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_peer_ns: Option<u64>,
    /// `first_byte` only: the status code of the HTTP/1.x status line the segment starts with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    #[serde(flatten)]
    pub tcp: Tcp,
}

impl DataRecord {
    pub const FIRST_BYTE: &str = "first_byte";
    pub const AFTER_FIN: &str = "after_fin";

    fn mark_of(&self) -> Option<DataMark> {
        match self.mark.as_str() {
            Self::FIRST_BYTE => Some(DataMark::FirstByte {
                since_ns: self.since_peer_ns,
                http_status: self.http_status,
            }),
            Self::AFTER_FIN => Some(DataMark::AfterFin),
            _ => None,
        }
    }
}

/// A reset this host's TCP stack sent (hook `tcp_send_reset`, `dir` out) or one of its sockets
/// accepted (hook `tcp_receive_reset`, `dir` in) (`"type": "reset"`). The tuple is the RST's on
/// the wire.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ResetRecord {
    #[serde(flatten)]
    pub seen: Seen,
    pub dir: Option<Dir>,
    /// The socket's TCP state (`ESTABLISHED`, `SYN_SENT`, `CLOSE`, `TIME_WAIT`, ...); absent when
    /// the kernel found no socket for the segment it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Sent with no segment to answer: the socket aborted (closed with unread data, SO_LINGER 0).
    pub active: bool,
    /// The kernel's `enum sk_rst_reason` name (6.10 and later), e.g. `NO_SOCKET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason_code: Option<u32>,
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// One kernel event as printed: the event object of docs/output.md.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum EventRecord {
    Packet(PacketRecord),
    Icmp(IcmpRecord),
    Drop(DropRecord),
    Retrans(RetransRecord),
    Data(DataRecord),
    Reset(ResetRecord),
}

impl EventRecord {
    /// The record of `ev`: wall-clock time from `clock`, interface name from `ifnames`, drop
    /// reason name from `reasons`.
    pub fn of(
        ev: &KernelEvent,
        clock: &Clock,
        ifnames: &mut IfNames,
        reasons: &DropReasons,
    ) -> Self {
        let seen = Seen {
            time: clock.rfc3339(ev.ts_ns),
            ts_ns: ev.ts_ns,
            iface: ifnames.name(ev.ifindex),
            ifindex: ev.ifindex,
            hook: ev.hook,
        };
        let tcp = || Tcp {
            src: ev.src,
            dst: ev.dst,
            flags: flags_str(ev.flags),
            seq: ev.seq,
            ack: ev.ack,
            len: ev.payload_len,
            mss: (ev.mss != 0).then_some(ev.mss),
        };
        match &ev.detail {
            Detail::Packet => Self::Packet(PacketRecord {
                seen,
                dir: ev.dir,
                tcp: tcp(),
                tunnel: None,
            }),
            Detail::Tunnel(t) => Self::Packet(PacketRecord {
                seen,
                dir: ev.dir,
                tcp: tcp(),
                tunnel: Some(TunnelRecord {
                    kind: t.name().to_owned(),
                    src: t.outer_src,
                    dst: t.outer_dst,
                }),
            }),
            Detail::Icmp {
                outer_src,
                outer_dst,
                icmp_type,
                icmp_code,
            } => Self::Icmp(IcmpRecord {
                seen,
                dir: ev.dir,
                src: *outer_src,
                dst: *outer_dst,
                icmp_type: *icmp_type,
                icmp_code: *icmp_code,
                what: icmp_what(outer_src.is_ipv6(), *icmp_type, *icmp_code).to_owned(),
                inner_src: ev.src,
                inner_dst: ev.dst,
                inner_seq: ev.seq,
            }),
            Detail::Drop { reason } => Self::Drop(DropRecord {
                seen,
                reason: reasons.name(*reason),
                reason_code: *reason,
                location: reasons.location(ev.location),
                tcp: tcp(),
            }),
            Detail::Retrans => Self::Retrans(RetransRecord {
                dir: ev.dir.filter(|_| ev.hook != Hook::TcpRetransmit),
                seen,
                full_size: ev.full_size(),
                tcp: tcp(),
            }),
            Detail::Reset(r) => Self::Reset(ResetRecord {
                seen,
                dir: ev.dir,
                state: r.state.map(tcp_state_name),
                active: r.active,
                reason: r.reason.map(|v| reasons.rst_name(v)),
                reason_code: r.reason,
                src: ev.src,
                dst: ev.dst,
            }),
            Detail::Data(mark) => {
                let (mark, since_peer_ns, http_status) = match *mark {
                    DataMark::FirstByte {
                        since_ns,
                        http_status,
                    } => (DataRecord::FIRST_BYTE, since_ns, http_status),
                    DataMark::AfterFin => (DataRecord::AFTER_FIN, None, None),
                };
                Self::Data(DataRecord {
                    seen,
                    dir: ev.dir,
                    mark: mark.to_owned(),
                    since_peer_ns,
                    http_status,
                    tcp: tcp(),
                })
            }
        }
    }

    /// Where and when the event was seen.
    pub fn seen(&self) -> &Seen {
        match self {
            Self::Packet(p) => &p.seen,
            Self::Icmp(i) => &i.seen,
            Self::Drop(d) => &d.seen,
            Self::Retrans(r) => &r.seen,
            Self::Data(d) => &d.seen,
            Self::Reset(r) => &r.seen,
        }
    }

    pub fn ts_ns(&self) -> u64 {
        self.seen().ts_ns
    }

    pub fn iface(&self) -> Option<&str> {
        self.seen().iface.as_deref()
    }

    /// The kernel event back (for a pcap file); `None` for flags lbtrace never writes.
    pub fn to_event(&self) -> Option<KernelEvent> {
        let seen = self.seen();
        let from_tcp = |dir, t: &Tcp, detail| -> Option<KernelEvent> {
            Some(KernelEvent {
                ts_ns: seen.ts_ns,
                ifindex: seen.ifindex,
                hook: seen.hook,
                dir,
                src: t.src,
                dst: t.dst,
                flags: flags_from_str(&t.flags)?,
                seq: t.seq,
                ack: t.ack,
                payload_len: t.len,
                mss: t.mss.unwrap_or(0),
                detail,
                location: 0,
            })
        };
        match self {
            Self::Packet(p) => {
                let detail = match &p.tunnel {
                    Some(t) => Detail::Tunnel(Tunnel {
                        proto: Tunnel::proto_of(&t.kind, p.tcp.src.is_ipv6())?,
                        outer_src: t.src,
                        outer_dst: t.dst,
                    }),
                    None => Detail::Packet,
                };
                from_tcp(p.dir, &p.tcp, detail)
            }
            Self::Drop(d) => from_tcp(
                None,
                &d.tcp,
                Detail::Drop {
                    reason: d.reason_code,
                },
            ),
            Self::Retrans(r) => from_tcp(r.dir.or(Some(Dir::Out)), &r.tcp, Detail::Retrans),
            Self::Data(d) => from_tcp(d.dir, &d.tcp, Detail::Data(d.mark_of()?)),
            Self::Reset(r) => Some(KernelEvent {
                ts_ns: seen.ts_ns,
                ifindex: seen.ifindex,
                hook: seen.hook,
                dir: r.dir,
                src: r.src,
                dst: r.dst,
                flags: lbtrace_common::tcp_flag::RST,
                seq: 0,
                ack: 0,
                payload_len: 0,
                mss: 0,
                detail: Detail::Reset(ResetInfo {
                    state: match &r.state {
                        Some(s) => Some(tcp_state_value(s)?),
                        None => None,
                    },
                    active: r.active,
                    reason: r.reason_code,
                }),
                location: 0,
            }),
            Self::Icmp(i) => Some(KernelEvent {
                ts_ns: seen.ts_ns,
                ifindex: seen.ifindex,
                hook: seen.hook,
                dir: i.dir,
                src: i.inner_src,
                dst: i.inner_dst,
                flags: 0,
                seq: i.inner_seq,
                ack: 0,
                payload_len: 0,
                mss: 0,
                detail: Detail::Icmp {
                    outer_src: i.src,
                    outer_dst: i.dst,
                    icmp_type: i.icmp_type,
                    icmp_code: i.icmp_code,
                },
                location: 0,
            }),
        }
    }
}
/// A recorded connection's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnStatus {
    /// Closed without a finding.
    Ok,
    /// At least one finding.
    Fail,
    /// Still open, no finding yet.
    Open,
}

/// The backend side of a recorded connection.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BackendLegRecord {
    pub lb: SocketAddr,
    pub backend: SocketAddr,
    pub join: Join,
    pub answered: bool,
    pub events: Vec<EventRecord>,
}

/// One client connection of the tripwire's history (`"type": "connection"`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename = "connection")]
pub struct ConnRecord {
    pub id: u64,
    pub vip: SocketAddr,
    pub client: SocketAddr,
    pub start: String,
    pub start_ns: u64,
    pub duration_ms: f64,
    /// The lowest failing step.
    pub step: Option<Step>,
    pub status: ConnStatus,
    pub findings: Vec<Finding>,
    pub client_leg: Vec<EventRecord>,
    pub backend_leg: Option<BackendLegRecord>,
    pub truncated_events: u32,
}

/// The tripwire's answer to a dump request (`"type": "dump"`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename = "dump")]
pub struct DumpRecord {
    pub recorder: Accounting,
    pub connections: Vec<ConnRecord>,
    /// The tripwire's latest alerts and recoveries, oldest first: the objects its output
    /// printed (`"type": "alert"` / `"recovered"`), at most [`MAX_NOTICES`] kept. Absent from
    /// an older tripwire's answer.
    #[serde(default)]
    pub notices: Vec<serde_json::Value>,
    /// Alerts and recoveries older than the kept ones, no longer held.
    #[serde(default)]
    pub notices_dropped: u64,
}

/// Alerts and recoveries the tripwire keeps for `dump` (the newest; a JSON object of a few KiB
/// each at most, under 1 MiB in all).
pub const MAX_NOTICES: usize = 256;

/// The last line of `lbtrace dump --format json` (`"type": "recorder"`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename = "recorder")]
pub struct RecorderRecord {
    pub recorder: Accounting,
}

#[cfg(test)]
mod tests {
    use lbtrace_common::tcp_flag::{ACK, FIN, PSH, SYN};

    use super::*;
    use crate::testutil::{drop, pkt};

    fn reasons() -> DropReasons {
        DropReasons::from_pairs(&[(6, "NETFILTER_DROP")])
    }

    /// Serialized records, parsed back, serialize to the same bytes and give the event back.
    #[test]
    fn event_records_round_trip() {
        let icmp = KernelEvent {
            detail: Detail::Icmp {
                outer_src: "10.0.0.9".parse().unwrap(),
                outer_dst: "10.0.0.1".parse().unwrap(),
                icmp_type: 3,
                icmp_code: 3,
            },
            ..pkt(7, Dir::In, "10.0.0.1:4000", "10.0.0.9:80", 0, 55, 0)
        };
        for ev in [
            KernelEvent {
                mss: 1460,
                ..pkt(
                    5,
                    Dir::Out,
                    "10.0.0.10:80",
                    "10.0.0.5:4000",
                    SYN | ACK,
                    77,
                    1001,
                )
            },
            pkt(
                6,
                Dir::In,
                "[fd00::5]:4000",
                "[fd00::10]:80",
                FIN | PSH | ACK,
                9,
                3,
            ),
            drop(8, "10.0.0.5:4000", "10.0.0.10:80", SYN, 1000, 6),
            icmp,
            KernelEvent {
                mss: 1460,
                detail: Detail::Tunnel(Tunnel {
                    proto: lbtrace_common::encap::GRE,
                    outer_src: "10.0.1.1".parse().unwrap(),
                    outer_dst: "10.0.1.20".parse().unwrap(),
                }),
                ..pkt(10, Dir::Out, "10.0.0.5:4000", "10.0.0.10:80", SYN, 1000, 0)
            },
            KernelEvent {
                ifindex: 0,
                hook: Hook::TcpRetransmit,
                payload_len: 1448,
                mss: 1448,
                detail: Detail::Retrans,
                ..pkt(9, Dir::Out, "10.0.0.10:80", "10.0.0.5:4000", ACK, 5000, 77)
            },
        ] {
            let rec = EventRecord::of(&ev, &Clock::new(), &mut IfNames::default(), &reasons());
            let json = serde_json::to_string(&rec).unwrap();
            let back: EventRecord = serde_json::from_str(&json).unwrap();
            assert_eq!(back, rec);
            assert_eq!(serde_json::to_string(&back).unwrap(), json);
            assert_eq!(back.to_event().unwrap(), ev, "{json}");
        }
    }

    #[test]
    fn event_records_have_the_documented_keys_in_order() {
        let ev = drop(8, "10.0.0.5:4000", "10.0.0.10:80", SYN, 1000, 6);
        let rec = EventRecord::of(&ev, &Clock::new(), &mut IfNames::default(), &reasons());
        let v = serde_json::to_value(&rec).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "type",
                "time",
                "ts_ns",
                "iface",
                "ifindex",
                "hook",
                "reason",
                "reason_code",
                "src",
                "dst",
                "flags",
                "seq",
                "ack",
                "len"
            ]
        );
        assert_eq!(v["type"], "drop");
        assert_eq!(v["hook"], "kfree_skb");
        assert_eq!(v["reason"], "NETFILTER_DROP");
        assert_eq!(v["src"], "10.0.0.5:4000");
        assert_eq!(v["flags"], "S");
    }

    #[test]
    fn connection_records_round_trip() {
        let c = ConnRecord {
            id: 3,
            vip: "10.0.0.10:80".parse().unwrap(),
            client: "10.0.0.5:4000".parse().unwrap(),
            start: "2026-11-29T10:00:00.5Z".into(),
            start_ns: 5,
            duration_ms: 1.25,
            step: Some(Step::LbHandling),
            status: ConnStatus::Fail,
            findings: vec![Finding::NoListener],
            client_leg: Vec::new(),
            backend_leg: None,
            truncated_events: 0,
        };
        let json = serde_json::to_string(&c).unwrap();
        assert!(
            json.starts_with(r#"{"type":"connection","id":3,"vip":"10.0.0.10:80""#),
            "{json}"
        );
        assert!(
            json.contains(r#""step":2,"status":"fail","findings":[{"kind":"no_listener"}]"#),
            "{json}"
        );
        let back: ConnRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
    }
}
