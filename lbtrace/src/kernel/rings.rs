//! The two ring buffers, drained from tokio.
//!
//! The kernel submits with `BPF_RB_NO_WAKEUP` unless the unread data passes a threshold, so a
//! burst costs no wakeup per event; this side drains on a short timer tick or when woken.

use std::time::Duration;

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use lbtrace_common::names;
use tokio::io::unix::AsyncFd;

/// How often the rings are drained when the kernel did not wake us: the latency of `trace`
/// output and the time a ring must absorb a burst in (size the ring for peak rate x this x 2).
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

pub struct Rings {
    events: AsyncFd<RingBuf<MapData>>,
    priority: AsyncFd<RingBuf<MapData>>,
}

fn take(ebpf: &mut Ebpf, name: &str) -> Result<AsyncFd<RingBuf<MapData>>> {
    let map = ebpf
        .take_map(name)
        .with_context(|| format!("map {name} missing from the eBPF object"))?;
    let rb = RingBuf::try_from(map).with_context(|| format!("map {name} is not a ring buffer"))?;
    // SAFETY: the RingBuf owns its map fd and is moved into the AsyncFd, so the fd stays open for
    // as long as it is registered.
    unsafe { AsyncFd::register(rb) }
        .map_err(|e| anyhow::anyhow!("registering ring buffer {name} with the reactor: {e}"))
}

impl Rings {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            events: take(ebpf, names::EVENTS)?,
            priority: take(ebpf, names::PRIORITY_EVENTS)?,
        })
    }

    /// Waits until a ring signals data or the poll interval passes.
    pub async fn wait(&self) {
        tokio::select! {
            r = self.events.readable() => if let Ok(mut g) = r { g.clear_ready() },
            r = self.priority.readable() => if let Ok(mut g) = r { g.clear_ready() },
            () = tokio::time::sleep(POLL_INTERVAL) => {}
        }
    }

    /// Hands every unread record of both rings to `f`; returns how many.
    pub fn drain(&mut self, mut f: impl FnMut(&[u8])) -> u64 {
        let mut n = 0;
        for ring in [&mut self.priority, &mut self.events] {
            let rb = ring.get_mut();
            while let Some(item) = rb.next() {
                f(&item);
                n += 1;
            }
        }
        n
    }
}
