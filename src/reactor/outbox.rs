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

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;

/// Most slices handed to one `writev` (Linux `IOV_MAX`).
pub const IOV_MAX: usize = 1024;

/// "No entry" in a chain.
pub const NIL: u32 = u32::MAX;

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
    pub fn keep_partial_front(&mut self) {
        let keep = usize::from(self.offset > 0);
        self.chunks.truncate(keep);
        self.bytes = self
            .chunks
            .front()
            .map_or(0, |c| c.bytes().len() - self.offset);
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
    pub fn add_frame(&mut self, chunk: Chunk) -> u32 {
        self.frames.push(chunk);
        (self.frames.len() - 1) as u32
    }

    /// Appends frame `frame` to a connection's chain. Returns true if the chain was
    /// empty (the caller then marks the connection dirty).
    pub fn append(&mut self, chain: &mut Chain, frame: u32) -> bool {
        let idx = self.links.len() as u32;
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
        self.frames.clear();
        self.links.clear();
        self.dirty.clear();
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
