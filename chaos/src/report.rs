//! The verdict and the tables.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::time::Duration;

use comfy_table::presets::ASCII_MARKDOWN;
use comfy_table::{Cell, CellAlignment, Table};

use crate::check::Inputs;
use crate::faults::FaultKind;
use crate::load::Path;
use crate::options::Options;

/// One outbound queue's count.
#[derive(Debug, Clone)]
pub struct QueueRow {
    pub queue: String,
    pub path: Option<Path>,
    pub expected: usize,
    /// Expected ids that arrived.
    pub delivered: usize,
    /// Arrivals of an id beyond its first.
    pub duplicates: u64,
    /// Expected ids that never arrived.
    pub lost: usize,
    /// Ids that arrived but were not expected on this queue (invented or misrouted).
    pub unexpected: usize,
}

/// One check of the end state.
#[derive(Debug, Clone)]
pub struct Check {
    pub what: String,
    pub ok: bool,
    pub detail: String,
}

/// The run's outcome.
pub struct Report {
    pub variant: &'static str,
    pub docs: u64,
    pub inputs: Inputs,
    pub queues: Vec<QueueRow>,
    pub checks: Vec<Check>,
    gap: Duration,
    retry_delay: Duration,
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let groups: Vec<&str> = digits
        .as_bytes()
        .rchunks(3)
        .rev()
        // `unwrap`: the digits of a number are ASCII.
        .map(|g| std::str::from_utf8(g).unwrap())
        .collect();
    groups.join(",")
}

impl Report {
    pub fn build(opts: &Options, inputs: Inputs) -> Report {
        let mut queues = Vec::new();
        let mut names: Vec<String> = inputs.expected.queues.keys().cloned().collect();
        for q in inputs.tally.queues.keys() {
            if !inputs.expected.queues.contains_key(q) {
                names.push(q.clone());
            }
        }
        let empty = HashSet::new();
        for q in names {
            let want = inputs.expected.queues.get(&q).unwrap_or(&empty);
            let (delivered, duplicates, unexpected) = match inputs.tally.queues.get(&q) {
                Some(seen) => (
                    want.iter().filter(|id| seen.ids.contains_key(id)).count(),
                    seen.total - seen.ids.len() as u64,
                    seen.ids.keys().filter(|id| !want.contains(id)).count(),
                ),
                None => (0, 0, 0),
            };
            queues.push(QueueRow {
                path: inputs.expected.path_of.get(&q).copied(),
                queue: q,
                expected: want.len(),
                delivered,
                duplicates,
                lost: want.len() - delivered,
                unexpected,
            });
        }
        let checks = checks(&inputs, opts);
        Report {
            variant: opts.variant,
            docs: opts.load.catalogue.docs,
            inputs,
            queues,
            checks,
            gap: opts.timings.gap,
            retry_delay: opts.retry_delay,
        }
    }

    pub fn lost(&self) -> usize {
        self.queues.iter().map(|q| q.lost).sum()
    }

    pub fn unexpected(&self) -> usize {
        self.queues.iter().map(|q| q.unexpected).sum()
    }

    /// Nothing lost, nothing invented, nothing stuck, every fault injected.
    pub fn passed(&self) -> bool {
        self.lost() == 0
            && self.unexpected() == 0
            && self.checks.iter().all(|c| c.ok)
            && self.inputs.faults.iter().all(|f| f.error.is_none())
    }

    fn fault_table(&self) -> Table {
        let mut t = table();
        let mut header = vec!["fault".to_string(), "count".into(), "down (mean)".into()];
        header.extend(Path::ALL.iter().map(|p| format!("recovery: {}", p.short())));
        t.set_header(header);
        let mut kinds: BTreeMap<FaultKind, Vec<&crate::faults::FaultRecord>> = BTreeMap::new();
        for f in &self.inputs.faults {
            kinds.entry(f.kind).or_default().push(f);
        }
        for (kind, records) in kinds {
            let down = records.iter().map(|r| r.down()).sum::<Duration>() / records.len() as u32;
            let mut row = vec![
                Cell::new(kind.label()),
                right(records.len().to_string()),
                right(secs(down)),
            ];
            for path in Path::ALL {
                let worst = records
                    .iter()
                    .filter_map(|r| self.inputs.recovery(r, *path))
                    .max();
                let measured = records
                    .iter()
                    .filter(|r| self.inputs.recovery(r, *path).is_some())
                    .count();
                row.push(right(match worst {
                    Some(d) if measured == records.len() => secs(d),
                    Some(d) => format!("{} ({measured}/{})", secs(d), records.len()),
                    None => "—".into(),
                }));
            }
            t.add_row(row);
        }
        let mut row = vec![Cell::new("(no fault: p50 latency)"), right(""), right("")];
        for path in Path::ALL {
            let l = self.inputs.quiet_latencies(*path);
            row.push(right(match l.get(l.len() / 2) {
                Some(d) => secs(*d),
                None => "—".into(),
            }));
        }
        t.add_row(row);
        t
    }

    fn request_table(&self) -> Table {
        let mut t = table();
        t.set_header(vec![
            "load",
            "requests / events",
            "publish retries",
            "ids expected",
            "delivered",
            "duplicates",
            "lost",
            "unexpected",
        ]);
        let mut total = [0u64; 7];
        for path in Path::ALL {
            let sent: Vec<_> = self
                .inputs
                .sent
                .iter()
                .filter(|s| s.item.path == *path)
                .collect();
            let retries = sent.iter().filter(|s| s.attempts > 1).count() as u64;
            let rows: Vec<&QueueRow> = self
                .queues
                .iter()
                .filter(|q| q.path == Some(*path))
                .collect();
            let sum = |f: fn(&QueueRow) -> u64| rows.iter().map(|r| f(r)).sum::<u64>();
            let v = [
                sent.len() as u64,
                retries,
                sum(|r| r.expected as u64),
                sum(|r| r.delivered as u64),
                sum(|r| r.duplicates),
                sum(|r| r.lost as u64),
                sum(|r| r.unexpected as u64),
            ];
            for (a, b) in total.iter_mut().zip(v) {
                *a += b;
            }
            let mut row = vec![Cell::new(path.label())];
            row.extend(v.iter().map(|n| right(thousands(*n))));
            t.add_row(row);
        }
        for q in self.queues.iter().filter(|q| q.path.is_none()) {
            let mut row = vec![Cell::new(format!("(nothing expected) {}", q.queue))];
            let v = [0, 0, 0, 0, q.duplicates, 0, q.unexpected as u64];
            for (a, b) in total.iter_mut().zip(v) {
                *a += b;
            }
            row.extend(v.iter().map(|n| right(thousands(*n))));
            t.add_row(row);
        }
        let mut row = vec![Cell::new("total")];
        row.extend(total.iter().map(|n| right(thousands(*n))));
        t.add_row(row);
        t
    }

    fn queue_table(&self) -> Table {
        let mut t = table();
        t.set_header(vec![
            "outbound queue",
            "load",
            "expected",
            "delivered",
            "duplicates",
            "lost",
            "unexpected",
        ]);
        for q in &self.queues {
            t.add_row(vec![
                Cell::new(&q.queue),
                Cell::new(q.path.map(|p| p.short()).unwrap_or("—")),
                right(thousands(q.expected as u64)),
                right(thousands(q.delivered as u64)),
                right(thousands(q.duplicates)),
                right(thousands(q.lost as u64)),
                right(thousands(q.unexpected as u64)),
            ]);
        }
        t
    }

    fn occurrence_table(&self) -> Table {
        let mut t = table();
        let mut header = vec![
            "#".to_string(),
            "at".into(),
            "fault".into(),
            "target".into(),
            "down".into(),
        ];
        header.extend(Path::ALL.iter().map(|p| p.short().to_string()));
        header.push("note".into());
        t.set_header(header);
        for (i, f) in self.inputs.faults.iter().enumerate() {
            let mut row = vec![
                right((i + 1).to_string()),
                right(secs(
                    f.started.saturating_duration_since(self.inputs.load_start),
                )),
                Cell::new(f.kind.label()),
                Cell::new(&f.target),
                right(secs(f.down())),
            ];
            for path in Path::ALL {
                row.push(right(
                    self.inputs
                        .recovery(f, *path)
                        .map(secs)
                        .unwrap_or_else(|| "—".into()),
                ));
            }
            let mut note = f.note.clone();
            if let Some(e) = &f.error {
                note = format!("FAILED: {e}");
            }
            row.push(Cell::new(note));
            t.add_row(row);
        }
        t
    }

    fn worker_table(&self) -> Table {
        let mut t = table();
        t.set_header(vec![
            "worker process",
            "starts",
            "exits not caused by the suite",
        ]);
        for s in &self.inputs.slots {
            let notes = if s.exit_notes.is_empty() {
                String::new()
            } else {
                format!(" ({})", s.exit_notes.join("; "))
            };
            t.add_row(vec![
                Cell::new(&s.slot),
                right(s.starts.to_string()),
                Cell::new(format!("{}{notes}", s.unplanned_exits)),
            ]);
        }
        t
    }
}

fn table() -> Table {
    let mut t = Table::new();
    t.load_preset(ASCII_MARKDOWN);
    t
}

fn right(s: impl Into<String>) -> Cell {
    Cell::new(s.into()).set_alignment(CellAlignment::Right)
}

/// The end-state checks.
fn checks(i: &Inputs, opts: &Options) -> Vec<Check> {
    let mut out = Vec::new();
    let mut add = |what: &str, ok: bool, detail: String| {
        out.push(Check {
            what: what.into(),
            ok,
            detail,
        })
    };
    let unconfirmed = i.sent.iter().filter(|s| s.at.is_none()).count();
    add(
        "every message of the load confirmed by the broker",
        unconfirmed == 0,
        format!("{unconfirmed} never confirmed"),
    );
    add(
        "settled within the timeout",
        i.settled,
        format!(
            "{} after the faults (limit {})",
            secs(i.settle_took),
            secs(opts.settle_timeout)
        ),
    );
    let stuck: Vec<String> = i
        .observed
        .depths
        .iter()
        .filter(|(q, n)| *n > 0 && !is_operator_queue(q))
        .map(|(q, n)| format!("{q}: {n}"))
        .collect();
    add(
        "no message left in a lane, partition, retry or source queue (after the workers stopped: nothing unacked)",
        stuck.is_empty(),
        if stuck.is_empty() { "all empty".into() } else { stuck.join(", ") },
    );
    let dead: Vec<String> = i
        .observed
        .depths
        .iter()
        .filter(|(q, n)| *n > 0 && is_operator_queue(q))
        .map(|(q, n)| {
            let sample = i
                .observed
                .samples
                .get(q)
                .map(|s| s.join(", "))
                .unwrap_or_default();
            format!("{q}: {n} [{sample}]")
        })
        .collect();
    add(
        "dead-letter, parking and unroutable queues empty (the load is all valid)",
        dead.is_empty(),
        if dead.is_empty() {
            "all empty".into()
        } else {
            dead.join("; ")
        },
    );
    add(
        "no parked_messages rows",
        i.observed.parked_rows == 0,
        format!("{} rows", i.observed.parked_rows),
    );
    let left: Vec<String> = i
        .observed
        .outbound_left
        .iter()
        .map(|(q, n)| format!("{q}: {n}"))
        .collect();
    add(
        "outbound queues drained by the counter",
        left.is_empty(),
        if left.is_empty() {
            "all empty".into()
        } else {
            left.join(", ")
        },
    );
    let wanted: usize = i
        .sent
        .iter()
        .filter_map(|s| s.item.split.as_ref())
        .map(|(_, keys)| keys.len())
        .sum();
    let mut per_request: BTreeMap<(String, String), usize> = BTreeMap::new();
    for j in &i.observed.jobs {
        *per_request
            .entry((j.request_id.clone(), j.index_key.clone()))
            .or_default() += 1;
    }
    let doubled = per_request.values().filter(|n| **n > 1).count();
    add(
        "one job per split request and index key",
        per_request.len() == wanted && doubled == 0 && i.observed.stray_jobs == 0,
        format!(
            "{} jobs for {wanted} (request, key) pairs; {doubled} pairs with more than one; {} stray",
            i.observed.jobs.len(),
            i.observed.stray_jobs
        ),
    );
    let unfinished: Vec<String> = i
        .observed
        .jobs
        .iter()
        .filter(|j| j.state != "completed" || !j.announced || j.tasks_done != j.tasks)
        .map(|j| {
            format!(
                "{} ({} {}): {}, {}/{} tasks done {}",
                j.id,
                j.request_id,
                j.index_key,
                j.state,
                j.tasks_done,
                j.tasks,
                j.not_done.join(" ")
            )
        })
        .collect();
    let tasks: i64 = i.observed.jobs.iter().map(|j| j.tasks).sum();
    add(
        "every job completed and announced, every task done",
        unfinished.is_empty(),
        if unfinished.is_empty() {
            format!("{} jobs, {tasks} tasks", i.observed.jobs.len())
        } else {
            unfinished.join("; ")
        },
    );
    let missing_events = i
        .observed
        .jobs
        .iter()
        .filter(|j| !i.observed.events.contains_key(&j.id))
        .count();
    let duplicate_events: u32 = i
        .observed
        .events
        .values()
        .map(|n| n.saturating_sub(1))
        .sum();
    add(
        "a job.completed event for every job (duplicates allowed, counted)",
        missing_events == 0,
        format!(
            "{} events for {} jobs; {missing_events} jobs without one; {duplicate_events} duplicate events",
            i.observed.events.values().sum::<u32>(),
            i.observed.jobs.len()
        ),
    );
    add(
        "the counter's own view",
        i.tally.undecodable == 0,
        format!(
            "{} undecodable messages; {} broker redeliveries to the counter not counted again; {} counter reconnects",
            i.tally.undecodable, i.tally.redeliveries, i.tally.reconnects
        ),
    );
    out
}

fn is_operator_queue(q: &str) -> bool {
    q.ends_with(".dlq")
        || q == fleet_shared::topology::names::PARKED
        || q == fleet_shared::topology::names::UNROUTABLE
}

impl Report {
    /// Writes every item and fault of the run as tab-separated files into
    /// `dir` (`items.tsv`, `faults.tsv`), for looking into a result.
    pub fn write_details(&self, dir: &std::path::Path) -> std::io::Result<()> {
        use std::io::Write as _;
        let i = &self.inputs;
        let rel = |t: std::time::Instant| t.saturating_duration_since(i.load_start).as_secs_f64();
        let mut items = std::io::BufWriter::new(std::fs::File::create(dir.join("items.tsv"))?);
        writeln!(
            items,
            "path\tpublished_s\tdelivered_s\tattempts\texchange\trouting_key\tbody"
        )?;
        for s in &i.sent {
            writeln!(
                items,
                "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                s.item.path.short(),
                s.at.map(|a| format!("{:.3}", rel(a))).unwrap_or_default(),
                i.delivered_at(s)
                    .map(|d| format!("{:.3}", rel(d)))
                    .unwrap_or_default(),
                s.attempts,
                s.item.exchange,
                s.item.routing_key,
                String::from_utf8_lossy(&s.item.body)
            )?;
        }
        items.flush()?;
        let mut faults = std::io::BufWriter::new(std::fs::File::create(dir.join("faults.tsv"))?);
        writeln!(faults, "fault\ttarget\tstarted_s\tended_s\tnote\terror")?;
        for f in &i.faults {
            writeln!(
                faults,
                "{}\t{}\t{:.3}\t{:.3}\t{}\t{}",
                f.kind.label(),
                f.target,
                rel(f.started),
                rel(f.ended),
                f.note,
                f.error.as_deref().unwrap_or("")
            )?;
        }
        faults.flush()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inputs;
        writeln!(
            f,
            "\n## Fault suite ({} variant, {} documents): {}\n",
            self.variant,
            thousands(self.docs),
            if self.passed() { "PASSED" } else { "FAILED" }
        )?;
        writeln!(f, "### Faults and recovery\n\n{}\n", self.fault_table())?;
        writeln!(
            f,
            "Recovery: from the fault's end (the killed worker started again, the node \
             answering AMQP, the search proxy listening, PostgreSQL and Redis answering, the \
             burst over) until the fleet delivered on that path again: the first request of the \
             path published since the fault began (one that waited through it, or a new one) \
             completely delivered to its outbound queue after the end (probes go out every \
             second; the other paths every 0.3-2 s on average, so a path nobody waited on may \
             show that much waiting); for split requests, until the first partition task \
             finished after the end, counted only when a task was pending then (a split \
             request is published a second before every fault). The worst occurrence is \
             shown; — means nothing of that path was waiting or published after the fault. The last row is the median end-to-end latency of \
             requests whose whole life overlapped no fault. Faults {} apart; retry delay {}.\n",
            secs(self.gap),
            secs(self.retry_delay)
        )?;
        writeln!(f, "### Load and delivery\n\n{}\n", self.request_table())?;
        writeln!(
            f,
            "delivered = expected ids that arrived; duplicates = arrivals of an id beyond its \
             first (allowed: redeliveries after kills and restarts); lost = expected − \
             delivered (must be 0); unexpected = ids that arrived on a queue where the load \
             expected none of them (invented or misrouted; must be 0). Stock updates above the \
             critical quantity are part of the source events and expect nothing.\n"
        )?;
        writeln!(f, "### End state\n")?;
        for c in &self.checks {
            writeln!(
                f,
                "- [{}] {}: {}",
                if c.ok { "ok" } else { "FAIL" },
                c.what,
                c.detail
            )?;
        }
        writeln!(f, "\n### Every fault\n\n{}\n", self.occurrence_table())?;
        writeln!(f, "### Per outbound queue\n\n{}\n", self.queue_table())?;
        writeln!(f, "### Worker processes\n\n{}\n", self.worker_table())?;
        writeln!(
            f,
            "Run took {} ({} faults; settled {} after the last one). Lost: {}. Unexpected: {}.",
            secs(i.total),
            i.faults.len(),
            secs(i.settle_took),
            self.lost(),
            self.unexpected()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_get_thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
