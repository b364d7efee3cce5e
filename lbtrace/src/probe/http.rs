//! The HTTP phase: one `GET` with `Connection: close` over the connected stream (plain TCP or
//! TLS), then the response head is read — with `httparse`, at most 64 KiB, without waiting for
//! the body — and mapped to an [`HttpOutcome`]. Time to first byte and every `after_ms` count
//! from the moment the request was written.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::{HttpOutcome, HttpSpec, describe_io, ms_between, ms_since};
use crate::render::Clock;

/// The most of a response the probe reads.
pub const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 128;

/// The request bytes for `spec`.
pub fn request(spec: &HttpSpec) -> String {
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: lbtrace/{}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        spec.path,
        spec.host,
        env!("CARGO_PKG_VERSION")
    )
}

/// Sends the request and reads the response head; `timeout` bounds the whole exchange.
pub async fn get<S>(stream: &mut S, spec: &HttpSpec, timeout: Duration) -> HttpOutcome
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let deadline = Instant::now() + timeout;
    let req = request(spec);

    let write_ns = Clock::monotonic_ns();
    let written = tokio::time::timeout_at(deadline, async {
        stream.write_all(req.as_bytes()).await?;
        stream.flush().await
    })
    .await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return failed_write(&e, ms_since(write_ns)),
        Err(_) => {
            return HttpOutcome::Hang {
                after_ms: ms_since(write_ns),
            };
        }
    }
    let sent_ns = Clock::monotonic_ns();

    let mut got: Vec<u8> = Vec::new();
    let mut first_byte_ns = None;
    let mut buf = vec![0u8; 8 * 1024];
    loop {
        let room = (MAX_HEAD - got.len()).min(buf.len());
        let read = tokio::time::timeout_at(deadline, stream.read(&mut buf[..room])).await;
        let n = match read {
            Err(_) => {
                return HttpOutcome::Hang {
                    after_ms: ms_since(sent_ns),
                };
            }
            Ok(Ok(0)) => return closed(got.len(), ms_since(sent_ns)),
            Ok(Ok(n)) => n,
            // rustls: the peer closed without close_notify. Still an end of stream.
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return closed(got.len(), ms_since(sent_ns));
            }
            Ok(Err(e)) if e.raw_os_error() == Some(libc::ECONNRESET) => {
                return HttpOutcome::Reset {
                    after_ms: ms_since(sent_ns),
                };
            }
            Ok(Err(e)) => {
                return HttpOutcome::Error {
                    error: format!("read: {}", describe_io(&e)),
                };
            }
        };
        first_byte_ns.get_or_insert_with(Clock::monotonic_ns);
        got.extend_from_slice(&buf[..n]);

        loop {
            match parse_head(&got) {
                Head::Partial => break,
                Head::Bad(error) => return HttpOutcome::Error { error },
                // 1xx (e.g. 103 Early Hints) precede the real response: skip them.
                Head::Informational(len) => {
                    got.drain(..len);
                }
                Head::Complete {
                    status,
                    reason,
                    server,
                } => {
                    return HttpOutcome::Response {
                        status,
                        reason,
                        ttfb_ms: ms_between(sent_ns, first_byte_ns.unwrap_or(sent_ns)),
                        server,
                    };
                }
            }
        }
        if got.len() >= MAX_HEAD {
            return HttpOutcome::Error {
                error: format!("response head larger than {} KiB", MAX_HEAD / 1024),
            };
        }
    }
}

fn failed_write(e: &io::Error, after_ms: f64) -> HttpOutcome {
    match e.raw_os_error() {
        Some(libc::ECONNRESET) => HttpOutcome::Reset { after_ms },
        Some(libc::EPIPE) => HttpOutcome::Closed { after_ms },
        _ => HttpOutcome::Error {
            error: format!("write: {}", describe_io(e)),
        },
    }
}

/// End of stream after `len` bytes of a head that did not complete.
fn closed(len: usize, after_ms: f64) -> HttpOutcome {
    if len == 0 {
        HttpOutcome::Closed { after_ms }
    } else {
        HttpOutcome::Error {
            error: format!("connection closed after {len} bytes of an incomplete response head"),
        }
    }
}

enum Head {
    Partial,
    Bad(String),
    /// A 1xx head of this many bytes.
    Informational(usize),
    Complete {
        status: u16,
        reason: String,
        server: Option<String>,
    },
}

fn parse_head(bytes: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(bytes) {
        Ok(httparse::Status::Partial) => Head::Partial,
        Err(e) => Head::Bad(format!("malformed response head: {e}")),
        Ok(httparse::Status::Complete(len)) => {
            let status = resp.code.unwrap_or(0);
            if (100..200).contains(&status) && status != 101 {
                return Head::Informational(len);
            }
            let server = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("server"))
                .map(|h| String::from_utf8_lossy(h.value).trim().to_string());
            Head::Complete {
                status,
                reason: resp.reason.unwrap_or("").to_string(),
                server,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::probe::test_util::{TIMEOUT, accept, listener, read_head};
    use crate::probe::{ProbeSpec, TcpOutcome, run};

    fn spec(target: SocketAddr, timeout: Duration) -> ProbeSpec {
        ProbeSpec {
            target,
            timeout,
            tls: None,
            http: Some(HttpSpec {
                path: "/healthz".into(),
                host: "lbtrace.test".into(),
            }),
        }
    }

    #[test]
    fn request_bytes() {
        let r = request(&HttpSpec {
            path: "/".into(),
            host: "example.test".into(),
        });
        assert_eq!(
            r,
            format!(
                "GET / HTTP/1.1\r\nHost: example.test\r\nUser-Agent: lbtrace/{}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
                env!("CARGO_PKG_VERSION")
            )
        );
    }

    #[tokio::test]
    async fn response_200() {
        let (l, addr) = listener().await;
        let server = tokio::spawn(async move {
            let mut s = accept(&l).await;
            let req = read_head(&mut s).await;
            // Head in two writes, then a body the probe need not wait for.
            s.write_all(b"HTTP/1.1 200 OK\r\nServer: tiny/1.0\r\n")
                .await
                .unwrap();
            s.write_all(b"Content-Length: 1000000\r\n\r\npartial body")
                .await
                .unwrap();
            // Keep the connection open: the probe must not wait for the body.
            tokio::time::sleep(Duration::from_secs(5)).await;
            req
        });
        let r = run(&spec(addr, TIMEOUT)).await;
        assert!(matches!(r.tcp, TcpOutcome::Connected { .. }), "{r:?}");
        match r.http.as_ref().expect("http outcome") {
            HttpOutcome::Response {
                status,
                reason,
                server,
                ttfb_ms,
            } => {
                assert_eq!(*status, 200);
                assert_eq!(reason, "OK");
                assert_eq!(server.as_deref(), Some("tiny/1.0"));
                assert!(*ttfb_ms >= 0.0);
            }
            other => panic!("expected a response, got {other:?}"),
        }
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["http"]["result"], "response");
        assert_eq!(v["http"]["status"], 200);
        server.abort();
        let _ = server.await;
    }

    #[tokio::test]
    async fn informational_then_final() {
        let (l, addr) = listener().await;
        tokio::spawn(async move {
            let mut s = accept(&l).await;
            read_head(&mut s).await;
            s.write_all(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 503 Service Unavailable\r\n\r\n")
                .await
                .unwrap();
        });
        let r = run(&spec(addr, TIMEOUT)).await;
        match r.http {
            Some(HttpOutcome::Response {
                status,
                ref reason,
                ref server,
                ..
            }) => {
                assert_eq!(status, 503);
                assert_eq!(reason, "Service Unavailable");
                assert_eq!(*server, None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn reset_after_request() {
        let (l, addr) = listener().await;
        let server = tokio::spawn(async move {
            let s = accept(&l).await;
            let mut s = s;
            let req = read_head(&mut s).await;
            s.set_zero_linger().unwrap();
            drop(s); // RST
            req
        });
        let r = run(&spec(addr, TIMEOUT)).await;
        let req = server.await.unwrap();
        assert!(req.starts_with(b"GET /healthz HTTP/1.1\r\nHost: lbtrace.test\r\n"));
        assert!(
            matches!(r.http, Some(HttpOutcome::Reset { .. })),
            "{:?}",
            r.http
        );
    }

    #[tokio::test]
    async fn closed_without_response() {
        let (l, addr) = listener().await;
        tokio::spawn(async move {
            let mut s = accept(&l).await;
            read_head(&mut s).await;
            s.shutdown().await.unwrap(); // FIN
            tokio::time::sleep(Duration::from_secs(2)).await;
        });
        let r = run(&spec(addr, TIMEOUT)).await;
        assert!(
            matches!(r.http, Some(HttpOutcome::Closed { .. })),
            "{:?}",
            r.http
        );
    }

    #[tokio::test]
    async fn closed_mid_head_is_an_error() {
        let (l, addr) = listener().await;
        tokio::spawn(async move {
            let mut s = accept(&l).await;
            read_head(&mut s).await;
            s.write_all(b"HTTP/1.1 200 OK\r\nServ").await.unwrap();
        });
        let r = run(&spec(addr, TIMEOUT)).await;
        assert!(
            matches!(r.http, Some(HttpOutcome::Error { .. })),
            "{:?}",
            r.http
        );
    }

    #[tokio::test]
    async fn garbage_is_an_error() {
        let (l, addr) = listener().await;
        tokio::spawn(async move {
            let mut s = accept(&l).await;
            read_head(&mut s).await;
            s.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await.unwrap();
        });
        let r = run(&spec(addr, TIMEOUT)).await;
        assert!(
            matches!(r.http, Some(HttpOutcome::Error { .. })),
            "{:?}",
            r.http
        );
    }

    #[tokio::test]
    async fn hang() {
        let (l, addr) = listener().await;
        let server = tokio::spawn(async move {
            let mut s = accept(&l).await;
            read_head(&mut s).await;
            // Never answer.
            tokio::time::sleep(Duration::from_secs(10)).await;
        });
        let r = run(&spec(addr, Duration::from_millis(500))).await;
        assert!(
            matches!(r.http, Some(HttpOutcome::Hang { .. })),
            "{:?}",
            r.http
        );
        assert!(r.started_ns < r.ended_ns);
        server.abort();
    }
}
