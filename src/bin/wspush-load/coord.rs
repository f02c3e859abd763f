//! The coordinator: starts the workers (one in-process thread, or `--procs K` children of
//! this same binary), prints a progress line on stderr once a second, runs the scenario's
//! phases (sample the server, hold, publish, drain, stop) and merges the workers' results
//! into one `Report`.
//!
//! Every wait is bounded by `--duration` plus a short grace for collecting results; it
//! never kills anything it did not start, and it always stops and reaps its children.

use crate::cli::{Command, Common};
use crate::publisher::{publish, Pace, PublishError, PublishPlan, Published};
use crate::report::{ConnReport, EchoReport, FanoutReport, Pcts, Report, ServerReport, UrlReport};
use crate::resp::{call, info_fields, info_u64, Reply};
use crate::sys::{mono_ns, process_cpu_seconds, server_rss_bytes, slab_bytes, tcp_mem_bytes};
use crate::wire::{Counters, Event, Sink, StopSignal, WorkerResult};
use crate::worker::{self, Mode, Plan, WAKER};
use mio::{Poll, Waker};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Why a run could not be carried out at all (as opposed to a run that found problems).
#[derive(Debug)]
pub enum LoadError {
    BadUrl(String),
    Resolve(String, std::io::Error),
    Spawn(std::io::Error),
    Poll(std::io::Error),
    Publish(PublishError),
    /// A worker reported it could not run.
    Worker(u32, String),
    /// Workers that never sent their result within the grace period.
    Lost(Vec<u32>),
    /// The per-subscriber receipt bitmaps would not fit in memory.
    TooBig(u64),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::BadUrl(u) => {
                write!(f, "bad WebSocket URL {u:?} (expected ws://HOST:PORT/PATH)")
            }
            LoadError::Resolve(a, e) => write!(f, "cannot resolve {a:?}: {e}"),
            LoadError::Spawn(e) => write!(f, "cannot start worker process: {e}"),
            LoadError::Poll(e) => write!(f, "cannot create event loop: {e}"),
            LoadError::Publish(e) => write!(f, "publisher: {e}"),
            LoadError::Worker(i, e) => write!(f, "worker {i}: {e}"),
            LoadError::Lost(w) => write!(f, "workers {w:?} sent no result (crashed or stuck)"),
            LoadError::TooBig(b) => write!(
                f,
                "tracking every message for every subscriber needs {} MiB (max {} MiB): fewer messages or subscribers, or more rooms",
                b >> 20,
                MAX_BITMAP_BYTES >> 20
            ),
        }
    }
}

/// Seconds a stopped worker may take to send its result.
const COLLECT_GRACE_NS: u64 = 15_000_000_000;
/// Fanout: quiet time after the last expected delivery before the workers are stopped.
const SETTLE_NS: u64 = 200_000_000;
/// A worker stops by itself this long after the coordinator's own deadline.
const WORKER_SLACK_NS: u64 = 20_000_000_000;

/// Bound on the memory spent on receipt bitmaps (one bit per subscriber and message of its
/// room), over all workers.
const MAX_BITMAP_BYTES: u64 = 1 << 30;

/// `host:port` of a `ws://` URL (port 80 by default).
pub fn url_authority(url: &str) -> Result<String, LoadError> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| LoadError::BadUrl(url.into()))?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let auth = &rest[..end];
    if auth.is_empty() {
        return Err(LoadError::BadUrl(url.into()));
    }
    // A bracketed IPv6 literal keeps its colons inside the brackets.
    let has_port = match auth.rfind(']') {
        Some(b) => auth[b..].contains(':'),
        None => auth.contains(':'),
    };
    Ok(if has_port {
        auth.to_string()
    } else {
        format!("{auth}:80")
    })
}

pub fn resolve(addr: &str) -> Result<SocketAddr, LoadError> {
    let mut addrs = addr
        .to_socket_addrs()
        .map_err(|e| LoadError::Resolve(addr.into(), e))?;
    addrs.next().ok_or_else(|| {
        LoadError::Resolve(
            addr.into(),
            std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
        )
    })
}

/// The worker plan for worker `index` of `workers`.
pub fn plan_for(cmd: &Command, index: u32, workers: u32) -> Result<Plan, LoadError> {
    let common = cmd.common();
    let (urls, total, mode, rate) = match cmd {
        Command::Conns(a) => (
            std::slice::from_ref(&a.url),
            a.n,
            Mode::Conns,
            a.rate.unwrap_or(common.connect_rate),
        ),
        Command::Fanout(a) => (
            a.url.as_slice(),
            a.s,
            Mode::Fanout {
                rooms: a.r,
                messages: a.m,
                broadcast: a.broadcast,
            },
            common.connect_rate,
        ),
        Command::Echo(a) => (
            std::slice::from_ref(&a.url),
            a.c,
            Mode::Echo { bytes: a.b },
            common.connect_rate,
        ),
    };
    if let Mode::Fanout {
        rooms,
        messages,
        broadcast,
    } = mode
    {
        let per_sub = worker::stream_len(0, rooms, broadcast, messages as u64);
        let bytes = total as u64 * per_sub.div_ceil(64) * 8;
        if bytes > MAX_BITMAP_BYTES {
            return Err(LoadError::TooBig(bytes));
        }
    }
    if urls.is_empty() {
        return Err(LoadError::BadUrl(String::new()));
    }
    let addrs = urls
        .iter()
        .map(|u| resolve(&url_authority(u)?))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Plan {
        index,
        workers,
        total,
        urls: urls.to_vec(),
        addrs,
        src: common.src,
        rate: if rate > 0.0 {
            rate / workers as f64
        } else {
            0.0
        },
        handshake_timeout: Duration::from_secs(common.handshake_timeout),
        deadline_ns: mono_ns() + common.duration * 1_000_000_000 + WORKER_SLACK_NS,
        mode,
        v1: matches!(cmd, Command::Fanout(a) if a.v1),
    })
}

/// Runs as a child worker: the plan from the command line, events as JSON lines on
/// stdout, `stop [N]` (or end of input) on stdin.
pub fn run_child(cmd: &Command, index: u32, workers: u32) -> Result<(), LoadError> {
    let plan = plan_for(cmd, index, workers)?;
    let poll = Poll::new().map_err(LoadError::Poll)?;
    let waker = Waker::new(poll.registry(), WAKER).map_err(LoadError::Poll)?;
    let stop = Arc::new(StopSignal::new(waker));
    let stdin_stop = Arc::clone(&stop);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            if let Some(published) = crate::wire::parse_stop_line(&line) {
                stdin_stop.request(published);
                return;
            }
        }
        // The parent went away: stop rather than run on unobserved.
        stdin_stop.request(None);
    });
    worker::run(&plan, &Sink::Stdout, poll, &stop);
    Ok(())
}

enum Handle {
    Thread {
        stop: Arc<StopSignal>,
        join: Option<JoinHandle<WorkerResult>>,
    },
    Child {
        child: Child,
        stdin: Option<ChildStdin>,
    },
}

impl Handle {
    fn stop(&mut self, published: Option<u64>) {
        match self {
            Handle::Thread { stop, .. } => stop.request(published),
            Handle::Child { stdin, .. } => {
                if let Some(mut s) = stdin.take() {
                    let line = match published {
                        Some(p) => format!("stop {p}\n"),
                        None => "stop\n".to_string(),
                    };
                    // A child that already exited cannot be stopped and needs no stop.
                    let _ = s.write_all(line.as_bytes()).and_then(|_| s.flush());
                }
            }
        }
    }

    fn reap(&mut self) {
        match self {
            Handle::Thread { join, .. } => {
                if let Some(j) = join.take() {
                    let _ = j.join();
                }
            }
            Handle::Child { child, stdin } => {
                stdin.take();
                // Give it a moment after its result, then make sure it is gone.
                for _ in 0..50 {
                    if let Ok(Some(_)) = child.try_wait() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn spawn_workers(cmd: &Command, tx: &Sender<Event>) -> Result<Vec<Handle>, LoadError> {
    let k = cmd.common().procs;
    let mut handles = Vec::new();
    if k == 1 {
        let plan = plan_for(cmd, 0, 1)?;
        let poll = Poll::new().map_err(LoadError::Poll)?;
        let waker = Waker::new(poll.registry(), WAKER).map_err(LoadError::Poll)?;
        let stop = Arc::new(StopSignal::new(waker));
        let (stop2, tx2) = (Arc::clone(&stop), tx.clone());
        let join = std::thread::Builder::new()
            .name("worker-0".into())
            .spawn(move || worker::run(&plan, &Sink::Channel(tx2), poll, &stop2))
            .map_err(LoadError::Spawn)?;
        handles.push(Handle::Thread {
            stop,
            join: Some(join),
        });
        return Ok(handles);
    }
    // Validate the URL here so a typo fails once, not K times.
    plan_for(cmd, 0, k)?;
    let exe = std::env::current_exe().map_err(LoadError::Spawn)?;
    for i in 0..k {
        let mut child = std::process::Command::new(&exe)
            .args(std::env::args_os().skip(1))
            .args(["--worker", &i.to_string(), "--workers", &k.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(LoadError::Spawn)?;
        let stdout = child.stdout.take();
        let stdin = child.stdin.take();
        let tx = tx.clone();
        if let Some(out) = stdout {
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    let ev =
                        serde_json::from_str::<Event>(&line).unwrap_or_else(|e| Event::Fatal {
                            worker: i,
                            error: format!("unreadable report line ({e}): {line}"),
                        });
                    if tx.send(ev).is_err() {
                        break;
                    }
                }
            });
        }
        handles.push(Handle::Child { child, stdin });
    }
    Ok(handles)
}

/// Latest state of every worker, as events arrive.
struct Board {
    counters: Vec<Counters>,
    ready: Vec<bool>,
    delivered: Vec<u64>,
    results: Vec<Option<WorkerResult>>,
    /// Shared with the publisher thread: sum of `delivered`.
    delivered_total: Arc<AtomicU64>,
    /// Shared with the publisher thread: open subscribers per room over all workers.
    rooms_open: Arc<[AtomicU64]>,
    /// When `delivered_total` last grew.
    last_delivery_ns: u64,
}

impl Board {
    fn new(k: usize, rooms: usize) -> Board {
        Board {
            rooms_open: (0..rooms).map(|_| AtomicU64::new(0)).collect(),
            counters: vec![Counters::default(); k],
            ready: vec![false; k],
            delivered: vec![0; k],
            results: vec![None; k],
            delivered_total: Arc::new(AtomicU64::new(0)),
            last_delivery_ns: 0,
        }
    }

    fn apply(&mut self, ev: Event) -> Result<(), LoadError> {
        let slot = |w: u32| w as usize;
        match ev {
            Event::Progress { worker, counters } => {
                if let Some(c) = self.counters.get_mut(slot(worker)) {
                    *c = counters;
                }
                self.set_rooms_open();
            }
            Event::Ready { worker, counters } => {
                if let Some(c) = self.counters.get_mut(slot(worker)) {
                    *c = counters;
                }
                self.set_rooms_open();
                if let Some(r) = self.ready.get_mut(slot(worker)) {
                    *r = true;
                }
            }
            Event::Delivered { worker, total } => {
                if let Some(d) = self.delivered.get_mut(slot(worker)) {
                    *d = total;
                }
                self.set_delivered();
            }
            Event::Done { worker, result } => {
                if let Some(d) = self.delivered.get_mut(slot(worker)) {
                    *d = result.counters.delivered;
                }
                self.set_delivered();
                if let Some(c) = self.counters.get_mut(slot(worker)) {
                    *c = result.counters.clone();
                }
                self.set_rooms_open();
                if let Some(r) = self.results.get_mut(slot(worker)) {
                    *r = Some(*result);
                }
            }
            Event::Fatal { worker, error } => return Err(LoadError::Worker(worker, error)),
        }
        Ok(())
    }

    fn set_delivered(&mut self) {
        let total: u64 = self.delivered.iter().sum();
        if total > self.delivered_total.swap(total, Ordering::AcqRel) {
            self.last_delivery_ns = mono_ns();
        }
    }

    fn set_rooms_open(&self) {
        for (r, n) in self.rooms_open.iter().enumerate() {
            let open = self
                .counters
                .iter()
                .filter_map(|c| c.rooms_open.get(r))
                .sum();
            n.store(open, Ordering::Release);
        }
    }

    fn all_ready(&self) -> bool {
        self.ready.iter().all(|&r| r)
    }

    fn all_done(&self) -> bool {
        self.results.iter().all(|r| r.is_some())
    }

    fn total(&self) -> Counters {
        worker::sum_counters(self.counters.iter())
    }
}

/// Prints the once-a-second progress line.
struct Progress {
    start_ns: u64,
    last_ns: u64,
    last: Counters,
    requested: u64,
}

impl Progress {
    fn line(&mut self, now: u64, c: &Counters, phase: &str, scenario: &str) -> String {
        let dt = (now.saturating_sub(self.last_ns) as f64 / 1e9).max(1e-3);
        let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / dt;
        let mut line = format!(
            "[{:>4.0}s] {phase:<10} open {}/{} (+{:.0}/s)  failed {}  dropped {}",
            now.saturating_sub(self.start_ns) as f64 / 1e9,
            c.open,
            self.requested,
            rate(c.handshakes, self.last.handshakes),
            c.failed,
            c.dropped,
        );
        match scenario {
            "fanout" => line.push_str(&format!(
                "  delivered {} (+{:.0}/s)",
                c.delivered,
                rate(c.delivered, self.last.delivered)
            )),
            "echo" => line.push_str(&format!(
                "  round trips {} (+{:.0}/s)",
                c.round_trips,
                rate(c.round_trips, self.last.round_trips)
            )),
            _ => {}
        }
        self.last_ns = now;
        self.last = c.clone();
        line
    }
}

/// Server readings at one point in time.
#[derive(Default, Clone)]
struct Sample {
    rss: Option<u64>,
    tcp_mem: Option<u64>,
    slab: Option<u64>,
    cpu: Option<f64>,
    writev_calls: Option<u64>,
    deliveries: Option<u64>,
    /// INFO `cluster_enabled:1`: PUBLISH replies count nodes, not deliveries.
    cluster: bool,
}

/// Sum over `pids` of what each reports; None unless every PID reported.
fn sum_over(pids: &[u32], f: impl Fn(u32) -> Option<f64>) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| f(p)).sum()
}

fn sample(pids: &[u32], control: Option<SocketAddr>) -> Sample {
    let mut s = Sample {
        tcp_mem: tcp_mem_bytes(),
        slab: slab_bytes(),
        rss: sum_over(pids, |p| server_rss_bytes(p).map(|b| b as f64)).map(|b| b as u64),
        cpu: sum_over(pids, process_cpu_seconds),
        ..Default::default()
    };
    if let Some(addr) = control {
        if let Ok(Reply::Bulk(Some(text))) = call(addr, &[b"INFO"], Duration::from_secs(5)) {
            let f = info_fields(&String::from_utf8_lossy(&text));
            s.writev_calls = info_u64(&f, "writev_calls");
            s.deliveries = info_u64(&f, "deliveries");
            s.cluster = info_u64(&f, "cluster_enabled") == Some(1);
        }
    }
    s
}

/// Phases of a run, in order.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Opening,
    /// conns: holding until the instant; echo: round trips until the instant.
    Running(u64),
    Publishing,
    /// fanout: waiting for the last deliveries.
    Draining,
    Collecting(u64),
}

impl Phase {
    fn label(self) -> &'static str {
        match self {
            Phase::Opening => "opening",
            Phase::Running(_) => "running",
            Phase::Publishing => "publishing",
            Phase::Draining => "draining",
            Phase::Collecting(_) => "stopping",
        }
    }
}

/// Runs the scenario to the end and returns its report.
pub fn run(cmd: &Command, show_progress: bool) -> Result<Report, LoadError> {
    let common: &Common = cmd.common();
    let k = common.procs as usize;
    let start_ns = mono_ns();
    let deadline_ns = start_ns + common.duration * 1_000_000_000;
    let control = match cmd {
        Command::Fanout(a) => Some(resolve(&a.control)?),
        _ => None,
    };
    let before = sample(&common.pid, control);
    // The load generator's own CPU: this process (with an in-process worker) and its
    // worker processes, which start at 0.
    let load_before = process_cpu_seconds(std::process::id());

    let (tx, rx): (Sender<Event>, Receiver<Event>) = mpsc::channel();
    let mut handles = spawn_workers(cmd, &tx)?;
    drop(tx);
    let mut load_pids = vec![std::process::id()];
    load_pids.extend(handles.iter().filter_map(|h| match h {
        Handle::Child { child, .. } => Some(child.id()),
        Handle::Thread { .. } => None,
    }));
    let mut load_cpu: Option<f64> = None;
    let rooms = match cmd {
        Command::Fanout(a) => a.r as usize,
        _ => 0,
    };
    let mut board = Board::new(k, rooms);
    let requested = match cmd {
        Command::Conns(a) => a.n,
        Command::Fanout(a) => a.s,
        Command::Echo(a) => a.c,
    } as u64;
    let mut progress = Progress {
        start_ns,
        last_ns: start_ns,
        last: Counters::default(),
        requested,
    };
    let mut next_tick = start_ns + 1_000_000_000;
    let mut phase = Phase::Opening;
    let mut hit_bound = false;
    let mut after_open: Option<Sample> = None;
    let mut before_publish: Option<Sample> = None;
    let mut after_publish: Option<Sample> = None;
    let mut publisher: Option<JoinHandle<Result<Published, PublishError>>> = None;
    let mut published: Option<Published> = None;
    let mut publish_started_ns = 0u64;
    let mut outcome: Result<(), LoadError> = Ok(());
    let cancel = Arc::new(AtomicBool::new(false));
    // Fanout: when publishing may start (every subscriber open + --publish-after).
    let mut publish_due: Option<u64> = None;

    loop {
        let now = mono_ns();
        if let Phase::Collecting(until) = phase {
            if board.all_done() || now >= until {
                break;
            }
        } else if now >= deadline_ns {
            // For echo the duration is the measuring time: reaching it while running is
            // the normal end.
            hit_bound = !matches!((cmd, phase), (Command::Echo(_), Phase::Running(_)));
            // The publisher has the same deadline and returns by itself; its count of
            // sent messages tells the workers what they should have received.
            if let Some(join) = publisher.take() {
                if let Ok(Ok(p)) = join.join() {
                    published = Some(p);
                }
            }
            phase = stop_all(&mut handles, published.as_ref().map(|p| p.sent), now);
            continue;
        }
        match phase {
            Phase::Opening if board.all_ready() => match cmd {
                Command::Conns(a) => {
                    after_open = Some(sample(&common.pid, None));
                    load_cpu = sum_over(&load_pids, process_cpu_seconds)
                        .zip(load_before)
                        .map(|(after, before)| (after - before).max(0.0));
                    phase = Phase::Running(now + a.hold * 1_000_000_000);
                }
                Command::Echo(_) => phase = Phase::Running(deadline_ns),
                Command::Fanout(a)
                    if now
                        < *publish_due
                            .get_or_insert(now + (a.publish_after.max(0.0) * 1e9) as u64) => {}
                Command::Fanout(a) => {
                    before_publish = Some(sample(&common.pid, control));
                    let subs = board.total().open;
                    let per_message = if a.broadcast {
                        subs
                    } else {
                        subs.div_ceil(a.r as u64)
                    };
                    let plan = PublishPlan {
                        control: control.ok_or_else(|| LoadError::BadUrl(a.control.clone()))?,
                        rooms: a.r,
                        messages: a.m,
                        bytes: a.b,
                        broadcast: a.broadcast,
                        pace: match a.rate {
                            Some(r) => Pace::Rate(r),
                            None => Pace::Window(a.window),
                        },
                        per_message,
                        deadline_ns,
                    };
                    let delivered = Arc::clone(&board.delivered_total);
                    let rooms_open = Arc::clone(&board.rooms_open);
                    let cancel = Arc::clone(&cancel);
                    publish_started_ns = now;
                    let join = std::thread::Builder::new()
                        .name("publisher".into())
                        .spawn(move || publish(&plan, &delivered, &rooms_open, &cancel))
                        .map_err(LoadError::Spawn)?;
                    publisher = Some(join);
                    phase = Phase::Publishing;
                }
            },
            Phase::Running(until) if now >= until => {
                phase = stop_all(&mut handles, None, now);
                continue;
            }
            Phase::Publishing if publisher.as_ref().is_some_and(|j| j.is_finished()) => {
                if let Some(join) = publisher.take() {
                    match join.join() {
                        Ok(Ok(p)) => published = Some(p),
                        Ok(Err(e)) => {
                            outcome = Err(LoadError::Publish(e));
                            phase = stop_all(&mut handles, Some(0), now);
                            continue;
                        }
                        Err(_) => {
                            outcome = Err(LoadError::Worker(
                                u32::MAX,
                                "publisher thread panicked".into(),
                            ));
                            phase = stop_all(&mut handles, Some(0), now);
                            continue;
                        }
                    }
                }
                phase = Phase::Draining;
                continue;
            }
            Phase::Draining => {
                let (Command::Fanout(a), Some(p)) = (cmd, published.as_ref()) else {
                    phase = stop_all(&mut handles, None, now);
                    continue;
                };
                let got = board.delivered_total.load(Ordering::Acquire);
                let last_progress = board.last_delivery_ns.max(p.last_reply_ns);
                // Once everything the subscribers expect has arrived, a short settle
                // catches stragglers that should not exist (duplicates, misdeliveries).
                // Not the replies' sum: in cluster mode it counts nodes, and deliveries
                // through other nodes arrive after the reply.
                let complete = got >= p.expected && now >= last_progress + SETTLE_NS;
                if complete || now >= last_progress + a.drain_timeout * 1_000_000_000 {
                    after_publish = Some(sample(&common.pid, control));
                    phase = stop_all(&mut handles, Some(p.sent), now);
                    continue;
                }
            }
            _ => {}
        }

        if now >= next_tick {
            next_tick = now + 1_000_000_000;
            if show_progress {
                eprintln!(
                    "{}",
                    progress.line(now, &board.total(), phase.label(), cmd.name())
                );
            }
        }
        let mut wake = next_tick.min(deadline_ns);
        match phase {
            Phase::Running(until) => wake = wake.min(until),
            Phase::Collecting(until) => wake = wake.min(until),
            // Poll the publisher thread and the drain condition often: cheap, and keeps
            // the end-of-run timing within a few milliseconds.
            Phase::Publishing | Phase::Draining => wake = wake.min(now + 2_000_000),
            Phase::Opening => {
                if let Some(due) = publish_due {
                    wake = wake.min(due);
                }
            }
        }
        match rx.recv_timeout(Duration::from_nanos(wake.saturating_sub(now))) {
            Ok(ev) => {
                if let Err(e) = board.apply(ev) {
                    outcome = Err(e);
                    phase = stop_all(&mut handles, None, mono_ns());
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                // Every worker's channel is gone: nothing more will arrive.
                if !matches!(phase, Phase::Collecting(_)) {
                    phase = stop_all(&mut handles, None, mono_ns());
                }
                if !board.all_done() {
                    break;
                }
            }
        }
    }
    if let Some(join) = publisher.take() {
        // A worker failed while publishing.
        cancel.store(true, Ordering::Release);
        if let Ok(Ok(p)) = join.join() {
            published = Some(p);
        }
    }
    for h in &mut handles {
        h.reap();
    }
    outcome?;
    let missing: Vec<u32> = board
        .results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_none())
        .map(|(i, _)| i as u32)
        .collect();
    if !missing.is_empty() {
        return Err(LoadError::Lost(missing));
    }
    let mut merged = WorkerResult::default();
    for r in board.results.iter().flatten() {
        merged.add(r);
    }
    let end_ns = mono_ns();
    let inputs = Inputs {
        cmd,
        merged: &merged,
        before,
        after_open,
        load_cpu,
        before_publish,
        after_publish,
        published,
        publish_started_ns,
        last_delivery_ns: board.last_delivery_ns,
        elapsed_s: (end_ns - start_ns) as f64 / 1e9,
        hit_bound,
    };
    Ok(build_report(inputs))
}

fn stop_all(handles: &mut [Handle], published: Option<u64>, now: u64) -> Phase {
    for h in handles.iter_mut() {
        h.stop(published);
    }
    Phase::Collecting(now + COLLECT_GRACE_NS)
}

struct Inputs<'a> {
    cmd: &'a Command,
    merged: &'a WorkerResult,
    before: Sample,
    after_open: Option<Sample>,
    /// conns: the load generator's CPU seconds over the connect phase.
    load_cpu: Option<f64>,
    before_publish: Option<Sample>,
    after_publish: Option<Sample>,
    published: Option<Published>,
    publish_started_ns: u64,
    last_delivery_ns: u64,
    elapsed_s: f64,
    hit_bound: bool,
}

fn per(a: Option<u64>, b: Option<u64>, n: u64) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if n > 0 => Some((b as f64 - a as f64) / n as f64),
        _ => None,
    }
}

fn delta(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    Some(b?.saturating_sub(a?))
}

fn build_report(i: Inputs) -> Report {
    let m = i.merged;
    let c = &m.counters;
    let common = i.cmd.common();
    let span_s = m.last_handshake_ns.saturating_sub(m.first_attempt_ns) as f64 / 1e9;
    let mut report = Report {
        scenario: i.cmd.name().into(),
        url: match i.cmd {
            Command::Conns(a) => a.url.clone(),
            Command::Fanout(a) => a.url.join(" "),
            Command::Echo(a) => a.url.clone(),
        },
        procs: common.procs,
        elapsed_s: i.elapsed_s,
        hit_duration_bound: i.hit_bound,
        connections: ConnReport {
            requested: match i.cmd {
                Command::Conns(a) => a.n,
                Command::Fanout(a) => a.s,
                Command::Echo(a) => a.c,
            } as u64,
            attempted: c.attempted,
            opened: c.handshakes,
            failed: c.failed,
            dropped: c.dropped,
            failures: m.failures.clone(),
            drops: m.drops.clone(),
            handshakes_per_s: if span_s > 0.0 {
                c.handshakes as f64 / span_s
            } else {
                0.0
            },
            handshake: Pcts::of(&m.handshake_ns),
            load_cpu_seconds: i.load_cpu,
            load_cpu_us_per_handshake: i
                .load_cpu
                .filter(|_| c.handshakes > 0)
                .map(|cpu| cpu * 1e6 / c.handshakes as f64),
        },
        ..Default::default()
    };
    if c.failed > 0 {
        report
            .problems
            .push(format!("{} connections failed to open", c.failed));
    }
    if c.dropped > 0 {
        report
            .problems
            .push(format!("{} connections dropped after opening", c.dropped));
    }
    if c.handshakes == 0 {
        report.problems.push("no connection opened".into());
    }
    if i.hit_bound {
        report.problems.push(format!(
            "stopped by --duration {} before the scenario finished",
            common.duration
        ));
    }
    let mut server = common.pid.first().map(|&pid| ServerReport {
        pid,
        pids: if common.pid.len() > 1 {
            common.pid.clone()
        } else {
            Vec::new()
        },
        ..Default::default()
    });

    match i.cmd {
        Command::Conns(_) => {
            if let (Some(s), Some(after)) = (server.as_mut(), i.after_open.as_ref()) {
                s.rss_before_bytes = i.before.rss;
                s.rss_after_bytes = after.rss;
                s.user_bytes_per_conn = per(i.before.rss, after.rss, c.handshakes);
                s.tcp_mem_before_bytes = i.before.tcp_mem;
                s.tcp_mem_after_bytes = after.tcp_mem;
                s.kernel_bytes_per_conn = per(i.before.tcp_mem, after.tcp_mem, c.handshakes);
                s.slab_before_bytes = i.before.slab;
                s.slab_after_bytes = after.slab;
                s.kernel_slab_bytes_per_conn = per(i.before.slab, after.slab, c.handshakes);
                if let (Some(x), Some(y)) = (i.before.cpu, after.cpu) {
                    let cpu = (y - x).max(0.0);
                    s.cpu_seconds = Some(cpu);
                    if c.handshakes > 0 {
                        s.cpu_us_per_handshake = Some(cpu * 1e6 / c.handshakes as f64);
                    }
                }
            }
        }
        Command::Echo(a) => {
            let secs = m.echo_window_ns as f64 / 1e9;
            report.echo = Some(EchoReport {
                connections: c.handshakes,
                bytes: a.b,
                round_trips: c.round_trips,
                seconds: secs,
                messages_per_s: if secs > 0.0 {
                    c.round_trips as f64 / secs
                } else {
                    0.0
                },
                rtt: Pcts::of(&m.latency_ns),
                mismatches: m.echo_mismatches,
            });
            if m.echo_mismatches > 0 {
                report.problems.push(format!(
                    "{} echoes did not match what was sent",
                    m.echo_mismatches
                ));
            }
        }
        Command::Fanout(a) => {
            let p = i.published.clone().unwrap_or_default();
            let check = m.fanout.clone().unwrap_or_default();
            let mut last = crate::hist::Histogram::new();
            for &ns in check.last_receipt_ns.iter().take(p.sent as usize) {
                if ns > 0 {
                    last.record(ns);
                }
            }
            let first = if p.first_send_ns > 0 {
                p.first_send_ns
            } else {
                i.publish_started_ns
            };
            let span = i
                .last_delivery_ns
                .max(p.last_reply_ns)
                .saturating_sub(first) as f64
                / 1e9;
            let rate = |n: u64| if span > 0.0 { n as f64 / span } else { 0.0 };
            let cluster = i.before.cluster || i.before_publish.as_ref().is_some_and(|s| s.cluster);
            let per_url = check
                .by_url
                .iter()
                .zip(&a.url)
                .map(|(c, url)| UrlReport {
                    url: url.clone(),
                    subscribers: c.subscribers,
                    expected_deliveries: c.expected,
                    delivered: c.received,
                    lost: c.lost,
                    latency: Pcts::of(&c.latency_ns),
                })
                .collect();
            report.fanout = Some(FanoutReport {
                cluster,
                subscribers: check.subscribers,
                rooms: a.r,
                broadcast: a.broadcast,
                bytes: a.b,
                messages: a.m as u64,
                published: p.sent,
                acked: p.acked,
                control_errors: p.errors,
                first_control_error: p.first_error.clone(),
                publish_timed_out: p.timed_out,
                queued_deliveries: p.queued,
                expected_deliveries: check.expected,
                delivered: check.received,
                deliveries_per_s: rate(check.received),
                messages_per_s: rate(p.acked),
                latency: Pcts::of(&m.latency_ns),
                last_receipt: Pcts::of(&last),
                lost: check.lost,
                reordered: check.reordered,
                duplicated: check.duplicated,
                foreign: check.foreign,
                malformed: check.malformed,
                per_url,
            });
            for (n, what) in [
                (check.lost, "lost"),
                (check.reordered, "reordered"),
                (check.duplicated, "duplicated"),
                (
                    check.foreign,
                    "delivered to a subscriber outside the message's room",
                ),
                (check.malformed, "malformed"),
                (p.errors, "control errors"),
            ] {
                if n > 0 {
                    report.problems.push(format!("{n} messages {what}"));
                }
            }
            if p.sent < a.m as u64 {
                report
                    .problems
                    .push(format!("only {} of {} messages published", p.sent, a.m));
            }
            // In cluster mode a reply counts local recipients plus other nodes, so only
            // a standalone server's replies can be checked against the subscribers.
            if !cluster && p.queued != check.expected {
                report.problems.push(format!(
                    "server queued {} deliveries, subscribers expected {}",
                    p.queued, check.expected
                ));
            }
            if let (Some(s), Some(b), Some(e)) = (
                server.as_mut(),
                i.before_publish.as_ref(),
                i.after_publish.as_ref(),
            ) {
                if let (Some(x), Some(y)) = (b.cpu, e.cpu) {
                    let cpu = (y - x).max(0.0);
                    s.cpu_seconds = Some(cpu);
                    if check.received > 0 {
                        s.cpu_us_per_delivery = Some(cpu * 1e6 / check.received as f64);
                    }
                    if p.acked > 0 {
                        s.cpu_us_per_message = Some(cpu * 1e6 / p.acked as f64);
                    }
                }
                s.rss_before_bytes = i.before.rss;
                s.rss_after_bytes = e.rss;
                s.writev_calls = delta(b.writev_calls, e.writev_calls);
                s.info_deliveries = delta(b.deliveries, e.deliveries);
                if let (Some(w), Some(d)) = (s.writev_calls, s.info_deliveries) {
                    if d > 0 {
                        s.writev_per_delivery = Some(w as f64 / d as f64);
                    }
                }
            }
        }
    }
    report.server = server;
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_defaults_to_port_80() {
        assert_eq!(
            url_authority("ws://localhost/ws").ok(),
            Some("localhost:80".into())
        );
    }

    #[test]
    fn authority_stops_at_path_or_query() {
        assert_eq!(
            url_authority("ws://127.0.0.1:8080/ws?user=1").ok(),
            Some("127.0.0.1:8080".into())
        );
        assert_eq!(url_authority("ws://[::1]?a").ok(), Some("[::1]:80".into()));
        assert_eq!(url_authority("ws://[::1]:9/x").ok(), Some("[::1]:9".into()));
    }

    #[test]
    fn non_ws_scheme_is_rejected() {
        assert!(url_authority("wss://x/ws").is_err());
        assert!(url_authority("http://x/ws").is_err());
        assert!(url_authority("ws:///ws").is_err());
    }
}
