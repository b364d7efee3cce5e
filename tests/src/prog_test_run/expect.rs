//! Expected records: what one run of one frame should write and count.

#[allow(clippy::wildcard_imports)]
use super::*;

/// The record a packet event should produce (hook, ts_ns and ifindex are filled in per run).
#[allow(clippy::too_many_arguments)]
pub(super) fn packet_ev(
    fam: u8,
    flags: u8,
    saddr: [u8; 16],
    sport: u16,
    daddr: [u8; 16],
    dport: u16,
    seq: u32,
    ack: u32,
    payload_len: u16,
) -> Event {
    let mut e = Event::zeroed();
    e.kind = kind::PACKET;
    e.family = fam;
    e.tcp_flags = flags;
    e.saddr = saddr;
    e.daddr = daddr;
    e.sport = sport;
    e.dport = dport;
    e.seq = seq;
    e.ack = ack;
    e.payload_len = payload_len;
    e
}

/// A packet event for a header built by [`tcp`] (seq `SEQ`, ack `ACK_SEQ` iff ACK, no payload).
pub(super) fn pkt4(flags: u8, saddr: [u8; 4], sport: u16, daddr: [u8; 4], dport: u16) -> Event {
    let ack = if flags & ACK != 0 { ACK_SEQ } else { 0 };
    packet_ev(
        family::V4,
        flags,
        addr4(saddr),
        sport,
        addr4(daddr),
        dport,
        SEQ,
        ack,
        0,
    )
}

pub(super) fn pkt6(flags: u8, saddr: [u8; 16], sport: u16, daddr: [u8; 16], dport: u16) -> Event {
    let ack = if flags & ACK != 0 { ACK_SEQ } else { 0 };
    packet_ev(family::V6, flags, saddr, sport, daddr, dport, SEQ, ack, 0)
}

/// The record an ICMP error should produce: the quoted tuple and seq, flags/ack/payload 0.
#[allow(clippy::too_many_arguments)]
pub(super) fn icmp_ev(
    fam: u8,
    ty: u8,
    code: u8,
    outer_src: [u8; 16],
    outer_dst: [u8; 16],
    saddr: [u8; 16],
    sport: u16,
    daddr: [u8; 16],
    dport: u16,
    seq: u32,
) -> Event {
    let mut e = Event::zeroed();
    e.kind = kind::ICMP;
    e.family = fam;
    e.saddr = saddr;
    e.daddr = daddr;
    e.sport = sport;
    e.dport = dport;
    e.seq = seq;
    e.outer_src = outer_src;
    e.outer_dst = outer_dst;
    e.icmp_type = ty;
    e.icmp_code = code;
    e
}

pub(super) fn stats(f: impl FnOnce(&mut EndpointStats)) -> EndpointStats {
    let mut s = EndpointStats::default();
    f(&mut s);
    s
}

/// What one run of one frame should do.
#[derive(Clone, Debug)]
pub(super) enum Want {
    /// No record, no parse error.
    Nothing,
    /// No record, `PARSE_ERRORS` + 1.
    ParseError,
    /// One `EVENTS` record; endpoint `id` gets `delta`.
    Packet(Event, u32, EndpointStats),
    /// One `PRIORITY_EVENTS` record; endpoint `id` gets `delta` (icmp + 1).
    Icmp(Event, u32),
}

/// A SYN from the LB to the watched backend, as an ICMP error quotes it: IP header + `tcp_bytes`
/// bytes of the TCP header.
pub(super) fn quoted_syn4(tcp_bytes: usize) -> Vec<u8> {
    let mut seg = tcp_full(40002, BACKEND_PORT, 0x0bad_cafe, 0, SYN, &SYN_OPTIONS, &[]);
    let full_len = u16::try_from(20 + seg.len()).unwrap();
    seg.truncate(tcp_bytes);
    ipv4_full(LB4, BACKEND4, PROTO_TCP, &[], IP_DF, Some(full_len), &seg)
}

pub(super) fn quoted_syn6(tcp_bytes: usize) -> Vec<u8> {
    let mut seg = tcp_full(40002, BACKEND_PORT, 0x0bad_cafe, 0, SYN, &SYN_OPTIONS, &[]);
    let full = ipv6(LB6, BACKEND6, PROTO_TCP, &seg);
    seg.truncate(tcp_bytes);
    let mut p = ipv6(LB6, BACKEND6, PROTO_TCP, &seg);
    p[4..6].copy_from_slice(&full[4..6]); // the original payload length
    p
}

pub(super) fn icmp4_ev(ty: u8, code: u8, outer_src: [u8; 4]) -> Event {
    icmp_ev(
        family::V4,
        ty,
        code,
        addr4(outer_src),
        addr4(LB4),
        addr4(LB4),
        40002,
        addr4(BACKEND4),
        BACKEND_PORT,
        0x0bad_cafe,
    )
}

pub(super) fn icmp6_ev(ty: u8, code: u8, outer_src: [u8; 16]) -> Event {
    icmp_ev(
        family::V6,
        ty,
        code,
        outer_src,
        LB6,
        LB6,
        40002,
        BACKEND6,
        BACKEND_PORT,
        0x0bad_cafe,
    )
}
