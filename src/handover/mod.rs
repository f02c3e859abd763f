//! Zero-downtime upgrade: the running process starts the new binary and hands it
//! its listening sockets, then every connection with its state, over a Unix socket.
//!
//! ```text
//! format    pure: the versioned state format (frames, connection and client records)
//! fds       SCM_RIGHTS: descriptors across the Unix socket, and the framing
//! process   the two sides: the old process's coordinator thread, the new one's start
//! ```
//!
//! `format` and `fds` sit at the bottom of the layering (like `ws/`): `link` and the
//! reactors use their types. `process` sits at the top, beside `server`: it starts
//! a server from inherited sockets and drives the dispatcher and reactors through
//! `link::handover`. The README's "Upgrading without dropping connections" is the
//! operator's view; `process` explains the protocol and its commit point.

pub mod fds;
pub mod format;
pub mod process;
