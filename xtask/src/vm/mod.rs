//! `cargo xtask vmtest`: the kernel matrix. Boots each of Debian's cloud kernels (5.10, 6.1,
//! 6.12) in QEMU with an initramfs carrying the lbtrace binary under test, and runs the guest
//! checks (tests/vm) against the real programs in the real kernel, one kernel after the other.
//!
//! ```text
//! kernel::fetch ──Kernel──▶ initramfs::build ──archive──▶ qemu::run ──console──▶ results::parse ──▶ table
//!                               ▲ checks (the test list), modules
//! ```

mod checks;
mod initramfs;
mod kernel;
mod modules;
mod qemu;
mod results;

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Args as ClapArgs;

use crate::{build, setup, test};

#[derive(ClapArgs)]
pub struct Args {
    /// Kernel series to boot: 5.10, 6.1, 6.12 or all (repeat for several).
    #[arg(long = "kernel", default_value = "all")]
    kernels: Vec<String>,
    /// Run only this check (repeat): doctor, prog_test_run, trace, drop, sigkill, coexist,
    /// check, watch.
    #[arg(long = "check")]
    checks: Vec<String>,
    /// Keep each kernel's initramfs tree and archive in target/vmtest/<series>/.
    #[arg(long)]
    keep: bool,
    /// Show the output of every check, not only of those that did not pass.
    #[arg(long)]
    verbose: bool,
    /// Virtual CPUs per VM (TCG runs one host thread per CPU; the checks spread over them).
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// Test the release build.
    #[arg(long)]
    release: bool,
}

/// Time for the kernel to boot and load its modules, on top of the checks' own limits.
const BOOT_ALLOWANCE: Duration = Duration::from_secs(120);

/// Lines of a check's output shown here; the console log has all.
const LOG_LINES: usize = 150;

/// No VM runs longer than this, whatever the checks' limits add up to: three kernels stay within
/// 45 minutes even when every check hangs (a normal run takes 2-4 minutes per kernel).
const VM_LIMIT: Duration = Duration::from_secs(15 * 60);

pub fn cmd(args: Args) -> Result<()> {
    let started = Instant::now();
    let env = setup::ensure_vm()?;
    let series = select_series(&args.kernels)?;
    let checks = checks::select(&args.checks)?;

    build::build(&env, args.release)?;
    let lbtrace = env.profile_dir(args.release).join("lbtrace");
    let test_binary = if checks.iter().any(|c| c.name == "prog_test_run") {
        Some(integration_binary(&env, args.release)?)
    } else {
        None
    };
    let payload = initramfs::Payload {
        scripts: env.root.join("tests/vm"),
        checks,
        lbtrace,
        test_binary,
        verbose: args.verbose,
    };
    let out = env.target_dir().join("vmtest");
    fs::create_dir_all(&out)?;

    let mut reports = Vec::new();
    for series in series {
        let report = run_kernel(series, &payload, &out, args.cpus, args.keep)
            .unwrap_or_else(|err| failed_report(series.name, &format!("{err:#}")));
        reports.push(report);
    }

    println!("\n{}", results::table(&reports));
    for r in &reports {
        for (name, o) in &r.outcomes {
            if !o.log.is_empty() {
                println!("--- {} {name} output:", r.series);
                for line in o.log.iter().take(LOG_LINES) {
                    println!("    {line}");
                }
                if o.log.len() > LOG_LINES {
                    let log = out.join(&r.series).join("console.log");
                    println!(
                        "    ... {} more lines in {}",
                        o.log.len() - LOG_LINES,
                        log.display()
                    );
                }
            }
        }
    }
    eprintln!(
        "xtask: vmtest took {:.0?} in all; console logs in {}",
        started.elapsed(),
        out.display()
    );
    let failed: Vec<&str> = reports
        .iter()
        .filter(|r| r.failed())
        .map(|r| r.series.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("vmtest failed on kernel(s) {}", failed.join(", "));
    }
    Ok(())
}

fn select_series(names: &[String]) -> Result<Vec<&'static kernel::Series>> {
    if names.iter().any(|n| n == "all") {
        return Ok(kernel::SERIES.iter().collect());
    }
    names
        .iter()
        .map(|name| {
            kernel::SERIES
                .iter()
                .find(|s| s.name == name)
                .with_context(|| format!("no kernel series {name}; use 5.10, 6.1, 6.12 or all"))
        })
        .collect()
}

/// The lbtrace-integration test executable (its library's tests, prog_test_run among them).
fn integration_binary(env: &setup::Env, release: bool) -> Result<PathBuf> {
    test::test_binaries(env, release)?
        .into_iter()
        .map(|(exe, _)| exe)
        .find(|exe| {
            exe.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("lbtrace_integration-"))
        })
        .context("cargo built no lbtrace_integration test executable")
}

/// Fetches the kernel, builds its initramfs, boots it and parses what the checks reported.
fn run_kernel(
    series: &'static kernel::Series,
    payload: &initramfs::Payload,
    out: &Path,
    cpus: u32,
    keep: bool,
) -> Result<results::KernelReport> {
    let prefix = format!("xtask: [{}] ", series.name);
    let kernel = kernel::fetch(series)?;
    eprintln!("{prefix}{} ({})", kernel.release, kernel.package);
    let dir = out.join(series.name);
    fs::create_dir_all(&dir)?;
    remove_stale_scratch(&dir);
    // The tree and the archive (~100 MB with a debug build) go away unless --keep.
    let scratch = tempfile::Builder::new()
        .prefix("initramfs-")
        .tempdir_in(&dir)?;
    let work = if keep {
        dir.clone()
    } else {
        scratch.path().to_path_buf()
    };
    let archive = initramfs::build(&kernel, payload, &work)?;
    let size = fs::metadata(&archive)?.len();
    eprintln!(
        "{prefix}initramfs {:.1} MB; booting {} under QEMU (TCG)",
        size as f64 / 1e6,
        kernel.image.display()
    );
    let limit = VM_LIMIT.min(
        BOOT_ALLOWANCE
            + payload
                .checks
                .iter()
                .map(|c| Duration::from_secs(c.timeout_secs.into()))
                .sum::<Duration>(),
    );
    let log = dir.join("console.log");
    let run = qemu::run(&kernel.image, &archive, cpus, limit, &log, &prefix)?;
    let ended = if run.timed_out {
        format!("the VM was killed after {limit:?}")
    } else if run.lines.iter().any(|l| l.contains("LBT-DONE")) {
        "the guest did not run it".to_owned()
    } else {
        format!("the VM ended early (see {})", log.display())
    };
    let mut expected = vec![checks::BOOT];
    expected.extend(payload.checks.iter().map(|c| c.name));
    Ok(results::KernelReport {
        series: series.name.to_owned(),
        release: kernel.release,
        boot: run.boot,
        elapsed: Some(run.elapsed),
        outcomes: results::parse(&run.lines, &expected, &ended),
    })
}

/// Removes the scratch directories of runs that were interrupted (Ctrl-C skips their cleanup).
fn remove_stale_scratch(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("initramfs-")
        {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// A kernel that could not be tested at all (fetch or initramfs failed).
fn failed_report(series: &str, why: &str) -> results::KernelReport {
    eprintln!("xtask: [{series}] {why}");
    results::KernelReport {
        series: series.to_owned(),
        release: "-".to_owned(),
        boot: None,
        elapsed: None,
        outcomes: vec![(
            checks::BOOT.to_owned(),
            results::Outcome {
                status: results::Status::Fail,
                took: None,
                detail: why.to_owned(),
                log: Vec::new(),
            },
        )],
    }
}
