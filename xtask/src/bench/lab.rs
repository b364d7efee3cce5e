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
    ffi::OsStr,
    fs,
    os::fd::{AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    bpf::{self, EmptyProg},
    sys,
};

pub const VIP: &str = "10.77.9.10";
pub const SERVER: &str = "10.77.2.2";
pub const IPERF_PORT: u16 = 5201;
pub const CONN_PORT: u16 = 7000;

fn describe<S: AsRef<OsStr>>(argv: &[S]) -> String {
    argv.iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `argv`; its stdout, or an error carrying its stderr.
pub fn run<S: AsRef<OsStr>>(argv: &[S]) -> Result<String> {
    let (prog, args) = argv.split_first().context("empty command")?;
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{}`", describe(argv)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            describe(argv),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Result<TempDir> {
        let path = std::env::temp_dir().join(prefix);
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A named network namespace, deleted (after killing what still runs in it) on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn create(name: &str) -> Result<Netns> {
        run(&["ip", "netns", "add", name])?;
        let ns = Netns {
            name: name.to_owned(),
        };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn argv<S: AsRef<OsStr>>(&self, argv: &[S]) -> Vec<String> {
        ["ip", "netns", "exec", &self.name]
            .into_iter()
            .map(str::to_owned)
            .chain(
                argv.iter()
                    .map(|a| a.as_ref().to_string_lossy().into_owned()),
            )
            .collect()
    }

    pub fn exec<S: AsRef<OsStr>>(&self, argv: &[S]) -> Result<String> {
        run(&self.argv(argv))
    }

    /// A long-running `argv` in the namespace (`ip netns exec` execs it: the pid is its own).
    pub fn spawn<S: AsRef<OsStr>>(&self, name: &str, dir: &Path, argv: &[S]) -> Result<Proc> {
        Proc::spawn(name, dir, &self.argv(argv))
    }

    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec(&["sysctl", "-q", "-w", &format!("{key}={value}")])
            .map(drop)
    }

    /// The `Tcp:` line of /proc/net/snmp, by field name.
    pub fn tcp_snmp(&self) -> Result<BTreeMap<String, i64>> {
        let text = self.exec(&["cat", "/proc/net/snmp"])?;
        let tcp: Vec<&str> = text.lines().filter(|l| l.starts_with("Tcp:")).collect();
        let [head, values] = tcp[..] else {
            bail!("no Tcp lines in /proc/net/snmp of {}", self.name);
        };
        Ok(head
            .split_whitespace()
            .skip(1)
            .zip(values.split_whitespace().skip(1))
            .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
            .collect())
    }

    fn listening(&self, port: u16) -> bool {
        let Ok(out) = self.exec(&["ss", "-Hltn"]) else {
            return false;
        };
        let suffix = format!(":{port}");
        out.lines()
            .filter_map(|l| l.split_whitespace().nth(3))
            .any(|local| local.ends_with(&suffix))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(pids) = run(&["ip", "netns", "pids", &self.name]) {
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                // SAFETY: kill(2) with plain integers.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        if let Err(e) = run(&["ip", "netns", "del", &self.name]) {
            eprintln!("xtask: bench: warning: {e:#}");
        }
    }
}

/// A child process with stdout and stderr in files; SIGKILLed and reaped on drop.
pub struct Proc {
    name: String,
    child: Option<Child>,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Proc {
    pub fn spawn<S: AsRef<OsStr>>(name: &str, dir: &Path, argv: &[S]) -> Result<Proc> {
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.stderr"));
        let (prog, args) = argv.split_first().context("empty command")?;
        let child = Command::new(prog)
            .args(args)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout)?)
            .stderr(fs::File::create(&stderr)?)
            .spawn()
            .with_context(|| format!("cannot start {name} (`{}`)", describe(argv)))?;
        Ok(Proc {
            name: name.to_owned(),
            child: Some(child),
            stdout,
            stderr,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn stdout_text(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn signal(&self, sig: libc::c_int) {
        if let (Some(_), Ok(pid)) = (&self.child, i32::try_from(self.pid())) {
            // SAFETY: kill(2) with plain integers, on our own child.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits until `ready` holds; fails if the process exits first or `timeout` passes.
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut(&Proc) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            sys::interrupted()?;
            if ready(self) {
                return Ok(());
            }
            if let Some(status) = self.exited() {
                bail!(
                    "{} exited ({status}) before {what}: {}",
                    self.name,
                    self.stderr_text().trim()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} not {what} after {timeout:?}: {}",
                    self.name,
                    self.stderr_text().trim()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `sig`, waits up to `timeout` for the exit; fails (and kills it) if it does not end.
    pub fn stop(&mut self, sig: libc::c_int, timeout: Duration) -> Result<ExitStatus> {
        self.signal(sig);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.kill();
                bail!(
                    "{} did not exit within {timeout:?} of signal {sig}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
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
        let dir = TempDir::new(&format!("lbtrace-bench-{}", std::process::id()))?;
        let client = Netns::create(&format!("{p}-client"))?;
        let lb = Netns::create(&format!("{p}-lb"))?;
        let server = Netns::create(&format!("{p}-server"))?;
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
        veth(&self.client, &c_if, &self.lb, &self.ext)?;
        veth(&self.lb, &self.int, &self.server, &s_if)?;
        self.client
            .exec(&["ip", "addr", "add", "10.77.1.2/24", "dev", &c_if])?;
        self.lb
            .exec(&["ip", "addr", "add", "10.77.1.1/24", "dev", &self.ext])?;
        self.lb
            .exec(&["ip", "addr", "add", "10.77.2.1/24", "dev", &self.int])?;
        self.server
            .exec(&["ip", "addr", "add", "10.77.2.2/24", "dev", &s_if])?;
        self.client
            .exec(&["ip", "route", "add", "default", "via", "10.77.1.1"])?;
        self.server
            .exec(&["ip", "route", "add", "default", "via", "10.77.2.1"])?;
        self.lb.sysctl("net.ipv4.ip_forward", "1")?;
        // Ports are reused quickly by the connection-rate test.
        self.client
            .sysctl("net.ipv4.ip_local_port_range", "1024 65000")?;
        let ruleset = format!(
            "table ip lbbench {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    ip daddr {VIP} tcp dport {IPERF_PORT} dnat to {SERVER}:{IPERF_PORT}\n    ip daddr {VIP} tcp dport {CONN_PORT} dnat to {SERVER}:{CONN_PORT}\n  }}\n}}\n"
        );
        let path = self.dir.path().join("lb.nft");
        fs::write(&path, ruleset)?;
        self.lb.exec(&["nft", "-f", &path.to_string_lossy()])?;
        // Closed connections leave conntrack quickly: the connection-rate test makes many.
        self.lb
            .sysctl("net.netfilter.nf_conntrack_tcp_timeout_time_wait", "1")?;
        Ok(())
    }

    /// Starts `iperf3 -s` in the server namespace (once) and waits until it listens.
    pub fn iperf_server(&mut self) -> Result<()> {
        if self.iperf_server.is_some() {
            return Ok(());
        }
        let port = IPERF_PORT.to_string();
        let proc = self.server.spawn(
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
            let out = Command::new("ip")
                .args(["netns", "exec", self.client.name()])
                .args(argv)
                .stdin(Stdio::null())
                .output()
                .context("running iperf3")?;
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

fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    run(&[
        "ip",
        "link",
        "add",
        a_if,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ])?;
    a.exec(&["ip", "link", "set", a_if, "up"])?;
    b.exec(&["ip", "link", "set", b_if, "up"])?;
    Ok(())
}

/// A tracer or capture running in the lb namespace.
pub enum Tool {
    /// An empty XDP program (XDP_PASS) on both lb interfaces: what attaching XDP to a veth costs
    /// by itself.
    EmptyXdp,
    /// `lbtrace watch` (TCX, or XDP on ingress).
    Watch { xdp: bool },
    /// `lbtrace trace --format json` to a file.
    Trace,
    /// One `tcpdump -w` per lb interface, filtered to the watched tuples' SYN/FIN/RST.
    Tcpdump,
}

impl Tool {
    pub fn label(&self) -> &'static str {
        match self {
            Tool::EmptyXdp => "empty XDP program",
            Tool::Watch { xdp: false } => "lbtrace watch (TCX)",
            Tool::Watch { xdp: true } => "lbtrace watch --xdp",
            Tool::Trace => "lbtrace trace --format json",
            Tool::Tcpdump => "tcpdump (2, filtered)",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    EmptyXdp,
    Watch,
    Trace,
    Tcpdump,
}

/// A running tool: its processes, or its bpf_links (closing them detaches).
pub struct Running {
    procs: Vec<Proc>,
    links: Vec<OwnedFd>,
    kind: Kind,
}

/// What a tool reported when it stopped.
#[derive(Debug, Default)]
pub struct Report {
    /// Control packets it recorded (events delivered / packets captured).
    pub recorded: u64,
    /// Events lost by the kernel (lbtrace) / packets dropped by the kernel (tcpdump).
    pub lost: u64,
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
            Tool::EmptyXdp => {
                let links = attach_empty_xdp(&lab.lb, &ifaces)?;
                return Ok(Running {
                    procs: Vec::new(),
                    links,
                    kind: Kind::EmptyXdp,
                });
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
                let mut p = lab.lb.spawn(tag, dir, &lbtrace_argv("watch", &extra))?;
                p.wait_until("ready", Duration::from_secs(30), |_| ready.exists())?;
                (vec![p], Kind::Watch)
            }
            Tool::Trace => {
                let mut p =
                    lab.lb
                        .spawn(tag, dir, &lbtrace_argv("trace", &["--format", "json"]))?;
                p.wait_until("ready", Duration::from_secs(30), |_| ready.exists())?;
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
                    procs.push(lab.lb.spawn(&format!("{tag}-{i}"), dir, &argv)?);
                }
                for p in &mut procs {
                    p.wait_until("listening", Duration::from_secs(10), |p| {
                        p.stderr_text().contains("listening on")
                    })?;
                }
                (procs, Kind::Tcpdump)
            }
        };
        Ok(Running {
            procs,
            links: Vec::new(),
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
        if self.kind == Kind::Tcpdump {
            // tcpdump reads its capture ring a block at a time (a block is handed over when full
            // or after 1 s) and stops at SIGINT without reading the block being filled: give
            // the last packets that second, as lbtrace gets its final drain.
            sys::sleep(Duration::from_millis(1100))?;
        }
        for p in &mut self.procs {
            p.stop(libc::SIGINT, Duration::from_secs(20))?;
            let err = p.stderr_text();
            match self.kind {
                Kind::EmptyXdp => {}
                Kind::Watch => {
                    // "lbtrace: tripwire stopped: N connections recorded (E evicted), X events, Y lost"
                    let line = err
                        .lines()
                        .find(|l| l.contains("tripwire stopped"))
                        .with_context(|| format!("no final line from lbtrace watch: {err}"))?;
                    report.recorded += number_before(line, " events").unwrap_or(0);
                    report.lost += number_before(line, " lost").unwrap_or(0);
                }
                Kind::Trace => {
                    let out = p.stdout_text();
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

/// Loads an empty XDP program and links it to `ifaces` of `ns`, from a thread moved there.
fn attach_empty_xdp(ns: &Netns, ifaces: &[&str]) -> Result<Vec<OwnedFd>> {
    let prog = EmptyProg::load(bpf::BPF_PROG_TYPE_XDP, bpf::XDP_PASS)?;
    let f = fs::File::open(format!("/run/netns/{}", ns.name()))?;
    std::thread::scope(|s| {
        s.spawn(|| -> Result<Vec<OwnedFd>> {
            // SAFETY: setns on a valid namespace fd; it changes only this thread.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error()).context("setns");
            }
            ifaces
                .iter()
                .map(|i| {
                    let name = std::ffi::CString::new(*i)?;
                    // SAFETY: a NUL-terminated name.
                    let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
                    if idx == 0 {
                        bail!("no interface {i} in {}", ns.name());
                    }
                    bpf::xdp_link(prog.fd(), idx)
                })
                .collect()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the attaching thread panicked"))?
    })
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
        let l = "lbtrace: tripwire stopped: 12 connections recorded (0 evicted), 96 events, 3 lost";
        assert_eq!(number_before(l, " events"), Some(96));
        assert_eq!(number_before(l, " lost"), Some(3));
        let t =
            "\n120 packets captured\n130 packets received by filter\n0 packets dropped by kernel\n";
        assert_eq!(number_before(t, " packets captured"), Some(120));
        assert_eq!(number_before(t, " packets dropped by kernel"), Some(0));
    }
}
