//! The check report: a short text a human reads top to bottom, or one JSON object
//! (docs/output.md). Evidence is printed as `trace` prints events, times relative to the first.
//!
//! Longer than 600 lines on purpose: the words for every finding of the four steps stand side by
//! side, so that a change of wording is made once and compared with its neighbours (the host's
//! words are in `host.rs`).

mod host;
pub mod series;

use serde_json::{Value, json};

use self::host::{host_evidence, host_finding_json, host_json, host_next, host_text, host_words};
use super::{
    Collected,
    observe::TcpInfoSnapshot,
    representative, summary_of,
    verdict::{
        BackendFinding, BackendsFinding, ClientFinding, HandlingFinding, HostFinding, LbToBackend,
        LocalService, Mode, Outcomes, ReturnFinding, Side, Status, StepFinding, StepVerdict,
        Unserved, Verdict, flow::ReasonCounts, resets::RstMaker,
    },
};
use crate::{
    checklist::{DropClass, Step},
    endpoint::Endpoint,
    kernel::btf::DropReasons,
    probe::{HttpOutcome, ProbeReport},
    render::{self, Clock, Format, IfNames},
    replies::Replies,
};

pub struct Ctx<'a> {
    pub vip: Endpoint,
    pub collected: &'a Collected,
    pub verdict: &'a Verdict,
    pub clock: &'a Clock,
    pub reasons: &'a DropReasons,
    pub ifnames: IfNames,
}

fn mode_str(m: Mode) -> &'static str {
    match m {
        Mode::L4 => "l4",
        Mode::L7 => "l7",
        Mode::Unknown => "unknown",
    }
}

fn status_str(s: Status) -> &'static str {
    match s {
        Status::Pass => "pass",
        Status::Fail => "fail",
        Status::Warn => "warn",
        Status::Unknown => "unknown",
    }
}

/// Drops counted by reason: control-packet drop events plus the kernel's data-drop counters.
fn drop_counts(ctx: &Ctx<'_>) -> Vec<(String, u64)> {
    let mut by: Vec<(String, u64)> = Vec::new();
    let mut add = |r: String, n: u64| match by.iter_mut().find(|(x, _)| *x == r) {
        Some((_, c)) => *c += n,
        None => by.push((r, n)),
    };
    for e in &ctx.collected.events {
        if let crate::event::Detail::Drop { reason } = e.detail {
            add(ctx.reasons.name(reason), 1);
        }
    }
    for (r, n) in &ctx.collected.data_drops {
        add(r.clone(), *n);
    }
    by
}

fn base_ns(ctx: &Ctx<'_>) -> u64 {
    ctx.collected.events.first().map_or(0, |e| e.ts_ns)
}

fn http_status(p: &ProbeReport) -> Option<u16> {
    match &p.http {
        Some(HttpOutcome::Response { status, .. }) => Some(*status),
        _ => None,
    }
}

pub fn json(mut ctx: Ctx<'_>) -> Value {
    let v = ctx.verdict;
    let events = &ctx.collected.events;
    let ev_json = |idx: &[usize], ifnames: &mut IfNames| -> Vec<Value> {
        idx.iter()
            .map(|&i| render::event_json(&events[i], ctx.clock, ifnames, ctx.reasons))
            .collect()
    };
    let steps: Vec<Value> = v
        .steps
        .iter()
        .map(|s| {
            let mut o = json!({
                "step": s.step, "name": s.step.name(), "status": status_str(s.status), "summary": summary(s),
                "next": next(s), "evidence": ev_json(&s.evidence, &mut ctx.ifnames),
            });
            if let Some(b) = s.blocked_by {
                o["blocked_by"] = json!(b);
            }
            o["host"] = s.host.iter().map(host_finding_json).collect::<Vec<_>>().into();
            if let Some(u) = &s.unserved {
                o["unserved"] = json!({"connections": u.connections, "of": u.of, "refused": u.refused});
            }
            if let Some(m) = rst_made_by(&s.finding) {
                o["rst_made_by"] = json!({"by": rst_maker_key(m), "words": rst_maker_words(m)});
            }
            if s.step == Step::ReturnPath {
                o["tcp_info"] = tcp_info_json(&ctx).into();
            }
            if let StepFinding::ReturnPath(ReturnFinding::DirectReturn {
                connections,
                finished,
            }) = &s.finding
            {
                o["direct_return"] = json!({"connections": connections, "finished": finished});
            }
            o
        })
        .collect();
    let slow = ctx.collected.slow;
    let step3 = lb_to_backend(v);
    let traffic_of =
        |addr| step3.and_then(|f| f.traffic.iter().find(|(a, _)| *a == addr).map(|(_, r)| r));
    let backends: Vec<Value> = v
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let all = ctx.collected.probes.get(i).map_or(&[][..], Vec::as_slice);
            let p = representative(all);
            json!({
                "addr": b.addr.to_string(),
                "tcp": p.map(|p| p.tcp.name()),
                "http_status": p.and_then(http_status),
                "tls": p.and_then(|p| p.tls.as_ref()),
                "finding": backend_finding(&b.finding),
                "probe": p,
                "series": summary_of(all, slow),
                "traffic": traffic_of(b.addr),
                "evidence": ev_json(&b.evidence, &mut ctx.ifnames),
            })
        })
        .collect();
    let vip_probe = ctx.collected.vip_probe.as_deref().and_then(|all| {
        representative(all).map(|p| json!({"local": true, "probe": p, "tcp": p.tcp.name(), "http_status": http_status(p), "series": summary_of(all, slow)}))
    });
    let c = &ctx.collected.counters;
    // Layer 4: how the client's SYN left, NATed or still to the VIP.
    let forwarding = v.steps.iter().find_map(|s| match &s.finding {
        StepFinding::LbHandling(
            HandlingFinding::Served {
                mode: Mode::L4,
                unchanged,
                ..
            }
            | HandlingFinding::Hang {
                mode: Mode::L4,
                unchanged,
                ..
            },
        ) => Some(if *unchanged { "unchanged" } else { "nat" }),
        _ => None,
    });
    json!({
        "vip": ctx.vip.to_string(),
        "mode": mode_str(v.mode),
        "forwarding": forwarding,
        "first_failed_step": v.first_failed_step,
        "observed_seconds": (ctx.collected.window.as_secs_f64() * 10.0).round() / 10.0,
        "steps": steps,
        "backends": backends,
        "vip_probe": vip_probe,
        "vip_traffic": step3.and_then(|f| f.clients.as_ref()),
        "kernel": {
            "events": events.len(),
            "lost": c.lost(),
            "drops": drop_counts(&ctx).iter().map(|(r, n)| json!({"reason": r, "count": n})).collect::<Vec<_>>(),
            "events_cap": ctx.collected.events_cap,
            "events_not_kept": ctx.collected.events_not_kept,
            "decode_errors": ctx.collected.decode_errors,
        },
        "host": host_json(&ctx.collected.host, v),
        "capabilities": ctx.collected.capabilities,
    })
}

/// Step 3's finding (`--data`'s traffic is in it).
fn lb_to_backend(v: &Verdict) -> Option<&LbToBackend> {
    v.steps.iter().find_map(|s| match &s.finding {
        StepFinding::LbToBackend(f) => Some(f),
        _ => None,
    })
}

/// Whether a stalled leg of the LB goes to a client or to one of the backends.
fn leg_side(v: &Verdict, t: &TcpInfoSnapshot) -> Side {
    if v.backends.iter().any(|b| b.addr == t.remote) {
        Side::Backend
    } else {
        Side::Client
    }
}

/// Step 4's `tcp_info`: the snapshots of the LB's stalled legs (docs/output.md).
fn tcp_info_json(ctx: &Ctx<'_>) -> Vec<Value> {
    ctx.collected
        .tcp_info
        .iter()
        .map(|t| {
            let side = match leg_side(ctx.verdict, t) {
                Side::Client => "client",
                Side::Backend => "backend",
            };
            json!({
                "time": ctx.clock.rfc3339(t.ts_ns),
                "local": t.local.to_string(),
                "remote": t.remote.to_string(),
                "side": side,
                "retransmissions_seen": t.retransmissions,
                "info": t.info,
                "words": tcp_info_words(t, leg_side(ctx.verdict, t)),
            })
        })
        .collect()
}

/// One stalled leg's tcp_info in words: "the LB's socket to 10.10.1.2:40312: path MTU 1500,
/// MSS 1448, ...". Fields the kernel did not send are left out.
pub fn tcp_info_words(t: &TcpInfoSnapshot, side: Side) -> String {
    let i = &t.info;
    let whom = match side {
        Side::Client => "client",
        Side::Backend => "backend",
    };
    let mut parts = Vec::new();
    if let Some(p) = i.pmtu {
        parts.push(format!("path MTU {p}"));
    }
    if let Some(m) = i.snd_mss {
        parts.push(format!("MSS {m}"));
    }
    if let Some(n) = i.unacked {
        parts.push(format!("{n} segment(s) unacknowledged"));
    }
    if let Some(n) = i.lost {
        parts.push(format!("{n} lost"));
    }
    if let Some(n) = i.total_retrans {
        parts.push(format!("{n} retransmitted"));
    }
    if let Some(n) = i.retransmits.filter(|n| *n > 0) {
        parts.push(format!("{n} timeout(s) in a row"));
    }
    if let Some(r) = i.rtt_us {
        parts.push(format!("RTT {:.1} ms", f64::from(r) / 1000.0));
    }
    if let Some(r) = i.rto_us {
        parts.push(format!("RTO {:.0} ms", f64::from(r) / 1000.0));
    }
    format!(
        "the LB's socket to {whom} {}: {}",
        t.remote,
        if parts.is_empty() {
            "no tcp_info fields".to_owned()
        } else {
            parts.join(", ")
        }
    )
}

fn probe_line(p: &ProbeReport) -> String {
    let mut s = match &p.tcp {
        crate::probe::TcpOutcome::Connected { connect_ms } => {
            format!("connected in {connect_ms:.1} ms")
        }
        other => other.name().to_owned(),
    };
    if let Some(t) = &p.tls {
        s.push_str(&format!(", TLS {}", tls_line(t)));
    }
    match &p.http {
        Some(HttpOutcome::Response {
            status,
            reason,
            ttfb_ms,
            ..
        }) => {
            s.push_str(&format!(
                ", HTTP {status} {reason} (first byte {ttfb_ms:.1} ms)"
            ));
        }
        Some(HttpOutcome::Reset { after_ms }) => {
            s.push_str(&format!(", HTTP reset {after_ms:.0} ms after the request"))
        }
        Some(HttpOutcome::Closed { after_ms }) => s.push_str(&format!(
            ", HTTP closed without a response after {after_ms:.0} ms"
        )),
        Some(HttpOutcome::Hang { after_ms }) => {
            s.push_str(&format!(", HTTP no answer in {after_ms:.0} ms (hang)"))
        }
        Some(HttpOutcome::Error { error }) => s.push_str(&format!(", HTTP error: {error}")),
        None => {}
    }
    s
}

fn tls_line(t: &crate::probe::TlsReport) -> String {
    use crate::probe::TlsOutcome;
    let mut s = match &t.outcome {
        TlsOutcome::Ok => format!(
            "{} {}{}",
            t.version.as_deref().unwrap_or("?"),
            t.cipher.as_deref().unwrap_or(""),
            t.alpn
                .as_deref()
                .map(|a| format!(" ALPN {a}"))
                .unwrap_or_default()
        ),
        TlsOutcome::Unsupported { why } => {
            format!("not testable by this probe (rustls speaks TLS 1.2/1.3 only): {why}")
        }
        other => other.name().to_owned(),
    };
    if let Some(leaf) = t.chain.first() {
        s.push_str(&format!(
            "; certificate {} issued by {}, expires {}",
            leaf.subject, leaf.issuer, leaf.not_after
        ));
        if leaf.expired {
            s.push_str(" (EXPIRED)");
        }
    }
    match (t.trusted, t.name_matches) {
        (Some(false), _) => s.push_str(&format!(
            "; warn: not trusted ({})",
            t.verify_error.as_deref().unwrap_or("unknown issuer")
        )),
        (_, Some(false)) => s.push_str("; warn: the name does not match --sni"),
        _ => {}
    }
    s
}

pub fn text(mut ctx: Ctx<'_>) -> String {
    let v = ctx.verdict;
    let events = &ctx.collected.events;
    let base = Some(base_ns(&ctx));
    let mut out = String::new();
    out.push_str(&format!(
        "lbtrace check {}: observed {:.1} s, mode {}\n\n",
        ctx.vip,
        ctx.collected.window.as_secs_f64(),
        mode_str(v.mode).to_uppercase()
    ));
    for s in &v.steps {
        out.push_str(&format!(
            "[{:<7}] {}. {:<14} {}\n",
            status_str(s.status).to_uppercase(),
            s.step.number(),
            s.step.name(),
            summary(s)
        ));
        if let Some(b) = s.blocked_by {
            out.push_str(&format!(
                "            blocked by the failure of step {}\n",
                b.number()
            ));
        }
        for &i in s.evidence.iter().take(8) {
            out.push_str(&format!(
                "            {}\n",
                render::event_text(&events[i], ctx.clock, &mut ctx.ifnames, ctx.reasons, base)
            ));
        }
        if s.evidence.len() > 8 {
            out.push_str(&format!(
                "            ... {} more (--format json or --pcap for all)\n",
                s.evidence.len() - 8
            ));
        }
        if s.step == Step::ReturnPath {
            for t in &ctx.collected.tcp_info {
                out.push_str(&format!(
                    "            tcp_info {}: {}\n",
                    render::time_text(t.ts_ns, ctx.clock, base),
                    tcp_info_words(t, leg_side(v, t))
                ));
            }
        }
        for h in &s.host {
            for line in host_evidence(&h.pressure) {
                out.push_str(&format!("            host: {line}\n"));
            }
        }
        if let Some(n) = next(s) {
            out.push_str(&format!("            next: {n}\n"));
        }
    }
    out.push_str("\nbackends (probed from the LB host):\n");
    let step3 = lb_to_backend(v);
    let slow = ctx.collected.slow;
    // The representative probe (the first that failed), then the series' numbers.
    let lines = |all: &[ProbeReport]| -> Vec<String> {
        let mut l: Vec<String> = representative(all).map(probe_line).into_iter().collect();
        if all.len() > 1 {
            l.extend(summary_of(all, slow).map(|s| series::series_line(&s)));
        }
        l
    };
    for (i, b) in v.backends.iter().enumerate() {
        out.push_str(&format!(
            "  {:<24} {}\n",
            b.addr.to_string(),
            backend_finding(&b.finding)
        ));
        let all = ctx.collected.probes.get(i).map_or(&[][..], Vec::as_slice);
        let traffic = step3
            .and_then(|f| f.traffic.iter().find(|(a, _)| *a == b.addr))
            .map(|(_, r)| series::replies_line("in the traffic", r));
        for line in lines(all).into_iter().chain(traffic) {
            out.push_str(&format!("  {:<24} {line}\n", ""));
        }
    }
    if let Some(all) = ctx.collected.vip_probe.as_deref()
        && let Some(p) = all.first()
    {
        out.push_str(&format!(
            "  {:<24} (the VIP, from the LB host itself)\n",
            p.target.to_string(),
        ));
        let clients = step3
            .and_then(|f| f.clients.as_ref())
            .map(|r| series::replies_line("to clients", r));
        for line in lines(all).into_iter().chain(clients) {
            out.push_str(&format!("  {:<24} {line}\n", ""));
        }
    }
    out.push_str(&host_text(&ctx.collected.host));
    let c = &ctx.collected.counters;
    let drops: Vec<String> = drop_counts(&ctx)
        .iter()
        .map(|(r, n)| format!("{r} x{n}"))
        .collect();
    out.push_str(&format!(
        "\nkernel: {} events, {} lost{}\n",
        events.len(),
        c.lost(),
        if drops.is_empty() {
            String::new()
        } else {
            format!(", drops: {}", drops.join(", "))
        }
    ));
    if c.lost() > 0 {
        out.push_str("WARNING: events were lost (ring buffer full): verdicts may miss evidence\n");
    }
    if ctx.collected.decode_errors > 0 {
        out.push_str(&format!(
            "NOTE: {} kernel records did not decode (a version mismatch between lbtrace's programs and its userspace?)\n",
            ctx.collected.decode_errors
        ));
    }
    if ctx.collected.events_not_kept > 0 {
        out.push_str(&format!(
            "NOTE: {} events arrived after the first {} and were not kept: the verdict is about the connections of the first {:.1} s\n",
            ctx.collected.events_not_kept,
            ctx.collected.events_cap,
            events
                .last()
                .zip(events.first())
                .map_or(0.0, |(l, f)| l.ts_ns.saturating_sub(f.ts_ns) as f64 / 1e9)
        ));
    }
    out
}

pub fn print(ctx: Ctx<'_>, format: Format) {
    match format {
        Format::Json => println!("{}", json(ctx)),
        Format::Text => print!("{}", text(ctx)),
    }
}

// The words for the verdict engine's findings.

/// A step's finding in one sentence.
pub fn summary(s: &StepVerdict) -> String {
    let base = match &s.finding {
        // SYNs a full accept queue refused were dropped without a drop reason: "not dropped"
        // would contradict the headline.
        StepFinding::ClientToLb(ClientFinding::Reached {
            syns,
            connections,
            nat_dropped: 0,
        }) if s.host.iter().any(|h| h.status == Status::Fail) => {
            format!("{syns} SYN(s) from {connections} client connection(s) reached the LB")
        }
        _ => finding_summary(s),
    };
    // A host limit that fails the step is its headline; others follow the step's own finding.
    let (first, rest): (Vec<&HostFinding>, Vec<&HostFinding>) =
        s.host.iter().partition(|h| h.status == Status::Fail);
    let mut parts: Vec<String> = first.iter().map(|h| host_words(h)).collect();
    parts.push(base);
    parts.extend(rest.iter().map(|h| host_words(h)));
    parts.join("; ")
}

fn finding_summary(s: &StepVerdict) -> String {
    match &s.finding {
        StepFinding::ClientToLb(f) => client_summary(f),
        StepFinding::LbHandling(f) => handling_summary(f),
        StepFinding::LbToBackend(f) => match &s.unserved {
            Some(u) => format!("{}; {}", unserved_words(u), backends_summary(f)),
            None => backends_summary(f),
        },
        StepFinding::ReturnPath(f) => return_summary(f),
    }
}

/// The LB answering clients without any working backend connection, in words.
pub fn unserved_words(u: &Unserved) -> String {
    let refused = if u.refused > 0 {
        format!(
            "; this host's TCP stack saw {} connection(s) of the LB to backends refused (a reset received in SYN_SENT)",
            u.refused
        )
    } else {
        String::new()
    };
    format!(
        "the LB answers without any backend connection: {} of {} client connection(s) it answered were closed with no backend answering (within {} ms, or after every backend connection it tried failed) and no backend answered the LB: all backends down in the LB's view{refused}",
        u.connections,
        u.of,
        super::verdict::unserved::QUICK_CLOSE_NS / 1_000_000
    )
}

/// Who made the RSTs a step-1 or step-2 finding talks about.
fn rst_made_by(f: &StepFinding) -> Option<RstMaker> {
    match f {
        StepFinding::ClientToLb(ClientFinding::Dropped { rst_made_by, .. }) => *rst_made_by,
        StepFinding::LbHandling(HandlingFinding::NothingServes { rst_made_by, .. }) => *rst_made_by,
        StepFinding::LbHandling(
            HandlingFinding::Served { outcomes, .. } | HandlingFinding::Hang { outcomes, .. },
        ) => outcomes.rst_made_by,
        _ => None,
    }
}

/// `rst_made_by.by` in the JSON report.
pub fn rst_maker_key(m: RstMaker) -> &'static str {
    match m {
        RstMaker::NoSocket => "no_socket",
        RstMaker::TimeWait => "time_wait",
        RstMaker::SocketAbort => "socket_abort",
        RstMaker::SocketAnswer { .. } => "socket_answer",
        RstMaker::NotThisStack => "not_this_stack",
        RstMaker::NoSocketOrFirewall => "no_socket_or_firewall",
    }
}

/// Who made a RST, in words.
pub fn rst_maker_words(m: RstMaker) -> String {
    match m {
        RstMaker::NoSocket => {
            "this host's TCP stack: no socket for the segment (no listener on the VIP's port)"
                .to_owned()
        }
        RstMaker::TimeWait => {
            "this host's TCP stack: the segment hit a socket in TIME_WAIT".to_owned()
        }
        RstMaker::SocketAbort => "a socket of this host aborted (closed with unread data / SO_LINGER 0: the LB process reset it)".to_owned(),
        RstMaker::SocketAnswer { state } => format!(
            "this host's TCP stack, for a segment its socket in {} did not accept",
            crate::event::tcp_state_name(state)
        ),
        RstMaker::NotThisStack => {
            "not this host's TCP stack (a firewall reject rule, or forwarded from a backend)"
                .to_owned()
        }
        RstMaker::NoSocketOrFirewall => "not a socket of this host: no socket for the segment, or a firewall reject rule (this kernel's tcp:tcp_send_reset, before 6.10, does not tell which)".to_owned(),
    }
}

/// The next thing to check, when the finding calls for one.
pub fn next(s: &StepVerdict) -> Option<String> {
    let host_first = s
        .host
        .iter()
        .filter(|h| h.status == Status::Fail)
        .chain(s.host.iter().filter(|h| h.status == Status::Warn))
        .find_map(|h| host_next(&h.pressure));
    // A host limit that fails the step is what to look at first.
    if s.host.iter().any(|h| h.status == Status::Fail) {
        host_first.or_else(|| finding_next(s))
    } else {
        finding_next(s).or(host_first)
    }
}

fn finding_next(s: &StepVerdict) -> Option<String> {
    match &s.finding {
        StepFinding::ClientToLb(ClientFinding::NoSyn { vip, .. }) => Some(format!(
            "connect from a client in another subnet (telnet {} {}) while lbtrace runs; if nothing shows, bring this to the network team: check the route to {} and the firewalls on the way",
            vip.addr,
            vip.port.unwrap_or(0),
            vip.addr
        )),
        StepFinding::ClientToLb(ClientFinding::Dropped { reasons, .. }) => {
            Some(drop_advice(reasons))
        }
        StepFinding::ClientToLb(ClientFinding::Reached { .. }) => None,
        StepFinding::LbHandling(HandlingFinding::NothingServes { .. }) => Some(
            "check that the LB service is running and bound to the VIP (ss -ltn), or that its NAT rules match the VIP".to_owned(),
        ),
        StepFinding::LbHandling(
            HandlingFinding::Served { outcomes, .. } | HandlingFinding::Hang { outcomes, .. },
        ) if outcomes.unanswered > 0 => Some(
            "SYNs the LB neither answers nor forwards, with no drop reason: a full accept queue drops them silently (ss -ltn: Recv-Q against Send-Q on the VIP; TcpExt ListenOverflows); check the LB's maxconn, its listen backlog and whether its workers are saturated".to_owned(),
        ),
        StepFinding::LbHandling(
            HandlingFinding::Served { local: Some(l), .. }
            | HandlingFinding::Hang { local: Some(l), .. },
        ) if series::local_next(l).is_some() => series::local_next(l),
        StepFinding::LbHandling(HandlingFinding::Hang { .. }) => Some(
            "the LB is waiting for a backend: see step 3, and the LB's timeouts".to_owned(),
        ),
        StepFinding::LbHandling(_) => None,
        StepFinding::LbToBackend(_) if s.unserved.is_some() => Some(
            "the LB serves an error page at once: see its log for why every server is down (health checks failing, no route, every backend refusing) and each backend below".to_owned(),
        ),
        StepFinding::LbToBackend(f) => {
            let base = match f.backends {
                BackendsFinding::NoBackends => {
                    Some("pass the backends with --backend ADDR:PORT".to_owned())
                }
                BackendsFinding::AllReachable { .. }
                    if !f.degraded.is_empty() || f.traffic_degraded() =>
                {
                    Some(
                    "the backends listed connect but serve errors or late: their own logs say why (the LB passes their errors and delays on to the clients)".to_owned(),
                    )
                }
                BackendsFinding::AllReachable { .. } => None,
                BackendsFinding::Unreachable { .. } => Some(
                    "bring the evidence to the server or firewall team of each backend listed"
                        .to_owned(),
                ),
            };
            base.or_else(|| f.forward_drops.as_ref().map(forward_drop_advice))
        }
        StepFinding::ReturnPath(ReturnFinding::Bypass { .. }) => Some(
            "check the backends' default gateway (it must be the LB), or enable SNAT on the LB"
                .to_owned(),
        ),
        StepFinding::ReturnPath(ReturnFinding::DirectReturn {
            connections,
            finished,
        }) if finished < connections => Some("on each backend: does it hold the VIP (on lo, with arp_ignore=1 / arp_announce=2 so it does not answer ARP for it), does a service listen on VIP:port, and does its route to the client work? Capture there: the replies leave it, not the LB".to_owned()),
        StepFinding::ReturnPath(ReturnFinding::SynAcksLost { .. }) => Some("the return path from the LB to the client drops them: check routing and firewalls between the LB and the client (asymmetric routing?)".to_owned()),
        StepFinding::ReturnPath(ReturnFinding::MtuBlackHole { .. }) => Some("let ICMP fragmentation-needed (type 3 code 4; ICMPv6 packet too big) through the routers and firewalls between the LB and the client, or clamp the MSS toward clients on the LB (nftables: tcp flags syn tcp option maxseg size set rt mtu)".to_owned()),
        StepFinding::ReturnPath(ReturnFinding::Stalled { side: Side::Client, .. }) => Some("capture on the client side: does the data arrive, and do its ACKs leave? (a firewall or NIC offload between the LB and the client dropping segments)".to_owned()),
        StepFinding::ReturnPath(ReturnFinding::Stalled { side: Side::Backend, .. }) => Some("look at the backends named in the evidence: overloaded, or segments lost between the LB and them".to_owned()),
        StepFinding::ReturnPath(ReturnFinding::NotAcknowledged { .. }) => {
            Some("let the client finish its request, or observe longer (--observe)".to_owned())
        }
        StepFinding::ReturnPath(_) => None,
    }
}

fn client_summary(f: &ClientFinding) -> String {
    match f {
        ClientFinding::NoSyn {
            vip,
            client,
            window_secs,
        } => {
            let who = client.map_or_else(|| "clients".to_owned(), |c| format!("client {}", c.addr));
            format!(
                "no SYN to {vip} from {who} arrived at the LB in {window_secs:.0} s: if a client was connecting, the problem is upstream (routing, or a firewall before the LB)"
            )
        }
        ClientFinding::Dropped {
            connections,
            of,
            reasons,
            rst_made_by,
        } => format!(
            "clients' SYNs reach the LB but the LB host drops them: {connections} connection(s) of {of} dropped ({reasons}){}",
            rst_made_by
                .map(|m| format!("; the clients got RSTs made by {}", rst_maker_words(m)))
                .unwrap_or_default()
        ),
        ClientFinding::Reached {
            syns,
            connections,
            nat_dropped: 0,
        } => format!(
            "{syns} SYN(s) from {connections} client connection(s) reached the LB and were not dropped"
        ),
        ClientFinding::Reached {
            syns,
            connections,
            nat_dropped,
        } => format!(
            "{syns} SYN(s) from {connections} client connection(s) reached the LB and its stack took them in; {nat_dropped} connection(s) were NATed toward a backend and then dropped by the LB host (see steps 2 and 3)"
        ),
    }
}

/// What to do about client SYNs the LB host NATed and then dropped, by their drop reasons.
fn forward_drop_advice(reasons: &ReasonCounts) -> String {
    let mut advice = Vec::new();
    if reasons.0.iter().any(|(r, _)| r.contains("INADDRERRORS")) {
        advice.push("IP_INADDRERRORS after NAT: the LB host does not forward (net.ipv4.ip_forward / net.ipv6.conf.all.forwarding = 0), or the NATed address is not routable from it");
    }
    if reasons.any(DropClass::Netfilter) {
        advice.push("NETFILTER_DROP: the LB host's forward chain drops them (nft list ruleset)");
    }
    if reasons.any(DropClass::Neigh) {
        advice.push("NEIGH_FAILED: the backend does not answer ARP/ND (host down, wrong VLAN)");
    }
    if reasons.any(DropClass::NoRoute) {
        advice.push("IP_OUTNOROUTES: the LB host has no route to the backend");
    }
    if advice.is_empty() {
        return format!(
            "the kernel drops them ({reasons}): look the reason up in include/net/dropreason-core.h"
        );
    }
    advice.join("; ")
}

fn drop_advice(reasons: &ReasonCounts) -> String {
    if reasons.any(DropClass::Netfilter) {
        "the LB host's own firewall (nftables/iptables) drops them: list the rules (nft list ruleset) and allow the VIP".to_owned()
    } else if reasons.any(DropClass::RpFilter) {
        "reverse-path filtering drops them: the LB has no route back to the client through that interface (check rp_filter and routes)".to_owned()
    } else if reasons.any(DropClass::Backlog) {
        "the listening socket's accept queue is full: the LB software does not accept fast enough"
            .to_owned()
    } else {
        format!(
            "the kernel drops them ({reasons}): look the reason up in include/net/dropreason-core.h"
        )
    }
}

fn mode_sentence(mode: Mode, unchanged: bool) -> &'static str {
    match mode {
        Mode::L4 if unchanged => {
            "Layer 4: the client's SYN is forwarded unchanged, still to the VIP (no NAT: routed to a backend that holds the VIP, as ECMP or IPVS direct routing do)"
        }
        Mode::L4 => "Layer 4: the client's SYN is forwarded to a backend with its ISN (NAT)",
        Mode::L7 => "Layer 7: the LB completes the handshake itself before any backend connection",
        Mode::Unknown => "mode unknown",
    }
}

/// How the accepted connections ended, as a list.
fn outcome_words(mode: Mode, o: &Outcomes) -> Vec<String> {
    let immediate = if mode == Mode::L4 {
        "reset before any data (at Layer 4, the backend refusing)"
    } else {
        "reset right after the handshake"
    };
    [
        (
            o.rst_after_request,
            "connection(s) reset by the LB after the request",
        ),
        (o.rst_immediate, immediate),
        (o.closed_empty, "closed by the LB without a response"),
        (o.answered_closed, "answered and closed"),
        (o.kernel_refused, "refused by the kernel (NO_SOCKET)"),
        (o.unanswered, "unanswered"),
        (
            o.nat_dropped,
            "NATed toward a backend, then dropped by the LB host before leaving (see step 3)",
        ),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, words)| format!("{n} {words}"))
    .chain(
        o.rst_made_by
            .filter(|_| o.rst_after_request + o.rst_immediate > 0)
            .map(|m| format!("the LB's RST made by {}", rst_maker_words(m))),
    )
    .collect()
}

fn local_words(local_http: Option<u16>, local: Option<&LocalService>) -> String {
    if let Some(l) = local {
        return series::local_words(l);
    }
    local_http
        .map(|s| format!("; the LB host's own request to the VIP got HTTP {s}"))
        .unwrap_or_default()
}

fn handling_summary(f: &HandlingFinding) -> String {
    match f {
        HandlingFinding::NoConnection => {
            "no client connection reached the LB's stack: nothing to judge".to_owned()
        }
        HandlingFinding::NothingServes {
            vip,
            kernel_refused,
            rst_made_by,
        } => {
            let what = if *kernel_refused {
                format!(
                    "the LB host's kernel answers SYNs to {vip} with RST (no socket listens there, drop NO_SOCKET)"
                )
            } else {
                format!("SYNs to {vip} get no answer and are not forwarded to any backend")
            };
            let by = rst_made_by
                .map(|m| format!("; the RSTs were made by {}", rst_maker_words(m)))
                .unwrap_or_default();
            format!("nothing serves the VIP: {what}{by}")
        }
        HandlingFinding::Served {
            mode,
            unchanged,
            connections,
            outcomes,
            local_http,
            local,
        } => {
            let extra = outcome_words(*mode, outcomes);
            format!(
                "{}{}; of {connections} connection(s): {}{}",
                failed_share(outcomes, *connections),
                mode_sentence(*mode, *unchanged),
                if extra.is_empty() {
                    "served".to_owned()
                } else {
                    extra.join(", ")
                },
                local_words(*local_http, local.as_ref())
            )
        }
        HandlingFinding::Hang {
            mode,
            unchanged,
            hang,
            outcomes,
            local_http,
            local,
        } => format!(
            "{}; {hang} connection(s) hang: the LB accepted the request and sent nothing back ({}){}",
            mode_sentence(*mode, *unchanged),
            outcome_words(*mode, outcomes).join(", "),
            local_words(*local_http, local.as_ref())
        ),
    }
}

/// The share of connections that failed at step 2, first when there is one.
fn failed_share(o: &Outcomes, connections: usize) -> String {
    let mut parts = Vec::new();
    if o.unanswered > 0 {
        parts.push(format!(
            "{} of {connections} client connection(s) got no SYN-ACK (the LB neither answered nor forwarded them)",
            o.unanswered
        ));
    }
    if o.kernel_refused > 0 {
        parts.push(format!(
            "{} of {connections} client connection(s) refused by the LB host's kernel (RST, NO_SOCKET)",
            o.kernel_refused
        ));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{}; ", parts.join("; "))
    }
}

fn backends_summary(f: &LbToBackend) -> String {
    let base = match &f.backends {
        BackendsFinding::NoBackends => "no --backend given: nothing to probe".to_owned(),
        BackendsFinding::AllReachable { backends } if !f.degraded.is_empty() => format!(
            "the LB reaches all {backends} backend(s), but {} of {backends} serve(s) badly ({})",
            f.degraded.len(),
            degraded_list(f)
        ),
        BackendsFinding::AllReachable { backends } => {
            format!("the LB reaches all {backends} backend(s)")
        }
        BackendsFinding::Unreachable { down, of } => {
            let list: Vec<String> = down
                .iter()
                .map(|(addr, b)| format!("{addr}: {}", backend_finding(b)))
                .collect();
            let also = if f.degraded.is_empty() {
                String::new()
            } else {
                format!("; reachable but serving badly: {}", degraded_list(f))
            };
            format!(
                "{} of {of} backend(s) not reachable from the LB ({}){also}",
                down.len(),
                list.join("; ")
            )
        }
    };
    let base = format!("{base}{}", traffic_words(f));
    let Some(reasons) = &f.forward_drops else {
        return base;
    };
    // Client SYNs NATed towards a backend and dropped by the LB host on the way.
    let why = format!("the LB host drops client SYNs forwarded to the backends ({reasons})");
    if matches!(f.backends, BackendsFinding::Unreachable { .. }) {
        format!("{base}; {why}")
    } else {
        why
    }
}

/// `--data`: `; 10.0.0.3:8080 slow from the traffic: ...; clients wait ...`, empty when the
/// traffic shows nothing wrong.
fn traffic_words(f: &LbToBackend) -> String {
    let mut parts: Vec<String> = f
        .traffic
        .iter()
        .filter_map(|(addr, r)| Some(format!("{addr} {}", series::replies_words(r)?)))
        .collect();
    let backends: Vec<&Replies> = f.traffic.iter().map(|(_, r)| r).collect();
    parts.extend(
        f.clients
            .as_ref()
            .and_then(|c| series::where_time_goes(c, &backends)),
    );
    parts.iter().map(|p| format!("; {p}")).collect()
}

/// `10.0.0.2:8080 answers HTTP 500 (...); 10.0.0.3:8080 slow: ...`.
fn degraded_list(f: &LbToBackend) -> String {
    f.degraded
        .iter()
        .map(|(addr, b)| format!("{addr} {}", backend_finding(b)))
        .collect::<Vec<_>>()
        .join("; ")
}

/// One backend's probe result in words, with its reason.
pub fn backend_finding(f: &BackendFinding) -> String {
    let paren = |r: &ReasonCounts| {
        if r.is_empty() {
            String::new()
        } else {
            format!(" ({r})")
        }
    };
    match f {
        BackendFinding::NotProbed => "not probed".to_owned(),
        BackendFinding::Connected { http: Some(s) } => format!("connected, HTTP {s}"),
        BackendFinding::Connected { http: None } => "connected".to_owned(),
        BackendFinding::Erroring { .. }
        | BackendFinding::Hangs { .. }
        | BackendFinding::Drops { .. }
        | BackendFinding::Slow { .. } => series::degraded_words(f).unwrap_or_default(),
        BackendFinding::Refused => {
            "refused: nothing listening (the backend answered the SYN with RST)".to_owned()
        }
        BackendFinding::HostDown { addr, reasons } => {
            format!("host down: ARP/neighbour resolution for {addr} failed ({reasons})")
        }
        BackendFinding::NoRoute { addr, reasons } => {
            format!("no route from the LB to {addr}{}", paren(reasons))
        }
        BackendFinding::Icmp { what, from } => format!("unreachable: {what} (ICMP from {from})"),
        BackendFinding::NeighbourDiscoveryFailed { addr, reasons } => format!(
            "host down: neighbour discovery for {addr} failed (no SYN left the LB; the kernel drops the queued SYN as {reasons})"
        ),
        BackendFinding::LocalDrop { reasons } => {
            format!("the LB host drops its own SYNs ({reasons})")
        }
        BackendFinding::Filtered { syns_out } => format!(
            "filtered: {syns_out} SYN(s) left the LB, nothing came back (a firewall drops them, or the host is down behind a router)"
        ),
        BackendFinding::TimeoutNoSyn => "timeout: no SYN was seen leaving the LB".to_owned(),
        BackendFinding::Unreachable { why } => format!("unreachable ({why})"),
        BackendFinding::ProbeError { why } => format!("probe error: {why}"),
    }
}

fn pct(n: usize, of: usize) -> String {
    if n == of {
        format!("{n}")
    } else {
        format!("{n} of {of}")
    }
}

fn return_summary(f: &ReturnFinding) -> String {
    match f {
        ReturnFinding::Bypass {
            connections,
            backends,
        } => format!(
            "backend replies do not come back through the LB: {connections} client SYN(s) forwarded to {} got no SYN-ACK through the LB, while the backend answers the LB's own probe: its replies bypass the LB",
            backends.join(", ")
        ),
        ReturnFinding::DirectReturn {
            connections,
            finished,
        } if finished == connections => format!(
            "direct server return: the LB forwarded {connections} client SYN(s) without NAT (still to the VIP) and no reply came back through it, yet every client went on and closed its connection: the backends answer the clients directly, as such an LB is built to"
        ),
        ReturnFinding::DirectReturn {
            connections,
            finished,
        } => format!(
            "direct server return: the LB forwarded {connections} client SYN(s) without NAT (still to the VIP), no reply came back through it, and {} of them never went on (no FIN from the client): the backend's replies, which go around the LB, did not reach those clients",
            connections - finished
        ),
        ReturnFinding::NothingAnswered => {
            "no SYN-ACK left the LB towards a client: nothing to judge".to_owned()
        }
        ReturnFinding::SynAcksLost { clients } => format!(
            "the LB's replies do not reach the client: the LB sent SYN-ACKs, and {clients} client(s) kept retransmitting their SYN"
        ),
        ReturnFinding::MtuBlackHole {
            connections,
            full_size,
            small,
            client_mss,
            lb_mss,
            forwarded,
        } => {
            let mss = |m: &Option<u16>| m.map_or_else(|| "not seen".to_owned(), |m| m.to_string());
            // Layer 4 (`--data`): the backend's segments, forwarded by the LB.
            let (what, sender) = if *forwarded {
                (
                    "forwarded full-size segments",
                    "the backend sends segments of",
                )
            } else {
                ("full-size segments", "the LB sends segments of")
            };
            let small = if *small == 0 {
                String::new()
            } else {
                format!(" ({small} small)")
            };
            format!(
                "replies leave the LB toward the client and are never acknowledged: {what} retransmitted {full_size} times{small} in {connections} connection(s) while small ones pass, no ICMP fragmentation-needed seen: a path-MTU black hole between the LB and the client; compare the MSS the client advertised ({}) with the path ({sender} {})",
                mss(client_mss),
                mss(lb_mss)
            )
        }
        ReturnFinding::Stalled {
            side,
            connections,
            retransmissions,
            full_size,
            frag_needed,
        } => {
            let (who, whom) = match side {
                Side::Client => ("the client", "toward the client"),
                Side::Backend => ("the backend", "toward a backend"),
            };
            let icmp = if *frag_needed {
                "; ICMP fragmentation-needed came back, so path-MTU discovery works: not an MTU problem"
            } else {
                ""
            };
            format!(
                "segments from the LB {whom} stall: retransmitted {retransmissions} times ({full_size} full-size) in {connections} connection(s) and not acknowledged: {who} (or the path to it) stopped acknowledging{icmp}"
            )
        }
        ReturnFinding::NotAcknowledged { syn_acks } => format!(
            "{syn_acks} SYN-ACK(s) left the LB; no client acknowledgement seen yet (connections still open?)"
        ),
        ReturnFinding::Acknowledged {
            proven,
            answered,
            via_backend,
            retransmitted,
        } => {
            let back = if *via_backend > 0 {
                format!(
                    "; backend SYN-ACKs came back through the LB ({})",
                    pct(*via_backend, *answered)
                )
            } else {
                String::new()
            };
            let partial = if *retransmitted == 0 {
                String::new()
            } else {
                format!("; but {retransmitted} client(s) retransmitted their SYN after the SYN-ACK")
            };
            format!(
                "{proven} of {answered} client connection(s) acknowledged the SYN-ACK{back}{partial}"
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(finding: StepFinding) -> StepVerdict {
        StepVerdict {
            step: Step::ClientToLb,
            status: finding.status(),
            finding,
            evidence: Vec::new(),
            blocked_by: None,
            host: Vec::new(),
            unserved: None,
        }
    }

    #[test]
    fn client_findings_in_words() {
        let s = step(StepFinding::ClientToLb(ClientFinding::Dropped {
            connections: 1,
            of: 2,
            reasons: ReasonCounts(vec![("NETFILTER_DROP".into(), 3), ("X".into(), 1)]),
            rst_made_by: None,
        }));
        assert_eq!(
            summary(&s),
            "clients' SYNs reach the LB but the LB host drops them: 1 connection(s) of 2 dropped (NETFILTER_DROP x3, X x1)"
        );
        assert!(next(&s).unwrap().contains("firewall"));
        // A reject rule: the SYN is dropped and answered, not by the TCP stack.
        let s = step(StepFinding::ClientToLb(ClientFinding::Dropped {
            connections: 1,
            of: 1,
            reasons: ReasonCounts(vec![("NETFILTER_DROP".into(), 1)]),
            rst_made_by: Some(RstMaker::NotThisStack),
        }));
        assert_eq!(
            summary(&s),
            "clients' SYNs reach the LB but the LB host drops them: 1 connection(s) of 1 dropped (NETFILTER_DROP x1); the clients got RSTs made by not this host's TCP stack (a firewall reject rule, or forwarded from a backend)"
        );
        assert_eq!(
            rst_made_by(&s.finding).map(rst_maker_key),
            Some("not_this_stack")
        );
        let s = step(StepFinding::ClientToLb(ClientFinding::NoSyn {
            vip: "10.0.0.1:80".parse().unwrap(),
            client: Some("10.9.9.9".parse().unwrap()),
            window_secs: 10.0,
        }));
        assert!(
            summary(&s).starts_with(
                "no SYN to 10.0.0.1:80 from client 10.9.9.9 arrived at the LB in 10 s"
            ) && summary(&s).contains("upstream"),
            "{}",
            summary(&s)
        );
        assert!(next(&s).unwrap().contains("telnet 10.0.0.1 80"));
    }

    #[test]
    fn forward_drops_join_the_backend_summary() {
        let down = BackendsFinding::Unreachable {
            down: vec![("10.0.0.2:8080".parse().unwrap(), BackendFinding::Refused)],
            of: 2,
        };
        let s = step(StepFinding::LbToBackend(LbToBackend {
            backends: down,
            forward_drops: Some(ReasonCounts(vec![("NEIGH_FAILED".into(), 2)])),
            degraded: Vec::new(),
            traffic: Vec::new(),
            clients: None,
        }));
        assert_eq!(
            summary(&s),
            "1 of 2 backend(s) not reachable from the LB (10.0.0.2:8080: refused: nothing listening (the backend answered the SYN with RST)); the LB host drops client SYNs forwarded to the backends (NEIGH_FAILED x2)"
        );
        let s = step(StepFinding::LbToBackend(LbToBackend {
            backends: BackendsFinding::NoBackends,
            forward_drops: Some(ReasonCounts(vec![("NEIGH_FAILED".into(), 1)])),
            degraded: Vec::new(),
            traffic: Vec::new(),
            clients: None,
        }));
        assert_eq!(s.status, Status::Fail);
        assert_eq!(
            next(&s).as_deref(),
            Some("pass the backends with --backend ADDR:PORT")
        );
    }

    #[test]
    fn replies_in_the_traffic_say_where_the_time_goes() {
        use crate::replies::{Reply, judge};
        let slow = std::time::Duration::from_secs(1);
        let replies = |from: &str, ttfb: &[f64], status: u16| -> Vec<Reply> {
            ttfb.iter()
                .enumerate()
                .map(|(i, &ttfb_ms)| Reply {
                    ts_ns: 0,
                    from: from.parse().unwrap(),
                    to: format!("10.0.0.1:{}", 40000 + i).parse().unwrap(),
                    ttfb_ms,
                    status: Some(status),
                })
                .collect()
        };
        let be1 = judge(
            &replies("10.0.0.2:8080", &[1900.0, 2000.0, 2100.0], 200),
            slow,
        );
        let be2 = judge(&replies("10.0.0.3:8080", &[2.0, 3.0, 4.0], 200), slow);
        let finding = |clients: &[f64]| LbToBackend {
            backends: BackendsFinding::AllReachable { backends: 2 },
            forward_drops: None,
            degraded: Vec::new(),
            traffic: vec![
                ("10.0.0.2:8080".parse().unwrap(), be1.clone()),
                ("10.0.0.3:8080".parse().unwrap(), be2.clone()),
            ],
            clients: Some(judge(&replies("10.0.0.10:80", clients, 200), slow)),
        };
        let s = step(StepFinding::LbToBackend(finding(&[2100.0, 2100.0, 2200.0])));
        assert_eq!(s.status, Status::Warn);
        assert_eq!(
            summary(&s),
            "the LB reaches all 2 backend(s); 10.0.0.2:8080 slow from the traffic: time to first byte median 2 s (min 1.9 s, max 2.1 s) over 3 replies past --slow 1 s; clients wait 2.1 s (median, max 2.2 s) at the VIP; backends answer in 2 s: the time is the backends'"
        );
        assert!(next(&s).is_some_and(|n| n.contains("serve errors or late")));
        // Backends fast, clients slow: the LB adds the time.
        let mut f = finding(&[3000.0, 3000.0, 3000.0]);
        f.traffic = vec![("10.0.0.3:8080".parse().unwrap(), be2.clone())];
        let s = step(StepFinding::LbToBackend(f));
        assert!(
            summary(&s).ends_with(
                "clients wait 3 s (median, max 3 s) at the VIP; backends answer in 3.0 ms: the LB adds 3 s"
            ),
            "{}",
            summary(&s)
        );
        // Only the requests a slow backend got waited: the clients' longest wait is compared.
        let s = step(StepFinding::LbToBackend(finding(&[2.0, 3.0, 2100.0])));
        assert!(
            summary(&s).ends_with(
                "clients wait 3.0 ms (median, max 2.1 s) at the VIP; backends answer in 2 s: the time is the backends'"
            ),
            "{}",
            summary(&s)
        );
        // The backend list's line.
        assert_eq!(
            series::replies_line("in the traffic", &be1),
            "3 replies in the traffic, first byte median 2 s (min 1.9 s, max 2.1 s), HTTP 5xx 0 of 3: slow"
        );
        // 5xx replies: in words, with the share.
        let err = judge(&replies("10.0.0.3:8080", &[2.0, 3.0, 4.0], 503), slow);
        assert_eq!(
            series::replies_words(&err).as_deref(),
            Some(
                "answers HTTP 503 in the traffic (3 of 3 HTTP replies are 5xx; time to first byte median 3.0 ms (min 2.0 ms, max 4.0 ms))"
            )
        );
    }

    #[test]
    fn forwarded_drops_get_the_advice_of_their_reasons() {
        let r = |v: &[(&str, usize)]| {
            ReasonCounts(v.iter().map(|(n, c)| ((*n).to_owned(), *c)).collect())
        };
        let a = forward_drop_advice(&r(&[("IP_INADDRERRORS", 9)]));
        assert!(
            a.contains("ip_forward") && !a.contains("NEIGH_FAILED"),
            "{a}"
        );
        let a = forward_drop_advice(&r(&[("NEIGH_FAILED", 2), ("IP_OUTNOROUTES", 1)]));
        assert!(a.contains("ARP/ND") && a.contains("no route") && !a.contains("ip_forward"));
        let a = forward_drop_advice(&r(&[("SKB_CSUM", 1)]));
        assert!(
            a.contains("SKB_CSUM") && a.contains("dropreason-core.h"),
            "{a}"
        );
    }

    #[test]
    fn the_unserved_finding_leads_step_three() {
        let mut s = step(StepFinding::LbToBackend(LbToBackend {
            backends: BackendsFinding::Unreachable {
                down: vec![("10.0.0.2:8080".parse().unwrap(), BackendFinding::Refused)],
                of: 1,
            },
            forward_drops: None,
            degraded: Vec::new(),
            traffic: Vec::new(),
            clients: None,
        }));
        s.unserved = Some(Unserved {
            connections: 3,
            of: 4,
            refused: 0,
        });
        let words = "the LB answers without any backend connection: 3 of 4 client connection(s) it answered were closed with no backend answering (within 500 ms, or after every backend connection it tried failed) and no backend answered the LB: all backends down in the LB's view";
        assert!(summary(&s).starts_with(&format!("{words}; 1 of 1")));
        s.unserved = Some(Unserved {
            connections: 3,
            of: 4,
            refused: 2,
        });
        assert!(summary(&s).starts_with(&format!("{words}; this host's TCP stack saw 2 connection(s) of the LB to backends refused (a reset received in SYN_SENT); 1 of 1")), "{}", summary(&s));
        s.unserved = Some(Unserved {
            connections: 3,
            of: 4,
            refused: 0,
        });
        assert_eq!(
            summary(&s),
            "the LB answers without any backend connection: 3 of 4 client connection(s) it answered were closed with no backend answering (within 500 ms, or after every backend connection it tried failed) and no backend answered the LB: all backends down in the LB's view; 1 of 1 backend(s) not reachable from the LB (10.0.0.2:8080: refused: nothing listening (the backend answered the SYN with RST))"
        );
        assert!(next(&s).is_some_and(|n| n.contains("error page")));
    }

    #[test]
    fn partial_failures_and_host_limits_in_words() {
        use crate::host::{Listen, Moved, Pressure};
        let outcomes = Outcomes {
            answered_closed: 3,
            unanswered: 3,
            ..Outcomes::default()
        };
        let mut s = step(StepFinding::LbHandling(HandlingFinding::Served {
            mode: Mode::L7,
            unchanged: false,
            connections: 6,
            outcomes,
            local_http: None,
            local: None,
        }));
        assert_eq!(s.status, Status::Fail);
        assert!(
            summary(&s).starts_with("3 of 6 client connection(s) got no SYN-ACK"),
            "{}",
            summary(&s)
        );
        assert!(next(&s).unwrap().contains("accept queue"));
        let moved = |n: &str| Moved {
            counter: n.to_owned(),
            before: 5,
            after: 23,
        };
        s.host = vec![HostFinding {
            pressure: Pressure::AcceptQueueFull {
                listener: Some(Listen {
                    listener: "10.10.2.10:80".parse().unwrap(),
                    depth: 2,
                    backlog: 2,
                }),
                counters: vec![moved("TcpExt.ListenOverflows")],
            },
            status: Status::Fail,
            unanswered: Some((3, 6)),
        }];
        assert!(
            summary(&s).starts_with("the LB process does not accept fast enough: accept queue full (Recv-Q 2/2 on 10.10.2.10:80, ListenOverflows +18): 3 of 6 client connection(s) got no SYN-ACK; "),
            "{}",
            summary(&s)
        );
        assert!(next(&s).unwrap().contains("maxconn"));
        assert_eq!(
            host_evidence(&s.host[0].pressure)[0],
            "TcpExt.ListenOverflows 5 -> 23 (+18)"
        );
        let j = host_finding_json(&s.host[0]);
        assert_eq!(j["kind"], "accept_queue_full");
        assert_eq!(j["counters"][0]["before"], 5);
        assert_eq!(j["counters"][0]["after"], 23);
        assert_eq!(
            (j["step"].as_u64(), j["status"].as_str()),
            (Some(1), Some("fail"))
        );
    }

    #[test]
    fn a_stalled_leg_in_words() {
        let mut t = TcpInfoSnapshot {
            local: "10.10.1.1:80".parse().unwrap(),
            remote: "10.10.1.2:40312".parse().unwrap(),
            ts_ns: 0,
            retransmissions: 3,
            info: crate::host::diag::TcpInfo {
                pmtu: Some(1500),
                snd_mss: Some(1448),
                unacked: Some(12),
                lost: Some(10),
                total_retrans: Some(25),
                retransmits: Some(0),
                rtt_us: Some(400),
                ..Default::default()
            },
        };
        assert_eq!(
            tcp_info_words(&t, Side::Client),
            "the LB's socket to client 10.10.1.2:40312: path MTU 1500, MSS 1448, 12 segment(s) unacknowledged, 10 lost, 25 retransmitted, RTT 0.4 ms"
        );
        t.info = crate::host::diag::TcpInfo {
            retransmits: Some(4),
            rto_us: Some(3_200_000),
            ..Default::default()
        };
        assert_eq!(
            tcp_info_words(&t, Side::Backend),
            "the LB's socket to backend 10.10.1.2:40312: 4 timeout(s) in a row, RTO 3200 ms"
        );
    }
}
