//! The control port's protocol: RESP2 parsing and encoding (`resp`) and the
//! command table (`command`); and the client side of RESP2 (`reply`), which the
//! cluster broker uses to read what Redis answers.
//!
//! All three are pure code — bytes in, values out — so they can be unit-tested and
//! fuzzed without sockets. They never do I/O, never block and never panic on
//! client input; the dispatcher owns the sockets and calls them:
//!
//! ```text
//! read → buf.extend → loop { Parser::parse(&buf) → drain consumed →
//!     not yet authenticated: allowed_before_auth(name) or AuthError::NoAuth, first
//!     Parsed::Command(args) → Command::parse(args, max_message) → execute → resp::write_*
//!     Parsed::TooLarge{..}  → resp::write_error(too_large_error().message())
//!     Err(ProtocolError)    → resp::write_error(e.message()), flush, close }
//! ```

pub mod command;
pub mod reply;
pub mod resp;
