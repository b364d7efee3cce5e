//! The tripwire's background probes (`--probe-interval`): the probe `check` runs (TCP connect,
//! TLS with `--tls`, one HTTP request unless `--no-http`: [`ProbeArgs::spec`]), from the LB host
//! to each backend and to the VIP, so the tripwire knows each backend's state when no client
//! connects, when a failure leaves no packet on the wire (no route: `connect()` fails at once),
//! and when a backend connects but serves badly.
//!
//! A probe whose connect fails is a finding on its own (the recorder's [`probe_finding`]). One
//! that connects is judged with the target's probes before it, the last [`WINDOW`] that
//! connected, by `check`'s rule ([`series::judge`]), so one slow answer is not a verdict: a
//! backend erroring, dropping, hanging or slow is a step-3 finding ([`Finding::BackendDegraded`])
//! whenever its latest probe is not fine on its own; the VIP doing so while every backend's probes
//! are fine is step 2's `lb_serves_errors` (`check`'s [`LocalService`] rule). The VIP's connect
//! failing is no finding: a Layer-4 (NAT) VIP is usually not reachable from the LB host itself.
//!
//! Each probe is a tokio task of its own; at most one per target is under way at a time, so the
//! tasks stay bounded by the targets given, and the main loop never waits for one: it starts
//! them on its timer and takes their reports from a channel as it takes events from the rings.
//!
//! [`probe_finding`]: super::recorder::probe_finding

use std::{
    collections::{BTreeMap, HashSet, VecDeque},
    net::SocketAddr,
};

use tokio::{sync::mpsc, task::JoinSet};

use super::recorder::Finding;
use crate::{
    check::{
        self,
        report::series::{degraded_words, local_words},
        verdict::{LocalService, ProbeFacts, Status, backends::served},
    },
    cli::ProbeArgs,
    endpoint::Endpoint,
    probe::{
        self, ProbeReport, TcpOutcome,
        series::{self, Health},
    },
    render::Clock,
};

/// The probes of a target judged together: its last ones that connected.
pub const WINDOW: usize = 3;

/// One probe's report, with when it started.
pub struct Done {
    pub report: ProbeReport,
    pub started_ns: u64,
}

/// What one probe tells, judged with the target's probes before it.
pub struct Judged {
    /// This probe alone, reduced as `check` reduces it.
    pub facts: ProbeFacts,
    pub vip: bool,
    /// The target's last [`WINDOW`] probes that connected, judged; `None` when this one did not
    /// connect.
    pub window: Option<series::Summary>,
    /// This probe connected and, judged alone, is fine.
    pub fine_alone: bool,
}

impl Judged {
    /// The window's health, when this probe connected.
    pub fn health(&self) -> Option<&Health> {
        self.window.as_ref().map(|s| &s.health)
    }

    /// A backend's window judged erroring, dropping, hanging or slow, with this probe not fine on
    /// its own (a bad answer that left the window is no new evidence): a step-3 finding in
    /// `check`'s words.
    pub fn degraded(&self) -> Option<Finding> {
        let window = self.window.as_ref().filter(|_| !self.vip && !self.fine_alone)?;
        let facts = ProbeFacts {
            series: Some(window.clone()),
            ..self.facts.clone()
        };
        let what = degraded_words(&served(&facts))?;
        Some(Finding::BackendDegraded {
            backend: self.facts.target,
            health: window.health.name().to_owned(),
            what,
        })
    }

    /// The VIP's window judged erroring, dropping or hanging (slow is not serving errors) while
    /// every backend's probes are fine: `check`'s step-2 rule, failing or warning, makes it
    /// [`Finding::LbServesErrors`].
    pub fn serves_errors(&self, backends_fine: bool) -> Option<Finding> {
        let health = self.health().filter(|_| self.vip && !self.fine_alone)?;
        if matches!(health, Health::Slow { .. }) {
            return None;
        }
        let local = LocalService::judged(health, backends_fine)?;
        (local.status() != Status::Pass).then(|| Finding::LbServesErrors {
            vip: self.facts.target,
            what: local_words(&local).trim_start_matches("; ").to_owned(),
        })
    }
}

/// A target's last probe, for the health line and the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct State {
    /// The connect's failure (`refused`, `timeout`, ...) or, connected, the health of the last
    /// probes (`fine`, `erroring`, `drops`, `hangs`, `slow`).
    pub result: &'static str,
    /// The last probe connected.
    pub up: bool,
    pub vip: bool,
}

pub struct Prober {
    args: ProbeArgs,
    /// Every target, and whether it is a VIP.
    targets: Vec<(SocketAddr, bool)>,
    under_way: HashSet<SocketAddr>,
    tasks: JoinSet<()>,
    tx: mpsc::Sender<Done>,
    /// Each target's last [`WINDOW`] probes that connected.
    windows: BTreeMap<SocketAddr, VecDeque<ProbeReport>>,
    /// Each target's last probe.
    pub state: BTreeMap<SocketAddr, State>,
}

impl Prober {
    /// Probes every backend and VIP given with a port; `None` when there is none.
    pub fn new(
        vips: &[Endpoint],
        backends: &[Endpoint],
        args: ProbeArgs,
    ) -> Option<(Self, mpsc::Receiver<Done>)> {
        let with_port = |e: &Endpoint| e.port.map(|p| SocketAddr::new(e.addr, p));
        let mut targets: Vec<(SocketAddr, bool)> = Vec::new();
        for (t, vip) in backends
            .iter()
            .filter_map(|b| with_port(b).map(|t| (t, false)))
            .chain(vips.iter().filter_map(|v| with_port(v).map(|t| (t, true))))
        {
            if !targets.iter().any(|(known, _)| *known == t) {
                targets.push((t, vip));
            }
        }
        if targets.is_empty() {
            return None;
        }
        // One report per target at most is under way: the channel never holds more.
        let (tx, rx) = mpsc::channel(targets.len());
        Some((
            Self {
                args,
                targets,
                under_way: HashSet::new(),
                tasks: JoinSet::new(),
                tx,
                windows: BTreeMap::new(),
                state: BTreeMap::new(),
            },
            rx,
        ))
    }

    /// Starts a probe of every target not being probed; `starting` is told each target first
    /// (before its SYN can leave).
    pub fn round(&mut self, mut starting: impl FnMut(SocketAddr)) {
        while self.tasks.try_join_next().is_some() {}
        for &(target, vip) in &self.targets {
            if !self.under_way.insert(target) {
                continue;
            }
            starting(target);
            let spec = self.args.spec(target, vip);
            let tx = self.tx.clone();
            self.tasks.spawn(async move {
                let started_ns = Clock::monotonic_ns();
                let report = probe::run(&spec).await;
                let _ = tx.send(Done { report, started_ns }).await;
            });
        }
    }

    /// A probe's report arrived: judged with the target's probes before it.
    pub fn done(&mut self, d: Done) -> Judged {
        let target = d.report.target;
        self.under_way.remove(&target);
        let vip = self.is_vip(target);
        let facts = check::facts_of(&d.report);
        let connected = matches!(d.report.tcp, TcpOutcome::Connected { .. });
        let tcp = d.report.tcp.name();
        let slow = self.args.slow;
        let (window, fine_alone) = if connected {
            let fine_alone =
                series::judge(std::slice::from_ref(&d.report), slow).health == Health::Fine;
            let w = self.windows.entry(target).or_default();
            if w.len() >= WINDOW {
                w.pop_front();
            }
            w.push_back(d.report);
            (Some(series::judge(w.make_contiguous(), slow)), fine_alone)
        } else {
            (None, false)
        };
        let result = window
            .as_ref()
            .map_or(tcp, |s| s.health.name());
        self.state.insert(
            target,
            State {
                result,
                up: connected,
                vip,
            },
        );
        Judged {
            facts,
            vip,
            window,
            fine_alone,
        }
    }

    fn is_vip(&self, target: SocketAddr) -> bool {
        self.targets.iter().any(|&(t, vip)| vip && t == target)
    }

    /// Every backend has been probed, and its last probes are fine.
    pub fn backends_fine(&self) -> bool {
        self.targets.iter().filter(|(_, vip)| !vip).all(|(t, _)| {
            self.state
                .get(t)
                .is_some_and(|s| s.up && s.result == Health::Fine.name())
        })
    }
}
