//! TCP sockets of this network namespace through sock_diag (NETLINK_SOCK_DIAG, INET_DIAG): the
//! same data as `ss -tan`, without running it. For a listener, `rqueue` is the accept queue's
//! current depth and `wqueue` its limit (the backlog: `ss -lnt` Recv-Q / Send-Q).
//!
//! One connection's `struct tcp_info` (what `ss -ti` shows) is read by its exact tuple:
//! [`tcp_info`].
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
/// inet_diag_req_v2's idiag_ext bit for INET_DIAG_INFO (attribute type 2: struct tcp_info).
const INET_DIAG_INFO: u16 = 2;
/// The socket id's cookie that matches any socket.
const INET_DIAG_NOCOOKIE: u32 = !0;
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

/// The netlink header and the first fields of an inet_diag_req_v2 (family, protocol, `ext`,
/// `states`); the socket id (48 bytes) follows.
fn request_head(flags: u16, seq: u32, family: u8, ext: u8, states: u32) -> Vec<u8> {
    let len: u32 = (NLMSG_HDRLEN + 56) as u32;
    let mut b = Vec::with_capacity(len as usize);
    b.extend_from_slice(&len.to_ne_bytes());
    b.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, ext, 0]);
    b.extend_from_slice(&states.to_ne_bytes());
    b
}

/// The request: inet_diag_req_v2 for every socket of `family` in `states` (a bit per state).
fn request(family: u8, states: u32, seq: u32) -> Vec<u8> {
    let mut b = request_head(NLM_F_REQUEST | NLM_F_DUMP, seq, family, 0, states);
    b.resize(NLMSG_HDRLEN + 56, 0); // the socket id: all zero, a dump
    b
}

/// The request for the one socket `local` -> `remote` (same family), with its tcp_info.
fn request_one(local: SocketAddr, remote: SocketAddr, seq: u32) -> Option<Vec<u8>> {
    let raw = |a: IpAddr| -> [u8; 16] {
        match a {
            IpAddr::V4(v) => {
                let mut r = [0u8; 16];
                r[..4].copy_from_slice(&v.octets());
                r
            }
            IpAddr::V6(v) => v.octets(),
        }
    };
    let family = match (local.ip(), remote.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => libc::AF_INET,
        (IpAddr::V6(_), IpAddr::V6(_)) => libc::AF_INET6,
        _ => return None,
    };
    // No dump (this one socket), in any state, with its tcp_info.
    let ext = 1u8 << (INET_DIAG_INFO - 1);
    let mut b = request_head(NLM_F_REQUEST, seq, family as u8, ext, u32::MAX);
    b.extend_from_slice(&local.port().to_be_bytes());
    b.extend_from_slice(&remote.port().to_be_bytes());
    b.extend_from_slice(&raw(local.ip()));
    b.extend_from_slice(&raw(remote.ip()));
    b.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    b.extend_from_slice(&INET_DIAG_NOCOOKIE.to_ne_bytes());
    b.extend_from_slice(&INET_DIAG_NOCOOKIE.to_ne_bytes());
    Some(b)
}

/// The fields of `struct tcp_info` (include/uapi/linux/tcp.h) that say why a connection stalls.
/// A field is `None` when the kernel's struct is too short to hold it (older kernels send
/// shorter ones). Times in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TcpInfo {
    pub state: Option<u8>,
    /// Retransmissions of the head segment since the last acknowledgement (the RTO count).
    pub retransmits: Option<u8>,
    /// The RTO's exponential backoff.
    pub backoff: Option<u8>,
    pub rto_us: Option<u32>,
    pub snd_mss: Option<u32>,
    pub rcv_mss: Option<u32>,
    /// Segments sent and not acknowledged.
    pub unacked: Option<u32>,
    /// Segments the sender holds for lost.
    pub lost: Option<u32>,
    /// Segments retransmitted and not acknowledged.
    pub retrans: Option<u32>,
    /// The path MTU the socket uses.
    pub pmtu: Option<u32>,
    pub rtt_us: Option<u32>,
    pub rttvar_us: Option<u32>,
    pub snd_cwnd: Option<u32>,
    pub advmss: Option<u32>,
    /// Retransmissions over the connection's life.
    pub total_retrans: Option<u32>,
}

impl TcpInfo {
    /// Parses the payload of an INET_DIAG_INFO attribute: only the fields it is long enough for.
    pub fn parse(b: &[u8]) -> Self {
        let u8_at = |at: usize| b.get(at).copied();
        let u32_ = |at: usize| u32_at(b, at);
        Self {
            state: u8_at(0),
            retransmits: u8_at(2),
            backoff: u8_at(4),
            rto_us: u32_(8),
            snd_mss: u32_(16),
            rcv_mss: u32_(20),
            unacked: u32_(24),
            lost: u32_(32),
            retrans: u32_(36),
            pmtu: u32_(60),
            rtt_us: u32_(68),
            rttvar_us: u32_(72),
            snd_cwnd: u32_(80),
            advmss: u32_(84),
            total_retrans: u32_(100),
        }
    }
}

/// The payload of the first attribute of type `kind` among [`attributes`]`(b)`.
pub(super) fn attribute(b: &[u8], kind: u16) -> Option<&[u8]> {
    attributes(b)
        .into_iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, v)| v)
}

/// The netlink attributes (type without the nested / byte-order flags, payload) that follow a
/// message's fixed part, as far as their headers are sound.
pub(super) fn attributes(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let (Some(len), Some(kind)) = (u16_at(b, 0), u16_at(b, 2)) else {
            break;
        };
        let len = usize::from(len);
        let Some(payload) = b.get(4..len) else {
            break;
        };
        out.push((kind & 0x3fff, payload));
        b = b.get((len + 3) & !3..).unwrap_or_default();
    }
    out
}

/// The answer to [`request_one`]: the socket's tcp_info, `Ok(None)` when the kernel knows no
/// such socket (or sent no tcp_info), the kernel's error otherwise.
fn parse_one(b: &[u8]) -> io::Result<Option<TcpInfo>> {
    for m in messages(b) {
        match m {
            NlMsg::Error(errno) if errno == libc::ENOENT => return Ok(None),
            NlMsg::Error(errno) if errno != 0 => return Err(io::Error::from_raw_os_error(errno)),
            NlMsg::Msg(SOCK_DIAG_BY_FAMILY, body) if body.len() >= INET_DIAG_MSG_LEN => {
                let info = attributes(&body[INET_DIAG_MSG_LEN..])
                    .into_iter()
                    .find(|(kind, _)| *kind == INET_DIAG_INFO)
                    .map(|(_, p)| TcpInfo::parse(p));
                return Ok(info);
            }
            _ => {}
        }
    }
    Ok(None)
}

/// The tcp_info of the connection `local` -> `remote` of this network namespace (`None`: no
/// such socket, e.g. already closed). One request, one answer, at most a second's wait.
pub fn tcp_info(local: SocketAddr, remote: SocketAddr) -> io::Result<Option<TcpInfo>> {
    let Some(req) = request_one(local, remote, 1) else {
        return Ok(None);
    };
    let mut out = Ok(None);
    dump_with(NETLINK_SOCK_DIAG, &req, |datagram| {
        out = parse_one(datagram);
        Ok(false)
    })?;
    out
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

    /// An answer to a one-socket request: inet_diag_msg, then an INET_DIAG_INFO attribute
    /// carrying `info`.
    fn answer(info: &[u8]) -> Vec<u8> {
        let mut m = msg(
            libc::AF_INET as u8,
            1,
            v4([10, 10, 1, 2]),
            80,
            v4([10, 10, 1, 9]),
            40312,
        );
        let attr_len = 4 + info.len();
        m.extend_from_slice(&(attr_len as u16).to_ne_bytes());
        m.extend_from_slice(&INET_DIAG_INFO.to_ne_bytes());
        m.extend_from_slice(info);
        m.resize((m.len() + 3) & !3, 0);
        let len = m.len() as u32;
        m[..4].copy_from_slice(&len.to_ne_bytes());
        m
    }

    /// A tcp_info of `len` bytes as a stalled sender's: the RTO fired 5 times.
    fn stalled_info(len: usize) -> Vec<u8> {
        let mut b = vec![0u8; 232];
        b[0] = 1; // ESTABLISHED
        b[2] = 5; // retransmits
        b[4] = 5; // backoff
        // (offset, value): rto, snd_mss, rcv_mss, unacked, lost, retrans, pmtu, rtt, rttvar,
        // snd_cwnd, advmss, total_retrans.
        let fields: [(usize, u32); 12] = [
            (8, 6_400_000),
            (16, 1448),
            (20, 536),
            (24, 12),
            (32, 10),
            (36, 1),
            (60, 1500),
            (68, 400),
            (72, 200),
            (80, 1),
            (84, 1448),
            (100, 25),
        ];
        for (at, v) in fields {
            b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        }
        b.truncate(len);
        b
    }

    #[test]
    fn reads_the_tcp_info_of_one_socket() {
        let info = parse_one(&answer(&stalled_info(232))).unwrap().unwrap();
        assert_eq!(
            info,
            TcpInfo {
                state: Some(1),
                retransmits: Some(5),
                backoff: Some(5),
                rto_us: Some(6_400_000),
                snd_mss: Some(1448),
                rcv_mss: Some(536),
                unacked: Some(12),
                lost: Some(10),
                retrans: Some(1),
                pmtu: Some(1500),
                rtt_us: Some(400),
                rttvar_us: Some(200),
                snd_cwnd: Some(1),
                advmss: Some(1448),
                total_retrans: Some(25),
            }
        );
    }

    #[test]
    fn a_short_tcp_info_gives_only_the_fields_it_holds() {
        // A kernel whose struct ends before total_retrans (at 100) and rcv_rtt.
        let info = parse_one(&answer(&stalled_info(88))).unwrap().unwrap();
        assert_eq!((info.pmtu, info.advmss), (Some(1500), Some(1448)));
        assert_eq!((info.total_retrans, info.snd_cwnd), (None, Some(1)));
        let info = parse_one(&answer(&stalled_info(3))).unwrap().unwrap();
        assert_eq!(
            (info.state, info.retransmits, info.backoff),
            (Some(1), Some(5), None)
        );
        assert_eq!(info.rto_us, None);
        // A field cut in the middle is not read.
        let info = TcpInfo::parse(&stalled_info(62));
        assert_eq!((info.retrans, info.pmtu), (Some(1), None));
    }

    #[test]
    fn garbage_and_errors_in_the_answer() {
        let whole = answer(&stalled_info(232));
        for cut in 0..whole.len() {
            // Never a panic; a message cut short is no answer.
            let _ = parse_one(&whole[..cut]);
        }
        assert!(parse_one(&whole[..100]).unwrap().is_none());
        // An attribute whose length runs past the message.
        let mut lying = whole.clone();
        lying[NLMSG_HDRLEN + INET_DIAG_MSG_LEN..][..2].copy_from_slice(&5000u16.to_ne_bytes());
        assert!(parse_one(&lying).unwrap().is_none());
        // An attribute length below its header.
        lying[NLMSG_HDRLEN + INET_DIAG_MSG_LEN..][..2].copy_from_slice(&1u16.to_ne_bytes());
        assert!(parse_one(&lying).unwrap().is_none());
        let mut noise = 0x1234_5678_u32;
        let bytes: Vec<u8> = (0..4096)
            .map(|_| {
                noise ^= noise << 13;
                noise ^= noise >> 17;
                noise ^= noise << 5;
                noise as u8
            })
            .collect();
        for start in 0..64 {
            let _ = parse_one(&bytes[start..]);
            let _ = TcpInfo::parse(&bytes[start..start + 40]);
        }
        // The kernel's "no such socket" and other errors.
        let mut err = vec![0u8; 36];
        err[..4].copy_from_slice(&36u32.to_ne_bytes());
        err[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err[16..20].copy_from_slice(&(-libc::ENOENT).to_ne_bytes());
        assert!(parse_one(&err).unwrap().is_none());
        err[16..20].copy_from_slice(&(-libc::EPERM).to_ne_bytes());
        assert_eq!(
            parse_one(&err).unwrap_err().raw_os_error(),
            Some(libc::EPERM)
        );
    }

    #[test]
    fn the_one_socket_request_names_the_tuple() {
        let r = request_one(
            "10.10.1.1:80".parse().unwrap(),
            "10.10.1.2:40312".parse().unwrap(),
            7,
        )
        .unwrap();
        assert_eq!(r.len(), NLMSG_HDRLEN + 56);
        assert_eq!(u16_at(&r, 6), Some(NLM_F_REQUEST), "not a dump");
        let body = &r[NLMSG_HDRLEN..];
        assert_eq!(body[..3], [libc::AF_INET as u8, libc::IPPROTO_TCP as u8, 2]);
        assert_eq!(body[8..12], [0, 80, 0x9d, 0x78]);
        assert_eq!(body[12..16], [10, 10, 1, 1]);
        assert_eq!(body[28..32], [10, 10, 1, 2]);
        assert_eq!(u32_at(body, 48), Some(INET_DIAG_NOCOOKIE));
        assert!(
            request_one("10.0.0.1:1".parse().unwrap(), "[::1]:2".parse().unwrap(), 1).is_none()
        );
    }

    #[test]
    fn this_host_gives_the_tcp_info_of_a_connection_it_just_opened() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let info = tcp_info(c.local_addr().unwrap(), c.peer_addr().unwrap())
            .unwrap()
            .expect("our connection");
        assert_eq!(info.state, Some(1), "ESTABLISHED");
        assert!(
            info.pmtu.is_some_and(|p| p >= 1500),
            "loopback's MTU: {info:?}"
        );
        assert!(info.snd_mss.is_some_and(|m| m > 1000), "{info:?}");
        assert_eq!(info.total_retrans, Some(0));
        let gone = tcp_info(
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        assert!(gone.unwrap().is_none());
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
