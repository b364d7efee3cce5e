//! Part 1 of the bench, kernel cost per packet: BPF_PROG_TEST_RUN (repeat 1,000,000) of
//! `tc_ingress` and `xdp_ingress` on hand-built frames, against an empty program of the same type
//! run on the same frame with the same repeat, interleaved (the order flips every round).
//!
//! Also the legacy TC program (`lbtrace_tc_in`, attached as a cls_bpf filter before 6.6) against
//! the same empty SCHED_CLS program (what an empty cls_bpf filter runs), live and as a stale
//! filter: one a SIGKILLed lbtrace left behind, whose rings nobody reads, so every event meets a
//! full ring. A test run does not go through the hook itself (clsact + cls_bpf, or TCX); that
//! dispatch is the same for lbtrace's filter and an empty one.

use anyhow::{Context as _, Result, bail, ensure};
use aya::{
    Ebpf, TestRun as _, TestRunOptions,
    maps::{MapData, RingBuf},
    programs::{SchedClassifier, Xdp},
};
use lbtrace::kernel::{
    loader::{self, RawRings},
    rings::{MIN_SLOTS, PacketRing, RingLayout, RingMode},
};
use lbtrace_common::{EVENT_SIZE, names};

use super::{
    bpf::{self, EmptyProg},
    frames::{self, UNWATCHED, VIP, VIP_PORT},
    interrupted,
    stats::Figure,
    sys,
};

pub const SECTION: &str = "kernel cost per packet (BPF_PROG_TEST_RUN, repeat 1,000,000)";
const REPEAT: u32 = 1_000_000;
/// Room for REPEAT records in the pinned CPU's ring (a power of two >= REPEAT), and in the
/// ICMP/drop ring buffer (8-byte header + 104-byte event each): every watched run writes its
/// event, none is lost, and the rings are drained after each call.
const BIG_SLOTS: u64 = 1 << 20;
const BIG_PRIORITY_RING: u32 = 128 << 20;
/// The smallest rings: MIN_SLOTS packet records / 36 ICMP records fit, then every write fails.
const TINY_PRIORITY_RING: u32 = 4096;
/// Every call runs on this CPU, and the objects are loaded with rings for CPUs 0..=BENCH_CPU only.
const BENCH_CPU: usize = 0;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Prog {
    Tc,
    Xdp,
    /// `tc_ingress_rb`: packet events through a BPF ring buffer (kernels before 5.12). Not in
    /// the goals: it is the fallback, measured to say what it costs.
    TcRingBuf,
    /// `lbtrace_tc_in`: the legacy TC filter's program (before 6.6). Not in the goals.
    LegacyTc,
    /// `lbtrace_tc_in` as a stale filter runs it: every case on the object whose rings are full
    /// and never read. Not in the goals.
    LegacyTcStale,
}

/// Every program measured, in table order.
const PROGS: [Prog; 5] = [
    Prog::Tc,
    Prog::Xdp,
    Prog::TcRingBuf,
    Prog::LegacyTc,
    Prog::LegacyTcStale,
];

impl Prog {
    pub fn label(self) -> &'static str {
        match self {
            Prog::Tc => "tc_ingress",
            Prog::Xdp => "xdp_ingress",
            Prog::TcRingBuf => "tc_ingress_rb",
            Prog::LegacyTc => "lbtrace_tc_in",
            Prog::LegacyTcStale => "lbtrace_tc_in, stale filter:",
        }
    }

    /// The program's name in the object.
    fn program(self) -> &'static str {
        match self {
            Prog::Tc => names::PROG_TC_INGRESS,
            Prog::Xdp => names::PROG_XDP_INGRESS,
            Prog::TcRingBuf => "tc_ingress_rb",
            Prog::LegacyTc | Prog::LegacyTcStale => names::PROG_LEGACY_TC_INGRESS,
        }
    }

    fn pass(self) -> u32 {
        match self {
            Prog::Xdp => bpf::XDP_PASS as u32,
            _ => bpf::TC_ACT_UNSPEC as u32,
        }
    }

    /// Whether the goals judge it (the default attachment of a current kernel).
    pub fn in_goals(self) -> bool {
        matches!(self, Prog::Tc | Prog::Xdp)
    }
}

/// Which loaded object a case runs on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Obj {
    /// Big rings, drained after every call.
    Main,
    /// Tiny rings, filled once and never drained.
    Full,
    /// Big rings, drained after every call, the data-path mode on (`--data`). Measured with
    /// `tc_ingress`, `xdp_ingress` and `tc_ingress_rb` (its own object: the ring-buffer variant).
    Data,
}

/// Which ring a case writes to (drained after each call on `Obj::Main`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ring {
    None,
    Events,
    Priority,
    /// One packet event on a flow's first data byte (the first call), none after.
    FirstOnly,
}

pub struct Case {
    pub name: &'static str,
    /// Packets without SYN/FIN/RST (the fast path), for the goals.
    pub kind: Kind,
    frame: Vec<u8>,
    obj: Obj,
    ring: Ring,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    NoControl,
    UnwatchedControl,
    WatchedEvent,
    Other,
}

pub fn cases() -> Vec<Case> {
    let c = |name, kind, frame, obj, ring| Case {
        name,
        kind,
        frame,
        obj,
        ring,
    };
    vec![
        c(
            "ARP (not IP)",
            Kind::NoControl,
            frames::arp(),
            Obj::Main,
            Ring::None,
        ),
        c("UDP", Kind::NoControl, frames::udp(), Obj::Main, Ring::None),
        c(
            "TCP data, watched tuple",
            Kind::NoControl,
            frames::tcp_data(VIP, VIP_PORT),
            Obj::Main,
            Ring::None,
        ),
        c(
            "TCP data, unwatched tuple",
            Kind::NoControl,
            frames::tcp_data(UNWATCHED, 80),
            Obj::Main,
            Ring::None,
        ),
        c(
            "SYN, unwatched",
            Kind::UnwatchedControl,
            frames::syn(UNWATCHED, 80),
            Obj::Main,
            Ring::None,
        ),
        c(
            "SYN, watched (event written)",
            Kind::WatchedEvent,
            frames::syn(VIP, VIP_PORT),
            Obj::Main,
            Ring::Events,
        ),
        c(
            "SYN, watched, ring buffer full",
            Kind::Other,
            frames::syn(VIP, VIP_PORT),
            Obj::Full,
            Ring::None,
        ),
        c(
            "ICMP error quoting a watched tuple",
            Kind::Other,
            frames::icmp_error(),
            Obj::Main,
            Ring::Priority,
        ),
        // The data-path mode (`--data`): the rows above are the same packets with it off.
        c(
            "--data: TCP data, unwatched tuple",
            Kind::Other,
            frames::tcp_data(UNWATCHED, 80),
            Obj::Data,
            Ring::None,
        ),
        // One byte at the flow's next-but-one sequence number: after the first call's first
        // byte, every run is the flow looked up and updated without an event (the path of
        // in-order data; a test run repeats one frame, so real in-order data cannot be
        // replayed).
        c(
            "--data: TCP data, watched, flow updated (no event)",
            Kind::Other,
            frames::tcp_data_from(40002, VIP, VIP_PORT, 1),
            Obj::Data,
            Ring::FirstOnly,
        ),
        // The same 100 bytes again and again: every run a retransmission event.
        c(
            "--data: TCP data, watched, seen again (event written)",
            Kind::Other,
            frames::tcp_data_from(40003, VIP, VIP_PORT, 100),
            Obj::Data,
            Ring::Events,
        ),
        // No row for a reply's first byte (where the HTTP status line is read): a flow marks it
        // once per direction, and a test run repeats one frame, so every run after the first
        // is the "seen again" or "flow updated" path above; a SYN resets the marks but a SYN
        // segment is never a first byte. Those rows are what other packets pay: the status
        // line is read on the first-byte mark only.
        c(
            "--data: SYN, watched (event written, flow reset)",
            Kind::Other,
            frames::syn(VIP, VIP_PORT),
            Obj::Data,
            Ring::Events,
        ),
    ]
}

/// Whether `prog` runs `case`: the data-path mode is measured with the programs a current kernel
/// (`tc_ingress`, `xdp_ingress`) and one before 5.12 (`tc_ingress_rb`) attach; the legacy TC
/// program is `tc_ingress`'s body under another name.
fn runs(prog: Prog, case: &Case) -> bool {
    case.obj != Obj::Data || matches!(prog, Prog::Tc | Prog::Xdp | Prog::TcRingBuf)
}

struct Loaded {
    ebpf: Ebpf,
    events: PacketRing,
    priority: RingBuf<MapData>,
}

/// lbtrace's embedded object, or the one `LBTRACE_BENCH_OBJECT` names (to measure a candidate
/// build of lbtrace-ebpf against the same frames and baselines).
pub fn object() -> Result<std::borrow::Cow<'static, [u8]>> {
    match std::env::var_os("LBTRACE_BENCH_OBJECT") {
        Some(path) => {
            eprintln!(
                "xtask: bench: kernel programs from {} (LBTRACE_BENCH_OBJECT)",
                path.to_string_lossy()
            );
            Ok(std::fs::read(&path)
                .with_context(|| format!("reading {}", path.to_string_lossy()))?
                .into())
        }
        None => Ok(lbtrace::kernel::EBPF_OBJECT.into()),
    }
}

/// [`load_with`], with the legacy TC programs where the object has them (an older one,
/// `LBTRACE_BENCH_OBJECT`, may not: then they are not measured).
fn load(slots: u64, priority_bytes: u32, mode: RingMode) -> Result<(Loaded, bool)> {
    match load_with(slots, priority_bytes, mode, mode == RingMode::PerCpu, false) {
        Ok(l) => Ok((l, mode == RingMode::PerCpu)),
        Err(e) if mode == RingMode::PerCpu => {
            eprintln!("xtask: bench: lbtrace_tc_in not measured: {e:#}");
            Ok((load_with(slots, priority_bytes, mode, false, false)?, false))
        }
        Err(e) => Err(e),
    }
}

fn load_with(
    slots: u64,
    priority_bytes: u32,
    mode: RingMode,
    legacy_tc: bool,
    data: bool,
) -> Result<Loaded> {
    // Rings for the bench CPU only (the calls are pinned there): 1M records of 104 bytes is
    // 104 MiB per CPU. The reader would be woken at a quarter full; here nobody reads during a
    // call, so the threshold is never reached: every record takes the production path of a
    // reader that keeps up (no wake-up record).
    let cpus = u32::try_from(BENCH_CPU + 1)?;
    let mut layout = RingLayout::for_cpus(
        cpus,
        cpus,
        slots * EVENT_SIZE as u64 * u64::from(cpus),
        priority_bytes,
    );
    layout.wakeup_events = u64::MAX;
    layout.priority_wakeup_bytes = u64::MAX;
    layout.mode = mode;
    // The ring-buffer variant's ring: room for `slots` records of 8 + 104 bytes.
    layout.shared_bytes = u32::try_from((slots * (8 + EVENT_SIZE as u64)).next_power_of_two())?;
    let object = object()?;
    let mut opts = loader::Options::new(&object, layout, frames::endpoints().to_vec());
    opts.programs.legacy_tc = legacy_tc;
    opts.data = data;
    let mut loaded = loader::load(&opts).context("loading lbtrace's eBPF object")?;
    let RawRings {
        packets: events,
        priority,
        ..
    } = loaded.take_rings()?;
    Ok(Loaded {
        ebpf: loaded.ebpf,
        events,
        priority,
    })
}

/// One BPF_PROG_TEST_RUN of an lbtrace program; the kernel's average ns per run.
pub fn run_lbtrace(ebpf: &Ebpf, prog: Prog, frame: &[u8], repeat: u32) -> Result<u32> {
    let mut out = vec![0u8; frame.len() + 256];
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        repeat,
        ..TestRunOptions::new()
    };
    let program = ebpf
        .program(prog.program())
        .with_context(|| format!("no {}", prog.program()))?;
    let res = match prog {
        Prog::Xdp => {
            let p: &Xdp = program.try_into()?;
            p.test_run(opts)
        }
        _ => {
            let p: &SchedClassifier = program.try_into()?;
            p.test_run(opts)
        }
    }
    .with_context(|| format!("BPF_PROG_TEST_RUN of {}", prog.label()))?;
    ensure!(
        res.return_value == prog.pass(),
        "{} returned {:#x}, not its pass verdict",
        prog.label(),
        res.return_value
    );
    Ok(u32::try_from(res.duration.as_nanos()).unwrap_or(u32::MAX))
}

fn drain_ringbuf(ring: &mut RingBuf<MapData>) -> u64 {
    let mut n = 0;
    while let Some(item) = ring.next() {
        drop(item);
        n += 1;
    }
    n
}

struct Baselines {
    tc: EmptyProg,
    xdp: EmptyProg,
}

impl Baselines {
    fn run(&self, prog: Prog, frame: &[u8]) -> Result<u32> {
        let (p, want) = match prog {
            Prog::Xdp => (&self.xdp, bpf::XDP_PASS as u32),
            _ => (&self.tc, bpf::TC_ACT_UNSPEC as u32),
        };
        let r = bpf::test_run(p.fd(), frame, REPEAT)?;
        ensure!(
            r.retval == want,
            "the empty program returned {:#x}",
            r.retval
        );
        Ok(r.ns)
    }
}

pub struct Result1 {
    pub figures: Vec<Figure>,
    /// (prog, case kind, figure index) for the goals.
    pub kinds: Vec<(Prog, Kind, usize)>,
}

pub fn measure(rounds: usize) -> Result<Result1> {
    // One CPU for every call: no migration between subject and baseline.
    let _pin = sys::pin_current_thread(BENCH_CPU);
    let (mut main, legacy) = load(BIG_SLOTS, BIG_PRIORITY_RING, RingMode::PerCpu)?;
    let (mut full, legacy_full) = load(MIN_SLOTS, TINY_PRIORITY_RING, RingMode::PerCpu)?;
    // An older object (LBTRACE_BENCH_OBJECT) may have no data-path mode: measured without.
    let mut data = match load_with(BIG_SLOTS, BIG_PRIORITY_RING, RingMode::PerCpu, false, true) {
        Ok(l) => Some(l),
        Err(e) => {
            eprintln!("xtask: bench: the data-path mode (--data) not measured: {e:#}");
            None
        }
    };
    // 4 KiB for the full one: 36 records, filled by the warm-up, then every write fails.
    // An older object (LBTRACE_BENCH_OBJECT) may have no ring-buffer variant: measured without.
    let rb = load(BIG_SLOTS, BIG_PRIORITY_RING, RingMode::RingBuf)
        .and_then(|(main, _)| Ok((main, load(1, TINY_PRIORITY_RING, RingMode::RingBuf)?.0)));
    let (mut main_rb, mut full_rb) = match rb {
        Ok(pair) => (Some(pair.0), Some(pair.1)),
        Err(e) => {
            eprintln!("xtask: bench: tc_ingress_rb not measured: {e:#}");
            (None, None)
        }
    };
    // The ring-buffer variant with the data-path mode: an object of its own (one ring mode per
    // object), its flows apart from the per-CPU object's.
    let mut data_rb = match (&data, &main_rb) {
        (Some(_), Some(_)) => Some(load_with(
            BIG_SLOTS,
            BIG_PRIORITY_RING,
            RingMode::RingBuf,
            false,
            true,
        )?),
        _ => None,
    };
    let progs: Vec<Prog> = PROGS
        .into_iter()
        .filter(|p| *p != Prog::TcRingBuf || main_rb.is_some())
        .filter(|p| !matches!(p, Prog::LegacyTc | Prog::LegacyTcStale) || (legacy && legacy_full))
        .collect();
    let base = Baselines {
        tc: EmptyProg::load(bpf::BPF_PROG_TYPE_SCHED_CLS, bpf::TC_ACT_UNSPEC)?,
        xdp: EmptyProg::load(bpf::BPF_PROG_TYPE_XDP, bpf::XDP_PASS)?,
    };
    let cases: Vec<Case> = cases()
        .into_iter()
        .filter(|c| c.obj != Obj::Data || data.is_some())
        .collect();
    let mut figures = Vec::new();
    let mut kinds = Vec::new();
    for &prog in &progs {
        for case in cases.iter().filter(|c| runs(prog, c)) {
            if prog.in_goals() {
                kinds.push((prog, case.kind, figures.len()));
            }
            let mut f = Figure::new(SECTION, format!("{} {}", prog.label(), case.name), "ns")
                .with_baseline("empty prog");
            if matches!(case.ring, Ring::Events | Ring::Priority) {
                f.note = "event written and drained after each call".to_owned();
            }
            if case.obj == Obj::Full || (prog == Prog::LegacyTcStale && case.ring != Ring::None) {
                f.note = "ring full: no slot, loss counted".to_owned();
            }
            figures.push(f);
        }
    }

    let mut one = |prog: Prog, case: &Case| -> Result<u32> {
        // A stale filter's rings are full whatever the case.
        let obj = if prog == Prog::LegacyTcStale {
            Obj::Full
        } else {
            case.obj
        };
        let l = match (obj, prog) {
            (Obj::Main, Prog::TcRingBuf) => main_rb.as_mut().context("no ring-buffer variant")?,
            (Obj::Full, Prog::TcRingBuf) => full_rb.as_mut().context("no ring-buffer variant")?,
            (Obj::Data, Prog::TcRingBuf) => data_rb.as_mut().context("no ring-buffer variant")?,
            (Obj::Data, _) => data.as_mut().context("no data-path mode")?,
            (Obj::Main, _) => &mut main,
            (Obj::Full, _) => &mut full,
        };
        let ns = run_lbtrace(&l.ebpf, prog, &case.frame, REPEAT)?;
        if obj != Obj::Full {
            let want = match case.ring {
                Ring::None => 0,
                Ring::FirstOnly => 1,
                Ring::Events | Ring::Priority => u64::from(REPEAT),
            };
            let got = l.events.drain(|_| {}) + drain_ringbuf(&mut l.priority);
            // The first-only case's first event came in the warm-up.
            let ok = got == want || (case.ring == Ring::FirstOnly && got == 0);
            if !ok {
                bail!(
                    "{} {}: {got} ring records after {REPEAT} runs, expected {want}",
                    prog.label(),
                    case.name
                );
            }
        }
        Ok(ns)
    };

    // Warm-up: caches, the full ring filled, nothing recorded.
    for &prog in &progs {
        for case in cases.iter().filter(|c| runs(prog, c)) {
            one(prog, case)?;
            base.run(prog, &case.frame)?;
        }
    }
    for round in 0..rounds {
        interrupted()?;
        let mut i = 0;
        for &prog in &progs {
            for case in cases.iter().filter(|c| runs(prog, c)) {
                let (s, b) = if round % 2 == 0 {
                    let b = base.run(prog, &case.frame)?;
                    (one(prog, case)?, b)
                } else {
                    let s = one(prog, case)?;
                    (s, base.run(prog, &case.frame)?)
                };
                figures[i].samples.push(f64::from(s));
                if let Some(bl) = figures[i].baseline.as_mut() {
                    bl.samples.push(f64::from(b));
                }
                i += 1;
            }
        }
        eprintln!("xtask: bench: kernel round {}/{rounds} done", round + 1);
    }
    Ok(Result1 { figures, kinds })
}
