//! The verdict engine on hand-made event sequences: each test asserts on the typed findings.
//! (The words are the report's business: `check::report`'s tests and the netns tests.)

use lbtrace_common::tcp_flag::{ACK, FIN, RST, SYN};

use super::*;
use crate::{
    checklist::Step,
    event::{Dir, KernelEvent},
    probe::series::Stats,
    testutil::{drop, pkt, sa},
};

const VIP: &str = "10.10.2.10:80";
const CLIENT: &str = "10.10.1.2:40000";
const BE1: &str = "10.10.3.11:8080";
const BE2: &str = "10.10.3.12:8080";

fn reasons() -> DropReasons {
    DropReasons::from_pairs(&[
        (2, "NO_SOCKET"),
        (6, "NETFILTER_DROP"),
        (60, "NEIGH_FAILED"),
    ])
}

fn counts(pairs: &[(&str, usize)]) -> flow::ReasonCounts {
    flow::ReasonCounts(pairs.iter().map(|(r, n)| ((*r).to_owned(), *n)).collect())
}

fn probe(target: &str, port: u16, tcp: TcpResult) -> ProbeFacts {
    ProbeFacts {
        target: sa(target),
        local_port: Some(port),
        ports: vec![port],
        tcp,
        why: None,
        http_status: (tcp == TcpResult::Connected).then_some(200),
        series: None,
    }
}

fn run(events: &[KernelEvent], probes: &[ProbeFacts]) -> Verdict {
    let backends: Vec<Endpoint> = [BE1, BE2].iter().map(|b| b.parse().unwrap()).collect();
    let r = reasons();
    judge(&Facts {
        vip: VIP.parse().unwrap(),
        backends: &backends,
        client: None,
        events,
        probes,
        vip_probe: None,
        window_secs: 10.0,
        slow: std::time::Duration::from_secs(1),
        reasons: &r,
        resets: None,
        host: None,
    })
}

fn statuses(v: &Verdict) -> Vec<Status> {
    v.steps.iter().map(|s| s.status).collect()
}

fn client_finding(v: &Verdict) -> &ClientFinding {
    match &v.steps[0].finding {
        StepFinding::ClientToLb(f) => f,
        other => panic!("step 1 holds {other:?}"),
    }
}

fn handling(v: &Verdict) -> &HandlingFinding {
    match &v.steps[1].finding {
        StepFinding::LbHandling(f) => f,
        other => panic!("step 2 holds {other:?}"),
    }
}

fn lb_to_backend(v: &Verdict) -> &LbToBackend {
    match &v.steps[2].finding {
        StepFinding::LbToBackend(f) => f,
        other => panic!("step 3 holds {other:?}"),
    }
}

fn return_path(v: &Verdict) -> &ReturnFinding {
    match &v.steps[3].finding {
        StepFinding::ReturnPath(f) => f,
        other => panic!("step 4 holds {other:?}"),
    }
}

fn healthy_probes() -> Vec<ProbeFacts> {
    vec![
        probe(BE1, 50001, TcpResult::Connected),
        probe(BE2, 50002, TcpResult::Connected),
    ]
}

fn probe_packets() -> Vec<KernelEvent> {
    vec![
        pkt(1, Dir::Out, "10.10.3.1:50001", BE1, SYN, 500, 0),
        pkt(2, Dir::In, BE1, "10.10.3.1:50001", SYN | ACK, 900, 501),
    ]
}

/// A Layer 7 proxy: handshake with the client, then its own backend connection.
fn l7_conn(t: u64, client: &str, cisn: u32) -> Vec<KernelEvent> {
    vec![
        pkt(t, Dir::In, client, VIP, SYN, cisn, 0),
        pkt(t + 1, Dir::Out, VIP, client, SYN | ACK, 7000, cisn + 1),
        pkt(t + 2, Dir::Out, "10.10.3.1:41000", BE1, SYN, 123, 0),
        pkt(t + 3, Dir::In, BE1, "10.10.3.1:41000", SYN | ACK, 456, 124),
        pkt(
            t + 5,
            Dir::Out,
            VIP,
            client,
            FIN | ACK,
            7000 + 300,
            cisn + 80,
        ),
        pkt(
            t + 6,
            Dir::In,
            client,
            VIP,
            FIN | ACK,
            cisn + 80,
            7000 + 301,
        ),
    ]
}

#[test]
fn healthy_l7_passes_every_step() {
    let mut ev = probe_packets();
    ev.extend(l7_conn(10, CLIENT, 1000));
    let v = run(&ev, &healthy_probes());
    assert_eq!(v.mode, Mode::L7);
    assert_eq!(statuses(&v), vec![Status::Pass; 4], "{v:#?}");
    assert_eq!(v.first_failed_step, None);
    assert_eq!(
        *client_finding(&v),
        ClientFinding::Reached {
            syns: 1,
            connections: 1,
            nat_dropped: 0,
        }
    );
    assert_eq!(
        *handling(&v),
        HandlingFinding::Served {
            mode: Mode::L7,
            connections: 1,
            outcomes: Outcomes {
                answered_closed: 1,
                ..Outcomes::default()
            },
            local_http: None,
            local: None,
            unchanged: false,
        }
    );
    // The probe's own packets are not client evidence and are tied to the probe.
    assert_eq!(v.backends[0].evidence, vec![0, 1]);
    assert_eq!(
        v.backends[0].finding,
        BackendFinding::Connected { http: Some(200) }
    );
}

#[test]
fn healthy_l4_nat_keeps_the_isn() {
    let mut ev = probe_packets();
    ev.extend([
        pkt(10, Dir::In, CLIENT, VIP, SYN, 1000, 0),
        pkt(11, Dir::Out, CLIENT, BE2, SYN, 1000, 0),
        pkt(12, Dir::In, BE2, CLIENT, SYN | ACK, 9000, 1001),
        pkt(13, Dir::Out, VIP, CLIENT, SYN | ACK, 9000, 1001),
        pkt(20, Dir::In, CLIENT, VIP, FIN | ACK, 1080, 9300),
    ]);
    let v = run(&ev, &healthy_probes());
    assert_eq!(v.mode, Mode::L4);
    assert_eq!(statuses(&v), vec![Status::Pass; 4], "{v:#?}");
    assert_eq!(
        *return_path(&v),
        ReturnFinding::Acknowledged {
            proven: 1,
            answered: 1,
            via_backend: 1,
            retransmitted: 0
        }
    );
}

/// Forwarded without NAT (the SYN leaves still to the VIP): Layer 4, the backend's SYN-ACK seen
/// arriving and leaving, each packet counted once.
#[test]
fn l4_without_nat_is_forwarding_not_a_proxy() {
    let mut ev = probe_packets();
    ev.extend([
        pkt(10, Dir::In, CLIENT, VIP, SYN, 1000, 0),
        pkt(11, Dir::Out, CLIENT, VIP, SYN, 1000, 0),
        pkt(12, Dir::In, VIP, CLIENT, SYN | ACK, 9000, 1001),
        pkt(13, Dir::Out, VIP, CLIENT, SYN | ACK, 9000, 1001),
        pkt(20, Dir::In, VIP, CLIENT, FIN | ACK, 9300, 1080),
        pkt(21, Dir::Out, VIP, CLIENT, FIN | ACK, 9300, 1080),
        pkt(22, Dir::In, CLIENT, VIP, FIN | ACK, 1080, 9301),
        pkt(23, Dir::Out, CLIENT, VIP, FIN | ACK, 1080, 9301),
    ]);
    let v = run(&ev, &healthy_probes());
    assert_eq!(v.mode, Mode::L4);
    assert_eq!(statuses(&v), vec![Status::Pass; 4], "{v:#?}");
    assert!(
        matches!(handling(&v), HandlingFinding::Served { unchanged: true, outcomes, .. }
            if outcomes.answered_closed == 1),
        "{v:#?}"
    );
    assert!(matches!(
        return_path(&v),
        ReturnFinding::Acknowledged { via_backend: 1, .. }
    ));
}

/// Forwarded inside a tunnel (IPVS tunnel mode, Katran-style): the client's SYN leaves in IPIP
/// to a backend, unchanged inside: Layer 4 without NAT, and with direct server return.
#[test]
fn a_syn_forwarded_in_a_tunnel_is_layer_4() {
    let mut ev = probe_packets();
    let tunnelled = |e: KernelEvent| KernelEvent {
        detail: crate::event::Detail::Tunnel(crate::event::Tunnel {
            proto: lbtrace_common::encap::IPIP,
            outer_src: "10.10.3.1".parse().unwrap(),
            outer_dst: "10.10.3.12".parse().unwrap(),
        }),
        ..e
    };
    ev.extend([
        pkt(10, Dir::In, CLIENT, VIP, SYN, 1000, 0),
        tunnelled(pkt(11, Dir::Out, CLIENT, VIP, SYN, 1000, 0)),
        pkt(30, Dir::In, CLIENT, VIP, FIN | ACK, 1080, 7),
    ]);
    let v = run(&ev, &healthy_probes());
    assert_eq!(v.mode, Mode::L4);
    assert!(matches!(
        handling(&v),
        HandlingFinding::Served {
            unchanged: true,
            ..
        }
    ));
    assert_eq!(
        return_path(&v).clone(),
        ReturnFinding::DirectReturn {
            connections: 1,
            finished: 1
        }
    );
    assert_eq!(statuses(&v), vec![Status::Pass; 4], "{v:#?}");
}

/// Forwarded without NAT and nothing back through the LB: direct server return. Clients that
/// went on (FIN) pass step 4; one that only retransmitted its SYN makes it a warning, all of
/// them a failure.
#[test]
fn direct_server_return_passes_when_clients_go_on() {
    let conn = |t: u64, client: &'static str, isn: u32, fin: bool| {
        let mut v = vec![
            pkt(t, Dir::In, client, VIP, SYN, isn, 0),
            pkt(t + 1, Dir::Out, client, VIP, SYN, isn, 0),
        ];
        if fin {
            v.push(pkt(t + 5, Dir::In, client, VIP, FIN | ACK, isn + 80, 7));
            v.push(pkt(t + 6, Dir::Out, client, VIP, FIN | ACK, isn + 80, 7));
        } else {
            v.push(pkt(t + 1000, Dir::In, client, VIP, SYN, isn, 0));
        }
        v
    };
    let finding = |conns: &[(&'static str, u32, bool)]| {
        let mut ev = probe_packets();
        for (i, &(c, isn, fin)) in conns.iter().enumerate() {
            ev.extend(conn(10 + 10_000 * i as u64, c, isn, fin));
        }
        let v = run(&ev, &healthy_probes());
        assert_eq!(v.mode, Mode::L4);
        (return_path(&v).clone(), return_path(&v).status())
    };
    let c2 = "10.0.0.6:40001";
    assert_eq!(
        finding(&[(CLIENT, 1000, true), (c2, 2000, true)]),
        (
            ReturnFinding::DirectReturn {
                connections: 2,
                finished: 2
            },
            Status::Pass
        )
    );
    assert_eq!(
        finding(&[(CLIENT, 1000, true), (c2, 2000, false)]).1,
        Status::Warn
    );
    assert_eq!(finding(&[(c2, 2000, false)]).1, Status::Fail);
}

#[test]
fn no_syn_fails_step_one_as_upstream() {
    let v = run(&probe_packets(), &healthy_probes());
    assert!(matches!(
        client_finding(&v),
        ClientFinding::NoSyn { client: None, .. }
    ));
    assert_eq!(v.steps[0].status, Status::Fail);
    assert_eq!(v.first_failed_step, Some(Step::ClientToLb));
    assert_eq!(*handling(&v), HandlingFinding::NoConnection);
    assert_eq!(v.steps[1].status, Status::Unknown);
    assert_eq!(v.steps[1].blocked_by, Some(Step::ClientToLb));
    // Step 3 has its own evidence and is still judged.
    assert_eq!(v.steps[2].status, Status::Pass);
    assert_eq!(v.steps[2].blocked_by, None);
}

#[test]
fn firewall_drop_on_the_lb_fails_step_one_with_the_reason() {
    let mut ev = probe_packets();
    for t in [10, 1010, 3010] {
        ev.push(pkt(t, Dir::In, CLIENT, VIP, SYN, 1000, 0));
        ev.push(drop(t, CLIENT, VIP, SYN, 1000, 6));
    }
    let v = run(&ev, &healthy_probes());
    assert_eq!(
        *client_finding(&v),
        ClientFinding::Dropped {
            connections: 1,
            of: 1,
            reasons: counts(&[("NETFILTER_DROP", 3)]),
            rst_made_by: None,
        }
    );
    assert_eq!(v.steps[0].status, Status::Fail);
    assert_eq!(v.first_failed_step, Some(Step::ClientToLb));
    assert_eq!(v.steps[0].evidence, (2..8).collect::<Vec<_>>());
}

#[test]
fn kernel_rst_means_nothing_serves_the_vip() {
    let ev = vec![
        pkt(10, Dir::In, CLIENT, VIP, SYN, 1000, 0),
        drop(10, CLIENT, VIP, SYN, 1000, 2),
        pkt(10, Dir::Out, VIP, CLIENT, RST | ACK, 0, 1001),
    ];
    let v = run(&ev, &healthy_probes());
    assert_eq!(
        v.steps[0].status,
        Status::Pass,
        "NO_SOCKET is step 2's business"
    );
    assert_eq!(
        *handling(&v),
        HandlingFinding::NothingServes {
            vip: VIP.parse().unwrap(),
            kernel_refused: true,
            rst_made_by: None,
        }
    );
    assert_eq!(v.steps[1].status, Status::Fail);
    assert_eq!(v.first_failed_step, Some(Step::LbHandling));
}

#[test]
fn the_reset_tracepoints_say_who_made_the_rsts() {
    use crate::{
        event::{Detail, Hook, ResetInfo},
        kernel::loader::ResetMode,
    };
    let judged = |ev: &[KernelEvent], mode| {
        let (backends, probes, r) = (Vec::new(), healthy_probes(), reasons());
        judge(&Facts {
            vip: VIP.parse().unwrap(),
            backends: &backends,
            client: None,
            events: ev,
            probes: &probes,
            vip_probe: None,
            window_secs: 10.0,
            reasons: &r,
            resets: mode,
            slow: std::time::Duration::from_secs(1),
            host: None,
        })
    };
    let sent = |ms, state, active| KernelEvent {
        ifindex: 0,
        hook: Hook::TcpSendReset,
        detail: Detail::Reset(ResetInfo {
            state,
            active,
            reason: None,
        }),
        ..pkt(ms, Dir::Out, VIP, CLIENT, RST, 0, 0)
    };
    // No listener: the stack's reset event comes with the RST.
    let refused = vec![
        pkt(10, Dir::In, CLIENT, VIP, SYN, 1000, 0),
        sent(10, None, false),
        pkt(10, Dir::Out, VIP, CLIENT, RST | ACK, 0, 1001),
        drop(10, CLIENT, VIP, SYN, 1000, 2),
    ];
    let v = judged(&refused, Some(ResetMode::All));
    assert_eq!(
        *handling(&v),
        HandlingFinding::NothingServes {
            vip: VIP.parse().unwrap(),
            kernel_refused: true,
            rst_made_by: Some(resets::RstMaker::NoSocket),
        }
    );
    assert!(
        v.steps[1].evidence.contains(&1),
        "the reset event is evidence"
    );
    // Before 6.10 no reset event comes, the NO_SOCKET drop tells.
    let mut old = refused.clone();
    old.remove(1);
    let v = judged(&old, Some(ResetMode::Sockets));
    assert!(
        matches!(
            handling(&v),
            HandlingFinding::NothingServes {
                rst_made_by: Some(resets::RstMaker::NoSocket),
                ..
            }
        ),
        "{:?}",
        handling(&v)
    );
    // The LB process resets after the request (SO_LINGER 0).
    let aborted = vec![
        pkt(10, Dir::In, CLIENT, VIP, SYN, 1000, 0),
        pkt(10, Dir::Out, VIP, CLIENT, SYN | ACK, 5000, 1001),
        // It acknowledges the client's request: reset after the request.
        pkt(21, Dir::Out, VIP, CLIENT, RST | ACK, 5001, 1101),
        sent(21, Some(7), true),
    ];
    let outcomes = |v: &Verdict| match handling(v) {
        HandlingFinding::Served { outcomes, .. } | HandlingFinding::Hang { outcomes, .. } => {
            outcomes.clone()
        }
        other => panic!("{other:?}"),
    };
    let o = outcomes(&judged(&aborted, Some(ResetMode::All)));
    assert_eq!(
        (o.rst_after_request, o.rst_made_by),
        (1, Some(resets::RstMaker::SocketAbort))
    );
    // Without the reset event: not the stack on 6.10+, unknown before, nothing untraced.
    let forwarded: Vec<KernelEvent> = aborted[..3].to_vec();
    let by = |mode| outcomes(&judged(&forwarded, mode)).rst_made_by;
    assert_eq!(
        by(Some(ResetMode::All)),
        Some(resets::RstMaker::NotThisStack)
    );
    assert_eq!(
        by(Some(ResetMode::Sockets)),
        Some(resets::RstMaker::NoSocketOrFirewall)
    );
    assert_eq!(by(None), None);
}

#[test]
fn a_reset_without_no_socket_is_not_a_kernel_refusal() {
    // A firewall's `reject with tcp reset`: the RST, but no NO_SOCKET drop.
    let ev = vec![
        pkt(10, Dir::In, CLIENT, VIP, SYN, 1000, 0),
        pkt(10, Dir::Out, VIP, CLIENT, RST | ACK, 0, 1001),
    ];
    let v = run(&ev, &healthy_probes());
    assert!(
        !matches!(
            handling(&v),
            HandlingFinding::NothingServes {
                kernel_refused: true,
                ..
            }
        ),
        "{v:#?}"
    );
}

#[test]
fn rst_after_the_request_is_reported() {
    let ev = vec![
        pkt(10, Dir::In, CLIENT, VIP, SYN, 1000, 0),
        pkt(11, Dir::Out, VIP, CLIENT, SYN | ACK, 7000, 1001),
        pkt(20, Dir::Out, VIP, CLIENT, RST | ACK, 7001, 1078),
    ];
    let v = run(&ev, &healthy_probes());
    assert_eq!(v.steps[1].status, Status::Pass);
    assert!(
        matches!(handling(&v), HandlingFinding::Served { outcomes, .. }
            if *outcomes == Outcomes { rst_after_request: 1, ..Outcomes::default() }),
        "{v:#?}"
    );
}

fn assert_hang(ev: &[KernelEvent]) {
    let v = run(ev, &healthy_probes());
    assert_eq!(v.steps[1].status, Status::Warn, "{v:#?}");
    assert!(matches!(
        handling(&v),
        HandlingFinding::Hang { hang: 1, .. }
    ));
}

#[test]
fn a_client_giving_up_before_a_late_answer_is_a_hang() {
    assert_hang(&[
        pkt(10, Dir::In, CLIENT, VIP, SYN, 1000, 0),
        pkt(11, Dir::Out, VIP, CLIENT, SYN | ACK, 7000, 1001),
        // The client sent 77 bytes and gave up after 2 s with nothing received...
        pkt(2010, Dir::In, CLIENT, VIP, FIN | ACK, 1078, 7001),
        // ...and the LB's 503 came after that: the client's kernel resets it (its socket is
        // closed).
        pkt(3000, Dir::Out, VIP, CLIENT, FIN | ACK, 7200, 1079),
        pkt(3001, Dir::In, CLIENT, VIP, RST, 1079, 0),
    ]);
    // A client that resets first gave up too, whatever the LB sends later.
    assert_hang(&[
        pkt(10, Dir::In, CLIENT, VIP, SYN, 1000, 0),
        pkt(11, Dir::Out, VIP, CLIENT, SYN | ACK, 7000, 1001),
        pkt(2010, Dir::In, CLIENT, VIP, RST | ACK, 1078, 7001),
        pkt(3000, Dir::Out, VIP, CLIENT, FIN | ACK, 7200, 1079),
    ]);
}

#[test]
fn a_half_closed_client_that_gets_its_answer_is_not_a_hang() {
    // `nc -N`: the request and a FIN at once (ack = LB ISN + 1: nothing received yet), then the
    // LB's answer and FIN, which the client reads: no RST.
    let ev = [
        pkt(10, Dir::In, CLIENT, VIP, SYN, 1000, 0),
        pkt(11, Dir::Out, VIP, CLIENT, SYN | ACK, 7000, 1001),
        pkt(12, Dir::In, CLIENT, VIP, FIN | ACK, 1078, 7001),
        pkt(15, Dir::Out, VIP, CLIENT, FIN | ACK, 7300, 1079),
    ];
    let v = run(&ev, &healthy_probes());
    assert_eq!(v.steps[1].status, Status::Pass, "{v:#?}");
    assert!(
        matches!(handling(&v), HandlingFinding::Served { outcomes, .. }
            if *outcomes == Outcomes { answered_closed: 1, ..Outcomes::default() }),
        "{v:#?}"
    );
    // Half-closed, and the LB closes without a byte: closed, not hung.
    let mut empty = ev;
    empty[3] = pkt(15, Dir::Out, VIP, CLIENT, FIN | ACK, 7001, 1079);
    let v = run(&empty, &healthy_probes());
    assert!(
        matches!(handling(&v), HandlingFinding::Served { outcomes, .. }
            if outcomes.closed_empty == 1),
        "{v:#?}"
    );
}

#[test]
fn a_request_never_answered_is_a_hang() {
    assert_hang(&[
        pkt(10, Dir::In, CLIENT, VIP, SYN, 1000, 0),
        pkt(11, Dir::Out, VIP, CLIENT, SYN | ACK, 7000, 1001),
        // The client sent 77 bytes, got nothing (ack = LB ISN + 1) and gave up.
        pkt(5000, Dir::In, CLIENT, VIP, FIN | ACK, 1078, 7001),
    ]);
}

#[test]
fn backend_failures_are_explained() {
    let ev = vec![
        pkt(1, Dir::Out, "10.10.3.1:50001", BE1, SYN, 500, 0),
        pkt(1002, Dir::Out, "10.10.3.1:50001", BE1, SYN, 500, 0),
        drop(3000, "10.10.3.1:50002", BE2, SYN, 600, 60),
    ];
    let probes = vec![
        probe(BE1, 50001, TcpResult::Timeout),
        probe(BE2, 50002, TcpResult::Unreachable),
    ];
    let v = run(&ev, &probes);
    assert_eq!(v.steps[2].status, Status::Fail);
    let be1 = BackendFinding::Filtered { syns_out: 2 };
    let be2 = BackendFinding::HostDown {
        addr: sa(BE2).ip(),
        reasons: counts(&[("NEIGH_FAILED", 1)]),
    };
    assert_eq!(
        lb_to_backend(&v).backends,
        BackendsFinding::Unreachable {
            down: vec![(sa(BE1), be1.clone()), (sa(BE2), be2.clone())],
            of: 2
        }
    );
    assert_eq!(v.backends[0].finding, be1);
    assert_eq!(v.backends[1].finding, be2);
    let refused = run(
        &[],
        &[
            probe(BE1, 1, TcpResult::Refused),
            probe(BE2, 2, TcpResult::Connected),
        ],
    );
    assert_eq!(
        lb_to_backend(&refused).backends,
        BackendsFinding::Unreachable {
            down: vec![(sa(BE1), BackendFinding::Refused)],
            of: 2
        }
    );
}

#[test]
fn forwarded_syns_dropped_on_the_way_to_a_dead_backend_are_step_three() {
    let ev = vec![
        pkt(10, Dir::In, CLIENT, VIP, SYN, 1000, 0),
        drop(3010, CLIENT, BE1, SYN, 1000, 60),
    ];
    let v = run(
        &ev,
        &[
            probe(BE1, 1, TcpResult::Unreachable),
            probe(BE2, 2, TcpResult::Connected),
        ],
    );
    assert_eq!(v.mode, Mode::L4);
    assert_eq!(
        v.steps[0].status,
        Status::Pass,
        "not the client's problem: {v:#?}"
    );
    assert_eq!(v.steps[2].status, Status::Fail);
    assert_eq!(
        lb_to_backend(&v).forward_drops,
        Some(counts(&[("NEIGH_FAILED", 1)]))
    );
    assert!(v.steps[2].evidence.contains(&1));
    assert_eq!(v.first_failed_step, Some(Step::LbToBackend));
    // The SYN reached the LB's stack, was NATed, and died there: said at steps 1 and 2, not
    // "not dropped" and "served".
    assert!(matches!(
        client_finding(&v),
        ClientFinding::Reached { nat_dropped: 1, .. }
    ));
    assert!(matches!(
        handling(&v),
        HandlingFinding::Served { outcomes, .. }
            if *outcomes == Outcomes { nat_dropped: 1, ..Outcomes::default() }
    ));
}

#[test]
fn an_lb_fin_without_data_is_not_an_answer() {
    // HAProxy in tcp mode closing a connection it cannot relay: FIN at ISN + 1.
    let ev = vec![
        pkt(10, Dir::In, CLIENT, VIP, SYN, 1000, 0),
        pkt(11, Dir::Out, VIP, CLIENT, SYN | ACK, 7000, 1001),
        pkt(20, Dir::Out, VIP, CLIENT, FIN | ACK, 7001, 1001),
        pkt(21, Dir::In, CLIENT, VIP, FIN | ACK, 1001, 7002),
    ];
    let v = run(&ev, &healthy_probes());
    assert!(
        matches!(handling(&v), HandlingFinding::Served { outcomes, .. }
            if *outcomes == Outcomes { closed_empty: 1, ..Outcomes::default() }),
        "{v:#?}"
    );
    assert_eq!(
        v.steps[1].status,
        Status::Pass,
        "a close is the LB working, not a hang"
    );
}

#[test]
fn backend_resets_do_not_make_step_four_unknown() {
    let mut ev = probe_packets();
    ev.extend([
        // Served through the LB.
        pkt(10, Dir::In, CLIENT, VIP, SYN, 1000, 0),
        pkt(11, Dir::Out, CLIENT, BE1, SYN, 1000, 0),
        pkt(12, Dir::In, BE1, CLIENT, SYN | ACK, 9000, 1001),
        pkt(13, Dir::Out, VIP, CLIENT, SYN | ACK, 9000, 1001),
        pkt(20, Dir::In, CLIENT, VIP, FIN | ACK, 1080, 9300),
        // Refused by be2; the RST comes back through the LB.
        pkt(30, Dir::In, "10.10.1.2:40001", VIP, SYN, 5000, 0),
        pkt(31, Dir::Out, "10.10.1.2:40001", BE2, SYN, 5000, 0),
        pkt(32, Dir::In, BE2, "10.10.1.2:40001", RST | ACK, 0, 5001),
        pkt(33, Dir::Out, VIP, "10.10.1.2:40001", RST | ACK, 0, 5001),
    ]);
    let v = run(
        &ev,
        &[
            probe(BE1, 50001, TcpResult::Connected),
            probe(BE2, 50002, TcpResult::Refused),
        ],
    );
    assert_eq!(v.steps[3].status, Status::Pass, "{v:#?}");
    assert!(
        matches!(handling(&v), HandlingFinding::Served { outcomes, .. } if outcomes.rst_immediate == 1),
        "{v:#?}"
    );
    assert_eq!(v.first_failed_step, Some(Step::LbToBackend));
}

#[test]
fn asymmetric_return_fails_step_four() {
    let mut ev = probe_packets();
    ev.extend([
        pkt(10, Dir::In, CLIENT, VIP, SYN, 1000, 0),
        pkt(11, Dir::Out, CLIENT, BE1, SYN, 1000, 0),
        pkt(1010, Dir::In, CLIENT, VIP, SYN, 1000, 0),
        pkt(1011, Dir::Out, CLIENT, BE1, SYN, 1000, 0),
    ]);
    let v = run(&ev, &healthy_probes());
    assert_eq!(v.mode, Mode::L4);
    assert_eq!(
        *return_path(&v),
        ReturnFinding::Bypass {
            connections: 1,
            backends: vec![BE1.to_owned()]
        }
    );
    assert_eq!(v.steps[3].status, Status::Fail, "{v:#?}");
    assert_eq!(v.first_failed_step, Some(Step::ReturnPath));
}

#[test]
fn syn_acks_lost_on_the_way_to_the_client_fail_step_four() {
    let mut ev = probe_packets();
    ev.extend([
        pkt(10, Dir::In, CLIENT, VIP, SYN, 1000, 0),
        pkt(11, Dir::Out, VIP, CLIENT, SYN | ACK, 7000, 1001),
        pkt(1010, Dir::In, CLIENT, VIP, SYN, 1000, 0),
        pkt(1011, Dir::Out, VIP, CLIENT, SYN | ACK, 7000, 1001),
    ]);
    let v = run(&ev, &healthy_probes());
    assert_eq!(*return_path(&v), ReturnFinding::SynAcksLost { clients: 1 });
    assert_eq!(v.steps[3].status, Status::Fail, "{v:#?}");
}

#[test]
fn client_filter_ignores_other_clients() {
    let backends: Vec<Endpoint> = vec![BE1.parse().unwrap()];
    let r = reasons();
    let ev = l7_conn(10, "10.10.1.99:5555", 1000);
    let v = judge(&Facts {
        vip: VIP.parse().unwrap(),
        backends: &backends,
        client: Some("10.10.1.2".parse().unwrap()),
        events: &ev,
        probes: &[probe(BE1, 50001, TcpResult::Connected)],
        vip_probe: None,
        window_secs: 10.0,
        slow: std::time::Duration::from_secs(1),
        reasons: &r,
        resets: None,
        host: None,
    });
    assert_eq!(
        *client_finding(&v),
        ClientFinding::NoSyn {
            vip: VIP.parse().unwrap(),
            client: Some("10.10.1.2".parse().unwrap()),
            window_secs: 10.0
        }
    );
}

/// Many client connections: every one is followed and judged. `classify` finds flows by tuple
/// and ISN through hash maps; the scan it replaced made this quadratic (20,000 connections took
/// about 25 s in a debug build on a 2-core test machine, 0.26 s now).
#[test]
fn many_clients_are_judged_in_linear_time() {
    let n: u32 = 20_000;
    let mut ev = probe_packets();
    for i in 0..n {
        let c = format!(
            "10.{}.{}.{}:{}",
            20 + i / 60_000,
            (i / 250) % 240,
            i % 250 + 1,
            1024 + i % 50_000
        );
        let isn = 1_000_000 + i * 10_000;
        let t = 10 + u64::from(i);
        ev.push(pkt(t, Dir::In, &c, VIP, SYN, isn, 0));
        ev.push(pkt(t, Dir::Out, &c, BE1, SYN, isn, 0));
        ev.push(pkt(t, Dir::In, BE1, &c, SYN | ACK, 9000, isn + 1));
        ev.push(pkt(t, Dir::Out, VIP, &c, SYN | ACK, 9000, isn + 1));
        ev.push(pkt(t + 1, Dir::In, &c, VIP, FIN | ACK, isn + 80, 9300));
    }
    let start = std::time::Instant::now();
    let v = run(&ev, &healthy_probes());
    let took = start.elapsed();
    let n = n as usize;
    assert_eq!(
        *client_finding(&v),
        ClientFinding::Reached {
            syns: n,
            connections: n,
            nat_dropped: 0,
        }
    );
    assert_eq!(
        *return_path(&v),
        ReturnFinding::Acknowledged {
            proven: n,
            answered: n,
            via_backend: n,
            retransmitted: 0
        }
    );
    println!("{n} connections judged in {took:?}");
    assert!(took.as_secs() < 10, "{n} connections judged in {took:?}");
}

/// Three of six clients answered, three SYNs never answered (a full accept queue drops them
/// without a drop reason): step 2 used to pass "of 6 connection(s): 3 unanswered".
fn half_answered() -> Vec<KernelEvent> {
    let mut ev = probe_packets();
    for i in 0..3u16 {
        ev.extend(l7_conn(
            10 + u64::from(i) * 10,
            &format!("10.10.1.2:{}", 40000 + i),
            1000,
        ));
    }
    for i in 3..6u16 {
        let c = format!("10.10.1.2:{}", 40000 + i);
        ev.push(pkt(100 + u64::from(i), Dir::In, &c, VIP, SYN, 5000, 0));
        ev.push(pkt(1100 + u64::from(i), Dir::In, &c, VIP, SYN, 5000, 0));
    }
    ev.sort_by_key(|e| e.ts_ns);
    ev
}

#[test]
fn unanswered_syns_never_let_step_two_pass() {
    let ev = half_answered();
    let v = run(&ev, &healthy_probes());
    assert_eq!(v.steps[1].status, Status::Fail, "{v:#?}");
    let HandlingFinding::Served {
        connections,
        outcomes,
        ..
    } = handling(&v)
    else {
        panic!("{v:#?}")
    };
    assert_eq!(
        (*connections, outcomes.unanswered, outcomes.failed()),
        (6, 3, 3)
    );
    // The unanswered SYNs are in the evidence.
    assert!(
        v.steps[1]
            .evidence
            .iter()
            .any(|&i| ev[i].src.port() == 40005 && ev[i].is_syn()),
        "{v:#?}"
    );
    // Without host evidence step 1 has nothing against it.
    assert_eq!(v.steps[0].status, Status::Pass);
}

#[test]
fn a_full_accept_queue_fails_step_one_with_its_counters() {
    use crate::host::{Listen, Pressure, Sample};
    let ev = half_answered();
    let counters = |n: u64| {
        [
            ("TcpExt.ListenOverflows".to_owned(), n),
            ("TcpExt.ListenDrops".to_owned(), n),
        ]
        .into_iter()
        .collect()
    };
    let host = HostFacts {
        before: Sample {
            counters: counters(5),
            ..Sample::default()
        },
        after: Sample {
            listen: vec![Listen {
                listener: sa(VIP),
                depth: 2,
                backlog: 2,
            }],
            counters: counters(23),
            ..Sample::default()
        },
    };
    let backends: Vec<Endpoint> = [BE1, BE2].iter().map(|b| b.parse().unwrap()).collect();
    let r = reasons();
    let probes = healthy_probes();
    let v = judge(&Facts {
        vip: VIP.parse().unwrap(),
        backends: &backends,
        client: None,
        events: &ev,
        probes: &probes,
        vip_probe: None,
        window_secs: 10.0,
        slow: std::time::Duration::from_secs(1),
        reasons: &r,
        resets: None,
        host: Some(&host),
    });
    assert_eq!(v.first_failed_step, Some(Step::ClientToLb), "{v:#?}");
    let h = &v.steps[0].host;
    assert_eq!(h.len(), 1, "{v:#?}");
    assert_eq!((h[0].status, h[0].unanswered), (Status::Fail, Some((3, 6))));
    let Pressure::AcceptQueueFull { counters, listener } = &h[0].pressure else {
        panic!("{h:?}")
    };
    assert_eq!(listener.map(|l| l.depth), Some(2));
    assert_eq!((counters[0].before, counters[0].after), (5, 23));
    // Those connections failed at step 1: step 2 judges the three the LB served.
    assert!(
        matches!(handling(&v), HandlingFinding::Served { connections: 3, .. }),
        "{v:#?}"
    );
    assert_eq!(v.steps[1].status, Status::Pass);
    // Step 1's evidence has the unanswered SYNs.
    assert!(
        v.steps[0]
            .evidence
            .iter()
            .any(|&i| ev[i].src.port() >= 40003 && ev[i].is_syn()),
        "{v:#?}"
    );
}

/// A probe of `target` whose series of three came out `health`.
fn series_probe(target: &str, port: u16, health: Health) -> ProbeFacts {
    let stats = |ms: f64| Stats {
        min: ms,
        median: ms,
        max: ms,
        n: 3,
    };
    let mut p = probe(target, port, TcpResult::Connected);
    p.ports = vec![port, port + 1, port + 2];
    p.series = Some(Summary {
        probes: 3,
        connect_ms: Some(stats(0.3)),
        ttfb_ms: Some(stats(1800.0)),
        statuses: vec![500; 3],
        health,
    });
    p
}

fn erroring(errors: usize) -> Health {
    Health::Erroring {
        status: 500,
        errors,
        of: 3,
    }
}

#[test]
fn backends_serving_errors_fail_or_warn_step_three_with_their_numbers() {
    let run_with = |h: Health| {
        let probes = [
            series_probe(BE1, 50001, Health::Fine),
            series_probe(BE2, 50010, h),
        ];
        run(&l7_conn(10, CLIENT, 1000), &probes)
    };
    let v = run_with(erroring(3));
    assert_eq!(
        statuses(&v),
        [Status::Pass, Status::Pass, Status::Fail, Status::Pass]
    );
    assert_eq!(v.first_failed_step, Some(Step::LbToBackend));
    assert!(v.backends[1].reachable);
    let be2 = BackendFinding::Erroring {
        status: 500,
        errors: 3,
        of: 3,
        ttfb_ms: Some(Stats {
            min: 1800.0,
            median: 1800.0,
            max: 1800.0,
            n: 3,
        }),
    };
    assert_eq!(v.backends[1].finding, be2);
    assert_eq!(lb_to_backend(&v).degraded, vec![(sa(BE2), be2)]);
    assert_eq!(v.steps[2].status, Status::Fail);
    // Some of the probes: intermittent, a warning.
    assert_eq!(run_with(erroring(1)).steps[2].status, Status::Warn);
    let slow = Health::Slow {
        what: "first_byte".into(),
        median_ms: 1800.0,
        threshold_ms: 1000.0,
    };
    let v = run_with(slow);
    assert_eq!(v.steps[2].status, Status::Warn);
    assert!(
        matches!(&v.backends[1].finding, BackendFinding::Slow { stats, .. } if stats.median == 1800.0)
    );
    let hangs = |hung| Health::Hangs {
        phase: "http".into(),
        hung,
        of: 3,
        after_ms: 2000.0,
    };
    assert_eq!(run_with(hangs(3)).steps[2].status, Status::Fail);
    assert_eq!(run_with(hangs(2)).steps[2].status, Status::Warn);
    // Every probe's events are the backend's evidence, not client evidence.
    let ev = [
        pkt(1, Dir::Out, "10.10.3.1:50012", BE2, SYN, 500, 0),
        pkt(2, Dir::In, BE2, "10.10.3.1:50012", SYN | ACK, 900, 501),
    ];
    let v = run(
        &ev,
        &[
            series_probe(BE1, 50001, Health::Fine),
            series_probe(BE2, 50010, erroring(3)),
        ],
    );
    assert_eq!(v.backends[1].evidence, vec![0, 1]);
}

#[test]
fn the_lb_serving_errors_is_step_two_failing_only_when_its_backends_are_fine() {
    let ev = l7_conn(10, CLIENT, 1000);
    let backends: Vec<Endpoint> = [BE1, BE2].iter().map(|b| b.parse().unwrap()).collect();
    let r = reasons();
    let judge_with = |be2: Health, vip: Health| {
        let probes = [
            series_probe(BE1, 50001, Health::Fine),
            series_probe(BE2, 50010, be2),
        ];
        let vip_probe = series_probe(VIP, 50020, vip);
        judge(&Facts {
            vip: VIP.parse().unwrap(),
            backends: &backends,
            client: None,
            events: &ev,
            probes: &probes,
            vip_probe: Some(&vip_probe),
            window_secs: 10.0,
            slow: std::time::Duration::from_secs(1),
            reasons: &r,
            resets: None,
            host: None,
        })
    };
    // Every request to the VIP gets a 503 while the backends answer fine: the LB's own doing.
    let v = judge_with(Health::Fine, erroring(3));
    assert_eq!(v.steps[1].status, Status::Fail, "{v:#?}");
    assert_eq!(v.steps[2].status, Status::Pass);
    assert_eq!(v.first_failed_step, Some(Step::LbHandling));
    // Some requests, backends fine: intermittent, a warning.
    assert_eq!(
        judge_with(Health::Fine, erroring(1)).steps[1].status,
        Status::Warn
    );
    // A backend serves errors: step 3 fails and explains; step 2 says it in words only.
    let v = judge_with(erroring(3), erroring(3));
    assert_eq!(
        (v.steps[1].status, v.first_failed_step),
        (Status::Pass, Some(Step::LbToBackend))
    );
    assert!(
        matches!(handling(&v), HandlingFinding::Served { local: Some(l), .. } if !l.backends_fine)
    );
    // A VIP the LB host cannot reach (a Layer 4 VIP has no local listener) is not judged here.
    let unreachable = Health::Unreachable {
        outcome: "refused".into(),
        failed: 3,
        of: 3,
    };
    let v = judge_with(Health::Fine, unreachable);
    assert!(matches!(
        handling(&v),
        HandlingFinding::Served { local: None, .. }
    ));
}

/// A segment the LB host retransmitted: `len` bytes, the socket's MSS 1448.
fn retrans(t: u64, src: &str, dst: &str, seq: u32, len: u16) -> KernelEvent {
    KernelEvent {
        ifindex: 0,
        hook: crate::event::Hook::TcpRetransmit,
        payload_len: len,
        mss: 1448,
        detail: crate::event::Detail::Retrans,
        ..pkt(t, Dir::Out, src, dst, ACK, seq, 0)
    }
}

/// An L7 connection whose client advertised MSS 1460 and the LB's replies of `lens` bytes were
/// retransmitted, then the client gave up (FIN).
fn stalled_l7(lens: &[u16]) -> Vec<KernelEvent> {
    let mut ev = probe_packets();
    ev.push(KernelEvent {
        mss: 1460,
        ..pkt(10, Dir::In, CLIENT, VIP, SYN, 1000, 0)
    });
    ev.push(pkt(11, Dir::Out, VIP, CLIENT, SYN | ACK, 7000, 1001));
    for (i, &len) in lens.iter().enumerate() {
        ev.push(retrans(200 + 200 * i as u64, VIP, CLIENT, 7001, len));
    }
    ev.push(pkt(3000, Dir::In, CLIENT, VIP, FIN | ACK, 1080, 7001));
    ev
}

#[test]
fn full_size_retransmissions_without_icmp_are_a_path_mtu_black_hole() {
    let v = run(&stalled_l7(&[1448, 1448, 1448, 1448]), &healthy_probes());
    assert_eq!(
        *return_path(&v),
        ReturnFinding::MtuBlackHole {
            connections: 1,
            full_size: 4,
            small: 0,
            client_mss: Some(1460),
            lb_mss: Some(1448),
            forwarded: false,
        }
    );
    assert_eq!(v.steps[3].status, Status::Fail, "{v:#?}");
    assert_eq!(v.first_failed_step, Some(Step::ReturnPath));
    // The LB answered (it retransmitted its answer): no hang at step 2, though the client gave
    // up without a byte.
    assert_eq!(statuses(&v)[..3], [Status::Pass; 3], "{v:#?}");
    // The evidence names the retransmissions.
    let ev = stalled_l7(&[1448, 1448, 1448, 1448]);
    assert!(
        v.steps[3]
            .evidence
            .iter()
            .any(|&i| matches!(ev[i].detail, crate::event::Detail::Retrans))
    );
}

#[test]
fn a_returning_frag_needed_or_small_retransmissions_make_it_a_stall() {
    // ICMP fragmentation-needed came back: path-MTU discovery works, the stall is something else.
    let mut ev = stalled_l7(&[1448, 1448, 1448]);
    ev.push(KernelEvent {
        detail: crate::event::Detail::Icmp {
            outer_src: "10.10.1.1".parse().unwrap(),
            outer_dst: "10.10.2.10".parse().unwrap(),
            icmp_type: 3,
            icmp_code: 4,
        },
        ..pkt(250, Dir::In, VIP, CLIENT, 0, 7001, 0)
    });
    let v = run(&ev, &healthy_probes());
    assert_eq!(
        *return_path(&v),
        ReturnFinding::Stalled {
            side: Side::Client,
            connections: 1,
            retransmissions: 3,
            full_size: 3,
            frag_needed: true,
        }
    );
    assert_eq!(v.steps[3].status, Status::Warn);
    // Small segments retransmitted as often as full-size ones: not MTU-shaped.
    let v = run(&stalled_l7(&[1448, 100, 1448, 100]), &healthy_probes());
    assert!(
        matches!(
            return_path(&v),
            ReturnFinding::Stalled {
                side: Side::Client,
                retransmissions: 4,
                full_size: 2,
                ..
            }
        ),
        "{v:#?}"
    );
    // Two retransmissions are routine: still a pass.
    let v = run(&stalled_l7(&[1448, 1448]), &healthy_probes());
    assert_eq!(v.steps[3].status, Status::Pass, "{v:#?}");
}

#[test]
fn retransmissions_toward_a_backend_are_a_backend_stall() {
    let mut ev = probe_packets();
    ev.extend(l7_conn(10, CLIENT, 1000));
    for i in 0..3 {
        ev.push(retrans(20 + i * 200, "10.10.3.1:41000", BE1, 124, 80));
    }
    let v = run(&ev, &healthy_probes());
    assert_eq!(
        *return_path(&v),
        ReturnFinding::Stalled {
            side: Side::Backend,
            connections: 1,
            retransmissions: 3,
            full_size: 0,
            frag_needed: false,
        }
    );
}

/// A NAT (Layer 4) connection: the client's SYN forwarded to BE1 with its ISN, the backend's
/// SYN-ACK back through the LB; then, with `--data`, the backend's replies of `lens` bytes
/// seen leaving toward the client again (forwarded retransmissions, full-size from 1448), each
/// also seen arriving from the backend; then the client gives up.
fn stalled_l4(lens: &[u16]) -> Vec<KernelEvent> {
    let mut ev = probe_packets();
    ev.push(KernelEvent {
        mss: 1460,
        ..pkt(10, Dir::In, CLIENT, VIP, SYN, 1000, 0)
    });
    ev.push(KernelEvent {
        mss: 1460,
        ..pkt(11, Dir::Out, "10.10.1.2:40000", BE1, SYN, 1000, 0)
    });
    ev.push(pkt(
        12,
        Dir::In,
        BE1,
        "10.10.1.2:40000",
        SYN | ACK,
        7000,
        1001,
    ));
    ev.push(pkt(13, Dir::Out, VIP, CLIENT, SYN | ACK, 7000, 1001));
    for (i, &len) in lens.iter().enumerate() {
        let t = 200 + 200 * i as u64;
        let seen = |dir, src, dst| KernelEvent {
            payload_len: len,
            mss: 1448,
            detail: crate::event::Detail::Retrans,
            ..pkt(t, dir, src, dst, ACK, 7001, 1080)
        };
        ev.push(seen(Dir::In, BE1, "10.10.1.2:40000"));
        ev.push(seen(Dir::Out, VIP, CLIENT));
    }
    ev.push(pkt(3000, Dir::In, CLIENT, VIP, FIN | ACK, 1080, 7001));
    ev
}

#[test]
fn forwarded_full_size_retransmissions_are_a_layer_4_path_mtu_black_hole() {
    let v = run(&stalled_l4(&[1448, 1448, 1448, 1448]), &healthy_probes());
    assert_eq!(
        *return_path(&v),
        ReturnFinding::MtuBlackHole {
            connections: 1,
            full_size: 4,
            small: 0,
            client_mss: Some(1460),
            lb_mss: Some(1448),
            forwarded: true,
        }
    );
    assert_eq!(v.steps[3].status, Status::Fail, "{v:#?}");
    // The backend-side copies are not a stall of the LB's own backend connections, and small
    // forwarded retransmissions as often as full-size ones are a stall toward the client.
    let v = run(&stalled_l4(&[1448, 100, 1448, 100]), &healthy_probes());
    assert!(
        matches!(
            return_path(&v),
            ReturnFinding::Stalled {
                side: Side::Client,
                retransmissions: 4,
                ..
            }
        ),
        "{v:#?}"
    );
}

#[test]
fn own_retransmissions_seen_again_at_the_interface_count_once() {
    // With --data on a Layer 7 LB its own retransmissions are also seen leaving at TC.
    let mut ev = stalled_l7(&[1448, 1448, 1448]);
    let again: Vec<KernelEvent> = ev
        .iter()
        .filter(|e| e.hook == crate::event::Hook::TcpRetransmit)
        .map(|e| KernelEvent {
            hook: crate::event::Hook::Tc,
            ifindex: 2,
            ..e.clone()
        })
        .collect();
    ev.extend(again);
    let v = run(&ev, &healthy_probes());
    assert!(
        matches!(
            return_path(&v),
            ReturnFinding::MtuBlackHole {
                full_size: 3,
                forwarded: false,
                ..
            }
        ),
        "{v:#?}"
    );
}

/// A reply's first byte (`--data`) from `from` to `to`, `ttfb_ms` after the request's.
fn first_byte(t: u64, from: &str, to: &str, ttfb_ms: u64, status: u16) -> KernelEvent {
    KernelEvent {
        detail: crate::event::Detail::Data(crate::event::DataMark::FirstByte {
            since_ns: Some(ttfb_ms * 1_000_000),
            http_status: Some(status),
        }),
        payload_len: 200,
        ..pkt(t, Dir::In, from, to, ACK, 9000, 100)
    }
}

#[test]
fn backends_replies_in_the_traffic_are_judged_beside_the_probes() {
    let mut events = l7_conn(10, CLIENT, 1000);
    // BE1 answers in about 2 s, BE2 at once with 500s, the clients wait 2.1 s at the VIP.
    for (i, port) in (41000..41003).enumerate() {
        let t = 100 + i as u64 * 10;
        let lb = format!("10.10.3.1:{port}");
        events.push(first_byte(t, BE1, &lb, 2_000 + i as u64 * 50, 200));
        events.push(first_byte(
            t + 1,
            BE2,
            &format!("10.10.3.1:{}", port + 10),
            3,
            500,
        ));
        events.push(first_byte(t + 2, VIP, CLIENT, 2_100, 200));
        // The same reply seen again at another interface counts once.
        events.push(first_byte(t + 3, BE1, &lb, 2_000, 200));
    }
    // The probes' own replies are not traffic.
    events.push(first_byte(200, BE2, "10.10.3.1:50002", 1, 200));
    events.sort_by_key(|e| e.ts_ns);
    let v = run(&events, &healthy_probes());
    let f = lb_to_backend(&v);
    let traffic: Vec<(String, usize, &str)> = f
        .traffic
        .iter()
        .map(|(a, r)| {
            let h = match r.health {
                crate::replies::ReplyHealth::Fine => "fine",
                crate::replies::ReplyHealth::Slow { .. } => "slow",
                crate::replies::ReplyHealth::Erroring { .. } => "erroring",
            };
            (a.to_string(), r.replies, h)
        })
        .collect();
    assert_eq!(
        traffic,
        vec![(BE1.into(), 3, "slow"), (BE2.into(), 3, "erroring")]
    );
    assert_eq!(f.traffic[0].1.ttfb_ms.map(|s| s.median), Some(2_050.0));
    // Every HTTP reply of BE2 is a 5xx: the step fails, though the probes were fine.
    assert_eq!(v.steps[2].status, Status::Fail);
    let clients = f.clients.as_ref().unwrap();
    assert_eq!(
        (clients.replies, clients.ttfb_ms.map(|s| s.median)),
        (1, Some(2_100.0))
    );
    // The reply events of both backends back the finding.
    assert!(
        events
            .iter()
            .enumerate()
            .filter(|(_, e)| e.src == sa(BE2) && e.dst.port() != 50002)
            .all(|(i, _)| v.steps[2].evidence.contains(&i))
    );
}
