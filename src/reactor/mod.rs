//! Reactor threads: each owns a `mio::Poll`, a listening socket, a slab of
//! connections, its room and user tables, and a coarse timer scan.
//!
//! A reactor does all I/O for its connections — accept, HTTP upgrade, frame parsing,
//! writes — and never blocks or takes a lock. One loop turn: poll; handle socket
//! events (reads produce replies into the outbox); drain the dispatcher's channel
//! (pushes go into the outbox, a frame shared by index); run the timer scan when due;
//! then, before sleeping, tell the dispatcher what changed and write every dirty
//! connection with one `writev` (Redis's `beforeSleep`).

pub mod client_msg;
pub mod conn;
pub mod groups;
pub mod listener;
pub mod outbox;
pub mod stats;

use std::io::{self, Read};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::config::SlowPolicy;
use crate::dispatch::event::Event;
use crate::ws::close::CloseCode;
use crate::ws::frame::{decode_client_header, encode_close, encode_frame, OpCode};
use crate::ws::handshake::{
    health_response, parse_request, upgrade_response, HandshakeConfig, HandshakeError, Request,
};
use crate::ws::mask::apply_mask;
use client_msg::ClientRequest;
use conn::{flag, Conn, Input, Phase};
use groups::{Groups, Membership};
use outbox::{Chunk, Outbox};
use stats::{failure_index, Gauges, LocalStats, ReactorStats, HANDSHAKE_TIMEOUT};

/// Who a push is for.
#[derive(Debug, Clone)]
pub enum Target {
    All,
    Room(Arc<str>),
    User(Arc<str>),
}

/// Work the dispatcher sends to a reactor, applied in order.
#[derive(Debug, Clone)]
pub enum Command {
    /// Deliver `frame` (a complete WebSocket frame) to the target's connections here.
    Push { target: Target, frame: Arc<[u8]> },
    /// Put every connection of `user` into `room`; answer `Event::Ack { req }`.
    Join {
        req: u64,
        user: Arc<str>,
        room: Arc<str>,
    },
    /// Take every connection of `user` out of `room`; answer `Event::Ack { req }`.
    Leave {
        req: u64,
        user: Arc<str>,
        room: Arc<str>,
    },
    /// Close every connection of `user` with `frame` (a Close frame); answer with an Ack.
    Kick {
        req: u64,
        user: Arc<str>,
        frame: Arc<[u8]>,
    },
}

/// A message on a reactor's channel.
#[derive(Debug)]
pub enum ReactorMsg {
    /// Commands gathered by the dispatcher in one of its turns.
    Batch(Vec<Command>),
    /// Stop accepting, close every connection with 1001, exit after the grace period.
    Shutdown,
}

/// Settings every reactor reads; fixed at start-up.
#[derive(Debug, Clone)]
pub struct Settings {
    pub handshake: HandshakeConfig,
    pub max_message: usize,
    pub max_pending: usize,
    pub slow_policy: SlowPolicy,
    pub echo: bool,
    pub max_rooms: usize,
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    /// Zero: never ping.
    pub ping_interval: Duration,
    /// Zero: never close idle connections.
    pub idle_timeout: Duration,
    pub shutdown_grace: Duration,
}

/// State shared by all reactors.
pub struct Shared {
    pub settings: Settings,
    /// Sockets held by all reactors, for --max-connections.
    pub sockets: AtomicUsize,
}

/// How the dispatcher reaches a reactor, and what it reads of it.
#[derive(Clone)]
pub struct ReactorHandle {
    pub tx: Sender<ReactorMsg>,
    pub waker: Arc<Waker>,
    pub stats: Arc<ReactorStats>,
    pub gauges: Arc<Gauges>,
}

impl ReactorHandle {
    /// Sends a message and wakes the reactor. Gives the message back if the reactor
    /// has exited.
    pub fn send(&self, msg: ReactorMsg) -> Result<(), ReactorMsg> {
        self.tx.send(msg).map_err(|e| e.into_inner())?;
        // A failed wake-up (the eventfd is full) still leaves a wake-up pending.
        let _ = self.waker.wake();
        Ok(())
    }
}

/// How a reactor reaches the dispatcher.
#[derive(Clone)]
pub struct DispatcherLink {
    pub tx: Sender<Vec<Event>>,
    pub waker: Arc<Waker>,
}

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX);
/// The reactor clock ticks in 10 ms units (a u32 wraps after 497 days; only
/// differences are used).
const TICK: Duration = Duration::from_millis(10);
/// Per-reactor read buffer: every connection reads into it.
const SCRATCH: usize = 64 * 1024;
/// Reads from one socket per event before giving others a turn.
const READS_PER_EVENT: usize = 16;
/// While writing, look for newly arrived pushes after this many connections.
const DRAIN_EVERY: usize = 32;
/// Rounds of writing that may take in newly arrived pushes before the reactor sleeps.
const MAX_DRAIN_ROUNDS: usize = 3;
/// Time allowed to a closing connection to finish the close handshake.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Back-off when accept fails for lack of descriptors or memory.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Minimum interval between two "out of descriptors" log lines.
const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(10);

static PING_FRAME: [u8; 2] = [0x89, 0x00];

fn ticks(d: Duration) -> u32 {
    (d.as_millis() / TICK.as_millis()).min(u32::MAX as u128 / 2) as u32
}

/// Timeouts in reactor ticks.
struct Timeouts {
    handshake: u32,
    ping: u32,
    idle: u32,
    close: u32,
    /// How often the timer scan runs.
    scan: u32,
}

impl Timeouts {
    fn new(s: &Settings) -> Timeouts {
        let mut scan = Duration::from_secs(1).min(s.handshake_timeout / 4);
        for d in [s.ping_interval, s.idle_timeout, s.shutdown_grace] {
            if !d.is_zero() {
                scan = scan.min(d / 4);
            }
        }
        Timeouts {
            handshake: ticks(s.handshake_timeout).max(1),
            ping: ticks(s.ping_interval),
            idle: ticks(s.idle_timeout),
            close: ticks(CLOSE_TIMEOUT),
            scan: ticks(scan).max(1),
        }
    }
}

/// One reactor thread's state.
pub struct Reactor {
    /// Index of this reactor (in events and INFO).
    id: usize,
    poll: Poll,
    /// The listening socket; None once shutting down.
    listener: Option<TcpListener>,
    conns: Slab<Conn>,
    rooms: Groups,
    users: Groups,
    outbox: Outbox,
    /// Shared read buffer.
    scratch: Box<[u8]>,
    rx: Receiver<ReactorMsg>,
    dispatcher: DispatcherLink,
    /// Events for the dispatcher, sent once per turn.
    events: Vec<Event>,
    shared: Arc<Shared>,
    stats: Arc<ReactorStats>,
    gauges: Arc<Gauges>,
    local: LocalStats,
    timeouts: Timeouts,
    started: Instant,
    /// Current tick.
    now: u32,
    /// Tick of the next timer scan.
    next_scan: u32,
    /// Accepting is paused (out of descriptors) until this tick.
    accept_paused_until: Option<u32>,
    last_accept_log: Option<Instant>,
    /// Connections with input left unread (read budget spent, or reading resumed).
    read_again: Vec<u32>,
    /// Shutdown deadline tick, once shutting down.
    shutdown_at: Option<u32>,
    /// Reused buffer for keys the timer scan acts on.
    expired: Vec<(u32, Expiry)>,
}

#[derive(Clone, Copy)]
enum Expiry {
    Handshake,
    Idle,
    Closing,
}

impl Reactor {
    /// Creates reactor `id` around an already bound listening socket.
    pub fn new(
        id: usize,
        listener: std::net::TcpListener,
        shared: Arc<Shared>,
        dispatcher: DispatcherLink,
    ) -> io::Result<(Reactor, ReactorHandle)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut listener = TcpListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let stats = Arc::new(ReactorStats::default());
        let gauges = Arc::new(Gauges::default());
        let timeouts = Timeouts::new(&shared.settings);
        let handle = ReactorHandle {
            tx,
            waker,
            stats: stats.clone(),
            gauges: gauges.clone(),
        };
        let reactor = Reactor {
            id,
            poll,
            listener: Some(listener),
            conns: Slab::new(),
            rooms: Groups::default(),
            users: Groups::default(),
            outbox: Outbox::default(),
            scratch: vec![0; SCRATCH].into_boxed_slice(),
            rx,
            dispatcher,
            events: Vec::new(),
            shared,
            stats,
            gauges,
            local: LocalStats::default(),
            next_scan: timeouts.scan,
            timeouts,
            started: Instant::now(),
            now: 0,
            accept_paused_until: None,
            last_accept_log: None,
            read_again: Vec::new(),
            shutdown_at: None,
            expired: Vec::new(),
        };
        Ok((reactor, handle))
    }

    fn clock(&self) -> u32 {
        (self.started.elapsed().as_millis() / TICK.as_millis()) as u32
    }

    /// Runs the event loop until shutdown completes (or the channel is gone).
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("reactor {}: poll failed: {e}", self.id);
                    break;
                }
            }
            self.now = self.clock();
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    Token(key) => {
                        let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
                        let closed = ev.is_read_closed() || ev.is_error();
                        self.on_socket_event(key, readable, closed, ev.is_writable());
                    }
                }
            }
            if !self.drain_channel() {
                break;
            }
            self.read_pending();
            if self.accept_paused_until.is_some_and(|t| self.now >= t) {
                self.accept_paused_until = None;
                self.accept();
            }
            if self.now >= self.next_scan {
                self.scan();
                self.next_scan = self.now + self.timeouts.scan;
            }
            self.before_sleep();
            if let Some(deadline) = self.shutdown_at {
                if self.conns.is_empty() || self.now >= deadline {
                    break;
                }
            }
        }
        let left = self.conns.len();
        for key in self.conns.iter().map(|(k, _)| k as u32).collect::<Vec<_>>() {
            self.close_now(key);
        }
        self.before_sleep();
        info!(
            "reactor {} stopped ({left} connections were still open)",
            self.id
        );
        // Batches sent after the final drain would vanish with the receiver and their
        // control clients wait forever: drop it now, so that later sends fail (and are
        // answered at once), then tell the dispatcher to answer those in between.
        self.rx = crossbeam_channel::never();
        if self
            .dispatcher
            .tx
            .send(vec![Event::Exited { reactor: self.id }])
            .is_ok()
        {
            let _ = self.dispatcher.waker.wake();
        }
    }

    fn poll_timeout(&self) -> Duration {
        if !self.read_again.is_empty() {
            return Duration::ZERO;
        }
        let now = self.clock();
        let mut until = self.next_scan;
        if let Some(t) = self.accept_paused_until {
            until = until.min(t);
        }
        if let Some(t) = self.shutdown_at {
            until = until.min(t);
        }
        TICK * until.saturating_sub(now).max(1)
    }

    // ---- accept -------------------------------------------------------------

    fn accept(&mut self) {
        if self.accept_paused_until.is_some() {
            return;
        }
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((stream, _addr)) => self.add_conn(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_resource_exhausted(&e) => {
                    self.local.accept_pauses += 1;
                    self.accept_paused_until = Some(self.now + ticks(ACCEPT_BACKOFF).max(1));
                    let quiet = self
                        .last_accept_log
                        .is_some_and(|t| t.elapsed() < ACCEPT_LOG_INTERVAL);
                    if !quiet {
                        warn!(
                            "reactor {}: accept failed ({e}); holding {} sockets; pausing accepts for {:?} at a time (logged at most every {:?})",
                            self.id,
                            self.conns.len(),
                            ACCEPT_BACKOFF,
                            ACCEPT_LOG_INTERVAL
                        );
                        self.last_accept_log = Some(Instant::now());
                    }
                    return;
                }
                // A connection reset before we accepted it, and the like.
                Err(e) => debug!("reactor {}: accept: {e}", self.id),
            }
        }
    }

    fn add_conn(&mut self, mut stream: TcpStream) {
        let held = self.shared.sockets.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if key >= outbox::NIL as usize - 1 {
            self.shared.sockets.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        // Pushes are already batched per writev; Nagle would only add latency.
        let _ = stream.set_nodelay(true);
        // Registered once for both directions: with edge-triggered epoll a writable
        // event comes only when a full send buffer drains, so a connection is never
        // re-registered (no epoll_ctl per write or per blocked socket).
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("reactor {}: register: {e}", self.id);
            self.shared.sockets.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let mut conn = Conn::new(stream, self.now);
        if held > self.shared.settings.max_connections {
            conn.set(flag::OVER_CAPACITY);
        }
        entry.insert(conn);
        self.local.accepted += 1;
    }

    // ---- socket events -----------------------------------------------------

    fn on_socket_event(&mut self, key: usize, readable: bool, read_closed: bool, writable: bool) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if writable {
            conn.set(flag::WRITABLE);
            if conn.output.is_some() && !conn.has(flag::DIRTY) {
                conn.set(flag::DIRTY);
                self.outbox.dirty.push(key as u32);
            }
        }
        if readable {
            if conn.has(flag::READ_PAUSED) {
                conn.set(flag::READ_PENDING);
            } else {
                self.read(key as u32, read_closed);
            }
        }
    }

    fn read_pending(&mut self) {
        if self.read_again.is_empty() {
            return;
        }
        let keys = std::mem::take(&mut self.read_again);
        for &key in &keys {
            // `read` remembers a paused connection's unread input (READ_PENDING), so
            // reading resumes when its replies drain; no event will come for it.
            self.read(key, true);
        }
    }

    /// Reads until the socket is drained, the read budget is spent, or the connection
    /// stops wanting input. A short read normally means drained; with `to_end` (the
    /// peer's FIN or an error was reported, or nothing says what is left) reading goes
    /// on until `WouldBlock` or EOF, since an EOF that came with the last bytes raises
    /// no further edge.
    fn read(&mut self, key: u32, to_end: bool) {
        for _ in 0..READS_PER_EVENT {
            let Some(conn) = self.conns.get_mut(key as usize) else {
                return;
            };
            if conn.has(flag::READ_PAUSED) {
                conn.set(flag::READ_PENDING);
                return;
            }
            let n = match conn.stream.read(&mut self.scratch) {
                Ok(0) => {
                    self.close_now(key);
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.close_now(key);
                    return;
                }
            };
            // Only an open connection's input proves it alive. The handshake and
            // close timeouts run from accept and from entering Closing: a peer that
            // trickles bytes must not extend them.
            if conn.phase == Phase::Open {
                conn.last_seen = self.now;
                conn.clear(flag::PINGED);
            }
            self.local.bytes_received += n as u64;
            match conn.phase {
                Phase::Closing => {}
                Phase::Handshake => self.on_handshake_bytes(key, n),
                Phase::Open => self.on_frame_bytes(key, n),
            }
            // A short read drained the socket: with edge-triggered polling, bytes that
            // arrive later raise a new event.
            if n < self.scratch.len() && !to_end {
                return;
            }
        }
        self.read_again.push(key);
    }

    // ---- handshake ---------------------------------------------------------

    fn on_handshake_bytes(&mut self, key: u32, n: usize) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        let mut input = conn.input.take();
        let mut from_input = false;
        let mut buf = match input.as_deref_mut() {
            Some(inp) if !inp.buf.is_empty() => {
                inp.buf.extend_from_slice(&self.scratch[..n]);
                from_input = true;
                std::mem::take(&mut inp.buf)
            }
            _ => Vec::new(),
        };
        let mut scratch = std::mem::take(&mut self.scratch);
        let data: &mut [u8] = if from_input {
            &mut buf[..]
        } else {
            &mut scratch[..n]
        };
        let leftover = match parse_request(data, &self.shared.settings.handshake) {
            Ok(None) => Some(data.len()),
            Err(e) => {
                self.reject(key, e);
                None
            }
            Ok(Some((Request::Health, _))) => {
                self.queue(key, Chunk::Static(health_response()));
                self.begin_closing(key);
                None
            }
            Ok(Some((Request::Upgrade(up), head_len))) => {
                if self
                    .conns
                    .get(key as usize)
                    .is_none_or(|c| c.has(flag::OVER_CAPACITY))
                {
                    self.reject(key, HandshakeError::AtCapacity);
                    None
                } else {
                    self.open(key, up);
                    let rest = &mut data[head_len..];
                    let used = self.process_frames(key, rest, &mut input);
                    Some(rest.len() - used)
                }
            }
        };
        // Keep whatever is unconsumed (an incomplete head, or frame bytes).
        if let Some(left) = leftover.filter(|&l| l > 0) {
            if from_input {
                let len = buf.len();
                buf.drain(..len - left);
                input.get_or_insert_with(Default::default).buf = buf;
            } else {
                input
                    .get_or_insert_with(Default::default)
                    .buf
                    .extend_from_slice(&scratch[n - left..n]);
            }
        }
        self.scratch = scratch;
        self.restore_input(key, input);
    }

    fn reject(&mut self, key: u32, e: HandshakeError) {
        self.local.handshake_failures[failure_index(e)] += 1;
        debug!("reactor {}: handshake rejected: {}", self.id, e.reason());
        self.queue(key, Chunk::Owned(e.response().into_boxed_slice()));
        self.begin_closing(key);
    }

    /// Completes the upgrade: memberships first (events reach the dispatcher before
    /// the 101 is written), then the 101.
    fn open(&mut self, key: u32, up: crate::ws::handshake::Upgrade) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        self.local.handshakes += 1;
        conn.phase = Phase::Open;
        // The ping and idle timers start when the connection opens.
        conn.last_seen = self.now;
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
    }

    // ---- frames ------------------------------------------------------------

    fn on_frame_bytes(&mut self, key: u32, n: usize) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        let mut input = conn.input.take();
        match input.as_deref_mut() {
            Some(inp) if !inp.buf.is_empty() => {
                inp.buf.extend_from_slice(&self.scratch[..n]);
                let mut buf = std::mem::take(&mut inp.buf);
                let used = self.process_frames(key, &mut buf, &mut input);
                if used < buf.len() {
                    buf.drain(..used);
                    input.get_or_insert_with(Default::default).buf = buf;
                }
            }
            _ => {
                let mut scratch = std::mem::take(&mut self.scratch);
                let used = self.process_frames(key, &mut scratch[..n], &mut input);
                if used < n {
                    input
                        .get_or_insert_with(Default::default)
                        .buf
                        .extend_from_slice(&scratch[used..n]);
                }
                self.scratch = scratch;
            }
        }
        self.restore_input(key, input);
    }

    /// Puts a connection's input state back, or frees it when nothing is in progress.
    fn restore_input(&mut self, key: u32, input: Option<Box<Input>>) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        if conn.phase == Phase::Closing {
            conn.input = None;
            return;
        }
        conn.input = input.filter(|i| !i.is_idle());
    }

    /// Handles every complete frame at the start of `buf`; returns the bytes used.
    /// Bytes of an incomplete frame stay (partly unmasked; `scanned` says how far).
    fn process_frames(
        &mut self,
        key: u32,
        buf: &mut [u8],
        input: &mut Option<Box<Input>>,
    ) -> usize {
        let max_message = self.shared.settings.max_message;
        let mut pos = 0;
        loop {
            if self.conns.get(key as usize).map(|c| c.phase) != Some(Phase::Open) {
                return buf.len();
            }
            let (h, hlen) = match decode_client_header(&buf[pos..]) {
                Ok(Some(x)) => x,
                Ok(None) => return pos,
                Err(e) => {
                    self.fail(key, e.close_code(), "protocol error");
                    return buf.len();
                }
            };
            let message = input.as_deref().and_then(|i| i.message);
            if !h.opcode.is_control() {
                match (h.opcode, message) {
                    (OpCode::Continuation, None) => {
                        self.fail(
                            key,
                            CloseCode::PROTOCOL_ERROR,
                            "continuation without a message",
                        );
                        return buf.len();
                    }
                    (OpCode::Text | OpCode::Binary, Some(_)) => {
                        self.fail(
                            key,
                            CloseCode::PROTOCOL_ERROR,
                            "new message before the last one ended",
                        );
                        return buf.len();
                    }
                    _ => {}
                }
                let so_far = input.as_deref().map_or(0, |i| i.data.len());
                if h.payload_len > (max_message - so_far.min(max_message)) as u64 {
                    self.fail(key, CloseCode::MESSAGE_TOO_BIG, "message too big");
                    return buf.len();
                }
            }
            let len = h.payload_len as usize;
            let start = pos + hlen;
            let avail = buf.len() - start;
            let is_text = h.opcode == OpCode::Text
                || (h.opcode == OpCode::Continuation && message == Some(OpCode::Text));
            let scanned = input.as_deref().map_or(0, |i| i.scanned);
            if avail < len {
                // Incomplete: unmask and check what is here, so invalid UTF-8 fails
                // at its first byte rather than when the frame ends.
                if is_text && avail > scanned {
                    let piece = &mut buf[start + scanned..start + avail];
                    apply_mask(piece, h.mask, scanned);
                    let inp = input.get_or_insert_with(Default::default);
                    inp.scanned = avail;
                    if inp.utf8.feed(piece).is_err() {
                        self.fail(key, CloseCode::INVALID_PAYLOAD, "invalid UTF-8");
                        return buf.len();
                    }
                }
                return pos;
            }
            pos = start + len;
            let payload = &mut buf[start..pos];
            apply_mask(&mut payload[scanned..], h.mask, scanned);
            if let Some(inp) = input.as_deref_mut() {
                inp.scanned = 0;
            }
            match h.opcode {
                OpCode::Ping => self.queue(
                    key,
                    Chunk::Owned(encode_frame(OpCode::Pong, payload).into_boxed_slice()),
                ),
                OpCode::Pong => {}
                OpCode::Close => {
                    self.on_close_frame(key, payload);
                    return buf.len();
                }
                OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                    if h.fin && message.is_none() {
                        if is_text {
                            let ok = if scanned == 0 {
                                std::str::from_utf8(payload).is_ok()
                            } else {
                                let inp = input.get_or_insert_with(Default::default);
                                let ok = inp.utf8.feed(&payload[scanned..]).is_ok()
                                    && inp.utf8.finish().is_ok();
                                inp.utf8.reset();
                                ok
                            };
                            if !ok {
                                self.fail(key, CloseCode::INVALID_PAYLOAD, "invalid UTF-8");
                                return buf.len();
                            }
                        }
                        self.on_message(key, h.opcode, payload);
                    } else {
                        let inp = input.get_or_insert_with(Default::default);
                        if is_text && inp.utf8.feed(&payload[scanned..]).is_err() {
                            self.fail(key, CloseCode::INVALID_PAYLOAD, "invalid UTF-8");
                            return buf.len();
                        }
                        if h.opcode != OpCode::Continuation {
                            inp.message = Some(h.opcode);
                        }
                        inp.data.extend_from_slice(payload);
                        if h.fin {
                            if is_text && inp.utf8.finish().is_err() {
                                self.fail(key, CloseCode::INVALID_PAYLOAD, "invalid UTF-8");
                                return buf.len();
                            }
                            inp.utf8.reset();
                            let data = std::mem::take(&mut inp.data);
                            let op = inp.message.take().unwrap_or(OpCode::Binary);
                            self.on_message(key, op, &data);
                        }
                    }
                }
            }
        }
    }

    fn on_close_frame(&mut self, key: u32, payload: &[u8]) {
        match crate::ws::close::parse_close_payload(payload) {
            Ok(Some((code, _reason))) => {
                self.queue(key, Chunk::Owned(encode_close(code, "").into_boxed_slice()));
            }
            Ok(None) => self.queue(
                key,
                Chunk::Owned(encode_frame(OpCode::Close, &[]).into_boxed_slice()),
            ),
            Err(code) => {
                self.local.protocol_closes += 1;
                self.queue(
                    key,
                    Chunk::Owned(encode_close(code, "invalid close frame").into_boxed_slice()),
                );
            }
        }
        self.begin_closing(key);
    }

    /// Fails the connection (RFC 6455 §7.1.7): a Close frame with `code`, then close.
    fn fail(&mut self, key: u32, code: CloseCode, reason: &str) {
        self.local.protocol_closes += 1;
        self.close_with(key, code, reason);
    }

    /// Queues a Close frame and starts closing.
    fn close_with(&mut self, key: u32, code: CloseCode, reason: &str) {
        self.queue(
            key,
            Chunk::Owned(encode_close(code, reason).into_boxed_slice()),
        );
        self.begin_closing(key);
    }

    fn on_message(&mut self, key: u32, opcode: OpCode, payload: &[u8]) {
        self.local.messages_received += 1;
        if self.shared.settings.echo {
            self.queue(
                key,
                Chunk::Owned(encode_frame(opcode, payload).into_boxed_slice()),
            );
            return;
        }
        if opcode != OpCode::Text {
            self.reply_text(
                key,
                &client_msg::error_reply(client_msg::ClientError::Binary),
            );
            return;
        }
        let reply = match client_msg::parse(payload) {
            Ok(ClientRequest::Ping) => client_msg::PONG_REPLY.to_string(),
            Ok(ClientRequest::Join(room)) => {
                let Some(conn) = self.conns.get(key as usize) else {
                    return;
                };
                let member = self
                    .rooms
                    .id(&room)
                    .is_some_and(|id| conn.room_index(id).is_some());
                if member || conn.rooms.len() < self.shared.settings.max_rooms {
                    if !member {
                        self.join_room(key, &room);
                    }
                    client_msg::room_reply("joined", &room)
                } else {
                    client_msg::error_reply(client_msg::ClientError::TooManyRooms)
                }
            }
            Ok(ClientRequest::Leave(room)) => {
                self.leave_room(key, &room);
                client_msg::room_reply("left", &room)
            }
            Err(e) => client_msg::error_reply(e),
        };
        self.reply_text(key, &reply);
    }

    fn reply_text(&mut self, key: u32, text: &str) {
        self.queue(
            key,
            Chunk::Owned(encode_frame(OpCode::Text, text.as_bytes()).into_boxed_slice()),
        );
    }

    // ---- membership --------------------------------------------------------

    /// Adds a connection to a room (the caller checked it is not a member).
    fn join_room(&mut self, key: u32, room: &str) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        let (m, name) = self.rooms.add(room, key);
        conn.rooms.push(m);
        self.events.push(Event::Room {
            reactor: self.id,
            room: name,
            delta: 1,
        });
    }

    /// Takes a connection out of a room; false if it was not in it.
    fn leave_room(&mut self, key: u32, room: &str) -> bool {
        let Some(id) = self.rooms.id(room) else {
            return false;
        };
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return false;
        };
        let Some(i) = conn.room_index(id) else {
            return false;
        };
        let m = conn.rooms.swap_remove(i);
        self.remove_room_membership(m);
        true
    }

    fn remove_room_membership(&mut self, m: Membership) {
        if let Some((name, moved)) = self.rooms.remove(m) {
            if let Some(other) = moved.and_then(|k| self.conns.get_mut(k as usize)) {
                if let Some(r) = other.rooms.iter_mut().find(|r| r.group == m.group) {
                    r.pos = m.pos;
                }
            }
            self.events.push(Event::Room {
                reactor: self.id,
                room: name,
                delta: -1,
            });
        }
    }

    /// An open connection stops being one: out of every room and the user table.
    fn leave_all(&mut self, key: u32) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        let rooms = std::mem::take(&mut conn.rooms);
        let user = std::mem::replace(&mut conn.user, Membership::NONE);
        for m in rooms {
            self.remove_room_membership(m);
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

    // ---- closing -----------------------------------------------------------

    /// Stops treating the connection as open; what is queued is still written, then
    /// the write side is shut down and reads are discarded until EOF or timeout.
    fn begin_closing(&mut self, key: u32) {
        let Some(conn) = self.conns.get(key as usize) else {
            return;
        };
        if conn.phase == Phase::Open {
            self.leave_all(key);
        }
        let now = self.now;
        let conn = &mut self.conns[key as usize];
        conn.phase = Phase::Closing;
        conn.last_seen = now;
        conn.input = None;
        conn.set(flag::SHUTDOWN_AFTER_FLUSH);
        conn.clear(flag::READ_PAUSED);
        self.mark_dirty(key);
    }

    /// Drops the connection now.
    fn close_now(&mut self, key: u32) {
        let Some(conn) = self.conns.get(key as usize) else {
            return;
        };
        if conn.phase == Phase::Open {
            self.leave_all(key);
        }
        // Closing the descriptor also removes it from the epoll set.
        drop(self.conns.remove(key as usize));
        self.shared.sockets.fetch_sub(1, Ordering::Relaxed);
        self.local.closed += 1;
    }

    // ---- output ------------------------------------------------------------

    fn mark_dirty(&mut self, key: u32) {
        if let Some(conn) = self.conns.get_mut(key as usize) {
            if !conn.has(flag::DIRTY) {
                conn.set(flag::DIRTY);
                self.outbox.dirty.push(key);
            }
        }
    }

    /// Queues a chunk for one connection this turn.
    fn queue(&mut self, key: u32, chunk: Chunk) {
        let idx = self.outbox.add_frame(chunk);
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        self.outbox.append(&mut conn.chain, idx);
        if !conn.has(flag::DIRTY) {
            conn.set(flag::DIRTY);
            self.outbox.dirty.push(key);
        }
    }

    /// Applies the dispatcher's batches. False if the channel is gone.
    fn drain_channel(&mut self) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(ReactorMsg::Batch(cmds)) => {
                    for cmd in cmds {
                        self.apply(cmd);
                    }
                }
                Ok(ReactorMsg::Shutdown) => self.start_shutdown(),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => {
                    if self.shutdown_at.is_none() {
                        self.start_shutdown();
                    }
                    return true;
                }
            }
        }
    }

    fn apply(&mut self, cmd: Command) {
        match cmd {
            Command::Push { target, frame } => {
                let idx = self.outbox.add_frame(Chunk::Push(frame));
                let mut n = 0u64;
                let Reactor {
                    conns,
                    outbox,
                    rooms,
                    users,
                    ..
                } = self;
                let mut deliver = |key: u32, conn: &mut Conn| {
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
                    Target::Room(name) => {
                        if let Some(id) = rooms.id(&name) {
                            for &key in rooms.members(id) {
                                if let Some(conn) = conns.get_mut(key as usize) {
                                    deliver(key, conn);
                                }
                            }
                        }
                    }
                    Target::User(name) => {
                        if let Some(id) = users.id(&name) {
                            for &key in users.members(id) {
                                if let Some(conn) = conns.get_mut(key as usize) {
                                    deliver(key, conn);
                                }
                            }
                        }
                    }
                }
                self.local.deliveries += n;
            }
            Command::Join { req, user, room } => {
                let keys = self.user_conns(&user);
                let mut affected = 0;
                for key in keys {
                    let Some(conn) = self.conns.get(key as usize) else {
                        continue;
                    };
                    let member = self
                        .rooms
                        .id(&room)
                        .is_some_and(|id| conn.room_index(id).is_some());
                    if !member && conn.rooms.len() < self.shared.settings.max_rooms {
                        self.join_room(key, &room);
                        affected += 1;
                    }
                }
                self.events.push(Event::Ack {
                    reactor: self.id,
                    req,
                    affected,
                });
            }
            Command::Leave { req, user, room } => {
                let keys = self.user_conns(&user);
                let mut affected = 0;
                for key in keys {
                    if self.leave_room(key, &room) {
                        affected += 1;
                    }
                }
                self.events.push(Event::Ack {
                    reactor: self.id,
                    req,
                    affected,
                });
            }
            Command::Kick { req, user, frame } => {
                let keys = self.user_conns(&user);
                let affected = keys.len() as u32;
                for key in keys {
                    self.queue(key, Chunk::Shared(frame.clone()));
                    self.begin_closing(key);
                }
                self.local.kicked += affected as u64;
                self.events.push(Event::Ack {
                    reactor: self.id,
                    req,
                    affected,
                });
            }
        }
    }

    fn user_conns(&self, user: &str) -> Vec<u32> {
        self.users
            .id(user)
            .map(|id| self.users.members(id).to_vec())
            .unwrap_or_default()
    }

    /// Before sleeping: report changes to the dispatcher, then write every dirty
    /// connection once. Events go first so that the dispatcher's counts already hold
    /// what the replies being written confirm.
    fn before_sleep(&mut self) {
        self.send_events();
        // Later rounds write what the earlier ones added: pushes that arrived while
        // writing, and the Close frames of slow consumers.
        let mut round = 0;
        while !self.outbox.dirty.is_empty() {
            self.flush_dirty(round < MAX_DRAIN_ROUNDS);
            self.send_events();
            round += 1;
        }
        self.outbox.clear();
        self.local.publish(&self.stats);
    }

    fn send_events(&mut self) {
        if self.events.is_empty() {
            return;
        }
        let events = std::mem::take(&mut self.events);
        if self.dispatcher.tx.send(events).is_ok() {
            let _ = self.dispatcher.waker.wake();
        }
    }

    /// Writes each dirty connection. With `drain`, pushes that arrived meanwhile are
    /// taken from the channel every `DRAIN_EVERY` connections: connections not yet
    /// written this round then carry them in the same `writev` (more frames per system
    /// call under load, and no extra latency).
    fn flush_dirty(&mut self, drain: bool) {
        let mut dirty = std::mem::take(&mut self.outbox.dirty);
        let max_pending = self.shared.settings.max_pending;
        let drop_policy = self.shared.settings.slow_policy == SlowPolicy::Drop;
        let mut slow = Vec::new();
        let mut dead = Vec::new();
        for (i, &key) in dirty.iter().enumerate() {
            if drain && i % DRAIN_EVERY == DRAIN_EVERY - 1 && !self.rx.is_empty() {
                self.drain_channel();
            }
            let Some(conn) = self.conns.get_mut(key as usize) else {
                continue;
            };
            conn.clear(flag::DIRTY);
            if conn.has(flag::WRITE_SHUT) {
                conn.chain = outbox::Chain::EMPTY;
                conn.output = None;
                continue;
            }
            let writable = conn.has(flag::WRITABLE);
            let res = self.outbox.flush(
                &mut conn.stream,
                writable,
                &mut conn.chain,
                &mut conn.output,
                max_pending,
                drop_policy,
            );
            let o = match res {
                Ok(o) => o,
                Err(_) => {
                    dead.push(key);
                    continue;
                }
            };
            self.local.bytes_written += o.written as u64;
            self.local.writev_calls += o.writes as u64;
            self.local.slow_drops += o.dropped as u64;
            if o.blocked {
                conn.clear(flag::WRITABLE);
            }
            if o.over_limit > 0 && conn.phase == Phase::Open {
                slow.push(key);
                continue;
            }
            if conn.output.is_none() && conn.has(flag::SHUTDOWN_AFTER_FLUSH) {
                let _ = conn.stream.shutdown(std::net::Shutdown::Write);
                conn.set(flag::WRITE_SHUT);
            }
            // Backpressure on a client that sends but does not read its replies.
            if conn.pending() > max_pending && conn.phase == Phase::Open {
                conn.set(flag::READ_PAUSED);
            } else if conn.has(flag::READ_PAUSED) {
                conn.clear(flag::READ_PAUSED);
                if conn.has(flag::READ_PENDING) {
                    conn.clear(flag::READ_PENDING);
                    self.read_again.push(key);
                }
            }
        }
        dirty.clear();
        if self.outbox.dirty.is_empty() {
            // Keep the allocation.
            self.outbox.dirty = dirty;
        }
        for key in slow {
            self.slow_close(key);
        }
        for key in dead {
            self.close_now(key);
        }
    }

    /// A connection over --max-pending under the close policy: its queued pushes are
    /// dropped (all but a partly written frame, which must finish) and a 1008 close
    /// takes their place.
    fn slow_close(&mut self, key: u32) {
        self.local.slow_closes += 1;
        if let Some(q) = self
            .conns
            .get_mut(key as usize)
            .and_then(|c| c.output.as_deref_mut())
        {
            q.keep_partial_front();
        }
        self.close_with(key, CloseCode::POLICY_VIOLATION, "slow consumer");
    }

    // ---- timers ------------------------------------------------------------

    /// The coarse timer: one pass over the slab per scan interval. Cheaper than a
    /// timer object per connection, and a pass over a million 100-byte entries is a
    /// few milliseconds.
    fn scan(&mut self) {
        let now = self.now;
        let t = &self.timeouts;
        let mut expired = std::mem::take(&mut self.expired);
        let mut pending_bytes = 0u64;
        for (key, conn) in self.conns.iter_mut() {
            let age = now.wrapping_sub(conn.last_seen);
            pending_bytes += conn.pending() as u64;
            match conn.phase {
                Phase::Handshake if age >= t.handshake => {
                    expired.push((key as u32, Expiry::Handshake))
                }
                Phase::Open if t.idle > 0 && age >= t.idle => {
                    expired.push((key as u32, Expiry::Idle))
                }
                Phase::Open if t.ping > 0 && age >= t.ping && !conn.has(flag::PINGED) => {
                    conn.set(flag::PINGED);
                    let idx = self.outbox.add_frame(Chunk::Static(&PING_FRAME));
                    if self.outbox.append(&mut conn.chain, idx) && !conn.has(flag::DIRTY) {
                        conn.set(flag::DIRTY);
                        self.outbox.dirty.push(key as u32);
                    }
                    self.local.pings_sent += 1;
                }
                Phase::Closing if age >= t.close => expired.push((key as u32, Expiry::Closing)),
                _ => {}
            }
        }
        for &(key, why) in &expired {
            match why {
                Expiry::Handshake => {
                    self.local.handshake_failures[HANDSHAKE_TIMEOUT] += 1;
                    self.close_now(key);
                }
                Expiry::Idle => {
                    self.local.idle_closes += 1;
                    self.close_with(key, CloseCode::GOING_AWAY, "idle timeout");
                }
                Expiry::Closing => self.close_now(key),
            }
        }
        expired.clear();
        self.expired = expired;
        let g = &self.gauges;
        g.sockets.store(self.conns.len() as u64, Ordering::Relaxed);
        g.rooms.store(self.rooms.len() as u64, Ordering::Relaxed);
        g.pending_bytes.store(pending_bytes, Ordering::Relaxed);
    }

    fn start_shutdown(&mut self) {
        if self.shutdown_at.is_some() {
            return;
        }
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let keys: Vec<(u32, Phase)> = self
            .conns
            .iter()
            .map(|(k, c)| (k as u32, c.phase))
            .collect();
        let frame: Arc<[u8]> = encode_close(CloseCode::GOING_AWAY, "server shutting down").into();
        for (key, phase) in keys {
            match phase {
                Phase::Open => {
                    self.queue(key, Chunk::Shared(frame.clone()));
                    self.begin_closing(key);
                }
                Phase::Handshake => self.close_now(key),
                Phase::Closing => {}
            }
        }
        self.shutdown_at = Some(self.now + ticks(self.shared.settings.shutdown_grace));
    }
}

fn is_resource_exhausted(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

#[cfg(test)]
mod review_tests {
    use super::*;
    use std::io::Write;

    /// A reactor on a loopback listener, driven by hand (no thread).
    fn reactor() -> (Reactor, std::net::SocketAddr) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            settings: Settings {
                handshake: HandshakeConfig {
                    path: "/ws".into(),
                    allow_origins: Vec::new(),
                    max_rooms: 8,
                },
                max_message: 64 << 10,
                max_pending: 1,
                slow_policy: SlowPolicy::Close,
                echo: false,
                max_rooms: 8,
                max_connections: 100,
                handshake_timeout: Duration::from_secs(10),
                ping_interval: Duration::ZERO,
                idle_timeout: Duration::ZERO,
                shutdown_grace: Duration::from_secs(1),
            },
            sockets: AtomicUsize::new(0),
        });
        let dpoll = Poll::new().unwrap();
        let dwaker = Arc::new(Waker::new(dpoll.registry(), WAKER).unwrap());
        let (tx, _rx) = crossbeam_channel::unbounded();
        let link = DispatcherLink { tx, waker: dwaker };
        let (r, _handle) = Reactor::new(0, listener, shared, link).unwrap();
        (r, addr)
    }

    /// An open WebSocket connection at slab key 0 (101 already read by the client).
    fn open_conn(r: &mut Reactor, addr: std::net::SocketAddr) -> std::net::TcpStream {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        for _ in 0..100 {
            r.accept();
            if !r.conns.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(r.conns.contains(0));
        c.write_all(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        r.read(0, false);
        assert_eq!(r.conns[0].phase, Phase::Open);
        r.before_sleep();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(c.read(&mut b).unwrap(), 1);
            head.push(b[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"));
        c
    }

    /// `read` spent its budget (the key goes on `read_again`), then the turn's flush
    /// paused reading because the replies did not all go out. The next turn's
    /// `read_pending` must not forget that the socket still holds unread bytes: once
    /// the replies drain and reading resumes, they must be read without a new edge.
    #[test]
    fn review_read_again_survives_a_pause() {
        let (mut r, addr) = reactor();
        let mut c = open_conn(&mut r, addr);
        // A masked, empty Ping sits unread in the server's socket.
        c.write_all(&[0x89, 0x80, 0, 0, 0, 0]).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        // End of turn T: read() spent its budget, flush_dirty paused reading.
        r.read_again.push(0);
        r.conns[0].set(flag::READ_PAUSED);
        // Turn T+1: no socket event; read_pending runs while still paused.
        r.read_pending();
        // The replies drain: the flush clears the pause.
        r.mark_dirty(0);
        r.before_sleep();
        assert!(!r.conns[0].has(flag::READ_PAUSED));
        // Turn T+2 (poll returns no event for this socket: its bytes arrived long ago).
        r.read_pending();
        r.before_sleep();
        let mut pong = [0u8; 2];
        c.read_exact(&mut pong)
            .expect("the Ping left in the socket was never read");
        assert_eq!(pong, [0x8a, 0x00]);
    }
}
