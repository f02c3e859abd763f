//! What workers tell the coordinator, and how: typed events that travel over an in-process
//! channel (one worker) or as JSON lines on a child process's stdout (`--procs K`), and
//! the stop signal going the other way (a flag + mio waker, or a `stop N` line on stdin).
//!
//! Worker results are built to merge exactly (sums, maxima, histogram counts); nothing
//! here is ever written to stdout by a process that is not a child worker.

use crate::hist::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;

/// Running counts of one worker (or, merged, of all).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Counters {
    /// Connections whose socket was created (connect started).
    pub attempted: u64,
    /// Connections open right now (handshake done, not dropped).
    pub open: u64,
    /// Handshakes completed.
    pub handshakes: u64,
    /// Connections that never completed their handshake.
    pub failed: u64,
    /// Connections dropped after their handshake (server close, reset...).
    pub dropped: u64,
    /// Pushed messages received (fanout).
    pub delivered: u64,
    /// Round trips completed (echo).
    pub round_trips: u64,
    /// Fanout: open subscribers per room. The publisher's window counts the deliveries it
    /// expects from these, not from PUBLISH replies (which in cluster mode count nodes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rooms_open: Vec<u64>,
}

impl Counters {
    pub fn add(&mut self, o: &Counters) {
        if self.rooms_open.len() < o.rooms_open.len() {
            self.rooms_open.resize(o.rooms_open.len(), 0);
        }
        for (a, b) in self.rooms_open.iter_mut().zip(&o.rooms_open) {
            *a += b;
        }
        self.attempted += o.attempted;
        self.open += o.open;
        self.handshakes += o.handshakes;
        self.failed += o.failed;
        self.dropped += o.dropped;
        self.delivered += o.delivered;
        self.round_trips += o.round_trips;
    }
}

/// Order, loss and duplicate checks of one worker's fanout subscribers.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FanoutCheck {
    /// Subscribers that completed their handshake.
    pub subscribers: u64,
    /// Deliveries those subscribers should have had for the messages published.
    pub expected: u64,
    /// Distinct messages received.
    pub received: u64,
    /// Expected but never received (including by subscribers the server dropped).
    pub lost: u64,
    /// Received after a later message of the same stream.
    pub reordered: u64,
    /// Received more than once.
    pub duplicated: u64,
    /// Received by a subscriber that is not in the message's room, or an unknown sequence.
    pub foreign: u64,
    /// Not a text frame of the form `<seq> <send_ns> ...`.
    pub malformed: u64,
    /// Per message sequence: the latest receipt minus its send time over this worker's
    /// subscribers, in ns (0 = nobody here received it).
    pub last_receipt_ns: Vec<u64>,
    /// With several `--url`s: the same counts per URL, in `--url` order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_url: Vec<UrlCheck>,
}

/// Loss counts of the subscribers connected through one URL.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UrlCheck {
    pub subscribers: u64,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    /// Send → receipt per delivery, ns.
    pub latency_ns: Histogram,
}

impl UrlCheck {
    pub fn add(&mut self, o: &UrlCheck) {
        self.subscribers += o.subscribers;
        self.expected += o.expected;
        self.received += o.received;
        self.lost += o.lost;
        self.latency_ns.merge(&o.latency_ns);
    }
}

impl FanoutCheck {
    pub fn add(&mut self, o: &FanoutCheck) {
        self.subscribers += o.subscribers;
        self.expected += o.expected;
        self.received += o.received;
        self.lost += o.lost;
        self.reordered += o.reordered;
        self.duplicated += o.duplicated;
        self.foreign += o.foreign;
        self.malformed += o.malformed;
        if self.last_receipt_ns.len() < o.last_receipt_ns.len() {
            self.last_receipt_ns.resize(o.last_receipt_ns.len(), 0);
        }
        for (a, b) in self.last_receipt_ns.iter_mut().zip(&o.last_receipt_ns) {
            *a = (*a).max(*b);
        }
        if self.by_url.len() < o.by_url.len() {
            self.by_url.resize(o.by_url.len(), UrlCheck::default());
        }
        for (a, b) in self.by_url.iter_mut().zip(&o.by_url) {
            a.add(b);
        }
    }
}

/// Everything one worker measured, sent once at the end.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WorkerResult {
    pub counters: Counters,
    /// Handshake failures by cause (`refused`, `reset`, `timeout`, `http 503`, ...).
    pub failures: BTreeMap<String, u64>,
    /// Drops after the handshake by cause (`close 1008`, `reset`, ...).
    pub drops: BTreeMap<String, u64>,
    /// Connect start → handshake complete, ns.
    pub handshake_ns: Histogram,
    /// Monotonic time of the first connect attempt and of the last completed handshake.
    pub first_attempt_ns: u64,
    pub last_handshake_ns: u64,
    /// Fanout: send → receipt per delivery. Echo: round-trip time. In ns.
    pub latency_ns: Histogram,
    /// Echo: how long round trips ran (from this worker's last handshake to its stop), ns.
    pub echo_window_ns: u64,
    /// Echo: replies that were not our message back (wrong length or header).
    pub echo_mismatches: u64,
    pub fanout: Option<FanoutCheck>,
}

impl WorkerResult {
    pub fn add(&mut self, o: &WorkerResult) {
        self.counters.add(&o.counters);
        for (k, v) in &o.failures {
            *self.failures.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.drops {
            *self.drops.entry(k.clone()).or_default() += v;
        }
        self.handshake_ns.merge(&o.handshake_ns);
        if o.first_attempt_ns != 0
            && (self.first_attempt_ns == 0 || o.first_attempt_ns < self.first_attempt_ns)
        {
            self.first_attempt_ns = o.first_attempt_ns;
        }
        self.last_handshake_ns = self.last_handshake_ns.max(o.last_handshake_ns);
        self.latency_ns.merge(&o.latency_ns);
        self.echo_window_ns = self.echo_window_ns.max(o.echo_window_ns);
        self.echo_mismatches += o.echo_mismatches;
        match (&mut self.fanout, &o.fanout) {
            (Some(a), Some(b)) => a.add(b),
            (None, Some(b)) => self.fanout = Some(b.clone()),
            _ => {}
        }
    }
}

/// What a worker reports, in order: Progress*, Ready, (Progress | Delivered)*, Done.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Event {
    /// Periodic snapshot (about twice a second).
    Progress { worker: u32, counters: Counters },
    /// Every connection of this worker has been attempted and has opened or failed.
    Ready { worker: u32, counters: Counters },
    /// Fanout feedback for the publisher's window: total deliveries so far.
    Delivered { worker: u32, total: u64 },
    /// The final result; the worker exits after it.
    Done {
        worker: u32,
        result: Box<WorkerResult>,
    },
    /// The worker could not run (bad URL, cannot create its poll...).
    Fatal { worker: u32, error: String },
}

/// Where a worker's events go.
pub enum Sink {
    /// In-process worker thread.
    Channel(Sender<Event>),
    /// Child process: one JSON object per line on stdout.
    Stdout,
}

impl Sink {
    /// Sends an event; false if nobody listens any more (the coordinator is gone).
    pub fn emit(&self, ev: Event) -> bool {
        match self {
            Sink::Channel(tx) => tx.send(ev).is_ok(),
            Sink::Stdout => {
                let Ok(line) = serde_json::to_string(&ev) else {
                    return false;
                };
                let mut out = std::io::stdout().lock();
                writeln!(out, "{line}").and_then(|_| out.flush()).is_ok()
            }
        }
    }
}

/// The coordinator's request to stop, with the number of messages it published (so the
/// worker can count what is missing).
pub struct StopSignal {
    requested: AtomicBool,
    /// Messages published, `u64::MAX` when not given.
    published: AtomicU64,
    waker: mio::Waker,
}

impl StopSignal {
    pub fn new(waker: mio::Waker) -> Self {
        StopSignal {
            requested: AtomicBool::new(false),
            published: AtomicU64::new(u64::MAX),
            waker,
        }
    }

    pub fn request(&self, published: Option<u64>) {
        if let Some(p) = published {
            self.published.store(p, Ordering::Release);
        }
        self.requested.store(true, Ordering::Release);
        // A failed wake only delays the stop until the worker's next timer tick.
        let _ = self.waker.wake();
    }

    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    pub fn published(&self) -> Option<u64> {
        match self.published.load(Ordering::Acquire) {
            u64::MAX => None,
            p => Some(p),
        }
    }
}

/// Parses a stop line sent to a child worker: `stop` or `stop <published>`.
pub fn parse_stop_line(line: &str) -> Option<Option<u64>> {
    let mut words = line.split_whitespace();
    if words.next()? != "stop" {
        return None;
    }
    Some(words.next().and_then(|w| w.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_line_carries_the_published_count() {
        assert_eq!(parse_stop_line("stop 1000\n"), Some(Some(1000)));
        assert_eq!(parse_stop_line("stop"), Some(None));
        assert_eq!(parse_stop_line("go"), None);
    }

    #[test]
    fn merged_last_receipt_takes_the_later_receipt_per_message() {
        let mut a = FanoutCheck {
            last_receipt_ns: vec![5, 0, 9],
            lost: 1,
            ..Default::default()
        };
        let b = FanoutCheck {
            last_receipt_ns: vec![7, 3, 1, 4],
            ..Default::default()
        };
        a.add(&b);
        assert_eq!(a.last_receipt_ns, vec![7, 3, 9, 4]);
        assert_eq!(a.lost, 1);
    }

    #[test]
    fn events_round_trip_as_json_lines() {
        let ev = Event::Ready {
            worker: 3,
            counters: Counters {
                open: 7,
                ..Default::default()
            },
        };
        let line = serde_json::to_string(&ev).unwrap_or_default();
        assert!(!line.contains('\n'));
        match serde_json::from_str::<Event>(&line) {
            Ok(Event::Ready { worker, counters }) => assert_eq!((worker, counters.open), (3, 7)),
            other => panic!("round trip gave {other:?}"),
        }
    }
}
