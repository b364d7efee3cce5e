//! Packets that must produce nothing.

#[allow(clippy::wildcard_imports)]
use super::*;

#[test]
fn pure_ack_and_data_give_no_record() {
    let mut h = Harness::standard();
    h.check(
        "pure ACK",
        &tcp4_frame(CLIENT4, 40000, VIP4, VIP_PORT, ACK),
        &Want::Nothing,
    );
    let seg = tcp_full(
        40000,
        VIP_PORT,
        SEQ,
        ACK_SEQ,
        PSH | ACK,
        &TS_OPTIONS,
        &[0x55; 500],
    );
    h.check(
        "data",
        &eth(ETH_P_IP, &ipv4(CLIENT4, VIP4, PROTO_TCP, &seg)),
        &Want::Nothing,
    );
    h.check(
        "no flags",
        &tcp4_frame(BACKEND4, BACKEND_PORT, LB4, 40001, 0),
        &Want::Nothing,
    );
    h.check(
        "URG|ECE|CWR|PSH|ACK",
        &tcp4_frame(CLIENT4, 40000, VIP4, VIP_PORT, 0xf8),
        &Want::Nothing,
    );
    h.check(
        "IPv6 pure ACK",
        &tcp6_frame(CLIENT6, 40000, VIP6, VIP_PORT, ACK),
        &Want::Nothing,
    );
    let frame = eth(
        ETH_P_IPV6,
        &ipv6(
            BACKEND6,
            LB6,
            PROTO_TCP,
            &tcp_full(BACKEND_PORT, 40001, 1, 2, PSH | ACK, &[], &[1; 1000]),
        ),
    );
    h.check("IPv6 data", &frame, &Want::Nothing);
}

#[test]
fn udp_gives_no_record() {
    let mut h = Harness::standard();
    let frame = eth(
        ETH_P_IP,
        &ipv4(CLIENT4, VIP4, PROTO_UDP, &udp(40000, VIP_PORT, b"quic")),
    );
    h.check("UDP to VIP:443", &frame, &Want::Nothing);
    // UDP bytes that would read as a SYN if mistaken for TCP.
    let mut fake = tcp(40000, VIP_PORT, SYN);
    fake[4..6].copy_from_slice(&20u16.to_be_bytes());
    let frame = eth(ETH_P_IP, &ipv4(CLIENT4, VIP4, PROTO_UDP, &fake));
    h.check("UDP shaped like a SYN", &frame, &Want::Nothing);
    let frame = eth(ETH_P_IPV6, &ipv6(CLIENT6, VIP6, PROTO_UDP, &fake));
    h.check("IPv6 UDP shaped like a SYN", &frame, &Want::Nothing);
    // A truncated UDP header is not a parse error: UDP is never parsed.
    let frame = eth(ETH_P_IP, &ipv4(CLIENT4, VIP4, PROTO_UDP, &[0x9c]));
    h.check("1-byte UDP", &frame, &Want::Nothing);
}

#[test]
fn non_ip_gives_no_record() {
    let mut h = Harness::standard();
    // ARP request who-has 10.0.0.10 tell 192.0.2.7.
    let mut arp = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1];
    arp.extend_from_slice(&SRC_MAC);
    arp.extend_from_slice(&CLIENT4);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&VIP4);
    h.check("ARP", &padded(eth(ETH_P_ARP, &arp)), &Want::Nothing);
    h.check(
        "ARP in a VLAN",
        &eth_vlan(&[(ETH_P_8021Q, 5)], ETH_P_ARP, &arp),
        &Want::Nothing,
    );
    h.check(
        "LLDP",
        &padded(eth(ETH_P_LLDP, &[2, 7, 4, 0, 0, 0, 0, 0, 1])),
        &Want::Nothing,
    );
    // An 802.3 length field where the EtherType would be, followed by IPv4 SYN bytes.
    let l3 = ipv4(CLIENT4, VIP4, PROTO_TCP, &tcp(40000, VIP_PORT, SYN));
    h.check(
        "802.3 length frame",
        &eth(u16::try_from(l3.len()).unwrap(), &l3),
        &Want::Nothing,
    );
    // Exactly an Ethernet header, nothing else.
    h.check(
        "bare Ethernet header (ARP)",
        &eth(ETH_P_ARP, &[]),
        &Want::Nothing,
    );
}

#[test]
fn non_first_fragment_gives_no_record() {
    let mut h = Harness::standard();
    // Bytes that would read as a SYN to the VIP, but at fragment offset 185 (1480 bytes).
    let seg = tcp(40000, VIP_PORT, SYN);
    for frag in [185u16, IP_MF | 185, 1, 0x1fff] {
        let frame = eth(
            ETH_P_IP,
            &ipv4_full(CLIENT4, VIP4, PROTO_TCP, &[], frag, None, &seg),
        );
        h.check(
            &format!("fragment field {frag:#06x}"),
            &frame,
            &Want::Nothing,
        );
    }
    // A later fragment too short to hold a TCP header is not a parse error either.
    let frame = eth(
        ETH_P_IP,
        &ipv4_full(CLIENT4, VIP4, PROTO_TCP, &[], 185, None, &[1, 2, 3]),
    );
    h.check("short later fragment", &frame, &Want::Nothing);
}

#[test]
fn unwatched_tuples_give_no_record() {
    let mut h = Harness::standard();
    h.check(
        "SYN to unwatched address",
        &tcp4_frame(CLIENT4, 40000, UNWATCHED4, VIP_PORT, SYN),
        &Want::Nothing,
    );
    h.check(
        "SYN to VIP, other port",
        &tcp4_frame(CLIENT4, 40000, VIP4, VIP_PORT + 1, SYN),
        &Want::Nothing,
    );
    h.check(
        "SYN-ACK from backend, other port",
        &tcp4_frame(BACKEND4, 9090, LB4, 40001, SYN | ACK),
        &Want::Nothing,
    );
    h.check(
        "RST between unwatched",
        &tcp4_frame(CLIENT4, 40000, UNWATCHED4, 80, RST),
        &Want::Nothing,
    );
    // Port 443 from the client side is not the VIP's port 443.
    h.check(
        "SYN from client port 443",
        &tcp4_frame(CLIENT4, VIP_PORT, UNWATCHED4, 40000, SYN),
        &Want::Nothing,
    );
    h.check(
        "IPv6 SYN unwatched",
        &tcp6_frame(CLIENT6, 40000, ROUTER6, VIP_PORT, SYN),
        &Want::Nothing,
    );
}
