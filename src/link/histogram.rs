//! A latency histogram a reactor observes into without a lock, and the dispatcher
//! reads for `/metrics`.
//!
//! Fixed bucket bounds (`BOUNDS_NS`, the same for every histogram so that
//! reactors' histograms add up bucket by bucket); one relaxed atomic add per
//! observation for its bucket and one for the sum. Counts are per bucket, not
//! cumulative, and the total count is the sum of a snapshot's buckets, so a scrape
//! always shows `+Inf` equal to `_count` and non-decreasing buckets, even while
//! reactors observe concurrently. Never allocates after construction, never blocks.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the buckets, in nanoseconds: 50 µs (a push on an idle loopback) up
/// to 10 s (the default handshake timeout). Observations above the last go to `+Inf`.
pub const BOUNDS_NS: [u64; 17] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Observation counts per bucket (the last is `+Inf`) and the sum of observations.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS_NS.len() + 1],
    /// Sum of all observations, in nanoseconds (584 years before it wraps).
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Counts one observation.
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BOUNDS_NS.partition_point(|&b| b < ns);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    /// Adds this histogram's current counts to `into`.
    pub fn add_to(&self, into: &mut Snapshot) {
        for (acc, b) in into.buckets.iter_mut().zip(&self.buckets) {
            *acc += b.load(Relaxed);
        }
        into.sum_ns += self.sum_ns.load(Relaxed);
    }
}

/// A histogram's counts at one moment (or several histograms' added up).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Per bucket, not cumulative; the last is `+Inf`.
    pub buckets: [u64; BOUNDS_NS.len() + 1],
    pub sum_ns: u64,
}

impl Snapshot {
    /// Observations in all buckets.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Cumulative counts `(le, count)` as Prometheus writes them, `+Inf` last
    /// (`le` is `None` for it).
    pub fn cumulative(&self) -> impl Iterator<Item = (Option<f64>, u64)> + '_ {
        let mut acc = 0u64;
        self.buckets.iter().enumerate().map(move |(i, n)| {
            acc += n;
            (BOUNDS_NS.get(i).map(|&ns| ns as f64 / 1e9), acc)
        })
    }

    /// The sum in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_ns as f64 / 1e9
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn snapshot(h: &Histogram) -> Snapshot {
        let mut s = Snapshot::default();
        h.add_to(&mut s);
        s
    }

    #[test]
    fn an_observation_lands_in_the_first_bucket_whose_bound_it_does_not_exceed() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(50)); // exactly on the first bound
        h.observe(Duration::from_micros(51));
        h.observe(Duration::from_secs(11));
        let s = snapshot(&h);
        assert_eq!(s.buckets[0], 1, "le is inclusive");
        assert_eq!(s.buckets[1], 1);
        assert_eq!(s.buckets[BOUNDS_NS.len()], 1, "past the last bound: +Inf");
        assert_eq!(s.count(), 3);
        assert_eq!(s.sum_ns, 50_000 + 51_000 + 11_000_000_000);
        let cum: Vec<_> = s.cumulative().collect();
        assert_eq!(cum[0], (Some(0.00005), 1));
        assert_eq!(cum[1], (Some(0.0001), 2));
        assert_eq!(cum.last(), Some(&(None, 3)));
    }

    #[test]
    fn bounds_increase() {
        assert!(BOUNDS_NS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn reactors_add_up_bucket_by_bucket() {
        let (a, b) = (Histogram::default(), Histogram::default());
        a.observe(Duration::from_millis(1));
        b.observe(Duration::from_millis(1));
        b.observe(Duration::from_secs(1));
        let mut s = Snapshot::default();
        a.add_to(&mut s);
        b.add_to(&mut s);
        assert_eq!(s.count(), 3);
        assert_eq!(s.buckets[4], 2);
        assert_eq!(s.sum_seconds(), 1.002);
    }

    proptest! {
        #[test]
        fn cumulative_counts_never_decrease_and_end_at_the_count(
            obs in proptest::collection::vec(0u64..20_000_000_000, 0..200)
        ) {
            let h = Histogram::default();
            for ns in &obs {
                h.observe(Duration::from_nanos(*ns));
            }
            let s = snapshot(&h);
            let cum: Vec<_> = s.cumulative().collect();
            prop_assert!(cum.windows(2).all(|w| w[0].1 <= w[1].1));
            prop_assert_eq!(cum.last().map(|c| c.1), Some(obs.len() as u64));
            for (le, n) in cum.iter().filter_map(|(le, n)| le.map(|l| (l, *n))) {
                let want = obs.iter().filter(|&&ns| (ns as f64) <= le * 1e9 + 0.5).count();
                prop_assert_eq!(n, want as u64, "le {}", le);
            }
        }
    }
}
