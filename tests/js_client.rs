//! The browser client (`clients/js/`) end to end: the real client, in Node, against
//! the real server, with the network between them cut six times while a backend
//! publishes 400 messages; the application must see each exactly once, in order, and
//! every rejoin recovered (`clients/js/e2e/recover.mjs` does the work and says why it
//! failed). Uses Node's own WebSocket when it has one, else the `ws` package that
//! `scripts/test.sh` installs with `npm ci` in `clients/js/e2e`.

mod common;

use std::process::Command;

use common::*;

/// `node` with the flag that gives it a WebSocket class, if one is needed.
fn node_args() -> Vec<&'static str> {
    let has = |args: &[&str]| {
        Command::new("node")
            .args(args)
            .args([
                "-e",
                "process.exit(typeof WebSocket === 'function' ? 0 : 1)",
            ])
            .status()
            .is_ok_and(|s| s.success())
    };
    if has(&[]) {
        vec![]
    } else if has(&["--experimental-websocket"]) {
        vec!["--experimental-websocket"]
    } else {
        assert!(
            std::path::Path::new("clients/js/e2e/node_modules/ws").exists(),
            "this node has no WebSocket class: run `npm ci` in clients/js/e2e (scripts/test.sh does)"
        );
        vec![]
    }
}

#[test]
fn the_js_client_recovers_through_network_cuts_without_gap_or_duplicate() {
    let server = Server::start(&["--history-size", "1000"]);
    let mut args = node_args();
    args.push("clients/js/e2e/recover.mjs");
    let url = server.url("");
    let control = server.control.to_string();
    let out = Command::new("node")
        .args(&args)
        .arg(&url)
        .arg(&control)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("a JSON summary");
    assert_eq!(v["received"], 400, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["joins"].as_u64().is_some_and(|j| j >= 2), "{v}");
    assert!(
        server.info_u64("recoveries") >= 1,
        "the server recovered the rejoins"
    );
    assert_eq!(server.info_u64("recovery_failures"), 0);
}
