//! The opening handshake (RFC 6455 §4.2), plus the `/healthz` probe that shares
//! the listening port.
//!
//! Bytes of the request head in, a verdict out: an upgrade (with the accept key,
//! user and rooms from the query string), a health probe, "need more bytes", or a
//! typed error that knows its own HTTP response. The head is parsed with
//! `httparse` into headers on the stack. Must never panic on any input and never
//! read beyond `MAX_HEAD` bytes.
//!
//! Decisions the RFC leaves open, made here once:
//! - Checks run in this order: HTTP syntax and size, HTTP/1.1 (1.0 → 400),
//!   path (unknown → 404, so a plain `GET /other` is a 404), method (not GET →
//!   405 with `Allow: GET`), exactly one `Host` (→ 400), then for the WebSocket
//!   path only: `Upgrade`/`Connection` tokens (a plain `GET /ws` → 400: a browser
//!   that is not asking for a WebSocket gains nothing from 426), version (→ 426,
//!   checked before the key so a client speaking another version learns which
//!   one to speak), key, origin (→ 403), query (→ 400).
//! - The path is compared exactly with the configured one (no trailing-slash or
//!   case folding); only origin-form targets (`/ws?…`) are recognised, so an
//!   absolute-form `GET http://host/ws` is a 404.
//! - `Sec-WebSocket-Key` and `Sec-WebSocket-Version` may appear only once
//!   (RFC 6455 §11.3.1, §11.3.5); a repeat is malformed (400). A missing version
//!   is answered like a wrong one (426).
//! - Origin: with a non-empty allow-list every `Origin` header must match one
//!   pattern; a request without `Origin` is allowed, because only browsers send
//!   it and the check exists to stop other sites' pages, not other programs.
//! - Query: `user=ID` and `rooms=a,b`; the rooms list is split on literal commas
//!   first, then each piece is percent-decoded (so `%2C` never separates and,
//!   decoded, makes the name invalid). `+` is a literal `+`, not a space (names
//!   cannot contain spaces anyway). Repeated `rooms=` keys add up; duplicate rooms
//!   are dropped (first occurrence order kept); an empty `rooms=` means none; a
//!   second `user=` is an error (a connection has one identity). Unknown keys are
//!   ignored untouched.
//! - Token (for authentication, checked by the reactor): `token=` in the query
//!   (browsers cannot set headers on a WebSocket) or `Authorization: Bearer …`. It
//!   is taken as it stands (JWTs are base64url and dots: nothing to decode); two
//!   `token=` keys, two `Authorization` headers, or both forms at once are a 400, so
//!   a proxy cannot slip a second credential past the first.
//! - The only subprotocol is `wspush.v1`, the only extension permessage-deflate
//!   (negotiated by `extension`: a bad offer is declined, never a failed handshake);
//!   the reactor decides whether to take the agreement (`--compression`).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha1::{Digest, Sha1};

use crate::names::{is_valid_name, MAX_NAME_LEN};

/// The longest request head accepted, in bytes; longer is a 431.
pub const MAX_HEAD: usize = 8192;

/// The health-check path, answered on the WebSocket port.
pub const HEALTH_PATH: &str = "/healthz";
/// The readiness probe: like `/healthz`, and 503 too while a cluster node has lost
/// its broker (a balancer should send new clients elsewhere).
pub const READY_PATH: &str = "/readyz";

/// Headers parsed per request, on the stack. Browsers send about 15; proxies add a
/// few. More is answered with 431 like an oversized head.
const MAX_HEADERS: usize = 64;

/// RFC 6455 §1.3: appended to the client's key before hashing.
const WEBSOCKET_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// One entry of the origin allow-list.
///
/// - `https://app.example.com` (any `scheme://host[:port]`, no path): that exact
///   origin, compared case-insensitively.
/// - `*.example.com`: any origin whose host is a subdomain of `example.com`
///   (`https://a.example.com`, `http://a.b.example.com:8443`), any scheme, any
///   port. `example.com` itself does not match; list it separately.
/// - `*`: any origin (same as an empty list, accepted because operators write it).
/// - `null`: the literal `Origin: null` of sandboxed frames and `file://` pages.
#[derive(Clone, Debug)]
pub struct OriginPattern(OriginRule);

#[derive(Clone, Debug)]
enum OriginRule {
    Any,
    /// Lowercased full origin.
    Exact(String),
    /// Lowercased host suffix including its leading dot: `.example.com`.
    Subdomain(String),
}

impl OriginPattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "*" {
            return Ok(Self(OriginRule::Any));
        }
        if s == "null" {
            return Ok(Self(OriginRule::Exact(s.to_owned())));
        }
        if let Some(domain) = s.strip_prefix("*.") {
            if !is_host(domain) || domain.starts_with('.') || domain.ends_with('.') {
                return Err(format!(
                    "origin pattern {s:?}: expected *.domain, e.g. *.example.com"
                ));
            }
            return Ok(Self(OriginRule::Subdomain(format!(
                ".{}",
                domain.to_ascii_lowercase()
            ))));
        }
        if origin_host(s).is_none() {
            return Err(format!(
                "origin {s:?}: expected scheme://host[:port] without a path, *.domain or *"
            ));
        }
        Ok(Self(OriginRule::Exact(s.to_ascii_lowercase())))
    }

    /// Does the value of an `Origin` header match this pattern?
    pub fn matches(&self, origin: &str) -> bool {
        let origin = origin.trim();
        match &self.0 {
            OriginRule::Any => true,
            OriginRule::Exact(exact) => origin.eq_ignore_ascii_case(exact),
            OriginRule::Subdomain(suffix) => origin_host(origin).is_some_and(|host| {
                let (host, suffix) = (host.as_bytes(), suffix.as_bytes());
                host.len() > suffix.len()
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }),
        }
    }
}

/// The host of a serialized origin `scheme://host[:port]`, or `None` if it is not
/// one. A bracketed IPv6 literal is returned with its brackets, so it can never
/// end with a `*.domain` suffix.
fn origin_host(origin: &str) -> Option<&str> {
    let (scheme, authority) = origin.split_once("://")?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    if !scheme_ok {
        return None;
    }
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')? + 1;
        let (host, rest) = authority.split_at(end);
        let literal_ok = host[1..end - 1]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        if !literal_ok || end == 2 {
            return None;
        }
        match rest {
            "" => (host, None),
            _ => (host, Some(rest.strip_prefix(':')?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (is_host(host).then_some(host)?, Some(port)),
            None => (is_host(authority).then_some(authority)?, None),
        }
    };
    match port {
        Some(port) if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) => None,
        _ => Some(host),
    }
}

/// A DNS name or IPv4 address as it appears in an origin: letters, digits, `-`, `.`.
fn is_host(s: &str) -> bool {
    !s.is_empty()
        && !s.contains("..")
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// What the handshake needs from the configuration.
#[derive(Clone, Debug)]
pub struct HandshakeConfig {
    /// The WebSocket path, e.g. `/ws`; compared exactly (case and trailing slash).
    pub path: String,
    /// Allowed origins; empty = any.
    pub allow_origins: Vec<OriginPattern>,
    /// Most rooms an upgrade request may join at once through `rooms=`.
    pub max_rooms: usize,
    /// Keep `X-Forwarded-For` and `Forwarded` headers in the upgrade (trusted
    /// proxies are configured).
    pub forwarded_headers: bool,
    /// Paths other than the WebSocket one that are answered with a page or file
    /// (`--demo`): `GET` of one of them is [`Request::Asset`].
    pub assets: fn(&str) -> bool,
}

/// No assets (the default).
pub fn no_assets(_: &str) -> bool {
    false
}

/// A complete, valid request head.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    Upgrade(Upgrade),
    /// `GET /healthz`: answer with [`health_response`] and close.
    Health,
    /// `GET /readyz`: answered from the threads' and the broker's state, then closed.
    Ready,
    /// `GET` of an asset path (the demo page and its scripts), then closed.
    Asset(String),
}

/// An accepted WebSocket upgrade.
#[derive(Debug, PartialEq, Eq)]
pub struct Upgrade {
    /// The `Sec-WebSocket-Accept` value for [`upgrade_response`].
    pub accept: String,
    /// `user=` from the query string.
    pub user: Option<String>,
    /// `rooms=` from the query string: valid names, deduplicated, in request order.
    pub rooms: Vec<String>,
    /// `token=` from the query string, or the `Authorization: Bearer` credential.
    pub token: Option<String>,
    /// `X-Forwarded-For` / `Forwarded` headers (name, value), in order, when
    /// `HandshakeConfig::forwarded_headers` asks for them.
    pub forwarded: Vec<(String, Vec<u8>)>,
    /// The client offered the `wspush.v1` subprotocol (JSON envelopes with positions);
    /// the 101 then names it.
    pub v1: bool,
    /// `recover=room:EPOCH:OFFSET,…`: the last position the client saw in rooms it
    /// also names in `rooms=`.
    pub recover: Vec<Since>,
    /// The client's acceptable permessage-deflate offer, if it made one.
    pub deflate: Option<super::extension::Agreement>,
}

/// The subprotocol of JSON envelopes with positions.
pub const SUBPROTOCOL_V1: &str = "wspush.v1";

/// The longest epoch a client may present.
pub const MAX_EPOCH_LEN: usize = 64;

/// Where a client last was in a room: recover what it missed after this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since {
    pub room: String,
    pub epoch: String,
    pub offset: u64,
}

/// Whether `e` can be an epoch: 1 to 64 of `[A-Za-z0-9._-]` (ours are hex; the
/// cluster's may carry a Redis stream id).
pub fn is_valid_epoch(e: &str) -> bool {
    !e.is_empty()
        && e.len() <= MAX_EPOCH_LEN
        && e.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Why a request head is refused. Each maps to one HTTP response, here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// Not parseable as an HTTP/1.1 request head (also HTTP/1.0, repeated Host,
    /// Sec-WebSocket-Key or Sec-WebSocket-Version).
    Malformed,
    /// Not GET.
    MethodNotAllowed,
    /// The WebSocket path without `Upgrade: websocket` and `Connection: upgrade`.
    NotUpgrade,
    MissingHost,
    MissingKey,
    /// `Sec-WebSocket-Key` is not base64 of exactly 16 bytes.
    BadKey,
    /// `Sec-WebSocket-Version` missing or not 13.
    VersionUnsupported,
    OriginForbidden,
    NotFound,
    /// `MAX_HEAD` bytes without the end of the head, or too many headers.
    HeadTooLarge,
    /// Never returned by [`parse_request`]: the reactor's connection limit.
    AtCapacity,
    /// Invalid user/room name, too many rooms, bad percent-encoding.
    BadQuery,
}

impl HandshakeError {
    pub fn status(self) -> u16 {
        match self {
            Self::Malformed
            | Self::NotUpgrade
            | Self::MissingHost
            | Self::MissingKey
            | Self::BadKey
            | Self::BadQuery => 400,
            Self::OriginForbidden => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::VersionUnsupported => 426,
            Self::HeadTooLarge => 431,
            Self::AtCapacity => 503,
        }
    }

    /// Short label for stats.
    /// Every variant (for per-reason statistics).
    pub const ALL: [HandshakeError; 12] = [
        HandshakeError::Malformed,
        HandshakeError::MethodNotAllowed,
        HandshakeError::NotUpgrade,
        HandshakeError::MissingHost,
        HandshakeError::MissingKey,
        HandshakeError::BadKey,
        HandshakeError::VersionUnsupported,
        HandshakeError::OriginForbidden,
        HandshakeError::NotFound,
        HandshakeError::HeadTooLarge,
        HandshakeError::AtCapacity,
        HandshakeError::BadQuery,
    ];

    pub fn reason(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::MethodNotAllowed => "method",
            Self::NotUpgrade => "not_upgrade",
            Self::MissingHost => "host",
            Self::MissingKey => "key_missing",
            Self::BadKey => "key",
            Self::VersionUnsupported => "version",
            Self::OriginForbidden => "origin",
            Self::NotFound => "not_found",
            Self::HeadTooLarge => "head_too_large",
            Self::AtCapacity => "capacity",
            Self::BadQuery => "query",
        }
    }

    /// One line for a human reading the response body.
    pub fn message(self) -> &'static str {
        match self {
            Self::Malformed => "malformed HTTP/1.1 request",
            Self::MethodNotAllowed => "method not allowed, use GET",
            Self::NotUpgrade => "expected a WebSocket upgrade (Upgrade: websocket, Connection: Upgrade)",
            Self::MissingHost => "missing Host header",
            Self::MissingKey => "missing Sec-WebSocket-Key header",
            Self::BadKey => "Sec-WebSocket-Key must be 16 bytes, base64-encoded",
            Self::VersionUnsupported => "unsupported WebSocket version, use 13",
            Self::OriginForbidden => "origin not allowed",
            Self::NotFound => "not found",
            Self::HeadTooLarge => "request head too large (at most 8192 bytes, 64 headers)",
            Self::AtCapacity => "server at connection limit, try again later",
            Self::BadQuery => "invalid query: user and rooms must be valid names (1-128 printable ASCII bytes, no comma), within the room limit",
        }
    }

    /// Complete HTTP/1.1 response: status line, `Content-Type: text/plain`,
    /// `Content-Length`, `Connection: close`, for 426 also `Sec-WebSocket-Version: 13`,
    /// for 405 `Allow: GET`, and a one-line plain-text body saying what was wrong.
    pub fn response(self) -> Vec<u8> {
        let extra = match self {
            Self::VersionUnsupported => "Sec-WebSocket-Version: 13\r\n",
            Self::MethodNotAllowed => "Allow: GET\r\n",
            _ => "",
        };
        error_response(self.status(), extra, self.message())
    }
}

/// A complete HTTP/1.1 error response: status line, `Content-Type: text/plain`,
/// `Content-Length`, `Connection: close`, the `extra` header lines (each ending in
/// CRLF), and `body` plus a newline.
pub fn error_response(status: u16, extra: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}\n",
        status_text(status),
        body.len() + 1,
    )
    .into_bytes()
}

fn status_text(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// `Ok(None)`: head incomplete (and shorter than `MAX_HEAD`). `Err(HeadTooLarge)` once
/// `MAX_HEAD` bytes arrived without the end of the head. `Ok(Some((request, head_len)))`:
/// bytes after `head_len` are the client's first frame bytes (pipelined).
pub fn parse_request(
    buf: &[u8],
    cfg: &HandshakeConfig,
) -> Result<Option<(Request, usize)>, HandshakeError> {
    let window = &buf[..buf.len().min(MAX_HEAD)];
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if window.len() >= MAX_HEAD => {
            return Err(HandshakeError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::HeadTooLarge),
        Err(_) => return Err(HandshakeError::Malformed),
    };
    if req.version != Some(1) {
        return Err(HandshakeError::Malformed);
    }
    let target = req.path.ok_or(HandshakeError::Malformed)?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let probe = if path == cfg.path {
        None
    } else if path == HEALTH_PATH {
        Some(Request::Health)
    } else if path == READY_PATH {
        Some(Request::Ready)
    } else if (cfg.assets)(path) {
        Some(Request::Asset(path.to_string()))
    } else {
        return Err(HandshakeError::NotFound);
    };
    if req.method != Some("GET") {
        return Err(HandshakeError::MethodNotAllowed);
    }
    match req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"))
        .count()
    {
        0 => return Err(HandshakeError::MissingHost),
        1 => {}
        _ => return Err(HandshakeError::Malformed),
    }
    if let Some(probe) = probe {
        return Ok(Some((probe, head_len)));
    }
    let upgrade = check_upgrade(req.headers, query, cfg)?;
    Ok(Some((Request::Upgrade(upgrade), head_len)))
}

/// The WebSocket-specific checks, in the order the module comment gives.
fn check_upgrade(
    headers: &[httparse::Header<'_>],
    query: &str,
    cfg: &HandshakeConfig,
) -> Result<Upgrade, HandshakeError> {
    let mut upgrade_websocket = false;
    let mut connection_upgrade = false;
    let mut versions = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-version"));
    let mut keys = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-key"));
    for h in headers {
        if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade_websocket |= has_token(h.value, b"websocket");
        } else if h.name.eq_ignore_ascii_case("connection") {
            connection_upgrade |= has_token(h.value, b"upgrade");
        }
    }
    if !(upgrade_websocket && connection_upgrade) {
        return Err(HandshakeError::NotUpgrade);
    }

    let version = versions.next().ok_or(HandshakeError::VersionUnsupported)?;
    if versions.next().is_some() {
        return Err(HandshakeError::Malformed);
    }
    if trim_ows(version.value) != b"13" {
        return Err(HandshakeError::VersionUnsupported);
    }

    let key = keys.next().ok_or(HandshakeError::MissingKey)?;
    if keys.next().is_some() {
        return Err(HandshakeError::Malformed);
    }
    let key = trim_ows(key.value);
    if !is_valid_key(key) {
        return Err(HandshakeError::BadKey);
    }

    if !cfg.allow_origins.is_empty() {
        let forbidden = headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("origin"))
            .any(|h| {
                !std::str::from_utf8(h.value)
                    .is_ok_and(|origin| cfg.allow_origins.iter().any(|p| p.matches(origin)))
            });
        if forbidden {
            return Err(HandshakeError::OriginForbidden);
        }
    }

    let q = parse_query(query, cfg.max_rooms)?;
    let v1 = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-protocol"))
        .any(|h| {
            h.value
                .split(|&b| b == b',')
                .any(|t| trim_ows(t) == SUBPROTOCOL_V1.as_bytes())
        });
    let deflate = super::extension::negotiate(
        headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-extensions"))
            .map(|h| h.value),
    );
    let mut bearer = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("authorization") {
            if bearer.is_some() {
                return Err(HandshakeError::BadQuery);
            }
            bearer = Some(bearer_token(h.value)?);
        }
    }
    let token = match (q.token, bearer) {
        (Some(_), Some(_)) => return Err(HandshakeError::BadQuery),
        (t, b) => t.or(b),
    };
    let forwarded = if cfg.forwarded_headers {
        headers
            .iter()
            .filter(|h| {
                h.name.eq_ignore_ascii_case("x-forwarded-for")
                    || h.name.eq_ignore_ascii_case("forwarded")
            })
            .map(|h| (h.name.to_string(), h.value.to_vec()))
            .collect()
    } else {
        Vec::new()
    };
    Ok(Upgrade {
        accept: accept_key(key),
        user: q.user,
        rooms: q.rooms,
        token,
        forwarded,
        v1,
        recover: q.recover,
        deflate,
    })
}

/// The credential of `Authorization: Bearer <token>` (RFC 6750 §2.1).
fn bearer_token(value: &[u8]) -> Result<String, HandshakeError> {
    let v = trim_ows(value);
    let scheme = b"bearer ";
    if v.len() <= scheme.len() || !v[..scheme.len()].eq_ignore_ascii_case(scheme) {
        return Err(HandshakeError::BadQuery);
    }
    let t = trim_ows(&v[scheme.len()..]);
    if t.is_empty() || !t.iter().all(|&b| b.is_ascii_graphic()) {
        return Err(HandshakeError::BadQuery);
    }
    String::from_utf8(t.to_vec()).map_err(|_| HandshakeError::BadQuery)
}

/// What the query string names.
struct Query {
    user: Option<String>,
    rooms: Vec<String>,
    token: Option<String>,
    recover: Vec<Since>,
}

/// RFC 6455 §4.1: the key is base64 of 16 random bytes, i.e. 24 characters.
fn is_valid_key(key: &[u8]) -> bool {
    // 24 base64 characters decode to at most 18 bytes.
    let mut decoded = [0u8; 18];
    key.len() == 24 && BASE64.decode_slice(key, &mut decoded) == Ok(16)
}

/// Does a comma-separated header value contain `token` (case-insensitive)?
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| trim_ows(t).eq_ignore_ascii_case(token))
}

/// Strips HTTP optional whitespace (spaces and tabs) from both ends.
fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// `user=` and `rooms=` from the query string (rules in the module comment).
/// The dedupe is quadratic but bounded by `max_rooms` per name and by the head
/// size in names.
fn parse_query(query: &str, max_rooms: usize) -> Result<Query, HandshakeError> {
    let mut user = None;
    let mut token = None;
    let mut rooms: Vec<String> = Vec::new();
    let mut recover: Option<&str> = None;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "user" => {
                if user.is_some() {
                    return Err(HandshakeError::BadQuery);
                }
                user = Some(decode_name(value)?);
            }
            "token" => {
                if token.is_some()
                    || value.is_empty()
                    || !value.bytes().all(|b| b.is_ascii_graphic())
                {
                    return Err(HandshakeError::BadQuery);
                }
                token = Some(value.to_string());
            }
            "rooms" if value.is_empty() => {}
            "rooms" => {
                for raw in value.split(',') {
                    let room = decode_name(raw)?;
                    if rooms.contains(&room) {
                        continue;
                    }
                    if rooms.len() >= max_rooms {
                        return Err(HandshakeError::BadQuery);
                    }
                    rooms.push(room);
                }
            }
            "recover" if recover.is_some() => return Err(HandshakeError::BadQuery),
            "recover" => recover = Some(value),
            _ => {}
        }
    }
    let recover = match recover {
        None | Some("") => Vec::new(),
        Some(list) => parse_recover(list, &rooms)?,
    };
    Ok(Query {
        user,
        rooms,
        token,
        recover,
    })
}

/// `room:EPOCH:OFFSET,…`, each room among `rooms` and named once. Room names may
/// hold `:`, so each item is split at its last two colons.
fn parse_recover(list: &str, rooms: &[String]) -> Result<Vec<Since>, HandshakeError> {
    let mut out: Vec<Since> = Vec::new();
    for item in list.split(',') {
        let mut parts = item.rsplitn(3, ':');
        let (Some(offset), Some(epoch), Some(room)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(HandshakeError::BadQuery);
        };
        let room = decode_name(room)?;
        let offset: u64 = offset.parse().map_err(|_| HandshakeError::BadQuery)?;
        if !is_valid_epoch(epoch) || !rooms.contains(&room) || out.iter().any(|s| s.room == room) {
            return Err(HandshakeError::BadQuery);
        }
        out.push(Since {
            room,
            epoch: epoch.to_string(),
            offset,
        });
    }
    Ok(out)
}

/// Percent-decodes one user or room name and checks it against the name rule.
fn decode_name(raw: &str) -> Result<String, HandshakeError> {
    let raw = raw.as_bytes();
    // Every decoded byte takes at most 3 encoded ones; longer is surely too long.
    if raw.len() > 3 * MAX_NAME_LEN {
        return Err(HandshakeError::BadQuery);
    }
    let mut name = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        if b == b'%' {
            let hi = raw.get(i + 1).and_then(|&c| hex_value(c));
            let lo = raw.get(i + 2).and_then(|&c| hex_value(c));
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(HandshakeError::BadQuery);
            };
            name.push((hi << 4) | lo);
            i += 3;
        } else {
            name.push(b);
            i += 1;
        }
    }
    if !is_valid_name(&name) {
        return Err(HandshakeError::BadQuery);
    }
    String::from_utf8(name).map_err(|_| HandshakeError::BadQuery)
}

/// The value of one hexadecimal digit.
pub fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// `Sec-WebSocket-Accept` for a client key (RFC 6455 §4.2.2):
/// base64(sha1(key ++ GUID)).
pub fn accept_key(key: &[u8]) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(WEBSOCKET_GUID);
    BASE64.encode(sha1.finalize())
}

/// The 101 Switching Protocols response without an extension; the `wspush.v1`
/// subprotocol when the client offered it.
pub fn upgrade_response(accept: &str, v1: bool) -> Vec<u8> {
    upgrade_response_with(accept, v1, None)
}

/// `upgrade_response` naming the permessage-deflate agreement taken, if any.
///
/// Built at its exact size, so the reactor's `into_boxed_slice` keeps the buffer
/// instead of copying it (this runs once per handshake).
pub fn upgrade_response_with(
    accept: &str,
    v1: bool,
    deflate: Option<&super::extension::Agreement>,
) -> Vec<u8> {
    const HEAD: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ";
    let protocol: &[u8] = if v1 {
        b"Sec-WebSocket-Protocol: wspush.v1\r\n"
    } else {
        b""
    };
    let extensions = deflate.map(|a| a.response_header()).unwrap_or_default();
    let parts = [
        HEAD,
        accept.as_bytes(),
        b"\r\n",
        protocol,
        extensions.as_bytes(),
        b"\r\n",
    ];
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

/// The answer to `GET /readyz` when ready: 200, body `ready\n`, then close.
pub fn ready_response() -> &'static [u8] {
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\nConnection: close\r\n\r\nready\n"
}

/// The answer to `GET /healthz`: 200, body `ok\n`, then close.
pub fn health_response() -> &'static [u8] {
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    fn cfg() -> HandshakeConfig {
        HandshakeConfig {
            path: "/ws".into(),
            allow_origins: Vec::new(),
            max_rooms: 4,
            forwarded_headers: false,
            assets: no_assets,
        }
    }

    fn cfg_with_origins(patterns: &[&str]) -> HandshakeConfig {
        HandshakeConfig {
            allow_origins: patterns
                .iter()
                .map(|p| OriginPattern::parse(p).unwrap())
                .collect(),
            ..cfg()
        }
    }

    /// A request for `target` with the standard upgrade headers plus `extra` lines.
    fn request(target: &str, extra: &str) -> Vec<u8> {
        format!(
            "GET {target} HTTP/1.1\r\nHost: push.example.com\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\
             {extra}\r\n"
        )
        .into_bytes()
    }

    /// A request with exactly the given header lines.
    fn raw(request_line: &str, headers: &[&str]) -> Vec<u8> {
        let mut s = format!("{request_line}\r\n");
        for h in headers {
            s.push_str(h);
            s.push_str("\r\n");
        }
        s.push_str("\r\n");
        s.into_bytes()
    }

    const UPGRADE_HEADERS: [&str; 5] = [
        "Host: h",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ];

    /// The upgrade headers with `name` replaced by `replacement` lines (or removed).
    fn headers_with(name: &str, replacement: &[&'static str]) -> Vec<&'static str> {
        let mut hs: Vec<&str> = UPGRADE_HEADERS
            .iter()
            .copied()
            .filter(|h| !h.starts_with(name))
            .collect();
        hs.extend_from_slice(replacement);
        hs
    }

    fn upgrade(buf: &[u8], cfg: &HandshakeConfig) -> Result<Upgrade, HandshakeError> {
        match parse_request(buf, cfg)? {
            Some((Request::Upgrade(u), _)) => Ok(u),
            other => panic!("expected an upgrade, got {other:?}"),
        }
    }

    fn err(buf: &[u8], cfg: &HandshakeConfig) -> HandshakeError {
        parse_request(buf, cfg).unwrap_err()
    }

    #[test]
    fn accept_key_matches_rfc_6455_sample() {
        assert_eq!(accept_key(KEY.as_bytes()), ACCEPT);
    }

    #[test]
    fn accepts_rfc_4_2_1_sample_browser_request() {
        let buf = b"GET /ws HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n\
            Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
            Origin: http://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\n\
            Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
            Sec-WebSocket-Version: 13\r\n\r\n";
        let (req, n) = parse_request(buf, &cfg()).unwrap().unwrap();
        assert_eq!(n, buf.len());
        assert_eq!(
            req,
            Request::Upgrade(Upgrade {
                accept: ACCEPT.into(),
                user: None,
                rooms: vec![],
                token: None,
                forwarded: vec![],
                v1: false,
                recover: vec![],
                deflate: Some(crate::ws::extension::Agreement {
                    server_window_bits: 15,
                    server_window_limited: false,
                }),
            })
        );
    }

    #[test]
    fn chooses_wspush_v1_only_when_offered_and_names_it_in_the_101() {
        let u = upgrade_with("Sec-WebSocket-Protocol: chat, wspush.v1\r\n", "").unwrap();
        assert!(u.v1);
        let u = upgrade_with(
            "Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Protocol: wspush.v1\r\n",
            "",
        )
        .unwrap();
        assert!(u.v1, "the offer may span several header lines");
        for other in ["chat", "WSPUSH.V1", "wspush.v2", "wspush.v1x"] {
            let u = upgrade_with(&format!("Sec-WebSocket-Protocol: {other}\r\n"), "").unwrap();
            assert!(!u.v1, "{other}");
        }
        let resp = String::from_utf8(upgrade_response(ACCEPT, true)).unwrap();
        assert!(resp.contains("\r\nSec-WebSocket-Protocol: wspush.v1\r\n"));
        assert!(resp.ends_with("\r\n\r\n"));
        let resp = String::from_utf8(upgrade_response(ACCEPT, false)).unwrap();
        assert!(!resp.contains("Sec-WebSocket-Protocol"));
    }

    #[test]
    fn recover_names_positions_in_rooms_of_the_request() {
        let u = upgrade_with("", "?rooms=news,a:b&recover=news:0f1e:41,a:b:ep-1.x:0").unwrap();
        assert_eq!(
            u.recover,
            vec![
                Since {
                    room: "news".into(),
                    epoch: "0f1e".into(),
                    offset: 41
                },
                Since {
                    room: "a:b".into(),
                    epoch: "ep-1.x".into(),
                    offset: 0
                },
            ]
        );
        assert_eq!(
            upgrade_with("", "?rooms=news&recover=").unwrap().recover,
            vec![]
        );
    }

    #[test]
    fn rejects_recover_of_unnamed_rooms_bad_epochs_and_offsets_with_400() {
        for q in [
            "?rooms=news&recover=sports:e:1",
            "?rooms=news&recover=news:e",
            "?rooms=news&recover=news::1",
            "?rooms=news&recover=news:e%20x:1",
            "?rooms=news&recover=news:e:-1",
            "?rooms=news&recover=news:e:18446744073709551616",
            "?rooms=news&recover=news:e:1,news:e:2",
            "?rooms=news&recover=news:e:1&recover=news:e:1",
        ] {
            assert_eq!(
                upgrade_with("", q).err(),
                Some(HandshakeError::BadQuery),
                "{q}"
            );
        }
        let long = "e".repeat(MAX_EPOCH_LEN + 1);
        assert_eq!(
            upgrade_with("", &format!("?rooms=news&recover=news:{long}:1")).err(),
            Some(HandshakeError::BadQuery)
        );
    }

    fn upgrade_with(extra: &str, query: &str) -> Result<Upgrade, HandshakeError> {
        let buf = format!(
            "GET /ws{query} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        );
        match parse_request(buf.as_bytes(), &cfg())? {
            Some((Request::Upgrade(u), _)) => Ok(u),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_token_comes_from_the_query_or_a_bearer_header() {
        assert_eq!(
            upgrade_with("", "?token=a.b.c").unwrap().token.as_deref(),
            Some("a.b.c")
        );
        let u = upgrade_with("Authorization: Bearer x.y.z\r\n", "").unwrap();
        assert_eq!(u.token.as_deref(), Some("x.y.z"));
        let u = upgrade_with("authorization: bearer   x.y.z \r\n", "").unwrap();
        assert_eq!(u.token.as_deref(), Some("x.y.z"));
        assert_eq!(upgrade_with("", "").unwrap().token, None);
    }

    #[test]
    fn a_second_credential_or_a_malformed_one_is_a_400() {
        let bad = HandshakeError::BadQuery;
        assert_eq!(upgrade_with("", "?token=a&token=b").unwrap_err(), bad);
        assert_eq!(upgrade_with("", "?token=").unwrap_err(), bad);
        assert_eq!(
            upgrade_with("Authorization: Bearer x\r\n", "?token=y").unwrap_err(),
            bad
        );
        assert_eq!(
            upgrade_with("Authorization: Bearer x\r\nAuthorization: Bearer y\r\n", "").unwrap_err(),
            bad
        );
        assert_eq!(
            upgrade_with("Authorization: Basic dTpw\r\n", "").unwrap_err(),
            bad
        );
        assert_eq!(
            upgrade_with("Authorization: Bearer \r\n", "").unwrap_err(),
            bad
        );
    }

    #[test]
    fn accepts_request_generated_by_tungstenite_client() {
        use tungstenite::client::IntoClientRequest;
        let request = "ws://push.example.com/ws?user=u1&rooms=a,b"
            .into_client_request()
            .unwrap();
        let (bytes, key) = tungstenite::handshake::client::generate_request(request).unwrap();
        let u = upgrade(&bytes, &cfg()).unwrap();
        assert_eq!(
            u.accept,
            tungstenite::handshake::derive_accept_key(key.as_bytes())
        );
        assert_eq!(u.user.as_deref(), Some("u1"));
        assert_eq!(u.rooms, ["a", "b"]);
    }

    #[test]
    fn upgrade_response_names_the_deflate_agreement() {
        let a = crate::ws::extension::Agreement {
            server_window_bits: 10,
            server_window_limited: true,
        };
        let resp = String::from_utf8(upgrade_response_with(ACCEPT, true, Some(&a))).unwrap();
        assert!(resp.ends_with(
            "Sec-WebSocket-Protocol: wspush.v1\r\nSec-WebSocket-Extensions: permessage-deflate; \
             server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10\r\n\r\n"
        ), "{resp}");
    }

    #[test]
    fn a_malformed_extension_offer_is_declined_not_refused() {
        let u = upgrade_with(
            "Sec-WebSocket-Extensions: permessage-deflate; \"oops\r\n",
            "",
        )
        .unwrap();
        assert_eq!(u.deflate, None);
    }

    #[test]
    fn upgrade_response_is_101_without_protocol_or_extensions() {
        let resp = upgrade_response(ACCEPT, false);
        // Exactly sized: the reactor boxes it without a copy.
        assert_eq!(resp.capacity(), resp.len());
        assert_eq!(
            resp,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
        let text = String::from_utf8(resp).unwrap().to_ascii_lowercase();
        assert!(!text.contains("sec-websocket-protocol"));
        assert!(!text.contains("sec-websocket-extensions"));
    }

    #[test]
    fn returns_pipelined_frame_bytes_after_the_head() {
        let mut buf = request("/ws", "");
        let head = buf.len();
        buf.extend_from_slice(&[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d]);
        let (_, n) = parse_request(&buf, &cfg()).unwrap().unwrap();
        assert_eq!(n, head);
    }

    #[test]
    fn needs_more_bytes_at_every_split_of_the_head() {
        let buf = request(
            "/ws?user=u1&rooms=a,b",
            "Origin: https://app.example.com\r\n",
        );
        for cut in 0..buf.len() {
            assert_eq!(parse_request(&buf[..cut], &cfg()), Ok(None), "cut at {cut}");
        }
        assert!(parse_request(&buf, &cfg()).unwrap().is_some());
    }

    #[test]
    fn rejects_head_reaching_max_head_without_its_end_with_431() {
        let mut buf = b"GET /ws HTTP/1.1\r\nHost: h\r\nX-Pad: ".to_vec();
        buf.resize(MAX_HEAD - 1, b'a');
        assert_eq!(parse_request(&buf, &cfg()), Ok(None));
        buf.push(b'a');
        assert_eq!(err(&buf, &cfg()), HandshakeError::HeadTooLarge);
        buf.extend_from_slice(b"\r\n\r\n");
        assert_eq!(err(&buf, &cfg()), HandshakeError::HeadTooLarge);
        assert_eq!(HandshakeError::HeadTooLarge.status(), 431);
    }

    #[test]
    fn accepts_head_of_exactly_max_head_bytes() {
        let mut buf = request("/ws", "X-Pad: \r\n");
        let pad = MAX_HEAD - buf.len();
        buf.truncate(buf.len() - 4);
        buf.extend(std::iter::repeat_n(b'a', pad));
        buf.extend_from_slice(b"\r\n\r\n");
        assert_eq!(buf.len(), MAX_HEAD);
        assert!(upgrade(&buf, &cfg()).is_ok());
    }

    #[test]
    fn rejects_too_many_headers_with_431() {
        let extra: String = (0..MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            err(&request("/ws", &extra), &cfg()),
            HandshakeError::HeadTooLarge
        );
    }

    #[test]
    fn rejects_garbage_with_400() {
        assert_eq!(
            err(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", &cfg()),
            HandshakeError::Malformed
        );
        assert_eq!(
            err(b"GET /ws HTTP/1.1\r\nBad Header\r\n\r\n", &cfg()),
            HandshakeError::Malformed
        );
        assert_eq!(HandshakeError::Malformed.status(), 400);
    }

    #[test]
    fn rejects_http_1_0_with_400() {
        let buf = raw("GET /ws HTTP/1.0", &UPGRADE_HEADERS);
        assert_eq!(err(&buf, &cfg()), HandshakeError::Malformed);
    }

    #[test]
    fn rejects_non_get_method_with_405_and_allow_header() {
        let buf = raw("POST /ws HTTP/1.1", &UPGRADE_HEADERS);
        assert_eq!(err(&buf, &cfg()), HandshakeError::MethodNotAllowed);
        let resp = String::from_utf8(HandshakeError::MethodNotAllowed.response()).unwrap();
        assert!(resp.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(resp.contains("\r\nAllow: GET\r\n"));
    }

    #[test]
    fn rejects_unknown_path_with_404_before_upgrade_checks() {
        assert_eq!(
            err(&raw("GET /other HTTP/1.1", &["Host: h"]), &cfg()),
            HandshakeError::NotFound
        );
        assert_eq!(
            err(&request("/other", ""), &cfg()),
            HandshakeError::NotFound
        );
        assert_eq!(err(&request("/ws/", ""), &cfg()), HandshakeError::NotFound);
        assert_eq!(
            err(&raw("POST /other HTTP/1.1", &["Host: h"]), &cfg()),
            HandshakeError::NotFound
        );
        assert_eq!(HandshakeError::NotFound.status(), 404);
    }

    #[test]
    fn uses_the_configured_path() {
        let cfg = HandshakeConfig {
            path: "/push/v1".into(),
            ..cfg()
        };
        assert!(upgrade(&request("/push/v1?user=a", ""), &cfg).is_ok());
        assert_eq!(err(&request("/ws", ""), &cfg), HandshakeError::NotFound);
    }

    #[test]
    fn rejects_plain_get_of_websocket_path_with_400() {
        let buf = raw("GET /ws HTTP/1.1", &["Host: h"]);
        assert_eq!(err(&buf, &cfg()), HandshakeError::NotUpgrade);
        assert_eq!(HandshakeError::NotUpgrade.status(), 400);
    }

    #[test]
    fn requires_upgrade_websocket_token_case_insensitively() {
        let ok = raw(
            "GET /ws HTTP/1.1",
            &headers_with("Upgrade", &["Upgrade: WebSocket"]),
        );
        assert!(upgrade(&ok, &cfg()).is_ok());
        let ok = raw(
            "GET /ws HTTP/1.1",
            &headers_with("Upgrade", &["Upgrade: h2c, websocket"]),
        );
        assert!(upgrade(&ok, &cfg()).is_ok());
        let bad = raw(
            "GET /ws HTTP/1.1",
            &headers_with("Upgrade", &["Upgrade: h2c"]),
        );
        assert_eq!(err(&bad, &cfg()), HandshakeError::NotUpgrade);
        let missing = raw("GET /ws HTTP/1.1", &headers_with("Upgrade", &[]));
        assert_eq!(err(&missing, &cfg()), HandshakeError::NotUpgrade);
    }

    #[test]
    fn finds_connection_upgrade_token_in_lists_and_repeated_headers() {
        let list = raw(
            "GET /ws HTTP/1.1",
            &headers_with("Connection", &["Connection: keep-alive, Upgrade"]),
        );
        assert!(upgrade(&list, &cfg()).is_ok());
        let repeated = raw(
            "GET /ws HTTP/1.1",
            &headers_with(
                "Connection",
                &["Connection: keep-alive", "connection: UPGRADE"],
            ),
        );
        assert!(upgrade(&repeated, &cfg()).is_ok());
        let substring = raw(
            "GET /ws HTTP/1.1",
            &headers_with("Connection", &["Connection: upgraded"]),
        );
        assert_eq!(err(&substring, &cfg()), HandshakeError::NotUpgrade);
        let missing = raw("GET /ws HTTP/1.1", &headers_with("Connection", &[]));
        assert_eq!(err(&missing, &cfg()), HandshakeError::NotUpgrade);
    }

    #[test]
    fn rejects_missing_host_with_400() {
        let buf = raw("GET /ws HTTP/1.1", &headers_with("Host", &[]));
        assert_eq!(err(&buf, &cfg()), HandshakeError::MissingHost);
        assert_eq!(HandshakeError::MissingHost.status(), 400);
    }

    #[test]
    fn rejects_repeated_host_as_malformed() {
        let buf = raw(
            "GET /ws HTTP/1.1",
            &headers_with("Host", &["Host: a", "Host: b"]),
        );
        assert_eq!(err(&buf, &cfg()), HandshakeError::Malformed);
    }

    #[test]
    fn rejects_version_other_than_13_with_426_naming_13() {
        for v in [
            &["Sec-WebSocket-Version: 8"][..],
            &["Sec-WebSocket-Version: 13, 8"],
            &[],
        ] {
            let buf = raw(
                "GET /ws HTTP/1.1",
                &headers_with("Sec-WebSocket-Version", v),
            );
            assert_eq!(
                err(&buf, &cfg()),
                HandshakeError::VersionUnsupported,
                "{v:?}"
            );
        }
        let resp = String::from_utf8(HandshakeError::VersionUnsupported.response()).unwrap();
        assert!(resp.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(resp.contains("\r\nSec-WebSocket-Version: 13\r\n"));
    }

    #[test]
    fn rejects_repeated_version_or_key_as_malformed() {
        let buf = raw(
            "GET /ws HTTP/1.1",
            &headers_with(
                "Sec-WebSocket-Version",
                &["Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 13"],
            ),
        );
        assert_eq!(err(&buf, &cfg()), HandshakeError::Malformed);
        let buf = raw(
            "GET /ws HTTP/1.1",
            &headers_with(
                "Sec-WebSocket-Key",
                &[
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                    "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==",
                ],
            ),
        );
        assert_eq!(err(&buf, &cfg()), HandshakeError::Malformed);
    }

    #[test]
    fn rejects_missing_key_with_400() {
        let buf = raw("GET /ws HTTP/1.1", &headers_with("Sec-WebSocket-Key", &[]));
        assert_eq!(err(&buf, &cfg()), HandshakeError::MissingKey);
        assert_eq!(HandshakeError::MissingKey.status(), 400);
    }

    #[test]
    fn rejects_key_that_is_not_16_bytes_of_base64_with_400() {
        for key in [
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25j",     // 15 bytes
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZXg=", // 17 bytes
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ",   // no padding
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZ!==", // not base64
            "Sec-WebSocket-Key: ",
        ] {
            let buf = raw(
                "GET /ws HTTP/1.1",
                &headers_with("Sec-WebSocket-Key", &[key]),
            );
            assert_eq!(err(&buf, &cfg()), HandshakeError::BadKey, "{key}");
        }
        assert_eq!(HandshakeError::BadKey.status(), 400);
    }

    #[test]
    fn accept_is_computed_from_the_key_without_surrounding_whitespace() {
        let buf = raw(
            "GET /ws HTTP/1.1",
            &headers_with(
                "Sec-WebSocket-Key",
                &["Sec-WebSocket-Key:   dGhlIHNhbXBsZSBub25jZQ==  "],
            ),
        );
        assert_eq!(upgrade(&buf, &cfg()).unwrap().accept, ACCEPT);
    }

    #[test]
    fn allows_any_origin_when_allow_list_is_empty() {
        let buf = request("/ws", "Origin: https://evil.example.net\r\n");
        assert!(upgrade(&buf, &cfg()).is_ok());
    }

    #[test]
    fn rejects_origin_not_in_allow_list_with_403() {
        let cfg = cfg_with_origins(&["https://app.example.com", "*.example.org"]);
        for ok in [
            "https://app.example.com",
            "HTTPS://App.Example.com",
            "http://a.example.org:8080",
        ] {
            let buf = request("/ws", &format!("Origin: {ok}\r\n"));
            assert!(upgrade(&buf, &cfg).is_ok(), "{ok}");
        }
        for bad in [
            "https://evil.com",
            "http://app.example.com",
            "https://example.org",
            "null",
        ] {
            let buf = request("/ws", &format!("Origin: {bad}\r\n"));
            assert_eq!(err(&buf, &cfg), HandshakeError::OriginForbidden, "{bad}");
        }
        assert_eq!(HandshakeError::OriginForbidden.status(), 403);
    }

    #[test]
    fn rejects_request_with_any_forbidden_origin_header() {
        let cfg = cfg_with_origins(&["https://app.example.com"]);
        let buf = request(
            "/ws",
            "Origin: https://app.example.com\r\nOrigin: https://evil.com\r\n",
        );
        assert_eq!(err(&buf, &cfg), HandshakeError::OriginForbidden);
    }

    #[test]
    fn allows_missing_origin_even_with_allow_list() {
        let cfg = cfg_with_origins(&["https://app.example.com"]);
        assert!(upgrade(&request("/ws", ""), &cfg).is_ok());
    }

    #[test]
    fn exact_origin_pattern_matches_only_that_origin() {
        let p = OriginPattern::parse("https://app.example.com:8443").unwrap();
        assert!(p.matches("https://app.example.com:8443"));
        assert!(!p.matches("https://app.example.com"));
        assert!(!p.matches("https://app.example.com:8443.evil.com"));
    }

    #[test]
    fn wildcard_origin_pattern_matches_subdomains_any_scheme_and_port() {
        let p = OriginPattern::parse("*.Example.com").unwrap();
        for ok in [
            "https://a.example.com",
            "http://a.b.example.com:8080",
            "wss://X.EXAMPLE.COM",
        ] {
            assert!(p.matches(ok), "{ok}");
        }
        for bad in [
            "https://example.com",
            "https://evilexample.com",
            "https://a.example.com.evil.net",
            "https://evil.net/.example.com",
            "https://evil.net?.example.com",
            "https://user@a.example.com",
            "a.example.com",
            "https://a.example.com:",
            "https://a.example.com:x",
            "null",
        ] {
            assert!(!p.matches(bad), "{bad}");
        }
    }

    #[test]
    fn exact_origin_pattern_may_be_an_ipv6_literal() {
        let p = OriginPattern::parse("http://[::1]:8080").unwrap();
        assert!(p.matches("http://[::1]:8080"));
        assert!(!p.matches("http://[::1]"));
        assert!(!OriginPattern::parse("*.example.com")
            .unwrap()
            .matches("http://[::1]"));
        assert!(OriginPattern::parse("http://[]").is_err());
        assert!(OriginPattern::parse("http://[::1]x").is_err());
    }

    #[test]
    fn star_origin_pattern_matches_anything_and_null_only_null() {
        assert!(OriginPattern::parse("*")
            .unwrap()
            .matches("https://whatever.net"));
        let null = OriginPattern::parse("null").unwrap();
        assert!(null.matches("null"));
        assert!(!null.matches("https://a.com"));
    }

    #[test]
    fn rejects_malformed_origin_patterns() {
        for bad in [
            "",
            "app.example.com",
            "https://app.example.com/",
            "https://app.example.com/path",
            "*.",
            "*..com",
            "*.exa mple.com",
            "**.example.com",
            "https://",
            "://host",
        ] {
            assert!(OriginPattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reads_user_and_rooms_from_query_string() {
        let u = upgrade(&request("/ws?user=alice&rooms=news,sport", ""), &cfg()).unwrap();
        assert_eq!(u.user.as_deref(), Some("alice"));
        assert_eq!(u.rooms, ["news", "sport"]);
    }

    #[test]
    fn percent_decodes_names_and_keeps_plus_literal() {
        let u = upgrade(&request("/ws?user=user%3A42&rooms=a%2Fb,c+d", ""), &cfg()).unwrap();
        assert_eq!(u.user.as_deref(), Some("user:42"));
        assert_eq!(u.rooms, ["a/b", "c+d"]);
    }

    #[test]
    fn splits_rooms_on_literal_commas_only() {
        assert_eq!(
            err(&request("/ws?rooms=a%2Cb", ""), &cfg()),
            HandshakeError::BadQuery
        );
    }

    #[test]
    fn dedupes_rooms_and_merges_repeated_rooms_keys() {
        let u = upgrade(&request("/ws?rooms=a,b,a&rooms=c,b", ""), &cfg()).unwrap();
        assert_eq!(u.rooms, ["a", "b", "c"]);
    }

    #[test]
    fn rejects_more_rooms_than_max_rooms_with_400() {
        assert!(upgrade(&request("/ws?rooms=a,b,c,d,a", ""), &cfg()).is_ok());
        assert_eq!(
            err(&request("/ws?rooms=a,b,c,d,e", ""), &cfg()),
            HandshakeError::BadQuery
        );
        assert_eq!(HandshakeError::BadQuery.status(), 400);
    }

    #[test]
    fn rejects_invalid_names_and_bad_percent_encoding_with_400() {
        for q in [
            "user=",
            "user",
            "user=%20x",
            "user=caf%C3%A9",
            "user=%zz",
            "user=ab%4",
            "rooms=a,,b",
            "rooms=a,",
            "user=a&user=b",
        ] {
            let buf = request(&format!("/ws?{q}"), "");
            assert_eq!(err(&buf, &cfg()), HandshakeError::BadQuery, "{q}");
        }
        let long = format!("/ws?user={}", "x".repeat(MAX_NAME_LEN + 1));
        assert_eq!(err(&request(&long, ""), &cfg()), HandshakeError::BadQuery);
    }

    #[test]
    fn ignores_unknown_query_keys_and_empty_rooms() {
        let u = upgrade(&request("/ws?v=%%%&&rooms=&token=x", ""), &cfg()).unwrap();
        assert_eq!(u.user, None);
        assert!(u.rooms.is_empty());
    }

    #[test]
    fn answers_get_healthz_with_health() {
        let buf = raw("GET /healthz HTTP/1.1", &["Host: h"]);
        assert_eq!(
            parse_request(&buf, &cfg()),
            Ok(Some((Request::Health, buf.len())))
        );
        let with_query = raw("GET /healthz?probe=1 HTTP/1.1", &["Host: h"]);
        assert!(matches!(
            parse_request(&with_query, &cfg()),
            Ok(Some((Request::Health, _)))
        ));
    }

    #[test]
    fn rejects_healthz_with_other_methods_with_405() {
        for m in ["HEAD", "POST", "DELETE"] {
            let buf = raw(&format!("{m} /healthz HTTP/1.1"), &["Host: h"]);
            assert_eq!(err(&buf, &cfg()), HandshakeError::MethodNotAllowed, "{m}");
        }
    }

    #[test]
    fn health_response_is_200_ok_and_closes() {
        assert_eq!(
            health_response(),
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
        );
    }

    #[test]
    fn every_error_response_is_a_complete_http_response_that_closes() {
        for e in HandshakeError::ALL {
            let bytes = e.response();
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut resp = httparse::Response::new(&mut headers);
            let httparse::Status::Complete(head) = resp.parse(&bytes).unwrap() else {
                panic!("{e:?}: incomplete response");
            };
            assert_eq!(resp.code, Some(e.status()), "{e:?}");
            let header = |name: &str| {
                resp.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| std::str::from_utf8(h.value).unwrap())
            };
            assert_eq!(header("content-type"), Some("text/plain"), "{e:?}");
            assert_eq!(header("connection"), Some("close"), "{e:?}");
            let body = &bytes[head..];
            assert_eq!(
                header("content-length"),
                Some(body.len().to_string().as_str()),
                "{e:?}"
            );
            assert!(body.ends_with(b"\n") && body.iter().filter(|&&b| b == b'\n').count() == 1);
            assert!(!e.reason().is_empty());
        }
    }

    #[test]
    fn maps_each_error_to_its_status() {
        let statuses: Vec<u16> = HandshakeError::ALL.iter().map(|e| e.status()).collect();
        assert_eq!(
            statuses,
            [400, 405, 400, 400, 400, 400, 426, 403, 404, 431, 503, 400]
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_request(&bytes, &cfg_with_origins(&["*.example.com"]));
        }

        #[test]
        fn arbitrary_bytes_after_a_valid_head_never_change_it(
            tail in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut buf = request("/ws?user=u&rooms=r", "");
            let head = buf.len();
            buf.extend_from_slice(&tail);
            let (req, n) = parse_request(&buf, &cfg()).unwrap().unwrap();
            prop_assert_eq!(n, head);
            prop_assert!(matches!(req, Request::Upgrade(_)));
        }

        #[test]
        fn arbitrary_request_lines_and_headers_never_panic(
            method in "[A-Z]{1,7}",
            target in "[!-~]{0,40}",
            header in "[!-~]{1,20}: [ -~]{0,40}",
        ) {
            let buf = raw(&format!("{method} {target} HTTP/1.1"), &["Host: h", &header]);
            let _ = parse_request(&buf, &cfg_with_origins(&["https://a.b"]));
        }

        #[test]
        fn fully_percent_encoded_names_decode_to_themselves(name in "[!-+\\--~]{1,128}") {
            let encoded: String = name.bytes().map(|b| format!("%{b:02X}")).collect();
            let buf = request(&format!("/ws?user={encoded}"), "");
            let u = upgrade(&buf, &cfg()).unwrap();
            prop_assert_eq!(u.user.as_deref(), Some(name.as_str()));
        }
    }
}
