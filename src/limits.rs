//! Descriptor limits and kernel settings that cap how many connections one process holds.
//!
//! Used once at start-up: raise `RLIMIT_NOFILE`, derive the default
//! `--max-connections` from it (refusing when the limit leaves no room for any
//! connection), and warn (never fail) about kernel settings that would cap the
//! server below its target. Reading (`getrlimit`, `/proc/sys`) is
//! kept apart from judging (`judge_capacity`, pure) so the judging is unit-tested.
//! This module must never be called on a hot path and never panics: a setting
//! that cannot be read is skipped, not an error.

use std::fmt;
use std::io;
use std::path::Path;

/// Descriptors kept for things that are not client connections, whatever the
/// thread count: stdin/out/err, the dispatcher's epoll, waker and control
/// listener, control clients (a few dozen), signal-hook's self-pipe, log files
/// and the odd `/proc` read at start-up.
pub const RESERVED_BASE: u64 = 64;

/// Descriptors kept per reactor: its epoll, its waker (eventfd), its listening
/// socket (`SO_REUSEPORT`), plus headroom so an accept racing a close never
/// hits `EMFILE` before `--max-connections` answers 503.
pub const RESERVED_PER_REACTOR: u64 = 16;

/// Estimate of the `tcp_mem` budget one connection draws while a pushed frame
/// is in flight, in bytes. An idle socket with empty queues charges nothing, but
/// a broadcast puts an skb in every recipient's send queue at once, and socket
/// memory is charged in whole quanta of one page (`SK_MEM_QUANTUM`), so each
/// recipient holds at least 4 KiB until the peer ACKs. If `tcp_mem` high is
/// below connections × this, the kernel refuses socket memory mid-broadcast
/// ("out of memory -- consider tuning tcp_mem") and drops data.
pub const TCP_MEM_BYTES_PER_SOCKET: u64 = 4096;

/// The process's `RLIMIT_NOFILE`. `u64::MAX` stands for `RLIM_INFINITY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    /// The limit in force: opening descriptor number `soft` fails with `EMFILE`.
    pub soft: u64,
    /// The ceiling an unprivileged process may raise `soft` to.
    pub hard: u64,
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (libc::getrlimit/setrlimit).
/// Returns the limit now in force.
///
/// An unlimited hard limit (possible on some systems, never accepted for
/// `RLIMIT_NOFILE` by Linux) is replaced by `fs.nr_open`, the kernel's real
/// per-process ceiling, since asking for infinity fails with `EPERM`.
pub fn raise_nofile_limit() -> io::Result<NofileLimit> {
    let current = get_nofile()?;
    let nr_open = read_values(&Path::new(PROC_SYS).join("fs/nr_open")).and_then(|v| single(&v));
    if let Some(target) = nofile_target(current, nr_open) {
        set_nofile(NofileLimit {
            soft: target,
            hard: current.hard,
        })?;
    }
    get_nofile()
}

/// The soft limit to ask for, or `None` when the soft limit is already as high
/// as it can go.
pub fn nofile_target(current: NofileLimit, nr_open: Option<u64>) -> Option<u64> {
    let ceiling = if current.hard == u64::MAX {
        nr_open?
    } else {
        current.hard
    };
    (ceiling > current.soft).then_some(ceiling)
}

/// The default `--max-handshakes` for a descriptor limit: 1/64 of it, between 64 and
/// 65,536. A handshake takes milliseconds, so even a reconnect storm of 100,000 per
/// second holds a few thousand at once; the budget only has to outlast that, while
/// keeping what unfinished handshakes can hold small next to established capacity
/// (20,000 descriptors → 312; 1,048,576 → 16,384).
pub fn default_max_handshakes(nofile: u64) -> usize {
    usize::try_from((nofile / 64).clamp(64, 65_536)).unwrap_or(65_536)
}

/// What a descriptor limit must cover besides client connections. One struct so
/// the reserve stays one computation as more things come to need descriptors
/// (a handshake budget, an HTTP listener): add a field and its term in
/// [`DescriptorBudget::reserved`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorBudget {
    /// Reactor threads, each holding [`RESERVED_PER_REACTOR`].
    pub threads: usize,
    /// Sockets that may be in their handshake at once (`--max-handshakes`): they hold
    /// descriptors but not established capacity, so they are reserved on top of it.
    pub handshakes: usize,
}

impl DescriptorBudget {
    /// Descriptors kept for things that are not established connections:
    /// [`RESERVED_BASE`] + [`RESERVED_PER_REACTOR`] per reactor + the handshake budget.
    pub fn reserved(&self) -> u64 {
        let threads = u64::try_from(self.threads).unwrap_or(u64::MAX);
        let handshakes = u64::try_from(self.handshakes).unwrap_or(u64::MAX);
        RESERVED_BASE
            .saturating_add(RESERVED_PER_REACTOR.saturating_mul(threads))
            .saturating_add(handshakes)
    }

    /// The default --max-connections under the soft limit `nofile`: everything it
    /// allows once [`Self::reserved`] is set aside. An error, not 0, when nothing is
    /// left: a server that answers 503 to everyone must not start.
    pub fn default_max_connections(&self, nofile: u64) -> Result<usize, DescriptorShortfall> {
        let reserved = self.reserved();
        match nofile.saturating_sub(reserved) {
            0 => Err(DescriptorShortfall {
                nofile,
                threads: self.threads,
                handshakes: self.handshakes,
                reserved,
            }),
            free => Ok(usize::try_from(free).unwrap_or(usize::MAX)),
        }
    }
}

/// The open-file limit does not even cover the reserve, so the default
/// --max-connections would be 0. `Display` is one line an operator can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorShortfall {
    /// The soft RLIMIT_NOFILE in force (after raising it to the hard limit).
    pub nofile: u64,
    /// Reactor threads.
    pub threads: usize,
    /// The handshake budget.
    pub handshakes: usize,
    /// What [`DescriptorBudget::reserved`] set aside.
    pub reserved: u64,
}

impl fmt::Display for DescriptorShortfall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the open-file limit {} does not cover the {} descriptors reserved for {} reactor \
             threads and {} handshakes ({RESERVED_BASE} + {RESERVED_PER_REACTOR} per thread + \
             --max-handshakes), so no connection could be accepted: raise the limit (ulimit -n, \
             LimitNOFILE= under systemd), lower --threads or --max-handshakes, or set \
             --max-connections",
            self.nofile, self.reserved, self.threads, self.handshakes
        )
    }
}

impl std::error::Error for DescriptorShortfall {}

/// Human warnings (one line each) for settings that would cap the server below
/// `max_connections`: nofile soft limit, fs.nr_open, fs.file-max,
/// net.core.somaxconn and net.ipv4.tcp_max_syn_backlog (vs `listen_backlog`, the
/// backlog each reactor passes to `listen`), and tcp_mem high (vs
/// `max_connections` × [`TCP_MEM_BYTES_PER_SOCKET`]). Reads /proc/sys; a setting
/// that can't be read is skipped, not an error.
pub fn capacity_warnings(
    max_connections: usize,
    nofile: &NofileLimit,
    listen_backlog: u32,
) -> Vec<String> {
    let kernel = KernelSettings::read();
    judge_capacity(max_connections, nofile, listen_backlog, &kernel)
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// Where the kernel exposes its settings.
const PROC_SYS: &str = "/proc/sys";

/// The kernel settings that cap connection count, as read from `/proc/sys`.
/// `None`: the file is missing (not this kernel, module not loaded) or unreadable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSettings {
    /// `fs.nr_open`: the highest RLIMIT_NOFILE any process may have.
    pub nr_open: Option<u64>,
    /// `fs.file-max`: open files for the whole system.
    pub file_max: Option<u64>,
    /// `net.core.somaxconn`: the kernel clamps every listen backlog to it.
    pub somaxconn: Option<u64>,
    /// `net.ipv4.tcp_max_syn_backlog`: half-open connections per listener.
    pub tcp_max_syn_backlog: Option<u64>,
    /// `net.ipv4.tcp_mem`: low, pressure, high, in pages, for all TCP sockets.
    pub tcp_mem_pages: Option<[u64; 3]>,
    /// Bytes per page, the unit of `tcp_mem`.
    pub page_size: u64,
}

impl KernelSettings {
    /// Reads the live settings from `/proc/sys`.
    pub fn read() -> Self {
        Self::read_from(Path::new(PROC_SYS))
    }

    /// Reads the settings from a `/proc/sys`-shaped directory (tests use a temp dir).
    pub fn read_from(root: &Path) -> Self {
        let one = |name: &str| read_values(&root.join(name)).and_then(|v| single(&v));
        let tcp_mem = read_values(&root.join("net/ipv4/tcp_mem"))
            .and_then(|v| <[u64; 3]>::try_from(v.as_slice()).ok());
        KernelSettings {
            nr_open: one("fs/nr_open"),
            file_max: one("fs/file-max"),
            somaxconn: one("net/core/somaxconn"),
            tcp_max_syn_backlog: one("net/ipv4/tcp_max_syn_backlog"),
            tcp_mem_pages: tcp_mem,
            page_size: page_size(),
        }
    }
}

/// Parses a `/proc/sys` value: one or more unsigned integers separated by
/// whitespace (`tcp_mem` uses tabs). `None` if any field is not a number.
pub fn parse_values(text: &str) -> Option<Vec<u64>> {
    let values: Option<Vec<u64>> = text.split_whitespace().map(|f| f.parse().ok()).collect();
    values.filter(|v| !v.is_empty())
}

fn read_values(path: &Path) -> Option<Vec<u64>> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| parse_values(&t))
}

fn single(values: &[u64]) -> Option<u64> {
    match values {
        [v] => Some(*v),
        _ => None,
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf only reads a constant of the running system.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}

/// A setting that caps the server below its target. `Display` is one line,
/// saying what caps what and which knob to turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CapacityWarning {
    /// The soft RLIMIT_NOFILE leaves fewer descriptors than connections.
    NofileSoft { soft: u64, max_connections: usize },
    /// `fs.nr_open` keeps any process's descriptor limit below the target.
    NrOpen {
        nr_open: u64,
        max_connections: usize,
    },
    /// `fs.file-max` keeps the whole system below the target.
    FileMax {
        file_max: u64,
        max_connections: usize,
    },
    /// `net.core.somaxconn` silently shortens the listen backlog.
    Somaxconn { somaxconn: u64, listen_backlog: u32 },
    /// `net.ipv4.tcp_max_syn_backlog` holds fewer half-open connections than the backlog.
    SynBacklog {
        tcp_max_syn_backlog: u64,
        listen_backlog: u32,
    },
    /// `net.ipv4.tcp_mem` high is below what a broadcast to every connection pins.
    TcpMem {
        high_bytes: u64,
        needed_bytes: u64,
        max_connections: usize,
    },
}

/// Connections a descriptor budget leaves once the fixed reserve is set aside.
fn connections_for(descriptors: u64) -> u64 {
    descriptors.saturating_sub(RESERVED_BASE)
}

const MIB: u64 = 1 << 20;

impl fmt::Display for CapacityWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            CapacityWarning::NofileSoft {
                soft,
                max_connections,
            } => write!(
                f,
                "RLIMIT_NOFILE soft limit {soft} caps this process at ~{} connections, below \
                 --max-connections {max_connections}; raise LimitNOFILE= (systemd) or nofile \
                 (/etc/security/limits.d)",
                connections_for(soft)
            ),
            CapacityWarning::NrOpen {
                nr_open,
                max_connections,
            } => write!(
                f,
                "fs.nr_open={nr_open} caps one process at ~{} connections, below \
                 --max-connections {max_connections}; raise it (scripts/tune.sh --apply)",
                connections_for(nr_open)
            ),
            CapacityWarning::FileMax {
                file_max,
                max_connections,
            } => write!(
                f,
                "fs.file-max={file_max} caps the whole system at ~{} connections, below \
                 --max-connections {max_connections}; raise it (scripts/tune.sh --apply)",
                connections_for(file_max)
            ),
            CapacityWarning::Somaxconn {
                somaxconn,
                listen_backlog,
            } => write!(
                f,
                "net.core.somaxconn={somaxconn} clamps the listen backlog of {listen_backlog}: \
                 connect bursts beyond {somaxconn} pending per listener are dropped and retried \
                 by clients a second or more later; raise it to at least {listen_backlog}"
            ),
            CapacityWarning::SynBacklog {
                tcp_max_syn_backlog,
                listen_backlog,
            } => write!(
                f,
                "net.ipv4.tcp_max_syn_backlog={tcp_max_syn_backlog} is below the listen backlog \
                 of {listen_backlog}: SYN bursts beyond it are dropped or answered with SYN \
                 cookies; raise it to at least {listen_backlog}"
            ),
            CapacityWarning::TcpMem {
                high_bytes,
                needed_bytes,
                max_connections,
            } => write!(
                f,
                "net.ipv4.tcp_mem high ({} MiB) is below the ~{} MiB that a broadcast to \
                 {max_connections} connections pins ({} KiB each until ACKed): past it the \
                 kernel refuses socket memory and drops data; raise tcp_mem (scripts/tune.sh)",
                high_bytes / MIB,
                needed_bytes.div_ceil(MIB),
                TCP_MEM_BYTES_PER_SOCKET / 1024
            ),
        }
    }
}

/// Every setting in `kernel` (and `nofile`) that would cap the server below
/// `max_connections`. Pure: no I/O. Settings that are `None` are skipped; an
/// unlimited soft limit (`u64::MAX`) never warns.
pub fn judge_capacity(
    max_connections: usize,
    nofile: &NofileLimit,
    listen_backlog: u32,
    kernel: &KernelSettings,
) -> Vec<CapacityWarning> {
    let wanted = u64::try_from(max_connections).unwrap_or(u64::MAX);
    // Only the thread-independent reserve: at the default --max-connections
    // (limit minus the full reserve) none of these fire.
    let descriptors = wanted.saturating_add(RESERVED_BASE);
    let backlog = u64::from(listen_backlog);
    let mut warnings = Vec::new();

    if nofile.soft < descriptors {
        warnings.push(CapacityWarning::NofileSoft {
            soft: nofile.soft,
            max_connections,
        });
    }
    if let Some(nr_open) = kernel.nr_open.filter(|&v| v < descriptors) {
        warnings.push(CapacityWarning::NrOpen {
            nr_open,
            max_connections,
        });
    }
    if let Some(file_max) = kernel.file_max.filter(|&v| v < descriptors) {
        warnings.push(CapacityWarning::FileMax {
            file_max,
            max_connections,
        });
    }
    if let Some(somaxconn) = kernel.somaxconn.filter(|&v| v < backlog) {
        warnings.push(CapacityWarning::Somaxconn {
            somaxconn,
            listen_backlog,
        });
    }
    if let Some(syn) = kernel.tcp_max_syn_backlog.filter(|&v| v < backlog) {
        warnings.push(CapacityWarning::SynBacklog {
            tcp_max_syn_backlog: syn,
            listen_backlog,
        });
    }
    if let Some([_, _, high_pages]) = kernel.tcp_mem_pages {
        let high_bytes = high_pages.saturating_mul(kernel.page_size);
        let needed_bytes = wanted.saturating_mul(TCP_MEM_BYTES_PER_SOCKET);
        if high_bytes < needed_bytes {
            warnings.push(CapacityWarning::TcpMem {
                high_bytes,
                needed_bytes,
                max_connections,
            });
        }
    }
    warnings
}

// rlim_t is u64 on every 64-bit target but u32 on some 32-bit ones; these two
// conversions keep the rest of the module in u64 with RLIM_INFINITY ↔ u64::MAX.
#[allow(clippy::useless_conversion)]
fn from_rlim(value: libc::rlim_t) -> u64 {
    if value == libc::RLIM_INFINITY {
        u64::MAX
    } else {
        u64::from(value)
    }
}

#[allow(clippy::useless_conversion, clippy::unnecessary_fallible_conversions)]
fn to_rlim(value: u64) -> libc::rlim_t {
    if value == u64::MAX {
        libc::RLIM_INFINITY
    } else {
        libc::rlim_t::try_from(value).unwrap_or(libc::RLIM_INFINITY)
    }
}

fn get_nofile() -> io::Result<NofileLimit> {
    let mut rlim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `rlim` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rlim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(NofileLimit {
        soft: from_rlim(rlim.rlim_cur),
        hard: from_rlim(rlim.rlim_max),
    })
}

fn set_nofile(limit: NofileLimit) -> io::Result<()> {
    let rlim = libc::rlimit {
        rlim_cur: to_rlim(limit.soft),
        rlim_max: to_rlim(limit.hard),
    };
    // SAFETY: `rlim` is a valid rlimit for the duration of the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rlim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Settings that cap nothing at a million connections with a 1024 backlog.
    fn ample() -> KernelSettings {
        KernelSettings {
            nr_open: Some(2_000_000),
            file_max: Some(4_000_000),
            somaxconn: Some(4096),
            tcp_max_syn_backlog: Some(4096),
            tcp_mem_pages: Some([1_000_000, 1_500_000, 2_000_000]),
            page_size: 4096,
        }
    }

    const MILLION: usize = 1_000_000;
    const PLENTY: NofileLimit = NofileLimit {
        soft: 2_000_000,
        hard: 2_000_000,
    };

    fn budget(threads: usize) -> DescriptorBudget {
        DescriptorBudget {
            threads,
            handshakes: 0,
        }
    }

    #[test]
    fn reserves_64_plus_16_per_reactor() {
        assert_eq!(budget(0).reserved(), 64);
        assert_eq!(budget(1).reserved(), 80);
        assert_eq!(budget(8).reserved(), 64 + 128);
    }

    #[test]
    fn default_max_connections_is_nofile_minus_reserve() {
        assert_eq!(budget(2).default_max_connections(1024), Ok(1024 - 96));
        assert_eq!(
            budget(4).default_max_connections(1_048_576),
            Ok(1_048_576 - 128)
        );
        assert_eq!(budget(2).default_max_connections(97), Ok(1));
    }

    #[test]
    fn limit_at_or_below_reserve_is_a_shortfall_not_zero_connections() {
        assert_eq!(
            budget(64).default_max_connections(1024),
            Err(DescriptorShortfall {
                nofile: 1024,
                threads: 64,
                handshakes: 0,
                reserved: 1088
            })
        );
        assert!(budget(2).default_max_connections(96).is_err());
        assert!(budget(2).default_max_connections(50).is_err());
    }

    #[test]
    fn the_handshake_budget_is_reserved_on_top_of_established_capacity() {
        let b = DescriptorBudget {
            threads: 2,
            handshakes: 312,
        };
        assert_eq!(b.reserved(), 64 + 2 * 16 + 312);
        assert_eq!(b.default_max_connections(20_000), Ok(20_000 - 96 - 312));
        assert_eq!(default_max_handshakes(20_000), 312);
        assert_eq!(default_max_handshakes(1024), 64);
        assert_eq!(default_max_handshakes(1 << 20), 16_384);
        assert_eq!(default_max_handshakes(u64::MAX), 65_536);
    }

    #[test]
    fn shortfall_names_limit_threads_reserve_and_the_remedies_on_one_line() {
        let line = DescriptorShortfall {
            nofile: 1024,
            threads: 64,
            handshakes: 0,
            reserved: 1088,
        }
        .to_string();
        assert!(!line.contains('\n'), "{line}");
        for want in [
            "open-file limit 1024",
            "1088 descriptors",
            "64 reactor threads",
            "ulimit -n",
            "LimitNOFILE=",
            "--threads",
            "--max-connections",
        ] {
            assert!(line.contains(want), "no {want:?} in {line}");
        }
    }

    #[test]
    fn default_max_connections_saturates_for_unlimited_nofile() {
        let max = budget(2).default_max_connections(u64::MAX);
        assert!(max.is_ok_and(|m| m >= usize::MAX / 2));
    }

    #[test]
    fn raises_soft_limit_to_hard_limit() {
        let limit = NofileLimit {
            soft: 1024,
            hard: 524_288,
        };
        assert_eq!(nofile_target(limit, Some(1_048_576)), Some(524_288));
    }

    #[test]
    fn leaves_soft_limit_alone_when_already_at_hard() {
        let limit = NofileLimit {
            soft: 524_288,
            hard: 524_288,
        };
        assert_eq!(nofile_target(limit, Some(1_048_576)), None);
    }

    #[test]
    fn unlimited_hard_limit_means_nr_open() {
        let limit = NofileLimit {
            soft: 1024,
            hard: u64::MAX,
        };
        assert_eq!(nofile_target(limit, Some(1_048_576)), Some(1_048_576));
        assert_eq!(nofile_target(limit, None), None);
    }

    #[test]
    fn raise_nofile_limit_leaves_soft_at_hard() {
        let limit = raise_nofile_limit().expect("getrlimit/setrlimit on self");
        assert!(limit.soft <= limit.hard);
        if limit.hard != u64::MAX {
            assert_eq!(limit.soft, limit.hard);
        }
    }

    #[test]
    fn ample_settings_give_no_warning() {
        assert_eq!(judge_capacity(MILLION, &PLENTY, 1024, &ample()), vec![]);
    }

    #[test]
    fn default_max_connections_never_warns_about_nofile() {
        let nofile = NofileLimit {
            soft: 1024,
            hard: 1024,
        };
        let max = budget(4)
            .default_max_connections(nofile.soft)
            .expect("1024 covers 4 reactors");
        assert_eq!(judge_capacity(max, &nofile, 1024, &ample()), vec![]);
    }

    #[test]
    fn warns_when_nofile_soft_limit_is_below_max_connections() {
        let nofile = NofileLimit {
            soft: 1024,
            hard: 1_048_576,
        };
        let w = judge_capacity(MILLION, &nofile, 1024, &ample());
        assert_eq!(
            w,
            vec![CapacityWarning::NofileSoft {
                soft: 1024,
                max_connections: MILLION
            }]
        );
        assert!(w[0].to_string().contains("~960 connections"));
    }

    #[test]
    fn unlimited_soft_limit_never_warns() {
        let nofile = NofileLimit {
            soft: u64::MAX,
            hard: u64::MAX,
        };
        let w = judge_capacity(usize::MAX, &nofile, 1024, &ample());
        assert!(!w.is_empty(), "the kernel settings do cap usize::MAX");
        assert!(!w
            .iter()
            .any(|w| matches!(w, CapacityWarning::NofileSoft { .. })));
    }

    #[test]
    fn warns_when_nr_open_caps_one_process() {
        let kernel = KernelSettings {
            nr_open: Some(1_048_576),
            ..ample()
        };
        let w = judge_capacity(1_500_000, &PLENTY, 1024, &kernel);
        assert!(w.contains(&CapacityWarning::NrOpen {
            nr_open: 1_048_576,
            max_connections: 1_500_000
        }));
        let line = w
            .iter()
            .find(|w| matches!(w, CapacityWarning::NrOpen { .. }))
            .map(ToString::to_string)
            .unwrap_or_default();
        assert!(
            line.starts_with("fs.nr_open=1048576 caps one process at ~1048512 connections"),
            "{line}"
        );
    }

    #[test]
    fn warns_when_file_max_caps_the_system() {
        let kernel = KernelSettings {
            file_max: Some(800_000),
            ..ample()
        };
        assert_eq!(
            judge_capacity(MILLION, &PLENTY, 1024, &kernel),
            vec![CapacityWarning::FileMax {
                file_max: 800_000,
                max_connections: MILLION
            }]
        );
    }

    #[test]
    fn warns_when_somaxconn_clamps_the_listen_backlog() {
        let kernel = KernelSettings {
            somaxconn: Some(128),
            ..ample()
        };
        assert_eq!(
            judge_capacity(MILLION, &PLENTY, 1024, &kernel),
            vec![CapacityWarning::Somaxconn {
                somaxconn: 128,
                listen_backlog: 1024
            }]
        );
        let kernel = KernelSettings {
            somaxconn: Some(1024),
            ..ample()
        };
        assert_eq!(judge_capacity(MILLION, &PLENTY, 1024, &kernel), vec![]);
    }

    #[test]
    fn warns_when_syn_backlog_is_below_the_listen_backlog() {
        let kernel = KernelSettings {
            tcp_max_syn_backlog: Some(512),
            ..ample()
        };
        assert_eq!(
            judge_capacity(MILLION, &PLENTY, 1024, &kernel),
            vec![CapacityWarning::SynBacklog {
                tcp_max_syn_backlog: 512,
                listen_backlog: 1024
            }]
        );
    }

    #[test]
    fn warns_when_tcp_mem_high_is_below_one_page_per_connection() {
        // A typical 8 GiB machine's default: ~2.2 GiB high, below 1M × 4 KiB.
        let kernel = KernelSettings {
            tcp_mem_pages: Some([287_898, 383_867, 575_796]),
            ..ample()
        };
        let w = judge_capacity(MILLION, &PLENTY, 1024, &kernel);
        assert_eq!(
            w,
            vec![CapacityWarning::TcpMem {
                high_bytes: 575_796 * 4096,
                needed_bytes: 4_096_000_000,
                max_connections: MILLION
            }]
        );
        assert!(w[0]
            .to_string()
            .contains("(2249 MiB) is below the ~3907 MiB"));
        // Half a million connections fit in the same setting.
        assert_eq!(judge_capacity(500_000, &PLENTY, 1024, &kernel), vec![]);
    }

    #[test]
    fn unreadable_settings_are_skipped() {
        let kernel = KernelSettings {
            nr_open: None,
            file_max: None,
            somaxconn: None,
            tcp_max_syn_backlog: None,
            tcp_mem_pages: None,
            page_size: 4096,
        };
        // Only the descriptor limit, which is not read from /proc, is judged.
        let w = judge_capacity(usize::MAX, &PLENTY, u32::MAX, &kernel);
        assert_eq!(
            w,
            vec![CapacityWarning::NofileSoft {
                soft: PLENTY.soft,
                max_connections: usize::MAX
            }]
        );
    }

    #[test]
    fn every_warning_is_one_line() {
        let kernel = KernelSettings {
            nr_open: Some(1),
            file_max: Some(1),
            somaxconn: Some(1),
            tcp_max_syn_backlog: Some(1),
            tcp_mem_pages: Some([1, 1, 1]),
            page_size: 4096,
        };
        let nofile = NofileLimit { soft: 1, hard: 1 };
        let w = judge_capacity(MILLION, &nofile, 1024, &kernel);
        assert_eq!(w.len(), 6);
        for line in w.iter().map(ToString::to_string) {
            assert!(!line.contains('\n'), "{line}");
        }
    }

    #[test]
    fn parses_single_and_tab_separated_proc_values() {
        assert_eq!(parse_values("1048576\n"), Some(vec![1_048_576]));
        assert_eq!(
            parse_values("287898\t383867\t575796\n"),
            Some(vec![287_898, 383_867, 575_796])
        );
        assert_eq!(parse_values(""), None);
        assert_eq!(parse_values("abc\n"), None);
        assert_eq!(parse_values("1 -2"), None);
    }

    #[test]
    fn reads_settings_from_a_proc_sys_tree_and_skips_missing_files() {
        let root = std::env::temp_dir().join(format!("wspush-limits-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let write = |name: &str, text: &str| {
            let path = root.join(name);
            std::fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        };
        write("fs/nr_open", "1048576\n");
        write("net/core/somaxconn", "not a number\n");
        write("net/ipv4/tcp_mem", "1\t2\t3\n");
        let kernel = KernelSettings::read_from(&root);
        let _ = std::fs::remove_dir_all(&root);
        assert_eq!(kernel.nr_open, Some(1_048_576));
        assert_eq!(kernel.file_max, None);
        assert_eq!(kernel.somaxconn, None);
        assert_eq!(kernel.tcp_max_syn_backlog, None);
        assert_eq!(kernel.tcp_mem_pages, Some([1, 2, 3]));
        assert!(kernel.page_size >= 4096);
    }

    #[test]
    fn tcp_mem_with_wrong_field_count_is_skipped() {
        let root = std::env::temp_dir().join(format!("wspush-limits-mem-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("net/ipv4")).expect("mkdir");
        std::fs::write(root.join("net/ipv4/tcp_mem"), "1 2\n").expect("write");
        let kernel = KernelSettings::read_from(&root);
        let _ = std::fs::remove_dir_all(&root);
        assert_eq!(kernel.tcp_mem_pages, None);
    }

    proptest! {
        #[test]
        fn parse_values_never_panics(text in ".*") {
            let _ = parse_values(&text);
        }

        #[test]
        fn parse_values_round_trips_numbers(values in proptest::collection::vec(any::<u64>(), 1..4)) {
            let text = values.iter().map(u64::to_string).collect::<Vec<_>>().join("\t");
            prop_assert_eq!(parse_values(&text), Some(values));
        }

        #[test]
        fn judging_never_panics_and_default_is_never_capped_by_nofile(
            soft in any::<u64>(), hard in any::<u64>(), threads in 1usize..256,
            backlog in any::<u32>(), nr_open in any::<Option<u64>>(),
            mem in any::<Option<[u64; 3]>>(), page in 1u64..65536,
        ) {
            let kernel = KernelSettings {
                nr_open, file_max: nr_open, somaxconn: nr_open, tcp_max_syn_backlog: nr_open,
                tcp_mem_pages: mem, page_size: page,
            };
            let nofile = NofileLimit { soft, hard };
            // Below the reserve there is no default: start-up refuses.
            let max = budget(threads).default_max_connections(soft);
            prop_assume!(max.is_ok());
            let max = max.unwrap_or_default();
            let w = judge_capacity(max, &nofile, backlog, &kernel);
            let capped = w.iter().any(|w| matches!(w, CapacityWarning::NofileSoft { .. }));
            prop_assert!(!capped);
        }
    }
}
