//! The HTTP listener (`--http`): the JSON API for backends that do not speak
//! Redis, `/metrics`, and the dashboard page, served by the dispatcher thread on its
//! own poll, like the control port.
//!
//! An HTTP connection is a control client (`Client`) with an [`HttpConn`] beside it:
//! each API request is turned into the argument list of the matching RESP command
//! and run by the same `execute`, so ordering, cluster semantics and counts are the
//! control port's. The command's RESP2 reply lands in the client's reply buffer as
//! usual; once it is complete it is parsed back (control/reply.rs) and answered as
//! JSON. Requests on one connection run one at a time in order (HTTP/1.1
//! pipelining is answered in order; use several connections for parallelism).
//!
//! Bounded like the control port: a head of at most 16 KiB, a body of at most
//! `--max-message` plus room for its JSON wrapping, a 10 s limit to send a whole
//! request head and body, 60 s of idleness, and reading pauses while a response is
//! not being read. Never blocks; never answers without the API key when one is set.

pub mod api;
pub mod request;

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use log::warn;
use serde_json::json;

use super::{constant_time_eq, info, Dispatcher, OUTPUT_SOFT_LIMIT};
use crate::control::command::Command;
use crate::control::reply::{ReplyLimits, ReplyParser};
use crate::control::resp::Limits;
use api::{Route, Shape};
use request::{Method, Parsed, Request};

/// The dashboard: one self-contained page (no external resources).
const DASHBOARD: &str = include_str!("dashboard.html");
/// Longest request head.
const MAX_HEAD: usize = 16 * 1024;
/// Room a JSON body may take beyond the payload it carries (names, quoting).
const JSON_SLACK: usize = 64 * 1024;
/// How long a `/api/rooms` answer is reused.
const ROOMS_CACHE: Duration = Duration::from_millis(500);
/// Time to send a whole request once its first byte arrived.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with no request, and no response bytes taken, for this long is
/// closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What an HTTP connection holds beside its `Client`.
pub(super) struct HttpConn {
    /// Response bytes to write (the client's own buffer holds RESP replies).
    pub wire: Vec<u8>,
    /// The request whose command is running, until its reply is complete.
    flight: Option<Flight>,
    /// `100 Continue` was sent for the request being received.
    continued: bool,
    /// When the first byte of the request being received came.
    started: Option<Instant>,
    last_active: Instant,
}

/// A request waiting for its command's reply.
struct Flight {
    shape: Shape,
    keep_alive: bool,
    head: bool,
}

impl HttpConn {
    /// No request is running (an upgrade's freeze waits for that).
    pub(super) fn idle(&self) -> bool {
        self.flight.is_none()
    }

    /// What an upgrade hands over: response bytes not written yet, and whether
    /// `100 Continue` was sent for the request being received.
    pub(super) fn handover_parts(&self) -> (&[u8], bool) {
        (&self.wire, self.continued)
    }

    /// A connection taken over from the process this one upgrades; `partial`: part
    /// of a request has arrived (its time limit starts again now).
    pub(super) fn adopted(wire: Vec<u8>, continued: bool, partial: bool) -> HttpConn {
        HttpConn {
            wire,
            continued,
            started: partial.then(Instant::now),
            ..HttpConn::new()
        }
    }

    pub fn new() -> HttpConn {
        HttpConn {
            wire: Vec::new(),
            flight: None,
            continued: false,
            started: None,
            last_active: Instant::now(),
        }
    }
}

/// Writes a whole response.
fn respond(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
    head: bool,
    extra: &[(&str, &str)],
) {
    use std::fmt::Write as _;
    let mut h = String::with_capacity(160);
    let _ = write!(
        h,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n",
        reason(status),
        body.len()
    );
    for (k, v) in extra {
        let _ = write!(h, "{k}: {v}\r\n");
    }
    h.push_str(if keep_alive {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    out.extend_from_slice(h.as_bytes());
    if !head {
        out.extend_from_slice(body);
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Internal Server Error",
    }
}

const JSON: &str = "application/json";

fn json_error(out: &mut Vec<u8>, status: u16, message: &str, keep_alive: bool, head: bool) {
    let body = json!({ "error": message }).to_string();
    respond(out, status, JSON, body.as_bytes(), keep_alive, head, &[]);
}

/// `Authorization: Bearer KEY`, compared in constant time.
fn authorized(header: Option<&[u8]>, key: &str) -> bool {
    let Some(h) = header else {
        return false;
    };
    let token = match h.get(..7) {
        Some(p) if p.eq_ignore_ascii_case(b"bearer ") => h[7..].trim_ascii(),
        _ => return false,
    };
    constant_time_eq(token, key.as_bytes())
}

impl Dispatcher {
    /// Accepts HTTP connections until the backlog is empty.
    pub(super) fn accept_http(&mut self) {
        loop {
            let Some(listener) = &self.http_listener else {
                return;
            };
            match listener.accept() {
                Ok((mut stream, addr)) => {
                    if self.http.len() >= self.settings.max_http_connections {
                        // Best effort: a fresh socket takes this small write at once.
                        self.stats.http_refused += 1;
                        let mut out = Vec::new();
                        json_error(
                            &mut out,
                            503,
                            "too many HTTP connections (--max-http-connections)",
                            false,
                            false,
                        );
                        let _ = stream.write(&out);
                        let _ = stream.shutdown(std::net::Shutdown::Write);
                        continue;
                    }
                    // The API key, not AUTH, guards this door: commands run as an
                    // authenticated control client (its RESP parser is never used).
                    let limits = Limits {
                        max_bulk: 0,
                        max_args: 0,
                    };
                    if let Some(key) = self.add_client(stream, addr, limits, true, "http") {
                        self.stats.http_connections += 1;
                        self.http.insert(key, HttpConn::new());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    warn!("http: accept: {e} (retrying in 1s)");
                    self.accept_retry = true;
                    return;
                }
            }
        }
    }

    fn request_limits(&self) -> request::Limits {
        request::Limits {
            max_head: MAX_HEAD,
            max_body: self.settings.max_message.saturating_add(JSON_SLACK),
        }
    }

    /// Reads and answers the requests of HTTP connection `key`, one at a time.
    pub(super) fn serve_http(&mut self, key: usize) {
        let limits = self.request_limits();
        loop {
            let (Some(c), Some(h)) = (self.clients.get_mut(key), self.http.get_mut(&key)) else {
                return;
            };
            if c.closing
                || h.flight.is_some()
                || c.waiting.is_some()
                || c.held_count() > 0
                || h.wire.len() >= OUTPUT_SOFT_LIMIT
            {
                break;
            }
            match self.run_stashed(key) {
                super::Stash::None => {}
                super::Stash::Ran => continue,
                super::Stash::Waiting => break,
            }
            let (Some(c), Some(h)) = (self.clients.get_mut(key), self.http.get_mut(&key)) else {
                return;
            };
            match request::parse(&c.input, limits) {
                Ok(Parsed::Complete(n, req)) => {
                    c.input.drain(..n);
                    h.started = None;
                    h.continued = false;
                    self.handle(key, req);
                    continue;
                }
                Ok(Parsed::Incomplete { expects_continue }) => {
                    if !c.input.is_empty() {
                        h.started.get_or_insert_with(Instant::now);
                    }
                    if expects_continue && !h.continued {
                        h.wire.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                        h.continued = true;
                    }
                }
                Err(e) => {
                    self.stats.http_errors += 1;
                    json_error(&mut h.wire, e.status(), e.message(), false, false);
                    c.closing = true;
                    c.input = Vec::new();
                    return;
                }
            }
            if c.eof {
                break;
            }
            let mut buf = [0u8; 16 * 1024];
            match c.stream.read(&mut buf) {
                Ok(0) => c.eof = true,
                Ok(n) => {
                    c.input.extend_from_slice(&buf[..n]);
                    h.last_active = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => c.eof = true,
            }
        }
        if let Some(c) = self.clients.get_mut(key) {
            if c.input.is_empty() && c.input.capacity() > 64 << 10 {
                c.input = Vec::new();
            }
        }
    }

    /// Answers one request, at once or once its command's reply is complete.
    fn handle(&mut self, key: usize, req: Request) {
        self.stats.http_requests += 1;
        let keep_alive = req.keep_alive;
        let head = req.method == Method::Head;
        if let Some(k) = &self.settings.api_key {
            if api::needs_key(&req.path) && !authorized(req.authorization.as_deref(), k) {
                self.stats.http_errors += 1;
                self.stats.http_unauthorized += 1;
                if let Some(h) = self.http.get_mut(&key) {
                    let body = json!({ "error": "missing or wrong API key: send Authorization: Bearer KEY" })
                        .to_string();
                    respond(
                        &mut h.wire,
                        401,
                        JSON,
                        body.as_bytes(),
                        keep_alive,
                        head,
                        &[("WWW-Authenticate", "Bearer")],
                    );
                }
                self.close_unless_kept(key, keep_alive);
                return;
            }
        }
        let route = api::route(&req, self.settings.max_message);
        let (status, content_type, body): (u16, &str, Vec<u8>) = match route {
            Err(e) => {
                self.stats.http_errors += 1;
                if let Some(h) = self.http.get_mut(&key) {
                    let allow: Vec<(&str, &str)> =
                        e.allow.map(|a| ("Allow", a)).into_iter().collect();
                    respond(
                        &mut h.wire,
                        e.status,
                        JSON,
                        e.body().as_bytes(),
                        keep_alive,
                        head,
                        &allow,
                    );
                }
                self.close_unless_kept(key, keep_alive);
                return;
            }
            Ok(Route::Probe { ready }) => {
                let liveness = &self.census.liveness;
                let verdict = if ready {
                    liveness.ready().map_err(|why| why.to_string())
                } else {
                    liveness.check().map_err(|why| format!("unhealthy: {why}"))
                };
                match verdict {
                    Ok(()) => (
                        200,
                        "text/plain",
                        if ready {
                            b"ready\n".to_vec()
                        } else {
                            b"ok\n".to_vec()
                        },
                    ),
                    Err(why) => (503, "text/plain", format!("{why}\n").into_bytes()),
                }
            }
            Ok(Route::Dashboard) => (
                200,
                "text/html; charset=utf-8",
                DASHBOARD.as_bytes().to_vec(),
            ),
            Ok(Route::Metrics) => {
                let mut body = Vec::with_capacity(16 * 1024);
                self.write_metrics(&mut body);
                (200, "text/plain; version=0.0.4; charset=utf-8", body)
            }
            Ok(Route::Info(section)) => {
                let text = info::render(self, section.as_deref());
                (200, JSON, api::info_json(&text).to_string().into_bytes())
            }
            Ok(Route::Rooms(top)) => (200, JSON, self.top_rooms_cached(top).into_bytes()),
            Ok(Route::Command { args, shape }) => {
                match Command::parse(args, self.settings.max_message) {
                    Err(e) => {
                        self.stats.http_errors += 1;
                        self.stats.rejected_commands += 1;
                        let m = e.message();
                        (
                            400,
                            JSON,
                            json!({ "error": m.strip_prefix("ERR ").unwrap_or(&m) })
                                .to_string()
                                .into_bytes(),
                        )
                    }
                    Ok(cmd) => {
                        if let Some(h) = self.http.get_mut(&key) {
                            h.flight = Some(Flight {
                                shape,
                                keep_alive,
                                head,
                            });
                        }
                        self.stats.commands += 1;
                        self.execute(key, cmd);
                        self.http_reply(key);
                        return;
                    }
                }
            }
        };
        if let Some(h) = self.http.get_mut(&key) {
            respond(
                &mut h.wire,
                status,
                content_type,
                &body,
                keep_alive,
                head,
                &[],
            );
        }
        self.close_unless_kept(key, keep_alive);
    }

    /// A response written with `Connection: close` must be followed by the close, or
    /// a client reading to the end waits for the idle timeout.
    fn close_unless_kept(&mut self, key: usize, keep_alive: bool) {
        if !keep_alive {
            if let Some(c) = self.clients.get_mut(key) {
                c.closing = true;
            }
        }
    }

    /// Turns the command's reply into the response once it is complete. Returns
    /// whether a response was written (the next request may then run).
    pub(super) fn http_reply(&mut self, key: usize) -> bool {
        let (Some(c), Some(h)) = (self.clients.get_mut(key), self.http.get_mut(&key)) else {
            return false;
        };
        let Some(flight) = &h.flight else {
            return false;
        };
        if c.output.is_empty() || c.held_count() > 0 || c.waiting.is_some() {
            return false;
        }
        let mut parser = ReplyParser::new(ReplyLimits {
            max_bulk: usize::MAX,
            max_elements: usize::MAX,
            max_depth: 8,
        });
        let (status, body) = match parser.parse(&c.output) {
            Ok(Some((n, reply))) => {
                c.output.drain(..n);
                api::render(flight.shape, &reply)
            }
            // Every reply the dispatcher writes is complete when it is released.
            Ok(None) => return false,
            Err(_) => {
                c.output.clear();
                (
                    500,
                    json!({ "error": "internal: the command's reply could not be read" })
                        .to_string(),
                )
            }
        };
        if status >= 400 {
            self.stats.http_errors += 1;
        }
        let retry: &[(&str, &str)] = if status == 503 {
            &[("Retry-After", "1")]
        } else {
            &[]
        };
        respond(
            &mut h.wire,
            status,
            JSON,
            body.as_bytes(),
            flight.keep_alive,
            flight.head,
            retry,
        );
        if !flight.keep_alive {
            c.closing = true;
        }
        h.flight = None;
        self.ready.push(key);
        true
    }

    /// Writes what HTTP connection `key` has to send; drops it when done.
    pub(super) fn flush_http(&mut self, key: usize) {
        self.http_reply(key);
        let (Some(c), Some(h)) = (self.clients.get_mut(key), self.http.get_mut(&key)) else {
            return;
        };
        let was_full = h.wire.len() >= OUTPUT_SOFT_LIMIT;
        while !h.wire.is_empty() && c.writable {
            match c.stream.write(&h.wire) {
                Ok(0) => break,
                Ok(n) => {
                    h.wire.drain(..n);
                    h.last_active = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    c.eof = true;
                    h.wire.clear();
                }
            }
        }
        if h.wire.is_empty() && h.wire.capacity() > OUTPUT_SOFT_LIMIT {
            h.wire = Vec::new();
        }
        let done = h.wire.is_empty()
            && h.flight.is_none()
            && c.held_count() == 0
            && (c.closing || (c.eof && c.waiting.is_none()));
        if done {
            if c.closing && !c.eof {
                // Lets the peer read the last response before the close.
                let _ = c.stream.shutdown(std::net::Shutdown::Write);
            }
            self.drop_client(key);
        } else if was_full && h.wire.len() < OUTPUT_SOFT_LIMIT {
            self.ready.push(key);
        }
    }

    /// Closes HTTP connections that are idle or too slow to send a request.
    pub(super) fn http_housekeeping(&mut self) {
        let mut late = Vec::new();
        for (&key, h) in &self.http {
            if h.flight.is_some() {
                continue;
            }
            if h.started.is_some_and(|t| t.elapsed() >= REQUEST_TIMEOUT) {
                late.push((key, true));
            } else if h.last_active.elapsed() >= IDLE_TIMEOUT {
                // Idle, or not reading its responses (nothing written for as long).
                late.push((key, false));
            }
        }
        for (key, timed_out) in late {
            if timed_out {
                if let (Some(c), Some(h)) = (self.clients.get_mut(key), self.http.get_mut(&key)) {
                    self.stats.http_errors += 1;
                    json_error(
                        &mut h.wire,
                        408,
                        "request not received in time",
                        false,
                        false,
                    );
                    h.started = None;
                    c.closing = true;
                    c.input = Vec::new();
                }
            } else {
                self.drop_client(key);
            }
        }
    }

    /// `top_rooms`, computed at most once per `ROOMS_CACHE` for a given `top`: the
    /// pass is O(rooms) on the dispatcher thread, and every open dashboard asks each
    /// second, so a million rooms and a few dashboards must not cost a pass each.
    fn top_rooms_cached(&mut self, top: usize) -> String {
        if let Some((at, n, body)) = &self.rooms_cache {
            if *n == top && at.elapsed() < ROOMS_CACHE {
                return body.clone();
            }
        }
        let body = self.top_rooms(top);
        self.rooms_cache = Some((Instant::now(), top, body.clone()));
        body
    }

    /// `{"rooms":[{"room":…,"members":N},…]}`: the `top` rooms with the most members
    /// on this node, most first. One pass over the rooms with a bounded heap.
    fn top_rooms(&self, top: usize) -> String {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let mut heap: BinaryHeap<Reverse<(u64, &str)>> = BinaryHeap::with_capacity(top + 1);
        for (name, members) in self.rooms.iter() {
            heap.push(Reverse((members, name)));
            if heap.len() > top {
                heap.pop();
            }
        }
        let mut rooms: Vec<(u64, &str)> = heap.into_iter().map(|Reverse(x)| x).collect();
        rooms.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
        let list: Vec<serde_json::Value> = rooms
            .into_iter()
            .map(|(n, r)| json!({ "room": r, "members": n }))
            .collect();
        json!({ "rooms": list, "total": self.rooms.len() }).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_key_is_accepted() {
        assert!(authorized(Some(b"Bearer s3cret"), "s3cret"));
        assert!(authorized(Some(b"bearer s3cret "), "s3cret"));
        assert!(!authorized(Some(b"Bearer s3cre"), "s3cret"));
        assert!(!authorized(Some(b"Basic s3cret"), "s3cret"));
        assert!(!authorized(Some(b"Bearer"), "s3cret"));
        assert!(!authorized(None, "s3cret"));
    }

    #[test]
    fn a_response_has_its_length_and_connection_header() {
        let mut out = Vec::new();
        respond(&mut out, 200, JSON, b"{}", true, false, &[("Allow", "GET")]);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Length: 2\r\n"));
        assert!(text.contains("Allow: GET\r\n"));
        assert!(text.ends_with("Connection: keep-alive\r\n\r\n{}"));
        let mut out = Vec::new();
        respond(&mut out, 404, JSON, b"{}", false, true, &[]);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.ends_with("Connection: close\r\n\r\n"),
            "HEAD has no body"
        );
    }
}
