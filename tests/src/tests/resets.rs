//! Resets attributed to the LB host's TCP stack (`tcp:tcp_send_reset`, `tcp:tcp_receive_reset`),
//! or cleared of it, with real servers: a VIP port nothing listens on, a socket closed with
//! SO_LINGER 0, an nftables `reject with tcp reset` rule, HAProxy connecting to a stopped
//! backend. This host runs 6.10 or later (`capabilities.resets` `all`): every reset the stack
//! sends fires the tracepoint, so a RST without one was not made by it.

use std::{thread, time::Duration};

use serde_json::Value;

use crate::{
    lab::{BACKEND_PORT, Family, Lab, VIP, process, scenario::CheckRun},
    runner::{Lbtrace, Trace, lbtrace_bin},
};

/// Nothing listens on the VIP's port 81.
const NO_LISTENER: u16 = 81;
/// [`LINGER_SERVER`] listens here.
const LINGER: u16 = 82;
/// nftables rejects SYNs to the VIP's port 83 with a TCP reset.
const REJECTED: u16 = 83;

/// Accepts on the VIP's port 82, reads the request, and closes with SO_LINGER 0: the kernel
/// aborts the connection with a RST.
const LINGER_SERVER: &str = "import socket, struct\n\
s = socket.socket()\n\
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
s.bind(('10.10.2.10', 82))\n\
s.listen(16)\n\
while True:\n\
\x20   c, _ = s.accept()\n\
\x20   c.settimeout(2)\n\
\x20   try:\n\
\x20       c.recv(4096)\n\
\x20   except OSError:\n\
\x20       pass\n\
\x20   c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))\n\
\x20   c.close()\n";

const REJECT_RULES: &str = "table inet lbtreject {\n\
\x20 chain input {\n\
\x20   type filter hook input priority 0; policy accept;\n\
\x20   ip daddr 10.10.2.10 tcp dport 83 reject with tcp reset\n\
\x20 }\n\
}\n";

/// The lab with the linger server running and the reject rule loaded.
fn lab_with_resets(lab: &Lab) -> process::Proc {
    let server = lab.lb.spawn(
        "linger-server",
        lab.dir(),
        &["python3", "-c", LINGER_SERVER],
    );
    let up = process::poll(Duration::from_secs(5), || {
        lab.lb
            .listening_on(&format!("{}:{LINGER}", VIP.v4))
            .then_some(())
    });
    assert!(up.is_some(), "the linger server does not listen");
    lab.lb.nft(REJECT_RULES);
    server
}

fn vip(port: u16) -> String {
    Family::V4.tuple(VIP.v4, port)
}

/// The `reset` events sent from `src`.
fn resets_from<'a>(trace: &'a Trace, src: &'a str) -> Vec<&'a Value> {
    trace.of_type("reset").filter(|e| e["src"] == src).collect()
}

#[test]
fn trace_attributes_resets_to_the_stack() {
    let lab = Lab::new();
    let _haproxy = lab.haproxy();
    let _server = lab_with_resets(&lab);
    for i in 0..3 {
        lab.stop_backend_server(i);
    }
    let (_, backends) = lab.endpoints(Family::V4);
    let mut args = vec!["--vip".to_owned(), VIP.v4.to_owned()];
    for b in &backends {
        args.extend(["--backend".to_owned(), b.clone()]);
    }
    let lbtrace = Lbtrace::start(&lab.lb, lab.dir(), &args);
    for port in [NO_LISTENER, LINGER, REJECTED] {
        let (code, _) = lab.curl(&Family::V4.url(VIP.v4, port), 3);
        assert_eq!(code, "000", "port {port} should not answer HTTP");
    }
    // HAProxy answers 503: every backend refuses its connections.
    let (code, err) = lab.curl(&Family::V4.url(VIP.v4, 80), 5);
    assert_eq!(code, "503", "{err}");
    thread::sleep(Duration::from_millis(300));
    let trace = lbtrace.stop();
    assert_eq!(
        trace.summary["capabilities"]["resets"], "all",
        "{}",
        trace.summary
    );

    // (a) No listener: the stack answers the SYN, no socket, the kernel's reason NO_SOCKET.
    let port81 = vip(NO_LISTENER);
    let sent = resets_from(&trace, &port81);
    let r = sent
        .first()
        .unwrap_or_else(|| panic!("no reset event from {port81}\n{}", trace.dump()));
    assert_eq!(
        (
            &r["hook"],
            &r["dir"],
            r.get("state"),
            &r["active"],
            &r["reason"]
        ),
        (
            &Value::from("tcp_send_reset"),
            &Value::from("out"),
            None,
            &Value::from(false),
            &Value::from("NO_SOCKET")
        ),
        "{r}"
    );
    let rst = trace
        .of_type("packet")
        .find(|e| e["src"] == port81.as_str() && e["dir"] == "out")
        .unwrap_or_else(|| panic!("no RST leaving {port81}\n{}", trace.dump()));
    assert_eq!(
        rst["dst"], r["dst"],
        "the reset event's tuple is the RST's: {r} {rst}"
    );
    assert_eq!(rst["flags"], "R.", "{rst}");

    // (c) SO_LINGER 0: the socket aborted, with no segment to answer.
    let port82 = vip(LINGER);
    let sent = resets_from(&trace, &port82);
    assert!(
        sent.iter().any(|r| r["active"] == true
            && r["hook"] == "tcp_send_reset"
            && r["state"].is_string()
            && r["reason"].is_string()),
        "no active reset from {port82}: {sent:?}\n{}",
        trace.dump()
    );
    assert!(
        trace
            .of_type("packet")
            .any(|e| e["src"] == port82.as_str()
                && e["flags"].as_str().is_some_and(|f| f.contains('R'))),
        "no RST leaving {port82}\n{}",
        trace.dump()
    );

    // (b) The reject rule: a RST leaves, the TCP stack made none.
    let port83 = vip(REJECTED);
    assert!(
        trace
            .of_type("packet")
            .any(|e| e["src"] == port83.as_str() && e["dir"] == "out" && e["flags"] == "R."),
        "no RST leaving {port83}\n{}",
        trace.dump()
    );
    assert!(
        resets_from(&trace, &port83).is_empty(),
        "the reject rule's RST is not the stack's\n{}",
        trace.dump()
    );

    // (d) HAProxy's connections to the stopped backends: its sockets received the resets
    // while connecting.
    let refused: Vec<&Value> = trace
        .of_type("reset")
        .filter(|e| {
            e["hook"] == "tcp_receive_reset"
                && e["src"]
                    .as_str()
                    .is_some_and(|s| s.ends_with(&format!(":{BACKEND_PORT}")))
        })
        .collect();
    assert!(
        !refused.is_empty()
            && refused
                .iter()
                .all(|e| e["state"] == "SYN_SENT" && e["dir"] == "in"),
        "received resets in SYN_SENT from the backends: {refused:?}\n{}",
        trace.dump()
    );
    assert_eq!(trace.lost(), 0);
}

/// `lbtrace check --vip VIP:port` while the client connects once: its JSON report.
fn check_port(lab: &Lab, port: u16) -> Value {
    let args = [
        "--vip".to_owned(),
        vip(port),
        "--format".to_owned(),
        "json".to_owned(),
        "--observe".to_owned(),
        "3s".to_owned(),
        "--probe-timeout".to_owned(),
        "1s".to_owned(),
        "--probe-count".to_owned(),
        "1".to_owned(),
        "--no-http".to_owned(),
    ];
    let run = CheckRun::start(lab, &lbtrace_bin(), &format!("check-{port}"), &args);
    let _ = lab.curl(&Family::V4.url(VIP.v4, port), 3);
    let done = run.wait(Duration::from_secs(30));
    serde_json::from_str(done.stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "check printed no JSON ({e})\nstdout:\n{}\nstderr:\n{}",
            done.stdout, done.stderr
        )
    })
}

#[test]
fn check_says_who_made_the_resets() {
    let lab = Lab::new();
    let _server = lab_with_resets(&lab);
    let step = |j: &Value, n: usize| j["steps"][n - 1].clone();

    // (a) Step 2: nothing serves the VIP, the stack answers for want of a listener.
    let j = check_port(&lab, NO_LISTENER);
    let s2 = step(&j, 2);
    assert_eq!(s2["rst_made_by"]["by"], "no_socket", "{j:#}");
    assert!(
        s2["summary"]
            .as_str()
            .is_some_and(|s| s.contains("this host's TCP stack: no socket for the segment")),
        "{j:#}"
    );
    assert_eq!(j["capabilities"]["resets"], "all", "{j:#}");

    // (c) Step 2: the LB process reset the connection (SO_LINGER 0).
    let j = check_port(&lab, LINGER);
    let s2 = step(&j, 2);
    assert_eq!(s2["rst_made_by"]["by"], "socket_abort", "{j:#}");
    assert!(
        s2["summary"]
            .as_str()
            .is_some_and(|s| s.contains("a socket of this host aborted")),
        "{j:#}"
    );
    assert!(
        s2["evidence"].as_array().is_some_and(|a| a
            .iter()
            .any(|e| e["type"] == "reset" && e["active"] == true)),
        "the reset event is evidence: {j:#}"
    );

    // (b) Step 1: the firewall drops the SYN and answers it; not the TCP stack.
    let j = check_port(&lab, REJECTED);
    let s1 = step(&j, 1);
    assert_eq!(s1["status"], "fail", "{j:#}");
    assert_eq!(s1["rst_made_by"]["by"], "not_this_stack", "{j:#}");
    assert!(
        s1["summary"]
            .as_str()
            .is_some_and(|s| s.contains("not this host's TCP stack (a firewall reject rule")),
        "{j:#}"
    );
}

/// The tripwire's reset alert says who made the RSTs when the reset tracepoints tie them to a
/// socket of the LB host: a server closing its connections with SO_LINGER 0 after the request.
#[test]
fn watch_reset_alert_names_the_socket_abort() {
    let lab = Lab::new();
    let _server = lab_with_resets(&lab);
    let args: Vec<String> = [
        "--vip",
        &vip(LINGER),
        "--alert-count",
        "2",
        "--probe-interval",
        "0",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let watch = crate::runner::Watch::start("watch-linger", &lab.lb, lab.dir(), &args);
    for _ in 0..3 {
        let (code, _) = lab.curl(&format!("http://{}/", vip(LINGER)), 2);
        assert_eq!(code, "000", "the server resets every request");
    }
    let alert =
        super::watch::expect_alert(&watch, "lb_reset_after_request", Duration::from_secs(10));
    let message = alert["alert"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("a socket of this host aborted"),
        "{alert}\nlbtrace watch {}",
        watch.dump()
    );
    let (objects, _) = watch.stop();
    let health = objects.iter().rfind(|o| o["type"] == "health");
    assert!(
        health.is_some_and(|h| h["capabilities"]["resets"] == "all"),
        "{health:?}"
    );
}
