//! Part 2 of the bench, throughput: iperf3 TCP (one stream, then four) from the client through the
//! lb (nftables DNAT) to the server, with no tracer, `lbtrace watch` (TCX), `lbtrace watch --xdp`
//! and tcpdump (one per lb interface, filtered to the watched tuples' SYN/FIN/RST, writing files),
//! and empty XDP / TCX programs as controls; `lbtrace watch` with legacy TC (as below 6.6) against
//! an empty legacy TC filter. Each round runs every tracer once, in an order that
//! rotates, each between two runs without a tracer; its baseline sample is the mean of those two.

use std::path::Path;

use anyhow::Result;

use super::{
    interrupted,
    lab::{IPERF_PORT, Lab, Report, Running, Tool},
    stats::Figure,
};

pub const SECTION: &str = "throughput: iperf3 TCP client -> lb (nftables DNAT) -> server";
pub const STREAMS: [u32; 2] = [1, 4];

/// The configurations, `None` first (the baseline).
fn configs() -> [Option<Tool>; 8] {
    [
        None,
        Some(Tool::Watch { xdp: false }),
        Some(Tool::Watch { xdp: true }),
        Some(Tool::Tcpdump),
        Some(Tool::EmptyXdp),
        Some(Tool::EmptyTcx),
        Some(Tool::WatchLegacyTc),
        Some(Tool::EmptyLegacyTc),
    ]
}

fn label(c: &Option<Tool>) -> &'static str {
    c.as_ref().map_or("no tracer", Tool::label)
}

pub struct Throughput {
    /// `[streams][config]`, configs in `configs()` order.
    pub figures: Vec<Vec<Figure>>,
    /// How often `watch`'s TC programs ran per second of iperf3 traffic (both stream counts).
    pub watch_runs: Figure,
}

impl Throughput {
    pub fn all(&self) -> Vec<Figure> {
        let mut all: Vec<Figure> = self.figures.iter().flatten().cloned().collect();
        all.push(self.watch_runs.clone());
        all
    }

    /// (watch TCX, tcpdump) figures for `streams`.
    pub fn watch_and_tcpdump(&self, streams_idx: usize) -> (&Figure, &Figure) {
        (&self.figures[streams_idx][1], &self.figures[streams_idx][3])
    }

    /// The empty TCX program's figure for `streams`.
    pub fn empty_tcx(&self, streams_idx: usize) -> &Figure {
        &self.figures[streams_idx][5]
    }
}

pub fn measure(lab: &mut Lab, lbtrace: &Path, rounds: usize, secs: u32) -> Result<Throughput> {
    lab.iperf_server()?;
    let cfgs = configs();
    let mut figures: Vec<Vec<Figure>> = STREAMS
        .iter()
        .map(|s| {
            cfgs.iter()
                .enumerate()
                .map(|(i, c)| {
                    let name =
                        format!("{s} stream{}: {}", if *s == 1 { "" } else { "s" }, label(c));
                    let f = Figure::new(SECTION, name, "Gbit/s");
                    if i == 0 {
                        f
                    } else {
                        f.with_baseline("no tracer")
                    }
                })
                .collect()
        })
        .collect();
    // Warm-up: one short run, not recorded.
    lab.iperf(1, 1)?;
    let mut watch_runs = Figure::new(
        SECTION,
        "lbtrace watch (TCX): program runs per second of iperf3 traffic",
        "k/s",
    );
    watch_runs.note =
        "packets its TC programs parsed (4 hooks), over the iperf3 runs of both stream counts"
            .to_owned();
    // One run of config `ci`: Gbit/s for each stream count, and the tool's report.
    let run = |lab: &mut Lab, round: usize, ci: usize| -> Result<(Vec<f64>, Option<Report>)> {
        interrupted()?;
        let running = match &cfgs[ci] {
            Some(t) => Some(Running::start(
                lab,
                t,
                lbtrace,
                IPERF_PORT,
                &format!("tput-{round}-{ci}"),
            )?),
            None => None,
        };
        let g = STREAMS
            .iter()
            .map(|&s| lab.iperf(secs, s))
            .collect::<Result<Vec<f64>>>()?;
        let report = running.map(Running::stop).transpose()?;
        Ok((g, report))
    };
    for round in 0..rounds {
        // Every tracer runs between two runs without one, and is compared with their mean: the
        // machine's drift (other load comes and goes) then hits subject and baseline alike. The
        // tracers' order rotates from round to round.
        let tracers = cfgs.len() - 1;
        let (mut before, _) = run(lab, round, 0)?;
        for (si, g) in before.iter().enumerate() {
            figures[si][0].samples.push(*g);
        }
        for k in 0..tracers {
            let ci = 1 + (k + round) % tracers;
            let (with, report) = run(lab, round, ci)?;
            if let (Some(Tool::Watch { xdp: false }), Some(r)) = (&cfgs[ci], report) {
                watch_runs
                    .samples
                    .push(r.packets as f64 / f64::from(secs * STREAMS.len() as u32) / 1e3);
            }
            let (after, _) = run(lab, round, 0)?;
            for si in 0..STREAMS.len() {
                let f = &mut figures[si][ci];
                f.samples.push(with[si]);
                if let Some(b) = f.baseline.as_mut() {
                    b.samples.push((before[si] + after[si]) / 2.0);
                }
                figures[si][0].samples.push(after[si]);
            }
            before = after;
        }
        eprintln!(
            "xtask: bench: throughput round {}/{rounds} (no tracer = mean of the runs before and after): {}",
            round + 1,
            figures
                .iter()
                .zip(STREAMS)
                .map(|(fs, s)| format!(
                    "-P {s}: {}",
                    fs.iter()
                        .map(|f| format!("{:.2}", f.samples.last().copied().unwrap_or(0.0)))
                        .collect::<Vec<_>>()
                        .join(" / ")
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for fs in &mut figures {
        fs[2].note = "compare with the empty XDP program".to_owned();
        fs[4].note = "XDP on a veth by itself: the peer's TSO goes off".to_owned();
        fs[5].note = "the TCX hooks watch uses, by themselves".to_owned();
        fs[6].note = "compare with the empty legacy TC filter".to_owned();
        fs[7].note = "clsact + cls_bpf hooks (legacy TC, before 6.6), by themselves".to_owned();
    }
    Ok(Throughput {
        figures,
        watch_runs,
    })
}
