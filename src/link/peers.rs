//! Per-address admission: how many connections one client address holds and how fast
//! it may open new ones (`--max-conns-per-ip`, `--handshake-rate-per-ip`), plus the
//! handshake rate of the whole process (`--max-handshake-rate`).
//!
//! One `PeerTable` is shared by every reactor. It is touched only when a handshake is
//! admitted, when an admitted connection closes and from the reactors' timer scans;
//! never per message, so it must never be called on the push or read path. That is
//! why a lock is acceptable here when the design forbids one on the hot path: a
//! handshake already costs about 17 µs of system calls, and the critical section is
//! one SipHash-keyed lookup in one of 64 shards (chosen by hash), so two reactors
//! contend only when they admit from the same shard in the same ~100 ns.
//! It must never block for longer than that: no allocation beyond a table's own growth,
//! no I/O, and nothing that scans more than one shard under a lock.
//!
//! Rates are token buckets with a burst of one second's worth of tokens, stored as
//! one "theoretical arrival time" (GCRA): a bucket is the time at which it would be
//! full again, counted in units of 1/R ms, so refilling at R tokens/s is exact integer
//! arithmetic (one unit is one thousandth of a token). Only admitted handshakes take a
//! token: a refused client never makes a later attempt from its address wait longer.
//!
//! Memory. An address is tracked only while a per-address limit is set. Each tracked
//! address is one 32-byte `Entry` in a hashbrown table plus one control byte; a
//! table is at most 7/8 full and grows by doubling, so an address costs 38 to 75
//! bytes. The table is bounded by `Limits::max_entries` (an exact, process-wide
//! count): at the default of 800,000 the 64 shards hold about 12,500 addresses
//! each, under the 14,336 that 16,384 buckets take, so a full table is
//! 64 × 16,384 × 33 B ≈ 33 MiB (≈ 43 B per address). An entry is dropped once its
//! address has no connection and a full bucket again, which makes forgetting it
//! lossless; the sweep also shrinks a shard that emptied, so a flood's memory comes back.

use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard, PoisonError};

use hashbrown::HashTable;

/// Number of independently locked parts of the table.
const SHARDS: usize = 64;

/// Addresses tracked at most, by default (≈ 33 MiB when full, see the module doc).
pub const DEFAULT_MAX_ENTRIES: usize = 800_000;

/// Highest rate honoured, in handshakes per second; a higher setting is this one.
/// Keeps `now_ms × rate` (the bucket's clock) far from overflowing a `u64`.
pub const MAX_RATE: u32 = 1_000_000;

/// One token, in bucket units (1/R ms, in which R tokens/s is one unit per unit).
const TOKEN: u64 = 1000;

/// Where a client connects from, grouped as its limits apply.
///
/// An IPv4 address (or an IPv4-mapped IPv6 one, `::ffff:a.b.c.d`) is kept as its
/// mapped form; an IPv6 address is masked to its first `ipv6_prefix` bits. The two can
/// never collide: a masked IPv6 key lies in `::ffff:0:0/96` only if its first 96 bits
/// were kept, and then the address itself was IPv4-mapped and taken as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddrKey(u128);

impl AddrKey {
    /// The key of `ip`, with IPv6 grouped by its first `ipv6_prefix` bits (at most 128;
    /// 64 is one customer's subnet, which a client can pick addresses from at will).
    pub fn new(ip: IpAddr, ipv6_prefix: u8) -> AddrKey {
        let v6 = match ip {
            IpAddr::V4(v4) => return AddrKey::v4(v4),
            IpAddr::V6(v6) => v6,
        };
        if let Some(v4) = v6.to_ipv4_mapped() {
            return AddrKey::v4(v4);
        }
        let keep = u32::from(ipv6_prefix.min(128));
        let mask = u128::MAX.checked_shl(128 - keep).unwrap_or(0);
        AddrKey(u128::from(v6) & mask)
    }

    fn v4(v4: Ipv4Addr) -> AddrKey {
        AddrKey(u128::from(v4.to_ipv6_mapped()))
    }
}

/// The limits, each 0 for unlimited.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most concurrent connections per address (`--max-conns-per-ip`).
    pub max_conns_per_ip: u32,
    /// Handshakes per second per address, burst as many (`--handshake-rate-per-ip`).
    pub rate_per_ip: u32,
    /// Handshakes per second for the process, burst as many (`--max-handshake-rate`).
    pub max_rate: u32,
    /// Most addresses tracked at once. Should be at least `--max-connections`, so that
    /// live connections alone can never fill the table.
    pub max_entries: usize,
}

/// Why a handshake is refused. `status()` is the one place these map to HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The address already holds `max_conns_per_ip` connections.
    TooManyConnections,
    /// The address used up its handshake rate.
    RateLimited { retry_after_secs: u32 },
    /// The process used up its handshake rate.
    Busy { retry_after_secs: u32 },
    /// A new address found `max_entries` addresses tracked. Refused rather than let in
    /// untracked: a flood from many (spoofed or rented) addresses must neither grow
    /// memory nor switch the per-address limits off. It lasts until the flood's
    /// connections close and their buckets refill (at most a second with a per-address
    /// rate), plus one sweep pass.
    TableFull,
}

impl Refusal {
    /// Every kind, in the order of `PeerStats::refused` (retry values are zero here).
    pub const ALL: [Refusal; 4] = [
        Refusal::TooManyConnections,
        Refusal::RateLimited {
            retry_after_secs: 0,
        },
        Refusal::Busy {
            retry_after_secs: 0,
        },
        Refusal::TableFull,
    ];

    pub fn status(self) -> u16 {
        match self {
            Refusal::TooManyConnections | Refusal::RateLimited { .. } => 429,
            Refusal::Busy { .. } | Refusal::TableFull => 503,
        }
    }

    /// Short label for stats.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::TooManyConnections => "conns_per_ip",
            Refusal::RateLimited { .. } => "rate_per_ip",
            Refusal::Busy { .. } => "rate_global",
            Refusal::TableFull => "peer_table_full",
        }
    }

    /// One line for a human reading the response body.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::TooManyConnections => "too many connections from this address",
            Refusal::RateLimited { .. } => "too many handshakes from this address",
            Refusal::Busy { .. } => "too many handshakes, try again later",
            Refusal::TableFull => "too many client addresses, try again later",
        }
    }

    /// The `Retry-After` value in seconds, for the refusals that have one.
    pub fn retry_after_secs(self) -> Option<u32> {
        match self {
            Refusal::RateLimited { retry_after_secs } | Refusal::Busy { retry_after_secs } => {
                Some(retry_after_secs)
            }
            Refusal::TooManyConnections | Refusal::TableFull => None,
        }
    }

    fn index(self) -> usize {
        match self {
            Refusal::TooManyConnections => 0,
            Refusal::RateLimited { .. } => 1,
            Refusal::Busy { .. } => 2,
            Refusal::TableFull => 3,
        }
    }
}

/// An admitted connection's claim on its address: give it back with
/// [`PeerTable::release`] when the socket is dropped. 16 bytes with an alignment of 1,
/// so it packs into a connection's slab entry without padding. Neither `Clone` nor
/// `Copy`: a slot can be released only once.
#[must_use = "an admitted connection must release its slot when it closes"]
#[derive(Debug, PartialEq, Eq)]
pub struct PeerSlot([u8; 16]);

impl PeerSlot {
    /// The slot as bytes, for a hand-over to the next process.
    pub fn to_bytes(&self) -> [u8; 16] {
        self.0
    }

    pub fn from_bytes(b: [u8; 16]) -> PeerSlot {
        PeerSlot(b)
    }

    pub fn key(&self) -> AddrKey {
        AddrKey(u128::from_ne_bytes(self.0))
    }
}

/// What `INFO` shows of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerStats {
    /// Addresses in the table now.
    pub tracked_addresses: usize,
    /// Bytes the table's shards have allocated.
    pub table_bytes: usize,
    /// Refusals since start, by kind, in the order of `Refusal::ALL`.
    pub refused: [u64; 4],
}

/// One tracked address (32 bytes, asserted in a test).
struct Entry {
    key: AddrKey,
    /// Its bucket is full again at this time, in units of 1/`rate_per_ip` ms.
    full_at: u64,
    /// Its admitted connections not yet released.
    conns: u32,
}

/// A rate as a bucket clock: R tokens/s with a burst of R.
#[derive(Debug, Clone, Copy)]
struct Rate {
    per_sec: u64,
}

impl Rate {
    fn new(per_sec: u32) -> Option<Rate> {
        (per_sec > 0).then(|| Rate {
            per_sec: u64::from(per_sec.min(MAX_RATE)),
        })
    }

    fn clock(self, now_ms: u64) -> u64 {
        now_ms.saturating_mul(self.per_sec)
    }

    /// The bucket's new `full_at` after taking a token, or the whole seconds until
    /// one is there. A bucket holds one second's worth of units, `1000 × R`.
    fn take(self, full_at: u64, now_ms: u64) -> Result<u64, u32> {
        let now = self.clock(now_ms);
        let after = full_at.max(now).saturating_add(TOKEN);
        let window = self.per_sec * 1000;
        let excess = (after - now).saturating_sub(window);
        if excess == 0 {
            return Ok(after);
        }
        Err(u32::try_from(excess.div_ceil(window)).unwrap_or(u32::MAX))
    }

    fn is_full(self, full_at: u64, now_ms: u64) -> bool {
        full_at <= self.clock(now_ms)
    }
}

/// One independently locked part of the table, on its own cache line.
#[repr(align(64))]
#[derive(Default)]
struct Shard(Mutex<HashTable<Entry>>);

impl Shard {
    /// Critical sections never panic halfway through an update, so a table whose
    /// lock was poisoned (by a panic elsewhere in the holding thread) is still whole.
    fn lock(&self) -> MutexGuard<'_, HashTable<Entry>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Connection counts and handshake buckets per address, shared by every reactor.
pub struct PeerTable {
    max_conns_per_ip: u32,
    rate_per_ip: Option<Rate>,
    max_rate: Option<Rate>,
    max_entries: usize,
    /// True if any per-address limit is set; otherwise nothing is tracked.
    tracks: bool,
    hasher: RandomState,
    shards: Box<[Shard]>,
    /// The global bucket's `full_at` (units of 1/`max_rate` ms).
    global_full_at: AtomicU64,
    /// Entries in all shards; reserved before an insert so the bound is exact.
    tracked: AtomicUsize,
    /// Sum of the shards' allocations.
    bytes: AtomicUsize,
    /// The shard the next `sweep` visits.
    sweep_next: AtomicUsize,
    refused: [AtomicU64; 4],
}

impl PeerTable {
    /// A table with every limit off: tracks nothing, costs nothing.
    pub fn unlimited() -> PeerTable {
        PeerTable::new(Limits {
            max_conns_per_ip: 0,
            rate_per_ip: 0,
            max_rate: 0,
            max_entries: 0,
        })
    }

    pub fn new(limits: Limits) -> PeerTable {
        let rate_per_ip = Rate::new(limits.rate_per_ip);
        let tracks = limits.max_conns_per_ip > 0 || rate_per_ip.is_some();
        PeerTable {
            max_conns_per_ip: limits.max_conns_per_ip,
            rate_per_ip,
            max_rate: Rate::new(limits.max_rate),
            max_entries: limits.max_entries,
            tracks,
            hasher: RandomState::new(),
            // Only an unlimited table goes without shards, so it costs no memory.
            shards: (0..if tracks { SHARDS } else { 0 })
                .map(|_| Shard::default())
                .collect(),
            global_full_at: AtomicU64::new(0),
            tracked: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            sweep_next: AtomicUsize::new(0),
            refused: Default::default(),
        }
    }

    /// Admits a handshake from `key` at `now_ms` (any clock in ms, shared by the
    /// callers): takes one connection count and one token from the address's bucket
    /// and from the process's. A refusal takes nothing. With every limit 0 this takes
    /// no lock and tracks nothing.
    pub fn admit(&self, key: AddrKey, now_ms: u64) -> Result<PeerSlot, Refusal> {
        let admitted = if self.tracks {
            self.admit_tracked(key, now_ms)
        } else {
            self.take_global(now_ms)
        };
        match admitted {
            Ok(()) => Ok(PeerSlot(key.0.to_ne_bytes())),
            Err(refusal) => {
                self.refused[refusal.index()].fetch_add(1, Relaxed);
                Err(refusal)
            }
        }
    }

    fn admit_tracked(&self, key: AddrKey, now_ms: u64) -> Result<(), Refusal> {
        let hash = self.hasher.hash_one(key);
        let mut table = self.shard(hash).lock();
        let known = table.find_mut(hash, |e| e.key == key);
        let (conns, full_at) = known.as_ref().map_or((0, 0), |e| (e.conns, e.full_at));
        if self.max_conns_per_ip > 0 && conns >= self.max_conns_per_ip {
            return Err(Refusal::TooManyConnections);
        }
        let full_at = match self.rate_per_ip {
            Some(rate) => rate
                .take(full_at, now_ms)
                .map_err(|retry_after_secs| Refusal::RateLimited { retry_after_secs })?,
            None => full_at,
        };
        // The process's token is taken last, when nothing else can refuse, so it
        // never needs giving back; the table's reservation does.
        if let Some(entry) = known {
            self.take_global(now_ms)?;
            entry.conns += 1;
            entry.full_at = full_at;
            return Ok(());
        }
        if self.tracked.fetch_add(1, Relaxed) >= self.max_entries {
            self.tracked.fetch_sub(1, Relaxed);
            return Err(Refusal::TableFull);
        }
        if let Err(refusal) = self.take_global(now_ms) {
            self.tracked.fetch_sub(1, Relaxed);
            return Err(refusal);
        }
        let before = table.allocation_size();
        let entry = Entry {
            key,
            full_at,
            conns: 1,
        };
        table.insert_unique(hash, entry, |e| self.hasher.hash_one(e.key));
        self.account(before, table.allocation_size());
        Ok(())
    }

    fn take_global(&self, now_ms: u64) -> Result<(), Refusal> {
        let Some(rate) = self.max_rate else {
            return Ok(());
        };
        let mut current = self.global_full_at.load(Relaxed);
        loop {
            let next = rate
                .take(current, now_ms)
                .map_err(|retry_after_secs| Refusal::Busy { retry_after_secs })?;
            match self
                .global_full_at
                .compare_exchange_weak(current, next, Relaxed, Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(seen) => current = seen,
            }
        }
    }

    /// Counts a connection taken over from the previous process (an upgrade): it is
    /// open already, so no limit or rate refuses it; its slot is released as usual.
    pub fn adopt(&self, slot: &PeerSlot) {
        if !self.tracks {
            return;
        }
        let key = slot.key();
        let hash = self.hasher.hash_one(key);
        let mut table = self.shard(hash).lock();
        if let Some(e) = table.find_mut(hash, |e| e.key == key) {
            e.conns += 1;
            return;
        }
        self.tracked.fetch_add(1, Relaxed);
        let before = table.allocation_size();
        let entry = Entry {
            key,
            full_at: 0,
            conns: 1,
        };
        table.insert_unique(hash, entry, |e| self.hasher.hash_one(e.key));
        self.account(before, table.allocation_size());
    }

    /// Gives back the connection count of a closed connection. Without a per-address
    /// rate the entry has nothing left to remember once its count is 0, so it goes now;
    /// with one it waits for its bucket to refill and the sweep.
    pub fn release(&self, slot: PeerSlot) {
        if !self.tracks {
            return;
        }
        let key = slot.key();
        let hash = self.hasher.hash_one(key);
        let mut table = self.shard(hash).lock();
        match table.find_entry(hash, |e| e.key == key) {
            Ok(mut found) => {
                let entry = found.get_mut();
                debug_assert!(entry.conns > 0, "released more slots than admitted");
                entry.conns = entry.conns.saturating_sub(1);
                if entry.conns == 0 && self.rate_per_ip.is_none() {
                    found.remove();
                    self.tracked.fetch_sub(1, Relaxed);
                }
            }
            // Entries holding connections are never dropped, so a slot always has one.
            Err(_) => debug_assert!(false, "released a slot with no entry"),
        }
    }

    /// Drops, in the next of the 64 shards, the entries with no connection and a full
    /// bucket, and shrinks that shard if it is under a quarter full. Meant for every
    /// tick of each reactor's timer scan: it costs one shard (1/64 of the table) and
    /// a full pass takes 64 calls.
    pub fn sweep(&self, now_ms: u64) {
        if !self.tracks {
            return;
        }
        let index = self.sweep_next.fetch_add(1, Relaxed) % SHARDS;
        let mut table = self.shards[index].lock();
        let before = (table.len(), table.allocation_size());
        let rate = self.rate_per_ip;
        table.retain(|e| e.conns > 0 || rate.is_some_and(|r| !r.is_full(e.full_at, now_ms)));
        let len = table.len();
        if table.capacity() > 64 && len * 4 < table.capacity() {
            table.shrink_to(len * 2, |e| self.hasher.hash_one(e.key));
        }
        self.tracked.fetch_sub(before.0 - len, Relaxed);
        self.account(before.1, table.allocation_size());
    }

    /// Connections `key` holds now (0 if untracked).
    pub fn connections(&self, key: AddrKey) -> u32 {
        if !self.tracks {
            return 0;
        }
        let hash = self.hasher.hash_one(key);
        let table = self.shard(hash).lock();
        table.find(hash, |e| e.key == key).map_or(0, |e| e.conns)
    }

    pub fn stats(&self) -> PeerStats {
        PeerStats {
            tracked_addresses: self.tracked.load(Relaxed),
            table_bytes: self.bytes.load(Relaxed),
            refused: std::array::from_fn(|i| self.refused[i].load(Relaxed)),
        }
    }

    /// The shard of a hash, from bits 32..38: hashbrown takes a bucket from the low
    /// bits and a control tag from the top 7, and both must still vary within a shard.
    fn shard(&self, hash: u64) -> &Shard {
        &self.shards[(hash >> 32) as usize % SHARDS]
    }

    fn account(&self, before: usize, after: usize) {
        if after > before {
            self.bytes.fetch_add(after - before, Relaxed);
        } else {
            self.bytes.fetch_sub(before - after, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;
    use std::sync::Arc;

    use proptest::prelude::*;

    fn limits(max_conns_per_ip: u32, rate_per_ip: u32, max_rate: u32) -> Limits {
        Limits {
            max_conns_per_ip,
            rate_per_ip,
            max_rate,
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }

    fn v4(last: u8) -> AddrKey {
        AddrKey::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, last)), 64)
    }

    fn v6(text: &str) -> AddrKey {
        let ip: Ipv6Addr = text.parse().expect("test address");
        AddrKey::new(IpAddr::V6(ip), 64)
    }

    #[test]
    fn refuses_the_connection_past_max_conns_per_ip_with_429() {
        let t = PeerTable::new(limits(2, 0, 0));
        let _a = t.admit(v4(1), 0).expect("first");
        let _b = t.admit(v4(1), 0).expect("second");
        let refusal = t.admit(v4(1), 0).expect_err("third over the limit of 2");
        assert_eq!(refusal, Refusal::TooManyConnections);
        assert_eq!((refusal.status(), refusal.retry_after_secs()), (429, None));
        assert!(
            t.admit(v4(2), 0).is_ok(),
            "another address has its own count"
        );
        assert_eq!(t.stats().refused, [1, 0, 0, 0]);
    }

    #[test]
    fn release_frees_a_connection_and_the_last_drops_the_entry() {
        let t = PeerTable::new(limits(1, 0, 0));
        let slot = t.admit(v4(1), 0).expect("first");
        assert!(t.admit(v4(1), 0).is_err());
        assert_eq!(t.connections(v4(1)), 1);
        t.release(slot);
        assert_eq!(t.connections(v4(1)), 0);
        assert_eq!(t.stats().tracked_addresses, 0);
        let slot = t.admit(v4(1), 0).expect("admitted again after the release");
        assert_eq!(slot.key(), v4(1));
    }

    #[test]
    fn bucket_allows_a_burst_of_r_then_refills_at_r_per_second() {
        let t = PeerTable::new(limits(0, 4, 0));
        let mut slots = Vec::new();
        for _ in 0..4 {
            slots.push(t.admit(v4(1), 1_000).expect("within the burst of 4"));
        }
        let refusal = t.admit(v4(1), 1_000).expect_err("burst used up");
        assert_eq!(
            refusal,
            Refusal::RateLimited {
                retry_after_secs: 1
            }
        );
        assert_eq!(refusal.status(), 429);
        // One token every 250 ms.
        assert!(t.admit(v4(1), 1_249).is_err());
        slots.push(t.admit(v4(1), 1_250).expect("one token after 1/R s"));
        assert!(t.admit(v4(1), 1_499).is_err());
        slots.push(t.admit(v4(1), 1_500).expect("the next after another 1/R s"));
        // Releasing connections gives no tokens back.
        for slot in slots {
            t.release(slot);
        }
        assert!(t.admit(v4(1), 1_500).is_err());
        // After a whole second the bucket is full again, but holds no more than R.
        for _ in 0..4 {
            let _ = t.admit(v4(1), 10_000).expect("a full bucket of 4");
        }
        assert!(t.admit(v4(1), 10_000).is_err());
    }

    #[test]
    fn retry_after_is_the_wait_for_one_token_in_whole_seconds() {
        // At R = 1 a token takes a second; exactly then the handshake is admitted.
        let t = PeerTable::new(limits(0, 1, 0));
        let _ = t.admit(v4(1), 5_000).expect("burst of 1");
        let refusal = t.admit(v4(1), 5_001).expect_err("empty");
        assert_eq!(refusal.retry_after_secs(), Some(1));
        assert!(t.admit(v4(1), 5_999).is_err());
        assert!(t.admit(v4(1), 6_000).is_ok());
        // A bucket emptied by a reactor whose clock runs 1.5 s ahead: 1.5 s until it
        // is merely empty here, 0.5 s more for a token at R = 2, rounded up to 2 s.
        let rate = Rate::new(2).expect("rate");
        assert_eq!(rate.take(rate.clock(2_500) + 2_000, 1_000), Err(2));
    }

    #[test]
    fn global_rate_caps_the_process_with_503() {
        let t = PeerTable::new(limits(0, 0, 3));
        for last in 0..3 {
            let _ = t.admit(v4(last), 0).expect("within the process's burst");
        }
        let refusal = t.admit(v4(9), 0).expect_err("process rate used up");
        assert_eq!(
            refusal,
            Refusal::Busy {
                retry_after_secs: 1
            }
        );
        assert_eq!(refusal.status(), 503);
        assert!(t.admit(v4(9), 334).is_ok(), "one token per 1/3 s");
        assert_eq!(t.stats().refused, [0, 0, 1, 0]);
        assert_eq!(
            t.stats().tracked_addresses,
            0,
            "no per-address limit: untracked"
        );
    }

    #[test]
    fn refusal_by_one_limit_takes_no_token_from_another() {
        let t = PeerTable::new(limits(1, 10, 2));
        let held = t.admit(v4(1), 0).expect("first");
        assert_eq!(t.admit(v4(1), 0), Err(Refusal::TooManyConnections));
        assert_eq!(t.admit(v4(1), 0), Err(Refusal::TooManyConnections));
        // The refused ones took no process token: a second address still gets in.
        let other = t.admit(v4(2), 0).expect("process bucket still has a token");
        assert!(matches!(t.admit(v4(3), 0), Err(Refusal::Busy { .. })));
        // Nor did the process's refusal take address 3's token or entry.
        assert_eq!(t.stats().tracked_addresses, 2);
        t.release(held);
        t.release(other);
        assert!(t.admit(v4(3), 500).is_ok());
    }

    #[test]
    fn ipv6_addresses_in_one_prefix_share_a_count() {
        let t = PeerTable::new(limits(1, 0, 0));
        let _a = t.admit(v6("2001:db8:1:2::1"), 0).expect("first in the /64");
        assert_eq!(
            t.admit(v6("2001:db8:1:2:ffff:ffff:ffff:ffff"), 0),
            Err(Refusal::TooManyConnections),
            "same /64"
        );
        assert!(t.admit(v6("2001:db8:1:3::1"), 0).is_ok(), "next /64");
        let ip = |s: &str| IpAddr::V6(s.parse().expect("test address"));
        assert_eq!(
            AddrKey::new(ip("2001:db8::1"), 48),
            AddrKey::new(ip("2001:db8:0:ffff::1"), 48)
        );
        assert_ne!(
            AddrKey::new(ip("2001:db8::1"), 128),
            AddrKey::new(ip("2001:db8::2"), 128)
        );
        assert_eq!(
            AddrKey::new(ip("2001:db8::1"), 0),
            AddrKey::new(ip("fe80::1"), 0),
            "0 groups every IPv6 address"
        );
        assert_eq!(
            AddrKey::new(ip("fe80::1"), 200),
            AddrKey::new(ip("fe80::1"), 128),
            "more than 128 means 128"
        );
    }

    #[test]
    fn ipv4_mapped_ipv6_is_its_ipv4_address_and_never_an_ipv6_group() {
        let mapped = IpAddr::V6("::ffff:192.0.2.7".parse().expect("test address"));
        assert_eq!(AddrKey::new(mapped, 64), v4(7));
        assert_eq!(
            AddrKey::new(mapped, 0),
            v4(7),
            "not grouped by the IPv6 prefix"
        );
        let t = PeerTable::new(limits(1, 0, 0));
        let _held = t.admit(v4(7), 0).expect("IPv4");
        assert_eq!(
            t.admit(AddrKey::new(mapped, 64), 0),
            Err(Refusal::TooManyConnections)
        );
        // The all-zero /64 (where the mapped range lives) is a group of its own.
        assert!(t.admit(v6("::1"), 0).is_ok());
        for prefix in [0, 64, 80, 95, 96, 127, 128] {
            let compatible = IpAddr::V6("::192.0.2.7".parse().expect("test address"));
            assert_ne!(AddrKey::new(compatible, prefix), v4(7), "prefix {prefix}");
        }
    }

    #[test]
    fn sweep_drops_idle_entries_once_their_bucket_is_full() {
        let t = PeerTable::new(limits(0, 2, 0));
        let held = t.admit(v4(1), 0).expect("held");
        let idle = t.admit(v4(2), 0).expect("closed at once");
        t.release(idle);
        let sweep_all = |now_ms| (0..SHARDS).for_each(|_| t.sweep(now_ms));
        sweep_all(499);
        assert_eq!(
            t.stats().tracked_addresses,
            2,
            "address 2 still owes a token"
        );
        sweep_all(500);
        assert_eq!(t.stats().tracked_addresses, 1, "idle and full: forgotten");
        assert_eq!(t.connections(v4(1)), 1);
        sweep_all(1_000_000);
        assert_eq!(
            t.stats().tracked_addresses,
            1,
            "a held connection keeps its entry"
        );
        t.release(held);
        sweep_all(1_000_000);
        assert_eq!(t.stats().tracked_addresses, 0);
    }

    #[test]
    fn a_full_table_refuses_new_addresses_with_503_but_serves_known_ones() {
        let t = PeerTable::new(Limits {
            max_entries: 10,
            ..limits(5, 0, 0)
        });
        let slots: Vec<_> = (0..10)
            .map(|i| t.admit(v4(i), 0).expect("within the bound"))
            .collect();
        let refusal = t.admit(v4(10), 0).expect_err("11th address");
        assert_eq!((refusal, refusal.status()), (Refusal::TableFull, 503));
        assert!(t.admit(v4(3), 0).is_ok(), "a known address is not new");
        assert_eq!(t.stats().tracked_addresses, 10);
        let mut slots = slots.into_iter();
        t.release(slots.next().expect("slot of address 0"));
        assert!(t.admit(v4(10), 0).is_ok(), "a freed entry makes room");
    }

    #[test]
    fn a_flood_of_addresses_is_bounded_and_its_memory_comes_back() {
        let t = PeerTable::new(Limits {
            max_entries: 20_000,
            ..limits(0, 1, 0)
        });
        for i in 0..30_000u32 {
            let key = AddrKey::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), 64);
            if let Ok(slot) = t.admit(key, 0) {
                t.release(slot);
            }
        }
        let stats = t.stats();
        assert_eq!(stats.tracked_addresses, 20_000);
        assert_eq!(stats.refused, [0, 0, 0, 10_000]);
        // 20,000 over 64 shards stay under 448 (512 buckets × 7/8) each.
        let per_shard = stats.table_bytes / SHARDS;
        assert!(
            (512 * 33..=512 * 33 + 64).contains(&per_shard),
            "{per_shard}"
        );
        (0..SHARDS).for_each(|_| t.sweep(1_000));
        let stats = t.stats();
        assert_eq!(stats.tracked_addresses, 0);
        assert!(
            stats.table_bytes <= SHARDS * 64 * 33,
            "{}",
            stats.table_bytes
        );
    }

    #[test]
    fn sizes_behind_the_documented_memory() {
        assert_eq!(std::mem::size_of::<Entry>(), 32);
        assert_eq!(std::mem::size_of::<PeerSlot>(), 16);
        assert_eq!(std::mem::align_of::<PeerSlot>(), 1);
        assert_eq!(std::mem::size_of::<Shard>(), 64);
        // The default bound: 12,500 per shard on average, far under the 14,336 that
        // 16,384 buckets hold.
        let hasher = RandomState::new();
        let mut table = HashTable::new();
        for i in 0..DEFAULT_MAX_ENTRIES / SHARDS {
            let key = AddrKey(i as u128);
            let entry = Entry {
                key,
                full_at: 0,
                conns: 1,
            };
            table.insert_unique(hasher.hash_one(key), entry, |e: &Entry| {
                hasher.hash_one(e.key)
            });
        }
        // Buckets and their control bytes, plus one SIMD group of control bytes.
        let bytes = table.allocation_size();
        assert!((16_384 * 33..=16_384 * 33 + 64).contains(&bytes), "{bytes}");
    }

    #[test]
    fn unlimited_takes_no_lock_and_tracks_nothing() {
        let t = PeerTable::new(limits(0, 0, 0));
        assert!(t.shards.is_empty(), "no shard allocated");
        for _ in 0..1000 {
            let slot = t.admit(v4(1), 0).expect("unlimited");
            t.release(slot);
        }
        let _held = t.admit(v4(1), 0).expect("unlimited");
        t.sweep(0);
        assert_eq!(t.connections(v4(1)), 0);
        assert_eq!(
            t.stats(),
            PeerStats {
                tracked_addresses: 0,
                table_bytes: 0,
                refused: [0; 4]
            }
        );
    }

    #[test]
    fn counts_return_to_zero_after_a_million_concurrent_admits_and_releases() {
        const THREADS: u32 = 4;
        let t = Arc::new(PeerTable::new(limits(THREADS, 0, 0)));
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                let t = Arc::clone(&t);
                std::thread::spawn(move || {
                    for _ in 0..1_000_000 / THREADS {
                        let slot = t.admit(v4(1), 0).expect("one slot per thread");
                        assert!(t.connections(v4(1)) <= THREADS);
                        t.release(slot);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("worker");
        }
        assert_eq!(t.connections(v4(1)), 0);
        assert_eq!(t.stats().tracked_addresses, 0);
        assert_eq!(t.stats().refused, [0; 4]);
    }

    #[test]
    fn concurrent_admits_never_exceed_the_per_address_limit() {
        let t = Arc::new(PeerTable::new(limits(3, 0, 0)));
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let t = Arc::clone(&t);
                std::thread::spawn(move || {
                    let mut admitted = 0u32;
                    for _ in 0..50_000 {
                        if let Ok(slot) = t.admit(v4(1), 0) {
                            admitted += 1;
                            assert!(t.connections(v4(1)) <= 3);
                            t.release(slot);
                        }
                    }
                    admitted
                })
            })
            .collect();
        let admitted: u32 = workers.into_iter().map(|w| w.join().expect("worker")).sum();
        let refused = t.stats().refused[0];
        assert_eq!(u64::from(admitted) + refused, 200_000);
        assert_eq!(t.connections(v4(1)), 0);
    }

    #[test]
    fn concurrent_admits_take_exactly_the_process_burst() {
        let t = Arc::new(PeerTable::new(limits(0, 0, 200_000)));
        let start = Arc::new(std::sync::Barrier::new(4));
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let (t, start) = (Arc::clone(&t), Arc::clone(&start));
                std::thread::spawn(move || {
                    start.wait();
                    (0..100_000).filter(|_| t.admit(v4(1), 7).is_ok()).count()
                })
            })
            .collect();
        let admitted: usize = workers.into_iter().map(|w| w.join().expect("worker")).sum();
        assert_eq!(admitted, 200_000, "one burst of R, no token taken twice");
        assert_eq!(t.stats().refused[2], 200_000);
    }

    /// A token bucket written the obvious way (milli-tokens and a refill time), to
    /// check the GCRA clock against.
    #[derive(Clone, Copy)]
    struct ModelBucket {
        rate: u64,
        millitokens: u64,
        refilled_ms: u64,
    }

    impl ModelBucket {
        fn new(rate: u32) -> ModelBucket {
            ModelBucket {
                rate: u64::from(rate),
                millitokens: u64::from(rate) * 1000,
                refilled_ms: 0,
            }
        }

        fn has_token(&mut self, now_ms: u64) -> bool {
            let elapsed = now_ms - self.refilled_ms;
            self.millitokens = (self.millitokens + elapsed * self.rate).min(self.rate * 1000);
            self.refilled_ms = now_ms;
            self.rate == 0 || self.millitokens >= 1000
        }

        fn take(&mut self) {
            if self.rate > 0 {
                self.millitokens -= 1000;
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Admit { addr: u8, after_ms: u64 },
        Release { nth: usize },
        Sweep,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u8..4, 0u64..400).prop_map(|(addr, after_ms)| Op::Admit { addr, after_ms }),
            2 => any::<usize>().prop_map(|nth| Op::Release { nth }),
            1 => Just(Op::Sweep),
        ]
    }

    proptest! {
        #[test]
        fn counts_and_buckets_match_a_model(
            max_conns in 0u32..4,
            rate in 0u32..6,
            max_rate in 0u32..8,
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let t = PeerTable::new(limits(max_conns, rate, max_rate));
            let mut held: Vec<PeerSlot> = Vec::new();
            let mut conns = [0u32; 4];
            let mut buckets = [ModelBucket::new(rate); 4];
            let mut global = ModelBucket::new(max_rate);
            let mut now = 0;
            for op in ops {
                match op {
                    Op::Admit { addr, after_ms } => {
                        now += after_ms;
                        let a = usize::from(addr);
                        let expected = if max_conns > 0 && conns[a] >= max_conns {
                            Err(Refusal::TooManyConnections)
                        } else if !buckets[a].has_token(now) {
                            Err(Refusal::RateLimited { retry_after_secs: 1 })
                        } else if !global.has_token(now) {
                            Err(Refusal::Busy { retry_after_secs: 1 })
                        } else {
                            buckets[a].take();
                            global.take();
                            conns[a] += 1;
                            Ok(())
                        };
                        let got = t.admit(v4(addr), now);
                        prop_assert_eq!(got.as_ref().map(|_| ()), expected.as_ref().map(|_| ()));
                        if let Ok(slot) = got {
                            held.push(slot);
                        }
                    }
                    Op::Release { nth } => {
                        if !held.is_empty() {
                            let slot = held.swap_remove(nth % held.len());
                            let a = (slot.key().0 & 0xff) as usize;
                            conns[a] -= 1;
                            t.release(slot);
                        }
                    }
                    Op::Sweep => t.sweep(now),
                }
                if max_conns > 0 || rate > 0 {
                    for (a, &n) in conns.iter().enumerate() {
                        prop_assert_eq!(t.connections(v4(a as u8)), n);
                        prop_assert!(max_conns == 0 || n <= max_conns);
                    }
                }
            }
        }
    }
}
