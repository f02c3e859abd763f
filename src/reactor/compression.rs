//! permessage-deflate in a reactor: taking a connection's agreement at upgrade,
//! inflating its compressed messages, compressing the frames the reactor makes
//! itself (echo replies, JSON replies, envelopes it builds), and choosing, per
//! recipient, between a push's plain and compressed shared frames.
//!
//! Must never allocate per connection: a connection's whole state is its window code
//! in three bits of `Conn::flags`. The reactor has one inflater and one deflater,
//! each made on first use and reset per message (no context takeover either way, see
//! `ws::extension`), and counts its connections with the extension so the
//! dispatcher compresses pushes only for reactors that have some.

use std::sync::Arc;

use super::commands::frame_payload;
use super::conn::{flag, Conn};
use super::outbox::Chunk;
use super::Reactor;
use crate::link::Event;
use crate::ws::close::CloseCode;
use crate::ws::deflate::{may_share, window_code, Deflater, Inflater};
use crate::ws::extension::Agreement;
use crate::ws::frame::{encode_frame, OpCode};

/// A reactor's compression state.
#[derive(Default)]
pub(super) struct Compression {
    /// Open connections here with the extension (not speaking `wspush.v1`).
    raw_conns: u32,
    /// Open `wspush.v1` connections here with the extension.
    v1_conns: u32,
    /// For the frames this reactor makes itself.
    deflater: Option<Box<Deflater>>,
    /// For compressed client messages.
    inflater: Option<Box<Inflater>>,
}

impl Reactor {
    /// Whether connection `key`, upgrading with `offer`, gets the extension; if so it
    /// is marked and counted, and the agreement goes into its 101.
    pub(super) fn take_deflate(
        &mut self,
        key: u32,
        offer: Option<Agreement>,
        v1: bool,
    ) -> Option<Agreement> {
        self.shared.settings.compression_min_size?;
        let a = offer?;
        let conn = self.conns.get_mut(key as usize)?;
        conn.set(window_code(a.server_window_bits) << flag::DEFLATE_SHIFT);
        self.count_deflate(v1, 1);
        Some(a)
    }

    /// Connection `key`, taken over by an upgrade with the extension negotiated (its
    /// window code in its flags): counted like one that just negotiated it.
    pub(super) fn adopt_deflate(&mut self, key: u32) {
        let Some(conn) = self.conns.get(key as usize) else {
            return;
        };
        if conn.deflate_code() == 0 {
            return;
        }
        let v1 = conn.has(flag::V1);
        self.count_deflate(v1, 1);
    }

    /// Connection `key` stops being open: uncounted.
    pub(super) fn drop_deflate(&mut self, key: u32) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        if conn.deflate_code() == 0 {
            return;
        }
        let v1 = conn.has(flag::V1);
        conn.clear(flag::DEFLATE);
        self.count_deflate(v1, -1);
    }

    /// One connection with the extension more (`delta` 1) or less (-1), here and, by
    /// an event, in the dispatcher (which compresses only for reactors with takers).
    fn count_deflate(&mut self, v1: bool, delta: i32) {
        let c = &mut self.compression;
        let n = if v1 {
            &mut c.v1_conns
        } else {
            &mut c.raw_conns
        };
        *n = if delta > 0 {
            n.saturating_add(1)
        } else {
            n.saturating_sub(1)
        };
        self.events.push(Event::Deflate {
            reactor: self.id,
            v1,
            delta,
        });
    }

    /// A compressed message: inflated within `--max-message` (past it: 1009; not
    /// deflate: 1007), checked as UTF-8 if text, then handled like any message.
    pub(super) fn on_compressed(&mut self, key: u32, text: bool, payload: &[u8]) {
        let max = self.shared.settings.max_message;
        let inflated = self
            .compression
            .inflater
            .get_or_insert_with(Box::default)
            .inflate(payload, max);
        match inflated {
            Err(e) => self.fail(key, e.close_code(), e.reason()),
            Ok(m) if text && std::str::from_utf8(&m).is_err() => {
                self.fail(key, CloseCode::INVALID_PAYLOAD, "invalid UTF-8")
            }
            Ok(m) => self.on_message(key, text, &m),
        }
    }

    /// A complete data frame of this reactor's own for connection `key`: compressed
    /// when it negotiated the extension and the payload is large enough to gain.
    pub(super) fn data_frame(&mut self, key: u32, opcode: OpCode, payload: &[u8]) -> Chunk {
        let code = self.conns.get(key as usize).map_or(0, Conn::deflate_code);
        let worth = self
            .shared
            .settings
            .compression_min_size
            .is_some_and(|min| payload.len() >= min);
        if worth && may_share(code, payload.len()) {
            let d = self.compression.deflater.get_or_insert_with(Box::default);
            if let Some(f) = d.frame(opcode, payload) {
                return Chunk::Owned(f.into_boxed_slice());
            }
        }
        Chunk::Owned(encode_frame(opcode, payload).into_boxed_slice())
    }

    /// An envelope built here (see `commands::push`) compressed, when some
    /// `wspush.v1` connection here can take it.
    pub(super) fn deflate_envelope(&mut self, envelope: &[u8]) -> Option<Arc<[u8]>> {
        let min = self.shared.settings.compression_min_size?;
        if self.compression.v1_conns == 0 {
            return None;
        }
        let d = self.compression.deflater.get_or_insert_with(Box::default);
        d.reframe(envelope, min).map(Arc::from)
    }
}

/// One push's frames for the recipients here: the plain and the envelope variant,
/// each with its compressed twin, entered into the outbox only when a recipient
/// first needs it.
pub(super) struct Variants {
    slots: [Slot; 4],
}

struct Slot {
    chunk: Option<Chunk>,
    idx: Option<u32>,
    /// The frame's payload length (what a small window allows depends on the
    /// plain variant's).
    len: usize,
}

impl Slot {
    fn new(frame: Option<Arc<[u8]>>) -> Slot {
        Slot {
            len: frame.as_deref().map_or(0, |f| frame_payload(f).len()),
            chunk: frame.map(Chunk::Push),
            idx: None,
        }
    }
}

impl Variants {
    pub fn new(
        frame: Arc<[u8]>,
        envelope: Option<Arc<[u8]>>,
        deflated: Option<Arc<[u8]>>,
        envelope_deflated: Option<Arc<[u8]>>,
    ) -> Variants {
        Variants {
            slots: [
                Slot::new(Some(frame)),
                Slot::new(deflated),
                Slot::new(envelope),
                Slot::new(envelope_deflated),
            ],
        }
    }

    /// The outbox frame for `conn`: its protocol's variant (the plain frame if no
    /// envelope was made), compressed if it negotiated the extension and the
    /// compressed frame exists and fits its window.
    pub fn pick(&mut self, conn: &Conn, outbox: &mut super::outbox::Outbox) -> u32 {
        let base = if conn.has(flag::V1) && self.has(2) {
            2
        } else {
            0
        };
        let code = conn.deflate_code();
        // The window limits the original payload's length (the longest possible
        // back-reference), not the compressed one's.
        let s = if code != 0 && self.has(base + 1) && may_share(code, self.slots[base].len) {
            base + 1
        } else {
            base
        };
        let slot = &mut self.slots[s];
        match (slot.idx, slot.chunk.take()) {
            (Some(i), _) => i,
            (None, Some(chunk)) => *slot.idx.insert(outbox.add_frame(chunk)),
            // Unreachable: `has` checked, and slot 0 always has a frame.
            (None, None) => super::outbox::NIL,
        }
    }

    fn has(&self, s: usize) -> bool {
        let slot = &self.slots[s];
        slot.idx.is_some() || slot.chunk.is_some()
    }
}
