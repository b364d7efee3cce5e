//! A probe repeated a few times (`--probe-count`), so one slow answer is not a verdict: the
//! connect times and times to first byte as min / median / max, the HTTP status classes, and a
//! judgement of the target's health that separates *slow* from *dead* and *erroring*.
//!
//! The rule ([`judge`]), in order:
//! 1. any probe whose TCP connect failed: [`Health::Unreachable`] (the connect outcome says how);
//! 2. any probe that connected but whose TLS handshake or HTTP answer never came within the
//!    timeout: [`Health::Hangs`];
//! 3. any probe that connected and was then reset or closed without a byte of answer, in the TLS
//!    handshake or before the HTTP answer: [`Health::Drops`] (an answer that is not HTTP, e.g. a
//!    database's greeting, is no failure of the target: it does not speak HTTP);
//! 4. any 5xx answer: [`Health::Erroring`] with the count (all of them: the target serves errors;
//!    some: it serves errors intermittently);
//! 5. a median connect time or time to first byte past `--slow`: [`Health::Slow`];
//! 6. otherwise [`Health::Fine`]. 4xx answers are reported (`statuses`) but are the request's
//!    fault (a path that does not exist), not the target's.

use std::time::Duration;

use serde::Serialize;

use super::{HttpOutcome, ProbeReport, ProbeSpec, TcpOutcome, TlsOutcome, run};

/// min / median / max of some milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Stats {
    pub min: f64,
    pub median: f64,
    pub max: f64,
    pub n: usize,
}

impl Stats {
    pub fn of(values: &[f64]) -> Option<Stats> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stats {
            min: v[0],
            median,
            max: v[n - 1],
            n,
        })
    }
}

/// A target's health over a series of probes.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "health", rename_all = "snake_case")]
pub enum Health {
    Fine,
    /// The TCP connect failed (`outcome`: refused / timeout / unreachable / error) in `failed`
    /// of `of` probes.
    Unreachable {
        outcome: String,
        failed: usize,
        of: usize,
    },
    /// TCP connects, then no answer (`phase`: tls / http) within the timeout.
    Hangs {
        phase: String,
        hung: usize,
        of: usize,
        after_ms: f64,
    },
    /// TCP connects, then the target resets or closes the connection (`how`: reset / closed)
    /// without an answer (`phase`: tls / http) in `dropped` of `of` probes.
    Drops {
        phase: String,
        how: String,
        dropped: usize,
        of: usize,
    },
    /// HTTP 5xx answers: `status` the most frequent.
    Erroring {
        status: u16,
        errors: usize,
        of: usize,
    },
    /// Answers, but slowly: the median of `what` (connect / first_byte) past the threshold.
    Slow {
        what: String,
        median_ms: f64,
        threshold_ms: f64,
    },
}

impl Health {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Fine => "fine",
            Self::Unreachable { .. } => "unreachable",
            Self::Hangs { .. } => "hangs",
            Self::Drops { .. } => "drops",
            Self::Erroring { .. } => "erroring",
            Self::Slow { .. } => "slow",
        }
    }
}

/// The series' summary.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub probes: usize,
    pub connect_ms: Option<Stats>,
    pub ttfb_ms: Option<Stats>,
    /// HTTP status of each answered probe, in order.
    pub statuses: Vec<u16>,
    #[serde(flatten)]
    pub health: Health,
}

/// Judges a series by the rule in the module doc.
pub fn judge(reports: &[ProbeReport], slow: Duration) -> Summary {
    let of = reports.len();
    let connect: Vec<f64> = reports
        .iter()
        .filter_map(|r| match r.tcp {
            TcpOutcome::Connected { connect_ms } => Some(connect_ms),
            _ => None,
        })
        .collect();
    let mut ttfb = Vec::new();
    let mut statuses = Vec::new();
    let mut hung: Vec<(&str, f64)> = Vec::new();
    let mut dropped: Vec<(&str, &str)> = Vec::new();
    for r in reports {
        match r.tls.as_ref().map(|t| &t.outcome) {
            Some(TlsOutcome::Timeout { after_ms }) => hung.push(("tls", *after_ms)),
            Some(o @ (TlsOutcome::Reset { .. } | TlsOutcome::Closed { .. })) => {
                dropped.push(("tls", o.name()));
            }
            _ => {}
        }
        match &r.http {
            Some(HttpOutcome::Response {
                status, ttfb_ms, ..
            }) => {
                statuses.push(*status);
                ttfb.push(*ttfb_ms);
            }
            Some(HttpOutcome::Hang { after_ms }) => hung.push(("http", *after_ms)),
            Some(o @ (HttpOutcome::Reset { .. } | HttpOutcome::Closed { .. })) => {
                dropped.push(("http", o.name()));
            }
            Some(HttpOutcome::Error { .. }) | None => {}
        }
    }
    let failed: Vec<&TcpOutcome> = reports
        .iter()
        .map(|r| &r.tcp)
        .filter(|t| !matches!(t, TcpOutcome::Connected { .. }))
        .collect();
    let threshold_ms = slow.as_secs_f64() * 1000.0;
    let connect_ms = Stats::of(&connect);
    let ttfb_ms = Stats::of(&ttfb);
    let health = if let Some(first) = failed.first() {
        Health::Unreachable {
            outcome: first.name().to_owned(),
            failed: failed.len(),
            of,
        }
    } else if let Some((phase, after_ms)) = hung.first() {
        Health::Hangs {
            phase: (*phase).to_owned(),
            hung: hung.len(),
            of,
            after_ms: *after_ms,
        }
    } else if let Some((phase, how)) = dropped.first() {
        Health::Drops {
            phase: (*phase).to_owned(),
            how: (*how).to_owned(),
            dropped: dropped.len(),
            of,
        }
    } else if let Some(status) = most_frequent(statuses.iter().filter(|s| **s >= 500)) {
        Health::Erroring {
            status,
            errors: statuses.iter().filter(|s| **s >= 500).count(),
            of,
        }
    } else if let Some(s) = connect_ms.filter(|s| s.median > threshold_ms) {
        Health::Slow {
            what: "connect".to_owned(),
            median_ms: s.median,
            threshold_ms,
        }
    } else if let Some(s) = ttfb_ms.filter(|s| s.median > threshold_ms) {
        Health::Slow {
            what: "first_byte".to_owned(),
            median_ms: s.median,
            threshold_ms,
        }
    } else {
        Health::Fine
    };
    Summary {
        probes: of,
        connect_ms,
        ttfb_ms,
        statuses,
        health,
    }
}

fn most_frequent<'a>(it: impl Iterator<Item = &'a u16>) -> Option<u16> {
    let mut counts: Vec<(u16, usize)> = Vec::new();
    for s in it {
        match counts.iter_mut().find(|(v, _)| v == s) {
            Some((_, n)) => *n += 1,
            None => counts.push((*s, 1)),
        }
    }
    counts
        .into_iter()
        .max_by_key(|(s, n)| (*n, *s))
        .map(|(s, _)| s)
}

/// Runs `count` probes of `spec` one after the other, `gap` apart.
pub async fn run_series(spec: &ProbeSpec, count: u32, gap: Duration) -> Vec<ProbeReport> {
    let mut reports = Vec::new();
    for i in 0..count.max(1) {
        if i > 0 {
            tokio::time::sleep(gap).await;
        }
        reports.push(run(spec).await);
    }
    reports
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt as _;

    use super::*;
    use crate::probe::{
        HttpSpec,
        test_util::{TIMEOUT, accept, listener, read_head},
    };

    fn report(tcp: TcpOutcome, http: Option<HttpOutcome>) -> ProbeReport {
        ProbeReport {
            target: "10.0.0.1:80".parse().unwrap(),
            local: None,
            started_ns: 0,
            ended_ns: 0,
            tcp,
            tls: None,
            http,
        }
    }

    fn answered(connect_ms: f64, status: u16, ttfb_ms: f64) -> ProbeReport {
        report(
            TcpOutcome::Connected { connect_ms },
            Some(HttpOutcome::Response {
                status,
                reason: String::new(),
                ttfb_ms,
                server: None,
            }),
        )
    }

    const SLOW: Duration = Duration::from_secs(1);

    #[test]
    fn stats_are_min_median_max() {
        let s = Stats::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.min, s.median, s.max, s.n), (1.0, 2.0, 3.0, 3));
        assert_eq!(Stats::of(&[1.0, 4.0]).unwrap().median, 2.5);
        assert_eq!(Stats::of(&[]), None);
        assert_eq!(Stats::of(&[f64::NAN]), None);
    }

    #[test]
    fn one_slow_answer_is_not_a_verdict_but_a_slow_median_is() {
        let one = [
            answered(1.0, 200, 5.0),
            answered(1.0, 200, 2500.0),
            answered(1.0, 200, 6.0),
        ];
        let s = judge(&one, SLOW);
        assert_eq!(s.health, Health::Fine);
        assert_eq!(s.ttfb_ms.unwrap().max, 2500.0);
        let two = [
            answered(1.0, 200, 2400.0),
            answered(1.0, 200, 2500.0),
            answered(1.0, 200, 6.0),
        ];
        let s = judge(&two, SLOW);
        assert_eq!(s.health.name(), "slow");
        assert!(
            matches!(s.health, Health::Slow { ref what, median_ms, .. } if what == "first_byte" && median_ms == 2400.0)
        );
    }

    #[test]
    fn errors_hangs_and_failures_in_that_order() {
        let e = [
            answered(1.0, 500, 3.0),
            answered(1.0, 200, 3.0),
            answered(1.0, 503, 3.0),
        ];
        assert!(matches!(
            judge(&e, SLOW).health,
            Health::Erroring {
                errors: 2,
                of: 3,
                ..
            }
        ));
        let all = [answered(1.0, 500, 3.0), answered(1.0, 500, 3.0)];
        assert!(matches!(
            judge(&all, SLOW).health,
            Health::Erroring {
                status: 500,
                errors: 2,
                of: 2
            }
        ));
        let four = [answered(1.0, 404, 3.0)];
        let s = judge(&four, SLOW);
        assert_eq!(s.health, Health::Fine);
        assert_eq!(s.statuses, vec![404]);
        let hang = [
            answered(1.0, 500, 3.0),
            report(
                TcpOutcome::Connected { connect_ms: 1.0 },
                Some(HttpOutcome::Hang { after_ms: 3000.0 }),
            ),
        ];
        assert!(
            matches!(judge(&hang, SLOW).health, Health::Hangs { ref phase, hung: 1, .. } if phase == "http")
        );
        let refused = [
            hang[1].clone(),
            report(TcpOutcome::Refused { after_ms: 0.1 }, None),
        ];
        assert!(
            matches!(judge(&refused, SLOW).health, Health::Unreachable { ref outcome, failed: 1, of: 2 } if outcome == "refused")
        );
    }

    #[tokio::test]
    async fn a_real_server_answering_500_then_slowly() {
        let (l, addr) = listener().await;
        tokio::spawn(async move {
            for i in 0..3 {
                let mut s = accept(&l).await;
                read_head(&mut s).await;
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                let _ = s
                    .write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")
                    .await;
            }
        });
        let spec = ProbeSpec {
            target: addr,
            timeout: TIMEOUT,
            tls: None,
            http: Some(HttpSpec {
                path: "/".into(),
                host: "x".into(),
            }),
        };
        let reports = run_series(&spec, 3, Duration::from_millis(10)).await;
        assert_eq!(reports.len(), 3);
        let s = judge(&reports, Duration::from_millis(200));
        assert!(
            matches!(
                s.health,
                Health::Erroring {
                    status: 500,
                    errors: 3,
                    of: 3
                }
            ),
            "{s:?}"
        );
        let t = s.ttfb_ms.unwrap();
        assert!(t.min < 200.0 && t.median >= 290.0, "{t:?}");
    }

    /// A server that accepts and closes (or resets) without answering drops the request: neither
    /// fine nor a hang; a hang still outranks it, a 5xx does not.
    #[tokio::test]
    async fn a_real_server_closing_without_an_answer_drops() {
        let (l, addr) = listener().await;
        tokio::spawn(async move {
            for i in 0..3 {
                let mut s = accept(&l).await;
                read_head(&mut s).await;
                if i == 2 {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                        .await;
                }
                drop(s);
            }
        });
        let spec = ProbeSpec {
            target: addr,
            timeout: TIMEOUT,
            tls: None,
            http: Some(HttpSpec {
                path: "/".into(),
                host: "x".into(),
            }),
        };
        let reports = run_series(&spec, 3, Duration::from_millis(10)).await;
        let s = judge(&reports, SLOW);
        assert!(
            matches!(s.health, Health::Drops { ref phase, dropped: 2, of: 3, .. } if phase == "http"),
            "{s:?}"
        );
        assert_eq!(s.statuses, vec![200]);
        let mut with_500 = reports.clone();
        with_500.push(answered(1.0, 500, 3.0));
        assert_eq!(judge(&with_500, SLOW).health.name(), "drops");
        with_500.push(report(
            TcpOutcome::Connected { connect_ms: 1.0 },
            Some(HttpOutcome::Hang { after_ms: 3000.0 }),
        ));
        assert_eq!(judge(&with_500, SLOW).health.name(), "hangs");
    }
}
