//! The dispatcher's side of cluster mode: what the control commands do when the node
//! is one of many, and how what other nodes publish enters the same routing path as
//! a local command.
//!
//! A push runs locally at once (so local delivery does not wait for, or depend on,
//! the broker) and is published for the other nodes; its reply is held until Redis
//! has taken it and says how many other nodes did. Messages from other nodes are
//! pushed like a local PUBLISH, except that a reactor whose queue is full is skipped
//! and the drop counted: the broker's read loop never waits for a reactor.

use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, Instant};

use super::broker::wire::order_key;
use super::broker::{Answer, Delivery, Inbound, LocalCounts, Outbound};
use super::client::Failure;
use super::{BrokerWait, Dispatcher, Recipients};
use crate::control::command::Command;
use crate::control::resp;
use crate::link::{self, health};
use crate::ws::close::CloseCode;
use crate::ws::frame::encode_close;

/// The dispatcher wakes at least this often in cluster mode, for the broker's timers
/// (heartbeats, deferred unsubscribes, reconnects).
pub const TICK: Duration = Duration::from_millis(100);

/// A random number per process start (the node's instance nonce).
pub fn nonce() -> u64 {
    // RandomState is seeded from the OS's randomness once per process.
    let mut h = RandomState::new().build_hasher();
    std::hash::Hasher::write_u64(&mut h, std::process::id() as u64);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    std::hash::Hasher::write_u64(&mut h, t);
    std::hash::Hasher::finish(&h)
}

impl Dispatcher {
    /// The broker's share of a turn: timers, then whatever it delivered.
    pub(super) fn cluster_turn(&mut self, now: Instant) {
        let Some(cluster) = &mut self.cluster else {
            return;
        };
        let local = LocalCounts {
            connections: self.online.iter().sum(),
            rooms: self.rooms.len() as u64,
            users: self.users.len() as u64,
        };
        cluster.tick(self.poll.registry(), now, &self.rooms, local);
        let mut inbound = std::mem::take(&mut self.inbound);
        cluster.take(&mut inbound, now, &self.rooms, &self.users);
        self.census.liveness.set_broker(if cluster.ready() {
            health::Broker::Up
        } else {
            health::Broker::Down
        });
        // One sender's messages may come through several Redis instances: within
        // what this turn read, put them back in the order it published them.
        inbound.sort_by_key(|ev| match ev {
            Inbound::Message { payload, .. } => order_key(payload).unwrap_or_default(),
            _ => (0, 0),
        });
        for ev in inbound.drain(..) {
            match ev {
                Inbound::Message { channel, payload } => {
                    // Held while an upgrade hands this node over (handover.rs).
                    let Some((channel, payload)) = self.hold_broker_message(channel, payload)
                    else {
                        continue;
                    };
                    let Some(cluster) = &mut self.cluster else {
                        break;
                    };
                    if let Some(d) = cluster.route(&channel, &payload, now) {
                        self.deliver(d);
                    }
                }
                Inbound::Answer { tag, answer } => self.on_broker_answer(tag, answer, now),
                Inbound::Up { .. } | Inbound::SubscriberUp { .. } | Inbound::Down { .. } => {}
            }
        }
        self.inbound = inbound;
    }

    /// Writes what the turn queued for the broker.
    pub(super) fn cluster_flush(&mut self) {
        if let Some(c) = &mut self.cluster {
            c.flush(self.poll.registry(), Instant::now());
        }
    }

    /// Stopping: tell the other nodes, so they drop this one at once.
    pub(super) fn cluster_leave(&mut self) {
        if let Some(c) = &mut self.cluster {
            c.leave();
            c.flush(self.poll.registry(), Instant::now());
        }
    }

    /// A message from another node, delivered to this node's connections.
    pub(super) fn deliver(&mut self, d: Delivery<'_>) {
        match d {
            Delivery::Room(room, p) => {
                self.push(Recipients::Room(room), p, true);
            }
            Delivery::RoomAt {
                room,
                epoch,
                offset,
                payload,
            } => self.push_at(room, epoch, offset, payload),
            Delivery::User(user, p) => {
                self.push(Recipients::User(user), p, true);
            }
            Delivery::All(p) => {
                self.push(Recipients::All, p, true);
            }
            Delivery::Join { user, room } => {
                let room: std::sync::Arc<str> = room.into();
                self.user_request(None, user, |req, user| link::Command::Join {
                    req,
                    user,
                    room: room.clone(),
                });
            }
            Delivery::Leave { user, room } => {
                let room: std::sync::Arc<str> = room.into();
                self.user_request(None, user, |req, user| link::Command::Leave {
                    req,
                    user,
                    room: room.clone(),
                });
            }
            Delivery::Kick { user, reason } => {
                let frame: std::sync::Arc<[u8]> = encode_close(CloseCode::KICKED, reason).into();
                self.user_request(None, user, |req, user| link::Command::Kick {
                    req,
                    user,
                    frame: frame.clone(),
                });
            }
        }
    }

    fn on_broker_answer(&mut self, tag: u64, answer: Answer, now: Instant) {
        let Some(wait) = self.broker_waits.remove(&tag) else {
            return;
        };
        let (client, client_id, held, add, failure) = match wait {
            BrokerWait::History { client, client_id } => {
                self.on_history_answer(client, client_id, tag, answer);
                return;
            }
            BrokerWait::Positioned {
                client,
                client_id,
                own,
            } => {
                self.on_positioned_answer(client, client_id, own, tag, answer);
                return;
            }
            BrokerWait::Recover {
                reactor,
                req,
                room,
                asked,
                buffer,
            } => {
                self.on_recover_answer(tag, reactor, req, room, asked, buffer, answer);
                return;
            }
            BrokerWait::Fence { client, client_id } => {
                if let Some(c) = self.clients.get_mut(client) {
                    if c.id == client_id {
                        c.broker_inflight = c.broker_inflight.saturating_sub(1);
                        // Even a failed fence ends the wait: the instance is gone, and
                        // nothing more can be gained by holding the client.
                        c.fenced = true;
                        self.ready.push(client);
                    }
                }
                return;
            }
            BrokerWait::Reply {
                client,
                client_id,
                held,
                own,
            } => {
                if let Some(c) = self.clients.get_mut(client) {
                    if c.id == client_id {
                        c.broker_inflight = c.broker_inflight.saturating_sub(1);
                        if c.broker_inflight == 0 && c.stashed.is_some() {
                            self.ready.push(client);
                        }
                    }
                }
                match answer {
                    Answer::Count(n) => (
                        client,
                        client_id,
                        held,
                        (n - own as i64).max(0) as u64,
                        None,
                    ),
                    Answer::Error(e) => (client, client_id, held, 0, Some(Failure::Refused(e))),
                    Answer::Lost => (client, client_id, held, 0, Some(Failure::Lost)),
                    Answer::List(_) => (client, client_id, held, 0, None),
                }
            }
            BrokerWait::Online {
                client,
                client_id,
                held,
                room,
            } => match answer {
                Answer::List(f) => {
                    let sum = self
                        .cluster
                        .as_mut()
                        .map_or(0, |c| c.sum_presence(&room, &f, now));
                    (client, client_id, held, sum, None)
                }
                Answer::Error(e) => (client, client_id, held, 0, Some(Failure::Refused(e))),
                Answer::Lost => (client, client_id, held, 0, Some(Failure::Lost)),
                Answer::Count(_) => (client, client_id, held, 0, None),
            },
        };
        if failure.is_some() {
            if let Some(c) = &mut self.cluster {
                c.stats.unavailable_replies += 1;
            }
        }
        if let Some(c) = self.clients.get_mut(client) {
            if c.id == client_id && c.resolve(held, add, failure) {
                self.ready.push(client);
            }
        }
    }

    /// Whether `cmd` must wait because it goes through another broker instance than
    /// this client's publishes still unanswered (see `Client::stashed`).
    pub(super) fn must_wait_for_instance_switch(&self, key: usize, cmd: &Command) -> bool {
        let Some(cluster) = &self.cluster else {
            return false;
        };
        let Some(c) = self.clients.get(key) else {
            return false;
        };
        let across = self
            .settings
            .cluster
            .as_ref()
            .is_some_and(|s| s.order_across_instances);
        if !across || (c.broker_inflight == 0 && c.fenced) {
            return false;
        }
        let what = match cmd {
            Command::Publish { room, payload } => Outbound::Room(room, payload),
            Command::Broadcast { payload } => Outbound::All(payload),
            Command::Send { user, payload } => Outbound::User(user, payload),
            Command::Join { user, room } => Outbound::Join { user, room },
            Command::Leave { user, room } => Outbound::Leave { user, room },
            Command::Kick { user, reason } => Outbound::Kick { user, reason },
            _ => return false,
        };
        cluster.instance_for(&what) != c.broker_instance && (c.broker_inflight > 0 || !c.fenced)
    }

    /// Sends a fence for client `key`: a PING through the instance its last publishes
    /// went through, sent only once they are all answered. Redis answers a PUBLISH
    /// before it has written the message to its subscribers (both leave in one
    /// event-loop iteration, the reply first), so the reply alone does not prove the
    /// subscribers have it; the PING is read in a later iteration, after that
    /// iteration's writes. Only then does the client's next message go to another
    /// instance, so a node subscribed on both gets the two in publish order.
    pub(super) fn fence(&mut self, key: usize) {
        let tag = self.tag();
        let Some(cluster) = &mut self.cluster else {
            return;
        };
        let c = &mut self.clients[key];
        if cluster.fence(c.broker_instance, tag).is_ok() {
            c.broker_inflight += 1;
            self.broker_waits.insert(
                tag,
                BrokerWait::Fence {
                    client: key,
                    client_id: c.id,
                },
            );
        } else {
            c.fenced = true;
            self.ready.push(key);
        }
    }

    fn tag(&mut self) -> u64 {
        self.next_tag += 1;
        self.next_tag
    }

    /// Answers a push that reached `local` connections here: at once when standalone;
    /// in cluster mode once Redis has taken it for the other nodes.
    pub(super) fn reply_push(&mut self, key: usize, local: u64, what: Outbound<'_>) {
        if self.cluster.is_none() {
            resp::write_integer(self.clients[key].out(), local as i64);
            return;
        }
        self.publish_held(key, what, local, 0);
    }

    /// In cluster mode, publishes a JOIN / LEAVE / KICK for the other nodes and holds
    /// the client's reply for both the local acks and the broker's answer; returns the
    /// held reply's id (`None` standalone: the reply is written on the acks).
    pub(super) fn hold_for_broker(&mut self, key: usize, what: Outbound<'_>) -> Option<u64> {
        self.cluster.as_ref()?;
        // Local parts: this node's acks (resolved by user_request).
        Some(self.publish_held(key, what, 0, 1))
    }

    /// Publishes `what` for the other nodes and holds client `key`'s reply (value
    /// `local` so far) for the broker's answer plus `local_parts` more answers; if the
    /// broker cannot take it, the reply becomes -TRYAGAIN once the local parts are in.
    /// Returns the held reply's id.
    fn publish_held(&mut self, key: usize, what: Outbound<'_>, local: u64, local_parts: u8) -> u64 {
        let tag = self.tag();
        let Some(cluster) = &mut self.cluster else {
            return tag;
        };
        let instance = cluster.instance_for(&what);
        let c = &mut self.clients[key];
        match cluster.publish(what, Some(tag), &self.rooms, &self.users) {
            Ok(own) => {
                c.broker_inflight += 1;
                c.broker_instance = instance;
                c.fenced = false;
                c.hold(tag, local, local_parts + 1, true, None);
                self.broker_waits.insert(
                    tag,
                    BrokerWait::Reply {
                        client: key,
                        client_id: c.id,
                        held: tag,
                        own,
                    },
                );
            }
            Err(_) => {
                cluster.stats.unavailable_replies += 1;
                c.hold(tag, local, local_parts, true, Some(Failure::Unavailable));
            }
        }
        tag
    }

    /// `ONLINE [room]`.
    pub(super) fn online(&mut self, key: usize, room: Option<String>) {
        let local = match &room {
            Some(room) => self.rooms.total(room),
            None => self.online.iter().sum(),
        };
        let tag = self.tag();
        let Some(cluster) = &mut self.cluster else {
            resp::write_integer(self.clients[key].out(), local as i64);
            return;
        };
        let c = &mut self.clients[key];
        let usable = cluster.warm(Instant::now())
            && room.as_deref().is_none_or(|r| cluster.room_queryable(r));
        if !usable {
            cluster.stats.unavailable_replies += 1;
            resp::write_error(
                c.out(),
                "TRYAGAIN broker unavailable: cluster-wide counts are not available",
            );
            return;
        }
        match room {
            None => {
                let n = local.saturating_add(cluster.nodes.connections());
                resp::write_integer(c.out(), n.min(i64::MAX as u64) as i64);
            }
            Some(room) => {
                if cluster.query_room(&room, tag).is_err() {
                    cluster.stats.unavailable_replies += 1;
                    c.hold(tag, local, 0, false, Some(Failure::Unavailable));
                    return;
                }
                c.hold(tag, local, 1, false, None);
                self.broker_waits.insert(
                    tag,
                    BrokerWait::Online {
                        client: key,
                        client_id: c.id,
                        held: tag,
                        room,
                    },
                );
            }
        }
    }

    /// `NODES`: this node, then the others, each as field / value pairs.
    pub(super) fn nodes(&mut self, key: usize) {
        let now = Instant::now();
        let connections: u64 = self.online.iter().sum();
        let me = NodeLine {
            id: self.settings.node_id.clone(),
            connections,
            rooms: self.rooms.len() as u64,
            users: self.users.len() as u64,
            last_seen_ms: 0,
            uptime_s: self.started.elapsed().as_secs(),
            me: true,
        };
        let mut lines = vec![me];
        if let Some(cluster) = &mut self.cluster {
            if !cluster.warm(now) {
                cluster.stats.unavailable_replies += 1;
                resp::write_error(
                    self.clients[key].out(),
                    "TRYAGAIN broker unavailable: the node list is not available",
                );
                return;
            }
            for (_, n) in cluster.nodes.sorted() {
                lines.push(NodeLine {
                    id: n.report.node_id.clone(),
                    connections: n.report.connections,
                    rooms: n.report.rooms,
                    users: n.report.users,
                    last_seen_ms: now.saturating_duration_since(n.last_seen).as_millis() as u64,
                    uptime_s: n.report.uptime_s,
                    me: false,
                });
            }
        }
        let out = self.clients[key].out();
        resp::write_array_len(out, lines.len());
        for l in lines {
            resp::write_array_len(out, 14);
            resp::write_bulk(out, b"id");
            resp::write_bulk(out, l.id.as_bytes());
            for (k, v) in [
                ("connections", l.connections),
                ("rooms", l.rooms),
                ("users", l.users),
                ("last_seen_ms", l.last_seen_ms),
                ("uptime_s", l.uptime_s),
                ("self", l.me as u64),
            ] {
                resp::write_bulk(out, k.as_bytes());
                resp::write_integer(out, v.min(i64::MAX as u64) as i64);
            }
        }
    }
}

/// One node in the `NODES` reply.
struct NodeLine {
    id: String,
    connections: u64,
    rooms: u64,
    users: u64,
    last_seen_ms: u64,
    uptime_s: u64,
    me: bool,
}
