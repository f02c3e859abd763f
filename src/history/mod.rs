//! Per-room positions (epoch + offset) and a bounded ring of recent messages per
//! room, all rooms under one memory bound: what the dispatcher needs to give every
//! room push a position and to replay what a reconnecting client missed.
//!
//! Pure code: no I/O, no clock reads (time comes in as an `Instant`), no threads.
//! It must never panic on any sequence of calls and never grow without bound: every
//! retained message, room state and queue slot is paid for in [`History::bytes`] (an
//! estimate, see [`ENTRY_OVERHEAD`] and [`ROOM_OVERHEAD`]), and the queues that order
//! eviction are compacted before their stale slots outnumber the live ones.
//!
//! Invariants the rest of the server relies on:
//! - a room's offset grows by exactly 1 per [`History::append`] while its state lives;
//! - a room's retained messages are always the contiguous range ending at its current
//!   offset, so "everything after offset N is retained" is one comparison;
//! - evicting *messages* (the memory bound, `--history-size`) never changes a room's
//!   epoch or offset: recovery past an evicted message is simply not possible;
//! - dropping a room's *state* (TTL, or the memory bound when room states alone no
//!   longer fit) means a new epoch when the room comes back, so a client holding the
//!   old epoch is told it was not recovered instead of being given a wrong gap.

use std::collections::VecDeque;
use std::hash::RandomState;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hashbrown::hash_map::EntryRef;
use hashbrown::HashMap;

/// Estimated bytes one retained message costs besides its payload: its ring slot
/// (offset + fat pointer, 24), the `Arc` header of the payload (16, rounded up to
/// 32 with allocator slack), its slot in the global eviction FIFO (room `Arc` +
/// generation + offset, 32) with room for as many stale slots again before a
/// compaction (32).
pub const ENTRY_OVERHEAD: usize = 120;

/// Estimated bytes one room state costs besides its name: the map slot and `Room`
/// (~96), the epoch string and its `Arc` header (32), the name's `Arc` header (16),
/// its slots in the activity queue (live + stale allowance, 2 × 40).
pub const ROOM_OVERHEAD: usize = 224;

/// Queues are compacted when their stale slots exceed the live ones plus this many,
/// so small histories do not compact on every call. Tests use a small value so that
/// short operation sequences compact too.
const COMPACT_SLACK: usize = if cfg!(test) { 4 } else { 64 };

/// A retained message: its offset and its payload, shared with every frame built
/// from it.
pub type Entry = (u64, Arc<[u8]>);

/// What the history keeps (the `--history-*` flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Messages kept per room; 0 keeps none (positions are still assigned).
    pub size: usize,
    /// A room's state is dropped this long after its last publish (or creation)
    /// when no member holds it.
    pub ttl: Duration,
    /// Bound on [`History::bytes`] over all rooms.
    pub memory: usize,
}

/// Where a room's stream stands: the epoch of its current state and the offset of
/// the last message published in it (0 if none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    pub epoch: Arc<str>,
    pub offset: u64,
}

/// The answer to a client that asks what it missed since a position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// Every message after the client's offset, oldest first (possibly none), and
    /// the room's current position, which is the last of them.
    Recovered {
        position: Position,
        missed: Vec<Entry>,
    },
    /// The gap cannot be filled; the client starts again from `position`.
    NotRecovered { position: Position },
}

/// One room's state.
struct Room {
    /// Epoch string handed to clients; unique to this state.
    epoch: Arc<str>,
    /// Unique id of this state, so queue slots of a dropped state that had the same
    /// name are recognised as stale.
    generation: u64,
    /// Offset of the last message published (0 if none).
    offset: u64,
    /// Retained messages, oldest first; always the contiguous range ending at `offset`.
    ring: VecDeque<Entry>,
    /// Id of this room's one live slot in the activity queue.
    stamp: u64,
}

impl Room {
    fn position(&self) -> Position {
        Position {
            epoch: self.epoch.clone(),
            offset: self.offset,
        }
    }
}

/// Room names are chosen by clients and publishers: keep std's keyed hasher.
type Rooms = HashMap<Arc<str>, Room, RandomState>;

/// A slot in the global message FIFO: "the message `offset` of state `generation`
/// of room `room`". Stale once that message has left the ring some other way.
struct MessageSlot {
    room: Arc<str>,
    generation: u64,
    offset: u64,
}

/// A slot in the activity queue: room `room` was published to (or created, or
/// found held by members) at `at`. Only the slot whose `stamp` the room holds is live.
struct ActivitySlot {
    room: Arc<str>,
    stamp: u64,
    at: Instant,
}

/// Positions and recent messages of every room. See the module documentation.
pub struct History {
    limits: Limits,
    rooms: Rooms,
    /// Everything but the rooms themselves, apart so that a `&mut Room` and the
    /// accounting can be borrowed at the same time.
    ledger: Ledger,
}

/// Ids, eviction order and accounting over all rooms.
struct Ledger {
    /// Seed mixed into every epoch, so that epochs differ between processes.
    seed: u64,
    /// Room states ever created; each creation takes the next value as its generation.
    created: u64,
    /// Activity slots ever queued; each takes the next value as its stamp.
    stamps: u64,
    /// Every retained message in publish order over all rooms, plus stale slots:
    /// the memory bound evicts from its front, the globally oldest message.
    fifo: VecDeque<MessageSlot>,
    /// Rooms in order of last activity, plus stale slots: the TTL expires from its
    /// front, and the memory bound drops the least recently active room states.
    activity: VecDeque<ActivitySlot>,
    /// Current estimate, see [`History::bytes`].
    bytes: usize,
    /// Retained messages over all rooms.
    messages: usize,
    /// Messages dropped by the memory bound.
    evicted: u64,
    /// Room states dropped by the memory bound.
    evicted_rooms: u64,
}

impl History {
    /// An empty history. `seed` makes this process's epochs differ from another's
    /// (the caller passes something like the start time and pid).
    pub fn new(limits: Limits, seed: u64) -> History {
        History {
            limits,
            rooms: HashMap::with_hasher(RandomState::new()),
            ledger: Ledger {
                seed,
                created: 0,
                stamps: 0,
                fifo: VecDeque::new(),
                activity: VecDeque::new(),
                bytes: 0,
                messages: 0,
                evicted: 0,
                evicted_rooms: 0,
            },
        }
    }

    /// The limits this history enforces.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Assigns the next offset of `room` without keeping anything (history off).
    pub fn advance(&mut self, room: &str, now: Instant) -> Position {
        let ledger = &mut self.ledger;
        let (name, state) = ledger.enter(&mut self.rooms, room, now);
        ledger.touch(&name, state, now);
        state.offset = state.offset.saturating_add(1);
        state.position()
    }

    /// Assigns the next offset of `room` and keeps `payload` (if size > 0).
    ///
    /// Counts as activity for the TTL. If the payload alone (with its room) would not
    /// fit in the memory bound, it is not kept, and neither are the room's older
    /// messages: they would no longer end at the current offset, and no recovery
    /// could use them.
    pub fn append(&mut self, room: &str, payload: Arc<[u8]>, now: Instant) -> Position {
        let ledger = &mut self.ledger;
        let (name, state) = ledger.enter(&mut self.rooms, room, now);
        ledger.touch(&name, state, now);
        state.offset = state.offset.saturating_add(1);
        let position = state.position();
        let size = self.limits.size;
        let fits = room_cost(&name).saturating_add(entry_cost(&payload)) <= self.limits.memory;
        if size > 0 && fits {
            ledger.bytes = ledger.bytes.saturating_add(entry_cost(&payload));
            ledger.messages += 1;
            state.ring.push_back((state.offset, payload));
            ledger.fifo.push_back(MessageSlot {
                room: name.clone(),
                generation: state.generation,
                offset: state.offset,
            });
            while state.ring.len() > size {
                if let Some((_, old)) = state.ring.pop_front() {
                    ledger.bytes = ledger.bytes.saturating_sub(entry_cost(&old));
                    ledger.messages -= 1;
                }
            }
        } else if size > 0 {
            let dropped = state.ring.len();
            for (_, old) in state.ring.drain(..) {
                ledger.bytes = ledger.bytes.saturating_sub(entry_cost(&old));
            }
            ledger.messages -= dropped;
            // The message itself counts too: the memory bound is why it is not kept.
            ledger.evicted += dropped as u64 + 1;
            shrink_ring(&mut state.ring);
        }
        ledger.enforce_memory(&mut self.rooms, self.limits.memory, &name);
        ledger.compact(&self.rooms);
        position
    }

    /// The room's current position, creating its state (offset 0, new epoch) if none.
    pub fn position(&mut self, room: &str, now: Instant) -> Position {
        let (name, state) = self.ledger.enter(&mut self.rooms, room, now);
        let position = state.position();
        self.ledger
            .enforce_memory(&mut self.rooms, self.limits.memory, &name);
        self.ledger.compact(&self.rooms);
        position
    }

    /// What a client that saw (epoch, offset) missed: Recovered if epoch matches and
    /// every message after offset is retained and there are at most `max` of them.
    /// An offset ahead of the current one is NotRecovered.
    pub fn recover(
        &mut self,
        room: &str,
        epoch: &str,
        offset: u64,
        max: usize,
        now: Instant,
    ) -> Recovery {
        let Some(state) = self.rooms.get(room) else {
            // A new state has a new epoch: nobody can hold it yet.
            return Recovery::NotRecovered {
                position: self.position(room, now),
            };
        };
        let position = state.position();
        if *state.epoch != *epoch || offset > state.offset {
            return Recovery::NotRecovered { position };
        }
        let missing = state.offset - offset;
        // The ring ends at the current offset, so it covers offset+1.. exactly when
        // it holds at least `missing` messages.
        let retained = state.ring.len() as u64;
        if missing > max as u64 || missing > retained {
            return Recovery::NotRecovered { position };
        }
        let skip = (retained - missing) as usize;
        let missed = state.ring.iter().skip(skip).cloned().collect();
        Recovery::Recovered { position, missed }
    }

    /// Every room's state, least recently active first: name, position and retained
    /// messages (for the process an upgrade hands this one's rooms to).
    pub fn export(&self) -> Vec<(Arc<str>, Position, Vec<Entry>)> {
        self.ledger
            .activity
            .iter()
            .filter_map(|slot| {
                let state = self.rooms.get(&*slot.room)?;
                (state.stamp == slot.stamp).then(|| {
                    let entries = state.ring.iter().cloned().collect();
                    (slot.room.clone(), state.position(), entries)
                })
            })
            .collect()
    }

    /// Takes over a room's state from the process this one upgrades: its epoch and
    /// offset, so the positions clients hold stay valid, and its retained messages as
    /// far as this history's limits keep them. Messages that are not the contiguous
    /// run ending at the offset (they always are, from `export`) are not kept.
    pub fn adopt(&mut self, room: &str, position: Position, entries: Vec<Entry>, now: Instant) {
        let contiguous = entries
            .iter()
            .zip(entries.iter().skip(1))
            .all(|(a, b)| b.0 == a.0.wrapping_add(1))
            && entries.last().is_none_or(|(o, _)| *o == position.offset);
        let first = match entries.first() {
            Some((o, _)) if contiguous => o.saturating_sub(1),
            _ => position.offset,
        };
        {
            let (_, state) = self.ledger.enter(&mut self.rooms, room, now);
            state.epoch = position.epoch.clone();
            state.offset = first;
        }
        if contiguous {
            for (_, payload) in entries {
                self.append(room, payload, now);
            }
        }
    }

    /// The newest `count` retained messages (all if None), oldest first.
    pub fn range(&self, room: &str, count: Option<usize>) -> Option<(Position, Vec<Entry>)> {
        self.range_before(room, count, None, usize::MAX)
    }

    /// `range` of the messages whose offset is below `before` (all if None), and of
    /// those only the newest whose payloads fit in `max_bytes` (always at least one):
    /// how a reader pages back from the oldest offset it has. Costs what it returns,
    /// never a pass over the whole ring, so a bounded reply stays cheap however much
    /// the room retains.
    pub fn range_before(
        &self,
        room: &str,
        count: Option<usize>,
        before: Option<u64>,
        max_bytes: usize,
    ) -> Option<(Position, Vec<Entry>)> {
        let state = self.rooms.get(room)?;
        // Offsets rise along the ring: skip the newest ones at or past `before`.
        let below = before.map_or(state.ring.len(), |b| {
            state.ring.partition_point(|(offset, _)| *offset < b)
        });
        let most = count.map_or(below, |count| count.min(below));
        let mut bytes = 0usize;
        let take = state
            .ring
            .range(..below)
            .rev()
            .take(most)
            .enumerate()
            .take_while(|(i, (_, payload))| {
                bytes = bytes.saturating_add(payload.len());
                *i == 0 || bytes <= max_bytes
            })
            .count();
        let entries = state.ring.range(below - take..below).cloned().collect();
        Some((state.position(), entries))
    }

    /// Drops rooms whose last publish is older than ttl and that are not `held`
    /// (the dispatcher passes a closure: does the room still have members here?).
    ///
    /// Visits only rooms whose last activity is at least ttl old. A held room is
    /// looked at again one ttl later, so a room whose last member left is dropped
    /// between one and two ttl after its last publish.
    pub fn expire(&mut self, now: Instant, held: impl Fn(&str) -> bool) {
        let ledger = &mut self.ledger;
        // Held rooms go back to the queue; with ttl 0 they would be met again in
        // this same call, so visit each slot present at the start at most once.
        for _ in 0..ledger.activity.len() {
            let Some(slot) = ledger.activity.pop_front() else {
                break;
            };
            let Some(state) = self
                .rooms
                .get_mut(&*slot.room)
                .filter(|state| state.stamp == slot.stamp)
            else {
                continue;
            };
            if now.saturating_duration_since(slot.at) < self.limits.ttl {
                ledger.activity.push_front(slot);
                break;
            }
            if held(&slot.room) {
                ledger.touch(&slot.room, state, now);
            } else {
                ledger.drop_room(&mut self.rooms, &slot.room);
            }
        }
        ledger.compact(&self.rooms);
    }

    /// Estimated memory in use: payload bytes plus [`ENTRY_OVERHEAD`] per retained
    /// message plus [`ROOM_OVERHEAD`] and the name per room state.
    pub fn bytes(&self) -> usize {
        self.ledger.bytes
    }

    /// Whether `room` has a state (a position someone may hold).
    pub fn contains(&self, room: &str) -> bool {
        self.rooms.contains_key(room)
    }

    /// Room states held (rooms with a position).
    pub fn rooms(&self) -> usize {
        self.rooms.len()
    }

    /// Messages retained over all rooms.
    pub fn messages(&self) -> usize {
        self.ledger.messages
    }

    /// Messages evicted by the memory bound.
    pub fn evicted(&self) -> u64 {
        self.ledger.evicted
    }

    /// Room states dropped by the memory bound (their rooms get a new epoch).
    pub fn evicted_rooms(&self) -> u64 {
        self.ledger.evicted_rooms
    }
}

impl Ledger {
    /// The room's stored name and state, creating the state (offset 0, new epoch,
    /// active at `now`) if none.
    fn enter<'a>(
        &mut self,
        rooms: &'a mut Rooms,
        room: &str,
        now: Instant,
    ) -> (Arc<str>, &'a mut Room) {
        match rooms.entry_ref(room) {
            EntryRef::Occupied(entry) => (entry.key().clone(), entry.into_mut()),
            EntryRef::Vacant(entry) => {
                self.created += 1;
                let name: Arc<str> = room.into();
                let mut state = Room {
                    epoch: format!("{:016x}", epoch_bits(self.seed, self.created)).into(),
                    generation: self.created,
                    offset: 0,
                    ring: VecDeque::new(),
                    stamp: 0,
                };
                self.touch(&name, &mut state, now);
                self.bytes = self.bytes.saturating_add(room_cost(&name));
                (name.clone(), entry.insert_with_key(name, state))
            }
        }
    }

    /// Records activity of `state` at `now`: its previous activity slot turns stale.
    fn touch(&mut self, name: &Arc<str>, state: &mut Room, now: Instant) {
        self.stamps += 1;
        state.stamp = self.stamps;
        self.activity.push_back(ActivitySlot {
            room: name.clone(),
            stamp: self.stamps,
            at: now,
        });
    }

    /// Drops a room's state and its messages; its queue slots turn stale.
    fn drop_room(&mut self, rooms: &mut Rooms, name: &str) {
        if let Some((name, state)) = rooms.remove_entry(name) {
            let payload: usize = state.ring.iter().map(|(_, p)| entry_cost(p)).sum();
            self.bytes = self
                .bytes
                .saturating_sub(payload)
                .saturating_sub(room_cost(&name));
            self.messages -= state.ring.len();
        }
        if rooms.capacity() > 4 * rooms.len() + COMPACT_SLACK {
            rooms.shrink_to(2 * rooms.len());
        }
    }

    /// Evicts the globally oldest messages, then the least recently active room
    /// states other than `keep`, until the estimate is within `memory`.
    fn enforce_memory(&mut self, rooms: &mut Rooms, memory: usize, keep: &Arc<str>) {
        while self.bytes > memory {
            if let Some(slot) = self.fifo.pop_front() {
                let Some(state) = rooms.get_mut(&*slot.room) else {
                    continue;
                };
                if state.generation != slot.generation
                    || state
                        .ring
                        .front()
                        .is_none_or(|&(first, _)| first > slot.offset)
                {
                    continue;
                }
                // Slots of one room are queued in offset order and the ring only
                // ever loses its front, so a live slot is always the ring's front.
                debug_assert_eq!(state.ring.front().map(|e| e.0), Some(slot.offset));
                if let Some((_, old)) = state.ring.pop_front() {
                    self.bytes = self.bytes.saturating_sub(entry_cost(&old));
                    self.messages -= 1;
                    self.evicted += 1;
                    shrink_ring(&mut state.ring);
                }
                continue;
            }
            // No message left to evict: room states alone exceed the bound.
            let Some(slot) = self.activity.pop_front() else {
                break;
            };
            let live = rooms
                .get(&*slot.room)
                .is_some_and(|state| state.stamp == slot.stamp);
            if !live {
                continue;
            }
            if slot.room == *keep {
                // `keep` was just created or touched, so its slot is the newest:
                // every other room is gone already.
                self.activity.push_front(slot);
                break;
            }
            self.drop_room(rooms, &slot.room);
            self.evicted_rooms += 1;
        }
    }

    /// Removes stale queue slots once they outnumber the live ones (plus slack):
    /// O(1) amortized per slot queued, and the queues stay within twice the live count.
    fn compact(&mut self, rooms: &Rooms) {
        if self.fifo.len() > 2 * self.messages + COMPACT_SLACK {
            self.fifo.retain(|slot| {
                rooms.get(&*slot.room).is_some_and(|state| {
                    state.generation == slot.generation
                        && state
                            .ring
                            .front()
                            .is_some_and(|&(first, _)| first <= slot.offset)
                })
            });
            self.fifo.shrink_to(2 * self.fifo.len());
        }
        if self.activity.len() > 2 * rooms.len() + COMPACT_SLACK {
            self.activity.retain(|slot| {
                rooms
                    .get(&*slot.room)
                    .is_some_and(|state| state.stamp == slot.stamp)
            });
            self.activity.shrink_to(2 * self.activity.len());
        }
    }
}

fn entry_cost(payload: &[u8]) -> usize {
    ENTRY_OVERHEAD.saturating_add(payload.len())
}

fn room_cost(name: &str) -> usize {
    ROOM_OVERHEAD.saturating_add(name.len())
}

/// Releases ring capacity left behind by a burst, keeping room to grow again.
fn shrink_ring(ring: &mut VecDeque<Entry>) {
    if ring.capacity() > 4 * ring.len() + 16 {
        ring.shrink_to(2 * ring.len());
    }
}

/// 64 bits for the epoch of state number `n`: splitmix64 of the seeded counter.
/// splitmix64's finaliser is a bijection, so distinct `n` give distinct epochs
/// within one process.
fn epoch_bits(seed: u64, n: u64) -> u64 {
    let mut z = seed.wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests;
