//! The maps and load-time globals every program shares, and the per-CPU counters.
//!
//! Userspace (`lbtrace::kernel::loader`) sizes the rings, sets the globals and fills the endpoint
//! tables before the programs are loaded; the names are in `lbtrace_common::names`.

use aya_ebpf::{
    Global,
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use lbtrace_common::{
    EndpointKey, EndpointStats, Event, FlowKey, FlowState, KernelOffsets, MAX_DROP_REASONS,
    MAX_ENDPOINTS, MAX_FLOWS, MAX_PORT_SLOTS, PortSlot, RingCursor, SockOffsets, counter,
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
pub(crate) static EVENTS: Array<Event> = Array::with_max_entries(1, BPF_F_MMAPABLE);
#[map]
pub(crate) static RING_CURSORS: Array<RingCursor> = Array::with_max_entries(1, BPF_F_MMAPABLE);
/// Wake-up records (the CPU number): one when a CPU's ring reaches `WAKEUP_EVENTS` unread.
#[map]
pub(crate) static RING_WAKEUP: RingBuf = RingBuf::with_byte_size(4096, 0);
/// Packet events for kernels whose verifier refuses the per-CPU rings' atomic fetch-add (before
/// 5.12): the `*_rb` program variants write them here instead. Sized by userspace.
#[map]
pub(crate) static PACKET_EVENTS: RingBuf = RingBuf::with_byte_size(4096, 0);
/// ICMP-error and drop events, in a ring of their own so that a SYN flood filling `EVENTS` cannot
/// starve them.
#[map]
pub(crate) static PRIORITY_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);
#[map]
pub(crate) static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);
#[map]
pub(crate) static ENDPOINTS: HashMap<EndpointKey, u32> =
    HashMap::with_max_entries(MAX_ENDPOINTS, 0);
#[map]
pub(crate) static ENDPOINT_STATS: PerCpuArray<EndpointStats> =
    PerCpuArray::with_max_entries(MAX_ENDPOINTS, 0);
#[map]
pub(crate) static DATA_DROP_REASONS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(MAX_DROP_REASONS, 0);
/// Drop reasons that are normal teardown (QUEUE_PURGE, ...): 1 = ignore. Filled by userspace from
/// the running kernel's `enum skb_drop_reason`.
#[map]
pub(crate) static NOISE_REASONS: Array<u8> = Array::with_max_entries(MAX_DROP_REASONS, 0);
/// By port: 0 = not watched, `PORT_HASHED` = look in `ENDPOINTS`, else the `PORT_SLOTS` index + 1.
/// Userspace fills it with `ENDPOINTS`.
#[map]
pub(crate) static PORTS: Array<u16> = Array::with_max_entries(65536, 0);
#[map]
pub(crate) static PORT_SLOTS: Array<PortSlot> = Array::with_max_entries(MAX_PORT_SLOTS, 0);

/// The data-path mode's per-flow state (`--data`): first data byte each way, the highest
/// sequence number seen, the advertised MSS, FIN seen. LRU: a full map forgets the flow seen
/// least recently. Userspace sizes it to 1 entry when the mode is off.
#[map]
pub(crate) static FLOWS: LruHashMap<FlowKey, FlowState> =
    LruHashMap::with_max_entries(MAX_FLOWS, 0);

/// 1 when the data-path mode is on. In `.rodata`, set before load: with 0 the verifier sees a
/// constant and removes the data-path code from the packet programs.
#[unsafe(no_mangle)]
pub(crate) static DATA_MODE: Global<u8> = Global::new(0);

/// Struct offsets of this kernel for the drop tracer (Rust eBPF has no CO-RE relocations).
#[unsafe(no_mangle)]
pub(crate) static OFFSETS: Global<KernelOffsets> = Global::new(KernelOffsets {
    skb_head: 0,
    skb_network_header: 0,
    skb_dev: 0,
    skb_sk: 0,
    dev_ifindex: 0,
    dev_nd_net: 0,
    sk_net: 0,
    net_inum: 0,
});
/// Struct offsets of this kernel for the retransmission tracer.
#[unsafe(no_mangle)]
pub(crate) static SOCK_OFFSETS: Global<SockOffsets> = Global::new(SockOffsets {
    family: 0,
    daddr: 0,
    rcv_saddr: 0,
    dport: 0,
    num: 0,
    v6_daddr: 0,
    v6_rcv_saddr: 0,
    skb_len: 0,
    skb_cb: 0,
    cb_tcp_flags: 0,
    mss_cache: 0,
    state: 0,
    inet_sport: 0,
});
/// The traced network namespace's inode number: drops elsewhere are ignored.
#[unsafe(no_mangle)]
pub(crate) static NETNS_INUM: Global<u32> = Global::new(0);
/// 1 when an endpoint watches every port (port 0), so lookups try the wildcard too.
#[unsafe(no_mangle)]
pub(crate) static HAS_WILDCARD: Global<u8> = Global::new(0);
/// Records per CPU ring in `EVENTS` (a power of two).
#[unsafe(no_mangle)]
pub(crate) static RING_SLOTS: Global<u64> = Global::new(1);
/// Unread records of one CPU at which it writes a wake-up record.
#[unsafe(no_mangle)]
pub(crate) static WAKEUP_EVENTS: Global<u64> = Global::new(1);
/// Unread bytes of `PRIORITY_EVENTS` (and of `PACKET_EVENTS`) above which a submit wakes the
/// reader.
#[unsafe(no_mangle)]
pub(crate) static PRIORITY_WAKEUP_BYTES: Global<u64> = Global::new(1 << 18);

/// Adds one to this CPU's `COUNTERS[idx]`; returns the new value (0 if the index is out of range).
#[inline(always)]
pub(crate) fn count(idx: u32) -> u64 {
    match COUNTERS.get_ptr_mut(idx) {
        // SAFETY: the map's value for this CPU, valid for the whole program run; per-CPU, so no
        // other CPU writes it.
        Some(p) => unsafe {
            *p += 1;
            *p
        },
        None => 0,
    }
}
