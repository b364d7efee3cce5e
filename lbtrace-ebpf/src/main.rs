//! lbtrace's kernel programs.
//!
//! * `tc_ingress` / `tc_egress` (TCX) and `xdp_ingress` (XDP, opt-in): parse Ethernet (up to two
//!   VLAN tags), IPv4 (with options) / IPv6, TCP and ICMP / ICMPv6 errors; turn the control packets
//!   (SYN, SYN-ACK, RST, FIN) of watched tuples and ICMP errors quoting a watched TCP tuple into
//!   events. Any other packet costs a few header loads and one counter.
//! * `tp_kfree_skb` (raw tracepoint `skb:kfree_skb`): drops of watched tuples in the traced network
//!   namespace, with the kernel's drop reason; data-packet drops are only counted.
//!
//! Every program fails open: TC programs always return `TCX_NEXT` (TC_ACT_UNSPEC) so programs
//! attached after lbtrace still run, XDP always returns `XDP_PASS`, and no packet is ever written.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod parse;

use core::{
    ffi::c_void,
    ptr::{addr_of, addr_of_mut, read_volatile, write_volatile},
};

use aya_ebpf::{
    Global,
    bindings::{
        BPF_F_MMAPABLE, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, TC_ACT_UNSPEC,
        xdp_action,
    },
    helpers::{
        bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_kernel_buf, bpf_ringbuf_output, bpf_ringbuf_query,
    },
    macros::{classifier, map, raw_tracepoint, xdp},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::{RawTracePointContext, TcContext, XdpContext},
};
use lbtrace_common::{
    EndpointKey, EndpointStats, Event, KernelOffsets, MAX_DROP_REASONS, MAX_ENDPOINTS,
    MAX_PORT_SLOTS, PORT_HASHED, PORT_SLOT_ENTRIES, PortSlot, RingCursor, addr_words, counter,
    family, hook, kind, tcp_flag,
};
use parse::{
    Bounds, ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, be16, be32, copy4,
    copy16,
};

/// Packet events (SYN, SYN-ACK, RST, FIN): one single-producer ring per CPU, `RING_SLOTS` records
/// each, cursors in `RING_CURSORS`; userspace maps both and sizes them before load.
///
/// Why not a BPF ring buffer: its reserve takes a spinlock with interrupts off and, with the
/// submit, costs two helper calls; on a watched control packet that was most of lbtrace's cost.
/// Here a record is plain stores into this CPU's slot and one atomic add that publishes it.
/// Single producer per CPU: the programs that write here (TC ingress/egress, XDP) run with
/// bottom halves disabled, so on one CPU they never interrupt each other; the drop tracer, which
/// can interrupt anything, writes to `PRIORITY_EVENTS` only.
#[map]
static EVENTS: Array<Event> = Array::with_max_entries(1, BPF_F_MMAPABLE);
#[map]
static RING_CURSORS: Array<RingCursor> = Array::with_max_entries(1, BPF_F_MMAPABLE);
/// Wake-up records (the CPU number): one when a CPU's ring reaches `WAKEUP_EVENTS` unread.
#[map]
static RING_WAKEUP: RingBuf = RingBuf::with_byte_size(4096, 0);
/// ICMP-error and drop events, in a ring of their own so that a SYN flood filling `EVENTS` cannot
/// starve them.
#[map]
static PRIORITY_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);
#[map]
static ENDPOINTS: HashMap<EndpointKey, u32> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);
#[map]
static ENDPOINT_STATS: PerCpuArray<EndpointStats> = PerCpuArray::with_max_entries(MAX_ENDPOINTS, 0);
#[map]
static DATA_DROP_REASONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_DROP_REASONS, 0);
/// Drop reasons that are normal teardown (QUEUE_PURGE, ...): 1 = ignore. Filled by userspace from
/// the running kernel's `enum skb_drop_reason`.
#[map]
static NOISE_REASONS: Array<u8> = Array::with_max_entries(MAX_DROP_REASONS, 0);
/// By port: 0 = not watched, `PORT_HASHED` = look in `ENDPOINTS`, else the `PORT_SLOTS` index + 1.
/// Userspace fills it with `ENDPOINTS`.
#[map]
static PORTS: Array<u16> = Array::with_max_entries(65536, 0);
#[map]
static PORT_SLOTS: Array<PortSlot> = Array::with_max_entries(MAX_PORT_SLOTS, 0);

#[unsafe(no_mangle)]
static OFFSETS: Global<KernelOffsets> = Global::new(KernelOffsets {
    skb_head: 0,
    skb_network_header: 0,
    skb_dev: 0,
    skb_sk: 0,
    dev_ifindex: 0,
    dev_nd_net: 0,
    sk_net: 0,
    net_inum: 0,
});
#[unsafe(no_mangle)]
static NETNS_INUM: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static HAS_WILDCARD: Global<u8> = Global::new(0);
#[unsafe(no_mangle)]
static RING_SLOTS: Global<u64> = Global::new(1);
#[unsafe(no_mangle)]
static WAKEUP_EVENTS: Global<u64> = Global::new(1);
#[unsafe(no_mangle)]
static PRIORITY_WAKEUP_BYTES: Global<u64> = Global::new(1 << 18);

#[inline(always)]
fn count(idx: u32) -> u64 {
    match COUNTERS.get_ptr_mut(idx) {
        Some(p) => unsafe {
            *p += 1;
            *p
        },
        None => 0,
    }
}

/// The id of a watched endpoint `addr:port`, given the port's `PORTS` entry: the port's slot
/// (an array index and a few compares) or, for a port with many endpoints, the hash map; then
/// the all-ports entry when there is one. The array lookups are inlined by the verifier; a hash
/// lookup is a call that hashes the key, about as costly as the rest of the event path.
#[inline(always)]
fn endpoint(fam: u8, addr: [u8; 16], port: u16, slot: u16) -> Option<u32> {
    if slot == PORT_HASHED {
        if let Some(id) = hashed(fam, addr, port) {
            return Some(id);
        }
    } else if slot != 0
        && let Some(s) = PORT_SLOTS.get_ptr(u32::from(slot - 1))
    {
        let s = unsafe { &*s };
        let w = addr_words(&addr);
        let n = s.len as usize;
        for i in 0..PORT_SLOT_ENTRIES {
            if i >= n {
                break;
            }
            let e = &s.entries[i];
            if e.addr[0] == w[0] && e.addr[1] == w[1] && e.family == fam {
                return Some(e.id);
            }
        }
    }
    if HAS_WILDCARD.load() != 0 {
        return hashed(fam, addr, 0);
    }
    None
}

#[inline(always)]
fn hashed(fam: u8, addr: [u8; 16], port: u16) -> Option<u32> {
    // The key built as five words with volatile stores: built field by field, the zero bytes of
    // an IPv4 key become an out-of-line `memset` call.
    let a: [u32; 4] = unsafe { core::mem::transmute(addr) };
    let mut k = [0u32; 5];
    for (i, w) in a.into_iter().enumerate() {
        unsafe { write_volatile(&mut k[i], w) };
    }
    // The last word: port, then family, then the padding byte.
    let last = if cfg!(target_endian = "little") {
        u32::from(port) | (u32::from(fam) << 16)
    } else {
        (u32::from(port) << 16) | (u32::from(fam) << 8)
    };
    unsafe { write_volatile(&mut k[4], last) };
    const _: () = assert!(size_of::<EndpointKey>() == size_of::<[u32; 5]>());
    let key = unsafe { &*k.as_ptr().cast::<EndpointKey>() };
    ENDPOINTS.get_ptr(key).map(|id| unsafe { *id })
}

/// A tuple's ports with their `PORTS` entries.
struct Ports {
    sport: u16,
    dport: u16,
    sslot: u16,
    dslot: u16,
}

/// The ports' `PORTS` entries, or `None` when no watched endpoint can match: neither port is
/// watched and no endpoint watches every port. Two inlined array lookups, before the addresses
/// are even read.
#[inline(always)]
fn ports(sport: u16, dport: u16) -> Option<Ports> {
    let entry = |p: u16| PORTS.get(u32::from(p)).copied().unwrap_or(0);
    let (sslot, dslot) = (entry(sport), entry(dport));
    if sslot == 0 && dslot == 0 && HAS_WILDCARD.load() == 0 {
        return None;
    }
    Some(Ports {
        sport,
        dport,
        sslot,
        dslot,
    })
}

/// The watched endpoint of a tuple: the destination first (packets to the VIP or a backend), then
/// the source (their replies).
#[inline(always)]
fn watched(fam: u8, saddr: [u8; 16], daddr: [u8; 16], p: &Ports) -> Option<u32> {
    endpoint(fam, daddr, p.dport, p.dslot).or_else(|| endpoint(fam, saddr, p.sport, p.sslot))
}

#[inline(always)]
fn stats(id: u32) -> Option<*mut EndpointStats> {
    ENDPOINT_STATS.get_ptr_mut(id)
}

#[inline(always)]
fn count_flags(id: u32, flags: u8) {
    if let Some(s) = stats(id) {
        let s = unsafe { &mut *s };
        if flags & tcp_flag::SYN != 0 {
            if flags & tcp_flag::ACK != 0 {
                s.syn_ack += 1;
            } else {
                s.syn += 1;
            }
        }
        if flags & tcp_flag::RST != 0 {
            s.rst += 1;
        }
        if flags & tcp_flag::FIN != 0 {
            s.fin += 1;
        }
    }
}

/// Makes the record before `head` visible to the reader, which loads `head` with acquire: a
/// fetching atomic add, which every JIT emits fully ordered (x86-64: `lock xadd`), so the
/// record's stores cannot pass it, in the compiler or in the CPU. (The BPF target has no
/// compare-and-swap, so core's atomic types offer no `fetch_add`, and LLVM has no lowering for a
/// release store or a fence before cpu v4; the intrinsic is the plain atomic add.)
#[inline(always)]
unsafe fn publish(cursor: *mut u64, head: u64) {
    use core::intrinsics::{AtomicOrdering, atomic_xadd};
    let prev = unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(cursor, 1) };
    // A used result keeps it a fetching add: a non-fetching one is not ordered on every JIT.
    core::hint::black_box(prev == head - 1);
}

/// Writes a packet event to this CPU's ring, counting it as emitted or lost (ring full). The
/// record is built only once there is room, straight into its slot. The reader polls on a timer;
/// a CPU whose unread records reach `WAKEUP_EVENTS` also wakes it, once per crossing.
#[inline(always)]
fn emit_packet(fill_in: impl FnOnce(&mut Event)) {
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(cur) = RING_CURSORS.get_ptr_mut(cpu) else {
        count(counter::EVENTS_LOST);
        return;
    };
    let slots = RING_SLOTS.load();
    // Only this CPU writes `head`; the reader writes `tail` once it is done with the records.
    let head = unsafe { (*cur).head };
    let fill = head.wrapping_sub(unsafe { read_volatile(addr_of!((*cur).tail)) });
    if fill >= slots {
        count(counter::EVENTS_LOST);
        return;
    }
    let Some(slot) = EVENTS.get_ptr_mut((u64::from(cpu) * slots + (head & (slots - 1))) as u32)
    else {
        count(counter::EVENTS_LOST);
        return;
    };
    // The slot still holds an old record: `fill_in` sets every field but the ones packet events
    // leave zero, cleared here with volatile stores; plain ones would be merged into an
    // out-of-line `memset` call (compiler-builtins' byte loop) on the hot path.
    unsafe {
        write_volatile(addr_of_mut!((*slot).reason), 0);
        let outer = addr_of_mut!((*slot).outer_src).cast::<u64>();
        for i in 0..4 {
            write_volatile(outer.add(i), 0);
        }
        write_volatile(addr_of_mut!((*slot).icmp_type).cast::<u16>(), 0);
        write_volatile(addr_of_mut!((*slot)._pad).cast::<u32>(), 0);
        fill_in(&mut *slot);
    }
    unsafe { publish(addr_of_mut!((*cur).head), head + 1) };
    count(counter::EVENTS_EMITTED);
    if fill + 1 == WAKEUP_EVENTS.load() {
        let c = u64::from(cpu);
        unsafe {
            bpf_ringbuf_output(
                addr_of!(RING_WAKEUP) as *mut c_void,
                addr_of!(c) as *mut c_void,
                8,
                BPF_RB_FORCE_WAKEUP as u64,
            )
        };
    }
}

/// Writes `ev` to the `PRIORITY_EVENTS` ring buffer, counting it as emitted or lost. The reader
/// is only woken up when the unread data passes `PRIORITY_WAKEUP_BYTES`, asked on every 64th
/// event of a CPU: otherwise it finds the events on its next timer tick.
#[inline(always)]
fn emit_priority(ev: impl FnOnce() -> Event) {
    let ring = &PRIORITY_EVENTS;
    match ring.reserve::<Event>(0) {
        Some(mut entry) => {
            entry.write(ev());
            let n = count(counter::PRIORITY_EMITTED);
            let flags = if n.is_multiple_of(64)
                && unsafe {
                    bpf_ringbuf_query(addr_of!(*ring) as *mut c_void, BPF_RB_AVAIL_DATA as u64)
                } >= PRIORITY_WAKEUP_BYTES.load()
            {
                BPF_RB_FORCE_WAKEUP
            } else {
                BPF_RB_NO_WAKEUP
            };
            entry.submit(flags as u64);
        }
        None => {
            count(counter::PRIORITY_LOST);
        }
    }
}

/// Where a TCP header or ICMP error sits once L3 is parsed.
struct L3 {
    fam: u8,
    /// Offset of the L4 header.
    l4: usize,
    proto: u8,
    /// The IP header, bounds-checked for its fixed length. Addresses are read from it only once
    /// a packet turns out to matter.
    ip: *const u8,
    /// L4 bytes (header and payload) as the IP header tells.
    l4_len: u16,
}

impl L3 {
    #[inline(always)]
    fn saddr(&self) -> [u8; 16] {
        if self.fam == family::V4 {
            copy4(unsafe { self.ip.add(12) })
        } else {
            copy16(unsafe { self.ip.add(8) })
        }
    }

    #[inline(always)]
    fn daddr(&self) -> [u8; 16] {
        if self.fam == family::V4 {
            copy4(unsafe { self.ip.add(16) })
        } else {
            copy16(unsafe { self.ip.add(24) })
        }
    }
}

#[inline(always)]
fn ipv4(b: &Bounds, off: usize) -> Result<Option<L3>, ()> {
    let p = b.at::<20>(off).ok_or(())?;
    let vihl = unsafe { *p };
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return Err(());
    }
    let proto = unsafe { *p.add(9) };
    // Only the first fragment carries the L4 header.
    if be16(unsafe { p.add(6) }) & 0x1fff != 0 {
        return Ok(None);
    }
    let tot = be16(unsafe { p.add(2) });
    Ok(Some(L3 {
        fam: family::V4,
        l4: off + ihl,
        proto,
        ip: p,
        l4_len: tot.saturating_sub(ihl as u16),
    }))
}

#[inline(always)]
fn ipv6(b: &Bounds, off: usize) -> Result<Option<L3>, ()> {
    let p = b.at::<40>(off).ok_or(())?;
    if unsafe { *p } >> 4 != 6 {
        return Err(());
    }
    // Extension headers are not followed: TCP and ICMPv6 directly after the fixed header only.
    Ok(Some(L3 {
        fam: family::V6,
        l4: off + 40,
        proto: unsafe { *p.add(6) },
        ip: p,
        l4_len: be16(unsafe { p.add(4) }),
    }))
}

/// The shared body of the TC and XDP programs.
#[inline(always)]
fn handle(b: &Bounds, ifindex: u32, hook: u8) -> Result<(), ()> {
    count(counter::PACKETS);
    let (l3off, ethertype) = parse::l2(b).ok_or(())?;
    let l3 = match ethertype {
        ETH_P_IP => ipv4(b, l3off)?,
        ETH_P_IPV6 => ipv6(b, l3off)?,
        _ => return Ok(()),
    };
    let Some(l3) = l3 else { return Ok(()) };
    match l3.proto {
        IPPROTO_TCP => tcp(b, &l3, ifindex, hook),
        IPPROTO_ICMP if l3.fam == family::V4 => icmp(b, &l3, ifindex, hook),
        IPPROTO_ICMPV6 if l3.fam == family::V6 => icmp(b, &l3, ifindex, hook),
        _ => Ok(()),
    }
}

#[inline(always)]
fn tcp(b: &Bounds, l3: &L3, ifindex: u32, hook: u8) -> Result<(), ()> {
    let t = b.at::<20>(l3.l4).ok_or(())?;
    let flags = unsafe { *t.add(13) };
    // The fast path: data and pure ACKs stop here, before any map lookup.
    if flags & tcp_flag::CONTROL == 0 {
        return Ok(());
    }
    let sport = be16(t);
    let dport = be16(unsafe { t.add(2) });
    let Some(p) = ports(sport, dport) else {
        return Ok(());
    };
    let (saddr, daddr) = (l3.saddr(), l3.daddr());
    let Some(id) = watched(l3.fam, saddr, daddr, &p) else {
        return Ok(());
    };
    count_flags(id, flags);
    let doff = ((unsafe { *t.add(12) } >> 4) as u16) * 4;
    emit_packet(|e| {
        e.ts_ns = unsafe { bpf_ktime_get_ns() };
        e.ifindex = ifindex;
        e.kind = kind::PACKET;
        e.hook = hook;
        e.family = l3.fam;
        e.tcp_flags = flags;
        e.saddr = saddr;
        e.daddr = daddr;
        e.sport = sport;
        e.dport = dport;
        e.seq = be32(unsafe { t.add(4) });
        e.ack = be32(unsafe { t.add(8) });
        e.payload_len = l3.l4_len.saturating_sub(doff);
    });
    Ok(())
}

/// ICMP destination unreachable / time exceeded (and ICMPv6 packet too big) quoting TCP.
#[inline(always)]
fn icmp(b: &Bounds, l3: &L3, ifindex: u32, hook: u8) -> Result<(), ()> {
    let h = b.at::<8>(l3.l4).ok_or(())?;
    let ty = unsafe { *h };
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
    let t = b.at::<8>(q.l4).ok_or(())?;
    let sport = be16(t);
    let dport = be16(unsafe { t.add(2) });
    let Some(p) = ports(sport, dport) else {
        return Ok(());
    };
    let (saddr, daddr) = (q.saddr(), q.daddr());
    let Some(id) = watched(q.fam, saddr, daddr, &p) else {
        return Ok(());
    };
    if let Some(s) = stats(id) {
        unsafe { (*s).icmp += 1 };
    }
    let (outer_src, outer_dst, icmp_code) = (l3.saddr(), l3.daddr(), unsafe { *h.add(1) });
    emit_priority(|| Event {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        ifindex,
        kind: kind::ICMP,
        hook,
        family: q.fam,
        tcp_flags: 0,
        saddr,
        daddr,
        sport,
        dport,
        seq: be32(unsafe { t.add(4) }),
        ack: 0,
        reason: 0,
        outer_src,
        outer_dst,
        icmp_type: ty,
        icmp_code,
        payload_len: 0,
        _pad: [0; 4],
    });
    Ok(())
}

#[inline(always)]
fn tc(ctx: &TcContext, hook: u8) -> i32 {
    let b = Bounds {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if handle(&b, ifindex, hook).is_err() {
        count(counter::PARSE_ERRORS);
    }
    // TCX_NEXT: never end the chain, whatever happened.
    TC_ACT_UNSPEC
}

#[classifier]
pub fn tc_ingress(ctx: TcContext) -> i32 {
    tc(&ctx, hook::TC_INGRESS)
}

#[classifier]
pub fn tc_egress(ctx: TcContext) -> i32 {
    tc(&ctx, hook::TC_EGRESS)
}

/// Frags-aware (`xdp.frags`): attaching it does not cap the interface's MTU. Headers are read from
/// the first buffer only, which always holds them.
#[xdp(frags)]
pub fn xdp_ingress(ctx: XdpContext) -> u32 {
    let b = Bounds {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    if handle(&b, ifindex, hook::XDP_INGRESS).is_err() {
        count(counter::PARSE_ERRORS);
    }
    xdp_action::XDP_PASS
}

#[inline(always)]
fn read<T>(base: u64, off: u32) -> Option<T> {
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T).ok() }
}

/// `skb:kfree_skb(skb, location, reason, rx_sk)`.
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn tp_kfree_skb(ctx: RawTracePointContext) -> i32 {
    let _ = kfree_skb(&ctx);
    0
}

#[inline(always)]
fn kfree_skb(ctx: &RawTracePointContext) -> Option<()> {
    let skb: u64 = ctx.arg(0);
    let reason: u64 = ctx.arg(2);
    let reason = reason as u32;
    let off = OFFSETS.load();

    // The tracepoint fires for every namespace: keep only drops in the traced one, told by the
    // device's namespace, or the socket's when the skb has no device.
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
    if let Some(noise) = NOISE_REASONS.get_ptr(ridx)
        && unsafe { *noise } != 0
    {
        count(counter::DROPS_NOISE);
        return None;
    }

    let head: u64 = read(skb, off.skb_head)?;
    let nh: u16 = read(skb, off.skb_network_header)?;
    if nh == 0xffff {
        return None;
    }
    let ip = head + nh as u64;
    let mut hdr = [0u8; 40];
    unsafe { bpf_probe_read_kernel_buf(ip as *const u8, &mut hdr).ok()? };
    let (fam, saddr, daddr, tcp_at, l4_len) = match hdr[0] >> 4 {
        4 => {
            let ihl = ((hdr[0] & 0x0f) as u64) * 4;
            if hdr[9] != IPPROTO_TCP || ihl < 20 {
                return None;
            }
            let tot = u16::from_be_bytes([hdr[2], hdr[3]]);
            (
                family::V4,
                copy4(hdr[12..].as_ptr()),
                copy4(hdr[16..].as_ptr()),
                ip + ihl,
                tot.saturating_sub(ihl as u16),
            )
        }
        6 => {
            if hdr[6] != IPPROTO_TCP {
                return None;
            }
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            s.copy_from_slice(&hdr[8..24]);
            d.copy_from_slice(&hdr[24..40]);
            (
                family::V6,
                s,
                d,
                ip + 40,
                u16::from_be_bytes([hdr[4], hdr[5]]),
            )
        }
        _ => return None,
    };
    let mut t = [0u8; 20];
    unsafe { bpf_probe_read_kernel_buf(tcp_at as *const u8, &mut t).ok()? };
    let sport = u16::from_be_bytes([t[0], t[1]]);
    let dport = u16::from_be_bytes([t[2], t[3]]);
    let p = ports(sport, dport)?;
    let id = watched(fam, saddr, daddr, &p)?;
    if let Some(s) = stats(id) {
        unsafe { (*s).drops += 1 };
    }
    let flags = t[13];
    if flags & tcp_flag::CONTROL == 0 {
        // Data packets are aggregated by reason, never one event each.
        count(counter::DATA_DROPS);
        if let Some(c) = DATA_DROP_REASONS.get_ptr_mut(ridx) {
            unsafe { *c += 1 };
        }
        return Some(());
    }
    let ifindex: u32 = if dev != 0 {
        read(dev, off.dev_ifindex).unwrap_or(0)
    } else {
        0
    };
    let doff = ((t[12] >> 4) as u16) * 4;
    emit_priority(|| Event {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        ifindex,
        kind: kind::DROP,
        hook: hook::KFREE_SKB,
        family: fam,
        tcp_flags: flags,
        saddr,
        daddr,
        sport,
        dport,
        seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
        ack: u32::from_be_bytes([t[8], t[9], t[10], t[11]]),
        reason,
        outer_src: [0; 16],
        outer_dst: [0; 16],
        icmp_type: 0,
        icmp_code: 0,
        payload_len: l4_len.saturating_sub(doff),
        _pad: [0; 4],
    });
    Some(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
