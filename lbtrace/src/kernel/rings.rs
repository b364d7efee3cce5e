//! The event rings, drained from tokio.
//!
//! Packet events go to one single-producer ring per CPU (`EVENTS` slots + `RING_CURSORS`, two
//! BPF array maps this side maps into memory): writing a record there is plain stores and one
//! atomic add, against two helper calls and a spinlock for a BPF ring buffer. They are polled on
//! a short timer; a CPU whose ring reaches a quarter full also writes a wake-up record to the
//! small `RING_WAKEUP` ring buffer, which wakes this side at once. ICMP-error and drop events go
//! to the `PRIORITY_EVENTS` BPF ring buffer (the drop tracer can interrupt the packet programs,
//! so those need its multi-producer reserve).

use std::{
    os::fd::AsFd as _,
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Map, MapData, RingBuf},
};

use super::loader::RawRings;
use lbtrace_common::{EVENT_SIZE, RING_CURSOR_HEAD, RING_CURSOR_SIZE, RING_CURSOR_TAIL, names};
use tokio::io::unix::AsyncFd;

/// How often the rings are drained when the kernel did not wake us: the latency of `trace`
/// output and the time a ring must absorb a burst in (size the ring for peak rate x this x 2).
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Fewest records per CPU ring, whatever the requested size.
pub const MIN_SLOTS: u64 = 256;

/// Where packet events go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RingMode {
    /// One single-producer ring per CPU (`EVENTS`), published with a BPF atomic fetch-add: the
    /// default, the cheapest per event; the verifier accepts it from 5.12.
    PerCpu,
    /// The `PACKET_EVENTS` BPF ring buffer (5.8+), through the `_rb` program variants: for
    /// kernels that refuse the atomic. The same counters account for every event.
    RingBuf,
}

impl RingMode {
    /// The name of program `base` (a `names::PROG_*`) in this mode.
    pub fn program(self, base: &str) -> String {
        match self {
            Self::PerCpu => base.to_owned(),
            Self::RingBuf => format!("{base}{}", names::RINGBUF_VARIANT_SUFFIX),
        }
    }
}

/// How the rings are sized for this host: set on the loader before the object is loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingLayout {
    pub mode: RingMode,
    /// Bytes of the `PACKET_EVENTS` ring buffer in [`RingMode::RingBuf`] (the requested event
    /// bytes rounded down to a power of two, at least a page).
    pub shared_bytes: u32,
    /// Possible CPUs (`bpf_get_smp_processor_id()` is below this).
    pub cpus: u32,
    /// Records per CPU ring (a power of two).
    pub slots: u64,
    /// Unread records of one CPU at which it wakes the reader (a quarter of its ring).
    pub wakeup_events: u64,
    /// Bytes of the `PRIORITY_EVENTS` ring buffer.
    pub priority_bytes: u32,
    /// Unread bytes of `PRIORITY_EVENTS` above which a submit wakes the reader.
    pub priority_wakeup_bytes: u64,
}

impl RingLayout {
    /// `event_bytes` of packet-event records, split evenly over the online CPUs (each ring
    /// rounded down to a power of two, at least [`MIN_SLOTS`] records). There is a ring for every
    /// possible CPU (a CPU brought online later needs one), so where more CPUs are possible than
    /// online the mapping is that much larger.
    pub fn new(event_bytes: u64, priority_bytes: u32) -> Result<Self> {
        let count = |r: Result<usize, (&str, std::io::Error)>| {
            r.map_err(|(path, e)| anyhow::anyhow!("reading {path}: {e}"))
                .and_then(|n| u32::try_from(n).context("CPU count"))
        };
        let cpus = count(aya::util::nr_cpus())?;
        let online = count(aya::util::online_cpus().map(|v| v.len()))?;
        Ok(Self::for_cpus(cpus, online, event_bytes, priority_bytes))
    }

    /// The layout for `cpus` possible CPUs of which `online` share `event_bytes`.
    pub fn for_cpus(cpus: u32, online: u32, event_bytes: u64, priority_bytes: u32) -> Self {
        let cpus = cpus.max(1);
        let per_cpu = event_bytes / EVENT_SIZE as u64 / u64::from(online.clamp(1, cpus));
        let slots = if per_cpu <= MIN_SLOTS {
            MIN_SLOTS
        } else {
            1 << per_cpu.ilog2()
        };
        let shared = event_bytes.clamp(4096, 1 << 30);
        Self {
            mode: RingMode::PerCpu,
            shared_bytes: u32::try_from(1u64 << shared.ilog2()).unwrap_or(1 << 30),
            cpus,
            slots,
            wakeup_events: slots / 4,
            priority_bytes,
            priority_wakeup_bytes: u64::from(priority_bytes / 4),
        }
    }

    /// Records in `EVENTS` (all CPUs): one per CPU (unused) with the shared ring.
    pub fn records(&self) -> u64 {
        match self.mode {
            RingMode::PerCpu => u64::from(self.cpus) * self.slots,
            RingMode::RingBuf => u64::from(self.cpus),
        }
    }

    /// Bytes of packet-event records in all.
    pub fn event_bytes(&self) -> u64 {
        self.records() * EVENT_SIZE as u64
    }

    /// Sizes the maps and sets the globals the programs read the layout from.
    pub fn apply<'a>(&'a self, loader: &mut EbpfLoader<'a>) -> Result<()> {
        let records = u32::try_from(self.records()).with_context(|| {
            format!(
                "{} CPUs x {} event records is too many for one map",
                self.cpus, self.slots
            )
        })?;
        // The ring of the other mode stays as small as it can be.
        let shared = match self.mode {
            RingMode::PerCpu => u32::try_from(page_size()).unwrap_or(4096),
            RingMode::RingBuf => self.shared_bytes,
        };
        loader
            .map_max_entries(names::EVENTS, records)
            .map_max_entries(names::RING_CURSORS, self.cpus)
            .map_max_entries(names::PACKET_EVENTS, shared)
            .map_max_entries(names::PRIORITY_EVENTS, self.priority_bytes)
            .override_global(names::GLOBAL_RING_SLOTS, &self.slots, true)
            .override_global(names::GLOBAL_WAKEUP_EVENTS, &self.wakeup_events, true)
            .override_global(
                names::GLOBAL_PRIORITY_WAKEUP_BYTES,
                &self.priority_wakeup_bytes,
                true,
            );
        Ok(())
    }
}

/// A shared mapping of an mmapable BPF array map.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    _map: MapData,
}

impl Mapping {
    fn new(ebpf: &mut Ebpf, name: &str, len: usize) -> Result<Self> {
        let map = match ebpf
            .take_map(name)
            .with_context(|| format!("map {name} missing from the eBPF object"))?
        {
            Map::Array(m) => m,
            _ => bail!("map {name} is not an array"),
        };
        let page = page_size();
        let len = len.div_ceil(page) * page;
        // SAFETY: a fresh shared mapping of the map's fd; the kernel checks the length against
        // the map and that the map is mmapable. It stays valid until munmap in Drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&map.fd().as_fd()),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            bail!(
                "mapping the {name} map into memory: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(Self {
            ptr: NonNull::new(ptr.cast()).context("mmap returned NULL")?,
            len,
            _map: map,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the region mapped in `new`, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

/// The reader's side of the per-CPU packet-event rings.
pub struct CpuRings {
    events: Mapping,
    cursors: Mapping,
    cpus: usize,
    slots: u64,
}

// SAFETY: the mappings are plain shared memory owned by this value; the kernel side only ever
// touches `head` and free slots, this side `tail` and published slots.
unsafe impl Send for CpuRings {}

impl CpuRings {
    pub fn take(ebpf: &mut Ebpf, layout: &RingLayout) -> Result<Self> {
        let records = usize::try_from(layout.records())?;
        let cpus = layout.cpus as usize;
        Ok(Self {
            events: Mapping::new(ebpf, names::EVENTS, records * EVENT_SIZE)?,
            cursors: Mapping::new(ebpf, names::RING_CURSORS, cpus * RING_CURSOR_SIZE)?,
            cpus,
            slots: layout.slots,
        })
    }

    fn cursor(&self, cpu: usize, off: usize) -> &AtomicU64 {
        debug_assert!(cpu < self.cpus);
        // SAFETY: in bounds (cpu < cpus entries of RING_CURSOR_SIZE bytes), 8-byte aligned (the
        // mapping is page aligned, the offsets multiples of 8), and only accessed atomically.
        unsafe {
            AtomicU64::from_ptr(
                self.cursors
                    .ptr
                    .as_ptr()
                    .add(cpu * RING_CURSOR_SIZE + off)
                    .cast(),
            )
        }
    }

    /// Records published and not yet consumed, over all CPUs.
    pub fn unread(&self) -> u64 {
        (0..self.cpus)
            .map(|cpu| {
                let head = self.cursor(cpu, RING_CURSOR_HEAD).load(Ordering::Acquire);
                head.wrapping_sub(self.cursor(cpu, RING_CURSOR_TAIL).load(Ordering::Relaxed))
            })
            .sum()
    }

    /// Hands every published record to `f`, CPU by CPU, and gives the slots back; returns how
    /// many.
    pub fn drain(&mut self, mut f: impl FnMut(&[u8])) -> u64 {
        let mut n = 0;
        for cpu in 0..self.cpus {
            let head = self.cursor(cpu, RING_CURSOR_HEAD).load(Ordering::Acquire);
            let tail_ref = self.cursor(cpu, RING_CURSOR_TAIL);
            let mut tail = tail_ref.load(Ordering::Relaxed);
            if head.wrapping_sub(tail) > self.slots {
                // Cannot happen with lbtrace's programs (they never pass a full ring); should
                // the cursors ever disagree, read what the ring can hold rather than garbage.
                tail = head - self.slots;
            }
            let base = cpu * self.slots as usize;
            let mask = self.slots - 1;
            while tail != head {
                // Masked below `slots`, which fits a usize (the mapping holds cpus * slots).
                let idx = base + (tail & mask) as usize;
                // SAFETY: idx < cpus * slots records of the mapping; the slot was published
                // (acquire load of head) and is not reused before `tail` moves past it.
                let rec = unsafe {
                    std::slice::from_raw_parts(
                        self.events.ptr.as_ptr().add(idx * EVENT_SIZE),
                        EVENT_SIZE,
                    )
                };
                f(rec);
                tail += 1;
                n += 1;
            }
            // Release: the records were read before their slots are handed back.
            tail_ref.store(tail, Ordering::Release);
        }
        n
    }
}

/// The packet-event ring of either mode, without a reactor.
pub enum PacketRing {
    PerCpu(CpuRings),
    RingBuf(RingBuf<MapData>),
}

impl PacketRing {
    /// Hands every unread packet record to `f`; returns how many.
    pub fn drain(&mut self, mut f: impl FnMut(&[u8])) -> u64 {
        match self {
            Self::PerCpu(r) => r.drain(f),
            Self::RingBuf(rb) => {
                let mut n = 0;
                while let Some(item) = rb.next() {
                    f(&item);
                    n += 1;
                }
                n
            }
        }
    }
}

/// Every ring of a loaded object, registered with tokio: what `trace`, `check` and `watch` drain.
pub struct Rings {
    packets: Packets,
    wakeup: AsyncFd<RingBuf<MapData>>,
    priority: AsyncFd<RingBuf<MapData>>,
    /// On kernels without drop reasons: what maps a drop's location to a reason
    /// (`session::drain` applies it).
    pub locations: Option<std::sync::Arc<super::kallsyms::DropLocations>>,
}

enum Packets {
    PerCpu(CpuRings),
    RingBuf(AsyncFd<RingBuf<MapData>>),
}

fn register(rb: RingBuf<MapData>, name: &str) -> Result<AsyncFd<RingBuf<MapData>>> {
    // SAFETY: the RingBuf owns its map fd and is moved into the AsyncFd, so the fd stays open for
    // as long as it is registered.
    unsafe { AsyncFd::register(rb) }
        .map_err(|e| anyhow::anyhow!("registering ring buffer {name} with the reactor: {e}"))
}

impl Rings {
    /// The rings of a loaded object, registered with the current tokio reactor.
    pub fn new(raw: RawRings) -> Result<Self> {
        let RawRings {
            packets,
            wakeup,
            priority,
        } = raw;
        Ok(Self {
            packets: match packets {
                PacketRing::PerCpu(r) => Packets::PerCpu(r),
                PacketRing::RingBuf(rb) => Packets::RingBuf(register(rb, names::PACKET_EVENTS)?),
            },
            wakeup: register(wakeup, names::RING_WAKEUP)?,
            priority: register(priority, names::PRIORITY_EVENTS)?,
            locations: None,
        })
    }

    /// Waits until a ring signals data or the poll interval passes.
    pub async fn wait(&self) {
        let shared = async {
            match &self.packets {
                Packets::RingBuf(rb) => {
                    if let Ok(mut g) = rb.readable().await {
                        g.clear_ready();
                    }
                }
                Packets::PerCpu(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            r = self.wakeup.readable() => if let Ok(mut g) = r { g.clear_ready() },
            r = self.priority.readable() => if let Ok(mut g) = r { g.clear_ready() },
            () = shared => {}
            () = tokio::time::sleep(POLL_INTERVAL) => {}
        }
    }

    /// Hands every unread record (ICMP and drop events first, then packet events CPU by CPU) to
    /// `f`; returns how many. Callers sort by timestamp.
    pub fn drain(&mut self, mut f: impl FnMut(&[u8])) -> u64 {
        let mut n = 0;
        let rb = self.priority.get_mut();
        while let Some(item) = rb.next() {
            f(&item);
            n += 1;
        }
        // Wake-up records only carry the CPU number: the drain below reads every CPU anyway.
        let wk = self.wakeup.get_mut();
        while wk.next().is_some() {}
        n + match &mut self.packets {
            Packets::PerCpu(r) => r.drain(f),
            Packets::RingBuf(rb) => {
                let rb = rb.get_mut();
                let mut m = 0;
                while let Some(item) = rb.next() {
                    f(&item);
                    m += 1;
                }
                m
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_splits_the_bytes_over_the_cpus_in_powers_of_two() {
        // 8 MiB over 2 CPUs: 40,329 records each, rounded down to 32,768.
        let l = RingLayout::for_cpus(2, 2, 8 << 20, 1 << 20);
        assert_eq!(l.slots, 32_768);
        assert_eq!(l.wakeup_events, 8_192);
        assert_eq!(l.records(), 65_536);
        assert_eq!(l.event_bytes(), 65_536 * 104);
        assert_eq!(l.priority_wakeup_bytes, 256 << 10);
        // Many CPUs, small ring: never below the minimum.
        let l = RingLayout::for_cpus(256, 256, 1 << 20, 1 << 16);
        assert_eq!(l.slots, MIN_SLOTS);
        // Exactly a power of two stays as it is.
        let l = RingLayout::for_cpus(1, 1, 1024 * 104, 4096);
        assert_eq!(l.slots, 1024);
    }

    #[test]
    fn ring_buffer_mode_sizes_one_shared_ring_and_names_the_variants() {
        // 8 MiB asked: the shared ring gets all of it; 5 MB rounds down to 4 MiB; never below a
        // page or above 1 GiB.
        assert_eq!(
            RingLayout::for_cpus(2, 2, 8 << 20, 1 << 20).shared_bytes,
            8 << 20
        );
        assert_eq!(
            RingLayout::for_cpus(2, 2, 5_000_000, 1 << 20).shared_bytes,
            4 << 20
        );
        assert_eq!(RingLayout::for_cpus(2, 2, 1, 1 << 20).shared_bytes, 4096);
        assert_eq!(
            RingLayout::for_cpus(2, 2, 8 << 30, 1 << 20).shared_bytes,
            1 << 30
        );
        let mut l = RingLayout::for_cpus(4, 4, 8 << 20, 1 << 20);
        assert_eq!(l.mode, RingMode::PerCpu);
        assert_eq!(l.records(), 4 * l.slots);
        // The per-CPU array shrinks to one (unused) record per CPU.
        l.mode = RingMode::RingBuf;
        assert_eq!(l.records(), 4);
        assert_eq!(RingMode::PerCpu.program("tc_ingress"), "tc_ingress");
        assert_eq!(RingMode::RingBuf.program("tc_ingress"), "tc_ingress_rb");
        assert_eq!(
            RingMode::RingBuf.program("lbtrace_tc_in"),
            "lbtrace_tc_in_rb"
        );
    }

    #[test]
    fn layout_sizes_by_online_cpus_and_allocates_for_possible_ones() {
        // 4 online of 64 possible: each ring gets a quarter of 8 MiB, and there are 64 of them.
        let l = RingLayout::for_cpus(64, 4, 8 << 20, 1 << 20);
        assert_eq!(l.slots, 16_384);
        assert_eq!(l.records(), 64 * 16_384);
        // More online than possible cannot happen; it is clamped rather than trusted.
        assert_eq!(RingLayout::for_cpus(2, 8, 8 << 20, 1 << 20).slots, 32_768);
    }
}
