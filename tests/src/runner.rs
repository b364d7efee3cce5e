//! Runs the lbtrace binary under test (`$LBTRACE_BIN`) inside a lab namespace and parses its JSON
//! lines (docs/output.md).

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use serde_json::Value;

use crate::{
    lab::{Netns, Proc},
    packet::ControlPacket,
};

/// The lbtrace binary under test: `$LBTRACE_BIN` (`cargo xtask test` sets it).
pub fn lbtrace_bin() -> PathBuf {
    let bin = std::env::var_os("LBTRACE_BIN").unwrap_or_else(|| {
        panic!(
            "LBTRACE_BIN is not set: run the integration tests with `cargo xtask test` (or set \
             LBTRACE_BIN to the absolute path of a built lbtrace binary)"
        )
    });
    let bin = PathBuf::from(bin);
    assert!(bin.is_file(), "LBTRACE_BIN={} is not a file", bin.display());
    bin
}

/// A running `lbtrace trace --format json`.
#[derive(Debug)]
pub struct Lbtrace {
    proc: Proc,
}

impl Lbtrace {
    /// How long lbtrace may take to attach.
    pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

    /// Starts `lbtrace trace <args> --format json --ready-file ...` in `ns` and waits until it
    /// has attached (its ready file exists); panics with its stderr if it exits first.
    pub fn start<S: AsRef<str>>(ns: &Netns, dir: &Path, args: &[S]) -> Lbtrace {
        Lbtrace::start_named("lbtrace", ns, dir, args)
    }

    /// [`Lbtrace::start`] with `name` for its output files in `dir` (to run it several times).
    pub fn start_named<S: AsRef<str>>(name: &str, ns: &Netns, dir: &Path, args: &[S]) -> Lbtrace {
        Lbtrace::start_env(name, ns, dir, &[], args)
    }

    /// [`Lbtrace::start_named`] with `env` (`KEY=VALUE`) in lbtrace's environment.
    pub fn start_env<S: AsRef<str>>(
        name: &str,
        ns: &Netns,
        dir: &Path,
        env: &[&str],
        args: &[S],
    ) -> Lbtrace {
        let ready = dir.join(format!("{name}.ready"));
        let _ = fs::remove_file(&ready);
        let bin = lbtrace_bin();
        let mut argv: Vec<String> = if env.is_empty() {
            Vec::new()
        } else {
            std::iter::once("env")
                .chain(env.iter().copied())
                .map(str::to_owned)
                .collect()
        };
        argv.extend([bin.to_string_lossy().into_owned(), "trace".to_owned()]);
        argv.extend(args.iter().map(|a| a.as_ref().to_owned()));
        argv.extend(["--format", "json", "--ready-file"].map(str::to_owned));
        argv.push(ready.to_string_lossy().into_owned());
        let mut proc = ns.spawn(name, dir, &argv);
        proc.wait_until("ready", Self::READY_TIMEOUT, |_| ready.exists());
        Lbtrace { proc }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// What lbtrace wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.proc.stderr()
    }

    /// Stops lbtrace with SIGINT, asserts it exits 0 with a final summary, and parses its output.
    pub fn stop(self) -> Trace {
        let done = self.proc.stop(libc::SIGINT, Duration::from_secs(15));
        assert!(
            done.status.success(),
            "lbtrace exited with {} after SIGINT\nstderr:\n{}\nstdout:\n{}",
            done.status,
            done.stderr,
            done.stdout
        );
        let trace = Trace::parse(&done.stdout, &done.stderr);
        // Captured by the test harness: shown when the test fails, or with --nocapture.
        eprintln!("lbtrace {}", trace.dump());
        trace
    }

    /// SIGKILLs lbtrace (and reaps it).
    pub fn kill(self) {
        self.proc.kill();
    }
}

/// The output of a finished `lbtrace trace --format json`.
#[derive(Debug)]
pub struct Trace {
    /// Every object before the summary, in output order.
    pub events: Vec<Value>,
    /// The last line, `{"type":"summary",...}`.
    pub summary: Value,
    pub stdout: String,
    pub stderr: String,
}

impl Trace {
    /// Parses lbtrace's stdout: one JSON object per line, the last one the summary.
    pub fn parse(stdout: &str, stderr: &str) -> Trace {
        let mut objects: Vec<Value> = stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|err| {
                    panic!(
                        "lbtrace printed a line that is not JSON ({err}): {l}\nstderr:\n{stderr}"
                    )
                })
            })
            .collect();
        let summary = objects.pop().unwrap_or(Value::Null);
        assert_eq!(
            summary["type"], "summary",
            "lbtrace's last line is not the summary\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        for ev in &objects {
            assert!(
                ev["type"].is_string() && ev["type"] != "summary",
                "unexpected object before the summary: {ev}"
            );
        }
        Trace {
            events: objects,
            summary,
            stdout: stdout.to_owned(),
            stderr: stderr.to_owned(),
        }
    }

    /// The events of one type (`packet`, `icmp`, `drop`).
    pub fn of_type<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.events.iter().filter(move |e| e["type"] == kind)
    }

    /// The `packet` events as [`ControlPacket`]s.
    pub fn packets(&self) -> Vec<ControlPacket> {
        self.of_type("packet").map(control_packet).collect()
    }

    /// The interfaces that appear in `packet` and `icmp` events.
    pub fn ifaces(&self) -> BTreeSet<String> {
        self.events
            .iter()
            .filter(|e| e["type"] == "packet" || e["type"] == "icmp")
            .filter_map(|e| e["iface"].as_str().map(str::to_owned))
            .collect()
    }

    /// The summary's `lost`.
    pub fn lost(&self) -> u64 {
        self.summary["lost"]
            .as_u64()
            .unwrap_or_else(|| panic!("summary without an integer `lost`: {}", self.summary))
    }

    /// Everything lbtrace printed, for failure messages.
    pub fn dump(&self) -> String {
        format!("stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr)
    }
}

fn string(ev: &Value, key: &str) -> String {
    ev[key]
        .as_str()
        .unwrap_or_else(|| panic!("event without a string `{key}`: {ev}"))
        .to_owned()
}

fn number(ev: &Value, key: &str) -> u32 {
    ev[key]
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or_else(|| panic!("event without a u32 `{key}`: {ev}"))
}

/// A `packet` event's comparable fields.
pub fn control_packet(ev: &Value) -> ControlPacket {
    ControlPacket {
        iface: ev["iface"].as_str().unwrap_or("(null)").to_owned(),
        dir: string(ev, "dir"),
        src: string(ev, "src"),
        dst: string(ev, "dst"),
        flags: string(ev, "flags"),
        seq: number(ev, "seq"),
        ack: number(ev, "ack"),
        mss: ev["mss"]
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .unwrap_or(0),
    }
}

/// Runs `$LBTRACE_BIN <args>` in `ns` under `timeout` (so a hung lbtrace fails the test instead
/// of blocking it) and returns its output, whatever the exit status (124: timed out).
pub fn lbtrace_output<S: AsRef<str>>(ns: &Netns, timeout: Duration, args: &[S]) -> Output {
    let bin = lbtrace_bin();
    let mut argv = vec![
        "timeout".to_owned(),
        "-k".to_owned(),
        "2".to_owned(),
        format!("{}", timeout.as_secs().max(1)),
        bin.to_string_lossy().into_owned(),
    ];
    argv.extend(args.iter().map(|a| a.as_ref().to_owned()));
    ns.output(&argv)
}

/// The JSON objects of `text`'s complete lines (a last line without its newline is still being
/// written and is left out); panics on a complete line that is not JSON.
pub fn json_lines(text: &str) -> Vec<Value> {
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    complete
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|err| {
                panic!("lbtrace printed a line that is not JSON ({err}): {l}")
            })
        })
        .collect()
}

/// A running `lbtrace watch --format json` (the tripwire), read while it runs.
#[derive(Debug)]
pub struct Watch {
    /// `None` once stopped.
    proc: Option<Proc>,
}

/// A tripwire a test did not stop (it failed, or it only looked at alerts) is stopped the way an
/// operator would, with SIGINT, so that it removes its socket and detaches; SIGKILL only if it
/// does not exit.
impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(p) = self.proc.take() {
            let _ = p.try_stop(libc::SIGINT, Duration::from_secs(10));
        }
    }
}

impl Watch {
    /// Starts `lbtrace watch <args> --format json --ready-file ...` in `ns` (output files
    /// `dir/<name>.std{out,err}`) and waits until it is armed (its ready file exists); panics with
    /// its stderr if it exits first.
    pub fn start<S: AsRef<str>>(name: &str, ns: &Netns, dir: &Path, args: &[S]) -> Watch {
        let ready = dir.join(format!("{name}.ready"));
        let _ = fs::remove_file(&ready);
        let bin = lbtrace_bin();
        let mut argv = vec![bin.to_string_lossy().into_owned(), "watch".to_owned()];
        argv.extend(args.iter().map(|a| a.as_ref().to_owned()));
        argv.extend(["--format", "json", "--ready-file"].map(str::to_owned));
        argv.push(ready.to_string_lossy().into_owned());
        let mut proc = ns.spawn(name, dir, &argv);
        proc.wait_until("armed", Lbtrace::READY_TIMEOUT, |_| ready.exists());
        Watch { proc: Some(proc) }
    }

    fn p(&self) -> &Proc {
        self.proc.as_ref().expect("the tripwire runs")
    }

    pub fn pid(&self) -> u32 {
        self.p().pid()
    }

    /// Sends `sig` to the tripwire.
    pub fn signal(&self, sig: libc::c_int) {
        self.p().signal(sig);
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.p().stderr()
    }

    /// Whether the tripwire still runs.
    pub fn running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| p.exited().is_none())
    }

    /// The JSON objects it printed so far.
    pub fn objects(&self) -> Vec<Value> {
        json_lines(&self.p().stdout())
    }

    /// The objects of one `type` (`alert`, `recovered`, `health`) printed so far.
    pub fn of_type(&self, kind: &str) -> Vec<Value> {
        self.objects()
            .into_iter()
            .filter(|o| o["type"] == kind)
            .collect()
    }

    /// Everything it wrote so far, for failure messages.
    pub fn dump(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.p().stdout(),
            self.p().stderr()
        )
    }

    /// Waits up to `timeout` for an object of type `kind` that satisfies `pred`.
    pub fn wait_for(
        &self,
        kind: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        crate::lab::process::poll(timeout, || self.of_type(kind).into_iter().find(|o| pred(o)))
    }

    /// Stops the tripwire with SIGINT, asserts it exits 0, and returns every object it printed
    /// and its stderr.
    pub fn stop(mut self) -> (Vec<Value>, String) {
        let proc = self.proc.take().expect("the tripwire runs");
        let done = proc.stop(libc::SIGINT, Duration::from_secs(15));
        assert!(
            done.status.success(),
            "lbtrace watch exited with {} after SIGINT\nstderr:\n{}\nstdout:\n{}",
            done.status,
            done.stderr,
            done.stdout
        );
        eprintln!(
            "lbtrace watch stdout:\n{}\nstderr:\n{}",
            done.stdout, done.stderr
        );
        (json_lines(&done.stdout), done.stderr)
    }
}
