//! The dispatcher thread: control port, routing, room counts.
