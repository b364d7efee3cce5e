//! The reset tracers' bodies: `tcp:tcp_send_reset` and `tcp:tcp_receive_reset` for watched
//! tuples in the traced network namespace. They fire only when this host's TCP stack sends or
//! accepts a reset, so they cost nothing per packet. The tuple is the RST's on the wire: from
//! the socket ([`sock_tuple`], local -> peer for a sent reset, reversed for a received one),
//! or, for a sent reset with no socket (6.10 and later), from the answered segment's headers,
//! reversed. The socket's state (`skc_state`) and the kernel's `sk_rst_reason` go with it.

use aya_ebpf::programs::RawTracePointContext;
use lbtrace_common::{Event, hook, kind, reset, tcp_flag};

use crate::{
    drop::{read, skb_net, skb_tcp},
    lookup::Tuple,
    maps::{NETNS_INUM, OFFSETS, SOCK_OFFSETS},
    retrans::sock_tuple,
    ring::{emit_priority, now_ns},
};

/// The reset as it leaves this host: from the socket when there is one, else from the answered
/// segment (`skb`), reversed; `None` for tuples not watched or another namespace.
#[inline(always)]
fn sent_tuple(sk: u64, skb: u64) -> Option<Tuple> {
    if sk != 0 {
        return sock_tuple(sk);
    }
    if skb == 0 {
        return None;
    }
    let (_, net) = skb_net(skb)?;
    if read::<u32>(net, OFFSETS.load().net_inum)? != NETNS_INUM.load() {
        return None;
    }
    Some(skb_tcp(skb)?.tuple.reversed())
}

#[inline(always)]
fn emit(hook: u8, t: &Tuple, state: u8, bits: u8, reason: u32) {
    emit_priority(|| Event {
        ts_ns: now_ns(),
        ifindex: 0,
        kind: kind::RESET,
        hook,
        family: t.fam,
        tcp_flags: tcp_flag::RST,
        saddr: t.saddr,
        daddr: t.daddr,
        sport: t.sport,
        dport: t.dport,
        seq: 0,
        ack: 0,
        reason,
        outer_src: [0; 16],
        outer_dst: [0; 16],
        icmp_type: state,
        icmp_code: bits,
        payload_len: 0,
        mss: 0,
        encap: [0; 2],
    });
}

/// `tcp:tcp_send_reset(sk, skb[, reason])`. `WITH_REASON` (6.10 and later) reads `args[2]`;
/// older kernels refuse a program that reads past their two arguments, so it is a separate
/// program (`tp_tcp_send_reset_sk`), as for the drop tracer. `skb` NULL: an active reset.
#[inline(always)]
pub(crate) fn tcp_send_reset<const WITH_REASON: bool>(ctx: &RawTracePointContext) -> Option<()> {
    let sk: u64 = ctx.arg(0);
    let skb: u64 = ctx.arg(1);
    let t = sent_tuple(sk, skb)?;
    t.watched()?;
    let state: u8 = if sk != 0 {
        read(sk, SOCK_OFFSETS.load().state).unwrap_or(0)
    } else {
        0
    };
    let mut bits = if skb == 0 { reset::ACTIVE } else { 0 };
    let reason = if WITH_REASON {
        bits |= reset::HAS_REASON;
        let r: u64 = ctx.arg(2);
        r as u32
    } else {
        0
    };
    emit(hook::TCP_SEND_RESET, &t, state, bits, reason);
    Some(())
}

/// `tcp:tcp_receive_reset(sk)`: a full socket of this host accepted a reset.
#[inline(always)]
pub(crate) fn tcp_receive_reset(ctx: &RawTracePointContext) -> Option<()> {
    let sk: u64 = ctx.arg(0);
    if sk == 0 {
        return None;
    }
    let t = sock_tuple(sk)?.reversed();
    t.watched()?;
    let state: u8 = read(sk, SOCK_OFFSETS.load().state).unwrap_or(0);
    emit(hook::TCP_RECEIVE_RESET, &t, state, 0, 0);
    Some(())
}
