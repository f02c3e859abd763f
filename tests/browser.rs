//! The browser client in a real browser: the demo page (`--demo`) in headless Debian
//! Chromium against the real server, its connection dropped five times (the page's
//! "Drop connection" button and TCP cuts under the browser) while a backend publishes
//! 300 messages; the page must end with each exactly once, in order, every rejoin
//! recovered (`clients/js/e2e/browser.mjs` drives the browser and says why it failed).
//! Needs `/usr/bin/chromium` and the `playwright-core` package, which
//! `scripts/test.sh` installs (`apt-get install chromium`, `npm ci` in
//! `clients/js/e2e`); it never lets Playwright download a browser of its own.
//! Not covered: a server restart in cluster mode, which needs cluster-wide positions
//! (each node's positions are its own for now, so such a rejoin is `recovered:false`).

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

#[test]
fn the_demo_page_in_chromium_recovers_every_drop_without_gap_or_duplicate() {
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing: scripts/test.sh installs Debian's chromium"
    );
    assert!(
        Path::new("clients/js/e2e/node_modules/playwright-core").exists(),
        "playwright-core is missing: run `npm ci` in clients/js/e2e (scripts/test.sh does)"
    );
    let server = Server::start(&["--demo", "--history-size", "1000"]);
    let out = Command::new("node")
        .arg("clients/js/e2e/browser.mjs")
        .arg(server.ws.to_string())
        .arg(server.control.to_string())
        // Playwright must never fetch a browser; it only runs /usr/bin/chromium.
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("a JSON summary");
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
