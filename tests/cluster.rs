//! Cluster mode end to end (issue 9, contract in the cluster spec): three real
//! `wspush` nodes on real `redis-server` instances, driven through their control
//! ports and seen by independent WebSocket clients (tungstenite).
//!
//! Every test checks both the reply integers the spec defines and what each client
//! receives: exactly once, in order, and nothing it must not get (a marker that has
//! to arrive next). Nodes subscribe in the background, so tests wait for Redis to
//! show a subscription (`PUBSUB NUMSUB`) before publishing. No timing assertions:
//! bounds the spec states are polled deadlines with slack for a loaded 2-core box.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::redis::*;
use common::*;
use tungstenite::Message;

/// The spec's "right within 2 s" for cluster-wide counts, plus 1 s of slack: the
/// machine is shared, and a deadline is a bound to poll against, not a speed test.
const CONVERGE: Duration = Duration::from_secs(3);

/// Reads the next data message as text, or says why not.
fn read_text(ws: &mut Ws) -> Result<String, String> {
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => return Ok(t.to_string()),
            Ok(Message::Binary(b)) => return Err(format!("binary message {b:?}")),
            Ok(Message::Close(c)) => return Err(format!("closed by the server: {c:?}")),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Integer reply of `args` on `server`'s control port.
fn int(server: &Server, args: &[&str]) -> i64 {
    server.control().int(args)
}

/// Waits until `f` holds on every node of `nodes` (in turn), within `bound` each;
/// panics naming the node and the last value `f` saw.
fn converge(
    nodes: &[&Server],
    bound: Duration,
    what: &str,
    mut f: impl FnMut(&Server) -> Result<(), String>,
) {
    for (i, node) in nodes.iter().enumerate() {
        let mut last = String::new();
        let ok = wait_until(bound, || match f(node) {
            Ok(()) => true,
            Err(e) => {
                last = e;
                false
            }
        });
        assert!(
            ok,
            "{what}: node #{i} ({}) never got there: {last}",
            node.control
        );
    }
}

/// `n` room names, half placed on each of two instances by the spec's rule (so a
/// test that wants both instances used gets both).
fn rooms_on_both_instances(n: usize, prefix: &str) -> Vec<String> {
    let mut per = [Vec::new(), Vec::new()];
    for i in 0.. {
        let room = format!("room{i}");
        let k = placement(&format!("{prefix}:room:{room}"), 2);
        if per[k].len() < n / 2 {
            per[k].push(room);
        }
        if per[0].len() + per[1].len() == n {
            break;
        }
    }
    per.concat()
}

/// The ids `NODES` lists; none while the node answers -TRYAGAIN (not linked, or in
/// its first second of being linked).
fn nodes_ids(server: &Server) -> BTreeSet<String> {
    if is_tryagain(&server.control().cmd(&["NODES"])) {
        return BTreeSet::new();
    }
    nodes_of(server)
        .iter()
        .map(|n| n.get("id").cloned().unwrap_or_default())
        .collect()
}

#[test]
fn redis_harness_starts_kills_and_restarts_on_the_same_port() {
    let mut r = RedisServer::start();
    assert_eq!(r.cli(&["PING"]), "PONG");
    assert_eq!(r.cli(&["SET", "k", "v"]), "OK");
    let port = r.port;
    let pid = r.pid();
    r.kill();
    assert!(
        std::net::TcpStream::connect(r.addr()).is_err(),
        "nothing listens after kill()"
    );
    r.restart();
    assert_eq!(r.port, port);
    assert_ne!(r.pid(), pid);
    assert_eq!(r.cli(&["PING"]), "PONG");
    assert_eq!(r.cli(&["GET", "k"]), "", "nothing survives a restart");
    assert_eq!(r.numsub("no-such-channel"), 0);

    let locked = RedisServer::start_with_password("s3cret");
    assert!(locked.url().starts_with("redis://:s3cret@127.0.0.1:"));
    assert_eq!(locked.cli(&["PING"]), "PONG");
    assert_eq!(locked.auth_failures(), 0);
    let mut anon = Resp::connect(locked.addr());
    assert!(matches!(anon.cmd(&["AUTH", "nope"]), Reply::Error(_)));
    assert_eq!(locked.auth_failures(), 1);
}

#[test]
fn placement_rule_of_the_harness_matches_published_vectors() {
    // FNV-1a 64 (Fowler/Noll/Vo test suite) and jump hash (values other
    // implementations of Lamping & Veach's reference code publish).
    assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    assert_eq!(jump_hash(256, 1024), 520);
    assert_eq!(jump_hash(10_863_919_174_838_991, 11), 6);
    assert_eq!(jump_hash(2_016_238_256_797_177_309, 11), 3);
    assert_eq!(jump_hash(42, 1), 0);
}

#[test]
fn standalone_node_has_cluster_disabled_lists_itself_and_is_ready() {
    let server = Server::start(&["--node-id", "solo-1"]);
    let info = server.info();
    assert_eq!(info.get("cluster_enabled").map(String::as_str), Some("0"));
    assert_eq!(
        info.get("cluster_node_id").map(String::as_str),
        Some("solo-1")
    );
    let _ws = ws_connect(&server.url("?rooms=x"));
    // Connection counts in NODES may trail a reactor's loop turn, as INFO's do.
    let mut last = Vec::new();
    let ok = wait_until(Duration::from_secs(10), || {
        last = nodes_of(&server);
        last.len() == 1
            && last[0].get("id").map(String::as_str) == Some("solo-1")
            && last[0].get("self").map(String::as_str) == Some("1")
            && last[0].get("connections").map(String::as_str) == Some("1")
    });
    assert!(ok, "NODES lists just this node: {last:?}");
    assert_eq!(http_status(&server, "/readyz"), 200);
    assert_eq!(int(&server, &["PUBLISH", "x", "m"]), 1);
}

#[test]
fn rooms_are_placed_on_the_instance_jump_hash_of_the_channel_name_picks() {
    let cluster = Cluster::start("place", 1, 2, &[]);
    let node = &cluster.nodes[0];
    let rooms: Vec<String> = (0..16).map(|i| format!("p{i}")).collect();
    let _members: Vec<Ws> = rooms
        .iter()
        .map(|r| ws_connect(&node.url(&format!("?rooms={r}"))))
        .collect();
    for r in &rooms {
        cluster.wait_subscribers(&cluster.room_channel(r), 1);
    }
    let pattern = format!("{}:room:*", cluster.prefix);
    let listed: Vec<BTreeSet<String>> = cluster
        .redis
        .iter()
        .map(|r| r.channels(&pattern).into_iter().collect())
        .collect();
    for r in &rooms {
        let ch = cluster.room_channel(r);
        let want = cluster.instance_of(&ch);
        assert!(
            listed[want].contains(&ch) && !listed[1 - want].contains(&ch),
            "{ch} should be on instance {want} only (jump hash of FNV-1a 64); listed {listed:?}"
        );
    }
    assert!(!listed[0].is_empty() && !listed[1].is_empty(), "{listed:?}");
}

#[test]
fn publish_on_one_node_reaches_every_node_once_and_in_order() {
    let cluster = Cluster::start("publish", 3, 2, &[]);
    let [a, b, c] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    let rooms = rooms_on_both_instances(6, &cluster.prefix);
    // One member of each room on every node, the publisher's own node included.
    let mut members: Vec<(String, Ws)> = Vec::new();
    for room in &rooms {
        for node in [a, b, c] {
            members.push((
                room.clone(),
                ws_connect(&node.url(&format!("?rooms={room}"))),
            ));
        }
    }
    for room in &rooms {
        cluster.wait_subscribers(&cluster.room_channel(room), 3);
    }
    const PER_ROOM: usize = 50;
    let mut ctl = a.control();
    // Pipelined, interleaved across rooms (and so across both instances).
    let mut wire = Vec::new();
    for i in 0..PER_ROOM {
        for room in &rooms {
            wire.extend(Resp::encode(&["PUBLISH", room, &format!("{room}/{i}")]));
        }
    }
    for room in &rooms {
        wire.extend(Resp::encode(&["PUBLISH", room, &format!("{room}/end")]));
    }
    ctl.send_raw(&wire);
    for n in 0..(PER_ROOM + 1) * rooms.len() {
        assert_eq!(
            ctl.read(),
            Reply::Int(1 + 2),
            "reply {n}: 1 local member on A + 2 other nodes"
        );
    }
    for (room, ws) in &mut members {
        for i in 0..PER_ROOM {
            assert_eq!(read_text(ws), Ok(format!("{room}/{i}")), "in order, once");
        }
        assert_eq!(read_text(ws), Ok(format!("{room}/end")), "nothing twice");
    }
    // A publish on B counts B's member and the two other nodes just the same.
    assert_eq!(int(b, &["PUBLISH", &rooms[0], "from b"]), 3);
    assert_eq!(int(c, &["PUBLISH", "nobody-here", "x"]), 0);
    for (room, ws) in &mut members {
        if *room == rooms[0] {
            assert_eq!(read_text(ws), Ok("from b".to_string()));
        }
    }
}

/// The spec's ordering rule across instances: one control connection publishes,
/// pipelined, alternately to rooms placed on different Redis instances (and
/// broadcasts and sends in between); a connection on another node that is in all of
/// them gets every message in publish order.
#[test]
fn one_publishers_messages_keep_their_order_across_redis_instances() {
    let cluster = Cluster::start("order", 3, 2, &[]);
    let rooms = rooms_on_both_instances(4, &cluster.prefix);
    let list = rooms.join(",");
    let mut remote = [
        ws_connect(&cluster.nodes[1].url(&format!("?user=ord&rooms={list}"))),
        ws_connect(&cluster.nodes[2].url(&format!("?user=ord&rooms={list}"))),
    ];
    for room in &rooms {
        cluster.wait_subscribers(&cluster.room_channel(room), 2);
    }
    cluster.wait_subscribers(&cluster.user_channel("ord"), 2);
    const N: usize = 400;
    let mut wire = Vec::new();
    for i in 0..N {
        let text = i.to_string();
        match i % 7 {
            5 => wire.extend(Resp::encode(&["BROADCAST", &text])),
            6 => wire.extend(Resp::encode(&["SEND", "ord", &text])),
            _ => wire.extend(Resp::encode(&["PUBLISH", &rooms[i % rooms.len()], &text])),
        }
    }
    wire.extend(Resp::encode(&["SEND", "ord", "end"]));
    let mut ctl = cluster.nodes[0].control();
    ctl.send_raw(&wire);
    for n in 0..=N {
        assert_eq!(ctl.read(), Reply::Int(2), "reply {n}: the two other nodes");
    }
    for ws in &mut remote {
        let got = numbered_until_end(ws, "end");
        let want: Vec<u64> = (0..N as u64).collect();
        assert_eq!(got, want, "every message once, in publish order");
    }
}

/// `--cluster-order channel`: no waiting on instance switches; every message still
/// arrives once, and each room's messages in publish order.
#[test]
fn channel_order_keeps_each_rooms_order_and_loses_nothing() {
    let cluster = Cluster::start("chorder", 2, 2, &["--cluster-order", "channel"]);
    let rooms = rooms_on_both_instances(4, &cluster.prefix);
    let list = rooms.join(",");
    let mut ws = ws_connect(&cluster.nodes[1].url(&format!("?rooms={list}")));
    for room in &rooms {
        cluster.wait_subscribers(&cluster.room_channel(room), 1);
    }
    const N: usize = 400;
    let mut wire = Vec::new();
    for i in 0..N {
        wire.extend(Resp::encode(&[
            "PUBLISH",
            &rooms[i % rooms.len()],
            &i.to_string(),
        ]));
    }
    let mut ctl = cluster.nodes[0].control();
    ctl.send_raw(&wire);
    for n in 0..N {
        assert_eq!(ctl.read(), Reply::Int(1), "reply {n}");
    }
    let mut got: Vec<u64> = (0..N)
        .map(|_| {
            read_text(&mut ws)
                .expect("a message")
                .parse()
                .expect("a number")
        })
        .collect();
    for r in 0..rooms.len() as u64 {
        let of_room: Vec<u64> = got.iter().copied().filter(|i| i % 4 == r).collect();
        assert!(of_room.windows(2).all(|w| w[0] < w[1]), "room {r} in order");
    }
    got.sort_unstable();
    assert_eq!(got, (0..N as u64).collect::<Vec<_>>(), "each once");
}

#[test]
fn broadcast_reaches_every_connection_on_every_node_once() {
    let cluster = Cluster::start("broadcast", 3, 2, &[]);
    let [a, b, c] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    cluster.wait_subscribers(&format!("{}:cluster", cluster.prefix), 3);
    let mut conns = vec![
        ws_connect(&a.url("")),
        ws_connect(&b.url("?user=u1")),
        ws_connect(&b.url("?rooms=r")),
        ws_connect(&c.url("?user=u2&rooms=r,s")),
    ];
    let mut ctl = a.control();
    for i in 0..20 {
        assert_eq!(
            ctl.int(&["BROADCAST", &format!("b{i}")]),
            1 + 2,
            "1 local connection on A + 2 other nodes"
        );
    }
    assert_eq!(int(b, &["BROADCAST", "from b"]), 2 + 2);
    // A's broadcasts in order; B's one among them anywhere (two publishers on two
    // nodes are not ordered with each other: B delivers its own at once, A's come
    // through Redis), each exactly once.
    for ws in &mut conns {
        let got: Vec<String> = (0..21)
            .map(|_| read_text(ws).expect("a broadcast"))
            .collect();
        let from_a: Vec<&String> = got.iter().filter(|t| *t != "from b").collect();
        let want: Vec<String> = (0..20).map(|i| format!("b{i}")).collect();
        assert_eq!(from_a, want.iter().collect::<Vec<_>>());
        assert_eq!(
            got.iter().filter(|t| *t == "from b").count(),
            1,
            "nothing twice"
        );
    }
    assert_eq!(
        int(a, &["SEND", "u1", "marker"]),
        1,
        "u1 is on B, one other node"
    );
    assert_eq!(
        read_text(&mut conns[1]),
        Ok("marker".to_string()),
        "nothing after"
    );
}

#[test]
fn send_reaches_each_connection_of_the_user_on_other_nodes_once() {
    let cluster = Cluster::start("send", 3, 2, &[]);
    let [a, b, c] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    let mut sam = vec![
        ws_connect(&b.url("?user=sam")),
        ws_connect(&c.url("?user=sam")),
        ws_connect(&c.url("?user=sam&rooms=x")),
    ];
    let mut other = ws_connect(&a.url("?user=other"));
    cluster.wait_subscribers(&cluster.user_channel("sam"), 2);
    cluster.wait_subscribers(&cluster.user_channel("other"), 1);
    let mut ctl = a.control();
    for i in 0..20 {
        assert_eq!(
            ctl.int(&["SEND", "sam", &format!("s{i}")]),
            2,
            "no connection of sam on A + 2 other nodes"
        );
    }
    assert_eq!(int(c, &["SEND", "sam", "from c"]), 2 + 1);
    assert_eq!(ctl.int(&["SEND", "nobody", "x"]), 0);
    for ws in &mut sam {
        for i in 0..20 {
            assert_eq!(read_text(ws), Ok(format!("s{i}")));
        }
        assert_eq!(read_text(ws), Ok("from c".to_string()), "nothing twice");
    }
    assert_eq!(ctl.int(&["SEND", "other", "marker"]), 1);
    assert_eq!(
        read_text(&mut other),
        Ok("marker".to_string()),
        "other got none of sam's"
    );
}

#[test]
fn join_leave_and_kick_on_one_node_act_on_the_users_connections_on_others() {
    let cluster = Cluster::start("join", 3, 2, &[]);
    let [a, b, c] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    let user = "jo";
    // A room on the user channel's instance: the marker SEND below is then ordered
    // after the PUBLISH it has to follow.
    let user_instance = cluster.instance_of(&cluster.user_channel(user));
    let room = (0..)
        .map(|i| format!("club{i}"))
        .find(|r| cluster.instance_of(&cluster.room_channel(r)) == user_instance)
        .expect("some room shares the instance");
    let mut jo = [
        ws_connect(&b.url(&format!("?user={user}"))),
        ws_connect(&c.url(&format!("?user={user}"))),
    ];
    cluster.wait_subscribers(&cluster.user_channel(user), 2);

    assert_eq!(int(a, &["JOIN", user, &room]), 2, "0 on A + 2 other nodes");
    converge(
        &[a, b, c],
        Duration::from_secs(10),
        "ONLINE room after JOIN",
        |n| match int(n, &["ONLINE", &room]) {
            2 => Ok(()),
            v => Err(format!("ONLINE {room} = {v}")),
        },
    );
    cluster.wait_subscribers(&cluster.room_channel(&room), 2);
    assert_eq!(int(c, &["PUBLISH", &room, "hello"]), 1 + 1);
    for ws in &mut jo {
        assert_eq!(read_text(ws), Ok("hello".to_string()));
    }

    assert_eq!(int(a, &["LEAVE", user, &room]), 2);
    // Each node's own part of ONLINE is exact: 0 on B and C means both have applied it.
    converge(
        &[b, c],
        Duration::from_secs(10),
        "ONLINE room after LEAVE",
        |n| match int(n, &["ONLINE", &room]) {
            0 => Ok(()),
            v => Err(format!("ONLINE {room} = {v}")),
        },
    );
    let mut ctl = a.control();
    match ctl.cmd(&["PUBLISH", &room, "after leave"]) {
        Reply::Int(n) => assert!((0..=2).contains(&n), "{n}"),
        other => panic!("PUBLISH replied {other:?}"),
    }
    assert_eq!(ctl.int(&["SEND", user, "marker"]), 2);
    for ws in &mut jo {
        assert_eq!(
            read_text(ws),
            Ok("marker".to_string()),
            "LEAVE stopped the room"
        );
    }

    assert_eq!(int(a, &["KICK", user, "bye now"]), 2);
    for ws in &mut jo {
        assert_eq!(read_close(ws), (4000, "bye now".to_string()));
    }
    converge(&[a, b, c], CONVERGE, "ONLINE after KICK", |n| {
        match int(n, &["ONLINE"]) {
            0 => Ok(()),
            v => Err(format!("ONLINE = {v}")),
        }
    });
}

#[test]
fn online_and_nodes_are_cluster_wide_and_a_killed_node_leaves_them() {
    let mut cluster = Cluster::start("online", 3, 2, &[]);
    let (a, b, c) = (&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]);
    let _a = [ws_connect(&a.url("?rooms=lobby")), ws_connect(&a.url(""))];
    let _b = ws_connect(&b.url("?user=bo&rooms=lobby"));
    let mut c_conns = vec![
        ws_connect(&c.url("?rooms=lobby")),
        ws_connect(&c.url("?rooms=lobby,x")),
        ws_connect(&c.url("")),
    ];
    let counts = |total: i64, lobby: i64| {
        move |n: &Server| {
            let got = (int(n, &["ONLINE"]), int(n, &["ONLINE", "lobby"]));
            if got == (total, lobby) {
                Ok(())
            } else {
                Err(format!(
                    "(ONLINE, ONLINE lobby) = {got:?}, want {:?}",
                    (total, lobby)
                ))
            }
        }
    };
    converge(&[a, b, c], CONVERGE, "cluster-wide ONLINE", counts(6, 4));

    let want_conns: HashMap<&str, &str> =
        [("node-a", "2"), ("node-b", "1"), ("node-c", "3")].into();
    converge(&[a, b, c], CONVERGE, "NODES", |n| {
        let me = n.info().get("cluster_node_id").cloned().unwrap_or_default();
        let nodes = nodes_of(n);
        if nodes.len() != 3 {
            return Err(format!("{} nodes: {nodes:?}", nodes.len()));
        }
        for node in &nodes {
            let id = node.get("id").map(String::as_str).unwrap_or("");
            for field in [
                "connections",
                "rooms",
                "users",
                "last_seen_ms",
                "uptime_s",
                "self",
            ] {
                let v = node
                    .get(field)
                    .ok_or(format!("{id} has no {field}: {node:?}"))?;
                v.parse::<u64>()
                    .map_err(|_| format!("{id} {field}={v:?} is not a number"))?;
            }
            let is_self = if id == me { "1" } else { "0" };
            if node.get("self").map(String::as_str) != Some(is_self) {
                return Err(format!("{id} self should be {is_self} on {me}: {node:?}"));
            }
            if node.get("connections").map(String::as_str) != want_conns.get(id).copied() {
                return Err(format!("{id} connections: {node:?}"));
            }
        }
        Ok(())
    });

    drop(c_conns.remove(0));
    converge(
        &[a, b, c],
        CONVERGE,
        "ONLINE after a close on C",
        counts(5, 3),
    );

    assert!(!cluster.nodes[2].kill().success());
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let ab: BTreeSet<String> = ["node-a", "node-b"].map(String::from).into();
    converge(&[a, b], Duration::from_secs(8), "killed node leaves", |n| {
        let ids = nodes_ids(n);
        let got = (int(n, &["ONLINE"]), int(n, &["ONLINE", "lobby"]));
        if ids == ab && got == (3, 2) {
            Ok(())
        } else {
            Err(format!("NODES {ids:?}, (ONLINE, ONLINE lobby) = {got:?}"))
        }
    });

    // A cleanly stopped node says so on its way out, ahead of the 3 s timeout.
    assert!(cluster.nodes[1].terminate().success());
    let a = &cluster.nodes[0];
    let only_a: BTreeSet<String> = ["node-a".to_string()].into();
    converge(
        &[a],
        Duration::from_secs(2),
        "stopped node leaves at once",
        |n| {
            let ids = nodes_ids(n);
            if ids == only_a && int(n, &["ONLINE"]) == 2 {
                Ok(())
            } else {
                Err(format!("NODES {ids:?}"))
            }
        },
    );
}

/// What a publisher saw for one numbered message.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    /// Delivered to `n` = local + other nodes.
    Count(i64),
    /// `-TRYAGAIN broker unavailable`: never sent to Redis.
    Unavailable,
    /// Any other `-TRYAGAIN` (connection lost with the command in flight).
    Lost,
}

/// Reads text messages up to `end`, as numbers; panics on anything else.
fn numbered_until_end(ws: &mut Ws, end: &str) -> Vec<u64> {
    let mut got = Vec::new();
    loop {
        let t = read_text(ws).unwrap_or_else(|e| panic!("after {:?}: {e}", got.last()));
        if t == end {
            return got;
        }
        got.push(
            t.parse()
                .unwrap_or_else(|_| panic!("unexpected message {t:?}")),
        );
    }
}

#[test]
fn redis_restart_mid_stream_resumes_delivery_without_duplicates_or_reordering() {
    let mut cluster = Cluster::start("restart", 3, 2, &[]);
    let room = "stream";
    let mut conns: Vec<Ws> = cluster
        .nodes
        .iter()
        .map(|n| ws_connect(&n.url(&format!("?rooms={room}"))))
        .collect();
    let channel = cluster.room_channel(room);
    cluster.wait_subscribers(&channel, 3);
    let k = (0..cluster.redis.len())
        .find(|&i| cluster.redis[i].numsub(&channel) == 3)
        .expect("the instance holding the room");

    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (outcomes, stop) = (outcomes.clone(), stop.clone());
        let mut ctl = cluster.nodes[0].control();
        let room = room.to_string();
        thread::spawn(move || {
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let outcome = match ctl.cmd(&["PUBLISH", &room, &seq.to_string()]) {
                    Reply::Int(n) => Outcome::Count(n),
                    Reply::Error(e) if e.starts_with("TRYAGAIN broker unavailable") => {
                        Outcome::Unavailable
                    }
                    Reply::Error(e) if e.starts_with("TRYAGAIN") => Outcome::Lost,
                    other => panic!("PUBLISH {seq} replied {other:?}"),
                };
                outcomes.lock().unwrap().push(outcome);
                // A steady stream, not a flood: the outage must fall mid-stream.
                thread::sleep(Duration::from_millis(5));
            }
            // Same connection, so ordered after every numbered message.
            ctl.cmd(&["PUBLISH", &room, "end"])
        })
    };
    let seen = |pred: &dyn Fn(&[Outcome]) -> bool| {
        wait_until(Duration::from_secs(15), || pred(&outcomes.lock().unwrap()))
    };
    assert!(seen(&|o| o
        .iter()
        .filter(|x| **x == Outcome::Count(3))
        .count()
        >= 20));

    cluster.redis[k].kill();
    converge(
        &cluster.nodes.iter().collect::<Vec<_>>(),
        Duration::from_secs(10),
        "/readyz during the outage",
        |n| match http_status(n, "/readyz") {
            503 => Ok(()),
            s => Err(format!("/readyz {s}")),
        },
    );
    assert!(
        seen(&|o| o.contains(&Outcome::Unavailable)),
        "PUBLISH answers -TRYAGAIN broker unavailable during the outage"
    );
    cluster.redis[k].restart();
    let boundary = outcomes.lock().unwrap().len();
    converge(
        &cluster.nodes.iter().collect::<Vec<_>>(),
        Duration::from_secs(15),
        "/readyz after the restart",
        |n| match http_status(n, "/readyz") {
            200 => Ok(()),
            s => Err(format!("/readyz {s}")),
        },
    );
    cluster.wait_subscribers(&channel, 3);
    assert!(
        seen(&|o| o[boundary..]
            .iter()
            .filter(|x| **x == Outcome::Count(3))
            .count()
            >= 20),
        "delivery to all three nodes resumes"
    );
    stop.store(true, Ordering::Relaxed);
    assert_eq!(publisher.join().expect("publisher"), Reply::Int(3));

    let outcomes = outcomes.lock().unwrap().clone();
    let seqs_where = |f: &dyn Fn(usize, &Outcome) -> bool| -> BTreeSet<u64> {
        outcomes
            .iter()
            .enumerate()
            .filter(|(i, o)| f(*i, o))
            .map(|(i, _)| i as u64 + 1)
            .collect()
    };
    let never_sent = seqs_where(&|_, o| *o == Outcome::Unavailable);
    let must_reach_all = seqs_where(&|i, o| i >= boundary && *o == Outcome::Count(3));
    let must_reach_local =
        seqs_where(&|_, o| matches!(o, Outcome::Count(_) | Outcome::Unavailable));
    for (i, ws) in conns.iter_mut().enumerate() {
        let got = numbered_until_end(ws, "end");
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "node #{i}: strictly increasing (no duplicate, no reordering): {got:?}"
        );
        let got: BTreeSet<u64> = got.into_iter().collect();
        if i == 0 {
            let missing: Vec<_> = must_reach_local.difference(&got).collect();
            assert!(missing.is_empty(), "A's own member missed {missing:?}");
        } else {
            let missing: Vec<_> = must_reach_all.difference(&got).collect();
            assert!(
                missing.is_empty(),
                "node #{i} missed {missing:?} after the restart"
            );
            let resent: Vec<_> = never_sent.intersection(&got).collect();
            assert!(
                resent.is_empty(),
                "node #{i} got {resent:?}, answered unavailable"
            );
        }
    }
    for (i, node) in cluster.nodes.iter_mut().enumerate() {
        assert!(node.alive(), "node #{i} crashed");
        assert!(node.info_u64("cluster_reconnects") >= 1, "node #{i}");
        assert!(node.info_u64("cluster_disconnects") >= 1, "node #{i}");
    }
}

#[test]
fn client_kill_type_pubsub_is_survived_by_resubscribing() {
    let mut cluster = Cluster::start("clientkill", 3, 2, &[]);
    let room = "feed";
    let channel = cluster.room_channel(room);
    let k = cluster.instance_of(&channel);
    let mut members = [
        ws_connect(&cluster.nodes[1].url(&format!("?rooms={room}"))),
        ws_connect(&cluster.nodes[2].url(&format!("?rooms={room}"))),
    ];
    cluster.wait_subscribers(&channel, 2);
    let before: Vec<u64> = cluster
        .nodes
        .iter()
        .map(|n| n.info_u64("cluster_reconnects"))
        .collect();
    let mut ctl = cluster.nodes[0].control();
    assert_eq!(ctl.int(&["PUBLISH", room, "before"]), 2);
    for ws in &mut members {
        assert_eq!(read_text(ws), Ok("before".to_string()));
    }

    // Redis counts a connection as pubsub only while it holds a subscription: B and
    // C hold the room's channel there, A only if the cluster channel lives there too.
    let cluster_here = cluster.instance_of(&format!("{}:cluster", cluster.prefix)) == k;
    let killed_nodes: Vec<usize> = if cluster_here {
        vec![0, 1, 2]
    } else {
        vec![1, 2]
    };
    let killed = cluster.redis[k].cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert_eq!(
        killed,
        killed_nodes.len().to_string(),
        "CLIENT KILL TYPE pubsub on instance {k}"
    );
    for (i, node) in cluster.nodes.iter().enumerate() {
        if !killed_nodes.contains(&i) {
            continue;
        }
        let mut last = 0;
        let ok = wait_until(Duration::from_secs(10), || {
            last = node.info_u64("cluster_reconnects");
            last > before[i]
        });
        assert!(ok, "node #{i}: cluster_reconnects stayed {last}");
    }
    cluster.wait_subscribers(&channel, 2);
    cluster.wait_formed();
    assert_eq!(ctl.int(&["PUBLISH", room, "after"]), 2);
    for ws in &mut members {
        assert_eq!(
            read_text(ws),
            Ok("after".to_string()),
            "once, nothing re-sent"
        );
    }
    for (i, node) in cluster.nodes.iter_mut().enumerate() {
        assert!(node.alive(), "node #{i} crashed");
    }
}

/// Sum of `sub=` over the connections named `wspush:<id>:sub` on one instance.
fn node_sub_count(redis: &RedisServer, id: &str) -> i64 {
    let name = format!("wspush:{id}:sub");
    let clients = redis.client_list();
    let mine: Vec<_> = clients
        .iter()
        .filter(|c| c.get("name") == Some(&name))
        .collect();
    assert_eq!(mine.len(), 1, "one {name} connection: {clients:?}");
    mine[0]
        .get("sub")
        .and_then(|s| s.parse().ok())
        .expect("sub= in CLIENT LIST")
}

#[test]
fn a_channel_is_subscribed_only_by_nodes_with_members_and_dropped_after_the_last_leaves() {
    let cluster = Cluster::start("unsub", 3, 2, &[]);
    let room_ch = cluster.room_channel("solo");
    let user_ch = cluster.user_channel("uu");
    let member = ws_connect(&cluster.nodes[1].url("?rooms=solo"));
    let user = ws_connect(&cluster.nodes[2].url("?user=uu"));
    cluster.wait_subscribers(&room_ch, 1);
    cluster.wait_subscribers(&user_ch, 1);

    let listed = |pattern: &str, ch: &str| -> Vec<usize> {
        (0..cluster.redis.len())
            .filter(|&i| cluster.redis[i].channels(pattern).iter().any(|c| c == ch))
            .collect()
    };
    let rooms = format!("{}:room:*", cluster.prefix);
    let users = format!("{}:user:*", cluster.prefix);
    assert_eq!(listed(&rooms, &room_ch).len(), 1, "on exactly one instance");
    assert_eq!(listed(&users, &user_ch).len(), 1, "on exactly one instance");
    // Against node-a (no members at all) as the baseline, node-b's subscriber
    // connection carries one more channel on the room's instance only, node-c's on
    // the user's instance only.
    let k = listed(&rooms, &room_ch)[0];
    let ku = listed(&users, &user_ch)[0];
    for (i, redis) in cluster.redis.iter().enumerate() {
        let subs: Vec<i64> = (0..3).map(|n| node_sub_count(redis, &node_id(n))).collect();
        assert_eq!(
            (subs[1] - subs[0], subs[2] - subs[0]),
            (i64::from(i == k), i64::from(i == ku)),
            "instance {i}: sub= of node-a, node-b, node-c {subs:?} ({room_ch} on {k}, {user_ch} on {ku})"
        );
    }

    drop(member);
    drop(user);
    for (pattern, ch) in [(&rooms, &room_ch), (&users, &user_ch)] {
        let mut last = Vec::new();
        let ok = wait_until(Duration::from_secs(5), || {
            last = listed(pattern, ch);
            last.is_empty()
        });
        assert!(
            ok,
            "{ch} still subscribed on instance(s) {last:?} after its last member left"
        );
    }
    assert_eq!(
        cluster.subscribers(&format!("{}:cluster", cluster.prefix)),
        3
    );
}

#[test]
fn a_redis_password_works_and_a_wrong_one_leaves_the_broker_down() {
    let redis = RedisServer::start_with_password("s3cret");
    let prefix = unique_prefix("password");
    let good = [redis.url()];
    let bad = [format!("redis://:wrong@127.0.0.1:{}", redis.port)];
    let a = start_node(&good, "node-a", &prefix, &[]);
    let b = start_node(&good, "node-b", &prefix, &[]);
    let mut c = start_node(&bad, "node-c", &prefix, &[]);
    let ab: BTreeSet<String> = ["node-a", "node-b"].map(String::from).into();
    converge(
        &[&a, &b],
        Duration::from_secs(10),
        "password cluster",
        |n| {
            let (up, ids) = (n.info_u64("cluster_broker_up"), nodes_ids(n));
            if up == 1 && ids == ab {
                Ok(())
            } else {
                Err(format!("cluster_broker_up:{up}, NODES {ids:?}"))
            }
        },
    );
    let mut on_b = ws_connect(&b.url("?rooms=p"));
    let mut on_c = ws_connect(&c.url("?rooms=p"));
    let ch = format!("{prefix}:room:p");
    let ok = wait_until(Duration::from_secs(10), || redis.numsub(&ch) == 1);
    assert!(ok, "node-b subscribes {ch}");
    assert_eq!(int(&a, &["PUBLISH", "p", "through redis"]), 1);
    assert_eq!(read_text(&mut on_b), Ok("through redis".to_string()));

    // node-c has tried (both of its connections) with the wrong password.
    let ok = wait_until(Duration::from_secs(10), || redis.auth_failures() >= 2);
    assert!(ok, "auth failures {}", redis.auth_failures());
    assert!(c.alive());
    assert_eq!(c.info_u64("cluster_broker_up"), 0);
    assert_eq!(http_status(&c, "/readyz"), 503);
    match c.control().cmd(&["PUBLISH", "p", "local only"]) {
        Reply::Error(e) => assert!(e.starts_with("TRYAGAIN broker unavailable"), "{e}"),
        other => panic!("PUBLISH with the broker down replied {other:?}"),
    }
    assert_eq!(
        read_text(&mut on_c),
        Ok("local only".to_string()),
        "still delivered locally"
    );
    match c.control().cmd(&["ONLINE"]) {
        Reply::Error(e) => assert!(e.starts_with("TRYAGAIN broker unavailable"), "{e}"),
        other => panic!("ONLINE with the broker down replied {other:?}"),
    }
    assert_eq!(nodes_ids(&a), ab, "node-c never joined");
    assert_eq!(int(&a, &["PUBLISH", "p", "again"]), 1);
    assert_eq!(read_text(&mut on_b), Ok("again".to_string()));
    assert!(c.alive());
}

#[test]
fn bad_redis_and_node_id_values_refuse_to_start_with_status_2() {
    let redis = RedisServer::start();
    let url = redis.url();
    // The control: a good value starts, in cluster mode.
    let ok = start_node(
        std::slice::from_ref(&url),
        "node-a",
        &unique_prefix("badflags"),
        &[],
    );
    assert_eq!(
        ok.info().get("cluster_enabled").map(String::as_str),
        Some("1")
    );
    drop(ok);

    let port = redis.port;
    for bad in [
        "http://127.0.0.1:6379".to_string(),
        "redis://".to_string(),
        format!("redis://127.0.0.1:{port}:{port}"),
        "redis://127.0.0.1:notaport".to_string(),
        "redis://127.0.0.1:65536".to_string(),
        format!("redis://127.0.0.1:{port}/notadb"),
        "127.0.0.1:6379".to_string(),
    ] {
        let r = start_expecting_refusal(&["--redis", &bad], None);
        assert_eq!(r.status.code(), Some(2), "--redis {bad}: {:?}", r.stderr);
        assert!(
            r.stderr.contains("--redis") && r.stderr.contains(&bad),
            "the message names the flag and the value {bad:?}: {:?}",
            r.stderr
        );
        assert!(!r.stderr.contains("unexpected argument"), "{:?}", r.stderr);
    }
    for bad in [
        "node a".to_string(),
        "x".repeat(129),
        "caf\u{e9}".to_string(),
    ] {
        let r = start_expecting_refusal(&["--redis", &url, "--node-id", &bad], None);
        assert_eq!(
            r.status.code(),
            Some(2),
            "--node-id {bad:?}: {:?}",
            r.stderr
        );
        assert!(r.stderr.contains("--node-id"), "{:?}", r.stderr);
    }
}

/// After Redis restarts empty, every node writes its presence counts again and
/// re-subscribes every channel it needs, in batches (more channels than one SUBSCRIBE
/// batch of 500 here); `/db` in the URL puts the presence hashes in that database.
#[test]
fn a_restarted_redis_gets_every_subscription_and_presence_count_back() {
    let mut redis = RedisServer::start();
    let url = format!("{}/3", redis.url());
    let prefix = unique_prefix("resub");
    let a = start_node(std::slice::from_ref(&url), "node-a", &prefix, &[]);
    let b = start_node(
        std::slice::from_ref(&url),
        "node-b",
        &prefix,
        &["--max-rooms-per-conn", "2000"],
    );
    for node in [&a, &b] {
        assert_info_eventually(node, "cluster_broker_up", 1);
    }
    // One connection of user "many" on B, joined to 1,200 rooms by the backend.
    let mut ws = ws_connect(&b.url("?user=many&rooms=lobby"));
    let mut ctl = b.control();
    const ROOMS: usize = 1200;
    let mut wire = Vec::new();
    for i in 0..ROOMS {
        wire.extend(Resp::encode(&["JOIN", "many", &format!("r{i}")]));
    }
    ctl.send_raw(&wire);
    for i in 0..ROOMS {
        assert_eq!(ctl.read(), Reply::Int(1), "JOIN {i}");
    }
    // The cluster channel, the user's, lobby and the 1,200 rooms.
    let want = (ROOMS + 3) as u64;
    assert_info_eventually(&b, "cluster_subscribed_channels", want);
    assert!(
        wait_until(CONVERGE, || matches!(
            a.control().cmd(&["ONLINE", "lobby"]),
            Reply::Int(1)
        )),
        "ONLINE lobby on A before the restart"
    );
    let key = format!("{prefix}:presence:lobby");
    assert_eq!(
        redis.cli(&["-n", "3", "EXISTS", &key]),
        "1",
        "presence in db 3"
    );
    assert_eq!(
        redis.cli(&["-n", "0", "EXISTS", &key]),
        "0",
        "and not in db 0"
    );

    redis.kill();
    redis.restart();
    assert_info_eventually(&b, "cluster_subscribed_channels", want);
    let numsub = redis.numsub(&format!("{prefix}:room:r{}", ROOMS - 1));
    assert_eq!(numsub, 1, "the last batch is subscribed too");
    assert!(
        wait_until(Duration::from_secs(8), || {
            matches!(a.control().cmd(&["ONLINE", "lobby"]), Reply::Int(1))
        }),
        "B wrote its presence again after the restart"
    );
    assert!(
        b.info_u64("cluster_reconnects") >= 2,
        "both connections came back"
    );
    assert_eq!(int(&a, &["PUBLISH", "r7", "after"]), 1);
    assert_eq!(read_text(&mut ws), Ok("after".to_string()));
}

/// Cluster-wide positions (`--history-size` with `--redis`): every node gives a room
/// message the same epoch and offset; a client whose node is killed reconnects to
/// another node and recovers everything published meanwhile, then goes live.
#[test]
fn a_client_recovers_on_another_node_after_its_node_is_killed() {
    let mut cluster = Cluster::start("hrecover", 3, 2, &["--history-size", "100"]);
    let room = "hr";
    let mut on_b = ws_connect_v1(&cluster.nodes[1].url(&format!("?rooms={room}")));
    let mut on_a = ws_connect_v1(&cluster.nodes[0].url(&format!("?rooms={room}")));
    let jb = next_json(&mut on_b);
    let ja = next_json(&mut on_a);
    assert_eq!(
        (jb["op"].as_str(), jb["offset"].as_u64()),
        (Some("joined"), Some(0)),
        "{jb}"
    );
    assert_eq!(ja["epoch"], jb["epoch"], "one epoch cluster-wide");
    let epoch = jb["epoch"].as_str().expect("epoch").to_string();
    cluster.wait_subscribers(&cluster.room_channel(room), 2);
    let mut ctl = cluster.nodes[0].control();
    for i in 1..=5 {
        // A's own member + B.
        assert_eq!(ctl.int(&["PUBLISH", room, &format!("m{i}")]), 2);
    }
    for i in 1..=5u64 {
        for ws in [&mut on_b, &mut on_a] {
            let m = next_json(ws);
            assert_eq!(m["offset"], i, "{m}");
            assert_eq!(m["epoch"], epoch.as_str());
            assert_eq!(m["data"], format!("m{i}"));
        }
    }
    drop(on_b);
    for i in 6..=10 {
        ctl.int(&["PUBLISH", room, &format!("m{i}")]);
    }
    cluster.nodes[1].kill();
    let mut on_c =
        ws_connect_v1(&cluster.nodes[2].url(&format!("?rooms={room}&recover={room}:{epoch}:5")));
    let j = next_json(&mut on_c);
    assert_eq!(j["op"], "joined");
    assert_eq!(j["recovered"], true, "{j}");
    assert_eq!(
        (j["epoch"].as_str(), j["offset"].as_u64()),
        (Some(epoch.as_str()), Some(10))
    );
    for i in 6..=10u64 {
        let m = next_json(&mut on_c);
        assert_eq!(
            (m["offset"].as_u64(), m["data"].as_str()),
            (Some(i), Some(&*format!("m{i}")))
        );
    }
    cluster.wait_subscribers(&cluster.room_channel(room), 2);
    ctl.int(&["PUBLISH", room, "live"]);
    let m = next_json(&mut on_c);
    assert_eq!(
        (m["offset"].as_u64(), m["data"].as_str()),
        (Some(11), Some("live"))
    );
    // HISTORY reads the room's stream in Redis, the same on every node.
    for node in [&cluster.nodes[0], &cluster.nodes[2]] {
        match node.control().cmd(&["HISTORY", room, "3"]) {
            Reply::Array(v) => {
                assert_eq!(v[0], Reply::Bulk(Some(epoch.clone().into_bytes())));
                assert_eq!(v[1], Reply::Int(11));
                let Reply::Array(entries) = &v[2] else {
                    panic!("{v:?}")
                };
                let got: Vec<Reply> = entries.clone();
                let want: Vec<Reply> = [(9, "m9"), (10, "m10"), (11, "live")]
                    .iter()
                    .map(|(o, d)| {
                        Reply::Array(vec![
                            Reply::Int(*o),
                            Reply::Bulk(Some(d.as_bytes().to_vec())),
                        ])
                    })
                    .collect();
                assert_eq!(got, want);
            }
            other => panic!("HISTORY replied {other:?}"),
        }
    }
}

/// Recovery racing a steady publisher, the client hopping between two nodes each
/// round: every message once, in order, every rejoin recovered.
#[test]
fn recovery_across_nodes_racing_publishes_has_no_gap_and_no_duplicate() {
    let cluster = Cluster::start(
        "hrace",
        3,
        2,
        &["--history-size", "5000", "--max-recover", "5000"],
    );
    let room = "race";
    let mut ws = ws_connect_v1(&cluster.nodes[1].url(&format!("?rooms={room}")));
    let j = next_json(&mut ws);
    let mut epoch = j["epoch"].as_str().expect("epoch").to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let control = cluster.nodes[0].control;
    let publisher = {
        let (stop, total) = (stop.clone(), total.clone());
        thread::spawn(move || {
            let mut ctl = Resp::connect(control);
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) && i < 3000 {
                i += 1;
                match ctl.cmd(&["PUBLISH", room, &i.to_string()]) {
                    Reply::Int(_) => total.store(i, Ordering::SeqCst),
                    other => panic!("PUBLISH {i}: {other:?}"),
                }
                thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let mut last = 0u64;
    for round in 0..16 {
        for _ in 0..(round % 4) {
            let m = next_json(&mut ws);
            let o = m["offset"].as_u64().expect("offset");
            assert_eq!(o, last + 1, "round {round}: {m}");
            assert_eq!(m["data"], o.to_string());
            last = o;
        }
        drop(ws);
        let node = &cluster.nodes[1 + round % 2];
        ws = ws_connect_v1(&node.url(&format!("?rooms={room}&recover={room}:{epoch}:{last}")));
        let j = next_json(&mut ws);
        assert_eq!(j["recovered"], true, "round {round}: {j}");
        epoch = j["epoch"].as_str().expect("epoch").to_string();
    }
    stop.store(true, Ordering::SeqCst);
    publisher.join().unwrap();
    let end = total.load(Ordering::SeqCst);
    while last < end {
        let m = next_json(&mut ws);
        let o = m["offset"].as_u64().expect("offset");
        assert_eq!(o, last + 1, "after the rounds: {m}");
        last = o;
    }
}

/// The HTTP API runs the control port's commands, so in cluster mode it gets the
/// same cluster-wide counts, the same delivery to other nodes, and the same
/// `TRYAGAIN` (as 503 with Retry-After) while Redis is down.
#[test]
fn the_http_api_publishes_across_nodes_and_answers_503_without_redis() {
    let mut cluster = Cluster::start("httpapi", 2, 1, &["--http", "127.0.0.1:0"]);
    let mut on_b = ws_connect(&cluster.nodes[1].url("?user=bob&rooms=news"));
    cluster.wait_subscribers(&cluster.room_channel("news"), 1);
    let mut h = common::http::Http::connect(cluster.nodes[0].http.expect("--http"));
    let r = h.post_json(
        "/api/publish",
        &serde_json::json!({"room": "news", "data": "from node-a"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), serde_json::json!({"recipients": 1}));
    assert_eq!(read_text(&mut on_b), Ok("from node-a".to_string()));
    let online = wait_until(Duration::from_secs(10), || {
        h.get("/api/online").json() == serde_json::json!({"online": 1})
    });
    assert!(online, "ONLINE over HTTP counts node-b's connection");
    let nodes = h.get("/api/nodes").json();
    assert_eq!(nodes["nodes"].as_array().map(Vec::len), Some(2), "{nodes}");

    cluster.redis[0].kill();
    let down = wait_until(Duration::from_secs(10), || {
        cluster.nodes[0].info_u64("cluster_broker_up") == 0
    });
    assert!(down);
    let r = h.post_json(
        "/api/publish",
        &serde_json::json!({"room": "news", "data": "nowhere"}),
    );
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    let e = r.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(e.starts_with("TRYAGAIN broker unavailable"), "{e}");
}
