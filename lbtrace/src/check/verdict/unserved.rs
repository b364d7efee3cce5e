//! Step 3, `lb-to-backend`, seen from the clients: a Layer 7 LB that answers and closes client
//! connections at once (or after every backend connection it tried failed) while no backend
//! connection of its own works is serving an error page
//! (HAProxy's 503): every backend is down in the LB's view, whatever the reason (its health
//! checks failed, no route, every backend refusing).
//!
//! One rule for `check` (the whole window at once, [`judge`]) and `watch`'s recorder (one
//! connection at a time, as the LB closes it): [`unserved_close`] and [`all_down`].
//!
//! A served client without a new backend connection is normal when the LB reuses an idle
//! server connection (HAProxy `http-reuse`, keep-alive): the rule holds only while no backend
//! answered any connection of the LB's (a client's backend leg, a health check, a probe) within
//! [`ALIVE_NS`].

use super::{Facts, TcpResult, flow::Flow};
use crate::event::Detail;

/// The LB closed the client connection at most this long after the client's SYN.
pub const QUICK_CLOSE_NS: u64 = 500_000_000;
/// A backend that answered a connection of the LB's this recently is alive in the LB's view.
pub const ALIVE_NS: u64 = 60_000_000_000;

/// A client connection the LB answered itself (Layer 7), then closed with its FIN at
/// `lb_close_ns`; `lb_sent_data`: the FIN is past the LB's ISN + 1 (it sent a response, e.g. an
/// error page; a bare RST or empty close is step 2's business); `backend_tried`: the LB opened
/// a backend connection for it; `backend_answered`: that connection got a SYN-ACK.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answered {
    pub syn_ns: u64,
    pub lb_close_ns: u64,
    pub lb_sent_data: bool,
    pub backend_tried: bool,
    pub backend_answered: bool,
}

/// The LB answered and closed the connection with no backend answering for it: at once, or
/// after the backend connection it tried failed (HAProxy's retries take seconds).
pub fn unserved_close(c: Answered) -> bool {
    c.lb_sent_data
        && !c.backend_answered
        && (c.backend_tried || c.lb_close_ns.saturating_sub(c.syn_ns) <= QUICK_CLOSE_NS)
}

/// Every backend is down in the LB's view: connections closed unserved ([`unserved_close`]) and no
/// backend answered the LB (`last_alive_ns`: the last SYN-ACK of a backend to the LB, or a
/// probe that connected) within [`ALIVE_NS`] of `now_ns`.
pub fn all_down(unserved: usize, last_alive_ns: Option<u64>, now_ns: u64) -> bool {
    unserved > 0 && last_alive_ns.is_none_or(|t| now_ns.saturating_sub(t) > ALIVE_NS)
}

/// What `check` found: `connections` of the `of` client connections the LB answered itself
/// were closed at once, and no backend answered the LB in the window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unserved {
    pub connections: usize,
    pub of: usize,
    /// Connections of the LB's to backends that its TCP stack saw refused: a reset accepted
    /// in `SYN_SENT` ([`super::resets::refused_connect`]; 0 when resets are not traced).
    pub refused: usize,
}

/// The rule over a whole window: `live` are the client connections the LB host's stack kept.
/// Returns the finding and its evidence (the first connections' packets).
pub fn judge(f: &Facts<'_>, live: &[&Flow]) -> Option<(Unserved, Vec<usize>)> {
    // Without backends given nothing says the LB has backends to lose: a server answering and
    // closing at once is just serving.
    if f.backends.is_empty() {
        return None;
    }
    let ev = f.events;
    let is_backend = |sa: &std::net::SocketAddr| f.backends.iter().any(|b| b.matches(sa));
    // Any backend's SYN-ACK to the LB (a leg, a health check, the probe), or a probe that
    // connected, is a backend alive.
    let last_alive = ev
        .iter()
        .filter(|e| matches!(e.detail, Detail::Packet) && e.is_syn_ack() && is_backend(&e.src))
        .map(|e| e.ts_ns)
        .max();
    let probe_alive = f.probes.iter().any(|p| p.tcp == TcpResult::Connected);
    let end = ev.last().map_or(0, |e| e.ts_ns);
    if probe_alive || !all_down(1, last_alive, end) {
        return None;
    }
    // The LB's SYNs to backends, in time order (the events are).
    let backend_syns: Vec<u64> = ev
        .iter()
        .filter(|e| e.is_syn() && is_backend(&e.dst))
        .map(|e| e.ts_ns)
        .collect();
    let l7: Vec<&Flow> = live
        .iter()
        .copied()
        .filter(|fl| fl.answered() && !fl.l4())
        .collect();
    let unserved: Vec<&Flow> = l7
        .iter()
        .copied()
        .filter(|fl| {
            let syn = fl.syns.first().map(|&i| ev[i].ts_ns);
            let close = fl.lb_fins.first().map(|&i| ev[i].ts_ns);
            let (Some(syn_ns), Some(lb_close_ns)) = (syn, close) else {
                return false;
            };
            // A backend SYN while the connection waited: the LB tried (a Layer 7 leg is not
            // tied to its client; with no backend answering at all, any try failed).
            let from = backend_syns.partition_point(|&t| t < syn_ns);
            let backend_tried = backend_syns.get(from).is_some_and(|&t| t <= lb_close_ns);
            unserved_close(Answered {
                syn_ns,
                lb_close_ns,
                lb_sent_data: fl.server_sent_data(ev),
                backend_tried,
                backend_answered: false,
            })
        })
        .collect();
    if !all_down(unserved.len(), last_alive, end) {
        return None;
    }
    let first: Vec<&Flow> = unserved.iter().take(3).copied().collect();
    Some((
        Unserved {
            connections: unserved.len(),
            of: l7.len(),
            refused: ev
                .iter()
                .filter(|e| super::resets::refused_connect(e) && is_backend(&e.src))
                .filter(|e| !f.probes.iter().any(|p| p.ports.contains(&e.dst.port())))
                .count(),
        },
        super::flow::evidence_of(&first, Flow::evidence),
    ))
}
