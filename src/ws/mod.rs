//! RFC 6455, server side, as pure code: bytes in, values out. Nothing in this
//! module touches a socket, a clock or a thread, so every rule can be unit- and
//! property-tested byte for byte.

pub mod close;
pub mod deflate;
pub mod envelope;
pub mod extension;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod message;
pub mod utf8;
