//! The JSON envelopes of the `wspush.v1` subprotocol (room push, SEND, BROADCAST),
//! each encoded once per message into a complete WebSocket text frame that every
//! recipient's outbox shares.
//!
//! Pure code: bytes in, one shared frame out. It must never produce invalid JSON or
//! invalid UTF-8 (a text frame's payload must be UTF-8, RFC 6455 §5.6): strings go
//! through serde_json's escaping, and a payload that is not UTF-8 travels as
//! `data_b64` (standard base64 with padding) instead of `data`.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::frame::{encode_header, OpCode};

/// Room the longest header needs in front of the body.
const HEADER_ROOM: usize = 10;

/// `{"room":…,"epoch":…,"offset":N,"data":…}` (or `"data_b64":…`) as a text frame.
pub fn room_frame(room: &str, pos_epoch: &str, offset: u64, payload: &[u8]) -> Arc<[u8]> {
    let mut out = start(room.len() + pos_epoch.len() + 20 + 40, payload);
    out.extend_from_slice(b"{\"room\":");
    push_str(&mut out, room);
    out.extend_from_slice(b",\"epoch\":");
    push_str(&mut out, pos_epoch);
    out.extend_from_slice(b",\"offset\":");
    out.extend_from_slice(offset.to_string().as_bytes());
    push_data(&mut out, payload);
    finish(out)
}

/// `{"user":…,"data":…}` (or `"data_b64":…`) as a text frame.
pub fn user_frame(user: &str, payload: &[u8]) -> Arc<[u8]> {
    let mut out = start(user.len() + 20, payload);
    out.extend_from_slice(b"{\"user\":");
    push_str(&mut out, user);
    push_data(&mut out, payload);
    finish(out)
}

/// `{"broadcast":true,"data":…}` (or `"data_b64":…`) as a text frame.
pub fn broadcast_frame(payload: &[u8]) -> Arc<[u8]> {
    let mut out = start(20, payload);
    out.extend_from_slice(b"{\"broadcast\":true");
    push_data(&mut out, payload);
    finish(out)
}

/// A buffer with header room in front, sized for the common case (payload escaped
/// without growth, or base64's 4/3) so that it rarely reallocates.
fn start(fields: usize, payload: &[u8]) -> Vec<u8> {
    let data = payload.len() / 3 * 4 + 4;
    let mut out = Vec::with_capacity(HEADER_ROOM + fields + 16 + data);
    out.resize(HEADER_ROOM, 0);
    out
}

/// Appends `s` as a JSON string literal.
fn push_str(out: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail and a &str always serialises.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Appends `,"data":<string>}` or, for a payload that is not UTF-8,
/// `,"data_b64":"<base64>"}`.
fn push_data(out: &mut Vec<u8>, payload: &[u8]) {
    match std::str::from_utf8(payload) {
        Ok(text) => {
            out.extend_from_slice(b",\"data\":");
            push_str(out, text);
        }
        Err(_) => {
            out.extend_from_slice(b",\"data_b64\":\"");
            let at = out.len();
            let len = base64::encoded_len(payload.len(), true).unwrap_or(0);
            out.resize(at + len, 0);
            let written = STANDARD.encode_slice(payload, &mut out[at..]).unwrap_or(0);
            out.truncate(at + written);
            out.push(b'"');
        }
    }
    out.push(b'}');
}

/// Writes the frame header just in front of the body and shares the frame.
fn finish(mut out: Vec<u8>) -> Arc<[u8]> {
    let body = out.len() - HEADER_ROOM;
    let mut header = [0u8; HEADER_ROOM];
    let n = encode_header(true, OpCode::Text, body, &mut header);
    let begin = HEADER_ROOM - n;
    out[begin..HEADER_ROOM].copy_from_slice(&header[..n]);
    Arc::from(&out[begin..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::frame::encode_frame;
    use serde_json::{json, Value};

    /// The frame's header checked against `encode_frame`, and its body parsed.
    fn body(frame: &[u8]) -> Value {
        let len = match frame[1] {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        let text = &frame[len..];
        assert_eq!(
            frame,
            &encode_frame(OpCode::Text, text)[..],
            "one text frame"
        );
        assert!(std::str::from_utf8(text).is_ok(), "text frames carry UTF-8");
        serde_json::from_slice(text).expect("valid JSON")
    }

    #[test]
    fn room_push_carries_room_epoch_offset_and_data() {
        let frame = room_frame("news", "00ff00ff00ff00ff", 42, b"hello");
        assert_eq!(
            body(&frame),
            json!({"room": "news", "epoch": "00ff00ff00ff00ff", "offset": 42, "data": "hello"})
        );
    }

    #[test]
    fn room_push_with_the_largest_offset() {
        let frame = room_frame("r", "e", u64::MAX, b"");
        assert_eq!(body(&frame)["offset"].as_u64(), Some(u64::MAX));
    }

    #[test]
    fn user_and_broadcast_pushes_carry_no_position() {
        assert_eq!(
            body(&user_frame("alice", b"hi")),
            json!({"user": "alice", "data": "hi"})
        );
        assert_eq!(
            body(&broadcast_frame(b"hi")),
            json!({"broadcast": true, "data": "hi"})
        );
    }

    #[test]
    fn utf8_payload_is_data_as_a_json_string() {
        let text = "héllo wörld — 日本 🎉";
        assert_eq!(body(&broadcast_frame(text.as_bytes()))["data"], json!(text));
    }

    #[test]
    fn quotes_backslashes_and_control_chars_are_escaped() {
        let text = "\"quoted\" \\ back\nnew\tline\r\u{0}\u{1}\u{1f}\u{7f}</script>";
        let frame = user_frame("a\"b\\c", text.as_bytes());
        let value = body(&frame);
        assert_eq!(value["data"], json!(text));
        assert_eq!(value["user"], json!("a\"b\\c"));
        // Raw control bytes never reach the wire.
        let header = if frame[1] == 126 { 4 } else { 2 };
        assert!(!frame[header..].iter().any(|&b| b < 0x20));
    }

    #[test]
    fn payload_that_is_json_stays_a_string() {
        let frame = broadcast_frame(br#"{"a":1}"#);
        assert_eq!(body(&frame)["data"], json!(r#"{"a":1}"#));
    }

    #[test]
    fn non_utf8_payload_is_data_b64_with_padding_and_no_data() {
        for payload in [
            &[0xffu8][..],
            &[0xff, 0xfe],
            &[0xc3, 0x28, 0x00, 0x80],
            b"ok\xe2\x82",
        ] {
            let frame = room_frame("r", "e", 1, payload);
            let value = body(&frame);
            assert!(value.get("data").is_none());
            let b64 = value["data_b64"].as_str().expect("string");
            assert_eq!(b64.len() % 4, 0, "padded");
            assert_eq!(STANDARD.decode(b64).expect("standard base64"), payload);
        }
    }

    #[test]
    fn empty_payload_is_an_empty_string() {
        assert_eq!(body(&broadcast_frame(b""))["data"], json!(""));
        assert_eq!(body(&user_frame("u", b""))["data"], json!(""));
    }

    #[test]
    fn bodies_over_125_and_65535_bytes_use_16_and_64_bit_lengths() {
        for (len, header) in [(50, 2), (200, 4), (65_000, 4), (70_000, 10)] {
            let payload = vec![b'x'; len];
            let frame = room_frame("r", "e", 7, &payload);
            let value = body(&frame);
            assert_eq!(value["data"].as_str().map(str::len), Some(len));
            let body_len = frame.len() - header;
            match header {
                2 => assert_eq!(frame[1] as usize, body_len),
                4 => assert_eq!(u16::from_be_bytes([frame[2], frame[3]]) as usize, body_len),
                _ => assert_eq!(
                    u64::from_be_bytes(frame[2..10].try_into().expect("8 bytes")) as usize,
                    body_len
                ),
            }
        }
        // A body of exactly 126 bytes is the first one with a 16-bit length.
        let fields = room_frame("r", "e", 7, b"").len() - 2;
        let frame = room_frame("r", "e", 7, &vec![b'x'; 126 - fields]);
        assert_eq!((frame[1], frame.len()), (126, 4 + 126));
    }

    #[test]
    fn binary_payload_large_enough_for_a_64_bit_length() {
        let payload = vec![0xffu8; 60_000];
        let frame = broadcast_frame(&payload);
        assert_eq!(frame[1], 127);
        let value = body(&frame);
        let b64 = value["data_b64"].as_str().expect("string");
        assert_eq!(STANDARD.decode(b64).expect("base64"), payload);
    }

    proptest::proptest! {
        #[test]
        fn any_payload_round_trips(
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            offset in proptest::num::u64::ANY,
        ) {
            let value = body(&room_frame("room", "0123456789abcdef", offset, &payload));
            proptest::prop_assert_eq!(value["offset"].as_u64(), Some(offset));
            let back = match std::str::from_utf8(&payload) {
                Ok(_) => value["data"].as_str().map(|s| s.as_bytes().to_vec()),
                Err(_) => value["data_b64"].as_str().and_then(|s| STANDARD.decode(s).ok()),
            };
            proptest::prop_assert_eq!(back, Some(payload));
        }
    }
}
