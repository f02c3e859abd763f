//! The opening handshake end to end (RFC 6455 §4.2, DESIGN.md "WebSocket"): the real
//! binary, raw sockets writing exact bytes, one test per rule. Every refused request
//! must get its status and then a closed socket; these tests never accept a response
//! that merely looks right while the connection stays open.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;

/// The value of header `name` in a response head (case-insensitive name).
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Sends `request`, expects `status`, a body of exactly `Content-Length` bytes, and
/// the server closing the connection right after. Returns the response head.
fn expect_status(server: &Server, request: &[u8], status: u16) -> String {
    let (mut s, head) = raw_request(server.ws, request);
    assert!(
        head.starts_with(&format!("HTTP/1.1 {status} ")),
        "expected {status} for {:?}, got {head:?}",
        String::from_utf8_lossy(request)
    );
    let body = read_until_server_closes(&mut s);
    let len: usize = header(&head, "Content-Length")
        .expect("Content-Length")
        .parse()
        .expect("number");
    assert_eq!(body.len(), len, "body {:?}", String::from_utf8_lossy(&body));
    head
}

/// An upgrade request for `/ws` with `header_name`'s line replaced by `replacement`
/// (an empty replacement removes it).
fn request_with(server: &Server, header_name: &str, replacement: &str) -> Vec<u8> {
    let full = String::from_utf8(upgrade_request(server.ws, "/ws", "")).unwrap();
    let mut out = String::new();
    for line in full.split_inclusive("\r\n") {
        let is_it = line
            .split_once(':')
            .is_some_and(|(k, _)| k.eq_ignore_ascii_case(header_name));
        if is_it {
            out.push_str(replacement);
        } else {
            out.push_str(line);
        }
    }
    out.into_bytes()
}

#[test]
fn accept_key_for_the_rfc_sample_key_is_the_rfc_value() {
    let server = Server::start(&[]);
    let (_s, head) = raw_request(server.ws, &upgrade_request(server.ws, "/ws", ""));
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert_eq!(
        header(&head, "Sec-WebSocket-Accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    assert!(header(&head, "Upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")));
    assert!(header(&head, "Connection").is_some_and(|v| v.eq_ignore_ascii_case("upgrade")));
    assert_info_eventually(&server, "handshakes", 1);
}

#[test]
fn rejects_missing_key_with_400() {
    let server = Server::start(&[]);
    expect_status(
        &server,
        &request_with(&server, "Sec-WebSocket-Key", ""),
        400,
    );
    assert_info_eventually(&server, "handshake_failures_key_missing", 1);
}

#[test]
fn rejects_key_that_is_not_16_bytes_of_base64_with_400() {
    let server = Server::start(&[]);
    for key in [
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25j\r\n", // 15 bytes
        "Sec-WebSocket-Key: not*base64*at*all!!!==\r\n",
    ] {
        expect_status(
            &server,
            &request_with(&server, "Sec-WebSocket-Key", key),
            400,
        );
    }
    assert_info_eventually(&server, "handshake_failures_key", 2);
}

#[test]
fn rejects_request_that_is_not_an_upgrade_with_400() {
    let server = Server::start(&[]);
    let plain = format!("GET /ws HTTP/1.1\r\nHost: {}\r\n\r\n", server.ws);
    expect_status(&server, plain.as_bytes(), 400);
    expect_status(&server, &request_with(&server, "Upgrade", ""), 400);
    expect_status(
        &server,
        &request_with(&server, "Connection", "Connection: keep-alive\r\n"),
        400,
    );
    assert_info_eventually(&server, "handshake_failures_not_upgrade", 3);
}

#[test]
fn rejects_http_1_0_with_400() {
    let server = Server::start(&[]);
    let req = String::from_utf8(upgrade_request(server.ws, "/ws", ""))
        .unwrap()
        .replacen("HTTP/1.1", "HTTP/1.0", 1);
    expect_status(&server, req.as_bytes(), 400);
    assert_info_eventually(&server, "handshake_failures_malformed", 1);
}

#[test]
fn rejects_missing_host_with_400() {
    let server = Server::start(&[]);
    expect_status(&server, &request_with(&server, "Host", ""), 400);
    assert_info_eventually(&server, "handshake_failures_host", 1);
}

#[test]
fn rejects_invalid_room_or_user_name_in_query_with_400() {
    let server = Server::start(&[]);
    for target in ["/ws?rooms=a,,b", "/ws?user=a%20b", "/ws?user=a&user=b"] {
        expect_status(&server, &upgrade_request(server.ws, target, ""), 400);
    }
    assert_info_eventually(&server, "handshake_failures_query", 3);
}

#[test]
fn rejects_origin_not_in_allow_list_with_403() {
    let server = Server::start(&["--allow-origin", "https://app.example.com"]);
    expect_status(
        &server,
        &upgrade_request(server.ws, "/ws", "Origin: https://evil.example.net\r\n"),
        403,
    );
    assert_info_eventually(&server, "handshake_failures_origin", 1);
    let (_s, head) = raw_request(
        server.ws,
        &upgrade_request(server.ws, "/ws", "Origin: https://app.example.com\r\n"),
    );
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
}

#[test]
fn rejects_unknown_path_with_404() {
    let server = Server::start(&["--path", "/push"]);
    expect_status(&server, &upgrade_request(server.ws, "/other", ""), 404);
    expect_status(&server, &upgrade_request(server.ws, "/ws", ""), 404);
    let (_s, head) = raw_request(server.ws, &upgrade_request(server.ws, "/push", ""));
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
}

#[test]
fn rejects_method_other_than_get_with_405_allowing_get() {
    let server = Server::start(&[]);
    let req = String::from_utf8(upgrade_request(server.ws, "/ws", ""))
        .unwrap()
        .replacen("GET", "POST", 1);
    let head = expect_status(&server, req.as_bytes(), 405);
    assert_eq!(header(&head, "Allow"), Some("GET"));
}

#[test]
fn rejects_version_other_than_13_with_426_naming_13() {
    let server = Server::start(&[]);
    let req = request_with(
        &server,
        "Sec-WebSocket-Version",
        "Sec-WebSocket-Version: 8\r\n",
    );
    let head = expect_status(&server, &req, 426);
    assert_eq!(header(&head, "Sec-WebSocket-Version"), Some("13"));
    assert_info_eventually(&server, "handshake_failures_version", 1);
}

#[test]
fn rejects_request_head_over_8_kib_with_431() {
    let server = Server::start(&[]);
    let filler = format!("X-Filler: {}\r\n", "a".repeat(9000));
    expect_status(&server, &upgrade_request(server.ws, "/ws", &filler), 431);
    assert_info_eventually(&server, "handshake_failures_head_too_large", 1);
}

#[test]
fn rejects_connection_over_max_connections_with_503_until_one_closes() {
    let server = Server::start(&["--max-connections", "2"]);
    let first = ws_connect(&server.url(""));
    let _second = ws_connect(&server.url(""));
    expect_status(&server, &upgrade_request(server.ws, "/ws", ""), 503);
    assert_info_eventually(&server, "handshake_failures_capacity", 1);
    drop(first);
    let mut third = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            third = try_ws_connect(&server.url("")).ok();
            third.is_some()
        }),
        "no connection accepted after one of the two closed"
    );
}

#[test]
fn answers_get_healthz_with_200_and_closes() {
    let server = Server::start(&[]);
    let req = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", server.ws);
    let (mut s, head) = raw_request(server.ws, req.as_bytes());
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert_eq!(read_until_server_closes(&mut s), b"ok\n");
}

#[test]
fn handles_bytes_pipelined_after_the_request_head_as_the_first_frame() {
    let server = Server::start(&["--echo"]);
    let mut bytes = upgrade_request(server.ws, "/ws", "");
    bytes.extend(client_frame(true, 1, b"sent with the head"));
    let mut s = std::net::TcpStream::connect(server.ws).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&bytes).unwrap();
    let head = read_http_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let (fin, op, payload) = read_server_frame(&mut s).expect("echo");
    assert_eq!((fin, op), (true, 1));
    assert_eq!(payload, b"sent with the head");
}
