//! Child processes: echo and run a command, check its status, capture its output, run as root.

use std::{
    ffi::{OsStr, OsString},
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// The command line of `cmd`, for messages: `cargo build -p lbtrace`.
pub fn describe(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Echoes `cmd`, runs it with inherited stdio and fails unless it exits successfully.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: $ {}", describe(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(cmd));
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its stdout; on failure the error carries its stderr.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let sep = if stderr.trim().is_empty() { "" } else { ": " };
        bail!(
            "`{}` failed ({}){sep}{}",
            describe(cmd),
            out.status,
            stderr.trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{}` printed non-UTF-8", describe(cmd)))
}

/// Whether `cmd` runs and exits successfully, its output discarded.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A command running `program args` as root, with `envs` set: directly when we are root, else
/// through `sudo -E env K=V ...` (env, so that the variables survive sudo's policy).
pub fn as_root<A: AsRef<OsStr>>(
    program: &Path,
    args: &[A],
    envs: &[(&str, &OsStr)],
) -> Result<Command> {
    if is_root() {
        let mut cmd = Command::new(program);
        cmd.args(args).envs(envs.iter().copied());
        return Ok(cmd);
    }
    let sudo = which::which("sudo").with_context(|| {
        format!(
            "`{}` needs root: run as root or install sudo",
            program.display()
        )
    })?;
    let mut cmd = Command::new(sudo);
    cmd.args(["-E", "env"]);
    for (key, value) in envs {
        let mut assignment = OsString::from(key);
        assignment.push("=");
        assignment.push(value);
        cmd.arg(assignment);
    }
    cmd.arg(program).args(args);
    Ok(cmd)
}
