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

    /// Bytes of the front chunk already written, and every chunk (whether it is a
    /// push, and its bytes), for a hand-over.
    pub fn parts(&self) -> (usize, impl Iterator<Item = (bool, &[u8])>) {
        (
            self.offset,
            self.chunks.iter().map(|c| (c.is_push(), c.bytes())),
        )
    }

    /// The queue `parts` described (`offset` within the first chunk, checked by the
    /// caller).
    pub fn restore(offset: usize, chunks: impl IntoIterator<Item = Chunk>) -> WriteQueue {
        let mut q = WriteQueue::default();
        for c in chunks {
            q.push(c);
        }
        q.offset = offset.min(q.chunks.front().map_or(0, |c| c.bytes().len()));
        q.bytes -= q.offset;
        q
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
        // `flush` counts on every chunk having bytes: a 0-byte write takes nothing
        // and does not block, so a chain of empty chunks would never finish.
        debug_assert!(!chunk.bytes().is_empty(), "empty chunk queued");
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

    /// Bytes of replies (every chunk but pushes) in a connection's chain this turn
    /// (walks it: call it where the chain is short, as at the start of a read).
    /// Pushes are left out: they have their own bound in `flush`, and counting them
    /// against a read would stop a client from being read for as long as more than
    /// `--max-pending` of pushes came for it each turn.
    pub fn chain_reply_bytes(&self, chain: Chain) -> usize {
        let mut bytes = 0;
        let mut cursor = chain.head;
        while let Some(link) = self.links.get(cursor as usize) {
            bytes += self
                .frames
                .get(link.frame as usize)
                .filter(|f| !f.is_push())
                .map_or(0, |f| f.bytes().len());
            cursor = link.next;
        }
        bytes
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

    /// True once socket reads have used half the turn's budget. Reads stop there, so
    /// the dispatcher's commands always find room: clients flooding the reactor with
    /// requests (pings, joins) cannot hold up pushes, JOIN, LEAVE or KICK.
    pub fn over_read_budget(&self) -> bool {
        self.links.len() >= LINK_BUDGET / 2 || self.frames.len() >= FRAME_BUDGET / 2
    }

    /// Gives back capacity a burst left behind: when this turn used under a quarter of
    /// what is allocated, shrink to twice the use (at least the retained minimum).
    fn release_after_peak(&mut self) {
        shrink(&mut self.links, RETAIN_LINKS);
        shrink(&mut self.frames, RETAIN_FRAMES);
        shrink(&mut self.dirty, RETAIN_LINKS);
    }

    /// Links in this turn's arena.
    pub fn links_used(&self) -> usize {
        self.links.len()
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

#[cfg(test)]
mod tests {
    //! The outbox against a scripted socket: every call's slices are recorded, so the
    //! tests see exactly what a kernel would have been asked to write, and the bytes a
    //! socket took are compared with the frames in order (nothing duplicated, lost or
    //! torn). Only the module's public API is used.

    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;
    use std::io::{self, IoSlice, Write};

    /// What the scripted socket does on one call.
    #[derive(Clone, Copy, Debug)]
    enum Step {
        /// Take at most this many bytes.
        Take(usize),
        WouldBlock,
        Interrupted,
        Fail(io::ErrorKind),
    }

    /// A socket that follows a script, then would block; it keeps what it took.
    #[derive(Default)]
    struct MockSock {
        script: VecDeque<Step>,
        /// Every byte taken, in order.
        out: Vec<u8>,
        /// Per call: (slices offered, bytes taken).
        calls: Vec<(usize, usize)>,
    }

    impl MockSock {
        fn new(script: &[Step]) -> MockSock {
            MockSock {
                script: script.iter().copied().collect(),
                ..MockSock::default()
            }
        }

        /// A socket that takes everything it is offered.
        fn open() -> MockSock {
            MockSock::new(&[Step::Take(usize::MAX); 64])
        }
    }

    impl Write for MockSock {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }

        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let step = self.script.pop_front().unwrap_or(Step::WouldBlock);
            let mut budget = match step {
                Step::Take(n) => n,
                Step::WouldBlock => {
                    self.calls.push((bufs.len(), 0));
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Step::Interrupted => {
                    self.calls.push((bufs.len(), 0));
                    return Err(io::ErrorKind::Interrupted.into());
                }
                Step::Fail(kind) => {
                    self.calls.push((bufs.len(), 0));
                    return Err(kind.into());
                }
            };
            let before = self.out.len();
            for b in bufs {
                let n = b.len().min(budget);
                self.out.extend_from_slice(&b[..n]);
                budget -= n;
                if budget == 0 {
                    break;
                }
            }
            let taken = self.out.len() - before;
            self.calls.push((bufs.len(), taken));
            Ok(taken)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Frame bodies cut from one running byte sequence, so a duplicated, skipped or
    /// reordered byte anywhere shows up in a comparison with the concatenation.
    struct Bytes(usize);

    impl Bytes {
        fn next(&mut self, len: usize) -> Vec<u8> {
            let v = (self.0..self.0 + len).map(|k| (k % 251) as u8).collect();
            self.0 += len;
            v
        }
    }

    fn push(b: &[u8]) -> Chunk {
        Chunk::Push(Arc::from(b))
    }

    fn owned(b: &[u8]) -> Chunk {
        Chunk::Owned(b.to_vec().into_boxed_slice())
    }

    fn shared(b: &[u8]) -> Chunk {
        Chunk::Shared(Arc::from(b))
    }

    /// Adds `chunks` to `outbox` and chains them, in order, for one connection.
    fn chain_of(outbox: &mut Outbox, chunks: Vec<Chunk>) -> Chain {
        let mut chain = Chain::EMPTY;
        for c in chunks {
            let idx = outbox.add_frame(c);
            outbox.append(&mut chain, idx);
        }
        chain
    }

    const NO_LIMIT: usize = usize::MAX / 2;

    /// Flushes `chain` through `sock` with no pending limit.
    fn flush_all(
        outbox: &mut Outbox,
        sock: &mut MockSock,
        chain: &mut Chain,
        queue: &mut Option<Box<WriteQueue>>,
    ) -> FlushOutcome {
        outbox
            .flush(sock, true, chain, queue, NO_LIMIT, false)
            .expect("flush")
    }

    /// Writes whatever the queue holds to an open socket and returns those bytes.
    fn drain(queue: &mut Option<Box<WriteQueue>>) -> Vec<u8> {
        let mut outbox = Outbox::default();
        let mut sock = MockSock::open();
        let mut chain = Chain::EMPTY;
        let out = flush_all(&mut outbox, &mut sock, &mut chain, queue);
        assert!(!out.blocked);
        assert!(queue.is_none(), "a drained queue is freed");
        sock.out
    }

    #[test]
    fn a_whole_chain_goes_out_in_one_writev() {
        let mut g = Bytes(0);
        let (a, b, c) = (g.next(100), g.next(7), g.next(300));
        let mut outbox = Outbox::default();
        let mut chain = chain_of(
            &mut outbox,
            vec![push(&a), owned(&b), Chunk::Static(b"\x89\x00")],
        );
        let idx = outbox.add_frame(push(&c));
        assert!(!outbox.append(&mut chain, idx), "the chain was not empty");
        let mut sock = MockSock::open();
        let mut queue = None;
        let out = flush_all(&mut outbox, &mut sock, &mut chain, &mut queue);
        assert_eq!(sock.calls, vec![(4, 409)]);
        assert_eq!(
            out,
            FlushOutcome {
                written: 409,
                writes: 1,
                ..FlushOutcome::default()
            }
        );
        assert_eq!(sock.out, [&a[..], &b, b"\x89\x00", &c].concat());
        assert!(chain.is_empty(), "a flushed chain is consumed");
        assert!(queue.is_none(), "nothing left, no queue");
    }

    #[test]
    fn a_write_ending_inside_a_frame_queues_its_rest_at_the_right_offset() {
        let mut g = Bytes(0);
        let frames: Vec<Vec<u8>> = vec![g.next(100), g.next(200), g.next(300)];
        let mut outbox = Outbox::default();
        let mut chain = chain_of(
            &mut outbox,
            vec![push(&frames[0]), owned(&frames[1]), push(&frames[2])],
        );
        let mut sock = MockSock::new(&[Step::Take(150)]);
        let mut queue = None;
        let out = flush_all(&mut outbox, &mut sock, &mut chain, &mut queue);
        assert_eq!(out.written, 150);
        assert_eq!(out.writes, 1);
        assert!(out.blocked, "a short write means the socket is full");
        assert_eq!(sock.calls.len(), 1, "no second call after a short write");
        let q = queue.as_deref().expect("the rest is queued");
        assert_eq!(q.bytes(), 450);
        outbox.clear();
        let rest = drain(&mut queue);
        assert_eq!(rest, frames.concat()[150..]);
        assert_eq!([sock.out, rest].concat(), frames.concat());
    }

    #[test]
    fn a_frame_torn_across_several_writes_arrives_whole_and_before_later_frames() {
        let mut g = Bytes(0);
        let big = g.next(1000);
        let mut outbox = Outbox::default();
        let mut chain = chain_of(&mut outbox, vec![push(&big)]);
        let mut sock = MockSock::new(&[Step::Take(1)]);
        let mut queue = None;
        flush_all(&mut outbox, &mut sock, &mut chain, &mut queue);
        outbox.clear();
        // Later turns: the socket takes a little each time, while new frames arrive.
        let mut expected = big.clone();
        for take in [2, 13, 250, 1] {
            let f = g.next(40);
            expected.extend_from_slice(&f);
            let mut chain = chain_of(&mut outbox, vec![push(&f)]);
            sock.script.push_back(Step::Take(take));
            let before = queue.as_deref().map_or(0, WriteQueue::bytes);
            let out = flush_all(&mut outbox, &mut sock, &mut chain, &mut queue);
            assert_eq!(out.written, take);
            assert_eq!(
                queue.as_deref().map_or(0, WriteQueue::bytes),
                before + 40 - take,
                "queued bytes after taking {take}"
            );
            outbox.clear();
        }
        let rest = drain(&mut queue);
        assert_eq!([sock.out, rest].concat(), expected);
    }

    #[test]
    fn more_than_iov_max_pieces_take_several_writev_calls_none_over_the_limit() {
        let mut g = Bytes(0);
        let frames: Vec<Vec<u8>> = (0..IOV_MAX * 2 + 452).map(|i| g.next(1 + i % 3)).collect();
        let mut outbox = Outbox::default();
        let mut chain = chain_of(&mut outbox, frames.iter().map(|f| push(f)).collect());
        let mut sock = MockSock::open();
        let mut queue = None;
        let out = flush_all(&mut outbox, &mut sock, &mut chain, &mut queue);
        let slices: Vec<usize> = sock.calls.iter().map(|c| c.0).collect();
        assert_eq!(slices, vec![IOV_MAX, IOV_MAX, 452]);
        assert_eq!(out.writes, 3);
        assert!(!out.blocked);
        assert_eq!(sock.out, frames.concat());
        assert!(queue.is_none());
    }

    #[test]
    fn a_queue_longer_than_iov_max_drains_before_the_new_chain() {
        let mut g = Bytes(0);
        let old: Vec<Vec<u8>> = (0..IOV_MAX + 500).map(|_| g.next(2)).collect();
        let mut outbox = Outbox::default();
        let mut chain = chain_of(&mut outbox, old.iter().map(|f| push(f)).collect());
        let mut sock = MockSock::new(&[Step::WouldBlock]);
        let mut queue = None;
        flush_all(&mut outbox, &mut sock, &mut chain, &mut queue);
        outbox.clear();
        assert_eq!(queue.as_deref().map(WriteQueue::bytes), Some(old.len() * 2));

        let new: Vec<Vec<u8>> = (0..IOV_MAX).map(|_| g.next(3)).collect();
        let mut chain = chain_of(&mut outbox, new.iter().map(|f| owned(f)).collect());
        let mut sock = MockSock::open();
        let out = flush_all(&mut outbox, &mut sock, &mut chain, &mut queue);
        assert!(
            sock.calls.iter().all(|c| c.0 <= IOV_MAX),
            "{:?}",
            sock.calls
        );
        assert_eq!(sock.calls.len(), 3, "{:?}", sock.calls);
        assert_eq!(out.writes, 3);
        assert_eq!(sock.out, [old.concat(), new.concat()].concat());
        assert!(queue.is_none());
    }

    /// Pushes of 100 bytes with replies among them, against a socket that takes
    /// nothing and a limit of 250 pending bytes.
    fn over_limit_turn(drop_over_limit: bool) -> (FlushOutcome, Vec<u8>, Vec<u8>) {
        let mut g = Bytes(0);
        let f: Vec<Vec<u8>> = (0..7).map(|_| g.next(100)).collect();
        let mut outbox = Outbox::default();
        let mut chain = chain_of(
            &mut outbox,
            vec![
                push(&f[0]),
                push(&f[1]),
                push(&f[2]),
                owned(&f[3]),
                push(&f[4]),
                shared(&f[5]),
                push(&f[6]),
            ],
        );
        let mut sock = MockSock::new(&[Step::WouldBlock]);
        let mut queue = None;
        let out = outbox
            .flush(
                &mut sock,
                true,
                &mut chain,
                &mut queue,
                250,
                drop_over_limit,
            )
            .expect("flush");
        assert_eq!(queue.as_deref().map(WriteQueue::bytes), Some(400));
        outbox.clear();
        let kept = [&f[0][..], &f[1], &f[3], &f[5]].concat();
        (out, drain(&mut queue), kept)
    }

    #[test]
    fn pushes_over_max_pending_are_dropped_and_replies_never_are() {
        let (out, queued, kept) = over_limit_turn(true);
        assert_eq!(out.dropped, 3);
        assert_eq!(out.over_limit, 0);
        assert!(out.blocked);
        assert_eq!(out.written, 0);
        assert_eq!(queued, kept);
    }

    #[test]
    fn pushes_over_max_pending_are_counted_for_the_close_policy() {
        let (out, queued, kept) = over_limit_turn(false);
        assert_eq!(out.over_limit, 3);
        assert_eq!(out.dropped, 0);
        assert_eq!(queued, kept);
    }

    #[test]
    fn a_torn_push_is_kept_whatever_the_limit() {
        let mut g = Bytes(0);
        let (big, next) = (g.next(100), g.next(10));
        let mut outbox = Outbox::default();
        let mut chain = chain_of(&mut outbox, vec![push(&big), push(&next)]);
        let mut sock = MockSock::new(&[Step::Take(30)]);
        let mut queue = None;
        let out = outbox
            .flush(&mut sock, true, &mut chain, &mut queue, 10, true)
            .expect("flush");
        // The torn frame's 70 bytes must finish; the next push does not fit after it.
        assert_eq!(out.dropped, 1);
        assert_eq!(queue.as_deref().map(WriteQueue::bytes), Some(70));
        outbox.clear();
        assert_eq!([sock.out, drain(&mut queue)].concat(), big);
    }

    #[test]
    fn keep_partial_front_keeps_only_a_partly_written_front_frame() {
        let mut g = Bytes(0);
        let f: Vec<Vec<u8>> = (0..3).map(|_| g.next(100)).collect();
        let mut outbox = Outbox::default();
        let mut chain = chain_of(&mut outbox, f.iter().map(|b| push(b)).collect());
        let mut sock = MockSock::new(&[Step::Take(40)]);
        let mut queue = None;
        flush_all(&mut outbox, &mut sock, &mut chain, &mut queue);
        outbox.clear();
        let q = queue.as_deref_mut().expect("queued");
        assert_eq!(q.bytes(), 260);
        q.keep_partial_front();
        assert_eq!(q.bytes(), 60);
        assert!(!q.is_empty());
        assert_eq!([sock.out, drain(&mut queue)].concat(), f[0]);
    }

    #[test]
    fn keep_partial_front_drops_everything_when_the_front_is_untouched() {
        let mut g = Bytes(0);
        let f: Vec<Vec<u8>> = (0..3).map(|_| g.next(100)).collect();
        let mut outbox = Outbox::default();
        let mut chain = chain_of(&mut outbox, f.iter().map(|b| push(b)).collect());
        // Exactly one whole frame: the queue's front starts at offset 0.
        let mut sock = MockSock::new(&[Step::Take(100)]);
        let mut queue = None;
        flush_all(&mut outbox, &mut sock, &mut chain, &mut queue);
        outbox.clear();
        let q = queue.as_deref_mut().expect("queued");
        assert_eq!(q.bytes(), 200);
        q.keep_partial_front();
        assert_eq!(q.bytes(), 0);
        assert!(q.is_empty());

        let mut fresh = WriteQueue::default();
        fresh.push(push(&f[1]));
        fresh.push(owned(&f[2]));
        assert_eq!(fresh.bytes(), 200);
        fresh.keep_partial_front();
        assert_eq!(fresh.bytes(), 0);
        assert!(fresh.is_empty());
    }

    #[test]
    fn not_writable_makes_no_call_and_queues_everything() {
        let mut g = Bytes(0);
        let f: Vec<Vec<u8>> = (0..3).map(|_| g.next(50)).collect();
        let mut outbox = Outbox::default();
        let mut chain = chain_of(&mut outbox, f.iter().map(|b| push(b)).collect());
        let mut sock = MockSock::open();
        let mut queue = None;
        let out = outbox
            .flush(&mut sock, false, &mut chain, &mut queue, NO_LIMIT, true)
            .expect("flush");
        assert!(sock.calls.is_empty(), "{:?}", sock.calls);
        assert!(out.blocked);
        assert_eq!(out.writes, 0);
        assert!(chain.is_empty());
        outbox.clear();
        assert_eq!(drain(&mut queue), f.concat());
    }

    #[test]
    fn an_interrupted_writev_is_retried() {
        let mut g = Bytes(0);
        let (a, b) = (g.next(10), g.next(20));
        let mut outbox = Outbox::default();
        let mut chain = chain_of(&mut outbox, vec![push(&a), owned(&b)]);
        let mut sock = MockSock::new(&[Step::Interrupted, Step::Interrupted, Step::Take(99)]);
        let mut queue = None;
        let out = flush_all(&mut outbox, &mut sock, &mut chain, &mut queue);
        assert_eq!(sock.calls, vec![(2, 0), (2, 0), (2, 30)]);
        assert_eq!(out.writes, 1, "only calls that wrote are counted");
        assert_eq!(out.written, 30);
        assert_eq!(sock.out, [a, b].concat());
        assert!(queue.is_none());
    }

    #[test]
    fn a_socket_error_is_returned() {
        let mut outbox = Outbox::default();
        let mut chain = chain_of(&mut outbox, vec![owned(b"reply")]);
        let mut sock = MockSock::new(&[Step::Fail(io::ErrorKind::ConnectionReset)]);
        let mut queue = None;
        let err = outbox
            .flush(&mut sock, true, &mut chain, &mut queue, NO_LIMIT, false)
            .expect_err("the error reaches the caller");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(sock.calls.len(), 1, "an error is not retried");
    }

    proptest! {
        /// Turn after turn of new frames against a socket that takes arbitrary
        /// amounts: what the socket took plus what is queued is always exactly the
        /// frames in order, and the queue's byte count says how much is queued.
        #[test]
        fn bytes_are_never_duplicated_or_lost_across_turns(
            turns in proptest::collection::vec(
                (proptest::collection::vec(1usize..200, 0..6),
                 proptest::collection::vec(0usize..400, 0..3)),
                1..20,
            ),
        ) {
            let mut g = Bytes(0);
            let mut outbox = Outbox::default();
            let mut sock = MockSock::default();
            let mut queue = None;
            let mut expected = Vec::new();
            for (i, (lens, takes)) in turns.iter().enumerate() {
                let chunks = lens
                    .iter()
                    .enumerate()
                    .map(|(j, &len)| {
                        let b = g.next(len);
                        expected.extend_from_slice(&b);
                        match (i + j) % 3 {
                            0 => push(&b),
                            1 => owned(&b),
                            _ => shared(&b),
                        }
                    })
                    .collect();
                let mut chain = chain_of(&mut outbox, chunks);
                sock.script = takes.iter().map(|&n| Step::Take(n)).collect();
                let out = flush_all(&mut outbox, &mut sock, &mut chain, &mut queue);
                outbox.clear();
                prop_assert!(sock.calls.iter().all(|c| c.0 <= IOV_MAX));
                let queued = queue.as_deref().map_or(0, WriteQueue::bytes);
                prop_assert_eq!(sock.out.len() + queued, expected.len());
                prop_assert_eq!(&sock.out[..], &expected[..sock.out.len()]);
                prop_assert_eq!(out.dropped + out.over_limit, 0);
                prop_assert!(queue.as_deref().is_none_or(|q| !q.is_empty()));
            }
            let rest = drain(&mut queue);
            prop_assert_eq!([sock.out, rest].concat(), expected);
        }
    }

    #[test]
    fn a_restored_write_queue_owes_what_the_first_one_did() {
        let mut q = WriteQueue::default();
        q.push(Chunk::Push(Arc::from(&b"hello"[..])));
        q.push(Chunk::Owned(b"!!".to_vec().into_boxed_slice()));
        q.offset = 2;
        q.bytes -= 2;
        let (offset, chunks) = q.parts();
        let chunks: Vec<(bool, Vec<u8>)> = chunks.map(|(p, b)| (p, b.to_vec())).collect();
        assert_eq!(offset, 2);
        assert_eq!(
            chunks,
            vec![(true, b"hello".to_vec()), (false, b"!!".to_vec())]
        );
        let r = WriteQueue::restore(
            offset,
            chunks.into_iter().map(|(p, b)| {
                if p {
                    Chunk::Push(Arc::from(b))
                } else {
                    Chunk::Owned(b.into_boxed_slice())
                }
            }),
        );
        assert_eq!(r.bytes(), q.bytes());
        assert_eq!(r.bytes(), 5);
    }
}
