//! The measurements of one run and the markdown table they print as.

use std::fmt::Write as _;

use fleet_shared::search::limiter::Bounds;

use crate::metrics::LimitSeen;
use crate::run::{Concurrency, Options, RSS_SAMPLE_EVERY};

/// The measurements of one run, for the table.
#[derive(Debug, Default)]
pub struct Results {
    pub fanout: Option<Fanout>,
    pub fast: Option<FastLane>,
    pub memory: Option<Memory>,
}

#[derive(Debug)]
pub struct Fanout {
    /// Documents the request matches.
    pub hits: u64,
    /// Partition queries of the baseline.
    pub groups: usize,
    /// `amqp.prefetch_by_worker.partition` of the measured workers.
    pub partition_prefetch: u16,
    /// The adaptive limit's bounds.
    pub adaptive: Bounds,
    /// One fleet run per search concurrency setting, in the order run.
    pub runs: Vec<FleetRun>,
    pub partition_scan_secs: f64,
    pub partition_scan_ids: u64,
    pub histogram_secs: f64,
    pub unsplit_secs: f64,
    pub unsplit_ids: u64,
    pub unsplit_capped: bool,
}

impl Fanout {
    /// The run of the default configuration (adaptive), else the first.
    pub fn main_run(&self) -> Option<&FleetRun> {
        self.runs
            .iter()
            .find(|r| r.setting == Concurrency::Adaptive)
            .or(self.runs.first())
    }

    /// The fastest finished run at a fixed limit.
    pub fn best_fixed(&self) -> Option<&FleetRun> {
        self.runs
            .iter()
            .filter(|r| r.stalled.is_none() && matches!(r.setting, Concurrency::Fixed(_)))
            .max_by(|a, b| a.rate().total_cmp(&b.rate()))
    }
}

/// One fan-out through the fleet at one search concurrency setting.
#[derive(Debug)]
pub struct FleetRun {
    pub setting: Concurrency,
    /// Why it did not deliver every id (it stalled).
    pub stalled: Option<String>,
    pub distinct: u64,
    /// Publish → last new id.
    pub secs: f64,
    pub messages: u64,
    pub delivered: u64,
    /// VmHWM of the dispatcher + partition subprocess after the run.
    pub worker_hwm_kib: u64,
    pub limit: LimitSeen,
    pub health: Health,
}

impl FleetRun {
    pub fn rate(&self) -> f64 {
        rate(self.distinct, self.secs)
    }

    /// One line for the progress output.
    pub fn summary(&self) -> String {
        let h = &self.health;
        format!(
            "{}: {} distinct ids ({} delivered in {} messages, {} partition tasks) in {:.2} s ({} ids/s); \
             search limit {} (most in flight {}); {}; worker VmHWM {}.",
            match &self.stalled {
                Some(why) => format!("DID NOT FINISH ({why})"),
                None => "done".into(),
            },
            thousands(self.distinct as f64),
            thousands(self.delivered as f64),
            self.messages,
            h.tasks,
            self.secs,
            thousands(self.rate()),
            self.limit_text(),
            self.limit.in_flight_max,
            h.text(),
            mib(self.worker_hwm_kib)
        )
    }

    fn limit_text(&self) -> String {
        let l = &self.limit;
        if l.samples == 0 {
            "not sampled".into()
        } else if l.min == l.max {
            format!("{}", l.min)
        } else {
            format!("{}–{} (mean {:.1})", l.min, l.max, l.mean())
        }
    }
}

/// Signs of transient failure in one fleet run.
#[derive(Debug, Default)]
pub struct Health {
    /// The job's state at the end (`completed` when every task was done).
    pub job_state: String,
    pub tasks: usize,
    pub tasks_not_done: usize,
    /// Task starts summed (= `tasks` when no task was started twice).
    pub task_starts: i64,
    /// `fleet_messages_total` with an outcome other than `done` (retried,
    /// parked, dead-lettered, returned, rejected).
    pub not_done_messages: f64,
    pub search_errors: f64,
    pub backoffs: f64,
    /// Messages in the retry, parked and dead-letter queues after the run.
    pub failure_queue_messages: u32,
    /// WARN and ERROR lines in the worker's log.
    pub warnings: usize,
    pub first_warning: Option<String>,
}

impl Health {
    pub fn clean(&self) -> bool {
        self.job_state == "completed"
            && self.tasks_not_done == 0
            && self.task_starts == self.tasks as i64
            && self.not_done_messages == 0.0
            && self.search_errors == 0.0
            && self.backoffs == 0.0
            && self.failure_queue_messages == 0
            && self.warnings == 0
    }

    pub fn text(&self) -> String {
        if self.clean() {
            return "no transient failure (job completed, every task started once, no search \
                    error or back-off, retry/parked/dead-letter queues empty, no WARN or ERROR in \
                    the worker log)"
                .into();
        }
        let mut s = format!(
            "job {}, {} of {} tasks not done, {} task starts, {} messages not done, \
             {} search errors, {} back-offs, {} messages in retry/parked/dead-letter queues, \
             {} WARN/ERROR log lines",
            self.job_state,
            self.tasks_not_done,
            self.tasks,
            self.task_starts,
            self.not_done_messages,
            self.search_errors,
            self.backoffs,
            self.failure_queue_messages,
            self.warnings
        );
        if let Some(w) = &self.first_warning {
            let w: String = w.chars().take(300).collect();
            let _ = write!(s, " (first: {w})");
        }
        s
    }
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
    if let Some(run) = r.fanout.as_ref().and_then(|f| f.main_run().map(|m| (f, m))) {
        let (f, m) = run;
        let fleet = m.rate();
        let parts = rate(f.partition_scan_ids, f.partition_scan_secs);
        let unsplit = rate(f.unsplit_ids, f.unsplit_secs);
        let what = format!(
            "{} ids, {} partition tasks, search concurrency {}{}",
            thousands(f.hits as f64),
            m.health.tasks,
            m.setting,
            if m.stalled.is_some() {
                ", DID NOT FINISH"
            } else {
                ""
            }
        );
        let _ = writeln!(
            s,
            "| (a) fan-out, ids/s to the outbound queue ({what}) vs summed raw scans of the partition queries | {} | {} | {:.2}× |",
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
        if let (Some(a), Some(best)) = (
            f.runs.iter().find(|r| r.setting == Concurrency::Adaptive),
            f.best_fixed(),
        ) {
            let _ = writeln!(
                s,
                "| (a) fan-out, ids/s with the adaptive search limit vs the best fixed limit ({}) | {} | {} | {:.2}× |",
                best.setting,
                thousands(a.rate()),
                thousands(best.rate()),
                a.rate() / best.rate().max(f64::MIN_POSITIVE)
            );
        }
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
        fanout_details(&mut s, f);
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

/// The fan-out's runs by search concurrency, and what the baselines took.
fn fanout_details(s: &mut String, f: &Fanout) {
    let b = f.adaptive;
    let _ = writeln!(
        s,
        "- fan-out baselines: the raw partition scans took {:.2} s summed ({} ids, {} queries one after the other, \
         histogram {:.2} s not included), the unsplit scan {:.2} s for {} ids.",
        f.partition_scan_secs,
        thousands(f.partition_scan_ids as f64),
        f.groups,
        f.histogram_secs,
        f.unsplit_secs,
        thousands(f.unsplit_ids as f64),
    );
    let _ = writeln!(
        s,
        "\nFan-out by search concurrency: one `fleet run dispatcher partition` subprocess per row, in this order, \
         the same request over the same index; partition prefetch {} (at most that many tasks at once per process); \
         adaptive = `search.concurrency_min/initial/max` {}/{}/{}, slow after {:?}. \
         \"Limit\" and \"in flight\" are the worker's `fleet_search_concurrency_limit` and `fleet_search_in_flight`, \
         sampled every {} ms.\n",
        f.partition_prefetch,
        b.min,
        b.initial,
        b.max,
        b.slow_after,
        crate::metrics::SAMPLE_EVERY.as_millis()
    );
    let _ = writeln!(
        s,
        "| search concurrency | ids/s | × best fixed | limit | most in flight | time | transient failures |"
    );
    let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: | ---: | --- |");
    let best = f.best_fixed().map(FleetRun::rate);
    for run in &f.runs {
        let h = &run.health;
        let failures = if h.clean() {
            "none".to_string()
        } else {
            format!(
                "{} task starts for {} tasks, {} not done; {} messages not done; {} search errors, {} back-offs; {} in retry/parked/DLQ; {} WARN/ERROR lines",
                h.task_starts,
                h.tasks,
                h.tasks_not_done,
                h.not_done_messages,
                h.search_errors,
                h.backoffs,
                h.failure_queue_messages,
                h.warnings
            )
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.1} s | {} |",
            run.setting,
            if run.stalled.is_some() {
                format!("did not finish ({} ids)", thousands(run.distinct as f64))
            } else {
                thousands(run.rate())
            },
            match best {
                Some(best) if run.stalled.is_none() => format!("{:.2}×", run.rate() / best),
                _ => "–".into(),
            },
            run.limit_text(),
            run.limit.in_flight_max,
            run.secs,
            failures
        );
    }
    let _ = writeln!(s);
    if let (Some(a), Some(best)) = (
        f.runs.iter().find(|r| r.setting == Concurrency::Adaptive),
        f.best_fixed(),
    ) {
        let ratio = a.rate() / best.rate().max(f64::MIN_POSITIVE);
        let _ = writeln!(
            s,
            "- adaptive vs the best fixed limit ({}): {:.2}× — target ≥ 0.9×: {}.",
            best.setting,
            ratio,
            if a.stalled.is_none() && ratio >= 0.9 {
                "met"
            } else {
                "NOT met"
            }
        );
    }
    let unclean: Vec<String> = f
        .runs
        .iter()
        .filter(|r| !r.health.clean() || r.stalled.is_some())
        .map(|r| format!("{}: {}", r.setting, r.health.text()))
        .collect();
    if unclean.is_empty() {
        let _ = writeln!(
            s,
            "- transient failures: none in any fan-out run (each job completed with every task started once, \
             no search error or back-off, the retry, parked and dead-letter queues empty, no WARN or ERROR \
             line in the worker logs)."
        );
    } else {
        let _ = writeln!(s, "- transient failures: {}.", unclean.join("; "));
    }
    let hwm = f.runs.iter().map(|r| r.worker_hwm_kib).max().unwrap_or(0);
    let _ = writeln!(
        s,
        "- the dispatcher + partition process peaked at {} (VmHWM, largest of the runs).",
        mib(hwm)
    );
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
