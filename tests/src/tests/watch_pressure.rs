//! The tripwire watches the LB host's own limits, not only its connections: SYN cookies, a full
//! accept queue, conntrack, source ports. Sampled every second in userspace (no per-packet work).

use std::time::Duration;

use crate::{
    lab::{Family, Lab, VIP, VIP_PORT, curl, process, scenario},
    runner::Watch,
};

/// `lbtrace watch` for the lab's VIP and backends with alerts after 2 findings in 30 s and
/// recovery after 3 quiet seconds, metrics on `metrics_port`.
fn start_watch(lab: &Lab, metrics_port: u16) -> Watch {
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
            &format!("127.0.0.1:{metrics_port}"),
            "--socket",
        ]
        .map(str::to_owned),
    );
    args.push(sock.to_string_lossy().into_owned());
    Watch::start("watch", &lab.lb, lab.dir(), &args)
}

/// The metrics of the tripwire on `port`, scraped in the lb namespace.
fn scrape(lab: &Lab, port: u16) -> String {
    let out = lab.lb.output(&[
        "curl",
        "-s",
        "-m",
        "5",
        &format!("http://127.0.0.1:{port}/metrics"),
    ]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn watch_alerts_syn_cookies_on_the_lb_host() {
    let lab = Lab::new();
    let _haproxy = lab.haproxy();
    // Every SYN-ACK of the LB namespace is a cookie, as when its SYN queue overflows.
    lab.lb.sysctl("net.ipv4.tcp_syncookies", "2");
    let watch = start_watch(&lab, 9466);
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
    // check's words for the finding, then the counter with its before and after values.
    assert!(
        msg.contains("SYN cookies (SyncookiesSent +")
            && msg.contains("[TcpExt.SyncookiesSent ")
            && msg.contains(" -> "),
        "{msg}"
    );
    // The counters are exported too.
    let body = scrape(&lab, 9466);
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

#[test]
fn watch_alerts_a_full_accept_queue_and_its_recovery() {
    let lab = Lab::new();
    // HAProxy with maxconn 1 and backlog 1, held by three idle clients: every new SYN overflows.
    let s = scenario::find("haproxy-http-accept-queue-full").expect("scenario");
    let mut setup = s.setup(&lab);
    let watch = start_watch(&lab, 9467);
    let url = format!("http://{}:{VIP_PORT}/", VIP.v4);
    let alert = process::poll(Duration::from_secs(25), || {
        curl(&lab.client, &url, 1);
        watch.wait_for("alert", Duration::ZERO, |a| {
            a["alert"]["key"] == "accept_queue_full"
        })
    })
    .unwrap_or_else(|| panic!("no accept_queue_full alert\n{}", watch.dump()));
    assert_eq!(
        (&alert["alert"]["step"], &alert["alert"]["evidence"]),
        (
            &serde_json::Value::from(1),
            &serde_json::Value::from("host")
        ),
        "{alert}"
    );
    let msg = alert["alert"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("accept queue full")
            && msg.contains("ListenOverflows +")
            && msg.contains(&format!("{}:{VIP_PORT}", VIP.v4)),
        "{msg}"
    );
    // The listener's queue is exported: full, at its backlog.
    let body = scrape(&lab, 9467);
    let gauge = |name: &str| {
        body.lines()
            .find(|l| l.starts_with(&format!("{name}{{listener=\"{}:{VIP_PORT}\"}}", VIP.v4)))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
    };
    let (depth, backlog) = (
        gauge("lbtrace_host_listen_queue"),
        gauge("lbtrace_host_listen_backlog"),
    );
    assert!(
        depth.is_some() && depth >= backlog,
        "queue {depth:?} backlog {backlog:?}\n{body}"
    );
    // The idle clients go (HAProxy stays) and no SYN overflows any more: the alert recovers.
    drop(setup.fault.take());
    let rec = process::poll(Duration::from_secs(20), || {
        std::thread::sleep(Duration::from_millis(300));
        watch.wait_for("recovered", Duration::ZERO, |r| {
            r["recovered"]["key"] == "accept_queue_full"
        })
    });
    assert!(
        rec.is_some(),
        "accept_queue_full did not recover\n{}",
        watch.dump()
    );
    watch.stop();
    drop(setup);
}
