//! The client protocol: JSON requests a WebSocket client sends in text frames
//! (join, leave, ping) and the error reply to anything else — and that an error
//! never closes the connection. Membership effects are checked from the control
//! port (ONLINE, PUBLISH), not taken on the reply's word.

mod common;

use common::*;
use tungstenite::Message;

/// Sends one text frame and returns the reply text.
fn request(ws: &mut Ws, text: &str) -> String {
    ws.send(Message::text(text)).expect("send request");
    next_text(ws)
}

/// Expects `{"op":"error","reason":<non-empty string>}`; returns the reason.
fn expect_error_reply(reply: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(reply).unwrap_or_else(|e| panic!("reply {reply:?} is not JSON: {e}"));
    assert_eq!(v["op"], "error", "{reply}");
    let reason = v["reason"].as_str().unwrap_or_default();
    assert!(!reason.is_empty(), "error without a reason: {reply}");
    reason.to_string()
}

/// The connection still works: ping answers and a push arrives.
fn assert_still_usable(server: &Server, ws: &mut Ws) {
    assert_eq!(request(ws, r#"{"op":"ping"}"#), r#"{"op":"pong"}"#);
    assert_eq!(
        server.control().int(&["SEND", "probe", "still open"]),
        1,
        "the connection is still registered"
    );
    assert_eq!(next_text(ws), "still open");
}

#[test]
fn join_replies_joined_and_the_connection_receives_the_rooms_pushes() {
    let server = Server::start(&[]);
    let mut ws = ws_connect(&server.url("?user=u1"));
    assert_eq!(
        request(&mut ws, r#"{"op":"join","room":"news"}"#),
        r#"{"op":"joined","room":"news"}"#
    );
    let mut ctl = server.control();
    assert_eq!(ctl.int(&["ONLINE", "news"]), 1);
    assert_eq!(ctl.int(&["PUBLISH", "news", "headline"]), 1);
    assert_eq!(next_text(&mut ws), "headline");
}

#[test]
fn joining_a_room_twice_is_idempotent() {
    let server = Server::start(&[]);
    let mut ws = ws_connect(&server.url("?rooms=news"));
    assert_eq!(
        request(&mut ws, r#"{"op":"join","room":"news"}"#),
        r#"{"op":"joined","room":"news"}"#
    );
    let mut ctl = server.control();
    assert_eq!(ctl.int(&["ONLINE", "news"]), 1);
    assert_eq!(ctl.int(&["PUBLISH", "news", "once"]), 1);
    assert_eq!(next_text(&mut ws), "once");
    assert_eq!(request(&mut ws, r#"{"op":"ping"}"#), r#"{"op":"pong"}"#);
}

#[test]
fn leave_replies_left_and_the_rooms_pushes_stop() {
    let server = Server::start(&[]);
    let mut ws = ws_connect(&server.url("?rooms=news,sport"));
    assert_eq!(
        request(&mut ws, r#"{"op":"leave","room":"news"}"#),
        r#"{"op":"left","room":"news"}"#
    );
    assert_eq!(
        request(&mut ws, r#"{"op":"leave","room":"never-joined"}"#),
        r#"{"op":"left","room":"never-joined"}"#
    );
    let mut ctl = server.control();
    assert_eq!(ctl.int(&["ONLINE", "news"]), 0);
    assert_eq!(ctl.int(&["PUBLISH", "news", "not for you"]), 0);
    assert_eq!(ctl.int(&["PUBLISH", "sport", "score"]), 1);
    assert_eq!(next_text(&mut ws), "score");
}

#[test]
fn ping_replies_pong() {
    let server = Server::start(&[]);
    let mut ws = ws_connect(&server.url(""));
    for _ in 0..3 {
        assert_eq!(request(&mut ws, r#"{"op":"ping"}"#), r#"{"op":"pong"}"#);
    }
}

#[test]
fn malformed_json_gets_an_error_reply_and_the_connection_stays_open() {
    let server = Server::start(&[]);
    let mut ws = ws_connect(&server.url("?user=probe"));
    for bad in [
        "hello",
        "",
        "{",
        r#"{"op":"join","room":"news""#,
        "[1,2,3]",
        "null",
        r#""join""#,
    ] {
        expect_error_reply(&request(&mut ws, bad));
    }
    assert_still_usable(&server, &mut ws);
}

#[test]
fn unknown_or_missing_op_gets_an_error_reply_and_the_connection_stays_open() {
    let server = Server::start(&[]);
    let mut ws = ws_connect(&server.url("?user=probe"));
    for bad in [
        r#"{"op":"dance"}"#,
        r#"{"op":"JOIN","room":"news"}"#,
        r#"{"op":"subscribe","room":"news"}"#,
        r#"{"room":"news"}"#,
        r#"{"op":7}"#,
        r#"{}"#,
    ] {
        expect_error_reply(&request(&mut ws, bad));
    }
    assert_still_usable(&server, &mut ws);
}

#[test]
fn invalid_room_name_gets_an_error_reply_and_joins_nothing() {
    let server = Server::start(&[]);
    let mut ws = ws_connect(&server.url("?user=probe"));
    let too_long = "r".repeat(129);
    for room in [
        r#""two words""#.to_string(),
        r#""a,b""#.to_string(),
        r#""""#.to_string(),
        format!("\"{too_long}\""),
        r#""caf\u00e9""#.to_string(),
        "42".to_string(),
        "null".to_string(),
    ] {
        for op in ["join", "leave"] {
            let req = format!(r#"{{"op":"{op}","room":{room}}}"#);
            expect_error_reply(&request(&mut ws, &req));
        }
    }
    expect_error_reply(&request(&mut ws, r#"{"op":"join"}"#));
    assert_eq!(server.info_u64("rooms"), 0, "no room was created");
    let longest = "r".repeat(128);
    assert_eq!(
        request(&mut ws, &format!(r#"{{"op":"join","room":"{longest}"}}"#)),
        format!(r#"{{"op":"joined","room":"{longest}"}}"#),
        "128 bytes is still a valid name"
    );
    assert_still_usable(&server, &mut ws);
}

#[test]
fn joining_more_than_max_rooms_per_conn_gets_an_error_reply() {
    let server = Server::start(&["--max-rooms-per-conn", "2"]);
    let mut ws = ws_connect(&server.url("?user=probe&rooms=a"));
    assert_eq!(
        request(&mut ws, r#"{"op":"join","room":"b"}"#),
        r#"{"op":"joined","room":"b"}"#
    );
    expect_error_reply(&request(&mut ws, r#"{"op":"join","room":"c"}"#));
    let mut ctl = server.control();
    assert_eq!(
        ctl.int(&["ONLINE", "c"]),
        0,
        "the refused join did not happen"
    );
    assert_eq!(
        request(&mut ws, r#"{"op":"join","room":"a"}"#),
        r#"{"op":"joined","room":"a"}"#,
        "re-joining a room it is in is not over the limit"
    );
    assert_eq!(
        request(&mut ws, r#"{"op":"leave","room":"a"}"#),
        r#"{"op":"left","room":"a"}"#
    );
    assert_eq!(
        request(&mut ws, r#"{"op":"join","room":"c"}"#),
        r#"{"op":"joined","room":"c"}"#,
        "after a leave there is room again"
    );
    assert_eq!(ctl.int(&["ONLINE", "c"]), 1);
    assert_still_usable(&server, &mut ws);
}

#[test]
fn binary_message_gets_an_error_reply_and_the_connection_stays_open() {
    let server = Server::start(&[]);
    let mut ws = ws_connect(&server.url("?user=probe"));
    ws.send(Message::binary(&br#"{"op":"ping"}"#[..]))
        .expect("send binary");
    expect_error_reply(&next_text(&mut ws));
    assert_still_usable(&server, &mut ws);
}
