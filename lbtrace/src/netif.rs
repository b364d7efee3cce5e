//! The network interfaces of the current network namespace: which carry the endpoints' traffic,
//! and whether an XDP program already holds one.
//!
//! Read through iproute2's JSON output (`ip -j`), present on every Linux LB host; it follows
//! policy routing, VRFs and every device kind exactly as the kernel reports them.

use std::{collections::BTreeSet, net::IpAddr, process::Command};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

/// One interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    pub up: bool,
    pub loopback: bool,
    /// The id of the XDP program attached to it, if any.
    pub xdp_prog: Option<u64>,
    /// Addresses assigned to it.
    pub addrs: Vec<IpAddr>,
}

fn ip_json(args: &[&str]) -> Result<Value> {
    let out = Command::new("ip")
        .arg("-j")
        .args(args)
        .output()
        .with_context(|| {
            format!(
                "running `ip -j {}` (is iproute2 installed?)",
                args.join(" ")
            )
        })?;
    if !out.status.success() {
        bail!(
            "`ip -j {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // Some iproute2 versions print nothing at all for an empty answer.
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Array(Vec::new()));
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("parsing the output of `ip -j {}`", args.join(" ")))
}

fn xdp_prog_id(link: &Value) -> Option<u64> {
    let xdp = link.get("xdp")?;
    // {"mode":1,"prog":{"id":N,...}} or {"mode":4,"attached":[{"mode":..,"id":N}, ...]}
    xdp.get("prog")
        .and_then(|p| p.get("id"))
        .and_then(Value::as_u64)
        .or_else(|| {
            xdp.get("attached")?
                .as_array()?
                .iter()
                .find_map(|a| a.get("id").and_then(Value::as_u64))
        })
        .or(Some(0))
}

/// Every interface of the namespace, with its addresses and XDP state.
pub fn links() -> Result<Vec<Link>> {
    let details = ip_json(&["-d", "link", "show"])?;
    let addrs = ip_json(&["addr", "show"])?;
    let mut out = Vec::new();
    for l in details.as_array().into_iter().flatten() {
        let Some(ifindex) = l.get("ifindex").and_then(Value::as_u64) else {
            continue;
        };
        let name = l
            .get("ifname")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let flags: Vec<&str> = l
            .get("flags")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let addrs = addrs
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a.get("ifindex").and_then(Value::as_u64) == Some(ifindex))
            .flat_map(|a| {
                a.get("addr_info")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
            })
            .filter_map(|ai| ai.get("local")?.as_str()?.parse().ok())
            .collect();
        out.push(Link {
            ifindex: u32::try_from(ifindex).unwrap_or(0),
            name,
            up: flags.contains(&"UP"),
            loopback: flags.contains(&"LOOPBACK"),
            xdp_prog: xdp_prog_id(l),
            addrs,
        });
    }
    Ok(out)
}

/// The device the kernel routes `addr` through, and whether the route is `local`.
fn route_dev(addr: IpAddr) -> Result<Option<(String, bool)>> {
    let v = match ip_json(&["route", "get", &addr.to_string()]) {
        Ok(v) => v,
        // "Network is unreachable": no route, nothing to trace for this address.
        Err(_) => return Ok(None),
    };
    let r = v.as_array().and_then(|a| a.first());
    Ok(r.and_then(|r| {
        let dev = r.get("dev")?.as_str()?.to_owned();
        let local = r.get("type").and_then(Value::as_str) == Some("local");
        Some((dev, local))
    }))
}

fn default_route_devs(v6: bool) -> Result<Vec<String>> {
    let fam = if v6 { "-6" } else { "-4" };
    let v = ip_json(&[fam, "route", "show", "default"])?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| {
            // Multipath default routes list their devices under "nexthops".
            let mut devs: Vec<String> = r
                .get("dev")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .into_iter()
                .collect();
            devs.extend(
                r.get("nexthops")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|n| n.get("dev")?.as_str().map(str::to_owned)),
            );
            devs
        })
        .collect())
}

/// The interfaces that carry traffic of `vips` and `backends` in this namespace: the L3 device
/// holding or routing each address (a bridge, bond or VLAN device rather than its ports, so each
/// stack is traced once), plus the default-route devices for VIPs, which is where clients come
/// from and where replies to them leave.
pub fn default_ifaces(links: &[Link], vips: &[IpAddr], backends: &[IpAddr]) -> Result<Vec<String>> {
    let mut set = BTreeSet::new();
    let by_name = |n: &str| links.iter().find(|l| l.name == n);
    let mut add = |name: &str| {
        if by_name(name).is_some_and(|l| !l.loopback) {
            set.insert(name.to_owned());
        }
    };
    for (addr, is_vip) in vips
        .iter()
        .map(|a| (a, true))
        .chain(backends.iter().map(|a| (a, false)))
    {
        let holder = links.iter().find(|l| l.addrs.contains(addr));
        match holder {
            Some(l) if !l.loopback => add(&l.name),
            _ => {
                if let Some((dev, _local)) = route_dev(*addr)? {
                    add(&dev);
                }
            }
        }
        if is_vip {
            for dev in default_route_devs(addr.is_ipv6())? {
                add(&dev);
            }
        }
    }
    Ok(set.into_iter().collect())
}
