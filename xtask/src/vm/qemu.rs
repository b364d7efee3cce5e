//! QEMU run: boots a kernel and an initramfs under TCG (this machine has no usable KVM), with the
//! serial console on stdout, and collects the console lines until the guest powers off or the
//! time limit kills it. In: kernel image, initramfs, limit. Out: a [`Run`] (lines, timings);
//! the whole console goes to a log file as it arrives.

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

/// What a VM printed and how long it took.
pub struct Run {
    /// Console lines, without line ends.
    pub lines: Vec<String>,
    /// From QEMU's start to the guest's /init (its `LBT-BOOT` line).
    pub boot: Option<Duration>,
    pub elapsed: Duration,
    /// The time limit killed QEMU.
    pub timed_out: bool,
}

/// Guest memory: the initramfs is unpacked into RAM (about 100 MB with a debug build).
const MEMORY_MB: &str = "1024";

/// Boots `image` with `initrd` on `cpus` virtual CPUs (one host thread each), kills QEMU after
/// `limit`. `echo` prefixes the lines shown live
/// (results and boot line) on stderr; everything goes to `log`.
pub fn run(
    image: &Path,
    initrd: &Path,
    cpus: u32,
    limit: Duration,
    log: &Path,
    echo: &str,
) -> Result<Run> {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-cpu", "max", "-m", MEMORY_MB])
        .args(["-smp", &cpus.to_string()])
        // No NIC (and so no iPXE option ROM and its boot prompt), no display, serial on stdout,
        // no monitor; a guest reboot (panic=-1) ends QEMU.
        .args(["-nic", "none", "-display", "none", "-monitor", "none"])
        .args(["-serial", "stdio", "-no-reboot"])
        .arg("-kernel")
        .arg(image)
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            "console=ttyS0 rdinit=/init panic=-1 loglevel=4 edd=off",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = Qemu(cmd.spawn().context("cannot start qemu-system-x86_64")?);
    let child = &mut child.0;
    let (tx, rx) = mpsc::channel();
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut buf = Vec::new();
            while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end_matches(['\r', '\n']).to_owned();
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
                buf.clear();
            }
        });
    }
    drop(tx);
    let mut log = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let deadline = started + limit;
    let mut run = Run {
        lines: Vec::new(),
        boot: None,
        elapsed: Duration::ZERO,
        timed_out: false,
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((at, line)) => {
                writeln!(log, "{line}")?;
                if line.contains("LBT-BOOT") && run.boot.is_none() {
                    run.boot = Some(at - started);
                }
                if line.contains("LBT-RESULT") || line.contains("LBT-BOOT") {
                    let shown = &line[line.find("LBT-").unwrap_or(0)..];
                    eprintln!("{echo}{:>6.1}s {shown}", (at - started).as_secs_f64());
                }
                run.lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                run.timed_out = true;
                let _ = child.kill();
                break;
            }
        }
    }
    child.wait().context("waiting for qemu")?;
    run.elapsed = started.elapsed();
    Ok(run)
}

/// The QEMU process, killed when dropped: an error on the way (or a panic) leaves no VM behind.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
