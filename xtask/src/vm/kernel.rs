//! Kernel fetch: Debian's cloud kernel packages (`linux-image-*-cloud-amd64-unsigned`), newest of
//! each series, downloaded with a private apt configuration and extracted into the cache
//! (`~/.cache/lbtrace/kernels`). In: a series name (`6.1`). Out: a [`Kernel`] (its release, an
//! uncompressed vmlinux to boot through PVH, its modules directory).
//!
//! The private configuration (its own sources list, lists and cache directories) never touches
//! the host's apt state, so it works on any Debian/Ubuntu host with `apt-get` and the Debian
//! archive keyring, as root or not.

use std::{
    cmp::Ordering,
    env, fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result, bail};

use crate::process;

/// A kernel series of the matrix and the Debian distribution whose suites carry it.
pub struct Series {
    /// `5.10`, `6.1`, `6.12`: package versions start with this and a dot.
    pub name: &'static str,
    dist: &'static Dist,
}

/// A Debian distribution: one private apt state, several suites.
struct Dist {
    name: &'static str,
    /// (archive, suite): `debian` is deb.debian.org (or `$LBTRACE_DEBIAN_MIRROR`), `security` is
    /// security.debian.org. Kernel updates of a release come through its security suite first.
    suites: &'static [(&'static str, &'static str)],
}

const BULLSEYE: Dist = Dist {
    name: "bullseye",
    suites: &[("debian", "bullseye"), ("security", "bullseye-security")],
};

const BOOKWORM: Dist = Dist {
    name: "bookworm",
    suites: &[
        ("debian", "bookworm"),
        ("security", "bookworm-security"),
        ("debian", "bookworm-backports"),
    ],
};

/// The matrix, oldest first: Debian 11's kernel, Debian 12's, and 6.12 (bookworm-backports and,
/// lately, bookworm-security carry it; the newer one wins).
pub const SERIES: &[Series] = &[
    Series {
        name: "5.10",
        dist: &BULLSEYE,
    },
    Series {
        name: "6.1",
        dist: &BOOKWORM,
    },
    Series {
        name: "6.12",
        dist: &BOOKWORM,
    },
];

/// How old the package lists may get before `apt-get update` runs again.
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

const PREFIX: &str = "linux-image-";
const SUFFIX: &str = "-cloud-amd64-unsigned";

/// An extracted kernel package.
pub struct Kernel {
    /// `uname -r` in the guest (`6.1.0-41-cloud-amd64`).
    pub release: String,
    /// The package it came from.
    pub package: String,
    /// The kernel to boot: the uncompressed ELF vmlinux when it could be extracted (QEMU boots it
    /// through the PVH entry and skips the slow in-guest decompression), else the bzImage.
    pub image: PathBuf,
    /// `lib/modules/<release>` of the package.
    pub modules: PathBuf,
}

/// `$XDG_CACHE_HOME/lbtrace` or `~/.cache/lbtrace`.
pub fn cache_root() -> Result<PathBuf> {
    if let Some(dir) = env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("lbtrace"));
    }
    let home = env::var_os("HOME").context("HOME is not set: cannot locate ~/.cache")?;
    Ok(PathBuf::from(home).join(".cache/lbtrace"))
}

/// The newest kernel of `series`: from the cache when the package lists say nothing newer exists,
/// else downloaded and extracted (when the newest package cannot be downloaded, the next newest,
/// with a warning). When the archive cannot be reached at all, the newest cached kernel of the
/// series is used (with a warning).
pub fn fetch(series: &'static Series) -> Result<Kernel> {
    let cache = cache_root()?.join("kernels");
    let apt = Apt::new(&cache, series.dist)?;
    let candidates = apt
        .update()
        .and_then(|()| apt.candidates(series.name))
        .with_context(|| format!("finding the newest {} cloud kernel", series.name));
    let candidates = match candidates {
        Ok(candidates) => candidates,
        Err(err) => {
            let Some(cached) = newest_cached(&cache, series.name)? else {
                return Err(err);
            };
            eprintln!("xtask: warning: {err:#}; using the cached {cached}");
            vec![cached]
        }
    };
    let mut errors = Vec::new();
    for package in &candidates {
        let dir = cache.join(package);
        if !dir.join(".complete").exists()
            && let Err(err) = apt.download_extract(package, &dir)
        {
            eprintln!("xtask: warning: {err:#}");
            errors.push(format!("{err:#}"));
            continue;
        }
        let kernel = open(package, &dir)?;
        prune(&cache, series.name, package);
        return Ok(kernel);
    }
    bail!(
        "no {} kernel could be fetched: {}",
        series.name,
        errors.join("; ")
    )
}

/// A private apt configuration for one distribution under `<cache>/apt/<dist>`.
struct Apt {
    dir: PathBuf,
    dist: &'static Dist,
}

impl Apt {
    fn new(cache: &Path, dist: &'static Dist) -> Result<Apt> {
        let dir = cache.join("apt").join(dist.name);
        for sub in ["lists/partial", "cache/archives/partial", "debs"] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let mirror = env::var("LBTRACE_DEBIAN_MIRROR")
            .unwrap_or_else(|_| "http://deb.debian.org/debian".to_owned());
        let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
        let mut sources = String::new();
        for (archive, suite) in dist.suites {
            let url = if *archive == "security" {
                "http://security.debian.org/debian-security"
            } else {
                mirror.as_str()
            };
            sources.push_str(&format!("deb [signed-by={keyring}] {url} {suite} main\n"));
        }
        let list = dir.join("sources.list");
        if fs::read_to_string(&list).ok().as_deref() != Some(sources.as_str()) {
            // Other sources (a mirror was set): the lists must be fetched again.
            let _ = fs::remove_file(dir.join("lists/.updated"));
            fs::write(&list, sources)?;
        }
        Ok(Apt { dir, dist })
    }

    /// `apt-get`/`apt-cache` with the private configuration.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        let opt = |key: &str, value: &Path| format!("{key}={}", value.display());
        cmd.arg("-o")
            .arg(opt("Dir::Etc::sourcelist", &self.dir.join("sources.list")))
            .args(["-o", "Dir::Etc::sourceparts=-"])
            .arg("-o")
            .arg(opt("Dir::State::Lists", &self.dir.join("lists")))
            .arg("-o")
            .arg(opt("Dir::Cache", &self.dir.join("cache")))
            .args([
                "-o",
                "APT::Architecture=amd64",
                "-o",
                "APT::Architectures=amd64",
            ])
            .args(["-o", "Acquire::Languages=none", "-q"]);
        if process::is_root() {
            // Downloads into a root-owned cache: apt's `_apt` sandbox user could not write there.
            cmd.args(["-o", "APT::Sandbox::User=root"]);
        }
        cmd
    }

    /// `apt-get update` unless the lists are younger than [`LISTS_MAX_AGE`].
    fn update(&self) -> Result<()> {
        let stamp = self.dir.join("lists/.updated");
        let fresh = fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < LISTS_MAX_AGE);
        if fresh {
            return Ok(());
        }
        eprintln!("xtask: apt-get update ({}, private lists)", self.dist.name);
        process::output(self.command("apt-get").arg("update"))?;
        fs::write(&stamp, b"")?;
        Ok(())
    }

    /// The `linux-image-<series>.*-cloud-amd64-unsigned` packages the lists know, newest first.
    fn candidates(&self, series: &str) -> Result<Vec<String>> {
        let names = process::output(self.command("apt-cache").args(["pkgnames", PREFIX]))?;
        let mut names: Vec<String> = names
            .lines()
            .filter(|name| in_series(name, series))
            .map(str::to_owned)
            .collect();
        if names.is_empty() {
            bail!(
                "no {PREFIX}{series}.*{SUFFIX} in {} ({})",
                self.dist.name,
                self.dir.display()
            );
        }
        names.sort_by(|a, b| compare_versions(b, a));
        Ok(names)
    }

    /// `apt-get download` into `<apt>/debs`, `dpkg-deb -x` into `dest` (through a temporary
    /// directory, so an interrupted run leaves nothing that looks complete), then the vmlinux.
    fn download_extract(&self, package: &str, dest: &Path) -> Result<()> {
        let debs = self.dir.join("debs");
        eprintln!("xtask: downloading {package}");
        process::output(
            self.command("apt-get")
                .args(["download", package])
                .current_dir(&debs),
        )
        .map_err(|err| {
            // apt's own "E: Failed to fetch URL  404 ..." says it all; the command line is long.
            let msg = format!("{err:#}");
            let short = msg.find("E: ").map_or(msg.as_str(), |at| &msg[at..]);
            anyhow::anyhow!("apt-get download {package}: {short}")
        })?;
        let deb = fs::read_dir(&debs)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_")))
            })
            .with_context(|| format!("apt-get download left no {package}_*.deb"))?;
        let tmp = dest.with_extension("partial");
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp)?;
        process::output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
        fs::remove_file(&deb)?;
        let release = release_of(&tmp)?;
        let bzimage = tmp.join(format!("boot/vmlinuz-{release}"));
        match extract_vmlinux(&bzimage) {
            Ok(elf) => fs::write(tmp.join("vmlinux"), elf)?,
            Err(err) => eprintln!("xtask: warning: booting the compressed kernel: {err:#}"),
        }
        fs::write(tmp.join(".complete"), package)?;
        let _ = fs::remove_dir_all(dest);
        fs::rename(&tmp, dest)?;
        Ok(())
    }
}

/// Whether `name` is a cloud image package of `series` built for its own distribution (not a
/// backport to an older one, whose version looks like `6.1.0-0.deb11.52`).
fn in_series(name: &str, series: &str) -> bool {
    name.strip_prefix(PREFIX)
        .and_then(|rest| rest.strip_suffix(SUFFIX))
        .is_some_and(|version| {
            version.starts_with(&format!("{series}.")) && !version.contains("-0.deb")
        })
}

/// Compares package names by their version part: digit runs numerically, the rest as text
/// (`6.12.117+deb12` > `6.12.95+bpo`, `5.10.0-35` > `5.10.0-9`).
fn compare_versions(a: &str, b: &str) -> Ordering {
    fn tokens(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ta, tb) = (tokens(a), tokens(b));
    for (x, y) in ta.iter().zip(&tb) {
        let ord = match (x, y) {
            ((true, x), (true, y)) => x
                .trim_start_matches('0')
                .len()
                .cmp(&y.trim_start_matches('0').len())
                .then_with(|| x.trim_start_matches('0').cmp(y.trim_start_matches('0'))),
            ((_, x), (_, y)) => x.cmp(y),
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    ta.len().cmp(&tb.len())
}

/// The one `lib/modules/<release>` directory of an extracted package.
fn release_of(root: &Path) -> Result<String> {
    let dir = root.join("lib/modules");
    let mut releases: Vec<String> = fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    match releases.len() {
        1 => Ok(releases.remove(0)),
        _ => bail!(
            "{}: expected one kernel release, found {releases:?}",
            dir.display()
        ),
    }
}

fn open(package: &str, dir: &Path) -> Result<Kernel> {
    let release = release_of(dir)?;
    let vmlinux = dir.join("vmlinux");
    let image = if vmlinux.exists() {
        vmlinux
    } else {
        dir.join(format!("boot/vmlinuz-{release}"))
    };
    Ok(Kernel {
        modules: dir.join("lib/modules").join(&release),
        release,
        package: package.to_owned(),
        image,
    })
}

/// The newest complete extracted package of `series` in the cache.
fn newest_cached(cache: &Path, series: &str) -> Result<Option<String>> {
    let Ok(entries) = fs::read_dir(cache) else {
        return Ok(None);
    };
    Ok(entries
        .filter_map(Result::ok)
        .filter(|e| e.path().join(".complete").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| in_series(name, series))
        .max_by(|a, b| compare_versions(a, b)))
}

/// Removes older extracted kernels of `series` (a new package superseded them).
fn prune(cache: &Path, series: &str, keep: &str) {
    let Ok(entries) = fs::read_dir(cache) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let base = name.trim_end_matches(".partial");
        if in_series(base, series) && name != keep {
            eprintln!("xtask: removing the superseded {name} from the kernel cache");
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// The ELF kernel inside a bzImage: the payload after the first compression magic that
/// decompresses into an ELF file (what the kernel's scripts/extract-vmlinux does).
fn extract_vmlinux(bzimage: &Path) -> Result<Vec<u8>> {
    let image = fs::read(bzimage).with_context(|| format!("reading {}", bzimage.display()))?;
    let formats: [(&[u8], &str); 4] = [
        (b"\x28\xb5\x2f\xfd", "zstd"),
        (b"\xfd7zXZ\x00", "xz"),
        (b"\x1f\x8b\x08", "gzip"),
        (b"\x02\x21\x4c\x18", "lz4"),
    ];
    let mut candidates: Vec<(usize, &str)> = formats
        .iter()
        .filter_map(|(magic, tool)| {
            image
                .windows(magic.len())
                .position(|w| w == *magic)
                .map(|at| (at, *tool))
        })
        .collect();
    candidates.sort_unstable();
    for (at, tool) in candidates {
        // Trailing bytes after the payload make the tools complain; the output is still whole.
        let mut child = Command::new(tool)
            .args(["-dc"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {tool}"))?;
        let mut stdin = child.stdin.take().context("decompressor stdin")?;
        let payload = image[at..].to_vec();
        let writer = std::thread::spawn(move || {
            use std::io::Write as _;
            let _ = stdin.write_all(&payload);
        });
        let out = child.wait_with_output()?;
        let _ = writer.join();
        if out.stdout.starts_with(b"\x7fELF") && out.stdout.len() > 1 << 20 {
            return Ok(out.stdout);
        }
    }
    bail!("no compressed ELF kernel found in {}", bzimage.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_series_members_built_for_their_distribution() {
        let name = |v: &str| format!("{PREFIX}{v}{SUFFIX}");
        assert!(in_series(&name("5.10.0-35"), "5.10"));
        assert!(in_series(&name("6.1.0-41"), "6.1"));
        assert!(!in_series(&name("6.12.117+deb12"), "6.1"));
        assert!(!in_series(&name("6.1.0-0.deb11.52"), "6.1"));
        assert!(!in_series("linux-image-6.1.0-41-cloud-amd64", "6.1"));
        assert!(in_series(&name("6.12.95+bpo"), "6.12"));
    }

    #[test]
    fn orders_versions_numerically() {
        let mut names = ["5.10.0-9", "5.10.0-35", "5.10.0-10"].map(str::to_owned);
        names.sort_by(|a, b| compare_versions(a, b));
        assert_eq!(names, ["5.10.0-9", "5.10.0-10", "5.10.0-35"]);
        assert_eq!(
            compare_versions("6.12.117+deb12", "6.12.95+bpo"),
            Ordering::Greater
        );
    }
}
