//! `cargo xtask run`: builds lbtrace and replaces xtask with it, as root (through `sudo -E` when
//! not root), so that its exit code and Ctrl-C behave as if it had been started directly. Without
//! arguments it runs the default demo instead (`cargo xtask demo`): a real diagnosis in the lab.

use std::{ffi::OsString, os::unix::process::CommandExt as _};

use anyhow::{Context as _, Result};

use crate::{build, demo, process, setup};

pub fn cmd(release: bool, args: &[OsString]) -> Result<()> {
    if args.is_empty() {
        return demo::cmd(release, false, None);
    }
    let env = setup::ensure(false)?;
    build::build(&env, release)?;
    let bin = env.profile_dir(release).join("lbtrace");
    let mut cmd = process::as_root(&bin, args, &[])?;
    eprintln!("xtask: exec {}", process::describe(&cmd));
    let err = cmd.exec(); // returns only on failure
    Err(err).with_context(|| format!("cannot execute `{}`", process::describe(&cmd)))
}
