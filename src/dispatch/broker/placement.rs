//! Where a channel lives when the cluster has several Redis instances: FNV-1a
//! (64-bit) of the channel name, then Lamping & Veach's jump consistent hash
//! ("A Fast, Minimal Memory, Consistent Hash Algorithm", 2014) onto the list of
//! `--redis` URLs.
//!
//! Every node computes this independently and must agree with every other node,
//! whatever its version, platform or build, or a publisher and a subscriber end up
//! on different instances and messages silently vanish. So this must never change
//! its output, never depend on anything but its arguments (no `std` hasher, no
//! random seed, no pointer width) and never panic. Jump hash was chosen because
//! adding an instance at the end of the list moves only the channels that land on
//! the new instance (about 1/n of them) and it needs no ring table.

/// FNV-1a 64-bit offset basis.
const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64-bit prime (2^40 + 2^8 + 0xb3).
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
/// The paper's 64-bit linear congruential generator multiplier.
const JUMP_LCG_MULTIPLIER: u64 = 2_862_933_555_777_941_757;

/// The FNV-1a 64-bit hash of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET_BASIS, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    })
}

/// Lamping & Veach jump consistent hash: bucket in 0..buckets (buckets >= 1).
///
/// `buckets == 0` has no valid answer; it returns 0 rather than panicking, and
/// callers never ask it (cluster mode has at least one instance).
pub fn jump(key: u64, buckets: u32) -> u32 {
    let buckets = i64::from(buckets);
    let mut key = key;
    let mut bucket: i64 = 0;
    let mut next: i64 = 0;
    // Each round draws the next bucket index at which this key would move if the
    // bucket count grew past it; the last one below `buckets` is the answer.
    while next < buckets {
        bucket = next;
        key = key.wrapping_mul(JUMP_LCG_MULTIPLIER).wrapping_add(1);
        // Exactly the paper's floating-point expression: IEEE 754 doubles give
        // the same result on every platform, and `as i64` saturates where C
        // would be undefined (the quotient can exceed i64 only when it is far
        // past any u32 bucket count anyway).
        let step = (1u64 << 31) as f64 / ((key >> 33) + 1) as f64;
        next = ((bucket + 1) as f64 * step) as i64;
    }
    // bucket < buckets <= u32::MAX, so this never truncates.
    bucket as u32
}

/// Which of `instances` Redis instances holds `channel`.
///
/// `instances` above `u32::MAX` is treated as `u32::MAX` (no cluster has that
/// many), and 0 gives 0.
pub fn instance_of(channel: &[u8], instances: usize) -> usize {
    let buckets = u32::try_from(instances).unwrap_or(u32::MAX);
    jump(fnv1a64(channel), buckets) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fnv1a64_matches_the_fnv_reference_vectors() {
        // From the FNV reference test suite (Landon Curt Noll, test_fnv.c).
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn jump_matches_fixed_vectors() {
        // Computed with the paper's C++ loop; they agree with an independent
        // implementation (ClickHouse's jumpConsistentHash test reference).
        assert_eq!(jump(1, 1), 0);
        assert_eq!(jump(42, 57), 43);
        assert_eq!(jump(256, 1024), 520);
        assert_eq!(jump(3_735_883_980, 1), 0);
        assert_eq!(jump(3_735_883_980, 666), 361);
        assert_eq!(jump(16_045_690_984_833_335_023, 255), 237);
    }

    #[test]
    fn jump_with_one_bucket_is_always_zero() {
        for key in [0, 1, u64::MAX, 0xdead_beef] {
            assert_eq!(jump(key, 1), 0);
        }
    }

    #[test]
    fn jump_with_zero_buckets_returns_zero_instead_of_panicking() {
        assert_eq!(jump(12345, 0), 0);
        assert_eq!(instance_of(b"wspush:room:a", 0), 0);
    }

    #[test]
    fn jump_handles_the_largest_bucket_count() {
        for key in [0, 1, u64::MAX, fnv1a64(b"wspush:room:lobby")] {
            assert!(jump(key, u32::MAX) < u32::MAX);
        }
    }

    #[test]
    fn instance_of_is_jump_of_fnv1a64_of_the_channel() {
        for (channel, instances) in [(&b"wspush:room:lobby"[..], 3), (b"wspush:user:42", 7)] {
            assert_eq!(
                instance_of(channel, instances),
                jump(fnv1a64(channel), instances as u32) as usize
            );
        }
        // Fixed, so a change in either function shows up here too.
        let placed: Vec<usize> = (0..8)
            .map(|i| instance_of(format!("wspush:room:r{i}").as_bytes(), 3))
            .collect();
        assert_eq!(placed, PLACED_R0_TO_R7_ON_3);
    }

    /// `instance_of("wspush:room:r0".."r7", 3)`, computed with a separate
    /// Python transcription of the paper's loop and of FNV-1a.
    const PLACED_R0_TO_R7_ON_3: [usize; 8] = [2, 0, 0, 2, 1, 1, 0, 0];

    #[test]
    fn channels_spread_roughly_evenly() {
        const INSTANCES: usize = 5;
        const CHANNELS: usize = 50_000;
        let mut per = [0usize; INSTANCES];
        for i in 0..CHANNELS {
            per[instance_of(format!("wspush:room:{i}").as_bytes(), INSTANCES)] += 1;
        }
        let fair = CHANNELS / INSTANCES;
        for (i, &n) in per.iter().enumerate() {
            // 10 000 expected each; a 10 % band is far outside random variation
            // (the standard deviation is about 90) but catches a skewed hash.
            assert!(
                n.abs_diff(fair) < fair / 10,
                "instance {i}: {n} of {CHANNELS}"
            );
        }
    }

    proptest! {
        #[test]
        fn jump_is_below_the_bucket_count(key in any::<u64>(), buckets in 1u32..) {
            prop_assert!(jump(key, buckets) < buckets);
        }

        #[test]
        fn adding_a_bucket_moves_keys_only_to_the_new_bucket(
            key in any::<u64>(),
            buckets in 1u32..10_000,
        ) {
            let before = jump(key, buckets);
            let after = jump(key, buckets + 1);
            prop_assert!(after == before || after == buckets, "{before} -> {after}");
        }

        #[test]
        fn instance_of_is_below_the_instance_count(
            channel in prop::collection::vec(any::<u8>(), 0..64),
            instances in 1usize..64,
        ) {
            prop_assert!(instance_of(&channel, instances) < instances);
        }
    }
}
