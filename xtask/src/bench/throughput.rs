//! Part 2 of the bench, throughput: iperf3 TCP (one stream, then four) from the client through the
//! lb (nftables DNAT) to the server, with no tracer, `lbtrace watch` (TCX), `lbtrace watch --xdp`
//! and tcpdump (one per lb interface, filtered to the watched tuples' SYN/FIN/RST, writing files),
//! in interleaved rounds whose order rotates.

use std::path::Path;

use anyhow::Result;

use super::{
    interrupted,
    lab::{IPERF_PORT, Lab, Running, Tool},
    stats::Figure,
};

pub const SECTION: &str = "throughput: iperf3 TCP client -> lb (nftables DNAT) -> server";
pub const STREAMS: [u32; 2] = [1, 4];

/// The configurations, `None` first (the baseline).
fn configs() -> [Option<Tool>; 6] {
    [
        None,
        Some(Tool::Watch { xdp: false }),
        Some(Tool::Watch { xdp: true }),
        Some(Tool::Tcpdump),
        Some(Tool::EmptyXdp),
        Some(Tool::EmptyTcx),
    ]
}

fn label(c: &Option<Tool>) -> &'static str {
    c.as_ref().map_or("no tracer", Tool::label)
}

pub struct Throughput {
    /// `[streams][config]`, configs in `configs()` order.
    pub figures: Vec<Vec<Figure>>,
}

impl Throughput {
    pub fn all(&self) -> Vec<Figure> {
        self.figures.iter().flatten().cloned().collect()
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
    for round in 0..rounds {
        for k in 0..cfgs.len() {
            interrupted()?;
            let ci = (k + round) % cfgs.len();
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
            for (si, &s) in STREAMS.iter().enumerate() {
                let g = lab.iperf(secs, s)?;
                figures[si][ci].samples.push(g);
            }
            if let Some(r) = running {
                r.stop()?;
            }
        }
        eprintln!(
            "xtask: bench: throughput round {}/{rounds}: {}",
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
        let base = fs[0].samples.clone();
        for f in fs.iter_mut().skip(1) {
            if let Some(b) = f.baseline.as_mut() {
                b.samples = base.clone();
            }
        }
        fs[2].note = "compare with the empty XDP program".to_owned();
        fs[4].note = "XDP on a veth by itself: the peer's TSO goes off".to_owned();
        fs[5].note = "the TCX hooks watch uses, by themselves".to_owned();
    }
    Ok(Throughput { figures })
}
