//! The drop tracer's body: `skb:kfree_skb(skb, location, reason, rx_sk)` for watched tuples in
//! the traced network namespace. Control packets become `DROP` events with the kernel's reason
//! and the drop's location; data-packet drops are only counted, by reason. Before 5.17 the
//! tracepoint is `skb:kfree_skb(skb, location)`: the location-only variant reports reason 0 and
//! userspace names the location.
//!
//! The skb's headers are copied out of kernel memory (`bpf_probe_read_kernel`) into arrays and
//! read through the same header types as the packet programs.

use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_buf},
    programs::RawTracePointContext,
};
use lbtrace_common::{
    Event, MAX_DROP_REASONS, counter, family, hook, kind, location_bytes, tcp_flag,
};

use crate::{
    header::{Hdr, IP4_LEN, IP6_LEN, IPPROTO_TCP, Ip4, Ip6, TCP_LEN, Tcp},
    lookup::{Tuple, stats},
    maps::{DATA_DROP_REASONS, NETNS_INUM, NOISE_REASONS, OFFSETS, count},
    ring::{emit_priority, now_ns},
};

/// A `T` at kernel address `base + off`, or `None` when the read faults.
#[inline(always)]
pub(crate) fn read<T>(base: u64, off: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the address itself and fails instead of faulting.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T).ok() }
}

/// `N` bytes at kernel address `at`, or `None` when the read faults.
#[inline(always)]
pub(crate) fn read_buf<const N: usize>(at: u64) -> Option<[u8; N]> {
    let mut buf = [0u8; N];
    // SAFETY: as in `read`; `buf` is N writable bytes.
    unsafe { bpf_probe_read_kernel_buf(at as *const u8, &mut buf).ok()? };
    Some(buf)
}

/// The skb's device (0 if none) and its network namespace: the device's, or the socket's when
/// the skb has no device; `None` when neither is known.
#[inline(always)]
pub(crate) fn skb_net(skb: u64) -> Option<(u64, u64)> {
    let off = OFFSETS.load();
    let dev: u64 = read(skb, off.skb_dev)?;
    let net: u64 = if dev != 0 {
        read(dev, off.dev_nd_net)?
    } else {
        let sk: u64 = read(skb, off.skb_sk)?;
        if sk == 0 {
            return None;
        }
        read(sk, off.sk_net)?
    };
    if net == 0 {
        return None;
    }
    Some((dev, net))
}

/// A TCP segment's addresses and header, copied out of an skb's network header.
pub(crate) struct SkbTcp {
    pub(crate) tuple: Tuple,
    /// The TCP header's first `TCP_LEN` bytes.
    pub(crate) t: [u8; TCP_LEN],
    /// Bytes from the TCP header on, as the IP header tells.
    pub(crate) l4_len: u16,
}

/// The IPv4 / IPv6 and TCP headers of `skb`, read from kernel memory; `None` when it is not TCP
/// or a read faults.
#[inline(always)]
pub(crate) fn skb_tcp(skb: u64) -> Option<SkbTcp> {
    let off = OFFSETS.load();
    let head: u64 = read(skb, off.skb_head)?;
    let nh: u16 = read(skb, off.skb_network_header)?;
    if nh == 0xffff {
        return None;
    }
    let ip = head + nh as u64;
    let hdr = read_buf::<IP6_LEN>(ip)?;
    let h = Hdr::of(&hdr);
    let (fam, saddr, daddr, tcp_at, l4_len) = match h.u8::<0>() >> 4 {
        4 => {
            let h = Ip4::new(h.prefix::<IP4_LEN>())?;
            if h.proto() != IPPROTO_TCP {
                return None;
            }
            (
                family::V4,
                h.saddr(),
                h.daddr(),
                ip + h.ihl() as u64,
                h.l4_len(),
            )
        }
        6 => {
            let h = Ip6::new(h)?;
            if h.next() != IPPROTO_TCP {
                return None;
            }
            (
                family::V6,
                h.saddr(),
                h.daddr(),
                ip + IP6_LEN as u64,
                h.l4_len(),
            )
        }
        _ => return None,
    };
    let tcp = read_buf::<TCP_LEN>(tcp_at)?;
    let t = Tcp(Hdr::of(&tcp));
    Some(SkbTcp {
        tuple: Tuple {
            fam,
            saddr,
            daddr,
            sport: t.sport(),
            dport: t.dport(),
        },
        t: tcp,
        l4_len,
    })
}

/// `WITH_REASON`: read the tracepoint's third argument, `reason` (5.17 and later). Without it
/// the program never touches `args[2]`: kernels before 5.17 refuse to attach a raw tracepoint
/// program that reads past the tracepoint's arguments, so this is a separate program
/// (`tp_kfree_skb_loc`), not a run-time flag. Both report `location` (`args[1]`).
#[inline(always)]
pub(crate) fn kfree_skb<const WITH_REASON: bool>(ctx: &RawTracePointContext) -> Option<()> {
    let skb: u64 = ctx.arg(0);
    let location: u64 = ctx.arg(1);
    let reason = if WITH_REASON {
        let reason: u64 = ctx.arg(2);
        reason as u32
    } else {
        0
    };
    let off = OFFSETS.load();

    // The tracepoint fires for every namespace: keep only drops in the traced one.
    let (dev, net) = skb_net(skb)?;
    let inum: u32 = read(net, off.net_inum)?;
    if inum != NETNS_INUM.load() {
        count(counter::DROPS_OTHER_NETNS);
        return None;
    }
    let ridx = if reason < MAX_DROP_REASONS {
        reason
    } else {
        MAX_DROP_REASONS - 1
    };
    if WITH_REASON && NOISE_REASONS.get(ridx).is_some_and(|noise| *noise != 0) {
        count(counter::DROPS_NOISE);
        return None;
    }

    let SkbTcp { tuple, t, l4_len } = skb_tcp(skb)?;
    let t = Tcp(Hdr::of(&t));
    let id = tuple.watched()?;
    stats(id, |s| s.drops += 1);
    let flags = t.flags();
    if flags & tcp_flag::CONTROL == 0 {
        // Data packets are aggregated by reason, never one event each.
        count(counter::DATA_DROPS);
        if let Some(c) = DATA_DROP_REASONS.get_ptr_mut(ridx) {
            // SAFETY: the map's value for this CPU, valid for the program run.
            unsafe { *c += 1 };
        }
        return Some(());
    }
    let ifindex: u32 = if dev != 0 {
        read(dev, off.dev_ifindex).unwrap_or(0)
    } else {
        0
    };
    emit_priority(|| Event {
        ts_ns: now_ns(),
        ifindex,
        kind: kind::DROP,
        hook: hook::KFREE_SKB,
        family: tuple.fam,
        tcp_flags: flags,
        saddr: tuple.saddr,
        daddr: tuple.daddr,
        sport: tuple.sport,
        dport: tuple.dport,
        seq: t.seq(),
        ack: t.ack(),
        reason,
        outer_src: location_bytes(location),
        outer_dst: [0; 16],
        icmp_type: 0,
        icmp_code: 0,
        payload_len: l4_len.saturating_sub(t.doff()),
        mss: 0,
        encap: [0; 2],
    });
    Some(())
}
