//! The data-path mode's first-byte mark of a reply carries the HTTP status code when the reply
//! starts with an HTTP/1.x status line (read with `bpf_skb_load_bytes` at TC, from the first
//! buffer at XDP), and 0 for anything else; no other payload byte reaches the event.

#[allow(clippy::wildcard_imports)]
use super::*;
use lbtrace_common::data_event;

/// A request from the client and then `reply` from the VIP, both through `prog`, on a fresh
/// tuple (`port`): the reply's first-byte event.
fn first_byte_of_reply(h: &mut Harness, prog: Prog, port: u16, reply: &[u8]) -> Event {
    let request = b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n";
    let to_vip = tcp_full(port, VIP_PORT, 1_001, 5_001, PSH | ACK, &[], request);
    h.run(
        prog,
        &eth(ETH_P_IP, &ipv4(CLIENT4, VIP4, PROTO_TCP, &to_vip)),
    );
    let req: Vec<Event> = h.drain_events();
    assert_eq!(req.len(), 1, "{req:?}");
    assert_eq!(
        (req[0].reason, req[0].http_status()),
        (data_event::FIRST_BYTE, 0),
        "a request is no status line"
    );
    let to_client = tcp_full(VIP_PORT, port, 5_001, 1_001 + 30, PSH | ACK, &[], reply);
    h.run(
        prog,
        &eth(ETH_P_IP, &ipv4(VIP4, CLIENT4, PROTO_TCP, &to_client)),
    );
    let evs = h.drain_events();
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(
        (evs[0].kind, evs[0].reason),
        (kind::DATA, data_event::FIRST_BYTE)
    );
    assert!(evs[0].location() > 0, "the reply's time to first byte");
    evs[0]
}

#[test]
fn a_replys_status_line_gives_its_code_and_nothing_else_does() {
    for prog in [Prog::TcEgress, Prog::Xdp] {
        let mut h = Harness::standard_data();
        // XDP only where the loader loads it (5.18+; the harness says so once otherwise).
        if !h.progs.contains(&prog) {
            continue;
        }
        let status = |h: &mut Harness, port, reply: &[u8]| {
            first_byte_of_reply(h, prog, port, reply).http_status()
        };
        let err = status(
            &mut h,
            41_001,
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(err, 503, "{prog:?}");
        assert_eq!(
            status(&mut h, 41_002, b"HTTP/1.0 200 OK\r\n\r\n"),
            200,
            "{prog:?}"
        );
        let ev = first_byte_of_reply(&mut h, prog, 41_003, b"SSH-2.0-OpenSSH_9.6\r\n");
        assert_eq!(ev.http_status(), 0, "{prog:?}: not HTTP");
        // Nothing of the payload anywhere else in the event.
        assert_eq!(ev.outer_dst, [0; 16], "{prog:?}");
        assert_eq!(ev.outer_src[8..], [0; 8], "{prog:?}");
        for (port, reply) in [
            (41_004, &b"HTTP/2.0 200 OK\r\n\r\n"[..]),
            (41_005, b"HTTP/1.1 5x3 Nope\r\n\r\n"),
            (41_006, b"HTTP/1.1 50"),
            (41_007, b"http/1.1 503 lower\r\n"),
        ] {
            assert_eq!(status(&mut h, port, reply), 0, "{prog:?}: {reply:?}");
        }
    }
}
