//! Membership bookkeeping does not leak: after well over 100,000 joins, leaves,
//! connects and disconnects — through client JSON, the upgrade query string and
//! the control port, over a few shared rooms and users — INFO `rooms`,
//! `room_memberships`, `users` and `connected_clients` all return to 0.
//!
//! Along the way every reply is checked, and the per-room counts are checked
//! against what the clients did while they are still connected, so a leak and a
//! miscount cannot cancel out.

mod common;

use std::collections::BTreeSet;
use std::thread;
use std::time::Duration;

use common::*;
use tungstenite::Message;

const JSON_CONNS: usize = 100;
const JSON_REQUESTS_PER_CONN: usize = 1000;
const JSON_THREADS: usize = 4;
const ROOMS: usize = 8;
const QUERY_ROUNDS: usize = 20;
const QUERY_CONNS_PER_ROUND: usize = 50;
const CONTROL_CONNS: usize = 10;
const CONTROL_ROUNDS: usize = 1000;

/// Pipelines `JSON_REQUESTS_PER_CONN` random join/leave requests on one
/// connection, checks every reply, and returns the rooms it ends up in.
fn churn_json(ws: &mut Ws, seed: u64) -> Result<BTreeSet<usize>, String> {
    let mut rng = Lcg(seed);
    let mut rooms = BTreeSet::new();
    let mut expected = Vec::with_capacity(JSON_REQUESTS_PER_CONN);
    for _ in 0..JSON_REQUESTS_PER_CONN {
        let room = rng.below(ROOMS);
        let (op, reply) = if rng.below(2) == 0 {
            rooms.insert(room);
            ("join", "joined")
        } else {
            rooms.remove(&room);
            ("leave", "left")
        };
        ws.write(Message::text(format!(
            r#"{{"op":"{op}","room":"churn{room}"}}"#
        )))
        .map_err(|e| e.to_string())?;
        expected.push(format!(r#"{{"op":"{reply}","room":"churn{room}"}}"#));
    }
    ws.flush().map_err(|e| e.to_string())?;
    for (n, want) in expected.iter().enumerate() {
        let got = loop {
            match ws.read().map_err(|e| format!("reply {n}: {e}"))? {
                Message::Text(t) => break t.to_string(),
                Message::Close(c) => return Err(format!("closed at reply {n}: {c:?}")),
                _ => {}
            }
        };
        if &got != want {
            return Err(format!("reply {n}: expected {want}, got {got}"));
        }
    }
    Ok(rooms)
}

#[test]
fn memberships_users_and_connections_return_to_zero_after_100k_changes() {
    let server = Server::start(&[]);
    let mut ctl = server.control();

    // 1. Client JSON: 100 connections x 1,000 join/leave requests.
    let workers: Vec<_> = (0..JSON_THREADS)
        .map(|t| {
            let urls: Vec<(usize, String)> = (t..JSON_CONNS)
                .step_by(JSON_THREADS)
                .map(|i| (i, server.url(&format!("?user=m{}", i % 10))))
                .collect();
            thread::spawn(move || {
                urls.into_iter()
                    .map(|(i, url)| {
                        let mut ws = ws_connect(&url);
                        let rooms = churn_json(&mut ws, i as u64 + 1)
                            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
                        (ws, rooms)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut json_conns: Vec<(Ws, BTreeSet<usize>)> = Vec::new();
    for w in workers {
        json_conns.extend(w.join().expect("JSON worker"));
    }
    for room in 0..ROOMS {
        let members = json_conns.iter().filter(|(_, r)| r.contains(&room)).count();
        assert_eq!(
            ctl.int(&["ONLINE".to_string(), format!("churn{room}")]),
            members as i64,
            "members of churn{room} after the JSON churn"
        );
    }
    assert_eq!(server.info_u64("users"), 10);
    // Half leave with a close handshake, half just drop the TCP connection.
    for (n, (mut ws, _)) in json_conns.into_iter().enumerate() {
        if n % 2 == 0 {
            ws.close(None).expect("send close");
            while ws.read().is_ok() {}
        }
    }

    // 2. Connects and disconnects with rooms in the query string.
    let mut rng = Lcg(77);
    for round in 0..QUERY_ROUNDS {
        let mut conns: Vec<Ws> = (0..QUERY_CONNS_PER_ROUND)
            .map(|i| {
                let rooms: BTreeSet<usize> = (0..3).map(|_| rng.below(ROOMS)).collect();
                let rooms: Vec<String> = rooms.iter().map(|r| format!("churn{r}")).collect();
                ws_connect(&server.url(&format!(
                    "?user=q{}&rooms={}",
                    (round + i) % 7,
                    rooms.join(",")
                )))
            })
            .collect();
        for ws in conns.iter_mut().step_by(5) {
            ws.send(Message::text(r#"{"op":"join","room":"extra"}"#))
                .expect("send join");
            assert_eq!(next_text(ws), r#"{"op":"joined","room":"extra"}"#);
        }
        assert_eq!(
            ctl.int(&["ONLINE", "extra"]),
            QUERY_CONNS_PER_ROUND.div_ceil(5) as i64
        );
        drop(conns);
        assert!(
            wait_until(Duration::from_secs(30), || ctl.int(&["ONLINE", "extra"])
                == 0),
            "round {round}: closed connections still counted in room extra"
        );
    }

    // 3. Control-port JOIN / LEAVE for a user with several connections.
    let user_conns: Vec<Ws> = (0..CONTROL_CONNS)
        .map(|_| ws_connect(&server.url("?user=ctl")))
        .collect();
    for chunk in (0..CONTROL_ROUNDS).collect::<Vec<_>>().chunks(100) {
        let mut burst = Vec::new();
        for k in chunk {
            let room = format!("churn{}", k % ROOMS);
            burst.extend(Resp::encode(&["JOIN", "ctl", &room]));
            burst.extend(Resp::encode(&["LEAVE", "ctl", &room]));
        }
        ctl.send_raw(&burst);
        for k in chunk {
            assert_eq!(ctl.read(), Reply::Int(CONTROL_CONNS as i64), "JOIN #{k}");
            assert_eq!(ctl.read(), Reply::Int(CONTROL_CONNS as i64), "LEAVE #{k}");
        }
    }
    assert_eq!(ctl.int(&["JOIN", "ctl", "final"]), CONTROL_CONNS as i64);
    assert_eq!(ctl.int(&["ONLINE", "final"]), CONTROL_CONNS as i64);
    drop(user_conns);

    let settled = wait_until(Duration::from_secs(30), || {
        let info = server.info();
        ["rooms", "room_memberships", "users", "connected_clients"]
            .iter()
            .all(|k| info.get(*k).map(String::as_str) == Some("0"))
    });
    let info = server.info();
    assert!(
        settled,
        "leaked: rooms={:?} room_memberships={:?} users={:?} connected_clients={:?}",
        info.get("rooms"),
        info.get("room_memberships"),
        info.get("users"),
        info.get("connected_clients")
    );
}
