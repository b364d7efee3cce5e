//! Hand-made kernel events for the unit tests of the pure engines.

use std::net::SocketAddr;

use crate::event::{Detail, Dir, Hook, KernelEvent};

pub fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A TCP control packet seen by TC at `ms` milliseconds.
pub fn pkt(ms: u64, dir: Dir, src: &str, dst: &str, flags: u8, seq: u32, ack: u32) -> KernelEvent {
    KernelEvent {
        ts_ns: ms * 1_000_000,
        ifindex: 2,
        hook: Hook::Tc,
        dir: Some(dir),
        src: sa(src),
        dst: sa(dst),
        flags,
        seq,
        ack,
        payload_len: 0,
        mss: 0,
        detail: Detail::Packet,
        location: 0,
    }
}

/// A kernel drop of a packet with `reason`.
pub fn drop(ms: u64, src: &str, dst: &str, flags: u8, seq: u32, reason: u32) -> KernelEvent {
    KernelEvent {
        dir: None,
        hook: Hook::KfreeSkb,
        detail: Detail::Drop { reason },
        ..pkt(ms, Dir::In, src, dst, flags, seq, 0)
    }
}
