//! `--on-alert CMD`: a shell command per alert (a capture, a webhook, a page), with the alert's
//! JSON on stdin, supervised so that it can never hurt the tripwire:
//!
//! - at most [`MAX_CHILDREN`] run at a time and at most [`PER_MINUTE`] start per minute; an alert
//!   beyond either is skipped, counted and logged;
//! - each runs in a process group of its own with a deadline (`--on-alert-timeout`): then
//!   SIGTERM to the group, and SIGKILL [`KILL_GRACE`] later;
//! - no thread per child: each is a task of the main runtime;
//! - its stdout and stderr go to lbtrace's stderr, line by line, prefixed `lbtrace: on-alert[PID]:`,
//!   never into lbtrace's stdout (which stays pure JSON lines with `--format json`);
//! - when the tripwire stops, every child still running gets the same SIGTERM / SIGKILL.

use std::{
    collections::VecDeque,
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _},
    process::{Child, Command},
    sync::watch,
    task::JoinSet,
};

use crate::session::Output;

/// Commands running at once.
pub const MAX_CHILDREN: usize = 4;
/// Commands started per minute.
pub const PER_MINUTE: usize = 6;
/// Between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(2);
/// The longest line of a child's output passed on (longer ones are cut).
const MAX_LINE: usize = 4096;

/// Runs and supervises the `--on-alert` command.
pub struct OnAlert {
    cmd: String,
    timeout: Duration,
    log: Arc<Output>,
    recent: VecDeque<Instant>,
    children: JoinSet<()>,
    stop: watch::Sender<bool>,
    /// Alerts for which the command was not run: the rate limit, or MAX_CHILDREN running.
    pub skipped_rate: u64,
    pub skipped_busy: u64,
    pub started: u64,
}

impl OnAlert {
    pub fn new(cmd: String, timeout: Duration, log: Arc<Output>) -> OnAlert {
        OnAlert {
            cmd,
            timeout,
            log,
            recent: VecDeque::new(),
            children: JoinSet::new(),
            stop: watch::channel(false).0,
            skipped_rate: 0,
            skipped_busy: 0,
            started: 0,
        }
    }

    /// Children still running.
    pub fn running(&mut self) -> usize {
        while self.children.try_join_next().is_some() {}
        self.children.len()
    }

    /// Starts the command for one alert, unless a limit says no (then counted and logged).
    pub fn run(&mut self, alert_json: &str) {
        let now = Instant::now();
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= PER_MINUTE {
            self.skipped_rate += 1;
            self.log.line(&format!(
                "lbtrace: --on-alert rate limit ({PER_MINUTE}/min): not run for this alert ({} skipped so far)",
                self.skipped_rate + self.skipped_busy
            ));
            return;
        }
        if self.running() >= MAX_CHILDREN {
            self.skipped_busy += 1;
            self.log.line(&format!(
                "lbtrace: --on-alert: {MAX_CHILDREN} commands still running: not run for this alert ({} skipped so far)",
                self.skipped_rate + self.skipped_busy
            ));
            return;
        }
        let child = Command::new("sh")
            .arg("-c")
            .arg(&self.cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                self.log.line(&format!(
                    "lbtrace: --on-alert: cannot run `sh -c {}`: {e}",
                    self.cmd
                ));
                return;
            }
        };
        self.recent.push_back(now);
        self.started += 1;
        let input = format!("{alert_json}\n");
        let log = Arc::clone(&self.log);
        let stop = self.stop.subscribe();
        let timeout = self.timeout;
        self.children
            .spawn(supervise(child, input, timeout, stop, log));
    }

    /// Stops every child still running (SIGTERM, then SIGKILL) and waits for them, at most
    /// KILL_GRACE plus a second.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let all = async { while self.children.join_next().await.is_some() {} };
        if tokio::time::timeout(KILL_GRACE + Duration::from_secs(1), all)
            .await
            .is_err()
        {
            self.children.abort_all();
        }
    }
}

/// Sends `sig` to the child's process group (the shell and whatever it started).
fn signal_group(pgid: u32, sig: libc::c_int) {
    if let Ok(pgid) = libc::pid_t::try_from(pgid) {
        // SAFETY: kill(2) with a negative pid signals a process group; no memory is involved.
        unsafe { libc::kill(-pgid, sig) };
    }
}

/// Whether the process group still has a member.
fn group_alive(pgid: u32) -> bool {
    libc::pid_t::try_from(pgid).is_ok_and(|p| {
        // SAFETY: signal 0 only checks for existence.
        unsafe { libc::kill(-p, 0) == 0 }
    })
}

async fn supervise(
    mut child: Child,
    input: String,
    timeout: Duration,
    mut stop: watch::Receiver<bool>,
    log: Arc<Output>,
) {
    let pid = child.id().unwrap_or(0);
    if let Some(mut stdin) = child.stdin.take() {
        let _ =
            tokio::time::timeout(Duration::from_secs(2), stdin.write_all(input.as_bytes())).await;
    }
    let mut readers = JoinSet::new();
    if let Some(out) = child.stdout.take() {
        readers.spawn(forward(out, pid, Arc::clone(&log)));
    }
    if let Some(err) = child.stderr.take() {
        readers.spawn(forward(err, pid, Arc::clone(&log)));
    }
    let why = tokio::select! {
        status = child.wait() => {
            match status {
                Ok(s) if !s.success() => {
                    log.line(&format!("lbtrace: on-alert[{pid}]: exited with {s}"));
                }
                Err(e) => {
                    log.line(&format!("lbtrace: on-alert[{pid}]: {e}"));
                }
                Ok(_) => {}
            }
            None
        }
        () = tokio::time::sleep(timeout) => Some(format!(
            "still running after --on-alert-timeout {}",
            humantime::format_duration(timeout)
        )),
        _ = stop.wait_for(|s| *s) => Some("the tripwire is stopping".to_owned()),
    };
    // Whatever the shell left in its group (a capture started in the background) ends with it.
    if why.is_some() || group_alive(pid) {
        let why = why.unwrap_or_else(|| "the command exited and left processes behind".to_owned());
        log.line(&format!("lbtrace: on-alert[{pid}]: {why}: SIGTERM"));
        signal_group(pid, libc::SIGTERM);
        let exited = tokio::time::timeout(KILL_GRACE, async {
            let _ = child.wait().await;
            while group_alive(pid) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        if exited.is_err() {
            log.line(&format!(
                "lbtrace: on-alert[{pid}]: no exit {} after SIGTERM: SIGKILL",
                humantime::format_duration(KILL_GRACE)
            ));
            signal_group(pid, libc::SIGKILL);
            let _ = child.wait().await;
        }
    }
    // The pipes close when the group is gone; a process that left the group may hold them.
    let drained = tokio::time::timeout(Duration::from_secs(1), async {
        while readers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        readers.abort_all();
    }
}

/// Passes a child's output on to lbtrace's stderr, a prefixed line at a time.
async fn forward(mut r: impl AsyncRead + Unpin, pid: u32, log: Arc<Output>) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        while let Some(i) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            emit(&log, pid, &line[..line.len() - 1]);
        }
        if pending.len() > MAX_LINE {
            emit(&log, pid, &pending);
            pending.clear();
        }
    }
    if !pending.is_empty() {
        emit(&log, pid, &pending);
    }
}

fn emit(log: &Output, pid: u32, line: &[u8]) {
    let cut = &line[..line.len().min(MAX_LINE)];
    log.line(&format!(
        "lbtrace: on-alert[{pid}]: {}",
        String::from_utf8_lossy(cut)
    ));
}
