//! Output: everything a turn produced goes out before the reactor sleeps.
//!
//! First the turn's events go to the dispatcher (so its counts hold what the replies
//! about to be written confirm), then every dirty connection is written with one
//! `writev` (`Outbox::flush`). While writing, pushes that arrived meanwhile are taken
//! in every `DRAIN_EVERY` connections, within the arena's budget: connections not yet
//! written carry them in the same system call. A connection over `--max-pending` is
//! closed with 1008 (close policy) or loses the pushes that do not fit (drop policy);
//! both, and every push a slow close discards, are counted.

use super::conn::{flag, Phase};
use super::outbox::{self, Chunk};
use super::settings::SlowPolicy;
use super::Reactor;
use crate::link::stats::CloseReason;
use crate::ws::close::CloseCode;

/// While writing, look for newly arrived pushes after this many connections.
const DRAIN_EVERY: usize = 32;
/// Rounds of writing that may take in newly arrived pushes before the reactor sleeps.
const MAX_DRAIN_ROUNDS: usize = 3;
/// Unread event batches after which the dispatcher is woken even without an ack, so
/// its channel stays short between its own wake-ups.
const WAKE_AFTER_BATCHES: usize = 64;

impl Reactor {
    pub(super) fn mark_dirty(&mut self, key: u32) {
        if let Some(conn) = self.conns.get_mut(key as usize) {
            if !conn.has(flag::DIRTY) {
                conn.set(flag::DIRTY);
                self.outbox.dirty.push(key);
            }
        }
    }

    /// Queues a chunk for one connection this turn.
    pub(super) fn queue(&mut self, key: u32, chunk: Chunk) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        self.queued_this_read += chunk.bytes().len();
        let idx = self.outbox.add_frame(chunk);
        self.outbox.append(&mut conn.chain, idx);
        if !conn.has(flag::DIRTY) {
            conn.set(flag::DIRTY);
            self.outbox.dirty.push(key);
        }
    }

    /// Before sleeping: report changes to the dispatcher, then write every dirty
    /// connection once.
    pub(super) fn before_sleep(&mut self) {
        self.send_events();
        // Later rounds write what the earlier ones added: pushes that arrived while
        // writing, and the Close frames of slow consumers.
        let mut round = 0;
        while !self.outbox.dirty.is_empty() {
            self.flush_dirty(round < MAX_DRAIN_ROUNDS);
            self.send_events();
            round += 1;
        }
        self.local.outbox_overflows += std::mem::take(&mut self.outbox.overflows);
        self.outbox.clear();
        self.local.publish(&self.stats);
    }

    /// Sends the turn's events in one message. The dispatcher drains its event
    /// channel before it executes any command, so count changes need no wake-up of
    /// their own (a wake-up is a system call here and a context switch there, per
    /// turn); only acks, which a control client is waiting for, wake it, or a long
    /// backlog of events.
    pub(super) fn send_events(&mut self) {
        if self.events.is_empty() {
            return;
        }
        let events = std::mem::take(&mut self.events);
        let wake = std::mem::take(&mut self.wake_dispatcher);
        if self.dispatcher.tx.send(events).is_ok()
            && (wake || self.dispatcher.tx.len() >= WAKE_AFTER_BATCHES)
        {
            let _ = self.dispatcher.waker.wake();
        }
    }

    /// Writes each dirty connection. With `drain`, pushes that arrived meanwhile are
    /// taken from the channel every `DRAIN_EVERY` connections.
    fn flush_dirty(&mut self, drain: bool) {
        let mut dirty = std::mem::take(&mut self.outbox.dirty);
        let max_pending = self.shared.settings.max_pending;
        let drop_policy = self.shared.settings.slow_policy == SlowPolicy::Drop;
        let mut slow = Vec::new();
        let mut finished = Vec::new();
        for (i, &key) in dirty.iter().enumerate() {
            if drain
                && i % DRAIN_EVERY == DRAIN_EVERY - 1
                && (self.carry.is_some() || !self.rx.is_empty())
            {
                self.drain_channel();
                // What those commands changed reaches the dispatcher before any reply
                // they caused is written in this round.
                self.send_events();
            }
            let Some(conn) = self.conns.get_mut(key as usize) else {
                continue;
            };
            conn.clear(flag::DIRTY);
            if conn.has(flag::WRITE_SHUT) {
                conn.chain = outbox::Chain::EMPTY;
                conn.output = None;
                continue;
            }
            let writable = conn.has(flag::WRITABLE);
            let res = self.outbox.flush(
                &mut conn.stream,
                writable,
                &mut conn.chain,
                &mut conn.output,
                max_pending,
                drop_policy,
            );
            let o = match res {
                Ok(o) => o,
                Err(_) => {
                    finished.push(key);
                    continue;
                }
            };
            self.local.bytes_written += o.written as u64;
            if let Some(log) = self.access.as_mut() {
                log.bytes_out(key, o.written);
            }
            self.local.writev_calls += u64::from(o.writes);
            self.local.slow_drops += u64::from(o.dropped);
            if o.blocked {
                conn.clear(flag::WRITABLE);
            }
            if o.over_limit > 0 {
                // Pushes that did not fit are gone, whether or not this connection
                // is still open to be closed for it.
                self.local.slow_close_discards += u64::from(o.over_limit);
                if conn.phase == Phase::Open {
                    slow.push(key);
                    continue;
                }
            }
            if conn.output.is_none() && conn.has(flag::SHUTDOWN_AFTER_FLUSH) {
                let _ = conn.stream.shutdown(std::net::Shutdown::Write);
                conn.set(flag::WRITE_SHUT);
                if conn.has(flag::PEER_EOF) {
                    // Both directions are done: nothing more can happen here.
                    finished.push(key);
                    continue;
                }
            }
            // Backpressure on a client that sends but does not read its replies.
            if conn.pending() > max_pending && conn.phase == Phase::Open {
                conn.set(flag::READ_PAUSED);
            } else if conn.has(flag::READ_PAUSED) {
                conn.clear(flag::READ_PAUSED);
                if conn.has(flag::READ_PENDING) {
                    conn.clear(flag::READ_PENDING);
                    self.read_again.push(key);
                }
            }
        }
        dirty.clear();
        if self.outbox.dirty.is_empty() {
            // Keep the allocation.
            self.outbox.dirty = dirty;
        }
        for key in slow {
            self.slow_close(key);
        }
        for key in finished {
            self.close_now(key);
        }
    }

    /// A connection over --max-pending under the close policy: its queued pushes are
    /// dropped (all but a partly written frame, which must finish) and a 1008 close
    /// takes their place. A connection that is already closing (a KICK or a shutdown
    /// in the same round) has its Close frame queued: it gets no second one.
    pub(super) fn slow_close(&mut self, key: u32) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        if conn.phase != Phase::Open {
            return;
        }
        if let Some(q) = conn.output.as_deref_mut() {
            self.local.slow_close_discards += u64::from(q.keep_partial_front());
        }
        self.local.slow_closes += 1;
        self.close_with_reason(
            key,
            CloseCode::POLICY_VIOLATION,
            "slow consumer",
            CloseReason::SlowConsumer,
        );
    }
}
