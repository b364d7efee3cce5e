//! Writes kernel events as a pcap file that tcpdump and Wireshark open: evidence for the teams
//! who own the firewalls, routers and servers.
//!
//! lbtrace keeps headers, not payloads, so each packet is rebuilt from its event: an IPv4/IPv6
//! header and a 20-byte TCP header with the captured tuple, flags, seq and ack (checksums
//! computed), or for an ICMP error the ICMP header quoting the IP header and first 8 TCP bytes.
//! The link type is Linux cooked capture (SLL), whose packet type says in / out.

use std::{
    io::{self, Write},
    net::IpAddr,
};

use crate::{
    event::{Detail, Dir, KernelEvent},
    render::Clock,
};

const LINKTYPE_LINUX_SLL: u32 = 113;
const SLL_HOST: u16 = 0;
const SLL_OUTGOING: u16 = 4;

fn sum16(data: &[u8], mut acc: u32) -> u32 {
    for c in data.chunks(2) {
        acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

fn ip_bytes(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

/// An IP header followed by `l4`, with the TCP checksum filled in when `proto` is TCP.
fn ip_packet(
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    mut l4: Vec<u8>,
    l4_csum_at: Option<usize>,
) -> Vec<u8> {
    let (s, d) = (ip_bytes(src), ip_bytes(dst));
    if let Some(at) = l4_csum_at {
        let len = u32::try_from(l4.len()).unwrap_or(0);
        let mut acc = sum16(&s, 0);
        acc = sum16(&d, acc);
        acc += u32::from(proto) + len;
        // ICMPv6 has a pseudo-header too; ICMPv4 does not.
        let acc = if proto == 1 {
            sum16(&l4, 0)
        } else {
            sum16(&l4, acc)
        };
        let c = fold(acc);
        l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    let mut p = Vec::with_capacity(40 + l4.len());
    if src.is_ipv4() {
        let total = u16::try_from(20 + l4.len()).unwrap_or(u16::MAX);
        p.extend_from_slice(&[0x45, 0]);
        p.extend_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
        p.extend_from_slice(&s);
        p.extend_from_slice(&d);
        let c = fold(sum16(&p, 0));
        p[10..12].copy_from_slice(&c.to_be_bytes());
    } else {
        let plen = u16::try_from(l4.len()).unwrap_or(u16::MAX);
        p.extend_from_slice(&[0x60, 0, 0, 0]);
        p.extend_from_slice(&plen.to_be_bytes());
        p.extend_from_slice(&[proto, 64]);
        p.extend_from_slice(&s);
        p.extend_from_slice(&d);
    }
    p.extend_from_slice(&l4);
    p
}

fn tcp_header(ev: &KernelEvent, with_csum_field: bool) -> Vec<u8> {
    let mut t = Vec::with_capacity(20);
    t.extend_from_slice(&ev.src.port().to_be_bytes());
    t.extend_from_slice(&ev.dst.port().to_be_bytes());
    t.extend_from_slice(&ev.seq.to_be_bytes());
    t.extend_from_slice(&ev.ack.to_be_bytes());
    t.extend_from_slice(&[0x50, ev.flags, 0xff, 0xff]);
    if with_csum_field {
        t.extend_from_slice(&[0, 0, 0, 0]);
    }
    t
}

/// The bytes of the packet an event describes.
pub fn packet_bytes(ev: &KernelEvent) -> Vec<u8> {
    match &ev.detail {
        Detail::Packet
        | Detail::Drop { .. }
        | Detail::Retrans
        | Detail::Data(_)
        | Detail::Reset(_) => {
            ip_packet(ev.src.ip(), ev.dst.ip(), 6, tcp_header(ev, true), Some(16))
        }
        Detail::Tunnel(t) => {
            let inner = ip_packet(ev.src.ip(), ev.dst.ip(), 6, tcp_header(ev, true), Some(16));
            let payload = if t.proto == lbtrace_common::encap::GRE {
                // GRE version 0 without options: flags, version, the inner ethertype.
                let ethertype: u16 = if ev.src.is_ipv4() { 0x0800 } else { 0x86dd };
                let mut g = vec![0, 0];
                g.extend_from_slice(&ethertype.to_be_bytes());
                g.extend_from_slice(&inner);
                g
            } else {
                inner
            };
            ip_packet(t.outer_src, t.outer_dst, t.proto, payload, None)
        }
        Detail::Icmp {
            outer_src,
            outer_dst,
            icmp_type,
            icmp_code,
        } => {
            // The quoted packet: the inner IP header and the first 8 bytes of its TCP header.
            let mut inner = ip_packet(
                ev.src.ip(),
                ev.dst.ip(),
                6,
                tcp_header(ev, false)[..8].to_vec(),
                None,
            );
            if ev.src.is_ipv4() {
                // The quoted header's length field describes the original packet, not the quote.
                inner[2..4].copy_from_slice(&40u16.to_be_bytes());
            }
            let mut l4 = vec![*icmp_type, *icmp_code, 0, 0, 0, 0, 0, 0];
            l4.extend_from_slice(&inner);
            let proto = if outer_src.is_ipv4() { 1 } else { 58 };
            ip_packet(*outer_src, *outer_dst, proto, l4, Some(2))
        }
    }
}

/// Writes the pcap file `path` (mode 0600, never through a symbolic link: see [`crate::files`]).
pub fn write_file(
    path: &std::path::Path,
    events: &[&KernelEvent],
    clock: &Clock,
) -> anyhow::Result<()> {
    let mut bytes = Vec::new();
    write(&mut bytes, events, clock)?;
    crate::files::write_private(path, &bytes)
}

/// Writes a pcap file of `events`.
pub fn write(out: &mut impl Write, events: &[&KernelEvent], clock: &Clock) -> io::Result<()> {
    // Global header: magic (microseconds), version 2.4, snaplen, link type.
    out.write_all(&0xa1b2_c3d4u32.to_le_bytes())?;
    out.write_all(&2u16.to_le_bytes())?;
    out.write_all(&4u16.to_le_bytes())?;
    out.write_all(&0i32.to_le_bytes())?;
    out.write_all(&0u32.to_le_bytes())?;
    out.write_all(&65535u32.to_le_bytes())?;
    out.write_all(&LINKTYPE_LINUX_SLL.to_le_bytes())?;
    for ev in events {
        let ip = packet_bytes(ev);
        let ethertype: u16 = if ip[0] >> 4 == 4 { 0x0800 } else { 0x86dd };
        let ptype = if ev.dir == Some(Dir::Out) {
            SLL_OUTGOING
        } else {
            SLL_HOST
        };
        let mut rec = Vec::with_capacity(16 + ip.len());
        rec.extend_from_slice(&ptype.to_be_bytes());
        rec.extend_from_slice(&1u16.to_be_bytes()); // ARPHRD_ETHER
        rec.extend_from_slice(&0u16.to_be_bytes()); // no link-layer address
        rec.extend_from_slice(&[0u8; 8]);
        rec.extend_from_slice(&ethertype.to_be_bytes());
        rec.extend_from_slice(&ip);
        let t = clock.wall(ev.ts_ns);
        let secs = u32::try_from(t.unix_timestamp()).unwrap_or(0);
        let len = u32::try_from(rec.len()).unwrap_or(0);
        out.write_all(&secs.to_le_bytes())?;
        out.write_all(&t.microsecond().to_le_bytes())?;
        out.write_all(&len.to_le_bytes())?;
        out.write_all(&len.to_le_bytes())?;
        out.write_all(&rec)?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Hook;

    fn syn() -> KernelEvent {
        KernelEvent {
            ts_ns: 1,
            ifindex: 2,
            hook: Hook::Tc,
            dir: Some(Dir::In),
            src: "10.0.0.5:43210".parse().unwrap(),
            dst: "10.0.0.10:80".parse().unwrap(),
            flags: lbtrace_common::tcp_flag::SYN,
            seq: 1000,
            ack: 0,
            payload_len: 0,
            mss: 0,
            detail: Detail::Packet,
            location: 0,
        }
    }

    #[test]
    fn ipv4_tcp_checksums_verify() {
        let p = packet_bytes(&syn());
        assert_eq!(p.len(), 40);
        // A correct IPv4 header sums to 0xffff (its complement is 0).
        assert_eq!(fold(sum16(&p[..20], 0)), 0);
        let mut acc = sum16(&p[12..20], 0) + 6 + 20;
        acc = sum16(&p[20..], acc);
        assert_eq!(fold(acc), 0, "TCP checksum");
        assert_eq!(&p[20..22], &43210u16.to_be_bytes());
        assert_eq!(p[33], lbtrace_common::tcp_flag::SYN);
    }

    #[test]
    fn icmp_quotes_the_tuple() {
        let mut ev = syn();
        ev.detail = Detail::Icmp {
            outer_src: "10.0.0.10".parse().unwrap(),
            outer_dst: "10.0.0.5".parse().unwrap(),
            icmp_type: 3,
            icmp_code: 3,
        };
        let p = packet_bytes(&ev);
        assert_eq!(p[9], 1);
        assert_eq!((p[20], p[21]), (3, 3));
        assert_eq!(fold(sum16(&p[20..], 0)), 0, "ICMP checksum");
        // Quoted IPv4 header then 8 TCP bytes.
        assert_eq!(p.len(), 20 + 8 + 20 + 8);
        assert_eq!(&p[48..50], &43210u16.to_be_bytes());
    }

    #[test]
    fn file_has_a_header_and_one_record_per_event() {
        let ev = syn();
        let mut buf = Vec::new();
        write(&mut buf, &[&ev, &ev], &Clock::new()).unwrap();
        assert_eq!(&buf[..4], &0xa1b2_c3d4u32.to_le_bytes());
        assert_eq!(buf.len(), 24 + 2 * (16 + 16 + 40));
    }
}
