//! permessage-deflate (RFC 7692) as pure code: a message in, one complete
//! compressed server frame out, shareable by every recipient; a compressed client
//! message in, its payload out, never more than a limit.
//!
//! Both directions are negotiated without context takeover (`extension`), so neither
//! side keeps anything between messages: one `Deflater` (the dispatcher's, or a
//! reactor's for its own replies) and one `Inflater` per reactor serve every
//! connection, and a connection costs nothing while idle. Each is reset before every
//! message, so its output never depends on an earlier one.
//!
//! Must never panic on any input and never allocate more than the limit it is
//! given for an inflated message, whatever the compressed bytes claim (a few hundred
//! bytes of deflate can expand to megabytes). No I/O.
//!
//! Library: flate2 over zlib-rs (see Cargo.toml) at level 3. Measured with
//! `cargo bench --bench codec -- deflate_push` on the 1 KB JSON push of
//! scripts/bench-compression.sh (benches/data/push-1k.json), on this machine:
//! level 1 (zlib-rs's deflate_quick, fixed codes only) takes 4.3 µs but leaves
//! 0.48x; levels 2, 3, 6 and 9 leave 0.386x, 0.383x, 0.380x and 0.379x in 13.0,
//! 11.4, 11.7 and 14.0 µs. Most of that is the per-message reset of the match
//! tables, which no context takeover requires, so the levels cost alike at this
//! size; 3 is the fastest matcher that reaches the ratio, and it stays cheaper than
//! lazy matching (6) on larger payloads. Inflating the same message takes 1.3 µs.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::close::CloseCode;
use super::frame::{encode_header, OpCode};

/// The compression level (see the module comment).
pub const LEVEL: u32 = 3;

/// The RSV1 bit of the first frame of a compressed message (RFC 7692 §6).
pub const RSV1: u8 = 0x40;

/// The empty stored block a sync flush ends with: the sender strips it (§7.2.1), the
/// receiver appends it back (§7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Compresses whole messages into complete server frames, one message at a time.
pub struct Deflater {
    c: Compress,
}

impl Default for Deflater {
    fn default() -> Self {
        Deflater::new()
    }
}

impl Deflater {
    /// A raw-deflate compressor with the full 32 KiB window at `LEVEL`.
    pub fn new() -> Deflater {
        Deflater::with_level(LEVEL)
    }

    /// `new` at another level (0-9), for measuring.
    pub fn with_level(level: u32) -> Deflater {
        Deflater {
            c: Compress::new_with_window_bits(Compression::new(level), false, 15),
        }
    }

    /// The complete compressed frame (FIN and RSV1 set) for `payload`, or `None` when
    /// compressing does not make it smaller (it is then sent as it is).
    pub fn frame(&mut self, opcode: OpCode, payload: &[u8]) -> Option<Vec<u8>> {
        let out = guarded(|| self.compress(opcode, payload));
        if out.is_none() {
            // A panic inside the library: its state is suspect, so it is replaced, and
            // this message goes out uncompressed.
            log::error!("deflate: the compressor panicked; message sent uncompressed");
            *self = Deflater::new();
        }
        out.flatten()
    }

    fn compress(&mut self, opcode: OpCode, payload: &[u8]) -> Option<Vec<u8>> {
        self.c.reset();
        // Room for the largest header in front, so the body never moves; and room
        // for the worst expansion (fixed codes of 9 bits for most bytes, block
        // headers, the flush), so the compressor never runs out of output:
        // zlib-rs 0.6.8 panics in a later call after one that did (found by Autobahn
        // 12.2.3, random 256-byte messages; see `random_payloads_never_panic`).
        let room = payload.len() + payload.len() / 4 + 256;
        let mut out: Vec<u8> = Vec::with_capacity(10 + room);
        out.resize(10, 0);
        let before_in = self.c.total_in();
        let status = self
            .c
            .compress_vec(payload, &mut out, FlushCompress::Sync)
            .ok()?;
        let consumed = self.c.total_in() - before_in;
        if status != Status::Ok || consumed != payload.len() as u64 || out.len() == out.capacity() {
            // The output ran out of room before the flush completed.
            return None;
        }
        if !out.ends_with(&TAIL) {
            return None;
        }
        out.truncate(out.len() - TAIL.len());
        let body = out.len() - 10;
        if body >= payload.len() {
            return None;
        }
        let mut header = [0u8; 10];
        let n = encode_header(true, opcode, body, &mut header);
        header[0] |= RSV1;
        out[10 - n..10].copy_from_slice(&header[..n]);
        out.drain(..10 - n);
        Some(out)
    }

    /// `frame` for the message of a complete plain server frame (FIN set, RSV
    /// clear, unmasked, as `frame::encode_frame` makes them), if `min_size` bytes or
    /// more and made smaller.
    pub fn reframe(&mut self, plain: &[u8], min_size: usize) -> Option<Vec<u8>> {
        let (&b0, rest) = plain.split_first()?;
        let header = match rest.first()? & 0x7f {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        let opcode = OpCode::from_u8(b0 & 0x0f).filter(|o| !o.is_control())?;
        let payload = plain.get(header..)?;
        if b0 & 0xf0 != 0x80 || payload.len() < min_size {
            return None;
        }
        self.frame(opcode, payload)
    }
}

/// Why a compressed message could not be inflated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates past the message limit.
    TooBig,
    /// Not a valid deflate stream (also: back-references into an earlier message,
    /// from a client that kept its context although asked not to).
    Invalid,
}

impl InflateError {
    /// The one place an inflate error becomes a close code.
    pub fn close_code(self) -> CloseCode {
        match self {
            InflateError::TooBig => CloseCode::MESSAGE_TOO_BIG,
            InflateError::Invalid => CloseCode::INVALID_PAYLOAD,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            InflateError::TooBig => "message too big",
            InflateError::Invalid => "invalid compressed data",
        }
    }
}

/// Inflates whole client messages, one at a time.
pub struct Inflater {
    d: Decompress,
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater {
            d: Decompress::new_with_window_bits(false, 15),
        }
    }
}

impl Inflater {
    /// The payload of a compressed message whose (gathered) frame payloads are
    /// `data`, at most `limit` bytes. The output grows by doubling from a guess and
    /// never past `limit`; one byte beyond it is looked for in a stack byte.
    pub fn inflate(&mut self, data: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
        match guarded(|| self.inflate_unguarded(data, limit)) {
            Some(r) => r,
            None => {
                // Client bytes must never take a thread down, even through a bug in
                // the library: the inflater is replaced and the message refused.
                log::error!("deflate: the inflater panicked; message refused");
                *self = Inflater::default();
                Err(InflateError::Invalid)
            }
        }
    }

    fn inflate_unguarded(&mut self, data: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
        self.d.reset(false);
        let guess = data.len().saturating_mul(4).clamp(256, 64 << 10);
        let mut out = Vec::with_capacity(guess.min(limit));
        for input in [data, &TAIL[..]] {
            if self.feed(input, &mut out, limit)? {
                break;
            }
        }
        // Capacity is only ever reserved up to the limit, but the limit is the
        // contract: never trust the allocator's rounding for it.
        if out.len() > limit {
            return Err(InflateError::TooBig);
        }
        Ok(out)
    }

    /// Feeds all of `input`; true at the end of the deflate stream (a final block:
    /// whatever follows it is not part of the message).
    fn feed(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<bool, InflateError> {
        let mut pos = 0;
        loop {
            let full = out.len() == out.capacity();
            if full && out.len() >= limit {
                let mut probe = [0u8; 1];
                let (before_in, before_out) = (self.d.total_in(), self.d.total_out());
                let status = self
                    .d
                    .decompress(&input[pos..], &mut probe, FlushDecompress::Sync)
                    .map_err(|_| InflateError::Invalid)?;
                if self.d.total_out() != before_out {
                    return Err(InflateError::TooBig);
                }
                pos += (self.d.total_in() - before_in) as usize;
                match status {
                    Status::StreamEnd => return Ok(true),
                    _ if pos >= input.len() => return Ok(false),
                    // No progress with input left: the stream needs output room it
                    // cannot have, or it is stuck.
                    _ if self.d.total_in() == before_in => return Err(InflateError::Invalid),
                    _ => continue,
                }
            }
            if full {
                let grow = out.capacity().max(256).min(limit - out.len());
                out.reserve_exact(grow);
            }
            let before_in = self.d.total_in();
            let before_out = self.d.total_out();
            let status = self
                .d
                .decompress_vec(&input[pos..], out, FlushDecompress::Sync)
                .map_err(|_| InflateError::Invalid)?;
            pos += (self.d.total_in() - before_in) as usize;
            match status {
                Status::StreamEnd => return Ok(true),
                // Drained, with output room to spare: everything decodable is out.
                _ if pos >= input.len() && out.len() < out.capacity() => return Ok(false),
                _ if self.d.total_in() == before_in
                    && self.d.total_out() == before_out
                    && out.len() < out.capacity() =>
                {
                    return Err(InflateError::Invalid)
                }
                _ => {}
            }
        }
    }
}

/// `f`'s result, or `None` if it panicked.
fn guarded<T>(f: impl FnOnce() -> T) -> Option<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok()
}

/// What a connection's negotiation allows, in 3 bits (`Conn::flags` holds them):
/// 0 is no extension, 7 a window of 32 KiB (any shared frame), 1–6 a window of 2^8
/// to 2^13 bytes (`server_max_window_bits` of 14 counts as 13: stricter is valid).
pub fn window_code(server_window_bits: u8) -> u16 {
    match server_window_bits {
        15.. => 7,
        bits => u16::from(bits.clamp(8, 13)) - 7,
    }
}

/// Whether a frame compressed with the 32 KiB window may go to a connection with
/// window code `code` (nonzero): with a smaller window, only when the payload is no
/// longer than the window, so no back-reference can reach past it.
pub fn may_share(code: u16, payload_len: usize) -> bool {
    code >= 7 || (code > 0 && payload_len <= 1usize << (code + 7))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A 1 KiB JSON push like the benchmark's.
    fn json() -> Vec<u8> {
        let mut s = String::from("{\"type\":\"quote\",\"items\":[");
        let mut i = 0;
        while s.len() < 1000 {
            s.push_str(&format!(
                "{{\"symbol\":\"SYM{i}\",\"price\":{}.{:02},\"volume\":{},\"exchange\":\"NYSE\"}},",
                100 + i * 7,
                i * 13 % 100,
                1000 + i * 31
            ));
            i += 1;
        }
        s.push_str("{}]}");
        s.into_bytes()
    }

    /// Inflates a frame made by `Deflater::frame` with an independent decoder
    /// (flate2's own raw inflate over the payload plus the tail).
    fn payload_of(frame: &[u8]) -> Vec<u8> {
        assert_eq!(frame[0] & 0xf0, 0x80 | RSV1, "FIN and RSV1, no RSV2/3");
        let (len, start) = match frame[1] {
            126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        assert_eq!(frame.len(), start + len);
        let mut body = frame[start..].to_vec();
        body.extend_from_slice(&TAIL);
        let mut out = Vec::new();
        let mut d = flate2::read::DeflateDecoder::new(&body[..]);
        let _ = std::io::Read::read_to_end(&mut d, &mut out);
        out
    }

    /// The payload bytes of a server frame.
    fn body(frame: &[u8]) -> &[u8] {
        let start = match frame[1] {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        &frame[start..]
    }

    #[test]
    fn compresses_a_json_push_into_one_rsv1_frame_under_0_4x() {
        let p = json();
        let f = Deflater::new().frame(OpCode::Text, &p).unwrap();
        assert_eq!(f[0], 0x80 | RSV1 | 0x1);
        assert_eq!(payload_of(&f), p);
        assert!(f.len() * 10 <= p.len() * 4, "{} of {}", f.len(), p.len());
    }

    #[test]
    fn rfc_7692_7_2_3_1_hello_compresses_to_the_rfc_bytes() {
        // RFC 7692 §7.2.3.1: "Hello" compressed, without context takeover.
        let f = Deflater::new().frame(OpCode::Text, b"Hello");
        // Five bytes do not shrink: the frame is sent uncompressed instead.
        assert_eq!(f, None);
        let mut i = Inflater::default();
        assert_eq!(
            i.inflate(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], 100),
            Ok(b"Hello".to_vec())
        );
    }

    #[test]
    fn each_frame_stands_alone_without_context_takeover() {
        let mut d = Deflater::new();
        let p = json();
        let a = d.frame(OpCode::Text, &p).unwrap();
        let b = d.frame(OpCode::Text, &p).unwrap();
        assert_eq!(a, b, "the second message refers to nothing of the first");
    }

    #[test]
    fn reframes_a_plain_frame_at_or_over_the_minimum_size() {
        let p = json();
        let plain = crate::ws::frame::encode_frame(OpCode::Binary, &p);
        let mut d = Deflater::new();
        let f = d.reframe(&plain, p.len()).unwrap();
        assert_eq!(f[0], 0x80 | RSV1 | 0x2);
        assert_eq!(payload_of(&f), p);
        assert_eq!(d.reframe(&plain, p.len() + 1), None);
        assert_eq!(
            d.reframe(&crate::ws::frame::encode_frame(OpCode::Ping, b"x"), 0),
            None
        );
        assert_eq!(d.reframe(&[], 0), None);
        assert_eq!(d.reframe(&[0x81], 0), None);
    }

    #[test]
    fn incompressible_payloads_are_sent_as_they_are() {
        let mut x = 0x1234_5678u32;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        assert_eq!(Deflater::new().frame(OpCode::Binary, &noise), None);
    }

    #[test]
    fn random_payloads_never_panic() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut d = Deflater::new();
        for n in [256usize, 257, 300, 1000, 1024, 4096, 65536] {
            for _ in 0..200 {
                let p: Vec<u8> = (0..n)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        (x >> 24) as u8
                    })
                    .collect();
                // Random bytes do not shrink; a panic would be caught and logged, so
                // the compressor must still be the first one.
                assert_eq!(d.frame(OpCode::Binary, &p), None);
                assert_eq!(d.c.total_in(), n as u64, "replaced after a panic");
            }
        }
    }

    #[test]
    fn inflates_within_the_limit_and_refuses_one_byte_more() {
        let p = vec![b'a'; 10_000];
        let f = Deflater::new().frame(OpCode::Binary, &p).unwrap();
        let body = body(&f);
        let mut i = Inflater::default();
        assert_eq!(i.inflate(body, 10_000).map(|v| v.len()), Ok(10_000));
        assert_eq!(i.inflate(body, 9_999), Err(InflateError::TooBig));
    }

    #[test]
    fn a_zip_bomb_never_allocates_past_the_limit() {
        let p = vec![0u8; 16 << 20];
        let f = Deflater::new().frame(OpCode::Binary, &p).unwrap();
        assert!(f.len() < (16 << 20) / 50, "{} bytes", f.len());
        let mut i = Inflater::default();
        let e = i.inflate(body(&f), 64 << 10).unwrap_err();
        assert_eq!(e, InflateError::TooBig);
        assert_eq!(e.close_code(), CloseCode::MESSAGE_TOO_BIG);
    }

    #[test]
    fn garbage_and_back_references_into_a_previous_message_are_invalid() {
        let mut i = Inflater::default();
        assert_eq!(
            i.inflate(&[0xff, 0xff, 0xff], 100),
            Err(InflateError::Invalid)
        );
        // A match at distance 1 with nothing before it (what a client that kept its
        // context would send for a repeat of its last message's tail).
        let mut c = Compress::new_with_window_bits(Compression::new(1), false, 15);
        let mut first = Vec::with_capacity(256);
        c.compress_vec(b"abcabcabcabc", &mut first, FlushCompress::Sync)
            .unwrap();
        let mut second = Vec::with_capacity(256);
        c.compress_vec(b"abcabcabcabc", &mut second, FlushCompress::Sync)
            .unwrap();
        assert_eq!(
            i.inflate(&second[..second.len() - 4], 100)
                .unwrap_err()
                .close_code(),
            CloseCode::INVALID_PAYLOAD
        );
    }

    #[test]
    fn a_final_block_ends_the_message() {
        let mut c = Compress::new_with_window_bits(Compression::new(6), false, 15);
        let mut body = Vec::with_capacity(256);
        c.compress_vec(b"final", &mut body, FlushCompress::Finish)
            .unwrap();
        assert_eq!(
            Inflater::default().inflate(&body, 100),
            Ok(b"final".to_vec())
        );
    }

    #[test]
    fn window_codes_keep_frames_within_the_negotiated_window() {
        assert_eq!(window_code(15), 7);
        assert_eq!(window_code(8), 1);
        assert_eq!(window_code(13), 6);
        assert_eq!(window_code(14), 6);
        assert!(may_share(7, usize::MAX));
        assert!(may_share(1, 256) && !may_share(1, 257));
        assert!(may_share(6, 8192) && !may_share(6, 8193));
        assert!(!may_share(0, 1));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_respect_the_limit(
            data in proptest::collection::vec(any::<u8>(), 0..600),
            limit in 0usize..5000,
        ) {
            if let Ok(v) = Inflater::default().inflate(&data, limit) {
                prop_assert!(v.len() <= limit);
            }
        }

        #[test]
        fn every_frame_inflates_back_to_its_payload(
            p in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..3000),
                "[a-c]{0,3000}".prop_map(String::into_bytes),
            ]
        ) {
            let mut d = Deflater::new();
            if let Some(f) = d.frame(OpCode::Binary, &p) {
                prop_assert_eq!(payload_of(&f), p.clone());
                let back = Inflater::default().inflate(body(&f), p.len());
                prop_assert_eq!(back, Ok(p));
            }
        }
    }
}
