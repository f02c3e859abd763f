//! `wspush.v1` joins waiting for their room's position from the dispatcher.
//!
//! A `wspush.v1` client is told, in its `joined` reply, where the room is (epoch,
//! offset), and may ask to recover what it missed since a position it saw. Positions
//! and history live with the dispatcher, which sees every publish in order; the
//! reactor asks (`Event::Position`) and holds the room's pushes back from that
//! connection until the answer (`Command::Position`) comes through the same FIFO
//! channel as the pushes. Every push that arrives before the answer was published
//! before the dispatcher answered, so it is either in the replay or older than the
//! position the client starts from: dropping it for this connection loses nothing and
//! duplicates nothing, and every push after the answer is live.
//!
//! Costs nothing per idle connection: the maps hold only joins in flight (a round
//! trip to the dispatcher), keyed by (slab key, room group); a connection that closes
//! or leaves the room while waiting is forgotten, so a reused slab key never receives
//! another connection's answer.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::conn::{flag, Phase};
use super::outbox::Chunk;
use super::Reactor;
use crate::link::stats::CloseReason;
use crate::link::Event;
use crate::ws::close::CloseCode;
use crate::ws::frame::encode_close;

/// Joins in flight.
#[derive(Default)]
pub(super) struct Positions {
    next: u64,
    /// Request → (connection key, room group).
    pending: HashMap<u64, (u32, u32)>,
    /// (connection key, room group) whose pushes are held back.
    holding: HashSet<(u32, u32)>,
    /// (connection key, room group) → offset its recovery reached: pushes of the
    /// room at or below it are skipped; the first one above removes the entry.
    floors: HashMap<(u32, u32), u64>,
}

impl Positions {
    /// Whether a push of room `group` (at `offset`, if it has one) is to be skipped
    /// for connection `key`: held back while its join waits, or at or below the
    /// offset its recovery reached.
    pub fn skip(&mut self, key: u32, group: u32, offset: Option<u64>) -> bool {
        if !self.holding.is_empty() && self.holding.contains(&(key, group)) {
            return true;
        }
        if self.floors.is_empty() {
            return false;
        }
        match (self.floors.get(&(key, group)), offset) {
            (Some(&floor), Some(o)) if o <= floor => true,
            (Some(_), _) => {
                self.floors.remove(&(key, group));
                false
            }
            (None, _) => false,
        }
    }

    /// Entries held in all three tables (INFO's `reactor_position_waits`: 0 once no
    /// `wspush.v1` join is in flight and no recovery floor is pending).
    pub fn len(&self) -> usize {
        self.pending.len() + self.holding.len() + self.floors.len()
    }

    /// Whether a join waits for its answer (a hand-over waits for none to).
    pub fn in_flight(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The offset a recovery of `key` into `group` reached, while pushes at or below
    /// it may still come.
    pub fn floor(&self, key: u32, group: u32) -> Option<u64> {
        self.floors.get(&(key, group)).copied()
    }

    pub fn set_floor(&mut self, key: u32, group: u32, floor: u64) {
        self.floors.insert((key, group), floor);
    }

    /// Forgets every join of connection `key` (it closed).
    pub fn forget_conn(&mut self, key: u32) {
        if !self.floors.is_empty() {
            self.floors.retain(|&(k, _), _| k != key);
        }
        if self.pending.is_empty() {
            return;
        }
        self.holding.retain(|&(k, _)| k != key);
        self.pending.retain(|_, &mut (k, _)| k != key);
    }

    /// Forgets the join of `key` into `group` (it left the room).
    pub fn forget(&mut self, key: u32, group: u32) {
        self.floors.remove(&(key, group));
        if self.pending.is_empty() {
            return;
        }
        self.holding.remove(&(key, group));
        self.pending.retain(|_, &mut (k, g)| (k, g) != (key, group));
    }
}

impl Reactor {
    /// Asks the dispatcher for the position of `room`, which connection `key` (a
    /// `wspush.v1` one, already a member) just joined; `since` asks for recovery.
    /// `hold`: hold the room's pushes back until the answer (a new member); a
    /// connection that was already a member and asks again keeps receiving them.
    pub(super) fn request_position(
        &mut self,
        key: u32,
        room: &str,
        since: Option<(String, u64)>,
        hold: bool,
    ) {
        let Some(group) = self.rooms.id(room) else {
            return;
        };
        let Some(name) = self.rooms.name(group).cloned() else {
            return;
        };
        let p = &mut self.positions;
        p.next += 1;
        let req = p.next;
        p.pending.insert(req, (key, group));
        if hold {
            p.holding.insert((key, group));
        }
        self.events.push(Event::Position {
            reactor: self.id,
            req,
            room: name,
            since: since.map(|(e, o)| (Arc::from(e), o)),
        });
        self.wake_dispatcher = true;
    }

    /// The dispatcher's answer: the `joined` reply, then the missed messages.
    pub(super) fn apply_position(
        &mut self,
        req: u64,
        joined: Arc<[u8]>,
        replay: Vec<Arc<[u8]>>,
        fail: bool,
        through: u64,
    ) {
        let Some((key, group)) = self.positions.pending.remove(&req) else {
            return;
        };
        self.positions.holding.remove(&(key, group));
        let member = self.conns.get(key as usize).is_some_and(|c| {
            c.phase == Phase::Open && c.has(flag::V1) && c.room_index(group).is_some()
        });
        if !member {
            return;
        }
        if fail {
            let close = encode_close(CloseCode::RECOVERY_FAILED, "recovery failed");
            self.close_with(
                key,
                Chunk::Owned(close.into_boxed_slice()),
                CloseReason::RecoveryFailed,
            );
            return;
        }
        self.queue(key, Chunk::Shared(joined));
        if through > 0 {
            self.positions.floors.insert((key, group), through);
        }
        self.local.replayed += replay.len() as u64;
        for frame in replay {
            self.queue(key, Chunk::Push(frame));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recovery floor that no later push has cleared yet (the room went quiet)
    /// must go with its connection, or a reused slab key would skip its pushes and
    /// the table would grow with every such close (the soak cannot see this path:
    /// its pushes clear the floors first).
    #[test]
    fn a_closed_connection_takes_its_floors_and_waits_with_it() {
        let mut p = Positions::default();
        p.set_floor(1, 10, 5);
        p.set_floor(1, 11, 7);
        p.set_floor(2, 10, 5);
        p.pending.insert(1, (1, 12));
        p.holding.insert((1, 12));
        p.forget_conn(1);
        assert_eq!(p.len(), 1, "only connection 2's floor is left");
        assert_eq!(p.floor(2, 10), Some(5));
        // A new connection on key 1 is not held back by the old one's floor.
        assert!(!p.skip(1, 10, Some(3)));
        p.forget(2, 10);
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn the_first_push_above_a_floor_clears_it() {
        let mut p = Positions::default();
        p.set_floor(1, 10, 5);
        assert!(p.skip(1, 10, Some(5)));
        assert!(!p.skip(1, 10, Some(6)));
        assert_eq!(p.len(), 0);
    }
}
