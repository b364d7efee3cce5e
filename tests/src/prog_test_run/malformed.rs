//! Truncated and malformed frames.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Runs every prefix of `frame` (0..len bytes) through every program. Prefixes the kernel refuses
/// ([`Harness::kernel_refuses`]) must fail with EINVAL without counting anything; the others must
/// pass, unmodified, write no record, and count a parse error exactly when `is_error(len)` says so.
fn check_prefixes(h: &mut Harness, what: &str, frame: &[u8], is_error: impl Fn(usize) -> bool) {
    for len in 0..frame.len() {
        let want = if is_error(len) {
            Want::ParseError
        } else {
            Want::Nothing
        };
        h.check(&format!("{what} cut to {len}"), &frame[..len], &want);
    }
}

#[test]
fn truncated_ipv4_syn() {
    let mut h = Harness::standard();
    // 14 Ethernet + 20 IP + 20 TCP: any cut from 14 up is inside the IP or TCP header.
    let frame = tcp4_frame(CLIENT4, 40000, VIP4, VIP_PORT, SYN);
    check_prefixes(&mut h, "IPv4 SYN", &frame, |_| true);
    // A cut pure ACK is a parse error as well: the TCP header is read before its flags.
    let frame = tcp4_frame(CLIENT4, 40000, VIP4, VIP_PORT, ACK);
    check_prefixes(&mut h, "IPv4 ACK", &frame, |_| true);
    // Unwatched too: the header has to be read before the lookup.
    let frame = tcp4_frame(CLIENT4, 40000, UNWATCHED4, 80, SYN);
    check_prefixes(&mut h, "unwatched IPv4 SYN", &frame, |_| true);
}

#[test]
fn truncated_ipv4_with_options() {
    let mut h = Harness::standard();
    // IHL 15: the TCP header starts at 74; every cut below 94 is an error.
    let opts = ipv4_options(40);
    let frame = eth(
        ETH_P_IP,
        &ipv4_full(
            CLIENT4,
            VIP4,
            PROTO_TCP,
            &opts,
            IP_DF,
            None,
            &tcp(40000, VIP_PORT, SYN),
        ),
    );
    assert_eq!(frame.len(), 94);
    check_prefixes(&mut h, "IPv4 IHL 15 SYN", &frame, |_| true);
}

#[test]
fn truncated_tcp_options_still_give_the_record() {
    // Only the 20-byte fixed TCP header is needed: a SYN whose options are cut off still yields
    // its record; payload_len comes from the IP header (so it is 0 here, not negative). The MSS
    // (the first option, bytes 54..58) is in it only when the frame holds all of it.
    let mut h = Harness::standard();
    let frame = eth(
        ETH_P_IP,
        &ipv4(
            CLIENT4,
            VIP4,
            PROTO_TCP,
            &tcp_full(40000, VIP_PORT, SEQ, 0, SYN, &SYN_OPTIONS, &[]),
        ),
    );
    assert_eq!(frame.len(), 74);
    for len in 54..74 {
        let ev = Event {
            mss: if len >= 58 { 1460 } else { 0 },
            ..pkt4(SYN, CLIENT4, 40000, VIP4, VIP_PORT)
        };
        h.check(
            &format!("SYN options cut to {len}"),
            &frame[..len],
            &Want::Packet(ev, ID_VIP4, stats(|s| s.syn = 1)),
        );
    }
}

#[test]
fn truncated_ipv6_syn() {
    let mut h = Harness::standard();
    // 14 + 40 + 20.
    let frame = tcp6_frame(CLIENT6, 40000, VIP6, VIP_PORT, SYN);
    check_prefixes(&mut h, "IPv6 SYN", &frame, |_| true);
}

#[test]
fn truncated_vlan_frames() {
    let mut h = Harness::standard();
    // Cut inside the tag (14..18): the inner EtherType cannot be read, a parse error.
    let l3 = ipv4(CLIENT4, VIP4, PROTO_TCP, &tcp(40000, VIP_PORT, SYN));
    let frame = eth_vlan(&[(ETH_P_8021Q, 100)], ETH_P_IP, &l3);
    check_prefixes(&mut h, "802.1Q IPv4 SYN", &frame, |_| true);
    let l3 = ipv6(CLIENT6, VIP6, PROTO_TCP, &tcp(40000, VIP_PORT, SYN));
    let frame = eth_vlan(&[(ETH_P_8021AD, 1), (ETH_P_8021Q, 2)], ETH_P_IPV6, &l3);
    check_prefixes(&mut h, "QinQ IPv6 SYN", &frame, |_| true);
    // A tagged ARP cut after the tags is no error (never parsed); inside the tags it is.
    let frame = eth_vlan(&[(ETH_P_8021AD, 1), (ETH_P_8021Q, 2)], ETH_P_ARP, &[0; 28]);
    check_prefixes(&mut h, "QinQ ARP", &frame, |len| len < ETH_HLEN + 8);
}

#[test]
fn truncated_non_tcp() {
    let mut h = Harness::standard();
    // An IPv4 UDP packet: errors only while the fixed 20-byte IP header is incomplete.
    let frame = eth(
        ETH_P_IP,
        &ipv4(CLIENT4, VIP4, PROTO_UDP, &udp(40000, VIP_PORT, b"hello")),
    );
    check_prefixes(&mut h, "IPv4 UDP", &frame, |len| len < ETH_HLEN + 20);
    let frame = eth(
        ETH_P_IPV6,
        &ipv6(CLIENT6, VIP6, PROTO_UDP, &udp(40000, VIP_PORT, b"hello")),
    );
    check_prefixes(&mut h, "IPv6 UDP", &frame, |len| len < ETH_HLEN + 40);
    // ARP: never an error.
    let frame = eth(ETH_P_ARP, &[0; 28]);
    check_prefixes(&mut h, "ARP", &frame, |_| false);
}

#[test]
fn truncated_icmp_errors() {
    let mut h = Harness::standard();
    // 14 Ethernet, 20 outer IP, 8 ICMP, 20 quoted IP, 8 quoted TCP = 70: the record needs it all.
    let frame = eth(
        ETH_P_IP,
        &ipv4(BACKEND4, LB4, PROTO_ICMP, &icmp(3, 3, 0, &quoted_syn4(8))),
    );
    assert_eq!(frame.len(), 70);
    check_prefixes(&mut h, "ICMP port unreachable", &frame, |_| true);
    // With a full 20-byte quoted TCP header, cuts after its 8th byte still give the record.
    let frame = eth(
        ETH_P_IP,
        &ipv4(BACKEND4, LB4, PROTO_ICMP, &icmp(3, 3, 0, &quoted_syn4(20))),
    );
    for len in 70..frame.len() {
        h.check(
            &format!("ICMP quote cut to {len}"),
            &frame[..len],
            &Want::Icmp(icmp4_ev(3, 3, BACKEND4), ID_BACKEND4),
        );
    }
    // ICMPv6: 14 + 40 + 8 + 40 + 8 = 110.
    let frame = eth(
        ETH_P_IPV6,
        &ipv6(
            ROUTER6,
            LB6,
            PROTO_ICMPV6,
            &icmp(2, 0, 1280, &quoted_syn6(8)),
        ),
    );
    assert_eq!(frame.len(), 110);
    check_prefixes(&mut h, "ICMPv6 packet too big", &frame, |_| true);
    // An echo request is an error only while its 8-byte ICMP header is incomplete.
    let frame = eth(
        ETH_P_IP,
        &ipv4(CLIENT4, VIP4, PROTO_ICMP, &icmp(8, 0, 1, b"ping")),
    );
    check_prefixes(&mut h, "ICMP echo", &frame, |len| len < ETH_HLEN + 28);
}

#[test]
fn malformed_ip_headers_are_parse_errors() {
    let mut h = Harness::standard();
    let good = tcp4_frame(CLIENT4, 40000, VIP4, VIP_PORT, SYN);
    // IHL below 5.
    for ihl in 0..5u8 {
        let mut f = good.clone();
        f[ETH_HLEN] = 0x40 | ihl;
        h.check(&format!("IHL {ihl}"), &f, &Want::ParseError);
    }
    // Wrong version under each EtherType.
    for v in [0u8, 5, 6, 15] {
        let mut f = good.clone();
        f[ETH_HLEN] = (v << 4) | 5;
        h.check(
            &format!("IPv4 EtherType, version {v}"),
            &f,
            &Want::ParseError,
        );
    }
    let good6 = tcp6_frame(CLIENT6, 40000, VIP6, VIP_PORT, SYN);
    for v in [0u8, 4, 7] {
        let mut f = good6.clone();
        f[ETH_HLEN] = v << 4;
        h.check(
            &format!("IPv6 EtherType, version {v}"),
            &f,
            &Want::ParseError,
        );
    }
    // IHL pointing past the end of the frame (IHL 15, no options present).
    let mut f = good;
    f[ETH_HLEN] = 0x4f;
    h.check("IHL 15 without options", &f, &Want::ParseError);
}

/// xorshift64*: deterministic garbage.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next().to_le_bytes()[0]).collect()
    }
}

#[test]
fn garbage_frames_always_pass() {
    let mut h = Harness::standard();
    let mut rng = Rng(0x1b7c_e5a3_9d2f_4c61);
    let ethertypes = [ETH_P_IP, ETH_P_IPV6, ETH_P_8021Q, ETH_P_8021AD, ETH_P_ARP];
    let c0 = h.counters();
    let mut runs = 0u64;
    for i in 0..300usize {
        let len = ETH_HLEN + (rng.next() % 200) as usize;
        let mut f = rng.bytes(len);
        // Steer most frames into the parsers.
        let et = ethertypes[i % ethertypes.len()];
        f[12..14].copy_from_slice(&et.to_be_bytes());
        if i % 3 != 0 && len > 20 {
            let inner = ethertypes[(i / 5) % 2];
            let at = if et == ETH_P_8021Q || et == ETH_P_8021AD {
                16
            } else {
                12
            };
            f[at..at + 2].copy_from_slice(&inner.to_be_bytes());
            let l3 = at + 2;
            if f.len() > l3 {
                f[l3] = if inner == ETH_P_IP {
                    0x40 | (f[l3] & 0x0f)
                } else {
                    0x60
                };
            }
        }
        for prog in h.progs.clone() {
            if h.kernel_refuses(prog, &f) {
                let err = h
                    .try_run(prog, &f)
                    .expect_err("the kernel ran a frame it should refuse");
                assert!(is_einval(&err), "{err:?}");
            } else {
                h.run(prog, &f);
                runs += 1;
            }
        }
    }
    let d = delta(&h.counters(), &c0);
    assert_eq!(d[counter::PACKETS as usize], runs);
    assert!(d[counter::PARSE_ERRORS as usize] <= runs);
    // Random addresses never hit the watched endpoints.
    assert_eq!(h.drain_events(), vec![]);
    assert_eq!(h.drain_priority(), vec![]);
    assert_eq!(
        d[counter::EVENTS_EMITTED as usize] + d[counter::EVENTS_LOST as usize],
        0
    );
}
