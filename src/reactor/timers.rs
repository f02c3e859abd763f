//! The reactor's clock and its coarse timer: one pass over the slab per scan interval
//! closes handshakes, idle connections and closes that took too long, and pings quiet
//! connections. Cheaper than a timer object per connection: a pass over a million
//! 100-byte entries is a few milliseconds, and nothing is allocated per connection.
//!
//! Ticks are 10 ms. The reactor keeps them as `u64` (absolute deadlines never wrap);
//! a connection stores its last tick truncated to `u32` and only ever takes a
//! wrapping difference of it, which is exact for 497 days after the event.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::conn::{flag, Phase};
use super::outbox::Chunk;
use super::settings::Settings;
use super::Reactor;
use crate::link::stats::{CloseReason, HANDSHAKE_TIMEOUT};
use crate::ws::close::CloseCode;

/// One reactor clock tick.
pub const TICK: Duration = Duration::from_millis(10);
/// Time allowed to a closing connection to finish the close handshake.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

static PING_FRAME: [u8; 2] = [0x89, 0x00];

/// `d` in whole ticks.
pub fn ticks(d: Duration) -> u64 {
    u64::try_from(d.as_millis() / TICK.as_millis()).unwrap_or(u64::MAX / 2)
}

/// The reactor's monotonic clock in ticks. `offset` lets a test start it anywhere,
/// e.g. just before the 32-bit boundary of the connections' stored ticks.
pub struct Clock {
    started: Instant,
    pub offset: u64,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            started: Instant::now(),
            offset: 0,
        }
    }

    pub fn now(&self) -> u64 {
        self.at(Instant::now())
    }

    /// The tick of `t` (an instant the caller already read).
    pub fn at(&self, t: Instant) -> u64 {
        self.offset
            .saturating_add(ticks(t.saturating_duration_since(self.started)))
    }
}

/// Seconds since the Unix epoch (token expiry is wall-clock time).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A token expiry as a connection stores it: 32-bit Unix seconds (until 2106),
/// never 0 (which means "no expiry").
pub fn unix_stamp(at: u64) -> u32 {
    u32::try_from(at).unwrap_or(u32::MAX).max(1)
}

/// A tick as a connection stores it.
pub fn stamp(now: u64) -> u32 {
    now as u32
}

/// Ticks since a stored stamp (wrapping, so right across the 32-bit boundary).
pub fn age(now: u64, stamp: u32) -> u32 {
    (now as u32).wrapping_sub(stamp)
}

/// Timeouts in reactor ticks (at least one, for those that are set: start-up
/// refuses non-zero values shorter than a tick).
pub struct Timeouts {
    pub handshake: u32,
    pub ping: u32,
    pub idle: u32,
    pub close: u32,
    /// How often the timer scan runs.
    pub scan: u64,
}

impl Timeouts {
    pub fn new(s: &Settings) -> Timeouts {
        // At most 1 s, so a token is cut off within a second of its expiry.
        let mut scan = Duration::from_secs(1).min(s.handshake_timeout / 4);
        for d in [s.ping_interval, s.idle_timeout, s.shutdown_grace] {
            if !d.is_zero() {
                scan = scan.min(d / 4);
            }
        }
        let t32 = |d: Duration| -> u32 {
            if d.is_zero() {
                0
            } else {
                // Ages are u32 differences: keep timeouts well inside them.
                ticks(d).clamp(1, u64::from(u32::MAX / 2)) as u32
            }
        };
        Timeouts {
            handshake: t32(s.handshake_timeout).max(1),
            ping: t32(s.ping_interval),
            idle: t32(s.idle_timeout),
            close: t32(CLOSE_TIMEOUT),
            scan: ticks(scan).max(1),
        }
    }
}

/// What the scan found a connection's time to be up for.
#[derive(Clone, Copy)]
pub enum Expiry {
    Handshake,
    Idle,
    Closing,
    /// The token's `exp` (plus leeway) has passed without a refresh.
    Token,
}

impl Reactor {
    /// Runs the timer scan when it is due.
    pub(super) fn run_timers(&mut self) {
        if self.now >= self.next_scan {
            self.scan();
            self.next_scan = self.now + self.timeouts.scan;
        }
    }

    /// Ticks until the earliest deadline, for the poll timeout.
    pub(super) fn ticks_until(&self, until: u64) -> u32 {
        until
            .saturating_sub(self.clock.now())
            .clamp(1, u64::from(u32::MAX)) as u32
    }

    fn scan(&mut self) {
        let now = self.now;
        let t = &self.timeouts;
        let mut expired = std::mem::take(&mut self.expired);
        let mut pending_bytes = 0u64;
        // Token expiry is wall-clock time (the issuer's `exp`), read once per scan.
        let unix = unix_stamp(unix_now());
        for (key, conn) in self.conns.iter_mut() {
            if conn.has(flag::REFRESHED) {
                // Only then: the scan must not dirty every idle entry's cache line.
                conn.clear(flag::REFRESHED);
            }
            let age = age(now, conn.last_seen);
            pending_bytes += conn.pending() as u64;
            match conn.phase {
                Phase::Open if conn.expires != 0 && unix >= conn.expires => {
                    expired.push((key as u32, Expiry::Token))
                }
                Phase::Proxy | Phase::Handshake if age >= t.handshake => {
                    expired.push((key as u32, Expiry::Handshake))
                }
                Phase::Open if t.idle > 0 && age >= t.idle => {
                    expired.push((key as u32, Expiry::Idle))
                }
                Phase::Open if t.ping > 0 && age >= t.ping && !conn.has(flag::PINGED) => {
                    conn.set(flag::PINGED);
                    let idx = self.outbox.add_frame(Chunk::Static(&PING_FRAME));
                    if self.outbox.append(&mut conn.chain, idx) && !conn.has(flag::DIRTY) {
                        conn.set(flag::DIRTY);
                        self.outbox.dirty.push(key as u32);
                    }
                    self.local.pings_sent += 1;
                }
                Phase::Closing if age >= t.close => expired.push((key as u32, Expiry::Closing)),
                _ => {}
            }
        }
        for &(key, why) in &expired {
            match why {
                Expiry::Handshake => {
                    self.local.handshake_failures[HANDSHAKE_TIMEOUT] += 1;
                    self.close_now(key);
                }
                Expiry::Idle => {
                    self.local.idle_closes += 1;
                    self.close_with_reason(
                        key,
                        CloseCode::GOING_AWAY,
                        "idle timeout",
                        CloseReason::Idle,
                    );
                }
                Expiry::Closing => self.close_now(key),
                Expiry::Token => {
                    self.local.token_expired_closes += 1;
                    self.close_with_reason(
                        key,
                        CloseCode::TOKEN_EXPIRED,
                        "token expired",
                        CloseReason::TokenExpired,
                    );
                }
            }
        }
        expired.clear();
        self.expired = expired;
        let g = &self.gauges;
        g.sockets.store(self.conns.len() as u64, Ordering::Relaxed);
        g.rooms.store(self.rooms.len() as u64, Ordering::Relaxed);
        g.pending_bytes.store(pending_bytes, Ordering::Relaxed);
        g.grant_sets
            .store(self.grants.len() as u64, Ordering::Relaxed);
        g.users.store(self.users.len() as u64, Ordering::Relaxed);
        g.peer_slots
            .store(self.peer_slots.len() as u64, Ordering::Relaxed);
        g.position_waits
            .store(self.positions.len() as u64, Ordering::Relaxed);
        // After a storm, give back the slot map's capacity.
        if self.peer_slots.capacity() > 1024
            && self.peer_slots.len() * 4 < self.peer_slots.capacity()
        {
            self.peer_slots.shrink_to(self.peer_slots.len() * 2);
        }
        // One shard of the per-address table per scan: idle addresses expire.
        let now_ms = self.shared.epoch.elapsed().as_millis() as u64;
        self.shared.peers.sweep(now_ms);
    }
}
