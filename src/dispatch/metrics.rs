//! `GET /metrics`: the dispatcher's and reactors' counters in the Prometheus text
//! format 0.0.4. Reads only counters and gauges kept incrementally, so a scrape
//! costs O(metrics), never O(connections); it never asks or waits for a reactor.

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

use super::Dispatcher;

impl Dispatcher {
    /// The body of a /metrics response.
    pub(super) fn write_metrics(&self, out: &mut Vec<u8>) {
        let mut s = String::new();
        s.push_str("# HELP wspush_connections Open WebSocket connections.\n# TYPE wspush_connections gauge\n");
        for (i, n) in self.online.iter().enumerate() {
            let _ = writeln!(s, "wspush_connections{{reactor=\"{i}\"}} {n}");
        }
        s.push_str("# HELP wspush_rooms Rooms with at least one member on this node.\n# TYPE wspush_rooms gauge\n");
        let _ = writeln!(s, "wspush_rooms {}", self.rooms.len());
        s.push_str("# HELP wspush_deliveries_total Frames queued to connections.\n# TYPE wspush_deliveries_total counter\n");
        let deliveries: u64 = self
            .reactors
            .iter()
            .map(|r| r.stats.deliveries.load(Relaxed))
            .sum();
        let _ = writeln!(s, "wspush_deliveries_total {deliveries}");
        out.extend_from_slice(s.as_bytes());
    }
}
