//! Incremental UTF-8 validation of text messages (RFC 6455 §5.6, §8.1).
//!
//! A text message arrives in frames, and frames arrive in reads; a multi-byte
//! character can straddle any of those boundaries. The validator carries at most
//! three bytes of an unfinished character between pieces, so a connection pays
//! 4 bytes for it, never a buffer. It fails fast: as soon as the bytes seen so far
//! cannot begin any valid UTF-8 string, `feed` errors, so the reactor can close
//! with 1007 without waiting for the rest of the message (Autobahn 6.4.x).
//! Must never allocate and never panic.

/// Validates one message's bytes, piece by piece.
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    /// The leading bytes of a character cut off at the end of the last piece;
    /// always a valid proper prefix of a multi-byte sequence.
    carry: [u8; 3],
    /// How many bytes of `carry` are in use (0..=3).
    carry_len: u8,
}

/// The bytes seen so far are not the beginning of any valid UTF-8 string.
#[derive(Debug, PartialEq, Eq)]
pub struct InvalidUtf8;

impl Utf8Validator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Validates the next piece of a message. Errors as soon as the bytes seen so far
    /// can no longer be a prefix of valid UTF-8 (fail fast: e.g. 0xF4 0x90 fails at the
    /// 0x90, 0xED 0xA0 (surrogate) fails at 0xA0, 0xC0/0xC1/0xF5..0xFF fail at once).
    /// After an error the state is meaningless until [`reset`](Self::reset).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), InvalidUtf8> {
        let mut rest = bytes;
        if self.carry_len > 0 {
            rest = self.complete_carry(rest)?;
            if self.carry_len > 0 {
                // The piece ended before the carried character did.
                return Ok(());
            }
        }
        match std::str::from_utf8(rest) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(InvalidUtf8),
            Err(e) => {
                // Cut off mid-character: std checks the bytes it saw, but its
                // docs do not promise that, so the tail is checked here too.
                let tail = &rest[e.valid_up_to()..];
                if tail.len() > self.carry.len() || !is_valid_prefix(tail) {
                    return Err(InvalidUtf8);
                }
                self.carry[..tail.len()].copy_from_slice(tail);
                self.carry_len = tail.len() as u8;
                Ok(())
            }
        }
    }

    /// End of message: errors if a multi-byte sequence is left incomplete.
    pub fn finish(&self) -> Result<(), InvalidUtf8> {
        if self.carry_len == 0 {
            Ok(())
        } else {
            Err(InvalidUtf8)
        }
    }

    /// The leading bytes of a character cut off at the end of the last piece (what a
    /// hand-over carries to the next process).
    pub fn carried(&self) -> &[u8] {
        &self.carry[..self.carry_len as usize]
    }

    /// A validator that carries `bytes`, which must be a proper prefix of one
    /// multi-byte character (what `carried` gave).
    pub fn with_carry(bytes: &[u8]) -> Result<Self, InvalidUtf8> {
        let mut v = Self::default();
        v.feed(bytes)?;
        if v.carry_len as usize != bytes.len() {
            return Err(InvalidUtf8);
        }
        Ok(v)
    }

    /// Forgets everything, ready for the next message.
    pub fn reset(&mut self) {
        self.carry_len = 0;
    }

    /// Extends the carried partial character with bytes from the start of `bytes`.
    /// Returns the bytes after the character; leaves `carry_len > 0` if `bytes` ran
    /// out before the character was complete.
    fn complete_carry<'a>(&mut self, bytes: &'a [u8]) -> Result<&'a [u8], InvalidUtf8> {
        let have = usize::from(self.carry_len);
        let need = sequence_len(self.carry[0]).ok_or(InvalidUtf8)?;
        let take = (need - have).min(bytes.len());
        let mut seq = [0u8; 4];
        seq[..have].copy_from_slice(&self.carry[..have]);
        seq[have..have + take].copy_from_slice(&bytes[..take]);
        let seen = have + take;
        if seen < need {
            if !is_valid_prefix(&seq[..seen]) {
                return Err(InvalidUtf8);
            }
            self.carry[..seen].copy_from_slice(&seq[..seen]);
            self.carry_len = seen as u8;
        } else {
            std::str::from_utf8(&seq[..need]).map_err(|_| InvalidUtf8)?;
            self.carry_len = 0;
        }
        Ok(&bytes[take..])
    }
}

/// Length of the sequence a lead byte starts, or `None` if it cannot start one.
/// 0xC0/0xC1 would only encode overlong ASCII; 0xF5.. would exceed U+10FFFF.
fn sequence_len(lead: u8) -> Option<usize> {
    match lead {
        0x00..=0x7f => Some(1),
        0xc2..=0xdf => Some(2),
        0xe0..=0xef => Some(3),
        0xf0..=0xf4 => Some(4),
        _ => None,
    }
}

/// True if `bytes` (1 to 3 of them) are a proper prefix of some valid multi-byte
/// sequence. The second byte's range depends on the lead (RFC 3629 §4): it is what
/// rules out overlong forms (E0, F0), surrogates (ED) and code points over U+10FFFF (F4).
fn is_valid_prefix(bytes: &[u8]) -> bool {
    let Some((&lead, more)) = bytes.split_first() else {
        return false;
    };
    let Some(need) = sequence_len(lead) else {
        return false;
    };
    if need == 1 || bytes.len() >= need {
        return false;
    }
    let second_ok = |b: u8| match lead {
        0xe0 => (0xa0..=0xbf).contains(&b),
        0xed => (0x80..=0x9f).contains(&b),
        0xf0 => (0x90..=0xbf).contains(&b),
        0xf4 => (0x80..=0x8f).contains(&b),
        _ => (0x80..=0xbf).contains(&b),
    };
    more.iter().enumerate().all(|(i, &b)| {
        if i == 0 {
            second_ok(b)
        } else {
            (0x80..=0xbf).contains(&b)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn validate_whole(bytes: &[u8]) -> bool {
        let mut v = Utf8Validator::new();
        v.feed(bytes).is_ok() && v.finish().is_ok()
    }

    /// Feeds `bytes` one byte at a time; returns the index of the byte that failed.
    fn first_failing_byte(bytes: &[u8]) -> Option<usize> {
        let mut v = Utf8Validator::new();
        bytes
            .iter()
            .position(|b| v.feed(std::slice::from_ref(b)).is_err())
    }

    #[test]
    fn accepts_autobahn_6_2_valid_utf8_in_any_split() {
        let s = "Hello-\u{b5}@\u{df}\u{f6}\u{e4}\u{fc}\u{e0}\u{e1}-UTF-8!!".as_bytes();
        for cut in 0..=s.len() {
            let mut v = Utf8Validator::new();
            assert_eq!(v.feed(&s[..cut]), Ok(()));
            assert_eq!(v.feed(&s[cut..]), Ok(()));
            assert_eq!(v.finish(), Ok(()));
        }
        for (i, b) in s.iter().enumerate() {
            let mut v = Utf8Validator::new();
            v.feed(&s[..i]).unwrap();
            assert_eq!(v.feed(std::slice::from_ref(b)), Ok(()));
        }
    }

    #[test]
    fn accepts_autobahn_6_x_valid_sequences() {
        let valid: &[&[u8]] = &[
            b"hello\x24world",
            b"hello\xc2\xa2world",
            b"hello\xe2\x82\xacworld",
            b"hello\xf0\xa4\xad\xa2world",
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5",
            b"\x00",
            b"\xc2\x80",
            b"\xe0\xa0\x80",
            b"\xf0\x90\x80\x80",
            b"\x7f",
            b"\xdf\xbf",
            b"\xef\xbf\xbf",
            b"\xf4\x8f\xbf\xbf",
            b"\xed\x9f\xbf",
            b"\xee\x80\x80",
            b"\xef\xbf\xbd",
            b"\xef\xbf\xbe",
            b"\xf1\x8f\xbf\xbe",
            b"\xf4\x8f\xbf\xbf",
        ];
        for s in valid {
            assert!(validate_whole(s), "{s:x?}");
        }
    }

    #[test]
    fn rejects_autobahn_6_x_invalid_sequences() {
        let invalid: &[&[u8]] = &[
            b"\xf8\x88\x80\x80\x80",
            b"\xfc\x84\x80\x80\x80\x80",
            b"\xf7\xbf\xbf\xbf",
            b"\xfb\xbf\xbf\xbf\xbf",
            b"\xfd\xbf\xbf\xbf\xbf\xbf",
            b"\xf4\x90\x80\x80",
            b"\x80",
            b"\xbf",
            b"\x80\xbf\x80",
            b"\xc0 \xc1 ",
            b"\xe0 \xe1 ",
            b"\xc0",
            b"\xe0\x80",
            b"\xf0\x80\x80",
            b"\xdf",
            b"\xef\xbf",
            b"\xf7\xbf\xbf",
            b"\xc0\xe0\x80\xf0\x80\x80\xdf\xef\xbf",
            b"\xfe",
            b"\xff",
            b"\xfe\xfe\xff\xff",
            b"\xc0\xaf",
            b"\xe0\x80\xaf",
            b"\xf0\x80\x80\xaf",
            b"\xc1\xbf",
            b"\xe0\x9f\xbf",
            b"\xf0\x8f\xbf\xbf",
            b"\xc0\x80",
            b"\xe0\x80\x80",
            b"\xf0\x80\x80\x80",
            b"\xed\xa0\x80",
            b"\xed\xad\xbf",
            b"\xed\xbf\xbf",
            b"\xed\xa0\x80\xed\xb0\x80",
            b"\xed\xaf\xbf\xed\xbf\xbf",
        ];
        for s in invalid {
            assert!(!validate_whole(s), "{s:x?}");
        }
    }

    #[test]
    fn fails_fast_on_code_point_above_u10ffff_at_second_byte() {
        assert_eq!(first_failing_byte(b"\xf4\x90\x80\x80"), Some(1));
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"ab\xf4\x90"), Err(InvalidUtf8));
    }

    #[test]
    fn fails_fast_on_surrogate_at_second_byte() {
        // Autobahn 6.4.x: "edited" then ED A0 80, failing on byte 7 (0xA0).
        assert_eq!(
            first_failing_byte(b"\x65\x64\x69\x74\x65\x64\xed\xa0\x80"),
            Some(7)
        );
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"\x65\x64\x69\x74\x65\x64\xed"), Ok(()));
        assert_eq!(v.feed(b"\xa0\x80"), Err(InvalidUtf8));
    }

    #[test]
    fn fails_fast_on_bytes_that_never_start_a_character() {
        for b in [0xc0u8, 0xc1, 0xf5, 0xf8, 0xfe, 0xff, 0x80, 0xbf] {
            let mut v = Utf8Validator::new();
            assert_eq!(v.feed(&[b]), Err(InvalidUtf8), "{b:#x}");
        }
    }

    #[test]
    fn fails_fast_on_overlong_prefix_at_second_byte() {
        assert_eq!(first_failing_byte(b"\xe0\x80\xaf"), Some(1));
        assert_eq!(first_failing_byte(b"\xf0\x8f\xbf\xbf"), Some(1));
    }

    #[test]
    fn rejects_truncated_character_at_end_of_message() {
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"ok\xe2\x82"), Ok(()));
        assert_eq!(v.finish(), Err(InvalidUtf8));
    }

    #[test]
    fn reset_forgets_a_carried_partial_character() {
        let mut v = Utf8Validator::new();
        v.feed(b"\xe2\x82").unwrap();
        v.reset();
        assert_eq!(v.finish(), Ok(()));
        assert_eq!(v.feed(b"plain"), Ok(()));
    }

    #[test]
    fn carries_at_most_four_bytes_of_state() {
        assert!(std::mem::size_of::<Utf8Validator>() <= 4);
    }

    proptest! {
        #[test]
        fn any_split_gives_the_same_verdict_as_from_utf8(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            cuts in proptest::collection::vec(0usize..64, 0..6),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort_unstable();
            let mut v = Utf8Validator::new();
            let mut ok = true;
            let mut start = 0;
            for end in cuts.into_iter().chain(std::iter::once(bytes.len())) {
                if v.feed(&bytes[start..end]).is_err() {
                    ok = false;
                    break;
                }
                start = end;
            }
            let ok = ok && v.finish().is_ok();
            prop_assert_eq!(ok, std::str::from_utf8(&bytes).is_ok());
        }

        #[test]
        fn any_split_of_valid_text_is_accepted(s in "\\PC{0,40}", cut in 0usize..200) {
            let bytes = s.as_bytes();
            let cut = cut.min(bytes.len());
            let mut v = Utf8Validator::new();
            prop_assert_eq!(v.feed(&bytes[..cut]), Ok(()));
            prop_assert_eq!(v.feed(&bytes[cut..]), Ok(()));
            prop_assert_eq!(v.finish(), Ok(()));
        }

        #[test]
        fn byte_at_a_time_fails_exactly_where_the_prefix_stops_being_valid(
            bytes in proptest::collection::vec(
                prop_oneof![any::<u8>(), 0x80u8..0xc0, 0xe0u8..0xf5], 0..24),
        ) {
            // Oracle: the first index i such that bytes[..=i] is not a prefix of any
            // valid string, found by asking from_utf8 about each prefix.
            let expected = (0..bytes.len()).find(|&i| {
                matches!(std::str::from_utf8(&bytes[..=i]), Err(e) if e.error_len().is_some())
            });
            prop_assert_eq!(first_failing_byte(&bytes), expected);
        }
    }

    #[test]
    fn a_carried_character_start_survives_a_hand_over() {
        let mut v = Utf8Validator::new();
        v.feed(&[b'a', 0xe2, 0x82]).unwrap();
        let mut w = Utf8Validator::with_carry(v.carried()).unwrap();
        assert!(w.feed(&[0xac]).is_ok() && w.finish().is_ok());
        assert!(Utf8Validator::with_carry(&[0x80]).is_err());
        assert!(Utf8Validator::with_carry(b"ab").is_err());
    }
}
