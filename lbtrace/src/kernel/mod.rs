//! Everything that talks to bpf(2): the embedded object, loading it with this kernel's offsets,
//! attaching it (bpf_links only), the ring buffers and the per-CPU counters.
//!
//! ```text
//! EBPF_OBJECT ──loader::load(offsets, netns, endpoints)──▶ Tracer ──attach──▶ TCX / XDP links, raw_tp link
//!                                                     └──▶ Rings (EVENTS, PRIORITY_EVENTS) ──▶ records
//!                                                     └──▶ Counters (per-CPU sums)
//! ```

pub mod btf;
pub mod counters;
pub mod kallsyms;
pub mod legacy_tc;
pub mod loader;
pub mod preflight;
pub mod rings;
pub mod tracer;

pub use tracer::{Attachment, Tracer, TracerConfig};

/// The kernel programs (lbtrace-ebpf), built by build.rs for the BPF target and embedded here so
/// that one binary is all an LB host needs.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lbtrace-kern"));
