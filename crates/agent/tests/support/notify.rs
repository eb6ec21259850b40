//! systemd's side of sd_notify: a datagram socket the agent writes to.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A bound notify socket (`NOTIFY_SOCKET` for the agent).
pub struct NotifySocket {
    socket: UnixDatagram,
    /// Where it is bound.
    pub path: PathBuf,
}

impl NotifySocket {
    /// Binds at `path` (replacing a stale socket file).
    pub fn bind(path: PathBuf) -> NotifySocket {
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).unwrap();
        NotifySocket { socket, path }
    }

    /// Waits (bounded) for a message with the line `needle`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            self.socket
                .set_read_timeout(Some(left.max(Duration::from_millis(10))))
                .unwrap();
            match self.socket.recv(&mut buf) {
                Ok(n) => {
                    if String::from_utf8_lossy(&buf[..n])
                        .lines()
                        .any(|l| l == needle)
                    {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
        false
    }

    /// Throws away what has arrived so far.
    pub fn drain(&self) {
        let mut buf = [0u8; 4096];
        self.socket.set_nonblocking(true).unwrap();
        while self.socket.recv(&mut buf).is_ok() {}
        self.socket.set_nonblocking(false).unwrap();
    }

    /// Reads and throws away everything from now on, on a thread of its
    /// own, as systemd would (a sender blocks once the socket's queue is
    /// full), until the returned guard is dropped.
    pub fn drain_in_background(&self) -> Drainer {
        let socket = self.socket.try_clone().unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !flag.load(Ordering::Relaxed) {
                let _ = socket.recv(&mut buf);
            }
        });
        Drainer {
            stop,
            thread: Some(thread),
        }
    }
}

/// Stops the background drain on drop.
pub struct Drainer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Drainer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
