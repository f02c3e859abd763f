//! The dispatcher thread: owns the control port, parses commands, routes pushes.
//!
//! Each pushed payload is encoded here ONCE into a complete WebSocket frame
//! (`Arc<[u8]>`) and handed to the reactors that have recipients; everything a turn
//! produces for one reactor travels as one channel message and one wake-up. Replies
//! to pushes are written only after the turn's batches are on their way, so "acked"
//! means "queued, in order" — the order every connection then sees.
//!
//! Must never block: control sockets are non-blocking, a client that does not read
//! its replies is paused (and eventually disconnected) rather than buffered without
//! bound, and JOIN / LEAVE / KICK wait for the reactors' acks without holding up
//! other clients.
//!
//! The rule that keeps counts honest: the reactors' events are drained right before
//! EVERY command executes, not once per turn. A reactor sends its events before it
//! writes the replies they cause (the 101, a "joined"), so whatever a client has
//! seen confirmed is in the channel before any command it prompts can be read, and
//! a PUBLISH can never miss a member it was told about. An empty channel costs one
//! atomic load, and the dispatcher does not rely on being woken for count events.
//!
//! Every JOIN / LEAVE / KICK is answered, even when a reactor exits: each reactor's
//! requests still unacked are kept in the order sent (its acks come back in that
//! order), and on its `Exited` event whatever it never acked is answered as 0.

pub mod broker;
mod client;
mod cluster;
mod compression;
pub mod counts;
mod handover;
pub mod http;
mod info;
mod metrics;
mod positions;
mod prom;
mod setup;

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use log::{debug, error, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use smallvec::SmallVec;

use crate::control::command::{allowed_before_auth, AuthError, Command, CommandError};
use crate::control::resp::{self, Limits, Parsed, Parser};
use crate::link::{self, health, Census, Event, ReactorHandle, ReactorMsg, Target};
use crate::ws::close::CloseCode;
use crate::ws::frame::{encode_close, encode_header, OpCode};
use broker::{Cluster, Inbound, Outbound};
use client::{Client, MAX_HELD_REPLIES};
use counts::CountTable;
pub use handover::UpgradeLink;

const LISTENER: Token = Token(usize::MAX - 1);
const HTTP_LISTENER: Token = Token(usize::MAX - 2);
const WAKER: Token = Token(usize::MAX);
/// Stop executing a client's commands while this many reply bytes wait unread.
const OUTPUT_SOFT_LIMIT: usize = 1 << 20;
/// A client whose replies have not moved for this long while over the soft limit is
/// disconnected.
const OUTPUT_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Stop reading control input while a reactor has this many batches unapplied.
const MAX_QUEUED_BATCHES: usize = 1024;
/// Most commands run for one client per turn, so one pipelining client cannot
/// starve the others.
const COMMANDS_PER_TURN: usize = 4096;
/// Housekeeping interval (stalled clients).
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// Failed AUTH attempts one connection may make; the last one's reply is followed by
/// a close, so guessing the password takes a new connection every few tries.
const MAX_AUTH_FAILURES: u8 = 3;

/// Dispatcher settings, fixed at start-up.
#[derive(Debug, Clone)]
pub struct DispatchSettings {
    pub max_message: usize,
    pub password: Option<String>,
    pub batch_delay: Duration,
    pub max_connections: usize,
    pub listen: SocketAddr,
    pub control: SocketAddr,
    /// Cluster mode: the Redis instances and this node's names; `None` standalone.
    pub cluster: Option<ClusterSettings>,
    /// This node's name (`--node-id`), also when standalone.
    pub node_id: String,
    /// Positions and history (`--history-size`, `--history-ttl`, `--history-memory`).
    pub history: crate::history::Limits,
    /// Most messages replayed per room on recovery (`--max-recover`).
    pub max_recover: usize,
    /// Most bytes one recovery may replay: a connection's `--max-pending`, since
    /// the replay is queued for it at once.
    pub max_replay_bytes: usize,
    /// The HTTP listener's address (`--http`), if any.
    pub http: Option<SocketAddr>,
    /// `--api-key`: what HTTP API requests must bear.
    pub api_key: Option<String>,
    /// `--max-http-connections`.
    pub max_http_connections: usize,
    /// permessage-deflate's `--compression-min-size`; `None`: compression is off.
    pub compression_min_size: Option<usize>,
}

/// What cluster mode is started with.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// Each `--redis` URL with the address it resolved to at start-up.
    pub redis: Vec<(broker::url::RedisUrl, SocketAddr)>,
    pub node_id: String,
    pub prefix: String,
    /// Keep a control connection's order across Redis instances (`--cluster-order
    /// connection`), not only per channel.
    pub order_across_instances: bool,
    /// How often changed room counts go to the presence hashes.
    pub presence_interval: Duration,
}

/// How main stops the dispatcher.
pub struct DispatcherHandle {
    pub waker: Arc<Waker>,
    pub stop: Arc<AtomicBool>,
}

impl DispatcherHandle {
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
    }
}

/// Who a push is for, as the control command named it.
enum Recipients<'a> {
    All,
    Room(&'a str),
    User(&'a str),
}

/// A JOIN/LEAVE/KICK waiting for the acks of the reactors it was sent to.
struct PendingRequest {
    client: usize,
    client_id: u64,
    remaining: usize,
    affected: u64,
    /// In cluster mode the reply is a held one (it also waits for the broker).
    held: Option<u64>,
}

/// A broker answer a client's reply waits for.
enum BrokerWait {
    /// A push or user command: adds the other nodes that took it.
    Reply {
        client: usize,
        client_id: u64,
        held: u64,
        /// This node's own subscription counts in the broker's number.
        own: bool,
    },
    /// A PUBLISH whose position Redis assigns (history in cluster mode).
    Positioned {
        client: usize,
        client_id: u64,
        own: bool,
    },
    /// A room's position (and what was missed) read from Redis for a `wspush.v1`
    /// join; room messages routed meanwhile are kept in `buffer` to be merged.
    Recover {
        reactor: usize,
        req: u64,
        room: Arc<str>,
        asked: bool,
        buffer: Vec<(String, u64, Vec<u8>)>,
    },
    /// HISTORY read from Redis.
    History { client: usize, client_id: u64 },
    /// A fence before a client's next publish goes through another instance.
    Fence { client: usize, client_id: u64 },
    /// `ONLINE room`: adds the other live nodes' members.
    Online {
        client: usize,
        client_id: u64,
        held: u64,
        room: String,
    },
}

/// Counters the dispatcher keeps for INFO.
#[derive(Default)]
struct DispatchStats {
    publish: u64,
    broadcast: u64,
    send: u64,
    commands: u64,
    control_connections: u64,
    batches: u64,
    rejected_commands: u64,
    /// AUTH attempts with a wrong password.
    auth_failures: u64,
    /// Connections closed for too many failed AUTH attempts.
    auth_disconnects: u64,
    /// Messages from other nodes not handed to a reactor whose queue was full (one
    /// per message and reactor).
    broker_dropped: u64,
    /// wspush.v1 joins that asked to recover and could / could not.
    recoveries: u64,
    recovery_failures: u64,
    /// Messages replayed to recovering connections.
    replayed: u64,
    http_connections: u64,
    http_requests: u64,
    /// Requests answered with a 4xx or 5xx status.
    http_errors: u64,
    /// Requests refused for a missing or wrong API key.
    http_unauthorized: u64,
    /// Connections refused at `--max-http-connections`.
    http_refused: u64,
}

/// Where a client's stashed command stands (see `Client::stashed`).
enum Stash {
    /// Nothing stashed.
    None,
    /// It ran.
    Ran,
    /// It must wait (for the broker, a fence, or room in the reactors' queues).
    Waiting,
}

/// Token of the first broker connection; the engine owns a few from here.
const BROKER_BASE: usize = usize::MAX / 2;

pub struct Dispatcher {
    poll: Poll,
    listener: TcpListener,
    /// `--http`: the API, metrics and dashboard listener.
    http_listener: Option<TcpListener>,
    clients: Slab<Client>,
    /// The HTTP side of the clients that came through `http_listener`, by slab key.
    http: HashMap<usize, http::HttpConn>,
    next_client_id: u64,
    reactors: Vec<ReactorHandle>,
    events: Receiver<Vec<Event>>,
    rooms: CountTable,
    users: CountTable,
    /// Open WebSocket connections per reactor.
    online: Vec<u64>,
    /// Commands for each reactor gathered this turn.
    batches: Vec<Vec<link::Command>>,
    /// When the oldest command in `batches` was added (for --batch-delay).
    batch_started: Option<Instant>,
    pending: HashMap<u64, PendingRequest>,
    /// Per reactor, the requests it was sent and has not acked yet, in the order sent.
    unacked: Vec<VecDeque<u64>>,
    next_req: u64,
    /// Clients with input to process without waiting for a socket event.
    ready: Vec<usize>,
    /// A reactor's channel was full at the last look: control input waits.
    congested: bool,
    /// accept() failed; try again at the next housekeeping tick.
    accept_retry: bool,
    /// Reused list of clients to flush at the end of a turn.
    to_flush: Vec<usize>,
    settings: DispatchSettings,
    stats: DispatchStats,
    started: Instant,
    stop: Arc<AtomicBool>,
    census: Census,
    /// Cluster mode's broker link; `None` standalone.
    cluster: Option<Cluster>,
    /// Broker answers awaited, by tag.
    broker_waits: HashMap<u64, BrokerWait>,
    next_tag: u64,
    /// Reused buffer of what the broker delivered in a turn.
    inbound: Vec<Inbound>,
    /// Rooms with a `BrokerWait::Recover` in flight, and their tags.
    recovering: HashMap<Arc<str>, Vec<u64>>,
    /// Room positions and retained messages.
    history: crate::history::History,
    /// Open `wspush.v1` connections per reactor: with none, no envelope is made.
    v1_online: Vec<u64>,
    /// The upgrade's coordinator, if this process can upgrade.
    upgrade: Option<UpgradeLink>,
    /// Where the dispatcher is in an upgrade's hand-over.
    handover: handover::State,
    /// Bytes of the broker messages the hand-over holds now (see `handover`).
    held_bytes: usize,
    /// The last `/api/rooms` answer: when, for which `top`, and its body.
    rooms_cache: Option<(Instant, usize, String)>,
    /// When this turn's poll returned: what the commands read in it were received at.
    turn_started: Instant,
    /// Per reactor: this turn's batch already carries a latency sample.
    sampled: Vec<bool>,
    /// permessage-deflate: who takes compressed frames, and the compressor.
    compression: compression::Compression,
}

impl Dispatcher {
    pub fn new(
        (listener, http_listener): (std::net::TcpListener, Option<std::net::TcpListener>),
        reactors: Vec<ReactorHandle>,
        events: Receiver<Vec<Event>>,
        (poll, waker): (Poll, Arc<Waker>),
        settings: DispatchSettings,
        census: Census,
    ) -> io::Result<(Dispatcher, DispatcherHandle)> {
        let mut listener = TcpListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let http_listener = match http_listener {
            Some(l) => {
                let mut l = TcpListener::from_std(l);
                poll.registry()
                    .register(&mut l, HTTP_LISTENER, Interest::READABLE)?;
                Some(l)
            }
            None => None,
        };
        let n = reactors.len();
        let compression = compression::Compression::new(n, settings.compression_min_size);
        let cluster = settings.cluster.as_ref().map(|c| {
            let nonce = cluster::nonce();
            let engine = broker::redis::RedisEngine::new(
                c.redis.clone(),
                &c.node_id,
                BROKER_BASE,
                settings.max_message + 1024,
                nonce,
            );
            Cluster::new(
                Box::new(engine),
                c.node_id.clone(),
                &c.prefix,
                nonce,
                c.presence_interval,
            )
        });
        census.liveness.set_broker(match &cluster {
            None => health::Broker::Standalone,
            Some(_) => health::Broker::Down,
        });
        let history_limits = settings.history;
        let stop = Arc::new(AtomicBool::new(false));
        let handle = DispatcherHandle {
            waker,
            stop: stop.clone(),
        };
        Ok((
            Dispatcher {
                poll,
                listener,
                http_listener,
                clients: Slab::new(),
                http: HashMap::new(),
                next_client_id: 0,
                reactors,
                events,
                rooms: CountTable::new(n),
                users: CountTable::new(n),
                online: vec![0; n],
                batches: (0..n).map(|_| Vec::new()).collect(),
                batch_started: None,
                pending: HashMap::new(),
                unacked: (0..n).map(|_| VecDeque::new()).collect(),
                next_req: 0,
                ready: Vec::new(),
                congested: false,
                accept_retry: false,
                to_flush: Vec::new(),
                settings,
                stats: DispatchStats::default(),
                started: Instant::now(),
                stop,
                census,
                cluster,
                broker_waits: HashMap::new(),
                next_tag: 0,
                inbound: Vec::new(),
                recovering: HashMap::new(),
                v1_online: vec![0; n],
                upgrade: None,
                handover: handover::State::default(),
                held_bytes: 0,
                rooms_cache: None,
                turn_started: Instant::now(),
                sampled: vec![false; n],
                compression,
                history: crate::history::History::new(history_limits, cluster::nonce()),
            },
            handle,
        ))
    }

    /// A poll with its waker, created before the reactors so they can wake it.
    pub fn poll_and_waker() -> io::Result<(Poll, Arc<Waker>)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        Ok((poll, waker))
    }

    pub fn run(mut self) {
        let mut events = Events::with_capacity(256);
        let mut last_housekeeping = Instant::now();
        // Marks the dispatcher dead for /healthz when the loop ends, even by a panic.
        let _alive = self
            .census
            .liveness
            .guard(self.census.liveness.dispatcher_slot());
        hold_start_for_tests(&self.stop);
        self.census
            .liveness
            .beat(self.census.liveness.dispatcher_slot());
        while !self.stop.load(Ordering::SeqCst) {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    error!("dispatcher: poll failed: {e}");
                    return;
                }
            }
            self.census
                .liveness
                .beat(self.census.liveness.dispatcher_slot());
            let now = Instant::now();
            self.turn_started = now;
            for ev in events.iter() {
                match ev.token() {
                    // Frozen for an upgrade: new clients wait in the backlog.
                    LISTENER if !self.handover.serving() => {}
                    LISTENER => self.accept(),
                    HTTP_LISTENER if !self.handover.serving() => {}
                    HTTP_LISTENER => self.accept_http(),
                    WAKER => {}
                    t if t.0 >= BROKER_BASE => {
                        if let Some(c) = &mut self.cluster {
                            c.on_event(self.poll.registry(), t, now);
                        }
                    }
                    Token(key) => {
                        if let Some(c) = self.clients.get_mut(key) {
                            if ev.is_writable() {
                                c.writable = true;
                            }
                            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                                self.ready.push(key);
                            } else if ev.is_writable() && !c.output.is_empty() {
                                // Draining may unpause its commands.
                                self.ready.push(key);
                            }
                        }
                    }
                }
            }
            self.handover_turn();
            self.apply_events();
            self.cluster_turn(now);
            if self.handover.serving() {
                self.serve_ready();
            }
            self.end_turn();
            self.handover_turn();
            self.cluster_flush();
            if last_housekeeping.elapsed() >= HOUSEKEEPING && self.handover.serving() {
                self.housekeeping();
                last_housekeeping = Instant::now();
            }
        }
        self.cluster_leave();
    }

    fn poll_timeout(&self) -> Duration {
        let t = self.local_poll_timeout();
        match &self.cluster {
            Some(c) if c.has_more() => Duration::ZERO,
            Some(_) => t.min(cluster::TICK),
            None => t,
        }
    }

    fn local_poll_timeout(&self) -> Duration {
        if !self.handover.serving() {
            // Clients wait unread; only reactor events and the coordinator matter.
            return Duration::from_millis(5);
        }
        if self.congested {
            // Give the reactors time to catch up instead of spinning.
            return Duration::from_millis(1);
        }
        if !self.ready.is_empty() {
            return Duration::ZERO;
        }
        if let Some(t) = self.batch_started {
            return self.settings.batch_delay.saturating_sub(t.elapsed());
        }
        HOUSEKEEPING
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, addr)) => {
                    let limits = Limits {
                        max_bulk: self.settings.max_message,
                        max_args: 1024,
                    };
                    let authed = self.settings.password.is_none();
                    if self
                        .add_client(stream, addr, limits, authed, "control")
                        .is_some()
                    {
                        self.stats.control_connections += 1;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of descriptors, typically: the waiting connections stay in
                    // the backlog and are retried at the next housekeeping tick (the
                    // listener is edge-triggered and would not fire again for them).
                    warn!("control: accept: {e} (retrying in {HOUSEKEEPING:?})");
                    self.accept_retry = true;
                    return;
                }
            }
        }
    }

    /// Registers an accepted control or HTTP connection and gives it a slot; `None`
    /// if it could not be registered (it is dropped).
    fn add_client(
        &mut self,
        mut stream: mio::net::TcpStream,
        addr: SocketAddr,
        limits: Limits,
        authed: bool,
        what: &str,
    ) -> Option<usize> {
        let _ = stream.set_nodelay(true);
        let entry = self.clients.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("{what}: register {addr}: {e}");
            return None;
        }
        debug!("{what}: client {addr} connected");
        self.next_client_id += 1;
        entry.insert(Client::new(
            self.next_client_id,
            stream,
            addr,
            Parser::new(limits),
            authed,
        ));
        Some(key)
    }

    /// Applies the reactors' membership changes and acks.
    fn apply_events(&mut self) {
        let mut now = None;
        while let Ok(batch) = self.events.try_recv() {
            let now = *now.get_or_insert_with(Instant::now);
            for ev in batch {
                match ev {
                    Event::Conn {
                        reactor,
                        user,
                        delta,
                    } => {
                        if let Some(n) = self.online.get_mut(reactor) {
                            *n = (*n as i64 + delta as i64).max(0) as u64;
                        }
                        if let Some(u) = user {
                            let t = self.users.apply(&u, reactor, delta);
                            if let Some(c) = &mut self.cluster {
                                c.membership(broker::wire::ChannelKind::User, &u, t, now);
                            }
                        }
                    }
                    Event::Room {
                        reactor,
                        room,
                        delta,
                    } => {
                        let t = self.rooms.apply(&room, reactor, delta);
                        if let Some(c) = &mut self.cluster {
                            c.membership(broker::wire::ChannelKind::Room, &room, t, now);
                        }
                    }
                    Event::Ack {
                        reactor,
                        req,
                        affected,
                    } => {
                        if let Some(sent) = self.unacked.get_mut(reactor) {
                            // In order, so normally the front; a stray id must not
                            // take the others with it.
                            if sent.front() == Some(&req) {
                                sent.pop_front();
                            } else if let Some(i) = sent.iter().position(|&r| r == req) {
                                sent.remove(i);
                            }
                        }
                        self.on_ack(req, affected);
                    }
                    Event::Position {
                        reactor,
                        req,
                        room,
                        since,
                    } => self.on_position(reactor, req, &room, since, now),
                    Event::V1 { reactor, delta } => {
                        if let Some(n) = self.v1_online.get_mut(reactor) {
                            *n = (*n as i64 + delta as i64).max(0) as u64;
                        }
                    }
                    Event::Deflate { reactor, v1, delta } => {
                        self.compression.count(reactor, v1, delta)
                    }
                    Event::Exited { reactor } => {
                        let lost = self.unacked.get_mut(reactor).map(std::mem::take);
                        for req in lost.into_iter().flatten() {
                            self.on_ack(req, 0);
                        }
                    }
                }
            }
        }
    }

    fn on_ack(&mut self, req: u64, affected: u32) {
        let Some(p) = self.pending.get_mut(&req) else {
            return;
        };
        p.affected += affected as u64;
        p.remaining = p.remaining.saturating_sub(1);
        if p.remaining > 0 {
            return;
        }
        let Some(p) = self.pending.remove(&req) else {
            return;
        };
        if let Some(c) = self.clients.get_mut(p.client) {
            if c.id == p.client_id && c.waiting == Some(req) {
                c.waiting = None;
                match p.held {
                    Some(held) => {
                        c.resolve(held, p.affected, None);
                    }
                    None => resp::write_integer(c.out(), p.affected as i64),
                }
                self.ready.push(p.client);
            }
        }
    }

    fn serve_ready(&mut self) {
        self.congested = self
            .reactors
            .iter()
            .any(|r| r.tx.len() >= MAX_QUEUED_BATCHES)
            || self.cluster.as_ref().is_some_and(Cluster::congested);
        let mut ready = std::mem::take(&mut self.ready);
        ready.sort_unstable();
        ready.dedup();
        for key in ready {
            self.serve(key);
        }
    }

    /// Runs client `key`'s stashed command if it may run now.
    fn run_stashed(&mut self, key: usize) -> Stash {
        let Some(c) = self.clients.get_mut(key) else {
            return Stash::Waiting;
        };
        if c.stashed.is_none() {
            return Stash::None;
        }
        if c.broker_inflight > 0 {
            // Resumed when the broker has answered them all.
            return Stash::Waiting;
        }
        if !c.fenced {
            self.fence(key);
            return Stash::Waiting;
        }
        if self.congested {
            self.ready.push(key);
            return Stash::Waiting;
        }
        match self.clients[key].stashed.take() {
            Some(cmd) => {
                self.execute(key, cmd);
                Stash::Ran
            }
            None => Stash::None,
        }
    }

    /// Reads what the client sent and runs its commands, unless it must wait.
    fn serve(&mut self, key: usize) {
        if self.http.contains_key(&key) {
            return self.serve_http(key);
        }
        let mut budget = COMMANDS_PER_TURN;
        // Parsed bytes are dropped from the input once, at the end, not per command.
        let mut parsed_upto = 0;
        loop {
            let Some(c) = self.clients.get_mut(key) else {
                return;
            };
            if c.waiting.is_some() || c.closing {
                break;
            }
            if c.output.len() >= OUTPUT_SOFT_LIMIT {
                c.stalled_since.get_or_insert_with(Instant::now);
                break;
            }
            if c.held_count() >= MAX_HELD_REPLIES {
                // Resumed when a held reply resolves.
                break;
            }
            if c.stashed.is_some() {
                if budget == 0 {
                    self.ready.push(key);
                    break;
                }
                match self.run_stashed(key) {
                    Stash::Ran => budget -= 1,
                    Stash::Waiting => break,
                    Stash::None => {}
                }
                continue;
            }
            if self.congested || budget == 0 {
                self.ready.push(key);
                break;
            }
            // Run what is buffered before reading more.
            match c.parser.parse(&c.input[parsed_upto..]) {
                Ok((used, cmd)) => {
                    parsed_upto += used;
                    if let Some(cmd) = cmd {
                        budget -= 1;
                        self.run_parsed(key, cmd);
                        continue;
                    }
                    if used > 0 {
                        continue;
                    }
                }
                Err(e) => {
                    resp::write_error(c.out(), &e.message());
                    c.closing = true;
                    c.input = Vec::new();
                    return;
                }
            }
            if c.eof {
                break;
            }
            c.input.drain(..parsed_upto);
            parsed_upto = 0;
            let mut buf = [0u8; 16 * 1024];
            match c.stream.read(&mut buf) {
                Ok(0) => c.eof = true,
                Ok(n) => c.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => c.eof = true,
            }
        }
        if let Some(c) = self.clients.get_mut(key) {
            if parsed_upto > 0 {
                c.input.drain(..parsed_upto.min(c.input.len()));
            }
            if c.input.is_empty() && c.input.capacity() > 64 << 10 {
                c.input = Vec::new();
            }
        }
    }

    fn run_parsed(&mut self, key: usize, parsed: Parsed) {
        self.stats.commands += 1;
        let Some(c) = self.clients.get_mut(key) else {
            return;
        };
        // On the name alone, before any argument is looked at: an unauthenticated
        // client learns nothing about commands, arities or limits.
        if !c.authed {
            let name = match &parsed {
                Parsed::Command(args) => args.first().map(Vec::as_slice),
                Parsed::TooLarge { name, .. } => name.as_deref(),
            };
            if !name.is_some_and(allowed_before_auth) {
                self.stats.rejected_commands += 1;
                resp::write_error(c.out(), AuthError::NoAuth.message());
                return;
            }
        }
        let cmd = match parsed {
            Parsed::Command(args) => Command::parse(args, self.settings.max_message),
            Parsed::TooLarge { .. } => Err(CommandError::PayloadTooLarge),
        };
        match cmd {
            Ok(cmd) => self.execute(key, cmd),
            Err(e) => {
                self.stats.rejected_commands += 1;
                resp::write_error(c.out(), &e.message());
            }
        }
    }

    /// Runs one command for client `key`; each arm is one command's handler.
    fn execute(&mut self, key: usize, cmd: Command) {
        // What the reactors have confirmed to their clients so far must be visible to
        // this command (see the module comment).
        self.apply_events();
        if self.must_wait_for_instance_switch(key, &cmd) {
            self.clients[key].stashed = Some(cmd);
            return;
        }
        match cmd {
            Command::Ping(msg) => {
                let c = &mut self.clients[key];
                match msg {
                    None => resp::write_simple(c.out(), "PONG"),
                    Some(m) => resp::write_bulk(c.out(), &m),
                }
            }
            Command::Auth(password) => {
                if self.settings.password.is_none() {
                    let c = &mut self.clients[key];
                    resp::write_error(c.out(), AuthError::NotConfigured.message());
                } else if self.authenticate(key, Some(&password)) {
                    resp::write_simple(self.clients[key].out(), "OK");
                }
            }
            Command::AuthUnknownUser => {
                if self.settings.password.is_none() {
                    let c = &mut self.clients[key];
                    resp::write_error(c.out(), AuthError::NotConfigured.message());
                } else {
                    self.authenticate(key, None);
                }
            }
            Command::Hello {
                proto,
                auth,
                setname,
            } => self.hello(key, proto, auth, setname),
            Command::Client(c) => self.client_command(key, c),
            Command::Select(db) => {
                let out = self.clients[key].out();
                if db == b"0" {
                    resp::write_simple(out, "OK");
                } else {
                    resp::write_error(
                        out,
                        "ERR DB index is out of range (wspush has only database 0)",
                    );
                }
            }
            Command::Echo(m) => resp::write_bulk(self.clients[key].out(), &m),
            Command::CommandInfo(q) => self.command_info(key, q),
            Command::Publish { room, payload } if self.history_in_redis() => {
                self.stats.publish += 1;
                self.publish_positioned(key, &room, &payload);
            }
            Command::Publish { room, payload } => {
                self.stats.publish += 1;
                let n = self.push(Recipients::Room(&room), &payload, false);
                self.reply_push(key, n, Outbound::Room(&room, &payload));
            }
            Command::Broadcast { payload } => {
                self.stats.broadcast += 1;
                let n = self.push(Recipients::All, &payload, false);
                self.reply_push(key, n, Outbound::All(&payload));
            }
            Command::Send { user, payload } => {
                self.stats.send += 1;
                let n = self.push(Recipients::User(&user), &payload, false);
                self.reply_push(key, n, Outbound::User(&user, &payload));
            }
            Command::Join { user, room } => {
                let held = self.hold_for_broker(
                    key,
                    Outbound::Join {
                        user: &user,
                        room: &room,
                    },
                );
                let room: Arc<str> = room.into();
                self.user_request(Some((key, held)), &user, |req, user| link::Command::Join {
                    req,
                    user,
                    room: room.clone(),
                });
            }
            Command::Leave { user, room } => {
                let held = self.hold_for_broker(
                    key,
                    Outbound::Leave {
                        user: &user,
                        room: &room,
                    },
                );
                let room: Arc<str> = room.into();
                self.user_request(Some((key, held)), &user, |req, user| link::Command::Leave {
                    req,
                    user,
                    room: room.clone(),
                });
            }
            Command::Kick { user, reason } => {
                let held = self.hold_for_broker(
                    key,
                    Outbound::Kick {
                        user: &user,
                        reason: &reason,
                    },
                );
                let frame: Arc<[u8]> = encode_close(CloseCode::KICKED, &reason).into();
                self.user_request(Some((key, held)), &user, |req, user| link::Command::Kick {
                    req,
                    user,
                    frame: frame.clone(),
                });
            }
            Command::Online { room } => self.online(key, room),
            Command::Nodes => self.nodes(key),
            Command::History {
                room,
                count,
                before,
            } if self.history_in_redis() => {
                self.history_from_redis(key, &room, count, before);
            }
            Command::History {
                room,
                count,
                before,
            } => self.history_reply(key, &room, count, before),
            Command::Info(section) => {
                let text = info::render(self, section.as_deref());
                resp::write_bulk(self.clients[key].out(), text.as_bytes());
            }
            Command::Quit => {
                let c = &mut self.clients[key];
                resp::write_simple(c.out(), "OK");
                c.closing = true;
            }
            Command::Upgrade => self.request_upgrade(key),
        }
    }

    /// Encodes `payload` once and queues it for every reactor holding recipients.
    /// Returns the number of connections it was queued for.
    fn push(&mut self, to: Recipients<'_>, payload: &[u8], from_broker: bool) -> u64 {
        self.push_with(to, payload, from_broker, None)
    }

    /// `push` with the `wspush.v1` envelope given (a room message whose position
    /// Redis assigned) instead of made here.
    fn push_with(
        &mut self,
        to: Recipients<'_>,
        payload: &[u8],
        from_broker: bool,
        envelope: Option<(Arc<[u8]>, Option<u64>)>,
    ) -> u64 {
        let (reactors, total, target): (SmallVec<[usize; 8]>, u64, Target) = match to {
            Recipients::All => (
                (0..self.online.len())
                    .filter(|&r| self.online[r] > 0)
                    .collect(),
                self.online.iter().sum(),
                Target::All,
            ),
            Recipients::Room(name) => match (self.rooms.get(name), self.rooms.key(name)) {
                (Some(c), Some(key)) => (c.reactors().collect(), c.total(), Target::Room(key)),
                _ => {
                    // Kept for recovery even with no member here.
                    if envelope.is_none() {
                        self.remember(name, payload);
                    }
                    return 0;
                }
            },
            Recipients::User(name) => match (self.users.get(name), self.users.key(name)) {
                (Some(c), Some(key)) => (c.reactors().collect(), c.total(), Target::User(key)),
                _ => return 0,
            },
        };
        if total == 0 {
            return 0;
        }
        let frame = push_frame(payload);
        let (envelope, offset) = match envelope {
            Some((e, offset)) => (Some(e), offset),
            // No wspush.v1 connection anywhere: no envelope, but the room's position
            // still moves (and history is kept) for clients that come back.
            None if self.v1_online.iter().all(|&n| n == 0) => {
                if let Recipients::Room(room) = to {
                    self.remember(room, payload);
                }
                (None, None)
            }
            None => {
                let (e, offset) = self.envelope(&to, payload);
                (Some(e), offset)
            }
        };
        let deflated = self
            .compression
            .deflate(&reactors, &frame, envelope.as_deref());
        for r in reactors {
            if from_broker && self.reactors[r].tx.len() >= MAX_QUEUED_BATCHES {
                // The broker's reads never wait for a reactor: this one is that far
                // behind, so the message is dropped for it, and counted.
                self.stats.broker_dropped += 1;
                continue;
            }
            self.add_to_batch(
                r,
                link::Command::Push {
                    target: target.clone(),
                    frame: frame.clone(),
                    envelope: envelope.clone(),
                    offset,
                    deflated: deflated.clone(),
                },
            );
        }
        total
    }

    /// Sends a per-user command to every reactor holding the user's connections; the
    /// client's reply waits for all their acks.
    /// `client` is the client to answer and, in cluster mode, its held reply; `None`
    /// for a request from another node, which nobody here waits for.
    fn user_request(
        &mut self,
        client: Option<(usize, Option<u64>)>,
        user: &str,
        make: impl Fn(u64, Arc<str>) -> link::Command,
    ) {
        let reactors: Vec<usize> = self
            .users
            .get(user)
            .map(|c| c.reactors().collect())
            .unwrap_or_default();
        if reactors.is_empty() {
            // No ack would ever come to end the wait.
            if let Some((key, held)) = client {
                let c = &mut self.clients[key];
                match held {
                    Some(h) => {
                        c.resolve(h, 0, None);
                    }
                    None => resp::write_integer(c.out(), 0),
                }
            }
            return;
        }
        let name = self.users.key(user).unwrap_or_else(|| user.into());
        self.next_req += 1;
        let req = self.next_req;
        for &r in &reactors {
            self.add_to_batch(r, make(req, name.clone()));
        }
        let Some((key, held)) = client else {
            return;
        };
        let c = &mut self.clients[key];
        c.waiting = Some(req);
        self.pending.insert(
            req,
            PendingRequest {
                client: key,
                client_id: c.id,
                remaining: reactors.len(),
                affected: 0,
                held,
            },
        );
    }

    fn add_to_batch(&mut self, reactor: usize, cmd: link::Command) {
        if let Some(b) = self.batches.get_mut(reactor) {
            // The first push of a batch carries the push latency sample.
            if matches!(cmd, link::Command::Push { .. }) && !self.sampled[reactor] {
                self.sampled[reactor] = true;
                b.push(link::Command::Sample {
                    received: self.turn_started,
                });
            }
            b.push(cmd);
            self.batch_started.get_or_insert_with(Instant::now);
        }
    }

    /// Sends the turn's batches (unless --batch-delay holds them), then writes replies.
    fn end_turn(&mut self) {
        if let Some(t) = self.batch_started {
            if t.elapsed() < self.settings.batch_delay {
                // Replies wait with the pushes they acknowledge.
                return;
            }
            let mut unanswerable = Vec::new();
            for (r, batch) in self.batches.iter_mut().enumerate() {
                if batch.is_empty() {
                    continue;
                }
                let cmds = std::mem::take(batch);
                self.sampled[r] = false;
                let reqs: SmallVec<[u64; 4]> =
                    cmds.iter().filter_map(link::Command::request).collect();
                self.stats.batches += 1;
                if self.reactors[r].send(ReactorMsg::Batch(cmds)).is_ok() {
                    // No ack can be applied before this: acks are read on this thread.
                    if let Some(sent) = self.unacked.get_mut(r) {
                        sent.extend(reqs);
                    }
                } else {
                    // Only while shutting down: the reactor has exited. Requests
                    // waiting for its ack are answered for the reactors that can.
                    warn!("dispatcher: reactor {r} is gone");
                    unanswerable.extend(reqs);
                }
            }
            self.batch_started = None;
            for req in unanswerable {
                self.on_ack(req, 0);
            }
        }
        if self.handover.frozen() {
            // The export describes each client's unwritten output as it stands.
            return;
        }
        // Only clients with something to write or to finish; the buffer is reused.
        let mut keys = std::mem::take(&mut self.to_flush);
        keys.extend(
            self.clients
                .iter()
                .filter(|(k, c)| {
                    !c.output.is_empty()
                        || c.closing
                        || c.eof
                        || c.stalled_since.is_some()
                        || self.http.get(k).is_some_and(|h| !h.wire.is_empty())
                })
                .map(|(k, _)| k),
        );
        for &key in &keys {
            self.flush_client(key);
        }
        keys.clear();
        self.to_flush = keys;
    }

    fn flush_client(&mut self, key: usize) {
        if self.http.contains_key(&key) {
            return self.flush_http(key);
        }
        let Some(c) = self.clients.get_mut(key) else {
            return;
        };
        while !c.output.is_empty() && c.writable {
            match c.stream.write(&c.output) {
                Ok(0) => break,
                Ok(n) => {
                    c.output.drain(..n);
                    // Replies moved: restart the stall clock, but keep the mark that
                    // commands are paused, so they resume below once under the limit.
                    if c.stalled_since.is_some() {
                        c.stalled_since = Some(Instant::now());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    c.eof = true;
                    c.output.clear();
                }
            }
        }
        if c.output.capacity() > OUTPUT_SOFT_LIMIT && c.output.is_empty() {
            c.output = Vec::new();
        }
        let done = c.output.is_empty()
            && c.held_count() == 0
            && (c.closing || (c.eof && c.waiting.is_none()));
        if done {
            self.drop_client(key);
        } else if c.output.len() < OUTPUT_SOFT_LIMIT && c.stalled_since.is_some() {
            c.stalled_since = None;
            self.ready.push(key);
        }
    }

    fn drop_client(&mut self, key: usize) {
        self.http.remove(&key);
        if self.clients.contains(key) {
            let c = self.clients.remove(key);
            debug!("control: client {} disconnected", c.id);
        }
    }

    fn housekeeping(&mut self) {
        if std::mem::take(&mut self.accept_retry) {
            self.accept();
            self.accept_http();
        }
        self.http_housekeeping();
        self.expire_history();
        let stalled: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| {
                c.stalled_since
                    .is_some_and(|t| t.elapsed() >= OUTPUT_STALL_TIMEOUT)
            })
            .map(|(k, _)| k)
            .collect();
        for key in stalled {
            warn!("control: disconnecting a client that has not read its replies for {OUTPUT_STALL_TIMEOUT:?}");
            self.drop_client(key);
        }
    }
}

impl Dispatcher {
    /// Room memberships over all rooms.
    fn rooms_memberships(&self) -> u64 {
        self.rooms.sum_totals()
    }
}

/// Tests only (README, "Operating it"): with `WSPUSH_TEST_HOLD_START=PATH`, the
/// dispatcher makes its first turn only once PATH does not exist, so a test can see
/// `/readyz` say "starting" for as long as it needs, with no timing involved.
fn hold_start_for_tests(stop: &AtomicBool) {
    let Some(path) = std::env::var_os("WSPUSH_TEST_HOLD_START") else {
        return;
    };
    let path = std::path::Path::new(&path);
    while path.exists() && !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Encodes a push once: a text frame if the payload is UTF-8, else binary.
pub fn push_frame(payload: &[u8]) -> Arc<[u8]> {
    let opcode = if std::str::from_utf8(payload).is_ok() {
        OpCode::Text
    } else {
        OpCode::Binary
    };
    // One allocation of the exact size, straight into the shared buffer (the
    // iterator's exact length lets `Arc<[u8]>` allocate once, no intermediate Vec).
    let mut header = [0u8; 10];
    let n = encode_header(true, opcode, payload.len(), &mut header);
    header[..n].iter().chain(payload).copied().collect()
}

/// Compares secrets without an early exit that would leak the matching prefix length.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::{Gauges, ReactorStats};
    use crate::ws::frame::encode_frame;
    use crossbeam_channel::Sender;

    /// A dispatcher driven by hand, turn by turn, with fake reactors: the test holds
    /// each reactor's receiver (and reads it, or never does) and sends the reactors'
    /// events itself. One control client is connected.
    struct Rig {
        d: Dispatcher,
        events: Sender<Vec<Event>>,
        reactors: Vec<Receiver<ReactorMsg>>,
        /// Keep the fake reactors' wakers registered.
        _polls: Vec<Poll>,
        client: std::net::TcpStream,
        key: usize,
    }

    impl Rig {
        fn new(reactors: usize) -> Rig {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            let control = listener.local_addr().unwrap();
            let (mut handles, mut rxs, mut polls) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..reactors {
                let poll = Poll::new().unwrap();
                let waker = Arc::new(Waker::new(poll.registry(), Token(0)).unwrap());
                let (tx, rx) = crossbeam_channel::unbounded();
                handles.push(ReactorHandle {
                    tx,
                    waker,
                    stats: Arc::new(ReactorStats::default()),
                    gauges: Arc::new(Gauges::default()),
                });
                rxs.push(rx);
                polls.push(poll);
            }
            let (ev_tx, ev_rx) = crossbeam_channel::unbounded();
            let (poll, waker) = Dispatcher::poll_and_waker().unwrap();
            let (mut d, _handle) = Dispatcher::new(
                (listener, None),
                handles,
                ev_rx,
                (poll, waker),
                DispatchSettings {
                    max_message: 1 << 10,
                    password: None,
                    batch_delay: Duration::ZERO,
                    max_connections: 100,
                    listen: control,
                    control,
                    cluster: None,
                    node_id: "test".into(),
                    history: crate::history::Limits {
                        size: 0,
                        ttl: Duration::from_secs(300),
                        memory: 1 << 20,
                    },
                    max_recover: 300,
                    max_replay_bytes: 1 << 20,
                    http: None,
                    api_key: None,
                    max_http_connections: 16,
                    compression_min_size: None,
                },
                Census {
                    capacity: Arc::new(crate::link::capacity::Capacity::new(100, 100)),
                    liveness: Arc::new(crate::link::health::Liveness::new(reactors)),
                    peers: Arc::new(crate::link::peers::PeerTable::unlimited()),
                },
            )
            .unwrap();
            let client = std::net::TcpStream::connect(control).unwrap();
            client
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            // The connection may reach the backlog a moment after connect() returns.
            for _ in 0..500 {
                d.accept();
                if !d.clients.is_empty() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let key = d.clients.iter().next().map(|(k, _)| k).expect("accepted");
            Rig {
                d,
                events: ev_tx,
                reactors: rxs,
                _polls: polls,
                client,
                key,
            }
        }

        /// One turn's command part for the client: `input` is what it sent (put in
        /// its buffer directly, so nothing depends on when the socket delivers it).
        fn serve(&mut self, input: &[u8]) {
            self.d.clients[self.key].input.extend_from_slice(input);
            self.d.ready.push(self.key);
            self.d.serve_ready();
            self.d.end_turn();
        }

        /// A whole turn with no socket event: events, then replies.
        fn turn(&mut self) {
            self.d.apply_events();
            self.d.serve_ready();
            self.d.end_turn();
        }

        fn reply_line(&mut self) -> String {
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while !line.ends_with(b"\r\n") {
                match self.client.read(&mut b) {
                    Ok(1) => line.push(b[0]),
                    other => panic!("no reply (so far {line:?}): {other:?}"),
                }
            }
            String::from_utf8(line).unwrap()
        }

        fn waiting(&self) -> bool {
            self.d.clients[self.key].waiting.is_some()
        }

        /// The requests (JOIN/LEAVE/KICK ids) in what reactor `r` was sent so far.
        fn requests_sent_to(&self, r: usize) -> Vec<u64> {
            let mut reqs = Vec::new();
            while let Ok(ReactorMsg::Batch(cmds)) = self.reactors[r].try_recv() {
                reqs.extend(cmds.iter().filter_map(|c| match c {
                    link::Command::Join { req, .. }
                    | link::Command::Leave { req, .. }
                    | link::Command::Kick { req, .. } => Some(*req),
                    link::Command::Push { .. }
                    | link::Command::Position { .. }
                    | link::Command::Sample { .. } => None,
                }));
            }
            reqs
        }
    }

    /// The rig with an upgrade link of its own; returns the coordinator's side.
    fn with_upgrade_link(rig: &mut Rig) -> Sender<crate::link::handover::ToDispatcher> {
        let (requests, _) = crossbeam_channel::unbounded();
        let (to, inbox) = crossbeam_channel::unbounded();
        rig.d.set_upgrade(UpgradeLink {
            requests,
            inbox,
            available: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        });
        to
    }

    /// A process that took over in cluster mode and still warms up (holding its own
    /// broker messages) when an upgrade of its own fails (SIGUSR2 again at once):
    /// the failure's thaw must not end the warm-up and drop what it holds.
    #[test]
    fn a_failed_upgrade_during_the_warm_up_keeps_the_held_broker_messages() {
        let mut rig = Rig::new(1);
        let to = with_upgrade_link(&mut rig);
        rig.d.handover = handover::State::Warming {
            until: Instant::now() + Duration::from_secs(60),
            own: vec![(b"p:room:news".to_vec(), b"m".to_vec())],
            linked: None,
        };
        to.send(crate::link::handover::ToDispatcher::Thaw {
            error: "test".into(),
        })
        .unwrap();
        rig.d.handover_turn();
        assert!(
            matches!(&rig.d.handover, handover::State::Warming { own, .. } if own.len() == 1),
            "the warm-up ended"
        );
    }

    /// What the previous process forwards too late for the warm-up (it was served
    /// without it) must not end the freeze of an upgrade that started since.
    #[test]
    fn a_late_forward_does_not_thaw_a_freeze() {
        let mut rig = Rig::new(1);
        let to = with_upgrade_link(&mut rig);
        rig.d.handover = handover::State::Frozen {
            held: Vec::new(),
            forward: None,
        };
        to.send(crate::link::handover::ToDispatcher::Forwarded(Vec::new()))
            .unwrap();
        rig.d.handover_turn();
        assert!(rig.d.handover.frozen(), "the freeze ended");
    }

    /// Broker messages held during a hand-over are bounded in bytes, not only in
    /// number; beyond the bound they are dropped and counted.
    #[test]
    fn held_broker_messages_are_bounded_in_bytes() {
        let mut rig = Rig::new(1);
        rig.d.handover = handover::State::Frozen {
            held: Vec::new(),
            forward: None,
        };
        for _ in 0..20 {
            let r = rig
                .d
                .hold_broker_message(b"ch".to_vec(), vec![0u8; 100 << 10]);
            assert!(r.is_none(), "held or dropped, not routed");
        }
        let held = match &rig.d.handover {
            handover::State::Frozen { held, .. } => held.len(),
            _ => panic!("still frozen"),
        };
        assert_eq!(held, 10, "1 MiB (the test bound) of 100 KiB messages");
        assert_eq!(rig.d.stats.broker_dropped, 10);
    }

    fn user_conn(reactor: usize, user: &str) -> Event {
        Event::Conn {
            reactor,
            user: Some(user.into()),
            delta: 1,
        }
    }

    /// The broker's read loop never waits for a reactor: a message from another node
    /// for a reactor whose queue is full is dropped for that reactor and counted, the
    /// others get it; a local command in the same spot is not dropped (control input
    /// pauses instead).
    #[test]
    fn a_message_from_the_broker_skips_a_reactor_that_is_behind_and_counts_it() {
        let mut rig = Rig::new(2);
        rig.events
            .send(vec![
                Event::Room {
                    reactor: 0,
                    room: "news".into(),
                    delta: 1,
                },
                Event::Room {
                    reactor: 1,
                    room: "news".into(),
                    delta: 1,
                },
            ])
            .unwrap();
        rig.d.apply_events();
        for _ in 0..MAX_QUEUED_BATCHES {
            rig.d.reactors[0]
                .tx
                .send(ReactorMsg::Batch(Vec::new()))
                .unwrap();
        }
        assert_eq!(rig.d.push(Recipients::Room("news"), b"x", true), 2);
        assert!(
            rig.d.batches[0].is_empty(),
            "nothing queued for the full reactor"
        );
        let pushes = |b: &Vec<link::Command>| {
            b.iter()
                .filter(|c| matches!(c, link::Command::Push { .. }))
                .count()
        };
        assert_eq!(pushes(&rig.d.batches[1]), 1);
        assert_eq!(rig.d.stats.broker_dropped, 1);
        rig.d.push(Recipients::Room("news"), b"y", false);
        assert_eq!(
            pushes(&rig.d.batches[0]),
            1,
            "a local push is never dropped"
        );
        assert_eq!(rig.d.stats.broker_dropped, 1);
        assert!(info::render(&rig.d, Some("cluster")).contains("cluster_enabled:0"));
    }

    /// No wspush.v1 connection anywhere: pushes carry no envelope (no JSON encoded,
    /// no second frame); once one opened, they do.
    /// No connection with permessage-deflate anywhere: nothing is compressed.
    #[test]
    fn pushes_are_compressed_only_while_a_deflate_connection_exists() {
        let mut rig = Rig::new(1);
        rig.d.compression = compression::Compression::new(1, Some(16));
        rig.events
            .send(vec![Event::Room {
                reactor: 0,
                room: "news".into(),
                delta: 1,
            }])
            .unwrap();
        rig.d.apply_events();
        let payload = br#"{"key":"value"}"#.repeat(10);
        let deflated_of = |rig: &mut Rig, delta: Option<i32>| {
            if let Some(delta) = delta {
                let ev = Event::Deflate {
                    reactor: 0,
                    v1: false,
                    delta,
                };
                rig.events.send(vec![ev]).unwrap();
                rig.d.apply_events();
            }
            assert_eq!(rig.d.push(Recipients::Room("news"), &payload, false), 1);
            rig.d.end_turn();
            match rig.reactors[0].try_recv() {
                Ok(ReactorMsg::Batch(cmds)) => match &cmds[..] {
                    [link::Command::Sample { .. }, link::Command::Push { deflated, .. }] => {
                        deflated.frame.is_some()
                    }
                    other => panic!("{other:?}"),
                },
                other => panic!("{other:?}"),
            }
        };
        assert!(
            !deflated_of(&mut rig, None),
            "no connection with the extension"
        );
        assert!(deflated_of(&mut rig, Some(1)), "one opened");
        assert!(!deflated_of(&mut rig, Some(-1)), "it closed");
    }

    #[test]
    fn envelopes_are_made_only_while_a_v1_connection_exists() {
        let mut rig = Rig::new(1);
        rig.events
            .send(vec![Event::Room {
                reactor: 0,
                room: "news".into(),
                delta: 1,
            }])
            .unwrap();
        rig.d.apply_events();
        let envelope_of = |rig: &mut Rig| {
            rig.d.end_turn();
            match rig.reactors[0].try_recv() {
                Ok(ReactorMsg::Batch(cmds)) => match &cmds[..] {
                    [link::Command::Sample { .. }, link::Command::Push { envelope, .. }] => {
                        envelope.is_some()
                    }
                    other => panic!("{other:?}"),
                },
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(rig.d.push(Recipients::Room("news"), b"x", false), 1);
        assert!(!envelope_of(&mut rig), "raw clients only");
        rig.events
            .send(vec![Event::V1 {
                reactor: 0,
                delta: 1,
            }])
            .unwrap();
        rig.d.apply_events();
        rig.d.push(Recipients::Room("news"), b"y", false);
        assert!(envelope_of(&mut rig), "a v1 connection is open");
    }

    /// Push latency is sampled once per batch: however many pushes a turn sends a
    /// reactor, its batch carries one `Sample`, ahead of the first push.
    #[test]
    fn a_batch_carries_one_latency_sample_ahead_of_its_first_push() {
        let mut rig = Rig::new(1);
        rig.events
            .send(vec![Event::Room {
                reactor: 0,
                room: "news".into(),
                delta: 1,
            }])
            .unwrap();
        rig.d.apply_events();
        for _ in 0..2 {
            rig.serve(b"PUBLISH news a\r\nPUBLISH news b\r\nPUBLISH news c\r\n");
            match rig.reactors[0].try_recv() {
                Ok(ReactorMsg::Batch(cmds)) => {
                    assert!(matches!(cmds[0], link::Command::Sample { .. }));
                    assert_eq!(cmds.len(), 4, "one sample, three pushes");
                    assert!(cmds[1..]
                        .iter()
                        .all(|c| matches!(c, link::Command::Push { .. })));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_membership_reported_after_the_turn_began_counts_for_the_next_command() {
        let mut rig = Rig::new(1);
        rig.d.apply_events();
        // The reactor registers the member, reports it, and writes the 101; the
        // client's PUBLISH arrives while the dispatcher is still in the same turn.
        rig.events
            .send(vec![
                user_conn(0, "u1"),
                Event::Room {
                    reactor: 0,
                    room: "news".into(),
                    delta: 1,
                },
            ])
            .unwrap();
        rig.serve(b"PUBLISH news hello\r\n");
        assert_eq!(rig.reply_line(), ":1\r\n");
        match rig.reactors[0].try_recv() {
            Ok(ReactorMsg::Batch(cmds)) => assert!(
                matches!(&cmds[..], [link::Command::Sample { .. }, link::Command::Push { target: Target::Room(r), .. }] if &**r == "news")
            ),
            other => panic!("the push was not sent to the reactor: {other:?}"),
        }
    }

    #[test]
    fn a_request_sent_after_a_reactors_last_drain_is_answered_when_it_exits() {
        let mut rig = Rig::new(1);
        rig.events.send(vec![user_conn(0, "u1")]).unwrap();
        rig.turn();
        // Sent, but the reactor never reads its channel again.
        rig.serve(b"JOIN u1 news\r\n");
        assert!(rig.waiting());
        rig.events.send(vec![Event::Exited { reactor: 0 }]).unwrap();
        rig.turn();
        assert_eq!(rig.reply_line(), ":0\r\n");
        assert!(!rig.waiting());
        // The client is served again.
        rig.serve(b"PING\r\n");
        assert_eq!(rig.reply_line(), "+PONG\r\n");
    }

    #[test]
    fn an_exited_reactor_answers_zero_and_the_others_their_count() {
        let mut rig = Rig::new(2);
        rig.events
            .send(vec![user_conn(0, "u1"), user_conn(1, "u1")])
            .unwrap();
        rig.turn();
        // Reactor 0 acks the first KICK; the second is sent after its last drain.
        rig.serve(b"KICK u1\r\n");
        let first = rig.requests_sent_to(0);
        assert_eq!(first, rig.requests_sent_to(1));
        rig.events
            .send(vec![
                Event::Ack {
                    reactor: 0,
                    req: first[0],
                    affected: 1,
                },
                Event::Ack {
                    reactor: 1,
                    req: first[0],
                    affected: 1,
                },
            ])
            .unwrap();
        rig.turn();
        assert_eq!(rig.reply_line(), ":2\r\n");
        rig.serve(b"KICK u1\r\n");
        let second = rig.requests_sent_to(1);
        rig.events
            .send(vec![Event::Ack {
                reactor: 1,
                req: second[0],
                affected: 1,
            }])
            .unwrap();
        rig.turn();
        assert!(rig.waiting());
        rig.events.send(vec![Event::Exited { reactor: 0 }]).unwrap();
        rig.turn();
        assert_eq!(rig.reply_line(), ":1\r\n");
        // A request sent once the reactor's channel is gone is answered at once.
        rig.reactors[0] = crossbeam_channel::never();
        rig.serve(b"KICK u1\r\n");
        let third = rig.requests_sent_to(1);
        rig.events
            .send(vec![Event::Ack {
                reactor: 1,
                req: third[0],
                affected: 1,
            }])
            .unwrap();
        rig.turn();
        assert_eq!(rig.reply_line(), ":1\r\n");
    }

    #[test]
    fn push_frame_is_a_text_frame_for_utf8_and_binary_otherwise() {
        for len in [0usize, 5, 125, 126, 65_535, 65_536] {
            let text = vec![b'a'; len];
            assert_eq!(&*push_frame(&text), &encode_frame(OpCode::Text, &text)[..]);
        }
        let bin = [0xff, 0x00, 0xfe];
        assert_eq!(&*push_frame(&bin), &encode_frame(OpCode::Binary, &bin)[..]);
    }

    #[test]
    fn secrets_compare_equal_only_when_identical() {
        assert!(constant_time_eq(b"hunter2", b"hunter2"));
        assert!(!constant_time_eq(b"hunter2", b"hunter3"));
        assert!(!constant_time_eq(b"hunter2", b"hunter"));
    }
}
