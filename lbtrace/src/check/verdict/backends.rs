//! Step 3, `lb-to-backend`: can the LB reach each backend? Judged from the LB host's own probe
//! of each backend and the kernel events of that probe, plus client SYNs that a NAT forwarded
//! and the LB host dropped on the way.

use std::net::{IpAddr, SocketAddr};

use super::{
    BackendVerdict, Facts, ProbeFacts, Status, StepFinding, StepVerdict, TcpResult,
    flow::{Flow, ReasonCounts},
};
use crate::{
    checklist::{DropClass, Step},
    endpoint::Endpoint,
    event::{Detail, Dir, KernelEvent},
};

/// One backend's probe result, with its reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendFinding {
    /// No probe ran for it.
    NotProbed,
    Connected {
        http: Option<u16>,
    },
    /// The backend answered the SYN with RST: nothing listens.
    Refused,
    /// ARP / neighbour resolution failed (the kernel dropped the SYN for it).
    HostDown {
        addr: IpAddr,
        reasons: ReasonCounts,
    },
    /// No route from the LB to the backend.
    NoRoute {
        addr: IpAddr,
        reasons: ReasonCounts,
    },
    /// An ICMP error about the probe, from `from`.
    Icmp {
        what: &'static str,
        from: IpAddr,
    },
    /// IPv6 neighbour discovery failed: no SYN left, the queued one freed without a reason.
    NeighbourDiscoveryFailed {
        addr: IpAddr,
        reasons: ReasonCounts,
    },
    /// The LB host dropped its own SYNs.
    LocalDrop {
        reasons: ReasonCounts,
    },
    /// SYNs left the LB and nothing came back.
    Filtered {
        syns_out: usize,
    },
    /// A timeout with no SYN seen leaving the LB.
    TimeoutNoSyn,
    /// Unreachable, in the OS's words.
    Unreachable {
        why: String,
    },
    ProbeError {
        why: String,
    },
}

/// The backends as a whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendsFinding {
    /// No `--backend` given.
    NoBackends,
    AllReachable {
        backends: usize,
    },
    /// The backends not reachable, with why, of `of`.
    Unreachable {
        down: Vec<(SocketAddr, BackendFinding)>,
        of: usize,
    },
}

/// Step 3's finding: the probes' view, and client SYNs NATed towards a backend that the LB
/// host dropped on the way (a failure whatever the probes say).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LbToBackend {
    pub backends: BackendsFinding,
    pub forward_drops: Option<ReasonCounts>,
}

impl LbToBackend {
    pub fn status(&self) -> Status {
        if self.forward_drops.is_some() {
            return Status::Fail;
        }
        match self.backends {
            BackendsFinding::NoBackends => Status::Unknown,
            BackendsFinding::AllReachable { .. } => Status::Pass,
            BackendsFinding::Unreachable { .. } => Status::Fail,
        }
    }
}

/// Step 3 and each backend's verdict. `live`: the client connections the LB host's stack kept.
pub fn judge(
    f: &Facts<'_>,
    live: &[&Flow],
    probe_events: &[Vec<usize>],
) -> (StepVerdict, Vec<BackendVerdict>) {
    let backends: Vec<BackendVerdict> = f
        .backends
        .iter()
        .enumerate()
        .map(|(bi, b)| {
            let evid = probe_events.get(bi).cloned().unwrap_or_default();
            let finding = f
                .probes
                .get(bi)
                .map_or(BackendFinding::NotProbed, |p| probe_finding(f, b, p, &evid));
            BackendVerdict {
                addr: SocketAddr::new(b.addr, b.port.unwrap_or(0)),
                reachable: f
                    .probes
                    .get(bi)
                    .is_some_and(|p| p.tcp == TcpResult::Connected),
                evidence: if f.probes.get(bi).is_some() {
                    evid
                } else {
                    Vec::new()
                },
                finding,
            }
        })
        .collect();
    let down: Vec<&BackendVerdict> = backends.iter().filter(|b| !b.reachable).collect();
    let (all, mut evidence) = if f.backends.is_empty() {
        (BackendsFinding::NoBackends, Vec::new())
    } else if down.is_empty() {
        (
            BackendsFinding::AllReachable {
                backends: backends.len(),
            },
            backends
                .iter()
                .flat_map(|b| b.evidence.iter().take(2).copied())
                .collect(),
        )
    } else {
        (
            BackendsFinding::Unreachable {
                down: down.iter().map(|b| (b.addr, b.finding.clone())).collect(),
                of: backends.len(),
            },
            down.iter()
                .flat_map(|b| b.evidence.iter().copied())
                .collect(),
        )
    };
    let forward_dropped: Vec<usize> = live
        .iter()
        .flat_map(|fl| fl.forward_drops.iter().copied())
        .collect();
    let forward_drops = (!forward_dropped.is_empty()).then(|| {
        evidence.extend(forward_dropped.iter().copied());
        evidence.sort_unstable();
        evidence.dedup();
        ReasonCounts::of(f.events, &forward_dropped, f.reasons)
    });
    let finding = LbToBackend {
        backends: all,
        forward_drops,
    };
    (
        StepVerdict::new(
            Step::LbToBackend,
            StepFinding::LbToBackend(finding),
            evidence,
        ),
        backends,
    )
}

fn probe_finding(f: &Facts<'_>, b: &Endpoint, p: &ProbeFacts, evid: &[usize]) -> BackendFinding {
    let ev = f.events;
    let is_drop = |e: &KernelEvent| matches!(e.detail, Detail::Drop { .. });
    let syns_out = evid
        .iter()
        .filter(|&&i| {
            matches!(ev[i].detail, Detail::Packet) && ev[i].is_syn() && ev[i].dir == Some(Dir::Out)
        })
        .count();
    let drops: Vec<usize> = evid.iter().copied().filter(|&i| is_drop(&ev[i])).collect();
    let icmp = evid.iter().find_map(|&i| match &ev[i].detail {
        Detail::Icmp {
            outer_src,
            icmp_type,
            icmp_code,
            ..
        } => Some(BackendFinding::Icmp {
            what: crate::event::icmp_what(outer_src.is_ipv6(), *icmp_type, *icmp_code),
            from: *outer_src,
        }),
        _ => None,
    });
    let reasons = ReasonCounts::of(ev, &drops, f.reasons);
    let why = || p.why.clone().unwrap_or_default();
    match p.tcp {
        TcpResult::Connected => BackendFinding::Connected {
            http: p.http_status,
        },
        TcpResult::Refused => BackendFinding::Refused,
        TcpResult::Unreachable | TcpResult::Timeout => {
            if reasons.any(DropClass::Neigh) {
                BackendFinding::HostDown {
                    addr: b.addr,
                    reasons,
                }
            } else if reasons.any(DropClass::NoRoute)
                || p.why.as_deref().is_some_and(|w| w.contains("ENETUNREACH"))
            {
                BackendFinding::NoRoute {
                    addr: b.addr,
                    reasons,
                }
            } else if let Some(icmp) = icmp {
                icmp
            } else if b.addr.is_ipv6() && syns_out == 0 && reasons.first_is(DropClass::Unspecified)
            {
                // IPv6 neighbour discovery failures free the queued SYN without a reason
                // (IPv4 says NEIGH_FAILED): no SYN ever left the LB.
                BackendFinding::NeighbourDiscoveryFailed {
                    addr: b.addr,
                    reasons,
                }
            } else if !drops.is_empty() {
                BackendFinding::LocalDrop { reasons }
            } else if p.tcp == TcpResult::Timeout && syns_out > 0 {
                BackendFinding::Filtered { syns_out }
            } else if p.tcp == TcpResult::Timeout {
                BackendFinding::TimeoutNoSyn
            } else {
                BackendFinding::Unreachable { why: why() }
            }
        }
        TcpResult::Error => BackendFinding::ProbeError { why: why() },
    }
}
