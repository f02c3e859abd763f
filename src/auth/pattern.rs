//! Room patterns from a token's `join` claim: which rooms a client may join itself.
//!
//! `*` matches any run of characters (including none); every other character stands
//! for itself. Pure, and matching must stay linear in the room's length: a pattern
//! comes from a token and a room from a client, so neither may be able to make the
//! reactor backtrack. Never panics, never allocates while matching.

use std::fmt;

use crate::names::MAX_NAME_LEN;

/// A validated room pattern, kept in a canonical form (runs of `*` collapsed to one)
/// so that equal patterns compare and hash equal.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomPattern(Box<str>);

/// Why a string is not a room pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatternError {
    Empty,
    /// Longer than a room name may be: such a pattern could only match by its `*`s,
    /// and bounding it bounds the work of every match.
    TooLong,
    /// A character that may not appear in a room name (space, comma, non-ASCII...).
    InvalidCharacter,
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PatternError::Empty => "empty room pattern",
            PatternError::TooLong => "room pattern longer than 128 bytes",
            PatternError::InvalidCharacter => {
                "room pattern has a character not allowed in room names"
            }
        })
    }
}

impl std::error::Error for PatternError {}

/// True for the bytes `crate::names::is_valid_name` accepts inside a name.
fn is_name_byte(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) && b != b','
}

impl RoomPattern {
    /// Parses `s`: after removing `*`, every character must be a valid room-name
    /// character; the whole pattern is at most `MAX_NAME_LEN` bytes.
    pub fn parse(s: &str) -> Result<RoomPattern, PatternError> {
        if s.is_empty() {
            return Err(PatternError::Empty);
        }
        if s.len() > MAX_NAME_LEN {
            return Err(PatternError::TooLong);
        }
        if !s.bytes().all(|b| b == b'*' || is_name_byte(b)) {
            return Err(PatternError::InvalidCharacter);
        }
        let mut canonical = String::with_capacity(s.len());
        for c in s.chars() {
            if !(c == '*' && canonical.ends_with('*')) {
                canonical.push(c);
            }
        }
        Ok(RoomPattern(canonical.into_boxed_str()))
    }

    /// The pattern as written (with runs of `*` collapsed).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True if `room` matches the whole pattern.
    ///
    /// With `*` as the only metacharacter, matching the literal pieces between stars
    /// leftmost-first is exact: the first piece must be a prefix, the last a suffix,
    /// and each middle piece is searched for after the previous one. `str::find` is
    /// the linear two-way search, so the total work is O(room + pattern), whatever
    /// the pattern (no backtracking, see `pathological_pattern_is_linear`).
    pub fn matches(&self, room: &str) -> bool {
        let pattern: &str = &self.0;
        let Some((first, rest)) = pattern.split_once('*') else {
            return room == pattern;
        };
        let (middle, last) = rest.rsplit_once('*').unwrap_or(("", rest));
        if !room.starts_with(first) || !room.ends_with(last) {
            return false;
        }
        // Prefix and suffix may not overlap ("a*a" does not match "a"): then the range
        // is empty-reversed and `get` says no. Both ends matched ASCII pieces, so the
        // offsets are character boundaries; `get` makes that a check, not a panic.
        let Some(mut hay) = room
            .len()
            .checked_sub(last.len())
            .and_then(|end| room.get(first.len()..end))
        else {
            return false;
        };
        for piece in middle.split('*').filter(|p| !p.is_empty()) {
            match hay.find(piece) {
                Some(at) => match hay.get(at + piece.len()..) {
                    Some(after) => hay = after,
                    None => return false,
                },
                None => return false,
            }
        }
        true
    }
}

impl fmt::Debug for RoomPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RoomPattern({:?})", &*self.0)
    }
}

impl fmt::Display for RoomPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RoomPattern {
        RoomPattern::parse(s).expect("valid pattern")
    }

    #[test]
    fn literal_pattern_matches_only_itself() {
        assert!(p("news").matches("news"));
        assert!(!p("news").matches("news2"));
        assert!(!p("news").matches("new"));
        assert!(!p("news").matches(""));
    }

    #[test]
    fn star_matches_any_run_including_empty() {
        assert!(p("*").matches("anything"));
        assert!(p("*").matches(""));
        assert!(p("chat:*").matches("chat:"));
        assert!(p("chat:*").matches("chat:lobby"));
        assert!(!p("chat:*").matches("chat"));
        assert!(p("*:feed").matches("user:1:feed"));
        assert!(!p("*:feed").matches("user:1:feed2"));
        assert!(p("a*b*c").matches("abc"));
        assert!(p("a*b*c").matches("a-b-b-c"));
        assert!(!p("a*b*c").matches("acb"));
        assert!(p("dm:*:*").matches("dm:alice:bob"));
    }

    #[test]
    fn prefix_and_suffix_may_not_overlap() {
        assert!(!p("a*a").matches("a"));
        assert!(p("a*a").matches("aa"));
        assert!(!p("ab*ba").matches("aba"));
        assert!(p("ab*ba").matches("abba"));
    }

    #[test]
    fn other_metacharacters_are_literal() {
        assert!(p("a?c").matches("a?c"));
        assert!(!p("a?c").matches("abc"));
        assert!(!p("[ab]").matches("a"));
        assert!(p("a.c").matches("a.c"));
        assert!(!p("a.c").matches("abc"));
    }

    #[test]
    fn runs_of_stars_are_one_star_and_compare_equal() {
        assert_eq!(p("a**b***"), p("a*b*"));
        assert_eq!(p("a**b***").as_str(), "a*b*");
        assert!(p("**").matches(""));
    }

    #[test]
    fn parse_rejects_empty_long_and_non_name_characters() {
        assert_eq!(RoomPattern::parse(""), Err(PatternError::Empty));
        assert_eq!(
            RoomPattern::parse(&"a".repeat(MAX_NAME_LEN + 1)),
            Err(PatternError::TooLong)
        );
        assert!(RoomPattern::parse(&"a".repeat(MAX_NAME_LEN)).is_ok());
        for bad in ["a b*", "a,b*", "caf\u{e9}*", "tab\t*", "*\n"] {
            assert_eq!(
                RoomPattern::parse(bad),
                Err(PatternError::InvalidCharacter),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn non_ascii_room_never_panics() {
        assert!(p("*").matches("caf\u{e9}"));
        assert!(p("c*").matches("caf\u{e9}"));
        assert!(!p("*e").matches("caf\u{e9}"));
        assert!(p("a*b").matches("a\u{e9}\u{e9}b"));
        assert!(!p("a*x*b").matches("a\u{e9}\u{e9}b"));
    }

    /// A backtracking matcher needs ~n^5 steps here; this one a few passes over 10 KB.
    #[test]
    fn pathological_pattern_is_linear() {
        let room = "a".repeat(10 * 1024);
        assert!(!p("*a*a*a*a*a*b").matches(&room));
        assert!(p("*a*a*a*a*a*").matches(&room));
        let mut room_b = room.clone();
        room_b.push('b');
        assert!(p("*a*a*a*a*a*b").matches(&room_b));
    }

    /// The fast matcher agrees with an obviously correct (exponential) one.
    fn reference(pattern: &[u8], room: &[u8]) -> bool {
        match pattern.split_first() {
            None => room.is_empty(),
            Some((b'*', rest)) => (0..=room.len()).any(|i| reference(rest, &room[i..])),
            Some((&c, rest)) => room.first() == Some(&c) && reference(rest, &room[1..]),
        }
    }

    proptest::proptest! {
        #[test]
        fn agrees_with_reference(pattern in "[ab*]{1,8}", room in "[ab]{0,10}") {
            let parsed = p(&pattern);
            proptest::prop_assert_eq!(
                parsed.matches(&room),
                reference(pattern.as_bytes(), room.as_bytes())
            );
        }

        #[test]
        fn parse_and_match_never_panic(pattern in "\\PC{0,140}", room in "\\PC{0,40}") {
            if let Ok(parsed) = RoomPattern::parse(&pattern) {
                let _ = parsed.matches(&room);
            }
        }
    }
}
