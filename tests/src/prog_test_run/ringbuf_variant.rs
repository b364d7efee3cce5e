//! The `_rb` program variants (packet events through the `PACKET_EVENTS` BPF ring buffer, for
//! kernels whose verifier refuses the per-CPU rings' atomic fetch-add): the same records, the
//! same counters, and every event accounted for as emitted or lost.

#[allow(clippy::wildcard_imports)]
use super::*;

fn ringbuf_harness(events_bytes: u64) -> Harness {
    Harness::with_mode(
        &standard_endpoints(),
        false,
        events_bytes,
        256 << 10,
        RingMode::RingBuf,
    )
}

#[test]
fn ringbuf_variant_gives_the_same_records_and_counts() {
    let mut h = ringbuf_harness(256 << 10);
    assert_eq!(h.layout.mode, RingMode::RingBuf);
    h.check(
        "SYN to VIP",
        &tcp4_frame(CLIENT4, 40000, VIP4, VIP_PORT, SYN),
        &Want::Packet(
            pkt4(SYN, CLIENT4, 40000, VIP4, VIP_PORT),
            ID_VIP4,
            stats(|s| s.syn = 1),
        ),
    );
    h.check(
        "SYN-ACK from the backend",
        &tcp4_frame(BACKEND4, BACKEND_PORT, LB4, 50000, SYN | ACK),
        &Want::Packet(
            pkt4(SYN | ACK, BACKEND4, BACKEND_PORT, LB4, 50000),
            ID_BACKEND4,
            stats(|s| s.syn_ack = 1),
        ),
    );
    h.check(
        "IPv6 FIN",
        &tcp6_frame(CLIENT6, 40000, VIP6, VIP_PORT, FIN | ACK),
        &Want::Packet(
            pkt6(FIN | ACK, CLIENT6, 40000, VIP6, VIP_PORT),
            ID_VIP6,
            stats(|s| s.fin = 1),
        ),
    );
    h.check(
        "ICMP error",
        &eth(
            ETH_P_IP,
            &ipv4(BACKEND4, LB4, PROTO_ICMP, &icmp(3, 3, 0, &quoted_syn4(8))),
        ),
        &Want::Icmp(icmp4_ev(3, 3, BACKEND4), ID_BACKEND4),
    );
    h.check(
        "data",
        &tcp4_frame(CLIENT4, 40000, VIP4, VIP_PORT, ACK | PSH),
        &Want::Nothing,
    );
    h.check(
        "truncated TCP",
        &eth(ETH_P_IP, &ipv4(CLIENT4, VIP4, PROTO_TCP, &[0; 10])),
        &Want::ParseError,
    );
}

#[test]
fn ringbuf_variant_counts_every_event_as_emitted_or_lost() {
    // The smallest ring buffer, one page: 36 records of 8 + 104 bytes fit, the rest are lost.
    let mut h = ringbuf_harness(1);
    assert_eq!(h.layout.shared_bytes, 4096);
    let sent: u64 = 100;
    let c0 = h.counters();
    for i in 0..sent {
        let prog = h.nth_prog(i);
        let port = 30000 + u16::try_from(i).unwrap();
        h.run(prog, &tcp4_frame(CLIENT4, port, VIP4, VIP_PORT, SYN));
    }
    let d = delta(&h.counters(), &c0);
    let emitted = d[counter::EVENTS_EMITTED as usize];
    let lost = d[counter::EVENTS_LOST as usize];
    assert_eq!(emitted + lost, sent, "counters {:?}", named(&d));
    assert_eq!(emitted, 4096 / (8 + EVENT_SIZE as u64), "records that fit");
    let got = h.drain_events();
    assert_eq!(got.len() as u64, emitted);
    for (i, e) in got.iter().enumerate() {
        let port = 30000 + u16::try_from(i).unwrap();
        assert_eq!(
            (e.sport, e.tcp_flags, e.hook),
            (port, SYN, h.nth_prog(i as u64).hook())
        );
    }
    // Drained, the ring takes records again.
    h.run(h.nth_prog(0), &tcp4_frame(CLIENT4, 1, VIP4, VIP_PORT, SYN));
    assert_eq!(h.drain_events().len(), 1);
}
