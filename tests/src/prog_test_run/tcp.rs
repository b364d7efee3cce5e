//! TCP control packets of watched tuples.

#[allow(clippy::wildcard_imports)]
use super::*;

#[test]
fn syn_to_vip_v4() {
    let mut h = Harness::standard();
    // A SYN as Linux sends it: 20 bytes of options, so the data offset is 10 words.
    let syn = tcp_full(40000, VIP_PORT, 0xdead_beef, 0, SYN, &SYN_OPTIONS, &[]);
    let frame = eth(ETH_P_IP, &ipv4(CLIENT4, VIP4, PROTO_TCP, &syn));
    let ev = packet_ev(
        family::V4,
        SYN,
        addr4(CLIENT4),
        40000,
        addr4(VIP4),
        VIP_PORT,
        0xdead_beef,
        0,
        0,
    );
    // The MSS option comes first: 1460.
    let ev = Event { mss: 1460, ..ev };
    h.check(
        "SYN to VIP",
        &frame,
        &Want::Packet(ev, ID_VIP4, stats(|s| s.syn = 1)),
    );
}

#[test]
fn syn_in_padded_minimum_frame() {
    // Ethernet padding after the IP packet is not TCP payload: the IP total length says so.
    let mut h = Harness::standard();
    let frame = padded(tcp4_frame(CLIENT4, 40000, VIP4, VIP_PORT, SYN));
    assert_eq!(frame.len(), 60);
    let ev = pkt4(SYN, CLIENT4, 40000, VIP4, VIP_PORT);
    h.check(
        "padded SYN",
        &frame,
        &Want::Packet(ev, ID_VIP4, stats(|s| s.syn = 1)),
    );
}

#[test]
fn syn_from_lb_to_backend() {
    let mut h = Harness::standard();
    let frame = tcp4_frame(LB4, 40001, BACKEND4, BACKEND_PORT, SYN);
    let ev = pkt4(SYN, LB4, 40001, BACKEND4, BACKEND_PORT);
    h.check(
        "SYN LB->backend",
        &frame,
        &Want::Packet(ev, ID_BACKEND4, stats(|s| s.syn = 1)),
    );
}

#[test]
fn syn_ack_from_backend() {
    // Matched on the source: the backend's reply.
    let mut h = Harness::standard();
    let frame = tcp4_frame(BACKEND4, BACKEND_PORT, LB4, 40001, SYN | ACK);
    let ev = pkt4(SYN | ACK, BACKEND4, BACKEND_PORT, LB4, 40001);
    h.check(
        "SYN-ACK backend->LB",
        &frame,
        &Want::Packet(ev, ID_BACKEND4, stats(|s| s.syn_ack = 1)),
    );
}

#[test]
fn rst() {
    let mut h = Harness::standard();
    let frame = tcp4_frame(CLIENT4, 40000, VIP4, VIP_PORT, RST);
    let ev = pkt4(RST, CLIENT4, 40000, VIP4, VIP_PORT);
    h.check(
        "RST client->VIP",
        &frame,
        &Want::Packet(ev, ID_VIP4, stats(|s| s.rst = 1)),
    );
}

#[test]
fn rst_ack() {
    let mut h = Harness::standard();
    let frame = tcp4_frame(BACKEND4, BACKEND_PORT, LB4, 40001, RST | ACK);
    let ev = pkt4(RST | ACK, BACKEND4, BACKEND_PORT, LB4, 40001);
    h.check(
        "RST-ACK backend->LB",
        &frame,
        &Want::Packet(ev, ID_BACKEND4, stats(|s| s.rst = 1)),
    );
}

#[test]
fn fin_ack() {
    let mut h = Harness::standard();
    let frame = tcp4_frame(VIP4, VIP_PORT, CLIENT4, 40000, FIN | ACK);
    let ev = pkt4(FIN | ACK, VIP4, VIP_PORT, CLIENT4, 40000);
    h.check(
        "FIN-ACK VIP->client",
        &frame,
        &Want::Packet(ev, ID_VIP4, stats(|s| s.fin = 1)),
    );
}

#[test]
fn fin_psh_ack_with_payload() {
    let mut h = Harness::standard();
    let payload: Vec<u8> = (0..=99u8).collect();
    // Timestamps make the data offset 8 words: payload_len must use it.
    let seg = tcp_full(
        40000,
        VIP_PORT,
        1000,
        2000,
        FIN | PSH | ACK,
        &TS_OPTIONS,
        &payload,
    );
    let frame = eth(ETH_P_IP, &ipv4(CLIENT4, VIP4, PROTO_TCP, &seg));
    let ev = packet_ev(
        family::V4,
        FIN | PSH | ACK,
        addr4(CLIENT4),
        40000,
        addr4(VIP4),
        VIP_PORT,
        1000,
        2000,
        100,
    );
    h.check(
        "FIN+PSH+ACK with 100 bytes",
        &frame,
        &Want::Packet(ev, ID_VIP4, stats(|s| s.fin = 1)),
    );

    // The same over IPv6.
    let frame = eth(ETH_P_IPV6, &ipv6(CLIENT6, VIP6, PROTO_TCP, &seg));
    let ev = packet_ev(
        family::V6,
        FIN | PSH | ACK,
        CLIENT6,
        40000,
        VIP6,
        VIP_PORT,
        1000,
        2000,
        100,
    );
    h.check(
        "IPv6 FIN+PSH+ACK with 100 bytes",
        &frame,
        &Want::Packet(ev, ID_VIP6, stats(|s| s.fin = 1)),
    );
}

#[test]
fn syn_with_data() {
    // TCP Fast Open: a SYN carrying data.
    let mut h = Harness::standard();
    let seg = tcp_full(
        40000,
        VIP_PORT,
        SEQ,
        0,
        SYN,
        &SYN_OPTIONS,
        b"GET / HTTP/1.1\r\n",
    );
    let frame = eth(ETH_P_IP, &ipv4(CLIENT4, VIP4, PROTO_TCP, &seg));
    let ev = packet_ev(
        family::V4,
        SYN,
        addr4(CLIENT4),
        40000,
        addr4(VIP4),
        VIP_PORT,
        SEQ,
        0,
        16,
    );
    let ev = Event { mss: 1460, ..ev };
    h.check(
        "SYN with data",
        &frame,
        &Want::Packet(ev, ID_VIP4, stats(|s| s.syn = 1)),
    );
}

#[test]
fn all_flags_set() {
    // SYN|ACK|RST|FIN|PSH|URG|ECE|CWR: every stat the flags imply is counted once.
    let mut h = Harness::standard();
    let frame = tcp4_frame(CLIENT4, 40000, VIP4, VIP_PORT, 0xff);
    let ev = pkt4(0xff, CLIENT4, 40000, VIP4, VIP_PORT);
    let sd = stats(|s| {
        s.syn_ack = 1;
        s.rst = 1;
        s.fin = 1;
    });
    h.check("christmas tree", &frame, &Want::Packet(ev, ID_VIP4, sd));
}

#[test]
fn destination_endpoint_wins_over_source() {
    // Both ends watched: the packet is counted for the destination's endpoint.
    let mut h = Harness::standard();
    let frame = tcp4_frame(VIP4, VIP_PORT, BACKEND4, BACKEND_PORT, SYN);
    let ev = pkt4(SYN, VIP4, VIP_PORT, BACKEND4, BACKEND_PORT);
    h.check(
        "SYN VIP->backend",
        &frame,
        &Want::Packet(ev, ID_BACKEND4, stats(|s| s.syn = 1)),
    );
}

#[test]
fn ipv4_total_length_shorter_than_headers() {
    // A lying total length cannot make payload_len wrap: it saturates at 0.
    let mut h = Harness::standard();
    let seg = tcp_full(40000, VIP_PORT, SEQ, 0, SYN, &SYN_OPTIONS, &[]);
    for tot in [0u16, 19, 20, 40, 59] {
        let frame = eth(
            ETH_P_IP,
            &ipv4_full(CLIENT4, VIP4, PROTO_TCP, &[], IP_DF, Some(tot), &seg),
        );
        let ev = Event {
            mss: 1460,
            ..pkt4(SYN, CLIENT4, 40000, VIP4, VIP_PORT)
        };
        h.check(
            &format!("SYN with tot_len {tot}"),
            &frame,
            &Want::Packet(ev, ID_VIP4, stats(|s| s.syn = 1)),
        );
    }
}

#[test]
fn first_fragment_is_parsed() {
    // MF set, offset 0: the first fragment holds the TCP header.
    let mut h = Harness::standard();
    let seg = tcp_full(40000, VIP_PORT, SEQ, 0, SYN, &[], &[0u8; 64]);
    let frame = eth(
        ETH_P_IP,
        &ipv4_full(CLIENT4, VIP4, PROTO_TCP, &[], IP_MF, None, &seg),
    );
    let ev = packet_ev(
        family::V4,
        SYN,
        addr4(CLIENT4),
        40000,
        addr4(VIP4),
        VIP_PORT,
        SEQ,
        0,
        64,
    );
    h.check(
        "first fragment SYN",
        &frame,
        &Want::Packet(ev, ID_VIP4, stats(|s| s.syn = 1)),
    );
}

/// A SYN or SYN-ACK's options give the event its `mss`; nothing else does.
#[test]
fn mss_of_syn_and_syn_ack() {
    let mut h = Harness::standard();
    // (what, flags, options, the mss the event must carry)
    let cases: [(&str, u8, &[u8], u16); 9] = [
        ("SYN without options", SYN, &[], 0),
        ("SYN, MSS first", SYN, &SYN_OPTIONS, 1460),
        // Two NOPs, then MSS 1220.
        (
            "SYN-ACK, MSS after NOPs",
            SYN | ACK,
            &[1, 1, 2, 4, 0x04, 0xc4, 0, 0],
            1220,
        ),
        // Window scale (3 bytes) and a NOP before it.
        (
            "SYN, MSS after wscale",
            SYN,
            &[3, 3, 7, 1, 2, 4, 0x05, 0x78],
            1400,
        ),
        // Past the walk: the MSS after four other options is not looked for.
        ("SYN, MSS fifth", SYN, &[1, 1, 1, 1, 2, 4, 0x05, 0xb4], 0),
        (
            "SYN, end of options first",
            SYN,
            &[0, 0, 0, 0, 2, 4, 0x05, 0xb4],
            0,
        ),
        ("SYN, MSS of a wrong length", SYN, &[2, 3, 0x05, 0xb4], 0),
        (
            "SYN, zero-length option",
            SYN,
            &[8, 0, 2, 4, 0x05, 0xb4, 0, 0],
            0,
        ),
        // Not a SYN: its options are never read.
        ("FIN-ACK with an MSS option", FIN | ACK, &SYN_OPTIONS, 0),
    ];
    for (what, flags, options, mss) in cases {
        let ack = if flags & ACK != 0 { ACK_SEQ } else { 0 };
        let seg = tcp_full(40000, VIP_PORT, SEQ, ack, flags, options, &[]);
        let frame = eth(ETH_P_IP, &ipv4(CLIENT4, VIP4, PROTO_TCP, &seg));
        let ev = Event {
            mss,
            ..pkt4(flags, CLIENT4, 40000, VIP4, VIP_PORT)
        };
        let sd = stats(|s| {
            if flags & SYN == 0 {
                s.fin = 1;
            } else if flags & ACK != 0 {
                s.syn_ack = 1;
            } else {
                s.syn = 1;
            }
        });
        h.check(what, &frame, &Want::Packet(ev, ID_VIP4, sd));
    }
    // IPv6: the same walk after the fixed header.
    let seg = tcp_full(
        40000,
        VIP_PORT,
        SEQ,
        0,
        SYN,
        &[2, 4, 0x05, 0xa0, 1, 1, 4, 2],
        &[],
    );
    let frame = eth(ETH_P_IPV6, &ipv6(CLIENT6, VIP6, PROTO_TCP, &seg));
    let ev = Event {
        mss: 1440,
        ..pkt6(SYN, CLIENT6, 40000, VIP6, VIP_PORT)
    };
    h.check(
        "IPv6 SYN, MSS 1440",
        &frame,
        &Want::Packet(ev, ID_VIP6, stats(|s| s.syn = 1)),
    );
}
