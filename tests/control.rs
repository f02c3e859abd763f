//! The control port as a Redis client sees it: AUTH, every error path, inline
//! commands, pipelining, QUIT, many clients at once, and a client that never reads
//! its replies — against the real binary, with the harness's own RESP client (not
//! the server's parser) and raw sockets.
//!
//! The rule behind most of these: nothing a control client sends can crash or
//! stall the dispatcher. No test asserts a timing; "promptly" means within the
//! harness's generous read timeouts.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::Duration;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};

/// Expects an error reply starting with `prefix`.
fn expect_error(reply: Reply, prefix: &str) {
    match reply {
        Reply::Error(e) if e.starts_with(prefix) => {}
        other => panic!("expected an error starting with {prefix:?}, got {other:?}"),
    }
}

/// Asserts the server closed the connection: the next read sees EOF (or a reset),
/// not a reply and not a timeout.
fn expect_closed(c: &mut Resp) {
    match c.try_read() {
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
            ) => {}
        other => panic!("expected the server to close the connection, got {other:?}"),
    }
}

#[test]
fn requires_auth_before_every_command_but_auth_and_quit() {
    let server = Server::start(&["--control-password", "s3cret"]);
    let mut ws = ws_connect(&server.url("?user=u1&rooms=news"));
    let mut c = server.control();
    expect_error(c.cmd(&["PING"]), "NOAUTH");
    expect_error(c.cmd(&["PUBLISH", "news", "unauthenticated"]), "NOAUTH");
    expect_error(c.cmd(&["BROADCAST", "unauthenticated"]), "NOAUTH");
    expect_error(c.cmd(&["SEND", "u1", "unauthenticated"]), "NOAUTH");
    expect_error(c.cmd(&["KICK", "u1"]), "NOAUTH");
    expect_error(c.cmd(&["INFO"]), "NOAUTH");
    c.send_raw(b"ONLINE\r\n");
    expect_error(c.read(), "NOAUTH");
    assert_eq!(c.cmd(&["AUTH", "s3cret"]), Reply::Simple("OK".into()));
    assert_eq!(c.cmd(&["PING"]), Reply::Simple("PONG".into()));
    assert_eq!(c.int(&["PUBLISH", "news", "authenticated"]), 1);
    assert_eq!(
        next_text(&mut ws),
        "authenticated",
        "nothing sent before AUTH was delivered"
    );
}

#[test]
fn wrong_password_replies_wrongpass_and_stays_unauthenticated() {
    let server = Server::start(&["--control-password", "s3cret"]);
    let mut c = server.control();
    expect_error(c.cmd(&["AUTH", "guess"]), "WRONGPASS");
    expect_error(c.cmd(&["AUTH", "s3cre"]), "WRONGPASS");
    expect_error(c.cmd(&["PING"]), "NOAUTH");
    // Redis 6 form: the user name is ignored, the password is the last argument.
    assert_eq!(
        c.cmd(&["AUTH", "default", "s3cret"]),
        Reply::Simple("OK".into())
    );
    assert_eq!(c.cmd(&["PING"]), Reply::Simple("PONG".into()));
}

#[test]
fn noauth_comes_before_arity_name_and_size_errors() {
    let server = Server::start(&["--control-password", "s3cret", "--max-message", "1KiB"]);
    let mut c = server.control();
    let too_big = "x".repeat(1025);
    let cases: &[&[&str]] = &[
        &["PUBLISH", "news"],
        &["PING", "a", "b"],
        &["FLUSHALL"],
        &["PUBLISH", "two words", "x"],
        &["SEND", "", "x"],
        &["KICK", "u1", &too_big],
        &["PUBLISH", "news", &too_big],
        &["BROADCAST", &too_big],
        &[&too_big],
    ];
    for args in cases {
        expect_error(c.cmd(args), "NOAUTH Authentication required.");
    }
    c.send_raw(b"PUBLISH news\r\n");
    expect_error(c.read(), "NOAUTH");
    // AUTH's own mistakes are still reported as such.
    expect_error(c.cmd(&["AUTH"]), "ERR wrong number of arguments");
    assert_eq!(c.cmd(&["AUTH", "s3cret"]), Reply::Simple("OK".into()));
    expect_error(c.cmd(&["PUBLISH", "news"]), "ERR wrong number of arguments");
    expect_error(c.cmd(&["FLUSHALL"]), "ERR unknown command");
    expect_error(
        c.cmd(&["PUBLISH", "news", &too_big]),
        "ERR payload exceeds --max-message",
    );
}

#[test]
fn third_failed_auth_answers_wrongpass_then_closes_and_is_counted() {
    let server = Server::start(&["--control-password", "s3cret"]);
    let mut c = server.control();
    expect_error(c.cmd(&["AUTH", "guess1"]), "WRONGPASS");
    expect_error(c.cmd(&["AUTH", "guess2"]), "WRONGPASS");
    expect_error(c.cmd(&["PING"]), "NOAUTH");
    // The third failure, with more commands pipelined behind it: none of them runs.
    let mut pipelined = Resp::encode(&["AUTH", "guess3"]);
    pipelined.extend(Resp::encode(&["AUTH", "s3cret"]));
    pipelined.extend(Resp::encode(&["PING"]));
    c.send_raw(&pipelined);
    expect_error(c.read(), "WRONGPASS");
    expect_closed(&mut c);

    let mut admin = server.control();
    assert_eq!(admin.cmd(&["AUTH", "s3cret"]), Reply::Simple("OK".into()));
    let info = match admin.cmd(&["INFO", "stats"]) {
        Reply::Bulk(Some(b)) => String::from_utf8(b).unwrap(),
        other => panic!("INFO replied {other:?}"),
    };
    assert!(info.contains("auth_failures:3\r\n"), "{info}");
    assert!(info.contains("auth_disconnects:1\r\n"), "{info}");
}

#[test]
fn quit_is_allowed_before_auth() {
    let server = Server::start(&["--control-password", "s3cret"]);
    let mut c = server.control();
    assert_eq!(c.cmd(&["QUIT"]), Reply::Simple("OK".into()));
    expect_closed(&mut c);
}

#[test]
fn auth_without_a_configured_password_is_an_error() {
    let server = Server::start(&[]);
    let mut c = server.control();
    expect_error(c.cmd(&["AUTH", "anything"]), "ERR");
    assert_eq!(c.cmd(&["PING"]), Reply::Simple("PONG".into()));
}

#[test]
fn unknown_command_replies_err_and_the_connection_stays_usable() {
    let server = Server::start(&[]);
    let mut c = server.control();
    expect_error(c.cmd(&["SUBSCRIBE", "news"]), "ERR unknown command");
    expect_error(c.cmd(&["FLUSHALL"]), "ERR unknown command");
    c.send_raw(b"MONITOR\r\n");
    expect_error(c.read(), "ERR unknown command");
    assert_eq!(c.cmd(&["PING"]), Reply::Simple("PONG".into()));
}

#[test]
fn wrong_arity_replies_err_and_the_connection_stays_usable() {
    let server = Server::start(&[]);
    let mut c = server.control();
    let cases: &[&[&str]] = &[
        &["PUBLISH", "news"],
        &["PUBLISH", "news", "a", "b"],
        &["BROADCAST"],
        &["SEND", "u1"],
        &["JOIN", "u1"],
        &["LEAVE", "u1", "news", "extra"],
        &["KICK"],
        &["ONLINE", "a", "b"],
        &["PING", "a", "b"],
    ];
    for args in cases {
        expect_error(c.cmd(args), "ERR wrong number of arguments");
    }
    assert_eq!(c.cmd(&["PING"]), Reply::Simple("PONG".into()));
}

#[test]
fn invalid_room_or_user_name_replies_err_and_the_connection_stays_usable() {
    let server = Server::start(&[]);
    let mut c = server.control();
    expect_error(
        c.cmd(&["PUBLISH", "two words", "x"]),
        "ERR invalid room name",
    );
    expect_error(c.cmd(&["PUBLISH", "a,b", "x"]), "ERR invalid room name");
    expect_error(c.cmd(&["PUBLISH", "", "x"]), "ERR invalid room name");
    expect_error(
        c.cmd(&["PUBLISH", &"r".repeat(129), "x"]),
        "ERR invalid room name",
    );
    expect_error(c.cmd(&["SEND", "", "x"]), "ERR invalid user name");
    expect_error(c.cmd(&["JOIN", "u1", "a b"]), "ERR invalid room name");
    assert_eq!(c.cmd(&["PING"]), Reply::Simple("PONG".into()));
}

#[test]
fn payload_over_max_message_replies_err_and_the_connection_stays_usable() {
    let server = Server::start(&["--max-message", "1KiB"]);
    let mut ws = ws_connect(&server.url("?user=u1&rooms=news"));
    let mut c = server.control();
    let too_big = "x".repeat(1025);
    for args in [
        vec!["PUBLISH", "news", &too_big],
        vec!["BROADCAST", &too_big],
        vec!["SEND", "u1", &too_big],
    ] {
        expect_error(c.cmd(&args), "ERR payload exceeds --max-message");
    }
    let just_fits = "y".repeat(1024);
    assert_eq!(c.int(&["PUBLISH", "news", &just_fits]), 1);
    assert_eq!(
        next_text(&mut ws),
        just_fits,
        "the oversized pushes were not sent"
    );
}

#[test]
fn malformed_resp_replies_protocol_error_then_closes() {
    let server = Server::start(&[]);
    let mut c = server.control();
    assert_eq!(c.cmd(&["PING"]), Reply::Simple("PONG".into()));
    c.send_raw(b"*2\r\n$x\r\n");
    expect_error(c.read(), "ERR protocol error");
    expect_closed(&mut c);
    // The dispatcher is unharmed.
    assert_eq!(
        server.control().cmd(&["PING"]),
        Reply::Simple("PONG".into())
    );
}

#[test]
fn inline_commands_work() {
    let server = Server::start(&[]);
    let mut ws = ws_connect(&server.url("?rooms=news"));
    let mut c = server.control();
    c.send_raw(b"PING\r\n");
    assert_eq!(c.read(), Reply::Simple("PONG".into()));
    c.send_raw(b"PUBLISH news \"hello world\"\r\n");
    assert_eq!(c.read(), Reply::Int(1));
    assert_eq!(next_text(&mut ws), "hello world");
    c.send_raw(b"online news\r\n");
    assert_eq!(c.read(), Reply::Int(1));
}

#[test]
fn pipelined_mix_of_commands_is_answered_in_order() {
    let server = Server::start(&[]);
    let mut ws = ws_connect(&server.url("?user=u1&rooms=news"));
    let mut c = server.control();
    let mut burst = Vec::new();
    burst.extend(Resp::encode(&["PING"]));
    burst.extend_from_slice(b"PUBLISH news first\r\n");
    burst.extend(Resp::encode(&["NOSUCH", "x"]));
    burst.extend(Resp::encode(&["PUBLISH", "news"]));
    burst.extend(Resp::encode(&["JOIN", "u1", "extra"]));
    burst.extend(Resp::encode(&["PUBLISH", "extra", "second"]));
    burst.extend_from_slice(b"ONLINE extra\r\n");
    burst.extend(Resp::encode(&["LEAVE", "u1", "extra"]));
    burst.extend(Resp::encode(&["PUBLISH", "extra", "never"]));
    burst.extend(Resp::encode(&["SEND", "u1", "third"]));
    burst.extend(Resp::encode(&["PING", "echo me"]));
    c.send_raw(&burst);
    assert_eq!(c.read(), Reply::Simple("PONG".into()));
    assert_eq!(c.read(), Reply::Int(1));
    expect_error(c.read(), "ERR unknown command");
    expect_error(c.read(), "ERR wrong number of arguments");
    assert_eq!(c.read(), Reply::Int(1), "JOIN");
    assert_eq!(c.read(), Reply::Int(1), "PUBLISH after JOIN");
    assert_eq!(c.read(), Reply::Int(1), "ONLINE extra");
    assert_eq!(c.read(), Reply::Int(1), "LEAVE");
    assert_eq!(c.read(), Reply::Int(0), "PUBLISH after LEAVE");
    assert_eq!(c.read(), Reply::Int(1), "SEND");
    assert_eq!(c.read(), Reply::Bulk(Some(b"echo me".to_vec())));
    for want in ["first", "second", "third"] {
        assert_eq!(next_text(&mut ws), want);
    }
}

#[test]
fn quit_replies_ok_then_closes() {
    let server = Server::start(&[]);
    let mut c = server.control();
    c.send_raw(&[Resp::encode(&["QUIT"]), Resp::encode(&["PING"])].concat());
    assert_eq!(c.read(), Reply::Simple("OK".into()));
    expect_closed(&mut c);
}

#[test]
fn fifty_control_clients_publishing_at_once_are_all_answered_and_delivered_in_order() {
    const CLIENTS: usize = 50;
    const EACH: usize = 100;
    let server = Server::start(&[]);
    let mut ws = ws_connect(&server.url("?rooms=news"));
    let control = server.control;
    let publishers: Vec<_> = (0..CLIENTS)
        .map(|client| {
            thread::spawn(move || {
                let mut c = Resp::connect(control);
                for seq in 0..EACH {
                    assert_eq!(
                        c.int(&[
                            "PUBLISH".to_string(),
                            "news".into(),
                            format!("{client}:{seq}")
                        ]),
                        1
                    );
                }
            })
        })
        .collect();
    for p in publishers {
        p.join().expect("publisher thread");
    }
    let mut next_seq = [0usize; CLIENTS];
    for _ in 0..CLIENTS * EACH {
        let msg = next_text(&mut ws);
        let (client, seq) = msg.split_once(':').expect("client:seq");
        let (client, seq): (usize, usize) = (client.parse().unwrap(), seq.parse().unwrap());
        assert_eq!(
            seq, next_seq[client],
            "client {client}'s pushes arrive once each, in the order they were acked"
        );
        next_seq[client] += 1;
    }
    assert_eq!(server.control().int(&["BROADCAST", "end"]), 1);
    assert_eq!(next_text(&mut ws), "end", "no extra messages");
    assert!(
        wait_until(Duration::from_secs(10), || server
            .info_u64("control_clients")
            == 1),
        "finished control clients are released"
    );
}

#[test]
fn client_that_never_reads_its_replies_does_not_stall_others() {
    let server = Server::start(&[]);
    let mut ws = ws_connect(&server.url("?rooms=news"));

    // The hog pipelines PINGs with 1 KiB messages (1 KiB replies each) and never
    // reads, until its own writes stop going through: by then the dispatcher holds
    // its replies and the kernel buffers are full both ways.
    let mut hog = TcpStream::connect(server.control).expect("connect control");
    hog.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let chunk: Vec<u8> = (0..64)
        .flat_map(|_| Resp::encode(&["PING", &"p".repeat(1024)]))
        .collect();
    let (mut sent, mut at) = (0usize, 0usize);
    let mut blocked = false;
    while sent < 256 << 20 {
        match hog.write(&chunk[at..]) {
            Ok(n) => {
                sent += n;
                at = (at + n) % chunk.len();
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                blocked = true;
                break;
            }
            Err(e) => panic!("hog write failed after {sent} bytes: {e}"),
        }
    }
    assert!(
        blocked,
        "the server kept reading a client that never reads its replies ({sent} bytes)"
    );

    let mut other = server.control();
    assert_eq!(other.cmd(&["PING"]), Reply::Simple("PONG".into()));
    assert_eq!(other.int(&["PUBLISH", "news", "still flowing"]), 1);
    assert_eq!(next_text(&mut ws), "still flowing");
    assert_eq!(server.info_u64("connected_clients"), 1);

    // The hog still gets its replies, in order, once it reads.
    hog.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = [0u8; 7];
    hog.read_exact(&mut head).expect("hog's first reply");
    assert_eq!(&head, b"$1024\r\n");
}

#[test]
fn arbitrary_bytes_never_crash_or_wedge_the_dispatcher() {
    let server = Server::start(&[]);
    let control = server.control;
    let resp_ish = prop::collection::vec(
        prop::sample::select(b"*$:+-\r\n0123456789 \"'\\PINGPUBLISHnews".to_vec()),
        0..256,
    );
    let bytes = prop_oneof![prop::collection::vec(any::<u8>(), 0..512), resp_ish];
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&bytes, |bytes| {
            let mut s = TcpStream::connect(control).expect("connect control");
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            // The server may close mid-write after a protocol error.
            let _ = s.write_all(&bytes);
            let _ = s.shutdown(Shutdown::Write);
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
            let mut probe = Resp::connect(control);
            prop_assert_eq!(probe.cmd(&["PING"]), Reply::Simple("PONG".into()));
            Ok(())
        })
        .expect("dispatcher survives arbitrary input");
    assert!(
        wait_until(Duration::from_secs(10), || server
            .info_u64("control_clients")
            == 1),
        "closed control clients are released"
    );
}

#[test]
fn info_names_every_field_once() {
    let server = Server::start(&[]);
    let mut c = server.control();
    let text = match c.cmd(&["INFO"]) {
        Reply::Bulk(Some(b)) => String::from_utf8(b).unwrap(),
        other => panic!("INFO replied {other:?}"),
    };
    let mut seen = std::collections::HashSet::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let key = line.split(':').next().unwrap();
        assert!(seen.insert(key.to_string()), "INFO repeats {key}");
    }
}
