//! wspush-floor: the least a WebSocket server can do per handshake, to measure how much
//! of wspush's handshake cost is its own and how much is the kernel's.
//!
//! It makes exactly the system calls wspush makes for a connection and nothing else:
//! one listener per thread (`SO_REUSEPORT`, `TCP_DEFER_ACCEPT`, `TCP_NODELAY` set on
//! the listener so sockets inherit it), `accept4` in batches of at most 64, one `read`
//! right after the accept (the request is there already), the accept key (SHA-1 +
//! base64, the same crates), one `write` of a fixed 101, and one `epoll_ctl` to hear
//! about the connection later. No parsing beyond finding the key, no rooms, no users,
//! no dispatcher, no timers. Whatever wspush costs above this in the same
//! `scripts/bench-conns.sh` run is wspush's own work; this binary's cost is the floor
//! any server doing accept + read + register + write pays on that machine.
//!
//! It must never be used as a server: it accepts anything with a key, answers any
//! data after the upgrade with a Close frame and drops the socket.
//!
//! Flags (the subset bench-conns.sh passes): `--threads N` (2), `--listen ADDR`
//! (127.0.0.1:8080), `--control ADDR` (bound and never served, so the script finds
//! the `control=` address it expects in the ready line).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use sha1::{Digest, Sha1};
use slab::Slab;
use socket2::{Domain, Protocol, Socket, Type};

const LISTENER: Token = Token(usize::MAX);
const ACCEPTS_PER_TURN: usize = 64;
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

struct Flags {
    threads: usize,
    listen: SocketAddr,
    control: SocketAddr,
}

fn parse_flags() -> Result<Flags, String> {
    let mut flags = Flags {
        threads: 2,
        listen: ([127, 0, 0, 1], 8080).into(),
        control: ([127, 0, 0, 1], 7379).into(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--threads" => flags.threads = value.parse().map_err(|e| bad(&e))?,
            "--listen" => flags.listen = value.parse().map_err(|e| bad(&e))?,
            "--control" => flags.control = value.parse().map_err(|e| bad(&e))?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if flags.threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    Ok(flags)
}

fn listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.set_nodelay(true)?;
    let secs: libc::c_int = 10;
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
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// The value of the `Sec-WebSocket-Key` header of a complete request head.
fn find_key(head: &[u8]) -> Option<&[u8]> {
    const NAME: &[u8] = b"sec-websocket-key:";
    head.split(|&b| b == b'\n').find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        (line.len() > NAME.len() && line[..NAME.len()].eq_ignore_ascii_case(NAME))
            .then(|| line[NAME.len()..].trim_ascii())
    })
}

/// Writes the 101 for `head` into `out`; its length, or None if there is no key.
fn response(head: &[u8], out: &mut [u8; 256]) -> Option<usize> {
    let key = find_key(head)?;
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(GUID);
    let mut accept = [0u8; 28];
    let n = BASE64.encode_slice(sha1.finalize(), &mut accept).ok()?;
    let mut w = &mut out[..];
    w.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ").ok()?;
    w.write_all(&accept[..n]).ok()?;
    w.write_all(b"\r\n\r\n").ok()?;
    let left = w.len();
    Some(out.len() - left)
}

struct Conn {
    stream: TcpStream,
    /// Still waiting for the end of its request head (rare: the listener defers
    /// accept until the first bytes are there).
    head: Option<Vec<u8>>,
}

fn reactor(listener: std::net::TcpListener) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::from_std(listener);
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut conns: Slab<Conn> = Slab::new();
    let mut events = Events::with_capacity(1024);
    let mut buf = [0u8; 4096];
    let mut out = [0u8; 256];
    let mut accept_pending = false;
    loop {
        let timeout = accept_pending.then_some(std::time::Duration::ZERO);
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut accept_now = accept_pending;
        for ev in events.iter() {
            if ev.token() == LISTENER {
                accept_now = true;
                continue;
            }
            let key = ev.token().0;
            let Some(conn) = conns.get_mut(key) else {
                continue;
            };
            let keep = serve(conn, &mut buf, &mut out);
            if !keep {
                let mut c = conns.remove(key);
                let _ = poll.registry().deregister(&mut c.stream);
            }
        }
        accept_pending = false;
        if accept_now {
            accept_pending = true;
            for _ in 0..ACCEPTS_PER_TURN {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let mut conn = Conn {
                            stream,
                            head: Some(Vec::new()),
                        };
                        // Read before registering, as wspush does.
                        if !serve(&mut conn, &mut buf, &mut out) {
                            continue;
                        }
                        let entry = conns.vacant_entry();
                        let token = Token(entry.key());
                        if poll
                            .registry()
                            .register(&mut conn.stream, token, Interest::READABLE)
                            .is_ok()
                        {
                            entry.insert(conn);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        accept_pending = false;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        accept_pending = false;
                        break;
                    }
                }
            }
        }
    }
}

/// Reads what the socket has: completes the handshake, or after it answers any data
/// with a Close frame. False when the socket should be dropped.
fn serve(conn: &mut Conn, buf: &mut [u8; 4096], out: &mut [u8; 256]) -> bool {
    loop {
        let n = match conn.stream.read(buf) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        };
        let Some(head) = conn.head.as_mut() else {
            let _ = conn.stream.write(&[0x88, 0x00]);
            return false;
        };
        let complete = if head.is_empty() && buf[..n].ends_with(b"\r\n\r\n") {
            // The usual case: the whole head in one read, no copy.
            Some(response(&buf[..n], out))
        } else {
            head.extend_from_slice(&buf[..n]);
            if head.len() > 16 * 1024 {
                return false;
            }
            head.windows(4)
                .any(|w| w == b"\r\n\r\n")
                .then(|| response(head, out))
        };
        match complete {
            None => {}
            Some(None) => return false,
            Some(Some(len)) => {
                conn.head = None;
                if conn.stream.write(&out[..len]).ok() != Some(len) {
                    return false;
                }
            }
        }
    }
}

fn main() {
    let flags = match parse_flags() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("wspush-floor: {e}");
            std::process::exit(2);
        }
    };
    let first = match listener(flags.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("wspush-floor: cannot listen on {}: {e}", flags.listen);
            std::process::exit(2);
        }
    };
    let (ws, control) = match (
        first.local_addr(),
        std::net::TcpListener::bind(flags.control),
    ) {
        (Ok(ws), Ok(control)) => (ws, control),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("wspush-floor: cannot start: {e}");
            std::process::exit(2);
        }
    };
    let mut listeners = vec![first];
    for _ in 1..flags.threads {
        match listener(ws) {
            Ok(l) => listeners.push(l),
            Err(e) => {
                eprintln!("wspush-floor: cannot listen on {ws}: {e}");
                std::process::exit(2);
            }
        }
    }
    let threads: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            std::thread::Builder::new()
                .name(format!("floor-{i}"))
                .spawn(move || reactor(l))
        })
        .collect();
    println!(
        "floor ready: ws={ws} control={}",
        control
            .local_addr()
            .map_or_else(|e| e.to_string(), |a| a.to_string())
    );
    for t in threads {
        match t.map(|h| h.join()) {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => eprintln!("wspush-floor: reactor stopped: {e}"),
            Ok(Err(_)) => eprintln!("wspush-floor: reactor panicked"),
            Err(e) => eprintln!("wspush-floor: cannot start a reactor: {e}"),
        }
    }
    drop(control);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_the_rfc_6455_sample_key_with_its_accept_value() {
        let head = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nsec-websocket-key:  dGhlIHNhbXBsZSBub25jZQ== \r\nSec-WebSocket-Version: 13\r\n\r\n";
        let mut out = [0u8; 256];
        let n = response(head, &mut out).expect("a key is there");
        let text = std::str::from_utf8(&out[..n]).unwrap();
        assert!(text.starts_with("HTTP/1.1 101 "), "{text}");
        assert!(text.contains("\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"));
    }

    #[test]
    fn a_head_without_a_key_gets_no_response() {
        let mut out = [0u8; 256];
        assert_eq!(
            response(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &mut out),
            None
        );
    }
}
