//! The benchmark's network: client ── lb ── server in three namespaces, the lb forwarding and
//! DNATing the VIP to the server with nftables (an L4 load balancer), and guards for everything:
//! dropping the [`Lab`] (also on error or Ctrl-C) kills its processes and deletes its namespaces.
//!
//! ```text
//!  client  10.77.1.2 ──veth── 10.77.1.1 (ext)  lb  (int) 10.77.2.1 ──veth── 10.77.2.2  server
//!                                VIP 10.77.9.10:{5201,7000} DNAT to 10.77.2.2
//! ```

use std::{
    collections::BTreeMap,
    fs,
    os::fd::{AsRawFd as _, OwnedFd},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
pub use lbtrace_integration::lab::{netns::Netns, process::Proc};
use lbtrace_integration::lab::{process, try_veth};
use tempfile::TempDir;

use super::{
    bpf::{self, EmptyProg},
    sys,
};

pub const VIP: &str = "10.77.9.10";
pub const SERVER: &str = "10.77.2.2";
pub const IPERF_PORT: u16 = 5201;
pub const CONN_PORT: u16 = 7000;

/// The `Tcp:` line of /proc/net/snmp in `ns`, by field name.
pub fn tcp_snmp(ns: &Netns) -> Result<BTreeMap<String, i64>> {
    let text = ns.try_exec(&["cat", "/proc/net/snmp"])?;
    let tcp: Vec<&str> = text.lines().filter(|l| l.starts_with("Tcp:")).collect();
    let [head, values] = tcp[..] else {
        bail!("no Tcp lines in /proc/net/snmp of {}", ns.name());
    };
    Ok(head
        .split_whitespace()
        .skip(1)
        .zip(values.split_whitespace().skip(1))
        .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
        .collect())
}

/// Waits until `proc` is `what` (`ready` holds), giving up on Ctrl-C.
fn wait_until(
    proc: &mut Proc,
    what: &str,
    timeout: Duration,
    mut ready: impl FnMut(&Proc) -> bool,
) -> Result<()> {
    proc.try_wait_until(what, timeout, |p| {
        sys::interrupted()?;
        Ok(ready(p))
    })
}

/// The three namespaces. Fields drop in order: the iperf3 server, the namespaces, the directory.
pub struct Lab {
    iperf_server: Option<Proc>,
    pub client: Netns,
    pub lb: Netns,
    pub server: Netns,
    /// The lb's interfaces: towards the client (holds nothing but the route) and the server.
    pub ext: String,
    pub int: String,
    pub dir: TempDir,
}

impl Lab {
    pub fn new() -> Result<Lab> {
        let p = format!("lbb{}", std::process::id() % 100_000);
        let dir = tempfile::Builder::new()
            .prefix("lbtrace-bench-")
            .tempdir()
            .context("creating a temporary directory")?;
        let client = Netns::try_create(&format!("{p}-client"))?;
        let lb = Netns::try_create(&format!("{p}-lb"))?;
        let server = Netns::try_create(&format!("{p}-server"))?;
        let mut lab = Lab {
            iperf_server: None,
            client,
            lb,
            server,
            ext: format!("{p}e"),
            int: format!("{p}i"),
            dir,
        };
        lab.wire(&p)?;
        Ok(lab)
    }

    fn wire(&mut self, p: &str) -> Result<()> {
        let (c_if, s_if) = (format!("{p}c"), format!("{p}s"));
        try_veth(&self.client, &c_if, &self.lb, &self.ext)?;
        try_veth(&self.lb, &self.int, &self.server, &s_if)?;
        self.client
            .try_exec(&["ip", "addr", "add", "10.77.1.2/24", "dev", &c_if])?;
        self.lb
            .try_exec(&["ip", "addr", "add", "10.77.1.1/24", "dev", &self.ext])?;
        self.lb
            .try_exec(&["ip", "addr", "add", "10.77.2.1/24", "dev", &self.int])?;
        self.server
            .try_exec(&["ip", "addr", "add", "10.77.2.2/24", "dev", &s_if])?;
        self.client
            .try_exec(&["ip", "route", "add", "default", "via", "10.77.1.1"])?;
        self.server
            .try_exec(&["ip", "route", "add", "default", "via", "10.77.2.1"])?;
        self.lb.try_sysctl("net.ipv4.ip_forward", "1")?;
        // Ports are reused quickly by the connection-rate test.
        self.client
            .try_sysctl("net.ipv4.ip_local_port_range", "1024 65000")?;
        let ruleset = format!(
            "table ip lbbench {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    ip daddr {VIP} tcp dport {IPERF_PORT} dnat to {SERVER}:{IPERF_PORT}\n    ip daddr {VIP} tcp dport {CONN_PORT} dnat to {SERVER}:{CONN_PORT}\n  }}\n}}\n"
        );
        let path = self.dir.path().join("lb.nft");
        fs::write(&path, ruleset)?;
        self.lb.try_exec(&["nft", "-f", &path.to_string_lossy()])?;
        // Closed connections leave conntrack quickly: the connection-rate test makes many.
        self.lb
            .try_sysctl("net.netfilter.nf_conntrack_tcp_timeout_time_wait", "1")?;
        Ok(())
    }

    /// Starts `iperf3 -s` in the server namespace (once) and waits until it listens.
    pub fn iperf_server(&mut self) -> Result<()> {
        if self.iperf_server.is_some() {
            return Ok(());
        }
        let port = IPERF_PORT.to_string();
        let proc = self.server.try_spawn(
            "iperf3-server",
            self.dir.path(),
            &["iperf3", "-s", "-p", &port],
        )?;
        self.iperf_server = Some(proc);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.server.listening(IPERF_PORT) {
            sys::interrupted()?;
            if Instant::now() >= deadline {
                bail!("iperf3 -s does not listen after 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// `iperf3 -c VIP -t secs [-P streams] -J` from the client: received Gbit/s.
    pub fn iperf(&self, secs: u32, streams: u32) -> Result<f64> {
        let (t, p, port) = (
            secs.to_string(),
            streams.to_string(),
            IPERF_PORT.to_string(),
        );
        let argv = ["iperf3", "-c", VIP, "-p", &port, "-t", &t, "-P", &p, "-J"];
        let mut last = None;
        for _ in 0..3 {
            sys::interrupted()?;
            let out = process::try_output(&self.client.argv(&argv))?;
            let text = String::from_utf8_lossy(&out.stdout);
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
                return Ok(bps / 1e9);
            }
            // "the server is busy running a test": the previous test is still being torn down.
            last = Some(v["error"].as_str().map_or_else(
                || String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                str::to_owned,
            ));
            std::thread::sleep(Duration::from_millis(300));
        }
        bail!("iperf3 -P {streams} failed: {}", last.unwrap_or_default())
    }
}

/// A tracer or capture running in the lb namespace.
pub enum Tool {
    /// An empty XDP program (XDP_PASS) on both lb interfaces: what attaching XDP to a veth costs
    /// by itself.
    EmptyXdp,
    /// An empty TC program (TCX_NEXT) on both lb interfaces, ingress and egress (where `watch`
    /// attaches): what the TCX hooks cost by themselves.
    EmptyTcx,
    /// `lbtrace watch` (TCX, or XDP on ingress).
    Watch { xdp: bool },
    /// An empty TC program as a legacy TC filter (clsact + cls_bpf direct-action, `tc filter
    /// ... bpf object-pinned`) on both lb interfaces, ingress and egress: what the cls_bpf hooks
    /// cost by themselves.
    EmptyLegacyTc,
    /// `lbtrace watch` attached with legacy TC (`LBTRACE_ATTACH=tc`, as below 6.6).
    WatchLegacyTc,
    /// `lbtrace trace --format json` to a file.
    Trace,
    /// One `tcpdump -w` per lb interface, filtered to the watched tuples' SYN/FIN/RST.
    Tcpdump,
}

impl Tool {
    pub fn label(&self) -> &'static str {
        match self {
            Tool::EmptyXdp => "empty XDP program",
            Tool::EmptyTcx => "empty TCX program",
            Tool::Watch { xdp: false } => "lbtrace watch (TCX)",
            Tool::Watch { xdp: true } => "lbtrace watch --xdp",
            Tool::EmptyLegacyTc => "empty legacy TC filter",
            Tool::WatchLegacyTc => "lbtrace watch (legacy TC)",
            Tool::Trace => "lbtrace trace --format json",
            Tool::Tcpdump => "tcpdump (2, filtered)",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    EmptyProg,
    Watch,
    Trace,
    Tcpdump,
}

/// A running tool: its processes, or its bpf_links (closing them detaches), or the clsact qdiscs
/// its filters hang on (deleted on stop; the namespace goes with the lab in any case).
pub struct Running {
    procs: Vec<Proc>,
    links: Vec<OwnedFd>,
    /// `ip netns exec ... tc qdisc del ...` for each.
    qdiscs: Vec<Vec<String>>,
    kind: Kind,
}

/// What a tool reported when it stopped.
#[derive(Debug, Default)]
pub struct Report {
    /// Control packets it recorded (events delivered / packets captured).
    pub recorded: u64,
    /// Events lost by the kernel (lbtrace) / packets dropped by the kernel (tcpdump).
    pub lost: u64,
    /// `lbtrace watch`: packets its programs parsed (every run of a TC / XDP program).
    pub packets: u64,
}

impl Running {
    pub fn start(lab: &Lab, tool: &Tool, lbtrace: &Path, port: u16, tag: &str) -> Result<Running> {
        let dir = lab.dir.path();
        let vip = format!("{VIP}:{port}");
        let backend = format!("{SERVER}:{port}");
        let ifaces = [lab.ext.as_str(), lab.int.as_str()];
        let bin = lbtrace.to_string_lossy().into_owned();
        let ready = dir.join(format!("{tag}.ready"));
        let _ = fs::remove_file(&ready);
        let lbtrace_argv = |cmd: &str, extra: &[&str]| -> Vec<String> {
            let mut v: Vec<String> = vec![bin.clone(), cmd.to_owned()];
            v.extend(["--vip", &vip, "--backend", &backend].map(str::to_owned));
            for i in ifaces {
                v.extend(["--iface".to_owned(), i.to_owned()]);
            }
            v.extend([
                "--ready-file".to_owned(),
                ready.to_string_lossy().into_owned(),
            ]);
            v.extend(extra.iter().map(|s| (*s).to_owned()));
            v
        };
        let (procs, kind) = match tool {
            Tool::EmptyXdp | Tool::EmptyTcx => {
                let xdp = matches!(tool, Tool::EmptyXdp);
                let links = attach_empty(&lab.lb, &ifaces, xdp)?;
                return Ok(Running {
                    procs: Vec::new(),
                    links,
                    qdiscs: Vec::new(),
                    kind: Kind::EmptyProg,
                });
            }
            Tool::EmptyLegacyTc => {
                let qdiscs = attach_empty_legacy(&lab.lb, dir, &ifaces)?;
                return Ok(Running {
                    procs: Vec::new(),
                    links: Vec::new(),
                    qdiscs,
                    kind: Kind::EmptyProg,
                });
            }
            Tool::WatchLegacyTc => {
                let sock = dir
                    .join(format!("{tag}.sock"))
                    .to_string_lossy()
                    .into_owned();
                let mut argv = vec![
                    "env".to_owned(),
                    "LBTRACE_ATTACH=tc".to_owned(),
                    format!("LBTRACE_RUN_DIR={}", dir.join("run").display()),
                ];
                argv.extend(lbtrace_argv("watch", &["--socket", &sock]));
                let mut p = lab.lb.try_spawn(tag, dir, &argv)?;
                wait_until(&mut p, "ready", Duration::from_secs(30), |_| ready.exists())?;
                (vec![p], Kind::Watch)
            }
            Tool::Watch { xdp } => {
                let sock = dir
                    .join(format!("{tag}.sock"))
                    .to_string_lossy()
                    .into_owned();
                let mut extra = vec!["--socket", &sock];
                if *xdp {
                    extra.push("--xdp");
                }
                let mut p = lab.lb.try_spawn(tag, dir, &lbtrace_argv("watch", &extra))?;
                wait_until(&mut p, "ready", Duration::from_secs(30), |_| ready.exists())?;
                (vec![p], Kind::Watch)
            }
            Tool::Trace => {
                let mut p =
                    lab.lb
                        .try_spawn(tag, dir, &lbtrace_argv("trace", &["--format", "json"]))?;
                wait_until(&mut p, "ready", Duration::from_secs(30), |_| ready.exists())?;
                (vec![p], Kind::Trace)
            }
            Tool::Tcpdump => {
                let filter = format!(
                    "tcp[tcpflags] & (tcp-syn|tcp-fin|tcp-rst) != 0 and ((host {VIP} and port {port}) or (host {SERVER} and port {port}))"
                );
                let mut procs = Vec::new();
                for i in ifaces {
                    let file = dir.join(format!("{tag}-{i}.pcap"));
                    let argv = [
                        "tcpdump",
                        "-i",
                        i,
                        "-Z",
                        "root",
                        "-w",
                        &file.to_string_lossy(),
                        &filter,
                    ];
                    procs.push(lab.lb.try_spawn(&format!("{tag}-{i}"), dir, &argv)?);
                }
                for p in &mut procs {
                    wait_until(p, "listening", Duration::from_secs(10), |p| {
                        p.stderr().contains("listening on")
                    })?;
                }
                (procs, Kind::Tcpdump)
            }
        };
        Ok(Running {
            procs,
            links: Vec::new(),
            qdiscs: Vec::new(),
            kind,
        })
    }

    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(Proc::pid).collect()
    }

    /// CPU seconds of all its processes.
    pub fn cpu_seconds(&self) -> Result<f64> {
        self.pids()
            .into_iter()
            .map(sys::proc_cpu_seconds)
            .sum::<Result<f64>>()
    }

    /// Peak RSS (VmHWM) of all its processes, MiB.
    pub fn peak_rss_mib(&self) -> Result<f64> {
        Ok(self
            .pids()
            .into_iter()
            .map(|p| sys::proc_status_kib(p, "VmHWM"))
            .sum::<Result<u64>>()? as f64
            / 1024.0)
    }

    /// Stops the tool (SIGINT: lbtrace drains and prints its summary, tcpdump its counts).
    pub fn stop(mut self) -> Result<Report> {
        let mut report = Report::default();
        self.links.clear();
        for argv in std::mem::take(&mut self.qdiscs) {
            process::try_run(&argv)?;
        }
        if self.kind == Kind::Tcpdump {
            // tcpdump reads its capture ring a block at a time (a block is handed over when full
            // or after 1 s) and stops at SIGINT without reading the block being filled: give
            // the last packets that second, as lbtrace gets its final drain.
            sys::sleep(Duration::from_millis(1100))?;
        }
        for p in std::mem::take(&mut self.procs) {
            let done = p.try_stop(libc::SIGINT, Duration::from_secs(20))?;
            let err = done.stderr;
            match self.kind {
                Kind::EmptyProg => {}
                Kind::Watch => {
                    // "lbtrace: tripwire stopped: N connections recorded (E evicted), X events, Y lost,
                    // P packets parsed"
                    let line = err
                        .lines()
                        .find(|l| l.contains("tripwire stopped"))
                        .with_context(|| format!("no final line from lbtrace watch: {err}"))?;
                    report.recorded += number_before(line, " events").unwrap_or(0);
                    report.lost += number_before(line, " lost").unwrap_or(0);
                    report.packets += number_before(line, " packets parsed").unwrap_or(0);
                }
                Kind::Trace => {
                    let out = done.stdout;
                    let summary = out
                        .lines()
                        .rev()
                        .find_map(|l| {
                            serde_json::from_str::<serde_json::Value>(l)
                                .ok()
                                .filter(|v| v["type"] == "summary")
                        })
                        .with_context(|| format!("no summary from lbtrace trace: {err}"))?;
                    report.recorded += summary["events"].as_u64().unwrap_or(0);
                    report.lost += summary["lost"].as_u64().unwrap_or(0);
                }
                Kind::Tcpdump => {
                    report.recorded += number_before(&err, " packets captured").unwrap_or(0);
                    report.lost += number_before(&err, " packets dropped by kernel").unwrap_or(0);
                }
            }
        }
        Ok(report)
    }
}

/// Loads an empty XDP program (`xdp`) or TC program and links it to `ifaces` of `ns` (XDP; TCX
/// ingress and egress), from a thread moved there.
fn attach_empty(ns: &Netns, ifaces: &[&str], xdp: bool) -> Result<Vec<OwnedFd>> {
    let (prog, hooks): (_, &[u32]) = if xdp {
        (
            EmptyProg::load(bpf::BPF_PROG_TYPE_XDP, bpf::XDP_PASS)?,
            &[bpf::BPF_XDP],
        )
    } else {
        (
            EmptyProg::load(bpf::BPF_PROG_TYPE_SCHED_CLS, bpf::TC_ACT_UNSPEC)?,
            &[bpf::BPF_TCX_INGRESS, bpf::BPF_TCX_EGRESS],
        )
    };
    let f = fs::File::open(format!("/run/netns/{}", ns.name()))?;
    std::thread::scope(|s| {
        s.spawn(|| -> Result<Vec<OwnedFd>> {
            // SAFETY: setns on a valid namespace fd; it changes only this thread.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error()).context("setns");
            }
            let mut links = Vec::new();
            for i in ifaces {
                let name = std::ffi::CString::new(*i)?;
                // SAFETY: a NUL-terminated name.
                let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
                if idx == 0 {
                    bail!("no interface {i} in {}", ns.name());
                }
                for &hook in hooks {
                    links.push(bpf::link(prog.fd(), idx, hook)?);
                }
            }
            Ok(links)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the attaching thread panicked"))?
    })
}

/// A bpffs mounted for this process, unmounted (with its pins) when dropped.
struct BpfFs(std::ffi::CString);

impl BpfFs {
    fn mount(at: &Path) -> Result<BpfFs> {
        fs::create_dir_all(at)?;
        let path = std::ffi::CString::new(at.as_os_str().as_encoded_bytes())?;
        // SAFETY: NUL-terminated strings; no data argument.
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                path.as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("mounting a bpffs on {}", at.display()));
        }
        Ok(BpfFs(path))
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        // SAFETY: a NUL-terminated path this process mounted.
        unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Loads an empty TC program, pins it in a bpffs mounted in `dir` for the time it takes
/// (`ip netns exec` hides the host's /sys/fs/bpf), and adds it as a cls_bpf direct-action filter
/// on `ifaces` of `ns`, ingress and egress, on clsact qdiscs of its own: returned, to be deleted
/// with their filters.
fn attach_empty_legacy(ns: &Netns, dir: &Path, ifaces: &[&str]) -> Result<Vec<Vec<String>>> {
    let fs_dir = dir.join("bpffs");
    let _bpffs = BpfFs::mount(&fs_dir)?;
    let pin = fs_dir.join("empty_tc");
    let prog = EmptyProg::load(bpf::BPF_PROG_TYPE_SCHED_CLS, bpf::TC_ACT_UNSPEC)?;
    bpf::pin(prog.fd(), &pin)?;
    let pin = pin.to_string_lossy().into_owned();
    let mut qdiscs = Vec::new();
    for &i in ifaces {
        ns.try_exec(&["tc", "qdisc", "add", "dev", i, "clsact"])?;
        qdiscs.push(ns.argv(&["tc", "qdisc", "del", "dev", i, "clsact"]));
        for hook in ["ingress", "egress"] {
            ns.try_exec(&[
                "tc",
                "filter",
                "add",
                "dev",
                i,
                hook,
                "bpf",
                "object-pinned",
                &pin,
                "direct-action",
            ])?;
        }
    }
    // The filters hold the program; the pin goes with the bpffs.
    Ok(qdiscs)
}

/// The integer right before `suffix` in `text` ("12 packets captured" -> 12).
fn number_before(text: &str, suffix: &str) -> Option<u64> {
    let at = text.find(suffix)?;
    let head = text[..at].trim_end();
    let start = head
        .rfind(|c: char| !c.is_ascii_digit())
        .map_or(0, |i| i + 1);
    head[start..].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_before_words() {
        let l = "lbtrace: tripwire stopped: 12 connections recorded (0 evicted), 96 events, 3 lost, 4567 packets parsed";
        assert_eq!(number_before(l, " events"), Some(96));
        assert_eq!(number_before(l, " lost"), Some(3));
        assert_eq!(number_before(l, " packets parsed"), Some(4567));
        let t =
            "\n120 packets captured\n130 packets received by filter\n0 packets dropped by kernel\n";
        assert_eq!(number_before(t, " packets captured"), Some(120));
        assert_eq!(number_before(t, " packets dropped by kernel"), Some(0));
    }
}
