//! The process's own metrics, read from `/proc` when `/metrics` is scraped (Linux; on
//! other systems these families are left out). Names follow the Prometheus client
//! libraries' `process_*` conventions, so existing dashboards find them.

use super::exposition::single;

/// `/proc` reports CPU time in USER_HZ ticks, fixed at 100 per second by the kernel ABI.
const TICKS_PER_SECOND: f64 = 100.0;

pub fn render(o: &mut String) {
    if let Some(stat) = read("/proc/self/stat").as_deref().and_then(Stat::parse) {
        single(
            o,
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent, seconds.",
            (stat.utime + stat.stime) as f64 / TICKS_PER_SECOND,
        );
        single(
            o,
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size, bytes.",
            stat.vsize,
        );
        if let Some(boot) = boot_time() {
            single(
                o,
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since the Unix epoch, seconds.",
                boot + stat.start_ticks as f64 / TICKS_PER_SECOND,
            );
        }
    }
    if let Some(rss) = read("/proc/self/status")
        .as_deref()
        .and_then(resident_bytes)
    {
        single(
            o,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size, bytes.",
            rss,
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        single(
            o,
            "process_open_fds",
            "gauge",
            "Open file descriptors.",
            fds.count(),
        );
    }
    if let Some(max) = read("/proc/self/limits").as_deref().and_then(max_fds) {
        single(
            o,
            "process_max_fds",
            "gauge",
            "The limit on open file descriptors.",
            max,
        );
    }
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

struct Stat {
    utime: u64,
    stime: u64,
    start_ticks: u64,
    vsize: u64,
}

impl Stat {
    /// `/proc/self/stat`: fields after the command name (which may hold spaces and
    /// parentheses, so the split is at the last `)`), proc(5) numbering.
    fn parse(s: &str) -> Option<Stat> {
        let rest = &s[s.rfind(')')? + 1..];
        // rest starts at field 3 (state).
        let f: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        Some(Stat {
            utime: field(14)?,
            stime: field(15)?,
            start_ticks: field(22)?,
            vsize: field(23)?,
        })
    }
}

fn resident_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn max_fds(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn boot_time() -> Option<f64> {
    read("/proc/stat")?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat = "4242 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0 20 0 9 0 777 123456 99 rest";
        let s = Stat::parse(stat).unwrap();
        assert_eq!(
            (s.utime, s.stime, s.start_ticks, s.vsize),
            (250, 150, 777, 123456)
        );
        assert_eq!(
            resident_bytes("Name:\tx\nVmRSS:\t   2048 kB\n"),
            Some(2 * 1024 * 1024)
        );
        let limits = "Limit Soft Hard Units\nMax open files            1024                 524288               files\n";
        assert_eq!(max_fds(limits), Some(1024));
    }

    #[test]
    fn renders_this_process() {
        let mut o = String::new();
        render(&mut o);
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(o.contains(&format!("\n{name} ")), "{name} missing:\n{o}");
        }
    }
}
