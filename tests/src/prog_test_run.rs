//! `BPF_PROG_TEST_RUN` tests of the packet programs (`tc_ingress`, `tc_egress`, `xdp_ingress`).
//!
//! Every test loads the embedded object afresh (its own maps, nothing attached anywhere), fills
//! `ENDPOINTS`, runs hand-built frames through each program and checks, for every run:
//!
//! * the verdict is "pass" (`TC_ACT_UNSPEC` = -1 for TC, `XDP_PASS` for XDP), for every frame,
//!   truncated and garbage ones included;
//! * the frame comes back unmodified;
//! * the ring-buffer records, field by field (and that nothing else was written);
//! * the deltas of every `COUNTERS` slot and of the `ENDPOINT_STATS` of every watched endpoint.
//!
//! Needs root (or CAP_BPF + CAP_NET_ADMIN) to load the programs.
//!
//! Kernel facts these tests rely on (net/bpf/test_run.c):
//! * frames shorter than `ETH_HLEN` (14 bytes) are refused by the syscall itself with `EINVAL`
//!   before any program runs, for skb and XDP programs alike;
//! * skb (TC) test runs also refuse, with `EINVAL`, a frame whose outer EtherType is IPv4 / IPv6
//!   but that is too short for the fixed IPv4 (20 bytes) / IPv6 (40 bytes) header (seen on 6.18).
//!   Such cuts are tested through XDP, and through TC behind a VLAN tag (whose skb protocol is
//!   802.1Q, so the kernel does not look further); see [`kernel_refuses`];
//! * skb test runs use the network namespace's loopback device, so `__sk_buff.ifindex` is its
//!   ifindex; XDP test runs use loopback's rx queue 0, so `ingress_ifindex` is the same.

use std::{
    collections::BTreeMap,
    ptr::read_unaligned,
    sync::atomic::{AtomicU32, Ordering},
};

use aya::{
    Ebpf, EbpfLoader, TestRun as _, TestRunOptions,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{ProgramError, SchedClassifier, Xdp},
};
use lbtrace::kernel::rings::{CpuRings, MIN_SLOTS, RingLayout};
use lbtrace_common::{
    EVENT_SIZE, EndpointKey, EndpointStats, Event, PORT_HASHED, PORT_SLOT_ENTRIES, counter, family,
    hook, kind, names,
    tcp_flag::{ACK, FIN, PSH, RST, SYN},
};

// ------------------------------------------------------------------------------------------------
// Addresses and endpoints used throughout.

const CLIENT4: [u8; 4] = [192, 0, 2, 7];
const VIP4: [u8; 4] = [10, 0, 0, 10];
const VIP_PORT: u16 = 443;
/// The load balancer's address towards the backends (SNAT source).
const LB4: [u8; 4] = [10, 0, 1, 1];
const BACKEND4: [u8; 4] = [10, 0, 1, 20];
const BACKEND_PORT: u16 = 8080;
const ROUTER4: [u8; 4] = [10, 0, 1, 254];
/// Watched on every port (port 0) by the wildcard tests.
const WILD4: [u8; 4] = [10, 0, 2, 30];
const UNWATCHED4: [u8; 4] = [10, 0, 0, 99];

const CLIENT6: [u8; 16] = ip6(0x2001_0db8_00ff, 7);
const VIP6: [u8; 16] = ip6(0x2001_0db8_0000, 0x10);
const LB6: [u8; 16] = ip6(0x2001_0db8_0001, 1);
const BACKEND6: [u8; 16] = ip6(0x2001_0db8_0001, 0x20);
const ROUTER6: [u8; 16] = ip6(0x2001_0db8_0001, 0xfe);
const WILD6: [u8; 16] = ip6(0x2001_0db8_0002, 0x30);

const ID_VIP4: u32 = 3;
const ID_BACKEND4: u32 = 7;
const ID_VIP6: u32 = 11;
const ID_BACKEND6: u32 = 13;
const ID_WILD4: u32 = 21;
const ID_WILD6: u32 = 22;
const ID_WILD4_443: u32 = 23;
const ID_WILD_NOFLAG: u32 = 30;

const SEQ: u32 = 0x1122_3344;
const ACK_SEQ: u32 = 0x5566_7788;

/// `TC_ACT_UNSPEC` (-1), i.e. `TCX_NEXT`, as the kernel reports it in `retval`.
const TC_PASS: u32 = u32::MAX;
const XDP_PASS: u32 = 2;
const ETH_HLEN: usize = 14;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const ETH_P_LLDP: u16 = 0x88cc;
const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_ICMPV6: u8 = 58;
const PROTO_HOPOPTS: u8 = 0;

/// `prefix` is the first 48 bits, `host` the last 16.
const fn ip6(prefix: u64, host: u16) -> [u8; 16] {
    let p = prefix.to_be_bytes();
    let h = host.to_be_bytes();
    [
        p[2], p[3], p[4], p[5], p[6], p[7], 0, 0, 0, 0, 0, 0, 0, 0, h[0], h[1],
    ]
}

fn addr4(a: [u8; 4]) -> [u8; 16] {
    let mut out = [0; 16];
    out[..4].copy_from_slice(&a);
    out
}

fn key4(a: [u8; 4], port: u16) -> EndpointKey {
    EndpointKey {
        addr: addr4(a),
        port,
        family: family::V4,
        _pad: 0,
    }
}

fn key6(a: [u8; 16], port: u16) -> EndpointKey {
    EndpointKey {
        addr: a,
        port,
        family: family::V6,
        _pad: 0,
    }
}

fn standard_endpoints() -> Vec<(EndpointKey, u32)> {
    vec![
        (key4(VIP4, VIP_PORT), ID_VIP4),
        (key4(BACKEND4, BACKEND_PORT), ID_BACKEND4),
        (key6(VIP6, VIP_PORT), ID_VIP6),
        (key6(BACKEND6, BACKEND_PORT), ID_BACKEND6),
    ]
}

// ------------------------------------------------------------------------------------------------
// Frame builder. Checksums are left zero: the programs never look at them.

/// A TCP header (data offset from the options) followed by `payload`.
fn tcp_full(
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    assert_eq!(
        options.len() % 4,
        0,
        "TCP options must be padded to 4 bytes"
    );
    let doff = u8::try_from((20 + options.len()) / 4).expect("options too long");
    assert!(doff <= 15, "options too long");
    let mut t = Vec::with_capacity(20 + options.len() + payload.len());
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&ack.to_be_bytes());
    t.push(doff << 4);
    t.push(flags);
    t.extend_from_slice(&64240u16.to_be_bytes()); // window
    t.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    t.extend_from_slice(options);
    t.extend_from_slice(payload);
    t
}

/// A bare TCP header; `ack` is `ACK_SEQ` when the ACK flag is set, 0 otherwise.
fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let ack = if flags & ACK != 0 { ACK_SEQ } else { 0 };
    tcp_full(sport, dport, SEQ, ack, flags, &[], &[])
}

/// SYN options as Linux sends them: MSS, SACK permitted, timestamps, NOP, window scale (20 bytes).
const SYN_OPTIONS: [u8; 20] = [
    2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
];
/// NOP, NOP, timestamps (12 bytes).
const TS_OPTIONS: [u8; 12] = [1, 1, 8, 10, 0, 0, 0, 2, 0, 0, 0, 1];

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(8 + payload.len()).unwrap();
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&len.to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

/// An IPv4 packet. `frag` is the flags + fragment offset field; `tot_len` overrides the total
/// length (otherwise header + `l4`).
fn ipv4_full(
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    options: &[u8],
    frag: u16,
    tot_len: Option<u16>,
    l4: &[u8],
) -> Vec<u8> {
    assert_eq!(
        options.len() % 4,
        0,
        "IPv4 options must be padded to 4 bytes"
    );
    let ihl = u8::try_from((20 + options.len()) / 4).unwrap();
    assert!(ihl <= 15, "IPv4 options too long");
    let hlen = 20 + options.len();
    let tot = tot_len.unwrap_or_else(|| u16::try_from(hlen + l4.len()).unwrap());
    let mut p = Vec::with_capacity(hlen + l4.len());
    p.push(0x40 | ihl);
    p.push(0); // DSCP/ECN
    p.extend_from_slice(&tot.to_be_bytes());
    p.extend_from_slice(&0x1234u16.to_be_bytes()); // id
    p.extend_from_slice(&frag.to_be_bytes());
    p.push(64); // TTL
    p.push(proto);
    p.extend_from_slice(&[0, 0]); // checksum
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(options);
    p.extend_from_slice(l4);
    p
}

const IP_DF: u16 = 0x4000;
const IP_MF: u16 = 0x2000;

fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
    ipv4_full(src, dst, proto, &[], IP_DF, None, l4)
}

/// IPv4 options of `len` bytes: a router alert (4 bytes) then NOPs, ending with EOL.
fn ipv4_options(len: usize) -> Vec<u8> {
    let mut o = vec![1u8; len];
    if len >= 4 {
        o[..4].copy_from_slice(&[0x94, 4, 0, 0]);
    }
    if let Some(last) = o.last_mut() {
        *last = 0;
    }
    o
}

fn ipv6(src: [u8; 16], dst: [u8; 16], next: u8, l4: &[u8]) -> Vec<u8> {
    let plen = u16::try_from(l4.len()).unwrap();
    let mut p = Vec::with_capacity(40 + l4.len());
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&plen.to_be_bytes());
    p.push(next);
    p.push(64); // hop limit
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(l4);
    p
}

/// An ICMP / ICMPv6 message: type, code, zero checksum, the 4 "rest of header" bytes, `body`.
fn icmp(ty: u8, code: u8, rest: u32, body: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0];
    m.extend_from_slice(&rest.to_be_bytes());
    m.extend_from_slice(body);
    m
}

const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// An Ethernet frame with the given VLAN tags (TPID, TCI), outermost first.
fn eth_vlan(tags: &[(u16, u16)], ethertype: u16, l3: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_HLEN + 4 * tags.len() + l3.len());
    f.extend_from_slice(&DST_MAC);
    f.extend_from_slice(&SRC_MAC);
    for (tpid, tci) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&tci.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(l3);
    f
}

fn eth(ethertype: u16, l3: &[u8]) -> Vec<u8> {
    eth_vlan(&[], ethertype, l3)
}

/// Pads a frame with zeros to the Ethernet minimum (60 bytes without FCS).
fn padded(mut f: Vec<u8>) -> Vec<u8> {
    if f.len() < 60 {
        f.resize(60, 0);
    }
    f
}

fn tcp4_frame(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, flags: u8) -> Vec<u8> {
    eth(
        ETH_P_IP,
        &ipv4(src, dst, PROTO_TCP, &tcp(sport, dport, flags)),
    )
}

fn tcp6_frame(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16, flags: u8) -> Vec<u8> {
    eth(
        ETH_P_IPV6,
        &ipv6(src, dst, PROTO_TCP, &tcp(sport, dport, flags)),
    )
}

// ------------------------------------------------------------------------------------------------
// Expected records.

/// The record a packet event should produce (hook, ts_ns and ifindex are filled in per run).
#[allow(clippy::too_many_arguments)]
fn packet_ev(
    fam: u8,
    flags: u8,
    saddr: [u8; 16],
    sport: u16,
    daddr: [u8; 16],
    dport: u16,
    seq: u32,
    ack: u32,
    payload_len: u16,
) -> Event {
    let mut e = Event::zeroed();
    e.kind = kind::PACKET;
    e.family = fam;
    e.tcp_flags = flags;
    e.saddr = saddr;
    e.daddr = daddr;
    e.sport = sport;
    e.dport = dport;
    e.seq = seq;
    e.ack = ack;
    e.payload_len = payload_len;
    e
}

/// A packet event for a header built by [`tcp`] (seq `SEQ`, ack `ACK_SEQ` iff ACK, no payload).
fn pkt4(flags: u8, saddr: [u8; 4], sport: u16, daddr: [u8; 4], dport: u16) -> Event {
    let ack = if flags & ACK != 0 { ACK_SEQ } else { 0 };
    packet_ev(
        family::V4,
        flags,
        addr4(saddr),
        sport,
        addr4(daddr),
        dport,
        SEQ,
        ack,
        0,
    )
}

fn pkt6(flags: u8, saddr: [u8; 16], sport: u16, daddr: [u8; 16], dport: u16) -> Event {
    let ack = if flags & ACK != 0 { ACK_SEQ } else { 0 };
    packet_ev(family::V6, flags, saddr, sport, daddr, dport, SEQ, ack, 0)
}

/// The record an ICMP error should produce: the quoted tuple and seq, flags/ack/payload 0.
#[allow(clippy::too_many_arguments)]
fn icmp_ev(
    fam: u8,
    ty: u8,
    code: u8,
    outer_src: [u8; 16],
    outer_dst: [u8; 16],
    saddr: [u8; 16],
    sport: u16,
    daddr: [u8; 16],
    dport: u16,
    seq: u32,
) -> Event {
    let mut e = Event::zeroed();
    e.kind = kind::ICMP;
    e.family = fam;
    e.saddr = saddr;
    e.daddr = daddr;
    e.sport = sport;
    e.dport = dport;
    e.seq = seq;
    e.outer_src = outer_src;
    e.outer_dst = outer_dst;
    e.icmp_type = ty;
    e.icmp_code = code;
    e
}

fn stats(f: impl FnOnce(&mut EndpointStats)) -> EndpointStats {
    let mut s = EndpointStats::default();
    f(&mut s);
    s
}

/// What one run of one frame should do.
#[derive(Clone, Debug)]
enum Want {
    /// No record, no parse error.
    Nothing,
    /// No record, `PARSE_ERRORS` + 1.
    ParseError,
    /// One `EVENTS` record; endpoint `id` gets `delta`.
    Packet(Event, u32, EndpointStats),
    /// One `PRIORITY_EVENTS` record; endpoint `id` gets `delta` (icmp + 1).
    Icmp(Event, u32),
}

// ------------------------------------------------------------------------------------------------
// Harness.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prog {
    TcIngress,
    TcEgress,
    Xdp,
}

const PROGS: [Prog; 3] = [Prog::TcIngress, Prog::TcEgress, Prog::Xdp];

impl Prog {
    fn name(self) -> &'static str {
        match self {
            Self::TcIngress => names::PROG_TC_INGRESS,
            Self::TcEgress => names::PROG_TC_EGRESS,
            Self::Xdp => names::PROG_XDP_INGRESS,
        }
    }

    fn hook(self) -> u8 {
        match self {
            Self::TcIngress => hook::TC_INGRESS,
            Self::TcEgress => hook::TC_EGRESS,
            Self::Xdp => hook::XDP_INGRESS,
        }
    }

    fn pass(self) -> u32 {
        match self {
            Self::TcIngress | Self::TcEgress => TC_PASS,
            Self::Xdp => XDP_PASS,
        }
    }
}

/// The ifindex test runs report: loopback's, in the current network namespace.
fn lo_ifindex() -> u32 {
    static CACHE: AtomicU32 = AtomicU32::new(0);
    let cached = CACHE.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    let idx = std::fs::read_to_string("/sys/class/net/lo/ifindex")
        .expect("reading /sys/class/net/lo/ifindex")
        .trim()
        .parse()
        .expect("parsing lo's ifindex");
    CACHE.store(idx, Ordering::Relaxed);
    idx
}

const COUNTER_NAMES: [&str; counter::COUNT as usize] = [
    "EVENTS_EMITTED",
    "EVENTS_LOST",
    "PRIORITY_EMITTED",
    "PRIORITY_LOST",
    "PACKETS",
    "PARSE_ERRORS",
    "DATA_DROPS",
    "DROPS_OTHER_NETNS",
    "DROPS_NOISE",
];

type Counters = [u64; counter::COUNT as usize];

fn named(c: &Counters) -> BTreeMap<&'static str, u64> {
    COUNTER_NAMES
        .iter()
        .copied()
        .zip(c.iter().copied())
        .collect()
}

fn delta(after: &Counters, before: &Counters) -> Counters {
    let mut d = [0; counter::COUNT as usize];
    for (i, slot) in d.iter_mut().enumerate() {
        *slot = after[i] - before[i];
    }
    d
}

fn stats_delta(after: EndpointStats, before: EndpointStats) -> EndpointStats {
    EndpointStats {
        syn: after.syn - before.syn,
        syn_ack: after.syn_ack - before.syn_ack,
        rst: after.rst - before.rst,
        fin: after.fin - before.fin,
        icmp: after.icmp - before.icmp,
        drops: after.drops - before.drops,
    }
}

struct Harness {
    ebpf: Ebpf,
    layout: RingLayout,
    events: CpuRings,
    wakeup: RingBuf<MapData>,
    priority: RingBuf<MapData>,
    ids: Vec<u32>,
}

impl Harness {
    fn new(endpoints: &[(EndpointKey, u32)], wildcard: bool) -> Self {
        Self::with_rings(endpoints, wildcard, 256 << 10, 256 << 10)
    }

    fn standard() -> Self {
        Self::new(&standard_endpoints(), false)
    }

    fn with_rings(
        endpoints: &[(EndpointKey, u32)],
        wildcard: bool,
        events_bytes: u64,
        priority_bytes: u32,
    ) -> Self {
        let has_wildcard = u8::from(wildcard);
        let layout = RingLayout::new(events_bytes, priority_bytes).expect("ring layout");
        let mut loader = EbpfLoader::new();
        loader.override_global(names::GLOBAL_HAS_WILDCARD, &has_wildcard, true);
        layout.apply(&mut loader).expect("ring layout");
        let mut ebpf = loader
            .load(lbtrace::kernel::EBPF_OBJECT)
            .expect("loading the eBPF object (are you root?)");
        for name in [names::PROG_TC_INGRESS, names::PROG_TC_EGRESS] {
            let p: &mut SchedClassifier = ebpf
                .program_mut(name)
                .unwrap_or_else(|| panic!("no program {name}"))
                .try_into()
                .unwrap();
            p.load().unwrap_or_else(|e| panic!("loading {name}: {e:?}"));
        }
        let p: &mut Xdp = ebpf
            .program_mut(names::PROG_XDP_INGRESS)
            .expect("no xdp program")
            .try_into()
            .unwrap();
        p.load()
            .unwrap_or_else(|e| panic!("loading {}: {e:?}", names::PROG_XDP_INGRESS));

        lbtrace::kernel::tracer::fill_endpoints(&mut ebpf, endpoints)
            .expect("filling ENDPOINTS and PORTS");
        let events = CpuRings::take(&mut ebpf, &layout).expect("mapping the per-CPU rings");
        let wakeup =
            RingBuf::try_from(ebpf.take_map(names::RING_WAKEUP).expect("no RING_WAKEUP")).unwrap();
        let priority = RingBuf::try_from(
            ebpf.take_map(names::PRIORITY_EVENTS)
                .expect("no PRIORITY_EVENTS"),
        )
        .unwrap();
        let mut ids: Vec<u32> = endpoints.iter().map(|(_, id)| *id).collect();
        ids.sort_unstable();
        ids.dedup();
        Self {
            ebpf,
            layout,
            events,
            wakeup,
            priority,
            ids,
        }
    }

    /// Runs `frame` once through `prog`; checks the frame comes back unmodified and returns the
    /// verdict, or the syscall's error.
    fn try_run(&self, prog: Prog, frame: &[u8]) -> Result<u32, ProgramError> {
        self.try_run_repeat(prog, frame, 1)
    }

    fn try_run_repeat(&self, prog: Prog, frame: &[u8], repeat: u32) -> Result<u32, ProgramError> {
        let mut out = vec![0xa5u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::new()
        };
        let program = self.ebpf.program(prog.name()).unwrap();
        let res = match prog {
            Prog::TcIngress | Prog::TcEgress => {
                let p: &SchedClassifier = program.try_into().unwrap();
                p.test_run(opts)?
            }
            Prog::Xdp => {
                let p: &Xdp = program.try_into().unwrap();
                p.test_run(opts)?
            }
        };
        let n = res.data_size_out as usize;
        assert_eq!(
            n,
            frame.len(),
            "{prog:?}: data_size_out for a {}-byte frame",
            frame.len()
        );
        assert_eq!(&out[..n], frame, "{prog:?} modified the frame");
        Ok(res.return_value)
    }

    /// Runs `frame` through `prog` and asserts the pass verdict.
    fn run(&self, prog: Prog, frame: &[u8]) {
        let ret = self
            .try_run(prog, frame)
            .unwrap_or_else(|e| panic!("{prog:?}: test run failed: {e:?}"));
        assert_eq!(
            ret,
            prog.pass(),
            "{prog:?}: verdict {ret:#x} for frame {frame:02x?}"
        );
    }

    fn counters(&self) -> Counters {
        let map: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(names::COUNTERS).unwrap()).unwrap();
        let mut c = [0; counter::COUNT as usize];
        for (i, slot) in c.iter_mut().enumerate() {
            *slot = map.get(&u32::try_from(i).unwrap(), 0).unwrap().iter().sum();
        }
        c
    }

    fn endpoint_stats(&self, id: u32) -> EndpointStats {
        let map: PerCpuArray<_, EndpointStats> =
            PerCpuArray::try_from(self.ebpf.map(names::ENDPOINT_STATS).unwrap()).unwrap();
        map.get(&id, 0)
            .unwrap()
            .iter()
            .fold(EndpointStats::default(), |acc, s| EndpointStats {
                syn: acc.syn + s.syn,
                syn_ack: acc.syn_ack + s.syn_ack,
                rst: acc.rst + s.rst,
                fin: acc.fin + s.fin,
                icmp: acc.icmp + s.icmp,
                drops: acc.drops + s.drops,
            })
    }

    fn all_stats(&self) -> BTreeMap<u32, EndpointStats> {
        self.ids
            .iter()
            .map(|&id| (id, self.endpoint_stats(id)))
            .collect()
    }

    fn record(item: &[u8]) -> Event {
        assert_eq!(
            item.len(),
            EVENT_SIZE,
            "ring record of {} bytes",
            item.len()
        );
        // SAFETY: the length is checked; Event is plain old data.
        unsafe { read_unaligned(item.as_ptr().cast::<Event>()) }
    }

    /// Packet events of every CPU's ring, CPU by CPU.
    fn drain_events(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        self.events.drain(|item| out.push(Self::record(item)));
        out
    }

    fn drain_priority(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(item) = self.priority.next() {
            out.push(Self::record(&item));
        }
        out
    }

    /// The CPU numbers of the wake-up records written since the last call.
    fn drain_wakeups(&mut self) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some(item) = self.wakeup.next() {
            assert_eq!(item.len(), 8, "wake-up record of {} bytes", item.len());
            out.push(u64::from_ne_bytes(item[..8].try_into().unwrap()));
        }
        out
    }

    /// Runs `frame` through all three programs, one at a time, and checks verdict, frame, records,
    /// counters and endpoint stats after each run.
    fn check(&mut self, what: &str, frame: &[u8], want: &Want) {
        for prog in PROGS {
            self.check_one(what, prog, frame, want);
        }
    }

    fn check_one(&mut self, what: &str, prog: Prog, frame: &[u8], want: &Want) {
        let ctx = format!("{what} via {prog:?} ({} bytes)", frame.len());
        // Nothing may be left over from earlier runs.
        assert_eq!(self.drain_events(), vec![], "{ctx}: stale EVENTS records");
        assert_eq!(
            self.drain_priority(),
            vec![],
            "{ctx}: stale PRIORITY_EVENTS records"
        );
        let c0 = self.counters();
        let s0 = self.all_stats();

        if kernel_refuses(prog, frame) {
            let err = self
                .try_run(prog, frame)
                .expect_err(&format!("{ctx}: the kernel ran a frame it should refuse"));
            assert!(is_einval(&err), "{ctx}: {err:?}");
            assert_eq!(
                named(&self.counters()),
                named(&c0),
                "{ctx}: counters moved without a run"
            );
            assert_eq!(
                self.all_stats(),
                s0,
                "{ctx}: ENDPOINT_STATS moved without a run"
            );
            assert_eq!(
                self.drain_events(),
                vec![],
                "{ctx}: EVENTS records without a run"
            );
            assert_eq!(
                self.drain_priority(),
                vec![],
                "{ctx}: PRIORITY_EVENTS records without a run"
            );
            return;
        }
        self.run(prog, frame);

        let events = self.drain_events();
        let priority = self.drain_priority();
        let dc = delta(&self.counters(), &c0);
        let s1 = self.all_stats();

        let mut want_c: Counters = [0; counter::COUNT as usize];
        want_c[counter::PACKETS as usize] = 1;
        let mut want_s: BTreeMap<u32, EndpointStats> = self
            .ids
            .iter()
            .map(|&id| (id, EndpointStats::default()))
            .collect();
        let (want_events, want_priority) = match want {
            Want::Nothing => (vec![], vec![]),
            Want::ParseError => {
                want_c[counter::PARSE_ERRORS as usize] = 1;
                (vec![], vec![])
            }
            Want::Packet(ev, id, sd) => {
                want_c[counter::EVENTS_EMITTED as usize] = 1;
                want_s.insert(*id, *sd);
                (vec![*ev], vec![])
            }
            Want::Icmp(ev, id) => {
                want_c[counter::PRIORITY_EMITTED as usize] = 1;
                want_s.insert(*id, stats(|s| s.icmp = 1));
                (vec![], vec![*ev])
            }
        };
        assert_eq!(named(&dc), named(&want_c), "{ctx}: counter deltas");
        let got_s: BTreeMap<u32, EndpointStats> = s1
            .iter()
            .map(|(&id, &s)| (id, stats_delta(s, s0[&id])))
            .collect();
        assert_eq!(got_s, want_s, "{ctx}: ENDPOINT_STATS deltas");
        assert_eq!(
            normalize(&ctx, prog, &events),
            with_hook(&want_events, prog),
            "{ctx}: EVENTS records"
        );
        assert_eq!(
            normalize(&ctx, prog, &priority),
            with_hook(&want_priority, prog),
            "{ctx}: PRIORITY_EVENTS records"
        );
    }
}

/// Checks `ts_ns` (nonzero) and `ifindex` (loopback's under test runs), then zeroes `ts_ns` so the
/// rest can be compared whole.
fn normalize(ctx: &str, prog: Prog, events: &[Event]) -> Vec<Event> {
    events
        .iter()
        .map(|e| {
            assert_ne!(e.ts_ns, 0, "{ctx}: ts_ns is zero in {e:?}");
            assert_eq!(
                e.ifindex,
                lo_ifindex(),
                "{ctx}: ifindex ({prog:?} test runs use lo)"
            );
            Event { ts_ns: 0, ..*e }
        })
        .collect()
}

fn with_hook(events: &[Event], prog: Prog) -> Vec<Event> {
    events
        .iter()
        .map(|e| Event {
            hook: prog.hook(),
            ifindex: lo_ifindex(),
            ..*e
        })
        .collect()
}

/// Whether `BPF_PROG_TEST_RUN` refuses `frame` for `prog` with `EINVAL` before running it (see the
/// module docs): shorter than an Ethernet header, or, for skb programs, an outer EtherType of
/// IPv4 / IPv6 without room for the fixed IP header.
fn kernel_refuses(prog: Prog, frame: &[u8]) -> bool {
    if frame.len() < ETH_HLEN {
        return true;
    }
    if prog == Prog::Xdp {
        return false;
    }
    match u16::from_be_bytes([frame[12], frame[13]]) {
        ETH_P_IP => frame.len() < ETH_HLEN + 20,
        ETH_P_IPV6 => frame.len() < ETH_HLEN + 40,
        _ => false,
    }
}

/// EINVAL, the same on every Linux architecture.
const EINVAL: i32 = 22;

fn is_einval(e: &ProgramError) -> bool {
    matches!(e, ProgramError::SyscallError(s) if s.io_error.raw_os_error() == Some(EINVAL))
}

// ------------------------------------------------------------------------------------------------
// TCP control packets of watched tuples.

#[test]
fn syn_to_vip_v4() {
    let mut h = Harness::standard();
    // A SYN as Linux sends it: 20 bytes of options, so the data offset is 10 words.
    let syn = tcp_full(40000, VIP_PORT, 0xdead_beef, 0, SYN, &SYN_OPTIONS, &[]);
    let frame = eth(ETH_P_IP, &ipv4(CLIENT4, VIP4, PROTO_TCP, &syn));
    let ev = packet_ev(
        family::V4,
        SYN,
        addr4(CLIENT4),
        40000,
        addr4(VIP4),
        VIP_PORT,
        0xdead_beef,
        0,
        0,
    );
    h.check(
        "SYN to VIP",
        &frame,
        &Want::Packet(ev, ID_VIP4, stats(|s| s.syn = 1)),
    );
}

#[test]
fn syn_in_padded_minimum_frame() {
    // Ethernet padding after the IP packet is not TCP payload: the IP total length says so.
    let mut h = Harness::standard();
    let frame = padded(tcp4_frame(CLIENT4, 40000, VIP4, VIP_PORT, SYN));
    assert_eq!(frame.len(), 60);
    let ev = pkt4(SYN, CLIENT4, 40000, VIP4, VIP_PORT);
    h.check(
        "padded SYN",
        &frame,
        &Want::Packet(ev, ID_VIP4, stats(|s| s.syn = 1)),
    );
}

#[test]
fn syn_from_lb_to_backend() {
    let mut h = Harness::standard();
    let frame = tcp4_frame(LB4, 40001, BACKEND4, BACKEND_PORT, SYN);
    let ev = pkt4(SYN, LB4, 40001, BACKEND4, BACKEND_PORT);
    h.check(
        "SYN LB->backend",
        &frame,
        &Want::Packet(ev, ID_BACKEND4, stats(|s| s.syn = 1)),
    );
}

#[test]
fn syn_ack_from_backend() {
    // Matched on the source: the backend's reply.
    let mut h = Harness::standard();
    let frame = tcp4_frame(BACKEND4, BACKEND_PORT, LB4, 40001, SYN | ACK);
    let ev = pkt4(SYN | ACK, BACKEND4, BACKEND_PORT, LB4, 40001);
    h.check(
        "SYN-ACK backend->LB",
        &frame,
        &Want::Packet(ev, ID_BACKEND4, stats(|s| s.syn_ack = 1)),
    );
}

#[test]
fn rst() {
    let mut h = Harness::standard();
    let frame = tcp4_frame(CLIENT4, 40000, VIP4, VIP_PORT, RST);
    let ev = pkt4(RST, CLIENT4, 40000, VIP4, VIP_PORT);
    h.check(
        "RST client->VIP",
        &frame,
        &Want::Packet(ev, ID_VIP4, stats(|s| s.rst = 1)),
    );
}

#[test]
fn rst_ack() {
    let mut h = Harness::standard();
    let frame = tcp4_frame(BACKEND4, BACKEND_PORT, LB4, 40001, RST | ACK);
    let ev = pkt4(RST | ACK, BACKEND4, BACKEND_PORT, LB4, 40001);
    h.check(
        "RST-ACK backend->LB",
        &frame,
        &Want::Packet(ev, ID_BACKEND4, stats(|s| s.rst = 1)),
    );
}

#[test]
fn fin_ack() {
    let mut h = Harness::standard();
    let frame = tcp4_frame(VIP4, VIP_PORT, CLIENT4, 40000, FIN | ACK);
    let ev = pkt4(FIN | ACK, VIP4, VIP_PORT, CLIENT4, 40000);
    h.check(
        "FIN-ACK VIP->client",
        &frame,
        &Want::Packet(ev, ID_VIP4, stats(|s| s.fin = 1)),
    );
}

#[test]
fn fin_psh_ack_with_payload() {
    let mut h = Harness::standard();
    let payload: Vec<u8> = (0..=99u8).collect();
    // Timestamps make the data offset 8 words: payload_len must use it.
    let seg = tcp_full(
        40000,
        VIP_PORT,
        1000,
        2000,
        FIN | PSH | ACK,
        &TS_OPTIONS,
        &payload,
    );
    let frame = eth(ETH_P_IP, &ipv4(CLIENT4, VIP4, PROTO_TCP, &seg));
    let ev = packet_ev(
        family::V4,
        FIN | PSH | ACK,
        addr4(CLIENT4),
        40000,
        addr4(VIP4),
        VIP_PORT,
        1000,
        2000,
        100,
    );
    h.check(
        "FIN+PSH+ACK with 100 bytes",
        &frame,
        &Want::Packet(ev, ID_VIP4, stats(|s| s.fin = 1)),
    );

    // The same over IPv6.
    let frame = eth(ETH_P_IPV6, &ipv6(CLIENT6, VIP6, PROTO_TCP, &seg));
    let ev = packet_ev(
        family::V6,
        FIN | PSH | ACK,
        CLIENT6,
        40000,
        VIP6,
        VIP_PORT,
        1000,
        2000,
        100,
    );
    h.check(
        "IPv6 FIN+PSH+ACK with 100 bytes",
        &frame,
        &Want::Packet(ev, ID_VIP6, stats(|s| s.fin = 1)),
    );
}

#[test]
fn syn_with_data() {
    // TCP Fast Open: a SYN carrying data.
    let mut h = Harness::standard();
    let seg = tcp_full(
        40000,
        VIP_PORT,
        SEQ,
        0,
        SYN,
        &SYN_OPTIONS,
        b"GET / HTTP/1.1\r\n",
    );
    let frame = eth(ETH_P_IP, &ipv4(CLIENT4, VIP4, PROTO_TCP, &seg));
    let ev = packet_ev(
        family::V4,
        SYN,
        addr4(CLIENT4),
        40000,
        addr4(VIP4),
        VIP_PORT,
        SEQ,
        0,
        16,
    );
    h.check(
        "SYN with data",
        &frame,
        &Want::Packet(ev, ID_VIP4, stats(|s| s.syn = 1)),
    );
}

#[test]
fn all_flags_set() {
    // SYN|ACK|RST|FIN|PSH|URG|ECE|CWR: every stat the flags imply is counted once.
    let mut h = Harness::standard();
    let frame = tcp4_frame(CLIENT4, 40000, VIP4, VIP_PORT, 0xff);
    let ev = pkt4(0xff, CLIENT4, 40000, VIP4, VIP_PORT);
    let sd = stats(|s| {
        s.syn_ack = 1;
        s.rst = 1;
        s.fin = 1;
    });
    h.check("christmas tree", &frame, &Want::Packet(ev, ID_VIP4, sd));
}

#[test]
fn destination_endpoint_wins_over_source() {
    // Both ends watched: the packet is counted for the destination's endpoint.
    let mut h = Harness::standard();
    let frame = tcp4_frame(VIP4, VIP_PORT, BACKEND4, BACKEND_PORT, SYN);
    let ev = pkt4(SYN, VIP4, VIP_PORT, BACKEND4, BACKEND_PORT);
    h.check(
        "SYN VIP->backend",
        &frame,
        &Want::Packet(ev, ID_BACKEND4, stats(|s| s.syn = 1)),
    );
}

#[test]
fn ipv4_total_length_shorter_than_headers() {
    // A lying total length cannot make payload_len wrap: it saturates at 0.
    let mut h = Harness::standard();
    let seg = tcp_full(40000, VIP_PORT, SEQ, 0, SYN, &SYN_OPTIONS, &[]);
    for tot in [0u16, 19, 20, 40, 59] {
        let frame = eth(
            ETH_P_IP,
            &ipv4_full(CLIENT4, VIP4, PROTO_TCP, &[], IP_DF, Some(tot), &seg),
        );
        let ev = pkt4(SYN, CLIENT4, 40000, VIP4, VIP_PORT);
        h.check(
            &format!("SYN with tot_len {tot}"),
            &frame,
            &Want::Packet(ev, ID_VIP4, stats(|s| s.syn = 1)),
        );
    }
}

#[test]
fn first_fragment_is_parsed() {
    // MF set, offset 0: the first fragment holds the TCP header.
    let mut h = Harness::standard();
    let seg = tcp_full(40000, VIP_PORT, SEQ, 0, SYN, &[], &[0u8; 64]);
    let frame = eth(
        ETH_P_IP,
        &ipv4_full(CLIENT4, VIP4, PROTO_TCP, &[], IP_MF, None, &seg),
    );
    let ev = packet_ev(
        family::V4,
        SYN,
        addr4(CLIENT4),
        40000,
        addr4(VIP4),
        VIP_PORT,
        SEQ,
        0,
        64,
    );
    h.check(
        "first fragment SYN",
        &frame,
        &Want::Packet(ev, ID_VIP4, stats(|s| s.syn = 1)),
    );
}

// ------------------------------------------------------------------------------------------------
// IPv6, VLANs, IPv4 options.

#[test]
fn ipv6_syn() {
    let mut h = Harness::standard();
    let frame = tcp6_frame(CLIENT6, 40000, VIP6, VIP_PORT, SYN);
    let ev = pkt6(SYN, CLIENT6, 40000, VIP6, VIP_PORT);
    h.check(
        "IPv6 SYN",
        &frame,
        &Want::Packet(ev, ID_VIP6, stats(|s| s.syn = 1)),
    );

    let frame = tcp6_frame(BACKEND6, BACKEND_PORT, LB6, 40001, SYN | ACK);
    let ev = pkt6(SYN | ACK, BACKEND6, BACKEND_PORT, LB6, 40001);
    h.check(
        "IPv6 SYN-ACK",
        &frame,
        &Want::Packet(ev, ID_BACKEND6, stats(|s| s.syn_ack = 1)),
    );

    let frame = tcp6_frame(LB6, 40001, BACKEND6, BACKEND_PORT, RST | ACK);
    let ev = pkt6(RST | ACK, LB6, 40001, BACKEND6, BACKEND_PORT);
    h.check(
        "IPv6 RST-ACK",
        &frame,
        &Want::Packet(ev, ID_BACKEND6, stats(|s| s.rst = 1)),
    );
}

#[test]
fn ipv6_family_is_part_of_the_key() {
    // An IPv6 packet whose addresses start with a watched IPv4 address does not match it, nor does
    // an IPv4 packet to the first 4 bytes of a watched IPv6 address.
    let mut h = Harness::standard();
    let frame = tcp6_frame(CLIENT6, 40000, addr4(VIP4), VIP_PORT, SYN);
    h.check("IPv6 SYN to v4-looking address", &frame, &Want::Nothing);
    let vip6_head: [u8; 4] = VIP6[..4].try_into().unwrap();
    let frame = tcp4_frame(CLIENT4, 40000, vip6_head, VIP_PORT, SYN);
    h.check("IPv4 SYN to v6 prefix", &frame, &Want::Nothing);
}

#[test]
fn ipv6_extension_headers_are_not_followed() {
    // Documented limitation: TCP must follow the fixed header. A hop-by-hop header in front of the
    // SYN hides it (no record, not a parse error either).
    let mut h = Harness::standard();
    let mut l4 = vec![PROTO_TCP, 0, 1, 4, 0, 0, 0, 0]; // Hop-by-Hop: next TCP, PadN
    l4.extend_from_slice(&tcp(40000, VIP_PORT, SYN));
    let frame = eth(ETH_P_IPV6, &ipv6(CLIENT6, VIP6, PROTO_HOPOPTS, &l4));
    h.check("IPv6 SYN behind hop-by-hop", &frame, &Want::Nothing);
}

#[test]
fn one_vlan_tag() {
    let mut h = Harness::standard();
    let l3 = ipv4(CLIENT4, VIP4, PROTO_TCP, &tcp(40000, VIP_PORT, SYN));
    let frame = eth_vlan(&[(ETH_P_8021Q, 100)], ETH_P_IP, &l3);
    let ev = pkt4(SYN, CLIENT4, 40000, VIP4, VIP_PORT);
    h.check(
        "802.1Q IPv4 SYN",
        &frame,
        &Want::Packet(ev, ID_VIP4, stats(|s| s.syn = 1)),
    );

    let l3 = ipv6(CLIENT6, VIP6, PROTO_TCP, &tcp(40000, VIP_PORT, SYN));
    let frame = eth_vlan(&[(ETH_P_8021Q, 0x2064)], ETH_P_IPV6, &l3);
    let ev = pkt6(SYN, CLIENT6, 40000, VIP6, VIP_PORT);
    h.check(
        "802.1Q IPv6 SYN",
        &frame,
        &Want::Packet(ev, ID_VIP6, stats(|s| s.syn = 1)),
    );

    // A lone 802.1ad tag is accepted too.
    let l3 = ipv4(
        BACKEND4,
        LB4,
        PROTO_TCP,
        &tcp(BACKEND_PORT, 40001, FIN | ACK),
    );
    let frame = eth_vlan(&[(ETH_P_8021AD, 7)], ETH_P_IP, &l3);
    let ev = pkt4(FIN | ACK, BACKEND4, BACKEND_PORT, LB4, 40001);
    h.check(
        "802.1ad IPv4 FIN-ACK",
        &frame,
        &Want::Packet(ev, ID_BACKEND4, stats(|s| s.fin = 1)),
    );
}

#[test]
fn two_vlan_tags() {
    let mut h = Harness::standard();
    let l3 = ipv4(CLIENT4, VIP4, PROTO_TCP, &tcp(40000, VIP_PORT, SYN));
    let frame = eth_vlan(&[(ETH_P_8021AD, 10), (ETH_P_8021Q, 200)], ETH_P_IP, &l3);
    let ev = pkt4(SYN, CLIENT4, 40000, VIP4, VIP_PORT);
    h.check(
        "QinQ (88a8, 8100) IPv4 SYN",
        &frame,
        &Want::Packet(ev, ID_VIP4, stats(|s| s.syn = 1)),
    );

    let l3 = ipv6(
        BACKEND6,
        LB6,
        PROTO_TCP,
        &tcp(BACKEND_PORT, 40001, SYN | ACK),
    );
    let frame = eth_vlan(&[(ETH_P_8021AD, 10), (ETH_P_8021Q, 200)], ETH_P_IPV6, &l3);
    let ev = pkt6(SYN | ACK, BACKEND6, BACKEND_PORT, LB6, 40001);
    h.check(
        "QinQ (88a8, 8100) IPv6 SYN-ACK",
        &frame,
        &Want::Packet(ev, ID_BACKEND6, stats(|s| s.syn_ack = 1)),
    );

    // Old-style double 802.1Q.
    let l3 = ipv4(CLIENT4, VIP4, PROTO_TCP, &tcp(40000, VIP_PORT, RST));
    let frame = eth_vlan(&[(ETH_P_8021Q, 10), (ETH_P_8021Q, 200)], ETH_P_IP, &l3);
    let ev = pkt4(RST, CLIENT4, 40000, VIP4, VIP_PORT);
    h.check(
        "(8100, 8100) IPv4 RST",
        &frame,
        &Want::Packet(ev, ID_VIP4, stats(|s| s.rst = 1)),
    );
}

#[test]
fn three_vlan_tags_are_not_followed() {
    // Documented limitation: two tags at most; behind a third the EtherType is 0x8100, not IP.
    let mut h = Harness::standard();
    let l3 = ipv4(CLIENT4, VIP4, PROTO_TCP, &tcp(40000, VIP_PORT, SYN));
    let frame = eth_vlan(
        &[(ETH_P_8021AD, 1), (ETH_P_8021Q, 2), (ETH_P_8021Q, 3)],
        ETH_P_IP,
        &l3,
    );
    h.check("three tags", &frame, &Want::Nothing);
}

#[test]
fn ipv4_with_options() {
    let mut h = Harness::standard();
    for ihl in 6..=15usize {
        let opts = ipv4_options((ihl - 5) * 4);
        let seg = tcp_full(40000 + ihl as u16, VIP_PORT, SEQ, 0, SYN, &[], b"xy");
        let frame = eth(
            ETH_P_IP,
            &ipv4_full(CLIENT4, VIP4, PROTO_TCP, &opts, IP_DF, None, &seg),
        );
        assert_eq!(frame[ETH_HLEN] & 0x0f, ihl as u8);
        let ev = packet_ev(
            family::V4,
            SYN,
            addr4(CLIENT4),
            40000 + ihl as u16,
            addr4(VIP4),
            VIP_PORT,
            SEQ,
            0,
            2,
        );
        h.check(
            &format!("SYN with IHL {ihl}"),
            &frame,
            &Want::Packet(ev, ID_VIP4, stats(|s| s.syn = 1)),
        );

        // And behind two VLAN tags.
        let frame = eth_vlan(
            &[(ETH_P_8021AD, 1), (ETH_P_8021Q, 2)],
            ETH_P_IP,
            &ipv4_full(
                BACKEND4,
                LB4,
                PROTO_TCP,
                &opts,
                IP_DF,
                None,
                &tcp(BACKEND_PORT, 40001, SYN | ACK),
            ),
        );
        let ev = pkt4(SYN | ACK, BACKEND4, BACKEND_PORT, LB4, 40001);
        h.check(
            &format!("QinQ SYN-ACK with IHL {ihl}"),
            &frame,
            &Want::Packet(ev, ID_BACKEND4, stats(|s| s.syn_ack = 1)),
        );
    }
}

// ------------------------------------------------------------------------------------------------
// Packets that must produce nothing.

#[test]
fn pure_ack_and_data_give_no_record() {
    let mut h = Harness::standard();
    h.check(
        "pure ACK",
        &tcp4_frame(CLIENT4, 40000, VIP4, VIP_PORT, ACK),
        &Want::Nothing,
    );
    let seg = tcp_full(
        40000,
        VIP_PORT,
        SEQ,
        ACK_SEQ,
        PSH | ACK,
        &TS_OPTIONS,
        &[0x55; 500],
    );
    h.check(
        "data",
        &eth(ETH_P_IP, &ipv4(CLIENT4, VIP4, PROTO_TCP, &seg)),
        &Want::Nothing,
    );
    h.check(
        "no flags",
        &tcp4_frame(BACKEND4, BACKEND_PORT, LB4, 40001, 0),
        &Want::Nothing,
    );
    h.check(
        "URG|ECE|CWR|PSH|ACK",
        &tcp4_frame(CLIENT4, 40000, VIP4, VIP_PORT, 0xf8),
        &Want::Nothing,
    );
    h.check(
        "IPv6 pure ACK",
        &tcp6_frame(CLIENT6, 40000, VIP6, VIP_PORT, ACK),
        &Want::Nothing,
    );
    let frame = eth(
        ETH_P_IPV6,
        &ipv6(
            BACKEND6,
            LB6,
            PROTO_TCP,
            &tcp_full(BACKEND_PORT, 40001, 1, 2, PSH | ACK, &[], &[1; 1000]),
        ),
    );
    h.check("IPv6 data", &frame, &Want::Nothing);
}

#[test]
fn udp_gives_no_record() {
    let mut h = Harness::standard();
    let frame = eth(
        ETH_P_IP,
        &ipv4(CLIENT4, VIP4, PROTO_UDP, &udp(40000, VIP_PORT, b"quic")),
    );
    h.check("UDP to VIP:443", &frame, &Want::Nothing);
    // UDP bytes that would read as a SYN if mistaken for TCP.
    let mut fake = tcp(40000, VIP_PORT, SYN);
    fake[4..6].copy_from_slice(&20u16.to_be_bytes());
    let frame = eth(ETH_P_IP, &ipv4(CLIENT4, VIP4, PROTO_UDP, &fake));
    h.check("UDP shaped like a SYN", &frame, &Want::Nothing);
    let frame = eth(ETH_P_IPV6, &ipv6(CLIENT6, VIP6, PROTO_UDP, &fake));
    h.check("IPv6 UDP shaped like a SYN", &frame, &Want::Nothing);
    // A truncated UDP header is not a parse error: UDP is never parsed.
    let frame = eth(ETH_P_IP, &ipv4(CLIENT4, VIP4, PROTO_UDP, &[0x9c]));
    h.check("1-byte UDP", &frame, &Want::Nothing);
}

#[test]
fn non_ip_gives_no_record() {
    let mut h = Harness::standard();
    // ARP request who-has 10.0.0.10 tell 192.0.2.7.
    let mut arp = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1];
    arp.extend_from_slice(&SRC_MAC);
    arp.extend_from_slice(&CLIENT4);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&VIP4);
    h.check("ARP", &padded(eth(ETH_P_ARP, &arp)), &Want::Nothing);
    h.check(
        "ARP in a VLAN",
        &eth_vlan(&[(ETH_P_8021Q, 5)], ETH_P_ARP, &arp),
        &Want::Nothing,
    );
    h.check(
        "LLDP",
        &padded(eth(ETH_P_LLDP, &[2, 7, 4, 0, 0, 0, 0, 0, 1])),
        &Want::Nothing,
    );
    // An 802.3 length field where the EtherType would be, followed by IPv4 SYN bytes.
    let l3 = ipv4(CLIENT4, VIP4, PROTO_TCP, &tcp(40000, VIP_PORT, SYN));
    h.check(
        "802.3 length frame",
        &eth(u16::try_from(l3.len()).unwrap(), &l3),
        &Want::Nothing,
    );
    // Exactly an Ethernet header, nothing else.
    h.check(
        "bare Ethernet header (ARP)",
        &eth(ETH_P_ARP, &[]),
        &Want::Nothing,
    );
}

#[test]
fn non_first_fragment_gives_no_record() {
    let mut h = Harness::standard();
    // Bytes that would read as a SYN to the VIP, but at fragment offset 185 (1480 bytes).
    let seg = tcp(40000, VIP_PORT, SYN);
    for frag in [185u16, IP_MF | 185, 1, 0x1fff] {
        let frame = eth(
            ETH_P_IP,
            &ipv4_full(CLIENT4, VIP4, PROTO_TCP, &[], frag, None, &seg),
        );
        h.check(
            &format!("fragment field {frag:#06x}"),
            &frame,
            &Want::Nothing,
        );
    }
    // A later fragment too short to hold a TCP header is not a parse error either.
    let frame = eth(
        ETH_P_IP,
        &ipv4_full(CLIENT4, VIP4, PROTO_TCP, &[], 185, None, &[1, 2, 3]),
    );
    h.check("short later fragment", &frame, &Want::Nothing);
}

#[test]
fn unwatched_tuples_give_no_record() {
    let mut h = Harness::standard();
    h.check(
        "SYN to unwatched address",
        &tcp4_frame(CLIENT4, 40000, UNWATCHED4, VIP_PORT, SYN),
        &Want::Nothing,
    );
    h.check(
        "SYN to VIP, other port",
        &tcp4_frame(CLIENT4, 40000, VIP4, VIP_PORT + 1, SYN),
        &Want::Nothing,
    );
    h.check(
        "SYN-ACK from backend, other port",
        &tcp4_frame(BACKEND4, 9090, LB4, 40001, SYN | ACK),
        &Want::Nothing,
    );
    h.check(
        "RST between unwatched",
        &tcp4_frame(CLIENT4, 40000, UNWATCHED4, 80, RST),
        &Want::Nothing,
    );
    // Port 443 from the client side is not the VIP's port 443.
    h.check(
        "SYN from client port 443",
        &tcp4_frame(CLIENT4, VIP_PORT, UNWATCHED4, 40000, SYN),
        &Want::Nothing,
    );
    h.check(
        "IPv6 SYN unwatched",
        &tcp6_frame(CLIENT6, 40000, ROUTER6, VIP_PORT, SYN),
        &Want::Nothing,
    );
}

// ------------------------------------------------------------------------------------------------
// Many endpoints on one port: the per-port slot holds PORT_SLOT_ENTRIES, more go to the hash map.

/// Backends 10.1.0.1.. on one port, IPv4 and IPv6 mixed in the same slot.
fn backends_on_one_port(n: usize) -> Vec<(EndpointKey, u32)> {
    (0..n)
        .map(|i| {
            let b = u8::try_from(i + 1).unwrap();
            let id = u32::try_from(i).unwrap();
            if i % 2 == 0 {
                (key4([10, 1, 0, b], BACKEND_PORT), id)
            } else {
                let mut a = BACKEND6;
                a[15] = b;
                (key6(a, BACKEND_PORT), id)
            }
        })
        .collect()
}

fn check_every_backend_watched(h: &mut Harness, eps: &[(EndpointKey, u32)]) {
    for (k, id) in eps {
        let port = 41000 + u16::try_from(*id).unwrap();
        let (frame, ev) = if k.family == family::V4 {
            let a: [u8; 4] = k.addr[..4].try_into().unwrap();
            (
                tcp4_frame(LB4, port, a, BACKEND_PORT, SYN),
                pkt4(SYN, LB4, port, a, BACKEND_PORT),
            )
        } else {
            (
                tcp6_frame(LB6, port, k.addr, BACKEND_PORT, SYN),
                pkt6(SYN, LB6, port, k.addr, BACKEND_PORT),
            )
        };
        h.check(
            &format!("SYN to backend {id}"),
            &frame,
            &Want::Packet(ev, *id, stats(|s| s.syn = 1)),
        );
    }
    // Same port, an address that is not among them; a watched address on another port.
    h.check(
        "SYN to an unwatched address on the backends' port",
        &tcp4_frame(LB4, 40000, [10, 1, 0, 200], BACKEND_PORT, SYN),
        &Want::Nothing,
    );
    h.check(
        "SYN to a backend's address on another port",
        &tcp4_frame(LB4, 40000, [10, 1, 0, 1], BACKEND_PORT + 1, SYN),
        &Want::Nothing,
    );
}

#[test]
fn a_full_port_slot_matches_every_endpoint() {
    let eps = backends_on_one_port(PORT_SLOT_ENTRIES);
    let mut h = Harness::new(&eps, false);
    check_every_backend_watched(&mut h, &eps);
}

#[test]
fn more_endpoints_than_a_port_slot_go_through_the_hash_map() {
    let eps = backends_on_one_port(PORT_SLOT_ENTRIES + 3);
    let (ports, _) = lbtrace::kernel::tracer::port_table(&eps);
    assert_eq!(ports, vec![(BACKEND_PORT, PORT_HASHED)]);
    let mut h = Harness::new(&eps, false);
    check_every_backend_watched(&mut h, &eps);
}

// ------------------------------------------------------------------------------------------------
// Wildcard endpoints.

#[test]
fn wildcard_endpoint_matches_any_port() {
    let endpoints = vec![
        (key4(WILD4, 0), ID_WILD4),
        (key4(WILD4, 443), ID_WILD4_443),
        (key6(WILD6, 0), ID_WILD6),
        (key4(VIP4, VIP_PORT), ID_VIP4),
    ];
    let mut h = Harness::new(&endpoints, true);
    for port in [1u16, 80, 8443, 65535] {
        let frame = tcp4_frame(CLIENT4, 40000, WILD4, port, SYN);
        let ev = pkt4(SYN, CLIENT4, 40000, WILD4, port);
        h.check(
            &format!("SYN to wildcard :{port}"),
            &frame,
            &Want::Packet(ev, ID_WILD4, stats(|s| s.syn = 1)),
        );

        let frame = tcp4_frame(WILD4, port, CLIENT4, 40000, SYN | ACK);
        let ev = pkt4(SYN | ACK, WILD4, port, CLIENT4, 40000);
        h.check(
            &format!("SYN-ACK from wildcard :{port}"),
            &frame,
            &Want::Packet(ev, ID_WILD4, stats(|s| s.syn_ack = 1)),
        );

        let frame = tcp6_frame(CLIENT6, 40000, WILD6, port, RST);
        let ev = pkt6(RST, CLIENT6, 40000, WILD6, port);
        h.check(
            &format!("IPv6 RST to wildcard :{port}"),
            &frame,
            &Want::Packet(ev, ID_WILD6, stats(|s| s.rst = 1)),
        );
    }
    // Port 0 itself.
    let frame = tcp4_frame(CLIENT4, 40000, WILD4, 0, SYN);
    let ev = pkt4(SYN, CLIENT4, 40000, WILD4, 0);
    h.check(
        "SYN to wildcard :0",
        &frame,
        &Want::Packet(ev, ID_WILD4, stats(|s| s.syn = 1)),
    );
    // An exact entry wins over the address's wildcard.
    let frame = tcp4_frame(CLIENT4, 40000, WILD4, 443, SYN);
    let ev = pkt4(SYN, CLIENT4, 40000, WILD4, 443);
    h.check(
        "SYN to wildcard address, exact port",
        &frame,
        &Want::Packet(ev, ID_WILD4_443, stats(|s| s.syn = 1)),
    );
    // The wildcard is per address: other addresses still need their port.
    h.check(
        "SYN to VIP other port",
        &tcp4_frame(CLIENT4, 40000, VIP4, 80, SYN),
        &Want::Nothing,
    );
    // ICMP errors quoting a tuple of the wildcard address match too.
    let quoted = ipv4(LB4, WILD4, PROTO_TCP, &tcp(40003, 5432, SYN));
    let frame = eth(
        ETH_P_IP,
        &ipv4(ROUTER4, LB4, PROTO_ICMP, &icmp(3, 1, 0, &quoted)),
    );
    let ev = icmp_ev(
        family::V4,
        3,
        1,
        addr4(ROUTER4),
        addr4(LB4),
        addr4(LB4),
        40003,
        addr4(WILD4),
        5432,
        SEQ,
    );
    h.check(
        "host unreachable quoting wildcard tuple",
        &frame,
        &Want::Icmp(ev, ID_WILD4),
    );
}

#[test]
fn port_zero_entry_needs_has_wildcard() {
    // With HAS_WILDCARD = 0 the programs never look port-0 entries up.
    let endpoints = vec![
        (key4(WILD4, 0), ID_WILD_NOFLAG),
        (key4(VIP4, VIP_PORT), ID_VIP4),
    ];
    let mut h = Harness::new(&endpoints, false);
    h.check(
        "SYN to port-0 address without HAS_WILDCARD",
        &tcp4_frame(CLIENT4, 40000, WILD4, 80, SYN),
        &Want::Nothing,
    );
    let frame = tcp4_frame(CLIENT4, 40000, VIP4, VIP_PORT, SYN);
    let ev = pkt4(SYN, CLIENT4, 40000, VIP4, VIP_PORT);
    h.check(
        "SYN to VIP",
        &frame,
        &Want::Packet(ev, ID_VIP4, stats(|s| s.syn = 1)),
    );
}

// ------------------------------------------------------------------------------------------------
// ICMP errors.

/// A SYN from the LB to the watched backend, as an ICMP error quotes it: IP header + `tcp_bytes`
/// bytes of the TCP header.
fn quoted_syn4(tcp_bytes: usize) -> Vec<u8> {
    let mut seg = tcp_full(40002, BACKEND_PORT, 0x0bad_cafe, 0, SYN, &SYN_OPTIONS, &[]);
    let full_len = u16::try_from(20 + seg.len()).unwrap();
    seg.truncate(tcp_bytes);
    ipv4_full(LB4, BACKEND4, PROTO_TCP, &[], IP_DF, Some(full_len), &seg)
}

fn quoted_syn6(tcp_bytes: usize) -> Vec<u8> {
    let mut seg = tcp_full(40002, BACKEND_PORT, 0x0bad_cafe, 0, SYN, &SYN_OPTIONS, &[]);
    let full = ipv6(LB6, BACKEND6, PROTO_TCP, &seg);
    seg.truncate(tcp_bytes);
    let mut p = ipv6(LB6, BACKEND6, PROTO_TCP, &seg);
    p[4..6].copy_from_slice(&full[4..6]); // the original payload length
    p
}

fn icmp4_ev(ty: u8, code: u8, outer_src: [u8; 4]) -> Event {
    icmp_ev(
        family::V4,
        ty,
        code,
        addr4(outer_src),
        addr4(LB4),
        addr4(LB4),
        40002,
        addr4(BACKEND4),
        BACKEND_PORT,
        0x0bad_cafe,
    )
}

fn icmp6_ev(ty: u8, code: u8, outer_src: [u8; 16]) -> Event {
    icmp_ev(
        family::V6,
        ty,
        code,
        outer_src,
        LB6,
        LB6,
        40002,
        BACKEND6,
        BACKEND_PORT,
        0x0bad_cafe,
    )
}

#[test]
fn icmp4_port_unreachable() {
    let mut h = Harness::standard();
    // The backend's host answers the LB's SYN with port unreachable, quoting the whole header.
    let frame = eth(
        ETH_P_IP,
        &ipv4(BACKEND4, LB4, PROTO_ICMP, &icmp(3, 3, 0, &quoted_syn4(40))),
    );
    h.check(
        "port unreachable (full quote)",
        &frame,
        &Want::Icmp(icmp4_ev(3, 3, BACKEND4), ID_BACKEND4),
    );
    // RFC 792 minimum: 8 bytes of the quoted TCP header.
    let frame = eth(
        ETH_P_IP,
        &ipv4(BACKEND4, LB4, PROTO_ICMP, &icmp(3, 3, 0, &quoted_syn4(8))),
    );
    h.check(
        "port unreachable (8-byte quote)",
        &frame,
        &Want::Icmp(icmp4_ev(3, 3, BACKEND4), ID_BACKEND4),
    );
    // Behind two VLAN tags.
    let frame = eth_vlan(
        &[(ETH_P_8021AD, 1), (ETH_P_8021Q, 2)],
        ETH_P_IP,
        &ipv4(BACKEND4, LB4, PROTO_ICMP, &icmp(3, 3, 0, &quoted_syn4(8))),
    );
    h.check(
        "port unreachable in QinQ",
        &frame,
        &Want::Icmp(icmp4_ev(3, 3, BACKEND4), ID_BACKEND4),
    );
}

#[test]
fn icmp4_other_unreachables_and_options() {
    let mut h = Harness::standard();
    // Fragmentation needed, MTU 1400, from a router; outer and quoted IP headers with options.
    let opts = ipv4_options(8);
    let mut seg = tcp_full(40002, BACKEND_PORT, 0x0bad_cafe, 0, SYN, &[], &[]);
    seg.truncate(8);
    let quoted = ipv4_full(LB4, BACKEND4, PROTO_TCP, &opts, IP_DF, Some(48), &seg);
    let frame = eth(
        ETH_P_IP,
        &ipv4_full(
            ROUTER4,
            LB4,
            PROTO_ICMP,
            &ipv4_options(40),
            0,
            None,
            &icmp(3, 4, 1400, &quoted),
        ),
    );
    h.check(
        "frag needed, options in both headers",
        &frame,
        &Want::Icmp(icmp4_ev(3, 4, ROUTER4), ID_BACKEND4),
    );
    // Host unreachable going the other way: the quoted packet is the backend's SYN-ACK.
    let mut seg = tcp_full(BACKEND_PORT, 40002, 0x0bad_cafe, 77, SYN | ACK, &[], &[]);
    seg.truncate(8);
    let quoted = ipv4_full(BACKEND4, LB4, PROTO_TCP, &[], IP_DF, Some(40), &seg);
    let frame = eth(
        ETH_P_IP,
        &ipv4(ROUTER4, BACKEND4, PROTO_ICMP, &icmp(3, 1, 0, &quoted)),
    );
    let ev = icmp_ev(
        family::V4,
        3,
        1,
        addr4(ROUTER4),
        addr4(BACKEND4),
        addr4(BACKEND4),
        BACKEND_PORT,
        addr4(LB4),
        40002,
        0x0bad_cafe,
    );
    h.check(
        "host unreachable quoting SYN-ACK",
        &frame,
        &Want::Icmp(ev, ID_BACKEND4),
    );
}

#[test]
fn icmp4_time_exceeded() {
    let mut h = Harness::standard();
    let frame = eth(
        ETH_P_IP,
        &ipv4(ROUTER4, LB4, PROTO_ICMP, &icmp(11, 0, 0, &quoted_syn4(20))),
    );
    h.check(
        "time exceeded in transit",
        &frame,
        &Want::Icmp(icmp4_ev(11, 0, ROUTER4), ID_BACKEND4),
    );
    let frame = eth(
        ETH_P_IP,
        &ipv4(ROUTER4, LB4, PROTO_ICMP, &icmp(11, 1, 0, &quoted_syn4(8))),
    );
    h.check(
        "reassembly time exceeded",
        &frame,
        &Want::Icmp(icmp4_ev(11, 1, ROUTER4), ID_BACKEND4),
    );
}

#[test]
fn icmp6_errors() {
    let mut h = Harness::standard();
    let frame = eth(
        ETH_P_IPV6,
        &ipv6(
            BACKEND6,
            LB6,
            PROTO_ICMPV6,
            &icmp(1, 4, 0, &quoted_syn6(40)),
        ),
    );
    h.check(
        "ICMPv6 port unreachable",
        &frame,
        &Want::Icmp(icmp6_ev(1, 4, BACKEND6), ID_BACKEND6),
    );
    let frame = eth(
        ETH_P_IPV6,
        &ipv6(ROUTER6, LB6, PROTO_ICMPV6, &icmp(1, 3, 0, &quoted_syn6(8))),
    );
    h.check(
        "ICMPv6 address unreachable",
        &frame,
        &Want::Icmp(icmp6_ev(1, 3, ROUTER6), ID_BACKEND6),
    );
    let frame = eth(
        ETH_P_IPV6,
        &ipv6(
            ROUTER6,
            LB6,
            PROTO_ICMPV6,
            &icmp(2, 0, 1280, &quoted_syn6(20)),
        ),
    );
    h.check(
        "ICMPv6 packet too big",
        &frame,
        &Want::Icmp(icmp6_ev(2, 0, ROUTER6), ID_BACKEND6),
    );
    let frame = eth(
        ETH_P_IPV6,
        &ipv6(ROUTER6, LB6, PROTO_ICMPV6, &icmp(3, 0, 0, &quoted_syn6(8))),
    );
    h.check(
        "ICMPv6 time exceeded",
        &frame,
        &Want::Icmp(icmp6_ev(3, 0, ROUTER6), ID_BACKEND6),
    );
    let frame = eth_vlan(
        &[(ETH_P_8021Q, 9)],
        ETH_P_IPV6,
        &ipv6(
            ROUTER6,
            LB6,
            PROTO_ICMPV6,
            &icmp(2, 0, 1400, &quoted_syn6(8)),
        ),
    );
    h.check(
        "ICMPv6 packet too big in a VLAN",
        &frame,
        &Want::Icmp(icmp6_ev(2, 0, ROUTER6), ID_BACKEND6),
    );
}

#[test]
fn icmp_non_errors_give_no_record() {
    let mut h = Harness::standard();
    // Echo request/reply whose data happens to look like a quoted SYN.
    for ty in [8u8, 0] {
        let frame = eth(
            ETH_P_IP,
            &ipv4(
                CLIENT4,
                VIP4,
                PROTO_ICMP,
                &icmp(ty, 0, 0x0001_0001, &quoted_syn4(20)),
            ),
        );
        h.check(&format!("ICMP type {ty}"), &frame, &Want::Nothing);
    }
    for ty in [128u8, 129] {
        let frame = eth(
            ETH_P_IPV6,
            &ipv6(
                CLIENT6,
                VIP6,
                PROTO_ICMPV6,
                &icmp(ty, 0, 0x0001_0001, &quoted_syn6(20)),
            ),
        );
        h.check(&format!("ICMPv6 type {ty}"), &frame, &Want::Nothing);
    }
    // Error types the programs do not follow: redirect, parameter problem (both families).
    let frame = eth(
        ETH_P_IP,
        &ipv4(ROUTER4, LB4, PROTO_ICMP, &icmp(5, 1, 0, &quoted_syn4(8))),
    );
    h.check("ICMP redirect", &frame, &Want::Nothing);
    let frame = eth(
        ETH_P_IP,
        &ipv4(ROUTER4, LB4, PROTO_ICMP, &icmp(12, 0, 0, &quoted_syn4(8))),
    );
    h.check("ICMP parameter problem", &frame, &Want::Nothing);
    let frame = eth(
        ETH_P_IPV6,
        &ipv6(ROUTER6, LB6, PROTO_ICMPV6, &icmp(4, 0, 0, &quoted_syn6(8))),
    );
    h.check("ICMPv6 parameter problem", &frame, &Want::Nothing);
    // ICMPv4 inside IPv6 and ICMPv6 inside IPv4 are not ICMP errors.
    let frame = eth(
        ETH_P_IPV6,
        &ipv6(ROUTER6, LB6, PROTO_ICMP, &icmp(3, 3, 0, &quoted_syn6(8))),
    );
    h.check("protocol 1 over IPv6", &frame, &Want::Nothing);
    let frame = eth(
        ETH_P_IP,
        &ipv4(ROUTER4, LB4, PROTO_ICMPV6, &icmp(1, 4, 0, &quoted_syn4(8))),
    );
    h.check("protocol 58 over IPv4", &frame, &Want::Nothing);
}

#[test]
fn icmp_errors_not_quoting_watched_tcp_give_no_record() {
    let mut h = Harness::standard();
    // Quoting UDP to the backend's address and port.
    let quoted = ipv4(LB4, BACKEND4, PROTO_UDP, &udp(40002, BACKEND_PORT, b"dns?"));
    let frame = eth(
        ETH_P_IP,
        &ipv4(BACKEND4, LB4, PROTO_ICMP, &icmp(3, 3, 0, &quoted)),
    );
    h.check("port unreachable quoting UDP", &frame, &Want::Nothing);
    let quoted = ipv6(LB6, BACKEND6, PROTO_UDP, &udp(40002, BACKEND_PORT, b"dns?"));
    let frame = eth(
        ETH_P_IPV6,
        &ipv6(BACKEND6, LB6, PROTO_ICMPV6, &icmp(1, 4, 0, &quoted)),
    );
    h.check(
        "ICMPv6 port unreachable quoting UDP",
        &frame,
        &Want::Nothing,
    );
    // Quoting ICMP.
    let quoted = ipv4(LB4, BACKEND4, PROTO_ICMP, &icmp(8, 0, 1, &[]));
    let frame = eth(
        ETH_P_IP,
        &ipv4(ROUTER4, LB4, PROTO_ICMP, &icmp(11, 0, 0, &quoted)),
    );
    h.check("time exceeded quoting echo", &frame, &Want::Nothing);
    // Quoting TCP of an unwatched tuple.
    let mut seg = tcp(40002, 9999, SYN);
    seg.truncate(8);
    let quoted = ipv4_full(LB4, BACKEND4, PROTO_TCP, &[], IP_DF, Some(40), &seg);
    let frame = eth(
        ETH_P_IP,
        &ipv4(BACKEND4, LB4, PROTO_ICMP, &icmp(3, 3, 0, &quoted)),
    );
    h.check(
        "port unreachable quoting unwatched TCP",
        &frame,
        &Want::Nothing,
    );
    // Quoting a later fragment of a watched tuple (no TCP header in it).
    let quoted = ipv4_full(
        LB4,
        BACKEND4,
        PROTO_TCP,
        &[],
        185,
        None,
        &tcp(40002, BACKEND_PORT, SYN)[..8],
    );
    let frame = eth(
        ETH_P_IP,
        &ipv4(ROUTER4, LB4, PROTO_ICMP, &icmp(11, 1, 0, &quoted)),
    );
    h.check(
        "time exceeded quoting a later fragment",
        &frame,
        &Want::Nothing,
    );
}

// ------------------------------------------------------------------------------------------------
// Truncated and malformed frames.

/// Runs every prefix of `frame` (0..len bytes) through every program. Prefixes the kernel refuses
/// ([`kernel_refuses`]) must fail with EINVAL without counting anything; the others must pass,
/// unmodified, write no record, and count a parse error exactly when `is_error(len)` says so.
fn check_prefixes(h: &mut Harness, what: &str, frame: &[u8], is_error: impl Fn(usize) -> bool) {
    for len in 0..frame.len() {
        let want = if is_error(len) {
            Want::ParseError
        } else {
            Want::Nothing
        };
        h.check(&format!("{what} cut to {len}"), &frame[..len], &want);
    }
}

#[test]
fn truncated_ipv4_syn() {
    let mut h = Harness::standard();
    // 14 Ethernet + 20 IP + 20 TCP: any cut from 14 up is inside the IP or TCP header.
    let frame = tcp4_frame(CLIENT4, 40000, VIP4, VIP_PORT, SYN);
    check_prefixes(&mut h, "IPv4 SYN", &frame, |_| true);
    // A cut pure ACK is a parse error as well: the TCP header is read before its flags.
    let frame = tcp4_frame(CLIENT4, 40000, VIP4, VIP_PORT, ACK);
    check_prefixes(&mut h, "IPv4 ACK", &frame, |_| true);
    // Unwatched too: the header has to be read before the lookup.
    let frame = tcp4_frame(CLIENT4, 40000, UNWATCHED4, 80, SYN);
    check_prefixes(&mut h, "unwatched IPv4 SYN", &frame, |_| true);
}

#[test]
fn truncated_ipv4_with_options() {
    let mut h = Harness::standard();
    // IHL 15: the TCP header starts at 74; every cut below 94 is an error.
    let opts = ipv4_options(40);
    let frame = eth(
        ETH_P_IP,
        &ipv4_full(
            CLIENT4,
            VIP4,
            PROTO_TCP,
            &opts,
            IP_DF,
            None,
            &tcp(40000, VIP_PORT, SYN),
        ),
    );
    assert_eq!(frame.len(), 94);
    check_prefixes(&mut h, "IPv4 IHL 15 SYN", &frame, |_| true);
}

#[test]
fn truncated_tcp_options_still_give_the_record() {
    // Only the 20-byte fixed TCP header is needed: a SYN whose options are cut off still yields
    // its record; payload_len comes from the IP header (so it is 0 here, not negative).
    let mut h = Harness::standard();
    let frame = eth(
        ETH_P_IP,
        &ipv4(
            CLIENT4,
            VIP4,
            PROTO_TCP,
            &tcp_full(40000, VIP_PORT, SEQ, 0, SYN, &SYN_OPTIONS, &[]),
        ),
    );
    assert_eq!(frame.len(), 74);
    for len in 54..74 {
        let ev = pkt4(SYN, CLIENT4, 40000, VIP4, VIP_PORT);
        h.check(
            &format!("SYN options cut to {len}"),
            &frame[..len],
            &Want::Packet(ev, ID_VIP4, stats(|s| s.syn = 1)),
        );
    }
}

#[test]
fn truncated_ipv6_syn() {
    let mut h = Harness::standard();
    // 14 + 40 + 20.
    let frame = tcp6_frame(CLIENT6, 40000, VIP6, VIP_PORT, SYN);
    check_prefixes(&mut h, "IPv6 SYN", &frame, |_| true);
}

#[test]
fn truncated_vlan_frames() {
    let mut h = Harness::standard();
    // Cut inside the tag (14..18): the inner EtherType cannot be read, a parse error.
    let l3 = ipv4(CLIENT4, VIP4, PROTO_TCP, &tcp(40000, VIP_PORT, SYN));
    let frame = eth_vlan(&[(ETH_P_8021Q, 100)], ETH_P_IP, &l3);
    check_prefixes(&mut h, "802.1Q IPv4 SYN", &frame, |_| true);
    let l3 = ipv6(CLIENT6, VIP6, PROTO_TCP, &tcp(40000, VIP_PORT, SYN));
    let frame = eth_vlan(&[(ETH_P_8021AD, 1), (ETH_P_8021Q, 2)], ETH_P_IPV6, &l3);
    check_prefixes(&mut h, "QinQ IPv6 SYN", &frame, |_| true);
    // A tagged ARP cut after the tags is no error (never parsed); inside the tags it is.
    let frame = eth_vlan(&[(ETH_P_8021AD, 1), (ETH_P_8021Q, 2)], ETH_P_ARP, &[0; 28]);
    check_prefixes(&mut h, "QinQ ARP", &frame, |len| len < ETH_HLEN + 8);
}

#[test]
fn truncated_non_tcp() {
    let mut h = Harness::standard();
    // An IPv4 UDP packet: errors only while the fixed 20-byte IP header is incomplete.
    let frame = eth(
        ETH_P_IP,
        &ipv4(CLIENT4, VIP4, PROTO_UDP, &udp(40000, VIP_PORT, b"hello")),
    );
    check_prefixes(&mut h, "IPv4 UDP", &frame, |len| len < ETH_HLEN + 20);
    let frame = eth(
        ETH_P_IPV6,
        &ipv6(CLIENT6, VIP6, PROTO_UDP, &udp(40000, VIP_PORT, b"hello")),
    );
    check_prefixes(&mut h, "IPv6 UDP", &frame, |len| len < ETH_HLEN + 40);
    // ARP: never an error.
    let frame = eth(ETH_P_ARP, &[0; 28]);
    check_prefixes(&mut h, "ARP", &frame, |_| false);
}

#[test]
fn truncated_icmp_errors() {
    let mut h = Harness::standard();
    // 14 Ethernet, 20 outer IP, 8 ICMP, 20 quoted IP, 8 quoted TCP = 70: the record needs it all.
    let frame = eth(
        ETH_P_IP,
        &ipv4(BACKEND4, LB4, PROTO_ICMP, &icmp(3, 3, 0, &quoted_syn4(8))),
    );
    assert_eq!(frame.len(), 70);
    check_prefixes(&mut h, "ICMP port unreachable", &frame, |_| true);
    // With a full 20-byte quoted TCP header, cuts after its 8th byte still give the record.
    let frame = eth(
        ETH_P_IP,
        &ipv4(BACKEND4, LB4, PROTO_ICMP, &icmp(3, 3, 0, &quoted_syn4(20))),
    );
    for len in 70..frame.len() {
        h.check(
            &format!("ICMP quote cut to {len}"),
            &frame[..len],
            &Want::Icmp(icmp4_ev(3, 3, BACKEND4), ID_BACKEND4),
        );
    }
    // ICMPv6: 14 + 40 + 8 + 40 + 8 = 110.
    let frame = eth(
        ETH_P_IPV6,
        &ipv6(
            ROUTER6,
            LB6,
            PROTO_ICMPV6,
            &icmp(2, 0, 1280, &quoted_syn6(8)),
        ),
    );
    assert_eq!(frame.len(), 110);
    check_prefixes(&mut h, "ICMPv6 packet too big", &frame, |_| true);
    // An echo request is an error only while its 8-byte ICMP header is incomplete.
    let frame = eth(
        ETH_P_IP,
        &ipv4(CLIENT4, VIP4, PROTO_ICMP, &icmp(8, 0, 1, b"ping")),
    );
    check_prefixes(&mut h, "ICMP echo", &frame, |len| len < ETH_HLEN + 28);
}

#[test]
fn malformed_ip_headers_are_parse_errors() {
    let mut h = Harness::standard();
    let good = tcp4_frame(CLIENT4, 40000, VIP4, VIP_PORT, SYN);
    // IHL below 5.
    for ihl in 0..5u8 {
        let mut f = good.clone();
        f[ETH_HLEN] = 0x40 | ihl;
        h.check(&format!("IHL {ihl}"), &f, &Want::ParseError);
    }
    // Wrong version under each EtherType.
    for v in [0u8, 5, 6, 15] {
        let mut f = good.clone();
        f[ETH_HLEN] = (v << 4) | 5;
        h.check(
            &format!("IPv4 EtherType, version {v}"),
            &f,
            &Want::ParseError,
        );
    }
    let good6 = tcp6_frame(CLIENT6, 40000, VIP6, VIP_PORT, SYN);
    for v in [0u8, 4, 7] {
        let mut f = good6.clone();
        f[ETH_HLEN] = v << 4;
        h.check(
            &format!("IPv6 EtherType, version {v}"),
            &f,
            &Want::ParseError,
        );
    }
    // IHL pointing past the end of the frame (IHL 15, no options present).
    let mut f = good;
    f[ETH_HLEN] = 0x4f;
    h.check("IHL 15 without options", &f, &Want::ParseError);
}

/// xorshift64*: deterministic garbage.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next().to_le_bytes()[0]).collect()
    }
}

#[test]
fn garbage_frames_always_pass() {
    let mut h = Harness::standard();
    let mut rng = Rng(0x1b7c_e5a3_9d2f_4c61);
    let ethertypes = [ETH_P_IP, ETH_P_IPV6, ETH_P_8021Q, ETH_P_8021AD, ETH_P_ARP];
    let c0 = h.counters();
    let mut runs = 0u64;
    for i in 0..300usize {
        let len = ETH_HLEN + (rng.next() % 200) as usize;
        let mut f = rng.bytes(len);
        // Steer most frames into the parsers.
        let et = ethertypes[i % ethertypes.len()];
        f[12..14].copy_from_slice(&et.to_be_bytes());
        if i % 3 != 0 && len > 20 {
            let inner = ethertypes[(i / 5) % 2];
            let at = if et == ETH_P_8021Q || et == ETH_P_8021AD {
                16
            } else {
                12
            };
            f[at..at + 2].copy_from_slice(&inner.to_be_bytes());
            let l3 = at + 2;
            if f.len() > l3 {
                f[l3] = if inner == ETH_P_IP {
                    0x40 | (f[l3] & 0x0f)
                } else {
                    0x60
                };
            }
        }
        for prog in PROGS {
            if kernel_refuses(prog, &f) {
                let err = h
                    .try_run(prog, &f)
                    .expect_err("the kernel ran a frame it should refuse");
                assert!(is_einval(&err), "{err:?}");
            } else {
                h.run(prog, &f);
                runs += 1;
            }
        }
    }
    let d = delta(&h.counters(), &c0);
    assert_eq!(d[counter::PACKETS as usize], runs);
    assert!(d[counter::PARSE_ERRORS as usize] <= runs);
    // Random addresses never hit the watched endpoints.
    assert_eq!(h.drain_events(), vec![]);
    assert_eq!(h.drain_priority(), vec![]);
    assert_eq!(
        d[counter::EVENTS_EMITTED as usize] + d[counter::EVENTS_LOST as usize],
        0
    );
}

// ------------------------------------------------------------------------------------------------
// Ring buffers.

/// Keeps the calling thread on the CPU it runs on now, so that every test run writes to the same
/// per-CPU ring; returns that CPU.
fn pin_to_current_cpu() -> u64 {
    // SAFETY: plain syscalls on this thread's own affinity mask.
    unsafe {
        let cpu = libc::sched_getcpu();
        assert!(
            cpu >= 0,
            "sched_getcpu: {}",
            std::io::Error::last_os_error()
        );
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        let rc = libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(
            rc,
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
        cpu as u64
    }
}

#[test]
fn full_ring_loses_events_but_still_passes() {
    // The smallest rings: MIN_SLOTS records per CPU. All runs on one CPU fill that CPU's ring.
    let cpu = pin_to_current_cpu();
    let page = 4096;
    let mut h = Harness::with_rings(&standard_endpoints(), false, 1, page);
    assert_eq!(h.layout.slots, MIN_SLOTS);
    let sent = MIN_SLOTS + 44;
    let c0 = h.counters();
    let s0 = h.endpoint_stats(ID_VIP4);
    for i in 0..sent {
        let prog = PROGS[(i % 3) as usize];
        let port = 30000 + u16::try_from(i).unwrap();
        h.run(prog, &tcp4_frame(CLIENT4, port, VIP4, VIP_PORT, SYN));
    }
    let d = delta(&h.counters(), &c0);
    let emitted = d[counter::EVENTS_EMITTED as usize];
    let lost = d[counter::EVENTS_LOST as usize];
    assert_eq!(emitted + lost, sent, "counters {:?}", named(&d));
    assert_eq!(emitted, MIN_SLOTS, "records that fit in one CPU's ring");
    assert_eq!(lost, 44);
    assert_eq!(d[counter::PACKETS as usize], sent);
    assert_eq!(d[counter::PARSE_ERRORS as usize], 0);
    // Stats are counted before the ring is touched: every SYN is there.
    assert_eq!(
        stats_delta(h.endpoint_stats(ID_VIP4), s0),
        stats(|s| s.syn = sent)
    );
    // The ring reached a quarter full once (nothing was read): one wake-up, naming the CPU.
    assert_eq!(h.layout.wakeup_events, MIN_SLOTS / 4);
    assert_eq!(h.drain_wakeups(), vec![cpu]);

    // The packet ring being full does not starve the priority ring.
    let icmp_frame = eth(
        ETH_P_IP,
        &ipv4(BACKEND4, LB4, PROTO_ICMP, &icmp(3, 3, 0, &quoted_syn4(8))),
    );
    let c1 = h.counters();
    h.run(Prog::TcIngress, &icmp_frame);
    let d = delta(&h.counters(), &c1);
    assert_eq!(
        d[counter::PRIORITY_EMITTED as usize],
        1,
        "counters {:?}",
        named(&d)
    );
    assert_eq!(d[counter::PRIORITY_LOST as usize], 0);
    let got = normalize(
        "ICMP with EVENTS full",
        Prog::TcIngress,
        &h.drain_priority(),
    );
    assert_eq!(got, with_hook(&[icmp4_ev(3, 3, BACKEND4)], Prog::TcIngress));

    // What was emitted can be read back, in order, and is right.
    let got = h.drain_events();
    assert_eq!(got.len() as u64, emitted);
    for (i, e) in got.iter().enumerate() {
        let prog = PROGS[i % 3];
        let port = 30000 + u16::try_from(i).unwrap();
        let want = Event {
            hook: prog.hook(),
            ifindex: lo_ifindex(),
            ..pkt4(SYN, CLIENT4, port, VIP4, VIP_PORT)
        };
        assert_ne!(e.ts_ns, 0);
        assert_eq!(Event { ts_ns: 0, ..*e }, want, "record {i}");
    }
    assert!(
        got.windows(2).all(|w| w[0].ts_ns <= w[1].ts_ns),
        "records out of time order"
    );

    // Once drained, the ring takes events again, and wakes the reader again at a quarter.
    for i in 0..h.layout.wakeup_events {
        let port = 20000 + u16::try_from(i).unwrap();
        h.run(
            Prog::TcEgress,
            &tcp4_frame(CLIENT4, port, VIP4, VIP_PORT, FIN),
        );
    }
    assert_eq!(h.drain_wakeups(), vec![cpu]);
    assert_eq!(h.drain_events().len() as u64, h.layout.wakeup_events);
    let frame = tcp4_frame(CLIENT4, 40000, VIP4, VIP_PORT, RST);
    h.check(
        "RST after draining",
        &frame,
        &Want::Packet(
            pkt4(RST, CLIENT4, 40000, VIP4, VIP_PORT),
            ID_VIP4,
            stats(|s| s.rst = 1),
        ),
    );
}

#[test]
fn full_priority_ring_loses_icmp_events() {
    // The smallest ring buffer (one page): 4096 / (8-byte header + 104) = 36 records fit.
    let page = 4096;
    let mut h = Harness::with_rings(&standard_endpoints(), false, 1, page);
    let frame = eth(
        ETH_P_IP,
        &ipv4(BACKEND4, LB4, PROTO_ICMP, &icmp(3, 3, 0, &quoted_syn4(8))),
    );
    let sent = 50u64;
    let c0 = h.counters();
    for i in 0..sent {
        h.run(PROGS[(i % 3) as usize], &frame);
    }
    let d = delta(&h.counters(), &c0);
    let emitted = d[counter::PRIORITY_EMITTED as usize];
    assert_eq!(
        emitted + d[counter::PRIORITY_LOST as usize],
        sent,
        "counters {:?}",
        named(&d)
    );
    assert_eq!(emitted, 36);
    assert_eq!(
        d[counter::EVENTS_EMITTED as usize] + d[counter::EVENTS_LOST as usize],
        0
    );
    assert_eq!(h.drain_priority().len() as u64, emitted);
    assert_eq!(h.endpoint_stats(ID_BACKEND4), stats(|s| s.icmp = sent));
    // The packet ring is untouched by a full priority ring.
    let frame = tcp4_frame(CLIENT4, 40000, VIP4, VIP_PORT, SYN);
    h.check(
        "SYN with PRIORITY_EVENTS full",
        &frame,
        &Want::Packet(
            pkt4(SYN, CLIENT4, 40000, VIP4, VIP_PORT),
            ID_VIP4,
            stats(|s| s.syn = 1),
        ),
    );
}

#[test]
fn repeated_runs_emit_one_record_each() {
    // BPF_PROG_TEST_RUN's repeat count runs the program that many times on the same frame.
    let mut h = Harness::standard();
    let frame = tcp4_frame(LB4, 40001, BACKEND4, BACKEND_PORT, SYN);
    for prog in PROGS {
        let c0 = h.counters();
        let ret = h.try_run_repeat(prog, &frame, 10).unwrap();
        assert_eq!(ret, prog.pass());
        let d = delta(&h.counters(), &c0);
        assert_eq!(d[counter::PACKETS as usize], 10);
        assert_eq!(d[counter::EVENTS_EMITTED as usize], 10);
        let got = normalize("repeat", prog, &h.drain_events());
        let want = Event {
            hook: prog.hook(),
            ifindex: lo_ifindex(),
            ..pkt4(SYN, LB4, 40001, BACKEND4, BACKEND_PORT)
        };
        assert_eq!(got, vec![want; 10], "{prog:?}");
    }
    assert_eq!(h.endpoint_stats(ID_BACKEND4), stats(|s| s.syn = 30));
}
