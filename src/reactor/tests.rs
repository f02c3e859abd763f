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
            forwarded_headers: false,
            assets: crate::ws::handshake::no_assets,
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
        auth: None,
        client_join: Vec::new(),
        proxy_protocol: false,
        trusted_proxies: Vec::new(),
        ipv6_prefix: 64,
        per_address_limits: false,
        access_log: false,
        compression_min_size: None,
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
        peers: Arc::new(crate::link::peers::PeerTable::unlimited()),
        epoch: Instant::now(),
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
            key = r.conns.iter().map(|(k, _)| k).find(|k| !before.contains(k));
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
        self.turn_until(|r| {
            r.conns
                .get(key as usize)
                .is_some_and(|c| c.phase == Phase::Open)
        });
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
            127 => (
                u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                10,
            ),
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

fn close_frames(frames: &[(u8, Vec<u8>)]) -> Vec<u16> {
    frames
        .iter()
        .filter(|(op, _)| *op == 0x8)
        .map(|(_, p)| u16::from_be_bytes([p[0], p[1]]))
        .collect()
}

/// RFC 6455 §5.5.1: at most one Close frame. A connection found over --max-pending
/// early in a flush, then kicked by a batch drained later in the same flush, must
/// not get a 1008 Close after its 4000 one (nor count as a slow-consumer close);
/// the push it could not take is counted as discarded.
#[test]
fn a_kick_and_a_slow_close_in_one_round_send_one_close_frame() {
    let mut rig = rig();
    let (mut slow, slow_key) = rig.open("?user=u&rooms=r");
    // Enough other members that the flush drains the channel (every 32 connections)
    // after it has written the slow one.
    let mut others: Vec<_> = (0..40).map(|_| rig.open("?rooms=r")).collect();
    let r = &mut rig.r;
    // The slow connection's socket "would block": nothing of the push fits.
    r.conns[slow_key as usize].clear(flag::WRITABLE);
    let push: Arc<[u8]> = b"\x81\x05hello".to_vec().into();
    rig.handle
        .send(ReactorMsg::Batch(vec![Command::Push {
            target: crate::link::Target::Room("r".into()),
            frame: push,
            envelope: None,
            offset: None,
            deflated: Default::default(),
        }]))
        .unwrap();
    r.drain_channel();
    // The KICK arrives while the reactor writes.
    let kick: Arc<[u8]> =
        crate::ws::frame::encode_close(crate::ws::close::CloseCode::KICKED, "bye").into();
    rig.handle
        .send(ReactorMsg::Batch(vec![Command::Kick {
            req: 1,
            user: "u".into(),
            frame: kick,
        }]))
        .unwrap();
    r.before_sleep();
    // The socket drains again.
    r.conns[slow_key as usize].set(flag::WRITABLE);
    r.mark_dirty(slow_key);
    r.before_sleep();
    let got = frames(&read_to_end(&mut slow));
    assert_eq!(close_frames(&got), vec![4000], "frames: {got:?}");
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(r.stats.slow_closes.load(Relaxed), 0);
    assert_eq!(r.stats.slow_close_discards.load(Relaxed), 1);
    assert_eq!(r.stats.kicked.load(Relaxed), 1);
    // Everyone else got the push.
    for (c, _) in &mut others {
        let mut f = [0u8; 7];
        c.read_exact(&mut f).unwrap();
        assert_eq!(&f, b"\x81\x05hello");
    }
    let acks: Vec<Event> = rig.events.try_iter().flatten().collect();
    assert!(acks.contains(&Event::Ack {
        reactor: 0,
        req: 1,
        affected: 1
    }));
}

/// The reactor clock crosses the 32-bit boundary of the ticks connections store
/// (497 days of uptime): timers must go on working across it.
#[test]
fn timers_keep_working_across_the_32_bit_tick_boundary() {
    let mut s = settings();
    s.handshake_timeout = Duration::from_millis(300);
    let mut rig = rig_with(s, Capacity::new(100, 100));
    // 0.2 s before the stored ticks wrap.
    rig.r.clock.offset = (1u64 << 32) - 20;
    let mut events = Events::with_capacity(8);
    rig.r.turn(&mut events);
    // A request that never completes, accepted just before the wrap.
    let (mut c, key) = rig.connect(b"GET /ws HTTP/1.1\r\n");
    assert!(rig.r.conns.contains(key as usize));
    assert!(rig.r.now < 1u64 << 32, "accepted after the wrap");
    rig.turn_until(|r| !r.conns.contains(key as usize));
    assert!(rig.r.now >= 1u64 << 32);
    assert!(read_to_end(&mut c).is_empty());
    // And the scan still runs after the wrap: a second one times out too.
    let (_c2, key2) = rig.connect(b"GET /ws HTTP/1.1\r\n");
    rig.turn_until(|r| !r.conns.contains(key2 as usize));
}

/// A burst larger than the turn's budget is taken in over several turns: the arena
/// never holds much more than the budget, every push still arrives in order, and the
/// capacity the burst needed is given back afterwards.
#[test]
fn a_burst_is_bounded_per_turn_delivered_whole_and_its_memory_released() {
    let mut s = settings();
    s.max_pending = 64 << 20;
    let mut rig = rig_with(s, Capacity::new(1000, 1000));
    let members = 300;
    let mut clients: Vec<_> = (0..members).map(|_| rig.open("?rooms=r").0).collect();
    // Read every client concurrently, so sockets never fill up.
    let pushes = (outbox::LINK_BUDGET / members) * 3;
    let readers: Vec<_> = clients
        .drain(..)
        .map(|mut c| {
            std::thread::spawn(move || {
                c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let mut next = 0u32;
                let mut buf = [0u8; 6];
                while (next as usize) < pushes {
                    c.read_exact(&mut buf).unwrap();
                    assert_eq!(buf[..2], [0x82, 4]);
                    assert_eq!(u32::from_be_bytes(buf[2..].try_into().unwrap()), next);
                    next += 1;
                }
            })
        })
        .collect();
    let frame_of = |i: u32| -> Arc<[u8]> {
        let mut f = vec![0x82, 4];
        f.extend_from_slice(&i.to_be_bytes());
        f.into()
    };
    for chunk in (0..pushes as u32).collect::<Vec<_>>().chunks(1000) {
        let cmds = chunk
            .iter()
            .map(|&i| Command::Push {
                target: crate::link::Target::Room("r".into()),
                frame: frame_of(i),
                envelope: None,
                offset: None,
                deflated: Default::default(),
            })
            .collect();
        rig.handle.send(ReactorMsg::Batch(cmds)).unwrap();
    }
    let r = &mut rig.r;
    let mut turns = 0;
    let mut peak = 0;
    while r.carry.is_some() || !r.rx.is_empty() {
        r.drain_channel();
        peak = peak.max(r.outbox.links_used());
        r.before_sleep();
        turns += 1;
    }
    assert!(turns >= 3, "the burst was taken in {turns} turns");
    assert!(
        peak <= outbox::LINK_BUDGET + members,
        "a turn held {peak} links"
    );
    for t in readers {
        t.join().unwrap();
    }
    // A quiet turn gives the burst's capacity back.
    r.before_sleep();
    assert!(
        r.outbox.allocated_bytes() < 2 << 20,
        "the arena kept {} bytes",
        r.outbox.allocated_bytes()
    );
}

/// Every connection has had its answer written and its write side shut.
fn all_written(r: &mut Reactor) -> bool {
    r.conns.iter().all(|(_, c)| c.has(flag::WRITE_SHUT))
}

/// /healthz is 503 naming the thread once any server thread has stopped.
#[test]
fn healthz_is_503_when_a_thread_is_dead() {
    let mut rig = rig();
    let (mut c, _) = rig.connect(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    rig.turn_until(all_written);
    let ok = String::from_utf8(read_to_end(&mut c)).unwrap();
    assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
    let liveness = rig.r.shared.liveness.clone();
    liveness.died(liveness.dispatcher_slot());
    let (mut c, _) = rig.connect(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    rig.turn_until(all_written);
    let bad = String::from_utf8(read_to_end(&mut c)).unwrap();
    assert!(bad.starts_with("HTTP/1.1 503"), "{bad}");
    assert!(
        bad.ends_with("unhealthy: dispatcher is not running\n"),
        "{bad}"
    );
}

/// Reads that fill their share of a turn's arena (a flood of pings, each one pong
/// chunk) stop there and leave room for the dispatcher's commands: a push sent
/// meanwhile is applied in the same turn, the unread input waits for the next.
#[test]
fn a_request_flood_cannot_crowd_out_the_dispatchers_commands() {
    let mut rig = rig();
    let (mut flood, flood_key) = rig.open("");
    let (mut member, _) = rig.open("?rooms=r");
    let r = &mut rig.r;
    // Replies of this turn's reads, up to the reads' share of the arena.
    while !r.outbox.over_read_budget() {
        r.queue(flood_key, outbox::Chunk::Static(b"\x8a\x00"));
    }
    flood.write_all(&[0x89, 0x80, 0, 0, 0, 0]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    r.read(flood_key, false);
    assert_eq!(r.read_again, vec![flood_key], "the read was not deferred");
    rig.handle
        .send(ReactorMsg::Batch(vec![Command::Push {
            target: crate::link::Target::Room("r".into()),
            frame: b"\x81\x05hello".to_vec().into(),
            envelope: None,
            offset: None,
            deflated: Default::default(),
        }]))
        .unwrap();
    r.drain_channel();
    assert!(
        r.rx.is_empty() && r.carry.is_none(),
        "the push was not applied"
    );
    r.before_sleep();
    let mut f = [0u8; 7];
    member.read_exact(&mut f).unwrap();
    assert_eq!(&f, b"\x81\x05hello");
}

/// `--proxy-protocol`: a connection that sends the start of a PROXY header and then
/// nothing is closed at the handshake timeout like any unfinished handshake (found by
/// review: the PROXY phase was never timed out, so stalled sockets could exhaust the
/// handshake budget).
#[test]
fn a_partial_proxy_header_times_out() {
    let mut s = settings();
    s.proxy_protocol = true;
    s.handshake_timeout = Duration::from_millis(300);
    let mut rig = rig_with(s, Capacity::new(100, 100));
    let (_c, key) = rig.connect(b"PROXY TCP4 ");
    assert_eq!(rig.r.conns[key as usize].phase, Phase::Proxy);
    // turn_until panics after 2 s: far past the 300 ms timeout.
    rig.turn_until(|r| !r.conns.contains(key as usize));
}

/// A push's `wspush.v1` envelope costs a reactor with only raw recipients nothing: it
/// takes no slot of the turn's frame budget and is not kept until the turn ends.
#[test]
fn an_envelope_nobody_here_needs_is_not_kept() {
    let mut rig = rig();
    let (mut member, _) = rig.open("?rooms=r");
    let r = &mut rig.r;
    let envelope: Arc<[u8]> = b"\x81\x02{}".to_vec().into();
    rig.handle
        .send(ReactorMsg::Batch(vec![Command::Push {
            target: crate::link::Target::Room("r".into()),
            frame: b"\x81\x05hello".to_vec().into(),
            envelope: Some(envelope.clone()),
            offset: None,
            deflated: Default::default(),
        }]))
        .unwrap();
    r.drain_channel();
    assert_eq!(Arc::strong_count(&envelope), 1, "the envelope was kept");
    r.before_sleep();
    let mut f = [0u8; 7];
    member.read_exact(&mut f).unwrap();
    assert_eq!(&f, b"\x81\x05hello");
}

/// Found by the adversarial probe: replies to one read event's input were checked
/// against --max-pending only after the turn's writes, so a client that floods pings
/// and never reads had up to 16 reads of 64 KiB answered per event (~1 MiB of pongs
/// past the bound, per connection). Reading stops once the connection's replies pass
/// the bound, within the event: here one read's worth (max_pending is 1 byte).
#[test]
fn a_read_event_stops_reading_once_its_replies_pass_max_pending() {
    use std::os::fd::AsRawFd;
    let mut rig = rig();
    let (c, key) = rig.open("");
    let r = &mut rig.r;
    // Room for 1 MiB of unread input in the server's socket.
    socket2::SockRef::from(&r.conns[key as usize].stream)
        .set_recv_buffer_size(4 << 20)
        .unwrap();
    let ping: Vec<u8> = [0x89, 0x80 | 125, 0, 0, 0, 0]
        .into_iter()
        .chain(std::iter::repeat_n(b'p', 125))
        .collect();
    let flood: Vec<u8> = ping.repeat((2 << 20) / ping.len());
    let mut writer = c.try_clone().unwrap();
    let t = std::thread::spawn(move || {
        let _ = writer.write_all(&flood);
    });
    let fd = r.conns[key as usize].stream.as_raw_fd();
    let unread = || {
        let mut n: libc::c_int = 0;
        // SAFETY: a valid socket descriptor and a pointer to an int, as FIONREAD wants.
        unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
        n as usize
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while unread() < 1 << 20 {
        assert!(Instant::now() < deadline, "only {} bytes arrived", unread());
        std::thread::sleep(Duration::from_millis(10));
    }
    r.read(key, false);
    let queued = r.outbox.chain_reply_bytes(r.conns[key as usize].chain);
    assert!(queued > 0, "no pong queued");
    assert!(
        queued <= SCRATCH,
        "{queued} bytes of pongs queued by one read event (--max-pending 1)"
    );
    assert!(r.conns[key as usize].has(flag::READ_PAUSED));
    drop(c);
    r.before_sleep();
    drop(rig);
    let _ = t.join();
}

/// Review of the read bound above: the bytes a read starts from must be this turn's
/// replies, not pushes. Pushes drained into a connection's chain just before
/// `read_pending` were counted too, so with more than --max-pending of pushes per
/// turn a fast-reading client's request that waits in its socket (no new edge: it
/// arrived earlier) was never read while the pushes went on: each turn paused the
/// read, the flush wrote everything and resumed it, and the next turn's pushes paused
/// it again. Pushes have their own bound (the flush's slow-consumer check).
#[test]
fn pushes_in_the_chain_do_not_keep_a_reading_client_from_being_read() {
    let mut s = settings();
    s.max_pending = 4096;
    let mut rig = rig_with(s, Capacity::new(100, 100));
    let (mut c, key) = rig.open("?rooms=r");
    let r = &mut rig.r;
    // A masked Ping "x", already in the server's socket when the next turns run.
    c.write_all(&[0x89, 0x81, 0, 0, 0, 0, b'x']).unwrap();
    let mut waited = 0;
    while r.conns[key as usize]
        .stream
        .peek(&mut [0u8; 7])
        .unwrap_or(0)
        < 7
    {
        waited += 1;
        assert!(waited < 500, "the ping did not arrive");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Its input is left for `read_pending` (a read budget spent, or reading resumed).
    r.read_again.push(key);
    let push = crate::ws::frame::encode_frame(crate::ws::frame::OpCode::Text, &[b'p'; 5000]);
    let turns = 4;
    for _ in 0..turns {
        // One turn: the pushes that came, the reads left over, the writes.
        rig.handle
            .send(ReactorMsg::Batch(vec![Command::Push {
                target: crate::link::Target::Room("r".into()),
                frame: push.clone().into(),
                envelope: None,
                offset: None,
                deflated: Default::default(),
            }]))
            .unwrap();
        r.drain_channel();
        r.read_pending();
        r.before_sleep();
    }
    // The client reads everything: the pushes and, among them, its pong.
    let mut got = vec![0u8; turns * push.len() + 3];
    c.read_exact(&mut got)
        .expect("the ping was never read while pushes went on");
    let got = frames(&got);
    assert_eq!(got.iter().filter(|(op, _)| *op == 0x1).count(), turns);
    assert!(got.contains(&(0xa, b"x".to_vec())), "no pong: {got:?}");
}
