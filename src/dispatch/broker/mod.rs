//! Cluster mode: the nodes of one wspush service find each other's recipients through
//! a broker (Redis pub/sub), so a push on any node's control port reaches the matching
//! connections on every node.
//!
//! This module is the cluster logic, separate from the engine that talks to the
//! broker ([`Engine`], implemented by [`redis::RedisEngine`]; another engine such as
//! NATS would implement the same trait):
//! - **Channels follow local membership.** A room's channel is subscribed when the
//!   room gets its first member on this node (on any reactor) and unsubscribed
//!   [`UNSUBSCRIBE_DELAY`] after its last member left, unless one came back
//!   meanwhile — so a node receives nothing for rooms and users it has no
//!   connections for, and a flapping room does not churn Redis. Users likewise.
//! - **Own messages are delivered locally, not through the broker.** A node pushes
//!   to its own connections at once, as a standalone node does, and publishes for
//!   the others; its own copy coming back is recognised by the nonce in the envelope
//!   and skipped. Local delivery so keeps working while the broker is down.
//! - **Presence.** Each node publishes a heartbeat every second on the cluster
//!   channel (its connection counts), and writes its per-room counts, for rooms whose
//!   count changed, into one Redis hash per room. `ONLINE` sums heartbeats;
//!   `ONLINE room` reads the room's hash and trusts only fields of live nodes.
//!
//! Never blocks (the engine is non-blocking on the dispatcher's poll) and holds
//! nothing per message: what it keeps grows with this node's rooms and users only.

pub mod nodes;
pub mod placement;
pub mod redis;
pub mod url;
pub mod wire;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::{Registry, Token};

use crate::dispatch::counts::{CountTable, Transition};
use nodes::{Heard, NodeTable, HEARTBEAT_INTERVAL, NODE_TIMEOUT};
use wire::{ChannelKind, Envelope, Heartbeat, Message, Names};

/// How long after linking a node answers cluster-wide counts: a heartbeat interval
/// and some slack, so every live node has been heard.
pub const WARM_UP: Duration = Duration::from_millis(1200);

/// How long a channel stays subscribed after its last local member left.
pub const UNSUBSCRIBE_DELAY: Duration = Duration::from_secs(1);
/// How often changed room counts are written to the presence hashes, by default
/// (`--presence-interval`).
pub const PRESENCE_INTERVAL: Duration = Duration::from_secs(1);
/// A presence hash expires this long after its last write; every room this node holds
/// is rewritten within half of it, so a live room never expires and a dead node's
/// rooms do not stay in Redis for ever.
pub const PRESENCE_TTL: Duration = Duration::from_secs(600);
/// Presence writes per flush; more dirty rooms wait for the next flush.
pub const PRESENCE_BATCH: usize = 50_000;

/// The broker cannot take the command now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

/// What came back from the broker.
#[derive(Debug)]
pub enum Inbound {
    /// A message on a subscribed channel.
    Message { channel: Vec<u8>, payload: Vec<u8> },
    /// The answer to a tagged command.
    Answer { tag: u64, answer: Answer },
    /// A connection to instance `instance` logged in.
    Up { instance: usize },
    /// Its subscriber connection logged in (after `Up`): subscribe again everything
    /// this node needs there.
    SubscriberUp { instance: usize },
    /// A connection to instance `instance` was lost.
    Down { instance: usize },
}

/// A command's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// An integer reply (PUBLISH: subscribers that got it).
    Count(i64),
    /// A list (HGETALL's field / value pairs, a script's results).
    List(Vec<Item>),
    /// The broker refused the command.
    Error(String),
    /// The connection died before the answer came.
    Lost,
}

/// One element of a list answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Int(i64),
    Bytes(Vec<u8>),
    /// Anything else (nil, a nested list): no element the cluster logic reads.
    Other,
}

impl Item {
    pub fn int(&self) -> Option<i64> {
        match self {
            Item::Int(n) => Some(*n),
            Item::Bytes(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            Item::Other => None,
        }
    }

    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Item::Bytes(b) => Some(b),
            _ => None,
        }
    }
}

/// A list answer read as field / value pairs (HGETALL).
pub fn pairs(items: &[Item]) -> Vec<(&[u8], &[u8])> {
    items
        .chunks_exact(2)
        .filter_map(|p| Some((p[0].bytes()?, p[1].bytes()?)))
        .collect()
}

/// The keys of one room's position and history (on the room channel's instance).
#[derive(Debug, Clone)]
pub struct RoomKeys {
    pub pos: Vec<u8>,
    pub stream: Vec<u8>,
    pub channel: Vec<u8>,
}

/// The engine's state for INFO and readiness.
#[derive(Debug, Clone, Copy, Default)]
pub struct EngineStatus {
    pub instances: usize,
    pub connections: usize,
    pub connections_up: usize,
    /// Subscriptions the broker confirmed.
    pub subscribed: u64,
    pub backlog_bytes: usize,
    pub in_flight: usize,
    pub messages_in: u64,
    pub messages_out: u64,
    pub disconnects: u64,
    pub reconnects: u64,
    pub errors: u64,
}

/// What cluster logic needs of a broker. Channels and keys are placed on instances
/// by the engine; everything is non-blocking and answered through [`Inbound`].
pub trait Engine: Send {
    /// Which of the engine's connections `token` is, if it is one of them.
    fn owns(&self, token: Token) -> Option<usize>;
    /// A poll event on one of its tokens.
    fn on_event(&mut self, registry: &Registry, token: Token, now: Instant);
    /// Timers: reconnects, keep-alives, timeouts, reads left over from a turn.
    fn tick(&mut self, registry: &Registry, now: Instant);
    /// Writes what the turn queued.
    fn flush(&mut self, registry: &Registry, now: Instant);
    /// A read stopped at its per-turn budget: the caller should not sleep.
    fn has_more(&self) -> bool;
    /// Moves what arrived into `out`.
    fn take(&mut self, out: &mut Vec<Inbound>);
    /// Subscribes (`on`) or unsubscribes `channel` if its instance's subscriber
    /// connection is logged in, else does nothing: the engine keeps no channel list
    /// (it would cost bytes per connected user); the owner subscribes everything
    /// again on [`Inbound::SubscriberUp`].
    fn subscribe(&mut self, channel: &[u8], on: bool);
    /// Whether the subscriber connection of `channel`'s instance is logged in.
    fn subscriber_ready(&self, channel: &[u8]) -> bool;
    /// Tracks one channel's subscription as Redis confirms it (the cluster channel).
    fn watch(&mut self, channel: &[u8]);
    /// Whether Redis has confirmed the watched channel on its current connection.
    fn watched_confirmed(&self) -> bool;
    /// Which broker instance holds `key` (a channel or presence key).
    fn instance_of(&self, key: &[u8]) -> usize;
    /// Whether commands for `key` (a channel or presence key) can be sent now.
    fn is_up_for(&self, key: &[u8]) -> bool;
    fn publish(
        &mut self,
        channel: &[u8],
        message: &[u8],
        tag: Option<u64>,
    ) -> Result<(), Unavailable>;
    fn report_presence(
        &mut self,
        key: &[u8],
        field: &[u8],
        count: u64,
        ttl: Duration,
    ) -> Result<(), Unavailable>;
    /// Removes a dead node's field (best effort).
    fn forget_presence(&mut self, key: &[u8], field: &[u8]);
    fn query_presence(&mut self, key: &[u8], tag: u64) -> Result<(), Unavailable>;
    /// Appends a room message to the room's history and publishes it with its
    /// position, as one atomic step (`prefix` is the envelope before the body);
    /// answered as `List [epoch, offset, receivers]`.
    #[allow(clippy::too_many_arguments)]
    fn publish_positioned(
        &mut self,
        keys: &RoomKeys,
        prefix: &[u8],
        payload: &[u8],
        size: usize,
        ttl: Duration,
        candidate: &str,
        tag: u64,
    ) -> Result<(), Unavailable>;
    /// Reads a room's position and, if `since` (epoch, offset) is recoverable within
    /// `max`, the payloads after it; answered as `List [epoch, offset, recovered,
    /// payload…]`.
    #[allow(clippy::too_many_arguments)]
    fn read_positions(
        &mut self,
        keys: &RoomKeys,
        since: Option<(&str, u64)>,
        max: usize,
        candidate: &str,
        ttl: Duration,
        tag: u64,
    ) -> Result<(), Unavailable>;
    /// A room's position and the retained messages `read` selects: answered as
    /// `List [epoch, offset, id, payload, …]`, oldest first.
    fn read_history(
        &mut self,
        keys: &RoomKeys,
        read: HistoryRead,
        tag: u64,
    ) -> Result<(), Unavailable>;
    /// A no-op command on instance `instance`, answered after everything sent before.
    fn fence(&mut self, instance: usize, tag: u64) -> Result<(), Unavailable>;
    /// Too much is queued for the broker: stop taking control input for now.
    fn congested(&self) -> bool;
    fn status(&self) -> EngineStatus;
}

/// Which retained messages of a room HISTORY reads from the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryRead {
    /// The newest this many (0: all).
    pub count: usize,
    /// Only those whose offset is below it.
    pub before: Option<u64>,
    /// Of those, the newest whose payloads fit in this many bytes (at least one),
    /// applied where they are stored, before the answer is sent.
    pub max_bytes: usize,
}

/// Who a message from another node is for, on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery<'a> {
    Room(&'a str, &'a [u8]),
    /// A room push with its cluster-wide position.
    RoomAt {
        room: &'a str,
        epoch: &'a str,
        offset: u64,
        payload: &'a [u8],
    },
    User(&'a str, &'a [u8]),
    All(&'a [u8]),
    Join {
        user: &'a str,
        room: &'a str,
    },
    Leave {
        user: &'a str,
        room: &'a str,
    },
    Kick {
        user: &'a str,
        reason: &'a str,
    },
}

/// What a command for other nodes is.
#[derive(Debug, Clone, Copy)]
pub enum Outbound<'a> {
    Room(&'a str, &'a [u8]),
    User(&'a str, &'a [u8]),
    All(&'a [u8]),
    Join { user: &'a str, room: &'a str },
    Leave { user: &'a str, room: &'a str },
    Kick { user: &'a str, reason: &'a str },
}

/// This node's own numbers, for its heartbeat.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalCounts {
    pub connections: u64,
    pub rooms: u64,
    pub users: u64,
}

/// Counters the cluster logic keeps for INFO.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClusterStats {
    /// Commands answered -TRYAGAIN.
    pub unavailable_replies: u64,
    /// Broker messages that were not a valid envelope (or named nothing valid).
    pub malformed: u64,
    /// Heartbeats from another process using this node's id.
    pub id_conflicts: u64,
}

/// One node in cluster mode.
pub struct Cluster {
    engine: Box<dyn Engine>,
    names: Names,
    pub node_id: String,
    /// Random per process start: tells this node's own messages (and presence
    /// fields) from those of a restarted node with the same id.
    pub nonce: u64,
    /// This node's field in presence hashes: the nonce in hex.
    field: Vec<u8>,
    /// Messages this node has published (the envelope's sequence number).
    seq: u64,
    /// Epoch candidates made so far.
    epochs: u64,
    instances: u16,
    pub nodes: NodeTable,
    /// Channels whose last local member left, by when they are dropped.
    unsubscribe_due: HashMap<(ChannelKind, Arc<str>), Instant>,
    unsubscribe_queue: VecDeque<(ChannelKind, Arc<str>, Instant)>,
    /// Rooms whose local count changed since the last presence flush.
    dirty: HashSet<Arc<str>>,
    /// Every room must be rewritten (after a broker (re)connect).
    all_dirty: bool,
    /// Where the slow full rewrite of presence counts goes on.
    refresh_cursor: u32,
    next_heartbeat: Instant,
    next_presence: Instant,
    presence_interval: Duration,
    started: Instant,
    /// Since when the cluster channel has been subscribed and publishable.
    linked_since: Option<Instant>,
    pub stats: ClusterStats,
}

impl Cluster {
    pub fn new(
        engine: Box<dyn Engine>,
        node_id: String,
        prefix: &str,
        nonce: u64,
        presence_interval: Duration,
    ) -> Cluster {
        let names = Names::new(prefix);
        let now = Instant::now();
        let mut c = Cluster {
            instances: engine.status().instances as u16,
            engine,
            names,
            node_id,
            nonce,
            field: format!("{nonce:016x}").into_bytes(),
            seq: 0,
            epochs: 0,
            nodes: NodeTable::default(),
            unsubscribe_due: HashMap::new(),
            unsubscribe_queue: VecDeque::new(),
            dirty: HashSet::new(),
            all_dirty: false,
            refresh_cursor: 0,
            next_heartbeat: now,
            next_presence: now + presence_interval,
            presence_interval,
            started: now,
            linked_since: None,
            stats: ClusterStats::default(),
        };
        let cluster = c.names.cluster().to_vec();
        c.engine.watch(&cluster);
        c
    }

    pub fn owns(&self, token: Token) -> bool {
        self.engine.owns(token).is_some()
    }

    pub fn on_event(&mut self, registry: &Registry, token: Token, now: Instant) {
        self.engine.on_event(registry, token, now);
    }

    pub fn flush(&mut self, registry: &Registry, now: Instant) {
        self.engine.flush(registry, now);
    }

    pub fn has_more(&self) -> bool {
        self.engine.has_more()
    }

    pub fn congested(&self) -> bool {
        self.engine.congested()
    }

    pub fn status(&self) -> EngineStatus {
        self.engine.status()
    }

    /// Every connection to every instance is up.
    pub fn ready(&self) -> bool {
        let s = self.engine.status();
        s.connections_up == s.connections
    }

    /// Moves what arrived from the broker into `out`, keeping what is the cluster
    /// logic's own (link state).
    pub fn take(
        &mut self,
        out: &mut Vec<Inbound>,
        now: Instant,
        rooms: &CountTable,
        users: &CountTable,
    ) {
        let start = out.len();
        self.engine.take(out);
        for ev in &out[start..] {
            match ev {
                Inbound::SubscriberUp { instance } => self.resubscribe(*instance, rooms, users),
                Inbound::Up { .. } => {
                    // A restarted Redis has lost the presence hashes: write them all,
                    // walking the table from its start.
                    self.all_dirty = true;
                    self.refresh_cursor = 0;
                    self.next_heartbeat = now;
                }
                Inbound::Down { .. } => {}
                _ => {}
            }
        }
        match (self.linked(), self.linked_since) {
            (true, None) => self.linked_since = Some(now),
            (false, Some(_)) => self.linked_since = None,
            _ => {}
        }
    }

    /// Subscribes, on a subscriber connection of `instance` that just logged in,
    /// every channel this node needs there: the cluster channel, its rooms and users,
    /// and those whose deferred unsubscribe is not due yet.
    fn resubscribe(&mut self, instance: usize, rooms: &CountTable, users: &CountTable) {
        let mut wanted: Vec<Vec<u8>> = vec![self.names.cluster().to_vec()];
        for name in rooms.names() {
            wanted.push(self.names.channel(ChannelKind::Room, name));
        }
        for name in users.names() {
            wanted.push(self.names.channel(ChannelKind::User, name));
        }
        for (kind, name) in self.unsubscribe_due.keys() {
            wanted.push(self.names.channel(*kind, name));
        }
        for ch in wanted {
            if self.engine.instance_of(&ch) == instance {
                self.engine.subscribe(&ch, true);
            }
        }
    }

    /// Channels this node needs (for INFO).
    pub fn wanted(&self, rooms: &CountTable, users: &CountTable) -> usize {
        1 + rooms.len() + users.len() + self.unsubscribe_due.len()
    }

    /// The room or user `name` appeared on or vanished from this node.
    pub fn membership(&mut self, kind: ChannelKind, name: &Arc<str>, t: Transition, now: Instant) {
        match t {
            Transition::Appeared => {
                if self.unsubscribe_due.remove(&(kind, name.clone())).is_none() {
                    let ch = self.names.channel(kind, name);
                    self.engine.subscribe(&ch, true);
                }
            }
            Transition::Vanished => {
                let due = now + UNSUBSCRIBE_DELAY;
                self.unsubscribe_due.insert((kind, name.clone()), due);
                self.unsubscribe_queue.push_back((kind, name.clone(), due));
            }
            Transition::Same => {}
        }
        if kind == ChannelKind::Room {
            self.dirty.insert(name.clone());
        }
    }

    /// Heartbeats, presence writes, deferred unsubscribes, the engine's timers.
    pub fn tick(
        &mut self,
        registry: &Registry,
        now: Instant,
        rooms: &CountTable,
        local: LocalCounts,
    ) {
        self.engine.tick(registry, now);
        while let Some((_, _, due)) = self.unsubscribe_queue.front() {
            if *due > now {
                break;
            }
            let Some((kind, name, due)) = self.unsubscribe_queue.pop_front() else {
                break;
            };
            // Only if it was not cancelled (or re-scheduled) since.
            if self.unsubscribe_due.get(&(kind, name.clone())) == Some(&due) {
                self.unsubscribe_due.remove(&(kind, name.clone()));
                let ch = self.names.channel(kind, &name);
                self.engine.subscribe(&ch, false);
            }
        }
        for id in self.nodes.expire(now) {
            info!("cluster: node {id} left (not heard from for {NODE_TIMEOUT:?})");
        }
        if now >= self.next_heartbeat {
            self.next_heartbeat = now + HEARTBEAT_INTERVAL;
            let hb = Heartbeat {
                node_id: self.node_id.clone(),
                connections: local.connections,
                rooms: local.rooms,
                users: local.users,
                uptime_s: self.started.elapsed().as_secs(),
                instances: self.instances,
            };
            let msg = wire::encode(self.nonce, self.next_seq(), &Message::Heartbeat(hb));
            let ch = self.names.cluster().to_vec();
            let _ = self.engine.publish(&ch, &msg, None);
        }
        if now >= self.next_presence {
            self.next_presence = now + self.presence_interval;
            self.flush_presence(rooms);
        }
    }

    /// Writes changed room counts (and a slice of the unchanged ones, so every hash
    /// is rewritten within half its TTL).
    fn flush_presence(&mut self, rooms: &CountTable) {
        let mut budget = PRESENCE_BATCH;
        if self.all_dirty {
            // The rewrite walks the whole table once, a batch per flush, on from where
            // the last flush stopped (`take` restarts it on every Up). A room whose
            // instance is down is skipped: that instance's own Up starts a new walk.
            // The dirty set is kept for after the walk: a room that emptied is not in
            // the table, and its field must still be removed.
            let bound = rooms.id_bound();
            let mut id = self.refresh_cursor;
            while id < bound && budget > 0 {
                if let Some((name, n)) = rooms.by_id(id) {
                    let _ = self.write_presence(name, n);
                    budget -= 1;
                }
                id += 1;
            }
            if id < bound {
                self.refresh_cursor = id;
            } else {
                self.all_dirty = false;
                self.refresh_cursor = 0;
            }
            return;
        }
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.retain(|name| {
            if budget == 0 {
                return true;
            }
            // Kept dirty while its instance is down (written once it is back, then
            // all are); the other instances' rooms are written meanwhile.
            if self.write_presence(name, rooms.total(name)).is_err() {
                return true;
            }
            budget -= 1;
            false
        });
        self.dirty = dirty;
        // The slow rewrite: every live room within PRESENCE_TTL / 2.
        let bound = rooms.id_bound();
        if bound == 0 {
            return;
        }
        let per_flush = (bound as u64 * self.presence_interval.as_secs().max(1)
            / (PRESENCE_TTL.as_secs() / 2).max(1))
        .max(1) as u32;
        let mut walked = 0;
        while walked < per_flush && budget > 0 {
            let id = self.refresh_cursor % bound;
            self.refresh_cursor = (id + 1) % bound;
            walked += 1;
            if let Some((name, n)) = rooms.by_id(id) {
                let _ = self.write_presence(name, n);
                budget -= 1;
            }
        }
    }

    fn write_presence(&mut self, room: &str, n: u64) -> Result<(), Unavailable> {
        let key = self.names.presence_key(room);
        self.engine
            .report_presence(&key, &self.field, n, PRESENCE_TTL)
    }

    /// Decodes a message from the broker into what this node must deliver; keeps
    /// heartbeats for itself and skips its own messages.
    pub fn route<'a>(
        &mut self,
        channel: &'a [u8],
        payload: &'a [u8],
        now: Instant,
    ) -> Option<Delivery<'a>> {
        let Some((kind, name)) = self.names.parse_channel(channel) else {
            self.stats.malformed += 1;
            return None;
        };
        let env: Envelope<'a> = match wire::decode(payload) {
            Ok(env) => env,
            Err(e) => {
                self.stats.malformed += 1;
                log::debug!("cluster: dropped a message: {e}");
                return None;
            }
        };
        // This node's own messages were delivered here already — except positioned
        // pushes, which every node, this one too, delivers from Redis (only Redis
        // knows their position).
        if env.origin == self.nonce && !matches!(env.message, Message::Positioned { .. }) {
            return None;
        }
        match (kind, env.message) {
            (ChannelKind::Room, Message::Push(p)) => Some(Delivery::Room(name, p)),
            (
                ChannelKind::Room,
                Message::Positioned {
                    epoch,
                    offset,
                    payload,
                },
            ) => Some(Delivery::RoomAt {
                room: name,
                epoch,
                offset,
                payload,
            }),
            (ChannelKind::User, Message::Push(p)) => Some(Delivery::User(name, p)),
            (ChannelKind::Cluster, Message::Push(p)) => Some(Delivery::All(p)),
            (ChannelKind::User, Message::Join(room)) => Some(Delivery::Join { user: name, room }),
            (ChannelKind::User, Message::Leave(room)) => Some(Delivery::Leave { user: name, room }),
            (ChannelKind::User, Message::Kick(reason)) => {
                Some(Delivery::Kick { user: name, reason })
            }
            (ChannelKind::Cluster, Message::Heartbeat(hb)) => {
                self.heard(env.origin, hb, now);
                None
            }
            (ChannelKind::Cluster, Message::Leaving) => {
                if let Some(n) = self.nodes.remove(env.origin) {
                    info!("cluster: node {} left", n.report.node_id);
                }
                None
            }
            _ => {
                self.stats.malformed += 1;
                None
            }
        }
    }

    fn heard(&mut self, nonce: u64, hb: Heartbeat, now: Instant) {
        if hb.node_id == self.node_id {
            self.stats.id_conflicts += 1;
            warn!(
                "cluster: another process uses this node's id {:?}: give every node its own --node-id",
                self.node_id
            );
        }
        if hb.instances != self.instances {
            warn!(
                "cluster: node {} places channels on {} Redis instances, this node on {}: every node needs the same --redis list",
                hb.node_id, hb.instances, self.instances
            );
        }
        let id = hb.node_id.clone();
        if self.nodes.heard(nonce, hb, now) == Heard::New {
            info!("cluster: node {id} joined");
        }
    }

    /// The broker instance that carries `channel`.
    pub fn instance_of_channel(&self, channel: &[u8]) -> usize {
        self.engine.instance_of(channel)
    }

    /// This node's instance identity — nonce, publish sequence, epoch candidates —
    /// for the process an upgrade hands the node to.
    pub fn identity(&self) -> [u64; 3] {
        [self.nonce, self.seq, self.epochs]
    }

    /// Carries on as the node instance `identity` names (the process this one took
    /// over from): other nodes see one node go on, and its messages echoed back are
    /// recognised as this node's own. The counters jump ahead, so nothing the old
    /// process sent after it was read (a heartbeat) shares a number with what this
    /// one sends.
    pub fn adopt_identity(&mut self, [nonce, seq, epochs]: [u64; 3]) {
        const AHEAD: u64 = 1 << 20;
        self.nonce = nonce;
        self.field = format!("{nonce:016x}").into_bytes();
        self.seq = seq.saturating_add(AHEAD);
        self.epochs = epochs.saturating_add(AHEAD);
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Which broker instance a command for the other nodes goes through.
    pub fn instance_for(&self, what: &Outbound<'_>) -> usize {
        let (kind, name, _) = Self::parts(what);
        self.engine.instance_of(&self.names.channel(kind, name))
    }

    fn parts<'a>(what: &Outbound<'a>) -> (ChannelKind, &'a str, Message<'a>) {
        match *what {
            Outbound::Room(room, p) => (ChannelKind::Room, room, Message::Push(p)),
            Outbound::User(user, p) => (ChannelKind::User, user, Message::Push(p)),
            Outbound::All(p) => (ChannelKind::Cluster, "", Message::Push(p)),
            Outbound::Join { user, room } => (ChannelKind::User, user, Message::Join(room)),
            Outbound::Leave { user, room } => (ChannelKind::User, user, Message::Leave(room)),
            Outbound::Kick { user, reason } => (ChannelKind::User, user, Message::Kick(reason)),
        }
    }

    /// Publishes a command for the other nodes. `Ok(self_subscribed)` says whether
    /// this node's own subscription will count in the broker's receiver count.
    pub fn publish(
        &mut self,
        what: Outbound<'_>,
        tag: Option<u64>,
        rooms: &CountTable,
        users: &CountTable,
    ) -> Result<bool, Unavailable> {
        let (kind, name, message) = Self::parts(&what);
        let ch = self.names.channel(kind, name);
        // Subscribed here while the node has members (or an unsubscribe is pending).
        let held_here = match kind {
            ChannelKind::Cluster => true,
            ChannelKind::Room => rooms.get(name).is_some(),
            ChannelKind::User => users.get(name).is_some(),
        } || (kind != ChannelKind::Cluster
            && self.unsubscribe_due.contains_key(&(kind, Arc::from(name))));
        let own = held_here && self.engine.subscriber_ready(&ch);
        if !self.engine.is_up_for(&ch) {
            return Err(Unavailable);
        }
        let seq = self.next_seq();
        let bytes = wire::encode(self.nonce, seq, &message);
        self.engine.publish(&ch, &bytes, tag)?;
        Ok(own)
    }

    /// A round trip through instance `instance` after everything sent there so far
    /// (see `Dispatcher::fence`); answered as `Inbound::Answer { tag }`.
    pub fn fence(&mut self, instance: usize, tag: u64) -> Result<(), Unavailable> {
        self.engine.fence(instance, tag)
    }

    /// A fresh epoch for a room state Redis does not have yet (16 hex characters,
    /// unique to this process and call).
    pub fn epoch_candidate(&mut self) -> String {
        self.epochs += 1;
        let mut z = self.nonce ^ self.epochs.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        format!("{:016x}", z ^ (z >> 31))
    }

    /// PUBLISH with history (`--history-size` in cluster mode): Redis assigns the
    /// position, keeps the message and publishes it, in one script; every node, this
    /// one included, delivers it when it comes back on the room channel. `Ok(own)`
    /// says whether this node's subscription counts among the receivers.
    #[allow(clippy::too_many_arguments)]
    pub fn publish_positioned(
        &mut self,
        room: &str,
        payload: &[u8],
        size: usize,
        ttl: Duration,
        tag: u64,
        rooms: &CountTable,
    ) -> Result<bool, Unavailable> {
        let keys = self.names.room_keys(room);
        if !self.engine.is_up_for(&keys.channel) {
            return Err(Unavailable);
        }
        let own = (rooms.get(room).is_some()
            || self
                .unsubscribe_due
                .contains_key(&(ChannelKind::Room, Arc::from(room))))
            && self.engine.subscriber_ready(&keys.channel);
        let seq = self.next_seq();
        let prefix = wire::positioned_prefix(self.nonce, seq);
        let candidate = self.epoch_candidate();
        self.engine
            .publish_positioned(&keys, &prefix, payload, size, ttl, &candidate, tag)?;
        Ok(own)
    }

    /// Reads a room's cluster-wide position, and what was missed after `since`.
    pub fn read_positions(
        &mut self,
        room: &str,
        since: Option<(&str, u64)>,
        max: usize,
        ttl: Duration,
        tag: u64,
    ) -> Result<(), Unavailable> {
        let keys = self.names.room_keys(room);
        let candidate = self.epoch_candidate();
        self.engine
            .read_positions(&keys, since, max, &candidate, ttl, tag)
    }

    /// Reads a room's retained messages from Redis (HISTORY in cluster mode).
    pub fn read_history(
        &mut self,
        room: &str,
        read: HistoryRead,
        tag: u64,
    ) -> Result<(), Unavailable> {
        let keys = self.names.room_keys(room);
        self.engine.read_history(&keys, read, tag)
    }

    /// Asks for a room's presence hash; the answer comes as `Inbound::Answer { tag }`.
    pub fn query_room(&mut self, room: &str, tag: u64) -> Result<(), Unavailable> {
        let key = self.names.presence_key(room);
        self.engine.query_presence(&key, tag)
    }

    /// Members of `room` on the other live nodes, from its presence hash; fields of
    /// nodes known to be gone are removed from Redis on the way.
    pub fn sum_presence(&mut self, room: &str, items: &[Item], now: Instant) -> u64 {
        let fields = pairs(items);
        // Only once this node has heard every live node at least once can it tell
        // a dead node's field from a node it has not heard yet.
        let table_complete = self
            .linked_since
            .is_some_and(|t| now.saturating_duration_since(t) > NODE_TIMEOUT + HEARTBEAT_INTERVAL);
        let key = self.names.presence_key(room);
        let mut sum = 0u64;
        for (field, value) in fields {
            if field == &self.field[..] {
                continue;
            }
            let nonce = std::str::from_utf8(field)
                .ok()
                .and_then(|s| u64::from_str_radix(s, 16).ok());
            match nonce {
                Some(n) if self.nodes.is_live(n) => {
                    let count = std::str::from_utf8(value)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .unwrap_or(0);
                    sum = sum.saturating_add(count);
                }
                _ if table_complete => self.engine.forget_presence(&key, field),
                _ => {}
            }
        }
        sum
    }

    /// Whether cluster-wide counts can be given: the cluster channel is subscribed
    /// and its instance reachable.
    pub fn linked(&self) -> bool {
        let cluster = self.names.cluster();
        self.engine.watched_confirmed() && self.engine.is_up_for(cluster)
    }

    /// Linked for long enough to have heard every live node's heartbeat: only then
    /// are cluster-wide counts complete.
    pub fn warm(&self, now: Instant) -> bool {
        self.linked()
            && self
                .linked_since
                .is_some_and(|t| now.saturating_duration_since(t) >= WARM_UP)
    }

    /// Whether commands for the room's presence can be sent now.
    pub fn room_queryable(&self, room: &str) -> bool {
        self.engine.is_up_for(&self.names.presence_key(room))
    }

    /// Tells the others this node is going (they forget it at once).
    pub fn leave(&mut self) {
        let ch = self.names.cluster().to_vec();
        let msg = wire::encode(self.nonce, self.next_seq(), &Message::Leaving);
        let _ = self.engine.publish(&ch, &msg, None);
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// What the fake engine was asked to write, and what it will deliver next.
    #[derive(Default)]
    struct Shared {
        /// (presence key, count) in the order reported.
        presence: Vec<(Vec<u8>, u64)>,
        inbound: Vec<Inbound>,
    }

    /// An engine with no sockets: keys containing `down` are on instance 1, which is
    /// not connected; everything else is on instance 0, accepted and logged.
    struct Fake(Arc<Mutex<Shared>>);

    impl Engine for Fake {
        fn owns(&self, _: Token) -> Option<usize> {
            None
        }
        fn on_event(&mut self, _: &Registry, _: Token, _: Instant) {}
        fn tick(&mut self, _: &Registry, _: Instant) {}
        fn flush(&mut self, _: &Registry, _: Instant) {}
        fn has_more(&self) -> bool {
            false
        }
        fn take(&mut self, out: &mut Vec<Inbound>) {
            out.append(&mut self.0.lock().unwrap().inbound);
        }
        fn subscribe(&mut self, _: &[u8], _: bool) {}
        fn subscriber_ready(&self, _: &[u8]) -> bool {
            true
        }
        fn watch(&mut self, _: &[u8]) {}
        fn watched_confirmed(&self) -> bool {
            true
        }
        fn instance_of(&self, key: &[u8]) -> usize {
            usize::from(key.windows(4).any(|w| w == b"down"))
        }
        fn is_up_for(&self, key: &[u8]) -> bool {
            self.instance_of(key) == 0
        }
        fn publish(&mut self, _: &[u8], _: &[u8], _: Option<u64>) -> Result<(), Unavailable> {
            Ok(())
        }
        fn report_presence(
            &mut self,
            key: &[u8],
            _: &[u8],
            count: u64,
            _: Duration,
        ) -> Result<(), Unavailable> {
            if !self.is_up_for(key) {
                return Err(Unavailable);
            }
            self.0.lock().unwrap().presence.push((key.to_vec(), count));
            Ok(())
        }
        fn forget_presence(&mut self, _: &[u8], _: &[u8]) {}
        fn query_presence(&mut self, _: &[u8], _: u64) -> Result<(), Unavailable> {
            Ok(())
        }
        fn fence(&mut self, _: usize, _: u64) -> Result<(), Unavailable> {
            Ok(())
        }
        fn publish_positioned(
            &mut self,
            _: &RoomKeys,
            _: &[u8],
            _: &[u8],
            _: usize,
            _: Duration,
            _: &str,
            _: u64,
        ) -> Result<(), Unavailable> {
            Ok(())
        }
        fn read_positions(
            &mut self,
            _: &RoomKeys,
            _: Option<(&str, u64)>,
            _: usize,
            _: &str,
            _: Duration,
            _: u64,
        ) -> Result<(), Unavailable> {
            Ok(())
        }
        fn read_history(
            &mut self,
            _: &RoomKeys,
            _: HistoryRead,
            _: u64,
        ) -> Result<(), Unavailable> {
            Ok(())
        }
        fn congested(&self) -> bool {
            false
        }
        fn status(&self) -> EngineStatus {
            EngineStatus {
                instances: 2,
                ..EngineStatus::default()
            }
        }
    }

    fn cluster() -> (Cluster, Arc<Mutex<Shared>>) {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let c = Cluster::new(
            Box::new(Fake(shared.clone())),
            "n1".into(),
            "p",
            1,
            PRESENCE_INTERVAL,
        );
        (c, shared)
    }

    /// The engine reports a (re)connect, and the dispatcher takes it.
    fn up(c: &mut Cluster, shared: &Mutex<Shared>) {
        shared
            .lock()
            .unwrap()
            .inbound
            .push(Inbound::Up { instance: 0 });
        let mut out = Vec::new();
        let empty = CountTable::new(1);
        c.take(&mut out, Instant::now(), &empty, &empty);
    }

    fn change(c: &mut Cluster, rooms: &mut CountTable, room: &str, delta: i32) {
        let name: Arc<str> = room.into();
        let t = rooms.apply(&name, 0, delta);
        c.membership(ChannelKind::Room, &name, t, Instant::now());
    }

    fn last_count(shared: &Mutex<Shared>, room: &str) -> Option<u64> {
        let key = format!("p:presence:{room}").into_bytes();
        let s = shared.lock().unwrap();
        s.presence
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|(_, n)| *n)
    }

    /// A room whose last member left just before a (re)connect is no longer in the
    /// table the full rewrite walks: its field must still be removed, or the other
    /// nodes count its old members for the whole TTL.
    #[test]
    fn a_room_that_emptied_before_a_reconnect_still_has_its_count_removed() {
        let (mut c, shared) = cluster();
        let mut rooms = CountTable::new(1);
        change(&mut c, &mut rooms, "r", 1);
        c.flush_presence(&rooms);
        assert_eq!(last_count(&shared, "r"), Some(1));
        change(&mut c, &mut rooms, "r", -1);
        up(&mut c, &shared);
        for _ in 0..3 {
            c.flush_presence(&rooms);
        }
        assert_eq!(
            last_count(&shared, "r"),
            Some(0),
            "the field is never removed"
        );
    }

    /// After a reconnect every room is rewritten, a batch per flush, also when there
    /// are more rooms than one batch holds; then changes are written again.
    #[test]
    fn the_rewrite_after_a_reconnect_reaches_every_room_of_a_large_table() {
        let (mut c, shared) = cluster();
        let mut rooms = CountTable::new(1);
        let n = PRESENCE_BATCH + 10;
        for i in 0..n {
            change(&mut c, &mut rooms, &format!("r{i}"), 1);
        }
        up(&mut c, &shared);
        for _ in 0..3 {
            c.flush_presence(&rooms);
        }
        let last = format!("r{}", n - 1);
        assert_eq!(last_count(&shared, &last), Some(1), "{last} never written");
        change(&mut c, &mut rooms, "r0", 1);
        c.flush_presence(&rooms);
        assert_eq!(
            last_count(&shared, "r0"),
            Some(2),
            "changes stopped being written"
        );
    }

    /// With one Redis instance down, rooms on the others still get their counts
    /// written (the down instance's rooms are rewritten by its own reconnect).
    #[test]
    fn an_instance_that_is_down_does_not_stop_presence_writes_on_the_others() {
        let (mut c, shared) = cluster();
        let mut rooms = CountTable::new(1);
        // Interned first, so both the full rewrite and (often) the dirty pass meet
        // the down instance's rooms before the live one.
        for i in 0..20 {
            change(&mut c, &mut rooms, &format!("down{i}"), 1);
        }
        change(&mut c, &mut rooms, "up", 1);
        up(&mut c, &shared);
        for _ in 0..3 {
            c.flush_presence(&rooms);
        }
        assert_eq!(
            last_count(&shared, "up"),
            Some(1),
            "rewrite stuck on a down instance"
        );
        for i in 0..20 {
            change(&mut c, &mut rooms, &format!("down{i}"), 1);
        }
        change(&mut c, &mut rooms, "up", 1);
        c.flush_presence(&rooms);
        assert_eq!(
            last_count(&shared, "up"),
            Some(2),
            "change stuck behind a down instance"
        );
    }
}
