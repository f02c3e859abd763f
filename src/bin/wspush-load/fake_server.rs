//! Test only: a throwaway thread-per-connection server (tungstenite's server side plus a
//! RESP control port) with the wspush protocol subset the load generator drives, and the
//! end-to-end tests of every scenario against it.
//!
//! It exists so the load generator can be tested without wspush; it is never built into
//! the binary and must never grow into a second server to maintain.

use crate::cli::{Cli, Command, TopCommand};
use crate::coord;
use crate::resp::{parse_reply, Reply};
use clap::Parser;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use tungstenite::handshake::server::{Request, Response};
use tungstenite::{Message, WebSocket};

/// How the fake server misbehaves, to prove the checks catch it.
#[derive(Clone, Copy, PartialEq)]
pub enum Flaw {
    None,
    /// Every 7th message to each subscriber is skipped.
    DropSome,
    /// Every message is sent twice.
    Duplicate,
}

struct Member {
    /// Which WebSocket listener (cluster node) it came in through.
    node: usize,
    rooms: Vec<String>,
    ws: WebSocket<TcpStream>,
    sent: u64,
}

pub struct FakeServer {
    pub ws: SocketAddr,
    pub control: SocketAddr,
}

/// A two-node fake cluster: `ws[0]` is the node whose control port it is, `ws[1]` a
/// "remote" node whose members get each push REMOTE_DELAY later, in order, as through a
/// broker. PUBLISH replies like wspush in cluster mode: node-0 recipients + 1 if the
/// remote node had any; INFO says `cluster_enabled:1`.
pub struct FakeCluster {
    pub ws: [SocketAddr; 2],
    pub control: SocketAddr,
}

/// Longer than the coordinator's settle time, so a drain that trusted the replies
/// would stop before the remote deliveries arrive.
const REMOTE_DELAY: std::time::Duration = std::time::Duration::from_millis(600);

fn query_rooms(uri: &str) -> Vec<String> {
    let query = uri.split_once('?').map(|(_, q)| q).unwrap_or("");
    query
        .split('&')
        .filter_map(|kv| kv.strip_prefix("rooms="))
        .flat_map(|r| r.split(',').map(str::to_string))
        .collect()
}

// The callback's error type is tungstenite's `ErrorResponse`, not ours to shrink.
#[allow(clippy::result_large_err)]
fn serve_ws(stream: TcpStream, echo: bool, node: usize, members: Arc<Mutex<Vec<Member>>>) {
    let mut uri = String::new();
    let cb = |req: &Request, resp: Response| {
        uri = req.uri().to_string();
        Ok(resp)
    };
    let Ok(mut ws) = tungstenite::accept_hdr(stream, cb) else {
        return;
    };
    if echo {
        while let Ok(msg) = ws.read() {
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).is_err() {
                return;
            }
        }
        return;
    }
    if let Ok(mut m) = members.lock() {
        m.push(Member {
            node,
            rooms: query_rooms(&uri),
            ws,
            sent: 0,
        });
    }
}

/// Pushes to the members of `room` (all for None) that came in through `node` (any for
/// None); returns how many it was for.
fn push(
    members: &Mutex<Vec<Member>>,
    node: Option<usize>,
    room: Option<&str>,
    payload: &[u8],
    flaw: Flaw,
) -> i64 {
    let Ok(mut m) = members.lock() else { return 0 };
    let mut n = 0;
    let text = String::from_utf8_lossy(payload).into_owned();
    for mem in m.iter_mut() {
        if room.is_some_and(|r| !mem.rooms.iter().any(|x| x == r))
            || node.is_some_and(|k| k != mem.node)
        {
            continue;
        }
        n += 1;
        mem.sent += 1;
        if flaw == Flaw::DropSome && mem.sent % 7 == 0 {
            continue;
        }
        let times = if flaw == Flaw::Duplicate { 2 } else { 1 };
        for _ in 0..times {
            let _ = mem.ws.send(Message::text(text.clone()));
        }
    }
    n
}

/// Pushes for the remote node of a FakeCluster: (when, room, payload), in order.
type Remote = std::sync::mpsc::Sender<(std::time::Instant, Option<String>, Vec<u8>)>;

/// `deliveries` counts this server's queued deliveries, for INFO. With `remote`, it is
/// node 0 of a FakeCluster and hands the remote node's share to that channel.
fn serve_control(
    mut s: TcpStream,
    members: Arc<Mutex<Vec<Member>>>,
    flaw: Flaw,
    deliveries: Arc<AtomicI64>,
    remote: Option<Remote>,
) {
    // What a push command answers: standalone, the recipients; in the fake cluster, the
    // local recipients + 1 if the remote node has any (what wspush's cluster mode says).
    let deliver = |room: Option<&str>, payload: &[u8]| -> i64 {
        let Some(tx) = &remote else {
            let n = push(&members, None, room, payload, flaw);
            deliveries.fetch_add(n, Ordering::Relaxed);
            return n;
        };
        let local = push(&members, Some(0), room, payload, flaw);
        deliveries.fetch_add(local, Ordering::Relaxed);
        let remote_has = members.lock().is_ok_and(|m| {
            m.iter()
                .any(|mem| mem.node == 1 && room.is_none_or(|r| mem.rooms.iter().any(|x| x == r)))
        });
        let when = std::time::Instant::now() + REMOTE_DELAY;
        let _ = tx.send((when, room.map(str::to_string), payload.to_vec()));
        local + i64::from(remote_has)
    };
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        let Ok(n) = s.read(&mut chunk) else { return };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut out = Vec::new();
        let mut used = 0;
        while let Ok(Some((cmd, len))) = parse_reply(&buf[used..]) {
            used += len;
            let Reply::Array(Some(args)) = cmd else {
                return;
            };
            let args: Vec<Vec<u8>> = args
                .into_iter()
                .filter_map(|a| match a {
                    Reply::Bulk(Some(b)) => Some(b),
                    _ => None,
                })
                .collect();
            let name = args
                .first()
                .map(|a| String::from_utf8_lossy(a).to_uppercase());
            match (name.as_deref(), args.len()) {
                (Some("PING"), 1) => out.extend_from_slice(b"+PONG\r\n"),
                (Some("PUBLISH"), 3) => {
                    let room = String::from_utf8_lossy(&args[1]).into_owned();
                    let n = deliver(Some(&room), &args[2]);
                    out.extend_from_slice(format!(":{n}\r\n").as_bytes());
                }
                (Some("BROADCAST"), 2) => {
                    let n = deliver(None, &args[1]);
                    out.extend_from_slice(format!(":{n}\r\n").as_bytes());
                }
                (Some("INFO"), 1) => {
                    let d = deliveries.load(Ordering::Relaxed);
                    let c = u8::from(remote.is_some());
                    let body = format!(
                        "# Stats\r\ndeliveries:{d}\r\nwritev_calls:{d}\r\n# Cluster\r\ncluster_enabled:{c}\r\n"
                    );
                    out.extend_from_slice(format!("${}\r\n{body}\r\n", body.len()).as_bytes());
                }
                _ => out.extend_from_slice(b"-ERR unknown command\r\n"),
            }
        }
        buf.drain(..used);
        if s.write_all(&out).is_err() {
            return;
        }
    }
}

impl FakeServer {
    pub fn start(echo: bool, flaw: Flaw) -> FakeServer {
        let ws = TcpListener::bind("127.0.0.1:0").unwrap();
        let control = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = FakeServer {
            ws: ws.local_addr().unwrap(),
            control: control.local_addr().unwrap(),
        };
        let members: Arc<Mutex<Vec<Member>>> = Arc::default();
        let m2 = Arc::clone(&members);
        std::thread::spawn(move || {
            for s in ws.incoming().flatten() {
                let m = Arc::clone(&m2);
                std::thread::spawn(move || serve_ws(s, echo, 0, m));
            }
        });
        let deliveries: Arc<AtomicI64> = Arc::default();
        std::thread::spawn(move || {
            for s in control.incoming().flatten() {
                let (m, d) = (Arc::clone(&members), Arc::clone(&deliveries));
                std::thread::spawn(move || serve_control(s, m, flaw, d, None));
            }
        });
        server
    }
}

impl FakeCluster {
    pub fn start() -> FakeCluster {
        let listeners = [
            TcpListener::bind("127.0.0.1:0").unwrap(),
            TcpListener::bind("127.0.0.1:0").unwrap(),
        ];
        let control = TcpListener::bind("127.0.0.1:0").unwrap();
        let cluster = FakeCluster {
            ws: [
                listeners[0].local_addr().unwrap(),
                listeners[1].local_addr().unwrap(),
            ],
            control: control.local_addr().unwrap(),
        };
        let members: Arc<Mutex<Vec<Member>>> = Arc::default();
        for (node, l) in listeners.into_iter().enumerate() {
            let m2 = Arc::clone(&members);
            std::thread::spawn(move || {
                for s in l.incoming().flatten() {
                    let m = Arc::clone(&m2);
                    std::thread::spawn(move || serve_ws(s, false, node, m));
                }
            });
        }
        let (tx, rx) = std::sync::mpsc::channel::<(std::time::Instant, Option<String>, Vec<u8>)>();
        let m3 = Arc::clone(&members);
        std::thread::spawn(move || {
            for (when, room, payload) in rx {
                std::thread::sleep(when.saturating_duration_since(std::time::Instant::now()));
                push(&m3, Some(1), room.as_deref(), &payload, Flaw::None);
            }
        });
        let deliveries: Arc<AtomicI64> = Arc::default();
        std::thread::spawn(move || {
            for s in control.incoming().flatten() {
                let (m, d, tx) = (Arc::clone(&members), Arc::clone(&deliveries), tx.clone());
                std::thread::spawn(move || serve_control(s, m, Flaw::None, d, Some(tx)));
            }
        });
        cluster
    }
}

fn command(args: &str) -> Command {
    let argv = std::iter::once("wspush-load").chain(args.split_whitespace());
    match Cli::try_parse_from(argv).unwrap().command {
        TopCommand::Scenario(c) => c,
        other => panic!("not a scenario: {other:?}"),
    }
}

#[test]
fn conns_opens_every_connection_and_times_its_handshakes() {
    let srv = FakeServer::start(false, Flaw::None);
    let cmd = command(&format!(
        "conns --url ws://{}/ws -n 40 --rate 400 --hold 1 --duration 20 --pid {}",
        srv.ws,
        std::process::id()
    ));
    let r = coord::run(&cmd, false).unwrap();
    assert_eq!(r.connections.opened, 40, "{}", r.human());
    assert_eq!(r.connections.failed, 0);
    assert_eq!(r.connections.handshake.count, 40);
    assert!(r.connections.handshakes_per_s > 0.0);
    // The load generator's own connect-phase CPU (here it shares its process with the
    // fake server) is measured and spread over the handshakes.
    let load = r.connections.load_cpu_us_per_handshake;
    assert!(load.is_some_and(|us| us > 0.0), "{load:?}");
    let server = r.server.as_ref().unwrap();
    assert!(server.rss_after_bytes.is_some());
    assert!(r.problems.is_empty(), "{:?}", r.problems);
}

#[test]
fn conns_binds_to_each_source_address_of_the_range() {
    let srv = FakeServer::start(false, Flaw::None);
    let cmd = command(&format!(
        "conns --url ws://{}/ws -n 12 --rate 0 --hold 0 --src 127.0.0.2-127.0.0.4 --duration 20",
        srv.ws
    ));
    let r = coord::run(&cmd, false).unwrap();
    assert_eq!(r.connections.opened, 12, "{}", r.human());
}

#[test]
fn conns_counts_refused_connections_by_cause() {
    // A port we bound and closed again: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cmd = command(&format!(
        "conns --url ws://127.0.0.1:{port}/ws -n 5 --rate 0 --hold 0 --duration 10"
    ));
    let r = coord::run(&cmd, false).unwrap();
    assert_eq!(r.connections.failures.get("refused"), Some(&5));
    assert!(!r.problems.is_empty());
}

#[test]
fn conns_counts_http_rejections_by_status() {
    // A plain HTTP server answering every request with 503.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    let cmd = command(&format!(
        "conns --url ws://{addr}/ws -n 3 --rate 0 --hold 0 --duration 10"
    ));
    let r = coord::run(&cmd, false).unwrap();
    assert_eq!(
        r.connections.failures.get("http 503"),
        Some(&3),
        "{}",
        r.human()
    );
}

#[test]
fn fanout_over_rooms_delivers_every_message_in_order() {
    let srv = FakeServer::start(false, Flaw::None);
    let cmd = command(&format!(
        "fanout --url ws://{}/ws --control {} -s 30 -r 3 -m 120 -b 64 --window 8 --duration 30",
        srv.ws, srv.control
    ));
    let r = coord::run(&cmd, false).unwrap();
    let f = r.fanout.as_ref().unwrap();
    assert_eq!(f.published, 120);
    assert_eq!(f.queued_deliveries, 30 * 120 / 3);
    assert_eq!(f.delivered, 1200, "{}", r.human());
    assert_eq!(f.latency.count, 1200);
    assert_eq!(f.last_receipt.count, 120);
    assert_eq!((f.lost, f.reordered, f.duplicated, f.foreign), (0, 0, 0, 0));
    assert!(r.problems.is_empty(), "{:?}", r.problems);
}

#[test]
fn fanout_broadcast_at_fixed_rate_reaches_every_subscriber() {
    let srv = FakeServer::start(false, Flaw::None);
    let cmd = command(&format!(
        "fanout --url ws://{}/ws --control {} -s 10 -r 2 -m 40 --broadcast --rate 200 --duration 30 --pid {}",
        srv.ws,
        srv.control,
        std::process::id()
    ));
    let r = coord::run(&cmd, false).unwrap();
    let f = r.fanout.as_ref().unwrap();
    assert_eq!(f.delivered, 400, "{}", r.human());
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    let s = r.server.as_ref().unwrap();
    assert!(s.cpu_us_per_delivery.is_some());
    assert_eq!(s.writev_calls, Some(400));
    assert_eq!(s.writev_per_delivery, Some(1.0));
}

#[test]
fn fanout_reports_losses_when_the_server_drops_messages() {
    let srv = FakeServer::start(false, Flaw::DropSome);
    let cmd = command(&format!(
        "fanout --url ws://{}/ws --control {} -s 4 -r 1 -m 70 --drain-timeout 1 --duration 30",
        srv.ws, srv.control
    ));
    let r = coord::run(&cmd, false).unwrap();
    let f = r.fanout.as_ref().unwrap();
    assert_eq!(f.lost, 4 * 10, "{}", r.human());
    assert!(!r.problems.is_empty());
}

#[test]
fn fanout_reports_duplicates() {
    let srv = FakeServer::start(false, Flaw::Duplicate);
    let cmd = command(&format!(
        "fanout --url ws://{}/ws --control {} -s 2 -r 1 -m 10 --drain-timeout 1 --duration 30",
        srv.ws, srv.control
    ));
    let r = coord::run(&cmd, false).unwrap();
    let f = r.fanout.as_ref().unwrap();
    assert_eq!(f.duplicated, 20, "{}", r.human());
    assert_eq!(f.lost, 0);
}

#[test]
fn echo_counts_round_trips_until_the_duration() {
    let srv = FakeServer::start(true, Flaw::None);
    let cmd = command(&format!(
        "echo --url ws://{}/ws -c 4 -b 200 --duration 2",
        srv.ws
    ));
    let r = coord::run(&cmd, false).unwrap();
    let e = r.echo.as_ref().unwrap();
    assert!(e.round_trips > 10, "{}", r.human());
    assert_eq!(e.mismatches, 0);
    assert_eq!(e.rtt.count, e.round_trips);
    assert!(e.seconds > 0.5 && e.seconds <= 2.5, "{}", e.seconds);
}

#[test]
fn fanout_through_a_remote_node_waits_for_what_subscribers_see() {
    // Every subscriber on the remote node: each PUBLISH reply is 1 (one other node), far
    // below the 5 deliveries per message, which arrive only REMOTE_DELAY after the reply.
    // At 4 messages/s the deliveries come in bursts more than the settle time apart, so a
    // drain that trusted the replies' sum would stop before the last ones arrive.
    let c = FakeCluster::start();
    let cmd = command(&format!(
        "fanout --url ws://{}/ws --control {} -s 10 -r 2 -m 12 --rate 4 --duration 30",
        c.ws[1], c.control
    ));
    let r = coord::run(&cmd, false).unwrap();
    let f = r.fanout.as_ref().unwrap();
    assert_eq!(f.queued_deliveries, 12, "{}", r.human());
    assert_eq!(f.delivered, 60, "{}", r.human());
    assert_eq!((f.lost, f.reordered, f.duplicated), (0, 0, 0));
    assert!(r.problems.is_empty(), "{:?}", r.problems);
}

#[test]
fn fanout_over_several_urls_reports_each_node() {
    let c = FakeCluster::start();
    let cmd = command(&format!(
        "fanout --url ws://{}/ws --url ws://{}/ws --control {} -s 12 -r 3 -m 30 --window 8 --duration 30",
        c.ws[0], c.ws[1], c.control
    ));
    let r = coord::run(&cmd, false).unwrap();
    let f = r.fanout.as_ref().unwrap();
    assert!(f.cluster, "{}", r.human());
    assert_eq!(f.delivered, 12 * 30 / 3, "{}", r.human());
    assert_eq!(f.per_url.len(), 2);
    for u in &f.per_url {
        assert_eq!(u.subscribers, 6, "{}", r.human());
        assert_eq!((u.delivered, u.lost), (60, 0), "{}", r.human());
        assert_eq!(u.latency.count, 60);
    }
    // The remote node's deliveries came through the (fake) broker, REMOTE_DELAY later.
    assert!(f.per_url[1].latency.p50_ms > f.per_url[0].latency.p50_ms);
    assert!(r.problems.is_empty(), "{:?}", r.problems);
}

#[test]
fn single_url_fanout_report_has_no_per_url_or_cluster_fields() {
    let srv = FakeServer::start(false, Flaw::None);
    let cmd = command(&format!(
        "fanout --url ws://{}/ws --control {} -s 4 -r 2 -m 10 --duration 30",
        srv.ws, srv.control
    ));
    let r = coord::run(&cmd, false).unwrap();
    let json = serde_json::to_value(&r).unwrap();
    let f = &json["fanout"];
    assert!(
        f.get("per_url").is_none() && f.get("cluster").is_none(),
        "{f}"
    );
    assert!(r.problems.is_empty(), "{:?}", r.problems);
}
