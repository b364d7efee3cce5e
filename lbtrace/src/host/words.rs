//! A host limit in words: the one wording both `check` (a step's summary) and `watch` (an
//! alert's message) use.

use super::{Moved, PortUse, PortsBy, Pressure};

/// Counters by their short name (`ListenOverflows` for `TcpExt.ListenOverflows`) and delta.
pub fn moved(m: &[Moved]) -> String {
    m.iter()
        .map(|c| {
            let name = c.counter.rsplit('.').next().unwrap_or(&c.counter);
            format!("{name} +{}", c.delta())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `p` in words. `unanswered`: client connections that got no SYN-ACK, of those that sent a SYN
/// (a check's accept-queue finding); `rpfilter_drop`: an `IP_RPFILTER` drop confirmed strict
/// reverse-path filtering.
pub fn words(p: &Pressure, unanswered: Option<(usize, usize)>, rpfilter_drop: bool) -> String {
    match p {
        Pressure::AcceptQueueFull { listener, counters } => {
            let queue = listener.map_or_else(String::new, |l| {
                format!("Recv-Q {}/{} on {}, ", l.depth, l.backlog, l.listener)
            });
            let share = match unanswered {
                Some((n, of)) if n > 0 => {
                    format!(": {n} of {of} client connection(s) got no SYN-ACK")
                }
                _ => String::new(),
            };
            format!(
                "the LB process does not accept fast enough: accept queue full ({queue}{}){share}",
                moved(counters)
            )
        }
        Pressure::SynCookies { counters } => format!(
            "the LB host answered SYNs with SYN cookies ({}): its SYN queue overflowed or cookies are forced; those connections lose TCP options such as window scaling",
            moved(counters)
        ),
        Pressure::Conntrack {
            count,
            max,
            counters,
        } => {
            let moved = if counters.is_empty() {
                String::new()
            } else {
                format!(", {}", moved(counters))
            };
            format!(
                "conntrack is full or failing (entries {count}/{max}{moved}): the LB host drops connections it cannot track"
            )
        }
        Pressure::SourcePorts { ports, exhausted } => {
            let pct = u64::from(ports.used) * 100 / u64::from(ports.usable.max(1));
            let what = match (exhausted, ports.by) {
                (true, PortsBy::Sockets) => "used up: new connections to it fail (EADDRNOTAVAIL)",
                (true, PortsBy::Conntrack) => {
                    "used up: new NATed connections to it fail (conntrack insert failures)"
                }
                (false, _) => "nearly used up",
            };
            let (held, of) = match ports.by {
                PortsBy::Sockets => ("in use", "local ports"),
                PortsBy::Conntrack => ("held by SNATed conntrack entries", "SNAT ports"),
            };
            let atleast = if ports.capped { "at least " } else { "" };
            format!(
                "{of} from {} to backend {}: {atleast}{} of {} {held} ({pct} %), {what}",
                ports.source, ports.backend, ports.used, ports.usable
            )
        }
        Pressure::NoLocalPort { backend, error } => format!(
            "the LB host's own connection to backend {backend} got no local port ({error}): its source ports are used up"
        ),
        Pressure::NoForwarding { dnat } => {
            let why = if dnat.is_empty() {
                String::new()
            } else {
                format!(" (the VIP is DNATed by {})", dnat.join(", "))
            };
            format!(
                "IPv4 forwarding is off on the LB host (net.ipv4.ip_forward = 0): a NAT VIP cannot forward{why}"
            )
        }
        Pressure::StrictRpFilter { iface } => {
            if rpfilter_drop {
                format!(
                    "strict reverse-path filtering (rp_filter = 1) on {iface} drops clients' SYNs (IP_RPFILTER)"
                )
            } else {
                format!(
                    "strict reverse-path filtering (rp_filter = 1) on {iface} (no IP_RPFILTER drop seen)"
                )
            }
        }
    }
}

/// The counters and readings behind a host finding, before -> after.
pub fn evidence(p: &Pressure) -> Vec<String> {
    let moved = |m: &[Moved]| {
        m.iter()
            .map(|c| format!("{} {} -> {} (+{})", c.counter, c.before, c.after, c.delta()))
            .collect::<Vec<_>>()
    };
    match p {
        Pressure::AcceptQueueFull { listener, counters } => {
            let mut v = moved(counters);
            if let Some(l) = listener {
                v.push(format!(
                    "listener {} Recv-Q {} Send-Q (backlog) {}",
                    l.listener, l.depth, l.backlog
                ));
            }
            v
        }
        Pressure::SynCookies { counters } => moved(counters),
        Pressure::Conntrack {
            count,
            max,
            counters,
        } => {
            let mut v = vec![format!("conntrack entries {count} of max {max}")];
            v.extend(
                moved(counters)
                    .into_iter()
                    .map(|l| format!("conntrack {l}")),
            );
            v
        }
        Pressure::SourcePorts { ports, .. } => vec![port_line(ports)],
        Pressure::NoLocalPort { backend, error } => {
            vec![format!("the LB's probe of {backend}: {error}")]
        }
        Pressure::NoForwarding { dnat } => {
            let mut v = vec!["net.ipv4.ip_forward = 0".to_owned()];
            v.extend(dnat.iter().map(|d| format!("the VIP is DNATed by {d}")));
            v
        }
        Pressure::StrictRpFilter { iface } => vec![format!("net.ipv4.conf.{iface}.rp_filter = 1")],
    }
}

/// One (source, backend) pair's port use: what holds the ports, how many of how many.
pub fn port_line(p: &PortUse) -> String {
    let (what, range) = match p.by {
        PortsBy::Sockets => ("local ports in use (sockets)", "ip_local_port_range"),
        PortsBy::Conntrack => ("SNAT ports held (conntrack entries)", "the SNAT range"),
    };
    format!(
        "{} -> {}: {}{} {what} of {} usable ({range})",
        p.source,
        p.backend,
        if p.capped { ">= " } else { "" },
        p.used,
        p.usable
    )
}
