//! The checklist's vocabulary, shared by `check` (the verdict engine) and `watch` (the recorder
//! and its alerts): the four steps, the sequence-space rule that tells whether a side sent data,
//! the kernel's refusal of a connection, and drop reasons sorted into the classes the rules act on.
//! A fix to the TCP reasoning here reaches both commands.

use std::fmt;

/// One step of the end-to-end checklist. Serialized as its number (`"step": 2`); its name is
/// the word the JSON and the text output use next to it (`"lb-handling"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    /// 1: do clients' SYNs reach the LB, and does the LB host keep them?
    ClientToLb,
    /// 2: what the LB does with them (Layer 4 or 7, and when it cannot serve).
    LbHandling,
    /// 3: can the LB reach each backend?
    LbToBackend,
    /// 4: do the replies come back through the LB and reach the client?
    ReturnPath,
}

impl Step {
    pub const ALL: [Step; 4] = [
        Step::ClientToLb,
        Step::LbHandling,
        Step::LbToBackend,
        Step::ReturnPath,
    ];

    /// 1 to 4.
    pub fn number(self) -> u8 {
        match self {
            Step::ClientToLb => 1,
            Step::LbHandling => 2,
            Step::LbToBackend => 3,
            Step::ReturnPath => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Step::ClientToLb => "client-to-lb",
            Step::LbHandling => "lb-handling",
            Step::LbToBackend => "lb-to-backend",
            Step::ReturnPath => "return-path",
        }
    }

    pub fn from_number(n: u8) -> Option<Step> {
        Step::ALL.into_iter().find(|s| s.number() == n)
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}. {}", self.number(), self.name())
    }
}

impl serde::Serialize for Step {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.number())
    }
}

impl<'de> serde::Deserialize<'de> for Step {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u8::deserialize(d)?;
        Step::from_number(n)
            .ok_or_else(|| serde::de::Error::custom(format!("no checklist step {n}")))
    }
}

/// How far `seq` is ahead of `isn` in TCP's circular sequence space, when it is ahead by less
/// than 2^30: no connection moves that far within an observation, so anything beyond (or
/// behind) is another connection's number, not progress on this one.
pub fn seq_offset(seq: u32, isn: u32) -> Option<u32> {
    let d = seq.wrapping_sub(isn);
    (d < 1 << 30).then_some(d)
}

/// `seq` (or an `ack`) lies past ISN + 1: the SYN takes the ISN and the first data byte is
/// ISN + 1, so a FIN/RST with a sequence number past it proves the sender sent data, and an
/// acknowledgement past it proves the other side received data.
pub fn seq_past(seq: u32, isn: u32) -> bool {
    seq_offset(seq, isn).is_some_and(|d| d > 1)
}

/// `ack` acknowledges at least the SYN of the side whose ISN is `isn`: that SYN (or SYN-ACK)
/// arrived.
pub fn acknowledges_syn(ack: u32, isn: u32) -> bool {
    seq_offset(ack, isn).is_some_and(|d| d >= 1)
}

/// The kernel refused the connection: nothing listens on the address. The RST went out without
/// any SYN-ACK before it, and the kernel freed the client's SYN as `NO_SOCKET` (which is what
/// tells it apart from a firewall's `reject with tcp reset` or a NATed backend's refusal).
pub fn kernel_refused(rst_sent: bool, syn_ack_sent: bool, no_socket_drop: bool) -> bool {
    rst_sent && !syn_ack_sent && no_socket_drop
}

/// A kernel drop reason, sorted into the class the checklist's rules act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropClass {
    /// nftables / iptables dropped it (`NETFILTER_DROP`).
    Netfilter,
    /// Reverse-path filtering (`IP_RPFILTER`).
    RpFilter,
    /// A listening socket's accept queue or backlog was full (`TCP_LISTEN_OVERFLOW`, `*BACKLOG*`).
    Backlog,
    /// Neighbour resolution (ARP / ND) failed or its queue was full: the next hop is down.
    Neigh,
    /// No route (`IP_OUTNOROUTES`, `IP_INNOROUTES`).
    NoRoute,
    /// No socket for the packet: nothing listens (`NO_SOCKET`).
    NoSocket,
    /// The kernel gave no reason (`NOT_SPECIFIED`).
    Unspecified,
    Other,
}

impl DropClass {
    /// The class of a reason name as [`crate::kernel::btf::DropReasons::name`] gives it.
    pub fn of(name: &str) -> DropClass {
        if name.contains("NETFILTER_DROP") {
            DropClass::Netfilter
        } else if name.contains("RPFILTER") {
            DropClass::RpFilter
        } else if name.contains("LISTEN_OVERFLOW") || name.contains("BACKLOG") {
            DropClass::Backlog
        } else if name.contains("NEIGH_FAILED") || name.contains("NEIGH_QUEUEFULL") {
            DropClass::Neigh
        } else if name.contains("NOROUTES") {
            DropClass::NoRoute
        } else if name == "NO_SOCKET" {
            DropClass::NoSocket
        } else if name.starts_with("NOT_SPECIFIED") {
            DropClass::Unspecified
        } else {
            DropClass::Other
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_serialize_as_their_number() {
        assert_eq!(
            serde_json::to_string(&Step::ALL).unwrap(),
            "[1,2,3,4]",
            "docs/output.md: \"step\" is a number"
        );
        let names: Vec<&str> = Step::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(
            names,
            [
                "client-to-lb",
                "lb-handling",
                "lb-to-backend",
                "return-path"
            ]
        );
        assert_eq!(
            serde_json::from_str::<Step>("3").unwrap(),
            Step::LbToBackend
        );
        assert!(serde_json::from_str::<Step>("0").is_err());
        assert!(serde_json::from_str::<Step>("5").is_err());
        assert_eq!(Step::ReturnPath.to_string(), "4. return-path");
    }

    #[test]
    fn sequence_space() {
        let isn = u32::MAX - 1; // wraps
        assert!(!seq_past(isn, isn), "the SYN itself");
        assert!(
            !seq_past(isn.wrapping_add(1), isn),
            "FIN right after the SYN"
        );
        assert!(seq_past(isn.wrapping_add(2), isn), "one byte sent");
        assert!(seq_past(isn.wrapping_add((1 << 30) - 1), isn));
        assert!(!seq_past(isn.wrapping_add(1 << 30), isn), "too far");
        assert!(!seq_past(isn.wrapping_sub(5), isn), "behind");
        assert!(acknowledges_syn(isn.wrapping_add(1), isn));
        assert!(!acknowledges_syn(isn, isn));
    }

    #[test]
    fn drop_classes() {
        for (name, class) in [
            ("NETFILTER_DROP", DropClass::Netfilter),
            ("IP_RPFILTER", DropClass::RpFilter),
            ("TCP_LISTEN_OVERFLOW", DropClass::Backlog),
            ("SOCKET_BACKLOG", DropClass::Backlog),
            ("NEIGH_FAILED", DropClass::Neigh),
            ("NEIGH_QUEUEFULL", DropClass::Neigh),
            ("IP_OUTNOROUTES", DropClass::NoRoute),
            ("NO_SOCKET", DropClass::NoSocket),
            ("NOT_SPECIFIED", DropClass::Unspecified),
            ("TCP_CSUM", DropClass::Other),
            ("REASON_999", DropClass::Other),
        ] {
            assert_eq!(DropClass::of(name), class, "{name}");
        }
    }

    #[test]
    fn only_an_unanswered_rst_with_no_socket_is_a_kernel_refusal() {
        assert!(kernel_refused(true, false, true));
        assert!(!kernel_refused(true, true, true), "the LB answered first");
        assert!(!kernel_refused(true, false, false), "a firewall's reset");
        assert!(!kernel_refused(false, false, true), "no RST seen yet");
    }
}
