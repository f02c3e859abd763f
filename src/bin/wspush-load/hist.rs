//! A log-linear latency histogram (HDR style): 128 linear sub-buckets per power of two,
//! so any recorded value is reported within 1/128 (< 0.8 %) of itself, in constant
//! memory, and histograms from several worker processes merge exactly by adding counts.
//!
//! It never stores samples and never allocates after creation; it never panics on any
//! `u64` input.

use serde::{Deserialize, Serialize};

/// Bits of linear precision inside each power-of-two range.
const SUB_BITS: u32 = 7;
/// Sub-buckets per power of two.
const SUB: u64 = 1 << SUB_BITS;
/// Values below `SUB` are exact; above, one row of `SUB` buckets per power of two up to 2^63.
const BUCKETS: usize = (SUB as usize) * (64 - SUB_BITS as usize + 1);

/// Bucket index of `v`.
fn index_of(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros(); // >= SUB_BITS
    let shift = msb - SUB_BITS;
    let top = v >> shift; // in [SUB, 2*SUB)
    ((shift as u64 + 1) * SUB + (top - SUB)) as usize
}

/// Smallest value that lands in bucket `i` (the tests check buckets against it).
#[cfg(test)]
fn lowest_of(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let row = i / SUB; // >= 1
    let top = i % SUB + SUB;
    top << (row - 1)
}

/// Largest value that lands in bucket `i`.
fn highest_of(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let row = i / SUB;
    let top = i % SUB + SUB;
    // The last bucket's upper edge is 2^64 - 1; compute without overflowing.
    ((top << (row - 1)) - 1).saturating_add(1u64 << (row - 1))
}

/// Counts of recorded values (nanoseconds, by convention) in log-linear buckets.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    /// One count per bucket, `BUCKETS` long.
    counts: Vec<u64>,
    /// Number of recorded values.
    total: u64,
    /// Exact smallest and largest recorded values (0 when empty).
    min: u64,
    max: u64,
    /// Exact sum, for the mean (saturating).
    sum: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    pub fn new() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            min: 0,
            max: 0,
            sum: 0,
        }
    }

    pub fn record(&mut self, v: u64) {
        self.counts[index_of(v)] += 1;
        if self.total == 0 || v < self.min {
            self.min = v;
        }
        self.max = self.max.max(v);
        self.total += 1;
        self.sum = self.sum.saturating_add(v);
    }

    pub fn merge(&mut self, other: &Histogram) {
        if other.total == 0 {
            return;
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        if self.total == 0 || other.min < self.min {
            self.min = other.min;
        }
        self.max = self.max.max(other.max);
        self.total += other.total;
        self.sum = self.sum.saturating_add(other.sum);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The value at percentile `q` (0..=100): the upper edge of the bucket holding the
    /// ceil(q% × count)-th smallest value, clamped to the exact min and max. 0 when empty.
    pub fn percentile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q / 100.0) * self.total as f64).ceil().max(1.0) as u64;
        let rank = rank.min(self.total);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return highest_of(i).clamp(self.min, self.max);
            }
        }
        self.max
    }
}

/// Wire form: only the non-empty buckets, as `[index, count]` pairs.
#[derive(Serialize, Deserialize)]
struct SparseHistogram {
    buckets: Vec<(u32, u64)>,
    min: u64,
    max: u64,
    sum: u64,
}

impl Serialize for Histogram {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let buckets = self
            .counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(i, &c)| (i as u32, c))
            .collect();
        SparseHistogram {
            buckets,
            min: self.min,
            max: self.max,
            sum: self.sum,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Histogram {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let sparse = SparseHistogram::deserialize(d)?;
        let mut h = Histogram::new();
        for (i, c) in sparse.buckets {
            let slot = h
                .counts
                .get_mut(i as usize)
                .ok_or_else(|| serde::de::Error::custom("histogram bucket out of range"))?;
            *slot += c;
            h.total += c;
        }
        h.min = sparse.min;
        h.max = sparse.max;
        h.sum = sparse.sum;
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn values_below_128_are_exact() {
        for v in 0..SUB {
            assert_eq!(lowest_of(index_of(v)), v);
            assert_eq!(highest_of(index_of(v)), v);
        }
    }

    #[test]
    fn percentiles_of_one_to_hundred_are_the_ranks() {
        let mut h = Histogram::new();
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.percentile(50.0), 50);
        assert_eq!(h.percentile(99.0), 99);
        assert_eq!(h.percentile(100.0), 100);
        assert_eq!(h.percentile(0.0), 1);
        assert_eq!(h.count(), 100);
        assert!((h.mean() - 50.5).abs() < 1e-9);
    }

    #[test]
    fn percentile_of_empty_histogram_is_zero() {
        assert_eq!(Histogram::new().percentile(99.0), 0);
    }

    #[test]
    fn max_percentile_is_the_exact_max_not_the_bucket_edge() {
        let mut h = Histogram::new();
        h.record(1_000_001);
        assert_eq!(h.percentile(100.0), 1_000_001);
        assert_eq!(h.percentile(50.0), 1_000_001);
    }

    #[test]
    fn p99_of_a_long_tail_lands_in_the_tail() {
        let mut h = Histogram::new();
        for _ in 0..990 {
            h.record(1_000);
        }
        for _ in 0..10 {
            h.record(1_000_000);
        }
        assert!(h.percentile(99.0) <= 1_008);
        assert!(h.percentile(99.1) >= 992_000);
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        let mut h = Histogram::new();
        h.record(u64::MAX);
        h.record(0);
        assert_eq!(h.percentile(100.0), u64::MAX);
        assert_eq!(h.percentile(50.0), 0);
        assert_eq!(highest_of(BUCKETS - 1), u64::MAX);
    }

    proptest! {
        #[test]
        fn every_value_falls_inside_its_bucket_within_one_128th(v in any::<u64>()) {
            let i = index_of(v);
            prop_assert!(i < BUCKETS);
            prop_assert!(lowest_of(i) <= v && v <= highest_of(i));
            prop_assert!(highest_of(i) - lowest_of(i) <= v / SUB);
        }

        #[test]
        fn merging_equals_recording_everything_in_one(a in proptest::collection::vec(any::<u32>(), 0..50),
                                                     b in proptest::collection::vec(any::<u32>(), 0..50)) {
            let (mut ha, mut hb, mut all) = (Histogram::new(), Histogram::new(), Histogram::new());
            for &v in &a { ha.record(v as u64); all.record(v as u64); }
            for &v in &b { hb.record(v as u64); all.record(v as u64); }
            ha.merge(&hb);
            prop_assert_eq!(ha, all);
        }

        #[test]
        fn json_round_trip_preserves_the_histogram(vals in proptest::collection::vec(any::<u64>(), 0..50)) {
            let mut h = Histogram::new();
            for &v in &vals { h.record(v); }
            let text = serde_json::to_string(&h).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let back: Histogram = serde_json::from_str(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back, h);
        }
    }
}
