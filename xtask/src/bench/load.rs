//! A short-connection load generator and its server, as threads of this process moved into the
//! lab's namespaces (setns), so no interpreter startup or scheduling of helper processes is timed.
//!
//! Each connection: the client connects to the VIP, the server accepts and closes at once, the
//! client reads the EOF and closes. On the wire that is SYN, SYN-ACK, ACK, FIN (server), ACK,
//! FIN (client), ACK: four control packets, and neither side enters TIME_WAIT on the client, so
//! ports come back at once.

use std::{
    io::Read as _,
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};

use super::lab::Netns;

/// Accepts and closes connections on `port` in the server namespace until dropped.
pub struct Server {
    /// A duplicate of the listening socket, to wake the accept loop with shutdown(2).
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    pub fn start(ns: &Netns, port: u16) -> Result<Server> {
        let (tx, rx) = std::sync::mpsc::channel();
        let name = ns.name().to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let enter = {
            let f = std::fs::File::open(format!("/run/netns/{name}"))?;
            move || -> Result<TcpListener> {
                // SAFETY: setns on a valid namespace fd; it changes only this thread.
                if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error()).context("setns");
                }
                let l = TcpListener::bind(("0.0.0.0", port))?;
                // std listens with a backlog of 128; bursts of SYNs want more.
                // SAFETY: listen(2) on our own socket.
                unsafe { libc::listen(l.as_raw_fd(), 4096) };
                Ok(l)
            }
        };
        let t = thread::Builder::new().name("bench-server".into()).spawn({
            let stop = Arc::clone(&stop);
            move || {
                let l = match enter() {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let _ = tx.send(l.try_clone().context("duplicating the listener"));
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((s, _)) => drop(s),
                        Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                        Err(_) => {
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                            thread::sleep(Duration::from_millis(1));
                        }
                    }
                }
            }
        })?;
        let listener = rx
            .recv()
            .map_err(|_| anyhow!("the server thread ended"))??;
        Ok(Server {
            listener,
            stop,
            threads: vec![t],
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the blocked accept(2) (EINVAL).
        // SAFETY: shutdown(2) on our own duplicate of the listening socket.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Outcome {
    pub ok: u64,
    pub failed: u64,
    pub seconds: f64,
}

impl Outcome {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.seconds.max(1e-9)
    }
}

/// Opens and closes connections to `target` from `ns` for `secs`: paced at `rate` per second,
/// or as fast as `threads` blocking clients go when `rate` is `None`.
pub fn generate(
    ns: &Netns,
    target: SocketAddr,
    rate: Option<u32>,
    secs: f64,
    threads: usize,
) -> Result<Outcome> {
    let next = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now() + Duration::from_millis(20);
    let mut handles = Vec::new();
    for i in 0..threads {
        let f = std::fs::File::open(format!("/run/netns/{}", ns.name()))?;
        let (next, ok, failed) = (Arc::clone(&next), Arc::clone(&ok), Arc::clone(&failed));
        handles.push(
            thread::Builder::new()
                .name(format!("bench-client-{i}"))
                .spawn(move || -> Result<()> {
                    // SAFETY: setns on a valid namespace fd; it changes only this thread.
                    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(std::io::Error::last_os_error()).context("setns");
                    }
                    drop(f);
                    if let Some(wait) = t0.checked_duration_since(Instant::now()) {
                        thread::sleep(wait);
                    }
                    loop {
                        if super::sys::interrupted().is_err() {
                            return Ok(());
                        }
                        match rate {
                            Some(r) => {
                                let n = next.fetch_add(1, Ordering::Relaxed);
                                let due = n as f64 / f64::from(r);
                                if due >= secs {
                                    return Ok(());
                                }
                                let at = t0 + Duration::from_secs_f64(due);
                                if let Some(wait) = at.checked_duration_since(Instant::now()) {
                                    thread::sleep(wait);
                                }
                            }
                            None => {
                                if t0.elapsed().as_secs_f64() >= secs {
                                    return Ok(());
                                }
                            }
                        }
                        if connect_once(target) {
                            ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })?,
        );
    }
    for h in handles {
        h.join()
            .map_err(|_| anyhow!("a client thread panicked"))??;
    }
    super::sys::interrupted()?;
    Ok(Outcome {
        ok: ok.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

fn connect_once(target: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut b = [0u8; 16];
    matches!(s.read(&mut b), Ok(0))
}
