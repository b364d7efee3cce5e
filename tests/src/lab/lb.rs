//! Load balancers on the lab's lb namespace. Each is a guard that undoes itself on drop.

use std::{fs, path::Path, time::Duration};

use super::{BACKEND_PORT, Backend, Family, Netns, Proc, VIP, VIP_PORT, process};

/// HAProxy in HTTP (L7) mode: `haproxy -db -f <cfg>`, a frontend on VIP:80 for each family, each
/// balancing round-robin over the backends of its own family on port 8080. No health checks and
/// no connection reuse, so the only TCP connections are the tests' own.
#[derive(Debug)]
pub struct HaProxy {
    proc: Proc,
}

impl HaProxy {
    pub fn config(backends: &[Backend]) -> String {
        let mut cfg = String::from(
            "global\n    maxconn 256\n\n\
             defaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n\
             \x20   timeout server 10s\n    http-reuse never\n    option httpclose\n\n",
        );
        for (family, tag) in [(Family::V4, "v4"), (Family::V6, "v6")] {
            cfg += &format!(
                "frontend fe_{tag}\n    bind {}\n    default_backend be_{tag}\n\n\
                 backend be_{tag}\n    balance roundrobin\n",
                family.tuple(VIP.get(family), VIP_PORT)
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

    /// Starts HAProxy in `ns` and waits until it listens on both VIPs.
    pub fn start(ns: &Netns, dir: &Path, backends: &[Backend]) -> HaProxy {
        let cfg_path = dir.join("haproxy.cfg");
        fs::write(&cfg_path, HaProxy::config(backends)).expect("writing haproxy.cfg");
        let cfg = cfg_path.to_string_lossy();
        let mut proc = ns.spawn("haproxy", dir, &["haproxy", "-db", "-f", &cfg]);
        // ss, not a probe connection: waiting must not put packets on the wire.
        let listens = [
            Family::V4.tuple(VIP.v4, VIP_PORT),
            Family::V6.tuple(VIP.v6, VIP_PORT),
        ];
        proc.wait_until("listening on the VIPs", Duration::from_secs(10), |_| {
            listens.iter().all(|a| ns.listening_on(a))
        });
        HaProxy { proc }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }
}

/// The nftables DNAT (L4) load balancer: table `inet lbtrace_lb` whose prerouting nat chain
/// spreads VIP:80 over the backends' port 8080 (`numgen inc`), for IPv4 and IPv6. No SNAT: the
/// backends answer through the lb (their default route), whose conntrack undoes the DNAT.
/// Drop deletes the table.
#[derive(Debug)]
pub struct NftDnat<'a> {
    ns: &'a Netns,
}

impl<'a> NftDnat<'a> {
    pub const TABLE: &'static str = "lbtrace_lb";

    pub fn ruleset(backends: &[Backend]) -> String {
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
             }}\n",
            table = Self::TABLE,
            vip4 = VIP.v4,
            vip6 = VIP.v6,
            m4 = map(Family::V4),
            m6 = map(Family::V6),
        )
    }

    pub fn load(ns: &'a Netns, backends: &[Backend]) -> NftDnat<'a> {
        ns.nft(&NftDnat::ruleset(backends));
        NftDnat { ns }
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
