//! A connection's life outside single frames, against the real binary: heartbeats
//! and the idle timeout, the handshake timeout, thousands of connections spread over
//! every reactor, and graceful shutdown on SIGTERM. Timeouts here are short so the
//! tests are quick, but nothing asserts how long anything took: each test waits
//! generously for the event the rule demands and fails only if it never comes.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

const PING: u8 = 0x9;

/// True once the peer has closed `s` (EOF, reset, or a failed write), polling for up
/// to `limit`; `poke` is written every round so a server that only notices a dead
/// peer when writing still gets the chance.
fn closed_within(s: &mut TcpStream, limit: Duration, poke: &[u8]) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 256];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
        if !poke.is_empty() && s.write_all(poke).is_err() {
            return true;
        }
    }
    false
}

#[test]
fn silent_client_gets_a_ping_then_close_1001_at_the_idle_timeout() {
    let server = Server::start(&["--ping-interval", "200ms", "--idle-timeout", "600ms"]);
    let mut s = raw_upgrade(server.ws, "");
    let (fin, op, payload) = read_server_frame(&mut s).expect("a ping");
    assert_eq!((fin, op), (true, PING));
    assert!(payload.len() <= 125);
    assert_eq!(read_close_code(&mut s), Some(1001));
    read_until_server_closes(&mut s);
    assert_info_eventually(&server, "idle_closes", 1);
    assert!(server.info_u64("pings_sent") >= 1);
}

#[test]
fn client_that_answers_pings_stays_open_past_several_idle_timeouts() {
    let server = Server::start(&[
        "--echo",
        "--ping-interval",
        "200ms",
        "--idle-timeout",
        "600ms",
    ]);
    let mut ws = ws_connect(&server.url(""));
    ws.get_mut()
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    // tungstenite answers each ping with a pong as part of reading; the client sends
    // nothing else for four idle periods.
    let mut pings = 0;
    let until = Instant::now() + Duration::from_millis(2400);
    while Instant::now() < until {
        match ws.read() {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("connection ended while answering pings: {e}"),
        }
    }
    assert!(pings >= 1, "the server never pinged");
    ws.get_mut()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    ws.send(Message::text("still open")).unwrap();
    assert_eq!(next_text(&mut ws), "still open");
    assert_eq!(server.info_u64("idle_closes"), 0);
}

#[test]
fn closes_connection_that_sends_half_a_request_at_the_handshake_timeout() {
    let server = Server::start(&["--handshake-timeout", "300ms"]);
    let mut s = TcpStream::connect(server.ws).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: webs",
        server.ws
    )
    .unwrap();
    read_until_server_closes(&mut s);
    assert_info_eventually(&server, "handshake_failures_timeout", 1);
}

#[test]
fn closes_connection_that_trickles_its_request_past_the_handshake_timeout() {
    let server = Server::start(&["--handshake-timeout", "300ms"]);
    let mut s = TcpStream::connect(server.ws).unwrap();
    // A byte every 50 ms never lets the connection go quiet for 300 ms; the timeout
    // is for finishing the handshake, so it must still end. Twenty timeouts' worth
    // of time is allowed.
    s.write_all(b"GET /ws HTTP/1.1\r\nX-Slow: ").unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(6), b"a"),
        "a request trickled one byte at a time was never timed out"
    );
    assert_info_eventually(&server, "handshake_failures_timeout", 1);
}

#[test]
fn closing_connection_that_keeps_sending_is_dropped_at_the_close_timeout() {
    let server = Server::start(&["--max-message", "1000"]);
    let mut s = raw_upgrade(server.ws, "");
    // A frame header announcing 10 MB: failed with 1009 at once, and the server
    // discards what follows while it waits for the client to close.
    let mut header = vec![0x82, 0x80 | 127];
    header.extend_from_slice(&10_000_000u64.to_be_bytes());
    header.extend_from_slice(&[0, 0, 0, 0]);
    s.write_all(&header).unwrap();
    assert_eq!(read_close_code(&mut s), Some(1009));
    read_until_server_closes(&mut s);
    // The client never closes and keeps the payload coming. Reads do not keep a
    // closing connection alive: the server drops it (the close timeout is 5 s; three
    // times that is allowed), which the next write sees as a reset.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut dropped = false;
    while !dropped && Instant::now() < deadline {
        dropped = s.write_all(&[0u8; 64]).is_err();
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        dropped,
        "a closing connection that kept sending was never dropped"
    );
    assert_info_eventually(&server, "sockets", 0);
}

#[test]
fn two_thousand_connections_spread_over_every_reactor_all_receive_a_broadcast() {
    const CONNS: usize = 2000;
    raise_fd_limit(2 * CONNS as u64 + 200);
    let server = Server::start(&["--threads", "2"]);
    let mut socks: Vec<TcpStream> = (0..CONNS).map(|_| raw_upgrade(server.ws, "")).collect();
    assert_info_eventually(&server, "connected_clients", CONNS as u64);
    let info = server.info();
    let per_reactor = [
        reactor_field(&info, 0, "connections"),
        reactor_field(&info, 1, "connections"),
    ];
    assert!(
        per_reactor.iter().all(|&n| n > 0),
        "a reactor holds no connection: {per_reactor:?}"
    );
    assert_eq!(per_reactor.iter().sum::<u64>(), CONNS as u64);

    let mut ctl = server.control();
    assert_eq!(ctl.int(&["BROADCAST", "to everyone"]), CONNS as i64);
    for (i, s) in socks.iter_mut().enumerate() {
        let frame = read_server_frame(s).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert_eq!(
            frame,
            (true, 0x1, b"to everyone".to_vec()),
            "connection {i}"
        );
    }
}

#[test]
fn sigterm_sends_1001_to_open_connections_and_exits_0_once_they_close() {
    let mut server = Server::start(&["--shutdown-grace", "10s"]);
    let mut raw = raw_upgrade(server.ws, "");
    let mut ws = ws_connect(&server.url(""));
    assert_info_eventually(&server, "connected_clients", 2);
    // A raw client that answers the close, and tungstenite (which answers by itself).
    let raw_client = std::thread::spawn(move || {
        let code = read_close_code(&mut raw);
        let _ = raw.write_all(&client_frame(true, 0x8, &1001u16.to_be_bytes()));
        read_until_server_closes(&mut raw);
        code
    });
    let ws_client = std::thread::spawn(move || loop {
        match ws.read() {
            Ok(Message::Close(frame)) => return frame.map(|f| f.code),
            Ok(_) => {}
            Err(e) => panic!("no Close frame before the end: {e}"),
        }
    });
    let status = server.terminate();
    assert_eq!(raw_client.join().unwrap(), Some(1001));
    assert_eq!(ws_client.join().unwrap(), Some(CloseCode::Away));
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn sigterm_exits_0_after_the_grace_even_if_a_client_never_answers_the_close() {
    let mut server = Server::start(&["--shutdown-grace", "1s"]);
    let mut silent = raw_upgrade(server.ws, "");
    assert_info_eventually(&server, "connected_clients", 1);
    // The client reads but never sends a Close back, nor closes its socket; the
    // server must give up after the grace and exit on its own (the harness kills it
    // only after 20 s, which would not be a success).
    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(read_close_code(&mut silent), Some(1001));
}
