//! The data-path mode (`--data`) in a lab: a Layer 4 LB only forwards, so the retransmissions
//! of a path-MTU black hole are the backend's, and only `--data` sees them.

use std::{thread, time::Duration};

use serde_json::Value;

use super::{
    check::{
        BE2, Outcome, REQUESTS, assert_clients, assert_mtu_black_hole, check_driven, check_scenario,
    },
    watch::{
        backend, dump_json, expect_alert, expect_recovered, keys, last_health, vip_url, watch_args,
    },
};
use crate::{
    lab::{
        Answer, BACKEND_PORT, BACKENDS, Lab,
        scenario::{SLOW_BACKEND_DELAY, Scenario},
    },
    runner::Watch,
};

/// A path-MTU black hole toward the client in front of nftables DNAT (Layer 4: the backends
/// answer the client themselves, through the LB): the handshakes pass, the backend's 200 KB
/// answer's full-size segments never arrive and no ICMP fragmentation-needed comes back. With
/// `--data` step 4 fails with the MTU finding, its evidence the forwarded full-size
/// retransmissions toward the client; without it, on the same lab, step 4 sees only
/// handshakes and does not claim it.
#[test]
fn check_nft_dnat_path_mtu_black_hole() {
    let mut without: Option<Outcome> = None;
    let o = check_scenario("nft-dnat-path-mtu-black-hole", |lab, s| {
        assert!(s.data, "the scenario is checked with --data");
        let with = check_driven(lab, s, &[], || s.drive(lab, REQUESTS, &|_| {}));
        let plain: &'static Scenario = Box::leak(Box::new(Scenario { data: false, ..*s }));
        without = Some(check_driven(lab, plain, &[], || {
            plain.drive(lab, REQUESTS, &|_| {})
        }));
        with
    });
    let evidence = assert_mtu_black_hole(&o, "l4", "forwarded full-size segments retransmitted");
    assert!(
        evidence.iter().any(|e| e["type"] == "retrans"
            && e["hook"] == "tc"
            && e["dir"] == "out"
            && e["full_size"] == true
            && e["src"] == o.scenario.vip()),
        "step 4's evidence lacks a forwarded full-size retransmission from the VIP\n{}",
        o.dump()
    );
    // The status line is small and arrives; the body does not.
    assert_clients(
        &o,
        |c| c.error.contains("0 out of 200000 bytes"),
        "a timeout without a byte of the body",
    );

    let w = without.expect("the check without --data ran");
    let summary = w.summary(4).to_owned();
    eprintln!("without --data, step 4: {} {summary}", w.step(4)["status"]);
    assert!(
        !summary.contains("path-MTU") && !summary.contains("retransmitted"),
        "without --data step 4 claims what it cannot see\n{}",
        w.dump()
    );
    assert_ne!(w.step(4)["status"], "fail", "{}", w.dump());
    // What it does say: the handshakes came back through the LB.
    assert!(summary.contains("acknowledged the SYN-ACK"), "{}", w.dump());
}

/// be2 answers after 1.5 s behind HAProxy, which waits for it (`timeout server 10s`), checked
/// with `--data`: step 3 names be2 slow from the traffic itself (HAProxy's own connections to
/// it), with a time to first byte above 1 s, while be1 and be3 answer the same traffic fast;
/// the probes' connections are not counted as traffic. (Behind `timeout server 1s`, the
/// haproxy-http-backend-slow scenario, HAProxy gives up first and be2's late answer never
/// reaches the wire: only the probes can tell.)
#[test]
fn check_haproxy_http_backend_slow_waited() {
    let o = check_scenario("haproxy-http-backend-slow-waited", |lab, s| {
        assert!(s.data, "the scenario is checked with --data");
        // Round robin: 2 or 3 requests for each backend.
        check_driven(lab, s, &[], || s.drive(lab, 2 * REQUESTS, &|_| {}))
    });
    let slow_ms = SLOW_BACKEND_DELAY.as_secs_f64() * 1000.0;
    for (i, b) in BACKENDS.iter().enumerate() {
        let t = &o.backend(i)["traffic"];
        let median = t["ttfb_ms"]["median"]
            .as_f64()
            .unwrap_or_else(|| panic!("{}: no replies in the traffic\n{}", b.name, o.dump()));
        let probes = o.backend(i)["series"]["probes"].as_u64().unwrap_or(0);
        assert!(
            t["replies"]
                .as_u64()
                .is_some_and(|n| n >= 1 && n <= 2 * REQUESTS as u64),
            "{}: replies counted once each, the probes' ({probes}) left out\n{}",
            b.name,
            o.dump()
        );
        if i == BE2 {
            assert_eq!(t["health"], "slow", "{}", o.dump());
            assert!(
                median > 1000.0 && median < slow_ms + 400.0,
                "be2's time to first byte from the traffic: {median} ms, it waits {slow_ms} ms\n{}",
                o.dump()
            );
        } else {
            assert_eq!(t["health"], "fine", "{}: {}", b.name, o.dump());
            assert!(median < 200.0, "{}: {median} ms\n{}", b.name, o.dump());
        }
    }
    let be2 = format!("{}:{BACKEND_PORT}", BACKENDS[BE2].addr.v4);
    let summary = o.summary(3);
    assert!(
        summary.contains(&format!(
            "{be2} slow from the traffic: time to first byte median 1."
        )) && summary.contains("past --slow 1 s"),
        "{}",
        o.dump()
    );
    // The clients sent to be2 waited as long as it took: the time is the backend's.
    assert!(
        summary.contains("backends answer in 1.") && summary.ends_with("the time is the backends'"),
        "{}",
        o.dump()
    );
    assert_eq!(o.step(3)["status"], "warn", "{}", o.dump());
    // The evidence holds be2's replies: first-byte marks with their status.
    let evidence = o.step(3)["evidence"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        evidence.iter().any(|e| e["type"] == "data"
            && e["mark"] == "first_byte"
            && e["src"] == be2.as_str()
            && e["http_status"] == 200),
        "step 3's evidence lacks be2's reply\n{}",
        o.dump()
    );
    // The clients' replies at the VIP are counted too (those sent to be2 waited 1.5 s).
    assert!(
        o.json["vip_traffic"]["replies"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "{}",
        o.dump()
    );
}

/// `watch --data --probe-interval 0` (no probes: the wire is the only evidence) on nftables
/// DNAT (Layer 4: the LB only forwards the backends' replies). Healthy, it raises no reply
/// alert; with be2 answering 500 it alerts `replies_erroring:be2` with evidence `traffic` and
/// nothing for be1 or be3; dump keeps the first-byte marks with their status; once be2 answers
/// 200 again its alert recovers.
#[test]
fn watch_nft_dnat_replies_erroring() {
    let lab = Lab::new();
    let _nft = lab.nft_dnat();
    let sock = lab.dir().join("w.sock");
    let watch = Watch::start(
        "watch",
        &lab.lb,
        lab.dir(),
        &watch_args(&lab, Some(&sock), &["--data", "--probe-interval", "0"]),
    );
    // Healthy: 9 requests, 3 replies for each backend, enough to judge every window.
    for _ in 0..9 {
        assert_eq!(lab.curl(&vip_url(), 2).0, "200");
    }
    thread::sleep(Duration::from_secs(1));
    let replies_alerts = |w: &Watch| -> Vec<String> {
        keys(&w.objects(), "alert")
            .into_iter()
            .filter(|k| k.starts_with("replies_"))
            .collect()
    };
    assert_eq!(
        replies_alerts(&watch),
        Vec::<String>::new(),
        "{}",
        watch.dump()
    );

    let be2 = backend(BE2);
    let key = format!("replies_erroring:{be2}");
    let fault = lab.fault_backend_answers(
        BE2,
        Answer {
            status: 500,
            ..Answer::OK
        },
    );
    let mut codes = Vec::new();
    // DNAT round-robins: every third request goes to be2; 5 of its replies judged erroring
    // (from the third on) make 3 findings.
    for _ in 0..18 {
        codes.push(lab.curl(&vip_url(), 2).0);
    }
    eprintln!("curl codes: {codes:?}");
    assert!(
        codes.iter().filter(|c| *c == "500").count() >= 5,
        "{codes:?}"
    );
    let alert = expect_alert(&watch, &key, Duration::from_secs(5));
    let a = &alert["alert"];
    assert_eq!(
        (
            a["step"].as_u64(),
            a["evidence"].as_str(),
            a["example_backend"].as_str()
        ),
        (Some(3), Some("traffic"), Some(be2.as_str())),
        "{alert}"
    );
    let message = a["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("answers HTTP 500 in the traffic"),
        "{alert}"
    );
    assert_eq!(
        replies_alerts(&watch),
        vec![key.clone()],
        "{}",
        watch.dump()
    );
    // The health line says how each backend's replies are judged.
    let health = |h: &'static str| {
        let be2 = be2.clone();
        move |o: &Value| o["replies"][be2.as_str()] == h
    };
    watch
        .wait_for("health", Duration::from_secs(5), health("erroring"))
        .unwrap_or_else(|| panic!("no health line with be2 erroring\n{}", watch.dump()));
    // dump keeps the DATA events: be2's first bytes with their status.
    let (conns, _) = dump_json(&lab.lb, &sock, &[]);
    let marks: Vec<Value> = conns
        .iter()
        .flat_map(|c| {
            let mut evs = c["client_leg"].as_array().cloned().unwrap_or_default();
            evs.extend(
                c["backend_leg"]["events"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            );
            evs
        })
        .filter(|e| e["type"] == "data" && e["mark"] == "first_byte")
        .collect();
    assert!(
        marks.iter().any(|e| e["http_status"] == 500),
        "no first-byte mark with HTTP 500 in the dump: {marks:#?}"
    );

    // be2 answers 200 again: its window turns fine and the alert recovers.
    drop(fault);
    for _ in 0..27 {
        codes.push(lab.curl(&vip_url(), 2).0);
    }
    expect_recovered(&watch, &key, Duration::from_secs(10));
    let fine = watch
        .wait_for("health", Duration::from_secs(5), health("fine"))
        .unwrap_or_else(|| panic!("no health line with be2 fine\n{}", watch.dump()));
    for i in [0, 2] {
        assert_eq!(fine["replies"][backend(i).as_str()], "fine", "{fine}");
    }
    let (objects, stderr) = watch.stop();
    assert_eq!(last_health(&objects)["lost"], 0, "{stderr}");
}
