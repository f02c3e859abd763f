//! Running out of file descriptors (EMFILE): the reactor must back off instead of
//! spinning on accept, keep serving the connections it has, and accept the waiting
//! ones once descriptors are free again.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use tungstenite::Message;

#[test]
fn out_of_descriptors_backs_off_keeps_serving_and_recovers() {
    // 100 descriptors in all; --max-connections and --max-handshakes above that so
    // accept() itself fails.
    let server = Server::start_with_nofile(
        &[
            "--threads",
            "1",
            "--echo",
            "--max-connections",
            "1000",
            "--max-handshakes",
            "1000",
        ],
        Some(100),
    );
    let mut ctl = server.control();
    assert_eq!(ctl.cmd(&["PING"]), Reply::Simple("PONG".into()));
    let mut first = ws_connect(&server.url(""));

    // Far more sockets than the server can accept: the rest wait in the backlog. Each
    // sends the start of a request, since the listener defers accepting a connection
    // until its first bytes arrive (TCP_DEFER_ACCEPT).
    let mut pending: Vec<TcpStream> = (0..150)
        .map(|_| {
            let mut s = TcpStream::connect(server.ws).expect("connect");
            s.write_all(b"GET /ws HTTP/1.1\r\n").expect("write");
            s
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(10), || server_info_u64(
            &mut ctl,
            "accept_pauses"
        ) > 0),
        "accept never failed with EMFILE"
    );

    // No busy loop: a spinning accept would burn a whole core.
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    let before = server.cpu_ticks();
    std::thread::sleep(Duration::from_secs(2));
    let used = server.cpu_ticks() - before;
    assert!(
        used < ticks_per_s,
        "server used {used} ticks of CPU in 2 s while out of descriptors"
    );

    // Existing connections are still served.
    first.send(Message::text("still here")).unwrap();
    assert_eq!(next_text(&mut first), "still here");

    // Free descriptors: the waiting connections are accepted and can upgrade.
    pending.truncate(10);
    let mut late = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            late = try_ws_connect(&server.url("")).ok();
            late.is_some()
        }),
        "no new connection was accepted after descriptors were freed"
    );
    let mut late = late.unwrap();
    late.send(Message::text("late")).unwrap();
    assert_eq!(next_text(&mut late), "late");
}

fn server_info_u64(ctl: &mut Resp, key: &str) -> u64 {
    match ctl.cmd(&["INFO", "stats"]) {
        Reply::Bulk(Some(b)) => String::from_utf8_lossy(&b)
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}:")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0),
        other => panic!("INFO replied {other:?}"),
    }
}
