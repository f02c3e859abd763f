//! The dispatcher's part in an upgrade: `UPGRADE` asks the coordinator for one; a
//! freeze stops control input and, once nothing is in flight, freezes the reactors
//! and exports the control clients; a thaw resumes; the new process imports them.
//!
//! Pushes during a hand-over wait in the kernel: the dispatcher stops reading control
//! clients (and accepting new ones), so every command not yet read stays in its
//! socket's buffer, in order and bounded by it, and travels with the socket to the
//! new process, which reads it next. Whatever was read before the freeze is run here
//! and its reply written or handed over as unwritten output. So no command runs
//! twice and none is lost, and a client sees only a pause: control clients are handed
//! over, never closed — except one caught streaming past an oversized argument
//! (its parser has dropped bytes the new one would need) and ones already closing,
//! which the old process drops when it exits. One that has only half-closed (sent
//! its FIN) is handed over with its unwritten replies like any other.
//!
//! The freeze waits for what is in flight to finish first (JOIN / LEAVE / KICK acks,
//! replies held for the broker, batches not yet sent, HTTP requests running), so the
//! reactors' state and the replies agree when they are exported. Frozen, the
//! dispatcher still applies the reactors' events and sends their answers (a
//! `wspush.v1` join's position), and it must never write to a client: the export
//! describes each one's unwritten output. HTTP API connections go over like control
//! clients, between requests.
//!
//! Cluster mode: from the freeze on, broker messages are kept, not routed (the
//! exported connections are the new process's to deliver to); after the commit they
//! are forwarded to the new process, which delivers them before its own and drops its
//! own repeats (`merge_forwarded`). If the upgrade fails they are routed here, in
//! order, as the thaw's first act.

use std::os::fd::{AsRawFd, OwnedFd};

use crossbeam_channel::{Receiver, Sender};
use mio::{Interest, Token};

use super::client::Client;
use super::Dispatcher;
use crate::control::resp::{self, Limits, Parser};
use crate::handover::format::{ClientState, HistoryRoom, CLIENT_HTTP};
use crate::link::handover::{BrokerMessage, ClientsExport, ReactorExport, ToDispatcher};
use crate::link::ReactorMsg;

/// `Client::waiting` of a client whose UPGRADE is in progress: no reactor request
/// ever has this id.
pub(super) const UPGRADE_WAIT: u64 = u64::MAX;

/// Longest a new process in cluster mode keeps control input waiting for its broker
/// link; then commands run and answer -TRYAGAIN as on any node whose link is down.
const WARM_UP: std::time::Duration = std::time::Duration::from_secs(5);

/// How the dispatcher reaches the upgrade's coordinator, and hears from it.
pub struct UpgradeLink {
    /// An upgrade is asked for (`UPGRADE`).
    pub requests: Sender<()>,
    pub inbox: Receiver<ToDispatcher>,
    /// A coordinator runs (a server started in-process has none: `UPGRADE` is refused
    /// rather than left waiting).
    pub available: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Where the dispatcher is in a hand-over.
#[derive(Default)]
pub(super) enum State {
    #[default]
    Serving,
    /// No control input is read; freezes once nothing is in flight.
    Quiescing {
        reactors: Sender<ReactorExport>,
        clients: Sender<ClientsExport>,
    },
    /// Exported: clients are not written to until a thaw. Broker messages are held
    /// (`held`), not routed: the new process delivers them (`forward`, once the
    /// upgrade has committed), or this one does if it thaws.
    Frozen {
        held: Vec<BrokerMessage>,
        forward: Option<Sender<BrokerMessage>>,
    },
    /// New process in cluster mode: control input waits (as it did in the old
    /// process) until the broker link is up and the old process has forwarded what
    /// it received after its freeze, or `until`; so no command the old process left
    /// unread is refused with -TRYAGAIN for a link still connecting, and broker
    /// messages are delivered once, in order. `own` holds this process's own broker
    /// messages meanwhile.
    Warming {
        until: std::time::Instant,
        own: Vec<BrokerMessage>,
        linked: Option<Sender<()>>,
    },
}

/// Broker messages held on either side of a hand-over, at most (then dropped and
/// counted like any message a full reactor queue drops).
const MAX_HELD_MESSAGES: usize = 1 << 20;
/// And at most this many payload bytes (1M messages at the largest --max-message
/// would otherwise be gigabytes).
const MAX_HELD_BYTES: usize = if cfg!(test) { 1 << 20 } else { 256 << 20 };

impl State {
    pub fn serving(&self) -> bool {
        matches!(self, State::Serving)
    }

    pub fn frozen(&self) -> bool {
        matches!(self, State::Frozen { .. })
    }
}

impl Dispatcher {
    /// Connects this dispatcher to the upgrade's coordinator.
    pub fn set_upgrade(&mut self, link: UpgradeLink) {
        self.upgrade = Some(link);
    }

    /// `UPGRADE`: the reply comes when the upgrade ends: `+OK` from the new process,
    /// or `-ERR` from this one.
    pub(super) fn request_upgrade(&mut self, key: usize) {
        // One asked for already: this client waits for its outcome too (a second
        // request could reach the coordinator after it dropped the ones made during
        // the upgrade, and start another nobody waits for).
        let running = self
            .clients
            .iter()
            .any(|(_, c)| c.waiting == Some(UPGRADE_WAIT));
        let asked = running
            || self.upgrade.as_ref().is_some_and(|u| {
                u.available.load(std::sync::atomic::Ordering::SeqCst) && u.requests.send(()).is_ok()
            });
        let c = &mut self.clients[key];
        if asked {
            c.waiting = Some(UPGRADE_WAIT);
        } else {
            resp::write_error(
                c.out(),
                "ERR upgrades are not available in this process (it is stopping, or runs without an upgrade coordinator)",
            );
        }
    }

    /// Applies the coordinator's messages, and freezes once quiescing is done.
    pub(super) fn handover_turn(&mut self) {
        while let Some(msg) = self.upgrade.as_ref().and_then(|u| u.inbox.try_recv().ok()) {
            match msg {
                ToDispatcher::Freeze { reactors, clients } => {
                    if self.handover.serving() {
                        log::info!("dispatcher: quiescing for the upgrade");
                        self.handover = State::Quiescing { reactors, clients };
                    }
                }
                ToDispatcher::Thaw { error } => self.thaw(&error),
                ToDispatcher::Forward { tx } => {
                    if let State::Frozen { held, forward } = &mut self.handover {
                        for m in held.drain(..) {
                            let _ = tx.send(m);
                        }
                        *forward = Some(tx);
                    }
                }
                ToDispatcher::DropBroker { done } => {
                    // Its subscriptions end with the connections; nothing is sent
                    // (no Leaving: the node carries on in the new process).
                    self.cluster = None;
                    let _ = done.send(());
                }
                ToDispatcher::Forwarding { linked: tx } => {
                    if let State::Warming { linked, .. } = &mut self.handover {
                        *linked = Some(tx);
                    }
                }
                ToDispatcher::Forwarded(messages) => self.merge_forwarded(messages),
            }
        }
        if matches!(self.handover, State::Quiescing { .. }) {
            // A command stashed until the broker answered earlier ones is in flight
            // too (it was read): it runs here, where `serve` would have run it.
            let stashed: Vec<usize> = self
                .clients
                .iter()
                .filter(|(_, c)| c.stashed.is_some())
                .map(|(k, _)| k)
                .collect();
            for key in stashed {
                self.run_stashed(key);
            }
            if self.quiet() {
                self.freeze();
            }
        }
        if let State::Warming { until, linked, .. } = &mut self.handover {
            let up = self
                .cluster
                .as_ref()
                .is_none_or(|c| c.ready() && c.linked());
            if up {
                if let Some(tx) = linked.take() {
                    let _ = tx.send(());
                }
            }
            if std::time::Instant::now() >= *until {
                log::warn!("dispatcher: nothing forwarded by the old process in time (broker link up: {up}); serving");
                self.merge_forwarded(Vec::new());
            }
        }
    }

    /// Nothing in flight that the export would have to describe.
    fn quiet(&self) -> bool {
        self.pending.is_empty()
            && self.broker_waits.is_empty()
            && self.batch_started.is_none()
            && self.http.values().all(|h| h.idle())
            && self.clients.iter().all(|(_, c)| {
                c.closing
                    || ((c.waiting.is_none() || c.waiting == Some(UPGRADE_WAIT))
                        && c.held_count() == 0
                        && c.stashed.is_none()
                        && c.broker_inflight == 0)
            })
    }

    fn freeze(&mut self) {
        let State::Quiescing { reactors, clients } = std::mem::take(&mut self.handover) else {
            return;
        };
        for r in &self.reactors {
            let _ = r.send(ReactorMsg::Freeze(reactors.clone()));
        }
        let mut export = ClientsExport {
            clients: Vec::new(),
            fds: Vec::new(),
            cluster: self.cluster.as_ref().map(|c| c.identity()),
            // In cluster mode positions and history live in Redis.
            history: if self.cluster.is_none() {
                self.history
                    .export()
                    .into_iter()
                    .map(|(name, pos, entries)| HistoryRoom {
                        name: name.to_string(),
                        epoch: pos.epoch.to_string(),
                        offset: pos.offset,
                        entries: entries.into_iter().map(|(o, p)| (o, p.to_vec())).collect(),
                    })
                    .collect()
            } else {
                Vec::new()
            },
        };
        for (key, c) in self.clients.iter() {
            let http = self.http.get(&key);
            // A client that has sent its FIN (`c.eof`) goes too: its replies may not
            // all be written yet, and the new process reads the same end of file.
            if c.closing || (http.is_none() && c.parser.skipping()) {
                continue;
            }
            let mut extra = Vec::new();
            if let Some(h) = http {
                let (wire, continued) = h.handover_parts();
                let mut b = vec![u8::from(continued)];
                b.extend_from_slice(wire);
                extra.push((CLIENT_HTTP, b));
            }
            export.clients.push(ClientState {
                authed: c.authed,
                auth_failures: c.auth_failures,
                resp3: c.resp3,
                name: c.name.clone(),
                input: c.input.clone(),
                output: c.output.clone(),
                answer_upgrade: c.waiting == Some(UPGRADE_WAIT),
                extra,
            });
            export.fds.push(c.stream.as_raw_fd());
        }
        log::info!(
            "dispatcher: frozen; exported {} control clients",
            export.clients.len()
        );
        self.handover = State::Frozen {
            held: Vec::new(),
            forward: None,
        };
        let _ = clients.send(export);
    }

    /// A broker message, unless a hand-over holds it (see `State`).
    pub(super) fn hold_broker_message(
        &mut self,
        channel: Vec<u8>,
        payload: Vec<u8>,
    ) -> Option<(Vec<u8>, Vec<u8>)> {
        let held = match &mut self.handover {
            State::Frozen {
                forward: Some(tx), ..
            } => {
                let _ = tx.send((channel, payload));
                return None;
            }
            State::Frozen { held, .. } => held,
            State::Warming { own, .. } => own,
            State::Serving | State::Quiescing { .. } => return Some((channel, payload)),
        };
        if held.is_empty() {
            // A new holding period (every one starts with an empty list).
            self.held_bytes = 0;
        }
        let size = channel.len() + payload.len();
        if held.len() < MAX_HELD_MESSAGES && self.held_bytes + size <= MAX_HELD_BYTES {
            self.held_bytes += size;
            held.push((channel, payload));
        } else {
            self.stats.broker_dropped += 1;
        }
        None
    }

    /// Routes broker messages as they came from Redis.
    fn route_broker(&mut self, messages: Vec<BrokerMessage>) {
        let now = std::time::Instant::now();
        for (channel, payload) in messages {
            let Some(cluster) = &mut self.cluster else {
                return;
            };
            if let Some(d) = cluster.route(&channel, &payload, now) {
                self.deliver(d);
            }
        }
    }

    /// New process: delivers what the old one received after its freeze, then its
    /// own broker messages less those it was forwarded. Each sender's messages come
    /// through one Redis instance in the order it published them (its sequence
    /// numbers rise), on both processes' subscriptions alike, so a message of this
    /// process's own that is at or below the last forwarded one of the same sender
    /// and instance was forwarded already.
    fn merge_forwarded(&mut self, forwarded: Vec<BrokerMessage>) {
        // Too late (the warm-up ended without it): whatever runs now (a freeze for
        // the next upgrade) is not this one's to end.
        if !matches!(self.handover, State::Warming { .. }) {
            return;
        }
        let State::Warming { own, .. } = std::mem::take(&mut self.handover) else {
            return;
        };
        let mut last: std::collections::HashMap<(usize, u64), u64> =
            std::collections::HashMap::new();
        if let Some(c) = &self.cluster {
            for (channel, payload) in &forwarded {
                if let Some((origin, seq)) = crate::dispatch::broker::wire::order_key(payload) {
                    let e = last
                        .entry((c.instance_of_channel(channel), origin))
                        .or_default();
                    *e = (*e).max(seq);
                }
            }
        }
        let n = forwarded.len();
        self.route_broker(forwarded);
        let fresh: Vec<BrokerMessage> = match &self.cluster {
            Some(c) => own
                .into_iter()
                .filter(|(channel, payload)| {
                    match crate::dispatch::broker::wire::order_key(payload) {
                        Some((origin, seq)) => last
                            .get(&(c.instance_of_channel(channel), origin))
                            .is_none_or(|&l| seq > l),
                        None => true,
                    }
                })
                .collect(),
            None => own,
        };
        log::info!(
            "dispatcher: {n} broker messages forwarded by the old process, {} of its own after them; serving control clients",
            fresh.len()
        );
        self.route_broker(fresh);
        self.handover = State::Serving;
        self.ready.extend(self.clients.iter().map(|(k, _)| k));
        self.accept();
        self.accept_http();
    }

    /// The upgrade failed: serve again, and tell those who asked for it.
    fn thaw(&mut self, error: &str) {
        // Still warming up after taking over (an upgrade asked for at once, which
        // this state never froze for, failed): the warm-up and what it holds go on.
        let was = if matches!(self.handover, State::Warming { .. }) {
            State::Serving
        } else {
            std::mem::take(&mut self.handover)
        };
        if !was.serving() {
            log::warn!("dispatcher: upgrade failed ({error}); serving again");
        }
        // Broker messages that came while frozen, delivered now, in order.
        if let State::Frozen { held, .. } = was {
            self.route_broker(held);
        }
        for r in &self.reactors {
            let _ = r.send(ReactorMsg::Thaw);
        }
        let keys: Vec<usize> = self.clients.iter().map(|(k, _)| k).collect();
        for key in keys {
            let c = &mut self.clients[key];
            if c.waiting == Some(UPGRADE_WAIT) {
                c.waiting = None;
                resp::write_error(c.out(), &format!("ERR upgrade failed: {error}"));
            }
            self.ready.push(key);
        }
        // Control and HTTP connections that came meanwhile wait in the backlog, and
        // their edge is gone.
        self.accept();
        self.accept_http();
    }

    /// New process, before the dispatcher runs: takes over rooms' positions and
    /// retained messages, so `wspush.v1` clients' positions stay valid.
    pub fn import_history(&mut self, rooms: Vec<HistoryRoom>) -> Result<usize, String> {
        let now = std::time::Instant::now();
        let n = rooms.len();
        for r in rooms {
            if !crate::names::is_valid_name(r.name.as_bytes()) {
                return Err("invalid room name in history".into());
            }
            let position = crate::history::Position {
                epoch: r.epoch.into(),
                offset: r.offset,
            };
            let entries = r.entries.into_iter().map(|(o, p)| (o, p.into())).collect();
            self.history.adopt(&r.name, position, entries, now);
        }
        Ok(n)
    }

    /// New process, before the dispatcher runs: carries on as the cluster node
    /// instance the old process was.
    pub fn adopt_cluster_identity(&mut self, identity: [u64; 3]) {
        if let Some(c) = &mut self.cluster {
            c.adopt_identity(identity);
            self.handover = State::Warming {
                until: std::time::Instant::now() + WARM_UP,
                own: Vec::new(),
                linked: None,
            };
        }
    }

    /// New process, before the dispatcher runs: takes over control clients (one
    /// descriptor each) and answers those that asked for the upgrade.
    pub fn import_clients(
        &mut self,
        clients: Vec<ClientState>,
        fds: Vec<OwnedFd>,
    ) -> Result<usize, String> {
        if clients.len() != fds.len() {
            return Err(format!(
                "{} control clients came with {} descriptors",
                clients.len(),
                fds.len()
            ));
        }
        let n = clients.len();
        for (s, fd) in clients.into_iter().zip(fds) {
            let std_stream = std::net::TcpStream::from(fd);
            std_stream
                .set_nonblocking(true)
                .map_err(|e| format!("control socket: {e}"))?;
            let peer = std_stream
                .peer_addr()
                .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
            let mut stream = mio::net::TcpStream::from_std(std_stream);
            let entry = self.clients.vacant_entry();
            let key = entry.key();
            self.poll
                .registry()
                .register(
                    &mut stream,
                    Token(key),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .map_err(|e| format!("register a control client: {e}"))?;
            self.next_client_id += 1;
            let mut c = Client::new(
                self.next_client_id,
                stream,
                peer,
                Parser::new(Limits {
                    max_bulk: self.settings.max_message,
                    max_args: 1024,
                }),
                s.authed,
            );
            c.auth_failures = s.auth_failures;
            c.resp3 = s.resp3;
            c.name = s.name;
            c.input = s.input;
            c.output = s.output;
            if s.answer_upgrade {
                resp::write_simple(c.out(), "OK");
            }
            if let Some((_, b)) = s.extra.iter().find(|(t, _)| *t == CLIENT_HTTP) {
                // An HTTP connection: its `Client` carries no RESP parser limits.
                c.parser = Parser::new(Limits {
                    max_bulk: 0,
                    max_args: 0,
                });
                let continued = b.first().is_some_and(|&f| f == 1);
                let partial = !c.input.is_empty();
                let wire = b.get(1..).unwrap_or_default().to_vec();
                self.http.insert(
                    key,
                    super::http::HttpConn::adopted(wire, continued, partial),
                );
            }
            entry.insert(c);
            // Commands read by the old process and not run yet are run first.
            self.ready.push(key);
        }
        Ok(n)
    }
}
