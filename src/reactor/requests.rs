//! What a connection's complete data messages do: echoed back in `--echo` mode, else
//! the client protocol (`client_msg`: join, leave, ping, refresh), each request
//! answered with one JSON text frame. A refused request gets an error reply; the
//! connection stays.
//!
//! Permissions: a client joins and leaves only rooms its token's `join` patterns or
//! `--client-join` grant (any room when authentication is off and no `--client-join`
//! is given). A refresh must carry a valid token for the same user; it replaces the
//! expiry and the grants, and rooms the client joined itself that the new grants no
//! longer allow are left (rooms the token or the backend gave are kept).

use super::client_msg::{self, ClientError, ClientRequest};
use super::conn::flag;
use super::Reactor;
use crate::auth::verify;
use crate::link::stats::CloseReason;
use crate::ws::close::CloseCode;
use crate::ws::frame::OpCode;

impl Reactor {
    pub(super) fn on_message(&mut self, key: u32, text: bool, payload: &[u8]) {
        self.local.messages_received += 1;
        if self.shared.settings.echo {
            let op = if text { OpCode::Text } else { OpCode::Binary };
            let frame = self.data_frame(key, op, payload);
            self.queue(key, frame);
            return;
        }
        if !text {
            self.reply_text(key, &client_msg::error_reply(ClientError::Binary));
            return;
        }
        let reply = match client_msg::parse(payload) {
            Ok(ClientRequest::Ping) => client_msg::PONG_REPLY.to_string(),
            Ok(ClientRequest::Join(room, since)) => self.client_join(key, &room, since),
            Ok(ClientRequest::Leave(room)) => {
                if self.may_join(key, &room) {
                    self.leave_room(key, &room);
                    client_msg::room_reply("left", &room)
                } else {
                    self.local.join_forbidden += 1;
                    client_msg::forbidden_reply(&room)
                }
            }
            Ok(ClientRequest::Refresh(token)) => self.refresh(key, &token),
            Err(e) => client_msg::error_reply(e),
        };
        // Nothing follows a Close frame (a refresh refused once too often closes).
        let open = self
            .conns
            .get(key as usize)
            .is_some_and(|c| c.phase == super::conn::Phase::Open);
        if open && !reply.is_empty() {
            self.reply_text(key, &reply);
        }
    }

    fn may_join(&self, key: u32, room: &str) -> bool {
        let grants = self
            .conns
            .get(key as usize)
            .and_then(|c| self.grants.get(c.grants));
        self.shared.settings.may_join(grants, room)
    }

    fn client_join(&mut self, key: u32, room: &str, since: Option<(String, u64)>) -> String {
        if !self.may_join(key, room) {
            self.local.join_forbidden += 1;
            return client_msg::forbidden_reply(room);
        }
        let Some(conn) = self.conns.get(key as usize) else {
            return String::new();
        };
        let member = self
            .rooms
            .id(room)
            .is_some_and(|id| conn.room_index(id).is_some());
        if member || conn.rooms.len() < self.shared.settings.max_rooms {
            let v1 = conn.has(flag::V1);
            if !member {
                self.join_room(key, room, true);
            }
            if v1 {
                // The reply, with the position (and any recovery), comes from the
                // dispatcher. A member asking again keeps its live pushes, so
                // nothing can be replayed without doubling them: asked to recover,
                // it is told `recovered:false` (an offset past any current one is
                // never recovered) with the position.
                let since = match since {
                    Some((epoch, _)) if member => Some((epoch, u64::MAX)),
                    other => other,
                };
                self.request_position(key, room, since, !member);
                return String::new();
            }
            client_msg::room_reply("joined", room)
        } else {
            client_msg::error_reply(ClientError::TooManyRooms)
        }
    }

    /// `{"op":"refresh"}`: a new token for the same user extends the connection. At
    /// most one refresh per timer scan (≤ 1 s) is verified; the third refused refresh
    /// closes the connection with 1008, so refreshes cannot be used to make the
    /// reactor check signatures (tens of µs each for RS256/ES256) without end.
    fn refresh(&mut self, key: u32, token: &str) -> String {
        let Some(auth) = self.shared.settings.auth.clone() else {
            return client_msg::refresh_error_reply("authentication is off");
        };
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return String::new();
        };
        if conn.has(flag::REFRESHED) {
            return self.refuse_refresh(key, "too soon after the last refresh");
        }
        conn.set(flag::REFRESHED);
        let user = self.users.name(conn.user.group).cloned();
        let verdict = match verify(token.as_bytes(), &auth, super::timers::unix_now()) {
            Ok(v) => v,
            Err(e) => return self.refuse_refresh(key, e.reason()),
        };
        if user.as_deref() != Some(verdict.user.as_str()) {
            return self.refuse_refresh(key, "token is for another user");
        }
        let exp = verdict.expires_at.saturating_sub(auth.leeway.as_secs());
        let new = self.grants.intern(verdict.grants);
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return String::new();
        };
        let old = std::mem::replace(&mut conn.grants, new);
        conn.expires = super::timers::unix_stamp(verdict.expires_at);
        self.grants.release(old);
        // Rooms the client joined itself and may no longer join are left.
        let lost: Vec<std::sync::Arc<str>> = conn
            .rooms
            .iter()
            .filter(|r| r.by_client)
            .filter_map(|r| self.rooms.name(r.m.group).cloned())
            .collect();
        for room in lost {
            if !self.may_join(key, &room) && self.leave_room(key, &room) {
                self.reply_text(key, &client_msg::room_reply("left", &room));
            }
        }
        self.local.token_refreshes += 1;
        client_msg::refreshed_reply(exp)
    }

    /// A refused refresh: the old token stays; the third refusal closes with 1008.
    fn refuse_refresh(&mut self, key: u32, reason: &str) -> String {
        self.local.refresh_failures += 1;
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return String::new();
        };
        let refused = u16::from(conn.has(flag::REFRESH_REFUSED_1))
            + 2 * u16::from(conn.has(flag::REFRESH_REFUSED_2))
            + 1;
        if refused >= 3 {
            self.reply_text(key, &client_msg::refresh_error_reply(reason));
            self.close_with_reason(
                key,
                CloseCode::POLICY_VIOLATION,
                "too many refused refreshes",
                CloseReason::RefreshRefused,
            );
            return String::new();
        }
        conn.clear(flag::REFRESH_REFUSED_1 | flag::REFRESH_REFUSED_2);
        if refused & 1 != 0 {
            conn.set(flag::REFRESH_REFUSED_1);
        }
        if refused & 2 != 0 {
            conn.set(flag::REFRESH_REFUSED_2);
        }
        client_msg::refresh_error_reply(reason)
    }

    pub(super) fn reply_text(&mut self, key: u32, text: &str) {
        let frame = self.data_frame(key, OpCode::Text, text.as_bytes());
        self.queue(key, frame);
    }
}
