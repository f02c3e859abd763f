//! What reactors tell the dispatcher: membership changes and command results.
//!
//! Reactors send these in one `Vec` per loop turn, before they write the replies the
//! changes caused (the 101, a "joined"), so by the time a client sees its join
//! confirmed, the dispatcher's counts already include it. Events never carry slab
//! keys: those are private to a reactor and reused.

use std::sync::Arc;

/// One change seen by a reactor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A WebSocket connection opened (+1) or closed (−1), with its user if any.
    Conn {
        reactor: usize,
        user: Option<Arc<str>>,
        delta: i32,
    },
    /// A connection joined (+1) or left (−1) a room.
    Room {
        reactor: usize,
        room: Arc<str>,
        delta: i32,
    },
    /// A JOIN / LEAVE / KICK request `req` was applied to `affected` connections of
    /// `reactor`. One reactor acks its requests in the order it was sent them.
    Ack {
        reactor: usize,
        req: u64,
        affected: u32,
    },
    /// `reactor` has exited and dropped its channel: it will ack nothing more, and
    /// what it was sent but never read is lost. Sent after its last Ack.
    Exited { reactor: usize },
}
