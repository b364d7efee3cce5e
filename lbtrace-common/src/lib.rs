//! The ABI shared by lbtrace's kernel programs (`lbtrace-ebpf`) and its userspace controller.
//!
//! Everything that crosses the kernel/userspace boundary is defined here once: the fixed-size
//! [`Event`] record written to the ring buffers, the key and value types of the maps, the indices of
//! the per-CPU counters and the names of maps, programs and globals. Records use fixed-width
//! integers and explicit padding only (no `bool`, no Rust enums), so their layout is the same on both
//! sides; the size asserts below break the build if it drifts.
#![no_std]

/// Event kinds (`Event::kind`).
pub mod kind {
    /// A TCP control packet (SYN, SYN-ACK, RST, FIN) of a watched tuple seen by a TC or XDP hook.
    pub const PACKET: u8 = 1;
    /// An ICMP / ICMPv6 error whose quoted packet is TCP of a watched tuple.
    pub const ICMP: u8 = 2;
    /// A packet of a watched tuple freed by the kernel with a drop reason (`skb:kfree_skb`).
    pub const DROP: u8 = 3;
    /// A TCP segment of a watched tuple retransmitted by this host's stack
    /// (`tcp:tcp_retransmit_skb`).
    pub const RETRANS: u8 = 4;
    /// A data segment of a watched tuple that the data-path mode (`--data`) marks: `reason`
    /// says what ([`data_event`]).
    pub const DATA: u8 = 5;
    /// A TCP reset of a watched tuple made or accepted by this host's TCP stack
    /// (`tcp:tcp_send_reset`, `tcp:tcp_receive_reset`): see [`super::Event`] and [`super::reset`].
    pub const RESET: u8 = 6;
}

/// `RESET` events: the bits of `Event::icmp_code`.
pub mod reset {
    /// Sent with no segment to answer (`tcp_send_active_reset`): a socket of this host aborted
    /// (closed with unread data, SO_LINGER 0, out of memory).
    pub const ACTIVE: u8 = 1;
    /// `Event::reason` holds the kernel's `enum sk_rst_reason` value (6.10 and later).
    pub const HAS_REASON: u8 = 2;
}

/// What a `DATA` event marks (`Event::reason`).
pub mod data_event {
    /// The first byte of data in this direction of the flow at this interface. The first 8
    /// bytes of `outer_src` hold the nanoseconds since the other direction's first byte
    /// ([`super::Event::location`]), 0 when this direction sent first; when the segment starts
    /// with an HTTP/1.x status line, the first 2 bytes of `outer_dst` hold its status code
    /// ([`super::Event::http_status`]).
    pub const FIRST_BYTE: u32 = 1;
    /// Data seen again at this interface: a segment that starts before the highest sequence
    /// number already seen in its direction (a retransmission, by whichever host sent it).
    pub const RETRANS: u32 = 2;
    /// New data from one side after the other side's FIN (reported once per direction).
    pub const AFTER_FIN: u32 = 3;
}

/// Where an event was seen (`Event::hook`).
pub mod hook {
    pub const TC_INGRESS: u8 = 1;
    pub const TC_EGRESS: u8 = 2;
    pub const XDP_INGRESS: u8 = 3;
    /// The `skb:kfree_skb` tracepoint: no direction, the interface is the skb's device (0 if none).
    pub const KFREE_SKB: u8 = 4;
    /// The `tcp:tcp_retransmit_skb` tracepoint: sent by this host, no interface (0).
    pub const TCP_RETRANSMIT: u8 = 5;
    /// The `tcp:tcp_send_reset` tracepoint: a reset this host's TCP stack sent, no interface (0).
    pub const TCP_SEND_RESET: u8 = 6;
    /// The `tcp:tcp_receive_reset` tracepoint: a reset a socket of this host accepted, no
    /// interface (0).
    pub const TCP_RECEIVE_RESET: u8 = 7;
}

/// TCP header flag bits as they appear in byte 13 of the TCP header (`Event::tcp_flags`).
pub mod tcp_flag {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
    /// The flags that make a packet a control packet worth an event.
    pub const CONTROL: u8 = SYN | FIN | RST;
}

/// Address family tags (`Event::family`, `EndpointKey::family`).
pub mod family {
    pub const V4: u8 = 4;
    pub const V6: u8 = 6;
}

/// One kernel event: 104 bytes, fixed size, the same record for every kind.
///
/// Addresses are in network byte order; IPv4 addresses use the first 4 bytes of the 16. Ports,
/// sequence numbers and the drop reason are in host byte order.
///
/// * `PACKET`: the tuple, flags, seq and ack of the packet; `ifindex` and `hook` say where.
/// * `ICMP`: the tuple, flags (0) and seq of the *quoted* TCP header; `outer_src` / `outer_dst`
///   are the addresses of the ICMP packet itself; `icmp_type` / `icmp_code` its type and code.
/// * `DROP`: the tuple, flags, seq and ack of the dropped packet; `reason` is the kernel's
///   `enum skb_drop_reason` value (names come from the running kernel's BTF), 0 on kernels
///   before 5.17, which have no reasons; `ifindex` is the skb's device, 0 when it had none. The
///   first 8 bytes of `outer_src` (unused by drops otherwise) hold the tracepoint's `location`,
///   the kernel text address that freed the packet, native-endian ([`Event::location`]).
/// * `RETRANS`: a segment this host's TCP stack sent again: the socket's tuple (local address
///   and port as source), the segment's flags and first sequence number, `payload_len` its
///   bytes of data (`skb->len`, saturated), `mss` the socket's current MSS (`mss_cache`);
///   `ifindex` 0.
/// * `RESET`: a reset this host's TCP stack sent (hook `TCP_SEND_RESET`) or one of its sockets
///   accepted (hook `TCP_RECEIVE_RESET`). The tuple is the RST's on the wire: local -> peer for
///   a sent one, peer -> local for a received one; `tcp_flags` is RST. `icmp_type` is the
///   socket's `skc_state` (`TCP_ESTABLISHED` 1, `TCP_SYN_SENT` 2, ..., `TCP_TIME_WAIT` 6), 0
///   when no socket was found for the segment answered (6.10 and later only: the tuple then
///   comes from the segment's headers, reversed); `icmp_code` holds [`reset`] bits: `ACTIVE`
///   (sent with no segment to answer: the socket aborted) and `HAS_REASON` (`reason` is the
///   kernel's `enum sk_rst_reason` value, names from its BTF); `ifindex` 0.
///
/// * `DATA` (`--data` only): a data segment at a TC or XDP hook; `reason` is a [`data_event`]
///   value, `payload_len` its length, `mss` the MSS its receiver advertised in its SYN or
///   SYN-ACK minus the option bytes of this segment (so `payload_len >= mss` is a full-size
///   segment; 0 when the flow's handshake was not seen). For `FIRST_BYTE` the first 8 bytes of
///   `outer_src` hold the nanoseconds since the other direction's first byte (0 if none), and
///   the first 2 bytes of `outer_dst` the status code when the segment's data starts with an
///   HTTP/1.x status line (`HTTP/1.` digit, space, 3 digits), native-endian, 0 otherwise
///   ([`Event::http_status`]); no other payload byte is ever copied.
///
/// `mss` is read from SYN and SYN-ACK packet events only (the option walk runs on nothing else).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC in nanoseconds.
    pub ts_ns: u64,
    pub ifindex: u32,
    pub kind: u8,
    pub hook: u8,
    pub family: u8,
    pub tcp_flags: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    /// Drop reason for `DROP` events, 0 otherwise.
    pub reason: u32,
    pub outer_src: [u8; 16],
    pub outer_dst: [u8; 16],
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// Bytes of TCP payload in the packet (PACKET and DROP), as far as the headers tell.
    pub payload_len: u16,
    /// The MSS option of a SYN or SYN-ACK (`PACKET` events), 0 for other packets and for a SYN
    /// without one.
    pub mss: u16,
    /// `PACKET` events of a TCP packet found inside a tunnel (an LB forwarding to its backends
    /// in IPIP or GRE, as IPVS tunnel mode and Katran-style LBs do): `encap[0]` the outer
    /// header's protocol ([`encap`]), `encap[1]` its family; `outer_src` / `outer_dst` are the
    /// outer addresses. Zero for anything else.
    pub encap: [u8; 2],
}

/// The tunnels whose inner TCP the packet programs read (`Event::encap[0]`): the outer IP
/// header's protocol number.
pub mod encap {
    /// IPv4 in IP (IPIP, `ipip` / IPVS `--ipip` / Katran).
    pub const IPIP: u8 = 4;
    /// IPv6 in IP (`sit`, `ip6tnl`).
    pub const IPV6: u8 = 41;
    /// GRE (version 0; checksum, key and sequence fields skipped) carrying IPv4 or IPv6.
    pub const GRE: u8 = 47;
}

pub const EVENT_SIZE: usize = 104;
const _: () = assert!(core::mem::size_of::<Event>() == EVENT_SIZE);
// RingBuf::reserve requires an alignment that divides 8.
const _: () = assert!(8 % core::mem::align_of::<Event>() == 0);

/// `outer_src` of a `DROP` event carrying `location` (see [`Event`]).
#[inline(always)]
pub const fn location_bytes(location: u64) -> [u8; 16] {
    let b = location.to_ne_bytes();
    [
        b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], 0, 0, 0, 0, 0, 0, 0, 0,
    ]
}

impl Event {
    /// The drop's `location` (a kernel text address) of a `DROP` event; meaningless for others.
    pub const fn location(&self) -> u64 {
        let s = &self.outer_src;
        u64::from_ne_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]])
    }

    /// The HTTP status code of a `DATA` `FIRST_BYTE` event whose segment starts with a status
    /// line; 0 when it does not, meaningless for other events.
    pub const fn http_status(&self) -> u16 {
        u16::from_ne_bytes([self.outer_dst[0], self.outer_dst[1]])
    }

    pub const fn zeroed() -> Self {
        Self {
            ts_ns: 0,
            ifindex: 0,
            kind: 0,
            hook: 0,
            family: 0,
            tcp_flags: 0,
            saddr: [0; 16],
            daddr: [0; 16],
            sport: 0,
            dport: 0,
            seq: 0,
            ack: 0,
            reason: 0,
            outer_src: [0; 16],
            outer_dst: [0; 16],
            icmp_type: 0,
            icmp_code: 0,
            payload_len: 0,
            mss: 0,
            encap: [0; 2],
        }
    }
}

/// Key of the `ENDPOINTS` hash map: a watched address and port. Port 0 watches every port of the
/// address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    /// Network byte order; IPv4 in the first 4 bytes, the rest zero.
    pub addr: [u8; 16],
    /// Host byte order; 0 = any port.
    pub port: u16,
    pub family: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<EndpointKey>() == 20);

/// Endpoints per port that the `PORT_SLOTS` table holds; a port with more goes to the hash map.
pub const PORT_SLOT_ENTRIES: usize = 8;
/// Distinct watched ports the `PORT_SLOTS` table holds (as many as endpoints can have).
pub const MAX_PORT_SLOTS: u32 = MAX_ENDPOINTS;
/// `PORTS` value of a port with more endpoints than a slot holds: look them up in `ENDPOINTS`.
pub const PORT_HASHED: u16 = u16::MAX;

/// One watched endpoint in a `PortSlot`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortEntry {
    /// The address as `EndpointKey::addr`, read as two native-endian words.
    pub addr: [u64; 2],
    /// The endpoint's id (index of `ENDPOINT_STATS`).
    pub id: u32,
    pub family: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<PortEntry>() == 24);

/// The endpoints of one watched port (`PORT_SLOTS[PORTS[port] - 1]`): the packet programs find
/// an endpoint with an array index and at most `PORT_SLOT_ENTRIES` compares, no hashing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortSlot {
    pub len: u32,
    pub _pad: u32,
    pub entries: [PortEntry; PORT_SLOT_ENTRIES],
}
const _: () = assert!(core::mem::size_of::<PortSlot>() == 8 + 24 * PORT_SLOT_ENTRIES);

impl EndpointKey {
    /// The address as the two words `PortEntry::addr` holds.
    pub fn addr_words(&self) -> [u64; 2] {
        addr_words(&self.addr)
    }
}

#[inline(always)]
pub fn addr_words(a: &[u8; 16]) -> [u64; 2] {
    [
        u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]),
        u64::from_ne_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]),
    ]
}

/// Per-endpoint control-packet counters (`ENDPOINT_STATS`, per-CPU, indexed by the endpoint's id,
/// the value stored in `ENDPOINTS`). They are counted before the ring buffer is touched, so they
/// stay right when events are lost.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointStats {
    pub syn: u64,
    pub syn_ack: u64,
    pub rst: u64,
    pub fin: u64,
    pub icmp: u64,
    pub drops: u64,
}
const _: () = assert!(core::mem::size_of::<EndpointStats>() == 48);

/// Key of the data-path mode's `FLOWS` map: a flow at one interface, its two ends ordered
/// (`a` the lower address-and-port, as words), so both directions find the same entry. Plain
/// words with no padding: the programs build it without a `memset`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub a: [u64; 2],
    pub b: [u64; 2],
    /// `a`'s port in the high 16 bits, `b`'s in the low 16.
    pub ports: u32,
    pub ifindex: u32,
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

/// One direction of a flow in `FLOWS` (`FlowState::dir[0]` is sent by `FlowKey::a`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirState {
    /// When this direction's first data byte was seen (CLOCK_MONOTONIC ns), 0 before.
    pub first_ns: u64,
    /// The sequence number after the highest one seen (valid with `flow_flag::NXT`).
    pub nxt: u32,
    /// The MSS this direction's sender advertised in its SYN / SYN-ACK (0: not seen).
    pub mss: u16,
    /// `flow_flag` bits.
    pub flags: u8,
    pub _pad: u8,
}

/// The data-path mode's per-flow state (`FLOWS` value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    pub dir: [DirState; 2],
}
const _: () = assert!(core::mem::size_of::<FlowState>() == 32);

/// `DirState::flags`.
pub mod flow_flag {
    /// `nxt` holds a sequence number.
    pub const NXT: u8 = 1;
    /// This direction sent a FIN.
    pub const FIN: u8 = 2;
    /// Its data after the other side's FIN was reported.
    pub const AFTER_FIN_REPORTED: u8 = 4;
}

/// Flows the data-path mode follows at once (`FLOWS`, an LRU hash: the least recently seen
/// flow makes room). Userspace sizes the map to 1 when the mode is off.
pub const MAX_FLOWS: u32 = 65_536;

/// Indices of the per-CPU `COUNTERS` array.
pub mod counter {
    /// Packet events written to this CPU's `EVENTS` ring.
    pub const EVENTS_EMITTED: u32 = 0;
    /// Packet events lost: this CPU's `EVENTS` ring was full (the reader was behind).
    pub const EVENTS_LOST: u32 = 1;
    /// Events written to the `PRIORITY_EVENTS` ring (ICMP errors and drops).
    pub const PRIORITY_EMITTED: u32 = 2;
    /// ICMP and drop events lost: the `PRIORITY_EVENTS` ring was full.
    pub const PRIORITY_LOST: u32 = 3;
    /// Packets the TC / XDP programs looked at.
    pub const PACKETS: u32 = 4;
    /// Packets whose headers could not be parsed (truncated, malformed).
    pub const PARSE_ERRORS: u32 = 5;
    /// Drops of watched data packets (no SYN/FIN/RST): counted, never one event each.
    pub const DATA_DROPS: u32 = 6;
    /// `kfree_skb` hits in another network namespace, ignored.
    pub const DROPS_OTHER_NETNS: u32 = 7;
    /// `kfree_skb` hits with a reason listed as teardown noise (e.g. QUEUE_PURGE), ignored.
    pub const DROPS_NOISE: u32 = 8;
    pub const COUNT: u32 = 9;
}

/// Kernel struct offsets the drop tracer needs, read from /sys/kernel/btf/vmlinux by userspace and
/// written into the `OFFSETS` global before load (Rust eBPF has no CO-RE relocations).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub skb_head: u32,
    pub skb_network_header: u32,
    pub skb_dev: u32,
    pub skb_sk: u32,
    pub dev_ifindex: u32,
    /// `net_device.nd_net.net` (possible_net_t holds one pointer).
    pub dev_nd_net: u32,
    /// `sock.__sk_common.skc_net.net`.
    pub sk_net: u32,
    /// `net.ns.inum`: the namespace's inode number, what `stat /proc/self/ns/net` shows.
    pub net_inum: u32,
}

/// Kernel struct offsets the retransmission tracer needs (`SOCK_OFFSETS`), read from BTF like
/// [`KernelOffsets`], kept apart so a kernel lacking one only loses that tracer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOffsets {
    /// `sock_common.skc_family` (u16).
    pub family: u32,
    /// `skc_daddr`, `skc_rcv_saddr` (IPv4, network order).
    pub daddr: u32,
    pub rcv_saddr: u32,
    /// `skc_dport` (network order), `skc_num` (host order).
    pub dport: u32,
    pub num: u32,
    /// `skc_v6_daddr`, `skc_v6_rcv_saddr` (in6_addr).
    pub v6_daddr: u32,
    pub v6_rcv_saddr: u32,
    /// `sk_buff.len`, `sk_buff.cb` (whose start is `tcp_skb_cb`: seq, end_seq, ..., tcp_flags).
    pub skb_len: u32,
    pub skb_cb: u32,
    /// `tcp_skb_cb.tcp_flags`.
    pub cb_tcp_flags: u32,
    /// `tcp_sock.mss_cache`.
    pub mss_cache: u32,
    /// `sock_common.skc_state` (u8), for the reset tracer.
    pub state: u32,
    /// `inet_sock.inet_sport` (network order): the local port of a full socket, still set
    /// after `skc_num` was cleared by unhashing (an aborted socket's reset).
    pub inet_sport: u32,
}

/// One CPU's cursors of its packet-event ring (the `RING_CURSORS` array, one entry per possible
/// CPU, mapped by userspace). The programs on that CPU write `head` (records published, counting
/// from 0), the reader writes `tail` (records consumed); each sits on a cache line of its own.
/// Records `tail..head` of CPU `c` are `EVENTS[c * RING_SLOTS + (i % RING_SLOTS)]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingCursor {
    pub head: u64,
    pub _pad0: [u64; 7],
    pub tail: u64,
    pub _pad1: [u64; 7],
}

pub const RING_CURSOR_SIZE: usize = 128;
const _: () = assert!(core::mem::size_of::<RingCursor>() == RING_CURSOR_SIZE);
/// Offsets of the two cursors, for readers that access the mapping with atomics.
pub const RING_CURSOR_HEAD: usize = 0;
pub const RING_CURSOR_TAIL: usize = 64;
const _: () = assert!(core::mem::offset_of!(RingCursor, head) == RING_CURSOR_HEAD);
const _: () = assert!(core::mem::offset_of!(RingCursor, tail) == RING_CURSOR_TAIL);

/// Maximum number of watched endpoints (size of `ENDPOINTS` and `ENDPOINT_STATS`).
pub const MAX_ENDPOINTS: u32 = 1024;
/// Size of the per-CPU `DATA_DROP_REASONS` array: data-packet drops counted by reason value.
pub const MAX_DROP_REASONS: u32 = 1024;

/// Map, program and global names, so userspace never spells them twice.
pub mod names {
    /// `Array<Event>` (mmapable) of `possible CPUs x RING_SLOTS` records: one single-producer ring
    /// of packet events per CPU, cursors in `RING_CURSORS`.
    pub const EVENTS: &str = "EVENTS";
    /// `Array<RingCursor>` (mmapable), one per possible CPU.
    pub const RING_CURSORS: &str = "RING_CURSORS";
    /// A small BPF ring buffer of wake-up records: a CPU whose ring reaches `WAKEUP_EVENTS`
    /// unread records writes one, so the reader wakes before its timer tick.
    pub const RING_WAKEUP: &str = "RING_WAKEUP";
    /// BPF ring buffer of ICMP-error and drop events (the drop tracer can interrupt the packet
    /// programs on a CPU, so these go through the kernel's multi-producer ring).
    pub const PRIORITY_EVENTS: &str = "PRIORITY_EVENTS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const ENDPOINTS: &str = "ENDPOINTS";
    pub const ENDPOINT_STATS: &str = "ENDPOINT_STATS";
    pub const DATA_DROP_REASONS: &str = "DATA_DROP_REASONS";
    pub const NOISE_REASONS: &str = "NOISE_REASONS";
    /// `Array<u16>` of 65536, by port: 0 = no endpoint, `PORT_HASHED` = look in `ENDPOINTS`,
    /// else the index + 1 of the port's `PORT_SLOTS` entry.
    pub const PORTS: &str = "PORTS";
    /// `Array<PortSlot>`: the endpoints of each watched port, for lookups without hashing.
    pub const PORT_SLOTS: &str = "PORT_SLOTS";

    pub const PROG_TC_INGRESS: &str = "tc_ingress";
    pub const PROG_TC_EGRESS: &str = "tc_egress";
    pub const PROG_XDP_INGRESS: &str = "xdp_ingress";
    /// `tc_ingress` / `tc_egress` under the names lbtrace's legacy TC (cls_bpf) filters carry.
    pub const PROG_LEGACY_TC_INGRESS: &str = "lbtrace_tc_in";
    pub const PROG_LEGACY_TC_EGRESS: &str = "lbtrace_tc_eg";
    /// The packet programs' variants that write packet events to `PACKET_EVENTS` (kernels that
    /// refuse the per-CPU rings' atomic fetch-add): each name above with this suffix.
    pub const RINGBUF_VARIANT_SUFFIX: &str = "_rb";
    /// BPF ring buffer of packet events, used by the `_rb` program variants only.
    pub const PACKET_EVENTS: &str = "PACKET_EVENTS";
    pub const PROG_KFREE_SKB: &str = "tp_kfree_skb";
    /// The drop tracer for kernels before 5.17, whose `skb:kfree_skb` has no `reason` argument:
    /// it reads only `skb` and `location`.
    pub const PROG_KFREE_SKB_LOCATION: &str = "tp_kfree_skb_loc";

    /// The retransmission tracer: raw tracepoint `tcp:tcp_retransmit_skb`.
    pub const PROG_TCP_RETRANSMIT: &str = "tp_tcp_retransmit";
    /// The tracepoint it attaches to.
    pub const TP_TCP_RETRANSMIT: &str = "tcp_retransmit_skb";
    /// The sent-reset tracer for 6.10 and later: raw tracepoint
    /// `tcp:tcp_send_reset(sk, skb, reason)`, `sk` may be NULL.
    pub const PROG_TCP_SEND_RESET: &str = "tp_tcp_send_reset";
    /// The sent-reset tracer before 6.10: `tcp:tcp_send_reset(sk, skb)`, full sockets only.
    pub const PROG_TCP_SEND_RESET_SK: &str = "tp_tcp_send_reset_sk";
    pub const TP_TCP_SEND_RESET: &str = "tcp_send_reset";
    /// The received-reset tracer: raw tracepoint `tcp:tcp_receive_reset(sk)`.
    pub const PROG_TCP_RECEIVE_RESET: &str = "tp_tcp_receive_reset";
    pub const TP_TCP_RECEIVE_RESET: &str = "tcp_receive_reset";

    /// LRU hash of `FlowKey` -> `FlowState`: the data-path mode's per-flow state.
    pub const FLOWS: &str = "FLOWS";
    /// `u8`: 1 = the data-path mode (`--data`) is on: the packet programs follow data segments
    /// of watched tuples. Read-only data, so with 0 the verifier removes that code.
    pub const GLOBAL_DATA_MODE: &str = "DATA_MODE";

    /// `KernelOffsets` for the drop tracer.
    pub const GLOBAL_OFFSETS: &str = "OFFSETS";
    /// `SockOffsets` for the retransmission tracer.
    pub const GLOBAL_SOCK_OFFSETS: &str = "SOCK_OFFSETS";
    /// `u32`: the inode number of the traced network namespace.
    pub const GLOBAL_NETNS_INUM: &str = "NETNS_INUM";
    /// `u8`: 1 when some endpoint watches all ports (port 0), so lookups try the wildcard too.
    pub const GLOBAL_HAS_WILDCARD: &str = "HAS_WILDCARD";
    /// `u64`: records per CPU in `EVENTS` (a power of two).
    pub const GLOBAL_RING_SLOTS: &str = "RING_SLOTS";
    /// `u64`: unread records in a CPU's ring at which it writes a wake-up record.
    pub const GLOBAL_WAKEUP_EVENTS: &str = "WAKEUP_EVENTS";
    /// `u64`: bytes of unread data in `PRIORITY_EVENTS` above which a submit wakes the reader.
    pub const GLOBAL_PRIORITY_WAKEUP_BYTES: &str = "PRIORITY_WAKEUP_BYTES";
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), made only of integers and byte arrays, with explicit padding.
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::EndpointKey {}
    unsafe impl aya::Pod for super::EndpointStats {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::SockOffsets {}
    unsafe impl aya::Pod for super::RingCursor {}
    unsafe impl aya::Pod for super::PortSlot {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowState {}
}
