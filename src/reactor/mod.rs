//! Reactor threads: each owns a `mio::Poll`, a listening socket, a slab of
//! connections, its room and user tables, and a coarse timer scan.
//!
//! A reactor does all I/O for its connections — accept, HTTP upgrade, frame parsing,
//! writes — and never blocks or takes a lock. `turn` below is one loop turn, and the
//! table of contents of this module:
//!
//! ```text
//! accept      new sockets, each against the handshake budget
//! input       reads; bytes become a request head (upgrade) or frames, and frames
//!             become messages (ws::message) handled by requests
//! commands    the dispatcher's batches: pushes, JOIN / LEAVE / KICK
//! membership  the room and user tables, and the events that keep the dispatcher's
//!             counts
//! timers      the clock, handshake / idle / close timeouts and pings
//! output      before sleeping: events to the dispatcher, then one writev per dirty
//!             connection (Redis's beforeSleep), slow consumers
//! closing     Close frames (one per connection, ever), shutdown, dropping sockets
//! access      --access-log: one line per closed connection (state only when on)
//! ```
//!
//! Each turn also feeds three histograms (`ReactorStats`): its own busy time, the
//! push latency of at most one sampled push per dispatcher batch, and the handshake
//! duration of the connections it upgraded; all observed once the turn's writes are
//! done, with one clock read.
//!
//! A reactor never imports the dispatcher: both speak through `crate::link`.

mod accept;
pub mod access;
pub mod client_msg;
mod closing;
mod commands;
mod compression;
pub mod conn;
mod grants;
pub mod groups;
pub mod handover;
mod input;
pub mod listener;
mod membership;
pub mod outbox;
mod output;
mod positions;
mod requests;
pub mod settings;
mod timers;
mod upgrade;

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::link::stats::{Gauges, LocalStats, ReactorStats};
use crate::link::{Command, DispatcherLink, Event, ReactorHandle, ReactorMsg};
use conn::Conn;
use groups::Groups;
use outbox::Outbox;
pub use settings::{Settings, Shared, SlowPolicy};
pub use timers::TICK;
use timers::{Clock, Expiry, Timeouts};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX);
/// Per-reactor read buffer: every connection reads into it.
const SCRATCH: usize = 64 * 1024;

/// One reactor thread's state.
pub struct Reactor {
    /// Index of this reactor (in events, INFO and heartbeats).
    id: usize,
    poll: Poll,
    /// The listening socket; None once shutting down.
    listener: Option<TcpListener>,
    conns: Slab<Conn>,
    rooms: Groups,
    users: Groups,
    /// Token grants of this reactor's connections, interned.
    grants: grants::GrantTable,
    /// Per-address slots of the connections that hold one (only with per-address
    /// limits: empty and free otherwise).
    peer_slots: std::collections::HashMap<u32, crate::link::peers::PeerSlot>,
    outbox: Outbox,
    /// Shared read buffer.
    scratch: Box<[u8]>,
    rx: Receiver<ReactorMsg>,
    /// The rest of a batch left unapplied when the turn's arena reached its budget.
    carry: Option<std::vec::IntoIter<Command>>,
    dispatcher: DispatcherLink,
    /// Events for the dispatcher, sent once per turn.
    events: Vec<Event>,
    /// Some event this turn needs the dispatcher to act now (an ack), not just to
    /// count: only then is it woken.
    wake_dispatcher: bool,
    shared: Arc<Shared>,
    stats: Arc<ReactorStats>,
    gauges: Arc<Gauges>,
    local: LocalStats,
    timeouts: Timeouts,
    clock: Clock,
    /// Current tick.
    now: u64,
    /// Tick of the next timer scan.
    next_scan: u64,
    /// The listener may hold sockets not yet accepted (an edge came, or the last
    /// accept batch used its whole budget): accept this turn.
    accept_pending: bool,
    /// Accepting is paused (out of descriptors) until this tick.
    accept_paused_until: Option<u64>,
    last_accept_log: Option<Instant>,
    /// Connections with input left unread (read budget spent, reading resumed, or the
    /// turn's arena full).
    read_again: Vec<u32>,
    /// Bytes queued this turn for the connection being read (the replies in its
    /// chain when the `read` began, plus what `queue` took since): the replies (pongs, JSON answers)
    /// of input read this turn are in the turn's arena, not yet in the write queue
    /// that `--max-pending` is checked against after the writes.
    queued_this_read: usize,
    /// Shutdown deadline tick, once shutting down.
    shutdown_at: Option<u64>,
    /// Reused buffer for keys the timer scan acts on.
    expired: Vec<(u32, Expiry)>,
    /// `wspush.v1` joins waiting for their position.
    positions: positions::Positions,
    /// Open `wspush.v1` connections here.
    v1_conns: u32,
    /// Where this reactor is in an upgrade's hand-over.
    handover: handover::State,
    /// `--access-log`'s side table; `None` with the flag off.
    access: Option<access::AccessLog>,
    /// When the oldest sampled push applied this turn was received by the dispatcher.
    push_sample: Option<Instant>,
    /// Accept times of the connections upgraded this turn (their 101 is written at
    /// the turn's end).
    upgraded: Vec<Instant>,
    /// permessage-deflate: counts, and the codecs made on first use.
    compression: compression::Compression,
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
        let access = shared.settings.access_log.then(access::AccessLog::default);
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
            grants: grants::GrantTable::default(),
            peer_slots: std::collections::HashMap::new(),
            outbox: Outbox::default(),
            scratch: vec![0; SCRATCH].into_boxed_slice(),
            rx,
            carry: None,
            dispatcher,
            events: Vec::new(),
            wake_dispatcher: false,
            shared,
            stats,
            gauges,
            local: LocalStats::default(),
            next_scan: timeouts.scan,
            timeouts,
            clock: Clock::new(),
            now: 0,
            accept_pending: false,
            accept_paused_until: None,
            last_accept_log: None,
            read_again: Vec::new(),
            queued_this_read: 0,
            shutdown_at: None,
            positions: positions::Positions::default(),
            v1_conns: 0,
            compression: compression::Compression::default(),
            expired: Vec::new(),
            handover: handover::State::default(),
            access,
            push_sample: None,
            upgraded: Vec::new(),
        };
        Ok((reactor, handle))
    }

    /// Runs the event loop until shutdown completes (or the channel is gone).
    pub fn run(mut self) {
        // Marks this reactor dead for /healthz when the loop ends, even by a panic.
        let _alive = self.shared.liveness.guard(self.id);
        // Up and entering its loop: /readyz stops saying "starting" for it now, not
        // after its first poll (an idle reactor's first poll can sleep a second).
        self.shared.liveness.beat(self.id);
        let mut events = Events::with_capacity(1024);
        while self.turn(&mut events) {}
        let left = self.conns.len();
        self.drop_all();
        self.hang_up();
        log::info!(
            "reactor {} stopped ({left} connections were still open)",
            self.id
        );
    }

    /// The last act of a reactor: drop its end of the channel (so the dispatcher's
    /// later sends fail and are answered at once), then say so. Whatever it was sent
    /// after its last drain is lost; the dispatcher answers those requests on `Exited`.
    fn hang_up(&mut self) {
        self.rx = crossbeam_channel::never();
        self.carry = None;
        if self
            .dispatcher
            .tx
            .send(vec![Event::Exited { reactor: self.id }])
            .is_ok()
        {
            let _ = self.dispatcher.waker.wake();
        }
    }

    /// One loop turn; false when the reactor should exit.
    fn turn(&mut self, events: &mut Events) -> bool {
        let timeout = self.poll_timeout();
        if let Err(e) = self.poll.poll(events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                log::error!("reactor {}: poll failed: {e}", self.id);
                return false;
            }
        }
        let started = Instant::now();
        self.now = self.clock.at(started);
        self.shared.liveness.beat(self.id);
        if self.handover.exported() {
            return self.exported_turn();
        }
        // Frozen for an upgrade: no reads, accepts or timers (see handover.rs).
        let frozen = self.handover.frozen();
        for ev in events.iter() {
            match ev.token() {
                LISTENER => self.accept_pending = true,
                WAKER => {}
                Token(key) => {
                    let closed = ev.is_read_closed() || ev.is_error();
                    let readable = (ev.is_readable() || closed) && !frozen;
                    self.on_socket_event(key, readable, closed && !frozen, ev.is_writable());
                }
            }
        }
        self.drain_channel();
        if !self.handover.frozen() {
            self.read_pending();
            self.accept_waiting();
            self.run_timers();
        }
        self.before_sleep();
        self.export_when_idle();
        self.observe_turn(started);
        match self.shutdown_at {
            Some(deadline) => !(self.conns.is_empty() || self.now >= deadline),
            None => true,
        }
    }

    /// Observes the turn's histograms once its writes are done: the turn's own busy
    /// time, the sampled push, the upgrades.
    fn observe_turn(&mut self, started: Instant) {
        let end = Instant::now();
        let s = &self.stats;
        s.turn_duration.observe(end - started);
        if let Some(t) = self.push_sample.take() {
            s.push_latency.observe(end.saturating_duration_since(t));
        }
        for t in self.upgraded.drain(..) {
            s.handshake_duration
                .observe(end.saturating_duration_since(t));
        }
    }

    /// How long the next poll may sleep: not at all while work is left over.
    fn poll_timeout(&self) -> Duration {
        if self.handover.exported() {
            // Only the channel matters, and its messages wake the poll.
            return Duration::from_secs(1);
        }
        if self.handover.frozen() {
            return if self.carry.is_some() || !self.rx.is_empty() {
                Duration::ZERO
            } else {
                Duration::from_millis(10)
            };
        }
        if !self.read_again.is_empty()
            || self.carry.is_some()
            || !self.rx.is_empty()
            || (self.accept_pending && self.accept_paused_until.is_none())
        {
            return Duration::ZERO;
        }
        let mut until = self.next_scan;
        if let Some(t) = self.accept_paused_until {
            until = until.min(t);
        }
        if let Some(t) = self.shutdown_at {
            until = until.min(t);
        }
        timers::TICK * self.ticks_until(until)
    }
}

#[cfg(test)]
mod tests;
