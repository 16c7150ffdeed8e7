//! The measurements of one run and the markdown table they print as.

use std::fmt::Write as _;

use crate::run::{Options, RSS_SAMPLE_EVERY};

/// The measurements of one run, for the table.
#[derive(Debug, Default)]
pub struct Results {
    pub fanout: Option<Fanout>,
    pub fast: Option<FastLane>,
    pub memory: Option<Memory>,
}

#[derive(Debug)]
pub struct Fanout {
    pub hits: u64,
    /// Partition tasks of the fleet's job (0: under the split limit, not split).
    pub tasks: usize,
    /// Partition queries of the baseline.
    pub groups: usize,
    pub fleet_secs: f64,
    pub fleet_messages: u64,
    pub fleet_delivered: u64,
    pub partition_scan_secs: f64,
    pub partition_scan_ids: u64,
    pub histogram_secs: f64,
    pub unsplit_secs: f64,
    pub unsplit_ids: u64,
    pub unsplit_capped: bool,
    /// VmHWM of the dispatcher + partition subprocess after the fan-out.
    pub worker_hwm_kib: u64,
}

#[derive(Debug)]
pub struct FastLane {
    pub requests: u64,
    pub fleet_secs: f64,
    pub fleet_messages: u64,
    pub relay_secs: f64,
    pub prefetch: u16,
}

#[derive(Debug)]
pub struct Memory {
    pub idle_kib: u64,
    pub small_ids: u64,
    pub small_secs: f64,
    pub small_peak_kib: u64,
    pub small_hwm_kib: u64,
    pub large_ids: u64,
    pub large_secs: f64,
    pub large_peak_kib: u64,
    pub large_hwm_kib: u64,
}

pub fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// `12345` → `12,345`.
pub fn thousands(v: f64) -> String {
    let s = format!("{:.0}", v);
    let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    format!("{sign}{out}")
}

/// KiB as MiB with one decimal.
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

pub fn machine_description() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = read_meminfo_kib("MemTotal").unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().map(str::to_string))
        .unwrap_or_default();
    format!(
        "Machine: {cores} cores ({cpu}), {:.0} GiB RAM, load average {load} at start.",
        mem as f64 / 1024.0 / 1024.0
    )
}

fn read_meminfo_kib(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

pub fn report(r: &Results, opts: &Options, machine: &str, command_line: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "\n## fleet-bench\n");
    let _ = writeln!(s, "Command: `{command_line}`  ");
    let _ = writeln!(s, "{machine}\n");
    let _ = writeln!(s, "| measure | fleet | baseline | ratio |");
    let _ = writeln!(s, "| --- | ---: | ---: | ---: |");
    if let Some(f) = &r.fanout {
        let fleet = rate(f.hits, f.fleet_secs);
        let parts = rate(f.partition_scan_ids, f.partition_scan_secs);
        let unsplit = rate(f.unsplit_ids, f.unsplit_secs);
        let _ = writeln!(
            s,
            "| (a) fan-out, ids/s to the outbound queue ({} ids, {}) vs summed raw scans of the partition queries | {} | {} | {:.2}× |",
            thousands(f.hits as f64),
            if f.tasks == 0 {
                "not split: under the split limit".to_string()
            } else {
                format!("{} partition tasks", f.tasks)
            },
            thousands(fleet),
            thousands(parts),
            fleet / parts.max(f64::MIN_POSITIVE)
        );
        let unsplit_label = if f.unsplit_capped {
            format!(
                "raw unsplit `search_after` scan, rate over its first {} ids (stopped early by --unsplit-limit/--unsplit-max-secs)",
                thousands(f.unsplit_ids as f64)
            )
        } else {
            "raw unsplit `search_after` scan".to_string()
        };
        let _ = writeln!(
            s,
            "| (a) fan-out, ids/s vs {unsplit_label} | {} | {} | {:.2}× |",
            thousands(fleet),
            thousands(unsplit),
            fleet / unsplit.max(f64::MIN_POSITIVE)
        );
    }
    if let Some(f) = &r.fast {
        let fleet = rate(f.requests, f.fleet_secs);
        let relay = rate(f.requests, f.relay_secs);
        let _ = writeln!(
            s,
            "| (b) fast lane, single-content requests/s end to end ({} requests) vs raw consume-and-republish relay (confirm, then ack; prefetch {}) | {} | {} | {:.2}× |",
            thousands(f.requests as f64),
            f.prefetch,
            thousands(fleet),
            thousands(relay),
            fleet / relay.max(f64::MIN_POSITIVE)
        );
    }
    if let Some(m) = &r.memory {
        let _ = writeln!(
            s,
            "| (c) partition worker peak RSS streaming {} ids vs streaming {} ids | {} | {} | {:.2}× |",
            thousands(m.large_ids as f64),
            thousands(m.small_ids as f64),
            mib(m.large_peak_kib),
            mib(m.small_peak_kib),
            m.large_peak_kib as f64 / (m.small_peak_kib.max(1)) as f64
        );
    }
    let _ = writeln!(s);
    if let Some(f) = &r.fanout {
        let _ = writeln!(
            s,
            "- fan-out: {} distinct ids ({} delivered in {} outbound messages) {:.2} s after the request was published; \
             the raw partition scans took {:.2} s summed ({} queries, histogram {:.2} s not included), \
             the unsplit scan {:.2} s for {} ids; the dispatcher + partition process peaked at {} (VmHWM, \
             all partition tasks at once).",
            thousands(f.hits as f64),
            thousands(f.fleet_delivered as f64),
            f.fleet_messages,
            f.fleet_secs,
            f.partition_scan_secs,
            f.groups,
            f.histogram_secs,
            f.unsplit_secs,
            thousands(f.unsplit_ids as f64),
            mib(f.worker_hwm_kib)
        );
    }
    if let Some(f) = &r.fast {
        let _ = writeln!(
            s,
            "- fast lane: {} requests → {} ids in {} outbound messages in {:.2} s; the relay moved {} messages in {:.2} s.",
            thousands(f.requests as f64),
            thousands(f.requests as f64),
            f.fleet_messages,
            f.fleet_secs,
            thousands(f.requests as f64),
            f.relay_secs
        );
    }
    if let Some(m) = &r.memory {
        let _ = writeln!(
            s,
            "- memory: idle {}; small task {} ids in {:.2} s, peak {} (VmHWM {}); large task {} ids in {:.2} s, peak {} (VmHWM {}); sampled every {} ms.",
            mib(m.idle_kib),
            thousands(m.small_ids as f64),
            m.small_secs,
            mib(m.small_peak_kib),
            mib(m.small_hwm_kib),
            thousands(m.large_ids as f64),
            m.large_secs,
            mib(m.large_peak_kib),
            mib(m.large_hwm_kib),
            RSS_SAMPLE_EVERY.as_millis()
        );
    }
    let _ = writeln!(
        s,
        "- settings: split limit {}, {} documents{}.",
        opts.split_limit,
        thousands(opts.docs as f64),
        if opts.search_url.is_some() {
            " (external cluster)"
        } else {
            ""
        }
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1234.0), "1,234");
        assert_eq!(thousands(1234567.0), "1,234,567");
        assert_eq!(thousands(-1234.0), "-1,234");
    }
}
