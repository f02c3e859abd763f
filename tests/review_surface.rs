//! Review: the HTTP API's refusals keep the connection promises their responses
//! make. A response that says `Connection: close` must be followed by the server
//! closing, whatever the status: a client that reads to the end (HTTP/1.0, or any
//! client that sent `Connection: close`) would otherwise hang until the idle timeout.

mod common;

use common::*;

/// 404, 405 and 401 are answered from the router and the key check, before any
/// command runs; with `Connection: close` (or HTTP/1.0) each must still close.
#[test]
fn a_refusal_that_says_connection_close_is_followed_by_the_close() {
    let s = Server::start(&["--http", "127.0.0.1:0", "--api-key", "k3y"]);
    let addr = s.http.expect("started with --http");
    let auth = "Authorization: Bearer k3y\r\n";
    for (req, status) in [
        (format!("GET /nope HTTP/1.1\r\nHost: t\r\n{auth}Connection: close\r\n\r\n"), 404),
        (format!("GET /nope HTTP/1.0\r\n{auth}\r\n"), 404),
        (format!("DELETE /api/info HTTP/1.1\r\nHost: t\r\n{auth}Connection: close\r\n\r\n"), 405),
        ("GET /api/info HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_string(), 401),
        ("HEAD /metrics HTTP/1.0\r\n\r\n".to_string(), 401),
        // The request after a `Connection: close` one is not answered.
        (format!("GET /nope HTTP/1.1\r\nHost: t\r\n{auth}Connection: close\r\n\r\nGET /api/online HTTP/1.1\r\nHost: t\r\n{auth}\r\n"), 404),
    ] {
        let (mut stream, head) = raw_request(addr, req.as_bytes());
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status} ")),
            "{req:?} → {head}"
        );
        assert!(head.contains("Connection: close"), "{head}");
        let rest = read_until_server_closes(&mut stream);
        assert!(
            !String::from_utf8_lossy(&rest).contains("HTTP/1.1"),
            "nothing after the response that said close: {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
    // Still serving.
    let (mut stream, head) = raw_request(
        addr,
        format!("GET /api/online HTTP/1.0\r\n{auth}\r\n").as_bytes(),
    );
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    read_until_server_closes(&mut stream);
}

/// The value of an unlabelled sample in a `/metrics` body.
fn sample(body: &str, name: &str) -> Option<u64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// `wspush_control_clients` is the control port's clients, as INFO's
/// `control_clients`: HTTP connections (the scraper's own among them) are not.
#[test]
fn the_control_clients_gauge_does_not_count_http_connections() {
    let s = Server::start(&["--http", "127.0.0.1:0"]);
    let mut h = common::http::Http::connect(s.http.expect("started with --http"));
    let _other_http = common::http::Http::connect(s.http.unwrap());
    let info = h.get("/api/info").json();
    assert_eq!(info["clients"]["control_clients"], 0);
    assert_eq!(info["clients"]["http_clients"], 2);
    let body = h.get("/metrics").text();
    assert_eq!(sample(&body, "wspush_control_clients"), Some(0), "{body}");
    let mut resp = s.control();
    assert_eq!(resp.int(&["ONLINE"]), 0);
    let info = h.get("/api/info").json();
    assert_eq!(info["clients"]["control_clients"], 1);
    let body = h.get("/metrics").text();
    assert_eq!(sample(&body, "wspush_control_clients"), Some(1), "{body}");
}

/// The sum of every `wspush_closes_total{reason=…}` sample.
fn closes_total(body: &str) -> u64 {
    body.lines()
        .filter(|l| l.starts_with("wspush_closes_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// `wspush_pending_bytes` summed over the reactors.
fn pending(body: &str) -> u64 {
    body.lines()
        .filter(|l| l.starts_with("wspush_pending_bytes{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A client that stops reading until pushes queue up for it on the server, then
/// shuts its write side (EOF, no Close frame): the connection was open, so its end
/// is counted once (abnormal: no close handshake) and logged with code 1006 and its
/// rooms, like one that vanishes.
#[test]
fn an_open_connection_ended_by_eof_with_output_queued_is_counted_and_logged() {
    let (s, logs) = Server::start_logged(
        &[
            "--access-log",
            "--http",
            "127.0.0.1:0",
            "--max-message",
            "1MiB",
            "--max-pending",
            "256MiB",
        ],
        "info",
        &[],
    );
    let mut c = raw_upgrade(s.ws, "?user=eof&rooms=x");
    let mut h = common::http::Http::connect(s.http.expect("started with --http"));
    let mut control = s.control();
    let payload = vec![b'p'; 1 << 20];
    let mut pushed = 0;
    let queued = wait_until(std::time::Duration::from_secs(20), || {
        if pushed < 200 {
            assert_eq!(control.int(&[&b"PUBLISH"[..], b"x", &payload]), 1);
            pushed += 1;
        }
        pending(&h.get("/metrics").text()) > 0
    });
    assert!(queued, "pushes queue up for a client that does not read");
    c.shutdown(std::net::Shutdown::Write).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let rest = read_until_server_closes(&mut c);
    assert!(rest.len() > 1 << 20, "what was queued is still written");
    let mut last = String::new();
    let counted = wait_until(std::time::Duration::from_secs(10), || {
        last = h.get("/metrics").text();
        closes_total(&last) == 1
    });
    assert!(
        counted,
        "one connection opened and ended, closes_total is {}",
        closes_total(&last)
    );
    let line = loop {
        let line = logs
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("an access line for the connection");
        if line.contains("user=eof ") {
            break line;
        }
    };
    assert!(line.contains(" rooms=1 "), "{line}");
    assert!(line.contains(" close_code=1006 "), "{line}");
    assert!(line.contains(" why=abnormal"), "{line}");
}
