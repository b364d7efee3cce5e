//! Loading the kernel programs with this host's parameters and attaching them, bpf_links only.
//!
//! Nothing is pinned and every attachment is a bpf_link held by this process (TCX, XDP, raw
//! tracepoint), so the kernel detaches all of it when lbtrace exits, even on SIGKILL. aya falls
//! back to a netlink XDP attachment on some errors, which would outlive the process: such an
//! attachment is detected, removed at once and replaced with TCX.

use std::{collections::BTreeSet, os::unix::fs::MetadataExt as _};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap},
    programs::{
        LinkOrder, RawTracePoint, SchedClassifier, TcAttachType, Xdp, XdpMode, links::FdLink,
        tc::TcAttachOptions,
    },
};
use lbtrace_common::{
    EndpointKey, MAX_DROP_REASONS, MAX_ENDPOINTS, PORT_HASHED, PORT_SLOT_ENTRIES, PortEntry,
    PortSlot, names,
};

use super::{
    btf::{DropReasons, KernelBtf},
    counters::{self, Counters},
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
    /// `tcx-ingress`, `tcx-egress`, `xdp`.
    pub hook: &'static str,
}

pub struct Tracer {
    ebpf: Ebpf,
    links: Vec<FdLink>,
    pub attachments: Vec<Attachment>,
    /// Things the user should know about how lbtrace attached (e.g. TCX instead of XDP).
    pub notes: Vec<String>,
    pub reasons: DropReasons,
    pub endpoints: Vec<Watched>,
    pub netns_inum: u64,
    pub layout: RingLayout,
}

/// Fills `ENDPOINTS` (key -> endpoint id), and `PORTS` / `PORT_SLOTS`, the per-port table the
/// programs look endpoints up in without hashing. Every loader of the object goes through here,
/// so the maps never disagree.
pub fn fill_endpoints(ebpf: &mut Ebpf, keys: &[(EndpointKey, u32)]) -> Result<()> {
    {
        let mut eps: HashMap<_, EndpointKey, u32> = HashMap::try_from(
            ebpf.map_mut(names::ENDPOINTS)
                .context("ENDPOINTS map missing")?,
        )?;
        for (k, id) in keys {
            eps.insert(k, id, 0).context("filling ENDPOINTS")?;
        }
    }
    let (ports, slots) = port_table(keys);
    {
        let mut map: Array<_, PortSlot> = Array::try_from(
            ebpf.map_mut(names::PORT_SLOTS)
                .context("PORT_SLOTS map missing")?,
        )?;
        for (i, slot) in slots.iter().enumerate() {
            map.set(u32::try_from(i)?, slot, 0)
                .context("filling PORT_SLOTS")?;
        }
    }
    let mut map: Array<_, u16> =
        Array::try_from(ebpf.map_mut(names::PORTS).context("PORTS map missing")?)?;
    for (port, v) in ports {
        map.set(u32::from(port), v, 0).context("filling PORTS")?;
    }
    Ok(())
}

/// The `PORTS` entries and `PORT_SLOTS` for `keys`: each watched port (not 0, the all-ports
/// wildcard, which is only in the hash map) gets a slot with its endpoints, or `PORT_HASHED`
/// when it has more than a slot holds.
pub fn port_table(keys: &[(EndpointKey, u32)]) -> (Vec<(u16, u16)>, Vec<PortSlot>) {
    let mut by_port: std::collections::BTreeMap<u16, Vec<(EndpointKey, u32)>> = Default::default();
    for &(k, id) in keys {
        if k.port != 0 {
            let v = by_port.entry(k.port).or_default();
            if !v.iter().any(|(o, _)| *o == k) {
                v.push((k, id));
            }
        }
    }
    let mut ports = Vec::new();
    let mut slots = Vec::new();
    for (port, eps) in by_port {
        if eps.len() > PORT_SLOT_ENTRIES {
            ports.push((port, PORT_HASHED));
            continue;
        }
        let mut slot = PortSlot {
            len: u32::try_from(eps.len()).unwrap_or(0),
            ..Default::default()
        };
        for (e, (k, id)) in slot.entries.iter_mut().zip(eps) {
            *e = PortEntry {
                addr: k.addr_words(),
                id,
                family: k.family,
                _pad: [0; 3],
            };
        }
        slots.push(slot);
        // Slot indexes stay below MAX_PORT_SLOTS (= MAX_ENDPOINTS), so + 1 fits a u16.
        ports.push((port, u16::try_from(slots.len()).unwrap_or(PORT_HASHED)));
    }
    (ports, slots)
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
        let offsets = kbtf.offsets()?;
        let reasons = kbtf.drop_reasons()?;
        let inum = netns_inum()?;
        let inum32 = u32::try_from(inum).context("network namespace inode does not fit 32 bits")?;
        let wildcard: u8 = u8::from(cfg.endpoints.iter().any(|w| w.endpoint.port.is_none()));
        let layout = RingLayout::new(u64::from(cfg.ring_bytes), cfg.priority_ring_bytes)?;
        if cfg.endpoints.len() > MAX_ENDPOINTS as usize {
            bail!(
                "too many endpoints ({}): lbtrace watches at most {MAX_ENDPOINTS}",
                cfg.endpoints.len()
            );
        }

        let mut loader = EbpfLoader::new();
        loader
            .override_global(names::GLOBAL_OFFSETS, &offsets, true)
            .override_global(names::GLOBAL_NETNS_INUM, &inum32, true)
            .override_global(names::GLOBAL_HAS_WILDCARD, &wildcard, true);
        layout.apply(&mut loader)?;
        let mut ebpf = loader
            .load(super::EBPF_OBJECT)
            .context("loading the eBPF object")?;

        let keys: Vec<(EndpointKey, u32)> = cfg
            .endpoints
            .iter()
            .enumerate()
            .map(|(id, w)| Ok((w.endpoint.key(), u32::try_from(id)?)))
            .collect::<Result<_>>()?;
        fill_endpoints(&mut ebpf, &keys)?;
        {
            let mut noise: Array<_, u8> = Array::try_from(
                ebpf.map_mut(names::NOISE_REASONS)
                    .context("NOISE_REASONS map missing")?,
            )?;
            for v in reasons.noise_values() {
                if v < MAX_DROP_REASONS {
                    noise.set(v, 1, 0).context("filling NOISE_REASONS")?;
                }
            }
        }

        for prog in [names::PROG_TC_INGRESS, names::PROG_TC_EGRESS] {
            let p: &mut SchedClassifier = ebpf
                .program_mut(prog)
                .context("program missing")?
                .try_into()?;
            p.load()
                .with_context(|| format!("the kernel's verifier rejected {prog}"))?;
        }
        if cfg.xdp {
            let p: &mut Xdp = ebpf
                .program_mut(names::PROG_XDP_INGRESS)
                .context("program missing")?
                .try_into()?;
            p.load().with_context(|| {
                format!("the kernel's verifier rejected {}", names::PROG_XDP_INGRESS)
            })?;
        }

        let mut tracer = Self {
            ebpf,
            links: Vec::new(),
            attachments: Vec::new(),
            notes: Vec::new(),
            reasons,
            endpoints: cfg.endpoints.clone(),
            netns_inum: inum,
            layout: layout.clone(),
        };
        tracer.attach_drops()?;
        let mut seen = BTreeSet::new();
        for iface in &cfg.ifaces {
            if seen.insert(iface.ifindex) {
                tracer.attach_iface(iface, cfg.xdp)?;
            }
        }
        Ok(tracer)
    }

    fn attach_drops(&mut self) -> Result<()> {
        let p: &mut RawTracePoint = self
            .ebpf
            .program_mut(names::PROG_KFREE_SKB)
            .context("program missing")?
            .try_into()?;
        p.load()
            .with_context(|| format!("the kernel's verifier rejected {}", names::PROG_KFREE_SKB))?;
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
            .program_mut(names::PROG_XDP_INGRESS)
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
            let link = tcx(
                &mut self.ebpf,
                names::PROG_TC_INGRESS,
                iface,
                TcAttachType::Ingress,
            )?;
            self.links.push(link);
            self.attachments.push(Attachment {
                iface: iface.name.clone(),
                ifindex: iface.ifindex,
                hook: "tcx-ingress",
            });
        }
        let link = tcx(
            &mut self.ebpf,
            names::PROG_TC_EGRESS,
            iface,
            TcAttachType::Egress,
        )?;
        self.links.push(link);
        self.attachments.push(Attachment {
            iface: iface.name.clone(),
            ifindex: iface.ifindex,
            hook: "tcx-egress",
        });
        Ok(())
    }

    /// Takes the rings out to be drained from tokio.
    pub fn rings(&mut self) -> Result<Rings> {
        Rings::take(&mut self.ebpf, &self.layout)
    }

    /// Detaches every program (the maps stay readable until the tracer is dropped).
    pub fn detach(&mut self) {
        // Closing a bpf_link's last fd detaches it.
        self.links.clear();
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

#[cfg(test)]
mod tests {
    use lbtrace_common::family;

    use super::*;

    fn key(last: u8, port: u16) -> EndpointKey {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[10, 0, 0, last]);
        EndpointKey {
            addr,
            port,
            family: family::V4,
            _pad: 0,
        }
    }

    #[test]
    fn port_table_gives_each_port_a_slot_until_it_is_full() {
        let mut keys = vec![(key(10, 443), 0), (key(0, 0), 1)];
        // 8 backends on :80 (a full slot), 9 on :8080 (hashed); a duplicate key counts once.
        keys.extend((0..8).map(|i| (key(20 + i, 80), 2 + u32::from(i))));
        keys.extend((0..9).map(|i| (key(40 + i, 8080), 10 + u32::from(i))));
        keys.push((key(20, 80), 2));
        let (ports, slots) = port_table(&keys);
        // Port 0 (every port of 10.0.0.0) is only in the hash map.
        assert_eq!(ports, vec![(80, 1), (443, 2), (8080, PORT_HASHED)]);
        assert_eq!(slots.len(), 2);
        assert_eq!(slots[0].len, 8);
        assert_eq!(slots[1].len, 1);
        let e = slots[1].entries[0];
        assert_eq!((e.id, e.family), (0, family::V4));
        assert_eq!(e.addr, key(10, 443).addr_words());
        assert_eq!(
            slots[0].entries.iter().map(|e| e.id).collect::<Vec<_>>(),
            (2..10).collect::<Vec<_>>()
        );
    }
}
