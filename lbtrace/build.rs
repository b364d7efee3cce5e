//! Builds the kernel programs (lbtrace-ebpf) for the BPF target and leaves the object in OUT_DIR,
//! where `kernel::object` embeds it with `include_bytes_aligned!`.
use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, Result};
use aya_build::{Package, Toolchain};

fn main() -> Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let object = out_dir.join("lbtrace-kern");
    if env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        // aya-build writes nothing when skipping; an empty object keeps include_bytes happy (clippy,
        // docs). Loading it fails at run time with a clear message.
        if !object.exists() {
            fs::write(&object, []).context("writing the empty eBPF stub")?;
        }
        return aya_build::build_ebpf([], Toolchain::default());
    }
    // The kernel crate needs `-Z build-std=core`. Enabling unstable flags for this inner build only
    // lets the stable toolchain build it (so one toolchain, one rust-src, one bpf-linker), without
    // RUSTC_BOOTSTRAP leaking into (and rebuilding) every userspace dependency.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };
    // BPF cpu v3 (kernel 5.1+; lbtrace needs 6.6 for TCX anyway) instead of the default v1:
    // 32-bit sub-registers, and the fetching atomic add the per-CPU event rings publish records
    // with. aya-build owns CARGO_ENCODED_RUSTFLAGS, so this goes through a profile's rustflags
    // (unstable in cargo, enabled like build-std for this inner build only).
    // SAFETY: as above.
    unsafe {
        env::set_var("CARGO_UNSTABLE_PROFILE_RUSTFLAGS", "true");
        env::set_var("CARGO_PROFILE_RELEASE_RUSTFLAGS", "-Ctarget-cpu=v3");
        // Not for the host-side build dependencies (proc macros) of that build.
        env::set_var("CARGO_PROFILE_RELEASE_BUILD_OVERRIDE_RUSTFLAGS", "");
    }
    let toolchain = env::var("LBTRACE_EBPF_TOOLCHAIN").unwrap_or_else(|_| "stable".to_owned());
    println!("cargo:rerun-if-env-changed=LBTRACE_EBPF_TOOLCHAIN");
    let ebpf = Package {
        name: "lbtrace-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../lbtrace-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], Toolchain::Custom(&toolchain))
}
