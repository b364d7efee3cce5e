//! ICMP errors.

#[allow(clippy::wildcard_imports)]
use super::*;

#[test]
fn icmp4_port_unreachable() {
    let mut h = Harness::standard();
    // The backend's host answers the LB's SYN with port unreachable, quoting the whole header.
    let frame = eth(
        ETH_P_IP,
        &ipv4(BACKEND4, LB4, PROTO_ICMP, &icmp(3, 3, 0, &quoted_syn4(40))),
    );
    h.check(
        "port unreachable (full quote)",
        &frame,
        &Want::Icmp(icmp4_ev(3, 3, BACKEND4), ID_BACKEND4),
    );
    // RFC 792 minimum: 8 bytes of the quoted TCP header.
    let frame = eth(
        ETH_P_IP,
        &ipv4(BACKEND4, LB4, PROTO_ICMP, &icmp(3, 3, 0, &quoted_syn4(8))),
    );
    h.check(
        "port unreachable (8-byte quote)",
        &frame,
        &Want::Icmp(icmp4_ev(3, 3, BACKEND4), ID_BACKEND4),
    );
    // Behind two VLAN tags.
    let frame = eth_vlan(
        &[(ETH_P_8021AD, 1), (ETH_P_8021Q, 2)],
        ETH_P_IP,
        &ipv4(BACKEND4, LB4, PROTO_ICMP, &icmp(3, 3, 0, &quoted_syn4(8))),
    );
    h.check(
        "port unreachable in QinQ",
        &frame,
        &Want::Icmp(icmp4_ev(3, 3, BACKEND4), ID_BACKEND4),
    );
}

#[test]
fn icmp4_other_unreachables_and_options() {
    let mut h = Harness::standard();
    // Fragmentation needed, MTU 1400, from a router; outer and quoted IP headers with options.
    let opts = ipv4_options(8);
    let mut seg = tcp_full(40002, BACKEND_PORT, 0x0bad_cafe, 0, SYN, &[], &[]);
    seg.truncate(8);
    let quoted = ipv4_full(LB4, BACKEND4, PROTO_TCP, &opts, IP_DF, Some(48), &seg);
    let frame = eth(
        ETH_P_IP,
        &ipv4_full(
            ROUTER4,
            LB4,
            PROTO_ICMP,
            &ipv4_options(40),
            0,
            None,
            &icmp(3, 4, 1400, &quoted),
        ),
    );
    h.check(
        "frag needed, options in both headers",
        &frame,
        &Want::Icmp(icmp4_ev(3, 4, ROUTER4), ID_BACKEND4),
    );
    // Host unreachable going the other way: the quoted packet is the backend's SYN-ACK.
    let mut seg = tcp_full(BACKEND_PORT, 40002, 0x0bad_cafe, 77, SYN | ACK, &[], &[]);
    seg.truncate(8);
    let quoted = ipv4_full(BACKEND4, LB4, PROTO_TCP, &[], IP_DF, Some(40), &seg);
    let frame = eth(
        ETH_P_IP,
        &ipv4(ROUTER4, BACKEND4, PROTO_ICMP, &icmp(3, 1, 0, &quoted)),
    );
    let ev = icmp_ev(
        family::V4,
        3,
        1,
        addr4(ROUTER4),
        addr4(BACKEND4),
        addr4(BACKEND4),
        BACKEND_PORT,
        addr4(LB4),
        40002,
        0x0bad_cafe,
    );
    h.check(
        "host unreachable quoting SYN-ACK",
        &frame,
        &Want::Icmp(ev, ID_BACKEND4),
    );
}

#[test]
fn icmp4_time_exceeded() {
    let mut h = Harness::standard();
    let frame = eth(
        ETH_P_IP,
        &ipv4(ROUTER4, LB4, PROTO_ICMP, &icmp(11, 0, 0, &quoted_syn4(20))),
    );
    h.check(
        "time exceeded in transit",
        &frame,
        &Want::Icmp(icmp4_ev(11, 0, ROUTER4), ID_BACKEND4),
    );
    let frame = eth(
        ETH_P_IP,
        &ipv4(ROUTER4, LB4, PROTO_ICMP, &icmp(11, 1, 0, &quoted_syn4(8))),
    );
    h.check(
        "reassembly time exceeded",
        &frame,
        &Want::Icmp(icmp4_ev(11, 1, ROUTER4), ID_BACKEND4),
    );
}

#[test]
fn icmp6_errors() {
    let mut h = Harness::standard();
    let frame = eth(
        ETH_P_IPV6,
        &ipv6(
            BACKEND6,
            LB6,
            PROTO_ICMPV6,
            &icmp(1, 4, 0, &quoted_syn6(40)),
        ),
    );
    h.check(
        "ICMPv6 port unreachable",
        &frame,
        &Want::Icmp(icmp6_ev(1, 4, BACKEND6), ID_BACKEND6),
    );
    let frame = eth(
        ETH_P_IPV6,
        &ipv6(ROUTER6, LB6, PROTO_ICMPV6, &icmp(1, 3, 0, &quoted_syn6(8))),
    );
    h.check(
        "ICMPv6 address unreachable",
        &frame,
        &Want::Icmp(icmp6_ev(1, 3, ROUTER6), ID_BACKEND6),
    );
    let frame = eth(
        ETH_P_IPV6,
        &ipv6(
            ROUTER6,
            LB6,
            PROTO_ICMPV6,
            &icmp(2, 0, 1280, &quoted_syn6(20)),
        ),
    );
    h.check(
        "ICMPv6 packet too big",
        &frame,
        &Want::Icmp(icmp6_ev(2, 0, ROUTER6), ID_BACKEND6),
    );
    let frame = eth(
        ETH_P_IPV6,
        &ipv6(ROUTER6, LB6, PROTO_ICMPV6, &icmp(3, 0, 0, &quoted_syn6(8))),
    );
    h.check(
        "ICMPv6 time exceeded",
        &frame,
        &Want::Icmp(icmp6_ev(3, 0, ROUTER6), ID_BACKEND6),
    );
    let frame = eth_vlan(
        &[(ETH_P_8021Q, 9)],
        ETH_P_IPV6,
        &ipv6(
            ROUTER6,
            LB6,
            PROTO_ICMPV6,
            &icmp(2, 0, 1400, &quoted_syn6(8)),
        ),
    );
    h.check(
        "ICMPv6 packet too big in a VLAN",
        &frame,
        &Want::Icmp(icmp6_ev(2, 0, ROUTER6), ID_BACKEND6),
    );
}

#[test]
fn icmp_non_errors_give_no_record() {
    let mut h = Harness::standard();
    // Echo request/reply whose data happens to look like a quoted SYN.
    for ty in [8u8, 0] {
        let frame = eth(
            ETH_P_IP,
            &ipv4(
                CLIENT4,
                VIP4,
                PROTO_ICMP,
                &icmp(ty, 0, 0x0001_0001, &quoted_syn4(20)),
            ),
        );
        h.check(&format!("ICMP type {ty}"), &frame, &Want::Nothing);
    }
    for ty in [128u8, 129] {
        let frame = eth(
            ETH_P_IPV6,
            &ipv6(
                CLIENT6,
                VIP6,
                PROTO_ICMPV6,
                &icmp(ty, 0, 0x0001_0001, &quoted_syn6(20)),
            ),
        );
        h.check(&format!("ICMPv6 type {ty}"), &frame, &Want::Nothing);
    }
    // Error types the programs do not follow: redirect, parameter problem (both families).
    let frame = eth(
        ETH_P_IP,
        &ipv4(ROUTER4, LB4, PROTO_ICMP, &icmp(5, 1, 0, &quoted_syn4(8))),
    );
    h.check("ICMP redirect", &frame, &Want::Nothing);
    let frame = eth(
        ETH_P_IP,
        &ipv4(ROUTER4, LB4, PROTO_ICMP, &icmp(12, 0, 0, &quoted_syn4(8))),
    );
    h.check("ICMP parameter problem", &frame, &Want::Nothing);
    let frame = eth(
        ETH_P_IPV6,
        &ipv6(ROUTER6, LB6, PROTO_ICMPV6, &icmp(4, 0, 0, &quoted_syn6(8))),
    );
    h.check("ICMPv6 parameter problem", &frame, &Want::Nothing);
    // ICMPv4 inside IPv6 and ICMPv6 inside IPv4 are not ICMP errors.
    let frame = eth(
        ETH_P_IPV6,
        &ipv6(ROUTER6, LB6, PROTO_ICMP, &icmp(3, 3, 0, &quoted_syn6(8))),
    );
    h.check("protocol 1 over IPv6", &frame, &Want::Nothing);
    let frame = eth(
        ETH_P_IP,
        &ipv4(ROUTER4, LB4, PROTO_ICMPV6, &icmp(1, 4, 0, &quoted_syn4(8))),
    );
    h.check("protocol 58 over IPv4", &frame, &Want::Nothing);
}

#[test]
fn icmp_errors_not_quoting_watched_tcp_give_no_record() {
    let mut h = Harness::standard();
    // Quoting UDP to the backend's address and port.
    let quoted = ipv4(LB4, BACKEND4, PROTO_UDP, &udp(40002, BACKEND_PORT, b"dns?"));
    let frame = eth(
        ETH_P_IP,
        &ipv4(BACKEND4, LB4, PROTO_ICMP, &icmp(3, 3, 0, &quoted)),
    );
    h.check("port unreachable quoting UDP", &frame, &Want::Nothing);
    let quoted = ipv6(LB6, BACKEND6, PROTO_UDP, &udp(40002, BACKEND_PORT, b"dns?"));
    let frame = eth(
        ETH_P_IPV6,
        &ipv6(BACKEND6, LB6, PROTO_ICMPV6, &icmp(1, 4, 0, &quoted)),
    );
    h.check(
        "ICMPv6 port unreachable quoting UDP",
        &frame,
        &Want::Nothing,
    );
    // Quoting ICMP.
    let quoted = ipv4(LB4, BACKEND4, PROTO_ICMP, &icmp(8, 0, 1, &[]));
    let frame = eth(
        ETH_P_IP,
        &ipv4(ROUTER4, LB4, PROTO_ICMP, &icmp(11, 0, 0, &quoted)),
    );
    h.check("time exceeded quoting echo", &frame, &Want::Nothing);
    // Quoting TCP of an unwatched tuple.
    let mut seg = tcp(40002, 9999, SYN);
    seg.truncate(8);
    let quoted = ipv4_full(LB4, BACKEND4, PROTO_TCP, &[], IP_DF, Some(40), &seg);
    let frame = eth(
        ETH_P_IP,
        &ipv4(BACKEND4, LB4, PROTO_ICMP, &icmp(3, 3, 0, &quoted)),
    );
    h.check(
        "port unreachable quoting unwatched TCP",
        &frame,
        &Want::Nothing,
    );
    // Quoting a later fragment of a watched tuple (no TCP header in it).
    let quoted = ipv4_full(
        LB4,
        BACKEND4,
        PROTO_TCP,
        &[],
        185,
        None,
        &tcp(40002, BACKEND_PORT, SYN)[..8],
    );
    let frame = eth(
        ETH_P_IP,
        &ipv4(ROUTER4, LB4, PROTO_ICMP, &icmp(11, 1, 0, &quoted)),
    );
    h.check(
        "time exceeded quoting a later fragment",
        &frame,
        &Want::Nothing,
    );
}
