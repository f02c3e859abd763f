//! The HTTP side of a connection: its request head becomes an upgrade (101), a health
//! answer, or a refusal with its status, each followed by the right next phase.
//!
//! Parsing is `ws::handshake` (pure); this file only applies the verdict: it takes an
//! established slot at upgrade time (503 if none is free), joins the rooms the query
//! names before the 101 is queued (so the dispatcher's counts hold them by the time
//! the client can see the 101), and answers `/healthz` from the threads' heartbeats.

use log::debug;

use super::conn::{flag, Phase};
use super::outbox::Chunk;
use super::Reactor;
use crate::link::stats::failure_index;
use crate::link::Event;
use crate::ws::handshake::{
    health_response, parse_request, upgrade_response, HandshakeError, Request, Upgrade,
};
use crate::ws::message::Assembler;

impl Reactor {
    /// Consumes a request head at the start of `data` (and, after an upgrade, the
    /// frames pipelined behind it); returns the bytes used, 0 while it is incomplete.
    pub(super) fn consume_head(&mut self, key: u32, data: &mut [u8], asm: &mut Assembler) -> usize {
        match parse_request(data, &self.shared.settings.handshake) {
            Ok(None) => 0,
            Err(e) => {
                self.reject(key, e);
                data.len()
            }
            Ok(Some((Request::Health, _))) => {
                self.answer_health(key);
                data.len()
            }
            Ok(Some((Request::Upgrade(up), head_len))) => {
                if !self.open(key, up) {
                    return data.len();
                }
                head_len + self.consume_frames(key, &mut data[head_len..], asm)
            }
        }
    }

    fn reject(&mut self, key: u32, e: HandshakeError) {
        self.local.handshake_failures[failure_index(e)] += 1;
        debug!("reactor {}: handshake rejected: {}", self.id, e.reason());
        self.queue(key, Chunk::Owned(e.response().into_boxed_slice()));
        self.begin_closing(key);
    }

    /// 200 while every server thread runs; 503 naming the one that does not.
    fn answer_health(&mut self, key: u32) {
        let chunk = match self.shared.liveness.check() {
            Ok(()) => Chunk::Static(health_response()),
            Err(why) => {
                let body = format!("unhealthy: {why}\n");
                Chunk::Owned(
                    format!(
                        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .into_bytes()
                    .into_boxed_slice(),
                )
            }
        };
        self.queue(key, chunk);
        self.begin_closing(key);
    }

    /// Completes the upgrade: takes an established slot, then memberships (events
    /// reach the dispatcher before the 101 is written), then the 101. False if the
    /// connection was refused instead.
    fn open(&mut self, key: u32, up: Upgrade) -> bool {
        if !self.conns.contains(key as usize) {
            return false;
        }
        if !self.shared.capacity.open() {
            self.reject(key, HandshakeError::AtCapacity);
            return false;
        }
        let now = super::timers::stamp(self.now);
        let conn = &mut self.conns[key as usize];
        self.local.handshakes += 1;
        conn.phase = Phase::Open;
        conn.set(flag::OPENED);
        // The ping and idle timers start when the connection opens.
        conn.last_seen = now;
        let user = up.user.as_deref().map(|u| {
            let (m, name) = self.users.add(u, key);
            conn.user = m;
            name
        });
        self.events.push(Event::Conn {
            reactor: self.id,
            user,
            delta: 1,
        });
        for room in &up.rooms {
            self.join_room(key, room);
        }
        self.queue(
            key,
            Chunk::Owned(upgrade_response(&up.accept).into_boxed_slice()),
        );
        true
    }
}
