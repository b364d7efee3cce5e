//! What the drop tracer needs from the running kernel's BTF (/sys/kernel/btf/vmlinux): struct
//! member offsets (Rust eBPF has no CO-RE relocations, so they are passed in as a global before
//! load) and the names of `enum skb_drop_reason`, whose values differ between kernels.

use std::{collections::HashMap, sync::Arc};

use btf_rs::{Btf, Type};
use lbtrace_common::{KernelOffsets, SockOffsets};

use super::kallsyms::DropLocations;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "this kernel has no BTF ({VMLINUX_BTF}: {0}); lbtrace needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    Missing(#[source] btf_rs::Error),
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF: struct {strukt} has no member {member}")]
    NoMember { strukt: String, member: String },
    #[error("kernel BTF has no enum skb_drop_reason (kernel older than 5.17)")]
    NoDropReasons,
    #[error("kernel BTF: {0}")]
    Read(#[source] btf_rs::Error),
}

/// The running kernel's own type information (/sys/kernel/btf/vmlinux): where `sk_buff` and
/// `net_device` keep the fields the drop tracer reads (Rust eBPF has no CO-RE, so the offsets
/// are passed in as globals), and the names of `enum skb_drop_reason`, which differ between
/// kernels.
pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    pub fn load() -> Result<Self, BtfError> {
        Btf::from_file(VMLINUX_BTF)
            .map(|btf| Self { btf })
            .map_err(BtfError::Missing)
    }

    fn strukt(&self, name: &str) -> Result<btf_rs::Struct, BtfError> {
        let types = self
            .btf
            .resolve_types_by_name(name)
            .map_err(|_| BtfError::NoStruct(name.to_owned()))?;
        types
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) if !s.members.is_empty() => Some(s),
                _ => None,
            })
            .ok_or_else(|| BtfError::NoStruct(name.to_owned()))
    }

    /// Byte offset of `member` in `s`, looking through anonymous structs and unions.
    fn find_member(
        &self,
        s: &btf_rs::Struct,
        member: &str,
    ) -> Result<Option<(u32, Type)>, BtfError> {
        for m in &s.members {
            let name = self.btf.resolve_name(m).unwrap_or_default();
            let ty = self.btf.resolve_chained_type(m).map_err(BtfError::Read)?;
            if name == member {
                return Ok(Some((m.bit_offset() / 8, ty)));
            }
            if name.is_empty()
                && let Type::Struct(inner) | Type::Union(inner) = &ty
                && let Some((off, t)) = self.find_member(inner, member)?
            {
                return Ok(Some((m.bit_offset() / 8 + off, t)));
            }
        }
        Ok(None)
    }

    /// Offset of `path` (members of nested, named structs) from the start of `struct root`.
    pub fn offset_of(&self, root: &str, path: &[&str]) -> Result<u32, BtfError> {
        let mut s = self.strukt(root)?;
        let mut strukt_name = root.to_owned();
        let mut total = 0;
        for (i, member) in path.iter().enumerate() {
            let (off, ty) = self
                .find_member(&s, member)?
                .ok_or_else(|| BtfError::NoMember {
                    strukt: strukt_name.clone(),
                    member: (*member).to_owned(),
                })?;
            total += off;
            if i + 1 < path.len() {
                let ty = self.skip_modifiers(ty)?;
                s = match ty {
                    Type::Struct(s) | Type::Union(s) => s,
                    _ => {
                        return Err(BtfError::NoMember {
                            strukt: (*member).to_owned(),
                            member: path[i + 1].to_owned(),
                        });
                    }
                };
                strukt_name = (*member).to_owned();
            }
        }
        Ok(total)
    }

    fn skip_modifiers(&self, mut ty: Type) -> Result<Type, BtfError> {
        loop {
            ty = match &ty {
                Type::Typedef(t) => self.btf.resolve_chained_type(t).map_err(BtfError::Read)?,
                Type::Volatile(t) | Type::Const(t) | Type::Restrict(t) => {
                    self.btf.resolve_chained_type(t).map_err(BtfError::Read)?
                }
                _ => return Ok(ty),
            };
        }
    }

    /// The offsets the drop tracer reads.
    pub fn offsets(&self) -> Result<KernelOffsets, BtfError> {
        Ok(KernelOffsets {
            skb_head: self.offset_of("sk_buff", &["head"])?,
            skb_network_header: self.offset_of("sk_buff", &["network_header"])?,
            skb_dev: self.offset_of("sk_buff", &["dev"])?,
            skb_sk: self.offset_of("sk_buff", &["sk"])?,
            dev_ifindex: self.offset_of("net_device", &["ifindex"])?,
            dev_nd_net: self.offset_of("net_device", &["nd_net", "net"])?,
            sk_net: self.offset_of("sock", &["__sk_common", "skc_net", "net"])?,
            net_inum: self.offset_of("net", &["ns", "inum"])?,
        })
    }

    /// The offsets the retransmission tracer reads: the socket's tuple, the segment's length,
    /// sequence number and flags, the socket's MSS.
    pub fn sock_offsets(&self) -> Result<SockOffsets, BtfError> {
        let common = |m: &str| self.offset_of("sock_common", &[m]);
        Ok(SockOffsets {
            family: common("skc_family")?,
            daddr: common("skc_daddr")?,
            rcv_saddr: common("skc_rcv_saddr")?,
            dport: common("skc_dport")?,
            num: common("skc_num")?,
            v6_daddr: common("skc_v6_daddr")?,
            v6_rcv_saddr: common("skc_v6_rcv_saddr")?,
            skb_len: self.offset_of("sk_buff", &["len"])?,
            skb_cb: self.offset_of("sk_buff", &["cb"])?,
            cb_tcp_flags: self.offset_of("tcp_skb_cb", &["tcp_flags"])?,
            mss_cache: self.offset_of("tcp_sock", &["mss_cache"])?,
            state: common("skc_state")?,
            inet_sport: self.offset_of("inet_sock", &["inet_sport"])?,
        })
    }

    /// `enum sk_rst_reason` (6.10 and later, with the `reason` argument of `tcp:tcp_send_reset`):
    /// value -> name without the `SK_RST_REASON_` prefix; `None` on older kernels.
    pub fn rst_reasons(&self) -> Option<HashMap<u32, String>> {
        let types = self.btf.resolve_types_by_name("sk_rst_reason").ok()?;
        let mut names = HashMap::new();
        for t in types {
            if let Type::Enum(e) = t {
                for m in &e.members {
                    let Ok(name) = self.btf.resolve_name(m) else {
                        continue;
                    };
                    let name = name.strip_prefix("SK_RST_REASON_").unwrap_or(&name);
                    names.insert(m.val(), name.to_owned());
                }
            }
        }
        (!names.is_empty()).then_some(names)
    }

    /// `enum skb_drop_reason`: value -> name without the `SKB_DROP_REASON_` prefix.
    pub fn drop_reasons(&self) -> Result<DropReasons, BtfError> {
        let types = self
            .btf
            .resolve_types_by_name("skb_drop_reason")
            .map_err(|_| BtfError::NoDropReasons)?;
        let mut names = HashMap::new();
        for t in types {
            if let Type::Enum(e) = t {
                for m in &e.members {
                    let name = self.btf.resolve_name(m).map_err(BtfError::Read)?;
                    let name = name
                        .strip_prefix("SKB_DROP_REASON_")
                        .unwrap_or(&name)
                        .to_owned();
                    names.insert(m.val(), name);
                }
            }
        }
        if names.is_empty() {
            return Err(BtfError::NoDropReasons);
        }
        Ok(DropReasons {
            names,
            locations: None,
            rst: Arc::default(),
        })
    }
}

/// Drop-reason names of the running kernel.
#[derive(Clone, Debug, Default)]
pub struct DropReasons {
    names: HashMap<u32, String>,
    /// Set on kernels without drop reasons (before 5.17): the values are then lbtrace's own
    /// ([`super::kallsyms::code`]), mapped from the drop's location, which this names.
    locations: Option<Arc<DropLocations>>,
    /// `enum sk_rst_reason` (6.10 and later): the reasons of resets this host sent.
    rst: Arc<HashMap<u32, String>>,
}

/// Reasons that are normal teardown rather than a lost packet: a closing socket purging its
/// queues. They are filtered in the kernel and only counted.
pub const NOISE: &[&str] = &[
    "QUEUE_PURGE",
    "SOCKET_CLOSE",
    "SKB_CONSUMED",
    "NOT_DROPPED_YET",
];

impl DropReasons {
    /// The reasons of a kernel without `enum skb_drop_reason`: lbtrace's own codes for the
    /// locations it maps ([`super::kallsyms::reason_of`]), `locations` naming the rest.
    pub fn without_reasons(locations: Arc<DropLocations>) -> Self {
        use super::kallsyms::code;
        Self {
            names: [
                (code::NOT_SPECIFIED, "NOT_SPECIFIED"),
                (code::NETFILTER_DROP, "NETFILTER_DROP"),
                (code::NO_SOCKET, "NO_SOCKET"),
            ]
            .into_iter()
            .map(|(v, n)| (v, n.to_owned()))
            .collect(),
            locations: Some(locations),
            rst: Arc::default(),
        }
    }

    /// With the kernel's reset reasons ([`KernelBtf::rst_reasons`]).
    pub fn with_rst_reasons(self, rst: HashMap<u32, String>) -> Self {
        Self {
            rst: Arc::new(rst),
            ..self
        }
    }

    /// The name of an `enum sk_rst_reason` value.
    pub fn rst_name(&self, value: u32) -> String {
        self.rst
            .get(&value)
            .cloned()
            .unwrap_or_else(|| format!("RST_REASON_{value}"))
    }

    /// The location table, on a kernel without drop reasons.
    pub fn locations(&self) -> Option<&Arc<DropLocations>> {
        self.locations.as_ref()
    }

    /// A drop's location by name (`nf_hook_slow+0x5c`), on a kernel without drop reasons.
    pub fn location(&self, addr: u64) -> Option<String> {
        self.locations
            .as_ref()
            .filter(|_| addr != 0)
            .map(|l| l.symbolise(addr))
    }

    pub fn name(&self, value: u32) -> String {
        self.names
            .get(&value)
            .cloned()
            .unwrap_or_else(|| format!("REASON_{value}"))
    }

    pub fn value(&self, name: &str) -> Option<u32> {
        self.names
            .iter()
            .find(|(_, n)| n.as_str() == name)
            .map(|(v, _)| *v)
    }

    pub fn noise_values(&self) -> Vec<u32> {
        NOISE.iter().filter_map(|n| self.value(n)).collect()
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    #[cfg(test)]
    pub fn from_pairs(pairs: &[(u32, &str)]) -> Self {
        Self {
            names: pairs.iter().map(|(v, n)| (*v, (*n).to_owned())).collect(),
            locations: None,
            rst: Arc::default(),
        }
    }
}
