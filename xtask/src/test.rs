//! `cargo xtask test`: the unit tests of the host crates, then the integration tests (package
//! lbtrace-integration), which need root: their binaries run as root, one test at a time, with
//! LBTRACE_BIN pointing at the freshly built lbtrace.

use std::{
    ffi::{OsStr, OsString},
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{
    build, process,
    setup::{self, Env},
};

pub fn cmd(release: bool, unit_only: bool, filter: &[OsString]) -> Result<()> {
    let env = setup::ensure(!unit_only)?;
    let mut failed = Vec::new();
    if let Err(err) = unit(&env, release, filter) {
        eprintln!("xtask: unit tests failed: {err:#}");
        failed.push("unit tests");
    }
    if !unit_only && let Err(err) = integration(&env, release, filter) {
        eprintln!("xtask: integration tests failed: {err:#}");
        failed.push("integration tests");
    }
    if !failed.is_empty() {
        bail!("test failed: {}", failed.join(", "));
    }
    Ok(())
}

/// `cargo test` on every crate that builds for the host, except the root-only integration tests.
fn unit(env: &Env, release: bool, filter: &[OsString]) -> Result<()> {
    let mut cmd = env.cargo();
    cmd.args(["test", "--workspace", "--exclude", "lbtrace-ebpf"])
        .args(["--exclude", "lbtrace-integration"]);
    if release {
        cmd.arg("--release");
    }
    if !filter.is_empty() {
        cmd.arg("--").args(filter);
    }
    process::run(&mut cmd)
}

fn integration(env: &Env, release: bool, filter: &[OsString]) -> Result<()> {
    build::build(env, release)?;
    let lbtrace = env.profile_dir(release).join("lbtrace");
    let lbtrace = lbtrace
        .canonicalize()
        .with_context(|| format!("locating {}", lbtrace.display()))?;
    let mut failed = Vec::new();
    for (exe, dir) in test_binaries(env, release)? {
        let mut args = vec![OsString::from("--test-threads=1")];
        args.extend(filter.iter().cloned());
        let envs: &[(&str, &OsStr)] = &[
            ("LBTRACE_BIN", lbtrace.as_os_str()),
            ("RUST_BACKTRACE", OsStr::new("1")),
        ];
        let mut cmd = process::as_root(&exe, &args, envs)?;
        if let Err(err) = process::run(cmd.current_dir(dir)) {
            eprintln!("xtask: {err:#}");
            failed.push(exe.display().to_string());
        }
    }
    if !failed.is_empty() {
        bail!("failing test binaries: {}", failed.join(", "));
    }
    Ok(())
}

/// Builds the integration tests without running them; returns each test executable with the
/// directory of its package (cargo runs tests there).
pub fn test_binaries(env: &Env, release: bool) -> Result<Vec<(PathBuf, PathBuf)>> {
    let mut cmd = env.cargo();
    cmd.args(["test", "-p", "lbtrace-integration", "--no-run"])
        .arg("--message-format=json-render-diagnostics")
        .stderr(Stdio::inherit());
    if release {
        cmd.arg("--release");
    }
    eprintln!("xtask: $ {}", process::describe(&cmd));
    parse_test_binaries(&process::output(&mut cmd)?, &env.root)
}

/// The test executables in cargo's JSON messages, each with its package directory.
fn parse_test_binaries(stdout: &str, root: &Path) -> Result<Vec<(PathBuf, PathBuf)>> {
    let mut binaries = Vec::new();
    for line in stdout.lines().filter(|line| line.starts_with('{')) {
        let message: Value = serde_json::from_str(line)
            .with_context(|| format!("parsing cargo's JSON message {line}"))?;
        if message["reason"] == "compiler-artifact"
            && message["profile"]["test"] == true
            && let Some(exe) = message["executable"].as_str()
        {
            let manifest = Path::new(message["manifest_path"].as_str().unwrap_or_default());
            let dir = manifest.parent().unwrap_or(root).to_path_buf();
            binaries.push((PathBuf::from(exe), dir));
        }
    }
    Ok(binaries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_only_test_executables() {
        let stdout = concat!(
            r#"{"reason":"compiler-artifact","manifest_path":"/w/tests/Cargo.toml","#,
            r#""profile":{"test":false},"executable":null}"#,
            "\n",
            r#"{"reason":"compiler-artifact","manifest_path":"/w/tests/Cargo.toml","#,
            r#""profile":{"test":true},"executable":"/w/target/debug/deps/t-1"}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
        );
        let found = parse_test_binaries(stdout, Path::new("/w")).unwrap();
        let expected = (
            PathBuf::from("/w/target/debug/deps/t-1"),
            PathBuf::from("/w/tests"),
        );
        assert_eq!(found, [expected]);
    }
}
