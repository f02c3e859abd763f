//! How connections end: Close frames, the closing phase, shutdown, dropping sockets.
//!
//! A connection gets at most one Close frame from us (RFC 6455 §5.5.1): every path
//! that sends one — a protocol failure, the answer to the client's Close, a KICK, an
//! idle timeout, a slow consumer, shutdown — goes through `close_with`, which does
//! nothing unless the connection is still open. Closing leaves every room at once;
//! what is queued is still written, then the write side is shut down and the socket is
//! dropped on the peer's EOF or after the close timeout. Dropping a socket gives its
//! admission slot back. Each open connection's end is counted once, by why
//! (`CloseReason`), where it starts: here.

use std::sync::Arc;

use super::conn::{flag, Phase};
use super::outbox::Chunk;
use super::timers::{stamp, ticks};
use super::Reactor;
use crate::link::stats::CloseReason;
use crate::ws::close::{parse_close_payload, CloseCode};
use crate::ws::frame::{encode_close, encode_frame, OpCode};

impl Reactor {
    /// Queues `frame` (a Close frame) and starts closing, if the connection is open.
    /// Returns whether it was.
    pub(super) fn close_with(&mut self, key: u32, frame: Chunk, why: CloseReason) -> bool {
        let Some(conn) = self.conns.get(key as usize) else {
            return false;
        };
        if conn.phase != Phase::Open {
            return false;
        }
        self.local.closes[why.index()] += 1;
        if let Some(log) = self.access.as_mut() {
            log.closing(key, conn.rooms.len(), why, frame.bytes());
        }
        self.queue(key, frame);
        self.begin_closing(key);
        true
    }

    pub(super) fn close_with_reason(
        &mut self,
        key: u32,
        code: CloseCode,
        reason: &str,
        why: CloseReason,
    ) -> bool {
        let frame = encode_close(code, reason).into_boxed_slice();
        self.close_with(key, Chunk::Owned(frame), why)
    }

    /// Fails the connection (RFC 6455 §7.1.7): a Close frame with `code`, then close.
    pub(super) fn fail(&mut self, key: u32, code: CloseCode, reason: &str) {
        if self.close_with_reason(key, code, reason, CloseReason::Protocol) {
            self.local.protocol_closes += 1;
        }
    }

    /// The client's Close: echo its code (§5.5.1), or 1002 for an invalid one.
    pub(super) fn on_close_frame(&mut self, key: u32, payload: &[u8]) {
        let (reply, why, theirs) = match parse_close_payload(payload) {
            Ok(Some((code, reason))) => (
                encode_close(code, ""),
                CloseReason::Client,
                Some((code.0, reason)),
            ),
            // 1005: "no status code was present" (RFC 6455 §7.4.1).
            Ok(None) => (
                encode_frame(OpCode::Close, &[]),
                CloseReason::Client,
                Some((1005, "")),
            ),
            Err(code) => {
                self.local.protocol_closes += 1;
                (
                    encode_close(code, "invalid close frame"),
                    CloseReason::Protocol,
                    None,
                )
            }
        };
        let closed = self.close_with(key, Chunk::Owned(reply.into_boxed_slice()), why);
        if let (true, Some(log), Some((code, reason))) = (closed, self.access.as_mut(), theirs) {
            // The client's own code and reason, not our echo of it.
            log.set_close(key, code, reason);
        }
    }

    /// Stops treating the connection as open; what is queued is still written, then
    /// the write side is shut down and reads are discarded until EOF or timeout. The
    /// close timeout runs from the first call.
    pub(super) fn begin_closing(&mut self, key: u32) {
        let Some(conn) = self.conns.get(key as usize) else {
            return;
        };
        let phase = conn.phase;
        if phase == Phase::Open {
            self.leave_all(key);
        }
        let now = stamp(self.now);
        let conn = &mut self.conns[key as usize];
        if phase != Phase::Closing {
            conn.phase = Phase::Closing;
            conn.last_seen = now;
            conn.input = None;
            conn.clear(flag::READ_PAUSED);
            if conn.has(flag::READ_PENDING) {
                // Input (perhaps the EOF) arrived while paused: read it now, no edge
                // will announce it again.
                conn.clear(flag::READ_PENDING);
                self.read_again.push(key);
            }
        }
        conn.set(flag::SHUTDOWN_AFTER_FLUSH);
        self.mark_dirty(key);
    }

    /// Drops the connection now, giving back its admission slot.
    pub(super) fn close_now(&mut self, key: u32) {
        let Some(conn) = self.conns.get(key as usize) else {
            return;
        };
        if conn.phase == Phase::Open {
            self.local.closes[CloseReason::Abnormal.index()] += 1;
            if let Some(log) = self.access.as_mut() {
                log.abnormal(key, conn.rooms.len());
            }
            self.leave_all(key);
        }
        if let Some(log) = self.access.as_mut() {
            log.finish(key);
        }
        self.positions.forget_conn(key);
        if !self.peer_slots.is_empty() {
            if let Some(slot) = self.peer_slots.remove(&key) {
                self.shared.peers.release(slot);
            }
        }
        // Closing the descriptor also removes it from the epoll set.
        let conn = self.conns.remove(key as usize);
        self.shared.capacity.release(conn.has(flag::OPENED));
        self.local.closed += 1;
    }

    /// Stop accepting, send 1001 to every open connection, drop handshakes, and give
    /// clients the grace period to answer.
    pub(super) fn start_shutdown(&mut self) {
        if self.shutdown_at.is_some() {
            return;
        }
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let keys: Vec<(u32, Phase)> = self
            .conns
            .iter()
            .map(|(k, c)| (k as u32, c.phase))
            .collect();
        let frame: Arc<[u8]> = encode_close(CloseCode::GOING_AWAY, "server shutting down").into();
        for (key, phase) in keys {
            match phase {
                Phase::Open => {
                    self.close_with(key, Chunk::Shared(frame.clone()), CloseReason::Shutdown);
                }
                Phase::Proxy | Phase::Handshake => self.close_now(key),
                Phase::Closing => {}
            }
        }
        self.shutdown_at = Some(self.now + ticks(self.shared.settings.shutdown_grace));
    }

    /// At exit: every socket still held is dropped; a last turn's end sends the events
    /// and counters that caused.
    pub(super) fn drop_all(&mut self) {
        let keys: Vec<u32> = self.conns.iter().map(|(k, _)| k as u32).collect();
        for key in keys {
            self.close_now(key);
        }
        self.before_sleep();
    }
}
