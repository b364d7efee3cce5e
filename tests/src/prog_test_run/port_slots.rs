//! Many endpoints on one port: the per-port slot holds PORT_SLOT_ENTRIES, more go to the hash map.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Backends 10.1.0.1.. on one port, IPv4 and IPv6 mixed in the same slot.
fn backends_on_one_port(n: usize) -> Vec<(EndpointKey, u32)> {
    (0..n)
        .map(|i| {
            let b = u8::try_from(i + 1).unwrap();
            let id = u32::try_from(i).unwrap();
            if i % 2 == 0 {
                (key4([10, 1, 0, b], BACKEND_PORT), id)
            } else {
                let mut a = BACKEND6;
                a[15] = b;
                (key6(a, BACKEND_PORT), id)
            }
        })
        .collect()
}

fn check_every_backend_watched(h: &mut Harness, eps: &[(EndpointKey, u32)]) {
    for (k, id) in eps {
        let port = 41000 + u16::try_from(*id).unwrap();
        let (frame, ev) = if k.family == family::V4 {
            let a: [u8; 4] = k.addr[..4].try_into().unwrap();
            (
                tcp4_frame(LB4, port, a, BACKEND_PORT, SYN),
                pkt4(SYN, LB4, port, a, BACKEND_PORT),
            )
        } else {
            (
                tcp6_frame(LB6, port, k.addr, BACKEND_PORT, SYN),
                pkt6(SYN, LB6, port, k.addr, BACKEND_PORT),
            )
        };
        h.check(
            &format!("SYN to backend {id}"),
            &frame,
            &Want::Packet(ev, *id, stats(|s| s.syn = 1)),
        );
    }
    // Same port, an address that is not among them; a watched address on another port.
    h.check(
        "SYN to an unwatched address on the backends' port",
        &tcp4_frame(LB4, 40000, [10, 1, 0, 200], BACKEND_PORT, SYN),
        &Want::Nothing,
    );
    h.check(
        "SYN to a backend's address on another port",
        &tcp4_frame(LB4, 40000, [10, 1, 0, 1], BACKEND_PORT + 1, SYN),
        &Want::Nothing,
    );
}

#[test]
fn a_full_port_slot_matches_every_endpoint() {
    let eps = backends_on_one_port(PORT_SLOT_ENTRIES);
    let mut h = Harness::new(&eps, false);
    check_every_backend_watched(&mut h, &eps);
}

#[test]
fn more_endpoints_than_a_port_slot_go_through_the_hash_map() {
    let eps = backends_on_one_port(PORT_SLOT_ENTRIES + 3);
    let (ports, _) = loader::port_table(&eps);
    assert_eq!(ports, vec![(BACKEND_PORT, PORT_HASHED)]);
    let mut h = Harness::new(&eps, false);
    check_every_backend_watched(&mut h, &eps);
}
