//! Wildcard endpoints.

#[allow(clippy::wildcard_imports)]
use super::*;

#[test]
fn wildcard_endpoint_matches_any_port() {
    let endpoints = vec![
        (key4(WILD4, 0), ID_WILD4),
        (key4(WILD4, 443), ID_WILD4_443),
        (key6(WILD6, 0), ID_WILD6),
        (key4(VIP4, VIP_PORT), ID_VIP4),
    ];
    let mut h = Harness::new(&endpoints, true);
    for port in [1u16, 80, 8443, 65535] {
        let frame = tcp4_frame(CLIENT4, 40000, WILD4, port, SYN);
        let ev = pkt4(SYN, CLIENT4, 40000, WILD4, port);
        h.check(
            &format!("SYN to wildcard :{port}"),
            &frame,
            &Want::Packet(ev, ID_WILD4, stats(|s| s.syn = 1)),
        );

        let frame = tcp4_frame(WILD4, port, CLIENT4, 40000, SYN | ACK);
        let ev = pkt4(SYN | ACK, WILD4, port, CLIENT4, 40000);
        h.check(
            &format!("SYN-ACK from wildcard :{port}"),
            &frame,
            &Want::Packet(ev, ID_WILD4, stats(|s| s.syn_ack = 1)),
        );

        let frame = tcp6_frame(CLIENT6, 40000, WILD6, port, RST);
        let ev = pkt6(RST, CLIENT6, 40000, WILD6, port);
        h.check(
            &format!("IPv6 RST to wildcard :{port}"),
            &frame,
            &Want::Packet(ev, ID_WILD6, stats(|s| s.rst = 1)),
        );
    }
    // Port 0 itself.
    let frame = tcp4_frame(CLIENT4, 40000, WILD4, 0, SYN);
    let ev = pkt4(SYN, CLIENT4, 40000, WILD4, 0);
    h.check(
        "SYN to wildcard :0",
        &frame,
        &Want::Packet(ev, ID_WILD4, stats(|s| s.syn = 1)),
    );
    // An exact entry wins over the address's wildcard.
    let frame = tcp4_frame(CLIENT4, 40000, WILD4, 443, SYN);
    let ev = pkt4(SYN, CLIENT4, 40000, WILD4, 443);
    h.check(
        "SYN to wildcard address, exact port",
        &frame,
        &Want::Packet(ev, ID_WILD4_443, stats(|s| s.syn = 1)),
    );
    // The wildcard is per address: other addresses still need their port.
    h.check(
        "SYN to VIP other port",
        &tcp4_frame(CLIENT4, 40000, VIP4, 80, SYN),
        &Want::Nothing,
    );
    // ICMP errors quoting a tuple of the wildcard address match too.
    let quoted = ipv4(LB4, WILD4, PROTO_TCP, &tcp(40003, 5432, SYN));
    let frame = eth(
        ETH_P_IP,
        &ipv4(ROUTER4, LB4, PROTO_ICMP, &icmp(3, 1, 0, &quoted)),
    );
    let ev = icmp_ev(
        family::V4,
        3,
        1,
        addr4(ROUTER4),
        addr4(LB4),
        addr4(LB4),
        40003,
        addr4(WILD4),
        5432,
        SEQ,
    );
    h.check(
        "host unreachable quoting wildcard tuple",
        &frame,
        &Want::Icmp(ev, ID_WILD4),
    );
}

#[test]
fn port_zero_entry_needs_has_wildcard() {
    // With HAS_WILDCARD = 0 the programs never look port-0 entries up.
    let endpoints = vec![
        (key4(WILD4, 0), ID_WILD_NOFLAG),
        (key4(VIP4, VIP_PORT), ID_VIP4),
    ];
    let mut h = Harness::new(&endpoints, false);
    h.check(
        "SYN to port-0 address without HAS_WILDCARD",
        &tcp4_frame(CLIENT4, 40000, WILD4, 80, SYN),
        &Want::Nothing,
    );
    let frame = tcp4_frame(CLIENT4, 40000, VIP4, VIP_PORT, SYN);
    let ev = pkt4(SYN, CLIENT4, 40000, VIP4, VIP_PORT);
    h.check(
        "SYN to VIP",
        &frame,
        &Want::Packet(ev, ID_VIP4, stats(|s| s.syn = 1)),
    );
}
