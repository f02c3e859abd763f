//! Connection tokens (issue 8): who receives what is decided by the backend's
//! signature, checked at upgrade. Tokens are minted by PyJWT (an independent
//! implementation; scripts/test.sh installs it in target/pyvenv).

mod common;

use std::time::Duration;

use common::*;
use tungstenite::Message;

const SECRET: &str = "a-test-secret-that-is-at-least-32-bytes-long";

fn hs(claims: &str) -> String {
    mint_token("HS256", SECRET, claims)
}

fn claims(sub: &str, exp_in: i64, extra: &str) -> String {
    let exp = unix_now() as i64 + exp_in;
    format!(r#"{{"sub":"{sub}","exp":{exp}{extra}}}"#)
}

fn hs_server(extra: &[&str]) -> Server {
    let mut args = vec!["--jwt-secret", SECRET, "--jwt-leeway", "0s"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// The status line of the answer to an upgrade with `target`.
fn upgrade_status(server: &Server, target: &str, extra: &str) -> String {
    let (_s, head) = raw_request(server.ws, &upgrade_request(server.ws, target, extra));
    head.lines().next().unwrap_or("").to_string()
}

#[test]
fn every_bad_token_is_a_401_counted_by_reason() {
    let server = hs_server(&[]);
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "no_token"),
        ("not-a-jwt".into(), "malformed"),
        (
            mint_token(
                "HS256",
                "another-secret-that-is-32-bytes-long!!",
                &claims("u", 60, ""),
            ),
            "bad_signature",
        ),
        (mint_token("none", "", &claims("u", 60, "")), "alg_none"),
        (hs(&claims("u", -10, "")), "expired"),
        (
            hs(&claims("u", 60, r#","nbf":9999999999"#)),
            "not_yet_valid",
        ),
        (hs(r#"{"exp":9999999999}"#), "missing_sub"),
        (hs(&claims("a b", 60, "")), "invalid_sub"),
        (hs(r#"{"sub":"u"}"#), "missing_exp"),
    ];
    let info_before = server.info();
    for (token, _) in &cases {
        let target = if token.is_empty() {
            "/ws".to_string()
        } else {
            format!("/ws?token={token}")
        };
        let status = upgrade_status(&server, &target, "");
        assert!(status.starts_with("HTTP/1.1 401"), "{token}: {status}");
    }
    let info = server.info();
    for (_, reason) in &cases {
        let key = format!("token_failures_{reason}");
        let n: u64 = info.get(&key).and_then(|v| v.parse().ok()).unwrap_or(0);
        let was: u64 = info_before
            .get(&key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!(n > was, "{key} not counted: {:?}", info.get(&key));
    }
}

#[test]
fn bearer_header_works_and_user_param_is_refused() {
    let server = hs_server(&[]);
    let t = hs(&claims("alice", 60, ""));
    let status = upgrade_status(&server, "/ws", &format!("Authorization: Bearer {t}\r\n"));
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    let status = upgrade_status(&server, &format!("/ws?token={t}&user=bob"), "");
    assert!(status.starts_with("HTTP/1.1 400"), "{status}");
    assert_info_eventually(&server, "auth_user_param_refused", 1);
}

#[test]
fn send_reaches_only_the_connection_whose_token_says_so() {
    let server = hs_server(&[]);
    let mut alice = ws_connect(&server.url(&format!("?token={}", hs(&claims("alice", 60, "")))));
    let mut mallory =
        ws_connect(&server.url(&format!("?token={}", hs(&claims("mallory", 60, "")))));
    let mut ctl = server.control();
    assert_eq!(ctl.int(&["SEND", "alice", "for alice"]), 1);
    assert_eq!(next_text(&mut alice), "for alice");
    assert_eq!(ctl.int(&["SEND", "mallory", "for mallory"]), 1);
    // Mallory's first message is her own: she never saw alice's.
    assert_eq!(next_text(&mut mallory), "for mallory");
}

#[test]
fn rooms_come_from_the_token_and_others_are_refused() {
    let server = hs_server(&["--client-join", "public.*"]);
    let t = hs(&claims("u", 60, r#","rooms":["team"],"join":["news.*"]"#));
    // The token's rooms are joined at connect.
    let mut ws = ws_connect(&server.url(&format!("?token={t}")));
    let mut ctl = server.control();
    assert_eq!(ctl.int(&["PUBLISH", "team", "hi"]), 1);
    assert_eq!(next_text(&mut ws), "hi");
    // ?rooms= may name granted rooms only.
    for ok in ["news.eu", "public.lobby", "team"] {
        let status = upgrade_status(&server, &format!("/ws?token={t}&rooms={ok}"), "");
        assert!(status.starts_with("HTTP/1.1 101"), "{ok}: {status}");
    }
    for bad in ["private", "newsx", "sports.eu"] {
        let status = upgrade_status(&server, &format!("/ws?token={t}&rooms={bad}"), "");
        assert!(status.starts_with("HTTP/1.1 403"), "{bad}: {status}");
    }
    assert_info_eventually(&server, "rooms_forbidden_at_connect", 3);
    // By op: granted joins work, others are refused and the connection stays.
    ws.send(Message::text(r#"{"op":"join","room":"news.us"}"#))
        .unwrap();
    assert_eq!(next_text(&mut ws), r#"{"op":"joined","room":"news.us"}"#);
    ws.send(Message::text(r#"{"op":"join","room":"secret"}"#))
        .unwrap();
    assert_eq!(
        next_text(&mut ws),
        r#"{"op":"error","reason":"forbidden","room":"secret"}"#
    );
    ws.send(Message::text(r#"{"op":"join","room":"public.x"}"#))
        .unwrap();
    assert_eq!(next_text(&mut ws), r#"{"op":"joined","room":"public.x"}"#);
    assert_eq!(ctl.int(&["PUBLISH", "secret", "no"]), 0);
    assert_eq!(ctl.int(&["PUBLISH", "news.us", "yes"]), 1);
    assert_eq!(next_text(&mut ws), "yes");
    // The backend's JOIN is always allowed.
    assert_eq!(ctl.int(&["JOIN", "u", "secret"]), 1);
    assert_eq!(ctl.int(&["PUBLISH", "secret", "server-side"]), 1);
    assert_eq!(next_text(&mut ws), "server-side");
}

#[test]
fn a_short_token_is_closed_with_4001_and_a_refreshed_one_stays() {
    let server = hs_server(&[]);
    let mut short = ws_connect(&server.url(&format!("?token={}", hs(&claims("s", 2, "")))));
    let mut kept = ws_connect(&server.url(&format!("?token={}", hs(&claims("k", 2, "")))));
    let fresh = hs(&claims("k", 60, ""));
    kept.send(Message::text(format!(
        r#"{{"op":"refresh","token":"{fresh}"}}"#
    )))
    .unwrap();
    let reply = next_text(&mut kept);
    assert!(reply.starts_with(r#"{"op":"refreshed","exp":"#), "{reply}");
    // A refresh for another user is refused and changes nothing.
    let other = hs(&claims("someone-else", 60, ""));
    short
        .send(Message::text(format!(
            r#"{{"op":"refresh","token":"{other}"}}"#
        )))
        .unwrap();
    let reply = next_text(&mut short);
    assert!(reply.contains("another user"), "{reply}");
    // The short one is closed near its expiry with 4001.
    short
        .get_mut()
        .set_read_timeout(Some(Duration::from_secs(6)))
        .unwrap();
    loop {
        match short.read() {
            Ok(Message::Close(Some(f))) => {
                assert_eq!(u16::from(f.code), 4001);
                break;
            }
            Ok(_) => continue,
            Err(e) => panic!("no 4001 close: {e}"),
        }
    }
    // The refreshed one is still served after its first token's expiry.
    let mut ctl = server.control();
    assert_eq!(ctl.int(&["SEND", "k", "still here"]), 1);
    assert_eq!(next_text(&mut kept), "still here");
    assert_info_eventually(&server, "token_expired_closes", 1);
    assert_info_eventually(&server, "token_refreshes", 1);
    assert_info_eventually(&server, "token_refresh_failures", 1);
}

#[test]
fn a_refresh_that_drops_a_join_grant_leaves_that_room() {
    let server = hs_server(&[]);
    let t = hs(&claims("u", 60, r#","join":["a","b"]"#));
    let mut ws = ws_connect(&server.url(&format!("?token={t}&rooms=a,b")));
    let narrower = hs(&claims("u", 60, r#","join":["b"]"#));
    ws.send(Message::text(format!(
        r#"{{"op":"refresh","token":"{narrower}"}}"#
    )))
    .unwrap();
    assert_eq!(next_text(&mut ws), r#"{"op":"left","room":"a"}"#);
    assert!(next_text(&mut ws).starts_with(r#"{"op":"refreshed""#));
    let mut ctl = server.control();
    assert_eq!(ctl.int(&["PUBLISH", "a", "x"]), 0);
    assert_eq!(ctl.int(&["PUBLISH", "b", "y"]), 1);
}

#[test]
fn rs256_and_es256_tokens_verify_against_a_public_key_and_confusion_fails() {
    let keys = TestKeys::generate();
    for (private, public, alg) in [
        (&keys.rsa_private, &keys.rsa_public, "RS256"),
        (&keys.ec_private, &keys.ec_public, "ES256"),
    ] {
        let server = Server::start(&["--jwt-public-key", public]);
        let t = mint_token(alg, private, &claims("u", 60, ""));
        let status = upgrade_status(&server, &format!("/ws?token={t}"), "");
        assert!(status.starts_with("HTTP/1.1 101"), "{alg}: {status}");
        // Algorithm confusion: an HS256 token keyed with the public key's bytes.
        let pem = std::fs::read_to_string(public).unwrap();
        let forged = run_hs256_with_raw_key(&pem, &claims("u", 60, ""));
        let status = upgrade_status(&server, &format!("/ws?token={forged}"), "");
        assert!(
            status.starts_with("HTTP/1.1 401"),
            "{alg} confusion: {status}"
        );
        assert_info_eventually(&server, "token_failures_alg_mismatch", 1);
    }
}

/// An HS256 token whose HMAC key is `key` as bytes (PyJWT refuses PEM-looking
/// secrets, so the signature is made with Python's hmac directly).
fn run_hs256_with_raw_key(key: &str, claims: &str) -> String {
    let out = std::process::Command::new(test_python())
        .arg("-c")
        .arg(
            "import sys, hmac, hashlib, base64, json\n\
             b = lambda x: base64.urlsafe_b64encode(x).rstrip(b'=').decode()\n\
             h = b(json.dumps({'alg':'HS256','typ':'JWT'}).encode()); p = b(sys.argv[2].encode())\n\
             s = b(hmac.new(sys.argv[1].encode(), f'{h}.{p}'.encode(), hashlib.sha256).digest())\n\
             print(f'{h}.{p}.{s}')",
        )
        .args([key, claims])
        .output()
        .expect("python");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn issuer_and_audience_must_match_when_set() {
    let server = hs_server(&["--jwt-issuer", "backend", "--jwt-audience", "push"]);
    let good = hs(&claims("u", 60, r#","iss":"backend","aud":["x","push"]"#));
    assert!(upgrade_status(&server, &format!("/ws?token={good}"), "").starts_with("HTTP/1.1 101"));
    for bad in [
        claims("u", 60, r#","iss":"other","aud":"push""#),
        claims("u", 60, r#","iss":"backend","aud":"other""#),
        claims("u", 60, r#","aud":"push""#),
    ] {
        let t = hs(&bad);
        let status = upgrade_status(&server, &format!("/ws?token={t}"), "");
        assert!(status.starts_with("HTTP/1.1 401"), "{bad}: {status}");
    }
}

#[test]
fn without_authentication_client_join_limits_what_clients_join() {
    let server = Server::start(&["--client-join", "public.*"]);
    let status = upgrade_status(&server, "/ws?rooms=private", "");
    assert!(status.starts_with("HTTP/1.1 403"), "{status}");
    let mut ws = ws_connect(&server.url("?rooms=public.a"));
    ws.send(Message::text(r#"{"op":"join","room":"private"}"#))
        .unwrap();
    assert_eq!(
        next_text(&mut ws),
        r#"{"op":"error","reason":"forbidden","room":"private"}"#
    );
}

#[test]
fn a_secret_shorter_than_32_bytes_is_refused_at_start() {
    let r = start_expecting_refusal(&["--jwt-secret", "short"], None);
    assert_eq!(r.status.code(), Some(2), "{:?}", r.stderr);
    assert!(r.stderr.contains("--jwt-secret"), "{}", r.stderr);
}

#[test]
fn refreshes_are_rate_limited_and_the_third_refusal_closes_with_1008() {
    let server = hs_server(&[]);
    let mut ws = ws_connect(&server.url(&format!("?token={}", hs(&claims("u", 60, "")))));
    let bad = r#"{"op":"refresh","token":"x.y.z"}"#;
    ws.send(Message::text(bad)).unwrap();
    assert!(next_text(&mut ws).contains("refresh refused"));
    // A second refresh in the same second is refused without checking a signature.
    let good = hs(&claims("u", 60, ""));
    ws.send(Message::text(format!(
        r#"{{"op":"refresh","token":"{good}"}}"#
    )))
    .unwrap();
    assert!(next_text(&mut ws).contains("too soon"));
    ws.send(Message::text(bad)).unwrap();
    assert!(next_text(&mut ws).contains("refresh refused"));
    match ws.read() {
        Ok(Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 1008),
        other => panic!("expected a 1008 close after the third refusal, got {other:?}"),
    }
}

#[test]
fn a_room_the_backend_joined_survives_a_narrowing_refresh() {
    let server = hs_server(&[]);
    let t = hs(&claims("u", 60, r#","join":["a"]"#));
    let mut ws = ws_connect(&server.url(&format!("?token={t}&rooms=a")));
    let mut ctl = server.control();
    // The backend now holds the membership too (the client was already in it).
    assert_eq!(ctl.int(&["JOIN", "u", "a"]), 0);
    let narrower = hs(&claims("u", 60, ""));
    ws.send(Message::text(format!(
        r#"{{"op":"refresh","token":"{narrower}"}}"#
    )))
    .unwrap();
    assert!(next_text(&mut ws).starts_with(r#"{"op":"refreshed""#));
    assert_eq!(ctl.int(&["PUBLISH", "a", "kept"]), 1);
    assert_eq!(next_text(&mut ws), "kept");
}

/// A recovering client names its token's rooms in `rooms=` as well (recover= needs
/// them there): they count once against `--max-rooms-per-conn`.
#[test]
fn token_rooms_repeated_in_the_query_count_once_against_the_room_limit() {
    let server = hs_server(&["--max-rooms-per-conn", "2"]);
    let t = hs(&claims("u", 60, r#","rooms":["a","b"]"#));
    let status = upgrade_status(&server, &format!("/ws?token={t}&rooms=a,b"), "");
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    let status = upgrade_status(&server, &format!("/ws?token={t}&rooms=a,c"), "");
    assert!(
        status.starts_with("HTTP/1.1 403") || status.starts_with("HTTP/1.1 400"),
        "{status}"
    );
}
