//! The correlated history as the tripwire hands it out (`lbtrace dump`, SIGUSR1): one JSON
//! object per connection, client leg and backend leg side by side, with the same event objects as
//! `trace` prints. The request a dump sends is a [`Query`].

use std::{collections::VecDeque, net::SocketAddr};

use serde_json::Value;

use super::recorder::{Accounting, Conn};
use crate::{
    endpoint::Endpoint,
    kernel::btf::DropReasons,
    record::{BackendLegRecord, ConnRecord, ConnStatus, DumpRecord, EventRecord, MAX_NOTICES},
    render::{Clock, IfNames},
};

/// What `dump` asks for.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Query {
    pub last: Option<usize>,
    /// Only connections whose last event is at most this many seconds old.
    pub since_secs: Option<f64>,
    pub client: Option<String>,
    pub backend: Option<String>,
    #[serde(default)]
    pub failed: bool,
}

fn matches_ep(filter: Option<&String>, sa: Option<SocketAddr>) -> bool {
    let Some(f) = filter else { return true };
    let Ok(ep) = f.parse::<Endpoint>() else {
        return false;
    };
    sa.is_some_and(|sa| ep.matches(&sa))
}

/// The connections a query selects, oldest first.
pub fn select<'a>(
    conns: impl DoubleEndedIterator<Item = &'a Conn>,
    q: &Query,
    now_ns: u64,
) -> Vec<&'a Conn> {
    let mut v: Vec<&Conn> = conns
        .rev()
        .filter(|c| !q.failed || c.failed())
        .filter(|c| matches_ep(q.client.as_ref(), Some(c.client)))
        .filter(|c| matches_ep(q.backend.as_ref(), c.backend.as_ref().map(|b| b.backend)))
        .filter(|c| {
            q.since_secs
                .is_none_or(|s| (now_ns.saturating_sub(c.last_ns) as f64) / 1e9 <= s)
        })
        .take(q.last.unwrap_or(usize::MAX))
        .collect();
    v.reverse();
    v
}

pub struct Render<'a> {
    pub clock: &'a Clock,
    pub ifnames: &'a mut IfNames,
    pub reasons: &'a DropReasons,
}

/// The record of a recorded connection.
pub fn conn_record(c: &Conn, r: &mut Render<'_>) -> ConnRecord {
    let evs = |evs: &[crate::event::KernelEvent], r: &mut Render<'_>| -> Vec<EventRecord> {
        evs.iter()
            .map(|e| EventRecord::of(e, r.clock, r.ifnames, r.reasons))
            .collect()
    };
    ConnRecord {
        id: c.id,
        vip: c.vip,
        client: c.client,
        start: r.clock.rfc3339(c.first_ns),
        start_ns: c.first_ns,
        duration_ms: (c.last_ns.saturating_sub(c.first_ns)) as f64 / 1e6,
        step: c.checklist_step(),
        status: if c.failed() {
            ConnStatus::Fail
        } else if c.closed {
            ConnStatus::Ok
        } else {
            ConnStatus::Open
        },
        findings: c.findings.clone(),
        client_leg: evs(&c.events, r),
        backend_leg: c.backend.as_ref().map(|b| BackendLegRecord {
            lb: b.lb,
            backend: b.backend,
            join: b.join,
            answered: b.answered,
            events: evs(&b.events, r),
        }),
        truncated_events: c.truncated,
    }
}

/// The alerts and recoveries a tripwire printed, for `dump`: the newest [`MAX_NOTICES`], with
/// the time each was printed (CLOCK_MONOTONIC ns) for `--since`.
#[derive(Default)]
pub struct Notices {
    kept: VecDeque<(u64, Value)>,
    dropped: u64,
}

impl Notices {
    pub fn push(&mut self, now_ns: u64, notice: Value) {
        if self.kept.len() == MAX_NOTICES {
            self.kept.pop_front();
            self.dropped += 1;
        }
        self.kept.push_back((now_ns, notice));
    }

    /// The kept notices a query selects (by `since_secs` only: an alert is about the whole VIP,
    /// not about one client or backend connection), oldest first.
    fn select(&self, q: &Query, now_ns: u64) -> Vec<Value> {
        self.kept
            .iter()
            .filter(|(t, _)| {
                q.since_secs
                    .is_none_or(|s| (now_ns.saturating_sub(*t) as f64) / 1e9 <= s)
            })
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// The answer to a dump request: the selected connections, the recorder's accounting and the
/// alerts and recoveries of the time asked for.
pub fn dump_json(
    conns: &[&Conn],
    acct: Accounting,
    notices: &Notices,
    q: &Query,
    now_ns: u64,
    r: &mut Render<'_>,
) -> Value {
    let d = DumpRecord {
        recorder: acct,
        connections: conns.iter().map(|c| conn_record(c, r)).collect(),
        notices: notices.select(q, now_ns),
        notices_dropped: notices.dropped,
    };
    serde_json::to_value(d).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn notices_keep_the_newest_and_select_by_time() {
        let mut n = Notices::default();
        let sec = 1_000_000_000u64;
        for i in 0..(MAX_NOTICES as u64 + 3) {
            n.push(i * sec, json!({"type": "alert", "i": i}));
        }
        assert_eq!(n.dropped, 3);
        let now = (MAX_NOTICES as u64 + 2) * sec;
        let all = n.select(&Query::default(), now);
        assert_eq!(all.len(), MAX_NOTICES);
        assert_eq!(all[0]["i"], 3, "the oldest three were dropped");
        let recent = Query {
            since_secs: Some(1.5),
            ..Query::default()
        };
        let v = n.select(&recent, now);
        let got: Vec<_> = v.iter().map(|v| v["i"].as_u64().unwrap()).collect();
        assert_eq!(got, [MAX_NOTICES as u64 + 1, MAX_NOTICES as u64 + 2]);
        // The connection filters do not filter alerts.
        let by_client = Query {
            client: Some("10.0.0.5".into()),
            failed: true,
            ..Query::default()
        };
        assert_eq!(n.select(&by_client, now).len(), MAX_NOTICES);
    }
}
