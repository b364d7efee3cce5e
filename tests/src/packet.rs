//! A TCP control packet (SYN, SYN-ACK, RST, FIN) as both tcpdump and lbtrace report it, and
//! multiset comparison of two lists of them.

use std::{collections::BTreeMap, fmt};

/// The fields a tcpdump line and an lbtrace `packet` event must agree on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ControlPacket {
    pub iface: String,
    /// `in` or `out`.
    pub dir: String,
    /// `addr:port`, IPv6 as `[addr]:port`.
    pub src: String,
    pub dst: String,
    /// tcpdump notation: `S`, `S.`, `R`, `R.`, `F.`, `FP.`, ...
    pub flags: String,
    pub seq: u32,
    /// 0 when the ACK flag is not set.
    pub ack: u32,
    /// The MSS option of a SYN or SYN-ACK; 0 for other packets and a SYN without one.
    pub mss: u16,
}

impl ControlPacket {
    /// Whether `flags` (tcpdump notation) has SYN, FIN or RST.
    pub fn is_control(flags: &str) -> bool {
        flags.contains(['S', 'F', 'R'])
    }

    pub fn involves(&self, endpoint: &str) -> bool {
        self.src == endpoint || self.dst == endpoint
    }
}

impl fmt::Display for ControlPacket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:<3} {} > {} [{}] seq {} ack {} mss {}",
            self.iface, self.dir, self.src, self.dst, self.flags, self.seq, self.ack, self.mss
        )
    }
}

/// The packets of `a` that `b` lacks and those of `b` that `a` lacks, counting duplicates.
pub fn multiset_diff(
    a: &[ControlPacket],
    b: &[ControlPacket],
) -> (Vec<ControlPacket>, Vec<ControlPacket>) {
    let mut count: BTreeMap<&ControlPacket, i64> = BTreeMap::new();
    for p in a {
        *count.entry(p).or_default() += 1;
    }
    for p in b {
        *count.entry(p).or_default() -= 1;
    }
    let (mut only_a, mut only_b) = (Vec::new(), Vec::new());
    for (p, n) in count {
        let side = if n > 0 { &mut only_a } else { &mut only_b };
        for _ in 0..n.unsigned_abs() {
            side.push(p.clone());
        }
    }
    (only_a, only_b)
}

/// One packet per line, for failure messages.
pub fn listing<'a>(packets: impl IntoIterator<Item = &'a ControlPacket>) -> String {
    let lines: Vec<String> = packets.into_iter().map(|p| format!("  {p}")).collect();
    if lines.is_empty() {
        "  (none)".to_owned()
    } else {
        lines.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(flags: &str, seq: u32) -> ControlPacket {
        ControlPacket {
            iface: "eth0".into(),
            dir: "in".into(),
            src: "10.0.0.1:1".into(),
            dst: "10.0.0.2:80".into(),
            flags: flags.into(),
            seq,
            ack: 0,
            mss: 0,
        }
    }

    #[test]
    fn multiset_diff_counts_duplicates() {
        let a = [pkt("S", 1), pkt("S", 1), pkt("F.", 2)];
        let b = [pkt("S", 1), pkt("R", 3)];
        let (only_a, only_b) = multiset_diff(&a, &b);
        assert_eq!(only_a, [pkt("F.", 2), pkt("S", 1)]);
        assert_eq!(only_b, [pkt("R", 3)]);
        assert!(ControlPacket::is_control("FP."));
        assert!(!ControlPacket::is_control("P."));
    }
}
