//! Heartbeats of the server's threads, behind `GET /healthz`, and the readiness
//! behind `GET /readyz`.
//!
//! Each reactor and the dispatcher stamp their slot once per loop turn (one relaxed
//! store; their loops wake at least every second). A slot is marked dead when its
//! thread leaves its loop, also by unwinding from a panic. `/healthz` answers 200
//! only if every slot is alive and was stamped within `STALE_AFTER`: a balancer then
//! stops sending clients to a process with a dead or stuck thread. A thread that has
//! not made its first turn yet counts as alive for `STALE_AFTER` after start-up.
//!
//! `/readyz` is stricter: also 503 while starting (some thread has not entered its
//! loop yet), while draining (after SIGTERM, `--drain-delay`), and while a cluster node's
//! broker link is down.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// A thread that has not finished a loop turn for this long counts as stuck.
pub const STALE_AFTER: Duration = Duration::from_secs(5);

const DEAD: u64 = u64::MAX;
/// A slot whose thread has not made its first turn.
const NEVER: u64 = u64::MAX - 1;

/// One heartbeat slot per reactor, then one for the dispatcher.
#[derive(Debug)]
pub struct Liveness {
    started: Instant,
    /// Milliseconds since `started` of each thread's last turn, or `DEAD`.
    beats: Vec<AtomicU64>,
    /// The broker link's state, a [`Broker`] as u8 (set by the dispatcher).
    broker: AtomicU8,
    /// SIGTERM came: the process is about to stop serving.
    draining: AtomicBool,
}

/// Whether a node is linked to its cluster, for `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    /// No `--redis`: nothing to be linked to.
    Standalone,
    /// Every broker connection is up.
    Up,
    /// At least one broker connection is down.
    Down,
}

/// Which thread a health check found failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unhealthy {
    Reactor(usize),
    Dispatcher,
}

/// Why `/readyz` says 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    /// A thread is dead or stuck (what `/healthz` says too).
    Unhealthy(Unhealthy),
    /// Some thread has not made its first loop turn.
    Starting,
    /// Shutting down: balancers should send new clients elsewhere.
    Draining,
    /// Cluster mode: a broker connection is down.
    BrokerDown,
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotReady::Unhealthy(u) => write!(f, "unhealthy: {u}"),
            NotReady::Starting => f.write_str("not ready: starting"),
            NotReady::Draining => f.write_str("not ready: draining"),
            NotReady::BrokerDown => f.write_str("not ready: broker unavailable"),
        }
    }
}

impl std::fmt::Display for Unhealthy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unhealthy::Reactor(i) => write!(f, "reactor {i} is not running"),
            Unhealthy::Dispatcher => f.write_str("dispatcher is not running"),
        }
    }
}

impl Liveness {
    pub fn new(reactors: usize) -> Liveness {
        Liveness {
            started: Instant::now(),
            beats: (0..=reactors).map(|_| AtomicU64::new(NEVER)).collect(),
            broker: AtomicU8::new(Broker::Standalone as u8),
            draining: AtomicBool::new(false),
        }
    }

    /// From now on `/readyz` says "draining" (for good: the process is stopping).
    pub fn set_draining(&self) {
        self.draining.store(true, Relaxed);
    }

    /// Every reactor has entered its loop (the dispatcher may not have yet).
    pub fn reactors_started(&self) -> bool {
        let last = self.dispatcher_slot();
        self.beats[..last].iter().all(|b| b.load(Relaxed) != NEVER)
    }

    /// Ok if `/readyz` may say 200; else the first reason it may not.
    pub fn ready(&self) -> Result<(), NotReady> {
        self.check().map_err(NotReady::Unhealthy)?;
        if self.draining.load(Relaxed) {
            return Err(NotReady::Draining);
        }
        if self.beats.iter().any(|b| b.load(Relaxed) == NEVER) {
            return Err(NotReady::Starting);
        }
        if self.broker() == Broker::Down {
            return Err(NotReady::BrokerDown);
        }
        Ok(())
    }

    pub fn set_broker(&self, state: Broker) {
        self.broker.store(state as u8, Relaxed);
    }

    pub fn broker(&self) -> Broker {
        match self.broker.load(Relaxed) {
            x if x == Broker::Up as u8 => Broker::Up,
            x if x == Broker::Down as u8 => Broker::Down,
            _ => Broker::Standalone,
        }
    }

    /// The dispatcher's slot.
    pub fn dispatcher_slot(&self) -> usize {
        self.beats.len() - 1
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Stamps slot `i` (a reactor index or `dispatcher_slot()`).
    pub fn beat(&self, i: usize) {
        if let Some(b) = self.beats.get(i) {
            b.store(self.now_ms(), Relaxed);
        }
    }

    /// Marks slot `i` dead for good.
    pub fn died(&self, i: usize) {
        if let Some(b) = self.beats.get(i) {
            b.store(DEAD, Relaxed);
        }
    }

    /// Ok if every thread is alive and not stuck; else the first that is not.
    pub fn check(&self) -> Result<(), Unhealthy> {
        let now = self.now_ms();
        let stale = STALE_AFTER.as_millis() as u64;
        let last = self.dispatcher_slot();
        for (i, b) in self.beats.iter().enumerate() {
            let t = b.load(Relaxed);
            // Not started yet: stuck only once start-up has taken that long.
            let t = if t == NEVER { 0 } else { t };
            if t == DEAD || now.saturating_sub(t) > stale {
                return Err(if i == last {
                    Unhealthy::Dispatcher
                } else {
                    Unhealthy::Reactor(i)
                });
            }
        }
        Ok(())
    }

    /// A guard that marks slot `i` dead when dropped: at the end of the thread's loop,
    /// or while unwinding from a panic.
    pub fn guard(self: &std::sync::Arc<Self>, i: usize) -> DeathMark {
        DeathMark {
            liveness: self.clone(),
            slot: i,
        }
    }
}

/// See [`Liveness::guard`].
pub struct DeathMark {
    liveness: std::sync::Arc<Liveness>,
    slot: usize,
}

impl Drop for DeathMark {
    fn drop(&mut self) {
        self.liveness.died(self.slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn healthy_only_while_every_thread_beats() {
        let l = Arc::new(Liveness::new(2));
        assert_eq!(l.check(), Ok(()));
        {
            let _g = l.guard(1);
            l.beat(1);
            assert_eq!(l.check(), Ok(()));
        }
        assert_eq!(l.check(), Err(Unhealthy::Reactor(1)));
        let l = Arc::new(Liveness::new(1));
        drop(l.guard(l.dispatcher_slot()));
        assert_eq!(l.check(), Err(Unhealthy::Dispatcher));
    }

    #[test]
    fn ready_only_once_every_thread_has_turned_and_not_while_draining() {
        let l = Liveness::new(1);
        assert_eq!(l.ready(), Err(NotReady::Starting));
        assert!(!l.reactors_started());
        l.beat(0);
        assert!(l.reactors_started());
        assert_eq!(l.ready(), Err(NotReady::Starting), "the dispatcher has not");
        l.beat(l.dispatcher_slot());
        assert_eq!(l.ready(), Ok(()));
        l.set_broker(Broker::Down);
        assert_eq!(l.ready(), Err(NotReady::BrokerDown));
        l.set_broker(Broker::Up);
        assert_eq!(l.ready(), Ok(()));
        l.set_draining();
        assert_eq!(l.ready(), Err(NotReady::Draining));
        assert_eq!(l.check(), Ok(()), "draining is still alive");
        l.died(0);
        assert_eq!(
            l.ready(),
            Err(NotReady::Unhealthy(Unhealthy::Reactor(0))),
            "a dead thread comes first"
        );
    }

    #[test]
    fn a_panicking_thread_is_marked_dead() {
        let l = Arc::new(Liveness::new(1));
        let l2 = l.clone();
        let r = std::thread::spawn(move || {
            let _g = l2.guard(0);
            panic!("reactor bug");
        })
        .join();
        assert!(r.is_err());
        assert_eq!(l.check(), Err(Unhealthy::Reactor(0)));
    }
}
