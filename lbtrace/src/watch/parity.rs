//! One engine, two front ends: the same event sequence and the same probe results fed to
//! `check`'s batch verdict engine and to `watch`'s streaming recorder reach the same findings
//! (step, kind, backend).

use std::{collections::BTreeSet, net::SocketAddr};

use lbtrace_common::tcp_flag::{ACK, FIN, RST, SYN};

use super::recorder::Recorder;
use crate::{
    check::verdict::{
        self, BackendFinding, Facts, HandlingFinding, ProbeFacts, ReturnFinding, Status,
        StepFinding, TcpResult,
    },
    endpoint::Endpoint,
    event::{Dir, KernelEvent},
    kernel::btf::DropReasons,
    testutil::{drop, pkt, sa},
};

const VIP: &str = "10.10.2.10:80";
const BE1: &str = "10.10.3.11:8080";
const BE2: &str = "10.10.3.12:8080";
const LB: &str = "10.10.3.1";

/// (step, kind as the recorder's findings serialize it, backend).
type Found = BTreeSet<(u8, String, Option<SocketAddr>)>;

fn reasons() -> DropReasons {
    DropReasons::from_pairs(&[
        (2, "NO_SOCKET"),
        (6, "NETFILTER_DROP"),
        (60, "NEIGH_FAILED"),
    ])
}

fn backends() -> Vec<Endpoint> {
    [BE1, BE2].iter().map(|b| b.parse().unwrap()).collect()
}

/// A probe's result and the packets it left on the wire.
struct Probe {
    facts: ProbeFacts,
    events: Vec<KernelEvent>,
}

fn probe(t: u64, target: &str, port: u16, tcp: TcpResult) -> Probe {
    let lb = format!("{LB}:{port}");
    let syn = pkt(t, Dir::Out, &lb, target, SYN, 500, 0);
    let events = match tcp {
        TcpResult::Connected => vec![
            syn,
            pkt(t + 1, Dir::In, target, &lb, SYN | ACK, 900, 501),
            pkt(t + 2, Dir::Out, &lb, target, FIN | ACK, 501, 901),
        ],
        TcpResult::Refused => vec![syn, pkt(t + 1, Dir::In, target, &lb, RST | ACK, 0, 501)],
        _ => vec![
            syn.clone(),
            pkt(t + 1000, Dir::Out, &lb, target, SYN, 500, 0),
        ],
    };
    Probe {
        facts: ProbeFacts {
            target: sa(target),
            local_port: Some(port),
            tcp,
            why: None,
            http_status: None,
            ports: Vec::new(),
            series: None,
        },
        events,
    }
}

/// A client connection the LB (Layer 7) answers and closes `close_ms` after the SYN.
fn l7_client(t: u64, port: u16, close_ms: u64) -> Vec<KernelEvent> {
    let client = format!("10.10.1.2:{port}");
    let isn = u32::from(port) * 1000;
    vec![
        pkt(t, Dir::In, &client, VIP, SYN, isn, 0),
        pkt(t + 1, Dir::Out, VIP, &client, SYN | ACK, 7000, isn + 1),
        pkt(
            t + close_ms,
            Dir::Out,
            VIP,
            &client,
            FIN | ACK,
            7300,
            isn + 80,
        ),
        pkt(
            t + close_ms + 1,
            Dir::In,
            &client,
            VIP,
            FIN | ACK,
            isn + 80,
            7301,
        ),
    ]
}

/// The LB's own connection to `be` for a client (`lb_port`), answered by `answer`.
fn leg(t: u64, lb_port: u16, be: &str, answer: Option<u8>) -> Vec<KernelEvent> {
    let lb = format!("{LB}:{lb_port}");
    let mut v = vec![pkt(t, Dir::Out, &lb, be, SYN, 123, 0)];
    if let Some(flags) = answer {
        v.push(pkt(t + 1, Dir::In, be, &lb, flags, 456, 124));
    }
    v
}

/// What the batch engine finds, as the recorder's kinds.
fn batch(events: &[KernelEvent], probes: &[Probe]) -> Found {
    let mut events: Vec<KernelEvent> = events
        .iter()
        .chain(probes.iter().flat_map(|p| p.events.iter()))
        .cloned()
        .collect();
    events.sort_by_key(|e| e.ts_ns);
    let probe_facts: Vec<ProbeFacts> = probes.iter().map(|p| p.facts.clone()).collect();
    let (backends, r) = (backends(), reasons());
    let v = verdict::judge(&Facts {
        vip: VIP.parse().unwrap(),
        backends: &backends,
        client: None,
        events: &events,
        probes: &probe_facts,
        vip_probe: None,
        window_secs: 10.0,
        slow: std::time::Duration::from_secs(1),
        reasons: &r,
        resets: None,
        host: None,
    });
    let mut found = Found::new();
    for s in v.steps.iter().filter(|s| s.status == Status::Fail) {
        let n = s.step.number();
        match &s.finding {
            StepFinding::LbHandling(HandlingFinding::NothingServes {
                kernel_refused: true,
                ..
            }) => {
                found.insert((n, "no_listener".to_owned(), None));
            }
            StepFinding::LbToBackend(_) => {
                if s.unserved.is_some() {
                    found.insert((n, "unserved".to_owned(), None));
                }
                for b in v.backends.iter().filter(|b| !b.reachable) {
                    let kind = match b.finding {
                        BackendFinding::Refused => "backend_refused",
                        BackendFinding::Filtered { .. } | BackendFinding::TimeoutNoSyn => {
                            "backend_timeout"
                        }
                        BackendFinding::HostDown { .. }
                        | BackendFinding::NoRoute { .. }
                        | BackendFinding::Icmp { .. }
                        | BackendFinding::NeighbourDiscoveryFailed { .. }
                        | BackendFinding::Unreachable { .. } => "backend_unreachable",
                        _ => "other",
                    };
                    found.insert((n, kind.to_owned(), Some(b.addr)));
                }
            }
            StepFinding::ReturnPath(ReturnFinding::DirectReturn { .. }) => {
                found.insert((n, "direct_return_lost".to_owned(), None));
            }
            _ => {
                found.insert((n, "other".to_owned(), None));
            }
        }
    }
    found
}

/// What the recorder finds from the same events and probe results: each probe starts before
/// its packets and ends after them.
fn stream(events: &[KernelEvent], probes: &[Probe]) -> Found {
    let mut r = Recorder::new(vec![VIP.parse().unwrap()], backends(), 100, reasons());
    let mut evs: Vec<&KernelEvent> = events
        .iter()
        .chain(probes.iter().flat_map(|p| p.events.iter()))
        .collect();
    evs.sort_by_key(|e| e.ts_ns);
    for p in probes {
        r.probe_started(p.facts.target);
    }
    let mut findings = Vec::new();
    for e in &evs {
        findings.extend(r.ingest(e).into_iter().map(|(_, f)| f));
    }
    let end = evs.last().map_or(0, |e| e.ts_ns);
    for p in probes {
        r.probe_done(&p.facts, end);
    }
    findings.extend(r.expire(end + 10_000_000_000).into_iter().map(|(_, f)| f));
    findings.extend(r.take_own().into_iter().map(|o| o.finding));
    findings
        .iter()
        .map(|f| {
            let kind = serde_json::to_value(f).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_owned();
            (f.step(), kind, f.backend())
        })
        .collect()
}

/// Both engines find `want` from `events` and `probes`.
fn assert_parity(
    what: &str,
    events: &[KernelEvent],
    probes: &[Probe],
    want: &[(u8, &str, Option<&str>)],
) {
    let want: Found = want
        .iter()
        .map(|(s, k, b)| (*s, (*k).to_owned(), b.map(sa)))
        .collect();
    assert_eq!(batch(events, probes), want, "{what}: check");
    assert_eq!(stream(events, probes), want, "{what}: watch");
}

#[test]
fn healthy() {
    let mut ev = l7_client(100, 40000, 5);
    ev.extend(leg(102, 41000, BE1, Some(SYN | ACK)));
    let probes = [
        probe(1, BE1, 50001, TcpResult::Connected),
        probe(1, BE2, 50002, TcpResult::Connected),
    ];
    assert_parity("healthy", &ev, &probes, &[]);
    // A served client with no new backend connection (a reused one) is healthy too.
    let ev = l7_client(100, 40001, 5);
    assert_parity("reused", &ev, &probes, &[]);
}

#[test]
fn backend_refused() {
    let mut ev = l7_client(100, 40000, 5);
    ev.extend(leg(102, 41000, BE2, Some(RST | ACK)));
    let probes = [
        probe(1, BE1, 50001, TcpResult::Connected),
        probe(1, BE2, 50002, TcpResult::Refused),
    ];
    assert_parity(
        "refused",
        &ev,
        &probes,
        &[(3, "backend_refused", Some(BE2))],
    );
}

#[test]
fn backend_timeout() {
    // The LB's SYNs to be2 are retransmitted; it answers the client 503 after 2 s.
    let mut ev = l7_client(100, 40000, 2100);
    ev.extend(leg(102, 41000, BE2, None));
    ev.push(pkt(
        1102,
        Dir::Out,
        &format!("{LB}:41000"),
        BE2,
        SYN,
        123,
        0,
    ));
    let probes = [
        probe(1, BE1, 50001, TcpResult::Connected),
        probe(1, BE2, 50002, TcpResult::Timeout),
    ];
    assert_parity(
        "timeout",
        &ev,
        &probes,
        &[(3, "backend_timeout", Some(BE2))],
    );
}

#[test]
fn neigh_failed_drop() {
    let lb = format!("{LB}:41000");
    let mut ev = l7_client(100, 40000, 3100);
    ev.extend(leg(102, 41000, BE2, None));
    ev.push(drop(3102, &lb, BE2, SYN, 123, 60));
    let mut be2 = probe(1, BE2, 50002, TcpResult::Unreachable);
    be2.events = vec![drop(3001, &format!("{LB}:50002"), BE2, SYN, 500, 60)];
    let probes = [probe(1, BE1, 50001, TcpResult::Connected), be2];
    assert_parity(
        "NEIGH_FAILED",
        &ev,
        &probes,
        &[(3, "backend_unreachable", Some(BE2))],
    );
}

#[test]
fn no_listener() {
    let client = "10.10.1.2:40000";
    let ev = vec![
        pkt(100, Dir::In, client, VIP, SYN, 1000, 0),
        pkt(100, Dir::Out, VIP, client, RST | ACK, 0, 1001),
        drop(100, client, VIP, SYN, 1000, 2),
    ];
    let probes = [
        probe(1, BE1, 50001, TcpResult::Connected),
        probe(1, BE2, 50002, TcpResult::Connected),
    ];
    assert_parity("no listener", &ev, &probes, &[(2, "no_listener", None)]);
}

#[test]
fn unserved() {
    // Every backend refuses; the LB answers each client at once, with no backend connection.
    let mut ev = l7_client(100, 40000, 2);
    ev.extend(l7_client(300, 40001, 2));
    let probes = [
        probe(1, BE1, 50001, TcpResult::Refused),
        probe(1, BE2, 50002, TcpResult::Refused),
    ];
    assert_parity(
        "unserved",
        &ev,
        &probes,
        &[
            (3, "unserved", None),
            (3, "backend_refused", Some(BE1)),
            (3, "backend_refused", Some(BE2)),
        ],
    );
    // HAProxy's retries: the 503 comes seconds later, after every backend connection failed.
    let mut slow = l7_client(100, 40002, 3000);
    slow.extend(leg(102, 41000, BE1, Some(RST | ACK)));
    assert_parity(
        "unserved after retries",
        &slow,
        &probes,
        &[
            (3, "unserved", None),
            (3, "backend_refused", Some(BE1)),
            (3, "backend_refused", Some(BE2)),
        ],
    );
    // The same clients while a backend answered the LB are served over a reused connection.
    let probes = [
        probe(1, BE1, 50001, TcpResult::Connected),
        probe(1, BE2, 50002, TcpResult::Refused),
    ];
    assert_parity(
        "a backend alive",
        &ev,
        &probes,
        &[(3, "backend_refused", Some(BE2))],
    );
}

/// A client connection forwarded without NAT (its SYN leaves the LB still to the VIP): the
/// backend's SYN-ACK and FIN come back through the LB when `through`, else (direct server
/// return) nothing does; the client closes when `finishes`, else it only retransmits its SYN.
fn routed_client(t: u64, port: u16, through: bool, finishes: bool) -> Vec<KernelEvent> {
    let client = format!("10.10.1.2:{port}");
    let (c, isn, sisn) = (client.as_str(), u32::from(port) * 1000, 7_000);
    let mut v = vec![
        pkt(t, Dir::In, c, VIP, SYN, isn, 0),
        pkt(t + 1, Dir::Out, c, VIP, SYN, isn, 0),
    ];
    if through {
        v.extend([
            pkt(t + 2, Dir::In, VIP, c, SYN | ACK, sisn, isn + 1),
            pkt(t + 3, Dir::Out, VIP, c, SYN | ACK, sisn, isn + 1),
            pkt(t + 8, Dir::In, VIP, c, FIN | ACK, sisn + 300, isn + 80),
            pkt(t + 9, Dir::Out, VIP, c, FIN | ACK, sisn + 300, isn + 80),
        ]);
    }
    if finishes {
        v.extend([
            pkt(t + 10, Dir::In, c, VIP, FIN | ACK, isn + 80, sisn + 301),
            pkt(t + 11, Dir::Out, c, VIP, FIN | ACK, isn + 80, sisn + 301),
        ]);
    } else {
        v.push(pkt(t + 1000, Dir::In, c, VIP, SYN, isn, 0));
        v.push(pkt(t + 1001, Dir::Out, c, VIP, SYN, isn, 0));
    }
    v
}

#[test]
fn forwarded_without_nat() {
    let probes = [
        probe(1, BE1, 50001, TcpResult::Connected),
        probe(1, BE2, 50002, TcpResult::Connected),
    ];
    // Replies back through the LB, closed in 10 ms: forwarding, not a proxy closing at once.
    let ev = routed_client(100, 40000, true, true);
    assert_parity("routed", &ev, &probes, &[]);
    // Even while the backends refuse the LB's own probes (they serve only the VIP), such a
    // client is not "unserved": the LB forwarded it.
    let refused = [
        probe(1, BE1, 50001, TcpResult::Refused),
        probe(1, BE2, 50002, TcpResult::Refused),
    ];
    assert_parity(
        "routed, probes refused",
        &ev,
        &refused,
        &[
            (3, "backend_refused", Some(BE1)),
            (3, "backend_refused", Some(BE2)),
        ],
    );
    // Direct server return: nothing through the LB, the client went on.
    let ev = routed_client(100, 40001, false, true);
    assert_parity("direct return", &ev, &probes, &[]);
    // Direct server return whose replies never reached the client.
    let ev = routed_client(100, 40002, false, false);
    assert_parity(
        "direct return lost",
        &ev,
        &probes,
        &[(4, "direct_return_lost", None)],
    );
}
