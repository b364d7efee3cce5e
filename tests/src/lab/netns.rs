//! A network namespace owned by a test: created on construction, deleted (after killing every
//! process still inside it) on drop.

use std::{
    ffi::OsStr,
    path::Path,
    process::Output,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::Result;

use super::process::{self, Proc};

/// A prefix no other lab of this machine uses: `lbt{pid % 10000}x{counter}` (at most 13
/// characters, so `<prefix><2-char suffix>` still fits an interface name's 15).
pub fn unique_prefix() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("lbt{}x{n}", std::process::id() % 10000);
        // Another process whose pid matches ours modulo 10000 may be using it.
        let taken = std::fs::read_dir("/run/netns")
            .map(|dir| {
                dir.flatten().any(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(&format!("{prefix}-"))
                })
            })
            .unwrap_or(false);
        if !taken {
            return prefix;
        }
    }
}

/// A named network namespace (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace with its loopback up and IPv6 duplicate address detection off (so
    /// IPv6 addresses are usable at once).
    pub fn try_create(name: &str) -> Result<Netns> {
        process::try_run(&["ip", "netns", "add", name])?;
        // From here on, dropping `ns` (also on error) deletes the namespace.
        let ns = Netns {
            name: name.to_owned(),
        };
        ns.try_sysctl("net.ipv6.conf.all.accept_dad", "0")?;
        ns.try_sysctl("net.ipv6.conf.default.accept_dad", "0")?;
        ns.try_sysctl("net.ipv6.conf.all.accept_ra", "0")?;
        ns.try_sysctl("net.ipv6.conf.default.accept_ra", "0")?;
        ns.try_exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// [`Netns::try_create`] for tests: panics instead of failing.
    pub fn create(name: &str) -> Netns {
        Self::try_create(name).unwrap_or_else(|e| panic!("{e:#}"))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec <ns> argv...`
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

    /// Runs `argv` in the namespace; its stdout, or an error with its stderr.
    pub fn try_exec<S: AsRef<OsStr>>(&self, argv: &[S]) -> Result<String> {
        process::try_run(&self.argv(argv))
    }

    /// Runs `argv` in the namespace, asserts success and returns its stdout.
    pub fn exec<S: AsRef<OsStr>>(&self, argv: &[S]) -> String {
        process::run(&self.argv(argv))
    }

    /// Runs `argv` in the namespace and returns its output, whatever the exit status.
    pub fn output<S: AsRef<OsStr>>(&self, argv: &[S]) -> Output {
        process::output(&self.argv(argv))
    }

    /// Starts a long-running `argv` in the namespace; the guard SIGKILLs it on drop.
    pub fn try_spawn<S: AsRef<OsStr>>(&self, name: &str, dir: &Path, argv: &[S]) -> Result<Proc> {
        // `ip netns exec` execs the command, so the child's pid is the command's own.
        Proc::try_spawn(name, dir, &self.argv(argv))
    }

    /// [`Netns::try_spawn`] for tests: panics instead of failing.
    pub fn spawn<S: AsRef<OsStr>>(&self, name: &str, dir: &Path, argv: &[S]) -> Proc {
        Proc::spawn(name, dir, &self.argv(argv))
    }

    pub fn try_sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.try_exec(&["sysctl", "-q", "-w", &format!("{key}={value}")])
            .map(drop)
    }

    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec(&["sysctl", "-q", "-w", &format!("{key}={value}")]);
    }

    /// `nft -f -` with `ruleset` on stdin.
    pub fn nft(&self, ruleset: &str) {
        let path = std::env::temp_dir().join(format!("{}-{}.nft", self.name, std::process::id()));
        std::fs::write(&path, ruleset).expect("writing an nft ruleset");
        let out = self.output(&["nft", "-f", &path.to_string_lossy()]);
        let _ = std::fs::remove_file(&path);
        assert!(
            out.status.success(),
            "nft -f in {} failed: {}\nruleset:\n{ruleset}",
            self.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }

    /// `ip -j link show`: every interface of the namespace.
    pub fn links(&self) -> Vec<serde_json::Value> {
        let out = self.exec(&["ip", "-j", "link", "show"]);
        match serde_json::from_str(&out) {
            Ok(serde_json::Value::Array(links)) => links,
            _ => panic!(
                "unexpected `ip -j link show` output in {}: {out}",
                self.name
            ),
        }
    }

    /// The index of interface `name`.
    pub fn ifindex(&self, name: &str) -> u64 {
        self.links()
            .iter()
            .find(|l| l["ifname"] == name)
            .and_then(|l| l["ifindex"].as_u64())
            .unwrap_or_else(|| panic!("no interface {name} in {}", self.name))
    }

    /// Whether something in the namespace listens on TCP `port` (any address).
    pub fn listening(&self, port: u16) -> bool {
        let out = self.output(&["ss", "-Hltn"]);
        let suffix = format!(":{port}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| line.split_whitespace().nth(3))
            .any(|local| local.ends_with(&suffix))
    }

    /// Whether something listens on exactly `addr` (`10.0.0.1:80`, `[fd00::1]:80`).
    pub fn listening_on(&self, addr: &str) -> bool {
        let out = self.output(&["ss", "-Hltn"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| line.split_whitespace().nth(3))
            .any(|local| local == addr)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes a guard missed (or that a guarded process forked) would keep the namespace
        // alive after `ip netns del`: kill them first.
        let pids = process::output(&["ip", "netns", "pids", &self.name]);
        for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse() {
                process::signal(pid, libc::SIGKILL);
            }
        }
        let out = process::output(&["ip", "netns", "del", &self.name]);
        if !out.status.success() {
            eprintln!(
                "warning: ip netns del {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
}
