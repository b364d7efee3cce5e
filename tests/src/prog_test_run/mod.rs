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
//! Layout: `addrs` (addresses, endpoints), `expect` (the records and stats a frame should give),
//! `harness` (loading through `lbtrace::kernel::loader`, running, checking); the frames come
//! from the library's [`crate::frames`]; then one file per behaviour (`ringbuf_variant`: the
//! programs that write packet events to a BPF ring buffer, for kernels before 5.12; `data`: the
//! data-path mode, `--data`).
//!
//! Kernel facts these tests rely on (net/bpf/test_run.c):
//! * frames shorter than `ETH_HLEN` (14 bytes) are refused by the syscall itself with `EINVAL`
//!   before any program runs, for skb and XDP programs alike;
//! * skb (TC) test runs also refuse, with `EINVAL`, a frame whose outer EtherType is IPv4 / IPv6
//!   but that is too short for the fixed IPv4 (20 bytes) / IPv6 (40 bytes) header (seen on 6.1
//!   and 6.18; 5.10 runs such frames, and they are checked as any other run there).
//!   Such cuts are tested through XDP, and through TC behind a VLAN tag (whose skb protocol is
//!   802.1Q, so the kernel does not look further); see [`Harness::kernel_refuses`];
//! * skb test runs use the network namespace's loopback device, so `__sk_buff.ifindex` is its
//!   ifindex; XDP test runs use loopback's rx queue 0, so `ingress_ifindex` is the same.

mod addrs;
mod expect;
mod harness;

mod data;
mod headers;
mod http_status;
mod icmp;
mod malformed;
mod no_record;
mod port_slots;
mod ringbuf_variant;
mod rings;
mod tcp;
mod tunnel;
mod wildcard;

use std::{
    collections::BTreeMap,
    ptr::read_unaligned,
    sync::atomic::{AtomicU32, Ordering},
};

use aya::{
    Ebpf, TestRun as _, TestRunOptions,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{ProgramError, SchedClassifier, Xdp},
};
use lbtrace::kernel::{
    EBPF_OBJECT,
    loader::{self, Loaded, RawRings},
    rings::{MIN_SLOTS, PacketRing, RingLayout, RingMode},
};
use lbtrace_common::{
    EVENT_SIZE, EndpointKey, EndpointStats, Event, PORT_HASHED, PORT_SLOT_ENTRIES, counter, family,
    hook, kind, names,
    tcp_flag::{ACK, FIN, PSH, RST, SYN},
};

use self::{addrs::*, expect::*, harness::*};
use crate::frames::*;

// The frames library spells the ACK bit itself (it has no lbtrace dependency).
const _: () = assert!(crate::frames::ACK == ACK);
