//! Room and user membership of this reactor's connections, and the events that keep
//! the dispatcher's counts right.
//!
//! Every change to the tables pushes one `Event` (sent before the turn's replies are
//! written). A connection leaves everything when it stops being open, so a closing
//! connection is never a push recipient and never counted.

use super::conn::flag;
use super::conn::Joined;
use super::groups::Membership;
use super::Reactor;
use crate::link::Event;

impl Reactor {
    /// Adds a connection to a room (the caller checked it is not a member);
    /// `by_client` when the client asked for it itself.
    pub(super) fn join_room(&mut self, key: u32, room: &str, by_client: bool) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        let (m, name) = self.rooms.add(room, key);
        conn.rooms.push(Joined { m, by_client });
        self.events.push(Event::Room {
            reactor: self.id,
            room: name,
            delta: 1,
        });
    }

    /// Takes a connection out of a room; false if it was not in it.
    pub(super) fn leave_room(&mut self, key: u32, room: &str) -> bool {
        let Some(id) = self.rooms.id(room) else {
            return false;
        };
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return false;
        };
        let Some(i) = conn.room_index(id) else {
            return false;
        };
        let m = conn.rooms.swap_remove(i).m;
        self.positions.forget(key, id);
        self.remove_room_membership(m);
        true
    }

    fn remove_room_membership(&mut self, m: Membership) {
        if let Some((name, moved)) = self.rooms.remove(m) {
            if let Some(other) = moved.and_then(|k| self.conns.get_mut(k as usize)) {
                if let Some(r) = other.rooms.iter_mut().find(|r| r.m.group == m.group) {
                    r.m.pos = m.pos;
                }
            }
            self.events.push(Event::Room {
                reactor: self.id,
                room: name,
                delta: -1,
            });
        }
    }

    /// An open connection stops being one: out of every room and the user table,
    /// its grants released.
    pub(super) fn leave_all(&mut self, key: u32) {
        self.drop_deflate(key);
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        if conn.has(super::conn::flag::V1) {
            self.v1_conns = self.v1_conns.saturating_sub(1);
            self.events.push(Event::V1 {
                reactor: self.id,
                delta: -1,
            });
        }
        let rooms = std::mem::take(&mut conn.rooms);
        let user = std::mem::replace(&mut conn.user, Membership::NONE);
        let grants = std::mem::replace(&mut conn.grants, super::grants::NONE);
        self.grants.release(grants);
        for r in rooms {
            self.remove_room_membership(r.m);
        }
        let mut name = None;
        if !user.is_none() {
            if let Some((n, moved)) = self.users.remove(user) {
                if let Some(other) = moved.and_then(|k| self.conns.get_mut(k as usize)) {
                    other.user.pos = user.pos;
                }
                name = Some(n);
            }
        }
        self.events.push(Event::Conn {
            reactor: self.id,
            user: name,
            delta: -1,
        });
    }

    /// The open connections of `user` here.
    pub(super) fn user_conns(&self, user: &str) -> Vec<u32> {
        self.users
            .id(user)
            .map(|id| self.users.members(id).to_vec())
            .unwrap_or_default()
    }

    /// JOIN: every connection of `user` not yet in `room` (and under the room limit)
    /// joins. Returns how many did.
    pub(super) fn join_user(&mut self, user: &str, room: &str) -> u32 {
        let mut affected = 0;
        for key in self.user_conns(user) {
            let Some(conn) = self.conns.get(key as usize) else {
                continue;
            };
            let index = self.rooms.id(room).and_then(|id| conn.room_index(id));
            if let Some(i) = index {
                // The backend now holds this membership: a refresh must not take it.
                if let Some(c) = self.conns.get_mut(key as usize) {
                    c.rooms[i].by_client = false;
                }
            } else if conn.rooms.len() < self.shared.settings.max_rooms {
                let v1 = conn.has(flag::V1);
                self.join_room(key, room, false);
                if v1 {
                    // A wspush.v1 client learns the room and its position from a
                    // `joined` before the room's first push, as for its own joins.
                    self.request_position(key, room, None, true);
                }
                affected += 1;
            }
        }
        affected
    }

    /// LEAVE: every connection of `user` in `room` leaves it. Returns how many did.
    pub(super) fn leave_user(&mut self, user: &str, room: &str) -> u32 {
        let mut affected = 0;
        for key in self.user_conns(user) {
            if self.leave_room(key, room) {
                affected += 1;
            }
        }
        affected
    }
}
