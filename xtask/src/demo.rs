//! `cargo xtask demo [SCENARIO]`: `lbtrace check` in the built-in lab (the network-namespace lab of
//! the integration tests, tests/src/lab): builds the lab with a load balancer and a fault, runs
//! `lbtrace check` in the lb namespace while a client makes requests, prints lbtrace's report and
//! tears everything down, also on Ctrl-C or a panic (every piece of the lab is a guard).
//! `cargo xtask demo --list` lists the scenarios.

use std::{
    io::Write as _,
    panic::{self, AssertUnwindSafe},
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use lbtrace_integration::lab::{
    Lab,
    scenario::{self, CheckRun, ClientResult, DEFAULT_DEMO, SCENARIOS, Scenario},
};

use crate::{build, process, setup};

/// How long the check watches the client.
const OBSERVE: &str = "6s";
/// How many requests the client makes.
const REQUESTS: usize = 4;

pub fn cmd(release: bool, list: bool, name: Option<&str>) -> Result<()> {
    if list {
        print_list();
        return Ok(());
    }
    let name = name.unwrap_or(DEFAULT_DEMO);
    let s = scenario::find(name)
        .ok_or_else(|| anyhow!("no scenario `{name}`: `cargo xtask demo --list` lists them"))?;
    if !process::is_root() {
        bail!(
            "the demo builds network namespaces and loads eBPF programs, so it runs as root: \
             sudo -E $(command -v cargo) xtask demo {name}"
        );
    }
    let env = setup::ensure(true)?;
    build::build(&env, release)?;
    let bin = env.profile_dir(release).join("lbtrace");
    let bin = bin
        .canonicalize()
        .with_context(|| format!("locating {}", bin.display()))?;
    install_signal_handlers();
    // The lab's guards tear it down while unwinding; the panic message is already printed.
    match panic::catch_unwind(AssertUnwindSafe(|| run(s, &bin))) {
        Ok(code) => {
            eprintln!("demo: the lab is gone (namespaces, processes, rules)");
            if interrupted() {
                bail!("interrupted");
            }
            eprintln!(
                "demo: lbtrace check exited {code} ({}); other scenarios: cargo xtask demo --list",
                match code {
                    0 => "every step passes",
                    1 => "a step fails",
                    3 => "no step fails, some unknown",
                    _ => "it could not run",
                }
            );
            Ok(())
        }
        Err(_) => bail!("the demo failed (see above); the lab was torn down"),
    }
}

fn print_list() {
    let width = SCENARIOS.iter().map(|s| s.name.len()).max().unwrap_or(0);
    for s in SCENARIOS {
        let default = if s.name == DEFAULT_DEMO {
            " (default)"
        } else {
            ""
        };
        println!("{:width$}  {}{default}", s.name, s.about);
    }
}

/// Builds the lab, runs the check while the client makes requests, prints the report; returns
/// lbtrace's exit code. Everything is torn down when it returns or unwinds.
fn run(s: &Scenario, bin: &Path) -> i32 {
    eprintln!("demo: scenario {}: {}", s.name, s.about);
    eprintln!(
        "demo: building the lab: client 10.10.1.2 -> router -> lb (VIP {}, {}) -> be1..be3 (:8080)",
        s.vip(),
        s.lb.describe()
    );
    let lab = Lab::new();
    let setup = s.setup(&lab);
    if let Some(fault) = &setup.fault {
        eprintln!("demo: fault: {}", fault.what());
    }
    let mut args = s.check_args();
    args.extend(["--observe", OBSERVE, "--probe-timeout", "2s"].map(str::to_owned));
    eprintln!(
        "demo: $ ip netns exec {} lbtrace check {}",
        lab.lb.name(),
        args.join(" ")
    );
    let mut check = CheckRun::start(&lab, bin, "lbtrace-check", &args);
    let mut shown = 0;
    let mut show_stderr = |check: &CheckRun| {
        let err = check.stderr();
        if err.len() > shown {
            eprint!("{}", &err[shown..]);
            shown = err.len();
        }
    };
    thread::scope(|sc| {
        let client = sc.spawn(|| s.drive(&lab, REQUESTS, &report_client));
        let mut interrupted_at = None;
        while check.exited().is_none() {
            show_stderr(&check);
            if interrupted() {
                // lbtrace got the Ctrl-C itself (same process group) and is printing what it
                // has; a SIGTERM to xtask alone reaches it here.
                let at = *interrupted_at.get_or_insert_with(|| {
                    check.signal(libc::SIGINT);
                    Instant::now()
                });
                if at.elapsed() > Duration::from_secs(10) {
                    break;
                }
            }
            thread::sleep(Duration::from_millis(100));
        }
        let _ = client.join();
    });
    show_stderr(&check);
    let done = check.wait(Duration::from_secs(5));
    eprint!("{}", &done.stderr[shown.min(done.stderr.len())..]);
    eprintln!();
    print!("{}", done.stdout);
    let _ = std::io::stdout().flush();
    eprintln!("\ndemo: tearing the lab down");
    drop(setup);
    drop(lab);
    done.status.code().unwrap_or(2)
}

/// One line per client request, as it ends.
fn report_client(r: &ClientResult) {
    let what = match r.code.as_str() {
        "000" => format!("no answer ({})", r.error),
        "ok" => "TLS handshake done".to_owned(),
        "failed" => format!("failed ({})", r.error),
        code => format!("HTTP {code}"),
    };
    eprintln!("client: {} -> {what}", r.what);
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C (and SIGTERM, SIGHUP) only set a flag: the demo then ends the check and returns, and
/// the lab's guards tear it down. The lab's own processes (lbtrace, curl, HAProxy, the servers)
/// get Ctrl-C from the terminal directly.
fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int);
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, handler as libc::sighandler_t);
        }
    }
}
