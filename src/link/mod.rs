//! What passes between the reactors and the dispatcher, and the few pieces of state
//! they share.
//!
//! `reactor` and `dispatch` never import each other: both import this module. It holds
//! the commands the dispatcher sends (`ReactorMsg`), the events reactors send back
//! (`Event`), the handles each side uses to reach the other, the counters and
//! histograms reactors publish for INFO and `/metrics` (`stats`, `histogram`), the
//! process-wide admission counts (`capacity`), the threads' heartbeats behind
//! `/healthz` and `/readyz` (`health`), and the per-address limits (`peers`). No I/O
//! here, and no lock but the handshake-time shard locks of `peers`.

pub mod capacity;
pub mod handover;
pub mod health;
pub mod histogram;
pub mod peers;
pub mod stats;

use std::sync::Arc;

use crossbeam_channel::Sender;
use mio::Waker;

pub use stats::{Gauges, ReactorStats};

/// Who a push is for.
#[derive(Debug, Clone)]
pub enum Target {
    All,
    Room(Arc<str>),
    User(Arc<str>),
}

/// Work the dispatcher sends to a reactor, applied in order.
#[derive(Debug, Clone)]
pub enum Command {
    /// Deliver `frame` (a complete WebSocket frame) to the target's connections here;
    /// connections of the `wspush.v1` subprotocol get `envelope` instead, when given
    /// (the same message as a JSON envelope, with its position for a room).
    /// `offset`: the room message's position, when it has one.
    Push {
        target: Target,
        frame: Arc<[u8]>,
        envelope: Option<Arc<[u8]>>,
        offset: Option<u64>,
        /// The same frames compressed (permessage-deflate), for connections that
        /// negotiated it.
        deflated: Deflated,
    },
    /// The answer to `Event::Position { req }`: write `joined` (the `joined` reply
    /// with the room's position), then the `replay` frames (recovered messages), to
    /// that connection, and deliver the room's pushes to it again from here on.
    /// With `fail`, the position could not be had (the broker is down) or history
    /// could not be merged with live messages: close the connection with 4002, and
    /// the client reconnects and recovers again.
    Position {
        req: u64,
        joined: Arc<[u8]>,
        replay: Vec<Arc<[u8]>>,
        fail: bool,
        /// The offset the client now stands at (0: none to skip): a push of the room at or below it
        /// that still comes (in cluster mode, a message Redis had sent this node but
        /// that was not routed yet when the answer came) is skipped for it.
        through: u64,
    },
    /// Put every connection of `user` into `room`; answer `Event::Ack { req }`.
    Join {
        req: u64,
        user: Arc<str>,
        room: Arc<str>,
    },
    /// Take every connection of `user` out of `room`; answer `Event::Ack { req }`.
    Leave {
        req: u64,
        user: Arc<str>,
        room: Arc<str>,
    },
    /// Close every connection of `user` with `frame` (a Close frame); answer with an Ack.
    Kick {
        req: u64,
        user: Arc<str>,
        frame: Arc<[u8]>,
    },
    /// The pushes after this in the batch were received by the dispatcher at
    /// `received`: the reactor observes the push latency from it once their frames
    /// are written. At most one per batch, so sampling costs nothing per delivery.
    Sample { received: std::time::Instant },
}

impl Command {
    /// The request id a JOIN / LEAVE / KICK must be answered with.
    pub fn request(&self) -> Option<u64> {
        match self {
            Command::Join { req, .. } | Command::Leave { req, .. } | Command::Kick { req, .. } => {
                Some(*req)
            }
            Command::Push { .. } | Command::Position { .. } | Command::Sample { .. } => None,
        }
    }
}

/// A push's compressed frames, each made at most once and only while some
/// recipient reactor has a connection that negotiated permessage-deflate (counted
/// by `Event::Deflate`). `None`: that variant goes out uncompressed.
#[derive(Debug, Clone, Default)]
pub struct Deflated {
    /// `Command::Push::frame` compressed.
    pub frame: Option<Arc<[u8]>>,
    /// `Command::Push::envelope` compressed.
    pub envelope: Option<Arc<[u8]>>,
}

/// A message on a reactor's channel.
#[derive(Debug)]
pub enum ReactorMsg {
    /// Commands gathered by the dispatcher in one of its turns.
    Batch(Vec<Command>),
    /// Stop accepting, close every connection with 1001, exit after the grace period.
    Shutdown,
    /// Upgrade: stop reading and accepting, finish what is in flight, then export
    /// every connection on this sender and touch none of them until `Thaw`.
    Freeze(crossbeam_channel::Sender<handover::ReactorExport>),
    /// The upgrade failed: go on serving every connection as before.
    Thaw,
}

/// One change seen by a reactor, sent to the dispatcher in one `Vec` per loop turn,
/// before the replies the changes caused (the 101, a "joined") are written: by the
/// time a client sees its join confirmed, the event is on the dispatcher's channel,
/// and the dispatcher drains that channel before it executes any command. Events never
/// carry slab keys: those are private to a reactor and reused.
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
    /// A `wspush.v1` connection opened (+1) or closed (−1): while there is none, the
    /// dispatcher encodes no envelopes at all.
    V1 { reactor: usize, delta: i32 },
    /// A connection that negotiated permessage-deflate opened (+1) or closed (−1);
    /// `v1`: it speaks `wspush.v1` (it takes compressed envelopes, the others
    /// compressed raw frames). While a reactor has none, nothing is compressed for it.
    Deflate {
        reactor: usize,
        v1: bool,
        delta: i32,
    },
    /// A `wspush.v1` connection joined `room` (at connect or by a join op) and waits
    /// for its position, and for what it missed after `since` (epoch, offset) if
    /// given. Until the answer (`Command::Position { req }`) comes, the reactor holds
    /// back the room's pushes from that connection: they are older than the position
    /// the answer gives, so they are either replayed or before the client's start.
    /// `req` is the reactor's own number for the request (no slab key leaves it).
    Position {
        reactor: usize,
        req: u64,
        room: Arc<str>,
        since: Option<(Arc<str>, u64)>,
    },
    /// `reactor` has exited and dropped its channel: it will ack nothing more, and
    /// what it was sent but never read is lost. Sent after its last Ack.
    Exited { reactor: usize },
}

/// How the dispatcher reaches a reactor, and what it reads of it.
#[derive(Clone)]
pub struct ReactorHandle {
    pub tx: Sender<ReactorMsg>,
    pub waker: Arc<Waker>,
    pub stats: Arc<ReactorStats>,
    pub gauges: Arc<Gauges>,
}

impl ReactorHandle {
    /// Sends a message and wakes the reactor. Gives the message back if the reactor
    /// has exited.
    pub fn send(&self, msg: ReactorMsg) -> Result<(), ReactorMsg> {
        self.tx.send(msg).map_err(|e| e.into_inner())?;
        // A failed wake-up (the eventfd is full) still leaves a wake-up pending.
        let _ = self.waker.wake();
        Ok(())
    }
}

/// The process-wide state the dispatcher reads for INFO and beats into.
#[derive(Clone)]
pub struct Census {
    pub capacity: Arc<capacity::Capacity>,
    pub liveness: Arc<health::Liveness>,
    pub peers: Arc<peers::PeerTable>,
}

/// How a reactor reaches the dispatcher.
#[derive(Clone)]
pub struct DispatcherLink {
    pub tx: Sender<Vec<Event>>,
    pub waker: Arc<Waker>,
}
