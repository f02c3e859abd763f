//! One worker: a single mio event loop that opens its slice of the connections at a
//! target rate (bind to a source address, non-blocking connect, tungstenite client
//! handshake driven through `HandshakeError::Interrupted`), then either just holds them
//! (`conns`), checks pushed messages (`fanout`) or does round trips (`echo`).
//!
//! It never blocks except in `Poll::poll`, never sleeps, and never trusts the server: every
//! failure is counted by cause, not unwrapped. It speaks WebSocket only through
//! tungstenite, never through the crate's own codec.

use crate::cli::SrcRange;
use crate::sys::mono_ns;
use crate::wire::{Counters, Event, FanoutCheck, Sink, StopSignal, WorkerResult};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::{BTreeMap, VecDeque};
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::client::ClientHandshake;
use tungstenite::handshake::{HandshakeError, MidHandshake};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

/// The waker's token; connection tokens are slab keys, far below it.
pub const WAKER: Token = Token(usize::MAX);

const PROGRESS_EVERY_NS: u64 = 500_000_000;
/// Delivered counts are batched at most this often (the publisher's window feedback).
const DELIVERED_EVERY_NS: u64 = 2_000_000;
/// With no rate limit, open at most this many per loop turn so events keep being served.
const UNLIMITED_BATCH: usize = 256;
/// How often handshake deadlines are checked when nothing else wakes the loop.
const TIMEOUT_SCAN_NS: u64 = 100_000_000;

/// What the connections do once open.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// Hold them; read and discard anything the server sends.
    Conns,
    /// Subscriber `i` is in room `i % rooms`; check `<seq> <send_ns>` payloads.
    Fanout {
        rooms: u32,
        messages: u32,
        broadcast: bool,
    },
    /// Send `bytes`-byte text messages and time each echo, one in flight per connection,
    /// starting once every connection of this worker is open.
    Echo { bytes: usize },
}

/// This worker's share of the work.
pub struct Plan {
    /// Worker number and count: this worker owns global connection ids
    /// `index, index + workers, ...` below `total`.
    pub index: u32,
    pub workers: u32,
    pub total: u32,
    /// Base WebSocket URLs (at least one); connection `id` uses `urls[id % len]` and
    /// appends its query parameters.
    pub urls: Vec<String>,
    /// Resolved address of each URL's host and port, in the same order.
    pub addrs: Vec<SocketAddr>,
    pub src: Option<SrcRange>,
    /// New connections per second for this worker (0 = unlimited).
    pub rate: f64,
    pub handshake_timeout: Duration,
    /// Monotonic ns at which the worker stops by itself.
    pub deadline_ns: u64,
    pub mode: Mode,
    /// Offer `wspush.v1`; fanout payloads then come inside JSON envelopes.
    pub v1: bool,
}

/// Appends `extra` to the URL's query string.
pub fn url_with(base: &str, extra: &str) -> String {
    if base.contains('?') {
        format!("{base}&{extra}")
    } else {
        format!("{base}?{extra}")
    }
}

impl Plan {
    /// Which of the URLs connection `id` uses.
    fn url_index(&self, id: u32) -> usize {
        id as usize % self.urls.len().max(1)
    }

    /// Per-URL results are only kept when there is more than one URL to tell apart.
    fn per_url(&self) -> bool {
        self.urls.len() > 1
    }

    fn url_for(&self, id: u32) -> String {
        let base = self
            .urls
            .get(self.url_index(id))
            .map(String::as_str)
            .unwrap_or_default();
        match self.mode {
            Mode::Fanout { rooms, .. } => {
                url_with(base, &format!("user=s{id}&rooms=room-{}", id % rooms))
            }
            // A token names the user (the server refuses user= next to it).
            _ if base.contains("user=") || base.contains("token=") => base.to_string(),
            Mode::Conns => url_with(base, &format!("user=c{id}")),
            Mode::Echo { .. } => url_with(base, &format!("user=e{id}")),
        }
    }
}

/// A failure cause as reported: short, stable strings so counts group well.
pub fn io_cause(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => return "refused".into(),
        Some(libc::ECONNRESET) => return "reset".into(),
        Some(libc::ETIMEDOUT) => return "timeout (kernel)".into(),
        Some(libc::EADDRNOTAVAIL) => return "EADDRNOTAVAIL".into(),
        Some(libc::EADDRINUSE) => return "EADDRINUSE".into(),
        Some(libc::EMFILE) | Some(libc::ENFILE) => return "EMFILE (fd limit)".into(),
        Some(libc::EPIPE) => return "broken pipe".into(),
        Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH) => return "unreachable".into(),
        _ => {}
    }
    match e.kind() {
        ErrorKind::UnexpectedEof => "eof".into(),
        ErrorKind::ConnectionAborted => "aborted".into(),
        k => format!("io {k:?}"),
    }
}

fn ws_cause(e: &tungstenite::Error) -> String {
    use tungstenite::Error as E;
    match e {
        E::Io(e) => io_cause(e),
        E::Http(resp) => format!("http {}", resp.status().as_u16()),
        E::ConnectionClosed | E::AlreadyClosed => "closed".into(),
        E::Protocol(p) => format!("protocol: {p}"),
        E::Capacity(c) => format!("capacity: {c}"),
        E::Utf8 => "invalid utf-8".into(),
        other => format!("ws: {other}"),
    }
}

/// IP_BIND_ADDRESS_NO_PORT (Linux 4.2+); where it is missing the bind just picks a
/// port itself, as before.
fn bind_address_no_port(sock: &Socket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: a valid socket and a pointer to an int with its size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Small buffers: tungstenite's 128 KiB default read buffer per connection would cost
/// gigabytes at 19,000 connections; our messages are small.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

enum Phase {
    /// Non-blocking connect in progress.
    Connecting(TcpStream),
    /// HTTP upgrade in progress.
    Handshaking(MidHandshake<ClientHandshake<TcpStream>>),
    Open(WebSocket<TcpStream>),
    /// Transitional placeholder while a phase is being advanced.
    Gone,
}

/// A fanout subscriber's view of its message stream.
struct Subscriber {
    /// Room index (unused for broadcast).
    room: u32,
    /// One bit per message of this stream (indexed by position within the room).
    seen: Vec<u64>,
    /// Highest stream position received so far.
    high: Option<u32>,
    received: u64,
}

struct Conn {
    /// Global connection id (source address, user name, room follow from it).
    id: u32,
    /// Monotonic ns when the connect started.
    started_ns: u64,
    phase: Phase,
    sub: Option<Subscriber>,
}

/// Messages of room `room` among the first `published` (round robin over `rooms`).
pub fn stream_len(room: u32, rooms: u32, broadcast: bool, published: u64) -> u64 {
    if broadcast {
        published
    } else if published > room as u64 {
        (published - room as u64 - 1) / rooms as u64 + 1
    } else {
        0
    }
}

/// The parts of a `wspush.v1` message the fanout check reads.
#[derive(serde::Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    op: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<std::borrow::Cow<'a, str>>,
}

/// Parses `<seq> <send_ns> ...`.
pub fn parse_stamp(text: &str) -> Option<(u64, u64)> {
    let mut words = text.split(' ');
    let seq = words.next()?.parse().ok()?;
    let ns = words.next()?.parse().ok()?;
    Some((seq, ns))
}

/// An ASCII payload of at least `len` bytes (never shorter than its header): the header
/// words, a space, then `x` padding.
pub fn padded(header: &str, len: usize) -> String {
    let mut s = String::with_capacity(len.max(header.len() + 1));
    s.push_str(header);
    s.push(' ');
    while s.len() < len {
        s.push('x');
    }
    s
}

struct Worker<'a> {
    plan: &'a Plan,
    sink: &'a Sink,
    poll: Poll,
    conns: Slab<Conn>,
    /// (deadline ns, slab key, id) of connections not yet open, in start order.
    pending: VecDeque<(u64, usize, u32)>,
    /// Connections still connecting or handshaking.
    in_progress: u64,
    result: WorkerResult,
    check: FanoutCheck,
    /// Echo: round trips may run.
    echo_running: bool,
    echo_started_ns: u64,
    /// Last delivered total sent to the coordinator.
    delivered_reported: u64,
    delivered_reported_ns: u64,
    config: WebSocketConfig,
    /// Fanout: (room, distinct messages received, URL index) of subscribers dropped
    /// after opening.
    dropped_subs: Vec<(u32, u64, usize)>,
    /// A subscriber dropped: tell the coordinator at once, so the publisher stops
    /// expecting deliveries for it.
    progress_due: bool,
}

/// Runs the worker until `stop` is requested or its deadline passes, emitting events to
/// `sink`; the final `Done` event is emitted too and the result returned.
pub fn run(plan: &Plan, sink: &Sink, poll: Poll, stop: &StopSignal) -> WorkerResult {
    let mut w = Worker {
        plan,
        sink,
        poll,
        conns: Slab::new(),
        pending: VecDeque::new(),
        in_progress: 0,
        result: WorkerResult::default(),
        check: FanoutCheck::default(),
        echo_running: false,
        echo_started_ns: 0,
        delivered_reported: 0,
        delivered_reported_ns: 0,
        config: ws_config(),
        dropped_subs: Vec::new(),
        progress_due: false,
    };
    if let Mode::Fanout {
        messages, rooms, ..
    } = plan.mode
    {
        w.check.last_receipt_ns = vec![0; messages as usize];
        w.result.counters.rooms_open = vec![0; rooms as usize];
        if plan.per_url() {
            w.check.by_url = vec![Default::default(); plan.urls.len()];
        }
    }
    w.event_loop(stop);
    w.finish(stop.published())
}

impl Worker<'_> {
    fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        (self.plan.index..self.plan.total).step_by(self.plan.workers.max(1) as usize)
    }

    fn event_loop(&mut self, stop: &StopSignal) {
        let ids: Vec<u32> = self.ids().collect();
        let mut events = Events::with_capacity(1024);
        let start_ns = mono_ns();
        let mut next = 0usize;
        let mut ready = false;
        let mut next_progress = start_ns + PROGRESS_EVERY_NS;
        let rate = self.plan.rate;
        loop {
            let now = mono_ns();
            if stop.requested() || now >= self.plan.deadline_ns {
                break;
            }
            // Open what is due.
            let mut opened = 0;
            while next < ids.len() {
                if rate > 0.0 {
                    let due = start_ns + (next as f64 * 1e9 / rate) as u64;
                    if due > now {
                        break;
                    }
                } else if opened >= UNLIMITED_BATCH {
                    break;
                }
                self.open(ids[next]);
                next += 1;
                opened += 1;
            }
            self.expire_handshakes(now);
            if !ready && next == ids.len() && self.in_progress == 0 {
                ready = true;
                self.sink.emit(Event::Ready {
                    worker: self.plan.index,
                    counters: self.result.counters.clone(),
                });
                if let Mode::Echo { .. } = self.plan.mode {
                    self.start_echo();
                }
            }
            if now >= next_progress || self.progress_due {
                next_progress = now + PROGRESS_EVERY_NS;
                self.progress_due = false;
                self.sink.emit(Event::Progress {
                    worker: self.plan.index,
                    counters: self.result.counters.clone(),
                });
            }
            self.report_delivered(now);

            // Sleep until the next thing we must do ourselves.
            let mut wake = next_progress.min(self.plan.deadline_ns);
            if next < ids.len() {
                let due = if rate > 0.0 {
                    start_ns + (next as f64 * 1e9 / rate) as u64
                } else {
                    now
                };
                wake = wake.min(due);
            }
            if self.in_progress > 0 {
                wake = wake.min(now + TIMEOUT_SCAN_NS);
            }
            if self.result.counters.delivered != self.delivered_reported {
                wake = wake.min(self.delivered_reported_ns + DELIVERED_EVERY_NS);
            }
            let timeout = Duration::from_nanos(wake.saturating_sub(now));
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != ErrorKind::Interrupted {
                    self.sink.emit(Event::Fatal {
                        worker: self.plan.index,
                        error: format!("poll: {e}"),
                    });
                    break;
                }
            }
            for ev in events.iter() {
                if ev.token() != WAKER {
                    self.on_event(ev.token().0);
                }
            }
        }
    }

    fn report_delivered(&mut self, now: u64) {
        let total = self.result.counters.delivered;
        if total != self.delivered_reported
            && now >= self.delivered_reported_ns + DELIVERED_EVERY_NS
        {
            self.delivered_reported = total;
            self.delivered_reported_ns = now;
            self.sink.emit(Event::Delivered {
                worker: self.plan.index,
                total,
            });
        }
    }

    fn fail(&mut self, cause: String) {
        self.result.counters.failed += 1;
        *self.result.failures.entry(cause).or_default() += 1;
    }

    fn connect(&self, id: u32) -> std::io::Result<TcpStream> {
        let Some(&addr) = self.plan.addrs.get(self.plan.url_index(id)) else {
            return Err(std::io::Error::new(ErrorKind::InvalidInput, "no address"));
        };
        let sock = Socket::new(
            Domain::for_address(addr),
            Type::STREAM.nonblocking(),
            Some(Protocol::TCP),
        )?;
        if let Some(src) = self.plan.src {
            let ip: Ipv4Addr = src.pick(id);
            // Let connect() pick the port: a bind to port 0 searches for a port free
            // for any destination, which grows costly with thousands in use and
            // would make the load generator, not the server, set the handshake rate.
            bind_address_no_port(&sock);
            sock.bind(&SocketAddr::new(IpAddr::V4(ip), 0).into())?;
        }
        sock.set_nodelay(true)?;
        match sock.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        Ok(TcpStream::from_std(sock.into()))
    }

    fn open(&mut self, id: u32) {
        let now = mono_ns();
        if self.result.first_attempt_ns == 0 {
            self.result.first_attempt_ns = now;
        }
        self.result.counters.attempted += 1;
        let mut stream = match self.connect(id) {
            Ok(s) => s,
            Err(e) => return self.fail(io_cause(&e)),
        };
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            return self.fail(io_cause(&e));
        }
        let sub = match self.plan.mode {
            Mode::Fanout {
                rooms,
                messages,
                broadcast,
            } => {
                let room = id % rooms;
                let len = stream_len(room, rooms, broadcast, messages as u64);
                Some(Subscriber {
                    room,
                    seen: vec![0; len.div_ceil(64) as usize],
                    high: None,
                    received: 0,
                })
            }
            _ => None,
        };
        entry.insert(Conn {
            id,
            started_ns: now,
            phase: Phase::Connecting(stream),
            sub,
        });
        self.in_progress += 1;
        let deadline = now + self.plan.handshake_timeout.as_nanos() as u64;
        self.pending.push_back((deadline, key, id));
    }

    fn expire_handshakes(&mut self, now: u64) {
        while let Some(&(deadline, key, id)) = self.pending.front() {
            if deadline > now {
                break;
            }
            self.pending.pop_front();
            let still_pending = matches!(
                self.conns.get(key),
                Some(c) if c.id == id && !matches!(c.phase, Phase::Open(_))
            );
            if still_pending {
                self.conns.remove(key);
                self.in_progress -= 1;
                self.fail("timeout".into());
            }
        }
    }

    fn on_event(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let phase = std::mem::replace(&mut conn.phase, Phase::Gone);
        match phase {
            Phase::Connecting(stream) => self.on_connecting(key, stream),
            Phase::Handshaking(mid) => self.on_handshake(key, mid.handshake()),
            Phase::Open(ws) => self.on_open(key, ws),
            Phase::Gone => {}
        }
    }

    fn drop_pending(&mut self, key: usize, cause: String) {
        self.conns.remove(key);
        self.in_progress -= 1;
        self.fail(cause);
    }

    fn on_connecting(&mut self, key: usize, stream: TcpStream) {
        // Writable (or an error) ends a non-blocking connect; an error is in SO_ERROR,
        // and a spurious wake-up shows as "not connected" yet.
        match stream.take_error() {
            Ok(Some(e)) | Err(e) => return self.drop_pending(key, io_cause(&e)),
            Ok(None) => {}
        }
        match stream.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotConnected => {
                if let Some(c) = self.conns.get_mut(key) {
                    c.phase = Phase::Connecting(stream);
                }
                return;
            }
            Err(e) => return self.drop_pending(key, io_cause(&e)),
        }
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let url = self.plan.url_for(conn.id);
        let r = match url.as_str().into_client_request() {
            Ok(mut req) => {
                if self.plan.v1 {
                    req.headers_mut().insert(
                        "Sec-WebSocket-Protocol",
                        tungstenite::http::HeaderValue::from_static("wspush.v1"),
                    );
                }
                tungstenite::client::client_with_config(req, stream, Some(self.config))
            }
            Err(e) => return self.drop_pending(key, ws_cause(&e)),
        };
        self.on_handshake(key, r);
    }

    fn on_handshake(
        &mut self,
        key: usize,
        r: Result<
            (
                WebSocket<TcpStream>,
                tungstenite::handshake::client::Response,
            ),
            HandshakeError<ClientHandshake<TcpStream>>,
        >,
    ) {
        match r {
            Ok((ws, _resp)) => {
                let now = mono_ns();
                let Some(conn) = self.conns.get_mut(key) else {
                    return;
                };
                self.result
                    .handshake_ns
                    .record(now.saturating_sub(conn.started_ns));
                self.result.last_handshake_ns = now;
                self.result.counters.handshakes += 1;
                self.result.counters.open += 1;
                self.in_progress -= 1;
                if let Some(sub) = &conn.sub {
                    self.check.subscribers += 1;
                    if let Some(n) = self.result.counters.rooms_open.get_mut(sub.room as usize) {
                        *n += 1;
                    }
                    let u = self.plan.url_index(conn.id);
                    if let Some(c) = self.check.by_url.get_mut(u) {
                        c.subscribers += 1;
                    }
                }
                conn.phase = Phase::Open(ws);
                if self.echo_running {
                    self.send_echo(key);
                }
                // Data may already have arrived behind the handshake response: with
                // edge-triggered events nothing would wake us for it.
                self.on_event(key);
            }
            Err(HandshakeError::Interrupted(mid)) => {
                if let Some(c) = self.conns.get_mut(key) {
                    c.phase = Phase::Handshaking(mid);
                }
            }
            Err(HandshakeError::Failure(e)) => self.drop_pending(key, ws_cause(&e)),
        }
    }

    fn drop_open(&mut self, key: usize, cause: String) {
        if let Some(conn) = self.conns.try_remove(key) {
            if let Some(sub) = conn.sub {
                let u = self.plan.url_index(conn.id);
                self.dropped_subs.push((sub.room, sub.received, u));
                if let Some(n) = self.result.counters.rooms_open.get_mut(sub.room as usize) {
                    *n = n.saturating_sub(1);
                }
                self.progress_due = true;
            }
        }
        self.result.counters.open -= 1;
        self.result.counters.dropped += 1;
        *self.result.drops.entry(cause).or_default() += 1;
    }

    fn on_open(&mut self, key: usize, mut ws: WebSocket<TcpStream>) {
        // Pending writes first (pongs queued by tungstenite, a blocked echo).
        match ws.flush() {
            Ok(()) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => return self.drop_open(key, ws_cause(&e)),
        }
        let mut close_cause = None;
        let mut echo_due = false;
        loop {
            match ws.read() {
                Ok(Message::Text(t)) => {
                    if self.on_message(key, Some(t.as_str()), t.len()) {
                        echo_due = true;
                    }
                }
                Ok(Message::Binary(b)) => {
                    self.on_message(key, None, b.len());
                }
                Ok(Message::Close(frame)) => {
                    close_cause = Some(match frame {
                        Some(f) => format!("close {}", u16::from(f.code)),
                        None => "close (no code)".into(),
                    });
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    let cause = close_cause.take().unwrap_or_else(|| ws_cause(&e));
                    return self.drop_open(key, cause);
                }
            }
        }
        if let Some(c) = self.conns.get_mut(key) {
            c.phase = Phase::Open(ws);
        }
        if echo_due && self.echo_running {
            self.send_echo(key);
        }
    }

    /// Handles one data message; returns true if an echo round trip completed.
    fn on_message(&mut self, key: usize, text: Option<&str>, len: usize) -> bool {
        let now = mono_ns();
        match self.plan.mode {
            Mode::Conns => false,
            Mode::Echo { bytes } => match text.and_then(parse_echo) {
                Some(sent) if len == bytes.max(echo_header_len(sent)) => {
                    self.result.latency_ns.record(now.saturating_sub(sent));
                    self.result.counters.round_trips += 1;
                    true
                }
                _ => {
                    self.result.echo_mismatches += 1;
                    true
                }
            },
            Mode::Fanout {
                rooms,
                messages,
                broadcast,
            } => {
                let envelope;
                let text = match text {
                    Some(t) if self.plan.v1 => {
                        envelope = serde_json::from_str::<Envelope>(t).ok();
                        match &envelope {
                            // Each room's `joined` comes first and is no push; any
                            // other op reply counts as malformed.
                            Some(e) if e.op.as_deref() == Some("joined") => return false,
                            Some(e) if e.op.is_none() => e.data.as_deref(),
                            Some(_) => None,
                            None => None,
                        }
                    }
                    t => t,
                };
                self.result.counters.delivered += 1;
                let Some((seq, sent)) = text.and_then(parse_stamp) else {
                    self.check.malformed += 1;
                    return false;
                };
                let Some(conn) = self.conns.get_mut(key) else {
                    return false;
                };
                let url = self.plan.url_index(conn.id);
                let Some(sub) = conn.sub.as_mut() else {
                    return false;
                };
                if seq >= messages as u64 || (!broadcast && seq % rooms as u64 != sub.room as u64) {
                    self.check.foreign += 1;
                    return false;
                }
                let pos = if broadcast { seq } else { seq / rooms as u64 } as u32;
                let (word, bit) = ((pos / 64) as usize, pos % 64);
                let Some(w) = sub.seen.get_mut(word) else {
                    self.check.foreign += 1;
                    return false;
                };
                if *w & (1 << bit) != 0 {
                    self.check.duplicated += 1;
                    return false;
                }
                *w |= 1 << bit;
                sub.received += 1;
                match sub.high {
                    Some(h) if pos < h => self.check.reordered += 1,
                    _ => sub.high = Some(pos),
                }
                let lat = now.saturating_sub(sent).max(1);
                self.result.latency_ns.record(lat);
                if let Some(c) = self.check.by_url.get_mut(url) {
                    c.latency_ns.record(lat);
                }
                if let Some(m) = self.check.last_receipt_ns.get_mut(seq as usize) {
                    *m = (*m).max(lat);
                }
                false
            }
        }
    }

    fn start_echo(&mut self) {
        self.echo_running = true;
        self.echo_started_ns = mono_ns();
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for k in keys {
            self.send_echo(k);
        }
    }

    fn send_echo(&mut self, key: usize) {
        let Mode::Echo { bytes } = self.plan.mode else {
            return;
        };
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let Phase::Open(ws) = &mut conn.phase else {
            return;
        };
        let payload = padded(&mono_ns().to_string(), bytes);
        // A WouldBlock leaves the frame in tungstenite's buffer; the next writable event
        // flushes it (see on_open).
        match ws.send(Message::text(payload)) {
            Ok(()) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => self.drop_open(key, ws_cause(&e)),
        }
    }

    fn finish(mut self, published: Option<u64>) -> WorkerResult {
        let now = mono_ns();
        if self.echo_running {
            self.result.echo_window_ns = now.saturating_sub(self.echo_started_ns);
        }
        if let Mode::Fanout {
            rooms,
            messages,
            broadcast,
        } = self.plan.mode
        {
            let published = published.unwrap_or(messages as u64).min(messages as u64);
            let mut check = std::mem::take(&mut self.check);
            let plan = self.plan;
            let open = self
                .conns
                .iter()
                .filter_map(|(_, c)| match (&c.sub, &c.phase) {
                    (Some(sub), Phase::Open(_)) => {
                        Some((sub.room, sub.received, plan.url_index(c.id)))
                    }
                    _ => None,
                });
            // Subscribers dropped after their handshake lose what they did not get.
            let all: Vec<(u32, u64, usize)> =
                open.chain(self.dropped_subs.iter().copied()).collect();
            for (room, received, url) in all {
                let expected = stream_len(room, rooms, broadcast, published);
                let lost = expected.saturating_sub(received);
                check.expected += expected;
                check.received += received;
                check.lost += lost;
                if let Some(c) = check.by_url.get_mut(url) {
                    c.expected += expected;
                    c.received += received;
                    c.lost += lost;
                }
            }
            self.result.fanout = Some(check);
        }
        self.result.counters.delivered =
            self.result.counters.delivered.max(self.delivered_reported);
        let result = self.result.clone();
        self.sink.emit(Event::Done {
            worker: self.plan.index,
            result: Box::new(result.clone()),
        });
        result
    }
}

fn echo_header_len(sent: u64) -> usize {
    sent.to_string().len() + 1
}

fn parse_echo(text: &str) -> Option<u64> {
    text.split(' ').next()?.parse().ok()
}

/// Causes in a failures map, most frequent first, for the human summary.
pub fn by_count(m: &BTreeMap<String, u64>) -> Vec<(String, u64)> {
    let mut v: Vec<_> = m.iter().map(|(k, v)| (k.clone(), *v)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

/// Merged counters, for progress lines.
pub fn sum_counters<'a>(it: impl Iterator<Item = &'a Counters>) -> Counters {
    let mut c = Counters::default();
    for x in it {
        c.add(x);
    }
    c
}
