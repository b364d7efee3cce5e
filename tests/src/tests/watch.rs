//! `lbtrace watch` (the tripwire) and `lbtrace dump` end to end: alerts per checklist step and
//! their recovery for faults injected in the lab, the correlated history (JSON, text, pcap), the
//! dump socket's permissions, the recorder's memory bound under a burst, and the metrics.
//!
//! Thresholds are shortened for the tests: 3 findings in 30 s raise an alert, 4 s without one
//! recover it. A finding is made when its evidence exists: a drop with its reason, an RST, a SYN
//! retransmission; only what time alone reveals (an unanswered SYN, a forwarded SYN without
//! reply) is judged 3 s after the SYN by a 1 s tick, so waits allow for that.

use std::{
    fs,
    os::unix::fs::{FileTypeExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::Output,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    lab::{
        BACKEND_PORT, BACKENDS, BRIDGE, CLIENT, Family, LB_INTERNAL, Lab, Netns, VIP, VIP_PORT,
        process,
    },
    runner::{Watch, json_lines, lbtrace_bin, lbtrace_output},
};

/// How long a `dump` may take before it counts as hung.
const DUMP_TIMEOUT: Duration = Duration::from_secs(20);

fn vip() -> String {
    Family::V4.tuple(VIP.v4, VIP_PORT)
}

pub(super) fn vip_url() -> String {
    Family::V4.url(VIP.v4, VIP_PORT)
}

pub(super) fn backend(i: usize) -> String {
    Family::V4.tuple(BACKENDS[i].addr.v4, BACKEND_PORT)
}

/// `--vip VIP:80 --backend beN:8080...` (IPv4) and the tripwire's short test thresholds.
pub(super) fn watch_args(lab: &Lab, socket: Option<&Path>, extra: &[&str]) -> Vec<String> {
    let (vip, backends) = lab.endpoints(Family::V4);
    let mut args = vec!["--vip".to_owned(), vip];
    for b in backends {
        args.extend(["--backend".to_owned(), b]);
    }
    args.extend(
        [
            "--alert-count",
            "3",
            "--alert-window",
            "30s",
            "--recover-after",
            "4s",
            "--health-interval",
            "2s",
        ]
        .map(str::to_owned),
    );
    if let Some(s) = socket {
        args.extend(["--socket".to_owned(), s.to_string_lossy().into_owned()]);
    }
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `lbtrace dump <args>` in `ns`; asserts exit 0 and returns its stdout.
fn dump_ok(ns: &Netns, args: &[&str]) -> String {
    let mut argv = vec!["dump"];
    argv.extend(args);
    let out = lbtrace_output(ns, DUMP_TIMEOUT, &argv);
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "`lbtrace {}` failed ({}):\nstderr: {stderr}\nstdout: {stdout}",
        argv.join(" "),
        out.status
    );
    stdout
}

/// `lbtrace dump --format json <args>`: the connections and the final `recorder` object.
pub(super) fn dump_json(ns: &Netns, socket: &Path, args: &[&str]) -> (Vec<Value>, Value) {
    let (_, conns, recorder) = dump_parts(ns, socket, args);
    (conns, recorder)
}

/// `lbtrace dump --format json <args>`: the alerts and recoveries (first), the connections,
/// and the final `recorder` object.
fn dump_parts(ns: &Netns, socket: &Path, args: &[&str]) -> (Vec<Value>, Vec<Value>, Value) {
    let sock = socket.to_string_lossy();
    let mut argv = vec!["--socket", &sock, "--format", "json"];
    argv.extend(args);
    let mut objects = json_lines(&dump_ok(ns, &argv));
    let recorder = objects.pop().unwrap_or(Value::Null);
    assert_eq!(
        recorder["type"], "recorder",
        "dump's last line is not the recorder: {recorder}"
    );
    let n = objects
        .iter()
        .take_while(|o| o["type"] == "alert" || o["type"] == "recovered")
        .count();
    let conns = objects.split_off(n);
    for c in &conns {
        assert_eq!(c["type"], "connection", "{c}");
    }
    (objects, conns, recorder["recorder"].clone())
}

/// The python3 the lab uses.
fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// Kills every process in `ns` (a backend namespace runs only its HTTP server) and waits until
/// nothing listens on the backend port.
fn stop_backend_server(ns: &Netns) {
    let pids = process::run(&["ip", "netns", "pids", ns.name()]);
    for pid in pids.split_whitespace().filter_map(|p| p.parse().ok()) {
        process::signal(pid, libc::SIGKILL);
    }
    let gone = process::poll(Duration::from_secs(5), || {
        (!ns.listening(BACKEND_PORT)).then_some(())
    });
    assert!(
        gone.is_some(),
        "{}: port {BACKEND_PORT} still listens",
        ns.name()
    );
}

/// The alerts' keys, for messages.
pub(super) fn keys(objects: &[Value], kind: &str) -> Vec<String> {
    objects
        .iter()
        .filter(|o| o["type"] == kind)
        .map(|o| o[kind]["key"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// Waits for an `alert` with `key`; panics with everything the tripwire printed otherwise.
pub(super) fn expect_alert(watch: &Watch, key: &str, timeout: Duration) -> Value {
    watch
        .wait_for("alert", timeout, |o| o["alert"]["key"] == key)
        .unwrap_or_else(|| {
            panic!(
                "no alert {key} within {timeout:?}\nlbtrace watch {}",
                watch.dump()
            )
        })
}

/// Waits for a `recovered` with `key`; panics with everything the tripwire printed otherwise.
pub(super) fn expect_recovered(watch: &Watch, key: &str, timeout: Duration) -> Value {
    watch
        .wait_for("recovered", timeout, |o| o["recovered"]["key"] == key)
        .unwrap_or_else(|| {
            panic!(
                "no recovered {key} within {timeout:?}\nlbtrace watch {}",
                watch.dump()
            )
        })
}

/// The events of a connection's backend leg.
fn backend_events(c: &Value) -> Vec<Value> {
    c["backend_leg"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn client_events(c: &Value) -> Vec<Value> {
    c["client_leg"].as_array().cloned().unwrap_or_default()
}

/// The last `health` object.
pub(super) fn last_health(objects: &[Value]) -> Value {
    objects
        .iter()
        .rev()
        .find(|o| o["type"] == "health")
        .cloned()
        .unwrap_or_else(|| panic!("no health line in {objects:?}"))
}

#[test]
fn watch_alerts_backend_down_and_recovers() {
    let lab = Lab::new();
    let _haproxy = lab.haproxy();
    let sock = lab.dir().join("w.sock");
    let on_alert = lab.dir().join("on-alert.json");
    let cmd = format!("cat > {}", on_alert.display());
    let watch = Watch::start(
        "watch",
        &lab.lb,
        lab.dir(),
        &watch_args(&lab, Some(&sock), &["--on-alert", &cmd]),
    );

    // Healthy traffic: no alert.
    for _ in 0..5 {
        lab.get_vip(Family::V4);
    }
    thread::sleep(Duration::from_millis(2500));
    assert!(
        watch.of_type("alert").is_empty(),
        "an alert for healthy traffic\nlbtrace watch {}",
        watch.dump()
    );
    let health = watch.wait_for("health", Duration::from_secs(3), |h| {
        h["connections"].as_u64() >= Some(5)
    });
    assert!(
        health
            .as_ref()
            .is_some_and(|h| h["vip"] == vip().as_str() && h["lost"] == 0),
        "no health line counting the 5 connections\nlbtrace watch {}",
        watch.dump()
    );
    // This kernel's capabilities (6.6+: TCX, per-CPU rings, drop reasons, the retransmission
    // tracepoint, 6.10+: every reset sent), no --xdp.
    assert_eq!(
        health.map(|h| h["capabilities"].clone()),
        Some(
            serde_json::json!({"attach": "tcx", "xdp": "off", "packet_rings": "percpu", "drops": "reason", "retransmissions": "tracepoint", "resets": "all"})
        ),
        "lbtrace watch {}",
        watch.dump()
    );

    // be2's HTTP server goes away: the kernel of be2 refuses HAProxy's SYNs with RST.
    let be2 = backend(1);
    let key = format!("backend_refused:{be2}");
    stop_backend_server(lab.backend(1));
    let mut codes = Vec::new();
    for _ in 0..15 {
        let (code, _) = lab.curl(&vip_url(), 8);
        codes.push(code);
        // HAProxy's retries to be2 count too: the alert may come before 3 clients failed.
        let failed = codes.iter().filter(|c| *c != "200").count();
        if codes.len() >= 8 && failed >= 3 && !watch.of_type("alert").is_empty() {
            break;
        }
    }
    eprintln!("curl codes with be2 down: {codes:?}");
    let alert = expect_alert(&watch, &key, Duration::from_secs(5));
    let a = &alert["alert"];
    assert_eq!(a["step"], 3, "{alert}");
    assert_eq!(a["step_name"], "lb-to-backend", "{alert}");
    assert_eq!(a["example_backend"], be2.as_str(), "{alert}");
    assert_eq!(a["example_vip"], vip().as_str(), "{alert}");
    assert!(
        a["example_client"]
            .as_str()
            .is_some_and(|c| c.starts_with(&format!("{}:", CLIENT.v4))),
        "{alert}"
    );
    assert!(a["count"].as_u64() >= Some(3), "{alert}");
    assert!(
        a["message"].as_str().is_some_and(|m| m.contains(&be2)),
        "{alert}"
    );
    assert!(
        codes.iter().any(|c| c != "200"),
        "HAProxy hid every failure: {codes:?}"
    );

    // --on-alert got the alert's JSON on stdin.
    let got = process::poll(Duration::from_secs(5), || {
        fs::read_to_string(&on_alert)
            .ok()
            .filter(|s| s.ends_with('\n'))
    })
    .unwrap_or_else(|| panic!("--on-alert wrote nothing to {}", on_alert.display()));
    let got: Value = serde_json::from_str(got.trim())
        .unwrap_or_else(|e| panic!("--on-alert's stdin is not JSON ({e}): {got}"));
    assert_eq!(got["type"], "alert", "{got}");
    assert_eq!(got["alert"]["key"], key.as_str(), "{got}");

    // be2 comes back: requests succeed, and the alert recovers 4 s after its last finding.
    let _be2_again = lab.backend(1).spawn(
        "http-be2-again",
        lab.dir(),
        &[
            python(),
            "-m",
            "http.server",
            "--bind",
            BACKENDS[1].addr.v4,
            "--directory",
            &lab.dir().to_string_lossy(),
            &BACKEND_PORT.to_string(),
        ],
    );
    assert!(
        process::poll(Duration::from_secs(10), || lab
            .backend(1)
            .listening(BACKEND_PORT)
            .then_some(()))
        .is_some(),
        "be2's server did not come back"
    );
    for _ in 0..3 {
        lab.get_vip(Family::V4);
    }
    let rec = expect_recovered(&watch, &key, Duration::from_secs(10));
    assert_eq!(rec["recovered"]["step"], 3, "{rec}");
    assert!(rec["recovered"]["total"].as_u64() >= Some(3), "{rec}");
    let objects = watch.objects();
    assert_eq!(
        keys(&objects, "alert"),
        vec![key.clone()],
        "exactly one alert expected\nlbtrace watch {}",
        watch.dump()
    );

    // The dump holds the alert and its recovery, as watch printed them.
    let (notices, _, _) = dump_parts(&lab.lb, &sock, &["--failed"]);
    let kinds: Vec<(&str, &str)> = notices
        .iter()
        .map(|n| {
            let t = n["type"].as_str().unwrap_or("?");
            let body = if t == "alert" { "alert" } else { "recovered" };
            (t, n[body]["key"].as_str().unwrap_or("?"))
        })
        .collect();
    assert_eq!(
        kinds,
        [("alert", key.as_str()), ("recovered", key.as_str())],
        "{notices:#?}"
    );
    assert_eq!(
        notices[0],
        objects
            .iter()
            .find(|o| o["type"] == "alert")
            .cloned()
            .unwrap()
    );

    // The evidence: every failed connection went to be2 and was refused by it.
    let (failed, acct) = dump_json(&lab.lb, &sock, &["--failed"]);
    eprintln!("dump --failed:\n{failed:#?}\n{acct}");
    assert!(
        failed.len() >= 3,
        "{} failed connections: {failed:#?}",
        failed.len()
    );
    for c in &failed {
        assert_eq!(c["status"], "fail", "{c}");
        assert_eq!(c["step"], 3, "{c}");
        assert_eq!(c["vip"], vip().as_str(), "{c}");
        let leg = &c["backend_leg"];
        assert_eq!(leg["backend"], be2.as_str(), "{c}");
        assert_eq!(leg["join"], "inferred", "{c}");
        assert_eq!(
            leg["lb"].as_str().map(|l| l.split(':').next()),
            Some(Some(LB_INTERNAL.v4)),
            "{c}"
        );
        assert_eq!(leg["answered"], false, "{c}");
        assert!(
            c["findings"].as_array().is_some_and(|f| f
                .iter()
                .any(|f| f["kind"] == "backend_refused" && f["backend"] == be2.as_str())),
            "{c}"
        );
        let evs = backend_events(c);
        assert!(
            evs.iter().any(|e| e["type"] == "packet"
                && e["dir"] == "out"
                && e["flags"] == "S"
                && e["dst"] == be2.as_str()
                && e["iface"] == BRIDGE),
            "no SYN to be2 in the backend leg: {c}"
        );
        assert!(
            evs.iter().any(|e| e["type"] == "packet"
                && e["dir"] == "in"
                && e["flags"].as_str().is_some_and(|f| f.starts_with('R'))
                && e["src"] == be2.as_str()),
            "no RST from be2 in the backend leg: {c}"
        );
        assert!(
            client_events(c)
                .iter()
                .any(|e| e["flags"] == "S" && e["dir"] == "in" && e["dst"] == vip().as_str()),
            "no client SYN in the client leg: {c}"
        );
    }
    let (all, _) = dump_json(&lab.lb, &sock, &[]);
    let ok = all.iter().filter(|c| c["status"] == "ok").count();
    assert!(ok >= 8, "only {ok} ok connections of {}", all.len());
    let (by_be2, _) = dump_json(&lab.lb, &sock, &["--failed", "--backend", &be2]);
    assert_eq!(by_be2.len(), failed.len(), "--backend {be2} --failed");

    // Timelines.
    let sock_s = sock.to_string_lossy().into_owned();
    let text_dump = dump_ok(&lab.lb, &["--socket", &sock_s, "--failed"]);
    eprintln!("dump --failed (text):\n{text_dump}");
    assert!(
        text_dump.contains("client leg:")
            && text_dump.contains(&format!("backend leg {}:", LB_INTERNAL.v4))
            && text_dump.contains(&format!("> {be2} (joined by inferred"))
            && text_dump.contains("FAIL at step 3 (backend_refused)"),
        "{text_dump}"
    );
    assert!(
        text_dump.contains("alerts and recoveries (2):")
            && text_dump.contains("ALERT step 3 lb-to-backend")
            && text_dump.contains("RECOVERED step 3 lb-to-backend"),
        "{text_dump}"
    );
    assert!(
        text_dump.contains(&format!("{be2} > {}:", LB_INTERNAL.v4))
            && text_dump.contains("Flags [R"),
        "no RST line from be2 in the timeline:\n{text_dump}"
    );

    // The pcap of the failed connections, read back by tcpdump.
    let pcap = lab.dir().join("failed.pcap");
    let pcap_s = pcap.to_string_lossy().into_owned();
    dump_ok(
        &lab.lb,
        &[
            "--socket", &sock_s, "--failed", "--format", "json", "--pcap", &pcap_s,
        ],
    );
    let read = process::run(&["tcpdump", "-nn", "-r", &pcap_s]);
    eprintln!("tcpdump -r {pcap_s}:\n{read}");
    let vip_dot = format!("{}.{VIP_PORT}", VIP.v4);
    let be2_dot = format!("{}.{BACKEND_PORT}", BACKENDS[1].addr.v4);
    let client_syns = read
        .lines()
        .filter(|l| {
            l.contains(&format!("IP {}.", CLIENT.v4))
                && l.contains(&format!("> {vip_dot}: Flags [S]"))
        })
        .count();
    assert!(
        client_syns >= failed.len(),
        "{client_syns} client SYNs in the pcap for {} failed connections:\n{read}",
        failed.len()
    );
    assert!(
        read.lines().any(
            |l| l.contains(&format!("IP {be2_dot} > {}.", LB_INTERNAL.v4))
                && l.contains("Flags [R")
        ),
        "no RST from be2 in the pcap:\n{read}"
    );

    // SIGUSR1: the same history as JSON, next to the socket.
    watch.signal(libc::SIGUSR1);
    let written = process::poll(Duration::from_secs(5), || {
        watch
            .stderr()
            .lines()
            .find_map(|l| l.strip_prefix("lbtrace: SIGUSR1: wrote the history to "))
            .map(|p| PathBuf::from(p.trim()))
    })
    .unwrap_or_else(|| panic!("no SIGUSR1 dump\nlbtrace watch {}", watch.dump()));
    assert_eq!(written.parent(), sock.parent(), "{}", written.display());
    let usr1: Value = serde_json::from_str(&fs::read_to_string(&written).unwrap_or_default())
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", written.display()));
    let usr1_conns = usr1["connections"].as_array().map_or(0, Vec::len);
    assert!(
        usr1_conns >= all.len() && usr1["recorder"]["total"].as_u64() >= Some(all.len() as u64),
        "SIGUSR1 dump with {usr1_conns} connections, `dump` showed {}",
        all.len()
    );

    let (objects, stderr) = watch.stop();
    let health = last_health(&objects);
    assert_eq!(health["lost"], 0, "{health}\n{stderr}");
    assert!(
        health["failures"]["lb-to-backend"].as_u64() >= Some(failed.len() as u64),
        "{health}"
    );
    assert!(!sock.exists(), "the socket outlived the tripwire");
}

/// An nft table in the lb dropping clients' SYNs to VIP:80 on input.
pub(super) const DROP_SYNS: &str = "table inet lbtwatchdrop {\n\
                         \x20 chain input {\n\
                         \x20   type filter hook input priority 0; policy accept;\n\
                         \x20   ip daddr 10.10.2.10 tcp dport 80 drop\n\
                         \x20 }\n\
                         }\n";

#[test]
fn watch_alerts_upstream_or_lb_drop() {
    let lab = Lab::new();
    let _haproxy = lab.haproxy();
    let sock = lab.dir().join("w.sock");
    let watch = Watch::start(
        "watch",
        &lab.lb,
        lab.dir(),
        &watch_args(&lab, Some(&sock), &[]),
    );

    lab.lb.nft(DROP_SYNS);
    for _ in 0..4 {
        let (code, err) = lab.curl(&vip_url(), 1);
        assert_eq!(code, "000", "the SYN should have been dropped: {err}");
    }
    let key = "syn_dropped:NETFILTER_DROP";
    // The last SYN is judged 3 s after it was sent, at the next 1 s tick.
    let alert = expect_alert(&watch, key, Duration::from_secs(8));
    assert_eq!(alert["alert"]["step"], 1, "{alert}");
    assert_eq!(alert["alert"]["step_name"], "client-to-lb", "{alert}");
    assert_eq!(alert["alert"]["example_vip"], vip().as_str(), "{alert}");
    assert!(
        alert["alert"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("NETFILTER_DROP")),
        "{alert}"
    );

    lab.lb
        .exec(&["nft", "delete", "table", "inet", "lbtwatchdrop"]);
    for _ in 0..2 {
        lab.get_vip(Family::V4);
    }
    let rec = expect_recovered(&watch, key, Duration::from_secs(10));
    assert_eq!(rec["recovered"]["step"], 1, "{rec}");
    assert!(rec["recovered"]["total"].as_u64() >= Some(3), "{rec}");
    assert_eq!(
        keys(&watch.objects(), "alert"),
        vec![key.to_owned()],
        "exactly one alert expected\nlbtrace watch {}",
        watch.dump()
    );

    let (failed, _) = dump_json(&lab.lb, &sock, &["--failed"]);
    assert!(failed.len() >= 4, "{failed:#?}");
    for c in &failed {
        assert_eq!(
            (c["step"].as_u64(), c["status"].as_str()),
            (Some(1), Some("fail")),
            "{c}"
        );
        assert!(
            c["findings"].as_array().is_some_and(|f| f
                .iter()
                .any(|f| f["kind"] == "syn_dropped" && f["reason"] == "NETFILTER_DROP")),
            "{c}"
        );
        assert!(
            client_events(c).iter().any(|e| e["type"] == "drop"
                && e["reason"] == "NETFILTER_DROP"
                && e["flags"] == "S"),
            "no NETFILTER_DROP of the SYN in the client leg: {c}"
        );
        assert!(c["backend_leg"].is_null(), "{c}");
    }
    let (objects, stderr) = watch.stop();
    assert_eq!(last_health(&objects)["lost"], 0, "{stderr}");
}

#[test]
fn watch_l4_asymmetric_or_timeout() {
    let lab = Lab::new();
    let _nft = lab.nft_dnat();
    let sock = lab.dir().join("w.sock");
    // be1 answers through a gateway that does not exist: its SYN-ACKs to the client (no SNAT)
    // never come back through the lb. Its own subnet stays connected.
    lab.backend(0)
        .exec(&["ip", "route", "replace", "default", "via", "10.10.3.99"]);
    let watch = Watch::start(
        "watch",
        &lab.lb,
        lab.dir(),
        &watch_args(&lab, Some(&sock), &[]),
    );

    let be1 = backend(0);
    let key = format!("asymmetric_return:{be1}");
    let mut codes = Vec::new();
    // DNAT round-robins (numgen inc): every third connection goes to be1.
    while codes.iter().filter(|c| *c == "000").count() < 3 && codes.len() < 15 {
        codes.push(lab.curl(&vip_url(), 1).0);
    }
    eprintln!("curl codes: {codes:?}");
    assert!(
        codes.iter().any(|c| c == "200"),
        "be2/be3 should answer: {codes:?}"
    );
    let alert = expect_alert(&watch, &key, Duration::from_secs(8));
    let a = &alert["alert"];
    assert_eq!(
        (a["step"].as_u64(), a["step_name"].as_str()),
        (Some(4), Some("return-path")),
        "{alert}"
    );
    assert_eq!(a["example_backend"], be1.as_str(), "{alert}");
    let objects = watch.objects();
    assert_eq!(
        keys(&objects, "alert"),
        vec![key.clone()],
        "exactly one alert expected\nlbtrace watch {}",
        watch.dump()
    );

    let (failed, _) = dump_json(&lab.lb, &sock, &["--failed"]);
    assert!(failed.len() >= 3, "{failed:#?}");
    for c in &failed {
        assert_eq!(
            (c["step"].as_u64(), c["status"].as_str()),
            (Some(4), Some("fail")),
            "{c}"
        );
        let leg = &c["backend_leg"];
        assert_eq!(leg["join"], "isn", "{c}");
        assert_eq!(leg["backend"], be1.as_str(), "{c}");
        assert_eq!(
            leg["lb"], c["client"],
            "no SNAT: the backend sees the client: {c}"
        );
        assert_eq!(leg["answered"], false, "{c}");
        let isn = client_events(c)
            .iter()
            .find(|e| e["type"] == "packet" && e["flags"] == "S" && e["dir"] == "in")
            .map(|e| e["seq"].clone())
            .unwrap_or_else(|| panic!("no client SYN: {c}"));
        assert!(
            backend_events(c).iter().any(|e| e["flags"] == "S"
                && e["dir"] == "out"
                && e["seq"] == isn
                && e["iface"] == BRIDGE),
            "the forwarded SYN with the client's ISN: {c}"
        );
        assert!(
            !client_events(c).iter().any(|e| e["flags"] == "S."),
            "no SYN-ACK reached the client: {c}"
        );
    }
    let (objects, stderr) = watch.stop();
    assert_eq!(last_health(&objects)["lost"], 0, "{stderr}");
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// `lbtrace dump <args>` in `ns` as nobody.
fn dump_as_nobody(ns: &Netns, args: &[&str]) -> Output {
    let bin = lbtrace_bin();
    let mut argv = vec![
        "timeout",
        "20",
        "setpriv",
        "--reuid",
        "65534",
        "--regid",
        "65534",
        "--clear-groups",
    ];
    let bin = bin.to_string_lossy();
    argv.push(&bin);
    argv.push("dump");
    argv.extend(args);
    ns.output(&argv)
}

/// Runs `lbtrace watch` that must refuse to start; returns its exit code and stderr.
fn watch_refused(lab: &Lab, name: &str, args: &[String]) -> (Option<i32>, String) {
    let ready = lab.dir().join(format!("{name}.ready"));
    let bin = lbtrace_bin();
    let mut argv = vec![bin.to_string_lossy().into_owned(), "watch".to_owned()];
    argv.extend(args.iter().cloned());
    argv.extend([
        "--format".to_owned(),
        "json".to_owned(),
        "--ready-file".to_owned(),
    ]);
    argv.push(ready.to_string_lossy().into_owned());
    let mut proc = lab.lb.spawn(name, lab.dir(), &argv);
    let status = process::poll(Duration::from_secs(30), || proc.exited());
    let stderr = proc.stderr();
    match status {
        Some(s) => (s.code(), stderr),
        None => {
            let armed = ready.exists();
            drop(proc);
            panic!(
                "a second tripwire on the same socket kept running (armed: {armed})\nstderr:\n{stderr}"
            );
        }
    }
}

/// Failed checks, collected so that one run reports all of them.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn check(&mut self, ok: bool, what: String) {
        if !ok {
            eprintln!("PROBLEM: {what}");
            self.0.push(what);
        }
    }

    fn assert_none(&self) {
        assert!(self.0.is_empty(), "problems:\n{}", self.0.join("\n"));
    }
}

#[test]
fn dump_socket_is_root_only() {
    let lab = Lab::topology();
    let mut problems = Problems::default();

    // An explicit socket, in a directory anyone may traverse (so only the socket's own mode and
    // the tripwire's SO_PEERCRED check keep others out).
    let open_dir = tempfile::Builder::new()
        .prefix("lbtwatch-sock-")
        .tempdir()
        .expect("a temporary directory");
    fs::set_permissions(open_dir.path(), fs::Permissions::from_mode(0o711)).unwrap();
    let sock = open_dir.path().join("w.sock");
    let sock_s = sock.to_string_lossy().into_owned();
    let mut first = Watch::start(
        "watch1",
        &lab.lb,
        lab.dir(),
        &watch_args(&lab, Some(&sock), &[]),
    );
    let meta = fs::metadata(&sock).expect("the socket exists");
    problems.check(
        meta.file_type().is_socket(),
        format!("{sock_s} is not a socket"),
    );
    problems.check(
        mode(&sock) == 0o600,
        format!("{sock_s} has mode {:o}, not 600", mode(&sock)),
    );
    dump_json(&lab.lb, &sock, &[]);

    let out = dump_as_nobody(&lab.lb, &["--socket", &sock_s]);
    let (stdout, stderr) = text(&out);
    problems.check(
        out.status.code() == Some(2)
            && stderr.to_lowercase().contains("permission")
            && stdout.is_empty(),
        format!(
            "nobody's dump of a 0600 socket: {}, stderr {stderr:?}, stdout {stdout:?}",
            out.status
        ),
    );
    // Even with the socket opened up, the tripwire serves only root (SO_PEERCRED).
    fs::set_permissions(&sock, fs::Permissions::from_mode(0o666)).unwrap();
    let out = dump_as_nobody(&lab.lb, &["--socket", &sock_s]);
    let (stdout, stderr) = text(&out);
    problems.check(
        out.status.code() == Some(2)
            && stderr.contains("permission denied")
            && !stdout.contains("connection")
            && !stdout.contains("recorder"),
        format!(
            "nobody's dump of a 0666 socket: {}, stderr {stderr:?}, stdout {stdout:?}",
            out.status
        ),
    );
    fs::set_permissions(&sock, fs::Permissions::from_mode(0o600)).unwrap();

    // A second tripwire on the same socket refuses to start; the first keeps serving.
    let (code, stderr) = watch_refused(&lab, "watch2", &watch_args(&lab, Some(&sock), &[]));
    problems.check(
        code == Some(2) && stderr.contains("another lbtrace watch is"),
        format!("second tripwire on {sock_s}: exit {code:?}, stderr {stderr:?}"),
    );
    problems.check(first.running(), "the first tripwire stopped".to_owned());
    problems.check(
        sock.exists(),
        "the first tripwire's socket is gone".to_owned(),
    );
    dump_json(&lab.lb, &sock, &[]);

    first.stop();
    problems.check(!sock.exists(), format!("{sock_s} outlived its tripwire"));
    let out = lbtrace_output(&lab.lb, DUMP_TIMEOUT, &["dump", "--socket", &sock_s]);
    let (_, stderr) = text(&out);
    problems.check(
        out.status.code() == Some(2)
            && stderr.contains("no lbtrace watch is running")
            && stderr.trim().lines().count() == 1,
        format!("dump without a tripwire: {}, stderr {stderr:?}", out.status),
    );

    // The default socket: /run/lbtrace/watch-<netns inode>.sock, directory 0700, socket 0600.
    let inode = process::run(&[
        "stat",
        "-L",
        "-c",
        "%i",
        &format!("/run/netns/{}", lab.lb.name()),
    ]);
    let default = PathBuf::from(format!("/run/lbtrace/watch-{}.sock", inode.trim()));
    let third = Watch::start("watch3", &lab.lb, lab.dir(), &watch_args(&lab, None, &[]));
    problems.check(
        default.exists(),
        format!("no socket at {}", default.display()),
    );
    if default.exists() {
        problems.check(
            mode(&default) == 0o600,
            format!("{} has mode {:o}", default.display(), mode(&default)),
        );
        let dir = default.parent().unwrap();
        problems.check(
            mode(dir) == 0o700,
            format!("{} has mode {:o}", dir.display(), mode(dir)),
        );
        let out = lbtrace_output(&lab.lb, DUMP_TIMEOUT, &["dump", "--format", "json"]);
        problems.check(
            out.status.success(),
            format!(
                "root's dump of the default socket: {}: {}",
                out.status,
                text(&out).1
            ),
        );
        let out = dump_as_nobody(&lab.lb, &[]);
        let (stdout, stderr) = text(&out);
        problems.check(
            out.status.code() == Some(2)
                && stderr.to_lowercase().contains("permission")
                && stdout.is_empty(),
            format!(
                "nobody's dump of the default socket: {}, stderr {stderr:?}, stdout {stdout:?}",
                out.status
            ),
        );
    }
    third.stop();
    problems.check(
        !default.exists(),
        format!("{} outlived its tripwire", default.display()),
    );
    problems.assert_none();
}

/// Opens and closes `n` TCP connections to `addr`:`port` as fast as one process can; prints
/// `<connected> <seconds>`.
const BURST: &str = r#"
import socket, sys, time
addr, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ok, t = 0, time.time()
for _ in range(n):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((addr, port))
        ok += 1
    except OSError:
        pass
    s.close()
print(ok, round(time.time() - t, 3))
"#;

/// The VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn recorder_memory_stays_bounded() {
    const N: u64 = 4000;
    const HISTORY: u64 = 200;
    let lab = Lab::new();
    let _haproxy = lab.haproxy();
    let sock = lab.dir().join("w.sock");
    let watch = Watch::start(
        "watch",
        &lab.lb,
        lab.dir(),
        &watch_args(&lab, Some(&sock), &["--history", &HISTORY.to_string()]),
    );
    let rss_before = rss_kib(watch.pid());
    let started = Instant::now();
    let out = lab.client.exec(&[
        python(),
        "-c",
        BURST,
        VIP.v4,
        &VIP_PORT.to_string(),
        &N.to_string(),
    ]);
    eprintln!(
        "burst: {} connections in {:?} (connected, seconds: {})",
        N,
        started.elapsed(),
        out.trim()
    );
    let connected: u64 = out
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        connected >= N - 10,
        "only {connected} of {N} connections were accepted"
    );

    // Let the tripwire ingest everything.
    let reached = process::poll(Duration::from_secs(15), || {
        let (_, acct) = dump_json(&lab.lb, &sock, &["--last", "1"]);
        (acct["total"].as_u64() >= Some(N)).then_some(acct)
    });
    let (conns, acct) = dump_json(&lab.lb, &sock, &[]);
    eprintln!(
        "recorder after the burst: {acct} (reached {N}: {})",
        reached.is_some()
    );
    let n = |k: &str| {
        acct[k]
            .as_u64()
            .unwrap_or_else(|| panic!("recorder without {k}: {acct}"))
    };
    assert_eq!(n("limit"), HISTORY, "{acct}");
    assert!(
        n("entries") <= HISTORY && conns.len() as u64 == n("entries"),
        "{acct}, {} shown",
        conns.len()
    );
    assert!(n("total") >= N, "{acct}: fewer connections seen than made");
    assert!(n("evicted") >= n("total") - HISTORY, "{acct}");
    assert_eq!(n("evicted") + n("entries"), n("total"), "{acct}");
    assert!(
        n("bytes") <= HISTORY * 4096,
        "{acct}: over 4 KiB per connection"
    );
    // The newest are kept.
    let last_id = conns.last().and_then(|c| c["id"].as_u64());
    assert_eq!(last_id, Some(n("total")), "{acct}");
    let bad: Vec<&Value> = conns.iter().filter(|c| c["status"] != "ok").collect();
    assert!(bad.len() <= 2, "connections not ok: {bad:#?}");
    let rss_after = rss_kib(watch.pid());
    eprintln!("tripwire VmRSS: {rss_before} KiB before, {rss_after} KiB after the burst");

    let (objects, stderr) = watch.stop();
    let health = last_health(&objects);
    eprintln!("final health: {health}");
    assert_eq!(
        health["lost"], 0,
        "events lost in the burst: {health}\n{stderr}"
    );
    assert!(health["connections"].as_u64() >= Some(N), "{health}");
    assert!(
        keys(&objects, "alert").is_empty(),
        "alerts: {:?}",
        keys(&objects, "alert")
    );
}

/// The value of the metric line that starts with `name_and_labels` followed by a space.
fn metric(body: &str, name_and_labels: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        l.strip_prefix(name_and_labels)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

#[test]
fn metrics_are_served() {
    const CURLS: u64 = 5;
    let lab = Lab::new();
    let _haproxy = lab.haproxy();
    let addr = "127.0.0.1:9465";
    let watch = Watch::start(
        "watch",
        &lab.lb,
        lab.dir(),
        &watch_args(
            &lab,
            None,
            &[
                "--metrics",
                addr,
                "--socket",
                &lab.dir().join("w.sock").to_string_lossy(),
            ],
        ),
    );
    for _ in 0..CURLS {
        lab.get_vip(Family::V4);
    }
    let url = format!("http://{addr}/metrics");
    let conns_line = format!("lbtrace_connections_total{{vip=\"{}\"}}", vip());
    let body = process::poll(Duration::from_secs(5), || {
        let body = lab.lb.exec(&["curl", "-sS", "-m", "5", &url]);
        (metric(&body, &conns_line) >= Some(CURLS as f64)).then_some(body)
    })
    .unwrap_or_else(|| {
        panic!(
            "{conns_line} never reached {CURLS}:\n{}\nlbtrace watch {}",
            lab.lb.exec(&["curl", "-sS", "-m", "5", &url]),
            watch.dump()
        )
    });
    eprintln!("metrics:\n{body}");
    let head = lab.lb.exec(&[
        "curl",
        "-sS",
        "-m",
        "5",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{content_type}",
        &url,
    ]);
    assert!(head.starts_with("200 text/plain"), "{head}");
    assert!(
        body.contains("# TYPE lbtrace_connections_total counter"),
        "{body}"
    );
    assert_eq!(
        metric(&body, "lbtrace_events_lost_total"),
        Some(0.0),
        "{body}"
    );
    let vip_syn = format!(
        "lbtrace_packets_total{{endpoint=\"{}\",role=\"vip\",kind=\"syn\"}}",
        vip()
    );
    assert!(
        metric(&body, &vip_syn) >= Some(CURLS as f64),
        "{vip_syn}\n{body}"
    );
    let backend_syns: f64 = (0..BACKENDS.len())
        .filter_map(|i| {
            metric(
                &body,
                &format!(
                    "lbtrace_packets_total{{endpoint=\"{}\",role=\"backend\",kind=\"syn\"}}",
                    backend(i)
                ),
            )
        })
        .sum();
    assert!(
        backend_syns >= CURLS as f64,
        "backend SYNs {backend_syns}\n{body}"
    );
    for kind in ["syn", "syn_ack", "rst", "fin", "icmp", "drop"] {
        assert!(
            body.contains(&format!("role=\"vip\",kind=\"{kind}\"}}")),
            "no {kind} line\n{body}"
        );
    }
    assert!(
        metric(&body, "lbtrace_recorder_limit") == Some(10_000.0),
        "{body}"
    );
    assert!(
        !body.contains("lbtrace_alert_active{"),
        "an active alert for healthy traffic\n{body}"
    );
    watch.stop();
}

/// The LB service is down, the VIP address up: the lb's kernel answers every client SYN with RST
/// (and frees it as NO_SOCKET). Each refused connection is a step-2 finding, the `no_listener`
/// alert fires, and `health` counts the failures under `lb-handling`.
#[test]
fn watch_alerts_no_listener() {
    let lab = Lab::topology();
    assert!(
        !lab.lb.listening(VIP_PORT),
        "something listens on the lb's port {VIP_PORT}"
    );
    let sock = lab.dir().join("w.sock");
    let watch = Watch::start(
        "watch",
        &lab.lb,
        lab.dir(),
        &watch_args(&lab, Some(&sock), &[]),
    );

    let refused = 4;
    for _ in 0..refused {
        let (code, err) = lab.curl(&vip_url(), 2);
        assert!(
            code == "000" && err.contains("Failed to connect"),
            "the lb's kernel should refuse the connection: code {code}: {err}"
        );
    }
    let alert = expect_alert(&watch, "no_listener", Duration::from_secs(8));
    let a = &alert["alert"];
    assert_eq!(
        (a["step"].as_u64(), a["step_name"].as_str()),
        (Some(2), Some("lb-handling")),
        "{alert}"
    );
    assert_eq!(a["example_vip"], vip().as_str(), "{alert}");
    assert!(
        a["example_client"]
            .as_str()
            .is_some_and(|c| c.starts_with(&format!("{}:", CLIENT.v4))),
        "{alert}"
    );

    // The alert fires at the third finding; the fourth connection's events may still be on
    // their way through the rings when the alert is read.
    let failed = process::poll(Duration::from_secs(5), || {
        let (failed, _) = dump_json(&lab.lb, &sock, &["--failed"]);
        (failed.len() >= refused).then_some(failed)
    })
    .unwrap_or_else(|| {
        let (all, acct) = dump_json(&lab.lb, &sock, &[]);
        panic!(
            "not {refused} failed connections\n{all:#?}\n{acct}\nlbtrace watch {}",
            watch.dump()
        )
    });
    assert_eq!(failed.len(), refused, "{failed:#?}");
    for c in &failed {
        assert_eq!(
            (c["step"].as_u64(), c["status"].as_str()),
            (Some(2), Some("fail")),
            "{c}"
        );
        assert!(
            c["findings"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f["kind"] == "no_listener")),
            "{c}"
        );
        let evs = client_events(c);
        assert!(
            evs.iter().any(|e| e["type"] == "packet"
                && e["dir"] == "out"
                && e["flags"] == "R."
                && e["src"] == vip().as_str()),
            "no RST from the VIP in the client leg: {c}"
        );
        assert!(
            evs.iter()
                .any(|e| e["type"] == "drop" && e["reason"] == "NO_SOCKET" && e["flags"] == "S"),
            "no NO_SOCKET drop of the SYN in the client leg: {c}"
        );
        assert!(c["backend_leg"].is_null(), "{c}");
    }
    let (objects, stderr) = watch.stop();
    let health = last_health(&objects);
    assert_eq!(health["lost"], 0, "{health}\n{stderr}");
    assert_eq!(
        health["failures"]["lb-handling"].as_u64(),
        Some(refused as u64),
        "{health}"
    );
    assert_eq!(
        keys(&objects, "alert"),
        vec!["no_listener".to_owned()],
        "exactly one alert expected\n{stderr}"
    );
}
