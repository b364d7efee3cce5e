//! The TLS phase: a rustls client handshake (ring provider, TLS 1.2 and 1.3, ALPN
//! `http/1.1`) over the connected stream, like `openssl s_client`.
//!
//! The certificate verifier records instead of judging: it runs rustls's
//! [`WebPkiServerVerifier`] built from the system roots (`rustls-native-certs`), notes the
//! verdict — [`TlsReport::trusted`], [`TlsReport::name_matches`], [`TlsReport::verify_error`],
//! the chain with expiry ([`CertInfo`]) — and always accepts, so the probe goes on to HTTP. An
//! untrusted, expired or misnamed certificate is a finding, not a probe failure. The handshake's
//! signatures are still verified with the provider's algorithms.
//!
//! `name_matches` is checked on the leaf directly (webpki's `verify_is_valid_for_subject_name`)
//! rather than read off the chain verification's error, because webpki stops at the first
//! failure: for an untrusted chain (UnknownIssuer) it never gets to the name.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{WebPkiServerVerifier, verify_server_name};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, PeerIncompatible,
    ProtocolVersion, RootCertStore, SignatureScheme,
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::{CertInfo, TlsOutcome, TlsReport, TlsSpec, describe_io, ms_between};
use crate::render::Clock;

/// The crypto provider of every probe: ring.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The webpki verifier over the system roots, loaded once. `None` when no root loads.
fn system_verifier() -> Option<Arc<WebPkiServerVerifier>> {
    static VERIFIER: OnceLock<Option<Arc<WebPkiServerVerifier>>> = OnceLock::new();
    VERIFIER
        .get_or_init(|| {
            let loaded = rustls_native_certs::load_native_certs();
            for e in &loaded.errors {
                log::debug!("loading system root certificates: {e}");
            }
            let mut roots = RootCertStore::empty();
            let (added, ignored) = roots.add_parsable_certificates(loaded.certs);
            log::debug!("system root certificates: {added} loaded, {ignored} unparsable");
            if added == 0 {
                log::warn!("no system root certificate loaded: TLS probes cannot judge trust");
                return None;
            }
            verifier_for(Arc::new(roots))
        })
        .clone()
}

fn verifier_for(roots: Arc<RootCertStore>) -> Option<Arc<WebPkiServerVerifier>> {
    match WebPkiServerVerifier::builder_with_provider(roots, provider()).build() {
        Ok(v) => Some(v),
        Err(e) => {
            log::warn!("building the certificate verifier: {e}");
            None
        }
    }
}

/// Handshakes over `stream` and reports. The stream comes back when the handshake completed
/// (whatever the certificate verdict).
pub async fn handshake(
    stream: TcpStream,
    target: SocketAddr,
    spec: &TlsSpec,
    timeout: Duration,
) -> (TlsReport, Option<TlsStream<TcpStream>>) {
    handshake_with(stream, target, spec, timeout, system_verifier()).await
}

async fn handshake_with(
    stream: TcpStream,
    target: SocketAddr,
    spec: &TlsSpec,
    timeout: Duration,
    webpki: Option<Arc<WebPkiServerVerifier>>,
) -> (TlsReport, Option<TlsStream<TcpStream>>) {
    let mut report = TlsReport {
        outcome: TlsOutcome::Ok,
        version: None,
        cipher: None,
        alpn: None,
        handshake_ms: None,
        chain: Vec::new(),
        name_matches: None,
        trusted: None,
        verify_error: None,
    };

    // With an SNI: that name (an IP literal becomes an IP name, sent without SNI, as rustls
    // does). Without: the target's IP, no SNI.
    let server_name: ServerName<'static> = match &spec.sni {
        Some(name) => match ServerName::try_from(name.clone()) {
            Ok(n) => n,
            Err(e) => {
                report.outcome = TlsOutcome::Error {
                    error: format!("invalid SNI name {name:?}: {e}"),
                };
                return (report, None);
            }
        },
        None => ServerName::IpAddress(target.ip().into()),
    };

    let seen = Arc::new(Mutex::new(Seen::default()));
    let verifier = RecordingVerifier {
        webpki,
        provider: provider(),
        judge_name: spec.sni.is_some(),
        seen: seen.clone(),
    };
    let config = match ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
    {
        Ok(b) => {
            let mut c = b
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth();
            c.alpn_protocols = vec![b"http/1.1".to_vec()];
            c
        }
        Err(e) => {
            report.outcome = TlsOutcome::Error {
                error: format!("TLS client configuration: {e}"),
            };
            return (report, None);
        }
    };

    let connector = TlsConnector::from(Arc::new(config));
    let start_ns = Clock::monotonic_ns();
    let res = tokio::time::timeout(timeout, connector.connect(server_name, stream)).await;
    let after_ms = ms_between(start_ns, Clock::monotonic_ns());

    let seen = std::mem::take(&mut *seen.lock().unwrap_or_else(|p| p.into_inner()));
    report.chain = seen.chain;
    report.trusted = seen.trusted;
    report.name_matches = seen.name_matches;
    report.verify_error = seen.verify_error;

    match res {
        Ok(Ok(tls)) => {
            let (_, conn) = tls.get_ref();
            report.version = conn.protocol_version().map(version_name);
            report.cipher = conn.negotiated_cipher_suite().map(|s| {
                let suite = s.suite();
                suite
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("{suite:?}"))
            });
            report.alpn = conn
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned());
            report.handshake_ms = Some(after_ms);
            (report, Some(tls))
        }
        Ok(Err(e)) => {
            report.outcome = classify(&e, after_ms);
            (report, None)
        }
        Err(_elapsed) => {
            report.outcome = TlsOutcome::Timeout { after_ms };
            (report, None)
        }
    }
}

/// A failed handshake as an outcome.
fn classify(e: &std::io::Error, after_ms: f64) -> TlsOutcome {
    if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return classify_rustls(tls);
    }
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => TlsOutcome::Closed { after_ms },
        _ => match e.raw_os_error() {
            Some(libc::ECONNRESET) => TlsOutcome::Reset { after_ms },
            Some(libc::EPIPE) => TlsOutcome::Closed { after_ms },
            _ => TlsOutcome::Error {
                error: describe_io(e),
            },
        },
    }
}

fn classify_rustls(e: &rustls::Error) -> TlsOutcome {
    match e {
        rustls::Error::AlertReceived(AlertDescription::ProtocolVersion) => {
            TlsOutcome::Unsupported {
                why: "the server refused TLS 1.2 and 1.3 (protocol_version alert): it likely \
                      speaks only TLS <= 1.1, which the probe does not offer"
                    .into(),
            }
        }
        rustls::Error::AlertReceived(a) => TlsOutcome::Alert {
            alert: alert_name(*a),
        },
        rustls::Error::PeerIncompatible(p) => TlsOutcome::Unsupported {
            why: match p {
                PeerIncompatible::ServerDoesNotSupportTls12Or13 => {
                    "the server chose a TLS version older than 1.2, which the probe does not \
                     offer"
                        .into()
                }
                other => format!("the server offers nothing the probe accepts: {other:?}"),
            },
        },
        rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => {
            TlsOutcome::Error {
                error: format!("the server did not answer with TLS ({e})"),
            }
        }
        other => TlsOutcome::Error {
            error: other.to_string(),
        },
    }
}

fn version_name(v: ProtocolVersion) -> String {
    match v {
        ProtocolVersion::TLSv1_3 => "TLSv1.3".into(),
        ProtocolVersion::TLSv1_2 => "TLSv1.2".into(),
        ProtocolVersion::TLSv1_1 => "TLSv1.1".into(),
        ProtocolVersion::TLSv1_0 => "TLSv1.0".into(),
        other => format!("{other:?}"),
    }
}

/// The IANA name of a TLS alert ("handshake_failure").
pub fn alert_name(a: AlertDescription) -> String {
    let code = u8::from(a);
    let name = match code {
        0 => "close_notify",
        10 => "unexpected_message",
        20 => "bad_record_mac",
        21 => "decryption_failed",
        22 => "record_overflow",
        30 => "decompression_failure",
        40 => "handshake_failure",
        41 => "no_certificate",
        42 => "bad_certificate",
        43 => "unsupported_certificate",
        44 => "certificate_revoked",
        45 => "certificate_expired",
        46 => "certificate_unknown",
        47 => "illegal_parameter",
        48 => "unknown_ca",
        49 => "access_denied",
        50 => "decode_error",
        51 => "decrypt_error",
        60 => "export_restriction",
        70 => "protocol_version",
        71 => "insufficient_security",
        80 => "internal_error",
        86 => "inappropriate_fallback",
        90 => "user_canceled",
        100 => "no_renegotiation",
        109 => "missing_extension",
        110 => "unsupported_extension",
        111 => "certificate_unobtainable",
        112 => "unrecognized_name",
        113 => "bad_certificate_status_response",
        114 => "bad_certificate_hash_value",
        115 => "unknown_psk_identity",
        116 => "certificate_required",
        120 => "no_application_protocol",
        121 => "ech_required",
        _ => return format!("alert_{code}"),
    };
    name.to_string()
}

/// What the verifier saw, read back after the handshake.
#[derive(Debug, Default)]
struct Seen {
    chain: Vec<CertInfo>,
    trusted: Option<bool>,
    name_matches: Option<bool>,
    verify_error: Option<String>,
}

/// Records webpki's verdict and accepts every certificate (see the module docs).
#[derive(Debug)]
struct RecordingVerifier {
    /// `None`: no system roots, trust is not judged.
    webpki: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
    /// An SNI was given: report whether the leaf matches it.
    judge_name: bool,
    seen: Arc<Mutex<Seen>>,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut seen = Seen {
            chain: std::iter::once(end_entity)
                .chain(intermediates)
                .map(|c| cert_info(c, now))
                .collect(),
            ..Seen::default()
        };
        if self.judge_name {
            seen.name_matches = ParsedCertificate::try_from(end_entity)
                .ok()
                .map(|leaf| verify_server_name(&leaf, server_name).is_ok());
        }
        match &self.webpki {
            None => {
                seen.verify_error =
                    Some("no system root certificate loaded: trust not checked".into());
            }
            Some(webpki) => match webpki.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ) {
                Ok(_) => seen.trusted = Some(true),
                // webpki checks the name last: the chain itself is trusted.
                Err(
                    e @ rustls::Error::InvalidCertificate(
                        CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. },
                    ),
                ) => {
                    seen.trusted = Some(true);
                    if self.judge_name {
                        seen.name_matches = Some(false);
                        seen.verify_error = Some(e.to_string());
                    }
                }
                Err(e) => {
                    seen.trusted = Some(false);
                    seen.verify_error = Some(e.to_string());
                }
            },
        }
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = seen;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Subject, issuer, SANs and validity of one certificate; `now` decides `expired`.
fn cert_info(der: &CertificateDer<'_>, now: UnixTime) -> CertInfo {
    use x509_parser::extensions::GeneralName;

    let cert = match x509_parser::parse_x509_certificate(der.as_ref()) {
        Ok((_, cert)) => cert,
        Err(e) => {
            return CertInfo {
                subject: format!("(unparsable certificate: {e})"),
                issuer: String::new(),
                sans: Vec::new(),
                not_before: String::new(),
                not_after: String::new(),
                expired: false,
            };
        }
    };
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(d) => sans.push((*d).to_string()),
                GeneralName::IPAddress(b) => {
                    if let Ok(a) = <[u8; 4]>::try_from(*b) {
                        sans.push(std::net::Ipv4Addr::from(a).to_string());
                    } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                        sans.push(std::net::Ipv6Addr::from(a).to_string());
                    }
                }
                _ => {}
            }
        }
    }
    let validity = cert.validity();
    let not_after = validity.not_after.timestamp();
    CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        sans,
        not_before: rfc3339(validity.not_before.timestamp()),
        not_after: rfc3339(not_after),
        expired: i64::try_from(now.as_secs()).is_ok_and(|now| not_after < now),
    }
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use rustls::ServerConfig;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::TlsAcceptor;

    use super::*;
    use crate::probe::test_util::{TIMEOUT, accept, listener, read_head};
    use crate::probe::{HttpOutcome, HttpSpec, ProbeSpec, TcpOutcome, run};

    struct TestCert {
        der: CertificateDer<'static>,
        key: Vec<u8>,
    }

    fn cert(name: &str, expired: bool) -> TestCert {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        if expired {
            params.not_before = time::OffsetDateTime::from_unix_timestamp(946_684_800).unwrap(); // 2000
            params.not_after = time::OffsetDateTime::from_unix_timestamp(978_307_200).unwrap(); // 2001
        }
        let cert = params.self_signed(&key).unwrap();
        TestCert {
            der: cert.der().clone(),
            key: key.serialize_der(),
        }
    }

    fn server_config(
        c: &TestCert,
        versions: &[&'static rustls::SupportedProtocolVersion],
        alpn: &[&[u8]],
    ) -> Arc<ServerConfig> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.key.clone()));
        let mut cfg = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![c.der.clone()], key)
            .unwrap();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    }

    /// A TLS server answering one HTTP request with 200.
    async fn tls_server(cfg: Arc<ServerConfig>) -> SocketAddr {
        let (l, addr) = listener().await;
        tokio::spawn(async move {
            let tcp = accept(&l).await;
            let Ok(mut tls) = TlsAcceptor::from(cfg).accept(tcp).await else {
                return;
            };
            read_head(&mut tls).await;
            let _ = tls
                .write_all(b"HTTP/1.1 200 OK\r\nServer: tls-tiny\r\nContent-Length: 0\r\n\r\n")
                .await;
            let _ = tls.shutdown().await;
        });
        addr
    }

    fn spec(target: SocketAddr, sni: Option<&str>, http: bool) -> ProbeSpec {
        ProbeSpec {
            target,
            timeout: TIMEOUT,
            tls: Some(TlsSpec {
                sni: sni.map(str::to_string),
            }),
            http: http.then(|| HttpSpec {
                path: "/".into(),
                host: "lbtrace.test".into(),
            }),
        }
    }

    fn tls_of(r: &crate::probe::ProbeReport) -> &TlsReport {
        r.tls.as_ref().expect("a TLS report")
    }

    #[tokio::test]
    async fn self_signed_tls13_with_http() {
        let c = cert("lbtrace.test", false);
        let addr = tls_server(server_config(
            &c,
            &[&rustls::version::TLS13],
            &[b"http/1.1"],
        ))
        .await;
        let r = run(&spec(addr, Some("lbtrace.test"), true)).await;
        assert!(matches!(r.tcp, TcpOutcome::Connected { .. }), "{r:?}");
        let t = tls_of(&r);
        assert_eq!(t.outcome, TlsOutcome::Ok, "{t:?}");
        assert_eq!(t.version.as_deref(), Some("TLSv1.3"));
        assert!(t.cipher.as_deref().is_some_and(|c| c.starts_with("TLS13_")));
        assert_eq!(t.alpn.as_deref(), Some("http/1.1"));
        assert!(t.handshake_ms.is_some());
        assert_eq!(t.name_matches, Some(true));
        // Self-signed: not trusted by the system roots (unknown when none load here).
        if system_verifier().is_some() {
            assert_eq!(t.trusted, Some(false), "{t:?}");
            assert!(t.verify_error.as_deref().unwrap().contains("UnknownIssuer"));
        } else {
            assert_eq!(t.trusted, None);
        }
        assert_eq!(t.chain.len(), 1);
        assert!(t.chain[0].sans.iter().any(|s| s == "lbtrace.test"));
        assert_eq!(t.chain[0].subject, "CN=lbtrace.test");
        assert!(!t.chain[0].expired);
        match &r.http {
            Some(HttpOutcome::Response { status, server, .. }) => {
                assert_eq!(*status, 200);
                assert_eq!(server.as_deref(), Some("tls-tiny"));
            }
            other => panic!("{other:?}"),
        }
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["tls"]["outcome"]["result"], "ok");
        assert_eq!(v["tls"]["version"], "TLSv1.3");
        assert_eq!(v["http"]["status"], 200);
    }

    #[tokio::test]
    async fn wrong_name_is_reported_not_fatal() {
        let c = cert("lbtrace.test", false);
        let addr = tls_server(server_config(&c, &[&rustls::version::TLS13], &[])).await;
        let r = run(&spec(addr, Some("other.test"), true)).await;
        let t = tls_of(&r);
        assert_eq!(t.outcome, TlsOutcome::Ok);
        assert_eq!(t.name_matches, Some(false));
        assert_eq!(t.alpn, None);
        assert!(matches!(
            r.http,
            Some(HttpOutcome::Response { status: 200, .. })
        ));
    }

    #[tokio::test]
    async fn no_sni_no_name_verdict() {
        let c = cert("lbtrace.test", false);
        let addr = tls_server(server_config(&c, &[&rustls::version::TLS13], &[])).await;
        let r = run(&spec(addr, None, false)).await;
        let t = tls_of(&r);
        assert_eq!(t.outcome, TlsOutcome::Ok);
        assert_eq!(t.name_matches, None);
        assert!(r.http.is_none());
    }

    /// With the certificate itself as the only root: trusted, and a name mismatch does not
    /// make the chain untrusted.
    #[tokio::test]
    async fn trusted_with_known_root() {
        let c = cert("lbtrace.test", false);
        let mut roots = RootCertStore::empty();
        roots.add(c.der.clone()).unwrap();
        let webpki = verifier_for(Arc::new(roots));
        assert!(webpki.is_some());
        for (sni, name_ok) in [("lbtrace.test", true), ("other.test", false)] {
            let addr = tls_server(server_config(&c, &[&rustls::version::TLS13], &[])).await;
            let tcp = TcpStream::connect(addr).await.unwrap();
            let spec = TlsSpec {
                sni: Some(sni.into()),
            };
            let (t, s) = handshake_with(tcp, addr, &spec, TIMEOUT, webpki.clone()).await;
            assert!(s.is_some());
            assert_eq!(t.outcome, TlsOutcome::Ok);
            assert_eq!(t.trusted, Some(true), "{t:?}");
            assert_eq!(t.name_matches, Some(name_ok), "{t:?}");
            assert_eq!(t.verify_error.is_some(), !name_ok, "{t:?}");
        }
    }

    #[tokio::test]
    async fn expired_is_reported_not_fatal() {
        let c = cert("lbtrace.test", true);
        let mut roots = RootCertStore::empty();
        roots.add(c.der.clone()).unwrap();
        let webpki = verifier_for(Arc::new(roots));
        let addr = tls_server(server_config(&c, &[&rustls::version::TLS13], &[])).await;
        let tcp = TcpStream::connect(addr).await.unwrap();
        let spec = TlsSpec {
            sni: Some("lbtrace.test".into()),
        };
        let (t, s) = handshake_with(tcp, addr, &spec, TIMEOUT, webpki).await;
        assert!(s.is_some());
        assert_eq!(t.outcome, TlsOutcome::Ok);
        assert_eq!(t.trusted, Some(false));
        assert!(t.chain[0].expired);
        assert_eq!(t.chain[0].not_after, "2001-01-01T00:00:00Z");
        assert!(
            t.verify_error.as_deref().unwrap().contains("xpired"),
            "{t:?}"
        );
    }

    #[tokio::test]
    async fn tls12_only_server() {
        let c = cert("lbtrace.test", false);
        let addr = tls_server(server_config(
            &c,
            &[&rustls::version::TLS12],
            &[b"http/1.1"],
        ))
        .await;
        let r = run(&spec(addr, Some("lbtrace.test"), true)).await;
        let t = tls_of(&r);
        assert_eq!(t.outcome, TlsOutcome::Ok, "{t:?}");
        assert_eq!(t.version.as_deref(), Some("TLSv1.2"));
        assert!(
            t.cipher
                .as_deref()
                .is_some_and(|c| c.starts_with("TLS_ECDHE_"))
        );
        assert!(matches!(
            r.http,
            Some(HttpOutcome::Response { status: 200, .. })
        ));
    }

    #[tokio::test]
    async fn alert_from_server() {
        // The server insists on h2; the probe offers only http/1.1.
        let c = cert("lbtrace.test", false);
        let addr = tls_server(server_config(&c, &[&rustls::version::TLS13], &[b"h2"])).await;
        let r = run(&spec(addr, Some("lbtrace.test"), true)).await;
        let t = tls_of(&r);
        assert_eq!(
            t.outcome,
            TlsOutcome::Alert {
                alert: "no_application_protocol".into()
            }
        );
        assert!(r.http.is_none());
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["tls"]["outcome"]["result"], "alert");
        assert_eq!(v["tls"]["outcome"]["alert"], "no_application_protocol");
    }

    #[tokio::test]
    async fn protocol_version_alert_is_unsupported() {
        // What a TLS 1.0-only server answers to a ClientHello offering 1.2 and 1.3.
        let (l, addr) = listener().await;
        tokio::spawn(async move {
            let mut s = accept(&l).await;
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(&[0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 70]).await;
        });
        let r = run(&spec(addr, Some("lbtrace.test"), true)).await;
        let t = tls_of(&r);
        assert_eq!(t.outcome.name(), "unsupported", "{t:?}");
        assert!(r.http.is_none());
    }

    #[tokio::test]
    async fn plain_server_answers_garbage() {
        let (l, addr) = listener().await;
        tokio::spawn(async move {
            let mut s = accept(&l).await;
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                .await;
        });
        let r = run(&spec(addr, Some("lbtrace.test"), true)).await;
        let t = tls_of(&r);
        assert_eq!(t.outcome.name(), "error", "{t:?}");
        assert!(t.chain.is_empty());
        assert!(r.http.is_none());
    }

    #[tokio::test]
    async fn plain_server_closes() {
        let (l, addr) = listener().await;
        tokio::spawn(async move {
            let mut s = accept(&l).await;
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.shutdown().await;
            tokio::time::sleep(Duration::from_secs(2)).await;
        });
        let r = run(&spec(addr, Some("lbtrace.test"), false)).await;
        let t = tls_of(&r);
        assert!(matches!(t.outcome, TlsOutcome::Closed { .. }), "{t:?}");
    }

    #[tokio::test]
    async fn plain_server_resets() {
        let (l, addr) = listener().await;
        tokio::spawn(async move {
            let mut s = accept(&l).await;
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            s.set_zero_linger().unwrap();
        });
        let r = run(&spec(addr, Some("lbtrace.test"), false)).await;
        let t = tls_of(&r);
        assert!(matches!(t.outcome, TlsOutcome::Reset { .. }), "{t:?}");
    }

    #[tokio::test]
    async fn silent_server_times_out() {
        let (l, addr) = listener().await;
        tokio::spawn(async move {
            let _s = accept(&l).await;
            tokio::time::sleep(Duration::from_secs(10)).await;
        });
        let mut sp = spec(addr, None, true);
        sp.timeout = Duration::from_millis(300);
        let r = run(&sp).await;
        let t = tls_of(&r);
        assert!(matches!(t.outcome, TlsOutcome::Timeout { .. }), "{t:?}");
        assert!(r.http.is_none());
    }

    #[test]
    fn alert_names() {
        assert_eq!(
            alert_name(AlertDescription::HandshakeFailure),
            "handshake_failure"
        );
        assert_eq!(
            alert_name(AlertDescription::UnrecognisedName),
            "unrecognized_name"
        );
        assert_eq!(alert_name(AlertDescription::Unknown(200)), "alert_200");
    }
}
