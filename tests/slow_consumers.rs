//! Slow consumers: a subscriber that stops reading is bounded by `--max-pending`
//! (closed with 1008 under `--slow-policy close`, its pushes dropped under `drop`),
//! never slows down a subscriber that keeps reading, and never makes the server's
//! memory grow without bound.
//!
//! The kernel buffers a lot on loopback (the server's send buffer can reach
//! megabytes), so the tests do not guess how much to push: they publish in batches
//! until INFO shows the policy acted, with a hard cap so a server that never acts
//! fails instead of running forever. The publisher is paced by the fast
//! subscriber's progress, which is what "a subscriber that keeps up" means.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use common::*;
use socket2::{Domain, Socket, Type};
use tungstenite::Message;

const PAYLOAD: usize = 1024;
const BATCH: usize = 100;
/// Publish at least this many messages before looking at INFO.
const MIN_MESSAGES: usize = 2000;
/// Give up (and fail) after this many: 64 MiB at 1 KiB each.
const MAX_MESSAGES: usize = 64 << 10;

/// A 1 KiB text payload that carries its sequence number in its first 8 bytes.
fn payload(seq: usize) -> String {
    let mut p = format!("{seq:08}");
    p.extend(std::iter::repeat_n('x', PAYLOAD - p.len()));
    p
}

/// The sequence number of a payload made by [`payload`], if it is one.
fn seq_of(p: &[u8]) -> Option<usize> {
    if p.len() != PAYLOAD || p[8..].iter().any(|&b| b != b'x') {
        return None;
    }
    std::str::from_utf8(&p[..8]).ok()?.parse().ok()
}

/// Upgrades a raw socket with a tiny receive buffer, so that little of what the
/// server sends to a non-reader can hide in the client's kernel buffer.
fn raw_upgrade_small_rcvbuf(addr: SocketAddr, query: &str) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.connect(&addr.into()).expect("connect");
    let mut s: TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    std::io::Write::write_all(
        &mut s,
        format!(
            "GET /ws{query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let head = read_http_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

/// A subscriber that keeps reading: it counts the in-order payloads it gets
/// until `end`, and fails on any gap, duplicate, reorder or close. It hands the
/// socket back so the connection outlives the thread.
fn spawn_fast_reader(
    mut ws: Ws,
    received: Arc<AtomicUsize>,
) -> thread::JoinHandle<(Ws, Result<usize, String>)> {
    thread::spawn(move || {
        let result = read_in_order(&mut ws, &received);
        (ws, result)
    })
}

fn read_in_order(ws: &mut Ws, received: &AtomicUsize) -> Result<usize, String> {
    loop {
        let msg = match ws.read() {
            Ok(m) => m,
            Err(e) => return Err(format!("fast subscriber: {e}")),
        };
        let n = received.load(Ordering::SeqCst);
        match msg {
            Message::Text(t) if t.as_str() == "end" => return Ok(n),
            Message::Text(t) if seq_of(t.as_bytes()) == Some(n) => {
                received.store(n + 1, Ordering::SeqCst);
            }
            Message::Close(c) => return Err(format!("fast subscriber closed: {c:?}")),
            Message::Text(t) => {
                return Err(format!(
                    "fast subscriber: expected message {n}, got {:?}",
                    &t.as_str()[..t.len().min(16)]
                ))
            }
            other if other.is_binary() => {
                return Err(format!("fast subscriber: binary frame {other:?}"))
            }
            _ => {}
        }
    }
}

/// Publishes 1 KiB payloads to `room` in pipelined batches, never more than a few
/// hundred ahead of the fast subscriber, until `done` (checked after each batch
/// once `MIN_MESSAGES` went out). Returns how many were published.
fn publish_until(
    server: &Server,
    room: &str,
    received: &AtomicUsize,
    mut done: impl FnMut() -> bool,
) -> usize {
    let mut ctl = server.control();
    let mut seq = 0;
    loop {
        let mut burst = Vec::new();
        for s in seq..seq + BATCH {
            burst.extend(Resp::encode(&["PUBLISH", room, &payload(s)]));
        }
        ctl.send_raw(&burst);
        for s in seq..seq + BATCH {
            match ctl.read() {
                Reply::Int(1 | 2) => {}
                other => panic!("PUBLISH #{s} replied {other:?}"),
            }
        }
        seq += BATCH;
        assert!(
            wait_until(Duration::from_secs(30), || received.load(Ordering::SeqCst)
                + 3 * BATCH
                >= seq),
            "the fast subscriber stopped receiving at {} of {seq}",
            received.load(Ordering::SeqCst)
        );
        if seq >= MIN_MESSAGES && done() {
            return seq;
        }
        assert!(
            seq < MAX_MESSAGES,
            "pushed {seq} x 1 KiB at a non-reader and the slow-consumer policy never acted"
        );
    }
}

#[test]
fn slow_consumer_is_closed_with_1008_while_a_fast_one_gets_every_message() {
    let server = Server::start(&["--max-pending", "64KiB"]);
    let mut slow = raw_upgrade_small_rcvbuf(server.ws, "?user=slow&rooms=feed");
    let received = Arc::new(AtomicUsize::new(0));
    let fast = spawn_fast_reader(
        ws_connect(&server.url("?user=fast&rooms=feed")),
        received.clone(),
    );

    let sent = publish_until(&server, "feed", &received, || {
        server.info_u64("slow_consumer_closes") >= 1
    });
    assert_eq!(server.control().int(&["PUBLISH", "feed", "end"]), 1);
    let (_fast, result) = fast.join().expect("fast reader");
    assert_eq!(result, Ok(sent));
    assert_eq!(read_close_code(&mut slow), Some(1008));
    assert!(
        wait_until(Duration::from_secs(10), || server
            .info_u64("connected_clients")
            == 1),
        "the slow consumer is still counted: {:?}",
        server.info()
    );
}

#[test]
fn slow_consumer_under_drop_policy_stays_connected_and_loses_only_whole_messages() {
    let server = Server::start(&["--max-pending", "64KiB", "--slow-policy", "drop"]);
    let slow = raw_upgrade_small_rcvbuf(server.ws, "?user=slow&rooms=feed,probe");
    let received = Arc::new(AtomicUsize::new(0));
    let fast = spawn_fast_reader(
        ws_connect(&server.url("?user=fast&rooms=feed")),
        received.clone(),
    );

    let sent = publish_until(&server, "feed", &received, || {
        server.info_u64("slow_consumer_drops") > 0
    });
    let info = server.info();
    assert_eq!(info["slow_consumer_closes"], "0", "{info:?}");
    assert_eq!(info["connected_clients"], "2", "{info:?}");
    assert_eq!(server.control().int(&["PUBLISH", "feed", "end"]), 2);
    let (_fast, result) = fast.join().expect("fast reader");
    assert_eq!(result, Ok(sent));

    // The slow one now reads: whole frames, strictly increasing, never a close,
    // and once drained it receives new pushes again.
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut slow = slow;
        let mut last: Option<usize> = None;
        let mut kept = 0usize;
        let result = loop {
            let (fin, op, p) = match read_server_frame(&mut slow) {
                Ok(f) => f,
                Err(e) => break Err(format!("slow subscriber: {e}")),
            };
            match (fin, op) {
                (true, 1) if p == b"probe" => break Ok(kept),
                (true, 1) if p == b"end" => {}
                (true, 1) => match seq_of(&p) {
                    Some(s) if last.is_none_or(|l| s > l) && s < sent => {
                        last = Some(s);
                        kept += 1;
                    }
                    _ => break Err(format!("torn, repeated or reordered push after {last:?}")),
                },
                (_, 8) => break Err("the slow subscriber was closed".to_string()),
                other => break Err(format!("unexpected frame {other:?}")),
            }
        };
        let _ = tx.send(result);
    });
    let mut ctl = server.control();
    let mut outcome = None;
    for _ in 0..300 {
        assert_eq!(ctl.int(&["PUBLISH", "probe", "probe"]), 1);
        if let Ok(r) = rx.recv_timeout(Duration::from_millis(100)) {
            outcome = Some(r);
            break;
        }
    }
    let kept = outcome
        .expect("the slow subscriber never received a push after draining")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(kept < sent, "nothing was dropped for the slow subscriber");
}

/// The most the server's RSS may grow while a non-reader is pushed at: a 1 MiB
/// --max-pending queue, a turn's staged frames and the control input buffer, with
/// room to spare, and far less than what is pushed.
const RSS_BOUND: u64 = 32 << 20;
/// What is pushed at the non-reader: five times the bound, so a server that kept
/// everything for it (bar what the kernel buffers) fails.
const RSS_PUSHED: u64 = 5 * RSS_BOUND;

/// Pushes `RSS_PUSHED` bytes in 64 KiB payloads to room `firehose`, whose only
/// member never reads; returns (baseline RSS, peak RSS).
fn rss_while_pushing_to_firehose(server: &Server) -> (u64, u64) {
    const BIG: usize = 64 << 10;
    const PIPELINE: usize = 16;
    let mut ctl = server.control();
    let big = "z".repeat(BIG);
    let burst: Vec<u8> = (0..PIPELINE)
        .flat_map(|_| Resp::encode(&["PUBLISH", "firehose", &big]))
        .collect();
    let baseline = server.rss();
    assert!(baseline > 0, "cannot read the server's RSS");
    let mut peak = baseline;
    let bursts = RSS_PUSHED as usize / (BIG * PIPELINE);
    for _ in 0..bursts {
        ctl.send_raw(&burst);
        for _ in 0..PIPELINE {
            assert_eq!(ctl.read(), Reply::Int(1));
        }
        peak = peak.max(server.rss());
    }
    (baseline, peak)
}

#[test]
fn memory_stays_bounded_while_pushing_five_times_the_bound_at_a_non_reader() {
    let server = Server::start(&["--slow-policy", "drop"]);
    let _non_reader = raw_upgrade(server.ws, "?user=idle&rooms=firehose");
    let (baseline, peak) = rss_while_pushing_to_firehose(&server);
    assert!(
        peak.saturating_sub(baseline) < RSS_BOUND,
        "RSS grew from {baseline} to {peak} bytes while pushing {RSS_PUSHED} bytes at a \
         non-reader (bound {RSS_BOUND})"
    );
    assert!(server.info_u64("slow_consumer_drops") > 0);
    assert_eq!(server.info_u64("connected_clients"), 1);
}

/// A masked Ping frame with a 125-byte payload (the largest a control frame may carry).
fn masked_ping() -> Vec<u8> {
    let mut f = vec![0x89, 0x80 | 125, 1, 2, 3, 4];
    f.extend((0..125).map(|i| b'p' ^ [1, 2, 3, 4][i % 4]));
    f
}

#[test]
fn replies_to_a_client_that_floods_pings_and_never_reads_stay_near_max_pending() {
    // Every ping is answered with a pong (a reply: never dropped), so a client that
    // sends pings and reads nothing makes the server queue replies. Reading must stop
    // once they pass --max-pending, also within one read event (16 reads of 64 KiB of
    // pings make ~1 MiB of pongs), not only after the turn's writes.
    const MAX_PENDING: u64 = 64 << 10;
    let server = Server::start(&["--max-pending", "64KiB"]);
    let mut s = raw_upgrade_small_rcvbuf(server.ws, "?user=pinger");
    s.set_nonblocking(true).unwrap();
    let burst: Vec<u8> = (0..512).flat_map(|_| masked_ping()).collect();
    let mut sent = 0usize;
    let mut stuck_since: Option<std::time::Instant> = None;
    let mut peak = 0u64;
    // Until the server stops reading (our writes block for a second) or 64 MiB.
    while sent < 64 << 20 {
        match std::io::Write::write(&mut s, &burst) {
            Ok(n) => {
                sent += n;
                stuck_since = None;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let t = *stuck_since.get_or_insert_with(std::time::Instant::now);
                if t.elapsed() > Duration::from_secs(2) {
                    break;
                }
                peak = peak.max(server.info_u64("pending_bytes"));
                thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("write: {e}"),
        }
    }
    // The gauge is refreshed by the reactors' timer scan, once a second.
    for _ in 0..3 {
        thread::sleep(Duration::from_millis(600));
        peak = peak.max(server.info_u64("pending_bytes"));
    }
    assert!(
        sent > 4 << 20,
        "the server stopped reading after only {sent} bytes of pings"
    );
    // One read (64 KiB of pings) past the bound is the most it may take.
    assert!(
        peak <= 2 * MAX_PENDING + (64 << 10),
        "{peak} bytes of pongs queued for a client that reads nothing (--max-pending {MAX_PENDING})"
    );
    assert_eq!(server.info_u64("connected_clients"), 1);
}
