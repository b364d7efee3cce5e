//! The flight recorder of `lbtrace watch`: every client connection to a VIP becomes a timeline
//! (its client leg), joined with its backend leg, kept in bounded memory.
//!
//! Pure and synchronous: events in (time passed in with them), findings out. The join: for Layer 4
//! the client's SYN leaves towards a backend with its initial sequence number (ISN) intact, with
//! or without SNAT, so the backend leg is the flow carrying that ISN; for Layer 7 the LB's own
//! connection to a backend cannot be tied to a client from headers alone, so it is joined to the
//! most recent client connection without a backend leg and marked `inferred`.
//!
//! Longer than 600 lines: one state machine, whose per-event rules update the client
//! connections, the backend legs joined to them and the LB's own connections together; its unit
//! tests are in `tests.rs`.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
};

use crate::{
    check::verdict::{
        ProbeFacts, TcpResult,
        resets::{self, RstMaker},
        return_path::STALL_RETRANSMISSIONS,
        unserved::{self, Answered},
    },
    checklist::{DropClass, Step, kernel_refused, seq_past},
    endpoint::Endpoint,
    event::{Detail, Dir, KernelEvent},
    kernel::{btf::DropReasons, loader::ResetMode},
};

/// Events kept per leg; later ones are counted in `truncated`.
pub const MAX_LEG_EVENTS: usize = 12;
/// A client SYN that neither a SYN-ACK nor a forward answers within this is "unanswered".
pub const ANSWER_TIMEOUT_NS: u64 = 3_000_000_000;
/// A backend SYN with no SYN-ACK within this is a backend timeout.
pub const BACKEND_TIMEOUT_NS: u64 = 3_000_000_000;
/// An L7 backend connection is joined to a client connection at most this long after it.
pub const L7_JOIN_NS: u64 = 2_000_000_000;
/// The LB's own backend connections with no client connection joined (health checks, pools)
/// kept at once; the oldest is forgotten first.
pub const MAX_OWN_LEGS: usize = 4096;
/// Findings on the LB's own connections not yet taken by [`Recorder::take_own`].
pub const MAX_OWN_FOUND: usize = 1024;
/// An own backend connection is forgotten this long after its first SYN.
pub const OWN_LEG_TTL_NS: u64 = 30_000_000_000;
/// The local ports of the LB host's own probes remembered at once; the oldest is forgotten first.
pub const MAX_PROBE_PORTS: usize = 1024;
/// A probe's packets (its FIN, a late RST) are told apart by its local port this long after it.
pub const PROBE_PORT_TTL_NS: u64 = 60_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Join {
    /// The forwarded SYN carried the client's ISN (Layer 4).
    Isn,
    /// The LB's own backend connection, matched by time (Layer 7).
    Inferred,
}

/// What went wrong with a connection, tied to a checklist step.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Finding {
    /// Step 1: the client's SYNs got no SYN-ACK and were not forwarded.
    SynUnanswered,
    /// Step 1: the LB host dropped the client's SYN.
    SynDropped { reason: String },
    /// Step 2: the LB reset the client (after the request, or right after the handshake).
    LbReset {
        after_request: bool,
        /// Who made the RST, when the reset tracepoints tied it to this host's TCP stack
        /// (`check`'s `rst_made_by.by`: `socket_abort`, `no_socket`, ...); absent otherwise
        /// (never a claim that the stack did not make it: the two events may arrive in either
        /// order).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    /// Step 2: the kernel answered the client's SYN with RST and freed it as `NO_SOCKET`:
    /// nothing listens on the VIP.
    NoListener,
    /// Step 2: the LB answers the LB host's own requests to the VIP with errors (or drops or
    /// hangs them) while every backend answers its probes fine: the LB's own doing.
    LbServesErrors { vip: SocketAddr, what: String },
    /// Step 3: the backend refused (RST to the SYN).
    BackendRefused { backend: SocketAddr },
    /// Step 3: the backend never answered the SYN.
    BackendTimeout { backend: SocketAddr },
    /// Step 3: an ICMP error about the backend connection, a drop of its SYN for no
    /// neighbour or no route, or the LB host's probe unable to connect.
    BackendUnreachable { backend: SocketAddr, what: String },
    /// Step 3: the backend connects, then its last probes answer HTTP 5xx, drop the request,
    /// hang or answer slowly (`health`: erroring / drops / hangs / slow, as `check` judges a
    /// series of probes).
    BackendDegraded {
        backend: SocketAddr,
        health: String,
        what: String,
    },
    /// Step 3 (`--data`): the backend's latest replies on the wire answer HTTP 5xx or late
    /// (`health`: erroring / slow, [`crate::replies`]' rule over [`super::replies`]' window).
    RepliesDegraded {
        backend: SocketAddr,
        health: String,
        what: String,
    },
    /// Step 3: the LB (Layer 7) answered and closed the client at once while no backend answered
    /// any connection of the LB's: all backends down in the LB's view.
    Unserved,
    /// Step 4: the client retransmitted its SYN after the LB's SYN-ACK.
    SynAckLost,
    /// Step 4: a forwarded SYN whose backend reply never came back through the LB.
    AsymmetricReturn { backend: SocketAddr },
    /// Step 4: a SYN forwarded without NAT (still to the VIP) got no reply through the LB and
    /// the client never went on: with direct server return the backend's replies go around the
    /// LB, and these did not reach the client.
    DirectReturnLost,
    /// Step 4: the LB host (Layer 7) retransmitted its reply to a client
    /// [`STALL_RETRANSMISSIONS`] times: the client does not acknowledge it. `full_size` of them
    /// were full-size segments (only full-size ones repeating is a path-MTU black hole's shape).
    RepliesRetransmitted { full_size: u8, of: u8 },
}

impl Finding {
    /// The backend the finding is about (step 3, and the asymmetric return of step 4).
    pub fn backend(&self) -> Option<SocketAddr> {
        match self {
            Self::BackendRefused { backend }
            | Self::BackendTimeout { backend }
            | Self::BackendUnreachable { backend, .. }
            | Self::BackendDegraded { backend, .. }
            | Self::RepliesDegraded { backend, .. }
            | Self::AsymmetricReturn { backend } => Some(*backend),
            _ => None,
        }
    }

    /// The checklist step this finding fails.
    pub fn checklist_step(&self) -> Step {
        match self {
            Self::SynUnanswered | Self::SynDropped { .. } => Step::ClientToLb,
            Self::LbReset { .. } | Self::NoListener | Self::LbServesErrors { .. } => {
                Step::LbHandling
            }
            Self::BackendRefused { .. }
            | Self::BackendTimeout { .. }
            | Self::BackendUnreachable { .. }
            | Self::BackendDegraded { .. }
            | Self::RepliesDegraded { .. }
            | Self::Unserved => Step::LbToBackend,
            Self::SynAckLost
            | Self::AsymmetricReturn { .. }
            | Self::DirectReturnLost
            | Self::RepliesRetransmitted { .. } => Step::ReturnPath,
        }
    }

    /// [`Self::checklist_step`]'s number.
    pub fn step(&self) -> u8 {
        self.checklist_step().number()
    }

    /// The alert this finding counts towards (one per kind and, for step 3, per backend).
    pub fn alert_key(&self) -> String {
        match self {
            Self::SynUnanswered => "syn_unanswered".to_owned(),
            Self::SynDropped { reason } => format!("syn_dropped:{reason}"),
            Self::LbReset {
                after_request: true,
                ..
            } => "lb_reset_after_request".to_owned(),
            Self::LbReset {
                after_request: false,
                ..
            } => "lb_reset".to_owned(),
            Self::NoListener => "no_listener".to_owned(),
            Self::LbServesErrors { .. } => "lb_serves_errors".to_owned(),
            Self::BackendRefused { backend } => format!("backend_refused:{backend}"),
            Self::BackendTimeout { backend } => format!("backend_timeout:{backend}"),
            Self::BackendUnreachable { backend, .. } => format!("backend_unreachable:{backend}"),
            Self::BackendDegraded {
                backend, health, ..
            } => format!("backend_{health}:{backend}"),
            Self::RepliesDegraded {
                backend, health, ..
            } => format!("replies_{health}:{backend}"),
            Self::Unserved => "unserved".to_owned(),
            Self::SynAckLost => "synack_lost".to_owned(),
            Self::AsymmetricReturn { backend } => format!("asymmetric_return:{backend}"),
            Self::DirectReturnLost => "direct_return_lost".to_owned(),
            Self::RepliesRetransmitted { .. } => "replies_retransmitted".to_owned(),
        }
    }
}

/// The backend side of a connection.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BackendLeg {
    /// The LB's side of the backend connection (the client itself without SNAT).
    pub lb: SocketAddr,
    pub backend: SocketAddr,
    pub join: Join,
    #[serde(skip)]
    pub events: Vec<KernelEvent>,
    pub isn: u32,
    pub answered: bool,
    pub closed: bool,
    /// SYNs sent with `isn` (more than one: retransmitted).
    #[serde(skip)]
    pub syns: u32,
    /// Data segments the LB host retransmitted to the backend.
    #[serde(skip)]
    pub retrans: u8,
}

/// What one event of a backend leg reveals, joined or not. `own`: the LB's own connection
/// (Layer 7, or no client connection at all), whose unanswered SYN is the backend's fault; a
/// forwarded client SYN (Layer 4) retransmitted without answer may be the return path's.
fn backend_event(
    reasons: &DropReasons,
    leg: &mut BackendLeg,
    ev: &KernelEvent,
    to_backend: bool,
    own: bool,
    answered_through_lb: bool,
) -> Option<Finding> {
    let backend = leg.backend;
    match &ev.detail {
        Detail::Packet if to_backend && ev.is_syn() => {
            if ev.seq == leg.isn {
                leg.syns = leg.syns.saturating_add(1);
            }
            // The first retransmission is evidence enough: the backend is slow to connect.
            if leg.syns >= 2 && !leg.answered {
                if own {
                    return Some(Finding::BackendTimeout { backend });
                } else if !answered_through_lb {
                    return Some(Finding::AsymmetricReturn { backend });
                }
            }
            None
        }
        Detail::Packet if !to_backend && ev.is_syn_ack() => {
            leg.answered = true;
            None
        }
        Detail::Packet if !to_backend && ev.is_rst() && !leg.answered => {
            leg.closed = true;
            Some(Finding::BackendRefused { backend })
        }
        Detail::Packet if ev.is_fin() || ev.is_rst() => {
            leg.closed = true;
            None
        }
        Detail::Packet => None,
        Detail::Drop { reason } if to_backend && ev.has_syn() => {
            let name = reasons.name(*reason);
            matches!(DropClass::of(&name), DropClass::Neigh | DropClass::NoRoute).then(|| {
                Finding::BackendUnreachable {
                    backend,
                    what: syn_drop_what(&name),
                }
            })
        }
        // The LB's data to the backend not acknowledged, again and again: the backend (or the
        // path to it) stalls. Once per leg, at the threshold.
        Detail::Retrans
            if to_backend && ev.payload_len > 0 && ev.hook == crate::event::Hook::TcpRetransmit =>
        {
            leg.retrans = leg.retrans.saturating_add(1);
            (leg.retrans as usize == STALL_RETRANSMISSIONS).then(|| Finding::BackendDegraded {
                backend,
                health: "stalls".to_owned(),
                what: format!(
                    "stops acknowledging the LB's data: {} retransmissions on one connection",
                    leg.retrans
                ),
            })
        }
        Detail::Drop { .. }
        | Detail::Retrans
        | Detail::Data(_)
        | Detail::Reset(_)
        | Detail::Tunnel(_) => None,
        Detail::Icmp {
            outer_src,
            icmp_type,
            icmp_code,
            ..
        } => Some(Finding::BackendUnreachable {
            backend,
            what: crate::event::icmp_what(outer_src.is_ipv6(), *icmp_type, *icmp_code).to_owned(),
        }),
    }
}

/// Why a backend is unreachable when the LB host drops the SYNs to it for `reason`.
fn syn_drop_what(reason: &str) -> String {
    format!("the LB host drops its SYNs ({reason})")
}

/// A backend connection of the LB's own that no client connection could be joined to: a health
/// check, a pooled connection, or one opened while no client connection waits.
struct OwnLeg {
    leg: BackendLeg,
    first_ns: u64,
    findings: Vec<Finding>,
}

/// What a finding without a client connection was seen on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evidence {
    /// The LB's own backend connection on the wire: a health check, a pooled connection.
    Wire,
    /// lbtrace's own probe from the LB host (`--probe-interval`).
    Probe,
    /// The backends' replies on the wire (`--data`), client traffic and the LB's own alike.
    Traffic,
}

/// A finding on a backend connection of the LB's own, with no client connection behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnFinding {
    /// The LB's side of the connection.
    pub lb: SocketAddr,
    pub finding: Finding,
    pub evidence: Evidence,
}

/// A probe under way: the local port of the first SYN seen towards its target since it started,
/// and the reason the LB host dropped that SYN for, if it did.
#[derive(Default)]
struct Probing {
    port: Option<u16>,
    dropped: Option<String>,
}

/// The finding a probe's TCP result makes: the same kinds the wire makes (a connected probe, or
/// one that could not run, makes none). `dropped`: the LB host dropped the probe's SYN for this
/// reason (a neighbour or route failure names the backend unreachable, as on the wire).
pub fn probe_finding(p: &ProbeFacts, dropped: Option<&str>) -> Option<Finding> {
    let backend = p.target;
    let failed = matches!(p.tcp, TcpResult::Timeout | TcpResult::Unreachable);
    if let Some(name) = dropped.filter(|_| failed)
        && matches!(DropClass::of(name), DropClass::Neigh | DropClass::NoRoute)
    {
        return Some(Finding::BackendUnreachable {
            backend,
            what: syn_drop_what(name),
        });
    }
    match p.tcp {
        TcpResult::Refused => Some(Finding::BackendRefused { backend }),
        TcpResult::Timeout => Some(Finding::BackendTimeout { backend }),
        TcpResult::Unreachable => Some(Finding::BackendUnreachable {
            backend,
            what: format!(
                "the LB host cannot connect: {}",
                p.why.as_deref().unwrap_or("unreachable")
            ),
        }),
        TcpResult::Connected | TcpResult::Error => None,
    }
}

/// The LB host's side of a probe: the unspecified address (the probe's socket is bound to no
/// address) and its local port.
pub fn probe_side(p: &ProbeFacts) -> SocketAddr {
    SocketAddr::new(
        match p.target {
            SocketAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
        },
        p.local_port.unwrap_or(0),
    )
}

/// One client connection to a VIP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conn {
    pub id: u64,
    pub vip: SocketAddr,
    pub client: SocketAddr,
    pub first_ns: u64,
    pub last_ns: u64,
    pub isn: Option<u32>,
    pub server_isn: Option<u32>,
    pub events: Vec<KernelEvent>,
    pub backend: Option<BackendLeg>,
    /// The client's SYN left the LB host still addressed to the VIP: forwarded without NAT
    /// (routed to a backend that holds the VIP: ECMP, IPVS direct routing). Its packets are seen
    /// twice (arriving and leaving) and judged where they leave.
    pub forwarded_unchanged: bool,
    /// Events not kept (beyond `MAX_LEG_EVENTS` per leg).
    pub truncated: u32,
    pub findings: Vec<Finding>,
    pub closed: bool,
    /// Data segments the LB host retransmitted to the client, and how many were full-size.
    pub retrans: u8,
    pub retrans_full: u8,
}

impl Conn {
    pub fn failed(&self) -> bool {
        !self.findings.is_empty()
    }

    /// The lowest failing step, if any.
    pub fn checklist_step(&self) -> Option<Step> {
        self.findings.iter().map(Finding::checklist_step).min()
    }

    /// [`Self::checklist_step`]'s number.
    pub fn step(&self) -> Option<u8> {
        self.checklist_step().map(Step::number)
    }

    fn push(&mut self, ev: &KernelEvent) {
        self.last_ns = self.last_ns.max(ev.ts_ns);
        if self.events.len() < MAX_LEG_EVENTS {
            self.events.push(ev.clone());
        } else {
            self.truncated += 1;
        }
    }

    fn push_backend(&mut self, ev: &KernelEvent) {
        self.last_ns = self.last_ns.max(ev.ts_ns);
        if let Some(b) = &mut self.backend {
            if b.events.len() < MAX_LEG_EVENTS {
                b.events.push(ev.clone());
            } else {
                self.truncated += 1;
            }
        }
    }

    /// The kernel refused this connection ([`kernel_refused`]), and no backend leg says a NAT
    /// forwarded it.
    fn refused_by_kernel(&self, reasons: &DropReasons) -> bool {
        let rst = self
            .events
            .iter()
            .any(|e| e.dir == Some(Dir::Out) && matches!(e.detail, Detail::Packet) && e.is_rst());
        let no_socket = self.events.iter().any(|e| match e.detail {
            Detail::Drop { reason } => {
                e.is_syn() && DropClass::of(&reasons.name(reason)) == DropClass::NoSocket
            }
            _ => false,
        });
        self.backend.is_none()
            && !self.forwarded_unchanged
            && kernel_refused(rst, self.server_isn.is_some(), no_socket)
    }

    fn find(&mut self, f: Finding) -> Option<Finding> {
        if self.findings.contains(&f) {
            return None;
        }
        self.findings.push(f.clone());
        Some(f)
    }

    /// Approximate bytes this connection holds.
    pub fn bytes(&self) -> usize {
        let ev = std::mem::size_of::<KernelEvent>();
        std::mem::size_of::<Self>()
            + self.events.capacity() * ev
            + self.backend.as_ref().map_or(0, |b| {
                std::mem::size_of::<BackendLeg>() + b.events.capacity() * ev
            })
            + self.findings.capacity() * std::mem::size_of::<Finding>()
    }
}

/// The recorder's own accounting, reported by `dump` and the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Accounting {
    pub entries: usize,
    pub limit: usize,
    pub bytes: usize,
    pub evicted: u64,
    pub total: u64,
}

/// The flight recorder: the last `limit` client connections to the VIPs, each with its client
/// leg, its backend leg and its findings, indexed by tuple and by ISN.
pub struct Recorder {
    reasons: DropReasons,
    vips: Vec<Endpoint>,
    backends: Vec<Endpoint>,
    conns: VecDeque<Conn>,
    /// (vip, client) -> id of the newest connection with that tuple.
    by_tuple: HashMap<(SocketAddr, SocketAddr), u64>,
    /// (lb side, backend) -> connection id, for events of the backend leg.
    by_backend: HashMap<(SocketAddr, SocketAddr), u64>,
    /// Client ISN -> id of the newest connection with that ISN: the Layer 4 join.
    by_isn: HashMap<u32, u64>,
    limit: usize,
    evicted: u64,
    next_id: u64,
    bytes: usize,
    /// Connections opened per VIP.
    opened: HashMap<SocketAddr, u64>,
    /// (lb side, backend) -> the LB's own connection no client connection was joined to.
    own: HashMap<(SocketAddr, SocketAddr), OwnLeg>,
    /// `own`'s keys, oldest first (an entry may be stale: the map is what counts).
    own_order: VecDeque<(SocketAddr, SocketAddr)>,
    own_found: VecDeque<OwnFinding>,
    /// Probes under way, by target.
    probing: HashMap<SocketAddr, Probing>,
    /// (local port, target) of the LB host's own probes -> until when their packets are ignored.
    probe_ports: HashMap<(u16, SocketAddr), u64>,
    /// The last time a backend answered a connection of the LB's (a SYN-ACK, a probe).
    last_alive_ns: Option<u64>,
}

impl Recorder {
    pub fn new(
        vips: Vec<Endpoint>,
        backends: Vec<Endpoint>,
        limit: usize,
        reasons: DropReasons,
    ) -> Self {
        Self {
            reasons,
            vips,
            backends,
            conns: VecDeque::new(),
            by_tuple: HashMap::new(),
            by_backend: HashMap::new(),
            by_isn: HashMap::new(),
            limit: limit.max(1),
            evicted: 0,
            next_id: 1,
            bytes: 0,
            opened: HashMap::new(),
            own: HashMap::new(),
            own_order: VecDeque::new(),
            own_found: VecDeque::new(),
            probing: HashMap::new(),
            probe_ports: HashMap::new(),
            last_alive_ns: None,
        }
    }

    fn is_vip(&self, sa: &SocketAddr) -> bool {
        self.vips.iter().any(|v| v.matches(sa))
    }

    fn is_backend(&self, sa: &SocketAddr) -> bool {
        self.backends.iter().any(|b| b.matches(sa))
    }

    fn get(&mut self, id: u64) -> Option<&mut Conn> {
        get_mut(&mut self.conns, id)
    }

    fn open(&mut self, vip: SocketAddr, client: SocketAddr, ts: u64) -> u64 {
        while self.conns.len() >= self.limit {
            if let Some(old) = self.conns.pop_front() {
                self.forget(&old);
                self.evicted += 1;
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let c = Conn {
            id,
            vip,
            client,
            first_ns: ts,
            last_ns: ts,
            isn: None,
            server_isn: None,
            events: Vec::new(),
            backend: None,
            forwarded_unchanged: false,
            truncated: 0,
            findings: Vec::new(),
            closed: false,
            retrans: 0,
            retrans_full: 0,
        };
        self.bytes += c.bytes();
        self.conns.push_back(c);
        self.by_tuple.insert((vip, client), id);
        *self.opened.entry(vip).or_default() += 1;
        id
    }

    /// Connections opened per VIP since the start.
    pub fn opened(&self) -> &HashMap<SocketAddr, u64> {
        &self.opened
    }

    pub fn conn(&self, id: u64) -> Option<&Conn> {
        let first = self.conns.front()?.id;
        self.conns
            .get(usize::try_from(id.checked_sub(first)?).ok()?)
            .filter(|c| c.id == id)
    }

    fn forget(&mut self, c: &Conn) {
        self.bytes = self.bytes.saturating_sub(c.bytes());
        if self.by_tuple.get(&(c.vip, c.client)) == Some(&c.id) {
            self.by_tuple.remove(&(c.vip, c.client));
        }
        if let Some(isn) = c.isn
            && self.by_isn.get(&isn) == Some(&c.id)
        {
            self.by_isn.remove(&isn);
        }
        if let Some(b) = &c.backend
            && self.by_backend.get(&(b.lb, b.backend)) == Some(&c.id)
        {
            self.by_backend.remove(&(b.lb, b.backend));
        }
    }

    /// Feeds one event; returns the findings it revealed.
    pub fn ingest(&mut self, ev: &KernelEvent) -> Vec<(u64, Finding)> {
        let (s, d) = (ev.src, ev.dst);
        let mut out = Vec::new();
        let before = |c: &Conn| c.bytes();
        if self.is_vip(&d) || self.is_vip(&s) {
            let (vip, client, to_vip) = if self.is_vip(&d) {
                (d, s, true)
            } else {
                (s, d, false)
            };
            if self.probe_packet(client, vip, to_vip, ev) {
                return out;
            }
            let syn = ev.is_syn();
            let existing = self.by_tuple.get(&(vip, client)).copied();
            // A SYN with a new ISN on a known tuple is a new connection (port reuse).
            let id = match existing {
                Some(id)
                    if !(to_vip
                        && syn
                        && matches!(ev.detail, Detail::Packet)
                        && self
                            .get(id)
                            .is_some_and(|c| c.isn.is_some_and(|i| i != ev.seq))) =>
                {
                    id
                }
                _ if to_vip && syn => self.open(vip, client, ev.ts_ns),
                Some(id) => id,
                None => return out,
            };
            let reasons = &self.reasons;
            let alive = self.last_alive_ns;
            // Without backends given, an LB (or plain server) answering and closing at once is
            // just serving: nothing says it has backends to lose.
            let has_backends = !self.backends.is_empty();
            let Some(c) = get_mut(&mut self.conns, id) else {
                return out;
            };
            let b0 = before(c);
            c.push(ev);
            match (&ev.detail, to_vip) {
                // The client's packet leaving the LB host still to the VIP: forwarded without
                // NAT, routed or inside a tunnel to a backend; the rest of it was judged when it
                // arrived.
                (Detail::Packet | Detail::Tunnel(_), true) if ev.dir == Some(Dir::Out) => {
                    if syn && c.isn == Some(ev.seq) {
                        c.forwarded_unchanged = true;
                    }
                }
                // A packet from the VIP arriving at the LB host: a backend's, on its way back
                // through the LB (forwarded without NAT); judged when it leaves.
                (Detail::Packet, false) if ev.dir == Some(Dir::In) => {
                    if ev.is_syn_ack() {
                        c.server_isn.get_or_insert(ev.seq);
                    }
                }
                (Detail::Packet, true) if syn => {
                    if c.isn.is_none() {
                        c.isn = Some(ev.seq);
                        self.by_isn.insert(ev.seq, id);
                    } else if c.server_isn.is_some()
                        && !c
                            .backend
                            .as_ref()
                            .is_some_and(|b| b.answered && c.events.iter().any(KernelEvent::is_fin))
                    {
                        // The client retransmits its SYN after the LB's SYN-ACK.
                        out.extend(c.find(Finding::SynAckLost).map(|f| (id, f)));
                    }
                }
                (Detail::Packet, true) => {
                    if ev.is_fin() || ev.is_rst() {
                        c.closed = true;
                    }
                }
                (Detail::Packet, false) => {
                    if ev.is_syn_ack() {
                        c.server_isn.get_or_insert(ev.seq);
                    } else if ev.is_rst() {
                        c.closed = true;
                        let answered = c.server_isn.is_some();
                        let after_request = c.isn.is_some_and(|isn| seq_past(ev.ack, isn));
                        // An RST after the LB's own FIN answers data that came after it closed
                        // (a TLS close_notify): the connection ended normally.
                        let lb_closed_first = c.events.iter().any(|e| {
                            e.src == vip && e.is_fin() && matches!(e.detail, Detail::Packet)
                        });
                        if answered || c.backend.is_some() {
                            if !lb_closed_first {
                                let f = Finding::LbReset {
                                    after_request,
                                    by: rst_by_stack(&c.events, ev),
                                };
                                out.extend(c.find(f).map(|f| (id, f)));
                            }
                        } else if c.refused_by_kernel(reasons) {
                            out.extend(c.find(Finding::NoListener).map(|f| (id, f)));
                        }
                    } else if ev.is_fin() {
                        if has_backends {
                            out.extend(unserved_at(c, ev, alive).map(|f| (id, f)));
                        }
                        c.closed = true;
                    }
                }
                // The kernel's RST and its NO_SOCKET drop of the SYN come in either order.
                (Detail::Drop { .. }, true) if ev.is_syn() && c.refused_by_kernel(reasons) => {
                    out.extend(c.find(Finding::NoListener).map(|f| (id, f)));
                }
                // A drop whose reason is a verdict (a firewall, rp_filter, a full backlog, no
                // route) is the finding at once; other reasons wait for the expiry.
                (Detail::Drop { reason }, true)
                    if ev.is_syn() && c.server_isn.is_none() && c.backend.is_none() =>
                {
                    let name = reasons.name(*reason);
                    if matches!(
                        DropClass::of(&name),
                        DropClass::Netfilter
                            | DropClass::RpFilter
                            | DropClass::Backlog
                            | DropClass::Neigh
                            | DropClass::NoRoute
                    ) {
                        let f = Finding::SynDropped { reason: name };
                        out.extend(c.find(f).map(|f| (id, f)));
                    }
                }
                // The LB host's reply to the client retransmitted: counted, a finding once at
                // the threshold (check's step-4 rule says whether it is MTU-shaped).
                // With --data the segment is also seen forwarded (hook tc): for a Layer 4
                // connection that is the only sighting, for the LB's own (Layer 7) one it is
                // the tracepoint's again and not counted twice.
                (Detail::Retrans, false)
                    if ev.payload_len > 0
                        && (ev.hook == crate::event::Hook::TcpRetransmit
                            || c.backend.as_ref().is_some_and(|b| b.join == Join::Isn)) =>
                {
                    c.retrans = c.retrans.saturating_add(1);
                    c.retrans_full = c.retrans_full.saturating_add(u8::from(ev.full_size()));
                    if c.retrans as usize == STALL_RETRANSMISSIONS {
                        let f = Finding::RepliesRetransmitted {
                            full_size: c.retrans_full,
                            of: c.retrans,
                        };
                        out.extend(c.find(f).map(|f| (id, f)));
                    }
                }
                (Detail::Drop { .. } | Detail::Retrans | Detail::Data(_) | Detail::Reset(_), _) => {
                }
                (Detail::Icmp { .. }, _) => {}
                // Tunnelled toward the LB (from an L4 tier in front of it): the decapsulated
                // packet is the one judged, where lbtrace sees it.
                (Detail::Tunnel(_), _) => {}
            }
            let b1 = c.bytes();
            self.bytes = self.bytes + b1 - b0.min(b1);
            return out;
        }
        if self.is_backend(&d) || self.is_backend(&s) {
            let (lb, backend, to_backend) = if self.is_backend(&d) {
                (s, d, true)
            } else {
                (d, s, false)
            };
            // A backend answering the LB host, the probe too, is alive.
            if !to_backend && matches!(ev.detail, Detail::Packet) && ev.is_syn_ack() {
                self.last_alive_ns = Some(ev.ts_ns);
            }
            if self.probe_packet(lb, backend, to_backend, ev) {
                return out;
            }
            let syn = ev.is_syn();
            let id = match self.by_backend.get(&(lb, backend)).copied() {
                Some(id)
                    if !(to_backend
                        && syn
                        && matches!(ev.detail, Detail::Packet)
                        && self
                            .get(id)
                            .and_then(|c| c.backend.as_ref())
                            .is_some_and(|b| b.isn != ev.seq)) =>
                {
                    Some(id)
                }
                // Later SYNs of the LB's own connection stay with it.
                _ if self
                    .own
                    .get(&(lb, backend))
                    .is_some_and(|o| o.leg.isn == ev.seq || !syn) =>
                {
                    None
                }
                _ if to_backend
                    && syn
                    && matches!(ev.detail, Detail::Packet | Detail::Drop { .. }) =>
                {
                    self.join(lb, backend, ev)
                }
                other => other,
            };
            let Some(id) = id else {
                self.own_event(lb, backend, to_backend, ev);
                return out;
            };
            let reasons = &self.reasons;
            let Some(c) = get_mut(&mut self.conns, id) else {
                return out;
            };
            let b0 = c.bytes();
            c.push_backend(ev);
            let through_lb = c.server_isn.is_some();
            let found = c.backend.as_mut().and_then(|b| {
                let own = b.join == Join::Inferred;
                backend_event(reasons, b, ev, to_backend, own, through_lb)
            });
            if let Some(f) = found {
                out.extend(c.find(f).map(|f| (id, f)));
            }
            let b1 = c.bytes();
            self.bytes = self.bytes + b1 - b0.min(b1);
        }
        out
    }

    /// An event of a backend connection no client connection is joined to: the LB's own
    /// (health checks, pools). Its findings wait in [`Self::take_own`].
    fn own_event(
        &mut self,
        lb: SocketAddr,
        backend: SocketAddr,
        to_backend: bool,
        ev: &KernelEvent,
    ) {
        let key = (lb, backend);
        let new_syn = to_backend
            && ev.is_syn()
            && matches!(ev.detail, Detail::Packet | Detail::Drop { .. })
            && self.own.get(&key).is_none_or(|o| o.leg.isn != ev.seq);
        if new_syn {
            while self.own.len() >= MAX_OWN_LEGS {
                match self.own_order.pop_front() {
                    Some(k) => {
                        self.own.remove(&k);
                    }
                    None => break,
                }
            }
            if self
                .own
                .insert(
                    key,
                    OwnLeg {
                        leg: BackendLeg {
                            lb,
                            backend,
                            join: Join::Inferred,
                            events: Vec::new(),
                            isn: ev.seq,
                            answered: false,
                            closed: false,
                            syns: 0,
                            retrans: 0,
                        },
                        first_ns: ev.ts_ns,
                        findings: Vec::new(),
                    },
                )
                .is_none()
            {
                self.own_order.push_back(key);
            }
        }
        let Some(o) = self.own.get_mut(&key) else {
            return;
        };
        if let Some(f) = backend_event(&self.reasons, &mut o.leg, ev, to_backend, true, false)
            && !o.findings.contains(&f)
        {
            o.findings.push(f.clone());
            if self.own_found.len() >= MAX_OWN_FOUND {
                self.own_found.pop_front();
            }
            self.own_found.push_back(OwnFinding {
                lb,
                finding: f,
                evidence: Evidence::Wire,
            });
        }
    }

    /// A probe of `target` is about to start: the first SYN towards it from now on is the
    /// probe's (its local port is known only once the probe ends).
    pub fn probe_started(&mut self, target: SocketAddr) {
        if self.probing.len() < MAX_PROBE_PORTS {
            self.probing.insert(target, Probing::default());
        }
    }

    /// A probe ended: its packets stay out of the client connections and the LB's own; a
    /// backend's result is a finding with the evidence `probe` ([`Self::take_own`]), or,
    /// connected, a backend alive. (A VIP's is neither: a Layer-4 VIP is usually not reachable
    /// from the LB host itself, and the LB answering proves no backend alive.)
    pub fn probe_done(&mut self, p: &ProbeFacts, now_ns: u64) {
        let probing = self.probing.remove(&p.target).unwrap_or_default();
        let claimed = probing.port;
        let until = now_ns.saturating_add(PROBE_PORT_TTL_NS);
        self.probe_ports.retain(|_, t| *t > now_ns);
        for port in [claimed, p.local_port.filter(|&p| p != 0)]
            .into_iter()
            .flatten()
        {
            if self.probe_ports.len() < MAX_PROBE_PORTS {
                self.probe_ports.insert((port, p.target), until);
            }
        }
        if self.is_vip(&p.target) {
            return;
        }
        if p.tcp == TcpResult::Connected {
            self.last_alive_ns = Some(now_ns);
        }
        if let Some(f) = probe_finding(p, probing.dropped.as_deref()) {
            if self.own_found.len() >= MAX_OWN_FOUND {
                self.own_found.pop_front();
            }
            self.own_found.push_back(OwnFinding {
                lb: probe_side(p),
                finding: f,
                evidence: Evidence::Probe,
            });
        }
    }

    /// The event is a packet of the LB host's own probe of a backend or a VIP (by its local
    /// port, or as the first SYN towards a target under probe): it is neither a client's nor the
    /// LB's.
    fn probe_packet(
        &mut self,
        lb: SocketAddr,
        target: SocketAddr,
        to_target: bool,
        ev: &KernelEvent,
    ) -> bool {
        let port = lb.port();
        if self
            .probe_ports
            .get(&(port, target))
            .is_some_and(|&until| ev.ts_ns <= until)
        {
            return true;
        }
        if !self.probing.contains_key(&target) {
            return false;
        }
        let first_syn = to_target
            && ev.has_syn()
            && if self.is_vip(&target) {
                // Clients' SYNs reach the VIP too: the probe's comes from the LB host itself
                // (towards a local VIP from the VIP's own address, else leaving the host), on a
                // tuple no client connection has.
                (lb.ip() == target.ip() || ev.dir == Some(Dir::Out))
                    && !self.by_tuple.contains_key(&(target, lb))
            } else {
                // A client's SYN forwarded with its ISN (Layer 4) is not the probe's.
                !self.by_isn.contains_key(&ev.seq)
            };
        let Some(probing) = self.probing.get_mut(&target) else {
            return false;
        };
        let ours = match probing.port {
            Some(claimed) => claimed == port,
            None if first_syn => {
                probing.port = Some(port);
                true
            }
            None => false,
        };
        if let (true, Detail::Drop { reason }) = (ours && to_target, &ev.detail) {
            probing
                .dropped
                .get_or_insert_with(|| self.reasons.name(*reason));
        }
        ours
    }

    /// `lb`'s connection to `target` is (or was, within [`PROBE_PORT_TTL_NS`]) one of the LB
    /// host's own probes.
    pub fn is_probe(&self, lb: SocketAddr, target: SocketAddr, ts_ns: u64) -> bool {
        self.probe_ports
            .get(&(lb.port(), target))
            .is_some_and(|&until| ts_ns <= until)
            || self
                .probing
                .get(&target)
                .is_some_and(|p| p.port == Some(lb.port()))
    }

    /// The last time a backend answered a connection of the LB's.
    pub fn last_alive_ns(&self) -> Option<u64> {
        self.last_alive_ns
    }

    /// Findings on the LB's own backend connections with no client connection behind them,
    /// oldest first, since the last call.
    pub fn take_own(&mut self) -> Vec<OwnFinding> {
        self.own_found.drain(..).collect()
    }

    /// The LB's own backend connections not joined to a client connection, kept now.
    pub fn own_legs(&self) -> usize {
        self.own.len()
    }

    /// Ties a SYN towards a backend to a client connection: by ISN (L4), else by time (L7).
    fn join(&mut self, lb: SocketAddr, backend: SocketAddr, ev: &KernelEvent) -> Option<u64> {
        let by_isn = self
            .by_isn
            .get(&ev.seq)
            .copied()
            .filter(|&id| self.conn(id).is_some_and(|c| c.backend.is_none()));
        let (id, join) = match by_isn {
            Some(id) => (id, Join::Isn),
            None => {
                let id = self
                    .conns
                    .iter()
                    .rev()
                    .take_while(|c| ev.ts_ns.saturating_sub(c.first_ns) <= L7_JOIN_NS)
                    .find(|c| c.backend.is_none() && c.server_isn.is_some())
                    .map(|c| c.id)?;
                (id, Join::Inferred)
            }
        };
        let c = self.get(id)?;
        c.backend = Some(BackendLeg {
            lb,
            backend,
            join,
            events: Vec::new(),
            isn: ev.seq,
            answered: false,
            closed: false,
            syns: 0,
            retrans: 0,
        });
        self.by_backend.insert((lb, backend), id);
        Some(id)
    }

    /// Judges what only time reveals: unanswered SYNs, backend timeouts, asymmetric return.
    /// (A kernel refusal is found as it happens, in [`Self::ingest`]: it closes the connection.)
    pub fn expire(&mut self, now_ns: u64) -> Vec<(u64, Finding)> {
        let mut out = Vec::new();
        let reasons = &self.reasons;
        for c in &mut self.conns {
            if c.closed || now_ns.saturating_sub(c.first_ns) < ANSWER_TIMEOUT_NS {
                continue;
            }
            let dropped = c.events.iter().find_map(|e| match e.detail {
                Detail::Drop { reason } if e.has_syn() => Some(reason),
                _ => None,
            });
            let found = if c.forwarded_unchanged {
                // Direct server return: nothing comes back through the LB by design; a client
                // that went on closed the connection, one still open past the backend timeout
                // with no reply through the LB never got one.
                (c.server_isn.is_none() && now_ns.saturating_sub(c.first_ns) >= BACKEND_TIMEOUT_NS)
                    .then_some(Finding::DirectReturnLost)
            } else if c.server_isn.is_none() && c.backend.is_none() {
                if let Some(r) = dropped {
                    Some(Finding::SynDropped {
                        reason: reasons.name(r),
                    })
                } else if c.isn.is_some() {
                    Some(Finding::SynUnanswered)
                } else {
                    None
                }
            } else if let Some(b) = &c.backend {
                if b.answered
                    || b.closed
                    || now_ns.saturating_sub(c.first_ns) < BACKEND_TIMEOUT_NS
                    || c.findings.iter().any(|f| f.step() == 3)
                {
                    None
                } else if b.join == Join::Isn && c.server_isn.is_none() {
                    // Forwarded, and no SYN-ACK came back through the LB.
                    Some(Finding::AsymmetricReturn { backend: b.backend })
                } else if b.join == Join::Inferred {
                    Some(Finding::BackendTimeout { backend: b.backend })
                } else {
                    None
                }
            } else {
                None
            };
            if let Some(f) = found {
                out.extend(c.find(f).map(|f| (c.id, f)));
            }
        }
        // The LB's own connections: unanswered past the timeout (the LB gave up), or forgotten.
        let own_found = &mut self.own_found;
        self.own.retain(|_, o| {
            let age = now_ns.saturating_sub(o.first_ns);
            if !o.leg.answered && o.findings.is_empty() && age >= BACKEND_TIMEOUT_NS {
                let f = Finding::BackendTimeout {
                    backend: o.leg.backend,
                };
                if !o.findings.contains(&f) {
                    o.findings.push(f.clone());
                    if own_found.len() >= MAX_OWN_FOUND {
                        own_found.pop_front();
                    }
                    own_found.push_back(OwnFinding {
                        lb: o.leg.lb,
                        finding: f,
                        evidence: Evidence::Wire,
                    });
                }
            }
            age < OWN_LEG_TTL_NS
        });
        let own = &self.own;
        self.own_order.retain(|k| own.contains_key(k));
        out
    }

    /// The recorded connections, oldest first.
    pub fn conns(&self) -> impl DoubleEndedIterator<Item = &Conn> {
        self.conns.iter()
    }

    pub fn accounting(&self) -> Accounting {
        Accounting {
            entries: self.conns.len(),
            limit: self.limit,
            bytes: self.bytes,
            evicted: self.evicted,
            total: self.next_id - 1,
        }
    }
}

/// The LB's FIN `fin` closes client connection `c`: answered by the LB itself (Layer 7) and
/// closed unserved while no backend answered the LB ([`unserved`]'s rule) is
/// [`Finding::Unserved`].
fn unserved_at(c: &mut Conn, fin: &KernelEvent, last_alive_ns: Option<u64>) -> Option<Finding> {
    let l7 = !c.forwarded_unchanged && c.backend.as_ref().is_none_or(|b| b.join == Join::Inferred);
    let answered = Answered {
        syn_ns: c.first_ns,
        lb_close_ns: fin.ts_ns,
        lb_sent_data: c
            .server_isn
            .is_some_and(|s| seq_past(fin.seq, s) || fin.payload_len > 0),
        backend_tried: c.backend.is_some(),
        backend_answered: c.backend.as_ref().is_some_and(|b| b.answered),
    };
    let unserved = usize::from(l7 && unserved::unserved_close(answered));
    if unserved::all_down(unserved, last_alive_ns, fin.ts_ns) {
        c.find(Finding::Unserved)
    } else {
        None
    }
}

/// Who made the RST `rst` the LB host sent, when a `tcp_send_reset` event among `events` ties it
/// to this host's TCP stack ([`resets::maker_of`]'s rule); `None` without one.
fn rst_by_stack(events: &[KernelEvent], rst: &KernelEvent) -> Option<String> {
    match resets::maker_of(rst, events, Some(ResetMode::Sockets))? {
        RstMaker::NoSocketOrFirewall | RstMaker::NotThisStack => None,
        m => Some(crate::check::report::rst_maker_key(m).to_owned()),
    }
}

/// Connection `id` in `conns`: ids increase by one along the deque, so its index is `id - first`.
fn get_mut(conns: &mut VecDeque<Conn>, id: u64) -> Option<&mut Conn> {
    let first = conns.front()?.id;
    let idx = usize::try_from(id.checked_sub(first)?).ok()?;
    conns.get_mut(idx).filter(|c| c.id == id)
}
