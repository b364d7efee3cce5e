//! The body of the TC and XDP programs: parse Ethernet (up to two VLAN tags), IPv4 (with
//! options) / IPv6, one level of IPIP / IPv6-in-IP / GRE tunnel (TCP inside: how tunnel-mode LBs
//! forward the client's SYN), then TCP or an ICMP / ICMPv6 error, and turn the control packets (SYN,
//! SYN-ACK, RST, FIN) of watched tuples and ICMP errors quoting a watched TCP tuple into events.
//! Any other packet costs a few header loads and one counter. Generic over where packet events
//! go ([`PacketSink`]): each program has a variant per sink.

use lbtrace_common::{Event, counter, encap, family, kind, tcp_flag};

use crate::{
    data::{self, Seg},
    header::{
        Bounds, ETH_P_IP, ETH_P_IPV6, GRE_CSUM, GRE_KEY, GRE_ROUTING, GRE_SEQ, IP4_LEN, IP6_LEN,
        IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, Ip4, Ip6, Payload, TCP_LEN, TCPOPT_EOL,
        TCPOPT_MSS, TCPOPT_NOP, Tcp, l2,
    },
    lookup::{count_flags, ports, stats, watched},
    maps::{DATA_MODE, count},
    ring::{PacketSink, emit_priority, now_ns},
};

/// An IP header, bounds-checked for its fixed length. Addresses are read from it only once a
/// packet turns out to matter.
#[derive(Clone, Copy)]
enum Ip<'a> {
    V4(Ip4<'a>),
    V6(Ip6<'a>),
}

impl Ip<'_> {
    #[inline(always)]
    fn saddr(self) -> [u8; 16] {
        match self {
            Self::V4(h) => h.saddr(),
            Self::V6(h) => h.saddr(),
        }
    }

    #[inline(always)]
    fn daddr(self) -> [u8; 16] {
        match self {
            Self::V4(h) => h.daddr(),
            Self::V6(h) => h.daddr(),
        }
    }
}

/// Where a TCP header or ICMP error sits once L3 is parsed.
struct L3<'a> {
    fam: u8,
    /// Offset of the L4 header.
    l4: usize,
    proto: u8,
    ip: Ip<'a>,
    /// L4 bytes (header and payload) as the IP header tells.
    l4_len: u16,
}

/// The IPv4 header at `off`; `None` for a later fragment (no L4 header), `Err` when malformed.
#[inline(always)]
fn ipv4(b: &Bounds, off: usize) -> Result<Option<L3<'_>>, ()> {
    let h = Ip4::new(b.at::<IP4_LEN>(off).ok_or(())?).ok_or(())?;
    if h.later_fragment() {
        return Ok(None);
    }
    Ok(Some(L3 {
        fam: family::V4,
        l4: off + h.ihl(),
        proto: h.proto(),
        ip: Ip::V4(h),
        l4_len: h.l4_len(),
    }))
}

/// The IPv6 header at `off`: TCP and ICMPv6 directly after the fixed header only.
#[inline(always)]
fn ipv6(b: &Bounds, off: usize) -> Result<Option<L3<'_>>, ()> {
    let h = Ip6::new(b.at::<IP6_LEN>(off).ok_or(())?).ok_or(())?;
    Ok(Some(L3 {
        fam: family::V6,
        l4: off + IP6_LEN,
        proto: h.next(),
        ip: Ip::V6(h),
        l4_len: h.l4_len(),
    }))
}

/// The shared body of the TC and XDP programs; `payload` reads a reply's status line for the
/// data-path mode's first-byte marks (`payload`).
#[inline(always)]
pub(crate) fn handle<S: PacketSink, P: Payload>(
    b: &Bounds,
    payload: &P,
    ifindex: u32,
    hook: u8,
) -> Result<(), ()> {
    count(counter::PACKETS);
    let (l3off, ethertype) = l2(b).ok_or(())?;
    let l3 = match ethertype {
        ETH_P_IP => ipv4(b, l3off)?,
        ETH_P_IPV6 => ipv6(b, l3off)?,
        _ => return Ok(()),
    };
    let Some(l3) = l3 else { return Ok(()) };
    match l3.proto {
        // The plain path with no tunnel: its copy of `tcp` has the tunnel branches compiled out,
        // so plain packets pay nothing for the tunnel code.
        IPPROTO_TCP => tcp::<S, P>(b, payload, &l3, None, ifindex, hook),
        IPPROTO_ICMP if l3.fam == family::V4 => icmp(b, &l3, ifindex, hook),
        IPPROTO_ICMPV6 if l3.fam == family::V6 => icmp(b, &l3, ifindex, hook),
        encap::IPIP | encap::IPV6 | encap::GRE => match tunnelled(b, &l3)? {
            Some((inner, outer)) => tcp::<S, P>(b, payload, &inner, Some(&outer), ifindex, hook),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// The outer IP header of a tunnelled packet.
struct Outer {
    proto: u8,
    fam: u8,
    saddr: [u8; 16],
    daddr: [u8; 16],
}

/// The inner IP header of an IPIP / IPv6-in-IP / GRE packet when it carries TCP, with the outer
/// header; `None` for other payloads, GRE with routing or another version, an inner fragment.
#[inline(always)]
fn tunnelled<'a>(b: &'a Bounds, l3: &L3<'a>) -> Result<Option<(L3<'a>, Outer)>, ()> {
    let (off, v6) = match l3.proto {
        encap::IPIP => (l3.l4, false),
        encap::IPV6 => (l3.l4, true),
        _ => {
            let g = b.at::<4>(l3.l4).ok_or(())?;
            let flags = g.u8::<0>();
            if flags & GRE_ROUTING != 0 || g.u8::<1>() & 7 != 0 {
                return Ok(None);
            }
            let words = 1
                + usize::from(flags & GRE_CSUM != 0)
                + usize::from(flags & GRE_KEY != 0)
                + usize::from(flags & GRE_SEQ != 0);
            match g.be16::<2>() {
                ETH_P_IP => (l3.l4 + 4 * words, false),
                ETH_P_IPV6 => (l3.l4 + 4 * words, true),
                _ => return Ok(None),
            }
        }
    };
    let inner = if v6 { ipv6(b, off)? } else { ipv4(b, off)? };
    Ok(inner.filter(|i| i.proto == IPPROTO_TCP).map(|i| {
        let outer = Outer {
            proto: l3.proto,
            fam: l3.fam,
            saddr: l3.ip.saddr(),
            daddr: l3.ip.daddr(),
        };
        (i, outer)
    }))
}

#[inline(always)]
fn tcp<S: PacketSink, P: Payload>(
    b: &Bounds,
    payload: &P,
    l3: &L3<'_>,
    outer: Option<&Outer>,
    ifindex: u32,
    hook: u8,
) -> Result<(), ()> {
    let t = Tcp(b.at::<TCP_LEN>(l3.l4).ok_or(())?);
    let flags = t.flags();
    // The fast path: data and pure ACKs stop here, before any map lookup; in the data-path
    // mode (`DATA_MODE`, a load-time constant) only pure ACKs do.
    if flags & tcp_flag::CONTROL == 0 && (DATA_MODE.load() == 0 || l3.l4_len <= t.doff()) {
        return Ok(());
    }
    let (sport, dport) = (t.sport(), t.dport());
    let Some(p) = ports(sport, dport) else {
        return Ok(());
    };
    let (saddr, daddr) = (l3.ip.saddr(), l3.ip.daddr());
    let Some(id) = watched(l3.fam, saddr, daddr, &p) else {
        return Ok(());
    };
    let doff = t.doff();
    let payload_len = l3.l4_len.saturating_sub(doff);
    let mss = if flags & tcp_flag::SYN != 0 {
        syn_mss(b, l3.l4, doff)
    } else {
        0
    };
    if flags & tcp_flag::CONTROL != 0 {
        count_flags(id, flags);
        S::emit(|e| {
            e.ts_ns = now_ns();
            e.ifindex = ifindex;
            e.kind = kind::PACKET;
            e.hook = hook;
            e.family = l3.fam;
            e.tcp_flags = flags;
            e.saddr = saddr;
            e.daddr = daddr;
            e.sport = sport;
            e.dport = dport;
            e.seq = t.seq();
            e.ack = t.ack();
            e.payload_len = payload_len;
            e.mss = mss;
            if let Some(o) = outer {
                e.outer_src = o.saddr;
                e.outer_dst = o.daddr;
                e.encap = [o.proto, o.fam];
            }
        });
    }
    // The data-path mode follows plain packets only (a DATA event's outer fields are its own).
    if DATA_MODE.load() != 0 && outer.is_none() {
        let seg = Seg {
            fam: l3.fam,
            saddr,
            daddr,
            sport,
            dport,
            flags,
            seq: t.seq(),
            ack: t.ack(),
            payload: payload_len,
            opt_len: doff.saturating_sub(TCP_LEN as u16),
            syn_mss: mss,
            data_at: l3.l4 + usize::from(doff),
        };
        data::track::<S, _>(&seg, || payload.status_line(b, seg.data_at), ifindex, hook);
    }
    Ok(())
}

/// Options a SYN's MSS is looked for in: Linux, Windows, the BSDs and macOS send it first, a
/// few stacks after a NOP or two. A bounded walk the verifier unrolls.
const MSS_OPTION_WALK: usize = 4;

/// The MSS option of the SYN or SYN-ACK whose TCP header is at `l4` with data offset `doff`; 0
/// when it has none within the first [`MSS_OPTION_WALK`] options, or the options are malformed.
#[inline(always)]
fn syn_mss(b: &Bounds, l4: usize, doff: u16) -> u16 {
    let end = l4 + usize::from(doff);
    let mut off = l4 + TCP_LEN;
    for _ in 0..MSS_OPTION_WALK {
        // 4 bytes: an MSS option's length, and room to read any option's kind and length.
        if off + 4 > end {
            break;
        }
        let Some(o) = b.at::<4>(off) else { break };
        match o.u8::<0>() {
            TCPOPT_EOL => break,
            TCPOPT_NOP => off += 1,
            TCPOPT_MSS => return if o.u8::<1>() == 4 { o.be16::<2>() } else { 0 },
            _ => {
                let len = usize::from(o.u8::<1>());
                if len < 2 {
                    break;
                }
                off += len;
            }
        }
    }
    0
}

/// ICMP destination unreachable / time exceeded (and ICMPv6 packet too big) quoting TCP.
#[inline(always)]
fn icmp(b: &Bounds, l3: &L3<'_>, ifindex: u32, hook: u8) -> Result<(), ()> {
    let h = b.at::<8>(l3.l4).ok_or(())?;
    let ty = h.u8::<0>();
    let is_error = if l3.fam == family::V4 {
        ty == 3 || ty == 11
    } else {
        ty == 1 || ty == 2 || ty == 3
    };
    if !is_error {
        return Ok(());
    }
    let inner = l3.l4 + 8;
    let q = if l3.fam == family::V4 {
        ipv4(b, inner)?
    } else {
        ipv6(b, inner)?
    };
    let Some(q) = q else { return Ok(()) };
    if q.proto != IPPROTO_TCP {
        return Ok(());
    }
    // RFC 792 guarantees 8 bytes of the quoted L4 header: ports and sequence number.
    let t = Tcp(b.at::<8>(q.l4).ok_or(())?);
    let (sport, dport) = (t.sport(), t.dport());
    let Some(p) = ports(sport, dport) else {
        return Ok(());
    };
    let (saddr, daddr) = (q.ip.saddr(), q.ip.daddr());
    let Some(id) = watched(q.fam, saddr, daddr, &p) else {
        return Ok(());
    };
    stats(id, |s| s.icmp += 1);
    let (outer_src, outer_dst, icmp_code) = (l3.ip.saddr(), l3.ip.daddr(), h.u8::<1>());
    emit_priority(|| Event {
        ts_ns: now_ns(),
        ifindex,
        kind: kind::ICMP,
        hook,
        family: q.fam,
        tcp_flags: 0,
        saddr,
        daddr,
        sport,
        dport,
        seq: t.seq(),
        ack: 0,
        reason: 0,
        outer_src,
        outer_dst,
        icmp_type: ty,
        icmp_code,
        payload_len: 0,
        mss: 0,
        encap: [0; 2],
    });
    Ok(())
}
