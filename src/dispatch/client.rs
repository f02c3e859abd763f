//! One control-port client as the dispatcher holds it, and the ordering of its
//! replies.
//!
//! Redis clients match replies to commands by position, so replies must go out in
//! command order even when some are not known yet — in cluster mode a PUBLISH is
//! answered only once Redis has taken it. Such a reply is *held*: a placeholder in
//! the client's reply queue, and every reply produced after it is kept behind it
//! until it is resolved. The number of held replies per client is bounded; at the
//! bound the client's commands pause, like any client whose replies are not read.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use mio::net::TcpStream;

use crate::control::command::Command;
use crate::control::resp::{self, Parser};

/// Most replies one client may have held at once; its commands pause at the bound.
pub const MAX_HELD_REPLIES: usize = 4096;

/// Why a held reply became an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The broker instance was not connected when the command ran.
    Unavailable,
    /// The broker connection was lost before it answered.
    Lost,
    /// The broker answered with an error.
    Refused(String),
    /// A room message with history in cluster mode: its position comes from Redis,
    /// so without Redis it was delivered nowhere.
    NotPositioned,
}

impl Failure {
    /// The error reply, naming what happened on this node (`local` connections).
    fn message(&self, local: u64, push: bool) -> String {
        let done = if push {
            format!("delivered to {local} connections on this node only")
        } else {
            "cluster-wide counts are not available".to_string()
        };
        match self {
            Failure::Unavailable => format!("TRYAGAIN broker unavailable: {done}"),
            Failure::Lost => {
                format!("TRYAGAIN broker connection lost before it answered: {done}; other nodes may or may not have it")
            }
            Failure::Refused(e) => format!("TRYAGAIN broker error ({e}): {done}"),
            Failure::NotPositioned => {
                "TRYAGAIN broker unavailable: not delivered (positions and history are kept in Redis)".to_string()
            }
        }
    }
}

/// A reply whose value is still coming.
struct Held {
    id: u64,
    /// The sum so far (local recipients, then what the broker adds).
    value: u64,
    /// Answers still awaited (reactor acks, broker reply).
    parts: u8,
    /// Whether the command was a push (for the wording of an error).
    push: bool,
    failure: Option<Failure>,
    /// A complete reply that replaces the integer (HISTORY read from Redis).
    raw: Option<Vec<u8>>,
    /// Replies to later commands, written once this one is.
    after: Vec<u8>,
}

/// One control-port client.
pub(super) struct Client {
    /// Unique id (slab keys are reused; acks must not reach a newcomer).
    pub id: u64,
    pub stream: TcpStream,
    /// Who connected, for the log.
    pub peer: SocketAddr,
    pub parser: Parser,
    /// Received bytes not yet parsed.
    pub input: Vec<u8>,
    /// Replies ready to write.
    pub output: Vec<u8>,
    /// Replies not known yet, in command order (see the module comment).
    held: VecDeque<Held>,
    pub authed: bool,
    /// Failed AUTH attempts on this connection.
    pub auth_failures: u8,
    /// Waiting for the reactors to ack request `req`; its commands are paused.
    pub waiting: Option<u64>,
    /// Close once `output` is written (QUIT, protocol error).
    pub closing: bool,
    /// Peer closed its side or the socket failed.
    pub eof: bool,
    pub writable: bool,
    /// Since when `output` has been over the soft limit without draining.
    pub stalled_since: Option<Instant>,
    /// Publishes to the broker not answered yet, all through instance
    /// `broker_instance`.
    pub broker_inflight: u32,
    pub broker_instance: usize,
    /// Whether a fence (see `Dispatcher::fence`) has completed on `broker_instance`
    /// since this client's last publish there.
    pub fenced: bool,
    /// A command that goes through another broker instance than the unanswered ones:
    /// it runs once they are answered, so that the first instance has handed the
    /// earlier messages to its subscribers before the next instance sees the later
    /// one (the order a recipient on another node gets them in).
    pub stashed: Option<Command>,
    /// The client chose RESP3 with `HELLO 3`.
    pub resp3: bool,
    /// `CLIENT SETNAME` / `HELLO … SETNAME`.
    pub name: Option<Vec<u8>>,
}

impl Client {
    pub fn new(
        id: u64,
        stream: TcpStream,
        peer: SocketAddr,
        parser: Parser,
        authed: bool,
    ) -> Client {
        Client {
            id,
            stream,
            peer,
            parser,
            input: Vec::new(),
            output: Vec::new(),
            held: VecDeque::new(),
            authed,
            auth_failures: 0,
            waiting: None,
            closing: false,
            eof: false,
            writable: true,
            stalled_since: None,
            broker_inflight: 0,
            broker_instance: 0,
            fenced: true,
            stashed: None,
            resp3: false,
            name: None,
        }
    }

    /// Where the next reply goes: behind the last held one, if any.
    pub fn out(&mut self) -> &mut Vec<u8> {
        match self.held.back_mut() {
            Some(h) => &mut h.after,
            None => &mut self.output,
        }
    }

    /// Holds the next reply until `parts` answers have come (see [`Client::resolve`]).
    pub fn hold(&mut self, id: u64, value: u64, parts: u8, push: bool, failure: Option<Failure>) {
        self.held.push_back(Held {
            id,
            value,
            parts,
            push,
            failure,
            raw: None,
            after: Vec::new(),
        });
        self.release();
    }

    /// One answer for held reply `id`: adds `add` to its value, or fails it.
    /// Returns whether replies became ready to write.
    pub fn resolve(&mut self, id: u64, add: u64, failure: Option<Failure>) -> bool {
        if let Some(h) = self.held.iter_mut().find(|h| h.id == id) {
            h.value = h.value.saturating_add(add);
            h.parts = h.parts.saturating_sub(1);
            if h.failure.is_none() {
                h.failure = failure;
            }
        }
        self.release()
    }

    /// Resolves held reply `id` with a complete reply of its own.
    pub fn resolve_raw(&mut self, id: u64, reply: Vec<u8>) -> bool {
        if let Some(h) = self.held.iter_mut().find(|h| h.id == id) {
            h.raw = Some(reply);
            h.parts = 0;
        }
        self.release()
    }

    /// Moves every resolved reply at the front of the queue to the output.
    fn release(&mut self) -> bool {
        let mut moved = false;
        while self.held.front().is_some_and(|h| h.parts == 0) {
            let Some(h) = self.held.pop_front() else {
                break;
            };
            let out = &mut self.output;
            match (&h.failure, &h.raw) {
                (Some(f), _) => resp::write_error(out, &f.message(h.value, h.push)),
                (None, Some(raw)) => out.extend_from_slice(raw),
                (None, None) => resp::write_integer(out, h.value.min(i64::MAX as u64) as i64),
            }
            out.extend_from_slice(&h.after);
            moved = true;
        }
        moved
    }

    /// Replies held, not yet resolved.
    pub fn held_count(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::resp::Limits;

    fn client() -> Client {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let s = TcpStream::connect(addr).unwrap();
        let parser = Parser::new(Limits {
            max_bulk: 16,
            max_args: 4,
        });
        Client::new(1, s, addr, parser, true)
    }

    #[test]
    fn replies_after_a_held_one_wait_for_it_in_order() {
        let mut c = client();
        resp::write_integer(c.out(), 1);
        c.hold(7, 2, 1, true, None);
        resp::write_simple(c.out(), "PONG");
        c.hold(8, 0, 1, true, None);
        resp::write_integer(c.out(), 9);
        assert_eq!(c.output, b":1\r\n");
        // The second resolves first: nothing moves until the first does.
        assert!(!c.resolve(8, 5, None));
        assert_eq!(c.output, b":1\r\n");
        assert!(c.resolve(7, 3, None));
        assert_eq!(c.output, b":1\r\n:5\r\n+PONG\r\n:5\r\n:9\r\n");
        assert_eq!(c.held_count(), 0);
    }

    #[test]
    fn a_failed_reply_names_the_local_count() {
        let mut c = client();
        c.hold(1, 4, 0, true, Some(Failure::Unavailable));
        let text = String::from_utf8(c.output.clone()).unwrap();
        assert!(text.starts_with("-TRYAGAIN broker unavailable: delivered to 4 connections"));
        c.hold(2, 0, 2, false, None);
        c.resolve(2, 1, Some(Failure::Lost));
        assert_eq!(c.held_count(), 1);
        c.resolve(2, 1, None);
        assert!(String::from_utf8_lossy(&c.output).contains("-TRYAGAIN broker connection lost"));
    }

    #[test]
    fn an_unknown_id_changes_nothing() {
        let mut c = client();
        c.hold(1, 0, 1, true, None);
        assert!(!c.resolve(99, 1, None));
        assert_eq!(c.held_count(), 1);
    }
}
