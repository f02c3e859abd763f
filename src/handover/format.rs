//! The hand-over state format: what one wspush process tells the next about the
//! sockets it passes (listening sockets, WebSocket connections, control clients),
//! as framed messages on the upgrade's Unix socket.
//!
//! Pure: bytes in, values out. Decoding never panics and never allocates more than
//! the bytes it was given justify, whatever they are (proptest below); a frame with
//! the wrong magic or a version this build does not understand is refused as a
//! whole, never half-read.
//!
//! Versioning. Every frame header carries `VERSION`; a process refuses any other.
//! Within a version, a connection or client record can carry optional fields
//! (`extra`: tag, bytes) so a feature that adds per-connection state (compression
//! parameters, access-log counters) needs no version bump: an unknown tag is skipped,
//! unless its high bit (`MUST_UNDERSTAND`) says that ignoring it would change what
//! the client sees, in which case the record is refused. A change to the fixed
//! fields is a version bump.

use std::net::IpAddr;

/// "WSPH": the first bytes of every frame.
pub const MAGIC: [u8; 4] = *b"WSPH";
/// The state format this build writes and reads.
pub const VERSION: u16 = 1;
/// Frame header: magic, version, kind, descriptor count, payload length.
pub const HEADER_LEN: usize = 4 + 2 + 1 + 2 + 4;
/// Longest payload a frame may announce (a batch of connections with queued output
/// can be large, but never this large: --max-pending bounds each queue).
pub const MAX_PAYLOAD: usize = 1 << 30;
/// An `extra` tag with this bit set must be understood by the receiver.
pub const MUST_UNDERSTAND: u16 = 0x8000;
/// Client field: the client came through `--http` (an HTTP connection, not RESP):
/// `continued` (1 byte) then its unwritten response bytes.
pub const CLIENT_HTTP: u16 = MUST_UNDERSTAND | 1;
/// Connection field: `--access-log`'s record (see `AccessState`); skippable.
pub const CONN_ACCESS: u16 = 1;

/// The optional fields this build knows, which a record may carry even when marked
/// must-understand.
const KNOWN: [u16; 2] = [CLIENT_HTTP, CONN_ACCESS];

/// `--access-log`'s record of a connection, carried in `CONN_ACCESS`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessState {
    /// Milliseconds since the socket was accepted.
    pub age_ms: u64,
    pub opened: bool,
    pub addr: Option<IpAddr>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub code: u16,
    pub reason: Option<String>,
}

impl AccessState {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = W(Vec::new());
        w.u64(self.age_ms);
        w.u8(u8::from(self.opened));
        w.opt(&self.addr, |w, a| w.ip(a));
        w.u64(self.bytes_in);
        w.u64(self.bytes_out);
        w.u16(self.code);
        w.opt(&self.reason, |w, r| w.bytes(r.as_bytes()));
        w.0
    }

    pub fn decode(b: &[u8]) -> Result<AccessState, FormatError> {
        let mut r = R(b);
        let s = AccessState {
            age_ms: r.u64()?,
            opened: r.bool("opened")?,
            addr: r.opt("addr", |r| r.ip())?,
            bytes_in: r.u64()?,
            bytes_out: r.u64()?,
            code: r.u16()?,
            reason: r.opt("reason", |r| r.name("close reason"))?,
        };
        r.end()?;
        Ok(s)
    }
}

/// What a frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Either side, first: the sender's pid (the payload) and version (the header).
    Hello = 1,
    /// Old → new: the listening sockets (descriptors: WebSocket ones, then control).
    Listeners = 2,
    /// Old → new: a batch of WebSocket connections of one reactor.
    Conns = 3,
    /// Old → new: a batch of control-port clients.
    Clients = 4,
    /// Old → new: everything was sent (totals to check against).
    End = 5,
    /// New → old: everything was taken; the old process must not touch it again.
    Taken = 6,
    /// New → old: the state was refused (reason text); nothing was taken.
    Refused = 7,
    /// Old → new, cluster mode: the node instance's identity (nonce, sequence,
    /// epoch candidates).
    Cluster = 8,
    /// New → old, cluster mode: the new process's broker link is up.
    Linked = 9,
    /// Old → new, cluster mode: the broker messages the old process received after
    /// its freeze (channel, payload), in order.
    Forward = 10,
    /// Old → new, standalone: rooms' positions and retained messages.
    History = 11,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Hello,
            2 => Kind::Listeners,
            3 => Kind::Conns,
            4 => Kind::Clients,
            5 => Kind::End,
            6 => Kind::Taken,
            7 => Kind::Refused,
            8 => Kind::Cluster,
            9 => Kind::Linked,
            10 => Kind::Forward,
            11 => Kind::History,
            _ => return None,
        })
    }
}

/// Why bytes were refused as hand-over state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FormatError {
    BadMagic,
    /// A version this build does not read.
    UnsupportedVersion(u16),
    UnknownKind(u8),
    /// The bytes end inside a value.
    Truncated,
    /// A payload longer than `MAX_PAYLOAD`.
    TooLarge,
    /// A value that cannot be right (named).
    Invalid(&'static str),
    /// An optional field the sender marked must-understand that this build does not know.
    UnknownRequired(u16),
    /// Bytes left over after the last value.
    TrailingBytes,
}

impl std::fmt::Display for FormatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FormatError::BadMagic => write!(f, "not wspush hand-over state (bad magic)"),
            FormatError::UnsupportedVersion(v) => {
                write!(
                    f,
                    "state format version {v} is not supported (this build reads {VERSION})"
                )
            }
            FormatError::UnknownKind(k) => write!(f, "unknown frame kind {k}"),
            FormatError::Truncated => write!(f, "truncated state"),
            FormatError::TooLarge => write!(f, "frame too large"),
            FormatError::Invalid(what) => write!(f, "invalid {what}"),
            FormatError::UnknownRequired(t) => write!(f, "unknown required field {t:#06x}"),
            FormatError::TrailingBytes => write!(f, "trailing bytes after the state"),
        }
    }
}

impl std::error::Error for FormatError {}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    /// Descriptors that came with the header.
    pub fds: u16,
    pub len: u32,
}

pub fn encode_header(kind: Kind, fds: u16, len: usize) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&MAGIC);
    h[4..6].copy_from_slice(&VERSION.to_be_bytes());
    h[6] = kind as u8;
    h[7..9].copy_from_slice(&fds.to_be_bytes());
    h[9..13].copy_from_slice(&(len.min(u32::MAX as usize) as u32).to_be_bytes());
    h
}

pub fn decode_header(b: &[u8]) -> Result<Header, FormatError> {
    if b.len() < HEADER_LEN {
        return Err(FormatError::Truncated);
    }
    if b[..4] != MAGIC {
        return Err(FormatError::BadMagic);
    }
    let version = u16::from_be_bytes([b[4], b[5]]);
    if version != VERSION {
        return Err(FormatError::UnsupportedVersion(version));
    }
    let kind = Kind::from_u8(b[6]).ok_or(FormatError::UnknownKind(b[6]))?;
    let fds = u16::from_be_bytes([b[7], b[8]]);
    let len = u32::from_be_bytes([b[9], b[10], b[11], b[12]]);
    if len as usize > MAX_PAYLOAD {
        return Err(FormatError::TooLarge);
    }
    Ok(Header { kind, fds, len })
}

/// One room of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomState {
    pub name: String,
    /// Joined by the client itself (a token refresh may take it away).
    pub by_client: bool,
    /// A `wspush.v1` recovery reached this offset: pushes at or below it are skipped.
    pub floor: Option<u64>,
}

/// A connection's token grants (rooms, join patterns), as text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantState {
    pub rooms: Vec<String>,
    pub join: Vec<String>,
}

/// Input a connection has received and not finished with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InputState {
    /// Unconsumed bytes: an incomplete request head or frame (its first `scanned`
    /// payload bytes already unmasked).
    pub buf: Vec<u8>,
    pub scanned: u32,
    /// The fragmented message in progress: 0 none, 1 text, 2 binary; plus 4 when it
    /// is compressed (permessage-deflate).
    pub message: u8,
    /// Its payload so far.
    pub data: Vec<u8>,
    /// The UTF-8 validator's carried bytes (0 to 3).
    pub utf8: Vec<u8>,
    /// The client address from a PROXY header, before the upgrade.
    pub proxied: Option<IpAddr>,
}

/// What a chunk of queued output is (the slow-consumer policy treats them apart).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkKind {
    /// A push: may be dropped under the drop policy.
    Push = 0,
    /// Must be written (a reply, a Close frame, an HTTP response).
    Reply = 1,
}

/// Output queued for a connection that its socket has not taken yet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutputState {
    /// Bytes of the first chunk already written.
    pub offset: u32,
    pub chunks: Vec<(ChunkKind, Vec<u8>)>,
}

/// One WebSocket (or still-HTTP) connection; its descriptor travels beside it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnState {
    /// 0 PROXY header, 1 handshake, 2 open, 3 closing.
    pub phase: u8,
    /// `reactor::conn::flag` bits.
    pub flags: u16,
    /// Reactor ticks since the connection's last-seen stamp (timers carry on).
    pub age: u32,
    /// Unix second its token expires (0: never).
    pub expires: u32,
    pub user: Option<String>,
    pub rooms: Vec<RoomState>,
    pub grants: Option<GrantState>,
    /// The per-address slot it holds (`link::peers`), if limits are on.
    pub peer_slot: Option<[u8; 16]>,
    pub input: Option<InputState>,
    pub output: Option<OutputState>,
    /// Optional fields (see the module comment).
    pub extra: Vec<(u16, Vec<u8>)>,
}

/// One control-port client; its descriptor travels beside it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientState {
    pub authed: bool,
    pub auth_failures: u8,
    pub resp3: bool,
    pub name: Option<Vec<u8>>,
    /// Received, not yet parsed (whole commands wait here too).
    pub input: Vec<u8>,
    /// Replies not written yet.
    pub output: Vec<u8>,
    /// It sent `UPGRADE`: the new process answers it `+OK`.
    pub answer_upgrade: bool,
    pub extra: Vec<(u16, Vec<u8>)>,
}

/// A `Conns` frame: one reactor's connections (one descriptor each, in order).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnBatch {
    pub reactor: u16,
    pub conns: Vec<ConnState>,
}

/// The `End` frame: totals the receiver checks against what it took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub conns: u32,
    pub clients: u32,
}

// --- writing ---------------------------------------------------------------

struct W(Vec<u8>);

impl W {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    fn count(&mut self, n: usize) {
        self.u32(n as u32);
    }
    fn opt<T>(&mut self, v: &Option<T>, f: impl FnOnce(&mut W, &T)) {
        match v {
            None => self.u8(0),
            Some(x) => {
                self.u8(1);
                f(self, x);
            }
        }
    }
    fn ip(&mut self, ip: &IpAddr) {
        match ip {
            IpAddr::V4(a) => {
                self.u8(4);
                self.0.extend_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                self.u8(6);
                self.0.extend_from_slice(&a.octets());
            }
        }
    }
    fn extra(&mut self, extra: &[(u16, Vec<u8>)]) {
        self.count(extra.len());
        for (tag, b) in extra {
            self.u16(*tag);
            self.bytes(b);
        }
    }
}

fn write_conn(w: &mut W, c: &ConnState) {
    w.u8(c.phase);
    w.u16(c.flags);
    w.u32(c.age);
    w.u32(c.expires);
    w.opt(&c.user, |w, u| w.bytes(u.as_bytes()));
    w.count(c.rooms.len());
    for r in &c.rooms {
        w.bytes(r.name.as_bytes());
        w.u8(u8::from(r.by_client));
        w.opt(&r.floor, |w, f| w.u64(*f));
    }
    w.opt(&c.grants, |w, g| {
        w.count(g.rooms.len());
        for r in &g.rooms {
            w.bytes(r.as_bytes());
        }
        w.count(g.join.len());
        for p in &g.join {
            w.bytes(p.as_bytes());
        }
    });
    w.opt(&c.peer_slot, |w, s| w.0.extend_from_slice(s));
    w.opt(&c.input, |w, i| {
        w.bytes(&i.buf);
        w.u32(i.scanned);
        w.u8(i.message);
        w.bytes(&i.data);
        w.bytes(&i.utf8);
        w.opt(&i.proxied, |w, ip| w.ip(ip));
    });
    w.opt(&c.output, |w, o| {
        w.u32(o.offset);
        w.count(o.chunks.len());
        for (k, b) in &o.chunks {
            w.u8(*k as u8);
            w.bytes(b);
        }
    });
    w.extra(&c.extra);
}

fn write_client(w: &mut W, c: &ClientState) {
    w.u8(u8::from(c.authed));
    w.u8(c.auth_failures);
    w.u8(u8::from(c.resp3));
    w.opt(&c.name, |w, n| w.bytes(n));
    w.bytes(&c.input);
    w.bytes(&c.output);
    w.u8(u8::from(c.answer_upgrade));
    w.extra(&c.extra);
}

pub fn encode_conns(b: &ConnBatch) -> Vec<u8> {
    let mut w = W(Vec::new());
    w.u16(b.reactor);
    w.count(b.conns.len());
    for c in &b.conns {
        write_conn(&mut w, c);
    }
    w.0
}

pub fn encode_clients(clients: &[ClientState]) -> Vec<u8> {
    let mut w = W(Vec::new());
    w.count(clients.len());
    for c in clients {
        write_client(&mut w, c);
    }
    w.0
}

/// `Listeners`: how many of its descriptors are WebSocket listeners (the control
/// listener follows them, then `--http`'s if `http`).
pub fn encode_listeners(ws: u16, http: bool) -> Vec<u8> {
    let mut w = W(Vec::new());
    w.u16(ws);
    w.u8(u8::from(http));
    w.0
}

pub fn encode_totals(t: Totals) -> Vec<u8> {
    let mut w = W(Vec::new());
    w.u32(t.conns);
    w.u32(t.clients);
    w.0
}

pub fn encode_identity(id: [u64; 3]) -> Vec<u8> {
    let mut w = W(Vec::new());
    for v in id {
        w.u64(v);
    }
    w.0
}

/// A broker message as Redis delivered it: channel, payload.
pub type Message = (Vec<u8>, Vec<u8>);

/// One room's position and retained messages (standalone history).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryRoom {
    pub name: String,
    pub epoch: String,
    pub offset: u64,
    /// (offset, payload), oldest first.
    pub entries: Vec<(u64, Vec<u8>)>,
}

pub fn encode_history(rooms: &[HistoryRoom]) -> Vec<u8> {
    let mut w = W(Vec::new());
    w.count(rooms.len());
    for r in rooms {
        w.bytes(r.name.as_bytes());
        w.bytes(r.epoch.as_bytes());
        w.u64(r.offset);
        w.count(r.entries.len());
        for (o, p) in &r.entries {
            w.u64(*o);
            w.bytes(p);
        }
    }
    w.0
}

pub fn decode_history(b: &[u8]) -> Result<Vec<HistoryRoom>, FormatError> {
    let mut r = R(b);
    let n = r.count(20)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let name = r.name("history room")?;
        let epoch = r.name("epoch")?;
        let offset = r.u64()?;
        let m = r.count(12)?;
        let mut entries = Vec::with_capacity(m);
        for _ in 0..m {
            let o = r.u64()?;
            entries.push((o, r.bytes()?.to_vec()));
        }
        out.push(HistoryRoom {
            name,
            epoch,
            offset,
            entries,
        });
    }
    r.end()?;
    Ok(out)
}

pub fn encode_messages(m: &[Message]) -> Vec<u8> {
    let mut w = W(Vec::new());
    w.count(m.len());
    for (c, p) in m {
        w.bytes(c);
        w.bytes(p);
    }
    w.0
}

pub fn encode_u32(v: u32) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

// --- reading ---------------------------------------------------------------

/// Longest name (room, user, pattern, client name) accepted.
const MAX_NAME: usize = 64 * 1024;

struct R<'a>(&'a [u8]);

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        if self.0.len() < n {
            return Err(FormatError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, FormatError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, FormatError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, FormatError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn bool(&mut self, what: &'static str) -> Result<bool, FormatError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(FormatError::Invalid(what)),
        }
    }
    fn bytes(&mut self) -> Result<&'a [u8], FormatError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn name(&mut self, what: &'static str) -> Result<String, FormatError> {
        let b = self.bytes()?;
        if b.len() > MAX_NAME {
            return Err(FormatError::Invalid(what));
        }
        String::from_utf8(b.to_vec()).map_err(|_| FormatError::Invalid(what))
    }
    /// A count of items each at least `min` bytes long: never more than the bytes
    /// left could hold, so a bogus count cannot reserve memory.
    fn count(&mut self, min: usize) -> Result<usize, FormatError> {
        let n = self.u32()? as usize;
        if n > self.0.len() / min.max(1) {
            return Err(FormatError::Truncated);
        }
        Ok(n)
    }
    fn opt<T>(
        &mut self,
        what: &'static str,
        f: impl FnOnce(&mut R<'a>) -> Result<T, FormatError>,
    ) -> Result<Option<T>, FormatError> {
        if self.bool(what)? {
            f(self).map(Some)
        } else {
            Ok(None)
        }
    }
    fn ip(&mut self) -> Result<IpAddr, FormatError> {
        match self.u8()? {
            4 => {
                let b = self.take(4)?;
                Ok(IpAddr::from([b[0], b[1], b[2], b[3]]))
            }
            6 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(self.take(16)?);
                Ok(IpAddr::from(a))
            }
            _ => Err(FormatError::Invalid("address family")),
        }
    }
    fn extra(&mut self) -> Result<Vec<(u16, Vec<u8>)>, FormatError> {
        let n = self.count(6)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let tag = self.u16()?;
            let b = self.bytes()?.to_vec();
            out.push((tag, b));
        }
        Ok(out)
    }
    fn end(&self) -> Result<(), FormatError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(FormatError::TrailingBytes)
        }
    }
}

fn read_conn(r: &mut R<'_>) -> Result<ConnState, FormatError> {
    let phase = r.u8()?;
    if phase > 3 {
        return Err(FormatError::Invalid("phase"));
    }
    let flags = r.u16()?;
    let age = r.u32()?;
    let expires = r.u32()?;
    let user = r.opt("user", |r| r.name("user"))?;
    let n = r.count(6)?;
    let mut rooms = Vec::with_capacity(n);
    for _ in 0..n {
        let name = r.name("room")?;
        let by_client = r.bool("by_client")?;
        let floor = r.opt("floor", |r| r.u64())?;
        rooms.push(RoomState {
            name,
            by_client,
            floor,
        });
    }
    let grants = r.opt("grants", |r| {
        let n = r.count(4)?;
        let mut rooms = Vec::with_capacity(n);
        for _ in 0..n {
            rooms.push(r.name("granted room")?);
        }
        let n = r.count(4)?;
        let mut join = Vec::with_capacity(n);
        for _ in 0..n {
            join.push(r.name("join pattern")?);
        }
        Ok(GrantState { rooms, join })
    })?;
    let peer_slot = r.opt("peer slot", |r| {
        let mut a = [0u8; 16];
        a.copy_from_slice(r.take(16)?);
        Ok(a)
    })?;
    let input = r.opt("input", |r| {
        let buf = r.bytes()?.to_vec();
        let scanned = r.u32()?;
        if scanned as usize > buf.len() {
            return Err(FormatError::Invalid("scanned"));
        }
        let message = r.u8()?;
        if message & !4 > 2 || message == 4 {
            return Err(FormatError::Invalid("message"));
        }
        let data = r.bytes()?.to_vec();
        let utf8 = r.bytes()?.to_vec();
        if utf8.len() > 3 {
            return Err(FormatError::Invalid("utf8 carry"));
        }
        let proxied = r.opt("proxied", |r| r.ip())?;
        Ok(InputState {
            buf,
            scanned,
            message,
            data,
            utf8,
            proxied,
        })
    })?;
    let output = r.opt("output", |r| {
        let offset = r.u32()?;
        let n = r.count(5)?;
        let mut chunks = Vec::with_capacity(n);
        for _ in 0..n {
            let kind = match r.u8()? {
                0 => ChunkKind::Push,
                1 => ChunkKind::Reply,
                _ => return Err(FormatError::Invalid("chunk kind")),
            };
            let b = r.bytes()?;
            if b.is_empty() {
                return Err(FormatError::Invalid("empty chunk"));
            }
            chunks.push((kind, b.to_vec()));
        }
        match chunks.first() {
            Some((_, b)) if (offset as usize) < b.len() => {}
            None if offset == 0 => {}
            _ => return Err(FormatError::Invalid("output offset")),
        }
        Ok(OutputState { offset, chunks })
    })?;
    let extra = r.extra()?;
    if let Some(&(tag, _)) = extra
        .iter()
        .find(|(t, _)| t & MUST_UNDERSTAND != 0 && !KNOWN.contains(t))
    {
        return Err(FormatError::UnknownRequired(tag));
    }
    Ok(ConnState {
        phase,
        flags,
        age,
        expires,
        user,
        rooms,
        grants,
        peer_slot,
        input,
        output,
        extra,
    })
}

fn read_client(r: &mut R<'_>) -> Result<ClientState, FormatError> {
    let authed = r.bool("authed")?;
    let auth_failures = r.u8()?;
    let resp3 = r.bool("resp3")?;
    let name = r.opt("name", |r| {
        let b = r.bytes()?;
        if b.len() > MAX_NAME {
            return Err(FormatError::Invalid("client name"));
        }
        Ok(b.to_vec())
    })?;
    let input = r.bytes()?.to_vec();
    let output = r.bytes()?.to_vec();
    let answer_upgrade = r.bool("answer_upgrade")?;
    let extra = r.extra()?;
    if let Some(&(tag, _)) = extra
        .iter()
        .find(|(t, _)| t & MUST_UNDERSTAND != 0 && !KNOWN.contains(t))
    {
        return Err(FormatError::UnknownRequired(tag));
    }
    Ok(ClientState {
        authed,
        auth_failures,
        resp3,
        name,
        input,
        output,
        answer_upgrade,
        extra,
    })
}

pub fn decode_conns(b: &[u8]) -> Result<ConnBatch, FormatError> {
    let mut r = R(b);
    let reactor = r.u16()?;
    // The smallest record (no user, room, input or output) is 24 bytes.
    let n = r.count(24)?;
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(read_conn(&mut r)?);
    }
    r.end()?;
    Ok(ConnBatch { reactor, conns })
}

pub fn decode_clients(b: &[u8]) -> Result<Vec<ClientState>, FormatError> {
    let mut r = R(b);
    let n = r.count(17)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(read_client(&mut r)?);
    }
    r.end()?;
    Ok(out)
}

pub fn decode_listeners(b: &[u8]) -> Result<(u16, bool), FormatError> {
    let mut r = R(b);
    let n = r.u16()?;
    let http = r.bool("http listener")?;
    r.end()?;
    if n == 0 {
        return Err(FormatError::Invalid("listener count"));
    }
    Ok((n, http))
}

pub fn decode_totals(b: &[u8]) -> Result<Totals, FormatError> {
    let mut r = R(b);
    let t = Totals {
        conns: r.u32()?,
        clients: r.u32()?,
    };
    r.end()?;
    Ok(t)
}

pub fn decode_identity(b: &[u8]) -> Result<[u64; 3], FormatError> {
    let mut r = R(b);
    let id = [r.u64()?, r.u64()?, r.u64()?];
    r.end()?;
    Ok(id)
}

pub fn decode_messages(b: &[u8]) -> Result<Vec<Message>, FormatError> {
    let mut r = R(b);
    let n = r.count(8)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let c = r.bytes()?.to_vec();
        let p = r.bytes()?.to_vec();
        out.push((c, p));
    }
    r.end()?;
    Ok(out)
}

pub fn decode_u32(b: &[u8]) -> Result<u32, FormatError> {
    let mut r = R(b);
    let v = r.u32()?;
    r.end()?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> ConnState {
        ConnState {
            phase: 2,
            flags: 4096 | 64,
            age: 17,
            expires: 1_900_000_000,
            user: Some("alice".into()),
            rooms: vec![
                RoomState {
                    name: "news".into(),
                    by_client: true,
                    floor: Some(41),
                },
                RoomState {
                    name: "sport".into(),
                    by_client: false,
                    floor: None,
                },
            ],
            grants: Some(GrantState {
                rooms: vec!["news".into()],
                join: vec!["sport.*".into()],
            }),
            peer_slot: Some([7; 16]),
            input: Some(InputState {
                buf: vec![0x81, 0x85, 1, 2, 3, 4, 5],
                scanned: 1,
                message: 1,
                data: b"hel".to_vec(),
                utf8: vec![0xe2],
                proxied: Some("10.0.0.1".parse().unwrap()),
            }),
            output: Some(OutputState {
                offset: 3,
                chunks: vec![
                    (ChunkKind::Push, b"\x81\x05hello".to_vec()),
                    (ChunkKind::Reply, b"\x8a\x00".to_vec()),
                ],
            }),
            extra: vec![(7, b"x".to_vec())],
        }
    }

    #[test]
    fn a_batch_round_trips() {
        let b = ConnBatch {
            reactor: 3,
            conns: vec![sample(), ConnState::default()],
        };
        assert_eq!(decode_conns(&encode_conns(&b)), Ok(b));
        // A batch of the smallest records (anonymous, idle) is not mistaken for a
        // truncated one.
        let b = ConnBatch {
            reactor: 0,
            conns: vec![ConnState::default(); 253],
        };
        assert_eq!(decode_conns(&encode_conns(&b)), Ok(b));
    }

    #[test]
    fn clients_round_trip() {
        let c = vec![
            ClientState {
                authed: true,
                auth_failures: 2,
                resp3: true,
                name: Some(b"worker".to_vec()),
                input: b"PUBLISH a b\r\nPUB".to_vec(),
                output: b":1\r\n".to_vec(),
                answer_upgrade: true,
                extra: vec![],
            },
            ClientState::default(),
        ];
        assert_eq!(decode_clients(&encode_clients(&c)), Ok(c));
    }

    #[test]
    fn history_and_forwarded_messages_round_trip() {
        let h = vec![HistoryRoom {
            name: "news".into(),
            epoch: "00ab".into(),
            offset: 42,
            entries: vec![(41, b"a".to_vec()), (42, b"b".to_vec())],
        }];
        assert_eq!(decode_history(&encode_history(&h)), Ok(h));
        let m = vec![(b"p:room:news".to_vec(), b"\x01\x02".to_vec())];
        assert_eq!(decode_messages(&encode_messages(&m)), Ok(m));
        assert_eq!(decode_identity(&encode_identity([1, 2, 3])), Ok([1, 2, 3]));
    }

    #[test]
    fn refuses_a_version_it_does_not_understand() {
        let mut h = encode_header(Kind::Conns, 2, 10);
        assert_eq!(
            decode_header(&h).map(|h| (h.kind, h.fds, h.len)),
            Ok((Kind::Conns, 2, 10))
        );
        h[4..6].copy_from_slice(&(VERSION + 1).to_be_bytes());
        assert_eq!(
            decode_header(&h),
            Err(FormatError::UnsupportedVersion(VERSION + 1))
        );
        h[0] = b'X';
        assert_eq!(decode_header(&h), Err(FormatError::BadMagic));
    }

    #[test]
    fn an_unknown_optional_field_is_skipped_and_a_required_one_refused() {
        let mut c = sample();
        c.extra = vec![(0x0042, vec![1, 2])];
        let b = ConnBatch {
            reactor: 0,
            conns: vec![c.clone()],
        };
        assert!(decode_conns(&encode_conns(&b)).is_ok());
        c.extra = vec![(MUST_UNDERSTAND | 0x42, vec![])];
        let b = ConnBatch {
            reactor: 0,
            conns: vec![c],
        };
        assert_eq!(
            decode_conns(&encode_conns(&b)),
            Err(FormatError::UnknownRequired(MUST_UNDERSTAND | 0x42))
        );
    }

    #[test]
    fn an_output_offset_past_its_first_chunk_is_refused() {
        let mut c = sample();
        c.output = Some(OutputState {
            offset: 99,
            chunks: vec![(ChunkKind::Push, b"ab".to_vec())],
        });
        let b = ConnBatch {
            reactor: 0,
            conns: vec![c],
        };
        assert_eq!(
            decode_conns(&encode_conns(&b)),
            Err(FormatError::Invalid("output offset"))
        );
    }

    fn arb_conn() -> impl Strategy<Value = ConnState> {
        (
            0u8..4,
            any::<u16>(),
            any::<u32>(),
            proptest::option::of("[a-z]{0,8}"),
            proptest::collection::vec(
                (
                    "[a-z]{1,8}",
                    any::<bool>(),
                    proptest::option::of(any::<u64>()),
                ),
                0..4,
            ),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 1..40)),
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..20), 0..3),
        )
            .prop_map(|(phase, flags, age, user, rooms, buf, chunks)| ConnState {
                phase,
                flags,
                age,
                expires: age / 2,
                user,
                rooms: rooms
                    .into_iter()
                    .map(|(name, by_client, floor)| RoomState {
                        name,
                        by_client,
                        floor,
                    })
                    .collect(),
                grants: None,
                peer_slot: None,
                input: buf.map(|buf| InputState {
                    scanned: (buf.len() / 2) as u32,
                    buf,
                    ..InputState::default()
                }),
                output: (!chunks.is_empty()).then(|| OutputState {
                    offset: 0,
                    chunks: chunks.into_iter().map(|c| (ChunkKind::Push, c)).collect(),
                }),
                extra: vec![],
            })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_header(&bytes);
            let _ = decode_conns(&bytes);
            let _ = decode_clients(&bytes);
            let _ = decode_listeners(&bytes);
            let _ = decode_totals(&bytes);
            let _ = decode_identity(&bytes);
            let _ = decode_messages(&bytes);
            let _ = decode_history(&bytes);
            let _ = AccessState::decode(&bytes);
        }

        #[test]
        fn mutated_state_never_panics(pos in any::<usize>(), byte in any::<u8>()) {
            let b = ConnBatch { reactor: 1, conns: vec![sample(), sample()] };
            let mut bytes = encode_conns(&b);
            let i = pos % bytes.len();
            bytes[i] = byte;
            let _ = decode_conns(&bytes);
            bytes.truncate(i);
            prop_assert!(decode_conns(&bytes).is_err());
        }

        #[test]
        fn encode_then_decode_round_trips(conns in proptest::collection::vec(arb_conn(), 0..6), reactor in any::<u16>()) {
            let b = ConnBatch { reactor, conns };
            prop_assert_eq!(decode_conns(&encode_conns(&b)), Ok(b));
        }
    }
}
