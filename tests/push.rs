//! The push pipeline end to end: control-port PUBLISH / BROADCAST / SEND / JOIN /
//! LEAVE / KICK / ONLINE against the real binary, seen by independent WebSocket
//! clients (tungstenite), and the real `redis-cli` as a backend.
//!
//! Every test proves both halves of a rule: the integer reply the control port
//! gives, and what each WebSocket client actually receives — including what it
//! must NOT receive (checked by a marker message that has to arrive next).
//! Nothing here asserts timings: waits are generous timeouts and `wait_until`.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::thread;
use std::time::Duration;

use common::*;
use tungstenite::Message;

/// Reads the next text or binary message, or says why not (instead of panicking,
/// so a reader thread can report which subscriber failed).
fn read_data(ws: &mut Ws) -> Result<Message, String> {
    loop {
        match ws.read() {
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => return Ok(m),
            Ok(Message::Close(c)) => return Err(format!("closed by the server: {c:?}")),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

const FANOUT_SUBSCRIBERS: usize = 2000;
const FANOUT_ROOMS: usize = 20;
const FANOUT_PUBLISHES: usize = 1000;
const FANOUT_READERS: usize = 20;

#[test]
fn every_subscriber_receives_exactly_its_rooms_messages_in_publish_order() {
    raise_fd_limit(2 * FANOUT_SUBSCRIBERS as u64 + 200);
    let server = Server::start(&["--threads", "2"]);
    let mut rng = Lcg(0x5eed);

    // Each subscriber is in 1-3 distinct rooms, named in its query string.
    let memberships: Vec<BTreeSet<usize>> = (0..FANOUT_SUBSCRIBERS)
        .map(|_| {
            let want = 1 + rng.below(3);
            let mut rooms = BTreeSet::new();
            while rooms.len() < want {
                rooms.insert(rng.below(FANOUT_ROOMS));
            }
            rooms
        })
        .collect();
    let mut members_per_room = [0i64; FANOUT_ROOMS];
    for rooms in &memberships {
        for &r in rooms {
            members_per_room[r] += 1;
        }
    }
    let subscribers: Vec<Ws> = memberships
        .iter()
        .enumerate()
        .map(|(i, rooms)| {
            let names: Vec<String> = rooms.iter().map(|r| format!("fan{r}")).collect();
            ws_connect(&server.url(&format!("?user=s{i}&rooms={}", names.join(","))))
        })
        .collect();
    let mut ctl = server.control();
    assert!(
        wait_until(Duration::from_secs(30), || ctl.int(&["ONLINE"])
            == FANOUT_SUBSCRIBERS as i64),
        "not every subscriber is counted online"
    );

    // All PUBLISHes in one write, then all replies; a final BROADCAST marks the end.
    let publish_rooms: Vec<usize> = (0..FANOUT_PUBLISHES)
        .map(|_| rng.below(FANOUT_ROOMS))
        .collect();
    let mut pipeline = Vec::new();
    for (seq, &room) in publish_rooms.iter().enumerate() {
        pipeline.extend(Resp::encode(&[
            "PUBLISH".to_string(),
            format!("fan{room}"),
            format!("fan{room}:{seq}"),
        ]));
    }
    pipeline.extend(Resp::encode(&["BROADCAST", "end"]));
    ctl.send_raw(&pipeline);
    for (seq, &room) in publish_rooms.iter().enumerate() {
        assert_eq!(
            ctl.read(),
            Reply::Int(members_per_room[room]),
            "reply to PUBLISH #{seq} (room fan{room})"
        );
    }
    assert_eq!(
        ctl.read(),
        Reply::Int(FANOUT_SUBSCRIBERS as i64),
        "BROADCAST"
    );

    // Each subscriber's exact expected stream: its rooms' payloads in publish order.
    let expected: Vec<Vec<String>> = memberships
        .iter()
        .map(|rooms| {
            publish_rooms
                .iter()
                .enumerate()
                .filter(|(_, r)| rooms.contains(r))
                .map(|(seq, r)| format!("fan{r}:{seq}"))
                .collect()
        })
        .collect();
    let total_expected: usize = expected.iter().map(Vec::len).sum();

    // A few reader threads, each owning a slice of the sockets and reading them in
    // turn: the pushes are small, so the kernel buffers hold them meanwhile.
    let per_reader = FANOUT_SUBSCRIBERS.div_ceil(FANOUT_READERS);
    let mut work: Vec<(usize, Ws, Vec<String>)> = subscribers
        .into_iter()
        .zip(expected)
        .enumerate()
        .map(|(i, (ws, exp))| (i, ws, exp))
        .collect();
    let mut readers = Vec::new();
    while !work.is_empty() {
        let mut mine: Vec<_> = work.drain(..per_reader.min(work.len())).collect();
        readers.push(thread::spawn(move || -> Result<(), String> {
            for (i, ws, exp) in &mut mine {
                for (n, want) in exp.iter().enumerate() {
                    match read_data(ws)? {
                        Message::Text(t) if t.as_str() == want => {}
                        got => {
                            return Err(format!(
                                "subscriber {i}: message {n} should be {want:?}, got {got:?}"
                            ))
                        }
                    }
                }
                match read_data(ws)? {
                    Message::Text(t) if t.as_str() == "end" => {}
                    got => {
                        return Err(format!(
                            "subscriber {i}: after its {} messages expected \"end\", got {got:?}",
                            exp.len()
                        ))
                    }
                }
            }
            Ok(())
        }));
    }
    let failures: Vec<String> = readers
        .into_iter()
        .filter_map(|r| r.join().expect("reader thread").err())
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(
        server.info_u64("deliveries"),
        (total_expected + FANOUT_SUBSCRIBERS) as u64,
        "INFO deliveries counts one per message per recipient"
    );
}

#[test]
fn broadcast_reaches_every_connection_and_replies_the_count() {
    let server = Server::start(&[]);
    let mut ctl = server.control();
    assert_eq!(ctl.int(&["BROADCAST", "nobody home"]), 0);
    let mut conns = vec![
        ws_connect(&server.url("?user=alice&rooms=news")),
        ws_connect(&server.url("?user=alice")),
        ws_connect(&server.url("?user=bob&rooms=sport")),
        ws_connect(&server.url("")),
    ];
    assert_eq!(ctl.int(&["BROADCAST", "all hands"]), 4);
    for ws in &mut conns {
        assert_eq!(next_text(ws), "all hands");
    }
}

#[test]
fn send_reaches_every_connection_of_the_user_and_nobody_else() {
    let server = Server::start(&[]);
    let mut alice: Vec<Ws> = (0..3)
        .map(|_| ws_connect(&server.url("?user=alice&rooms=news")))
        .collect();
    let mut bob = ws_connect(&server.url("?user=bob&rooms=news"));
    let mut anonymous = ws_connect(&server.url("?rooms=news"));
    let mut ctl = server.control();
    assert_eq!(ctl.int(&["SEND", "alice", "for alice"]), 3);
    assert_eq!(ctl.int(&["SEND", "carol", "for nobody"]), 0);
    assert_eq!(ctl.int(&["BROADCAST", "marker"]), 5);
    for ws in &mut alice {
        assert_eq!(next_text(ws), "for alice");
        assert_eq!(next_text(ws), "marker", "the SEND arrives once");
    }
    assert_eq!(next_text(&mut bob), "marker", "bob got alice's SEND");
    assert_eq!(
        next_text(&mut anonymous),
        "marker",
        "anonymous got alice's SEND"
    );
}

#[test]
fn payload_that_is_not_utf8_arrives_as_a_binary_frame() {
    let server = Server::start(&[]);
    let mut ws = ws_connect(&server.url("?user=u1&rooms=bin"));
    let mut ctl = server.control();
    let payload: &[u8] = b"\xff\xfe\x00\x01 not utf-8 \xc3\x28";
    assert_eq!(ctl.int(&[&b"PUBLISH"[..], b"bin", payload]), 1);
    assert_eq!(ctl.int(&[&b"SEND"[..], b"u1", payload]), 1);
    assert_eq!(ctl.int(&[&b"BROADCAST"[..], payload]), 1);
    for via in ["PUBLISH", "SEND", "BROADCAST"] {
        match next_data(&mut ws) {
            Message::Binary(b) => assert_eq!(&b[..], payload, "{via}"),
            other => panic!("{via}: expected a binary frame, got {other:?}"),
        }
    }
}

#[test]
fn payload_that_is_utf8_arrives_as_a_text_frame_byte_for_byte() {
    let server = Server::start(&[]);
    let mut ws = ws_connect(&server.url("?rooms=txt"));
    let mut ctl = server.control();
    for payload in ["h\u{e9}llo \u{1f44b}", "", "{\"not\":\"an envelope\"}"] {
        assert_eq!(ctl.int(&["PUBLISH", "txt", payload]), 1);
        match next_data(&mut ws) {
            Message::Text(t) => assert_eq!(t.as_str(), payload),
            other => panic!("expected a text frame for {payload:?}, got {other:?}"),
        }
    }
}

#[test]
fn control_join_puts_every_connection_of_the_user_in_the_room() {
    let server = Server::start(&[]);
    let mut alice: Vec<Ws> = (0..2)
        .map(|_| ws_connect(&server.url("?user=alice")))
        .collect();
    let mut bob = ws_connect(&server.url("?user=bob"));
    let mut ctl = server.control();
    assert_eq!(ctl.int(&["PUBLISH", "news", "before"]), 0);
    assert_eq!(ctl.int(&["JOIN", "alice", "news"]), 2);
    assert_eq!(
        ctl.int(&["JOIN", "alice", "news"]),
        0,
        "already-members do not count"
    );
    assert_eq!(ctl.int(&["JOIN", "nobody", "news"]), 0);
    assert_eq!(ctl.int(&["ONLINE", "news"]), 2);
    assert_eq!(ctl.int(&["PUBLISH", "news", "headline"]), 2);
    assert_eq!(ctl.int(&["BROADCAST", "marker"]), 3);
    for ws in &mut alice {
        assert_eq!(next_text(ws), "headline");
        assert_eq!(next_text(ws), "marker");
    }
    assert_eq!(next_text(&mut bob), "marker", "bob is not in news");
}

#[test]
fn control_leave_stops_the_users_pushes_from_the_room() {
    let server = Server::start(&[]);
    let mut alice: Vec<Ws> = (0..2)
        .map(|_| ws_connect(&server.url("?user=alice&rooms=news")))
        .collect();
    let mut bob = ws_connect(&server.url("?user=bob&rooms=news"));
    let mut ctl = server.control();
    assert_eq!(ctl.int(&["LEAVE", "alice", "news"]), 2);
    assert_eq!(
        ctl.int(&["LEAVE", "alice", "news"]),
        0,
        "non-members do not count"
    );
    assert_eq!(ctl.int(&["ONLINE", "news"]), 1);
    assert_eq!(ctl.int(&["PUBLISH", "news", "bob only"]), 1);
    assert_eq!(ctl.int(&["BROADCAST", "marker"]), 3);
    for ws in &mut alice {
        assert_eq!(next_text(ws), "marker", "alice left news");
    }
    assert_eq!(next_text(&mut bob), "bob only");
}

#[test]
fn kick_closes_every_connection_of_the_user_with_4000_and_the_reason() {
    let server = Server::start(&[]);
    let mut alice: Vec<Ws> = (0..2)
        .map(|_| ws_connect(&server.url("?user=alice&rooms=news")))
        .collect();
    let mut bob = ws_connect(&server.url("?user=bob&rooms=news"));
    let mut mallory = ws_connect(&server.url("?user=mallory"));
    let mut ctl = server.control();
    assert_eq!(ctl.int(&["KICK", "alice", "account suspended"]), 2);
    for ws in &mut alice {
        assert_eq!(read_close(ws), (4000, "account suspended".to_string()));
    }
    assert_eq!(ctl.int(&["KICK", "mallory"]), 1);
    assert_eq!(read_close(&mut mallory), (4000, String::new()));
    assert_eq!(
        ctl.int(&["KICK", "alice"]),
        0,
        "alice has no connections left"
    );
    assert_eq!(ctl.int(&["SEND", "alice", "gone"]), 0);
    assert_eq!(ctl.int(&["PUBLISH", "news", "still here"]), 1);
    assert_eq!(next_text(&mut bob), "still here");
}

#[test]
fn online_counts_connections_in_total_and_per_room() {
    let server = Server::start(&[]);
    let mut ctl = server.control();
    assert_eq!(ctl.int(&["ONLINE"]), 0);
    assert_eq!(ctl.int(&["ONLINE", "a"]), 0);
    let _one = ws_connect(&server.url("?user=u1&rooms=a"));
    let _two = ws_connect(&server.url("?user=u1&rooms=a,b"));
    let three = ws_connect(&server.url("?rooms=b"));
    let _four = ws_connect(&server.url(""));
    assert_eq!(ctl.int(&["ONLINE"]), 4);
    assert_eq!(ctl.int(&["ONLINE", "a"]), 2);
    assert_eq!(ctl.int(&["ONLINE", "b"]), 2);
    assert_eq!(ctl.int(&["ONLINE", "c"]), 0);
    drop(three);
    assert!(wait_until(Duration::from_secs(10), || ctl.int(&["ONLINE"]) == 3));
    assert_eq!(ctl.int(&["ONLINE", "b"]), 1);
    assert_eq!(ctl.int(&["ONLINE", "a"]), 2);
}

/// Runs the real `redis-cli`. Missing is a failure, not a skip: CI installs it.
fn redis_cli(server: &Server, args: &[&str]) -> String {
    let port = server.control.port().to_string();
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port])
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run redis-cli ({e}): install the Debian package redis-tools \
                 (apt-get install redis-tools); CI installs it"
            )
        });
    assert!(
        out.status.success(),
        "redis-cli {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("redis-cli output is UTF-8")
}

#[test]
fn redis_cli_publish_reaches_the_room() {
    let server = Server::start(&[]);
    let mut ws = ws_connect(&server.url("?rooms=news"));
    assert_eq!(
        redis_cli(&server, &["PUBLISH", "news", "hello"]).trim(),
        "1"
    );
    assert_eq!(next_text(&mut ws), "hello");
    assert_eq!(redis_cli(&server, &["PING"]).trim(), "PONG");
}

#[test]
fn redis_cli_authenticates_with_the_control_password() {
    let server = Server::start(&["--control-password", "s3cret"]);
    let mut ws = ws_connect(&server.url("?rooms=news"));
    let out = redis_cli(
        &server,
        &["-a", "s3cret", "--no-auth-warning", "PUBLISH", "news", "hi"],
    );
    assert_eq!(out.trim(), "1");
    assert_eq!(next_text(&mut ws), "hi");
    let out = redis_cli(&server, &["PUBLISH", "news", "sneaky"]);
    assert!(out.starts_with("NOAUTH"), "{out:?}");
}
