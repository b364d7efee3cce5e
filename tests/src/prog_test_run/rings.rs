//! Ring buffers.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Keeps the calling thread on the CPU it runs on now, so that every test run writes to the same
/// per-CPU ring; returns that CPU.
fn pin_to_current_cpu() -> u64 {
    // SAFETY: plain syscalls on this thread's own affinity mask.
    unsafe {
        let cpu = libc::sched_getcpu();
        assert!(
            cpu >= 0,
            "sched_getcpu: {}",
            std::io::Error::last_os_error()
        );
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        let rc = libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(
            rc,
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
        cpu as u64
    }
}

#[test]
fn full_ring_loses_events_but_still_passes() {
    // The smallest rings: MIN_SLOTS records per CPU. All runs on one CPU fill that CPU's ring.
    let cpu = pin_to_current_cpu();
    let page = 4096;
    let mut h = Harness::with_rings(&standard_endpoints(), false, 1, page);
    if h.layout.mode != RingMode::PerCpu {
        // The ring buffer's own full-ring accounting is
        // ringbuf_variant_counts_every_event_as_emitted_or_lost.
        not_tested(
            "full_ring_loses_events_but_still_passes",
            "the ring-buffer variants run (the kernel refused the per-CPU rings, or LBTRACE_RINGS=ringbuf)",
        );
        return;
    }
    assert_eq!(h.layout.slots, MIN_SLOTS);
    let sent = MIN_SLOTS + 44;
    let c0 = h.counters();
    let s0 = h.endpoint_stats(ID_VIP4);
    for i in 0..sent {
        let prog = h.nth_prog(i);
        let port = 30000 + u16::try_from(i).unwrap();
        h.run(prog, &tcp4_frame(CLIENT4, port, VIP4, VIP_PORT, SYN));
    }
    let d = delta(&h.counters(), &c0);
    let emitted = d[counter::EVENTS_EMITTED as usize];
    let lost = d[counter::EVENTS_LOST as usize];
    assert_eq!(emitted + lost, sent, "counters {:?}", named(&d));
    assert_eq!(emitted, MIN_SLOTS, "records that fit in one CPU's ring");
    assert_eq!(lost, 44);
    assert_eq!(d[counter::PACKETS as usize], sent);
    assert_eq!(d[counter::PARSE_ERRORS as usize], 0);
    // Stats are counted before the ring is touched: every SYN is there.
    assert_eq!(
        stats_delta(h.endpoint_stats(ID_VIP4), s0),
        stats(|s| s.syn = sent)
    );
    // The ring reached a quarter full once (nothing was read): one wake-up, naming the CPU.
    assert_eq!(h.layout.wakeup_events, MIN_SLOTS / 4);
    assert_eq!(h.drain_wakeups(), vec![cpu]);

    // The packet ring being full does not starve the priority ring.
    let icmp_frame = eth(
        ETH_P_IP,
        &ipv4(BACKEND4, LB4, PROTO_ICMP, &icmp(3, 3, 0, &quoted_syn4(8))),
    );
    let c1 = h.counters();
    h.run(Prog::TcIngress, &icmp_frame);
    let d = delta(&h.counters(), &c1);
    assert_eq!(
        d[counter::PRIORITY_EMITTED as usize],
        1,
        "counters {:?}",
        named(&d)
    );
    assert_eq!(d[counter::PRIORITY_LOST as usize], 0);
    let got = normalize(
        "ICMP with EVENTS full",
        Prog::TcIngress,
        &h.drain_priority(),
    );
    assert_eq!(got, with_hook(&[icmp4_ev(3, 3, BACKEND4)], Prog::TcIngress));

    // What was emitted can be read back, in order, and is right.
    let got = h.drain_events();
    assert_eq!(got.len() as u64, emitted);
    for (i, e) in got.iter().enumerate() {
        let prog = h.nth_prog(i as u64);
        let port = 30000 + u16::try_from(i).unwrap();
        let want = Event {
            hook: prog.hook(),
            ifindex: lo_ifindex(),
            ..pkt4(SYN, CLIENT4, port, VIP4, VIP_PORT)
        };
        assert_ne!(e.ts_ns, 0);
        assert_eq!(Event { ts_ns: 0, ..*e }, want, "record {i}");
    }
    assert!(
        got.windows(2).all(|w| w[0].ts_ns <= w[1].ts_ns),
        "records out of time order"
    );

    // Once drained, the ring takes events again, and wakes the reader again at a quarter.
    for i in 0..h.layout.wakeup_events {
        let port = 20000 + u16::try_from(i).unwrap();
        h.run(
            Prog::TcEgress,
            &tcp4_frame(CLIENT4, port, VIP4, VIP_PORT, FIN),
        );
    }
    assert_eq!(h.drain_wakeups(), vec![cpu]);
    assert_eq!(h.drain_events().len() as u64, h.layout.wakeup_events);
    let frame = tcp4_frame(CLIENT4, 40000, VIP4, VIP_PORT, RST);
    h.check(
        "RST after draining",
        &frame,
        &Want::Packet(
            pkt4(RST, CLIENT4, 40000, VIP4, VIP_PORT),
            ID_VIP4,
            stats(|s| s.rst = 1),
        ),
    );
}

#[test]
fn full_priority_ring_loses_icmp_events() {
    // The smallest ring buffer (one page): 4096 / (8-byte header + 104) = 36 records fit.
    let page = 4096;
    let mut h = Harness::with_rings(&standard_endpoints(), false, 1, page);
    let frame = eth(
        ETH_P_IP,
        &ipv4(BACKEND4, LB4, PROTO_ICMP, &icmp(3, 3, 0, &quoted_syn4(8))),
    );
    let sent = 50u64;
    let c0 = h.counters();
    for i in 0..sent {
        h.run(h.nth_prog(i), &frame);
    }
    let d = delta(&h.counters(), &c0);
    let emitted = d[counter::PRIORITY_EMITTED as usize];
    assert_eq!(
        emitted + d[counter::PRIORITY_LOST as usize],
        sent,
        "counters {:?}",
        named(&d)
    );
    assert_eq!(emitted, 36);
    assert_eq!(
        d[counter::EVENTS_EMITTED as usize] + d[counter::EVENTS_LOST as usize],
        0
    );
    assert_eq!(h.drain_priority().len() as u64, emitted);
    assert_eq!(h.endpoint_stats(ID_BACKEND4), stats(|s| s.icmp = sent));
    // The packet ring is untouched by a full priority ring.
    let frame = tcp4_frame(CLIENT4, 40000, VIP4, VIP_PORT, SYN);
    h.check(
        "SYN with PRIORITY_EVENTS full",
        &frame,
        &Want::Packet(
            pkt4(SYN, CLIENT4, 40000, VIP4, VIP_PORT),
            ID_VIP4,
            stats(|s| s.syn = 1),
        ),
    );
}

#[test]
fn repeated_runs_emit_one_record_each() {
    // BPF_PROG_TEST_RUN's repeat count runs the program that many times on the same frame.
    let mut h = Harness::standard();
    let frame = tcp4_frame(LB4, 40001, BACKEND4, BACKEND_PORT, SYN);
    for prog in h.progs.clone() {
        let c0 = h.counters();
        let ret = h.try_run_repeat(prog, &frame, 10).unwrap();
        assert_eq!(ret, prog.pass());
        let d = delta(&h.counters(), &c0);
        assert_eq!(d[counter::PACKETS as usize], 10);
        assert_eq!(d[counter::EVENTS_EMITTED as usize], 10);
        let got = normalize("repeat", prog, &h.drain_events());
        let want = Event {
            hook: prog.hook(),
            ifindex: lo_ifindex(),
            ..pkt4(SYN, LB4, 40001, BACKEND4, BACKEND_PORT)
        };
        assert_eq!(got, vec![want; 10], "{prog:?}");
    }
    assert_eq!(
        h.endpoint_stats(ID_BACKEND4),
        stats(|s| s.syn = 10 * h.progs.len() as u64)
    );
}
