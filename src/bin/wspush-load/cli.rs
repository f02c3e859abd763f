//! Command line of `wspush-load` (clap derive): three scenarios and the flags they share,
//! plus `recover`, a single-client timing of wspush.v1 recovery.
//! `--help` on each subcommand documents every flag and its default.
//!
//! Parsing only: no I/O happens here.

use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

#[derive(Parser, Debug)]
#[command(
    name = "wspush-load",
    version,
    about = "Load generator for wspush: many WebSocket clients on mio + tungstenite",
    long_about = "Load generator for wspush (and the tokio baseline). A client only: it speaks \
WebSocket through tungstenite, an independent codec, over non-blocking mio sockets, one event \
loop per process. It raises its soft open-file limit to the hard limit at start-up; use \
--procs to spread connections over several processes."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: TopCommand,
}

/// The scenarios run by the worker machinery, and the one-client commands beside them
/// (kept out of `Command` so the workers never see them).
#[derive(Subcommand, Debug, Clone)]
pub enum TopCommand {
    #[command(flatten)]
    Scenario(Command),
    /// One wspush.v1 client reconnecting K times with `recover=` to a room with M
    /// missed messages (published once on the control port); reports the time from
    /// sending the upgrade request to the M-th replayed message. The server must keep
    /// at least M messages per room (`--history-size`, `--max-recover`).
    Recover(RecoverArgs),
}

#[derive(Args, Debug, Clone)]
pub struct RecoverArgs {
    /// WebSocket URL, e.g. ws://127.0.0.1:8080/ws (`user=…&rooms=…&recover=…` is
    /// appended).
    #[arg(long)]
    pub url: String,
    /// Control port address (RESP), e.g. 127.0.0.1:7379.
    #[arg(long)]
    pub control: String,
    /// The room to fill and recover.
    #[arg(long, default_value = "recover-bench")]
    pub room: String,
    /// Messages the client missed, replayed on every reconnect.
    #[arg(short = 'm', long = "missed", default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..))]
    pub missed: u32,
    /// Reconnects to time.
    #[arg(short = 'k', long = "reconnects", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub reconnects: u32,
    /// Payload bytes per message.
    #[arg(short = 'b', long = "bytes", default_value_t = 100)]
    pub b: usize,
    /// Seconds one reconnect may take before it counts as failed.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
    /// Hard bound on the whole run in seconds.
    #[arg(long, default_value_t = 120)]
    pub duration: u64,
    /// Print the result as one JSON object on stdout instead of the human summary.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    /// Open N connections at a target rate, hold them, report handshake rate, latency,
    /// failures by cause and (with --pid) server bytes per connection.
    Conns(ConnsArgs),
    /// S subscribers over R rooms; publish M messages of B bytes on the control port;
    /// check order, loss, duplicates; report delivery rate and latency.
    Fanout(FanoutArgs),
    /// C connections doing WebSocket round trips of B bytes against a server in echo
    /// mode (`wspush --echo`); report messages/s and round-trip latency.
    Echo(EchoArgs),
}

/// Flags every scenario has.
#[derive(Args, Debug, Clone, Serialize, Deserialize)]
pub struct Common {
    /// Spread the connections over K processes (this binary re-executed K times, each
    /// with a slice of the work; results are merged). Keep each under its fd limit.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub procs: u32,
    /// Hard bound on the whole run in seconds: it stops by itself when reached (for
    /// `echo`, the round trips run until then).
    #[arg(long, default_value_t = 120)]
    pub duration: u64,
    /// Source IPv4 address or range for client sockets (`127.0.0.2-127.0.0.50`), used
    /// round robin; each source address has its own ephemeral port range. Default: the
    /// kernel picks.
    #[arg(long, value_parser = parse_src_range)]
    pub src: Option<SrcRange>,
    /// Rate of new connections per second over all processes (0 = as fast as possible).
    #[arg(long = "connect-rate", default_value_t = 2000.0)]
    pub connect_rate: f64,
    /// Seconds a connection may take to connect and finish the handshake before it
    /// counts as a `timeout` failure.
    #[arg(long, default_value_t = 10)]
    pub handshake_timeout: u64,
    /// PID of the server under test: measure its RSS and CPU time from /proc. Repeat it
    /// for a cluster: RSS and CPU are summed over every PID given.
    #[arg(long)]
    pub pid: Vec<u32>,
    /// Print the result as one JSON object on stdout instead of the human summary.
    #[arg(long)]
    pub json: bool,
    /// Internal: run as worker I of --workers K, reporting JSON lines on stdout.
    #[arg(long, hide = true)]
    pub worker: Option<u32>,
    /// Internal: number of workers the work is split over.
    #[arg(long, hide = true, default_value_t = 1)]
    pub workers: u32,
}

#[derive(Args, Debug, Clone, Serialize, Deserialize)]
pub struct ConnsArgs {
    /// WebSocket URL, e.g. ws://127.0.0.1:8080/ws (`user=c<i>` is appended to the query
    /// unless it already names a user or carries a token).
    #[arg(long)]
    pub url: String,
    /// Number of connections to open.
    #[arg(short = 'n', long = "connections")]
    pub n: u32,
    /// Target handshake rate per second over all processes (0 = as fast as possible);
    /// overrides --connect-rate.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds to hold the connections open once every one has been attempted.
    #[arg(long, default_value_t = 10)]
    pub hold: u64,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args, Debug, Clone, Serialize, Deserialize)]
pub struct FanoutArgs {
    /// WebSocket URL, e.g. ws://127.0.0.1:8080/ws (`user=s<i>&rooms=room-<k>` is appended).
    /// Repeat it to spread the subscribers round robin over several servers (the nodes of
    /// a cluster): subscriber `i` connects to URL `i % U`; latency and loss are then also
    /// reported per URL.
    #[arg(long, required = true)]
    pub url: Vec<String>,
    /// Control port address (RESP), e.g. 127.0.0.1:7379.
    #[arg(long)]
    pub control: String,
    /// Subscribers (WebSocket connections), spread round robin over the rooms.
    #[arg(short = 's', long = "subscribers")]
    pub s: u32,
    /// Rooms `room-0` .. `room-<R-1>`; each subscriber is in exactly one.
    #[arg(short = 'r', long = "rooms", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub r: u32,
    /// Messages to publish (round robin over the rooms, or BROADCAST with --broadcast).
    #[arg(short = 'm', long = "messages")]
    pub m: u32,
    /// Payload bytes per message (ASCII `<seq> <send_ns> ` padded with `x`; never
    /// shorter than that header).
    #[arg(short = 'b', long = "bytes", default_value_t = 100)]
    pub b: usize,
    /// Publish at this fixed rate (messages/s) instead of a window.
    #[arg(long, conflicts_with = "window")]
    pub rate: Option<f64>,
    /// Publish as fast as possible with at most W messages in flight: at most W PUBLISH
    /// replies outstanding, and deliveries not yet seen by subscribers at most W messages'
    /// worth (W × subscribers per room).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub window: u32,
    /// Send BROADCAST (every subscriber gets every message) instead of PUBLISH per room.
    #[arg(long)]
    pub broadcast: bool,
    /// Seconds to wait for outstanding deliveries after the last PUBLISH reply before
    /// counting what is missing as lost.
    #[arg(long, default_value_t = 5)]
    pub drain_timeout: u64,
    /// Seconds to wait once every subscriber is open before publishing: in cluster mode
    /// a node subscribes a room's broker channel only after its first member joined, so
    /// this measures steady-state delivery rather than that subscription race.
    #[arg(long, default_value_t = 0.0)]
    pub publish_after: f64,
    /// Subscribers offer the `wspush.v1` subprotocol and read the payload out of its JSON
    /// envelopes (the `joined` messages are skipped), as recovering clients do.
    #[arg(long)]
    pub v1: bool,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args, Debug, Clone, Serialize, Deserialize)]
pub struct EchoArgs {
    /// WebSocket URL of a server in echo mode, e.g. ws://127.0.0.1:8080/ws.
    #[arg(long)]
    pub url: String,
    /// Connections, each with one round trip in flight at a time.
    #[arg(short = 'c', long = "connections", default_value_t = 100)]
    pub c: u32,
    /// Bytes per message (ASCII text; never shorter than the `<send_ns> ` header).
    #[arg(short = 'b', long = "bytes", default_value_t = 100)]
    pub b: usize,
    #[command(flatten)]
    pub common: Common,
}

/// An inclusive range of IPv4 source addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SrcRange {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
}

impl SrcRange {
    pub fn len(&self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    /// The source address for connection number `i` (round robin).
    pub fn pick(&self, i: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.first) + i % self.len())
    }
}

pub fn parse_src_range(s: &str) -> Result<SrcRange, String> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let first: Ipv4Addr = a
        .trim()
        .parse()
        .map_err(|e| format!("bad IPv4 address {a:?}: {e}"))?;
    let last: Ipv4Addr = b
        .trim()
        .parse()
        .map_err(|e| format!("bad IPv4 address {b:?}: {e}"))?;
    if u32::from(last) < u32::from(first) {
        return Err(format!("range {s:?} ends before it starts"));
    }
    Ok(SrcRange { first, last })
}

impl Command {
    pub fn common(&self) -> &Common {
        match self {
            Command::Conns(a) => &a.common,
            Command::Fanout(a) => &a.common,
            Command::Echo(a) => &a.common,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Command::Conns(_) => "conns",
            Command::Fanout(_) => "fanout",
            Command::Echo(_) => "echo",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn src_range_round_robins_over_every_address() {
        let r = parse_src_range("127.0.0.2-127.0.0.4").map_err(|e| e.to_string());
        let r = r.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.len(), 3);
        let picks: Vec<_> = (0..4).map(|i| r.pick(i).to_string()).collect();
        assert_eq!(picks, ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.2"]);
    }

    #[test]
    fn single_source_address_is_a_range_of_one() {
        assert_eq!(parse_src_range("127.0.0.9").map(|r| r.len()), Ok(1));
    }

    #[test]
    fn reversed_src_range_is_rejected() {
        assert!(parse_src_range("127.0.0.9-127.0.0.2").is_err());
    }
}
