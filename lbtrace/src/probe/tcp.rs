//! The TCP phase: create the socket, bind it to the unspecified address with port 0 so the
//! kernel assigns the local port *before* the SYN (the probe's flow is identifiable in kernel
//! events even when the connect fails), then connect under a timeout and map the errno to a
//! [`TcpOutcome`].
//!
//! SYN retransmissions are the kernel's (`net.ipv4.tcp_syn_retries`, default 6 ≈ 127 s); the
//! timeout bounds them.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};

use super::{TcpOutcome, describe_io, ms_between};
use crate::render::Clock;

/// The result of [`connect`].
#[derive(Debug)]
pub struct Connect {
    pub outcome: TcpOutcome,
    /// The connected stream, when `outcome` is `Connected`.
    pub stream: Option<TcpStream>,
    /// Unspecified IP + assigned port before the connect; the real local address after it.
    pub local: Option<SocketAddr>,
    /// CLOCK_MONOTONIC ns just before the connect (the SYN).
    pub started_ns: u64,
    pub ended_ns: u64,
}

/// Connects to `target`, bounded by `timeout`. Never fails: errors are outcomes.
pub async fn connect(target: SocketAddr, timeout: Duration) -> Connect {
    let mut local = None;
    let socket = match bind_any(target) {
        Ok(s) => s,
        Err(e) => {
            let now = Clock::monotonic_ns();
            return Connect {
                outcome: TcpOutcome::Error { error: e },
                stream: None,
                local,
                started_ns: now,
                ended_ns: now,
            };
        }
    };
    local = socket.local_addr().ok();

    let started_ns = Clock::monotonic_ns();
    let res = tokio::time::timeout(timeout, socket.connect(target)).await;
    let ended_ns = Clock::monotonic_ns();
    let after_ms = ms_between(started_ns, ended_ns);

    let (outcome, stream) = match res {
        Ok(Ok(stream)) => {
            if let Ok(addr) = stream.local_addr() {
                local = Some(addr);
            }
            // Probes are tiny request/response exchanges: do not let Nagle delay the request.
            let _ = stream.set_nodelay(true);
            (
                TcpOutcome::Connected {
                    connect_ms: after_ms,
                },
                Some(stream),
            )
        }
        Ok(Err(e)) => (classify(&e, after_ms), None),
        Err(_elapsed) => (TcpOutcome::Timeout { after_ms }, None),
    };
    Connect {
        outcome,
        stream,
        local,
        started_ns,
        ended_ns,
    }
}

/// A socket of the target's family, bound to the unspecified address, port 0.
fn bind_any(target: SocketAddr) -> Result<TcpSocket, String> {
    let (socket, any) = match target {
        SocketAddr::V4(_) => (
            TcpSocket::new_v4(),
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        ),
        SocketAddr::V6(_) => (
            TcpSocket::new_v6(),
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
        ),
    };
    let socket = socket.map_err(|e| format!("socket: {}", describe_io(&e)))?;
    socket
        .bind(any)
        .map_err(|e| format!("bind {any}: {}", describe_io(&e)))?;
    Ok(socket)
}

/// A failed connect as an outcome.
fn classify(e: &io::Error, after_ms: f64) -> TcpOutcome {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => TcpOutcome::Refused { after_ms },
        // The kernel gave up retransmitting the SYN before our timeout did.
        Some(libc::ETIMEDOUT) => TcpOutcome::Timeout { after_ms },
        Some(libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EHOSTDOWN | libc::ENETDOWN) => {
            TcpOutcome::Unreachable {
                after_ms,
                why: describe_io(e),
            }
        }
        // EADDRNOTAVAIL, EPERM (a local firewall), ...: a condition of this host, not a
        // verdict on the path.
        _ => TcpOutcome::Error {
            error: format!("connect: {}", describe_io(e)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::test_util::{TIMEOUT, accept, listener};
    use crate::probe::{ProbeSpec, run};

    fn spec(target: SocketAddr) -> ProbeSpec {
        ProbeSpec {
            target,
            timeout: TIMEOUT,
            tls: None,
            http: None,
        }
    }

    #[tokio::test]
    async fn connected() {
        let (l, addr) = listener().await;
        let server = tokio::spawn(async move { accept(&l).await });
        let r = run(&spec(addr)).await;
        assert_eq!(r.tcp.name(), "connected", "{r:?}");
        let local = r.local.expect("local address");
        assert_eq!(local.ip(), addr.ip());
        assert_ne!(local.port(), 0);
        // The server sees the probe's address as its peer.
        let peer = server.await.unwrap().peer_addr().unwrap();
        assert_eq!(peer, local);
        assert!(r.started_ns <= r.ended_ns);
        assert!(r.tls.is_none() && r.http.is_none());
    }

    #[tokio::test]
    async fn refused() {
        let (l, addr) = listener().await;
        drop(l);
        let r = run(&spec(addr)).await;
        assert!(matches!(r.tcp, TcpOutcome::Refused { .. }), "{r:?}");
        assert_eq!(r.tcp.name(), "refused");
        // The port was assigned before the connect, even though the connect failed.
        let local = r.local.expect("local address known before connect");
        assert!(local.ip().is_unspecified());
        assert_ne!(local.port(), 0);
        assert!(r.started_ns <= r.ended_ns);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["tcp"]["result"], "refused");
    }

    #[test]
    fn unreachable_errnos() {
        let e = io::Error::from_raw_os_error(libc::EHOSTUNREACH);
        assert_eq!(
            classify(&e, 1.0),
            TcpOutcome::Unreachable {
                after_ms: 1.0,
                why: "no route to host (EHOSTUNREACH)".into()
            }
        );
        let e = io::Error::from_raw_os_error(libc::ENETUNREACH);
        assert_eq!(classify(&e, 1.0).name(), "unreachable");
        let e = io::Error::from_raw_os_error(libc::ETIMEDOUT);
        assert_eq!(classify(&e, 1.0).name(), "timeout");
        // No free local port: the check's source-port evidence.
        let e = io::Error::from_raw_os_error(libc::EADDRNOTAVAIL);
        let TcpOutcome::Error { error } = classify(&e, 1.0) else {
            panic!("EADDRNOTAVAIL is an error outcome")
        };
        assert!(crate::probe::no_local_port(&error), "{error}");
        let any = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
        let e = io::Error::from_raw_os_error(libc::EADDRINUSE);
        assert!(crate::probe::no_local_port(&format!(
            "bind {any}: {}",
            describe_io(&e)
        )));
        let e = io::Error::from_raw_os_error(libc::EPERM);
        assert!(!crate::probe::no_local_port(&describe_io(&e)));
        assert_eq!(
            classify(&e, 1.0),
            TcpOutcome::Error {
                error: "connect: operation not permitted (EPERM)".into()
            }
        );
    }
}
