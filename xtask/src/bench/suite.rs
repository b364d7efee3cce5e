//! The measurements, in this process (root, release build with the `bench` feature): the kernel
//! programs and the ring drain in-process, then the network lab. A part that fails is reported
//! and the others still run; the exit status says whether everything ran.

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use super::{
    connrate,
    goals::{self, Goal},
    idle, kernel,
    lab::Lab,
    ring,
    stats::{self, Figure},
    sys, throughput,
};

struct Plan {
    kernel_rounds: usize,
    ring_rounds: usize,
    ring_secs: f64,
    tput_rounds: usize,
    tput_secs: u32,
    conn_rates: Vec<Option<u32>>,
    conn_rounds: usize,
    conn_secs: f64,
    idle_secs: f64,
    idle_windows: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                kernel_rounds: 3,
                ring_rounds: 3,
                ring_secs: 1.0,
                tput_rounds: 2,
                tput_secs: 2,
                conn_rates: vec![Some(2000), None],
                conn_rounds: 2,
                conn_secs: 1.0,
                idle_secs: 10.0,
                idle_windows: 2,
            }
        } else {
            Plan {
                kernel_rounds: 7,
                ring_rounds: 5,
                ring_secs: 2.0,
                tput_rounds: 7,
                tput_secs: 3,
                conn_rates: vec![Some(500), Some(2000), Some(5000), None],
                conn_rounds: 3,
                conn_secs: 3.0,
                idle_secs: 30.0,
                idle_windows: 3,
            }
        }
    }
}

/// The machine, for the report.
pub fn machine() -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|v| v.split_once(':'))
        .map_or("unknown", |(_, v)| v.trim())
        .to_owned();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or("unknown".to_owned(), |k| {
            format!("{:.1} GiB", k as f64 / 1024.0 / 1024.0)
        });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let vuln = |name: &str| {
        std::fs::read_to_string(format!("/sys/devices/system/cpu/vulnerabilities/{name}"))
            .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned())
    };
    vec![
        ("cpus".to_owned(), sys::cpus().to_string()),
        ("model".to_owned(), model),
        ("kernel".to_owned(), kernel),
        ("memory".to_owned(), mem),
        (
            "mitigations".to_owned(),
            format!(
                "spectre_v2: {}; spec_rstack_overflow: {}",
                vuln("spectre_v2"),
                vuln("spec_rstack_overflow")
            ),
        ),
    ]
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn lbtrace_bin() -> Result<PathBuf> {
    let bin = match std::env::var_os("LBTRACE_BIN") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()?.with_file_name("lbtrace"),
    };
    if !bin.exists() {
        bail!(
            "{} not found: run `cargo xtask bench`, which builds it",
            bin.display()
        );
    }
    Ok(bin)
}

fn part<T>(name: &str, failures: &mut Vec<String>, f: impl FnOnce() -> Result<T>) -> Option<T> {
    let t0 = Instant::now();
    eprintln!("xtask: bench: {name} ...");
    match f() {
        Ok(v) => {
            eprintln!("xtask: bench: {name} done in {:.0?}", t0.elapsed());
            Some(v)
        }
        Err(e) => {
            eprintln!("xtask: bench: {name} FAILED: {e:#}");
            failures.push(format!("{name}: {e:#}"));
            None
        }
    }
}

pub fn run(quick: bool, only: &[String], json: Option<&Path>) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the measurements need root: run `cargo xtask bench`");
    }
    sys::catch_signals();
    let plan = Plan::new(quick);
    let lbtrace = lbtrace_bin()?;
    for tool in ["ip", "nft", "iperf3", "tcpdump", "ss", "sysctl"] {
        which::which(tool)
            .with_context(|| format!("{tool} not found (run `cargo xtask setup`)"))?;
    }
    let started = Instant::now();
    let load_before = loadavg();
    let wanted = |part: &str| only.is_empty() || only.iter().any(|p| p == part);
    let mut failures = Vec::new();
    let mut figures: Vec<Figure> = Vec::new();
    let mut goal_list: Vec<Goal> = Vec::new();

    if wanted("kernel")
        && let Some(k) = part("kernel cost per packet", &mut failures, || {
            kernel::measure(plan.kernel_rounds)
        })
    {
        goal_list.extend(goals::kernel(&k));
        figures.extend(k.figures);
    }
    if wanted("ring")
        && let Some(r) = part("ring-buffer drain", &mut failures, || {
            ring::measure(plan.ring_rounds, plan.ring_secs)
        })
    {
        goal_list.push(goals::drain(&r));
        figures.extend(r.all());
    }
    let lab_parts = ["throughput", "connrate", "idle"];
    let lab = if lab_parts.iter().any(|p| wanted(p)) {
        part("network lab", &mut failures, Lab::new)
    } else {
        None
    };
    if let Some(mut lab) = lab {
        if wanted("throughput")
            && let Some(t) = part("throughput", &mut failures, || {
                throughput::measure(&mut lab, &lbtrace, plan.tput_rounds, plan.tput_secs)
            })
        {
            goal_list.push(goals::throughput(&t));
            figures.extend(t.all());
        }
        if wanted("connrate")
            && let Some(c) = part("connection rate", &mut failures, || {
                connrate::measure(
                    &lab,
                    &lbtrace,
                    &plan.conn_rates,
                    plan.conn_rounds,
                    plan.conn_secs,
                )
            })
        {
            goal_list.extend(goals::no_loss(&c));
            figures.extend(c.all());
        }
        if wanted("idle")
            && let Some(i) = part("idle", &mut failures, || {
                idle::measure(&lab, &lbtrace, plan.idle_secs, plan.idle_windows)
            })
        {
            goal_list.push(goals::idle(&i));
            figures.extend(i.all());
        }
    }
    let load_after = loadavg();

    println!(
        "lbtrace bench{} ({:.0} s)",
        if quick { " --quick" } else { "" },
        started.elapsed().as_secs_f64()
    );
    for (k, v) in machine() {
        println!("  {k}: {v}");
    }
    println!("  load average (1/5/15 min): {load_before} before, {load_after} after");
    println!(
        "  every figure: median of interleaved runs, with min and max; ratio: median [min..max] of the per-round ratios to the baseline measured in the same round; \"within noise\": baseline and subject ranges overlap"
    );
    println!();
    print!("{}", stats::table(&figures));
    println!();
    println!("goals:");
    for g in &goal_list {
        println!("  {}", g.line());
    }
    if std::env::var_os("LBTRACE_BENCH_MARKDOWN").is_some() {
        println!();
        print!("{}", stats::markdown(&figures));
    }
    if let Some(path) = json {
        let entries: Vec<_> = figures.iter().map(Figure::json).collect();
        let body = serde_json::to_string_pretty(&entries)?;
        std::fs::write(path, body + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "xtask: bench: wrote {} figures to {}",
            figures.len(),
            path.display()
        );
    }
    if !failures.is_empty() {
        bail!("some measurements failed: {}", failures.join("; "));
    }
    Ok(())
}
