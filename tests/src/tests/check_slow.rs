//! `lbtrace check` on backends that connect but serve badly: one answering HTTP 500 (behind
//! HAProxy and behind nginx), one answering later than HAProxy's `timeout server` (clients get
//! 504), one that closes every connection without an answer, and nginx in front of healthy backends. Each check probes every target
//! `--probe-count` (3) times: step 3 names the backend with its numbers, from the series.
//! Also a half-closed client (`nc -N`) that gets its answer: not a hang.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::check::{
    BE2, Expect, HEALTHY, Outcome, PASS4, assert_clients, assert_contains, assert_verdict, check,
    check_driven, check_scenario,
};
use crate::lab::{
    BACKEND_PORT, BACKENDS, VIP, VIP_PORT,
    scenario::{ClientResult, SLOW_BACKEND_DELAY},
};

/// A healthy Layer 7 load balancer: every step passes.
const ALL_PASS: Expect = Expect {
    code: 0,
    mode: "l7",
    steps: PASS4,
    first_failed: None,
    backends: HEALTHY,
};

/// `series` of backend `i`, with its `health`.
fn series(o: &Outcome, i: usize) -> &Value {
    &o.backend(i)["series"]
}

/// `min <= median <= max` of `stats` (a `{min, median, max, n}` object), and the median.
fn median(o: &Outcome, stats: &Value) -> f64 {
    let get = |k: &str| stats[k].as_f64().unwrap_or(f64::NAN);
    let (min, med, max) = (get("min"), get("median"), get("max"));
    assert!(
        min <= med && med <= max && stats["n"] == 3,
        "not min/median/max of 3: {stats}\n{}",
        o.dump()
    );
    med
}

/// Healthy backends: three probes each, HTTP 200, fine, with numbers.
fn assert_fine(o: &Outcome, which: &[usize]) {
    for &i in which {
        let s = series(o, i);
        assert_eq!(
            (s["probes"].as_u64(), s["health"].as_str()),
            (Some(3), Some("fine")),
            "backend {i}\n{}",
            o.dump()
        );
        assert_eq!(
            s["statuses"],
            serde_json::json!([200, 200, 200]),
            "{}",
            o.dump()
        );
        median(o, &s["connect_ms"]);
        median(o, &s["ttfb_ms"]);
    }
}

/// be2 answers 500 to every probe: step 3 fails naming it, with the count and its times; the
/// others are fine. Step 2 is left to pass: its words may name the VIP's 500s (the backends
/// explain them). Clients get 200 or be2's 500, passed on by the LB.
fn assert_be2_errors(o: &Outcome) {
    assert_verdict(
        o,
        &Expect {
            code: 1,
            mode: "l7",
            steps: ["pass", "pass", "fail", "pass"],
            first_failed: Some(3),
            backends: HEALTHY,
        },
    );
    let be2 = format!("{}:{BACKEND_PORT}", BACKENDS[BE2].addr.v4);
    assert_contains(
        o,
        3,
        &format!("{be2} answers HTTP 500 (3 of 3 probes; time to first byte median "),
    );
    let s = series(o, BE2);
    assert_eq!(
        (
            s["health"].as_str(),
            s["status"].as_u64(),
            s["errors"].as_u64()
        ),
        (Some("erroring"), Some(500), Some(3)),
        "{}",
        o.dump()
    );
    assert_eq!(
        s["statuses"],
        serde_json::json!([500, 500, 500]),
        "{}",
        o.dump()
    );
    let ttfb = median(o, &s["ttfb_ms"]);
    assert!(ttfb > 0.0 && ttfb < 1000.0, "{}", o.dump());
    median(o, &s["connect_ms"]);
    assert_fine(o, &[0, 2]);
    assert_eq!(o.json["vip_probe"]["series"]["probes"], 3, "{}", o.dump());
    assert_clients(
        o,
        |c| c.code == "200" || c.code == "500",
        "200 or be2's 500",
    );
}

#[test]
fn check_haproxy_http_backend_errors() {
    assert_be2_errors(&check("haproxy-http-backend-errors"));
}

#[test]
fn check_nginx_backend_errors() {
    assert_be2_errors(&check("nginx-backend-errors"));
}

#[test]
fn check_haproxy_http_backend_slow() {
    let o = check("haproxy-http-backend-slow");
    // Slow is a warning: no step fails (exit 0).
    assert_verdict(
        &o,
        &Expect {
            code: 0,
            mode: "l7",
            steps: ["pass", "pass", "warn", "pass"],
            first_failed: None,
            backends: HEALTHY,
        },
    );
    let be2 = format!("{}:{BACKEND_PORT}", BACKENDS[BE2].addr.v4);
    assert_contains(
        &o,
        3,
        &format!("{be2} slow: time to first byte median 1.5 s (min "),
    );
    assert_contains(&o, 3, "past --slow 1 s");
    let s = series(&o, BE2);
    assert_eq!(s["health"], "slow", "{}", o.dump());
    assert_eq!(s["what"], "first_byte", "{}", o.dump());
    let delay = SLOW_BACKEND_DELAY.as_secs_f64() * 1000.0;
    let ttfb = median(&o, &s["ttfb_ms"]);
    assert!(
        ttfb >= delay && ttfb < delay + 400.0,
        "median time to first byte {ttfb} ms, be2 waits {delay} ms\n{}",
        o.dump()
    );
    assert_fine(&o, &[0, 2]);
    // Clients sent to be2 got HAProxy's 504 (timeout server 1 s), the others a 200.
    assert_clients(&o, |c| c.code == "200" || c.code == "504", "200 or 504");
}

/// The same slow be2 behind nginx, which waits for it (`proxy_read_timeout 10s`): clients sent
/// there get their 200 late instead of a 504; step 3 names be2 as slow all the same, from the
/// LB host's own probes, with its numbers.
#[test]
fn check_nginx_backend_slow() {
    let o = check("nginx-backend-slow");
    assert_eq!(o.json["steps"][2]["status"], "warn", "{}", o.dump());
    assert_eq!(o.json["mode"], "l7", "{}", o.dump());
    let be2 = format!("{}:{BACKEND_PORT}", BACKENDS[BE2].addr.v4);
    assert_contains(
        &o,
        3,
        &format!("{be2} slow: time to first byte median 1.5 s (min "),
    );
    let s = series(&o, BE2);
    assert_eq!(
        (&s["health"], &s["what"]),
        (&Value::from("slow"), &Value::from("first_byte")),
        "{}",
        o.dump()
    );
    let delay = SLOW_BACKEND_DELAY.as_secs_f64() * 1000.0;
    let ttfb = median(&o, &s["ttfb_ms"]);
    assert!(
        ttfb >= delay && ttfb < delay + 400.0,
        "{ttfb} ms\n{}",
        o.dump()
    );
    assert_fine(&o, &[0, 2]);
    // curl -m 2 outlasts be2's 1.5 s: every client gets a 200, some of them late.
    assert_clients(&o, |c| c.code == "200", "200 (late from be2)");
}

/// be2 accepts and never answers within the probe timeout (2 s): step 3 fails naming it as
/// hanging, with the timeout; clients sent there by HAProxy give up (curl -m 2), so step 2 warns
/// that connections hang.
#[test]
fn check_haproxy_http_backend_hangs() {
    let o = check("haproxy-http-backend-hangs");
    assert_verdict(
        &o,
        &Expect {
            code: 1,
            mode: "l7",
            steps: ["pass", "warn", "fail", "pass"],
            first_failed: Some(3),
            backends: HEALTHY,
        },
    );
    let be2 = format!("{}:{BACKEND_PORT}", BACKENDS[BE2].addr.v4);
    assert_contains(
        &o,
        3,
        &format!(
            "{be2} hangs: connects but no HTTP answer within the probe timeout (2 s; 3 of 3 probes)"
        ),
    );
    assert_contains(&o, 2, "hang");
    let s = series(&o, BE2);
    assert_eq!(
        (
            s["health"].as_str(),
            s["phase"].as_str(),
            s["hung"].as_u64()
        ),
        (Some("hangs"), Some("http"), Some(3)),
        "{}",
        o.dump()
    );
    assert!(
        s["after_ms"].as_f64().is_some_and(|ms| ms >= 2000.0),
        "{}",
        o.dump()
    );
    median(&o, &s["connect_ms"]);
    assert_eq!(s["ttfb_ms"], Value::Null, "{}", o.dump());
    assert_fine(&o, &[0, 2]);
    assert_clients(
        &o,
        |c| c.code == "200" || c.code == "000",
        "200 or a curl timeout",
    );
}

/// be2 reads each request and closes without an answer: not "connected, fine" but a backend that
/// drops every request (step 3 fails naming it); HAProxy answers clients sent there with 502.
#[test]
fn check_haproxy_http_backend_drops() {
    let o = check("haproxy-http-backend-drops");
    assert_verdict(
        &o,
        &Expect {
            code: 1,
            mode: "l7",
            steps: ["pass", "pass", "fail", "pass"],
            first_failed: Some(3),
            backends: HEALTHY,
        },
    );
    let be2 = format!("{}:{BACKEND_PORT}", BACKENDS[BE2].addr.v4);
    assert_contains(
        &o,
        3,
        &format!(
            "{be2} drops requests: connects, then closed without an HTTP answer (3 of 3 probes)"
        ),
    );
    let s = series(&o, BE2);
    assert_eq!(
        (
            s["health"].as_str(),
            s["phase"].as_str(),
            s["how"].as_str(),
            s["dropped"].as_u64()
        ),
        (Some("drops"), Some("http"), Some("closed"), Some(3)),
        "{}",
        o.dump()
    );
    assert_eq!(s["statuses"], serde_json::json!([]), "{}", o.dump());
    median(&o, &s["connect_ms"]);
    assert_fine(&o, &[0, 2]);
    assert_clients(
        &o,
        |c| c.code == "200" || c.code == "502",
        "200 or HAProxy's 502",
    );
}

#[test]
fn check_nginx_healthy() {
    let o = check("nginx-healthy");
    assert_verdict(&o, &ALL_PASS);
    assert_fine(&o, &[0, 1, 2]);
    let vip = &o.json["vip_probe"]["series"];
    assert_eq!(
        (vip["health"].as_str(), &vip["statuses"]),
        (Some("fine"), &serde_json::json!([200, 200, 200])),
        "{}",
        o.dump()
    );
    assert_clients(&o, |c| c.code == "200", "200 from nginx");
}

/// `nc -N` sends its request and a FIN at once (a half-close) and reads the answer: HAProxy
/// answers, and step 2 says so; the client did not give up, the LB did not hang.
#[test]
fn check_half_closed_client_is_answered_not_hung() {
    let nc = format!(
        "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 5 nc -N {} {VIP_PORT}",
        VIP.v4
    );
    let started = Instant::now();
    let o = check_scenario("haproxy-http-healthy", |lab, s| {
        check_driven(lab, s, &[], || {
            (0..3)
                .map(|_| {
                    let at = started.elapsed();
                    let out = lab.client.output(&["sh", "-c", &nc]);
                    let stdout = String::from_utf8_lossy(&out.stdout);
                    let status = stdout.lines().next().unwrap_or_default();
                    std::thread::sleep(Duration::from_millis(300));
                    ClientResult {
                        what: "nc -N".to_owned(),
                        code: status.split(' ').nth(1).unwrap_or("000").to_owned(),
                        error: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                        at,
                    }
                })
                .collect()
        })
    });
    assert!(
        o.clients.iter().all(|c| c.code == "200"),
        "nc got no 200\n{}",
        o.dump()
    );
    assert_verdict(&o, &ALL_PASS);
    // The check ends once every step passes: after the first answered connection or later.
    assert_contains(&o, 2, "answered and closed");
    assert!(!o.summary(2).contains("hang"), "{}", o.dump());
}
