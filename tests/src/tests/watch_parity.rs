//! `lbtrace watch` catches what `lbtrace check` catches, within seconds: the lab's failure
//! scenarios, each with a handful of client connections against HAProxy in HTTP mode and
//! `--alert-count 2`, raise the alert at the step `check` names (naming the backend for step 3);
//! the healthy scenarios raise none, background probes on. Each failure test measures how long
//! after the client connections (or, for the probes' evidence, the tripwire's start) the alert
//! line came, and bounds it by the time its evidence takes to exist (a SYN retransmission 1 s
//! in, a failed ARP 3 s in, the second probe one `--probe-interval` in) plus 1 s.

use std::{
    fs, thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    lab::{
        BACKEND_PORT, BACKENDS, Family, Lab, VIP, VIP_PORT,
        fault::FirewallHook,
        lb::HaProxy,
        process::Proc,
        scenario::{self, CheckRun},
    },
    runner::{Watch, lbtrace_bin},
};

fn backend(i: usize) -> String {
    Family::V4.tuple(BACKENDS[i].addr.v4, BACKEND_PORT)
}

/// `--vip VIP:80 --backend beN:8080...` (IPv4), two findings in 30 s raise an alert.
fn args(lab: &Lab) -> Vec<String> {
    let (vip, backends) = lab.endpoints(Family::V4);
    thresholds(vip, backends)
}

/// `--vip VIP --backend ...` and the thresholds: two findings in 30 s raise an alert.
fn thresholds(vip: String, backends: Vec<String>) -> Vec<String> {
    let mut args = vec!["--vip".to_owned(), vip];
    for b in backends {
        args.extend(["--backend".to_owned(), b]);
    }
    args.extend(limits());
    args
}

/// The scenario's VIP and backends as `check` takes them (with `--tls --sni` for TLS: the
/// probe options are the same), the thresholds, and the probes every second.
fn scenario_args(s: &scenario::Scenario) -> Vec<String> {
    let mut args = s.check_args();
    args.extend(limits());
    args.extend(["--probe-interval", "1s"].map(str::to_owned));
    args
}

/// Two findings in 30 s raise an alert; a health line every 2 s.
fn limits() -> Vec<String> {
    [
        "--alert-count",
        "2",
        "--alert-window",
        "30s",
        "--recover-after",
        "60s",
        "--health-interval",
        "2s",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Six client requests to the VIP at once (each its own curl, `timeout_s` each); returns their
/// HTTP codes.
fn burst(lab: &Lab, timeout_s: u32) -> Vec<String> {
    let url = Family::V4.url(VIP.v4, VIP_PORT);
    thread::scope(|s| {
        let hs: Vec<_> = (0..6)
            .map(|_| s.spawn(|| lab.curl(&url, timeout_s).0))
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect::<Vec<_>>()
    })
}

/// Starts [`burst`] and, while the requests run, waits for an alert with `key`; returns the
/// alert, how long after the requests began it was seen, and the requests' codes.
fn burst_until_alert(
    lab: &Lab,
    watch: &Watch,
    timeout_s: u32,
    key: &str,
) -> (Value, Duration, Vec<String>) {
    thread::scope(|s| {
        let t0 = Instant::now();
        let codes = s.spawn(|| burst(lab, timeout_s));
        let a = alert_after(watch, key, t0, Duration::from_secs(15));
        (a.0, a.1, codes.join().unwrap_or_default())
    })
}

/// Waits for an alert with `key`; returns it and how long after `t0` it was seen.
fn alert_after(watch: &Watch, key: &str, t0: Instant, timeout: Duration) -> (Value, Duration) {
    let a = watch
        .wait_for("alert", timeout, |o| o["alert"]["key"] == key)
        .unwrap_or_else(|| {
            panic!(
                "no alert {key} within {timeout:?}\nlbtrace watch {}",
                watch.dump()
            )
        });
    (a, t0.elapsed())
}

/// Asserts the alert is a step-3 alert naming `be`, and its latency.
fn assert_step3(alert: &Value, be: &str, latency: Duration, bound: Duration, what: &str) {
    let a = &alert["alert"];
    assert_eq!(a["step"], 3, "{alert}");
    assert_eq!(a["step_name"], "lb-to-backend", "{alert}");
    assert_eq!(a["example_backend"], be, "{alert}");
    assert!(
        a["message"].as_str().is_some_and(|m| m.contains(be)),
        "{alert}"
    );
    eprintln!(
        "latency {what}: alert {:?} after the client connections",
        latency
    );
    assert!(
        latency <= bound,
        "{what}: the alert came {latency:?} after the client connections (bound {bound:?})"
    );
}

#[test]
fn watch_parity_backend_filtered_is_a_timeout_within_seconds() {
    let lab = Lab::new();
    let _haproxy = lab.haproxy();
    let watch = Watch::start("watch", &lab.lb, lab.dir(), &args(&lab));
    let _fault = lab.fault_backend_filtered(1);
    let be = backend(1);
    let key = format!("backend_timeout:{be}");
    let (alert, latency, codes) = burst_until_alert(&lab, &watch, 12, &key);
    eprintln!("codes with {be} filtered: {codes:?}");
    // The backend SYNs' first retransmission comes 1 s in: the evidence.
    assert_step3(
        &alert,
        &be,
        latency,
        Duration::from_millis(2500),
        "filtered backend",
    );
    assert!(
        codes.iter().any(|c| c != "200"),
        "no failed request: {codes:?}"
    );
}

#[test]
fn watch_parity_backend_host_down_is_unreachable() {
    let lab = Lab::new();
    let _haproxy = lab.haproxy();
    let watch = Watch::start("watch", &lab.lb, lab.dir(), &args(&lab));
    let _fault = lab.fault_backend_host_down(1);
    let be = backend(1);
    let key = format!("backend_unreachable:{be}");
    let (alert, latency, codes) = burst_until_alert(&lab, &watch, 12, &key);
    eprintln!("codes with {be} down: {codes:?}");
    assert!(
        alert["alert"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("NEIGH_FAILED")),
        "{alert}"
    );
    // The neighbour resolution gives up about 3 s after the first SYN: the evidence.
    assert_step3(
        &alert,
        &be,
        latency,
        Duration::from_millis(4500),
        "backend host down",
    );
}

/// The lb's own firewall drops SYNs to the VIP: the drop's reason is the evidence, at once.
#[test]
fn watch_parity_dropped_syns_alert_within_a_second() {
    let lab = Lab::new();
    let _haproxy = lab.haproxy();
    let watch = Watch::start("watch", &lab.lb, lab.dir(), &args(&lab));
    let _fault = lab.fault_lb_firewall(FirewallHook::Input);
    let key = "syn_dropped:NETFILTER_DROP";
    let (alert, seen, _) = burst_until_alert(&lab, &watch, 2, key);
    eprintln!("latency nft drop: alert {seen:?} after the client connections");
    assert_eq!(alert["alert"]["step"], 1, "{alert}");
    assert!(
        seen <= Duration::from_millis(2500),
        "the dropped SYNs' alert came {seen:?} after the client connections"
    );
}

/// HAProxy checks every backend (`check inter 500ms`), and every backend refuses: HAProxy
/// answers clients 503 at once without any backend connection; its health checks are the
/// evidence, naming each backend.
#[test]
fn watch_parity_health_checked_all_backends_down() {
    let lab = Lab::new();
    let _fault = lab.fault_all_backends_down();
    let _haproxy = haproxy_checked(&lab);
    // Every server is marked down (checks every 500 ms, one failure) before clients come.
    thread::sleep(Duration::from_secs(2));
    let t0 = Instant::now();
    let mut a = args(&lab);
    a.extend(["--probe-interval", "0"].map(str::to_owned));
    let watch = Watch::start("watch", &lab.lb, lab.dir(), &a);
    let armed = t0.elapsed();
    eprintln!("the tripwire armed {armed:?} after its start");
    // No client yet, no probe: the health checks alone are the evidence.
    for i in 0..BACKENDS.len() {
        let be = backend(i);
        let (alert, latency) = alert_after(
            &watch,
            &format!("backend_refused:{be}"),
            t0,
            Duration::from_secs(10),
        );
        assert_eq!(alert["alert"]["evidence"], "lb-connection", "{alert}");
        // From the tripwire armed: checks every 500 ms, so the second refusal is at most 1 s
        // away.
        assert_step3(
            &alert,
            &be,
            latency.saturating_sub(armed),
            Duration::from_secs(3),
            "health checks refused",
        );
    }
    // HAProxy answers each client at once, with no backend connection: unserved.
    let (alert, latency, codes) = burst_until_alert(&lab, &watch, 5, "unserved");
    eprintln!("codes with every backend down: {codes:?}");
    assert!(codes.iter().all(|c| c == "503"), "{codes:?}");
    assert_eq!(alert["alert"]["step"], 3, "{alert}");
    assert_eq!(alert["alert"]["evidence"], "client", "{alert}");
    assert!(
        alert["alert"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("without any backend connection")),
        "{alert}"
    );
    eprintln!("latency unserved (health checks): alert {latency:?} after the client connections");
    assert!(
        latency <= Duration::from_millis(1500),
        "the unserved alert came {latency:?} after the client connections"
    );
}

/// The same lab through `lbtrace check`: step 3 fails, every backend refused, and the clients
/// answered at once without a backend connection are its unserved finding.
#[test]
fn watch_parity_check_finds_health_checked_all_down_unserved() {
    let lab = Lab::new();
    let _fault = lab.fault_all_backends_down();
    let _haproxy = haproxy_checked(&lab);
    thread::sleep(Duration::from_secs(2));
    let (vip, backends) = lab.endpoints(Family::V4);
    let mut a = vec!["--vip".to_owned(), vip];
    for b in backends {
        a.extend(["--backend".to_owned(), b]);
    }
    a.extend(
        [
            "--format",
            "json",
            "--observe",
            "4s",
            "--probe-timeout",
            "2s",
        ]
        .map(str::to_owned),
    );
    let run = CheckRun::start(&lab, &lbtrace_bin(), "check", &a);
    let codes = burst(&lab, 3);
    let done = run.wait(Duration::from_secs(30));
    let j: Value = serde_json::from_str(done.stdout.trim())
        .unwrap_or_else(|e| panic!("no JSON ({e})\n{}\n{}", done.stdout, done.stderr));
    let dump = || format!("{j:#}\nstderr:\n{}", done.stderr);
    assert!(codes.iter().all(|c| c == "503"), "{codes:?}");
    assert_eq!(done.status.code(), Some(1), "{}", dump());
    let s3 = &j["steps"][2];
    assert_eq!(s3["status"], "fail", "{}", dump());
    assert!(
        s3["unserved"]["connections"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "{}",
        dump()
    );
    assert!(
        s3["summary"]
            .as_str()
            .is_some_and(|m| m.contains("the LB answers without any backend connection")),
        "{}",
        dump()
    );
    // Step 2 still passes: the LB serves (an error page).
    assert_eq!(j["steps"][1]["status"], "pass", "{}", dump());
}

/// A step-3 alert the tripwire's own probes are the evidence of.
struct ProbeAlert<'a> {
    /// When the tripwire was started, and how long it took to arm.
    t0: Instant,
    armed: Duration,
    /// In the alert's message.
    words: &'a str,
    /// How long after arming it may come.
    bound: Duration,
}

impl ProbeAlert<'_> {
    /// Waits for the alert `key` naming `be`, with the probe's evidence and `words`, in time.
    fn assert(&self, watch: &Watch, key: &str, be: &str, what: &str) {
        let (alert, latency) = alert_after(watch, key, self.t0, Duration::from_secs(10));
        assert_eq!(alert["alert"]["evidence"], "probe", "{alert}");
        assert!(
            alert["alert"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(self.words) && m.contains("probe")),
            "{alert}"
        );
        // The first probe runs as the tripwire arms, the second one interval later.
        let latency = latency.saturating_sub(self.armed);
        assert_step3(&alert, be, latency, self.bound, what);
    }
}

/// No route from the LB to the backends: HAProxy's `connect()` fails at once and no packet
/// leaves; the tripwire's own probes (`--probe-interval 1s`) are the only evidence, naming each
/// backend within one interval and a second.
#[test]
fn watch_parity_no_route_is_found_by_the_probes() {
    let lab = Lab::new();
    let _haproxy = lab.haproxy();
    let _fault = lab.fault_no_route();
    let mut a = args(&lab);
    let metrics = "127.0.0.1:9465";
    a.extend(["--probe-interval", "1s", "--metrics", metrics].map(str::to_owned));
    let t0 = Instant::now();
    let watch = Watch::start("watch", &lab.lb, lab.dir(), &a);
    let armed = t0.elapsed();
    let codes = thread::scope(|s| {
        let codes = s.spawn(|| burst(&lab, 5));
        for i in 0..BACKENDS.len() {
            let be = backend(i);
            let key = format!("backend_unreachable:{be}");
            let probe = ProbeAlert {
                t0,
                armed,
                words: "ENETUNREACH",
                bound: Duration::from_secs(2),
            };
            probe.assert(&watch, &key, &be, "no route (probes)");
        }
        codes.join().unwrap_or_default()
    });
    eprintln!("codes with no route: {codes:?}");
    assert!(codes.iter().all(|c| c == "503"), "{codes:?}");
    // Each backend's probe state is a metric.
    let body = lab.lb.exec(&[
        "curl",
        "-sS",
        "-m",
        "5",
        &format!("http://{metrics}/metrics"),
    ]);
    for i in 0..BACKENDS.len() {
        let line = format!(
            "lbtrace_backend_probe_up{{backend=\"{}\",result=\"unreachable\"}} 0",
            backend(i)
        );
        assert!(body.contains(&line), "no {line} in\n{body}");
    }
    // The probes' packets are not client connections.
    let (objects, _) = watch.stop();
    let health = objects
        .iter()
        .rfind(|o| o["type"] == "health")
        .expect("a health line");
    assert_eq!(health["connections"], 6, "{health}");
    assert_eq!(health["probes"][backend(0)], "unreachable", "{health}");
}

/// The lab's other healthy scenarios, with the probes every second: client traffic and the
/// probes raise nothing, and the probes are not client connections.
#[test]
fn watch_parity_healthy_scenarios_raise_nothing() {
    let lab = Lab::new();
    for name in [
        "haproxy-tcp-healthy",
        "haproxy-tls-healthy",
        "nft-dnat-healthy",
        "nft-dnat-snat-healthy",
        "haproxy-http-v6-healthy",
        // Forwarded without NAT: not a proxy closing at once (no `unserved`); with direct
        // server return no reply passes the LB, by design.
        "routed-healthy",
        "routed-direct-return",
    ] {
        healthy(&lab, name);
    }
}

/// The HTTP load balancers' healthy scenarios with the probes every second: the VIP's probes (an
/// HTTP request through the LB, from the LB host) are fine too, and no client connection.
#[test]
fn watch_probes_healthy_http_lbs_raise_nothing() {
    let lab = Lab::new();
    for name in ["nginx-healthy", "haproxy-http-healthy"] {
        let s = scenario::find(name).unwrap_or_else(|| panic!("no scenario {name}"));
        let health = healthy(&lab, name);
        assert_eq!(health["probes"][s.vip()], "fine", "{name}: {health}");
    }
}

/// Sets up the healthy scenario `name`, arms the tripwire with the probes every second, drives
/// client requests (all served) and asserts: no alert, each client connection counted once
/// (the probes' are not), every backend's probes fine. Returns the last health line.
fn healthy(lab: &Lab, name: &str) -> Value {
    let s = scenario::find(name).unwrap_or_else(|| panic!("no scenario {name}"));
    let _setup = s.setup(lab);
    let watch = Watch::start(name, &lab.lb, lab.dir(), &scenario_args(s));
    let results = s.drive(lab, 4, &|_| {});
    assert!(
        results.iter().all(|r| r.code == "200" || r.code == "ok"),
        "{name}: {results:?}"
    );
    // Past every timeout (3 s), a tick and a few probe rounds.
    thread::sleep(Duration::from_millis(4500));
    let (objects, _) = watch.stop();
    let alerts: Vec<&Value> = objects.iter().filter(|o| o["type"] == "alert").collect();
    assert!(alerts.is_empty(), "alerts on {name}: {alerts:#?}");
    let health = objects
        .iter()
        .rfind(|o| o["type"] == "health")
        .expect("a health line")
        .clone();
    assert_eq!(health["connections"], results.len(), "{name}: {health}");
    for b in s.backends() {
        assert_eq!(health["probes"][&b], "fine", "{name}: {health}");
    }
    health
}

/// be2 connects and answers every request with HTTP 500: the tripwire's own HTTP probes name it
/// `backend_erroring` (evidence `probe`) within two probe rounds and a second.
#[test]
fn watch_probes_backend_erroring() {
    probes_find(
        "haproxy-http-backend-errors",
        "erroring",
        "answers HTTP 500",
    );
}

/// be2 reads every request and closes without an answer: `backend_drops`.
#[test]
fn watch_probes_backend_drops() {
    probes_find(
        "haproxy-http-backend-drops",
        "drops",
        "drops requests: connects, then closed without an HTTP answer",
    );
}

/// Sets up scenario `name` (be2 at fault), arms the tripwire with the probes every second and
/// waits for `backend_<health>` naming be2 in `words`, with the probe's evidence; then client
/// requests: the VIP's errors (HAProxy passing be2's on) are step 3's, no `lb_serves_errors`, no
/// other backend is named, and the probes are no client connections.
fn probes_find(name: &str, health: &str, words: &str) {
    let lab = Lab::new();
    let s = scenario::find(name).unwrap_or_else(|| panic!("no scenario {name}"));
    let _setup = s.setup(&lab);
    let t0 = Instant::now();
    let watch = Watch::start(name, &lab.lb, lab.dir(), &scenario_args(s));
    let armed = t0.elapsed();
    let be = backend(1);
    let probe = ProbeAlert {
        t0,
        armed,
        words,
        bound: Duration::from_secs(3),
    };
    probe.assert(&watch, &format!("backend_{health}:{be}"), &be, name);
    let results = s.drive(&lab, 4, &|_| {});
    eprintln!("{name}: {results:?}");
    thread::sleep(Duration::from_millis(2500));
    let (objects, _) = watch.stop();
    for a in objects.iter().filter(|o| o["type"] == "alert") {
        assert_ne!(a["alert"]["key"], "lb_serves_errors", "{a}");
        for other in [backend(0), backend(2)] {
            assert_ne!(a["alert"]["example_backend"], other.as_str(), "{a}");
        }
    }
    let health_line = objects
        .iter()
        .rfind(|o| o["type"] == "health")
        .expect("a health line");
    assert_eq!(health_line["probes"][&be], health, "{health_line}");
    assert_eq!(health_line["probes"][backend(0)], "fine", "{health_line}");
    assert_eq!(health_line["connections"], results.len(), "{health_line}");
}

/// Healthy HAProxy (with and without health checks): client traffic and the checks raise
/// nothing.
#[test]
fn watch_parity_healthy_haproxy_raises_nothing() {
    let lab = Lab::new();
    for checked in [false, true] {
        let _haproxy = if checked {
            Err(haproxy_checked(&lab))
        } else {
            Ok(lab.haproxy())
        };
        let watch = Watch::start(
            if checked { "watch-checked" } else { "watch" },
            &lab.lb,
            lab.dir(),
            &args(&lab),
        );
        let codes = burst(&lab, 5);
        assert!(codes.iter().all(|c| c == "200"), "{codes:?}");
        // Past every timeout (3 s) and a tick.
        thread::sleep(Duration::from_millis(4500));
        let (objects, _) = watch.stop();
        let alerts: Vec<&Value> = objects.iter().filter(|o| o["type"] == "alert").collect();
        assert!(
            alerts.is_empty(),
            "alerts on healthy HAProxy (health checks: {checked}): {alerts:#?}"
        );
    }
}

/// HAProxy in HTTP mode with `check inter 500ms fall 1 rise 1` on every server; waits until it
/// listens on the IPv4 VIP.
fn haproxy_checked(lab: &Lab) -> Proc {
    let cfg: String = HaProxy::config(&BACKENDS)
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("server ") {
                format!("{l} check inter 500ms fall 1 rise 1\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let path = lab.dir().join("haproxy-checked.cfg");
    fs::write(&path, cfg).expect("writing haproxy-checked.cfg");
    let path = path.to_string_lossy().into_owned();
    let mut proc = lab.lb.spawn(
        "haproxy-checked",
        lab.dir(),
        &["haproxy", "-db", "-f", &path],
    );
    let vip = Family::V4.tuple(VIP.v4, VIP_PORT);
    proc.wait_until("listening on the VIP", Duration::from_secs(10), |_| {
        lab.lb.listening_on(&vip)
    });
    proc
}

/// A path-MTU black hole toward the client: the LB's full-size replies are retransmitted until
/// the clients give up. The tripwire says so at step 4 (`replies_retransmitted`, most of them
/// full-size); the same lab with small replies raises nothing of the kind.
#[test]
fn watch_path_mtu_black_hole_is_replies_retransmitted() {
    for (name, expect) in [
        ("haproxy-http-path-mtu-black-hole", true),
        ("haproxy-http-path-mtu-small-replies", false),
    ] {
        let lab = Lab::new();
        let s = scenario::find(name).unwrap_or_else(|| panic!("no scenario {name}"));
        let _setup = s.setup(&lab);
        let watch = Watch::start(name, &lab.lb, lab.dir(), &scenario_args(s));
        let t0 = Instant::now();
        let results = s.drive(&lab, 4, &|_| {});
        eprintln!("{name}: {results:?}");
        if expect {
            let (a, latency) =
                alert_after(&watch, "replies_retransmitted", t0, Duration::from_secs(20));
            eprintln!("{name}: replies_retransmitted {latency:?} after the first request");
            assert_eq!(a["alert"]["step"], 4, "{a}");
            let msg = a["alert"]["message"].as_str().unwrap_or_default();
            assert!(
                msg.contains("not acknowledged") && msg.contains("full-size"),
                "{a}"
            );
        }
        thread::sleep(Duration::from_millis(1500));
        let (objects, _) = watch.stop();
        let alerts: Vec<&Value> = objects.iter().filter(|o| o["type"] == "alert").collect();
        if !expect {
            assert!(
                alerts.iter().all(|a| a["alert"]["step"] != 4),
                "{name}: {alerts:?}"
            );
        }
    }
}
