//! IPv6, VLANs, IPv4 options.

#[allow(clippy::wildcard_imports)]
use super::*;

#[test]
fn ipv6_syn() {
    let mut h = Harness::standard();
    let frame = tcp6_frame(CLIENT6, 40000, VIP6, VIP_PORT, SYN);
    let ev = pkt6(SYN, CLIENT6, 40000, VIP6, VIP_PORT);
    h.check(
        "IPv6 SYN",
        &frame,
        &Want::Packet(ev, ID_VIP6, stats(|s| s.syn = 1)),
    );

    let frame = tcp6_frame(BACKEND6, BACKEND_PORT, LB6, 40001, SYN | ACK);
    let ev = pkt6(SYN | ACK, BACKEND6, BACKEND_PORT, LB6, 40001);
    h.check(
        "IPv6 SYN-ACK",
        &frame,
        &Want::Packet(ev, ID_BACKEND6, stats(|s| s.syn_ack = 1)),
    );

    let frame = tcp6_frame(LB6, 40001, BACKEND6, BACKEND_PORT, RST | ACK);
    let ev = pkt6(RST | ACK, LB6, 40001, BACKEND6, BACKEND_PORT);
    h.check(
        "IPv6 RST-ACK",
        &frame,
        &Want::Packet(ev, ID_BACKEND6, stats(|s| s.rst = 1)),
    );
}

#[test]
fn ipv6_family_is_part_of_the_key() {
    // An IPv6 packet whose addresses start with a watched IPv4 address does not match it, nor does
    // an IPv4 packet to the first 4 bytes of a watched IPv6 address.
    let mut h = Harness::standard();
    let frame = tcp6_frame(CLIENT6, 40000, addr4(VIP4), VIP_PORT, SYN);
    h.check("IPv6 SYN to v4-looking address", &frame, &Want::Nothing);
    let vip6_head: [u8; 4] = VIP6[..4].try_into().unwrap();
    let frame = tcp4_frame(CLIENT4, 40000, vip6_head, VIP_PORT, SYN);
    h.check("IPv4 SYN to v6 prefix", &frame, &Want::Nothing);
}

#[test]
fn ipv6_extension_headers_are_not_followed() {
    // Documented limitation: TCP must follow the fixed header. A hop-by-hop header in front of the
    // SYN hides it (no record, not a parse error either).
    let mut h = Harness::standard();
    let mut l4 = vec![PROTO_TCP, 0, 1, 4, 0, 0, 0, 0]; // Hop-by-Hop: next TCP, PadN
    l4.extend_from_slice(&tcp(40000, VIP_PORT, SYN));
    let frame = eth(ETH_P_IPV6, &ipv6(CLIENT6, VIP6, PROTO_HOPOPTS, &l4));
    h.check("IPv6 SYN behind hop-by-hop", &frame, &Want::Nothing);
}

#[test]
fn one_vlan_tag() {
    let mut h = Harness::standard();
    let l3 = ipv4(CLIENT4, VIP4, PROTO_TCP, &tcp(40000, VIP_PORT, SYN));
    let frame = eth_vlan(&[(ETH_P_8021Q, 100)], ETH_P_IP, &l3);
    let ev = pkt4(SYN, CLIENT4, 40000, VIP4, VIP_PORT);
    h.check(
        "802.1Q IPv4 SYN",
        &frame,
        &Want::Packet(ev, ID_VIP4, stats(|s| s.syn = 1)),
    );

    let l3 = ipv6(CLIENT6, VIP6, PROTO_TCP, &tcp(40000, VIP_PORT, SYN));
    let frame = eth_vlan(&[(ETH_P_8021Q, 0x2064)], ETH_P_IPV6, &l3);
    let ev = pkt6(SYN, CLIENT6, 40000, VIP6, VIP_PORT);
    h.check(
        "802.1Q IPv6 SYN",
        &frame,
        &Want::Packet(ev, ID_VIP6, stats(|s| s.syn = 1)),
    );

    // A lone 802.1ad tag is accepted too.
    let l3 = ipv4(
        BACKEND4,
        LB4,
        PROTO_TCP,
        &tcp(BACKEND_PORT, 40001, FIN | ACK),
    );
    let frame = eth_vlan(&[(ETH_P_8021AD, 7)], ETH_P_IP, &l3);
    let ev = pkt4(FIN | ACK, BACKEND4, BACKEND_PORT, LB4, 40001);
    h.check(
        "802.1ad IPv4 FIN-ACK",
        &frame,
        &Want::Packet(ev, ID_BACKEND4, stats(|s| s.fin = 1)),
    );
}

#[test]
fn two_vlan_tags() {
    let mut h = Harness::standard();
    let l3 = ipv4(CLIENT4, VIP4, PROTO_TCP, &tcp(40000, VIP_PORT, SYN));
    let frame = eth_vlan(&[(ETH_P_8021AD, 10), (ETH_P_8021Q, 200)], ETH_P_IP, &l3);
    let ev = pkt4(SYN, CLIENT4, 40000, VIP4, VIP_PORT);
    h.check(
        "QinQ (88a8, 8100) IPv4 SYN",
        &frame,
        &Want::Packet(ev, ID_VIP4, stats(|s| s.syn = 1)),
    );

    let l3 = ipv6(
        BACKEND6,
        LB6,
        PROTO_TCP,
        &tcp(BACKEND_PORT, 40001, SYN | ACK),
    );
    let frame = eth_vlan(&[(ETH_P_8021AD, 10), (ETH_P_8021Q, 200)], ETH_P_IPV6, &l3);
    let ev = pkt6(SYN | ACK, BACKEND6, BACKEND_PORT, LB6, 40001);
    h.check(
        "QinQ (88a8, 8100) IPv6 SYN-ACK",
        &frame,
        &Want::Packet(ev, ID_BACKEND6, stats(|s| s.syn_ack = 1)),
    );

    // Old-style double 802.1Q.
    let l3 = ipv4(CLIENT4, VIP4, PROTO_TCP, &tcp(40000, VIP_PORT, RST));
    let frame = eth_vlan(&[(ETH_P_8021Q, 10), (ETH_P_8021Q, 200)], ETH_P_IP, &l3);
    let ev = pkt4(RST, CLIENT4, 40000, VIP4, VIP_PORT);
    h.check(
        "(8100, 8100) IPv4 RST",
        &frame,
        &Want::Packet(ev, ID_VIP4, stats(|s| s.rst = 1)),
    );
}

#[test]
fn three_vlan_tags_are_not_followed() {
    // Documented limitation: two tags at most; behind a third the EtherType is 0x8100, not IP.
    let mut h = Harness::standard();
    let l3 = ipv4(CLIENT4, VIP4, PROTO_TCP, &tcp(40000, VIP_PORT, SYN));
    let frame = eth_vlan(
        &[(ETH_P_8021AD, 1), (ETH_P_8021Q, 2), (ETH_P_8021Q, 3)],
        ETH_P_IP,
        &l3,
    );
    h.check("three tags", &frame, &Want::Nothing);
}

#[test]
fn ipv4_with_options() {
    let mut h = Harness::standard();
    for ihl in 6..=15usize {
        let opts = ipv4_options((ihl - 5) * 4);
        let seg = tcp_full(40000 + ihl as u16, VIP_PORT, SEQ, 0, SYN, &[], b"xy");
        let frame = eth(
            ETH_P_IP,
            &ipv4_full(CLIENT4, VIP4, PROTO_TCP, &opts, IP_DF, None, &seg),
        );
        assert_eq!(frame[ETH_HLEN] & 0x0f, ihl as u8);
        let ev = packet_ev(
            family::V4,
            SYN,
            addr4(CLIENT4),
            40000 + ihl as u16,
            addr4(VIP4),
            VIP_PORT,
            SEQ,
            0,
            2,
        );
        h.check(
            &format!("SYN with IHL {ihl}"),
            &frame,
            &Want::Packet(ev, ID_VIP4, stats(|s| s.syn = 1)),
        );

        // And behind two VLAN tags.
        let frame = eth_vlan(
            &[(ETH_P_8021AD, 1), (ETH_P_8021Q, 2)],
            ETH_P_IP,
            &ipv4_full(
                BACKEND4,
                LB4,
                PROTO_TCP,
                &opts,
                IP_DF,
                None,
                &tcp(BACKEND_PORT, 40001, SYN | ACK),
            ),
        );
        let ev = pkt4(SYN | ACK, BACKEND4, BACKEND_PORT, LB4, 40001);
        h.check(
            &format!("QinQ SYN-ACK with IHL {ihl}"),
            &frame,
            &Want::Packet(ev, ID_BACKEND4, stats(|s| s.syn_ack = 1)),
        );
    }
}
