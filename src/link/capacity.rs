//! Process-wide admission: how many sockets are established WebSocket connections and
//! how many are still in their HTTP handshake, each against its own limit.
//!
//! Established capacity (`--max-connections`) is taken when a connection upgrades,
//! not when its socket is accepted, so sockets that never finish their request cannot
//! hold it: they draw from a separate, smaller handshake budget (`--max-handshakes`),
//! and a socket over that budget is refused at once. A slot is given back when the
//! socket is dropped (a closing connection still holds its descriptor). Every
//! reactor shares one `Capacity`; each admission is one relaxed atomic add, and a
//! refused one a second to undo it.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

#[derive(Debug)]
pub struct Capacity {
    /// Most established connections (`--max-connections`).
    pub max_open: usize,
    /// Most sockets accepted but not upgraded (`--max-handshakes`).
    pub max_handshakes: usize,
    open: AtomicUsize,
    handshaking: AtomicUsize,
}

impl Capacity {
    pub fn new(max_open: usize, max_handshakes: usize) -> Capacity {
        Capacity {
            max_open,
            max_handshakes,
            open: AtomicUsize::new(0),
            handshaking: AtomicUsize::new(0),
        }
    }

    /// Takes a handshake slot for a newly accepted socket; false if none is free.
    pub fn begin_handshake(&self) -> bool {
        take(&self.handshaking, self.max_handshakes)
    }

    /// Trades a handshake slot for an established one; false (keeping the handshake
    /// slot) if the connection limit is reached.
    pub fn open(&self) -> bool {
        if !take(&self.open, self.max_open) {
            return false;
        }
        self.handshaking.fetch_sub(1, Relaxed);
        true
    }

    /// Counts a socket taken over from the previous process (an upgrade): it exists
    /// already, so no limit refuses it.
    pub fn adopt(&self, open: bool) {
        let counter = if open { &self.open } else { &self.handshaking };
        counter.fetch_add(1, Relaxed);
    }

    /// Gives back the slot of a dropped socket.
    pub fn release(&self, was_open: bool) {
        let counter = if was_open {
            &self.open
        } else {
            &self.handshaking
        };
        counter.fetch_sub(1, Relaxed);
    }

    /// Sockets holding an established slot (open or closing after being open).
    pub fn open_count(&self) -> usize {
        self.open.load(Relaxed)
    }

    /// Sockets holding a handshake slot.
    pub fn handshaking_count(&self) -> usize {
        self.handshaking.load(Relaxed)
    }
}

fn take(counter: &AtomicUsize, max: usize) -> bool {
    if counter.fetch_add(1, Relaxed) < max {
        return true;
    }
    counter.fetch_sub(1, Relaxed);
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshakes_and_connections_have_separate_limits() {
        let c = Capacity::new(1, 2);
        assert!(c.begin_handshake());
        assert!(c.begin_handshake());
        assert!(!c.begin_handshake(), "third handshake over the budget of 2");
        assert!(c.open());
        assert_eq!((c.open_count(), c.handshaking_count()), (1, 1));
        // The connection limit is reached: the second upgrade keeps its handshake slot.
        assert!(!c.open());
        assert_eq!((c.open_count(), c.handshaking_count()), (1, 1));
        // Freed by the upgrade, the handshake slot serves a new socket.
        assert!(c.begin_handshake());
        c.release(true);
        c.release(false);
        c.release(false);
        assert_eq!((c.open_count(), c.handshaking_count()), (0, 0));
    }
}
