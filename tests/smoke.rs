//! End-to-end smoke test: the harness, a WebSocket echo and a control-port push.

mod common;

use common::*;

#[test]
fn pushes_reach_a_room_member_and_echo_works() {
    let server = Server::start(&[]);
    let mut ws = ws_connect(&server.url("?user=alice&rooms=news"));
    let mut ctl = server.control();
    assert_eq!(ctl.int(&["PUBLISH", "news", "hello"]), 1);
    assert_eq!(next_text(&mut ws), "hello");
    ws.send(tungstenite::Message::text(r#"{"op":"ping"}"#))
        .unwrap();
    assert_eq!(next_text(&mut ws), r#"{"op":"pong"}"#);
}
