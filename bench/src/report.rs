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
    pub latency: Option<Latency>,
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

/// The fast lane's drain and its baselines, one rate per round.
#[derive(Debug)]
pub struct FastLane {
    pub requests: u64,
    pub prefetch: u16,
    /// Requests/s of the dispatcher draining the pre-filled lane.
    pub fleet: Vec<f64>,
    /// Outbound messages of the last fleet round.
    pub fleet_messages: u64,
    /// Messages/s of the pipelined relay.
    pub relay: Vec<f64>,
    /// Messages/s of consume-and-ack.
    pub ceiling: Vec<f64>,
    /// The dispatcher's peak RSS while its prefetch was full.
    pub dispatcher_peak_kib: u64,
}

/// The best of a measurement's rounds.
pub fn best(rates: &[f64]) -> f64 {
    rates.iter().copied().fold(0.0, f64::max)
}

fn rounds(rates: &[f64]) -> String {
    rates
        .iter()
        .map(|r| thousands(*r))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// One size of the partition worker's memory measurement.
#[derive(Debug, Clone, Copy)]
pub struct MemoryPhase {
    pub ids: u64,
    pub tasks: usize,
    pub secs: f64,
    pub peak_kib: u64,
    pub hwm_kib: u64,
}

#[derive(Debug)]
pub struct Memory {
    pub idle_kib: u64,
    pub small: MemoryPhase,
    pub large: MemoryPhase,
}

/// The kinds of fast-lane request the latency part offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Single,
    Search,
}

impl std::fmt::Display for RequestKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RequestKind::Single => "single-id",
            RequestKind::Search => "search (listings.id)",
        })
    }
}

/// What else the fleet is doing while the fast lane is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    Alone,
    BulkSaturated,
}

impl std::fmt::Display for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Load::Alone => "alone",
            Load::BulkSaturated => "bulk lane saturated",
        })
    }
}

#[derive(Debug, Clone)]
pub struct LatencyRow {
    pub kind: RequestKind,
    pub load: Load,
    pub percent: u32,
    /// Offered requests/s.
    pub rate: f64,
    pub requests: u64,
    /// Requests whose id never reached the outbound queue (within 60 s of
    /// the last new one).
    pub lost: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The broker's publish-confirm round trip meanwhile (a probe).
    pub probe_p50_ms: f64,
    pub probe_p99_ms: f64,
    /// The bucket bound of the fleet's p99 from a fast-lane delivery to its
    /// ack (`fleet_message_handling_seconds`); `None` when it handled none.
    pub in_fleet_p99_ms: Option<f64>,
}

/// A histogram bucket bound in milliseconds, as "≤"'s right side.
pub fn bound_ms(ms: Option<f64>) -> String {
    match ms {
        Some(ms) if ms.is_finite() => format!("{ms:.0} ms"),
        Some(_) => "past the largest bucket".into(),
        None => "n/a".into(),
    }
}

#[derive(Debug)]
pub struct Latency {
    pub rows: Vec<LatencyRow>,
    /// The measured maximum of each kind, requests/s.
    pub maxima: Vec<(RequestKind, f64)>,
    pub bulk: crate::latency::BulkLoad,
    pub fleet_peak_kib: u64,
    /// Seconds of offered load per row.
    pub secs: u64,
    /// Documents of the search kind's index.
    pub search_docs: u64,
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
        let fleet = best(&f.fleet);
        let relay = best(&f.relay);
        let ceiling = best(&f.ceiling);
        let _ = writeln!(
            s,
            "| (b) fast lane, single-content requests/s draining {} pre-filled requests (prefetch {}) vs pipelined relay (batched confirms, `multiple` acks) of the same bodies, msg/s | {} | {} | {:.2}× |",
            thousands(f.requests as f64),
            f.prefetch,
            thousands(fleet),
            thousands(relay),
            fleet / relay.max(f64::MIN_POSITIVE)
        );
        let _ = writeln!(
            s,
            "| (b) fast lane vs the broker's consume-and-ack ceiling (same queue size and prefetch, `multiple` acks), msg/s | {} | {} | {:.2}× |",
            thousands(fleet),
            thousands(ceiling),
            fleet / ceiling.max(f64::MIN_POSITIVE)
        );
    }
    if let Some(m) = &r.memory {
        let _ = writeln!(
            s,
            "| (c) partition worker peak RSS streaming {} ids ({} tasks) vs streaming {} ids | {} | {} | {:.2}× |",
            thousands(m.large.ids as f64),
            m.large.tasks,
            thousands(m.small.ids as f64),
            mib(m.large.peak_kib),
            mib(m.small.peak_kib),
            m.large.peak_kib as f64 / (m.small.peak_kib.max(1)) as f64
        );
    }
    if let Some(l) = &r.latency {
        for row in l.rows.iter().filter(|r| r.percent == 50) {
            let alone = l
                .rows
                .iter()
                .find(|a| a.kind == row.kind && a.percent == 50 && a.load == Load::Alone);
            if row.load == Load::Alone {
                continue;
            }
            if let Some(alone) = alone {
                let _ = writeln!(
                    s,
                    "| (d) fast-lane p99 latency, {} requests at 50 % of their maximum ({} /s), bulk lane saturated vs alone | {:.1} ms | {:.1} ms | {:.2}× |",
                    row.kind,
                    thousands(row.rate),
                    row.p99_ms,
                    alone.p99_ms,
                    row.p99_ms / alone.p99_ms.max(f64::MIN_POSITIVE)
                );
            }
        }
    }
    let _ = writeln!(s);
    if let Some(f) = &r.fanout {
        fanout_details(&mut s, f);
    }
    if let Some(f) = &r.fast {
        let _ = writeln!(
            s,
            "- fast lane, rounds (best counts): dispatcher {} requests/s ({} outbound messages for {} requests in the last round), \
             pipelined relay {} msg/s, consume-and-ack {} msg/s; rates run from the first output to the last.",
            rounds(&f.fleet),
            f.fleet_messages,
            thousands(f.requests as f64),
            rounds(&f.relay),
            rounds(&f.ceiling),
        );
    }
    if let Some(m) = &r.memory {
        let _ = writeln!(
            s,
            "- memory: partition worker idle {}; {} ids in {:.1} s, peak {} (VmHWM {}); {} ids in {} tasks one after another in {:.1} s, peak {} (VmHWM {}); RSS sampled every {} ms, a peak is the larger of the samples' and the process's high-water mark (VmHWM, which a sample can miss no spike of).",
            mib(m.idle_kib),
            thousands(m.small.ids as f64),
            m.small.secs,
            mib(m.small.peak_kib),
            mib(m.small.hwm_kib),
            thousands(m.large.ids as f64),
            m.large.tasks,
            m.large.secs,
            mib(m.large.peak_kib),
            mib(m.large.hwm_kib),
            RSS_SAMPLE_EVERY.as_millis()
        );
    }
    if let Some(kib) = r.fast.as_ref().map(|f| f.dispatcher_peak_kib) {
        let _ = writeln!(
            s,
            "- memory: `fleet run dispatcher` peak {} draining the fast lane (its prefetch full of single-content requests).",
            mib(kib)
        );
    }
    if let Some(l) = &r.latency {
        let _ = writeln!(
            s,
            "- memory: `fleet run --all` peak {} over the latency part (fast lane at up to 80 % of its maximum beside {} in-place bulk requests and {} split requests).",
            mib(l.fleet_peak_kib),
            thousands(l.bulk.in_place as f64),
            l.bulk.split
        );
        latency_details(&mut s, l);
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

/// The latency part's table.
fn latency_details(s: &mut String, l: &Latency) {
    let maxima = l
        .maxima
        .iter()
        .map(|(k, m)| format!("{k} {} requests/s", thousands(*m)))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        s,
        "\nFast-lane latency (one `fleet run --all`; from when a request was due to be published to its id in the \
         outbound queue; {} s of offered load per row; measured maxima: {maxima}; search requests over a {}-document index; \
         \"in the fleet\" is the fleet's own `fleet_message_handling_seconds` of the fast lane, from a delivery to its ack, \
         as the bound of the histogram bucket that holds its p99 — the rest of a request's latency was spent before \
         its delivery (in the producer's connection and the queue) or after the outbound publish):\n",
        l.secs,
        thousands(l.search_docs as f64)
    );
    let _ = writeln!(
        s,
        "| requests | load | offered | requests/s | requests sent | p50 | p99 | max | never arrived | in the fleet p99 | broker confirm p50 / p99 |"
    );
    let _ = writeln!(
        s,
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for r in &l.rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} % | {} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {} | ≤ {} | {:.1} / {:.1} ms |",
            r.kind,
            r.load,
            r.percent,
            thousands(r.rate),
            thousands(r.requests as f64),
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            r.lost,
            bound_ms(r.in_fleet_p99_ms),
            r.probe_p50_ms,
            r.probe_p99_ms
        );
    }
    let _ = writeln!(s);
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
         \"Limit\" and \"in flight\" are the worker's `fleet_search_concurrency_limit` and `fleet_search_in_flight` (`limiter=\"shared\"`), \
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
