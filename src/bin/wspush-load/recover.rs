//! `wspush-load recover`: how long a wspush.v1 client takes to get back M missed
//! messages. It fills one room once on the control port (M PUBLISHes, pipelined), reads
//! the room's position with HISTORY, then reconnects K times with
//! `recover=ROOM:EPOCH:FROM` and times each attempt from the upgrade request to the M-th
//! replayed message, checking the replay on the way (`joined` with `recovered:true`,
//! offsets FROM+1 .. FROM+M in order, exactly the payloads published).
//!
//! One blocking client, one connection at a time: it measures the recovery path, not
//! the server under load. Every read is under `--timeout` and the run under
//! `--duration`; it publishes to its own room only.

use crate::cli::RecoverArgs;
use crate::coord::{resolve, url_authority, LoadError};
use crate::hist::Histogram;
use crate::report::Pcts;
use crate::resp::{call, encode_command, info_fields, info_u64, parse_reply, Reply, RespError};
use crate::worker::{padded, url_with};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::Message;

/// PUBLISHes sent before their replies are read (bounds the buffers, not the speed).
const FILL_BATCH: u32 = 1000;
/// Bound on the expected payloads held in memory (M × B).
const MAX_EXPECTED_BYTES: u64 = 256 << 20;
const SUBPROTOCOL: &str = "wspush.v1";

/// Why the run could not be carried out at all (a failed reconnect is a result instead).
#[derive(Debug)]
pub enum RecoverError {
    Load(LoadError),
    /// Only `[A-Za-z0-9._-]` so the name goes into the query string as it is.
    BadRoom(String),
    TooBig(u64),
    Control(RespError),
    /// The control port answered something other than what the command promises.
    Reply(&'static str, String),
    /// HISTORY shows fewer retained messages than the client is meant to miss.
    NotRetained {
        kept: usize,
        missed: u32,
    },
}

impl std::fmt::Display for RecoverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecoverError::Load(e) => write!(f, "{e}"),
            RecoverError::BadRoom(r) => {
                write!(f, "room {r:?}: use only letters, digits, '.', '_' and '-'")
            }
            RecoverError::TooBig(b) => write!(
                f,
                "missed × bytes is {} MiB of expected payloads (max {} MiB)",
                b >> 20,
                MAX_EXPECTED_BYTES >> 20
            ),
            RecoverError::Control(e) => write!(f, "{e}"),
            RecoverError::Reply(cmd, r) => write!(f, "unexpected {cmd} reply: {r}"),
            RecoverError::NotRetained { kept, missed } => write!(
                f,
                "the server keeps {kept} messages of the room, the client is to miss {missed}: \
                 start it with --history-size >= {missed} and --max-recover >= {missed}"
            ),
        }
    }
}

impl From<RespError> for RecoverError {
    fn from(e: RespError) -> Self {
        RecoverError::Control(e)
    }
}

impl From<std::io::Error> for RecoverError {
    fn from(e: std::io::Error) -> Self {
        RecoverError::Control(RespError::Io(e))
    }
}

#[derive(Debug, Serialize)]
pub struct RecoverReport {
    pub scenario: &'static str,
    pub url: String,
    pub room: String,
    pub missed: u32,
    pub bytes: usize,
    pub epoch: String,
    /// The offset the client claims to have seen last.
    pub from_offset: u64,
    pub reconnects: u32,
    pub recovered: u64,
    /// Failed reconnects by cause.
    pub failures: BTreeMap<String, u64>,
    /// Upgrade request sent → 101 read.
    pub handshake: Pcts,
    /// Upgrade request sent → the `joined` (recovered:true) read.
    pub joined: Pcts,
    /// Upgrade request sent → the M-th replayed message read: the recovery time.
    pub recovery: Pcts,
    /// Median recovery time divided by M.
    pub us_per_message_p50: f64,
    /// INFO `recoveries` and `replayed_messages` over the timed reconnects.
    pub server_recoveries: Option<u64>,
    pub server_replayed: Option<u64>,
    pub elapsed_s: f64,
    pub hit_duration_bound: bool,
    pub problems: Vec<String>,
}

struct Times {
    handshake: Duration,
    joined: Duration,
    last: Duration,
}

/// Runs the command and prints its report; the exit status as for the scenarios.
pub fn main(a: &RecoverArgs) -> ExitCode {
    let report = match run(a) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wspush-load recover: {e}");
            return ExitCode::from(2);
        }
    };
    if a.json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("wspush-load recover: cannot encode the report: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        print!("{}", human(&report));
    }
    if report.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn run(a: &RecoverArgs) -> Result<RecoverReport, RecoverError> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(a.duration);
    let timeout = Duration::from_secs(a.timeout.max(1));
    if a.room.is_empty()
        || a.room.len() > 128
        || !a
            .room
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
    {
        return Err(RecoverError::BadRoom(a.room.clone()));
    }
    let need = a.missed as u64 * a.b as u64;
    if need > MAX_EXPECTED_BYTES {
        return Err(RecoverError::TooBig(need));
    }
    let ws_addr =
        resolve(&url_authority(&a.url).map_err(RecoverError::Load)?).map_err(RecoverError::Load)?;
    let control = resolve(&a.control).map_err(RecoverError::Load)?;

    let expected: Vec<String> = (0..a.missed)
        .map(|k| padded(&format!("{k} "), a.b))
        .collect();
    fill(control, &a.room, &expected, timeout)?;
    let (epoch, current) = position(control, &a.room, a.missed, timeout)?;
    let from = current - a.missed as u64;

    let url = url_with(
        &a.url,
        &format!(
            "user=recover-bench&rooms={r}&recover={r}:{epoch}:{from}",
            r = a.room
        ),
    );
    let before = server_counters(control, timeout);
    let (mut hs, mut joined, mut rec) = (Histogram::new(), Histogram::new(), Histogram::new());
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    let mut attempted = 0;
    let mut hit_bound = false;
    while attempted < a.reconnects {
        if Instant::now() >= deadline {
            hit_bound = true;
            break;
        }
        attempted += 1;
        match once(ws_addr, &url, &a.room, &epoch, from, &expected, timeout) {
            Ok(t) => {
                hs.record(t.handshake.as_nanos() as u64);
                joined.record(t.joined.as_nanos() as u64);
                rec.record(t.last.as_nanos() as u64);
            }
            Err(cause) => *failures.entry(cause).or_default() += 1,
        }
    }
    let after = server_counters(control, timeout);

    let mut problems = Vec::new();
    for (cause, n) in &failures {
        problems.push(format!("{n} reconnects failed: {cause}"));
    }
    if hit_bound {
        problems.push(format!(
            "--duration {} s reached after {attempted} of {} reconnects",
            a.duration, a.reconnects
        ));
    }
    let recovery = Pcts::of(&rec);
    let delta = |i: usize| match (before, after) {
        (Some(b), Some(a)) => Some(a[i].saturating_sub(b[i])),
        _ => None,
    };
    Ok(RecoverReport {
        scenario: "recover",
        url: a.url.clone(),
        room: a.room.clone(),
        missed: a.missed,
        bytes: a.b,
        epoch,
        from_offset: from,
        reconnects: attempted,
        recovered: rec.count(),
        failures,
        handshake: Pcts::of(&hs),
        joined: Pcts::of(&joined),
        us_per_message_p50: recovery.p50_ms * 1e3 / a.missed as f64,
        recovery,
        server_recoveries: delta(0),
        server_replayed: delta(1),
        elapsed_s: start.elapsed().as_secs_f64(),
        hit_duration_bound: hit_bound,
        problems,
    })
}

/// PUBLISHes every expected payload to `room`, in batches, checking each reply.
fn fill(
    control: SocketAddr,
    room: &str,
    payloads: &[String],
    timeout: Duration,
) -> Result<(), RecoverError> {
    let mut s = TcpStream::connect_timeout(&control, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    for batch in payloads.chunks(FILL_BATCH as usize) {
        let mut out = Vec::new();
        for p in batch {
            encode_command(&mut out, &[b"PUBLISH", room.as_bytes(), p.as_bytes()]);
        }
        s.write_all(&out)?;
        let (mut buf, mut chunk, mut left) = (Vec::new(), [0u8; 16 * 1024], batch.len());
        while left > 0 {
            while let Some((reply, used)) = parse_reply(&buf)? {
                buf.drain(..used);
                if !matches!(reply, Reply::Integer(_)) {
                    return Err(RecoverError::Reply("PUBLISH", format!("{reply:?}")));
                }
                left -= 1;
                if left == 0 {
                    break;
                }
            }
            if left == 0 {
                break;
            }
            let n = s.read(&mut chunk)?;
            if n == 0 {
                return Err(RespError::Closed.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    Ok(())
}

/// The room's epoch and current offset from `HISTORY room missed`, which must list
/// `missed` retained messages.
fn position(
    control: SocketAddr,
    room: &str,
    missed: u32,
    timeout: Duration,
) -> Result<(String, u64), RecoverError> {
    let count = missed.to_string();
    let reply = call(
        control,
        &[b"HISTORY", room.as_bytes(), count.as_bytes()],
        timeout,
    )?;
    let bad = |r: &Reply| RecoverError::Reply("HISTORY", format!("{r:?}"));
    let Reply::Array(Some(parts)) = &reply else {
        return Err(bad(&reply));
    };
    let (Some(Reply::Bulk(Some(epoch))), Some(Reply::Integer(offset)), Some(Reply::Array(e))) =
        (parts.first(), parts.get(1), parts.get(2))
    else {
        return Err(bad(&reply));
    };
    let kept = e.as_ref().map_or(0, Vec::len);
    if kept < missed as usize || (*offset as u64) < missed as u64 {
        return Err(RecoverError::NotRetained { kept, missed });
    }
    Ok((String::from_utf8_lossy(epoch).into_owned(), *offset as u64))
}

/// INFO `recoveries` and `replayed_messages`, if the server reports them.
fn server_counters(control: SocketAddr, timeout: Duration) -> Option<[u64; 2]> {
    let Ok(Reply::Bulk(Some(text))) = call(control, &[b"INFO", b"history"], timeout) else {
        return None;
    };
    let f = info_fields(&String::from_utf8_lossy(&text));
    Some([
        info_u64(&f, "recoveries")?,
        info_u64(&f, "replayed_messages")?,
    ])
}

/// One timed reconnect; `Err` names why it failed.
fn once(
    addr: SocketAddr,
    url: &str,
    room: &str,
    epoch: &str,
    from: u64,
    expected: &[String],
    timeout: Duration,
) -> Result<Times, String> {
    let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("socket: {e}"))?;
    let mut req = url
        .into_client_request()
        .map_err(|e| format!("request: {e}"))?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    let t0 = Instant::now();
    let (mut ws, resp) =
        tungstenite::client::client(req, stream).map_err(|e| format!("handshake: {e}"))?;
    let handshake = t0.elapsed();
    if resp
        .headers()
        .get("Sec-WebSocket-Protocol")
        .map(|v| v.as_bytes())
        != Some(SUBPROTOCOL.as_bytes())
    {
        return Err("the 101 does not name wspush.v1".into());
    }
    let mut joined = None;
    let mut got = 0usize;
    let last = loop {
        if t0.elapsed() > timeout {
            return Err("timeout".into());
        }
        let text = match ws.read() {
            Ok(Message::Text(t)) => t,
            Ok(Message::Binary(_)) => return Err("binary frame in wspush.v1".into()),
            Ok(Message::Close(f)) => {
                return Err(f.map_or("close (no code)".into(), |f| {
                    format!("close {}", u16::from(f.code))
                }))
            }
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                return Err("timeout".into())
            }
            Err(e) => return Err(format!("read: {e}")),
        };
        let v: serde_json::Value =
            serde_json::from_str(text.as_str()).map_err(|_| "a frame that is not JSON")?;
        if v["room"] != room {
            return Err(format!("a frame of another kind: {}", short(text.as_str())));
        }
        if v["op"] == "joined" {
            if v["recovered"] != true {
                return Err(format!("not recovered: {}", short(text.as_str())));
            }
            if v["epoch"] != epoch {
                return Err("joined with another epoch".into());
            }
            joined = Some(t0.elapsed());
            continue;
        }
        if joined.is_none() {
            return Err("a room push before joined".into());
        }
        if v["offset"].as_u64() != Some(from + 1 + got as u64) || v["epoch"] != epoch {
            return Err(format!("gap or reorder at replayed message {got}"));
        }
        if v["data"].as_str() != expected.get(got).map(String::as_str) {
            return Err(format!("replayed message {got} has another payload"));
        }
        got += 1;
        if got == expected.len() {
            break t0.elapsed();
        }
    };
    // A polite close so the server is not left counting resets; its echo is not waited
    // for longer than a moment.
    let _ = ws
        .get_mut()
        .set_read_timeout(Some(Duration::from_millis(500)));
    if ws.close(None).is_ok() {
        while ws.read().is_ok() {}
    }
    Ok(Times {
        handshake,
        joined: joined.unwrap_or(last),
        last,
    })
}

fn short(s: &str) -> String {
    s.chars().take(120).collect()
}

fn human(r: &RecoverReport) -> String {
    let line = |p: &Pcts| {
        format!(
            "p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3} ms  (n={})",
            p.p50_ms, p.p90_ms, p.p99_ms, p.max_ms, p.count
        )
    };
    let mut s = format!(
        "== wspush-load recover against {} (room {}, {} missed messages of {} B, epoch {}, from offset {})\n",
        r.url, r.room, r.missed, r.bytes, r.epoch, r.from_offset
    );
    s += &format!(
        "reconnects: {} recovered, {} attempted, {:.1} s\n",
        r.recovered, r.reconnects, r.elapsed_s
    );
    s += &format!("handshake (upgrade → 101):     {}\n", line(&r.handshake));
    s += &format!("joined (upgrade → joined):     {}\n", line(&r.joined));
    s += &format!(
        "recovery (upgrade → message {}): {}\n",
        r.missed,
        line(&r.recovery)
    );
    s += &format!(
        "per replayed message (p50): {:.2} µs\n",
        r.us_per_message_p50
    );
    for p in &r.problems {
        s += &format!("PROBLEM: {p}\n");
    }
    s
}
