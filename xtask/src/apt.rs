//! The Debian packages whose programs the integration tests (netns labs) use: installs the missing
//! ones with apt-get, as root, and keeps their system services from running outside the labs.

use std::{
    env,
    ffi::{OsStr, OsString},
    path::Path,
    process::Stdio,
};

use anyhow::{Context as _, Result};

use crate::process;

/// (program, package providing it).
const PACKAGES: &[(&str, &str)] = &[
    ("haproxy", "haproxy"),
    ("nft", "nftables"),
    ("iptables-nft", "iptables"),
    ("tcpdump", "tcpdump"),
    ("bpftool", "bpftool"),
    ("iperf3", "iperf3"),
    ("socat", "socat"),
    ("nc", "netcat-openbsd"),
    ("ping", "iputils-ping"),
    ("ip", "iproute2"),
    ("curl", "curl"),
    ("openssl", "openssl"),
    ("python3", "python3"),
    ("nginx", "nginx-light"),
];

/// What `cargo xtask vmtest` needs on top: (program, package). QEMU (TCG), the static busybox of
/// the guests' initramfs (checked separately: a dynamic busybox provides the same program), the
/// decompressors of kernel images and modules, objcopy to strip the binaries.
const VM_PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("xz", "xz-utils"),
    ("zstd", "zstd"),
    ("objcopy", "binutils"),
    ("dpkg-deb", "dpkg"),
];

/// Services the packages start that the tests run themselves, in network namespaces.
const SERVICES: &[&str] = &["haproxy", "nginx"];

/// Installs the packages whose programs are missing; returns whether it installed any.
pub fn ensure() -> Result<bool> {
    let search = search_path()?;
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(program, _)| which::which_in(program, Some(&search), "/").is_err())
        .map(|&(_, package)| package)
        .collect();
    if missing.is_empty() {
        return Ok(false);
    }
    for package in &missing {
        eprintln!("xtask: installing {package} (apt) ...");
    }
    apt_get(&missing).with_context(|| format!("installing {}", missing.join(" ")))?;
    if missing
        .iter()
        .any(|p| p.starts_with("haproxy") || p.starts_with("nginx"))
    {
        stop_services()?;
    }
    Ok(true)
}

/// Installs what the VM tests need and is missing; returns whether it installed any.
pub fn ensure_vm() -> Result<bool> {
    let search = search_path()?;
    let mut missing: Vec<&str> = VM_PACKAGES
        .iter()
        .filter(|(program, _)| which::which_in(program, Some(&search), "/").is_err())
        .map(|&(_, package)| package)
        .collect();
    if !installed("busybox-static") {
        missing.push("busybox-static");
    }
    if missing.is_empty() {
        return Ok(false);
    }
    for package in &missing {
        eprintln!("xtask: installing {package} (apt, for the VM tests) ...");
    }
    apt_get(&missing).with_context(|| format!("installing {}", missing.join(" ")))?;
    Ok(true)
}

/// Whether dpkg has `package` installed.
fn installed(package: &str) -> bool {
    let mut query = std::process::Command::new("dpkg-query");
    query.args(["-W", "-f", "${db:Status-Status}", package]);
    process::output(&mut query).is_ok_and(|status| status.trim() == "installed")
}

fn apt_get(packages: &[&str]) -> Result<()> {
    let frontend: &[(&str, &OsStr)] = &[("DEBIAN_FRONTEND", OsStr::new("noninteractive"))];
    let apt_get = Path::new("apt-get");
    process::run(process::as_root(apt_get, &["update"], frontend)?.stdin(Stdio::null()))?;
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend(packages);
    process::run(process::as_root(apt_get, &install, frontend)?.stdin(Stdio::null()))
}

/// PATH plus the sbin directories, which a non-root PATH may lack.
pub fn search_path() -> Result<OsString> {
    let path = env::var_os("PATH").unwrap_or_default();
    let sbin = ["/usr/local/sbin", "/usr/sbin", "/sbin"].map(Into::into);
    Ok(env::join_paths(env::split_paths(&path).chain(sbin))?)
}

/// `systemctl disable --now haproxy nginx`, errors ignored: there may be no systemd, or no unit.
fn stop_services() -> Result<()> {
    let Ok(systemctl) = which::which("systemctl") else {
        return Ok(());
    };
    let mut args = vec!["disable", "--now"];
    args.extend(SERVICES);
    process::succeeds(&mut process::as_root(&systemctl, &args, &[])?);
    Ok(())
}
