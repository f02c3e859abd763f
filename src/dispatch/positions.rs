//! Positions and history on the dispatcher: every message published to a room gets
//! the room's next offset (with its epoch), is kept for recovery (`--history-size`),
//! and goes to `wspush.v1` connections as a JSON envelope encoded once; a `wspush.v1`
//! join is answered with the room's position and, when it asks, the messages it
//! missed — through the reactor's FIFO channel, so they come before every later push
//! (see `reactor/positions.rs` for why nothing is lost or doubled on the way).
//!
//! In cluster mode positions are this node's own (each node's epochs differ, so a
//! client that reconnects to another node is told `recovered:false` rather than given
//! offsets that mean something else there).

use std::sync::Arc;
use std::time::Instant;

use super::{Dispatcher, Recipients};
use crate::control::resp;
use crate::history::{Position, Recovery};
use crate::link;
use crate::ws::envelope;
use crate::ws::frame::{encode_frame, OpCode};

impl Dispatcher {
    /// The message as a `wspush.v1` envelope; a room message takes its position here.
    pub(super) fn envelope(&mut self, to: &Recipients<'_>, payload: &[u8]) -> Arc<[u8]> {
        match *to {
            Recipients::Room(room) => {
                let pos = self
                    .history
                    .append(room, Arc::from(payload), Instant::now());
                envelope::room_frame(room, &pos.epoch, pos.offset, payload)
            }
            Recipients::User(user) => envelope::user_frame(user, payload),
            Recipients::All => envelope::broadcast_frame(payload),
        }
    }

    /// A message for a room with no member here: it still takes a position and is
    /// kept, if history is on, for clients that come back. With history off a room
    /// with a state still moves on (a client holding its position missed this one
    /// and must not be told it recovered); a room without one needs none (its next
    /// state has a new epoch).
    pub(super) fn remember(&mut self, room: &str, payload: &[u8]) {
        if self.settings.history.size > 0 || self.history.contains(room) {
            self.history
                .append(room, Arc::from(payload), Instant::now());
        }
    }

    /// A `wspush.v1` join waiting for its position (and recovery).
    pub(super) fn on_position(
        &mut self,
        reactor: usize,
        req: u64,
        room: &str,
        since: Option<(Arc<str>, u64)>,
        now: Instant,
    ) {
        let (pos, recovered, missed) = match since {
            None => (self.history.position(room, now), None, Vec::new()),
            Some((epoch, offset)) => {
                match self
                    .history
                    .recover(room, &epoch, offset, self.settings.max_recover, now)
                {
                    Recovery::Recovered { position, missed } => {
                        self.stats.recoveries += 1;
                        (position, Some(true), missed)
                    }
                    Recovery::NotRecovered { position } => {
                        self.stats.recovery_failures += 1;
                        (position, Some(false), Vec::new())
                    }
                }
            }
        };
        let joined = joined_frame(room, &pos, recovered);
        self.stats.replayed += missed.len() as u64;
        let replay = missed
            .iter()
            .map(|(offset, payload)| envelope::room_frame(room, &pos.epoch, *offset, payload))
            .collect();
        self.add_to_batch(
            reactor,
            link::Command::Position {
                req,
                joined,
                replay,
            },
        );
    }

    /// `HISTORY room [count]`: `[epoch, offset, [[offset, payload], …]]`.
    pub(super) fn history_reply(&mut self, key: usize, room: &str, count: Option<usize>) {
        let out = self.clients[key].out();
        match self.history.range(room, count) {
            None => {
                resp::write_array_len(out, 3);
                resp::write_null(out);
                resp::write_integer(out, 0);
                resp::write_array_len(out, 0);
            }
            Some((pos, entries)) => {
                resp::write_array_len(out, 3);
                resp::write_bulk(out, pos.epoch.as_bytes());
                resp::write_integer(out, pos.offset.min(i64::MAX as u64) as i64);
                resp::write_array_len(out, entries.len());
                for (offset, payload) in entries {
                    resp::write_array_len(out, 2);
                    resp::write_integer(out, offset.min(i64::MAX as u64) as i64);
                    resp::write_bulk(out, &payload);
                }
            }
        }
    }

    /// Drops the positions and history of rooms idle past `--history-ttl` and
    /// without a member here.
    pub(super) fn expire_history(&mut self) {
        let rooms = &self.rooms;
        self.history
            .expire(Instant::now(), |room| rooms.total(room) > 0);
    }
}

/// `{"op":"joined","room":…,"epoch":…,"offset":N[,"recovered":…]}` as a text frame.
fn joined_frame(room: &str, pos: &Position, recovered: Option<bool>) -> Arc<[u8]> {
    let mut v = serde_json::json!({
        "op": "joined",
        "room": room,
        "epoch": &*pos.epoch,
        "offset": pos.offset,
    });
    if let (Some(r), Some(obj)) = (recovered, v.as_object_mut()) {
        obj.insert("recovered".into(), serde_json::Value::Bool(r));
    }
    encode_frame(OpCode::Text, v.to_string().as_bytes()).into()
}
