//! The observation window of `lbtrace check`: kernel events collected while the probes run and
//! clients connect, in bounded memory, until the window closes, a signal arrives, or every step
//! passes.

use std::{collections::HashMap, future::Future, net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result};
use tokio::task::JoinHandle;

use super::{ProbeSet, facts, verdict};
use crate::{
    cli::CheckArgs,
    event::{Detail, KernelEvent},
    host::diag::{self, TcpInfo},
    kernel::btf::DropReasons,
    kernel::rings::Rings,
    probe::ProbeReport,
    render::Clock,
    session,
};

/// Kernel events a check keeps (128 bytes each: 12.8 MB): later ones are counted, not kept, and
/// the observation ends once the probes are done. A busy VIP fills it in seconds; the verdict
/// is then about the connections of those seconds.
pub const MAX_EVENTS: usize = 100_000;

/// How often, at most, the observation judges the events so far to end early once every step
/// passes. Judging is linear in the events kept (43 ms for a full log in a release build), so
/// the pause after a judgement is also at least `JUDGE_SHARE` times what it took: judging never
/// takes more than 1/`JUDGE_SHARE` of a CPU.
pub const JUDGE_EVERY: Duration = Duration::from_millis(500);
pub const JUDGE_SHARE: u32 = 20;

/// The kernel events of the window, at most `cap` of them, in arrival order.
#[derive(Debug)]
pub struct EventLog {
    events: Vec<KernelEvent>,
    cap: usize,
    not_kept: u64,
    vip: SocketAddr,
    client_syns: u64,
}

impl EventLog {
    /// An empty log for `vip`, keeping at most `cap` events.
    pub fn new(vip: SocketAddr, cap: usize) -> Self {
        Self {
            events: Vec::new(),
            cap,
            not_kept: 0,
            vip,
            client_syns: 0,
        }
    }

    pub fn extend(&mut self, evs: impl IntoIterator<Item = KernelEvent>) {
        for e in evs {
            if e.dst == self.vip && e.is_syn() {
                self.client_syns += 1;
            }
            if self.events.len() < self.cap {
                self.events.push(e);
            } else {
                self.not_kept += 1;
            }
        }
    }

    /// The cap is reached: later events are only counted.
    pub fn full(&self) -> bool {
        self.events.len() >= self.cap
    }

    pub fn events(&self) -> &[KernelEvent] {
        &self.events
    }

    /// Events that arrived after the cap was reached.
    pub fn not_kept(&self) -> u64 {
        self.not_kept
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// SYNs to the VIP seen so far, kept or not.
    pub fn client_syns(&self) -> u64 {
        self.client_syns
    }

    /// The kept events, in time order.
    pub fn into_sorted(mut self) -> Vec<KernelEvent> {
        self.events.sort_by_key(|e| e.ts_ns);
        self.events
    }
}

/// Data retransmissions by the LB host on one connection from which its socket's tcp_info is
/// read: the first RTO and two backed-off ones, a leg that looks stalled.
pub const STALLED_AFTER: u32 = 3;
/// At most this many tcp_info queries per check (one per stalled connection).
pub const MAX_TCP_INFO: usize = 16;
/// Connections whose retransmissions are counted (beyond: not counted, not queried).
const MAX_COUNTED: usize = 4096;

/// The tcp_info of one of the LB host's sockets, read when its connection looked stalled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpInfoSnapshot {
    /// The LB's end and the peer's (a client or a backend).
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// When it was read (CLOCK_MONOTONIC ns, the events' clock).
    pub ts_ns: u64,
    /// The retransmissions seen on the connection when the query was made.
    pub retransmissions: u32,
    pub info: TcpInfo,
}

/// Counts the LB host's data retransmissions per connection and, when one reaches
/// [`STALLED_AFTER`], reads that socket's tcp_info from a blocking task (the event drain never
/// waits for it), at most [`MAX_TCP_INFO`] times.
#[derive(Debug, Default)]
pub struct Stalls {
    counts: HashMap<(SocketAddr, SocketAddr), u32>,
    /// Queries started so far.
    asked: usize,
    queries: Vec<JoinHandle<Option<TcpInfoSnapshot>>>,
}

impl Stalls {
    /// The connections of `evs` that just became stalled (each once), within the caps.
    fn newly_stalled(&mut self, evs: &[KernelEvent]) -> Vec<(SocketAddr, SocketAddr, u32)> {
        let mut out = Vec::new();
        for e in evs {
            if !matches!(e.detail, Detail::Retrans) || e.has_syn() {
                continue;
            }
            let key = (e.src, e.dst);
            if !self.counts.contains_key(&key) && self.counts.len() >= MAX_COUNTED {
                continue;
            }
            let n = self.counts.entry(key).or_default();
            *n = n.saturating_add(1);
            if *n == STALLED_AFTER && self.asked < MAX_TCP_INFO {
                self.asked += 1;
                out.push((e.src, e.dst, *n));
            }
        }
        out
    }

    /// Starts the queries for the connections `evs` made stalled.
    pub fn see(&mut self, evs: &[KernelEvent]) {
        for (local, remote, retransmissions) in self.newly_stalled(evs) {
            self.queries.push(tokio::task::spawn_blocking(move || {
                let info = diag::tcp_info(local, remote).ok().flatten()?;
                Some(TcpInfoSnapshot {
                    local,
                    remote,
                    ts_ns: Clock::monotonic_ns(),
                    retransmissions,
                    info,
                })
            }));
        }
    }

    /// The snapshots read (sockets already closed, or queries that failed, give none).
    pub async fn finish(self) -> Vec<TcpInfoSnapshot> {
        let mut out = Vec::new();
        for q in self.queries {
            match q.await {
                Ok(Some(s)) => out.push(s),
                Ok(None) => {}
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => {}
            }
        }
        out
    }
}

/// The backends' series of probes (in `--backend` order) and the VIP's.
pub type ProbeResults = (Vec<Vec<ProbeReport>>, Vec<ProbeReport>);

/// What the window collected.
pub struct Observed {
    pub log: EventLog,
    /// `None` when the window closed before the probes ended.
    pub probes: Option<ProbeResults>,
    pub pending: Option<JoinHandle<ProbeResults>>,
    /// The tcp_info queries of stalled connections, started during the window.
    pub stalls: Stalls,
}

/// Collects events until `args.observe` passes, `shutdown` resolves, or (once the probes are
/// done) every step passes or the log is full.
#[allow(clippy::too_many_arguments)]
pub async fn observe(
    args: &CheckArgs,
    vip: SocketAddr,
    started: tokio::time::Instant,
    rings: &mut Rings,
    probes: JoinHandle<ProbeResults>,
    reasons: &DropReasons,
    decode_errors: &mut u64,
    shutdown: impl Future<Output = ()>,
) -> Result<Observed> {
    let mut log = EventLog::new(vip, MAX_EVENTS);
    let mut stalls = Stalls::default();
    let mut done: Option<ProbeResults> = None;
    let mut pending = Some(probes);
    let mut last_progress = started;
    // When the events may be judged next, and how many there were at the last judgement.
    let mut judged: Option<(tokio::time::Instant, usize)> = None;
    tokio::pin!(shutdown);
    loop {
        // Judge again only when there is something new, and not before `judge_at`.
        let judge_at = judged.map_or(started, |(at, _)| at);
        let unjudged = done.is_some() && judged.is_none_or(|(_, n)| n != log.events().len());
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep_until(started + args.observe) => break,
            r = async { pending.as_mut().expect("polled only while pending").await }, if pending.is_some() => {
                pending = None;
                done = Some(r.context("the probe task failed")?);
            }
            () = rings.wait() => {
                let evs = session::drain(rings, decode_errors);
                stalls.see(&evs);
                log.extend(evs);
            }
            () = tokio::time::sleep_until(judge_at), if unjudged => {}
        }
        if last_progress.elapsed() >= Duration::from_secs(2) {
            last_progress = tokio::time::Instant::now();
            eprintln!(
                "lbtrace: {:>3.0} s: {} client SYN(s) to {} so far, backend probes {}",
                started.elapsed().as_secs_f64(),
                log.client_syns(),
                args.vip,
                if done.is_some() { "done" } else { "running" }
            );
        }
        let Some((bp, vp)) = &done else { continue };
        if log.full() {
            eprintln!(
                "lbtrace: {} events kept, the most a check keeps: ending the observation",
                log.cap()
            );
            break;
        }
        let now = tokio::time::Instant::now();
        if now >= judge_at && judged.is_none_or(|(_, n)| n != log.events().len()) {
            let probes = ProbeSet::of(bp, Some(vp), args.probe.slow);
            let f = facts(
                args,
                &probes,
                log.events(),
                started.elapsed(),
                reasons,
                // Who made a reset changes no status: not needed to end early.
                None,
                None,
            );
            let all_pass = verdict::judge(&f)
                .steps
                .iter()
                .all(|s| s.status == verdict::Status::Pass);
            if all_pass {
                break;
            }
            let pause = JUDGE_EVERY.max(now.elapsed() * JUDGE_SHARE);
            judged = Some((now + pause, log.events().len()));
        }
    }
    Ok(Observed {
        log,
        probes: done,
        pending,
        stalls,
    })
}

#[cfg(test)]
mod tests {
    use lbtrace_common::tcp_flag::{ACK, SYN};

    use super::*;
    use crate::{event::Dir, testutil::pkt};

    #[test]
    fn the_log_keeps_at_most_its_cap_and_counts_the_rest() {
        let vip: SocketAddr = "10.0.0.10:80".parse().unwrap();
        let mut log = EventLog::new(vip, 3);
        log.extend((0..5).map(|i| pkt(i, Dir::In, "10.0.0.5:4000", "10.0.0.10:80", SYN, 1, 0)));
        log.extend([pkt(
            9,
            Dir::Out,
            "10.0.0.10:80",
            "10.0.0.5:4000",
            SYN | ACK,
            2,
            2,
        )]);
        assert!(log.full());
        assert_eq!(log.events().len(), 3);
        assert_eq!((log.not_kept(), log.client_syns()), (3, 5));
        let kept = log.into_sorted();
        assert_eq!(
            kept.iter().map(|e| e.ts_ns).collect::<Vec<_>>(),
            [0, 1_000_000, 2_000_000]
        );
    }

    fn retrans(ts: u64, from: &str, to: &str) -> KernelEvent {
        KernelEvent {
            hook: crate::event::Hook::TcpRetransmit,
            detail: Detail::Retrans,
            payload_len: 1448,
            mss: 1448,
            ..pkt(ts, Dir::Out, from, to, ACK, 1, 1)
        }
    }

    #[test]
    fn a_connection_is_stalled_at_its_third_retransmission_once_and_within_the_cap() {
        let mut st = Stalls::default();
        let lb = "10.10.1.1:80";
        // Two retransmissions, a SYN retransmitted, a packet: nothing yet.
        let mut syn = retrans(0, lb, "10.10.1.2:40000");
        syn.flags = SYN;
        let evs = [
            retrans(1, lb, "10.10.1.2:40000"),
            retrans(2, lb, "10.10.1.2:40000"),
            syn,
            pkt(3, Dir::Out, lb, "10.10.1.2:40000", ACK, 1, 1),
        ];
        assert!(st.newly_stalled(&evs).is_empty());
        let third = st.newly_stalled(&[retrans(4, lb, "10.10.1.2:40000")]);
        assert_eq!(
            third,
            [(lb.parse().unwrap(), "10.10.1.2:40000".parse().unwrap(), 3)]
        );
        // The fourth does not ask again.
        assert!(
            st.newly_stalled(&[retrans(5, lb, "10.10.1.2:40000")])
                .is_empty()
        );
        // Many stalled connections: the cap holds across calls (the queries started count).
        let many: Vec<KernelEvent> = (0..40u64)
            .flat_map(|c| {
                let to = format!("10.10.1.3:{}", 41000 + c);
                (0..3).map(move |i| retrans(10 + c * 3 + i, lb, &to))
            })
            .collect();
        let got = st.newly_stalled(&many);
        assert_eq!(got.len(), MAX_TCP_INFO - 1);
        assert!(got.iter().all(|&(_, _, n)| n == STALLED_AFTER));
    }

    #[test]
    fn the_cap_is_about_ten_mib() {
        let bytes = MAX_EVENTS * std::mem::size_of::<KernelEvent>();
        println!(
            "KernelEvent {} B, cap {MAX_EVENTS} events = {bytes} B",
            std::mem::size_of::<KernelEvent>()
        );
        assert!(bytes <= 16 << 20, "{bytes}");
    }
}
