//! permessage-deflate on the push path: each pushed message is compressed here at
//! most once per variant (the plain frame, the `wspush.v1` envelope), and only while
//! a reactor it goes to has a connection that negotiated the extension and takes that
//! variant; the compressed frames are shared (`Arc`) like the plain ones.
//!
//! Why here and not in the reactors: the dispatcher is the one place that sees a
//! message before it fans out, so one compression serves every recipient on every
//! reactor, with no lock and no race over who compresses. The cost is the
//! dispatcher's: about 11 µs for a 1 KB JSON message (level 3, see README
//! "Compression"). Never compresses for a node without such connections, and never
//! a payload under `--compression-min-size`.

use std::sync::Arc;

use crate::link::Deflated;
use crate::ws::deflate::Deflater;

/// The dispatcher's compression state.
pub(super) struct Compression {
    /// `--compression-min-size`; `None`: compression is off.
    min_size: Option<usize>,
    /// Per reactor: open connections with the extension, [plain, wspush.v1].
    online: Vec<[u64; 2]>,
    /// Made on first use (zlib's state is ~260 KiB).
    deflater: Option<Box<Deflater>>,
    /// Frames compressed, and their bytes before and after (for /metrics: what
    /// compression saves per frame; multiply by its recipients for the wire).
    pub compressed: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

impl Compression {
    pub fn new(reactors: usize, min_size: Option<usize>) -> Compression {
        Compression {
            min_size,
            online: vec![[0; 2]; reactors],
            deflater: None,
            compressed: 0,
            bytes_before: 0,
            bytes_after: 0,
        }
    }

    /// `Event::Deflate`.
    pub fn count(&mut self, reactor: usize, v1: bool, delta: i32) {
        if let Some(c) = self.online.get_mut(reactor) {
            let n = &mut c[usize::from(v1)];
            *n = (*n as i64 + i64::from(delta)).max(0) as u64;
        }
    }

    /// Open connections with the extension on every reactor (INFO).
    pub fn connections(&self) -> u64 {
        self.online.iter().map(|c| c[0] + c[1]).sum()
    }

    /// The compressed twins of a push's `frame` and `envelope` for the reactors it
    /// goes to, each only if one of them has a connection that takes it.
    pub fn deflate(
        &mut self,
        reactors: &[usize],
        frame: &[u8],
        envelope: Option<&[u8]>,
    ) -> Deflated {
        let Some(min) = self.min_size else {
            return Deflated::default();
        };
        let (mut plain, mut v1) = (false, false);
        for &r in reactors {
            if let Some(c) = self.online.get(r) {
                plain |= c[0] > 0;
                v1 |= c[1] > 0;
            }
        }
        if !plain && !v1 {
            return Deflated::default();
        }
        let d = self.deflater.get_or_insert_with(Box::default);
        let (n, before, after) = (
            &mut self.compressed,
            &mut self.bytes_before,
            &mut self.bytes_after,
        );
        let mut make = |f: &[u8]| {
            let out = d.reframe(f, min).map(Arc::<[u8]>::from);
            if let Some(c) = &out {
                *n += 1;
                *before += f.len() as u64;
                *after += c.len() as u64;
            }
            out
        };
        Deflated {
            // A wspush.v1 connection gets the plain frame when no envelope is made.
            frame: (plain || (v1 && envelope.is_none()))
                .then(|| make(frame))
                .flatten(),
            envelope: envelope.filter(|_| v1).and_then(&mut make),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::frame::{encode_frame, OpCode};

    #[test]
    fn compresses_only_for_reactors_with_takers_and_only_what_they_take() {
        let big = encode_frame(OpCode::Text, &b"{\"k\":\"value\"}".repeat(40));
        let mut c = Compression::new(2, Some(256));
        assert!(c.deflate(&[0, 1], &big, Some(&big)).frame.is_none());
        c.count(1, false, 1);
        let d = c.deflate(&[0], &big, Some(&big));
        assert!(
            d.frame.is_none() && d.envelope.is_none(),
            "reactor 0 has none"
        );
        let d = c.deflate(&[0, 1], &big, Some(&big));
        assert!(d.frame.is_some() && d.envelope.is_none(), "no v1 taker");
        c.count(1, false, -1);
        c.count(1, true, 1);
        let d = c.deflate(&[1], &big, Some(&big));
        assert!(d.frame.is_none() && d.envelope.is_some());
        let d = c.deflate(&[1], &big, None);
        assert!(
            d.frame.is_some(),
            "v1 takes the plain frame without an envelope"
        );
        let small = encode_frame(OpCode::Text, b"tiny");
        assert!(c.deflate(&[1], &small, None).frame.is_none());
        let mut off = Compression::new(2, None);
        off.count(0, false, 1);
        assert!(off.deflate(&[0], &big, None).frame.is_none());
    }
}
