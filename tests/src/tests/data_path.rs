//! The data-path mode (`--data`) in a lab: a Layer 4 LB only forwards, so the retransmissions
//! of a path-MTU black hole are the backend's, and only `--data` sees them.

use super::check::{
    Outcome, REQUESTS, assert_clients, assert_mtu_black_hole, check_driven, check_scenario,
};
use crate::lab::scenario::Scenario;

/// A path-MTU black hole toward the client in front of nftables DNAT (Layer 4: the backends
/// answer the client themselves, through the LB): the handshakes pass, the backend's 200 KB
/// answer's full-size segments never arrive and no ICMP fragmentation-needed comes back. With
/// `--data` step 4 fails with the MTU finding, its evidence the forwarded full-size
/// retransmissions toward the client; without it, on the same lab, step 4 sees only
/// handshakes and does not claim it.
#[test]
fn check_nft_dnat_path_mtu_black_hole() {
    let mut without: Option<Outcome> = None;
    let o = check_scenario("nft-dnat-path-mtu-black-hole", |lab, s| {
        assert!(s.data, "the scenario is checked with --data");
        let with = check_driven(lab, s, &[], || s.drive(lab, REQUESTS, &|_| {}));
        let plain: &'static Scenario = Box::leak(Box::new(Scenario { data: false, ..*s }));
        without = Some(check_driven(lab, plain, &[], || {
            plain.drive(lab, REQUESTS, &|_| {})
        }));
        with
    });
    let evidence = assert_mtu_black_hole(&o, "l4", "forwarded full-size segments retransmitted");
    assert!(
        evidence.iter().any(|e| e["type"] == "retrans"
            && e["hook"] == "tc"
            && e["dir"] == "out"
            && e["full_size"] == true
            && e["src"] == o.scenario.vip()),
        "step 4's evidence lacks a forwarded full-size retransmission from the VIP\n{}",
        o.dump()
    );
    // The status line is small and arrives; the body does not.
    assert_clients(
        &o,
        |c| c.error.contains("0 out of 200000 bytes"),
        "a timeout without a byte of the body",
    );

    let w = without.expect("the check without --data ran");
    let summary = w.summary(4).to_owned();
    eprintln!("without --data, step 4: {} {summary}", w.step(4)["status"]);
    assert!(
        !summary.contains("path-MTU") && !summary.contains("retransmitted"),
        "without --data step 4 claims what it cannot see\n{}",
        w.dump()
    );
    assert_ne!(w.step(4)["status"], "fail", "{}", w.dump());
    // What it does say: the handshakes came back through the LB.
    assert!(summary.contains("acknowledged the SYN-ACK"), "{}", w.dump());
}
