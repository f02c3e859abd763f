//! The reactor's frame reader must not care how the bytes are cut: a stream of frames
//! (fragmented text with multi-byte characters split across fragments, binary, pings
//! in between) delivered in arbitrary pieces, each read separately by the server,
//! echoes exactly as if it came in one piece.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use proptest::prelude::*;

/// Client frames for `messages`, each split into `parts` fragments, a ping after the
/// first fragment of every message.
fn client_frames(messages: &[(u8, Vec<u8>)], parts: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for (op, payload) in messages {
        let n = parts.clamp(1, payload.len().max(1));
        let step = payload.len().div_ceil(n).max(1);
        let pieces: Vec<&[u8]> = if payload.is_empty() {
            vec![&payload[..]]
        } else {
            payload.chunks(step).collect()
        };
        for (i, piece) in pieces.iter().enumerate() {
            let opcode = if i == 0 { *op } else { 0 };
            out.extend(client_frame(i + 1 == pieces.len(), opcode, piece));
            if i == 0 {
                out.extend(client_frame(true, 9, b"p"));
            }
        }
    }
    out
}

fn send_in_pieces(s: &mut TcpStream, bytes: &[u8], cuts: &[usize]) {
    let mut at = 0;
    for &c in cuts {
        let end = (at + c).min(bytes.len());
        if end > at {
            s.write_all(&bytes[at..end]).unwrap();
            s.flush().unwrap();
            // Give the server a chance to read this piece on its own.
            std::thread::sleep(Duration::from_millis(1));
        }
        at = end;
    }
    s.write_all(&bytes[at..]).unwrap();
}

fn message() -> impl Strategy<Value = (u8, Vec<u8>)> {
    prop_oneof![
        "[a-zé€😀 ]{0,300}".prop_map(|t| (1u8, t.into_bytes())),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(|b| (2u8, b)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn echo_is_independent_of_how_the_stream_is_cut(
        messages in proptest::collection::vec(message(), 1..6),
        parts in 1usize..5,
        cuts in proptest::collection::vec(1usize..40, 0..30),
    ) {
        let server = Server::start(&["--echo", "--threads", "1"]);
        let mut s = raw_upgrade(server.ws, "");
        s.set_nodelay(true).unwrap();
        let bytes = client_frames(&messages, parts);
        send_in_pieces(&mut s, &bytes, &cuts);
        let mut got = Vec::new();
        while got.len() < messages.len() {
            let (fin, op, payload) = read_server_frame(&mut s).expect("echo frame");
            prop_assert!(fin, "the server echoes whole messages");
            match op {
                0xA => prop_assert_eq!(payload, b"p".to_vec()),
                1 | 2 => got.push((op, payload)),
                other => prop_assert!(false, "unexpected opcode {}", other),
            }
        }
        prop_assert_eq!(got, messages);
    }
}
