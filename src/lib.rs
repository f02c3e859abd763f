//! wspush — a WebSocket push gateway.
//!
//! Reactor threads (`reactor`) own the WebSocket connections; one dispatcher
//! thread (`dispatch`) owns the Redis-protocol control port (`control`) and routes
//! pushes to the reactors. `ws` is the pure RFC 6455 code both sides build on;
//! `proxy` finds the real client address behind a load balancer.
//! `history` gives room pushes their positions and keeps recent messages for
//! clients that reconnect and recover.
//! No async runtime anywhere: each thread is a plain `mio::Poll` loop.

pub mod auth;
pub mod config;
pub mod control;
pub mod demo;
pub mod dispatch;
pub mod handover;
pub mod history;
pub mod limits;
pub mod link;
pub mod names;
pub mod proxy;
pub mod reactor;
pub mod server;
pub mod ws;
