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

pub struct Idle {
    pub cpu: Figure,
    pub rss_rest: Figure,
    pub hwm_rest: Figure,
    pub ring: Figure,
}

impl Idle {
    pub fn all(&self) -> Vec<Figure> {
        vec![
            self.cpu.clone(),
            self.rss_rest.clone(),
            self.hwm_rest.clone(),
            self.ring.clone(),
        ]
    }
}

pub fn measure(lab: &Lab, lbtrace: &Path, secs: f64, windows: usize) -> Result<Idle> {
    let mut out = Idle {
        cpu: Figure::new(SECTION, "CPU", "% core"),
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
        let t0 = std::time::Instant::now();
        sys::sleep(Duration::from_secs_f64(w))?;
        let c1 = running.cpu_seconds()?;
        out.cpu
            .samples
            .push(100.0 * (c1 - c0) / t0.elapsed().as_secs_f64());
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
