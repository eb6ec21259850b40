//! Binding and connecting inside a network namespace, so that one test
//! process can run an apiserver per namespace (all sharing one store).
//!
//! A short-lived thread enters the namespace (setns(2) affects only the
//! calling thread), creates the socket and exits; the socket stays in the
//! namespace it was created in.

use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;

use nix::sched::{CloneFlags, setns};

fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let handle = File::open(netns)?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                setns(&handle, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                f()
            })
            .join()
            .map_err(|_| io::Error::other("netns thread panicked"))?
    })
}

/// Binds a TCP listener on `addr` inside the namespace at `netns`
/// (e.g. `/run/netns/NAME`).
pub fn bind_in_netns(netns: &Path, addr: SocketAddr) -> io::Result<TcpListener> {
    in_netns(netns, || TcpListener::bind(addr))
}

/// Connects to `addr` from inside the namespace at `netns`.
pub fn connect_in_netns(netns: &Path, addr: SocketAddr) -> io::Result<TcpStream> {
    in_netns(netns, || TcpStream::connect(addr))
}
