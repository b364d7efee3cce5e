//! Unit tests of the recorder and the alert engine with hand-made event sequences.

use std::time::Duration;

use lbtrace_common::tcp_flag::{ACK, FIN, RST, SYN};

use super::{
    alerts::{Alerts, Notice, Thresholds},
    recorder::{Evidence, Finding, Join, OwnFinding, Recorder},
};
use crate::{
    event::Dir,
    kernel::btf::DropReasons,
    testutil::{drop, pkt},
};

const VIP: &str = "10.10.2.10:80";
const BE1: &str = "10.10.3.11:8080";

fn rec(limit: usize) -> Recorder {
    Recorder::new(
        vec![VIP.parse().unwrap()],
        vec![BE1.parse().unwrap()],
        limit,
        DropReasons::from_pairs(&[(2, "NO_SOCKET"), (6, "NETFILTER_DROP")]),
    )
}

fn client(i: u32) -> String {
    format!("10.10.1.2:{}", 40000 + i)
}

#[test]
fn l4_backend_leg_is_joined_by_isn() {
    let mut r = rec(100);
    let c = client(1);
    for e in [
        pkt(0, Dir::In, &c, VIP, SYN, 1000, 0),
        pkt(1, Dir::Out, &c, BE1, SYN, 1000, 0),
        pkt(2, Dir::In, BE1, &c, SYN | ACK, 9000, 1001),
        pkt(3, Dir::Out, VIP, &c, SYN | ACK, 9000, 1001),
        pkt(9, Dir::In, &c, VIP, FIN | ACK, 1050, 9100),
    ] {
        assert!(r.ingest(&e).is_empty());
    }
    assert!(r.expire(10_000_000_000).is_empty());
    let conn = r.conns().next().unwrap();
    let b = conn.backend.as_ref().unwrap();
    assert_eq!((b.join, b.answered), (Join::Isn, true));
    assert_eq!(conn.events.len(), 3);
    assert_eq!(b.events.len(), 2);
}

#[test]
fn l7_backend_leg_is_inferred_and_a_refusal_is_step_three() {
    let mut r = rec(100);
    let c = client(1);
    r.ingest(&pkt(0, Dir::In, &c, VIP, SYN, 1000, 0));
    r.ingest(&pkt(1, Dir::Out, VIP, &c, SYN | ACK, 7000, 1001));
    r.ingest(&pkt(5, Dir::Out, "10.10.3.1:50000", BE1, SYN, 5, 0));
    let f = r.ingest(&pkt(6, Dir::In, BE1, "10.10.3.1:50000", RST | ACK, 0, 6));
    assert_eq!(f.len(), 1);
    assert_eq!(
        f[0].1,
        Finding::BackendRefused {
            backend: BE1.parse().unwrap()
        }
    );
    assert_eq!(
        r.conns().next().unwrap().backend.as_ref().unwrap().join,
        Join::Inferred
    );
}

#[test]
fn a_dropped_syn_is_found_at_the_drop_and_an_unanswered_one_on_expiry() {
    let mut r = rec(100);
    r.ingest(&pkt(0, Dir::In, &client(1), VIP, SYN, 1, 0));
    r.ingest(&pkt(0, Dir::In, &client(2), VIP, SYN, 2, 0));
    let f: Vec<Finding> = r
        .ingest(&drop(0, &client(2), VIP, SYN, 2, 6))
        .into_iter()
        .map(|(_, f)| f)
        .collect();
    assert_eq!(
        f,
        vec![Finding::SynDropped {
            reason: "NETFILTER_DROP".into()
        }],
        "the drop's reason is the evidence: no waiting"
    );
    assert!(r.expire(1_000_000_000).is_empty(), "too early");
    let f: Vec<Finding> = r
        .expire(4_000_000_000)
        .into_iter()
        .map(|(_, f)| f)
        .collect();
    assert_eq!(f, vec![Finding::SynUnanswered]);
    assert!(
        r.expire(5_000_000_000).is_empty(),
        "findings are reported once"
    );
}

#[test]
fn a_kernel_refusal_is_no_listener_at_step_two() {
    // Nothing listens on the VIP: the kernel answers the SYN with RST and frees it as NO_SOCKET,
    // in either order.
    let mut r = rec(100);
    let (c1, c2) = (client(1), client(2));
    r.ingest(&pkt(0, Dir::In, &c1, VIP, SYN, 1000, 0));
    assert!(r.ingest(&drop(0, &c1, VIP, SYN, 1000, 2)).is_empty());
    let f1 = r.ingest(&pkt(0, Dir::Out, VIP, &c1, RST | ACK, 0, 1001));
    r.ingest(&pkt(1, Dir::In, &c2, VIP, SYN, 2000, 0));
    assert!(
        r.ingest(&pkt(1, Dir::Out, VIP, &c2, RST | ACK, 0, 2001))
            .is_empty()
    );
    let f2 = r.ingest(&drop(1, &c2, VIP, SYN, 2000, 2));
    for f in [&f1, &f2] {
        let found: Vec<(Finding, u8)> = f.iter().map(|(_, f)| (f.clone(), f.step())).collect();
        assert_eq!(found, vec![(Finding::NoListener, 2)]);
    }
    assert!(r.conns().all(|c| c.failed() && c.step() == Some(2)));
    assert!(
        r.expire(10_000_000_000).is_empty(),
        "found once, not again on expiry"
    );
}

#[test]
fn a_reset_without_no_socket_is_not_no_listener() {
    // A firewall's `reject with tcp reset`: RST, but the SYN was not freed as NO_SOCKET.
    let mut r = rec(100);
    let c = client(1);
    r.ingest(&pkt(0, Dir::In, &c, VIP, SYN, 1000, 0));
    r.ingest(&drop(0, &c, VIP, SYN, 1000, 6));
    assert!(
        r.ingest(&pkt(0, Dir::Out, VIP, &c, RST | ACK, 0, 1001))
            .is_empty()
    );
    // An L7 LB resetting after its SYN-ACK is the LB's doing, not a refusal.
    let c = client(2);
    r.ingest(&pkt(1, Dir::In, &c, VIP, SYN, 1000, 0));
    r.ingest(&pkt(1, Dir::Out, VIP, &c, SYN | ACK, 5000, 1001));
    r.ingest(&drop(2, &c, VIP, SYN, 1000, 2));
    let f = r.ingest(&pkt(3, Dir::Out, VIP, &c, RST | ACK, 5001, 1001));
    assert_eq!(
        f.into_iter().map(|(_, f)| f).collect::<Vec<_>>(),
        vec![Finding::LbReset {
            after_request: false,
            by: None
        }]
    );
    // The same with the reset tracepoint's event of that RST: a socket of the LB aborted.
    let c = client(3);
    r.ingest(&pkt(4, Dir::In, &c, VIP, SYN, 1000, 0));
    r.ingest(&pkt(4, Dir::Out, VIP, &c, SYN | ACK, 5000, 1001));
    let abort = crate::event::KernelEvent {
        hook: crate::event::Hook::TcpSendReset,
        ifindex: 0,
        detail: crate::event::Detail::Reset(crate::event::ResetInfo {
            state: Some(7),
            active: true,
            reason: None,
        }),
        ..pkt(5, Dir::Out, VIP, &c, RST | ACK, 5001, 1001)
    };
    r.ingest(&abort);
    let f = r.ingest(&pkt(5, Dir::Out, VIP, &c, RST | ACK, 5001, 1001));
    assert_eq!(
        f.into_iter().map(|(_, f)| f).collect::<Vec<_>>(),
        vec![Finding::LbReset {
            after_request: false,
            by: Some("socket_abort".to_owned())
        }]
    );
}

#[test]
fn syn_retransmitted_after_syn_ack_is_step_four() {
    let mut r = rec(100);
    let c = client(1);
    r.ingest(&pkt(0, Dir::In, &c, VIP, SYN, 1000, 0));
    r.ingest(&pkt(1, Dir::Out, VIP, &c, SYN | ACK, 7000, 1001));
    let f = r.ingest(&pkt(1000, Dir::In, &c, VIP, SYN, 1000, 0));
    assert_eq!(f.iter().map(|(_, f)| f.step()).collect::<Vec<_>>(), vec![4]);
}

#[test]
fn memory_stays_bounded_under_a_syn_flood() {
    let mut r = rec(1000);
    for i in 0..50_000u32 {
        r.ingest(&pkt(
            u64::from(i),
            Dir::In,
            &format!("10.{}.{}.{}:1234", i >> 16, (i >> 8) & 255, i & 255),
            VIP,
            SYN,
            i,
            0,
        ));
    }
    let a = r.accounting();
    assert_eq!(
        (a.entries, a.limit, a.evicted, a.total),
        (1000, 1000, 49_000, 50_000)
    );
    let per = a.bytes / a.entries;
    assert!(a.bytes <= 1000 * per + 1024 && per < 4096, "{a:?}");
    assert_eq!(
        r.conns().next().unwrap().id,
        49_001,
        "the oldest were evicted"
    );
}

#[test]
fn alerts_fire_once_and_recover() {
    let mut r = rec(100);
    let mut al = Alerts::new(Thresholds {
        count: 3,
        window: Duration::from_secs(30),
        recover_after: Duration::from_secs(10),
    });
    let mut notices = Vec::new();
    for i in 0..6u32 {
        r.ingest(&pkt(
            u64::from(i) * 100,
            Dir::In,
            &client(i),
            VIP,
            SYN,
            i,
            0,
        ));
    }
    let now = 5_000_000_000;
    for (id, f) in r.expire(now) {
        let conn = r.conns().find(|c| c.id == id).unwrap().clone();
        notices.extend(al.record(now, &conn, &f));
    }
    assert_eq!(notices.len(), 1, "six findings, one alert: {notices:?}");
    let Notice::Alert(a) = &notices[0] else {
        panic!()
    };
    assert_eq!((a.step, a.step_name, a.count), (1, "client-to-lb", 3));
    assert!(a.example_client.is_some());
    assert!(
        al.tick(now + 5_000_000_000).is_empty(),
        "not quiet long enough"
    );
    let rec = al.tick(now + 11_000_000_000);
    assert!(
        matches!(&rec[..], [Notice::Recovered(r)] if r.step == 1 && r.total == 6),
        "{rec:?}"
    );
    assert!(al.lost(now, 0).is_none());
    assert!(matches!(al.lost(now, 5), Some(Notice::Alert(a)) if a.key == "lost_events"));
    assert!(al.lost(now, 7).is_none(), "de-duplicated while active");
}

#[test]
fn worst_case_connection_size_is_what_the_docs_say() {
    use super::recorder::{Conn, MAX_LEG_EVENTS};
    let ev = std::mem::size_of::<crate::event::KernelEvent>();
    let worst = std::mem::size_of::<Conn>()
        + std::mem::size_of::<super::recorder::BackendLeg>()
        + 2 * MAX_LEG_EVENTS * ev
        + 4 * std::mem::size_of::<Finding>();
    println!(
        "KernelEvent {ev} B, worst-case connection {worst} B, conn {} leg {} finding {}",
        std::mem::size_of::<Conn>(),
        std::mem::size_of::<super::recorder::BackendLeg>(),
        std::mem::size_of::<Finding>()
    );
    // README and --help: at most 4.2 KiB per connection, 42 MiB for the default 10,000.
    assert!(worst <= 4300, "{worst}");
}

#[test]
fn l4_joins_find_the_client_by_isn_among_many() {
    let n = 10_000u32;
    let mut r = rec(n as usize);
    for i in 0..n {
        let c = format!(
            "10.10.{}.{}:{}",
            1 + i / 250,
            i % 250 + 1,
            40000 + i % 20000
        );
        let isn = 7 + i * 1000;
        r.ingest(&pkt(u64::from(i), Dir::In, &c, VIP, SYN, isn, 0));
        r.ingest(&pkt(u64::from(i), Dir::Out, &c, BE1, SYN, isn, 0));
    }
    // An ISN seen again for a new client: the newest connection without a backend leg takes it.
    let late = "10.10.200.1:5000";
    r.ingest(&pkt(20_000, Dir::In, late, VIP, SYN, 7, 0));
    r.ingest(&pkt(20_000, Dir::Out, late, BE1, SYN, 7, 0));
    let joined = r
        .conns()
        .filter(|c| {
            c.backend
                .as_ref()
                .is_some_and(|b| b.join == Join::Isn && Some(b.isn) == c.isn && b.lb == c.client)
        })
        .count();
    assert_eq!(
        joined, n as usize,
        "every connection but the evicted first one, and the late one"
    );
    assert_eq!(
        r.conns().last().unwrap().client,
        late.parse::<std::net::SocketAddr>().unwrap()
    );
}

#[test]
fn host_limits_alert_per_kind_and_backend_and_settings_never_do() {
    use crate::host::{Moved, PortUse, PortsBy, Pressure};
    let mut al = Alerts::new(Thresholds {
        count: 2,
        window: Duration::from_secs(30),
        recover_after: Duration::from_secs(5),
    });
    let s = 1_000_000_000u64;
    let cookies = Pressure::SynCookies {
        counters: vec![Moved {
            counter: "TcpExt.SyncookiesSent".into(),
            before: 10,
            after: 14,
        }],
    };
    assert!(al.host(s, &cookies).is_none());
    let Some(Notice::Alert(a)) = al.host(2 * s, &cookies) else {
        panic!("no alert on the second sample")
    };
    assert_eq!(
        (a.key.as_str(), a.step, a.step_name),
        ("syn_cookies", 1, "client-to-lb")
    );
    assert!(
        a.message.contains("SyncookiesSent +4")
            && a.message.contains("TcpExt.SyncookiesSent 10 -> 14 (+4)"),
        "{}",
        a.message
    );
    assert!(
        al.host(3 * s, &cookies).is_none(),
        "de-duplicated while active"
    );
    let ports = |backend: &str| Pressure::SourcePorts {
        ports: PortUse {
            source: "10.10.3.1".parse().unwrap(),
            backend: backend.parse().unwrap(),
            used: 9,
            usable: 10,
            by: PortsBy::Sockets,
            capped: false,
        },
        exhausted: false,
    };
    al.host(s, &ports("10.10.3.11:8080"));
    let Some(Notice::Alert(b)) = al.host(2 * s, &ports("10.10.3.11:8080")) else {
        panic!("no source-port alert")
    };
    assert_eq!(
        (b.key.as_str(), b.step),
        ("source_ports:10.10.3.11:8080", 3)
    );
    assert_eq!(b.example_backend.as_deref(), Some("10.10.3.11:8080"));
    assert!(
        al.host(2 * s, &ports("10.10.3.12:8080")).is_none(),
        "another backend counts apart"
    );
    for _ in 0..5 {
        assert!(
            al.host(2 * s, &Pressure::NoForwarding { dnat: Vec::new() })
                .is_none()
        );
        assert!(
            al.host(
                2 * s,
                &Pressure::StrictRpFilter {
                    iface: "eth0".into()
                }
            )
            .is_none()
        );
    }
    let rec = al.tick(9 * s);
    assert_eq!(rec.len(), 2, "both recover after 5 s of quiet: {rec:?}");
}

const LB_IN: &str = "10.10.3.1";

fn rec_reasons() -> Recorder {
    Recorder::new(
        vec![VIP.parse().unwrap()],
        vec![BE1.parse().unwrap()],
        100,
        DropReasons::from_pairs(&[
            (2, "NO_SOCKET"),
            (6, "NETFILTER_DROP"),
            (70, "NEIGH_FAILED"),
            (71, "IP_OUTNOROUTES"),
        ]),
    )
}

fn be() -> std::net::SocketAddr {
    BE1.parse().unwrap()
}

#[test]
fn the_lbs_own_connections_are_findings_without_a_client() {
    // Health checks: no client connection at all; the backend refuses each.
    let mut r = rec_reasons();
    for i in 0..3u32 {
        let lb = format!("{LB_IN}:{}", 50000 + i);
        let t = u64::from(i) * 500;
        assert!(
            r.ingest(&pkt(t, Dir::Out, &lb, BE1, SYN, 100 + i, 0))
                .is_empty()
        );
        assert!(
            r.ingest(&pkt(t + 1, Dir::In, BE1, &lb, RST | ACK, 0, 101 + i))
                .is_empty(),
            "no client connection to pin it on"
        );
    }
    let own = r.take_own();
    assert_eq!(own.len(), 3, "{own:?}");
    assert!(
        own.iter()
            .all(|o| o.finding == Finding::BackendRefused { backend: be() }
                && o.lb.ip().to_string() == LB_IN)
    );
    assert!(r.take_own().is_empty(), "taken once");
    assert_eq!(r.conns().count(), 0, "not client connections");

    let mut al = Alerts::new(Thresholds::default());
    let notices: Vec<Notice> = own
        .iter()
        .filter_map(|o| al.own(1_000_000_000, o))
        .collect();
    let [Notice::Alert(a)] = &notices[..] else {
        panic!("one alert expected: {notices:?}")
    };
    assert_eq!(
        (
            a.key.as_str(),
            a.step,
            a.evidence,
            a.example_backend.as_deref()
        ),
        (
            "backend_refused:10.10.3.11:8080",
            3,
            "lb-connection",
            Some(BE1)
        )
    );
    assert!(a.message.contains("health checks"), "{}", a.message);

    // A client connection that showed it in the window is the alert's example instead (HAProxy's
    // retries are own connections; the client's first attempt is joined).
    let mut r = rec_reasons();
    let c = client(1);
    r.ingest(&pkt(0, Dir::In, &c, VIP, SYN, 1000, 0));
    r.ingest(&pkt(1, Dir::Out, VIP, &c, SYN | ACK, 7000, 1001));
    r.ingest(&pkt(5, Dir::Out, &format!("{LB_IN}:50010"), BE1, SYN, 5, 0));
    let f = r.ingest(&pkt(
        6,
        Dir::In,
        BE1,
        &format!("{LB_IN}:50010"),
        RST | ACK,
        0,
        6,
    ));
    let mut al = Alerts::new(Thresholds::default());
    let conn = r.conns().next().unwrap().clone();
    assert!(al.record(6_000_000, &conn, &f[0].1).is_none());
    let own = OwnFinding {
        lb: format!("{LB_IN}:50011").parse().unwrap(),
        finding: f[0].1.clone(),
        evidence: Evidence::Wire,
    };
    assert!(al.own(7_000_000, &own).is_none());
    let Some(Notice::Alert(a)) = al.own(8_000_000, &own) else {
        panic!("the third finding raises it")
    };
    assert_eq!(
        (a.evidence, a.example_client, a.conn_id),
        ("client", Some(c.clone()), Some(conn.id))
    );
}

#[test]
fn a_retransmitted_backend_syn_is_a_timeout_at_the_retransmission() {
    let mut r = rec_reasons();
    let c = client(1);
    let lb = format!("{LB_IN}:50001");
    r.ingest(&pkt(0, Dir::In, &c, VIP, SYN, 1000, 0));
    r.ingest(&pkt(1, Dir::Out, VIP, &c, SYN | ACK, 7000, 1001));
    assert!(r.ingest(&pkt(5, Dir::Out, &lb, BE1, SYN, 5, 0)).is_empty());
    let f = r.ingest(&pkt(1010, Dir::Out, &lb, BE1, SYN, 5, 0));
    assert_eq!(
        f.iter().map(|(_, f)| f.clone()).collect::<Vec<_>>(),
        vec![Finding::BackendTimeout { backend: be() }],
        "found at the first retransmission, 1 s in, not at expiry"
    );
    assert!(
        r.ingest(&pkt(3010, Dir::Out, &lb, BE1, SYN, 5, 0))
            .is_empty(),
        "once"
    );
    assert!(r.expire(10_000_000_000).is_empty(), "not twice");

    // The same for a backend connection no client is joined to (HAProxy's retry).
    let lb2 = format!("{LB_IN}:50002");
    r.ingest(&pkt(20_000, Dir::Out, &lb2, BE1, SYN, 77, 0));
    assert!(r.take_own().is_empty());
    r.ingest(&pkt(21_000, Dir::Out, &lb2, BE1, SYN, 77, 0));
    assert_eq!(
        r.take_own()
            .into_iter()
            .map(|o| o.finding)
            .collect::<Vec<_>>(),
        vec![Finding::BackendTimeout { backend: be() }]
    );
}

#[test]
fn an_unanswered_own_connection_times_out_on_expiry() {
    let mut r = rec_reasons();
    r.ingest(&pkt(0, Dir::Out, &format!("{LB_IN}:50003"), BE1, SYN, 9, 0));
    assert!(r.expire(1_000_000_000).is_empty());
    assert!(r.take_own().is_empty());
    let _ = r.expire(3_500_000_000);
    assert_eq!(
        r.take_own()
            .into_iter()
            .map(|o| o.finding)
            .collect::<Vec<_>>(),
        vec![Finding::BackendTimeout { backend: be() }]
    );
    let _ = r.expire(60_000_000_000);
    assert_eq!(r.own_legs(), 0, "forgotten after its time");
}

#[test]
fn a_backend_syn_dropped_for_no_neighbour_or_route_is_unreachable_at_once() {
    let mut r = rec_reasons();
    let c = client(1);
    let lb = format!("{LB_IN}:50004");
    r.ingest(&pkt(0, Dir::In, &c, VIP, SYN, 1000, 0));
    r.ingest(&pkt(1, Dir::Out, VIP, &c, SYN | ACK, 7000, 1001));
    let f = r.ingest(&drop(1000, &lb, BE1, SYN, 5, 70));
    assert!(
        matches!(&f[..], [(_, Finding::BackendUnreachable { backend, what })]
            if *backend == be() && what.contains("NEIGH_FAILED")),
        "{f:?}"
    );
    // No client: an own connection; and a firewall's drop is not "unreachable".
    r.ingest(&drop(4000, &format!("{LB_IN}:50005"), BE1, SYN, 6, 71));
    r.ingest(&drop(4000, &format!("{LB_IN}:50006"), BE1, SYN, 7, 6));
    let own: Vec<Finding> = r.take_own().into_iter().map(|o| o.finding).collect();
    assert!(
        matches!(&own[..], [Finding::BackendUnreachable { what, .. }] if what.contains("IP_OUTNOROUTES")),
        "{own:?}"
    );
}

#[test]
fn own_connections_stay_bounded() {
    let mut r = rec_reasons();
    for i in 0..(super::recorder::MAX_OWN_LEGS as u32 + 500) {
        let lb = format!("10.10.3.{}:{}", 1 + i / 60000, 1024 + i % 60000);
        r.ingest(&pkt(u64::from(i), Dir::Out, &lb, BE1, SYN, i, 0));
        r.ingest(&pkt(u64::from(i), Dir::In, BE1, &lb, RST | ACK, 0, i + 1));
    }
    assert!(r.own_legs() <= super::recorder::MAX_OWN_LEGS);
    assert!(r.take_own().len() <= super::recorder::MAX_OWN_FOUND);
}

#[test]
fn a_probes_packets_are_neither_a_client_leg_nor_the_lbs_own() {
    use crate::check::verdict::{ProbeFacts, TcpResult};
    let mut r = rec_reasons();
    // A client connection answered by the LB waits for its backend leg...
    let c = client(1);
    r.ingest(&pkt(0, Dir::In, &c, VIP, SYN, 1000, 0));
    r.ingest(&pkt(0, Dir::Out, VIP, &c, SYN | ACK, 5000, 1001));
    // ...when the probe's SYN leaves: it is the probe's, not the client's leg.
    r.probe_started(be());
    let lb = format!("{LB_IN}:50100");
    r.ingest(&pkt(1, Dir::Out, &lb, BE1, SYN, 77, 0));
    r.ingest(&pkt(2, Dir::In, BE1, &lb, RST | ACK, 0, 78));
    assert!(r.conns().next().unwrap().backend.is_none(), "not joined");
    assert!(r.take_own().is_empty(), "not the LB's own connection");
    let facts = ProbeFacts {
        target: be(),
        local_port: Some(50100),
        tcp: TcpResult::Refused,
        why: None,
        http_status: None,
        ports: Vec::new(),
        series: None,
    };
    r.probe_done(&facts, 3_000_000);
    let own = r.take_own();
    assert_eq!(own.len(), 1, "{own:?}");
    assert_eq!(own[0].finding, Finding::BackendRefused { backend: be() });
    assert_eq!(own[0].evidence, Evidence::Probe);
    // Its late packets stay out by the port; the next SYN towards the backend is the LB's.
    r.ingest(&pkt(4, Dir::Out, &lb, BE1, RST, 78, 0));
    assert!(r.take_own().is_empty());
    r.ingest(&pkt(5, Dir::Out, &format!("{LB_IN}:41000"), BE1, SYN, 9, 0));
    assert!(r.conns().next().unwrap().backend.is_some(), "joined");
    // A probe that cannot connect and left no packet (no route) is the only evidence.
    r.probe_started(be());
    let facts = ProbeFacts {
        tcp: TcpResult::Unreachable,
        why: Some("network unreachable (ENETUNREACH)".to_owned()),
        local_port: Some(50101),
        ..facts
    };
    r.probe_done(&facts, 6_000_000);
    let own = r.take_own();
    assert!(
        matches!(&own[..], [o] if matches!(&o.finding, Finding::BackendUnreachable { what, .. } if what.contains("ENETUNREACH"))),
        "{own:?}"
    );
    let mut al = Alerts::new(Thresholds {
        count: 1,
        ..Thresholds::default()
    });
    let Some(Notice::Alert(a)) = al.own(6_000_000, &own[0]) else {
        panic!("alert expected")
    };
    assert_eq!(a.evidence, "probe");
    assert!(a.message.contains("probe"), "{}", a.message);
    // A probe that connects afterwards recovers it; one started before the last finding not.
    assert!(al.probe_ok(5_000_000, be()).is_empty());
    let rec = al.probe_ok(7_000_000, be());
    assert!(
        matches!(&rec[..], [Notice::Recovered(r)] if r.key == a.key),
        "{rec:?}"
    );
    assert!(al.active().is_empty());
}

#[test]
fn the_lb_answering_at_once_with_no_backend_alive_is_unserved() {
    let mut r = rec_reasons();
    let serve = |r: &mut Recorder, i: u32, t: u64| {
        let c = client(i);
        r.ingest(&pkt(t, Dir::In, &c, VIP, SYN, 1000, 0));
        r.ingest(&pkt(t + 1, Dir::Out, VIP, &c, SYN | ACK, 5000, 1001));
        r.ingest(&pkt(t + 2, Dir::Out, VIP, &c, FIN | ACK, 5200, 1080))
            .into_iter()
            .map(|(_, f)| f)
            .collect::<Vec<_>>()
    };
    assert_eq!(serve(&mut r, 1, 0), vec![Finding::Unserved]);
    assert_eq!(Finding::Unserved.step(), 3);
    // A backend answered the LB: later clients are served over reused connections.
    r.ingest(&pkt(
        10,
        Dir::Out,
        &format!("{LB_IN}:41000"),
        BE1,
        SYN,
        9,
        0,
    ));
    r.ingest(&pkt(
        11,
        Dir::In,
        BE1,
        &format!("{LB_IN}:41000"),
        SYN | ACK,
        5,
        10,
    ));
    assert!(serve(&mut r, 2, 20).is_empty());
    // Past the lookback, with nothing alive since, the rule holds again.
    let later = crate::check::verdict::unserved::ALIVE_NS / 1_000_000 + 100;
    assert_eq!(serve(&mut r, 3, later), vec![Finding::Unserved]);
}

#[test]
fn an_rst_after_the_lbs_own_fin_is_not_a_reset() {
    // TLS: the LB answers and closes; the client's close_notify arrives after, and the LB
    // host's kernel answers it with RST.
    let mut r = rec(100);
    let c = client(1);
    r.ingest(&pkt(0, Dir::In, &c, VIP, SYN, 1000, 0));
    r.ingest(&pkt(0, Dir::Out, VIP, &c, SYN | ACK, 5000, 1001));
    r.ingest(&pkt(1, Dir::Out, &format!("{LB_IN}:41000"), BE1, SYN, 9, 0));
    r.ingest(&pkt(
        1,
        Dir::In,
        BE1,
        &format!("{LB_IN}:41000"),
        SYN | ACK,
        5,
        10,
    ));
    r.ingest(&pkt(5, Dir::Out, VIP, &c, FIN | ACK, 5900, 1300));
    assert!(
        r.ingest(&pkt(6, Dir::Out, VIP, &c, RST, 5901, 0))
            .is_empty()
    );
    // Without the FIN first, it is one.
    let c = client(2);
    r.ingest(&pkt(10, Dir::In, &c, VIP, SYN, 1000, 0));
    r.ingest(&pkt(10, Dir::Out, VIP, &c, SYN | ACK, 5000, 1001));
    assert_eq!(
        r.ingest(&pkt(11, Dir::Out, VIP, &c, RST | ACK, 5001, 1300))
            .into_iter()
            .map(|(_, f)| f)
            .collect::<Vec<_>>(),
        vec![Finding::LbReset {
            after_request: true,
            by: None
        }]
    );
}

/// The LB host's own probe of the VIP: its packets (from the VIP's own address to a local VIP,
/// or leaving the host) are no client connection, also when the kernel refuses it (`NO_SOCKET`,
/// a Layer-4 VIP with nothing listening on the host), and a client's SYN arriving while the
/// probe is under way stays a client's; the probe's result is no finding of the recorder's.
#[test]
fn a_vip_probes_packets_are_no_client_connection() {
    use crate::check::verdict::{ProbeFacts, TcpResult};
    let vip: std::net::SocketAddr = VIP.parse().unwrap();
    let mut r = rec_reasons();
    r.probe_started(vip);
    // A client's SYN first: not the probe's.
    let c = client(1);
    r.ingest(&pkt(0, Dir::In, &c, VIP, SYN, 1000, 0));
    assert_eq!(r.conns().count(), 1);
    // The probe's SYN from the VIP's own address, the kernel's refusal and its drop.
    let local = "10.10.2.10:50200";
    r.ingest(&pkt(1, Dir::Out, local, VIP, SYN, 77, 0));
    r.ingest(&drop(1, local, VIP, SYN, 77, 2));
    r.ingest(&pkt(1, Dir::In, VIP, local, RST | ACK, 0, 78));
    assert_eq!(r.conns().count(), 1, "the probe is no client connection");
    let facts = ProbeFacts {
        target: vip,
        local_port: Some(50200),
        tcp: TcpResult::Refused,
        why: None,
        http_status: None,
        ports: Vec::new(),
        series: None,
    };
    r.probe_done(&facts, 2_000_000);
    assert!(r.take_own().is_empty(), "a VIP's refusal is no finding");
    // A late packet of the probe stays out by its port; the next probe leaves the host.
    r.ingest(&pkt(3, Dir::Out, local, VIP, RST, 78, 0));
    r.probe_started(vip);
    let out = "10.10.3.1:50201";
    r.ingest(&pkt(4, Dir::Out, out, VIP, SYN, 88, 0));
    r.ingest(&pkt(5, Dir::In, VIP, out, SYN | ACK, 9, 89));
    assert_eq!(r.conns().count(), 1);
    assert_eq!(r.opened().values().sum::<u64>(), 1);
    assert!(r.expire(10_000_000_000).iter().all(|(id, _)| *id == 1));
}

/// A backend serving badly (the probes' evidence) raises its alert per kind; it recovers when the
/// backend's probes are fine again, not on a probe started before its last finding.
#[test]
fn a_degraded_backend_recovers_when_its_probes_are_fine() {
    let mut al = Alerts::new(Thresholds {
        count: 2,
        ..Thresholds::default()
    });
    let o = OwnFinding {
        lb: "0.0.0.0:50000".parse().unwrap(),
        finding: Finding::BackendDegraded {
            backend: be(),
            health: "erroring".to_owned(),
            what: "answers HTTP 500 (1 of 1 probe)".to_owned(),
        },
        evidence: Evidence::Probe,
    };
    assert!(al.own(1_000, &o).is_none());
    let Some(Notice::Alert(a)) = al.own(2_000, &o) else {
        panic!("alert expected")
    };
    assert_eq!(a.key, format!("backend_erroring:{BE1}"));
    assert_eq!((a.step, a.evidence), (3, "probe"));
    assert_eq!(a.example_backend.as_deref(), Some(BE1));
    assert!(
        a.message
            .starts_with(&format!("backend {BE1} answers HTTP 500"))
    );
    assert!(
        al.probe_ok(3_000, be()).is_empty(),
        "connecting is not serving"
    );
    assert!(al.probes_fine(1_500, be()).is_empty());
    let rec = al.probes_fine(3_000, be());
    assert!(
        matches!(&rec[..], [Notice::Recovered(r)] if r.key == a.key),
        "{rec:?}"
    );
    // The VIP serving errors: step 2, recovered by the VIP's fine probes.
    let o = OwnFinding {
        finding: Finding::LbServesErrors {
            vip: VIP.parse().unwrap(),
            what: "the LB serves errors".to_owned(),
        },
        ..o
    };
    al.own(4_000, &o);
    let Some(Notice::Alert(a)) = al.own(5_000, &o) else {
        panic!("alert expected")
    };
    assert_eq!((a.key.as_str(), a.step), ("lb_serves_errors", 2));
    assert_eq!(a.example_vip.as_deref(), Some(VIP));
    assert_eq!(al.vip_fine(6_000).len(), 1);
    assert!(al.active().is_empty());
}

/// A segment the LB host retransmitted (`tcp:tcp_retransmit_skb`): `len` bytes, MSS 1448.
fn retrans(ms: u64, src: &str, dst: &str, seq: u32, len: u16) -> crate::event::KernelEvent {
    crate::event::KernelEvent {
        hook: crate::event::Hook::TcpRetransmit,
        payload_len: len,
        mss: 1448,
        detail: crate::event::Detail::Retrans,
        ..pkt(ms, Dir::Out, src, dst, ACK, seq, 0)
    }
}

/// The LB's reply to a client retransmitted: a step-4 finding once, at the third data
/// retransmission, with how many were full-size; SYN retransmissions and a fourth one add none.
#[test]
fn replies_retransmitted_to_a_client_are_a_step_four_finding_once() {
    let mut r = rec(100);
    let c = client(1);
    r.ingest(&pkt(0, Dir::In, &c, VIP, SYN, 1000, 0));
    r.ingest(&pkt(1, Dir::Out, VIP, &c, SYN | ACK, 7000, 1001));
    r.ingest(&pkt(2, Dir::In, &c, VIP, ACK, 1001, 7001));
    assert!(r.ingest(&retrans(300, VIP, &c, 7001, 1448)).is_empty());
    assert!(
        r.ingest(&retrans(600, VIP, &c, 7001, 0)).is_empty(),
        "no data"
    );
    assert!(r.ingest(&retrans(900, VIP, &c, 8449, 200)).is_empty());
    let f = r.ingest(&retrans(1500, VIP, &c, 7001, 1448));
    assert_eq!(
        f.iter().map(|(_, f)| f.clone()).collect::<Vec<_>>(),
        vec![Finding::RepliesRetransmitted {
            full_size: 2,
            of: 3
        }]
    );
    assert_eq!(f[0].1.step(), 4);
    assert_eq!(f[0].1.alert_key(), "replies_retransmitted");
    assert!(r.ingest(&retrans(2700, VIP, &c, 7001, 1448)).is_empty());
    // The dump's timeline keeps the retransmissions.
    let conn = r.conns().next().unwrap();
    assert_eq!(
        conn.events
            .iter()
            .filter(|e| matches!(e.detail, crate::event::Detail::Retrans))
            .count(),
        5
    );
}

/// The LB's own data to a backend retransmitted again and again: the backend stalls (step 3).
#[test]
fn data_retransmitted_to_a_backend_is_a_stalling_backend() {
    let mut r = rec(100);
    let lb = "10.10.3.1:50000";
    r.ingest(&pkt(0, Dir::Out, lb, BE1, SYN, 5, 0));
    r.ingest(&pkt(1, Dir::In, BE1, lb, SYN | ACK, 900, 6));
    for (i, ms) in [200, 400, 800].into_iter().enumerate() {
        r.ingest(&retrans(ms, lb, BE1, 6, 80));
        let own = r.take_own();
        if i < 2 {
            assert!(own.is_empty(), "{own:?}");
        } else {
            assert_eq!(own.len(), 1, "{own:?}");
            assert!(matches!(
                &own[0].finding,
                Finding::BackendDegraded { health, what, .. }
                    if health == "stalls" && what.contains("3 retransmissions")
            ));
            assert_eq!(own[0].finding.alert_key(), format!("backend_stalls:{BE1}"));
        }
    }
}

/// A server on the VIP (no `--backend` given) answering and closing at once is serving: no
/// `unserved` finding, which needs backends the LB could have lost. With backends given, the
/// same connection is one.
#[test]
fn answering_at_once_without_backends_given_is_not_unserved() {
    let conn = |r: &mut Recorder| {
        let c = client(7);
        let mut found = Vec::new();
        for e in [
            pkt(0, Dir::In, &c, VIP, SYN, 1000, 0),
            pkt(1, Dir::Out, VIP, &c, SYN | ACK, 7000, 1001),
            pkt(2, Dir::In, &c, VIP, ACK, 1001, 7001),
            pkt(5, Dir::Out, VIP, &c, FIN | ACK, 7101, 1080),
        ] {
            found.extend(r.ingest(&e).into_iter().map(|(_, f)| f));
        }
        found
    };
    let mut bare = Recorder::new(
        vec![VIP.parse().unwrap()],
        Vec::new(),
        100,
        DropReasons::from_pairs(&[]),
    );
    assert_eq!(conn(&mut bare), Vec::<Finding>::new());
    assert_eq!(conn(&mut rec(100)), vec![Finding::Unserved]);
}
