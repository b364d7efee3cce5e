//! TCP sockets of this network namespace through sock_diag (NETLINK_SOCK_DIAG, INET_DIAG): the
//! same data as `ss -tan`, without running it. For a listener, `rqueue` is the accept queue's
//! current depth and `wqueue` its limit (the backlog: `ss -lnt` Recv-Q / Send-Q).
//!
//! The dump's messages are parsed from bytes with bounds checks; the socket calls are the only
//! unsafe code.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// TCP states (include/net/tcp_states.h).
pub const TCP_LISTEN: u8 = 10;
pub const TCP_TIME_WAIT: u8 = 6;

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
pub(super) const NLM_F_REQUEST: u16 = 0x1;
pub(super) const NLM_F_DUMP: u16 = 0x300;
pub(super) const NLMSG_HDRLEN: usize = 16;
/// inet_diag_msg: family, state, timer, retrans, sockid (48), expires, rqueue, wqueue, uid, inode.
const INET_DIAG_MSG_LEN: usize = 72;
/// At most this many sockets are read per dump (a busy LB has many; the rest are counted).
const MAX_SOCKETS: usize = 1 << 20;

/// One TCP socket as sock_diag reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSocket {
    pub state: u8,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// LISTEN: connections waiting in the accept queue; otherwise: bytes unread.
    pub rqueue: u32,
    /// LISTEN: the accept queue's limit (backlog); otherwise: bytes unacknowledged.
    pub wqueue: u32,
}

/// The request: inet_diag_req_v2 for every socket of `family` in `states` (a bit per state).
fn request(family: u8, states: u32, seq: u32) -> Vec<u8> {
    let len: u32 = (NLMSG_HDRLEN + 56) as u32;
    let mut b = Vec::with_capacity(len as usize);
    b.extend_from_slice(&len.to_ne_bytes());
    b.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, 0, 0]);
    b.extend_from_slice(&states.to_ne_bytes());
    b.resize(len as usize, 0); // the socket id: all zero, a dump
    b
}

pub(super) fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

pub(super) fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// An address of the socket id: 16 bytes, of which IPv4 uses the first 4.
fn addr_at(b: &[u8], at: usize, family: u8) -> Option<IpAddr> {
    let raw: [u8; 16] = b.get(at..at + 16)?.try_into().ok()?;
    match i32::from(family) {
        libc::AF_INET => Some(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
        libc::AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(raw))),
        _ => None,
    }
}

/// Parses one inet_diag_msg.
fn parse_msg(b: &[u8]) -> Option<TcpSocket> {
    if b.len() < INET_DIAG_MSG_LEN {
        return None;
    }
    let family = b[0];
    let state = b[1];
    // sockid at 4: sport (be16), dport (be16), src (16), dst (16), if, cookie.
    let sport = u16::from_be_bytes(b.get(4..6)?.try_into().ok()?);
    let dport = u16::from_be_bytes(b.get(6..8)?.try_into().ok()?);
    let src = addr_at(b, 8, family)?;
    let dst = addr_at(b, 24, family)?;
    Some(TcpSocket {
        state,
        local: SocketAddr::new(src, sport),
        remote: SocketAddr::new(dst, dport),
        rqueue: u32_at(b, 56)?,
        wqueue: u32_at(b, 60)?,
    })
}

/// One netlink message of a dump: its type and body (what follows the header).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum NlMsg<'a> {
    Msg(u16, &'a [u8]),
    Done,
    /// NLMSG_ERROR with this errno (0: an acknowledgement).
    Error(i32),
}

/// The netlink messages of one datagram, as far as their headers are sound.
pub(super) fn messages(mut b: &[u8]) -> Vec<NlMsg<'_>> {
    let mut out = Vec::new();
    while b.len() >= NLMSG_HDRLEN {
        let (Some(len), Some(kind)) = (u32_at(b, 0), u16_at(b, 4)) else {
            break;
        };
        let len = len as usize;
        if len < NLMSG_HDRLEN || len > b.len() {
            break;
        }
        let body = &b[NLMSG_HDRLEN..len];
        match kind {
            NLMSG_DONE => {
                out.push(NlMsg::Done);
                return out;
            }
            NLMSG_ERROR => {
                let errno = u32_at(body, 0).map_or(0, |e| e as i32);
                out.push(NlMsg::Error(-errno));
                return out;
            }
            _ => out.push(NlMsg::Msg(kind, body)),
        }
        // Messages are 4-byte aligned.
        let next = (len + 3) & !3;
        b = b.get(next..).unwrap_or_default();
    }
    out
}

/// What one received datagram held.
#[derive(Debug, Default, PartialEq, Eq)]
struct Batch {
    sockets: Vec<TcpSocket>,
    done: bool,
    error: Option<i32>,
}

/// Parses the netlink messages of one datagram.
fn parse_batch(b: &[u8]) -> Batch {
    let mut out = Batch::default();
    for m in messages(b) {
        match m {
            NlMsg::Done => out.done = true,
            NlMsg::Error(errno) => {
                out.error = Some(errno);
                out.done = true;
            }
            NlMsg::Msg(SOCK_DIAG_BY_FAMILY, body) => {
                if let Some(s) = parse_msg(body) {
                    out.sockets.push(s);
                }
            }
            NlMsg::Msg(..) => {}
        }
    }
    out
}

fn netlink_socket(protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor this function owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // A dump never waits more than a second for the kernel.
    let tv = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    // SAFETY: tv lives across the call; the size is its own.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::from_ref(&tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    Ok(fd)
}

/// Sends the dump request `req` on a netlink socket of `protocol` and hands every datagram of
/// the answer to `each` until the dump ends or `each` returns false (enough read).
pub(super) fn dump_with(
    protocol: libc::c_int,
    req: &[u8],
    mut each: impl FnMut(&[u8]) -> io::Result<bool>,
) -> io::Result<()> {
    let fd = netlink_socket(protocol)?;
    // SAFETY: a zeroed sockaddr_nl is the kernel's address (nl_pid 0).
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: req and kernel live across the call; sizes are their own.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            req.as_ptr().cast(),
            req.len(),
            0,
            std::ptr::from_ref(&kernel).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = usize::try_from(n).unwrap_or(0);
        if n == 0 || !each(&buf[..n])? {
            return Ok(());
        }
    }
}

/// Every TCP socket of `family` (AF_INET / AF_INET6) in one of `states` (bit n = state n).
pub fn dump(family: u8, states: u32) -> io::Result<Vec<TcpSocket>> {
    let req = request(family, states, 1);
    let mut sockets = Vec::new();
    dump_with(NETLINK_SOCK_DIAG, &req, |datagram| {
        let batch = parse_batch(datagram);
        if let Some(errno) = batch.error.filter(|e| *e != 0) {
            return Err(io::Error::from_raw_os_error(errno));
        }
        let room = MAX_SOCKETS.saturating_sub(sockets.len());
        sockets.extend(batch.sockets.into_iter().take(room));
        Ok(!batch.done)
    })?;
    Ok(sockets)
}

/// Both families.
pub fn dump_all(states: u32) -> io::Result<Vec<TcpSocket>> {
    let mut v = dump(libc::AF_INET as u8, states)?;
    // A host without IPv6 answers the v6 dump with an error: it has no v6 sockets then.
    v.extend(dump(libc::AF_INET6 as u8, states).unwrap_or_default());
    Ok(v)
}

/// The listening sockets.
pub fn listeners() -> io::Result<Vec<TcpSocket>> {
    dump_all(1 << TCP_LISTEN)
}

/// Every socket but the listeners (connections in any state, TIME_WAIT included: each holds its
/// local port toward its peer).
pub fn connections() -> io::Result<Vec<TcpSocket>> {
    dump_all(0x1fff & !(1 << TCP_LISTEN) & !1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(family: u8, state: u8, src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16) -> Vec<u8> {
        let mut body = vec![family, state, 0, 0];
        body.extend_from_slice(&sport.to_be_bytes());
        body.extend_from_slice(&dport.to_be_bytes());
        body.extend_from_slice(&src);
        body.extend_from_slice(&dst);
        body.extend_from_slice(&[0u8; 12]); // if, cookie
        body.extend_from_slice(&0u32.to_ne_bytes()); // expires
        body.extend_from_slice(&2u32.to_ne_bytes()); // rqueue
        body.extend_from_slice(&128u32.to_ne_bytes()); // wqueue
        body.extend_from_slice(&[0u8; 8]); // uid, inode
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        m.extend_from_slice(&[0u8; 10]);
        m.extend(body);
        m
    }

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut r = [0u8; 16];
        r[..4].copy_from_slice(&a);
        r
    }

    #[test]
    fn parses_a_dump_and_its_end() {
        let mut d = msg(
            libc::AF_INET as u8,
            TCP_LISTEN,
            v4([10, 10, 2, 10]),
            80,
            v4([0; 4]),
            0,
        );
        d.extend(msg(
            libc::AF_INET6 as u8,
            1,
            [0xfd; 16],
            40000,
            [0xfe; 16],
            8080,
        ));
        let mut done = vec![0u8; 20];
        done[..4].copy_from_slice(&20u32.to_ne_bytes());
        done[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
        d.extend(done);
        let b = parse_batch(&d);
        assert!(b.done);
        assert_eq!(b.sockets.len(), 2);
        assert_eq!(b.sockets[0].local, "10.10.2.10:80".parse().unwrap());
        assert_eq!((b.sockets[0].rqueue, b.sockets[0].wqueue), (2, 128));
        assert_eq!(b.sockets[0].state, TCP_LISTEN);
        assert_eq!(b.sockets[1].remote.port(), 8080);
        assert!(b.sockets[1].remote.is_ipv6());
    }

    #[test]
    fn truncated_or_lying_messages_are_ignored() {
        let m = msg(
            libc::AF_INET as u8,
            TCP_LISTEN,
            v4([1, 2, 3, 4]),
            80,
            v4([0; 4]),
            0,
        );
        for cut in 0..m.len() {
            let b = parse_batch(&m[..cut]);
            assert!(b.sockets.is_empty(), "cut at {cut}");
        }
        let mut lying = m.clone();
        lying[..4].copy_from_slice(&10_000u32.to_ne_bytes());
        assert!(parse_batch(&lying).sockets.is_empty());
        let mut tiny = m;
        tiny[..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(parse_batch(&tiny).sockets.is_empty());
    }

    #[test]
    fn this_host_lists_a_listener_it_just_opened() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let found = listeners().unwrap();
        let me = found
            .iter()
            .find(|s| s.local == addr)
            .expect("our listener");
        assert_eq!(me.rqueue, 0);
        assert!(me.wqueue > 0, "backlog {}", me.wqueue);
        let c = std::net::TcpStream::connect(addr).unwrap();
        let found = listeners().unwrap();
        let me = found
            .iter()
            .find(|s| s.local == addr)
            .expect("our listener");
        assert_eq!(me.rqueue, 1, "one connection waits to be accepted");
        let conns = connections().unwrap();
        assert!(
            conns
                .iter()
                .any(|s| s.remote == addr && s.local == c.local_addr().unwrap())
        );
    }
}
