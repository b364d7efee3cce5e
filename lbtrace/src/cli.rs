//! Command-line interface (clap derive). Doc comments are the help text.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{endpoint::Endpoint, render::Format};

/// lbtrace: proof, from the load balancer's own kernel, of where connections to a VIP fail.
///
/// With no subcommand, lbtrace runs `trace`.
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
    pub trace: TraceArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The live event stream: every SYN, SYN-ACK, RST and FIN of the VIPs' and backends'
    /// connections, ICMP errors about them and kernel drops with the drop reason.
    Trace(TraceArgs),
    /// What this kernel and host support, before anyone trusts lbtrace on a production box.
    Doctor(DoctorArgs),
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
    /// Size of the packet-event ring buffer in MiB (its mapping counts twice in RSS).
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
