//! Initramfs: a directory tree with busybox (static), the guest scripts (tests/vm), the modules
//! of one kernel, lbtrace, the integration test binary and the host tools the checks use with
//! their shared libraries and ELF interpreter, packed with `busybox cpio -o -H newc` (the host
//! has no cpio binary). In: a [`Kernel`] and a [`Payload`]. Out: the archive QEMU loads.

use std::{
    collections::BTreeSet,
    fs,
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use super::{checks, kernel::Kernel, modules};
use crate::process;

/// What goes into every kernel's initramfs besides the modules.
pub struct Payload {
    /// tests/vm: init.sh, lib.sh, checks/*.sh.
    pub scripts: PathBuf,
    pub checks: Vec<&'static checks::Check>,
    /// The lbtrace binary under test.
    pub lbtrace: PathBuf,
    /// The lbtrace-integration test binary (for the `prog_test_run` check), if built.
    pub test_binary: Option<PathBuf>,
    /// Print every check's output, not only that of failures.
    pub verbose: bool,
}

/// Builds the tree in `work/root` and the archive `work/initramfs.cpio`; returns the archive.
pub fn build(kernel: &Kernel, payload: &Payload, work: &Path) -> Result<PathBuf> {
    let root = work.join("root");
    let _ = fs::remove_dir_all(&root);
    for dir in [
        "bin",
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "etc",
        "usr/bin",
        "usr/sbin",
        "lib/modules",
        "lbtrace-vm/checks",
    ] {
        fs::create_dir_all(root.join(dir))?;
    }
    let mut tree = Tree {
        root: root.clone(),
        libs: BTreeSet::new(),
    };
    tree.busybox()?;
    tree.scripts(payload)?;
    tree.stripped(&payload.lbtrace, "/usr/bin/lbtrace")?;
    if let Some(test_binary) = &payload.test_binary {
        tree.stripped(test_binary, "/usr/bin/lbtrace-integration")?;
    }
    let search = crate::apt::search_path()?;
    for (program, dest) in checks::TOOLS {
        let path = which::which_in(program, Some(&search), "/")
            .with_context(|| format!("{program} is not installed (run `cargo xtask setup`)"))?;
        tree.dynamic(&path, dest)?;
    }
    let modules = modules::resolve(&kernel.modules, checks::MODULES)
        .with_context(|| format!("modules of {}", kernel.release))?;
    let mut list = String::new();
    for module in &modules {
        fs::write(
            root.join(format!("lib/modules/{}.ko", module.name)),
            &module.data,
        )?;
        list.push_str(&module.name);
        list.push('\n');
    }
    fs::write(root.join("lib/modules/load.list"), list)?;
    let archive = work.join("initramfs.cpio");
    cpio(&root, &archive)?;
    Ok(archive)
}

struct Tree {
    root: PathBuf,
    /// Libraries copied so far (guest paths).
    libs: BTreeSet<PathBuf>,
}

impl Tree {
    /// `/path` in the guest → the file in the tree.
    fn at(&self, guest: &str) -> PathBuf {
        self.root.join(guest.trim_start_matches('/'))
    }

    /// The host's busybox, which must be the static one (busybox-static): nothing else in the
    /// guest can run before the libraries are in place, and /init is a busybox script.
    fn busybox(&self) -> Result<()> {
        let busybox = which::which("busybox")
            .context("busybox is not installed (run `cargo xtask setup`: busybox-static)")?;
        if !libraries(&busybox)?.is_empty() {
            bail!(
                "{} is dynamically linked: install busybox-static",
                busybox.display()
            );
        }
        copy_exec(&busybox, &self.at("/bin/busybox"))
    }

    fn scripts(&self, payload: &Payload) -> Result<()> {
        let dir = &payload.scripts;
        copy_exec(&dir.join("init.sh"), &self.at("/init"))?;
        copy_exec(&dir.join("lib.sh"), &self.at("/lbtrace-vm/lib.sh"))?;
        let mut list = String::new();
        for check in &payload.checks {
            let script = dir.join(format!("checks/{}.sh", check.name));
            copy_exec(
                &script,
                &self.at(&format!("/lbtrace-vm/checks/{}.sh", check.name)),
            )?;
            list.push_str(&format!("{} {}\n", check.name, check.timeout_secs));
        }
        fs::write(self.at("/lbtrace-vm/checks.list"), list)?;
        if payload.verbose {
            fs::write(self.at("/lbtrace-vm/verbose"), b"")?;
        }
        Ok(())
    }

    /// A Rust binary without its debug info (a debug build is mostly DWARF; the guest unpacks
    /// the archive into RAM), with its libraries.
    fn stripped(&mut self, host: &Path, guest: &str) -> Result<()> {
        let dest = self.at(guest);
        process::output(
            Command::new("objcopy")
                .arg("--strip-debug")
                .arg(host)
                .arg(&dest),
        )
        .context("stripping debug info (objcopy, binutils)")?;
        self.libs_of(host)
    }

    /// A dynamically linked host program, with its libraries.
    fn dynamic(&mut self, host: &Path, guest: &str) -> Result<()> {
        copy_exec(host, &self.at(guest))?;
        self.libs_of(host)
    }

    /// Copies the libraries and the ELF interpreter of `host` to their paths in the guest.
    fn libs_of(&mut self, host: &Path) -> Result<()> {
        for lib in libraries(host)? {
            if self.libs.insert(lib.clone()) {
                let dest = self.at(&lib.to_string_lossy());
                fs::create_dir_all(dest.parent().context("library path")?)?;
                copy_exec(&lib, &dest)?;
            }
        }
        Ok(())
    }
}

/// The shared libraries and the ELF interpreter `ldd` names for `exe` (none for a static one).
fn libraries(exe: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(exe)
        .stdin(Stdio::null())
        .output()
        .context("cannot start ldd")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || stdout.contains("not a dynamic executable") {
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in stdout.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        match path {
            Some(p) if p.starts_with('/') => libs.push(PathBuf::from(p)),
            _ if line.contains("not found") => {
                bail!("{}: library {} not found", exe.display(), line.trim());
            }
            _ => {} // linux-vdso.so.1
        }
    }
    Ok(libs)
}

/// Copies the file `from` points to (symlinks followed) and makes it executable.
fn copy_exec(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// `busybox cpio -o -H newc` over every path under `root` (directories before their contents).
fn cpio(root: &Path, archive: &Path) -> Result<()> {
    let mut names = Vec::new();
    let mut stack = vec![PathBuf::from(".")];
    while let Some(rel) = stack.pop() {
        names.push(rel.to_string_lossy().into_owned());
        let full = root.join(&rel);
        if full.is_dir() && !full.is_symlink() {
            let mut entries: Vec<PathBuf> = fs::read_dir(&full)?
                .filter_map(Result::ok)
                .map(|e| rel.join(e.file_name()))
                .collect();
            entries.sort();
            stack.extend(entries.into_iter().rev());
        }
    }
    let out = fs::File::create(archive)?;
    let mut child = Command::new("busybox")
        .args(["cpio", "-o", "-H", "newc"])
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start busybox cpio")?;
    {
        let mut stdin = child.stdin.take().context("cpio stdin")?;
        stdin.write_all((names.join("\n") + "\n").as_bytes())?;
    }
    let done = child.wait_with_output()?;
    if !done.status.success() {
        bail!(
            "busybox cpio failed ({}): {}",
            done.status,
            String::from_utf8_lossy(&done.stderr).trim()
        );
    }
    Ok(())
}
