//! The LB host's own limits, read from its kernel in lbtrace's network namespace: the accept
//! queues of the VIP's listeners, TCP's overflow and SYN-cookie counters, conntrack's table,
//! the local ports in use toward each backend, forwarding and reverse-path filtering.
//!
//! [`sample`] reads them (cheap reads, no per-packet work); [`pressure`] compares two samples
//! (before and after a window) and names what ran out, tied to a checklist step. Counters named
//! in a [`Pressure`] carry their before and after values.

mod conntrack;
pub mod diag;
pub mod nat;
pub mod procfs;
pub mod words;

/// Netlink attributes built by hand, for the parsers' tests.
#[cfg(test)]
mod nl_test {
    /// An attribute: length, type, payload, padded to 4 bytes.
    pub fn nla(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(payload);
        b.resize((b.len() + 3) & !3, 0);
        b
    }

    /// A nested attribute (NLA_F_NESTED) holding `parts`.
    pub fn nested(kind: u16, parts: &[Vec<u8>]) -> Vec<u8> {
        nla(kind | 0x8000, &parts.concat())
    }
}

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use crate::endpoint::Endpoint;

/// The TCP counters a sample keeps (netstat's TcpExt group).
pub const COUNTERS: [&str; 7] = [
    "TcpExt.ListenOverflows",
    "TcpExt.ListenDrops",
    "TcpExt.SyncookiesSent",
    "TcpExt.SyncookiesRecv",
    "TcpExt.SyncookiesFailed",
    "TcpExt.TCPReqQFullDrop",
    "TcpExt.TCPReqQFullDoCookies",
];

/// Port use from this share of the usable range on is a warning.
pub const PORTS_WARN_PERCENT: u32 = 80;

/// A listener on a VIP: its accept queue now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Listen {
    pub listener: SocketAddr,
    /// Connections waiting to be accepted (`ss -lnt` Recv-Q).
    pub depth: u32,
    /// The queue's limit (`ss -lnt` Send-Q).
    pub backlog: u32,
}

/// What holds the ports of a [`PortUse`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PortsBy {
    /// The LB's own sockets (a proxy's backend connections), from `ip_local_port_range`.
    Sockets,
    /// SNATed conntrack entries (nftables masquerade / snat), from the SNAT rule's range.
    Conntrack,
}

/// Local ports in use from one source address toward one backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PortUse {
    pub source: IpAddr,
    pub backend: SocketAddr,
    pub used: u32,
    /// Sockets: ports of `ip_local_port_range` minus `ip_local_reserved_ports`; conntrack: the
    /// SNAT rule's port range (1024-65535 when it gives none).
    pub usable: u32,
    pub by: PortsBy,
    /// Conntrack's table was read only in part ([`procfs::MAX_CONNTRACK_LINES`]): `used` is a
    /// lower bound.
    pub capped: bool,
}

/// One reading of the host's limits.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Sample {
    pub listen: Vec<Listen>,
    pub counters: BTreeMap<String, u64>,
    pub conntrack: Option<procfs::Conntrack>,
    pub ports: Vec<PortUse>,
    pub ip_forward: Option<bool>,
    /// Interfaces whose effective rp_filter is strict (1).
    pub rp_filter_strict: Vec<String>,
    pub syncookies: Option<u8>,
    /// How the host NATs the VIPs (DNAT rules, IPVS) and the SNAT port range.
    pub nat: nat::Nat,
    /// Where the SNAT port counts' conntrack entries were read (ctnetlink, else
    /// /proc/net/nf_conntrack); None when they were not read (no backends, no conntrack).
    pub conntrack_read: Option<procfs::CtSource>,
}

/// Samples the host again and again (the tripwire): everything each time but the connection
/// and conntrack dumps behind the port counts (and the NAT rules that go with them), which on a
/// busy LB are the only reads that cost (tens of ms for 100,000 sockets), so they are refreshed
/// every `ports_every` only.
pub struct Sampler {
    pub vips: Vec<Endpoint>,
    pub backends: Vec<Endpoint>,
    pub ifaces: Vec<String>,
    pub ports_every: std::time::Duration,
    ports: Option<(std::time::Instant, Vec<PortUse>, nat::Nat)>,
}

impl Sampler {
    pub fn new(vips: Vec<Endpoint>, backends: Vec<Endpoint>, ifaces: Vec<String>) -> Sampler {
        Sampler {
            vips,
            backends,
            ifaces,
            ports_every: std::time::Duration::from_secs(10),
            ports: None,
        }
    }

    /// Samples every `every` on a thread of its own (a dump must never hold up the event drain);
    /// the latest sample is in the returned channel. The thread ends when the receiver is gone.
    pub fn spawn(
        mut self,
        every: std::time::Duration,
    ) -> std::io::Result<tokio::sync::watch::Receiver<Option<Sample>>> {
        let (tx, rx) = tokio::sync::watch::channel(None);
        std::thread::Builder::new()
            .name("lbtrace-host".to_owned())
            .spawn(move || {
                while tx.send(Some(self.sample())).is_ok() {
                    std::thread::sleep(every);
                }
            })?;
        Ok(rx)
    }

    pub fn sample(&mut self) -> Sample {
        let fresh = self
            .ports
            .as_ref()
            .is_none_or(|(at, ..)| at.elapsed() >= self.ports_every);
        let mut s = sample_with(&self.vips, &self.backends, &self.ifaces, fresh);
        if fresh {
            self.ports = Some((std::time::Instant::now(), s.ports.clone(), s.nat.clone()));
        } else if let Some((_, ports, nat)) = &self.ports {
            s.ports.clone_from(ports);
            s.nat.clone_from(nat);
        }
        s
    }
}

/// Reads the host's limits for these VIPs, backends and client-facing interfaces. What cannot
/// be read is left empty: the sample is evidence, never a reason to stop.
pub fn sample(vips: &[Endpoint], backends: &[Endpoint], ifaces: &[String]) -> Sample {
    sample_with(vips, backends, ifaces, true)
}

fn sample_with(
    vips: &[Endpoint],
    backends: &[Endpoint],
    ifaces: &[String],
    with_ports: bool,
) -> Sample {
    let listen = diag::listeners()
        .unwrap_or_default()
        .into_iter()
        .filter(|s| vips.iter().any(|v| listens_for(v, s.local)))
        .map(|s| Listen {
            listener: s.local,
            depth: s.rqueue,
            backlog: s.wqueue,
        })
        .collect();
    let all = procfs::tcp_counters();
    let counters = COUNTERS
        .iter()
        .filter_map(|k| all.get(*k).map(|v| ((*k).to_owned(), *v)))
        .collect();
    let nat = if with_ports {
        nat::read(vips)
    } else {
        nat::Nat::default()
    };
    let mut ports = match (backends.is_empty() || !with_ports, procfs::local_ports()) {
        (false, Some((_, usable))) => {
            port_use(&diag::connections().unwrap_or_default(), backends, usable)
        }
        _ => Vec::new(),
    };
    let mut conntrack_read = None;
    if with_ports
        && !backends.is_empty()
        && let Some((snat, capped, from)) = procfs::conntrack_snat(backends)
    {
        ports.extend(snat_port_use(&snat, &nat, capped));
        conntrack_read = Some(from);
    }
    Sample {
        listen,
        counters,
        conntrack: procfs::conntrack(),
        ports,
        ip_forward: procfs::ip_forward(),
        rp_filter_strict: ifaces
            .iter()
            .filter(|i| procfs::rp_filter(i) == Some(1))
            .cloned()
            .collect(),
        syncookies: procfs::syncookies(),
        nat,
        conntrack_read,
    }
}

/// Whether a socket bound to `local` serves `vip` (a wildcard listener serves every address).
fn listens_for(vip: &Endpoint, local: SocketAddr) -> bool {
    let port_ok = vip.port.is_none_or(|p| p == local.port());
    port_ok && (local.ip().is_unspecified() || local.ip() == vip.addr)
}

/// Sockets per (local address, backend) among `conns`, for the configured backends.
pub fn port_use(conns: &[diag::TcpSocket], backends: &[Endpoint], usable: u32) -> Vec<PortUse> {
    let mut n: BTreeMap<(IpAddr, SocketAddr), u32> = BTreeMap::new();
    for s in conns {
        if backends.iter().any(|b| b.matches(&s.remote)) {
            *n.entry((s.local.ip(), s.remote)).or_default() += 1;
        }
    }
    n.into_iter()
        .map(|((source, backend), used)| PortUse {
            source,
            backend,
            used,
            usable,
            by: PortsBy::Sockets,
            capped: false,
        })
        .collect()
}

/// SNATed conntrack entries per (LB address, backend) as port use, against the SNAT rule's
/// range (the kernel's 1024-65535 when no rule says).
pub fn snat_port_use(snat: &procfs::SnatUse, nat: &nat::Nat, capped: bool) -> Vec<PortUse> {
    let usable = nat.snat_usable();
    snat.iter()
        .map(|(&(source, backend), &used)| PortUse {
            source,
            backend,
            used,
            usable,
            by: PortsBy::Conntrack,
            capped,
        })
        .collect()
}

/// A counter that moved during a window.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Moved {
    pub counter: String,
    pub before: u64,
    pub after: u64,
}

impl Moved {
    pub fn delta(&self) -> u64 {
        self.after.saturating_sub(self.before)
    }
}

/// What the LB host ran out of during a window, tied to a checklist step.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Pressure {
    /// Step 1: a VIP listener's accept queue was full and SYNs were dropped for it.
    AcceptQueueFull {
        listener: Option<Listen>,
        counters: Vec<Moved>,
    },
    /// Step 1: SYN cookies were sent (the SYN queue overflowed, or cookies are forced): options
    /// such as window scaling are lost, and failed cookies are dropped connections.
    SynCookies { counters: Vec<Moved> },
    /// Step 2 (Layer 4): conntrack's table is full, or inserts failed.
    Conntrack {
        count: u64,
        max: u64,
        counters: Vec<Moved>,
    },
    /// Step 3: local ports toward a backend are (nearly) used up.
    SourcePorts { ports: PortUse, exhausted: bool },
    /// Step 3: the LB's own probe of a backend got no local port (EADDRNOTAVAIL from connect,
    /// or EADDRINUSE from binding port 0): direct evidence that its source ports are used up.
    NoLocalPort { backend: SocketAddr, error: String },
    /// Step 2 (Layer 4): this host does not forward IPv4. `dnat`: the rules that make the VIP a
    /// Layer 4 one (nftables DNAT, IPVS), when they, not forwarded SYNs, tell.
    NoForwarding { dnat: Vec<String> },
    /// Step 1: strict reverse-path filtering on a client-facing interface.
    StrictRpFilter { iface: String },
}

impl Pressure {
    /// The key the tripwire counts it under (per backend for source ports, per interface for
    /// rp_filter), as alerts and metrics name it.
    pub fn alert_key(&self) -> String {
        match self {
            Self::AcceptQueueFull { .. } => "accept_queue_full".to_owned(),
            Self::SynCookies { .. } => "syn_cookies".to_owned(),
            Self::Conntrack { .. } => "conntrack".to_owned(),
            Self::SourcePorts { ports, .. } => format!("source_ports:{}", ports.backend),
            Self::NoLocalPort { backend, .. } => format!("source_ports:{backend}"),
            Self::NoForwarding { .. } => "no_forwarding".to_owned(),
            Self::StrictRpFilter { iface } => format!("rp_filter_strict:{iface}"),
        }
    }

    /// A setting rather than something that ran out: true in every sample while it lasts.
    pub fn is_setting(&self) -> bool {
        matches!(
            self,
            Self::NoForwarding { .. } | Self::StrictRpFilter { .. }
        )
    }

    pub fn step(&self) -> u8 {
        match self {
            Self::AcceptQueueFull { .. }
            | Self::SynCookies { .. }
            | Self::StrictRpFilter { .. } => 1,
            Self::Conntrack { .. } | Self::NoForwarding { .. } => 2,
            Self::SourcePorts { .. } | Self::NoLocalPort { .. } => 3,
        }
    }
}

fn moved(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    names: &[&str],
) -> Vec<Moved> {
    names
        .iter()
        .filter_map(|n| {
            let (b, a) = (*before.get(*n)?, *after.get(*n)?);
            (a > b).then(|| Moved {
                counter: (*n).to_owned(),
                before: b,
                after: a,
            })
        })
        .collect()
}

/// What ran out between `before` and `after`. `layer4`: the VIP is NATed (conntrack and
/// forwarding matter); `None` when the connections did not tell: then a DNAT rule or IPVS
/// service for the VIP does (forwarding off, no SYN is ever forwarded).
pub fn pressure(before: &Sample, after: &Sample, layer4: Option<bool>) -> Vec<Pressure> {
    let mut out = Vec::new();
    let overflow = moved(
        &before.counters,
        &after.counters,
        &["TcpExt.ListenOverflows", "TcpExt.ListenDrops"],
    );
    if !overflow.is_empty() {
        // The listener that was full (or the fullest) names where.
        let listener = after
            .listen
            .iter()
            .chain(&before.listen)
            .max_by_key(|l| (l.depth >= l.backlog, l.depth))
            .copied();
        out.push(Pressure::AcceptQueueFull {
            listener,
            counters: overflow,
        });
    }
    let cookies = moved(
        &before.counters,
        &after.counters,
        &[
            "TcpExt.SyncookiesSent",
            "TcpExt.SyncookiesFailed",
            "TcpExt.TCPReqQFullDrop",
        ],
    );
    if !cookies.is_empty() {
        out.push(Pressure::SynCookies { counters: cookies });
    }
    if let (Some(b), Some(a)) = (&before.conntrack, &after.conntrack) {
        let failed = moved(&b.stats, &a.stats, &["insert_failed", "drop", "early_drop"]);
        let full = a.max > 0 && a.count >= a.max;
        if full || !failed.is_empty() {
            out.push(Pressure::Conntrack {
                count: a.count,
                max: a.max,
                counters: failed,
            });
        }
    }
    for p in &after.ports {
        if p.usable > 0 && p.used * 100 >= p.usable * PORTS_WARN_PERCENT {
            out.push(Pressure::SourcePorts {
                ports: *p,
                exhausted: p.used >= p.usable,
            });
        }
    }
    let by_rules = layer4.is_none() && !after.nat.dnat.is_empty();
    if (layer4 == Some(true) || by_rules) && after.ip_forward == Some(false) {
        out.push(Pressure::NoForwarding {
            dnat: if by_rules {
                after.nat.dnat.clone()
            } else {
                Vec::new()
            },
        });
    }
    for iface in &after.rp_filter_strict {
        out.push(Pressure::StrictRpFilter {
            iface: iface.clone(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    #[test]
    fn a_full_accept_queue_with_overflows_names_the_listener_and_the_counters() {
        let before = Sample {
            counters: counters(&[("TcpExt.ListenOverflows", 5), ("TcpExt.ListenDrops", 5)]),
            ..Sample::default()
        };
        let full = Listen {
            listener: "10.10.2.10:80".parse().unwrap(),
            depth: 2,
            backlog: 2,
        };
        let after = Sample {
            listen: vec![
                Listen {
                    listener: "10.10.2.10:443".parse().unwrap(),
                    depth: 0,
                    backlog: 128,
                },
                full,
            ],
            counters: counters(&[("TcpExt.ListenOverflows", 23), ("TcpExt.ListenDrops", 23)]),
            ..Sample::default()
        };
        let p = pressure(&before, &after, None);
        assert_eq!(p.len(), 1, "{p:?}");
        let Pressure::AcceptQueueFull { listener, counters } = &p[0] else {
            panic!("{p:?}")
        };
        assert_eq!(*listener, Some(full));
        assert_eq!(counters[0].counter, "TcpExt.ListenOverflows");
        assert_eq!(
            (counters[0].before, counters[0].after, counters[0].delta()),
            (5, 23, 18)
        );
        assert_eq!(p[0].step(), 1);
        // No movement, no finding, even with a full queue at the moment of the sample.
        assert!(pressure(&after, &after, None).is_empty());
    }

    #[test]
    fn syn_cookies_conntrack_ports_and_forwarding() {
        let ct = |count, insert_failed| procfs::Conntrack {
            count,
            max: 100,
            stats: counters(&[("insert_failed", insert_failed), ("drop", 0)]),
        };
        let backend: SocketAddr = "10.10.3.11:8080".parse().unwrap();
        let source: IpAddr = "10.10.3.1".parse().unwrap();
        let before = Sample {
            counters: counters(&[("TcpExt.SyncookiesSent", 0)]),
            conntrack: Some(ct(10, 0)),
            ip_forward: Some(true),
            ..Sample::default()
        };
        let after = Sample {
            counters: counters(&[("TcpExt.SyncookiesSent", 4)]),
            conntrack: Some(ct(12, 3)),
            ports: vec![
                PortUse {
                    source,
                    backend,
                    used: 8,
                    usable: 10,
                    by: PortsBy::Sockets,
                    capped: false,
                },
                PortUse {
                    source,
                    backend: "10.10.3.12:8080".parse().unwrap(),
                    used: 7,
                    usable: 10,
                    by: PortsBy::Sockets,
                    capped: false,
                },
            ],
            ip_forward: Some(false),
            ..Sample::default()
        };
        let p = pressure(&before, &after, Some(true));
        let kinds: Vec<u8> = p.iter().map(Pressure::step).collect();
        assert_eq!(kinds, vec![1, 2, 3, 2], "{p:?}");
        assert!(matches!(&p[1], Pressure::Conntrack { counters, .. } if counters[0].delta() == 3));
        assert!(
            matches!(&p[2], Pressure::SourcePorts { exhausted: false, ports } if ports.used == 8)
        );
        // Forwarding is only a finding for a Layer-4 VIP.
        let no_fwd = Pressure::NoForwarding { dnat: Vec::new() };
        assert!(pressure(&before, &after, Some(true)).contains(&no_fwd));
        assert!(!pressure(&before, &after, Some(false)).contains(&no_fwd));
        // Unknown from the connections (none was forwarded): a DNAT rule for the VIP tells.
        assert!(
            !pressure(&before, &after, None)
                .iter()
                .any(|p| matches!(p, Pressure::NoForwarding { .. }))
        );
        let mut dnat = after.clone();
        dnat.nat.dnat = vec!["nftables lbtrace_lb/prerouting".to_owned()];
        assert!(
            pressure(&before, &dnat, None).contains(&Pressure::NoForwarding {
                dnat: dnat.nat.dnat.clone()
            })
        );
        // Observed Layer 7 wins over a rule.
        assert!(!pressure(&before, &dnat, Some(false)).contains(&no_fwd));
        // A full table is a finding without any failed insert.
        let full = Sample {
            conntrack: Some(ct(100, 0)),
            ..Sample::default()
        };
        let empty = Sample {
            conntrack: Some(ct(1, 0)),
            ..Sample::default()
        };
        assert!(matches!(
            pressure(&empty, &full, None)[..],
            [Pressure::Conntrack {
                count: 100,
                max: 100,
                ..
            }]
        ));
    }

    #[test]
    fn ports_are_counted_per_source_and_backend() {
        let b: Endpoint = "10.10.3.11:8080".parse().unwrap();
        let s = |local: &str, remote: &str| diag::TcpSocket {
            state: 1,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            rqueue: 0,
            wqueue: 0,
        };
        let conns = [
            s("10.10.3.1:40000", "10.10.3.11:8080"),
            s("10.10.3.1:40001", "10.10.3.11:8080"),
            s("10.10.3.2:40000", "10.10.3.11:8080"),
            s("10.10.3.1:40002", "10.10.3.12:8080"),
        ];
        let u = port_use(&conns, &[b], 100);
        assert_eq!(u.len(), 2);
        assert_eq!(
            (u[0].source.to_string(), u[0].used),
            ("10.10.3.1".to_owned(), 2)
        );
        assert_eq!(u[1].used, 1);
    }

    #[test]
    fn snat_entries_count_against_the_snat_range() {
        let b: SocketAddr = "10.10.3.11:8080".parse().unwrap();
        let lb: IpAddr = "10.10.3.1".parse().unwrap();
        let snat = BTreeMap::from([((lb, b), 17u32)]);
        let ranged = nat::Nat {
            snat_ports: Some((40000, 40019)),
            ..nat::Nat::default()
        };
        let u = snat_port_use(&snat, &ranged, false);
        assert_eq!(
            (u[0].used, u[0].usable, u[0].by, u[0].capped),
            (17, 20, PortsBy::Conntrack, false)
        );
        let after = Sample {
            ports: u,
            ..Sample::default()
        };
        assert!(matches!(
            pressure(&Sample::default(), &after, Some(true))[..],
            [Pressure::SourcePorts {
                exhausted: false,
                ..
            }]
        ));
        // No range in the rule: the kernel's 1024-65535.
        let u = snat_port_use(&snat, &nat::Nat::default(), true);
        assert_eq!((u[0].usable, u[0].capped), (64512, true));
    }

    #[test]
    fn wildcard_listeners_serve_the_vip() {
        let vip: Endpoint = "10.10.2.10:80".parse().unwrap();
        assert!(listens_for(&vip, "0.0.0.0:80".parse().unwrap()));
        assert!(listens_for(&vip, "10.10.2.10:80".parse().unwrap()));
        assert!(!listens_for(&vip, "10.10.2.10:81".parse().unwrap()));
        assert!(!listens_for(&vip, "10.10.2.11:80".parse().unwrap()));
    }
}
