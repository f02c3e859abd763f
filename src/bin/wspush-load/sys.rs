//! What the load generator reads from the operating system: a clock shared by all its
//! processes, the descriptor limit, and the server's memory and CPU from /proc.
//!
//! Readers return `None` for anything that cannot be read (another kernel, a vanished
//! pid) rather than failing the run; the parsing is split out and unit-tested. Nothing
//! here ever writes to /proc or /sys.

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process on the machine, so a send
/// timestamp written by the publisher can be compared with a receipt time in a worker.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer; CLOCK_MONOTONIC
    // always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns (soft, hard) now in force.
pub fn raise_nofile() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write one rlimit struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

fn sysconf(name: libc::c_int, fallback: u64) -> u64 {
    // SAFETY: sysconf has no memory effects.
    let v = unsafe { libc::sysconf(name) };
    if v > 0 {
        v as u64
    } else {
        fallback
    }
}

pub fn page_size() -> u64 {
    sysconf(libc::_SC_PAGESIZE, 4096)
}

pub fn clock_ticks() -> u64 {
    sysconf(libc::_SC_CLK_TCK, 100)
}

/// `VmRSS` in bytes from the text of /proc/PID/status.
pub fn parse_vmrss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// utime + stime in clock ticks from the text of /proc/PID/stat. The command name (field
/// 2) may contain spaces and parentheses, so fields are counted after the last ')'.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of the man page, so utime (14) and stime (15) are at 11, 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The `mem` value (pages) of the `TCP:` line of /proc/net/sockstat.
pub fn parse_sockstat_tcp_mem(sockstat: &str) -> Option<u64> {
    let line = sockstat.lines().find(|l| l.starts_with("TCP:"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "mem")?;
    words.get(at + 1)?.parse().ok()
}

pub fn server_rss_bytes(pid: u32) -> Option<u64> {
    parse_vmrss(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// The first field of /proc/PID/task/TID/schedstat: time on CPU (user + system) in ns.
pub fn parse_schedstat_ns(schedstat: &str) -> Option<u64> {
    schedstat.split_whitespace().next()?.parse().ok()
}

/// A process's CPU time (user + system) in seconds (the server's, or the load
/// generator's own). Read as the sum of its threads' schedstat
/// nanoseconds when the kernel has them: /proc/PID/stat counts in clock ticks (10 ms at
/// 100 Hz), too coarse for the fraction of a second a handshake burst costs. A thread
/// that vanishes between listing and reading is skipped, and threads that exited before
/// are not counted; a server's reactors and dispatcher live as long as it does.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    if let Some(ns) = threads_cpu_ns(pid) {
        return Some(ns as f64 / 1e9);
    }
    let ticks = parse_stat_cpu_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
    Some(ticks as f64 / clock_ticks() as f64)
}

fn threads_cpu_ns(pid: u32) -> Option<u64> {
    let mut total = 0u64;
    let mut any = false;
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let Ok(entry) = entry else { continue };
        let path = entry.path().join("schedstat");
        if let Some(ns) = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| parse_schedstat_ns(&s))
        {
            total += ns;
            any = true;
        }
    }
    any.then_some(total)
}

/// Kernel TCP buffer memory in bytes, machine-wide (both ends of a loopback connection).
pub fn tcp_mem_bytes() -> Option<u64> {
    let pages = parse_sockstat_tcp_mem(&std::fs::read_to_string("/proc/net/sockstat").ok()?)?;
    Some(pages * page_size())
}

/// The `Slab:` value of /proc/meminfo, in bytes.
pub fn parse_meminfo_slab(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("Slab:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Kernel slab memory in bytes, machine-wide: where sockets, their inodes, files and
/// epoll registrations live (on loopback, both ends of every connection).
pub fn slab_bytes() -> Option<u64> {
    parse_meminfo_slab(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn meminfo_slab_is_read_in_kibibytes() {
        let m = "MemTotal:       24000000 kB\nSlab:             179692 kB\nSReclaimable:      50000 kB\n";
        assert_eq!(super::parse_meminfo_slab(m), Some(179692 * 1024));
    }

    use super::*;

    #[test]
    fn vmrss_is_read_in_kibibytes() {
        let status = "Name:\twspush\nVmPeak:\t  9000 kB\nVmRSS:\t    4321 kB\nThreads:\t3\n";
        assert_eq!(parse_vmrss(status), Some(4321 * 1024));
    }

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        let stat = "1234 (ws push (x)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(325));
    }

    #[test]
    fn schedstat_cpu_time_is_the_first_field_in_nanoseconds() {
        assert_eq!(
            parse_schedstat_ns("1234567890 55 17\n"),
            Some(1_234_567_890)
        );
        assert_eq!(parse_schedstat_ns(""), None);
    }

    #[test]
    fn own_process_cpu_time_is_readable_and_does_not_go_backwards() {
        let pid = std::process::id();
        let a = process_cpu_seconds(pid);
        let b = process_cpu_seconds(pid);
        assert!(
            matches!((a, b), (Some(a), Some(b)) if b >= a),
            "{a:?} -> {b:?}"
        );
    }

    #[test]
    fn sockstat_tcp_mem_is_the_value_after_mem() {
        let s =
            "sockets: used 300\nTCP: inuse 12 orphan 0 tw 3 alloc 20 mem 7\nUDP: inuse 1 mem 2\n";
        assert_eq!(parse_sockstat_tcp_mem(s), Some(7));
    }

    #[test]
    fn monotonic_clock_does_not_go_backwards() {
        let a = mono_ns();
        let b = mono_ns();
        assert!(b >= a);
    }
}
