//! Client-to-server payload masking (RFC 6455 §5.3).
//!
//! Every client frame payload is XORed with a 4-byte key, and the reactor unmasks
//! every byte it receives, so this is on the hot path: the fast version works a
//! machine word at a time. Payloads arrive in pieces, hence the `offset` argument:
//! the key position of a byte depends on its index in the frame, not in the piece.
//! Pure and safe code: never allocates, never panics.

/// XOR `buf` with the masking key; `offset` is the index within the frame payload of
/// `buf[0]` (so a payload can be unmasked in pieces as it arrives). Word-at-a-time fast.
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    // Bytes up to the first 8-byte aligned address go one by one, so the bulk
    // loop reads and writes aligned words (cheaper on every target, required
    // for speed on some).
    let head_len = buf.as_ptr().align_offset(8).min(buf.len());
    let (head, rest) = buf.split_at_mut(head_len);
    apply_mask_bytewise(head, key, offset);

    let offset = offset.wrapping_add(head_len);
    let rotated = rotate_key(key, offset);
    let word = u64::from_ne_bytes([
        rotated[0], rotated[1], rotated[2], rotated[3], rotated[0], rotated[1], rotated[2],
        rotated[3],
    ]);
    let mut chunks = rest.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        let masked = u64::from_ne_bytes(bytes) ^ word;
        chunk.copy_from_slice(&masked.to_ne_bytes());
    }
    // Whole words advance the key position by multiples of 4, so the tail starts
    // at the same key phase as the word loop did.
    apply_mask_bytewise(chunks.into_remainder(), rotated, 0);
}

/// Byte-by-byte reference version, the test oracle for [`apply_mask`].
#[doc(hidden)]
pub fn apply_mask_bytewise(buf: &mut [u8], key: [u8; 4], offset: usize) {
    for (i, byte) in buf.iter_mut().enumerate() {
        *byte ^= key[offset.wrapping_add(i) % 4];
    }
}

/// The key as seen from payload index `offset`: `rotated[i] == key[(offset + i) % 4]`.
fn rotate_key(key: [u8; 4], offset: usize) -> [u8; 4] {
    let mut rotated = key;
    rotated.rotate_left(offset % 4);
    rotated
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn unmasks_rfc_6455_section_5_7_hello_example() {
        let mut payload = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        apply_mask(&mut payload, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(&payload, b"Hello");
    }

    #[test]
    fn masking_twice_restores_the_payload() {
        let original: Vec<u8> = (0..=255u8).collect();
        let mut buf = original.clone();
        apply_mask(&mut buf, [1, 2, 3, 4], 3);
        assert_ne!(buf, original);
        apply_mask(&mut buf, [1, 2, 3, 4], 3);
        assert_eq!(buf, original);
    }

    #[test]
    fn unmasking_in_pieces_equals_unmasking_whole() {
        let key = [0xde, 0xad, 0xbe, 0xef];
        let data: Vec<u8> = (0..100u8).collect();
        let mut whole = data.clone();
        apply_mask(&mut whole, key, 0);
        let mut pieces = data;
        let (a, rest) = pieces.split_at_mut(7);
        let (b, c) = rest.split_at_mut(30);
        apply_mask(a, key, 0);
        apply_mask(b, key, 7);
        apply_mask(c, key, 37);
        assert_eq!(pieces, whole);
    }

    proptest! {
        #[test]
        fn fast_mask_equals_bytewise_for_any_length_offset_and_alignment(
            data in proptest::collection::vec(any::<u8>(), 0..300),
            key in any::<[u8; 4]>(),
            offset in 0usize..64,
            start in 0usize..16,
        ) {
            let start = start.min(data.len());
            let mut fast = data.clone();
            let mut slow = data;
            apply_mask(&mut fast[start..], key, offset);
            apply_mask_bytewise(&mut slow[start..], key, offset);
            prop_assert_eq!(fast, slow);
        }
    }
}
