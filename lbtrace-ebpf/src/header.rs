//! Bounds-checked header access, shared by the packet programs and the drop tracer.
//!
//! [`Bounds`] is a packet: `[start, end)` of XDP's `data` / `data_end`, or of an skb's linear
//! part. [`Bounds::at`] checks room for `N` bytes right before it hands out a [`Hdr<N>`], in the
//! shape the verifier accepts, and every read from a `Hdr` is checked against `N` at compile
//! time. The drop tracer copies headers out of kernel memory into arrays and reads them through
//! the same type ([`Hdr::of`]), so the field offsets of IPv4, IPv6 and TCP are written once, in
//! [`Ip4`], [`Ip6`] and [`Tcp`].

use core::{marker::PhantomData, ptr::read_unaligned};

use aya_ebpf::programs::{TcContext, XdpContext};

pub(crate) const ETH_HLEN: usize = 14;
pub(crate) const ETH_P_IP: u16 = 0x0800;
pub(crate) const ETH_P_IPV6: u16 = 0x86dd;
pub(crate) const ETH_P_8021Q: u16 = 0x8100;
pub(crate) const ETH_P_8021AD: u16 = 0x88a8;
pub(crate) const IPPROTO_TCP: u8 = 6;
pub(crate) const IPPROTO_ICMP: u8 = 1;
pub(crate) const IPPROTO_ICMPV6: u8 = 58;
/// GRE flag bits (first byte) and the version (low 3 bits of the second).
pub(crate) const GRE_CSUM: u8 = 0x80;
pub(crate) const GRE_ROUTING: u8 = 0x40;
pub(crate) const GRE_KEY: u8 = 0x20;
pub(crate) const GRE_SEQ: u8 = 0x10;
/// Fixed IPv4 header (without options), IPv6 header and TCP header (without options) lengths.
pub(crate) const IP4_LEN: usize = 20;
pub(crate) const IP6_LEN: usize = 40;
pub(crate) const TCP_LEN: usize = 20;
/// TCP option kinds (RFC 9293): end of list, no-operation, maximum segment size.
pub(crate) const TCPOPT_EOL: u8 = 0;
pub(crate) const TCPOPT_NOP: u8 = 1;
pub(crate) const TCPOPT_MSS: u8 = 2;

/// The packet a program runs on. Made only from a program context, so `[start, end)` is memory
/// the kernel lets the program read.
pub(crate) struct Bounds {
    start: usize,
    end: usize,
}

impl Bounds {
    #[inline(always)]
    pub(crate) fn tc(ctx: &TcContext) -> Self {
        Self {
            start: ctx.data(),
            end: ctx.data_end(),
        }
    }

    /// The first buffer only of a multi-buffer (`xdp.frags`) packet: it always holds the headers.
    #[inline(always)]
    pub(crate) fn xdp(ctx: &XdpContext) -> Self {
        Self {
            start: ctx.data(),
            end: ctx.data_end(),
        }
    }

    /// `N` readable bytes at `off`, or `None` past the end.
    #[inline(always)]
    pub(crate) fn at<const N: usize>(&self, off: usize) -> Option<Hdr<'_, N>> {
        let p = self.start + off;
        if p + N > self.end {
            return None;
        }
        Some(Hdr {
            p: p as *const u8,
            _bytes: PhantomData,
        })
    }
}

/// Bytes of an HTTP/1.x status line up to its code: `HTTP/1.1 503`.
pub(crate) const STATUS_LINE: usize = 12;

/// Reads the first [`STATUS_LINE`] bytes of a segment's data, for the data-path mode's
/// first-byte marks only (once per direction of a flow): every other packet is read through
/// [`Bounds`] alone.
pub(crate) trait Payload {
    /// The bytes at `off` (the segment's data), `None` when the packet has fewer.
    fn status_line(&self, b: &Bounds, off: usize) -> Option<[u8; STATUS_LINE]>;
}

/// An skb's data through `bpf_skb_load_bytes`: TCP data sent by a local socket or forwarded
/// by a veth is mostly in the skb's paged part, out of [`Bounds`]' reach.
pub(crate) struct Skb<'a>(pub(crate) &'a TcContext);

impl Payload for Skb<'_> {
    #[inline(always)]
    fn status_line(&self, _b: &Bounds, off: usize) -> Option<[u8; STATUS_LINE]> {
        self.0.load::<[u8; STATUS_LINE]>(off).ok()
    }
}

/// XDP's first buffer, read directly; data in later buffers of a multi-buffer packet is not
/// read (unknown).
pub(crate) struct FirstBuffer;

impl Payload for FirstBuffer {
    #[inline(always)]
    fn status_line(&self, b: &Bounds, off: usize) -> Option<[u8; STATUS_LINE]> {
        Some(b.at::<STATUS_LINE>(off)?.read::<[u8; STATUS_LINE], 0>())
    }
}

/// `N` readable bytes: a bounds-checked part of a packet, or an array.
#[derive(Clone, Copy)]
pub(crate) struct Hdr<'a, const N: usize> {
    p: *const u8,
    _bytes: PhantomData<&'a [u8; N]>,
}

impl<'a, const N: usize> Hdr<'a, N> {
    /// Headers copied into an array (the drop tracer reads them from kernel memory).
    #[inline(always)]
    pub(crate) fn of(bytes: &'a [u8; N]) -> Self {
        Self {
            p: bytes.as_ptr(),
            _bytes: PhantomData,
        }
    }

    /// The `T` at byte `I`, in the byte order it has in memory.
    #[inline(always)]
    fn read<T: Copy, const I: usize>(self) -> T {
        const { assert!(I + size_of::<T>() <= N, "read past the checked header") };
        // SAFETY: a Hdr points to N readable bytes (checked by `Bounds::at`, or a borrowed
        // array) and the read ends within them (asserted above); read_unaligned needs no
        // alignment and T is a plain integer or byte array.
        unsafe { read_unaligned(self.p.add(I).cast::<T>()) }
    }

    #[inline(always)]
    pub(crate) fn u8<const I: usize>(self) -> u8 {
        self.read::<u8, I>()
    }

    #[inline(always)]
    pub(crate) fn be16<const I: usize>(self) -> u16 {
        u16::from_be(self.read::<u16, I>())
    }

    #[inline(always)]
    pub(crate) fn be32<const I: usize>(self) -> u32 {
        u32::from_be(self.read::<u32, I>())
    }

    /// An IPv4 address at `I`, in the first 4 of 16 bytes. Built from one 32-bit load and three
    /// zero words, so no byte-wise memset lands on the per-packet path.
    #[inline(always)]
    pub(crate) fn addr4<const I: usize>(self) -> [u8; 16] {
        let v = self.read::<u32, I>();
        // SAFETY: [u32; 4] and [u8; 16] have the same size and every bit pattern is valid for both.
        unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>([v, 0, 0, 0]) }
    }

    #[inline(always)]
    pub(crate) fn addr16<const I: usize>(self) -> [u8; 16] {
        self.read::<[u8; 16], I>()
    }

    /// The first `M` of the `N` bytes.
    #[inline(always)]
    pub(crate) fn prefix<const M: usize>(self) -> Hdr<'a, M> {
        const { assert!(M <= N, "prefix longer than the header") };
        Hdr {
            p: self.p,
            _bytes: PhantomData,
        }
    }
}

/// Skips the Ethernet header and up to two VLAN tags (802.1Q / 802.1ad). Returns the L3 offset
/// and the EtherType.
#[inline(always)]
pub(crate) fn l2(b: &Bounds) -> Option<(usize, u16)> {
    let mut proto = b.at::<2>(12)?.be16::<0>();
    let mut off = ETH_HLEN;
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        proto = b.at::<2>(16)?.be16::<0>();
        off = ETH_HLEN + 4;
        if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
            proto = b.at::<2>(20)?.be16::<0>();
            off = ETH_HLEN + 8;
        }
    }
    Some((off, proto))
}

/// An IPv4 header (RFC 791) whose version is 4 and whose IHL covers the fixed header.
#[derive(Clone, Copy)]
pub(crate) struct Ip4<'a> {
    h: Hdr<'a, IP4_LEN>,
    /// Header length with options, in bytes.
    ihl: usize,
}

impl<'a> Ip4<'a> {
    #[inline(always)]
    pub(crate) fn new(h: Hdr<'a, IP4_LEN>) -> Option<Self> {
        let vihl = h.u8::<0>();
        let ihl = ((vihl & 0x0f) as usize) * 4;
        if vihl >> 4 != 4 || ihl < IP4_LEN {
            return None;
        }
        Some(Self { h, ihl })
    }

    /// Header length with options: where the L4 header starts.
    #[inline(always)]
    pub(crate) fn ihl(self) -> usize {
        self.ihl
    }

    #[inline(always)]
    pub(crate) fn proto(self) -> u8 {
        self.h.u8::<9>()
    }

    /// Not the first fragment: only the first one carries the L4 header.
    #[inline(always)]
    pub(crate) fn later_fragment(self) -> bool {
        self.h.be16::<6>() & 0x1fff != 0
    }

    /// L4 bytes (header and payload) as the total length tells.
    #[inline(always)]
    pub(crate) fn l4_len(self) -> u16 {
        self.h.be16::<2>().saturating_sub(self.ihl() as u16)
    }

    #[inline(always)]
    pub(crate) fn saddr(self) -> [u8; 16] {
        self.h.addr4::<12>()
    }

    #[inline(always)]
    pub(crate) fn daddr(self) -> [u8; 16] {
        self.h.addr4::<16>()
    }
}

/// An IPv6 header (RFC 8200) whose version is 6. Extension headers are not followed.
#[derive(Clone, Copy)]
pub(crate) struct Ip6<'a>(Hdr<'a, IP6_LEN>);

impl<'a> Ip6<'a> {
    #[inline(always)]
    pub(crate) fn new(h: Hdr<'a, IP6_LEN>) -> Option<Self> {
        (h.u8::<0>() >> 4 == 6).then_some(Self(h))
    }

    /// The next header, which is the L4 protocol when there are no extension headers.
    #[inline(always)]
    pub(crate) fn next(self) -> u8 {
        self.0.u8::<6>()
    }

    /// L4 bytes (header and payload) as the payload length tells.
    #[inline(always)]
    pub(crate) fn l4_len(self) -> u16 {
        self.0.be16::<4>()
    }

    #[inline(always)]
    pub(crate) fn saddr(self) -> [u8; 16] {
        self.0.addr16::<8>()
    }

    #[inline(always)]
    pub(crate) fn daddr(self) -> [u8; 16] {
        self.0.addr16::<24>()
    }
}

/// A TCP header (RFC 9293), or its first `N` bytes: an ICMP error quotes only 8 (ports and
/// sequence number); reading further does not compile.
#[derive(Clone, Copy)]
pub(crate) struct Tcp<'a, const N: usize>(pub(crate) Hdr<'a, N>);

impl<const N: usize> Tcp<'_, N> {
    #[inline(always)]
    pub(crate) fn sport(self) -> u16 {
        self.0.be16::<0>()
    }

    #[inline(always)]
    pub(crate) fn dport(self) -> u16 {
        self.0.be16::<2>()
    }

    #[inline(always)]
    pub(crate) fn seq(self) -> u32 {
        self.0.be32::<4>()
    }

    #[inline(always)]
    pub(crate) fn ack(self) -> u32 {
        self.0.be32::<8>()
    }

    /// Header length with options (data offset x 4).
    #[inline(always)]
    pub(crate) fn doff(self) -> u16 {
        ((self.0.u8::<12>() >> 4) as u16) * 4
    }

    #[inline(always)]
    pub(crate) fn flags(self) -> u8 {
        self.0.u8::<13>()
    }
}
