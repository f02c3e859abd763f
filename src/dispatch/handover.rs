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
//! which the old process drops when it exits.
//!
//! The freeze waits for what is in flight to finish first (JOIN / LEAVE / KICK acks,
//! replies held for the broker, batches not yet sent), so the reactors' state and the
//! replies agree when they are exported. Frozen, the dispatcher still applies the
//! reactors' events and sends their answers (a `wspush.v1` join's position), and it
//! writes nothing to a client: the export describes each one's unwritten output.

use std::os::fd::{AsRawFd, OwnedFd};

use crossbeam_channel::{Receiver, Sender};
use mio::{Interest, Token};

use super::client::Client;
use super::Dispatcher;
use crate::control::resp::{self, Limits, Parser};
use crate::handover::format::ClientState;
use crate::link::handover::{ClientsExport, ReactorExport, ToDispatcher};
use crate::link::ReactorMsg;

/// `Client::waiting` of a client whose UPGRADE is in progress: no reactor request
/// ever has this id.
pub(super) const UPGRADE_WAIT: u64 = u64::MAX;

/// How the dispatcher reaches the upgrade's coordinator, and hears from it.
pub struct UpgradeLink {
    /// An upgrade is asked for (`UPGRADE`).
    pub requests: Sender<()>,
    pub inbox: Receiver<ToDispatcher>,
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
    /// Exported: clients are not written to until a thaw.
    Frozen,
}

impl State {
    pub fn serving(&self) -> bool {
        matches!(self, State::Serving)
    }

    pub fn frozen(&self) -> bool {
        matches!(self, State::Frozen)
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
        let asked = self
            .upgrade
            .as_ref()
            .is_some_and(|u| u.requests.send(()).is_ok());
        let c = &mut self.clients[key];
        if asked {
            c.waiting = Some(UPGRADE_WAIT);
        } else {
            resp::write_error(c.out(), "ERR upgrades are not available in this process");
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
            }
        }
        if matches!(self.handover, State::Quiescing { .. }) && self.quiet() {
            self.freeze();
        }
    }

    /// Nothing in flight that the export would have to describe.
    fn quiet(&self) -> bool {
        self.pending.is_empty()
            && self.broker_waits.is_empty()
            && self.batch_started.is_none()
            && self.clients.iter().all(|(_, c)| {
                c.closing
                    || c.eof
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
        };
        for (_, c) in self.clients.iter() {
            if c.closing || c.eof || c.parser.skipping() {
                continue;
            }
            export.clients.push(ClientState {
                authed: c.authed,
                auth_failures: c.auth_failures,
                resp3: c.resp3,
                name: c.name.clone(),
                input: c.input.clone(),
                output: c.output.clone(),
                answer_upgrade: c.waiting == Some(UPGRADE_WAIT),
                extra: Vec::new(),
            });
            export.fds.push(c.stream.as_raw_fd());
        }
        log::info!(
            "dispatcher: frozen; exported {} control clients",
            export.clients.len()
        );
        self.handover = State::Frozen;
        let _ = clients.send(export);
    }

    /// The upgrade failed: serve again, and tell those who asked for it.
    fn thaw(&mut self, error: &str) {
        let was = std::mem::take(&mut self.handover);
        if !was.serving() {
            log::warn!("dispatcher: upgrade failed ({error}); serving again");
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
        // Control connections that came meanwhile wait in the backlog, and their
        // edge is gone.
        self.accept();
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
            entry.insert(c);
            // Commands read by the old process and not run yet are run first.
            self.ready.push(key);
        }
        Ok(n)
    }
}
