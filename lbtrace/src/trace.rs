//! `lbtrace trace`: the live event stream, lbtrace's tcpdump.
//!
//! Attach, then drain the rings on every wakeup or timer tick, decode, order by time and print;
//! on SIGINT / SIGTERM / `--duration`, detach, drain once more and print the summary.

use std::{
    future::Future,
    io::{BufWriter, Write as _},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use serde_json::json;

use crate::{
    cli::{FilterArgs, TraceArgs},
    endpoint::{Role, Watched},
    event::{self, KernelEvent},
    kernel::{self, Tracer, TracerConfig, counters::Counters},
    netif,
    render::{self, Clock, Format, IfNames},
};

/// Validates the filter flags against this namespace and turns them into a tracer config.
pub fn tracer_config(filter: &FilterArgs) -> Result<TracerConfig> {
    let links = netif::links()?;
    let mut endpoints: Vec<Watched> = Vec::new();
    for (e, role) in filter
        .vip
        .iter()
        .map(|e| (e, Role::Vip))
        .chain(filter.backend.iter().map(|e| (e, Role::Backend)))
    {
        if !endpoints.iter().any(|w| w.endpoint == *e) {
            endpoints.push(Watched { endpoint: *e, role });
        }
    }
    let names = if filter.iface.is_empty() {
        let vips: Vec<_> = filter.vip.iter().map(|e| e.addr).collect();
        let backends: Vec<_> = filter.backend.iter().map(|e| e.addr).collect();
        let found = netif::default_ifaces(&links, &vips, &backends)?;
        if found.is_empty() {
            bail!(
                "no interface in this network namespace carries traffic for the given addresses (no address or route matches): pass --iface NAME"
            );
        }
        found
    } else {
        filter.iface.clone()
    };
    let mut ifaces = Vec::new();
    for name in names {
        let Some(link) = links.iter().find(|l| l.name == name) else {
            bail!(
                "unknown interface {name:?}: no such interface in this network namespace (see `ip link`)"
            );
        };
        ifaces.push(link.clone());
    }
    Ok(TracerConfig {
        endpoints,
        ifaces,
        xdp: filter.xdp,
        ring_bytes: filter.ring_size << 20,
        priority_ring_bytes: 1 << 20,
    })
}

/// Says on stderr what is traced where.
pub fn announce(tracer: &Tracer) {
    let eps: Vec<String> = tracer
        .endpoints
        .iter()
        .map(|w| format!("{} ({:?})", w.endpoint, w.role).to_lowercase())
        .collect();
    let mut per_iface: Vec<(String, Vec<&str>)> = Vec::new();
    for a in &tracer.attachments {
        match per_iface.iter_mut().find(|(n, _)| *n == a.iface) {
            Some((_, hooks)) => hooks.push(a.hook),
            None => per_iface.push((a.iface.clone(), vec![a.hook])),
        }
    }
    let ifs: Vec<String> = per_iface
        .iter()
        .map(|(n, h)| format!("{n} ({})", h.join(", ")))
        .collect();
    eprintln!("lbtrace: watching {}", eps.join(", "));
    eprintln!(
        "lbtrace: attached to {}; kernel drops via skb:kfree_skb",
        ifs.join(", ")
    );
    for note in &tracer.notes {
        eprintln!("lbtrace: note: {note}");
    }
}

pub fn write_ready_file(path: Option<&std::path::Path>) -> Result<()> {
    if let Some(p) = path {
        std::fs::write(p, b"ready\n")
            .with_context(|| format!("creating the ready file {}", p.display()))?;
    }
    Ok(())
}

/// Resolves after `--duration`, or never.
pub async fn deadline(duration: Option<std::time::Duration>) {
    match duration {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Decodes every unread record, oldest first.
pub fn drain(rings: &mut kernel::rings::Rings, decode_errors: &mut u64) -> Vec<KernelEvent> {
    let mut batch = Vec::new();
    rings.drain(|rec| match event::decode(rec) {
        Ok(ev) => batch.push(ev),
        Err(_) => *decode_errors += 1,
    });
    // The two rings are drained one after the other: restore time order.
    batch.sort_by_key(|e| e.ts_ns);
    batch
}

pub async fn run(args: TraceArgs, shutdown: impl Future<Output = ()>) -> Result<u8> {
    let TraceArgs {
        filter,
        format,
        duration,
        ready_file,
    } = args;
    kernel::preflight::check()?;
    let cfg = tracer_config(&filter)?;
    let mut tracer = Tracer::start(&cfg)?;
    let mut rings = tracer.rings()?;
    announce(&tracer);
    write_ready_file(ready_file.as_deref())?;

    let started = Instant::now();
    let clock = Clock::new();
    let mut ifnames = IfNames::default();
    for l in &cfg.ifaces {
        ifnames.insert(l.ifindex, l.name.clone());
    }
    let reasons = tracer.reasons.clone();
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut delivered = 0u64;
    let mut decode_errors = 0u64;
    let mut print = |evs: Vec<KernelEvent>, ifnames: &mut IfNames, delivered: &mut u64| -> bool {
        for ev in evs {
            *delivered += 1;
            let line = match format {
                Format::Json => render::event_json(&ev, &clock, ifnames, &reasons).to_string(),
                Format::Text => render::event_text(&ev, &clock, ifnames, &reasons, None),
            };
            if render::write_line(&mut out, &line).is_err() {
                return false;
            }
        }
        out.flush().is_ok()
    };

    let deadline = deadline(duration);
    tokio::pin!(shutdown, deadline);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = &mut deadline => break,
            () = rings.wait() => {
                let batch = drain(&mut rings, &mut decode_errors);
                if !print(batch, &mut ifnames, &mut delivered) {
                    break; // stdout closed
                }
            }
        }
    }
    tracer.detach();
    let batch = drain(&mut rings, &mut decode_errors);
    print(batch, &mut ifnames, &mut delivered);

    let counters = tracer.counters();
    let summary = Summary {
        seconds: started.elapsed().as_secs_f64(),
        delivered,
        decode_errors,
        counters,
        endpoints: tracer
            .endpoints
            .iter()
            .zip(tracer.endpoint_stats())
            .map(|(w, s)| (*w, s))
            .collect(),
        data_drops: tracer.data_drop_reasons(),
    };
    match format {
        Format::Json => {
            let _ = render::write_line(&mut out, &summary.json().to_string());
            let _ = out.flush();
        }
        Format::Text => summary.eprint(),
    }
    Ok(0)
}

/// What a run saw, from the kernel's own counters: right even when events were lost.
pub struct Summary {
    pub seconds: f64,
    pub delivered: u64,
    pub decode_errors: u64,
    pub counters: Counters,
    pub endpoints: Vec<(Watched, lbtrace_common::EndpointStats)>,
    pub data_drops: Vec<(String, u64)>,
}

impl Summary {
    pub fn json(&self) -> serde_json::Value {
        let c = &self.counters;
        json!({
            "type": "summary",
            "seconds": (self.seconds * 1000.0).round() / 1000.0,
            "lost": c.lost(),
            "events": self.delivered,
            "emitted": c.emitted(),
            "lost_packet_events": c.events_lost,
            "lost_priority_events": c.priority_lost,
            "decode_errors": self.decode_errors,
            "packets": c.packets,
            "parse_errors": c.parse_errors,
            "data_drops": c.data_drops,
            "drops_other_netns": c.drops_other_netns,
            "drops_noise": c.drops_noise,
            "data_drop_reasons": self.data_drops.iter().map(|(r, n)| json!({"reason": r, "count": n})).collect::<Vec<_>>(),
            "endpoints": self.endpoints.iter().map(|(w, s)| json!({
                "endpoint": w.endpoint.to_string(), "role": w.role,
                "syn": s.syn, "syn_ack": s.syn_ack, "rst": s.rst, "fin": s.fin, "icmp": s.icmp, "drops": s.drops,
            })).collect::<Vec<_>>(),
        })
    }

    pub fn eprint(&self) {
        let c = &self.counters;
        if c.lost() > 0 {
            eprintln!(
                "lbtrace: LOST {} events: the ring buffer was full ({} packet events, {} ICMP/drop events); per-endpoint counts below are still exact. Try a larger --ring-size.",
                c.lost(),
                c.events_lost,
                c.priority_lost
            );
        }
        eprintln!(
            "lbtrace: {:.1}s, {} events delivered of {} emitted, {} lost, {} packets parsed, {} parse errors, {} decode errors",
            self.seconds,
            self.delivered,
            c.emitted(),
            c.lost(),
            c.packets,
            c.parse_errors,
            self.decode_errors
        );
        eprintln!(
            "  {:<28} {:<8} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7}",
            "endpoint", "role", "SYN", "SYN-ACK", "RST", "FIN", "ICMP", "drops"
        );
        for (w, s) in &self.endpoints {
            eprintln!(
                "  {:<28} {:<8} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7}",
                w.endpoint.to_string(),
                format!("{:?}", w.role).to_lowercase(),
                s.syn,
                s.syn_ack,
                s.rst,
                s.fin,
                s.icmp,
                s.drops
            );
        }
        if !self.data_drops.is_empty() {
            let d: Vec<String> = self
                .data_drops
                .iter()
                .map(|(r, n)| format!("{r} x{n}"))
                .collect();
            eprintln!("  data packets dropped by the kernel: {}", d.join(", "));
        }
    }
}
