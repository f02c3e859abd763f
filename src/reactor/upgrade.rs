//! The HTTP side of a connection: its request head becomes an upgrade (101), a health
//! answer, or a refusal with its status, each followed by the right next phase.
//!
//! Parsing is `ws::handshake` (pure); this file only applies the verdict: it takes an
//! established slot at upgrade time (503 if none is free), joins the rooms the query
//! names before the 101 is queued (so the dispatcher's counts hold them by the time
//! the client can see the 101), and answers `/healthz` from the threads' heartbeats.
//!
//! With authentication on, the upgrade is decided here from the token alone, with no
//! network call: `auth::verify` gives the user (`sub`), the expiry and the grants; a
//! bad or missing token is a 401, `?user=` a 400 (the user is the token's `sub`, and
//! nothing else), and a `?rooms=` room the token does not grant a 403. Only the
//! expiry and an interned grant set stay with the connection, never the token.

use std::net::IpAddr;

use log::debug;

use super::conn::Input;
use super::conn::{flag, Phase};
use super::outbox::Chunk;
use super::Reactor;
use crate::auth::{verify, AuthError, Grants};
use crate::link::peers::{AddrKey, PeerSlot};
use crate::link::stats::{auth_failure_index, failure_index};
use crate::link::Event;
use crate::ws::handshake::{
    error_response, health_response, parse_request, ready_response, upgrade_response_with,
    HandshakeError, Request, Upgrade,
};

impl Reactor {
    /// Consumes a request head at the start of `data` (and, after an upgrade, the
    /// frames pipelined behind it); returns the bytes used, 0 while it is incomplete.
    pub(super) fn consume_head(&mut self, key: u32, data: &mut [u8], state: &mut Input) -> usize {
        match parse_request(data, &self.shared.settings.handshake) {
            Ok(None) => 0,
            Err(e) => {
                self.reject(key, e);
                data.len()
            }
            Ok(Some((Request::Health, _))) => {
                self.answer_health(key, false);
                data.len()
            }
            Ok(Some((Request::Ready, _))) => {
                self.answer_health(key, true);
                data.len()
            }
            Ok(Some((Request::Asset(path), _))) => {
                let ws_path = &self.shared.settings.handshake.path;
                if let Some(resp) = crate::demo::response(&path, ws_path) {
                    self.queue(key, Chunk::Owned(resp.into_boxed_slice()));
                }
                self.begin_closing(key);
                data.len()
            }
            Ok(Some((Request::Upgrade(up), head_len))) => {
                let accepted = state.accepted.take();
                if !self.open(key, up, state.peer.take(), accepted) {
                    return data.len();
                }
                head_len + self.consume_frames(key, &mut data[head_len..], &mut state.asm)
            }
        }
    }

    fn reject(&mut self, key: u32, e: HandshakeError) {
        self.local.handshake_failures[failure_index(e)] += 1;
        debug!("reactor {}: handshake rejected: {}", self.id, e.reason());
        self.queue(key, Chunk::Owned(e.response().into_boxed_slice()));
        self.begin_closing(key);
    }

    /// 200 while every server thread runs; 503 naming the one that does not. For
    /// `/readyz` (`ready`), also 503 while starting, draining, or while a cluster
    /// node's broker link is down.
    fn answer_health(&mut self, key: u32, ready: bool) {
        let liveness = &self.shared.liveness;
        let verdict = if ready {
            liveness.ready().map_err(|why| why.to_string())
        } else {
            liveness.check().map_err(|why| format!("unhealthy: {why}"))
        };
        let chunk = match verdict {
            Ok(()) if ready => Chunk::Static(ready_response()),
            Ok(()) => Chunk::Static(health_response()),
            Err(why) => {
                let body = format!("{why}\n");
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

    /// Decides who the connection is and what it may join, from its token when
    /// authentication is on. Queues the refusal itself when there is one.
    fn admit(&mut self, key: u32, up: &Upgrade) -> Option<Admission> {
        let settings = &self.shared.settings;
        let Some(auth) = settings.auth.as_deref() else {
            if let Some(room) = up.rooms.iter().find(|r| !settings.may_join(None, r)) {
                let body = format!("room {room} is not open to clients");
                self.refuse(key, 403, "", &body);
                self.local.rooms_forbidden += 1;
                return None;
            }
            return Some(Admission {
                user: up.user.clone(),
                expires: 0,
                grants: None,
            });
        };
        if up.user.is_some() {
            self.local.user_param_refused += 1;
            self.refuse(
                key,
                400,
                "",
                "user= is not accepted with authentication: the user is the token's sub",
            );
            return None;
        }
        let verdict = match up.token.as_deref() {
            None => Err(AuthError::NoToken),
            Some(t) => verify(t.as_bytes(), auth, super::timers::unix_now()),
        };
        let v = match verdict {
            Ok(v) => v,
            Err(e) => {
                self.local.auth_failures[auth_failure_index(e)] += 1;
                debug!("reactor {}: token refused: {}", self.id, e.reason());
                let body = format!("invalid or missing token ({})", e.reason());
                self.refuse(
                    key,
                    e.status(),
                    "WWW-Authenticate: Bearer error=\"invalid_token\"\r\n",
                    &body,
                );
                return None;
            }
        };
        let granted = |room: &str| {
            v.grants.rooms().iter().any(|r| &**r == room)
                || settings.may_join(Some(&v.grants), room)
        };
        if let Some(room) = up.rooms.iter().find(|r| !granted(r)) {
            let body = format!("room {room} is not granted by the token");
            self.refuse(key, 403, "", &body);
            self.local.rooms_forbidden += 1;
            return None;
        }
        // Distinct rooms: a recovering client names its token's rooms in `rooms=`
        // too (every recovered room must be there).
        let extra = up
            .rooms
            .iter()
            .filter(|r| !v.grants.rooms().iter().any(|t| **t == ***r))
            .count();
        if v.grants.rooms().len() + extra > settings.max_rooms {
            self.reject(key, HandshakeError::BadQuery);
            return None;
        }
        Some(Admission {
            user: Some(v.user),
            expires: super::timers::unix_stamp(v.expires_at),
            grants: Some(v.grants),
        })
    }

    /// The client's address: the PROXY header's source, else the TCP peer, then
    /// X-Forwarded-For / Forwarded if that peer is a trusted proxy.
    fn client_ip(&self, key: u32, up: &Upgrade, proxied: Option<IpAddr>) -> Option<IpAddr> {
        let peer = proxied.or_else(|| {
            self.conns
                .get(key as usize)
                .and_then(|c| c.stream.peer_addr().ok())
                .map(|a| a.ip())
        })?;
        let headers = up.forwarded.iter().map(|(n, v)| (n.as_str(), v.as_slice()));
        Some(crate::proxy::client_ip(
            peer,
            &self.shared.settings.trusted_proxies,
            headers,
        ))
    }

    /// Charges the client's address (connections, handshake rates). `Ok(None)` when
    /// no per-address limit is set; `Err` once the refusal is queued.
    fn admit_address(
        &mut self,
        key: u32,
        up: &Upgrade,
        proxied: Option<IpAddr>,
    ) -> Result<Option<PeerSlot>, ()> {
        let s = &self.shared.settings;
        if !s.per_address_limits {
            return Ok(None);
        }
        let Some(ip) = self.client_ip(key, up, proxied) else {
            // The socket is already gone (getpeername fails on a reset connection).
            return Err(());
        };
        let now_ms = self.shared.epoch.elapsed().as_millis() as u64;
        match self
            .shared
            .peers
            .admit(AddrKey::new(ip, s.ipv6_prefix), now_ms)
        {
            Ok(slot) => Ok(Some(slot)),
            Err(r) => {
                debug!("reactor {}: {ip} refused: {}", self.id, r.reason());
                let extra = r
                    .retry_after_secs()
                    .map(|s| format!("Retry-After: {s}\r\n"))
                    .unwrap_or_default();
                self.refuse(key, r.status(), &extra, r.message());
                Err(())
            }
        }
    }

    /// Answers with `status` and closes.
    fn refuse(&mut self, key: u32, status: u16, extra: &str, body: &str) {
        let response = error_response(status, extra, body);
        self.queue(key, Chunk::Owned(response.into_boxed_slice()));
        self.begin_closing(key);
    }

    /// Completes the upgrade: admission (token, rooms), an established slot, then
    /// memberships (events reach the dispatcher before the 101 is written), then the
    /// 101. False if the connection was refused instead. `accepted`: when the socket
    /// was accepted, for the handshake duration.
    fn open(
        &mut self,
        key: u32,
        up: Upgrade,
        proxied: Option<IpAddr>,
        accepted: Option<std::time::Instant>,
    ) -> bool {
        if !self.conns.contains(key as usize) {
            return false;
        }
        // Per-address limits first: they are cheap, and they protect the token check
        // (an RSA verification) from a flood.
        let slot = match self.admit_address(key, &up, proxied) {
            Ok(slot) => slot,
            Err(()) => return false,
        };
        let release = |r: &mut Reactor, slot: Option<PeerSlot>| {
            if let Some(s) = slot {
                r.shared.peers.release(s);
            }
        };
        let Some(admission) = self.admit(key, &up) else {
            release(self, slot);
            return false;
        };
        if !self.shared.capacity.open() {
            release(self, slot);
            self.reject(key, HandshakeError::AtCapacity);
            return false;
        }
        if let Some(s) = slot {
            self.peer_slots.insert(key, s);
        }
        let grants = admission.grants.map(|g| self.grants.intern(g));
        // The interned set itself (a reference count), not a copy of its room names.
        let token_grants = grants.and_then(|id| self.grants.shared(id));
        let token_rooms: &[Box<str>] = token_grants.as_deref().map_or(&[], |g| g.rooms());
        let now = super::timers::stamp(self.now);
        let conn = &mut self.conns[key as usize];
        self.local.handshakes += 1;
        conn.phase = Phase::Open;
        conn.set(flag::OPENED);
        conn.expires = admission.expires;
        conn.grants = grants.unwrap_or(super::grants::NONE);
        // The ping and idle timers start when the connection opens.
        conn.last_seen = now;
        let user = admission.user.as_deref().map(|u| {
            let (m, name) = self.users.add(u, key);
            conn.user = m;
            name
        });
        if self.access.is_some() {
            let addr = self.client_ip(key, &up, proxied);
            if let Some(log) = self.access.as_mut() {
                log.opened(key, addr, user.clone());
            }
        }
        if let Some(t) = accepted {
            self.upgraded.push(t);
        }
        self.events.push(Event::Conn {
            reactor: self.id,
            user,
            delta: 1,
        });
        if up.v1 {
            // Before any position request of its rooms (same batch, in order).
            self.events.push(Event::V1 {
                reactor: self.id,
                delta: 1,
            });
        }
        for room in token_rooms {
            self.join_room(key, room, false);
        }
        for room in &up.rooms {
            if !token_rooms.iter().any(|r| &**r == room.as_str()) {
                self.join_room(key, room, true);
            }
        }
        let deflate = self.take_deflate(key, up.deflate, up.v1);
        self.queue(
            key,
            Chunk::Owned(
                upgrade_response_with(&up.accept, up.v1, deflate.as_ref()).into_boxed_slice(),
            ),
        );
        if up.v1 {
            // Each room's `joined` (with its position, and what was missed after a
            // `recover=` position) comes from the dispatcher, before any push of it.
            let Some(conn) = self.conns.get_mut(key as usize) else {
                return true;
            };
            conn.set(flag::V1);
            self.v1_conns += 1;
            let rooms: Vec<std::sync::Arc<str>> = conn
                .rooms
                .iter()
                .filter_map(|r| self.rooms.name(r.m.group).cloned())
                .collect();
            for room in rooms {
                let since = up
                    .recover
                    .iter()
                    .find(|s| *s.room == *room)
                    .map(|s| (s.epoch.clone(), s.offset));
                self.request_position(key, &room, since, true);
            }
        }
        true
    }
}

/// Who an admitted connection is.
struct Admission {
    user: Option<String>,
    /// Unix seconds (32-bit) when its token expires; 0: never.
    expires: u32,
    grants: Option<Grants>,
}
