//! Review: edge-triggered reading. Every byte a peer sent must eventually be read
//! without the peer having to send more, whatever pausing, read budgets or short
//! reads happened in between — on WebSocket connections and on the control port.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::*;

/// A WebSocket client that sends a large burst of frames without reading, then
/// reads: every frame must be echoed. The server pauses reading while the echoes
/// are not being read and resumes when they drain; with a read budget per turn, the
/// bytes left in the socket after a budget-limited read must still be read once
/// reading resumes, even though the client sends nothing more (no new edge).
#[test]
fn review_echo_of_a_burst_completes_after_read_pauses() {
    let server = Server::start(&[
        "--echo",
        "--threads",
        "1",
        "--max-pending",
        "1",
        "--ping-interval",
        "0",
        "--idle-timeout",
        "0",
    ]);
    let mut s = raw_upgrade(server.ws, "");
    // Warm up: echo a lot while reading concurrently, so the kernel grows the
    // server's receive buffer (it autotunes to how fast the server reads).
    burst_and_read(&mut s, 4096, true);
    // Then read slowly: a small receive buffer makes the server's echoes block.
    socket2::SockRef::from(&s)
        .set_recv_buffer_size(256 << 10)
        .expect("SO_RCVBUF");
    for _ in 0..ROUNDS {
        burst_and_read(&mut s, 512, false);
    }
}

/// Sends `frames` binary frames (in a thread) and reads all their echoes; unless
/// `concurrent`, reading starts only once the writer is done (or after a while).
fn burst_and_read(s: &mut TcpStream, frames: usize, concurrent: bool) {
    const SIZE: usize = 4000;
    let mut burst = Vec::with_capacity(frames * (SIZE + 8));
    for i in 0..frames {
        let mut p = vec![b'x'; SIZE];
        p[..8].copy_from_slice(format!("{i:08}").as_bytes());
        burst.extend_from_slice(&client_frame(true, 0x2, &p));
    }
    let done = Arc::new(AtomicBool::new(false));
    let mut w = s.try_clone().unwrap();
    let writer = {
        let done = done.clone();
        thread::spawn(move || {
            w.write_all(&burst).expect("write burst");
            done.store(true, Ordering::SeqCst);
        })
    };
    if !concurrent {
        // Let the burst pile up in the kernel buffers before reading anything.
        wait_until(Duration::from_secs(1), || done.load(Ordering::SeqCst));
    }
    for i in 0..frames {
        let (fin, op, p) =
            read_server_frame(s).unwrap_or_else(|e| panic!("echo {i} of {frames} never came: {e}"));
        assert!(fin);
        assert_eq!(op, 0x2);
        assert_eq!(&p[..8], format!("{i:08}").as_bytes());
    }
    writer.join().unwrap();
}

const ROUNDS: usize = 20;

/// A client whose last bytes and FIN arrive together (one segment) must be seen to
/// close: with pings and the idle timeout off, nothing else would ever reap it.
#[test]
fn review_fin_arriving_with_data_closes_the_connection() {
    let server = Server::start(&[
        "--threads",
        "1",
        "--ping-interval",
        "0",
        "--idle-timeout",
        "0",
    ]);
    let s = raw_upgrade(server.ws, "");
    assert_info_eventually(&server, "connected_clients", 1);
    // TCP_CORK holds the frame back, so close() sends it and the FIN in one segment.
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads one c_int from a valid pointer.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            libc::IPPROTO_TCP,
            libc::TCP_CORK,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    let mut w = &s;
    // An unsolicited Pong: valid, and it asks for no reply.
    w.write_all(&client_frame(true, 0xA, b"")).unwrap();
    drop(s);
    assert_info_eventually(&server, "connected_clients", 0);
}

/// A control client that pipelines small commands with large replies (INFO) past the
/// dispatcher's output soft limit gets every reply. The commands all arrive in one
/// read, so after the dispatcher stops at the soft limit and writes its
/// replies, no socket event will ever come for the rest.
#[test]
fn review_control_info_pipeline_past_the_output_soft_limit_is_answered_fully() {
    let server = Server::start(&["--threads", "1"]);
    let mut c = server.control();
    for round in 0..8 {
        const N: usize = 1500;
        let mut req = Vec::new();
        for _ in 0..N {
            req.extend_from_slice(b"INFO\r\n");
        }
        req.extend_from_slice(b"PING\r\n");
        c.send_raw(&req);
        for i in 0..N {
            match c.try_read() {
                Ok(Reply::Bulk(Some(_))) => {}
                other => panic!("round {round}: reply {i} of {N}: {other:?}"),
            }
        }
        assert_eq!(c.read(), Reply::Simple("PONG".into()), "round {round}");
    }
}
