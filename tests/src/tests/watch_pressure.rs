//! The tripwire watches the LB host's own limits, not only its connections: SYN cookies, a full
//! accept queue, conntrack, source ports. Sampled every second in userspace (no per-packet work).

use std::time::Duration;

use crate::{
    lab::{Family, Lab, process},
    runner::Watch,
};

#[test]
fn watch_alerts_syn_cookies_on_the_lb_host() {
    let lab = Lab::new();
    let _haproxy = lab.haproxy();
    // Every SYN-ACK of the LB namespace is a cookie, as when its SYN queue overflows.
    lab.lb.sysctl("net.ipv4.tcp_syncookies", "2");
    let (vip, backends) = lab.endpoints(Family::V4);
    let mut args = vec!["--vip".to_owned(), vip];
    for b in backends {
        args.extend(["--backend".to_owned(), b]);
    }
    let sock = lab.dir().join("w.sock");
    args.extend(
        [
            "--alert-count",
            "2",
            "--alert-window",
            "30s",
            "--recover-after",
            "3s",
            "--health-interval",
            "2s",
            "--metrics",
            "127.0.0.1:9466",
            "--socket",
        ]
        .map(str::to_owned),
    );
    args.push(sock.to_string_lossy().into_owned());
    let watch = Watch::start("watch", &lab.lb, lab.dir(), &args);
    let alert = process::poll(Duration::from_secs(20), || {
        lab.get_vip(Family::V4);
        std::thread::sleep(Duration::from_millis(300));
        watch.wait_for("alert", Duration::ZERO, |a| {
            a["alert"]["key"] == "syn_cookies"
        })
    })
    .unwrap_or_else(|| panic!("no syn_cookies alert\n{}", watch.dump()));
    assert_eq!(alert["alert"]["step"], 1, "{alert}");
    let msg = alert["alert"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("TcpExt.SyncookiesSent +"), "{msg}");
    // The counters are exported too.
    let out = lab
        .lb
        .output(&["curl", "-s", "-m", "5", "http://127.0.0.1:9466/metrics"]);
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.lines().any(|l| l
            .starts_with("lbtrace_host_tcp_total{counter=\"TcpExt.SyncookiesSent\"}")
            && !l.ends_with(" 0")),
        "{body}"
    );
    // Cookies off again: the alert recovers.
    lab.lb.sysctl("net.ipv4.tcp_syncookies", "1");
    let rec = process::poll(Duration::from_secs(15), || {
        lab.get_vip(Family::V4);
        std::thread::sleep(Duration::from_millis(300));
        watch.wait_for("recovered", Duration::ZERO, |r| {
            r["recovered"]["key"] == "syn_cookies"
        })
    });
    assert!(
        rec.is_some(),
        "syn_cookies did not recover\n{}",
        watch.dump()
    );
    watch.stop();
}
