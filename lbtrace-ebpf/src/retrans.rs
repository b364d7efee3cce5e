//! The retransmission tracer's body: `tcp:tcp_retransmit_skb(sk, skb)` for watched tuples in the
//! traced network namespace. It fires only when this host's TCP stack sends a segment again, so
//! it costs nothing per packet. The tuple comes from the socket, the segment's sequence number
//! and flags from its `tcp_skb_cb`, its length from `skb->len` and the socket's MSS from
//! `tcp_sock.mss_cache`, at offsets userspace read from BTF (`SOCK_OFFSETS`).

use aya_ebpf::programs::RawTracePointContext;
use lbtrace_common::{Event, family, hook, kind};

use crate::{
    drop::{read, read_buf},
    lookup::Tuple,
    maps::{NETNS_INUM, OFFSETS, SOCK_OFFSETS},
    ring::{emit_priority, now_ns},
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// The tuple of socket `sk`, local end as source (any `sock_common`: full, request or TIME_WAIT socket) when it
/// lives in the traced network namespace; `None` elsewhere or when a read faults.
#[inline(always)]
pub(crate) fn sock_tuple(sk: u64) -> Option<Tuple> {
    let so = SOCK_OFFSETS.load();
    let net: u64 = read(sk, OFFSETS.load().sk_net)?;
    if net == 0 || read::<u32>(net, OFFSETS.load().net_inum)? != NETNS_INUM.load() {
        return None;
    }
    let mut sport: u16 = read(sk, so.num)?;
    if sport == 0 {
        // A full socket closing has left its port's hash (`skc_num` 0, e.g. aborted with
        // SO_LINGER 0); its `inet_sport` still holds the port. Request and TIME_WAIT sockets,
        // which are not `inet_sock`s, always have `skc_num`.
        sport = u16::from_be(read(sk, so.inet_sport)?);
    }
    let dport = u16::from_be(read(sk, so.dport)?);
    let v4 = || -> Option<(u8, [u8; 16], [u8; 16])> {
        let (s, d): (u32, u32) = (read(sk, so.rcv_saddr)?, read(sk, so.daddr)?);
        let addr = |a: u32| {
            let b = a.to_ne_bytes();
            [b[0], b[1], b[2], b[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        };
        Some((family::V4, addr(s), addr(d)))
    };
    let (fam, saddr, daddr) = match read::<u16>(sk, so.family)? {
        AF_INET => v4()?,
        AF_INET6 => {
            let d = read_buf::<16>(sk + u64::from(so.v6_daddr))?;
            // An IPv4 peer of a dual-stack socket (::ffff:a.b.c.d): its IPv4 fields hold the
            // tuple, and the endpoints are watched as IPv4.
            if d[..10] == [0; 10] && d[10] == 0xff && d[11] == 0xff {
                v4()?
            } else {
                (
                    family::V6,
                    read_buf::<16>(sk + u64::from(so.v6_rcv_saddr))?,
                    d,
                )
            }
        }
        _ => return None,
    };
    Some(Tuple {
        fam,
        saddr,
        daddr,
        sport,
        dport,
    })
}

#[inline(always)]
pub(crate) fn tcp_retransmit_skb(ctx: &RawTracePointContext) -> Option<()> {
    let sk: u64 = ctx.arg(0);
    let skb: u64 = ctx.arg(1);
    if sk == 0 || skb == 0 {
        return None;
    }
    let so = SOCK_OFFSETS.load();
    let t = sock_tuple(sk)?;
    t.watched()?;
    let len: u32 = read(skb, so.skb_len).unwrap_or(0);
    let seq: u32 = read(skb, so.skb_cb).unwrap_or(0);
    let flags: u8 = read(skb, so.skb_cb + so.cb_tcp_flags).unwrap_or(0);
    let mss: u32 = read(sk, so.mss_cache).unwrap_or(0);
    emit_priority(|| Event {
        ts_ns: now_ns(),
        ifindex: 0,
        kind: kind::RETRANS,
        hook: hook::TCP_RETRANSMIT,
        family: t.fam,
        tcp_flags: flags,
        saddr: t.saddr,
        daddr: t.daddr,
        sport: t.sport,
        dport: t.dport,
        seq,
        ack: 0,
        reason: 0,
        outer_src: [0; 16],
        outer_dst: [0; 16],
        icmp_type: 0,
        icmp_code: 0,
        payload_len: u16::try_from(len).unwrap_or(u16::MAX),
        mss: u16::try_from(mss).unwrap_or(u16::MAX),
        encap: [0; 2],
    });
    Some(())
}
