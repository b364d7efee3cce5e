//! Prometheus text metrics of the tripwire (`--metrics ADDR:PORT`), so a fleet of LB hosts feeds
//! an existing Prometheus. Rendered from a snapshot the main loop takes; served over plain
//! HTTP/1.0 on `GET /metrics` and `GET /` only (anything else: 404 or 405), each scrape by a task
//! of its own with a deadline, so a slow scraper never stalls the main loop.
//!
//! Series stay bounded whatever the traffic: a VIP or backend given without a port gets its own
//! label for the first [`PORTS_PER_ADDR`] ports seen, and every later port is counted under
//! `ADDR:other` (a port scan must not create 65,535 series).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use lbtrace_common::EndpointStats;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc, oneshot},
};

use super::recorder::Accounting;
use crate::{endpoint::Watched, host, kernel::counters::Counters};

/// Distinct ports of one address that get a label of their own.
pub const PORTS_PER_ADDR: usize = 16;
/// Scrapes served at once; more wait in the kernel's accept queue.
const MAX_SCRAPERS: usize = 8;
/// The longest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// A scraper has this long to send its request, and again to take the answer.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// Assigns bounded labels to `ADDR:PORT` values: the first [`PORTS_PER_ADDR`] ports of an
/// address keep their own label for the life of the tripwire, later ones share `ADDR:other`.
#[derive(Debug, Default)]
pub struct Labels {
    ports: HashMap<IpAddr, BTreeSet<u16>>,
}

impl Labels {
    pub fn label(&mut self, sa: SocketAddr) -> String {
        let ports = self.ports.entry(sa.ip()).or_default();
        if ports.contains(&sa.port()) || ports.len() < PORTS_PER_ADDR {
            ports.insert(sa.port());
            return sa.to_string();
        }
        match sa.ip() {
            IpAddr::V4(a) => format!("{a}:other"),
            IpAddr::V6(a) => format!("[{a}]:other"),
        }
    }

    /// Sums `values` under their bounded labels (new addresses and ports in sorted order, so the
    /// first scrape assigns labels the same way every time).
    pub fn fold<K: Ord + Clone>(
        &mut self,
        values: impl IntoIterator<Item = ((SocketAddr, K), u64)>,
    ) -> BTreeMap<(String, K), u64> {
        let mut sorted: Vec<((SocketAddr, K), u64)> = values.into_iter().collect();
        sorted.sort_by(|a, b| (a.0.0, &a.0.1).cmp(&(b.0.0, &b.0.1)));
        let mut out = BTreeMap::new();
        for ((sa, k), n) in sorted {
            *out.entry((self.label(sa), k)).or_default() += n;
        }
        out
    }
}

/// Accepts scrapers until the listener fails; each gets a task. `snapshots` asks the main loop
/// for the rendered body.
pub async fn serve(listener: TcpListener, snapshots: mpsc::Sender<oneshot::Sender<String>>) {
    let slots = Arc::new(Semaphore::new(MAX_SCRAPERS));
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let snapshots = snapshots.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(SCRAPE_TIMEOUT * 2, scrape(stream, snapshots)).await;
            drop(permit);
        });
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Metrics,
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// Routes a request head: `GET /metrics` and `GET /` (a query string is ignored) are the metrics.
pub fn route(head: &[u8]) -> Route {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Route::BadRequest;
    };
    let path = target.split('?').next().unwrap_or_default();
    match (method, path) {
        ("GET" | "HEAD", "/metrics" | "/") => Route::Metrics,
        ("GET" | "HEAD", _) => Route::NotFound,
        _ => Route::MethodNotAllowed,
    }
}

async fn scrape(mut stream: TcpStream, snapshots: mpsc::Sender<oneshot::Sender<String>>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(SCRAPE_TIMEOUT, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let (status, body) = match (read, route(&head)) {
        (Err(_), _) => return,
        (_, Route::Metrics) => {
            let (tx, rx) = oneshot::channel();
            if snapshots.send(tx).await.is_err() {
                return;
            }
            match rx.await {
                Ok(body) => ("200 OK", body),
                Err(_) => return,
            }
        }
        (_, Route::NotFound) => (
            "404 Not Found",
            "not found: metrics are at /metrics\n".to_owned(),
        ),
        (_, Route::MethodNotAllowed) => ("405 Method Not Allowed", "only GET\n".to_owned()),
        (_, Route::BadRequest) => ("400 Bad Request", "bad request\n".to_owned()),
    };
    let is_head = head.starts_with(b"HEAD ");
    let resp = format!(
        "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = tokio::time::timeout(SCRAPE_TIMEOUT, async {
        let _ = stream.write_all(resp.as_bytes()).await;
        if !is_head {
            let _ = stream.write_all(body.as_bytes()).await;
        }
        let _ = stream.shutdown().await;
    })
    .await;
}

#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub connections: BTreeMap<String, u64>,
    /// (vip, step) -> failed connections.
    pub failures: BTreeMap<(String, u8), u64>,
    /// finding kind -> count.
    pub findings: BTreeMap<String, u64>,
    pub drops: BTreeMap<String, u64>,
    pub endpoints: Vec<(Watched, EndpointStats)>,
    pub counters: Counters,
    pub recorder: Accounting,
    /// Active alerts: key, step.
    pub active: Vec<(String, u8)>,
    /// Lines not written to stdout because its reader was too slow.
    pub output_dropped: u64,
    /// The LB host's own limits at the last sample.
    pub host: Option<host::Sample>,
    /// Each probed backend's last probe result (`fine`, `erroring`, `refused`, ...) and
    /// whether it connected.
    pub probes: BTreeMap<String, (&'static str, bool)>,
    /// `--data`: each backend's replies on the wire as last judged (`fine`, `erroring`, `slow`).
    pub replies: BTreeMap<String, &'static str>,
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

pub fn render(s: &Snapshot) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# HELP lbtrace_connections_total Client connections to the VIP seen by the tripwire.\n# TYPE lbtrace_connections_total counter"
    );
    for (vip, n) in &s.connections {
        let _ = writeln!(o, "lbtrace_connections_total{{vip=\"{}\"}} {n}", esc(vip));
    }
    let _ = writeln!(
        o,
        "# HELP lbtrace_connection_failures_total Failed client connections by the checklist step that failed.\n# TYPE lbtrace_connection_failures_total counter"
    );
    for ((vip, step), n) in &s.failures {
        let _ = writeln!(
            o,
            "lbtrace_connection_failures_total{{vip=\"{}\",step=\"{step}\"}} {n}",
            esc(vip)
        );
    }
    let _ = writeln!(
        o,
        "# HELP lbtrace_findings_total Findings by kind (and backend).\n# TYPE lbtrace_findings_total counter"
    );
    for (k, n) in &s.findings {
        let (kind, target) = k.split_once(':').unwrap_or((k, ""));
        let _ = writeln!(
            o,
            "lbtrace_findings_total{{kind=\"{}\",target=\"{}\"}} {n}",
            esc(kind),
            esc(target)
        );
    }
    let _ = writeln!(
        o,
        "# HELP lbtrace_kernel_drops_total Watched packets the kernel dropped, by drop reason.\n# TYPE lbtrace_kernel_drops_total counter"
    );
    for (r, n) in &s.drops {
        let _ = writeln!(o, "lbtrace_kernel_drops_total{{reason=\"{}\"}} {n}", esc(r));
    }
    let _ = writeln!(
        o,
        "# HELP lbtrace_packets_total Control packets per watched endpoint, counted in the kernel (exact even when events are lost).\n# TYPE lbtrace_packets_total counter"
    );
    for (w, st) in &s.endpoints {
        let role = format!("{:?}", w.role).to_lowercase();
        for (flag, n) in [
            ("syn", st.syn),
            ("syn_ack", st.syn_ack),
            ("rst", st.rst),
            ("fin", st.fin),
            ("icmp", st.icmp),
            ("drop", st.drops),
        ] {
            let _ = writeln!(
                o,
                "lbtrace_packets_total{{endpoint=\"{}\",role=\"{role}\",kind=\"{flag}\"}} {n}",
                esc(&w.endpoint.to_string())
            );
        }
    }
    let c = &s.counters;
    for (name, help, v) in [
        (
            "lbtrace_events_lost_total",
            "Kernel events lost because the ring buffer was full.",
            c.lost(),
        ),
        (
            "lbtrace_events_emitted_total",
            "Kernel events written to the ring buffers.",
            c.emitted(),
        ),
        (
            "lbtrace_packets_parsed_total",
            "Packets the TC/XDP programs looked at.",
            c.packets,
        ),
        (
            "lbtrace_parse_errors_total",
            "Packets whose headers could not be parsed.",
            c.parse_errors,
        ),
        (
            "lbtrace_recorder_evicted_total",
            "Connections evicted from the flight recorder (oldest first).",
            s.recorder.evicted,
        ),
        (
            "lbtrace_output_dropped_total",
            "Output lines dropped because the reader of stdout was too slow.",
            s.output_dropped,
        ),
    ] {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
    }
    for (name, help, v) in [
        (
            "lbtrace_recorder_entries",
            "Connections held by the flight recorder.",
            s.recorder.entries as u64,
        ),
        (
            "lbtrace_recorder_bytes",
            "Bytes held by the flight recorder (its own accounting).",
            s.recorder.bytes as u64,
        ),
        (
            "lbtrace_recorder_limit",
            "Connections the flight recorder keeps at most (--history).",
            s.recorder.limit as u64,
        ),
    ] {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    }
    if let Some(h) = &s.host {
        render_host(&mut o, h);
    }
    let _ = writeln!(
        o,
        "# HELP lbtrace_alert_active 1 while an alert is active.\n# TYPE lbtrace_alert_active gauge"
    );
    for (k, step) in &s.active {
        let _ = writeln!(
            o,
            "lbtrace_alert_active{{alert=\"{}\",step=\"{step}\"}} 1",
            esc(k)
        );
    }
    if !s.probes.is_empty() {
        let _ = writeln!(
            o,
            "# HELP lbtrace_backend_probe_up 1 when the last background probe of the backend connected; its result as a label.\n# TYPE lbtrace_backend_probe_up gauge"
        );
    }
    for (b, (r, up)) in &s.probes {
        let _ = writeln!(
            o,
            "lbtrace_backend_probe_up{{backend=\"{}\",result=\"{r}\"}} {}",
            esc(b),
            u8::from(*up)
        );
    }
    if !s.replies.is_empty() {
        let _ = writeln!(
            o,
            "# HELP lbtrace_backend_replies_fine 1 when the backend's latest replies on the wire (--data) are fine; their health as a label.\n# TYPE lbtrace_backend_replies_fine gauge"
        );
    }
    for (b, h) in &s.replies {
        let _ = writeln!(
            o,
            "lbtrace_backend_replies_fine{{backend=\"{}\",health=\"{h}\"}} {}",
            esc(b),
            u8::from(*h == "fine")
        );
    }
    o
}

/// The host's limits: accept queues of the VIP listeners, conntrack, local ports per backend, and
/// the kernel's own counters as counters.
fn render_host(o: &mut String, h: &host::Sample) {
    let gauge = |o: &mut String, name: &str, help: &str, v: fn(&host::Listen) -> u32| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge");
        for l in &h.listen {
            let _ = writeln!(o, "{name}{{listener=\"{}\"}} {}", l.listener, v(l));
        }
    };
    gauge(
        o,
        "lbtrace_host_listen_queue",
        "Connections waiting in a VIP listener's accept queue (ss Recv-Q).",
        |l| l.depth,
    );
    gauge(
        o,
        "lbtrace_host_listen_backlog",
        "A VIP listener's accept queue limit (ss Send-Q).",
        |l| l.backlog,
    );
    let _ = writeln!(
        o,
        "# HELP lbtrace_host_tcp_total The kernel's TCP counters (netstat TcpExt) that show an overflowing host.\n# TYPE lbtrace_host_tcp_total counter"
    );
    for (k, v) in &h.counters {
        let _ = writeln!(o, "lbtrace_host_tcp_total{{counter=\"{}\"}} {v}", esc(k));
    }
    if let Some(ct) = &h.conntrack {
        let _ = writeln!(
            o,
            "# HELP lbtrace_host_conntrack_entries Conntrack entries in use.\n# TYPE lbtrace_host_conntrack_entries gauge\nlbtrace_host_conntrack_entries {}",
            ct.count
        );
        let _ = writeln!(
            o,
            "# HELP lbtrace_host_conntrack_max Conntrack's limit (nf_conntrack_max).\n# TYPE lbtrace_host_conntrack_max gauge\nlbtrace_host_conntrack_max {}",
            ct.max
        );
        let _ = writeln!(
            o,
            "# HELP lbtrace_host_conntrack_stat_total Conntrack's statistics summed over the CPUs.\n# TYPE lbtrace_host_conntrack_stat_total counter"
        );
        for (k, v) in ct.stats.iter().filter(|(k, _)| k.as_str() != "entries") {
            let _ = writeln!(
                o,
                "lbtrace_host_conntrack_stat_total{{stat=\"{}\"}} {v}",
                esc(k)
            );
        }
    }
    let _ = writeln!(
        o,
        "# HELP lbtrace_host_ports_used Local ports in use from a source address toward a backend, by what holds them (sockets; conntrack: SNATed entries).\n# TYPE lbtrace_host_ports_used gauge"
    );
    for p in &h.ports {
        let _ = writeln!(
            o,
            "lbtrace_host_ports_used{{source=\"{}\",backend=\"{}\",by=\"{}\"}} {}",
            p.source,
            p.backend,
            ports_by(p.by),
            p.used
        );
    }
    let _ = writeln!(
        o,
        "# HELP lbtrace_host_ports_usable Ports usable per destination (sockets: ip_local_port_range minus reserved; conntrack: the SNAT range).\n# TYPE lbtrace_host_ports_usable gauge"
    );
    let usable: BTreeMap<&str, u32> = h.ports.iter().map(|p| (ports_by(p.by), p.usable)).collect();
    for (by, n) in usable {
        let _ = writeln!(o, "lbtrace_host_ports_usable{{by=\"{by}\"}} {n}");
    }
}

fn ports_by(b: host::PortsBy) -> &'static str {
    match b {
        host::PortsBy::Sockets => "sockets",
        host::PortsBy::Conntrack => "conntrack",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_health_per_backend_with_data() {
        let s = Snapshot {
            replies: BTreeMap::from([
                ("10.0.3.11:8080".to_owned(), "fine"),
                ("10.0.3.12:8080".to_owned(), "erroring"),
            ]),
            ..Snapshot::default()
        };
        let o = render(&s);
        assert!(o.contains(
            "lbtrace_backend_replies_fine{backend=\"10.0.3.11:8080\",health=\"fine\"} 1\n"
        ));
        assert!(o.contains(
            "lbtrace_backend_replies_fine{backend=\"10.0.3.12:8080\",health=\"erroring\"} 0\n"
        ));
        // Without --data: no series at all.
        assert!(!render(&Snapshot::default()).contains("lbtrace_backend_replies_fine"));
    }

    #[test]
    fn host_gauges_per_listener_and_port_use_by_what_holds_it() {
        let port = |by, used, usable| host::PortUse {
            source: "10.10.3.1".parse().unwrap(),
            backend: "10.10.3.11:8080".parse().unwrap(),
            used,
            usable,
            by,
            capped: false,
        };
        let h = host::Sample {
            listen: vec![host::Listen {
                listener: "10.10.2.10:80".parse().unwrap(),
                depth: 2,
                backlog: 1,
            }],
            ports: vec![
                port(host::PortsBy::Sockets, 3, 28232),
                port(host::PortsBy::Conntrack, 17, 20),
            ],
            ..host::Sample::default()
        };
        let mut o = String::new();
        render_host(&mut o, &h);
        for line in [
            "# TYPE lbtrace_host_listen_queue gauge",
            "lbtrace_host_listen_queue{listener=\"10.10.2.10:80\"} 2",
            "# TYPE lbtrace_host_listen_backlog gauge",
            "lbtrace_host_listen_backlog{listener=\"10.10.2.10:80\"} 1",
            "lbtrace_host_ports_used{source=\"10.10.3.1\",backend=\"10.10.3.11:8080\",by=\"sockets\"} 3",
            "lbtrace_host_ports_used{source=\"10.10.3.1\",backend=\"10.10.3.11:8080\",by=\"conntrack\"} 17",
            "lbtrace_host_ports_usable{by=\"sockets\"} 28232",
            "lbtrace_host_ports_usable{by=\"conntrack\"} 20",
        ] {
            assert!(o.lines().any(|l| l == line), "{line} not in\n{o}");
        }
    }

    #[test]
    fn only_get_metrics_and_root_are_served() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics
        );
        assert_eq!(route(b"GET / HTTP/1.0\r\n\r\n"), Route::Metrics);
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Route::Metrics);
        assert_eq!(route(b"GET /admin HTTP/1.0\r\n\r\n"), Route::NotFound);
        assert_eq!(
            route(b"GET /../etc/passwd HTTP/1.0\r\n\r\n"),
            Route::NotFound
        );
        assert_eq!(
            route(b"POST /metrics HTTP/1.0\r\n\r\n"),
            Route::MethodNotAllowed
        );
        assert_eq!(route(b""), Route::BadRequest);
        assert_eq!(route(b"\xff\xfe"), Route::BadRequest);
    }

    #[test]
    fn a_port_scan_creates_a_bounded_number_of_series() {
        let mut labels = Labels::default();
        let vip: IpAddr = "10.0.0.10".parse().unwrap();
        let opened = (1..=65_535u16).map(|p| ((SocketAddr::new(vip, p), ()), 1u64));
        let folded = labels.fold(opened);
        assert_eq!(folded.len(), PORTS_PER_ADDR + 1);
        assert_eq!(folded[&("10.0.0.10:other".to_owned(), ())], 65_535 - 16);
        assert_eq!(folded.values().sum::<u64>(), 65_535);
        // Labels, once given, stay: the first ports keep theirs on the next scrape.
        assert_eq!(labels.label(SocketAddr::new(vip, 1)), "10.0.0.10:1");
        assert_eq!(labels.label(SocketAddr::new(vip, 80)), "10.0.0.10:other");
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        for p in 0..100 {
            labels.label(SocketAddr::new(v6, p));
        }
        assert_eq!(
            labels.label(SocketAddr::new(v6, 443)),
            "[2001:db8::1]:other"
        );
    }
}
