//! Positions, history and recovery (issue 10) on one node: `wspush.v1` envelopes,
//! `joined` with positions, `recover=` at connect and `since` on join, the bounds
//! (`--history-size`, `--max-recover`, `--history-memory`, `--history-ttl`), and no gap
//! or duplicate while publishes race a recovery. Clients are tungstenite; payloads are
//! checked as the JSON the spec defines.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use base64::Engine as _;
use common::*;
use serde_json::{json, Value};

fn server(args: &[&str]) -> Server {
    Server::start(args)
}

fn publish(s: &Server, room: &str, payload: &str) -> i64 {
    s.control().int(&["PUBLISH", room, payload])
}

/// The `joined` message for `room` (skipping nothing: it must come first).
fn joined(ws: &mut Ws, room: &str) -> Value {
    let j = next_json(ws);
    assert_eq!(j["op"], "joined", "{j}");
    assert_eq!(j["room"], room, "{j}");
    assert!(j["epoch"].as_str().is_some_and(|e| e.len() == 16), "{j}");
    j
}

fn epoch_of(j: &Value) -> String {
    j["epoch"].as_str().expect("epoch").to_string()
}

#[test]
fn raw_clients_are_unchanged_and_v1_clients_get_envelopes_with_positions() {
    let s = server(&[]);
    let mut raw = ws_connect(&s.url("?rooms=news"));
    let mut v1 = ws_connect_v1(&s.url("?rooms=news&user=ann"));
    let j = joined(&mut v1, "news");
    assert_eq!(j["offset"], 0, "nothing published yet");
    assert!(j.get("recovered").is_none(), "no recovery asked: {j}");
    assert_eq!(publish(&s, "news", "hello"), 2);
    assert_eq!(next_text(&mut raw), "hello");
    let m = next_json(&mut v1);
    assert_eq!(
        m,
        json!({"room":"news","epoch":epoch_of(&j),"offset":1,"data":"hello"})
    );
    // Binary payloads travel as data_b64; SEND and BROADCAST have no position.
    let bin: &[u8] = &[0xff, 0x00, 0x80];
    s.control().cmd(&[&b"PUBLISH"[..], b"news", bin]);
    assert_eq!(
        next_data(&mut raw),
        tungstenite::Message::Binary(bin.to_vec().into())
    );
    let m = next_json(&mut v1);
    assert_eq!(m["offset"], 2);
    assert_eq!(
        m["data_b64"],
        base64::engine::general_purpose::STANDARD.encode(bin)
    );
    assert!(m.get("data").is_none());
    assert_eq!(s.control().int(&["SEND", "ann", "psst"]), 1);
    assert_eq!(next_json(&mut v1), json!({"user":"ann","data":"psst"}));
    s.control().int(&["BROADCAST", "all \"quoted\""]);
    assert_eq!(next_text(&mut raw), "all \"quoted\"");
    assert_eq!(
        next_json(&mut v1),
        json!({"broadcast":true,"data":"all \"quoted\""})
    );
}

#[test]
fn a_join_op_answers_with_the_position_and_recovers_what_was_missed() {
    let s = server(&["--history-size", "100"]);
    for i in 1..=5 {
        publish(&s, "news", &format!("m{i}"));
    }
    let mut v1 = ws_connect_v1(&s.url(""));
    v1.send(tungstenite::Message::text(r#"{"op":"join","room":"news"}"#))
        .unwrap();
    let j = joined(&mut v1, "news");
    assert_eq!(j["offset"], 5);
    let epoch = epoch_of(&j);
    v1.send(tungstenite::Message::text(
        r#"{"op":"leave","room":"news"}"#,
    ))
    .unwrap();
    assert_eq!(next_json(&mut v1), json!({"op":"left","room":"news"}));
    publish(&s, "news", "m6");
    publish(&s, "news", "m7");
    v1.send(tungstenite::Message::text(
        json!({"op":"join","room":"news","since":{"epoch":epoch,"offset":5}}).to_string(),
    ))
    .unwrap();
    let j = joined(&mut v1, "news");
    assert_eq!(j["recovered"], true, "{j}");
    assert_eq!(j["offset"], 7);
    for (o, d) in [(6, "m6"), (7, "m7")] {
        let m = next_json(&mut v1);
        assert_eq!(
            (m["offset"].as_u64(), m["data"].as_str()),
            (Some(o), Some(d))
        );
    }
    publish(&s, "news", "m8");
    assert_eq!(next_json(&mut v1)["offset"], 8, "then live");
    // A wrong epoch is not recovered: the position only.
    v1.send(tungstenite::Message::text(
        r#"{"op":"leave","room":"news"}"#,
    ))
    .unwrap();
    next_json(&mut v1);
    v1.send(tungstenite::Message::text(
        r#"{"op":"join","room":"news","since":{"epoch":"0000000000000000","offset":1}}"#,
    ))
    .unwrap();
    let j = joined(&mut v1, "news");
    assert_eq!(
        (j["recovered"].as_bool(), j["offset"].as_u64()),
        (Some(false), Some(8))
    );
    publish(&s, "news", "m9");
    assert_eq!(
        next_json(&mut v1)["offset"],
        9,
        "nothing replayed, then live"
    );
    assert!(s.info_u64("recoveries") >= 1 && s.info_u64("recovery_failures") >= 1);
}

#[test]
fn recover_at_connect_replays_in_order_then_goes_live() {
    let s = server(&["--history-size", "50"]);
    let mut first = ws_connect_v1(&s.url("?rooms=a,b"));
    let ja = joined(&mut first, "a");
    let jb = joined(&mut first, "b");
    drop(first);
    for i in 1..=3 {
        publish(&s, "a", &format!("a{i}"));
        publish(&s, "b", &format!("b{i}"));
    }
    let url = format!(
        "?rooms=a,b&recover=a:{}:0,b:{}:2",
        epoch_of(&ja),
        epoch_of(&jb)
    );
    let mut ws = ws_connect_v1(&s.url(&url));
    let mut got = Vec::new();
    for _ in 0..(2 + 3 + 1) {
        got.push(next_json(&mut ws));
    }
    let ops: Vec<String> = got
        .iter()
        .map(|m| {
            if m["op"] == "joined" {
                format!("joined {} {} {}", m["room"], m["offset"], m["recovered"])
            } else {
                format!("{} {}", m["room"], m["data"])
            }
        })
        .collect();
    // Per room: joined first, then its missed messages in order.
    let a: Vec<&String> = ops.iter().filter(|o| o.contains("\"a")).collect();
    let b: Vec<&String> = ops.iter().filter(|o| o.contains("\"b")).collect();
    assert_eq!(
        a,
        [
            "joined \"a\" 3 true",
            "\"a\" \"a1\"",
            "\"a\" \"a2\"",
            "\"a\" \"a3\""
        ]
    );
    assert_eq!(b, ["joined \"b\" 3 true", "\"b\" \"b3\""]);
}

#[test]
fn overflowed_history_and_max_recover_give_recovered_false() {
    let s = server(&["--history-size", "5", "--max-recover", "3"]);
    let mut ws = ws_connect_v1(&s.url("?rooms=r"));
    let epoch = epoch_of(&joined(&mut ws, "r"));
    drop(ws);
    for i in 1..=4 {
        publish(&s, "r", &i.to_string());
    }
    // 4 missed > --max-recover 3.
    let mut ws = ws_connect_v1(&s.url(&format!("?rooms=r&recover=r:{epoch}:0")));
    let j = joined(&mut ws, "r");
    assert_eq!(
        (j["recovered"].as_bool(), j["offset"].as_u64()),
        (Some(false), Some(4))
    );
    drop(ws);
    // 3 missed: recovered.
    let mut ws = ws_connect_v1(&s.url(&format!("?rooms=r&recover=r:{epoch}:1")));
    assert_eq!(joined(&mut ws, "r")["recovered"], true);
    for want in ["2", "3", "4"] {
        assert_eq!(next_json(&mut ws)["data"], want);
    }
    drop(ws);
    for i in 5..=10 {
        publish(&s, "r", &i.to_string());
    }
    // --history-size 5 keeps offsets 6..=10: recovering from 4 needs 5.
    let mut ws = ws_connect_v1(&s.url(&format!("?rooms=r&recover=r:{epoch}:4")));
    assert_eq!(
        joined(&mut ws, "r")["recovered"],
        false,
        "5 is no longer kept"
    );
    // An offset ahead of the room's is never "recovered".
    drop(ws);
    let mut ws = ws_connect_v1(&s.url(&format!("?rooms=r&recover=r:{epoch}:99")));
    assert_eq!(joined(&mut ws, "r")["recovered"], false);
}

#[test]
fn the_epoch_changes_when_a_rooms_history_expires() {
    let s = server(&["--history-size", "10", "--history-ttl", "1s"]);
    publish(&s, "t", "x");
    let mut ws = ws_connect_v1(&s.url("?rooms=t"));
    let j = joined(&mut ws, "t");
    let epoch = epoch_of(&j);
    assert_eq!(j["offset"], 1);
    drop(ws);
    // Expiry runs once a second, after the last member left and the TTL passed.
    assert!(wait_until(Duration::from_secs(10), || s
        .info_u64("history_rooms")
        == 0));
    let mut ws = ws_connect_v1(&s.url(&format!("?rooms=t&recover=t:{epoch}:1")));
    let j = joined(&mut ws, "t");
    assert_eq!(j["recovered"], false);
    assert_ne!(
        epoch_of(&j),
        epoch,
        "a new epoch: old offsets mean nothing now"
    );
    assert_eq!(j["offset"], 0);
}

#[test]
fn history_memory_is_bounded_and_reported() {
    let s = server(&["--history-size", "1000", "--history-memory", "64KiB"]);
    let payload = "p".repeat(1000);
    let mut ctl = s.control();
    for i in 0..300 {
        assert_eq!(
            ctl.int(&["PUBLISH", &format!("room{}", i % 7), &payload]),
            0
        );
    }
    let bytes = s.info_u64("history_bytes");
    assert!(bytes <= 64 * 1024, "history_bytes {bytes} over the bound");
    assert!(s.info_u64("history_evicted") > 0);
    assert_eq!(s.info_u64("history_rooms"), 7);
    let msgs = s.info_u64("history_messages");
    assert!(msgs > 10 && msgs < 300, "{msgs} messages kept");
}

#[test]
fn history_command_lists_the_retained_messages_with_positions() {
    let s = server(&["--history-size", "3"]);
    let mut ctl = s.control();
    for i in 1..=5 {
        ctl.int(&["PUBLISH", "h", &format!("m{i}")]);
    }
    let text = |r: &Reply| match r {
        Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
        Reply::Int(n) => n.to_string(),
        other => panic!("{other:?}"),
    };
    match ctl.cmd(&["HISTORY", "h", "2"]) {
        Reply::Array(v) => {
            assert_eq!(v.len(), 3);
            assert_eq!(text(&v[0]).len(), 16, "epoch");
            assert_eq!(v[1], Reply::Int(5));
            let Reply::Array(entries) = &v[2] else {
                panic!("{v:?}")
            };
            let e: Vec<(String, String)> = entries
                .iter()
                .map(|e| match e {
                    Reply::Array(p) => (text(&p[0]), text(&p[1])),
                    other => panic!("{other:?}"),
                })
                .collect();
            assert_eq!(e, [("4".into(), "m4".into()), ("5".into(), "m5".into())]);
        }
        other => panic!("HISTORY replied {other:?}"),
    }
    match ctl.cmd(&["HISTORY", "unknown"]) {
        Reply::Array(v) => assert_eq!(v[1], Reply::Int(0)),
        other => panic!("{other:?}"),
    }
    assert!(matches!(ctl.cmd(&["HISTORY", "h", "x"]), Reply::Error(_)));
}

/// The rule the whole design serves: while a publisher keeps publishing, clients
/// reconnect and recover again and again; each ends with every message once, in
/// order, with no gap.
#[test]
fn recovery_racing_publishes_loses_nothing_and_doubles_nothing() {
    // The publisher runs unthrottled and the client reads only a few messages a
    // round, so it may fall far behind: every missed message must stay recoverable.
    let s = server(&["--history-size", "100000", "--max-recover", "100000"]);
    let mut ws = ws_connect_v1(&s.url("?rooms=race"));
    let mut epoch = epoch_of(&joined(&mut ws, "race"));
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let control = s.control;
    let publisher = {
        let (stop, total) = (stop.clone(), total.clone());
        thread::spawn(move || {
            let mut ctl = Resp::connect(control);
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                ctl.int(&["PUBLISH", "race", &i.to_string()]);
                total.store(i, Ordering::SeqCst);
            }
        })
    };
    let mut last = 0u64;
    for round in 0..30 {
        // Read a few live messages, then drop the connection and recover.
        for _ in 0..(round % 5) {
            let m = next_json(&mut ws);
            let o = m["offset"].as_u64().expect("offset");
            assert_eq!(o, last + 1, "round {round}: no gap, no duplicate");
            assert_eq!(m["data"], o.to_string());
            last = o;
        }
        drop(ws);
        ws = ws_connect_v1(&s.url(&format!("?rooms=race&recover=race:{epoch}:{last}")));
        let j = joined(&mut ws, "race");
        assert_eq!(j["recovered"], true, "round {round}: {j}");
        epoch = epoch_of(&j);
    }
    stop.store(true, Ordering::SeqCst);
    publisher.join().unwrap();
    let end = total.load(Ordering::SeqCst);
    while last < end {
        let m = next_json(&mut ws);
        let o = m["offset"].as_u64().expect("offset");
        assert_eq!(o, last + 1, "after the rounds: no gap, no duplicate");
        last = o;
    }
    assert_eq!(last, end);
}

/// `--demo` serves the page and the client's modules on the WebSocket port; without
/// it those paths are 404.
#[test]
fn demo_page_and_client_modules_are_served_only_with_demo() {
    let s = server(&["--demo", "--path", "/push"]);
    let (_c, head) = raw_request(s.ws, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    let mut c = std::net::TcpStream::connect(s.ws).unwrap();
    std::io::Write::write_all(&mut c, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let page = String::from_utf8_lossy(&read_until_server_closes(&mut c)).into_owned();
    assert!(page.contains("text/html") && page.contains("wspush demo"));
    assert!(page.contains("/push") && page.contains("/client/wspush.js"));
    for m in [
        "wspush.js",
        "backoff.js",
        "positions.js",
        "url.js",
        "jwt.js",
    ] {
        let req = format!("GET /client/{m} HTTP/1.1\r\nHost: x\r\n\r\n");
        let (_c, head) = raw_request(s.ws, req.as_bytes());
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{m}: {head}");
        assert!(head.contains("text/javascript"), "{m}: {head}");
    }
    let plain = server(&[]);
    let (_c, head) = raw_request(plain.ws, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
}

/// A backend JOIN of a `wspush.v1` connection gives it a `joined` with the room's
/// position before the room's first push; a backend LEAVE stops the pushes.
#[test]
fn a_backend_join_tells_a_v1_client_the_position_first() {
    let s = server(&["--history-size", "10"]);
    publish(&s, "j", "before");
    let mut ws = ws_connect_v1(&s.url("?user=bo"));
    let mut ctl = s.control();
    assert_eq!(ctl.int(&["JOIN", "bo", "j"]), 1);
    assert_eq!(ctl.int(&["PUBLISH", "j", "after"]), 1);
    let j = joined(&mut ws, "j");
    assert_eq!(j["offset"], 1, "{j}");
    let m = next_json(&mut ws);
    assert_eq!(
        (m["offset"].as_u64(), m["data"].as_str()),
        (Some(2), Some("after"))
    );
    assert_eq!(ctl.int(&["LEAVE", "bo", "j"]), 1);
    assert_eq!(ctl.int(&["PUBLISH", "j", "gone"]), 0);
    assert_eq!(ctl.int(&["SEND", "bo", "marker"]), 1);
    assert_eq!(next_json(&mut ws)["data"], "marker");
}

/// With history off (the default), a publish while the room has no member here still
/// moves the room's offset: a client that missed it must not be told it recovered.
#[test]
fn with_history_off_a_publish_nobody_received_still_moves_the_position() {
    let s = server(&[]);
    let mut ws = ws_connect_v1(&s.url("?rooms=q"));
    let epoch = epoch_of(&joined(&mut ws, "q"));
    assert_eq!(publish(&s, "q", "one"), 1);
    assert_eq!(next_json(&mut ws)["offset"], 1);
    drop(ws);
    assert!(wait_until(Duration::from_secs(10), || s
        .control()
        .int(&["ONLINE", "q"])
        == 0));
    assert_eq!(publish(&s, "q", "missed"), 0);
    let mut ws = ws_connect_v1(&s.url(&format!("?rooms=q&recover=q:{epoch}:1")));
    let j = joined(&mut ws, "q");
    assert_eq!(
        (j["recovered"].as_bool(), j["offset"].as_u64()),
        (Some(false), Some(2)),
        "{j}"
    );
}

/// A join with `since` of a room the connection is already in: nothing can be
/// replayed without doubling live pushes, so it is `recovered:false` with the position.
#[test]
fn rejoining_a_room_already_joined_with_since_is_not_recovered() {
    let s = server(&["--history-size", "10"]);
    let mut ws = ws_connect_v1(&s.url("?rooms=z"));
    let epoch = epoch_of(&joined(&mut ws, "z"));
    publish(&s, "z", "1");
    assert_eq!(next_json(&mut ws)["offset"], 1);
    ws.send(tungstenite::Message::text(
        json!({"op":"join","room":"z","since":{"epoch":epoch,"offset":0}}).to_string(),
    ))
    .unwrap();
    let j = joined(&mut ws, "z");
    assert_eq!(
        (j["recovered"].as_bool(), j["offset"].as_u64()),
        (Some(false), Some(1))
    );
    publish(&s, "z", "2");
    assert_eq!(next_json(&mut ws)["offset"], 2, "no replay, no double");
}
