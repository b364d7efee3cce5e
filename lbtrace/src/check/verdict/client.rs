//! Step 1, `client-to-lb`: do clients' SYNs reach the LB, and does the LB host keep them?

use super::{
    Facts, Status, StepFinding, StepVerdict,
    flow::{Flow, ReasonCounts, evidence_of},
    resets::{RstMaker, first_made_by},
};
use crate::{checklist::Step, endpoint::Endpoint};

#[derive(Clone, Debug, PartialEq)]
pub enum ClientFinding {
    /// No SYN to the VIP (from `client`, when given) arrived within the window: the problem,
    /// if a client was connecting, is upstream.
    NoSyn {
        vip: Endpoint,
        client: Option<Endpoint>,
        window_secs: f64,
    },
    /// SYNs arrived and the LB host dropped them, for `reasons`. `rst_made_by`: who made the
    /// RSTs the clients got for them (a firewall's `reject with tcp reset` drops the SYN and
    /// answers it; [`super::resets`]), `None` when none was sent or resets are not traced.
    Dropped {
        connections: usize,
        of: usize,
        reasons: ReasonCounts,
        rst_made_by: Option<RstMaker>,
    },
    /// SYNs arrived and the LB host's stack took them in; `nat_dropped` connections' SYNs were
    /// NATed and then dropped by the LB host on their way to a backend (steps 2 and 3 judge that).
    Reached {
        syns: usize,
        connections: usize,
        nat_dropped: usize,
    },
}

impl ClientFinding {
    pub fn status(&self) -> Status {
        match self {
            Self::NoSyn { .. } | Self::Dropped { .. } => Status::Fail,
            Self::Reached { .. } => Status::Pass,
        }
    }
}

/// `syn_flows`: the client connections that sent a SYN.
pub fn judge(f: &Facts<'_>, syn_flows: &[&Flow]) -> StepVerdict {
    let ev = f.events;
    let dropped: Vec<&Flow> = syn_flows
        .iter()
        .copied()
        .filter(|fl| fl.stack_drop(ev, f.reasons))
        .collect();
    let (finding, evidence) = if syn_flows.is_empty() {
        (
            ClientFinding::NoSyn {
                vip: f.vip,
                client: f.client,
                window_secs: f.window_secs,
            },
            Vec::new(),
        )
    } else if !dropped.is_empty() {
        let idx: Vec<usize> = dropped
            .iter()
            .flat_map(|fl| fl.drops.iter().copied())
            .collect();
        (
            ClientFinding::Dropped {
                connections: dropped.len(),
                of: syn_flows.len(),
                reasons: ReasonCounts::of(ev, &idx, f.reasons),
                rst_made_by: dropped.iter().find_map(|fl| {
                    first_made_by(ev, fl.lb_rsts.iter().copied(), &fl.resets, f.resets)
                }),
            },
            evidence_of(&dropped, Flow::evidence),
        )
    } else {
        (
            ClientFinding::Reached {
                syns: syn_flows.iter().map(|fl| fl.syns.len()).sum(),
                connections: syn_flows.len(),
                nat_dropped: syn_flows.iter().filter(|fl| fl.nat_dropped()).count(),
            },
            syn_flows
                .iter()
                .take(3)
                .flat_map(|fl| fl.syns.iter().take(1).copied())
                .collect(),
        )
    };
    StepVerdict::new(Step::ClientToLb, StepFinding::ClientToLb(finding), evidence)
}
