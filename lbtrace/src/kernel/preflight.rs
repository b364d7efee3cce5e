//! Checks made before anything is loaded, so that a missing privilege or kernel feature gives one
//! clear line instead of an errno from deep inside a syscall.

use std::{fmt, fs};

use aya::util::KernelVersion;

/// Capabilities lbtrace needs (numbers from linux/capability.h).
pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// The effective capability set of this process.
pub fn effective_caps() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Missing capabilities, by name; empty when lbtrace may load and attach its programs.
pub fn missing_caps() -> Vec<&'static str> {
    let caps = effective_caps();
    let has = |c: u32| caps & (1u64 << c) != 0;
    let mut missing = Vec::new();
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    // CAP_SYS_ADMIN covers CAP_BPF and CAP_PERFMON (kernels before 5.8 only know it).
    if !has(CAP_SYS_ADMIN) {
        if !has(CAP_BPF) {
            missing.push("CAP_BPF");
        }
        if !has(CAP_PERFMON) {
            missing.push("CAP_PERFMON");
        }
    }
    missing
}

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("lbtrace needs root or {0} to load and attach eBPF programs: run it with sudo")]
    Privileges(Caps),
    #[error(
        "kernel {0} is too old: lbtrace needs 5.10 or newer (its events go through a BPF ring buffer, 5.8; its drop tracer and XDP attach as bpf_links, raw tracepoints 5.7 and XDP 5.9, so a killed lbtrace leaves nothing behind; 5.10 is the oldest kernel it is tested on). Below 6.6 it attaches with legacy TC, below 5.12 packet events share one ring buffer, below 5.17 drops are reported by location instead of reason"
    )]
    Kernel(String),
    #[error("cannot read the kernel version: {0}")]
    Version(String),
}

#[derive(Debug)]
pub struct Caps(pub Vec<&'static str>);

impl fmt::Display for Caps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(" + "))
    }
}

pub fn kernel_version() -> Result<KernelVersion, PreflightError> {
    KernelVersion::current().map_err(|e| PreflightError::Version(e.to_string()))
}

/// Whether the running kernel is at least `major.minor.patch` (false when it cannot be read).
pub fn kernel_at_least(major: u8, minor: u8, patch: u16) -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(major, minor, patch))
}

pub fn fmt_version(v: KernelVersion) -> String {
    let code = v.code();
    format!("{}.{}.{}", code >> 16, (code >> 8) & 0xff, code & 0xff)
}

/// The oldest kernel lbtrace runs on: 5.10, the oldest of the VM test matrix. Below it the BPF
/// ring buffer (5.8) and bpf_link attachments for XDP (5.9) go missing, and nothing older is
/// tested. Below 6.6 (no TCX) the TC programs attach as legacy cls_bpf filters (`legacy_tc`);
/// below 5.12 (no BPF atomic fetch-add) the `_rb` program variants write packet events to a BPF
/// ring buffer (`loader::load_probing`); below 5.17 (no drop reasons) the drop tracer reports
/// locations (`tp_kfree_skb_loc`, `kallsyms`).
pub const MIN_KERNEL: KernelVersion = KernelVersion::new(5, 10, 0);

/// Privileges and kernel version. BTF is checked where it is read (`btf::KernelBtf::load`).
pub fn check() -> Result<(), PreflightError> {
    let missing = missing_caps();
    if !missing.is_empty() {
        return Err(PreflightError::Privileges(Caps(missing)));
    }
    let v = kernel_version()?;
    if v < MIN_KERNEL {
        return Err(PreflightError::Kernel(fmt_version(v)));
    }
    Ok(())
}
