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
//!
//! Two options save system calls per connection. `TCP_NODELAY` is set on the listener
//! because Linux copies it into every accepted socket (a test below checks it), so no
//! `setsockopt` per connection. `TCP_DEFER_ACCEPT` makes the kernel hand a connection
//! to `accept` only once its first bytes (the request) have arrived, so the reactor
//! reads it right after accepting instead of waiting one more poll round for it; a
//! client that connects and sends nothing costs no descriptor for that long (the
//! handshake timeout, in whole seconds).

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

/// Listen backlog per socket (capped by net.core.somaxconn).
pub const BACKLOG: i32 = 4096;

fn bind_one(addr: SocketAddr, defer: Duration) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    // Pushes are already batched per writev; Nagle would only add latency.
    socket.set_nodelay(true)?;
    set_defer_accept(&socket, defer)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

fn set_defer_accept(socket: &Socket, d: Duration) -> io::Result<()> {
    let secs: libc::c_int = d.as_secs().clamp(1, 3600) as libc::c_int;
    // SAFETY: a valid socket descriptor, and a pointer to an int with its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&secs as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Binds `n` listening sockets to `addr` (the first one decides a port-0 address).
/// `defer` is how long the kernel may hold a connection that has sent nothing.
pub fn bind_listeners(
    addr: SocketAddr,
    n: usize,
    defer: Duration,
) -> io::Result<Vec<std::net::TcpListener>> {
    let first = bind_one(addr, defer)?;
    let actual = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..n {
        all.push(bind_one(actual, defer)?);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn accepted_sockets_inherit_nodelay_and_arrive_with_their_first_bytes() {
        let l = bind_listeners("127.0.0.1:0".parse().unwrap(), 1, Duration::from_secs(1))
            .unwrap()
            .remove(0);
        let addr = l.local_addr().unwrap();
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        // Deferred: nothing to accept before the client has sent something.
        std::thread::sleep(Duration::from_millis(50));
        assert!(l.accept().is_err(), "accepted before any byte arrived");
        c.write_all(b"GET").unwrap();
        let mut accepted = None;
        for _ in 0..200 {
            if let Ok((s, _)) = l.accept() {
                accepted = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let s = accepted.expect("connection with data was never accepted");
        assert!(s.nodelay().unwrap(), "TCP_NODELAY was not inherited");
        let mut buf = [0u8; 8];
        s.set_nonblocking(true).unwrap();
        assert_eq!(std::io::Read::read(&mut &s, &mut buf).unwrap(), 3);
    }
}
