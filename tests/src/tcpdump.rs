//! Ground truth: tcpdump on every interface of a namespace at once (`-i any`), parsed into
//! [`ControlPacket`]s.
//!
//! tcpdump 4.99 with `-i any` (LINUX_SLL2) prints the interface and the direction:
//! `1700000000.123456 br0 Out IP 10.10.3.1.40000 > 10.10.3.11.8080: Flags [S], seq 123, win 64240, ...`
//! Its tap sees a received packet in `__netif_receive_skb_core` (before TC ingress) and a sent one
//! in `dev_hard_start_xmit` (after TC egress).

use std::{path::Path, time::Duration};

use crate::{
    lab::{Netns, Proc},
    packet::ControlPacket,
};

/// A running capture.
#[derive(Debug)]
pub struct Tcpdump {
    proc: Proc,
}

/// A finished capture.
#[derive(Debug)]
pub struct Capture {
    /// Every TCP packet with SYN, FIN or RST, in capture order.
    pub packets: Vec<ControlPacket>,
    /// tcpdump's whole stdout, for failure messages.
    pub text: String,
}

impl Capture {
    /// The control packets on one of `ifaces` whose source or destination is one of `endpoints`.
    pub fn involving(&self, endpoints: &[String], ifaces: &[String]) -> Vec<ControlPacket> {
        self.packets
            .iter()
            .filter(|p| ifaces.contains(&p.iface))
            .filter(|p| endpoints.iter().any(|e| p.involves(e)))
            .cloned()
            .collect()
    }
}

impl Tcpdump {
    pub const FILTER: &'static str = "tcp or icmp or icmp6";

    /// Starts `tcpdump -i any` in `ns` and waits until it captures.
    pub fn start(ns: &Netns, dir: &Path) -> Tcpdump {
        let argv = [
            "tcpdump",
            "-i",
            "any",
            "-nn",
            "-S",
            "-l",
            "-tt",
            Self::FILTER,
        ];
        let mut proc = ns.spawn(&format!("tcpdump-{}", ns.name()), dir, &argv);
        proc.wait_until("listening", Duration::from_secs(10), |p| {
            p.stderr().contains("listening on")
        });
        Tcpdump { proc }
    }

    /// Stops the capture (SIGINT, so tcpdump flushes) and parses it. Asserts tcpdump's kernel
    /// buffer dropped nothing: the ground truth must be complete.
    pub fn stop(self) -> Capture {
        let done = self.proc.stop(libc::SIGINT, Duration::from_secs(10));
        let dropped = done
            .stderr
            .lines()
            .find_map(|l| l.strip_suffix(" packets dropped by kernel"))
            .and_then(|n| n.trim().parse::<u64>().ok());
        assert_eq!(
            dropped,
            Some(0),
            "tcpdump lost packets or did not report its counts:\n{}",
            done.stderr
        );
        Capture {
            packets: done.stdout.lines().filter_map(parse_line).collect(),
            text: done.stdout,
        }
    }
}

/// `10.0.0.1.80` -> `10.0.0.1:80`, `fd00::1.80` -> `[fd00::1]:80`.
fn tuple(s: &str) -> Option<String> {
    let (addr, port) = s.rsplit_once('.')?;
    port.parse::<u16>().ok()?;
    Some(if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    })
}

/// Parses one line of `tcpdump -i any -nn -S -tt`; `Some` for a TCP packet with SYN, FIN or RST.
pub fn parse_line(line: &str) -> Option<ControlPacket> {
    let mut words = line.split_whitespace();
    let _ts = words.next()?;
    let iface = words.next()?;
    let dir = match words.next()? {
        "Out" => "out",
        // In, and M / B / P (multicast, broadcast, to another host): all received.
        _ => "in",
    };
    if !matches!(words.next()?, "IP" | "IP6") {
        return None;
    }
    let src = tuple(words.next()?)?;
    if words.next()? != ">" {
        return None;
    }
    let dst = tuple(words.next()?.strip_suffix(':')?)?;
    let rest = line.split_once(": Flags [")?.1;
    let (flags, rest) = rest.split_once(']')?;
    if !ControlPacket::is_control(flags) {
        return None;
    }
    let field = |name: &str| -> Option<u32> {
        let value = rest.split(", ").find_map(|f| f.strip_prefix(name))?;
        // `seq A:B` for a packet with data: A is its sequence number.
        value.split(':').next()?.parse().ok()
    };
    Some(ControlPacket {
        iface: iface.to_owned(),
        dir: dir.to_owned(),
        src,
        dst,
        flags: flags.to_owned(),
        seq: field("seq ").unwrap_or(0),
        ack: if flags.contains('.') {
            field("ack ").unwrap_or(0)
        } else {
            0
        },
        // `options [mss 1460,sackOK,...]`: on SYNs and SYN-ACKs only, as lbtrace reads it.
        mss: if flags.contains('S') {
            rest.split_once("options [mss ")
                .and_then(|(_, o)| o.split([',', ']']).next()?.parse().ok())
                .unwrap_or(0)
        } else {
            0
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcpdump_any_lines() {
        let syn = parse_line(
            "1700000000.123456 br0   Out IP 10.10.3.1.40000 > 10.10.3.11.8080: Flags [S], seq 123, \
             win 64240, options [mss 1460,sackOK,TS val 1 ecr 0,nop,wscale 10], length 0",
        )
        .unwrap();
        assert_eq!(
            syn,
            ControlPacket {
                iface: "br0".into(),
                dir: "out".into(),
                src: "10.10.3.1:40000".into(),
                dst: "10.10.3.11:8080".into(),
                flags: "S".into(),
                seq: 123,
                ack: 0,
                mss: 1460,
            }
        );
        let fin = parse_line(
            "1795469249.049051 lbt1x0l In  IP6 fd00:10:1::2.41558 > fd00:10:2::10.80: Flags [FP.], \
             seq 350953327:350954143, ack 3478284821, win 64, length 816: HTTP",
        )
        .unwrap();
        assert_eq!(fin.iface, "lbt1x0l");
        assert_eq!(fin.dir, "in");
        assert_eq!(fin.src, "[fd00:10:1::2]:41558");
        assert_eq!(fin.dst, "[fd00:10:2::10]:80");
        assert_eq!(
            (fin.flags.as_str(), fin.seq, fin.ack),
            ("FP.", 350953327, 3478284821)
        );
        let rst = parse_line(
            "1795469248.533400 sb Out IP 10.99.0.2.81 > 10.99.0.1.45006: Flags [R.], seq 0, \
             ack 3035630937, win 0, length 0",
        )
        .unwrap();
        assert_eq!(
            (rst.flags.as_str(), rst.seq, rst.ack),
            ("R.", 0, 3035630937)
        );
        // Not control packets, or not TCP.
        assert!(
            parse_line(
                "1795469249.047855 sb In IP 10.99.0.1.41558 > 10.99.0.2.8080: Flags [.], ack 1, \
                 win 63, length 0"
            )
            .is_none()
        );
        assert!(
            parse_line(
                "1795469247.556150 sb Out IP6 :: > ff02::1:ffce:46b2: ICMP6, neighbor \
                 solicitation, who has fe80::1, length 32"
            )
            .is_none()
        );
        assert!(
            parse_line(
                "1700000000.1 br0 In IP 10.10.3.11 > 10.10.3.1: ICMP 10.10.3.11 tcp port 8080 \
                 unreachable, length 68"
            )
            .is_none()
        );
    }
}
