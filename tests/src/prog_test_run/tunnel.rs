//! TCP control packets inside tunnels: an LB forwarding the client's SYN to a backend in IPIP,
//! IPv6-in-IP or GRE (IPVS tunnel mode, Katran-style LBs). The event is the inner packet's
//! (tuple, flags, numbers, MSS) with the outer header's protocol, family and addresses; a
//! tunnel carrying anything but TCP, GRE with routing or of another version, and a truncated
//! inner header give no record.

#[allow(clippy::wildcard_imports)]
use super::*;
use lbtrace_common::encap;

const PROTO_IPIP: u8 = 4;
const PROTO_IPV6: u8 = 41;
const PROTO_GRE: u8 = 47;

/// The client's SYN to the VIP as the LB received it (IPv4 or IPv6), and its event.
fn client_syn(v6: bool) -> (Vec<u8>, Event, u32) {
    let syn = tcp_full(40000, VIP_PORT, 0xdead_beef, 0, SYN, &SYN_OPTIONS, &[]);
    let (fam, src, dst, id, pkt) = if v6 {
        (
            family::V6,
            CLIENT6,
            VIP6,
            ID_VIP6,
            ipv6(CLIENT6, VIP6, PROTO_TCP, &syn),
        )
    } else {
        (
            family::V4,
            addr4(CLIENT4),
            addr4(VIP4),
            ID_VIP4,
            ipv4(CLIENT4, VIP4, PROTO_TCP, &syn),
        )
    };
    let ev = packet_ev(fam, SYN, src, 40000, dst, VIP_PORT, 0xdead_beef, 0, 0);
    (pkt, Event { mss: 1460, ..ev }, id)
}

/// A GRE header (version 0) with the optional words `flags` asks for, then `inner`.
fn gre(flags: u8, ethertype: u16, inner: &[u8]) -> Vec<u8> {
    let mut g = vec![flags, 0];
    g.extend_from_slice(&ethertype.to_be_bytes());
    for bit in [0x80u8, 0x20, 0x10] {
        if flags & bit != 0 {
            g.extend_from_slice(&[0, 0, 0, 7]);
        }
    }
    g.extend_from_slice(inner);
    g
}

#[test]
fn syns_inside_tunnels() {
    let mut h = Harness::standard();
    let outer4 = |proto, payload: &[u8]| eth(ETH_P_IP, &ipv4(LB4, BACKEND4, proto, payload));
    let outer6 = |proto, payload: &[u8]| eth(ETH_P_IPV6, &ipv6(LB6, BACKEND6, proto, payload));
    let (syn4, ev4, id4) = client_syn(false);
    let (syn6, ev6, id6) = client_syn(true);
    let in4 = |ev: Event, proto| Event {
        outer_src: addr4(LB4),
        outer_dst: addr4(BACKEND4),
        encap: [proto, family::V4],
        ..ev
    };
    let in6 = |ev: Event, proto| Event {
        outer_src: LB6,
        outer_dst: BACKEND6,
        encap: [proto, family::V6],
        ..ev
    };
    let syn = || stats(|s| s.syn = 1);
    let cases = [
        (
            "IPIP",
            outer4(PROTO_IPIP, &syn4),
            in4(ev4, encap::IPIP),
            id4,
        ),
        (
            "IPv6 in IPv4",
            outer4(PROTO_IPV6, &syn6),
            in4(ev6, encap::IPV6),
            id6,
        ),
        (
            "IPv4 in IPv6",
            outer6(PROTO_IPIP, &syn4),
            in6(ev4, encap::IPIP),
            id4,
        ),
        (
            "GRE",
            outer4(PROTO_GRE, &gre(0, ETH_P_IP, &syn4)),
            in4(ev4, encap::GRE),
            id4,
        ),
        (
            "GRE with checksum, key and sequence",
            outer4(PROTO_GRE, &gre(0xb0, ETH_P_IP, &syn4)),
            in4(ev4, encap::GRE),
            id4,
        ),
        (
            "GRE over IPv6 carrying IPv6",
            outer6(PROTO_GRE, &gre(0x20, ETH_P_IPV6, &syn6)),
            in6(ev6, encap::GRE),
            id6,
        ),
    ];
    for (what, frame, ev, id) in cases {
        h.check(what, &frame, &Want::Packet(ev, id, syn()));
    }
}

#[test]
fn tunnels_without_a_watched_tcp_packet_give_nothing() {
    let mut h = Harness::standard();
    let (syn4, _, _) = client_syn(false);
    let outer4 = |proto, payload: &[u8]| eth(ETH_P_IP, &ipv4(LB4, BACKEND4, proto, payload));
    let udp_inner = ipv4(CLIENT4, VIP4, PROTO_UDP, &udp(40000, VIP_PORT, b"x"));
    let unwatched = ipv4(CLIENT4, UNWATCHED4, PROTO_TCP, &tcp(40000, VIP_PORT, SYN));
    let mut routed = gre(0x40, ETH_P_IP, &syn4);
    routed.splice(4..4, [0u8; 4]);
    let mut v1 = gre(0, ETH_P_IP, &syn4);
    v1[1] = 1;
    for (what, frame) in [
        ("UDP in IPIP", outer4(PROTO_IPIP, &udp_inner)),
        ("an unwatched SYN in IPIP", outer4(PROTO_IPIP, &unwatched)),
        ("GRE with routing", outer4(PROTO_GRE, &routed)),
        ("GRE version 1 (PPTP)", outer4(PROTO_GRE, &v1)),
        (
            "GRE carrying ARP",
            outer4(PROTO_GRE, &gre(0, ETH_P_ARP, &[0; 28])),
        ),
    ] {
        h.check(what, &frame, &Want::Nothing);
    }
    // Cut inside the inner header: a parse error, never a record (and the frame passes).
    let full = outer4(PROTO_IPIP, &syn4);
    h.check(
        "IPIP cut in its inner IP header",
        &full[..14 + 20 + 10],
        &Want::ParseError,
    );
}
