//! The tripwire's background probes (`--probe-interval`): the TCP connect `check` runs, from the
//! LB host to each backend, so the tripwire knows each backend's state when no client connects
//! and when a failure leaves no packet on the wire (no route: `connect()` fails at once).
//!
//! Each probe is a tokio task of its own; at most one per backend is under way at a time, so the
//! tasks stay bounded by the backends given, and the main loop never waits for one: it starts
//! them on its timer and takes their reports from a channel as it takes events from the rings.

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    time::Duration,
};

use tokio::{sync::mpsc, task::JoinSet};

use crate::{
    check::{self, verdict::ProbeFacts},
    endpoint::Endpoint,
    probe::{self, ProbeSpec},
    render::Clock,
};

/// One probe's result, reduced as `check` reduces it, with when it started.
pub struct Done {
    pub facts: ProbeFacts,
    /// The TCP result's name (`connected`, `refused`, ...).
    pub tcp: &'static str,
    pub started_ns: u64,
}

pub struct Prober {
    targets: Vec<SocketAddr>,
    timeout: Duration,
    under_way: HashSet<SocketAddr>,
    tasks: JoinSet<()>,
    tx: mpsc::Sender<Done>,
    /// Each backend's last probe result (`connected`, `refused`, ...), for the health line.
    pub state: BTreeMap<SocketAddr, &'static str>,
}

impl Prober {
    /// Probes every backend given with a port; `None` when there is none.
    pub fn new(backends: &[Endpoint], timeout: Duration) -> Option<(Self, mpsc::Receiver<Done>)> {
        let targets: Vec<SocketAddr> = backends
            .iter()
            .filter_map(|b| b.port.map(|p| SocketAddr::new(b.addr, p)))
            .collect();
        if targets.is_empty() {
            return None;
        }
        // One report per backend at most is under way: the channel never holds more.
        let (tx, rx) = mpsc::channel(targets.len());
        Some((
            Self {
                targets,
                timeout,
                under_way: HashSet::new(),
                tasks: JoinSet::new(),
                tx,
                state: BTreeMap::new(),
            },
            rx,
        ))
    }

    /// Starts a probe of every backend not being probed; `starting` is told each target first
    /// (before its SYN can leave).
    pub fn round(&mut self, mut starting: impl FnMut(SocketAddr)) {
        while self.tasks.try_join_next().is_some() {}
        for &target in &self.targets {
            if !self.under_way.insert(target) {
                continue;
            }
            starting(target);
            let spec = ProbeSpec {
                target,
                timeout: self.timeout,
                tls: None,
                http: None,
            };
            let tx = self.tx.clone();
            self.tasks.spawn(async move {
                let started_ns = Clock::monotonic_ns();
                let report = probe::run(&spec).await;
                let _ = tx
                    .send(Done {
                        facts: check::facts_of(&report),
                        tcp: report.tcp.name(),
                        started_ns,
                    })
                    .await;
            });
        }
    }

    /// A probe's report arrived.
    pub fn done(&mut self, d: &Done) {
        self.under_way.remove(&d.facts.target);
        self.state.insert(d.facts.target, d.tcp);
    }
}
