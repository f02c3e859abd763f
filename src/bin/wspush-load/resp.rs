//! A tiny RESP2 client for the control port: command encoding, a two-phase reply
//! parser (`Ok(None)` = incomplete, a normal case for pipelined non-blocking reads),
//! and a blocking one-shot `call` for PING/INFO.
//!
//! It is written independently of the server's `wspush::control` on purpose (a bug
//! shared by both sides would hide) and must never be used by the server.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One RESP2 reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    /// `None` is the null bulk string `$-1`.
    Bulk(Option<Vec<u8>>),
    /// `None` is the null array `*-1`.
    Array(Option<Vec<Reply>>),
}

/// Why a reply could not be parsed or a call failed.
#[derive(Debug)]
pub enum RespError {
    /// The first byte is not one of `+ - : $ *`.
    UnknownType(u8),
    /// A length or integer line is not a number.
    BadNumber(String),
    /// A bulk string is not followed by CRLF.
    MissingCrlf,
    /// Nesting deeper than we are willing to follow.
    TooDeep,
    Io(std::io::Error),
    /// The server closed the connection before a whole reply arrived.
    Closed,
}

impl std::fmt::Display for RespError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RespError::UnknownType(b) => write!(f, "unknown RESP type byte 0x{b:02x}"),
            RespError::BadNumber(s) => write!(f, "bad RESP number {s:?}"),
            RespError::MissingCrlf => write!(f, "bulk string not terminated by CRLF"),
            RespError::TooDeep => write!(f, "RESP reply nested too deeply"),
            RespError::Io(e) => write!(f, "control connection: {e}"),
            RespError::Closed => write!(f, "control connection closed mid-reply"),
        }
    }
}

impl From<std::io::Error> for RespError {
    fn from(e: std::io::Error) -> Self {
        RespError::Io(e)
    }
}

/// Appends `args` as a RESP array of bulk strings to `out`.
pub fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Parses one reply from the front of `buf`: `Ok(Some((reply, bytes consumed)))`, or
/// `Ok(None)` when more bytes are needed.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, RespError> {
    parse_at(buf, 0, 0)
}

const MAX_DEPTH: usize = 8;

fn line_at(buf: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(pos..)?;
    let end = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((&rest[..end], pos + end + 2))
}

fn number(line: &[u8]) -> Result<i64, RespError> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| RespError::BadNumber(String::from_utf8_lossy(line).into_owned()))
}

fn parse_at(buf: &[u8], pos: usize, depth: usize) -> Result<Option<(Reply, usize)>, RespError> {
    if depth > MAX_DEPTH {
        return Err(RespError::TooDeep);
    }
    let Some(&kind) = buf.get(pos) else {
        return Ok(None);
    };
    if !matches!(kind, b'+' | b'-' | b':' | b'$' | b'*') {
        return Err(RespError::UnknownType(kind));
    }
    let Some((line, next)) = line_at(buf, pos + 1) else {
        return Ok(None);
    };
    let text = || String::from_utf8_lossy(line).into_owned();
    match kind {
        b'+' => Ok(Some((Reply::Simple(text()), next))),
        b'-' => Ok(Some((Reply::Error(text()), next))),
        b':' => Ok(Some((Reply::Integer(number(line)?), next))),
        b'$' => {
            let len = number(line)?;
            if len < 0 {
                return Ok(Some((Reply::Bulk(None), next)));
            }
            let len = len as usize;
            let end = next.saturating_add(len);
            if buf.len() < end.saturating_add(2) {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(RespError::MissingCrlf);
            }
            Ok(Some((Reply::Bulk(Some(buf[next..end].to_vec())), end + 2)))
        }
        _ => {
            let n = number(line)?;
            if n < 0 {
                return Ok(Some((Reply::Array(None), next)));
            }
            let mut items = Vec::new();
            let mut at = next;
            for _ in 0..n {
                match parse_at(buf, at, depth + 1)? {
                    Some((item, after)) => {
                        items.push(item);
                        at = after;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array(Some(items)), at)))
        }
    }
}

/// Sends one command on a fresh connection and waits (at most `timeout`) for its reply.
pub fn call(addr: SocketAddr, args: &[&[u8]], timeout: Duration) -> Result<Reply, RespError> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut out = Vec::new();
    encode_command(&mut out, args);
    s.write_all(&out)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some((reply, _)) = parse_reply(&buf)? {
            return Ok(reply);
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(RespError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `key:value` pairs of an INFO bulk string (section headers and blank lines skipped).
pub fn info_fields(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The integer value of `key` in INFO output, if present and numeric.
pub fn info_u64(fields: &[(String, String)], key: &str) -> Option<u64> {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn one(buf: &[u8]) -> (Reply, usize) {
        match parse_reply(buf) {
            Ok(Some(r)) => r,
            other => panic!("expected a whole reply from {buf:?}, got {other:?}"),
        }
    }

    #[test]
    fn command_is_an_array_of_bulk_strings() {
        let mut out = Vec::new();
        encode_command(&mut out, &[b"PUBLISH", b"room-0", b"1 2 x"]);
        assert_eq!(
            out,
            b"*3\r\n$7\r\nPUBLISH\r\n$6\r\nroom-0\r\n$5\r\n1 2 x\r\n".to_vec()
        );
    }

    #[test]
    fn simple_string_reply_pong() {
        assert_eq!(one(b"+PONG\r\n"), (Reply::Simple("PONG".into()), 7));
    }

    #[test]
    fn error_reply_keeps_its_message() {
        assert_eq!(
            one(b"-ERR unknown command\r\n").0,
            Reply::Error("ERR unknown command".into())
        );
    }

    #[test]
    fn integer_reply_is_the_recipient_count() {
        assert_eq!(one(b":1000\r\n"), (Reply::Integer(1000), 7));
        assert_eq!(one(b":-3\r\n").0, Reply::Integer(-3));
    }

    #[test]
    fn bulk_string_may_contain_crlf() {
        let (r, n) = one(b"$12\r\na:1\r\nb:2\r\nxy\r\n");
        assert_eq!(r, Reply::Bulk(Some(b"a:1\r\nb:2\r\nxy".to_vec())));
        assert_eq!(n, 19);
    }

    #[test]
    fn null_bulk_and_null_array() {
        assert_eq!(one(b"$-1\r\n").0, Reply::Bulk(None));
        assert_eq!(one(b"*-1\r\n").0, Reply::Array(None));
    }

    #[test]
    fn nested_array() {
        let (r, _) = one(b"*2\r\n:1\r\n*1\r\n+OK\r\n");
        assert_eq!(
            r,
            Reply::Array(Some(vec![
                Reply::Integer(1),
                Reply::Array(Some(vec![Reply::Simple("OK".into())]))
            ]))
        );
    }

    #[test]
    fn every_proper_prefix_is_incomplete_not_an_error() {
        let whole = b"*3\r\n$3\r\nabc\r\n:42\r\n-ERR x\r\n";
        for cut in 0..whole.len() {
            assert!(
                matches!(parse_reply(&whole[..cut]), Ok(None)),
                "prefix of {cut} bytes"
            );
        }
        assert_eq!(one(whole).1, whole.len());
    }

    #[test]
    fn pipelined_replies_parse_one_after_another() {
        let buf = b":1\r\n:2\r\n+PONG\r\n";
        let (a, n) = one(buf);
        let (b, m) = one(&buf[n..]);
        let (c, _) = one(&buf[n + m..]);
        assert_eq!(
            (a, b, c),
            (
                Reply::Integer(1),
                Reply::Integer(2),
                Reply::Simple("PONG".into())
            )
        );
    }

    #[test]
    fn unknown_type_byte_is_an_error() {
        assert!(matches!(
            parse_reply(b"!x\r\n"),
            Err(RespError::UnknownType(b'!'))
        ));
    }

    #[test]
    fn non_numeric_integer_is_an_error() {
        assert!(matches!(
            parse_reply(b":abc\r\n"),
            Err(RespError::BadNumber(_))
        ));
    }

    #[test]
    fn bulk_without_trailing_crlf_is_an_error() {
        assert!(matches!(
            parse_reply(b"$2\r\nabXY"),
            Err(RespError::MissingCrlf)
        ));
    }

    #[test]
    fn info_fields_skip_section_headers() {
        let f = info_fields("# Stats\r\ndeliveries:10\r\nwritev_calls:4\r\n\r\n");
        assert_eq!(info_u64(&f, "deliveries"), Some(10));
        assert_eq!(info_u64(&f, "writev_calls"), Some(4));
        assert_eq!(info_u64(&f, "missing"), None);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_reply(&bytes);
        }

        #[test]
        fn bulk_strings_round_trip(payload in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut out = Vec::new();
            encode_command(&mut out, &[&payload]);
            // The command is `*1` followed by exactly the bulk string reply form.
            let (r, n) = one(&out[4..]);
            prop_assert_eq!(r, Reply::Bulk(Some(payload)));
            prop_assert_eq!(n + 4, out.len());
        }
    }
}
