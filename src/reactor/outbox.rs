//! Output: what a reactor writes this loop turn, and what a slow connection keeps.
//!
//! During a turn, everything addressed to a connection — pushed frames, replies,
//! pings — is appended to a per-reactor arena (`Outbox`) as a linked chain per
//! connection: eight bytes per delivery, no allocation in steady state, and a pushed
//! frame is referenced by index, so fan-out to ten thousand connections touches the
//! frame's reference count zero times. Before the reactor sleeps, each dirty
//! connection's chain is written with one `writev`. Only what the socket did not take
//! moves into the connection's own `WriteQueue` (cloning the `Arc`, never the bytes);
//! the queue is freed as soon as it drains. An idle connection owns no buffer.
//!
//! Memory bound. The reactor stops taking in work (dispatcher batches, socket reads)
//! once a turn's arena holds `LINK_BUDGET` links or `FRAME_BUDGET` chunks, writes
//! what it has, and goes on in the next turn. One command is applied whole, so a turn
//! can pass the budget by one push's fan-out (at most C, the reactor's connections)
//! and a read by the replies one 64 KiB read can ask for (at most 64 Ki / 6 pongs).
//! So per reactor, at any time:
//!
//! ```text
//! arena ≤ 8 B × (LINK_BUDGET + C + 11 Ki)  +  24 B × (FRAME_BUDGET + 11 Ki)
//!       ≈ 8.1 MiB + 1.8 MiB + 8 B × C       (C = 500,000 → 14 MiB)
//! ```
//!
//! plus the dirty list (4 B × C at most). After a peak the arena gives its capacity
//! back (`release_after_peak`), so a burst does not keep its memory for the life of
//! the process. Indexes are checked: an arena that could not be indexed by `u32`
//! refuses the entry (counted in `overflows`) instead of wrapping onto `NIL`.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;

/// Most slices handed to one `writev` (Linux `IOV_MAX`).
pub const IOV_MAX: usize = 1024;

/// "No entry" in a chain.
pub const NIL: u32 = u32::MAX;

/// Links after which a turn stops taking in new work (8 MiB of links).
pub const LINK_BUDGET: usize = 1 << 20;
/// Chunks after which a turn stops taking in new work.
pub const FRAME_BUDGET: usize = 1 << 16;
/// Capacity kept across turns; more is released once a turn uses under a quarter.
const RETAIN_LINKS: usize = 1 << 16;
const RETAIN_FRAMES: usize = 1 << 12;

/// Bytes waiting to be written.
pub enum Chunk {
    /// A pushed frame shared by every recipient; subject to the slow-consumer policy.
    Push(Arc<[u8]>),
    /// A frame shared by many connections that must not be dropped (a KICK's or a
    /// shutdown's Close frame).
    Shared(Arc<[u8]>),
    /// A reply to this connection's own request (echo, pong, JSON reply, close, HTTP).
    Owned(Box<[u8]>),
    /// A constant frame (ping).
    Static(&'static [u8]),
}

impl Chunk {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Push(b) | Chunk::Shared(b) => b,
            Chunk::Owned(b) => b,
            Chunk::Static(b) => b,
        }
    }

    /// Pushes may be dropped or trigger a slow-consumer close; replies never are.
    pub fn is_push(&self) -> bool {
        matches!(self, Chunk::Push(_))
    }

    /// A copy for a write queue: an `Arc` clone for shared frames; owned replies are
    /// taken (each belongs to exactly one connection).
    fn take_or_share(&mut self) -> Chunk {
        match self {
            Chunk::Push(b) => Chunk::Push(b.clone()),
            Chunk::Shared(b) => Chunk::Shared(b.clone()),
            Chunk::Owned(b) => Chunk::Owned(std::mem::take(b)),
            Chunk::Static(b) => Chunk::Static(b),
        }
    }
}

/// A connection's unsent bytes, only while its socket would block.
#[derive(Default)]
pub struct WriteQueue {
    /// Chunks in send order.
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    offset: usize,
    /// Unsent bytes in all chunks.
    bytes: usize,
}

impl WriteQueue {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Drops everything but a partly written front frame (which must finish, or the
    /// peer would see a torn frame).
    /// Returns how many pushes it dropped.
    pub fn keep_partial_front(&mut self) -> u32 {
        let keep = usize::from(self.offset > 0);
        let dropped = self
            .chunks
            .iter()
            .skip(keep)
            .filter(|c| c.is_push())
            .count();
        self.chunks.truncate(keep);
        self.bytes = self
            .chunks
            .front()
            .map_or(0, |c| c.bytes().len() - self.offset);
        u32::try_from(dropped).unwrap_or(u32::MAX)
    }

    pub fn push(&mut self, chunk: Chunk) {
        self.bytes += chunk.bytes().len();
        self.chunks.push_back(chunk);
    }
}

struct Link {
    /// Next link of the same connection, or NIL.
    next: u32,
    /// Index into `Outbox::frames`.
    frame: u32,
}

/// Per-reactor staging area for one loop turn.
#[derive(Default)]
pub struct Outbox {
    /// Chunks queued this turn; pushes appear once however many recipients they have.
    frames: Vec<Chunk>,
    /// Chains of frame indexes per connection.
    links: Vec<Link>,
    /// Connections with a chain or a write queue to flush before sleeping.
    pub dirty: Vec<u32>,
    /// Entries refused because the arena could not index them (never expected: the
    /// budgets keep it far below `u32::MAX`).
    pub overflows: u64,
}

/// A connection's chain in the outbox (stored in the connection itself).
#[derive(Clone, Copy, Debug)]
pub struct Chain {
    pub head: u32,
    pub tail: u32,
}

impl Chain {
    pub const EMPTY: Chain = Chain {
        head: NIL,
        tail: NIL,
    };

    pub fn is_empty(self) -> bool {
        self.head == NIL
    }
}

/// What became of the pushes in one flush.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FlushOutcome {
    /// Bytes the socket took.
    pub written: usize,
    /// `writev` calls made.
    pub writes: u32,
    /// The socket would block now.
    pub blocked: bool,
    /// Pushes that did not fit under --max-pending.
    pub over_limit: u32,
    /// Pushes dropped (drop policy).
    pub dropped: u32,
}

impl Outbox {
    /// Adds a chunk for this turn and returns its index for `append`.
    /// `NIL` if the arena is full: appending it then does nothing.
    pub fn add_frame(&mut self, chunk: Chunk) -> u32 {
        match index(self.frames.len()) {
            Some(i) => {
                self.frames.push(chunk);
                i
            }
            None => {
                self.overflows += 1;
                NIL
            }
        }
    }

    /// Appends frame `frame` to a connection's chain. Returns true if the chain was
    /// empty (the caller then marks the connection dirty).
    pub fn append(&mut self, chain: &mut Chain, frame: u32) -> bool {
        let Some(idx) = index(self.links.len()).filter(|_| frame != NIL) else {
            self.overflows += 1;
            return false;
        };
        self.links.push(Link { next: NIL, frame });
        let was_empty = chain.is_empty();
        if was_empty {
            chain.head = idx;
        } else {
            self.links[chain.tail as usize].next = idx;
        }
        chain.tail = idx;
        was_empty
    }

    /// Forgets this turn's chunks and chains (call after every dirty connection has
    /// been flushed).
    pub fn clear(&mut self) {
        self.release_after_peak();
        self.frames.clear();
        self.links.clear();
        self.dirty.clear();
    }

    /// True once this turn's arena has reached its budget: take in no more work.
    pub fn over_budget(&self) -> bool {
        self.links.len() >= LINK_BUDGET || self.frames.len() >= FRAME_BUDGET
    }

    /// Gives back capacity a burst left behind: when this turn used under a quarter of
    /// what is allocated, shrink to twice the use (at least the retained minimum).
    fn release_after_peak(&mut self) {
        shrink(&mut self.links, RETAIN_LINKS);
        shrink(&mut self.frames, RETAIN_FRAMES);
        shrink(&mut self.dirty, RETAIN_LINKS);
    }

    /// Bytes the arena has allocated (for tests and the memory bound).
    pub fn allocated_bytes(&self) -> usize {
        self.links.capacity() * std::mem::size_of::<Link>()
            + self.frames.capacity() * std::mem::size_of::<Chunk>()
            + self.dirty.capacity() * 4
    }

    /// Writes a connection's queue and then its chain with as few `writev` calls as the
    /// socket allows (one, unless more than IOV_MAX pieces or a partial write). What is
    /// left moves into the write queue, where `max_pending` applies to pushes: with
    /// `drop_over_limit` they are dropped, otherwise counted in `over_limit` (the caller
    /// closes the connection). `writable` false skips the system call.
    pub fn flush<W: std::io::Write>(
        &mut self,
        sock: &mut W,
        writable: bool,
        chain: &mut Chain,
        queue: &mut Option<Box<WriteQueue>>,
        max_pending: usize,
        drop_over_limit: bool,
    ) -> std::io::Result<FlushOutcome> {
        let mut out = FlushOutcome::default();
        let mut cursor = chain.head;
        *chain = Chain::EMPTY;
        let mut blocked = !writable;
        while !blocked {
            let iov = gather(queue.as_deref(), &self.links, &self.frames, cursor);
            if iov.is_empty() {
                break;
            }
            let total: usize = iov.iter().map(|s| s.len()).sum();
            let res = sock.write_vectored(&iov);
            drop(iov);
            let n = match res {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    blocked = true;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            out.writes += 1;
            out.written += n;
            // Consume n bytes: queue first, then whole chain links.
            let mut left = n;
            if let Some(q) = queue.as_deref_mut() {
                while left > 0 {
                    let Some(front) = q.chunks.front() else { break };
                    let rest = front.bytes().len() - q.offset;
                    if left >= rest {
                        left -= rest;
                        q.bytes -= rest;
                        q.offset = 0;
                        q.chunks.pop_front();
                    } else {
                        q.offset += left;
                        q.bytes -= left;
                        left = 0;
                    }
                }
            }
            while left > 0 && cursor != NIL {
                let link = &self.links[cursor as usize];
                let len = self.frames[link.frame as usize].bytes().len();
                if left >= len {
                    left -= len;
                    cursor = link.next;
                } else {
                    // A torn chain frame: its rest goes to the queue, whatever the limit.
                    let chunk = self.frames[link.frame as usize].take_or_share();
                    let q = queue.get_or_insert_with(Default::default);
                    q.push(chunk);
                    q.offset = left;
                    q.bytes -= left;
                    left = 0;
                    cursor = link.next;
                }
            }
            if n < total {
                blocked = true;
            }
        }
        out.blocked = blocked;
        // Whatever the socket did not take waits in the queue.
        while cursor != NIL {
            let link = &self.links[cursor as usize];
            let frame = &mut self.frames[link.frame as usize];
            cursor = link.next;
            let len = frame.bytes().len();
            let pending = queue.as_deref().map_or(0, |q| q.bytes);
            if frame.is_push() && pending + len > max_pending {
                if drop_over_limit {
                    out.dropped += 1;
                } else {
                    out.over_limit += 1;
                }
                continue;
            }
            queue
                .get_or_insert_with(Default::default)
                .push(frame.take_or_share());
        }
        if queue.as_deref().is_some_and(|q| q.is_empty()) {
            *queue = None;
        }
        Ok(out)
    }
}

/// A checked arena index: below `NIL`, so it can never be mistaken for "no entry".
fn index(len: usize) -> Option<u32> {
    u32::try_from(len).ok().filter(|&i| i < NIL)
}

fn shrink<T>(v: &mut Vec<T>, retain: usize) {
    if v.capacity() > retain && v.len() < v.capacity() / 4 {
        v.shrink_to((v.len() * 2).max(retain));
    }
}

/// The slices for one `writev`: queued chunks, then chain links, at most IOV_MAX.
fn gather<'a>(
    queue: Option<&'a WriteQueue>,
    links: &[Link],
    frames: &'a [Chunk],
    mut cursor: u32,
) -> smallvec::SmallVec<[IoSlice<'a>; 64]> {
    let mut iov = smallvec::SmallVec::new();
    if let Some(q) = queue {
        for (i, c) in q.chunks.iter().enumerate() {
            if iov.len() == IOV_MAX {
                return iov;
            }
            let b = c.bytes();
            iov.push(IoSlice::new(if i == 0 { &b[q.offset..] } else { b }));
        }
    }
    while cursor != NIL && iov.len() < IOV_MAX {
        let link = &links[cursor as usize];
        iov.push(IoSlice::new(frames[link.frame as usize].bytes()));
        cursor = link.next;
    }
    iov
}
