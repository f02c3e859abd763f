//! The final report of a run: one typed structure, printed either as a human summary or as
//! one JSON object (`--json`) that the bench scripts read with `jq`.
//!
//! Only formatting and arithmetic on finished measurements; it never measures anything.

use crate::hist::Histogram;
use crate::worker::by_count;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Percentiles of a histogram of nanoseconds, in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Pcts {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

impl Pcts {
    pub fn of(h: &Histogram) -> Pcts {
        Pcts {
            count: h.count(),
            mean_ms: h.mean() / 1e6,
            p50_ms: ms(h.percentile(50.0)),
            p90_ms: ms(h.percentile(90.0)),
            p99_ms: ms(h.percentile(99.0)),
            p999_ms: ms(h.percentile(99.9)),
            max_ms: ms(h.max()),
        }
    }

    fn line(&self) -> String {
        format!(
            "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3} ms  (n={})",
            self.p50_ms, self.p90_ms, self.p99_ms, self.p999_ms, self.max_ms, self.count
        )
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ConnReport {
    pub requested: u64,
    pub attempted: u64,
    pub opened: u64,
    pub failed: u64,
    /// Dropped after their handshake.
    pub dropped: u64,
    pub failures: BTreeMap<String, u64>,
    pub drops: BTreeMap<String, u64>,
    /// Completed handshakes / (last handshake − first attempt).
    pub handshakes_per_s: f64,
    pub handshake: Pcts,
    /// conns: CPU (user + system) of the load generator itself — this process and its
    /// workers — over the connect phase, and per completed handshake. On loopback the
    /// client's connect and send also run the server side's TCP receive path, so this
    /// is usually larger than the server's figure; when it nears one core per load
    /// process, the load generator, not the server, sets `handshakes_per_s`.
    pub load_cpu_seconds: Option<f64>,
    pub load_cpu_us_per_handshake: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ServerReport {
    /// The first `--pid`; with several (a cluster), all of them in `pids`, and RSS and
    /// CPU below are sums over them.
    pub pid: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pids: Vec<u32>,
    pub rss_before_bytes: Option<u64>,
    pub rss_after_bytes: Option<u64>,
    /// (RSS after − before) / connections opened.
    pub user_bytes_per_conn: Option<f64>,
    /// Machine-wide kernel TCP memory (/proc/net/sockstat `TCP: mem` × page size); on
    /// loopback it includes the client ends too.
    pub tcp_mem_before_bytes: Option<u64>,
    pub tcp_mem_after_bytes: Option<u64>,
    pub kernel_bytes_per_conn: Option<f64>,
    /// Machine-wide kernel slab memory (/proc/meminfo `Slab:`): socket structures,
    /// inodes, files, epoll registrations. On loopback it counts both ends of every
    /// connection (halve it for the server side); it also moves with unrelated
    /// activity on the machine, so read it over many connections.
    pub slab_before_bytes: Option<u64>,
    pub slab_after_bytes: Option<u64>,
    pub kernel_slab_bytes_per_conn: Option<f64>,
    /// Server CPU (user + system) over the measured phase: for `conns` the connect
    /// phase (start of the run until every connection was attempted), for `fanout` the
    /// publishing phase.
    pub cpu_seconds: Option<f64>,
    /// conns: `cpu_seconds` / handshakes completed.
    pub cpu_us_per_handshake: Option<f64>,
    pub cpu_us_per_delivery: Option<f64>,
    pub cpu_us_per_message: Option<f64>,
    /// INFO `writev_calls` and `deliveries` deltas, when the server reports them.
    pub writev_calls: Option<u64>,
    pub info_deliveries: Option<u64>,
    pub writev_per_delivery: Option<f64>,
}

/// The subscribers of one `--url` (one cluster node), when there are several.
#[derive(Clone, Debug, Default, Serialize)]
pub struct UrlReport {
    pub url: String,
    pub subscribers: u64,
    pub expected_deliveries: u64,
    pub delivered: u64,
    pub lost: u64,
    pub latency: Pcts,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct FanoutReport {
    /// The control port's server said INFO `cluster_enabled:1`: `queued_deliveries` is
    /// then the sum of "local recipients + other nodes reached", not a delivery count.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cluster: bool,
    pub subscribers: u64,
    pub rooms: u32,
    pub broadcast: bool,
    pub bytes: usize,
    pub messages: u64,
    pub published: u64,
    pub acked: u64,
    pub control_errors: u64,
    pub first_control_error: Option<String>,
    pub publish_timed_out: bool,
    /// Sum of the PUBLISH/BROADCAST integer replies.
    pub queued_deliveries: u64,
    /// Deliveries subscribers should have had (from what they are subscribed to).
    pub expected_deliveries: u64,
    /// Distinct deliveries received.
    pub delivered: u64,
    /// Delivered / (time of the last delivery − first send).
    pub deliveries_per_s: f64,
    pub messages_per_s: f64,
    /// Send → receipt, per delivery.
    pub latency: Pcts,
    /// Per message: last subscriber's receipt − send.
    pub last_receipt: Pcts,
    pub lost: u64,
    pub reordered: u64,
    pub duplicated: u64,
    pub foreign: u64,
    pub malformed: u64,
    /// Per `--url`, in order, when more than one was given.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub per_url: Vec<UrlReport>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct EchoReport {
    pub connections: u64,
    pub bytes: usize,
    pub round_trips: u64,
    pub seconds: f64,
    pub messages_per_s: f64,
    pub rtt: Pcts,
    pub mismatches: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub scenario: String,
    pub url: String,
    pub procs: u32,
    pub elapsed_s: f64,
    /// The --duration bound stopped the run before it finished on its own.
    pub hit_duration_bound: bool,
    pub connections: ConnReport,
    pub server: Option<ServerReport>,
    pub fanout: Option<FanoutReport>,
    pub echo: Option<EchoReport>,
    /// Everything that makes the exit status non-zero, one line each.
    pub problems: Vec<String>,
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "n/a".into())
}

fn opt_f(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "n/a".into())
}

impl Report {
    pub fn human(&self) -> String {
        let mut s = String::new();
        let c = &self.connections;
        let _ = writeln!(
            s,
            "== wspush-load {} against {} ({} process{}, {:.1} s{})",
            self.scenario,
            self.url,
            self.procs,
            if self.procs == 1 { "" } else { "es" },
            self.elapsed_s,
            if self.hit_duration_bound {
                ", stopped by --duration"
            } else {
                ""
            }
        );
        let _ = writeln!(
            s,
            "connections   requested {}  opened {}  failed {}  dropped {}",
            c.requested, c.opened, c.failed, c.dropped
        );
        let _ = writeln!(s, "handshakes/s  {:.0}", c.handshakes_per_s);
        let _ = writeln!(s, "handshake     {}", c.handshake.line());
        if c.load_cpu_us_per_handshake.is_some() {
            let _ = writeln!(
                s,
                "load CPU      {} s over the connect phase = {} us/handshake (this load generator)",
                opt_f(c.load_cpu_seconds, 3),
                opt_f(c.load_cpu_us_per_handshake, 1),
            );
        }
        for (cause, n) in by_count(&c.failures) {
            let _ = writeln!(s, "  failed      {n:>8}  {cause}");
        }
        for (cause, n) in by_count(&c.drops) {
            let _ = writeln!(s, "  dropped     {n:>8}  {cause}");
        }
        if let Some(f) = &self.fanout {
            let _ = writeln!(
                s,
                "fanout        {} subscribers, {} {}, {} messages of {} B: published {}, acked {}, control errors {}{}",
                f.subscribers,
                f.rooms,
                if f.broadcast { "rooms (BROADCAST)" } else { "rooms" },
                f.messages,
                f.bytes,
                f.published,
                f.acked,
                f.control_errors,
                f.first_control_error
                    .as_ref()
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default()
            );
            let _ = writeln!(
                s,
                "deliveries    {} {}  expected {}  received {}  ({:.0}/s, {:.0} msg/s)",
                if f.cluster {
                    "replies (local + nodes)"
                } else {
                    "queued"
                },
                f.queued_deliveries,
                f.expected_deliveries,
                f.delivered,
                f.deliveries_per_s,
                f.messages_per_s
            );
            let _ = writeln!(s, "latency       {}", f.latency.line());
            let _ = writeln!(s, "last receipt  {}", f.last_receipt.line());
            let _ = writeln!(
                s,
                "checks        lost {}  reordered {}  duplicated {}  foreign {}  malformed {}",
                f.lost, f.reordered, f.duplicated, f.foreign, f.malformed
            );
            for u in &f.per_url {
                let _ = writeln!(
                    s,
                    "  {}  subscribers {}  received {}/{}  lost {}",
                    u.url, u.subscribers, u.delivered, u.expected_deliveries, u.lost
                );
                let _ = writeln!(s, "    latency   {}", u.latency.line());
            }
        }
        if let Some(e) = &self.echo {
            let _ = writeln!(
                s,
                "echo          {} connections, {} B: {} round trips in {:.1} s = {:.0} msg/s, mismatches {}",
                e.connections, e.bytes, e.round_trips, e.seconds, e.messages_per_s, e.mismatches
            );
            let _ = writeln!(s, "round trip    {}", e.rtt.line());
        }
        if let Some(v) = &self.server {
            let pids = if v.pids.is_empty() {
                v.pid.to_string()
            } else {
                let all: Vec<String> = v.pids.iter().map(u32::to_string).collect();
                format!("{} (RSS and CPU summed)", all.join(","))
            };
            let _ = writeln!(
                s,
                "server pid    {}  RSS {} -> {} bytes",
                pids,
                opt(v.rss_before_bytes),
                opt(v.rss_after_bytes)
            );
            if v.user_bytes_per_conn.is_some() || v.kernel_bytes_per_conn.is_some() {
                let _ = writeln!(
                    s,
                    "memory/conn   user {} B (RSS delta / opened); kernel TCP {} B (sockstat mem {} -> {} bytes, both ends)",
                    opt_f(v.user_bytes_per_conn, 0),
                    opt_f(v.kernel_bytes_per_conn, 0),
                    opt(v.tcp_mem_before_bytes),
                    opt(v.tcp_mem_after_bytes)
                );
            }
            if v.kernel_slab_bytes_per_conn.is_some() {
                let _ = writeln!(
                    s,
                    "kernel slab   {} B per connection (Slab {} -> {} bytes; both ends on loopback)",
                    opt_f(v.kernel_slab_bytes_per_conn, 0),
                    opt(v.slab_before_bytes),
                    opt(v.slab_after_bytes)
                );
            }
            if v.cpu_us_per_handshake.is_some() {
                let _ = writeln!(
                    s,
                    "server CPU    {} s over the connect phase = {} us/handshake",
                    opt_f(v.cpu_seconds, 3),
                    opt_f(v.cpu_us_per_handshake, 1),
                );
            } else if v.cpu_seconds.is_some() {
                let _ = writeln!(
                    s,
                    "server CPU    {} s = {} us/delivery, {} us/message",
                    opt_f(v.cpu_seconds, 3),
                    opt_f(v.cpu_us_per_delivery, 3),
                    opt_f(v.cpu_us_per_message, 1),
                );
            }
            if v.writev_calls.is_some() || v.info_deliveries.is_some() {
                let _ = writeln!(
                    s,
                    "server writev {} calls for {} deliveries = {}/delivery (INFO)",
                    opt(v.writev_calls),
                    opt(v.info_deliveries),
                    opt_f(v.writev_per_delivery, 3)
                );
            }
        }
        if self.problems.is_empty() {
            let _ = writeln!(s, "result        OK");
        } else {
            for p in &self.problems {
                let _ = writeln!(s, "PROBLEM       {p}");
            }
        }
        s
    }
}
