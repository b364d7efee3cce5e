//! Hand-built Ethernet frames for BPF_PROG_TEST_RUN (checksums zero: the programs never read
//! them), and the endpoints the kernel benchmarks watch.

use lbtrace_common::{
    EndpointKey, family,
    tcp_flag::{ACK, PSH, SYN},
};

pub const CLIENT: [u8; 4] = [192, 0, 2, 7];
pub const VIP: [u8; 4] = [10, 0, 0, 10];
pub const VIP_PORT: u16 = 443;
pub const LB: [u8; 4] = [10, 0, 1, 1];
pub const BACKEND: [u8; 4] = [10, 0, 1, 20];
pub const BACKEND_PORT: u16 = 8080;
pub const UNWATCHED: [u8; 4] = [10, 0, 0, 99];

const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

/// SYN options as Linux sends them: MSS, SACK permitted, timestamps, NOP, window scale.
const SYN_OPTIONS: [u8; 20] = [
    2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
];
/// NOP, NOP, timestamps.
const TS_OPTIONS: [u8; 12] = [1, 1, 8, 10, 0, 0, 0, 2, 0, 0, 0, 1];

pub fn key(addr: [u8; 4], port: u16) -> EndpointKey {
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&addr);
    EndpointKey {
        addr: a,
        port,
        family: family::V4,
        _pad: 0,
    }
}

/// The watched endpoints: the VIP and one backend.
pub fn endpoints() -> [(EndpointKey, u32); 2] {
    [(key(VIP, VIP_PORT), 0), (key(BACKEND, BACKEND_PORT), 1)]
}

fn eth(ethertype: u16, l3: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(l3);
    if f.len() < 60 {
        f.resize(60, 0);
    }
    f
}

fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
    let tot = u16::try_from(20 + l4.len()).expect("packet too long");
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&tot.to_be_bytes());
    p.extend_from_slice(&[0x12, 0x34, 0x40, 0]); // id, DF
    p.extend_from_slice(&[64, proto, 0, 0]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(l4);
    p
}

fn tcp(sport: u16, dport: u16, flags: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
    let doff = u8::try_from((20 + options.len()) / 4).expect("options too long");
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&0x1122_3344u32.to_be_bytes());
    let ack = if flags & ACK != 0 { 0x5566_7788u32 } else { 0 };
    t.extend_from_slice(&ack.to_be_bytes());
    t.extend_from_slice(&[doff << 4, flags]);
    t.extend_from_slice(&64240u16.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]);
    t.extend_from_slice(options);
    t.extend_from_slice(payload);
    t
}

/// An ARP request (not IP: the programs stop at the EtherType).
pub fn arp() -> Vec<u8> {
    eth(ETH_P_ARP, &[0; 28])
}

pub fn udp() -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&40000u16.to_be_bytes());
    u.extend_from_slice(&53u16.to_be_bytes());
    u.extend_from_slice(&26u16.to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(&[0x5a; 18]);
    eth(ETH_P_IP, &ipv4(CLIENT, VIP, PROTO_UDP, &u))
}

/// A data segment (ACK + PSH, 100 bytes of payload) to `dst:dport`.
pub fn tcp_data(dst: [u8; 4], dport: u16) -> Vec<u8> {
    let t = tcp(40000, dport, ACK | PSH, &TS_OPTIONS, &[0xab; 100]);
    eth(ETH_P_IP, &ipv4(CLIENT, dst, PROTO_TCP, &t))
}

/// A SYN as Linux sends it (20 bytes of options) to `dst:dport`.
pub fn syn(dst: [u8; 4], dport: u16) -> Vec<u8> {
    let t = tcp(40000, dport, SYN, &SYN_OPTIONS, &[]);
    eth(ETH_P_IP, &ipv4(CLIENT, dst, PROTO_TCP, &t))
}

/// An ICMP port unreachable from the backend to the LB quoting the LB's SYN to the backend
/// (the 8 bytes of TCP header RFC 792 guarantees).
pub fn icmp_error() -> Vec<u8> {
    let quoted_tcp = tcp(40001, BACKEND_PORT, SYN, &[], &[]);
    let quoted = ipv4(LB, BACKEND, PROTO_TCP, &quoted_tcp);
    let quoted = &quoted[..28];
    let mut m = vec![3, 3, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(quoted);
    eth(ETH_P_IP, &ipv4(BACKEND, LB, PROTO_ICMP, &m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_sizes() {
        assert_eq!(arp().len(), 60);
        assert_eq!(udp().len(), 60);
        assert_eq!(syn(VIP, VIP_PORT).len(), 74);
        assert_eq!(tcp_data(VIP, VIP_PORT).len(), 14 + 20 + 32 + 100);
        assert_eq!(icmp_error().len(), 70);
    }
}
