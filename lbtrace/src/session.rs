//! What every tracing command (`trace`, `check`, `watch`) does around its own work: turn the
//! filter flags into a tracer config, say what is attached where, install the signal handlers
//! before anything is attached, write the ready file last, bound the run by `--duration`, drain
//! the rings, and print without ever letting a slow reader of stdout stall the drain.

use std::{
    io::Write,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::{
    cli::FilterArgs,
    endpoint::{Role, Watched},
    event::{self, KernelEvent},
    files,
    kernel::{self, Tracer, TracerConfig},
    netif,
};

/// Validates the filter flags against this namespace and turns them into a tracer config.
pub fn tracer_config(filter: &FilterArgs) -> Result<TracerConfig> {
    let links = netif::links()?;
    let mut endpoints: Vec<Watched> = Vec::new();
    for (e, role) in filter
        .vip
        .iter()
        .map(|e| (e, Role::Vip))
        .chain(filter.backend.iter().map(|e| (e, Role::Backend)))
    {
        if !endpoints.iter().any(|w| w.endpoint == *e) {
            endpoints.push(Watched { endpoint: *e, role });
        }
    }
    let names = if filter.iface.is_empty() {
        let vips: Vec<_> = filter.vip.iter().map(|e| e.addr).collect();
        let backends: Vec<_> = filter.backend.iter().map(|e| e.addr).collect();
        let found = netif::default_ifaces(&links, &vips, &backends)?;
        if found.is_empty() {
            bail!(
                "no interface in this network namespace carries traffic for the given addresses (no address or route matches): pass --iface NAME"
            );
        }
        found
    } else {
        filter.iface.clone()
    };
    let mut ifaces = Vec::new();
    for name in names {
        let Some(link) = links.iter().find(|l| l.name == name) else {
            bail!(
                "unknown interface {name:?}: no such interface in this network namespace (see `ip link`)"
            );
        };
        ifaces.push(link.clone());
    }
    Ok(TracerConfig {
        endpoints,
        ifaces,
        xdp: filter.xdp,
        data: filter.data,
        ring_bytes: filter.ring_size << 20,
        priority_ring_bytes: 1 << 20,
    })
}

/// Says on stderr what is traced where.
pub fn announce(tracer: &Tracer) {
    let eps: Vec<String> = tracer
        .endpoints
        .iter()
        .map(|w| format!("{} ({:?})", w.endpoint, w.role).to_lowercase())
        .collect();
    let mut per_iface: Vec<(String, Vec<&str>)> = Vec::new();
    for a in &tracer.attachments {
        match per_iface.iter_mut().find(|(n, _)| *n == a.iface) {
            Some((_, hooks)) => hooks.push(a.hook),
            None => per_iface.push((a.iface.clone(), vec![a.hook])),
        }
    }
    let ifs: Vec<String> = per_iface
        .iter()
        .map(|(n, h)| format!("{n} ({})", h.join(", ")))
        .collect();
    eprintln!("lbtrace: watching {}", eps.join(", "));
    eprintln!(
        "lbtrace: attached to {}; kernel drops via skb:kfree_skb{}",
        ifs.join(", "),
        if tracer.retransmits {
            ", retransmissions via tcp:tcp_retransmit_skb"
        } else {
            ""
        }
    );
    if tracer.resets.is_some() || tracer.received_resets {
        eprintln!(
            "lbtrace: resets of this host's TCP stack via {}",
            [
                tracer.resets.map(|_| "tcp:tcp_send_reset"),
                tracer.received_resets.then_some("tcp:tcp_receive_reset"),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(", ")
        );
    }
    for note in &tracer.notes {
        eprintln!("lbtrace: note: {note}");
    }
}

/// How this run traces, as the loader and the attachments actually came out: the
/// `capabilities` object of trace's summary, check's report and watch's health lines
/// (docs/output.md). What degrades is said in words once, by [`announce`]'s notes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Capabilities {
    /// `tcx` (bpf_links, 6.6+) or `legacy_tc` (clsact + cls_bpf filters).
    pub attach: &'static str,
    /// `off` (no `--xdp`), `on` (every traced interface's ingress through XDP) or `tc_fallback`
    /// (`--xdp`, but some ingress is traced with TC: the kernel refused the program, an XDP
    /// program was already there, or attaching failed).
    pub xdp: &'static str,
    /// `percpu` (per-CPU rings) or `ringbuf` (the BPF ring buffer variants, before 5.12).
    pub packet_rings: &'static str,
    /// `reason` (the kernel's drop reason) or `location` (the freeing function, before 5.17).
    pub drops: &'static str,
    /// `tracepoint` (the LB host's own retransmissions, `tcp:tcp_retransmit_skb`) or `off` (the
    /// kernel has no such tracepoint, or no BTF offsets for it).
    pub retransmissions: &'static str,
    /// Resets this host's TCP stack sent (`tcp:tcp_send_reset`): `all` (6.10 and later: every
    /// reset, with the kernel's reason), `sockets` (before 6.10: full sockets only, the answers
    /// for no socket and TIME_WAIT are not seen) or `off`.
    pub resets: &'static str,
}

impl Capabilities {
    /// Of a started tracer; `cfg` is what it was started with.
    pub fn of(tracer: &Tracer, cfg: &TracerConfig) -> Self {
        Self {
            retransmissions: if tracer.retransmits {
                "tracepoint"
            } else {
                "off"
            },
            resets: kernel::loader::ResetMode::name(tracer.resets),
            ..Self::new(
                tracer.tc_mode,
                tracer.layout.mode,
                tracer.drop_mode,
                cfg.xdp,
                &tracer.attachments,
            )
        }
    }

    fn new(
        tc: kernel::tracer::TcMode,
        rings: kernel::rings::RingMode,
        drops: kernel::loader::DropMode,
        xdp_asked: bool,
        attachments: &[kernel::Attachment],
    ) -> Self {
        use kernel::{loader::DropMode, rings::RingMode, tracer::TcMode};
        let ingress_by_tc = attachments
            .iter()
            .any(|a| matches!(a.hook, "tcx-ingress" | "tc-ingress"));
        Self {
            attach: match tc {
                TcMode::Tcx => "tcx",
                TcMode::Legacy => "legacy_tc",
            },
            xdp: match (xdp_asked, ingress_by_tc) {
                (false, _) => "off",
                (true, false) => "on",
                (true, true) => "tc_fallback",
            },
            packet_rings: match rings {
                RingMode::PerCpu => "percpu",
                RingMode::RingBuf => "ringbuf",
            },
            drops: match drops {
                DropMode::Reason => "reason",
                DropMode::Location => "location",
            },
            retransmissions: "off",
            resets: "off",
        }
    }
}

/// Checks, before anything is loaded, that the ready file can be created where it was asked for.
pub fn check_ready_file(path: Option<&Path>) -> Result<()> {
    match path {
        Some(p) => files::check_target(p).map(drop).context("--ready-file"),
        None => Ok(()),
    }
}

/// Creates the ready file (0600, never through a symlink). Call it last, once every program is
/// attached and every handler is installed: whoever waits for it may act at once.
pub fn write_ready_file(path: Option<&Path>) -> Result<()> {
    if let Some(p) = path {
        files::write_private(p, b"ready\n")
            .with_context(|| format!("creating the ready file {}", p.display()))?;
    }
    Ok(())
}

/// Resolves after `--duration`, or never.
pub async fn deadline(duration: Option<Duration>) {
    match duration {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Decodes every unread record, oldest first; records that do not decode are counted.
pub fn drain(rings: &mut kernel::rings::Rings, decode_errors: &mut u64) -> Vec<KernelEvent> {
    let mut batch = Vec::new();
    // Kernels without drop reasons: a drop's reason is the nearest one for its location.
    let locations = rings.locations.clone();
    rings.drain(|rec| match event::decode(rec) {
        Ok(mut ev) => {
            if let (Some(l), event::Detail::Drop { reason }) = (&locations, &mut ev.detail) {
                *reason = l.reason(ev.location, ev.flags);
            }
            batch.push(ev);
        }
        Err(_) => *decode_errors += 1,
    });
    // The rings are drained one after the other: restore time order.
    batch.sort_by_key(|e| e.ts_ns);
    reset_before_its_rst(&mut batch);
    batch
}

/// How long after the RST it made a `tcp_send_reset` event may be stamped: the tracepoint fires
/// once the RST has been handed to the device.
const RESET_AFTER_RST_NS: u64 = 1_000_000;

/// Puts each `tcp_send_reset` event of `batch` (in time order) right before the RST packet it
/// made (same tuple, leaving the host, at most [`RESET_AFTER_RST_NS`] earlier): the tracepoint
/// fires after the packet passed the egress hook, and a reader going event by event (the
/// tripwire) must know who made a RST when it sees it.
fn reset_before_its_rst(batch: &mut [KernelEvent]) {
    for i in 0..batch.len() {
        let e = &batch[i];
        if e.hook != event::Hook::TcpSendReset {
            continue;
        }
        let (src, dst, ts) = (e.src, e.dst, e.ts_ns);
        let rst = (0..i)
            .rev()
            .take_while(|&j| ts.saturating_sub(batch[j].ts_ns) <= RESET_AFTER_RST_NS)
            .find(|&j| {
                let p = &batch[j];
                matches!(p.detail, event::Detail::Packet)
                    && p.is_rst()
                    && p.dir == Some(event::Dir::Out)
                    && p.src == src
                    && p.dst == dst
            });
        if let Some(j) = rst {
            batch[j..=i].rotate_right(1);
        }
    }
}

/// The signals that end a run: SIGINT, SIGTERM and SIGHUP (a daemon that does not reload treats
/// a hang-up as a stop). Installed when created, so create it before anything is attached: a
/// signal that arrives from then on ends the run cleanly, and one that the parent had set to be
/// ignored (background jobs of a script ignore SIGINT) is handled again.
pub struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Signals {
    /// Installs the handlers (needs a tokio runtime).
    pub fn install() -> Result<Signals> {
        let install = |kind: SignalKind, name: &str| {
            signal(kind).with_context(|| format!("installing the {name} handler"))
        };
        Ok(Signals {
            int: install(SignalKind::interrupt(), "SIGINT")?,
            term: install(SignalKind::terminate(), "SIGTERM")?,
            hup: install(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    /// Resolves on the first of the three signals, with its name.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
            _ = self.hup.recv() => "SIGHUP",
        }
    }

    /// The shutdown future the commands take.
    pub async fn shutdown(mut self) {
        self.recv().await;
    }
}

/// Lines for stdout (or stderr) written by a thread of their own through a bounded queue, so
/// that a reader who stops reading never stalls the caller (the event drain, the signal
/// handling). When the queue is full the line is dropped and counted: [`Output::dropped`].
pub struct Output {
    tx: Mutex<Option<mpsc::SyncSender<String>>>,
    thread: Mutex<Option<thread::JoinHandle<()>>>,
    dropped: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    /// Lines queued, and lines the writer wrote out (flushed).
    queued: AtomicU64,
    written: Arc<AtomicU64>,
}

impl Output {
    /// A writer thread for `out` holding at most `capacity` lines not yet written.
    pub fn spawn(name: &str, out: impl Write + Send + 'static, capacity: usize) -> Output {
        let (tx, rx) = mpsc::sync_channel::<String>(capacity);
        let failed = Arc::new(AtomicU64::new(0));
        let written = Arc::new(AtomicU64::new(0));
        let (f, w) = (Arc::clone(&failed), Arc::clone(&written));
        let mut out = std::io::BufWriter::new(out);
        let thread = thread::Builder::new()
            .name(format!("lbtrace-{name}"))
            .spawn(move || {
                while let Ok(line) = rx.recv() {
                    let mut ok = out.write_all(line.as_bytes()).is_ok();
                    let mut lines = 1;
                    // Write what is queued before flushing: one flush per burst.
                    while let Ok(more) = rx.try_recv() {
                        ok &= out.write_all(more.as_bytes()).is_ok();
                        lines += 1;
                    }
                    ok &= out.flush().is_ok();
                    if ok {
                        w.fetch_add(lines, Ordering::Relaxed);
                    } else {
                        // The reader is gone (EPIPE): count what could not be written.
                        f.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        Output {
            // Without a thread to spare every line is dropped, and counted.
            tx: Mutex::new(thread.is_ok().then_some(tx)),
            thread: Mutex::new(thread.ok()),
            dropped: Arc::new(AtomicU64::new(0)),
            failed,
            queued: AtomicU64::new(0),
            written,
        }
    }

    /// Queues one line (a newline is added); never blocks. Returns false when it was dropped.
    pub fn line(&self, line: &str) -> bool {
        let mut s = String::with_capacity(line.len() + 1);
        s.push_str(line);
        s.push('\n');
        let sent = self
            .tx
            .lock()
            .is_ok_and(|tx| tx.as_ref().is_some_and(|tx| tx.try_send(s).is_ok()));
        if sent {
            self.queued.fetch_add(1, Ordering::Relaxed);
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        sent
    }

    /// Lines dropped because the queue was full (the reader too slow) or the writer was gone.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Bursts the writer could not write (the reader closed the pipe).
    pub fn write_errors(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Lets the writer finish what is queued, waiting at most `grace`: a reader that never reads
    /// again must not keep lbtrace from exiting. Returns the lines that never reached the
    /// reader: dropped from a full queue, or still unwritten when the grace ran out.
    /// Lines queued after this are dropped and counted.
    pub fn finish(&self, grace: Duration) -> u64 {
        if let Ok(mut tx) = self.tx.lock() {
            drop(tx.take());
        }
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = thread {
            let deadline = std::time::Instant::now() + grace;
            while !t.is_finished() && std::time::Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
        let unwritten = self
            .queued
            .load(Ordering::Relaxed)
            .saturating_sub(self.written.load(Ordering::Relaxed));
        self.dropped() + unwritten
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    /// A writer that blocks until told to go on, like a reader of a pipe that stopped reading.
    struct Stalled(mpsc::Receiver<()>, Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _ = self.0.recv();
            self.1.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn capabilities_say_what_was_picked() {
        use crate::kernel::{Attachment, loader::DropMode, rings::RingMode, tracer::TcMode};
        let at = |iface: &str, hook| Attachment {
            iface: iface.to_owned(),
            ifindex: 2,
            hook,
        };
        let tcx = [at("eth0", "tcx-ingress"), at("eth0", "tcx-egress")];
        let caps = Capabilities::new(TcMode::Tcx, RingMode::PerCpu, DropMode::Reason, false, &tcx);
        assert_eq!(
            serde_json::to_value(caps).unwrap(),
            serde_json::json!({"attach": "tcx", "xdp": "off", "packet_rings": "percpu", "drops": "reason", "retransmissions": "off", "resets": "off"})
        );
        // 5.10: legacy TC, the ring buffer, drops by location; --xdp refused by the kernel.
        let legacy = [at("eth0", "tc-ingress"), at("eth0", "tc-egress")];
        let caps = Capabilities::new(
            TcMode::Legacy,
            RingMode::RingBuf,
            DropMode::Location,
            true,
            &legacy,
        );
        assert_eq!(
            serde_json::to_value(caps).unwrap(),
            serde_json::json!({"attach": "legacy_tc", "xdp": "tc_fallback", "packet_rings": "ringbuf", "drops": "location", "retransmissions": "off", "resets": "off"})
        );
        // --xdp on two interfaces: on while XDP has every ingress, tc_fallback once one has TC.
        let mut both = vec![
            at("eth0", "xdp"),
            at("eth0", "tcx-egress"),
            at("eth1", "xdp"),
            at("eth1", "tcx-egress"),
        ];
        let xdp = |a: &[Attachment]| {
            Capabilities::new(TcMode::Tcx, RingMode::PerCpu, DropMode::Reason, true, a).xdp
        };
        assert_eq!(xdp(&both), "on");
        both[2] = at("eth1", "tcx-ingress");
        assert_eq!(xdp(&both), "tc_fallback");
    }

    #[test]
    fn a_stalled_reader_never_blocks_the_caller_and_drops_are_counted() {
        let (go, wait) = mpsc::channel();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let out = Output::spawn("test", Stalled(wait, Arc::clone(&seen)), 4);
        let started = std::time::Instant::now();
        let mut sent = 0;
        for i in 0..1000 {
            if out.line(&format!("line {i}")) {
                sent += 1;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        // The queue holds 4 lines, the stalled writer those it took before it stalled; the rest
        // are dropped and counted.
        assert!(sent < 1000 / 2, "{sent} lines queued");
        assert_eq!(out.dropped(), 1000 - sent);
        // A writer that never gets going again does not keep the caller from finishing, and
        // nothing it did not write goes uncounted.
        assert_eq!(out.finish(Duration::from_millis(50)), 1000);
        drop(go);
    }

    #[test]
    fn everything_queued_is_written_on_finish() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        struct Sink(Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Sink {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let out = Output::spawn("test", Sink(Arc::clone(&seen)), 1024);
        for i in 0..100 {
            assert!(out.line(&format!("{i}")));
        }
        assert_eq!(out.finish(Duration::from_secs(5)), 0);
        let text = String::from_utf8(seen.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 100);
        assert_eq!(text.lines().last(), Some("99"));
    }
}

#[cfg(test)]
mod reset_order_tests {
    use lbtrace_common::tcp_flag::{ACK, RST, SYN};

    use super::*;
    use crate::{
        event::{Detail, Dir, Hook, KernelEvent, ResetInfo},
        testutil::pkt,
    };

    fn sent_reset(ms: u64, us: u64, src: &str, dst: &str) -> KernelEvent {
        KernelEvent {
            ts_ns: ms * 1_000_000 + us * 1000,
            hook: Hook::TcpSendReset,
            ifindex: 0,
            detail: Detail::Reset(ResetInfo {
                state: Some(7),
                active: true,
                reason: None,
            }),
            ..pkt(ms, Dir::Out, src, dst, RST | ACK, 0, 0)
        }
    }

    #[test]
    fn a_reset_event_goes_right_before_the_rst_it_made() {
        let (vip, c) = ("10.0.0.10:80", "10.0.0.5:4000");
        let mut batch = vec![
            pkt(1, Dir::In, c, vip, SYN, 1, 0),
            pkt(5, Dir::Out, vip, c, RST | ACK, 9, 2),
            pkt(5, Dir::In, "10.0.0.6:4001", vip, SYN, 1, 0),
            sent_reset(5, 20, vip, c),
        ];
        reset_before_its_rst(&mut batch);
        let hooks: Vec<Hook> = batch.iter().map(|e| e.hook).collect();
        assert_eq!(hooks, [Hook::Tc, Hook::TcpSendReset, Hook::Tc, Hook::Tc]);
        assert!(batch[2].is_rst() && batch[3].is_syn());
        // Another tuple's RST, or one too long before, is not it.
        let mut other = vec![
            pkt(5, Dir::Out, vip, "10.0.0.7:4002", RST | ACK, 9, 2),
            sent_reset(5, 20, vip, c),
            pkt(1, Dir::Out, vip, c, RST | ACK, 9, 2),
        ];
        other.sort_by_key(|e| e.ts_ns);
        let before = other.clone();
        reset_before_its_rst(&mut other);
        assert_eq!(other, before);
    }
}
