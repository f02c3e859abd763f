//! The browser client in a real browser: the demo page (`--demo`) in headless Debian
//! Chromium against the real server, its connection dropped while a backend publishes
//! 300 messages; the page must end with each exactly once, in order, every rejoin
//! recovered (`clients/js/e2e/browser.mjs` drives the browser and says why it failed).
//! Two drops: on one node, five times (the page's "Drop connection" button and TCP
//! cuts under the browser); in cluster mode, the page's node SIGKILLed and started
//! again on the same address while another node keeps publishing, the page recovering
//! from the positions and history in Redis.
//! Needs `/usr/bin/chromium`, the `playwright-core` package and (for the cluster case)
//! `redis-server`, which `scripts/test.sh` installs; it never lets Playwright download
//! a browser of its own. The two tests take turns: Chromium on two shared cores.
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use common::redis::*;
use common::*;

/// Held by each test for its Chromium run: two browsers at once on two shared cores
/// would only make both slow.
static CHROMIUM: Mutex<()> = Mutex::new(());

fn assert_browser_installed() {
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing: scripts/test.sh installs Debian's chromium"
    );
    assert!(
        Path::new("clients/js/e2e/node_modules/playwright-core").exists(),
        "playwright-core is missing: run `npm ci` in clients/js/e2e (scripts/test.sh does)"
    );
}

/// Runs an end-to-end script of clients/js/e2e with `args` and returns the JSON
/// summary it prints last; fails the test with its output unless it exits 0.
/// Playwright must never fetch a browser: the scripts only run /usr/bin/chromium.
fn run_e2e(script: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new("node")
        .arg(script)
        .args(args)
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("no JSON summary ({e}): {stdout}\n{stderr}"))
}

#[test]
fn the_demo_page_in_chromium_recovers_every_drop_without_gap_or_duplicate() {
    assert_browser_installed();
    let _turn = CHROMIUM.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start(&["--demo", "--history-size", "1000"]);
    let v = run_e2e(
        "clients/js/e2e/browser.mjs",
        &[&server.ws.to_string(), &server.control.to_string()],
    );
    assert_eq!(v["received"], 300, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["not_recovered"], 0, "{v}");
    assert!(v["joins"].as_u64().is_some_and(|j| j >= 6), "{v}");
    assert!(
        server.info_u64("recoveries") >= 1,
        "the server recovered the rejoins"
    );
    assert_eq!(server.info_u64("recovery_failures"), 0);
}

/// permessage-deflate with Chromium's own implementation (issue 12 §5): negotiated,
/// large JSON pushes arrive intact and compressed (the server wrote far fewer bytes
/// than it pushed), and the browser's compressed join is understood.
#[test]
fn chromium_negotiates_permessage_deflate_and_receives_compressed_pushes_intact() {
    assert_browser_installed();
    let _turn = CHROMIUM.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start(&[]);
    let v = run_e2e(
        "clients/js/e2e/compression.mjs",
        &[&server.ws.to_string(), &server.control.to_string()],
    );
    let ext = v["extensions"].as_str().unwrap_or_default();
    assert!(ext.starts_with("permessage-deflate"), "{v}");
    assert!(ext.contains("server_no_context_takeover"), "{v}");
    assert_eq!(v["joined"], r#"{"op":"joined","room":"second"}"#, "{v}");
    assert_eq!(v["intact"], true, "{v}");
    assert_eq!(v["replies"], serde_json::json!([":1", ":1", ":1"]), "{v}");
    let pushed = v["bytes"].as_u64().unwrap();
    let written = server.info_u64("bytes_written");
    assert!(
        written * 3 < pushed,
        "{written} bytes written for {pushed} pushed"
    );
}

/// A loopback address nothing listens on right now (for a node that must come back
/// on the same address after a restart).
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
}

#[test]
fn the_demo_page_in_chromium_recovers_after_its_cluster_node_is_killed_and_restarted() {
    assert_browser_installed();
    let redis = RedisServer::start();
    let prefix = unique_prefix("browser");
    let urls = [redis.url()];
    let history = ["--history-size", "1000", "--demo"];
    let a = start_node(&urls, "node-a", &prefix, &history);
    let (ws_b, control_b) = (free_addr().to_string(), free_addr().to_string());
    let start_b = || {
        let mut extra = history.to_vec();
        extra.extend(["--listen", ws_b.as_str(), "--control", control_b.as_str()]);
        start_node(&urls, "node-b", &prefix, &extra)
    };
    let mut b = start_b();
    let channel = format!("{prefix}:room:b");

    let _turn = CHROMIUM.lock().unwrap_or_else(|e| e.into_inner());
    let mut child = Command::new("node")
        .arg("clients/js/e2e/browser.mjs")
        .arg("--restart")
        .arg(b.ws.to_string())
        .arg(a.control.to_string())
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node");
    let mut to_script = child.stdin.take().expect("stdin");
    let mut stderr = child.stderr.take().expect("stderr");
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    // The script bounds itself (60 s, then exit 1), so this read loop ends with it.
    let mut summary = String::new();
    let mut restarted = false;
    for line in BufReader::new(child.stdout.take().expect("stdout")).lines() {
        let line = line.expect("read the script's stdout");
        match line.as_str() {
            "ready" => {
                // Only B has a member of the room, so only B subscribes its channel.
                let subscribed =
                    wait_until(Duration::from_secs(10), || redis.numsub(&channel) == 1);
                assert!(subscribed, "node B did not subscribe {channel}");
                writeln!(to_script, "go").expect("answer the script");
            }
            "kill" => {
                b.kill();
                writeln!(to_script, "killed").expect("answer the script");
            }
            // Once A has acknowledged a publish made while B was down.
            "start" => {
                b = start_b();
                restarted = true;
                writeln!(to_script, "started").expect("answer the script");
            }
            _ => summary = line,
        }
    }
    let status = child.wait().expect("wait for node");
    let stderr = err_reader.join().unwrap_or_default();
    assert!(status.success(), "{summary}\n{stderr}");
    assert!(
        restarted,
        "the script never asked for the restart: {summary}"
    );
    let v: serde_json::Value = serde_json::from_str(summary.trim()).expect("a JSON summary");
    assert_eq!(v["received"], 300, "{v}");
    assert_eq!(v["publish_errors"], 0, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["not_recovered"], 0, "{v}");
    assert!(v["joins"].as_u64().is_some_and(|j| j >= 2), "{v}");
    // The restarted B knew nothing of the room: what it replayed came from Redis.
    assert!(
        b.info_u64("recoveries") >= 1,
        "the restarted node recovered the rejoin"
    );
    assert!(
        b.info_u64("replayed_messages") >= 1,
        "the rejoin missed messages published while B was down"
    );
}

/// The dashboard (`GET /` on `--http`) in Chromium while a load runs:
/// `clients/js/e2e/dashboard.mjs` opens 60 WebSocket connections and pushes through
/// the HTTP API, checks that the page's charts fill and that, once the load stops, the
/// numbers it shows are /api/info's, and takes a screenshot, which this test keeps in
/// `target/artifacts/dashboard.png`.
#[test]
fn the_dashboard_in_chromium_charts_a_live_load_and_matches_the_api() {
    assert_browser_installed();
    let _turn = CHROMIUM.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start(&["--http", "127.0.0.1:0"]);
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/artifacts");
    std::fs::create_dir_all(&artifacts).expect("create target/artifacts");
    let shot = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let v = run_e2e(
        "clients/js/e2e/dashboard.mjs",
        &[
            &server.http.expect("--http").to_string(),
            &server.ws.to_string(),
            &shot.to_string_lossy(),
        ],
    );
    assert_eq!(v["consoleErrors"], serde_json::json!([]), "{v}");
    assert_eq!(v["mismatches"], serde_json::json!([]), "{v}");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["shown"]["connections"], "60", "{v}");
    assert_eq!(
        v["shown"]["roomRows"][0],
        serde_json::json!(["hot", 30]),
        "{v}"
    );
    assert!(v["published"].as_u64().is_some_and(|n| n > 0), "{v}");
    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
}
