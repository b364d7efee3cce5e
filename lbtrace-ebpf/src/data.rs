//! The data-path mode (`--data`, off by default): for watched tuples only, per-flow state in the
//! `FLOWS` LRU map marks the first data byte each way, data seen again with a sequence number
//! already passed (a retransmission by whichever host sent it: on a NAT LB, the backend's or the
//! client's), and data after the other side's FIN. A first byte that starts with an HTTP/1.x
//! status line carries its code (the 3 digits only; read on that mark alone, through the
//! program's [`crate::header::Payload`] reader). Called by the packet programs after the tuple
//! matched; with `DATA_MODE` 0 they never call it and the verifier drops the code.
//!
//! Flows are per interface (`FlowKey::ifindex`): a forwarded segment is seen once where it comes
//! in and once where it leaves, and each place keeps its own marks, so one crossing is never
//! taken for a retransmission. Two CPUs may update one flow at once (its directions arrive on
//! different queues); the marks are plain stores, so such a race can only lose or repeat a mark.

use core::ptr::{addr_of_mut, write_volatile};

use aya_ebpf::bindings::BPF_NOEXIST;
use lbtrace_common::{FlowKey, FlowState, addr_words, data_event, flow_flag, kind, tcp_flag};

use crate::{
    header::STATUS_LINE,
    maps::FLOWS,
    ring::{PacketSink, now_ns},
};

/// A TCP segment of a watched tuple, as the packet programs parsed it.
pub(crate) struct Seg {
    pub(crate) fam: u8,
    pub(crate) saddr: [u8; 16],
    pub(crate) daddr: [u8; 16],
    pub(crate) sport: u16,
    pub(crate) dport: u16,
    pub(crate) flags: u8,
    pub(crate) seq: u32,
    pub(crate) ack: u32,
    /// Bytes of data.
    pub(crate) payload: u16,
    /// Bytes of TCP options (the header beyond its fixed 20).
    pub(crate) opt_len: u16,
    /// The MSS option of a SYN / SYN-ACK, 0 otherwise.
    pub(crate) syn_mss: u16,
    /// Offset of the data in the packet.
    pub(crate) data_at: usize,
}

/// The status code of an HTTP/1.x status line (`HTTP/1.` digit, space, 3 digits), 0 for
/// anything else. Compared byte by byte: no `memcmp` in a BPF program.
#[inline(always)]
fn http_status(l: &[u8; STATUS_LINE]) -> u16 {
    for (have, want) in l.iter().zip(b"HTTP/1.") {
        if have != want {
            return 0;
        }
    }
    let digit = |c: u8| c.wrapping_sub(b'0');
    let (v, a, b, c) = (digit(l[7]), digit(l[9]), digit(l[10]), digit(l[11]));
    if v > 9 || l[8] != b' ' || a > 9 || b > 9 || c > 9 {
        return 0;
    }
    u16::from(a) * 100 + u16::from(b) * 10 + u16::from(c)
}

/// `a` comes before `b` in sequence space (RFC 1982 arithmetic).
#[inline(always)]
fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// The flow's state, made (zeroed) when it has none.
#[inline(always)]
fn flow(key: &FlowKey) -> Option<*mut FlowState> {
    if let Some(p) = FLOWS.get_ptr_mut(key) {
        return Some(p);
    }
    // Zeroed with volatile stores: a plain zeroed struct becomes an out-of-line `memset` call.
    let mut z = [0u64; 4];
    for w in &mut z {
        // SAFETY: a valid, aligned reference to a local.
        unsafe { write_volatile(w, 0) };
    }
    const _: () = assert!(size_of::<FlowState>() == size_of::<[u64; 4]>());
    // SAFETY: FlowState is repr(C), 32 bytes of integers like `z` (asserted above), needs no
    // more alignment than u64, and every bit pattern is a valid value.
    let zero = unsafe { &*z.as_ptr().cast::<FlowState>() };
    // Another CPU may have made it in between: then the lookup below finds that one.
    let _ = FLOWS.insert(key, zero, u64::from(BPF_NOEXIST));
    FLOWS.get_ptr_mut(key)
}

/// Follows one segment of a watched tuple seen at `ifindex` / `hook`; writes a `DATA` event when
/// it marks something. `status_line` reads the segment's first data bytes; called only for a
/// first-byte mark, so other segments never pay for it.
#[inline(always)]
pub(crate) fn track<S: PacketSink, L: FnOnce() -> Option<[u8; STATUS_LINE]>>(
    s: &Seg,
    status_line: L,
    ifindex: u32,
    hook: u8,
) {
    if s.flags & tcp_flag::RST != 0 {
        return;
    }
    let (sw, dw) = (addr_words(&s.saddr), addr_words(&s.daddr));
    let src_first = (sw[0], sw[1], s.sport) < (dw[0], dw[1], s.dport);
    let key = if src_first {
        FlowKey {
            a: sw,
            b: dw,
            ports: (u32::from(s.sport) << 16) | u32::from(s.dport),
            ifindex,
        }
    } else {
        FlowKey {
            a: dw,
            b: sw,
            ports: (u32::from(s.dport) << 16) | u32::from(s.sport),
            ifindex,
        }
    };
    let Some(st) = flow(&key) else { return };
    // SAFETY: an LRU hash value stays valid for the whole program run, even if evicted
    // meanwhile; a CPU updating the same flow at once can only blur the marks (see the module
    // docs), never make the reference invalid.
    let st = unsafe { &mut *st };
    let [d0, d1] = &mut st.dir;
    let (me, peer) = if src_first { (d0, d1) } else { (d1, d0) };
    if s.flags & tcp_flag::SYN != 0 {
        if s.flags & tcp_flag::ACK == 0 {
            // A new connection (perhaps on a reused tuple): forget the old one's marks.
            me.first_ns = 0;
            peer.first_ns = 0;
            peer.flags = 0;
            peer.mss = 0;
        }
        me.mss = s.syn_mss;
        me.nxt = s.seq.wrapping_add(1);
        me.flags = flow_flag::NXT;
        return;
    }
    let fin = u32::from(s.flags & tcp_flag::FIN != 0);
    let end = s.seq.wrapping_add(u32::from(s.payload)).wrapping_add(fin);
    if s.payload != 0 {
        let known = me.flags & flow_flag::NXT != 0;
        // A keep-alive or zero-window probe: one byte (or none) at `nxt - 1`.
        let probe = s.payload == 1 && s.seq.wrapping_add(1) == me.nxt;
        let mut since = 0;
        let mut status = 0;
        let what = if known && before(s.seq, me.nxt) && !probe {
            data_event::RETRANS
        } else if me.first_ns == 0 {
            let now = now_ns();
            me.first_ns = now;
            if peer.first_ns != 0 {
                since = now.saturating_sub(peer.first_ns);
            }
            if usize::from(s.payload) >= STATUS_LINE {
                status = status_line().map_or(0, |l| http_status(&l));
            }
            data_event::FIRST_BYTE
        } else if peer.flags & flow_flag::FIN != 0 && me.flags & flow_flag::AFTER_FIN_REPORTED == 0
        {
            me.flags |= flow_flag::AFTER_FIN_REPORTED;
            data_event::AFTER_FIN
        } else {
            0
        };
        if what != 0 {
            // Full-size against what the receiver advertised, less this segment's options.
            let mss = peer.mss.saturating_sub(s.opt_len);
            S::emit(|e| {
                e.ts_ns = now_ns();
                e.ifindex = ifindex;
                e.kind = kind::DATA;
                e.hook = hook;
                e.family = s.fam;
                e.tcp_flags = s.flags;
                e.saddr = s.saddr;
                e.daddr = s.daddr;
                e.sport = s.sport;
                e.dport = s.dport;
                e.seq = s.seq;
                e.ack = s.ack;
                e.payload_len = s.payload;
                e.mss = mss;
                e.reason = what;
                // SAFETY: `outer_src` sits at offset 64 of the 8-aligned Event, so its first
                // 8 bytes are an aligned u64 inside the record; its last 8 are already zero.
                unsafe { addr_of_mut!(e.outer_src).cast::<u64>().write(since) };
                // The status code only (`Event::http_status`): no other payload byte.
                let [s0, s1] = status.to_ne_bytes();
                e.outer_dst[0] = s0;
                e.outer_dst[1] = s1;
            });
        }
    }
    if me.flags & flow_flag::NXT == 0 || before(me.nxt, end) {
        me.nxt = end;
        me.flags |= flow_flag::NXT;
    }
    if fin != 0 {
        me.flags |= flow_flag::FIN;
    }
}
