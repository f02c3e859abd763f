//! permessage-deflate (RFC 7692) end to end (issue 12): negotiation with each
//! parameter, declined offers, the frames on the wire (RSV1, what is and is not
//! compressed), inflation of client messages within `--max-message`, and the
//! protocol errors, over raw sockets; and Python `websockets` (an independent
//! permessage-deflate implementation; scripts/pyvenv.sh installs it) as a client
//! receiving compressed pushes and sending compressed messages.
//!
//! The raw-socket side compresses and inflates with flate2 directly (raw deflate,
//! the RFC's tail handling written out here), not through the server's codec.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;

use common::*;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};

const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate\r\n";
const AGREED: &str =
    "sec-websocket-extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// Upgrades with the extra header lines `extra`; returns the socket and the 101 head.
fn upgrade(addr: SocketAddr, query: &str, extra: &str) -> (TcpStream, String) {
    let (s, head) = raw_request(addr, &upgrade_request(addr, &format!("/ws{query}"), extra));
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    (s, head)
}

/// The `Sec-WebSocket-Extensions` line of a response head, lowercased, if any.
fn extensions(head: &str) -> Option<String> {
    head.lines()
        .map(str::to_ascii_lowercase)
        .find(|l| l.starts_with("sec-websocket-extensions:"))
}

/// One server frame: (first byte, payload).
fn frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).expect("frame header");
    assert_eq!(h[1] & 0x80, 0, "server frames are unmasked");
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).unwrap();
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).unwrap();
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut p = vec![0; len];
    s.read_exact(&mut p).unwrap();
    (h[0], p)
}

/// RFC 7692 §7.2.2: append 00 00 ff ff and inflate.
fn inflate(body: &[u8]) -> Vec<u8> {
    let mut input = body.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut d = Decompress::new(false);
    let mut out = Vec::with_capacity(1 << 20);
    d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .expect("valid deflate");
    out
}

/// RFC 7692 §7.2.1: compress, sync-flush, strip the tail.
fn deflate_with(c: &mut Compress, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 1024);
    c.compress_vec(payload, &mut out, FlushCompress::Sync)
        .unwrap();
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

fn deflate(payload: &[u8]) -> Vec<u8> {
    deflate_with(&mut Compress::new(Compression::new(6), false), payload)
}

/// A masked client frame with `b0` as its first byte (FIN, RSV, opcode).
fn client_frame_b0(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = client_frame(true, 0, payload);
    f[0] = b0;
    f
}

/// A JSON payload of about `n` bytes.
fn json(n: usize) -> String {
    let mut s = String::from("{\"items\":[");
    let mut i = 0;
    while s.len() < n {
        s.push_str(&format!(
            "{{\"id\":{i},\"name\":\"item-{i}\",\"price\":{}.5,\"tags\":[\"a\",\"b\"]}},",
            i * 3
        ));
        i += 1;
    }
    s.push_str("{}]}");
    s
}

/// The next data frame, inflated if it came compressed: (compressed, payload).
fn next_message(s: &mut TcpStream) -> (bool, Vec<u8>) {
    loop {
        let (b0, p) = frame(s);
        match b0 & 0x0f {
            0x1 | 0x2 => {
                assert_eq!(b0 & 0x80, 0x80, "pushes are single frames");
                assert_eq!(b0 & 0x30, 0, "RSV2 and RSV3 stay clear");
                let compressed = b0 & 0x40 != 0;
                return (compressed, if compressed { inflate(&p) } else { p });
            }
            0x9 | 0xa => continue,
            op => panic!("unexpected opcode {op}"),
        }
    }
}

#[test]
fn negotiates_without_context_takeover_both_ways() {
    let server = Server::start(&[]);
    let (s, head) = upgrade(server.ws, "", OFFER);
    assert_eq!(extensions(&head).as_deref(), Some(AGREED), "{head}");
    // Counted while open (INFO deflate_connections), and only with the extension.
    let (plain, _) = upgrade(server.ws, "", "");
    assert_info_eventually(&server, "connected_clients", 2);
    assert_info_eventually(&server, "deflate_connections", 1);
    drop(s);
    assert_info_eventually(&server, "deflate_connections", 0);
    drop(plain);
    assert_info_eventually(&server, "connected_clients", 0);
}

#[test]
fn accepts_what_browsers_offer_and_never_names_client_max_window_bits() {
    let server = Server::start(&[]);
    for offer in [
        "permessage-deflate; client_max_window_bits",
        "permessage-deflate; client_max_window_bits=12",
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
    ] {
        let (_s, head) = upgrade(
            server.ws,
            "",
            &format!("Sec-WebSocket-Extensions: {offer}\r\n"),
        );
        assert_eq!(
            extensions(&head).as_deref(),
            Some(AGREED),
            "{offer}: {head}"
        );
    }
}

#[test]
fn echoes_server_max_window_bits() {
    let server = Server::start(&[]);
    let (_s, head) = upgrade(
        server.ws,
        "",
        "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10\r\n",
    );
    assert_eq!(
        extensions(&head).unwrap(),
        format!("{AGREED}; server_max_window_bits=10")
    );
}

#[test]
fn declines_offers_it_cannot_accept_and_opens_without_the_extension() {
    let server = Server::start(&[]);
    for (i, offer) in [
        "permessage-deflate; foo=1",
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
        "permessage-deflate; \"",
        "x-webkit-deflate-frame",
    ]
    .into_iter()
    .enumerate()
    {
        let (mut s, head) = upgrade(
            server.ws,
            &format!("?rooms=r{i}"),
            &format!("Sec-WebSocket-Extensions: {offer}\r\n"),
        );
        assert_eq!(extensions(&head), None, "{offer}: {head}");
        // Still a working connection, and pushes arrive uncompressed.
        let payload = json(2000);
        let room = format!("r{i}");
        assert_eq!(server.control().int(&["PUBLISH", &room, &payload]), 1);
        assert_eq!(
            next_message(&mut s),
            (false, payload.into_bytes()),
            "{offer}"
        );
    }
}

#[test]
fn takes_the_first_acceptable_offer() {
    let server = Server::start(&[]);
    let (_s, head) = upgrade(
        server.ws,
        "",
        "Sec-WebSocket-Extensions: permessage-deflate; bogus, permessage-deflate; server_max_window_bits=12\r\n",
    );
    assert_eq!(
        extensions(&head).unwrap(),
        format!("{AGREED}; server_max_window_bits=12")
    );
}

#[test]
fn compression_off_declines_every_offer() {
    let server = Server::start(&["--compression", "off"]);
    let (mut s, head) = upgrade(server.ws, "?rooms=r", OFFER);
    assert_eq!(extensions(&head), None, "{head}");
    let payload = json(2000);
    assert_eq!(server.control().int(&["PUBLISH", "r", &payload]), 1);
    assert_eq!(next_message(&mut s), (false, payload.into_bytes()));
}

#[test]
fn pushes_at_or_over_the_minimum_size_arrive_compressed_and_intact() {
    let server = Server::start(&[]);
    let (mut s, _) = upgrade(server.ws, "?rooms=r", OFFER);
    let (mut plain, head) = upgrade(server.ws, "?rooms=r", "");
    assert_eq!(extensions(&head), None);
    let mut ctl = server.control();
    let big = json(1000);
    let small = json(200);
    let binary: Vec<u8> = (0..4096u32).map(|i| (i % 7) as u8 | 0x80).collect();
    assert_eq!(ctl.int(&["PUBLISH", "r", &big]), 2);
    assert_eq!(ctl.int(&["PUBLISH", "r", &small]), 2);
    assert_eq!(ctl.int(&[&b"PUBLISH"[..], b"r", &binary]), 2);
    let (b0, p) = frame(&mut s);
    assert_eq!(b0, 0x80 | 0x40 | 0x1, "FIN, RSV1, text");
    assert!(
        p.len() * 10 <= big.len() * 4,
        "{} of {}",
        p.len(),
        big.len()
    );
    assert_eq!(inflate(&p), big.as_bytes());
    assert_eq!(
        next_message(&mut s),
        (false, small.clone().into_bytes()),
        "under --compression-min-size (256): RSV1 clear"
    );
    let (b0, p) = frame(&mut s);
    assert_eq!(b0, 0x80 | 0x40 | 0x2, "FIN, RSV1, binary");
    assert_eq!(inflate(&p), binary);
    // The connection without the extension gets the same messages uncompressed.
    assert_eq!(next_message(&mut plain), (false, big.into_bytes()));
    assert_eq!(next_message(&mut plain), (false, small.into_bytes()));
    assert_eq!(next_message(&mut plain), (false, binary));
    // Compressed once each (the small one not at all), whatever the recipients.
    assert_eq!(server.info_u64("deflate_frames"), 2);
    let (before, after) = (
        server.info_u64("deflate_frame_bytes_in"),
        server.info_u64("deflate_frame_bytes_out"),
    );
    assert!(before > 5000 && after * 2 < before, "{before} → {after}");
}

#[test]
fn compression_min_size_sets_the_threshold() {
    let server = Server::start(&["--compression-min-size", "2000"]);
    let (mut s, _) = upgrade(server.ws, "?rooms=r", OFFER);
    let mut ctl = server.control();
    let (below, at) = (json(1500), json(2100));
    assert_eq!(ctl.int(&["PUBLISH", "r", &below]), 1);
    assert_eq!(ctl.int(&["PUBLISH", "r", &at]), 1);
    assert_eq!(next_message(&mut s), (false, below.into_bytes()));
    assert_eq!(next_message(&mut s), (true, at.into_bytes()));
}

#[test]
fn a_small_window_gets_compressed_frames_only_within_it() {
    let server = Server::start(&[]);
    let (mut s, _) = upgrade(
        server.ws,
        "?rooms=r",
        "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=9\r\n",
    );
    let mut ctl = server.control();
    // The last one compresses far below 512 bytes: what counts is its own length.
    let (fits, larger, repetitive) = (json(400), json(3000), "a".repeat(3000));
    for p in [&fits, &larger, &repetitive] {
        assert_eq!(ctl.int(&["PUBLISH", "r", p]), 1);
    }
    // 400 bytes fit a 512-byte window: no back-reference can reach further.
    let text = |(c, p): (bool, Vec<u8>)| (c, String::from_utf8(p).unwrap());
    assert_eq!(text(next_message(&mut s)), (true, fits));
    assert_eq!(text(next_message(&mut s)), (false, larger));
    assert_eq!(text(next_message(&mut s)), (false, repetitive));
}

#[test]
fn wspush_v1_envelopes_are_compressed_too() {
    let server = Server::start(&[]);
    let (mut s, head) = upgrade(
        server.ws,
        "?rooms=r&user=u",
        &format!("Sec-WebSocket-Protocol: wspush.v1\r\n{OFFER}"),
    );
    assert!(head
        .to_ascii_lowercase()
        .contains("sec-websocket-protocol: wspush.v1"));
    assert_eq!(extensions(&head).as_deref(), Some(AGREED));
    let (_, joined) = next_message(&mut s);
    let joined: serde_json::Value = serde_json::from_slice(&joined).unwrap();
    assert_eq!(joined["op"], "joined");
    let mut ctl = server.control();
    let big = json(1000);
    assert_eq!(ctl.int(&["PUBLISH", "r", &big]), 1);
    assert_eq!(ctl.int(&["SEND", "u", &big]), 1);
    assert_eq!(ctl.int(&["BROADCAST", &big]), 1);
    for want in ["r", "", ""] {
        let (compressed, p) = next_message(&mut s);
        assert!(compressed);
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(v["data"], big, "{v}");
        if !want.is_empty() {
            assert_eq!(v["room"], want, "{v}");
        }
    }
}

#[test]
fn compressed_client_messages_are_inflated_and_answered() {
    let server = Server::start(&[]);
    let (mut s, _) = upgrade(server.ws, "", OFFER);
    let join = format!(
        "{{\"op\":\"join\",\"room\":\"news\",\"pad\":\"{}\"}}",
        "x".repeat(400)
    );
    s.write_all(&client_frame_b0(0xc1, &deflate(join.as_bytes())))
        .unwrap();
    let (_, reply) = next_message(&mut s);
    assert_eq!(reply, br#"{"op":"joined","room":"news"}"#);
    // Fragmented: RSV1 on the first frame only, a ping in between.
    let msg = deflate(br#"{"op":"ping"}"#);
    let (a, b) = msg.split_at(msg.len() / 2);
    let mut bytes = client_frame_b0(0x41, a);
    bytes.extend(client_frame(true, 0x9, b"p"));
    bytes.extend(client_frame(true, 0x0, b));
    s.write_all(&bytes).unwrap();
    let (b0, pong) = frame(&mut s);
    assert_eq!((b0, &pong[..]), (0x8a, &b"p"[..]));
    assert_eq!(next_message(&mut s), (false, br#"{"op":"pong"}"#.to_vec()));
    // It is in the room its compressed join named.
    assert_eq!(server.control().int(&["PUBLISH", "news", "hi"]), 1);
    assert_eq!(next_message(&mut s), (false, b"hi".to_vec()));
}

#[test]
fn echo_mode_compresses_its_replies() {
    let server = Server::start(&["--echo"]);
    let (mut s, _) = upgrade(server.ws, "", OFFER);
    let text = json(5000);
    s.write_all(&client_frame_b0(0xc1, &deflate(text.as_bytes())))
        .unwrap();
    let (b0, p) = frame(&mut s);
    assert_eq!(b0, 0xc1);
    assert_eq!(inflate(&p), text.as_bytes());
    // An uncompressed message is echoed compressed as well: it is the server's choice.
    s.write_all(&client_frame(true, 0x1, text.as_bytes()))
        .unwrap();
    assert_eq!(next_message(&mut s), (true, text.into_bytes()));
}

#[test]
fn rsv1_without_the_extension_is_closed_with_1002() {
    let server = Server::start(&[]);
    let (mut s, _) = upgrade(server.ws, "", "");
    s.write_all(&client_frame_b0(0xc1, &deflate(b"hello")))
        .unwrap();
    assert_eq!(read_close_code(&mut s), Some(1002));
}

#[test]
fn a_compressed_control_frame_is_closed_with_1002() {
    let server = Server::start(&[]);
    let (mut s, _) = upgrade(server.ws, "", OFFER);
    s.write_all(&client_frame_b0(0xc9, b"")).unwrap();
    assert_eq!(read_close_code(&mut s), Some(1002));
}

#[test]
fn rsv1_on_a_continuation_frame_is_closed_with_1002() {
    let server = Server::start(&[]);
    let (mut s, _) = upgrade(server.ws, "", OFFER);
    let msg = deflate(br#"{"op":"ping"}"#);
    let mut bytes = client_frame_b0(0x41, &msg[..2]);
    bytes.extend(client_frame_b0(0xc0, &msg[2..]));
    s.write_all(&bytes).unwrap();
    assert_eq!(read_close_code(&mut s), Some(1002));
}

#[test]
fn rsv2_and_rsv3_are_closed_with_1002_even_with_the_extension() {
    let server = Server::start(&[]);
    for b0 in [0xa1u8, 0x91] {
        let (mut s, _) = upgrade(server.ws, "", OFFER);
        s.write_all(&client_frame_b0(b0, b"x")).unwrap();
        assert_eq!(read_close_code(&mut s), Some(1002), "{b0:#x}");
    }
}

#[test]
fn a_zip_bomb_is_closed_with_1009_and_the_server_goes_on() {
    let server = Server::start(&["--max-message", "65536"]);
    let (mut s, _) = upgrade(server.ws, "", OFFER);
    // 8 MiB of zeros in about 8 KiB.
    let bomb = deflate_with(
        &mut Compress::new(Compression::best(), false),
        &vec![0u8; 8 << 20],
    );
    assert!(bomb.len() < 16 << 10, "{}", bomb.len());
    s.write_all(&client_frame_b0(0xc2, &bomb)).unwrap();
    assert_eq!(read_close_code(&mut s), Some(1009));
    // Exactly the limit inflates and is handled.
    let (mut s, _) = upgrade(server.ws, "", OFFER);
    let at_limit = format!("{{\"op\":\"ping\",\"pad\":\"{}\"}}", "y".repeat(65536 - 22));
    assert_eq!(at_limit.len(), 65536);
    s.write_all(&client_frame_b0(0xc1, &deflate(at_limit.as_bytes())))
        .unwrap();
    assert_eq!(next_message(&mut s), (false, br#"{"op":"pong"}"#.to_vec()));
}

#[test]
fn a_client_that_keeps_its_context_is_closed_with_1007() {
    let server = Server::start(&[]);
    let (mut s, _) = upgrade(server.ws, "", OFFER);
    let mut c = Compress::new(Compression::new(6), false);
    let ping = br#"{"op":"ping","pad":"0123456789abcdefghijklmnopqrstuvwxyz"}"#;
    let first = deflate_with(&mut c, ping);
    // The same compressor again: the second message is a back-reference into the first.
    let second = deflate_with(&mut c, ping);
    assert!(second.len() < first.len() / 2);
    s.write_all(&client_frame_b0(0xc1, &first)).unwrap();
    assert_eq!(next_message(&mut s), (false, br#"{"op":"pong"}"#.to_vec()));
    s.write_all(&client_frame_b0(0xc1, &second)).unwrap();
    assert_eq!(read_close_code(&mut s), Some(1007));
}

#[test]
fn invalid_deflate_data_and_invalid_utf8_after_inflation_are_closed_with_1007() {
    let server = Server::start(&[]);
    let (mut s, _) = upgrade(server.ws, "", OFFER);
    s.write_all(&client_frame_b0(0xc1, &[0xff, 0xff, 0xff]))
        .unwrap();
    assert_eq!(read_close_code(&mut s), Some(1007));
    let (mut s, _) = upgrade(server.ws, "", OFFER);
    s.write_all(&client_frame_b0(0xc1, &deflate(&[b'a', 0xff, b'b'])))
        .unwrap();
    assert_eq!(read_close_code(&mut s), Some(1007));
}

/// Python `websockets` (its own permessage-deflate, on by default in its client):
/// pushes of a large JSON payload arrive intact, and its compressed messages are
/// understood.
const PY_CLIENT: &str = r#"
import asyncio, json, socket, sys
from websockets.asyncio.client import connect

async def main(url, host, port, payload):
    async with connect(url, max_size=1 << 20) as ws:
        ext = ws.response.headers.get("Sec-WebSocket-Extensions")
        # A join the client compresses (websockets compresses every message).
        await ws.send(json.dumps({"op": "join", "room": "py", "pad": "z" * 2000}))
        joined = json.loads(await ws.recv())
        s = socket.create_connection((host, int(port)))
        body = payload.encode()
        s.sendall(b"*3\r\n$7\r\nPUBLISH\r\n$2\r\npy\r\n$%d\r\n%s\r\n" % (len(body), body))
        reply = s.recv(64)
        got = await ws.recv()
        print(json.dumps({"ext": ext, "joined": joined, "reply": reply.decode(), "intact": got == payload}))

asyncio.run(main(*sys.argv[1:]))
"#;

#[test]
fn python_websockets_negotiates_and_receives_compressed_pushes_intact() {
    let server = Server::start(&[]);
    let payload = json(20_000);
    let written_before = server.info_u64("bytes_written");
    let out = Command::new(test_python())
        .args(["-c", PY_CLIENT, &server.url(""), "127.0.0.1"])
        .arg(server.control.port().to_string())
        .arg(&payload)
        .output()
        .expect("run the test Python (scripts/pyvenv.sh installs websockets)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let ext = v["ext"].as_str().unwrap_or_default().to_ascii_lowercase();
    assert!(ext.starts_with("permessage-deflate"), "{v}");
    assert!(ext.contains("server_no_context_takeover"), "{v}");
    assert_eq!(v["joined"]["op"], "joined", "{v}");
    assert_eq!(v["reply"], ":1\r\n", "{v}");
    assert_eq!(v["intact"], true, "{v}");
    // The push went out compressed: far fewer bytes than its 20 KB were written.
    let written = server.info_u64("bytes_written") - written_before;
    assert!(written < 20_000 / 2, "{written} bytes written");
}
