//! Limits per client address and the real client address behind a balancer
//! (issue 8 §3–4): raw sockets from several 127.0.0.x sources, PROXY protocol v1/v2
//! headers written by hand from the spec, X-Forwarded-For from trusted and untrusted
//! peers.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use proptest::prelude::*;

/// A connection from source address `src` (any free port).
fn connect_from(src: &str, to: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let from: SocketAddr = format!("{src}:0").parse().unwrap();
    sock.bind(&from.into()).unwrap();
    sock.connect(&to.into()).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Sends `prefix` + an upgrade request from `src`; returns the stream and the head.
fn upgrade_from(src: &str, server: &Server, prefix: &[u8], extra: &str) -> (TcpStream, String) {
    let mut s = connect_from(src, server.ws);
    let mut req = prefix.to_vec();
    req.extend(upgrade_request(server.ws, "/ws", extra));
    s.write_all(&req).unwrap();
    let head = read_http_head(&mut s);
    (s, head)
}

fn status(head: &str) -> &str {
    head.lines().next().unwrap_or("")
}

#[test]
fn the_connection_over_the_per_address_limit_gets_429() {
    let server = Server::start(&["--max-conns-per-ip", "2"]);
    let (_a, h) = upgrade_from("127.0.0.2", &server, b"", "");
    assert!(status(&h).ends_with("101 Switching Protocols"), "{h}");
    let (_b, h) = upgrade_from("127.0.0.2", &server, b"", "");
    assert!(status(&h).contains(" 101 "), "{h}");
    let (_c, h) = upgrade_from("127.0.0.2", &server, b"", "");
    assert!(status(&h).contains(" 429 "), "{h}");
    // Another address has its own count.
    let (_d, h) = upgrade_from("127.0.0.3", &server, b"", "");
    assert!(status(&h).contains(" 101 "), "{h}");
    // A closed connection gives its count back.
    drop(_a);
    assert!(wait_until(Duration::from_secs(5), || {
        let (_s, h) = upgrade_from("127.0.0.2", &server, b"", "");
        status(&h).contains(" 101 ")
    }));
    assert!(server.info_u64("address_refusals_conns_per_ip") >= 1);
    assert!(server.info_u64("tracked_addresses") >= 2);
}

#[test]
fn handshakes_over_the_per_address_rate_get_429_with_retry_after() {
    let server = Server::start(&["--handshake-rate-per-ip", "3"]);
    let started = Instant::now();
    let heads: Vec<String> = (0..4)
        .map(|_| upgrade_from("127.0.0.4", &server, b"", "").1)
        .collect();
    // The burst is 3; the fourth within the same second is refused.
    if started.elapsed() < Duration::from_millis(300) {
        assert!(
            heads[..3].iter().all(|h| status(h).contains(" 101 ")),
            "{heads:?}"
        );
        assert!(status(&heads[3]).contains(" 429 "), "{heads:?}");
        assert!(heads[3].contains("Retry-After: 1\r\n"), "{}", heads[3]);
    }
    // Other addresses are not affected.
    let (_s, h) = upgrade_from("127.0.0.5", &server, b"", "");
    assert!(status(&h).contains(" 101 "), "{h}");
}

#[test]
fn the_process_handshake_rate_gives_503_with_retry_after() {
    let server = Server::start(&["--max-handshake-rate", "2"]);
    let started = Instant::now();
    let heads: Vec<String> = ["127.0.0.6", "127.0.0.7", "127.0.0.8"]
        .iter()
        .map(|src| upgrade_from(src, &server, b"", "").1)
        .collect();
    if started.elapsed() < Duration::from_millis(300) {
        assert!(status(&heads[2]).contains(" 503 "), "{heads:?}");
        assert!(heads[2].contains("Retry-After: "), "{}", heads[2]);
    }
}

fn proxy_v1(src: &str, port: u16) -> Vec<u8> {
    format!("PROXY TCP4 {src} 192.0.2.1 {port} 8080\r\n").into_bytes()
}

fn proxy_v2(src: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend([0x21, 0x11, 0, 12]);
    h.extend(src);
    h.extend([192, 0, 2, 1]);
    h.extend(port.to_be_bytes());
    h.extend(8080u16.to_be_bytes());
    h
}

#[test]
fn proxy_protocol_headers_name_the_client_and_bad_ones_are_dropped() {
    let server = Server::start(&["--proxy-protocol", "--max-conns-per-ip", "1"]);
    let (_a, h) = upgrade_from("127.0.0.9", &server, &proxy_v1("203.0.113.7", 5000), "");
    assert!(status(&h).contains(" 101 "), "{h}");
    // The same client through the same balancer: over its limit.
    let (_b, h) = upgrade_from("127.0.0.9", &server, &proxy_v2([203, 0, 113, 7], 5001), "");
    assert!(status(&h).contains(" 429 "), "{h}");
    // Another client through the same balancer (v2 header).
    let (_c, h) = upgrade_from("127.0.0.9", &server, &proxy_v2([203, 0, 113, 8], 5002), "");
    assert!(status(&h).contains(" 101 "), "{h}");
    // No header, or a malformed one: closed without an answer.
    for bad in [
        &b""[..],
        b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 80\r\n",
        b"HELLO\r\n",
    ] {
        let mut s = connect_from("127.0.0.9", server.ws);
        let mut req = bad.to_vec();
        req.extend(upgrade_request(server.ws, "/ws", ""));
        let _ = s.write_all(&req);
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        assert!(
            got.is_empty(),
            "answered {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    assert!(wait_until(Duration::from_secs(5), || server
        .info_u64("proxy_header_failures")
        >= 3));
}

#[test]
fn forwarded_headers_count_from_trusted_proxies_only() {
    let server = Server::start(&[
        "--trusted-proxy",
        "127.0.0.10/32",
        "--max-conns-per-ip",
        "1",
    ]);
    let xff = |ip: &str| format!("X-Forwarded-For: {ip}\r\n");
    // From the trusted proxy, each forwarded client is its own address.
    let (_a, h) = upgrade_from("127.0.0.10", &server, b"", &xff("198.51.100.1"));
    assert!(status(&h).contains(" 101 "), "{h}");
    let (_b, h) = upgrade_from("127.0.0.10", &server, b"", &xff("198.51.100.2"));
    assert!(status(&h).contains(" 101 "), "{h}");
    let (_c, h) = upgrade_from("127.0.0.10", &server, b"", &xff("198.51.100.1"));
    assert!(status(&h).contains(" 429 "), "{h}");
    let fwd = "Forwarded: for=198.51.100.3\r\n";
    let (_d, h) = upgrade_from("127.0.0.10", &server, b"", fwd);
    assert!(status(&h).contains(" 101 "), "{h}");
    // From an untrusted peer the header is ignored: the peer itself is counted.
    let (_e, h) = upgrade_from("127.0.0.11", &server, b"", &xff("198.51.100.4"));
    assert!(status(&h).contains(" 101 "), "{h}");
    let (_f, h) = upgrade_from("127.0.0.11", &server, b"", &xff("198.51.100.5"));
    assert!(status(&h).contains(" 429 "), "{h}");
}

/// Whatever a client sends before (or instead of) its PROXY header, the server
/// neither crashes nor holds the connection past the handshake timeout.
#[test]
fn arbitrary_bytes_never_crash_or_hang_the_proxy_phase() {
    use proptest::test_runner::{Config, TestRunner};
    let mut server = Server::start(&["--proxy-protocol", "--handshake-timeout", "1s"]);
    let mut runner = TestRunner::new(Config {
        cases: 24,
        ..Config::default()
    });
    let strategy = proptest::collection::vec(any::<u8>(), 1..300);
    runner
        .run(&strategy, |bytes| {
            let mut s = TcpStream::connect(server.ws).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(4))).unwrap();
            let _ = s.write_all(&bytes);
            let mut sink = Vec::new();
            let r = s.read_to_end(&mut sink);
            // Closed (EOF or reset), never left open past the timeout.
            let held = matches!(&r, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut));
            prop_assert!(!held, "connection held open: {r:?}");
            Ok(())
        })
        .unwrap();
    assert!(server.alive());
}
