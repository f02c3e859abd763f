//! Issue 11 §5: the access log (one line per closed connection, parsed from the real
//! server's stderr), `--log-format json` (every line one JSON object), and `/readyz`
//! while starting (held by the documented test hook `WSPUSH_TEST_HOLD_START`) and
//! while draining after SIGTERM (`--drain-delay`).

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;

/// The next stderr line for which `f` is true, within 20 s.
fn next_line(logs: &Receiver<String>, mut f: impl FnMut(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match logs.recv_timeout(left) {
            Ok(l) if f(&l) => return l,
            Ok(_) => {}
            Err(e) => panic!("no such log line: {e}"),
        }
    }
}

/// The `key=value` fields of an access line (values JSON-unquoted when quoted).
fn fields(line: &str) -> HashMap<String, String> {
    let body = line
        .split_once("wspush::access] ")
        .map_or(line, |(_, b)| b)
        .trim();
    let mut out = HashMap::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (k, after) = rest.split_once('=').expect("key=value");
        let (v, next) = if after.starts_with('"') {
            // A JSON string: find its end by letting serde_json read a prefix.
            let mut de = serde_json::Deserializer::from_str(after).into_iter::<String>();
            let v = de.next().expect("a quoted value").expect("JSON string");
            (v, &after[de.byte_offset()..])
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            (after[..end].to_string(), &after[end..])
        };
        out.insert(k.to_string(), v);
        rest = next.trim_start();
    }
    out
}

fn access_line(logs: &Receiver<String>, user: &str) -> HashMap<String, String> {
    let want = format!(" user={user} ");
    fields(&next_line(logs, |l| {
        l.contains("wspush::access") && l.contains(&want)
    }))
}

#[test]
fn access_log_has_one_line_per_closed_connection_with_its_numbers() {
    let (server, logs) = Server::start_logged(&["--access-log"], "info", &[]);
    // A client that closes itself, after sending one message.
    let mut alice = ws_connect(&server.url("?user=alice&rooms=a,b"));
    alice
        .send(tungstenite::Message::text(r#"{"op":"ping"}"#))
        .unwrap();
    assert_eq!(next_text(&mut alice), r#"{"op":"pong"}"#);
    let mut c = server.control();
    assert_eq!(c.int(&["PUBLISH", "a", "hello"]), 1);
    assert_eq!(next_text(&mut alice), "hello");
    alice
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye \"now\"".into(),
        }))
        .unwrap();
    while alice.read().is_ok() {}
    drop(alice);
    let a = access_line(&logs, "alice");
    assert_eq!(a["addr"], "127.0.0.1");
    assert_eq!(a["rooms"], "2");
    assert_eq!(a["close_code"], "1000");
    assert_eq!(a["close_reason"], "bye \"now\"");
    assert_eq!(a["why"], "client");
    assert!(a["duration"].ends_with('s'), "{a:?}");
    // In: the request head, the ping op, the Close frame. Out: the 101, the pong,
    // the push, the Close echo.
    let bytes_in: u64 = a["bytes_in"].parse().unwrap();
    let bytes_out: u64 = a["bytes_out"].parse().unwrap();
    let ping_close = (6 + 13) + (6 + 2 + 10);
    assert!(bytes_in > 100 + ping_close, "{a:?}");
    let pong_push_close = (2 + 13) + (2 + 5) + (2 + 2);
    assert!(bytes_out > 100 + pong_push_close, "{a:?}");

    // A kicked connection: our code and reason.
    let mut bob = ws_connect(&server.url("?user=bob"));
    assert_eq!(c.int(&["KICK", "bob", "go away"]), 1);
    assert_eq!(read_close(&mut bob), (4000, "go away".to_string()));
    drop(bob);
    let b = access_line(&logs, "bob");
    assert_eq!(b["rooms"], "0");
    assert_eq!(b["close_code"], "4000");
    assert_eq!(b["close_reason"], "go away");
    assert_eq!(b["why"], "kicked");

    // A connection that just vanishes: 1006, abnormal; its bytes counted exactly.
    let request = upgrade_request(server.ws, "/ws?user=carol&rooms=x", "");
    let (raw, head) = raw_request(server.ws, &request);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    drop(raw);
    let r = access_line(&logs, "carol");
    assert_eq!(r["close_code"], "1006");
    assert_eq!(r["why"], "abnormal");
    assert_eq!(r["rooms"], "1");
    assert_eq!(r["close_reason"], "");
    assert_eq!(r["bytes_in"], request.len().to_string());
    assert_eq!(r["bytes_out"], head.len().to_string());
}

#[test]
fn without_the_flag_no_access_line_is_written() {
    let (mut server, logs) = Server::start_logged(&[], "info", &[]);
    let mut ws = ws_connect(&server.url("?user=dave"));
    ws.close(None).unwrap();
    while ws.read().is_ok() {}
    drop(ws);
    assert!(wait_until(Duration::from_secs(10), || server
        .info_u64("closed_sockets")
        == 1));
    server.terminate();
    let lines: Vec<String> = logs.iter().collect();
    assert!(lines.iter().any(|l| l.contains("stopped")), "{lines:?}");
    assert!(
        !lines.iter().any(|l| l.contains("wspush::access")),
        "{lines:?}"
    );
}

#[test]
fn json_log_format_writes_every_line_as_one_json_object() {
    let (mut server, logs) =
        Server::start_logged(&["--log-format", "json", "--access-log"], "info", &[]);
    let mut ws = ws_connect(&server.url("?user=erin"));
    ws.close(Some(CloseFrame {
        code: CloseCode::Away,
        reason: "tab \"closed\"\\".into(),
    }))
    .unwrap();
    while ws.read().is_ok() {}
    drop(ws);
    assert!(wait_until(Duration::from_secs(10), || server
        .info_u64("closed_sockets")
        == 1));
    server.terminate();
    let lines: Vec<String> = logs.iter().collect();
    let objects: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    for o in &objects {
        let keys: Vec<&str> = o
            .as_object()
            .expect("object")
            .keys()
            .map(|k| k.as_str())
            .collect();
        if o["target"] != "wspush::access" {
            assert_eq!(keys.len(), 4, "{o}");
        }
        for k in ["ts", "level", "target", "msg"] {
            assert!(o[k].is_string(), "{k} in {o}");
        }
        let ts = o["ts"].as_str().unwrap();
        assert!(
            ts.len() >= 20 && ts.as_bytes()[10] == b'T',
            "RFC 3339: {ts}"
        );
    }
    assert!(objects.iter().any(|o| o["msg"]
        .as_str()
        .unwrap()
        .starts_with("listening: WebSocket")));
    let access = objects
        .iter()
        .find(|o| o["target"] == "wspush::access")
        .expect("the access line");
    assert_eq!(access["level"], "INFO");
    let f = fields(access["msg"].as_str().unwrap());
    assert_eq!(f["user"], "erin");
    assert_eq!(f["close_code"], "1001");
    assert_eq!(f["close_reason"], "tab \"closed\"\\");
    // And as typed fields of the JSON object itself.
    assert_eq!(access["user"], "erin");
    assert_eq!(access["close_code"], 1001);
    assert_eq!(access["close_reason"], "tab \"closed\"\\");
    assert_eq!(access["rooms"], 0);
    assert!(
        access["duration_s"].as_f64().is_some_and(|d| d >= 0.0),
        "{access}"
    );
    assert!(
        access["bytes_in"].as_u64().is_some_and(|n| n > 0),
        "{access}"
    );
}

/// GET `path` on the WebSocket port: (status, body).
fn probe(server: &Server, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(server.ws).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut all = String::new();
    let _ = s.read_to_string(&mut all);
    let status = all
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {all:?}"));
    let body = all
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

#[test]
fn readyz_says_starting_until_every_thread_has_turned() {
    let hold = std::env::temp_dir().join(format!("wspush-hold-{}", std::process::id()));
    std::fs::write(&hold, b"").unwrap();
    let path = hold.to_string_lossy().into_owned();
    let (server, _logs) = Server::start_logged(
        &["--threads", "2"],
        "error",
        &[("WSPUSH_TEST_HOLD_START", &path)],
    );
    assert_eq!(
        probe(&server, "/readyz"),
        (503, "not ready: starting\n".to_string())
    );
    std::fs::remove_file(&hold).unwrap();
    let mut last = (0, String::new());
    assert!(
        wait_until(Duration::from_secs(10), || {
            last = probe(&server, "/readyz");
            last.0 == 200
        }),
        "{last:?}"
    );
}

#[test]
fn readyz_says_draining_after_sigterm_while_everything_else_goes_on() {
    let mut server = Server::start(&["--drain-delay", "60s", "--http", "127.0.0.1:0"]);
    let mut api = common::http::Http::connect(server.http.expect("--http"));
    // Ready once every thread has made its first turn.
    assert!(wait_until(Duration::from_secs(10), || probe(
        &server, "/readyz"
    )
    .0 == 200));
    let mut ws = ws_connect(&server.url("?rooms=news"));
    // SAFETY: kill(2) on the PID of the child this test started.
    unsafe {
        libc::kill(server.pid as i32, libc::SIGTERM);
    }
    let mut last = (0, String::new());
    assert!(
        wait_until(Duration::from_secs(10), || {
            last = probe(&server, "/readyz");
            last.0 == 503
        }),
        "{last:?}"
    );
    assert_eq!(last.1, "not ready: draining\n");
    assert_eq!(probe(&server, "/healthz").0, 200, "alive while draining");
    // The HTTP listener answers the same probes (without the API key's protection).
    let r = api.get("/readyz");
    assert_eq!(
        (r.status, r.text().as_str()),
        (503, "not ready: draining\n")
    );
    let r = api.get("/healthz");
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
    // Pushes still flow to open connections, and new clients still get in.
    let mut late = ws_connect(&server.url("?rooms=news"));
    let mut c = server.control();
    assert_eq!(c.int(&["PUBLISH", "news", "still here"]), 2);
    assert_eq!(next_text(&mut ws), "still here");
    assert_eq!(next_text(&mut late), "still here");
    assert!(server.alive());
    // The second signal (the harness's SIGTERM on drop) ends the drain at once.
    drop(server);
}
