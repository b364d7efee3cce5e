//! Writing events: packet events to this CPU's ring in `EVENTS`, ICMP-error and drop events to
//! the `PRIORITY_EVENTS` BPF ring buffer. Every write is counted as emitted or lost, so userspace
//! can account for each event exactly.

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    maps::RingBuf,
};
use lbtrace_common::{Event, counter};

use crate::maps::{
    EVENTS, PACKET_EVENTS, PRIORITY_EVENTS, PRIORITY_WAKEUP_BYTES, RING_CURSORS, RING_SLOTS,
    RING_WAKEUP, WAKEUP_EVENTS, count,
};

/// Makes the record before `head` visible to the reader, which loads `head` with acquire: a
/// fetching atomic add, which every JIT emits fully ordered (x86-64: `lock xadd`), so the
/// record's stores cannot pass it, in the compiler or in the CPU. (The BPF target has no
/// compare-and-swap, so core's atomic types offer no `fetch_add`, and LLVM has no lowering for a
/// release store or a fence before cpu v4; the intrinsic is the plain atomic add.)
///
/// # Safety
/// `cursor` points to a valid, 8-byte aligned `u64` for the whole call.
#[inline(always)]
unsafe fn publish(cursor: *mut u64, head: u64) {
    use core::intrinsics::{AtomicOrdering, atomic_xadd};
    // SAFETY: the caller's guarantee.
    let prev = unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(cursor, 1) };
    // A used result keeps it a fetching add: a non-fetching one is not ordered on every JIT.
    core::hint::black_box(prev == head - 1);
}

/// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC in nanoseconds, the clock of `Event::ts_ns`.
#[inline(always)]
pub(crate) fn now_ns() -> u64 {
    // SAFETY: a helper without arguments or side effects.
    unsafe { bpf_ktime_get_ns() }
}

/// The CPU this program runs on.
#[inline(always)]
fn this_cpu() -> u32 {
    // SAFETY: a helper without arguments or side effects.
    unsafe { bpf_get_smp_processor_id() }
}

/// The submit flags of the `n`th event of this CPU on `ring`: the reader is only woken when the
/// unread data passes `PRIORITY_WAKEUP_BYTES`, asked on every 64th event; otherwise it finds the
/// events on its next timer tick.
#[inline(always)]
fn wakeup_flags(ring: &RingBuf, n: u64) -> u64 {
    let wake = n.is_multiple_of(64)
        && ring.query(BPF_RB_AVAIL_DATA as u64) >= PRIORITY_WAKEUP_BYTES.load();
    u64::from(if wake {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    })
}

/// Where a program variant writes its packet events; chosen at load time by loading one variant
/// or the other.
pub(crate) trait PacketSink {
    fn emit(fill_in: impl FnOnce(&mut Event));
}

/// This CPU's ring in `EVENTS` (the default: plain stores and one atomic add, 5.12+).
pub(crate) struct PerCpuRings;

impl PacketSink for PerCpuRings {
    #[inline(always)]
    fn emit(fill_in: impl FnOnce(&mut Event)) {
        emit_packet(fill_in);
    }
}

/// The `PACKET_EVENTS` BPF ring buffer (5.8+), for kernels that refuse the atomic fetch-add.
/// Counted in the same counters as the per-CPU rings.
pub(crate) struct SharedRing;

impl PacketSink for SharedRing {
    #[inline(always)]
    fn emit(fill_in: impl FnOnce(&mut Event)) {
        match PACKET_EVENTS.reserve::<Event>(0) {
            Some(mut entry) => {
                let mut ev = Event::zeroed();
                fill_in(&mut ev);
                entry.write(ev);
                let n = count(counter::EVENTS_EMITTED);
                entry.submit(wakeup_flags(&PACKET_EVENTS, n));
            }
            None => {
                count(counter::EVENTS_LOST);
            }
        }
    }
}

/// Writes a packet event to this CPU's ring, counting it as emitted or lost (ring full). The
/// record is built only once there is room, straight into its slot. The reader polls on a timer;
/// a CPU whose unread records reach `WAKEUP_EVENTS` also wakes it, once per crossing.
#[inline(always)]
fn emit_packet(fill_in: impl FnOnce(&mut Event)) {
    let cpu = this_cpu();
    let Some(cur) = RING_CURSORS.get_ptr_mut(cpu) else {
        count(counter::EVENTS_LOST);
        return;
    };
    let slots = RING_SLOTS.load();
    // SAFETY: `cur` is this CPU's `RING_CURSORS` entry, valid for the program run. Only this
    // CPU's programs write `head`, and they never interrupt each other (see `EVENTS`); the reader
    // writes `tail`, read volatile below.
    let head = unsafe { (*cur).head };
    // SAFETY: see above.
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
    // SAFETY: `slot` is an `EVENTS` entry of this CPU's ring past its unread records
    // (`fill < slots`): the reader does not look at it until `head` moves. The stores stay in the
    // record and are aligned: `reason` (u32), `outer_src` + `outer_dst` (32 bytes from offset 64,
    // as four u64), `icmp_type` + `icmp_code` (one u16), `_pad` (one u16; `mss` is filled in).
    unsafe {
        write_volatile(addr_of_mut!((*slot).reason), 0);
        let outer = addr_of_mut!((*slot).outer_src).cast::<u64>();
        for i in 0..4 {
            write_volatile(outer.add(i), 0);
        }
        write_volatile(addr_of_mut!((*slot).icmp_type).cast::<u16>(), 0);
        write_volatile(addr_of_mut!((*slot).encap).cast::<u16>(), 0);
        fill_in(&mut *slot);
    }
    // SAFETY: see above; the cursors are 8-byte aligned (`RingCursor` is repr(C) of u64s).
    unsafe { publish(addr_of_mut!((*cur).head), head + 1) };
    count(counter::EVENTS_EMITTED);
    if fill + 1 == WAKEUP_EVENTS.load() {
        let c = u64::from(cpu);
        // A full wake-up ring only delays the reader to its next timer tick.
        let _ = RING_WAKEUP.output::<u64>(c, BPF_RB_FORCE_WAKEUP as u64);
    }
}

/// Writes `ev` to the `PRIORITY_EVENTS` ring buffer, counting it as emitted or lost. The reader
/// is only woken up when the unread data passes `PRIORITY_WAKEUP_BYTES`, asked on every 64th
/// event of a CPU: otherwise it finds the events on its next timer tick.
#[inline(always)]
pub(crate) fn emit_priority(ev: impl FnOnce() -> Event) {
    match PRIORITY_EVENTS.reserve::<Event>(0) {
        Some(mut entry) => {
            entry.write(ev());
            let n = count(counter::PRIORITY_EMITTED);
            entry.submit(wakeup_flags(&PRIORITY_EVENTS, n));
        }
        None => {
            count(counter::PRIORITY_LOST);
        }
    }
}
