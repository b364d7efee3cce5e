//! Small system helpers: CPU pinning, per-process CPU time and memory from /proc, and Ctrl-C
//! turned into an error so that every guard still cleans up.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// SIGINT / SIGTERM set a flag instead of killing the process: the running measurement stops at
/// its next check, and the guards remove namespaces and processes on the way out.
pub fn catch_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

/// Fails once SIGINT or SIGTERM arrived.
pub fn interrupted() -> Result<()> {
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps `d`, failing early when interrupted.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        interrupted()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Restores the thread's CPU mask on drop.
pub struct Pin(Option<libc::cpu_set_t>);

impl Drop for Pin {
    fn drop(&mut self) {
        if let Some(set) = self.0.take() {
            // SAFETY: set is a valid cpu_set_t; 0 is the calling thread.
            unsafe {
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            }
        }
    }
}

/// Pins the calling thread to `cpu` (best effort) until the guard drops.
pub fn pin_current_thread(cpu: usize) -> Pin {
    // SAFETY: cpu_set_t is plain data; the calls get valid pointers and sizes.
    unsafe {
        let mut old: libc::cpu_set_t = std::mem::zeroed();
        let size = std::mem::size_of::<libc::cpu_set_t>();
        if libc::sched_getaffinity(0, size, &mut old) != 0 {
            return Pin(None);
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size, &set) != 0 {
            return Pin(None);
        }
        Pin(Some(old))
    }
}

/// CPU time of process `pid` (all its threads), in seconds: the scheduler's exact run time of
/// each live thread (`se.sum_exec_runtime` of /proc/<pid>/task/*/sched, in ms with ns digits),
/// else utime + stime of /proc/<pid>/stat (whole clock ticks: 10 ms steps).
pub fn proc_cpu_seconds(pid: u32) -> Result<f64> {
    if let Some(s) = sched_runtime(pid) {
        return Ok(s);
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    cpu_from_stat(&stat).with_context(|| format!("parsing /proc/{pid}/stat"))
}

fn sched_runtime(pid: u32) -> Option<f64> {
    let mut total_ms = 0.0;
    let mut any = false;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let Ok(text) = std::fs::read_to_string(task.path().join("sched")) else {
            continue;
        };
        if let Some(ms) = sched_field(&text, "se.sum_exec_runtime") {
            total_ms += ms;
            any = true;
        }
    }
    any.then_some(total_ms / 1000.0)
}

/// CPU time, in seconds, of the threads of `pid` called `comm` (/proc/<pid>/task/*/comm), from
/// the scheduler's exact run time; None when no such thread runs.
pub fn named_threads_cpu_seconds(pid: u32, comm: &str) -> Option<f64> {
    let mut total_ms = 0.0;
    let mut any = false;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let named =
            std::fs::read_to_string(task.path().join("comm")).is_ok_and(|c| c.trim_end() == comm);
        let sched = std::fs::read_to_string(task.path().join("sched")).ok();
        if let (true, Some(ms)) = (
            named,
            sched.and_then(|t| sched_field(&t, "se.sum_exec_runtime")),
        ) {
            total_ms += ms;
            any = true;
        }
    }
    any.then_some(total_ms / 1000.0)
}

fn sched_field(text: &str, key: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().parse().ok())?
    })
}

fn cpu_from_stat(stat: &str) -> Option<f64> {
    // Fields after the command name (which may contain spaces) start with field 3 (state);
    // utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Some((utime + stime) as f64 / hz)
}

/// A `kB` field of /proc/<pid>/status (`VmRSS`, `VmHWM`), in KiB.
pub fn proc_status_kib(pid: u32, key: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status_field(&status, key).with_context(|| format!("no {key} in /proc/{pid}/status"))
}

fn status_field(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix(':')?;
        v.split_whitespace().next()?.parse().ok()
    })
}

/// Resident KiB of the BPF map mappings (`anon_inode:bpf-map`: lbtrace's ring buffers are its
/// only mmapped maps) and of everything, from /proc/<pid>/smaps.
pub fn smaps_rss_kib(pid: u32) -> Result<(u64, u64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .with_context(|| format!("reading /proc/{pid}/smaps"))?;
    Ok(smaps_split(&smaps))
}

fn smaps_split(smaps: &str) -> (u64, u64) {
    let (mut bpf, mut all) = (0, 0);
    let mut in_bpf = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            in_bpf = line.contains("bpf-map");
        } else if let Some(v) = line.strip_prefix("Rss:") {
            let kib: u64 = v
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            all += kib;
            if in_bpf {
                bpf += kib;
            }
        }
    }
    (bpf, all)
}

/// CPU time of the calling thread, in seconds.
pub fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec.
    unsafe {
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0";
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        assert_eq!(cpu_from_stat(stat), Some(300.0 / hz));
        let status = "Name:\tlbtrace\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(status_field(status, "VmRSS"), Some(10240));
        assert_eq!(status_field(status, "VmHWM"), Some(20480));
        let smaps = "\
7f00-7f10 rw-s 00000000 00:0f 1234 anon_inode:bpf-map
Size:                 64 kB
Rss:                  16 kB
7f10-7f20 r--p 00000000 08:01 99 /usr/lib/libc.so.6
Size:                 64 kB
Rss:                  40 kB
";
        assert_eq!(smaps_split(smaps), (16, 56));
        let sched = "lbtrace (42, #threads: 3)\n---\nse.exec_start   :   6128684.933910\nse.sum_exec_runtime   :   1.658491\n";
        assert_eq!(sched_field(sched, "se.sum_exec_runtime"), Some(1.658491));
        assert!(sched_runtime(std::process::id()).is_some_and(|s| s > 0.0));
    }
}
