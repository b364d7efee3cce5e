//! Step 2, `lb-handling`: Layer 4 or Layer 7, and what the LB does with the connections it
//! accepts, including when it cannot serve them.
//!
//! The LB host's own requests to the VIP (`--probe-count` of them) are judged here too: an LB
//! that answers them with 5xx (HAProxy's 503 or 504, nginx's 502) is handling requests it
//! cannot serve with an error page, which is this step's question; why it cannot serve them is
//! step 3's. Hence the rule ([`LocalService::status`]): when a backend does not answer the LB
//! host's own probes fine, step 3 says why (and fails or warns), and this step names the VIP's
//! errors, hangs or slowness in its words without changing its status: an error page while
//! backends are down is the LB handling what it cannot serve. When every backend answers fine,
//! it is the LB's own doing (its backend list, limits or timeouts): errors or hangs in *every*
//! request fail this step, in some of them warn, and a slow VIP (median past `--slow`) warns.

use super::{
    Facts, Mode, Status, StepFinding, StepVerdict,
    flow::{Flow, evidence_of},
    resets::{RstMaker, first_made_by},
};
use crate::{checklist::Step, endpoint::Endpoint, probe::series::Health};

/// What became of the connections the LB took (answered or forwarded), by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcomes {
    /// Reset by the LB after the client's request.
    pub rst_after_request: usize,
    /// Reset before any data (at Layer 4: the backend refusing).
    pub rst_immediate: usize,
    /// Closed by the LB without a response.
    pub closed_empty: usize,
    /// Answered, then closed.
    pub answered_closed: usize,
    /// Refused by the LB host's kernel (NO_SOCKET).
    pub kernel_refused: usize,
    /// Neither answered, nor forwarded, nor reset.
    pub unanswered: usize,
    /// NATed (Layer 4), then dropped by the LB host before leaving toward a backend: step 3
    /// names the drop reasons (a host setting such as `ip_forward` is a host finding here).
    pub nat_dropped: usize,
    /// Who made the first of the LB's RSTs counted in `rst_after_request` / `rst_immediate`
    /// ([`super::resets`]); `None` when resets are not traced or there was none.
    pub rst_made_by: Option<RstMaker>,
}

/// The LB host's own requests to the VIP, when they did not all get a fine answer.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalService {
    /// Erroring, hanging, dropping or slow (never fine or unreachable).
    pub health: Health,
    /// Every backend answered the LB host's own probes fine.
    pub backends_fine: bool,
}

impl LocalService {
    /// The rule in the module doc.
    pub fn status(&self) -> Status {
        if !self.backends_fine {
            return Status::Pass;
        }
        match self.health {
            Health::Erroring { errors, of, .. }
            | Health::Hangs {
                hung: errors, of, ..
            }
            | Health::Drops {
                dropped: errors,
                of,
                ..
            } if errors >= of => Status::Fail,
            Health::Erroring { .. }
            | Health::Hangs { .. }
            | Health::Drops { .. }
            | Health::Slow { .. } => Status::Warn,
            Health::Fine | Health::Unreachable { .. } => Status::Pass,
        }
    }

    /// From the VIP's and the backends' series; `None` when the VIP's answers were fine (or it
    /// could not be reached from the LB host: a Layer 4 VIP has no local listener).
    pub fn of(f: &Facts<'_>) -> Option<Self> {
        let backends_fine = !f.probes.is_empty()
            && f.probes.len() == f.backends.len()
            && f.probes
                .iter()
                .all(|p| matches!(p.health(), Some(Health::Fine)));
        Self::judged(f.vip_probe?.health()?, backends_fine)
    }

    /// From the VIP's health and whether every backend answered fine; `None` when the VIP's
    /// answers were fine or it could not be reached from the LB host.
    pub fn judged(health: &Health, backends_fine: bool) -> Option<Self> {
        if matches!(health, Health::Fine | Health::Unreachable { .. }) {
            return None;
        }
        Some(Self {
            health: health.clone(),
            backends_fine,
        })
    }
}

/// The worse of two statuses (fail over warn over pass; unknown only over pass).
fn worse(a: Status, b: Status) -> Status {
    let rank = |s: Status| match s {
        Status::Pass => 0,
        Status::Unknown => 1,
        Status::Warn => 2,
        Status::Fail => 3,
    };
    if rank(b) > rank(a) { b } else { a }
}

#[derive(Clone, Debug, PartialEq)]
pub enum HandlingFinding {
    /// No client connection got past the LB host's stack.
    NoConnection,
    /// Nothing serves the VIP: the kernel refuses (`kernel_refused`), or nothing answers.
    /// `rst_made_by`: who made the RSTs the clients got ([`super::resets`]).
    NothingServes {
        vip: Endpoint,
        kernel_refused: bool,
        rst_made_by: Option<RstMaker>,
    },
    /// The LB served the connections (`outcomes` says how each ended).
    Served {
        mode: Mode,
        /// Layer 4 forwarding without NAT: every forwarded SYN left still to the VIP.
        unchanged: bool,
        connections: usize,
        outcomes: Outcomes,
        /// The LB host's own HTTP request to the VIP got this status.
        local_http: Option<u16>,
        /// The LB host's own requests to the VIP, when not all were answered fine.
        local: Option<LocalService>,
    },
    /// `hang` connections: the LB accepted the request and sent nothing back.
    Hang {
        mode: Mode,
        unchanged: bool,
        hang: usize,
        outcomes: Outcomes,
        local_http: Option<u16>,
        local: Option<LocalService>,
    },
}

impl Outcomes {
    /// Connections that failed at this step: the LB neither answered nor forwarded them, or its
    /// kernel refused them. Both causes are on the LB host. (A reset or a close is the LB
    /// handling a failure, usually a backend's: step 3 judges that.)
    pub fn failed(&self) -> usize {
        self.unanswered + self.kernel_refused
    }
}

impl HandlingFinding {
    /// Never `pass` while a connection failed here: any failed connection fails the step (its
    /// cause is the LB host); hanging connections (the LB waits for a backend) are a warning;
    /// the LB host's own requests to the VIP by [`LocalService::status`].
    pub fn status(&self) -> Status {
        let clients = self.clients_status();
        match self {
            Self::Served { local: Some(l), .. } | Self::Hang { local: Some(l), .. } => {
                worse(clients, l.status())
            }
            _ => clients,
        }
    }

    fn clients_status(&self) -> Status {
        match self {
            Self::NoConnection => Status::Unknown,
            Self::NothingServes { .. } => Status::Fail,
            Self::Served { outcomes, .. } | Self::Hang { outcomes, .. }
                if outcomes.failed() > 0 =>
            {
                Status::Fail
            }
            Self::Served { .. } => Status::Pass,
            Self::Hang { .. } => Status::Warn,
        }
    }
}

/// Layer 4 when at least as many connections were forwarded as answered by the LB itself.
pub fn mode(live: &[&Flow]) -> Mode {
    let l4 = live.iter().filter(|fl| fl.l4()).count();
    let l7 = live.iter().filter(|fl| fl.answered() && !fl.l4()).count();
    if l4 > 0 && l4 >= l7 {
        Mode::L4
    } else if l7 > 0 {
        Mode::L7
    } else {
        Mode::Unknown
    }
}

/// `live`: the client connections the LB host's stack kept.
pub fn judge(f: &Facts<'_>, live: &[&Flow], mode: Mode) -> StepVerdict {
    let (finding, evidence) = find(f, live, mode);
    StepVerdict::new(Step::LbHandling, StepFinding::LbHandling(finding), evidence)
}

fn find(f: &Facts<'_>, live: &[&Flow], mode: Mode) -> (HandlingFinding, Vec<usize>) {
    let ev = f.events;
    if live.is_empty() {
        return (HandlingFinding::NoConnection, Vec::new());
    }
    let kernel_refused = live
        .iter()
        .filter(|fl| fl.kernel_refused(ev, f.reasons))
        .count();
    let unanswered = live.iter().filter(|fl| fl.unanswered()).count();
    let served = live.len() - kernel_refused - unanswered;
    let local_http = f.vip_probe.and_then(|p| p.http_status);
    let local = LocalService::of(f);
    if served == 0 {
        let first: Vec<&Flow> = live.iter().take(3).copied().collect();
        // Before 6.10 the stack's answer for no socket fires no reset event; the kernel's
        // NO_SOCKET drop of the SYN says it all the same.
        let rst_made_by = live
            .iter()
            .find_map(|fl| first_made_by(ev, fl.lb_rsts.iter().copied(), &fl.resets, f.resets))
            .map(|m| match m {
                RstMaker::NoSocketOrFirewall if kernel_refused > 0 => RstMaker::NoSocket,
                m => m,
            });
        return (
            HandlingFinding::NothingServes {
                vip: f.vip,
                kernel_refused: kernel_refused > 0,
                rst_made_by,
            },
            evidence_of(&first, Flow::evidence),
        );
    }
    // What it does with the connections it accepted.
    let mut hang: Vec<&Flow> = Vec::new();
    let mut rst_after_req: Vec<&Flow> = Vec::new();
    let mut rst_immediate: Vec<&Flow> = Vec::new();
    let mut closed_empty: Vec<&Flow> = Vec::new();
    let mut answered_closed = 0;
    let mut nat_dropped = 0;
    for fl in live.iter().copied().filter(|fl| fl.answered() || fl.l4()) {
        if fl.nat_dropped() && !fl.answered() {
            nat_dropped += 1;
        } else if fl.client_gave_up(ev) {
            hang.push(fl);
        } else if let Some(&r) = fl.lb_rsts.first() {
            let acked_data = fl
                .isn
                .is_some_and(|isn| crate::checklist::seq_past(ev[r].ack, isn));
            if fl.client_sent_request(ev) || acked_data {
                rst_after_req.push(fl);
            } else {
                rst_immediate.push(fl);
            }
        } else if fl.server_sent_data(ev) {
            answered_closed += 1;
        } else if !fl.lb_fins.is_empty() {
            closed_empty.push(fl);
        } else if fl.client_sent_request(ev) && fl.client_got_syn_ack(ev) {
            hang.push(fl);
        }
    }
    let outcomes = Outcomes {
        rst_after_request: rst_after_req.len(),
        rst_immediate: rst_immediate.len(),
        closed_empty: closed_empty.len(),
        answered_closed,
        kernel_refused,
        unanswered,
        nat_dropped,
        rst_made_by: rst_after_req
            .iter()
            .chain(&rst_immediate)
            .find_map(|fl| first_made_by(ev, fl.lb_rsts.iter().copied(), &fl.resets, f.resets)),
    };
    let forwarded: Vec<&&Flow> = live.iter().filter(|fl| !fl.forwarded.is_empty()).collect();
    let unchanged = mode == Mode::L4
        && !forwarded.is_empty()
        && forwarded.iter().all(|fl| fl.forwarded_unchanged);
    let first: Vec<&Flow> = live.iter().take(2).copied().collect();
    let mut evid = evidence_of(&first, Flow::evidence);
    evid.extend(
        rst_after_req
            .iter()
            .flat_map(|fl| fl.lb_rsts.iter().copied()),
    );
    evid.extend(
        rst_immediate
            .iter()
            .flat_map(|fl| fl.lb_rsts.iter().copied()),
    );
    evid.extend(
        closed_empty
            .iter()
            .flat_map(|fl| fl.lb_fins.iter().copied()),
    );
    // The connections that failed here: their SYNs are the evidence.
    let failed: Vec<&Flow> = live
        .iter()
        .copied()
        .filter(|fl| fl.unanswered())
        .take(3)
        .collect();
    evid.extend(evidence_of(&failed, Flow::evidence));
    evid.sort_unstable();
    evid.dedup();
    if !hang.is_empty() {
        evid.extend(hang.iter().flat_map(|fl| fl.evidence()));
        evid.sort_unstable();
        evid.dedup();
        return (
            HandlingFinding::Hang {
                mode,
                unchanged,
                hang: hang.len(),
                outcomes,
                local_http,
                local,
            },
            evid,
        );
    }
    (
        HandlingFinding::Served {
            mode,
            unchanged,
            connections: live.len(),
            outcomes,
            local_http,
            local,
        },
        evid,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lb_serving_errors_fails_only_when_its_backends_are_fine() {
        let errors = |errors, backends_fine| {
            LocalService {
                health: Health::Erroring {
                    status: 503,
                    errors,
                    of: 3,
                },
                backends_fine,
            }
            .status()
        };
        assert_eq!(errors(3, true), Status::Fail);
        assert_eq!(errors(1, true), Status::Warn);
        // A backend does not answer fine: step 3 carries the status.
        assert_eq!(errors(3, false), Status::Pass);
        assert_eq!(errors(1, false), Status::Pass);
        let slow = LocalService {
            health: Health::Slow {
                what: "first_byte".into(),
                median_ms: 1200.0,
                threshold_ms: 1000.0,
            },
            backends_fine: true,
        };
        assert_eq!(slow.status(), Status::Warn);
        let slow = LocalService {
            backends_fine: false,
            ..slow
        };
        assert_eq!(slow.status(), Status::Pass);
        assert_eq!(worse(Status::Warn, Status::Fail), Status::Fail);
        assert_eq!(worse(Status::Pass, Status::Unknown), Status::Unknown);
        assert_eq!(worse(Status::Warn, Status::Pass), Status::Warn);
    }
}
