//! Test harness for cluster mode: real `redis-server` processes on free loopback
//! ports (no persistence, so a restart starts empty) and a `Cluster` of `wspush`
//! nodes sharing them. Every process is stopped by its PID, never by name, and is
//! stopped when its handle is dropped.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{raw_request, wait_until, Reply, Resp, Server};

/// A `redis-server` child process on 127.0.0.1; SIGKILL + wait on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    /// `--requirepass` value, if any.
    pub password: Option<String>,
}

impl RedisServer {
    /// Starts an instance without a password on a free port.
    pub fn start() -> RedisServer {
        Self::start_inner(None)
    }

    /// Starts an instance that requires `password` (`--requirepass`).
    pub fn start_with_password(password: &str) -> RedisServer {
        Self::start_inner(Some(password.to_string()))
    }

    fn start_inner(password: Option<String>) -> RedisServer {
        // A port found free can be taken before redis-server binds it (other tests
        // run in parallel), so a start that fails is retried on another port.
        for _ in 0..20 {
            let port = free_port();
            let mut redis = RedisServer {
                child: None,
                port,
                password: password.clone(),
            };
            if redis.spawn_and_wait(Duration::from_secs(10)) {
                return redis;
            }
        }
        panic!("redis-server did not start on any free port (is it installed? scripts/test.sh installs it)");
    }

    /// Spawns redis-server on `self.port`; true once it answers PING, false if it
    /// exited (port taken) or never answered within `timeout`.
    fn spawn_and_wait(&mut self, timeout: Duration) -> bool {
        let port = self.port.to_string();
        let dir = std::env::temp_dir();
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--logfile",
            "",
            "--dir",
        ])
        .arg(&dir);
        if let Some(pw) = &self.password {
            cmd.args(["--requirepass", pw]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd
            .spawn()
            .expect("spawn redis-server (scripts/test.sh installs it)");
        let deadline = Instant::now() + timeout;
        loop {
            if self.answers_ping() {
                self.child = Some(child);
                return true;
            }
            if child.try_wait().ok().flatten().is_some() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True if something on the port answers PING like this instance would (after
    /// AUTH when it has a password).
    fn answers_ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(self.addr()) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut req = Vec::new();
        if let Some(pw) = &self.password {
            req.extend(Resp::encode(&["AUTH", pw]));
        }
        req.extend(Resp::encode(&["PING"]));
        if s.write_all(&req).is_err() {
            return false;
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while !String::from_utf8_lossy(&got).contains("PONG") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return false,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            if String::from_utf8_lossy(&got).starts_with('-') {
                return false;
            }
        }
        true
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:P`, with `:password@` when the instance has one.
    pub fn url(&self) -> String {
        match &self.password {
            Some(pw) => format!("redis://:{pw}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis-server running").id()
    }

    /// SIGKILL by PID, then wait for the exit (the port is free afterwards).
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("redis-server running");
        // SAFETY: kill(2) on the PID of a child this handle spawned and has not reaped.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGKILL);
        }
        let _ = child.wait();
    }

    /// Starts the instance again on the SAME port (retrying while the old socket
    /// still holds it), empty: nothing was persisted.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart() after kill()");
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.spawn_and_wait(Duration::from_secs(5)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server did not restart on port {}", self.port);
    }

    /// Runs `redis-cli -p P [-a pw] args...` and returns its stdout, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(pw) = &self.password {
            cmd.args(["-a", pw, "--no-auth-warning"]);
        }
        let out = cmd
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli (scripts/test.sh installs redis-tools)");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// One command on a fresh RESP connection (cheaper than spawning redis-cli in
    /// a polling loop).
    pub fn cmd(&self, args: &[&str]) -> Reply {
        let mut c = Resp::connect(self.addr());
        if let Some(pw) = &self.password {
            assert_eq!(c.cmd(&["AUTH", pw]), Reply::Simple("OK".into()));
        }
        c.cmd(args)
    }

    /// Subscriber count of `channel` on this instance (`PUBSUB NUMSUB`).
    pub fn numsub(&self, channel: &str) -> i64 {
        match self.cmd(&["PUBSUB", "NUMSUB", channel]) {
            Reply::Array(v) if v.len() == 2 => match v[1] {
                Reply::Int(n) => n,
                ref other => panic!("PUBSUB NUMSUB count {other:?}"),
            },
            other => panic!("PUBSUB NUMSUB replied {other:?}"),
        }
    }

    /// Channels matching `pattern` with at least one subscriber (`PUBSUB CHANNELS`).
    pub fn channels(&self, pattern: &str) -> Vec<String> {
        match self.cmd(&["PUBSUB", "CHANNELS", pattern]) {
            Reply::Array(v) => v
                .into_iter()
                .map(|r| match r {
                    Reply::Bulk(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
                    other => panic!("PUBSUB CHANNELS element {other:?}"),
                })
                .collect(),
            other => panic!("PUBSUB CHANNELS replied {other:?}"),
        }
    }

    /// `CLIENT LIST` as one map per client (`name=... sub=...`).
    pub fn client_list(&self) -> Vec<std::collections::HashMap<String, String>> {
        match self.cmd(&["CLIENT", "LIST"]) {
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(&b)
                .lines()
                .map(|l| {
                    l.split(' ')
                        .filter_map(|kv| kv.split_once('='))
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect()
                })
                .collect(),
            other => panic!("CLIENT LIST replied {other:?}"),
        }
    }

    /// Failed AUTH attempts this instance has logged (`ACL LOG`, reason `auth`):
    /// proof that a node with a wrong password has tried, and tried again.
    pub fn auth_failures(&self) -> i64 {
        let Reply::Array(entries) = self.cmd(&["ACL", "LOG"]) else {
            panic!("ACL LOG did not reply an array");
        };
        entries
            .iter()
            .filter_map(|e| {
                let Reply::Array(kv) = e else { return None };
                let field = |name: &str| {
                    kv.chunks(2)
                        .find(|p| p.len() == 2 && reply_text(&p[0]) == name)
                        .map(|p| p[1].clone())
                };
                let reason = field("reason").map(|r| reply_text(&r));
                match (reason.as_deref(), field("count")) {
                    (Some("auth"), Some(Reply::Int(n))) => Some(n),
                    _ => None,
                }
            })
            .sum()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.kill();
        }
    }
}

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// The placement rule of the spec: a channel lives on instance
/// `jump_hash(fnv1a64(channel name), instances)`.
pub fn placement(channel: &str, instances: usize) -> usize {
    jump_hash(fnv1a64(channel.as_bytes()), instances)
}

/// 64-bit FNV-1a.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Lamping & Veach, "A Fast, Minimal Memory, Consistent Hash Algorithm" (2014).
pub fn jump_hash(mut key: u64, buckets: usize) -> usize {
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < buckets as i64 {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as usize
}

/// A per-process unique `--cluster-prefix`, so nodes of different tests can never
/// see each other's channels even if they shared an instance.
pub fn unique_prefix(test: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "wspt{}n{}{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        test
    )
}

/// `node-a`, `node-b`, ... for node index `i`.
pub fn node_id(i: usize) -> String {
    format!("node-{}", (b'a' + i as u8) as char)
}

/// Starts one cluster node: `--redis` for each of `urls` (in that order),
/// `--node-id id`, `--cluster-prefix prefix`, then `extra`.
pub fn start_node(urls: &[String], id: &str, prefix: &str, extra: &[&str]) -> Server {
    let mut args: Vec<&str> = Vec::new();
    for u in urls {
        args.extend(["--redis", u.as_str()]);
    }
    args.extend(["--node-id", id, "--cluster-prefix", prefix]);
    args.extend(extra);
    Server::start(&args)
}

/// N wspush nodes (`node-a`, ...) on M Redis instances, all listing the same URLs
/// in the same order.
pub struct Cluster {
    // Field order is drop order: nodes stop before the instances they use.
    pub nodes: Vec<Server>,
    pub redis: Vec<RedisServer>,
    pub prefix: String,
}

impl Cluster {
    /// Starts `instances` Redis servers and `nodes` nodes on them (each with
    /// `extra` flags), and waits until every node's broker is up and every node
    /// lists all the others in `NODES`.
    pub fn start(test: &str, nodes: usize, instances: usize, extra: &[&str]) -> Cluster {
        let redis: Vec<RedisServer> = (0..instances).map(|_| RedisServer::start()).collect();
        let prefix = unique_prefix(test);
        let urls: Vec<String> = redis.iter().map(RedisServer::url).collect();
        let nodes = (0..nodes)
            .map(|i| start_node(&urls, &node_id(i), &prefix, extra))
            .collect();
        let cluster = Cluster {
            nodes,
            redis,
            prefix,
        };
        cluster.wait_formed();
        cluster
    }

    /// Waits (10 s) for `cluster_broker_up:1` on every node and for every node's
    /// `NODES` to list all of them.
    pub fn wait_formed(&self) {
        let n = self.nodes.len();
        for (i, node) in self.nodes.iter().enumerate() {
            let mut last = String::new();
            let ok = wait_until(Duration::from_secs(10), || {
                let up = node.info_u64("cluster_broker_up");
                // NODES answers -TRYAGAIN until the node has been linked to the
                // cluster long enough to have heard every node's heartbeat.
                let listed = if up == 1 && !is_tryagain(&node.control().cmd(&["NODES"])) {
                    nodes_of(node).len()
                } else {
                    0
                };
                last = format!("cluster_broker_up:{up}, NODES lists {listed}");
                up == 1 && listed == n
            });
            assert!(ok, "{} did not join a cluster of {n}: {last}", node_id(i));
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.redis.iter().map(RedisServer::url).collect()
    }

    /// `P:room:<room>`.
    pub fn room_channel(&self, room: &str) -> String {
        format!("{}:room:{room}", self.prefix)
    }

    /// `P:user:<user>`.
    pub fn user_channel(&self, user: &str) -> String {
        format!("{}:user:{user}", self.prefix)
    }

    /// The instance index the placement rule puts `channel` on.
    pub fn instance_of(&self, channel: &str) -> usize {
        placement(channel, self.redis.len())
    }

    /// Subscribers of `channel` summed over every instance (each node holds one
    /// subscriber connection per instance, so this is the number of nodes).
    pub fn subscribers(&self, channel: &str) -> i64 {
        self.redis.iter().map(|r| r.numsub(channel)).sum()
    }

    /// Waits (10 s) until exactly `n` nodes subscribe `channel`: a node subscribes
    /// in the background after a local member appears, and a publish before that
    /// would not reach it.
    pub fn wait_subscribers(&self, channel: &str, n: i64) {
        let mut last = 0;
        let ok = wait_until(Duration::from_secs(10), || {
            last = self.subscribers(channel);
            last == n
        });
        assert!(ok, "{channel} has {last} subscribing nodes, expected {n}");
    }
}

/// Whether a reply is the cluster's `-TRYAGAIN ...`.
pub fn is_tryagain(r: &Reply) -> bool {
    matches!(r, Reply::Error(e) if e.starts_with("TRYAGAIN"))
}

/// A node's `NODES` reply: one map per listed node (values as strings).
pub fn nodes_of(server: &Server) -> Vec<std::collections::HashMap<String, String>> {
    match server.control().cmd(&["NODES"]) {
        Reply::Array(nodes) => nodes
            .into_iter()
            .map(|n| match n {
                Reply::Array(kv) => {
                    assert!(kv.len() % 2 == 0, "odd field/value list {kv:?}");
                    kv.chunks(2)
                        .map(|p| (reply_text(&p[0]), reply_text(&p[1])))
                        .collect()
                }
                other => panic!("NODES element {other:?}"),
            })
            .collect(),
        other => panic!("NODES replied {other:?}"),
    }
}

/// A bulk, simple or integer reply as text.
pub fn reply_text(r: &Reply) -> String {
    match r {
        Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
        Reply::Simple(s) => s.clone(),
        Reply::Int(n) => n.to_string(),
        other => panic!("expected a string or integer, got {other:?}"),
    }
}

/// The status code of `GET path` on the WebSocket port.
pub fn http_status(server: &Server, path: &str) -> u16 {
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    let (_s, head) = raw_request(server.ws, req.as_bytes());
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"))
}
