//! `cargo xtask`: development tasks for lbtrace (setup, build, run, demo, test, lint).
//!
//! Every task first runs `setup`, which installs what is missing (rust-src, a bpf-linker matching
//! the eBPF toolchain's LLVM and, for tests, the apt packages the labs use) and is quick otherwise.

mod apt;
mod bench;
mod build;
mod demo;
mod linker;
mod lint;
mod process;
mod run;
mod setup;
mod test;
mod vm;

use std::{ffi::OsString, process::ExitCode};

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(bin_name = "cargo xtask", about = "Development tasks for lbtrace")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need (rust-src, bpf-linker, apt packages).
    Setup,
    /// Build the lbtrace binary.
    Build {
        /// Use the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Build lbtrace and run it as root: `cargo xtask run -- --vip 10.0.0.10:80`. Without
    /// arguments: the default demo (`cargo xtask demo`).
    Run {
        /// Use the release profile.
        #[arg(long)]
        release: bool,
        /// Arguments passed to lbtrace.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Run `lbtrace check` on a scenario in the built-in network-namespace lab (as root).
    Demo {
        /// Use the release profile.
        #[arg(long)]
        release: bool,
        /// List the scenarios.
        #[arg(long)]
        list: bool,
        /// The scenario (default: haproxy-http-backend-refused).
        scenario: Option<String>,
    },
    /// Run the unit tests, then the integration tests as root.
    Test {
        /// Use the release profile.
        #[arg(long)]
        release: bool,
        /// Run only the unit tests (no root, no apt packages needed).
        #[arg(long)]
        unit_only: bool,
        /// Test name filters and libtest options, passed to every test binary.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        filter: Vec<OsString>,
    },
    /// Check formatting and run clippy on the userspace crates and the eBPF crate.
    Lint,
    /// Measure lbtrace's costs: kernel ns/packet, throughput, connection rate, ring drain, idle.
    Bench(bench::Args),
    /// Boot Debian's 5.10, 6.1 and 6.12 cloud kernels in QEMU and run lbtrace's checks in each.
    Vmtest(vm::Args),
}

/// Errors are printed with their causes on one line, without the backtrace that anyhow would
/// print under RUST_BACKTRACE=1: the failing command's own output says what went wrong.
fn main() -> ExitCode {
    match dispatch(Cli::parse().cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Setup => setup::cmd(),
        Cmd::Build { release } => build::cmd(release),
        Cmd::Run { release, args } => run::cmd(release, &args),
        Cmd::Demo {
            release,
            list,
            scenario,
        } => demo::cmd(release, list, scenario.as_deref()),
        Cmd::Test {
            release,
            unit_only,
            filter,
        } => test::cmd(release, unit_only, &filter),
        Cmd::Lint => lint::cmd(),
        Cmd::Bench(args) => bench::cmd(args),
        Cmd::Vmtest(args) => vm::cmd(args),
    }
}
