//! The control port's protocol: RESP2 parsing and encoding (`resp`) and the
//! command table (`command`). Pure code; the dispatcher does the I/O.

pub mod command;
pub mod resp;
