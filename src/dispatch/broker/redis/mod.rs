//! The Redis engine: per Redis instance one subscriber and one pipelined command
//! connection, every channel and presence key placed on an instance by jump hash.
//!
//! It keeps no set of channels: which channels a node needs follows from the node's
//! own room and user tables, so keeping a copy here would cost bytes per connected
//! user. Whenever a subscriber connection (re)logs in, the engine reports
//! [`Inbound::SubscriberUp`] and the cluster logic subscribes everything it needs on
//! that instance again; changes are queued in order and coalesced per dispatcher turn
//! into SUBSCRIBE / UNSUBSCRIBE commands of at most [`SUBSCRIBE_BATCH`] channels. It never re-sends a PUBLISH after a
//! reconnect: a command lost with its connection is reported lost, and the caller
//! answers its client with an error instead (no duplicates, no silent loss).
//!
//! Never blocks, and never buffers without bound: commands are refused while the
//! instance is down, and [`Engine::congested`] tells the dispatcher to stop taking
//! control input while a command connection's backlog is over [`MAX_BACKLOG`].

pub mod conn;
pub mod scripts;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::{Registry, Token};

use super::placement::instance_of;
use super::url::RedisUrl;
use super::{Answer, Engine, EngineStatus, HistoryRead, Inbound, Item, RoomKeys, Unavailable};
use crate::control::reply::Reply;
use conn::{Conn, Expect, Input};

/// Channels per SUBSCRIBE / UNSUBSCRIBE command when re-subscribing.
pub const SUBSCRIBE_BATCH: usize = 500;
/// Unwritten command bytes on one connection above which the dispatcher stops taking
/// control input until Redis has caught up.
pub const MAX_BACKLOG: usize = 8 << 20;
/// Replies due on one connection above which the same happens.
pub const MAX_IN_FLIGHT: usize = 100_000;

/// One Redis instance: where it is and this node's two connections to it.
struct Instance {
    url: RedisUrl,
    sub: Conn,
    cmd: Conn,
    /// Subscribe (true) / unsubscribe changes not yet sent, in order.
    pending: Vec<(bool, Box<[u8]>)>,
    /// The subscriber connection's subscription count, as Redis last reported it.
    confirmed: u64,
    /// Whether Redis confirmed the watched channel (see [`Engine::watch`]).
    watched_confirmed: bool,
    /// Whether each connection was ever up (a later login is a reconnect).
    sub_was_up: bool,
    cmd_was_up: bool,
}

/// Counters for INFO.
#[derive(Debug, Default, Clone, Copy)]
pub struct RedisStats {
    pub messages_in: u64,
    pub messages_out: u64,
    pub disconnects: u64,
    pub reconnects: u64,
    /// Error replies to commands nobody waits for (presence writes, heartbeats).
    pub errors: u64,
}

pub struct RedisEngine {
    instances: Vec<Instance>,
    /// The first poll token; instance i has `base + 2i` (subscriber) and `base + 2i + 1`.
    base: usize,
    inbound: Vec<Inbound>,
    scratch: Vec<Input>,
    stats: RedisStats,
    /// The channel whose confirmation is tracked (the cluster channel).
    watched: Option<Box<[u8]>>,
}

impl RedisEngine {
    /// `urls` with their resolved addresses; `node` names the connections in CLIENT
    /// LIST; `max_bulk` bounds one reply (a message plus its envelope).
    pub fn new(
        urls: Vec<(RedisUrl, SocketAddr)>,
        node: &str,
        base: usize,
        max_bulk: usize,
        seed: u64,
    ) -> RedisEngine {
        let instances = urls
            .into_iter()
            .enumerate()
            .map(|(i, (url, addr))| Instance {
                sub: Conn::new(
                    addr,
                    url.clone(),
                    format!("wspush:{node}:sub"),
                    Token(base + 2 * i),
                    true,
                    max_bulk,
                    seed.wrapping_add(2 * i as u64),
                ),
                cmd: Conn::new(
                    addr,
                    url.clone(),
                    format!("wspush:{node}:cmd"),
                    Token(base + 2 * i + 1),
                    false,
                    max_bulk,
                    seed.wrapping_add(2 * i as u64 + 1),
                ),
                url,
                pending: Vec::new(),
                confirmed: 0,
                watched_confirmed: false,
                sub_was_up: false,
                cmd_was_up: false,
            })
            .collect();
        RedisEngine {
            instances,
            base,
            inbound: Vec::new(),
            scratch: Vec::new(),
            stats: RedisStats::default(),
            watched: None,
        }
    }

    pub fn stats(&self) -> RedisStats {
        self.stats
    }

    fn place(&self, key: &[u8]) -> usize {
        instance_of(key, self.instances.len())
    }

    /// The logged-in command connection of the instance holding `key`.
    fn command_conn(&mut self, key: &[u8]) -> Result<&mut Conn, Unavailable> {
        let i = self.place(key);
        let cmd = &mut self.instances[i].cmd;
        if cmd.is_ready() {
            Ok(cmd)
        } else {
            Err(Unavailable)
        }
    }

    /// Turns what connection `sub` (or the command one) of instance `i` reported into
    /// inbound events.
    fn absorb(&mut self, i: usize, sub: bool) {
        let mut inputs = std::mem::take(&mut self.scratch);
        for input in inputs.drain(..) {
            match input {
                Input::Up => self.on_up(i, sub),
                Input::Down => {
                    self.stats.disconnects += 1;
                    if sub {
                        let inst = &mut self.instances[i];
                        inst.confirmed = 0;
                        inst.watched_confirmed = false;
                        inst.pending.clear();
                    }
                    self.inbound.push(Inbound::Down { instance: i });
                }
                Input::Lost(tag) => self.inbound.push(Inbound::Answer {
                    tag,
                    answer: Answer::Lost,
                }),
                Input::Answer(Expect::Tagged(tag), reply) => self.inbound.push(Inbound::Answer {
                    tag,
                    answer: answer_of(reply),
                }),
                Input::Answer(_, Reply::Error(e)) => {
                    self.stats.errors += 1;
                    warn!(
                        "broker: {}: error reply: {}",
                        self.instances[i].url,
                        String::from_utf8_lossy(&e)
                    );
                }
                Input::Answer(..) => {}
                Input::Pushed(reply) => self.on_push(i, reply),
            }
        }
        self.scratch = inputs;
    }

    fn on_up(&mut self, i: usize, sub: bool) {
        let inst = &mut self.instances[i];
        let again = if sub {
            std::mem::replace(&mut inst.sub_was_up, true)
        } else {
            std::mem::replace(&mut inst.cmd_was_up, true)
        };
        if again {
            self.stats.reconnects += 1;
            info!(
                "broker: {} ({}) reconnected",
                inst.url,
                if sub { "subscriber" } else { "commands" }
            );
        } else {
            info!(
                "broker: {} ({}) connected",
                inst.url,
                if sub { "subscriber" } else { "commands" }
            );
        }
        if sub {
            // The owner subscribes everything again, from its tables.
            inst.pending.clear();
            inst.watched_confirmed = false;
            self.inbound.push(Inbound::SubscriberUp { instance: i });
        }
        self.inbound.push(Inbound::Up { instance: i });
    }

    fn on_push(&mut self, i: usize, reply: Reply) {
        let Reply::Array(Some(items)) = reply else {
            return;
        };
        let mut items = items.into_iter();
        let (Some(Reply::Bulk(Some(kind))), Some(second), Some(third)) =
            (items.next(), items.next(), items.next())
        else {
            return;
        };
        match (&kind[..], second, third) {
            (b"message", Reply::Bulk(Some(channel)), Reply::Bulk(Some(payload))) => {
                self.stats.messages_in += 1;
                self.inbound.push(Inbound::Message { channel, payload });
            }
            (verb @ (b"subscribe" | b"unsubscribe"), channel, Reply::Integer(n)) => {
                let inst = &mut self.instances[i];
                inst.confirmed = n.max(0) as u64;
                if let (Some(w), Reply::Bulk(Some(ch))) = (&self.watched, channel) {
                    if w[..] == ch[..] {
                        inst.watched_confirmed = verb == b"subscribe";
                    }
                }
            }
            _ => {}
        }
    }
}

/// A command's reply as the cluster logic reads it.
fn answer_of(reply: Reply) -> Answer {
    match reply {
        Reply::Integer(n) => Answer::Count(n),
        Reply::Error(e) => Answer::Error(String::from_utf8_lossy(&e).into_owned()),
        Reply::Array(Some(items)) => Answer::List(
            items
                .into_iter()
                .map(|r| match r {
                    Reply::Integer(n) => Item::Int(n),
                    Reply::Bulk(Some(b)) | Reply::Simple(b) => Item::Bytes(b),
                    _ => Item::Other,
                })
                .collect(),
        ),
        Reply::Array(None) | Reply::Bulk(None) => Answer::List(Vec::new()),
        Reply::Simple(_) | Reply::Bulk(Some(_)) => Answer::Count(0),
    }
}

impl Engine for RedisEngine {
    fn owns(&self, token: Token) -> Option<usize> {
        let t = token.0.checked_sub(self.base)?;
        (t < 2 * self.instances.len()).then_some(t)
    }

    fn on_event(&mut self, registry: &Registry, token: Token, now: Instant) {
        let Some(t) = self.owns(token) else { return };
        let (i, sub) = (t / 2, t % 2 == 0);
        let mut out = std::mem::take(&mut self.scratch);
        let inst = &mut self.instances[i];
        if sub {
            inst.sub.on_event(registry, now, &mut out);
        } else {
            inst.cmd.on_event(registry, now, &mut out);
        }
        self.scratch = out;
        self.absorb(i, sub);
    }

    fn tick(&mut self, registry: &Registry, now: Instant) {
        for i in 0..self.instances.len() {
            for sub in [true, false] {
                let mut out = std::mem::take(&mut self.scratch);
                let inst = &mut self.instances[i];
                let c = if sub { &mut inst.sub } else { &mut inst.cmd };
                c.tick(registry, now, &mut out);
                // A read that stopped at its budget goes on without a new event.
                if c.has_more() {
                    c.on_event(registry, now, &mut out);
                }
                self.scratch = out;
                self.absorb(i, sub);
            }
        }
    }

    fn flush(&mut self, registry: &Registry, now: Instant) {
        for i in 0..self.instances.len() {
            let inst = &mut self.instances[i];
            if inst.sub.is_ready() && !inst.pending.is_empty() {
                // In order, one command per run of the same verb (Redis applies them
                // in order, so the last change of a channel wins, as it must).
                let pending = std::mem::take(&mut inst.pending);
                let mut start = 0;
                while start < pending.len() {
                    let on = pending[start].0;
                    let mut end = start;
                    while end < pending.len()
                        && pending[end].0 == on
                        && end - start < SUBSCRIBE_BATCH
                    {
                        end += 1;
                    }
                    let mut args: Vec<&[u8]> = Vec::with_capacity(end - start + 1);
                    args.push(if on { b"SUBSCRIBE" } else { b"UNSUBSCRIBE" });
                    args.extend(pending[start..end].iter().map(|(_, c)| &c[..]));
                    inst.sub.send(&args, Expect::Untagged);
                    start = end;
                }
            }
            for sub in [true, false] {
                let mut out = std::mem::take(&mut self.scratch);
                let inst = &mut self.instances[i];
                let c = if sub { &mut inst.sub } else { &mut inst.cmd };
                c.flush(registry, now, &mut out);
                self.scratch = out;
                self.absorb(i, sub);
            }
        }
    }

    fn has_more(&self) -> bool {
        self.instances
            .iter()
            .any(|i| i.sub.has_more() || i.cmd.has_more())
    }

    fn take(&mut self, out: &mut Vec<Inbound>) {
        out.append(&mut self.inbound);
    }

    fn subscribe(&mut self, channel: &[u8], on: bool) {
        let i = self.place(channel);
        let inst = &mut self.instances[i];
        if inst.sub.is_ready() {
            inst.pending.push((on, channel.into()));
        }
    }

    fn subscriber_ready(&self, channel: &[u8]) -> bool {
        self.instances[self.place(channel)].sub.is_ready()
    }

    fn watch(&mut self, channel: &[u8]) {
        self.watched = Some(channel.into());
    }

    fn watched_confirmed(&self) -> bool {
        self.watched
            .as_ref()
            .is_some_and(|w| self.instances[self.place(w)].watched_confirmed)
    }

    fn instance_of(&self, key: &[u8]) -> usize {
        self.place(key)
    }

    fn is_up_for(&self, key: &[u8]) -> bool {
        self.instances[self.place(key)].cmd.is_ready()
    }

    fn publish(
        &mut self,
        channel: &[u8],
        message: &[u8],
        tag: Option<u64>,
    ) -> Result<(), Unavailable> {
        let cmd = self.command_conn(channel)?;
        let expect = tag.map_or(Expect::Untagged, Expect::Tagged);
        cmd.send(&[&b"PUBLISH"[..], channel, message], expect);
        self.stats.messages_out += 1;
        Ok(())
    }

    fn report_presence(
        &mut self,
        key: &[u8],
        field: &[u8],
        count: u64,
        ttl: Duration,
    ) -> Result<(), Unavailable> {
        let cmd = self.command_conn(key)?;
        if count == 0 {
            cmd.send(&[&b"HDEL"[..], key, field], Expect::Untagged);
        } else {
            let n = count.to_string();
            cmd.send(&[&b"HSET"[..], key, field, n.as_bytes()], Expect::Untagged);
            let t = ttl.as_secs().max(1).to_string();
            cmd.send(&[&b"EXPIRE"[..], key, t.as_bytes()], Expect::Untagged);
        }
        Ok(())
    }

    fn forget_presence(&mut self, key: &[u8], field: &[u8]) {
        let i = self.place(key);
        let cmd = &mut self.instances[i].cmd;
        if cmd.is_ready() {
            cmd.send(&[&b"HDEL"[..], key, field], Expect::Untagged);
        }
    }

    fn query_presence(&mut self, key: &[u8], tag: u64) -> Result<(), Unavailable> {
        let cmd = self.command_conn(key)?;
        cmd.send(&[&b"HGETALL"[..], key], Expect::Tagged(tag));
        Ok(())
    }

    fn fence(&mut self, instance: usize, tag: u64) -> Result<(), Unavailable> {
        let cmd = &mut self.instances.get_mut(instance).ok_or(Unavailable)?.cmd;
        if !cmd.is_ready() {
            return Err(Unavailable);
        }
        cmd.send(&["PING"], Expect::Tagged(tag));
        Ok(())
    }

    fn publish_positioned(
        &mut self,
        keys: &RoomKeys,
        prefix: &[u8],
        payload: &[u8],
        size: usize,
        ttl: Duration,
        candidate: &str,
        tag: u64,
    ) -> Result<(), Unavailable> {
        let cmd = self.command_conn(&keys.channel)?;
        let size = size.to_string();
        let ttl = ttl.as_millis().max(1).to_string();
        cmd.send(
            &[
                b"EVAL",
                scripts::PUBLISH.as_bytes(),
                b"3",
                &keys.pos,
                &keys.stream,
                &keys.channel,
                prefix,
                payload,
                size.as_bytes(),
                ttl.as_bytes(),
                candidate.as_bytes(),
            ],
            Expect::Tagged(tag),
        );
        self.stats.messages_out += 1;
        Ok(())
    }

    fn read_positions(
        &mut self,
        keys: &RoomKeys,
        since: Option<(&str, u64)>,
        max: usize,
        candidate: &str,
        ttl: Duration,
        tag: u64,
    ) -> Result<(), Unavailable> {
        let cmd = self.command_conn(&keys.channel)?;
        let (epoch, offset) = since.unwrap_or(("", 0));
        let offset = offset.to_string();
        let max = max.to_string();
        let ttl = ttl.as_millis().max(1).to_string();
        cmd.send(
            &[
                b"EVAL",
                scripts::RECOVER.as_bytes(),
                b"2",
                &keys.pos,
                &keys.stream,
                epoch.as_bytes(),
                offset.as_bytes(),
                max.as_bytes(),
                candidate.as_bytes(),
                ttl.as_bytes(),
            ],
            Expect::Tagged(tag),
        );
        Ok(())
    }

    fn read_history(
        &mut self,
        keys: &RoomKeys,
        read: HistoryRead,
        tag: u64,
    ) -> Result<(), Unavailable> {
        let cmd = self.command_conn(&keys.channel)?;
        let count = read.count.to_string();
        // Entry ids are `offset-1`; "(" makes the range's end exclusive (Redis 6.2+).
        let end = read
            .before
            .map_or_else(|| "+".to_string(), |b| format!("({b}-1"));
        let max_bytes = read.max_bytes.to_string();
        cmd.send(
            &[
                b"EVAL",
                scripts::HISTORY.as_bytes(),
                b"2",
                &keys.pos,
                &keys.stream,
                count.as_bytes(),
                end.as_bytes(),
                max_bytes.as_bytes(),
            ],
            Expect::Tagged(tag),
        );
        Ok(())
    }

    fn congested(&self) -> bool {
        self.instances
            .iter()
            .any(|i| i.cmd.backlog() > MAX_BACKLOG || i.cmd.in_flight() > MAX_IN_FLIGHT)
    }

    fn status(&self) -> EngineStatus {
        let r = self.stats;
        EngineStatus {
            instances: self.instances.len(),
            connections: 2 * self.instances.len(),
            connections_up: self
                .instances
                .iter()
                .map(|i| i.sub.is_ready() as usize + i.cmd.is_ready() as usize)
                .sum(),
            subscribed: self.instances.iter().map(|i| i.confirmed).sum(),
            backlog_bytes: self.instances.iter().map(|i| i.cmd.backlog()).sum(),
            in_flight: self.instances.iter().map(|i| i.cmd.in_flight()).sum(),
            messages_in: r.messages_in,
            messages_out: r.messages_out,
            disconnects: r.disconnects,
            reconnects: r.reconnects,
            errors: r.errors,
        }
    }
}
