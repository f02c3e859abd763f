//! Reactor unit tests: a reactor on a loopback listener, driven by hand (no thread),
//! for orderings of events that an integration test cannot force.

use super::*;
use crate::link::capacity::Capacity;
use crate::link::health::Liveness;
use crate::ws::handshake::HandshakeConfig;
use conn::{flag, Phase};
use std::io::{Read, Write};

fn settings() -> Settings {
    Settings {
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
        handshake_timeout: Duration::from_secs(10),
        ping_interval: Duration::ZERO,
        idle_timeout: Duration::ZERO,
        shutdown_grace: Duration::from_secs(1),
    }
}

struct Rig {
    r: Reactor,
    addr: std::net::SocketAddr,
    /// The dispatcher's end of the event channel.
    events: crossbeam_channel::Receiver<Vec<Event>>,
    /// The dispatcher's end of the reactor's channel.
    handle: ReactorHandle,
}

fn rig_with(settings: Settings, capacity: Capacity) -> Rig {
    let listener = listener::bind_listeners("127.0.0.1:0".parse().unwrap(), 1, Duration::ZERO)
        .unwrap()
        .remove(0);
    let addr = listener.local_addr().unwrap();
    let shared = Arc::new(Shared {
        settings,
        capacity: Arc::new(capacity),
        liveness: Arc::new(Liveness::new(1)),
    });
    let dpoll = Poll::new().unwrap();
    let dwaker = Arc::new(Waker::new(dpoll.registry(), WAKER).unwrap());
    let (tx, events) = crossbeam_channel::unbounded();
    let link = DispatcherLink { tx, waker: dwaker };
    let (r, handle) = Reactor::new(0, listener, shared, link).unwrap();
    Rig {
        r,
        addr,
        events,
        handle,
    }
}

fn rig() -> Rig {
    rig_with(settings(), Capacity::new(100, 100))
}

impl Rig {
    /// Runs turns until `done` or 2 s pass.
    fn turn_until(&mut self, mut done: impl FnMut(&mut Reactor) -> bool) {
        let mut events = Events::with_capacity(64);
        let deadline = Instant::now() + Duration::from_secs(2);
        while !done(&mut self.r) {
            assert!(Instant::now() < deadline, "condition not reached");
            self.r.turn(&mut events);
        }
    }

    /// A raw socket whose connection the reactor has accepted (after it sent `first`,
    /// since accept is deferred until the first bytes arrive).
    fn connect(&mut self, first: &[u8]) -> (std::net::TcpStream, u32) {
        let before: Vec<usize> = self.r.conns.iter().map(|(k, _)| k).collect();
        let mut c = std::net::TcpStream::connect(self.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        c.write_all(first).unwrap();
        let mut key = None;
        self.turn_until(|r| {
            key = r
                .conns
                .iter()
                .map(|(k, _)| k)
                .find(|k| !before.contains(k));
            key.is_some() || r.local.closed > 0
        });
        (c, key.expect("accepted") as u32)
    }

    /// An open WebSocket connection (101 already read by the client).
    fn open(&mut self, query: &str) -> (std::net::TcpStream, u32) {
        let req = format!(
            "GET /ws{query} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        let (mut c, key) = self.connect(req.as_bytes());
        self.turn_until(|r| r.conns.get(key as usize).is_some_and(|c| c.phase == Phase::Open));
        let head = read_head(&mut c);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        (c, key)
    }
}

fn read_head(c: &mut std::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(c.read(&mut b).unwrap(), 1, "closed inside the head");
        head.push(b[0]);
    }
    String::from_utf8(head).unwrap()
}

/// Everything the server sends until it closes.
fn read_to_end(c: &mut std::net::TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    out
}

/// Server frames (unmasked) in `bytes`: (opcode, payload).
fn frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 2 {
        let (len, h) = match bytes[1] & 0x7f {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => (u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize, 10),
            n => (n as usize, 2),
        };
        out.push((bytes[0] & 0x0f, bytes[h..h + len].to_vec()));
        bytes = &bytes[h + len..];
    }
    out
}

/// `read` spent its budget (the key goes on `read_again`), then the turn's flush
/// paused reading because the replies did not all go out. The next turn's
/// `read_pending` must not forget that the socket still holds unread bytes: once
/// the replies drain and reading resumes, they must be read without a new edge.
#[test]
fn review_read_again_survives_a_pause() {
    let mut rig = rig();
    let (mut c, key) = rig.open("");
    let r = &mut rig.r;
    // A masked, empty Ping sits unread in the server's socket.
    c.write_all(&[0x89, 0x80, 0, 0, 0, 0]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    // End of turn T: read() spent its budget, flush_dirty paused reading.
    r.read_again.push(key);
    r.conns[key as usize].set(flag::READ_PAUSED);
    // Turn T+1: no socket event; read_pending runs while still paused.
    r.read_pending();
    // The replies drain: the flush clears the pause.
    r.mark_dirty(key);
    r.before_sleep();
    assert!(!r.conns[key as usize].has(flag::READ_PAUSED));
    // Turn T+2 (poll returns no event for this socket: its bytes arrived long ago).
    r.read_pending();
    r.before_sleep();
    let mut pong = [0u8; 2];
    c.read_exact(&mut pong)
        .expect("the Ping left in the socket was never read");
    assert_eq!(pong, [0x8a, 0x00]);
}
