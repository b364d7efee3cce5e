//! Alerts of `lbtrace watch`: findings counted per kind over a sliding window; an alert fires
//! once when a kind reaches its threshold, stays quiet (de-duplicated) while it keeps happening,
//! and a matching "recovered" follows once the kind has been quiet for `recover_after`.
//! Pure: time is passed in.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    time::Duration,
};

use super::recorder::{Conn, Evidence, Finding, OwnFinding};
use crate::checklist::Step;
use crate::host::{Pressure, words};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    /// Findings of one kind within `window` that raise an alert.
    pub count: u32,
    pub window: Duration,
    /// Quiet time after which an active alert recovers.
    pub recover_after: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            count: 3,
            window: Duration::from_secs(30),
            recover_after: Duration::from_secs(60),
        }
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Alert {
    pub key: String,
    pub step: u8,
    pub step_name: &'static str,
    pub message: String,
    /// Findings of this kind in the window when it fired.
    pub count: u32,
    pub window_seconds: u64,
    pub example_client: Option<String>,
    pub example_vip: Option<String>,
    pub example_backend: Option<String>,
    pub conn_id: Option<u64>,
    /// What the finding that raised it was seen on: `client` (a client connection and its
    /// backend leg), `lb-connection` (the LB's own backend connection with no client connection
    /// behind it: a health check, a pool), `probe` (lbtrace's own probe from the LB host,
    /// `--probe-interval`), `traffic` (the backend's latest replies on the wire, `--data`),
    /// `host` (the LB host's counters), `tracer`.
    pub evidence: &'static str,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Recovered {
    pub key: String,
    pub step: u8,
    pub step_name: &'static str,
    pub message: String,
    /// Findings while the alert was active.
    pub total: u64,
    pub active_seconds: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Notice {
    Alert(Alert),
    Recovered(Recovered),
}

struct Active {
    since_ns: u64,
    last_ns: u64,
    total: u64,
    step: u8,
    message: String,
}

/// The alert engine: findings counted per alert key over a sliding window; fires, de-duplicates
/// and recovers alerts.
pub struct Alerts {
    th: Thresholds,
    seen: HashMap<String, VecDeque<u64>>,
    active: HashMap<String, Active>,
    lost_seen: u64,
    /// Per key, the last client connection that showed it: (when, client, VIP, connection id).
    examples: HashMap<String, (u64, SocketAddr, SocketAddr, u64)>,
}

fn describe(f: &Finding) -> String {
    match f {
        Finding::SynUnanswered => {
            "SYNs to the VIP get no answer: no SYN-ACK, not forwarded".to_owned()
        }
        Finding::SynDropped { reason } => {
            format!("the LB host drops clients' SYNs to the VIP ({reason})")
        }
        Finding::LbReset { after_request, by } => {
            let when = if *after_request {
                "after their request"
            } else {
                "right after the handshake"
            };
            let who = match by.as_deref() {
                Some("socket_abort") => {
                    ": a socket of this host aborted (closed with unread data / SO_LINGER 0: the LB process reset them)"
                }
                Some("no_socket") => ": this host's TCP stack, no socket for the segment",
                Some("time_wait") => ": this host's TCP stack, for a socket in TIME_WAIT",
                Some(_) => ": this host's TCP stack, for a segment its socket did not accept",
                None => "",
            };
            format!("the LB resets clients {when}{who}")
        }
        Finding::NoListener => {
            "the kernel refuses connections to the VIP: nothing listens (NO_SOCKET)".to_owned()
        }
        Finding::BackendRefused { backend } => {
            format!("backend {backend} refuses connections (RST)")
        }
        Finding::BackendTimeout { backend } => {
            format!("backend {backend} does not answer SYNs (retransmitted or timed out)")
        }
        Finding::BackendUnreachable { backend, what } => {
            format!("backend {backend} unreachable: {what}")
        }
        Finding::BackendDegraded { backend, what, .. }
        | Finding::RepliesDegraded { backend, what, .. } => format!("backend {backend} {what}"),
        Finding::LbServesErrors { what, .. } => what.clone(),
        Finding::Unserved => "the LB answers without any backend connection: it closes clients at once and no backend answers the LB: all backends down in the LB's view".to_owned(),
        Finding::SynAckLost => {
            "clients retransmit their SYN after the LB's SYN-ACK: replies do not reach them"
                .to_owned()
        }
        Finding::AsymmetricReturn { backend } => format!(
            "SYNs forwarded to {backend} get no reply through the LB (its replies bypass the LB, or it is down)"
        ),
        Finding::DirectReturnLost => "SYNs forwarded without NAT (direct server return) get no reply through the LB, and the clients never go on: the backends' replies, which go around the LB, do not reach them (does each backend hold the VIP and route to the client?)".to_owned(),
        Finding::RepliesRetransmitted { full_size, of } => format!(
            "the LB's replies to clients are not acknowledged: retransmitted {of} times on one connection ({full_size} of them full-size; only full-size segments repeating while small ones pass is a path-MTU black hole between the LB and the client)"
        ),
    }
}

impl Alerts {
    pub fn new(th: Thresholds) -> Self {
        Self {
            th,
            seen: HashMap::new(),
            active: HashMap::new(),
            lost_seen: 0,
            examples: HashMap::new(),
        }
    }

    fn window_ns(&self) -> u64 {
        u64::try_from(self.th.window.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Counts one finding of `key`; returns the count in the window and the message when it
    /// raises a new alert (an active alert only counts it).
    fn count(
        &mut self,
        now_ns: u64,
        key: &str,
        step: u8,
        message: impl FnOnce() -> String,
    ) -> Option<(u32, String)> {
        let win = self.window_ns();
        let q = self.seen.entry(key.to_owned()).or_default();
        q.push_back(now_ns);
        while q.front().is_some_and(|&t| now_ns.saturating_sub(t) > win) {
            q.pop_front();
        }
        let count = u32::try_from(q.len()).unwrap_or(u32::MAX);
        if let Some(a) = self.active.get_mut(key) {
            a.last_ns = now_ns;
            a.total += 1;
            return None;
        }
        if count < self.th.count {
            return None;
        }
        let message = message();
        self.active.insert(
            key.to_owned(),
            Active {
                since_ns: now_ns,
                last_ns: now_ns,
                total: u64::from(count),
                step,
                message: message.clone(),
            },
        );
        Some((count, message))
    }

    /// Counts a finding; returns an alert when its kind crosses the threshold.
    pub fn record(&mut self, now_ns: u64, conn: &Conn, f: &Finding) -> Option<Notice> {
        let key = f.alert_key();
        let step = f.step();
        self.examples
            .insert(key.clone(), (now_ns, conn.client, conn.vip, conn.id));
        let (count, message) = self.count(now_ns, &key, step, || describe(f))?;
        let backend = f
            .backend()
            .or_else(|| conn.backend.as_ref().map(|b| b.backend));
        Some(Notice::Alert(Alert {
            key,
            step,
            step_name: f.checklist_step().name(),
            message,
            count,
            window_seconds: self.th.window.as_secs(),
            example_client: Some(conn.client.to_string()),
            example_vip: Some(conn.vip.to_string()),
            example_backend: backend.map(|b| b.to_string()),
            conn_id: Some(conn.id),
            evidence: "client",
        }))
    }

    /// Counts a finding on the LB's own backend connection `lb` (no client connection joined:
    /// a health check, a pooled connection) or of lbtrace's own probe; counted under the same
    /// key as the clients' (one alert per kind and backend), and the alert says what it was
    /// seen on.
    pub fn own(&mut self, now_ns: u64, o: &OwnFinding) -> Option<Notice> {
        let (lb, f) = (o.lb, &o.finding);
        let key = f.alert_key();
        let step = f.step();
        // Client connections that showed the same within the window are the better example.
        let win = self.window_ns();
        let example = self
            .examples
            .get(&key)
            .filter(|e| now_ns.saturating_sub(e.0) <= win)
            .copied();
        let (count, message) = self.count(now_ns, &key, step, || match example {
            Some(_) => describe(f),
            None if o.evidence == Evidence::Probe => format!(
                "{} (seen by lbtrace's own probe from the LB host, not client traffic)",
                describe(f)
            ),
            None if o.evidence == Evidence::Traffic => format!(
                "{} (seen in its latest replies on the wire, --data)",
                describe(f)
            ),
            None => format!(
                "{} (seen on the LB's own connections from {}, e.g. health checks)",
                describe(f),
                lb.ip()
            ),
        })?;
        let backend = f.backend().map(|b| b.to_string());
        Some(Notice::Alert(Alert {
            key,
            step,
            step_name: f.checklist_step().name(),
            message,
            count,
            window_seconds: self.th.window.as_secs(),
            example_client: example.map(|e| e.1.to_string()),
            example_vip: match f {
                Finding::LbServesErrors { vip, .. } => Some(vip.to_string()),
                _ => example.map(|e| e.2.to_string()),
            },
            example_backend: backend,
            conn_id: example.map(|e| e.3),
            evidence: match (example, o.evidence) {
                (Some(_), _) => "client",
                (None, Evidence::Probe) => "probe",
                (None, Evidence::Wire) => "lb-connection",
                (None, Evidence::Traffic) => "traffic",
            },
        }))
    }

    /// Counts a limit of the LB host that ran out in the last sample (an accept queue, SYN
    /// cookies, conntrack, source ports); returns an alert when its kind crosses the threshold.
    /// Settings that do not change (forwarding off, strict rp_filter) are not alerts: the
    /// caller says them once.
    pub fn host(&mut self, now_ns: u64, p: &Pressure) -> Option<Notice> {
        if p.is_setting() {
            return None;
        }
        let key = p.alert_key();
        let backend = match p {
            Pressure::SourcePorts { ports, .. } => Some(ports.backend.to_string()),
            Pressure::NoLocalPort { backend, .. } => Some(backend.to_string()),
            _ => None,
        };
        let step = p.step();
        let (count, message) = self.count(now_ns, &key, step, || {
            format!(
                "{} [{}]",
                words::words(p, None, false),
                words::evidence(p).join("; ")
            )
        })?;
        Some(Notice::Alert(Alert {
            key,
            step,
            step_name: Step::from_number(step).map_or("host", Step::name),
            message,
            count,
            window_seconds: self.th.window.as_secs(),
            example_client: None,
            example_vip: None,
            example_backend: backend,
            conn_id: None,
            evidence: "host",
        }))
    }

    /// Lost kernel events are an alert of their own: the evidence is incomplete.
    pub fn lost(&mut self, now_ns: u64, total_lost: u64) -> Option<Notice> {
        if total_lost <= self.lost_seen {
            return None;
        }
        let new = total_lost - self.lost_seen;
        self.lost_seen = total_lost;
        let key = "lost_events".to_owned();
        if let Some(a) = self.active.get_mut(&key) {
            a.last_ns = now_ns;
            a.total += new;
            return None;
        }
        let message = format!(
            "{new} kernel events lost (ring buffer full): evidence is incomplete; raise --ring-size"
        );
        self.active.insert(
            key.clone(),
            Active {
                since_ns: now_ns,
                last_ns: now_ns,
                total: new,
                step: 0,
                message: message.clone(),
            },
        );
        Some(Notice::Alert(Alert {
            key,
            step: 0,
            step_name: "lost-events",
            message,
            count: u32::try_from(new).unwrap_or(u32::MAX),
            window_seconds: 0,
            example_client: None,
            example_vip: None,
            example_backend: None,
            conn_id: None,
            evidence: "tracer",
        }))
    }

    /// Recoveries of alerts quiet for `recover_after`.
    pub fn tick(&mut self, now_ns: u64) -> Vec<Notice> {
        let quiet = u64::try_from(self.th.recover_after.as_nanos()).unwrap_or(u64::MAX);
        let done: Vec<String> = self
            .active
            .iter()
            .filter(|(_, a)| now_ns.saturating_sub(a.last_ns) >= quiet)
            .map(|(k, _)| k.clone())
            .collect();
        self.recover(done)
    }

    /// A probe of `backend` started at `started_ns` connected: its step-3 alerts about
    /// connecting with no finding since the probe started recover at once (and count afresh).
    pub fn probe_ok(&mut self, started_ns: u64, backend: SocketAddr) -> Vec<Notice> {
        let keys = [
            Finding::BackendRefused { backend },
            Finding::BackendTimeout { backend },
            Finding::BackendUnreachable {
                backend,
                what: String::new(),
            },
        ]
        .map(|f| f.alert_key());
        self.probed_fine(started_ns, keys)
    }

    /// The last probes of `backend`, the latest started at `started_ns`, are fine: its alerts
    /// about serving badly recover at once (and count afresh).
    pub fn probes_fine(&mut self, started_ns: u64, backend: SocketAddr) -> Vec<Notice> {
        let keys = ["erroring", "drops", "hangs", "slow"].map(|health| {
            Finding::BackendDegraded {
                backend,
                health: health.to_owned(),
                what: String::new(),
            }
            .alert_key()
        });
        self.probed_fine(started_ns, keys)
    }

    /// The latest replies of `backend` on the wire, the last seen at `ts_ns`, are fine: its
    /// reply alerts recover at once (and count afresh).
    pub fn replies_fine(&mut self, ts_ns: u64, backend: SocketAddr) -> Vec<Notice> {
        let keys = ["erroring", "slow"].map(|health| {
            Finding::RepliesDegraded {
                backend,
                health: health.to_owned(),
                what: String::new(),
            }
            .alert_key()
        });
        self.probed_fine(ts_ns, keys)
    }

    /// The VIP's last probes, the latest started at `started_ns`, are fine (or cannot connect
    /// from the LB host): `lb_serves_errors` recovers at once.
    pub fn vip_fine(&mut self, started_ns: u64) -> Vec<Notice> {
        let key = Finding::LbServesErrors {
            vip: SocketAddr::from(([0, 0, 0, 0], 0)),
            what: String::new(),
        }
        .alert_key();
        self.probed_fine(started_ns, [key])
    }

    /// Those of `keys` active with no finding since `started_ns` recover at once.
    fn probed_fine(
        &mut self,
        started_ns: u64,
        keys: impl IntoIterator<Item = String>,
    ) -> Vec<Notice> {
        let done: Vec<String> = keys
            .into_iter()
            .filter(|k| self.active.get(k).is_some_and(|a| a.last_ns < started_ns))
            .collect();
        for k in &done {
            self.seen.remove(k);
        }
        self.recover(done)
    }

    fn recover(&mut self, keys: Vec<String>) -> Vec<Notice> {
        let mut out = Vec::new();
        for k in keys {
            if let Some(a) = self.active.remove(&k) {
                out.push(Notice::Recovered(Recovered {
                    key: k,
                    step: a.step,
                    step_name: Step::from_number(a.step).map_or("lost-events", Step::name),
                    message: a.message,
                    total: a.total,
                    active_seconds: (a.last_ns.saturating_sub(a.since_ns)) as f64 / 1e9,
                }));
            }
        }
        out.sort_by(|a, b| match (a, b) {
            (Notice::Recovered(x), Notice::Recovered(y)) => x.key.cmp(&y.key),
            _ => std::cmp::Ordering::Equal,
        });
        out
    }

    /// Keys of active alerts with their step (for metrics).
    pub fn active(&self) -> Vec<(String, u8)> {
        let mut v: Vec<(String, u8)> = self
            .active
            .iter()
            .map(|(k, a)| (k.clone(), a.step))
            .collect();
        v.sort();
        v
    }
}
