//! One non-blocking connection to a Redis instance: connect, log in, pipeline commands,
//! read replies, notice that it died, and come back after a back-off.
//!
//! It runs on the dispatcher's `mio::Poll` and never blocks: the connect is
//! non-blocking, writes are queued and flushed once per dispatcher turn, reads stop
//! after [`READ_BUDGET`] bytes per turn (the rest stays in the socket, and Redis's own
//! output-buffer limit is what finally bounds a node that cannot keep up). A
//! connection that answers nothing for [`REPLY_TIMEOUT`] while a reply is due is taken
//! for dead, so a vanished host is noticed without waiting for TCP to give up.
//!
//! Replies are matched to what asked for them in order (Redis answers a connection's
//! commands in order). Once a subscriber connection has subscribed, what Redis sends
//! it is no longer answers but pushes (`message`, `subscribe`, `pong` arrays); the
//! owner reads those as [`Input::Pushed`].

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, warn};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::super::url::RedisUrl;
use crate::control::reply::{Reply, ReplyLimits, ReplyParser};
use crate::control::resp;

/// A connect, or a due reply, that takes longer than this fails the connection.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(3);
/// An idle connection sends a PING this often, so a dead peer is noticed.
pub const PING_INTERVAL: Duration = Duration::from_secs(1);
/// Bytes read from one connection per dispatcher turn.
pub const READ_BUDGET: usize = 4 << 20;
/// First reconnect delay; doubled per failed attempt up to [`BACKOFF_MAX`], then
/// jittered by ±50 % so a fleet does not reconnect in lockstep.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What a reply in the queue answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// AUTH, SELECT or CLIENT SETNAME while logging in: an error fails the connection.
    Setup,
    /// A keep-alive PING.
    Ping,
    /// An owner's command, by the owner's tag.
    Tagged(u64),
    /// An owner's command whose reply only matters if it is an error.
    Untagged,
}

/// Where the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not connected; the next attempt is due at `retry_at`.
    Down { retry_at: Instant },
    /// The TCP connect is in progress.
    Connecting { since: Instant },
    /// Connected, login commands sent, their replies not all in.
    LoggingIn,
    /// Logged in: usable.
    Ready,
}

/// What the connection reports to its owner.
#[derive(Debug)]
pub enum Input {
    /// Logged in (after a connect or a reconnect).
    Up,
    /// Lost (or never made); every tagged command still waiting was answered with
    /// [`Input::Lost`] first.
    Down,
    /// The reply to a tagged (or untagged) command.
    Answer(Expect, Reply),
    /// A tagged command that will never be answered: the connection died first.
    Lost(u64),
    /// Something Redis sent that answers nothing: pub/sub pushes.
    Pushed(Reply),
}

pub struct Conn {
    addr: SocketAddr,
    url: RedisUrl,
    /// `CLIENT SETNAME`, so operators can tell our connections apart in CLIENT LIST.
    name: String,
    token: Token,
    stream: Option<TcpStream>,
    state: State,
    /// Subscriber connections stop matching replies once logged in (see module doc).
    subscriber: bool,
    /// Bytes queued, not yet written.
    out: Vec<u8>,
    writable: bool,
    /// Bytes read, not yet parsed.
    input: Vec<u8>,
    parser: ReplyParser,
    limits: ReplyLimits,
    expect: VecDeque<Expect>,
    /// A subscriber's PING awaiting its pong.
    awaiting_pong: bool,
    last_read: Instant,
    last_write: Instant,
    /// Failed attempts since the connection was last up (for the back-off).
    failures: u32,
    /// Seeds the jitter.
    rng: u64,
    /// Whether the last read stopped at the budget with data possibly left.
    more: bool,
    /// Why the connection last went down (for INFO and the log).
    pub last_error: Option<String>,
}

impl Conn {
    pub fn new(
        addr: SocketAddr,
        url: RedisUrl,
        name: String,
        token: Token,
        subscriber: bool,
        max_bulk: usize,
        seed: u64,
    ) -> Conn {
        let now = Instant::now();
        let limits = ReplyLimits {
            max_bulk,
            max_elements: 1 << 17,
            max_depth: 8,
        };
        Conn {
            addr,
            url,
            name,
            token,
            stream: None,
            state: State::Down { retry_at: now },
            subscriber,
            out: Vec::new(),
            writable: false,
            input: Vec::new(),
            parser: ReplyParser::new(limits),
            limits,
            expect: VecDeque::new(),
            awaiting_pong: false,
            last_read: now,
            last_write: now,
            failures: 0,
            rng: seed | 1,
            more: false,
            last_error: None,
        }
    }

    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn token(&self) -> Token {
        self.token
    }

    /// Bytes queued and not yet written.
    pub fn backlog(&self) -> usize {
        self.out.len()
    }

    /// Replies due.
    pub fn in_flight(&self) -> usize {
        self.expect.len()
    }

    /// Whether a read stopped at the budget: call [`Conn::on_event`] again next turn.
    pub fn has_more(&self) -> bool {
        self.more
    }

    /// Queues a command (written at the next [`Conn::flush`]). Only while ready — or
    /// logging in, for the owner's first commands after login (they queue behind it).
    pub fn send<A: AsRef<[u8]>>(&mut self, args: &[A], expect: Expect) {
        resp::write_command(&mut self.out, args);
        // A subscribed connection's replies are pushes, matched by their shape.
        if !(self.subscriber && self.state == State::Ready) {
            self.expect.push_back(expect);
        }
    }

    /// Timers: connect attempts, timeouts, keep-alive pings.
    pub fn tick(&mut self, registry: &Registry, now: Instant, out: &mut Vec<Input>) {
        match self.state {
            State::Down { retry_at } if now >= retry_at => self.connect(registry, now, out),
            State::Down { .. } => {}
            State::Connecting { since } => {
                if now.saturating_duration_since(since) >= REPLY_TIMEOUT {
                    self.fail(registry, now, "connect timed out".into(), out);
                }
            }
            State::LoggingIn | State::Ready => {
                let due = !self.expect.is_empty() || self.awaiting_pong;
                if due && now.saturating_duration_since(self.last_read) >= REPLY_TIMEOUT {
                    self.fail(registry, now, "no reply within 3 s".into(), out);
                    return;
                }
                if self.state == State::Ready
                    && !due
                    && now.saturating_duration_since(self.last_write) >= PING_INTERVAL
                {
                    resp::write_command(&mut self.out, &["PING"]);
                    if self.subscriber {
                        self.awaiting_pong = true;
                    } else {
                        self.expect.push_back(Expect::Ping);
                    }
                    // Counted from the ping, not from the last (possibly old) read.
                    self.last_read = now;
                }
            }
        }
    }

    fn connect(&mut self, registry: &Registry, now: Instant, out: &mut Vec<Input>) {
        match TcpStream::connect(self.addr) {
            Ok(mut s) => {
                if let Err(e) =
                    registry.register(&mut s, self.token, Interest::READABLE | Interest::WRITABLE)
                {
                    self.fail(registry, now, format!("register: {e}"), out);
                    return;
                }
                let _ = s.set_nodelay(true);
                self.stream = Some(s);
                self.writable = false;
                self.state = State::Connecting { since: now };
            }
            Err(e) => self.fail(registry, now, format!("connect: {e}"), out),
        }
    }

    /// A poll event for this connection's token.
    pub fn on_event(&mut self, registry: &Registry, now: Instant, out: &mut Vec<Input>) {
        if let State::Connecting { .. } = self.state {
            let Some(s) = &self.stream else { return };
            match s.take_error() {
                Ok(Some(e)) | Err(e) => {
                    self.fail(registry, now, format!("connect: {e}"), out);
                    return;
                }
                Ok(None) => {}
            }
            match s.peer_addr() {
                Ok(_) => self.logged_in_soon(now),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => {
                    self.fail(registry, now, format!("connect: {e}"), out);
                    return;
                }
            }
        }
        self.writable = true;
        self.read(registry, now, out);
    }

    /// Connected: queue the login commands.
    fn logged_in_soon(&mut self, now: Instant) {
        self.state = State::LoggingIn;
        self.last_read = now;
        self.writable = true;
        let mut login = std::mem::take(&mut self.out);
        login.clear();
        if let Some(password) = &self.url.password {
            match &self.url.username {
                Some(user) => resp::write_command(&mut login, &["AUTH", user, password]),
                None => resp::write_command(&mut login, &["AUTH", password]),
            }
            self.expect.push_back(Expect::Setup);
        }
        if self.url.db != 0 && !self.subscriber {
            resp::write_command(&mut login, &["SELECT", &self.url.db.to_string()]);
            self.expect.push_back(Expect::Setup);
        }
        resp::write_command(&mut login, &["CLIENT", "SETNAME", &self.name]);
        self.expect.push_back(Expect::Setup);
        self.out = login;
    }

    fn read(&mut self, registry: &Registry, now: Instant, out: &mut Vec<Input>) {
        self.more = false;
        let mut budget = READ_BUDGET;
        let mut buf = [0u8; 64 * 1024];
        loop {
            let Some(s) = &mut self.stream else { return };
            match s.read(&mut buf) {
                Ok(0) => {
                    self.fail(registry, now, "closed by Redis".into(), out);
                    return;
                }
                Ok(n) => {
                    self.last_read = now;
                    self.input.extend_from_slice(&buf[..n]);
                    if !self.parse(registry, now, out) {
                        return;
                    }
                    budget = budget.saturating_sub(n);
                    if budget == 0 {
                        self.more = true;
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.fail(registry, now, format!("read: {e}"), out);
                    return;
                }
            }
        }
    }

    /// Parses what was read; false if the connection failed.
    fn parse(&mut self, registry: &Registry, now: Instant, out: &mut Vec<Input>) -> bool {
        let mut used = 0;
        loop {
            match self.parser.parse(&self.input[used..]) {
                Ok(Some((n, reply))) => {
                    used += n;
                    if let Err(why) = self.dispatch(reply, out) {
                        self.fail(registry, now, why, out);
                        return false;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    self.fail(registry, now, format!("{e}"), out);
                    return false;
                }
            }
        }
        self.input.drain(..used);
        if self.input.is_empty() && self.input.capacity() > 1 << 20 {
            self.input = Vec::new();
        }
        true
    }

    fn dispatch(&mut self, reply: Reply, out: &mut Vec<Input>) -> Result<(), String> {
        if self.subscriber && self.state == State::Ready {
            if is_pong(&reply) {
                self.awaiting_pong = false;
            } else if let Reply::Error(e) = &reply {
                return Err(format!("Redis error: {}", String::from_utf8_lossy(e)));
            } else {
                out.push(Input::Pushed(reply));
            }
            return Ok(());
        }
        let Some(expect) = self.expect.pop_front() else {
            return Err("a reply nothing asked for".into());
        };
        match expect {
            Expect::Setup => {
                if let Reply::Error(e) = &reply {
                    return Err(format!("login: {}", String::from_utf8_lossy(e)));
                }
                if self.state == State::LoggingIn
                    && !self.expect.iter().any(|e| *e == Expect::Setup)
                {
                    self.state = State::Ready;
                    self.failures = 0;
                    self.last_error = None;
                    out.push(Input::Up);
                }
            }
            Expect::Ping => {}
            other => out.push(Input::Answer(other, reply)),
        }
        Ok(())
    }

    /// Writes what is queued, as far as the socket takes it.
    pub fn flush(&mut self, registry: &Registry, now: Instant, out: &mut Vec<Input>) {
        if self.out.is_empty() || !self.writable {
            return;
        }
        if !matches!(self.state, State::LoggingIn | State::Ready) {
            return;
        }
        let mut written = 0;
        let result = loop {
            let Some(s) = &mut self.stream else { return };
            match s.write(&self.out[written..]) {
                Ok(0) => break Err("write returned 0".to_string()),
                Ok(n) => {
                    written += n;
                    if written == self.out.len() {
                        break Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.writable = false;
                    break Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(format!("write: {e}")),
            }
        };
        if written > 0 {
            self.last_write = now;
            self.out.drain(..written);
            if self.out.is_empty() && self.out.capacity() > 1 << 20 {
                self.out = Vec::new();
            }
        }
        if let Err(why) = result {
            self.fail(registry, now, why, out);
        }
    }

    /// Drops the connection: what waits is answered as lost, the next attempt is
    /// scheduled with back-off.
    pub fn fail(&mut self, registry: &Registry, now: Instant, why: String, out: &mut Vec<Input>) {
        let was_up = matches!(self.state, State::LoggingIn | State::Ready);
        if let Some(mut s) = self.stream.take() {
            let _ = registry.deregister(&mut s);
        }
        for e in self.expect.drain(..) {
            if let Expect::Tagged(tag) = e {
                out.push(Input::Lost(tag));
            }
        }
        self.out = Vec::new();
        self.input = Vec::new();
        self.parser = ReplyParser::new(self.limits);
        self.awaiting_pong = false;
        self.more = false;
        self.failures = self.failures.saturating_add(1);
        let delay = self.backoff();
        self.state = State::Down {
            retry_at: now + delay,
        };
        if was_up || self.last_error.as_deref() != Some(why.as_str()) {
            warn!(
                "broker: {} ({}): {why}; retrying in {delay:?}",
                self.url,
                if self.subscriber {
                    "subscriber"
                } else {
                    "commands"
                }
            );
        } else {
            debug!("broker: {}: {why}; retrying in {delay:?}", self.url);
        }
        self.last_error = Some(why);
        if was_up {
            out.push(Input::Down);
        }
    }

    /// Capped exponential back-off with ±50 % jitter.
    fn backoff(&mut self) -> Duration {
        let exp = self.failures.saturating_sub(1).min(16);
        let base = BACKOFF_MIN.saturating_mul(1 << exp).min(BACKOFF_MAX);
        // xorshift64: jitter needs no cryptographic quality, only spread.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let frac = (self.rng % 1000) as f64 / 1000.0; // 0 ..< 1
        base.mul_f64(0.5 + frac)
    }
}

/// `+PONG`, or the `["pong", ""]` a subscribed RESP2 connection answers.
fn is_pong(reply: &Reply) -> bool {
    match reply {
        Reply::Simple(s) => s.eq_ignore_ascii_case(b"pong"),
        Reply::Array(Some(items)) => matches!(
            items.first(),
            Some(Reply::Bulk(Some(k))) if k.eq_ignore_ascii_case(b"pong")
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> Conn {
        let url: RedisUrl = "redis://127.0.0.1:1".parse().unwrap();
        let addr = "127.0.0.1:1".parse().unwrap();
        Conn::new(addr, url, "t".into(), Token(0), false, 1024, 7)
    }

    #[test]
    fn back_off_doubles_to_its_cap_with_jitter_of_half_either_way() {
        let mut c = conn();
        for failures in 1..=12u32 {
            c.failures = failures;
            let base = BACKOFF_MIN
                .saturating_mul(1 << (failures - 1).min(16))
                .min(BACKOFF_MAX);
            for _ in 0..50 {
                let d = c.backoff();
                assert!(
                    d >= base.mul_f64(0.5) && d < base.mul_f64(1.5),
                    "{d:?} for {base:?}"
                );
            }
        }
    }

    #[test]
    fn jitter_spreads_the_retries() {
        let mut c = conn();
        c.failures = 20;
        let delays: std::collections::BTreeSet<u128> =
            (0..100).map(|_| c.backoff().as_millis()).collect();
        assert!(delays.len() > 50, "only {} distinct delays", delays.len());
    }

    #[test]
    fn pongs_are_recognised_in_both_forms() {
        assert!(is_pong(&Reply::Simple(b"PONG".to_vec())));
        assert!(is_pong(&Reply::Array(Some(vec![
            Reply::Bulk(Some(b"pong".to_vec())),
            Reply::Bulk(Some(Vec::new())),
        ]))));
        assert!(!is_pong(&Reply::Array(Some(vec![Reply::Bulk(Some(
            b"message".to_vec()
        ))]))));
    }

    #[test]
    fn a_connection_to_a_closed_port_fails_and_schedules_a_retry() {
        // Port 1 on loopback: nothing listens; the connect fails (at once or on the
        // first event) and the connection goes Down with a retry time, never Ready.
        let mut poll = mio::Poll::new().unwrap();
        let mut c = conn();
        let mut out = Vec::new();
        let now = Instant::now();
        c.tick(poll.registry(), now, &mut out);
        let mut events = mio::Events::with_capacity(4);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !matches!(c.state(), State::Down { .. }) && Instant::now() < deadline {
            poll.poll(&mut events, Some(Duration::from_millis(100)))
                .unwrap();
            c.on_event(poll.registry(), Instant::now(), &mut out);
        }
        assert!(matches!(c.state(), State::Down { retry_at } if retry_at > now));
        assert!(c.last_error.is_some());
        assert!(!out.iter().any(|i| matches!(i, Input::Up)));
    }
}
