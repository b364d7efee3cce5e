//! Step 4, `return-path`: do backend replies come back through the LB (Layer 4 without SNAT),
//! and do the LB's SYN-ACKs reach the client?

use std::net::SocketAddr;

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
    /// No SYN-ACK left the LB towards a client.
    NothingAnswered,
    /// The LB sent SYN-ACKs and `clients` kept retransmitting their SYN.
    SynAcksLost { clients: usize },
    /// SYN-ACKs left; no client acknowledged one yet.
    NotAcknowledged { syn_acks: usize },
    /// `proven` of `answered` connections acknowledged the SYN-ACK; `via_backend` of them got a
    /// backend's SYN-ACK through the LB; `retransmitted` clients retransmitted their SYN after it.
    Acknowledged {
        proven: usize,
        answered: usize,
        via_backend: usize,
        retransmitted: usize,
    },
}

impl ReturnFinding {
    pub fn status(&self) -> Status {
        match self {
            Self::Bypass { .. } | Self::SynAcksLost { .. } => Status::Fail,
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
