//! Active probes, run from the load-balancer host the way an engineer would with `telnet`,
//! `openssl s_client` and `GET /`: a TCP connect, optionally a TLS handshake, optionally one
//! HTTP/1.1 request whose response head is read.
//!
//! Every outcome the network can produce — refused, reset, timeout, alert, a hang — is *data*
//! ([`TcpOutcome`], [`TlsOutcome`], [`HttpOutcome`]), never an `Err`: [`run`] always returns a
//! [`ProbeReport`]. All timestamps are CLOCK_MONOTONIC ns ([`Clock::monotonic_ns`]), the clock of
//! the kernel's `bpf_ktime_get_ns`, so probe steps order with the kernel events of the same flow;
//! the flow is recognisable by [`ProbeReport::local`], whose port is known before the SYN leaves.
//!
//! # Files
//! - `mod.rs`: the spec and report types, [`run`] (the phases in order), shared helpers.
//! - `tcp.rs`: socket creation, bind-before-connect (local port known even when the connect
//!   fails), connect under a timeout, errno → [`TcpOutcome`].
//! - `tls.rs`: rustls client (ring provider, system roots) with a recording verifier that always
//!   accepts, like `s_client`: trust, name match and the chain are findings in [`TlsReport`].
//! - `http.rs`: one `GET` with `Connection: close`, response head read with `httparse`
//!   (at most 64 KiB, the body is not waited for) → [`HttpOutcome`].
//!
//! # Timeouts
//! [`ProbeSpec::timeout`] bounds each phase separately (connect, TLS handshake, HTTP response
//! head), so a hang is attributed to the phase that hung; a whole probe takes at most three
//! times the timeout. A later phase runs only when the earlier one succeeded: `tls`/`http` are
//! `None` when not asked for or not reached.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use crate::render::Clock;

pub mod http;
pub mod series;
pub mod tcp;
pub mod tls;

/// What to probe.
#[derive(Debug, Clone)]
pub struct ProbeSpec {
    pub target: SocketAddr,
    /// Bounds each phase (connect, TLS handshake, HTTP response head) separately.
    pub timeout: Duration,
    /// Do a TLS handshake after the connect.
    pub tls: Option<TlsSpec>,
    /// Send one HTTP/1.1 request (over TLS when `tls` is set).
    pub http: Option<HttpSpec>,
}

#[derive(Debug, Clone, Default)]
pub struct TlsSpec {
    /// SNI and the name the certificate is checked against. `None`: no SNI (the target is an
    /// IP), and [`TlsReport::name_matches`] stays `None`.
    pub sni: Option<String>,
}

#[derive(Debug, Clone)]
pub struct HttpSpec {
    pub path: String,
    /// The `Host:` header value.
    pub host: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    pub target: SocketAddr,
    /// The probe socket's own address. Bound before the connect, so the port is known even when
    /// the connect fails (the IP is then the unspecified address); after a successful connect,
    /// the real local address.
    pub local: Option<SocketAddr>,
    /// CLOCK_MONOTONIC ns when the SYN was about to be sent.
    pub started_ns: u64,
    /// CLOCK_MONOTONIC ns when the last phase ended.
    pub ended_ns: u64,
    pub tcp: TcpOutcome,
    /// `None`: TLS not asked for, or the connect failed.
    pub tls: Option<TlsReport>,
    /// `None`: HTTP not asked for, or an earlier phase failed.
    pub http: Option<HttpOutcome>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum TcpOutcome {
    Connected {
        connect_ms: f64,
    },
    /// RST in answer to the SYN (ECONNREFUSED; also an ICMP port unreachable).
    Refused {
        after_ms: f64,
    },
    /// No answer within the timeout (or the kernel gave up retrying the SYN first).
    Timeout {
        after_ms: f64,
    },
    /// ICMP host/network unreachable or no route, e.g. "no route to host (EHOSTUNREACH)".
    Unreachable {
        after_ms: f64,
        why: String,
    },
    /// Anything else (including local failures: socket, bind, EPERM from a firewall).
    Error {
        error: String,
    },
}

impl TcpOutcome {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Connected { .. } => "connected",
            Self::Refused { .. } => "refused",
            Self::Timeout { .. } => "timeout",
            Self::Unreachable { .. } => "unreachable",
            Self::Error { .. } => "error",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TlsReport {
    pub outcome: TlsOutcome,
    /// "TLSv1.3" / "TLSv1.2", when the handshake completed.
    pub version: Option<String>,
    /// e.g. "TLS13_AES_256_GCM_SHA384".
    pub cipher: Option<String>,
    /// The ALPN protocol the server chose (we offer only "http/1.1").
    pub alpn: Option<String>,
    pub handshake_ms: Option<f64>,
    /// The certificates the server sent, leaf first. Recorded as soon as they arrive, so they
    /// are known even when the handshake fails afterwards.
    pub chain: Vec<CertInfo>,
    /// Whether the leaf is valid for the SNI name. Only reported when an SNI was given; checked
    /// on the leaf itself, so it is known even when the chain is not trusted.
    pub name_matches: Option<bool>,
    /// Whether the chain verifies against the system roots (webpki: signatures, validity dates,
    /// key usage). A name mismatch alone does not make it false. `None`: no system roots could
    /// be loaded, or no certificate was seen.
    pub trusted: Option<bool>,
    /// The verifier's complaint, if any (a name mismatch is reported only when an SNI was given).
    pub verify_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum TlsOutcome {
    /// The handshake completed (whatever the certificate verdict: see [`TlsReport::trusted`]).
    Ok,
    /// The server sent a fatal alert, e.g. "handshake_failure", "unrecognized_name".
    Alert {
        alert: String,
    },
    /// RST during the handshake.
    Reset {
        after_ms: f64,
    },
    /// The server closed the connection during the handshake.
    Closed {
        after_ms: f64,
    },
    Timeout {
        after_ms: f64,
    },
    /// The server speaks only what rustls refuses (TLS <= 1.1, no common cipher suite or group):
    /// a limit of the probe, not a failure of the load balancer.
    Unsupported {
        why: String,
    },
    Error {
        error: String,
    },
}

impl TlsOutcome {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Alert { .. } => "alert",
            Self::Reset { .. } => "reset",
            Self::Closed { .. } => "closed",
            Self::Timeout { .. } => "timeout",
            Self::Unsupported { .. } => "unsupported",
            Self::Error { .. } => "error",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    /// DNS names and IP addresses of the subjectAltName extension.
    pub sans: Vec<String>,
    /// RFC 3339.
    pub not_before: String,
    /// RFC 3339.
    pub not_after: String,
    /// `not_after` is in the past (wall clock).
    pub expired: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum HttpOutcome {
    /// A complete response head. `ttfb_ms`: from the request written to the first byte read.
    Response {
        status: u16,
        reason: String,
        ttfb_ms: f64,
        server: Option<String>,
    },
    /// RST after the request was sent; `after_ms` since the request was written.
    Reset { after_ms: f64 },
    /// The server closed the connection without sending a single byte.
    Closed { after_ms: f64 },
    /// No complete response head within the timeout.
    Hang { after_ms: f64 },
    /// Anything else: a malformed or oversized head, a connection closed mid-head, a TLS error.
    Error { error: String },
}

impl HttpOutcome {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Response { .. } => "response",
            Self::Reset { .. } => "reset",
            Self::Closed { .. } => "closed",
            Self::Hang { .. } => "hang",
            Self::Error { .. } => "error",
        }
    }
}

/// Runs the probe: connect, then TLS and HTTP as asked. Never fails: every network outcome is
/// in the report.
pub async fn run(spec: &ProbeSpec) -> ProbeReport {
    let conn = tcp::connect(spec.target, spec.timeout).await;
    let mut report = ProbeReport {
        target: spec.target,
        local: conn.local,
        started_ns: conn.started_ns,
        ended_ns: conn.ended_ns,
        tcp: conn.outcome,
        tls: None,
        http: None,
    };
    let Some(stream) = conn.stream else {
        return report;
    };

    match &spec.tls {
        Some(tls_spec) => {
            let (tls_report, tls_stream) =
                tls::handshake(stream, spec.target, tls_spec, spec.timeout).await;
            report.tls = Some(tls_report);
            if let (Some(mut s), Some(http_spec)) = (tls_stream, &spec.http) {
                report.http = Some(http::get(&mut s, http_spec, spec.timeout).await);
            }
        }
        None => {
            if let Some(http_spec) = &spec.http {
                let mut stream = stream;
                report.http = Some(http::get(&mut stream, http_spec, spec.timeout).await);
            }
        }
    }
    report.ended_ns = Clock::monotonic_ns();
    report
}

/// Milliseconds between two CLOCK_MONOTONIC readings, to the microsecond.
pub(crate) fn ms_between(from_ns: u64, to_ns: u64) -> f64 {
    (to_ns.saturating_sub(from_ns) / 1_000) as f64 / 1_000.0
}

/// Milliseconds from `from_ns` to now.
pub(crate) fn ms_since(from_ns: u64) -> f64 {
    ms_between(from_ns, Clock::monotonic_ns())
}

/// "no route to host (EHOSTUNREACH)" for the errnos a probe meets; otherwise the io error.
/// Whether a probe's error says it found no free local port: EADDRNOTAVAIL from the connect, or
/// EADDRINUSE from binding port 0 (every port of the local range in use). Read from the words
/// [`describe_io`] gives those errnos, so it holds for every outcome built with them.
pub fn no_local_port(error: &str) -> bool {
    error.contains("(EADDRNOTAVAIL)")
        || (error.starts_with("bind ") && error.contains("(EADDRINUSE)"))
}

pub(crate) fn describe_io(e: &io::Error) -> String {
    let Some(code) = e.raw_os_error() else {
        return e.to_string();
    };
    let (what, name) = match code {
        libc::ECONNREFUSED => ("connection refused", "ECONNREFUSED"),
        libc::ECONNRESET => ("connection reset by peer", "ECONNRESET"),
        libc::ECONNABORTED => ("connection aborted", "ECONNABORTED"),
        libc::EHOSTUNREACH => ("no route to host", "EHOSTUNREACH"),
        libc::ENETUNREACH => ("network unreachable", "ENETUNREACH"),
        libc::EHOSTDOWN => ("host is down", "EHOSTDOWN"),
        libc::ENETDOWN => ("network is down", "ENETDOWN"),
        libc::ETIMEDOUT => ("timed out", "ETIMEDOUT"),
        libc::EADDRNOTAVAIL => ("cannot assign requested address", "EADDRNOTAVAIL"),
        libc::EADDRINUSE => ("address in use", "EADDRINUSE"),
        libc::EPERM => ("operation not permitted", "EPERM"),
        libc::EACCES => ("permission denied", "EACCES"),
        libc::EPIPE => ("broken pipe", "EPIPE"),
        libc::EMFILE => ("too many open files", "EMFILE"),
        libc::EPROTO => ("protocol error", "EPROTO"),
        _ => return e.to_string(),
    };
    format!("{what} ({name})")
}

#[cfg(test)]
pub(crate) mod test_util {
    use std::net::SocketAddr;
    use std::time::Duration;

    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    pub const TIMEOUT: Duration = Duration::from_millis(800);

    pub async fn listener() -> (TcpListener, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        (l, addr)
    }

    /// Reads until the end of a request head ("\r\n\r\n"), EOF or error.
    pub async fn read_head<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        got
    }

    pub async fn accept(l: &TcpListener) -> TcpStream {
        l.accept().await.unwrap().0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape() {
        let r = ProbeReport {
            target: "192.0.2.1:443".parse().unwrap(),
            local: Some("0.0.0.0:40000".parse().unwrap()),
            started_ns: 1,
            ended_ns: 2,
            tcp: TcpOutcome::Unreachable {
                after_ms: 1.5,
                why: "no route to host (EHOSTUNREACH)".into(),
            },
            tls: Some(TlsReport {
                outcome: TlsOutcome::Ok,
                version: None,
                cipher: None,
                alpn: None,
                handshake_ms: None,
                chain: vec![],
                name_matches: None,
                trusted: None,
                verify_error: None,
            }),
            http: Some(HttpOutcome::Hang { after_ms: 3.0 }),
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["tcp"]["result"], "unreachable");
        assert_eq!(v["tcp"]["why"], "no route to host (EHOSTUNREACH)");
        assert_eq!(v["tls"]["outcome"]["result"], "ok");
        assert_eq!(v["http"]["result"], "hang");
        assert_eq!(v["local"], "0.0.0.0:40000");
        assert_eq!(r.tcp.name(), "unreachable");
    }

    #[test]
    fn errno_names() {
        let e = io::Error::from_raw_os_error(libc::EHOSTUNREACH);
        assert_eq!(describe_io(&e), "no route to host (EHOSTUNREACH)");
        let e = io::Error::from_raw_os_error(libc::ENETUNREACH);
        assert_eq!(describe_io(&e), "network unreachable (ENETUNREACH)");
    }

    #[test]
    fn ms() {
        assert_eq!(ms_between(0, 1_234_567), 1.234);
        assert_eq!(ms_between(5, 1), 0.0);
    }
}
