//! Commands and long-running processes for the lab: run-and-assert helpers and a guard that
//! SIGKILLs (and reaps) its process when dropped, so a failing test leaves nothing behind.

use anyhow::{Context as _, Result, bail};
use std::{
    ffi::OsStr,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

/// `argv` as a shell-like string, for messages.
pub fn describe<S: AsRef<OsStr>>(argv: &[S]) -> String {
    argv.iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `argv` and returns its output, whatever its exit status.
pub fn try_output<S: AsRef<OsStr>>(argv: &[S]) -> Result<Output> {
    let (prog, args) = argv.split_first().context("empty command")?;
    Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{}`", describe(argv)))
}

/// [`try_output`] for tests: panics when the command cannot be started.
pub fn output<S: AsRef<OsStr>>(argv: &[S]) -> Output {
    try_output(argv).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Runs `argv`; its stdout, or an error with its status, stderr and stdout.
pub fn try_run<S: AsRef<OsStr>>(argv: &[S]) -> Result<String> {
    let out = try_output(argv)?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}):\nstderr: {}\nstdout: {}",
            describe(argv),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim(),
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// [`try_run`] for tests: panics (with the command's stderr) when it fails.
pub fn run<S: AsRef<OsStr>>(argv: &[S]) -> String {
    try_run(argv).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Polls `cond` every 20 ms until it returns `Some` or `timeout` passes.
pub fn poll<T>(timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = cond() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `sig` to `pid`; ignores a process that is already gone.
pub fn signal(pid: u32, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid out of range");
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// How a process ended, with everything it wrote.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// A long-running child process whose stdout and stderr go to files (so a chatty process never
/// blocks on a full pipe). Dropping the guard SIGKILLs and reaps the process.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Option<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Proc {
    /// Starts `argv`; its output goes to `dir/<name>.stdout` and `dir/<name>.stderr`.
    pub fn try_spawn<S: AsRef<OsStr>>(name: &str, dir: &Path, argv: &[S]) -> Result<Proc> {
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.stderr"));
        let create = |path: &Path| {
            fs::File::create(path).with_context(|| format!("creating {}", path.display()))
        };
        let (prog, args) = argv.split_first().context("empty command")?;
        let child = Command::new(prog)
            .args(args)
            .stdin(Stdio::null())
            .stdout(create(&stdout)?)
            .stderr(create(&stderr)?)
            .spawn()
            .with_context(|| format!("cannot start {name} (`{}`)", describe(argv)))?;
        Ok(Proc {
            name: name.to_owned(),
            child: Some(child),
            stdout,
            stderr,
        })
    }

    /// [`Proc::try_spawn`] for tests: panics when the process cannot be started.
    pub fn spawn<S: AsRef<OsStr>>(name: &str, dir: &Path, argv: &[S]) -> Proc {
        Self::try_spawn(name, dir, argv).unwrap_or_else(|e| panic!("{e:#}"))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("process already reaped").id()
    }

    /// What the process wrote to stdout so far.
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn signal(&self, sig: libc::c_int) {
        signal(self.pid(), sig);
    }

    /// The exit status if the process has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut().expect("process already reaped");
        child
            .try_wait()
            .unwrap_or_else(|err| panic!("waiting for {}: {err}", self.name))
    }

    /// Waits until `ready` holds; fails (with the process's output) if the process exits first
    /// or `timeout` passes. `ready` may fail, to give up early (e.g. on Ctrl-C).
    pub fn try_wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut(&Proc) -> Result<bool>,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if ready(self)? {
                return Ok(());
            }
            if let Some(status) = self.exited() {
                // It may have become ready just before it exited.
                if ready(self)? {
                    return Ok(());
                }
                bail!(
                    "{} exited ({status}) before {what}\nstderr:\n{}\nstdout:\n{}",
                    self.name,
                    self.stderr(),
                    self.stdout()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} not {what} after {timeout:?}\nstderr:\n{}\nstdout:\n{}",
                    self.name,
                    self.stderr(),
                    self.stdout()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// [`Proc::try_wait_until`] for tests: panics instead of failing.
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut(&Proc) -> bool,
    ) {
        self.try_wait_until(what, timeout, |p| Ok(ready(p)))
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Sends `sig` and waits up to `timeout` for the process to end; SIGKILLs it and fails if it
    /// does not.
    pub fn try_stop(mut self, sig: libc::c_int, timeout: Duration) -> Result<Finished> {
        self.signal(sig);
        let Some(status) = poll(timeout, || self.exited()) else {
            self.signal(libc::SIGKILL);
            let _ = self.child.take().map(|mut c| c.wait());
            bail!(
                "{} did not exit within {timeout:?} of signal {sig}\nstderr:\n{}\nstdout:\n{}",
                self.name,
                self.stderr(),
                self.stdout()
            );
        };
        self.child = None;
        Ok(Finished {
            status,
            stdout: self.stdout(),
            stderr: self.stderr(),
        })
    }

    /// [`Proc::try_stop`] for tests: panics instead of failing.
    pub fn stop(self, sig: libc::c_int, timeout: Duration) -> Finished {
        self.try_stop(sig, timeout)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Waits up to `timeout` for the process to end by itself; SIGKILLs it and panics if it does
    /// not.
    pub fn wait(mut self, timeout: Duration) -> Finished {
        let Some(status) = poll(timeout, || self.exited()) else {
            self.signal(libc::SIGKILL);
            let _ = self.child.take().map(|mut c| c.wait());
            panic!(
                "{} did not exit within {timeout:?}\nstderr:\n{}\nstdout:\n{}",
                self.name,
                self.stderr(),
                self.stdout()
            );
        };
        self.child = None;
        Finished {
            status,
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill(mut self) -> ExitStatus {
        self.kill_and_reap().expect("process already reaped")
    }

    fn kill_and_reap(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}
