//! Issue 11 §3: `GET /metrics` on the HTTP listener, after a little real load
//! (connections, pushes, a slow consumer, refused handshakes, a kick, a client's own
//! close), read by two parsers that are not ours: the Python `prometheus_client`
//! parser (from the venv scripts/pyvenv.sh makes) for the values, and `promtool check
//! metrics` (Debian's prometheus package; scripts/test.sh extracts it under
//! target/promtool) for the format and the naming conventions.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::http::Http;
use common::*;
use serde_json::Value;
use socket2::{Domain, Socket, Type};

/// Reads exposition text with prometheus_client and prints its families as JSON.
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for f in text_string_to_metric_families(sys.stdin.read()):
    out.append({"name": f.name, "type": f.type, "samples": [
        {"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]})
print(json.dumps(out))
"#;

/// One parsed family: its type and samples (name, labels, value).
struct Family {
    kind: String,
    samples: Vec<(String, HashMap<String, String>, f64)>,
}

fn parse(text: &str) -> HashMap<String, Family> {
    let mut py = Command::new(test_python())
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the test Python (scripts/pyvenv.sh installs prometheus_client)");
    py.stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .unwrap();
    let out = py.wait_with_output().expect("python");
    assert!(
        out.status.success(),
        "prometheus_client refused the text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let families: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    families
        .into_iter()
        .map(|f| {
            let samples = f["samples"]
                .as_array()
                .expect("samples")
                .iter()
                .map(|s| {
                    let labels = s["labels"]
                        .as_object()
                        .expect("labels")
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect();
                    let name = s["name"].as_str().expect("name").to_string();
                    (name, labels, s["value"].as_f64().expect("value"))
                })
                .collect();
            let name = f["name"].as_str().expect("name").to_string();
            let kind = f["type"].as_str().expect("type").to_string();
            (name, Family { kind, samples })
        })
        .collect()
}

impl Family {
    /// The value of the sample `name` whose labels include `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.2)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
    }

    fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|s| s.2)
            .sum()
    }
}

fn family<'a>(m: &'a HashMap<String, Family>, name: &str, kind: &str) -> &'a Family {
    let f = m.get(name).unwrap_or_else(|| panic!("no family {name}"));
    assert_eq!(f.kind, kind, "{name}");
    f
}

/// Buckets of a histogram family: cumulative (never decreasing), `+Inf` last and
/// equal to `_count`. Returns the count.
fn check_histogram(m: &HashMap<String, Family>, name: &str) -> f64 {
    let f = family(m, name, "histogram");
    let buckets: Vec<(&str, f64)> = f
        .samples
        .iter()
        .filter(|(n, _, _)| *n == format!("{name}_bucket"))
        .map(|(_, l, v)| (l["le"].as_str(), *v))
        .collect();
    assert!(buckets.len() > 10, "{name}: {buckets:?}");
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "{name}: buckets decrease: {buckets:?}"
    );
    let bounds: Vec<f64> = buckets[..buckets.len() - 1]
        .iter()
        .map(|(le, _)| le.parse().expect("le"))
        .collect();
    assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{name}: {bounds:?}");
    let (le, inf) = buckets[buckets.len() - 1];
    assert_eq!(le, "+Inf", "{name}");
    let count = f.value(&format!("{name}_count"), &[]);
    assert_eq!(inf, count, "{name}: +Inf == _count");
    assert!(f.value(&format!("{name}_sum"), &[]) >= 0.0);
    count
}

fn promtool() -> String {
    if let Ok(p) = std::env::var("WSPUSH_TEST_PROMTOOL") {
        return p;
    }
    let extracted = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/target/promtool/usr/bin/promtool"
    );
    if std::path::Path::new(extracted).exists() {
        return extracted.into();
    }
    "promtool".into()
}

/// `promtool check metrics`: the text parses and follows the naming conventions
/// (it exits non-zero on any problem it reports).
fn promtool_check(text: &str) {
    let mut p = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (scripts/test.sh extracts it under target/promtool)");
    p.stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .unwrap();
    let out = p.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn scrape(http: SocketAddr) -> String {
    let r = Http::connect(http).get("/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    r.text()
}

/// A raw upgraded socket with a tiny receive buffer that never reads.
fn slow_consumer(addr: SocketAddr, query: &str) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.connect(&addr.into()).expect("connect");
    let mut s: TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&upgrade_request(addr, &format!("/ws{query}"), ""))
        .unwrap();
    let head = read_http_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

#[test]
fn metrics_count_real_load_and_parse_with_prometheus_client_and_promtool() {
    let server = Server::start(&[
        "--http",
        "127.0.0.1:0",
        "--threads",
        "2",
        "--max-pending",
        "64KiB",
        "--max-message",
        "64KiB",
    ]);
    let http = server.http.expect("--http address");
    let mut c = server.control();
    let mut deliveries = 0i64;
    let mut publishes = 0u64;

    let mut alice = ws_connect(&server.url("?user=alice&rooms=news"));
    let mut bob = ws_connect(&server.url("?rooms=news"));
    let mut carol = ws_connect(&server.url("?user=carol"));
    for i in 0..5 {
        deliveries += c.int(&["PUBLISH", "news", &format!("m{i}")]);
        publishes += 1;
    }
    deliveries += c.int(&["SEND", "carol", "direct"]);
    for i in 0..5 {
        assert_eq!(next_text(&mut alice), format!("m{i}"));
        assert_eq!(next_text(&mut bob), format!("m{i}"));
    }
    assert_eq!(next_text(&mut carol), "direct");
    assert_eq!(deliveries, 11);
    // Every recipient has read its pushes: the reactors have counted them (a turn's
    // counters are published at its end, so the scrape may trail by a moment).
    let mut text = String::new();
    let ok = wait_until(Duration::from_secs(10), || {
        text = scrape(http);
        parse(&text)["wspush_deliveries"].value("wspush_deliveries_total", &[]) == 11.0
    });
    assert!(ok, "deliveries never reached 11:\n{text}");

    // Refused handshakes: a wrong version (426) and an unknown path (404).
    let (_s, head) = raw_request(
        server.ws,
        format!(
            "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
            server.ws
        )
        .as_bytes(),
    );
    assert!(head.starts_with("HTTP/1.1 426"), "{head}");
    let (_s, head) = raw_request(server.ws, &upgrade_request(server.ws, "/nope", ""));
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    // A slow consumer: pushed to until the close policy acts.
    let _slow = slow_consumer(server.ws, "?rooms=slow");
    let big = "x".repeat(16 << 10);
    let mut closed = false;
    for _ in 0..200 {
        for _ in 0..20 {
            deliveries += c.int(&["PUBLISH", "slow", &big]);
            publishes += 1;
        }
        if server.info_u64("slow_consumer_closes") == 1 {
            closed = true;
            break;
        }
    }
    assert!(closed, "the slow consumer was never closed");

    // A protocol error: an unmasked client frame is closed with 1002.
    let mut bad = raw_upgrade(server.ws, "");
    bad.write_all(&[0x81, 0x02, b'h', b'i']).unwrap();
    assert_eq!(read_close_code(&mut bad), Some(1002));

    // A kick, and a client's own close.
    assert_eq!(c.int(&["KICK", "carol", "bye"]), 1);
    assert_eq!(read_close(&mut carol).0, 4000);
    bob.close(None).unwrap();
    while bob.read().is_ok() {}

    // Counters reach the dispatcher at the end of each reactor turn: scrape until
    // the connection gauge and the close counters show what the clients saw.
    let ok = wait_until(Duration::from_secs(10), || {
        text = scrape(http);
        let m = parse(&text);
        let closes = &m["wspush_closes"];
        m["wspush_connections"].sum("wspush_connections") == 1.0
            && closes.value("wspush_closes_total", &[("reason", "client")]) == 1.0
            && closes.value("wspush_closes_total", &[("reason", "kicked")]) == 1.0
            && closes.value("wspush_closes_total", &[("reason", "slow_consumer")]) == 1.0
            && closes.value("wspush_closes_total", &[("reason", "protocol_error")]) == 1.0
    });
    assert!(ok, "metrics never matched the load:\n{text}");
    let m = parse(&text);

    let conns = family(&m, "wspush_connections", "gauge");
    let reactors: Vec<&str> = conns
        .samples
        .iter()
        .map(|(_, l, _)| l["reactor"].as_str())
        .collect();
    assert_eq!(reactors, ["0", "1"], "one series per reactor");
    assert_eq!(
        family(&m, "wspush_rooms", "gauge").value("wspush_rooms", &[]),
        1.0,
        "news (alice)"
    );
    let hs = family(&m, "wspush_handshakes", "counter");
    assert_eq!(
        hs.value("wspush_handshakes_total", &[("result", "upgraded")]),
        5.0
    );
    assert_eq!(
        hs.value("wspush_handshakes_total", &[("result", "version")]),
        1.0
    );
    assert_eq!(
        hs.value("wspush_handshakes_total", &[("result", "not_found")]),
        1.0
    );
    let published = family(&m, "wspush_messages_published", "counter");
    assert_eq!(
        published.value("wspush_messages_published_total", &[("command", "publish")]),
        publishes as f64
    );
    assert_eq!(
        published.value("wspush_messages_published_total", &[("command", "send")]),
        1.0
    );
    let slow = family(&m, "wspush_slow_consumer", "counter");
    assert_eq!(
        slow.value("wspush_slow_consumer_total", &[("action", "close")]),
        1.0
    );
    assert_eq!(
        slow.value("wspush_slow_consumer_total", &[("action", "drop")]),
        0.0
    );
    let closes = family(&m, "wspush_closes", "counter");
    assert_eq!(
        closes.sum("wspush_closes_total"),
        4.0,
        "client + kicked + slow + protocol"
    );
    // A push the dispatcher counted for the slow consumer may reach its reactor
    // after the close began: then it is not delivered.
    let delivered =
        family(&m, "wspush_deliveries", "counter").value("wspush_deliveries_total", &[]);
    assert!(
        delivered > 11.0 && delivered <= deliveries as f64,
        "{delivered} of {deliveries}"
    );
    for name in ["wspush_bytes_written", "wspush_writev_calls"] {
        let f = family(&m, name, "counter");
        assert!(f.value(&format!("{name}_total"), &[]) > 0.0, "{name}");
    }

    assert_eq!(
        check_histogram(&m, "wspush_handshake_duration_seconds"),
        5.0,
        "one per upgraded connection"
    );
    let sampled = check_histogram(&m, "wspush_push_latency_seconds");
    // At most one sample per batch, a batch per push and reactor at the most.
    assert!(
        sampled >= 1.0 && sampled <= 2.0 * (publishes as f64 + 1.0),
        "{sampled}"
    );
    assert!(check_histogram(&m, "wspush_reactor_turn_seconds") > 0.0);

    promtool_check(&text);
}

#[test]
fn metrics_of_an_idle_server_pass_promtool_and_show_no_cluster_series() {
    let server = Server::start(&["--http", "127.0.0.1:0"]);
    let text = scrape(server.http.expect("--http address"));
    promtool_check(&text);
    let m = parse(&text);
    assert_eq!(
        family(&m, "wspush_connections", "gauge").sum("wspush_connections"),
        0.0
    );
    assert!(!m.keys().any(|k| k.starts_with("wspush_cluster_")));
    assert_eq!(check_histogram(&m, "wspush_push_latency_seconds"), 0.0);
}

/// In cluster mode the broker link has its series too: up, nodes, and messages
/// that went through Redis, on the node that published and the one that delivered.
#[test]
fn cluster_nodes_export_their_broker_link() {
    use common::redis::Cluster;
    let cluster = Cluster::start("metrics", 2, 1, &["--http", "127.0.0.1:0"]);
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let mut on_b = ws_connect(&b.url("?rooms=r"));
    cluster.wait_subscribers(&cluster.room_channel("r"), 1);
    a.control().int(&["PUBLISH", "r", "via redis"]);
    assert_eq!(next_text(&mut on_b), "via redis");
    for (node, dir) in [(a, "out"), (b, "in")] {
        let text = scrape(node.http.expect("--http address"));
        promtool_check(&text);
        let m = parse(&text);
        let gauge = |name: &str| family(&m, name, "gauge").value(name, &[]);
        assert_eq!(gauge("wspush_cluster_broker_up"), 1.0);
        assert_eq!(gauge("wspush_cluster_nodes"), 2.0);
        let name = format!("wspush_cluster_messages_{dir}");
        let n = family(&m, &name, "counter").value(&format!("{name}_total"), &[]);
        assert!(n >= 1.0, "{name}: {n}");
    }
}
