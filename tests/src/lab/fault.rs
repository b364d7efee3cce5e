//! Faults injected into the lab, one per `Lab::fault_*` method. Each applies its fault and returns
//! a [`Fault`] guard that removes it on drop (also while unwinding from a failed assertion: the
//! undo steps never panic then, and a stopped server is not restarted since the lab is going
//! away).
//!
//! | method | what | what the kernel does |
//! |---|---|---|
//! | [`Lab::fault_upstream_drop`] | the router drops SYNs to the VIPs (forward chain) | no SYN reaches the lb |
//! | [`Lab::fault_lb_firewall`] | the lb's own nftables drops the VIPs' traffic (input, or prerouting before DNAT) | `NETFILTER_DROP` on the lb |
//! | [`Lab::fault_backend_refused`] | a backend's HTTP server is stopped | its kernel answers SYNs with RST |
//! | [`Lab::fault_backend_filtered`] | a backend's nftables drops tcp dport 8080 | SYNs leave the lb, nothing returns |
//! | [`Lab::fault_backend_host_down`] | the lb's bridge port to a backend is down (the cable is out) | ARP/ND fails: `NEIGH_FAILED` |
//! | [`Lab::fault_no_route`] | `throw` routes for the backends' subnet on the lb | `connect` fails with ENETUNREACH |
//! | [`Lab::fault_all_backends_down`] | every backend's HTTP server is stopped | RST from every backend |
//! | [`Lab::fault_backends_bypass_lb`] | the backends' default route goes through a second link to the router | replies to clients skip the lb |
//! | [`Lab::fault_replies_dropped`] | the router drops packets from the VIPs to the client | the lb's SYN-ACKs never arrive |
//! | [`Lab::fault_backend_answers`] | a backend's HTTP server answers with another status, or late | nothing: TCP is fine, HTTP is not |
//! | [`Lab::fault_path_mtu_black_hole`] | the router's link to the client has MTU 1280 and the router drops ICMP fragmentation-needed / packet-too-big | the lb's full-size segments to the client die, unreported: it retransmits them |

use std::{process::Command, time::Duration};

use super::{
    BACKENDS, BRIDGE, CLIENT, LB_INTERNAL, Lab, Netns, TLS_PORT, VIP, VIP_PORT, addr, veth,
};

/// One way back from a fault.
#[derive(Debug)]
enum Undo {
    /// A command (full argv); a failure is a warning.
    Cmd(Vec<String>),
    /// Start backend `i`'s HTTP server again.
    StartServer(usize),
    /// Put backend `i`'s usual HTTP server back in place of a faulty one.
    RestoreServer(usize),
}

/// An applied fault; dropping it removes the fault (undo steps in reverse order).
#[derive(Debug)]
pub struct Fault<'a> {
    lab: &'a Lab,
    what: String,
    undo: Vec<Undo>,
    /// Processes the fault runs; stopped after the undo steps.
    procs: Vec<super::Proc>,
}

impl<'a> Fault<'a> {
    fn new(lab: &'a Lab, what: String) -> Fault<'a> {
        Fault {
            lab,
            what,
            undo: Vec::new(),
            procs: Vec::new(),
        }
    }

    /// Runs `argv` in `ns` (asserting success) and remembers `undo` (argv in `ns`).
    fn apply(&mut self, ns: &Netns, argv: &[&str], undo: &[&str]) {
        ns.exec(argv);
        self.on_drop(ns, undo);
    }

    fn on_drop(&mut self, ns: &Netns, undo: &[&str]) {
        self.undo.push(Undo::Cmd(ns.argv(undo)));
    }

    /// Loads `ruleset` (which creates `table inet <table>`) in `ns`; drop deletes the table.
    fn nft_table(&mut self, ns: &Netns, table: &str, ruleset: &str) {
        ns.nft(ruleset);
        self.on_drop(ns, &["nft", "delete", "table", "inet", table]);
    }

    /// The fault in words.
    pub fn what(&self) -> &str {
        &self.what
    }
}

impl Drop for Fault<'_> {
    fn drop(&mut self) {
        let unwinding = std::thread::panicking();
        for undo in self.undo.drain(..).rev() {
            match undo {
                Undo::Cmd(argv) => {
                    let out = Command::new(&argv[0]).args(&argv[1..]).output();
                    match out {
                        Ok(out) if out.status.success() => {}
                        Ok(out) => eprintln!(
                            "warning: undoing fault `{}`: `{}` failed: {}",
                            self.what,
                            argv.join(" "),
                            String::from_utf8_lossy(&out.stderr).trim()
                        ),
                        Err(err) => eprintln!(
                            "warning: undoing fault `{}`: cannot run `{}`: {err}",
                            self.what,
                            argv.join(" ")
                        ),
                    }
                }
                // The lab is being torn down: nothing would use the server.
                Undo::StartServer(_) | Undo::RestoreServer(_) if unwinding => {}
                Undo::StartServer(i) => self.lab.start_backend_server(i),
                Undo::RestoreServer(i) => self.lab.answer_backend_server(i, super::Answer::OK),
            }
        }
    }
}

/// Where the lb's own firewall drops the VIPs' traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirewallHook {
    /// The input chain: traffic to a local socket (a proxy such as HAProxy).
    Input,
    /// A prerouting filter chain at priority `mangle`, before the DNAT (priority `dstnat`) of a
    /// Layer 4 load balancer rewrites the destination: the packets still carry the VIP.
    Prerouting,
}

/// nft matches for the VIPs' service ports (HTTP and TLS) on both families.
fn vip_match(rest: &str) -> String {
    format!(
        "    ip daddr {} tcp dport {{ {VIP_PORT}, {TLS_PORT} }} {rest}\n    \
         ip6 daddr {} tcp dport {{ {VIP_PORT}, {TLS_PORT} }} {rest}\n",
        VIP.v4, VIP.v6
    )
}

/// The second link of each backend, for [`Lab::fault_backends_bypass_lb`]: a bridge in the
/// router with these addresses, backend `i` at `.1{i+1}` / `::1{i+1}`.
pub const BYPASS_BRIDGE: &str = "brbypass";
pub const BYPASS_ROUTER: super::Addr = super::Addr {
    v4: "10.10.5.1",
    v6: "fd00:10:5::1",
};

impl Lab {
    /// The router drops SYNs to the VIPs (ports 80 and 443, both families) in its forward chain:
    /// the problem is upstream of the lb, no SYN arrives there.
    /// Three idle connections from the client to the IPv4 VIP, sending nothing: behind
    /// [`super::HaProxy::start_tiny`] one fills HAProxy's maxconn and two its accept queue, so
    /// the kernel drops every further SYN (ListenOverflows) without a drop reason.
    pub fn fault_accept_queue_full(&self) -> Fault<'_> {
        let mut f = Fault::new(
            self,
            "three idle clients hold HAProxy (maxconn 1) and its accept queue (backlog 1)"
                .to_owned(),
        );
        let code = format!(
            "import socket, time\n\
             socks = []\n\
             for _ in range(3):\n\
             \x20   socks.append(socket.create_connection(('{}', {VIP_PORT}), timeout=5))\n\
             \x20   time.sleep(0.2)\n\
             print('holding', flush=True)\n\
             time.sleep(120)\n",
            VIP.v4
        );
        let mut p = self
            .client
            .spawn("holders", self.dir(), &["/usr/bin/python3", "-c", &code]);
        p.wait_until("holding 3 connections", Duration::from_secs(15), |p| {
            p.stdout().contains("holding")
        });
        f.procs.push(p);
        f
    }

    pub fn fault_upstream_drop(&self) -> Fault<'_> {
        let mut f = Fault::new(self, "the router drops SYNs to the VIP".to_owned());
        let table = "lbtrace_fault_upstream";
        f.nft_table(
            &self.router,
            table,
            &format!(
                "table inet {table} {{\n  chain forward {{\n    \
                 type filter hook forward priority filter; policy accept;\n{}  }}\n}}\n",
                vip_match("tcp flags & (syn | ack) == syn drop")
            ),
        );
        f
    }

    /// The lb host's own firewall drops the VIPs' traffic arriving from outside (not the lb's own
    /// connections to its VIP over `lo`), at `hook`.
    pub fn fault_lb_firewall(&self, hook: FirewallHook) -> Fault<'_> {
        let (chain, hook_s, prio) = match hook {
            FirewallHook::Input => ("input", "input", "filter"),
            FirewallHook::Prerouting => ("prerouting", "prerouting", "mangle"),
        };
        let mut f = Fault::new(
            self,
            format!("the lb's own firewall drops the VIP's traffic ({chain} chain)"),
        );
        let table = "lbtrace_fault_lbfw";
        f.nft_table(
            &self.lb,
            table,
            &format!(
                "table inet {table} {{\n  chain {chain} {{\n    \
                 type filter hook {hook_s} priority {prio}; policy accept;\n{}  }}\n}}\n",
                vip_match("iifname != \"lo\" drop")
            ),
        );
        f
    }

    /// Backend `i`'s HTTP server is stopped: its kernel refuses connections (RST).
    pub fn fault_backend_refused(&self, i: usize) -> Fault<'_> {
        let mut f = Fault::new(
            self,
            format!("{}'s HTTP server is stopped (refused)", BACKENDS[i].name),
        );
        self.stop_backend_server(i);
        f.undo.push(Undo::StartServer(i));
        f
    }

    /// Backend `i`'s own firewall drops everything to tcp port 8080: SYNs time out.
    pub fn fault_backend_filtered(&self, i: usize) -> Fault<'_> {
        let mut f = Fault::new(
            self,
            format!("{}'s firewall drops tcp port 8080", BACKENDS[i].name),
        );
        let table = "lbtrace_fault_filter";
        f.nft_table(
            &self.backends[i],
            table,
            &format!(
                "table inet {table} {{\n  chain input {{\n    \
                 type filter hook input priority filter; policy accept;\n    \
                 tcp dport {} drop\n  }}\n}}\n",
                super::BACKEND_PORT
            ),
        );
        f
    }

    /// Backend `i` is unplugged: the lb's bridge port towards it is down and the lb forgets its
    /// neighbour entries, so the lb's ARP / ND for it fails (`NEIGH_FAILED`).
    pub fn fault_backend_host_down(&self, i: usize) -> Fault<'_> {
        let be = &BACKENDS[i];
        let mut f = Fault::new(self, format!("{} is down (no ARP answer)", be.name));
        let port = self.bridge_port(i).to_owned();
        f.apply(
            &self.lb,
            &["ip", "link", "set", &port, "down"],
            &["ip", "link", "set", &port, "up"],
        );
        for (flag, a) in [("-4", be.addr.v4), ("-6", be.addr.v6)] {
            self.lb
                .exec(&["ip", flag, "neigh", "flush", "to", a, "dev", BRIDGE]);
        }
        f
    }

    /// The lb has no route to the backends: `throw` routes for both halves of the backends'
    /// subnet (more specific than the bridge's connected route) end the lookup with "no route",
    /// so the lb's connections to them fail at once with ENETUNREACH (the default route towards
    /// the router is not used: a throw route stops the lookup in the main table).
    pub fn fault_no_route(&self) -> Fault<'_> {
        let mut f = Fault::new(self, "the lb has no route to the backends".to_owned());
        for (flag, prefix) in [
            ("-4", "10.10.3.0/25"),
            ("-4", "10.10.3.128/25"),
            ("-6", "fd00:10:3::/65"),
            ("-6", "fd00:10:3:0:8000::/65"),
        ] {
            f.apply(
                &self.lb,
                &["ip", flag, "route", "add", "throw", prefix],
                &["ip", flag, "route", "del", "throw", prefix],
            );
        }
        f
    }

    /// Backend `i`'s HTTP server answers `GET /` with `answer` (a 500, or a 200 after a delay):
    /// it connects, and serves errors or late.
    pub fn fault_backend_answers(&self, i: usize, answer: super::Answer) -> Fault<'_> {
        let mut f = Fault::new(
            self,
            format!(
                "{}'s HTTP server answers {} after {:?}",
                BACKENDS[i].name, answer.status, answer.delay
            ),
        );
        self.answer_backend_server(i, answer);
        f.undo.push(Undo::RestoreServer(i));
        f
    }

    /// Every backend's HTTP server is stopped.
    pub fn fault_all_backends_down(&self) -> Fault<'_> {
        let mut f = Fault::new(self, "every backend's HTTP server is stopped".to_owned());
        for i in 0..BACKENDS.len() {
            self.stop_backend_server(i);
            f.undo.push(Undo::StartServer(i));
        }
        f
    }

    /// The backends route around the lb: each gets a second link, to a bridge in the router
    /// ([`BYPASS_BRIDGE`], 10.10.5.0/24 and fd00:10:5::/64), and its default route through it.
    /// Their own subnet stays connected, so they still answer the lb's own connections through
    /// the lb; replies to clients (Layer 4 without SNAT: the client's address) go straight to the
    /// router and on to the client, which resets them (no socket of its own matches).
    pub fn fault_backends_bypass_lb(&self) -> Fault<'_> {
        let mut f = Fault::new(
            self,
            "the backends' default route skips the lb (a second link to the router)".to_owned(),
        );
        let r = &self.router;
        f.apply(
            r,
            &["ip", "link", "add", BYPASS_BRIDGE, "type", "bridge"],
            &["ip", "link", "del", BYPASS_BRIDGE],
        );
        r.exec(&["ip", "link", "set", BYPASS_BRIDGE, "up"]);
        addr(r, BYPASS_BRIDGE, BYPASS_ROUTER, 24);
        // Replies from the backends' subnet arrive on the bypass, not from the lb.
        r.sysctl("net.ipv4.conf.all.rp_filter", "0");
        r.sysctl(&format!("net.ipv4.conf.{BYPASS_BRIDGE}.rp_filter"), "0");
        for (i, be_ns) in self.backends.iter().enumerate() {
            let (be_if, router_if) = (
                format!("{}y{}", self.prefix, i + 1),
                format!("{}z{}", self.prefix, i + 1),
            );
            veth(be_ns, &be_if, r, &router_if);
            f.on_drop(be_ns, &["ip", "link", "del", &be_if]);
            r.exec(&["ip", "link", "set", &router_if, "master", BYPASS_BRIDGE]);
            let n = i + 11;
            let v4 = format!("10.10.5.{n}/24");
            let v6 = format!("fd00:10:5::{n}/64");
            be_ns.exec(&["ip", "addr", "add", &v4, "dev", &be_if]);
            be_ns.exec(&["ip", "-6", "addr", "add", &v6, "dev", &be_if, "nodad"]);
            f.apply(
                be_ns,
                &["ip", "route", "replace", "default", "via", BYPASS_ROUTER.v4],
                &["ip", "route", "replace", "default", "via", LB_INTERNAL.v4],
            );
            f.apply(
                be_ns,
                &[
                    "ip",
                    "-6",
                    "route",
                    "replace",
                    "default",
                    "via",
                    BYPASS_ROUTER.v6,
                ],
                &[
                    "ip",
                    "-6",
                    "route",
                    "replace",
                    "default",
                    "via",
                    LB_INTERNAL.v6,
                ],
            );
        }
        f
    }

    /// The router drops every packet from the VIPs to the client (forward chain): the lb's
    /// SYN-ACKs never reach it, and it keeps retransmitting its SYN.
    pub fn fault_replies_dropped(&self) -> Fault<'_> {
        let mut f = Fault::new(
            self,
            "the router drops the lb's packets to the client".to_owned(),
        );
        let table = "lbtrace_fault_replies";
        f.nft_table(
            &self.router,
            table,
            &format!(
                "table inet {table} {{\n  chain forward {{\n    \
                 type filter hook forward priority filter; policy accept;\n    \
                 ip saddr {} ip daddr {} drop\n    ip6 saddr {} ip6 daddr {} drop\n  }}\n}}\n",
                VIP.v4, CLIENT.v4, VIP.v6, CLIENT.v6
            ),
        );
        f
    }

    /// A path-MTU black hole between the lb and the client: the router's interface toward the
    /// client gets MTU [`PATH_MTU`] (the client's own stays 1500, so its SYNs advertise MSS
    /// 1460), and the router drops the ICMP fragmentation-needed (and ICMPv6 packet-too-big) it
    /// would send about the larger packets it cannot forward. Handshakes and small replies pass;
    /// full-size segments to the client vanish.
    pub fn fault_path_mtu_black_hole(&self) -> Fault<'_> {
        let mut f = Fault::new(
            self,
            format!(
                "the router's link to the client has MTU {PATH_MTU} and the router drops ICMP fragmentation-needed"
            ),
        );
        let table = "lbtrace_fault_pmtu";
        f.nft_table(
            &self.router,
            table,
            &format!(
                "table inet {table} {{\n  chain out {{\n    \
                 type filter hook output priority filter; policy accept;\n    \
                 icmp type destination-unreachable icmp code frag-needed drop\n    \
                 icmpv6 type packet-too-big drop\n  }}\n  chain forward {{\n    \
                 type filter hook forward priority filter; policy accept;\n    \
                 icmp type destination-unreachable icmp code frag-needed drop\n    \
                 icmpv6 type packet-too-big drop\n  }}\n}}\n"
            ),
        );
        let rc = format!("{}rc", self.prefix);
        let mtu = PATH_MTU.to_string();
        f.apply(
            &self.router,
            &["ip", "link", "set", "dev", &rc, "mtu", &mtu],
            &["ip", "link", "set", "dev", &rc, "mtu", "1500"],
        );
        f
    }
}

/// The MTU of the router's link toward the client in [`Lab::fault_path_mtu_black_hole`] (the
/// IPv6 minimum, so IPv6 still works).
pub const PATH_MTU: u32 = 1280;
