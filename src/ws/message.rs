//! Message assembly (RFC 6455 §5.4–§5.6, §8.1): client frames in, complete messages
//! and control frames out, or a typed error that names its close code.
//!
//! The reactor hands in whatever bytes it holds for a connection; `Assembler::next`
//! consumes whole frames from the front, unmasks them in place and yields one `Item`
//! at a time. An unfragmented message is yielded as a slice of the input (no copy);
//! only a fragmented one is gathered in the assembler's own buffer. Bytes of an
//! incomplete frame stay with the caller, but a text frame's bytes are unmasked and
//! UTF-8 checked as they arrive, so invalid text fails at its first bad byte rather
//! than when the frame ends (`scanned` remembers how far). Pure code: no I/O, never
//! panics whatever the bytes, and owns no heap memory unless a fragmented message is
//! in progress.
//!
//! permessage-deflate (`next_with(.., deflate: true)`): a message whose first frame
//! has RSV1 is gathered compressed and yielded as `Item::Compressed`, for the caller
//! to inflate (`ws::deflate`) and then check as UTF-8; its compressed size is bounded
//! by `compressed_limit`, and the inflated size by the message limit.

use std::ops::Deref;

use super::close::CloseCode;
use super::frame::{decode_client_header_with, FrameError, OpCode};
use super::mask::apply_mask;
use super::utf8::Utf8Validator;

/// One connection's message state between reads.
#[derive(Debug, Default)]
pub struct Assembler {
    /// Payload bytes of the incomplete frame at the front of the caller's bytes that
    /// are already unmasked (and UTF-8 checked, for text).
    scanned: usize,
    /// Opcode (Text or Binary) of the fragmented message in progress.
    message: Option<OpCode>,
    /// Payload of the fragmented message so far.
    data: Vec<u8>,
    /// UTF-8 state of the text message in progress.
    utf8: Utf8Validator,
    /// The fragmented message in progress is compressed (permessage-deflate).
    compressed: bool,
}

/// The most compressed bytes a message limited to `max_message` may take: deflate's
/// stored blocks add 5 bytes per 64 KiB to incompressible data, so a client that
/// compresses everything stays within the limit with anything that inflates within
/// it.
pub fn compressed_limit(max_message: usize) -> usize {
    max_message.saturating_add(max_message / 1024 + 64)
}

/// A message payload: borrowed from the input when it came in one frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Payload<'a> {
    Borrowed(&'a [u8]),
    Owned(Vec<u8>),
}

impl Deref for Payload<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Payload::Borrowed(b) => b,
            Payload::Owned(v) => v,
        }
    }
}

/// What a complete frame amounts to.
#[derive(Debug, PartialEq, Eq)]
pub enum Item<'a> {
    /// A whole data message; `text` payloads are valid UTF-8.
    Message {
        text: bool,
        payload: Payload<'a>,
    },
    /// A whole compressed data message: its payload is raw deflate, still to be
    /// inflated, and for text, checked as UTF-8 after that.
    Compressed {
        text: bool,
        payload: Payload<'a>,
    },
    Ping(&'a [u8]),
    Pong,
    /// A Close frame's raw payload (see `close::parse_close_payload`).
    Close(&'a [u8]),
}

/// Why the connection must be failed (RFC 6455 §7.1.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageError {
    Frame(FrameError),
    ContinuationWithoutMessage,
    /// A Text or Binary frame while a fragmented message is unfinished.
    Interleaved,
    TooBig,
    InvalidUtf8,
}

impl MessageError {
    /// The one place an assembly error becomes a close code.
    pub fn close_code(self) -> CloseCode {
        match self {
            MessageError::Frame(e) => e.close_code(),
            MessageError::ContinuationWithoutMessage | MessageError::Interleaved => {
                CloseCode::PROTOCOL_ERROR
            }
            MessageError::TooBig => CloseCode::MESSAGE_TOO_BIG,
            MessageError::InvalidUtf8 => CloseCode::INVALID_PAYLOAD,
        }
    }

    /// The Close frame's reason text.
    pub fn reason(self) -> &'static str {
        match self {
            MessageError::Frame(_) => "protocol error",
            MessageError::ContinuationWithoutMessage => "continuation without a message",
            MessageError::Interleaved => "new message before the last one ended",
            MessageError::TooBig => "message too big",
            MessageError::InvalidUtf8 => "invalid UTF-8",
        }
    }
}

/// Where the next item's bytes are, found before any of them is borrowed out.
enum Found {
    Data {
        text: bool,
        compressed: bool,
        start: usize,
        end: usize,
    },
    Gathered {
        text: bool,
        compressed: bool,
    },
    Ping {
        start: usize,
        end: usize,
    },
    Pong,
    Close {
        start: usize,
        end: usize,
    },
}

/// An assembler's state as plain values (a hand-over carries it to the next
/// process): `message` is 0 (none), 1 (text) or 2 (binary), plus 4 when that
/// fragmented message is compressed (permessage-deflate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssemblerParts {
    pub scanned: usize,
    pub message: u8,
    pub data: Vec<u8>,
    pub utf8: Vec<u8>,
}

impl Assembler {
    /// The state as plain values.
    pub fn parts(&self) -> AssemblerParts {
        AssemblerParts {
            scanned: self.scanned,
            message: match self.message {
                None => 0,
                Some(OpCode::Text) => 1,
                Some(_) => 2,
            } | if self.compressed { 4 } else { 0 },
            data: self.data.clone(),
            utf8: self.utf8.carried().to_vec(),
        }
    }

    /// The assembler `parts` describes, for the bytes `buf` it was kept with; refuses
    /// parts that do not fit them (a `scanned` past the frame at the front of `buf`,
    /// a UTF-8 carry that is no character's start), so a later `next` cannot fail on
    /// them other than as on any client's bytes.
    pub fn restore(p: AssemblerParts, buf: &[u8]) -> Result<Assembler, &'static str> {
        let compressed = p.message & 4 != 0;
        let message = match p.message & !4 {
            0 if !compressed => None,
            1 => Some(OpCode::Text),
            2 => Some(OpCode::Binary),
            _ => return Err("message kind"),
        };
        if message.is_none() && !p.data.is_empty() {
            return Err("message data without a message");
        }
        if p.scanned > 0 {
            // RSV1 allowed: only the frame's length matters here.
            let (h, hlen) = match decode_client_header_with(buf, true) {
                Ok(Some(x)) => x,
                _ => return Err("scanned bytes without a frame"),
            };
            let avail = buf.len().saturating_sub(hlen) as u64;
            if p.scanned as u64 > avail.min(h.payload_len) {
                return Err("scanned past the frame");
            }
        }
        let utf8 = Utf8Validator::with_carry(&p.utf8).map_err(|_| "utf-8 carry")?;
        Ok(Assembler {
            scanned: p.scanned,
            message,
            data: p.data,
            utf8,
            compressed,
        })
    }

    /// Nothing in progress: the state can be dropped.
    pub fn is_idle(&self) -> bool {
        self.message.is_none() && self.scanned == 0
    }

    /// Consumes frames from the front of `buf` up to and including the next one that
    /// yields an item. Returns the bytes consumed and the item, or `None` when the
    /// frame at `buf[used..]` is incomplete (its bytes must be handed in again, with
    /// more, next time). Data messages over `max_message` bytes are refused from their
    /// header on, before their payload is read.
    pub fn next<'a>(
        &mut self,
        buf: &'a mut [u8],
        max_message: usize,
    ) -> Result<(usize, Option<Item<'a>>), MessageError> {
        self.next_with(buf, max_message, false)
    }

    /// `next` on a connection that negotiated permessage-deflate (`deflate`).
    pub fn next_with<'a>(
        &mut self,
        buf: &'a mut [u8],
        max_message: usize,
        deflate: bool,
    ) -> Result<(usize, Option<Item<'a>>), MessageError> {
        let mut pos = 0;
        let found = loop {
            let (h, hlen) = match decode_client_header_with(&buf[pos..], deflate) {
                Ok(Some(x)) => x,
                Ok(None) => return Ok((pos, None)),
                Err(e) => return Err(MessageError::Frame(e)),
            };
            if !h.opcode.is_control() {
                match (h.opcode, self.message) {
                    (OpCode::Continuation, None) => {
                        return Err(MessageError::ContinuationWithoutMessage)
                    }
                    (OpCode::Text | OpCode::Binary, Some(_)) => {
                        return Err(MessageError::Interleaved)
                    }
                    _ => {}
                }
                let compressed =
                    h.compressed || (h.opcode == OpCode::Continuation && self.compressed);
                let limit = if compressed {
                    compressed_limit(max_message)
                } else {
                    max_message
                };
                let room = limit.saturating_sub(self.data.len());
                if h.payload_len > room as u64 {
                    return Err(MessageError::TooBig);
                }
            }
            // Control frames are at most 125 bytes and data frames at most
            // max_message, so the length fits in usize.
            let len = usize::try_from(h.payload_len).map_err(|_| MessageError::TooBig)?;
            let start = pos + hlen;
            let avail = buf.len() - start;
            let is_text = h.opcode == OpCode::Text
                || (h.opcode == OpCode::Continuation && self.message == Some(OpCode::Text));
            let compressed = h.compressed || (h.opcode == OpCode::Continuation && self.compressed);
            // Compressed text is checked once inflated, by the caller.
            let text = is_text && !compressed;
            let scanned = self.scanned;
            if avail < len {
                if text && avail > scanned {
                    let piece = &mut buf[start + scanned..start + avail];
                    apply_mask(piece, h.mask, scanned);
                    self.scanned = avail;
                    self.utf8
                        .feed(piece)
                        .map_err(|_| MessageError::InvalidUtf8)?;
                }
                return Ok((pos, None));
            }
            let end = start + len;
            apply_mask(&mut buf[start + scanned..end], h.mask, scanned);
            self.scanned = 0;
            pos = end;
            match h.opcode {
                OpCode::Ping => break Found::Ping { start, end },
                OpCode::Pong => break Found::Pong,
                OpCode::Close => break Found::Close { start, end },
                OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                    let payload = &buf[start..end];
                    if h.fin && self.message.is_none() {
                        if text {
                            let ok = if scanned == 0 {
                                std::str::from_utf8(payload).is_ok()
                            } else {
                                let ok = self.utf8.feed(&payload[scanned..]).is_ok()
                                    && self.utf8.finish().is_ok();
                                self.utf8.reset();
                                ok
                            };
                            if !ok {
                                return Err(MessageError::InvalidUtf8);
                            }
                        }
                        break Found::Data {
                            text: is_text,
                            compressed,
                            start,
                            end,
                        };
                    }
                    if text && self.utf8.feed(&payload[scanned..]).is_err() {
                        return Err(MessageError::InvalidUtf8);
                    }
                    if h.opcode != OpCode::Continuation {
                        self.message = Some(h.opcode);
                        self.compressed = h.compressed;
                    }
                    self.data.extend_from_slice(payload);
                    if h.fin {
                        if text && self.utf8.finish().is_err() {
                            return Err(MessageError::InvalidUtf8);
                        }
                        self.utf8.reset();
                        self.message = None;
                        self.compressed = false;
                        break Found::Gathered {
                            text: is_text,
                            compressed,
                        };
                    }
                }
            }
        };
        let item = match found {
            Found::Data {
                text,
                compressed,
                start,
                end,
            } => {
                let payload = Payload::Borrowed(&buf[start..end]);
                if compressed {
                    Item::Compressed { text, payload }
                } else {
                    Item::Message { text, payload }
                }
            }
            Found::Gathered { text, compressed } => {
                let payload = Payload::Owned(std::mem::take(&mut self.data));
                if compressed {
                    Item::Compressed { text, payload }
                } else {
                    Item::Message { text, payload }
                }
            }
            Found::Ping { start, end } => Item::Ping(&buf[start..end]),
            Found::Pong => Item::Pong,
            Found::Close { start, end } => Item::Close(&buf[start..end]),
        };
        Ok((pos, Some(item)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::mask::apply_mask_bytewise;
    use proptest::prelude::*;

    const MAX: usize = 1 << 20;

    /// A masked client frame.
    fn frame(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![(u8::from(fin) << 7) | op];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&key);
        let mut body = payload.to_vec();
        apply_mask_bytewise(&mut body, key, 0);
        out.extend_from_slice(&body);
        out
    }

    /// Everything `bytes` yields, fed in one piece.
    fn items(bytes: &[u8]) -> Result<Vec<String>, MessageError> {
        let mut a = Assembler::default();
        let mut buf = bytes.to_vec();
        let mut pos = 0;
        let mut out = Vec::new();
        loop {
            let (used, item) = a.next(&mut buf[pos..], MAX)?;
            pos += used;
            match item {
                Some(i) => out.push(describe(&i)),
                None => return Ok(out),
            }
        }
    }

    fn describe(i: &Item<'_>) -> String {
        match i {
            Item::Message {
                text: true,
                payload,
            } => {
                format!("text:{}", String::from_utf8_lossy(payload))
            }
            Item::Message {
                text: false,
                payload,
            } => format!("binary:{payload:?}"),
            Item::Compressed { text, payload } => {
                format!("compressed:{text}:{:?}", &payload[..])
            }
            Item::Ping(p) => format!("ping:{p:?}"),
            Item::Pong => "pong".into(),
            Item::Close(p) => format!("close:{p:?}"),
        }
    }

    #[test]
    fn an_unfragmented_message_is_borrowed_from_the_input() {
        let mut buf = frame(true, 0x1, b"hello");
        let len = buf.len();
        let mut a = Assembler::default();
        let (used, item) = a.next(&mut buf, MAX).unwrap();
        assert_eq!(used, len);
        assert!(matches!(
            item,
            Some(Item::Message {
                text: true,
                payload: Payload::Borrowed(b"hello")
            })
        ));
        assert!(a.is_idle());
    }

    #[test]
    fn fragments_are_gathered_and_control_frames_may_interleave() {
        let mut bytes = frame(false, 0x1, b"hel");
        bytes.extend(frame(true, 0x9, b"p"));
        bytes.extend(frame(false, 0x0, b"l"));
        bytes.extend(frame(true, 0x0, b"o"));
        assert_eq!(items(&bytes).unwrap(), ["ping:[112]", "text:hello"]);
    }

    #[test]
    fn continuation_without_a_message_is_a_protocol_error() {
        let e = items(&frame(true, 0x0, b"x")).unwrap_err();
        assert_eq!(e, MessageError::ContinuationWithoutMessage);
        assert_eq!(e.close_code(), CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn a_new_message_inside_a_fragmented_one_is_a_protocol_error() {
        let mut bytes = frame(false, 0x2, b"a");
        bytes.extend(frame(true, 0x2, b"b"));
        assert_eq!(items(&bytes).unwrap_err(), MessageError::Interleaved);
    }

    #[test]
    fn a_message_over_the_limit_fails_from_its_header_with_1009() {
        let mut a = Assembler::default();
        let mut head = frame(true, 0x2, &[0; 200])[..8].to_vec();
        let e = a.next(&mut head, 100).unwrap_err();
        assert_eq!(e.close_code(), CloseCode::MESSAGE_TOO_BIG);
        // The limit counts the fragments already gathered.
        let mut a = Assembler::default();
        let mut bytes = frame(false, 0x2, &[0; 60]);
        bytes.extend(frame(true, 0x0, &[0; 60]));
        assert_eq!(a.next(&mut bytes, 100).unwrap_err(), MessageError::TooBig);
    }

    #[test]
    fn invalid_utf8_fails_before_the_frame_is_complete() {
        let full = frame(true, 0x1, &[b'a', 0xff, b'b', b'c', b'd']);
        // Header (6 bytes) plus the first two payload bytes only.
        let mut part = full[..8].to_vec();
        let e = Assembler::default().next(&mut part, MAX).unwrap_err();
        assert_eq!(e.close_code(), CloseCode::INVALID_PAYLOAD);
    }

    #[test]
    fn a_text_message_split_inside_a_character_is_valid() {
        let euro = "€".as_bytes();
        let mut bytes = frame(false, 0x1, &euro[..1]);
        bytes.extend(frame(true, 0x0, &euro[1..]));
        assert_eq!(items(&bytes).unwrap(), ["text:€"]);
        let mut bytes = frame(false, 0x1, &euro[..1]);
        bytes.extend(frame(true, 0x0, &euro[1..2]));
        assert_eq!(items(&bytes).unwrap_err(), MessageError::InvalidUtf8);
    }

    /// Everything `bytes` yields on a connection with permessage-deflate.
    fn deflate_items(bytes: &[u8], max: usize) -> Result<Vec<String>, MessageError> {
        let mut a = Assembler::default();
        let mut buf = bytes.to_vec();
        let mut pos = 0;
        let mut out = Vec::new();
        loop {
            let (used, item) = a.next_with(&mut buf[pos..], max, true)?;
            pos += used;
            match item {
                Some(i) => out.push(describe(&i)),
                None => return Ok(out),
            }
        }
    }

    #[test]
    fn a_compressed_message_is_yielded_compressed_and_unchecked() {
        // 0xff is not UTF-8, but a compressed payload is checked only once inflated.
        let bytes = frame(true, 0x41, &[0xff, 0x01]);
        assert_eq!(
            deflate_items(&bytes, MAX).unwrap(),
            ["compressed:true:[255, 1]"]
        );
        // Fragments: RSV1 on the first only; control frames may interleave.
        let mut bytes = frame(false, 0x42, &[1]);
        bytes.extend(frame(true, 0x9, b""));
        bytes.extend(frame(true, 0x0, &[2]));
        bytes.extend(frame(true, 0x1, b"plain"));
        assert_eq!(
            deflate_items(&bytes, MAX).unwrap(),
            ["ping:[]", "compressed:false:[1, 2]", "text:plain"]
        );
    }

    #[test]
    fn rsv1_without_the_extension_or_on_a_continuation_is_a_protocol_error() {
        let e = items(&frame(true, 0x41, b"x")).unwrap_err();
        assert_eq!(e, MessageError::Frame(FrameError::ReservedBitsSet));
        assert_eq!(e.close_code(), CloseCode::PROTOCOL_ERROR);
        let mut bytes = frame(false, 0x41, b"x");
        bytes.extend(frame(true, 0x40, b"y"));
        let e = deflate_items(&bytes, MAX).unwrap_err();
        assert_eq!(e.close_code(), CloseCode::PROTOCOL_ERROR);
        let e = deflate_items(&frame(true, 0x49, b""), MAX).unwrap_err();
        assert_eq!(e.close_code(), CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn compressed_bytes_are_bounded_from_the_header_on() {
        let mut head = frame(true, 0x42, &[0; 300])[..8].to_vec();
        let e = Assembler::default()
            .next_with(&mut head, 100, true)
            .unwrap_err();
        assert_eq!(e, MessageError::TooBig);
        assert_eq!(compressed_limit(100), 164);
        assert!(deflate_items(&frame(true, 0x42, &[0; 164]), 100).is_ok());
    }

    #[test]
    fn bad_frame_headers_map_to_1002() {
        let e = items(&[0x81, 0x05, b'h']).unwrap_err();
        assert_eq!(e, MessageError::Frame(FrameError::Unmasked));
        assert_eq!(e.close_code(), CloseCode::PROTOCOL_ERROR);
    }

    /// Feeds `bytes` cut at `cuts`, keeping unconsumed bytes like the reactor does.
    fn items_in_pieces(bytes: &[u8], cuts: &[usize]) -> Result<Vec<String>, MessageError> {
        let mut a = Assembler::default();
        let mut kept: Vec<u8> = Vec::new();
        let mut out = Vec::new();
        let mut last = 0;
        let mut bounds: Vec<usize> = cuts.iter().map(|&c| c % (bytes.len() + 1)).collect();
        bounds.sort_unstable();
        bounds.push(bytes.len());
        for b in bounds {
            kept.extend_from_slice(&bytes[last..b]);
            last = b;
            let mut pos = 0;
            loop {
                let (used, item) = a.next(&mut kept[pos..], MAX)?;
                pos += used;
                match item {
                    Some(i) => out.push(describe(&i)),
                    None => break,
                }
            }
            kept.drain(..pos);
        }
        Ok(out)
    }

    fn any_frames() -> impl Strategy<Value = Vec<u8>> {
        let one = (
            any::<bool>(),
            prop_oneof![Just(0u8), Just(1), Just(2), Just(9), Just(10)],
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..40),
                "[a-zé€]{0,30}".prop_map(|s| s.into_bytes()),
                proptest::collection::vec(any::<u8>(), 120..300),
            ],
        )
            .prop_map(|(fin, op, mut p)| {
                if op >= 8 {
                    p.truncate(125);
                }
                frame(fin || op >= 8, op, &p)
            });
        proptest::collection::vec(one, 1..8).prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut a = Assembler::default();
            let mut pos = 0;
            while let Ok((used, Some(_))) = a.next(&mut bytes[pos..], 4096) {
                pos += used;
            }
            let mut a = Assembler::default();
            let mut pos = 0;
            while let Ok((used, Some(_))) = a.next_with(&mut bytes[pos..], 4096, true) {
                pos += used;
            }
        }

        #[test]
        fn items_do_not_depend_on_how_the_bytes_are_cut(
            bytes in any_frames(),
            cuts in proptest::collection::vec(any::<usize>(), 0..6),
        ) {
            let whole = items(&bytes);
            let pieces = items_in_pieces(&bytes, &cuts);
            match (whole, pieces) {
                (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                (Err(a), Err(b)) => prop_assert_eq!(a.close_code(), b.close_code()),
                // Fail-fast UTF-8 may only fail earlier, never differently.
                (a, b) => prop_assert!(false, "whole {:?} vs pieces {:?}", a, b),
            }
        }
    }

    #[test]
    fn a_restored_assembler_finishes_what_the_first_one_began() {
        // A text message in two fragments, the second cut in the middle; the first
        // assembler stops, the second (restored from its parts) finishes.
        let mut bytes = frame(false, 1, "hél".as_bytes());
        bytes.extend(frame(true, 0, "lo wörld".as_bytes()));
        let cut = bytes.len() - 4;
        let mut a = Assembler::default();
        let mut buf = bytes[..cut].to_vec();
        let (used, item) = a.next(&mut buf, MAX).unwrap();
        assert!(item.is_none());
        let mut rest = buf[used..].to_vec();
        let (used2, item) = a.next(&mut rest, MAX).unwrap();
        assert!(item.is_none());
        let mut kept = rest[used2..].to_vec();
        let parts = a.parts();
        assert!(parts.scanned > 0 && parts.message == 1);
        let mut b = Assembler::restore(parts, &kept).unwrap();
        kept.extend_from_slice(&bytes[cut..]);
        let (_, item) = b.next(&mut kept, MAX).unwrap();
        assert_eq!(
            item.map(|i| describe(&i)),
            Some("text:hél".to_string() + "lo wörld")
        );
    }

    #[test]
    fn parts_that_do_not_fit_their_bytes_are_refused() {
        let f = frame(true, 1, b"hello");
        let bad_scan = AssemblerParts {
            scanned: 9,
            message: 0,
            data: vec![],
            utf8: vec![],
        };
        assert!(Assembler::restore(bad_scan, &f[..5]).is_err());
        let bad_utf8 = AssemblerParts {
            scanned: 0,
            message: 1,
            data: vec![],
            utf8: vec![0x80],
        };
        assert!(Assembler::restore(bad_utf8, &[]).is_err());
        let data_without_message = AssemblerParts {
            scanned: 0,
            message: 0,
            data: vec![1],
            utf8: vec![],
        };
        assert!(Assembler::restore(data_without_message, &[]).is_err());
    }

    proptest! {
        #[test]
        fn restoring_arbitrary_parts_never_panics(
            scanned in 0usize..64,
            message in 0u8..4,
            data in proptest::collection::vec(any::<u8>(), 0..8),
            utf8 in proptest::collection::vec(any::<u8>(), 0..4),
            buf in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let parts = AssemblerParts { scanned, message, data, utf8 };
            if let Ok(mut a) = Assembler::restore(parts, &buf) {
                let mut b = buf.clone();
                let _ = a.next(&mut b, MAX);
            }
        }
    }
}
