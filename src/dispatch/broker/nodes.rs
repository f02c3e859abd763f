//! The other nodes of the cluster, as their heartbeats describe them.
//!
//! Every node publishes a heartbeat on the cluster channel each second; a node not
//! heard from for [`NODE_TIMEOUT`] is taken to be gone (a node that stops cleanly says
//! so and is dropped at once). Cluster-wide `ONLINE` sums these reports, `NODES`
//! lists them, and a room's presence counts are trusted only for nodes listed here —
//! so a crashed node's numbers vanish everywhere within the timeout.
//!
//! Pure bookkeeping: it is told the time, it never reads a clock or a socket, and it
//! holds at most [`MAX_NODES`] entries whatever the broker delivers.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::wire::Heartbeat;

/// How often a node sends its heartbeat.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// A node not heard from for this long has left the cluster.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(3);

/// The most nodes tracked; heartbeats of further nodes are ignored (and counted), so
/// that a flood of forged nonces cannot grow the table without bound.
pub const MAX_NODES: usize = 4096;

/// What is known of one other node.
#[derive(Debug, Clone)]
pub struct Node {
    pub report: Heartbeat,
    pub last_seen: Instant,
}

/// Other nodes by instance nonce.
#[derive(Debug, Default)]
pub struct NodeTable {
    nodes: HashMap<u64, Node>,
    /// Heartbeats ignored because the table was full.
    pub overflow: u64,
}

/// What a heartbeat revealed that an operator should hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// A node seen for the first time.
    New,
    /// A known node.
    Known,
    /// Ignored: the table is full.
    Ignored,
}

impl NodeTable {
    /// Records a heartbeat from node `nonce`.
    pub fn heard(&mut self, nonce: u64, report: Heartbeat, now: Instant) -> Heard {
        if let Some(n) = self.nodes.get_mut(&nonce) {
            n.report = report;
            n.last_seen = now;
            return Heard::Known;
        }
        if self.nodes.len() >= MAX_NODES {
            self.overflow += 1;
            return Heard::Ignored;
        }
        self.nodes.insert(
            nonce,
            Node {
                report,
                last_seen: now,
            },
        );
        Heard::New
    }

    /// Forgets a node that said it is leaving.
    pub fn remove(&mut self, nonce: u64) -> Option<Node> {
        self.nodes.remove(&nonce)
    }

    /// Drops nodes silent for longer than the timeout; returns their ids.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let mut gone = Vec::new();
        self.nodes.retain(|_, n| {
            let alive = now.saturating_duration_since(n.last_seen) < NODE_TIMEOUT;
            if !alive {
                gone.push(n.report.node_id.clone());
            }
            alive
        });
        gone
    }

    /// Forgets every node (the broker link is lost: nothing is known any more).
    pub fn clear(&mut self) {
        self.nodes.clear();
    }

    pub fn is_live(&self, nonce: u64) -> bool {
        self.nodes.contains_key(&nonce)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Connections on all other nodes, as last reported.
    pub fn connections(&self) -> u64 {
        // Saturating: the reports are what anyone with access to the broker sent.
        self.nodes
            .values()
            .fold(0u64, |sum, n| sum.saturating_add(n.report.connections))
    }

    /// The nodes, ordered by id (then nonce) so `NODES` reads the same everywhere.
    pub fn sorted(&self) -> Vec<(u64, &Node)> {
        let mut v: Vec<(u64, &Node)> = self.nodes.iter().map(|(&k, n)| (k, n)).collect();
        v.sort_by(|a, b| {
            a.1.report
                .node_id
                .cmp(&b.1.report.node_id)
                .then(a.0.cmp(&b.0))
        });
        v
    }

    /// Another node reporting `id`, if any (a misconfiguration worth a warning).
    pub fn other_with_id(&self, id: &str, nonce: u64) -> bool {
        self.nodes
            .iter()
            .any(|(&k, n)| k != nonce && n.report.node_id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(id: &str, connections: u64) -> Heartbeat {
        Heartbeat {
            node_id: id.into(),
            connections,
            rooms: 0,
            users: 0,
            uptime_s: 0,
            instances: 1,
        }
    }

    #[test]
    fn nodes_are_added_updated_and_expire_after_the_timeout() {
        let t0 = Instant::now();
        let mut t = NodeTable::default();
        assert_eq!(t.heard(1, hb("a", 5), t0), Heard::New);
        assert_eq!(t.heard(2, hb("b", 7), t0), Heard::New);
        assert_eq!(
            t.heard(1, hb("a", 6), t0 + Duration::from_secs(2)),
            Heard::Known
        );
        assert_eq!(t.connections(), 13);
        assert!(t.expire(t0 + Duration::from_millis(2999)).is_empty());
        assert_eq!(t.expire(t0 + NODE_TIMEOUT), vec!["b".to_string()]);
        assert!(t.is_live(1) && !t.is_live(2));
        assert_eq!(t.remove(1).map(|n| n.report.node_id), Some("a".into()));
        assert!(t.is_empty());
    }

    #[test]
    fn the_table_is_bounded() {
        let now = Instant::now();
        let mut t = NodeTable::default();
        for i in 0..MAX_NODES as u64 + 10 {
            t.heard(i, hb("x", 1), now);
        }
        assert_eq!(t.len(), MAX_NODES);
        assert_eq!(t.overflow, 10);
    }

    #[test]
    fn listing_is_sorted_by_id_and_duplicates_are_detected() {
        let now = Instant::now();
        let mut t = NodeTable::default();
        t.heard(9, hb("c", 1), now);
        t.heard(3, hb("a", 1), now);
        t.heard(5, hb("b", 1), now);
        let ids: Vec<&str> = t
            .sorted()
            .iter()
            .map(|(_, n)| n.report.node_id.as_str())
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert!(t.other_with_id("a", 4));
        assert!(!t.other_with_id("a", 3));
    }

    /// Heartbeats are whatever anyone with access to the broker publishes: numbers
    /// that do not fit a sum must not panic the dispatcher.
    #[test]
    fn huge_reported_counts_saturate_instead_of_overflowing() {
        let now = Instant::now();
        let mut t = NodeTable::default();
        t.heard(1, hb("a", u64::MAX), now);
        t.heard(2, hb("b", 5), now);
        assert_eq!(t.connections(), u64::MAX);
    }
}
