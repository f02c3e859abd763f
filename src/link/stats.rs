//! Counters a reactor publishes for `INFO` (the dispatcher only reads them).
//!
//! Each reactor owns one `ReactorStats` (its own cache lines); it counts locally during
//! a loop turn and adds to these atomics once per turn, so the hot path never touches
//! shared memory. The dispatcher only reads them. The latency histograms are the
//! exception: a reactor observes into them directly (a few relaxed adds per batch,
//! per handshake and per turn), never per delivery.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::auth::AuthError;
use crate::ws::handshake::HandshakeError;

pub use super::histogram::Histogram;

/// Handshake failure reasons, in the order of the `handshake_failures` slots.
pub const HANDSHAKE_FAILURES: [HandshakeError; 12] = HandshakeError::ALL;

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// Published counters (monotonic unless noted).
        #[derive(Default)]
        pub struct ReactorStats {
            $(pub $name: AtomicU64,)*
            /// Handshake failures by reason (index into HANDSHAKE_FAILURES), plus one
            /// slot for handshake timeouts.
            pub handshake_failures: [AtomicU64; HANDSHAKE_FAILURES.len() + 1],
            /// Refused tokens by reason (index into `AuthError::ALL`).
            pub auth_failures: [AtomicU64; AuthError::ALL.len()],
            /// Closed WebSocket connections by why (index into `CloseReason::ALL`).
            pub closes: [AtomicU64; CloseReason::ALL.len()],
            /// From the dispatcher's turn that received a push command to the end of
            /// the reactor turn that wrote its frames (sampled: one push per batch).
            pub push_latency: Histogram,
            /// From accept to the 101 handed to the kernel, per upgraded connection.
            pub handshake_duration: Histogram,
            /// Busy time of each loop turn (poll return to the next poll).
            pub turn_duration: Histogram,
        }

        /// Counts of one loop turn, added to `ReactorStats` at its end.
        #[derive(Default)]
        pub struct LocalStats {
            $(pub $name: u64,)*
            pub handshake_failures: [u64; HANDSHAKE_FAILURES.len() + 1],
            pub auth_failures: [u64; AuthError::ALL.len()],
            pub closes: [u64; CloseReason::ALL.len()],
        }

        impl LocalStats {
            /// Adds the turn's counts to `to` and zeroes them.
            pub fn publish(&mut self, to: &ReactorStats) {
                $(if self.$name != 0 {
                    to.$name.fetch_add(self.$name, Relaxed);
                    self.$name = 0;
                })*
                for (i, n) in self.handshake_failures.iter_mut().enumerate() {
                    if *n != 0 {
                        to.handshake_failures[i].fetch_add(*n, Relaxed);
                        *n = 0;
                    }
                }
                for (i, n) in self.auth_failures.iter_mut().enumerate() {
                    if *n != 0 {
                        to.auth_failures[i].fetch_add(*n, Relaxed);
                        *n = 0;
                    }
                }
                for (i, n) in self.closes.iter_mut().enumerate() {
                    if *n != 0 {
                        to.closes[i].fetch_add(*n, Relaxed);
                        *n = 0;
                    }
                }
            }
        }
    };
}

counters!(
    accepted,
    handshakes,
    closed,
    deliveries,
    bytes_written,
    writev_calls,
    slow_closes,
    slow_drops,
    messages_received,
    bytes_received,
    pings_sent,
    idle_closes,
    protocol_closes,
    kicked,
    accept_pauses,
    handshakes_refused,
    slow_close_discards,
    outbox_overflows,
    rooms_forbidden,
    user_param_refused,
    join_forbidden,
    token_refreshes,
    refresh_failures,
    token_expired_closes,
    proxy_header_failures,
    replayed,
);

/// Index of the "handshake timeout" slot in `handshake_failures`.
pub const HANDSHAKE_TIMEOUT: usize = HANDSHAKE_FAILURES.len();

/// Slot of a handshake error in `handshake_failures`.
pub fn failure_index(e: HandshakeError) -> usize {
    HANDSHAKE_FAILURES
        .iter()
        .position(|&x| x == e)
        .unwrap_or(HANDSHAKE_TIMEOUT)
}

/// Slot of a token refusal in `auth_failures`.
pub fn auth_failure_index(e: AuthError) -> usize {
    AuthError::ALL.iter().position(|&x| x == e).unwrap_or(0)
}

/// Why an open WebSocket connection ended: each is counted once per connection, by
/// the first path that closes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent a Close frame first.
    Client,
    /// The client broke the protocol (1002, 1007, 1009, an invalid Close frame).
    Protocol,
    /// Silent past `--idle-timeout`.
    Idle,
    /// Over `--max-pending` under the close policy (1008).
    SlowConsumer,
    /// `KICK` (4000).
    Kicked,
    /// Its token expired without a refresh (4001).
    TokenExpired,
    /// Too many refused token refreshes (1008).
    RefreshRefused,
    /// A `wspush.v1` recovery could not be done (4002).
    RecoveryFailed,
    /// The server is shutting down (1001).
    Shutdown,
    /// The socket ended without a close handshake (reset, EOF, write error).
    Abnormal,
}

impl CloseReason {
    pub const ALL: [CloseReason; 10] = [
        CloseReason::Client,
        CloseReason::Protocol,
        CloseReason::Idle,
        CloseReason::SlowConsumer,
        CloseReason::Kicked,
        CloseReason::TokenExpired,
        CloseReason::RefreshRefused,
        CloseReason::RecoveryFailed,
        CloseReason::Shutdown,
        CloseReason::Abnormal,
    ];

    /// The label value in metrics and the access log.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Client => "client",
            CloseReason::Protocol => "protocol_error",
            CloseReason::Idle => "idle_timeout",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::Kicked => "kicked",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::RefreshRefused => "refresh_refused",
            CloseReason::RecoveryFailed => "recovery_failed",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Abnormal => "abnormal",
        }
    }

    /// Slot in `closes`.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Gauges a reactor overwrites every turn.
#[derive(Default)]
pub struct Gauges {
    /// Sockets in any phase.
    pub sockets: AtomicU64,
    /// Rooms with members in this reactor.
    pub rooms: AtomicU64,
    /// Bytes queued for slow connections.
    pub pending_bytes: AtomicU64,
    /// Distinct token grant sets held by this reactor's connections.
    pub grant_sets: AtomicU64,
    /// Users with a connection in this reactor (its own user table).
    pub users: AtomicU64,
    /// Per-address slots held by this reactor's connections.
    pub peer_slots: AtomicU64,
    /// `wspush.v1` joins waiting for their position, pushes held back for them, and
    /// recovery floors not yet passed.
    pub position_waits: AtomicU64,
}

#[cfg(test)]
mod tests {
    use super::CloseReason;

    #[test]
    fn every_close_reason_has_its_own_slot() {
        for (i, r) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
    }
}
