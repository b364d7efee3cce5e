//! Part 4 of the bench, ring-buffer stress: how fast lbtrace's own userspace path drains and
//! decodes events.
//!
//! The object is loaded as `lbtrace trace` loads it (8 MiB of packet records split over the
//! per-CPU rings, wake-up at a quarter of a ring); a producer thread runs `tc_ingress` through BPF_PROG_TEST_RUN (repeat 100,000 watched SYNs
//! per call, in a loop) on one CPU while a consumer thread on another CPU drains with
//! `kernel::rings::Rings` and decodes with `session::drain` under a tokio current-thread runtime,
//! as lbtrace does. The accounting must be exact: emitted == delivered + unread at the end,
//! emitted + lost == produced.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use lbtrace::kernel::{
    counters,
    loader::{self, Programs},
    rings::{RingLayout, Rings},
};

use super::{
    frames::{self, VIP, VIP_PORT},
    interrupted,
    kernel::{Prog, run_lbtrace},
    stats::Figure,
    sys,
};

pub const SECTION: &str =
    "ring buffer: userspace drain + decode (lbtrace's Rings + session::drain)";
const RING_BYTES: u64 = 8 << 20;
const REPEAT: u32 = 100_000;

pub struct Figures {
    pub delivered_wall: Figure,
    pub per_cpu_second: Figure,
    pub consumer_cpu: Figure,
    pub produced: Figure,
    pub lost: Figure,
    pub max_gap: Figure,
    /// Runs whose accounting did not add up, with what was off.
    pub mismatches: Vec<String>,
}

impl Figures {
    pub fn all(&self) -> Vec<Figure> {
        vec![
            self.per_cpu_second.clone(),
            self.delivered_wall.clone(),
            self.consumer_cpu.clone(),
            self.produced.clone(),
            self.lost.clone(),
            self.max_gap.clone(),
        ]
    }
}

struct Run {
    produced: u64,
    delivered: u64,
    unread: u64,
    emitted: u64,
    lost: u64,
    packets: u64,
    decode_errors: u64,
    wall: f64,
    consumer_cpu: f64,
    producer_wall: f64,
    max_gap: Duration,
}

fn one(secs: f64) -> Result<Run> {
    let object = super::kernel::object()?;
    let mut opts = loader::Options::new(
        &object,
        RingLayout::new(RING_BYTES, 1 << 20)?,
        frames::endpoints().to_vec(),
    );
    opts.programs = Programs {
        tc: true,
        legacy_tc: false,
        xdp: false,
    };
    let mut loaded = loader::load(&opts).context("loading lbtrace's eBPF object")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building a tokio runtime")?;
    let rings = {
        let _entered = rt.enter();
        Rings::new(loaded.take_rings()?)?
    };
    let ebpf = loaded.ebpf;

    let cpus = sys::cpus();
    let stop = Arc::new(AtomicBool::new(false));
    let consumer = {
        let stop = Arc::clone(&stop);
        thread::Builder::new()
            .name("bench-consumer".into())
            .spawn(move || {
                let _pin = (cpus > 1).then(|| sys::pin_current_thread(1));
                let mut rings = rings;
                let cpu0 = sys::thread_cpu_seconds();
                let t0 = Instant::now();
                let mut delivered = 0u64;
                let mut decode_errors = 0u64;
                // The longest time from one drain's start to the next: how long the producer
                // had the ring to itself.
                let mut max_gap = Duration::ZERO;
                let mut last_drain = Instant::now();
                rt.block_on(async {
                    loop {
                        // Read before draining: the drain after the producer stopped is the last.
                        let last = stop.load(Ordering::SeqCst);
                        rings.wait().await;
                        let now = Instant::now();
                        max_gap = max_gap.max(now - last_drain);
                        last_drain = now;
                        delivered +=
                            lbtrace::session::drain(&mut rings, &mut decode_errors).len() as u64;
                        if last {
                            break;
                        }
                    }
                });
                let wall = t0.elapsed().as_secs_f64();
                let cpu = sys::thread_cpu_seconds() - cpu0;
                (rings, rt, delivered, decode_errors, wall, cpu, max_gap)
            })
            .context("starting the consumer thread")?
    };

    let frame = frames::syn(VIP, VIP_PORT);
    let producer = (|| -> Result<(u64, f64)> {
        let _pin = sys::pin_current_thread(0);
        let t0 = Instant::now();
        let mut produced = 0u64;
        while t0.elapsed().as_secs_f64() < secs {
            interrupted()?;
            run_lbtrace(&ebpf, Prog::Tc, &frame, REPEAT)?;
            produced += u64::from(REPEAT);
        }
        Ok((produced, t0.elapsed().as_secs_f64()))
    })();
    stop.store(true, Ordering::SeqCst);
    let (mut rings, rt, delivered, mut decode_errors, wall, consumer_cpu, max_gap) = consumer
        .join()
        .map_err(|_| anyhow!("the consumer thread panicked"))?;
    let (produced, producer_wall) = producer?;
    let unread = {
        let _entered = rt.enter();
        lbtrace::session::drain(&mut rings, &mut decode_errors).len() as u64
    };
    let c = counters::read(&ebpf);
    Ok(Run {
        produced,
        delivered,
        unread,
        emitted: c.events_emitted,
        lost: c.events_lost,
        packets: c.packets,
        decode_errors,
        wall,
        consumer_cpu,
        producer_wall,
        max_gap,
    })
}

pub fn measure(rounds: usize, secs: f64) -> Result<Figures> {
    let mut f = Figures {
        delivered_wall: Figure::new(SECTION, "events delivered per second (wall clock)", "M/s"),
        per_cpu_second: Figure::new(
            SECTION,
            "events drained per consumer CPU-second (one core)",
            "M/s",
        ),
        consumer_cpu: Figure::new(SECTION, "consumer thread CPU", "% core"),
        produced: Figure::new(
            SECTION,
            "events produced per second (test-run producer)",
            "M/s",
        ),
        lost: Figure::new(SECTION, "events lost (ring full)", "%"),
        max_gap: Figure::new(SECTION, "longest time between two drains", "ms"),
        mismatches: Vec::new(),
    };
    for i in 0..rounds {
        interrupted()?;
        let r = one(secs)?;
        let mut off = Vec::new();
        if r.emitted != r.delivered + r.unread {
            off.push(format!(
                "emitted {} != delivered {} + unread {}",
                r.emitted, r.delivered, r.unread
            ));
        }
        if r.emitted + r.lost != r.produced {
            off.push(format!(
                "emitted {} + lost {} != produced {}",
                r.emitted, r.lost, r.produced
            ));
        }
        if r.packets != r.produced {
            off.push(format!("packets {} != produced {}", r.packets, r.produced));
        }
        if r.decode_errors != 0 {
            off.push(format!("{} decode errors", r.decode_errors));
        }
        if !off.is_empty() {
            f.mismatches
                .push(format!("run {}: {}", i + 1, off.join(", ")));
        }
        f.delivered_wall
            .samples
            .push(r.delivered as f64 / r.wall / 1e6);
        f.per_cpu_second
            .samples
            .push(r.delivered as f64 / r.consumer_cpu.max(1e-9) / 1e6);
        f.consumer_cpu
            .samples
            .push(100.0 * r.consumer_cpu / r.wall.max(1e-9));
        f.produced
            .samples
            .push(r.produced as f64 / r.producer_wall / 1e6);
        f.lost
            .samples
            .push(100.0 * r.lost as f64 / (r.produced.max(1)) as f64);
        f.max_gap.samples.push(r.max_gap.as_secs_f64() * 1e3);
        eprintln!(
            "xtask: bench: ring run {}/{rounds}: produced {}, emitted {}, lost {}, delivered {}, unread at end {}, consumer CPU {:.2} s of {:.2} s, longest gap between drains {:.1} ms",
            i + 1,
            r.produced,
            r.emitted,
            r.lost,
            r.delivered,
            r.unread,
            r.consumer_cpu,
            r.wall,
            r.max_gap.as_secs_f64() * 1e3
        );
        thread::sleep(Duration::from_millis(100));
    }
    let exact = if f.mismatches.is_empty() {
        format!("accounting exact in all {rounds} runs")
    } else {
        format!("ACCOUNTING OFF: {}", f.mismatches.join("; "))
    };
    f.per_cpu_second.note = exact;
    f.delivered_wall.note = "the producer's rate, less what was lost".to_owned();
    f.max_gap.note =
        "a gap longer than one CPU's ring lasts at the producer's rate loses events".to_owned();
    Ok(f)
}
