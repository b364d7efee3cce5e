//! Bounds-checked header access shared by the TC and XDP programs.
//!
//! Everything works on `[start, end)` packet pointers (XDP `data`/`data_end`, or the linear part of
//! an skb). Every read is checked against `end` right before it, in a shape the verifier accepts.

use core::ptr::read_unaligned;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;

pub struct Bounds {
    pub start: usize,
    pub end: usize,
}

impl Bounds {
    /// A pointer to `N` readable bytes at `off`, or `None` past the end.
    #[inline(always)]
    pub fn at<const N: usize>(&self, off: usize) -> Option<*const u8> {
        let p = self.start + off;
        if p + N > self.end {
            return None;
        }
        Some(p as *const u8)
    }

    #[inline(always)]
    pub fn be16_at(&self, off: usize) -> Option<u16> {
        let p = self.at::<2>(off)?;
        Some(u16::from_be(unsafe { read_unaligned(p.cast::<u16>()) }))
    }
}

#[inline(always)]
pub fn be16(p: *const u8) -> u16 {
    u16::from_be(unsafe { read_unaligned(p.cast::<u16>()) })
}

#[inline(always)]
pub fn be32(p: *const u8) -> u32 {
    u32::from_be(unsafe { read_unaligned(p.cast::<u32>()) })
}

/// An IPv4 address in the first 4 of 16 bytes. Built from one 32-bit load and three zero words,
/// so no byte-wise memset lands on the per-packet path.
#[inline(always)]
pub fn copy4(p: *const u8) -> [u8; 16] {
    let v: u32 = unsafe { read_unaligned(p.cast::<u32>()) };
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>([v, 0, 0, 0]) }
}

#[inline(always)]
pub fn copy16(p: *const u8) -> [u8; 16] {
    unsafe { read_unaligned(p.cast::<[u8; 16]>()) }
}

/// Skips the Ethernet header and up to two VLAN tags (802.1Q / 802.1ad). Returns the L3 offset
/// and the EtherType.
#[inline(always)]
pub fn l2(b: &Bounds) -> Option<(usize, u16)> {
    let mut proto = b.be16_at(12)?;
    let mut off = ETH_HLEN;
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        proto = b.be16_at(16)?;
        off = ETH_HLEN + 4;
        if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
            proto = b.be16_at(20)?;
            off = ETH_HLEN + 8;
        }
    }
    Some((off, proto))
}
