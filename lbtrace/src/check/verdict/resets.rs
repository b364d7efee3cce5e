//! Who made a reset: the reset tracepoints (`tcp:tcp_send_reset`, `tcp:tcp_receive_reset`) tie
//! a RST seen leaving the LB host to this host's TCP stack, or clear the stack of it.
//!
//! A RST leaving with a `tcp_send_reset` event of the same tuple close in time was made by this
//! host's TCP stack: with no segment to answer (a socket aborted: closed with unread data, or
//! SO_LINGER 0), for a segment it had no socket for (no listener), for a TIME_WAIT socket, or for
//! one of its sockets. Without such an event, on a kernel whose tracepoint fires for every reset
//! (6.10 and later, `capabilities.resets` `all`), the stack did not make it: a firewall's
//! `reject with tcp reset`, or a backend's RST forwarded by NAT. Before 6.10 the tracepoint fires
//! for full sockets only, so a RST without one is "no socket, or a firewall rule".

use crate::{
    event::{Detail, Hook, KernelEvent, TCP_SYN_SENT, TCP_TIME_WAIT},
    kernel::loader::ResetMode,
};

/// How far apart (either way) a RST packet and its `tcp_send_reset` event may be: the
/// tracepoint fires just before the RST reaches the egress hook.
pub const MATCH_NS: u64 = 1_000_000_000;

/// Who made a RST the LB host sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RstMaker {
    /// This host's TCP stack answered a segment it had no socket for (no listener).
    NoSocket,
    /// This host's TCP stack answered a segment of a TIME_WAIT socket.
    TimeWait,
    /// A socket of this host aborted with no segment to answer: its process closed it with
    /// unread data or with SO_LINGER 0 (or the host ran out of memory).
    SocketAbort,
    /// This host's TCP stack answered a segment its socket (in `state`) did not accept.
    SocketAnswer { state: u8 },
    /// Not this host's TCP stack: a firewall reject rule, or a backend's RST forwarded.
    NotThisStack,
    /// No socket of this host (the kernel's tracepoint, before 6.10, cannot tell more): no
    /// socket for the segment, or a firewall reject rule.
    NoSocketOrFirewall,
}

/// Who made the RST `events[rst]` (a packet the LB host sent), from the reset events among
/// `resets` (indices into `events`) and what the reset tracer covers (`mode`, `None`: not
/// traced, nothing to say).
pub fn made_by(
    events: &[KernelEvent],
    rst: usize,
    resets: &[usize],
    mode: Option<ResetMode>,
) -> Option<RstMaker> {
    maker_of(
        events.get(rst)?,
        resets.iter().filter_map(|&i| events.get(i)),
        mode,
    )
}

/// Who made the RST packet `p`, from the events among `candidates` that are `tcp_send_reset`
/// events of its tuple close in time (others are passed over), and what the reset tracer covers
/// (`mode`, `None`: not traced, nothing to say).
pub fn maker_of<'a>(
    p: &KernelEvent,
    candidates: impl IntoIterator<Item = &'a KernelEvent>,
    mode: Option<ResetMode>,
) -> Option<RstMaker> {
    let mode = mode?;
    let sent = candidates.into_iter().filter_map(|e| match e.detail {
        Detail::Reset(r)
            if e.hook == Hook::TcpSendReset
                && e.src == p.src
                && e.dst == p.dst
                && e.ts_ns.abs_diff(p.ts_ns) <= MATCH_NS =>
        {
            Some((e.ts_ns.abs_diff(p.ts_ns), r))
        }
        _ => None,
    });
    // The closest in time, should the tuple have reset more than once.
    let by = sent.min_by_key(|(d, _)| *d).map(|(_, r)| r);
    Some(match (by, mode) {
        (Some(r), _) if r.active => RstMaker::SocketAbort,
        (Some(r), _) => match r.state {
            None => RstMaker::NoSocket,
            Some(TCP_TIME_WAIT) => RstMaker::TimeWait,
            Some(state) => RstMaker::SocketAnswer { state },
        },
        (None, ResetMode::All) => RstMaker::NotThisStack,
        (None, ResetMode::Sockets) => RstMaker::NoSocketOrFirewall,
    })
}

/// The first attributable RST of `rsts` (indices into `events`).
pub fn first_made_by(
    events: &[KernelEvent],
    rsts: impl IntoIterator<Item = usize>,
    resets: &[usize],
    mode: Option<ResetMode>,
) -> Option<RstMaker> {
    rsts.into_iter()
        .find_map(|i| made_by(events, i, resets, mode))
}

/// A reset a socket of this host accepted while connecting (`SYN_SENT`) from `from`: the
/// peer refused the connection.
pub fn refused_connect(e: &KernelEvent) -> bool {
    matches!(e.detail, Detail::Reset(r) if e.hook == Hook::TcpReceiveReset && r.state == Some(TCP_SYN_SENT))
}

#[cfg(test)]
mod tests {
    use lbtrace_common::tcp_flag::{ACK, RST};

    use super::*;
    use crate::{
        event::{Dir, ResetInfo},
        testutil::pkt,
    };

    const VIP: &str = "10.0.0.10:80";
    const CLIENT: &str = "10.0.0.5:4000";

    fn reset(ts: u64, hook: Hook, src: &str, dst: &str, info: ResetInfo) -> KernelEvent {
        KernelEvent {
            hook,
            ifindex: 0,
            detail: Detail::Reset(info),
            ..pkt(ts, Dir::Out, src, dst, RST, 0, 0)
        }
    }

    fn info(state: Option<u8>, active: bool) -> ResetInfo {
        ResetInfo {
            state,
            active,
            reason: None,
        }
    }

    /// The RST packet at index 1 (at 2 s), a reset event at index 0 when given.
    fn attribute(ev: Option<KernelEvent>, mode: Option<ResetMode>) -> Option<RstMaker> {
        let rst = pkt(2_000, Dir::Out, VIP, CLIENT, RST | ACK, 0, 1);
        let events: Vec<KernelEvent> = ev.into_iter().chain([rst]).collect();
        let last = events.len() - 1;
        let resets: Vec<usize> = (0..last).collect();
        made_by(&events, last, &resets, mode)
    }

    #[test]
    fn a_reset_event_names_the_stack() {
        let sent = |state, active| {
            Some(reset(
                1_999,
                Hook::TcpSendReset,
                VIP,
                CLIENT,
                info(state, active),
            ))
        };
        let all = Some(ResetMode::All);
        assert_eq!(attribute(sent(None, false), all), Some(RstMaker::NoSocket));
        assert_eq!(
            attribute(sent(Some(7), true), all),
            Some(RstMaker::SocketAbort)
        );
        assert_eq!(
            attribute(sent(Some(TCP_TIME_WAIT), false), all),
            Some(RstMaker::TimeWait)
        );
        assert_eq!(
            attribute(sent(Some(1), false), Some(ResetMode::Sockets)),
            Some(RstMaker::SocketAnswer { state: 1 })
        );
    }

    #[test]
    fn without_a_reset_event_the_coverage_decides() {
        assert_eq!(
            attribute(None, Some(ResetMode::All)),
            Some(RstMaker::NotThisStack)
        );
        assert_eq!(
            attribute(None, Some(ResetMode::Sockets)),
            Some(RstMaker::NoSocketOrFirewall)
        );
        assert_eq!(attribute(None, None), None);
        // A reset event of another tuple, of the other direction or long before does not
        // count.
        let all = Some(ResetMode::All);
        let other = reset(
            1_999,
            Hook::TcpSendReset,
            VIP,
            "10.0.0.5:4001",
            info(None, false),
        );
        assert_eq!(attribute(Some(other), all), Some(RstMaker::NotThisStack));
        let received = reset(
            1_999,
            Hook::TcpReceiveReset,
            VIP,
            CLIENT,
            info(Some(1), false),
        );
        assert_eq!(attribute(Some(received), all), Some(RstMaker::NotThisStack));
        let old = reset(500, Hook::TcpSendReset, VIP, CLIENT, info(None, false));
        assert_eq!(attribute(Some(old), all), Some(RstMaker::NotThisStack));
    }

    #[test]
    fn refused_connects_are_received_resets_in_syn_sent() {
        let backend = "10.0.1.11:8080";
        let lb = "10.0.1.1:40000";
        let got = |state| {
            reset(
                1,
                Hook::TcpReceiveReset,
                backend,
                lb,
                info(Some(state), false),
            )
        };
        assert!(refused_connect(&got(TCP_SYN_SENT)));
        assert!(!refused_connect(&got(1)));
        assert!(!refused_connect(&reset(
            1,
            Hook::TcpSendReset,
            lb,
            backend,
            info(Some(TCP_SYN_SENT), false)
        )));
    }
}
