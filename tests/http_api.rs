//! The HTTP API (`--http`): every endpoint end to end against real WebSocket
//! clients (tungstenite), keep-alive and pipelining, each refusal with its status,
//! the API key, and independent HTTP clients (curl, Python's http.client).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::http::Http;
use common::*;
use serde_json::json;

fn start(extra: &[&str]) -> Server {
    let mut args = vec!["--http", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn http(s: &Server) -> Http {
    Http::connect(s.http.expect("started with --http"))
}

#[test]
fn pushes_and_memberships_reach_websocket_clients_with_the_control_ports_counts() {
    let s = start(&[]);
    let mut alice = ws_connect(&s.url("?user=alice&rooms=news"));
    let mut bob = ws_connect(&s.url("?user=bob"));
    assert_info_eventually(&s, "connected_clients", 2);
    let mut h = http(&s);

    let r = h.post_json("/api/publish", &json!({"room": "news", "data": "hello"}));
    assert_eq!((r.status, r.json()), (200, json!({"recipients": 1})));
    assert_eq!(next_text(&mut alice), "hello");
    assert_eq!(r.header("content-type"), Some("application/json"));

    // A JSON value that is not a string is pushed as its compact JSON text.
    let r = h.post_json(
        "/api/publish",
        &json!({"room": "news", "data": {"n": [1, 2]}}),
    );
    assert_eq!(r.json(), json!({"recipients": 1}));
    assert_eq!(next_text(&mut alice), r#"{"n":[1,2]}"#);

    // A raw body is the payload, the room in the query (binary stays binary).
    let r = h.request("POST", "/api/publish?room=news", &[], &[0xff, 0, 1]);
    assert_eq!(r.json(), json!({"recipients": 1}));
    match next_data(&mut alice) {
        tungstenite::Message::Binary(b) => assert_eq!(&b[..], &[0xff, 0, 1]),
        other => panic!("expected binary, got {other:?}"),
    }

    let r = h.post_json("/api/send", &json!({"user": "bob", "data": "for bob"}));
    assert_eq!(r.json(), json!({"recipients": 1}));
    assert_eq!(next_text(&mut bob), "for bob");

    let r = h.post_json("/api/join", &json!({"user": "bob", "room": "news"}));
    assert_eq!(r.json(), json!({"connections": 1}));
    let r = h.get("/api/online?room=news");
    assert_eq!(r.json(), json!({"online": 2}));
    let r = h.request("POST", "/api/broadcast", &[], b"all of you");
    assert_eq!(r.json(), json!({"recipients": 2}));
    assert_eq!(next_text(&mut alice), "all of you");
    assert_eq!(next_text(&mut bob), "all of you");
    let r = h.request("POST", "/api/leave?user=bob&room=news", &[], b"");
    assert_eq!(r.json(), json!({"connections": 1}));
    assert_eq!(h.get("/api/online?room=news").json(), json!({"online": 1}));
    assert_eq!(h.get("/api/online").json(), json!({"online": 2}));

    let r = h.post_json("/api/kick", &json!({"user": "bob", "reason": "bye"}));
    assert_eq!(r.json(), json!({"closed": 1}));
    assert_eq!(read_close(&mut bob), (4000, "bye".to_string()));
    let r = h.post_json("/api/kick", &json!({"user": "nobody"}));
    assert_eq!(r.json(), json!({"closed": 0}));
    assert_eq!(
        h.post_json("/api/publish", &json!({"room": "empty", "data": "x"}))
            .json(),
        json!({"recipients": 0})
    );
}

#[test]
fn info_rooms_history_and_nodes_read_as_json() {
    let s = start(&["--history-size", "10"]);
    let _a = ws_connect(&s.url("?user=a&rooms=big,small"));
    let _b = ws_connect(&s.url("?user=b&rooms=big"));
    assert_info_eventually(&s, "connected_clients", 2);
    let mut h = http(&s);
    for i in 0..3 {
        h.post_json(
            "/api/publish",
            &json!({"room": "big", "data": format!("m{i}")}),
        );
    }
    // Reactors publish their counters at the end of a turn: once INFO has all six
    // deliveries, /api/info must say the same.
    assert_info_eventually(&s, "deliveries", 6);
    let info = h.get("/api/info").json();
    let resp = s.info();
    assert_eq!(info["clients"]["connected_clients"], 2);
    assert_eq!(
        info["stats"]["deliveries"].as_u64(),
        resp.get("deliveries").and_then(|v| v.parse().ok())
    );
    assert_eq!(info["server"]["http_listen"], s.http.unwrap().to_string());
    assert!(info["stats"]["http_requests"].as_u64().unwrap() >= 3);
    assert!(info["clients"]["reactor_0"]["connections"].is_u64());
    let only = h.get("/api/info?section=rooms").json();
    assert_eq!(
        only.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["rooms"]
    );

    let rooms = h.get("/api/rooms?top=1").json();
    assert_eq!(
        rooms,
        json!({"rooms": [{"room": "big", "members": 2}], "total": 2})
    );

    let hist = h.get("/api/history?room=big&count=2").json();
    assert_eq!(hist["offset"], 3);
    assert_eq!(
        hist["messages"],
        json!([{"offset": 2, "data": "m1"}, {"offset": 3, "data": "m2"}])
    );
    let nodes = h.get("/api/nodes").json();
    assert_eq!(nodes["nodes"][0]["connections"], 2);
    assert_eq!(nodes["nodes"][0]["self"], 1);
}

#[test]
fn keep_alive_and_pipelined_requests_are_answered_in_order() {
    let s = start(&[]);
    let mut ws = ws_connect(&s.url("?rooms=r"));
    assert_info_eventually(&s, "connected_clients", 1);
    let mut h = http(&s);
    // Three requests in one write: three responses, in order, on one connection.
    let mut burst = Vec::new();
    for i in 0..3 {
        burst.extend_from_slice(
            format!(
                "POST /api/publish?room=r HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\np{i}"
            )
            .as_bytes(),
        );
    }
    burst.extend_from_slice(b"GET /api/nope HTTP/1.1\r\nHost: t\r\n\r\n");
    h.stream.write_all(&burst).unwrap();
    for i in 0..3 {
        let r = h.read(false);
        assert_eq!((r.status, r.json()), (200, json!({"recipients": 1})));
        assert_eq!(next_text(&mut ws), format!("p{i}"));
    }
    assert_eq!(h.read(false).status, 404);
    // Still open: keep-alive.
    assert_eq!(h.get("/api/online").json(), json!({"online": 1}));
    // Connection: close is honoured.
    let r = h.request("GET", "/api/online", &["Connection: close"], b"");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(h.closed_by_server());
    // HTTP/1.0 closes after the response.
    let mut raw = TcpStream::connect(s.http.unwrap()).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(b"GET /api/online HTTP/1.0\r\n\r\n").unwrap();
    let mut all = String::new();
    raw.read_to_string(&mut all).unwrap();
    assert!(all.starts_with("HTTP/1.1 200"), "{all}");
    assert!(all.ends_with(r#"{"online":1}"#), "{all}");
}

#[test]
fn each_refusal_has_its_status_and_a_json_error_and_loses_nothing() {
    let s = start(&["--max-message", "100"]);
    let mut ws = ws_connect(&s.url("?rooms=r"));
    assert_info_eventually(&s, "connected_clients", 1);
    let mut h = http(&s);
    let check = |r: common::http::Response, status: u16, needle: &str| {
        assert_eq!(r.status, status, "{}", r.text());
        let e = r.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(e.contains(needle), "{e:?} should mention {needle:?}");
    };
    check(h.get("/nope"), 404, "no such endpoint");
    let r = h.get("/api/publish");
    assert_eq!(r.header("allow"), Some("POST"));
    check(r, 405, "takes POST");
    check(h.request("DELETE", "/api/info", &[], b""), 405, "takes GET");
    check(
        h.request(
            "POST",
            "/api/publish",
            &["Content-Type: application/json"],
            b"{\"room\":",
        ),
        400,
        "not valid JSON",
    );
    check(
        h.post_json("/api/publish", &json!({"room": "r"})),
        400,
        "missing field: data",
    );
    check(
        h.post_json(
            "/api/publish",
            &json!({"room": "r", "data": "x", "extra": 1}),
        ),
        400,
        "unknown field: extra",
    );
    check(
        h.post_json("/api/publish", &json!({"room": 5, "data": "x"})),
        400,
        "must be a string",
    );
    // The control port's own validation: the same message as over RESP.
    let mut resp = s.control();
    let resp_err = match resp.cmd(&["PUBLISH", "", "x"]) {
        Reply::Error(e) => e,
        other => panic!("expected an error, got {other:?}"),
    };
    let r = h.post_json("/api/publish", &json!({"room": "", "data": "x"}));
    assert_eq!(r.status, 400);
    assert_eq!(
        format!("ERR {}", r.json()["error"].as_str().unwrap()),
        resp_err,
        "HTTP and RESP refuse with the same words"
    );
    check(
        h.request("POST", "/api/join", &[], b"user=u&room=r"),
        415,
        "JSON body",
    );
    check(h.get("/api/rooms?top=0"), 400, "top must be");
    check(h.get("/api/history"), 400, "missing field: room");
    // Over --max-message: 413 for the payload, raw or in JSON.
    check(
        h.request("POST", "/api/publish?room=r", &[], &[b'x'; 101]),
        413,
        "--max-message",
    );
    check(
        h.post_json(
            "/api/publish",
            &json!({"room": "r", "data": "y".repeat(101)}),
        ),
        413,
        "--max-message",
    );
    // The connection is still usable after all of that, and nothing reached the
    // client but the one good push.
    let r = h.post_json("/api/publish", &json!({"room": "r", "data": "ok"}));
    assert_eq!(r.json(), json!({"recipients": 1}));
    assert_eq!(next_text(&mut ws), "ok");

    // Framing errors answer and close: the stream cannot be trusted after them.
    let addr = s.http.unwrap();
    for (req, status) in [
        (&b"POST /api/publish?room=r HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"[..], 411),
        (&b"POST /api/publish?room=r HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n"[..], 413),
        (&b"POST /api/publish?room=r HTTP/1.1\r\nContent-Length: x\r\n\r\n"[..], 400),
        (&b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 TLS hello\r\n\r\n"[..], 400),
        (&b"GET / HTTP/2.0\r\n\r\n"[..], 505),
    ] {
        let (mut stream, head) = raw_request(addr, req);
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status} ")),
            "{:?} → {head}",
            String::from_utf8_lossy(req)
        );
        let rest = read_until_server_closes(&mut stream);
        assert!(String::from_utf8_lossy(&rest).contains("\"error\""));
    }
    let mut huge = b"GET /api/info HTTP/1.1\r\nX-Big: ".to_vec();
    huge.extend(vec![b'a'; 20_000]);
    huge.extend_from_slice(b"\r\n\r\n");
    let (_, head) = raw_request(addr, &huge);
    assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
    // Still serving.
    assert_eq!(http(&s).get("/api/online").json(), json!({"online": 1}));
    assert!(s.info_u64("http_errors") >= 10);
}

#[test]
fn the_api_key_guards_the_api_and_metrics_but_not_the_page() {
    let s = start(&["--api-key", "k3y"]);
    let mut h = http(&s);
    for target in ["/api/info", "/api/online", "/metrics"] {
        let r = h.get(target);
        assert_eq!(r.status, 401, "{target}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        assert!(r.json()["error"].as_str().unwrap().contains("API key"));
    }
    let r = h.request("GET", "/api/online", &["Authorization: Bearer k3y0"], b"");
    assert_eq!(r.status, 401);
    let r = h.request("GET", "/api/online", &["Authorization: Basic k3y"], b"");
    assert_eq!(r.status, 401);
    let r = h.request(
        "POST",
        "/api/broadcast",
        &["Authorization: Bearer k3y"],
        b"x",
    );
    assert_eq!((r.status, r.json()), (200, json!({"recipients": 0})));
    let r = h.request("GET", "/metrics", &["Authorization: bearer k3y"], b"");
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let page = h.get("/");
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert_eq!(s.info_u64("http_unauthorized"), 5);
}

#[test]
fn a_listener_off_loopback_needs_a_key() {
    let r = start_expecting_refusal(&["--http", "0.0.0.0:0"], None);
    assert_eq!(r.status.code(), Some(2), "{}", r.stderr);
    assert!(
        r.stderr.contains("--http 0.0.0.0:0") && r.stderr.contains("--api-key"),
        "{}",
        r.stderr
    );
    // With a key it starts.
    let s = Server::start(&["--http", "0.0.0.0:0", "--api-key", "k"]);
    let port = s.http.unwrap().port();
    let mut h = Http::connect(format!("127.0.0.1:{port}").parse().unwrap());
    assert_eq!(h.get("/api/info").status, 401);
    let r = start_expecting_refusal(&["--http", "127.0.0.1:0", "--api-key", ""], None);
    assert_eq!(r.status.code(), Some(2));
}

#[test]
fn a_port_in_use_is_named() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let r = start_expecting_refusal(&["--http", &addr], None);
    assert!(
        r.stderr.contains(&format!("cannot listen on {addr}")) && r.stderr.contains("--http"),
        "{}",
        r.stderr
    );
}

#[test]
fn curl_with_expect_continue_and_python_http_client_are_served() {
    let s = start(&[]);
    let mut ws = ws_connect(&s.url("?rooms=big"));
    assert_info_eventually(&s, "connected_clients", 1);
    let base = format!("http://{}", s.http.unwrap());
    // curl sends `Expect: 100-continue` for a body this size and waits for the
    // interim response before sending it.
    let body = "z".repeat(50_000);
    let out = Command::new("curl")
        .args([
            "-sS",
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            &body,
            "-w",
            "\n%{http_code}",
            &format!("{base}/api/publish?room=big"),
        ])
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.trim(), "{\"recipients\":1}\n200", "{:?}", out);
    assert_eq!(next_text(&mut ws).len(), 50_000);

    let script = r#"
import http.client, json, sys
host, port = sys.argv[1].rsplit(":", 1)
c = http.client.HTTPConnection(host, int(port), timeout=10)
out = []
for i in range(3):
    c.request("POST", "/api/publish", body=json.dumps({"room": "big", "data": "py%d" % i}),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    out.append((r.status, json.loads(r.read())))
c.request("GET", "/api/info?section=clients")
r = c.getresponse()
out.append((r.status, json.loads(r.read())["clients"]["connected_clients"]))
print(json.dumps(out))
"#;
    let out = Command::new(test_python())
        .args(["-c", script, &s.http.unwrap().to_string()])
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        got,
        json!([[200, {"recipients": 1}], [200, {"recipients": 1}], [200, {"recipients": 1}], [200, 1]])
    );
    for i in 0..3 {
        assert_eq!(next_text(&mut ws), format!("py{i}"));
    }
}

#[test]
fn a_request_that_stalls_gets_408_and_the_others_go_on() {
    let s = start(&[]);
    let addr = s.http.unwrap();
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    slow.write_all(b"POST /api/publish?room=r HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
        .unwrap();
    // Others are served meanwhile.
    assert_eq!(http(&s).get("/api/online").json(), json!({"online": 0}));
    let rest = read_until_server_closes(&mut slow);
    let text = String::from_utf8_lossy(&rest);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
}

#[test]
fn connections_over_the_bound_get_503_and_the_others_are_served() {
    let s = start(&["--max-http-connections", "2"]);
    let mut a = http(&s);
    let mut b = http(&s);
    assert_eq!(a.get("/api/online").status, 200);
    assert_eq!(b.get("/api/online").status, 200);
    let mut third = TcpStream::connect(s.http.unwrap()).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let rest = read_until_server_closes(&mut third);
    let text = String::from_utf8_lossy(&rest);
    assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
    assert!(text.contains("--max-http-connections"), "{text}");
    assert_eq!(a.get("/api/online").status, 200, "the first two still work");
    assert_eq!(s.info_u64("http_refused"), 1);
    drop(b);
    // A slot freed is a slot to take.
    assert!(wait_until(Duration::from_secs(10), || {
        let mut c = TcpStream::connect(s.http.unwrap()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(b"GET /api/online HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let r = read_until_server_closes(&mut c);
        String::from_utf8_lossy(&r).starts_with("HTTP/1.1 200 ")
    }));
}
