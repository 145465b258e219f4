//! The two sockets of one ring member and the framed transfers over them.
//!
//! Data flows one way round the ring: a rank writes to its right neighbour and
//! reads from its left one. Each socket has read and write timeouts equal to the
//! ring's timeout, so no wait on a peer lasts longer than that.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::wire::{self, Header, Kind, Op, FRAME_PAYLOAD, HEADER_LEN};
use crate::{CommError, Result};

/// Messages up to this size are written before reading, on one thread: they fit
/// in the kernel's socket buffers, so the write cannot wait on the reader.
const INLINE_BYTES: usize = 32 * 1024;
/// After a failed receive, how long the send thread may take to reach a frame
/// boundary (so an abort frame can follow) before its socket is shut down.
const STOP_GRACE: Duration = Duration::from_millis(500);
/// Upper bound on writing the abort frame itself.
const ABORT_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// One connected neighbour.
#[derive(Debug)]
pub(crate) struct Link {
    pub stream: TcpStream,
    pub peer: usize,
    pub addr: SocketAddr,
    pub timeout: Duration,
}

impl Link {
    /// Maps a socket error to the error that names this peer.
    pub fn io_error(&self, op: &'static str, e: io::Error) -> CommError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => CommError::Timeout {
                op,
                peer: self.peer,
                addr: self.addr.to_string(),
                timeout_ms: self.timeout.as_millis() as u64,
            },
            io::ErrorKind::InvalidData => self.mismatch(op, e.to_string()),
            io::ErrorKind::UnexpectedEof => CommError::Peer {
                op,
                peer: self.peer,
                addr: self.addr.to_string(),
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection (it exited or gave up)",
                ),
            },
            _ => CommError::Peer {
                op,
                peer: self.peer,
                addr: self.addr.to_string(),
                source: e,
            },
        }
    }

    fn mismatch(&self, op: &'static str, detail: String) -> CommError {
        CommError::Mismatch {
            op,
            peer: self.peer,
            addr: self.addr.to_string(),
            detail,
        }
    }
}

/// Identifies one message: which collective, which call, which step, how long.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tag {
    pub op: Op,
    pub seq: u32,
    /// Ring step, or the root for broadcast.
    pub arg: u32,
    /// Whole buffer length on this rank (elements, or bytes for broadcast).
    pub total: u64,
}

/// Where a received `f32` chunk goes.
pub(crate) enum Sink<'a> {
    /// Element-wise `dst[i] = dst[i] + received[i]` (reduce-scatter).
    Add(&'a mut [f32]),
    /// Overwrite (all-gather).
    Store(&'a mut [f32]),
}

impl Sink<'_> {
    fn len(&self) -> usize {
        match self {
            Sink::Add(d) | Sink::Store(d) => d.len(),
        }
    }
}

/// Whether the sender wrote the whole message or stopped at a frame boundary.
#[derive(Debug, PartialEq, Eq)]
enum Sent {
    All,
    Stopped,
}

/// Both neighbours of one rank plus reusable frame buffers.
#[derive(Debug)]
pub(crate) struct Wire {
    pub rank: usize,
    pub left: Link,
    pub right: Link,
    send_buf: Vec<u8>,
    recv_buf: Vec<u8>,
    /// False once a write to the right stopped inside a frame: an abort frame
    /// written after that would be misread as payload.
    right_clean: bool,
}

impl Wire {
    pub fn new(rank: usize, left: Link, right: Link) -> Wire {
        Wire {
            rank,
            left,
            right,
            send_buf: Vec::new(),
            recv_buf: Vec::new(),
            right_clean: true,
        }
    }

    /// One ring step: send `send` to the right while receiving a chunk of
    /// `sink.len()` elements from the left. Large messages are written from a
    /// helper thread so neither side waits for the other's reader.
    pub fn exchange(&mut self, tag: Tag, send: &[f32], sink: Sink<'_>) -> Result<()> {
        let op = tag.op.name();
        let Wire {
            rank,
            left,
            right,
            send_buf,
            recv_buf,
            right_clean,
        } = self;
        if send.len() * 4 <= INLINE_BYTES {
            if let Err(e) = send_f32(right, send_buf, tag, send, None) {
                *right_clean = false;
                return Err(right.io_error(op, e));
            }
            return recv_f32(left, recv_buf, tag, sink, *rank);
        }

        let stop = AtomicBool::new(false);
        let stop = &stop;
        let right: &Link = right;
        let (sent, received) = thread::scope(|s| {
            let (done_tx, done_rx) = mpsc::channel::<()>();
            let sender = s.spawn(move || {
                let r = send_f32(right, send_buf, tag, send, Some(stop));
                let at = Instant::now();
                let _ = done_tx.send(());
                (r, at)
            });
            let received =
                recv_f32(left, recv_buf, tag, sink, *rank).map_err(|e| (e, Instant::now()));
            let mut shut = false;
            if received.is_err() {
                stop.store(true, Ordering::Relaxed);
                if done_rx.recv_timeout(STOP_GRACE).is_err() {
                    // Still blocked in a write: unblock it; the stream is then dirty.
                    let _ = right.stream.shutdown(Shutdown::Both);
                    shut = true;
                }
            }
            let sent = match sender.join() {
                Ok((r, at)) => (r, at),
                Err(_) => (
                    Err(io::Error::other("the send thread panicked")),
                    Instant::now(),
                ),
            };
            ((sent, shut), received)
        });
        let ((sent, shut), received) = (sent, received);
        if shut {
            *right_clean = false;
        }
        let sent = match sent {
            (Ok(_), _) => Ok(()),
            (Err(e), at) => {
                *right_clean = false;
                Err((right.io_error(op, e), at))
            }
        };
        match (sent, received) {
            (Ok(()), Ok(())) => Ok(()),
            (Err((e, _)), Ok(())) | (Ok(()), Err((e, _))) => Err(e),
            // Report whichever failed first: the later one is usually its echo.
            (Err((se, s_at)), Err((re, r_at))) => Err(if s_at < r_at { se } else { re }),
        }
    }

    /// Writes a byte message to the right neighbour.
    pub fn send_bytes(&mut self, tag: Tag, data: &[u8]) -> Result<()> {
        for piece in pieces(data, FRAME_PAYLOAD) {
            if let Err(e) = write_frame_bytes(&self.right.stream, &mut self.send_buf, tag, piece) {
                self.right_clean = false;
                return Err(self.right.io_error(tag.op.name(), e));
            }
        }
        Ok(())
    }

    /// Reads a byte message from the left neighbour into `buf`; with `forward`,
    /// passes each frame on to the right as soon as it arrives.
    pub fn recv_bytes(&mut self, tag: Tag, buf: &mut [u8], forward: bool) -> Result<()> {
        let op = tag.op.name();
        let mut got = 0;
        loop {
            let p = read_data_header(&self.left, tag, buf.len() - got, 1, self.rank)?;
            let dst = &mut buf[got..got + p];
            (&self.left.stream)
                .read_exact(dst)
                .map_err(|e| self.left.io_error(op, e))?;
            if forward {
                if let Err(e) = write_frame_bytes(&self.right.stream, &mut self.send_buf, tag, dst)
                {
                    self.right_clean = false;
                    return Err(self.right.io_error(op, e));
                }
            }
            got += p;
            if got == buf.len() {
                return Ok(());
            }
        }
    }

    /// Marks the ring dead: tells the right neighbour why (when the stream is
    /// at a frame boundary) and shuts that socket, so the failure travels on
    /// round the ring with its first cause. The left socket stays open until
    /// the ring is dropped: closing it would make the left neighbour, which
    /// learns of the failure from its own left, blame this rank instead.
    pub fn abort(&mut self, op: Op, seq: u32, reason: &str) {
        if self.right_clean {
            let t = self.right.timeout.min(ABORT_WRITE_TIMEOUT);
            let _ = self.right.stream.set_write_timeout(Some(t));
            let _ = wire::write_abort(&mut &self.right.stream, op, seq, reason);
        }
        let _ = self.right.stream.shutdown(Shutdown::Both);
        self.right_clean = false;
    }
}

/// Splits `data` into frame-sized pieces; an empty message is one empty frame.
fn pieces<T>(data: &[T], per: usize) -> impl Iterator<Item = &[T]> {
    data.chunks(per).chain(data.is_empty().then_some(data))
}

fn write_frame_bytes(
    mut w: &TcpStream,
    buf: &mut Vec<u8>,
    tag: Tag,
    piece: &[u8],
) -> io::Result<()> {
    buf.resize(HEADER_LEN + piece.len(), 0);
    data_header(tag, piece.len()).encode_into(&mut buf[..HEADER_LEN]);
    buf[HEADER_LEN..].copy_from_slice(piece);
    w.write_all(buf)
}

fn data_header(tag: Tag, payload: usize) -> Header {
    Header {
        kind: Kind::Data,
        op: tag.op,
        arg: tag.arg,
        seq: tag.seq,
        total: tag.total,
        payload: payload as u64,
    }
}

/// Writes `data` as little-endian frames; with `stop`, checks it before each
/// frame and returns [`Sent::Stopped`] at a boundary once it is set.
fn send_f32(
    link: &Link,
    buf: &mut Vec<u8>,
    tag: Tag,
    data: &[f32],
    stop: Option<&AtomicBool>,
) -> io::Result<Sent> {
    buf.resize(HEADER_LEN + FRAME_PAYLOAD, 0);
    let mut w = &link.stream;
    for piece in pieces(data, FRAME_PAYLOAD / 4) {
        if stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            return Ok(Sent::Stopped);
        }
        let n = piece.len() * 4;
        data_header(tag, n).encode_into(&mut buf[..HEADER_LEN]);
        for (b, v) in buf[HEADER_LEN..HEADER_LEN + n]
            .chunks_exact_mut(4)
            .zip(piece)
        {
            b.copy_from_slice(&v.to_le_bytes());
        }
        w.write_all(&buf[..HEADER_LEN + n])?;
    }
    Ok(Sent::All)
}

/// Reads one `f32` message from `link` into `sink`.
fn recv_f32(
    link: &Link,
    buf: &mut Vec<u8>,
    tag: Tag,
    mut sink: Sink<'_>,
    rank: usize,
) -> Result<()> {
    let op = tag.op.name();
    let want = sink.len() * 4;
    buf.resize(FRAME_PAYLOAD, 0);
    let mut got = 0;
    loop {
        let p = read_data_header(link, tag, want - got, 4, rank)?;
        let bytes = &mut buf[..p];
        (&link.stream)
            .read_exact(bytes)
            .map_err(|e| link.io_error(op, e))?;
        let at = got / 4;
        let vals = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
        match &mut sink {
            Sink::Add(d) => d[at..at + p / 4]
                .iter_mut()
                .zip(vals)
                .for_each(|(d, v)| *d += v),
            Sink::Store(d) => d[at..at + p / 4]
                .iter_mut()
                .zip(vals)
                .for_each(|(d, v)| *d = v),
        }
        got += p;
        if got == want {
            return Ok(());
        }
    }
}

/// Reads and checks the next frame header from the left; returns its payload
/// length. An abort frame becomes [`CommError::PeerAborted`].
fn read_data_header(
    link: &Link,
    tag: Tag,
    remaining: usize,
    elem: usize,
    rank: usize,
) -> Result<usize> {
    let op = tag.op.name();
    let mut r = &link.stream;
    let h = Header::read(&mut r).map_err(|e| link.io_error(op, e))?;
    if h.kind == Kind::Abort {
        let reason = wire::read_abort_reason(&mut r, &h).map_err(|e| link.io_error(op, e))?;
        return Err(CommError::PeerAborted {
            op,
            peer: link.peer,
            addr: link.addr.to_string(),
            reason,
        });
    }
    if h.op != tag.op || h.seq != tag.seq || h.arg != tag.arg {
        let what = |o: Op, seq: u32, arg: u32| match o {
            Op::Broadcast | Op::BroadcastDone => format!("{} #{seq} with root {arg}", o.name()),
            _ => format!("{} #{seq} step {arg}", o.name()),
        };
        return Err(link.mismatch(
            op,
            format!(
                "it sent {}, this rank (rank {rank}) expected {}",
                what(h.op, h.seq, h.arg),
                what(tag.op, tag.seq, tag.arg)
            ),
        ));
    }
    if h.total != tag.total {
        let unit = if elem == 1 { "bytes" } else { "elements" };
        return Err(CommError::Length {
            op,
            detail: format!(
                "this rank (rank {rank}) has {} {unit}, peer rank {} ({}) has {}",
                tag.total, link.peer, link.addr, h.total
            ),
        });
    }
    let p = h.payload as usize;
    if p > remaining || p > FRAME_PAYLOAD || !p.is_multiple_of(elem) || (p == 0 && remaining > 0) {
        return Err(link.mismatch(
            op,
            format!("frame of {p} payload bytes where {remaining} bytes remain"),
        ));
    }
    Ok(p)
}
