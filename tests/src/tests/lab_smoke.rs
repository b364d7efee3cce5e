//! The lab itself, without lbtrace: traffic flows through both load balancers on both families,
//! tcpdump's ground truth parses, and dropping the lab leaves no namespace behind.

use std::{path::Path, thread, time::Duration};

use crate::{
    lab::{BACKENDS, Family, Lab, VIP},
    tcpdump::Tcpdump,
};

#[test]
fn lab_routes_through_haproxy_and_nft_dnat() {
    let lab = Lab::new();
    let names: Vec<String> = [&lab.client, &lab.router, &lab.lb]
        .into_iter()
        .chain(&lab.backends)
        .map(|ns| ns.name().to_owned())
        .collect();

    {
        let _haproxy = lab.haproxy();
        let tcpdump = Tcpdump::start(&lab.lb, lab.dir());
        for family in [Family::V4, Family::V6] {
            let mut seen: Vec<String> = (0..BACKENDS.len()).map(|_| lab.get_vip(family)).collect();
            seen.sort();
            let want: Vec<String> = BACKENDS
                .iter()
                .map(|b| format!("hello from {}\n", b.name))
                .collect();
            assert_eq!(
                seen, want,
                "HAProxy round-robin over all backends ({family:?})"
            );
        }
        thread::sleep(Duration::from_millis(300));
        let capture = tcpdump.stop();
        // Each of the 6 requests: client SYN in on the external iface, HAProxy's SYN out on br0.
        let syns = |iface: &str, dst: &str| {
            capture
                .packets
                .iter()
                .filter(|p| p.flags == "S" && p.iface == iface && p.dst.starts_with(dst))
                .count()
        };
        assert_eq!(syns(&lab.lb_ext, "10.10.2.10:"), 3, "{}", capture.text);
        assert_eq!(syns(&lab.lb_ext, "[fd00:10:2::10]:"), 3, "{}", capture.text);
        assert_eq!(syns("br0", "10.10.3.1"), 3, "{}", capture.text);
        assert_eq!(syns("br0", "[fd00:10:3::1"), 3, "{}", capture.text);
    }

    {
        let _nft = lab.nft_dnat();
        for family in [Family::V4, Family::V6] {
            for _ in 0..BACKENDS.len() {
                let body = lab.get_vip(family);
                assert!(body.starts_with("hello from be"), "{body}");
            }
        }
    }
    // With the table gone nothing listens on the VIP: refused at once.
    let (code, _) = lab.curl(&Family::V4.url(VIP.v4, 80), 2);
    assert_eq!(code, "000");

    drop(lab);
    for name in names {
        assert!(
            !Path::new("/run/netns").join(&name).exists(),
            "namespace {name} still exists after the lab was dropped"
        );
    }
}
