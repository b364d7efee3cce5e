//! `cargo xtask setup`: makes sure the machine has what the other tasks need and describes the
//! environment their child cargo commands run in. Quick and silent when everything is present.

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::Result;

use crate::{apt, linker, process};

/// Where and how the tasks run cargo.
pub struct Env {
    /// The workspace root.
    pub root: PathBuf,
    /// The toolchain that builds the eBPF crate (`LBTRACE_EBPF_TOOLCHAIN`, default `stable`).
    pub toolchain: String,
    /// PATH for child processes: finds our bpf-linker first.
    path: OsString,
}

impl Env {
    /// `cargo` in the workspace root, with PATH finding our bpf-linker.
    pub fn cargo(&self) -> Command {
        let mut cmd = Command::new("cargo");
        cmd.current_dir(&self.root).env("PATH", &self.path);
        cmd
    }

    /// `cargo +<eBPF toolchain>` in `dir`.
    pub fn ebpf_cargo(&self, dir: &Path) -> Command {
        let mut cmd = self.cargo();
        cmd.current_dir(dir).arg(format!("+{}", self.toolchain));
        cmd
    }

    pub fn target_dir(&self) -> PathBuf {
        env::var_os("CARGO_TARGET_DIR").map_or_else(
            || self.root.join("target"),
            |dir| self.root.join(dir), // an absolute dir replaces the root
        )
    }

    /// `target/debug` or `target/release`.
    pub fn profile_dir(&self, release: bool) -> PathBuf {
        self.target_dir()
            .join(if release { "release" } else { "debug" })
    }
}

/// The workspace root: the parent of xtask's manifest directory.
fn workspace_root() -> PathBuf {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().unwrap_or(xtask).to_path_buf()
}

/// Installs what is missing; `apt` adds the packages the integration tests use.
pub fn ensure(apt: bool) -> Result<Env> {
    let started = Instant::now();
    let root = workspace_root();
    let toolchain = env::var("LBTRACE_EBPF_TOOLCHAIN").unwrap_or_else(|_| "stable".to_owned());
    let mut installed = ensure_rust_src(&toolchain)?;
    let linker = linker::ensure(&toolchain, &root)?;
    installed |= linker.installed;
    if apt {
        installed |= apt::ensure()?;
    }
    if installed {
        eprintln!("xtask: setup took {:.1?}", started.elapsed());
    }
    Ok(Env {
        root,
        toolchain,
        path: linker.path,
    })
}

/// [`ensure`] with the apt packages, plus what `cargo xtask vmtest` needs (QEMU, busybox-static,
/// the decompressors).
pub fn ensure_vm() -> Result<Env> {
    let env = ensure(true)?;
    let started = Instant::now();
    if apt::ensure_vm()? {
        eprintln!("xtask: VM setup took {:.1?}", started.elapsed());
    }
    Ok(env)
}

fn ensure_rust_src(toolchain: &str) -> Result<bool> {
    let list = ["component", "list", "--installed", "--toolchain", toolchain];
    let installed = process::output(Command::new("rustup").args(list))?;
    if installed.lines().any(|line| line.starts_with("rust-src")) {
        return Ok(false);
    }
    eprintln!("xtask: installing rust-src for toolchain {toolchain} ...");
    let add = ["component", "add", "rust-src", "--toolchain", toolchain];
    process::run(Command::new("rustup").args(add))?;
    Ok(true)
}

pub fn cmd() -> Result<()> {
    let env = ensure(true)?;
    eprintln!(
        "xtask: setup ok (toolchain {}: rust-src, bpf-linker; apt packages)",
        env.toolchain
    );
    Ok(())
}
