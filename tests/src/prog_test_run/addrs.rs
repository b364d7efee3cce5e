//! Addresses, endpoints and ids used throughout.

#[allow(clippy::wildcard_imports)]
use super::*;

/// `TC_ACT_UNSPEC` (-1), i.e. `TCX_NEXT`, as the kernel reports it in `retval`.
pub(super) const TC_PASS: u32 = u32::MAX;
pub(super) const XDP_PASS: u32 = 2;

pub(super) const CLIENT4: [u8; 4] = [192, 0, 2, 7];
pub(super) const VIP4: [u8; 4] = [10, 0, 0, 10];
pub(super) const VIP_PORT: u16 = 443;
/// The load balancer's address towards the backends (SNAT source).
pub(super) const LB4: [u8; 4] = [10, 0, 1, 1];
pub(super) const BACKEND4: [u8; 4] = [10, 0, 1, 20];
pub(super) const BACKEND_PORT: u16 = 8080;
pub(super) const ROUTER4: [u8; 4] = [10, 0, 1, 254];
/// Watched on every port (port 0) by the wildcard tests.
pub(super) const WILD4: [u8; 4] = [10, 0, 2, 30];
pub(super) const UNWATCHED4: [u8; 4] = [10, 0, 0, 99];

pub(super) const CLIENT6: [u8; 16] = ip6(0x2001_0db8_00ff, 7);
pub(super) const VIP6: [u8; 16] = ip6(0x2001_0db8_0000, 0x10);
pub(super) const LB6: [u8; 16] = ip6(0x2001_0db8_0001, 1);
pub(super) const BACKEND6: [u8; 16] = ip6(0x2001_0db8_0001, 0x20);
pub(super) const ROUTER6: [u8; 16] = ip6(0x2001_0db8_0001, 0xfe);
pub(super) const WILD6: [u8; 16] = ip6(0x2001_0db8_0002, 0x30);

pub(super) const ID_VIP4: u32 = 3;
pub(super) const ID_BACKEND4: u32 = 7;
pub(super) const ID_VIP6: u32 = 11;
pub(super) const ID_BACKEND6: u32 = 13;
pub(super) const ID_WILD4: u32 = 21;
pub(super) const ID_WILD6: u32 = 22;
pub(super) const ID_WILD4_443: u32 = 23;
pub(super) const ID_WILD_NOFLAG: u32 = 30;

pub(super) fn key4(a: [u8; 4], port: u16) -> EndpointKey {
    EndpointKey {
        addr: addr4(a),
        port,
        family: family::V4,
        _pad: 0,
    }
}

pub(super) fn key6(a: [u8; 16], port: u16) -> EndpointKey {
    EndpointKey {
        addr: a,
        port,
        family: family::V6,
        _pad: 0,
    }
}

pub(super) fn standard_endpoints() -> Vec<(EndpointKey, u32)> {
    vec![
        (key4(VIP4, VIP_PORT), ID_VIP4),
        (key4(BACKEND4, BACKEND_PORT), ID_BACKEND4),
        (key6(VIP6, VIP_PORT), ID_VIP6),
        (key6(BACKEND6, BACKEND_PORT), ID_BACKEND6),
    ]
}
