//! Loading lbtrace's eBPF object: the one sequence every user of the programs goes through
//! (`Tracer`, the `BPF_PROG_TEST_RUN` tests, the kernel and ring benchmarks).
//!
//! ```text
//! Options ──EbpfLoader: globals, ring layout──▶ load ──▶ programs (verifier) ──▶ endpoint tables
//!         ──▶ drop-reason noise ──▶ Loaded { ebpf, layout } ──take_rings──▶ RawRings / Rings
//! ```
//!
//! Attaching is not done here: the tracer attaches to interfaces, the tests and benchmarks run
//! the programs with `BPF_PROG_TEST_RUN` and attach nothing.

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, RingBuf},
    programs::{RawTracePoint, SchedClassifier, Xdp},
};
use lbtrace_common::{
    EndpointKey, KernelOffsets, MAX_DROP_REASONS, MAX_ENDPOINTS, PORT_HASHED, PORT_SLOT_ENTRIES,
    PortEntry, PortSlot, SockOffsets, names,
};

use super::rings::{CpuRings, PacketRing, RingLayout, RingMode};

/// What the drop tracer needs to know about this kernel and this process.
#[derive(Clone, Debug)]
pub struct DropParams {
    /// Struct offsets read from the kernel's BTF.
    pub offsets: KernelOffsets,
    /// The traced network namespace's inode number.
    pub netns_inum: u32,
    /// Drop-reason values that are normal teardown, ignored in the kernel.
    pub noise: Vec<u32>,
    /// Which drop tracer to load.
    pub mode: DropMode,
}

/// Which `skb:kfree_skb` program runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropMode {
    /// `tp_kfree_skb`: the kernel's drop reason and the location (5.17 and later).
    Reason,
    /// `tp_kfree_skb_loc`: the location only, for kernels whose tracepoint has no `reason`
    /// argument (before 5.17).
    Location,
}

/// Which sent-reset tracer runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetMode {
    /// `tp_tcp_send_reset`: `tcp:tcp_send_reset(sk, skb, reason)` (6.10 and later) fires for
    /// every reset this host's TCP stack sends, with the kernel's `sk_rst_reason`.
    All,
    /// `tp_tcp_send_reset_sk`: `tcp:tcp_send_reset(sk, skb)` (before 6.10) fires for resets of
    /// full sockets only: the answers for no socket (no listener) and TIME_WAIT are not seen.
    Sockets,
}

impl ResetMode {
    pub fn program(self) -> &'static str {
        match self {
            Self::All => names::PROG_TCP_SEND_RESET,
            Self::Sockets => names::PROG_TCP_SEND_RESET_SK,
        }
    }

    /// `capabilities.resets`.
    pub fn name(mode: Option<Self>) -> &'static str {
        match mode {
            Some(Self::All) => "all",
            Some(Self::Sockets) => "sockets",
            None => "off",
        }
    }
}

impl DropMode {
    pub fn program(self) -> &'static str {
        match self {
            Self::Reason => names::PROG_KFREE_SKB,
            Self::Location => names::PROG_KFREE_SKB_LOCATION,
        }
    }

    /// The mode `LBTRACE_DROPS` forces (`reason` or `location`, hidden: to run the location
    /// variant on a kernel that has reasons), if any.
    pub fn forced() -> Result<Option<Self>> {
        match std::env::var("LBTRACE_DROPS").as_deref() {
            Ok("reason") => Ok(Some(Self::Reason)),
            Ok("location") => Ok(Some(Self::Location)),
            Ok(other) => bail!("LBTRACE_DROPS={other:?}: expected reason or location"),
            Err(_) => Ok(None),
        }
    }
}

/// Which programs to put through the verifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Programs {
    /// `tc_ingress` and `tc_egress` (TCX).
    pub tc: bool,
    /// `lbtrace_tc_in` and `lbtrace_tc_eg` (the same, for legacy TC filters).
    pub legacy_tc: bool,
    /// `xdp_ingress`.
    pub xdp: bool,
}

/// Options in: everything that differs between the users of the object.
#[derive(Clone, Debug)]
pub struct Options<'a> {
    /// The object: lbtrace's embedded one ([`super::EBPF_OBJECT`]) unless a candidate build is
    /// measured.
    pub object: &'a [u8],
    pub layout: RingLayout,
    /// Watched endpoints with their ids (the index of their `ENDPOINT_STATS` entry).
    pub endpoints: Vec<(EndpointKey, u32)>,
    /// Whether lookups try the all-ports entry (port 0); [`Options::new`] sets it when an
    /// endpoint has port 0.
    pub has_wildcard: bool,
    pub programs: Programs,
    /// Also load the drop tracer (`tp_kfree_skb`), with these parameters.
    pub drops: Option<DropParams>,
    /// Offsets for the retransmission tracer (`tp_tcp_retransmit`), which the caller loads and
    /// attaches itself when it wants it ([`load_tracepoint`]): a kernel that refuses it only
    /// loses retransmissions. It reads the namespace through the drop tracer's offsets. The
    /// reset tracers read the same offsets.
    pub retrans: Option<SockOffsets>,
    /// The data-path mode (`--data`): the packet programs follow data segments of watched
    /// tuples in the `FLOWS` map. Off: the verifier removes that code and `FLOWS` has 1 entry.
    pub data: bool,
}

impl<'a> Options<'a> {
    /// The TC and XDP programs over `endpoints`, no drop tracer.
    pub fn new(object: &'a [u8], layout: RingLayout, endpoints: Vec<(EndpointKey, u32)>) -> Self {
        let has_wildcard = endpoints.iter().any(|(k, _)| k.port == 0);
        Self {
            object,
            layout,
            endpoints,
            has_wildcard,
            programs: Programs {
                tc: true,
                legacy_tc: false,
                xdp: true,
            },
            drops: None,
            retrans: None,
            data: false,
        }
    }
}

/// The loaded object out: programs verified (not attached), maps filled.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub layout: RingLayout,
    /// What the user should know about how it was loaded (e.g. a memlock limit left low).
    pub notes: Vec<String>,
}

/// Lifts RLIMIT_MEMLOCK, which kernels before 5.11 charge BPF maps to (64 KiB by default on a
/// plain 5.10 system: not even the rings fit). From 5.11 maps are charged to the memory cgroup
/// and the limit does not matter, so failing to raise it (no CAP_SYS_RESOURCE) is only worth a
/// note where it does.
fn raise_memlock() -> Option<String> {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct it is given and nothing else.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } == 0 {
        return None;
    }
    let err = std::io::Error::last_os_error();
    if super::preflight::kernel_at_least(5, 11, 0) {
        log::debug!(
            "RLIMIT_MEMLOCK not raised ({err}); this kernel charges BPF maps to the memory cgroup"
        );
        return None;
    }
    Some(format!(
        "could not raise RLIMIT_MEMLOCK ({err}): this kernel charges BPF maps to it, so loading may fail; raise it (LimitMEMLOCK=infinity, ulimit -l unlimited)"
    ))
}

/// Loads the object with `opts`. The verifier's log is in the error when it rejects a program.
pub fn load(opts: &Options<'_>) -> Result<Loaded> {
    if opts.endpoints.len() > MAX_ENDPOINTS as usize {
        bail!(
            "too many endpoints ({}): lbtrace watches at most {MAX_ENDPOINTS}",
            opts.endpoints.len()
        );
    }
    let mut notes: Vec<String> = raise_memlock().into_iter().collect();
    let wildcard = u8::from(opts.has_wildcard);
    let mut loader = EbpfLoader::new();
    loader.override_global(names::GLOBAL_HAS_WILDCARD, &wildcard, true);
    let data_mode = u8::from(opts.data);
    // Required only to turn the mode on: an object built before the data path (the bench's
    // LBTRACE_BENCH_OBJECT) has no such constant and nothing to turn off.
    loader.override_global(names::GLOBAL_DATA_MODE, &data_mode, opts.data);
    if !opts.data {
        loader.map_max_entries(names::FLOWS, 1);
    }
    let inum;
    if let Some(d) = &opts.drops {
        inum = d.netns_inum;
        loader
            .override_global(names::GLOBAL_OFFSETS, &d.offsets, true)
            .override_global(names::GLOBAL_NETNS_INUM, &inum, true);
    }
    if let Some(so) = &opts.retrans {
        loader.override_global(names::GLOBAL_SOCK_OFFSETS, so, true);
    }
    opts.layout.apply(&mut loader)?;
    let mut ebpf = loader
        .load(opts.object)
        .context("loading the eBPF object")?;

    let Programs { tc, legacy_tc, xdp } = opts.programs;
    let tc_progs = [names::PROG_TC_INGRESS, names::PROG_TC_EGRESS]
        .into_iter()
        .filter(|_| tc);
    let legacy_progs = [names::PROG_LEGACY_TC_INGRESS, names::PROG_LEGACY_TC_EGRESS]
        .into_iter()
        .filter(|_| legacy_tc);
    let mode = opts.layout.mode;
    {
        for prog in tc_progs.chain(legacy_progs) {
            let prog = &mode.program(prog);
            let p: &mut SchedClassifier = ebpf
                .program_mut(prog)
                .with_context(|| format!("program {prog} missing from the eBPF object"))?
                .try_into()?;
            p.load()
                .with_context(|| format!("the kernel's verifier rejected {prog}"))?;
        }
    }
    if xdp {
        let prog = &mode.program(names::PROG_XDP_INGRESS);
        let p: &mut Xdp = ebpf
            .program_mut(prog)
            .with_context(|| format!("program {prog} missing from the eBPF object"))?
            .try_into()?;
        match p.load() {
            Ok(()) => {}
            // The program is frags-aware (`xdp.frags`, 5.18): older kernels refuse the flag.
            // XDP is opt-in, so it degrades to TC ingress rather than stopping lbtrace.
            Err(e) if !super::preflight::kernel_at_least(5, 18, 0) => notes.push(format!(
                "XDP is unavailable: this kernel refused {prog} (frags-aware XDP needs 5.18: {e}); ingress is traced with TC"
            )),
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("the kernel's verifier rejected {prog}")));
            }
        }
    }
    fill_endpoints(&mut ebpf, &opts.endpoints)?;
    if let Some(d) = &opts.drops {
        let mut noise: Array<_, u8> = Array::try_from(
            ebpf.map_mut(names::NOISE_REASONS)
                .context("NOISE_REASONS map missing")?,
        )?;
        for &v in d.noise.iter().filter(|_| d.mode == DropMode::Reason) {
            if v < MAX_DROP_REASONS {
                noise.set(v, 1, 0).context("filling NOISE_REASONS")?;
            }
        }
        let prog = d.mode.program();
        let p: &mut RawTracePoint = ebpf
            .program_mut(prog)
            .with_context(|| format!("program {prog} missing from the eBPF object"))?
            .try_into()?;
        p.load()
            .with_context(|| format!("the kernel's verifier rejected {prog}"))?;
    }
    Ok(Loaded {
        ebpf,
        layout: opts.layout.clone(),
        notes,
    })
}

/// Puts a socket tracer (`prog`: the retransmission or a reset tracer) of an object loaded with
/// [`Options::retrans`] (and [`Options::drops`], for the namespace) through the verifier.
pub fn load_tracepoint<'e>(ebpf: &'e mut Ebpf, prog: &str) -> Result<&'e mut RawTracePoint> {
    let p: &mut RawTracePoint = ebpf
        .program_mut(prog)
        .with_context(|| format!("program {prog} missing from the eBPF object"))?
        .try_into()?;
    p.load()
        .with_context(|| format!("the kernel's verifier rejected {prog}"))?;
    Ok(p)
}

/// The ring mode `LBTRACE_RINGS` forces (`percpu` or `ringbuf`, hidden: to run the ring-buffer
/// variant on a kernel that has BPF atomics), if any.
pub fn forced_ring_mode() -> Result<Option<RingMode>> {
    match std::env::var("LBTRACE_RINGS").as_deref() {
        Ok("percpu") => Ok(Some(RingMode::PerCpu)),
        Ok("ringbuf") => Ok(Some(RingMode::RingBuf)),
        Ok(other) => bail!("LBTRACE_RINGS={other:?}: expected percpu or ringbuf"),
        Err(_) => Ok(None),
    }
}

/// [`load`] with the per-CPU rings, or, when this kernel's verifier refuses them (no BPF atomic
/// fetch-add before 5.12), again with the ring-buffer program variants; `LBTRACE_RINGS` forces
/// one. The notes say when the ring buffer runs.
pub fn load_probing(opts: &mut Options<'_>) -> Result<Loaded> {
    if let Some(mode) = forced_ring_mode()? {
        opts.layout.mode = mode;
        let mut loaded = load(opts)?;
        if mode == RingMode::RingBuf {
            loaded
                .notes
                .push("packet events go through a BPF ring buffer (LBTRACE_RINGS=ringbuf)".into());
        }
        return Ok(loaded);
    }
    opts.layout.mode = RingMode::PerCpu;
    let first = match load(opts) {
        Ok(loaded) => return Ok(loaded),
        Err(e) => e,
    };
    opts.layout.mode = RingMode::RingBuf;
    match load(opts) {
        Ok(mut loaded) => {
            loaded.notes.push(format!(
                "packet events go through a BPF ring buffer: this kernel refused the per-CPU rings ({})",
                crate::one_line(&first)
            ));
            Ok(loaded)
        }
        Err(second) => Err(first.context(format!(
            "the ring-buffer variant failed too: {}",
            crate::one_line(&second)
        ))),
    }
}

/// The rings of a loaded object, taken out of it, without an async reactor: what test runs
/// drain after each call. [`super::rings::Rings::new`] registers them with tokio.
pub struct RawRings {
    /// The packet-event ring(s).
    pub packets: PacketRing,
    /// Wake-up records (a CPU number each).
    pub wakeup: RingBuf<MapData>,
    /// ICMP-error and drop events.
    pub priority: RingBuf<MapData>,
}

impl Loaded {
    /// Takes the rings out of the object (once).
    pub fn take_rings(&mut self) -> Result<RawRings> {
        take_rings(&mut self.ebpf, &self.layout)
    }
}

/// Takes the rings laid out as `layout` out of `ebpf` (once).
pub fn take_rings(ebpf: &mut Ebpf, layout: &RingLayout) -> Result<RawRings> {
    let mut ringbuf = |name: &str| -> Result<RingBuf<MapData>> {
        let map = ebpf
            .take_map(name)
            .with_context(|| format!("map {name} missing from the eBPF object"))?;
        RingBuf::try_from(map).with_context(|| format!("map {name} is not a ring buffer"))
    };
    let wakeup = ringbuf(names::RING_WAKEUP)?;
    let priority = ringbuf(names::PRIORITY_EVENTS)?;
    let packets = match layout.mode {
        RingMode::PerCpu => PacketRing::PerCpu(CpuRings::take(ebpf, layout)?),
        RingMode::RingBuf => PacketRing::RingBuf(ringbuf(names::PACKET_EVENTS)?),
    };
    Ok(RawRings {
        packets,
        wakeup,
        priority,
    })
}

/// Fills `ENDPOINTS` (key -> endpoint id), and `PORTS` / `PORT_SLOTS`, the per-port table the
/// programs look endpoints up in without hashing, so the maps never disagree.
fn fill_endpoints(ebpf: &mut Ebpf, keys: &[(EndpointKey, u32)]) -> Result<()> {
    {
        let mut eps: HashMap<_, EndpointKey, u32> = HashMap::try_from(
            ebpf.map_mut(names::ENDPOINTS)
                .context("ENDPOINTS map missing")?,
        )?;
        for (k, id) in keys {
            eps.insert(k, id, 0).context("filling ENDPOINTS")?;
        }
    }
    let (ports, slots) = port_table(keys);
    {
        let mut map: Array<_, PortSlot> = Array::try_from(
            ebpf.map_mut(names::PORT_SLOTS)
                .context("PORT_SLOTS map missing")?,
        )?;
        for (i, slot) in slots.iter().enumerate() {
            map.set(u32::try_from(i)?, slot, 0)
                .context("filling PORT_SLOTS")?;
        }
    }
    let mut map: Array<_, u16> =
        Array::try_from(ebpf.map_mut(names::PORTS).context("PORTS map missing")?)?;
    for (port, v) in ports {
        map.set(u32::from(port), v, 0).context("filling PORTS")?;
    }
    Ok(())
}

/// The `PORTS` entries and `PORT_SLOTS` for `keys`: each watched port (not 0, the all-ports
/// wildcard, which is only in the hash map) gets a slot with its endpoints, or `PORT_HASHED`
/// when it has more than a slot holds.
pub fn port_table(keys: &[(EndpointKey, u32)]) -> (Vec<(u16, u16)>, Vec<PortSlot>) {
    let mut by_port: std::collections::BTreeMap<u16, Vec<(EndpointKey, u32)>> = Default::default();
    for &(k, id) in keys {
        if k.port != 0 {
            let v = by_port.entry(k.port).or_default();
            if !v.iter().any(|(o, _)| *o == k) {
                v.push((k, id));
            }
        }
    }
    let mut ports = Vec::new();
    let mut slots = Vec::new();
    for (port, eps) in by_port {
        if eps.len() > PORT_SLOT_ENTRIES {
            ports.push((port, PORT_HASHED));
            continue;
        }
        let mut slot = PortSlot {
            len: u32::try_from(eps.len()).unwrap_or(0),
            ..Default::default()
        };
        for (e, (k, id)) in slot.entries.iter_mut().zip(eps) {
            *e = PortEntry {
                addr: k.addr_words(),
                id,
                family: k.family,
                _pad: [0; 3],
            };
        }
        slots.push(slot);
        // Slot indexes stay below MAX_PORT_SLOTS (= MAX_ENDPOINTS), so + 1 fits a u16.
        ports.push((port, u16::try_from(slots.len()).unwrap_or(PORT_HASHED)));
    }
    (ports, slots)
}

#[cfg(test)]
mod tests {
    use lbtrace_common::{PORT_HASHED, family};

    use super::*;

    fn key(last: u8, port: u16) -> EndpointKey {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[10, 0, 0, last]);
        EndpointKey {
            addr,
            port,
            family: family::V4,
            _pad: 0,
        }
    }

    #[test]
    fn port_table_gives_each_port_a_slot_until_it_is_full() {
        let mut keys = vec![(key(10, 443), 0), (key(0, 0), 1)];
        // 8 backends on :80 (a full slot), 9 on :8080 (hashed); a duplicate key counts once.
        keys.extend((0..8).map(|i| (key(20 + i, 80), 2 + u32::from(i))));
        keys.extend((0..9).map(|i| (key(40 + i, 8080), 10 + u32::from(i))));
        keys.push((key(20, 80), 2));
        let (ports, slots) = port_table(&keys);
        // Port 0 (every port of 10.0.0.0) is only in the hash map.
        assert_eq!(ports, vec![(80, 1), (443, 2), (8080, PORT_HASHED)]);
        assert_eq!(slots.len(), 2);
        assert_eq!(slots[0].len, 8);
        assert_eq!(slots[1].len, 1);
        let e = slots[1].entries[0];
        assert_eq!((e.id, e.family), (0, family::V4));
        assert_eq!(e.addr, key(10, 443).addr_words());
        assert_eq!(
            slots[0].entries.iter().map(|e| e.id).collect::<Vec<_>>(),
            (2..10).collect::<Vec<_>>()
        );
    }
}
