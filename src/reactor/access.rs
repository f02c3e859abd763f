//! `--access-log`: one `info` line (target `wspush::access`) per closed WebSocket
//! connection: client address, user, rooms, duration, bytes in and out, close code,
//! reason and why it closed.
//!
//! State exists only with the flag on: a side table indexed like the reactor's slab
//! (one `Entry` per slab slot up to the slab's high-water mark), so `Conn` stays as
//! small as it is and a server without the flag pays nothing but a `None` check on
//! the read and write paths. The line is written when the socket is dropped, so it
//! holds every byte exchanged, the close handshake included. Its only I/O is the log
//! record itself, written to stderr by env_logger like every other line (so stderr
//! must go somewhere that keeps up: a file, journald). Never keeps a token or a
//! payload.

use std::fmt::Write;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::handover::format::AccessState;
use crate::link::stats::CloseReason;
use crate::ws::close::parse_close_payload;

/// One connection's record; reused for the next connection in the same slab slot.
#[derive(Default)]
pub struct Entry {
    /// Accepted at; `None`: the slot is free.
    accepted: Option<Instant>,
    /// It upgraded: only WebSocket connections are logged.
    opened: bool,
    /// The client's address (after PROXY / trusted forwarding headers).
    addr: Option<IpAddr>,
    user: Option<Arc<str>>,
    /// Rooms it was in when it began closing.
    rooms: u16,
    bytes_in: u64,
    bytes_out: u64,
    /// The close code sent or received (1006: none, the connection was lost).
    code: u16,
    reason: Option<Box<str>>,
    why: Option<CloseReason>,
}

/// The per-reactor table (see the module comment).
#[derive(Default)]
pub struct AccessLog {
    entries: Vec<Entry>,
}

impl AccessLog {
    fn entry(&mut self, key: u32) -> &mut Entry {
        let i = key as usize;
        if i >= self.entries.len() {
            self.entries.resize_with(i + 1, Entry::default);
        }
        &mut self.entries[i]
    }

    /// A socket was accepted into slot `key`.
    pub fn accepted(&mut self, key: u32, at: Instant) {
        *self.entry(key) = Entry {
            accepted: Some(at),
            ..Entry::default()
        };
    }

    /// The connection upgraded.
    pub fn opened(&mut self, key: u32, addr: Option<IpAddr>, user: Option<Arc<str>>) {
        let e = self.entry(key);
        e.opened = true;
        e.addr = addr;
        e.user = user;
    }

    pub fn bytes_in(&mut self, key: u32, n: usize) {
        if let Some(e) = self.entries.get_mut(key as usize) {
            e.bytes_in += n as u64;
        }
    }

    pub fn bytes_out(&mut self, key: u32, n: usize) {
        if let Some(e) = self.entries.get_mut(key as usize) {
            e.bytes_out += n as u64;
        }
    }

    /// We are closing it with `frame` (a complete server Close frame).
    pub fn closing(&mut self, key: u32, rooms: usize, why: CloseReason, frame: &[u8]) {
        let (code, reason) = match parse_close_payload(server_frame_payload(frame)) {
            Ok(Some((code, reason))) => (code.0, reason),
            _ => (1005, ""),
        };
        let e = self.entry(key);
        e.rooms = u16::try_from(rooms).unwrap_or(u16::MAX);
        e.why = Some(why);
        e.code = code;
        e.reason = Some(reason.into());
    }

    /// The client closed first: its code and reason are the ones to log.
    pub fn set_close(&mut self, key: u32, code: u16, reason: &str) {
        let e = self.entry(key);
        e.code = code;
        e.reason = Some(reason.into());
    }

    /// The open connection's socket ended without a close handshake.
    pub fn abnormal(&mut self, key: u32, rooms: usize) {
        let e = self.entry(key);
        e.rooms = u16::try_from(rooms).unwrap_or(u16::MAX);
        e.why = Some(CloseReason::Abnormal);
        e.code = 1006;
        e.reason = None;
    }

    /// Slot `key`'s record, for the process an upgrade hands the connection to.
    pub fn export(&self, key: u32, now: Instant) -> Option<AccessState> {
        let e = self.entries.get(key as usize)?;
        let accepted = e.accepted?;
        Some(AccessState {
            age_ms: now.saturating_duration_since(accepted).as_millis() as u64,
            opened: e.opened,
            addr: e.addr,
            bytes_in: e.bytes_in,
            bytes_out: e.bytes_out,
            code: e.code,
            reason: e.reason.as_deref().map(str::to_string),
        })
    }

    /// A connection taken over by an upgrade, into slot `key`: its record carries on
    /// (`None`: the old process kept none; it starts now).
    pub fn adopt(
        &mut self,
        key: u32,
        s: Option<AccessState>,
        user: Option<Arc<str>>,
        now: Instant,
    ) {
        let e = self.entry(key);
        let Some(s) = s else {
            *e = Entry {
                accepted: Some(now),
                user,
                ..Entry::default()
            };
            return;
        };
        *e = Entry {
            accepted: Some(
                now.checked_sub(std::time::Duration::from_millis(s.age_ms))
                    .unwrap_or(now),
            ),
            opened: s.opened,
            addr: s.addr,
            user,
            rooms: 0,
            bytes_in: s.bytes_in,
            bytes_out: s.bytes_out,
            code: s.code,
            reason: s.reason.map(String::into_boxed_str),
            why: None,
        };
    }

    /// The socket is dropped: logs the line if it was a WebSocket connection, and
    /// frees the slot.
    pub fn finish(&mut self, key: u32) {
        let Some(e) = self.entries.get_mut(key as usize) else {
            return;
        };
        let e = std::mem::take(e);
        if e.opened {
            log::info!(target: "wspush::access", "{}", line(&e, Instant::now()));
        }
    }
}

/// The logfmt line of one connection: `key=value` pairs, strings JSON-quoted when
/// they may hold spaces or quotes (the close reason comes from the client).
fn line(e: &Entry, now: Instant) -> String {
    let mut out = String::with_capacity(160);
    let _ = write!(out, "addr=");
    match e.addr {
        Some(a) => {
            let _ = write!(out, "{a}");
        }
        None => out.push('-'),
    }
    // User ids are checked names (printable ASCII, no spaces, commas or quotes).
    let _ = write!(out, " user={}", e.user.as_deref().unwrap_or("-"));
    let duration = e.accepted.map_or(0.0, |t| (now - t).as_secs_f64());
    let reason =
        serde_json::to_string(e.reason.as_deref().unwrap_or("")).unwrap_or_else(|_| "\"\"".into());
    let _ = write!(
        out,
        " rooms={} duration={duration:.3}s bytes_in={} bytes_out={} close_code={} close_reason={reason} why={}",
        e.rooms,
        e.bytes_in,
        e.bytes_out,
        e.code,
        e.why.unwrap_or(CloseReason::Abnormal).label(),
    );
    out
}

/// The fields of an access line as JSON (for `--log-format json`): numbers as
/// numbers (`duration` in seconds as `duration_s`), the rest as strings, `-` as null.
/// `None` if the text is not an access line.
pub fn json_fields(line: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    use serde_json::Value;
    let mut out = serde_json::Map::new();
    let mut rest = line.trim();
    while !rest.is_empty() {
        let (k, after) = rest.split_once('=')?;
        let (v, next) = if after.starts_with('"') {
            // The close reason, JSON-quoted: serde_json finds its end.
            let mut de = serde_json::Deserializer::from_str(after).into_iter::<String>();
            let v = de.next()?.ok()?;
            (Value::String(v), &after[de.byte_offset()..])
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            let raw = &after[..end];
            let v = match (k, raw) {
                (_, "-") => Value::Null,
                ("duration", d) => Value::from(d.strip_suffix('s')?.parse::<f64>().ok()?),
                ("rooms" | "bytes_in" | "bytes_out" | "close_code", n) => {
                    Value::from(n.parse::<u64>().ok()?)
                }
                (_, s) => Value::String(s.to_string()),
            };
            (v, &after[end..])
        };
        let key = if k == "duration" { "duration_s" } else { k };
        out.insert(key.to_string(), v);
        rest = next.trim_start();
    }
    out.contains_key("close_code").then_some(out)
}

/// The payload of an unmasked server frame (2-byte header: a Close payload is at
/// most 125 bytes).
fn server_frame_payload(frame: &[u8]) -> &[u8] {
    frame.get(2..).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::close::CloseCode;
    use crate::ws::frame::encode_close;
    use std::time::Duration;

    #[test]
    fn a_line_reads_back_as_typed_json_fields() {
        let f = json_fields(
            "addr=10.0.0.7 user=- rooms=2 duration=1.500s bytes_in=200 bytes_out=1000 \
             close_code=4000 close_reason=\"bye \\\"now\\\" x=y\" why=kicked",
        )
        .expect("an access line");
        assert_eq!(f["addr"], "10.0.0.7");
        assert!(f["user"].is_null());
        assert_eq!(f["rooms"], 2);
        assert_eq!(f["duration_s"], 1.5);
        assert_eq!(f["close_code"], 4000);
        assert_eq!(f["close_reason"], "bye \"now\" x=y");
        assert_eq!(f["why"], "kicked");
        assert!(json_fields("listening: WebSocket ws://x").is_none());
        assert!(json_fields("a=1 b=\"unterminated").is_none());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in ".{0,80}") {
            let _ = json_fields(&s);
        }
    }

    #[test]
    fn a_line_names_every_field_and_quotes_the_reason() {
        let mut log = AccessLog::default();
        let t = Instant::now();
        log.accepted(3, t);
        log.opened(3, Some("10.0.0.7".parse().unwrap()), Some("bob".into()));
        log.bytes_in(3, 200);
        log.bytes_out(3, 1000);
        log.closing(
            3,
            2,
            CloseReason::Kicked,
            &encode_close(CloseCode::KICKED, "bye \"now\""),
        );
        let e = &log.entries[3];
        assert_eq!(
            line(e, t + Duration::from_millis(1500)),
            "addr=10.0.0.7 user=bob rooms=2 duration=1.500s bytes_in=200 bytes_out=1000 \
             close_code=4000 close_reason=\"bye \\\"now\\\"\" why=kicked"
        );
    }

    #[test]
    fn only_upgraded_connections_are_logged_and_slots_are_reset() {
        let mut log = AccessLog::default();
        log.accepted(0, Instant::now());
        log.bytes_in(0, 10);
        log.finish(0);
        assert!(!log.entries[0].opened && log.entries[0].accepted.is_none());
        log.accepted(0, Instant::now());
        assert_eq!(log.entries[0].bytes_in, 0, "a new connection starts at 0");
        log.abnormal(0, 1);
        let l = line(&log.entries[0], Instant::now());
        assert!(l.contains("user=- rooms=1"), "{l}");
        assert!(
            l.ends_with("close_code=1006 close_reason=\"\" why=abnormal"),
            "{l}"
        );
    }

    #[test]
    fn a_slot_costs_at_most_96_bytes() {
        // The README's figure for the memory --access-log costs per connection.
        let n = std::mem::size_of::<Entry>();
        assert!(n <= 96, "Entry is {n} bytes");
    }

    #[test]
    fn bytes_for_a_slot_never_seen_are_ignored() {
        let mut log = AccessLog::default();
        log.bytes_in(7, 1);
        log.bytes_out(7, 1);
        log.finish(7);
        assert!(log.entries.is_empty());
    }

    #[test]
    fn a_record_handed_over_carries_on_in_the_new_process() {
        let t0 = Instant::now();
        let mut old = AccessLog::default();
        old.accepted(3, t0);
        old.opened(3, Some("10.0.0.7".parse().unwrap()), Some("alice".into()));
        old.bytes_in(3, 100);
        old.bytes_out(3, 250);
        let state = old
            .export(3, t0 + std::time::Duration::from_millis(40))
            .unwrap();
        assert_eq!(
            (state.age_ms, state.bytes_in, state.bytes_out),
            (40, 100, 250)
        );
        let mut new = AccessLog::default();
        new.adopt(9, Some(state), Some("alice".into()), Instant::now());
        new.bytes_out(9, 5);
        let e = &new.entries[9];
        assert!(e.opened);
        assert_eq!((e.bytes_in, e.bytes_out), (100, 255));
        assert_eq!(e.addr, Some("10.0.0.7".parse().unwrap()));
        assert!(old.export(4, t0).is_none());
    }
}
