//! Load balancers on the lab's lb namespace. Each is a guard that undoes itself on drop.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use super::{BACKEND_PORT, Backend, Family, Netns, Proc, TLS_PORT, VIP, VIP_PORT, process};

/// Waits until `proc` listens on both VIPs' `port` in `ns`; panics with its output if it exits
/// first. By `ss`, not a probe connection: waiting must not put packets on the wire.
fn wait_for_vips(ns: &Netns, proc: &mut Proc, port: u16) {
    let listens = [
        Family::V4.tuple(VIP.v4, port),
        Family::V6.tuple(VIP.v6, port),
    ];
    proc.wait_until("listening on the VIPs", Duration::from_secs(10), |_| {
        listens.iter().all(|a| ns.listening_on(a))
    });
}

/// What HAProxy does on the VIP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HaProxyMode {
    /// `mode http` on VIP:80.
    Http,
    /// `mode tcp` on VIP:80: a Layer 7 proxy (it completes the client's handshake and opens its
    /// own backend connection) that relays bytes without parsing HTTP.
    Tcp,
    /// `mode http` terminating TLS on VIP:443 with the certificate and key in `pem`; the backends
    /// are plain HTTP.
    Tls { pem: PathBuf },
}

impl HaProxyMode {
    /// The port the frontends listen on.
    pub fn port(&self) -> u16 {
        match self {
            HaProxyMode::Http | HaProxyMode::Tcp => VIP_PORT,
            HaProxyMode::Tls { .. } => TLS_PORT,
        }
    }
}

/// HAProxy on the lb: `haproxy -db -f <cfg>`, a frontend on the VIP for each family, each
/// balancing round-robin over the backends of its own family on port 8080 (see [`HaProxyMode`]).
/// No health checks and no connection reuse, so the only TCP connections are the tests' own.
/// `timeout connect 2s`. HAProxy retries a failed backend connection on the same server after
/// min(`timeout connect`, 1 s): with its default `retries 3` a client waits 3 s for the 503 of a
/// refused backend, with `retries 1` ([`HaProxy::start_mode`]) 1 s.
#[derive(Debug)]
pub struct HaProxy {
    proc: Proc,
}

impl HaProxy {
    /// The configuration of HAProxy in HTTP mode on VIP:80 (HAProxy's default retries).
    pub fn config(backends: &[Backend]) -> String {
        HaProxy::config_mode(backends, &HaProxyMode::Http, None)
    }

    /// The configuration for `mode`; `retries` sets `retries` (else HAProxy's default, 3).
    pub fn config_mode(backends: &[Backend], mode: &HaProxyMode, retries: Option<u32>) -> String {
        let mut cfg = String::from("global\n    maxconn 256\n\n");
        cfg += match mode {
            HaProxyMode::Http | HaProxyMode::Tls { .. } => {
                "defaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n\
                 \x20   timeout server 10s\n    http-reuse never\n    option httpclose\n"
            }
            HaProxyMode::Tcp => {
                "defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 10s\n\
                 \x20   timeout server 10s\n"
            }
        };
        if let Some(n) = retries {
            cfg += &format!("    retries {n}\n");
        }
        cfg += "\n";
        let tls = match mode {
            HaProxyMode::Tls { pem } => format!(" ssl crt {}", pem.display()),
            _ => String::new(),
        };
        for (family, tag) in [(Family::V4, "v4"), (Family::V6, "v6")] {
            cfg += &format!(
                "frontend fe_{tag}\n    bind {}{tls}\n    default_backend be_{tag}\n\n\
                 backend be_{tag}\n    balance roundrobin\n",
                family.tuple(VIP.get(family), mode.port())
            );
            for be in backends {
                cfg += &format!(
                    "    server {} {}\n",
                    be.name,
                    family.tuple(be.addr.get(family), BACKEND_PORT)
                );
            }
            cfg += "\n";
        }
        cfg
    }

    /// Starts HAProxy in HTTP mode (default retries) in `ns` and waits until it listens on both
    /// VIPs.
    pub fn start(ns: &Netns, dir: &Path, backends: &[Backend]) -> HaProxy {
        HaProxy::start_cfg(ns, dir, &HaProxy::config(backends), VIP_PORT)
    }

    /// Starts HAProxy in `mode` with `retries 1` (a refused backend gets the client a 503 within
    /// about 1 s) in `ns` and waits until it listens on both VIPs.
    pub fn start_mode(ns: &Netns, dir: &Path, backends: &[Backend], mode: &HaProxyMode) -> HaProxy {
        let cfg = HaProxy::config_mode(backends, mode, Some(1));
        HaProxy::start_cfg(ns, dir, &cfg, mode.port())
    }

    /// Starts HAProxy in HTTP mode with `maxconn 1` and `backlog 1` on its frontends: one
    /// connection in HAProxy and two in the kernel's accept queue fill it.
    pub fn start_tiny(ns: &Netns, dir: &Path, backends: &[Backend]) -> HaProxy {
        let cfg = HaProxy::config_mode(backends, &HaProxyMode::Http, Some(1))
            .replacen("maxconn 256", "maxconn 1", 1)
            .replace(
                "\n    default_backend",
                "\n    backlog 1\n    default_backend",
            )
            .replace("timeout client 10s", "timeout client 60s");
        HaProxy::start_cfg(ns, dir, &cfg, VIP_PORT)
    }

    /// Starts HAProxy in HTTP mode with `retries 1` and `timeout server` set to `timeout`: a
    /// backend slower than that gets the client a 504.
    pub fn start_server_timeout(
        ns: &Netns,
        dir: &Path,
        backends: &[Backend],
        timeout: Duration,
    ) -> HaProxy {
        let cfg = HaProxy::config_mode(backends, &HaProxyMode::Http, Some(1)).replace(
            "timeout server 10s",
            &format!("timeout server {}ms", timeout.as_millis()),
        );
        HaProxy::start_cfg(ns, dir, &cfg, VIP_PORT)
    }

    fn start_cfg(ns: &Netns, dir: &Path, cfg: &str, port: u16) -> HaProxy {
        let cfg_path = dir.join("haproxy.cfg");
        fs::write(&cfg_path, cfg).expect("writing haproxy.cfg");
        let cfg = cfg_path.to_string_lossy();
        let mut proc = ns.spawn("haproxy", dir, &["haproxy", "-db", "-f", &cfg]);
        wait_for_vips(ns, &mut proc, port);
        HaProxy { proc }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }
}

/// nginx on the lb as a reverse proxy: a server on each VIP (port 80) whose `location /`
/// passes requests (`proxy_pass`) to an upstream of the backends of its own family (port 8080,
/// round-robin, nginx's default `proxy_next_upstream error timeout`: a refused backend is skipped,
/// a 500 is passed on to the client). One process (`master_process off`, no workers to outlive
/// it), in the foreground, with its configuration, pid file, logs and temporary files in the
/// lab's directory. `proxy_connect_timeout 2s`, `proxy_read_timeout 10s`, like HAProxy's.
#[derive(Debug)]
pub struct Nginx {
    proc: Proc,
}

impl Nginx {
    /// The configuration, with every path under `dir`.
    pub fn config(backends: &[Backend], dir: &Path) -> String {
        let d = dir.display();
        let mut cfg = format!(
            "daemon off;\nmaster_process off;\nuser root;\npid {d}/nginx.pid;\n\
             error_log {d}/nginx-error.log warn;\nevents {{\n    worker_connections 256;\n}}\n\
             http {{\n    access_log {d}/nginx-access.log;\n\
             \x20   client_body_temp_path {d}/nginx-body;\n    proxy_temp_path {d}/nginx-proxy;\n\
             \x20   fastcgi_temp_path {d}/nginx-fastcgi;\n    uwsgi_temp_path {d}/nginx-uwsgi;\n\
             \x20   scgi_temp_path {d}/nginx-scgi;\n\
             \x20   proxy_connect_timeout 2s;\n    proxy_read_timeout 10s;\n"
        );
        for (family, tag) in [(Family::V4, "v4"), (Family::V6, "v6")] {
            cfg += &format!("    upstream be_{tag} {{\n");
            for be in backends {
                cfg += &format!(
                    "        server {};\n",
                    family.tuple(be.addr.get(family), BACKEND_PORT)
                );
            }
            cfg += &format!(
                "    }}\n    server {{\n        listen {};\n        \
                 location / {{\n            proxy_pass http://be_{tag};\n        }}\n    }}\n",
                family.tuple(VIP.get(family), VIP_PORT)
            );
        }
        cfg + "}\n"
    }

    /// Starts nginx in `ns` and waits until it listens on both VIPs.
    pub fn start(ns: &Netns, dir: &Path, backends: &[Backend]) -> Nginx {
        let cfg_path = dir.join("nginx.conf");
        fs::write(&cfg_path, Nginx::config(backends, dir)).expect("writing nginx.conf");
        let (cfg, prefix) = (cfg_path.to_string_lossy(), dir.to_string_lossy());
        let mut proc = ns.spawn("nginx", dir, &["nginx", "-p", &prefix, "-c", &cfg]);
        wait_for_vips(ns, &mut proc, VIP_PORT);
        Nginx { proc }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }
}

/// The nftables DNAT (L4) load balancer: table `inet lbtrace_lb` whose prerouting nat chain
/// spreads VIP:80 over the backends' port 8080 (`numgen inc`), for IPv4 and IPv6. No SNAT: the
/// backends answer through the lb (their default route), whose conntrack undoes the DNAT.
/// [`NftDnat::load_snat`] adds SNAT (masquerade to the lb's internal address) towards the
/// backends. Drop deletes the table.
#[derive(Debug)]
pub struct NftDnat<'a> {
    ns: &'a Netns,
}

impl<'a> NftDnat<'a> {
    pub const TABLE: &'static str = "lbtrace_lb";

    pub fn ruleset(backends: &[Backend]) -> String {
        NftDnat::ruleset_with(backends, false)
    }

    /// The ruleset; with `snat`, a postrouting chain masquerades the DNATed connections to the
    /// lb's internal address (the backends see the lb, not the client).
    pub fn ruleset_with(backends: &[Backend], snat: bool) -> String {
        let map = |family: Family| {
            backends
                .iter()
                .enumerate()
                .map(|(i, b)| format!("{i} : {}", b.addr.get(family)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let n = backends.len();
        format!(
            "table inet {table} {{\n\
             \x20 chain prerouting {{\n\
             \x20   type nat hook prerouting priority dstnat; policy accept;\n\
             \x20   ip daddr {vip4} tcp dport {VIP_PORT} dnat ip to numgen inc mod {n} map {{ {m4} }} : {BACKEND_PORT}\n\
             \x20   ip6 daddr {vip6} tcp dport {VIP_PORT} dnat ip6 to numgen inc mod {n} map {{ {m6} }} : {BACKEND_PORT}\n\
             \x20 }}\n\
             {snat}\
             }}\n",
            snat = if snat { Self::SNAT_CHAIN } else { "" },
            table = Self::TABLE,
            vip4 = VIP.v4,
            vip6 = VIP.v6,
            m4 = map(Family::V4),
            m6 = map(Family::V6),
        )
    }

    /// SNAT for the DNATed connections (`ct status dnat`) leaving through the bridge.
    const SNAT_CHAIN: &'static str = "  chain postrouting {\n    \
        type nat hook postrouting priority srcnat; policy accept;\n    \
        oifname \"br0\" ct status dnat masquerade\n  }\n";

    pub fn load(ns: &'a Netns, backends: &[Backend]) -> NftDnat<'a> {
        ns.nft(&NftDnat::ruleset(backends));
        NftDnat { ns }
    }

    /// DNAT with SNAT: see [`NftDnat::ruleset_with`]. The backends see connections from
    /// [`super::LB_INTERNAL`].
    pub fn load_snat(ns: &'a Netns, backends: &[Backend]) -> NftDnat<'a> {
        ns.nft(&NftDnat::ruleset_with(backends, true));
        NftDnat { ns }
    }

    /// DNAT with SNAT whose masquerade takes its ports from `lo`-`hi` only (`masquerade to
    /// :lo-hi`): the NAT ports from the lb's internal address toward each backend are that range.
    pub fn load_snat_ports(
        ns: &'a Netns,
        backends: &[Backend],
        (lo, hi): (u16, u16),
    ) -> NftDnat<'a> {
        let ruleset = NftDnat::ruleset_with(backends, true).replace(
            "ct status dnat masquerade\n",
            &format!("ct status dnat meta l4proto tcp masquerade to :{lo}-{hi}\n"),
        );
        ns.nft(&ruleset);
        NftDnat { ns }
    }
}

/// iptables-nft's nat table (iptables rules that the kernel keeps as nftables rules with
/// xtables targets): VIP:80 DNATed to one backend, the client subnet's connections masqueraded
/// out of the bridge to ports `lo`-`hi` only. Flushed and its table deleted on drop.
pub struct IptablesNat<'a> {
    ns: &'a Netns,
}

impl<'a> IptablesNat<'a> {
    pub fn load_snat_ports(
        ns: &'a Netns,
        vip: &str,
        backend: &str,
        (lo, hi): (u16, u16),
    ) -> IptablesNat<'a> {
        let ports = format!("{lo}-{hi}");
        let rules: [&[&str]; 2] = [
            &[
                "-A",
                "PREROUTING",
                "-d",
                vip,
                "-p",
                "tcp",
                "--dport",
                "80",
                "-j",
                "DNAT",
                "--to-destination",
                backend,
            ],
            &[
                "-A",
                "POSTROUTING",
                "-s",
                "10.10.1.0/24",
                "-o",
                super::BRIDGE,
                "-p",
                "tcp",
                "-j",
                "MASQUERADE",
                "--to-ports",
                &ports,
            ],
        ];
        let guard = IptablesNat { ns };
        for rule in rules {
            let mut argv = vec!["iptables-nft", "-t", "nat"];
            argv.extend_from_slice(rule);
            let out = ns.output(&argv);
            assert!(
                out.status.success(),
                "{argv:?} in {} failed: {}",
                ns.name(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        guard
    }
}

impl Drop for IptablesNat<'_> {
    fn drop(&mut self) {
        for argv in [
            &["iptables-nft", "-t", "nat", "-F"][..],
            &["nft", "delete", "table", "ip", "nat"][..],
        ] {
            let out = self.ns.output(argv);
            if !out.status.success() {
                eprintln!(
                    "warning: {argv:?} in {}: {}",
                    self.ns.name(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

impl Drop for NftDnat<'_> {
    fn drop(&mut self) {
        let out = process::output(
            &self
                .ns
                .argv(&["nft", "delete", "table", "inet", Self::TABLE]),
        );
        if !out.status.success() {
            eprintln!(
                "warning: deleting nft table {} in {}: {}",
                Self::TABLE,
                self.ns.name(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
}

/// A Layer 4 LB without NAT: the lb does not hold the VIP but routes it to the backends (an ECMP
/// route over the three, hashed on the ports), and each backend holds the VIP itself (on lo, not
/// answering ARP for it) and serves it (an nft redirect of VIP:80 to its server on :8080), as
/// ECMP tiers and IPVS direct routing do. The backends' replies come from the VIP. IPv4.
/// Undone on drop.
#[derive(Debug)]
pub struct RoutedVip<'a> {
    lb: &'a Netns,
    lb_ext: String,
    router: &'a Netns,
    backends: &'a [Netns],
}

impl<'a> RoutedVip<'a> {
    pub const TABLE: &'static str = "lbtrace_vip";

    pub fn start(lab: &'a super::Lab) -> RoutedVip<'a> {
        let vip = format!("{}/32", VIP.v4);
        let guard = RoutedVip {
            lb: &lab.lb,
            lb_ext: lab.lb_ext.clone(),
            router: &lab.router,
            backends: &lab.backends,
        };
        for ns in &lab.backends {
            ns.exec(&["ip", "addr", "add", &vip, "dev", "lo"]);
            ns.sysctl("net.ipv4.conf.all.arp_ignore", "1");
            ns.sysctl("net.ipv4.conf.all.arp_announce", "2");
            ns.nft(&format!(
                "table ip {table} {{\n\
                 \x20 chain prerouting {{\n\
                 \x20   type nat hook prerouting priority dstnat;\n\
                 \x20   ip daddr {vip} tcp dport {VIP_PORT} redirect to :{BACKEND_PORT}\n\
                 \x20 }}\n\
                 }}\n",
                table = Self::TABLE,
                vip = VIP.v4,
            ));
        }
        lab.lb
            .exec(&["ip", "addr", "del", &vip, "dev", &lab.lb_ext]);
        lab.lb.sysctl("net.ipv4.fib_multipath_hash_policy", "1");
        let mut route = vec!["ip", "route", "add", &vip];
        for be in &super::BACKENDS {
            route.extend(["nexthop", "via", be.addr.v4]);
        }
        lab.lb.exec(&route);
        lab.router
            .exec(&["ip", "route", "add", &vip, "via", super::LB_EXTERNAL.v4]);
        guard
    }
}

impl Drop for RoutedVip<'_> {
    fn drop(&mut self) {
        let vip = format!("{}/32", VIP.v4);
        let mut undo: Vec<(&Netns, Vec<&str>)> = vec![
            (self.router, vec!["ip", "route", "del", &vip]),
            (self.lb, vec!["ip", "route", "del", &vip]),
            (
                self.lb,
                vec!["ip", "addr", "add", &vip, "dev", &self.lb_ext],
            ),
        ];
        for ns in self.backends {
            undo.push((ns, vec!["nft", "delete", "table", "ip", Self::TABLE]));
            undo.push((ns, vec!["ip", "addr", "del", &vip, "dev", "lo"]));
        }
        for (ns, argv) in undo {
            let out = ns.output(&argv);
            if !out.status.success() {
                eprintln!(
                    "warning: {argv:?} in {}: {}",
                    ns.name(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}
