//! The tripwire's Unix socket, through which `lbtrace dump` asks for the recorded history.
//!
//! Default path: /run/lbtrace/watch-<netns inode>.sock, so two tripwires in different network
//! namespaces of one host never collide. The directory is 0700 and the socket 0600, owned by
//! root, and every peer's credentials are checked (SO_PEERCRED): only root is served.
//!
//! One tripwire per socket: [`claim`] takes an exclusive `flock` on `<socket>.lock` (held until
//! the tripwire exits, released by the kernel even on SIGKILL) before anything is loaded. A
//! socket file left behind is removed only when the lock is ours *and* connecting to it says
//! nobody listens (ECONNREFUSED / ENOENT); any other answer (a full accept queue: EAGAIN) means
//! it may be alive, and lbtrace refuses. Nothing but a socket is ever removed.
//!
//! Clients are served concurrently, each by a task of its own with a deadline, at most
//! [`MAX_CLIENTS`] at a time, requests of at most [`MAX_REQUEST`] bytes: a silent or slow client
//! costs the main loop nothing. The main loop only answers [`DumpRequest`]s from a channel.

use std::{
    fs::{File, OpenOptions},
    io::ErrorKind,
    os::{
        fd::AsRawFd as _,
        unix::fs::{FileTypeExt as _, OpenOptionsExt as _, PermissionsExt as _},
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::json;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{Semaphore, mpsc, oneshot},
};

use super::history::Query;
use crate::files;

pub const RUN_DIR: &str = "/run/lbtrace";

/// Dump clients served at once; more are answered "busy" and closed.
pub const MAX_CLIENTS: usize = 64;
/// The longest request line a client may send.
pub const MAX_REQUEST: u64 = 64 * 1024;
/// How an answer starts when every client slot is taken (`lbtrace dump` then asks again).
pub const BUSY: &str = "busy:";
/// A client has this long to send its request, and again to take the answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// The default socket of a tripwire in the network namespace with inode `netns`.
pub fn default_path(netns: u64) -> PathBuf {
    PathBuf::from(RUN_DIR).join(format!("watch-{netns}.sock"))
}

/// A claimed socket path: the lock is held while this lives; the socket file, once bound, is
/// removed when it is dropped.
pub struct Claim {
    path: PathBuf,
    _lock: File,
    bound: bool,
}

impl Claim {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        // Remove only what we bound (while holding the lock, so it is ours).
        if self.bound && is_socket(&self.path) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn is_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

fn lock_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// Claims `path` for this tripwire, before any program is loaded: creates the directory (0700
/// when it is lbtrace's own), takes the lock, and removes a stale socket. Refuses (an error)
/// when another tripwire holds it or may be alive, or when `path` is not a socket.
pub async fn claim(path: &Path) -> Result<Claim> {
    if path.file_name().is_none() {
        bail!("--socket {}: not a file name", path.display());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if dir == Path::new(RUN_DIR) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("chmod 0700 {}", dir.display()))?;
        } else if !dir.is_dir() {
            bail!(
                "--socket {}: the directory {} does not exist",
                path.display(),
                dir.display()
            );
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => bail!(
            "--socket {}: exists and is not a socket; lbtrace removes only its own sockets: choose another path",
            path.display()
        ),
        _ => {}
    }
    let lock_file = lock_path(path);
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(files::MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&lock_file)
        .with_context(|| format!("opening the lock file {}", lock_file.display()))?;
    // SAFETY: flock on a descriptor this function owns; no memory is involved.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == ErrorKind::WouldBlock {
            bail!(
                "another lbtrace watch is running with the socket {} (it holds {}): stop it first, or pass --socket PATH",
                path.display(),
                lock_file.display()
            );
        }
        return Err(e).with_context(|| format!("locking {}", lock_file.display()));
    }
    if is_socket(path) {
        // Non-blocking: a live tripwire with a full accept queue answers EAGAIN, not a hang.
        let probe = tokio::time::timeout(CLIENT_TIMEOUT, UnixStream::connect(path))
            .await
            .unwrap_or_else(|_| Err(std::io::Error::from(ErrorKind::TimedOut)));
        match probe {
            Ok(_) => bail!(
                "another lbtrace watch is already serving {} in this network namespace: stop it first, or pass --socket PATH",
                path.display()
            ),
            Err(e)
                if e.kind() == ErrorKind::ConnectionRefused || e.kind() == ErrorKind::NotFound =>
            {
                std::fs::remove_file(path)
                    .with_context(|| format!("removing the stale socket {}", path.display()))?;
            }
            Err(e) => bail!(
                "--socket {}: cannot tell whether the tripwire serving it is alive ({e}): stop it first, or pass --socket PATH",
                path.display()
            ),
        }
    }
    Ok(Claim {
        path: path.to_path_buf(),
        _lock: lock,
        bound: false,
    })
}

/// Binds the claimed socket, 0600 from the start.
pub fn bind(claim: &mut Claim) -> Result<UnixListener> {
    let path = claim.path.clone();
    // Create it private from the start: no window in which it is world-accessible.
    // SAFETY: umask only changes this process's file-creation mask.
    let old = unsafe { libc::umask(0o177) };
    let l = UnixListener::bind(&path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let l = l.with_context(|| format!("binding {}", path.display()))?;
    claim.bound = true;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok(l)
}

/// The peer's uid, from SO_PEERCRED.
pub fn peer_uid(s: &UnixStream) -> Option<u32> {
    s.peer_cred().ok().map(|c| c.uid())
}

/// A dump request handed to the main loop; it answers on `reply` with the JSON body.
pub struct DumpRequest {
    pub query: Query,
    pub reply: oneshot::Sender<String>,
}

/// Accepts dump clients until the listener fails, each served by a task of its own. Past
/// [`MAX_CLIENTS`], a client is told "busy" (after its request is read: closing with it unread
/// would reset the connection before the answer is seen); past four times that, it is closed.
pub async fn serve(listener: UnixListener, requests: mpsc::Sender<DumpRequest>) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    let busy_slots = Arc::new(Semaphore::new(MAX_CLIENTS * 4));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // EMFILE and friends: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if let Ok(permit) = Arc::clone(&slots).try_acquire_owned() {
            let requests = requests.clone();
            tokio::spawn(async move {
                client(stream, requests).await;
                drop(permit);
            });
        } else if let Ok(permit) = Arc::clone(&busy_slots).try_acquire_owned() {
            tokio::spawn(async move {
                let mut stream = stream;
                let _ =
                    tokio::time::timeout(Duration::from_millis(200), read_query(&mut stream)).await;
                let busy = format!("{BUSY} {MAX_CLIENTS} dump clients are being served; try again");
                answer(stream, error_body(&busy)).await;
                drop(permit);
            });
        }
        // else: dropped here, closed.
    }
}

fn error_body(e: &str) -> String {
    json!({"type": "error", "error": e}).to_string()
}

async fn client(mut stream: UnixStream, requests: mpsc::Sender<DumpRequest>) {
    // Read the request in every case: closing with it unread would reset the connection before
    // the client sees the answer.
    let query = read_query(&mut stream).await;
    let body = if peer_uid(&stream) != Some(0) {
        error_body(
            "permission denied: only root may read the tripwire's history (run lbtrace dump with sudo)",
        )
    } else {
        match query {
            Err(e) => error_body(&e),
            Ok(query) => {
                let (reply, answer_rx) = oneshot::channel();
                if requests.send(DumpRequest { query, reply }).await.is_err() {
                    error_body("the tripwire is stopping")
                } else {
                    answer_rx
                        .await
                        .unwrap_or_else(|_| error_body("the tripwire is stopping"))
                }
            }
        }
    };
    answer(stream, body).await;
}

async fn answer(mut stream: UnixStream, body: String) {
    let _ = tokio::time::timeout(CLIENT_TIMEOUT * 5, async {
        let _ = stream.write_all(body.as_bytes()).await;
        let _ = stream.write_all(b"\n").await;
        let _ = stream.shutdown().await;
    })
    .await;
}

async fn read_query(stream: &mut UnixStream) -> Result<Query, String> {
    let mut line = String::new();
    let mut r = BufReader::new(stream).take(MAX_REQUEST);
    match tokio::time::timeout(CLIENT_TIMEOUT, r.read_line(&mut line)).await {
        Ok(Ok(_)) if !line.ends_with('\n') && r.limit() == 0 => {
            Err(format!("bad request: longer than {MAX_REQUEST} bytes"))
        }
        Ok(Ok(_)) => serde_json::from_str(line.trim()).map_err(|e| format!("bad request: {e}")),
        Ok(Err(e)) => Err(format!("reading the request: {e}")),
        Err(_) => Err(format!("no request within {} s", CLIENT_TIMEOUT.as_secs())),
    }
}
