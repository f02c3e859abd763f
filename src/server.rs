//! Assembles a running server: binds the sockets, starts the reactor threads and the
//! dispatcher, and stops them in order. `main` is only flags and signals around it;
//! tests and benchmarks can start a server in-process the same way.
//!
//! Every way start-up can fail is a [`StartError`] whose one-line `Display` names the
//! part, the address or path, and the reason without "(os error N)"; `main` prints it
//! once and exits with [`StartError::exit_code`]. Start-up must never leave a server
//! running that cannot serve (no listener, no connection allowed).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::auth::{AuthConfig, Keys, RoomPattern};
use crate::config::{Config, ConfigError};
use crate::dispatch::broker::url::RedisUrl;
use crate::dispatch::{ClusterSettings, DispatchSettings, Dispatcher, DispatcherHandle};
use crate::limits::DescriptorShortfall;
use crate::link::capacity::Capacity;
use crate::link::health::Liveness;
use crate::link::peers::{Limits, PeerTable, DEFAULT_MAX_ENTRIES};
use crate::link::{Census, DispatcherLink, ReactorHandle, ReactorMsg};
use crate::reactor::listener::bind_listeners;
use crate::reactor::{Reactor, Settings, Shared};
use crate::ws::handshake::HandshakeConfig;

/// A started server.
pub struct Server {
    /// Where WebSocket clients connect (the real port if 0 was asked for).
    pub ws_addr: SocketAddr,
    /// Where the control port listens.
    pub control_addr: SocketAddr,
    /// Where the HTTP API listens (`--http`), if it does.
    pub http_addr: Option<SocketAddr>,
    /// Reactor threads.
    pub threads: usize,
    /// Connections accepted before HTTP 503.
    pub max_connections: usize,
    reactors: Vec<(ReactorHandle, JoinHandle<()>)>,
    dispatcher: (DispatcherHandle, JoinHandle<()>),
    /// What an upgrade's coordinator needs of this server.
    pub upgrade: UpgradeHandle,
    liveness: Arc<Liveness>,
}

/// How an upgrade reaches a running server: its sockets (borrowed: the reactors and
/// the dispatcher own them) and its threads.
#[derive(Clone)]
pub struct UpgradeHandle {
    /// The WebSocket listening sockets, one per reactor, and the control listener.
    pub ws_fds: Vec<std::os::fd::RawFd>,
    pub control_fd: std::os::fd::RawFd,
    /// `--http`'s listening socket, if any.
    pub http_fd: Option<std::os::fd::RawFd>,
    /// Upgrades asked for (SIGUSR2 sends here too; `UPGRADE` from the dispatcher).
    pub requests: (
        crossbeam_channel::Sender<()>,
        crossbeam_channel::Receiver<()>,
    ),
    pub to_dispatcher: crossbeam_channel::Sender<crate::link::handover::ToDispatcher>,
    pub dispatcher_waker: Arc<mio::Waker>,
    pub reactors: usize,
    /// Set once a coordinator serves `requests` (see `handover::process`), or from
    /// the start in a process that took over (its coordinator follows at once).
    pub available: Arc<std::sync::atomic::AtomicBool>,
    /// An upgrade is under way (set by the coordinator until it has failed; a
    /// successful one ends the process): a shutdown waits for its outcome.
    pub running: Arc<std::sync::atomic::AtomicBool>,
}

/// Sockets inherited from the process being upgraded, and how to take over its
/// connections into the reactors and the dispatcher before their threads start.
pub struct Inherited<'a> {
    pub ws: Vec<std::net::TcpListener>,
    pub control: std::net::TcpListener,
    #[allow(clippy::type_complexity)]
    pub import: &'a mut dyn FnMut(&mut [Reactor], &mut Dispatcher) -> Result<(), String>,
    /// `--http`'s listener, if the old process had one.
    pub http: Option<std::net::TcpListener>,
}

/// Why the server did not start. Each variant is one line for the operator.
#[derive(Debug)]
pub enum StartError {
    /// A flag value, or a combination of them, that cannot work.
    Config(ConfigError),
    /// The open-file limit leaves no descriptor for a connection.
    Descriptors(DescriptorShortfall),
    /// `RLIMIT_NOFILE` could not be read or raised.
    NofileLimit(io::Error),
    /// A listening socket could not be bound; `flag` is the flag that names `addr`.
    Listen {
        flag: &'static str,
        addr: SocketAddr,
        err: io::Error,
    },
    /// A file a flag names could not be opened or read. No flag names a file yet;
    /// TLS keys, token keys and the like report through this variant so every file
    /// error names its flag and path the same way.
    File {
        flag: &'static str,
        path: PathBuf,
        err: io::Error,
    },
    /// A token key that cannot be used (too short a secret, not a public key PEM...).
    Key {
        flag: &'static str,
        err: crate::auth::KeyError,
    },
    /// The system refused something else start-up needs (an epoll, an eventfd, a
    /// thread, the signal handlers); `what` names it.
    Resource { what: String, err: io::Error },
}

impl StartError {
    /// The process exit status: 2 when the settings cannot work as given (the same
    /// status clap uses for a bad flag), 1 when the system refused a resource.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Config(_) | StartError::Descriptors(_) | StartError::Key { .. } => 2,
            StartError::NofileLimit(_)
            | StartError::Listen { .. }
            | StartError::File { .. }
            | StartError::Resource { .. } => 1,
        }
    }

    fn resource(what: impl Into<String>) -> impl FnOnce(io::Error) -> StartError {
        let what = what.into();
        move |err| StartError::Resource { what, err }
    }
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Config(e) => write!(f, "{e}"),
            StartError::Descriptors(e) => write!(f, "{e}"),
            StartError::NofileLimit(err) => {
                write!(
                    f,
                    "cannot read or raise the open-file limit: {}",
                    reason(err)
                )
            }
            StartError::Listen { flag, addr, err } => {
                write!(f, "cannot listen on {addr} ({flag}): {}", reason(err))
            }
            StartError::File { flag, path, err } => {
                write!(
                    f,
                    "cannot read {} ({flag}): {}",
                    path.display(),
                    reason(err)
                )
            }
            StartError::Key { flag, err } => write!(f, "unusable token key ({flag}): {err}"),
            StartError::Resource { what, err } => {
                write!(f, "cannot create {what}: {}", reason(err))
            }
        }
    }
}

impl std::error::Error for StartError {}

impl From<ConfigError> for StartError {
    fn from(e: ConfigError) -> Self {
        StartError::Config(e)
    }
}

impl From<DescriptorShortfall> for StartError {
    fn from(e: DescriptorShortfall) -> Self {
        StartError::Descriptors(e)
    }
}

/// The reason text of `err` without io::Error's "(os error N)" suffix: the C
/// library's message for an OS error (what `strerror` prints), the error's own
/// message otherwise.
fn reason(err: &io::Error) -> String {
    let Some(code) = err.raw_os_error() else {
        return err.to_string();
    };
    let mut buf = [0 as libc::c_char; 256];
    // SAFETY: `buf` is writable for its whole length, which is what we pass; the XSI
    // strerror_r (the one the libc crate binds) NUL-terminates on success.
    let ok = unsafe { libc::strerror_r(code, buf.as_mut_ptr(), buf.len()) } == 0;
    if !ok {
        return format!("{:?}", err.kind());
    }
    // SAFETY: strerror_r succeeded, so `buf` holds a NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// The token verification the flags ask for (`None`: authentication off). Files are
/// read here, once; a file error names its flag and path.
fn auth_config(cfg: &Config) -> Result<Option<AuthConfig>, StartError> {
    let keys = if let Some(secret) = &cfg.jwt_secret {
        Keys::hs256(secret.as_bytes()).map_err(|err| StartError::Key {
            flag: "--jwt-secret",
            err,
        })?
    } else if let Some(path) = &cfg.jwt_secret_file {
        let text = std::fs::read(path).map_err(|err| StartError::File {
            flag: "--jwt-secret-file",
            path: path.clone(),
            err,
        })?;
        let secret = text.strip_suffix(b"\n").unwrap_or(&text);
        let secret = secret.strip_suffix(b"\r").unwrap_or(secret);
        Keys::hs256(secret).map_err(|err| StartError::Key {
            flag: "--jwt-secret-file",
            err,
        })?
    } else if let Some(path) = &cfg.jwt_public_key {
        let pem = std::fs::read(path).map_err(|err| StartError::File {
            flag: "--jwt-public-key",
            path: path.clone(),
            err,
        })?;
        Keys::from_public_pem(&pem).map_err(|err| StartError::Key {
            flag: "--jwt-public-key",
            err,
        })?
    } else {
        return Ok(None);
    };
    let mut auth = AuthConfig::new(keys);
    auth.issuer = cfg.jwt_issuer.clone();
    auth.audience = cfg.jwt_audience.clone();
    auth.leeway = cfg.jwt_leeway;
    Ok(Some(auth))
}

/// The `--client-join` patterns.
fn client_join(cfg: &Config) -> Result<Vec<RoomPattern>, StartError> {
    cfg.client_join
        .iter()
        .map(|p| {
            RoomPattern::parse(p)
                .map_err(|e| StartError::Config(ConfigError(format!("--client-join {p}: {e}"))))
        })
        .collect()
}

/// Cluster mode's settings from `--redis`, `--node-id` and `--cluster-prefix`; `None`
/// standalone. Every URL is parsed and resolved here, once: the dispatcher never
/// calls a blocking resolver.
fn cluster_settings(cfg: &Config, node_id: &str) -> Result<Option<ClusterSettings>, StartError> {
    use std::net::ToSocketAddrs;
    let config = |msg: String| StartError::Config(ConfigError(msg));
    if cfg.redis.is_empty() {
        return Ok(None);
    }
    let mut redis = Vec::with_capacity(cfg.redis.len());
    for text in &cfg.redis {
        let url: RedisUrl = text
            .parse()
            .map_err(|e| config(format!("--redis {}: {e}", redact(text))))?;
        let addr = (url.host.as_str(), url.port)
            .to_socket_addrs()
            .map_err(|e| config(format!("--redis {url}: cannot resolve {}: {e}", url.host)))?
            .next()
            .ok_or_else(|| config(format!("--redis {url}: {} has no address", url.host)))?;
        if redis.iter().any(|(u, _): &(RedisUrl, _)| *u == url) {
            return Err(config(format!("--redis {url} is given twice")));
        }
        redis.push((url, addr));
    }
    let prefix = &cfg.cluster_prefix;
    if !crate::names::is_valid_name(prefix.as_bytes()) || prefix.len() > 64 {
        return Err(config(format!(
            "--cluster-prefix {prefix:?}: 1 to 64 printable ASCII characters, no spaces or commas"
        )));
    }
    Ok(Some(ClusterSettings {
        redis,
        node_id: node_id.to_string(),
        prefix: prefix.clone(),
        order_across_instances: cfg.cluster_order == crate::config::Ordering::Connection,
        presence_interval: cfg.presence_interval,
    }))
}

/// `--node-id`, or `<host name>:<WebSocket port>`; checked like a room name.
fn node_id(cfg: &Config, ws_port: u16) -> Result<String, StartError> {
    let node_id = match &cfg.node_id {
        Some(id) => id.clone(),
        None => format!("{}:{ws_port}", host_name()),
    };
    if !crate::names::is_valid_name(node_id.as_bytes()) {
        return Err(StartError::Config(ConfigError(format!(
            "--node-id {node_id:?}: 1 to 128 printable ASCII characters, no spaces or commas"
        ))));
    }
    Ok(node_id)
}

/// A URL as it may be logged: anything between `//` and `@` hidden.
fn redact(url: &str) -> String {
    match (url.find("//"), url.rfind('@')) {
        (Some(a), Some(b)) if b > a => format!("{}//***{}", &url[..a], &url[b..]),
        _ => url.to_string(),
    }
}

/// This machine's host name, for the default node id.
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let name = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    let name: String = name
        .chars()
        .filter(|c| c.is_ascii_graphic() && *c != ',')
        .take(100)
        .collect();
    if name.is_empty() {
        "wspush".into()
    } else {
        name
    }
}

impl Server {
    /// Binds every socket and starts every thread. Fails before starting any thread if
    /// an address cannot be bound.
    pub fn start(
        cfg: &Config,
        max_connections: usize,
        max_handshakes: usize,
    ) -> Result<Server, StartError> {
        Self::start_with(cfg, max_connections, max_handshakes, None)
    }

    /// Like `start`, with the listening sockets (and connections) of the process
    /// being upgraded instead of binding new ones: as many reactors as it passed
    /// WebSocket listeners.
    pub fn start_with(
        cfg: &Config,
        max_connections: usize,
        max_handshakes: usize,
        inherited: Option<Inherited<'_>>,
    ) -> Result<Server, StartError> {
        use std::os::fd::AsRawFd;
        let threads = match &inherited {
            Some(i) => i.ws.len(),
            None => cfg.reactor_threads(),
        };
        let origins = cfg.origins()?;
        let auth = auth_config(cfg)?.map(Arc::new);
        let client_join = client_join(cfg)?;
        let listen_err = |err| StartError::Listen {
            flag: "--listen",
            addr: cfg.listen,
            err,
        };
        let (listeners, control, mut inherited_http, mut import) = match inherited {
            Some(i) => (i.ws, Some(i.control), i.http, Some(i.import)),
            None => (
                bind_listeners(cfg.listen, threads, cfg.handshake_timeout).map_err(listen_err)?,
                None,
                None,
                None,
            ),
        };
        let ws_addr = listeners
            .first()
            .ok_or_else(|| listen_err(io::ErrorKind::InvalidInput.into()))?
            .local_addr()
            .map_err(listen_err)?;
        let control_err = |err| StartError::Listen {
            flag: "--control",
            addr: cfg.control,
            err,
        };
        let control = match control {
            Some(c) => c,
            None => std::net::TcpListener::bind(cfg.control).map_err(control_err)?,
        };
        control.set_nonblocking(true).map_err(control_err)?;
        let ws_fds: Vec<_> = listeners.iter().map(|l| l.as_raw_fd()).collect();
        let control_fd = control.as_raw_fd();
        let control_addr = control.local_addr().map_err(control_err)?;
        let http = match cfg.http {
            None => None,
            Some(addr) => {
                let http_err = |err| StartError::Listen {
                    flag: "--http",
                    addr,
                    err,
                };
                let l = match inherited_http.take() {
                    Some(l) => l,
                    None => std::net::TcpListener::bind(addr).map_err(http_err)?,
                };
                l.set_nonblocking(true).map_err(http_err)?;
                let a = l.local_addr().map_err(http_err)?;
                Some((l, a))
            }
        };
        let http_addr = http.as_ref().map(|(_, a)| *a);
        let http_fd = http.as_ref().map(|(l, _)| l.as_raw_fd());

        let node_id = node_id(cfg, ws_addr.port())?;
        let cluster = cluster_settings(cfg, &node_id)?;

        let capacity = Arc::new(Capacity::new(max_connections, max_handshakes));
        let liveness = Arc::new(Liveness::new(threads));
        let server_liveness = liveness.clone();
        let limits = Limits {
            max_conns_per_ip: cfg.max_conns_per_ip,
            rate_per_ip: cfg.handshake_rate_per_ip,
            max_rate: cfg.max_handshake_rate,
            max_entries: cfg
                .max_tracked_addresses
                .unwrap_or(DEFAULT_MAX_ENTRIES.max(max_connections)),
        };
        let per_address_limits =
            limits.max_conns_per_ip > 0 || limits.rate_per_ip > 0 || limits.max_rate > 0;
        let peers = Arc::new(PeerTable::new(limits));
        let shared = Arc::new(Shared {
            settings: Settings {
                handshake: HandshakeConfig {
                    path: cfg.path.clone(),
                    allow_origins: origins,
                    max_rooms: cfg.max_rooms_per_conn,
                    forwarded_headers: !cfg.trusted_proxy.is_empty(),
                    assets: if cfg.demo {
                        crate::demo::is_asset
                    } else {
                        crate::ws::handshake::no_assets
                    },
                },
                max_message: cfg.max_message,
                max_pending: cfg.max_pending,
                slow_policy: cfg.reactor_slow_policy(),
                echo: cfg.echo,
                max_rooms: cfg.max_rooms_per_conn,
                handshake_timeout: cfg.handshake_timeout,
                ping_interval: cfg.ping_interval,
                idle_timeout: cfg.idle_timeout,
                shutdown_grace: cfg.shutdown_grace,
                auth,
                client_join,
                proxy_protocol: cfg.proxy_protocol,
                trusted_proxies: cfg.trusted_proxy.clone(),
                ipv6_prefix: cfg.ipv6_prefix,
                per_address_limits,
                access_log: cfg.access_log,
                compression_min_size: cfg.compression_min_size(),
            },
            capacity: capacity.clone(),
            liveness: liveness.clone(),
            peers: peers.clone(),
            epoch: std::time::Instant::now(),
        });

        let (dpoll, dwaker) = Dispatcher::poll_and_waker()
            .map_err(StartError::resource("the dispatcher's event loop"))?;
        let (ev_tx, ev_rx) = crossbeam_channel::unbounded();
        let mut handles = Vec::new();
        let mut built = Vec::new();
        for (i, l) in listeners.into_iter().enumerate() {
            let link = DispatcherLink {
                tx: ev_tx.clone(),
                waker: dwaker.clone(),
            };
            let (reactor, handle) = Reactor::new(i, l, shared.clone(), link)
                .map_err(StartError::resource(format!("reactor {i}'s event loop")))?;
            handles.push(handle.clone());
            built.push(reactor);
        }
        drop(ev_tx);
        let upgrade_requests = crossbeam_channel::unbounded();
        let (to_dispatcher, inbox) = crossbeam_channel::unbounded();
        let dispatcher_waker = dwaker.clone();
        let (mut dispatcher, dhandle) = Dispatcher::new(
            (control, http.map(|(l, _)| l)),
            handles.clone(),
            ev_rx,
            (dpoll, dwaker),
            DispatchSettings {
                max_message: cfg.max_message,
                password: cfg.control_password.clone(),
                batch_delay: cfg.batch_delay,
                max_connections,
                listen: ws_addr,
                control: control_addr,
                cluster,
                node_id,
                history: crate::history::Limits {
                    size: cfg.history_size,
                    ttl: cfg.history_ttl,
                    memory: cfg.history_memory,
                },
                max_recover: cfg.max_recover,
                max_replay_bytes: cfg.max_pending,
                http: http_addr,
                api_key: cfg.api_key.clone(),
                max_http_connections: cfg.max_http_connections,
                compression_min_size: cfg.compression_min_size(),
            },
            Census {
                capacity,
                liveness,
                peers,
            },
        )
        .map_err(StartError::resource("the dispatcher"))?;
        // Only the binary takes over from a predecessor, and it starts a coordinator
        // as soon as this returns: an UPGRADE among the first commands it runs (a
        // pipelined one, or a deploy rolling twice) waits for it, not refused.
        let upgrade_available = Arc::new(std::sync::atomic::AtomicBool::new(import.is_some()));
        dispatcher.set_upgrade(crate::dispatch::UpgradeLink {
            requests: upgrade_requests.0.clone(),
            inbox,
            available: upgrade_available.clone(),
        });
        if let Some(import) = import.as_mut() {
            import(&mut built, &mut dispatcher).map_err(|e| StartError::Resource {
                what: "the hand-over from the previous process".into(),
                err: io::Error::other(e),
            })?;
            // Their counts reach the dispatcher before it runs any command.
            for r in &mut built {
                r.announce();
            }
        }
        let mut reactors = Vec::new();
        for (i, (reactor, handle)) in built.into_iter().zip(handles.iter()).enumerate() {
            let join = std::thread::Builder::new()
                .name(format!("reactor-{i}"))
                .spawn(move || reactor.run())
                .map_err(StartError::resource(format!("reactor thread {i}")))?;
            reactors.push((handle.clone(), join));
        }
        let djoin = std::thread::Builder::new()
            .name("dispatcher".into())
            .spawn(move || dispatcher.run())
            .map_err(StartError::resource("the dispatcher thread"))?;
        // A started server has its reactors in their loops, so /readyz does not say
        // "starting" for a thread the scheduler has not run yet (bounded: a reactor
        // that never starts is what /healthz reports).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !server_liveness.reactors_started() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Ok(Server {
            ws_addr,
            control_addr,
            http_addr,
            threads,
            max_connections,
            reactors,
            dispatcher: (dhandle, djoin),
            upgrade: UpgradeHandle {
                ws_fds,
                control_fd,
                requests: upgrade_requests,
                to_dispatcher,
                dispatcher_waker,
                reactors: threads,
                available: upgrade_available,
                running: Arc::new(std::sync::atomic::AtomicBool::new(false)),
                http_fd,
            },
            liveness: server_liveness,
        })
    }

    /// The first step of stopping: `/readyz` answers 503 "draining" from now on,
    /// while everything else goes on serving.
    pub fn drain(&self) {
        self.liveness.set_draining();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn in_use() -> io::Error {
        io::Error::from_raw_os_error(libc::EADDRINUSE)
    }

    #[test]
    fn listen_error_names_flag_and_address_without_os_error_noise() {
        let e = StartError::Listen {
            flag: "--listen",
            addr: "0.0.0.0:8080".parse().expect("addr"),
            err: in_use(),
        };
        assert_eq!(
            e.to_string(),
            "cannot listen on 0.0.0.0:8080 (--listen): Address already in use"
        );
        assert_eq!(e.exit_code(), 1);
    }

    #[test]
    fn file_error_names_flag_and_path() {
        let e = StartError::File {
            flag: "--tls-key",
            path: PathBuf::from("/etc/wspush/key.pem"),
            err: io::Error::from_raw_os_error(libc::ENOENT),
        };
        assert_eq!(
            e.to_string(),
            "cannot read /etc/wspush/key.pem (--tls-key): No such file or directory"
        );
        assert_eq!(e.exit_code(), 1);
    }

    #[test]
    fn errors_without_an_os_code_keep_their_own_message() {
        let err = io::Error::other("no route");
        assert_eq!(reason(&err), "no route");
    }

    #[test]
    fn settings_that_cannot_work_exit_2() {
        let e = StartError::from(ConfigError("--threads must be between 1 and 1024".into()));
        assert_eq!(e.exit_code(), 2);
        let e = StartError::from(DescriptorShortfall {
            nofile: 1024,
            threads: 64,
            handshakes: 0,
            reserved: 1088,
        });
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().starts_with("the open-file limit 1024"));
    }
}
