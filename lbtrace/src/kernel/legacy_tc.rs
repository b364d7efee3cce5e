//! Legacy TC attachment, for kernels without TCX (before 6.6): a `clsact` qdisc and cls_bpf
//! filters in direct-action mode, made through netlink (aya's `SchedClassifier`).
//!
//! Unlike a bpf_link, such a filter outlives the process that made it, even a SIGKILL. So:
//! * every filter is recognisable: named after its program (`lbtrace_tc_in` / `lbtrace_tc_eg`),
//!   with a handle whose upper half is [`HANDLE_MAJOR`], and recorded, with its owner's pid and
//!   start time, in `/run/lbtrace/tc-<pid>.json` **before** it is attached;
//! * the `clsact` qdisc is created only when the interface has none, and removed on exit only when
//!   lbtrace created it and no other filter is left on it;
//! * at every start, and with `lbtrace cleanup`, the filters (and qdiscs) recorded by processes
//!   that are gone are removed.
//!
//! The filters run first where they can (priority 1, lower runs earlier) and return
//! `TC_ACT_UNSPEC`: the next filter (the LB's own) still sees every packet.
//!
//! Checking that a `clsact` qdisc has no filters left and deleting it uses iproute2's `tc`, which
//! LB hosts have; without it the qdisc is left in place (an empty `clsact` does nothing to the
//! traffic) and that is said.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    programs::{
        SchedClassifier, TcAttachType,
        links::Link as _,
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle},
    },
};
use serde::{Deserialize, Serialize};

use crate::netif::Link;

/// Where attachments are recorded, one file per lbtrace process. `LBTRACE_RUN_DIR` overrides it
/// (tests).
pub fn run_dir() -> PathBuf {
    std::env::var_os("LBTRACE_RUN_DIR").map_or_else(|| PathBuf::from("/run/lbtrace"), PathBuf::from)
}

/// The upper 16 bits of every lbtrace filter handle ("lb7c"); the lower 16 are the pid's.
pub const HANDLE_MAJOR: u16 = 0x1b7c;

/// Priorities tried, in order: the first free one wins (1 runs before every other filter).
const PRIORITIES: std::ops::RangeInclusive<u16> = 1..=16;

/// One filter lbtrace attached (or was about to).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterRecord {
    pub iface: String,
    pub ifindex: u32,
    /// `ingress` or `egress`.
    pub direction: String,
    pub priority: u16,
    pub handle: u32,
}

/// What one lbtrace process attached with legacy TC: the file `tc-<pid>.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub pid: u32,
    /// The owner's start time (field 22 of /proc/PID/stat): a reused pid does not pass for it.
    pub start_time: u64,
    /// The network namespace (inode) the ifindexes belong to.
    pub netns: u64,
    pub filters: Vec<FilterRecord>,
    /// Interfaces (ifindex, name) whose `clsact` qdisc this process created.
    pub clsact_created: Vec<(u32, String)>,
}

impl Record {
    fn path(dir: &Path, pid: u32) -> PathBuf {
        dir.join(format!("tc-{pid}.json"))
    }

    /// Writes the record (write then rename, so a reader never sees half of it).
    fn save(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = Self::path(dir, self.pid);
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, serde_json::to_vec(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }
}

/// The start time of process `pid`, or `None` when there is no such process.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn direction(ty: TcAttachType) -> &'static str {
    if ty == TcAttachType::Egress {
        "egress"
    } else {
        "ingress"
    }
}

fn attach_type(direction: &str) -> TcAttachType {
    if direction == "egress" {
        TcAttachType::Egress
    } else {
        TcAttachType::Ingress
    }
}

fn os_error(e: &TcError) -> Option<i32> {
    match e {
        TcError::NetlinkError(e) => e.raw_os_error(),
        TcError::IoError(e) => e.raw_os_error(),
        _ => None,
    }
}

/// The legacy TC filters of this process, detached (with the qdiscs it created and its record)
/// when dropped.
pub struct LegacyTc {
    dir: PathBuf,
    record: Record,
    links: Vec<SchedClassifierLink>,
}

impl LegacyTc {
    /// Starts the record of this process; nothing is attached yet.
    pub fn new(netns: u64) -> Result<Self> {
        let pid = std::process::id();
        Ok(Self {
            dir: run_dir(),
            record: Record {
                pid,
                start_time: start_time(pid).context("reading this process's start time")?,
                netns,
                ..Record::default()
            },
            links: Vec::new(),
        })
    }

    /// Attaches `prog` (`lbtrace_tc_in` / `lbtrace_tc_eg`) to `iface`, creating `clsact` if the
    /// interface has none. Returns the priority it got, and a note when it is not the first.
    pub fn attach(
        &mut self,
        ebpf: &mut Ebpf,
        prog: &str,
        iface: &Link,
        ty: TcAttachType,
    ) -> Result<Option<String>> {
        self.ensure_clsact(iface)?;
        let p: &mut SchedClassifier = ebpf
            .program_mut(prog)
            .with_context(|| format!("program {prog} missing from the eBPF object"))?
            .try_into()?;
        let handle = (u32::from(HANDLE_MAJOR) << 16) | (self.record.pid & 0xffff);
        let mut last_err = None;
        for priority in PRIORITIES {
            // Recorded before it exists: a SIGKILL right after the attach leaves it known.
            self.record.filters.push(FilterRecord {
                iface: iface.name.clone(),
                ifindex: iface.ifindex,
                direction: direction(ty).to_owned(),
                priority,
                handle,
            });
            self.record.save(&self.dir)?;
            let opts = TcAttachOptions::Netlink(NlOptions {
                priority,
                handle: TcHandle::from(handle),
                classid: None,
            });
            match p.attach_with_options(&iface.name, ty, opts) {
                Ok(id) => {
                    self.links.push(p.take_link(id)?);
                    let note = (priority > 1).then(|| {
                        format!(
                            "{}: {} filters at priority 1..{} run before lbtrace's (tc {} filter at priority {priority})",
                            iface.name,
                            direction(ty),
                            priority - 1,
                            direction(ty)
                        )
                    });
                    return Ok(note);
                }
                Err(e) => {
                    self.record.filters.pop();
                    self.record.save(&self.dir)?;
                    last_err = Some(e);
                }
            }
        }
        Err(anyhow::anyhow!(
            "attaching {prog} to {} {} with legacy TC: no free priority in 1..=16 ({})",
            iface.name,
            direction(ty),
            last_err.map_or_else(String::new, |e| e.to_string())
        ))
    }

    fn ensure_clsact(&mut self, iface: &Link) -> Result<()> {
        if self
            .record
            .clsact_created
            .iter()
            .any(|(i, _)| *i == iface.ifindex)
        {
            return Ok(());
        }
        // Recorded first, as the filters are; taken back when the qdisc was there already.
        self.record
            .clsact_created
            .push((iface.ifindex, iface.name.clone()));
        self.record.save(&self.dir)?;
        match tc::qdisc_add_clsact(&iface.name) {
            Ok(()) => Ok(()),
            Err(e) if os_error(&e) == Some(libc::EEXIST) => {
                self.record.clsact_created.pop();
                self.record.save(&self.dir)
            }
            Err(e) => {
                self.record.clsact_created.pop();
                self.record.save(&self.dir)?;
                Err(e).with_context(|| format!("adding a clsact qdisc to {}", iface.name))
            }
        }
    }
}

impl Drop for LegacyTc {
    fn drop(&mut self) {
        // Dropping a netlink link deletes its filter.
        self.links.clear();
        for line in remove_qdiscs(&self.record) {
            log::info!("{line}");
        }
        let _ = fs::remove_file(Record::path(&self.dir, self.record.pid));
    }
}

/// Removes each `clsact` the record's owner created where no filter is left; says what it did.
fn remove_qdiscs(record: &Record) -> Vec<String> {
    let mut out = Vec::new();
    for (_, name) in &record.clsact_created {
        match filters_left(name) {
            Ok(0) => match tc_cmd(&["qdisc", "del", "dev", name, "clsact"]) {
                Ok(_) => out.push(format!("removed the clsact qdisc of {name}")),
                Err(e) => out.push(format!("left the clsact qdisc of {name}: {e}")),
            },
            Ok(n) => out.push(format!(
                "left the clsact qdisc of {name}: {n} other filter(s) use it"
            )),
            Err(e) => out.push(format!("left the clsact qdisc of {name}: {e}")),
        }
    }
    out
}

/// Runs iproute2's `tc` with `args`; its stdout.
fn tc_cmd(args: &[&str]) -> Result<String> {
    let out = Command::new("tc")
        .args(args)
        .output()
        .context("running iproute2's tc")?;
    if !out.status.success() {
        anyhow::bail!(
            "tc {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Filters on `iface`'s clsact ingress and egress.
fn filters_left(iface: &str) -> Result<usize> {
    let mut n = 0;
    for dir in ["ingress", "egress"] {
        let out = tc_cmd(&["-j", "filter", "show", "dev", iface, dir])?;
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_default();
        n += v.as_array().map_or(0, |a| a.len());
    }
    Ok(n)
}

/// What a cleanup found and did.
#[derive(Debug, Default)]
pub struct Cleanup {
    /// One line per thing removed.
    pub removed: Vec<String>,
    /// Records left alone (their owner runs, or they belong to another network namespace).
    pub kept: Vec<String>,
}

/// Stale records: their owner is gone. Each with its path.
pub fn stale_records(dir: &Path) -> Vec<(PathBuf, Option<Record>)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with("tc-") && name.ends_with(".json")) {
            continue;
        }
        let record: Option<Record> = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let alive = record
            .as_ref()
            .is_some_and(|r| start_time(r.pid) == Some(r.start_time));
        if !alive {
            out.push((path, record));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Removes every stale lbtrace attachment of this network namespace (`netns`): the filters
/// recorded by processes that are gone, the `clsact` qdiscs they created where nothing else uses
/// them, and their records.
pub fn cleanup(netns: u64) -> Cleanup {
    let dir = run_dir();
    let mut c = Cleanup::default();
    for (path, record) in stale_records(&dir) {
        let Some(record) = record else {
            let _ = fs::remove_file(&path);
            c.removed
                .push(format!("an unreadable record, {}", path.display()));
            continue;
        };
        if record.netns != netns {
            c.kept.push(format!(
                "{}: attachments of pid {} in network namespace {} (this is {netns}): run lbtrace cleanup there",
                path.display(),
                record.pid,
                record.netns
            ));
            continue;
        }
        for f in &record.filters {
            let what = format!(
                "the tc {} filter of pid {} on {} (priority {}, handle {:x}:{:x})",
                f.direction,
                record.pid,
                f.iface,
                f.priority,
                f.handle >> 16,
                f.handle & 0xffff
            );
            let Some(name) = if_name(f.ifindex) else {
                c.removed.push(format!("{what}: gone with its interface"));
                continue;
            };
            let detached = SchedClassifierLink::attached(
                &name,
                attach_type(&f.direction),
                f.priority,
                TcHandle::from(f.handle),
                None,
            )
            .map_err(anyhow::Error::from)
            .and_then(|l| l.detach().map_err(anyhow::Error::from));
            match detached {
                Ok(()) => c.removed.push(what),
                Err(e) if is_not_found(&e) => {}
                Err(e) => c.kept.push(format!("{what}: {e:#}")),
            }
        }
        c.removed.extend(
            remove_qdiscs(&record)
                .into_iter()
                .filter(|l| l.starts_with("removed")),
        );
        let _ = fs::remove_file(&path);
    }
    c
}

/// The name of interface `ifindex` in this network namespace.
fn if_name(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has the IF_NAMESIZE bytes if_indextoname writes at most.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success `buf` holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

fn is_not_found(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<aya::programs::ProgramError>()
            .and_then(|p| match p {
                aya::programs::ProgramError::TcError(t) => os_error(t),
                _ => None,
            })
            .is_some_and(|errno| errno == libc::ENOENT || errno == libc::EINVAL)
    })
}

/// `lbtrace cleanup`: removes stale lbtrace attachments and says what it removed.
pub fn run() -> Result<u8> {
    let netns = super::tracer::netns_inum()?;
    let c = cleanup(netns);
    if c.removed.is_empty() {
        println!("lbtrace cleanup: nothing stale");
    }
    for line in &c.removed {
        println!("lbtrace cleanup: removed {line}");
    }
    for line in &c.kept {
        println!("lbtrace cleanup: left {line}");
    }
    Ok(0)
}

/// Stale records, for `doctor`: one line each.
pub fn leftovers() -> Vec<String> {
    stale_records(&run_dir())
        .into_iter()
        .map(|(path, r)| match r {
            Some(r) => format!(
                "{}: {} filter(s) of pid {} (gone), network namespace {}",
                path.display(),
                r.filters.len(),
                r.pid,
                r.netns
            ),
            None => format!("{}: unreadable", path.display()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of its own under the system's temporary directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(what: &str) -> Self {
            let p = std::env::temp_dir().join(format!("lbtrace-{what}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            Self(p)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn start_time_reads_past_a_command_with_spaces_and_parens() {
        let me = std::process::id();
        let t = start_time(me).expect("this process has a start time");
        assert!(t > 0);
        assert_eq!(start_time(u32::MAX), None);
    }

    #[test]
    fn records_of_gone_processes_are_stale_and_live_ones_are_not() {
        let dir = TempDir::new("stale");
        let me = std::process::id();
        let live = Record {
            pid: me,
            start_time: start_time(me).unwrap(),
            ..Record::default()
        };
        live.save(dir.path()).unwrap();
        // Same pid, another start time: a reused pid.
        let reused = Record {
            pid: 1,
            start_time: u64::MAX,
            ..Record::default()
        };
        reused.save(dir.path()).unwrap();
        fs::write(dir.path().join("tc-7.json"), b"{").unwrap();
        fs::write(dir.path().join("other"), b"x").unwrap();
        let stale: Vec<_> = stale_records(dir.path())
            .into_iter()
            .map(|(p, r)| (p.file_name().unwrap().to_string_lossy().into_owned(), r))
            .collect();
        assert_eq!(
            stale,
            vec![
                ("tc-1.json".to_owned(), Some(reused)),
                ("tc-7.json".to_owned(), None)
            ]
        );
    }
}
