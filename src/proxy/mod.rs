//! The real client address behind a proxy: PROXY protocol headers (`header`),
//! `X-Forwarded-For` / `Forwarded` (`forwarded`), address ranges and limit keys
//! (`cidr`).
//!
//! Issue 8 §4: with `--proxy-protocol` every connection must start with a PROXY
//! v1 or v2 header and is closed without a valid one; `--trusted-proxy CIDR`
//! makes the forwarding headers count, from those peers only. Limits, logs and
//! INFO then use the address found here instead of the TCP peer.
//!
//! Everything here is pure (bytes in, values out): no I/O, no allocation per
//! byte or per connection, no panics on any input. The reactor owns the bytes
//! and decides what to do with an error.

pub mod cidr;
pub mod forwarded;
pub mod header;

pub use cidr::{Cidr, CidrError};
pub use forwarded::client_ip;
pub use header::{parse as parse_header, ProxyError, ProxyHeader};
