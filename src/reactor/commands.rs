//! The dispatcher's batches, applied in order: pushes go into the turn's outbox (one
//! shared frame, an 8-byte link per recipient), JOIN / LEAVE / KICK change membership
//! and are acknowledged with an event.
//!
//! A turn takes in batches only until its arena reaches its budget; the rest of a
//! batch is carried to the next turn (after this turn's writes), so a burst arriving
//! during a long flush cannot grow the arena without bound. Order is kept: carried
//! commands run before anything newer from the channel.

use std::sync::Arc;

use crossbeam_channel::TryRecvError;

use super::conn::{flag, Conn, Phase};
use super::outbox::Chunk;
use super::Reactor;
use crate::link::stats::CloseReason;
use crate::link::{Command, Deflated, Event, ReactorMsg, Target};

impl Reactor {
    /// Applies carried and newly arrived commands until the channel is empty or the
    /// arena is full. A channel whose dispatcher is gone starts the shutdown.
    pub(super) fn drain_channel(&mut self) {
        loop {
            if self.outbox.over_budget() {
                return;
            }
            if let Some(mut rest) = self.carry.take() {
                while let Some(cmd) = rest.next() {
                    self.apply(cmd);
                    if self.outbox.over_budget() {
                        if rest.len() > 0 {
                            self.carry = Some(rest);
                        }
                        return;
                    }
                }
                continue;
            }
            match self.rx.try_recv() {
                Ok(ReactorMsg::Batch(cmds)) => self.carry = Some(cmds.into_iter()),
                Ok(ReactorMsg::Shutdown) => {
                    if !self.hold_shutdown() {
                        self.start_shutdown();
                    }
                }
                Ok(ReactorMsg::Freeze(tx)) => self.freeze(tx),
                Ok(ReactorMsg::Thaw) => self.thaw(),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    self.start_shutdown();
                    return;
                }
            }
        }
    }

    fn apply(&mut self, cmd: Command) {
        match cmd {
            Command::Push {
                target,
                frame,
                envelope,
                offset,
                deflated,
            } => self.push(&target, frame, envelope, offset, deflated),
            Command::Position {
                req,
                joined,
                replay,
                fail,
                through,
            } => self.apply_position(req, joined, replay, fail, through),
            Command::Join { req, user, room } => {
                let affected = self.join_user(&user, &room);
                self.ack(req, affected);
            }
            Command::Leave { req, user, room } => {
                let affected = self.leave_user(&user, &room);
                self.ack(req, affected);
            }
            Command::Sample { received } => {
                // The oldest sample of the turn: it waited longest.
                self.push_sample.get_or_insert(received);
            }
            Command::Kick { req, user, frame } => {
                let keys = self.user_conns(&user);
                let mut affected = 0;
                for key in keys {
                    if self.close_with(key, Chunk::Shared(frame.clone()), CloseReason::Kicked) {
                        affected += 1;
                    }
                }
                self.local.kicked += u64::from(affected);
                self.ack(req, affected);
            }
        }
    }

    fn ack(&mut self, req: u64, affected: u32) {
        self.events.push(Event::Ack {
            reactor: self.id,
            req,
            affected,
        });
        self.wake_dispatcher = true;
    }

    /// Links one shared frame into the chain of every recipient here.
    fn push(
        &mut self,
        target: &Target,
        frame: Arc<[u8]>,
        envelope: Option<Arc<[u8]>>,
        offset: Option<u64>,
        deflated: Deflated,
    ) {
        // The dispatcher sends no envelope while it knows of no wspush.v1 connection;
        // one that opened meanwhile still gets SEND and BROADCAST as envelopes (room
        // pushes are held back from it until its position comes).
        let envelope = match (&envelope, target) {
            (None, Target::All) if self.v1_conns > 0 => {
                Some(crate::ws::envelope::broadcast_frame(frame_payload(&frame)))
            }
            (None, Target::User(user)) if self.v1_conns > 0 => {
                Some(crate::ws::envelope::user_frame(user, frame_payload(&frame)))
            }
            _ => envelope,
        };
        let envelope_deflated = match (&deflated.envelope, &envelope) {
            (None, Some(e)) => self.deflate_envelope(e),
            (d, _) => d.clone(),
        };
        // Each variant (plain, envelope, each compressed) enters the arena only once
        // a recipient needs it, so a reactor keeps its whole frame budget for what
        // it sends and drops the rest at once.
        let mut variants =
            super::compression::Variants::new(frame, envelope, deflated.frame, envelope_deflated);
        let mut n = 0u64;
        let Reactor {
            conns,
            outbox,
            rooms,
            users,
            positions,
            ..
        } = self;
        let mut deliver = |key: u32, conn: &mut Conn| {
            let idx = variants.pick(conn, outbox);
            if outbox.append(&mut conn.chain, idx) && !conn.has(flag::DIRTY) {
                conn.set(flag::DIRTY);
                outbox.dirty.push(key);
            }
            n += 1;
        };
        match target {
            Target::All => {
                for (key, conn) in conns.iter_mut() {
                    if conn.phase == Phase::Open {
                        deliver(key as u32, conn);
                    }
                }
            }
            Target::Room(name) | Target::User(name) => {
                let groups = if matches!(target, Target::Room(_)) {
                    rooms
                } else {
                    users
                };
                let room = matches!(target, Target::Room(_));
                if let Some(id) = groups.id(name) {
                    for &key in groups.members(id) {
                        // A wspush.v1 join waiting for its position (see positions.rs).
                        if room && positions.skip(key, id, offset) {
                            continue;
                        }
                        if let Some(conn) = conns.get_mut(key as usize) {
                            deliver(key, conn);
                        }
                    }
                }
            }
        }
        self.local.deliveries += n;
    }
}

/// The payload of a complete, unmasked server frame (what `dispatch::push_frame`
/// made): the bytes after its 2-, 4- or 10-byte header.
pub(super) fn frame_payload(frame: &[u8]) -> &[u8] {
    let header = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    frame.get(header..).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::frame_payload;
    use crate::ws::frame::{encode_frame, OpCode};

    #[test]
    fn frame_payload_strips_every_header_length() {
        for len in [0usize, 125, 126, 65_535, 65_536] {
            let p = vec![7u8; len];
            assert_eq!(
                frame_payload(&encode_frame(OpCode::Text, &p)),
                &p[..],
                "{len}"
            );
        }
        assert_eq!(frame_payload(&[]), b"");
    }
}
