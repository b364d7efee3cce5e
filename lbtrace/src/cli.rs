//! Command-line interface (clap derive). Doc comments are the help text.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    endpoint::Endpoint,
    probe::{HttpSpec, ProbeSpec, TlsSpec},
    render::Format,
};

/// lbtrace: proof, from the load balancer's own kernel, of where connections to a VIP fail.
///
/// With no subcommand, lbtrace runs `watch`, the tripwire.
#[derive(Debug, Parser)]
#[command(
    name = "lbtrace",
    version,
    after_help = "Examples:\n  lbtrace --vip 10.0.0.10:443 --backend 10.0.1.11:8443 --backend 10.0.1.12:8443\n  lbtrace check --vip 10.0.0.10:80 --backend 10.0.1.11:8080",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub watch: WatchArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The low-overhead tripwire, left running: alerts per checklist step, a flight recorder of
    /// correlated connections (read it with `lbtrace dump`), health lines, Prometheus metrics.
    #[command(
        after_help = "Examples:\n  lbtrace watch --vip 10.0.0.10:80 --backend 10.0.1.11:8080 --backend 10.0.1.12:8080\n  lbtrace watch --vip 10.0.0.10 --format json --metrics 127.0.0.1:9465 --on-alert 'logger -t lbtrace'"
    )]
    Watch(WatchArgs),
    /// The tripwire's recorded, correlated history, on demand.
    #[command(
        after_help = "Examples:\n  lbtrace dump --failed --since 10m\n  lbtrace dump --backend 10.0.1.12:8080 --last 20 --pcap /root/lb-evidence.pcap"
    )]
    Dump(DumpArgs),
    /// The live event stream: every SYN, SYN-ACK, RST and FIN of the VIPs' and backends'
    /// connections, ICMP errors about them and kernel drops with the drop reason.
    #[command(
        after_help = "Examples:\n  lbtrace trace --vip 10.0.0.10:80 --backend 10.0.1.11:8080\n  lbtrace trace --vip 10.0.0.10 --iface eth0 --format json --duration 30s"
    )]
    Trace(TraceArgs),
    /// The 4-step checklist, once: client -> LB, LB handling (L4/L7), LB -> each backend, return
    /// path; each verdict backed by the packets and kernel drop reasons that prove it.
    #[command(
        after_help = "Examples:\n  lbtrace check --vip 10.0.0.10:80 --backend 10.0.1.11:8080 --backend 10.0.1.12:8080\n  lbtrace check --vip 10.0.0.10:443 --tls --sni shop.example --client 192.0.2.7 --observe 60s"
    )]
    Check(CheckArgs),
    /// What this kernel and host support, before anyone trusts lbtrace on a production box.
    #[command(after_help = "Examples:\n  lbtrace doctor\n  lbtrace doctor --format json")]
    Doctor(DoctorArgs),
    /// Removes what a killed lbtrace left attached (legacy TC filters, and the clsact qdiscs it
    /// created, on kernels without TCX) and says what it removed.
    Cleanup,
}

const SECOND: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (e.g. 30s, 5m, 1h)"))
}

/// A duration parser that refuses values outside `min..=max`: zero where it makes no sense, and
/// anything past a sane maximum (which would overflow a deadline and panic later).
fn duration_in(
    min: Duration,
    max: Duration,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |s| {
        let d = parse_duration(s)?;
        if d < min || d > max {
            return Err(format!(
                "{s}: must be from {} to {}",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ));
        }
        Ok(d)
    }
}

/// [`duration_in`], and also `0` (a feature turned off).
fn zero_or_duration_in(
    min: Duration,
    max: Duration,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    let within = duration_in(min, max);
    move |s| match parse_duration(s)? {
        Duration::ZERO => Ok(Duration::ZERO),
        _ => within(s).map_err(|e| format!("{e}, or 0 (off)")),
    }
}

/// A count parser for `min..=max`.
fn count_in<T>(min: T, max: T) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy + Send + Sync + 'static,
{
    move |s| {
        let n: T = s
            .parse()
            .map_err(|_| format!("{s:?} is not a whole number"))?;
        if n < min || n > max {
            return Err(format!("{n}: must be from {min} to {max}"));
        }
        Ok(n)
    }
}

fn parse_ring_mib(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of MiB"))?;
    if !(1..=1024).contains(&n) || !n.is_power_of_two() {
        return Err(format!(
            "{n} MiB: the ring size must be a power of two from 1 to 1024 MiB"
        ));
    }
    Ok(n)
}

/// Which endpoints and interfaces to watch, and how.
#[derive(Debug, Clone, Args)]
pub struct FilterArgs {
    /// A virtual service, ADDR:PORT or ADDR (every port). Repeat for several VIPs.
    #[arg(long, value_name = "ADDR[:PORT]", required = true)]
    pub vip: Vec<Endpoint>,
    /// A backend (real server) of the VIPs, ADDR:PORT or ADDR. Repeat for each backend.
    #[arg(long, value_name = "ADDR[:PORT]")]
    pub backend: Vec<Endpoint>,
    /// Interface to trace (repeat). Default: the interfaces that carry the VIPs' and backends'
    /// traffic in this network namespace (their addresses and routes).
    #[arg(long, value_name = "NAME")]
    pub iface: Vec<String>,
    /// Trace ingress with XDP instead of TCX (sees packets before the stack; changes the
    /// interface's offloads: see README). Never replaces an XDP program already attached.
    #[arg(long)]
    pub xdp: bool,
    /// Data-path mode: also follow data segments of watched tuples (first byte each way with
    /// the time to first byte and a reply's HTTP status code, retransmissions, data after FIN),
    /// with per-flow state in the kernel (docs/output.md). `watch` alerts on backends whose
    /// replies on the wire are slow or 5xx (replies_slow / replies_erroring).
    #[arg(long)]
    pub data: bool,
    /// Packet-event records in MiB, split evenly over the online CPUs, one ring each (at least 256
    /// records).
    #[arg(long, value_name = "MIB", default_value_t = DEFAULT_RING_MIB, value_parser = parse_ring_mib)]
    pub ring_size: u32,
}

/// `--ring-size`'s default, and the ring size of `check` (which has no such option).
pub const DEFAULT_RING_MIB: u32 = 8;

#[derive(Debug, Clone, Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Output format: tcpdump-like text lines, or one JSON object per line (docs/output.md).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Stop after this long (e.g. 30s, 5m; at most 365 days). Default: until SIGINT / SIGTERM /
    /// SIGHUP.
    #[arg(long, value_name = "DUR", value_parser = duration_in(Duration::from_millis(1), 365 * DAY))]
    pub duration: Option<Duration>,
    /// Create this file (0600) once every program is attached and the signal handlers are in
    /// place (for scripts and tests). Never written through a symbolic link.
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// The virtual service to check, ADDR:PORT (one per check).
    #[arg(long, value_name = "ADDR:PORT")]
    pub vip: Endpoint,
    /// A backend of the VIP, ADDR:PORT. Repeat for each backend.
    #[arg(long, value_name = "ADDR:PORT")]
    pub backend: Vec<Endpoint>,
    /// Count only this client's connections as client evidence (on a busy VIP, your own telnet).
    #[arg(long, value_name = "ADDR[:PORT]")]
    pub client: Option<Endpoint>,
    /// Interface to trace (repeat). Default: those carrying the VIP's and backends' traffic.
    #[arg(long, value_name = "NAME")]
    pub iface: Vec<String>,
    /// Trace ingress with XDP instead of TCX.
    #[arg(long)]
    pub xdp: bool,
    /// Data-path mode: follow data segments too (step 3: each backend's replies on the wire,
    /// slow or 5xx; step 4: forwarded retransmissions).
    #[arg(long)]
    pub data: bool,
    #[command(flatten)]
    pub probe: ProbeArgs,
    /// How long to watch for client connections (ends early once every step passes; 1s to 24h).
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = duration_in(SECOND, 24 * HOUR))]
    pub observe: Duration,
    /// Probes of each backend and of the VIP (1 to 10), one after the other 200 ms apart, so one
    /// slow answer is not a verdict: min / median / max connect time and time to first byte.
    /// Targets are probed in parallel: the probes take at most N x 3 x --probe-timeout + (N - 1)
    /// x 200 ms (27.4 s with the defaults), however many backends.
    #[arg(long, value_name = "N", default_value = "3", value_parser = count_in(1u32, 10))]
    pub probe_count: u32,
    /// Output format: a report to read, or one JSON object (docs/output.md).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Save the control packets captured during the check as a pcap file (tcpdump, Wireshark;
    /// mode 0600, never written through a symbolic link).
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,
    /// Create this file (0600) once every program is attached.
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub trace: TraceArgs,
    /// The Unix socket `lbtrace dump` reads from (default: /run/lbtrace/watch-<netns inode>.sock).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Connections the flight recorder keeps (oldest evicted first; 1 to 1,000,000). Each costs
    /// at most 4.2 KiB (typically about 1.3 KiB): the default bounds the recorder at 42 MiB.
    #[arg(long, value_name = "N", default_value = "10000", value_parser = count_in(1usize, 1_000_000))]
    pub history: usize,
    /// Also print every event, as `trace` does.
    #[arg(long)]
    pub events: bool,
    /// Run this shell command for each alert, with the alert as JSON on stdin: at most 6 a
    /// minute and 4 at a time (other alerts are skipped and counted); its output goes to
    /// lbtrace's stderr, prefixed; it is stopped after --on-alert-timeout and when lbtrace stops.
    #[arg(long, value_name = "CMD")]
    pub on_alert: Option<String>,
    /// How long an --on-alert command may run before SIGTERM (then SIGKILL 2 s later).
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = duration_in(SECOND, 24 * HOUR))]
    pub on_alert_timeout: Duration,
    /// Serve Prometheus text metrics on this address (e.g. 127.0.0.1:9465), on GET /metrics.
    /// Anyone who reaches it reads the VIPs, backends and alerts: keep it on loopback.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Findings of one kind within --alert-window that raise an alert (1 to 1,000,000).
    #[arg(long, value_name = "N", default_value = "3", value_parser = count_in(1u32, 1_000_000))]
    pub alert_count: u32,
    /// The window over which findings are counted (1s to 24h).
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = duration_in(SECOND, 24 * HOUR))]
    pub alert_window: Duration,
    /// An alert recovers after this long without a finding of its kind (1s to 7 days).
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = duration_in(SECOND, 7 * DAY))]
    pub recover_after: Duration,
    /// How often to print the one-line health summary per VIP (1s to 24h).
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = duration_in(SECOND, 24 * HOUR))]
    pub health_interval: Duration,
    /// How often the LB host probes each backend and the VIP itself (the probe `check` runs:
    /// TCP connect, TLS with --tls, `GET --http-path`), so the tripwire knows each backend's state
    /// when no client connects, when a failure leaves no packet (no route), and when a backend
    /// connects but answers errors, drops, hangs or is slow (judged over its last 3 probes); 0
    /// turns the probes off (1s to 24h, or 0).
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = zero_or_duration_in(SECOND, 24 * HOUR))]
    pub probe_interval: Duration,
    #[command(flatten)]
    pub probe: ProbeArgs,
}

/// How `check` and `watch` probe the backends and the VIP from the LB host.
#[derive(Debug, Clone, Args)]
pub struct ProbeArgs {
    /// The VIP speaks TLS: probe it with a TLS handshake (rustls), then HTTP over TLS.
    #[arg(long)]
    pub tls: bool,
    /// Server name for the TLS probe (SNI and certificate name check).
    #[arg(long, value_name = "NAME")]
    pub sni: Option<String>,
    /// Path of the HTTP probe request.
    #[arg(long, value_name = "PATH", default_value = "/")]
    pub http_path: String,
    /// Host header of the HTTP probe (default: the SNI name, else the address).
    #[arg(long, value_name = "NAME")]
    pub host: Option<String>,
    /// TCP (and TLS) probes only, no HTTP request.
    #[arg(long)]
    pub no_http: bool,
    /// Timeout of each probe (connect, TLS handshake, HTTP response; 10ms to 10m).
    #[arg(long, value_name = "DUR", default_value = "3s", value_parser = duration_in(Duration::from_millis(10), Duration::from_secs(600)))]
    pub probe_timeout: Duration,
    /// A target whose median connect time or time to first byte is past this is slow: a warning
    /// at step 3 for a backend, at step 2 for the VIP when every backend is fine (1ms to 10m).
    #[arg(long, value_name = "DUR", default_value = "1s", value_parser = duration_in(Duration::from_millis(1), Duration::from_secs(600)))]
    pub slow: Duration,
}

impl ProbeArgs {
    /// The probe of `target` (the VIP: `is_vip`): TLS only towards the VIP (a TLS-terminating
    /// LB speaks plain HTTP to its backends), HTTP unless `--no-http`, with the Host header
    /// `--host`, else the SNI name for the VIP, else the address.
    pub fn spec(&self, target: SocketAddr, is_vip: bool) -> ProbeSpec {
        let host = self
            .host
            .clone()
            .unwrap_or_else(|| match self.sni.as_ref() {
                Some(s) if is_vip => s.clone(),
                _ => target.ip().to_string(),
            });
        ProbeSpec {
            target,
            timeout: self.probe_timeout,
            tls: (is_vip && self.tls).then(|| TlsSpec {
                sni: self.sni.clone(),
            }),
            http: (!self.no_http).then(|| HttpSpec {
                path: self.http_path.clone(),
                host,
            }),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct DumpArgs {
    /// The tripwire's socket (default: the one of this network namespace).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Output format: timelines to read, or one JSON object per connection.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Only the last N connections (1 to 1,000,000).
    #[arg(long, value_name = "N", value_parser = count_in(1usize, 1_000_000))]
    pub last: Option<usize>,
    /// Only connections active within this long (e.g. 5m; at most 365 days).
    #[arg(long, value_name = "DUR", value_parser = duration_in(Duration::from_millis(1), 365 * DAY))]
    pub since: Option<Duration>,
    /// Only connections of this client.
    #[arg(long, value_name = "ADDR[:PORT]")]
    pub client: Option<Endpoint>,
    /// Only connections whose backend leg goes to this backend.
    #[arg(long, value_name = "ADDR[:PORT]")]
    pub backend: Option<Endpoint>,
    /// Only failed connections.
    #[arg(long)]
    pub failed: bool,
    /// Also write the recorded control packets to this pcap file (0600, never through a link).
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("lbtrace").chain(args.iter().copied()))
    }

    #[test]
    fn durations_and_counts_out_of_range_are_refused_up_front() {
        for bad in [
            &["watch", "--vip", "10.0.0.1:80", "--health-interval", "0s"][..],
            &["watch", "--vip", "10.0.0.1:80", "--alert-window", "0s"],
            &[
                "watch",
                "--vip",
                "10.0.0.1:80",
                "--recover-after",
                "300000000000y",
            ],
            &["watch", "--vip", "10.0.0.1:80", "--history", "0"],
            &["watch", "--vip", "10.0.0.1:80", "--probe-interval", "500ms"],
            &[
                "watch",
                "--vip",
                "10.0.0.1:80",
                "--probe-interval",
                "300000000000y",
            ],
            &["watch", "--vip", "10.0.0.1:80", "--probe-timeout", "0s"],
            &["watch", "--vip", "10.0.0.1:80", "--slow", "0s"],
            &["watch", "--vip", "10.0.0.1:80", "--alert-count", "0"],
            &["watch", "--vip", "10.0.0.1:80", "--on-alert-timeout", "0s"],
            &[
                "check",
                "--vip",
                "10.0.0.1:80",
                "--observe",
                "300000000000y",
            ],
            &[
                "check",
                "--vip",
                "10.0.0.1:80",
                "--probe-timeout",
                "300000000000y",
            ],
            &["check", "--vip", "10.0.0.1:80", "--probe-timeout", "0s"],
            &["check", "--vip", "10.0.0.1:80", "--probe-count", "0"],
            &["check", "--vip", "10.0.0.1:80", "--probe-count", "11"],
            &["check", "--vip", "10.0.0.1:80", "--slow", "0s"],
            &["trace", "--vip", "10.0.0.1:80", "--duration", "0s"],
            &["dump", "--last", "0"],
            &["dump", "--since", "300000000000y"],
        ] {
            let e = parse(bad).expect_err(&format!("{bad:?} was accepted"));
            assert_eq!(e.exit_code(), 2, "{bad:?}");
            let msg = e.to_string();
            assert!(
                msg.contains("must be from") || msg.contains("invalid"),
                "{bad:?}: {msg}"
            );
        }
    }

    #[test]
    fn sane_values_are_accepted() {
        let cli = parse(&[
            "watch",
            "--vip",
            "10.0.0.1:80",
            "--health-interval",
            "1s",
            "--history",
            "1",
            "--on-alert-timeout",
            "5m",
        ])
        .unwrap();
        let Some(Command::Watch(w)) = cli.command else {
            panic!("not watch")
        };
        assert_eq!(w.history, 1);
        assert_eq!(w.health_interval, Duration::from_secs(1));
        assert_eq!(w.on_alert_timeout, Duration::from_secs(300));
        let cli = parse(&["check", "--vip", "10.0.0.1:80"]).unwrap();
        let Some(Command::Check(c)) = cli.command else {
            panic!("not check")
        };
        assert_eq!((c.probe_count, c.probe.slow), (3, Duration::from_secs(1)));
        let cli = parse(&["--vip", "10.0.0.1"]).unwrap();
        assert_eq!(cli.watch.on_alert_timeout, Duration::from_secs(60));
        assert_eq!(cli.watch.history, 10_000);
        assert_eq!(cli.watch.probe_interval, Duration::from_secs(10));
        let cli = parse(&["--vip", "10.0.0.1", "--probe-interval", "0"]).unwrap();
        assert_eq!(cli.watch.probe_interval, Duration::ZERO);
        // check's probe options, with check's defaults, and one spec builder.
        let p = &cli.watch.probe;
        assert_eq!(
            (p.tls, p.no_http, p.http_path.as_str()),
            (false, false, "/")
        );
        assert_eq!((p.probe_timeout, p.slow), (SECOND * 3, SECOND));
        let cli = parse(&["--vip", "10.0.0.1:443", "--tls", "--sni", "a.test"]).unwrap();
        let vip: SocketAddr = "10.0.0.1:443".parse().unwrap();
        let spec = cli.watch.probe.spec(vip, true);
        assert_eq!(spec.tls.and_then(|t| t.sni).as_deref(), Some("a.test"));
        assert_eq!(spec.http.map(|h| h.host).as_deref(), Some("a.test"));
        let backend = cli
            .watch
            .probe
            .spec("10.0.1.1:8080".parse().unwrap(), false);
        assert!(
            backend.tls.is_none(),
            "the backends of a TLS VIP speak plain HTTP"
        );
        assert_eq!(backend.http.map(|h| h.host).as_deref(), Some("10.0.1.1"));
    }
}
