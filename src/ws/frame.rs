//! WebSocket frame headers (RFC 6455 §5.2): decoding client frames, encoding
//! server frames.
//!
//! Only headers are parsed here; payload bytes stay wherever the reactor read
//! them and are unmasked in place (`mask.rs`). Decoding is two-phase in the
//! mio style: `Ok(None)` means "not all header bytes are here yet", a normal
//! case, never an error. Every protocol violation that can be seen in the first
//! two bytes is reported from those two bytes, so a bad client is failed before
//! it sends more. Must never panic on any input, and never allocate on decode.

use super::close::CloseCode;

/// Frame opcodes defined by RFC 6455 §5.2; every other value is reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    /// The opcode for the low nibble `b`, or `None` if it is reserved (3–7, 0xB–0xF)
    /// or does not fit in a nibble.
    pub fn from_u8(b: u8) -> Option<Self> {
        match b {
            0x0 => Some(Self::Continuation),
            0x1 => Some(Self::Text),
            0x2 => Some(Self::Binary),
            0x8 => Some(Self::Close),
            0x9 => Some(Self::Ping),
            0xa => Some(Self::Pong),
            _ => None,
        }
    }

    pub fn as_u8(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xa,
        }
    }

    /// Close, Ping and Pong: at most 125 bytes, never fragmented (§5.5).
    pub fn is_control(self) -> bool {
        self.as_u8() & 0x8 != 0
    }
}

/// The largest payload a control frame may carry (§5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// The longest frame header: 2 bytes, 8 bytes of extended length, 4 bytes of key.
pub const MAX_HEADER_LEN: usize = 14;

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Last frame of its message.
    pub fin: bool,
    pub opcode: OpCode,
    /// The masking key (client frames are always masked).
    pub mask: [u8; 4],
    /// Payload bytes that follow the header.
    pub payload_len: u64,
    /// RSV1: the first frame of a permessage-deflate message (only ever set when
    /// the extension was negotiated; see `decode_client_header_with`).
    pub compressed: bool,
}

/// Why a client frame header is a protocol violation. Every one closes with 1002.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// RSV2 or RSV3 set, or RSV1 without permessage-deflate, or on a control or
    /// continuation frame (RFC 7692 §6).
    ReservedBitsSet,
    /// A reserved opcode (the value is the opcode nibble).
    UnknownOpcode(u8),
    /// Client frames must be masked (§5.1).
    Unmasked,
    /// A control frame with more than 125 payload bytes.
    ControlTooLong,
    /// A control frame without FIN.
    ControlFragmented,
    /// 64-bit length with the most significant bit set (§5.2).
    LengthOverflow,
}

impl FrameError {
    /// The close code to fail the connection with.
    pub fn close_code(self) -> CloseCode {
        CloseCode::PROTOCOL_ERROR
    }
}

/// Decodes a CLIENT frame header of a connection without permessage-deflate (must
/// be masked, no RSV bits). `Ok(None)` = need more bytes. `Ok(Some((header, header_len)))`.
/// Checks in this order: RSV, opcode, control-frame rules, mask, length.
///
/// Non-minimal length encodings (e.g. 5 in the 16-bit form) are accepted: the RFC
/// says a sender MUST use the minimal form, but refusing costs a check per frame
/// and protects nothing.
pub fn decode_client_header(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, FrameError> {
    decode_client_header_with(buf, false)
}

/// `decode_client_header` for a connection that negotiated permessage-deflate
/// (`deflate`): RSV1 is then allowed on the first frame of a data message, i.e. on
/// Text and Binary frames, and nowhere else.
pub fn decode_client_header_with(
    buf: &[u8],
    deflate: bool,
) -> Result<Option<(FrameHeader, usize)>, FrameError> {
    let [b0, b1, rest @ ..] = buf else {
        return Ok(None);
    };
    let compressed = b0 & 0x40 != 0;
    if b0 & 0x30 != 0 || (compressed && !deflate) {
        return Err(FrameError::ReservedBitsSet);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = OpCode::from_u8(b0 & 0x0f).ok_or(FrameError::UnknownOpcode(b0 & 0x0f))?;
    if compressed && !matches!(opcode, OpCode::Text | OpCode::Binary) {
        return Err(FrameError::ReservedBitsSet);
    }
    let len7 = b1 & 0x7f;
    if opcode.is_control() {
        if !fin {
            return Err(FrameError::ControlFragmented);
        }
        if usize::from(len7) > MAX_CONTROL_PAYLOAD {
            return Err(FrameError::ControlTooLong);
        }
    }
    if b1 & 0x80 == 0 {
        return Err(FrameError::Unmasked);
    }
    let (payload_len, rest, ext_len) = match len7 {
        126 => {
            let [a, b, rest @ ..] = rest else {
                return Ok(None);
            };
            (u64::from(u16::from_be_bytes([*a, *b])), rest, 2)
        }
        127 => {
            let Some((len, rest)) = rest.split_first_chunk::<8>() else {
                return Ok(None);
            };
            let len = u64::from_be_bytes(*len);
            if len >> 63 != 0 {
                return Err(FrameError::LengthOverflow);
            }
            (len, rest, 8)
        }
        n => (u64::from(n), rest, 0),
    };
    let Some((mask, _)) = rest.split_first_chunk::<4>() else {
        return Ok(None);
    };
    let header = FrameHeader {
        fin,
        opcode,
        mask: *mask,
        payload_len,
        compressed,
    };
    Ok(Some((header, 2 + ext_len + 4)))
}

/// Writes a SERVER (unmasked) frame header into `out`, returns its length (2, 4 or 10).
/// Always the minimal length form.
pub fn encode_header(fin: bool, opcode: OpCode, payload_len: usize, out: &mut [u8; 10]) -> usize {
    out[0] = (u8::from(fin) << 7) | opcode.as_u8();
    if payload_len <= 125 {
        out[1] = payload_len as u8;
        2
    } else if let Ok(len) = u16::try_from(payload_len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&len.to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        10
    }
}

/// A complete server frame (FIN set): header + payload, in one allocation of the
/// exact size. The caller keeps control payloads within 125 bytes.
pub fn encode_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 10];
    let header_len = encode_header(true, opcode, payload.len(), &mut header);
    let mut frame = Vec::with_capacity(header_len + payload.len());
    frame.extend_from_slice(&header[..header_len]);
    frame.extend_from_slice(payload);
    frame
}

/// A complete server Close frame (code + reason; reason truncated at a char boundary
/// so the payload stays ≤ 125 bytes).
pub fn encode_close(code: CloseCode, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    let mut frame = Vec::with_capacity(4 + reason.len());
    frame.push(0x80 | OpCode::Close.as_u8());
    frame.push((2 + reason.len()) as u8);
    frame.extend_from_slice(&code.0.to_be_bytes());
    frame.extend_from_slice(reason);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::mask::apply_mask;
    use proptest::prelude::*;

    fn decode(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, FrameError> {
        decode_client_header(buf)
    }

    #[test]
    fn encodes_rfc_5_7_unmasked_hello_text_frame() {
        assert_eq!(
            encode_frame(OpCode::Text, b"Hello"),
            [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]
        );
    }

    #[test]
    fn decodes_rfc_5_7_masked_hello_text_frame() {
        let mut frame = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let (h, n) = decode(&frame).unwrap().unwrap();
        assert_eq!(
            h,
            FrameHeader {
                fin: true,
                opcode: OpCode::Text,
                mask: [0x37, 0xfa, 0x21, 0x3d],
                payload_len: 5,
                compressed: false,
            }
        );
        assert_eq!(n, 6);
        apply_mask(&mut frame[n..], h.mask, 0);
        assert_eq!(&frame[n..], b"Hello");
    }

    #[test]
    fn rejects_rfc_5_7_unmasked_fragment_sent_by_a_client() {
        // "Hel" + "lo" fragments from §5.7 are server frames: a client may not send them.
        assert_eq!(
            decode(&[0x01, 0x03, 0x48, 0x65, 0x6c]),
            Err(FrameError::Unmasked)
        );
    }

    #[test]
    fn encodes_rfc_5_7_unmasked_ping() {
        assert_eq!(
            encode_frame(OpCode::Ping, b"Hello"),
            [0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]
        );
    }

    #[test]
    fn decodes_rfc_5_7_masked_pong() {
        let frame = [
            0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let (h, n) = decode(&frame).unwrap().unwrap();
        assert_eq!(
            (h.opcode, h.fin, h.payload_len, n),
            (OpCode::Pong, true, 5, 6)
        );
    }

    #[test]
    fn encodes_rfc_5_7_256_byte_binary_header_with_16_bit_length() {
        let frame = encode_frame(OpCode::Binary, &[0u8; 256]);
        assert_eq!(&frame[..4], [0x82, 0x7e, 0x01, 0x00]);
        assert_eq!(frame.len(), 4 + 256);
        assert_eq!(frame.capacity(), 4 + 256);
    }

    #[test]
    fn encodes_rfc_5_7_64_kib_binary_header_with_64_bit_length() {
        let frame = encode_frame(OpCode::Binary, &vec![0u8; 65536]);
        assert_eq!(
            &frame[..10],
            [0x82, 0x7f, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00]
        );
        assert_eq!(frame.len(), 10 + 65536);
    }

    #[test]
    fn encodes_minimal_length_at_each_boundary() {
        let mut out = [0u8; 10];
        assert_eq!(encode_header(true, OpCode::Binary, 125, &mut out), 2);
        assert_eq!(out[1], 125);
        assert_eq!(encode_header(true, OpCode::Binary, 126, &mut out), 4);
        assert_eq!(out[..4], [0x82, 126, 0, 126]);
        assert_eq!(encode_header(true, OpCode::Binary, 65535, &mut out), 4);
        assert_eq!(out[..4], [0x82, 126, 0xff, 0xff]);
        assert_eq!(encode_header(false, OpCode::Text, 65536, &mut out), 10);
        assert_eq!(out[..10], [0x01, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    }

    #[test]
    fn decodes_rfc_5_7_masked_256_and_64_kib_headers() {
        let h16 = [0x82, 0xfe, 0x01, 0x00, 1, 2, 3, 4];
        let (h, n) = decode(&h16).unwrap().unwrap();
        assert_eq!((h.payload_len, n, h.mask), (256, 8, [1, 2, 3, 4]));
        let h64 = [0x82, 0xff, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4];
        let (h, n) = decode(&h64).unwrap().unwrap();
        assert_eq!((h.payload_len, n), (65536, 14));
    }

    #[test]
    fn accepts_non_minimal_client_length_encoding() {
        let (h, n) = decode(&[0x81, 0xfe, 0x00, 0x05, 1, 2, 3, 4])
            .unwrap()
            .unwrap();
        assert_eq!((h.payload_len, n), (5, 8));
        let (h, n) = decode(&[0x81, 0xff, 0, 0, 0, 0, 0, 0, 0, 5, 1, 2, 3, 4])
            .unwrap()
            .unwrap();
        assert_eq!((h.payload_len, n), (5, 14));
    }

    #[test]
    fn needs_more_bytes_until_the_whole_header_arrived() {
        let full = [0x82, 0xff, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4];
        for cut in 0..full.len() {
            assert_eq!(decode(&full[..cut]), Ok(None), "cut at {cut}");
        }
        assert!(decode(&full).unwrap().is_some());
    }

    #[test]
    fn rejects_reserved_bits_with_1002() {
        for rsv in [0x40u8, 0x20, 0x10, 0x70] {
            let err = decode(&[0x81 | rsv, 0x80]).unwrap_err();
            assert_eq!(err, FrameError::ReservedBitsSet);
            assert_eq!(err.close_code(), CloseCode::PROTOCOL_ERROR);
        }
    }

    #[test]
    fn rsv1_is_allowed_only_on_first_data_frames_with_permessage_deflate() {
        let (h, _) = decode_client_header_with(&[0xc1, 0x80, 1, 2, 3, 4], true)
            .unwrap()
            .unwrap();
        assert!(h.compressed && h.opcode == OpCode::Text);
        let (h, _) = decode_client_header_with(&[0x42, 0x80, 1, 2, 3, 4], true)
            .unwrap()
            .unwrap();
        assert!(h.compressed && h.opcode == OpCode::Binary && !h.fin);
        // Continuation, Close, Ping, Pong with RSV1; RSV2 and RSV3 whatever was agreed.
        for b0 in [0xc0u8, 0xc8, 0xc9, 0xca, 0xa1, 0x91] {
            assert_eq!(
                decode_client_header_with(&[b0, 0x80], true),
                Err(FrameError::ReservedBitsSet),
                "{b0:#x}"
            );
        }
        assert!(
            !decode_client_header_with(&[0x81, 0x80, 1, 2, 3, 4], true)
                .unwrap()
                .unwrap()
                .0
                .compressed
        );
    }

    #[test]
    fn rejects_reserved_opcodes_with_1002() {
        for op in [3u8, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf] {
            let err = decode(&[0x80 | op, 0x80]).unwrap_err();
            assert_eq!(err, FrameError::UnknownOpcode(op));
            assert_eq!(err.close_code(), CloseCode::PROTOCOL_ERROR);
        }
    }

    #[test]
    fn rejects_unmasked_client_frame_with_1002() {
        let err = decode(&[0x81, 0x05, b'H', b'e', b'l', b'l', b'o']).unwrap_err();
        assert_eq!(err, FrameError::Unmasked);
        assert_eq!(err.close_code(), CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn rejects_control_frame_over_125_bytes_with_1002() {
        assert_eq!(decode(&[0x89, 0xfe]), Err(FrameError::ControlTooLong));
        assert_eq!(decode(&[0x88, 0xff]), Err(FrameError::ControlTooLong));
        assert!(decode(&[0x89, 0xfd, 1, 2, 3, 4]).unwrap().is_some());
    }

    #[test]
    fn rejects_fragmented_control_frame_with_1002() {
        for op in [0x8u8, 0x9, 0xa] {
            assert_eq!(decode(&[op, 0x80]), Err(FrameError::ControlFragmented));
        }
    }

    #[test]
    fn rejects_64_bit_length_with_most_significant_bit_set() {
        let buf = [0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
        assert_eq!(decode(&buf), Err(FrameError::LengthOverflow));
    }

    #[test]
    fn checks_rsv_before_opcode_before_control_rules_before_mask() {
        // RSV set and reserved opcode: RSV wins.
        assert_eq!(decode(&[0xc3, 0x00]), Err(FrameError::ReservedBitsSet));
        // Reserved opcode and unmasked: opcode wins.
        assert_eq!(decode(&[0x83, 0x00]), Err(FrameError::UnknownOpcode(3)));
        // Fragmented ping, unmasked: control rule wins.
        assert_eq!(decode(&[0x09, 0x00]), Err(FrameError::ControlFragmented));
    }

    #[test]
    fn decodes_continuation_frame_without_fin() {
        let (h, _) = decode(&[0x00, 0x83, 9, 9, 9, 9]).unwrap().unwrap();
        assert_eq!(
            (h.fin, h.opcode, h.payload_len),
            (false, OpCode::Continuation, 3)
        );
    }

    #[test]
    fn opcode_round_trips_through_u8() {
        for b in 0u8..=255 {
            if let Some(op) = OpCode::from_u8(b) {
                assert_eq!(op.as_u8(), b);
                assert_eq!(op.is_control(), b >= 8);
            }
        }
    }

    #[test]
    fn encodes_close_with_code_and_reason() {
        assert_eq!(
            encode_close(CloseCode::NORMAL, "bye"),
            [0x88, 0x05, 0x03, 0xe8, b'b', b'y', b'e']
        );
        assert_eq!(
            encode_close(CloseCode::KICKED, ""),
            [0x88, 0x02, 0x0f, 0xa0]
        );
    }

    #[test]
    fn truncates_close_reason_at_a_char_boundary_within_125_bytes() {
        // 62 two-byte characters = 124 bytes; only 61 (122 bytes) fit after the code.
        let reason = "\u{e9}".repeat(62);
        let frame = encode_close(CloseCode::GOING_AWAY, &reason);
        assert_eq!(frame[1], 2 + 122);
        assert_eq!(frame.len(), 2 + 2 + 122);
        assert!(std::str::from_utf8(&frame[4..]).is_ok());
        let ascii = "x".repeat(300);
        assert_eq!(encode_close(CloseCode::NORMAL, &ascii)[1], 125);
    }

    fn any_opcode() -> impl Strategy<Value = OpCode> {
        prop_oneof![
            Just(OpCode::Continuation),
            Just(OpCode::Text),
            Just(OpCode::Binary),
            Just(OpCode::Close),
            Just(OpCode::Ping),
            Just(OpCode::Pong),
        ]
    }

    proptest! {
        #[test]
        fn encoded_header_decodes_back_once_masked(
            fin in any::<bool>(),
            opcode in any_opcode(),
            len in prop_oneof![0usize..=130, 65530usize..=65540, 0usize..=(1 << 40)],
            key in any::<[u8; 4]>(),
        ) {
            let fin = fin || opcode.is_control();
            let len = if opcode.is_control() { len % 126 } else { len };
            let mut out = [0u8; 10];
            let n = encode_header(fin, opcode, len, &mut out);
            let mut wire = out[..n].to_vec();
            wire[1] |= 0x80;
            wire.extend_from_slice(&key);
            let (h, hn) = decode_client_header(&wire).unwrap().unwrap();
            prop_assert_eq!(hn, n + 4);
            prop_assert_eq!(h, FrameHeader { fin, opcode, mask: key, payload_len: len as u64, compressed: false });
        }

        #[test]
        fn agrees_with_tungstenite_on_client_and_server_headers(
            fin in any::<bool>(),
            opcode in any_opcode(),
            len in prop_oneof![0u64..=130, 65530u64..=65540, 0u64..=(1 << 40)],
            key in any::<[u8; 4]>(),
        ) {
            use tungstenite::protocol::frame::FrameHeader as TFrameHeader;
            let fin = fin || opcode.is_control();
            let len = if opcode.is_control() { len % 126 } else { len };
            let theirs = TFrameHeader {
                is_final: fin,
                opcode: opcode.as_u8().into(),
                mask: Some(key),
                ..TFrameHeader::default()
            };
            let mut client = Vec::new();
            theirs.format(len, &mut client).unwrap();
            let (ours, n) = decode_client_header(&client).unwrap().unwrap();
            prop_assert_eq!(n, client.len());
            prop_assert_eq!(ours, FrameHeader { fin, opcode, mask: key, payload_len: len, compressed: false });

            let mut out = [0u8; 10];
            let n = encode_header(fin, opcode, len as usize, &mut out);
            let mut cursor = std::io::Cursor::new(&out[..n]);
            let (parsed, parsed_len) = TFrameHeader::parse(&mut cursor).unwrap().unwrap();
            prop_assert_eq!(parsed_len, len);
            prop_assert_eq!(parsed, TFrameHeader { mask: None, ..theirs });
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..20)) {
            if let Ok(Some((_, n))) = decode_client_header(&bytes) {
                prop_assert!(n <= bytes.len() && n <= MAX_HEADER_LEN);
            }
        }

        #[test]
        fn close_frame_is_always_a_valid_control_frame(code in any::<u16>(), reason in "\\PC{0,80}") {
            let frame = encode_close(CloseCode(code), &reason);
            prop_assert!(frame.len() <= 2 + MAX_CONTROL_PAYLOAD);
            prop_assert_eq!(usize::from(frame[1]), frame.len() - 2);
            prop_assert!(reason.as_bytes().starts_with(&frame[4..]));
        }
    }
}
