//! The client protocol: small JSON requests a connection sends in text frames.
//!
//! ```text
//! {"op":"join","room":"news"}   → {"op":"joined","room":"news"}
//! {"op":"leave","room":"news"}  → {"op":"left","room":"news"}
//! {"op":"ping"}                 → {"op":"pong"}
//! {"op":"refresh","token":"…"}  → {"op":"refreshed","exp":1767225600}
//! a join or leave not granted   → {"op":"error","reason":"forbidden","room":"news"}
//! anything else                 → {"op":"error","reason":"..."}
//! ```
//! Pure code: parsing and reply formatting; never panics, whatever the client sends. Joining an already joined room, or leaving
//! a room the connection is not in, succeeds (requests are idempotent).

use serde_json::Value;

use crate::names::is_valid_name;

/// A well-formed client request.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientRequest {
    /// `{"op":"join","room":…}`, with `"since":{"epoch":…,"offset":…}` to recover.
    Join(String, Option<(String, u64)>),
    Leave(String),
    Ping,
    Refresh(String),
}

/// Why a client message was refused; `reason()` is sent back to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientError {
    NotJson,
    MissingOp,
    UnknownOp,
    InvalidRoom,
    TooManyRooms,
    Binary,
    MissingToken,
    InvalidSince,
}

impl ClientError {
    pub fn reason(self) -> &'static str {
        match self {
            ClientError::NotJson => "message is not a JSON object",
            ClientError::MissingOp => "missing \"op\"",
            ClientError::UnknownOp => "unknown op",
            ClientError::InvalidRoom => {
                "invalid room name (1-128 bytes of printable ASCII, no comma)"
            }
            ClientError::TooManyRooms => "too many rooms for this connection",
            ClientError::Binary => "binary messages are not part of the client protocol",
            ClientError::MissingToken => "missing \"token\"",
            ClientError::InvalidSince => {
                "invalid \"since\" (an object with a string \"epoch\" and an integer \"offset\" >= 0)"
            }
        }
    }
}

/// Parses one client text message.
pub fn parse(text: &[u8]) -> Result<ClientRequest, ClientError> {
    let value: Value = serde_json::from_slice(text).map_err(|_| ClientError::NotJson)?;
    let obj = value.as_object().ok_or(ClientError::NotJson)?;
    let op = obj
        .get("op")
        .and_then(Value::as_str)
        .ok_or(ClientError::MissingOp)?;
    let room = || -> Result<String, ClientError> {
        let room = obj
            .get("room")
            .and_then(Value::as_str)
            .ok_or(ClientError::InvalidRoom)?;
        if is_valid_name(room.as_bytes()) {
            Ok(room.to_string())
        } else {
            Err(ClientError::InvalidRoom)
        }
    };
    match op {
        "join" => {
            let since = match obj.get("since") {
                None | Some(Value::Null) => None,
                Some(s) => {
                    let epoch = s
                        .get("epoch")
                        .and_then(Value::as_str)
                        .filter(|e| crate::ws::handshake::is_valid_epoch(e))
                        .ok_or(ClientError::InvalidSince)?;
                    let offset = s
                        .get("offset")
                        .and_then(Value::as_u64)
                        .ok_or(ClientError::InvalidSince)?;
                    Some((epoch.to_string(), offset))
                }
            };
            Ok(ClientRequest::Join(room()?, since))
        }
        "leave" => Ok(ClientRequest::Leave(room()?)),
        "ping" => Ok(ClientRequest::Ping),
        "refresh" => obj
            .get("token")
            .and_then(Value::as_str)
            .map(|t| ClientRequest::Refresh(t.to_string()))
            .ok_or(ClientError::MissingToken),
        _ => Err(ClientError::UnknownOp),
    }
}

/// `{"op":"joined","room":...}` / `{"op":"left","room":...}`.
pub fn room_reply(op: &str, room: &str) -> String {
    format!(
        "{{\"op\":\"{op}\",\"room\":{}}}",
        Value::String(room.to_string())
    )
}

pub const PONG_REPLY: &str = "{\"op\":\"pong\"}";

/// `{"op":"refreshed","exp":...}`: the new token's `exp`.
pub fn refreshed_reply(exp: u64) -> String {
    format!("{{\"op\":\"refreshed\",\"exp\":{exp}}}")
}

/// `{"op":"error","reason":"forbidden","room":...}`: a join or leave not granted.
pub fn forbidden_reply(room: &str) -> String {
    format!(
        "{{\"op\":\"error\",\"reason\":\"forbidden\",\"room\":{}}}",
        Value::String(room.to_string())
    )
}

/// `{"op":"error","reason":...}` for a refused refresh (the connection keeps its
/// old token).
pub fn refresh_error_reply(reason: &str) -> String {
    format!(
        "{{\"op\":\"error\",\"reason\":{}}}",
        Value::String(format!("refresh refused: {reason}"))
    )
}

/// `{"op":"error","reason":...}`.
pub fn error_reply(err: ClientError) -> String {
    format!(
        "{{\"op\":\"error\",\"reason\":{}}}",
        Value::String(err.reason().to_string())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_requests() {
        assert_eq!(
            parse(br#"{"op":"join","room":"news"}"#),
            Ok(ClientRequest::Join("news".into(), None))
        );
        assert_eq!(
            parse(br#"{"op":"join","room":"news","since":{"epoch":"ab12","offset":41}}"#),
            Ok(ClientRequest::Join(
                "news".into(),
                Some(("ab12".into(), 41))
            ))
        );
        for bad in [
            &br#"{"op":"join","room":"news","since":{"offset":41}}"#[..],
            br#"{"op":"join","room":"news","since":{"epoch":"a b","offset":41}}"#,
            br#"{"op":"join","room":"news","since":{"epoch":"ab","offset":-1}}"#,
            br#"{"op":"join","room":"news","since":{"epoch":"ab","offset":1.5}}"#,
            br#"{"op":"join","room":"news","since":7}"#,
        ] {
            assert_eq!(parse(bad), Err(ClientError::InvalidSince));
        }
        assert_eq!(
            parse(br#"{"room":"news","op":"leave"}"#),
            Ok(ClientRequest::Leave("news".into()))
        );
        assert_eq!(parse(br#" {"op":"ping"} "#), Ok(ClientRequest::Ping));
        assert_eq!(
            parse(br#"{"op":"refresh","token":"a.b.c"}"#),
            Ok(ClientRequest::Refresh("a.b.c".into()))
        );
        assert_eq!(
            parse(br#"{"op":"refresh"}"#),
            Err(ClientError::MissingToken)
        );
    }

    #[test]
    fn refuses_everything_else_with_a_reason() {
        assert_eq!(parse(b"hello"), Err(ClientError::NotJson));
        assert_eq!(parse(b"[1,2]"), Err(ClientError::NotJson));
        assert_eq!(parse(br#"{"room":"x"}"#), Err(ClientError::MissingOp));
        assert_eq!(parse(br#"{"op":"dance"}"#), Err(ClientError::UnknownOp));
        assert_eq!(parse(br#"{"op":"join"}"#), Err(ClientError::InvalidRoom));
        assert_eq!(
            parse(br#"{"op":"join","room":"a b"}"#),
            Err(ClientError::InvalidRoom)
        );
        assert_eq!(
            parse(br#"{"op":"join","room":7}"#),
            Err(ClientError::InvalidRoom)
        );
    }

    #[test]
    fn replies_are_json_with_escaped_names() {
        assert_eq!(
            room_reply("joined", "news"),
            r#"{"op":"joined","room":"news"}"#
        );
        let v: Value = serde_json::from_str(&room_reply("left", r#"a"b\c"#)).unwrap();
        assert_eq!(v["room"], r#"a"b\c"#);
        let v: Value = serde_json::from_str(&error_reply(ClientError::UnknownOp)).unwrap();
        assert_eq!(v["op"], "error");
    }
}
