//! Flags, defaults and validation.
//!
//! `wspush` with no flags is a working server: WebSocket on `0.0.0.0:8080/ws`,
//! control port on `127.0.0.1:7379`. Everything here is checked once at start-up so
//! the threads never have to second-guess a value.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::ws::handshake::OriginPattern;

/// What to do with a connection whose unsent bytes exceed `--max-pending`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SlowPolicy {
    /// Close it with code 1008 "slow consumer".
    Close,
    /// Keep it, but drop the pushes that do not fit.
    Drop,
}

/// `--compression`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// Command-line configuration of the server.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "wspush",
    version,
    about = "WebSocket push gateway: clients hold WebSocket connections, backends push \
             through a Redis-protocol control port.",
    after_help = "Durations take a unit: 500ms, 10s, 2m (a bare number is seconds). \
                  Sizes take an optional unit: 65536, 64KiB, 1MiB, 16MiB."
)]
pub struct Config {
    /// Address the WebSocket listeners bind to (port 0 picks a free port).
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// HTTP path of the WebSocket endpoint.
    #[arg(long, default_value = "/ws")]
    pub path: String,

    /// The binary an upgrade (SIGUSR2, UPGRADE, systemctl reload) starts; default:
    /// the file at this process's own path.
    #[arg(long, value_name = "PATH")]
    pub upgrade_binary: Option<std::path::PathBuf>,

    /// Address of the control port (Redis protocol). Keep it on loopback or a private
    /// network: anyone who reaches it can push to every client.
    #[arg(long, default_value = "127.0.0.1:7379")]
    pub control: SocketAddr,

    /// Address of the HTTP listener: the JSON API, /metrics and the dashboard (off
    /// unless given, e.g. 127.0.0.1:9090). Off loopback it requires --api-key.
    #[arg(long, env = "WSPUSH_HTTP")]
    pub http: Option<SocketAddr>,

    /// Key every HTTP API and /metrics request must bear (`Authorization: Bearer
    /// KEY`).
    #[arg(long, env = "WSPUSH_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Most HTTP API connections open at once; more are answered 503 and closed, so
    /// backends cannot take the descriptors meant for WebSocket clients.
    #[arg(long, default_value_t = 1024)]
    pub max_http_connections: usize,

    /// Password the control port requires (AUTH) before any other command.
    #[arg(long, env = "WSPUSH_CONTROL_PASSWORD", hide_env_values = true)]
    pub control_password: Option<String>,

    /// Reactor threads [default: available cores].
    #[arg(long)]
    pub threads: Option<usize>,

    /// Most connections held at once; more get HTTP 503 [default: the open-file limit
    /// minus descriptors reserved for listeners and the control port].
    #[arg(long)]
    pub max_connections: Option<usize>,

    /// Most sockets in their HTTP handshake at once (accepted, not yet upgraded); more
    /// get HTTP 503 at once. They do not count toward --max-connections, so clients
    /// that never finish their request cannot hold established capacity [default:
    /// 1/64 of the open-file limit, 64 to 65536].
    #[arg(long)]
    pub max_handshakes: Option<usize>,

    /// Allowed Origin (repeatable): an exact origin (https://app.example.com) or a host
    /// pattern (*.example.com). Default: any origin.
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    pub allow_origin: Vec<String>,

    /// Time a client has to complete its HTTP upgrade.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// Largest WebSocket message accepted from a client, and largest push payload.
    #[arg(long, default_value = "64KiB", value_parser = parse_size)]
    pub max_message: usize,

    /// The server pings a connection that has sent nothing for this long (0 = never).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub ping_interval: Duration,

    /// A connection that has sent nothing (not even a pong) for this long is closed
    /// (0 = never).
    #[arg(long, default_value = "75s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Echo data messages back to their sender (for conformance runs).
    #[arg(long)]
    pub echo: bool,

    /// permessage-deflate (RFC 7692) for clients that offer it: each push is
    /// compressed once and the compressed frame shared by every such recipient;
    /// nothing is kept per connection. See README "Compression".
    #[arg(long, value_enum, default_value_t = Switch::On)]
    pub compression: Switch,

    /// Smaller payloads are sent uncompressed (RSV1 clear) even to clients with
    /// permessage-deflate.
    #[arg(long, default_value = "256", value_parser = parse_size)]
    pub compression_min_size: usize,

    /// On SIGINT/SIGTERM, time given to clients to answer the 1001 close.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Most rooms one connection may be in.
    #[arg(long, default_value_t = 64)]
    pub max_rooms_per_conn: usize,

    /// Most bytes queued for one connection that is not reading fast enough.
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    pub max_pending: usize,

    /// What happens to a connection over --max-pending.
    #[arg(long, value_enum, default_value_t = SlowPolicy::Close)]
    pub slow_policy: SlowPolicy,

    /// Hold pushes this long to send them to the reactors in bigger batches
    /// (0 = no added latency).
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    pub batch_delay: Duration,

    /// HS256 secret for connection tokens; turns authentication on. Prefer the
    /// environment variable or --jwt-secret-file: a flag is visible in `ps`.
    #[arg(
        long,
        env = "WSPUSH_JWT_SECRET",
        hide_env_values = true,
        help_heading = "Authentication"
    )]
    pub jwt_secret: Option<String>,

    /// File holding the HS256 secret (trailing newline ignored); turns authentication on.
    #[arg(long, value_name = "FILE", help_heading = "Authentication")]
    pub jwt_secret_file: Option<std::path::PathBuf>,

    /// PEM public key (RSA for RS256, EC P-256 for ES256) for connection tokens; turns
    /// authentication on.
    #[arg(long, value_name = "FILE", help_heading = "Authentication")]
    pub jwt_public_key: Option<std::path::PathBuf>,

    /// Required `iss` claim.
    #[arg(long, help_heading = "Authentication")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim (one of the token's audiences).
    #[arg(long, help_heading = "Authentication")]
    pub jwt_audience: Option<String>,

    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    #[arg(long, default_value = "5s", value_parser = parse_duration, help_heading = "Authentication")]
    pub jwt_leeway: Duration,

    /// Rooms any client may join and leave itself (repeatable; `*` is a wildcard,
    /// e.g. `public.*`). Without authentication and without this flag, clients may join
    /// any room.
    #[arg(
        long = "client-join",
        value_name = "PATTERN",
        help_heading = "Authentication"
    )]
    pub client_join: Vec<String>,

    /// Most concurrent connections from one client address (0 = unlimited); more get
    /// HTTP 429.
    #[arg(long, default_value_t = 0, help_heading = "Per-address limits")]
    pub max_conns_per_ip: u32,

    /// Handshakes per second per client address, with a burst of as many (0 =
    /// unlimited); more get HTTP 429 with Retry-After.
    #[arg(long, default_value_t = 0, help_heading = "Per-address limits")]
    pub handshake_rate_per_ip: u32,

    /// Handshakes per second for the whole process, with a burst of as many (0 =
    /// unlimited): a reconnect storm after a restart gets HTTP 503 with Retry-After.
    #[arg(long, default_value_t = 0, help_heading = "Per-address limits")]
    pub max_handshake_rate: u32,

    /// IPv6 clients are grouped by this prefix for the per-address limits (a host is
    /// commonly given a whole /64).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u8).range(0..=128), help_heading = "Per-address limits")]
    pub ipv6_prefix: u8,

    /// Most client addresses tracked for the per-address limits; new addresses past it
    /// get 503 [default: 800000, and at least --max-connections].
    #[arg(long, help_heading = "Per-address limits")]
    pub max_tracked_addresses: Option<usize>,

    /// Every connection starts with a PROXY protocol v1 or v2 header (HAProxy, nginx,
    /// AWS NLB); without a valid one it is closed. The header's source address is the
    /// client's.
    #[arg(long, help_heading = "Client addresses")]
    pub proxy_protocol: bool,

    /// A balancer's address or range (repeatable, e.g. 10.0.0.0/8): from these peers
    /// only, X-Forwarded-For / Forwarded name the client.
    #[arg(
        long = "trusted-proxy",
        value_name = "CIDR",
        help_heading = "Client addresses"
    )]
    pub trusted_proxy: Vec<crate::proxy::Cidr>,

    /// A Redis instance of the cluster, `redis://[[user]:password@]host[:port][/db]`
    /// (repeatable, or comma-separated in WSPUSH_REDIS). With one or more the node is
    /// in cluster mode; rooms and users are spread over the instances by consistent
    /// hash, so every node must list the same instances in the same order. Host names
    /// are resolved once, at start-up.
    #[arg(
        long = "redis",
        value_name = "URL",
        env = "WSPUSH_REDIS",
        value_delimiter = ',',
        hide_env_values = true,
        help_heading = "Cluster"
    )]
    pub redis: Vec<String>,

    /// This node's name in the cluster (NODES, logs, Redis CLIENT LIST)
    /// [default: <host name>:<WebSocket port>].
    #[arg(long, help_heading = "Cluster")]
    pub node_id: Option<String>,

    /// Prefix of every Redis channel and key this cluster uses, so that several
    /// clusters can share one Redis.
    #[arg(long, default_value = "wspush", help_heading = "Cluster")]
    pub cluster_prefix: String,

    /// What order a control connection's messages keep on other nodes. `connection`:
    /// all of them, in publish order, also across rooms placed on different Redis
    /// instances (a switch of instance waits two round trips to the previous one).
    /// `channel`: per room, user and broadcast only, never waiting (more throughput
    /// for one pipelined connection when there are several Redis instances).
    #[arg(long, value_enum, default_value_t = Ordering::Connection, help_heading = "Cluster")]
    pub cluster_order: Ordering,

    /// How often a node writes the room counts that changed to Redis (what
    /// `ONLINE room` sums across nodes): longer is fewer Redis writes for rooms that
    /// churn, and staler cluster-wide room counts (1s to 1h).
    #[arg(long, default_value = "1s", value_parser = parse_presence_interval, help_heading = "Cluster")]
    pub presence_interval: Duration,

    /// Messages kept per room for clients that reconnect and recover what they
    /// missed (`wspush.v1`); 0 keeps none (positions are still given).
    #[arg(long, default_value_t = 0, help_heading = "History and recovery")]
    pub history_size: usize,

    /// A room's history (and position) is dropped this long after its last publish,
    /// once no member holds it.
    #[arg(long, default_value = "5m", value_parser = parse_duration, help_heading = "History and recovery")]
    pub history_ttl: Duration,

    /// Bound on all retained messages together; the oldest are evicted first.
    #[arg(long, default_value = "64MiB", value_parser = parse_size, help_heading = "History and recovery")]
    pub history_memory: usize,

    /// Most messages replayed to one recovering connection per room; more missed
    /// means `recovered:false`.
    #[arg(long, default_value_t = 300, help_heading = "History and recovery")]
    pub max_recover: usize,

    /// Serve the demo page at `GET /` on the WebSocket port (and the browser
    /// client's modules under `/client/`).
    #[arg(long)]
    pub demo: bool,

    /// Log one line per closed WebSocket connection at `info` (target
    /// `wspush::access`): address, user, rooms, duration, bytes, close code and reason.
    #[arg(long, help_heading = "Logs and probes")]
    pub access_log: bool,

    /// `text`: env_logger's lines; `json`: every log line as one JSON object
    /// (`ts`, `level`, `target`, `msg`).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, help_heading = "Logs and probes")]
    pub log_format: LogFormat,

    /// On SIGTERM/SIGINT, answer `/readyz` with 503 "draining" for this long while
    /// serving as usual, so balancers stop sending clients before the 1001 closes
    /// start (0 = close at once).
    #[arg(long, default_value = "0s", value_parser = parse_duration, help_heading = "Logs and probes")]
    pub drain_delay: Duration,
}

/// See [`Config::log_format`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// See [`Config::cluster_order`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Ordering {
    Connection,
    Channel,
}

/// A configuration error, reported before any thread starts.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The largest --max-message: a message is held in memory whole.
pub const MAX_MESSAGE_LIMIT: usize = 256 << 20;

/// The reactor timer's resolution: handshake, ping, idle and shutdown deadlines are
/// counted in whole ticks, rounded down. Validation must reject a non-zero duration
/// that rounds down to 0 ticks: for ping and idle, 0 means "never", so
/// `--idle-timeout 5ms` would silently disable it.
pub const TIMER_TICK: Duration = crate::reactor::TICK;

/// Whole timer ticks in `d`, rounded down as the reactor counts them.
pub fn whole_ticks(d: Duration) -> u128 {
    d.as_nanos() / TIMER_TICK.as_nanos()
}

/// The flags the reactor counts in [`TIMER_TICK`]s, with what 0 means for each
/// (`--batch-delay` is not one: the dispatcher sleeps for it exactly).
fn tick_counted(cfg: &Config) -> [(&'static str, Duration, &'static str); 4] {
    [
        ("--handshake-timeout", cfg.handshake_timeout, ""),
        ("--ping-interval", cfg.ping_interval, " (or 0 for never)"),
        ("--idle-timeout", cfg.idle_timeout, " (or 0 for never)"),
        (
            "--shutdown-grace",
            cfg.shutdown_grace,
            " (or 0 to close at once)",
        ),
    ]
}

impl Config {
    /// Checks values that clap cannot check alone.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |s: &str| Err(ConfigError(s.to_string()));
        if !self.path.starts_with('/') || self.path.contains('?') || self.path == "/healthz" {
            return err("--path must start with '/', contain no '?' and not be /healthz");
        }
        if self.threads == Some(0) || self.threads.is_some_and(|t| t > 1024) {
            return err("--threads must be between 1 and 1024");
        }
        if self.jwt_secret.is_some() && self.jwt_secret_file.is_some() {
            return err("give the HS256 secret once: --jwt-secret (or WSPUSH_JWT_SECRET) or --jwt-secret-file");
        }
        if self.jwt_public_key.is_some()
            && (self.jwt_secret.is_some() || self.jwt_secret_file.is_some())
        {
            return err("choose one kind of token key: an HS256 secret or --jwt-public-key (RS256/ES256), not both");
        }
        if self.jwt_secret.as_deref() == Some("") {
            return err("--jwt-secret must not be empty");
        }
        if self.max_http_connections == 0 {
            return err("--max-http-connections must be at least 1");
        }
        if self.api_key.as_deref() == Some("") {
            return err("--api-key must not be empty");
        }
        if let Some(a) = self.http {
            if !a.ip().is_loopback() && self.api_key.is_none() {
                return Err(ConfigError(format!(
                    "--http {a} is not a loopback address: set --api-key (or WSPUSH_API_KEY) so that not anyone who reaches it can push"
                )));
            }
            if a.port() != 0 && (a == self.listen || a == self.control) {
                return Err(ConfigError(format!(
                    "--http {a} is the address of another listener"
                )));
            }
        }
        if self.max_handshakes == Some(0) {
            return err("--max-handshakes must be at least 1");
        }
        if self.max_connections == Some(0) {
            return err("--max-connections must be at least 1");
        }
        if self.max_message == 0 || self.max_message > MAX_MESSAGE_LIMIT {
            return err("--max-message must be between 1 byte and 256MiB");
        }
        if self.max_pending == 0 {
            return err("--max-pending must be at least 1 byte");
        }
        if self.max_rooms_per_conn == 0 || self.max_rooms_per_conn > 4096 {
            return err("--max-rooms-per-conn must be between 1 and 4096");
        }
        if self.handshake_timeout.is_zero() {
            return err("--handshake-timeout must be more than 0");
        }
        for (flag, d, zero) in tick_counted(self) {
            if !d.is_zero() && whole_ticks(d) == 0 {
                return Err(ConfigError(format!(
                    "{flag} {d:?} is below the timer resolution of {TIMER_TICK:?}: give at \
                     least {TIMER_TICK:?}{zero}"
                )));
            }
        }
        // Compared in ticks, as the reactor sees them: 15ms and 19ms are both one tick.
        if !self.idle_timeout.is_zero()
            && !self.ping_interval.is_zero()
            && whole_ticks(self.ping_interval) >= whole_ticks(self.idle_timeout)
        {
            return err("--ping-interval must be shorter than --idle-timeout, or clients that only answer pings are closed as idle");
        }
        if self.batch_delay > Duration::from_secs(1) {
            return err("--batch-delay must be at most 1s");
        }
        self.origins()?;
        Ok(())
    }

    /// The parsed --allow-origin patterns (empty: any origin).
    pub fn origins(&self) -> Result<Vec<OriginPattern>, ConfigError> {
        self.allow_origin
            .iter()
            .map(|o| {
                OriginPattern::parse(o).map_err(|e| ConfigError(format!("--allow-origin {o}: {e}")))
            })
            .collect()
    }

    /// True when connection tokens are required.
    pub fn auth_enabled(&self) -> bool {
        self.jwt_secret.is_some() || self.jwt_secret_file.is_some() || self.jwt_public_key.is_some()
    }

    /// `--compression-min-size` when compression is on.
    pub fn compression_min_size(&self) -> Option<usize> {
        (self.compression == Switch::On).then_some(self.compression_min_size)
    }

    /// The reactors' slow-consumer policy.
    pub fn reactor_slow_policy(&self) -> crate::reactor::SlowPolicy {
        match self.slow_policy {
            SlowPolicy::Close => crate::reactor::SlowPolicy::Close,
            SlowPolicy::Drop => crate::reactor::SlowPolicy::Drop,
        }
    }

    /// Reactor thread count: --threads or the available cores.
    pub fn reactor_threads(&self) -> usize {
        self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
    }
}

/// Parses `500ms`, `10s`, `2m`, `1h`, or a bare number of seconds (`1.5`).
fn parse_presence_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(1) || d > Duration::from_secs(3600) {
        return Err("must be between 1s and 1h".into());
    }
    Ok(d)
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = split_unit(s);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (e.g. 500ms, 10s, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("'{s}': unknown unit '{unit}' (ms, s, m, h)")),
    };
    if !secs.is_finite() || !(0.0..=86_400.0 * 365.0).contains(&secs) {
        return Err(format!("'{s}' is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses `65536`, `64KiB`, `64K`, `1MiB`, `1M`, `1GiB` (binary units).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (num, unit) = split_unit(s);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 65536, 64KiB, 1MiB)"))?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("'{s}': unknown unit '{unit}' (KiB, MiB, GiB)")),
    };
    n.checked_mul(mult)
        .and_then(|v| usize::try_from(v).ok())
        .ok_or_else(|| format!("'{s}' is too large"))
}

fn split_unit(s: &str) -> (&str, &str) {
    let at = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    (&s[..at], s[at..].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units_and_bare_seconds() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5 weeks").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        assert!(parse_size("1.5MiB").is_err());
        assert!(parse_size("1PiB").is_err());
    }

    #[test]
    fn defaults_are_a_valid_configuration() {
        let cfg = Config::parse_from(["wspush"]);
        assert_eq!(cfg.validate(), Ok(()));
        assert_eq!(cfg.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(cfg.control.to_string(), "127.0.0.1:7379");
        assert_eq!(cfg.path, "/ws");
        assert_eq!(cfg.max_message, 64 << 10);
        assert_eq!(cfg.max_pending, 1 << 20);
        assert_eq!(cfg.slow_policy, SlowPolicy::Close);
        assert_eq!(cfg.compression_min_size(), Some(256));
        let off = Config::parse_from(["wspush", "--compression", "off"]);
        assert_eq!(off.compression_min_size(), None);
    }

    #[test]
    fn a_tick_is_10ms() {
        assert_eq!(TIMER_TICK, Duration::from_millis(10));
        assert_eq!(whole_ticks(Duration::from_millis(9)), 0);
        assert_eq!(whole_ticks(Duration::from_millis(19)), 1);
        assert_eq!(whole_ticks(Duration::from_secs(1)), 100);
    }

    fn validate(args: &[&str]) -> Result<(), ConfigError> {
        Config::parse_from(std::iter::once("wspush").chain(args.iter().copied())).validate()
    }

    #[test]
    fn rejects_every_tick_counted_duration_below_one_tick() {
        for flag in [
            "--handshake-timeout",
            "--ping-interval",
            "--idle-timeout",
            "--shutdown-grace",
        ] {
            for value in ["5ms", "9.9ms", "0.001"] {
                let e = validate(&[flag, value]).expect_err(value);
                assert!(e.0.starts_with(flag), "{flag} {value}: {e}");
                assert!(e.0.contains("at least 10ms"), "{flag} {value}: {e}");
            }
            // One tick exactly is the smallest accepted value (ping below idle).
            let at_tick = if flag == "--idle-timeout" {
                validate(&[flag, "10ms", "--ping-interval", "0"])
            } else {
                validate(&[flag, "10ms"])
            };
            assert_eq!(at_tick, Ok(()), "{flag} 10ms");
        }
    }

    #[test]
    fn zero_still_means_never_for_ping_idle_and_no_grace() {
        assert_eq!(validate(&["--ping-interval", "0"]), Ok(()));
        assert_eq!(
            validate(&["--idle-timeout", "0", "--ping-interval", "0"]),
            Ok(())
        );
        assert_eq!(validate(&["--idle-timeout", "0"]), Ok(()));
        assert_eq!(validate(&["--shutdown-grace", "0"]), Ok(()));
    }

    #[test]
    fn sub_tick_batch_delay_is_accepted() {
        // The dispatcher does not count it in ticks.
        assert_eq!(validate(&["--batch-delay", "1ms"]), Ok(()));
    }

    #[test]
    fn ping_interval_must_be_fewer_ticks_than_idle_timeout() {
        let e = validate(&["--ping-interval", "15ms", "--idle-timeout", "19ms"]);
        assert!(e.is_err(), "both are one tick");
        assert_eq!(
            validate(&["--ping-interval", "15ms", "--idle-timeout", "20ms"]),
            Ok(())
        );
    }

    #[test]
    fn ping_interval_must_be_shorter_than_idle_timeout() {
        let cfg = Config::parse_from(["wspush", "--ping-interval", "80s"]);
        assert!(cfg.validate().is_err());
        let cfg = Config::parse_from(["wspush", "--ping-interval", "0", "--idle-timeout", "1s"]);
        assert_eq!(cfg.validate(), Ok(()));
    }
}
