//! Conntrack's table over ctnetlink (NETLINK_NETFILTER, subsystem CTNETLINK): what
//! `conntrack -L` reads. /proc/net/nf_conntrack is the obsolete interface (its kernel option
//! says so) and some distributions build without it; the dump works wherever conntrack does.
//!
//! Only TCP entries are passed on, as [`CtEntry`]s (the original direction's source and the
//! reply direction's tuple). The messages are parsed from bytes with bounds checks; the socket
//! calls are diag.rs's.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use super::{
    diag::{self, NlMsg},
    nat::{NETLINK_NETFILTER, NFGENMSG_LEN, nfnl_dump_request},
    procfs::CtEntry,
};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
/// enum ctattr_type / ctattr_tuple / ctattr_ip / ctattr_l4proto.
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const IPPROTO_TCP: u8 = 6;

fn port(b: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(..2)?.try_into().ok()?))
}

/// A tuple's (source, destination) of a TCP entry; None for other protocols.
fn tuple(b: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
    let proto = diag::attribute(b, CTA_TUPLE_PROTO)?;
    if diag::attribute(proto, CTA_PROTO_NUM)?.first() != Some(&IPPROTO_TCP) {
        return None;
    }
    let ip = diag::attribute(b, CTA_TUPLE_IP)?;
    let v4 = |k| -> Option<IpAddr> {
        let o: [u8; 4] = diag::attribute(ip, k)?.get(..4)?.try_into().ok()?;
        Some(Ipv4Addr::from(o).into())
    };
    let v6 = |k| -> Option<IpAddr> {
        let o: [u8; 16] = diag::attribute(ip, k)?.get(..16)?.try_into().ok()?;
        Some(Ipv6Addr::from(o).into())
    };
    let (src, dst) = match (v4(CTA_IP_V4_SRC), v4(CTA_IP_V4_DST)) {
        (Some(s), Some(d)) => (s, d),
        _ => (v6(CTA_IP_V6_SRC)?, v6(CTA_IP_V6_DST)?),
    };
    Some((
        SocketAddr::new(src, port(diag::attribute(proto, CTA_PROTO_SRC_PORT)?)?),
        SocketAddr::new(dst, port(diag::attribute(proto, CTA_PROTO_DST_PORT)?)?),
    ))
}

/// One IPCTNL_MSG_CT_NEW body (nfgenmsg, then the entry's attributes); None unless TCP.
pub(super) fn parse_entry(body: &[u8]) -> Option<CtEntry> {
    let a = body.get(NFGENMSG_LEN..)?;
    let (orig_src, _) = tuple(diag::attribute(a, CTA_TUPLE_ORIG)?)?;
    let (reply_src, reply_dst) = tuple(diag::attribute(a, CTA_TUPLE_REPLY)?)?;
    Some(CtEntry {
        orig_src,
        reply_src,
        reply_dst,
    })
}

/// Calls `each` with every TCP entry of this namespace's table (both families), reading at most
/// `cap` entries of any protocol; true when it stopped there. Errors: no CAP_NET_ADMIN
/// (EPERM), no conntrack in this kernel (the subsystem is missing: ENOENT / EOPNOTSUPP).
pub fn each_tcp(cap: usize, mut each: impl FnMut(&CtEntry)) -> io::Result<bool> {
    let req = nfnl_dump_request((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET, 0, 1);
    let (mut read, mut capped) = (0usize, false);
    diag::dump_with(NETLINK_NETFILTER, &req, |datagram| {
        for m in diag::messages(datagram) {
            match m {
                NlMsg::Msg(kind, body)
                    if kind == (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW =>
                {
                    if read == cap {
                        capped = true;
                        return Ok(false);
                    }
                    read += 1;
                    if let Some(e) = parse_entry(body) {
                        each(&e);
                    }
                }
                NlMsg::Msg(..) => {}
                NlMsg::Done => return Ok(false),
                NlMsg::Error(0) => {}
                NlMsg::Error(errno) => return Err(io::Error::from_raw_os_error(errno)),
            }
        }
        Ok(true)
    })?;
    Ok(capped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::nl_test::{nested, nla};

    fn tuple_attr(kind: u16, src: SocketAddr, dst: SocketAddr, proto: u8) -> Vec<u8> {
        let ip = match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => vec![
                nla(CTA_IP_V4_SRC, &s.octets()),
                nla(CTA_IP_V4_DST, &d.octets()),
            ],
            (IpAddr::V6(s), IpAddr::V6(d)) => vec![
                nla(CTA_IP_V6_SRC, &s.octets()),
                nla(CTA_IP_V6_DST, &d.octets()),
            ],
            _ => unreachable!("one family per tuple"),
        };
        nested(
            kind,
            &[
                nested(CTA_TUPLE_IP, &ip),
                nested(
                    CTA_TUPLE_PROTO,
                    &[
                        nla(CTA_PROTO_NUM, &[proto]),
                        nla(CTA_PROTO_SRC_PORT, &src.port().to_be_bytes()),
                        nla(CTA_PROTO_DST_PORT, &dst.port().to_be_bytes()),
                    ],
                ),
            ],
        )
    }

    fn entry(orig: (&str, &str), reply: (&str, &str), proto: u8) -> Vec<u8> {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let mut b = vec![2, 0, 0, 0];
        b.extend(tuple_attr(CTA_TUPLE_ORIG, a(orig.0), a(orig.1), proto));
        b.extend(tuple_attr(CTA_TUPLE_REPLY, a(reply.0), a(reply.1), proto));
        b
    }

    #[test]
    fn snat_entries_as_conntrack_sends_them() {
        // The client's connection to the VIP, DNATed to be1 and masqueraded to 10.10.3.1:40001.
        let b = entry(
            ("10.10.1.2:41340", "10.10.2.10:80"),
            ("10.10.3.11:8080", "10.10.3.1:40001"),
            IPPROTO_TCP,
        );
        let e = parse_entry(&b).expect("a TCP entry");
        assert_eq!(e.orig_src, "10.10.1.2:41340".parse().unwrap());
        assert_eq!(e.reply_src, "10.10.3.11:8080".parse().unwrap());
        assert_eq!(e.reply_dst, "10.10.3.1:40001".parse().unwrap());
        assert!(e.snat());
        let v6 = entry(
            ("[fd00::2]:5000", "[fd00:2::10]:80"),
            ("[fd00:3::11]:8080", "[fd00::2]:5000"),
            IPPROTO_TCP,
        );
        let e = parse_entry(&v6).expect("an IPv6 TCP entry");
        assert!(!e.snat(), "DNAT only: the reply goes to the client");
        // UDP is not passed on; no input panics.
        let udp = entry(
            ("10.10.1.2:5353", "10.10.3.11:53"),
            ("10.10.3.11:53", "10.10.1.2:5353"),
            17,
        );
        assert_eq!(parse_entry(&udp), None);
        for cut in 0..b.len() {
            let _ = parse_entry(&b[..cut]);
        }
    }

    #[test]
    fn this_host_dumps_its_table() {
        // Without CAP_NET_ADMIN the dump is refused; without conntrack the subsystem is absent.
        match each_tcp(10, |_| {}) {
            Ok(_) => {}
            Err(e) => assert!(
                e.kind() == io::ErrorKind::PermissionDenied
                    || matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EOPNOTSUPP)),
                "{e}"
            ),
        }
    }
}
