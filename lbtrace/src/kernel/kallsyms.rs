//! Drop locations for kernels without drop reasons (before 5.17): `skb:kfree_skb` there gives
//! only the kernel text address that freed the packet. This module names it through
//! /proc/kallsyms (`nf_hook_slow+0x5c`) and maps the well-known ones to the nearest reason, so
//! verdicts that act on reasons keep working.
//!
//! ```text
//! /proc/kallsyms ──read once, text symbols only, sorted──▶ Kallsyms ──symbolise(addr)──▶ "sym+0xoff"
//! drop event (reason 0, location) ──LocationReasons::reason_of──▶ lbtrace's own reason code
//! ```

use std::sync::Arc;

use lbtrace_common::tcp_flag;

pub const KALLSYMS: &str = "/proc/kallsyms";

/// At most this many bytes of /proc/kallsyms are read (a 6.x kernel with modules has ~15 MB).
const MAX_BYTES: u64 = 64 << 20;

/// The kernel's text symbols, sorted by address. Names live in one string.
#[derive(Debug, Default)]
pub struct Kallsyms {
    /// (address, start of the name in `names`, its length), sorted by address.
    syms: Vec<(u64, u32, u16)>,
    names: String,
}

impl Kallsyms {
    /// Reads /proc/kallsyms once. `None` when it cannot be read or shows no addresses (not
    /// root, or `kernel.kptr_restrict=2`).
    pub fn load() -> Option<Self> {
        use std::io::Read as _;
        let f = std::fs::File::open(KALLSYMS).ok()?;
        let mut text = String::new();
        f.take(MAX_BYTES).read_to_string(&mut text).ok()?;
        let k = Self::parse(&text);
        (!k.syms.is_empty()).then_some(k)
    }

    /// Parses kallsyms text: `ffffffff81234560 T name [module]` lines. Only text symbols
    /// (`t`/`T`/`w`/`W`) with a non-zero address are kept.
    pub fn parse(text: &str) -> Self {
        let mut k = Self::default();
        for line in text.lines() {
            let mut it = line.split_ascii_whitespace();
            let (Some(addr), Some(ty), Some(name)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            if !matches!(ty, "t" | "T" | "w" | "W") {
                continue;
            }
            let Ok(addr) = u64::from_str_radix(addr, 16) else {
                continue;
            };
            let (Ok(start), Ok(len)) = (u32::try_from(k.names.len()), u16::try_from(name.len()))
            else {
                continue;
            };
            if addr == 0 {
                continue;
            }
            k.names.push_str(name);
            k.syms.push((addr, start, len));
        }
        k.syms.sort_unstable_by_key(|s| s.0);
        k.names.shrink_to_fit();
        k.syms.shrink_to_fit();
        k
    }

    pub fn len(&self) -> usize {
        self.syms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.syms.is_empty()
    }

    /// The symbol `addr` is in and the offset into it; `None` below the first symbol.
    pub fn lookup(&self, addr: u64) -> Option<(&str, u64)> {
        let i = self.syms.partition_point(|s| s.0 <= addr).checked_sub(1)?;
        let (at, start, len) = self.syms[i];
        let start = start as usize;
        Some((&self.names[start..start + len as usize], addr - at))
    }

    /// `nf_hook_slow+0x5c`, or the address in hex when no symbol covers it.
    pub fn symbolise(&self, addr: u64) -> String {
        match self.lookup(addr) {
            Some((name, off)) => format!("{name}+{off:#x}"),
            None => format!("{addr:#x}"),
        }
    }
}

/// lbtrace's own reason codes on kernels without drop reasons (the values of
/// [`super::btf::DropReasons::without_reasons`]), named like the kernel's.
pub mod code {
    /// No mapping: the location is all there is.
    pub const NOT_SPECIFIED: u32 = 0;
    pub const NETFILTER_DROP: u32 = 1;
    pub const NO_SOCKET: u32 = 2;
}

/// The nearest reason for a drop at `symbol` of a packet with TCP `flags`:
///
/// * `nf_hook_slow` (and `nf_hook_slow_list`) frees every packet a netfilter hook returned
///   NF_DROP for; `nft_*` / `ipt_do_table` / `ip6t_do_table` are netfilter too
///   -> `NETFILTER_DROP`.
/// * `tcp_v4_rcv` / `tcp_v6_rcv` free a SYN themselves when no socket takes it (after
///   answering with a RST); their other drops of a SYN (bad checksum, xfrm policy, min TTL) are
///   rare -> `NO_SOCKET` for a SYN without ACK. Other packets freed there stay unmapped.
///
/// Route lookup failures (`ip_rcv_finish`) are not mapped: rp_filter, a missing route and a
/// martian source all free the packet at the same place.
pub fn reason_of(symbol: &str, flags: u8) -> u32 {
    if symbol.starts_with("nf_hook_slow")
        || symbol.starts_with("nft_")
        || symbol == "ipt_do_table"
        || symbol == "ip6t_do_table"
    {
        code::NETFILTER_DROP
    } else if matches!(symbol, "tcp_v4_rcv" | "tcp_v6_rcv")
        && flags & (tcp_flag::SYN | tcp_flag::ACK) == tcp_flag::SYN
    {
        code::NO_SOCKET
    } else {
        code::NOT_SPECIFIED
    }
}

/// What userspace does with drop events on a kernel without reasons.
#[derive(Debug, Default)]
pub struct DropLocations {
    /// `None` when /proc/kallsyms gave no addresses: locations print in hex, nothing maps.
    pub kallsyms: Option<Kallsyms>,
}

impl DropLocations {
    pub fn load() -> Arc<Self> {
        Arc::new(Self {
            kallsyms: Kallsyms::load(),
        })
    }

    /// lbtrace's reason code for a drop at `location` (see [`reason_of`]).
    pub fn reason(&self, location: u64, flags: u8) -> u32 {
        match self.kallsyms.as_ref().and_then(|k| k.lookup(location)) {
            Some((sym, _)) => reason_of(sym, flags),
            None => code::NOT_SPECIFIED,
        }
    }

    pub fn symbolise(&self, location: u64) -> String {
        match &self.kallsyms {
            Some(k) => k.symbolise(location),
            None => format!("{location:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
0000000000000000 A fixed_percpu_data
ffffffff81000000 T _stext
ffffffff81a00000 T nf_hook_slow
ffffffff81a00100 T nf_hook_slow_list
ffffffff81b00000 t tcp_v4_rcv
ffffffff81900000 D some_data
ffffffff81c00000 T ip_rcv_finish
ffffffffc0100000 t nft_do_chain\t[nf_tables]
garbage
ffffffff81d00000 T
";

    #[test]
    fn parses_text_symbols_sorted() {
        let k = Kallsyms::parse(TEXT);
        assert_eq!(k.len(), 6);
        assert_eq!(k.symbolise(0xffff_ffff_81a0_005c), "nf_hook_slow+0x5c");
        assert_eq!(k.symbolise(0xffff_ffff_81a0_0100), "nf_hook_slow_list+0x0");
        // Data symbols are skipped: the address falls in the text symbol before it.
        assert_eq!(k.symbolise(0xffff_ffff_8190_0010), "_stext+0x900010");
        assert_eq!(k.symbolise(0xffff_ffff_c010_0042), "nft_do_chain+0x42");
        assert_eq!(k.symbolise(0x1000), "0x1000");
    }

    #[test]
    fn zeroed_addresses_give_an_empty_table() {
        // What a process without CAP_SYSLOG reads.
        let k = Kallsyms::parse("0000000000000000 T _stext\n0000000000000000 T nf_hook_slow\n");
        assert!(k.is_empty());
        let l = DropLocations { kallsyms: None };
        assert_eq!(l.symbolise(0xffff_ffff_81a0_005c), "0xffffffff81a0005c");
        assert_eq!(l.reason(0xffff_ffff_81a0_005c, 0), code::NOT_SPECIFIED);
    }

    #[test]
    fn maps_well_known_locations_to_reasons() {
        use tcp_flag::*;
        let l = DropLocations {
            kallsyms: Some(Kallsyms::parse(TEXT)),
        };
        assert_eq!(l.reason(0xffff_ffff_81a0_005c, SYN), code::NETFILTER_DROP);
        assert_eq!(l.reason(0xffff_ffff_81a0_0110, SYN), code::NETFILTER_DROP);
        assert_eq!(l.reason(0xffff_ffff_c010_0042, ACK), code::NETFILTER_DROP);
        assert_eq!(l.reason(0xffff_ffff_81b0_0200, SYN), code::NO_SOCKET);
        // A SYN-ACK or RST freed by tcp_v4_rcv is not "nothing listens".
        assert_eq!(
            l.reason(0xffff_ffff_81b0_0200, SYN | ACK),
            code::NOT_SPECIFIED
        );
        assert_eq!(l.reason(0xffff_ffff_81b0_0200, RST), code::NOT_SPECIFIED);
        // Route lookup failures stay a location.
        assert_eq!(l.reason(0xffff_ffff_81c0_0010, SYN), code::NOT_SPECIFIED);
        assert_eq!(reason_of("tcp_v6_rcv", SYN), code::NO_SOCKET);
        assert_eq!(reason_of("ipt_do_table", SYN), code::NETFILTER_DROP);
    }
}
