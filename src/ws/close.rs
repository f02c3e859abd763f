//! Close codes and Close frame payloads (RFC 6455 §5.5.1, §7.4).
//!
//! One place decides which status codes a peer may put on the wire and how a
//! received Close payload is judged; the reactor only echoes or fails with the
//! code this module hands back. Pure: never allocates, never panics.

/// A WebSocket close status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseCode(pub u16);

impl CloseCode {
    pub const NORMAL: Self = Self(1000);
    pub const GOING_AWAY: Self = Self(1001);
    pub const PROTOCOL_ERROR: Self = Self(1002);
    pub const UNSUPPORTED_DATA: Self = Self(1003);
    pub const INVALID_PAYLOAD: Self = Self(1007);
    pub const POLICY_VIOLATION: Self = Self(1008);
    pub const MESSAGE_TOO_BIG: Self = Self(1009);
    pub const INTERNAL_ERROR: Self = Self(1011);
    /// wspush's own code (private-use range 4000–4999): the backend sent `KICK`.
    pub const KICKED: Self = Self(4000);
    /// wspush: the connection's token expired and was not refreshed.
    pub const TOKEN_EXPIRED: Self = Self(4001);
    /// A `wspush.v1` recovery could not be done (the broker is down, or history and
    /// live messages could not be merged): reconnect and recover again.
    pub const RECOVERY_FAILED: Self = Self(4002);

    /// May a peer send this code in a Close frame?
    ///
    /// RFC 6455 §7.4 and the IANA "WebSocket Close Code Number Registry":
    /// - 1000–1003 and 1007–1011 are defined by the RFC. 1010 is meant for clients
    ///   and 1011 (since erratum 3227) for either side; Autobahn 7.7.x expects both
    ///   to be accepted.
    /// - 1012–1014 (service restart, try again later, bad gateway) were registered
    ///   later; Autobahn 7.9.x no longer lists them as invalid, so they are accepted.
    /// - 1004 is reserved, 1005/1006/1015 are "MUST NOT be set in a Close frame",
    ///   everything else below 3000 is reserved for future RFCs (Autobahn 7.9.x:
    ///   0, 999, 1004–1006, 1016, 1100, 2000, 2999 must fail).
    /// - 3000–3999 (IANA-registered) and 4000–4999 (private use) are valid.
    pub fn is_valid_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

/// A received Close payload: empty → `Ok(None)`; 1 byte → `Err(PROTOCOL_ERROR)`;
/// code not valid on the wire → `Err(PROTOCOL_ERROR)`; reason not UTF-8 →
/// `Err(INVALID_PAYLOAD)`. The `Err` value is the code to close with.
pub fn parse_close_payload(payload: &[u8]) -> Result<Option<(CloseCode, &str)>, CloseCode> {
    match payload {
        [] => Ok(None),
        [_] => Err(CloseCode::PROTOCOL_ERROR),
        [hi, lo, reason @ ..] => {
            let code = CloseCode(u16::from_be_bytes([*hi, *lo]));
            if !code.is_valid_on_wire() {
                return Err(CloseCode::PROTOCOL_ERROR);
            }
            let reason = std::str::from_utf8(reason).map_err(|_| CloseCode::INVALID_PAYLOAD)?;
            Ok(Some((code, reason)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_autobahn_7_7_valid_close_codes() {
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
        ] {
            assert!(CloseCode(code).is_valid_on_wire(), "{code}");
        }
    }

    #[test]
    fn rejects_autobahn_7_9_invalid_close_codes() {
        for code in [0, 999, 1004, 1005, 1006, 1016, 1100, 2000, 2999] {
            assert!(!CloseCode(code).is_valid_on_wire(), "{code}");
        }
    }

    #[test]
    fn accepts_iana_registered_1012_to_1014_and_rejects_1015_and_5000() {
        for code in [1012, 1013, 1014] {
            assert!(CloseCode(code).is_valid_on_wire(), "{code}");
        }
        assert!(!CloseCode(1015).is_valid_on_wire());
        assert!(!CloseCode(5000).is_valid_on_wire());
        assert!(!CloseCode(u16::MAX).is_valid_on_wire());
    }

    #[test]
    fn empty_close_payload_has_no_code() {
        assert_eq!(parse_close_payload(b""), Ok(None));
    }

    #[test]
    fn rejects_one_byte_close_payload_with_1002() {
        assert_eq!(parse_close_payload(b"\x03"), Err(CloseCode::PROTOCOL_ERROR));
    }

    #[test]
    fn parses_code_and_reason() {
        assert_eq!(
            parse_close_payload(b"\x03\xe8bye"),
            Ok(Some((CloseCode::NORMAL, "bye")))
        );
        assert_eq!(
            parse_close_payload(b"\x0f\xa0"),
            Ok(Some((CloseCode::KICKED, "")))
        );
    }

    #[test]
    fn rejects_close_code_not_valid_on_wire_with_1002() {
        assert_eq!(
            parse_close_payload(b"\x03\xedgone"),
            Err(CloseCode::PROTOCOL_ERROR)
        );
    }

    #[test]
    fn rejects_close_reason_not_utf8_with_1007() {
        assert_eq!(
            parse_close_payload(
                b"\x03\xe8\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80"
            ),
            Err(CloseCode::INVALID_PAYLOAD)
        );
    }
}
