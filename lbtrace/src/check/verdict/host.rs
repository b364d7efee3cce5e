//! The LB host's own limits as evidence for steps 1 to 3: what [`crate::host::pressure`] found
//! between the sample taken before the observation window and the one taken after it, each
//! finding tied to its step with the status it gives that step.
//!
//! The rule (docs/output.md, `check`): a host limit reached during the window is a cause on the
//! LB host, so it fails its step when connections observed at that step failed for it, and warns
//! when it moved without a failed connection to show for it:
//! - accept queue full (ListenOverflows / ListenDrops moved): step 1 `fail` when client SYNs went
//!   unanswered (no SYN-ACK, no RST, not forwarded, not dropped with a reason), else `warn`;
//! - SYN cookies sent: step 1 `warn` (connections survive, without their TCP options);
//! - strict rp_filter on a client-facing interface: step 1 `fail` with an `IP_RPFILTER` drop,
//!   otherwise shown and not judged (strict filtering with symmetric routes is harmless);
//! - conntrack full or failing inserts: step 2 `fail`; IPv4 forwarding off for a Layer 4 VIP
//!   (seen from forwarded SYNs, or, when none was forwarded, from a DNAT rule or IPVS service
//!   for the VIP): step 2 `fail`;
//! - local ports toward a backend (the LB's sockets from `ip_local_port_range`, or SNATed
//!   conntrack entries from the SNAT range): step 3 `warn` from 80 % use, `fail` when used up;
//!   the LB's own probe of a backend failing for want of a local port (EADDRNOTAVAIL, or
//!   EADDRINUSE binding port 0): step 3 `fail`.

use std::net::SocketAddr;

use super::{Mode, Status};
use crate::host::{Pressure, Sample};

/// The two samples of a check: before the observation window and after it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostFacts {
    pub before: Sample,
    pub after: Sample,
}

/// One host limit reached during the window, with the status it gives its step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFinding {
    pub pressure: Pressure,
    pub status: Status,
    /// For an accept queue: client connections that got no SYN-ACK, of those that sent a SYN.
    pub unanswered: Option<(usize, usize)>,
}

impl HostFinding {
    pub fn step(&self) -> u8 {
        self.pressure.step()
    }
}

/// What the connections showed, for the rule.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// Client connections with no SYN-ACK, no RST, not forwarded and not dropped.
    pub unanswered: usize,
    /// Client connections that sent a SYN.
    pub syn_flows: usize,
    /// An `IP_RPFILTER` drop of a client SYN.
    pub rpfilter_drop: bool,
    /// Backends whose probe got no local port, with the probe's error.
    pub no_local_port: Vec<(SocketAddr, String)>,
}

/// Layer 4 as [`crate::host::pressure`] wants it: unknown when the mode is.
pub fn layer4(mode: Mode) -> Option<bool> {
    match mode {
        Mode::L4 => Some(true),
        Mode::L7 => Some(false),
        Mode::Unknown => None,
    }
}

/// The host's findings for this window, by the rule above.
pub fn findings(h: &HostFacts, mode: Mode, seen: Seen) -> Vec<HostFinding> {
    let probes = seen
        .no_local_port
        .iter()
        .map(|(backend, error)| Pressure::NoLocalPort {
            backend: *backend,
            error: error.clone(),
        });
    crate::host::pressure(&h.before, &h.after, layer4(mode))
        .into_iter()
        .chain(probes)
        .map(|p| {
            let mut unanswered = None;
            let status = match &p {
                Pressure::AcceptQueueFull { .. } => {
                    unanswered = Some((seen.unanswered, seen.syn_flows));
                    if seen.unanswered > 0 {
                        Status::Fail
                    } else {
                        Status::Warn
                    }
                }
                Pressure::SynCookies { .. } => Status::Warn,
                Pressure::StrictRpFilter { .. } if seen.rpfilter_drop => Status::Fail,
                Pressure::StrictRpFilter { .. } => Status::Pass,
                Pressure::Conntrack { .. }
                | Pressure::NoForwarding { .. }
                | Pressure::NoLocalPort { .. } => Status::Fail,
                Pressure::SourcePorts { exhausted, .. } => {
                    if *exhausted {
                        Status::Fail
                    } else {
                        Status::Warn
                    }
                }
            };
            HostFinding {
                pressure: p,
                status,
                unanswered,
            }
        })
        .collect()
}

/// A step's status once its host findings are counted: a failing host finding fails the step; a
/// warning turns a pass into a warning; an unknown step stays unknown unless the host fails it.
pub fn escalate(status: Status, host: &[HostFinding]) -> Status {
    if host.iter().any(|h| h.status == Status::Fail) {
        Status::Fail
    } else if status == Status::Pass && host.iter().any(|h| h.status == Status::Warn) {
        Status::Warn
    } else {
        status
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::host::{Listen, PortUse, PortsBy, procfs::Conntrack};

    fn counters(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    fn overflowing() -> HostFacts {
        let listen = vec![Listen {
            listener: "10.10.2.10:80".parse().unwrap(),
            depth: 2,
            backlog: 2,
        }];
        HostFacts {
            before: Sample {
                counters: counters(&[("TcpExt.ListenOverflows", 5)]),
                ..Sample::default()
            },
            after: Sample {
                listen,
                counters: counters(&[("TcpExt.ListenOverflows", 23)]),
                ..Sample::default()
            },
        }
    }

    #[test]
    fn a_full_accept_queue_fails_step_1_only_with_unanswered_syns() {
        let seen = Seen {
            unanswered: 3,
            syn_flows: 6,
            rpfilter_drop: false,
            no_local_port: Vec::new(),
        };
        let f = findings(&overflowing(), Mode::L7, seen.clone());
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!((f[0].step(), f[0].status), (1, Status::Fail));
        assert_eq!(f[0].unanswered, Some((3, 6)));
        let f = findings(
            &overflowing(),
            Mode::L7,
            Seen {
                unanswered: 0,
                ..seen
            },
        );
        assert_eq!(f[0].status, Status::Warn);
        assert_eq!(escalate(Status::Pass, &f), Status::Warn);
        assert_eq!(escalate(Status::Unknown, &f), Status::Unknown);
        assert_eq!(escalate(Status::Fail, &f), Status::Fail);
    }

    fn calm_of(h: &HostFacts) -> HostFacts {
        HostFacts {
            before: h.before.clone(),
            after: h.before.clone(),
        }
    }

    /// Conntrack's table cannot be filled in a test namespace without starving the host's (the
    /// limit is global on this kernel): the rule is tested on recorded values.
    #[test]
    fn conntrack_forwarding_ports_and_rp_filter_by_the_rule() {
        let ct = |count, insert_failed| Conntrack {
            count,
            max: 65536,
            stats: counters(&[("insert_failed", insert_failed), ("drop", 0)]),
        };
        let port = |used| PortUse {
            source: "10.10.3.1".parse().unwrap(),
            backend: "10.10.3.11:8080".parse().unwrap(),
            used,
            usable: 10,
            by: PortsBy::Sockets,
            capped: false,
        };
        let h = HostFacts {
            before: Sample {
                conntrack: Some(ct(65000, 0)),
                ..Sample::default()
            },
            after: Sample {
                conntrack: Some(ct(65536, 12)),
                ports: vec![port(8)],
                ip_forward: Some(false),
                rp_filter_strict: vec!["eth0".to_owned()],
                ..Sample::default()
            },
        };
        let f = findings(&h, Mode::L4, Seen::default());
        let got: Vec<(u8, Status)> = f.iter().map(|x| (x.step(), x.status)).collect();
        assert_eq!(
            got,
            [
                (2, Status::Fail),
                (3, Status::Warn),
                (2, Status::Fail),
                (1, Status::Pass)
            ],
            "{f:?}"
        );
        // Strict rp_filter fails step 1 once a drop confirms it; ports fail when used up.
        let mut h2 = h.clone();
        h2.after.ports = vec![port(10)];
        let f = findings(
            &h2,
            Mode::L7,
            Seen {
                rpfilter_drop: true,
                ..Seen::default()
            },
        );
        let got: Vec<(u8, Status)> = f.iter().map(|x| (x.step(), x.status)).collect();
        // No forwarding finding at Layer 7.
        assert_eq!(
            got,
            [(2, Status::Fail), (3, Status::Fail), (1, Status::Fail)],
            "{f:?}"
        );
        // The probe of a backend got no local port: step 3 fails, whatever the counts said.
        let f = findings(
            &calm_of(&h),
            Mode::L7,
            Seen {
                no_local_port: vec![(
                    "10.10.3.11:8080".parse().unwrap(),
                    "bind 0.0.0.0:0: address in use (EADDRINUSE)".to_owned(),
                )],
                ..Seen::default()
            },
        );
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!((f[0].step(), f[0].status), (3, Status::Fail));
        assert!(
            matches!(&f[0].pressure, Pressure::NoLocalPort { backend, .. } if backend.port() == 8080)
        );
        // No connection showed the mode; forwarding off under a DNAT rule for the VIP fails
        // step 2 all the same.
        let mut dnat = calm_of(&h);
        dnat.after.ip_forward = Some(false);
        assert!(findings(&dnat, Mode::Unknown, Seen::default()).is_empty());
        dnat.after.nat.dnat = vec!["nftables lbtrace_lb/prerouting".to_owned()];
        let f = findings(&dnat, Mode::Unknown, Seen::default());
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!((f[0].step(), f[0].status), (2, Status::Fail));
        // Nothing moved: nothing found.
        let calm = HostFacts {
            before: h.before.clone(),
            after: h.before.clone(),
        };
        assert!(findings(&calm, Mode::L4, Seen::default()).is_empty());
    }
}
