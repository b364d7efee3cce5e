//! The LB host's own counters and settings from procfs, read in lbtrace's network namespace
//! (/proc/net and /proc/sys/net are per namespace): TCP's extended counters, conntrack's table and
//! per-CPU statistics, the local port range, forwarding and reverse-path filtering.
//!
//! Every parser takes the file's text, so the rules are tested on recorded values.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{BufRead as _, BufReader},
    net::{IpAddr, SocketAddr},
    path::Path,
};

use crate::endpoint::Endpoint;

/// Lines of /proc/net/nf_conntrack read at most per sample (a few hundred bytes each; a busy
/// NAT host has millions of entries: the rest are not read, and the counts say so).
pub const MAX_CONNTRACK_LINES: usize = 250_000;

/// Counters of /proc/net/netstat or /proc/net/snmp as `Group.Name` -> value (e.g.
/// `TcpExt.ListenOverflows`). Each group is a header line of names followed by a line of values.
pub fn parse_counters(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        let (Some((group, names)), Some((vgroup, values))) =
            (names.split_once(':'), values.split_once(':'))
        else {
            break;
        };
        if group != vgroup {
            break;
        }
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            // Some values are signed (Tcp.MaxConn is -1): those are not counters.
            if let Ok(v) = value.parse::<u64>() {
                out.insert(format!("{group}.{name}"), v);
            }
        }
    }
    out
}

/// Conntrack's statistics from /proc/net/stat/nf_conntrack: one hexadecimal row per CPU; every
/// column is summed over the CPUs except `entries`, which each row repeats.
pub fn parse_conntrack_stat(text: &str) -> BTreeMap<String, u64> {
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return BTreeMap::new();
    };
    let names: Vec<&str> = header.split_whitespace().collect();
    let mut out: BTreeMap<String, u64> = BTreeMap::new();
    for (row, line) in lines.enumerate() {
        for (name, value) in names.iter().zip(line.split_whitespace()) {
            let Ok(v) = u64::from_str_radix(value, 16) else {
                continue;
            };
            let slot = out.entry((*name).to_owned()).or_default();
            if *name == "entries" {
                if row == 0 {
                    *slot = v;
                }
            } else {
                *slot = slot.saturating_add(v);
            }
        }
    }
    out
}

/// One TCP entry of /proc/net/nf_conntrack: the original direction's source and the reply
/// direction's tuple (for SNAT, the reply goes to the LB's address and NAT port).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtEntry {
    pub orig_src: SocketAddr,
    pub reply_src: SocketAddr,
    pub reply_dst: SocketAddr,
}

impl CtEntry {
    /// The LB rewrote the source: the backend answers the LB, not the client.
    pub fn snat(&self) -> bool {
        self.reply_dst != self.orig_src
    }
}

/// `ipv4 2 tcp 6 117 TIME_WAIT src=A dst=B sport=P dport=Q src=C dst=D sport=R dport=S ...`:
/// the first src/dst/sport/dport are the original direction, the second the reply's.
pub fn parse_conntrack_line(line: &str) -> Option<CtEntry> {
    let mut it = line.split_whitespace();
    if it.nth(2)? != "tcp" {
        return None;
    }
    let (mut addrs, mut ports) = (Vec::with_capacity(4), Vec::with_capacity(4));
    for (k, v) in it.filter_map(|t| t.split_once('=')) {
        match k {
            "src" | "dst" if addrs.len() < 4 => addrs.push(v.parse::<IpAddr>().ok()?),
            "sport" | "dport" if ports.len() < 4 => ports.push(v.parse::<u16>().ok()?),
            _ => {}
        }
    }
    let [os, _od, rs, rd] = addrs[..] else {
        return None;
    };
    let [osp, _odp, rsp, rdp] = ports[..] else {
        return None;
    };
    Some(CtEntry {
        orig_src: SocketAddr::new(os, osp),
        reply_src: SocketAddr::new(rs, rsp),
        reply_dst: SocketAddr::new(rd, rdp),
    })
}

/// NAT ports in use per (LB source address, backend).
pub type SnatUse = BTreeMap<(IpAddr, SocketAddr), u32>;

/// Counts the NAT ports held by SNATed conntrack entries per (LB source address, backend), for
/// the configured backends: the distinct reply destination ports (an entry in TIME_WAIT whose
/// port a new connection took over shares it). Memory is bounded by the ports (at most 65,536
/// per pair), not by the entries.
pub struct SnatCount<'a> {
    backends: &'a [Endpoint],
    ports: BTreeMap<(IpAddr, SocketAddr), BTreeSet<u16>>,
}

impl<'a> SnatCount<'a> {
    pub fn new(backends: &'a [Endpoint]) -> Self {
        Self {
            backends,
            ports: BTreeMap::new(),
        }
    }

    pub fn add(&mut self, e: &CtEntry) {
        if e.snat() && self.backends.iter().any(|b| b.matches(&e.reply_src)) {
            self.ports
                .entry((e.reply_dst.ip(), e.reply_src))
                .or_default()
                .insert(e.reply_dst.port());
        }
    }

    pub fn finish(self) -> SnatUse {
        self.ports
            .into_iter()
            .map(|(k, p)| (k, u32::try_from(p.len()).unwrap_or(u32::MAX)))
            .collect()
    }
}

/// [`SnatCount`] of /proc/net/nf_conntrack's `lines`. Reads at most `cap` lines; true when it
/// stopped there.
pub fn snat_use(
    lines: impl Iterator<Item = String>,
    backends: &[Endpoint],
    cap: usize,
) -> (SnatUse, bool) {
    let mut count = SnatCount::new(backends);
    let mut capped = false;
    for (read, line) in lines.enumerate() {
        if read == cap {
            capped = true;
            break;
        }
        if let Some(e) = parse_conntrack_line(&line) {
            count.add(&e);
        }
    }
    (count.finish(), capped)
}

/// Where conntrack's entries were read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CtSource {
    /// ctnetlink (NETLINK_NETFILTER), what `conntrack -L` uses.
    Netlink,
    /// /proc/net/nf_conntrack (CONFIG_NF_CONNTRACK_PROCFS, obsolete, off in some distributions).
    Procfs,
}

/// SNAT port use toward `backends` from this namespace's conntrack table: over ctnetlink, else
/// /proc/net/nf_conntrack; None when neither can be read (no conntrack, or no CAP_NET_ADMIN and
/// no procfs table). At most [`MAX_CONNTRACK_LINES`] entries are read (true when capped).
pub fn conntrack_snat(backends: &[Endpoint]) -> Option<(SnatUse, bool, CtSource)> {
    let mut count = SnatCount::new(backends);
    match super::conntrack::each_tcp(MAX_CONNTRACK_LINES, |e| count.add(e)) {
        Ok(capped) => return Some((count.finish(), capped, CtSource::Netlink)),
        Err(e) => log::debug!("conntrack over netlink: {e}; trying /proc/net/nf_conntrack"),
    }
    let f = fs::File::open("/proc/net/nf_conntrack").ok()?;
    let lines = BufReader::new(f).lines().map_while(Result::ok);
    let (n, capped) = snat_use(lines, backends, MAX_CONNTRACK_LINES);
    Some((n, capped, CtSource::Procfs))
}

/// `ip_local_port_range`: "32768\t60999".
pub fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    match (it.next(), it.next()) {
        (Some(Ok(lo)), Some(Ok(hi))) if lo <= hi => Some((lo, hi)),
        _ => None,
    }
}

/// `ip_local_reserved_ports`: "8080,9000-9010" (empty when none).
pub fn parse_port_list(text: &str) -> Vec<(u16, u16)> {
    text.trim()
        .split(',')
        .filter(|s| !s.is_empty())
        .filter_map(|part| match part.split_once('-') {
            Some((a, b)) => Some((a.trim().parse().ok()?, b.trim().parse().ok()?)),
            None => {
                let p = part.trim().parse().ok()?;
                Some((p, p))
            }
        })
        .collect()
}

/// Ports of `range` left for outgoing connections once `reserved` are taken out.
pub fn usable_ports(range: (u16, u16), reserved: &[(u16, u16)]) -> u32 {
    let (lo, hi) = range;
    let total = u32::from(hi) - u32::from(lo) + 1;
    let mut taken = 0u32;
    for p in lo..=hi {
        if reserved.iter().any(|(a, b)| (*a..=*b).contains(&p)) {
            taken += 1;
        }
    }
    total - taken
}

fn read(path: impl AsRef<Path>) -> Option<String> {
    fs::read_to_string(path).ok()
}

fn read_u64(path: impl AsRef<Path>) -> Option<u64> {
    read(path)?.trim().parse().ok()
}

/// The TCP counters of this namespace (netstat's TcpExt and snmp's Tcp groups).
pub fn tcp_counters() -> BTreeMap<String, u64> {
    let mut c = read("/proc/net/netstat")
        .map(|t| parse_counters(&t))
        .unwrap_or_default();
    if let Some(t) = read("/proc/net/snmp") {
        c.extend(parse_counters(&t));
    }
    c
}

/// Conntrack's table: entries in use, the limit and the per-CPU statistics; None without the
/// conntrack module (then nothing is NATed by netfilter on this host).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Conntrack {
    pub count: u64,
    pub max: u64,
    pub stats: BTreeMap<String, u64>,
}

pub fn conntrack() -> Option<Conntrack> {
    let count = read_u64("/proc/sys/net/netfilter/nf_conntrack_count")?;
    let max = read_u64("/proc/sys/net/netfilter/nf_conntrack_max").unwrap_or(0);
    let stats = read("/proc/net/stat/nf_conntrack")
        .map(|t| parse_conntrack_stat(&t))
        .unwrap_or_default();
    Some(Conntrack { count, max, stats })
}

/// The local port range and what the reserved list leaves of it.
pub fn local_ports() -> Option<((u16, u16), u32)> {
    let range = parse_port_range(&read("/proc/sys/net/ipv4/ip_local_port_range")?)?;
    let reserved = read("/proc/sys/net/ipv4/ip_local_reserved_ports")
        .map(|t| parse_port_list(&t))
        .unwrap_or_default();
    Some((range, usable_ports(range, &reserved)))
}

/// IPv4 forwarding in this namespace.
pub fn ip_forward() -> Option<bool> {
    read_u64("/proc/sys/net/ipv4/ip_forward").map(|v| v != 0)
}

/// The effective reverse-path filter of `iface`: the larger of `all` and the interface's own
/// value (0 off, 1 strict, 2 loose), as the kernel applies it.
pub fn rp_filter(iface: &str) -> Option<u8> {
    let all = read_u64("/proc/sys/net/ipv4/conf/all/rp_filter")?;
    let own = read_u64(format!("/proc/sys/net/ipv4/conf/{iface}/rp_filter"))?;
    u8::try_from(all.max(own)).ok()
}

/// `tcp_syncookies`: 0 off, 1 when the SYN queue overflows, 2 always.
pub fn syncookies() -> Option<u8> {
    read_u64("/proc/sys/net/ipv4/tcp_syncookies").and_then(|v| u8::try_from(v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NETSTAT: &str = "TcpExt: SyncookiesSent SyncookiesRecv SyncookiesFailed ListenOverflows ListenDrops TCPReqQFullDrop\n\
                           TcpExt: 5 4 1 18 18 2\n\
                           IpExt: InNoRoutes InOctets\n\
                           IpExt: 0 123456\n";

    #[test]
    fn counters_are_named_by_group() {
        let c = parse_counters(NETSTAT);
        assert_eq!(c["TcpExt.ListenOverflows"], 18);
        assert_eq!(c["TcpExt.SyncookiesSent"], 5);
        assert_eq!(c["TcpExt.TCPReqQFullDrop"], 2);
        assert_eq!(c["IpExt.InOctets"], 123_456);
        let snmp = "Tcp: RtoAlgorithm MaxConn ActiveOpens\nTcp: 1 -1 42\n";
        let c = parse_counters(snmp);
        assert_eq!(c["Tcp.ActiveOpens"], 42);
        assert!(!c.contains_key("Tcp.MaxConn"));
        // A torn or odd file gives what parsed, never a panic.
        assert!(parse_counters("TcpExt: A B\n").is_empty());
        assert!(parse_counters("TcpExt: A\nIpExt: 1\n").is_empty());
        assert!(parse_counters("").is_empty());
    }

    #[test]
    fn conntrack_stats_sum_the_cpus_but_not_entries() {
        let text = "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart\n\
                    0000000a  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000003 00000001 00000000 00000000  00000000 00000000 00000000 00000002\n\
                    0000000a  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000004 00000000 00000000 00000000  00000000 00000000 00000000 0000000f\n";
        let s = parse_conntrack_stat(text);
        assert_eq!(s["entries"], 10);
        assert_eq!(s["insert_failed"], 7);
        assert_eq!(s["drop"], 1);
        assert_eq!(s["search_restart"], 17);
        assert!(parse_conntrack_stat("").is_empty());
    }

    #[test]
    fn snat_entries_are_counted_per_address_and_backend() {
        let text = "ipv4     2 tcp      6 431999 ESTABLISHED src=10.10.1.2 dst=10.10.2.10 sport=41340 dport=80 src=10.10.3.11 dst=10.10.3.1 sport=8080 dport=40001 [ASSURED] mark=0 zone=0 use=2\n\
                    ipv4     2 tcp      6 117 TIME_WAIT src=10.10.1.2 dst=10.10.2.10 sport=41341 dport=80 src=10.10.3.11 dst=10.10.3.1 sport=8080 dport=40002 [ASSURED] mark=0 zone=0 use=2\n\
                    ipv4     2 tcp      6 431999 ESTABLISHED src=10.10.1.2 dst=10.10.2.10 sport=41343 dport=80 src=10.10.3.11 dst=10.10.3.1 sport=8080 dport=40002 [ASSURED] mark=0 zone=0 use=2\n\
                    ipv4     2 tcp      6 117 TIME_WAIT src=10.10.1.2 dst=10.10.2.10 sport=41342 dport=80 src=10.10.3.12 dst=10.10.1.2 sport=8080 dport=41342 [ASSURED] mark=0 zone=0 use=2\n\
                    ipv4     2 udp      17 20 src=10.10.1.2 dst=10.10.3.11 sport=5353 dport=8080 src=10.10.3.11 dst=10.10.3.1 sport=8080 dport=5353 mark=0 zone=0 use=2\n\
                    ipv6     10 tcp      6 30 SYN_SENT src=fd00::2 dst=fd00:2::10 sport=5000 dport=80 [UNREPLIED] src=fd00:3::11 dst=fd00:3::1 sport=8080 dport=40000 mark=0 zone=0 use=2\n\
                    ipv4 2 tcp 6 1 src=garbage\n";
        let e = parse_conntrack_line(text.lines().next().unwrap()).unwrap();
        assert_eq!(e.reply_dst, "10.10.3.1:40001".parse().unwrap());
        assert!(e.snat());
        let backends: Vec<Endpoint> = ["10.10.3.11:8080", "10.10.3.12:8080", "[fd00:3::11]:8080"]
            .iter()
            .map(|b| b.parse().unwrap())
            .collect();
        let lines = || text.lines().map(str::to_owned);
        let (n, capped) = snat_use(lines(), &backends, 100);
        assert!(!capped);
        let lb: IpAddr = "10.10.3.1".parse().unwrap();
        // Two NAT ports toward be1 (three entries: a TIME_WAIT one's port was taken over);
        // be2's entry is DNAT only (the reply goes to the client); UDP is not counted; the IPv6
        // entry is its own pair.
        assert_eq!(n.len(), 2, "{n:?}");
        assert_eq!(n[&(lb, "10.10.3.11:8080".parse().unwrap())], 2);
        let (n, capped) = snat_use(lines(), &backends, 1);
        assert!(capped);
        assert_eq!(n.values().sum::<u32>(), 1);
        assert_eq!(parse_conntrack_line("ipv4 2 tcp"), None);
        assert_eq!(parse_conntrack_line(""), None);
    }

    #[test]
    fn port_range_and_reserved_ports() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range("x"), None);
        let reserved = parse_port_list("40000,40010-40019\n");
        assert_eq!(reserved, vec![(40000, 40000), (40010, 40019)]);
        assert_eq!(usable_ports((40000, 40099), &reserved), 89);
        assert_eq!(usable_ports((32768, 60999), &[]), 28232);
        assert!(parse_port_list("\n").is_empty());
    }

    #[test]
    fn this_host_reads() {
        // /proc/net/netstat exists on every Linux the tool runs on.
        assert!(tcp_counters().contains_key("TcpExt.ListenOverflows"));
        assert!(local_ports().is_some());
    }
}
