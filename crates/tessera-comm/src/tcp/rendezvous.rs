//! Rendezvous: each rank connects to its right neighbour and accepts its left
//! one, and both ends check a handshake (protocol version, run token, world
//! size, ranks) before any data flows.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::link::{Link, Wire};
use super::wire::{Hello, Status, PROTOCOL_VERSION};
use super::TcpRing;
use crate::{CommError, Result};

/// Pause between connection attempts while the right neighbour is not listening yet.
const CONNECT_RETRY: Duration = Duration::from_millis(20);
/// Pause between polls of the non-blocking listener.
const ACCEPT_POLL: Duration = Duration::from_millis(2);

/// A rank that has opened its listener but not yet joined the ring.
///
/// Made by [`TcpRing::bind`]; the launcher relays every rank's
/// [`PendingRing::local_addr`] to all ranks, which then call
/// [`PendingRing::connect`].
#[derive(Debug)]
pub struct PendingRing {
    rank: usize,
    world: usize,
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl TcpRing {
    /// Opens this rank's listener on `bind_addr` (port 0 picks a free port).
    ///
    /// Binding to an unspecified address (`0.0.0.0`) accepts on every
    /// interface; the address relayed to the other ranks must then name a
    /// routable IP of this host instead of `0.0.0.0`.
    pub fn bind(rank: usize, world: usize, bind_addr: SocketAddr) -> Result<PendingRing> {
        if world == 0 || rank >= world || world > u32::MAX as usize {
            return Err(CommError::Rank { rank, world });
        }
        let listener = TcpListener::bind(bind_addr).map_err(|e| {
            CommError::Rendezvous(format!("rank {rank}: cannot listen on {bind_addr}: {e}"))
        })?;
        let local_addr = listener.local_addr().map_err(|e| {
            CommError::Rendezvous(format!(
                "rank {rank}: listener on {bind_addr} has no address: {e}"
            ))
        })?;
        Ok(PendingRing {
            rank,
            world,
            listener,
            local_addr,
        })
    }
}

impl PendingRing {
    /// The address this rank listens on, to be relayed to the other ranks.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Joins the ring.
    ///
    /// `peers[r]` is the listen address of rank `r` (this rank's own entry is
    /// not used). `run_token` identifies this run: every rank must pass the
    /// same value, and a peer with another token (a stale worker of an earlier
    /// run that kept its port) is refused. `timeout` bounds the whole
    /// rendezvous and, afterwards, every wait on a peer inside a collective.
    pub fn connect(
        self,
        peers: &[SocketAddr],
        run_token: u64,
        timeout: Duration,
    ) -> Result<TcpRing> {
        let (rank, world) = (self.rank, self.world);
        if peers.len() != world {
            return Err(CommError::Rendezvous(format!(
                "rank {rank}: {} peer addresses for world size {world}",
                peers.len()
            )));
        }
        if timeout.is_zero() {
            return Err(CommError::Rendezvous("the timeout must be positive".into()));
        }
        if world == 1 {
            return Ok(TcpRing::from_parts(rank, world, timeout, None));
        }
        let deadline = Instant::now() + timeout;
        let me = Me {
            rank,
            world,
            token: run_token,
            timeout,
            deadline,
        };
        let left = (rank + world - 1) % world;
        let right = (rank + 1) % world;
        let stop = AtomicBool::new(false);
        let (accepted, connected) = thread::scope(|s| {
            let acceptor = s.spawn(|| me.accept_left(&self.listener, left, peers[left], &stop));
            let connected = me.connect_right(right, peers[right]);
            if connected.is_err() {
                stop.store(true, Ordering::Relaxed);
            }
            let accepted = acceptor.join().unwrap_or_else(|_| {
                Err(CommError::Rendezvous("the accept thread panicked".into()))
            });
            (accepted, connected)
        });
        let (right_stream, left_stream) = match (connected, accepted) {
            (Ok(r), Ok(l)) => (r, l),
            (Ok(_), Err(e)) => return Err(e),
            (Err(e), Ok(_)) => return Err(e),
            // Both sides' stories together: a refusal seen by the acceptor often explains the other.
            (Err(CommError::Rendezvous(c)), Err(CommError::Rendezvous(a))) => {
                return Err(CommError::Rendezvous(format!(
                    "{c}; and while accepting: {a}"
                )))
            }
            (Err(e), Err(_)) => return Err(e),
        };
        drop(self.listener);
        let link = |stream: TcpStream, peer: usize| -> Result<Link> {
            let addr = peers[peer];
            let set = stream
                .set_read_timeout(Some(timeout))
                .and_then(|_| stream.set_write_timeout(Some(timeout)))
                .and_then(|_| stream.set_nodelay(true));
            set.map_err(|e| {
                CommError::Rendezvous(format!("rank {rank}: socket to rank {peer} ({addr}): {e}"))
            })?;
            Ok(Link {
                stream,
                peer,
                addr,
                timeout,
            })
        };
        let wire = Wire::new(rank, link(left_stream, left)?, link(right_stream, right)?);
        Ok(TcpRing::from_parts(rank, world, timeout, Some(wire)))
    }
}

/// What this rank checks handshakes against.
struct Me {
    rank: usize,
    world: usize,
    token: u64,
    timeout: Duration,
    deadline: Instant,
}

impl Me {
    fn hello(&self, status: Status, to: usize) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            status,
            token: self.token,
            world: self.world as u32,
            from: self.rank as u32,
            to: to as u32,
        }
    }

    fn remaining(&self) -> Option<Duration> {
        self.deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    }

    /// Why `h` (sent by a peer) does not belong to this ring, expecting it from `from`.
    fn judge(&self, h: &Hello, from: usize) -> (Status, String) {
        if h.version != PROTOCOL_VERSION {
            let why = format!(
                "protocol version {} (this rank speaks {PROTOCOL_VERSION})",
                h.version
            );
            return (Status::Version, why);
        }
        if h.token != self.token {
            let why = format!(
                "run token {:#x} (this run's token is {:#x}): a process from another run",
                h.token, self.token
            );
            return (Status::Token, why);
        }
        if h.world as usize != self.world {
            let why = format!(
                "world size {} (this rank's world size is {})",
                h.world, self.world
            );
            return (Status::World, why);
        }
        if h.from as usize != from || h.to as usize != self.rank {
            let why = format!(
                "rank {} addressing rank {} (expected rank {from} addressing rank {})",
                h.from, h.to, self.rank
            );
            return (Status::Rank, why);
        }
        (Status::Ok, String::new())
    }

    /// Accepts connections until the left neighbour presents a valid hello.
    /// Others (stale runs, wrong world) are answered with a refusal and dropped.
    fn accept_left(
        &self,
        listener: &TcpListener,
        left: usize,
        left_addr: SocketAddr,
        stop: &AtomicBool,
    ) -> Result<TcpStream> {
        let rank = self.rank;
        let fail = |e: io::Error| CommError::Rendezvous(format!("rank {rank}: accept failed: {e}"));
        listener.set_nonblocking(true).map_err(fail)?;
        let mut last_refusal = String::new();
        loop {
            if stop.load(Ordering::Relaxed) {
                return Err(CommError::Rendezvous(format!(
                    "rank {rank}: stopped waiting for left neighbour rank {left} ({left_addr}){}",
                    if last_refusal.is_empty() {
                        String::new()
                    } else {
                        format!("; refused: {last_refusal}")
                    }
                )));
            }
            let Some(remaining) = self.remaining() else {
                return Err(CommError::Rendezvous(format!(
                    "rank {rank}: left neighbour rank {left} ({left_addr}) did not connect within {} ms{}",
                    self.timeout.as_millis(),
                    if last_refusal.is_empty() { String::new() } else { format!("; refused: {last_refusal}") }
                )));
            };
            let (mut stream, from_addr) = match listener.accept() {
                Ok(x) => x,
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::Interrupted =>
                {
                    thread::sleep(ACCEPT_POLL);
                    continue;
                }
                Err(e) => return Err(fail(e)),
            };
            let setup = stream
                .set_nonblocking(false)
                .and_then(|_| stream.set_read_timeout(Some(remaining)))
                .and_then(|_| stream.set_write_timeout(Some(remaining)));
            if let Err(e) = setup {
                last_refusal = format!("{from_addr}: {e}");
                continue;
            }
            let hello = match Hello::read(&mut stream) {
                Ok(h) => h,
                Err(e) => {
                    last_refusal = format!("{from_addr} sent no valid handshake ({e})");
                    continue;
                }
            };
            let (status, why) = self.judge(&hello, left);
            if status != Status::Ok {
                last_refusal = format!("{from_addr} presented {why}");
                let _ = stream.write_all(&self.hello(status, hello.from as usize).encode());
                continue;
            }
            match stream.write_all(&self.hello(status, hello.from as usize).encode()) {
                Ok(()) => return Ok(stream),
                Err(e) => last_refusal = format!("{from_addr}: reply failed: {e}"),
            }
        }
    }

    /// Connects to the right neighbour (retrying until it listens) and checks its reply.
    fn connect_right(&self, right: usize, addr: SocketAddr) -> Result<TcpStream> {
        let rank = self.rank;
        let err = |what: String| {
            CommError::Rendezvous(format!(
                "rank {rank}: right neighbour rank {right} ({addr}) {what}"
            ))
        };
        let mut last = String::from("no attempt");
        let mut stream = loop {
            let Some(remaining) = self.remaining() else {
                return Err(err(format!(
                    "could not be reached within {} ms: {last}",
                    self.timeout.as_millis()
                )));
            };
            match TcpStream::connect_timeout(&addr, remaining) {
                Ok(s) => break s,
                Err(e) => {
                    last = e.to_string();
                    thread::sleep(CONNECT_RETRY.min(remaining));
                }
            }
        };
        let remaining = self.remaining().unwrap_or(Duration::from_millis(1));
        let io = |e: io::Error| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => err(format!(
                "accepted the connection but did not answer the handshake within {} ms",
                self.timeout.as_millis()
            )),
            _ => err(format!("failed during the handshake: {e}")),
        };
        stream.set_read_timeout(Some(remaining)).map_err(io)?;
        stream.set_write_timeout(Some(remaining)).map_err(io)?;
        stream
            .write_all(&self.hello(Status::Ok, right).encode())
            .map_err(io)?;
        let reply = Hello::read(&mut stream).map_err(io)?;
        match reply.status {
            Status::Ok => {}
            Status::Version => return Err(err(format!("refused the handshake: it speaks protocol version {}, this rank {PROTOCOL_VERSION}", reply.version))),
            Status::Token => return Err(err(format!("refused the handshake: run token mismatch (this rank's {:#x}, theirs {:#x})", self.token, reply.token))),
            Status::World => return Err(err(format!("refused the handshake: world size mismatch (this rank's {}, theirs {})", self.world, reply.world))),
            Status::Rank => return Err(err(format!("refused the handshake: it is rank {} and expected a connection from rank {}", reply.from, (reply.from as usize + self.world - 1) % self.world))),
        }
        // The acceptor accepted us; still check it is the peer we meant.
        let (status, why) = self.judge(&reply, right);
        if status != Status::Ok {
            return Err(err(format!("answered as {why}")));
        }
        Ok(stream)
    }
}
