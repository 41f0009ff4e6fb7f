//! Measurement plumbing: a lock-free latency histogram, the publisher's send log (so viewers in
//! the same process measure publish-to-receive latency on one clock), and /proc readings of a
//! server process (CPU seconds, resident memory).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Log-linear histogram of microsecond values: 16 sub-buckets per power of two (about 6%
/// precision), shared by every viewer task without locks.
pub struct Histogram {
    buckets: Vec<AtomicU64>,
    max: AtomicU64,
    count: AtomicU64,
}

const SUB: u64 = 16;

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: (0..64 * SUB).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

fn bucket_of(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros() as u64; // >= 4
    let mantissa = (v >> (exp - 4)) & (SUB - 1);
    ((exp - 3) * SUB + mantissa) as usize
}

fn bucket_floor(b: usize) -> u64 {
    let b = b as u64;
    if b < SUB {
        return b;
    }
    let exp = b / SUB + 3;
    let mantissa = b % SUB;
    (SUB + mantissa) << (exp - 4)
}

impl Histogram {
    pub fn record(&self, v: u64) {
        let b = bucket_of(v).min(self.buckets.len() - 1);
        self.buckets[b].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(v, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }

    /// The value below which a fraction `q` of samples fall (bucket floor).
    pub fn quantile(&self, q: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        let target = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= target {
                return bucket_floor(i).min(self.max());
            }
        }
        self.max()
    }

    pub fn reset(&self) {
        for b in &self.buckets {
            b.store(0, Ordering::Relaxed);
        }
        self.max.store(0, Ordering::Relaxed);
        self.count.store(0, Ordering::Relaxed);
    }
}

/// When the publisher sent each timestamp: 65 536 slots indexed by timestamp, each holding
/// the timestamp (to detect overwrites) and the send time in microseconds since the bench
/// started.
pub struct SendLog {
    slots: Vec<AtomicU64>,
    epoch: Instant,
}

impl SendLog {
    pub fn new(epoch: Instant) -> Self {
        Self {
            slots: (0..65_536).map(|_| AtomicU64::new(u64::MAX)).collect(),
            epoch,
        }
    }

    pub fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    pub fn sent(&self, timestamp: u32) {
        let value = (u64::from(timestamp) << 32) | (self.now_us() & 0xffff_ffff);
        self.slots[timestamp as usize & 0xffff].store(value, Ordering::Relaxed);
    }

    /// Microseconds since the message with `timestamp` was sent, if it is still in the log.
    pub fn age_us(&self, timestamp: u32) -> Option<u64> {
        let value = self.slots[timestamp as usize & 0xffff].load(Ordering::Relaxed);
        if value == u64::MAX || (value >> 32) as u32 != timestamp {
            return None;
        }
        let sent = value & 0xffff_ffff;
        let now = self.now_us() & 0xffff_ffff;
        Some(now.wrapping_sub(sent) & 0xffff_ffff)
    }
}

/// CPU seconds (user + system) a process has used, from /proc.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

fn clock_ticks() -> f64 {
    // CLK_TCK is 100 on every Linux this runs on; getconf would need a process per call.
    100.0
}

/// Resident memory of a process, in kilobytes.
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Threads of a process and the CPU seconds of each, to see how work spreads over cores.
pub fn thread_cpu_seconds(pid: u32) -> Vec<f64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|tid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
            let rest = &stat[stat.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            let u: f64 = f.get(11)?.parse().ok()?;
            let s: f64 = f.get(12)?.parse().ok()?;
            Some((u + s) / clock_ticks())
        })
        .collect()
}

/// Machine-wide idle and softirq seconds from /proc/stat, across all cores, and the number of
/// cores. Busy time over a window is `wall × cores − idle`: the kernel measures idle time
/// exactly, while its busy categories are sampled per tick. Softirq time (most of the kernel's
/// loopback TCP work) is reported apart.
pub fn machine_idle_seconds() -> Option<(f64, f64, usize)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let cores = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .count();
    Some((
        (v.get(3)? + v.get(4)?) / clock_ticks(),
        v.get(6)? / clock_ticks(),
        cores.max(1),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_close() {
        let h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v);
        }
        let p50 = h.quantile(0.5) as f64;
        let p99 = h.quantile(0.99) as f64;
        assert!((p50 - 5000.0).abs() / 5000.0 < 0.07, "{p50}");
        assert!((p99 - 9900.0).abs() / 9900.0 < 0.07, "{p99}");
        assert_eq!(h.max(), 10_000);
        for v in [0u64, 1, 15, 16, 17, 1000, 1 << 40] {
            assert!(bucket_floor(bucket_of(v)) <= v);
        }
    }

    #[test]
    fn send_log_matches_timestamps() {
        let log = SendLog::new(Instant::now());
        log.sent(1234);
        assert!(log.age_us(1234).unwrap() < 1_000_000);
        assert!(log.age_us(1235).is_none());
        log.sent(1234 + 65_536);
        assert!(log.age_us(1234).is_none(), "overwritten");
    }
}
