//! Mainstream Redis client libraries at their default settings against the control
//! port (issue 11 §1): redis-py (PyPI), ioredis and node-redis (npm), each with and
//! without a password — PING, PUBLISH, pipelined PUBLISH, SEND, INFO, an error reply
//! raised as the library's error type, a wrong password refused — checked both on the
//! library's side and by WebSocket clients receiving every push. Plus the raw RESP2 /
//! RESP3 forms of HELLO and the setup commands, byte for byte.
//! `scripts/test.sh` installs redis-py (scripts/pyvenv.sh) and the npm packages
//! (`npm ci` in tests/clients).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn run(cmd: &mut Command) -> Value {
    let out = cmd.output().expect("run the client script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// What every library must have seen: one recipient per push, in order.
fn check_library(name: &str, v: &Value, password: bool) {
    assert_eq!(v["publish"], 1, "{name}: {v}");
    assert_eq!(
        v["pipelined"],
        serde_json::json!([1, 1, 1, 1]),
        "{name}: {v}"
    );
    assert_eq!(v["send"], 1, "{name}: {v}");
    assert_eq!(v["info_has_clients"], true, "{name}: {v}");
    let err = v["error"].as_str().unwrap_or_default();
    assert!(err.contains("wrong number of arguments"), "{name}: {v}");
    if password {
        let bad = v["bad_password"].as_str().unwrap_or_default();
        assert!(!bad.is_empty(), "{name}: a wrong password must fail: {v}");
    }
}

fn libraries_at_their_defaults(password: Option<&str>) {
    let mut args = vec![];
    if let Some(p) = password {
        args.extend(["--control-password", p]);
    }
    let server = Server::start(&args);
    let mut room = ws_connect(&server.url("?rooms=lib"));
    let mut user = ws_connect(&server.url("?user=libuser"));
    let (host, port) = (
        server.control.ip().to_string(),
        server.control.port().to_string(),
    );
    let mut py = Command::new(test_python());
    py.args(["tests/clients/redis_py.py", &host, &port]);
    let mut node = Command::new("node");
    node.args(["tests/clients/node_clients.mjs", &host, &port]);
    if let Some(p) = password {
        py.arg(p);
        node.arg(p);
    }
    let v = run(&mut py);
    check_library("redis-py", &v, password.is_some());
    assert_eq!(v["client_name"], "lib-test");
    for i in 1..=5 {
        assert_eq!(next_text(&mut room), format!("py-{i}"));
    }
    assert_eq!(next_text(&mut user), "py-send");
    let v = run(&mut node);
    for lib in ["ioredis", "node-redis"] {
        check_library(lib, &v[lib], password.is_some());
        for i in 1..=5 {
            assert_eq!(next_text(&mut room), format!("{lib}-{i}"));
        }
        assert_eq!(next_text(&mut user), format!("{lib}-send"));
    }
}

#[test]
fn redis_py_ioredis_and_node_redis_work_at_their_defaults() {
    libraries_at_their_defaults(None);
}

#[test]
fn redis_py_ioredis_and_node_redis_work_with_a_password() {
    libraries_at_their_defaults(Some("s3cret pw"));
}

/// Sends raw bytes, returns what came back within a moment.
fn exchange(s: &mut TcpStream, req: &[u8]) -> String {
    s.write_all(req).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn hello_answers_in_resp2_and_resp3_and_setup_commands_like_redis() {
    let server = Server::start(&["--control-password", "pw"]);
    let mut s = TcpStream::connect(server.control).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(exchange(&mut s, b"HELLO 3\r\n").starts_with("-NOAUTH HELLO must be called"));
    assert!(exchange(&mut s, b"AUTH bob pw\r\n").starts_with("-WRONGPASS"));
    let r = exchange(&mut s, b"HELLO 3 AUTH default pw SETNAME app\r\n");
    assert!(
        r.starts_with("%7\r\n$6\r\nserver\r\n$6\r\nwspush\r\n"),
        "{r:?}"
    );
    assert!(r.contains("$5\r\nproto\r\n:3\r\n"), "{r:?}");
    assert_eq!(exchange(&mut s, b"CLIENT GETNAME\r\n"), "$3\r\napp\r\n");
    assert_eq!(exchange(&mut s, b"CLIENT SETNAME \"\"\r\n"), "+OK\r\n");
    assert_eq!(
        exchange(&mut s, b"CLIENT GETNAME\r\n"),
        "_\r\n",
        "RESP3 null"
    );
    assert_eq!(exchange(&mut s, b"COMMAND DOCS\r\n"), "%0\r\n");
    let r = exchange(&mut s, b"HELLO 2\r\n");
    assert!(r.starts_with("*14\r\n"), "{r:?}");
    assert!(r.contains("$5\r\nproto\r\n:2\r\n"), "{r:?}");
    assert_eq!(
        exchange(&mut s, b"CLIENT GETNAME\r\n"),
        "$-1\r\n",
        "RESP2 null"
    );
    assert_eq!(exchange(&mut s, b"COMMAND DOCS\r\n"), "*0\r\n");
    assert!(exchange(&mut s, b"HELLO 4\r\n").starts_with("-NOPROTO"));
    assert_eq!(exchange(&mut s, b"SELECT 0\r\n"), "+OK\r\n");
    assert!(exchange(&mut s, b"SELECT 1\r\n").starts_with("-ERR DB index is out of range"));
    assert_eq!(exchange(&mut s, b"ECHO hi\r\n"), "$2\r\nhi\r\n");
    assert_eq!(
        exchange(&mut s, b"CLIENT SETINFO LIB-NAME x\r\n"),
        "+OK\r\n"
    );
    assert!(exchange(&mut s, b"CLIENT ID\r\n").starts_with(':'));
    assert!(exchange(&mut s, b"CLIENT LIST\r\n").starts_with("-ERR unsupported CLIENT"));
    assert!(exchange(&mut s, b"COMMAND COUNT\r\n").starts_with(':'));
    assert!(exchange(&mut s, b"CLIENT SETNAME \"a b\"\r\n").starts_with("-ERR Client names"));
    assert_eq!(
        exchange(&mut s, b"PUBLISH r x\r\n"),
        ":0\r\n",
        "usable after all that"
    );
}
