//! Start-up refusals: a server that cannot work as configured must exit at once with
//! one line on stderr naming what failed and the numbers or address involved, never
//! start and quietly answer 503 to everyone or treat a timeout as "never".
//! Exit status 2: the settings cannot work; 1: the system refused a resource.

mod common;

use std::net::TcpListener;

use common::*;

/// The one stderr line that carries `needle`; panics if there is not exactly one.
fn only_line_with<'a>(stderr: &'a str, needle: &str) -> &'a str {
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains(needle)).collect();
    assert_eq!(lines.len(), 1, "want one line with {needle:?}: {stderr:?}");
    lines[0]
}

#[test]
fn refuses_when_open_file_limit_does_not_cover_the_reserve_for_the_threads() {
    // 64 + 16 × 64 + 64 handshakes = 1152 descriptors reserved, above the 1024 allowed: the default
    // --max-connections would be 0.
    let r = start_expecting_refusal(&["--threads", "64"], Some(1024));
    assert_eq!(r.status.code(), Some(2), "{:?}", r.stderr);
    let line = only_line_with(&r.stderr, "open-file limit");
    for want in [
        "1024",
        "64 reactor threads",
        "1152",
        "ulimit -n",
        "LimitNOFILE",
        "--threads",
        "--max-connections",
    ] {
        assert!(line.contains(want), "no {want:?} in {line:?}");
    }
}

#[test]
fn explicit_max_connections_starts_despite_a_small_open_file_limit() {
    let server =
        Server::start_with_nofile(&["--threads", "64", "--max-connections", "100"], Some(1024));
    assert_eq!(server.info_u64("max_connections"), 100);
}

#[test]
fn occupied_websocket_port_names_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let r = start_expecting_refusal(&["--listen", &addr], None);
    assert_eq!(r.status.code(), Some(1), "{:?}", r.stderr);
    let line = only_line_with(&r.stderr, "cannot listen");
    assert!(
        line.contains(&format!(
            "cannot listen on {addr} (--listen): Address already in use"
        )),
        "{line:?}"
    );
    assert!(!line.contains("os error"), "{line:?}");
}

#[test]
fn occupied_control_port_names_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let r = start_expecting_refusal(&["--control", &addr], None);
    assert_eq!(r.status.code(), Some(1), "{:?}", r.stderr);
    let line = only_line_with(&r.stderr, "cannot listen");
    assert!(
        line.contains(&format!(
            "cannot listen on {addr} (--control): Address already in use"
        )),
        "{line:?}"
    );
    assert!(!line.contains("os error"), "{line:?}");
}

#[test]
fn idle_timeout_below_one_tick_is_refused() {
    let r = start_expecting_refusal(&["--idle-timeout", "5ms"], None);
    assert_eq!(r.status.code(), Some(2), "{:?}", r.stderr);
    let line = only_line_with(&r.stderr, "--idle-timeout");
    assert!(line.contains("10ms"), "{line:?}");
}

#[test]
fn ping_interval_below_one_tick_is_refused() {
    let r = start_expecting_refusal(&["--ping-interval", "1ms"], None);
    assert_eq!(r.status.code(), Some(2), "{:?}", r.stderr);
    let line = only_line_with(&r.stderr, "--ping-interval");
    assert!(line.contains("10ms"), "{line:?}");
}

#[test]
fn zero_ping_interval_still_means_never_and_is_accepted() {
    let server = Server::start(&["--ping-interval", "0"]);
    let mut ctl = server.control();
    assert_eq!(ctl.cmd(&["PING"]), Reply::Simple("PONG".into()));
}
