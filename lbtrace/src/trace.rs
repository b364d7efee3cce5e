//! `lbtrace trace`: the live event stream, lbtrace's tcpdump.
//!
//! Attach, then drain the rings on every wakeup or timer tick, decode, order by time and print;
//! on SIGINT / SIGTERM / `--duration`, detach, drain once more and print the summary.

use std::{future::Future, time::Instant};

use anyhow::Result;
use serde_json::json;

use crate::{
    cli::TraceArgs,
    endpoint::Watched,
    event::KernelEvent,
    kernel::{self, Tracer, counters::Counters},
    render::{self, Clock, Format, IfNames},
    session::{self, Output},
};

/// Lines that may wait for a slow reader of stdout (about 10 MiB); beyond that they are dropped
/// and counted in the summary, and the drain goes on.
const STDOUT_QUEUE: usize = 64 * 1024;

pub async fn run(args: TraceArgs, shutdown: impl Future<Output = ()>) -> Result<u8> {
    let TraceArgs {
        filter,
        format,
        duration,
        ready_file,
    } = args;
    kernel::preflight::check()?;
    session::check_ready_file(ready_file.as_deref())?;
    let cfg = session::tracer_config(&filter)?;
    let mut tracer = Tracer::start(&cfg)?;
    let mut rings = tracer.rings()?;
    session::announce(&tracer);

    let started = Instant::now();
    let clock = Clock::new();
    let mut ifnames = IfNames::default();
    for l in &cfg.ifaces {
        ifnames.insert(l.ifindex, l.name.clone());
    }
    let reasons = tracer.reasons.clone();
    let out = Output::spawn("stdout", std::io::stdout(), STDOUT_QUEUE);
    let mut delivered = 0u64;
    let mut decode_errors = 0u64;
    let print = |evs: Vec<KernelEvent>, ifnames: &mut IfNames, delivered: &mut u64| {
        for ev in evs {
            let line = match format {
                Format::Json => render::event_json(&ev, &clock, ifnames, &reasons).to_string(),
                Format::Text => render::event_text(&ev, &clock, ifnames, &reasons, None),
            };
            if out.line(&line) {
                *delivered += 1;
            }
        }
    };

    let deadline = session::deadline(duration);
    tokio::pin!(shutdown, deadline);
    session::write_ready_file(ready_file.as_deref())?;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = &mut deadline => break,
            () = rings.wait() => {
                let batch = session::drain(&mut rings, &mut decode_errors);
                print(batch, &mut ifnames, &mut delivered);
                if out.write_errors() > 0 {
                    break; // stdout closed (`lbtrace trace | head`)
                }
            }
        }
    }
    tracer.detach();
    let batch = session::drain(&mut rings, &mut decode_errors);
    print(batch, &mut ifnames, &mut delivered);

    let counters = tracer.counters();
    let summary = Summary {
        seconds: started.elapsed().as_secs_f64(),
        delivered,
        output_dropped: out.dropped(),
        decode_errors,
        counters,
        endpoints: tracer
            .endpoints
            .iter()
            .zip(tracer.endpoint_stats())
            .map(|(w, s)| (*w, s))
            .collect(),
        data_drops: tracer.data_drop_reasons(),
        capabilities: session::Capabilities::of(&tracer, &cfg),
    };
    let grace = std::time::Duration::from_secs(2);
    match format {
        Format::Json => {
            out.line(&summary.json().to_string());
            // A reader that stopped reading gets a moment, not forever.
            out.finish(grace);
        }
        Format::Text => {
            let output_dropped = out.finish(grace);
            Summary {
                output_dropped,
                ..summary
            }
            .eprint();
        }
    }
    Ok(0)
}

/// What a run saw, from the kernel's own counters: right even when events were lost.
pub struct Summary {
    pub seconds: f64,
    pub delivered: u64,
    /// Lines not written because the reader of stdout was too slow.
    pub output_dropped: u64,
    pub decode_errors: u64,
    pub counters: Counters,
    pub endpoints: Vec<(Watched, lbtrace_common::EndpointStats)>,
    pub data_drops: Vec<(String, u64)>,
    pub capabilities: session::Capabilities,
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
            "output_dropped": self.output_dropped,
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
            "capabilities": self.capabilities,
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
        if self.output_dropped > 0 {
            eprintln!(
                "lbtrace: {} lines not printed: the reader of stdout was too slow (the events were drained and counted)",
                self.output_dropped
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
