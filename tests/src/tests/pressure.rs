//! `lbtrace check` with the LB host under pressure (issue 13): a full accept queue, SYN cookies,
//! source ports (a proxy's sockets, SNAT's conntrack entries), forwarding off under DNAT, strict
//! reverse-path filtering. Each test builds its lab, puts the LB host in the state, runs
//! `lbtrace check --format json` in the lb namespace while clients connect, and checks that the
//! verdict names the host's limit with the counters that moved (before and after) and that no
//! step passes with failed connections inside it.

use std::{thread, time::Duration};

use serde_json::Value;

use crate::{
    lab::{
        BACKEND_PORT, BACKENDS, BRIDGE, CLIENT, IptablesNat, Lab, NftDnat, Proc, VIP, VIP_PORT,
        curl,
        scenario::{self, CheckRun},
    },
    runner::lbtrace_bin,
};

const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `lbtrace check --format json` for VIP:80 and every backend while `clients` runs.
fn check(lab: &Lab, clients: impl FnOnce()) -> (i32, Value, String) {
    check_with(lab, BACKENDS.len(), "6s", |_| clients())
}

/// Runs `lbtrace check --format json --observe <observe>` for VIP:80 and the first `backends`
/// backends while `clients` runs (it may signal the check).
fn check_with(
    lab: &Lab,
    backends: usize,
    observe: &str,
    clients: impl FnOnce(&CheckRun),
) -> (i32, Value, String) {
    let mut args = vec!["--vip".to_owned(), format!("{}:{VIP_PORT}", VIP.v4)];
    for b in &BACKENDS[..backends] {
        args.extend([
            "--backend".to_owned(),
            format!("{}:{BACKEND_PORT}", b.addr.v4),
        ]);
    }
    args.extend(
        [
            "--format",
            "json",
            "--observe",
            observe,
            "--probe-timeout",
            "2s",
            // One probe per target: the source-port tests count every port in use, and each
            // probe leaves a socket (and under SNAT a conntrack entry) in TIME_WAIT.
            "--probe-count",
            "1",
        ]
        .map(str::to_owned),
    );
    let run = CheckRun::start(lab, &lbtrace_bin(), "check", &args);
    clients(&run);
    let done = run.wait(CHECK_TIMEOUT);
    let json: Value = serde_json::from_str(done.stdout.trim()).unwrap_or_else(|err| {
        panic!(
            "lbtrace check ({}) printed no JSON object ({err})\nstdout:\n{}\nstderr:\n{}",
            done.status, done.stdout, done.stderr
        )
    });
    let shown = serde_json::to_string_pretty(&json).unwrap_or_default();
    eprintln!("{shown}\nstderr:\n{}", done.stderr);
    (done.status.code().unwrap_or(-1), json, shown)
}

/// `curl -m 3` to the VIP from the client, `n` of them 300 ms apart, concurrently.
fn curls(lab: &Lab, n: u32) -> Vec<String> {
    let url = format!("http://{}:{VIP_PORT}/", VIP.v4);
    thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|k| {
                let (client, url) = (&lab.client, &url);
                s.spawn(move || {
                    thread::sleep(Duration::from_millis(300) * k);
                    curl(client, url, 3).0
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("a curl thread panicked"))
            .collect()
    })
}

/// No step may pass while a connection failed at it: step 2 with unanswered or refused
/// connections, step 4 with retransmitted SYNs.
fn assert_no_pass_with_failures(j: &Value, shown: &str) {
    for st in j["steps"].as_array().into_iter().flatten() {
        if st["status"] != "pass" {
            continue;
        }
        let s = st["summary"].as_str().unwrap_or_default();
        for bad in ["unanswered", "no SYN-ACK", "refused", "retransmitted"] {
            assert!(
                !s.contains(bad),
                "step {} passes with {bad:?}\n{shown}",
                st["step"]
            );
        }
    }
}

/// The counter `name` in `host.counters`: (before, after).
fn counter(j: &Value, name: &str) -> (u64, u64) {
    let c = &j["host"]["counters"][name];
    (
        c["before"].as_u64().unwrap_or(u64::MAX),
        c["after"].as_u64().unwrap_or(0),
    )
}

#[test]
fn pressure_accept_queue_full_fails_step_one() {
    let lab = Lab::new();
    // HAProxy with maxconn 1 and backlog 1, held by three idle clients (src/lab/fault.rs).
    let s = scenario::find("haproxy-http-accept-queue-full").expect("scenario");
    let _setup = s.setup(&lab);
    let (code, j, shown) = check(&lab, || {
        let codes = curls(&lab, 4);
        // Nothing answers them: the accept queue is full.
        assert!(codes.iter().all(|c| c == "000"), "{codes:?}");
    });
    assert_eq!(code, 1, "{shown}");
    assert_eq!(j["first_failed_step"], 1, "{shown}");
    let s1 = &j["steps"][0];
    assert_eq!(s1["status"], "fail", "{shown}");
    let summary = s1["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains("the LB process does not accept fast enough: accept queue full")
            && summary.contains("ListenOverflows +")
            && summary.contains("got no SYN-ACK"),
        "{shown}"
    );
    assert!(
        s1["next"].as_str().is_some_and(|n| n.contains("maxconn")),
        "{shown}"
    );
    // The finding carries its counters with before and after, and the full listener.
    let f = s1["host"]
        .as_array()
        .and_then(|a| a.iter().find(|h| h["kind"] == "accept_queue_full"))
        .unwrap_or_else(|| panic!("no accept_queue_full finding in step 1\n{shown}"));
    assert_eq!(f["status"], "fail", "{shown}");
    let overflow = f["counters"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["counter"] == "TcpExt.ListenOverflows"))
        .unwrap_or_else(|| panic!("ListenOverflows not in the finding\n{shown}"));
    assert!(
        overflow["after"].as_u64() > overflow["before"].as_u64(),
        "{shown}"
    );
    assert_eq!(
        f["listener"]["listener"],
        format!("{}:{VIP_PORT}", VIP.v4),
        "{shown}"
    );
    assert!(
        f["listener"]["depth"].as_u64() >= f["listener"]["backlog"].as_u64(),
        "the listener is not full\n{shown}"
    );
    // The same counter in the host's evidence, before < after.
    let (b, a) = counter(&j, "TcpExt.ListenOverflows");
    assert!(a > b, "host.counters ListenOverflows {b} -> {a}\n{shown}");
    // The unanswered SYNs are step 1's evidence.
    assert!(
        s1["evidence"]
            .as_array()
            .is_some_and(|e| e.iter().any(|ev| ev["flags"] == "S")),
        "{shown}"
    );
    // Every client connection failed at step 1: step 2 has nothing left to judge.
    assert_eq!(
        (&j["steps"][1]["status"], &j["steps"][1]["blocked_by"]),
        (&Value::from("unknown"), &Value::from(1)),
        "{shown}"
    );
    assert_no_pass_with_failures(&j, &shown);
}

#[test]
fn pressure_syn_cookies_are_a_finding() {
    let lab = Lab::new();
    let s = scenario::find("haproxy-http-healthy").expect("scenario haproxy-http-healthy");
    let _setup = s.setup(&lab);
    // Every SYN-ACK of the lb namespace is a cookie.
    lab.lb.sysctl("net.ipv4.tcp_syncookies", "2");
    // A window far longer than the test: the check ends early once every step passes, and the
    // host's "after" sample is taken all the same.
    let (code, j, shown) = check_with(&lab, BACKENDS.len(), "25s", |_| {
        let codes = curls(&lab, 4);
        assert!(codes.iter().all(|c| c == "200"), "{codes:?}");
    });
    assert!(
        j["observed_seconds"].as_f64().is_some_and(|s| s < 20.0),
        "the check did not end early\n{shown}"
    );
    let s1 = &j["steps"][0];
    assert_eq!(s1["status"], "warn", "{shown}");
    assert!(
        s1["summary"]
            .as_str()
            .is_some_and(|s| s.contains("SYN cookies") && s.contains("SyncookiesSent +")),
        "{shown}"
    );
    let (b, a) = counter(&j, "TcpExt.SyncookiesSent");
    assert!(a > b, "host.counters SyncookiesSent {b} -> {a}\n{shown}");
    assert!(
        j["host"]["pressure"].as_array().is_some_and(|p| p
            .iter()
            .any(|f| f["kind"] == "syn_cookies" && f["step"] == 1)),
        "{shown}"
    );
    // A warning fails nothing.
    assert_eq!(
        (code, &j["first_failed_step"]),
        (0, &Value::Null),
        "{shown}"
    );
    assert_no_pass_with_failures(&j, &shown);
}

/// `n` idle connections from the lb to backend 0 (each holds a local port toward it).
fn hold_backend_ports(lab: &Lab, n: usize, name: &str) -> Proc {
    hold_ports(lab, n, name, false)
}

/// Holds `n` connections to backend 0 from the lb namespace; with `fill`, as many as it can get
/// up to `n` (it stops at the first EADDRNOTAVAIL: every local port is then taken).
fn hold_ports(lab: &Lab, n: usize, name: &str, fill: bool) -> Proc {
    let code = format!(
        "import errno, socket, time\n\
         socks = []\n\
         for _ in range({n}):\n\
         \x20   try:\n\
         \x20       socks.append(socket.create_connection(('{}', {BACKEND_PORT}), timeout=5))\n\
         \x20   except OSError as e:\n\
         \x20       if not ({fill} and e.errno == errno.EADDRNOTAVAIL):\n\
         \x20           raise\n\
         \x20       break\n\
         print('holding', len(socks), flush=True)\n\
         time.sleep(60)\n",
        BACKENDS[0].addr.v4,
        fill = if fill { "True" } else { "False" },
    );
    let mut p = lab
        .lb
        .spawn(name, lab.dir(), &["/usr/bin/python3", "-c", &code]);
    p.wait_until("holding connections", Duration::from_secs(15), |p| {
        p.stdout().contains("holding")
    });
    p
}

/// Step 3's `source_ports` finding for backend 0.
fn ports_finding<'a>(j: &'a Value, shown: &str) -> &'a Value {
    let be = format!("{}:{BACKEND_PORT}", BACKENDS[0].addr.v4);
    j["steps"][2]["host"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|h| h["kind"] == "source_ports" && h["ports"]["backend"] == be)
        })
        .unwrap_or_else(|| panic!("no source_ports finding for {be} in step 3\n{shown}"))
}

#[test]
fn pressure_source_ports_warn_then_fail() {
    let lab = Lab::new();
    let s = scenario::find("haproxy-http-healthy").expect("scenario haproxy-http-healthy");
    let _setup = s.setup(&lab);
    // 20 local ports in the lb namespace.
    lab.lb.sysctl("net.ipv4.ip_local_port_range", "40000 40019");
    // 16 held, +1 for the probe's TIME_WAIT, + at most 2 of HAProxy's: 85-95 %.
    let first = hold_backend_ports(&lab, 16, "holders-16");
    let (_, j, shown) = check(&lab, || {
        curls(&lab, 2);
    });
    let f = ports_finding(&j, &shown);
    assert_eq!(
        (&f["status"], &f["exhausted"], &f["ports"]["usable"]),
        (&Value::from("warn"), &Value::from(false), &Value::from(20)),
        "{shown}"
    );
    assert!(
        f["ports"]["used"]
            .as_u64()
            .is_some_and(|u| (16..20).contains(&u)),
        "{shown}"
    );
    assert_eq!(j["steps"][2]["status"], "warn", "{shown}");
    assert!(
        j["steps"][2]["summary"]
            .as_str()
            .is_some_and(|s| s.contains("local ports from") && s.contains("nearly used up")),
        "{shown}"
    );
    // Every port held: the LB's own probe cannot connect, and the finding fails step 3.
    // The rest (4 if nothing else took one; the probe's TIME_WAIT and HAProxy's may have).
    let _rest = hold_ports(&lab, 4, "holders-rest", true);
    let (code, j, shown) = check(&lab, || {
        curls(&lab, 2);
    });
    let f = ports_finding(&j, &shown);
    assert_eq!(
        (&f["status"], &f["exhausted"]),
        (&Value::from("fail"), &Value::from(true)),
        "{shown}"
    );
    assert_eq!(j["steps"][2]["status"], "fail", "{shown}");
    assert_eq!(code, 1, "{shown}");
    // The LB's own probe of the backend found no free local port: direct evidence, a finding
    // of its own with the probe's error.
    let be = format!("{}:{BACKEND_PORT}", BACKENDS[0].addr.v4);
    let probe = j["steps"][2]["host"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|h| h["kind"] == "no_local_port" && h["backend"] == be)
        })
        .unwrap_or_else(|| panic!("no no_local_port finding for {be}\n{shown}"));
    assert_eq!(probe["status"], "fail", "{shown}");
    let err = probe["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("EADDRINUSE") || err.contains("EADDRNOTAVAIL"),
        "{shown}"
    );
    assert!(
        probe["summary"]
            .as_str()
            .is_some_and(|s| s.contains("got no local port")),
        "{shown}"
    );
    drop(first);
}

#[test]
fn pressure_one_backend_of_three_failing_passes_no_step_with_failures() {
    let lab = Lab::new();
    let s = scenario::find("haproxy-http-backend-refused").expect("scenario");
    let _setup = s.setup(&lab);
    let (code, j, shown) = check(&lab, || {
        curls(&lab, 4);
    });
    assert_eq!(
        (code, &j["first_failed_step"]),
        (1, &Value::from(3)),
        "{shown}"
    );
    assert!(
        j["steps"][2]["summary"]
            .as_str()
            .is_some_and(|s| s.starts_with("1 of 3 backend(s) not reachable")),
        "{shown}"
    );
    assert_no_pass_with_failures(&j, &shown);
}

#[test]
fn pressure_ctrl_c_keeps_the_host_evidence() {
    let lab = Lab::new();
    let s = scenario::find("haproxy-http-accept-queue-full").expect("scenario");
    let _setup = s.setup(&lab);
    // The window would last a minute: Ctrl-C ends it, and the verdict still has the host's
    // "after" sample (the overflows of the SYNs sent during it).
    let (code, j, shown) = check_with(&lab, BACKENDS.len(), "60s", |run| {
        curls(&lab, 3);
        run.signal(libc::SIGINT);
    });
    assert!(
        j["observed_seconds"].as_f64().is_some_and(|s| s < 30.0),
        "{shown}"
    );
    assert_eq!(code, 1, "{shown}");
    let (b, a) = counter(&j, "TcpExt.ListenOverflows");
    assert!(a > b, "host.counters ListenOverflows {b} -> {a}\n{shown}");
    assert!(
        j["steps"][0]["host"].as_array().is_some_and(|h| h
            .iter()
            .any(|f| f["kind"] == "accept_queue_full" && f["status"] == "fail")),
        "{shown}"
    );
}

/// `n` idle connections from the client to the VIP (through the DNAT and SNAT to backend 0);
/// connections that cannot be made are left out (the NAT ports may be used up).
fn hold_vip_connections(lab: &Lab, n: usize, name: &str) -> Proc {
    let code = format!(
        "import socket, time\n\
         socks = []\n\
         for _ in range({n}):\n\
         \x20   try:\n\
         \x20       socks.append(socket.create_connection(('{}', {VIP_PORT}), timeout=2))\n\
         \x20   except OSError:\n\
         \x20       pass\n\
         print('holding', len(socks), flush=True)\n\
         time.sleep(60)\n",
        VIP.v4
    );
    let mut p = lab
        .client
        .spawn(name, lab.dir(), &["/usr/bin/python3", "-c", &code]);
    p.wait_until("holding connections", Duration::from_secs(30), |p| {
        p.stdout().contains("holding")
    });
    p
}

/// Step 3's finding of SNAT ports (held by conntrack entries) toward backend `be`.
fn snat_finding(j: &Value, be: &str) -> Option<Value> {
    j["steps"][2]["host"].as_array().and_then(|a| {
        a.iter()
            .find(|h| {
                h["kind"] == "source_ports"
                    && h["ports"]["backend"] == be
                    && h["ports"]["by"] == "conntrack"
            })
            .cloned()
    })
}

#[test]
fn pressure_snat_ports_warn_then_fail() {
    let lab = Lab::new();
    // DNAT to backend 0 only, masquerading to 20 NAT ports of the lb's internal address.
    let _nat = NftDnat::load_snat_ports(&lab.lb, &BACKENDS[..1], (40000, 40019));
    // The lb's own local port range is far wider: SNAT does not take its ports from it.
    lab.lb.sysctl("net.ipv4.ip_local_port_range", "40000 40019");
    let first = hold_vip_connections(&lab, 17, "vip-holders-17");
    let (_, j, shown) = check_with(&lab, 1, "6s", |_| {
        curls(&lab, 1);
    });
    let be = format!("{}:{BACKEND_PORT}", BACKENDS[0].addr.v4);
    let snat = |j: &Value| snat_finding(j, &be);
    let f = snat(&j).unwrap_or_else(|| panic!("no SNAT source_ports finding\n{shown}"));
    assert_eq!(
        (&f["status"], &f["exhausted"], &f["ports"]["usable"]),
        (&Value::from("warn"), &Value::from(false), &Value::from(20)),
        "{shown}"
    );
    assert_eq!(f["ports"]["source"], "10.10.3.1", "{shown}");
    assert!(
        f["ports"]["used"]
            .as_u64()
            .is_some_and(|u| (17..20).contains(&u)),
        "{shown}"
    );
    assert!(
        f["summary"].as_str().is_some_and(
            |s| s.contains("SNAT ports from 10.10.3.1") && s.contains("nearly used up")
        ),
        "{shown}"
    );
    // The SNAT range the rule gives, read from nftables; the entries over ctnetlink.
    assert_eq!(
        j["host"]["nat"]["snat_ports"],
        serde_json::json!([40000, 40019]),
        "{shown}"
    );
    assert_eq!(j["host"]["conntrack_read"], "netlink", "{shown}");
    // Every NAT port held: the finding fails step 3.
    let _rest = hold_vip_connections(&lab, 3, "vip-holders-3");
    let (code, j, shown) = check_with(&lab, 1, "6s", |_| {
        curls(&lab, 1);
    });
    let f = snat(&j).unwrap_or_else(|| panic!("no SNAT source_ports finding\n{shown}"));
    assert_eq!(
        (&f["status"], &f["exhausted"]),
        (&Value::from("fail"), &Value::from(true)),
        "{shown}"
    );
    assert_eq!(j["steps"][2]["status"], "fail", "{shown}");
    assert_eq!(code, 1, "{shown}");
    drop(first);
}

/// The same NAT written with iptables (iptables-nft, the default iptables of Debian 11+ and
/// RHEL 9): its DNAT and MASQUERADE are xtables targets inside nftables rules, the port range in
/// the target's own data. Every NAT port held: step 3 fails naming the SNAT range.
#[test]
fn pressure_iptables_nft_snat_ports_used_up_fail_step_three() {
    let lab = Lab::new();
    let be = format!("{}:{BACKEND_PORT}", BACKENDS[0].addr.v4);
    let vip = VIP.v4.to_string();
    let _nat = IptablesNat::load_snat_ports(&lab.lb, &vip, &be, (40000, 40019));
    lab.lb.sysctl("net.ipv4.ip_local_port_range", "40000 40019");
    let held = hold_vip_connections(&lab, 20, "vip-holders-20");
    let (code, j, shown) = check_with(&lab, 1, "6s", |_| {
        curls(&lab, 1);
    });
    assert_eq!(
        j["host"]["nat"]["dnat"],
        serde_json::json!(["iptables-nft nat/PREROUTING"]),
        "{shown}"
    );
    assert_eq!(
        j["host"]["nat"]["snat_ports"],
        serde_json::json!([40000, 40019]),
        "{shown}"
    );
    assert_eq!(j["host"]["nat"]["iptables_legacy_nat"], false, "{shown}");
    assert_eq!(j["host"]["conntrack_read"], "netlink", "{shown}");
    let f =
        snat_finding(&j, &be).unwrap_or_else(|| panic!("no SNAT source_ports finding\n{shown}"));
    assert_eq!(
        (&f["status"], &f["exhausted"], &f["ports"]["usable"]),
        (&Value::from("fail"), &Value::from(true), &Value::from(20)),
        "{shown}"
    );
    assert_eq!(j["steps"][2]["status"], "fail", "{shown}");
    assert_eq!(code, 1, "{shown}");
    drop(held);
}

#[test]
fn pressure_forwarding_off_under_dnat_fails_step_two() {
    let lab = Lab::new();
    let s = scenario::find("nft-dnat-healthy").expect("scenario nft-dnat-healthy");
    let _setup = s.setup(&lab);
    lab.lb.sysctl("net.ipv4.ip_forward", "0");
    let (code, j, shown) = check(&lab, || {
        let codes = curls(&lab, 3);
        assert!(codes.iter().all(|c| c != "200"), "{codes:?}");
    });
    assert_eq!(code, 1, "{shown}");
    let s2 = &j["steps"][1];
    assert_eq!(s2["status"], "fail", "{shown}");
    let f = s2["host"]
        .as_array()
        .and_then(|a| a.iter().find(|h| h["kind"] == "no_forwarding"))
        .unwrap_or_else(|| panic!("no no_forwarding finding in step 2\n{shown}"));
    assert_eq!(f["status"], "fail", "{shown}");
    assert!(
        f["summary"]
            .as_str()
            .is_some_and(|s| s.contains("ip_forward")),
        "{shown}"
    );
    // The DNAT rule for the VIP is read from nftables. On this kernel the SYN dies after its
    // DNAT (IP_INADDRERRORS, with the client's ISN), which already shows Layer 4; where no
    // SYN shows it, the rule does, and the finding names it.
    let rule = format!("nftables {}/prerouting", NftDnat::TABLE);
    assert_eq!(
        j["host"]["nat"]["dnat"],
        serde_json::json!([rule]),
        "{shown}"
    );
    let by_rule = if j["mode"] == "l4" {
        serde_json::json!([])
    } else {
        serde_json::json!([rule])
    };
    assert_eq!(f["dnat"], by_rule, "{shown}");
    assert!(
        s2["summary"]
            .as_str()
            .is_some_and(|s| s.contains("ip_forward")),
        "{shown}"
    );
    assert_eq!(j["host"]["ip_forward"], false, "{shown}");
    // The SYNs reached the LB, were NATed and died there: no step says "not dropped" or
    // "served", and step 3's advice is about forwarding, not ARP.
    let said = |i: usize, k: &str| j["steps"][i][k].as_str().unwrap_or_default().to_owned();
    assert!(!said(0, "summary").contains("not dropped"), "{shown}");
    if j["mode"] == "l4" {
        assert!(said(0, "summary").contains("NATed"), "{shown}");
        assert!(said(1, "summary").contains("NATed"), "{shown}");
        assert!(!said(1, "summary").contains("served"), "{shown}");
        assert!(said(2, "next").contains("ip_forward"), "{shown}");
    }
}

#[test]
fn pressure_strict_rp_filter_drops_fail_step_one() {
    let lab = Lab::new();
    let s = scenario::find("haproxy-http-healthy").expect("scenario haproxy-http-healthy");
    let _setup = s.setup(&lab);
    // Strict filtering on the client-facing interface, and the route back to the client through
    // the bridge instead: the client's SYNs fail the reverse-path check.
    lab.lb
        .sysctl(&format!("net.ipv4.conf.{}.rp_filter", lab.lb_ext), "1");
    lab.lb.exec(&[
        "ip",
        "route",
        "add",
        &format!("{}/32", CLIENT.v4),
        "dev",
        BRIDGE,
    ]);
    let (code, j, shown) = check(&lab, || {
        curls(&lab, 2);
    });
    assert_eq!(code, 1, "{shown}");
    let s1 = &j["steps"][0];
    assert_eq!(s1["status"], "fail", "{shown}");
    let f = s1["host"]
        .as_array()
        .and_then(|a| a.iter().find(|h| h["kind"] == "strict_rp_filter"))
        .unwrap_or_else(|| panic!("no strict_rp_filter finding in step 1\n{shown}"));
    assert_eq!(
        (&f["status"], &f["iface"]),
        (&Value::from("fail"), &Value::from(lab.lb_ext.as_str())),
        "{shown}"
    );
    assert!(
        f["summary"]
            .as_str()
            .is_some_and(|s| s.contains("rp_filter = 1") && s.contains("IP_RPFILTER")),
        "{shown}"
    );
}
