//! Step 3, `lb-to-backend`: can the LB reach each backend, and does each serve? Judged from the
//! LB host's own probes of each backend (a series of `--probe-count`) and their kernel events,
//! plus client SYNs that a NAT forwarded and the LB host dropped on the way.
//!
//! The rule, per backend ([`BackendFinding::status`]):
//! - a TCP connect that failed in any probe (refused, filtered, host down, no route): `fail`;
//! - connects, but answers HTTP 5xx, closes or resets without an answer ("drops"), or no answer
//!   within the probe timeout ("hangs"), in every probe: `fail` (every request the LB sends it fails);
//! - the same in some of the probes: `warn` (it fails intermittently);
//! - answers, with a median connect time or time to first byte past `--slow`: `warn`;
//! - otherwise `pass`. The step takes the worst of its backends.
//!
//! With `--data`, each backend's replies in the traffic (the LB's forwarded legs or its own
//! connections, the probes' left out) are judged too, by the rule of [`crate::replies`]
//! (5xx: `fail` / `warn`; slow: `warn`), with the clients' time to first byte at the VIP beside
//! them so the report can say whether the time is the backends' or the LB's.

use std::net::{IpAddr, SocketAddr};

use super::{
    BackendVerdict, Facts, ProbeFacts, Status, StepFinding, StepVerdict, TcpResult,
    flow::{Flow, ReasonCounts},
};
use crate::probe::series::{Health, Stats};
use crate::replies::{self, Replies, Reply};
use crate::{
    checklist::{DropClass, Step},
    endpoint::Endpoint,
    event::{Detail, Dir, KernelEvent},
};

/// One backend's probe result, with its reason.
#[derive(Clone, Debug, PartialEq)]
pub enum BackendFinding {
    /// No probe ran for it.
    NotProbed,
    Connected {
        http: Option<u16>,
    },
    /// Connects, and answers HTTP 5xx in `errors` of `of` probes (`status` the most frequent);
    /// `ttfb_ms`: the time to first byte of every answer.
    Erroring {
        status: u16,
        errors: usize,
        of: usize,
        ttfb_ms: Option<Stats>,
    },
    /// Connects, then no answer (`phase`: tls / http) within the probe timeout (`after_ms`) in
    /// `hung` of `of` probes.
    Hangs {
        phase: String,
        hung: usize,
        of: usize,
        after_ms: f64,
        connect_ms: Option<Stats>,
    },
    /// Connects, then resets or closes (`how`) without an answer (`phase`: tls / http) in
    /// `dropped` of `of` probes.
    Drops {
        phase: String,
        how: String,
        dropped: usize,
        of: usize,
    },
    /// Answers, slowly: the median of `what` (connect / first_byte) past `--slow`.
    Slow {
        what: String,
        stats: Stats,
        threshold_ms: f64,
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

impl BackendFinding {
    /// The rule in the module doc, for a backend that connects; `None` for the others (their
    /// TCP result decides).
    pub fn status(&self) -> Option<Status> {
        match self {
            Self::Erroring { errors, of, .. }
            | Self::Hangs {
                hung: errors, of, ..
            }
            | Self::Drops {
                dropped: errors,
                of,
                ..
            } => Some(if errors >= of {
                Status::Fail
            } else {
                Status::Warn
            }),
            Self::Slow { .. } => Some(Status::Warn),
            Self::Connected { .. } => Some(Status::Pass),
            _ => None,
        }
    }

    /// A backend that connects but serves badly (erroring, hanging or slow).
    pub fn degraded(&self) -> bool {
        matches!(
            self,
            Self::Erroring { .. } | Self::Hangs { .. } | Self::Drops { .. } | Self::Slow { .. }
        )
    }
}

/// The backends as a whole.
#[derive(Clone, Debug, PartialEq)]
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
#[derive(Clone, Debug, PartialEq)]
pub struct LbToBackend {
    pub backends: BackendsFinding,
    pub forward_drops: Option<ReasonCounts>,
    /// Backends that connect but serve badly (erroring, hanging, slow), with how.
    pub degraded: Vec<(SocketAddr, BackendFinding)>,
    /// `--data`: each backend's replies seen in the traffic, in `--backend` order (backends
    /// with none left out).
    pub traffic: Vec<(SocketAddr, Replies)>,
    /// `--data`: the LB's replies to clients at the VIP.
    pub clients: Option<Replies>,
}

impl LbToBackend {
    /// `--data`: some backend's replies in the traffic are erroring or slow.
    pub fn traffic_degraded(&self) -> bool {
        self.traffic
            .iter()
            .any(|(_, r)| r.health != replies::ReplyHealth::Fine)
    }

    pub fn status(&self) -> Status {
        if self.forward_drops.is_some() {
            return Status::Fail;
        }
        let traffic = self.traffic.iter().map(|(_, r)| r.health.status());
        match self.backends {
            BackendsFinding::NoBackends => Status::Unknown,
            BackendsFinding::Unreachable { .. } => Status::Fail,
            BackendsFinding::AllReachable { .. } => {
                let st: Vec<Status> = self
                    .degraded
                    .iter()
                    .filter_map(|(_, b)| b.status())
                    .chain(traffic)
                    .collect();
                if st.contains(&Status::Fail) {
                    Status::Fail
                } else if st.contains(&Status::Warn) {
                    Status::Warn
                } else {
                    Status::Pass
                }
            }
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
    let degraded: Vec<&BackendVerdict> = backends.iter().filter(|b| b.finding.degraded()).collect();
    let (all, mut evidence) = if f.backends.is_empty() {
        (BackendsFinding::NoBackends, Vec::new())
    } else if down.is_empty() {
        // The first two events of each backend's probes, and every event of a degraded one's.
        let evidence = backends
            .iter()
            .flat_map(|b| {
                let n = if b.finding.degraded() { usize::MAX } else { 2 };
                b.evidence.iter().take(n).copied()
            })
            .collect();
        (
            BackendsFinding::AllReachable {
                backends: backends.len(),
            },
            evidence,
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
    let (traffic, clients, traffic_evidence) = traffic(f);
    evidence.extend(traffic_evidence);
    evidence.sort_unstable();
    evidence.dedup();
    let finding = LbToBackend {
        backends: all,
        forward_drops,
        degraded: degraded
            .iter()
            .map(|b| (b.addr, b.finding.clone()))
            .collect(),
        traffic,
        clients,
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

/// The most reply events of one backend that back a traffic finding.
const TRAFFIC_EVIDENCE: usize = 8;

/// `--data`: each backend's replies and the clients' at the VIP (the probes' connections left
/// out), and the reply events of the backends whose replies are not fine.
fn traffic(f: &Facts<'_>) -> (Vec<(SocketAddr, Replies)>, Option<Replies>, Vec<usize>) {
    // A probe's reply: from its target to one of the series' local ports.
    let probe_reply = |r: &Reply| {
        f.probes
            .iter()
            .chain(f.vip_probe)
            .any(|p| p.target == r.from && p.ports.contains(&r.to.port()))
    };
    let mut seen = std::collections::HashSet::new();
    let all: Vec<(usize, Reply)> = f
        .events
        .iter()
        .enumerate()
        .filter_map(|(i, e)| Some((i, Reply::of(e)?)))
        .filter(|(_, r)| !probe_reply(r))
        .filter(|(_, r)| seen.insert((r.from, r.to)))
        .collect();
    let mut evidence = Vec::new();
    let traffic = f
        .backends
        .iter()
        .filter_map(|b| {
            let mine: Vec<&(usize, Reply)> =
                all.iter().filter(|(_, r)| b.matches(&r.from)).collect();
            if mine.is_empty() {
                return None;
            }
            let judged = replies::judge(mine.iter().map(|(_, r)| r), f.slow);
            if judged.health != replies::ReplyHealth::Fine {
                evidence.extend(mine.iter().take(TRAFFIC_EVIDENCE).map(|(i, _)| *i));
            }
            Some((SocketAddr::new(b.addr, b.port.unwrap_or(0)), judged))
        })
        .collect();
    let to_clients: Vec<&Reply> = all
        .iter()
        .map(|(_, r)| r)
        .filter(|r| f.vip.matches(&r.from))
        .collect();
    let clients = (!to_clients.is_empty()).then(|| replies::judge(to_clients, f.slow));
    (traffic, clients, evidence)
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
        TcpResult::Connected => served(p),
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

/// How a backend that connects serves, from its series of probes (a single probe is not judged:
/// connected).
pub fn served(p: &ProbeFacts) -> BackendFinding {
    let connected = BackendFinding::Connected {
        http: p.http_status,
    };
    let Some(series) = &p.series else {
        return connected;
    };
    match &series.health {
        Health::Erroring { status, errors, of } => BackendFinding::Erroring {
            status: *status,
            errors: *errors,
            of: *of,
            ttfb_ms: series.ttfb_ms,
        },
        Health::Hangs {
            phase,
            hung,
            of,
            after_ms,
        } => BackendFinding::Hangs {
            phase: phase.clone(),
            hung: *hung,
            of: *of,
            after_ms: *after_ms,
            connect_ms: series.connect_ms,
        },
        Health::Drops {
            phase,
            how,
            dropped,
            of,
        } => BackendFinding::Drops {
            phase: phase.clone(),
            how: how.clone(),
            dropped: *dropped,
            of: *of,
        },
        Health::Slow {
            what, threshold_ms, ..
        } => {
            let stats = if what == "connect" {
                series.connect_ms
            } else {
                series.ttfb_ms
            };
            stats.map_or(connected, |stats| BackendFinding::Slow {
                what: what.clone(),
                stats,
                threshold_ms: *threshold_ms,
            })
        }
        Health::Fine | Health::Unreachable { .. } => connected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(h: Health) -> BackendFinding {
        let stats = Stats {
            min: 1.0,
            median: 1500.0,
            max: 2000.0,
            n: 3,
        };
        served(&ProbeFacts {
            target: "10.0.0.2:8080".parse().unwrap(),
            local_port: Some(1),
            ports: vec![1, 2, 3],
            tcp: TcpResult::Connected,
            why: None,
            http_status: Some(200),
            series: Some(crate::probe::series::Summary {
                probes: 3,
                connect_ms: Some(stats),
                ttfb_ms: Some(stats),
                statuses: vec![200; 3],
                health: h,
            }),
        })
    }

    /// The warn / fail rule of the module doc.
    #[test]
    fn every_probe_failing_fails_some_warn_slow_warns() {
        let erroring = |errors| Health::Erroring {
            status: 502,
            errors,
            of: 3,
        };
        let hangs = |hung| Health::Hangs {
            phase: "http".into(),
            hung,
            of: 3,
            after_ms: 3000.0,
        };
        let slow = Health::Slow {
            what: "connect".into(),
            median_ms: 1500.0,
            threshold_ms: 1000.0,
        };
        let status = |h| finding(h).status();
        assert_eq!(status(erroring(3)), Some(Status::Fail));
        assert_eq!(status(erroring(1)), Some(Status::Warn));
        assert_eq!(status(hangs(3)), Some(Status::Fail));
        assert_eq!(status(hangs(2)), Some(Status::Warn));
        let drops = |dropped| Health::Drops {
            phase: "http".into(),
            how: "reset".into(),
            dropped,
            of: 3,
        };
        assert_eq!(status(drops(3)), Some(Status::Fail));
        assert_eq!(status(drops(1)), Some(Status::Warn));
        assert!(finding(drops(1)).degraded());
        assert_eq!(status(slow.clone()), Some(Status::Warn));
        assert_eq!(status(Health::Fine), Some(Status::Pass));
        assert_eq!(BackendFinding::Refused.status(), None);
        assert!(
            matches!(finding(slow), BackendFinding::Slow { ref what, stats, threshold_ms }
            if what == "connect" && stats.median == 1500.0 && threshold_ms == 1000.0)
        );
        assert!(!finding(Health::Fine).degraded() && finding(erroring(1)).degraded());
        // The step takes the worst of its backends.
        let step = |d: Vec<BackendFinding>| {
            LbToBackend {
                backends: BackendsFinding::AllReachable { backends: 3 },
                forward_drops: None,
                degraded: d
                    .into_iter()
                    .map(|b| ("10.0.0.2:8080".parse().unwrap(), b))
                    .collect(),
                traffic: Vec::new(),
                clients: None,
            }
            .status()
        };
        assert_eq!(step(vec![]), Status::Pass);
        assert_eq!(step(vec![finding(erroring(1))]), Status::Warn);
        assert_eq!(
            step(vec![finding(erroring(1)), finding(hangs(3))]),
            Status::Fail
        );
    }
}
