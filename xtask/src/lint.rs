//! `cargo xtask lint`: rustfmt and clippy (warnings are errors) on the host crates, then clippy on
//! the eBPF crate for its BPF target, in a target directory of its own. Runs every check and
//! reports all that failed.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{
    process,
    setup::{self, Env},
};

pub fn cmd() -> Result<()> {
    let env = setup::ensure(false)?;
    let checks = [
        ("rustfmt", fmt(&env)),
        ("clippy (host crates)", clippy_host(&env)),
        ("clippy (lbtrace-ebpf)", clippy_ebpf(&env)),
    ];
    let mut failed = Vec::new();
    for (name, mut cmd) in checks {
        if let Err(err) = process::run(&mut cmd) {
            eprintln!("xtask: {name} failed: {err:#}");
            failed.push(name);
        }
    }
    if !failed.is_empty() {
        bail!("lint failed: {}", failed.join(", "));
    }
    Ok(())
}

fn fmt(env: &Env) -> Command {
    let mut cmd = env.cargo();
    cmd.args(["fmt", "--all", "--check"]);
    cmd
}

fn clippy_host(env: &Env) -> Command {
    let mut cmd = env.cargo();
    cmd.args([
        "clippy",
        "--workspace",
        "--exclude",
        "lbtrace-ebpf",
        "--all-targets",
        // The bench is compiled only by `cargo xtask bench` otherwise: lint it here too.
        "--features",
        "xtask/bench",
    ])
    .args(["--", "-D", "warnings"]);
    cmd
}

/// `-Z build-std` on the stable toolchain needs RUSTC_BOOTSTRAP, which would invalidate the host
/// build cache: hence target/ebpf-clippy.
fn clippy_ebpf(env: &Env) -> Command {
    let mut cmd = env.ebpf_cargo(&env.root.join("lbtrace-ebpf"));
    cmd.args([
        "clippy",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
    ])
    .arg("--target-dir")
    .arg(env.target_dir().join("ebpf-clippy"))
    .args(["--", "-D", "warnings"])
    .env("RUSTC_BOOTSTRAP", "1");
    cmd
}
