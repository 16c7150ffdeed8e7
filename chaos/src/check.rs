//! What the fleet left behind, read after it stopped: every queue's depth
//! (the workers are stopped, so nothing is unacked any more), the jobs and
//! tasks in PostgreSQL, the `job.completed` events; and what the load
//! expected.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use fleet_shared::broker::{self, Identity};
use fleet_shared::config::Config;
use fleet_shared::lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions};
use fleet_shared::message::{IndexKey, JobCompleted};
use fleet_shared::source::SourceKind;
use fleet_shared::topology::{names, Topology};
use uuid::Uuid;

use crate::counter::Tally;
use crate::faults::FaultRecord;
use crate::fleet::SlotStats;
use crate::load::{Path, Sent};

/// The ids the load must deliver, per outbound queue.
#[derive(Debug, Default)]
pub struct Expected {
    pub queues: BTreeMap<String, HashSet<i64>>,
    /// Which path each queue belongs to.
    pub path_of: BTreeMap<String, Path>,
}

impl Expected {
    /// Expected ids not delivered yet.
    pub fn missing(&self, tally: &Tally) -> usize {
        self.queues
            .iter()
            .map(|(q, ids)| match tally.queues.get(q) {
                Some(seen) => ids.iter().filter(|id| !seen.ids.contains_key(id)).count(),
                None => ids.len(),
            })
            .sum()
    }
}

/// The expectations of every item the broker confirmed.
pub fn expected(sent: &[Sent]) -> Expected {
    let mut e = Expected::default();
    for s in sent.iter().filter(|s| s.at.is_some()) {
        for (q, ids) in &s.item.expects {
            e.queues.entry(q.clone()).or_default().extend(ids);
            e.path_of.insert(q.clone(), s.item.path);
        }
    }
    e
}

/// The queues the fleet works from: empty once it is done.
pub fn working_queues() -> Vec<String> {
    let mut q: Vec<String> = vec![
        names::FAST_LANE.into(),
        names::BULK_LANE.into(),
        names::PARTITIONS.into(),
        names::RETRY_DELAY.into(),
        names::RETRY_READY.into(),
    ];
    q.extend(SourceKind::ALL.iter().map(|k| k.queue()));
    q
}

/// One job of a split request, as PostgreSQL has it.
#[derive(Debug, Clone)]
pub struct JobSeen {
    pub id: Uuid,
    pub request_id: String,
    pub index_key: String,
    pub state: String,
    pub announced: bool,
    pub tasks: i64,
    pub tasks_done: i64,
    /// Statuses of the tasks not done (`running ×2`).
    pub not_done: Vec<String>,
}

/// `id, request_id, index_key, state, event_published_at, created_at` of a job.
type JobRow = (
    Uuid,
    String,
    String,
    String,
    Option<DateTime<Utc>>,
    DateTime<Utc>,
);

/// Everything read after the fleet stopped.
#[derive(Debug, Default)]
pub struct Observed {
    /// Every queue of the topology but the outbound ones and the events
    /// log, with its depth.
    pub depths: Vec<(String, u32)>,
    /// Outbound queues still holding messages after the counter stopped.
    pub outbound_left: Vec<(String, u32)>,
    /// Up to three error classes of the messages in each non-empty
    /// dead-letter or parking queue.
    pub samples: BTreeMap<String, Vec<String>>,
    /// `job.completed` events per job.
    pub events: HashMap<Uuid, u32>,
    pub jobs: Vec<JobSeen>,
    /// Jobs of requests the load did not send (there must be none).
    pub stray_jobs: usize,
    /// (job created, task done) of every done task, as instants of this process.
    pub task_done: Vec<(Instant, Instant)>,
    pub parked_rows: i64,
}

impl Observed {
    /// Reads everything; `jobs` are the (request id, index key) pairs of
    /// the split requests sent.
    pub async fn gather(
        config: &Config,
        db: &sqlx::PgPool,
        jobs: &[(String, IndexKey)],
        outbound: &[String],
    ) -> anyhow::Result<Observed> {
        let mut o = Observed::default();
        let topology = Topology::load(config)?;
        let conn = broker::connect(&config.amqp.url, &Identity::new("chaos"), "check").await?;
        let others: Vec<String> = topology
            .queues
            .iter()
            .map(|q| q.name.clone())
            .filter(|n| !n.starts_with("productcontent_") && n != names::EVENTS_LOG)
            .collect();
        let counts = broker::queue_counts(&conn, &others).await?;
        for (q, c) in others.iter().zip(counts) {
            o.depths.push((q.clone(), c.map(|c| c.ready).unwrap_or(0)));
        }
        let counts = broker::queue_counts(&conn, outbound).await?;
        for (q, c) in outbound.iter().zip(counts) {
            let n = c.map(|c| c.ready).unwrap_or(0);
            if n > 0 {
                o.outbound_left.push((q.clone(), n));
            }
        }
        let ch = conn.create_channel().await?;
        for q in topology.operator_queues() {
            let depth = o.depths.iter().find(|(n, _)| *n == q.name).map(|(_, d)| *d);
            if depth.unwrap_or(0) == 0 {
                continue;
            }
            // Look at a few and put them back (non-destructive, like `dlq peek`).
            let mut classes = Vec::new();
            let mut tags = Vec::new();
            for _ in 0..3 {
                let Some(m) = ch
                    .basic_get(q.name.as_str().into(), BasicGetOptions::default())
                    .await?
                else {
                    break;
                };
                let h = m.delivery.properties.headers().as_ref();
                let class = broker::header_text(h, broker::headers::ERROR_CLASS)
                    .or_else(|| broker::header_text(h, broker::headers::PARK_REASON))
                    .unwrap_or_else(|| "(no class)".into());
                let origin =
                    broker::header_text(h, broker::headers::ORIGINAL_QUEUE).unwrap_or_default();
                classes.push(format!("{class} from {origin}"));
                tags.push(m.delivery.delivery_tag);
            }
            for tag in tags {
                ch.basic_nack(
                    tag,
                    BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    },
                )
                .await?;
            }
            o.samples.insert(q.name.clone(), classes);
        }
        // The events log keeps the newest 10,000; the run makes far fewer.
        loop {
            let Some(m) = ch
                .basic_get(names::EVENTS_LOG.into(), BasicGetOptions::default())
                .await?
            else {
                break;
            };
            if let Ok(e) = serde_json::from_slice::<JobCompleted>(&m.delivery.data) {
                *o.events.entry(e.job_id).or_default() += 1;
            }
            m.delivery.ack(BasicAckOptions::default()).await?;
        }
        let _ = conn.close(200, "checked".into()).await;

        let now = (Instant::now(), Utc::now());
        let instant = |t: DateTime<Utc>| -> Instant {
            let ago = (now.1 - t).to_std().unwrap_or(Duration::ZERO);
            now.0.checked_sub(ago).unwrap_or(now.0)
        };
        let rows: Vec<JobRow> = sqlx::query_as(
            "SELECT id, request_id, index_key, state, event_published_at, created_at FROM jobs",
        )
        .fetch_all(db)
        .await?;
        let tasks: Vec<(Uuid, String, Option<DateTime<Utc>>)> =
            sqlx::query_as("SELECT job_id, status, done_at FROM job_tasks")
                .fetch_all(db)
                .await?;
        let wanted: HashSet<(String, String)> = jobs
            .iter()
            .map(|(r, k)| (r.clone(), k.as_str().to_string()))
            .collect();
        for (id, request_id, index_key, state, announced, created) in rows {
            if !wanted.contains(&(request_id.clone(), index_key.clone())) {
                o.stray_jobs += 1;
            }
            let mine: Vec<&(Uuid, String, Option<DateTime<Utc>>)> =
                tasks.iter().filter(|t| t.0 == id).collect();
            let mut not_done: BTreeMap<&str, usize> = BTreeMap::new();
            for t in &mine {
                if t.1 != "done" {
                    *not_done.entry(t.1.as_str()).or_default() += 1;
                }
                if let Some(done) = t.2 {
                    o.task_done.push((instant(created), instant(done)));
                }
            }
            o.jobs.push(JobSeen {
                id,
                request_id,
                index_key,
                state,
                announced: announced.is_some(),
                tasks: mine.len() as i64,
                tasks_done: mine.iter().filter(|t| t.1 == "done").count() as i64,
                not_done: not_done.iter().map(|(s, n)| format!("{s} ×{n}")).collect(),
            });
        }
        o.parked_rows = sqlx::query_scalar("SELECT count(*) FROM parked_messages")
            .fetch_one(db)
            .await?;
        Ok(o)
    }
}

/// Everything the report is built from.
pub struct Inputs {
    pub sent: Vec<Sent>,
    pub faults: Vec<FaultRecord>,
    pub tally: Tally,
    pub expected: Expected,
    pub observed: Observed,
    pub slots: Vec<SlotStats>,
    /// Whether everything was delivered and done within the settle timeout.
    pub settled: bool,
    /// From the last fault's end (plus its gap) until settled.
    pub settle_took: Duration,
    pub load_start: Instant,
    /// The whole run.
    pub total: Duration,
}

impl Inputs {
    /// When `item` was fully delivered: the last of its ids' first arrivals
    /// (`None` while any is missing or when it expects nothing).
    pub fn delivered_at(&self, s: &Sent) -> Option<Instant> {
        if s.item.expects.is_empty() {
            return None;
        }
        let mut last = None;
        for (q, ids) in &s.item.expects {
            for id in ids {
                let t = self.tally.first_seen(q, *id)?;
                last = Some(last.map_or(t, |l: Instant| l.max(t)));
            }
        }
        last
    }

    /// Recovery of one path after `f`: from the fault's end until the
    /// path delivered again — the first complete delivery after the end of
    /// an item published since the fault began (one that waited through
    /// it, or a new one); for split requests, the first partition task
    /// finished after the end, when a task was pending then. `None`:
    /// nothing of the path was waiting or published after the end.
    pub fn recovery(&self, f: &FaultRecord, path: Path) -> Option<Duration> {
        let end = f.ended;
        if path == Path::Split {
            let pending = self
                .observed
                .task_done
                .iter()
                .any(|(created, done)| *created < end && *done > end);
            if !pending {
                return None;
            }
            return self
                .observed
                .task_done
                .iter()
                .filter(|(_, done)| *done > end)
                .map(|(_, done)| done.duration_since(end))
                .min();
        }
        self.sent
            .iter()
            .filter(|s| s.item.path == path && s.at.is_some_and(|a| a >= f.started))
            .filter_map(|s| self.delivered_at(s))
            .filter(|t| *t > end)
            .map(|t| t.duration_since(end))
            .min()
    }

    /// End-to-end latencies of a path's items whose whole life (published
    /// to delivered) overlapped no fault, sorted.
    pub fn quiet_latencies(&self, path: Path) -> Vec<Duration> {
        let mut out: Vec<Duration> = self
            .sent
            .iter()
            .filter(|s| s.item.path == path)
            .filter_map(|s| {
                let at = s.at?;
                let done = self.delivered_at(s)?;
                let disturbed = self
                    .faults
                    .iter()
                    .any(|f| at <= f.ended && done >= f.started);
                (!disturbed).then(|| done.saturating_duration_since(at))
            })
            .collect();
        out.sort();
        out
    }
}
