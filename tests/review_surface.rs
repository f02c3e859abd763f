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
