//! The tripwire's Unix socket, through which `lbtrace dump` asks for the recorded history.
//!
//! Default path: /run/lbtrace/watch-<netns inode>.sock, so two tripwires in different network
//! namespaces of one host never collide. The directory is 0700 and the socket 0600, owned by
//! root, and every peer's credentials are checked (SO_PEERCRED): only root is served. A live
//! socket is never taken over; a stale one (nobody answering) is replaced.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use tokio::net::{UnixListener, UnixStream};

pub const RUN_DIR: &str = "/run/lbtrace";

/// The default socket of a tripwire in the network namespace with inode `netns`.
pub fn default_path(netns: u64) -> PathBuf {
    PathBuf::from(RUN_DIR).join(format!("watch-{netns}.sock"))
}

/// Binds the socket: creates the directory (0700), refuses to take over a live socket, replaces
/// a stale one, and sets 0600.
pub async fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        if dir == Path::new(RUN_DIR) {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("chmod 0700 {}", dir.display()))?;
        }
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            bail!(
                "another lbtrace watch is already serving {} in this network namespace: stop it first, or pass --socket PATH",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    // Create it private from the start: no window in which it is world-accessible.
    // SAFETY: umask only changes this process's file-creation mask.
    let old = unsafe { libc::umask(0o177) };
    let l = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let l = l.with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok(l)
}

/// The peer's uid, from SO_PEERCRED.
pub fn peer_uid(s: &UnixStream) -> Option<u32> {
    s.peer_cred().ok().map(|c| c.uid())
}
