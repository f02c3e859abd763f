//! Frame-level rules of RFC 6455 §5 and §7 against the real binary: raw sockets
//! write exact (often invalid) frames; tungstenite, an independent codec, checks the
//! echo of well-formed messages. Each failure rule expects the Close code the RFC
//! names and then the server closing the TCP connection; a test never passes on a
//! connection that simply stays silent (reads time out and fail the test).

mod common;

use std::io::Write;
use std::net::TcpStream;

use common::*;
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::Message;

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONTINUATION: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xa;

/// Invalid UTF-8: valid text up to a UTF-16 surrogate (ED A0 80), Autobahn 6.3.1.
const INVALID_UTF8: &[u8] = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited";

/// An upgraded raw connection to `server`.
fn open(server: &Server) -> TcpStream {
    raw_upgrade(server.ws, "")
}

/// Writes `bytes` in one call.
fn send(s: &mut TcpStream, bytes: &[u8]) {
    s.write_all(bytes).expect("write");
}

/// The server must answer with a Close frame carrying `code`, then close TCP.
fn expect_failure(s: &mut TcpStream, code: u16) {
    assert_eq!(read_close_code(s), Some(code));
    read_until_server_closes(s);
}

/// A Close frame payload: code then reason bytes.
fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

/// A frame header with the mask bit and key but `len` chosen by the caller, so the
/// payload can be sent in pieces. The key is zero: the payload goes out as is.
fn masked_header(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
    let mut h = vec![(if fin { 0x80 } else { 0 }) | opcode];
    if len < 126 {
        h.push(0x80 | len as u8);
    } else if len <= 0xffff {
        h.push(0x80 | 126);
        h.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        h.push(0x80 | 127);
        h.extend_from_slice(&(len as u64).to_be_bytes());
    }
    h.extend_from_slice(&[0, 0, 0, 0]);
    h
}

#[test]
fn rejects_unmasked_client_frame_with_1002() {
    let server = Server::start(&["--echo"]);
    let mut s = open(&server);
    send(&mut s, &[0x81, 0x05, b'h', b'e', b'l', b'l', b'o']);
    expect_failure(&mut s, 1002);
    assert_info_eventually(&server, "protocol_error_closes", 1);
}

#[test]
fn rejects_reserved_bits_without_a_negotiated_extension_with_1002() {
    let server = Server::start(&["--echo"]);
    for rsv in [0x40u8, 0x20, 0x10] {
        let mut s = open(&server);
        let mut f = client_frame(true, TEXT, b"hello");
        f[0] |= rsv;
        send(&mut s, &f);
        expect_failure(&mut s, 1002);
    }
}

#[test]
fn rejects_reserved_opcodes_with_1002() {
    let server = Server::start(&["--echo"]);
    for opcode in [0x3u8, 0xb] {
        let mut s = open(&server);
        send(&mut s, &client_frame(true, opcode, b""));
        expect_failure(&mut s, 1002);
    }
}

#[test]
fn rejects_control_frame_with_payload_over_125_bytes_with_1002() {
    let server = Server::start(&["--echo"]);
    let mut s = open(&server);
    send(&mut s, &client_frame(true, PING, &[b'p'; 126]));
    expect_failure(&mut s, 1002);
}

#[test]
fn rejects_fragmented_control_frame_with_1002() {
    let server = Server::start(&["--echo"]);
    let mut s = open(&server);
    send(&mut s, &client_frame(false, PING, b"ping"));
    expect_failure(&mut s, 1002);
}

#[test]
fn rejects_continuation_without_a_message_in_progress_with_1002() {
    let server = Server::start(&["--echo"]);
    let mut s = open(&server);
    send(&mut s, &client_frame(true, CONTINUATION, b"orphan"));
    expect_failure(&mut s, 1002);
}

#[test]
fn rejects_new_data_frame_inside_a_fragmented_message_with_1002() {
    let server = Server::start(&["--echo"]);
    for opcode in [TEXT, BINARY] {
        let mut s = open(&server);
        let mut bytes = client_frame(false, TEXT, b"first half");
        bytes.extend(client_frame(true, opcode, b"not a continuation"));
        send(&mut s, &bytes);
        expect_failure(&mut s, 1002);
    }
}

#[test]
fn rejects_invalid_utf8_text_with_1007() {
    let server = Server::start(&["--echo"]);
    let mut s = open(&server);
    send(&mut s, &client_frame(true, TEXT, INVALID_UTF8));
    expect_failure(&mut s, 1007);
}

#[test]
fn rejects_text_invalid_across_fragment_boundaries_with_1007() {
    let server = Server::start(&["--echo"]);
    // Each fragment alone could be the edge of valid text; together they are not:
    // E1 BD starts a three-byte sequence that `(` cannot continue.
    let mut s = open(&server);
    let mut bytes = client_frame(false, TEXT, b"\xce\xba\xe1\xbd");
    bytes.extend(client_frame(true, CONTINUATION, b"(rest"));
    send(&mut s, &bytes);
    expect_failure(&mut s, 1007);
    // A message that ends inside a sequence is invalid even if every fragment so far
    // could still be completed.
    let mut s = open(&server);
    let mut bytes = client_frame(false, TEXT, b"abc\xe1");
    bytes.extend(client_frame(true, CONTINUATION, b"\xbd"));
    send(&mut s, &bytes);
    expect_failure(&mut s, 1007);
}

#[test]
fn accepts_code_point_split_across_fragments() {
    let server = Server::start(&["--echo"]);
    let mut s = open(&server);
    let mut bytes = client_frame(false, TEXT, b"\xce");
    bytes.extend(client_frame(false, CONTINUATION, b"\xba\xe1"));
    bytes.extend(client_frame(true, CONTINUATION, b"\xbd\xb9"));
    send(&mut s, &bytes);
    expect_echo(&mut s, TEXT, b"\xce\xba\xe1\xbd\xb9");
}

#[test]
fn fails_fast_on_invalid_utf8_before_the_text_frame_is_complete_with_1007() {
    let server = Server::start(&["--echo"]);
    // A 4000-byte text frame whose first half holds the invalid byte; the second half
    // is never sent, so only a server that checks as bytes arrive can answer.
    let mut s = open(&server);
    let mut first_half = masked_header(true, TEXT, 4000);
    let mut text = vec![b'a'; 2000];
    text[1000] = 0xff;
    first_half.extend_from_slice(&text);
    send(&mut s, &first_half);
    expect_failure(&mut s, 1007);
    // The same inside a later fragment of a fragmented message.
    let mut s = open(&server);
    let mut bytes = client_frame(false, TEXT, b"valid start ");
    bytes.extend(masked_header(true, CONTINUATION, 4000));
    bytes.extend_from_slice(&text);
    send(&mut s, &bytes);
    expect_failure(&mut s, 1007);
}

#[test]
fn rejects_single_frame_message_over_max_message_with_1009() {
    let server = Server::start(&["--echo", "--max-message", "1000"]);
    let mut s = open(&server);
    send(&mut s, &client_frame(true, BINARY, &[7; 1001]));
    expect_failure(&mut s, 1009);
}

#[test]
fn rejects_fragmented_message_whose_total_exceeds_max_message_with_1009() {
    let server = Server::start(&["--echo", "--max-message", "1000"]);
    let mut s = open(&server);
    let mut bytes = client_frame(false, TEXT, &[b'a'; 400]);
    bytes.extend(client_frame(false, CONTINUATION, &[b'b'; 400]));
    bytes.extend(client_frame(true, CONTINUATION, &[b'c'; 400]));
    send(&mut s, &bytes);
    expect_failure(&mut s, 1009);
}

#[test]
fn answers_ping_with_pong_carrying_the_same_payload() {
    let server = Server::start(&["--echo"]);
    let mut s = open(&server);
    for payload in [&b""[..], b"are you there?", &[0xa5; 125]] {
        send(&mut s, &client_frame(true, PING, payload));
        let (fin, op, got) = read_server_frame(&mut s).expect("pong");
        assert_eq!((fin, op), (true, PONG));
        assert_eq!(got, payload);
    }
}

#[test]
fn ignores_unsolicited_pong() {
    let server = Server::start(&["--echo"]);
    let mut s = open(&server);
    let mut bytes = client_frame(true, PONG, b"unsolicited");
    bytes.extend(client_frame(true, TEXT, b"still here"));
    send(&mut s, &bytes);
    expect_echo(&mut s, TEXT, b"still here");
}

#[test]
fn accepts_control_frames_interleaved_in_a_fragmented_message() {
    let server = Server::start(&["--echo"]);
    let mut s = open(&server);
    let mut bytes = client_frame(false, TEXT, b"Hel");
    bytes.extend(client_frame(true, PING, b"between"));
    bytes.extend(client_frame(true, PONG, b"ignored"));
    bytes.extend(client_frame(true, CONTINUATION, b"lo"));
    send(&mut s, &bytes);
    let mut frames = vec![
        read_server_frame(&mut s).expect("first frame"),
        read_server_frame(&mut s).expect("second frame"),
    ];
    frames.sort_by_key(|f| f.1);
    assert_eq!(
        frames,
        [
            (true, TEXT, b"Hello".to_vec()),
            (true, PONG, b"between".to_vec())
        ]
    );
}

#[test]
fn echoes_close_1000_and_then_closes_tcp() {
    let server = Server::start(&["--echo"]);
    let mut s = open(&server);
    send(
        &mut s,
        &client_frame(true, CLOSE, &close_payload(1000, b"bye")),
    );
    let (fin, op, payload) = read_server_frame(&mut s).expect("close reply");
    assert_eq!((fin, op), (true, CLOSE));
    assert_eq!(payload[..2], 1000u16.to_be_bytes());
    assert!(std::str::from_utf8(&payload[2..]).is_ok());
    assert_eq!(read_until_server_closes(&mut s), b"");
}

#[test]
fn answers_empty_close_with_close_and_then_closes_tcp() {
    let server = Server::start(&["--echo"]);
    let mut s = open(&server);
    send(&mut s, &client_frame(true, CLOSE, b""));
    let (fin, op, payload) = read_server_frame(&mut s).expect("close reply");
    assert_eq!((fin, op), (true, CLOSE));
    // §5.5.1: with no code received, the reply carries none, or 1000.
    assert!(payload.is_empty() || payload[..2] == 1000u16.to_be_bytes());
    assert_eq!(read_until_server_closes(&mut s), b"");
}

#[test]
fn rejects_close_with_code_not_allowed_on_the_wire_with_1002() {
    let server = Server::start(&["--echo"]);
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
        let mut s = open(&server);
        send(
            &mut s,
            &client_frame(true, CLOSE, &close_payload(code, b"")),
        );
        assert_eq!(read_close_code(&mut s), Some(1002), "close code {code}");
        read_until_server_closes(&mut s);
    }
}

#[test]
fn rejects_close_with_one_byte_payload_with_1002() {
    let server = Server::start(&["--echo"]);
    let mut s = open(&server);
    send(&mut s, &client_frame(true, CLOSE, &[0x03]));
    expect_failure(&mut s, 1002);
}

#[test]
fn rejects_close_reason_that_is_not_utf8_with_1007() {
    let server = Server::start(&["--echo"]);
    let mut s = open(&server);
    send(
        &mut s,
        &client_frame(true, CLOSE, &close_payload(1000, INVALID_UTF8)),
    );
    expect_failure(&mut s, 1007);
}

// ---- echo through tungstenite ------------------------------------------------

/// The next message, which must be data.
fn echo_of(ws: &mut Ws) -> Message {
    next_data(ws)
}

/// The Close code a tungstenite client receives next.
fn close_code_of(ws: &mut Ws) -> Option<CloseCode> {
    loop {
        match ws.read() {
            Ok(Message::Close(frame)) => return frame.map(|f| f.code),
            Ok(_) => {}
            Err(e) => panic!("expected a Close frame, got {e}"),
        }
    }
}

#[test]
fn echoes_text_message() {
    let server = Server::start(&["--echo"]);
    let mut ws = ws_connect(&server.url(""));
    let text = "héllo, wörld — 😀";
    ws.send(Message::text(text)).unwrap();
    assert_eq!(echo_of(&mut ws), Message::text(text));
}

#[test]
fn echoes_binary_message() {
    let server = Server::start(&["--echo", "--max-message", "128KiB"]);
    let mut ws = ws_connect(&server.url(""));
    // Every byte value, over the 64 KiB a 16-bit length can hold (64-bit length form).
    let bytes: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    ws.send(Message::binary(bytes.clone())).unwrap();
    assert_eq!(echo_of(&mut ws), Message::binary(bytes));
}

#[test]
fn echoes_fragmented_message_as_one_message() {
    let server = Server::start(&["--echo"]);
    let mut ws = ws_connect(&server.url(""));
    let parts: [&[u8]; 3] = [b"frag", "mé".as_bytes(), b"nted"];
    for (i, part) in parts.iter().enumerate() {
        let op = if i == 0 { Data::Text } else { Data::Continue };
        let fin = i + 1 == parts.len();
        ws.write(Message::Frame(Frame::message(
            part.to_vec(),
            OpCode::Data(op),
            fin,
        )))
        .unwrap();
    }
    ws.flush().unwrap();
    assert_eq!(echo_of(&mut ws), Message::text("fragménted"));
    for (i, part) in parts.iter().enumerate() {
        let op = if i == 0 { Data::Binary } else { Data::Continue };
        let fin = i + 1 == parts.len();
        ws.write(Message::Frame(Frame::message(
            part.to_vec(),
            OpCode::Data(op),
            fin,
        )))
        .unwrap();
    }
    ws.flush().unwrap();
    assert_eq!(
        echo_of(&mut ws),
        Message::binary("fragménted".as_bytes().to_vec())
    );
}

#[test]
fn echoes_message_of_exactly_max_message_and_closes_one_byte_more_with_1009() {
    const MIB: usize = 1 << 20;
    let server = Server::start(&["--echo", "--max-message", "1MiB"]);
    let mut ws = ws_connect(&server.url(""));
    let exact: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(exact.clone())).unwrap();
    assert_eq!(echo_of(&mut ws), Message::binary(exact));

    let mut ws = ws_connect(&server.url(""));
    // The server may close before it has read the whole frame; a write error then is
    // fine, the Close frame is what is checked.
    let _ = ws.send(Message::binary(vec![b'x'; MIB + 1]));
    assert_eq!(close_code_of(&mut ws), Some(CloseCode::Size));
}

/// Reads one whole server frame and checks it is `op` carrying `payload`.
fn expect_echo(s: &mut std::net::TcpStream, op: u8, payload: impl AsRef<[u8]>) {
    let (fin, got_op, got) = read_server_frame(s).expect("echo");
    assert_eq!((fin, got_op), (true, op));
    assert_eq!(got, payload.as_ref());
}
