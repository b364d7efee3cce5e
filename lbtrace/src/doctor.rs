//! `lbtrace doctor`: what this kernel and host support, each with pass / warn / fail and what it
//! means for lbtrace. Exit 0 when lbtrace can run here, 1 when something it needs is missing.

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{is_map_supported, is_program_supported},
    util::KernelVersion,
};
use serde_json::json;

use crate::{
    cli::DoctorArgs,
    kernel::{self, btf::KernelBtf, loader::DropMode, preflight},
    netif,
    render::Format,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

#[derive(Debug, serde::Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What it means for lbtrace.
    pub meaning: String,
}

fn check(
    name: &'static str,
    status: Status,
    detail: impl Into<String>,
    meaning: impl Into<String>,
) -> Check {
    Check {
        name,
        status,
        detail: detail.into(),
        meaning: meaning.into(),
    }
}

/// Runs every check, one function each, in the order they are printed. Nothing is left
/// attached.
pub fn checks() -> Vec<Check> {
    let privileged = preflight::missing_caps().is_empty();
    let version = preflight::kernel_version().ok();
    let btf = KernelBtf::load();
    let mut out = vec![privileges(), kernel_version(version)];
    out.extend(btf_checks(&btf));
    out.push(ring_buffer());
    out.push(tc_hook(version));
    out.push(leftovers());
    out.push(xdp());
    out.push(xdp_holders());
    // The real thing: load the object (the verifier runs) and attach the drop tracer.
    if privileged && btf.is_ok() {
        out.push(load());
    }
    out
}

fn privileges() -> Check {
    let missing = preflight::missing_caps();
    if missing.is_empty() {
        check(
            "privileges",
            Status::Pass,
            "CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON (or root)",
            "lbtrace can load and attach its programs",
        )
    } else {
        check(
            "privileges",
            Status::Fail,
            format!("missing {}", missing.join(", ")),
            "run lbtrace with sudo (or grant those capabilities)",
        )
    }
}

fn at_least(version: Option<KernelVersion>, major: u8, minor: u8) -> bool {
    version.is_some_and(|v| v >= KernelVersion::new(major, minor, 0))
}

fn kernel_version(version: Option<KernelVersion>) -> Check {
    let vs = version.map_or_else(|| "unknown".to_owned(), preflight::fmt_version);
    let supported = version.is_some_and(|v| v >= preflight::MIN_KERNEL);
    check(
        "kernel",
        if at_least(version, 6, 6) {
            Status::Pass
        } else if supported {
            Status::Warn
        } else {
            Status::Fail
        },
        vs.clone(),
        if at_least(version, 6, 6) {
            "new enough for every lbtrace feature (ring buffer 5.8, TCX 6.6)".to_owned()
        } else if supported {
            format!("kernel {vs} has no TCX: lbtrace attaches legacy TC filters (see tcx)")
        } else {
            format!(
                "kernel {vs}: lbtrace needs {} or newer",
                preflight::fmt_version(preflight::MIN_KERNEL)
            )
        },
    )
}

/// BTF itself, and what the drop tracer takes from it: `sk_buff` offsets and drop-reason names.
fn btf_checks(btf: &Result<KernelBtf, kernel::btf::BtfError>) -> Vec<Check> {
    match btf {
        Ok(b) => {
            let offsets = b.offsets();
            let mut out = vec![match offsets {
                Ok(_) => check(
                    "btf",
                    Status::Pass,
                    kernel::btf::VMLINUX_BTF,
                    "struct offsets for the drop tracer resolved",
                ),
                Err(e) => check(
                    "btf",
                    Status::Fail,
                    e.to_string(),
                    "the drop tracer cannot read this kernel's sk_buff",
                ),
            }];
            out.push(match b.drop_reasons() {
                Ok(r) => check(
                    "drop-reasons",
                    Status::Pass,
                    format!("{} reasons in enum skb_drop_reason", r.len()),
                    "kernel drops are reported with their reason",
                ),
                Err(e) => {
                    let k = kernel::kallsyms::Kallsyms::load();
                    check(
                        "drop-reasons",
                        Status::Warn,
                        format!(
                            "{e}; {}",
                            k.as_ref().map_or_else(
                                || format!("{} shows no addresses", kernel::kallsyms::KALLSYMS),
                                |k| format!(
                                    "{} text symbols in {}",
                                    k.len(),
                                    kernel::kallsyms::KALLSYMS
                                ),
                            )
                        ),
                        "drop reasons are unavailable on this kernel: drops are reported by location (nf_hook_slow+0x5c), netfilter and no-socket locations map to NETFILTER_DROP / NO_SOCKET",
                    )
                }
            });
            out
        }
        Err(e) => vec![check(
            "btf",
            Status::Fail,
            e.to_string(),
            "lbtrace cannot run without kernel BTF",
        )],
    }
}

fn ring_buffer() -> Check {
    let rb = is_map_supported(MapType::RingBuf).unwrap_or(false);
    check(
        "ring-buffer",
        if rb { Status::Pass } else { Status::Fail },
        if rb {
            "BPF_MAP_TYPE_RINGBUF supported"
        } else {
            "BPF_MAP_TYPE_RINGBUF not supported"
        },
        if rb {
            "ICMP-error and drop events, and wake-ups, reach lbtrace through ring buffers"
        } else {
            "lbtrace needs BPF ring buffers (5.8+)"
        },
    )
}

/// TCX, or legacy TC where the kernel has no TCX (or LBTRACE_ATTACH=tc).
fn tc_hook(version: Option<KernelVersion>) -> Check {
    let tcx = at_least(version, 6, 6)
        && is_program_supported(ProgramType::SchedClassifier).unwrap_or(false);
    let mode = kernel::tracer::TcMode::select();
    match (tcx, &mode) {
        (_, Err(e)) => check("tcx", Status::Fail, e.to_string(), "unset LBTRACE_ATTACH"),
        (true, Ok(kernel::tracer::TcMode::Tcx)) => check(
            "tcx",
            Status::Pass,
            "TCX bpf_links (6.6+)",
            "the default, low-impact hook; its links vanish when lbtrace exits",
        ),
        (_, Ok(m)) => check(
            "tcx",
            Status::Warn,
            if *m == kernel::tracer::TcMode::Legacy && tcx {
                "TCX available, legacy TC chosen with LBTRACE_ATTACH=tc"
            } else {
                "no TCX (6.6+): legacy TC (clsact + cls_bpf filters)"
            },
            format!(
                "legacy filters outlive a killed lbtrace: they are recorded in {} and removed at the next start or by `lbtrace cleanup`",
                kernel::legacy_tc::run_dir().display()
            ),
        ),
    }
}

/// Legacy TC filters of an lbtrace that is gone.
fn leftovers() -> Check {
    let leftovers = kernel::legacy_tc::leftovers();
    if leftovers.is_empty() {
        check(
            "leftovers",
            Status::Pass,
            "no stale lbtrace attachment",
            "nothing of a killed lbtrace is attached",
        )
    } else {
        check(
            "leftovers",
            Status::Warn,
            leftovers.join("; "),
            "legacy TC filters of an lbtrace that is gone (they pass every packet on): run `lbtrace cleanup`",
        )
    }
}

fn xdp() -> Check {
    let xdp = is_program_supported(ProgramType::Xdp).unwrap_or(false);
    check(
        "xdp",
        if xdp { Status::Pass } else { Status::Warn },
        if xdp {
            "XDP programs supported"
        } else {
            "XDP not supported"
        },
        "--xdp traces ingress before the stack (opt-in: it changes offloads, see README)",
    )
}

/// XDP programs already on an interface (lbtrace never displaces them).
fn xdp_holders() -> Check {
    match netif::links() {
        Ok(links) => {
            let held: Vec<String> = links
                .iter()
                .filter_map(|l| l.xdp_prog.map(|id| format!("{} (prog id {id})", l.name)))
                .collect();
            if held.is_empty() {
                check(
                    "xdp-holders",
                    Status::Pass,
                    "no interface has an XDP program",
                    "--xdp can attach anywhere",
                )
            } else {
                check(
                    "xdp-holders",
                    Status::Warn,
                    held.join(", "),
                    "lbtrace --xdp leaves these alone and traces them with TCX",
                )
            }
        }
        Err(e) => check(
            "interfaces",
            Status::Fail,
            format!("{e:#}"),
            "lbtrace cannot find the interfaces to trace",
        ),
    }
}

/// Loads and attaches for real (the verifier runs), then detaches.
fn load() -> Check {
    match load_and_attach_tracepoint() {
        Ok((kernel::rings::RingMode::PerCpu, drops)) => check(
            "load",
            if drops == DropMode::Reason {
                Status::Pass
            } else {
                Status::Warn
            },
            format!(
                "programs verified (packet events: per-CPU rings); skb:kfree_skb attached and detached ({})",
                drops_detail(drops)
            ),
            "lbtrace's programs load on this kernel",
        ),
        Ok((kernel::rings::RingMode::RingBuf, drops)) => check(
            "load",
            Status::Warn,
            format!(
                "programs verified (packet events: the BPF ring buffer variant); skb:kfree_skb attached and detached ({})",
                drops_detail(drops)
            ),
            "lbtrace's programs load on this kernel; the per-CPU rings are not used (no BPF atomics before 5.12, or LBTRACE_RINGS=ringbuf): each event costs a ring-buffer reserve",
        ),
        Err(e) => check(
            "load",
            Status::Fail,
            crate::one_line(&e),
            "lbtrace's programs do not load here",
        ),
    }
}

/// Loads every program through the same path as `trace` (the verifier runs, the drop tracer
/// attaches), with no endpoint and no interface; dropping the tracer detaches it.
fn load_and_attach_tracepoint() -> anyhow::Result<(kernel::rings::RingMode, DropMode)> {
    let cfg = kernel::TracerConfig {
        endpoints: Vec::new(),
        ifaces: Vec::new(),
        xdp: true,
        data: false,
        ring_bytes: 1 << 16,
        priority_ring_bytes: 1 << 16,
    };
    kernel::Tracer::start(&cfg).map(|t| (t.layout.mode, t.drop_mode))
}

fn drops_detail(mode: DropMode) -> &'static str {
    match mode {
        DropMode::Reason => "drops with their reason",
        DropMode::Location => "drops by location: this kernel has no drop reasons",
    }
}

pub fn run(args: &DoctorArgs) -> anyhow::Result<u8> {
    let checks = checks();
    let failed = checks.iter().any(|c| c.status == Status::Fail);
    match args.format {
        Format::Json => println!(
            "{}",
            json!({"type": "doctor", "ok": !failed, "checks": checks})
        ),
        Format::Text => {
            for c in &checks {
                let s = match c.status {
                    Status::Pass => "pass",
                    Status::Warn => "warn",
                    Status::Fail => "FAIL",
                };
                println!(
                    "{s}  {:<13} {}\n      {:<13} -> {}",
                    c.name, c.detail, "", c.meaning
                );
            }
            println!(
                "{}",
                if failed {
                    "lbtrace cannot run here: fix the FAIL lines above"
                } else {
                    "lbtrace can run here"
                }
            );
        }
    }
    Ok(u8::from(failed))
}
