//! Watched endpoints: the VIPs and backends given on the command line, `ADDR[:PORT]`.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use lbtrace_common::{EndpointKey, family};

/// What an endpoint is to the load balancer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Vip,
    Backend,
}

/// An address and an optional port (`None`: every port of the address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: Option<u16>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid address {input:?}: {why} (expected ADDR or ADDR:PORT, e.g. 10.0.0.10:80, [2001:db8::10]:443 or 10.0.0.10)"
)]
pub struct ParseEndpointError {
    input: String,
    why: &'static str,
}

impl FromStr for Endpoint {
    type Err = ParseEndpointError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| ParseEndpointError {
            input: s.to_owned(),
            why,
        };
        let s = s.trim();
        if s.is_empty() {
            return Err(err("empty"));
        }
        if let Ok(addr) = s.parse::<IpAddr>() {
            return Self::checked(addr, None).map_err(err);
        }
        if let Ok(sa) = s.parse::<SocketAddr>() {
            if sa.port() == 0 {
                return Err(err(
                    "port 0 is not a port; leave the port out to watch every port",
                ));
            }
            return Self::checked(sa.ip(), Some(sa.port())).map_err(err);
        }
        // `[v6]` without a port.
        if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']'))
            && let Ok(addr) = inner.parse::<IpAddr>()
        {
            return Self::checked(addr, None).map_err(err);
        }
        if let Some((_, port)) = s.rsplit_once(':')
            && port.parse::<u16>().is_err()
            && !s.contains('[')
            && s.matches(':').count() == 1
        {
            return Err(err("the port is not a number from 1 to 65535"));
        }
        Err(err("not an IPv4 or IPv6 address"))
    }
}

impl Endpoint {
    fn checked(addr: IpAddr, port: Option<u16>) -> Result<Self, &'static str> {
        if addr.is_unspecified() {
            return Err("the unspecified address matches nothing");
        }
        if addr.is_multicast() {
            return Err("a multicast address cannot carry TCP");
        }
        // An IPv4-mapped IPv6 address is IPv4 on the wire.
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 => v4,
        };
        Ok(Self { addr, port })
    }

    /// The kernel map key.
    pub fn key(&self) -> EndpointKey {
        let mut a = [0u8; 16];
        let fam = match self.addr {
            IpAddr::V4(v4) => {
                a[..4].copy_from_slice(&v4.octets());
                family::V4
            }
            IpAddr::V6(v6) => {
                a = v6.octets();
                family::V6
            }
        };
        EndpointKey {
            addr: a,
            port: self.port.unwrap_or(0),
            family: fam,
            _pad: 0,
        }
    }

    pub fn matches(&self, sa: &SocketAddr) -> bool {
        sa.ip() == self.addr && self.port.is_none_or(|p| p == sa.port())
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.addr, self.port) {
            (IpAddr::V4(a), Some(p)) => write!(f, "{a}:{p}"),
            (IpAddr::V6(a), Some(p)) => write!(f, "[{a}]:{p}"),
            (a, None) => write!(f, "{a}"),
        }
    }
}

/// A watched endpoint with its role. Its position in the tracer's list is its id in the kernel's
/// `ENDPOINTS` map and the index of its `ENDPOINT_STATS` counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watched {
    pub endpoint: Endpoint,
    pub role: Role,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_accepted_forms() {
        let e: Endpoint = "10.0.0.10:80".parse().unwrap();
        assert_eq!(e.to_string(), "10.0.0.10:80");
        let e: Endpoint = "10.0.0.10".parse().unwrap();
        assert_eq!(e.port, None);
        let e: Endpoint = "[2001:db8::10]:443".parse().unwrap();
        assert_eq!(e.to_string(), "[2001:db8::10]:443");
        let e: Endpoint = "2001:db8::10".parse().unwrap();
        assert_eq!(e.port, None);
        let e: Endpoint = "[2001:db8::10]".parse().unwrap();
        assert_eq!(e.port, None);
        let e: Endpoint = "[::ffff:10.0.0.1]:80".parse().unwrap();
        assert_eq!(e.to_string(), "10.0.0.1:80");
    }

    #[test]
    fn rejects_bad_input_with_a_reason() {
        for bad in [
            "",
            "10.0.0",
            "10.0.0.10:http",
            "10.0.0.10:0",
            "10.0.0.10:70000",
            "0.0.0.0:80",
            "vip",
            "224.0.0.1:80",
        ] {
            let err = bad.parse::<Endpoint>().unwrap_err().to_string();
            assert!(err.contains("invalid address"), "{bad}: {err}");
        }
        let err = "10.0.0.10:http"
            .parse::<Endpoint>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("port"), "{err}");
    }

    #[test]
    fn map_keys_put_ipv4_in_the_first_four_bytes() {
        let k = "10.1.2.3:8080".parse::<Endpoint>().unwrap().key();
        assert_eq!(&k.addr[..4], &[10, 1, 2, 3]);
        assert!(k.addr[4..].iter().all(|b| *b == 0));
        assert_eq!((k.port, k.family), (8080, family::V4));
        let k = "2001:db8::1".parse::<Endpoint>().unwrap().key();
        assert_eq!((k.port, k.family), (0, family::V6));
    }
}
