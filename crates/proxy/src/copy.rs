//! The data path: moves bytes both ways between client and backend, with
//! half-close, and holds no buffer while a connection is idle.
//!
//! Instead of `copy_bidirectional` (two buffers allocated per connection for
//! its whole life), each direction waits for readiness and then moves what is
//! available synchronously: with `read`/`write` through one per-thread
//! buffer, or, once a read has filled that buffer (a bulk stream), with
//! `splice(2)` through a pipe borrowed from a per-thread pool. Per-connection
//! memory (a pipe or a heap copy of the unsent tail) is held only while the
//! destination is not accepting data.

use std::cell::RefCell;
use std::io::{self, Read};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use nix::fcntl::{OFlag, SpliceFFlags, splice};
use nix::sys::socket::{MsgFlags, send};
use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::DataPath;
use crate::stats::ActiveGuard;

/// Largest chunk moved per read/write.
const CHUNK: usize = 64 * 1024;
/// Pipe capacity asked for, and largest chunk moved per splice: 16x the
/// 64 KiB default, so a bulk stream needs far fewer splices (measured: about
/// half the CPU per GiB of 256 KiB). The pipe only references socket pages
/// while data is in flight; idle pipes in the pool hold no memory.
const PIPE_SIZE: usize = 1024 * 1024;
/// Chunks moved per wake-up before yielding to other connections.
const MAX_ROUNDS: usize = 16;
/// Idle pipes kept per worker thread.
const PIPE_POOL: usize = 16;

thread_local! {
    static COPY_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; CHUNK].into_boxed_slice());
    static PIPES: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

/// Why a connection ended.
#[derive(Debug)]
pub(crate) enum End {
    /// Both directions reached end-of-file.
    Done,
    /// No bytes either way for the configured idle timeout.
    IdleTimeout,
    /// Closed by the proxy: backend removed, or shutdown deadline.
    Closed,
    /// A socket error (reset, broken pipe, ...).
    Error(io::Error),
}

#[derive(Debug)]
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn take() -> Option<Pipe> {
        if let Some(pipe) = PIPES.with_borrow_mut(Vec::pop) {
            return Some(pipe);
        }
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).ok()?;
        // Best effort: if refused (pipe-max-size), the pipe keeps 64 KiB
        // and splices are simply shorter.
        let size = i32::try_from(PIPE_SIZE).unwrap_or(i32::MAX);
        let _ = nix::fcntl::fcntl(&write, nix::fcntl::FcntlArg::F_SETPIPE_SZ(size));
        Some(Pipe { read, write })
    }

    /// Returns an empty pipe to the pool (or closes it if the pool is full).
    fn give_back(self) {
        PIPES.with_borrow_mut(|pool| {
            if pool.len() < PIPE_POOL {
                pool.push(self);
            }
        });
    }
}

fn splice_io(
    from: impl std::os::fd::AsFd,
    to: impl std::os::fd::AsFd,
    len: usize,
) -> io::Result<usize> {
    let flags = SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE;
    splice(from, None, to, None, len, flags).map_err(io::Error::from)
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// Byte counter of one direction.
type Count<'a> = dyn Fn(usize) + Sync + 'a;

/// Data read from the source but not yet accepted by the destination.
/// Boxed so that an idle connection pays 16 bytes for it, not 40.
#[derive(Debug, Default)]
enum Pending {
    #[default]
    Empty,
    Buf(Box<BufTail>),
    Pipe(Box<PipeTail>),
}

#[derive(Debug)]
struct BufTail {
    data: Vec<u8>,
    offset: usize,
    /// What the source said after these bytes, acted on once they are out.
    then: AfterTail,
}

/// What comes after a pending tail.
#[derive(Debug)]
enum AfterTail {
    /// Read on from the source.
    More,
    /// The source's end-of-file was already read: shut the destination.
    Eof,
    /// Reading on from the source failed (say, a reset after a response):
    /// end the connection with that error, after delivering the bytes
    /// received before it, as a read that failed on a later pass would.
    Error(io::Error),
}

#[derive(Debug)]
struct PipeTail {
    pipe: Pipe,
    len: usize,
}

/// One direction of a connection.
#[derive(Debug, Default)]
struct Half {
    /// Source hit end-of-file and the destination's write side is shut.
    done: bool,
    /// A read filled the whole buffer: this is a bulk stream, so splice it.
    /// Small messages (requests, watch events) stay on read/write, which
    /// costs fewer syscalls than two splices.
    bulk: bool,
    pending: Pending,
}

impl Half {
    /// Makes progress if the socket it waits on is ready; otherwise
    /// registers the task's waker in the socket's own reader/writer slot
    /// (no waiter node in the future, which keeps idle connections small).
    fn poll_step(
        &mut self,
        cx: &mut Context<'_>,
        src: &TcpStream,
        dst: &TcpStream,
        other_done: bool,
        count: &Count<'_>,
        path: DataPath,
    ) -> Poll<io::Result<()>> {
        if self.done {
            return Poll::Pending;
        }
        Poll::Ready(if matches!(self.pending, Pending::Empty) {
            ready!(src.poll_read_ready(cx))?;
            self.forward(cx, src, dst, other_done, count, path)
        } else {
            ready!(dst.poll_write_ready(cx))?;
            self.flush(dst, other_done, count)
        })
    }

    fn forward(
        &mut self,
        cx: &mut Context<'_>,
        src: &TcpStream,
        dst: &TcpStream,
        other_done: bool,
        count: &Count<'_>,
        path: DataPath,
    ) -> io::Result<()> {
        if path == DataPath::Splice
            && self.bulk
            && let Some(pipe) = Pipe::take()
        {
            return self.forward_splice(pipe, src, dst, other_done, count);
        }
        self.forward_copy(cx, src, dst, other_done, path == DataPath::Splice, count)
    }

    fn finish(&mut self, dst: &TcpStream, other_done: bool) -> io::Result<()> {
        self.done = true;
        if other_done {
            return Ok(()); // both sockets are closed right away
        }
        // Half-close: pass the end-of-file on, keep the other direction open.
        match SockRef::from(dst).shutdown(Shutdown::Write) {
            Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(e),
            _ => Ok(()),
        }
    }

    fn forward_copy(
        &mut self,
        cx: &mut Context<'_>,
        src: &TcpStream,
        dst: &TcpStream,
        other_done: bool,
        splice_bulk: bool,
        count: &Count<'_>,
    ) -> io::Result<()> {
        COPY_BUF.with_borrow_mut(|buf| {
            for _ in 0..MAX_ROUNDS {
                let full = buf.len();
                let (mut read, mut drained) =
                    match read_chunk(src, Some(full), || (&*SockRef::from(src)).read(buf))? {
                        Chunk::Eof => return self.finish(dst, other_done),
                        Chunk::Empty => return Ok(()),
                        Chunk::Data { len, drained } => (len, drained),
                    };
                // A drained socket still readable has seen the peer's FIN
                // (tokio keeps read-closed readiness when it clears the
                // rest). Reading it now lets the data and our FIN leave in
                // one segment: a short response followed by close is the
                // common case of an apiserver request.
                let mut then = AfterTail::More;
                if drained && src.poll_read_ready(cx).is_ready() {
                    let rest = buf.get_mut(read..).unwrap_or_default();
                    let more = rest.len();
                    match read_chunk(src, Some(more), || (&*SockRef::from(src)).read(rest)) {
                        Ok(Chunk::Eof) => then = AfterTail::Eof,
                        Ok(Chunk::Empty) => {}
                        Ok(Chunk::Data { len, drained: now }) => {
                            read += len;
                            drained = now;
                        }
                        Err(e) => then = AfterTail::Error(e),
                    }
                }
                let chunk = buf.get(..read).unwrap_or_default();
                let written = write_some(dst, chunk, matches!(then, AfterTail::Eof))?;
                count(written);
                if written < chunk.len() {
                    let data = chunk.get(written..).unwrap_or_default().to_vec();
                    let tail = BufTail {
                        data,
                        offset: 0,
                        then,
                    };
                    self.pending = Pending::Buf(Box::new(tail));
                    return Ok(());
                }
                match then {
                    AfterTail::More => {}
                    AfterTail::Eof => return self.finish(dst, other_done),
                    AfterTail::Error(e) => return Err(e),
                }
                if drained {
                    return Ok(());
                }
                if splice_bulk {
                    // A full buffer: splice from the next pass (readiness
                    // is still set, so it comes at once).
                    self.bulk = true;
                    return Ok(());
                }
            }
            Ok(())
        })
    }

    fn forward_splice(
        &mut self,
        pipe: Pipe,
        src: &TcpStream,
        dst: &TcpStream,
        other_done: bool,
        count: &Count<'_>,
    ) -> io::Result<()> {
        for _ in 0..MAX_ROUNDS {
            let (read, drained) =
                match read_chunk(src, None, || splice_io(src, &pipe.write, PIPE_SIZE)) {
                    Ok(Chunk::Eof) => {
                        pipe.give_back();
                        return self.finish(dst, other_done);
                    }
                    Ok(Chunk::Empty) => break,
                    Ok(Chunk::Data { len, drained }) => (len, drained),
                    Err(e) => {
                        pipe.give_back(); // still empty
                        return Err(e);
                    }
                };
            let left = splice_out(&pipe, dst, read, count)?;
            if left > 0 {
                self.pending = Pending::Pipe(Box::new(PipeTail { pipe, len: left }));
                return Ok(());
            }
            if drained {
                break;
            }
        }
        pipe.give_back();
        Ok(())
    }

    fn flush(&mut self, dst: &TcpStream, other_done: bool, count: &Count<'_>) -> io::Result<()> {
        match std::mem::take(&mut self.pending) {
            Pending::Empty => {}
            Pending::Buf(mut tail) => {
                let rest = tail.data.get(tail.offset..).unwrap_or_default();
                let written = write_some(dst, rest, false)?;
                count(written);
                if written < rest.len() {
                    tail.offset += written;
                    self.pending = Pending::Buf(tail);
                } else {
                    match tail.then {
                        AfterTail::More => {}
                        AfterTail::Eof => return self.finish(dst, other_done),
                        AfterTail::Error(e) => return Err(e),
                    }
                }
            }
            Pending::Pipe(mut tail) => {
                tail.len = splice_out(&tail.pipe, dst, tail.len, count)?;
                if tail.len > 0 {
                    self.pending = Pending::Pipe(tail);
                } else {
                    tail.pipe.give_back();
                }
            }
        }
        Ok(())
    }
}

/// The bytes a just-accepted client has already sent, if any: one `recv`
/// on the socket before it is registered with the runtime. `None`
/// when it has sent nothing yet, or only its end-of-file, which the
/// connection then reads again.
pub(crate) fn read_early(client: &socket2::Socket) -> io::Result<Option<Vec<u8>>> {
    COPY_BUF.with_borrow_mut(|buf| match (&*client).read(buf) {
        Ok(0) => Ok(None),
        Ok(n) => Ok(buf.get(..n).map(<[u8]>::to_vec)),
        Err(e) if would_block(&e) => Ok(None),
        Err(e) => Err(e),
    })
}

/// Result of one read from a source socket.
enum Chunk {
    /// Nothing to read now (readiness cleared).
    Empty,
    /// End-of-file.
    Eof,
    /// `len` bytes; `drained` when a `recv` was short, which on epoll shows
    /// the socket buffer is empty (readiness is then cleared, as tokio's own
    /// `poll_read` does), saving the read that would return EAGAIN.
    Data { len: usize, drained: bool },
}

/// One read from `src`. `full` is the size asked of a `recv`: a shorter
/// `recv` means the socket was drained. `None` for `splice`, which also
/// stops short when the pipe runs out of slots while the socket still holds
/// data: clearing readiness then could stall a connection whose sender is
/// blocked on a full window, so splice reads go on until EAGAIN.
fn read_chunk(
    src: &TcpStream,
    full: Option<usize>,
    read: impl FnOnce() -> io::Result<usize>,
) -> io::Result<Chunk> {
    let mut short = 0;
    let result = src.try_io(Interest::READABLE, || {
        let n = read()?;
        if full.is_some_and(|full| 0 < n && n < full) {
            short = n;
            // Makes try_io clear readiness for this event tick only; a later
            // arrival re-arms it, and end-of-file readiness is never cleared.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match result {
        Ok(0) => Ok(Chunk::Eof),
        Ok(len) => Ok(Chunk::Data {
            len,
            drained: false,
        }),
        Err(e) if would_block(&e) && short > 0 => Ok(Chunk::Data {
            len: short,
            drained: true,
        }),
        Err(e) if would_block(&e) => Ok(Chunk::Empty),
        Err(e) => Err(e),
    }
}

/// Writes as much of `data` as `dst` accepts now; returns the count.
/// `fin_follows`: the caller shuts the write side right after a complete
/// write, so the data is sent with `MSG_MORE` and the kernel puts the FIN
/// on the same segment (`tcp_send_fin` appends it to an unsent tail)
/// instead of sending two.
fn write_some(dst: &TcpStream, data: &[u8], fin_follows: bool) -> io::Result<usize> {
    let flags = if fin_follows {
        // nix has no MSG_MORE constant.
        MsgFlags::from_bits_retain(libc::MSG_MORE) | MsgFlags::MSG_NOSIGNAL
    } else {
        MsgFlags::MSG_NOSIGNAL
    };
    let mut written = 0;
    while let Some(rest) = data.get(written..).filter(|r| !r.is_empty()) {
        let sent = dst.try_io(Interest::WRITABLE, || {
            send(dst.as_raw_fd(), rest, flags).map_err(io::Error::from)
        });
        match sent {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if would_block(&e) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

/// Moves up to `len` bytes from the pipe to `dst`; returns what is left in it.
fn splice_out(pipe: &Pipe, dst: &TcpStream, len: usize, count: &Count<'_>) -> io::Result<usize> {
    let mut left = len;
    while left > 0 {
        match dst.try_io(Interest::WRITABLE, || splice_io(&pipe.read, dst, left)) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                left = left.saturating_sub(n);
                count(n);
            }
            Err(e) if would_block(&e) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(left)
}

/// Passes over both directions per wake-up before yielding to other tasks.
const MAX_PASSES: usize = 8;

/// One proxied connection after connect: pumps bytes both ways until both
/// directions are done, an error occurs, the close token fires, or the
/// connection stays idle for the idle timeout.
///
/// A hand-written future rather than `select!` over readiness futures: the
/// sockets keep our waker in their own reader/writer slots, so the whole
/// state of an idle connection is this struct (about 150 bytes, checked by
/// a test), which is what makes idle connections cheap.
#[derive(Debug)]
pub(crate) struct Connection {
    client: TcpStream,
    backend: TcpStream,
    up: Half,
    down: Half,
    guard: ActiveGuard,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
    idle_limit: Option<Duration>,
    idle_sleep: Option<Pin<Box<Sleep>>>,
    path: DataPath,
}

impl Connection {
    pub(crate) fn new(
        client: TcpStream,
        backend: TcpStream,
        early: Option<Vec<u8>>,
        guard: ActiveGuard,
        close: CancellationToken,
        idle_limit: Option<Duration>,
        path: DataPath,
    ) -> Self {
        Self {
            client,
            backend,
            up: Half {
                pending: early.map_or(Pending::Empty, |data| {
                    Pending::Buf(Box::new(BufTail {
                        data,
                        offset: 0,
                        then: AfterTail::More,
                    }))
                }),
                ..Half::default()
            },
            down: Half::default(),
            guard,
            closed: Box::pin(close.cancelled_owned()),
            idle_limit,
            idle_sleep: idle_limit.map(|limit| Box::pin(tokio::time::sleep(limit))),
            path,
        }
    }
}

impl Future for Connection {
    type Output = End;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<End> {
        let Connection {
            client,
            backend,
            up,
            down,
            guard,
            closed,
            idle_limit,
            idle_sleep,
            path,
        } = self.get_mut();
        if closed.as_mut().poll(cx).is_ready() {
            return Poll::Ready(End::Closed);
        }
        let counters = guard.counters();
        let to_backend = |n| counters.add_to_backend(n);
        let from_backend = |n| counters.add_from_backend(n);
        let mut progressed = false;
        let mut waiting = false;
        for _ in 0..MAX_PASSES {
            let (up_done, down_done) = (up.done, down.done);
            let a = up.poll_step(cx, client, backend, down_done, &to_backend, *path);
            let b = down.poll_step(cx, backend, client, up_done, &from_backend, *path);
            match (a, b) {
                (Poll::Ready(Err(e)), _) | (_, Poll::Ready(Err(e))) => {
                    return Poll::Ready(End::Error(e));
                }
                (Poll::Pending, Poll::Pending) => {
                    // Both sockets now hold our waker.
                    waiting = true;
                    break;
                }
                _ => progressed = true,
            }
            if up.done && down.done {
                return Poll::Ready(End::Done);
            }
        }
        if let (Some(limit), Some(sleep)) = (idle_limit, idle_sleep.as_mut()) {
            if progressed {
                sleep.as_mut().reset(tokio::time::Instant::now() + *limit);
            }
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(End::IdleTimeout);
            }
        }
        if !waiting {
            // Passes exhausted with work left: yield, then come back.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}
