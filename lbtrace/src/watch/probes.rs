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
//! A target's HTTP-level troubles (closing or hanging before an HTTP answer) count only once it
//! (for a backend: any backend) has answered a probe in HTTP since the tripwire started: backends
//! that do not speak HTTP (a database, TLS) or an HTTPS VIP probed without `--tls` are judged on
//! their TCP connects alone instead of alerting for weeks.
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
    /// The target has answered a probe in HTTP since the start.
    pub speaks_http: bool,
}

impl Judged {
    /// The window's health, when this probe connected.
    pub fn health(&self) -> Option<&Health> {
        self.window.as_ref().map(|s| &s.health)
    }

    /// The window drops or hangs before an HTTP answer, from a target that never answered in
    /// HTTP: it may not speak HTTP at all, so this is no evidence.
    fn http_unproven(&self) -> bool {
        !self.speaks_http
            && matches!(
                self.health(),
                Some(Health::Drops { phase, .. } | Health::Hangs { phase, .. }) if phase == "http"
            )
    }

    /// A backend's window judged erroring, dropping, hanging or slow (slow only over a full
    /// window), with this probe not fine on its own (a bad answer still in the window is no new
    /// evidence): a step-3 finding in `check`'s words.
    pub fn degraded(&self) -> Option<Finding> {
        let window = self
            .window
            .as_ref()
            .filter(|_| !self.vip && !self.fine_alone && !self.http_unproven())?;
        // The median of two is their mean: one slow answer of two would be a verdict.
        if matches!(window.health, Health::Slow { .. }) && window.probes < WINDOW {
            return None;
        }
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
        let health = self
            .health()
            .filter(|_| self.vip && !self.fine_alone && !self.http_unproven())?;
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
    /// Every backend given has a port, so is probed.
    every_backend: bool,
    /// The targets that answered a probe in HTTP since the start.
    answered_http: HashSet<SocketAddr>,
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
                every_backend: backends.iter().all(|b| b.port.is_some()),
                answered_http: HashSet::new(),
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
        if matches!(d.report.http, Some(probe::HttpOutcome::Response { .. })) {
            self.answered_http.insert(target);
        }
        // The backends of one LB speak one protocol: one answering in HTTP vouches for all. The
        // VIP speaks for itself (an HTTPS VIP probed without --tls must not look dropping).
        let speaks_http = self.answered_http.contains(&target)
            || (!vip && self.answered_http.iter().any(|t| !self.is_vip(*t)));
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
        let judged = Judged {
            facts,
            vip,
            window,
            fine_alone,
            speaks_http,
        };
        let result = match judged.health() {
            Some(_) if judged.http_unproven() => "connected",
            Some(h) => h.name(),
            None => tcp,
        };
        self.state.insert(
            target,
            State {
                result,
                up: connected,
                vip,
            },
        );
        judged
    }

    fn is_vip(&self, target: SocketAddr) -> bool {
        self.targets.iter().any(|&(t, vip)| vip && t == target)
    }

    /// Every backend given has been probed (one without a port cannot be), and its last probes
    /// are fine.
    pub fn backends_fine(&self) -> bool {
        let mut backends = self.targets.iter().filter(|(_, vip)| !vip).peekable();
        self.every_backend
            && backends.peek().is_some()
            && backends.all(|(t, _)| {
                self.state
                    .get(t)
                    .is_some_and(|s| s.up && s.result == Health::Fine.name())
            })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{checklist::Step, probe::HttpOutcome};

    const VIP: &str = "10.10.2.10:80";
    const BE1: &str = "10.10.3.11:8080";
    const BE2: &str = "10.10.3.12:8080";

    fn prober() -> Prober {
        let args = ProbeArgs {
            tls: false,
            sni: None,
            http_path: "/".to_owned(),
            host: None,
            no_http: false,
            probe_timeout: Duration::from_secs(3),
            slow: Duration::from_secs(1),
        };
        let ep = |s: &str| s.parse::<Endpoint>().unwrap();
        Prober::new(&[ep(VIP)], &[ep(BE1), ep(BE2)], args)
            .unwrap()
            .0
    }

    fn done(target: &str, tcp: TcpOutcome, http: Option<HttpOutcome>) -> Done {
        Done {
            report: ProbeReport {
                target: target.parse().unwrap(),
                local: Some("0.0.0.0:50000".parse().unwrap()),
                started_ns: 0,
                ended_ns: 0,
                tcp,
                tls: None,
                http,
            },
            started_ns: 0,
        }
    }

    fn answer(target: &str, status: u16, ttfb_ms: f64) -> Done {
        let http = HttpOutcome::Response {
            status,
            reason: String::new(),
            ttfb_ms,
            server: None,
        };
        done(
            target,
            TcpOutcome::Connected { connect_ms: 0.3 },
            Some(http),
        )
    }

    fn kind(j: &Judged) -> Option<String> {
        j.degraded().map(|f| f.alert_key())
    }

    #[test]
    fn one_slow_answer_is_not_a_verdict_two_in_three_are() {
        let mut p = prober();
        assert_eq!(kind(&p.done(answer(BE1, 200, 5.0))), None);
        let j = p.done(answer(BE1, 200, 2500.0));
        assert_eq!(kind(&j), None, "the median of two is their mean");
        let j = p.done(answer(BE1, 200, 2400.0));
        assert_eq!(kind(&j), Some(format!("backend_slow:{BE1}")));
        let f = j.degraded().unwrap();
        assert_eq!(f.checklist_step(), Step::LbToBackend);
        assert!(
            matches!(&f, Finding::BackendDegraded { what, .. } if what.contains("slow: time to first byte median 2.4 s")),
            "{f:?}"
        );
        // A fast answer: the window (2.5 s, 2.4 s, fast) is still slow, but this probe is no new
        // evidence; once the slow ones left the window, it is fine.
        let j = p.done(answer(BE1, 200, 5.0));
        assert_eq!(j.health().map(Health::name), Some("slow"));
        assert_eq!(kind(&j), None);
        let j = p.done(answer(BE1, 200, 5.0));
        assert_eq!(j.health(), Some(&Health::Fine));
        assert_eq!(p.state[&BE1.parse().unwrap()].result, "fine");
    }

    #[test]
    fn errors_drops_and_hangs_are_findings_in_checks_words() {
        let mut p = prober();
        let j = p.done(answer(BE2, 500, 3.0));
        assert_eq!(kind(&j), Some(format!("backend_erroring:{BE2}")));
        assert!(
            matches!(j.degraded(), Some(Finding::BackendDegraded { what, .. }) if what.starts_with("answers HTTP 500 (1 of 1 probe")),
        );
        let connected = TcpOutcome::Connected { connect_ms: 0.3 };
        let closed = Some(HttpOutcome::Closed { after_ms: 1.0 });
        // BE2's HTTP answer vouches for BE1 speaking HTTP: its close without an answer counts.
        let j = p.done(done(BE1, connected.clone(), closed.clone()));
        assert_eq!(kind(&j), Some(format!("backend_drops:{BE1}")));
        let hang = Some(HttpOutcome::Hang { after_ms: 3000.0 });
        let j = p.done(done(BE1, connected, hang));
        assert_eq!(kind(&j), Some(format!("backend_hangs:{BE1}")));
        // A connect that fails is the recorder's finding, and no window's.
        let j = p.done(done(BE1, TcpOutcome::Refused { after_ms: 0.1 }, None));
        assert!(j.window.is_none() && kind(&j).is_none());
        let s = p.state[&BE1.parse().unwrap()];
        assert_eq!((s.result, s.up, s.vip), ("refused", false, false));
        // The window holds the last 3 connected probes, no more.
        assert!(p.windows.values().all(|w| w.len() <= WINDOW));
    }

    #[test]
    fn the_vip_serving_errors_is_step_two_only_while_every_backend_is_fine() {
        let mut p = prober();
        // The backends not yet probed: not known fine.
        let j = p.done(answer(VIP, 503, 1.0));
        assert!(j.degraded().is_none(), "the VIP is no backend");
        assert_eq!(j.serves_errors(p.backends_fine()), None);
        p.done(answer(BE1, 200, 2.0));
        p.done(answer(BE2, 500, 2.0));
        assert!(!p.backends_fine());
        let j = p.done(answer(VIP, 503, 1.0));
        assert_eq!(j.serves_errors(p.backends_fine()), None, "step 3 says why");
        for _ in 0..WINDOW {
            p.done(answer(BE2, 200, 2.0));
        }
        assert!(p.backends_fine());
        let j = p.done(answer(VIP, 503, 1.0));
        let f = j
            .serves_errors(p.backends_fine())
            .expect("lb_serves_errors");
        assert_eq!(f.alert_key(), "lb_serves_errors");
        assert_eq!(f.checklist_step(), Step::LbHandling);
        assert!(
            matches!(&f, Finding::LbServesErrors { what, .. } if what.starts_with("the LB serves errors: the LB host's own requests to the VIP got HTTP 503 (3 of 3 probes) while every backend")),
            "{f:?}"
        );
        // A backend without a port is not probed: not known fine.
        let ep = |s: &str| s.parse::<Endpoint>().unwrap();
        let (mut q, _rx) =
            Prober::new(&[ep(VIP)], &[ep(BE1), ep("10.10.3.13")], p.args.clone()).expect("targets");
        q.done(answer(BE1, 200, 2.0));
        assert!(!q.backends_fine());
        // Unreachable from the LB host (a Layer-4 VIP), or slow: no finding.
        let j = p.done(done(VIP, TcpOutcome::Refused { after_ms: 0.1 }, None));
        assert_eq!(j.serves_errors(true), None);
        assert_eq!(p.state[&VIP.parse().unwrap()].result, "refused");
        let mut p = prober();
        p.done(answer(VIP, 200, 1500.0));
        let j = p.done(answer(VIP, 200, 1500.0));
        assert_eq!(j.health().map(Health::name), Some("slow"));
        assert_eq!(j.serves_errors(true), None);
        // A target that does not speak HTTP (a database greeting: not an HTTP head; or a server
        // that closes on what it does not understand) raises nothing, however often.
        let mut q = prober();
        let greeting = Some(HttpOutcome::Error {
            error: "not an HTTP response".into(),
        });
        let hang = Some(HttpOutcome::Hang { after_ms: 3000.0 });
        let closed = Some(HttpOutcome::Closed { after_ms: 1.0 });
        for http in [greeting, hang.clone(), hang, closed.clone()] {
            let j = q.done(done(BE2, TcpOutcome::Connected { connect_ms: 0.3 }, http));
            assert_eq!((kind(&j), j.serves_errors(true)), (None, None));
        }
        assert_eq!(q.state[&BE2.parse().unwrap()].result, "connected");
        // An HTTPS VIP probed without --tls closes: the VIP has not answered in HTTP itself, so
        // the backends' answers do not make that a finding.
        q.done(answer(BE1, 200, 2.0));
        let j = q.done(done(
            VIP,
            TcpOutcome::Connected { connect_ms: 0.3 },
            closed.clone(),
        ));
        assert_eq!(j.serves_errors(true), None);
        // Once BE1 answered in HTTP, BE2's window (a hang, two closes) counts: hangs first.
        let j = q.done(done(BE2, TcpOutcome::Connected { connect_ms: 0.3 }, closed));
        assert_eq!(kind(&j), Some(format!("backend_hangs:{BE2}")));
        // A request the VIP resets is dropped.
        let reset = Some(HttpOutcome::Reset { after_ms: 1.0 });
        let j = p.done(done(VIP, TcpOutcome::Connected { connect_ms: 0.3 }, reset));
        assert!(j.serves_errors(true).is_some());
    }
}
