//! Client connections to the VIP, each followed by its tuple ([`Flow`]), and the events of the
//! probes, sorted out of the kernel events once ([`classify`]). Every step judges from these.
//!
//! Linear in the number of events: flows are found by tuple and by ISN through hash maps, so a
//! busy VIP's thousands of client connections do not make the check quadratic.

use std::{collections::HashMap, fmt, net::SocketAddr};

use super::{Facts, ProbeFacts};
use crate::{
    checklist::{self, DropClass, acknowledges_syn, seq_past},
    event::{Detail, Dir, KernelEvent},
    kernel::btf::DropReasons,
};

/// One client connection to the VIP, followed by its tuple. The `Vec`s hold indices into
/// [`Facts::events`], in time order.
#[derive(Debug, Default)]
pub struct Flow {
    pub client: Option<SocketAddr>,
    /// The client's ISN (first SYN seen).
    pub isn: Option<u32>,
    pub syns: Vec<usize>,
    /// SYN-ACKs leaving the LB to the client.
    pub syn_acks: Vec<usize>,
    /// The ISN of the side that answered the client (the LB, or for L4 the backend).
    pub server_isn: Option<u32>,
    /// The client's SYN leaving towards a backend with the same ISN (L4).
    pub forwarded: Vec<usize>,
    /// The forwarded SYN left still addressed to the VIP: forwarded without NAT (routed to a
    /// backend that holds the VIP itself: ECMP, IPVS direct routing), so the IP header does not
    /// say which backend.
    pub forwarded_unchanged: bool,
    /// The backend's SYN-ACK to a forwarded SYN, seen arriving at the LB.
    pub backend_syn_acks: Vec<usize>,
    /// The client's SYN, already NATed towards a backend, dropped by the LB host on the way
    /// (e.g. NEIGH_FAILED: the backend is down). Proof of forwarding, and step 3's business.
    pub forward_drops: Vec<usize>,
    pub lb_rsts: Vec<usize>,
    pub lb_fins: Vec<usize>,
    pub client_closes: Vec<usize>,
    pub drops: Vec<usize>,
    pub icmp: Vec<usize>,
    /// Segments the LB host retransmitted to the client (Layer 7: the LB is the client's peer).
    pub retrans: Vec<usize>,
    /// Resets of the flow's tuple this host's TCP stack sent or accepted (the reset
    /// tracepoints): who made the RSTs ([`super::resets`]).
    pub resets: Vec<usize>,
}

impl Flow {
    /// The LB sent the client a SYN-ACK.
    pub fn answered(&self) -> bool {
        !self.syn_acks.is_empty()
    }

    /// Neither answered, nor forwarded, nor reset: the SYN got nothing back (a full accept queue
    /// drops it without a drop reason).
    pub fn unanswered(&self) -> bool {
        !self.answered() && !self.l4() && self.lb_rsts.is_empty()
    }

    /// The client's SYN was NATed and then dropped by the LB host: none of its SYNs left toward
    /// a backend.
    pub fn nat_dropped(&self) -> bool {
        self.forwarded.is_empty() && !self.forward_drops.is_empty()
    }

    /// The client's SYN was forwarded to a backend (NAT, or unchanged: see
    /// `forwarded_unchanged`).
    pub fn l4(&self) -> bool {
        !self.forwarded.is_empty() || !self.forward_drops.is_empty()
    }

    /// The client closed the connection with a FIN: it got the server's SYN-ACK and went on,
    /// whichever way the SYN-ACK reached it.
    pub fn client_finished(&self, events: &[KernelEvent]) -> bool {
        self.client_closes.iter().any(|&i| events[i].is_fin())
    }

    /// The client's SYN retransmitted after the LB sent its SYN-ACK.
    pub fn syn_after_syn_ack(&self, events: &[KernelEvent]) -> bool {
        let Some(&first) = self.syn_acks.first() else {
            return false;
        };
        self.syns
            .iter()
            .any(|&i| events[i].ts_ns > events[first].ts_ns)
    }

    /// The client acknowledged the server's ISN: the SYN-ACK reached it.
    pub fn client_got_syn_ack(&self, events: &[KernelEvent]) -> bool {
        let Some(sisn) = self.server_isn else {
            return false;
        };
        self.client_closes.iter().any(|&i| {
            let e = &events[i];
            e.has_ack() && acknowledges_syn(e.ack, sisn)
        })
    }

    /// A client FIN or RST past its ISN + 1: it sent a request.
    pub fn client_sent_request(&self, events: &[KernelEvent]) -> bool {
        let Some(isn) = self.isn else { return false };
        self.client_closes
            .iter()
            .any(|&i| seq_past(events[i].seq, isn))
    }

    /// The answering side sent data. Its FIN carries the exact count (seq = ISN + 1 + bytes);
    /// without one, the client's acknowledgement tells (ack = ISN + 1 + bytes, + 1 once the
    /// answering side's FIN arrived, which this branch excludes). A retransmission of data by
    /// the LB host proves it too, whether or not the data arrived (step 4's business).
    pub fn server_sent_data(&self, events: &[KernelEvent]) -> bool {
        let Some(sisn) = self.server_isn else {
            return false;
        };
        if self.lb_retransmitted_data(events) {
            return true;
        }
        let past = |i: &usize| seq_past(events[*i].seq, sisn) || events[*i].payload_len > 0;
        if !self.lb_fins.is_empty() {
            return self.lb_fins.iter().any(past);
        }
        self.lb_rsts.iter().any(past)
            || self
                .client_closes
                .iter()
                .any(|&i| seq_past(events[i].ack, sisn))
    }

    /// The LB host retransmitted data to the client: it answered, the answer was not
    /// acknowledged.
    pub fn lb_retransmitted_data(&self, events: &[KernelEvent]) -> bool {
        self.retrans.iter().any(|&i| events[i].payload_len > 0)
    }

    /// The client closed first, after sending a request and before receiving a byte, and gave
    /// up waiting (a hang), whatever the LB did after that.
    ///
    /// A client that gave up has closed its socket: its first close is a RST, or its kernel
    /// resets whatever the LB sends after its FIN. A client that only half-closed (a FIN right
    /// after its request, as `nc -N` sends) still reads: an LB FIN after the client's FIN with
    /// no client RST is the LB answering (or closing), not hanging. A FIN the LB never follows
    /// stays a hang: the LB sent nothing.
    ///
    /// Not when the LB retransmitted data to it: then the LB answered and the answer got lost on
    /// the way (step 4).
    pub fn client_gave_up(&self, events: &[KernelEvent]) -> bool {
        if self.lb_retransmitted_data(events) {
            return false;
        }
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
        if lb_closed_before || c.ack != sisn.wrapping_add(1) || !seq_past(c.seq, isn) {
            return false;
        }
        if c.is_rst() {
            return true;
        }
        let after = |i: &&usize| events[**i].ts_ns > c.ts_ns;
        let lb_fin_after = self.lb_fins.iter().any(|i| after(&i));
        let client_rst_after = self
            .client_closes
            .iter()
            .filter(after)
            .any(|&i| events[i].is_rst());
        !lb_fin_after || client_rst_after
    }

    /// The LB host's kernel refused the connection: nothing listens on the VIP.
    pub fn kernel_refused(&self, events: &[KernelEvent], reasons: &DropReasons) -> bool {
        checklist::kernel_refused(
            !self.lb_rsts.is_empty(),
            self.answered(),
            self.drops
                .iter()
                .any(|&i| drop_class(&events[i], reasons) == Some(DropClass::NoSocket)),
        )
    }

    /// The SYN was dropped by the LB host's stack (not for want of a listener), and neither
    /// answered nor forwarded: step 1's failure.
    pub fn stack_drop(&self, events: &[KernelEvent], reasons: &DropReasons) -> bool {
        self.drops.iter().any(|&i| {
            let class = drop_class(&events[i], reasons);
            class.is_some_and(|c| c != DropClass::NoSocket) && events[i].has_syn()
        }) && !self.answered()
            && !self.l4()
    }

    /// Every event of the flow, in time order.
    pub fn evidence(&self) -> Vec<usize> {
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
            &self.resets,
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

/// The evidence of some flows (`each` picks which events of one), sorted.
pub fn evidence_of(flows: &[&Flow], each: impl Fn(&Flow) -> Vec<usize>) -> Vec<usize> {
    let mut v: Vec<usize> = flows.iter().flat_map(|fl| each(fl)).collect();
    v.sort_unstable();
    v
}

/// The class of a drop event's reason; `None` for other events.
pub fn drop_class(e: &KernelEvent, reasons: &DropReasons) -> Option<DropClass> {
    match e.detail {
        Detail::Drop { reason } => Some(DropClass::of(&reasons.name(reason))),
        _ => None,
    }
}

/// Drop events counted by reason name, in order of first appearance. Displays as
/// `NETFILTER_DROP x3, NO_SOCKET x1`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReasonCounts(pub Vec<(String, usize)>);

impl ReasonCounts {
    /// Counts the drop events among `idx` (others count under an empty name, as before).
    pub fn of(events: &[KernelEvent], idx: &[usize], reasons: &DropReasons) -> Self {
        let mut by: Vec<(String, usize)> = Vec::new();
        for &i in idx {
            let n = match events[i].detail {
                Detail::Drop { reason } => reasons.name(reason),
                _ => String::new(),
            };
            match by.iter_mut().find(|(r, _)| *r == n) {
                Some((_, c)) => *c += 1,
                None => by.push((n, 1)),
            }
        }
        Self(by)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Some reason is of `class`.
    pub fn any(&self, class: DropClass) -> bool {
        self.0.iter().any(|(r, _)| DropClass::of(r) == class)
    }

    /// The first reason counted is of `class`.
    pub fn first_is(&self, class: DropClass) -> bool {
        self.0
            .first()
            .is_some_and(|(r, _)| DropClass::of(r) == class)
    }
}

impl fmt::Display for ReasonCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (r, c)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{r} x{c}")?;
        }
        Ok(())
    }
}

fn probe_of(probes: &[&ProbeFacts], e: &KernelEvent) -> Option<usize> {
    // For an ICMP error the event's tuple is already the quoted one.
    let (s, d) = (e.src, e.dst);
    probes.iter().position(|p| {
        p.local_port
            .iter()
            .chain(&p.ports)
            .any(|&lp| (d == p.target && s.port() == lp) || (s == p.target && d.port() == lp))
    })
}

/// The kernel events sorted into client flows and probe events.
pub struct Classified {
    pub flows: Vec<Flow>,
    /// Events of each probe, by probe index (backend probes, then the VIP probe).
    pub probe_events: Vec<Vec<usize>>,
}

/// Sorts every event once: a probe's, a client flow's (by tuple), or the backend leg of a flow
/// (by the client's ISN).
pub fn classify(f: &Facts<'_>) -> Classified {
    let mut all_probes: Vec<&ProbeFacts> = f.probes.iter().collect();
    all_probes.extend(f.vip_probe);
    let mut probe_events = vec![Vec::new(); all_probes.len()];
    let mut flows: Vec<Flow> = Vec::new();
    let mut by_client: HashMap<SocketAddr, usize> = HashMap::new();
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
        let idx = *by_client.entry(client).or_insert_with(|| {
            flows.push(Flow {
                client: Some(client),
                ..Flow::default()
            });
            flows.len() - 1
        });
        let fl = &mut flows[idx];
        match (&e.detail, to_vip) {
            (Detail::Drop { .. }, _) => fl.drops.push(i),
            (Detail::Icmp { .. }, _) => fl.icmp.push(i),
            (Detail::Retrans, false) => fl.retrans.push(i),
            // The LB host as the client of its own VIP: the probes cover it. A client's data
            // seen again (data-path mode) is the client's business, not the return path's.
            (Detail::Retrans, true) => {}
            (Detail::Data(_), _) => {}
            (Detail::Reset(_), _) => fl.resets.push(i),
            // The client's packet leaving the LB host still addressed to the VIP: forwarded
            // without NAT (an ECMP / direct-routing LB, IPVS DR). Its SYN is the backend leg;
            // the rest is the client's packet seen a second time.
            (Detail::Packet | Detail::Tunnel(_), true) if e.dir == Some(Dir::Out) => {
                if e.is_syn() {
                    fl.forwarded.push(i);
                    fl.forwarded_unchanged = true;
                }
            }
            // Tunnelled toward the LB host (an L4 tier in front of it): the decapsulated packet
            // is the one judged, where lbtrace sees it.
            (Detail::Tunnel(_), _) => {}
            (Detail::Packet, true) => {
                if e.is_syn() {
                    fl.isn.get_or_insert(e.seq);
                    fl.syns.push(i);
                } else if e.is_fin() || e.is_rst() {
                    fl.client_closes.push(i);
                }
            }
            // A packet from the VIP arriving at the LB host: a backend's, on its way back to the
            // client through the LB (forwarded without NAT); seen again when it leaves.
            (Detail::Packet, false) if e.dir == Some(Dir::In) => {
                if e.is_syn_ack() {
                    fl.server_isn.get_or_insert(e.seq);
                    fl.backend_syn_acks.push(i);
                }
            }
            (Detail::Packet, false) => {
                if e.is_syn_ack() {
                    fl.server_isn.get_or_insert(e.seq);
                    fl.syn_acks.push(i);
                } else if e.is_rst() {
                    fl.lb_rsts.push(i);
                } else if e.is_fin() {
                    fl.lb_fins.push(i);
                }
            }
        }
    }

    // The backend leg: a SYN leaving towards a backend with a client's ISN is that client's SYN,
    // forwarded (NAT keeps the ISN, with or without SNAT); the backend's SYN-ACK acknowledges it.
    // Of flows sharing an ISN, the first one takes it.
    let mut by_isn: HashMap<u32, usize> = HashMap::new();
    for (idx, fl) in flows.iter().enumerate() {
        if let Some(isn) = fl.isn {
            by_isn.entry(isn).or_insert(idx);
        }
    }
    for &i in &backend_events {
        let e = &f.events[i];
        if matches!(e.detail, Detail::Icmp { .. }) {
            continue;
        }
        if matches!(e.detail, Detail::Packet)
            && e.is_syn()
            && is_backend(&e.dst)
            && e.dir == Some(Dir::Out)
        {
            // Otherwise the LB's own backend connection (Layer 7): the probes' verdicts cover it.
            if let Some(&fl) = by_isn.get(&e.seq) {
                flows[fl].forwarded.push(i);
            }
        } else if matches!(e.detail, Detail::Drop { .. }) && e.is_syn() {
            // A forwarded client SYN dropped on its way to a backend (e.g. in FORWARD).
            if let Some(&fl) = by_isn.get(&e.seq) {
                flows[fl].forward_drops.push(i);
            }
        } else if matches!(e.detail, Detail::Packet)
            && e.is_syn_ack()
            && is_backend(&e.src)
            && let Some(&fl) = by_isn.get(&e.ack.wrapping_sub(1))
        {
            flows[fl].backend_syn_acks.push(i);
        }
    }
    Classified {
        flows,
        probe_events,
    }
}
