//! The lbtrace binary: parse the command line, install the signal handlers, run the command, map
//! the outcome to an exit code.
//!
//! Exit codes: 0 done (a check with every step passing); 1 a check or doctor found a failure;
//! 3 a check with no failure but a step it could not decide; 2 lbtrace could not run (bad input,
//! privileges, kernel), with one line saying why. clap's own usage errors also exit 2.

use std::process::ExitCode;

use clap::Parser as _;
use lbtrace::{
    cli::{Cli, Command},
    session::Signals,
};

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
        // The commands that attach programs install their signal handlers first: a signal from
        // then on ends the run with its cleanup. `dump` and `doctor` keep the default actions.
        let shutdown = || Signals::install().map(Signals::shutdown);
        match cli.command {
            Some(Command::Trace(args)) => lbtrace::trace::run(args, shutdown()?).await,
            Some(Command::Check(args)) => lbtrace::check::run(args, shutdown()?).await,
            Some(Command::Doctor(args)) => lbtrace::doctor::run(&args),
            Some(Command::Watch(args)) => lbtrace::watch::run::run(args, shutdown()?).await,
            Some(Command::Dump(args)) => lbtrace::dump::run(&args).await,
            Some(Command::Cleanup) => lbtrace::kernel::legacy_tc::run(),
            None => lbtrace::watch::run::run(cli.watch, shutdown()?).await,
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
