//! bpf-linker, built against the eBPF toolchain's own libLLVM (no system LLVM needed) into
//! `~/.local/share/lbtrace/toolchain/<release>-llvm<version>`, so that a new toolchain gets a new one.

use std::{
    env,
    ffi::OsString,
    fs, io,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::process;

const VERSION: &str = "0.13.0";

pub struct Linker {
    /// PATH for child processes, finding this bpf-linker first.
    pub path: OsString,
    /// Whether anything was installed.
    pub installed: bool,
}

/// What the eBPF toolchain's `rustc` says about itself.
struct Rustc {
    sysroot: PathBuf,
    release: String,
    llvm: String,
}

pub fn ensure(toolchain: &str, root: &Path) -> Result<Linker> {
    let rustc = rustc_info(toolchain)?;
    let dir = home()?
        .join(".local/share/lbtrace/toolchain")
        .join(format!("{}-llvm{}", rustc.release, rustc.llvm));
    let bin = dir.join("bin/bpf-linker");
    let mut installed = false;
    if !works(&bin) {
        install(&rustc, &dir)?;
        if !works(&bin) {
            bail!(
                "`{} --version` fails right after installing it",
                bin.display()
            );
        }
        installed = true;
    }
    installed |= link_into_cargo_bin(&bin)?;
    let path = child_path(&dir.join("bin"), root)?;
    Ok(Linker { path, installed })
}

fn home() -> Result<PathBuf> {
    env::var_os("HOME")
        .map(PathBuf::from)
        .context("HOME is not set")
}

fn rustc_info(toolchain: &str) -> Result<Rustc> {
    let plus = format!("+{toolchain}");
    let sysroot = process::output(Command::new("rustc").args([&plus, "--print", "sysroot"]))?;
    let verbose = process::output(Command::new("rustc").args([&plus, "-vV"]))?;
    let field = |name: &str| {
        verbose
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(|value| value.trim().to_owned())
            .with_context(|| format!("`rustc {plus} -vV` has no `{name}` line"))
    };
    Ok(Rustc {
        sysroot: PathBuf::from(sysroot.trim()),
        release: field("release:")?,
        llvm: field("LLVM version:")?,
    })
}

/// Whether `bin --version` runs without help from rustup's LD_LIBRARY_PATH.
fn works(bin: &Path) -> bool {
    bin.is_file()
        && process::succeeds(
            Command::new(bin)
                .arg("--version")
                .env_remove("LD_LIBRARY_PATH"),
        )
}

fn install(rustc: &Rustc, dir: &Path) -> Result<()> {
    let major = rustc.llvm.split('.').next().unwrap_or_default();
    eprintln!(
        "xtask: installing bpf-linker {VERSION} (LLVM {}) into {} ...",
        rustc.llvm,
        dir.display()
    );
    let prefix = dir.join("llvm");
    link_libllvm(&rustc.sysroot.join("lib"), &prefix.join("lib"))?;
    let (krate, features) = (format!("bpf-linker@{VERSION}"), format!("llvm-{major}"));
    let mut cmd = Command::new("cargo");
    cmd.current_dir(dir).env("LLVM_PREFIX", &prefix);
    cmd.args([
        "install",
        &krate,
        "--locked",
        "--force",
        "--no-default-features",
    ]);
    cmd.args(["--features", &features]).arg("--root").arg(dir);
    process::run(&mut cmd)
}

/// Makes `lib_dir` an LLVM prefix: `libLLVM.so` and `<soname>` both link to the toolchain's
/// libLLVM (whose file name is its soname), so the linker loads it without LD_LIBRARY_PATH.
fn link_libllvm(sysroot_lib: &Path, lib_dir: &Path) -> Result<()> {
    let real = find_libllvm(sysroot_lib)?;
    fs::create_dir_all(lib_dir).with_context(|| format!("creating {}", lib_dir.display()))?;
    let soname = real.file_name().unwrap_or_default();
    for name in [OsString::from("libLLVM.so"), soname.to_owned()] {
        replace_symlink(&real, &lib_dir.join(name))?;
    }
    Ok(())
}

fn find_libllvm(sysroot_lib: &Path) -> Result<PathBuf> {
    let entries =
        fs::read_dir(sysroot_lib).with_context(|| format!("listing {}", sysroot_lib.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", sysroot_lib.display()))?;
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("libLLVM.so.")
        {
            return Ok(entry.path());
        }
    }
    bail!(
        "no libLLVM.so.* in {}: the toolchain has no shared LLVM",
        sysroot_lib.display()
    )
}

fn replace_symlink(target: &Path, link: &Path) -> Result<()> {
    match fs::remove_file(link) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => {
            return Err(err).with_context(|| format!("removing {}", link.display()));
        }
        _ => {}
    }
    symlink(target, link)
        .with_context(|| format!("linking {} to {}", link.display(), target.display()))
}

/// Lets plain `cargo build` find the linker: points `$CARGO_HOME/bin/bpf-linker` at `bin` unless
/// a working bpf-linker that is not a symlink is already there (then it is left alone).
fn link_into_cargo_bin(bin: &Path) -> Result<bool> {
    let cargo_home = env::var_os("CARGO_HOME")
        .map_or_else(|| home().map(|h| h.join(".cargo")), |h| Ok(h.into()))?;
    let link = cargo_home.join("bin/bpf-linker");
    let replace = match fs::symlink_metadata(&link) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            link.parent().is_some_and(Path::is_dir)
        }
        Err(err) => return Err(err).with_context(|| format!("inspecting {}", link.display())),
        Ok(meta) if meta.file_type().is_symlink() => {
            fs::read_link(&link).ok().as_deref() != Some(bin)
        }
        Ok(_) => !works(&link),
    };
    if replace {
        eprintln!("xtask: linking {} -> {}", link.display(), bin.display());
        replace_symlink(bin, &link)?;
    }
    Ok(replace)
}

/// PATH for child processes: unchanged when its bpf-linker already is ours (a changed PATH makes
/// cargo re-run build scripts that watch it), else with `bin_dir` in front.
fn child_path(bin_dir: &Path, root: &Path) -> Result<OsString> {
    let current = env::var_os("PATH").unwrap_or_default();
    let found = which::which_in("bpf-linker", Some(&current), root)
        .ok()
        .and_then(|found| found.canonicalize().ok());
    if found.is_some() && found == bin_dir.join("bpf-linker").canonicalize().ok() {
        return Ok(current);
    }
    let dirs = std::iter::once(bin_dir.to_path_buf()).chain(env::split_paths(&current));
    env::join_paths(dirs).context("building PATH for child processes")
}
