//! `lbtrace watch` catches what `lbtrace check` catches, within seconds: the lab's failure
//! scenarios, each with a handful of client connections against HAProxy in HTTP mode and
//! `--alert-count 2`, raise the alert at the step `check` names (naming the backend for step 3);
//! the healthy scenarios raise none. Each failure test measures how long after the client
//! connections the alert line came, and bounds it by the time its evidence takes to exist (a SYN
//! retransmission 1 s in, a failed ARP 3 s in) plus 1 s.

use std::{
    fs, thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    lab::{
        BACKEND_PORT, BACKENDS, Family, Lab, VIP, VIP_PORT, fault::FirewallHook, lb::HaProxy,
        process::Proc,
    },
    runner::Watch,
};

fn backend(i: usize) -> String {
    Family::V4.tuple(BACKENDS[i].addr.v4, BACKEND_PORT)
}

/// `--vip VIP:80 --backend beN:8080...` (IPv4), two findings in 30 s raise an alert.
fn args(lab: &Lab) -> Vec<String> {
    let (vip, backends) = lab.endpoints(Family::V4);
    let mut args = vec!["--vip".to_owned(), vip];
    for b in backends {
        args.extend(["--backend".to_owned(), b]);
    }
    args.extend(
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
        .map(str::to_owned),
    );
    args
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
    let watch = Watch::start("watch", &lab.lb, lab.dir(), &args(&lab));
    // No client yet: the health checks alone are the evidence.
    for i in 0..BACKENDS.len() {
        let be = backend(i);
        let (alert, latency) = alert_after(
            &watch,
            &format!("backend_refused:{be}"),
            t0,
            Duration::from_secs(10),
        );
        assert_eq!(alert["alert"]["evidence"], "lb-connection", "{alert}");
        // From the start of the tripwire (a few hundred ms to arm): checks every 500 ms, so
        // the second refusal is at most 1 s away.
        assert_step3(
            &alert,
            &be,
            latency,
            Duration::from_secs(3),
            "health checks refused",
        );
    }
    let codes = burst(&lab, 5);
    eprintln!("codes with every backend down: {codes:?}");
    assert!(codes.iter().all(|c| c == "503"), "{codes:?}");
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
