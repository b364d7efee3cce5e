//! `lbtrace check` end to end: one test per scenario of src/lab/scenario.rs (a load balancer, a
//! fault, a family). Each builds its lab, starts `lbtrace check --format json --observe 6s
//! --probe-timeout 2s` in the lb, drives client traffic (4 curls 400 ms apart, `-m 2`; for TLS
//! also one `openssl s_client`), waits for the verdict and checks it against the rules of
//! lbtrace/src/check/verdict.rs: exit code, mode, every step's status, the first failed step,
//! each backend's TCP result, and the kernel's drop reasons that prove it.

use std::{fs, time::Duration};

use serde_json::Value;

use crate::{
    lab::{
        Lab,
        scenario::{self, CheckRun, ClientResult, Scenario},
    },
    runner::lbtrace_bin,
};

/// How many curls the client makes during the window.
pub(super) const REQUESTS: usize = 4;
/// A check observes for 6 s, its probes take at most 2 s each: it is done well within this.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// The result of one check.
pub(super) struct Outcome {
    pub(super) scenario: &'static Scenario,
    pub(super) code: i32,
    pub(super) json: Value,
    pub(super) stderr: String,
    pub(super) clients: Vec<ClientResult>,
}

impl Outcome {
    pub(super) fn step(&self, n: usize) -> &Value {
        &self.json["steps"][n - 1]
    }

    pub(super) fn summary(&self, n: usize) -> &str {
        self.step(n)["summary"].as_str().unwrap_or_default()
    }

    pub(super) fn backend(&self, i: usize) -> &Value {
        &self.json["backends"][i]
    }

    /// `kernel.drops` as (reason, count).
    fn drops(&self) -> Vec<(String, u64)> {
        self.json["kernel"]["drops"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|d| {
                        (
                            d["reason"].as_str().unwrap_or_default().to_owned(),
                            d["count"].as_u64().unwrap_or(0),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn dropped(&self, reason: &str) -> u64 {
        self.drops()
            .iter()
            .filter(|(r, _)| r == reason)
            .map(|(_, n)| n)
            .sum()
    }

    /// The `drop` events in `evidence` (an array of event objects) with `reason`.
    fn drops_in<'a>(evidence: &'a Value, reason: &str) -> Vec<&'a Value> {
        evidence
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|e| e["type"] == "drop" && e["reason"] == reason)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The verdict in one line per step and backend.
    fn verdict(&self) -> String {
        let mut s = format!(
            "exit {}, mode {}, first_failed_step {}\n",
            self.code, self.json["mode"], self.json["first_failed_step"]
        );
        for n in 1..=4 {
            let st = self.step(n);
            s += &format!(
                "  step {n} {}: {}{}\n",
                st["status"].as_str().unwrap_or("?"),
                self.summary(n),
                st.get("blocked_by")
                    .map(|b| format!(" (blocked by {b})"))
                    .unwrap_or_default()
            );
        }
        for b in self.json["backends"].as_array().into_iter().flatten() {
            s += &format!(
                "  backend {} tcp {}: {}\n",
                b["addr"], b["tcp"], b["finding"]
            );
        }
        s += &format!("  kernel.drops {:?}\n", self.drops());
        s
    }

    /// Everything, for failure messages.
    pub(super) fn dump(&self) -> String {
        let clients: Vec<String> = self
            .clients
            .iter()
            .map(|c| {
                format!(
                    "  +{:.1}s {} -> {} {}",
                    c.at.as_secs_f64(),
                    c.what,
                    c.code,
                    c.error
                )
            })
            .collect();
        format!(
            "scenario {} ({})\n{}client:\n{}\nlbtrace check stderr:\n{}\nJSON:\n{}",
            self.scenario.name,
            self.scenario.about,
            self.verdict(),
            clients.join("\n"),
            self.stderr,
            serde_json::to_string_pretty(&self.json).unwrap_or_default()
        )
    }
}

/// Runs `lbtrace check` on `s`, already set up on `lab`, with `extra` arguments.
fn check_on(lab: &Lab, s: &'static Scenario, extra: &[String]) -> Outcome {
    check_driven(lab, s, extra, || s.drive(lab, REQUESTS, &|_| {}))
}

/// [`check_on`] with `drive` making the client traffic once lbtrace has attached.
pub(super) fn check_driven(
    lab: &Lab,
    s: &'static Scenario,
    extra: &[String],
    drive: impl FnOnce() -> Vec<ClientResult>,
) -> Outcome {
    let mut args = s.check_args();
    args.extend(
        [
            "--format",
            "json",
            "--observe",
            "6s",
            "--probe-timeout",
            "2s",
        ]
        .map(str::to_owned),
    );
    args.extend(extra.iter().cloned());
    let run = CheckRun::start(lab, &lbtrace_bin(), "check", &args);
    let clients = drive();
    let done = run.wait(CHECK_TIMEOUT);
    let json: Value = serde_json::from_str(done.stdout.trim()).unwrap_or_else(|err| {
        panic!(
            "lbtrace check ({}) printed no JSON object ({err})\nstdout:\n{}\nstderr:\n{}",
            done.status, done.stdout, done.stderr
        )
    });
    let out = Outcome {
        scenario: s,
        code: done.status.code().unwrap_or(-1),
        json,
        stderr: done.stderr,
        clients,
    };
    // Captured by the harness: shown for failing tests and with --nocapture.
    eprintln!("{}", out.dump());
    out
}

/// Builds the lab, sets `name` up and checks it.
pub(super) fn check(name: &str) -> Outcome {
    check_scenario(name, |lab, s| check_on(lab, s, &[]))
}

/// Builds the lab, sets `name` up and runs `run` on it.
pub(super) fn check_scenario(
    name: &str,
    run: impl FnOnce(&Lab, &'static Scenario) -> Outcome,
) -> Outcome {
    let s = scenario::find(name).unwrap_or_else(|| panic!("no scenario {name}"));
    let lab = Lab::new();
    let _setup = s.setup(&lab);
    run(&lab, s)
}

/// What a check must conclude.
pub(super) struct Expect {
    pub(super) code: i32,
    pub(super) mode: &'static str,
    pub(super) steps: [&'static str; 4],
    pub(super) first_failed: Option<u64>,
    /// Each backend's `tcp`.
    pub(super) backends: [&'static str; 3],
}

pub(super) const HEALTHY: [&str; 3] = ["connected"; 3];
pub(super) const BE2: usize = 1;

pub(super) fn assert_verdict(o: &Outcome, e: &Expect) {
    let j = &o.json;
    let statuses: Vec<&str> = (1..=4)
        .map(|n| o.step(n)["status"].as_str().unwrap_or("?"))
        .collect();
    let backends: Vec<&str> = j["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| b["tcp"].as_str().unwrap_or("?"))
        .collect();
    let got = (
        o.code,
        j["mode"].as_str().unwrap_or("?"),
        statuses,
        j["first_failed_step"].as_u64(),
        backends,
    );
    let want = (
        e.code,
        e.mode,
        e.steps.to_vec(),
        e.first_failed,
        e.backends.to_vec(),
    );
    assert_eq!(
        got,
        want,
        "(exit, mode, steps, first_failed_step, backends' tcp) differ\n{}",
        o.dump()
    );
    assert_eq!(j["vip"], o.scenario.vip(), "{}", o.dump());
    assert_eq!(j["kernel"]["lost"], 0, "events lost\n{}", o.dump());
    for n in 1..=4 {
        let st = o.step(n);
        assert_eq!(st["step"], n, "{}", o.dump());
        // Steps an earlier failure left without evidence say so.
        if st["status"] == "unknown" && e.first_failed.is_some_and(|f| f < n as u64) {
            assert_eq!(
                st["blocked_by"],
                e.first_failed.unwrap_or(0),
                "{}",
                o.dump()
            );
        }
    }
}

/// Healthy backends answer the LB's probes with HTTP 200.
fn assert_backends_serve(o: &Outcome, which: &[usize]) {
    for &i in which {
        let b = o.backend(i);
        assert_eq!(b["http_status"], 200, "backend {i}\n{}", o.dump());
        assert!(
            b["evidence"].as_array().is_some_and(|e| e
                .iter()
                .any(|ev| ev["type"] == "packet" && ev["flags"] == "S.")),
            "backend {i}: its probe's SYN-ACK is not in its evidence\n{}",
            o.dump()
        );
    }
}

pub(super) fn assert_contains(o: &Outcome, n: usize, what: &str) {
    assert!(
        o.summary(n).contains(what),
        "step {n}'s summary lacks {what:?}\n{}",
        o.dump()
    );
}

pub(super) fn assert_clients(o: &Outcome, pred: impl Fn(&ClientResult) -> bool, what: &str) {
    let curls: Vec<&ClientResult> = o
        .clients
        .iter()
        .filter(|c| c.what.starts_with("curl"))
        .collect();
    assert!(
        curls.iter().all(|c| pred(c)),
        "client requests: expected {what}\n{}",
        o.dump()
    );
}

pub(super) const PASS4: [&str; 4] = ["pass"; 4];

#[test]
fn check_haproxy_http_healthy() {
    let o = check("haproxy-http-healthy");
    assert_verdict(
        &o,
        &Expect {
            code: 0,
            mode: "l7",
            steps: PASS4,
            first_failed: None,
            backends: HEALTHY,
        },
    );
    assert_backends_serve(&o, &[0, 1, 2]);
    assert_eq!(o.json["vip_probe"]["http_status"], 200, "{}", o.dump());
    // This kernel's capabilities (6.6+: TCX, per-CPU rings, drop reasons, the retransmission
    // tracepoint, 6.10+: every reset sent), no --xdp.
    assert_eq!(
        o.json["capabilities"],
        serde_json::json!({"attach": "tcx", "xdp": "off", "packet_rings": "percpu", "drops": "reason", "retransmissions": "tracepoint", "resets": "all"}),
        "{}",
        o.dump()
    );
    // It ends early once every step passes.
    assert!(
        o.json["observed_seconds"].as_f64().is_some_and(|s| s < 5.5),
        "{}",
        o.dump()
    );
}

#[test]
fn check_haproxy_tcp_healthy() {
    let o = check("haproxy-tcp-healthy");
    assert_verdict(
        &o,
        &Expect {
            code: 0,
            mode: "l7",
            steps: PASS4,
            first_failed: None,
            backends: HEALTHY,
        },
    );
    assert_backends_serve(&o, &[0, 1, 2]);
}

#[test]
fn check_haproxy_tls_healthy() {
    let o = check("haproxy-tls-healthy");
    assert_verdict(
        &o,
        &Expect {
            code: 0,
            mode: "l7",
            steps: PASS4,
            first_failed: None,
            backends: HEALTHY,
        },
    );
    assert_backends_serve(&o, &[0, 1, 2]);
    assert_clients(&o, |c| c.code == "200", "HTTP 200 over TLS");
    let tls = &o.json["vip_probe"]["probe"]["tls"];
    assert!(
        tls["outcome"] == "ok" || tls["outcome"]["result"] == "ok",
        "the TLS probe of the VIP: {}\n{}",
        tls["outcome"],
        o.dump()
    );
    assert_eq!(tls["name_matches"], true, "{}", o.dump());
    assert!(
        tls["chain"].to_string().contains("lbtrace.test"),
        "the VIP's certificate is the lab's\n{}",
        o.dump()
    );
}

#[test]
fn check_nft_dnat_healthy() {
    let o = check("nft-dnat-healthy");
    assert_verdict(
        &o,
        &Expect {
            code: 0,
            mode: "l4",
            steps: PASS4,
            first_failed: None,
            backends: HEALTHY,
        },
    );
    assert_backends_serve(&o, &[0, 1, 2]);
    assert_contains(&o, 2, "Layer 4");
    assert_contains(&o, 4, "came back through the LB");
}

/// A Layer 4 LB without NAT (the VIP routed to backends that hold it): the client's SYN leaves
/// the LB still addressed to the VIP. Layer 4, not a proxy answering by itself (no `unserved`),
/// and the replies come back through the LB.
#[test]
fn check_routed_healthy() {
    let o = check("routed-healthy");
    assert_verdict(
        &o,
        &Expect {
            code: 0,
            mode: "l4",
            steps: PASS4,
            first_failed: None,
            backends: HEALTHY,
        },
    );
    assert_eq!(o.json["forwarding"], "unchanged", "{}", o.dump());
    assert_contains(&o, 2, "forwarded unchanged");
    assert_contains(&o, 4, "came back through the LB");
    assert!(o.step(3)["unserved"].is_null(), "{}", o.dump());
    assert_clients(&o, |c| c.code == "200", "200 from every request");
}

/// The same LB with the backends' replies going straight to the client (direct server return):
/// no reply passes the LB, by design; step 4 passes and says why, while the same bypass behind
/// a NAT fails (`check_nft_dnat_asymmetric_return`).
#[test]
fn check_routed_direct_return() {
    let o = check("routed-direct-return");
    assert_verdict(
        &o,
        &Expect {
            code: 0,
            mode: "l4",
            steps: PASS4,
            first_failed: None,
            backends: HEALTHY,
        },
    );
    assert_eq!(o.json["forwarding"], "unchanged", "{}", o.dump());
    assert_contains(&o, 4, "direct server return");
    let d = &o.step(4)["direct_return"];
    assert!(d["connections"].as_u64() >= Some(1), "{}", o.dump());
    assert_eq!(d["finished"], d["connections"], "{}", o.dump());
    assert_clients(&o, |c| c.code == "200", "200 from every request");
}

#[test]
fn check_nft_dnat_snat_healthy() {
    let o = check("nft-dnat-snat-healthy");
    assert_verdict(
        &o,
        &Expect {
            code: 0,
            mode: "l4",
            steps: PASS4,
            first_failed: None,
            backends: HEALTHY,
        },
    );
    assert_backends_serve(&o, &[0, 1, 2]);
    assert_contains(&o, 4, "came back through the LB");
}

#[test]
fn check_haproxy_http_v6_healthy() {
    let o = check("haproxy-http-v6-healthy");
    assert_verdict(
        &o,
        &Expect {
            code: 0,
            mode: "l7",
            steps: PASS4,
            first_failed: None,
            backends: HEALTHY,
        },
    );
    assert_eq!(o.json["vip"], "[fd00:10:2::10]:80", "{}", o.dump());
    assert_backends_serve(&o, &[0, 1, 2]);
}

#[test]
fn check_haproxy_http_upstream_drop() {
    let o = check("haproxy-http-upstream-drop");
    assert_verdict(
        &o,
        &Expect {
            code: 1,
            mode: "unknown",
            steps: ["fail", "unknown", "pass", "unknown"],
            first_failed: Some(1),
            backends: HEALTHY,
        },
    );
    assert_contains(&o, 1, "upstream");
    assert_clients(&o, |c| c.code == "000", "no answer");
}

/// The LB host's own firewall: step 1 fails with NETFILTER_DROP, in the step's evidence (the
/// client's SYNs to the VIP) and in `kernel.drops`.
fn assert_lb_firewall(o: &Outcome) {
    assert_verdict(
        o,
        &Expect {
            code: 1,
            mode: "unknown",
            steps: ["fail", "unknown", "pass", "unknown"],
            first_failed: Some(1),
            backends: HEALTHY,
        },
    );
    assert_contains(o, 1, "NETFILTER_DROP");
    let drops = Outcome::drops_in(&o.step(1)["evidence"], "NETFILTER_DROP");
    assert!(
        drops
            .iter()
            .any(|d| d["dst"] == o.scenario.vip() && d["flags"] == "S"),
        "no NETFILTER_DROP of a SYN to the VIP in step 1's evidence\n{}",
        o.dump()
    );
    assert!(o.dropped("NETFILTER_DROP") >= 2, "{}", o.dump());
    assert!(
        o.step(1)["next"]
            .as_str()
            .is_some_and(|n| n.contains("firewall")),
        "{}",
        o.dump()
    );
}

#[test]
fn check_haproxy_http_lb_firewall() {
    let o = check("haproxy-http-lb-firewall");
    assert_lb_firewall(&o);
    // Only the outside is filtered: the LB host's own request to its VIP still works.
    assert_eq!(o.json["vip_probe"]["http_status"], 200, "{}", o.dump());
}

#[test]
fn check_nft_dnat_lb_firewall() {
    let o = check("nft-dnat-lb-firewall");
    assert_lb_firewall(&o);
}

/// be2 refuses: step 3 fails, be2 `refused` with its RST in the evidence.
fn assert_be2_refused(o: &Outcome) {
    let be2 = o.backend(BE2);
    assert!(
        be2["finding"]
            .as_str()
            .is_some_and(|f| f.contains("nothing listening")),
        "{}",
        o.dump()
    );
    assert!(
        be2["evidence"]
            .as_array()
            .is_some_and(|e| e.iter().any(|ev| ev["type"] == "packet"
                && ev["src"] == o.scenario.backends()[BE2]
                && ev["flags"] == "R.")),
        "be2's RST is not in its evidence\n{}",
        o.dump()
    );
    assert_contains(o, 3, "1 of 3");
    assert_contains(o, 3, &o.scenario.backends()[BE2]);
}

#[test]
fn check_haproxy_http_backend_refused() {
    let o = check("haproxy-http-backend-refused");
    assert_verdict(
        &o,
        &Expect {
            code: 1,
            mode: "l7",
            steps: ["pass", "pass", "fail", "pass"],
            first_failed: Some(3),
            backends: ["connected", "refused", "connected"],
        },
    );
    assert_be2_refused(&o);
    assert_backends_serve(&o, &[0, 2]);
    // HAProxy retries be2, then answers the client with an error page.
    assert!(
        o.clients.iter().any(|c| c.code == "503"),
        "no client request got HAProxy's 503\n{}",
        o.dump()
    );
}

#[test]
fn check_haproxy_tcp_backend_refused() {
    let o = check("haproxy-tcp-backend-refused");
    assert_verdict(
        &o,
        &Expect {
            code: 1,
            mode: "l7",
            steps: ["pass", "pass", "fail", "pass"],
            first_failed: Some(3),
            backends: ["connected", "refused", "connected"],
        },
    );
    assert_be2_refused(&o);
    // In tcp mode HAProxy closes the client connections it could not relay without sending a
    // byte (curl: "Empty reply from server"): its FIN carries seq = its ISN + 1, and the client's
    // FIN acknowledges ISN + 2 (the FIN's own sequence number), which is no answer.
    let empty = o.clients.iter().filter(|c| c.code == "000").count();
    assert!(empty >= 1, "no request reached be2\n{}", o.dump());
    assert_contains(&o, 2, &format!("{} answered and closed", REQUESTS - empty));
}

#[test]
fn check_nft_dnat_snat_backend_refused() {
    let o = check("nft-dnat-snat-backend-refused");
    assert_verdict(
        &o,
        &Expect {
            code: 1,
            mode: "l4",
            steps: ["pass", "pass", "fail", "pass"],
            first_failed: Some(3),
            backends: ["connected", "refused", "connected"],
        },
    );
    assert_be2_refused(&o);
    // At Layer 4 the client gets be2's RST, translated.
    assert_contains(&o, 2, "reset before any data");
}

#[test]
fn check_haproxy_http_backend_filtered() {
    let o = check("haproxy-http-backend-filtered");
    // HAProxy gives up on be2 after its 2 s connect timeout, the client after its own 2 s: the
    // step 2 verdict must follow what the clients saw (a hang where a request got nothing).
    let hung = o.clients.iter().any(|c| c.code == "000");
    let step2 = if hung { "warn" } else { "pass" };
    assert_verdict(
        &o,
        &Expect {
            code: 1,
            mode: "l7",
            steps: ["pass", step2, "fail", "pass"],
            first_failed: Some(3),
            backends: ["connected", "timeout", "connected"],
        },
    );
    if hung {
        assert_contains(&o, 2, "hang");
    }
    let be2 = o.backend(BE2);
    assert!(
        be2["finding"]
            .as_str()
            .is_some_and(|f| f.starts_with("filtered")),
        "{}",
        o.dump()
    );
}

/// be2 is down: the LB's neighbour resolution fails and the kernel frees the SYN it had queued
/// for be2's address: be2's evidence holds that drop. IPv4 names it (`arp_error_report`:
/// NEIGH_FAILED); IPv6 does not (`ndisc_error_report` frees it with plain `kfree_skb`:
/// NOT_SPECIFIED), but it is the same event. ARP / ND give up after 3 s, past the 2 s probe
/// timeout, so the probe itself times out.
fn assert_be2_host_down(o: &Outcome, reason: &str) {
    let be2 = o.backend(BE2);
    let dropped_syn = Outcome::drops_in(&be2["evidence"], reason)
        .into_iter()
        .any(|d| {
            d["dst"] == o.scenario.backends()[BE2] && d["flags"] == "S" && d["iface"] == "br0"
        });
    assert!(
        dropped_syn,
        "no {reason} drop of the probe's SYN to be2 on br0 in be2's evidence\n{}",
        o.dump()
    );
    assert!(o.dropped(reason) >= 1, "{}", o.dump());
    assert!(
        be2["finding"]
            .as_str()
            .is_some_and(|f| f.starts_with("host down")),
        "be2's finding should say the host is down (its neighbour resolution failed)\n{}",
        o.dump()
    );
    assert_contains(o, 3, "host down");
}

#[test]
fn check_haproxy_http_backend_host_down() {
    let o = check("haproxy-http-backend-host-down");
    // Whether HAProxy's attempts on be2 outlast the client's 2 s depends on the neighbour
    // entry's state when they come (the LB's own probe may already have marked it FAILED, and
    // HAProxy then redispatches at once): the step 2 verdict must follow what the clients saw.
    let hung = o.clients.iter().any(|c| c.code == "000");
    let step2 = if hung { "warn" } else { "pass" };
    assert_verdict(
        &o,
        &Expect {
            code: 1,
            mode: "l7",
            steps: ["pass", step2, "fail", "pass"],
            first_failed: Some(3),
            backends: ["connected", "timeout", "connected"],
        },
    );
    assert_be2_host_down(&o, "NEIGH_FAILED");
}

#[test]
fn check_haproxy_http_v6_backend_host_down() {
    let o = check("haproxy-http-v6-backend-host-down");
    // Whether HAProxy's attempts on be2 outlast the client's 2 s depends on the neighbour
    // entry's state when they come (the LB's own probe may already have marked it FAILED, and
    // HAProxy then redispatches at once): the step 2 verdict must follow what the clients saw.
    let hung = o.clients.iter().any(|c| c.code == "000");
    let step2 = if hung { "warn" } else { "pass" };
    assert_verdict(
        &o,
        &Expect {
            code: 1,
            mode: "l7",
            steps: ["pass", step2, "fail", "pass"],
            first_failed: Some(3),
            backends: ["connected", "timeout", "connected"],
        },
    );
    assert_be2_host_down(&o, "NOT_SPECIFIED");
}

#[test]
fn check_haproxy_http_v6_backend_refused() {
    let o = check("haproxy-http-v6-backend-refused");
    assert_verdict(
        &o,
        &Expect {
            code: 1,
            mode: "l7",
            steps: ["pass", "pass", "fail", "pass"],
            first_failed: Some(3),
            backends: ["connected", "refused", "connected"],
        },
    );
    assert_be2_refused(&o);
    assert_backends_serve(&o, &[0, 2]);
}

#[test]
fn check_nft_dnat_backend_host_down() {
    let o = check("nft-dnat-backend-host-down");
    assert_verdict(
        &o,
        &Expect {
            code: 1,
            mode: "l4",
            steps: ["pass", "pass", "fail", "pass"],
            first_failed: Some(3),
            backends: ["connected", "timeout", "connected"],
        },
    );
    assert_be2_host_down(&o, "NEIGH_FAILED");
    // The forwarded client SYNs die in the LB's ARP queue too: step 3's business, not step 1's.
    assert!(
        Outcome::drops_in(&o.step(3)["evidence"], "NEIGH_FAILED")
            .iter()
            .any(|d| d["src"]
                .as_str()
                .is_some_and(|s| s.starts_with("10.10.1.2:"))),
        "no forwarded client SYN dropped with NEIGH_FAILED in step 3's evidence\n{}",
        o.dump()
    );
}

#[test]
fn check_haproxy_http_no_route() {
    let o = check("haproxy-http-no-route");
    assert_verdict(
        &o,
        &Expect {
            code: 1,
            mode: "l7",
            steps: ["pass", "pass", "fail", "pass"],
            first_failed: Some(3),
            backends: ["unreachable"; 3],
        },
    );
    for i in 0..3 {
        let b = o.backend(i);
        assert!(
            b["finding"]
                .as_str()
                .is_some_and(|f| f.starts_with("no route from the LB")),
            "{}",
            o.dump()
        );
        assert!(
            b["probe"]["tcp"]["why"]
                .as_str()
                .is_some_and(|w| w.contains("ENETUNREACH")),
            "{}",
            o.dump()
        );
    }
    assert_clients(&o, |c| c.code == "503", "HAProxy's 503");
}

#[test]
fn check_haproxy_http_all_backends_down() {
    let o = check("haproxy-http-all-backends-down");
    assert_verdict(
        &o,
        &Expect {
            code: 1,
            mode: "l7",
            // HAProxy still answers: an error page.
            steps: ["pass", "pass", "fail", "pass"],
            first_failed: Some(3),
            backends: ["refused"; 3],
        },
    );
    assert_contains(&o, 3, "3 of 3");
    assert_eq!(o.json["vip_probe"]["http_status"], 503, "{}", o.dump());
    assert_clients(&o, |c| c.code == "503", "HAProxy's 503");
    // HAProxy's own connections to the backends were refused: its sockets received the
    // backends' resets in SYN_SENT (tcp:tcp_receive_reset), one per try at least.
    let refused = o.step(3)["unserved"]["refused"].as_u64().unwrap_or(0);
    assert!(
        refused >= 1,
        "refused connects of the LB
{}",
        o.dump()
    );
    assert_contains(&o, 3, "refused (a reset received in SYN_SENT)");
}

#[test]
fn check_nft_dnat_all_backends_down() {
    let o = check("nft-dnat-all-backends-down");
    assert_verdict(
        &o,
        &Expect {
            code: 1,
            mode: "l4",
            steps: ["pass", "pass", "fail", "unknown"],
            first_failed: Some(3),
            backends: ["refused"; 3],
        },
    );
    assert_contains(&o, 2, "reset before any data");
    assert_contains(&o, 3, "3 of 3");
    // The backends' RSTs, forwarded by NAT: no reset of this host's TCP stack.
    assert_eq!(
        o.step(2)["rst_made_by"]["by"],
        "not_this_stack",
        "{}",
        o.dump()
    );
    assert_contains(&o, 2, "not this host's TCP stack");
}

#[test]
fn check_nft_dnat_asymmetric_return() {
    let o = check("nft-dnat-asymmetric-return");
    assert_verdict(
        &o,
        &Expect {
            code: 1,
            mode: "l4",
            steps: ["pass", "pass", "pass", "fail"],
            first_failed: Some(4),
            backends: HEALTHY,
        },
    );
    assert_contains(&o, 4, "bypass");
    assert_clients(&o, |c| c.code == "000", "no answer");
}

#[test]
fn check_haproxy_http_replies_dropped() {
    let o = check("haproxy-http-replies-dropped");
    assert_verdict(
        &o,
        &Expect {
            code: 1,
            mode: "l7",
            steps: ["pass", "pass", "pass", "fail"],
            first_failed: Some(4),
            backends: HEALTHY,
        },
    );
    assert_contains(&o, 4, "do not reach the client");
    assert_clients(&o, |c| c.code == "000", "no answer");
}

/// `--pcap FILE` writes the evidence as a capture tcpdump reads, with the client's SYNs to the VIP.
#[test]
fn check_pcap_has_syn_to_vip() {
    let s = scenario::find("haproxy-http-healthy").expect("scenario");
    let lab = Lab::new();
    let _setup = s.setup(&lab);
    let pcap = lab.dir().join("check.pcap");
    let o = check_on(
        &lab,
        s,
        &["--pcap".to_owned(), pcap.to_string_lossy().into_owned()],
    );
    assert_eq!(o.code, 0, "{}", o.dump());
    let size = fs::metadata(&pcap).map(|m| m.len()).unwrap_or(0);
    assert!(size > 24, "{} is {size} bytes", pcap.display());
    let out = crate::lab::process::output(&["tcpdump", "-nn", "-r", &pcap.to_string_lossy()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tcpdump -r failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let syn_to_vip = text
        .lines()
        .any(|l| l.contains("> 10.10.2.10.80:") && l.contains("Flags [S],"));
    assert!(
        syn_to_vip,
        "no SYN to 10.10.2.10.80 in the capture:\n{text}"
    );
}

/// The LB service is down, its VIP address up (the healthy HAProxy scenario without HAProxy):
/// the lb's kernel answers every client SYN with RST and frees it as NO_SOCKET. Step 2 fails:
/// nothing serves the VIP; step 1 passes (the SYNs arrived), step 4 has nothing to judge.
#[test]
fn check_lb_service_down() {
    let s = scenario::find("haproxy-http-healthy").expect("the healthy HAProxy scenario");
    let lab = Lab::new();
    let o = check_on(&lab, s, &[]);
    assert_verdict(
        &o,
        &Expect {
            code: 1,
            mode: "unknown",
            steps: ["pass", "fail", "pass", "unknown"],
            first_failed: Some(2),
            backends: HEALTHY,
        },
    );
    assert_contains(&o, 2, "nothing serves the VIP");
    assert_contains(&o, 2, "NO_SOCKET");
    let evidence = &o.step(2)["evidence"];
    assert!(
        !Outcome::drops_in(evidence, "NO_SOCKET").is_empty(),
        "no NO_SOCKET drop in step 2's evidence\n{}",
        o.dump()
    );
    assert!(
        evidence
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["type"] == "packet"
                && e["flags"] == "R."
                && e["src"] == o.scenario.vip().as_str())),
        "no RST from the VIP in step 2's evidence\n{}",
        o.dump()
    );
    assert_clients(&o, |c| c.code == "000", "connections refused (000)");
}

/// A path-MTU black hole toward the client (HAProxy, L7: the LB retransmits its replies): the
/// handshakes and the request pass, the 200 KB answer's full-size segments never arrive, and
/// no ICMP fragmentation-needed comes back. Step 4 fails with the MTU finding, naming the
/// retransmissions (in its evidence too) and the MSS the client advertised.
#[test]
fn check_haproxy_http_path_mtu_black_hole() {
    let o = check("haproxy-http-path-mtu-black-hole");
    let evidence = assert_mtu_black_hole(&o, "l7", "full-size segments retransmitted");
    assert!(
        evidence.iter().any(|e| e["type"] == "retrans"
            && e["full_size"] == true
            && e["src"] == o.scenario.vip()),
        "step 4's evidence lacks a full-size retransmission from the VIP\n{}",
        o.dump()
    );
    assert!(
        evidence
            .iter()
            .any(|e| e["type"] == "packet" && e["flags"] == "S" && e["mss"] == 1460),
        "step 4's evidence lacks the client's SYN with MSS 1460\n{}",
        o.dump()
    );
    // The LB's own view of a stalled client leg (sock_diag tcp_info): its path MTU is still its
    // link's 1500, the black hole's signature, with segments lost and retransmitted.
    let snapshots = o.step(4)["tcp_info"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        snapshots.iter().any(|t| t["side"] == "client"
            && t["local"] == o.scenario.vip()
            && t["info"]["pmtu"] == 1500
            && (t["info"]["lost"].as_u64() > Some(0) || t["info"]["retrans"].as_u64() > Some(0))
            && t["info"]["total_retrans"].as_u64() >= Some(3)
            && t["words"]
                .as_str()
                .is_some_and(|w| w.contains("path MTU 1500, MSS "))),
        "step 4 lacks a tcp_info of a stalled client leg with path MTU 1500\n{}",
        o.dump()
    );
    assert_clients(&o, |c| c.code != "200", "no complete answer");
}

/// Step 4 alone fails, with the path-MTU finding in `mode`: its words name the black hole,
/// `retransmitted` and the MSS the client advertised. Returns step 4's evidence.
pub(super) fn assert_mtu_black_hole(
    o: &Outcome,
    mode: &'static str,
    retransmitted: &str,
) -> Vec<Value> {
    assert_verdict(
        o,
        &Expect {
            code: 1,
            mode,
            steps: ["pass", "pass", "pass", "fail"],
            first_failed: Some(4),
            backends: HEALTHY,
        },
    );
    assert_contains(o, 4, "path-MTU black hole between the LB and the client");
    assert_contains(o, 4, retransmitted);
    assert_contains(o, 4, "the MSS the client advertised (1460)");
    o.step(4)["evidence"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The same black hole with small replies only: every reply fits the path, step 4 passes.
#[test]
fn check_haproxy_http_path_mtu_small_replies() {
    let o = check("haproxy-http-path-mtu-small-replies");
    assert_verdict(
        &o,
        &Expect {
            code: 0,
            mode: "l7",
            steps: PASS4,
            first_failed: None,
            backends: HEALTHY,
        },
    );
    assert_clients(&o, |c| c.code == "200", "HTTP 200");
}
