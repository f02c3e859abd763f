//! A short churn soak (scripts/soak.sh is the long one): waves of a few hundred
//! connections with fresh user and room names, client joins, control JOIN / LEAVE /
//! KICK, pushes, a slow reader closed as a slow consumer, wspush.v1 recoveries from
//! history, resets and FINs without a close, short-lived control and HTTP clients;
//! every wave ends with everyone gone, and then every table INFO shows must be back to
//! zero. It asserts through INFO only, never timings: each wait is a bounded poll for a
//! state, and a table left non-zero fails with its name.
//!
//! It must never leave a process behind (the harness stops the server on drop) and
//! only ever talks to loopback.

mod common;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::time::Duration;

use common::http::Http;
use common::{next_json, next_text, wait_until, Reply, Server, Ws};

const WAVES: usize = 4;
const CONNS: usize = 300;
/// Client addresses 127.0.0.2.. (the per-address table gets one entry each).
const SOURCES: u8 = 8;

/// Every table that churning names, ids and waits could grow in; all 0 once no client
/// is left and the history TTL has passed.
const BACK_TO_ZERO: &[&str] = &[
    "connected_clients",
    "sockets",
    "handshaking",
    "established_slots",
    "pending_bytes",
    "http_clients",
    "users",
    "deflate_connections",
    "rooms",
    "room_memberships",
    "tracked_addresses",
    "history_rooms",
    "history_messages",
    "history_bytes",
    "reactor_rooms",
    "reactor_users",
    "reactor_peer_slots",
    "reactor_position_waits",
    "dispatcher_requests",
    "dispatcher_unacked_requests",
    "dispatcher_recovering_rooms",
    "dispatcher_broker_waits",
];

fn field(info: &HashMap<String, String>, key: &str) -> u64 {
    info.get(key)
        .unwrap_or_else(|| panic!("INFO has no {key}"))
        .parse()
        .unwrap_or_else(|_| panic!("INFO {key} is not a number"))
}

/// A TCP connection from `src` to `to`, with a small receive buffer when `small_rcvbuf`
/// (set before connecting, so the window stays small and a client that stops reading
/// fills the server's queue rather than the kernel's).
fn tcp_from(src: Ipv4Addr, to: SocketAddr, small_rcvbuf: bool) -> TcpStream {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    if small_rcvbuf {
        s.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    }
    s.bind(&SocketAddrV4::new(src, 0).into()).expect("bind");
    s.connect(&to.into()).expect("connect");
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn ws_from(server: &Server, src: Ipv4Addr, query: &str, v1: bool, small_rcvbuf: bool) -> Ws {
    use tungstenite::client::IntoClientRequest;
    let mut req = server.url(query).into_client_request().expect("request");
    if v1 {
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "wspush.v1".parse().expect("header"),
        );
    }
    let stream = tcp_from(src, server.ws, small_rcvbuf);
    tungstenite::client::client(req, stream)
        .unwrap_or_else(|e| panic!("connect {query}: {e}"))
        .0
}

/// Drops a WebSocket with a TCP reset: SO_LINGER 0, no close handshake.
fn reset(ws: Ws) {
    let _ = socket2::SockRef::from(ws.get_ref()).set_linger(Some(Duration::ZERO));
    drop(ws);
}

fn src(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + (i % SOURCES as usize) as u8)
}

/// One wave; returns INFO while every client of the wave is still connected.
fn wave(server: &Server, w: usize) -> HashMap<String, String> {
    // With --client-join set, rooms at connect must match it too (no tokens here).
    let tag = format!("soak-w{w}x{}", std::process::id());
    let rooms = CONNS / 10;
    let mut ctl = server.control();
    let mut plain = Vec::new();
    let mut v1 = Vec::new();
    for i in 0..CONNS {
        let user = format!("{tag}-u{}", i / 2);
        let q = format!("?user={user}&rooms={tag}-r{}", i % rooms);
        if i % 30 == 0 {
            let mut ws = ws_from(server, src(i), &q, true, false);
            let joined = next_json(&mut ws);
            assert_eq!(joined["op"], "joined", "{joined}");
            v1.push((ws, user, format!("{tag}-r{}", i % rooms)));
            continue;
        }
        let mut ws = ws_from(server, src(i), &q, false, false);
        if i % 5 == 1 {
            let room = format!("{tag}-cj{}", i % 3);
            ws.send(tungstenite::Message::text(format!(
                r#"{{"op":"join","room":"{room}"}}"#
            )))
            .expect("send join");
            assert!(next_text(&mut ws).contains("joined"));
        }
        plain.push(ws);
    }

    // Control JOIN / LEAVE / KICK of fresh rooms, and pushes to everything.
    for u in (0..CONNS / 2).step_by(7) {
        let n = ctl.int(&["JOIN", &format!("{tag}-u{u}"), &format!("{tag}-j{}", u % 5)]);
        assert!(n >= 1, "JOIN {tag}-u{u} affected {n}");
    }
    for u in (0..CONNS / 2).step_by(14) {
        ctl.int(&[
            "LEAVE",
            &format!("{tag}-u{u}"),
            &format!("{tag}-j{}", u % 5),
        ]);
    }
    let mut kicked = 0;
    for u in (3..CONNS / 2).step_by(31) {
        kicked += ctl.int(&["KICK", &format!("{tag}-u{u}"), "soak"]);
    }
    assert!(kicked > 0);
    for r in 0..rooms {
        assert!(ctl.int(&["PUBLISH", &format!("{tag}-r{r}"), "m"]) > 0);
    }
    for u in (0..CONNS / 2).step_by(9) {
        ctl.int(&["SEND", &format!("{tag}-u{u}"), "to you"]);
    }
    assert!(ctl.int(&["BROADCAST", "everyone"]) > 0);

    // A slow reader: pushed past --max-pending until it is closed as a slow consumer.
    let slow_room = format!("{tag}-slow");
    let slow = ws_from(server, src(0), &format!("?rooms={slow_room}"), false, true);
    let big = "s".repeat(60_000);
    let closed = wait_until(Duration::from_secs(20), || {
        ctl.int(&["PUBLISH", &slow_room, &big]);
        ctl.int(&["ONLINE", &slow_room]) == 0
    });
    assert!(
        closed,
        "the slow reader was never closed as a slow consumer"
    );
    drop(slow);

    // wspush.v1: every v1 client leaves, misses three messages and recovers them.
    for (ws, user, room) in v1.drain(..) {
        let Reply::Array(h) = ctl.cmd(&["HISTORY", &room]) else {
            panic!("HISTORY answered otherwise")
        };
        let (Reply::Bulk(Some(epoch)), Reply::Int(offset)) = (&h[0], &h[1]) else {
            panic!("HISTORY {h:?}")
        };
        let epoch = String::from_utf8(epoch.clone()).expect("epoch");
        drop(ws);
        for k in 0..3 {
            ctl.int(&["PUBLISH", &room, &format!("missed {k}")]);
        }
        let q = format!("?user={user}&rooms={room}&recover={room}:{epoch}:{offset}");
        let mut ws = ws_from(server, src(1), &q, true, false);
        let joined = next_json(&mut ws);
        assert_eq!(joined["recovered"], true, "{joined}");
        for k in 0..3 {
            assert_eq!(next_json(&mut ws)["data"], format!("missed {k}"));
        }
        reset(ws);
    }

    // Short-lived control clients (one of them malformed) and HTTP API clients.
    for k in 0..5 {
        let mut c = server.control();
        if k == 0 {
            c.send_raw(b"*1\r\n$-7\r\n");
            let _ = c.try_read();
        } else {
            assert!(c.int(&["ONLINE", &format!("{tag}-r{k}")]) >= 0);
        }
    }
    let http = server.http.expect("--http");
    for k in 0..5 {
        let mut h = Http::connect(http);
        let r = h.post_json(
            "/api/publish",
            &serde_json::json!({"room": format!("{tag}-r{k}"), "data": "via http"}),
        );
        assert_eq!(r.status, 200);
        assert_eq!(h.get("/api/rooms?top=3").status, 200);
    }

    let during = server.info();
    drop(ctl);

    // Everyone goes: close handshakes, resets, and FINs without a close.
    for (k, mut ws) in plain.into_iter().enumerate() {
        match k % 3 {
            0 => reset(ws),
            1 => drop(ws),
            _ => {
                let _ = ws.close(None);
                let _ = ws.flush();
            }
        }
    }
    let gone = wait_until(Duration::from_secs(15), || {
        let i = server.info();
        field(&i, "connected_clients") == 0 && field(&i, "sockets") == 0
    });
    assert!(gone, "wave {w}: connections left: {:?}", server.info());
    during
}

#[test]
fn churn_leaves_every_table_at_zero() {
    common::raise_fd_limit(4 * CONNS as u64);
    let server = Server::start(&[
        "--threads",
        "2",
        "--http",
        "127.0.0.1:0",
        "--client-join",
        "soak-*",
        "--max-pending",
        "64KiB",
        "--history-size",
        "10",
        "--history-ttl",
        "1s",
        // Per-address limits on, so the address table and the reactors' slots churn;
        // without a rate limit an address is forgotten with its last connection.
        "--max-conns-per-ip",
        "1000",
    ]);
    for w in 0..WAVES {
        let during = wave(&server, w);
        // The fields are live: a table that is never filled would pass for empty.
        for key in [
            "rooms",
            "users",
            "reactor_rooms",
            "reactor_users",
            "reactor_peer_slots",
            "tracked_addresses",
            "history_rooms",
            "room_memberships",
        ] {
            assert!(
                field(&during, key) > 0,
                "wave {w}: INFO {key} was 0 during the wave"
            );
        }
        assert!(field(&during, "slow_consumer_closes") > w as u64);
        assert!(field(&during, "kicked") > 0);
    }

    let mut last = HashMap::new();
    let settled = wait_until(Duration::from_secs(15), || {
        last = server.info();
        BACK_TO_ZERO.iter().all(|k| field(&last, k) == 0) && field(&last, "control_clients") == 1
    });
    let left: Vec<String> = BACK_TO_ZERO
        .iter()
        .filter(|k| field(&last, k) != 0)
        .map(|k| format!("{k}={}", field(&last, k)))
        .collect();
    assert!(
        settled,
        "after {WAVES} waves these did not come back to 0: {left:?}"
    );
    assert_eq!(
        field(&last, "recoveries"),
        (WAVES * CONNS.div_ceil(30)) as u64,
        "every wspush.v1 client recovered"
    );
    assert_eq!(field(&last, "recovery_failures"), 0);
}
