//! A reactor's part in an upgrade: freezing, exporting its connections to the next
//! process, thawing if the upgrade fails, and, in the new process, importing them.
//!
//! Freezing stops everything that could change a connection behind the export's
//! back: no reads (input waits in the kernel), no accepts (new sockets wait in the
//! backlog, which the new process inherits), no timers. Commands still apply (the
//! dispatcher has stopped taking pushes, so only answers to joins in flight come) and
//! writes still go out, until no join waits for its position and nothing is left to
//! write but what the sockets refuse; then every connection is exported as it stands:
//! its descriptor (borrowed: nothing is closed or deregistered), its state, the bytes
//! queued for it and the bytes it sent that are not consumed yet.
//!
//! Once exported the reactor touches nothing (a write would move a queue the export
//! already describes): it only keeps what the channel brings until `Thaw`, which
//! resumes everything as if nothing had happened, reading every socket once since
//! edges that came meanwhile were not acted on. If the upgrade commits, the process
//! exits without another turn.
//!
//! Importing (new process, before the reactor thread starts) rebuilds each
//! connection through the same tables a live one uses, so the dispatcher's counts
//! come from the usual events, and timers carry on from each connection's age.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use crossbeam_channel::Sender;
use mio::{Interest, Token};

use super::conn::{flag, Conn, Input, Phase};
use super::outbox::{Chunk, WriteQueue};
use super::Reactor;
use crate::auth::{Grants, RoomPattern};
use crate::handover::format::{
    AccessState, ChunkKind, ConnBatch, ConnState, GrantState, InputState, OutputState, RoomState,
    CONN_ACCESS,
};
use crate::link::handover::ReactorExport;
use crate::link::peers::PeerSlot;
use crate::link::{Command, Event, ReactorMsg};
use crate::ws::message::{Assembler, AssemblerParts};

/// Where a reactor is in a hand-over.
#[derive(Default)]
pub(super) enum State {
    #[default]
    Serving,
    /// Finishing what is in flight; exports on `tx` when nothing is. `shutdown`: a
    /// shutdown came meanwhile, kept for after the hand-over (it would close
    /// connections the export is about to describe).
    Freezing {
        tx: Sender<ReactorExport>,
        shutdown: bool,
    },
    /// Exported: nothing is touched; `held` is what the channel brought since.
    Exported { held: Vec<ReactorMsg> },
}

impl State {
    pub fn frozen(&self) -> bool {
        !matches!(self, State::Serving)
    }

    pub fn exported(&self) -> bool {
        matches!(self, State::Exported { .. })
    }
}

fn phase_code(p: Phase) -> u8 {
    match p {
        Phase::Proxy => 0,
        Phase::Handshake => 1,
        Phase::Open => 2,
        Phase::Closing => 3,
    }
}

fn phase_from(b: u8) -> Option<Phase> {
    Some(match b {
        0 => Phase::Proxy,
        1 => Phase::Handshake,
        2 => Phase::Open,
        3 => Phase::Closing,
        _ => return None,
    })
}

impl Reactor {
    /// A shutdown while freezing waits for the hand-over's outcome (see `State`);
    /// true if it was kept.
    pub(super) fn hold_shutdown(&mut self) -> bool {
        match &mut self.handover {
            State::Freezing { shutdown, .. } => {
                *shutdown = true;
                true
            }
            State::Exported { held } => {
                held.push(ReactorMsg::Shutdown);
                true
            }
            State::Serving => false,
        }
    }

    pub(super) fn freeze(&mut self, tx: Sender<ReactorExport>) {
        if self.handover.frozen() {
            return;
        }
        log::info!("reactor {}: freezing for the upgrade", self.id);
        self.handover = State::Freezing {
            tx,
            shutdown: false,
        };
    }

    /// Exports once nothing is in flight (called at the end of a freezing turn).
    pub(super) fn export_when_idle(&mut self) {
        let State::Freezing { tx, shutdown } = &self.handover else {
            return;
        };
        let shutdown = *shutdown;
        if self.positions.in_flight()
            || self.carry.is_some()
            || !self.rx.is_empty()
            || !self.outbox.dirty.is_empty()
        {
            return;
        }
        let started = std::time::Instant::now();
        let tx = tx.clone();
        let mut batch = ConnBatch {
            reactor: self.id as u16,
            conns: Vec::with_capacity(self.conns.len()),
        };
        let mut fds = Vec::with_capacity(self.conns.len());
        for (key, conn) in self.conns.iter() {
            batch.conns.push(self.export_conn(key as u32, conn));
            fds.push(conn.stream.as_raw_fd());
        }
        log::info!(
            "reactor {}: exported {} connections in {:?}",
            self.id,
            batch.conns.len(),
            started.elapsed()
        );
        let held = if shutdown {
            vec![ReactorMsg::Shutdown]
        } else {
            Vec::new()
        };
        self.handover = State::Exported { held };
        // A coordinator that gave up is thawing us: that message is on its way.
        let _ = tx.send(ReactorExport { batch, fds });
    }

    fn export_conn(&self, key: u32, conn: &Conn) -> ConnState {
        let rooms = conn
            .rooms
            .iter()
            .filter_map(|r| {
                Some(RoomState {
                    name: self.rooms.name(r.m.group)?.to_string(),
                    by_client: r.by_client,
                    floor: self.positions.floor(key, r.m.group),
                })
            })
            .collect();
        let grants = self.grants.get(conn.grants).map(|g| GrantState {
            rooms: g.rooms().iter().map(|r| r.to_string()).collect(),
            join: g
                .join_patterns()
                .iter()
                .map(|p| p.as_str().to_string())
                .collect(),
        });
        let input = conn.input.as_deref().map(|i| {
            let AssemblerParts {
                scanned,
                message,
                data,
                utf8,
            } = i.asm.parts();
            InputState {
                buf: i.buf.clone(),
                scanned: scanned as u32,
                message,
                data,
                utf8,
                proxied: i.peer,
            }
        });
        let output = conn.output.as_deref().map(|q| {
            let (offset, chunks) = q.parts();
            OutputState {
                offset: offset as u32,
                chunks: chunks
                    .map(|(push, b)| {
                        let kind = if push {
                            ChunkKind::Push
                        } else {
                            ChunkKind::Reply
                        };
                        (kind, b.to_vec())
                    })
                    .collect(),
            }
        });
        let extra = self
            .access
            .as_ref()
            .and_then(|a| a.export(key, std::time::Instant::now()))
            .map(|s| vec![(CONN_ACCESS, s.encode())])
            .unwrap_or_default();
        ConnState {
            phase: phase_code(conn.phase),
            flags: conn.flags & !flag::DIRTY,
            age: super::timers::age(self.now, conn.last_seen),
            expires: conn.expires,
            user: (!conn.user.is_none())
                .then(|| self.users.name(conn.user.group).map(|n| n.to_string()))
                .flatten(),
            rooms,
            grants,
            peer_slot: self.peer_slots.get(&key).map(PeerSlot::to_bytes),
            input,
            output,
            extra,
        }
    }

    /// One turn while exported: only the channel is looked at. False to exit (never:
    /// a committed upgrade ends the process from the coordinator).
    pub(super) fn exported_turn(&mut self) -> bool {
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                ReactorMsg::Thaw => {
                    self.thaw();
                    return true;
                }
                ReactorMsg::Freeze(_) => {}
                other => {
                    if let State::Exported { held } = &mut self.handover {
                        held.push(other);
                    }
                }
            }
        }
        true
    }

    /// The upgrade failed: serve again, reading every socket once.
    pub(super) fn thaw(&mut self) {
        let held = match std::mem::take(&mut self.handover) {
            State::Exported { held } => held,
            State::Freezing { shutdown: true, .. } => vec![ReactorMsg::Shutdown],
            State::Freezing { .. } | State::Serving => Vec::new(),
        };
        log::info!("reactor {}: thawed, serving again", self.id);
        let mut cmds: Vec<Command> = self.carry.take().map(Iterator::collect).unwrap_or_default();
        let mut shutdown = false;
        for msg in held {
            match msg {
                ReactorMsg::Batch(b) => cmds.extend(b),
                ReactorMsg::Shutdown => shutdown = true,
                ReactorMsg::Freeze(_) | ReactorMsg::Thaw => {}
            }
        }
        if !cmds.is_empty() {
            self.carry = Some(cmds.into_iter());
        }
        let keys: Vec<u32> = self.conns.iter().map(|(k, _)| k as u32).collect();
        for key in keys {
            self.read_again.push(key);
            if self.conns[key as usize].output.is_some() {
                self.mark_dirty(key);
            }
        }
        self.accept_pending = true;
        if shutdown {
            self.start_shutdown();
        }
    }

    /// New process, before the reactor runs: takes over `batch` (one descriptor per
    /// connection). An error refuses the whole hand-over; the process then exits, so
    /// nothing needs undoing here.
    pub fn import(&mut self, batch: ConnBatch, fds: Vec<OwnedFd>) -> Result<usize, String> {
        if batch.conns.len() != fds.len() {
            return Err(format!(
                "{} connections came with {} descriptors",
                batch.conns.len(),
                fds.len()
            ));
        }
        let n = batch.conns.len();
        for (state, fd) in batch.conns.into_iter().zip(fds) {
            self.import_conn(state, fd)?;
        }
        Ok(n)
    }

    fn import_conn(&mut self, s: ConnState, fd: OwnedFd) -> Result<(), String> {
        let phase = phase_from(s.phase).ok_or("unknown phase")?;
        // Non-blocking already: O_NONBLOCK belongs to the open file description, which
        // the old process's reactor set and this descriptor shares (one fcntl fewer
        // per connection, in the pause).
        let stream = mio::net::TcpStream::from_std(std::net::TcpStream::from(fd));
        let input = match s.input {
            None => None,
            Some(i) => {
                let asm = Assembler::restore(
                    AssemblerParts {
                        scanned: i.scanned as usize,
                        message: i.message,
                        data: i.data,
                        utf8: i.utf8,
                    },
                    &i.buf,
                )?;
                // The handshake duration runs from the accept (its age, here).
                let accepted = matches!(phase, Phase::Proxy | Phase::Handshake).then(|| {
                    let age = super::timers::TICK * s.age;
                    let now = std::time::Instant::now();
                    now.checked_sub(age).unwrap_or(now)
                });
                Some(Box::new(Input {
                    buf: i.buf,
                    asm,
                    peer: i.proxied,
                    accepted,
                }))
            }
        };
        let output = s.output.map(|o| {
            let chunks = o.chunks.into_iter().map(|(kind, b)| match kind {
                ChunkKind::Push => Chunk::Push(Arc::from(b)),
                ChunkKind::Reply => Chunk::Owned(b.into_boxed_slice()),
            });
            Box::new(WriteQueue::restore(o.offset as usize, chunks))
        });
        let grants = match s.grants {
            None => None,
            Some(g) => {
                let join = g
                    .join
                    .iter()
                    .map(|p| RoomPattern::parse(p).map_err(|e| format!("join pattern {p}: {e}")))
                    .collect::<Result<Vec<_>, _>>()?;
                let rooms = g.rooms.into_iter().map(String::into_boxed_str).collect();
                Some(Grants::new(rooms, join))
            }
        };
        let now = super::timers::stamp(self.now);
        let mut conn = Conn::new(stream, now.wrapping_sub(s.age), phase);
        // WRITABLE: try writing at once; an edge comes only after a refused write.
        conn.flags = (s.flags & !flag::DIRTY) | flag::WRITABLE;
        conn.expires = s.expires;
        conn.input = input;
        conn.output = output;
        let open = phase == Phase::Open;
        self.shared.capacity.adopt(conn.has(flag::OPENED));
        let key = self.conns.insert(conn) as u32;
        if let Some(b) = s.peer_slot {
            let slot = PeerSlot::from_bytes(b);
            self.shared.peers.adopt(&slot);
            self.peer_slots.insert(key, slot);
        }
        let conn = &mut self.conns[key as usize];
        self.poll
            .registry()
            .register(
                &mut conn.stream,
                Token(key as usize),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| format!("register: {e}"))?;
        if open {
            let id = grants.map(|g| self.grants.intern(g));
            let conn = &mut self.conns[key as usize];
            conn.grants = id.unwrap_or(super::grants::NONE);
            let user = match s.user.as_deref() {
                Some(u) if crate::names::is_valid_name(u.as_bytes()) => {
                    let (m, name) = self.users.add(u, key);
                    conn.user = m;
                    Some(name)
                }
                Some(_) => return Err("invalid user name".into()),
                None => None,
            };
            let v1 = conn.has(flag::V1);
            self.events.push(Event::Conn {
                reactor: self.id,
                user,
                delta: 1,
            });
            if v1 {
                self.v1_conns += 1;
                self.events.push(Event::V1 {
                    reactor: self.id,
                    delta: 1,
                });
            }
            // permessage-deflate: its window code came in the flags.
            self.adopt_deflate(key);
            for r in s.rooms {
                if !crate::names::is_valid_name(r.name.as_bytes()) {
                    return Err("invalid room name".into());
                }
                let Some(conn) = self.conns.get(key as usize) else {
                    break;
                };
                if self
                    .rooms
                    .id(&r.name)
                    .is_some_and(|id| conn.room_index(id).is_some())
                {
                    continue;
                }
                self.join_room(key, &r.name, r.by_client);
                if let (Some(floor), Some(group)) = (r.floor, self.rooms.id(&r.name)) {
                    self.positions.set_floor(key, group, floor);
                }
            }
        }
        if let Some(log) = self.access.as_mut() {
            // A record the old process kept goes on; one it could not (the flag was
            // off there) starts now. Unreadable, it is only the log line's loss.
            let record = s
                .extra
                .iter()
                .find(|(t, _)| *t == CONN_ACCESS)
                .and_then(|(_, b)| AccessState::decode(b).ok());
            let user = self.conns[key as usize].user;
            let name = (!user.is_none())
                .then(|| self.users.name(user.group).cloned())
                .flatten();
            log.adopt(key, record, name, std::time::Instant::now());
        }
        // Bytes that arrived while the old process was frozen raised their edge there.
        self.read_again.push(key);
        if self.conns[key as usize].output.is_some() {
            self.mark_dirty(key);
        }
        Ok(())
    }

    /// Sends the events an import produced now, so the dispatcher has every count
    /// before it runs a single command of a client taken over with it.
    pub fn announce(&mut self) {
        self.send_events();
    }
}
