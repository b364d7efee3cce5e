//! Result parsing: the guest's `LBT-RESULT <name> <pass|fail|skip> <ms> <detail>` and
//! `LBT-LOG <name>: <line>` console lines (tests/vm/init.sh) into per-check [`Outcome`]s, held
//! against the list of checks the VM was given (a check that never reported failed), and the
//! per-kernel table.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

/// How one check ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Pass,
    Fail,
    Skip,
}

impl Status {
    fn parse(s: &str) -> Option<Status> {
        match s {
            "pass" => Some(Status::Pass),
            "fail" => Some(Status::Fail),
            "skip" => Some(Status::Skip),
            _ => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        }
    }
}

/// One check on one kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub status: Status,
    /// Guest time the check took, when it reported.
    pub took: Option<Duration>,
    pub detail: String,
    /// Its output, when the guest showed it (failures, or `--verbose`).
    pub log: Vec<String>,
}

/// The outcomes of `expected` (check names, in order) in the console `lines`. `ended` says why
/// a check without a result line has none (the VM timed out, crashed, ...).
pub fn parse(lines: &[String], expected: &[&str], ended: &str) -> Vec<(String, Outcome)> {
    let mut found: BTreeMap<&str, Outcome> = BTreeMap::new();
    for line in lines {
        // The kernel may print in the middle of a line; results start at their marker.
        if let Some(at) = line.find("LBT-RESULT ") {
            let mut fields = line[at + "LBT-RESULT ".len()..].splitn(4, ' ');
            let (Some(name), Some(status), Some(ms)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let Some(status) = Status::parse(status) else {
                continue;
            };
            let Some(name) = expected.iter().find(|&&e| e == name) else {
                continue;
            };
            found.insert(
                name,
                Outcome {
                    status,
                    took: ms.parse().ok().map(Duration::from_millis),
                    detail: fields.next().unwrap_or("").trim().to_owned(),
                    log: Vec::new(),
                },
            );
        } else if let Some(at) = line.find("LBT-LOG ") {
            let rest = &line[at + "LBT-LOG ".len()..];
            if let Some((name, text)) = rest.split_once(": ")
                && let Some(outcome) = found.get_mut(name)
            {
                outcome.log.push(text.to_owned());
            }
        }
    }
    expected
        .iter()
        .map(|&name| {
            let outcome = found.remove(name).unwrap_or_else(|| Outcome {
                status: Status::Fail,
                took: None,
                detail: format!("no result: {ended}"),
                log: Vec::new(),
            });
            (name.to_owned(), outcome)
        })
        .collect()
}

/// One kernel's row set for the table.
pub struct KernelReport {
    /// `6.1`.
    pub series: String,
    /// `6.1.0-41-cloud-amd64`, or why there is none.
    pub release: String,
    pub boot: Option<Duration>,
    pub elapsed: Option<Duration>,
    pub outcomes: Vec<(String, Outcome)>,
}

impl KernelReport {
    pub fn failed(&self) -> bool {
        self.outcomes.iter().any(|(_, o)| o.status == Status::Fail)
    }
}

/// The matrix: a row per check, a column per kernel; then the failures' details.
pub fn table(reports: &[KernelReport]) -> String {
    const WIDTH: usize = 22;
    let mut out = String::new();
    let secs =
        |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{:.1}s", d.as_secs_f64()));
    let _ = write!(out, "{:<16}", "kernel");
    for r in reports {
        let _ = write!(out, "{:<WIDTH$}", r.series);
    }
    out.push('\n');
    let _ = write!(out, "{:<16}", "release");
    for r in reports {
        let release: String = r.release.chars().take(WIDTH - 2).collect();
        let _ = write!(out, "{release:<WIDTH$}");
    }
    out.push('\n');
    for (label, value) in [
        (
            "boot to /init",
            &(|r: &KernelReport| secs(r.boot)) as &dyn Fn(&KernelReport) -> String,
        ),
        ("VM total", &|r: &KernelReport| secs(r.elapsed)),
    ] {
        let _ = write!(out, "{label:<16}");
        for r in reports {
            let _ = write!(out, "{:<WIDTH$}", value(r));
        }
        out.push('\n');
    }
    let mut names: Vec<&str> = Vec::new();
    for r in reports {
        for (name, _) in &r.outcomes {
            if !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
    }
    for name in names {
        let _ = write!(out, "{name:<16}");
        for r in reports {
            let cell = r
                .outcomes
                .iter()
                .find(|(n, _)| n == name)
                .map_or("-".to_owned(), |(_, o)| {
                    format!("{} {}", o.status.label(), secs(o.took))
                });
            let _ = write!(out, "{cell:<WIDTH$}");
        }
        out.push('\n');
    }
    for r in reports {
        for (name, o) in &r.outcomes {
            if o.status != Status::Pass {
                let _ = writeln!(
                    out,
                    "{} {name} {}: {}",
                    r.series,
                    o.status.label(),
                    o.detail
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn parses_results_and_logs_and_flags_missing_checks() {
        let console = lines(concat!(
            "[    1.0] some kernel line\n",
            "LBT-BOOT 6.12.1 900\n",
            "LBT-RESULT boot pass 120 kernel 6.12.1, 9 modules loaded\n",
            "LBT-RESULT doctor fail 3400 doctor says not ok: tcx (fail): too old\n",
            "LBT-LOG doctor: {\"type\":\"doctor\"}\n",
            "[    5.2] kernel noise LBT-RESULT trace skip 10 not here\n",
            "LBT-RESULT unknown pass 1 ignored\n",
        ));
        let got = parse(
            &console,
            &["boot", "doctor", "trace", "drop"],
            "the VM timed out",
        );
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["boot", "doctor", "trace", "drop"]);
        assert_eq!(got[0].1.status, Status::Pass);
        assert_eq!(got[0].1.detail, "kernel 6.12.1, 9 modules loaded");
        assert_eq!(got[1].1.status, Status::Fail);
        assert_eq!(got[1].1.took, Some(Duration::from_millis(3400)));
        assert_eq!(got[1].1.log, ["{\"type\":\"doctor\"}"]);
        assert_eq!(got[2].1.status, Status::Skip);
        assert_eq!(got[3].1.status, Status::Fail);
        assert_eq!(got[3].1.detail, "no result: the VM timed out");
    }

    #[test]
    fn a_failed_check_fails_the_kernel() {
        let outcome = |status| Outcome {
            status,
            took: None,
            detail: String::new(),
            log: Vec::new(),
        };
        let mut report = KernelReport {
            series: "6.1".into(),
            release: "6.1.0-41-cloud-amd64".into(),
            boot: None,
            elapsed: None,
            outcomes: vec![
                ("boot".into(), outcome(Status::Pass)),
                ("x".into(), outcome(Status::Skip)),
            ],
        };
        assert!(!report.failed());
        report.outcomes.push(("y".into(), outcome(Status::Fail)));
        assert!(report.failed());
        assert!(table(&[report]).contains("6.1 y FAIL"));
    }
}
