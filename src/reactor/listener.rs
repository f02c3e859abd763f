//! The WebSocket listening sockets: one per reactor, all bound to the same address
//! with `SO_REUSEPORT`.
//!
//! Why one socket per reactor rather than one shared listener: the kernel spreads
//! incoming connections over the sockets by flow hash, so reactors never contend on
//! one accept queue, no reactor is woken for a connection another one takes (no
//! thundering herd), and no lock or hand-off thread sits on the accept path. The cost
//! — a reactor that stalls leaves its share of the backlog waiting — is the same as
//! any per-thread design. Port 0 works: the first socket picks the port and the others
//! bind to it.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Listen backlog per socket (capped by net.core.somaxconn).
pub const BACKLOG: i32 = 4096;

fn bind_one(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Binds `n` listening sockets to `addr` (the first one decides a port-0 address).
pub fn bind_listeners(addr: SocketAddr, n: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let first = bind_one(addr)?;
    let actual = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..n {
        all.push(bind_one(actual)?);
    }
    Ok(all)
}
