//! Defects found by review (issue 7), each pinned by the behaviour the RFCs and the
//! README promise: half-closed clients still get their answers, handshakes have their
//! own budget that never holds established capacity, and /healthz reports the
//! threads' health.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use common::*;

/// Sends `request`, shuts the write side (like `nc -N`), returns all that comes back.
fn half_closed_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    String::from_utf8_lossy(&read_until_server_closes(&mut s)).into_owned()
}

#[test]
fn half_closed_client_gets_its_healthz_answer() {
    let server = Server::start(&[]);
    let got = half_closed_exchange(server.ws, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(got.starts_with("HTTP/1.1 200 OK"), "{got:?}");
    assert!(got.ends_with("ok\n"), "{got:?}");
}

#[test]
fn half_closed_client_gets_its_4xx_and_503_answers() {
    let server = Server::start(&["--max-connections", "1"]);
    let got = half_closed_exchange(server.ws, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(got.starts_with("HTTP/1.1 404"), "{got:?}");
    let got = half_closed_exchange(
        server.ws,
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
    );
    assert!(got.starts_with("HTTP/1.1 426"), "{got:?}");
    let _held = raw_upgrade(server.ws, "");
    let got = half_closed_exchange(server.ws, &upgrade_request(server.ws, "/ws", ""));
    assert!(got.starts_with("HTTP/1.1 503"), "{got:?}");
}

#[test]
fn close_then_half_close_still_gets_the_answering_close_frame() {
    let server = Server::start(&[]);
    let mut s = raw_upgrade(server.ws, "");
    s.write_all(&client_frame(true, 0x8, &1000u16.to_be_bytes()))
        .unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_close_code(&mut s), Some(1000));
    assert!(read_until_server_closes(&mut s).is_empty());
}

#[test]
fn ping_then_half_close_still_gets_the_pong() {
    let server = Server::start(&[]);
    let mut s = raw_upgrade(server.ws, "");
    s.write_all(&client_frame(true, 0x9, b"are you there"))
        .unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let (fin, op, payload) = read_server_frame(&mut s).unwrap();
    assert!(fin);
    assert_eq!((op, &payload[..]), (0xA, &b"are you there"[..]));
    read_until_server_closes(&mut s);
    // The connection was counted as gone.
    assert!(wait_until(Duration::from_secs(5), || server
        .info_u64("connected_clients")
        == 0));
}

/// Sockets that never finish their request hold handshake slots, not established
/// ones: with the handshake budget full, newcomers get a quick 503, and clients that
/// do upgrade can still take every established slot.
#[test]
fn unfinished_handshakes_never_hold_established_capacity() {
    let server = Server::start(&["--max-handshakes", "4", "--max-connections", "3"]);
    let mut stuck: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect(server.ws).unwrap();
            s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").unwrap();
            s
        })
        .collect();
    assert!(wait_until(Duration::from_secs(5), || server
        .info_u64("handshaking")
        == 4));
    // Over the budget: refused at once with Retry-After, whatever it sends.
    let (mut s, head) = raw_request(server.ws, b"GET /ws HTTP/1.1\r\nHost: x\r\n");
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(head.contains("Retry-After: 1\r\n"), "{head}");
    read_until_server_closes(&mut s);
    assert!(wait_until(Duration::from_secs(5), || server
        .info_u64("handshakes_refused_busy")
        >= 1));
    // One stuck socket gives up; its slot serves an upgrade, and so on: all three
    // established slots are taken while the other handshakes stay stuck.
    let mut open = Vec::new();
    for _ in 0..3 {
        drop(stuck.pop());
        assert!(wait_until(Duration::from_secs(5), || server
            .info_u64("handshaking")
            < 4));
        open.push(raw_upgrade(server.ws, ""));
    }
    assert_eq!(server.info_u64("connected_clients"), 3);
    assert_eq!(server.info_u64("handshaking"), 1);
    // Established capacity is full: the next upgrade gets the connection limit's 503.
    let (_s, head) = raw_request(server.ws, &upgrade_request(server.ws, "/ws", ""));
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(wait_until(Duration::from_secs(5), || server
        .info_u64("handshake_failures_capacity")
        >= 1));
    // A closed connection gives its slot back.
    drop(open.pop());
    assert!(wait_until(Duration::from_secs(5), || server
        .info_u64("established_slots")
        == 2));
    let _again = raw_upgrade(server.ws, "");
}

#[test]
fn healthz_is_200_while_every_thread_runs() {
    let server = Server::start(&["--threads", "2"]);
    for _ in 0..4 {
        let (mut s, head) = raw_request(server.ws, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        assert_eq!(body, "ok\n");
    }
}
