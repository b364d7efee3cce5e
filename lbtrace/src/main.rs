//! The lbtrace binary: parse the command line, run the command, map the outcome to an exit code.
//! 0: done; 1: a check found a failure (doctor); 2: lbtrace could not run (bad input, privileges,
//! kernel), with one line saying why.

use std::process::ExitCode;

use clap::Parser as _;
use lbtrace::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lbtrace: error: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Some(Command::Trace(args)) => {
                lbtrace::trace::run(args, lbtrace::shutdown_signal()).await
            }
            Some(Command::Check(args)) => {
                lbtrace::check::run(args, lbtrace::shutdown_signal()).await
            }
            Some(Command::Doctor(args)) => lbtrace::doctor::run(&args),
            Some(Command::Watch(args)) => {
                lbtrace::watch::run::run(args, lbtrace::shutdown_signal()).await
            }
            Some(Command::Dump(args)) => lbtrace::dump::run(&args).await,
            Some(Command::Cleanup) => lbtrace::kernel::legacy_tc::run(),
            None => lbtrace::watch::run::run(cli.watch, lbtrace::shutdown_signal()).await,
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("lbtrace: error: {}", lbtrace::one_line(&e));
            ExitCode::from(2)
        }
    }
}
