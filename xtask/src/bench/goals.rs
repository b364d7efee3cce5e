//! The performance goals, each PASS or MISS against the measured figures, with by how much.

use super::{
    connrate::ConnRate,
    idle::Idle,
    kernel::{Kind, Result1},
    ring,
    stats::{Figure, Summary, num},
    throughput::{STREAMS, Throughput},
};

pub struct Goal {
    pub name: &'static str,
    pub pass: bool,
    pub detail: String,
}

impl Goal {
    pub fn line(&self) -> String {
        format!(
            "{}  {}: {}",
            if self.pass { "PASS" } else { "MISS" },
            self.name,
            self.detail
        )
    }
}

fn med(f: &Figure) -> f64 {
    f.summary().map_or(f64::NAN, |s| s.median)
}

/// The kernel goals. Absolute targets apply to lbtrace's own cost, the median over the empty
/// program's median (the test-run loop and the program call cost the empty program as much);
/// the totals are shown too.
pub fn kernel(k: &Result1) -> Vec<Goal> {
    let of = |kind: Kind| -> Vec<&Figure> {
        k.kinds
            .iter()
            .filter(|(_, kd, _)| *kd == kind)
            .map(|(_, _, i)| &k.figures[*i])
            .collect()
    };
    // (name, total, empty, net, ratio) of the figure with the highest net cost.
    let worst = |fs: &[&Figure]| -> Option<(String, f64, f64, f64, f64)> {
        fs.iter()
            .map(|f| {
                let b = f.baseline_summary().map_or(f64::NAN, |b| b.median);
                (
                    f.name.clone(),
                    med(f),
                    b,
                    med(f) - b,
                    f.ratio().unwrap_or(f64::NAN),
                )
            })
            .max_by(|a, b| a.3.total_cmp(&b.3))
    };
    let mut goals = Vec::new();

    let fast = of(Kind::NoControl);
    let max_ratio = fast
        .iter()
        .filter_map(|f| f.ratio().map(|r| (f.name.clone(), r)))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    if let (Some((wn, total, empty, net, _)), Some((rn, rr))) = (worst(&fast), max_ratio) {
        let pass = rr <= 1.5 && net <= 10.0;
        let mut detail = format!(
            "highest ratio {rn}: {rr:.2}x the empty program; highest own cost {wn}: {} ns over the empty program ({} ns total, empty {} ns)",
            num(net),
            num(total),
            num(empty)
        );
        if !pass {
            let mut by = Vec::new();
            if rr > 1.5 {
                by.push(format!("{:.2}x over the 1.5x bound", rr - 1.5));
            }
            if net > 10.0 {
                by.push(format!("{} ns over the 10 ns target", num(net - 10.0)));
            }
            detail.push_str(&format!("; missed by {}", by.join(", ")));
        }
        goals.push(Goal {
            name: "packets without SYN/FIN/RST within 1.5x of the empty program (<= 10 ns own cost)",
            pass,
            detail,
        });
    }
    for (kind, name, limit) in [
        (
            Kind::UnwatchedControl,
            "control packets of unwatched tuples <= 40 ns (own cost)",
            40.0,
        ),
        (
            Kind::WatchedEvent,
            "watched control packet with its event <= 70 ns (own cost)",
            70.0,
        ),
    ] {
        if let Some((wn, total, empty, net, _)) = worst(&of(kind)) {
            let pass = net <= limit;
            let mut detail = format!(
                "{wn}: {} ns over the empty program ({} ns total, empty {} ns)",
                num(net),
                num(total),
                num(empty)
            );
            if !pass {
                detail.push_str(&format!(
                    "; missed by {} ns ({:.0} %)",
                    num(net - limit),
                    100.0 * (net - limit) / limit
                ));
            }
            goals.push(Goal { name, pass, detail });
        }
    }
    goals
}

/// Throughput: the median of the per-round ratios (each tracer against no tracer in the same
/// round), and watch against tcpdump the same way.
pub fn throughput(t: &Throughput) -> Goal {
    let mut pass = true;
    let mut parts = Vec::new();
    for (i, s) in STREAMS.iter().enumerate() {
        let (w, d) = t.watch_and_tcpdump(i);
        let r = w.ratio().unwrap_or(f64::NAN);
        let vs: Vec<f64> = w
            .samples
            .iter()
            .zip(&d.samples)
            .map(|(a, b)| a / b)
            .collect();
        let vs = Summary::of(&vs).map_or(f64::NAN, |v| v.median);
        // Against the same TCX hooks with an empty program, round by round: lbtrace's own share.
        let e = t.empty_tcx(i);
        let ve: Vec<f64> = w
            .samples
            .iter()
            .zip(&e.samples)
            .map(|(a, b)| a / b)
            .collect();
        let ve = Summary::of(&ve).map_or(f64::NAN, |v| v.median);
        let ahead = vs > 1.0;
        pass &= r >= 0.98 && ahead;
        let mut p = format!(
            "-P {s}: watch {} Gbit/s, {:.1} % of no tracer{}; tcpdump {} Gbit/s, {:.1} %; watch / tcpdump {:.3}{}",
            num(med(w)),
            100.0 * r,
            if w.within_noise() == Some(true) {
                " (inside the noise)"
            } else {
                ""
            },
            num(med(d)),
            100.0 * d.ratio().unwrap_or(f64::NAN),
            vs,
            if ahead { "" } else { " (NOT ahead of tcpdump)" }
        );
        if r < 0.98 {
            p.push_str(&format!(", {:.1} points under 98 %", 100.0 * (0.98 - r)));
        }
        p.push_str(&format!(
            "; empty TCX program {:.1} % of no tracer, watch / empty TCX {ve:.3}",
            100.0 * e.ratio().unwrap_or(f64::NAN)
        ));
        parts.push(p);
    }
    if let Some(runs) = t.watch_runs.summary() {
        parts.push(format!(
            "watch's TC programs ran {} k times per second of iperf3 traffic",
            num(runs.median)
        ));
    }
    Goal {
        name: "throughput with watch attached (TCX) >= 98 % of no tracer, ahead of tcpdump",
        pass,
        detail: parts.join("; "),
    }
}

pub fn drain(r: &ring::Figures) -> Goal {
    let m = med(&r.per_cpu_second);
    let exact = r.mismatches.is_empty();
    let mut detail = format!(
        "{} M events per consumer CPU-second ({} M/s delivered wall clock, {} % lost); accounting {}",
        num(m),
        num(med(&r.delivered_wall)),
        num(med(&r.lost)),
        if exact {
            "exact".to_owned()
        } else {
            format!("OFF: {}", r.mismatches.join("; "))
        }
    );
    if m < 2.0 {
        detail.push_str(&format!("; missed by {} M/s", num(2.0 - m)));
    }
    Goal {
        name: "userspace drains >= 2,000,000 events/s on one core",
        pass: m >= 2.0 && exact,
        detail,
    }
}

pub fn no_loss(c: &ConnRate) -> Option<Goal> {
    let top = c.rates.last()?;
    let mut pass = true;
    let mut parts = vec![format!(
        "{}: {} conn/s with no tracer",
        super::connrate::rate_label(top.rate),
        num(med(&top.achieved))
    )];
    for t in top.tools.iter().filter(|t| t.tool.starts_with("lbtrace")) {
        let lost: f64 = t.lost.samples.iter().sum();
        pass &= lost == 0.0;
        parts.push(format!(
            "{}: {} conn/s, {} lost over {} runs, {} % of implied control packets recorded",
            t.tool,
            num(med(&t.achieved)),
            lost,
            t.lost.samples.len(),
            num(med(&t.recorded))
        ));
    }
    Some(Goal {
        name: "no event lost in the connection-rate test at the highest rate",
        pass,
        detail: parts.join("; "),
    })
}

pub fn idle(i: &Idle) -> Goal {
    let cpu = med(&i.cpu);
    let rss = med(&i.rss_rest);
    let mut detail = format!(
        "CPU {} % of a core (max {}), RSS {} MiB besides the ring mapping ({} MiB peak), ring mapping {} MiB",
        num(cpu),
        num(i.cpu.summary().map_or(f64::NAN, |s| s.max)),
        num(rss),
        num(med(&i.hwm_rest)),
        num(med(&i.ring))
    );
    if cpu >= 1.0 {
        detail.push_str(&format!("; CPU {} points over 1 %", num(cpu - 1.0)));
    }
    if rss >= 50.0 {
        detail.push_str(&format!("; RSS {} MiB over 50 MiB", num(rss - 50.0)));
    }
    Goal {
        name: "idle < 1 % of a core and < 50 MiB RSS besides the ring mapping",
        pass: cpu < 1.0 && rss < 50.0,
        detail,
    }
}
