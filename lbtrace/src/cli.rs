//! Command-line interface (clap derive). Doc comments are the help text.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{endpoint::Endpoint, render::Format};

/// lbtrace: proof, from the load balancer's own kernel, of where connections to a VIP fail.
///
/// With no subcommand, lbtrace runs `watch`, the tripwire.
#[derive(Debug, Parser)]
#[command(
    name = "lbtrace",
    version,
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
    Watch(WatchArgs),
    /// The tripwire's recorded, correlated history, on demand.
    Dump(DumpArgs),
    /// The live event stream: every SYN, SYN-ACK, RST and FIN of the VIPs' and backends'
    /// connections, ICMP errors about them and kernel drops with the drop reason.
    Trace(TraceArgs),
    /// The 4-step checklist, once: client -> LB, LB handling (L4/L7), LB -> each backend, return
    /// path; each verdict backed by the packets and kernel drop reasons that prove it.
    Check(CheckArgs),
    /// What this kernel and host support, before anyone trusts lbtrace on a production box.
    Doctor(DoctorArgs),
    /// Removes what a killed lbtrace left attached (legacy TC filters, and the clsact qdiscs it
    /// created, on kernels without TCX) and says what it removed.
    Cleanup,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (e.g. 30s, 5m, 1h)"))
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
    /// Packet-event records in MiB, split evenly over the online CPUs, one ring each (at least 256
    /// records).
    #[arg(long, value_name = "MIB", default_value = "8", value_parser = parse_ring_mib)]
    pub ring_size: u32,
}

#[derive(Debug, Clone, Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Output format: tcpdump-like text lines, or one JSON object per line (docs/output.md).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Stop after this long (e.g. 30s, 5m). Default: until SIGINT / SIGTERM.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Create this file once every program is attached (for scripts and tests).
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
    /// How long to watch for client connections (ends early once every step passes).
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = parse_duration)]
    pub observe: Duration,
    /// Timeout of each probe (connect, TLS handshake, HTTP response).
    #[arg(long, value_name = "DUR", default_value = "3s", value_parser = parse_duration)]
    pub probe_timeout: Duration,
    /// Output format: a report to read, or one JSON object (docs/output.md).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Save the control packets captured during the check as a pcap file (tcpdump, Wireshark).
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,
    /// Create this file once every program is attached.
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
    /// Connections the flight recorder keeps (oldest evicted first). Each costs at most 4 KiB
    /// (typically about 1.3 KiB): the default bounds the recorder at 40 MiB.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub history: usize,
    /// Also print every event, as `trace` does.
    #[arg(long)]
    pub events: bool,
    /// Run this shell command for each alert, with the alert as JSON on stdin (at most 6 a minute).
    #[arg(long, value_name = "CMD")]
    pub on_alert: Option<String>,
    /// Serve Prometheus text metrics on this address (e.g. 127.0.0.1:9465).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Findings of one kind within --alert-window that raise an alert.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub alert_count: u32,
    /// The window over which findings are counted.
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = parse_duration)]
    pub alert_window: Duration,
    /// An alert recovers after this long without a finding of its kind.
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = parse_duration)]
    pub recover_after: Duration,
    /// How often to print the one-line health summary per VIP.
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = parse_duration)]
    pub health_interval: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct DumpArgs {
    /// The tripwire's socket (default: the one of this network namespace).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Output format: timelines to read, or one JSON object per connection.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Only the last N connections.
    #[arg(long, value_name = "N")]
    pub last: Option<usize>,
    /// Only connections active within this long (e.g. 5m).
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
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
    /// Also write the recorded control packets to this pcap file.
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,
}
