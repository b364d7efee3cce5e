//! lbtrace's kernel programs: the entry points. The work is in the modules:
//!
//! * `packet` (with `header`): `tc_ingress` / `tc_egress` (TCX) and `xdp_ingress` (XDP, opt-in)
//!   parse Ethernet (up to two VLAN tags), IPv4 (with options) / IPv6, TCP and ICMP / ICMPv6
//!   errors; the control packets (SYN, SYN-ACK, RST, FIN) of watched tuples and ICMP errors
//!   quoting a watched TCP tuple become events. Any other packet costs a few header loads and
//!   one counter.
//! * `data` (the data-path mode, `--data`, off unless asked for): for watched tuples, per-flow
//!   state in an LRU map marks the first data byte each way, retransmitted data and data after
//!   a FIN.
//! * `drop`: `tp_kfree_skb` (raw tracepoint `skb:kfree_skb`): drops of watched tuples in the
//!   traced network namespace, with the kernel's drop reason; data-packet drops are only counted.
//!   `tp_kfree_skb_loc` is the same for kernels before 5.17 (no `reason` argument).
//! * `retrans`: `tp_tcp_retransmit` (raw tracepoint `tcp:tcp_retransmit_skb`): segments of
//!   watched tuples this host's TCP stack retransmits, with their length and the socket's MSS.
//! * `reset`: `tp_tcp_send_reset` / `tp_tcp_send_reset_sk` (raw tracepoint `tcp:tcp_send_reset`,
//!   with and without the 6.10 `reason` argument) and `tp_tcp_receive_reset`
//!   (`tcp:tcp_receive_reset`): resets of watched tuples this host's TCP stack sends or accepts.
//! * `lookup`: is a tuple watched (the `PORTS` / `PORT_SLOTS` / `ENDPOINTS` tables).
//! * `ring`: writing events, every one counted as emitted or lost.
//! * `maps`: the maps and load-time globals, shared with userspace through `lbtrace_common`.
//!
//! Every program fails open: TC programs always return `TCX_NEXT` (TC_ACT_UNSPEC) so programs
//! attached after lbtrace still run, XDP always returns `XDP_PASS`, and no packet is ever written.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod data;
mod drop;
mod header;
mod lookup;
mod maps;
mod packet;
mod reset;
mod retrans;
mod ring;

use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, raw_tracepoint, xdp},
    programs::{RawTracePointContext, TcContext, XdpContext},
};
use lbtrace_common::{counter, hook};

use crate::{
    header::{Bounds, FirstBuffer, Skb},
    maps::count,
    ring::{PacketSink, PerCpuRings, SharedRing},
};

#[inline(always)]
fn tc<S: PacketSink>(ctx: &TcContext, hook: u8) -> i32 {
    // SAFETY: `skb` is the program's `__sk_buff` context, valid for the whole run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if packet::handle::<S, _>(&Bounds::tc(ctx), &Skb(ctx), ifindex, hook).is_err() {
        count(counter::PARSE_ERRORS);
    }
    // TCX_NEXT: never end the chain, whatever happened.
    TC_ACT_UNSPEC
}

#[classifier]
pub fn tc_ingress(ctx: TcContext) -> i32 {
    tc::<PerCpuRings>(&ctx, hook::TC_INGRESS)
}

#[classifier]
pub fn tc_egress(ctx: TcContext) -> i32 {
    tc::<PerCpuRings>(&ctx, hook::TC_EGRESS)
}

/// `tc_ingress` for legacy TC (clsact + cls_bpf, kernels without TCX): the same body under a name
/// that makes lbtrace's filters recognisable in `tc filter show` (the filter takes the program's
/// name). TC_ACT_UNSPEC there means "continue with the next filter".
#[classifier]
pub fn lbtrace_tc_in(ctx: TcContext) -> i32 {
    tc::<PerCpuRings>(&ctx, hook::TC_INGRESS)
}

/// `tc_egress` for legacy TC, see `lbtrace_tc_in`.
#[classifier]
pub fn lbtrace_tc_eg(ctx: TcContext) -> i32 {
    tc::<PerCpuRings>(&ctx, hook::TC_EGRESS)
}

/// Frags-aware (`xdp.frags`): attaching it does not cap the interface's MTU. Headers are read from
/// the first buffer only, which always holds them.
#[xdp(frags)]
pub fn xdp_ingress(ctx: XdpContext) -> u32 {
    xdp::<PerCpuRings>(&ctx)
}

#[inline(always)]
fn xdp<S: PacketSink>(ctx: &XdpContext) -> u32 {
    let ifindex = ctx.ingress_ifindex() as u32;
    if packet::handle::<S, _>(&Bounds::xdp(ctx), &FirstBuffer, ifindex, hook::XDP_INGRESS).is_err()
    {
        count(counter::PARSE_ERRORS);
    }
    xdp_action::XDP_PASS
}

// The `_rb` variants: the same programs writing packet events to the `PACKET_EVENTS` BPF ring
// buffer, for kernels whose verifier refuses the per-CPU rings' atomic fetch-add (before 5.12).
// Userspace loads one set or the other.

#[classifier]
pub fn tc_ingress_rb(ctx: TcContext) -> i32 {
    tc::<SharedRing>(&ctx, hook::TC_INGRESS)
}

#[classifier]
pub fn tc_egress_rb(ctx: TcContext) -> i32 {
    tc::<SharedRing>(&ctx, hook::TC_EGRESS)
}

#[classifier]
pub fn lbtrace_tc_in_rb(ctx: TcContext) -> i32 {
    tc::<SharedRing>(&ctx, hook::TC_INGRESS)
}

#[classifier]
pub fn lbtrace_tc_eg_rb(ctx: TcContext) -> i32 {
    tc::<SharedRing>(&ctx, hook::TC_EGRESS)
}

#[xdp(frags)]
pub fn xdp_ingress_rb(ctx: XdpContext) -> u32 {
    xdp::<SharedRing>(&ctx)
}

/// `skb:kfree_skb(skb, location, reason, rx_sk)` (5.17 and later).
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn tp_kfree_skb(ctx: RawTracePointContext) -> i32 {
    let _ = drop::kfree_skb::<true>(&ctx);
    0
}

/// `skb:kfree_skb(skb, location)` (before 5.17): the same without reading `reason`.
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn tp_kfree_skb_loc(ctx: RawTracePointContext) -> i32 {
    let _ = drop::kfree_skb::<false>(&ctx);
    0
}

/// `tcp:tcp_retransmit_skb(sk, skb, ...)`: fires only on a retransmission.
#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn tp_tcp_retransmit(ctx: RawTracePointContext) -> i32 {
    let _ = retrans::tcp_retransmit_skb(&ctx);
    0
}

/// `tcp:tcp_send_reset(sk, skb, reason)` (6.10 and later): fires for every reset sent.
#[raw_tracepoint(tracepoint = "tcp_send_reset")]
pub fn tp_tcp_send_reset(ctx: RawTracePointContext) -> i32 {
    let _ = reset::tcp_send_reset::<true>(&ctx);
    0
}

/// `tcp:tcp_send_reset(sk, skb)` (before 6.10): resets of full sockets only.
#[raw_tracepoint(tracepoint = "tcp_send_reset")]
pub fn tp_tcp_send_reset_sk(ctx: RawTracePointContext) -> i32 {
    let _ = reset::tcp_send_reset::<false>(&ctx);
    0
}

/// `tcp:tcp_receive_reset(sk)`: a socket of this host accepted a reset.
#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub fn tp_tcp_receive_reset(ctx: RawTracePointContext) -> i32 {
    let _ = reset::tcp_receive_reset(&ctx);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
