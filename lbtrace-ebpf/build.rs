use which::which;

/// Building this crate for a BPF target needs bpf-linker. When it is missing, say how to get it
/// (`cargo xtask setup` installs one matching the toolchain's LLVM) instead of a bare link error.
fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("bpf")
        && which("bpf-linker").is_err()
    {
        println!(
            "cargo:warning=bpf-linker not found in PATH: run `cargo xtask setup` to install one"
        );
    }
}
