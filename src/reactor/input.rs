//! Reading: socket events, the read loop, and what received bytes become.
//!
//! Every connection reads into the reactor's one scratch buffer; a connection keeps
//! bytes of its own (`Conn::input`) only while a request head or frame is incomplete.
//! Bytes become a request head while the connection is in its handshake (`upgrade`),
//! frames and then messages once it is open (`ws::message`), and nothing once it is
//! closing. Reading stops for the turn when the arena is full, and for a connection
//! whose replies are not being read. A peer that shuts its write side has what is
//! queued for it written before its socket is dropped.

use std::io::{self, Read};

use super::conn::{flag, Input, Phase};
use super::outbox::Chunk;
use super::Reactor;
use crate::link::stats::CloseReason;
use crate::ws::frame::{encode_frame, OpCode};
use crate::ws::message::{Assembler, Item};

/// Reads from one socket per event before giving others a turn.
const READS_PER_EVENT: usize = 16;

impl Reactor {
    pub(super) fn on_socket_event(
        &mut self,
        key: usize,
        readable: bool,
        read_closed: bool,
        writable: bool,
    ) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if writable {
            conn.set(flag::WRITABLE);
            if conn.output.is_some() && !conn.has(flag::DIRTY) {
                conn.set(flag::DIRTY);
                self.outbox.dirty.push(key as u32);
            }
        }
        if readable {
            if conn.has(flag::READ_PAUSED) {
                conn.set(flag::READ_PENDING);
            } else {
                self.read(key as u32, read_closed);
            }
        }
    }

    pub(super) fn read_pending(&mut self) {
        if self.read_again.is_empty() {
            return;
        }
        let keys = std::mem::take(&mut self.read_again);
        for &key in &keys {
            // `read` remembers a paused connection's unread input (READ_PENDING), so
            // reading resumes when its replies drain; no event will come for it.
            self.read(key, true);
        }
    }

    /// Reads until the socket is drained, the read budget is spent, or the connection
    /// stops wanting input. A short read normally means drained; with `to_end` (the
    /// peer's FIN or an error was reported, or nothing says what is left) reading goes
    /// on until `WouldBlock` or EOF, since an EOF that came with the last bytes raises
    /// no further edge.
    pub(super) fn read(&mut self, key: u32, to_end: bool) {
        // The replies this turn already queued for it (a read again after a spent
        // read budget), then what this read's input adds.
        self.queued_this_read = self
            .conns
            .get(key as usize)
            .map_or(0, |c| self.outbox.chain_reply_bytes(c.chain));
        let max_pending = self.shared.settings.max_pending;
        for _ in 0..READS_PER_EVENT {
            if self.outbox.over_read_budget() {
                // Reads had their share of the turn: write first, read next turn.
                break;
            }
            let Some(conn) = self.conns.get_mut(key as usize) else {
                return;
            };
            if conn.has(flag::READ_PAUSED) {
                conn.set(flag::READ_PENDING);
                return;
            }
            if conn.phase == Phase::Open && conn.pending() + self.queued_this_read > max_pending {
                // Its replies (queued and of this read) already pass --max-pending:
                // read no more until the writes tell how much of them the client took.
                // The writes resume reading once the queue is back under the bound
                // (the connection is dirty: it has replies, or a write queue waiting
                // for a writable event).
                conn.set(flag::READ_PAUSED | flag::READ_PENDING);
                return;
            }
            if conn.has(flag::PEER_EOF) {
                return;
            }
            let n = match conn.stream.read(&mut self.scratch) {
                Ok(0) => {
                    self.on_peer_eof(key);
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.close_now(key);
                    return;
                }
            };
            // Only an open connection's input proves it alive. The handshake and
            // close timeouts run from accept and from entering Closing: a peer that
            // trickles bytes must not extend them.
            if conn.phase == Phase::Open {
                conn.last_seen = super::timers::stamp(self.now);
                conn.clear(flag::PINGED);
            }
            self.local.bytes_received += n as u64;
            if let Some(log) = self.access.as_mut() {
                log.bytes_in(key, n);
            }
            if conn.phase != Phase::Closing {
                self.on_bytes(key, n);
            }
            // A short read drained the socket: with edge-triggered polling, bytes that
            // arrive later raise a new event.
            if n < self.scratch.len() && !to_end {
                return;
            }
        }
        self.read_again.push(key);
    }

    /// The peer shut down its write side. Whatever is queued for it (a reply to its
    /// last request, a 4xx, the Close answering its Close, a pong) is still written,
    /// within the close timeout; then the socket is dropped.
    fn on_peer_eof(&mut self, key: u32) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        let queued = !conn.chain.is_empty() || conn.output.is_some();
        if !queued || conn.has(flag::WRITE_SHUT) {
            self.close_now(key);
            return;
        }
        conn.set(flag::PEER_EOF);
        if conn.phase == Phase::Open {
            // It ends here, without a close handshake; `close_now` will find it
            // closing and count nothing.
            let rooms = conn.rooms.len();
            self.local.closes[CloseReason::Abnormal.index()] += 1;
            if let Some(log) = self.access.as_mut() {
                log.abnormal(key, rooms);
            }
        }
        self.begin_closing(key);
    }

    /// Handles `n` new bytes in the scratch buffer, after any the connection kept.
    fn on_bytes(&mut self, key: u32, n: usize) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        let mut boxed = conn.input.take();
        let mut local = Input::default();
        let state: &mut Input = match boxed.as_deref_mut() {
            Some(s) => s,
            None => &mut local,
        };
        let mut scratch = std::mem::take(&mut self.scratch);
        if state.buf.is_empty() {
            // The common case: the bytes are consumed in place, nothing is copied.
            let used = self.consume(key, &mut scratch[..n], state);
            if used < n {
                state.buf.extend_from_slice(&scratch[used..n]);
            }
        } else {
            state.buf.extend_from_slice(&scratch[..n]);
            let mut buf = std::mem::take(&mut state.buf);
            let used = self.consume(key, &mut buf, state);
            buf.drain(..used);
            state.buf = buf;
        }
        self.scratch = scratch;
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        conn.input = if conn.phase == Phase::Closing {
            None
        } else {
            match boxed {
                Some(b) if !b.is_idle() => Some(b),
                Some(_) => None,
                None if !local.is_idle() => Some(Box::new(local)),
                None => None,
            }
        };
    }

    /// Consumes what it can of `data`; returns the bytes used. What is left is an
    /// incomplete head or frame.
    fn consume(&mut self, key: u32, data: &mut [u8], state: &mut Input) -> usize {
        match self.conns.get(key as usize).map(|c| c.phase) {
            Some(Phase::Proxy) => self.consume_proxy_header(key, data, state),
            Some(Phase::Handshake) => self.consume_head(key, data, state),
            Some(Phase::Open) => self.consume_frames(key, data, &mut state.asm),
            Some(Phase::Closing) | None => data.len(),
        }
    }

    /// `--proxy-protocol`: the connection's first bytes are a PROXY header naming the
    /// client; without a valid one the connection is dropped (its peer is a balancer,
    /// which gets no HTTP answer).
    fn consume_proxy_header(&mut self, key: u32, data: &mut [u8], state: &mut Input) -> usize {
        match crate::proxy::parse_header(data) {
            Ok(None) => 0,
            Err(e) => {
                self.local.proxy_header_failures += 1;
                log::debug!("reactor {}: PROXY header refused: {}", self.id, e.reason());
                self.close_now(key);
                data.len()
            }
            Ok(Some((header, n))) => {
                let Some(conn) = self.conns.get_mut(key as usize) else {
                    return data.len();
                };
                conn.phase = Phase::Handshake;
                state.peer = header
                    .source
                    .map(|a| a.ip())
                    .or_else(|| conn.stream.peer_addr().ok().map(|a| a.ip()));
                n + self.consume_head(key, &mut data[n..], state)
            }
        }
    }

    /// Handles every complete frame at the start of `buf`; returns the bytes used.
    pub(super) fn consume_frames(
        &mut self,
        key: u32,
        buf: &mut [u8],
        asm: &mut Assembler,
    ) -> usize {
        let max_message = self.shared.settings.max_message;
        let mut pos = 0;
        loop {
            let Some(conn) = self.conns.get(key as usize) else {
                return buf.len();
            };
            if conn.phase != Phase::Open {
                return buf.len();
            }
            let deflate = conn.deflate_code() != 0;
            match asm.next_with(&mut buf[pos..], max_message, deflate) {
                Err(e) => {
                    self.fail(key, e.close_code(), e.reason());
                    return buf.len();
                }
                Ok((used, None)) => return pos + used,
                Ok((used, Some(item))) => {
                    pos += used;
                    self.on_item(key, item);
                }
            }
        }
    }

    fn on_item(&mut self, key: u32, item: Item<'_>) {
        match item {
            Item::Ping(payload) => self.queue(
                key,
                Chunk::Owned(encode_frame(OpCode::Pong, payload).into_boxed_slice()),
            ),
            Item::Pong => {}
            Item::Close(payload) => self.on_close_frame(key, payload),
            Item::Message { text, payload } => self.on_message(key, text, &payload),
            Item::Compressed { text, payload } => self.on_compressed(key, text, &payload),
        }
    }
}
