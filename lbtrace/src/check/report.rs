//! The check report: a short text a human reads top to bottom, or one JSON object
//! (docs/output.md). Evidence is printed as `trace` prints events, times relative to the first.

use serde_json::{Value, json};

use super::{
    Collected,
    verdict::{Mode, Status, Verdict},
};
use crate::{
    endpoint::Endpoint,
    kernel::btf::DropReasons,
    probe::{HttpOutcome, ProbeReport},
    render::{self, Clock, Format, IfNames},
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
                "step": s.step, "name": s.name, "status": status_str(s.status), "summary": s.summary,
                "next": s.next, "evidence": ev_json(&s.evidence, &mut ctx.ifnames),
            });
            if let Some(b) = s.blocked_by {
                o["blocked_by"] = json!(b);
            }
            o
        })
        .collect();
    let backends: Vec<Value> = v
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let p = ctx.collected.probes.get(i);
            json!({
                "addr": b.addr.to_string(),
                "tcp": p.map(|p| p.tcp.name()),
                "http_status": p.and_then(http_status),
                "tls": p.and_then(|p| p.tls.as_ref()),
                "finding": b.finding,
                "probe": p,
                "evidence": ev_json(&b.evidence, &mut ctx.ifnames),
            })
        })
        .collect();
    let c = &ctx.collected.counters;
    json!({
        "vip": ctx.vip.to_string(),
        "mode": mode_str(v.mode),
        "first_failed_step": v.first_failed_step,
        "observed_seconds": (ctx.collected.window.as_secs_f64() * 10.0).round() / 10.0,
        "steps": steps,
        "backends": backends,
        "vip_probe": ctx.collected.vip_probe.as_ref().map(|p| json!({"local": true, "probe": p, "tcp": p.tcp.name(), "http_status": http_status(p)})),
        "kernel": {
            "events": events.len(),
            "lost": c.lost(),
            "drops": drop_counts(&ctx).iter().map(|(r, n)| json!({"reason": r, "count": n})).collect::<Vec<_>>(),
        },
    })
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
            s.step,
            s.name,
            s.summary
        ));
        if let Some(b) = s.blocked_by {
            out.push_str(&format!("            blocked by the failure of step {b}\n"));
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
        if let Some(n) = &s.next {
            out.push_str(&format!("            next: {n}\n"));
        }
    }
    out.push_str("\nbackends (probed from the LB host):\n");
    for (i, b) in v.backends.iter().enumerate() {
        let line = ctx
            .collected
            .probes
            .get(i)
            .map(probe_line)
            .unwrap_or_default();
        out.push_str(&format!("  {:<24} {}\n", b.addr.to_string(), b.finding));
        out.push_str(&format!("  {:<24} {line}\n", ""));
    }
    if let Some(p) = &ctx.collected.vip_probe {
        out.push_str(&format!(
            "  {:<24} (the VIP, from the LB host itself) {}\n",
            p.target.to_string(),
            probe_line(p)
        ));
    }
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
    out
}

pub fn print(ctx: Ctx<'_>, format: Format) {
    match format {
        Format::Json => println!("{}", json(ctx)),
        Format::Text => print!("{}", text(ctx)),
    }
}
