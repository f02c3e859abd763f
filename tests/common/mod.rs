//! Test harness: starts the real `wspush` binary on ephemeral ports, stops it when
//! the test ends, and gives independent clients — tungstenite for WebSocket, a
//! tiny RESP client written here (not the server's parser), raw sockets for
//! malformed input.
#![allow(dead_code)]

pub mod http;
pub mod redis;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tungstenite::protocol::WebSocket;

/// A running server process; SIGTERM + wait on drop.
pub struct Server {
    child: Option<Child>,
    pub ws: SocketAddr,
    pub control: SocketAddr,
    /// The HTTP API's address, when started with `--http`.
    pub http: Option<SocketAddr>,
    pub pid: u32,
}

impl Server {
    /// Starts `wspush` with `args`; `--listen`/`--control` default to 127.0.0.1:0.
    pub fn start(args: &[&str]) -> Server {
        Self::start_with_nofile(args, None)
    }

    /// Like `start`, with the child's RLIMIT_NOFILE (soft and hard) set to `nofile`.
    pub fn start_with_nofile(args: &[&str], nofile: Option<u64>) -> Server {
        let mut cmd = command(args, nofile);
        cmd.env(
            "RUST_LOG",
            std::env::var("WSPUSH_TEST_LOG").unwrap_or_else(|_| "error".into()),
        );
        if std::env::var_os("WSPUSH_TEST_LOG").is_none() {
            cmd.stderr(Stdio::null());
        }
        Self::spawn(cmd)
    }

    /// Like `start`, with `RUST_LOG=rust_log` and `env` set, and every line the
    /// server writes on stderr (its log) handed to the returned receiver.
    pub fn start_logged(
        args: &[&str],
        rust_log: &str,
        env: &[(&str, &str)],
    ) -> (Server, mpsc::Receiver<String>) {
        let mut cmd = command(args, None);
        cmd.env("RUST_LOG", rust_log).envs(env.iter().copied());
        cmd.stderr(Stdio::piped());
        let mut server = Self::spawn_with(cmd, |child| {
            let stderr = child.stderr.take().expect("stderr");
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                let mut lines = BufReader::new(stderr).lines();
                while let Some(Ok(line)) = lines.next() {
                    let _ = tx.send(line);
                }
            });
            rx
        });
        let rx = server.1.take().expect("stderr lines");
        (server.0, rx)
    }

    fn spawn(cmd: Command) -> Server {
        Self::spawn_with(cmd, |_| ()).0
    }

    /// Spawns `cmd`, lets `take` take the child's other pipes, and waits for the
    /// ready line.
    fn spawn_with<T>(mut cmd: Command, take: impl FnOnce(&mut Child) -> T) -> (Server, Option<T>) {
        cmd.stdout(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn wspush");
        let taken = take(&mut child);
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("wspush did not print its ready line");
        let field = |name: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
                .parse()
                .expect("address")
        };
        let pid = child.id();
        let http = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http="))
            .map(|a| a.parse().expect("http address"));
        let server = Server {
            ws: field("ws="),
            control: field("control="),
            http,
            child: Some(child),
            pid,
        };
        (server, Some(taken))
    }

    /// `ws://addr/ws` + `suffix` (e.g. `?user=bob&rooms=a,b`).
    pub fn url(&self, suffix: &str) -> String {
        format!("ws://{}/ws{}", self.ws, suffix)
    }

    /// Sends SIGTERM (graceful shutdown) and waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = child.try_wait().expect("wait") {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().expect("wait");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGKILL (no shutdown at all, as a crash would) and waits for the exit.
    pub fn kill(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on the PID of a child this handle spawned and has not reaped.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGKILL);
        }
        child.wait().expect("wait")
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// CPU time (user + system) the process has used, in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are 14 and 15.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
    }

    /// Resident set size in bytes (from /proc).
    pub fn rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// A RESP connection to the control port.
    pub fn control(&self) -> Resp {
        Resp::connect(self.control)
    }

    /// INFO as key → value.
    pub fn info(&self) -> std::collections::HashMap<String, String> {
        let mut c = self.control();
        match c.cmd(&["INFO"]) {
            Reply::Bulk(Some(b)) => String::from_utf8(b)
                .expect("utf8")
                .lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.to_string(), v.trim().to_string()))
                .collect(),
            other => panic!("INFO replied {other:?}"),
        }
    }

    /// One INFO field as a number.
    pub fn info_u64(&self, key: &str) -> u64 {
        self.info()
            .get(key)
            .unwrap_or_else(|| panic!("INFO has no {key}"))
            .parse()
            .expect("number")
    }
}

/// The `wspush` command line the harness runs: `args`, with `--listen`/`--control`
/// defaulting to 127.0.0.1:0, and the child's RLIMIT_NOFILE (soft and hard) set to
/// `nofile` if given.
fn command(args: &[&str], nofile: Option<u64>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wspush"));
    if let Some(n) = nofile {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork
        // and exec here.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: n as libc::rlim_t,
                    rlim_max: n as libc::rlim_t,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    if !args.contains(&"--listen") {
        cmd.args(["--listen", "127.0.0.1:0"]);
    }
    if !args.contains(&"--control") {
        cmd.args(["--control", "127.0.0.1:0"]);
    }
    cmd.args(args).stdin(Stdio::null());
    cmd
}

/// How a server that refused to start ended.
pub struct Refusal {
    pub status: ExitStatus,
    /// Everything it wrote on stderr.
    pub stderr: String,
}

/// Runs `wspush` with `args` (and RLIMIT_NOFILE `nofile`) expecting it to refuse to
/// start; panics if it prints its ready line instead (the server is killed first) or
/// is still running after 20 s.
pub fn start_expecting_refusal(args: &[&str], nofile: Option<u64>) -> Refusal {
    let mut cmd = command(args, nofile);
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("RUST_LOG", "info");
    let mut child = cmd.spawn().expect("spawn wspush");
    let stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        while let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        let ready = rx.try_recv().ok();
        if ready.is_some() || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err_reader.join().unwrap_or_default();
            panic!("wspush {args:?} did not refuse to start: stdout {ready:?}, stderr {stderr:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Refusal {
        status,
        stderr: err_reader.join().expect("stderr reader"),
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.terminate();
        }
    }
}

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

/// A minimal blocking RESP2 client.
pub struct Resp {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Resp {
    pub fn connect(addr: SocketAddr) -> Resp {
        let stream = TcpStream::connect(addr).expect("connect control");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Resp { stream, reader }
    }

    /// Encodes a command as an array of bulk strings.
    pub fn encode<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            let a = a.as_ref();
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    pub fn send<A: AsRef<[u8]>>(&mut self, args: &[A]) {
        self.stream.write_all(&Self::encode(args)).expect("write");
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    pub fn cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Reply {
        self.send(args);
        self.read()
    }

    pub fn read(&mut self) -> Reply {
        self.try_read().expect("reply")
    }

    pub fn try_read(&mut self) -> std::io::Result<Reply> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end_matches("\r\n");
        let (kind, rest) = line.split_at(1);
        Ok(match kind {
            "+" => Reply::Simple(rest.to_string()),
            "-" => Reply::Error(rest.to_string()),
            ":" => Reply::Int(rest.parse().expect("int")),
            "$" => {
                let n: i64 = rest.parse().expect("len");
                if n < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut b = vec![0; n as usize + 2];
                    self.reader.read_exact(&mut b)?;
                    b.truncate(n as usize);
                    Reply::Bulk(Some(b))
                }
            }
            "*" => {
                let n: i64 = rest.parse().expect("len");
                let mut v = Vec::new();
                for _ in 0..n.max(0) {
                    v.push(self.try_read()?);
                }
                Reply::Array(v)
            }
            _ => panic!("bad reply line {line:?}"),
        })
    }

    /// Expects an integer reply.
    pub fn int<A: AsRef<[u8]>>(&mut self, args: &[A]) -> i64 {
        match self.cmd(args) {
            Reply::Int(n) => n,
            other => panic!("expected integer, got {other:?}"),
        }
    }
}

pub type Ws = WebSocket<TcpStream>;

/// Opens a WebSocket with tungstenite (an independent implementation).
pub fn ws_connect(url: &str) -> Ws {
    try_ws_connect(url).unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

pub fn try_ws_connect(url: &str) -> Result<Ws, String> {
    let addr = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let stream = TcpStream::connect(&addr).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (ws, _resp) = tungstenite::client::client(url, stream).map_err(|e| e.to_string())?;
    Ok(ws)
}

/// Connects offering the `wspush.v1` subprotocol; panics unless the server chose it.
pub fn ws_connect_v1(url: &str) -> Ws {
    use tungstenite::client::IntoClientRequest;
    let addr = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let stream = TcpStream::connect(&addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut req = url.into_client_request().expect("request");
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "chat, wspush.v1".parse().expect("header"),
    );
    let (ws, resp) = tungstenite::client::client(req, stream).expect("handshake");
    assert_eq!(
        resp.headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok()),
        Some("wspush.v1"),
        "the server names the chosen subprotocol"
    );
    ws
}

/// The next data message of a `wspush.v1` connection, parsed as JSON.
pub fn next_json(ws: &mut Ws) -> serde_json::Value {
    let t = next_text(ws);
    serde_json::from_str(&t).unwrap_or_else(|e| panic!("not JSON ({e}): {t}"))
}

/// Reads the next text or binary message (skipping pings/pongs).
pub fn next_data(ws: &mut Ws) -> tungstenite::Message {
    loop {
        match ws.read().expect("read message") {
            m @ (tungstenite::Message::Text(_) | tungstenite::Message::Binary(_)) => return m,
            tungstenite::Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
}

/// Reads the next data message as a String.
pub fn next_text(ws: &mut Ws) -> String {
    match next_data(ws) {
        tungstenite::Message::Text(t) => t.to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

/// A raw TCP connection that has completed the upgrade by hand.
pub fn raw_upgrade(addr: SocketAddr, query: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /ws{query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let head = read_http_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

/// Reads an HTTP response head (up to the blank line) byte by byte.
pub fn read_http_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(0) => break,
            Ok(_) => head.push(b[0]),
            Err(e) => panic!(
                "reading response head: {e} (got {:?})",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A masked client frame.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
    let len = payload.len();
    if len < 126 {
        f.push(0x80 | len as u8);
    } else if len <= 0xffff {
        f.push(0x80 | 126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(len as u64).to_be_bytes());
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Reads one unmasked server frame: (fin, opcode, payload).
pub fn read_server_frame(s: &mut TcpStream) -> std::io::Result<(bool, u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h)?;
    assert_eq!(h[1] & 0x80, 0, "server frames must not be masked");
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b)?;
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b)?;
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut p = vec![0; len];
    s.read_exact(&mut p)?;
    Ok((h[0] & 0x80 != 0, h[0] & 0x0f, p))
}

/// Reads frames until a Close frame; returns its code (None for an empty body).
/// Reads WebSocket messages until a Close frame and returns its (code, reason);
/// panics on data before it.
pub fn read_close(ws: &mut Ws) -> (u16, String) {
    use tungstenite::Message;
    loop {
        match ws.read().expect("read until the close frame") {
            Message::Close(Some(f)) => return (u16::from(f.code), f.reason.to_string()),
            Message::Close(None) => panic!("close frame without a code"),
            Message::Text(t) => panic!("expected a close frame, got text {t:?}"),
            Message::Binary(b) => panic!("expected a close frame, got binary {b:?}"),
            _ => {}
        }
    }
}

pub fn read_close_code(s: &mut TcpStream) -> Option<u16> {
    loop {
        let (_, op, p) = read_server_frame(s).expect("expected a close frame");
        if op == 8 {
            return (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]));
        }
    }
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// Sends `request` (raw bytes, any HTTP) on a new connection and reads the response
/// head; the stream is returned for the caller to read on.
pub fn raw_request(addr: SocketAddr, request: &[u8]) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).expect("write request");
    let head = read_http_head(&mut s);
    (s, head)
}

/// A well-formed upgrade request for `target` with the RFC 6455 sample key, with
/// `extra` header lines (each ending in `\r\n`) appended.
pub fn upgrade_request(addr: SocketAddr, target: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    .into_bytes()
}

/// Reads until the peer closes its side; panics if it does not within the socket's
/// read timeout (or resets instead). Returns what was read before the end.
pub fn read_until_server_closes(s: &mut TcpStream) -> Vec<u8> {
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => rest,
        Err(e) => panic!(
            "server did not close the connection: {e} (read {} bytes: {:?})",
            rest.len(),
            String::from_utf8_lossy(&rest)
        ),
    }
}

/// One reactor's line of INFO, e.g. `reactor_0` → `connections=3,sockets=3,...`:
/// the value of `field` in it.
pub fn reactor_field(
    info: &std::collections::HashMap<String, String>,
    reactor: usize,
    field: &str,
) -> u64 {
    let line = info
        .get(&format!("reactor_{reactor}"))
        .unwrap_or_else(|| panic!("INFO has no reactor_{reactor}"));
    line.split(',')
        .find_map(|kv| kv.strip_prefix(field)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("reactor_{reactor} has no {field}: {line}"))
        .parse()
        .expect("number")
}

/// Waits (up to 10 s) for INFO `key` to equal `want`; panics with the last value.
/// Reactors publish their counters once per loop turn, so a count can trail the
/// bytes a client has just read by a moment.
pub fn assert_info_eventually(server: &Server, key: &str, want: u64) {
    let mut last = 0;
    let ok = wait_until(Duration::from_secs(10), || {
        last = server.info_u64(key);
        last == want
    });
    assert!(ok, "INFO {key} is {last}, expected {want}");
}

/// Raises this process's open-file soft limit to its hard limit (the server started
/// afterwards inherits it) and checks `needed` fits.
pub fn raise_fd_limit(needed: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
    }
    assert!(
        lim.rlim_cur >= needed,
        "this test needs {needed} open files; the hard limit is {}",
        lim.rlim_cur
    );
}

/// A small deterministic generator, so a failing randomized run can be replayed.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

/// The Python with PyJWT that scripts/test.sh prepares (an independent JWT
/// implementation for minting test tokens).
pub fn test_python() -> String {
    std::env::var("WSPUSH_TEST_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target/pyvenv/bin/python").into())
}

fn run_python(script: &str, args: &[&str]) -> String {
    let out = Command::new(test_python())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("run the test Python (scripts/test.sh creates target/pyvenv with PyJWT)");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

/// Mints a JWT with PyJWT: `alg` HS256 with `key` as the secret, or RS256/ES256 with
/// `key` a PEM private key file; `claims` is a JSON object.
pub fn mint_token(alg: &str, key: &str, claims: &str) -> String {
    run_python(
        "import sys, json, jwt\n\
         alg, key, claims = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])\n\
         if alg != 'HS256' and alg != 'none': key = open(key).read()\n\
         print(jwt.encode(claims, key if alg != 'none' else None, algorithm=alg))",
        &[alg, key, claims],
    )
}

/// Unix time now, in seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Fresh RSA (2048) and EC P-256 key pairs as PEM files in a temporary directory.
pub struct TestKeys {
    pub dir: std::path::PathBuf,
    pub rsa_private: String,
    pub rsa_public: String,
    pub ec_private: String,
    pub ec_public: String,
}

impl TestKeys {
    pub fn generate() -> TestKeys {
        let dir = std::env::temp_dir().join(format!(
            "wspush-keys-{}-{}",
            std::process::id(),
            unix_now_nanos()
        ));
        std::fs::create_dir_all(&dir).expect("key dir");
        let d = dir.to_string_lossy().into_owned();
        run_python(
            "import sys\n\
             from cryptography.hazmat.primitives.asymmetric import rsa, ec\n\
             from cryptography.hazmat.primitives import serialization as s\n\
             d = sys.argv[1]\n\
             for name, k in (('rsa', rsa.generate_private_key(65537, 2048)), ('ec', ec.generate_private_key(ec.SECP256R1()))):\n\
             \x20   open(f'{d}/{name}.pem', 'wb').write(k.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()))\n\
             \x20   open(f'{d}/{name}.pub.pem', 'wb').write(k.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo))\n",
            &[&d],
        );
        TestKeys {
            rsa_private: format!("{d}/rsa.pem"),
            rsa_public: format!("{d}/rsa.pub.pem"),
            ec_private: format!("{d}/ec.pem"),
            ec_public: format!("{d}/ec.pub.pem"),
            dir,
        }
    }
}

impl Drop for TestKeys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn unix_now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}
