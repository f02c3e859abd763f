//! Bounds found by the adversarial probe: answers whose size followed the retained
//! history rather than one connection's limits. A recovery replay must fit in
//! `--max-pending` (else `recovered:false`, before anything is encoded), and a
//! HISTORY reply (RESP or `/api/history`) carries at most 1 MiB of payloads, the
//! newest messages first. Clients are tungstenite, the test RESP and HTTP clients.

mod common;

use common::http::Http;
use common::redis::Cluster;
use common::*;
use serde_json::Value;

/// The payload bytes one HISTORY reply may carry (`HISTORY_REPLY_BYTES`).
const REPLY_BUDGET: usize = 1 << 20;

fn history_offsets(reply: &Reply) -> Vec<i64> {
    let Reply::Array(items) = reply else {
        panic!("HISTORY replied {reply:?}");
    };
    let Some(Reply::Array(entries)) = items.get(2) else {
        panic!("HISTORY replied {reply:?}");
    };
    entries
        .iter()
        .map(|e| match e {
            Reply::Array(pair) => match pair.first() {
                Some(Reply::Int(o)) => *o,
                other => panic!("entry {other:?}"),
            },
            other => panic!("entry {other:?}"),
        })
        .collect()
}

#[test]
fn history_reply_carries_at_most_a_megabyte_of_the_newest_payloads() {
    let s = Server::start(&["--history-size", "100", "--http", "127.0.0.1:0"]);
    let payload = "x".repeat(60_000);
    let published: i64 = 40;
    let mut c = s.control();
    for _ in 0..published {
        c.int(&["PUBLISH", "big", &payload]);
    }
    let fit = (REPLY_BUDGET / payload.len()) as i64;
    let newest: Vec<i64> = (published - fit + 1..=published).collect();

    assert_eq!(history_offsets(&c.cmd(&["HISTORY", "big"])), newest);
    // A count below the budget is answered in full, as before.
    assert_eq!(
        history_offsets(&c.cmd(&["HISTORY", "big", "5"])),
        (published - 4..=published).collect::<Vec<_>>()
    );

    let mut http = Http::connect(s.http.expect("http address"));
    let r = http.get("/api/history?room=big");
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["offset"], published, "{j}");
    let offsets: Vec<i64> = j["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["offset"].as_i64().expect("offset"))
        .collect();
    assert_eq!(offsets, newest);
}

#[test]
fn history_reply_keeps_a_single_message_larger_than_the_budget() {
    let s = Server::start(&["--history-size", "10", "--max-message", "2MiB"]);
    let mut c = s.control();
    c.int(&["PUBLISH", "big", "small"]);
    let huge = "y".repeat(REPLY_BUDGET + 1);
    c.int(&["PUBLISH", "big", &huge]);
    assert_eq!(history_offsets(&c.cmd(&["HISTORY", "big"])), [2]);
}

/// Every retained message of `room`, read a page at a time from the newest back:
/// `HISTORY room count before`, `before` the oldest offset of the previous page.
fn page_back(c: &mut Resp, room: &str, count: usize) -> Vec<i64> {
    let mut all: Vec<i64> = Vec::new();
    let mut page = history_offsets(&c.cmd(&["HISTORY", room, &count.to_string()]));
    while let Some(&oldest) = page.first() {
        all.splice(0..0, page.iter().copied());
        page = history_offsets(&c.cmd(&["HISTORY", room, &count.to_string(), &oldest.to_string()]));
    }
    all
}

#[test]
fn history_pages_back_past_the_reply_budget() {
    let s = Server::start(&["--history-size", "100", "--http", "127.0.0.1:0"]);
    let payload = "x".repeat(60_000);
    let mut c = s.control();
    for _ in 0..40 {
        c.int(&["PUBLISH", "big", &payload]);
    }
    // 40 × 60 KB is over two replies' budget: paging reads every one, in order, once.
    assert_eq!(page_back(&mut c, "big", 100), (1..=40).collect::<Vec<_>>());
    assert_eq!(page_back(&mut c, "big", 7), (1..=40).collect::<Vec<_>>());
    assert_eq!(
        history_offsets(&c.cmd(&["HISTORY", "big", "3", "10"])),
        [7, 8, 9]
    );
    assert_eq!(
        history_offsets(&c.cmd(&["HISTORY", "big", "3", "1"])),
        [0i64; 0]
    );
    assert_eq!(
        c.cmd(&["HISTORY", "big", "3", "x"]),
        Reply::Error("ERR before is not a non-negative integer offset".into())
    );

    let mut http = Http::connect(s.http.expect("http address"));
    let r = http.get("/api/history?room=big&count=3&before=10");
    assert_eq!(r.status, 200, "{}", r.text());
    let offsets: Vec<i64> = r.json()["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["offset"].as_i64().expect("offset"))
        .collect();
    assert_eq!(offsets, [7, 8, 9]);
    let r = http.get("/api/history?room=big&before=10");
    assert_eq!(r.status, 400, "{}", r.text());
}

/// The `joined` reply of a `wspush.v1` connection for `room`.
fn joined(ws: &mut Ws) -> Value {
    let j = next_json(ws);
    assert_eq!(j["op"], "joined", "{j}");
    j
}

#[test]
fn recovery_that_does_not_fit_in_max_pending_is_refused_and_the_connection_stays() {
    let s = Server::start(&["--history-size", "100", "--max-pending", "64KiB"]);
    recovery_is_bounded_by_max_pending(&s);
}

#[test]
fn in_cluster_mode_recovery_and_history_read_from_redis_are_bounded_too() {
    let c = Cluster::start(
        "probebounds",
        1,
        1,
        &["--history-size", "100", "--max-pending", "64KiB"],
    );
    let node = &c.nodes[0];
    recovery_is_bounded_by_max_pending(node);
    let payload = "x".repeat(60_000);
    let mut ctl = node.control();
    for _ in 0..40 {
        ctl.int(&["PUBLISH", "big", &payload]);
    }
    let fit = (REPLY_BUDGET / payload.len()) as i64;
    // The bound applies in Redis (the script), before the answer is sent: reading
    // 2.4 MB of retained payloads costs Redis about one reply's budget of output.
    let sent = || -> u64 {
        let info = c.redis[0].cli(&["INFO", "stats"]);
        info.lines()
            .find_map(|l| l.strip_prefix("total_net_output_bytes:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("total_net_output_bytes")
    };
    let before = sent();
    assert_eq!(
        history_offsets(&ctl.cmd(&["HISTORY", "big"])),
        (40 - fit + 1..=40).collect::<Vec<_>>()
    );
    let answered = sent() - before;
    assert!(
        answered < (REPLY_BUDGET + REPLY_BUDGET / 2) as u64,
        "Redis sent {answered} bytes for one HISTORY of at most {REPLY_BUDGET}"
    );
    // Paging back reads the stream in Redis below an offset.
    assert_eq!(
        page_back(&mut ctl, "big", 100),
        (1..=40).collect::<Vec<_>>()
    );
    assert_eq!(
        history_offsets(&ctl.cmd(&["HISTORY", "big", "3", "10"])),
        [7, 8, 9]
    );
    assert_eq!(
        history_offsets(&ctl.cmd(&["HISTORY", "big", "0", "10"])),
        [0i64; 0]
    );
}

/// A `wspush.v1` recovery of 160 KB with `--max-pending 64KiB` is answered
/// `recovered:false` (the connection then gets live pushes); one of 40 KB is replayed.
fn recovery_is_bounded_by_max_pending(s: &Server) {
    let mut first = ws_connect_v1(&s.url("?rooms=news"));
    let epoch = joined(&mut first)["epoch"]
        .as_str()
        .expect("epoch")
        .to_string();
    // 20 envelopes of about 8 KB: 160 KB missed from offset 0, 40 KB from 15.
    // `first` reads them all, so the room stays subscribed (cluster mode) and its
    // own queue stays empty.
    let payload = "z".repeat(8_000);
    let mut c = s.control();
    for offset in 1..=20 {
        c.int(&["PUBLISH", "news", &payload]);
        assert_eq!(next_json(&mut first)["offset"], offset);
    }

    let mut late = ws_connect_v1(&s.url(&format!("?rooms=news&recover=news:{epoch}:0")));
    let j = joined(&mut late);
    assert_eq!(j["recovered"], false, "{j}");
    assert_eq!(j["offset"], 20, "{j}");
    c.int(&["PUBLISH", "news", "after"]);
    assert_eq!(next_json(&mut first)["offset"], 21);
    let m = next_json(&mut late);
    assert_eq!(
        (m["offset"].as_i64(), m["data"].as_str()),
        (Some(21), Some("after"))
    );

    let mut near = ws_connect_v1(&s.url(&format!("?rooms=news&recover=news:{epoch}:15")));
    let j = joined(&mut near);
    assert_eq!(j["recovered"], true, "{j}");
    for offset in 16..=21 {
        assert_eq!(next_json(&mut near)["offset"], offset);
    }
    assert_eq!(s.info_u64("recovery_failures"), 1);
    assert_eq!(s.info_u64("recoveries"), 1);
    assert_eq!(s.info_u64("slow_consumer_closes"), 0);
}
