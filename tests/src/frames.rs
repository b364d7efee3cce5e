//! Hand-built Ethernet frames for `BPF_PROG_TEST_RUN`: TCP, UDP, ICMP / ICMPv6 over IPv4 (with
//! options and fragments) / IPv6, behind up to any number of VLAN tags. Checksums are left zero:
//! lbtrace's programs never look at them. Used by the test-run tests (`prog_test_run`) and by
//! `cargo xtask bench` (kernel cost per packet).

/// TCP flag bits (byte 13 of the header), as `lbtrace_common::tcp_flag` has them.
pub(crate) const ACK: u8 = 0x10;

pub const SEQ: u32 = 0x1122_3344;
pub const ACK_SEQ: u32 = 0x5566_7788;

pub const ETH_HLEN: usize = 14;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const ETH_P_LLDP: u16 = 0x88cc;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_HOPOPTS: u8 = 0;

/// `prefix` is the first 48 bits, `host` the last 16.
pub const fn ip6(prefix: u64, host: u16) -> [u8; 16] {
    let p = prefix.to_be_bytes();
    let h = host.to_be_bytes();
    [
        p[2], p[3], p[4], p[5], p[6], p[7], 0, 0, 0, 0, 0, 0, 0, 0, h[0], h[1],
    ]
}

pub fn addr4(a: [u8; 4]) -> [u8; 16] {
    let mut out = [0; 16];
    out[..4].copy_from_slice(&a);
    out
}

/// A TCP header (data offset from the options) followed by `payload`.
pub fn tcp_full(
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    assert_eq!(
        options.len() % 4,
        0,
        "TCP options must be padded to 4 bytes"
    );
    let doff = u8::try_from((20 + options.len()) / 4).expect("options too long");
    assert!(doff <= 15, "options too long");
    let mut t = Vec::with_capacity(20 + options.len() + payload.len());
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&ack.to_be_bytes());
    t.push(doff << 4);
    t.push(flags);
    t.extend_from_slice(&64240u16.to_be_bytes()); // window
    t.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    t.extend_from_slice(options);
    t.extend_from_slice(payload);
    t
}

/// A bare TCP header; `ack` is `ACK_SEQ` when the ACK flag is set, 0 otherwise.
pub fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let ack = if flags & ACK != 0 { ACK_SEQ } else { 0 };
    tcp_full(sport, dport, SEQ, ack, flags, &[], &[])
}

/// SYN options as Linux sends them: MSS, SACK permitted, timestamps, NOP, window scale (20 bytes).
pub const SYN_OPTIONS: [u8; 20] = [
    2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
];
/// NOP, NOP, timestamps (12 bytes).
pub const TS_OPTIONS: [u8; 12] = [1, 1, 8, 10, 0, 0, 0, 2, 0, 0, 0, 1];

pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(8 + payload.len()).unwrap();
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&len.to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

/// An IPv4 packet. `frag` is the flags + fragment offset field; `tot_len` overrides the total
/// length (otherwise header + `l4`).
pub fn ipv4_full(
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    options: &[u8],
    frag: u16,
    tot_len: Option<u16>,
    l4: &[u8],
) -> Vec<u8> {
    assert_eq!(
        options.len() % 4,
        0,
        "IPv4 options must be padded to 4 bytes"
    );
    let ihl = u8::try_from((20 + options.len()) / 4).unwrap();
    assert!(ihl <= 15, "IPv4 options too long");
    let hlen = 20 + options.len();
    let tot = tot_len.unwrap_or_else(|| u16::try_from(hlen + l4.len()).unwrap());
    let mut p = Vec::with_capacity(hlen + l4.len());
    p.push(0x40 | ihl);
    p.push(0); // DSCP/ECN
    p.extend_from_slice(&tot.to_be_bytes());
    p.extend_from_slice(&0x1234u16.to_be_bytes()); // id
    p.extend_from_slice(&frag.to_be_bytes());
    p.push(64); // TTL
    p.push(proto);
    p.extend_from_slice(&[0, 0]); // checksum
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(options);
    p.extend_from_slice(l4);
    p
}

pub const IP_DF: u16 = 0x4000;
pub const IP_MF: u16 = 0x2000;

pub fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
    ipv4_full(src, dst, proto, &[], IP_DF, None, l4)
}

/// IPv4 options of `len` bytes: a router alert (4 bytes) then NOPs, ending with EOL.
pub fn ipv4_options(len: usize) -> Vec<u8> {
    let mut o = vec![1u8; len];
    if len >= 4 {
        o[..4].copy_from_slice(&[0x94, 4, 0, 0]);
    }
    if let Some(last) = o.last_mut() {
        *last = 0;
    }
    o
}

pub fn ipv6(src: [u8; 16], dst: [u8; 16], next: u8, l4: &[u8]) -> Vec<u8> {
    let plen = u16::try_from(l4.len()).unwrap();
    let mut p = Vec::with_capacity(40 + l4.len());
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&plen.to_be_bytes());
    p.push(next);
    p.push(64); // hop limit
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(l4);
    p
}

/// An ICMP / ICMPv6 message: type, code, zero checksum, the 4 "rest of header" bytes, `body`.
pub fn icmp(ty: u8, code: u8, rest: u32, body: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0];
    m.extend_from_slice(&rest.to_be_bytes());
    m.extend_from_slice(body);
    m
}

pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// An Ethernet frame with the given VLAN tags (TPID, TCI), outermost first.
pub fn eth_vlan(tags: &[(u16, u16)], ethertype: u16, l3: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_HLEN + 4 * tags.len() + l3.len());
    f.extend_from_slice(&DST_MAC);
    f.extend_from_slice(&SRC_MAC);
    for (tpid, tci) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&tci.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(l3);
    f
}

pub fn eth(ethertype: u16, l3: &[u8]) -> Vec<u8> {
    eth_vlan(&[], ethertype, l3)
}

/// Pads a frame with zeros to the Ethernet minimum (60 bytes without FCS).
pub fn padded(mut f: Vec<u8>) -> Vec<u8> {
    if f.len() < 60 {
        f.resize(60, 0);
    }
    f
}

pub fn tcp4_frame(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, flags: u8) -> Vec<u8> {
    eth(
        ETH_P_IP,
        &ipv4(src, dst, PROTO_TCP, &tcp(sport, dport, flags)),
    )
}

pub fn tcp6_frame(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16, flags: u8) -> Vec<u8> {
    eth(
        ETH_P_IPV6,
        &ipv6(src, dst, PROTO_TCP, &tcp(sport, dport, flags)),
    )
}
