//! HTTP/1.1 requests as the API listener reads them: the head parsed with
//! `httparse`, the body framed by `Content-Length`, pipelined requests one at a time.
//!
//! Pure: bytes in, a request or a typed error out, no I/O. It must never panic on
//! any input and never buffer more than the limits allow: a head over `max_head`
//! or a declared body over `max_body` is refused as soon as that is known, before
//! the body arrives. Chunked bodies are refused with 411 (every backend HTTP
//! client sends a Content-Length for a body it has in memory), so a request's size
//! is always known from its head.

use crate::ws::handshake::hex_value as hex;

/// What one request may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Request line and headers together.
    pub max_head: usize,
    pub max_body: usize,
}

/// Headers looked at; more than this many is a 431.
const MAX_HEADERS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    /// Anything else (answered 405 by the router).
    Other,
}

/// One complete request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The path without the query, percent-decoding left to the router (the API's
    /// paths are ASCII).
    pub path: String,
    /// Query parameters, percent-decoded (`+` is a space); a name without `=` has
    /// an empty value.
    pub query: Vec<(String, String)>,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
    /// The `Authorization` header's value.
    pub authorization: Option<Vec<u8>>,
    /// `Content-Type` is `application/json` (parameters such as charset ignored).
    pub json: bool,
    pub body: Vec<u8>,
}

/// Why bytes are not a request; each has one status. After any of them the
/// connection is answered and closed (the stream position cannot be trusted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    /// Malformed request line, header, or Content-Length.
    Malformed(&'static str),
    /// Head longer than `max_head`, or too many headers.
    HeadTooLarge,
    /// Content-Length over `max_body`.
    BodyTooLarge,
    /// `Transfer-Encoding` (chunked) instead of a Content-Length.
    LengthRequired,
    /// Not HTTP/1.0 or 1.1.
    Version,
    /// A query parameter that is not valid UTF-8 once decoded.
    BadQuery,
}

impl RequestError {
    pub fn status(self) -> u16 {
        match self {
            RequestError::Malformed(_) | RequestError::BadQuery => 400,
            RequestError::HeadTooLarge => 431,
            RequestError::BodyTooLarge => 413,
            RequestError::LengthRequired => 411,
            RequestError::Version => 505,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            RequestError::Malformed(m) => m,
            RequestError::HeadTooLarge => "request head too large",
            RequestError::BodyTooLarge => "request body larger than --max-message allows",
            RequestError::LengthRequired => {
                "chunked bodies are not accepted: send a Content-Length"
            }
            RequestError::Version => "only HTTP/1.0 and HTTP/1.1 are spoken here",
            RequestError::BadQuery => "query parameter is not valid UTF-8 after decoding",
        }
    }
}

/// The result of looking at the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A request, and how many bytes it took.
    Complete(usize, Request),
    /// More bytes are needed. `expects_continue`: the head is complete and asks for
    /// `100 Continue` before its body is sent.
    Incomplete { expects_continue: bool },
}

/// Looks for one request at the start of `buf`.
pub fn parse(buf: &[u8], limits: Limits) -> Result<Parsed, RequestError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > limits.max_head {
                return Err(RequestError::HeadTooLarge);
            }
            return Ok(Parsed::Incomplete {
                expects_continue: false,
            });
        }
        Err(httparse::Error::TooManyHeaders) => return Err(RequestError::HeadTooLarge),
        Err(httparse::Error::Version) => return Err(RequestError::Version),
        Err(_) => return Err(RequestError::Malformed("malformed request head")),
    };
    if head_len > limits.max_head {
        return Err(RequestError::HeadTooLarge);
    }
    let version = req.version.unwrap_or(1);
    let method = match req.method.unwrap_or("") {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        _ => Method::Other,
    };
    let target = req.path.unwrap_or("");
    if !target.starts_with('/') {
        return Err(RequestError::Malformed("request target must be a path"));
    }
    let mut length: Option<usize> = None;
    let mut keep_alive = version == 1;
    let mut authorization = None;
    let mut json = false;
    let mut expects_continue = false;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .map(str::trim)
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<usize>().ok())
                .ok_or(RequestError::Malformed("malformed Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(RequestError::Malformed(
                    "conflicting Content-Length headers",
                ));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(RequestError::LengthRequired);
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let t = token.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("authorization") {
            authorization = Some(h.value.to_vec());
        } else if name.eq_ignore_ascii_case("content-type") {
            let media = h.value.split(|&b| b == b';').next().unwrap_or(b"");
            json = media.trim_ascii().eq_ignore_ascii_case(b"application/json");
        } else if name.eq_ignore_ascii_case("expect") {
            expects_continue = h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
    }
    let length = length.unwrap_or(0);
    if length > limits.max_body {
        return Err(RequestError::BodyTooLarge);
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, q),
        None => (target, ""),
    };
    let query = parse_query(query)?;
    let total = head_len.saturating_add(length);
    if buf.len() < total {
        return Ok(Parsed::Incomplete {
            expects_continue: expects_continue && version == 1,
        });
    }
    Ok(Parsed::Complete(
        total,
        Request {
            method,
            path: path.to_string(),
            query,
            keep_alive,
            authorization,
            json,
            body: buf[head_len..total].to_vec(),
        },
    ))
}

/// `a=1&b=x%20y` into decoded pairs.
fn parse_query(q: &str) -> Result<Vec<(String, String)>, RequestError> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

/// Percent-decoding of a query component; `+` is a space. A `%` not followed by
/// two hex digits stays as it is, like browsers do.
fn decode(s: &str) -> Result<String, RequestError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                b.get(i + 1).and_then(|&c| hex(c)),
                b.get(i + 2).and_then(|&c| hex(c)),
            ) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| RequestError::BadQuery)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: Limits = Limits {
        max_head: 1024,
        max_body: 64,
    };

    fn complete(buf: &[u8]) -> (usize, Request) {
        match parse(buf, LIMITS) {
            Ok(Parsed::Complete(n, r)) => (n, r),
            other => panic!("not complete: {other:?}"),
        }
    }

    #[test]
    fn a_post_with_a_body_and_a_decoded_query() {
        let raw = b"POST /api/publish?room=a%2Fb+c&x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Type: application/json; charset=utf-8\r\nAuthorization: Bearer k\r\n\r\nhelloGET";
        let (n, r) = complete(raw);
        assert_eq!(n, raw.len() - 3);
        assert_eq!(r.method, Method::Post);
        assert_eq!(r.path, "/api/publish");
        assert_eq!(
            r.query,
            vec![("room".into(), "a/b c".into()), ("x".into(), String::new())]
        );
        assert!(r.keep_alive && r.json);
        assert_eq!(r.authorization.as_deref(), Some(&b"Bearer k"[..]));
        assert_eq!(r.body, b"hello");
    }

    #[test]
    fn keep_alive_follows_the_version_and_the_connection_header() {
        let (_, r) = complete(b"GET / HTTP/1.0\r\n\r\n");
        assert!(!r.keep_alive);
        let (_, r) = complete(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(r.keep_alive);
        let (_, r) = complete(b"GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n");
        assert!(!r.keep_alive);
    }

    #[test]
    fn a_body_still_coming_is_incomplete_and_may_ask_to_continue() {
        let raw = b"POST /p HTTP/1.1\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\nabc";
        assert_eq!(
            parse(raw, LIMITS),
            Ok(Parsed::Incomplete {
                expects_continue: true
            })
        );
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost", LIMITS),
            Ok(Parsed::Incomplete {
                expects_continue: false
            })
        );
    }

    #[test]
    fn limits_and_framing_errors_have_their_status() {
        let big = b"POST / HTTP/1.1\r\nContent-Length: 65\r\n\r\n";
        assert_eq!(parse(big, LIMITS).map_err(RequestError::status), Err(413));
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            parse(chunked, LIMITS).map_err(RequestError::status),
            Err(411)
        );
        let two = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(parse(two, LIMITS).map_err(RequestError::status), Err(400));
        let signed = b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n";
        assert_eq!(
            parse(signed, LIMITS).map_err(RequestError::status),
            Err(400)
        );
        // Bytes that never end a head are refused once over the head limit.
        let long = vec![b'a'; 2000];
        assert_eq!(parse(&long, LIMITS).map_err(RequestError::status), Err(431));
        let garbage = b"\x16\x03\x01 hello\r\n\r\n";
        assert_eq!(
            parse(garbage, LIMITS).map_err(RequestError::status),
            Err(400)
        );
        let mut head = b"GET / HTTP/1.1\r\nX: ".to_vec();
        head.extend(vec![b'a'; 2000]);
        assert_eq!(parse(&head, LIMITS).map_err(RequestError::status), Err(431));
        let bad_utf8 = b"GET /?r=%ff HTTP/1.1\r\n\r\n";
        assert_eq!(
            parse(bad_utf8, LIMITS).map_err(RequestError::status),
            Err(400)
        );
        assert_eq!(
            parse(b"GET * HTTP/1.1\r\n\r\n", LIMITS).map_err(RequestError::status),
            Err(400)
        );
    }

    #[test]
    fn a_stray_percent_stays() {
        assert_eq!(decode("100%").as_deref(), Ok("100%"));
        assert_eq!(decode("%4").as_deref(), Ok("%4"));
        assert_eq!(decode("%41%62").as_deref(), Ok("Ab"));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse(&buf, LIMITS);
        }

        #[test]
        fn a_valid_head_with_arbitrary_query_never_panics(q in "[ -~]{0,64}", body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut raw = format!("POST /x?{} HTTP/1.1\r\nContent-Length: {}\r\n\r\n", q.replace(' ', "+"), body.len()).into_bytes();
            raw.extend(&body);
            if let Ok(Parsed::Complete(n, r)) = parse(&raw, LIMITS) {
                prop_assert_eq!(n, raw.len());
                prop_assert_eq!(r.body, body);
            }
        }
    }
}
