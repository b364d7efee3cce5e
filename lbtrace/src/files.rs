//! Files lbtrace creates as root (ready file, pcap captures, the SIGUSR1 history): mode 0600,
//! never opened through a symbolic link, and never in a way that lets another user of the host
//! point root at a file of their choosing.
//!
//! - In a directory only trusted users can write to, a file is written to a new temporary file
//!   beside it (`O_CREAT | O_EXCL | O_NOFOLLOW`, 0600) and renamed over the target: a symlink
//!   planted at the target is replaced, never followed.
//! - In a directory every user can write to, only if it is sticky (like /tmp), and only as a new
//!   file (`O_EXCL | O_NOFOLLOW`): an existing name there may belong to someone else.
//! - Anywhere else (a world-writable directory without the sticky bit), nothing is written.

use std::{
    fs::{self, File, OpenOptions},
    io::Write as _,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

/// Mode of every file lbtrace creates.
pub const MODE: u32 = 0o600;

/// How a file may be created in its directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// A directory only trusted users write to: write beside it, then rename over the target.
    Replace,
    /// A sticky directory every user writes to (/tmp): only a new file.
    NewOnly,
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// How files may be created in `dir`: refused when every user may write to it and it is not
/// sticky.
pub fn check_dir(dir: &Path) -> Result<Placement> {
    let meta = fs::metadata(dir).with_context(|| {
        format!(
            "the directory {} does not exist or cannot be read",
            dir.display()
        )
    })?;
    if !meta.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let shared = meta.mode() & 0o002 != 0;
    let sticky = meta.mode() & 0o1000 != 0;
    match (shared, sticky) {
        (false, _) => Ok(Placement::Replace),
        (true, true) => Ok(Placement::NewOnly),
        (true, false) => bail!(
            "the directory {} is writable by every user and not sticky: choose another directory",
            dir.display()
        ),
    }
}

/// Decides, before anything is written (or loaded), whether and how `path` may be created.
pub fn check_target(path: &Path) -> Result<Placement> {
    if path.file_name().is_none() {
        bail!("{} is not a file name", path.display());
    }
    let placement = check_dir(parent(path)).with_context(|| path.display().to_string())?;
    let dir = parent(path);
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => bail!(
            "{} is a symbolic link: lbtrace does not write through links; remove it or choose another name",
            path.display()
        ),
        Ok(m) if !m.is_file() => bail!("{} exists and is not a regular file", path.display()),
        Ok(_) if placement == Placement::NewOnly => bail!(
            "{} already exists in the shared directory {}: lbtrace only creates new files there; remove it or choose another name",
            path.display(),
            dir.display()
        ),
        _ => {}
    }
    Ok(placement)
}

/// Opens a new file at `path`: 0600, `O_EXCL` (fails if anything, a link included, is there).
pub fn create_new(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Writes `bytes` to `path` as [`check_target`] allows: replacing it from a temporary file in
/// a trusted directory, creating it new in a shared sticky one.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    match check_target(path)? {
        Placement::NewOnly => {
            let mut f = create_new(path).with_context(|| format!("creating {}", path.display()))?;
            f.write_all(bytes)
                .with_context(|| format!("writing {}", path.display()))
        }
        Placement::Replace => {
            let tmp = temp_beside(path);
            let written = create_new(&tmp)
                .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
                .and_then(|()| fs::rename(&tmp, path));
            if let Err(e) = written {
                let _ = fs::remove_file(&tmp);
                return Err(e).with_context(|| format!("writing {}", path.display()));
            }
            Ok(())
        }
    }
}

fn temp_beside(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    parent(path).join(format!(".{name}.lbtrace-{}-{nanos:09}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt as _, symlink};

    use super::*;

    fn tempdir(mode: u32) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "lbtrace-files-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        fs::create_dir(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(mode)).unwrap();
        d
    }

    #[test]
    fn a_planted_symlink_is_replaced_not_followed() {
        let d = tempdir(0o700);
        let victim = d.join("victim");
        fs::write(&victim, "precious").unwrap();
        let link = d.join("out.json");
        symlink(&victim, &link).unwrap();
        // Refused up front ...
        assert!(check_target(&link).is_err());
        assert!(write_private(&link, b"x").is_err());
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        // ... and a plain existing file is replaced with mode 0600.
        let f = d.join("file");
        fs::write(&f, "old").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&f, b"new").unwrap();
        assert_eq!(fs::read_to_string(&f).unwrap(), "new");
        assert_eq!(fs::metadata(&f).unwrap().mode() & 0o777, 0o600);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn shared_directories_take_only_new_files_and_only_when_sticky() {
        let sticky = tempdir(0o1777);
        let f = sticky.join("capture.pcap");
        write_private(&f, b"1").unwrap();
        assert_eq!(fs::metadata(&f).unwrap().mode() & 0o777, 0o600);
        let again = format!("{:#}", write_private(&f, b"2").unwrap_err());
        assert!(again.contains("already exists"), "{again}");
        assert_eq!(fs::read_to_string(&f).unwrap(), "1");

        let open = tempdir(0o777);
        let e = format!("{:#}", check_target(&open.join("x")).unwrap_err());
        assert!(e.contains("not sticky"), "{e}");
        fs::remove_dir_all(&sticky).unwrap();
        fs::remove_dir_all(&open).unwrap();
    }

    #[test]
    fn a_missing_directory_is_named() {
        let e = format!(
            "{:#}",
            check_target(Path::new("/nonexistent-lbtrace-dir/ready")).unwrap_err()
        );
        assert!(e.contains("/nonexistent-lbtrace-dir"), "{e}");
    }

    #[test]
    fn create_new_never_follows_a_link() {
        let d = tempdir(0o700);
        let victim = d.join("victim");
        fs::write(&victim, "precious").unwrap();
        let link = d.join("dump.json");
        symlink(&victim, &link).unwrap();
        assert!(create_new(&link).is_err());
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        fs::remove_dir_all(&d).unwrap();
    }
}
