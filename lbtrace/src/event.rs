//! Decoding of the kernel's fixed-size [`lbtrace_common::Event`] records into typed events.
//!
//! Pure and bounds-checked: bytes in, [`KernelEvent`] out, no IO. Unknown tags are errors the
//! caller counts, never panics.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use lbtrace_common::{EVENT_SIZE, Event, data_event, encap, family, hook, kind, reset, tcp_flag};

/// Where a packet was seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    Tc,
    Xdp,
    KfreeSkb,
    /// `tcp:tcp_retransmit_skb`: a segment this host's TCP stack sent again.
    TcpRetransmit,
    /// `tcp:tcp_send_reset`: a reset this host's TCP stack sent.
    TcpSendReset,
    /// `tcp:tcp_receive_reset`: a reset a socket of this host accepted.
    TcpReceiveReset,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dir {
    In,
    Out,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Detail {
    /// A TCP control packet.
    Packet,
    /// An ICMP error about the tuple: the ICMP packet's own addresses, type and code.
    Icmp {
        outer_src: IpAddr,
        outer_dst: IpAddr,
        icmp_type: u8,
        icmp_code: u8,
    },
    /// The kernel freed the packet with this `enum skb_drop_reason` value.
    Drop { reason: u32 },
    /// A retransmitted segment: `payload_len` is its length, `mss` the size from which it is
    /// full-size. From the `tcp:tcp_retransmit_skb` hook (`Hook::TcpRetransmit`): this host's
    /// TCP stack sent it again, `mss` the socket's MSS. From a TC / XDP hook (the data-path mode,
    /// `--data`): data seen again at that interface, whoever sent it (on a NAT LB the backend or
    /// the client), `mss` what its receiver advertised less this segment's option bytes (0 when
    /// the flow's handshake was not seen).
    Retrans,
    /// A data segment the data-path mode (`--data`) marks.
    Data(DataMark),
    /// A reset this host's TCP stack sent (`Hook::TcpSendReset`, dir out) or one of its sockets
    /// accepted (`Hook::TcpReceiveReset`, dir in); the tuple is the RST's on the wire.
    Reset(ResetInfo),
    /// A TCP control packet found inside a tunnel (IPIP, IPv6-in-IP, GRE): the tuple, flags and
    /// numbers are the inner packet's. An LB forwarding to its backends in a tunnel (IPVS
    /// tunnel mode, Katran-style LBs) sends the client's SYN so, unchanged inside.
    Tunnel(Tunnel),
}

/// The outer header of a tunnelled packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tunnel {
    /// The outer header's protocol: [`lbtrace_common::encap`] `IPIP`, `IPV6` or `GRE`.
    pub proto: u8,
    pub outer_src: IpAddr,
    pub outer_dst: IpAddr,
}

impl Tunnel {
    /// The tunnel's name as `ip link` calls the kind: `ipip`, `sit` (IPv6 in IPv4) / `ip6tnl`
    /// (anything in IPv6), `gre`.
    pub fn name(&self) -> &'static str {
        match (self.proto, self.outer_src.is_ipv6()) {
            (encap::GRE, _) => "gre",
            (_, true) => "ip6tnl",
            (encap::IPV6, false) => "sit",
            _ => "ipip",
        }
    }

    /// [`Self::name`] back to the protocol, for records read back; `inner_v6`: the inner
    /// packet's family (`ip6tnl` carries either).
    pub fn proto_of(name: &str, inner_v6: bool) -> Option<u8> {
        match name {
            "gre" => Some(encap::GRE),
            "sit" => Some(encap::IPV6),
            "ip6tnl" if inner_v6 => Some(encap::IPV6),
            "ipip" | "ip6tnl" => Some(encap::IPIP),
            _ => None,
        }
    }
}

/// What the reset tracepoints tell about a reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResetInfo {
    /// The socket's state (`skc_state`, [`tcp_state_name`]); `None`: the kernel found no socket
    /// for the segment it answered (seen on 6.10 and later only).
    pub state: Option<u8>,
    /// Sent with no segment to answer: the socket aborted (closed with unread data, SO_LINGER 0,
    /// out of memory).
    pub active: bool,
    /// The kernel's `enum sk_rst_reason` value (6.10 and later).
    pub reason: Option<u32>,
}

/// `TCP_SYN_SENT`, the state of a connecting socket.
pub const TCP_SYN_SENT: u8 = 2;
/// `TCP_TIME_WAIT`.
pub const TCP_TIME_WAIT: u8 = 6;

/// The kernel's name of a TCP state (`include/net/tcp_states.h`), without `TCP_`.
pub fn tcp_state_name(state: u8) -> String {
    const NAMES: [&str; 13] = [
        "",
        "ESTABLISHED",
        "SYN_SENT",
        "SYN_RECV",
        "FIN_WAIT1",
        "FIN_WAIT2",
        "TIME_WAIT",
        "CLOSE",
        "CLOSE_WAIT",
        "LAST_ACK",
        "LISTEN",
        "CLOSING",
        "NEW_SYN_RECV",
    ];
    match NAMES.get(usize::from(state)) {
        Some(n) if !n.is_empty() => (*n).to_owned(),
        _ => format!("STATE_{state}"),
    }
}

/// The value of a TCP state's name ([`tcp_state_name`] back).
pub fn tcp_state_value(name: &str) -> Option<u8> {
    (1..=12).find(|&s| tcp_state_name(s) == name)
}

/// What a data-path event marks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataMark {
    /// The first data byte of this direction seen at this interface; `since_ns` the time since
    /// the other direction's first byte (for a reply: time to first byte), `None` when this
    /// direction sent first; `http_status` the code of the HTTP/1.x status line the segment
    /// starts with, `None` when it starts with anything else.
    FirstByte {
        since_ns: Option<u64>,
        http_status: Option<u16>,
    },
    /// New data after the other side's FIN (once per direction).
    AfterFin,
}

/// One decoded kernel event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelEvent {
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// 0 when unknown (a drop of an skb without a device).
    pub ifindex: u32,
    pub hook: Hook,
    /// `None` for drops.
    pub dir: Option<Dir>,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub payload_len: u16,
    /// The MSS option of a SYN or SYN-ACK packet event, the socket's MSS of a retransmission; 0
    /// for others and for a SYN without one.
    pub mss: u16,
    pub detail: Detail,
    /// Drops: the kernel text address that freed the packet (`skb:kfree_skb`'s `location`);
    /// 0 for other events.
    pub location: u64,
}

impl KernelEvent {
    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// A connection's first packet: SYN without ACK.
    pub fn is_syn(&self) -> bool {
        self.has(tcp_flag::SYN) && !self.has(tcp_flag::ACK)
    }

    /// The answer to a SYN: SYN and ACK.
    pub fn is_syn_ack(&self) -> bool {
        self.has(tcp_flag::SYN) && self.has(tcp_flag::ACK)
    }

    /// Either of the two above: the SYN flag, with or without ACK.
    pub fn has_syn(&self) -> bool {
        self.has(tcp_flag::SYN)
    }

    /// RST set (with or without ACK).
    pub fn is_rst(&self) -> bool {
        self.has(tcp_flag::RST)
    }

    /// FIN set (with or without ACK).
    pub fn is_fin(&self) -> bool {
        self.has(tcp_flag::FIN)
    }

    /// ACK set: `ack` means something.
    pub fn has_ack(&self) -> bool {
        self.has(tcp_flag::ACK)
    }

    /// A retransmission of at least a full MSS of data (the socket's MSS known).
    pub fn full_size(&self) -> bool {
        matches!(self.detail, Detail::Retrans) && self.mss != 0 && self.payload_len >= self.mss
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("event record of {got} bytes, expected {EVENT_SIZE}")]
    Truncated { got: usize },
    #[error("unknown event kind {0}")]
    UnknownKind(u8),
    #[error("unknown data-path mark {0}")]
    UnknownDataMark(u32),
    #[error("unknown hook {0}")]
    UnknownHook(u8),
    #[error("unknown address family {0}")]
    UnknownFamily(u8),
}

fn ip(fam: u8, raw: &[u8; 16]) -> Result<IpAddr, DecodeError> {
    match fam {
        family::V4 => Ok(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
        family::V6 => Ok(IpAddr::V6(Ipv6Addr::from(*raw))),
        f => Err(DecodeError::UnknownFamily(f)),
    }
}

/// Decodes one ring-buffer record.
pub fn decode(buf: &[u8]) -> Result<KernelEvent, DecodeError> {
    if buf.len() < EVENT_SIZE {
        return Err(DecodeError::Truncated { got: buf.len() });
    }
    // SAFETY: the length is checked above and Event is plain old data of any bit pattern.
    let ev: Event = unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<Event>()) };
    let (hook, dir) = match ev.hook {
        hook::TC_INGRESS => (Hook::Tc, Some(Dir::In)),
        hook::TC_EGRESS => (Hook::Tc, Some(Dir::Out)),
        hook::XDP_INGRESS => (Hook::Xdp, Some(Dir::In)),
        hook::KFREE_SKB => (Hook::KfreeSkb, None),
        hook::TCP_RETRANSMIT => (Hook::TcpRetransmit, Some(Dir::Out)),
        hook::TCP_SEND_RESET => (Hook::TcpSendReset, Some(Dir::Out)),
        hook::TCP_RECEIVE_RESET => (Hook::TcpReceiveReset, Some(Dir::In)),
        h => return Err(DecodeError::UnknownHook(h)),
    };
    let detail = match ev.kind {
        kind::PACKET if ev.encap[0] != 0 => Detail::Tunnel(Tunnel {
            proto: ev.encap[0],
            outer_src: ip(ev.encap[1], &ev.outer_src)?,
            outer_dst: ip(ev.encap[1], &ev.outer_dst)?,
        }),
        kind::PACKET => Detail::Packet,
        kind::ICMP => Detail::Icmp {
            outer_src: ip(ev.family, &ev.outer_src)?,
            outer_dst: ip(ev.family, &ev.outer_dst)?,
            icmp_type: ev.icmp_type,
            icmp_code: ev.icmp_code,
        },
        kind::DROP => Detail::Drop { reason: ev.reason },
        kind::RETRANS => Detail::Retrans,
        kind::DATA => match ev.reason {
            data_event::RETRANS => Detail::Retrans,
            data_event::FIRST_BYTE => Detail::Data(DataMark::FirstByte {
                since_ns: Some(ev.location()).filter(|&n| n != 0),
                http_status: Some(ev.http_status()).filter(|&s| s != 0),
            }),
            data_event::AFTER_FIN => Detail::Data(DataMark::AfterFin),
            r => return Err(DecodeError::UnknownDataMark(r)),
        },
        kind::RESET => Detail::Reset(ResetInfo {
            state: (ev.icmp_type != 0).then_some(ev.icmp_type),
            active: ev.icmp_code & reset::ACTIVE != 0,
            reason: (ev.icmp_code & reset::HAS_REASON != 0).then_some(ev.reason),
        }),
        k => return Err(DecodeError::UnknownKind(k)),
    };
    Ok(KernelEvent {
        ts_ns: ev.ts_ns,
        ifindex: ev.ifindex,
        hook,
        dir,
        src: SocketAddr::new(ip(ev.family, &ev.saddr)?, ev.sport),
        dst: SocketAddr::new(ip(ev.family, &ev.daddr)?, ev.dport),
        flags: ev.tcp_flags,
        seq: ev.seq,
        ack: if ev.tcp_flags & tcp_flag::ACK != 0 {
            ev.ack
        } else {
            0
        },
        payload_len: ev.payload_len,
        mss: match ev.kind {
            kind::PACKET if ev.tcp_flags & tcp_flag::SYN != 0 => ev.mss,
            kind::RETRANS | kind::DATA => ev.mss,
            _ => 0,
        },
        location: if ev.kind == kind::DROP {
            ev.location()
        } else {
            0
        },
        detail,
    })
}

/// The TCP flags in tcpdump's order and letters (ACK, `.`, is written last).
const FLAG_LETTERS: [(u8, char); 8] = [
    (tcp_flag::FIN, 'F'),
    (tcp_flag::SYN, 'S'),
    (tcp_flag::RST, 'R'),
    (tcp_flag::PSH, 'P'),
    (tcp_flag::URG, 'U'),
    (tcp_flag::ECE, 'E'),
    (tcp_flag::CWR, 'W'),
    (tcp_flag::ACK, '.'),
];

/// TCP flags in tcpdump's notation: `S`, `S.`, `R.`, `FP.` ...
pub fn flags_str(flags: u8) -> String {
    let mut s: String = FLAG_LETTERS
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, c)| *c)
        .collect();
    if s.is_empty() {
        s.push_str("none");
    }
    s
}

/// The inverse of [`flags_str`]; `None` for a letter it never writes.
pub fn flags_from_str(s: &str) -> Option<u8> {
    if s == "none" {
        return Some(0);
    }
    s.chars().try_fold(0u8, |acc, c| {
        FLAG_LETTERS
            .iter()
            .find(|(_, l)| *l == c)
            .map(|(bit, _)| acc | bit)
    })
}

/// What an ICMP / ICMPv6 error means, in words.
pub fn icmp_what(v6: bool, ty: u8, code: u8) -> &'static str {
    if v6 {
        return match (ty, code) {
            (1, 0) => "no route to destination",
            (1, 1) => "administratively prohibited",
            (1, 3) => "address unreachable",
            (1, 4) => "port unreachable",
            (1, 5) => "source address failed policy",
            (1, 6) => "reject route",
            (1, _) => "destination unreachable",
            (2, _) => "packet too big",
            (3, 0) => "hop limit exceeded",
            (3, _) => "fragment reassembly time exceeded",
            _ => "icmpv6 error",
        };
    }
    match (ty, code) {
        (3, 0) => "net unreachable",
        (3, 1) => "host unreachable",
        (3, 2) => "protocol unreachable",
        (3, 3) => "port unreachable",
        (3, 4) => "fragmentation needed",
        (3, 9 | 10 | 13) => "administratively prohibited",
        (3, _) => "destination unreachable",
        (11, 0) => "ttl exceeded",
        (11, _) => "fragment reassembly time exceeded",
        _ => "icmp error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(f: impl FnOnce(&mut Event)) -> Vec<u8> {
        let mut ev = Event::zeroed();
        ev.ts_ns = 42;
        ev.ifindex = 7;
        ev.kind = kind::PACKET;
        ev.hook = hook::TC_INGRESS;
        ev.family = family::V4;
        ev.saddr[..4].copy_from_slice(&[10, 0, 0, 5]);
        ev.daddr[..4].copy_from_slice(&[10, 0, 0, 10]);
        ev.sport = 43210;
        ev.dport = 80;
        ev.tcp_flags = tcp_flag::SYN;
        ev.seq = 1000;
        ev.ack = 99;
        f(&mut ev);
        let p = std::ptr::from_ref(&ev).cast::<u8>();
        // SAFETY: Event is repr(C) plain old data of EVENT_SIZE bytes.
        unsafe { std::slice::from_raw_parts(p, EVENT_SIZE) }.to_vec()
    }

    #[test]
    fn decodes_a_syn() {
        let e = decode(&record(|_| {})).unwrap();
        assert_eq!(e.src.to_string(), "10.0.0.5:43210");
        assert_eq!(e.dst.to_string(), "10.0.0.10:80");
        assert_eq!((e.hook, e.dir), (Hook::Tc, Some(Dir::In)));
        assert_eq!(e.seq, 1000);
        // No ACK flag: the ack field means nothing and reads 0, as in tcpdump.
        assert_eq!(e.ack, 0);
        assert_eq!(e.detail, Detail::Packet);
        assert_eq!(e.mss, 0);
        let e = decode(&record(|ev| ev.mss = 1460)).unwrap();
        assert_eq!(e.mss, 1460);
    }

    #[test]
    fn mss_is_read_from_syn_packets_only() {
        let mss = |f: fn(&mut Event)| {
            decode(&record(|ev| {
                ev.mss = 1220;
                f(ev);
            }))
            .unwrap()
            .mss
        };
        assert_eq!(mss(|ev| ev.tcp_flags = tcp_flag::SYN | tcp_flag::ACK), 1220);
        assert_eq!(mss(|ev| ev.tcp_flags = tcp_flag::FIN | tcp_flag::ACK), 0);
        assert_eq!(
            mss(|ev| {
                ev.kind = kind::DROP;
                ev.hook = hook::KFREE_SKB;
            }),
            0
        );
    }

    #[test]
    fn decodes_ipv6_icmp_and_drops() {
        let e = decode(&record(|ev| {
            ev.family = family::V6;
            ev.saddr = "fd00::1".parse::<Ipv6Addr>().unwrap().octets();
            ev.daddr = "fd00::2".parse::<Ipv6Addr>().unwrap().octets();
            ev.kind = kind::ICMP;
            ev.outer_src = "fd00::9".parse::<Ipv6Addr>().unwrap().octets();
            ev.outer_dst = "fd00::1".parse::<Ipv6Addr>().unwrap().octets();
            ev.icmp_type = 1;
            ev.icmp_code = 4;
        }))
        .unwrap();
        assert_eq!(e.dst.to_string(), "[fd00::2]:80");
        assert!(matches!(
            e.detail,
            Detail::Icmp {
                icmp_type: 1,
                icmp_code: 4,
                ..
            }
        ));
        let e = decode(&record(|ev| {
            ev.kind = kind::DROP;
            ev.hook = hook::KFREE_SKB;
            ev.reason = 77;
            ev.outer_src = lbtrace_common::location_bytes(0xffff_ffff_81a0_005c);
        }))
        .unwrap();
        assert_eq!(
            (e.hook, e.dir, e.detail, e.location),
            (
                Hook::KfreeSkb,
                None,
                Detail::Drop { reason: 77 },
                0xffff_ffff_81a0_005c
            )
        );
    }

    #[test]
    fn decodes_tunnelled_packets() {
        let e = decode(&record(|ev| {
            ev.hook = hook::TC_EGRESS;
            ev.outer_src = "fd00::1".parse::<Ipv6Addr>().unwrap().octets();
            ev.outer_dst = "fd00::20".parse::<Ipv6Addr>().unwrap().octets();
            ev.encap = [encap::GRE, family::V6];
        }))
        .unwrap();
        // The inner packet is IPv4, the outer IPv6: the outer family reads the outer addresses.
        assert_eq!(e.src.to_string(), "10.0.0.5:43210");
        let Detail::Tunnel(t) = e.detail else {
            panic!("not a tunnel: {e:?}")
        };
        assert_eq!(t.outer_dst.to_string(), "fd00::20");
        assert_eq!((t.proto, t.name()), (encap::GRE, "gre"));
        let ipip = decode(&record(|ev| {
            ev.outer_src = [10, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            ev.outer_dst = [10, 0, 1, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            ev.encap = [encap::IPIP, family::V4];
        }))
        .unwrap();
        assert!(
            matches!(ipip.detail, Detail::Tunnel(t) if t.name() == "ipip"
                && t.outer_dst.to_string() == "10.0.1.20"),
            "{ipip:?}"
        );
        // A bad outer family is a decode error, not a guess.
        let bad = decode(&record(|ev| ev.encap = [encap::IPIP, 9]));
        assert_eq!(bad, Err(DecodeError::UnknownFamily(9)));
        for (name, outer, inner_v6, proto) in [
            ("ipip", "10.0.0.1", false, encap::IPIP),
            ("sit", "10.0.0.1", true, encap::IPV6),
            ("gre", "10.0.0.1", false, encap::GRE),
            ("ip6tnl", "fd00::1", false, encap::IPIP),
            ("ip6tnl", "fd00::1", true, encap::IPV6),
        ] {
            let t = Tunnel {
                proto: Tunnel::proto_of(name, inner_v6).unwrap(),
                outer_src: outer.parse().unwrap(),
                outer_dst: outer.parse().unwrap(),
            };
            assert_eq!((t.name(), t.proto), (name, proto));
        }
    }

    #[test]
    fn decodes_retransmissions() {
        let retrans = |len: u16| {
            decode(&record(|ev| {
                ev.kind = kind::RETRANS;
                ev.hook = hook::TCP_RETRANSMIT;
                ev.ifindex = 0;
                ev.tcp_flags = tcp_flag::PSH | tcp_flag::ACK;
                ev.payload_len = len;
                ev.mss = 1448;
            }))
            .unwrap()
        };
        let e = retrans(1448);
        assert_eq!(
            (e.hook, e.dir, &e.detail, e.mss),
            (Hook::TcpRetransmit, Some(Dir::Out), &Detail::Retrans, 1448)
        );
        assert!(e.full_size());
        assert!(!retrans(300).full_size());
        // A packet event is never a full-size retransmission.
        assert!(
            !decode(&record(|ev| ev.payload_len = 1448))
                .unwrap()
                .full_size()
        );
    }

    #[test]
    fn decodes_resets() {
        let rst = |hook: u8, state: u8, bits: u8, reason: u32| {
            decode(&record(|ev| {
                ev.kind = kind::RESET;
                ev.hook = hook;
                ev.ifindex = 0;
                ev.tcp_flags = tcp_flag::RST;
                ev.icmp_type = state;
                ev.icmp_code = bits;
                ev.reason = reason;
            }))
            .unwrap()
        };
        // 6.10+: no socket for the segment answered, reason NO_SOCKET (1).
        let e = rst(hook::TCP_SEND_RESET, 0, reset::HAS_REASON, 1);
        assert_eq!(
            (e.hook, e.dir, e.detail),
            (
                Hook::TcpSendReset,
                Some(Dir::Out),
                Detail::Reset(ResetInfo {
                    state: None,
                    active: false,
                    reason: Some(1)
                })
            )
        );
        // Before 6.10: an aborting socket, no reason whatever the field holds.
        let e = rst(hook::TCP_SEND_RESET, 7, reset::ACTIVE, 5);
        assert_eq!(
            e.detail,
            Detail::Reset(ResetInfo {
                state: Some(7),
                active: true,
                reason: None
            })
        );
        let e = rst(hook::TCP_RECEIVE_RESET, TCP_SYN_SENT, 0, 0);
        assert_eq!((e.hook, e.dir), (Hook::TcpReceiveReset, Some(Dir::In)));
        assert_eq!(tcp_state_name(TCP_SYN_SENT), "SYN_SENT");
        assert_eq!(tcp_state_name(0), "STATE_0");
        assert_eq!(tcp_state_name(200), "STATE_200");
        assert_eq!(tcp_state_value("TIME_WAIT"), Some(TCP_TIME_WAIT));
        assert_eq!(tcp_state_value("STATE_0"), None);
    }

    #[test]
    fn decodes_data_path_marks() {
        let data = |mark: u32, since: u64| {
            decode(&record(|ev| {
                ev.kind = kind::DATA;
                ev.hook = hook::TC_EGRESS;
                ev.tcp_flags = tcp_flag::ACK;
                ev.reason = mark;
                ev.payload_len = 1448;
                ev.mss = 1448;
                ev.outer_src = lbtrace_common::location_bytes(since);
            }))
        };
        // A forwarded retransmission is a retransmission seen at the TC hook, full-size here.
        let e = data(data_event::RETRANS, 0).unwrap();
        assert_eq!(
            (e.hook, e.dir, &e.detail),
            (Hook::Tc, Some(Dir::Out), &Detail::Retrans)
        );
        assert!(e.full_size());
        assert_eq!(
            data(data_event::FIRST_BYTE, 2_500_000).unwrap().detail,
            Detail::Data(DataMark::FirstByte {
                since_ns: Some(2_500_000),
                http_status: None,
            })
        );
        assert_eq!(
            data(data_event::FIRST_BYTE, 0).unwrap().detail,
            Detail::Data(DataMark::FirstByte {
                since_ns: None,
                http_status: None,
            })
        );
        assert_eq!(
            data(data_event::AFTER_FIN, 0).unwrap().detail,
            Detail::Data(DataMark::AfterFin)
        );
        assert_eq!(data(9, 0), Err(DecodeError::UnknownDataMark(9)));
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        assert_eq!(decode(&[0u8; 10]), Err(DecodeError::Truncated { got: 10 }));
        assert_eq!(
            decode(&record(|ev| ev.kind = 9)),
            Err(DecodeError::UnknownKind(9))
        );
        assert_eq!(
            decode(&record(|ev| ev.hook = 0)),
            Err(DecodeError::UnknownHook(0))
        );
        assert_eq!(
            decode(&record(|ev| ev.family = 5)),
            Err(DecodeError::UnknownFamily(5))
        );
    }

    #[test]
    fn flag_predicates() {
        use tcp_flag::*;
        let with = |flags| decode(&record(|ev| ev.tcp_flags = flags)).unwrap();
        let syn = with(SYN);
        assert!(syn.is_syn() && syn.has_syn() && !syn.is_syn_ack() && !syn.has_ack());
        let syn_ack = with(SYN | ACK);
        assert!(!syn_ack.is_syn() && syn_ack.has_syn() && syn_ack.is_syn_ack());
        let rst = with(RST | ACK);
        assert!(rst.is_rst() && !rst.is_fin() && !rst.has_syn() && rst.has_ack());
        let fin = with(FIN | PSH | ACK);
        assert!(fin.is_fin() && !fin.is_rst());
    }

    #[test]
    fn flags_use_tcpdump_notation() {
        use tcp_flag::*;
        assert_eq!(flags_str(SYN), "S");
        assert_eq!(flags_str(SYN | ACK), "S.");
        assert_eq!(flags_str(RST), "R");
        assert_eq!(flags_str(RST | ACK), "R.");
        assert_eq!(flags_str(FIN | ACK), "F.");
        assert_eq!(flags_str(FIN | PSH | ACK), "FP.");
        assert_eq!(flags_str(ACK), ".");
        assert_eq!(flags_str(0), "none");
        for f in 0..=u8::MAX {
            assert_eq!(flags_from_str(&flags_str(f)), Some(f), "{f:#x}");
        }
        assert_eq!(flags_from_str("S?"), None);
    }
}
