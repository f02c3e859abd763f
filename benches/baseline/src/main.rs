//! wspush-baseline: the comparison server for wspush benchmarks.
//!
//! The same broadcast subset as wspush (WebSocket on `/ws` with `?rooms=a,b`,
//! RESP2 control port with PING, PUBLISH, BROADCAST, INFO), written the way a
//! good tokio developer would: one task per connection reading, one writer task
//! per connection fed by an mpsc channel, shared state behind a lock held only
//! for synchronous work, each pushed message built once and cloned (tungstenite
//! shares the bytes). It must stay idiomatic rather than clever — it is the
//! yardstick, not a competitor to tune — and it must never be a dependency of
//! the server, which has no async runtime.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Bytes, Message, Utf8Bytes};

/// Longest control-port bulk string accepted, so a bad client cannot make us allocate
/// without bound (the same order as wspush's --max-message).
const MAX_BULK: usize = 1 << 20;

/// Who is connected and which rooms they are in. A connection is its writer's sender.
#[derive(Default)]
struct Hub {
    /// Every open connection: id → its writer task's channel.
    clients: RwLock<HashMap<u64, mpsc::UnboundedSender<Message>>>,
    /// Room name → ids of its members.
    rooms: RwLock<HashMap<String, HashSet<u64>>>,
    next_id: AtomicU64,
    total_connections: AtomicU64,
    messages_pushed: AtomicU64,
}

impl Hub {
    fn join(&self, rooms: &[String], tx: mpsc::UnboundedSender<Message>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.total_connections.fetch_add(1, Ordering::Relaxed);
        write(&self.clients).insert(id, tx);
        let mut map = write(&self.rooms);
        for room in rooms {
            map.entry(room.clone()).or_default().insert(id);
        }
        id
    }

    fn leave(&self, id: u64, rooms: &[String]) {
        write(&self.clients).remove(&id);
        let mut map = write(&self.rooms);
        for room in rooms {
            if let Some(members) = map.get_mut(room) {
                members.remove(&id);
                if members.is_empty() {
                    map.remove(room);
                }
            }
        }
    }

    /// Queues `msg` for the members of `room`, or for everyone; returns how many took it.
    fn push(&self, room: Option<&str>, msg: Message) -> usize {
        let clients = read(&self.clients);
        let sent = match room {
            Some(room) => read(&self.rooms).get(room).map_or(0, |members| {
                members
                    .iter()
                    .filter_map(|id| clients.get(id))
                    .filter(|tx| tx.send(msg.clone()).is_ok())
                    .count()
            }),
            None => clients
                .values()
                .filter(|tx| tx.send(msg.clone()).is_ok())
                .count(),
        };
        self.messages_pushed
            .fetch_add(sent as u64, Ordering::Relaxed);
        sent
    }
}

/// A poisoned lock only means another task panicked mid-update of plain maps; keep serving.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

/// Payload as a Text message when it is UTF-8, else Binary; built once, cloned per member.
fn message_for(payload: Vec<u8>) -> Message {
    let bytes = Bytes::from(payload);
    match Utf8Bytes::try_from(bytes.clone()) {
        Ok(text) => Message::Text(text),
        Err(_) => Message::Binary(bytes),
    }
}

async fn serve_ws(stream: TcpStream, hub: Arc<Hub>) {
    let mut rooms: Vec<String> = Vec::new();
    // The error type is fixed by tungstenite's Callback trait, not ours to shrink.
    #[allow(clippy::result_large_err)]
    let check = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != "/ws" {
            let mut not_found = ErrorResponse::new(Some("not found".into()));
            *not_found.status_mut() = StatusCode::NOT_FOUND;
            return Err(not_found);
        }
        for pair in req.uri().query().unwrap_or("").split('&') {
            if let Some(list) = pair.strip_prefix("rooms=") {
                rooms.extend(list.split(',').filter(|r| !r.is_empty()).map(String::from));
            }
        }
        Ok(resp)
    };
    // Small read buffer: tungstenite's own advice for many mostly idle connections.
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let Ok(ws) = tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(config)).await
    else {
        return;
    };
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    let id = hub.join(&rooms, tx);

    // Writer: take everything queued, then flush once, so bursts cost one write.
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if sink.feed(msg).await.is_err() {
                return;
            }
            while let Ok(more) = rx.try_recv() {
                if sink.feed(more).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    // Reader: tungstenite answers pings itself; client data is not part of the subset.
    while let Some(Ok(msg)) = source.next().await {
        if msg.is_close() {
            break;
        }
    }
    hub.leave(id, &rooms);
    writer.abort();
}

/// Reads one command: a RESP2 array of bulk strings, or an inline line. `None` at EOF.
async fn read_command<R: AsyncBufReadExt + Unpin>(r: &mut R) -> io::Result<Option<Vec<Vec<u8>>>> {
    let mut line = Vec::new();
    if r.read_until(b'\n', &mut line).await? == 0 {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&line);
    let text = text.trim_end_matches(['\r', '\n']);
    let Some(count) = text.strip_prefix('*') else {
        let args = text.split_whitespace().map(|a| a.as_bytes().to_vec());
        return Ok(Some(args.collect()));
    };
    let count: usize = count.parse().map_err(|_| protocol_error())?;
    let mut args = Vec::with_capacity(count.min(16));
    for _ in 0..count {
        line.clear();
        r.read_until(b'\n', &mut line).await?;
        let len = std::str::from_utf8(&line)
            .ok()
            .and_then(|l| l.trim_end().strip_prefix('$'))
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&n| n <= MAX_BULK)
            .ok_or_else(protocol_error)?;
        let mut arg = vec![0; len + 2];
        r.read_exact(&mut arg).await?;
        arg.truncate(len);
        args.push(arg);
    }
    Ok(Some(args))
}

fn protocol_error() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "protocol error")
}

fn info(hub: &Hub) -> String {
    format!(
        "# Server\r\nserver:wspush-baseline\r\n\r\n# Clients\r\nconnected_clients:{}\r\n\r\n\
         # Rooms\r\nrooms:{}\r\n\r\n# Stats\r\ntotal_connections_received:{}\r\nmessages_pushed:{}\r\n",
        read(&hub.clients).len(),
        read(&hub.rooms).len(),
        hub.total_connections.load(Ordering::Relaxed),
        hub.messages_pushed.load(Ordering::Relaxed),
    )
}

async fn serve_control(stream: TcpStream, hub: Arc<Hub>) -> io::Result<()> {
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut wr = BufWriter::new(wr);
    loop {
        let args = match read_command(&mut rd).await {
            Ok(Some(args)) => args,
            Ok(None) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                wr.write_all(b"-ERR protocol error\r\n").await?;
                return wr.flush().await;
            }
            Err(e) => return Err(e),
        };
        let mut args = args.into_iter();
        let name = args.next().map(|n| n.to_ascii_uppercase());
        let rest: Vec<Vec<u8>> = args.collect();
        let reply = match (name.as_deref(), rest.as_slice()) {
            (None, _) => continue,
            (Some(b"PING"), []) => "+PONG\r\n".to_string(),
            (Some(b"PUBLISH"), [room, payload]) => {
                let room = String::from_utf8_lossy(room);
                let n = hub.push(Some(&room), message_for(payload.clone()));
                format!(":{n}\r\n")
            }
            (Some(b"BROADCAST"), [payload]) => {
                format!(":{}\r\n", hub.push(None, message_for(payload.clone())))
            }
            (Some(b"INFO"), _) => {
                let body = info(&hub);
                format!("${}\r\n{body}\r\n", body.len())
            }
            (Some(b"QUIT"), []) => {
                wr.write_all(b"+OK\r\n").await?;
                return wr.flush().await;
            }
            (Some(b"PING" | b"PUBLISH" | b"BROADCAST" | b"QUIT"), _) => {
                "-ERR wrong number of arguments\r\n".to_string()
            }
            (Some(_), _) => "-ERR unknown command\r\n".to_string(),
        };
        wr.write_all(reply.as_bytes()).await?;
        // Pipelined commands: answer them all, then write once.
        if rd.buffer().is_empty() {
            wr.flush().await?;
        }
    }
}

struct Flags {
    listen: SocketAddr,
    control: SocketAddr,
    threads: usize,
}

fn parse_flags() -> Result<Flags, String> {
    let mut flags = Flags {
        listen: SocketAddr::from(([0, 0, 0, 0], 8081)),
        control: SocketAddr::from(([127, 0, 0, 1], 7380)),
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--listen" => flags.listen = value.parse().map_err(|e| bad(&e))?,
            "--control" => flags.control = value.parse().map_err(|e| bad(&e))?,
            "--threads" => {
                flags.threads = value.parse().map_err(|e| bad(&e))?;
                if flags.threads == 0 {
                    return Err(bad(&"must be at least 1"));
                }
            }
            _ => {
                return Err(format!(
                    "unknown flag {flag} (known: --listen --control --threads)"
                ))
            }
        }
    }
    Ok(flags)
}

fn main() {
    let flags = match parse_flags() {
        Ok(flags) => flags,
        Err(msg) => {
            eprintln!("wspush-baseline: {msg}");
            std::process::exit(2);
        }
    };
    // wspush raises its soft descriptor limit at start-up; so does the baseline.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("wspush-baseline: cannot raise RLIMIT_NOFILE: {e}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(flags.threads)
        .enable_all()
        .build();
    let result = runtime.and_then(|rt| rt.block_on(run(flags)));
    if let Err(e) = result {
        eprintln!("wspush-baseline: {e}");
        std::process::exit(1);
    }
}

async fn run(flags: Flags) -> io::Result<()> {
    let ws = TcpListener::bind(flags.listen).await?;
    let control = TcpListener::bind(flags.control).await?;
    println!(
        "baseline ready: ws={} control={}",
        ws.local_addr()?,
        control.local_addr()?
    );
    let hub = Arc::new(Hub::default());

    let control_hub = Arc::clone(&hub);
    tokio::spawn(async move {
        loop {
            match control.accept().await {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(serve_control(stream, Arc::clone(&control_hub)));
                }
                Err(e) => eprintln!("wspush-baseline: control accept: {e}"),
            }
        }
    });
    loop {
        match ws.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_ws(stream, Arc::clone(&hub)));
            }
            // EMFILE and friends: keep accepting once descriptors free up.
            Err(e) => {
                eprintln!("wspush-baseline: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}
