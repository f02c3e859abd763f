//! The two sides of an upgrade: the running process's coordinator thread, which
//! starts the new binary and hands everything over, and the new process's start,
//! which takes it.
//!
//! ```text
//! old                                         new (same flags, WSPUSH_UPGRADE_FD=n)
//!  spawn ─────────────────────────────────▶   Hello
//!  Hello, Listeners (every listening socket)  ◀── (accepts nothing yet)
//!  freeze: control input unread, in-flight
//!  work finished, reactors export
//!  Conns × (≤ 253 per frame), History,
//!  Clients, Cluster, End ─────────────────▶   rebuilds every connection and client
//!                                        ◀──  Taken            ← the commit point
//!  cluster mode only:                         starts its threads, subscribes; holds
//!   stays subscribed, keeps broker messages   control input and broker messages
//!                                        ◀──  Linked (its broker link is up)
//!   +100 ms, closes its Redis connections,
//!   Forward × n, Forward (empty) ─────────▶   delivers those, then its own less
//!                                             repeats; runs the commands that waited
//!  MAINPID=new to systemd, exit 0             (standalone: at once after Taken)
//! ```
//!
//! The commit point is the new process's `Taken`: it sends it only once every
//! frame was decoded and every socket registered, and does not read, write or accept
//! before it has sent it. Until the old process has read it, nothing it handed over
//! has been touched by anyone else, so on any failure — the binary does not start, it
//! exits or crashes, it refuses the state (`Refused`, e.g. another format version), or
//! it is too slow — the old process kills it and thaws: it serves every connection as
//! if nothing had happened, counts the failure (INFO `upgrades_failed`), logs it, and
//! answers `UPGRADE` with `-ERR`. Once it has read `Taken` it never touches a
//! handed-over socket again: it exits at once, without a Close frame or a shutdown(2)
//! (closing its copies of the descriptors leaves the connections to the new process).
//!
//! Test-only hook: `WSPUSH_TEST_ABORT_HANDOVER_AFTER=N` makes the *new* process abort
//! after taking N connections, as a crash mid-hand-over would. It is read only on the
//! receiving side of a hand-over, so it changes nothing for a process that is not
//! being upgraded to.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use log::{error, info, warn};

use super::fds::{recv_frame, send_frame, Frame, FrameError, MAX_FDS};
use super::format::{self, ConnBatch, Kind, Totals};
use crate::config::Config;
use crate::link::handover::{ToDispatcher, UPGRADES};
use crate::server::{Inherited, Server, StartError, UpgradeHandle};

/// The environment variable naming the new process's end of the upgrade socket.
pub const ENV_FD: &str = "WSPUSH_UPGRADE_FD";
/// Test-only: abort the new process after taking this many connections.
const ENV_TEST_ABORT: &str = "WSPUSH_TEST_ABORT_HANDOVER_AFTER";
/// How long the old process waits for the new one at each step (start-up, reading
/// the state) before it gives up and thaws.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long in-flight work may take to finish before the freeze gives up.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);
/// Cluster mode: how long the old process goes on receiving broker messages once
/// the new one is subscribed (deliveries already on their way to the old one).
const FORWARD_GRACE: Duration = Duration::from_millis(100);
/// Forwarded broker messages per frame.
const FORWARD_CHUNK: usize = 4096;
/// Rooms of history per frame.
const HISTORY_CHUNK: usize = 1024;

/// What the old process starts: the binary and its arguments (this process's own).
#[derive(Clone)]
pub struct NewBinary {
    pub path: PathBuf,
    pub args: Vec<OsString>,
}

impl NewBinary {
    /// `--upgrade-binary`, or the path this process was started from, resolved now:
    /// after a deploy replaces the file, /proc/self/exe names the deleted old one.
    pub fn from_config(cfg: &Config) -> io::Result<NewBinary> {
        let path = match &cfg.upgrade_binary {
            Some(p) => p.clone(),
            None => std::env::current_exe()?,
        };
        Ok(NewBinary {
            path,
            args: std::env::args_os().skip(1).collect(),
        })
    }
}

/// Runs the coordinator: one upgrade at a time, each time an upgrade is asked for.
pub fn spawn_coordinator(handle: UpgradeHandle, binary: NewBinary) -> io::Result<()> {
    handle
        .available
        .store(true, std::sync::atomic::Ordering::SeqCst);
    std::thread::Builder::new()
        .name("upgrade".into())
        .spawn(move || {
            while handle.requests.1.recv().is_ok() {
                handle.running.store(true, std::sync::atomic::Ordering::SeqCst);
                // Stopping (main cleared `available`, then waits while `running`):
                // the listeners may be closing, so no upgrade may start. Both sides
                // store their flag before reading the other's, so one of them sees it.
                if !handle.available.load(std::sync::atomic::Ordering::SeqCst) {
                    handle.running.store(false, std::sync::atomic::Ordering::SeqCst);
                    info!("upgrade: not started, the process is stopping");
                    continue;
                }
                UPGRADES.started.fetch_add(1, Relaxed);
                info!("upgrade: starting {}", binary.path.display());
                let started = Instant::now();
                match upgrade(&handle, &binary) {
                    Ok((pid, conns, clients)) => {
                        info!(
                            "upgrade: pid {pid} took {conns} connections and {clients} control clients in {:?}; exiting",
                            started.elapsed()
                        );
                        notify(&format!("MAINPID={pid}\nREADY=1"));
                        let _ = io::Write::flush(&mut io::stdout());
                        // No destructor, no Close frame, no shutdown(2): the sockets
                        // are the new process's now.
                        std::process::exit(0);
                    }
                    Err(e) => {
                        UPGRADES.failed.fetch_add(1, Relaxed);
                        error!("upgrade failed, serving on: {e}");
                        // Asked again while this one ran: the thaw answers those with
                        // it. Dropped before the thaw, never after: an UPGRADE the
                        // thawed dispatcher reads next (one that waited unread in its
                        // socket) asks for an upgrade of its own.
                        while handle.requests.1.try_recv().is_ok() {}
                        let _ = handle
                            .to_dispatcher
                            .send(ToDispatcher::Thaw { error: e });
                        let _ = handle.dispatcher_waker.wake();
                        handle
                            .running
                            .store(false, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            }
        })
        .map(|_| ())
}

/// A started new process; killed and reaped on drop unless it committed.
struct Child {
    child: std::process::Child,
    committed: bool,
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.committed {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn upgrade(h: &UpgradeHandle, bin: &NewBinary) -> Result<(u32, u32, u32), String> {
    let (sock, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let fd = theirs.as_raw_fd();
    let mut cmd = std::process::Command::new(&bin.path);
    cmd.args(&bin.args)
        .env(ENV_FD, fd.to_string())
        .stdin(std::process::Stdio::null());
    // SAFETY: between fork and exec only fcntl runs, which is async-signal-safe; it
    // clears close-on-exec on the one descriptor the new process is told about.
    unsafe {
        cmd.pre_exec(move || {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.path.display()))?;
    drop(theirs);
    let mut child = Child {
        child,
        committed: false,
    };
    let pid = child.child.id();
    match hand_over(h, &sock, pid) {
        Ok((totals, cluster)) => {
            child.committed = true;
            if cluster {
                forward(h, &sock);
            }
            Ok((pid, totals.conns, totals.clients))
        }
        Err(Failure::Closed) => {
            // It may have refused while this side was still sending: its reason is
            // then waiting on the socket.
            let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
            if let Ok(f) = recv_frame(&sock) {
                if f.kind == Kind::Refused {
                    let why = String::from_utf8_lossy(&f.payload).into_owned();
                    return Err(format!("the new process refused the state: {why}"));
                }
            }
            let status = child_status(&mut child);
            Err(format!("the new process (pid {pid}) {status}"))
        }
        Err(Failure::Other(e)) => Err(format!("pid {pid}: {e}")),
    }
}

/// Why a hand-over did not commit.
enum Failure {
    /// The new process closed the socket (it exited or crashed).
    Closed,
    Other(String),
}

impl From<FrameError> for Failure {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Closed => Failure::Closed,
            other => Failure::Other(other.to_string()),
        }
    }
}

impl From<String> for Failure {
    fn from(e: String) -> Self {
        Failure::Other(e)
    }
}

/// The old process's side of the protocol (module comment), up to the commit point.
fn hand_over(h: &UpgradeHandle, sock: &UnixStream, pid: u32) -> Result<(Totals, bool), Failure> {
    let _ = sock.set_read_timeout(Some(STEP_TIMEOUT));
    let _ = sock.set_write_timeout(Some(STEP_TIMEOUT));

    // 1. The new process is up and reads our format.
    let hello = recv_frame(sock)?;
    if hello.kind != Kind::Hello {
        return Err(format!("pid {pid} said {:?} instead of hello", hello.kind).into());
    }
    send_frame(
        sock,
        Kind::Hello,
        &format::encode_u32(std::process::id()),
        &[],
    )?;
    // 2. Listening sockets first: both processes hold them from now on, so no
    //    connection attempt is refused at any moment.
    let mut lfds: Vec<RawFd> = h.ws_fds.clone();
    lfds.push(h.control_fd);
    lfds.extend(h.http_fd);
    send_frame(
        sock,
        Kind::Listeners,
        &format::encode_listeners(h.ws_fds.len() as u16, h.http_fd.is_some()),
        &lfds,
    )?;
    // 3. Freeze and export.
    let (rtx, rrx) = crossbeam_channel::unbounded();
    let (ctx, crx) = crossbeam_channel::bounded(1);
    h.to_dispatcher
        .send(ToDispatcher::Freeze {
            reactors: rtx,
            clients: ctx,
        })
        .map_err(|_| "the dispatcher is gone".to_string())?;
    let _ = h.dispatcher_waker.wake();
    let frozen_at = Instant::now();
    let deadline = frozen_at + FREEZE_TIMEOUT;
    let left = || deadline.saturating_duration_since(Instant::now());
    let clients = crx
        .recv_timeout(left())
        .map_err(|_| format!("in-flight work did not finish within {FREEZE_TIMEOUT:?}"))?;
    let mut exports = Vec::with_capacity(h.reactors);
    for _ in 0..h.reactors {
        exports.push(
            rrx.recv_timeout(left())
                .map_err(|_| format!("a reactor did not freeze within {FREEZE_TIMEOUT:?}"))?,
        );
    }
    // 4. Connections, in frames of at most MAX_FDS descriptors.
    let mut totals = Totals::default();
    for e in exports {
        let reactor = e.batch.reactor;
        let mut conns = e.batch.conns.into_iter();
        for fds in e.fds.chunks(MAX_FDS) {
            let batch = ConnBatch {
                reactor,
                conns: conns.by_ref().take(fds.len()).collect(),
            };
            totals.conns += batch.conns.len() as u32;
            send_frame(sock, Kind::Conns, &format::encode_conns(&batch), fds)?;
        }
    }
    let cluster = clients.cluster;
    for rooms in clients.history.chunks(HISTORY_CHUNK) {
        send_frame(sock, Kind::History, &format::encode_history(rooms), &[])?;
    }
    let mut states = clients.clients.into_iter();
    for fds in clients.fds.chunks(MAX_FDS) {
        let batch: Vec<_> = states.by_ref().take(fds.len()).collect();
        totals.clients += batch.len() as u32;
        send_frame(sock, Kind::Clients, &format::encode_clients(&batch), fds)?;
    }
    if let Some(id) = cluster {
        send_frame(sock, Kind::Cluster, &format::encode_identity(id), &[])?;
    }
    send_frame(sock, Kind::End, &format::encode_totals(totals), &[])?;
    // 5. The commit point.
    let answer = recv_frame(sock)?;
    match answer.kind {
        Kind::Taken => {
            info!(
                "upgrade: frozen for {:?} ({} connections, {} control clients)",
                frozen_at.elapsed(),
                totals.conns,
                totals.clients
            );
            Ok((totals, cluster.is_some()))
        }
        Kind::Refused => Err(format!(
            "the new process refused the state: {}",
            String::from_utf8_lossy(&answer.payload)
        )
        .into()),
        other => Err(format!("pid {pid} answered {other:?}").into()),
    }
}

/// Old process, cluster mode, after the commit: keeps its Redis subscriptions until
/// the new process has its own (`Linked`), plus `FORWARD_GRACE` for messages still
/// on their way here, and hands it every broker message received since the freeze.
/// The new process delivers those, then its own less the ones it was handed (see
/// `dispatch::handover`), so a message another node publishes during the hand-over
/// is delivered once. Best effort past its bounds: a new process whose broker link
/// does not come up within `STEP_TIMEOUT` gets what arrived until then.
fn forward(h: &UpgradeHandle, sock: &UnixStream) {
    let (tx, rx) = crossbeam_channel::unbounded();
    if h.to_dispatcher.send(ToDispatcher::Forward { tx }).is_err() {
        return;
    }
    let _ = h.dispatcher_waker.wake();
    match recv_frame(sock) {
        Ok(f) if f.kind == Kind::Linked => {}
        Ok(f) => warn!("upgrade: expected Linked, got {:?}", f.kind),
        Err(e) => warn!("upgrade: waiting for the new process's broker link: {e}"),
    }
    std::thread::sleep(FORWARD_GRACE);
    // Unsubscribed only now, and before the new process counts subscribers for a
    // PUBLISH reply (it serves once it has what is forwarded).
    let (dtx, drx) = crossbeam_channel::bounded(1);
    if h.to_dispatcher
        .send(ToDispatcher::DropBroker { done: dtx })
        .is_ok()
    {
        let _ = h.dispatcher_waker.wake();
        let _ = drx.recv_timeout(Duration::from_secs(1));
    }
    let messages: Vec<_> = rx.try_iter().collect();
    info!(
        "upgrade: forwarding {} broker messages received since the freeze",
        messages.len()
    );
    for chunk in messages.chunks(FORWARD_CHUNK) {
        if send_frame(sock, Kind::Forward, &format::encode_messages(chunk), &[]).is_err() {
            return;
        }
    }
    let _ = send_frame(sock, Kind::Forward, &format::encode_messages(&[]), &[]);
}

/// New process, cluster mode: tells the old one when the broker link is up, then
/// gives the dispatcher what the old one forwards (see `forward`).
fn receive_forwarded(sock: UnixStream, server: &Server) {
    let (ltx, lrx) = crossbeam_channel::bounded(1);
    let to = server.upgrade.to_dispatcher.clone();
    let waker = server.upgrade.dispatcher_waker.clone();
    if to.send(ToDispatcher::Forwarding { linked: ltx }).is_err() {
        return;
    }
    let _ = waker.wake();
    let spawned = std::thread::Builder::new()
        .name("upgrade-forward".into())
        .spawn(move || {
            let mut all = Vec::new();
            if lrx.recv_timeout(STEP_TIMEOUT).is_ok()
                && send_frame(&sock, Kind::Linked, &[], &[]).is_ok()
            {
                loop {
                    match recv_frame(&sock) {
                        Ok(f) if f.kind == Kind::Forward => {
                            match format::decode_messages(&f.payload) {
                                Ok(m) if m.is_empty() => break,
                                Ok(m) => all.extend(m),
                                Err(e) => {
                                    warn!("upgrade: forwarded messages refused: {e}");
                                    break;
                                }
                            }
                        }
                        Ok(f) => {
                            warn!("upgrade: expected Forward, got {:?}", f.kind);
                            break;
                        }
                        Err(e) => {
                            warn!("upgrade: forwarded messages: {e}");
                            break;
                        }
                    }
                }
            }
            let _ = to.send(ToDispatcher::Forwarded(all));
            let _ = waker.wake();
        });
    if let Err(e) = spawned {
        warn!("upgrade: cannot start the forwarding thread: {e}");
    }
}

/// How a new process that closed its socket ended (it is waited for briefly).
fn child_status(child: &mut Child) -> String {
    for _ in 0..50 {
        if let Ok(Some(st)) = child.child.try_wait() {
            child.committed = true;
            return format!("exited ({st})");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    "closed the upgrade socket".into()
}

/// Sends `state` to systemd when it runs this process as a notify service.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            warn!("sd_notify: {e}");
            return;
        }
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), std::path::Path::new(&path))
    };
    if let Err(e) = sent {
        warn!("sd_notify {state:?}: {e}");
    }
}

/// The upgrade socket this process was started with, if it is the new process of
/// an upgrade.
pub fn inherited_socket() -> Option<Result<UnixStream, String>> {
    let v = std::env::var(ENV_FD).ok()?;
    // Not for this process's own children: a later upgrade names its own socket.
    std::env::remove_var(ENV_FD);
    let fd: RawFd = match v.parse() {
        Ok(fd) if fd > 2 => fd,
        _ => return Some(Err(format!("{ENV_FD}={v} is not a descriptor"))),
    };
    // SAFETY: F_GETFD only reads the flags of `fd`, which may not be open at all.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Some(Err(format!("{ENV_FD}={v}: descriptor is not open")));
    }
    // SAFETY: the descriptor is open, was made for this process by the old one, and
    // nothing else in this process owns it. Close-on-exec again, like every other.
    unsafe {
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        Some(Ok(UnixStream::from_raw_fd(fd)))
    }
}

/// New process: takes the listening sockets, connections and control clients from
/// the process being upgraded, and starts serving them once it has said `Taken`.
pub fn take_over(
    sock: UnixStream,
    cfg: &Config,
    max_connections: usize,
    max_handshakes: usize,
) -> Result<Server, StartError> {
    let fail = |what: String| StartError::Resource {
        what: "the hand-over from the previous process".into(),
        err: io::Error::other(what),
    };
    let _ = sock.set_read_timeout(Some(STEP_TIMEOUT));
    let _ = sock.set_write_timeout(Some(STEP_TIMEOUT));
    let refuse = |sock: &UnixStream, why: String| {
        let _ = send_frame(sock, Kind::Refused, why.as_bytes(), &[]);
        why
    };
    send_frame(
        &sock,
        Kind::Hello,
        &format::encode_u32(std::process::id()),
        &[],
    )
    .map_err(|e| fail(e.to_string()))?;
    let expect = |sock: &UnixStream, kind: Kind| -> Result<Frame, String> {
        match recv_frame(sock) {
            Ok(f) if f.kind == kind => Ok(f),
            Ok(f) => Err(refuse(sock, format!("expected {kind:?}, got {:?}", f.kind))),
            Err(e) => Err(refuse(sock, e.to_string())),
        }
    };
    expect(&sock, Kind::Hello).map_err(fail)?;
    let listeners = expect(&sock, Kind::Listeners).map_err(fail)?;
    let (ws_count, has_http) = format::decode_listeners(&listeners.payload)
        .map_err(|e| fail(refuse(&sock, e.to_string())))?;
    let ws_count = ws_count as usize;
    if listeners.fds.len() != ws_count + 1 + usize::from(has_http) {
        return Err(fail(refuse(
            &sock,
            "listener descriptors do not match".into(),
        )));
    }
    let mut fds = listeners.fds.into_iter();
    let ws: Vec<std::net::TcpListener> = fds
        .by_ref()
        .take(ws_count)
        .map(std::net::TcpListener::from)
        .collect();
    let control = fds
        .next()
        .map(std::net::TcpListener::from)
        .ok_or_else(|| fail("no control listener".into()))?;
    let http = fds.next().map(std::net::TcpListener::from);
    let abort_after: Option<usize> = std::env::var(ENV_TEST_ABORT)
        .ok()
        .and_then(|v| v.parse().ok());
    let mut taken = Totals::default();
    let mut cluster = false;
    let mut first_frame: Option<Instant> = None;
    let mut importing = Duration::ZERO;
    let mut import = |reactors: &mut [crate::reactor::Reactor],
                      dispatcher: &mut crate::dispatch::Dispatcher|
     -> Result<(), String> {
        // Each reactor rebuilds its own connections on a thread of its own (they share
        // nothing but atomics and channels), while this thread receives and decodes
        // the frames: the rebuild, most of the time per connection, runs on every
        // core. A reactor's batches reach it in the order sent.
        // Set once the whole state has arrived: each worker then announces its
        // reactor's connections (after its last batch) before the commit point.
        let complete = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            type Work = (ConnBatch, Vec<OwnedFd>);
            let mut to_reactor: Vec<crossbeam_channel::Sender<Work>> = Vec::new();
            let mut workers = Vec::new();
            let complete = &complete;
            for r in reactors.iter_mut() {
                let (tx, rx) = crossbeam_channel::bounded::<Work>(64);
                to_reactor.push(tx);
                workers.push(scope.spawn(move || -> Result<(usize, Duration), String> {
                    let (mut got, mut busy) = (0, Duration::ZERO);
                    for (batch, fds) in rx {
                        let t = Instant::now();
                        got += r.import(batch, fds)?;
                        busy += t.elapsed();
                    }
                    if complete.load(std::sync::atomic::Ordering::SeqCst) {
                        r.announce();
                    }
                    Ok((got, busy))
                }));
            }
            // Ends the workers and adds up what they took (the first error wins).
            let finish = |to_reactor: Vec<crossbeam_channel::Sender<Work>>,
                          workers: Vec<
                std::thread::ScopedJoinHandle<'_, Result<(usize, Duration), String>>,
            >|
             -> Result<(usize, Duration), String> {
                drop(to_reactor);
                let mut total = (0, Duration::ZERO);
                let mut first_err = None;
                for w in workers {
                    match w.join() {
                        Ok(Ok((got, busy))) => {
                            total.0 += got;
                            total.1 = total.1.max(busy);
                        }
                        Ok(Err(e)) => {
                            first_err.get_or_insert(e);
                        }
                        Err(_) => {
                            first_err.get_or_insert_with(|| "a reactor's import panicked".into());
                        }
                    }
                }
                first_err.map_or(Ok(total), Err)
            };
            let mut dispatched = 0usize;
            loop {
                let f = recv_frame(&sock).map_err(|e| refuse(&sock, e.to_string()))?;
                first_frame.get_or_insert_with(Instant::now);
                match f.kind {
                    Kind::Conns => {
                        let batch = format::decode_conns(&f.payload)
                            .map_err(|e| refuse(&sock, e.to_string()))?;
                        let i = batch.reactor as usize % to_reactor.len().max(1);
                        dispatched += batch.conns.len();
                        if to_reactor[i].send((batch, f.fds)).is_err() {
                            // That worker stopped on an error: report it.
                            let e = match finish(to_reactor, workers) {
                                Err(e) => e,
                                Ok(_) => "a reactor stopped importing".into(),
                            };
                            return Err(refuse(&sock, e));
                        }
                        if abort_after.is_some_and(|n| dispatched >= n) {
                            error!("{ENV_TEST_ABORT}: aborting mid-hand-over (test hook)");
                            std::process::abort();
                        }
                    }
                    Kind::Clients => {
                        let clients = format::decode_clients(&f.payload)
                            .map_err(|e| refuse(&sock, e.to_string()))?;
                        taken.clients += dispatcher
                            .import_clients(clients, f.fds)
                            .map_err(|e| refuse(&sock, e))?
                            as u32;
                    }
                    Kind::History => {
                        let rooms = format::decode_history(&f.payload)
                            .map_err(|e| refuse(&sock, e.to_string()))?;
                        dispatcher
                            .import_history(rooms)
                            .map_err(|e| refuse(&sock, e))?;
                    }
                    Kind::Cluster => {
                        let id = format::decode_identity(&f.payload)
                            .map_err(|e| refuse(&sock, e.to_string()))?;
                        dispatcher.adopt_cluster_identity(id);
                        cluster = true;
                    }
                    Kind::End => {
                        let want = format::decode_totals(&f.payload)
                            .map_err(|e| refuse(&sock, e.to_string()))?;
                        complete.store(true, std::sync::atomic::Ordering::SeqCst);
                        let (got, busy) =
                            finish(to_reactor, workers).map_err(|e| refuse(&sock, e))?;
                        taken.conns += got as u32;
                        importing = busy;
                        if want != taken {
                            return Err(refuse(&sock, format!("sent {want:?}, took {taken:?}")));
                        }
                        // The commit point: from here the sockets are ours alone.
                        send_frame(&sock, Kind::Taken, &format::encode_totals(taken), &[])
                            .map_err(|e| e.to_string())?;
                        UPGRADES.conns_taken.store(u64::from(taken.conns), Relaxed);
                        UPGRADES
                            .clients_taken
                            .store(u64::from(taken.clients), Relaxed);
                        info!(
                            "took over {} connections and {} control clients in {:?} ({:?} rebuilding connections on the busiest reactor)",
                            taken.conns,
                            taken.clients,
                            first_frame.map(|t| t.elapsed()).unwrap_or_default(),
                            importing
                        );
                        return Ok(());
                    }
                    other => return Err(refuse(&sock, format!("unexpected {other:?}"))),
                }
            }
        })
    };
    let server = Server::start_with(
        cfg,
        max_connections,
        max_handshakes,
        Some(Inherited {
            ws,
            control,
            import: &mut import,
            http,
        }),
    )?;
    if cluster {
        receive_forwarded(sock, &server);
    }
    Ok(server)
}
