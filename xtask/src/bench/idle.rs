//! Part 5 of the bench, idle: `lbtrace watch` attached to the lb's interfaces (TCX) with no
//! traffic: CPU time per window, and memory with the ring buffers' mapping (the
//! `anon_inode:bpf-map` mappings of /proc/<pid>/smaps) apart from the rest.

use std::{path::Path, time::Duration};

use anyhow::Result;

use super::{
    lab::{IPERF_PORT, Lab, Running, Tool},
    stats::Figure,
    sys,
};

pub const SECTION: &str = "idle: lbtrace watch attached (TCX), no traffic";
/// The name of `lbtrace watch`'s host sampler thread (lbtrace/src/host/mod.rs).
const HOST_THREAD: &str = "lbtrace-host";

pub struct Idle {
    pub cpu: Figure,
    /// The part of `cpu` that is the host sampler's thread (`lbtrace-host`: the LB host's
    /// counters, queues and port use, read every second), measured in the same windows.
    pub host_sampler: Figure,
    pub rss_rest: Figure,
    pub hwm_rest: Figure,
    pub ring: Figure,
}

impl Idle {
    pub fn all(&self) -> Vec<Figure> {
        vec![
            self.cpu.clone(),
            self.host_sampler.clone(),
            self.rss_rest.clone(),
            self.hwm_rest.clone(),
            self.ring.clone(),
        ]
    }
}

pub fn measure(lab: &Lab, lbtrace: &Path, secs: f64, windows: usize) -> Result<Idle> {
    let mut out = Idle {
        cpu: Figure::new(SECTION, "CPU", "% core"),
        host_sampler: Figure::new(
            SECTION,
            "CPU of the host sampler thread (part of CPU)",
            "% core",
        ),
        rss_rest: Figure::new(SECTION, "RSS besides the ring mapping (VmRSS)", "MiB"),
        hwm_rest: Figure::new(SECTION, "peak RSS besides the ring mapping (VmHWM)", "MiB"),
        ring: Figure::new(SECTION, "ring buffer mapping, resident", "MiB"),
    };
    let running = Running::start(
        lab,
        &Tool::Watch { xdp: false },
        lbtrace,
        IPERF_PORT,
        "idle",
    )?;
    let pid = running.pids()[0];
    // Start-up (BTF, verifier) is over once it is ready; let it settle.
    sys::sleep(Duration::from_secs(1))?;
    let w = secs / windows as f64;
    for _ in 0..windows {
        let c0 = running.cpu_seconds()?;
        let h0 = sys::named_threads_cpu_seconds(pid, HOST_THREAD);
        let t0 = std::time::Instant::now();
        sys::sleep(Duration::from_secs_f64(w))?;
        let c1 = running.cpu_seconds()?;
        let h1 = sys::named_threads_cpu_seconds(pid, HOST_THREAD);
        let secs = t0.elapsed().as_secs_f64();
        out.cpu.samples.push(100.0 * (c1 - c0) / secs);
        if let (Some(h0), Some(h1)) = (h0, h1) {
            out.host_sampler.samples.push(100.0 * (h1 - h0) / secs);
        }
        let (ring_kib, _) = sys::smaps_rss_kib(pid)?;
        let rss = sys::proc_status_kib(pid, "VmRSS")?;
        let hwm = sys::proc_status_kib(pid, "VmHWM")?;
        out.ring.samples.push(ring_kib as f64 / 1024.0);
        out.rss_rest
            .samples
            .push(rss.saturating_sub(ring_kib) as f64 / 1024.0);
        out.hwm_rest
            .samples
            .push(hwm.saturating_sub(ring_kib) as f64 / 1024.0);
    }
    running.stop()?;
    out.cpu.note = format!("{windows} windows of {w:.0} s");
    out.hwm_rest.note = "peak includes start-up (BTF parsing, program load)".to_owned();
    Ok(out)
}
