//! What the upgrade's coordinator thread, the dispatcher and the reactors pass each
//! other during a hand-over (see `crate::handover`), and its counters.
//!
//! The descriptors here are borrowed, not owned: until the new process says it has
//! taken everything, the old one must be able to go on with every socket, so nothing
//! in a hand-over closes or deregisters one. No I/O here.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crossbeam_channel::Sender;

use crate::handover::format::{ClientState, ConnBatch};

/// One reactor's connections, exported and frozen: the reactor touches none of them
/// again unless it is thawed.
pub struct ReactorExport {
    pub batch: ConnBatch,
    /// One per connection, in the batch's order.
    pub fds: Vec<RawFd>,
}

/// The dispatcher's control clients, exported and frozen.
pub struct ClientsExport {
    pub clients: Vec<ClientState>,
    pub fds: Vec<RawFd>,
    /// Cluster mode: the node instance's identity (nonce, publish sequence, epoch
    /// candidates), which the new process carries on.
    pub cluster: Option<[u64; 3]>,
    /// Standalone: every room's position and retained messages.
    pub history: Vec<crate::handover::format::HistoryRoom>,
}

/// The coordinator's messages to the dispatcher.
pub enum ToDispatcher {
    /// Stop reading control input, finish what is in flight, freeze the reactors
    /// (each answers on `reactors`) and export the control clients (on `clients`).
    Freeze {
        reactors: Sender<ReactorExport>,
        clients: Sender<ClientsExport>,
    },
    /// The upgrade failed: go on as before (reactors too) and answer the clients
    /// that asked for it with this error.
    Thaw { error: String },
    /// Old process, cluster mode, after the commit: hand the broker messages held
    /// since the freeze, and those still arriving, to `tx` (for the new process).
    Forward { tx: Sender<BrokerMessage> },
    /// Old process, cluster mode, forwarding: close the broker connections (the new
    /// process is subscribed), then say so on `done`.
    DropBroker { done: Sender<()> },
    /// New process, cluster mode: say on `linked` once the broker link is up.
    Forwarding { linked: Sender<()> },
    /// New process, cluster mode: what the old process received from the broker
    /// after its freeze; delivered, then this process's own, without repeats.
    Forwarded(Vec<BrokerMessage>),
}

/// A broker message as Redis delivered it: channel, payload.
pub type BrokerMessage = (Vec<u8>, Vec<u8>);

/// Upgrade counters for INFO. Process-wide statics: one process runs at most one
/// hand-over at a time, and they describe this process only.
pub struct UpgradeStats {
    /// Upgrades this process started (SIGUSR2, UPGRADE, systemctl reload).
    pub started: AtomicU64,
    /// Upgrades that failed, after which this process went on serving.
    pub failed: AtomicU64,
    /// Connections and control clients this process took over from its predecessor.
    pub conns_taken: AtomicU64,
    pub clients_taken: AtomicU64,
}

pub static UPGRADES: UpgradeStats = UpgradeStats {
    started: AtomicU64::new(0),
    failed: AtomicU64::new(0),
    conns_taken: AtomicU64::new(0),
    clients_taken: AtomicU64::new(0),
};

impl UpgradeStats {
    pub fn snapshot(&self) -> [u64; 4] {
        [
            self.started.load(Relaxed),
            self.failed.load(Relaxed),
            self.conns_taken.load(Relaxed),
            self.clients_taken.load(Relaxed),
        ]
    }
}
