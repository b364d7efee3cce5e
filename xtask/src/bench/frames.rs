//! The frames the kernel benchmarks run (built with the integration tests' frame builders,
//! `lbtrace_integration::frames`), and the endpoints they watch.

use lbtrace_common::{
    EndpointKey, family,
    tcp_flag::{ACK, PSH, SYN},
};
use lbtrace_integration::frames::{
    self, ETH_P_ARP, ETH_P_IP, PROTO_ICMP, PROTO_TCP, PROTO_UDP, SYN_OPTIONS, TS_OPTIONS, ipv4,
};

pub const CLIENT: [u8; 4] = [192, 0, 2, 7];
pub const VIP: [u8; 4] = [10, 0, 0, 10];
pub const VIP_PORT: u16 = 443;
pub const LB: [u8; 4] = [10, 0, 1, 1];
pub const BACKEND: [u8; 4] = [10, 0, 1, 20];
pub const BACKEND_PORT: u16 = 8080;
pub const UNWATCHED: [u8; 4] = [10, 0, 0, 99];

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

/// An Ethernet frame padded to the minimum of 60 bytes.
fn eth(ethertype: u16, l3: &[u8]) -> Vec<u8> {
    frames::padded(frames::eth(ethertype, l3))
}

/// Seq `frames::SEQ`, ack `frames::ACK_SEQ` when ACK is set.
fn tcp(sport: u16, dport: u16, flags: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
    let ack = if flags & ACK != 0 { frames::ACK_SEQ } else { 0 };
    frames::tcp_full(sport, dport, frames::SEQ, ack, flags, options, payload)
}

/// An ARP request (not IP: the programs stop at the EtherType).
pub fn arp() -> Vec<u8> {
    eth(ETH_P_ARP, &[0; 28])
}

pub fn udp() -> Vec<u8> {
    let u = frames::udp(40000, 53, &[0x5a; 18]);
    eth(ETH_P_IP, &ipv4(CLIENT, VIP, PROTO_UDP, &u))
}

/// A data segment (ACK + PSH, 100 bytes of payload) to `dst:dport`.
pub fn tcp_data(dst: [u8; 4], dport: u16) -> Vec<u8> {
    let t = tcp(40000, dport, ACK | PSH, &TS_OPTIONS, &[0xab; 100]);
    eth(ETH_P_IP, &ipv4(CLIENT, dst, PROTO_TCP, &t))
}

/// A data segment of `len` bytes from the client's port `sport` to `dst:dport` (with
/// timestamps), seq `frames::SEQ`.
pub fn tcp_data_from(sport: u16, dst: [u8; 4], dport: u16, len: usize) -> Vec<u8> {
    let t = tcp(sport, dport, ACK | PSH, &TS_OPTIONS, &vec![0xab; len]);
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
    let m = frames::icmp(3, 3, 0, quoted);
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
