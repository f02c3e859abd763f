//! The fanout publisher: one pipelined RESP connection to the control port on its own mio
//! loop, sending `PUBLISH room-<k % R> "<k> <send_ns> xxx..."` (or `BROADCAST`) either at a
//! fixed rate or as fast as a window allows.
//!
//! Window: at most W commands await their reply, and the deliveries expected for the
//! messages sent (open subscribers of each message's room when it was sent) minus the
//! deliveries subscribers have reported stay below W messages' worth. Only what the
//! subscribers report counts, never the `:N` replies: in cluster mode a reply is "local
//! recipients + other nodes that got it", not a delivery count. It never blocks except in
//! `Poll::poll` and stops at its deadline whatever the server does.

use crate::resp::{encode_command, parse_reply, Reply, RespError};
use crate::sys::mono_ns;
use crate::worker::padded;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// How messages are paced.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    /// Messages per second.
    Rate(f64),
    /// Messages in flight.
    Window(u32),
}

pub struct PublishPlan {
    pub control: SocketAddr,
    pub rooms: u32,
    pub messages: u32,
    pub bytes: usize,
    pub broadcast: bool,
    pub pace: Pace,
    /// Expected recipients of one message (subscribers per room, or all for broadcast),
    /// to turn the window into a deliveries bound.
    pub per_message: u64,
    pub deadline_ns: u64,
}

/// What publishing achieved.
#[derive(Clone, Debug, Default)]
pub struct Published {
    /// Commands sent.
    pub sent: u64,
    /// Commands answered with an integer.
    pub acked: u64,
    /// Sum of the integer replies: deliveries the server queued (standalone), or local
    /// deliveries plus other nodes reached (cluster mode).
    pub queued: u64,
    /// Deliveries the subscribers should see for the messages sent, from the open
    /// subscribers of each message's room at the time it was sent.
    pub expected: u64,
    /// `-ERR` replies, and the first one's text.
    pub errors: u64,
    pub first_error: Option<String>,
    /// Monotonic ns of the first send and of the last reply.
    pub first_send_ns: u64,
    pub last_reply_ns: u64,
    /// The deadline cut publishing short.
    pub timed_out: bool,
}

#[derive(Debug)]
pub enum PublishError {
    Connect(std::io::Error),
    Io(std::io::Error),
    Resp(RespError),
    /// A reply that is neither an integer nor an error.
    Unexpected(Reply),
    Closed,
}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublishError::Connect(e) => write!(f, "cannot connect to the control port: {e}"),
            PublishError::Io(e) => write!(f, "control connection: {e}"),
            PublishError::Resp(e) => write!(f, "control reply: {e}"),
            PublishError::Unexpected(r) => write!(f, "unexpected control reply {r:?}"),
            PublishError::Closed => write!(f, "control port closed the connection"),
        }
    }
}

const CONTROL: Token = Token(0);

/// Publishes every message, reading `delivered` (total deliveries reported by the
/// subscribers) and `rooms_open` (open subscribers per room), both kept current by the
/// coordinator, to hold the window.
///
/// `cancel` ends publishing early (a worker failed); it is looked at least every 100 ms.
pub fn publish(
    plan: &PublishPlan,
    delivered: &AtomicU64,
    rooms_open: &[AtomicU64],
    cancel: &AtomicBool,
) -> Result<Published, PublishError> {
    let std_stream = std::net::TcpStream::connect_timeout(&plan.control, Duration::from_secs(5))
        .map_err(PublishError::Connect)?;
    std_stream.set_nodelay(true).map_err(PublishError::Io)?;
    std_stream.set_nonblocking(true).map_err(PublishError::Io)?;
    let mut stream = TcpStream::from_std(std_stream);
    let mut poll = Poll::new().map_err(PublishError::Io)?;
    poll.registry()
        .register(
            &mut stream,
            CONTROL,
            Interest::READABLE | Interest::WRITABLE,
        )
        .map_err(PublishError::Io)?;
    let mut events = Events::with_capacity(16);
    let mut out: Vec<u8> = Vec::new();
    let mut out_at = 0usize;
    let mut inbuf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut done = Published::default();
    let start = mono_ns();
    let rooms: Vec<Vec<u8>> = (0..plan.rooms)
        .map(|r| format!("room-{r}").into_bytes())
        .collect();
    let m = plan.messages as u64;

    while done.acked + done.errors < m {
        let now = mono_ns();
        if now >= plan.deadline_ns {
            done.timed_out = true;
            break;
        }
        if cancel.load(Ordering::Acquire) {
            break;
        }
        // Queue every message the pacing allows now.
        let mut wait_ns: Option<u64> = None;
        while done.sent < m {
            let outstanding = done.sent - done.acked - done.errors;
            let allowed = match plan.pace {
                Pace::Rate(r) => {
                    let due = start + (done.sent as f64 * 1e9 / r.max(1e-9)) as u64;
                    if due > now {
                        wait_ns = Some(due - now);
                    }
                    due <= now
                }
                Pace::Window(w) => {
                    let w = w as u64;
                    let lag = done
                        .expected
                        .saturating_sub(delivered.load(Ordering::Acquire));
                    if outstanding >= w {
                        false
                    } else if lag >= w * plan.per_message.max(1) {
                        // Subscribers are behind: look again shortly (their reports are
                        // batched every few milliseconds).
                        wait_ns = Some(1_000_000);
                        false
                    } else {
                        true
                    }
                }
            };
            if !allowed {
                break;
            }
            let k = done.sent;
            let payload = padded(&format!("{k} {}", mono_ns()), plan.bytes);
            let r = (k % plan.rooms as u64) as usize;
            if plan.broadcast {
                encode_command(&mut out, &[b"BROADCAST", payload.as_bytes()]);
                done.expected += rooms_open
                    .iter()
                    .map(|n| n.load(Ordering::Acquire))
                    .sum::<u64>();
            } else {
                encode_command(&mut out, &[b"PUBLISH", &rooms[r], payload.as_bytes()]);
                done.expected += rooms_open.get(r).map_or(0, |n| n.load(Ordering::Acquire));
            }
            if done.sent == 0 {
                done.first_send_ns = mono_ns();
            }
            done.sent += 1;
        }
        // Write what we can.
        while out_at < out.len() {
            match stream.write(&out[out_at..]) {
                Ok(0) => return Err(PublishError::Closed),
                Ok(n) => out_at += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(PublishError::Io(e)),
            }
        }
        if out_at == out.len() {
            out.clear();
            out_at = 0;
        }
        // Read every reply there is.
        let mut read_any = false;
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => return Err(PublishError::Closed),
                Ok(n) => {
                    inbuf.extend_from_slice(&chunk[..n]);
                    read_any = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(PublishError::Io(e)),
            }
        }
        let mut used = 0;
        while let Some((reply, n)) = parse_reply(&inbuf[used..]).map_err(PublishError::Resp)? {
            used += n;
            match reply {
                Reply::Integer(q) => {
                    done.acked += 1;
                    done.queued += q.max(0) as u64;
                }
                Reply::Error(e) => {
                    done.errors += 1;
                    done.first_error.get_or_insert(e);
                }
                other => return Err(PublishError::Unexpected(other)),
            }
            done.last_reply_ns = mono_ns();
        }
        inbuf.drain(..used);
        if read_any || done.acked + done.errors >= m {
            // Replies may have opened the window: go round again before sleeping.
            continue;
        }
        let deadline_wait = plan.deadline_ns.saturating_sub(mono_ns());
        let timeout = wait_ns
            .unwrap_or(deadline_wait)
            .min(deadline_wait)
            .min(100_000_000);
        match poll.poll(&mut events, Some(Duration::from_nanos(timeout))) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(PublishError::Io(e)),
        }
    }
    Ok(done)
}
