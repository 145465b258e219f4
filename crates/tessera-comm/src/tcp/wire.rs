//! Bytes on the wire: the handshake record and the frame header.
//!
//! All integers are little-endian. A message is one or more frames; every
//! frame carries the collective's op, sequence number, step (or root) and the
//! sender's total buffer length, so a rank that is out of step with its
//! neighbour is told so at the first frame instead of misreading payload.

use std::io::{self, Read, Write};

/// Magic of the handshake record.
pub(crate) const HELLO_MAGIC: [u8; 8] = *b"TSRAHELO";
/// Bumped whenever the frame layout changes.
pub(crate) const PROTOCOL_VERSION: u32 = 1;
pub(crate) const HELLO_LEN: usize = 40;

/// Magic of every frame header.
pub(crate) const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"TSFR");
pub(crate) const HEADER_LEN: usize = 32;
/// Largest payload of one frame; messages are split so an abort can always
/// be sent at a frame boundary soon after a failure.
pub(crate) const FRAME_PAYLOAD: usize = 256 * 1024;
/// Longest abort reason that is sent or accepted.
pub(crate) const MAX_REASON: usize = 4096;

/// Handshake status codes (the acceptor's verdict on a hello).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Ok = 0,
    Version = 1,
    Token = 2,
    World = 3,
    Rank = 4,
}

impl Status {
    fn from_u32(v: u32) -> Option<Status> {
        Some(match v {
            0 => Status::Ok,
            1 => Status::Version,
            2 => Status::Token,
            3 => Status::World,
            4 => Status::Rank,
            _ => return None,
        })
    }
}

/// One handshake record: the connector's hello, and the acceptor's reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hello {
    pub version: u32,
    pub status: Status,
    pub token: u64,
    pub world: u32,
    /// Rank of the sender of this record.
    pub from: u32,
    /// Rank the sender believes it is talking to.
    pub to: u32,
}

impl Hello {
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[0..8].copy_from_slice(&HELLO_MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&(self.status as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.token.to_le_bytes());
        b[24..28].copy_from_slice(&self.world.to_le_bytes());
        b[28..32].copy_from_slice(&self.from.to_le_bytes());
        b[32..36].copy_from_slice(&self.to.to_le_bytes());
        b
    }

    /// Reads one record; `InvalidData` when the bytes are not a Tessera hello.
    pub fn read(r: &mut impl Read) -> io::Result<Hello> {
        let mut b = [0u8; HELLO_LEN];
        r.read_exact(&mut b)?;
        if b[0..8] != HELLO_MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a Tessera TCP ring handshake",
            ));
        }
        let status = Status::from_u32(u32_at(&b, 12)).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "unknown handshake status")
        })?;
        Ok(Hello {
            version: u32_at(&b, 8),
            status,
            token: u64_at(&b, 16),
            world: u32_at(&b, 24),
            from: u32_at(&b, 28),
            to: u32_at(&b, 32),
        })
    }
}

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Data = 1,
    /// Payload is a UTF-8 reason; the sender has failed and stops.
    Abort = 2,
}

/// Which collective a frame belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    AllReduce = 1,
    AllGather = 2,
    Broadcast = 3,
    /// Sent to the root by its left neighbour once the broadcast went round.
    BroadcastDone = 4,
    Barrier = 5,
}

impl Op {
    fn from_u8(v: u8) -> Option<Op> {
        Some(match v {
            1 => Op::AllReduce,
            2 => Op::AllGather,
            3 => Op::Broadcast,
            4 => Op::BroadcastDone,
            5 => Op::Barrier,
            _ => return None,
        })
    }

    /// The name used in errors (the trait method's name).
    pub fn name(self) -> &'static str {
        match self {
            Op::AllReduce => "all_reduce_sum",
            Op::AllGather => "all_gather",
            Op::Broadcast | Op::BroadcastDone => "broadcast",
            Op::Barrier => "barrier",
        }
    }
}

/// A frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub kind: Kind,
    pub op: Op,
    /// Ring step for all-reduce/all-gather/barrier, root for broadcast.
    pub arg: u32,
    /// Collective sequence number on the sender (wrapping).
    pub seq: u32,
    /// The sender's whole buffer length (elements for f32 ops, bytes for broadcast).
    pub total: u64,
    /// Payload bytes that follow this header.
    pub payload: u64,
}

impl Header {
    pub fn encode_into(&self, b: &mut [u8]) {
        b[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
        b[4] = self.kind as u8;
        b[5] = self.op as u8;
        b[6..8].copy_from_slice(&[0, 0]);
        b[8..12].copy_from_slice(&self.arg.to_le_bytes());
        b[12..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..24].copy_from_slice(&self.total.to_le_bytes());
        b[24..32].copy_from_slice(&self.payload.to_le_bytes());
    }

    /// Reads one header; `InvalidData` when the bytes are not a frame.
    pub fn read(r: &mut impl Read) -> io::Result<Header> {
        let mut b = [0u8; HEADER_LEN];
        r.read_exact(&mut b)?;
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
        if u32_at(&b, 0) != FRAME_MAGIC {
            return Err(bad("received bytes that are not a Tessera frame"));
        }
        let kind = match b[4] {
            1 => Kind::Data,
            2 => Kind::Abort,
            _ => return Err(bad("unknown frame kind")),
        };
        let op = Op::from_u8(b[5]).ok_or_else(|| bad("unknown collective op in frame"))?;
        Ok(Header {
            kind,
            op,
            arg: u32_at(&b, 8),
            seq: u32_at(&b, 12),
            total: u64_at(&b, 16),
            payload: u64_at(&b, 24),
        })
    }
}

/// Writes an abort frame carrying `reason` (truncated to [`MAX_REASON`]).
pub(crate) fn write_abort(w: &mut impl Write, op: Op, seq: u32, reason: &str) -> io::Result<()> {
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    let mut b = vec![0u8; HEADER_LEN + reason.len()];
    Header {
        kind: Kind::Abort,
        op,
        arg: 0,
        seq,
        total: 0,
        payload: reason.len() as u64,
    }
    .encode_into(&mut b[..HEADER_LEN]);
    b[HEADER_LEN..].copy_from_slice(reason);
    w.write_all(&b)
}

/// Reads the reason that follows an abort header.
pub(crate) fn read_abort_reason(r: &mut impl Read, h: &Header) -> io::Result<String> {
    let len = (h.payload as usize).min(MAX_REASON);
    let mut b = vec![0u8; len];
    r.read_exact(&mut b)?;
    Ok(String::from_utf8_lossy(&b).into_owned())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_hello_round_trip() {
        let h = Header {
            kind: Kind::Data,
            op: Op::AllGather,
            arg: 3,
            seq: 77,
            total: 1 << 40,
            payload: 12,
        };
        let mut b = [0u8; HEADER_LEN];
        h.encode_into(&mut b);
        assert_eq!(Header::read(&mut &b[..]).unwrap(), h);
        b[0] ^= 1;
        assert_eq!(
            Header::read(&mut &b[..]).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );

        let hello = Hello {
            version: PROTOCOL_VERSION,
            status: Status::Token,
            token: 0xdead_beef_0bad_f00d,
            world: 4,
            from: 1,
            to: 2,
        };
        assert_eq!(Hello::read(&mut &hello.encode()[..]).unwrap(), hello);
    }

    #[test]
    fn abort_reason_is_truncated_on_a_char_boundary() {
        let reason = "é".repeat(MAX_REASON);
        let mut b = Vec::new();
        write_abort(&mut b, Op::Barrier, 5, &reason).unwrap();
        let mut r = &b[..];
        let h = Header::read(&mut r).unwrap();
        assert_eq!(h.kind, Kind::Abort);
        let got = read_abort_reason(&mut r, &h).unwrap();
        assert!(got.len() <= MAX_REASON && got.chars().all(|c| c == 'é'));
    }
}
