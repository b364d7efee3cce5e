//! The kernel's per-CPU counters, summed over CPUs. They are counted before the ring buffer is
//! touched, so they stay exact when events are lost.

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray},
};
use lbtrace_common::{EndpointStats, MAX_DROP_REASONS, counter, names};

/// The kernel programs' own counters, summed over the CPUs: packets parsed, events emitted and
/// lost per ring, parse errors, drops. Counted before any ring is touched, so they are exact
/// even when events were lost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub packets: u64,
    pub parse_errors: u64,
    pub events_emitted: u64,
    pub events_lost: u64,
    pub priority_emitted: u64,
    pub priority_lost: u64,
    pub data_drops: u64,
    pub drops_other_netns: u64,
    pub drops_noise: u64,
}

impl Counters {
    /// Events the kernel could not deliver (ring buffer full).
    pub fn lost(&self) -> u64 {
        self.events_lost + self.priority_lost
    }

    pub fn emitted(&self) -> u64 {
        self.events_emitted + self.priority_emitted
    }
}

fn sum(arr: &PerCpuArray<&MapData, u64>, idx: u32) -> u64 {
    arr.get(&idx, 0).map(|v| v.iter().sum()).unwrap_or(0)
}

pub fn read(ebpf: &Ebpf) -> Counters {
    let Some(arr) = ebpf
        .map(names::COUNTERS)
        .and_then(|m| PerCpuArray::<_, u64>::try_from(m).ok())
    else {
        return Counters::default();
    };
    Counters {
        packets: sum(&arr, counter::PACKETS),
        parse_errors: sum(&arr, counter::PARSE_ERRORS),
        events_emitted: sum(&arr, counter::EVENTS_EMITTED),
        events_lost: sum(&arr, counter::EVENTS_LOST),
        priority_emitted: sum(&arr, counter::PRIORITY_EMITTED),
        priority_lost: sum(&arr, counter::PRIORITY_LOST),
        data_drops: sum(&arr, counter::DATA_DROPS),
        drops_other_netns: sum(&arr, counter::DROPS_OTHER_NETNS),
        drops_noise: sum(&arr, counter::DROPS_NOISE),
    }
}

/// Per-endpoint control-packet counters, by endpoint id.
pub fn endpoint_stats(ebpf: &Ebpf, count: u32) -> Vec<EndpointStats> {
    let Some(arr) = ebpf
        .map(names::ENDPOINT_STATS)
        .and_then(|m| PerCpuArray::<_, EndpointStats>::try_from(m).ok())
    else {
        return Vec::new();
    };
    (0..count)
        .map(|id| {
            arr.get(&id, 0)
                .map(|vals| {
                    vals.iter().fold(EndpointStats::default(), |mut a, s| {
                        a.syn += s.syn;
                        a.syn_ack += s.syn_ack;
                        a.rst += s.rst;
                        a.fin += s.fin;
                        a.icmp += s.icmp;
                        a.drops += s.drops;
                        a
                    })
                })
                .unwrap_or_default()
        })
        .collect()
}

/// Drops of watched data packets, by drop-reason value (non-zero only).
pub fn data_drop_reasons(ebpf: &Ebpf) -> Vec<(u32, u64)> {
    let Some(arr) = ebpf
        .map(names::DATA_DROP_REASONS)
        .and_then(|m| PerCpuArray::<_, u64>::try_from(m).ok())
    else {
        return Vec::new();
    };
    (0..MAX_DROP_REASONS)
        .filter_map(|r| Some((r, sum(&arr, r))).filter(|(_, n)| *n > 0))
        .collect()
}
