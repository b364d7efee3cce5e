//! The correlated history as the tripwire hands it out (`lbtrace dump`, SIGUSR1): one JSON
//! object per connection, client leg and backend leg side by side, with the same event objects as
//! `trace` prints. The request a dump sends is a [`Query`].

use std::net::SocketAddr;

use serde_json::Value;

use super::recorder::{Accounting, Conn};
use crate::{
    endpoint::Endpoint,
    kernel::btf::DropReasons,
    record::{BackendLegRecord, ConnRecord, ConnStatus, DumpRecord, EventRecord},
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

/// The answer to a dump request: the selected connections and the recorder's accounting.
pub fn dump_json(conns: &[&Conn], acct: Accounting, r: &mut Render<'_>) -> Value {
    let d = DumpRecord {
        recorder: acct,
        connections: conns.iter().map(|c| conn_record(c, r)).collect(),
    };
    serde_json::to_value(d).unwrap_or(Value::Null)
}
