//! The wspush server binary: flags, logging, limits, start-up and signals only.
//! Everything else lives in the library (`wspush::server`). A start-up failure is
//! printed once, as one line, and never leaves a half-started server running.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use log::{error, info, warn};
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR2};
use signal_hook::iterator::Signals;

use wspush::config::{Config, LogFormat};
use wspush::handover::process::{self as handover, NewBinary};
use wspush::limits::{self, DescriptorBudget};
use wspush::reactor::listener::BACKLOG;
use wspush::server::{Server, StartError};

fn main() -> ExitCode {
    let cfg = Config::parse();
    init_logging(cfg.log_format);
    match run(&cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Printed, not logged: RUST_LOG=off must not hide why the server is not up.
            eprintln!("wspush: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Starts the server, serves until a signal, and stops it. Every start-up failure
/// comes back as a `StartError`, before any client could have connected.
fn run(cfg: &Config) -> Result<(), StartError> {
    cfg.validate()?;
    let threads = cfg.reactor_threads();
    let nofile = limits::raise_nofile_limit().map_err(StartError::NofileLimit)?;
    let max_handshakes = cfg
        .max_handshakes
        .unwrap_or_else(|| limits::default_max_handshakes(nofile.soft));
    let budget = DescriptorBudget {
        threads,
        handshakes: max_handshakes,
    };
    let max_connections = match cfg.max_connections {
        Some(n) => n,
        None => budget.default_max_connections(nofile.soft)?,
    };
    for w in limits::capacity_warnings(max_connections, &nofile, BACKLOG as u32) {
        warn!("{w}");
    }
    if !cfg.auth_enabled() && cfg.client_join.is_empty() {
        warn!("no --jwt-secret / --jwt-public-key and no --client-join: any client may claim any user (?user=) and join any room (development mode)");
    } else if !cfg.auth_enabled() {
        warn!("no --jwt-secret / --jwt-public-key: any client may claim any user (?user=)");
    }
    if cfg.allow_origin.is_empty() {
        warn!("no --allow-origin given: WebSocket connections are accepted from any origin");
    }
    if cfg.max_pending < cfg.max_message {
        warn!(
            "--max-pending ({}) is below --max-message ({}): a push that does not fit a slow client's socket at once counts as over the limit",
            cfg.max_pending, cfg.max_message
        );
    }
    let signals = Signals::new([SIGINT, SIGTERM, SIGUSR2]).map_err(|err| StartError::Resource {
        what: "the signal handlers".into(),
        err,
    })?;
    // Resolved now: once a deploy has replaced the file, this process's own path
    // names the deleted binary.
    let binary = NewBinary::from_config(cfg).map_err(|err| StartError::Resource {
        what: "the path of this binary (for upgrades)".into(),
        err,
    })?;
    let upgraded = std::env::var_os(handover::ENV_FD).is_some();
    let server = match handover::inherited_socket() {
        None => Server::start(cfg, max_connections, max_handshakes)?,
        Some(Err(e)) => {
            return Err(StartError::Resource {
                what: "the hand-over from the previous process".into(),
                err: std::io::Error::other(e),
            })
        }
        Some(Ok(sock)) => handover::take_over(sock, cfg, max_connections, max_handshakes)?,
    };
    let upgrade_requests = server.upgrade.requests.0.clone();
    handover::spawn_coordinator(server.upgrade.clone(), binary).map_err(|err| {
        StartError::Resource {
            what: "the upgrade thread".into(),
            err,
        }
    })?;
    info!(
        "listening: WebSocket ws://{}{} ({} reactors), control port {}; open-file limit {} → up to {} connections",
        server.ws_addr, cfg.path, server.threads, server.control_addr, nofile.soft, server.max_connections
    );
    if let Some(a) = server.http_addr {
        info!("HTTP API, /metrics and dashboard on http://{a}/");
    }
    // One machine-readable line for scripts and tests.
    println!(
        "wspush ready: ws={} control={} threads={} max_connections={}{}",
        server.ws_addr,
        server.control_addr,
        server.threads,
        server.max_connections,
        server
            .http_addr
            .map(|a| format!(" http={a}"))
            .unwrap_or_default()
    );
    let _ = std::io::stdout().flush();
    if !upgraded {
        // After an upgrade the old process tells systemd (MAINPID= this one).
        handover::notify("READY=1");
    }
    wait_for_signal(signals, &server, &upgrade_requests);
    // Closing connections now would close them under an upgrade that may still
    // commit (the new binary may not even have said hello): its outcome first,
    // bounded by its own time limits. A successful one ends this process.
    // No upgrade starts from now on (UPGRADE answers an error); one already running
    // is waited for.
    server
        .upgrade
        .available
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let upgrading = || {
        server
            .upgrade
            .running
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    if upgrading() {
        info!("stopping once the upgrade in progress has ended");
        while upgrading() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    if !cfg.drain_delay.is_zero() {
        server.drain();
        info!(
            "draining: /readyz answers 503 for {:?}, then connections are closed (a second signal stops at once)",
            cfg.drain_delay
        );
        std::thread::sleep(cfg.drain_delay);
    }
    info!(
        "shutting down: closing connections with 1001 (grace {:?})",
        cfg.shutdown_grace
    );
    server.shutdown();
    info!("stopped");
    Ok(())
}

/// env_logger on stderr (`RUST_LOG`, default `info`); with `--log-format json` each
/// record is one JSON object on one line, its strings escaped by serde_json.
fn init_logging(format: LogFormat) {
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if format == LogFormat::Json {
        b.format(|buf, record| {
            let msg = record.args().to_string();
            let mut line = serde_json::json!({
                "ts": buf.timestamp_millis().to_string(),
                "level": record.level().as_str(),
                "target": record.target(),
            });
            // An access line also carries its fields as typed keys.
            if record.target() == "wspush::access" {
                if let (Some(fields), Some(obj)) = (
                    wspush::reactor::access::json_fields(&msg),
                    line.as_object_mut(),
                ) {
                    obj.extend(fields);
                }
            }
            line["msg"] = serde_json::Value::String(msg);
            writeln!(buf, "{line}")
        });
    }
    b.init();
}

/// Blocks until SIGINT/SIGTERM; SIGUSR2 asks for an upgrade. A second signal during
/// the grace period exits at once; a server thread that dies (it never should) exits
/// non-zero so a supervisor restarts the process rather than leaving a part of it dead.
fn wait_for_signal(
    mut signals: Signals,
    server: &Server,
    upgrades: &crossbeam_channel::Sender<()>,
) {
    loop {
        let mut stop = false;
        for sig in signals.pending() {
            if sig == SIGUSR2 {
                info!("SIGUSR2: upgrading");
                let _ = upgrades.send(());
            } else {
                stop = true;
            }
        }
        if stop {
            break;
        }
        if server.thread_died() {
            error!("a server thread exited unexpectedly; stopping");
            std::process::exit(70);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::spawn(move || {
        if signals.forever().any(|s| s != SIGUSR2) {
            warn!("second signal: exiting without waiting for clients");
            std::process::exit(130);
        }
    });
}
