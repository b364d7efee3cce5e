//! The verdict engine of `lbtrace check`: kernel events and probe outcomes in, a verdict for each
//! step of the checklist out. Pure: no IO, no clock (the window is passed in), unit-tested with
//! hand-made event sequences.
//!
//! Client connections to the VIP are followed by their tuple. The Layer 4 / Layer 7 question is
//! answered from behaviour: a NAT forwards the client's SYN with its initial sequence number
//! (ISN) intact, with or without SNAT; a proxy answers the SYN itself. Whether a packet reached the
//! other side is read from the sequence space: a client FIN or RST acknowledging the LB's ISN + 1
//! proves the SYN-ACK arrived; a client FIN with seq past its ISN + 1 proves it sent a request; an
//! LB FIN past its ISN + 1 proves it answered.

use std::net::SocketAddr;

use lbtrace_common::tcp_flag::{ACK, FIN, RST, SYN};

use crate::{
    endpoint::Endpoint,
    event::{Detail, Dir, KernelEvent},
    kernel::btf::DropReasons,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    Warn,
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    L4,
    L7,
    Unknown,
}

/// The TCP result of a probe, as the engine needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpResult {
    Connected,
    Refused,
    Timeout,
    Unreachable,
    Error,
}

/// What a probe found, reduced to what the rules use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeFacts {
    pub target: SocketAddr,
    /// The probe socket's local port: ties kernel events to the probe.
    pub local_port: Option<u16>,
    pub tcp: TcpResult,
    /// The OS's word for an unreachable / error result.
    pub why: Option<String>,
    pub http_status: Option<u16>,
}

/// Everything the rules look at.
pub struct Facts<'a> {
    pub vip: Endpoint,
    pub backends: &'a [Endpoint],
    /// `--client`: only this client's connections count as client evidence.
    pub client: Option<Endpoint>,
    /// Kernel events, in time order.
    pub events: &'a [KernelEvent],
    /// One per backend, in `backends` order (absent when a probe could not run).
    pub probes: &'a [ProbeFacts],
    /// The LB host's own probe of the VIP, when it ran.
    pub vip_probe: Option<&'a ProbeFacts>,
    pub window_secs: f64,
    pub reasons: &'a DropReasons,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct StepVerdict {
    pub step: u8,
    pub name: &'static str,
    pub status: Status,
    pub summary: String,
    /// The next thing to check.
    pub next: Option<String>,
    /// Indices into `Facts::events`.
    #[serde(skip)]
    pub evidence: Vec<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked_by: Option<u8>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct BackendVerdict {
    pub addr: SocketAddr,
    /// The probe's result in words, with its reason.
    pub finding: String,
    pub reachable: bool,
    #[serde(skip)]
    pub evidence: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Verdict {
    pub mode: Mode,
    pub first_failed_step: Option<u8>,
    pub steps: Vec<StepVerdict>,
    pub backends: Vec<BackendVerdict>,
}

pub const STEP_NAMES: [&str; 4] = [
    "client-to-lb",
    "lb-handling",
    "lb-to-backend",
    "return-path",
];

/// One client connection to the VIP, followed by its tuple.
#[derive(Debug, Default)]
struct Flow {
    client: Option<SocketAddr>,
    /// The client's ISN (first SYN seen).
    isn: Option<u32>,
    syns: Vec<usize>,
    /// SYN-ACKs leaving the LB to the client.
    syn_acks: Vec<usize>,
    /// The ISN of the side that answered the client (the LB, or for L4 the backend).
    server_isn: Option<u32>,
    /// The client's SYN leaving towards a backend with the same ISN (L4).
    forwarded: Vec<usize>,
    /// The backend's SYN-ACK to a forwarded SYN, seen arriving at the LB.
    backend_syn_acks: Vec<usize>,
    /// The client's SYN, already NATed towards a backend, dropped by the LB host on the way
    /// (e.g. NEIGH_FAILED: the backend is down). Proof of forwarding, and step 3's business.
    forward_drops: Vec<usize>,
    lb_rsts: Vec<usize>,
    lb_fins: Vec<usize>,
    client_closes: Vec<usize>,
    drops: Vec<usize>,
    icmp: Vec<usize>,
}

impl Flow {
    fn answered(&self) -> bool {
        !self.syn_acks.is_empty()
    }

    fn l4(&self) -> bool {
        !self.forwarded.is_empty() || !self.forward_drops.is_empty()
    }

    /// The client's SYN retransmitted after the LB sent its SYN-ACK.
    fn syn_after_syn_ack(&self, events: &[KernelEvent]) -> bool {
        let Some(&first) = self.syn_acks.first() else {
            return false;
        };
        self.syns
            .iter()
            .any(|&i| events[i].ts_ns > events[first].ts_ns)
    }

    /// The client acknowledged the server's ISN: the SYN-ACK reached it.
    fn client_got_syn_ack(&self, events: &[KernelEvent]) -> bool {
        let Some(sisn) = self.server_isn else {
            return false;
        };
        self.client_closes.iter().any(|&i| {
            let e = &events[i];
            e.flags & ACK != 0
                && e.ack.wrapping_sub(sisn) >= 1
                && e.ack.wrapping_sub(sisn) < 1 << 30
        })
    }

    fn client_sent_request(&self, events: &[KernelEvent]) -> bool {
        let Some(isn) = self.isn else { return false };
        self.client_closes.iter().any(|&i| {
            events[i].seq.wrapping_sub(isn) > 1 && events[i].seq.wrapping_sub(isn) < 1 << 30
        })
    }

    /// The answering side sent data. Its FIN carries the exact count (seq = ISN + 1 + bytes);
    /// without one, the client's acknowledgement tells (ack = ISN + 1 + bytes, + 1 once the
    /// answering side's FIN arrived, which this branch excludes).
    fn server_sent_data(&self, events: &[KernelEvent]) -> bool {
        let Some(sisn) = self.server_isn else {
            return false;
        };
        let past = |i: &usize| {
            let d = events[*i].seq.wrapping_sub(sisn);
            (d > 1 && d < 1 << 30) || events[*i].payload_len > 0
        };
        if !self.lb_fins.is_empty() {
            return self.lb_fins.iter().any(past);
        }
        self.lb_rsts.iter().any(past)
            || self.client_closes.iter().any(|&i| {
                let d = events[i].ack.wrapping_sub(sisn);
                d > 1 && d < 1 << 30
            })
    }

    /// The client closed first, after sending a request and before receiving a byte: it gave up
    /// waiting (a hang), whatever the LB did after that.
    fn client_gave_up(&self, events: &[KernelEvent]) -> bool {
        let (Some(isn), Some(sisn)) = (self.isn, self.server_isn) else {
            return false;
        };
        let Some(&first) = self.client_closes.first() else {
            return false;
        };
        let c = &events[first];
        let lb_closed_before = self
            .lb_fins
            .iter()
            .chain(&self.lb_rsts)
            .any(|&i| events[i].ts_ns <= c.ts_ns);
        let sent = c.seq.wrapping_sub(isn);
        !lb_closed_before && c.ack == sisn.wrapping_add(1) && sent > 1 && sent < 1 << 30
    }

    fn kernel_refused(&self, events: &[KernelEvent], reasons: &DropReasons) -> bool {
        !self.lb_rsts.is_empty()
            && !self.answered()
            && self
                .drops
                .iter()
                .any(|&i| drop_name(&events[i], reasons) == "NO_SOCKET")
    }

    fn evidence(&self) -> Vec<usize> {
        let mut v: Vec<usize> = [
            &self.syns,
            &self.syn_acks,
            &self.forwarded,
            &self.backend_syn_acks,
            &self.forward_drops,
            &self.lb_rsts,
            &self.lb_fins,
            &self.client_closes,
            &self.drops,
            &self.icmp,
        ]
        .into_iter()
        .flatten()
        .copied()
        .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

fn drop_name(e: &KernelEvent, reasons: &DropReasons) -> String {
    match e.detail {
        Detail::Drop { reason } => reasons.name(reason),
        _ => String::new(),
    }
}

fn is(e: &KernelEvent, want: u8, not: u8) -> bool {
    e.flags & want == want && e.flags & not == 0
}

fn probe_of(probes: &[&ProbeFacts], e: &KernelEvent) -> Option<usize> {
    // For an ICMP error the event's tuple is already the quoted one.
    let (s, d) = (e.src, e.dst);
    probes.iter().position(|p| {
        p.local_port.is_some_and(|lp| {
            (d == p.target && s.port() == lp) || (s == p.target && d.port() == lp)
        })
    })
}

struct Classified {
    flows: Vec<Flow>,
    /// Events of each probe, by probe index (backend probes, then the VIP probe).
    probe_events: Vec<Vec<usize>>,
}

fn classify(f: &Facts<'_>) -> Classified {
    let mut all_probes: Vec<&ProbeFacts> = f.probes.iter().collect();
    all_probes.extend(f.vip_probe);
    let mut probe_events = vec![Vec::new(); all_probes.len()];
    let mut flows: Vec<Flow> = Vec::new();
    let is_backend = |sa: &SocketAddr| f.backends.iter().any(|b| b.matches(sa));
    let client_ok = |sa: &SocketAddr| f.client.is_none_or(|c| c.matches(sa));
    let mut backend_events = Vec::new();

    for (i, e) in f.events.iter().enumerate() {
        if let Some(p) = probe_of(&all_probes, e) {
            probe_events[p].push(i);
            continue;
        }
        let (s, d) = (e.src, e.dst);
        let (client, to_vip) = if f.vip.matches(&d) {
            (s, true)
        } else if f.vip.matches(&s) {
            (d, false)
        } else {
            if is_backend(&s) || is_backend(&d) {
                backend_events.push(i);
            }
            continue;
        };
        if !client_ok(&client) {
            continue;
        }
        let idx = match flows.iter().position(|fl| fl.client == Some(client)) {
            Some(x) => x,
            None => {
                flows.push(Flow {
                    client: Some(client),
                    ..Flow::default()
                });
                flows.len() - 1
            }
        };
        let fl = &mut flows[idx];
        match (&e.detail, to_vip) {
            (Detail::Drop { .. }, _) => fl.drops.push(i),
            (Detail::Icmp { .. }, _) => fl.icmp.push(i),
            (Detail::Packet, true) => {
                if is(e, SYN, ACK) {
                    fl.isn.get_or_insert(e.seq);
                    fl.syns.push(i);
                } else if e.flags & (FIN | RST) != 0 {
                    fl.client_closes.push(i);
                }
            }
            (Detail::Packet, false) => {
                if is(e, SYN | ACK, 0) {
                    fl.server_isn.get_or_insert(e.seq);
                    fl.syn_acks.push(i);
                } else if e.flags & RST != 0 {
                    fl.lb_rsts.push(i);
                } else if e.flags & FIN != 0 {
                    fl.lb_fins.push(i);
                }
            }
        }
    }

    // The backend leg: a SYN leaving towards a backend with a client's ISN is that client's SYN,
    // forwarded (NAT keeps the ISN, with or without SNAT); the backend's SYN-ACK acknowledges it.
    for &i in &backend_events {
        let e = &f.events[i];
        if matches!(e.detail, Detail::Icmp { .. }) {
            continue;
        }
        if matches!(e.detail, Detail::Packet)
            && is(e, SYN, ACK)
            && is_backend(&e.dst)
            && e.dir == Some(Dir::Out)
        {
            // Otherwise the LB's own backend connection (Layer 7): the probes' verdicts cover it.
            if let Some(fl) = flows.iter_mut().find(|fl| fl.isn == Some(e.seq)) {
                fl.forwarded.push(i);
            }
        } else if matches!(e.detail, Detail::Drop { .. })
            && e.flags & SYN != 0
            && e.flags & ACK == 0
        {
            // A forwarded client SYN dropped on its way to a backend (e.g. in FORWARD).
            if let Some(fl) = flows.iter_mut().find(|fl| fl.isn == Some(e.seq)) {
                fl.forward_drops.push(i);
            }
        } else if matches!(e.detail, Detail::Packet)
            && is(e, SYN | ACK, 0)
            && is_backend(&e.src)
            && let Some(fl) = flows
                .iter_mut()
                .find(|fl| fl.isn.is_some_and(|isn| e.ack == isn.wrapping_add(1)))
        {
            fl.backend_syn_acks.push(i);
        }
    }
    Classified {
        flows,
        probe_events,
    }
}

fn pct(n: usize, of: usize) -> String {
    if n == of {
        format!("{n}")
    } else {
        format!("{n} of {of}")
    }
}

fn count_reasons(f: &Facts<'_>, idx: &[usize]) -> String {
    let mut by: Vec<(String, usize)> = Vec::new();
    for &i in idx {
        let n = drop_name(&f.events[i], f.reasons);
        match by.iter_mut().find(|(r, _)| *r == n) {
            Some((_, c)) => *c += 1,
            None => by.push((n, 1)),
        }
    }
    by.iter()
        .map(|(r, c)| format!("{r} x{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn step(
    n: u8,
    status: Status,
    summary: String,
    next: Option<String>,
    evidence: Vec<usize>,
) -> StepVerdict {
    StepVerdict {
        step: n,
        name: STEP_NAMES[usize::from(n - 1)],
        status,
        summary,
        next,
        evidence,
        blocked_by: None,
    }
}

/// Judges every step.
pub fn judge(f: &Facts<'_>) -> Verdict {
    let c = classify(f);
    let ev = f.events;
    let vip = f.vip;
    let who = f
        .client
        .map_or_else(|| "clients".to_owned(), |c| format!("client {}", c.addr));
    let syn_flows: Vec<&Flow> = c.flows.iter().filter(|fl| !fl.syns.is_empty()).collect();

    // Step 1: do clients' SYNs reach the LB, and does the LB host keep them?
    let stack_drop = |fl: &Flow| {
        fl.drops.iter().any(|&i| {
            let n = drop_name(&ev[i], f.reasons);
            n != "NO_SOCKET" && ev[i].flags & SYN != 0
        }) && !fl.answered()
            && !fl.l4()
    };
    let dropped: Vec<&&Flow> = syn_flows.iter().filter(|fl| stack_drop(fl)).collect();
    let s1 = if syn_flows.is_empty() {
        step(
            1,
            Status::Fail,
            format!(
                "no SYN to {vip} from {who} arrived at the LB in {:.0} s: if a client was connecting, the problem is upstream (routing, or a firewall before the LB)",
                f.window_secs
            ),
            Some(format!(
                "connect from a client in another subnet (telnet {} {}) while lbtrace runs; if nothing shows, bring this to the network team: check the route to {} and the firewalls on the way",
                vip.addr,
                vip.port.unwrap_or(0),
                vip.addr
            )),
            Vec::new(),
        )
    } else if !dropped.is_empty() {
        let idx: Vec<usize> = dropped
            .iter()
            .flat_map(|fl| fl.drops.iter().copied())
            .collect();
        let mut evid: Vec<usize> = dropped.iter().flat_map(|fl| fl.evidence()).collect();
        evid.sort_unstable();
        step(
            1,
            Status::Fail,
            format!(
                "clients' SYNs reach the LB but the LB host drops them: {} connection(s) of {} dropped ({})",
                dropped.len(),
                syn_flows.len(),
                count_reasons(f, &idx)
            ),
            Some(drop_advice(&count_reasons(f, &idx))),
            evid,
        )
    } else {
        let n_syn: usize = syn_flows.iter().map(|fl| fl.syns.len()).sum();
        step(
            1,
            Status::Pass,
            format!(
                "{n_syn} SYN(s) from {} client connection(s) reached the LB and were not dropped",
                syn_flows.len()
            ),
            None,
            syn_flows
                .iter()
                .take(3)
                .flat_map(|fl| fl.syns.iter().take(1).copied())
                .collect(),
        )
    };

    // Step 2: how does the LB handle them?
    let live: Vec<&&Flow> = syn_flows.iter().filter(|fl| !stack_drop(fl)).collect();
    let l4 = live.iter().filter(|fl| fl.l4()).count();
    let l7 = live.iter().filter(|fl| fl.answered() && !fl.l4()).count();
    let mode = if l4 > 0 && l4 >= l7 {
        Mode::L4
    } else if l7 > 0 {
        Mode::L7
    } else {
        Mode::Unknown
    };
    let s2 = judge_handling(f, &live, mode);
    let forward_dropped: Vec<usize> = live
        .iter()
        .flat_map(|fl| fl.forward_drops.iter().copied())
        .collect();

    // Step 3: can the LB reach each backend?
    let backends: Vec<BackendVerdict> = f
        .backends
        .iter()
        .enumerate()
        .map(|(bi, b)| judge_backend(f, bi, b, &c.probe_events))
        .collect();
    let s3 = if f.backends.is_empty() {
        step(
            3,
            Status::Unknown,
            "no --backend given: nothing to probe".to_owned(),
            Some("pass the backends with --backend ADDR:PORT".to_owned()),
            Vec::new(),
        )
    } else {
        let down: Vec<&BackendVerdict> = backends.iter().filter(|b| !b.reachable).collect();
        let evid: Vec<usize> = down
            .iter()
            .flat_map(|b| b.evidence.iter().copied())
            .collect();
        if down.is_empty() {
            step(
                3,
                Status::Pass,
                format!("the LB reaches all {} backend(s)", backends.len()),
                None,
                backends
                    .iter()
                    .flat_map(|b| b.evidence.iter().take(2).copied())
                    .collect(),
            )
        } else {
            let list: Vec<String> = down
                .iter()
                .map(|b| format!("{}: {}", b.addr, b.finding))
                .collect();
            step(
                3,
                Status::Fail,
                format!(
                    "{} of {} backend(s) not reachable from the LB ({})",
                    down.len(),
                    backends.len(),
                    list.join("; ")
                ),
                Some(
                    "bring the evidence to the server or firewall team of each backend listed"
                        .to_owned(),
                ),
                evid,
            )
        }
    };

    let mut s3 = s3;
    if !forward_dropped.is_empty() {
        // Client SYNs NATed towards a backend and dropped by the LB host on the way.
        let why = format!(
            "the LB host drops client SYNs forwarded to the backends ({})",
            count_reasons(f, &forward_dropped)
        );
        s3.summary = if s3.status == Status::Fail {
            format!("{}; {why}", s3.summary)
        } else {
            why
        };
        s3.status = Status::Fail;
        s3.next.get_or_insert_with(|| "NEIGH_FAILED: the backend does not answer ARP/ND (host down, wrong VLAN); IP_OUTNOROUTES: no route to it".to_owned());
        s3.evidence.extend(forward_dropped.iter().copied());
        s3.evidence.sort_unstable();
        s3.evidence.dedup();
    }
    let s4 = judge_return(f, &live);
    let mut steps = vec![s1, s2, s3, s4];
    // Steps left without evidence by an earlier failure are unknown, blocked by it.
    let first_fail = steps
        .iter()
        .find(|s| s.status == Status::Fail)
        .map(|s| s.step);
    if let Some(ff) = first_fail {
        for s in steps
            .iter_mut()
            .filter(|s| s.step > ff && s.status == Status::Unknown)
        {
            s.blocked_by = Some(ff);
        }
    }
    Verdict {
        mode,
        first_failed_step: first_fail,
        steps,
        backends,
    }
}

fn drop_advice(reasons: &str) -> String {
    if reasons.contains("NETFILTER_DROP") {
        "the LB host's own firewall (nftables/iptables) drops them: list the rules (nft list ruleset) and allow the VIP".to_owned()
    } else if reasons.contains("RPFILTER") {
        "reverse-path filtering drops them: the LB has no route back to the client through that interface (check rp_filter and routes)".to_owned()
    } else if reasons.contains("LISTEN_OVERFLOW") || reasons.contains("BACKLOG") {
        "the listening socket's accept queue is full: the LB software does not accept fast enough"
            .to_owned()
    } else {
        format!(
            "the kernel drops them ({reasons}): look the reason up in include/net/dropreason-core.h"
        )
    }
}

fn judge_handling(f: &Facts<'_>, live: &[&&Flow], mode: Mode) -> StepVerdict {
    let ev = f.events;
    if live.is_empty() {
        return step(
            2,
            Status::Unknown,
            "no client connection reached the LB's stack: nothing to judge".to_owned(),
            None,
            Vec::new(),
        );
    }
    let kernel_refused: Vec<&&&Flow> = live
        .iter()
        .filter(|fl| fl.kernel_refused(ev, f.reasons))
        .collect();
    let unanswered: Vec<&&&Flow> = live
        .iter()
        .filter(|fl| !fl.answered() && !fl.l4() && fl.lb_rsts.is_empty())
        .collect();
    let served = live.len() - kernel_refused.len() - unanswered.len();
    let local = f
        .vip_probe
        .and_then(|p| p.http_status)
        .map(|s| format!("; the LB host's own request to the VIP got HTTP {s}"))
        .unwrap_or_default();
    if served == 0 {
        let mut evid: Vec<usize> = live.iter().take(3).flat_map(|fl| fl.evidence()).collect();
        evid.sort_unstable();
        let what = if !kernel_refused.is_empty() {
            format!(
                "the LB host's kernel answers SYNs to {} with RST (no socket listens there, drop NO_SOCKET)",
                f.vip
            )
        } else {
            format!(
                "SYNs to {} get no answer and are not forwarded to any backend",
                f.vip
            )
        };
        return step(
            2,
            Status::Fail,
            format!("nothing serves the VIP: {what}"),
            Some("check that the LB service is running and bound to the VIP (ss -ltn), or that its NAT rules match the VIP".to_owned()),
            evid,
        );
    }
    // What it does with the connections it accepted.
    let mut hang = Vec::new();
    let mut rst_after_req = Vec::new();
    let mut rst_immediate = Vec::new();
    let mut closed = 0;
    let mut closed_empty = Vec::new();
    for fl in live.iter().filter(|fl| fl.answered() || fl.l4()) {
        if fl.client_gave_up(ev) {
            hang.push(fl);
        } else if let Some(&r) = fl.lb_rsts.first() {
            if fl.client_sent_request(ev) || ev[r].ack.wrapping_sub(fl.isn.unwrap_or(0)) > 1 {
                rst_after_req.push(fl);
            } else {
                rst_immediate.push(fl);
            }
        } else if fl.server_sent_data(ev) {
            closed += 1;
        } else if !fl.lb_fins.is_empty() {
            closed_empty.push(fl);
        } else if fl.client_sent_request(ev) && fl.client_got_syn_ack(ev) {
            hang.push(fl);
        }
    }
    let mode_s = match mode {
        Mode::L4 => "Layer 4: the client's SYN is forwarded to a backend with its ISN (NAT)",
        Mode::L7 => "Layer 7: the LB completes the handshake itself before any backend connection",
        Mode::Unknown => "mode unknown",
    };
    let mut evid: Vec<usize> = live.iter().take(2).flat_map(|fl| fl.evidence()).collect();
    let mut extra = Vec::new();
    if !rst_after_req.is_empty() {
        extra.push(format!(
            "{} connection(s) reset by the LB after the request",
            rst_after_req.len()
        ));
        evid.extend(
            rst_after_req
                .iter()
                .flat_map(|fl| fl.lb_rsts.iter().copied()),
        );
    }
    if !rst_immediate.is_empty() {
        extra.push(if mode == Mode::L4 {
            format!(
                "{} reset before any data (at Layer 4, the backend refusing)",
                rst_immediate.len()
            )
        } else {
            format!("{} reset right after the handshake", rst_immediate.len())
        });
        evid.extend(
            rst_immediate
                .iter()
                .flat_map(|fl| fl.lb_rsts.iter().copied()),
        );
    }
    if !closed_empty.is_empty() {
        extra.push(format!(
            "{} closed by the LB without a response",
            closed_empty.len()
        ));
        evid.extend(
            closed_empty
                .iter()
                .flat_map(|fl| fl.lb_fins.iter().copied()),
        );
    }
    if closed > 0 {
        extra.push(format!("{closed} answered and closed"));
    }
    if !kernel_refused.is_empty() {
        extra.push(format!(
            "{} refused by the kernel (NO_SOCKET)",
            kernel_refused.len()
        ));
    }
    if !unanswered.is_empty() {
        extra.push(format!("{} unanswered", unanswered.len()));
    }
    evid.sort_unstable();
    evid.dedup();
    if !hang.is_empty() {
        evid.extend(hang.iter().flat_map(|fl| fl.evidence()));
        evid.sort_unstable();
        evid.dedup();
        return step(
            2,
            Status::Warn,
            format!(
                "{mode_s}; {} connection(s) hang: the LB accepted the request and sent nothing back ({}){local}",
                hang.len(),
                extra.join(", ")
            ),
            Some("the LB is waiting for a backend: see step 3, and the LB's timeouts".to_owned()),
            evid,
        );
    }
    step(
        2,
        Status::Pass,
        format!(
            "{mode_s}; of {} connection(s): {}{local}",
            live.len(),
            if extra.is_empty() {
                "served".to_owned()
            } else {
                extra.join(", ")
            }
        ),
        None,
        evid,
    )
}

fn judge_backend(
    f: &Facts<'_>,
    bi: usize,
    b: &Endpoint,
    probe_events: &[Vec<usize>],
) -> BackendVerdict {
    let addr = SocketAddr::new(b.addr, b.port.unwrap_or(0));
    let Some(p) = f.probes.get(bi) else {
        return BackendVerdict {
            addr,
            finding: "not probed".to_owned(),
            reachable: false,
            evidence: Vec::new(),
        };
    };
    let evid = probe_events.get(bi).cloned().unwrap_or_default();
    let ev = f.events;
    let syns_out = evid
        .iter()
        .filter(|&&i| {
            matches!(ev[i].detail, Detail::Packet)
                && is(&ev[i], SYN, ACK)
                && ev[i].dir == Some(Dir::Out)
        })
        .count();
    let drops: Vec<usize> = evid
        .iter()
        .copied()
        .filter(|&i| matches!(ev[i].detail, Detail::Drop { .. }))
        .collect();
    let icmp: Vec<usize> = evid
        .iter()
        .copied()
        .filter(|&i| matches!(ev[i].detail, Detail::Icmp { .. }))
        .collect();
    let reasons = count_reasons(f, &drops);
    let finding = match p.tcp {
        TcpResult::Connected => match p.http_status {
            Some(s) => format!("connected, HTTP {s}"),
            None => "connected".to_owned(),
        },
        TcpResult::Refused => {
            "refused: nothing listening (the backend answered the SYN with RST)".to_owned()
        }
        TcpResult::Unreachable | TcpResult::Timeout => {
            let icmp_what = icmp.first().and_then(|&i| match &ev[i].detail {
                Detail::Icmp {
                    outer_src,
                    icmp_type,
                    icmp_code,
                    ..
                } => Some(format!(
                    "{} (ICMP from {outer_src})",
                    crate::event::icmp_what(outer_src.is_ipv6(), *icmp_type, *icmp_code)
                )),
                _ => None,
            });
            if reasons.contains("NEIGH_FAILED") || reasons.contains("NEIGH_QUEUEFULL") {
                format!(
                    "host down: ARP/neighbour resolution for {} failed ({reasons})",
                    b.addr
                )
            } else if reasons.contains("NOROUTES")
                || p.why.as_deref().is_some_and(|w| w.contains("ENETUNREACH"))
            {
                format!(
                    "no route from the LB to {}{}",
                    b.addr,
                    if reasons.is_empty() {
                        String::new()
                    } else {
                        format!(" ({reasons})")
                    }
                )
            } else if let Some(w) = icmp_what {
                format!("unreachable: {w}")
            } else if b.addr.is_ipv6() && syns_out == 0 && reasons.starts_with("NOT_SPECIFIED") {
                // IPv6 neighbour discovery failures free the queued SYN without a reason
                // (IPv4 says NEIGH_FAILED): no SYN ever left the LB.
                format!(
                    "host down: neighbour discovery for {} failed (no SYN left the LB; the kernel drops the queued SYN as {reasons})",
                    b.addr
                )
            } else if !drops.is_empty() {
                format!("the LB host drops its own SYNs ({reasons})")
            } else if p.tcp == TcpResult::Timeout && syns_out > 0 {
                format!(
                    "filtered: {syns_out} SYN(s) left the LB, nothing came back (a firewall drops them, or the host is down behind a router)"
                )
            } else if p.tcp == TcpResult::Timeout {
                "timeout: no SYN was seen leaving the LB".to_owned()
            } else {
                format!("unreachable ({})", p.why.clone().unwrap_or_default())
            }
        }
        TcpResult::Error => format!("probe error: {}", p.why.clone().unwrap_or_default()),
    };
    BackendVerdict {
        addr,
        finding,
        reachable: p.tcp == TcpResult::Connected,
        evidence: evid,
    }
}

fn judge_return(f: &Facts<'_>, live: &[&&Flow]) -> StepVerdict {
    let ev = f.events;
    // Backend replies bypassing the LB: forwarded SYNs that no SYN-ACK answers through the LB,
    // while the same backend answers the LB's own probe.
    // Forwarded SYNs that nothing answered through the LB: no SYN-ACK, no RST (a backend's RST
    // did come back), not dropped on the way (step 3's business).
    let bypass: Vec<&&&Flow> = live
        .iter()
        .filter(|fl| {
            fl.l4()
                && fl.backend_syn_acks.is_empty()
                && !fl.answered()
                && fl.lb_rsts.is_empty()
                && fl.forward_drops.is_empty()
        })
        .collect();
    let answers_probe = |d: &SocketAddr| {
        f.backends
            .iter()
            .position(|b| b.matches(d))
            .and_then(|bi| f.probes.get(bi))
            .is_some_and(|p| p.tcp == TcpResult::Connected)
    };
    // Those whose backend answers the LB's own probe: its replies to clients go around the LB.
    let around: Vec<&&&&Flow> = bypass
        .iter()
        .filter(|fl| {
            fl.forwarded
                .first()
                .is_some_and(|&i| answers_probe(&ev[i].dst))
        })
        .collect();
    if !around.is_empty() {
        let mut to: Vec<String> = around
            .iter()
            .filter_map(|fl| fl.forwarded.first().map(|&i| ev[i].dst.to_string()))
            .collect();
        to.sort();
        to.dedup();
        let mut evid: Vec<usize> = around.iter().take(3).flat_map(|fl| fl.evidence()).collect();
        evid.sort_unstable();
        return step(
            4,
            Status::Fail,
            format!(
                "backend replies do not come back through the LB: {} client SYN(s) forwarded to {} got no SYN-ACK through the LB, while the backend answers the LB's own probe: its replies bypass the LB",
                around.len(),
                to.join(", ")
            ),
            Some(
                "check the backends' default gateway (it must be the LB), or enable SNAT on the LB"
                    .to_owned(),
            ),
            evid,
        );
    }
    let answered: Vec<&&&Flow> = live.iter().filter(|fl| fl.answered()).collect();
    if answered.is_empty() {
        return step(
            4,
            Status::Unknown,
            "no SYN-ACK left the LB towards a client: nothing to judge".to_owned(),
            None,
            Vec::new(),
        );
    }
    let lost: Vec<&&&Flow> = answered
        .iter()
        .copied()
        .filter(|fl| fl.syn_after_syn_ack(ev) && !fl.client_got_syn_ack(ev))
        .collect();
    let proven = answered
        .iter()
        .filter(|fl| fl.client_got_syn_ack(ev))
        .count();
    if !lost.is_empty() && proven == 0 {
        let mut evid: Vec<usize> = lost.iter().take(3).flat_map(|fl| fl.evidence()).collect();
        evid.sort_unstable();
        return step(
            4,
            Status::Fail,
            format!(
                "the LB's replies do not reach the client: the LB sent SYN-ACKs, and {} client(s) kept retransmitting their SYN",
                lost.len()
            ),
            Some("the return path from the LB to the client drops them: check routing and firewalls between the LB and the client (asymmetric routing?)".to_owned()),
            evid,
        );
    }
    if proven == 0 {
        return step(
            4,
            Status::Unknown,
            format!(
                "{} SYN-ACK(s) left the LB; no client acknowledgement seen yet (connections still open?)",
                answered.len()
            ),
            Some("let the client finish its request, or observe longer (--observe)".to_owned()),
            answered
                .iter()
                .take(2)
                .flat_map(|fl| fl.syn_acks.iter().copied())
                .collect(),
        );
    }
    let l4 = answered
        .iter()
        .filter(|fl| fl.l4() && !fl.backend_syn_acks.is_empty())
        .count();
    let mut evid: Vec<usize> = answered
        .iter()
        .filter(|fl| fl.client_got_syn_ack(ev))
        .take(2)
        .flat_map(|fl| {
            let mut v = fl.syn_acks.clone();
            v.extend(fl.backend_syn_acks.iter().copied());
            v.extend(fl.client_closes.iter().take(1).copied());
            v
        })
        .collect();
    evid.sort_unstable();
    let partial = if lost.is_empty() {
        String::new()
    } else {
        format!(
            "; but {} client(s) retransmitted their SYN after the SYN-ACK",
            lost.len()
        )
    };
    step(
        4,
        if lost.is_empty() {
            Status::Pass
        } else {
            Status::Warn
        },
        format!(
            "{} of {} client connection(s) acknowledged the SYN-ACK{}{partial}",
            proven,
            answered.len(),
            if l4 > 0 {
                format!(
                    "; backend SYN-ACKs came back through the LB ({})",
                    pct(l4, answered.len())
                )
            } else {
                String::new()
            }
        ),
        None,
        evid,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{drop, pkt, sa};

    const VIP: &str = "10.10.2.10:80";
    const CLIENT: &str = "10.10.1.2:40000";
    const BE1: &str = "10.10.3.11:8080";
    const BE2: &str = "10.10.3.12:8080";

    fn reasons() -> DropReasons {
        DropReasons::from_pairs(&[
            (2, "NO_SOCKET"),
            (6, "NETFILTER_DROP"),
            (60, "NEIGH_FAILED"),
        ])
    }

    fn probe(target: &str, port: u16, tcp: TcpResult) -> ProbeFacts {
        ProbeFacts {
            target: sa(target),
            local_port: Some(port),
            tcp,
            why: None,
            http_status: (tcp == TcpResult::Connected).then_some(200),
        }
    }

    fn run(events: &[KernelEvent], probes: &[ProbeFacts]) -> Verdict {
        let backends: Vec<Endpoint> = [BE1, BE2].iter().map(|b| b.parse().unwrap()).collect();
        let r = reasons();
        judge(&Facts {
            vip: VIP.parse().unwrap(),
            backends: &backends,
            client: None,
            events,
            probes,
            vip_probe: None,
            window_secs: 10.0,
            reasons: &r,
        })
    }

    fn statuses(v: &Verdict) -> Vec<Status> {
        v.steps.iter().map(|s| s.status).collect()
    }

    fn healthy_probes() -> Vec<ProbeFacts> {
        vec![
            probe(BE1, 50001, TcpResult::Connected),
            probe(BE2, 50002, TcpResult::Connected),
        ]
    }

    fn probe_packets() -> Vec<KernelEvent> {
        vec![
            pkt(1, Dir::Out, "10.10.3.1:50001", BE1, SYN, 500, 0),
            pkt(2, Dir::In, BE1, "10.10.3.1:50001", SYN | ACK, 900, 501),
        ]
    }

    /// A Layer 7 proxy: handshake with the client, then its own backend connection.
    fn l7_conn(t: u64, client: &str, cisn: u32) -> Vec<KernelEvent> {
        vec![
            pkt(t, Dir::In, client, VIP, SYN, cisn, 0),
            pkt(t + 1, Dir::Out, VIP, client, SYN | ACK, 7000, cisn + 1),
            pkt(t + 2, Dir::Out, "10.10.3.1:41000", BE1, SYN, 123, 0),
            pkt(t + 3, Dir::In, BE1, "10.10.3.1:41000", SYN | ACK, 456, 124),
            pkt(
                t + 5,
                Dir::Out,
                VIP,
                client,
                FIN | ACK,
                7000 + 300,
                cisn + 80,
            ),
            pkt(
                t + 6,
                Dir::In,
                client,
                VIP,
                FIN | ACK,
                cisn + 80,
                7000 + 301,
            ),
        ]
    }

    #[test]
    fn healthy_l7_passes_every_step() {
        let mut ev = probe_packets();
        ev.extend(l7_conn(10, CLIENT, 1000));
        let v = run(&ev, &healthy_probes());
        assert_eq!(v.mode, Mode::L7);
        assert_eq!(statuses(&v), vec![Status::Pass; 4], "{v:#?}");
        assert_eq!(v.first_failed_step, None);
        // The probe's own packets are not client evidence and are tied to the probe.
        assert_eq!(v.backends[0].evidence, vec![0, 1]);
    }

    #[test]
    fn healthy_l4_nat_keeps_the_isn() {
        let mut ev = probe_packets();
        ev.extend([
            pkt(10, Dir::In, CLIENT, VIP, SYN, 1000, 0),
            pkt(11, Dir::Out, CLIENT, BE2, SYN, 1000, 0),
            pkt(12, Dir::In, BE2, CLIENT, SYN | ACK, 9000, 1001),
            pkt(13, Dir::Out, VIP, CLIENT, SYN | ACK, 9000, 1001),
            pkt(20, Dir::In, CLIENT, VIP, FIN | ACK, 1080, 9300),
        ]);
        let v = run(&ev, &healthy_probes());
        assert_eq!(v.mode, Mode::L4);
        assert_eq!(statuses(&v), vec![Status::Pass; 4], "{v:#?}");
        assert!(
            v.steps[3].summary.contains("came back through the LB"),
            "{}",
            v.steps[3].summary
        );
    }

    #[test]
    fn no_syn_fails_step_one_as_upstream() {
        let v = run(&probe_packets(), &healthy_probes());
        assert_eq!(v.steps[0].status, Status::Fail);
        assert!(v.steps[0].summary.contains("upstream"));
        assert_eq!(v.first_failed_step, Some(1));
        assert_eq!(v.steps[1].status, Status::Unknown);
        assert_eq!(v.steps[1].blocked_by, Some(1));
        // Step 3 has its own evidence and is still judged.
        assert_eq!(v.steps[2].status, Status::Pass);
    }

    #[test]
    fn firewall_drop_on_the_lb_fails_step_one_with_the_reason() {
        let mut ev = probe_packets();
        for (t, _) in [(10, 0), (1010, 1), (3010, 2)] {
            ev.push(pkt(t, Dir::In, CLIENT, VIP, SYN, 1000, 0));
            ev.push(drop(t, CLIENT, VIP, SYN, 1000, 6));
        }
        let v = run(&ev, &healthy_probes());
        assert_eq!(v.steps[0].status, Status::Fail);
        assert!(
            v.steps[0].summary.contains("NETFILTER_DROP x3"),
            "{}",
            v.steps[0].summary
        );
        assert!(v.steps[0].next.as_deref().unwrap().contains("firewall"));
        assert_eq!(v.first_failed_step, Some(1));
    }

    #[test]
    fn kernel_rst_means_nothing_serves_the_vip() {
        let ev = vec![
            pkt(10, Dir::In, CLIENT, VIP, SYN, 1000, 0),
            drop(10, CLIENT, VIP, SYN, 1000, 2),
            pkt(10, Dir::Out, VIP, CLIENT, RST | ACK, 0, 1001),
        ];
        let v = run(&ev, &healthy_probes());
        assert_eq!(
            v.steps[0].status,
            Status::Pass,
            "NO_SOCKET is step 2's business"
        );
        assert_eq!(v.steps[1].status, Status::Fail);
        assert!(
            v.steps[1].summary.contains("NO_SOCKET"),
            "{}",
            v.steps[1].summary
        );
        assert_eq!(v.first_failed_step, Some(2));
    }

    #[test]
    fn rst_after_the_request_is_reported() {
        let ev = vec![
            pkt(10, Dir::In, CLIENT, VIP, SYN, 1000, 0),
            pkt(11, Dir::Out, VIP, CLIENT, SYN | ACK, 7000, 1001),
            pkt(20, Dir::Out, VIP, CLIENT, RST | ACK, 7001, 1078),
        ];
        let v = run(&ev, &healthy_probes());
        assert_eq!(v.steps[1].status, Status::Pass);
        assert!(
            v.steps[1]
                .summary
                .contains("reset by the LB after the request"),
            "{}",
            v.steps[1].summary
        );
    }

    #[test]
    fn a_client_giving_up_before_a_late_answer_is_a_hang() {
        let ev = vec![
            pkt(10, Dir::In, CLIENT, VIP, SYN, 1000, 0),
            pkt(11, Dir::Out, VIP, CLIENT, SYN | ACK, 7000, 1001),
            // The client sent 77 bytes and gave up after 2 s with nothing received...
            pkt(2010, Dir::In, CLIENT, VIP, FIN | ACK, 1078, 7001),
            // ...and the LB's 503 came after that.
            pkt(3000, Dir::Out, VIP, CLIENT, FIN | ACK, 7200, 1079),
        ];
        let v = run(&ev, &healthy_probes());
        assert_eq!(v.steps[1].status, Status::Warn, "{v:#?}");
        assert!(v.steps[1].summary.contains("hang"));
    }

    #[test]
    fn a_request_never_answered_is_a_hang() {
        let ev = vec![
            pkt(10, Dir::In, CLIENT, VIP, SYN, 1000, 0),
            pkt(11, Dir::Out, VIP, CLIENT, SYN | ACK, 7000, 1001),
            // The client sent 77 bytes, got nothing (ack = LB ISN + 1) and gave up.
            pkt(5000, Dir::In, CLIENT, VIP, FIN | ACK, 1078, 7001),
        ];
        let v = run(&ev, &healthy_probes());
        assert_eq!(v.steps[1].status, Status::Warn, "{v:#?}");
        assert!(v.steps[1].summary.contains("hang"));
    }

    #[test]
    fn backend_failures_are_explained() {
        let ev = vec![
            pkt(1, Dir::Out, "10.10.3.1:50001", BE1, SYN, 500, 0),
            pkt(1002, Dir::Out, "10.10.3.1:50001", BE1, SYN, 500, 0),
            drop(3000, "10.10.3.1:50002", BE2, SYN, 600, 60),
        ];
        let probes = vec![
            probe(BE1, 50001, TcpResult::Timeout),
            probe(BE2, 50002, TcpResult::Unreachable),
        ];
        let v = run(&ev, &probes);
        assert_eq!(v.steps[2].status, Status::Fail);
        assert!(
            v.steps[2].summary.starts_with("2 of 2"),
            "{}",
            v.steps[2].summary
        );
        assert!(
            v.backends[0].finding.starts_with("filtered: 2 SYN(s) left"),
            "{}",
            v.backends[0].finding
        );
        assert!(
            v.backends[1].finding.starts_with("host down"),
            "{}",
            v.backends[1].finding
        );
        let refused = run(
            &[],
            &[
                probe(BE1, 1, TcpResult::Refused),
                probe(BE2, 2, TcpResult::Connected),
            ],
        );
        assert!(refused.steps[2].summary.starts_with("1 of 2"));
        assert!(refused.backends[0].finding.contains("nothing listening"));
    }

    #[test]
    fn forwarded_syns_dropped_on_the_way_to_a_dead_backend_are_step_three() {
        let ev = vec![
            pkt(10, Dir::In, CLIENT, VIP, SYN, 1000, 0),
            drop(3010, CLIENT, BE1, SYN, 1000, 60),
        ];
        let v = run(
            &ev,
            &[
                probe(BE1, 1, TcpResult::Unreachable),
                probe(BE2, 2, TcpResult::Connected),
            ],
        );
        assert_eq!(v.mode, Mode::L4);
        assert_eq!(
            v.steps[0].status,
            Status::Pass,
            "not the client's problem: {v:#?}"
        );
        assert_eq!(v.steps[2].status, Status::Fail);
        assert!(
            v.steps[2].summary.contains("NEIGH_FAILED"),
            "{}",
            v.steps[2].summary
        );
        assert_eq!(v.first_failed_step, Some(3));
    }

    #[test]
    fn an_lb_fin_without_data_is_not_an_answer() {
        // HAProxy in tcp mode closing a connection it cannot relay: FIN at ISN + 1.
        let ev = vec![
            pkt(10, Dir::In, CLIENT, VIP, SYN, 1000, 0),
            pkt(11, Dir::Out, VIP, CLIENT, SYN | ACK, 7000, 1001),
            pkt(20, Dir::Out, VIP, CLIENT, FIN | ACK, 7001, 1001),
            pkt(21, Dir::In, CLIENT, VIP, FIN | ACK, 1001, 7002),
        ];
        let v = run(&ev, &healthy_probes());
        assert!(
            !v.steps[1].summary.contains("answered and closed"),
            "{}",
            v.steps[1].summary
        );
        assert!(
            v.steps[1]
                .summary
                .contains("1 closed by the LB without a response"),
            "{}",
            v.steps[1].summary
        );
        assert_eq!(
            v.steps[1].status,
            Status::Pass,
            "a close is the LB working, not a hang"
        );
    }

    #[test]
    fn backend_resets_do_not_make_step_four_unknown() {
        let mut ev = probe_packets();
        ev.extend([
            // Served through the LB.
            pkt(10, Dir::In, CLIENT, VIP, SYN, 1000, 0),
            pkt(11, Dir::Out, CLIENT, BE1, SYN, 1000, 0),
            pkt(12, Dir::In, BE1, CLIENT, SYN | ACK, 9000, 1001),
            pkt(13, Dir::Out, VIP, CLIENT, SYN | ACK, 9000, 1001),
            pkt(20, Dir::In, CLIENT, VIP, FIN | ACK, 1080, 9300),
            // Refused by be2; the RST comes back through the LB.
            pkt(30, Dir::In, "10.10.1.2:40001", VIP, SYN, 5000, 0),
            pkt(31, Dir::Out, "10.10.1.2:40001", BE2, SYN, 5000, 0),
            pkt(32, Dir::In, BE2, "10.10.1.2:40001", RST | ACK, 0, 5001),
            pkt(33, Dir::Out, VIP, "10.10.1.2:40001", RST | ACK, 0, 5001),
        ]);
        let v = run(
            &ev,
            &[
                probe(BE1, 50001, TcpResult::Connected),
                probe(BE2, 50002, TcpResult::Refused),
            ],
        );
        assert_eq!(v.steps[3].status, Status::Pass, "{v:#?}");
        assert_eq!(v.first_failed_step, Some(3));
    }

    #[test]
    fn asymmetric_return_fails_step_four() {
        let mut ev = probe_packets();
        ev.extend([
            pkt(10, Dir::In, CLIENT, VIP, SYN, 1000, 0),
            pkt(11, Dir::Out, CLIENT, BE1, SYN, 1000, 0),
            pkt(1010, Dir::In, CLIENT, VIP, SYN, 1000, 0),
            pkt(1011, Dir::Out, CLIENT, BE1, SYN, 1000, 0),
        ]);
        let v = run(&ev, &healthy_probes());
        assert_eq!(v.mode, Mode::L4);
        assert_eq!(v.steps[3].status, Status::Fail, "{v:#?}");
        assert!(v.steps[3].summary.contains("bypass"));
        assert_eq!(v.first_failed_step, Some(4));
    }

    #[test]
    fn syn_acks_lost_on_the_way_to_the_client_fail_step_four() {
        let mut ev = probe_packets();
        ev.extend([
            pkt(10, Dir::In, CLIENT, VIP, SYN, 1000, 0),
            pkt(11, Dir::Out, VIP, CLIENT, SYN | ACK, 7000, 1001),
            pkt(1010, Dir::In, CLIENT, VIP, SYN, 1000, 0),
            pkt(1011, Dir::Out, VIP, CLIENT, SYN | ACK, 7000, 1001),
        ]);
        let v = run(&ev, &healthy_probes());
        assert_eq!(v.steps[3].status, Status::Fail, "{v:#?}");
        assert!(v.steps[3].summary.contains("do not reach the client"));
    }

    #[test]
    fn client_filter_ignores_other_clients() {
        let backends: Vec<Endpoint> = vec![BE1.parse().unwrap()];
        let r = reasons();
        let ev = l7_conn(10, "10.10.1.99:5555", 1000);
        let v = judge(&Facts {
            vip: VIP.parse().unwrap(),
            backends: &backends,
            client: Some("10.10.1.2".parse().unwrap()),
            events: &ev,
            probes: &[probe(BE1, 50001, TcpResult::Connected)],
            vip_probe: None,
            window_secs: 10.0,
            reasons: &r,
        });
        assert_eq!(v.steps[0].status, Status::Fail);
        assert!(v.steps[0].summary.contains("client 10.10.1.2"));
    }
}
