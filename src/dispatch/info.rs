//! The INFO reply: Redis INFO style sections (`# Server`, `# Clients`, `# Rooms`,
//! `# Stats`) of `key:value` lines, so existing Redis tooling can parse it. It only
//! loads counters the reactors publish (relaxed atomics): it never asks or waits for a
//! reactor.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::Dispatcher;
use crate::auth::AuthError;
use crate::link::peers::Refusal;

/// Reads one counter of a reactor's stats.
type Counter = fn(&ReactorStats) -> u64;
use crate::link::stats::{Gauges, ReactorStats, HANDSHAKE_FAILURES, HANDSHAKE_TIMEOUT};

/// Renders INFO; `section` (case-insensitive) limits it to one section, like Redis.
pub(super) fn render(d: &Dispatcher, section: Option<&str>) -> String {
    let want = |name: &str| {
        section.is_none_or(|s| {
            s.eq_ignore_ascii_case(name)
                || s.eq_ignore_ascii_case("all")
                || s.eq_ignore_ascii_case("everything")
                || s.eq_ignore_ascii_case("default")
        })
    };
    let sum = |f: fn(&ReactorStats) -> u64| -> u64 { d.reactors.iter().map(|r| f(&r.stats)).sum() };
    let mut out = String::new();
    let line = |out: &mut String, k: &str, v: &dyn std::fmt::Display| {
        let _ = write!(out, "{k}:{v}\r\n");
    };
    if want("server") {
        out.push_str("# Server\r\n");
        line(&mut out, "wspush_version", &env!("CARGO_PKG_VERSION"));
        line(&mut out, "process_id", &std::process::id());
        line(
            &mut out,
            "uptime_in_seconds",
            &d.started.elapsed().as_secs(),
        );
        line(&mut out, "reactors", &d.reactors.len());
        line(&mut out, "websocket_listen", &d.settings.listen);
        line(&mut out, "control_listen", &d.settings.control);
        match d.settings.http {
            Some(a) => line(&mut out, "http_listen", &a),
            None => line(&mut out, "http_listen", &"off"),
        }
        line(&mut out, "max_message", &d.settings.max_message);
        let [started, failed, conns, clients] = crate::link::handover::UPGRADES.snapshot();
        line(&mut out, "upgrades_started", &started);
        line(&mut out, "upgrades_failed", &failed);
        line(&mut out, "upgrade_taken_connections", &conns);
        line(&mut out, "upgrade_taken_control_clients", &clients);
        out.push_str("\r\n");
    }
    if want("clients") {
        out.push_str("# Clients\r\n");
        let online: u64 = d.online.iter().sum();
        line(&mut out, "connected_clients", &online);
        line(&mut out, "max_connections", &d.settings.max_connections);
        let sockets: u64 = d
            .reactors
            .iter()
            .map(|r| r.gauges.sockets.load(Relaxed))
            .sum();
        line(&mut out, "sockets", &sockets);
        line(
            &mut out,
            "deflate_connections",
            &d.compression.connections(),
        );
        line(&mut out, "deflate_frames", &d.compression.compressed);
        line(
            &mut out,
            "deflate_frame_bytes_in",
            &d.compression.bytes_before,
        );
        line(
            &mut out,
            "deflate_frame_bytes_out",
            &d.compression.bytes_after,
        );
        line(
            &mut out,
            "established_slots",
            &d.census.capacity.open_count(),
        );
        line(
            &mut out,
            "handshaking",
            &d.census.capacity.handshaking_count(),
        );
        line(
            &mut out,
            "max_handshakes",
            &d.census.capacity.max_handshakes,
        );
        for (i, r) in d.reactors.iter().enumerate() {
            let _ = write!(
                out,
                "reactor_{i}:connections={},sockets={},pending_bytes={}\r\n",
                d.online[i],
                r.gauges.sockets.load(Relaxed),
                r.gauges.pending_bytes.load(Relaxed)
            );
        }
        let pending: u64 = d
            .reactors
            .iter()
            .map(|r| r.gauges.pending_bytes.load(Relaxed))
            .sum();
        line(&mut out, "pending_bytes", &pending);
        line(
            &mut out,
            "control_clients",
            &(d.clients.len().saturating_sub(d.http.len())),
        );
        line(&mut out, "http_clients", &d.http.len());
        line(&mut out, "users", &d.users.len());
        let grant_sets: u64 = d
            .reactors
            .iter()
            .map(|r| r.gauges.grant_sets.load(Relaxed))
            .sum();
        line(&mut out, "token_grant_sets", &grant_sets);
        out.push_str("\r\n");
    }
    if want("rooms") {
        out.push_str("# Rooms\r\n");
        line(&mut out, "rooms", &d.rooms.len());
        let memberships: u64 = d.rooms_memberships();
        line(&mut out, "room_memberships", &memberships);
        out.push_str("\r\n");
    }
    if want("stats") {
        out.push_str("# Stats\r\n");
        line(
            &mut out,
            "total_connections_received",
            &sum(|s| s.accepted.load(Relaxed)),
        );
        line(&mut out, "handshakes", &sum(|s| s.handshakes.load(Relaxed)));
        let mut failures = 0;
        for (i, e) in HANDSHAKE_FAILURES.iter().enumerate() {
            let n: u64 = d
                .reactors
                .iter()
                .map(|r| r.stats.handshake_failures[i].load(Relaxed))
                .sum();
            failures += n;
            line(&mut out, &format!("handshake_failures_{}", e.reason()), &n);
        }
        let timeouts: u64 = d
            .reactors
            .iter()
            .map(|r| r.stats.handshake_failures[HANDSHAKE_TIMEOUT].load(Relaxed))
            .sum();
        line(&mut out, "handshake_failures_timeout", &timeouts);
        line(&mut out, "handshake_failures", &(failures + timeouts));
        line(&mut out, "publish_commands", &d.stats.publish);
        line(&mut out, "broadcast_commands", &d.stats.broadcast);
        line(&mut out, "send_commands", &d.stats.send);
        line(
            &mut out,
            "messages_published",
            &(d.stats.publish + d.stats.broadcast + d.stats.send),
        );
        line(&mut out, "control_commands", &d.stats.commands);
        line(&mut out, "control_errors", &d.stats.rejected_commands);
        line(&mut out, "auth_failures", &d.stats.auth_failures);
        line(&mut out, "auth_disconnects", &d.stats.auth_disconnects);
        line(
            &mut out,
            "control_connections_received",
            &d.stats.control_connections,
        );
        line(
            &mut out,
            "http_connections_received",
            &d.stats.http_connections,
        );
        line(&mut out, "http_requests", &d.stats.http_requests);
        line(&mut out, "http_errors", &d.stats.http_errors);
        line(&mut out, "http_unauthorized", &d.stats.http_unauthorized);
        line(&mut out, "http_refused", &d.stats.http_refused);
        line(&mut out, "reactor_batches", &d.stats.batches);
        line(&mut out, "deliveries", &sum(|s| s.deliveries.load(Relaxed)));
        line(
            &mut out,
            "bytes_written",
            &sum(|s| s.bytes_written.load(Relaxed)),
        );
        line(
            &mut out,
            "writev_calls",
            &sum(|s| s.writev_calls.load(Relaxed)),
        );
        line(
            &mut out,
            "slow_consumer_closes",
            &sum(|s| s.slow_closes.load(Relaxed)),
        );
        line(
            &mut out,
            "slow_consumer_drops",
            &sum(|s| s.slow_drops.load(Relaxed)),
        );
        line(
            &mut out,
            "messages_received",
            &sum(|s| s.messages_received.load(Relaxed)),
        );
        line(
            &mut out,
            "bytes_received",
            &sum(|s| s.bytes_received.load(Relaxed)),
        );
        line(&mut out, "pings_sent", &sum(|s| s.pings_sent.load(Relaxed)));
        line(
            &mut out,
            "idle_closes",
            &sum(|s| s.idle_closes.load(Relaxed)),
        );
        line(
            &mut out,
            "protocol_error_closes",
            &sum(|s| s.protocol_closes.load(Relaxed)),
        );
        line(&mut out, "kicked", &sum(|s| s.kicked.load(Relaxed)));
        line(&mut out, "closed_sockets", &sum(|s| s.closed.load(Relaxed)));
        line(
            &mut out,
            "accept_pauses",
            &sum(|s| s.accept_pauses.load(Relaxed)),
        );
        line(
            &mut out,
            "handshakes_refused_busy",
            &sum(|s| s.handshakes_refused.load(Relaxed)),
        );
        line(
            &mut out,
            "slow_consumer_discarded_pushes",
            &sum(|s| s.slow_close_discards.load(Relaxed)),
        );
        let peers = d.census.peers.stats();
        line(&mut out, "tracked_addresses", &peers.tracked_addresses);
        line(&mut out, "tracked_addresses_bytes", &peers.table_bytes);
        for (r, n) in Refusal::ALL.iter().zip(peers.refused) {
            line(&mut out, &format!("address_refusals_{}", r.reason()), &n);
        }
        line(
            &mut out,
            "proxy_header_failures",
            &sum(|s| s.proxy_header_failures.load(Relaxed)),
        );
        line(
            &mut out,
            "outbox_overflows",
            &sum(|s| s.outbox_overflows.load(Relaxed)),
        );
        let mut token_failures = 0;
        for (i, e) in AuthError::ALL.iter().enumerate() {
            let n: u64 = d
                .reactors
                .iter()
                .map(|r| r.stats.auth_failures[i].load(Relaxed))
                .sum();
            token_failures += n;
            line(&mut out, &format!("token_failures_{}", e.reason()), &n);
        }
        line(&mut out, "token_failures", &token_failures);
        let counters: [(&str, Counter); 6] = [
            ("auth_user_param_refused", |s| {
                s.user_param_refused.load(Relaxed)
            }),
            ("rooms_forbidden_at_connect", |s| {
                s.rooms_forbidden.load(Relaxed)
            }),
            ("joins_forbidden", |s| s.join_forbidden.load(Relaxed)),
            ("token_refreshes", |s| s.token_refreshes.load(Relaxed)),
            ("token_refresh_failures", |s| {
                s.refresh_failures.load(Relaxed)
            }),
            ("token_expired_closes", |s| {
                s.token_expired_closes.load(Relaxed)
            }),
        ];
        for (name, f) in counters {
            line(&mut out, name, &sum(f));
        }
        out.push_str("\r\n");
    }
    if want("history") {
        out.push_str("# History\r\n");
        let h = &d.history;
        line(&mut out, "history_size", &d.settings.history.size);
        line(
            &mut out,
            "history_ttl_seconds",
            &d.settings.history.ttl.as_secs(),
        );
        line(&mut out, "history_memory_limit", &d.settings.history.memory);
        line(&mut out, "history_rooms", &h.rooms());
        line(&mut out, "history_messages", &h.messages());
        line(&mut out, "history_bytes", &h.bytes());
        line(&mut out, "history_evicted", &h.evicted());
        line(&mut out, "max_recover", &d.settings.max_recover);
        line(&mut out, "recoveries", &d.stats.recoveries);
        line(&mut out, "recovery_failures", &d.stats.recovery_failures);
        line(&mut out, "replayed_messages", &d.stats.replayed);
        out.push_str("\r\n");
    }
    if want("tables") {
        // What the soak test watches come back to zero once every client is gone:
        // the tables that churn (fresh names, request ids, waits) would grow in.
        out.push_str("# Tables\r\n");
        let gauge = |f: fn(&Gauges) -> &AtomicU64| -> u64 {
            d.reactors.iter().map(|r| f(&r.gauges).load(Relaxed)).sum()
        };
        line(&mut out, "reactor_rooms", &gauge(|g| &g.rooms));
        line(&mut out, "reactor_users", &gauge(|g| &g.users));
        line(&mut out, "reactor_peer_slots", &gauge(|g| &g.peer_slots));
        line(
            &mut out,
            "reactor_position_waits",
            &gauge(|g| &g.position_waits),
        );
        line(&mut out, "dispatcher_requests", &d.pending.len());
        let unacked: usize = d.unacked.iter().map(|q| q.len()).sum();
        line(&mut out, "dispatcher_unacked_requests", &unacked);
        line(&mut out, "dispatcher_recovering_rooms", &d.recovering.len());
        line(&mut out, "dispatcher_broker_waits", &d.broker_waits.len());
        out.push_str("\r\n");
    }
    if want("cluster") {
        out.push_str("# Cluster\r\n");
        match &d.cluster {
            None => {
                line(&mut out, "cluster_enabled", &0);
                line(&mut out, "cluster_node_id", &d.settings.node_id);
            }
            Some(c) => {
                let st = c.status();
                line(&mut out, "cluster_enabled", &1);
                line(&mut out, "cluster_node_id", &c.node_id);
                line(&mut out, "cluster_nonce", &format!("{:016x}", c.nonce));
                line(&mut out, "cluster_redis_instances", &st.instances);
                line(&mut out, "cluster_redis_connections", &st.connections);
                line(&mut out, "cluster_redis_connections_up", &st.connections_up);
                line(&mut out, "cluster_broker_up", &u8::from(c.ready()));
                line(&mut out, "cluster_linked", &u8::from(c.linked()));
                line(&mut out, "cluster_subscribed_channels", &st.subscribed);
                line(
                    &mut out,
                    "cluster_wanted_channels",
                    &c.wanted(&d.rooms, &d.users),
                );
                line(&mut out, "cluster_messages_in", &st.messages_in);
                line(&mut out, "cluster_messages_out", &st.messages_out);
                line(&mut out, "cluster_disconnects", &st.disconnects);
                line(&mut out, "cluster_reconnects", &st.reconnects);
                line(
                    &mut out,
                    "cluster_dropped_messages",
                    &d.stats.broker_dropped,
                );
                line(
                    &mut out,
                    "cluster_unavailable_replies",
                    &c.stats.unavailable_replies,
                );
                line(&mut out, "cluster_malformed_messages", &c.stats.malformed);
                line(&mut out, "cluster_broker_errors", &st.errors);
                line(&mut out, "cluster_node_id_conflicts", &c.stats.id_conflicts);
                line(&mut out, "cluster_nodes", &(c.nodes.len() + 1));
                line(&mut out, "cluster_pending_commands", &st.in_flight);
                line(&mut out, "cluster_backlog_bytes", &st.backlog_bytes);
                line(&mut out, "cluster_pending_replies", &d.broker_waits.len());
            }
        }
    }
    out
}
