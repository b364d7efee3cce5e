//! Loading the kernel programs with this host's parameters and attaching them, bpf_links only.
//!
//! Nothing is pinned and every attachment is a bpf_link held by this process (TCX, XDP, raw
//! tracepoint), so the kernel detaches all of it when lbtrace exits, even on SIGKILL. aya falls
//! back to a netlink XDP attachment on some errors, which would outlive the process: such an
//! attachment is detected, removed at once and replaced with TCX.

use std::{collections::BTreeSet, os::unix::fs::MetadataExt as _};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf,
    programs::{
        LinkOrder, RawTracePoint, SchedClassifier, TcAttachType, Xdp, XdpMode, links::FdLink,
        tc::TcAttachOptions,
    },
};
use lbtrace_common::{EndpointKey, names};

use super::{
    btf::{DropReasons, KernelBtf},
    counters::{self, Counters},
    kallsyms::DropLocations,
    legacy_tc::{self, LegacyTc},
    loader::{self, DropMode, DropParams, Loaded, Programs, ResetMode},
    rings::{RingLayout, Rings},
};
use crate::{endpoint::Watched, netif::Link};

/// What to load and where to attach it.
#[derive(Clone, Debug)]
pub struct TracerConfig {
    pub endpoints: Vec<Watched>,
    /// Interfaces to trace (validated: they exist).
    pub ifaces: Vec<Link>,
    /// XDP instead of TCX on ingress, where no XDP program holds the interface already.
    pub xdp: bool,
    /// The data-path mode (`--data`): data segments of watched tuples too.
    pub data: bool,
    /// Bytes of packet-event records, split over the per-CPU rings.
    pub ring_bytes: u32,
    /// Bytes of the ICMP/drop ring buffer (power of two, multiple of the page size).
    pub priority_ring_bytes: u32,
}

/// One attachment made, for the start-up report.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Attachment {
    pub iface: String,
    pub ifindex: u32,
    /// `tcx-ingress`, `tcx-egress`, `xdp`; with legacy TC `tc-ingress`, `tc-egress`.
    pub hook: &'static str,
}

/// How the TC programs are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcMode {
    /// TCX bpf_links (6.6+): gone with the process.
    Tcx,
    /// clsact + cls_bpf through netlink (before 6.6): recorded and cleaned up, see `legacy_tc`.
    Legacy,
}

impl TcMode {
    /// TCX where the kernel has it, else legacy TC. The hidden `LBTRACE_ATTACH=tc` (or `tcx`)
    /// forces one, to test the legacy path on a kernel that has TCX.
    pub fn select() -> Result<Self> {
        match std::env::var("LBTRACE_ATTACH").as_deref() {
            Ok("tc") => Ok(Self::Legacy),
            Ok("tcx") => Ok(Self::Tcx),
            Ok(other) => bail!("LBTRACE_ATTACH={other:?}: expected tc or tcx"),
            Err(_) if super::preflight::kernel_at_least(6, 6, 0) => Ok(Self::Tcx),
            Err(_) => Ok(Self::Legacy),
        }
    }
}

/// The loaded programs and their attachments: what `trace`, `check` and `watch` run on. Dropping
/// it detaches everything.
pub struct Tracer {
    ebpf: Ebpf,
    links: Vec<FdLink>,
    /// The legacy TC filters (and their record), when attached that way.
    legacy: Option<LegacyTc>,
    pub tc_mode: TcMode,
    pub attachments: Vec<Attachment>,
    /// Things the user should know about how lbtrace attached (e.g. TCX instead of XDP).
    pub notes: Vec<String>,
    pub reasons: DropReasons,
    /// Which drop tracer runs (location only on kernels without drop reasons).
    pub drop_mode: DropMode,
    /// Whether the retransmission tracer (`tcp:tcp_retransmit_skb`) is attached.
    pub retransmits: bool,
    /// Which sent-reset tracer (`tcp:tcp_send_reset`) is attached, if any.
    pub resets: Option<ResetMode>,
    /// Whether the received-reset tracer (`tcp:tcp_receive_reset`) is attached.
    pub received_resets: bool,
    pub endpoints: Vec<Watched>,
    pub netns_inum: u64,
    pub layout: RingLayout,
}

/// The inode number of this process's network namespace (what `ip netns identify` matches on).
pub fn netns_inum() -> Result<u64> {
    Ok(std::fs::metadata("/proc/self/ns/net")
        .context("reading /proc/self/ns/net")?
        .ino())
}

fn tcx(ebpf: &mut Ebpf, prog: &str, iface: &Link, ty: TcAttachType) -> Result<FdLink> {
    let p: &mut SchedClassifier = ebpf
        .program_mut(prog)
        .with_context(|| format!("program {prog} missing from the eBPF object"))?
        .try_into()?;
    // First in the TCX chain: lbtrace sees packets before an LB's own program may redirect or
    // drop them, and returns TCX_NEXT so that program still runs.
    let id = p
        .attach_with_options(
            &iface.name,
            ty,
            TcAttachOptions::TcxOrder(LinkOrder::first()),
        )
        .with_context(|| format!("attaching {prog} to {} with TCX", iface.name))?;
    let link = p.take_link(id)?;
    FdLink::try_from(link).map_err(|e| {
        anyhow!(
            "{prog} on {} did not get a bpf_link ({e}); refusing a legacy attachment",
            iface.name
        )
    })
}

impl Tracer {
    /// Loads the programs (the verifier log is in the error on rejection), fills the maps and
    /// attaches everything. On error, whatever was attached is detached again (dropped).
    pub fn start(cfg: &TracerConfig) -> Result<Self> {
        let kbtf = KernelBtf::load()?;
        // Kernels before 5.17 have no `enum skb_drop_reason` and no `reason` argument to
        // `skb:kfree_skb`: drops are reported by location there.
        let (drop_mode, reasons, why) = match (DropMode::forced()?, kbtf.drop_reasons()) {
            (Some(DropMode::Location), _) => (DropMode::Location, None, "LBTRACE_DROPS=location"),
            (_, Ok(r)) => (DropMode::Reason, Some(r), ""),
            (_, Err(_)) => (
                DropMode::Location,
                None,
                "this kernel has no drop reasons (before 5.17)",
            ),
        };
        // 6.10 gave `tcp:tcp_send_reset` its `reason` argument and `enum sk_rst_reason`.
        let rst_reasons = kbtf.rst_reasons();
        let reset_mode = if rst_reasons.is_some() {
            ResetMode::All
        } else {
            ResetMode::Sockets
        };
        let reasons = reasons
            .unwrap_or_else(|| DropReasons::without_reasons(DropLocations::load()))
            .with_rst_reasons(rst_reasons.unwrap_or_default());
        let inum = netns_inum()?;
        let tc_mode = TcMode::select()?;
        let keys: Vec<(EndpointKey, u32)> = cfg
            .endpoints
            .iter()
            .enumerate()
            .map(|(id, w)| Ok((w.endpoint.key(), u32::try_from(id)?)))
            .collect::<Result<_>>()?;
        let mut opts = loader::Options::new(
            super::EBPF_OBJECT,
            RingLayout::new(u64::from(cfg.ring_bytes), cfg.priority_ring_bytes)?,
            keys,
        );
        opts.programs = Programs {
            tc: tc_mode == TcMode::Tcx,
            legacy_tc: tc_mode == TcMode::Legacy,
            xdp: cfg.xdp,
        };
        opts.data = cfg.data;
        opts.drops = Some(DropParams {
            offsets: kbtf.offsets()?,
            netns_inum: u32::try_from(inum)
                .context("network namespace inode does not fit 32 bits")?,
            noise: reasons.noise_values(),
            mode: drop_mode,
        });
        let retrans_offsets = kbtf.sock_offsets();
        opts.retrans = retrans_offsets.as_ref().ok().copied();
        let Loaded {
            ebpf,
            layout,
            notes,
        } = loader::load_probing(&mut opts)?;

        let mut tracer = Self {
            ebpf,
            links: Vec::new(),
            legacy: None,
            tc_mode,
            attachments: Vec::new(),
            notes,
            reasons,
            drop_mode,
            retransmits: false,
            resets: None,
            received_resets: false,
            endpoints: cfg.endpoints.clone(),
            netns_inum: inum,
            layout,
        };
        if drop_mode == DropMode::Location {
            tracer.notes.push(location_note(why, &tracer.reasons));
        }
        tracer.attach_drops()?;
        match retrans_offsets {
            Ok(_) => {
                tracer.retransmits = tracer.attach_socket_tracer(
                    names::PROG_TCP_RETRANSMIT,
                    names::TP_TCP_RETRANSMIT,
                    "retransmissions are not traced",
                );
                tracer.resets = tracer
                    .attach_socket_tracer(
                        reset_mode.program(),
                        names::TP_TCP_SEND_RESET,
                        "resets this host sends are not traced",
                    )
                    .then_some(reset_mode);
                tracer.received_resets = tracer.attach_socket_tracer(
                    names::PROG_TCP_RECEIVE_RESET,
                    names::TP_TCP_RECEIVE_RESET,
                    "resets this host's sockets receive are not traced",
                );
            }
            Err(e) => tracer.notes.push(format!(
                "retransmissions and resets of this host's sockets are not traced: {e}"
            )),
        }
        if tracer.resets == Some(ResetMode::Sockets) {
            tracer.notes.push(
                "this kernel's tcp:tcp_send_reset (before 6.10) fires for full sockets only: resets answering segments with no socket (no listener) or a TIME_WAIT one are not attributed".to_owned(),
            );
        }
        if tc_mode == TcMode::Legacy && !cfg.ifaces.is_empty() {
            // Whatever a killed lbtrace left here goes first.
            let stale = legacy_tc::cleanup(inum);
            tracer.notes.extend(
                stale
                    .removed
                    .iter()
                    .map(|l| format!("removed a stale lbtrace attachment: {l}")),
            );
            tracer.legacy = Some(LegacyTc::new(inum)?);
            tracer.notes.push(format!(
                "attached with legacy TC (clsact + cls_bpf filters, recorded in {}): {}",
                legacy_tc::run_dir().display(),
                if std::env::var_os("LBTRACE_ATTACH").is_some() {
                    "chosen with LBTRACE_ATTACH"
                } else {
                    "this kernel has no TCX"
                }
            ));
        }
        let mut seen = BTreeSet::new();
        for iface in &cfg.ifaces {
            if seen.insert(iface.ifindex) {
                tracer.attach_iface(iface, cfg.xdp)?;
            }
        }
        Ok(tracer)
    }

    /// Attaches the drop tracer. Should the kernel refuse the reason-reading program (its
    /// `skb:kfree_skb` has fewer arguments than its BTF suggested), the location-only program
    /// is loaded and attached instead.
    fn attach_drops(&mut self) -> Result<()> {
        let first = match self.attach_drop_program(self.drop_mode) {
            Ok(()) => return Ok(()),
            Err(e) if self.drop_mode == DropMode::Location => return Err(e),
            Err(e) => e,
        };
        let prog = DropMode::Location.program();
        let p: &mut RawTracePoint = self
            .ebpf
            .program_mut(prog)
            .with_context(|| format!("program {prog} missing from the eBPF object"))?
            .try_into()?;
        p.load()
            .with_context(|| format!("the kernel's verifier rejected {prog}"))?;
        self.attach_drop_program(DropMode::Location)
            .map_err(|e| e.context(format!("after: {}", crate::one_line(&first))))?;
        self.drop_mode = DropMode::Location;
        self.reasons = DropReasons::without_reasons(DropLocations::load());
        let why = format!(
            "the kernel refused the reason-reading drop tracer ({})",
            crate::one_line(&first)
        );
        self.notes.push(location_note(&why, &self.reasons));
        Ok(())
    }

    /// Attaches a socket tracer (`prog` on the raw tracepoint `tcp:{tp}`); a kernel without the
    /// tracepoint, or whose verifier refuses it, only loses what it traces, and a note (`lost`)
    /// says so. Whether it is attached.
    fn attach_socket_tracer(&mut self, prog: &str, tp: &str, lost: &str) -> bool {
        let mut attach = || -> Result<FdLink> {
            let p = loader::load_tracepoint(&mut self.ebpf, prog)?;
            let id = p
                .attach(tp)
                .with_context(|| format!("attaching to the raw tracepoint tcp:{tp}"))?;
            Ok(FdLink::from(p.take_link(id)?))
        };
        match attach() {
            Ok(link) => {
                self.links.push(link);
                true
            }
            Err(e) => {
                self.notes.push(format!("{lost}: {}", crate::one_line(&e)));
                false
            }
        }
    }

    fn attach_drop_program(&mut self, mode: DropMode) -> Result<()> {
        let p: &mut RawTracePoint = self
            .ebpf
            .program_mut(mode.program())
            .context("program missing")?
            .try_into()?;
        let id = p
            .attach("kfree_skb")
            .context("attaching the drop tracer to the raw tracepoint skb:kfree_skb")?;
        let link = p.take_link(id)?;
        self.links.push(FdLink::from(link));
        Ok(())
    }

    fn attach_xdp(&mut self, iface: &Link) -> Result<FdLink, String> {
        let p: &mut Xdp = self
            .ebpf
            .program_mut(&self.layout.mode.program(names::PROG_XDP_INGRESS))
            .ok_or("program missing")?
            .try_into()
            .map_err(|e| format!("{e}"))?;
        let id = p
            .attach_to_if_index(iface.ifindex, XdpMode::default())
            .map_err(|e| format!("{e}"))?;
        let link = p.take_link(id).map_err(|e| format!("{e}"))?;
        // A netlink attachment (aya's fallback) would survive SIGKILL: converting fails, and
        // dropping it detaches it right away.
        FdLink::try_from(link).map_err(|_| {
            "the kernel gave a netlink attachment, not a bpf_link; detached it".to_owned()
        })
    }

    fn attach_iface(&mut self, iface: &Link, xdp: bool) -> Result<()> {
        let mut ingress_done = false;
        if xdp {
            if let Some(id) = iface.xdp_prog {
                self.notes.push(format!(
                    "{}: an XDP program (id {id}) is already attached; lbtrace leaves it alone and traces {} with TCX",
                    iface.name, iface.name
                ));
            } else {
                match self.attach_xdp(iface) {
                    Ok(link) => {
                        self.links.push(link);
                        self.attachments.push(Attachment {
                            iface: iface.name.clone(),
                            ifindex: iface.ifindex,
                            hook: "xdp",
                        });
                        ingress_done = true;
                    }
                    Err(e) => self.notes.push(format!(
                        "{}: XDP attach failed ({e}); tracing {} with TCX instead",
                        iface.name, iface.name
                    )),
                }
            }
        }
        if !ingress_done {
            self.attach_tc(iface, TcAttachType::Ingress)?;
        }
        self.attach_tc(iface, TcAttachType::Egress)
    }

    /// Attaches the TC program of direction `ty` to `iface`, with TCX or legacy TC.
    fn attach_tc(&mut self, iface: &Link, ty: TcAttachType) -> Result<()> {
        let ingress = ty == TcAttachType::Ingress;
        let hook = match (&mut self.legacy, ingress) {
            (None, _) => {
                let prog = self.layout.mode.program(if ingress {
                    names::PROG_TC_INGRESS
                } else {
                    names::PROG_TC_EGRESS
                });
                let link = tcx(&mut self.ebpf, &prog, iface, ty)?;
                self.links.push(link);
                if ingress { "tcx-ingress" } else { "tcx-egress" }
            }
            (Some(legacy), _) => {
                let prog = self.layout.mode.program(if ingress {
                    names::PROG_LEGACY_TC_INGRESS
                } else {
                    names::PROG_LEGACY_TC_EGRESS
                });
                if let Some(note) = legacy.attach(&mut self.ebpf, &prog, iface, ty)? {
                    self.notes.push(note);
                }
                if ingress { "tc-ingress" } else { "tc-egress" }
            }
        };
        self.attachments.push(Attachment {
            iface: iface.name.clone(),
            ifindex: iface.ifindex,
            hook,
        });
        Ok(())
    }

    /// Takes the rings out to be drained from tokio.
    pub fn rings(&mut self) -> Result<Rings> {
        let mut rings = Rings::new(loader::take_rings(&mut self.ebpf, &self.layout)?)?;
        rings.locations = self.reasons.locations().cloned();
        Ok(rings)
    }

    /// Detaches every program (the maps stay readable until the tracer is dropped).
    pub fn detach(&mut self) {
        // Closing a bpf_link's last fd detaches it; legacy filters are deleted.
        self.links.clear();
        self.legacy = None;
    }

    pub fn counters(&self) -> Counters {
        counters::read(&self.ebpf)
    }

    pub fn endpoint_stats(&self) -> Vec<lbtrace_common::EndpointStats> {
        counters::endpoint_stats(&self.ebpf, u32::try_from(self.endpoints.len()).unwrap_or(0))
    }

    pub fn data_drop_reasons(&self) -> Vec<(String, u64)> {
        counters::data_drop_reasons(&self.ebpf)
            .into_iter()
            .map(|(r, n)| (self.reasons.name(r), n))
            .collect()
    }
}

/// The one note that says drops have no kernel reason on this run, and how they are named.
fn location_note(why: &str, reasons: &DropReasons) -> String {
    let named = match reasons.locations().and_then(|l| l.kallsyms.as_ref()) {
        Some(k) => format!(
            "named through {} ({} symbols)",
            super::kallsyms::KALLSYMS,
            k.len()
        ),
        None => format!(
            "shown as addresses: {} gave none (kernel.kptr_restrict?)",
            super::kallsyms::KALLSYMS
        ),
    };
    format!(
        "drop reasons are unavailable ({why}): drops are reported by the kernel location that freed them, {named}; nf_hook_slow / nft_* count as NETFILTER_DROP and a SYN freed by tcp_v4_rcv / tcp_v6_rcv as NO_SOCKET"
    )
}
