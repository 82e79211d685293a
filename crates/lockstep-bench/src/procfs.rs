//! What `/proc` says about a process: CPU seconds (utime + stime, all
//! threads) and resident memory, plus a sampler that keeps the peak RSS.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

fn ticks_per_second() -> f64 {
    rustix::param::clock_ticks_per_second() as f64
}

/// utime + stime of process `pid` in seconds (`None` when it is gone).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_cpu_seconds(&stat)
}

fn stat_cpu_seconds(stat: &str) -> Option<f64> {
    stat_user_sys(stat).map(|(u, s)| u + s)
}

/// (utime, stime) in seconds from a `/proc/PID/stat` line.
fn stat_user_sys(stat: &str) -> Option<(f64, f64)> {
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state(0) ppid(1) … utime(11) stime(12).
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let t = ticks_per_second();
    Some((utime as f64 / t, stime as f64 / t))
}

/// User and system CPU seconds of process `pid`.
pub fn user_sys_seconds(pid: u32) -> Option<(f64, f64)> {
    stat_user_sys(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// A `kB` field of `/proc/PID/status` (VmRSS, VmHWM, …).
pub fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix(':')?;
        v.split_whitespace().next()?.parse().ok()
    })
}

/// Current resident set of `pid`, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS")
}

/// CPU seconds of each of `pids` (0 for the ones that are gone).
pub fn cpu_of(pids: &[u32]) -> std::collections::HashMap<u32, f64> {
    pids.iter()
        .map(|&p| (p, cpu_seconds(p).unwrap_or(0.0)))
        .collect()
}

/// CPU seconds of this process.
pub fn self_cpu_seconds() -> f64 {
    cpu_seconds(std::process::id()).unwrap_or(0.0)
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> [f64; 3] {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = s.split_whitespace().map(|x| x.parse().unwrap_or(0.0));
    [
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
    ]
}

/// MemTotal, MiB.
pub fn mem_total_mib() -> u64 {
    let s = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    s.lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0)
        / 1024
}

/// Samples the summed RSS of some processes (a cluster's instances) every
/// 100 ms and keeps the maximum.
pub struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// The summed RSS of `pids`, KiB; `None` once any of them is gone.
pub fn rss_sum_kib(pids: &[u32]) -> Option<u64> {
    pids.iter().map(|&p| rss_kib(p)).sum()
}

impl RssSampler {
    pub fn start(pids: Vec<u32>) -> Self {
        let peak = Arc::new(AtomicU64::new(rss_sum_kib(&pids).unwrap_or(0)));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while !s.load(Ordering::Relaxed) {
                tick.tick().await;
                match rss_sum_kib(&pids) {
                    Some(v) => {
                        p.fetch_max(v, Ordering::Relaxed);
                    }
                    None => break,
                }
            }
        });
        Self { peak, stop, task }
    }

    /// Stops sampling; returns the peak seen, KiB.
    pub async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.peak.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_with_a_tricky_name() {
        let t = ticks_per_second();
        let line = format!(
            "42 (a) b) S 1 42 42 0 -1 4194560 100 0 0 0 {} {} 0 0 20 0 1 0",
            3.0 * t,
            1.0 * t
        );
        assert_eq!(stat_cpu_seconds(&line), Some(4.0));
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(cpu_seconds(me).is_some());
        assert!(rss_kib(me).unwrap() > 0);
        assert!(status_kib(me, "VmHWM").unwrap() >= rss_kib(me).unwrap() / 2);
    }
}
