//! `fleet requests show ID`: what became of one request, from every place
//! the fleet leaves a trace of it, without changing any of them:
//!
//! - Redis: the done mark (request id → content digest) the dispatcher sets
//!   after a searching request's outputs were confirmed;
//! - PostgreSQL: the jobs of a split request (`jobs_of_request`) with their
//!   progress, and the `parked_messages` rows;
//! - RabbitMQ: the dead-letter, parking and unroutable queues (messages read
//!   and returned in place, as `dlq peek` does), and the lifecycle events in
//!   `invalidation.events.log` (`request.dead_lettered`, `request.parked`,
//!   `job.completed`).
//!
//! A message is the request's when its body's `requestId` is the id, or, for
//! a body without one, when the id is the one the dispatcher derives from
//! it (`auto-<digest>`). Each service is asked on its own: one that does not
//! answer is reported, and the others still are.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use fleet_shared::broker::{self, header_text, headers, Identity};
use fleet_shared::config::Config;
use fleet_shared::db;
use fleet_shared::kv::Kv;
use fleet_shared::lapin::options::{BasicGetOptions, BasicNackOptions};
use fleet_shared::lapin::Connection;
use fleet_shared::message::{JobCompleted, RequestEvent};
use fleet_shared::topology::{names, Topology};
use serde::Serialize;
use serde_json::Value;

use crate::dispatcher::REQUEST_SCOPE;

/// The `requests` subcommands.
#[derive(Debug, Subcommand)]
pub enum RequestsCommand {
    /// What became of a request: its done mark, jobs, dead-letter or parking
    /// queue, parked rows and events. Changes nothing.
    Show {
        /// The request id (the body's `requestId`, or the `auto-…` id the
        /// fleet derived for a request without one).
        id: String,
        /// At most this many messages are read from each queue.
        #[arg(long, default_value_t = 10_000)]
        scan_limit: usize,
        /// One JSON document instead of text (for scripts).
        #[arg(long)]
        json: bool,
    },
}

/// Everything found about one request.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Trace {
    pub request_id: String,
    /// The content digest of the Redis done mark, if there is one.
    pub done_digest: Option<String>,
    pub jobs: Vec<JobTrace>,
    pub parked_rows: Vec<ParkedTrace>,
    /// Copies of the request in dead-letter, parking or unroutable queues.
    pub in_queues: Vec<QueuedTrace>,
    /// Events about it in `invalidation.events.log`, oldest first.
    pub events: Vec<Value>,
    /// Services that did not answer, with why.
    pub unavailable: Vec<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobTrace {
    pub id: uuid::Uuid,
    pub invalidation_type: String,
    pub index_key: String,
    pub state: String,
    pub tasks: i32,
    pub tasks_done: usize,
    pub tasks_parked: usize,
    pub tasks_failed: usize,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParkedTrace {
    pub id: i64,
    pub reason: String,
    pub parked_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueuedTrace {
    pub queue: String,
    /// 1-based position in the queue.
    pub position: usize,
    /// `x-error-class`, or the park reason, or the routing key no lane took.
    pub why: String,
}

impl Trace {
    fn found(&self) -> bool {
        self.done_digest.is_some()
            || !self.jobs.is_empty()
            || !self.parked_rows.is_empty()
            || !self.in_queues.is_empty()
            || !self.events.is_empty()
    }
}

pub async fn run(config: &Config, cmd: RequestsCommand) -> anyhow::Result<ExitCode> {
    let RequestsCommand::Show {
        id,
        scan_limit,
        json,
    } = cmd;
    let id = id.trim().to_string();
    let trace = trace(config, &id, scan_limit).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&trace)?);
    } else {
        print_trace(&trace);
    }
    Ok(if trace.found() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Asks every service about `id`.
pub async fn trace(config: &Config, id: &str, scan_limit: usize) -> anyhow::Result<Trace> {
    let mut t = Trace {
        request_id: id.to_string(),
        ..Trace::default()
    };
    super::using(config, "Redis", "redis.url", &config.redis.url);
    match Kv::connect(&config.redis).await {
        Ok(kv) => match kv.done(REQUEST_SCOPE, id).await {
            Ok(digest) => t.done_digest = digest,
            Err(e) => t.unavailable.push(format!("Redis: {e}")),
        },
        Err(e) => t.unavailable.push(format!("Redis: {e}")),
    }
    super::using(config, "PostgreSQL", "database.url", &config.database.url);
    // Read-only: never migrates a database nobody meant.
    match db::connect_existing(&config.database.url, 2).await {
        Ok(pool) => {
            if let Err(e) = from_database(&pool, id, &mut t).await {
                t.unavailable.push(format!("PostgreSQL: {e:#}"));
            }
            pool.close().await;
        }
        Err(e) => t.unavailable.push(format!("PostgreSQL: {e}")),
    }
    super::using(config, "RabbitMQ", "amqp.url", &config.amqp.url);
    match broker::connect(&config.amqp, &Identity::new("cli"), "requests").await {
        Ok(conn) => {
            if let Err(e) = from_queues(config, &conn, id, scan_limit, &mut t).await {
                t.unavailable.push(format!("RabbitMQ: {e:#}"));
            }
            let _ = conn.close(200, "done".into()).await;
        }
        Err(e) => t.unavailable.push(format!("RabbitMQ: {e}")),
    }
    Ok(t)
}

async fn from_database(pool: &sqlx::PgPool, id: &str, t: &mut Trace) -> anyhow::Result<()> {
    for job in db::jobs_of_request(pool, id).await? {
        let tasks = db::tasks(pool, job.id).await?;
        let count = |s: &str| tasks.iter().filter(|t| t.status == s).count();
        t.jobs.push(JobTrace {
            id: job.id,
            invalidation_type: job.invalidation_type,
            index_key: job.index_key,
            state: job.state,
            tasks: job.task_count,
            tasks_done: count("done"),
            tasks_parked: count("parked"),
            tasks_failed: count("failed"),
        });
    }
    for row in db::parked_of_request(pool, id, 10_000).await? {
        if RequestEvent::request_id_of(&row.body) == id {
            t.parked_rows.push(ParkedTrace {
                id: row.id,
                reason: row.reason,
                parked_at: row.parked_at,
            });
        }
    }
    Ok(())
}

async fn from_queues(
    config: &Config,
    conn: &Connection,
    id: &str,
    scan_limit: usize,
    t: &mut Trace,
) -> anyhow::Result<()> {
    let topo = Topology::load(config)?;
    let mut queues: Vec<String> = topo
        .operator_queues()
        .iter()
        .map(|q| q.name.clone())
        .collect();
    queues.push(names::EVENTS_LOG.to_string());
    let counts = broker::queue_counts(conn, &queues)
        .await
        .context("cannot count the queues")?;
    for (queue, count) in queues.iter().zip(counts) {
        if count.is_none_or(|c| c.ready == 0) {
            continue;
        }
        let events = queue == names::EVENTS_LOG;
        scan(conn, queue, scan_limit, |position, d| {
            if events {
                if let Some(e) = event_of(&d.data, id) {
                    t.events.push(e);
                }
                return;
            }
            if RequestEvent::request_id_of(&d.data) != id {
                return;
            }
            let h = d.properties.headers().as_ref();
            let why = header_text(h, headers::PARK_REASON)
                .or_else(|| header_text(h, headers::ERROR_CLASS))
                .unwrap_or_else(|| {
                    format!(
                        "routing key {:?} matched no binding",
                        d.routing_key.as_str()
                    )
                });
            t.in_queues.push(QueuedTrace {
                queue: queue.clone(),
                position,
                why,
            });
        })
        .await
        .with_context(|| format!("cannot read {queue}"))?;
    }
    Ok(())
}

/// An event of the request, as JSON, if the body is one.
fn event_of(body: &[u8], id: &str) -> Option<Value> {
    if let Ok(e) = RequestEvent::decode(body) {
        return (e.request_id == id).then(|| serde_json::to_value(e).ok())?;
    }
    let e: JobCompleted = serde_json::from_slice(body).ok()?;
    (e.request_id == id).then(|| {
        let mut v = serde_json::to_value(e).ok()?;
        v["event"] = Value::from(names::JOB_COMPLETED);
        Some(v)
    })?
}

/// Reads up to `limit` messages of `queue` without consuming them: each is
/// fetched unacked and all are returned to their places with one nack
/// (requeue) before this returns; if that fails, the broker returns them
/// when the channel closes.
async fn scan(
    conn: &Connection,
    queue: &str,
    limit: usize,
    mut each: impl FnMut(usize, &fleet_shared::lapin::message::Delivery),
) -> anyhow::Result<()> {
    let ch = conn.create_channel().await?;
    let mut last = None;
    let mut n = 0;
    let read: anyhow::Result<()> = async {
        while n < limit {
            let Some(m) = ch
                .basic_get(queue.into(), BasicGetOptions { no_ack: false })
                .await?
            else {
                break;
            };
            n += 1;
            last = Some(m.delivery.delivery_tag);
            each(n, &m.delivery);
        }
        Ok(())
    }
    .await;
    if let Some(tag) = last {
        let _ = ch
            .basic_nack(
                tag,
                BasicNackOptions {
                    multiple: true,
                    requeue: true,
                },
            )
            .await;
    }
    let _ = ch.close(200, "scanned".into()).await;
    read
}

fn print_trace(t: &Trace) {
    println!("Request {}", t.request_id);
    match &t.done_digest {
        Some(d) => println!(
            "  done mark (Redis): done, content digest {d}: its outputs were confirmed; \
             the same request again within redis.idempotency_ttl is not repeated"
        ),
        None => println!(
            "  done mark (Redis): none (not done yet, failed, older than redis.idempotency_ttl, \
             or a request on `id`, which is never marked)"
        ),
    }
    if t.jobs.is_empty() {
        println!("  jobs (PostgreSQL): none (only requests over the split limit become jobs)");
    }
    for j in &t.jobs {
        let mut extra = String::new();
        if j.tasks_parked > 0 {
            extra.push_str(&format!(", {} parked", j.tasks_parked));
        }
        if j.tasks_failed > 0 {
            extra.push_str(&format!(", {} failed", j.tasks_failed));
        }
        println!(
            "  job {} ({} on {}): {}, {}/{} tasks done{extra}; `fleet jobs show {}`",
            j.id, j.invalidation_type, j.index_key, j.state, j.tasks_done, j.tasks, j.id
        );
    }
    for p in &t.parked_rows {
        println!(
            "  parked_messages row {} ({}): {}",
            p.id,
            p.parked_at.to_rfc3339(),
            p.reason
        );
    }
    if t.in_queues.is_empty() {
        println!("  dead-letter, parking and unroutable queues: not in any");
    }
    for q in &t.in_queues {
        println!(
            "  in {} (message #{}): {}; `fleet dlq peek {}`",
            q.queue, q.position, q.why, q.queue
        );
    }
    if t.events.is_empty() {
        println!("  events ({}): none", names::EVENTS_LOG);
    }
    for e in &t.events {
        let what = e["event"].as_str().unwrap_or("event");
        let detail = match what {
            RequestEvent::DEAD_LETTERED | RequestEvent::PARKED => format!(
                "{} in {}: {}",
                e["class"].as_str().unwrap_or_default(),
                e["queue"].as_str().unwrap_or_default(),
                e["message"].as_str().unwrap_or_default()
            ),
            _ => format!(
                "job {} ({} tasks, {} hits)",
                e["jobId"].as_str().unwrap_or_default(),
                e["tasks"],
                e["hits"]
            ),
        };
        println!("  event {what}: {detail}");
    }
    for u in &t.unavailable {
        println!("  not asked: {u}");
    }
    if !t.found() {
        println!(
            "Nothing is known of this request: it was never seen, or it was done as a request on \
             `id` (never marked), or every trace is gone (done marks expire, events.log keeps the newest 10,000)."
        );
    }
}
