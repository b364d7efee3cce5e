//! The verdict engine of `lbtrace check`: kernel events and probe outcomes in, a verdict for each
//! step of the checklist out. Pure: no IO, no clock (the window is passed in), unit-tested with
//! hand-made event sequences.
//!
//! Client connections to the VIP are followed by their tuple ([`flow`]). The Layer 4 / Layer 7
//! question is answered from behaviour: a NAT forwards the client's SYN with its initial sequence
//! number (ISN) intact, with or without SNAT; a proxy answers the SYN itself. Whether a packet
//! reached the other side is read from the sequence space ([`crate::checklist::seq_past`]): a
//! client FIN or RST acknowledging the LB's ISN + 1 proves the SYN-ACK arrived; a client FIN with
//! seq past its ISN + 1 proves it sent a request; an LB FIN past its ISN + 1 proves it answered.
//!
//! Each step has its own module and its own typed finding ([`StepFinding`]); the words for them
//! are in [`super::report`].

pub mod backends;
pub mod client;
pub mod flow;
pub mod handling;
pub mod host;
pub mod resets;
pub mod return_path;
pub mod unserved;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;

pub use backends::{BackendFinding, BackendsFinding, LbToBackend};
pub use client::ClientFinding;
pub use handling::{HandlingFinding, LocalService, Outcomes};
pub use host::{HostFacts, HostFinding};
pub use return_path::{ReturnFinding, Side};
pub use unserved::Unserved;

use crate::{
    checklist::Step,
    endpoint::Endpoint,
    event::KernelEvent,
    kernel::btf::DropReasons,
    probe::series::{Health, Summary},
};
use flow::Flow;

/// How a step came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    Warn,
    Unknown,
}

/// How the LB forwards: NAT (the client's SYN goes on to a backend) or proxy (it answers itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    L4,
    L7,
    Unknown,
}

/// The TCP result of a probe, as the engine needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpResult {
    Connected,
    Refused,
    Timeout,
    Unreachable,
    Error,
}

/// What a probe, or a series of probes of one target, found, reduced to what the rules use.
/// For a series, the single-probe fields are those of its representative probe
/// ([`crate::check::representative`]: the first that failed).
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeFacts {
    pub target: SocketAddr,
    /// The probe socket's local port: ties kernel events to the probe.
    pub local_port: Option<u16>,
    /// The local ports of every probe of the series (`local_port` among them): their kernel
    /// events are the target's evidence.
    pub ports: Vec<u16>,
    pub tcp: TcpResult,
    /// The OS's word for an unreachable / error result.
    pub why: Option<String>,
    pub http_status: Option<u16>,
    /// The series' numbers and health; `None` for a single probe judged alone.
    pub series: Option<Summary>,
}

impl ProbeFacts {
    /// The series' health; a single probe's is not judged (`None`).
    pub fn health(&self) -> Option<&Health> {
        self.series.as_ref().map(|s| &s.health)
    }
}

/// Everything the rules look at.
pub struct Facts<'a> {
    pub vip: Endpoint,
    pub backends: &'a [Endpoint],
    /// `--client`: only this client's connections count as client evidence.
    pub client: Option<Endpoint>,
    /// Kernel events, in time order.
    pub events: &'a [KernelEvent],
    /// One per backend, in `backends` order (absent when a probe could not run).
    pub probes: &'a [ProbeFacts],
    /// The LB host's own probe of the VIP, when it ran.
    pub vip_probe: Option<&'a ProbeFacts>,
    pub window_secs: f64,
    /// `--slow`: the time to first byte past which a backend's replies are slow.
    pub slow: std::time::Duration,
    pub reasons: &'a DropReasons,
    /// Which resets of this host's TCP stack the kernel traces (`capabilities.resets`); `None`
    /// when not traced: no RST is attributed ([`resets`]).
    pub resets: Option<crate::kernel::loader::ResetMode>,
    /// The LB host's limits before and after the window; `None` while the window is open.
    pub host: Option<&'a HostFacts>,
}

/// What a step found, typed per step.
#[derive(Clone, Debug, PartialEq)]
pub enum StepFinding {
    ClientToLb(ClientFinding),
    LbHandling(HandlingFinding),
    LbToBackend(LbToBackend),
    ReturnPath(ReturnFinding),
}

impl StepFinding {
    pub fn status(&self) -> Status {
        match self {
            Self::ClientToLb(f) => f.status(),
            Self::LbHandling(f) => f.status(),
            Self::LbToBackend(f) => f.status(),
            Self::ReturnPath(f) => f.status(),
        }
    }
}

/// The verdict of one checklist step: its finding and the events that back it.
#[derive(Clone, Debug, PartialEq)]
pub struct StepVerdict {
    pub step: Step,
    pub status: Status,
    pub finding: StepFinding,
    /// Indices into `Facts::events`.
    pub evidence: Vec<usize>,
    /// A step left without evidence by an earlier step's failure.
    pub blocked_by: Option<Step>,
    /// The LB host's limits reached during the window that bear on this step; they can only
    /// make its status worse ([`host::escalate`]).
    pub host: Vec<HostFinding>,
    /// Step 3: the LB answers clients without any working backend connection ([`unserved`]).
    pub unserved: Option<Unserved>,
}

impl StepVerdict {
    fn new(step: Step, finding: StepFinding, evidence: Vec<usize>) -> Self {
        Self {
            step,
            status: finding.status(),
            finding,
            evidence,
            blocked_by: None,
            host: Vec::new(),
            unserved: None,
        }
    }
}

/// One backend as the LB host's probe found it.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendVerdict {
    pub addr: SocketAddr,
    /// The probe's result, with its reason.
    pub finding: BackendFinding,
    pub reachable: bool,
    pub evidence: Vec<usize>,
}

/// The whole checklist: the mode, each step's verdict and each backend's.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub mode: Mode,
    pub first_failed_step: Option<Step>,
    /// The four steps, in order.
    pub steps: Vec<StepVerdict>,
    pub backends: Vec<BackendVerdict>,
}

/// Judges every step.
pub fn judge(f: &Facts<'_>) -> Verdict {
    let c = flow::classify(f);
    let syn_flows: Vec<&Flow> = c.flows.iter().filter(|fl| !fl.syns.is_empty()).collect();
    let s1 = client::judge(f, &syn_flows);
    // Connections the LB host's stack kept: what the LB did with them is steps 2 to 4.
    let live: Vec<&Flow> = syn_flows
        .iter()
        .copied()
        .filter(|fl| !fl.stack_drop(f.events, f.reasons))
        .collect();
    let mode = handling::mode(&live);
    let host = f
        .host
        .map(|h| host_findings(f, h, mode, &syn_flows, &live))
        .unwrap_or_default();
    // SYNs a full accept queue refused failed at step 1: the later steps judge the others.
    let queue_full = host.iter().any(|h| {
        h.status == Status::Fail
            && matches!(h.pressure, crate::host::Pressure::AcceptQueueFull { .. })
    });
    let live: Vec<&Flow> = live
        .into_iter()
        .filter(|fl| !(queue_full && fl.unanswered()))
        .collect();
    let s2 = handling::judge(f, &live, mode);
    let (mut s3, backends) = backends::judge(f, &live, &c.probe_events);
    if let Some((u, evidence)) = unserved::judge(f, &live) {
        s3.status = Status::Fail;
        s3.evidence.extend(evidence);
        s3.evidence.sort_unstable();
        s3.evidence.dedup();
        s3.unserved = Some(u);
    }
    let s4 = return_path::judge(f, &live);
    let mut steps = vec![s1, s2, s3, s4];
    add_host(host, &syn_flows, &mut steps);
    // Steps left without evidence by an earlier failure are unknown, blocked by it.
    let first_fail = steps
        .iter()
        .find(|s| s.status == Status::Fail)
        .map(|s| s.step);
    if let Some(ff) = first_fail {
        for s in steps
            .iter_mut()
            .filter(|s| s.step > ff && s.status == Status::Unknown)
        {
            s.blocked_by = Some(ff);
        }
    }
    Verdict {
        mode,
        first_failed_step: first_fail,
        steps,
        backends,
    }
}

/// The host's findings for the window (see [`host`] for the rule).
fn host_findings(
    f: &Facts<'_>,
    h: &HostFacts,
    mode: Mode,
    syn_flows: &[&Flow],
    live: &[&Flow],
) -> Vec<HostFinding> {
    let rpfilter_drop = syn_flows.iter().any(|fl| {
        fl.drops.iter().any(|&i| {
            flow::drop_class(&f.events[i], f.reasons) == Some(crate::checklist::DropClass::RpFilter)
        })
    });
    let no_local_port = f
        .probes
        .iter()
        .filter(|p| p.tcp == TcpResult::Error)
        .filter_map(|p| {
            let why = p.why.as_ref()?;
            crate::probe::no_local_port(why).then(|| (p.target, why.clone()))
        })
        .collect();
    let seen = host::Seen {
        unanswered: live.iter().filter(|fl| fl.unanswered()).count(),
        syn_flows: syn_flows.len(),
        rpfilter_drop,
        no_local_port,
    };
    host::findings(h, mode, seen)
}

/// Gives each step the host findings tied to it, and lets them decide its status. A full accept
/// queue's unanswered SYNs join step 1's evidence.
fn add_host(host: Vec<HostFinding>, syn_flows: &[&Flow], steps: &mut [StepVerdict]) {
    let unanswered: Vec<&Flow> = syn_flows
        .iter()
        .copied()
        .filter(|fl| fl.unanswered() && fl.drops.is_empty())
        .take(3)
        .collect();
    for hf in host {
        let Some(s) = steps.get_mut(usize::from(hf.step()).saturating_sub(1)) else {
            continue;
        };
        if matches!(hf.pressure, crate::host::Pressure::AcceptQueueFull { .. }) {
            s.evidence
                .extend(flow::evidence_of(&unanswered, Flow::evidence));
            s.evidence.sort_unstable();
            s.evidence.dedup();
        }
        s.host.push(hf);
    }
    for s in steps.iter_mut() {
        s.status = host::escalate(s.status, &s.host);
    }
}
