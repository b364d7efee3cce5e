//! Replies on the wire (`--data`): the first data byte of a direction that answered the other
//! one (a `first_byte` mark with the time since the other side's first byte) is a reply, with
//! its time to first byte and the HTTP status its status line carries. From a backend's address
//! it is that backend answering the LB (a Layer 4 LB's forwarded leg, a Layer 7 LB's own
//! connection); from the VIP, the LB answering a client.
//!
//! The rule for a set of replies ([`judge`]), the probes' rule ([`crate::probe::series`]) on
//! the traffic's answers:
//! 1. any HTTP 5xx reply: [`ReplyHealth::Erroring`] with the count of the replies that had a
//!    status line (all of them: `fail`; some: `warn`);
//! 2. a median time to first byte past `--slow`: [`ReplyHealth::Slow`] (`warn`);
//! 3. otherwise [`ReplyHealth::Fine`].
//!
//! `watch` judges each backend over a rolling [`Window`] of its latest replies.

use std::{
    collections::{HashSet, VecDeque},
    net::SocketAddr,
    time::Duration,
};

use serde::Serialize;

use crate::{
    check::verdict::Status,
    event::{DataMark, Detail, KernelEvent},
    probe::series::Stats,
};

/// One reply's first byte.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reply {
    pub ts_ns: u64,
    /// Who answered.
    pub from: SocketAddr,
    pub to: SocketAddr,
    /// From the other side's first byte to this one.
    pub ttfb_ms: f64,
    /// The HTTP status line's code, when the reply starts with one.
    pub status: Option<u16>,
}

impl Reply {
    /// The reply `ev` marks; `None` for any other event, and for a first byte that answered
    /// nothing (the side that spoke first).
    pub fn of(ev: &KernelEvent) -> Option<Self> {
        let Detail::Data(DataMark::FirstByte {
            since_ns: Some(since),
            http_status,
        }) = ev.detail
        else {
            return None;
        };
        Some(Self {
            ts_ns: ev.ts_ns,
            from: ev.src,
            to: ev.dst,
            ttfb_ms: since as f64 / 1e6,
            status: http_status,
        })
    }

    fn error(&self) -> bool {
        self.status.is_some_and(|s| (500..600).contains(&s))
    }
}

/// The replies among `events`, once per connection: a reply seen at two interfaces (coming in
/// and going out) counts at the first.
pub fn of_events(events: &[KernelEvent]) -> Vec<Reply> {
    let mut seen = HashSet::new();
    events
        .iter()
        .filter_map(Reply::of)
        .filter(|r| seen.insert((r.from, r.to)))
        .collect()
}

/// How a set of replies serves (the rule in the module doc).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "health", rename_all = "snake_case")]
pub enum ReplyHealth {
    Fine,
    /// HTTP 5xx in `errors` of the `of` replies that had a status line; `status` the most
    /// frequent.
    Erroring {
        status: u16,
        errors: usize,
        of: usize,
    },
    /// The median time to first byte past `--slow`.
    Slow {
        median_ms: f64,
        threshold_ms: f64,
    },
}

impl ReplyHealth {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Fine => "fine",
            Self::Erroring { .. } => "erroring",
            Self::Slow { .. } => "slow",
        }
    }

    pub fn status(&self) -> Status {
        match self {
            Self::Fine => Status::Pass,
            Self::Erroring { errors, of, .. } if errors >= of => Status::Fail,
            Self::Erroring { .. } | Self::Slow { .. } => Status::Warn,
        }
    }
}

/// A set of replies: their numbers and health.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Replies {
    pub replies: usize,
    pub ttfb_ms: Option<Stats>,
    /// Replies that started with an HTTP status line, and those of them that were 5xx.
    pub http: usize,
    pub errors_5xx: usize,
    #[serde(flatten)]
    pub health: ReplyHealth,
}

/// Judges `replies` by the rule in the module doc.
pub fn judge<'a>(replies: impl IntoIterator<Item = &'a Reply>, slow: Duration) -> Replies {
    let replies: Vec<&Reply> = replies.into_iter().collect();
    let ttfb: Vec<f64> = replies.iter().map(|r| r.ttfb_ms).collect();
    let ttfb_ms = Stats::of(&ttfb);
    let http = replies.iter().filter(|r| r.status.is_some()).count();
    let errors: Vec<u16> = replies
        .iter()
        .filter(|r| r.error())
        .filter_map(|r| r.status)
        .collect();
    let threshold_ms = slow.as_secs_f64() * 1e3;
    let health = if let Some(status) = most_frequent(&errors) {
        ReplyHealth::Erroring {
            status,
            errors: errors.len(),
            of: http,
        }
    } else if let Some(s) = ttfb_ms.filter(|s| s.median > threshold_ms) {
        ReplyHealth::Slow {
            median_ms: s.median,
            threshold_ms,
        }
    } else {
        ReplyHealth::Fine
    };
    Replies {
        replies: replies.len(),
        ttfb_ms,
        http,
        errors_5xx: errors.len(),
        health,
    }
}

/// The most frequent value, the smallest of a tie.
fn most_frequent(v: &[u16]) -> Option<u16> {
    let mut sorted = v.to_vec();
    sorted.sort_unstable();
    sorted
        .chunk_by(|a, b| a == b)
        .max_by_key(|c| (c.len(), std::cmp::Reverse(c[0])))
        .map(|c| c[0])
}

/// The latest replies a backend is judged on in `watch`.
pub const WINDOW_REPLIES: usize = 8;
/// Replies older than this leave the window.
pub const WINDOW_SECS: u64 = 60;
/// No judgement on fewer replies: one slow answer is not a verdict.
pub const MIN_REPLIES: usize = 3;

/// A backend's rolling window: its last [`WINDOW_REPLIES`] replies within [`WINDOW_SECS`].
#[derive(Clone, Debug, Default)]
pub struct Window {
    replies: VecDeque<Reply>,
}

impl Window {
    /// Adds a reply; the same connection's reply seen again (at another interface) is not.
    pub fn push(&mut self, r: Reply) {
        if self
            .replies
            .iter()
            .any(|o| (o.from, o.to) == (r.from, r.to))
        {
            return;
        }
        if self.replies.len() == WINDOW_REPLIES {
            self.replies.pop_front();
        }
        self.replies.push_back(r);
    }

    /// The window's judgement at `now_ns` (replies older than [`WINDOW_SECS`] leave it);
    /// `None` with fewer than [`MIN_REPLIES`] in it.
    pub fn judge(&mut self, now_ns: u64, slow: Duration) -> Option<Replies> {
        let oldest = now_ns.saturating_sub(WINDOW_SECS * 1_000_000_000);
        self.replies.retain(|r| r.ts_ns >= oldest);
        (self.replies.len() >= MIN_REPLIES).then(|| judge(&self.replies, slow))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Dir, Hook};

    const SEC: u64 = 1_000_000_000;

    fn reply(port: u16, ts_s: u64, ttfb_ms: f64, status: Option<u16>) -> Reply {
        Reply {
            ts_ns: ts_s * SEC,
            from: "10.0.3.11:8080".parse().unwrap(),
            to: SocketAddr::new("10.0.2.1".parse().unwrap(), port),
            ttfb_ms,
            status,
        }
    }

    fn first_byte(since_ns: Option<u64>, http_status: Option<u16>, ifindex: u32) -> KernelEvent {
        KernelEvent {
            ts_ns: 5,
            ifindex,
            hook: Hook::Tc,
            dir: Some(Dir::In),
            src: "10.0.3.11:8080".parse().unwrap(),
            dst: "10.0.2.1:40000".parse().unwrap(),
            flags: 0x10,
            seq: 1,
            ack: 1,
            payload_len: 100,
            mss: 0,
            detail: Detail::Data(DataMark::FirstByte {
                since_ns,
                http_status,
            }),
            location: 0,
        }
    }

    #[test]
    fn a_reply_is_a_first_byte_that_answered_once_per_connection() {
        let evs = [
            first_byte(Some(2_500_000), Some(503), 3),
            // The same reply at another interface.
            first_byte(Some(2_600_000), Some(503), 4),
            // The side that spoke first: no reply.
            KernelEvent {
                src: "10.0.2.1:40001".parse().unwrap(),
                ..first_byte(None, None, 3)
            },
        ];
        let r = of_events(&evs);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].ttfb_ms, r[0].status), (2.5, Some(503)));
        assert!(r[0].error());
    }

    #[test]
    fn errors_come_before_slowness_and_all_errors_fail() {
        let slow = Duration::from_secs(1);
        let fast_ok: Vec<Reply> = (0..3).map(|i| reply(i, 0, 2.0, Some(200))).collect();
        assert_eq!(judge(&fast_ok, slow).health, ReplyHealth::Fine);
        let mut some_errors = fast_ok.clone();
        some_errors.push(reply(9, 0, 2.0, Some(502)));
        some_errors.push(reply(10, 0, 2.0, Some(500)));
        some_errors.push(reply(11, 0, 2.0, Some(500)));
        let j = judge(&some_errors, slow);
        assert_eq!(
            j.health,
            ReplyHealth::Erroring {
                status: 500,
                errors: 3,
                of: 6
            }
        );
        assert_eq!((j.replies, j.http, j.errors_5xx), (6, 6, 3));
        assert_eq!(j.health.status(), Status::Warn);
        let all: Vec<Reply> = (0..3).map(|i| reply(i, 0, 2.0, Some(503))).collect();
        assert_eq!(judge(&all, slow).health.status(), Status::Fail);
        // Slow on the median: one slow reply of three is not slow, two are.
        let mut one_slow = fast_ok.clone();
        one_slow[0].ttfb_ms = 2_000.0;
        assert_eq!(judge(&one_slow, slow).health, ReplyHealth::Fine);
        one_slow[1].ttfb_ms = 2_100.0;
        let j = judge(&one_slow, slow);
        assert_eq!(
            j.health,
            ReplyHealth::Slow {
                median_ms: 2_000.0,
                threshold_ms: 1_000.0
            }
        );
        assert_eq!(j.health.status(), Status::Warn);
        // 4xx and replies that are not HTTP are neither errors nor counted in `of`.
        let other = [reply(1, 0, 1.0, Some(404)), reply(2, 0, 1.0, None)];
        let j = judge(&other, slow);
        assert_eq!((j.health, j.http, j.replies), (ReplyHealth::Fine, 1, 2));
    }

    #[test]
    fn the_window_keeps_the_latest_replies_within_its_age_and_judges_from_three() {
        let slow = Duration::from_secs(1);
        let mut w = Window::default();
        w.push(reply(1, 10, 5.0, Some(500)));
        w.push(reply(2, 11, 5.0, Some(500)));
        // The same connection again: not a new reply.
        w.push(reply(2, 11, 5.0, Some(500)));
        assert_eq!(w.judge(12 * SEC, slow), None);
        w.push(reply(3, 12, 5.0, Some(500)));
        let j = w.judge(12 * SEC, slow).unwrap();
        assert_eq!(j.health.status(), Status::Fail);
        // Recovery: fine replies push the errors out of the last 8.
        for p in 10..15 {
            w.push(reply(p, 20, 5.0, Some(200)));
        }
        assert_eq!(
            w.judge(20 * SEC, slow).unwrap().health.status(),
            Status::Warn
        );
        for p in 20..23 {
            w.push(reply(p, 21, 5.0, Some(200)));
        }
        let j = w.judge(21 * SEC, slow).unwrap();
        assert_eq!((j.replies, j.health), (WINDOW_REPLIES, ReplyHealth::Fine));
        // A minute without replies empties it: no judgement.
        assert_eq!(w.judge(82 * SEC, slow), None);
    }
}
