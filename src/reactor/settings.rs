//! What every reactor reads and never changes after start-up, and the state all
//! reactors share (admission counts, heartbeats). Plain values: the command line is
//! parsed elsewhere (`config`) and mapped into these by `server`.

use std::sync::Arc;
use std::time::Duration;

use crate::auth::{AuthConfig, RoomPattern};
use crate::link::capacity::Capacity;
use crate::link::health::Liveness;
use crate::link::peers::PeerTable;
use crate::proxy::Cidr;
use crate::ws::handshake::HandshakeConfig;

/// What to do with a connection whose unsent bytes exceed `max_pending`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlowPolicy {
    /// Close it with code 1008 "slow consumer".
    Close,
    /// Keep it, but drop the pushes that do not fit.
    Drop,
}

/// Settings every reactor reads; fixed at start-up.
#[derive(Debug, Clone)]
pub struct Settings {
    pub handshake: HandshakeConfig,
    pub max_message: usize,
    pub max_pending: usize,
    pub slow_policy: SlowPolicy,
    pub echo: bool,
    pub max_rooms: usize,
    pub handshake_timeout: Duration,
    /// Zero: never ping.
    pub ping_interval: Duration,
    /// Zero: never close idle connections.
    pub idle_timeout: Duration,
    pub shutdown_grace: Duration,
    /// Token verification; `None`: authentication is off.
    pub auth: Option<Arc<AuthConfig>>,
    /// Rooms any client may join and leave itself (`--client-join`).
    pub client_join: Vec<RoomPattern>,
    /// Every connection starts with a PROXY protocol header.
    pub proxy_protocol: bool,
    /// Peers whose X-Forwarded-For / Forwarded headers name the client.
    pub trusted_proxies: Vec<Cidr>,
    /// IPv6 clients are grouped by this prefix for per-address limits.
    pub ipv6_prefix: u8,
    /// Per-address limits are configured (the peer table tracks addresses).
    pub per_address_limits: bool,
    /// `--access-log`: one line per closed connection.
    pub access_log: bool,
    /// permessage-deflate (`--compression on`): payloads of at least this many
    /// bytes are compressed (`--compression-min-size`); `None`: never negotiated.
    pub compression_min_size: Option<usize>,
}

impl Settings {
    /// May a connection with `grants` (None without authentication) join or leave
    /// `room` itself? Without authentication and without `--client-join`, any room
    /// (development mode, warned at start-up); otherwise the token's `join` patterns
    /// and the `--client-join` ones.
    pub fn may_join(&self, grants: Option<&crate::auth::Grants>, room: &str) -> bool {
        match grants {
            Some(g) => g.may_join(room, &self.client_join),
            None if self.auth.is_none() && self.client_join.is_empty() => true,
            None => self.client_join.iter().any(|p| p.matches(room)),
        }
    }
}

/// State shared by all reactors.
pub struct Shared {
    pub settings: Settings,
    /// Established connections and handshakes, against their limits.
    pub capacity: Arc<Capacity>,
    /// Heartbeats of every server thread (for /healthz).
    pub liveness: Arc<Liveness>,
    /// Connections and handshake rates per client address, shared by all reactors.
    pub peers: Arc<PeerTable>,
    /// The one clock all reactors give the peer table (its buckets compare times).
    pub epoch: std::time::Instant,
}
