//! Zero-downtime upgrade (issue 13) end to end: the real binary upgrades itself
//! (UPGRADE on the control port, SIGUSR2) while independent clients — raw sockets
//! with a WebSocket frame reader written here, a RESP client written here — hold
//! thousands of connections and a publisher pushes at 100 messages/s.
//!
//! What is checked is what a client can see: no connection ends or is reconnected,
//! every push arrives exactly once and in order (markers `#room:k#` in every
//! payload), every PUBLISH is answered with the right recipient count, the control
//! connection stays usable and sees only a pause, bytes queued for slow consumers and
//! half-sent frames survive, and INFO's counts are the same after. Failed upgrades
//! (a binary that exits at start-up, one that crashes mid-hand-over) leave the old
//! process serving everything. No timing assertions: deadlines are bounds to poll.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{client_frame, raise_fd_limit, unix_now, wait_until, Reply, Resp};
use hmac::{Hmac, Mac};

const SECRET: &str = "upgrade-test-secret-that-is-long-enough-for-hs256";

/// A server process this test started, with every line it (and the process it
/// upgrades to, which shares its stdout) prints.
struct Proc {
    child: Option<Child>,
    _lines: mpsc::Receiver<String>,
    ws: SocketAddr,
    control: SocketAddr,
    /// `--http`'s address, if it was asked for.
    http: Option<SocketAddr>,
    /// Processes to SIGTERM at the end (the upgraded-to one is not our child).
    pids: Arc<Mutex<Vec<u32>>>,
}

impl Proc {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wspush"));
        cmd.args(["--listen", "127.0.0.1:0", "--control", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .env(
                "RUST_LOG",
                std::env::var("WSPUSH_TEST_LOG").unwrap_or_else(|_| "error".into()),
            );
        for (k, v) in env {
            cmd.env(k, v);
        }
        if std::env::var_os("WSPUSH_TEST_LOG").is_none() {
            cmd.stderr(Stdio::null());
        }
        let mut child = cmd.spawn().expect("spawn wspush");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = lines
            .recv_timeout(Duration::from_secs(20))
            .expect("wspush did not print its ready line");
        let field = |name: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
                .parse()
                .expect("address")
        };
        let pids = Arc::new(Mutex::new(vec![child.id()]));
        let http = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http="))
            .and_then(|a| a.parse().ok());
        Proc {
            ws: field("ws="),
            control: field("control="),
            http,
            child: Some(child),
            _lines: lines,
            pids,
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// The old process's exit status, once it has exited.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    fn info(&self) -> HashMap<String, String> {
        let mut c = Resp::connect(self.control);
        let Reply::Bulk(Some(b)) = c.cmd(&["INFO"]) else {
            panic!("INFO did not answer a bulk string");
        };
        String::from_utf8_lossy(&b)
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect()
    }

    fn info_u64(&self, key: &str) -> u64 {
        self.info()
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("INFO has no {key}"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        for &pid in self.pids.lock().unwrap().iter() {
            // SAFETY: kill(2) on processes this test started (directly or through
            // an upgrade); at worst the pid is gone already.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }
}

/// An HS256 token, minted here (an independent implementation: hmac + base64).
fn token(claims: &str) -> String {
    let head = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims.as_bytes());
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{head}.{body}").as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{head}.{body}.{sig}")
}

/// One client connection and everything it received.
struct Client {
    s: TcpStream,
    /// Received bytes not yet a whole frame.
    buf: Vec<u8>,
    /// Rooms it is in.
    rooms: Vec<String>,
    /// Markers `(room, k)` received, in order.
    got: Vec<(String, u64)>,
    /// Lengths of the payloads that carried a marker (slow consumers check them).
    sizes: Vec<usize>,
    /// Text frames without a marker (joined, pong).
    texts: Vec<String>,
    /// The server closed it or it failed: never expected here.
    ended: Option<String>,
    /// It negotiated permessage-deflate.
    deflate: bool,
    /// Compressed messages received (inflated here).
    compressed: usize,
}

impl Client {
    fn connect(addr: SocketAddr, query: &str, v1: bool, small_rcvbuf: bool) -> Client {
        Client::connect_with(addr, query, v1, small_rcvbuf, false)
    }

    /// `connect`, offering permessage-deflate when `deflate`.
    fn connect_with(
        addr: SocketAddr,
        query: &str,
        v1: bool,
        small_rcvbuf: bool,
        deflate: bool,
    ) -> Client {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        if small_rcvbuf {
            // So that pushes pile up in the server's queue, not in this kernel buffer.
            sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        }
        sock.connect(&addr.into()).expect("connect");
        let mut s: TcpStream = sock.into();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut proto = String::new();
        if v1 {
            proto.push_str("Sec-WebSocket-Protocol: wspush.v1\r\n");
        }
        if deflate {
            proto.push_str("Sec-WebSocket-Extensions: permessage-deflate\r\n");
        }
        write!(
            s,
            "GET /ws{query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{proto}\r\n"
        )
        .unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = s.read(&mut chunk).expect("read the 101");
            assert!(n > 0, "closed before the 101");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        if deflate {
            assert!(
                head.to_ascii_lowercase().contains("permessage-deflate"),
                "not negotiated: {head}"
            );
        }
        buf.drain(..end);
        s.set_nonblocking(true).unwrap();
        Client {
            s,
            buf,
            rooms: Vec::new(),
            got: Vec::new(),
            sizes: Vec::new(),
            texts: Vec::new(),
            ended: None,
            deflate,
            compressed: 0,
        }
    }

    /// Reads what is there; true if anything came.
    fn poll(&mut self) -> bool {
        if self.ended.is_some() {
            return false;
        }
        let mut any = false;
        let mut chunk = [0u8; 65536];
        loop {
            match self.s.read(&mut chunk) {
                Ok(0) => {
                    self.ended = Some("EOF".into());
                    break;
                }
                Ok(n) => {
                    any = true;
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    self.ended = Some(e.to_string());
                    break;
                }
            }
        }
        self.parse();
        any
    }

    fn parse(&mut self) {
        loop {
            let b = &self.buf;
            if b.len() < 2 {
                return;
            }
            let (len, hlen) = match b[1] & 0x7f {
                126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                127 if b.len() >= 10 => {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(&b[2..10]);
                    (u64::from_be_bytes(a) as usize, 10)
                }
                126 | 127 => return,
                n => (n as usize, 2),
            };
            if b.len() < hlen + len {
                return;
            }
            let op = b[0] & 0x0f;
            let rsv1 = b[0] & 0x40 != 0;
            let mut payload = b[hlen..hlen + len].to_vec();
            self.buf.drain(..hlen + len);
            if rsv1 {
                assert!(self.deflate, "RSV1 on a connection without the extension");
                payload = inflate(&payload);
                self.compressed += 1;
            }
            match op {
                1 | 2 => self.on_message(&payload),
                8 => {
                    let code =
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    self.ended = Some(format!("close frame {code:?}"));
                }
                _ => {}
            }
        }
    }

    fn on_message(&mut self, p: &[u8]) {
        let text = String::from_utf8_lossy(p);
        let marker = text.find('#').and_then(|a| {
            let rest = &text[a + 1..];
            let b = rest.find('#')?;
            let (room, k) = rest[..b].split_once(':')?;
            Some((room.to_string(), k.parse::<u64>().ok()?))
        });
        match marker {
            Some(m) => {
                self.got.push(m);
                self.sizes.push(p.len());
            }
            None => self.texts.push(text.into_owned()),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.set_nonblocking(false).unwrap();
        self.s.write_all(bytes).expect("client write");
        self.s.set_nonblocking(true).unwrap();
    }
}

/// RFC 7692 §7.2.2: append 00 00 ff ff and inflate (each message on its own: the
/// server shares one compressed frame between recipients, so no context carries).
fn inflate(body: &[u8]) -> Vec<u8> {
    let mut input = body.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut d = flate2::Decompress::new(false);
    let mut out = Vec::with_capacity(1 << 17);
    d.decompress_vec(&input, &mut out, flate2::FlushDecompress::Sync)
        .expect("valid deflate");
    out
}

/// Reads `clients` on a thread until `stop`, then hands them back.
fn reader(mut clients: Vec<Client>, stop: Arc<AtomicBool>) -> thread::JoinHandle<Vec<Client>> {
    thread::spawn(move || loop {
        let stopping = stop.load(Ordering::SeqCst);
        let mut any = false;
        for c in clients.iter_mut() {
            any |= c.poll();
        }
        if stopping && !any {
            return clients;
        }
        if !any {
            thread::sleep(Duration::from_millis(5));
        }
    })
}

/// Publishes `#room:k#` to `rooms[k % len]` at about 100 messages/s until `stop`;
/// returns each message's room, k and reply.
fn publisher(
    control: SocketAddr,
    rooms: Vec<String>,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<Vec<(String, u64, Reply)>> {
    thread::spawn(move || {
        let mut c = Resp::connect(control);
        let mut sent = Vec::new();
        let mut k = 0u64;
        let start = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            let room = rooms[(k as usize) % rooms.len()].clone();
            // Over --compression-min-size, so deflate connections get it compressed.
            let payload = format!(
                "payload #{room}:{k}# of the upgrade test {}",
                "z".repeat(300)
            );
            let reply = c.cmd(&["PUBLISH", room.as_str(), payload.as_str()]);
            sent.push((room, k, reply));
            k += 1;
            // 100 per second on average, whatever the pauses.
            let due = start + Duration::from_millis(10 * k);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
        }
        sent
    })
}

/// Waits for the process that took over (a different `process_id`) and records it
/// for clean-up; returns its pid.
fn wait_for_new_process(p: &mut Proc, old: u32) -> u32 {
    let mut new = 0;
    assert!(
        wait_until(Duration::from_secs(30), || {
            new = p.info_u64("process_id") as u32;
            new != old
        }),
        "no new process answers the control port"
    );
    p.pids.lock().unwrap().push(new);
    new
}

const ROOMS: usize = 10;
/// 60 kB pushes queued for each slow consumer: more than the kernel buffers hold.
const BIG: u64 = 100;

#[test]
fn an_upgrade_keeps_every_connection_and_delivers_every_push_exactly_once_in_order() {
    let n: usize = std::env::var("WSPUSH_UPGRADE_TEST_CONNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    raise_fd_limit(n as u64 + 200);
    let mut p = Proc::start(
        &[
            "--threads",
            "2",
            "--jwt-secret",
            SECRET,
            "--client-join",
            "r*",
            "--max-pending",
            "64MiB",
            "--ping-interval",
            "0",
        ],
        &[],
    );
    let old_pid = p.pid();
    let exp = unix_now() + 3600;
    let rooms: Vec<String> = (0..ROOMS).map(|i| format!("r{i}")).collect();
    let mut clients = Vec::with_capacity(n);
    let mut members: HashMap<String, u64> = HashMap::new();
    for i in 0..n {
        // Two distinct rooms.
        let (a, b) = (
            &rooms[i % ROOMS],
            &rooms[(i % ROOMS + 1 + (i / ROOMS) % (ROOMS - 1)) % ROOMS],
        );
        // Half get their rooms from the token, half ask for them (by_client).
        let (claims, query_rooms) = if i % 2 == 0 {
            (
                format!(
                    r#"{{"sub":"u{}","exp":{exp},"rooms":["{a}","{b}"]}}"#,
                    i % 1000
                ),
                String::new(),
            )
        } else {
            (
                format!(r#"{{"sub":"u{}","exp":{exp}}}"#, i % 1000),
                format!("&rooms={a},{b}"),
            )
        };
        let v1 = i % 7 == 3;
        let deflate = i % 5 == 1;
        let query = format!("?token={}{query_rooms}", token(&claims));
        let mut c = Client::connect_with(p.ws, &query, v1, false, deflate);
        c.rooms = vec![a.clone(), b.clone()];
        *members.entry(a.clone()).or_default() += 1;
        *members.entry(b.clone()).or_default() += 1;
        clients.push(c);
    }
    // Slow consumers: in room "big" only, reading nothing until after the upgrade.
    let big_claims = format!(r#"{{"sub":"slow","exp":{exp},"rooms":["big"]}}"#);
    let mut slow: Vec<Client> = (0..3)
        .map(|i| {
            // One of them with compressed frames queued.
            let query = format!("?token={}", token(&big_claims));
            let mut c = Client::connect_with(p.ws, &query, false, true, i == 0);
            c.rooms = vec!["big".into()];
            c
        })
        .collect();
    // Mid-message: half a frame, or the first fragment of a message, sent before.
    let ping = br#"{"op":"ping"}"#;
    let mut partial: Vec<(Client, Vec<u8>)> = (0..6)
        .map(|i| {
            let claims = format!(r#"{{"sub":"mid{i}","exp":{exp}}}"#);
            let mut c = Client::connect(p.ws, &format!("?token={}", token(&claims)), false, false);
            let rest = if i % 2 == 0 {
                let f = client_frame(true, 1, ping);
                let cut = 4 + i;
                c.send(&f[..cut]);
                f[cut..].to_vec()
            } else {
                c.send(&client_frame(false, 1, &ping[..6]));
                client_frame(true, 0, &ping[6..])
            };
            (c, rest)
        })
        .collect();
    let total = n + slow.len() + partial.len();
    assert!(
        wait_until(Duration::from_secs(30), || p.info_u64("connected_clients")
            == total as u64),
        "not every connection opened"
    );
    // Bytes queued for the slow consumers in the old process.
    let mut ctl = Resp::connect(p.control);
    let big_payload = "x".repeat(60_000);
    for k in 0..BIG {
        let payload = format!("#big:{k}#{big_payload}");
        assert_eq!(ctl.int(&["PUBLISH", "big", payload.as_str()]), 3);
    }
    assert!(
        wait_until(Duration::from_secs(10), || p.info_u64("pending_bytes") > 0),
        "no bytes are queued for the slow consumers: the test would not test them"
    );
    // Half an HTTP upgrade request, finished after the upgrade.
    let late_token = token(&format!(r#"{{"sub":"late","exp":{exp}}}"#));
    let late_query = format!("?token={late_token}&rooms=rlate");
    let mut half: Vec<(TcpStream, Vec<u8>)> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(p.ws).expect("connect");
            let req = format!(
                "GET /ws{late_query} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            .into_bytes();
            let cut = req.len() / 2;
            s.write_all(&req[..cut]).unwrap();
            (s, req[cut..].to_vec())
        })
        .collect();
    let before = p.info();

    // Readers and the publisher run across the upgrade, and new clients keep
    // connecting: none may be refused.
    let stop_pub = Arc::new(AtomicBool::new(false));
    let stop_read = Arc::new(AtomicBool::new(false));
    let publisher = publisher(p.control, rooms.clone(), stop_pub.clone());
    let connector = {
        let stop = stop_pub.clone();
        let (ws, query) = (p.ws, late_query.clone());
        thread::spawn(move || {
            let mut late = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                // Client::connect panics unless the answer is a 101.
                late.push(Client::connect(ws, &query, false, false));
                thread::sleep(Duration::from_millis(20));
            }
            late
        })
    };
    let per = clients.len().div_ceil(4);
    let mut readers = Vec::new();
    while !clients.is_empty() {
        let rest = clients.split_off(clients.len().saturating_sub(per));
        readers.push(reader(rest, stop_read.clone()));
    }
    thread::sleep(Duration::from_secs(1));
    let upgrade_reply = ctl.cmd(&["UPGRADE"]);
    assert_eq!(
        upgrade_reply,
        Reply::Simple("OK".into()),
        "UPGRADE answered {upgrade_reply:?}"
    );
    let new_pid = wait_for_new_process(&mut p, old_pid);
    assert!(
        wait_until(Duration::from_secs(30), || p.exited().is_some()),
        "the old process did not exit"
    );
    let status = p.exited().expect("exited");
    assert!(status.success(), "the old process exited with {status}");
    thread::sleep(Duration::from_secs(1));
    stop_pub.store(true, Ordering::SeqCst);
    let sent = publisher.join().expect("publisher");
    let mut late = connector.join().expect("a connection attempt was refused");
    assert!(!late.is_empty());

    // The half-sent frames are finished on the new process, which answers them.
    for (c, rest) in &mut partial {
        c.send(rest);
    }
    // So is the half-sent upgrade request.
    for (s, rest) in &mut half {
        s.write_all(rest).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut b).expect("the 101"), 1, "closed before the 101");
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    }
    let mut expected: HashMap<&str, Vec<u64>> = HashMap::new();
    for (room, k, reply) in &sent {
        assert_eq!(
            *reply,
            Reply::Int(members[room.as_str()] as i64),
            "PUBLISH {room} #{k} was answered {reply:?}"
        );
        expected.entry(room.as_str()).or_default().push(*k);
    }
    let want = |c: &Client| -> usize {
        c.rooms
            .iter()
            .map(|r| expected.get(r.as_str()).map_or(0, Vec::len))
            .sum()
    };
    // Slow consumers read everything now.
    assert!(
        wait_until(Duration::from_secs(60), || {
            slow.iter_mut().all(|c| {
                c.poll();
                c.got.len() >= BIG as usize || c.ended.is_some()
            })
        }),
        "slow consumers did not get their queued pushes"
    );
    assert!(
        wait_until(Duration::from_secs(20), || {
            partial.iter_mut().all(|(c, _)| {
                c.poll();
                c.texts.iter().any(|t| t.contains("pong")) || c.ended.is_some()
            })
        }),
        "a half-sent frame was not finished on the new process"
    );
    // Let the readers catch up, then check every connection.
    let deadline = Instant::now() + Duration::from_secs(60);
    thread::sleep(Duration::from_millis(500));
    stop_read.store(true, Ordering::SeqCst);
    let mut all: Vec<Client> = readers
        .into_iter()
        .flat_map(|r| r.join().expect("reader"))
        .collect();
    while Instant::now() < deadline
        && all
            .iter()
            .any(|c| c.got.len() < want(c) && c.ended.is_none())
    {
        for c in all.iter_mut() {
            c.poll();
        }
        thread::sleep(Duration::from_millis(20));
    }
    for (i, c) in all.iter().enumerate() {
        assert_eq!(c.ended, None, "connection {i} ended");
        for room in &c.rooms {
            let got: Vec<u64> = c
                .got
                .iter()
                .filter(|(r, _)| r == room)
                .map(|(_, k)| *k)
                .collect();
            let want = expected.get(room.as_str()).cloned().unwrap_or_default();
            assert_eq!(
                got, want,
                "connection {i}, room {room}: not exactly once in order"
            );
        }
    }
    // permessage-deflate carried on: every push to its connections came compressed,
    // before and after, and so did the frames queued for the slow one.
    assert!(all.iter().any(|c| c.deflate));
    for (i, c) in all.iter().enumerate().filter(|(_, c)| c.deflate) {
        assert_eq!(
            c.compressed,
            c.got.len(),
            "connection {i}: an uncompressed push"
        );
    }
    assert_eq!(
        slow[0].compressed as u64, BIG,
        "the compressed slow consumer"
    );
    for (i, c) in slow.iter().enumerate() {
        assert_eq!(c.ended, None, "slow consumer {i} ended");
        let ks: Vec<u64> = c.got.iter().map(|(_, k)| *k).collect();
        assert_eq!(ks, (0..BIG).collect::<Vec<_>>(), "slow consumer {i}");
        assert!(
            c.sizes.iter().all(|&s| s > 60_000),
            "a queued push was torn"
        );
    }
    for (i, (c, _)) in partial.iter().enumerate() {
        assert_eq!(c.ended, None, "mid-message connection {i} ended");
    }
    for (i, c) in late.iter_mut().enumerate() {
        c.poll();
        assert_eq!(
            c.ended, None,
            "connection {i} made during the upgrade ended"
        );
    }
    // The counts the old process had, plus those who connected meanwhile (one user,
    // one room), and what the new one says it took.
    let extra = (late.len() + half.len()) as u64;
    let after = p.info();
    let num = |m: &HashMap<String, String>, k: &str| -> u64 { m[k].parse().unwrap() };
    for (key, more) in [
        ("connected_clients", extra),
        ("users", 1),
        ("rooms", 1),
        ("room_memberships", extra),
        ("established_slots", extra),
    ] {
        assert_eq!(num(&after, key), num(&before, key) + more, "INFO {key}");
    }
    assert_eq!(after["process_id"], new_pid.to_string());
    // Everything there was at the freeze: at least what was open before, and the
    // two half-finished upgrade requests.
    assert!(num(&after, "upgrade_taken_connections") >= (total + half.len()) as u64);
    // The publisher's and this connection were handed over, and still work.
    assert_eq!(ctl.cmd(&["PING"]), Reply::Simple("PONG".into()));
    assert_eq!(after["upgrade_taken_control_clients"], "2");
}

/// A binary for `--upgrade-binary` that runs `body` (a shell script).
fn script(name: &str, body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::temp_dir().join(format!("wspush-upgrade-{name}-{}", std::process::id()));
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// Connections and a control client that must come through a failed upgrade as if
/// nothing had happened; checks them after.
struct Survivors {
    clients: Vec<Client>,
    partial: Client,
    rest: Vec<u8>,
}

fn survivors(p: &Proc) -> Survivors {
    let clients: Vec<Client> = (0..20)
        .map(|i| {
            let mut c = Client::connect(p.ws, &format!("?user=s{i}&rooms=news"), i % 4 == 0, false);
            c.rooms = vec!["news".into()];
            c
        })
        .collect();
    let mut partial = Client::connect(p.ws, "?user=mid", false, false);
    let f = client_frame(true, 1, br#"{"op":"ping"}"#);
    partial.send(&f[..7]);
    assert!(wait_until(Duration::from_secs(10), || p
        .info_u64("connected_clients")
        == 21));
    Survivors {
        clients,
        partial,
        rest: f[7..].to_vec(),
    }
}

fn check_survivors(p: &Proc, ctl: &mut Resp, s: &mut Survivors, first: u64) {
    // Pushes after the failure arrive exactly once, after the ones before it.
    for k in first..first + 5 {
        let payload = format!("#news:{k}#");
        assert_eq!(ctl.int(&["PUBLISH", "news", payload.as_str()]), 20);
    }
    s.partial.send(&s.rest);
    assert!(wait_until(Duration::from_secs(20), || {
        s.clients.iter_mut().all(|c| {
            c.poll();
            c.got.len() as u64 >= first + 5 || c.ended.is_some()
        })
    }));
    for (i, c) in s.clients.iter().enumerate() {
        assert_eq!(c.ended, None, "connection {i} ended");
        let ks: Vec<u64> = c.got.iter().map(|(_, k)| *k).collect();
        assert_eq!(ks, (0..first + 5).collect::<Vec<_>>(), "connection {i}");
    }
    assert!(wait_until(Duration::from_secs(10), || {
        s.partial.poll();
        s.partial.texts.iter().any(|t| t.contains("pong"))
    }));
    assert_eq!(p.info_u64("connected_clients"), 21);
}

#[test]
fn a_new_binary_that_exits_at_start_up_leaves_the_old_process_serving_everything() {
    let bin = script("exit1", "exit 1");
    let bin_s = bin.to_string_lossy().into_owned();
    let mut p = Proc::start(&["--threads", "2", "--upgrade-binary", &bin_s], &[]);
    let pid = p.pid();
    let mut s = survivors(&p);
    let mut ctl = Resp::connect(p.control);
    for k in 0..3 {
        let payload = format!("#news:{k}#");
        assert_eq!(ctl.int(&["PUBLISH", "news", payload.as_str()]), 20);
    }
    match ctl.cmd(&["UPGRADE"]) {
        Reply::Error(e) => assert!(e.starts_with("ERR upgrade failed"), "{e}"),
        other => panic!("UPGRADE answered {other:?}"),
    }
    // SIGUSR2 takes the same path.
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(pid as i32, libc::SIGUSR2);
    }
    assert!(wait_until(Duration::from_secs(20), || p
        .info_u64("upgrades_failed")
        == 2));
    assert_eq!(p.info_u64("upgrades_started"), 2);
    assert_eq!(p.info_u64("process_id"), u64::from(pid));
    assert!(p.exited().is_none());
    check_survivors(&p, &mut ctl, &mut s, 3);
    let _ = std::fs::remove_file(bin);
}

#[test]
fn a_new_binary_that_dies_mid_hand_over_leaves_the_old_process_serving_everything() {
    let bin = script(
        "abort",
        &format!(
            "WSPUSH_TEST_ABORT_HANDOVER_AFTER=1 exec {} \"$@\"",
            env!("CARGO_BIN_EXE_wspush")
        ),
    );
    let bin_s = bin.to_string_lossy().into_owned();
    let p = Proc::start(&["--threads", "2", "--upgrade-binary", &bin_s], &[]);
    let pid = p.pid();
    let mut s = survivors(&p);
    let mut ctl = Resp::connect(p.control);
    // A pipelined client whose later commands are read only after the failure.
    for k in 0..3 {
        let payload = format!("#news:{k}#");
        assert_eq!(ctl.int(&["PUBLISH", "news", payload.as_str()]), 20);
    }
    match ctl.cmd(&["UPGRADE"]) {
        Reply::Error(e) => assert!(e.starts_with("ERR upgrade failed"), "{e}"),
        other => panic!("UPGRADE answered {other:?}"),
    }
    assert_eq!(p.info_u64("upgrades_failed"), 1);
    assert_eq!(p.info_u64("process_id"), u64::from(pid));
    check_survivors(&p, &mut ctl, &mut s, 3);
    let _ = std::fs::remove_file(bin);
}

#[test]
fn an_upgrade_in_cluster_mode_keeps_the_node_and_its_connections() {
    use common::redis::{start_node, unique_prefix, RedisServer};
    let redis = RedisServer::start();
    let prefix = unique_prefix("upgrade");
    let url = redis.url();
    let mut a = Proc::start(
        &[
            "--redis",
            &url,
            "--node-id",
            "node-a",
            "--cluster-prefix",
            &prefix,
            "--threads",
            "2",
        ],
        &[],
    );
    let b = start_node(std::slice::from_ref(&url), "node-b", &prefix, &[]);
    let old_pid = a.pid();
    let both_listed = |ctl: SocketAddr| matches!(Resp::connect(ctl).cmd(&["NODES"]), Reply::Array(n) if n.len() == 2);
    assert!(wait_until(Duration::from_secs(15), || both_listed(
        a.control
    ) && both_listed(
        b.control
    )));
    let channel = format!("{prefix}:room:news");
    let mut clients: Vec<Client> = (0..20)
        .map(|i| {
            let mut c = Client::connect(a.ws, &format!("?user=c{i}&rooms=news"), i % 5 == 0, false);
            c.rooms = vec!["news".into()];
            c
        })
        .collect();
    assert!(wait_until(Duration::from_secs(10), || redis
        .numsub(&channel)
        == 1));
    let mut bctl = b.control();
    let mut expected = Vec::new();
    for k in 0..5u64 {
        let payload = format!("#news:{k}#");
        assert_eq!(
            bctl.int(&["PUBLISH", "news", payload.as_str()]),
            1,
            "one other node"
        );
        expected.push(k);
    }
    // B's reply comes before Redis has written the message to A's subscriber, and
    // A's own pushes are delivered locally at once: wait until B's five are in, so
    // that the order checked below is defined.
    assert!(wait_until(Duration::from_secs(10), || {
        clients.iter_mut().all(|c| {
            c.poll();
            c.got.len() >= 5
        })
    }));
    // A's own publisher runs across the upgrade: exactly once, in order, whatever
    // Redis echoes back to either process.
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let actl = a.control;
    let publisher = thread::spawn(move || {
        let mut c = Resp::connect(actl);
        let mut k = 1000u64;
        let mut sent = Vec::new();
        while !stop2.load(Ordering::SeqCst) {
            let payload = format!("#news:{k}#");
            let r = c.cmd(&["PUBLISH", "news", payload.as_str()]);
            sent.push((k, r));
            k += 1;
            thread::sleep(Duration::from_millis(10));
        }
        sent
    });
    // And B publishes across it too: another node's messages, which the old
    // process receives until the new one is subscribed and hands over, exactly once.
    let stop3 = stop.clone();
    let bctl_addr = b.control;
    let b_publisher = thread::spawn(move || {
        let mut c = Resp::connect(bctl_addr);
        let mut k = 2000u64;
        let mut sent = Vec::new();
        while !stop3.load(Ordering::SeqCst) {
            let payload = format!("#news:{k}#");
            let r = c.cmd(&["PUBLISH", "news", payload.as_str()]);
            sent.push((k, r));
            k += 1;
            thread::sleep(Duration::from_millis(10));
        }
        sent
    });
    thread::sleep(Duration::from_millis(300));
    let mut actl2 = Resp::connect(a.control);
    assert_eq!(actl2.cmd(&["UPGRADE"]), Reply::Simple("OK".into()));
    let new_pid = wait_for_new_process(&mut a, old_pid);
    assert!(wait_until(Duration::from_secs(20), || a.exited().is_some()));
    assert!(a.exited().expect("exited").success());
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let sent = publisher.join().expect("publisher");
    for (k, r) in &sent {
        assert_eq!(*r, Reply::Int(20), "PUBLISH #{k}");
        expected.push(*k);
    }
    let from_b: Vec<u64> = b_publisher
        .join()
        .expect("B's publisher")
        .into_iter()
        .map(|(k, r)| {
            // Received by node-a's old process, its new one, or both meanwhile.
            assert!(
                matches!(r, Reply::Int(1 | 2)),
                "B's PUBLISH #{k} answered {r:?}"
            );
            k
        })
        .collect();
    // The new process subscribed the node's channels; B's pushes reach it again.
    assert!(wait_until(Duration::from_secs(10), || redis
        .numsub(&channel)
        == 1));
    assert_eq!(a.info_u64("cluster_broker_up"), 1);
    for k in 5..10u64 {
        let payload = format!("#news:{k}#");
        assert_eq!(
            bctl.int(&["PUBLISH", "news", payload.as_str()]),
            1,
            "one other node"
        );
        expected.push(k);
    }
    // One node-a all along: the same instance carries on — B never sees a second
    // node-a beside a silent old one, nor counts the room's members twice (a second
    // presence field).
    let watch_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watch_until {
        if let Reply::Array(n) = bctl.cmd(&["NODES"]) {
            assert!(n.len() <= 2, "B lists {} nodes", n.len());
        }
        if let Reply::Int(n) = bctl.cmd(&["ONLINE", "news"]) {
            assert!(n <= 20, "B counts {n} members of news");
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert!(wait_until(Duration::from_secs(10), || {
        matches!(bctl.cmd(&["ONLINE", "news"]), Reply::Int(20))
            && both_listed(b.control)
            && both_listed(a.control)
    }));
    let total = expected.len() + from_b.len();
    assert!(wait_until(Duration::from_secs(20), || {
        clients.iter_mut().all(|c| {
            c.poll();
            c.got.len() >= total || c.ended.is_some()
        })
    }));
    thread::sleep(Duration::from_millis(200));
    for (i, c) in clients.iter_mut().enumerate() {
        c.poll();
        assert_eq!(c.ended, None, "connection {i} ended");
        // Each publisher's messages exactly once and in its order (the two
        // publishers' messages interleave in no defined order).
        let ks: Vec<u64> = c.got.iter().map(|(_, k)| *k).collect();
        let ours: Vec<u64> = ks.iter().copied().filter(|k| *k < 2000).collect();
        let theirs: Vec<u64> = ks.iter().copied().filter(|k| *k >= 2000).collect();
        assert_eq!(ours, expected, "connection {i}: B's and A's pushes");
        assert_eq!(
            theirs, from_b,
            "connection {i}: B's pushes during the upgrade"
        );
    }
    assert_eq!(a.info_u64("process_id"), u64::from(new_pid));
    assert_eq!(a.info_u64("connected_clients"), 20);
}

/// `"key":value` of a JSON text (numbers and strings), enough for envelopes.
fn json_field(text: &str, key: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    match v.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

#[test]
fn positions_history_and_http_clients_survive_an_upgrade() {
    let mut p = Proc::start(
        &[
            "--threads",
            "2",
            "--history-size",
            "100",
            "--http",
            "127.0.0.1:0",
            "--access-log",
        ],
        &[],
    );
    let old_pid = p.pid();
    let mut v1 = Client::connect(p.ws, "?user=v&rooms=news", true, false);
    // Anonymous connections in no room: the smallest records there are.
    let mut bare: Vec<Client> = (0..300)
        .map(|_| Client::connect(p.ws, "", false, false))
        .collect();
    let mut ctl = Resp::connect(p.control);
    assert!(wait_until(Duration::from_secs(10), || p
        .info_u64("connected_clients")
        == 301));
    for k in 0..5 {
        let payload = format!("#news:{k}#");
        assert_eq!(ctl.int(&["PUBLISH", "news", payload.as_str()]), 1);
    }
    assert!(wait_until(Duration::from_secs(10), || {
        v1.poll();
        v1.got.len() == 5
    }));
    let envelopes = |c: &Client| -> Vec<(String, String)> {
        c.texts
            .iter()
            .filter_map(|t| Some((json_field(t, "epoch")?, json_field(t, "offset")?)))
            .collect()
    };
    // The `joined` reply: the room's epoch, offset 0.
    let (epoch, _) = envelopes(&v1).first().cloned().expect("joined");
    // A keep-alive HTTP API connection, used before and after.
    let mut api = common::http::Http::connect(p.http.expect("http= in the ready line"));
    let r = api.post_json(
        "/api/publish",
        &serde_json::json!({"room": "news", "data": "#news:5#"}),
    );
    assert_eq!(
        (r.status, r.json()),
        (200, serde_json::json!({"recipients": 1}))
    );
    assert_eq!(ctl.cmd(&["UPGRADE"]), Reply::Simple("OK".into()));
    wait_for_new_process(&mut p, old_pid);
    let r = api.post_json(
        "/api/publish",
        &serde_json::json!({"room": "news", "data": "#news:6#"}),
    );
    assert_eq!(
        (r.status, r.json()),
        (200, serde_json::json!({"recipients": 1}))
    );
    for k in 7..8 {
        let payload = format!("#news:{k}#");
        assert_eq!(ctl.int(&["PUBLISH", "news", payload.as_str()]), 1);
    }
    assert!(wait_until(Duration::from_secs(10), || {
        v1.poll();
        v1.got.len() == 8
    }));
    // Markers are in the envelopes' data; check their positions by reading them
    // again through a recovering client: same epoch, offsets 1..8.
    let mut late = Client::connect(
        p.ws,
        &format!("?user=w&rooms=news&recover=news:{epoch}:2"),
        true,
        false,
    );
    assert!(wait_until(Duration::from_secs(10), || {
        late.poll();
        late.got.len() == 6
    }));
    let joined = late.texts.first().cloned().expect("joined");
    assert_eq!(
        json_field(&joined, "recovered").as_deref(),
        Some("true"),
        "{joined}"
    );
    assert_eq!(
        json_field(&joined, "epoch").as_deref(),
        Some(epoch.as_str())
    );
    assert_eq!(json_field(&joined, "offset").as_deref(), Some("8"));
    let ks: Vec<u64> = late.got.iter().map(|(_, k)| *k).collect();
    assert_eq!(ks, vec![2, 3, 4, 5, 6, 7]);
    assert_eq!(v1.ended, None);
    assert_eq!(ctl.int(&["BROADCAST", "#all:0#"]), 302);
    assert!(wait_until(Duration::from_secs(10), || {
        bare.iter_mut().all(|c| {
            c.poll();
            !c.got.is_empty() || c.ended.is_some()
        })
    }));
    assert!(bare.iter().all(|c| c.ended.is_none()));
}

#[test]
fn systemd_is_told_ready_and_then_the_new_main_pid_on_sigusr2() {
    let path = std::env::temp_dir().join(format!("wspush-notify-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let sock = std::os::unix::net::UnixDatagram::bind(&path).expect("bind NOTIFY_SOCKET");
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let path_s = path.to_string_lossy().into_owned();
    let mut p = Proc::start(&["--threads", "2"], &[("NOTIFY_SOCKET", &path_s)]);
    let old_pid = p.pid();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1 at start-up");
    assert_eq!(&buf[..n], b"READY=1");
    let mut c = Client::connect(p.ws, "?user=a&rooms=news", false, false);
    assert!(wait_until(Duration::from_secs(10), || p
        .info_u64("connected_clients")
        == 1));
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(old_pid as i32, libc::SIGUSR2);
    }
    let n = sock.recv(&mut buf).expect("MAINPID= after the upgrade");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    let new_pid = wait_for_new_process(&mut p, old_pid);
    assert_eq!(msg, format!("MAINPID={new_pid}\nREADY=1"));
    assert!(wait_until(Duration::from_secs(10), || p.exited().is_some()));
    assert!(p.exited().expect("exited").success());
    let mut ctl = Resp::connect(p.control);
    assert_eq!(ctl.int(&["PUBLISH", "news", "#news:0#"]), 1);
    assert!(wait_until(Duration::from_secs(10), || {
        c.poll();
        !c.got.is_empty()
    }));
    // Nothing else: the new process does not claim readiness itself.
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(sock.recv(&mut buf).is_err(), "an unexpected notification");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_new_process_that_cannot_take_the_descriptors_refuses_and_the_old_one_goes_on() {
    // A lower open-file limit than the old process's: the new one cannot receive the
    // connections' descriptors, refuses the state, and nothing is lost.
    let bin = script(
        "nofile",
        &format!(
            "ulimit -n 60 && exec {} \"$@\"",
            env!("CARGO_BIN_EXE_wspush")
        ),
    );
    let bin_s = bin.to_string_lossy().into_owned();
    let p = Proc::start(
        &[
            "--threads",
            "2",
            "--max-connections",
            "1000",
            "--upgrade-binary",
            &bin_s,
        ],
        &[],
    );
    let pid = p.pid();
    let mut clients: Vec<Client> = (0..200)
        .map(|i| {
            let mut c = Client::connect(p.ws, &format!("?user=n{i}&rooms=news"), false, false);
            c.rooms = vec!["news".into()];
            c
        })
        .collect();
    assert!(wait_until(Duration::from_secs(10), || p
        .info_u64("connected_clients")
        == 200));
    let mut ctl = Resp::connect(p.control);
    match ctl.cmd(&["UPGRADE"]) {
        Reply::Error(e) => assert!(e.contains("refused the state"), "{e}"),
        other => panic!("UPGRADE answered {other:?}"),
    }
    assert_eq!(p.info_u64("process_id"), u64::from(pid));
    assert_eq!(ctl.int(&["PUBLISH", "news", "#news:0#"]), 200);
    assert!(wait_until(Duration::from_secs(10), || {
        clients.iter_mut().all(|c| {
            c.poll();
            !c.got.is_empty() || c.ended.is_some()
        })
    }));
    assert!(clients
        .iter()
        .all(|c| c.ended.is_none() && c.got.len() == 1));
    let _ = std::fs::remove_file(bin);
}

#[test]
fn a_control_client_that_half_closed_still_gets_every_reply_across_an_upgrade() {
    // `cat commands | nc -N`: every command sent, then FIN, replies read slowly. The
    // old process has run them all and read the FIN, with replies it could not write
    // yet (the kernel's buffers are full): they must reach the client from the new
    // process, not vanish with the old one.
    let p = Proc::start(&["--threads", "1"], &[]);
    let old = p.pid();
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    sock.connect(&p.control.into()).expect("connect");
    let mut s: TcpStream = sock.into();
    let arg = "e".repeat(60_000);
    // More replies than the kernel buffers hold, so the dispatcher stalls on them
    // (and reads nothing more) until the client has read enough; the PINGs at the
    // end run once it has, and the FIN is read right after them.
    let (big, pings) = (120u64, 20u64);
    let mut commands = Vec::new();
    for _ in 0..big {
        commands.extend_from_slice(&Resp::encode(&["ECHO", arg.as_str()]));
    }
    for _ in 0..pings {
        commands.extend_from_slice(&Resp::encode(&["PING"]));
    }
    let mut w = s.try_clone().unwrap();
    let writer = thread::spawn(move || {
        w.write_all(&commands).expect("send the commands");
        w.shutdown(std::net::Shutdown::Write).expect("FIN");
    });
    // Read slowly until every command has run (each INFO counts itself too), then
    // not at all: the rest waits in the dispatcher's output.
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 16384];
    let mut infos = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "the commands did not all run");
        for _ in 0..8 {
            match s.read(&mut chunk) {
                Ok(0) => panic!("EOF before the upgrade"),
                Ok(k) => got.extend_from_slice(&chunk[..k]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("{e}"),
            }
            thread::sleep(Duration::from_millis(2));
        }
        infos += 1;
        if p.info_u64("control_commands") >= big + pings + infos {
            break;
        }
    }
    writer.join().unwrap();
    let mut ctl = Resp::connect(p.control);
    assert_eq!(ctl.cmd(&["UPGRADE"]), Reply::Simple("OK".into()));
    let mut p = p;
    wait_for_new_process(&mut p, old);
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut chunk = [0u8; 65536];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(k) => got.extend_from_slice(&chunk[..k]),
            Err(e) => panic!("after {} bytes: {e}", got.len()),
        }
    }
    let one = format!("${}\r\n{arg}\r\n", arg.len());
    let mut want = one.repeat(big as usize);
    want.push_str(&"+PONG\r\n".repeat(pings as usize));
    assert_eq!(got.len(), want.len(), "bytes of every reply");
    assert!(got == want.as_bytes(), "the replies, in order");
}

#[test]
fn an_upgrade_asked_for_again_at_once_runs_in_the_new_process() {
    // A deploy that rolls twice in a row (or a pipelined client): the second UPGRADE
    // is read by the new process as soon as it serves, and must start its upgrade,
    // not be refused as if this process could not upgrade.
    let mut p = Proc::start(&["--threads", "1"], &[]);
    let old = p.pid();
    let mut ctl = Resp::connect(p.control);
    let mut both = Resp::encode(&["UPGRADE"]);
    both.extend_from_slice(&Resp::encode(&["UPGRADE"]));
    ctl.send_raw(&both);
    let first = ctl.read();
    let second = ctl.read();
    let now = wait_for_new_process(&mut p, old);
    assert_eq!(first, Reply::Simple("OK".into()));
    assert_eq!(second, Reply::Simple("OK".into()));
    // The second answer came from a third process, which serves the same client.
    assert_eq!(ctl.cmd(&["PING"]), Reply::Simple("PONG".into()));
    assert_eq!(p.info_u64("process_id"), u64::from(now));
    assert_eq!(p.info_u64("upgrade_taken_control_clients"), 1);
}

#[test]
fn an_upgrade_asked_for_again_after_a_failed_one_is_answered() {
    // Pipelined: the second UPGRADE is read once the first has failed and the old
    // process serves again; it starts an upgrade of its own (which fails the same
    // way) and is answered, never left waiting.
    let bin = script("exit1-again", "exit 1");
    let bin_s = bin.to_string_lossy().into_owned();
    let p = Proc::start(&["--threads", "1", "--upgrade-binary", &bin_s], &[]);
    let mut ctl = Resp::connect(p.control);
    let rounds = 20;
    let mut all = Vec::new();
    for _ in 0..rounds {
        all.extend_from_slice(&Resp::encode(&["UPGRADE"]));
    }
    ctl.send_raw(&all);
    for i in 0..rounds {
        match ctl.try_read() {
            Ok(Reply::Error(e)) => assert!(e.starts_with("ERR upgrade failed"), "{e}"),
            other => panic!("UPGRADE {i} answered {other:?}"),
        }
    }
    assert_eq!(p.info_u64("upgrades_failed"), rounds);
    let _ = std::fs::remove_file(bin);
}

#[test]
fn a_sigterm_while_the_new_binary_starts_waits_for_the_outcome() {
    // SIGTERM while the new binary is still starting (before it has said hello):
    // like one during the freeze, it waits for the hand-over's outcome, so the
    // connections go on in the new process instead of being closed with 1001.
    let bin = script(
        "slow-start",
        &format!("sleep 1 && exec {} \"$@\"", env!("CARGO_BIN_EXE_wspush")),
    );
    let bin_s = bin.to_string_lossy().into_owned();
    let mut p = Proc::start(&["--threads", "2", "--upgrade-binary", &bin_s], &[]);
    let old = p.pid();
    let mut c = Client::connect(p.ws, "?user=t&rooms=news", false, false);
    assert!(wait_until(Duration::from_secs(10), || p
        .info_u64("connected_clients")
        == 1));
    let mut ctl = Resp::connect(p.control);
    ctl.send(&["UPGRADE"]);
    assert!(wait_until(Duration::from_secs(10), || p
        .info_u64("upgrades_started")
        == 1));
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(old as i32, libc::SIGTERM);
    }
    let answer = ctl.try_read();
    let new = wait_for_new_process(&mut p, old);
    assert_ne!(new, old);
    assert_eq!(answer.ok(), Some(Reply::Simple("OK".into())));
    let mut ctl = Resp::connect(p.control);
    assert_eq!(ctl.int(&["PUBLISH", "news", "#news:0#"]), 1);
    assert!(wait_until(Duration::from_secs(10), || {
        c.poll();
        !c.got.is_empty() || c.ended.is_some()
    }));
    assert_eq!(c.ended, None);
    let _ = std::fs::remove_file(bin);
}

#[test]
fn no_upgrade_starts_once_the_process_is_stopping() {
    // After SIGTERM (here draining for a while) the listeners are about to close:
    // an UPGRADE is refused and SIGUSR2 is ignored, instead of passing sockets that
    // are closing to a new process.
    let p = Proc::start(&["--threads", "2", "--drain-delay", "30s"], &[]);
    let mut ctl = Resp::connect(p.control);
    assert_eq!(ctl.cmd(&["PING"]), Reply::Simple("PONG".into()));
    let old = p.pid();
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(old as i32, libc::SIGTERM);
    }
    // Draining shows once the signal has been handled (and upgrades closed).
    let ws = p.ws;
    let draining = wait_until(Duration::from_secs(10), || {
        let (_, head) = common::raw_request(ws, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n");
        head.starts_with("HTTP/1.1 503")
    });
    assert!(draining, "the server drains after SIGTERM");
    match ctl.cmd(&["UPGRADE"]) {
        Reply::Error(e) => assert!(e.contains("it is stopping"), "{e}"),
        other => panic!("UPGRADE while stopping answered {other:?}"),
    }
    // SAFETY: as above.
    unsafe {
        libc::kill(old as i32, libc::SIGUSR2);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(p.info_u64("upgrades_started"), 0);
    assert_eq!(p.pid(), old);
}
