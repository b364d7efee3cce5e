//! The harness: the object loaded through `lbtrace::kernel::loader`, frames run through each
//! program, and every effect of a run checked (verdict, frame, records, counters, stats).

#[allow(clippy::wildcard_imports)]
use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Prog {
    TcIngress,
    TcEgress,
    Xdp,
}

pub(super) const PROGS: [Prog; 3] = [Prog::TcIngress, Prog::TcEgress, Prog::Xdp];

impl Prog {
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::TcIngress => names::PROG_TC_INGRESS,
            Self::TcEgress => names::PROG_TC_EGRESS,
            Self::Xdp => names::PROG_XDP_INGRESS,
        }
    }

    pub(super) fn hook(self) -> u8 {
        match self {
            Self::TcIngress => hook::TC_INGRESS,
            Self::TcEgress => hook::TC_EGRESS,
            Self::Xdp => hook::XDP_INGRESS,
        }
    }

    pub(super) fn pass(self) -> u32 {
        match self {
            Self::TcIngress | Self::TcEgress => TC_PASS,
            Self::Xdp => XDP_PASS,
        }
    }
}

/// The ifindex test runs report: loopback's, in the current network namespace.
pub(super) fn lo_ifindex() -> u32 {
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

pub(super) const COUNTER_NAMES: [&str; counter::COUNT as usize] = [
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

pub(super) type Counters = [u64; counter::COUNT as usize];

pub(super) fn named(c: &Counters) -> BTreeMap<&'static str, u64> {
    COUNTER_NAMES
        .iter()
        .copied()
        .zip(c.iter().copied())
        .collect()
}

pub(super) fn delta(after: &Counters, before: &Counters) -> Counters {
    let mut d = [0; counter::COUNT as usize];
    for (i, slot) in d.iter_mut().enumerate() {
        *slot = after[i] - before[i];
    }
    d
}

pub(super) fn stats_delta(after: EndpointStats, before: EndpointStats) -> EndpointStats {
    EndpointStats {
        syn: after.syn - before.syn,
        syn_ack: after.syn_ack - before.syn_ack,
        rst: after.rst - before.rst,
        fin: after.fin - before.fin,
        icmp: after.icmp - before.icmp,
        drops: after.drops - before.drops,
    }
}

pub(super) struct Harness {
    pub(super) ebpf: Ebpf,
    pub(super) layout: RingLayout,
    pub(super) events: PacketRing,
    pub(super) wakeup: RingBuf<MapData>,
    pub(super) priority: RingBuf<MapData>,
    pub(super) ids: Vec<u32>,
    /// The programs this kernel loaded: all of [`PROGS`], or without XDP where the kernel refuses
    /// the frags-aware XDP program (before 5.18), as lbtrace's loader allows there.
    pub(super) progs: Vec<Prog>,
}

/// Says on the test binary's stderr, past the test harness's capture (so that it shows for
/// passing tests too), that part of a test does not run on this kernel, and why.
pub(super) fn not_tested(what: &str, why: &str) {
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr().lock(),
        "prog_test_run: {what}: not tested on this kernel: {why}"
    );
}

impl Harness {
    pub(super) fn new(endpoints: &[(EndpointKey, u32)], wildcard: bool) -> Self {
        Self::with_rings(endpoints, wildcard, 256 << 10, 256 << 10)
    }

    pub(super) fn standard() -> Self {
        Self::new(&standard_endpoints(), false)
    }

    /// [`Harness::standard`] with the data-path mode on (`--data`), in the ring mode this
    /// kernel takes.
    pub(super) fn standard_data() -> Self {
        Self::load(
            &standard_endpoints(),
            false,
            256 << 10,
            256 << 10,
            None,
            true,
        )
    }

    pub(super) fn with_rings(
        endpoints: &[(EndpointKey, u32)],
        wildcard: bool,
        events_bytes: u64,
        priority_bytes: u32,
    ) -> Self {
        Self::load(
            endpoints,
            wildcard,
            events_bytes,
            priority_bytes,
            None,
            false,
        )
    }

    /// The programs of ring mode `mode` (the `_rb` variants for [`RingMode::RingBuf`]).
    pub(super) fn with_mode(
        endpoints: &[(EndpointKey, u32)],
        wildcard: bool,
        events_bytes: u64,
        priority_bytes: u32,
        mode: RingMode,
    ) -> Self {
        Self::load(
            endpoints,
            wildcard,
            events_bytes,
            priority_bytes,
            Some(mode),
            false,
        )
    }

    /// Loads the programs of ring mode `mode`, or, without one, of the mode this kernel takes,
    /// probed the way lbtrace probes it ([`loader::load_probing`]: the per-CPU rings, else the
    /// ring-buffer variants; `LBTRACE_RINGS` forces one).
    fn load(
        endpoints: &[(EndpointKey, u32)],
        wildcard: bool,
        events_bytes: u64,
        priority_bytes: u32,
        mode: Option<RingMode>,
        data: bool,
    ) -> Self {
        let layout = RingLayout::new(events_bytes, priority_bytes).expect("ring layout");
        let mut opts = loader::Options::new(EBPF_OBJECT, layout, endpoints.to_vec());
        opts.has_wildcard = wildcard;
        opts.data = data;
        let loaded = match mode {
            Some(mode) => {
                opts.layout.mode = mode;
                loader::load(&opts)
            }
            None => loader::load_probing(&mut opts),
        };
        let mut loaded = loaded.expect("loading the eBPF object (are you root?)");
        let progs: Vec<Prog> = PROGS
            .into_iter()
            .filter(|p| {
                loaded
                    .ebpf
                    .program(&loaded.layout.mode.program(p.name()))
                    .is_some_and(|p| p.fd().is_ok())
            })
            .collect();
        if !progs.contains(&Prog::Xdp) {
            // The loader leaves XDP out only with a note saying why (and only before 5.18).
            let why = loaded
                .notes
                .iter()
                .find(|n| n.starts_with("XDP is unavailable"))
                .expect("XDP not loaded, and the loader said nothing about it");
            static XDP_NOTE: std::sync::Once = std::sync::Once::new();
            XDP_NOTE.call_once(|| not_tested("xdp_ingress (every XDP run)", why));
        }
        let RawRings {
            packets: events,
            wakeup,
            priority,
        } = loaded.take_rings().expect("taking the rings");
        let Loaded { ebpf, layout, .. } = loaded;
        let mut ids: Vec<u32> = endpoints.iter().map(|(_, id)| *id).collect();
        ids.sort_unstable();
        ids.dedup();
        let h = Self {
            ebpf,
            layout,
            events,
            wakeup,
            priority,
            ids,
            progs,
        };
        // Asked here, before a test takes its first counter snapshot.
        h.skb_runs_check_ip_header();
        h
    }

    /// The program of the `i`th run of a series that cycles through every loaded program.
    pub(super) fn nth_prog(&self, i: u64) -> Prog {
        self.progs[(i % self.progs.len() as u64) as usize]
    }

    /// Runs `frame` once through `prog`; checks the frame comes back unmodified and returns the
    /// verdict, or the syscall's error.
    pub(super) fn try_run(&self, prog: Prog, frame: &[u8]) -> Result<u32, ProgramError> {
        self.try_run_repeat(prog, frame, 1)
    }

    pub(super) fn try_run_repeat(
        &self,
        prog: Prog,
        frame: &[u8],
        repeat: u32,
    ) -> Result<u32, ProgramError> {
        let mut out = vec![0xa5u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::new()
        };
        let program = self
            .ebpf
            .program(&self.layout.mode.program(prog.name()))
            .unwrap();
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
    pub(super) fn run(&self, prog: Prog, frame: &[u8]) {
        let ret = self
            .try_run(prog, frame)
            .unwrap_or_else(|e| panic!("{prog:?}: test run failed: {e:?}"));
        assert_eq!(
            ret,
            prog.pass(),
            "{prog:?}: verdict {ret:#x} for frame {frame:02x?}"
        );
    }

    pub(super) fn counters(&self) -> Counters {
        let map: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(names::COUNTERS).unwrap()).unwrap();
        let mut c = [0; counter::COUNT as usize];
        for (i, slot) in c.iter_mut().enumerate() {
            *slot = map.get(&u32::try_from(i).unwrap(), 0).unwrap().iter().sum();
        }
        c
    }

    pub(super) fn endpoint_stats(&self, id: u32) -> EndpointStats {
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

    pub(super) fn all_stats(&self) -> BTreeMap<u32, EndpointStats> {
        self.ids
            .iter()
            .map(|&id| (id, self.endpoint_stats(id)))
            .collect()
    }

    pub(super) fn record(item: &[u8]) -> Event {
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
    pub(super) fn drain_events(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        self.events.drain(|item| out.push(Self::record(item)));
        out
    }

    pub(super) fn drain_priority(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(item) = self.priority.next() {
            out.push(Self::record(&item));
        }
        out
    }

    /// The CPU numbers of the wake-up records written since the last call.
    pub(super) fn drain_wakeups(&mut self) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some(item) = self.wakeup.next() {
            assert_eq!(item.len(), 8, "wake-up record of {} bytes", item.len());
            out.push(u64::from_ne_bytes(item[..8].try_into().unwrap()));
        }
        out
    }

    /// Runs `frame` through every loaded program, one at a time, and checks verdict, frame,
    /// records, counters and endpoint stats after each run.
    pub(super) fn check(&mut self, what: &str, frame: &[u8], want: &Want) {
        for prog in self.progs.clone() {
            self.check_one(what, prog, frame, want);
        }
    }

    pub(super) fn check_one(&mut self, what: &str, prog: Prog, frame: &[u8], want: &Want) {
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

        if self.kernel_refuses(prog, frame) {
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
pub(super) fn normalize(ctx: &str, prog: Prog, events: &[Event]) -> Vec<Event> {
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

pub(super) fn with_hook(events: &[Event], prog: Prog) -> Vec<Event> {
    events
        .iter()
        .map(|e| Event {
            hook: prog.hook(),
            ifindex: lo_ifindex(),
            ..*e
        })
        .collect()
}

impl Harness {
    /// Whether `BPF_PROG_TEST_RUN` refuses `frame` for `prog` with `EINVAL` before running it (see
    /// the module docs): shorter than an Ethernet header, or, for skb programs on a kernel that
    /// checks it ([`Harness::skb_runs_check_ip_header`]), an outer EtherType of IPv4 / IPv6
    /// without room for the fixed IP header.
    pub(super) fn kernel_refuses(&self, prog: Prog, frame: &[u8]) -> bool {
        if frame.len() < ETH_HLEN {
            return true;
        }
        if prog == Prog::Xdp || !self.skb_runs_check_ip_header() {
            return false;
        }
        match u16::from_be_bytes([frame[12], frame[13]]) {
            ETH_P_IP => frame.len() < ETH_HLEN + 20,
            ETH_P_IPV6 => frame.len() < ETH_HLEN + 40,
            _ => false,
        }
    }

    /// Whether this kernel's skb test runs refuse an IPv4 frame too short for its IP header
    /// (6.1 and later kernels do; 5.10's run it, as a packet would be): asked once, with a bare
    /// Ethernet header of type IPv4 through `tc_ingress` of the first harness loaded, before
    /// its test starts (the run may move its counters).
    fn skb_runs_check_ip_header(&self) -> bool {
        static CHECKS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *CHECKS.get_or_init(|| {
            let mut frame = vec![0u8; ETH_HLEN];
            frame[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
            match self.try_run(Prog::TcIngress, &frame) {
                Ok(ret) => {
                    assert_eq!(ret, Prog::TcIngress.pass(), "verdict for a bare header");
                    not_tested(
                        "EINVAL for skb frames cut inside the IP header",
                        "this kernel runs them (they are checked like any frame)",
                    );
                    false
                }
                Err(e) if is_einval(&e) => true,
                Err(e) => panic!("test run of a bare Ethernet header: {e:?}"),
            }
        })
    }
}

/// EINVAL, the same on every Linux architecture.
pub(super) const EINVAL: i32 = 22;

pub(super) fn is_einval(e: &ProgramError) -> bool {
    matches!(e, ProgramError::SyscallError(s) if s.io_error.raw_os_error() == Some(EINVAL))
}
