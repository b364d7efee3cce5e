//! Figures: the samples of one measurement (one per interleaved run), with the baseline measured
//! in the same runs, summarized as median, min and max; the table on stdout and the JSON entries.

use serde_json::{Value, json};

/// Median, min and max of a set of samples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// `None` for no samples; the median of an even count is the mean of the middle two.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        let mut s: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
        if s.is_empty() {
            return None;
        }
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Some(Summary {
            median,
            min: s[0],
            max: s[n - 1],
        })
    }

    /// Whether the two ranges [min, max] share a value: the difference is inside the noise.
    pub fn overlaps(&self, other: &Summary) -> bool {
        self.min <= other.max && other.min <= self.max
    }
}

/// What a figure is compared with.
#[derive(Clone, Debug)]
pub struct Baseline {
    pub name: String,
    pub samples: Vec<f64>,
}

#[derive(Clone, Debug)]
pub struct Figure {
    /// Section of the table (`kernel`, `throughput`, ...).
    pub section: &'static str,
    pub name: String,
    pub unit: &'static str,
    pub samples: Vec<f64>,
    pub baseline: Option<Baseline>,
    /// Anything a reader needs to read the number right.
    pub note: String,
}

impl Figure {
    pub fn new(section: &'static str, name: impl Into<String>, unit: &'static str) -> Figure {
        Figure {
            section,
            name: name.into(),
            unit,
            samples: Vec::new(),
            baseline: None,
            note: String::new(),
        }
    }

    pub fn with_baseline(mut self, name: impl Into<String>) -> Figure {
        self.baseline = Some(Baseline {
            name: name.into(),
            samples: Vec::new(),
        });
        self
    }

    pub fn summary(&self) -> Option<Summary> {
        Summary::of(&self.samples)
    }

    pub fn baseline_summary(&self) -> Option<Summary> {
        self.baseline.as_ref().and_then(|b| Summary::of(&b.samples))
    }

    /// The per-run ratios subject / baseline: every baseline sample is measured in the same
    /// round as the subject sample at the same index, so drifts between rounds cancel out.
    pub fn ratios(&self) -> Vec<f64> {
        let Some(b) = &self.baseline else {
            return Vec::new();
        };
        if b.samples.len() != self.samples.len() {
            return Vec::new();
        }
        self.samples
            .iter()
            .zip(&b.samples)
            .filter(|(_, b)| **b != 0.0)
            .map(|(s, b)| s / b)
            .collect()
    }

    /// Median, min and max of the per-run ratios.
    pub fn ratio_summary(&self) -> Option<Summary> {
        Summary::of(&self.ratios())
    }

    /// The median per-run ratio (the ratio of the medians when runs do not pair up).
    pub fn ratio(&self) -> Option<f64> {
        if let Some(r) = self.ratio_summary() {
            return Some(r.median);
        }
        let (s, b) = (self.summary()?, self.baseline_summary()?);
        (b.median != 0.0).then(|| s.median / b.median)
    }

    /// Whether subject and baseline ranges overlap (`None` without a baseline).
    pub fn within_noise(&self) -> Option<bool> {
        Some(self.summary()?.overlaps(&self.baseline_summary()?))
    }

    pub fn json(&self) -> Value {
        let s = self.summary();
        let b = self.baseline_summary();
        json!({
            "name": format!("{}: {}", self.section, self.name),
            "unit": self.unit,
            "median": s.map(|s| round(s.median)),
            "min": s.map(|s| round(s.min)),
            "max": s.map(|s| round(s.max)),
            "baseline": b.map(|b| round(b.median)),
            "ratio": self.ratio().map(|r| (r * 10_000.0).round() / 10_000.0),
            "ratio_min": self.ratio_summary().map(|r| (r.min * 10_000.0).round() / 10_000.0),
            "ratio_max": self.ratio_summary().map(|r| (r.max * 10_000.0).round() / 10_000.0),
            "baseline_name": self.baseline.as_ref().map(|b| b.name.clone()),
            "baseline_min": b.map(|b| round(b.min)),
            "baseline_max": b.map(|b| round(b.max)),
            "within_noise": self.within_noise(),
            "runs": self.samples.len(),
            "samples": self.samples.iter().map(|v| round(*v)).collect::<Vec<_>>(),
            "note": (!self.note.is_empty()).then(|| self.note.clone()),
        })
    }
}

fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// A number with as many decimals as its size deserves.
pub fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 || a == 0.0 || (a >= 100.0 && a.fract() == 0.0) {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// `median [min..max]` of the per-run ratios.
fn ratio_cell(f: &Figure) -> String {
    match (f.ratio_summary(), f.ratio()) {
        (Some(r), _) if r.min != r.max => {
            format!("{:.3} [{:.2}..{:.2}]", r.median, r.min, r.max)
        }
        (_, Some(r)) => format!("{r:.3}"),
        _ => String::new(),
    }
}

/// The table, one section after another.
pub fn table(figures: &[Figure]) -> String {
    let mut rows: Vec<[String; 7]> = Vec::new();
    let mut sections: Vec<(usize, &str)> = Vec::new();
    for f in figures {
        if sections.last().is_none_or(|(_, s)| *s != f.section) {
            sections.push((rows.len(), f.section));
        }
        let s = f.summary();
        let cell = |g: fn(&Summary) -> f64| s.map_or("-".to_owned(), |s| num(g(&s)));
        let baseline = match (&f.baseline, f.baseline_summary()) {
            (Some(b), Some(bs)) => format!(
                "{} {} [{}..{}]",
                b.name,
                num(bs.median),
                num(bs.min),
                num(bs.max)
            ),
            (Some(b), None) => format!("{} -", b.name),
            _ => String::new(),
        };
        let ratio = ratio_cell(f);
        let noise = match f.within_noise() {
            Some(true) => "noise",
            _ => "",
        };
        let mut note = f.note.clone();
        if !noise.is_empty() {
            note = if note.is_empty() {
                "within noise (ranges overlap)".to_owned()
            } else {
                format!("within noise (ranges overlap); {note}")
            };
        }
        rows.push([
            f.name.clone(),
            format!("{} {}", cell(|s| s.median), f.unit),
            cell(|s| s.min),
            cell(|s| s.max),
            baseline,
            ratio,
            note,
        ]);
    }
    let head = [
        "figure",
        "median",
        "min",
        "max",
        "baseline median [min..max]",
        "ratio [min..max]",
        "note",
    ];
    let mut w = head.map(str::len);
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: [&str; 7]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = w[i].saturating_sub(c.chars().count());
            if i == 6 {
                l.push_str(c);
            } else if (1..=3).contains(&i) || i == 5 {
                l.push_str(&" ".repeat(pad));
                l.push_str(c);
                l.push_str("  ");
            } else {
                l.push_str(c);
                l.push_str(&" ".repeat(pad + 2));
            }
        }
        l.trim_end().to_owned()
    };
    let mut out = String::new();
    out.push_str(&line(head));
    out.push('\n');
    let mut next = sections.iter().peekable();
    for (i, r) in rows.iter().enumerate() {
        if let Some((_, name)) = next.next_if(|(at, _)| *at == i) {
            out.push_str(&format!("-- {name}\n"));
        }
        out.push_str(&line([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5], &r[6]]));
        out.push('\n');
    }
    out
}

/// The figures as Markdown (docs/performance.md).
pub fn markdown(figures: &[Figure]) -> String {
    let mut out = String::new();
    let mut section = "";
    for f in figures {
        if f.section != section {
            section = f.section;
            out.push_str(&format!(
                "\n**{section}**\n\n| figure | median | min | max | baseline median [min..max] | ratio [min..max] | note |\n|---|---:|---:|---:|---|---:|---|\n"
            ));
        }
        let s = f.summary();
        let cell = |g: fn(&Summary) -> f64| s.map_or("-".to_owned(), |s| num(g(&s)));
        let baseline = match (&f.baseline, f.baseline_summary()) {
            (Some(b), Some(bs)) => format!(
                "{} {} [{}..{}]",
                b.name,
                num(bs.median),
                num(bs.min),
                num(bs.max)
            ),
            _ => String::new(),
        };
        let mut note = f.note.clone();
        if f.within_noise() == Some(true) {
            note = if note.is_empty() {
                "within noise".to_owned()
            } else {
                format!("within noise; {note}")
            };
        }
        out.push_str(&format!(
            "| {} | {} {} | {} | {} | {} | {} | {} |\n",
            f.name,
            cell(|s| s.median),
            f.unit,
            cell(|s| s.min),
            cell(|s| s.max),
            baseline,
            ratio_cell(f),
            note
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max() {
        let s = Summary::of(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (3.0, 1.0, 5.0));
        let s = Summary::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert!(Summary::of(&[]).is_none());
        assert!(Summary::of(&[f64::NAN]).is_none());
    }

    #[test]
    fn noise_is_overlap() {
        let mut f = Figure::new("t", "x", "ns").with_baseline("empty");
        f.samples = vec![10.0, 11.0, 12.0];
        f.baseline.as_mut().unwrap().samples = vec![12.0, 13.0];
        assert_eq!(f.within_noise(), Some(true));
        f.baseline.as_mut().unwrap().samples = vec![12.5, 13.0];
        assert_eq!(f.within_noise(), Some(false));
        // Three samples against two: no pairs, the ratio of the medians.
        assert!(f.ratio().is_some_and(|r| (r - 11.0 / 12.75).abs() < 1e-9));
        assert_eq!(f.json()["runs"], 3);
        // Paired runs: 10/12.5 and 11/13.
        f.samples.pop();
        let r = f.ratio_summary().unwrap();
        assert!((r.min - 0.8).abs() < 1e-9 && (r.max - 11.0 / 13.0).abs() < 1e-9);
    }
}
