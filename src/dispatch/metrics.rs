//! The body of `GET /metrics`: every counter, gauge and histogram of the process in
//! the Prometheus text format 0.0.4 (the HTTP listener adds the status line and
//! `Content-Type: text/plain; version=0.0.4`).
//!
//! Like INFO, it only loads what the reactors publish (relaxed atomics) and what the
//! dispatcher keeps itself; it never asks or waits for a reactor. A scrape costs
//! O(metrics × reactors), never O(connections) or O(rooms): gauges are kept
//! incrementally (connection counts from the reactors' events, sockets and pending
//! bytes by each reactor's timer scan), and nothing here walks a table. Label
//! values come from fixed sets (reasons, results, reactor indexes), so the number of
//! series is bounded.

use std::sync::atomic::Ordering::Relaxed;

use super::prom::{Kind, Writer};
use super::Dispatcher;
use crate::auth::AuthError;
use crate::link::histogram::{Histogram, Snapshot};
use crate::link::peers::Refusal;
use crate::link::stats::{CloseReason, ReactorStats, HANDSHAKE_FAILURES, HANDSHAKE_TIMEOUT};

/// Reads one counter of a reactor's stats.
type Counter = fn(&ReactorStats) -> u64;

impl Dispatcher {
    /// Appends the `/metrics` body to `out`.
    pub(super) fn write_metrics(&self, out: &mut Vec<u8>) {
        let mut w = Writer::new(out);
        self.write_connections(&mut w);
        self.write_handshakes(&mut w);
        self.write_traffic(&mut w);
        self.write_closes(&mut w);
        self.write_histograms(&mut w);
        self.write_control(&mut w);
        self.write_history(&mut w);
        self.write_cluster(&mut w);
    }

    /// A reactor counter summed over the reactors.
    fn sum(&self, f: Counter) -> u64 {
        self.reactors.iter().map(|r| f(&r.stats)).sum()
    }

    fn write_connections(&self, w: &mut Writer<'_>) {
        w.family(
            "wspush_build_info",
            Kind::Gauge,
            "Always 1; the version in a label.",
        );
        w.sample(
            "wspush_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1,
        );
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
            - self.started.elapsed().as_secs_f64();
        w.family(
            "process_start_time_seconds",
            Kind::Gauge,
            "Start time of the process since the Unix epoch, in seconds.",
        );
        w.sample_f64("process_start_time_seconds", &[], start.floor());
        let per_reactor = |w: &mut Writer<'_>, name: &str, help: &str, v: &dyn Fn(usize) -> u64| {
            w.family(name, Kind::Gauge, help);
            for i in 0..self.reactors.len() {
                w.sample(name, &[("reactor", &i.to_string())], v(i));
            }
        };
        per_reactor(
            w,
            "wspush_connections",
            "Open WebSocket connections, per reactor thread.",
            &|i| self.online[i],
        );
        per_reactor(
            w,
            "wspush_sockets",
            "Sockets in any phase (handshake, open, closing), per reactor; updated by each timer scan (at most 1 s old).",
            &|i| self.reactors[i].gauges.sockets.load(Relaxed),
        );
        per_reactor(
            w,
            "wspush_pending_bytes",
            "Bytes queued for connections whose sockets would block, per reactor; updated by each timer scan.",
            &|i| self.reactors[i].gauges.pending_bytes.load(Relaxed),
        );
        w.single(
            "wspush_max_connections",
            Kind::Gauge,
            "Connections accepted before HTTP 503 (--max-connections).",
            self.settings.max_connections as u64,
        );
        w.single(
            "wspush_handshaking",
            Kind::Gauge,
            "Sockets accepted and not yet upgraded.",
            self.census.capacity.handshaking_count() as u64,
        );
        w.single(
            "wspush_rooms",
            Kind::Gauge,
            "Rooms with at least one member on this node.",
            self.rooms.len() as u64,
        );
        w.single(
            "wspush_users",
            Kind::Gauge,
            "Users with at least one connection on this node.",
            self.users.len() as u64,
        );
        w.single(
            "wspush_deflate_frames_total",
            Kind::Counter,
            "Pushed frames compressed by the dispatcher (once per message and variant, shared by every recipient).",
            self.compression.compressed,
        );
        w.single(
            "wspush_deflate_frame_bytes_in_total",
            Kind::Counter,
            "Bytes of those frames before compression.",
            self.compression.bytes_before,
        );
        w.single(
            "wspush_deflate_frame_bytes_out_total",
            Kind::Counter,
            "Bytes of those frames after compression.",
            self.compression.bytes_after,
        );
        w.single(
            "wspush_deflate_connections",
            Kind::Gauge,
            "Open connections that negotiated permessage-deflate.",
            self.compression.connections(),
        );
        let grant_sets: u64 = self
            .reactors
            .iter()
            .map(|r| r.gauges.grant_sets.load(Relaxed))
            .sum();
        w.single(
            "wspush_token_grant_sets",
            Kind::Gauge,
            "Distinct token grant sets held by connections (interned per reactor).",
            grant_sets,
        );
        w.single(
            "wspush_connections_accepted_total",
            Kind::Counter,
            "Sockets accepted on the WebSocket port.",
            self.sum(|s| s.accepted.load(Relaxed)),
        );
    }

    fn write_handshakes(&self, w: &mut Writer<'_>) {
        let name = "wspush_handshakes_total";
        w.family(
            name,
            Kind::Counter,
            "HTTP upgrade requests by result: upgraded, or why they were refused.",
        );
        w.sample(
            name,
            &[("result", "upgraded")],
            self.sum(|s| s.handshakes.load(Relaxed)),
        );
        for (i, e) in HANDSHAKE_FAILURES.iter().enumerate() {
            let n: u64 = self
                .reactors
                .iter()
                .map(|r| r.stats.handshake_failures[i].load(Relaxed))
                .sum();
            w.sample(name, &[("result", e.reason())], n);
        }
        let fixed: [(&str, Counter); 6] = [
            ("timeout", |s| {
                s.handshake_failures[HANDSHAKE_TIMEOUT].load(Relaxed)
            }),
            ("busy", |s| s.handshakes_refused.load(Relaxed)),
            ("room_forbidden", |s| s.rooms_forbidden.load(Relaxed)),
            ("user_param_refused", |s| s.user_param_refused.load(Relaxed)),
            ("proxy_header", |s| s.proxy_header_failures.load(Relaxed)),
            ("token_refused", |s| {
                s.auth_failures.iter().map(|n| n.load(Relaxed)).sum()
            }),
        ];
        for (result, f) in fixed {
            w.sample(name, &[("result", result)], self.sum(f));
        }
        let peers = self.census.peers.stats();
        for (r, n) in Refusal::ALL.iter().zip(peers.refused) {
            w.sample(name, &[("result", r.reason())], n);
        }
        let name = "wspush_token_failures_total";
        w.family(
            name,
            Kind::Counter,
            "Connection tokens refused at the upgrade, by reason.",
        );
        for (i, e) in AuthError::ALL.iter().enumerate() {
            let n: u64 = self
                .reactors
                .iter()
                .map(|r| r.stats.auth_failures[i].load(Relaxed))
                .sum();
            w.sample(name, &[("reason", e.reason())], n);
        }
        let name = "wspush_token_refreshes_total";
        w.family(
            name,
            Kind::Counter,
            "Token refreshes by open connections, by result.",
        );
        w.sample(
            name,
            &[("result", "ok")],
            self.sum(|s| s.token_refreshes.load(Relaxed)),
        );
        w.sample(
            name,
            &[("result", "refused")],
            self.sum(|s| s.refresh_failures.load(Relaxed)),
        );
        w.single(
            "wspush_joins_forbidden_total",
            Kind::Counter,
            "Client join ops refused (the room is not granted).",
            self.sum(|s| s.join_forbidden.load(Relaxed)),
        );
        w.single(
            "wspush_tracked_addresses",
            Kind::Gauge,
            "Client addresses held by the per-address limits.",
            peers.tracked_addresses as u64,
        );
    }

    fn write_traffic(&self, w: &mut Writer<'_>) {
        let name = "wspush_messages_published_total";
        w.family(
            name,
            Kind::Counter,
            "Push commands run on this node (control port and HTTP), by command.",
        );
        for (command, n) in [
            ("publish", self.stats.publish),
            ("broadcast", self.stats.broadcast),
            ("send", self.stats.send),
        ] {
            w.sample(name, &[("command", command)], n);
        }
        let counters: [(&str, &str, Counter); 9] = [
            (
                "wspush_deliveries_total",
                "Pushed messages queued for a connection (one per recipient).",
                |s| s.deliveries.load(Relaxed),
            ),
            (
                "wspush_bytes_written_total",
                "Bytes written to WebSocket sockets.",
                |s| s.bytes_written.load(Relaxed),
            ),
            (
                "wspush_writev_calls_total",
                "writev system calls on WebSocket sockets.",
                |s| s.writev_calls.load(Relaxed),
            ),
            (
                "wspush_messages_received_total",
                "Data messages received from clients.",
                |s| s.messages_received.load(Relaxed),
            ),
            (
                "wspush_bytes_received_total",
                "Bytes read from WebSocket sockets.",
                |s| s.bytes_received.load(Relaxed),
            ),
            (
                "wspush_pings_sent_total",
                "Pings sent to quiet connections.",
                |s| s.pings_sent.load(Relaxed),
            ),
            (
                "wspush_slow_consumer_discarded_pushes_total",
                "Pushes discarded because their connection was closed as a slow consumer.",
                |s| s.slow_close_discards.load(Relaxed),
            ),
            (
                "wspush_accept_pauses_total",
                "Times accepting paused for lack of descriptors or memory.",
                |s| s.accept_pauses.load(Relaxed),
            ),
            (
                "wspush_outbox_overflows_total",
                "Writes refused because a reactor's turn arena was full (never expected).",
                |s| s.outbox_overflows.load(Relaxed),
            ),
        ];
        for (name, help, f) in counters {
            w.single(name, Kind::Counter, help, self.sum(f));
        }
        let name = "wspush_slow_consumer_total";
        w.family(
            name,
            Kind::Counter,
            "Connections over --max-pending: closed with 1008 (action close) or pushes dropped for them (action drop, one per push).",
        );
        w.sample(
            name,
            &[("action", "close")],
            self.sum(|s| s.slow_closes.load(Relaxed)),
        );
        w.sample(
            name,
            &[("action", "drop")],
            self.sum(|s| s.slow_drops.load(Relaxed)),
        );
    }

    fn write_closes(&self, w: &mut Writer<'_>) {
        let name = "wspush_closes_total";
        w.family(
            name,
            Kind::Counter,
            "Open WebSocket connections that ended, by why (counted once, when closing starts).",
        );
        for r in CloseReason::ALL {
            let n: u64 = self
                .reactors
                .iter()
                .map(|x| x.stats.closes[r.index()].load(Relaxed))
                .sum();
            w.sample(name, &[("reason", r.label())], n);
        }
    }

    fn write_histograms(&self, w: &mut Writer<'_>) {
        let merged = |f: fn(&ReactorStats) -> &Histogram| {
            let mut s = Snapshot::default();
            for r in &self.reactors {
                f(&r.stats).add_to(&mut s);
            }
            s
        };
        w.histogram(
            "wspush_push_latency_seconds",
            "From the dispatcher's turn that received a push command to the end of the reactor turn that handed its frames to the kernel (or queued them for a blocked socket); sampled, one push per reactor batch.",
            &merged(|s| &s.push_latency),
        );
        w.histogram(
            "wspush_handshake_duration_seconds",
            "From accept to the 101 handed to the kernel, per upgraded connection.",
            &merged(|s| &s.handshake_duration),
        );
        w.histogram(
            "wspush_reactor_turn_seconds",
            "Busy time of each reactor loop turn (poll return to the next poll): how long an event can wait for its reactor (loop lag).",
            &merged(|s| &s.turn_duration),
        );
    }

    fn write_control(&self, w: &mut Writer<'_>) {
        w.single(
            "wspush_control_clients",
            Kind::Gauge,
            "Connected control-port clients.",
            // The slab holds the HTTP connections too (INFO subtracts them alike).
            self.clients.len().saturating_sub(self.http.len()) as u64,
        );
        let counters: [(&str, &str, u64); 11] = [
            (
                "wspush_http_connections_total",
                "HTTP API connections accepted (--http).",
                self.stats.http_connections,
            ),
            (
                "wspush_http_requests_total",
                "HTTP API requests received.",
                self.stats.http_requests,
            ),
            (
                "wspush_http_errors_total",
                "HTTP API requests answered with a 4xx or 5xx status.",
                self.stats.http_errors,
            ),
            (
                "wspush_http_unauthorized_total",
                "HTTP API requests refused for a missing or wrong API key.",
                self.stats.http_unauthorized,
            ),
            (
                "wspush_http_refused_total",
                "HTTP connections refused at --max-http-connections.",
                self.stats.http_refused,
            ),
            (
                "wspush_control_connections_total",
                "Control-port connections accepted.",
                self.stats.control_connections,
            ),
            (
                "wspush_control_commands_total",
                "Control-port commands run.",
                self.stats.commands,
            ),
            (
                "wspush_control_errors_total",
                "Control-port commands refused (arity, unknown, too large, not authenticated).",
                self.stats.rejected_commands,
            ),
            (
                "wspush_control_auth_failures_total",
                "Control-port AUTH attempts with a wrong password.",
                self.stats.auth_failures,
            ),
            (
                "wspush_control_auth_disconnects_total",
                "Control-port connections closed after too many failed AUTH attempts.",
                self.stats.auth_disconnects,
            ),
            (
                "wspush_reactor_batches_total",
                "Command batches sent from the dispatcher to the reactors.",
                self.stats.batches,
            ),
        ];
        for (name, help, n) in counters {
            w.single(name, Kind::Counter, help, n);
        }
    }

    fn write_history(&self, w: &mut Writer<'_>) {
        let h = &self.history;
        w.single(
            "wspush_history_rooms",
            Kind::Gauge,
            "Rooms with a position or retained messages.",
            h.rooms() as u64,
        );
        w.single(
            "wspush_history_messages",
            Kind::Gauge,
            "Messages retained for recovery.",
            h.messages() as u64,
        );
        w.single(
            "wspush_history_bytes",
            Kind::Gauge,
            "Bytes of retained messages (bounded by --history-memory).",
            h.bytes() as u64,
        );
        w.single(
            "wspush_history_evicted_total",
            Kind::Counter,
            "Retained messages evicted by the memory bound.",
            h.evicted(),
        );
        let name = "wspush_recoveries_total";
        w.family(
            name,
            Kind::Counter,
            "wspush.v1 joins that asked to recover what they missed, by result.",
        );
        w.sample(name, &[("result", "recovered")], self.stats.recoveries);
        w.sample(name, &[("result", "failed")], self.stats.recovery_failures);
        w.single(
            "wspush_replayed_messages_total",
            Kind::Counter,
            "Messages replayed to recovering connections.",
            self.stats.replayed,
        );
    }

    /// Cluster mode only: the broker link. A standalone node writes none of these.
    fn write_cluster(&self, w: &mut Writer<'_>) {
        let Some(c) = &self.cluster else {
            return;
        };
        let st = c.status();
        let gauges: [(&str, &str, u64); 6] = [
            (
                "wspush_cluster_broker_up",
                "1 while every Redis connection is up (else /readyz says 503).",
                u64::from(c.ready()),
            ),
            (
                "wspush_cluster_redis_connections_up",
                "Redis connections up.",
                st.connections_up as u64,
            ),
            (
                "wspush_cluster_nodes",
                "Live nodes of the cluster, this one included.",
                (c.nodes.len() + 1) as u64,
            ),
            (
                "wspush_cluster_subscribed_channels",
                "Redis channels subscribed.",
                st.subscribed,
            ),
            (
                "wspush_cluster_pending_commands",
                "Redis commands sent and not yet answered.",
                st.in_flight as u64,
            ),
            (
                "wspush_cluster_backlog_bytes",
                "Bytes waiting to be written to Redis.",
                st.backlog_bytes as u64,
            ),
        ];
        for (name, help, n) in gauges {
            w.single(name, Kind::Gauge, help, n);
        }
        let counters: [(&str, &str, u64); 8] = [
            (
                "wspush_cluster_messages_in_total",
                "Messages received from Redis.",
                st.messages_in,
            ),
            (
                "wspush_cluster_messages_out_total",
                "Messages published to Redis.",
                st.messages_out,
            ),
            (
                "wspush_cluster_disconnects_total",
                "Redis connections lost.",
                st.disconnects,
            ),
            (
                "wspush_cluster_reconnects_total",
                "Redis connections re-established.",
                st.reconnects,
            ),
            (
                "wspush_cluster_dropped_messages_total",
                "Messages from other nodes not handed to a reactor that was too far behind (one per message and reactor).",
                self.stats.broker_dropped,
            ),
            (
                "wspush_cluster_malformed_messages_total",
                "Messages from Redis that could not be decoded.",
                c.stats.malformed,
            ),
            (
                "wspush_cluster_broker_errors_total",
                "Error replies from Redis.",
                st.errors,
            ),
            (
                "wspush_cluster_unavailable_replies_total",
                "Commands answered with an error because the broker was down.",
                c.stats.unavailable_replies,
            ),
        ];
        for (name, help, n) in counters {
            w.single(name, Kind::Counter, help, n);
        }
    }
}
