//! The data-path mode (`--data`): data segments of watched tuples marked through the `FLOWS`
//! map (first data byte each way, data seen again, data after the other side's FIN); without
//! the mode, data segments write nothing and touch no map.

#[allow(clippy::wildcard_imports)]
use super::*;
use lbtrace_common::data_event;

const CLIENT_PORT: u16 = 41000;
const CLIENT_ISN: u32 = 1_000;
const SERVER_ISN: u32 = 5_000;

/// A client connection to the VIP: the client's segments through `tc_ingress`, the VIP's
/// through `tc_egress` (one interface, as on the LB's client side). Returns the packet events
/// of each step.
fn connection(h: &mut Harness) -> Vec<(&'static str, Vec<Event>)> {
    let to_vip = |seq, ack, flags, opts: &[u8], payload: &[u8]| {
        let t = tcp_full(CLIENT_PORT, VIP_PORT, seq, ack, flags, opts, payload);
        eth(ETH_P_IP, &ipv4(CLIENT4, VIP4, PROTO_TCP, &t))
    };
    let to_client = |seq, ack, flags, opts: &[u8], payload: &[u8]| {
        let t = tcp_full(VIP_PORT, CLIENT_PORT, seq, ack, flags, opts, payload);
        eth(ETH_P_IP, &ipv4(VIP4, CLIENT4, PROTO_TCP, &t))
    };
    let (c1, s1) = (CLIENT_ISN + 1, SERVER_ISN + 1);
    let request = [b'G'; 100];
    // 1448 bytes and 12 of timestamps: full-size against the client's MSS of 1460.
    let big = [b'x'; 1448];
    let steps: Vec<(&'static str, Prog, Vec<u8>)> = vec![
        (
            "syn",
            Prog::TcIngress,
            to_vip(CLIENT_ISN, 0, SYN, &SYN_OPTIONS, &[]),
        ),
        (
            "syn-ack",
            Prog::TcEgress,
            to_client(SERVER_ISN, c1, SYN | ACK, &SYN_OPTIONS, &[]),
        ),
        ("ack", Prog::TcIngress, to_vip(c1, s1, ACK, &[], &[])),
        (
            "request",
            Prog::TcIngress,
            to_vip(c1, s1, PSH | ACK, &[], &request),
        ),
        (
            "reply",
            Prog::TcEgress,
            to_client(s1, c1 + 100, ACK, &TS_OPTIONS, &big),
        ),
        (
            "reply again",
            Prog::TcEgress,
            to_client(s1, c1 + 100, ACK, &TS_OPTIONS, &big),
        ),
        (
            "more reply",
            Prog::TcEgress,
            to_client(s1 + 1448, c1 + 100, PSH | ACK, &[], &request),
        ),
        (
            "client fin",
            Prog::TcIngress,
            to_vip(c1 + 100, s1 + 1548, FIN | ACK, &[], &[]),
        ),
        (
            "reply after fin",
            Prog::TcEgress,
            to_client(s1 + 1548, c1 + 101, ACK, &[], &request),
        ),
        (
            "again after fin",
            Prog::TcEgress,
            to_client(s1 + 1648, c1 + 101, ACK, &[], &request),
        ),
    ];
    steps
        .into_iter()
        .map(|(what, prog, frame)| {
            h.run(prog, &frame);
            (what, h.drain_events())
        })
        .collect()
}

fn data_events(events: &[Event]) -> Vec<&Event> {
    events.iter().filter(|e| e.kind == kind::DATA).collect()
}

#[test]
fn marks_first_bytes_retransmissions_and_data_after_fin() {
    let mut h = Harness::standard_data();
    let steps = connection(&mut h);
    let marks: Vec<(&str, Vec<u32>)> = steps
        .iter()
        .map(|(what, evs)| (*what, data_events(evs).iter().map(|e| e.reason).collect()))
        .collect();
    assert_eq!(
        marks,
        vec![
            ("syn", vec![]),
            ("syn-ack", vec![]),
            ("ack", vec![]),
            ("request", vec![data_event::FIRST_BYTE]),
            ("reply", vec![data_event::FIRST_BYTE]),
            ("reply again", vec![data_event::RETRANS]),
            ("more reply", vec![]),
            ("client fin", vec![]),
            ("reply after fin", vec![data_event::AFTER_FIN]),
            ("again after fin", vec![]),
        ]
    );
    let one = |what: &str| *data_events(&steps.iter().find(|(w, _)| *w == what).unwrap().1)[0];
    let request = one("request");
    assert_eq!(
        (
            request.sport,
            request.dport,
            request.payload_len,
            request.seq
        ),
        (CLIENT_PORT, VIP_PORT, 100, CLIENT_ISN + 1)
    );
    // The client sent first: no time since the other side's first byte.
    assert_eq!(request.location(), 0);
    let reply = one("reply");
    assert!(reply.location() > 0, "the reply's time to first byte");
    assert!(reply.location() < 10_000_000_000);
    assert!(reply.ts_ns >= request.ts_ns);
    let again = one("reply again");
    assert_eq!(
        (
            again.sport,
            again.dport,
            again.seq,
            again.payload_len,
            again.hook
        ),
        (VIP_PORT, CLIENT_PORT, SERVER_ISN + 1, 1448, hook::TC_EGRESS)
    );
    // The client's MSS (1460) less this segment's 12 bytes of options: full-size.
    assert_eq!(again.mss, 1448);
    // The control packets still give their own events, unchanged.
    let syn = &steps[0].1;
    assert_eq!(syn.len(), 1);
    assert_eq!((syn[0].kind, syn[0].mss), (kind::PACKET, 1460));
    assert_eq!(
        steps[7].1.iter().filter(|e| e.kind == kind::PACKET).count(),
        1
    );
}

#[test]
fn unwatched_data_and_pure_acks_write_nothing() {
    let mut h = Harness::standard_data();
    let payload = [0u8; 500];
    let unwatched = {
        let t = tcp_full(40000, 9999, SEQ, ACK_SEQ, ACK, &[], &payload);
        eth(ETH_P_IP, &ipv4(CLIENT4, [10, 9, 9, 9], PROTO_TCP, &t))
    };
    let before = h.counters();
    for _ in 0..3 {
        h.run(Prog::TcIngress, &unwatched);
    }
    let ack = tcp4_frame(CLIENT4, 40000, VIP4, VIP_PORT, ACK);
    h.run(Prog::TcIngress, &ack);
    assert!(h.drain_events().is_empty());
    let d = delta(&h.counters(), &before);
    assert_eq!(d[counter::PACKETS as usize], 4);
    assert_eq!(d[counter::EVENTS_EMITTED as usize], 0);
}

#[test]
fn without_the_mode_data_writes_nothing() {
    let mut h = Harness::standard();
    let steps = connection(&mut h);
    for (what, evs) in &steps {
        assert!(data_events(evs).is_empty(), "{what}: {evs:?}");
    }
    // Only the SYN, SYN-ACK and FIN.
    let n: usize = steps.iter().map(|(_, e)| e.len()).sum();
    assert_eq!(n, 3);
}
