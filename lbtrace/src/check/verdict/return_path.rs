//! Step 4, `return-path`: do backend replies come back through the LB (Layer 4 without SNAT),
//! do the LB's SYN-ACKs reach the client, and are the replies acknowledged (full-size segments
//! retransmitted while small ones pass being a path-MTU black hole)? The retransmissions are
//! the LB host's own (Layer 7, `tcp:tcp_retransmit_skb`) or, with the data-path mode
//! (`--data`), the backends' that the LB forwards toward the client (Layer 4).

use std::net::SocketAddr;

use crate::event::{Detail, Hook, KernelEvent};

use super::{
    Facts, Status, StepFinding, StepVerdict, TcpResult,
    flow::{Flow, evidence_of},
};
use crate::checklist::Step;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReturnFinding {
    /// Forwarded SYNs got no SYN-ACK through the LB while their backend answers the LB's own
    /// probe: its replies go around the LB.
    Bypass {
        connections: usize,
        backends: Vec<String>,
    },
    /// SYNs forwarded without NAT (the backend holds the VIP) got no reply through the LB, and
    /// the clients went on (closed with a FIN): the backends answer the clients directly
    /// (direct server return), by design of such an LB. `unfinished` of them never went on.
    DirectReturn { connections: usize, finished: usize },
    /// No SYN-ACK left the LB towards a client.
    NothingAnswered,
    /// The LB sent SYN-ACKs and `clients` kept retransmitting their SYN.
    SynAcksLost { clients: usize },
    /// SYN-ACKs left; no client acknowledged one yet.
    NotAcknowledged { syn_acks: usize },
    /// Replies to clients retransmitted again and again, full-size segments only (or nearly),
    /// no ICMP fragmentation-needed seen: the path to the client drops what is larger than its
    /// MTU and says nothing.
    MtuBlackHole {
        connections: usize,
        /// Full-size and smaller data retransmissions of those connections.
        full_size: usize,
        small: usize,
        /// The MSS the clients advertised in their SYNs (the first seen), and the LB's own MSS
        /// on those connections.
        client_mss: Option<u16>,
        lb_mss: Option<u16>,
        /// The retransmissions were forwarded (Layer 4, seen with `--data`): the backend sent
        /// them, and `lb_mss` is the size from which its segments are full-size.
        forwarded: bool,
    },
    /// Segments retransmitted again and again without the MTU shape: `side` stopped
    /// acknowledging.
    Stalled {
        side: Side,
        connections: usize,
        retransmissions: usize,
        full_size: usize,
        /// ICMP fragmentation-needed / packet-too-big about those connections reached the LB.
        frag_needed: bool,
    },
    /// `proven` of `answered` connections acknowledged the SYN-ACK; `via_backend` of them got a
    /// backend's SYN-ACK through the LB; `retransmitted` clients retransmitted their SYN after it.
    Acknowledged {
        proven: usize,
        answered: usize,
        via_backend: usize,
        retransmitted: usize,
    },
}

/// Which peer of the LB host stopped acknowledging its segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The client, or the path from the LB to it.
    Client,
    /// A backend, or the path to it (the LB's own backend connections, Layer 7).
    Backend,
}

/// Retransmissions of one connection from which it counts as stalled: the first RTO and the
/// tail-loss probe are routine on a lossy path, the third is not.
pub const STALL_RETRANSMISSIONS: usize = 3;

impl ReturnFinding {
    pub fn status(&self) -> Status {
        match self {
            Self::Bypass { .. } | Self::SynAcksLost { .. } | Self::MtuBlackHole { .. } => {
                Status::Fail
            }
            Self::DirectReturn {
                connections,
                finished,
            } if finished == connections => Status::Pass,
            // Some clients never got a reply they acted on: the direct path lost them.
            Self::DirectReturn { finished, .. } if *finished > 0 => Status::Warn,
            Self::DirectReturn { .. } => Status::Fail,
            Self::Stalled { .. } => Status::Warn,
            Self::NothingAnswered | Self::NotAcknowledged { .. } => Status::Unknown,
            Self::Acknowledged {
                retransmitted: 0, ..
            } => Status::Pass,
            Self::Acknowledged { .. } => Status::Warn,
        }
    }
}

/// `live`: the client connections the LB host's stack kept.
pub fn judge(f: &Facts<'_>, live: &[&Flow]) -> StepVerdict {
    let (finding, evidence) = find(f, live);
    StepVerdict::new(Step::ReturnPath, StepFinding::ReturnPath(finding), evidence)
}

fn find(f: &Facts<'_>, live: &[&Flow]) -> (ReturnFinding, Vec<usize>) {
    let ev = f.events;
    // Forwarded SYNs that nothing answered through the LB: no SYN-ACK, no RST (a backend's RST
    // did come back), not dropped on the way (step 3's business).
    let answers_probe = |d: &SocketAddr| {
        f.backends
            .iter()
            .position(|b| b.matches(d))
            .and_then(|bi| f.probes.get(bi))
            .is_some_and(|p| p.tcp == TcpResult::Connected)
    };
    // Those whose backend answers the LB's own probe: its replies to clients go around the LB.
    let around: Vec<&Flow> = live
        .iter()
        .copied()
        .filter(|fl| {
            fl.l4()
                && fl.backend_syn_acks.is_empty()
                && !fl.answered()
                && fl.lb_rsts.is_empty()
                && fl.forward_drops.is_empty()
        })
        .filter(|fl| {
            fl.forwarded
                .first()
                .is_some_and(|&i| answers_probe(&ev[i].dst))
        })
        .collect();
    if !around.is_empty() {
        let mut to: Vec<String> = around
            .iter()
            .filter_map(|fl| fl.forwarded.first().map(|&i| ev[i].dst.to_string()))
            .collect();
        to.sort();
        to.dedup();
        let first: Vec<&Flow> = around.iter().take(3).copied().collect();
        return (
            ReturnFinding::Bypass {
                connections: around.len(),
                backends: to,
            },
            evidence_of(&first, Flow::evidence),
        );
    }
    let answered: Vec<&Flow> = live.iter().copied().filter(|fl| fl.answered()).collect();
    // Forwarded unchanged, and nothing came back through the LB: direct server return.
    let direct: Vec<&Flow> = live
        .iter()
        .copied()
        .filter(|fl| {
            fl.forwarded_unchanged
                && !fl.answered()
                && fl.backend_syn_acks.is_empty()
                && fl.lb_rsts.is_empty()
        })
        .collect();
    if answered.is_empty() && !direct.is_empty() {
        let finished = direct.iter().filter(|fl| fl.client_finished(ev)).count();
        let first: Vec<&Flow> = direct.iter().take(3).copied().collect();
        return (
            ReturnFinding::DirectReturn {
                connections: direct.len(),
                finished,
            },
            evidence_of(&first, Flow::evidence),
        );
    }
    if answered.is_empty() {
        return (ReturnFinding::NothingAnswered, Vec::new());
    }
    let lost = answered
        .iter()
        .filter(|fl| fl.syn_after_syn_ack(ev) && !fl.client_got_syn_ack(ev))
        .count();
    let proven: Vec<&Flow> = answered
        .iter()
        .copied()
        .filter(|fl| fl.client_got_syn_ack(ev))
        .collect();
    if lost > 0 && proven.is_empty() {
        let lost_flows: Vec<&Flow> = answered
            .iter()
            .copied()
            .filter(|fl| fl.syn_after_syn_ack(ev) && !fl.client_got_syn_ack(ev))
            .take(3)
            .collect();
        return (
            ReturnFinding::SynAcksLost { clients: lost },
            evidence_of(&lost_flows, Flow::evidence),
        );
    }
    if let Some(stall) = stalls(f, &answered) {
        return stall;
    }
    if proven.is_empty() {
        return (
            ReturnFinding::NotAcknowledged {
                syn_acks: answered.len(),
            },
            answered
                .iter()
                .take(2)
                .flat_map(|fl| fl.syn_acks.iter().copied())
                .collect(),
        );
    }
    let via_backend = answered
        .iter()
        .filter(|fl| fl.l4() && !fl.backend_syn_acks.is_empty())
        .count();
    let first: Vec<&Flow> = proven.iter().take(2).copied().collect();
    let evidence = evidence_of(&first, |fl| {
        let mut v = fl.syn_acks.clone();
        v.extend(fl.backend_syn_acks.iter().copied());
        v.extend(fl.client_closes.iter().take(1).copied());
        v
    });
    (
        ReturnFinding::Acknowledged {
            proven: proven.len(),
            answered: answered.len(),
            via_backend,
            retransmitted: lost,
        },
        evidence,
    )
}

/// Data retransmissions (not a SYN-ACK's: losing those is [`ReturnFinding::SynAcksLost`]):
/// the LB host's own when it has any (with `--data` the same segments are also seen leaving at
/// the interface), else those the LB forwarded (data-path mode, Layer 4).
fn data_retrans<'a>(
    ev: &'a [KernelEvent],
    idx: &'a [usize],
) -> impl Iterator<Item = &'a KernelEvent> {
    let own = idx.iter().any(|&i| ev[i].hook == Hook::TcpRetransmit);
    idx.iter().map(|&i| &ev[i]).filter(move |e| {
        matches!(e.detail, Detail::Retrans)
            && !e.has_syn()
            && (!own || e.hook == Hook::TcpRetransmit)
    })
}

/// ICMP fragmentation-needed (IPv4 type 3 code 4) or packet-too-big (ICMPv6 type 2).
fn frag_needed(e: &KernelEvent) -> bool {
    match e.detail {
        Detail::Icmp {
            outer_src,
            icmp_type,
            icmp_code,
            ..
        } => {
            if outer_src.is_ipv6() {
                icmp_type == 2
            } else {
                icmp_type == 3 && icmp_code == 4
            }
        }
        _ => false,
    }
}

/// Connections whose replies the LB retransmitted [`STALL_RETRANSMISSIONS`] times or more: a
/// path-MTU black hole when the full-size ones are more than twice the small ones and no ICMP
/// fragmentation-needed came back, a stall of the client's side otherwise; else the LB's own
/// backend connections stalling.
fn stalls(f: &Facts<'_>, answered: &[&Flow]) -> Option<(ReturnFinding, Vec<usize>)> {
    let ev = f.events;
    let stalled: Vec<&Flow> = answered
        .iter()
        .copied()
        .filter(|fl| data_retrans(ev, &fl.retrans).count() >= STALL_RETRANSMISSIONS)
        .collect();
    if stalled.is_empty() {
        return backend_stalls(f);
    }
    let all: Vec<&KernelEvent> = stalled
        .iter()
        .flat_map(|fl| data_retrans(ev, &fl.retrans))
        .collect();
    let full_size = all.iter().filter(|e| e.full_size()).count();
    let small = all.len() - full_size;
    let icmp = stalled
        .iter()
        .any(|fl| fl.icmp.iter().any(|&i| frag_needed(&ev[i])));
    let first: Vec<&Flow> = stalled.iter().take(2).copied().collect();
    let evidence = evidence_of(&first, |fl| {
        let mut v = fl.syns.iter().take(1).copied().collect::<Vec<_>>();
        v.extend(fl.syn_acks.iter().take(1).copied());
        v.extend(fl.retrans.iter().take(4).copied());
        v.extend(fl.icmp.iter().take(2).copied());
        v
    });
    if full_size >= STALL_RETRANSMISSIONS && small * 2 < full_size && !icmp {
        let client_mss = stalled
            .iter()
            .flat_map(|fl| fl.syns.iter().map(|&i| ev[i].mss))
            .find(|&m| m != 0);
        let lb_mss = all.iter().map(|e| e.mss).find(|&m| m != 0);
        let forwarded = all.iter().all(|e| e.hook != Hook::TcpRetransmit);
        return Some((
            ReturnFinding::MtuBlackHole {
                connections: stalled.len(),
                full_size,
                small,
                client_mss,
                lb_mss,
                forwarded,
            },
            evidence,
        ));
    }
    Some((
        ReturnFinding::Stalled {
            side: Side::Client,
            connections: stalled.len(),
            retransmissions: all.len(),
            full_size,
            frag_needed: icmp,
        },
        evidence,
    ))
}

/// The LB's own connections to backends (Layer 7) whose segments it retransmitted
/// [`STALL_RETRANSMISSIONS`] times or more (not forwarded ones: a client's data the LB
/// forwards again is the client's retransmission).
fn backend_stalls(f: &Facts<'_>) -> Option<(ReturnFinding, Vec<usize>)> {
    let mut per_conn: std::collections::HashMap<(SocketAddr, SocketAddr), Vec<usize>> =
        std::collections::HashMap::new();
    for (i, e) in f.events.iter().enumerate() {
        if matches!(e.detail, Detail::Retrans)
            && e.hook == Hook::TcpRetransmit
            && !e.has_syn()
            && f.backends.iter().any(|b| b.matches(&e.dst))
        {
            per_conn.entry((e.src, e.dst)).or_default().push(i);
        }
    }
    let mut stalled: Vec<Vec<usize>> = per_conn
        .into_values()
        .filter(|v| v.len() >= STALL_RETRANSMISSIONS)
        .collect();
    if stalled.is_empty() {
        return None;
    }
    stalled.sort_by_key(|v| v.first().copied());
    let retransmissions = stalled.iter().map(Vec::len).sum();
    let full_size = stalled
        .iter()
        .flatten()
        .filter(|&&i| f.events[i].full_size())
        .count();
    let mut evidence: Vec<usize> = stalled
        .iter()
        .take(2)
        .flat_map(|v| v.iter().take(4).copied())
        .collect();
    evidence.sort_unstable();
    Some((
        ReturnFinding::Stalled {
            side: Side::Backend,
            connections: stalled.len(),
            retransmissions,
            full_size,
            frag_needed: false,
        },
        evidence,
    ))
}
