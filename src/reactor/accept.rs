//! Accepting sockets: in batches of at most `ACCEPTS_PER_TURN` per loop turn (so a
//! connection storm cannot keep a turn from writing its replies), each against the
//! process-wide handshake budget, and backing off (never spinning) when descriptors
//! or memory run out.
//!
//! Per connection this costs `accept4`, one `read` (the listener defers accept until
//! the request is there, so it is read at once) and one `epoll_ctl`; no
//! `setsockopt` (TCP_NODELAY is inherited from the listener) and no extra poll round.
//! A handshaking connection owns its `Input` box from accept on: it holds the accept
//! time (for the handshake duration histogram) and is freed at the upgrade, so an
//! open, idle connection still owns no heap.
//!
//! A socket over the handshake budget is refused at once: a 503 with `Retry-After`,
//! whatever it has sent is read and discarded (so closing sends FIN, not a reset that
//! could destroy the 503 before the client reads it), and the descriptor is closed in
//! the same call. It never enters the slab and never holds established capacity.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use log::{debug, warn};
use mio::net::TcpStream;
use mio::{Interest, Token};

use super::conn::{Conn, Input, Phase};
use super::outbox;
use super::timers::{stamp, ticks};
use super::Reactor;

/// Most sockets accepted in one loop turn; the rest wait for the next (the turn
/// does not sleep while `accept_pending` is set).
const ACCEPTS_PER_TURN: usize = 64;
/// Back-off when accept fails for lack of descriptors or memory.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Minimum interval between two "out of descriptors" log lines.
const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Connections one reactor may hold: far below `outbox::NIL`, so that a turn's arena
/// (budget + one push to every connection) always fits `u32` indexes.
const MAX_CONNS_PER_REACTOR: usize = 1 << 28;

/// The answer to a socket over the handshake budget.
static BUSY_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 44\r\nRetry-After: 1\r\nConnection: close\r\n\r\ntoo many connections in handshake, retry 1s\n";

impl Reactor {
    /// Accepts what the backlog holds, up to the turn's budget.
    pub(super) fn accept(&mut self) {
        self.accept_pending = false;
        if self.accept_paused_until.is_some() {
            return;
        }
        for _ in 0..ACCEPTS_PER_TURN {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((stream, _addr)) => self.add_conn(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_resource_exhausted(&e) => {
                    self.local.accept_pauses += 1;
                    self.accept_paused_until = Some(self.now + ticks(ACCEPT_BACKOFF).max(1));
                    let quiet = self
                        .last_accept_log
                        .is_some_and(|t| t.elapsed() < ACCEPT_LOG_INTERVAL);
                    if !quiet {
                        warn!(
                            "reactor {}: accept failed ({e}); holding {} sockets; pausing accepts for {:?} at a time (logged at most every {:?})",
                            self.id,
                            self.conns.len(),
                            ACCEPT_BACKOFF,
                            ACCEPT_LOG_INTERVAL
                        );
                        self.last_accept_log = Some(Instant::now());
                    }
                    return;
                }
                // A connection reset before we accepted it, and the like.
                Err(e) => debug!("reactor {}: accept: {e}", self.id),
            }
        }
        // Budget spent with the backlog perhaps not empty: no new edge will say so.
        self.accept_pending = true;
    }

    /// Accepts sockets an edge or a spent budget left waiting, and starts accepting
    /// again once the descriptor back-off is over.
    pub(super) fn accept_waiting(&mut self) {
        if self.accept_paused_until.is_some_and(|t| self.now >= t) {
            self.accept_paused_until = None;
            self.accept_pending = true;
        }
        if self.accept_pending {
            self.accept();
        }
    }

    fn add_conn(&mut self, stream: TcpStream) {
        if self.conns.len() >= MAX_CONNS_PER_REACTOR || !self.shared.capacity.begin_handshake() {
            self.refuse_busy(stream);
            return;
        }
        let phase = if self.shared.settings.proxy_protocol {
            Phase::Proxy
        } else {
            Phase::Handshake
        };
        let mut conn = Conn::new(stream, stamp(self.now), phase);
        let accepted = Instant::now();
        conn.input = Some(Box::new(Input {
            accepted: Some(accepted),
            ..Input::default()
        }));
        let key = self.conns.insert(conn) as u32;
        debug_assert!(key < outbox::NIL);
        self.local.accepted += 1;
        if let Some(log) = self.access.as_mut() {
            log.accepted(key, accepted);
        }
        // The listener defers accept until the request has arrived (TCP_DEFER_ACCEPT):
        // read it now rather than a poll round later. Reading before registering
        // means registration finds the socket drained and raises no event for bytes
        // already read; bytes that arrive after the read are reported by it.
        self.read(key, false);
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        // Registered once for both directions: with edge-triggered epoll a writable
        // event comes only when a full send buffer drains, so a connection is never
        // re-registered (no epoll_ctl per write or per blocked socket).
        if let Err(e) = self.poll.registry().register(
            &mut conn.stream,
            Token(key as usize),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("reactor {}: register: {e}", self.id);
            self.close_now(key);
        }
    }

    fn refuse_busy(&mut self, mut stream: TcpStream) {
        self.local.handshakes_refused += 1;
        let _ = stream.write(BUSY_RESPONSE);
        let _ = stream.read(&mut self.scratch);
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
}

fn is_resource_exhausted(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
