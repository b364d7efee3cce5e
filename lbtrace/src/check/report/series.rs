//! The words for series of probes (`--probe-count`): min / median / max, HTTP statuses, and the
//! findings of backends and of the VIP that connect but serve errors, hang or answer slowly.

use crate::{
    check::verdict::{BackendFinding, LocalService},
    probe::series::{Health, Stats, Summary},
    replies::{Replies, ReplyHealth},
};

/// Milliseconds as people read them: `0.8 ms`, `12.3 ms`, `1.8 s`, `2 s`.
pub fn duration(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{ms:.1} ms")
    } else {
        let s = format!("{:.1}", ms / 1000.0);
        format!("{} s", s.strip_suffix(".0").unwrap_or(&s))
    }
}

/// `median 1.8 s (min 1.5 s, max 2.1 s)`.
fn median_min_max(s: &Stats) -> String {
    format!(
        "median {} (min {}, max {})",
        duration(s.median),
        duration(s.min),
        duration(s.max)
    )
}

/// `time to first byte` / `connect time`.
fn what_words(what: &str) -> &'static str {
    if what == "connect" {
        "connect time"
    } else {
        "time to first byte"
    }
}

/// How a connection was dropped: `reset` / `closed`.
fn drop_words(how: &str) -> &'static str {
    if how == "reset" { "reset" } else { "closed" }
}

/// `3 of 3 probes`.
fn share(n: usize, of: usize) -> String {
    format!("{n} of {of} probe{}", if of == 1 { "" } else { "s" })
}

/// A backend's replies in the traffic (`--data`) that are not fine, in words: `slow from the
/// traffic: time to first byte median 2 s (min 1.9 s, max 2.1 s) over 5 replies past --slow
/// 1 s`; `None` when they are fine.
pub fn replies_words(r: &Replies) -> Option<String> {
    let over = format!(
        "{} repl{}",
        r.replies,
        if r.replies == 1 { "y" } else { "ies" }
    );
    Some(match &r.health {
        ReplyHealth::Fine => return None,
        ReplyHealth::Erroring { status, errors, of } => format!(
            "answers HTTP {status} in the traffic ({errors} of {of} HTTP replies are 5xx{})",
            r.ttfb_ms
                .map(|t| format!("; time to first byte {}", median_min_max(&t)))
                .unwrap_or_default()
        ),
        ReplyHealth::Slow { threshold_ms, .. } => format!(
            "slow from the traffic: time to first byte {} over {over} past --slow {}",
            r.ttfb_ms.as_ref().map(median_min_max).unwrap_or_default(),
            duration(*threshold_ms)
        ),
    })
}

/// A set of replies (`--data`) as the text report's backend list shows it: `3 replies in the
/// traffic, first byte median 1.5 s (min 1.5 s, max 1.5 s), HTTP 5xx 0 of 3: slow`.
pub fn replies_line(whose: &str, r: &Replies) -> String {
    let mut parts = vec![format!(
        "{} repl{} {whose}",
        r.replies,
        if r.replies == 1 { "y" } else { "ies" }
    )];
    if let Some(t) = &r.ttfb_ms {
        parts.push(format!("first byte {}", median_min_max(t)));
    }
    if r.http > 0 {
        parts.push(format!("HTTP 5xx {} of {}", r.errors_5xx, r.http));
    }
    format!("{}: {}", parts.join(", "), r.health.name())
}

/// Where the clients' time goes (`--data`), when they wait past `--slow` or a backend is slow:
/// `clients wait 2.1 s (median, max 2.3 s) at the VIP; backends answer in 2 s: the time is the
/// backends'`. The clients' wait compared is their median when it is past `--slow`, else their
/// longest (only the requests a slow backend got waited).
pub fn where_time_goes(clients: &Replies, backends: &[&Replies]) -> Option<String> {
    let c = clients.ttfb_ms?;
    let wait = if matches!(clients.health, ReplyHealth::Slow { .. }) {
        c.median
    } else {
        c.max
    };
    let mut answer: Vec<f64> = backends
        .iter()
        .filter_map(|b| b.ttfb_ms.map(|t| t.median))
        .collect();
    answer.sort_by(f64::total_cmp);
    let slowest = *answer.last()?;
    let slow = matches!(clients.health, ReplyHealth::Slow { .. })
        || backends
            .iter()
            .any(|b| matches!(b.health, ReplyHealth::Slow { .. }));
    if !slow {
        return None;
    }
    // The backends account for the wait when the slowest of them takes at least half of it.
    let whose = if slowest * 2.0 >= wait {
        "the time is the backends'".to_owned()
    } else {
        format!("the LB adds {}", duration(wait - slowest))
    };
    Some(format!(
        "clients wait {} (median, max {}) at the VIP; backends answer in {}: {whose}",
        duration(c.median),
        duration(c.max),
        duration(slowest)
    ))
}

/// A backend that connects but serves badly, in words; `None` for other findings.
pub fn degraded_words(f: &BackendFinding) -> Option<String> {
    Some(match f {
        BackendFinding::Erroring {
            status,
            errors,
            of,
            ttfb_ms,
        } => format!(
            "answers HTTP {status} ({}{})",
            share(*errors, *of),
            ttfb_ms
                .map(|t| format!(
                    "; time to first byte median {}, min {}, max {}",
                    duration(t.median),
                    duration(t.min),
                    duration(t.max)
                ))
                .unwrap_or_default()
        ),
        BackendFinding::Hangs {
            phase,
            hung,
            of,
            after_ms,
            ..
        } => format!(
            "hangs: connects but no {} answer within the probe timeout ({}; {})",
            if phase == "tls" { "TLS" } else { "HTTP" },
            duration(*after_ms),
            share(*hung, *of)
        ),
        BackendFinding::Drops {
            phase,
            how,
            dropped,
            of,
        } => format!(
            "drops requests: connects, then {} without {} ({})",
            drop_words(how),
            if phase == "tls" {
                "completing the TLS handshake"
            } else {
                "an HTTP answer"
            },
            share(*dropped, *of)
        ),
        BackendFinding::Slow {
            what,
            stats,
            threshold_ms,
        } => format!(
            "slow: {} {} past --slow {}",
            what_words(what),
            median_min_max(stats),
            duration(*threshold_ms)
        ),
        _ => return None,
    })
}

/// The LB host's own requests to the VIP that were not all answered fine, for step 2.
pub fn local_words(l: &LocalService) -> String {
    let (what, every) = match &l.health {
        Health::Erroring { status, errors, of } => (
            format!(
                "the LB serves errors: the LB host's own requests to the VIP got HTTP {status} ({})",
                share(*errors, *of)
            ),
            errors >= of,
        ),
        Health::Hangs {
            hung, of, after_ms, ..
        } => (
            format!(
                "the LB host's own requests to the VIP got no answer within {} ({})",
                duration(*after_ms),
                share(*hung, *of)
            ),
            hung >= of,
        ),
        Health::Drops {
            how, dropped, of, ..
        } => (
            format!(
                "the LB host's own requests to the VIP were {} without an answer ({})",
                drop_words(how),
                share(*dropped, *of)
            ),
            dropped >= of,
        ),
        Health::Slow {
            what,
            median_ms,
            threshold_ms,
        } => (
            format!(
                "the LB is slow: the median {} of the LB host's own requests to the VIP is {}, past --slow {}",
                what_words(what),
                duration(*median_ms),
                duration(*threshold_ms)
            ),
            false,
        ),
        Health::Fine | Health::Unreachable { .. } => return String::new(),
    };
    let why = if matches!(l.health, Health::Slow { .. }) {
        ""
    } else if l.backends_fine {
        " while every backend answers the LB host's own probes fine: the LB's own doing"
    } else if every {
        " (its backends: see step 3)"
    } else {
        " (see step 3)"
    };
    format!("; {what}{why}")
}

/// What to look at when the LB serves errors while its backends answer fine.
pub fn local_next(l: &LocalService) -> Option<String> {
    (l.backends_fine && !matches!(l.health, Health::Slow { .. })).then(|| {
        "the LB answers errors while its backends answer the LB host fine: check the LB's backend list (addresses, ports), its health checks, maxconn and timeouts; its log says which backend it tried".to_owned()
    })
}

/// `3 probes: connect median 0.3 ms (min 0.2 ms, max 0.7 ms), first byte median ..., HTTP 200 x3`.
pub fn series_line(s: &Summary) -> String {
    let mut parts = vec![format!("{} probes", s.probes)];
    if let Health::Unreachable {
        outcome,
        failed,
        of,
    } = &s.health
    {
        parts.push(format!("{outcome} in {failed} of {of}"));
    }
    if let Some(c) = &s.connect_ms {
        parts.push(format!("connect {}", median_min_max(c)));
    }
    if let Some(t) = &s.ttfb_ms {
        parts.push(format!("first byte {}", median_min_max(t)));
    }
    let mut statuses: Vec<(u16, usize)> = Vec::new();
    for st in &s.statuses {
        match statuses.iter_mut().find(|(v, _)| v == st) {
            Some((_, n)) => *n += 1,
            None => statuses.push((*st, 1)),
        }
    }
    if !statuses.is_empty() {
        let list: Vec<String> = statuses
            .iter()
            .map(|(st, n)| format!("HTTP {st} x{n}"))
            .collect();
        parts.push(list.join(", "));
    }
    let unanswered = s.probes.saturating_sub(s.statuses.len());
    if unanswered > 0 && !s.statuses.is_empty() {
        parts.push(format!("{unanswered} without an HTTP answer"));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(min: f64, median: f64, max: f64) -> Stats {
        Stats {
            min,
            median,
            max,
            n: 3,
        }
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(0.84), "0.8 ms");
        assert_eq!(duration(1800.0), "1.8 s");
        assert_eq!(duration(1000.0), "1 s");
        assert_eq!(duration(2000.4), "2 s");
    }

    #[test]
    fn degraded_backends_in_words() {
        let e = BackendFinding::Erroring {
            status: 500,
            errors: 3,
            of: 3,
            ttfb_ms: Some(stats(0.9, 1.2, 3.4)),
        };
        assert_eq!(
            degraded_words(&e).unwrap(),
            "answers HTTP 500 (3 of 3 probes; time to first byte median 1.2 ms, min 0.9 ms, max 3.4 ms)"
        );
        let s = BackendFinding::Slow {
            what: "first_byte".into(),
            stats: stats(1500.0, 1800.0, 2100.0),
            threshold_ms: 1000.0,
        };
        assert_eq!(
            degraded_words(&s).unwrap(),
            "slow: time to first byte median 1.8 s (min 1.5 s, max 2.1 s) past --slow 1 s"
        );
        let h = BackendFinding::Hangs {
            phase: "http".into(),
            hung: 2,
            of: 3,
            after_ms: 2000.2,
            connect_ms: None,
        };
        assert_eq!(
            degraded_words(&h).unwrap(),
            "hangs: connects but no HTTP answer within the probe timeout (2 s; 2 of 3 probes)"
        );
        assert_eq!(degraded_words(&BackendFinding::Refused), None);
    }

    #[test]
    fn the_vip_serving_errors_in_words() {
        let l = LocalService {
            health: Health::Erroring {
                status: 503,
                errors: 3,
                of: 3,
            },
            backends_fine: false,
        };
        assert_eq!(
            local_words(&l),
            "; the LB serves errors: the LB host's own requests to the VIP got HTTP 503 (3 of 3 probes) (its backends: see step 3)"
        );
        assert_eq!(local_next(&l), None);
        let l = LocalService {
            backends_fine: true,
            ..l
        };
        assert!(local_words(&l).ends_with("fine: the LB's own doing"));
        assert!(local_next(&l).unwrap().contains("backend list"));
    }

    #[test]
    fn a_series_in_one_line() {
        let s = Summary {
            probes: 3,
            connect_ms: Some(stats(0.2, 0.3, 0.7)),
            ttfb_ms: Some(stats(1.0, 1.2, 3.2)),
            statuses: vec![200, 500, 200],
            health: Health::Fine,
        };
        assert_eq!(
            series_line(&s),
            "3 probes, connect median 0.3 ms (min 0.2 ms, max 0.7 ms), first byte median 1.2 ms (min 1.0 ms, max 3.2 ms), HTTP 200 x2, HTTP 500 x1"
        );
    }
}
