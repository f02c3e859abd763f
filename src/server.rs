//! Assembles a running server: binds the sockets, starts the reactor threads and the
//! dispatcher, and stops them in order. `main` is only flags and signals around it;
//! tests and benchmarks can start a server in-process the same way.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::config::Config;
use crate::dispatch::{DispatchSettings, Dispatcher, DispatcherHandle};
use crate::reactor::listener::bind_listeners;
use crate::reactor::{DispatcherLink, Reactor, ReactorHandle, ReactorMsg, Settings, Shared};
use crate::ws::handshake::HandshakeConfig;

/// A started server.
pub struct Server {
    /// Where WebSocket clients connect (the real port if 0 was asked for).
    pub ws_addr: SocketAddr,
    /// Where the control port listens.
    pub control_addr: SocketAddr,
    /// Reactor threads.
    pub threads: usize,
    /// Connections accepted before HTTP 503.
    pub max_connections: usize,
    reactors: Vec<(ReactorHandle, JoinHandle<()>)>,
    dispatcher: (DispatcherHandle, JoinHandle<()>),
}

impl Server {
    /// Binds every socket and starts every thread. Fails before starting any thread if
    /// an address cannot be bound.
    pub fn start(cfg: &Config, max_connections: usize) -> io::Result<Server> {
        let threads = cfg.reactor_threads();
        let listeners = bind_listeners(cfg.listen, threads)?;
        let ws_addr = listeners[0].local_addr()?;
        let control = std::net::TcpListener::bind(cfg.control)?;
        control.set_nonblocking(true)?;
        let control_addr = control.local_addr()?;

        let origins = cfg
            .origins()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.0))?;
        let shared = Arc::new(Shared {
            settings: Settings {
                handshake: HandshakeConfig {
                    path: cfg.path.clone(),
                    allow_origins: origins,
                    max_rooms: cfg.max_rooms_per_conn,
                },
                max_message: cfg.max_message,
                max_pending: cfg.max_pending,
                slow_policy: cfg.slow_policy,
                echo: cfg.echo,
                max_rooms: cfg.max_rooms_per_conn,
                max_connections,
                handshake_timeout: cfg.handshake_timeout,
                ping_interval: cfg.ping_interval,
                idle_timeout: cfg.idle_timeout,
                shutdown_grace: cfg.shutdown_grace,
            },
            sockets: AtomicUsize::new(0),
        });

        let (dpoll, dwaker) = Dispatcher::poll_and_waker()?;
        let (ev_tx, ev_rx) = crossbeam_channel::unbounded();
        let mut handles = Vec::new();
        let mut reactors = Vec::new();
        for (i, l) in listeners.into_iter().enumerate() {
            let link = DispatcherLink {
                tx: ev_tx.clone(),
                waker: dwaker.clone(),
            };
            let (reactor, handle) = Reactor::new(i, l, shared.clone(), link)?;
            handles.push(handle.clone());
            let join = std::thread::Builder::new()
                .name(format!("reactor-{i}"))
                .spawn(move || reactor.run())?;
            reactors.push((handle, join));
        }
        drop(ev_tx);
        let (dispatcher, dhandle) = Dispatcher::new(
            control,
            handles,
            ev_rx,
            dpoll,
            dwaker,
            DispatchSettings {
                max_message: cfg.max_message,
                password: cfg.control_password.clone(),
                batch_delay: cfg.batch_delay,
                max_connections,
                listen: ws_addr,
                control: control_addr,
            },
            shared,
        )?;
        let djoin = std::thread::Builder::new()
            .name("dispatcher".into())
            .spawn(move || dispatcher.run())?;
        Ok(Server {
            ws_addr,
            control_addr,
            threads,
            max_connections,
            reactors,
            dispatcher: (dhandle, djoin),
        })
    }

    /// True if a server thread has exited on its own (it should never).
    pub fn thread_died(&self) -> bool {
        self.reactors.iter().any(|(_, j)| j.is_finished()) || self.dispatcher.1.is_finished()
    }

    /// Graceful stop: reactors stop accepting, send 1001 to every connection and exit
    /// once their connections are closed or the grace period is over; then the
    /// dispatcher stops.
    pub fn shutdown(self) {
        for (h, _) in &self.reactors {
            // A reactor that has already exited needs no telling.
            let _ = h.send(ReactorMsg::Shutdown);
        }
        for (_, j) in self.reactors {
            let _ = j.join();
        }
        self.dispatcher.0.stop();
        let _ = self.dispatcher.1.join();
    }
}
