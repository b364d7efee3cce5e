//! `cargo xtask bench [--quick] [--json FILE]`: what lbtrace costs, measured on this machine.
//!
//! 1. kernel cost per packet (BPF_PROG_TEST_RUN of `tc_ingress` / `xdp_ingress`, and of the older
//!    kernels' variants and a stale legacy TC filter, against an empty program of the same type);
//! 2. throughput (iperf3 through a namespace load balancer, with no tracer, `lbtrace watch`,
//!    `lbtrace watch --xdp`, tcpdump, `lbtrace watch` with legacy TC);
//! 3. connection rate (short connections at rising rates: control packets recorded against the
//!    kernel's own counts, events lost, CPU and peak RSS of the tracer);
//! 4. ring-buffer drain (lbtrace's own drain + decode path against a test-run producer);
//! 5. idle cost of `lbtrace watch`.
//!
//! Every figure is the median of interleaved runs with min and max and, where there is one, the
//! baseline measured in the same runs. Then the goals, PASS or MISS. See docs/performance.md.
//!
//! This process only prepares: it installs what is missing (`setup`), builds lbtrace and xtask
//! itself with the `bench` feature in the release profile (lbtrace's library, for the in-process
//! parts, needs the bpf-linker that setup installs, so plain xtask does not link it), and execs
//! that build as root with `--inner`.

#[cfg(feature = "bench")]
mod bpf;
#[cfg(feature = "bench")]
mod connrate;
#[cfg(feature = "bench")]
mod frames;
#[cfg(feature = "bench")]
mod goals;
#[cfg(feature = "bench")]
mod idle;
#[cfg(feature = "bench")]
mod kernel;
#[cfg(feature = "bench")]
mod lab;
#[cfg(feature = "bench")]
mod load;
#[cfg(feature = "bench")]
mod ring;
#[cfg(feature = "bench")]
mod stats;
#[cfg(feature = "bench")]
mod suite;
#[cfg(feature = "bench")]
mod sys;
#[cfg(feature = "bench")]
mod throughput;

#[cfg(feature = "bench")]
use sys::interrupted;

use std::{ffi::OsString, os::unix::process::CommandExt as _, path::PathBuf};

use anyhow::{Context as _, Result};

use crate::{process, setup};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Fewer rounds and shorter runs: done in under 3 minutes.
    #[arg(long)]
    quick: bool,
    /// Also write every figure to FILE as JSON: one entry per figure.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Run only these parts (repeat): kernel, ring, throughput, connrate, idle.
    #[arg(long, value_name = "PART", value_parser = ["kernel", "ring", "throughput", "connrate", "idle"])]
    only: Vec<String>,
    /// Measure in this process (root, built with the `bench` feature): what `cargo xtask bench`
    /// runs once it has built everything.
    #[arg(long, hide = true)]
    inner: bool,
}

pub fn cmd(args: Args) -> Result<()> {
    if args.inner {
        return inner(&args);
    }
    let env = setup::ensure(true)?;
    let mut build = env.cargo();
    build.args(["build", "--release", "-p", "lbtrace", "-p", "xtask"]);
    build.args(["--features", "xtask/bench"]);
    process::run(&mut build)?;
    let bin = env.profile_dir(true).join("xtask");
    let mut argv: Vec<OsString> = vec!["bench".into(), "--inner".into()];
    if args.quick {
        argv.push("--quick".into());
    }
    for part in &args.only {
        argv.extend(["--only".into(), part.into()]);
    }
    if let Some(json) = &args.json {
        let json =
            std::path::absolute(json).with_context(|| format!("resolving {}", json.display()))?;
        argv.extend(["--json".into(), json.into_os_string()]);
    }
    let mut cmd = process::as_root(&bin, &argv, &[])?;
    eprintln!("xtask: exec {}", process::describe(&cmd));
    let err = cmd.exec(); // returns only on failure
    Err(err).with_context(|| format!("cannot execute `{}`", process::describe(&cmd)))
}

#[cfg(feature = "bench")]
fn inner(args: &Args) -> Result<()> {
    suite::run(args.quick, &args.only, args.json.as_deref())
}

#[cfg(not(feature = "bench"))]
fn inner(_: &Args) -> Result<()> {
    anyhow::bail!("this xtask was built without the `bench` feature: run `cargo xtask bench`")
}
