//! How the LB host NATs, read from its kernel: the nftables rules that DNAT a VIP or SNAT toward
//! the backends (nf_tables over netlink, NETLINK_NETFILTER: the rules `nft list ruleset` shows,
//! without running it; iptables-nft's rules are among them, with xtables `DNAT` / `SNAT` /
//! `MASQUERADE` targets), and IPVS virtual services (/proc/net/ip_vs). iptables-legacy's rules
//! have no netlink interface: only the presence of its nat table is told.
//!
//! A VIP with a DNAT rule or an IPVS service is a Layer 4 VIP even when no SYN was forwarded
//! (forwarding off: the SYN dies before it is forwarded). An SNAT rule's port range (`masquerade
//! to :40000-40999`) is what its conntrack entries toward a backend can use; without one the
//! kernel picks from 1024-65535.
//!
//! The messages are parsed from bytes with bounds checks; the socket calls are diag.rs's.

use std::{collections::BTreeSet, io, net::IpAddr};

use super::diag::{self, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_HDRLEN, NlMsg};
use crate::endpoint::Endpoint;

pub(super) const NETLINK_NETFILTER: libc::c_int = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
/// nfgenmsg: family, version, resource id.
pub(super) const NFGENMSG_LEN: usize = 4;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
/// cmp: NFTA_CMP_DATA; immediate: NFTA_IMMEDIATE_DREG, NFTA_IMMEDIATE_DATA.
const NFTA_CMP_DATA: u16 = 3;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
/// nat: NFTA_NAT_TYPE (NFT_NAT_SNAT 0, NFT_NAT_DNAT 1), NFTA_NAT_REG_PROTO_MIN / MAX.
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
const NFTA_NAT_REG_PROTO_MAX: u16 = 6;
const NFT_NAT_DNAT: u32 = 1;
/// masq: NFTA_MASQ_REG_PROTO_MIN / MAX.
const NFTA_MASQ_REG_PROTO_MIN: u16 = 2;
const NFTA_MASQ_REG_PROTO_MAX: u16 = 3;
/// target (iptables-nft's xtables targets): NFTA_TARGET_NAME, NFTA_TARGET_REV, NFTA_TARGET_INFO.
const NFTA_TARGET_NAME: u16 = 1;
const NFTA_TARGET_REV: u16 = 2;
const NFTA_TARGET_INFO: u16 = 3;
/// nfgenmsg families of iptables' and ip6tables' rules.
const NFPROTO_IPV4: u8 = 2;
/// `nf_nat_range*.flags`: the rule gives a port range.
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 2;
/// Rules read at most per dump.
const MAX_RULES: usize = 100_000;

/// The ports SNAT picks from when a rule gives none (nf_nat_l4proto_unique_tuple).
pub const SNAT_DEFAULT_PORTS: (u16, u16) = (1024, 65535);

/// What the host's NAT does for the VIPs and toward the backends.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Nat {
    /// Where a VIP is DNATed: `nftables <table>/<chain>`, `ipvs`.
    pub dnat: Vec<String>,
    /// The ports SNAT uses (the narrowest range of the SNAT and masquerade rules; 1024-65535
    /// for a rule without one); `None` without such a rule.
    pub snat_ports: Option<(u16, u16)>,
    /// iptables-legacy has a nat table here (/proc/net/ip_tables_names or ip6_tables_names):
    /// its rules have no netlink interface and are not read, so a DNAT or SNAT there is not in
    /// `dnat` / `snat_ports`.
    pub iptables_legacy_nat: bool,
}

impl Nat {
    /// Ports SNAT can give toward one backend from one address: the rule's range, or the
    /// kernel's when no rule says.
    pub fn snat_usable(&self) -> u32 {
        let (lo, hi) = self.snat_ports.unwrap_or(SNAT_DEFAULT_PORTS);
        u32::from(hi) - u32::from(lo) + 1
    }
}

/// One expression of a rule, as far as the rules here need it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Expr {
    /// `cmp`: the value compared with.
    Cmp(Vec<u8>),
    /// `immediate`: a value loaded into a register.
    Imm {
        reg: u32,
        data: Vec<u8>,
    },
    /// `nat` (DNAT or SNAT) or `masq`, with the registers of its port range.
    Nat {
        dnat: bool,
        proto_min: Option<u32>,
        proto_max: Option<u32>,
    },
    /// An iptables-nft `DNAT`, `SNAT` or `MASQUERADE` target: the port range is in the
    /// target's own data, not in registers.
    XtNat {
        dnat: bool,
        ports: Option<(u16, u16)>,
    },
    Other,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Rule {
    table: String,
    chain: String,
    exprs: Vec<Expr>,
}

fn be32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

fn string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// The port range of an xtables SNAT / MASQUERADE target's data, by revision and family:
/// revision 0 for IPv4 is `nf_nat_ipv4_multi_range_compat` (a count, then flags, two addresses
/// and the two ports of the first range); every other is `nf_nat_range` / `nf_nat_range2`
/// (flags, two 16-byte addresses, the two ports). Ports are in network order.
fn xt_ports(rev: u32, family: u8, info: &[u8]) -> Option<(u16, u16)> {
    let (flags, min) = if rev == 0 && family == NFPROTO_IPV4 {
        (4, 16)
    } else {
        (0, 36)
    };
    let flags = u32::from_ne_bytes(info.get(flags..flags + 4)?.try_into().ok()?);
    if flags & NF_NAT_RANGE_PROTO_SPECIFIED == 0 {
        return None;
    }
    let port = |at: usize| Some(u16::from_be_bytes(info.get(at..at + 2)?.try_into().ok()?));
    let (lo, hi) = (port(min)?, port(min + 2)?);
    Some((lo.min(hi), lo.max(hi)))
}

fn xt_target(data: &[u8], family: u8) -> Expr {
    let name = diag::attribute(data, NFTA_TARGET_NAME)
        .map(string)
        .unwrap_or_default();
    let rev = diag::attribute(data, NFTA_TARGET_REV)
        .and_then(be32)
        .unwrap_or(0);
    let info = diag::attribute(data, NFTA_TARGET_INFO).unwrap_or_default();
    match name.as_str() {
        "DNAT" => Expr::XtNat {
            dnat: true,
            ports: None,
        },
        "SNAT" | "MASQUERADE" => Expr::XtNat {
            dnat: false,
            ports: xt_ports(rev, family, info),
        },
        _ => Expr::Other,
    }
}

fn expr(elem: &[u8], family: u8) -> Expr {
    let name = diag::attribute(elem, NFTA_EXPR_NAME)
        .map(string)
        .unwrap_or_default();
    let data = diag::attribute(elem, NFTA_EXPR_DATA).unwrap_or_default();
    let value = |a: Option<&[u8]>| {
        a.and_then(|d| diag::attribute(d, NFTA_DATA_VALUE))
            .map(<[u8]>::to_vec)
    };
    match name.as_str() {
        "cmp" => value(diag::attribute(data, NFTA_CMP_DATA)).map_or(Expr::Other, Expr::Cmp),
        "immediate" => match (
            diag::attribute(data, NFTA_IMMEDIATE_DREG).and_then(be32),
            value(diag::attribute(data, NFTA_IMMEDIATE_DATA)),
        ) {
            (Some(reg), Some(data)) => Expr::Imm { reg, data },
            _ => Expr::Other,
        },
        "nat" => Expr::Nat {
            dnat: diag::attribute(data, NFTA_NAT_TYPE).and_then(be32) == Some(NFT_NAT_DNAT),
            proto_min: diag::attribute(data, NFTA_NAT_REG_PROTO_MIN).and_then(be32),
            proto_max: diag::attribute(data, NFTA_NAT_REG_PROTO_MAX).and_then(be32),
        },
        "masq" => Expr::Nat {
            dnat: false,
            proto_min: diag::attribute(data, NFTA_MASQ_REG_PROTO_MIN).and_then(be32),
            proto_max: diag::attribute(data, NFTA_MASQ_REG_PROTO_MAX).and_then(be32),
        },
        "target" => xt_target(data, family),
        _ => Expr::Other,
    }
}

/// One NFT_MSG_NEWRULE body (nfgenmsg, then the rule's attributes).
fn parse_rule(body: &[u8]) -> Option<Rule> {
    let family = *body.first()?;
    let a = body.get(NFGENMSG_LEN..)?;
    let exprs = diag::attribute(a, NFTA_RULE_EXPRESSIONS)?;
    Some(Rule {
        table: diag::attribute(a, NFTA_RULE_TABLE)
            .map(string)
            .unwrap_or_default(),
        chain: diag::attribute(a, NFTA_RULE_CHAIN)
            .map(string)
            .unwrap_or_default(),
        exprs: diag::attributes(exprs)
            .into_iter()
            .filter(|(k, _)| *k == NFTA_LIST_ELEM)
            .map(|(_, e)| expr(e, family))
            .collect(),
    })
}

impl Rule {
    /// A DNAT rule matching one of `vips`' addresses.
    fn dnats(&self, vips: &[Endpoint]) -> bool {
        let dnat = self.exprs.iter().any(|e| {
            matches!(
                e,
                Expr::Nat { dnat: true, .. } | Expr::XtNat { dnat: true, .. }
            )
        });
        dnat && self.exprs.iter().any(|e| match e {
            Expr::Cmp(v) => vips.iter().any(|vip| *v == octets(vip.addr)),
            _ => false,
        })
    }

    /// The port range of an SNAT or masquerade rule: the values its registers were loaded with
    /// (the immediates before it), or the kernel's default range.
    fn snat_ports(&self) -> Option<(u16, u16)> {
        self.exprs.iter().enumerate().find_map(|(i, e)| {
            if let Expr::XtNat { dnat: false, ports } = e {
                return Some(ports.unwrap_or(SNAT_DEFAULT_PORTS));
            }
            let Expr::Nat {
                dnat: false,
                proto_min,
                proto_max,
            } = e
            else {
                return None;
            };
            let loaded = |reg: u32| {
                self.exprs[..i].iter().rev().find_map(|x| match x {
                    Expr::Imm { reg: r, data } if *r == reg => {
                        Some(u16::from_be_bytes(data.get(..2)?.try_into().ok()?))
                    }
                    _ => None,
                })
            };
            let Some(lo) = proto_min.and_then(loaded) else {
                return Some(SNAT_DEFAULT_PORTS);
            };
            let hi = proto_max.and_then(loaded).unwrap_or(lo);
            Some((lo.min(hi), lo.max(hi)))
        })
    }
}

fn octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

/// What `rules` do for `vips`.
fn judge_rules(rules: &[Rule], vips: &[Endpoint]) -> Nat {
    let dnat: BTreeSet<String> = rules
        .iter()
        .filter(|r| r.dnats(vips))
        .map(|r| {
            // iptables-nft writes its rules as nftables rules with xtables targets.
            let by = if r.exprs.iter().any(|e| matches!(e, Expr::XtNat { .. })) {
                "iptables-nft"
            } else {
                "nftables"
            };
            format!("{by} {}/{}", r.table, r.chain)
        })
        .collect();
    Nat {
        dnat: dnat.into_iter().collect(),
        snat_ports: rules
            .iter()
            .filter_map(Rule::snat_ports)
            .min_by_key(|(lo, hi)| hi - lo),
        iptables_legacy_nat: false,
    }
}

/// A dump request of nfnetlink message `msg_type` (subsystem << 8 | message) for `family`
/// (NFPROTO_UNSPEC 0: every family).
pub(super) fn nfnl_dump_request(msg_type: u16, family: u8, seq: u32) -> Vec<u8> {
    let len = NLMSG_HDRLEN + NFGENMSG_LEN;
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&(len as u32).to_ne_bytes());
    b.extend_from_slice(&msg_type.to_ne_bytes());
    b.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: the family, NFNETLINK_V0, resource id 0.
    b.extend_from_slice(&[family, 0, 0, 0]);
    b
}

/// Every nftables rule of this namespace (at most [`MAX_RULES`]).
fn rules() -> io::Result<Vec<Rule>> {
    let mut out = Vec::new();
    let req = nfnl_dump_request((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETRULE, 0, 1);
    diag::dump_with(NETLINK_NETFILTER, &req, |datagram| {
        for m in diag::messages(datagram) {
            match m {
                NlMsg::Msg(kind, body) if kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE => {
                    if out.len() < MAX_RULES {
                        out.extend(parse_rule(body));
                    }
                }
                NlMsg::Msg(..) => {}
                NlMsg::Done => return Ok(false),
                NlMsg::Error(0) => {}
                NlMsg::Error(errno) => return Err(io::Error::from_raw_os_error(errno)),
            }
        }
        Ok(true)
    })?;
    Ok(out)
}

/// IPVS virtual services of /proc/net/ip_vs that are one of `vips`.
pub fn parse_ipvs(text: &str, vips: &[Endpoint]) -> bool {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            matches!(it.next(), Some("TCP" | "UDP" | "SCTP")).then(|| it.next())?
        })
        .filter_map(parse_ipvs_addr)
        .any(|(a, p)| {
            vips.iter()
                .any(|v| v.addr == a && v.port.is_none_or(|vp| vp == p))
        })
}

/// `0A0A020A:0050` (IPv4, hex) or `[2001:db8::10]:0050`.
fn parse_ipvs_addr(s: &str) -> Option<(IpAddr, u16)> {
    let (a, p) = s.rsplit_once(':')?;
    let port = u16::from_str_radix(p, 16).ok()?;
    let addr = match a.strip_prefix('[').and_then(|a| a.strip_suffix(']')) {
        Some(v6) => IpAddr::V6(v6.parse().ok()?),
        None => IpAddr::V4(u32::from_str_radix(a, 16).ok()?.into()),
    };
    Some((addr, port))
}

/// The host's NAT for `vips`; what cannot be read is left out.
pub fn read(vips: &[Endpoint]) -> Nat {
    let mut nat = rules().map(|r| judge_rules(&r, vips)).unwrap_or_default();
    if std::fs::read_to_string("/proc/net/ip_vs").is_ok_and(|t| parse_ipvs(&t, vips)) {
        nat.dnat.push("ipvs".to_owned());
    }
    nat.iptables_legacy_nat = ["/proc/net/ip_tables_names", "/proc/net/ip6_tables_names"]
        .iter()
        .any(|p| std::fs::read_to_string(p).is_ok_and(|t| t.lines().any(|l| l.trim() == "nat")));
    nat
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::nl_test::{nested, nla};

    fn elem(name: &str, data: &[Vec<u8>]) -> Vec<u8> {
        let mut n = name.as_bytes().to_vec();
        n.push(0);
        nested(
            NFTA_LIST_ELEM,
            &[nla(NFTA_EXPR_NAME, &n), nested(NFTA_EXPR_DATA, data)],
        )
    }

    fn value(kind: u16, v: &[u8]) -> Vec<u8> {
        nested(kind, &[nla(NFTA_DATA_VALUE, v)])
    }

    fn rule(exprs: &[Vec<u8>]) -> Vec<u8> {
        let mut b = vec![1, 0, 0, 0]; // nfgenmsg: NFPROTO_INET
        b.extend(nla(NFTA_RULE_TABLE, b"lbtrace_lb\0"));
        b.extend(nla(NFTA_RULE_CHAIN, b"prerouting\0"));
        b.extend(nested(NFTA_RULE_EXPRESSIONS, exprs));
        b
    }

    /// `ip daddr 10.10.2.10 tcp dport 80 dnat ip to numgen ... : 8080`, reduced to what counts.
    fn dnat_rule() -> Vec<u8> {
        rule(&[
            elem("payload", &[]),
            elem("cmp", &[value(NFTA_CMP_DATA, &[10, 10, 2, 10])]),
            elem("cmp", &[value(NFTA_CMP_DATA, &80u16.to_be_bytes())]),
            elem("nat", &[nla(NFTA_NAT_TYPE, &NFT_NAT_DNAT.to_be_bytes())]),
        ])
    }

    /// `masquerade to :40000-40019`: two immediates and the registers that hold them.
    fn masq_rule(range: Option<(u16, u16)>) -> Vec<u8> {
        let mut exprs = Vec::new();
        let mut masq = Vec::new();
        if let Some((lo, hi)) = range {
            for (reg, v, attr_kind) in [
                (1u32, lo, NFTA_MASQ_REG_PROTO_MIN),
                (2, hi, NFTA_MASQ_REG_PROTO_MAX),
            ] {
                exprs.push(elem(
                    "immediate",
                    &[
                        nla(NFTA_IMMEDIATE_DREG, &reg.to_be_bytes()),
                        value(NFTA_IMMEDIATE_DATA, &v.to_be_bytes()),
                    ],
                ));
                masq.push(nla(attr_kind, &reg.to_be_bytes()));
            }
        }
        exprs.push(elem("masq", &masq));
        rule(&exprs)
    }

    #[test]
    fn a_dnat_rule_for_the_vip_and_an_snat_range() {
        let vip: Endpoint = "10.10.2.10:80".parse().unwrap();
        let rules: Vec<Rule> = [dnat_rule(), masq_rule(Some((40000, 40019)))]
            .iter()
            .map(|b| parse_rule(b).expect("a rule"))
            .collect();
        let nat = judge_rules(&rules, &[vip]);
        assert_eq!(nat.dnat, ["nftables lbtrace_lb/prerouting"]);
        assert_eq!(nat.snat_ports, Some((40000, 40019)));
        assert_eq!(nat.snat_usable(), 20);
        // Another VIP is not DNATed by it; masquerade without ports uses the kernel's range.
        let other: Endpoint = "10.10.2.11:80".parse().unwrap();
        let rules = vec![
            parse_rule(&dnat_rule()).unwrap(),
            parse_rule(&masq_rule(None)).unwrap(),
        ];
        let nat = judge_rules(&rules, &[other]);
        assert!(nat.dnat.is_empty());
        assert_eq!(nat.snat_usable(), 64512);
        assert_eq!(judge_rules(&[], &[vip]), Nat::default());
    }

    fn xt_rule(family: u8, target: &str, rev: u32, info: &[u8], vip: Option<[u8; 4]>) -> Vec<u8> {
        let mut name = target.as_bytes().to_vec();
        name.push(0);
        let mut exprs = Vec::new();
        if let Some(v) = vip {
            exprs.push(elem("payload", &[]));
            exprs.push(elem("cmp", &[value(NFTA_CMP_DATA, &v)]));
        }
        exprs.push(elem(
            "target",
            &[
                nla(NFTA_TARGET_NAME, &name),
                nla(NFTA_TARGET_REV, &rev.to_be_bytes()),
                nla(NFTA_TARGET_INFO, info),
            ],
        ));
        let mut b = vec![family, 0, 0, 0];
        b.extend(nla(NFTA_RULE_TABLE, b"nat\0"));
        b.extend(nla(NFTA_RULE_CHAIN, b"PREROUTING\0"));
        b.extend(nested(NFTA_RULE_EXPRESSIONS, &exprs));
        b
    }

    /// `nf_nat_ipv4_multi_range_compat` with one range: ports `lo-hi` when `flags` say so.
    fn compat_range(flags: u32, lo: u16, hi: u16) -> Vec<u8> {
        let mut b = 1u32.to_ne_bytes().to_vec();
        b.extend(flags.to_ne_bytes());
        b.extend([10, 10, 3, 1, 10, 10, 3, 1]);
        b.extend(lo.to_be_bytes());
        b.extend(hi.to_be_bytes());
        b
    }

    /// `nf_nat_range2`: flags, two addresses, the ports, the base port.
    fn range2(flags: u32, lo: u16, hi: u16) -> Vec<u8> {
        let mut b = flags.to_ne_bytes().to_vec();
        b.extend([0u8; 32]);
        b.extend(lo.to_be_bytes());
        b.extend(hi.to_be_bytes());
        b.extend(0u16.to_be_bytes());
        b
    }

    #[test]
    fn iptables_nft_targets() {
        let vip: Endpoint = "10.10.2.10:80".parse().unwrap();
        let parse = |b: Vec<u8>| parse_rule(&b).expect("a rule");
        // iptables -t nat -A PREROUTING -d 10.10.2.10 -p tcp --dport 80 -j DNAT ...
        let dnat = parse(xt_rule(
            2,
            "DNAT",
            2,
            &range2(3, 8080, 8080),
            Some([10, 10, 2, 10]),
        ));
        let nat = judge_rules(std::slice::from_ref(&dnat), &[vip]);
        assert_eq!(nat.dnat, ["iptables-nft nat/PREROUTING"]);
        assert_eq!(nat.snat_ports, None, "a DNAT's ports are not SNAT's");
        // -j MASQUERADE --to-ports 40000-40019 (revision 0, IPv4: the compat layout).
        let masq = parse(xt_rule(
            2,
            "MASQUERADE",
            0,
            &compat_range(2, 40000, 40019),
            None,
        ));
        assert_eq!(masq.snat_ports(), Some((40000, 40019)));
        // Without --to-ports: the kernel's range; ip6tables' MASQUERADE uses nf_nat_range.
        let masq = parse(xt_rule(2, "MASQUERADE", 0, &compat_range(0, 0, 0), None));
        assert_eq!(masq.snat_ports(), Some(SNAT_DEFAULT_PORTS));
        let masq6 = parse(xt_rule(10, "MASQUERADE", 0, &range2(2, 50000, 50099), None));
        assert_eq!(masq6.snat_ports(), Some((50000, 50099)));
        // -j SNAT --to-source 10.10.3.1:41000-41009 (revision 2).
        let snat = parse(xt_rule(2, "SNAT", 2, &range2(3, 41009, 41000), None));
        assert_eq!(snat.snat_ports(), Some((41000, 41009)));
        // Another target is no NAT; truncated data is the kernel's range, never a panic.
        let other = parse(xt_rule(2, "LOG", 0, &[], Some([10, 10, 2, 10])));
        assert_eq!(judge_rules(&[other], &[vip]), Nat::default());
        let cut = parse(xt_rule(2, "SNAT", 2, &range2(3, 1, 2)[..20], None));
        assert_eq!(cut.snat_ports(), Some(SNAT_DEFAULT_PORTS));
        let b = xt_rule(2, "SNAT", 2, &range2(3, 1, 2), None);
        for n in 0..b.len() {
            let _ = parse_rule(&b[..n]).map(|r| r.snat_ports());
        }
    }

    #[test]
    fn truncated_rules_never_panic() {
        let b = masq_rule(Some((1, 2)));
        for cut in 0..b.len() {
            let _ = parse_rule(&b[..cut]);
        }
        let d = dnat_rule();
        for cut in 0..d.len() {
            if let Some(r) = parse_rule(&d[..cut]) {
                let _ = r.snat_ports();
            }
        }
    }

    #[test]
    fn ipvs_services() {
        let text = "IP Virtual Server version 1.2.1 (size=4096)\n\
                    Prot LocalAddress:Port Scheduler Flags\n\
                    \x20 -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n\
                    TCP  0A0A020A:0050 rr\n\
                    \x20 -> 0A0A030B:1F90      Masq    1      0          0\n\
                    TCP  [2001:db8::10]:01BB rr\n";
        let v = |s: &str| vec![s.parse::<Endpoint>().unwrap()];
        assert!(parse_ipvs(text, &v("10.10.2.10:80")));
        assert!(parse_ipvs(text, &v("10.10.2.10")));
        assert!(!parse_ipvs(text, &v("10.10.2.10:81")));
        assert!(!parse_ipvs(text, &v("10.10.3.11:8080")));
        assert!(parse_ipvs(text, &v("[2001:db8::10]:443")));
        assert!(!parse_ipvs("TCP  zz:0050 rr\nTCP\n", &v("10.10.2.10:80")));
    }

    #[test]
    fn this_host_dumps_its_rules() {
        // The dump works in the test's namespace (no rules: an empty list); nfnetlink wants
        // CAP_NET_ADMIN.
        match rules() {
            Ok(_) => {}
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}"),
        }
    }
}
