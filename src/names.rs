//! What a room or user name may be.
//!
//! Names arrive from three places — the upgrade query string, client JSON
//! messages and control commands — and must mean the same thing in all of them.
//! A name is 1 to 128 bytes of printable ASCII (0x21..=0x7E) except `,`: no
//! spaces, so it survives inline control commands unquoted, and no comma, so
//! every room can be named in the `rooms=a,b` list of the upgrade request.

/// The longest room or user name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// True if `name` is a valid room or user name.
pub fn is_valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.iter().all(|&b| (0x21..=0x7e).contains(&b) && b != b',')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_printable_ascii_up_to_128_bytes() {
        assert!(is_valid_name(b"news"));
        assert!(is_valid_name(b"user:42/feed-#1"));
        assert!(is_valid_name(&[b'a'; MAX_NAME_LEN]));
    }

    #[test]
    fn rejects_empty_long_space_comma_and_non_ascii() {
        assert!(!is_valid_name(b""));
        assert!(!is_valid_name(&[b'a'; MAX_NAME_LEN + 1]));
        assert!(!is_valid_name(b"two words"));
        assert!(!is_valid_name(b"a,b"));
        assert!(!is_valid_name("caf\u{e9}".as_bytes()));
        assert!(!is_valid_name(b"tab\there"));
    }
}
