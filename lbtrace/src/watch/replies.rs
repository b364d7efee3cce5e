//! `watch --data`: each backend's replies on the wire (a Layer 4 LB's forwarded legs, a Layer 7
//! LB's own connections; lbtrace's probes left out) judged over a rolling window of its latest
//! replies ([`crate::replies::Window`]: the last 8 within 60 s, from 3 on) by `check`'s rule.
//! A window judged erroring or slow is a step-3 finding at every reply
//! (`replies_erroring:<backend>`, `replies_slow:<backend>`), which the alert engine counts like
//! any other; a window judged fine recovers both at once.
//!
//! Memory: one fixed window per backend address that answered, at most
//! [`MAX_BACKEND_WINDOWS`] of them (backends are few; a `--backend` without a port could answer
//! from several).

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use super::recorder::Finding;
use crate::{
    check::report::series::replies_words,
    endpoint::Endpoint,
    replies::{Reply, ReplyHealth, Window},
};

/// Backend addresses judged at once; replies from others are left out.
pub const MAX_BACKEND_WINDOWS: usize = 256;

/// What a backend's reply tells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Judged {
    /// Its window is erroring or slow.
    Degraded(Finding),
    /// Its window is fine: its reply alerts recover.
    Fine(SocketAddr),
}

pub struct ReplyWatch {
    backends: Vec<Endpoint>,
    slow: Duration,
    /// Each backend address's window and its last judgement (`fine` / `erroring` / `slow`, or
    /// `None` before 3 replies).
    windows: BTreeMap<SocketAddr, (Window, Option<&'static str>)>,
}

impl ReplyWatch {
    pub fn new(backends: Vec<Endpoint>, slow: Duration) -> Self {
        Self {
            backends,
            slow,
            windows: BTreeMap::new(),
        }
    }

    /// Takes one reply; `None` when it is not a backend's or its window is too short to judge.
    pub fn reply(&mut self, r: Reply) -> Option<Judged> {
        let backend = r.from;
        if !self.backends.iter().any(|b| b.matches(&backend)) {
            return None;
        }
        if !self.windows.contains_key(&backend) && self.windows.len() >= MAX_BACKEND_WINDOWS {
            return None;
        }
        let (w, last) = self.windows.entry(backend).or_default();
        w.push(r);
        let judged = w.judge(r.ts_ns, self.slow);
        *last = judged.as_ref().map(|j| j.health.name());
        let judged = judged?;
        let health = match judged.health {
            ReplyHealth::Fine => return Some(Judged::Fine(backend)),
            ReplyHealth::Erroring { .. } | ReplyHealth::Slow { .. } => judged.health.name(),
        };
        Some(Judged::Degraded(Finding::RepliesDegraded {
            backend,
            health: health.to_owned(),
            what: replies_words(&judged)?,
        }))
    }
}

impl ReplyWatch {
    /// Each backend's last judgement, for the health line and the metrics: `fine`, `erroring`
    /// or `slow` (backends with fewer than 3 replies in their window left out).
    pub fn state(&self) -> BTreeMap<SocketAddr, &'static str> {
        self.windows
            .iter()
            .filter_map(|(b, (_, last))| Some((*b, (*last)?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(port: u16, ts_s: u64, ttfb_ms: f64, status: u16) -> Reply {
        Reply {
            ts_ns: ts_s * 1_000_000_000,
            from: "10.0.3.12:8080".parse().unwrap(),
            to: SocketAddr::new("10.0.2.1".parse().unwrap(), port),
            ttfb_ms,
            status: Some(status),
        }
    }

    #[test]
    fn a_backends_window_is_judged_from_three_replies_and_recovers() {
        let mut w = ReplyWatch::new(
            vec!["10.0.3.12:8080".parse().unwrap()],
            Duration::from_secs(1),
        );
        // Not a backend's reply.
        let other = Reply {
            from: "10.0.3.99:8080".parse().unwrap(),
            ..reply(1, 1, 1.0, 500)
        };
        assert_eq!(w.reply(other), None);
        assert_eq!(w.reply(reply(1, 1, 1.0, 500)), None);
        assert_eq!(w.reply(reply(2, 1, 1.0, 500)), None);
        let Some(Judged::Degraded(f)) = w.reply(reply(3, 1, 1.0, 500)) else {
            panic!("three 500s are erroring");
        };
        assert_eq!(f.alert_key(), "replies_erroring:10.0.3.12:8080");
        let be = "10.0.3.12:8080".parse().unwrap();
        assert_eq!(w.state(), BTreeMap::from([(be, "erroring")]));
        assert!(
            matches!(&f, Finding::RepliesDegraded { what, .. } if what.contains("HTTP 500") && what.contains("3 of 3")),
            "{f:?}"
        );
        // Eight fine replies push the errors out: fine.
        let mut last = None;
        for p in 10..18 {
            last = w.reply(reply(p, 2, 1.0, 200));
        }
        assert_eq!(last, Some(Judged::Fine("10.0.3.12:8080".parse().unwrap())));
        // Slow replies: slow once their median is past --slow (4 of 8 are not: the median is
        // the mean of 1 ms and 1.5 s).
        for p in 20..24 {
            last = w.reply(reply(p, 3, 1_500.0, 200));
        }
        assert_eq!(last, Some(Judged::Fine("10.0.3.12:8080".parse().unwrap())));
        for p in 24..25 {
            last = w.reply(reply(p, 3, 1_500.0, 200));
        }
        let Some(Judged::Degraded(f)) = last else {
            panic!("slow");
        };
        assert_eq!(f.alert_key(), "replies_slow:10.0.3.12:8080");
    }
}
