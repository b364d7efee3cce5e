//! lbtrace next to other eBPF programs on the same interface: an XDP program that was there
//! first is never displaced (lbtrace traces that interface with TCX and says so), and a TCX
//! program attached after lbtrace still sees every packet (lbtrace returns TCX_NEXT).
//!
//! The "other" program is lbtrace's own object, loaded by the test with aya in the lb namespace
//! from a thread of its own (a network namespace belongs to a thread), standing in for an LB's
//! XDP / TCX program.

use std::{fs::File, os::fd::AsFd as _, sync::mpsc, thread, time::Duration};

use aya::{
    maps::PerCpuArray,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
        tc::{self, NlOptions, TcAttachOptions},
    },
};
use lbtrace::kernel::{
    loader::{self, Programs},
    rings::RingLayout,
};
use lbtrace_common::{EndpointKey, EndpointStats, family, names};
use serde_json::Value;

use crate::{
    lab::{Family, Lab, Netns, VIP, VIP_PORT},
    runner::Lbtrace,
};

/// Where the stand-in program attaches.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hook {
    Xdp,
    /// TCX ingress, after every program already there.
    Tcx,
    /// A legacy cls_bpf filter (direct-action) at priority 1 on TC ingress, adding a clsact
    /// qdisc: what an LB of a kernel before 6.6 has.
    LegacyTc,
}

/// What the stand-in program saw, reported when the test lets it go.
struct Seen {
    prog_id: u32,
    syns: u64,
}

/// Runs `attach` in `ns` on a thread of its own; it reports its program id, then keeps the
/// program attached until `stop` is sent, and reports the SYNs its `ENDPOINT_STATS` counted.
fn hold_in_netns(
    ns: &Netns,
    iface: String,
    hook: Hook,
) -> (mpsc::Sender<()>, mpsc::Receiver<Seen>) {
    let xdp = hook == Hook::Xdp;
    let path = format!("/run/netns/{}", ns.name());
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let (seen_tx, seen_rx) = mpsc::channel::<Seen>();
    thread::spawn(move || {
        let f = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        // SAFETY: setns on this thread only; it never returns to the test's namespace.
        let rc = unsafe {
            libc::setns(
                std::os::fd::AsRawFd::as_raw_fd(&f.as_fd()),
                libc::CLONE_NEWNET,
            )
        };
        assert_eq!(
            rc,
            0,
            "setns into {path}: {}",
            std::io::Error::last_os_error()
        );
        let mut vip = [0u8; 16];
        vip[..4].copy_from_slice(&VIP.v4.parse::<std::net::Ipv4Addr>().unwrap().octets());
        let key = EndpointKey {
            addr: vip,
            port: VIP_PORT,
            family: family::V4,
            _pad: 0,
        };
        let layout = RingLayout::new(1 << 16, 1 << 16).expect("ring layout");
        let mut opts = loader::Options::new(lbtrace::kernel::EBPF_OBJECT, layout, vec![(key, 0)]);
        opts.programs = Programs {
            tc: !xdp,
            legacy_tc: false,
            xdp,
        };
        let mut ebpf = loader::load(&opts)
            .expect("loading the stand-in program")
            .ebpf;
        let prog_id = if xdp {
            let p: &mut Xdp = ebpf
                .program_mut(names::PROG_XDP_INGRESS)
                .unwrap()
                .try_into()
                .unwrap();
            p.attach(&iface, XdpMode::default())
                .expect("attaching the stand-in XDP program");
            p.info().unwrap().id()
        } else {
            let p: &mut SchedClassifier = ebpf
                .program_mut(names::PROG_TC_INGRESS)
                .unwrap()
                .try_into()
                .unwrap();
            let opts = if hook == Hook::LegacyTc {
                tc::qdisc_add_clsact(&iface).expect("adding a clsact qdisc");
                TcAttachOptions::Netlink(NlOptions {
                    priority: 1,
                    ..NlOptions::default()
                })
            } else {
                // Default order: after every program already attached (lbtrace's).
                TcAttachOptions::TcxOrder(LinkOrder::default())
            };
            p.attach_with_options(&iface, TcAttachType::Ingress, opts)
                .expect("attaching the stand-in TC program");
            p.info().unwrap().id()
        };
        seen_tx.send(Seen { prog_id, syns: 0 }).unwrap();
        let _ = stop_rx.recv();
        let stats: PerCpuArray<_, EndpointStats> =
            PerCpuArray::try_from(ebpf.map(names::ENDPOINT_STATS).unwrap()).unwrap();
        let syns = stats.get(&0, 0).unwrap().iter().map(|s| s.syn).sum();
        seen_tx.send(Seen { prog_id, syns }).unwrap();
        // Dropping `ebpf` detaches the program.
    });
    (stop_tx, seen_rx)
}

/// The id of the XDP program on `iface` in `ns`, if any (`ip -j -d link`).
fn xdp_prog(ns: &Netns, iface: &str) -> Option<u64> {
    let out = ns.exec(&["ip", "-j", "-d", "link", "show", "dev", iface]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let xdp = v.get(0)?.get("xdp")?;
    xdp.get("prog")
        .and_then(|p| p.get("id"))
        .and_then(Value::as_u64)
        .or_else(|| {
            xdp.get("attached")?
                .as_array()?
                .iter()
                .find_map(|a| a.get("id").and_then(Value::as_u64))
        })
}

fn syns_in(trace: &crate::runner::Trace, iface: &str) -> Vec<Value> {
    trace
        .of_type("packet")
        .filter(|e| {
            e["iface"] == iface
                && e["dir"] == "in"
                && e["flags"] == "S"
                && e["dst"] == format!("{}:{VIP_PORT}", VIP.v4)
        })
        .cloned()
        .collect()
}

#[test]
fn xdp_program_already_attached_is_left_alone() {
    let lab = Lab::new();
    let _haproxy = lab.haproxy();
    let (stop, seen) = hold_in_netns(&lab.lb, lab.lb_ext.clone(), Hook::Xdp);
    let theirs = seen
        .recv_timeout(Duration::from_secs(20))
        .expect("the XDP program attached")
        .prog_id;
    assert_eq!(xdp_prog(&lab.lb, &lab.lb_ext), Some(u64::from(theirs)));

    let vip = format!("{}:{VIP_PORT}", VIP.v4);
    let lbtrace = Lbtrace::start(&lab.lb, lab.dir(), &["--vip", &vip, "--xdp"]);
    assert!(
        lbtrace.stderr().contains(&format!(
            "{}: an XDP program (id {theirs}) is already attached",
            lab.lb_ext
        )),
        "lbtrace must say it leaves the XDP program alone:\n{}",
        lbtrace.stderr()
    );
    assert_eq!(
        xdp_prog(&lab.lb, &lab.lb_ext),
        Some(u64::from(theirs)),
        "displaced while lbtrace runs"
    );
    for _ in 0..3 {
        lab.get_vip(Family::V4);
    }
    thread::sleep(Duration::from_millis(500));
    let trace = lbtrace.stop();
    assert_eq!(
        xdp_prog(&lab.lb, &lab.lb_ext),
        Some(u64::from(theirs)),
        "displaced after lbtrace exited"
    );
    // Still traced, with TCX on that interface.
    let syns = syns_in(&trace, &lab.lb_ext);
    assert_eq!(syns.len(), 3, "{}", trace.dump());
    assert!(syns.iter().all(|e| e["hook"] == "tc"), "{syns:?}");
    stop.send(()).unwrap();
    let _ = seen.recv_timeout(Duration::from_secs(10));
}

#[test]
fn tcx_program_attached_after_lbtrace_sees_every_packet() {
    let lab = Lab::new();
    let _haproxy = lab.haproxy();
    let vip = format!("{}:{VIP_PORT}", VIP.v4);
    let lbtrace = Lbtrace::start(&lab.lb, lab.dir(), &["--vip", &vip]);
    let (stop, seen) = hold_in_netns(&lab.lb, lab.lb_ext.clone(), Hook::Tcx);
    seen.recv_timeout(Duration::from_secs(20))
        .expect("the TCX program attached");
    for _ in 0..5 {
        lab.get_vip(Family::V4);
    }
    thread::sleep(Duration::from_millis(500));
    stop.send(()).unwrap();
    let after = seen
        .recv_timeout(Duration::from_secs(10))
        .expect("the TCX program's counts");
    let trace = lbtrace.stop();
    let ours = syns_in(&trace, &lab.lb_ext).len();
    assert_eq!(ours, 5, "{}", trace.dump());
    // The program after lbtrace in the TCX chain saw the same SYNs: lbtrace passed them on.
    assert_eq!(
        after.syns, 5,
        "the TCX program attached after lbtrace missed packets"
    );
}

/// With legacy TC, the tc filters that were there first keep their place and keep running, and
/// lbtrace leaves them and the clsact qdisc (which it did not make) as they were. On ingress,
/// another cls_bpf filter at priority 1: lbtrace's joins that priority with a handle of its own
/// and is listed, so run, first; the other still sees every packet after it. On egress, a u32
/// filter at priority 1 (another kind: the priority cannot be shared): lbtrace takes priority 2
/// and says so.
#[test]
fn legacy_tc_leaves_existing_tc_filters_alone_and_running() {
    let lab = Lab::new();
    let _haproxy = lab.haproxy();
    let ext = lab.lb_ext.clone();
    let (stop, seen) = hold_in_netns(&lab.lb, ext.clone(), Hook::LegacyTc);
    seen.recv_timeout(Duration::from_secs(20))
        .expect("the legacy TC program attached");
    lab.lb.exec(&[
        "tc", "filter", "add", "dev", &ext, "egress", "pref", "1", "protocol", "ip", "u32",
        "match", "ip", "tos", "0xff", "0xff", "classid", "1:1",
    ]);
    let theirs = super::trace::tc_filters(&lab.lb);

    let vip = format!("{}:{VIP_PORT}", VIP.v4);
    let env = super::trace::legacy_env(&lab);
    let env: Vec<&str> = env.iter().map(String::as_str).collect();
    let lbtrace = Lbtrace::start_env("lbtrace", &lab.lb, lab.dir(), &env, &["--vip", &vip]);
    assert!(
        lbtrace.stderr().contains(&format!(
            "{ext}: egress filters at priority 1..1 run before lbtrace's"
        )),
        "lbtrace must say its egress filter runs second:\n{}",
        lbtrace.stderr()
    );
    let all = super::trace::tc_filters(&lab.lb);
    let ingress: Vec<&String> = all
        .iter()
        .filter(|f| f.starts_with(&format!("{ext} ingress ")))
        .collect();
    assert!(
        ingress.len() == 2
            && ingress[0] == &format!("{ext} ingress \"bpf\" 1 lbtrace_tc_in")
            && ingress[1].ends_with(" 1 tc_ingress"),
        "ingress filters on {ext} (lbtrace's first, both at priority 1): {all:?}"
    );
    assert!(
        all.contains(&format!("{ext} egress \"bpf\" 2 lbtrace_tc_eg")),
        "lbtrace's egress filter on {ext} is not at priority 2: {all:?}"
    );
    for _ in 0..5 {
        lab.get_vip(Family::V4);
    }
    thread::sleep(Duration::from_millis(500));
    let trace = lbtrace.stop();
    assert_eq!(
        super::trace::tc_filters(&lab.lb),
        theirs,
        "the filters after lbtrace exited"
    );
    let qdiscs = lab.lb.exec(&["tc", "qdisc", "show", "dev", &ext]);
    assert!(
        qdiscs.contains("clsact"),
        "lbtrace removed a clsact qdisc it did not create: {qdiscs}"
    );
    stop.send(()).unwrap();
    let after = seen
        .recv_timeout(Duration::from_secs(10))
        .expect("the legacy TC program's counts");
    // Both saw the 5 SYNs: lbtrace returned TC_ACT_UNSPEC, so the other filter still ran.
    assert_eq!(after.syns, 5, "the existing filter missed packets");
    assert_eq!(syns_in(&trace, &ext).len(), 5, "{}", trace.dump());
}
