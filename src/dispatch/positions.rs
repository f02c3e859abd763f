//! Positions and history on the dispatcher: every message published to a room gets
//! the room's next offset (with its epoch), is kept for recovery (`--history-size`),
//! and goes to `wspush.v1` connections as a JSON envelope encoded once; a `wspush.v1`
//! join is answered with the room's position and, when it asks, the messages it
//! missed — through the reactor's FIFO channel, so they come before every later push
//! (see `reactor/positions.rs` for why nothing is lost or doubled on the way).
//!
//! In cluster mode with `--history-size`, positions and history live in Redis (the
//! scripts of `broker/redis/scripts.rs`): a PUBLISH runs one script that assigns the
//! offset, keeps the message and publishes it with its position; every node, this
//! one too, delivers it when it comes back on the room channel, so all nodes agree on
//! every offset. A join reads the position (and what was missed) with another
//! script; room messages routed while that read is in flight are buffered and merged
//! by offset; if they do not join up (a message lost on the way), the connection is
//! closed with 4002 and the client recovers again. In cluster mode without history,
//! positions are this node's own (each node's epochs differ, so a client that
//! reconnects elsewhere is told `recovered:false`, never given offsets that mean
//! something else there).
//!
//! Neither answer may cost more than one connection's worth of memory, whatever the
//! history holds: a replay that would not fit in `--max-pending` is refused
//! (`recovered:false`) before it is encoded, and a HISTORY reply carries at most
//! [`HISTORY_REPLY_BYTES`] of payloads, so a burst of recovering clients or of
//! unread HISTORY requests cannot make the process hold copies of the whole history.

use std::sync::Arc;
use std::time::Instant;

use super::client::Failure;
use super::{BrokerWait, Dispatcher, Recipients};
use crate::control::resp;
use crate::dispatch::broker::{Answer, HistoryRead, Item};
use crate::history::{Position, Recovery};
use crate::link;
use crate::ws::envelope;
use crate::ws::frame::{encode_frame, OpCode};

/// The most payload bytes one HISTORY reply carries (the newest messages that fit,
/// at least one): the control port's reply pause, so a reply is never much more
/// than what an unread connection may hold anyway. Each retained message would
/// otherwise be copied once per request — into the RESP reply, and for
/// `/api/history` into its JSON (base64 for binary payloads) — so a few dozen
/// unread requests against a full `--history-memory` held gigabytes and kept the
/// dispatcher busy for seconds.
pub const HISTORY_REPLY_BYTES: usize = 1 << 20;

/// Where the newest entries whose payloads fit in `budget` start (at least the
/// newest one, so any single message can be read).
fn newest_within<P: AsRef<[u8]>>(entries: &[(u64, P)], budget: usize) -> usize {
    let mut total = 0usize;
    for (i, (_, p)) in entries.iter().enumerate().rev() {
        total = total.saturating_add(p.as_ref().len());
        if total > budget && i + 1 < entries.len() {
            return i + 1;
        }
    }
    0
}

/// The replay's frames, or `None` when together they would pass `max_bytes` (the
/// client's `--max-pending`): such a replay is queued at once, so it could only end
/// in a slow-consumer close (or, with `--slow-policy drop`, in a gap after
/// `recovered:true`). Stops encoding as soon as the bound is passed.
fn replay_within<'a>(
    frames: impl Iterator<Item = Arc<[u8]>> + 'a,
    max_bytes: usize,
) -> Option<Vec<Arc<[u8]>>> {
    let mut total = 0usize;
    let mut out = Vec::new();
    for f in frames {
        total = total.saturating_add(f.len());
        if total > max_bytes {
            return None;
        }
        out.push(f);
    }
    Some(out)
}

impl Dispatcher {
    /// The message as a `wspush.v1` envelope; a room message takes its position here.
    /// Returns it with the room offset it took, if any.
    pub(super) fn envelope(
        &mut self,
        to: &Recipients<'_>,
        payload: &[u8],
    ) -> (Arc<[u8]>, Option<u64>) {
        match *to {
            Recipients::Room(room) => {
                let pos = if self.settings.history.size > 0 {
                    self.history
                        .append(room, Arc::from(payload), Instant::now())
                } else {
                    // Positions only: no copy of the payload.
                    self.history.advance(room, Instant::now())
                };
                (
                    envelope::room_frame(room, &pos.epoch, pos.offset, payload),
                    Some(pos.offset),
                )
            }
            Recipients::User(user) => (envelope::user_frame(user, payload), None),
            Recipients::All => (envelope::broadcast_frame(payload), None),
        }
    }

    /// A message for a room with no member here: it still takes a position and is
    /// kept, if history is on, for clients that come back. With history off a room
    /// with a state still moves on (a client holding its position missed this one
    /// and must not be told it recovered); a room without one needs none (its next
    /// state has a new epoch).
    pub(super) fn remember(&mut self, room: &str, payload: &[u8]) {
        if self.settings.history.size > 0 {
            self.history
                .append(room, Arc::from(payload), Instant::now());
        } else if self.history.contains(room) {
            self.history.advance(room, Instant::now());
        }
    }

    /// Positions and history are in Redis (cluster mode with `--history-size`).
    pub(super) fn history_in_redis(&self) -> bool {
        self.cluster.is_some() && self.settings.history.size > 0
    }

    /// PUBLISH when positions are in Redis: nothing is delivered here now; the
    /// message comes back from Redis with its position, to every node. The reply
    /// counts this node's members and the other nodes that got it.
    pub(super) fn publish_positioned(&mut self, key: usize, room: &str, payload: &[u8]) {
        let local = self.rooms.total(room);
        self.next_tag += 1;
        let tag = self.next_tag;
        let (size, ttl) = (self.settings.history.size, self.settings.history.ttl);
        let Some(cluster) = &mut self.cluster else {
            return;
        };
        let instance =
            cluster.instance_for(&crate::dispatch::broker::Outbound::Room(room, payload));
        let c = &mut self.clients[key];
        match cluster.publish_positioned(room, payload, size, ttl, tag, &self.rooms) {
            Ok(own) => {
                // Ordered like any publish (see `Client::stashed`).
                c.broker_inflight += 1;
                c.broker_instance = instance;
                c.fenced = false;
                c.hold(tag, local, 1, true, None);
                self.broker_waits.insert(
                    tag,
                    BrokerWait::Positioned {
                        client: key,
                        client_id: c.id,
                        own,
                    },
                );
            }
            Err(_) => {
                cluster.stats.unavailable_replies += 1;
                c.hold(tag, 0, 0, true, Some(Failure::NotPositioned));
            }
        }
    }

    /// A room message with its cluster-wide position, from Redis.
    pub(super) fn push_at(&mut self, room: &str, epoch: &str, offset: u64, payload: &[u8]) {
        if let Some(tags) = self.recovering.get(room) {
            for tag in tags {
                if let Some(BrokerWait::Recover { buffer, .. }) = self.broker_waits.get_mut(tag) {
                    // Bounded: more than a recovery may replay cannot be merged anyway.
                    if buffer.len() <= self.settings.max_recover {
                        buffer.push((epoch.to_string(), offset, payload.to_vec()));
                    }
                }
            }
        }
        let env = envelope::room_frame(room, epoch, offset, payload);
        self.push_with(
            Recipients::Room(room),
            payload,
            true,
            Some((env, Some(offset))),
        );
    }

    /// The answer to a positioned PUBLISH: `[epoch, offset, receivers]`.
    pub(super) fn on_positioned_answer(
        &mut self,
        client: usize,
        client_id: u64,
        own: bool,
        tag: u64,
        answer: Answer,
    ) {
        let (add, failure) = match answer {
            Answer::List(items) => {
                let n = items.get(2).and_then(Item::int).unwrap_or(0);
                ((n - own as i64).max(0) as u64, None)
            }
            Answer::Error(e) => (0, Some(Failure::Refused(e))),
            Answer::Lost => (0, Some(Failure::Lost)),
            Answer::Count(_) => (0, None),
        };
        if failure.is_some() {
            if let Some(c) = &mut self.cluster {
                c.stats.unavailable_replies += 1;
            }
        }
        if let Some(c) = self.clients.get_mut(client) {
            if c.id == client_id {
                c.broker_inflight = c.broker_inflight.saturating_sub(1);
                let unblocked = c.broker_inflight == 0 && c.stashed.is_some();
                if c.resolve(tag, add, failure) || unblocked {
                    self.ready.push(client);
                }
            }
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
        if self.history_in_redis() {
            self.read_position_from_redis(reactor, req, room, since);
            return;
        }
        let (pos, recovered, replay) = match since {
            None => (self.history.position(room, now), None, Vec::new()),
            Some((epoch, offset)) => {
                let recovery =
                    self.history
                        .recover(room, &epoch, offset, self.settings.max_recover, now);
                let (position, replay) = match recovery {
                    Recovery::Recovered { position, missed } => {
                        let frames = missed.iter().map(|(offset, payload)| {
                            envelope::room_frame(room, &position.epoch, *offset, payload)
                        });
                        let replay = replay_within(frames, self.settings.max_replay_bytes);
                        (position, replay)
                    }
                    Recovery::NotRecovered { position } => (position, None),
                };
                match replay {
                    Some(replay) => {
                        self.stats.recoveries += 1;
                        (position, Some(true), replay)
                    }
                    None => {
                        self.stats.recovery_failures += 1;
                        (position, Some(false), Vec::new())
                    }
                }
            }
        };
        let joined = joined_frame(room, &pos, recovered);
        self.stats.replayed += replay.len() as u64;
        self.add_to_batch(
            reactor,
            link::Command::Position {
                req,
                joined,
                replay,
                fail: false,
                // Nothing older can follow: this dispatcher routes every push itself.
                through: 0,
            },
        );
    }

    fn read_position_from_redis(
        &mut self,
        reactor: usize,
        req: u64,
        room: &str,
        since: Option<(Arc<str>, u64)>,
    ) {
        self.next_tag += 1;
        let tag = self.next_tag;
        let (max, ttl) = (self.settings.max_recover, self.settings.history.ttl);
        let asked = since.is_some();
        let sent = self.cluster.as_mut().is_some_and(|c| {
            c.read_positions(room, since.as_ref().map(|(e, o)| (&**e, *o)), max, ttl, tag)
                .is_ok()
        });
        if !sent {
            self.stats.recovery_failures += u64::from(asked);
            self.fail_position(reactor, req);
            return;
        }
        let room: Arc<str> = room.into();
        self.recovering.entry(room.clone()).or_default().push(tag);
        self.broker_waits.insert(
            tag,
            BrokerWait::Recover {
                reactor,
                req,
                room,
                asked,
                buffer: Vec::new(),
            },
        );
    }

    fn fail_position(&mut self, reactor: usize, req: u64) {
        self.add_to_batch(
            reactor,
            link::Command::Position {
                req,
                joined: Arc::from(&[][..]),
                replay: Vec::new(),
                fail: true,
                through: 0,
            },
        );
    }

    /// Redis's answer to a join's position read: `[epoch, offset, recovered,
    /// payload…]`, merged with the room messages routed while it was in flight.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_recover_answer(
        &mut self,
        tag: u64,
        reactor: usize,
        req: u64,
        room: Arc<str>,
        asked: bool,
        buffer: Vec<(String, u64, Vec<u8>)>,
        answer: Answer,
    ) {
        if let Some(tags) = self.recovering.get_mut(&room) {
            tags.retain(|&t| t != tag);
            if tags.is_empty() {
                self.recovering.remove(&room);
            }
        }
        let Answer::List(items) = answer else {
            self.stats.recovery_failures += u64::from(asked);
            self.fail_position(reactor, req);
            return;
        };
        let epoch = items
            .first()
            .and_then(Item::bytes)
            .and_then(|e| std::str::from_utf8(e).ok());
        let offset = items
            .get(1)
            .and_then(Item::int)
            .and_then(|o| u64::try_from(o).ok());
        let recovered = items.get(2).and_then(Item::int) == Some(1);
        let (Some(epoch), Some(offset)) = (epoch, offset) else {
            self.stats.recovery_failures += u64::from(asked);
            self.fail_position(reactor, req);
            return;
        };
        // Read from Redis: offsets since+1 ..= offset (when recovered).
        let read: Vec<&[u8]> = if recovered {
            items[3..].iter().filter_map(Item::bytes).collect()
        } else {
            Vec::new()
        };
        let first_read = offset + 1 - read.len() as u64;
        // Messages routed while the read was in flight: those after `offset` follow,
        // contiguous, or the merge fails (a message was lost on the way).
        let mut last = offset;
        let mut routed: Vec<(u64, &[u8])> = Vec::new();
        for (e, o, p) in &buffer {
            if e != epoch || *o <= last {
                continue;
            }
            if *o != last + 1 {
                self.stats.recovery_failures += 1;
                self.fail_position(reactor, req);
                return;
            }
            routed.push((*o, p));
            last = *o;
        }
        // The replay is what Redis had, then what was routed meanwhile, within one
        // bound; without recovery the client starts after everything held back.
        let frames = (first_read..)
            .zip(read.iter().copied())
            .chain(routed.iter().copied())
            .map(|(o, p)| envelope::room_frame(&room, epoch, o, p));
        let replay = recovered
            .then(|| replay_within(frames, self.settings.max_replay_bytes))
            .flatten();
        let recovered = replay.is_some();
        let replay = replay.unwrap_or_default();
        if asked {
            if recovered {
                self.stats.recoveries += 1;
            } else {
                self.stats.recovery_failures += 1;
            }
        }
        self.stats.replayed += replay.len() as u64;
        let pos = Position {
            epoch: epoch.into(),
            offset: last,
        };
        let joined = joined_frame(&room, &pos, asked.then_some(recovered));
        self.add_to_batch(
            reactor,
            link::Command::Position {
                req,
                joined,
                replay,
                fail: false,
                through: last,
            },
        );
    }

    /// `HISTORY room [count [before]]`: `[epoch, offset, [[offset, payload], …]]`.
    pub(super) fn history_reply(
        &mut self,
        key: usize,
        room: &str,
        count: Option<usize>,
        before: Option<u64>,
    ) {
        let out = self.clients[key].out();
        match self
            .history
            .range_before(room, count, before, HISTORY_REPLY_BYTES)
        {
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

    /// HISTORY when the history is in Redis: the reply waits for the read.
    pub(super) fn history_from_redis(
        &mut self,
        key: usize,
        room: &str,
        count: Option<usize>,
        before: Option<u64>,
    ) {
        self.next_tag += 1;
        let tag = self.next_tag;
        let Some(cluster) = &mut self.cluster else {
            return;
        };
        let c = &mut self.clients[key];
        // 0 asks for everything kept; a count of 0 is an empty list, answered here.
        if count == Some(0)
            || cluster
                .read_history(
                    room,
                    HistoryRead {
                        count: count.unwrap_or(0),
                        before,
                        max_bytes: HISTORY_REPLY_BYTES,
                    },
                    tag,
                )
                .is_err()
        {
            if count == Some(0) {
                c.hold(tag, 0, 1, false, None);
                c.resolve_raw(tag, history_array(None, 0, &[]));
            } else {
                cluster.stats.unavailable_replies += 1;
                c.hold(tag, 0, 0, false, Some(Failure::Unavailable));
            }
            return;
        }
        c.hold(tag, 0, 1, false, None);
        self.broker_waits.insert(
            tag,
            BrokerWait::History {
                client: key,
                client_id: c.id,
            },
        );
    }

    /// Redis's answer to HISTORY: `[epoch, offset, id, payload, …]`.
    pub(super) fn on_history_answer(
        &mut self,
        client: usize,
        client_id: u64,
        tag: u64,
        answer: Answer,
    ) {
        let Some(c) = self.clients.get_mut(client) else {
            return;
        };
        if c.id != client_id {
            return;
        }
        let moved = match answer {
            Answer::List(items) => {
                let epoch = items
                    .first()
                    .and_then(Item::bytes)
                    .filter(|e| !e.is_empty());
                let offset = items.get(1).and_then(Item::int).unwrap_or(0).max(0) as u64;
                let entries: Vec<(u64, &[u8])> = items
                    .get(2..)
                    .unwrap_or_default()
                    .chunks_exact(2)
                    .filter_map(|p| {
                        let id = std::str::from_utf8(p[0].bytes()?).ok()?;
                        let off = id.split('-').next()?.parse().ok()?;
                        Some((off, p[1].bytes()?))
                    })
                    .collect();
                // The script already kept only what fits; checked again here so the
                // reply stays bounded whatever the broker answers.
                let entries = &entries[newest_within(&entries, HISTORY_REPLY_BYTES)..];
                c.resolve_raw(tag, history_array(epoch, offset, entries))
            }
            Answer::Error(e) => c.resolve(tag, 0, Some(Failure::Refused(e))),
            Answer::Lost => c.resolve(tag, 0, Some(Failure::Lost)),
            Answer::Count(_) => c.resolve_raw(tag, history_array(None, 0, &[])),
        };
        if moved {
            self.ready.push(client);
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

/// The HISTORY reply: `[epoch or nil, offset, [[offset, payload], …]]`.
fn history_array(epoch: Option<&[u8]>, offset: u64, entries: &[(u64, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    resp::write_array_len(&mut out, 3);
    match epoch {
        Some(e) => resp::write_bulk(&mut out, e),
        None => resp::write_null(&mut out),
    }
    resp::write_integer(&mut out, offset.min(i64::MAX as u64) as i64);
    resp::write_array_len(&mut out, entries.len());
    for (o, p) in entries {
        resp::write_array_len(&mut out, 2);
        resp::write_integer(&mut out, (*o).min(i64::MAX as u64) as i64);
        resp::write_bulk(&mut out, p);
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(sizes: &[usize]) -> Vec<(u64, Vec<u8>)> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (i as u64 + 1, vec![b'x'; n]))
            .collect()
    }

    #[test]
    fn history_reply_keeps_the_newest_entries_that_fit() {
        assert_eq!(newest_within(&entries(&[4, 4, 4, 4]), 8), 2);
        assert_eq!(newest_within(&entries(&[4, 4, 4, 4]), 9), 2);
        assert_eq!(newest_within(&entries(&[4, 4, 4, 4]), 16), 0);
        assert_eq!(newest_within(&entries(&[]), 16), 0);
    }

    #[test]
    fn history_reply_keeps_one_entry_larger_than_the_budget() {
        assert_eq!(newest_within(&entries(&[1, 100]), 10), 1);
        assert_eq!(newest_within(&entries(&[100]), 10), 0);
    }

    #[test]
    fn replay_over_the_bound_is_refused_whole() {
        let frame = |n: usize| -> Arc<[u8]> { vec![0u8; n].into() };
        let fits = replay_within([frame(4), frame(4)].into_iter(), 8);
        assert_eq!(fits.map(|r| r.len()), Some(2));
        assert!(replay_within([frame(4), frame(5)].into_iter(), 8).is_none());
        assert_eq!(
            replay_within(std::iter::empty(), 0).map(|r| r.len()),
            Some(0)
        );
    }
}
