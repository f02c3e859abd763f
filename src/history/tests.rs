//! Unit tests of the history store, one rule each, and a model-based proptest over
//! arbitrary sequences of operations.

use super::*;
use proptest::prelude::*;
use std::collections::{HashMap as StdMap, HashSet};

const LOTS: usize = 1 << 30;

fn limits(size: usize, ttl_secs: u64, memory: usize) -> Limits {
    Limits {
        size,
        ttl: Duration::from_secs(ttl_secs),
        memory,
    }
}

fn payload(s: &str) -> Arc<[u8]> {
    Arc::from(s.as_bytes())
}

fn offsets(entries: &[(u64, Arc<[u8]>)]) -> Vec<u64> {
    entries.iter().map(|e| e.0).collect()
}

fn secs(t0: Instant, s: u64) -> Instant {
    t0 + Duration::from_secs(s)
}

#[test]
fn offsets_start_at_one_and_grow_by_one_per_room() {
    let t0 = Instant::now();
    let mut h = History::new(limits(10, 60, LOTS), 1);
    let a1 = h.append("a", payload("x"), t0);
    let b1 = h.append("b", payload("x"), t0);
    let a2 = h.append("a", payload("y"), t0);
    assert_eq!((a1.offset, b1.offset, a2.offset), (1, 1, 2));
    assert_eq!(a1.epoch, a2.epoch);
    assert_ne!(a1.epoch, b1.epoch);
}

#[test]
fn position_creates_state_at_offset_zero_and_keeps_it() {
    let t0 = Instant::now();
    let mut h = History::new(limits(10, 60, LOTS), 1);
    let p = h.position("a", t0);
    assert_eq!(p.offset, 0);
    assert_eq!(h.rooms(), 1);
    assert_eq!(h.position("a", t0), p);
    let next = h.append("a", payload("x"), t0);
    assert_eq!((next.epoch.clone(), next.offset), (p.epoch, 1));
}

#[test]
fn epochs_are_16_lowercase_hex_and_never_repeat() {
    let t0 = Instant::now();
    let mut h = History::new(limits(1, 0, LOTS), 7);
    let mut seen = HashSet::new();
    for round in 0..50 {
        for room in ["a", "b", "c"] {
            let p = h.position(room, secs(t0, round));
            assert_eq!(p.epoch.len(), 16);
            assert!(p
                .epoch
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            assert!(seen.insert(p.epoch.to_string()), "epoch repeated");
        }
        // ttl 0: every unheld room is dropped, so the next round creates new states.
        h.expire(secs(t0, round), |_| false);
        assert_eq!(h.rooms(), 0);
    }
}

#[test]
fn different_seeds_give_different_epochs() {
    let t0 = Instant::now();
    let a = History::new(limits(1, 60, LOTS), 1).position("r", t0);
    let b = History::new(limits(1, 60, LOTS), 2).position("r", t0);
    assert_ne!(a.epoch, b.epoch);
}

#[test]
fn size_bound_keeps_the_newest_messages_of_each_room() {
    let t0 = Instant::now();
    let mut h = History::new(limits(3, 60, LOTS), 1);
    for i in 0..10 {
        h.append("a", payload(&i.to_string()), t0);
    }
    let (pos, entries) = h.range("a", None).expect("room exists");
    assert_eq!(pos.offset, 10);
    assert_eq!(offsets(&entries), [8, 9, 10]);
    assert_eq!(&*entries[0].1, b"7");
    assert_eq!(h.messages(), 3);
    assert_eq!(h.evicted(), 0, "the size bound is not the memory bound");
}

#[test]
fn size_zero_keeps_no_messages_but_still_assigns_positions() {
    let t0 = Instant::now();
    let mut h = History::new(limits(0, 60, LOTS), 1);
    let p1 = h.append("a", payload("x"), t0);
    let p2 = h.append("a", payload("y"), t0);
    assert_eq!((p1.offset, p2.offset), (1, 2));
    assert_eq!(h.messages(), 0);
    assert_eq!(h.range("a", None).map(|r| r.1.len()), Some(0));
    assert_eq!(h.bytes(), ROOM_OVERHEAD + 1);
    match h.recover("a", &p1.epoch, 1, 10, t0) {
        Recovery::NotRecovered { position } => assert_eq!(position, p2),
        other => panic!("recovered without history: {other:?}"),
    }
}

#[test]
fn range_returns_the_newest_count_oldest_first() {
    let t0 = Instant::now();
    let mut h = History::new(limits(10, 60, LOTS), 1);
    for i in 0..5 {
        h.append("a", payload(&i.to_string()), t0);
    }
    assert_eq!(offsets(&h.range("a", Some(2)).expect("room").1), [4, 5]);
    assert_eq!(offsets(&h.range("a", Some(0)).expect("room").1), [0u64; 0]);
    assert_eq!(
        offsets(&h.range("a", Some(99)).expect("room").1),
        [1, 2, 3, 4, 5]
    );
    assert!(h.range("nope", None).is_none());
}

#[test]
fn range_before_pages_back_from_an_offset() {
    let t0 = Instant::now();
    let mut h = History::new(limits(10, 60, LOTS), 1);
    for i in 0..5 {
        h.append("a", payload(&i.to_string()), t0);
    }
    let page = |count, before| {
        offsets(
            &h.range_before("a", count, before, usize::MAX)
                .expect("room")
                .1,
        )
    };
    assert_eq!(page(Some(2), Some(4)), [2, 3]);
    assert_eq!(page(Some(2), Some(2)), [1]);
    assert_eq!(page(None, Some(3)), [1, 2]);
    assert_eq!(page(Some(9), Some(99)), [1, 2, 3, 4, 5]);
    assert_eq!(page(Some(9), Some(1)), [0u64; 0]);
    assert_eq!(page(Some(9), Some(0)), [0u64; 0]);
    assert_eq!(page(Some(2), None), [4, 5]);
    // A byte budget keeps the newest that fit, and always the newest one.
    let fit =
        |count, before, max| offsets(&h.range_before("a", count, before, max).expect("room").1);
    let one = payload("0").len();
    assert_eq!(fit(None, None, 2 * one), [4, 5]);
    assert_eq!(fit(None, Some(4), 2 * one), [2, 3]);
    assert_eq!(fit(None, Some(4), 3 * one), [1, 2, 3]);
    assert_eq!(fit(Some(1), None, 9 * one), [5]);
    assert_eq!(fit(None, None, 0), [5]);
    assert_eq!(fit(None, Some(1), 0), [0u64; 0]);
}

#[test]
fn recover_returns_exactly_the_messages_after_offset() {
    let t0 = Instant::now();
    let mut h = History::new(limits(10, 60, LOTS), 1);
    let mut epoch = None;
    for i in 1..=5 {
        epoch = Some(h.append("a", payload(&format!("m{i}")), t0).epoch);
    }
    let epoch = epoch.expect("appended");
    match h.recover("a", &epoch, 2, 10, t0) {
        Recovery::Recovered { position, missed } => {
            assert_eq!(position.offset, 5);
            assert_eq!(offsets(&missed), [3, 4, 5]);
            assert_eq!(&*missed[0].1, b"m3");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn recover_at_the_current_offset_is_recovered_with_nothing_missed() {
    let t0 = Instant::now();
    let mut h = History::new(limits(0, 60, LOTS), 1);
    let p = h.append("a", payload("x"), t0);
    assert_eq!(
        h.recover("a", &p.epoch, 1, 0, t0),
        Recovery::Recovered {
            position: p,
            missed: Vec::new()
        }
    );
}

#[test]
fn recover_with_another_epoch_is_not_recovered() {
    let t0 = Instant::now();
    let mut h = History::new(limits(10, 60, LOTS), 1);
    let p = h.append("a", payload("x"), t0);
    assert_eq!(
        h.recover("a", "0123456789abcdef", 0, 10, t0),
        Recovery::NotRecovered { position: p }
    );
}

#[test]
fn recover_from_an_offset_ahead_of_the_room_is_not_recovered() {
    let t0 = Instant::now();
    let mut h = History::new(limits(10, 60, LOTS), 1);
    let p = h.append("a", payload("x"), t0);
    assert_eq!(
        h.recover("a", &p.epoch, 2, 10, t0),
        Recovery::NotRecovered { position: p }
    );
}

#[test]
fn recover_of_more_than_max_messages_is_not_recovered() {
    let t0 = Instant::now();
    let mut h = History::new(limits(10, 60, LOTS), 1);
    let mut p = h.position("a", t0);
    for _ in 0..4 {
        p = h.append("a", payload("x"), t0);
    }
    assert!(matches!(
        h.recover("a", &p.epoch, 0, 3, t0),
        Recovery::NotRecovered { .. }
    ));
    assert!(matches!(
        h.recover("a", &p.epoch, 0, 4, t0),
        Recovery::Recovered { ref missed, .. } if missed.len() == 4
    ));
}

#[test]
fn recover_past_a_message_no_longer_retained_is_not_recovered() {
    let t0 = Instant::now();
    let mut h = History::new(limits(2, 60, LOTS), 1);
    let mut p = h.position("a", t0);
    for _ in 0..4 {
        p = h.append("a", payload("x"), t0);
    }
    // Offsets 3 and 4 are kept; a client at 1 missed 2, which is gone.
    assert!(matches!(
        h.recover("a", &p.epoch, 1, 10, t0),
        Recovery::NotRecovered { .. }
    ));
    assert!(matches!(
        h.recover("a", &p.epoch, 2, 10, t0),
        Recovery::Recovered { ref missed, .. } if offsets(missed) == [3, 4]
    ));
}

#[test]
fn recover_of_an_unknown_room_creates_its_state_and_is_not_recovered() {
    let t0 = Instant::now();
    let mut h = History::new(limits(10, 60, LOTS), 1);
    match h.recover("a", "0123456789abcdef", 0, 10, t0) {
        Recovery::NotRecovered { position } => {
            assert_eq!(position.offset, 0);
            assert_eq!(h.position("a", t0), position);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn memory_bound_evicts_the_globally_oldest_messages_first() {
    let t0 = Instant::now();
    let room = room_cost("a") + room_cost("b");
    let entry = entry_cost(b"0123456789");
    // Room for both rooms and three messages.
    let mut h = History::new(limits(100, 60, room + 3 * entry), 1);
    let ten = payload("0123456789");
    h.append("a", ten.clone(), t0); // a1
    h.append("b", ten.clone(), t0); // b1
    h.append("a", ten.clone(), t0); // a2
    assert_eq!((h.messages(), h.evicted()), (3, 0));
    h.append("b", ten.clone(), t0); // b2 evicts a1
    assert_eq!(offsets(&h.range("a", None).expect("a").1), [2]);
    h.append("b", ten.clone(), t0); // b3 evicts b1
    assert_eq!(offsets(&h.range("b", None).expect("b").1), [2, 3]);
    assert_eq!(h.evicted(), 2);
    assert_eq!(h.bytes(), room + 3 * entry);
}

#[test]
fn evicting_messages_keeps_epoch_and_offset() {
    let t0 = Instant::now();
    let mut h = History::new(limits(100, 60, room_cost("a") + entry_cost(b"x")), 1);
    let p1 = h.append("a", payload("x"), t0);
    let p2 = h.append("a", payload("x"), t0);
    assert_eq!(h.evicted(), 1);
    assert_eq!((p2.epoch.clone(), p2.offset), (p1.epoch.clone(), 2));
    assert!(matches!(
        h.recover("a", &p1.epoch, 0, 10, t0),
        Recovery::NotRecovered { .. }
    ));
    assert!(matches!(
        h.recover("a", &p1.epoch, 1, 10, t0),
        Recovery::Recovered { ref missed, .. } if offsets(missed) == [2]
    ));
}

#[test]
fn a_payload_too_large_for_memory_is_not_kept_and_drops_the_rooms_older_messages() {
    let t0 = Instant::now();
    let memory = room_cost("a") + 2 * entry_cost(b"x");
    let mut h = History::new(limits(100, 60, memory), 1);
    h.append("a", payload("x"), t0);
    let big = vec![b'y'; memory];
    let p = h.append("a", big.into(), t0);
    assert_eq!(p.offset, 2);
    assert_eq!(h.messages(), 0);
    assert_eq!(h.evicted(), 2, "the old message and the one too large");
    assert!(h.bytes() <= memory);
    // Offset 2 is retained nowhere, so a client at 1 cannot recover.
    assert!(matches!(
        h.recover("a", &p.epoch, 1, 10, t0),
        Recovery::NotRecovered { .. }
    ));
    // Later messages are kept again.
    h.append("a", payload("z"), t0);
    assert_eq!(offsets(&h.range("a", None).expect("a").1), [3]);
}

#[test]
fn room_states_beyond_memory_are_dropped_least_recently_active_first() {
    let t0 = Instant::now();
    let mut h = History::new(limits(0, 60, 2 * room_cost("a")), 1);
    let a = h.position("a", t0);
    h.position("b", t0);
    h.append("a", payload("x"), secs(t0, 1)); // b is now the least recently active
    h.position("c", secs(t0, 2));
    assert_eq!(h.rooms(), 2);
    assert_eq!(h.evicted_rooms(), 1);
    assert!(h.range("b", None).is_none());
    assert_eq!(h.range("a", None).expect("a").0.epoch, a.epoch);
    let b = h.position("b", secs(t0, 3));
    assert_eq!(b.offset, 0);
    assert!(h.bytes() <= 2 * room_cost("a"));
}

#[test]
fn expire_drops_unheld_rooms_idle_for_ttl_and_gives_them_a_new_epoch() {
    let t0 = Instant::now();
    let mut h = History::new(limits(10, 60, LOTS), 1);
    let old = h.append("a", payload("x"), t0);
    h.expire(secs(t0, 59), |_| false);
    assert_eq!(h.rooms(), 1, "idle for less than ttl");
    h.expire(secs(t0, 60), |_| false);
    assert_eq!((h.rooms(), h.messages(), h.bytes()), (0, 0, 0));
    assert_eq!(h.evicted(), 0, "the TTL is not the memory bound");
    let new = h.append("a", payload("y"), secs(t0, 61));
    assert_eq!(new.offset, 1);
    assert_ne!(new.epoch, old.epoch);
}

#[test]
fn expire_counts_from_the_last_publish() {
    let t0 = Instant::now();
    let mut h = History::new(limits(10, 60, LOTS), 1);
    h.append("a", payload("x"), t0);
    h.append("a", payload("x"), secs(t0, 30));
    h.expire(secs(t0, 60), |_| false);
    assert_eq!(h.rooms(), 1);
    h.expire(secs(t0, 90), |_| false);
    assert_eq!(h.rooms(), 0);
}

#[test]
fn expire_keeps_held_rooms_and_drops_them_once_released() {
    let t0 = Instant::now();
    let mut h = History::new(limits(10, 60, LOTS), 1);
    let p = h.append("a", payload("x"), t0);
    h.append("b", payload("x"), t0);
    h.expire(secs(t0, 60), |room| room == "a");
    assert_eq!(h.rooms(), 1);
    assert_eq!(h.position("a", secs(t0, 60)), p);
    h.expire(secs(t0, 119), |_| false);
    assert_eq!(h.rooms(), 1, "held rooms are looked at again one ttl later");
    h.expire(secs(t0, 120), |_| false);
    assert_eq!(h.rooms(), 0);
}

#[test]
fn expire_with_zero_ttl_and_held_rooms_terminates() {
    let t0 = Instant::now();
    let mut h = History::new(limits(10, 0, LOTS), 1);
    for room in ["a", "b", "c"] {
        h.append(room, payload("x"), t0);
    }
    h.expire(t0, |_| true);
    assert_eq!(h.rooms(), 3);
    h.expire(t0, |room| room != "b");
    assert_eq!(h.rooms(), 2);
}

#[test]
fn queues_stay_within_twice_the_live_entries() {
    let t0 = Instant::now();
    let mut h = History::new(limits(1, 60, LOTS), 1);
    for i in 0..10_000u64 {
        h.append(&format!("r{}", i % 3), payload("x"), secs(t0, i / 100));
    }
    assert_eq!(h.messages(), 3);
    assert!(h.ledger.fifo.len() <= 2 * 3 + COMPACT_SLACK + 1);
    assert!(h.ledger.activity.len() <= 2 * 3 + COMPACT_SLACK + 1);
}

#[test]
fn compaction_keeps_every_retained_message_evictable() {
    let t0 = Instant::now();
    let one = room_cost("a") + room_cost("b") + 4 * entry_cost(b"x");
    let mut h = History::new(limits(2, 60, LOTS), 1);
    // Room "a" keeps its two newest while "b" churns stale slots into the FIFO.
    h.append("a", payload("x"), t0);
    h.append("a", payload("x"), t0);
    for _ in 0..100 {
        h.append("b", payload("x"), t0);
    }
    assert_eq!(h.bytes(), one);
    // Shrinking the bound must be able to evict a's messages, the oldest.
    h.limits.memory = one - 2 * entry_cost(b"x");
    h.append("b", payload("x"), t0);
    assert_eq!(h.range("a", None).map(|r| r.1.len()), Some(0));
    assert!(h.bytes() <= h.limits.memory);
}

#[test]
fn a_non_monotonic_clock_never_panics() {
    let t0 = Instant::now();
    let mut h = History::new(limits(10, 5, LOTS), 1);
    h.append("a", payload("x"), secs(t0, 100));
    h.append("b", payload("x"), t0);
    h.expire(secs(t0, 50), |_| false);
    h.expire(t0, |_| false);
    h.position("c", t0);
    assert!(h.rooms() <= 3);
}

/// One operation of the model test; rooms are indices into `ROOMS`.
#[derive(Clone, Debug)]
enum Op {
    Append {
        room: usize,
        len: usize,
    },
    Position {
        room: usize,
    },
    Recover {
        room: usize,
        epoch: u8,
        back: u64,
        ahead: bool,
        max: usize,
    },
    Range {
        room: usize,
        count: Option<usize>,
    },
    Advance {
        secs: u64,
    },
    Expire {
        held: u8,
    },
}

const ROOMS: [&str; 4] = ["a", "bb", "room-c", "d"];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..ROOMS.len(), 0usize..60).prop_map(|(room, len)| Op::Append { room, len }),
        1 => (0..ROOMS.len()).prop_map(|room| Op::Position { room }),
        2 => (0..ROOMS.len(), 0u8..3, 0u64..6, any::<bool>(), 0usize..6)
            .prop_map(|(room, epoch, back, ahead, max)| Op::Recover { room, epoch, back, ahead, max }),
        1 => (0..ROOMS.len(), proptest::option::of(0usize..6))
            .prop_map(|(room, count)| Op::Range { room, count }),
        1 => (0u64..4).prop_map(|secs| Op::Advance { secs }),
        1 => any::<u8>().prop_map(|held| Op::Expire { held }),
    ]
}

fn memory_bound() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0),
        Just(ROOM_OVERHEAD + 8),
        Just(ROOM_OVERHEAD + ENTRY_OVERHEAD + 30),
        Just(2 * ROOM_OVERHEAD + 3 * ENTRY_OVERHEAD),
        Just(4 * ROOM_OVERHEAD + 8 * ENTRY_OVERHEAD + 100),
        Just(LOTS),
    ]
}

/// What the model knows of a room.
struct ModelRoom {
    epoch: Arc<str>,
    offset: u64,
    /// Payloads of the newest `size` offsets.
    payloads: VecDeque<(u64, Vec<u8>)>,
    /// Virtual second of last activity (publish, creation, or found held when due).
    active: u64,
    /// The memory bound dropped some room state since this one was last seen.
    may_drop: bool,
}

struct Model {
    limits: Limits,
    rooms: StdMap<usize, ModelRoom>,
    epochs: HashSet<String>,
}

impl Model {
    /// Checks `pos`, the position of `room` after an operation that added `added`
    /// messages, and records it.
    fn observe(&mut self, room: usize, pos: &Position, added: u64, now: u64, touched: bool) {
        if let Some(m) = self.rooms.get_mut(&room) {
            if m.epoch == pos.epoch {
                assert_eq!(pos.offset, m.offset + added, "offset grows by 1");
                m.offset = pos.offset;
                m.may_drop = false;
                if touched {
                    m.active = now;
                }
                return;
            }
            assert!(
                m.may_drop,
                "epoch of {} changed without a drop",
                ROOMS[room]
            );
        }
        assert_eq!(pos.epoch.len(), 16);
        assert!(pos
            .epoch
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert!(self.epochs.insert(pos.epoch.to_string()), "epoch reused");
        assert_eq!(pos.offset, added, "a new state starts at offset 0");
        self.rooms.insert(
            room,
            ModelRoom {
                epoch: pos.epoch.clone(),
                offset: pos.offset,
                payloads: VecDeque::new(),
                active: now,
                may_drop: false,
            },
        );
    }

    fn record_payload(&mut self, room: usize, offset: u64, bytes: Vec<u8>) {
        if let Some(m) = self.rooms.get_mut(&room) {
            m.payloads.push_back((offset, bytes));
            while m.payloads.len() > self.limits.size {
                m.payloads.pop_front();
            }
        }
    }

    /// Compares every room with the store and checks the global counters.
    fn check(&mut self, h: &History) {
        self.rooms
            .retain(|&room, m| match h.range(ROOMS[room], None) {
                None => {
                    assert!(m.may_drop, "{} vanished", ROOMS[room]);
                    false
                }
                Some((pos, _)) => {
                    assert_eq!(pos.epoch, m.epoch);
                    assert_eq!(pos.offset, m.offset);
                    m.may_drop = false;
                    true
                }
            });
        assert_eq!(h.rooms(), self.rooms.len());
        let mut messages = 0;
        let mut bytes = 0;
        for (&room, m) in &self.rooms {
            let (_, entries) = h.range(ROOMS[room], None).expect("checked above");
            assert!(entries.len() <= self.limits.size);
            if let Some(&(last, _)) = entries.last() {
                assert_eq!(last, m.offset, "retained messages end at the offset");
            }
            for (i, (offset, payload)) in entries.iter().enumerate() {
                assert_eq!(*offset, m.offset - (entries.len() - 1 - i) as u64);
                let expected = m.payloads.iter().find(|p| p.0 == *offset);
                assert_eq!(expected.map(|p| &p.1[..]), Some(&payload[..]));
                bytes += entry_cost(payload);
            }
            if h.evicted() == 0 && h.evicted_rooms() == 0 {
                assert_eq!(entries.len(), m.payloads.len(), "nothing evicted, all kept");
            }
            messages += entries.len();
            bytes += room_cost(ROOMS[room]);
        }
        assert_eq!(h.messages(), messages);
        assert_eq!(h.bytes(), bytes);
    }
}

fn payload_for(room: usize, offset: u64, len: usize) -> Vec<u8> {
    let mut bytes = format!("{room}:{offset}:").into_bytes();
    bytes.resize(len.max(bytes.len()), b'.');
    bytes
}

proptest! {
    #[test]
    fn history_matches_its_model(
        size in 0usize..5,
        ttl in 0u64..5,
        memory in memory_bound(),
        seed in any::<u64>(),
        ops in proptest::collection::vec(op(), 1..300),
    ) {
        let t0 = Instant::now();
        let limits = Limits { size, ttl: Duration::from_secs(ttl), memory };
        let mut h = History::new(limits, seed);
        let mut model = Model { limits, rooms: StdMap::new(), epochs: HashSet::new() };
        let mut now = 0u64;
        for op in ops {
            let at = secs(t0, now);
            let evicted_rooms = h.evicted_rooms();
            let mut op_room = None;
            match op {
                Op::Append { room, len } => {
                    let next = model.rooms.get(&room).map_or(1, |m| m.offset + 1);
                    let bytes = payload_for(room, next, len);
                    let pos = h.append(ROOMS[room], bytes.clone().into(), at);
                    model.observe(room, &pos, 1, now, true);
                    model.record_payload(room, pos.offset, bytes);
                    if room_cost(ROOMS[room]) <= memory {
                        prop_assert!(h.bytes() <= memory);
                    }
                    op_room = Some(room);
                }
                Op::Position { room } => {
                    let pos = h.position(ROOMS[room], at);
                    model.observe(room, &pos, 0, now, false);
                    if room_cost(ROOMS[room]) <= memory {
                        prop_assert!(h.bytes() <= memory);
                    }
                    op_room = Some(room);
                }
                Op::Recover { room, epoch, back, ahead, max } => {
                    let before = h.range(ROOMS[room], None);
                    let other = model.epochs.iter().find(|e| {
                        model.rooms.get(&room).is_none_or(|m| *m.epoch != ***e)
                    }).cloned();
                    let (claimed, current_epoch) = match (&before, epoch) {
                        (Some((pos, _)), 0) => (pos.epoch.to_string(), true),
                        (_, 1) if other.is_some() => (other.unwrap_or_default(), false),
                        _ => ("not-an-epoch".to_string(), false),
                    };
                    let current = before.as_ref().map_or(0, |(pos, _)| pos.offset);
                    let offset = if ahead { current + 1 + back } else { current.saturating_sub(back) };
                    let answer = h.recover(ROOMS[room], &claimed, offset, max, at);
                    let expected = match &before {
                        Some((pos, entries)) if current_epoch && offset <= current => {
                            let missing = (current - offset) as usize;
                            if missing <= max && missing <= entries.len() {
                                Some(Recovery::Recovered {
                                    position: pos.clone(),
                                    missed: entries[entries.len() - missing..].to_vec(),
                                })
                            } else {
                                None
                            }
                        }
                        _ => None,
                    };
                    let pos = match (&answer, expected) {
                        (Recovery::Recovered { position, .. }, Some(expected)) => {
                            prop_assert_eq!(&answer, &expected);
                            position.clone()
                        }
                        (Recovery::NotRecovered { position }, None) => position.clone(),
                        (answer, expected) => {
                            return Err(TestCaseError::fail(format!("{answer:?} but expected {expected:?}")));
                        }
                    };
                    model.observe(room, &pos, 0, now, false);
                    op_room = Some(room);
                }
                Op::Range { room, count } => {
                    let all = h.range(ROOMS[room], None);
                    let some = h.range(ROOMS[room], count);
                    prop_assert_eq!(all.is_some(), some.is_some());
                    if let (Some((_, all)), Some((_, some))) = (all, some) {
                        let n = count.map_or(all.len(), |c| c.min(all.len()));
                        prop_assert_eq!(&all[all.len() - n..], &some[..]);
                    }
                }
                Op::Advance { secs } => now += secs,
                Op::Expire { held } => {
                    let is_held = |room: &str| {
                        ROOMS.iter().position(|r| *r == room).is_some_and(|i| held & (1 << i) != 0)
                    };
                    h.expire(at, is_held);
                    let mut gone = Vec::new();
                    for (&room, m) in model.rooms.iter_mut() {
                        if now - m.active >= ttl {
                            if is_held(ROOMS[room]) {
                                m.active = now;
                            } else {
                                gone.push(room);
                            }
                        }
                    }
                    for room in gone {
                        prop_assert!(h.range(ROOMS[room], None).is_none());
                        model.rooms.remove(&room);
                    }
                }
            }
            if h.evicted_rooms() != evicted_rooms {
                for (&room, m) in model.rooms.iter_mut() {
                    if Some(room) != op_room {
                        m.may_drop = true;
                    }
                }
            }
            model.check(&h);
        }
    }
}

#[test]
fn an_adopted_history_keeps_epochs_offsets_and_messages() {
    let t0 = Instant::now();
    let mut old = History::new(limits(10, 300, 1 << 20), 1);
    for i in 0..15 {
        old.append("news", payload(&format!("m{i}")), t0);
    }
    old.position("quiet", t0);
    let mut new = History::new(limits(10, 300, 1 << 20), 2);
    for (room, pos, entries) in old.export() {
        new.adopt(&room, pos, entries, t0);
    }
    assert_eq!(new.range("news", None), old.range("news", None));
    assert_eq!(new.range("quiet", None), old.range("quiet", None));
    let (pos, _) = old.range("news", None).unwrap();
    // Recovery from a position the old process gave works on the new one.
    match new.recover("news", &pos.epoch, 12, 300, t0) {
        Recovery::Recovered { missed, .. } => assert_eq!(offsets(&missed), vec![13, 14, 15]),
        other => panic!("{other:?}"),
    }
    assert_eq!(new.append("news", payload("next"), t0).offset, 16);
}

#[test]
fn an_adopted_history_that_is_not_contiguous_keeps_only_its_position() {
    let t0 = Instant::now();
    let mut h = History::new(limits(10, 300, 1 << 20), 1);
    let pos = Position {
        epoch: "00000000000000aa".into(),
        offset: 9,
    };
    h.adopt(
        "r",
        pos.clone(),
        vec![(3, payload("a")), (5, payload("b"))],
        t0,
    );
    let (got, entries) = h.range("r", None).unwrap();
    assert_eq!(got, pos);
    assert!(entries.is_empty());
}
