//! Is a tuple watched? The endpoint lookup and the per-endpoint counters.
//!
//! A port's `PORTS` entry says where its endpoints are: nowhere (not watched), a `PORT_SLOTS`
//! slot (an array index and a few compares), or the `ENDPOINTS` hash map (ports with more
//! endpoints than a slot holds, and the all-ports wildcard).

use core::ptr::write_volatile;

use lbtrace_common::{
    EndpointKey, EndpointStats, PORT_HASHED, PORT_SLOT_ENTRIES, addr_words, tcp_flag,
};

use crate::maps::{ENDPOINT_STATS, ENDPOINTS, HAS_WILDCARD, PORT_SLOTS, PORTS};

/// The id of a watched endpoint `addr:port`, given the port's `PORTS` entry: the port's slot
/// (an array index and a few compares) or, for a port with many endpoints, the hash map; then
/// the all-ports entry when there is one. The array lookups are inlined by the verifier; a hash
/// lookup is a call that hashes the key, about as costly as the rest of the event path.
#[inline(always)]
fn endpoint(fam: u8, addr: [u8; 16], port: u16, slot: u16) -> Option<u32> {
    if slot == PORT_HASHED {
        if let Some(id) = hashed(fam, addr, port) {
            return Some(id);
        }
    } else if slot != 0
        && let Some(s) = PORT_SLOTS.get(u32::from(slot - 1))
    {
        let w = addr_words(&addr);
        let n = s.len as usize;
        for i in 0..PORT_SLOT_ENTRIES {
            if i >= n {
                break;
            }
            let e = &s.entries[i];
            if e.addr[0] == w[0] && e.addr[1] == w[1] && e.family == fam {
                return Some(e.id);
            }
        }
    }
    if HAS_WILDCARD.load() != 0 {
        return hashed(fam, addr, 0);
    }
    None
}

#[inline(always)]
fn hashed(fam: u8, addr: [u8; 16], port: u16) -> Option<u32> {
    // The key built as five words with volatile stores: built field by field, the zero bytes of
    // an IPv4 key become an out-of-line `memset` call.
    // SAFETY: [u8; 16] and [u32; 4] have the same size and every bit pattern is valid for both.
    let a: [u32; 4] = unsafe { core::mem::transmute(addr) };
    let mut k = [0u32; 5];
    for (slot, w) in k.iter_mut().zip(a) {
        // SAFETY: a valid, aligned reference to a local.
        unsafe { write_volatile(slot, w) };
    }
    // The last word: port, then family, then the padding byte.
    let last = if cfg!(target_endian = "little") {
        u32::from(port) | (u32::from(fam) << 16)
    } else {
        (u32::from(port) << 16) | (u32::from(fam) << 8)
    };
    // SAFETY: as above.
    unsafe { write_volatile(&mut k[4], last) };
    const _: () = assert!(size_of::<EndpointKey>() == size_of::<[u32; 5]>());
    const _: () = assert!(align_of::<EndpointKey>() <= align_of::<[u32; 5]>());
    // SAFETY: EndpointKey is repr(C), 20 bytes of integers and byte arrays like `k` (asserted
    // above), needs no more alignment than `k` has, and every bit pattern is a valid value.
    let key = unsafe { &*k.as_ptr().cast::<EndpointKey>() };
    // SAFETY: a hash-map value lives until the program ends even if userspace deletes it; a u32
    // read whole.
    unsafe { ENDPOINTS.get(key) }.copied()
}

/// A tuple's ports with their `PORTS` entries.
pub(crate) struct Ports {
    sport: u16,
    dport: u16,
    sslot: u16,
    dslot: u16,
}

/// The ports' `PORTS` entries, or `None` when no watched endpoint can match: neither port is
/// watched and no endpoint watches every port. Two inlined array lookups, before the addresses
/// are even read.
#[inline(always)]
pub(crate) fn ports(sport: u16, dport: u16) -> Option<Ports> {
    let entry = |p: u16| PORTS.get(u32::from(p)).copied().unwrap_or(0);
    let (sslot, dslot) = (entry(sport), entry(dport));
    if sslot == 0 && dslot == 0 && HAS_WILDCARD.load() == 0 {
        return None;
    }
    Some(Ports {
        sport,
        dport,
        sslot,
        dslot,
    })
}

/// The watched endpoint of a tuple: the destination first (packets to the VIP or a backend), then
/// the source (their replies).
#[inline(always)]
pub(crate) fn watched(fam: u8, saddr: [u8; 16], daddr: [u8; 16], p: &Ports) -> Option<u32> {
    endpoint(fam, daddr, p.dport, p.dslot).or_else(|| endpoint(fam, saddr, p.sport, p.sslot))
}

/// A TCP tuple: addresses in network order (IPv4 in the first 4 bytes), ports in host order.
pub(crate) struct Tuple {
    pub(crate) fam: u8,
    pub(crate) saddr: [u8; 16],
    pub(crate) daddr: [u8; 16],
    pub(crate) sport: u16,
    pub(crate) dport: u16,
}

impl Tuple {
    /// The other direction's tuple.
    #[inline(always)]
    pub(crate) fn reversed(&self) -> Self {
        Self {
            fam: self.fam,
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
        }
    }

    /// Its watched endpoint ([`watched`]), the ports looked at first.
    #[inline(always)]
    pub(crate) fn watched(&self) -> Option<u32> {
        watched(
            self.fam,
            self.saddr,
            self.daddr,
            &ports(self.sport, self.dport)?,
        )
    }
}

/// Updates this CPU's `ENDPOINT_STATS` of endpoint `id`, if it has an entry.
#[inline(always)]
pub(crate) fn stats(id: u32, f: impl FnOnce(&mut EndpointStats)) {
    if let Some(s) = ENDPOINT_STATS.get_ptr_mut(id) {
        // SAFETY: the map's value for this CPU, valid for the whole program run; per-CPU, so no
        // other CPU writes it, and no reference to it outlives this call.
        f(unsafe { &mut *s });
    }
}

/// Counts a control packet of endpoint `id` by its flags.
#[inline(always)]
pub(crate) fn count_flags(id: u32, flags: u8) {
    stats(id, |s| {
        if flags & tcp_flag::SYN != 0 {
            if flags & tcp_flag::ACK != 0 {
                s.syn_ack += 1;
            } else {
                s.syn += 1;
            }
        }
        if flags & tcp_flag::RST != 0 {
            s.rst += 1;
        }
        if flags & tcp_flag::FIN != 0 {
            s.fin += 1;
        }
    });
}
