//! lbtrace as an attacker or a careless operator would treat it: bad values, sockets and files
//! planted where lbtrace writes, silent clients and a reader of stdout that stops reading,
//! `--on-alert` commands that hang, signals at awkward moments, the metrics port scanned.
//! Each test fails on the defect it names (see the issue "Harden the tripwire and the CLI").

use std::{
    fs,
    os::unix::{
        fs::{FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _, symlink},
        net::UnixStream,
    },
    path::{Path, PathBuf},
    process::Output,
    time::{Duration, Instant},
};

use super::watch::DROP_SYNS;
use crate::{
    lab::{Family, Lab, Netns, VIP, VIP_PORT, process},
    runner::{Watch, json_lines, lbtrace_bin, lbtrace_output},
};

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `--vip VIP:80 --backend ...` plus short test thresholds.
fn args(lab: &Lab, extra: &[&str]) -> Vec<String> {
    let (vip, backends) = lab.endpoints(Family::V4);
    let mut a = vec!["--vip".to_owned(), vip];
    for b in backends {
        a.extend(["--backend".to_owned(), b]);
    }
    a.extend(extra.iter().map(|s| (*s).to_owned()));
    a
}

/// Runs `lbtrace watch <args>` that must refuse; returns (exit code, stderr).
fn refused(ns: &Netns, args: &[String]) -> (Option<i32>, String) {
    let mut argv = vec!["watch".to_owned()];
    argv.extend(args.iter().cloned());
    let out = lbtrace_output(ns, Duration::from_secs(30), &argv);
    let (_, stderr) = text(&out);
    (out.status.code(), stderr)
}

fn assert_refused_before_loading(what: &str, code: Option<i32>, stderr: &str, needle: &str) {
    assert_eq!(code, Some(2), "{what}: exit code; stderr:\n{stderr}");
    assert!(
        stderr.contains(needle),
        "{what}: no {needle:?} in\n{stderr}"
    );
    assert!(
        !stderr.contains("attached to"),
        "{what}: programs were attached before the refusal:\n{stderr}"
    );
}

/// A Unix listener at `path` whose accept queue is full (it never accepts), as a live tripwire
/// with a full queue looks from outside.
const FULL_LISTENER: &str = r#"
import socket, sys, time
path = sys.argv[1]
s = socket.socket(socket.AF_UNIX)
s.bind(path)
s.listen(0)
held = []
while True:
    c = socket.socket(socket.AF_UNIX)
    c.setblocking(False)
    try:
        c.connect(path)
        held.append(c)
    except BlockingIOError:
        break
print("full", len(held), flush=True)
time.sleep(600)
"#;

#[test]
fn watch_refuses_bad_sockets_files_and_values_before_loading() {
    let lab = Lab::topology();
    let dir = lab.dir();

    // Bad values: refused by the parser, exit 2, nothing attached.
    for (flag, value) in [
        ("--health-interval", "0s"),
        ("--history", "0"),
        ("--alert-count", "0"),
        ("--recover-after", "300000000000y"),
    ] {
        let (code, stderr) = refused(&lab.lb, &args(&lab, &[flag, value]));
        assert_refused_before_loading(flag, code, &stderr, flag);
    }

    // --socket at a regular file: an error, and the file is still there.
    let file = dir.join("precious.txt");
    fs::write(&file, "precious").unwrap();
    let (code, stderr) = refused(&lab.lb, &args(&lab, &["--socket", &file.to_string_lossy()]));
    assert_refused_before_loading("--socket FILE", code, &stderr, "not a socket");
    assert_eq!(fs::read_to_string(&file).unwrap(), "precious");

    // A socket whose owner may be alive (its accept queue is full: connect says EAGAIN) is not
    // taken over.
    let busy = dir.join("busy.sock");
    let script = dir.join("full_listener.py");
    fs::write(&script, FULL_LISTENER).unwrap();
    let mut holder = lab.lb.spawn(
        "full-listener",
        dir,
        &[
            "python3",
            &script.to_string_lossy(),
            &busy.to_string_lossy(),
        ],
    );
    holder.wait_until("full", Duration::from_secs(10), |p| {
        p.stdout().contains("full")
    });
    let (code, stderr) = refused(&lab.lb, &args(&lab, &["--socket", &busy.to_string_lossy()]));
    assert_refused_before_loading("a live socket", code, &stderr, "cannot tell whether");
    assert!(
        fs::symlink_metadata(&busy).is_ok_and(|m| m.file_type().is_socket()),
        "the live socket was removed"
    );
    holder.kill();

    // A ready file planted as a symlink is never followed.
    let victim = dir.join("victim");
    fs::write(&victim, "precious").unwrap();
    let ready = dir.join("planted.ready");
    symlink(&victim, &ready).unwrap();
    let mut argv = args(&lab, &["--ready-file", &ready.to_string_lossy()]);
    argv.extend([
        "--socket".to_owned(),
        dir.join("r.sock").to_string_lossy().into_owned(),
    ]);
    let (code, stderr) = refused(&lab.lb, &argv);
    assert_refused_before_loading("--ready-file LINK", code, &stderr, "symbolic link");
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
    assert!(!dir.join("r.sock").exists(), "a socket was bound");
}

/// Counts processes whose command line starts with `prefix` (not lbtrace, whose arguments
/// contain the command).
fn count_procs(prefix: &str) -> usize {
    let mut n = 0;
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.starts_with(prefix) {
                n += 1;
            }
        }
    }
    n
}

#[test]
fn on_alert_children_are_bounded_timed_out_and_stopped() {
    let lab = Lab::new();
    let _haproxy = lab.haproxy();
    lab.lb.nft(DROP_SYNS);
    let sock = lab.dir().join("w.sock");
    // Each alert starts a command that prints to stdout and stderr, then hangs.
    let marker = format!("730{}", std::process::id() % 1000);
    let cmd = format!("echo NOTJSON; echo ERRLINE >&2; exec sleep {marker}");
    let watch = Watch::start(
        "watch",
        &lab.lb,
        lab.dir(),
        &args(
            &lab,
            &[
                "--alert-count",
                "1",
                "--alert-window",
                "30s",
                "--recover-after",
                "1s",
                "--health-interval",
                "2s",
                "--socket",
                &sock.to_string_lossy(),
                "--on-alert",
                &cmd,
                "--on-alert-timeout",
                "60s",
            ],
        ),
    );
    // Alerts come and recover, one after the other; commands pile up until the limit.
    let mut most = 0;
    for i in 1..=8 {
        let _ = lab.curl(&Family::V4.url(VIP.v4, VIP_PORT), 1);
        let raised = process::poll(Duration::from_secs(10), || {
            (watch.of_type("alert").len() >= i).then_some(())
        });
        assert!(raised.is_some(), "alert {i} did not come\n{}", watch.dump());
        most = most.max(count_procs(&format!("sleep {marker}")));
        if watch
            .stderr()
            .contains("still running: not run for this alert")
        {
            break;
        }
        let recovered = process::poll(Duration::from_secs(10), || {
            (watch.of_type("recovered").len() >= i).then_some(())
        });
        assert!(
            recovered.is_some(),
            "alert {i} did not recover\n{}",
            watch.dump()
        );
    }
    let stderr = watch.stderr();
    assert!(
        stderr.contains("4 commands still running: not run for this alert"),
        "no alert was skipped for the limit within 60 s\n{}",
        watch.dump()
    );
    most = most.max(count_procs(&format!("sleep {marker}")));
    assert!(most <= 4, "{most} --on-alert commands ran at once");
    assert!(most >= 1);
    assert!(
        stderr.contains("]: NOTJSON") && stderr.contains("]: ERRLINE"),
        "the command's output is not on lbtrace's stderr, prefixed\n{stderr}"
    );
    // stdout stays pure JSON (json_lines panics on anything else).
    let alerts = watch.of_type("alert");
    assert!(alerts.len() >= 5, "{}", watch.dump());
    let (objects, stderr) = watch.stop();
    assert!(!objects.is_empty());
    assert!(stderr.contains("skipped)"), "{stderr}");
    let left = process::poll(Duration::from_secs(5), || {
        (count_procs(&format!("sleep {marker}")) == 0).then_some(())
    });
    assert!(
        left.is_some(),
        "--on-alert commands outlived the tripwire: {}",
        count_procs(&format!("sleep {marker}"))
    );

    // A command that ignores SIGTERM is killed at its deadline, while the tripwire runs on.
    let marker2 = format!("731{}", std::process::id() % 1000);
    let cmd = format!("trap '' TERM; exec sleep {marker2}");
    let watch = Watch::start(
        "watch2",
        &lab.lb,
        lab.dir(),
        &args(
            &lab,
            &[
                "--alert-count",
                "1",
                "--socket",
                &sock.to_string_lossy(),
                "--on-alert",
                &cmd,
                "--on-alert-timeout",
                "1s",
            ],
        ),
    );
    let _ = lab.curl(&Family::V4.url(VIP.v4, VIP_PORT), 1);
    let started = process::poll(Duration::from_secs(10), || {
        (count_procs(&format!("sleep {marker2}")) == 1).then_some(())
    });
    assert!(
        started.is_some(),
        "the command did not start\n{}",
        watch.dump()
    );
    let gone = process::poll(Duration::from_secs(8), || {
        (count_procs(&format!("sleep {marker2}")) == 0).then_some(())
    });
    let stderr = watch.stderr();
    assert!(
        gone.is_some(),
        "the command outlived its deadline\n{stderr}"
    );
    assert!(
        stderr.contains("still running after --on-alert-timeout 1s: SIGTERM")
            && stderr.contains("SIGKILL"),
        "{stderr}"
    );
    watch.stop();
}

/// Sets the pipe behind `fd` to its smallest size, so a few lines fill it.
fn shrink_pipe(f: &fs::File) {
    use std::os::fd::AsRawFd as _;
    // SAFETY: fcntl on a descriptor the caller owns.
    unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
}

#[test]
fn silent_clients_and_a_stalled_stdout_never_stall_the_tripwire() {
    let lab = Lab::new();
    let _haproxy = lab.haproxy();
    let dir = lab.dir();
    let sock = dir.join("w.sock");
    let fifo = dir.join("stdout.fifo");
    process::run(&["mkfifo", &fifo.to_string_lossy()]);
    // Opened for reading and never read: the reader of lbtrace's stdout that stopped reading.
    let reader = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    shrink_pipe(&reader);
    let ready = dir.join("stall.ready");
    let mut argv = vec![
        lbtrace_bin().to_string_lossy().into_owned(),
        "watch".to_owned(),
    ];
    argv.extend(args(
        &lab,
        &[
            "--events",
            "--format",
            "json",
            "--health-interval",
            "1s",
            "--socket",
            &sock.to_string_lossy(),
            "--ready-file",
            &ready.to_string_lossy(),
        ],
    ));
    let shell = format!(
        "exec {} > {}",
        argv.iter()
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(" "),
        fifo.display()
    );
    let mut proc = lab.lb.spawn("stall", dir, &["sh", "-c", &shell]);
    proc.wait_until("ready", Duration::from_secs(20), |_| ready.exists());
    for _ in 0..20 {
        lab.get_vip(Family::V4);
    }
    // 100 clients that connect and say nothing: more than the tripwire serves at once (64), so
    // the dump is told "busy" until their 2 s are up, and asks again.
    let silent: Vec<UnixStream> = (0..100)
        .map(|_| UnixStream::connect(&sock).expect("connecting to the dump socket"))
        .collect();
    let t = Instant::now();
    let out = lbtrace_output(
        &lab.lb,
        Duration::from_secs(30),
        &[
            "dump",
            "--socket",
            &sock.to_string_lossy(),
            "--format",
            "json",
        ],
    );
    let took = t.elapsed();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "dump failed: {stderr}");
    assert!(
        took < Duration::from_secs(8),
        "dump took {took:?} behind 100 silent clients and a stalled stdout"
    );
    let objects = json_lines(&stdout);
    assert!(
        objects.iter().filter(|o| o["type"] == "connection").count() >= 20,
        "{stdout}"
    );
    drop(silent);
    // SIGTERM is handled at once, though stdout is still stalled.
    let t = Instant::now();
    let done = proc.stop(libc::SIGTERM, Duration::from_secs(15));
    assert!(
        t.elapsed() < Duration::from_secs(6),
        "SIGTERM took {:?}",
        t.elapsed()
    );
    assert!(done.status.success(), "{}", done.stderr);
    let dropped = done
        .stderr
        .lines()
        .find(|l| l.contains("tripwire stopped"))
        .and_then(|l| l.split(" output lines not written").next())
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok());
    assert!(
        dropped.is_some_and(|n| n > 0),
        "the summary does not count the dropped lines:\n{}",
        done.stderr
    );
    assert!(!sock.exists(), "the socket outlived the tripwire");
    drop(reader);
}

#[test]
fn signals_end_the_tripwire_cleanly_and_history_files_are_private() {
    let lab = Lab::topology();
    let dir = lab.dir();

    // SIGHUP: a clean stop with the summary, the socket removed.
    let sock = dir.join("hup.sock");
    let watch = Watch::start(
        "hup",
        &lab.lb,
        dir,
        &args(&lab, &["--socket", &sock.to_string_lossy()]),
    );
    assert!(sock.exists());
    // SIGUSR1 writes the history: 0600, and a name planted in advance is not followed.
    let victim = dir.join("victim");
    fs::write(&victim, "precious").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let inode = fs::metadata(format!("/run/netns/{}", lab.lb.name()))
        .unwrap()
        .ino();
    for ts in now..now + 4 {
        let _ = symlink(&victim, dir.join(format!("dump-{inode}-{ts}.json")));
    }
    watch.signal(libc::SIGUSR1);
    let written = process::poll(Duration::from_secs(10), || {
        watch
            .stderr()
            .lines()
            .find_map(|l| l.split("wrote the history to ").nth(1).map(PathBuf::from))
    })
    .unwrap_or_else(|| panic!("no history file\n{}", watch.dump()));
    let meta = fs::symlink_metadata(&written).unwrap();
    assert!(meta.is_file(), "{} is not a plain file", written.display());
    assert_eq!(meta.mode() & 0o777, 0o600, "{}", written.display());
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
    let body: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&written).unwrap()).unwrap();
    assert_eq!(body["type"], "dump");

    let (pid, t) = (watch.pid(), Instant::now());
    process::signal(pid, libc::SIGHUP);
    let gone = process::poll(Duration::from_secs(10), || {
        (!Path::new(&format!("/proc/{pid}")).exists()
            || fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z")))
        .then_some(())
    });
    assert!(gone.is_some(), "SIGHUP did not stop the tripwire");
    assert!(t.elapsed() < Duration::from_secs(10));
    // Reaps it (the SIGINT that `stop` sends reaches a process that already exited).
    let (_, stderr) = watch.stop();
    assert!(
        stderr.contains("tripwire stopped"),
        "no summary after SIGHUP:\n{stderr}"
    );
    assert!(!sock.exists(), "the socket outlived SIGHUP");

    // SIGINT inherited as ignored (a background job of a script) and sent while lbtrace is
    // still loading: it must still stop, cleanly.
    let sock = dir.join("int.sock");
    let ready = dir.join("int.ready");
    let mut argv = vec![
        lbtrace_bin().to_string_lossy().into_owned(),
        "watch".to_owned(),
    ];
    argv.extend(args(
        &lab,
        &[
            "--socket",
            &sock.to_string_lossy(),
            "--ready-file",
            &ready.to_string_lossy(),
        ],
    ));
    let shell = format!(
        "trap '' INT; exec {}",
        argv.iter()
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let proc = lab.lb.spawn("int", dir, &["sh", "-c", &shell]);
    std::thread::sleep(Duration::from_millis(300));
    proc.signal(libc::SIGINT);
    let done = proc.wait(Duration::from_secs(30));
    assert!(done.status.success(), "{}\n{}", done.status, done.stderr);
    assert!(done.stderr.contains("tripwire stopped"), "{}", done.stderr);
    assert!(!sock.exists(), "the socket outlived SIGINT");
}

#[test]
fn metrics_answer_only_their_path_and_a_port_scan_stays_bounded() {
    let lab = Lab::topology();
    let dir = lab.dir();
    let port = 9465;
    let sock = dir.join("m.sock");
    // Every port of the VIP, nothing listening; metrics on every address of the namespace.
    let watch = Watch::start(
        "metrics",
        &lab.lb,
        dir,
        &[
            "--vip",
            VIP.v4,
            "--socket",
            &sock.to_string_lossy(),
            "--metrics",
            &format!("0.0.0.0:{port}"),
        ],
    );
    let stderr = watch.stderr();
    assert!(
        stderr.contains(&format!(
            "Prometheus metrics on http://0.0.0.0:{port}/metrics"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("warning: --metrics 0.0.0.0"), "{stderr}");
    // A scan of 60 ports from the client.
    let scan = format!(
        "import socket\nfor p in range(2000, 2060):\n    s = socket.socket()\n    s.settimeout(1)\n    try:\n        s.connect(('{}', p))\n    except OSError:\n        pass\n    s.close()\n",
        VIP.v4
    );
    lab.client.exec(&["python3", "-c", &scan]);
    let get = |path: &str| -> (String, String) {
        let url = format!("http://127.0.0.1:{port}{path}");
        let out = lab
            .lb
            .output(&["curl", "-s", "-m", "5", "-w", "\n%{http_code}", &url]);
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = body.rsplit_once('\n').unwrap_or(("", ""));
        (code.to_owned(), body.to_owned())
    };
    let (code, body) = get("/metrics");
    assert_eq!(code, "200", "{body}");
    let series: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("lbtrace_connections_total{"))
        .collect();
    assert!(
        !series.is_empty() && series.len() <= 17,
        "{} connection series:\n{}",
        series.len(),
        series.join("\n")
    );
    assert!(
        series.iter().any(|l| l.contains(":other\"")),
        "{}",
        series.join("\n")
    );
    let total: f64 = series
        .iter()
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        total >= 60.0,
        "{total} connections counted:\n{}",
        series.join("\n")
    );
    // The host's own limits are there too (sampled every second).
    assert!(
        body.contains("lbtrace_host_tcp_total{counter=\"TcpExt.ListenOverflows\"}"),
        "{body}"
    );
    assert_eq!(get("/").0, "200");
    assert_eq!(get("/admin").0, "404");
    assert_eq!(get("/metrics/../x").0, "404");
    let out = lab.lb.output(&[
        "curl",
        "-s",
        "-m",
        "5",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "POST",
        &format!("http://127.0.0.1:{port}/metrics"),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "405");
    watch.stop();
}

#[test]
fn captures_never_follow_links_and_a_failed_capture_keeps_the_report() {
    let lab = Lab::new();
    let _haproxy = lab.haproxy();
    let dir = lab.dir();
    let victim = dir.join("victim");
    fs::write(&victim, "precious").unwrap();
    let link = dir.join("evidence.pcap");
    symlink(&victim, &link).unwrap();
    let (vip, backends) = lab.endpoints(Family::V4);
    let mut check = vec!["check".to_owned(), "--vip".to_owned(), vip];
    for b in backends {
        check.extend(["--backend".to_owned(), b]);
    }
    check.extend(
        [
            "--observe",
            "2s",
            "--probe-timeout",
            "1s",
            "--format",
            "json",
        ]
        .map(str::to_owned),
    );

    // A planted link: refused before anything is loaded.
    let mut argv = check.clone();
    argv.extend(["--pcap".to_owned(), link.to_string_lossy().into_owned()]);
    let out = lbtrace_output(&lab.lb, Duration::from_secs(30), &argv);
    let (stdout, stderr) = text(&out);
    assert_refused_before_loading(
        "check --pcap LINK",
        out.status.code(),
        &stderr,
        "symbolic link",
    );
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");

    // A capture that cannot be written at the end: the report first, then the error (exit 2).
    let late = dir.join("late.pcap");
    let ready = dir.join("check.ready");
    let mut argv = vec![lbtrace_bin().to_string_lossy().into_owned()];
    argv.extend(check.iter().cloned());
    argv.extend([
        "--pcap".to_owned(),
        late.to_string_lossy().into_owned(),
        "--ready-file".to_owned(),
        ready.to_string_lossy().into_owned(),
    ]);
    let mut proc = lab.lb.spawn("check", dir, &argv);
    proc.wait_until("ready", Duration::from_secs(20), |_| ready.exists());
    fs::create_dir(&late).unwrap();
    let done = proc.wait(Duration::from_secs(30));
    assert_eq!(done.status.code(), Some(2), "{}", done.stderr);
    let report: serde_json::Value = serde_json::from_str(done.stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "no report on stdout ({e}):\n{}\n{}",
            done.stdout, done.stderr
        )
    });
    assert_eq!(
        report["steps"].as_array().map(Vec::len),
        Some(4),
        "{report}"
    );
    assert!(
        done.stderr
            .trim_end()
            .lines()
            .last()
            .is_some_and(|l| l.contains("--pcap")),
        "the error is not the last line:\n{}",
        done.stderr
    );
    let ready_mode = fs::metadata(&ready).unwrap().mode() & 0o777;
    assert_eq!(ready_mode, 0o600);

    // dump --pcap: a planted link is refused, a new file is 0600.
    let sock = dir.join("d.sock");
    let watch = Watch::start(
        "watch",
        &lab.lb,
        dir,
        &args(&lab, &["--socket", &sock.to_string_lossy()]),
    );
    lab.get_vip(Family::V4);
    let out = lbtrace_output(
        &lab.lb,
        Duration::from_secs(20),
        &[
            "dump",
            "--socket",
            &sock.to_string_lossy(),
            "--pcap",
            &link.to_string_lossy(),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out).1);
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
    let fresh = dir.join("fresh.pcap");
    let out = lbtrace_output(
        &lab.lb,
        Duration::from_secs(20),
        &[
            "dump",
            "--socket",
            &sock.to_string_lossy(),
            "--pcap",
            &fresh.to_string_lossy(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out).1);
    assert_eq!(fs::metadata(&fresh).unwrap().mode() & 0o777, 0o600);
    watch.stop();
}
