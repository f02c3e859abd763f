//! One client connection: the slab entry a reactor keeps per socket.
//!
//! This struct is what an idle connection costs in user space, so it must stay small
//! (≤ 128 bytes, asserted below) and own no heap buffer while idle: `input` exists only
//! while a request head, frame or fragmented message is incomplete, `output` only while
//! the socket would block. Rooms are a short inline list of interned ids.

use mio::net::TcpStream;
use smallvec::SmallVec;

use super::groups::Membership;
use super::outbox::{Chain, WriteQueue};
use crate::ws::message::Assembler;

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the PROXY protocol header (`--proxy-protocol`).
    Proxy,
    /// Waiting for the HTTP upgrade request.
    Handshake,
    /// A WebSocket connection; may receive pushes.
    Open,
    /// A Close frame or HTTP response is queued or sent (never a second one); what is
    /// queued is written, then reads are discarded until EOF or the close timeout.
    Closing,
}

/// Connection flags (bits of `Conn::flags`).
pub mod flag {
    /// The socket took our last write: try writing without waiting for an event.
    pub const WRITABLE: u16 = 1;
    /// In the outbox's dirty list this turn.
    pub const DIRTY: u16 = 2;
    /// A ping is out and unanswered.
    pub const PINGED: u16 = 4;
    /// Reading stopped because this connection's replies are not being read.
    pub const READ_PAUSED: u16 = 8;
    /// A readable event arrived while reading was paused.
    pub const READ_PENDING: u16 = 16;
    /// Shut down the write side once the queue drains.
    pub const SHUTDOWN_AFTER_FLUSH: u16 = 32;
    /// Holds an established slot (it upgraded), not a handshake slot.
    pub const OPENED: u16 = 64;
    /// The write side is shut down.
    pub const WRITE_SHUT: u16 = 128;
    /// The peer shut down its write side (read returned 0): drop the socket as soon as
    /// what is queued is written.
    pub const PEER_EOF: u16 = 256;
    /// A refresh was asked for since the last timer scan (at most one per scan
    /// interval gets its signature checked).
    pub const REFRESHED: u16 = 512;
    /// Refused refreshes, counted in two bits; the third closes the connection, so a
    /// client cannot make the reactor verify signatures without end.
    pub const REFRESH_REFUSED_1: u16 = 1024;
    pub const REFRESH_REFUSED_2: u16 = 2048;
    /// Speaks the `wspush.v1` subprotocol: pushes as JSON envelopes, positions in
    /// `joined`.
    pub const V1: u16 = 4096;
    /// permessage-deflate: three bits holding the connection's window code
    /// (`ws::deflate::window_code`); all clear without the extension.
    pub const DEFLATE: u16 = 0xe000;
    pub const DEFLATE_SHIFT: u32 = 13;
}

/// State kept only while input is incomplete.
#[derive(Default)]
pub struct Input {
    /// Received bytes not yet consumed: an incomplete request head or frame.
    pub buf: Vec<u8>,
    /// Message assembly state (fragmented message, partly scanned frame).
    pub asm: Assembler,
    /// The client's address from a PROXY header, kept until the upgrade.
    pub peer: Option<std::net::IpAddr>,
    /// When the socket was accepted, kept until the upgrade (handshake duration).
    pub accepted: Option<std::time::Instant>,
}

impl Input {
    /// True when nothing is in progress and the box can be freed.
    pub fn is_idle(&self) -> bool {
        self.buf.is_empty() && self.asm.is_idle() && self.peer.is_none() && self.accepted.is_none()
    }
}

/// One room a connection is in.
#[derive(Clone, Copy, Debug)]
pub struct Joined {
    pub m: Membership,
    /// Joined by the client itself (`{"op":"join"}` or `?rooms=`), so a token refresh
    /// that no longer grants it takes it away; rooms the token or the backend gave are
    /// kept.
    pub by_client: bool,
}

/// A client connection.
pub struct Conn {
    /// The socket (a file descriptor).
    pub stream: TcpStream,
    /// Life-cycle phase.
    pub phase: Phase,
    /// `flag::*` bits.
    pub flags: u16,
    /// Reactor clock tick, truncated to 32 bits (ages are wrapping differences, so
    /// they are right for 497 days after the event): of accepting (`Handshake`), of
    /// the last received byte (`Open`), of entering `Closing`.
    pub last_seen: u32,
    /// This turn's output chain in the reactor's outbox.
    pub chain: Chain,
    /// The user this connection belongs to (`Membership::NONE` if anonymous).
    pub user: Membership,
    /// Rooms joined.
    pub rooms: SmallVec<[Joined; 2]>,
    /// Unix second at which the connection's token (plus leeway) expires; 0: never.
    pub expires: u32,
    /// The connection's grants in the reactor's grant table (`grants::NONE` without
    /// authentication).
    pub grants: u32,
    /// Incomplete input, if any.
    pub input: Option<Box<Input>>,
    /// Unsent output, if the socket would block.
    pub output: Option<Box<WriteQueue>>,
}

impl Conn {
    pub fn new(stream: TcpStream, now: u32, phase: Phase) -> Conn {
        Conn {
            stream,
            phase,
            flags: flag::WRITABLE,
            last_seen: now,
            chain: Chain::EMPTY,
            user: Membership::NONE,
            rooms: SmallVec::new(),
            expires: 0,
            grants: super::grants::NONE,
            input: None,
            output: None,
        }
    }

    /// The permessage-deflate window code (`ws::deflate::may_share`); 0 without the
    /// extension.
    pub fn deflate_code(&self) -> u16 {
        (self.flags & flag::DEFLATE) >> flag::DEFLATE_SHIFT
    }

    pub fn has(&self, f: u16) -> bool {
        self.flags & f != 0
    }

    pub fn set(&mut self, f: u16) {
        self.flags |= f;
    }

    pub fn clear(&mut self, f: u16) {
        self.flags &= !f;
    }

    /// Bytes waiting in the write queue.
    pub fn pending(&self) -> usize {
        self.output.as_deref().map_or(0, |q| q.bytes())
    }

    /// The index in `rooms` of the membership in room `id`.
    pub fn room_index(&self, id: u32) -> Option<usize> {
        self.rooms.iter().position(|r| r.m.group == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slab_entry_stays_within_128_bytes() {
        // A slab stores `Entry<T>`: the value plus at most a word of discriminant.
        let conn = std::mem::size_of::<Conn>();
        assert!(conn + 8 <= 128, "Conn is {conn} bytes");
    }
}
