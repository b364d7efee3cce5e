//! `cargo xtask build`: builds the lbtrace binary (which embeds the eBPF object, see lbtrace/build.rs).

use anyhow::Result;

use crate::{
    process,
    setup::{self, Env},
};

pub fn cmd(release: bool) -> Result<()> {
    let env = setup::ensure(false)?;
    build(&env, release)
}

/// `cargo build [--release] -p lbtrace`.
pub fn build(env: &Env, release: bool) -> Result<()> {
    let mut cmd = env.cargo();
    cmd.args(["build", "-p", "lbtrace"]);
    if release {
        cmd.arg("--release");
    }
    process::run(&mut cmd)
}
