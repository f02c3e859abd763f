//! What a reactor has confirmed to a client is visible to the next control command:
//! once a WebSocket client has its 101 for `?rooms=X`, a PUBLISH to X counts it and
//! reaches it — even when the dispatcher is in the middle of a long turn of
//! pipelined commands from the very connection that sends the PUBLISH.
//!
//! Against the real binary. The race is real (no hooks into the server), so on a
//! server that checks counts only once per turn it fails on some iterations, not all.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::*;

/// PINGs the filler keeps in flight: enough that the dispatcher's turns are long
/// (it reads and runs them in one turn), few enough that a PUBLISH written behind
/// them is reached in the same turn.
const IN_FLIGHT: u64 = 2000;
const PINGS_PER_WRITE: u64 = 200;
const ROOMS: usize = 300;

#[test]
fn publish_right_after_the_101_counts_and_reaches_the_new_member() {
    let server = Server::start(&["--threads", "2"]);
    let control = TcpStream::connect(server.control).expect("connect control");
    control.set_nodelay(true).unwrap();
    control
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let writer = Arc::new(Mutex::new(control.try_clone().unwrap()));
    let reader = BufReader::new(control);
    let stop = Arc::new(AtomicBool::new(false));
    let pongs = Arc::new(AtomicU64::new(0));

    // Replies come back in order: +PONG for the filler, an integer for each PUBLISH.
    let (counts_tx, counts_rx) = mpsc::channel::<i64>();
    let reading = {
        let pongs = pongs.clone();
        thread::spawn(move || {
            for line in reader.lines() {
                let Ok(line) = line else { return };
                if line == "+PONG" {
                    pongs.fetch_add(1, Ordering::Relaxed);
                } else if let Some(n) = line.strip_prefix(':') {
                    if counts_tx.send(n.parse().expect("integer reply")).is_err() {
                        return;
                    }
                } else {
                    panic!("unexpected reply {line:?}");
                }
            }
        })
    };
    let filling = {
        let (writer, stop, pongs) = (writer.clone(), stop.clone(), pongs.clone());
        thread::spawn(move || {
            let batch = "PING\r\n".repeat(PINGS_PER_WRITE as usize);
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if sent - pongs.load(Ordering::Relaxed) + PINGS_PER_WRITE > IN_FLIGHT {
                    thread::yield_now();
                    continue;
                }
                if writer.lock().unwrap().write_all(batch.as_bytes()).is_err() {
                    return;
                }
                sent += PINGS_PER_WRITE;
            }
        })
    };

    let mut zero_replies = Vec::new();
    for i in 0..ROOMS {
        let room = format!("race-{i}");
        let mut ws = ws_connect(&server.url(&format!("?rooms={room}")));
        let msg = format!("to {room}");
        writer
            .lock()
            .unwrap()
            .write_all(&Resp::encode(&["PUBLISH", &room, &msg]))
            .unwrap();
        let n = counts_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("PUBLISH was answered");
        if n != 1 {
            zero_replies.push((room.clone(), n));
            continue;
        }
        assert_eq!(next_text(&mut ws), msg, "{room}'s member got its message");
    }
    stop.store(true, Ordering::Relaxed);
    filling.join().unwrap();
    drop(writer);
    drop(counts_rx);
    assert!(
        zero_replies.is_empty(),
        "PUBLISH right after the 101 missed the new member ({} of {ROOMS}): {:?}",
        zero_replies.len(),
        &zero_replies[..zero_replies.len().min(10)]
    );
    // The reader ends when the server goes away with the test.
    drop(server);
    let _ = reading.join();
}
