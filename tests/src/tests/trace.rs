//! `lbtrace trace` end to end: its events against tcpdump's ground truth, drop reasons, ICMP
//! errors, and that SIGKILL leaves nothing attached.

use std::{collections::BTreeSet, fs, thread, time::Duration};

use serde_json::Value;

use crate::{
    lab::{BACKEND_PORT, BACKENDS, BRIDGE, Family, Lab, Netns, VIP, VIP_PORT, process},
    packet::{listing, multiset_diff},
    runner::{Lbtrace, Trace},
    tcpdump::Tcpdump,
};

#[derive(Clone, Copy, Debug)]
enum LbKind {
    HaProxy,
    NftDnat,
}

/// `--vip ... --backend ...` for the given tuples.
fn endpoint_args(vips: &[String], backends: &[String]) -> Vec<String> {
    let vips = vips.iter().flat_map(|v| ["--vip".to_owned(), v.clone()]);
    let backends = backends
        .iter()
        .flat_map(|b| ["--backend".to_owned(), b.clone()]);
    vips.chain(backends).collect()
}

/// Runs `curls` requests through `kind` on `family` under both tcpdump and lbtrace (on the lb),
/// and asserts that lbtrace reports exactly the control packets tcpdump saw on the interfaces
/// lbtrace traced.
///
/// Where the taps sit: tcpdump sees a received packet in `__netif_receive_skb_core` (after XDP,
/// before TC ingress) and a sent one in `dev_hard_start_xmit` (after TC egress). So TCX ingress
/// sees what tcpdump saw just before it, TCX egress what tcpdump will see just after, and XDP
/// (with `--xdp`) runs before tcpdump's tap on ingress. On a veth, native XDP only sees what the
/// peer sends through `veth_xmit`, which is all the lab's traffic. The bridge br0 has no native
/// XDP: lbtrace may use generic XDP there or fall back to TCX, so its ingress hook is not
/// checked, only its tuples. None of these differences may change the tuples, flags or numbers.
fn matches_tcpdump(kind: LbKind, family: Family, xdp: bool) {
    matches_tcpdump_on(kind, family, xdp, false, &[]);
}

/// [`matches_tcpdump`], with legacy TC (clsact + cls_bpf) instead of TCX when `legacy`: then
/// lbtrace's filters must be there while it runs, and nothing of them (filters, the clsact
/// qdiscs it created, its record) once it stopped. `env` goes to lbtrace's environment too.
fn matches_tcpdump_on(kind: LbKind, family: Family, xdp: bool, legacy: bool, env: &[&str]) {
    const CURLS: usize = 5;
    let lab = Lab::new();
    let _haproxy = matches!(kind, LbKind::HaProxy).then(|| lab.haproxy());
    let _nft = matches!(kind, LbKind::NftDnat).then(|| lab.nft_dnat());

    let (vip, backends) = lab.endpoints(family);
    let mut args = endpoint_args(std::slice::from_ref(&vip), &backends);
    if xdp {
        args.push("--xdp".to_owned());
    }
    let tcpdump = Tcpdump::start(&lab.lb, lab.dir());
    let legacy_vars = legacy_env(&lab);
    let mut vars: Vec<&str> = legacy_vars
        .iter()
        .map(String::as_str)
        .filter(|_| legacy)
        .collect();
    vars.extend(env);
    let lbtrace = Lbtrace::start_env("lbtrace", &lab.lb, lab.dir(), &vars, &args);
    if legacy {
        let filters = lbtrace_filters(&lab.lb);
        // Ingress (unless XDP has it) and egress on the lb's two interfaces.
        let egress = filters.iter().filter(|f| f.contains(" egress ")).count();
        assert!(
            egress == 2 && (xdp || filters.len() == 4),
            "lbtrace's legacy TC filters: {filters:?}"
        );
    }
    for _ in 0..CURLS {
        lab.get_vip(family);
    }
    // Let the last FINs and ACKs pass both taps.
    thread::sleep(Duration::from_secs(1));
    let trace = lbtrace.stop();
    let capture = tcpdump.stop();
    if legacy {
        assert_eq!(
            (
                lbtrace_filters(&lab.lb),
                attachments(&lab.lb),
                records(&lab)
            ),
            (vec![], vec![], vec![]),
            "left behind by lbtrace after it stopped\n{}",
            trace.dump()
        );
        assert!(
            trace.stderr.contains("tc-egress)") && !trace.stderr.contains("tcx-"),
            "lbtrace did not say it attached with legacy TC:\n{}",
            trace.stderr
        );
    }

    let traced = trace.ifaces();
    assert!(
        traced.contains(&lab.lb_ext) && traced.contains(BRIDGE),
        "lbtrace reported packets on {traced:?}, expected the lb's external iface {} and {BRIDGE}\n{}",
        lab.lb_ext,
        trace.dump()
    );
    for port in &lab.bridge_ports {
        assert!(
            !traced.contains(port),
            "lbtrace traced the bridge port {port} (only br0 carries the lb's traffic)\n{}",
            trace.dump()
        );
    }

    let traced: Vec<String> = traced.into_iter().collect();
    let endpoints: Vec<String> = [vip.clone()].into_iter().chain(backends).collect();
    let expected = capture.involving(&endpoints, &traced);
    let reported = trace.packets();
    let (missing, extra) = multiset_diff(&expected, &reported);
    assert!(
        missing.is_empty() && extra.is_empty(),
        "lbtrace and tcpdump disagree\nmissing from lbtrace (tcpdump saw them):\n{}\n\
         only in lbtrace:\n{}\n\ntcpdump (control packets on {traced:?} of {endpoints:?}):\n{}\n\
         lbtrace:\n{}\n\nlbtrace {}",
        listing(&missing),
        listing(&extra),
        listing(&expected),
        listing(&reported),
        trace.dump()
    );

    eprintln!(
        "{} control packets agree on {traced:?}:\n{}",
        reported.len(),
        listing(&reported)
    );
    // Not vacuous: each request is a client SYN to the VIP, plus a proxy/DNAT SYN to a backend.
    let syns = reported.iter().filter(|p| p.flags == "S").count();
    assert!(
        syns >= 2 * CURLS,
        "only {syns} SYNs reported\n{}",
        trace.dump()
    );
    for p in &reported {
        assert!(
            p.src.starts_with('[') == (family == Family::V6),
            "a packet of the other family: {p}"
        );
        // Linux puts an MSS option in every SYN and SYN-ACK: lbtrace read it (and tcpdump
        // agreed on its value above).
        assert!(
            !p.flags.contains('S') || p.mss > 0,
            "a SYN without its MSS: {p}\n{}",
            trace.dump()
        );
    }
    assert_eq!(trace.lost(), 0, "events lost\n{}", trace.dump());
    // What ran, as the summary says it: this kernel has drop reasons; the rest as forced.
    let caps = &trace.summary["capabilities"];
    let ringbuf = env.contains(&"LBTRACE_RINGS=ringbuf");
    assert_eq!(
        (
            &caps["attach"],
            &caps["packet_rings"],
            &caps["drops"],
            caps["xdp"] == "off",
            &caps["retransmissions"],
            &caps["resets"],
        ),
        (
            &Value::from(if legacy { "legacy_tc" } else { "tcx" }),
            &Value::from(if ringbuf { "ringbuf" } else { "percpu" }),
            &Value::from("reason"),
            !xdp,
            &Value::from("tracepoint"),
            &Value::from("all"),
        ),
        "capabilities in {}",
        trace.summary
    );

    for ev in trace.of_type("packet") {
        check_common_fields(ev, &lab.lb);
        let (dir, hook, iface) = (&ev["dir"], &ev["hook"], &ev["iface"]);
        let want = if xdp && dir == "in" { "xdp" } else { "tc" };
        if xdp && dir == "in" && iface == BRIDGE {
            // No native XDP on a bridge: generic XDP or a TCX fallback are both fine.
            assert!(hook == "xdp" || hook == "tc", "hook of {ev}");
        } else {
            assert_eq!(hook, want, "hook of {ev}");
        }
    }
}

/// The fields every event of docs/output.md carries besides the compared ones: `time` (RFC 3339
/// UTC), `ts_ns`, and an `ifindex` that is `iface`'s in the traced namespace.
fn check_common_fields(ev: &Value, ns: &Netns) {
    let time = ev["time"].as_str().unwrap_or_default();
    assert!(
        time.len() >= 20 && time.as_bytes()[10] == b'T' && time.ends_with('Z'),
        "time of {ev}"
    );
    assert!(ev["ts_ns"].as_u64().is_some_and(|t| t > 0), "ts_ns of {ev}");
    if ev["type"] == "packet" {
        assert!(ev["len"].is_u64(), "len of {ev}");
    }
    if let Some(iface) = ev["iface"].as_str() {
        assert_eq!(
            ev["ifindex"].as_u64(),
            Some(ns.ifindex(iface)),
            "ifindex of {ev}"
        );
    }
}

#[test]
fn tcx_matches_tcpdump_haproxy_l7() {
    matches_tcpdump(LbKind::HaProxy, Family::V4, false);
}

#[test]
fn tcx_matches_tcpdump_nft_dnat_l4() {
    matches_tcpdump(LbKind::NftDnat, Family::V4, false);
}

#[test]
fn tcx_matches_tcpdump_ipv6() {
    matches_tcpdump(LbKind::HaProxy, Family::V6, false);
}

#[test]
fn tcx_matches_tcpdump_ipv6_nft_dnat_l4() {
    matches_tcpdump(LbKind::NftDnat, Family::V6, false);
}

#[test]
fn legacy_tc_matches_tcpdump_nft_dnat_l4() {
    matches_tcpdump_on(LbKind::NftDnat, Family::V4, false, true, &[]);
}

#[test]
fn legacy_tc_matches_tcpdump_haproxy_ipv6() {
    matches_tcpdump_on(LbKind::HaProxy, Family::V6, false, true, &[]);
}

/// The ring-buffer program variants (kernels before 5.12), forced here: every control packet
/// tcpdump saw, none lost; with TCX, and with legacy TC and XDP as an old kernel would run them.
#[test]
fn ringbuf_variant_matches_tcpdump() {
    const RINGBUF: &[&str] = &["LBTRACE_RINGS=ringbuf"];
    matches_tcpdump_on(LbKind::NftDnat, Family::V4, false, false, RINGBUF);
    matches_tcpdump_on(LbKind::HaProxy, Family::V4, true, true, RINGBUF);
}

/// The environment that makes lbtrace attach with legacy TC on a kernel that has TCX, and keeps
/// its records in the lab's directory.
pub(super) fn legacy_env(lab: &Lab) -> Vec<String> {
    vec![
        "LBTRACE_ATTACH=tc".to_owned(),
        format!("LBTRACE_RUN_DIR={}", run_dir(lab).display()),
    ]
}

fn run_dir(lab: &Lab) -> std::path::PathBuf {
    lab.dir().join("run")
}

/// lbtrace's records of legacy TC attachments in the lab's run directory.
fn records(lab: &Lab) -> Vec<String> {
    fs::read_dir(run_dir(lab))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// lbtrace's cls_bpf filters in `ns` (`tc filter show`, by their `lbtrace_tc_*` names), as
/// `iface direction pref handle`.
pub(super) fn lbtrace_filters(ns: &Netns) -> Vec<String> {
    tc_filters(ns)
        .into_iter()
        .filter(|f| f.contains("lbtrace_tc_"))
        .collect()
}

/// Every tc filter in `ns`, as `iface direction kind pref name-or-handle`.
pub(super) fn tc_filters(ns: &Netns) -> Vec<String> {
    let mut out = Vec::new();
    for link in ns.links() {
        let iface = link["ifname"].as_str().unwrap_or_default().to_owned();
        for dir in ["ingress", "egress"] {
            let o = ns.output(&["tc", "-j", "filter", "show", "dev", &iface, dir]);
            let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Array(Vec::new()));
            for f in v.as_array().into_iter().flatten() {
                // Each filter comes with a header entry without options.
                let Some(opts) = f.get("options") else {
                    continue;
                };
                let name = opts["bpf_name"]
                    .as_str()
                    .map_or_else(|| opts["handle"].to_string(), str::to_owned);
                out.push(format!("{iface} {dir} {} {} {name}", f["kind"], f["pref"]));
            }
        }
    }
    out
}

#[test]
fn xdp_matches_tcpdump_ingress() {
    matches_tcpdump(LbKind::HaProxy, Family::V4, true);
}

#[test]
fn xdp_matches_tcpdump_ingress_nft_dnat_ipv6() {
    matches_tcpdump(LbKind::NftDnat, Family::V6, true);
}

/// The lab's VIP:80 and backends:8080 in IPv4, as lbtrace arguments.
fn v4_args(lab: &Lab) -> Vec<String> {
    let (vip, backends) = lab.endpoints(Family::V4);
    endpoint_args(&[vip], &backends)
}

fn find<'a>(
    trace: &'a Trace,
    kind: &'a str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> &'a Value {
    trace
        .of_type(kind)
        .find(|ev| pred(ev))
        .unwrap_or_else(|| panic!("no {kind} event {what}\nlbtrace {}", trace.dump()))
}

#[test]
fn drop_netfilter_reports_reason() {
    let lab = Lab::new();
    let _haproxy = lab.haproxy();
    lab.lb.nft(
        "table inet lbtdrop {\n\
         \x20 chain input {\n\
         \x20   type filter hook input priority 0; policy accept;\n\
         \x20   ip daddr 10.10.2.10 tcp dport 80 drop\n\
         \x20 }\n\
         }\n",
    );
    let lbtrace = Lbtrace::start(&lab.lb, lab.dir(), &v4_args(&lab));
    let (code, err) = lab.curl(&Family::V4.url(VIP.v4, VIP_PORT), 2);
    assert_eq!(code, "000", "the SYN should have been dropped: {err}");
    let trace = lbtrace.stop();

    let vip = Family::V4.tuple(VIP.v4, VIP_PORT);
    let drop = find(
        &trace,
        "drop",
        "NETFILTER_DROP of the SYN to the VIP",
        |ev| ev["reason"] == "NETFILTER_DROP" && ev["flags"] == "S" && ev["dst"] == vip.as_str(),
    );
    assert!(
        drop["src"]
            .as_str()
            .is_some_and(|s| s.starts_with("10.10.1.2:")),
        "drop's src should be the client: {drop}"
    );
    assert_eq!(drop["iface"], lab.lb_ext.as_str(), "drop's device: {drop}");
    assert_eq!(drop["ack"], 0, "{drop}");
    check_common_fields(drop, &lab.lb);
    // lbtrace also saw the SYN itself arrive (TC ingress runs before netfilter).
    let seq = drop["seq"].as_u64().expect("drop without seq");
    find(&trace, "packet", "for the dropped SYN", |ev| {
        ev["flags"] == "S" && ev["dir"] == "in" && ev["dst"] == vip.as_str() && ev["seq"] == seq
    });
    // Nothing answered it.
    assert!(
        trace.of_type("packet").all(|ev| ev["flags"] == "S"),
        "only SYNs expected\nlbtrace {}",
        trace.dump()
    );
    assert_eq!(trace.lost(), 0);
}

/// The drop tracer of kernels before 5.17 (`LBTRACE_DROPS=location` forces it here): the nft
/// drop comes with its location in netfilter and is mapped to NETFILTER_DROP, a SYN to a port
/// nothing listens on to NO_SOCKET; the run says once that reasons are unavailable.
#[test]
fn drop_by_location_without_reasons() {
    let lab = Lab::new();
    let _haproxy = lab.haproxy();
    lab.lb.nft(
        "table inet lbtdrop {\n\
         \x20 chain input {\n\
         \x20   type filter hook input priority 0; policy accept;\n\
         \x20   ip daddr 10.10.2.10 tcp dport 80 drop\n\
         \x20 }\n\
         }\n",
    );
    let lbtrace = Lbtrace::start_env(
        "lbtrace-loc",
        &lab.lb,
        lab.dir(),
        &["LBTRACE_DROPS=location"],
        &["--vip", VIP.v4],
    );
    let (code, err) = lab.curl(&Family::V4.url(VIP.v4, VIP_PORT), 2);
    assert_eq!(code, "000", "the SYN should have been dropped: {err}");
    let (code, err) = lab.curl(&Family::V4.url(VIP.v4, 81), 2);
    assert_eq!(code, "000", "nothing listens on :81: {err}");
    thread::sleep(Duration::from_millis(300));
    let trace = lbtrace.stop();

    let vip = Family::V4.tuple(VIP.v4, VIP_PORT);
    let drop = find(&trace, "drop", "NETFILTER_DROP at nf_ of the SYN", |ev| {
        ev["reason"] == "NETFILTER_DROP" && ev["flags"] == "S" && ev["dst"] == vip.as_str()
    });
    let at = drop["location"].as_str().unwrap_or_default();
    assert!(
        // 5.10 frees it in nf_hook_slow; newer kernels in nft_do_chain.
        (at.starts_with("nf_") || at.starts_with("nft_")) && at.contains("+0x"),
        "location in netfilter expected: {drop}"
    );
    assert_eq!(drop["reason_code"], 1, "{drop}");
    check_common_fields(drop, &lab.lb);
    let port81 = Family::V4.tuple(VIP.v4, 81);
    let drop = find(&trace, "drop", "NO_SOCKET at tcp_v4_rcv", |ev| {
        ev["reason"] == "NO_SOCKET" && ev["flags"] == "S" && ev["dst"] == port81.as_str()
    });
    assert!(
        drop["location"]
            .as_str()
            .is_some_and(|l| l.starts_with("tcp_v4_rcv+0x")),
        "{drop}"
    );
    let notes = trace.stderr.matches("drop reasons are unavailable").count();
    assert_eq!(notes, 1, "said once:\n{}", trace.stderr);
    assert_eq!(
        trace.summary["capabilities"]["drops"], "location",
        "{}",
        trace.summary
    );
}

#[test]
fn drop_no_socket_and_rst() {
    let lab = Lab::new();
    let lbtrace = Lbtrace::start(&lab.lb, lab.dir(), &["--vip", VIP.v4]);
    let (code, err) = lab.curl(&Family::V4.url(VIP.v4, 81), 2);
    assert_eq!(code, "000", "nothing listens on :81: {err}");
    assert!(
        err.contains("refused") || err.contains("Couldn't connect"),
        "{err}"
    );
    thread::sleep(Duration::from_millis(300));
    let trace = lbtrace.stop();

    let port81 = Family::V4.tuple(VIP.v4, 81);
    let drop = find(&trace, "drop", "NO_SOCKET of the SYN to :81", |ev| {
        ev["reason"] == "NO_SOCKET" && ev["flags"] == "S" && ev["dst"] == port81.as_str()
    });
    let syn_seq = drop["seq"].as_u64().expect("drop without seq");
    let rst = find(&trace, "packet", "R. out from :81", |ev| {
        ev["flags"] == "R." && ev["dir"] == "out" && ev["src"] == port81.as_str()
    });
    assert_eq!(
        rst["dst"], drop["src"],
        "the RST answers the dropped SYN: {rst} {drop}"
    );
    assert_eq!(rst["iface"], lab.lb_ext.as_str(), "{rst}");
    assert_eq!(
        rst["ack"].as_u64(),
        Some((syn_seq + 1) % (1 << 32)),
        "the RST acks the SYN: {rst} {drop}"
    );
    assert_eq!(trace.lost(), 0);
}

#[test]
fn icmp_error_is_reported() {
    let lab = Lab::new();
    let be1 = &BACKENDS[0];
    lab.backend(0).nft(
        "table inet lbtreject {\n\
         \x20 chain input {\n\
         \x20   type filter hook input priority 0; policy accept;\n\
         \x20   meta nfproto ipv4 tcp dport 8080 reject with icmp type port-unreachable\n\
         \x20   meta nfproto ipv6 tcp dport 8080 reject with icmpv6 type port-unreachable\n\
         \x20 }\n\
         }\n",
    );
    let mut args = Vec::new();
    for family in [Family::V4, Family::V6] {
        args.extend(endpoint_args(
            &[family.tuple(VIP.get(family), VIP_PORT)],
            &[family.tuple(be1.addr.get(family), BACKEND_PORT)],
        ));
    }
    let lbtrace = Lbtrace::start(&lab.lb, lab.dir(), &args);
    for family in [Family::V4, Family::V6] {
        let url = family.url(be1.addr.get(family), BACKEND_PORT);
        let (code, err) = crate::lab::curl(&lab.lb, &url, 2);
        assert_eq!(code, "000", "be1 rejects {url}: {err}");
    }
    thread::sleep(Duration::from_millis(300));
    let trace = lbtrace.stop();

    // (family, ICMP type/code for port unreachable)
    for (family, icmp_type, icmp_code) in [(Family::V4, 3, 3), (Family::V6, 1, 4)] {
        let be = be1.addr.get(family);
        let target = family.tuple(be, BACKEND_PORT);
        let icmp = find(
            &trace,
            "icmp",
            &format!("port unreachable from {be}"),
            |ev| {
                ev["icmp_type"] == icmp_type
                    && ev["icmp_code"] == icmp_code
                    && ev["inner_dst"] == target.as_str()
                    && ev["src"] == be
            },
        );
        assert_eq!(icmp["dst"], crate::lab::LB_INTERNAL.get(family), "{icmp}");
        assert_eq!(icmp["iface"], BRIDGE, "{icmp}");
        assert_eq!(icmp["dir"], "in", "{icmp}");
        assert_eq!(icmp["what"], "port unreachable", "{icmp}");
        check_common_fields(icmp, &lab.lb);
        // The error quotes the lb's SYN, which lbtrace saw leave.
        let syn = find(&trace, "packet", &format!("SYN to {target}"), |ev| {
            ev["flags"] == "S" && ev["dir"] == "out" && ev["dst"] == target.as_str()
        });
        assert_eq!(icmp["inner_src"], syn["src"], "{icmp} quotes {syn}");
        if !icmp["inner_seq"].is_null() {
            assert_eq!(icmp["inner_seq"], syn["seq"], "{icmp} quotes {syn}");
        }
    }
    assert_eq!(trace.lost(), 0);
}

/// The BPF links and programs a process holds, from its fds' fdinfo.
#[derive(Debug, Default)]
struct Held {
    links: BTreeSet<u64>,
    progs: BTreeSet<u64>,
}

fn held_by(pid: u32) -> Held {
    let mut held = Held::default();
    let dir = format!("/proc/{pid}/fdinfo");
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {dir}: {e}")) {
        let Ok(info) = fs::read_to_string(entry.expect("fdinfo entry").path()) else {
            continue;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let Some(link) = field("link_id:") {
            held.links.insert(link);
            held.progs.extend(field("prog_id:"));
        } else if let Some(prog) = field("prog_id:") {
            held.progs.insert(prog);
        }
    }
    held
}

/// The `id`s in `bpftool -j <object> show`.
fn bpftool_ids(object: &str) -> BTreeSet<u64> {
    let out = process::run(&["bpftool", "-j", object, "show"]);
    let list: Value = serde_json::from_str(&out).unwrap_or(Value::Array(Vec::new()));
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["id"].as_u64())
        .collect()
}

/// The interfaces of `ns` with an XDP program, and its clsact / ingress qdiscs (a legacy TC
/// attachment's remains).
fn attachments(ns: &Netns) -> Vec<String> {
    let mut found = Vec::new();
    for link in ns.links() {
        if !link["xdp"].is_null() {
            found.push(format!("XDP on {}: {}", link["ifname"], link["xdp"]));
        }
    }
    let qdiscs = ns.exec(&["tc", "-j", "qdisc", "show"]);
    let qdiscs: Value = serde_json::from_str(&qdiscs).unwrap_or(Value::Array(Vec::new()));
    for q in qdiscs.as_array().into_iter().flatten() {
        if q["kind"] == "clsact" || q["kind"] == "ingress" {
            found.push(format!("qdisc {} on {}", q["kind"], q["dev"]));
        }
    }
    found
}

#[test]
fn sigkill_leaves_nothing_attached() {
    let lab = Lab::new();
    let args = v4_args(&lab);
    for xdp in [false, true] {
        let name = if xdp { "lbtrace-xdp" } else { "lbtrace-tcx" };
        let mut run_args = args.clone();
        if xdp {
            run_args.push("--xdp".to_owned());
        }
        let lbtrace = Lbtrace::start_named(name, &lab.lb, lab.dir(), &run_args);
        let held = held_by(lbtrace.pid());
        // TC ingress + egress on two interfaces (or XDP + TC egress), and the kfree_skb hook.
        assert!(
            held.links.len() >= 3,
            "{name} holds too few links: {held:?}"
        );
        let attached = attachments(&lab.lb);
        if xdp {
            assert!(
                attached.iter().any(|a| a.starts_with("XDP on")),
                "{name}: no XDP program in the lb namespace: {attached:?}"
            );
        } else {
            assert!(attached.is_empty(), "{name}: {attached:?}");
        }
        let links_before = bpftool_ids("link");
        assert!(
            held.links.is_subset(&links_before),
            "{name}'s links {held:?} not in bpftool's {links_before:?}"
        );

        lbtrace.kill();
        let leftovers = || {
            let links: Vec<u64> = bpftool_ids("link")
                .intersection(&held.links)
                .copied()
                .collect();
            let progs: Vec<u64> = bpftool_ids("prog")
                .intersection(&held.progs)
                .copied()
                .collect();
            let attached = attachments(&lab.lb);
            (links, progs, attached)
        };
        let clean = process::poll(Duration::from_secs(2), || {
            let (links, progs, attached) = leftovers();
            (links.is_empty() && progs.is_empty() && attached.is_empty()).then_some(())
        });
        if clean.is_none() {
            let (links, progs, attached) = leftovers();
            panic!(
                "2 s after SIGKILL of {name}: links {links:?}, programs {progs:?} and \
                 attachments {attached:?} remain (it held {held:?})"
            );
        }
    }
}

/// Legacy TC filters survive SIGKILL (unlike bpf_links): `lbtrace cleanup` removes them, and so
/// does the next lbtrace at its start; neither leaves a clsact qdisc lbtrace created.
#[test]
fn legacy_tc_sigkill_then_cleanup_or_next_start_leaves_nothing() {
    let lab = Lab::new();
    let args = v4_args(&lab);
    let env = legacy_env(&lab);
    let env: Vec<&str> = env.iter().map(String::as_str).collect();
    for next in ["cleanup", "next start"] {
        let lbtrace = Lbtrace::start_env("lbtrace-killed", &lab.lb, lab.dir(), &env, &args);
        let filters = lbtrace_filters(&lab.lb);
        assert_eq!(filters.len(), 4, "before SIGKILL: {filters:?}");
        lbtrace.kill();
        // What a netlink filter does: it stays. The test is not vacuous.
        assert_eq!(
            lbtrace_filters(&lab.lb),
            filters,
            "the filters went away by themselves"
        );
        assert_eq!(records(&lab).len(), 1, "the killed lbtrace's record");
        let run = |cmd: &str| {
            let mut argv: Vec<String> = vec!["env".into()];
            argv.extend(env.iter().map(|e| (*e).to_owned()));
            argv.push(crate::runner::lbtrace_bin().to_string_lossy().into_owned());
            argv.push(cmd.into());
            lab.lb.exec(&argv)
        };
        let doctor = run("doctor");
        assert!(
            doctor.contains("warn  leftovers") && doctor.contains("4 filter(s) of pid"),
            "doctor does not report the killed lbtrace's filters:\n{doctor}"
        );
        if next == "cleanup" {
            let out = run("cleanup");
            for f in ["ingress", "egress"] {
                assert!(
                    out.contains(&format!("removed the tc {f} filter of pid")),
                    "lbtrace cleanup said:\n{out}"
                );
            }
            assert!(
                out.contains("removed the clsact qdisc of"),
                "lbtrace cleanup said:\n{out}"
            );
        } else {
            let lbtrace = Lbtrace::start_env("lbtrace-next", &lab.lb, lab.dir(), &env, &args);
            assert!(
                lbtrace
                    .stderr()
                    .contains("removed a stale lbtrace attachment"),
                "the next lbtrace did not say it removed the stale filters:\n{}",
                lbtrace.stderr()
            );
            // Only its own four filters now.
            assert_eq!(lbtrace_filters(&lab.lb).len(), 4);
            lbtrace.stop();
        }
        assert_eq!(
            (
                lbtrace_filters(&lab.lb),
                attachments(&lab.lb),
                records(&lab)
            ),
            (vec![], vec![], vec![]),
            "left after the killed lbtrace and {next}"
        );
    }
}

/// The client's SYN inside a tunnel (how IPVS tunnel mode and Katran-style LBs forward to their
/// backends, and how an L4 tier in front hands it on): IPIP and GRE frames with a SYN to the VIP
/// inside, written onto the router's link to the lb with a packet socket (this kernel has no
/// tunnel devices to make them), are reported as packets of the inner tuple with the outer
/// header's kind and addresses.
#[test]
fn tunnelled_syns_are_reported() {
    let lab = Lab::new();
    let lbtrace = Lbtrace::start(&lab.lb, lab.dir(), &v4_args(&lab));
    let mac = lab
        .lb
        .exec(&["cat", &format!("/sys/class/net/{}/address", lab.lb_ext)]);
    let router_if = format!("{}rl", lab.prefix);
    let code = format!(
        "import socket, struct\n\
         def csum(b):\n\
         \x20   s = sum(struct.unpack('!10H', b))\n\
         \x20   s = (s >> 16) + (s & 0xffff); s += s >> 16\n\
         \x20   return (~s) & 0xffff\n\
         def ip4(src, dst, proto, payload):\n\
         \x20   h = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(payload), 1, 0x4000, 64, proto, 0,\n\
         \x20                   socket.inet_aton(src), socket.inet_aton(dst))\n\
         \x20   return h[:10] + struct.pack('!H', csum(h)) + h[12:] + payload\n\
         def syn(sport, seq):\n\
         \x20   tcp = struct.pack('!HHIIBBHHH', sport, {VIP_PORT}, seq, 0, 5 << 4, 0x02, 64240, 0, 0)\n\
         \x20   return ip4('10.10.1.2', '{vip}', 6, tcp)\n\
         mac = bytes.fromhex('{mac}'.replace(':', ''))\n\
         s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n\
         s.bind(('{router_if}', 0))\n\
         eth = mac + s.getsockname()[4] + b'\\x08\\x00'\n\
         s.send(eth + ip4('{outer_src}', '{outer_dst}', 4, syn(40123, 1111)))\n\
         s.send(eth + ip4('{outer_src}', '{outer_dst}', 47, b'\\x00\\x00\\x08\\x00' + syn(40124, 2222)))\n\
         print('sent', flush=True)\n",
        vip = VIP.v4,
        mac = mac.trim(),
        outer_src = crate::lab::ROUTER_LB_SIDE.v4,
        outer_dst = crate::lab::LB_EXTERNAL.v4,
    );
    let out = lab.router.output(&["python3", "-c", &code]);
    assert!(
        out.status.success(),
        "sending the tunnelled frames: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    thread::sleep(Duration::from_millis(300));
    let trace = lbtrace.stop();
    let vip = Family::V4.tuple(VIP.v4, VIP_PORT);
    for (kind, sport, seq) in [("ipip", 40123, 1111), ("gre", 40124, 2222)] {
        let ev = find(&trace, "packet", &format!("inside {kind}"), |ev| {
            ev["tunnel"]["kind"] == kind
        });
        assert_eq!(ev["src"], format!("10.10.1.2:{sport}"), "{ev}");
        assert_eq!(ev["dst"], vip.as_str(), "{ev}");
        assert_eq!(
            (&ev["flags"], &ev["seq"]),
            (&Value::from("S"), &Value::from(seq)),
            "{ev}"
        );
        assert_eq!(ev["tunnel"]["src"], crate::lab::ROUTER_LB_SIDE.v4, "{ev}");
        assert_eq!(ev["tunnel"]["dst"], crate::lab::LB_EXTERNAL.v4, "{ev}");
        assert_eq!(
            (&ev["dir"], &ev["iface"]),
            (&Value::from("in"), &Value::from(lab.lb_ext.as_str())),
            "{ev}"
        );
        check_common_fields(ev, &lab.lb);
    }
    assert_eq!(trace.lost(), 0);
}
