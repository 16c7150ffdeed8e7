//! PostgreSQL: jobs and their partition tasks, parked messages, replay records.
//!
//! Invariant: a partition task updates only its own row; the job row changes
//! once, when the last task is done, under a `state <> 'completed'` guard, so
//! exactly one finisher sees the completion.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};
use uuid::Uuid;

use crate::broker::redact;
use crate::error::{Service, ServiceError};
use crate::tls::{self, Trust};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The connect options of `url`, with the fleet's trust ([`crate::tls`]).
///
/// TLS is what the URL's `sslmode` says (sqlx's default is `prefer`:
/// encrypted when the server offers it, no certificate check). With
/// `verify-full` the server's certificate is checked against the platform
/// store plus `sslrootcert=` from the URL (or `PGSSLROOTCERT`); when
/// `SSL_CERT_FILE`/`SSL_CERT_DIR` add CAs, the roots are given explicitly as
/// the fleet's bundle (platform plus extra) plus that `sslrootcert`, since
/// sqlx's own platform store would let `SSL_CERT_FILE` replace the platform
/// roots. (`verify-ca` is not recommended: with rustls 0.23 sqlx still checks
/// the host name; shared/CRATES.md.)
pub fn connect_options(url: &str) -> Result<PgConnectOptions, ServiceError> {
    let bad = |e: &dyn std::fmt::Display| {
        ServiceError::new(
            Service::PostgreSql,
            format!("bad DATABASE_URL {}: {e}", redact(url)),
        )
    };
    let options = PgConnectOptions::from_str(url).map_err(|e| bad(&e))?;
    if !matches!(
        options.get_ssl_mode(),
        PgSslMode::VerifyCa | PgSslMode::VerifyFull
    ) {
        return Ok(options);
    }
    let trust = Trust::for_service(Service::PostgreSql)?;
    let Some(bundle) = trust.bundle_pem() else {
        return Ok(options);
    };
    let mut roots = bundle.to_vec();
    let root_cert = reqwest::Url::parse(url)
        .ok()
        .and_then(|u| {
            u.query_pairs()
                .find(|(k, _)| matches!(&**k, "sslrootcert" | "ssl-root-cert" | "ssl-ca"))
                .map(|(_, v)| v.into_owned())
        })
        .or_else(|| {
            std::env::var("PGSSLROOTCERT")
                .ok()
                .filter(|v| !v.is_empty())
        });
    if let Some(path) = root_cert {
        let pem = std::fs::read(&path)
            .map_err(|e| bad(&format_args!("cannot read sslrootcert {path}: {e}")))?;
        roots.extend_from_slice(&pem);
    }
    Ok(options.ssl_root_cert_from_pem(roots))
}

/// Connects and runs the migrations; the error says how to start PostgreSQL.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, ServiceError> {
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(connect_options(url)?)
        .await
        .map_err(|e| ServiceError::new(Service::PostgreSql, connect_failure(url, &e)))?;
    MIGRATOR.run(&pool).await.map_err(|e| {
        ServiceError::new(
            Service::PostgreSql,
            format!("database migrations failed on {}: {e}", redact(url)),
        )
    })?;
    Ok(pool)
}

/// Connects for reading what the workers recorded: no migrations. A
/// database without the fleet's tables is an error that says so (a command
/// pointed at the wrong database must not answer "nothing here").
pub async fn connect_existing(url: &str, max_connections: u32) -> Result<PgPool, ServiceError> {
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(connect_options(url)?)
        .await
        .map_err(|e| ServiceError::new(Service::PostgreSql, connect_failure(url, &e)))?;
    let present: Option<String> = sqlx::query_scalar("SELECT to_regclass('jobs')::text")
        .fetch_one(&pool)
        .await
        .map_err(|e| ServiceError::new(Service::PostgreSql, e.to_string()))?;
    if present.is_none() {
        return Err(ServiceError::new(
            Service::PostgreSql,
            format!(
                "the database at {} has no fleet tables: is DATABASE_URL the fleet's database? \
                 (the workers create the tables when they first start)",
                redact(url)
            ),
        ));
    }
    Ok(pool)
}

/// Why a connection to `url` failed, with the hint that fits the cause:
/// a database that does not exist is created (`createdb`), wrong
/// credentials are fixed in DATABASE_URL, and only a server that does not
/// answer is started.
pub fn connect_failure(url: &str, e: &sqlx::Error) -> String {
    let shown = redact(url);
    let parsed = reqwest::Url::parse(url).ok();
    let db = parsed
        .as_ref()
        .map(|u| u.path().trim_start_matches('/').to_string())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "(the user's name)".into());
    let user = parsed
        .as_ref()
        .map(|u| u.username().to_string())
        .unwrap_or_default();
    let host = parsed
        .as_ref()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_else(|| "localhost".into());
    let code = e
        .as_database_error()
        .and_then(|d| d.code().map(|c| c.into_owned()));
    match code.as_deref() {
        Some("3D000") => format!(
            "cannot connect to PostgreSQL at {shown}: database {db:?} does not exist ({e}). The \
             server is running; create the database with `createdb -h {host} -U {user} {db}` \
             (or `psql -c 'CREATE DATABASE \"{db}\"'`) — the workers create its tables when \
             they start — or fix the database name in DATABASE_URL."
        ),
        Some("28P01") | Some("28000") => format!(
            "cannot connect to PostgreSQL at {shown}: the server refused user {user:?} ({e}): \
             wrong user name or password in DATABASE_URL, or no pg_hba.conf entry lets this user \
             in from here."
        ),
        Some(_) => format!("cannot connect to PostgreSQL at {shown}: {e}."),
        None => {
            let why = tls::error_chain(e);
            match tls::hint(Service::PostgreSql, &why) {
                Some(hint) => format!("cannot connect to PostgreSQL at {shown}: {why}. {hint}."),
                None => format!(
                    "cannot connect to PostgreSQL at {shown}: {e}. Is it running? Start it with \
             `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` \
             (or `scripts/services.sh`), or point DATABASE_URL at it."
                ),
            }
        }
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRow {
    pub id: Uuid,
    pub request_id: String,
    pub invalidation_type: String,
    pub index_key: String,
    pub parameter_name: String,
    pub request: Value,
    pub total_hits: i64,
    pub task_count: i32,
    pub state: String,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub event_published_at: Option<DateTime<Utc>>,
    /// The `x-window-start` of the request that created (or re-created) the
    /// job, when it was replayed with a reset: its tasks carry it.
    pub window_start: Option<i64>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TaskRow {
    pub job_id: Uuid,
    pub task_no: i32,
    pub partition_from: Option<i64>,
    pub partition_to: Option<i64>,
    pub expected_hits: i64,
    pub hits: Option<i64>,
    /// pending | running | retrying | done | failed | parked (see [`Setback`]).
    pub status: String,
    pub attempts: i32,
    /// Last touched: started, heartbeat while running, re-published, ended.
    pub updated_at: DateTime<Utc>,
    pub done_at: Option<DateTime<Utc>>,
    /// Why the task failed or was parked.
    pub error: Option<String>,
    /// Hits without a usable `id` (counted, never published).
    pub missing_ids: i64,
}

/// What happened to a task's message when the task did not finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setback {
    /// It failed transiently and waits in the retry delay queue; it comes
    /// back by itself after `retry.delay`.
    Retrying,
    /// It was dead-lettered: an operator replays it from the dead-letter queue.
    Failed,
    /// It was parked: an operator replays it from the parking queue.
    Parked,
}

impl Setback {
    pub fn as_str(self) -> &'static str {
        match self {
            Setback::Retrying => "retrying",
            Setback::Failed => "failed",
            Setback::Parked => "parked",
        }
    }
}

/// A job to create with its tasks.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: Uuid,
    pub request_id: String,
    pub invalidation_type: String,
    pub index_key: String,
    pub parameter_name: String,
    pub request: Value,
    pub total_hits: i64,
}

/// A task to create: its `searchPartition` range and expected hits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTask {
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub expected_hits: i64,
}

/// Creates the job and its tasks unless the job exists (a redelivered
/// request), then returns the tasks still to run, to publish.
///
/// A completed job older than `horizon` is history: the same request
/// arriving again after it is new work, as an in-place request is once its
/// Redis mark expired (one horizon for both, `redis.idempotency_ttl`).
pub async fn create_job(
    pool: &PgPool,
    job: &NewJob,
    tasks: &[NewTask],
    horizon: Duration,
) -> sqlx::Result<Vec<TaskRow>> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "DELETE FROM jobs WHERE id = $1 AND state = 'completed'
           AND created_at < now() - make_interval(secs => $2)",
    )
    .bind(job.id)
    .bind(horizon.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    let inserted = sqlx::query(
        "INSERT INTO jobs (id, request_id, invalidation_type, index_key, parameter_name, request, total_hits, task_count)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING",
    )
    .bind(job.id)
    .bind(&job.request_id)
    .bind(&job.invalidation_type)
    .bind(&job.index_key)
    .bind(&job.parameter_name)
    .bind(&job.request)
    .bind(job.total_hits)
    .bind(tasks.len() as i32)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 1 {
        for (i, t) in tasks.iter().enumerate() {
            sqlx::query(
                "INSERT INTO job_tasks (job_id, task_no, partition_from, partition_to, expected_hits)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(job.id)
            .bind(i as i32)
            .bind(t.from)
            .bind(t.to)
            .bind(t.expected_hits)
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    pending_tasks(pool, job.id).await
}

/// Records that a job's request came with a window start (a reset replay)
/// and returns the job's window start: the later of the stored one and
/// `window_start` (`None` keeps the stored one).
pub async fn widen_job_window(
    pool: &PgPool,
    job: Uuid,
    window_start: Option<i64>,
) -> sqlx::Result<Option<i64>> {
    let row: Option<(Option<i64>,)> = sqlx::query_as(
        "UPDATE jobs SET window_start = GREATEST(window_start, $2) WHERE id = $1
         RETURNING window_start",
    )
    .bind(job)
    .bind(window_start)
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|(w,)| w))
}

/// The tasks of a job that may still run by themselves (pending, running, retrying);
/// failed and parked ones wait for an operator's replay.
pub async fn pending_tasks(pool: &PgPool, job: Uuid) -> sqlx::Result<Vec<TaskRow>> {
    sqlx::query_as(
        "SELECT * FROM job_tasks WHERE job_id = $1 AND status IN ('pending', 'running', 'retrying')
         ORDER BY task_no",
    )
    .bind(job)
    .fetch_all(pool)
    .await
}

/// Marks a task running and counts the attempt; returns the attempt number,
/// or `None` when the task is already done (or unknown). A task that had
/// failed or was parked starts over at attempt 1: only an operator's replay
/// brings its message back.
pub async fn start_task(pool: &PgPool, job: Uuid, task_no: i32) -> sqlx::Result<Option<i32>> {
    sqlx::query_scalar(
        "UPDATE job_tasks SET status = 'running', error = NULL, updated_at = now(),
                attempts = CASE WHEN status IN ('failed', 'parked') THEN 1 ELSE attempts + 1 END
         WHERE job_id = $1 AND task_no = $2 AND status <> 'done'
         RETURNING attempts",
    )
    .bind(job)
    .bind(task_no)
    .fetch_optional(pool)
    .await
}

/// What a task message must agree with: its row's range and its job's
/// request. `None` when the job has no such task.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TaskIdentity {
    pub request_id: String,
    pub invalidation_type: String,
    pub index_key: String,
    pub parameter_name: String,
    /// The job's request as recorded (its `parameterIds` among others).
    pub request: Value,
    pub partition_from: Option<i64>,
    pub partition_to: Option<i64>,
}

pub async fn task_identity(
    pool: &PgPool,
    job: Uuid,
    task_no: i32,
) -> sqlx::Result<Option<TaskIdentity>> {
    sqlx::query_as(
        "SELECT j.request_id, j.invalidation_type, j.index_key, j.parameter_name, j.request,
                t.partition_from, t.partition_to
         FROM job_tasks t JOIN jobs j ON j.id = t.job_id
         WHERE t.job_id = $1 AND t.task_no = $2",
    )
    .bind(job)
    .bind(task_no)
    .fetch_optional(pool)
    .await
}

/// Shows a running task is alive, so the sweeper leaves it alone.
pub async fn heartbeat(pool: &PgPool, job: Uuid, task_no: i32) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE job_tasks SET updated_at = now()
         WHERE job_id = $1 AND task_no = $2 AND status = 'running'",
    )
    .bind(job)
    .bind(task_no)
    .execute(pool)
    .await?;
    Ok(())
}

/// Marks a task done; `true` only for the call that flipped it.
pub async fn finish_task(
    pool: &PgPool,
    job: Uuid,
    task_no: i32,
    hits: i64,
    missing_ids: i64,
) -> sqlx::Result<bool> {
    let n = sqlx::query(
        "UPDATE job_tasks SET status = 'done', hits = $3, missing_ids = $4, error = NULL,
                done_at = now(), updated_at = now()
         WHERE job_id = $1 AND task_no = $2 AND status <> 'done'",
    )
    .bind(job)
    .bind(task_no)
    .bind(hits)
    .bind(missing_ids)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Records where a task's message went when it did not finish (unless the
/// task is done after all: a duplicate finished it).
pub async fn set_back_task(
    pool: &PgPool,
    job: Uuid,
    task_no: i32,
    end: Setback,
    error: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE job_tasks SET status = $3, error = $4, updated_at = now()
         WHERE job_id = $1 AND task_no = $2 AND status <> 'done'",
    )
    .bind(job)
    .bind(task_no)
    .bind(end.as_str())
    .bind(pg_text(error))
    .execute(pool)
    .await?;
    Ok(())
}

/// Jobs not completed although every task is done: the finisher of the
/// last task failed between marking it and completing the job.
pub async fn finished_open_jobs(pool: &PgPool, limit: i64) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar(
        "SELECT j.id FROM jobs j WHERE j.state <> 'completed'
           AND NOT EXISTS (SELECT 1 FROM job_tasks t WHERE t.job_id = j.id AND t.status <> 'done')
         ORDER BY j.created_at LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Completes the job when no task is left; returns it to exactly one caller.
pub async fn complete_job_if_done(pool: &PgPool, job: Uuid) -> sqlx::Result<Option<JobRow>> {
    sqlx::query_as(
        "UPDATE jobs SET state = 'completed', completed_at = now()
         WHERE id = $1 AND state <> 'completed'
           AND NOT EXISTS (SELECT 1 FROM job_tasks WHERE job_id = $1 AND status <> 'done')
         RETURNING *",
    )
    .bind(job)
    .fetch_optional(pool)
    .await
}

pub async fn mark_event_published(pool: &PgPool, job: Uuid) -> sqlx::Result<()> {
    sqlx::query("UPDATE jobs SET event_published_at = now() WHERE id = $1")
        .bind(job)
        .execute(pool)
        .await?;
    Ok(())
}

/// Completed jobs whose event was never confirmed (the finisher crashed in between).
pub async fn unannounced_jobs(pool: &PgPool, older_than: Duration) -> sqlx::Result<Vec<JobRow>> {
    sqlx::query_as(
        "SELECT * FROM jobs WHERE state = 'completed' AND event_published_at IS NULL
           AND completed_at < now() - make_interval(secs => $1) ORDER BY completed_at LIMIT 100",
    )
    .bind(older_than.as_secs_f64())
    .fetch_all(pool)
    .await
}

/// Where the sweeper looks for stalled tasks.
#[derive(Debug, Clone, Copy)]
pub struct Stall {
    /// A running task without a heartbeat for this long: its worker died.
    pub after: Duration,
    /// Pending tasks count too (their message was lost): the caller checked
    /// that no backlog in the partition queue could still hold it.
    pub pending_too: bool,
    /// A retrying task not back for this long (the retry delay plus `after`):
    /// its message was lost on the way.
    pub retry_after: Duration,
}

/// Tasks that stalled (see [`Stall`]). Failed and parked tasks wait for an
/// operator and are never taken. Claimed tasks are touched, so the next
/// sweep does not take them again before they had a chance to run.
pub async fn claim_stalled_tasks(
    pool: &PgPool,
    stall: Stall,
    limit: i64,
) -> sqlx::Result<Vec<TaskRow>> {
    sqlx::query_as(
        "UPDATE job_tasks SET updated_at = now()
         WHERE (job_id, task_no) IN (
             SELECT job_id, task_no FROM job_tasks
             WHERE (status = 'running' AND updated_at < now() - make_interval(secs => $1))
                OR ($3 AND status = 'pending' AND updated_at < now() - make_interval(secs => $1))
                OR (status = 'retrying' AND updated_at < now() - make_interval(secs => $4))
             ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED)
         RETURNING *",
    )
    .bind(stall.after.as_secs_f64())
    .bind(limit)
    .bind(stall.pending_too)
    .bind(stall.retry_after.as_secs_f64())
    .fetch_all(pool)
    .await
}

/// The jobs of a request id (one per index key it split on; more when a
/// producer reused the id for other requests), newest first.
pub async fn jobs_of_request(pool: &PgPool, request_id: &str) -> sqlx::Result<Vec<JobRow>> {
    sqlx::query_as("SELECT * FROM jobs WHERE request_id = $1 ORDER BY created_at DESC")
        .bind(request_id)
        .fetch_all(pool)
        .await
}

pub async fn job(pool: &PgPool, id: Uuid) -> sqlx::Result<Option<JobRow>> {
    sqlx::query_as("SELECT * FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}

pub async fn tasks(pool: &PgPool, id: Uuid) -> sqlx::Result<Vec<TaskRow>> {
    sqlx::query_as("SELECT * FROM job_tasks WHERE job_id = $1 ORDER BY task_no")
        .bind(id)
        .fetch_all(pool)
        .await
}

/// A job with its progress, for `jobs list`.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct JobSummary {
    pub id: Uuid,
    pub request_id: String,
    pub invalidation_type: String,
    pub index_key: String,
    pub state: String,
    pub total_hits: i64,
    pub task_count: i32,
    pub done_tasks: i64,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// The newest jobs, optionally only those in `state` (running, completed).
pub async fn recent_jobs(
    pool: &PgPool,
    limit: i64,
    state: Option<&str>,
) -> sqlx::Result<Vec<JobSummary>> {
    sqlx::query_as(
        "SELECT j.id, j.request_id, j.invalidation_type, j.index_key, j.state, j.total_hits, j.task_count,
                (SELECT count(*) FROM job_tasks t WHERE t.job_id = j.id AND t.status = 'done') AS done_tasks,
                j.created_at, j.completed_at
         FROM jobs j WHERE ($2::text IS NULL OR j.state = $2)
         ORDER BY j.created_at DESC LIMIT $1",
    )
    .bind(limit)
    .bind(state)
    .fetch_all(pool)
    .await
}

/// Jobs whose id starts with `prefix` (as `jobs list` prints it), at most `limit`.
pub async fn jobs_by_id_prefix(
    pool: &PgPool,
    prefix: &str,
    limit: i64,
) -> sqlx::Result<Vec<JobRow>> {
    sqlx::query_as(
        "SELECT * FROM jobs WHERE id::text LIKE $1 || '%' ORDER BY created_at DESC LIMIT $2",
    )
    .bind(prefix)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// A message too old to retry.
#[derive(Debug, Clone)]
pub struct Parked {
    pub message_key: String,
    pub reason: String,
    pub original_exchange: String,
    pub original_routing_key: String,
    pub attempts: i32,
    pub invalidation_time: Option<DateTime<Utc>>,
    pub headers: Value,
    pub body: Vec<u8>,
}

/// Records a parked message once per `message_key`.
/// `s` as PostgreSQL `text` takes it: NUL, which `text` and `jsonb` refuse
/// ("invalid byte sequence", "unsupported Unicode escape sequence"), shown
/// as U+FFFD. What producers wrote reaches these columns (headers, message
/// ids, error messages naming their values); a refused insert would fail
/// as if the database were down, on every retry.
pub fn pg_text(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        std::borrow::Cow::Owned(s.replace('\0', "\u{fffd}"))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// [`pg_text`] for every string and key of a JSON value (for `jsonb`).
pub fn pg_json(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(pg_text(s).into_owned()),
        Value::Array(a) => Value::Array(a.iter().map(pg_json).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (pg_text(k).into_owned(), pg_json(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

pub async fn park(pool: &PgPool, p: &Parked) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO parked_messages (message_key, reason, original_exchange, original_routing_key, attempts,
                                      invalidation_time, headers, body)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (message_key) DO NOTHING",
    )
    .bind(pg_text(&p.message_key))
    .bind(pg_text(&p.reason))
    .bind(pg_text(&p.original_exchange))
    .bind(pg_text(&p.original_routing_key))
    .bind(p.attempts)
    .bind(p.invalidation_time)
    .bind(pg_json(&p.headers))
    .bind(&p.body)
    .execute(pool)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ParkedRow {
    pub id: i64,
    pub reason: String,
    pub original_exchange: String,
    pub original_routing_key: String,
    pub attempts: i32,
    pub body: Vec<u8>,
    pub parked_at: DateTime<Utc>,
}

pub async fn parked(pool: &PgPool, limit: i64) -> sqlx::Result<Vec<ParkedRow>> {
    sqlx::query_as(
        "SELECT id, reason, original_exchange, original_routing_key, attempts, body, parked_at
         FROM parked_messages ORDER BY id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The parked rows of one request: those whose body names `request_id`,
/// or, for an id the dispatcher derived from a body (`auto-…`, not in any
/// body), the newest `limit` rows for the caller to match by body.
pub async fn parked_of_request(
    pool: &PgPool,
    request_id: &str,
    limit: i64,
) -> sqlx::Result<Vec<ParkedRow>> {
    sqlx::query_as(
        "SELECT id, reason, original_exchange, original_routing_key, attempts, body, parked_at
         FROM parked_messages WHERE $1 LIKE 'auto-%' OR position($2::bytea IN body) > 0
         ORDER BY id DESC LIMIT $3",
    )
    .bind(request_id)
    .bind(request_id.as_bytes())
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// One operator replay.
#[derive(Debug, Clone)]
pub struct Replay {
    pub queue: String,
    pub target: String,
    pub filter: Option<String>,
    pub operator: String,
    pub host: String,
    pub dry_run: bool,
    pub moved: i32,
    pub kept: i32,
    pub started_at: DateTime<Utc>,
}

/// How a replay run stands (the `replays.state` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayState {
    /// Started and not ended; a row that stays so belongs to a run that died.
    Running,
    /// Examined everything it was asked to.
    Finished,
    /// Stopped by the operator (Ctrl-C, SIGTERM).
    Interrupted,
    /// Stopped by errors (the queue unreadable, publishes failing).
    Failed,
}

impl ReplayState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplayState::Running => "running",
            ReplayState::Finished => "finished",
            ReplayState::Interrupted => "interrupted",
            ReplayState::Failed => "failed",
        }
    }
}

/// Puts a replay on record as it starts (`running`, no `finished_at`);
/// returns its id for [`replay_progress`] and [`finish_replay`].
pub async fn start_replay(pool: &PgPool, r: &Replay) -> sqlx::Result<i64> {
    insert_replay(pool, r, ReplayState::Running).await
}

/// Records how far a running replay got.
pub async fn replay_progress(pool: &PgPool, id: i64, moved: i32, kept: i32) -> sqlx::Result<()> {
    sqlx::query("UPDATE replays SET moved = $2, kept = $3, updated_at = now() WHERE id = $1")
        .bind(id)
        .bind(moved)
        .bind(kept)
        .execute(pool)
        .await?;
    Ok(())
}

/// Records how a replay ended.
pub async fn finish_replay(
    pool: &PgPool,
    id: i64,
    moved: i32,
    kept: i32,
    state: ReplayState,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE replays SET moved = $2, kept = $3, state = $4, updated_at = now(), finished_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(moved)
    .bind(kept)
    .bind(state.as_str())
    .execute(pool)
    .await?;
    Ok(())
}

/// Records a replay that already ran, in one go (`finished`).
pub async fn record_replay(pool: &PgPool, r: &Replay) -> sqlx::Result<i64> {
    insert_replay(pool, r, ReplayState::Finished).await
}

async fn insert_replay(pool: &PgPool, r: &Replay, state: ReplayState) -> sqlx::Result<i64> {
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO replays (queue, target, filter, operator, host, dry_run, moved, kept, started_at,
                              state, updated_at, finished_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now(),
                 CASE WHEN $10 = 'running' THEN NULL ELSE now() END)
         RETURNING id",
    )
    .bind(&r.queue)
    .bind(&r.target)
    .bind(&r.filter)
    .bind(&r.operator)
    .bind(&r.host)
    .bind(r.dry_run)
    .bind(r.moved)
    .bind(r.kept)
    .bind(r.started_at)
    .bind(state.as_str())
    .fetch_one(pool)
    .await?;
    Ok(id)
}

/// One operator purge.
#[derive(Debug, Clone)]
pub struct Purge {
    pub queue: String,
    pub filter: Option<String>,
    pub operator: String,
    pub host: String,
}

/// Puts a purge on record as it starts (`running`); returns its id.
pub async fn start_purge(pool: &PgPool, p: &Purge) -> sqlx::Result<i64> {
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO purges (queue, filter, operator, host) VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(&p.queue)
    .bind(&p.filter)
    .bind(&p.operator)
    .bind(&p.host)
    .fetch_one(pool)
    .await?;
    Ok(id)
}

/// Records how a purge ended (`state` as for replays).
pub async fn finish_purge(
    pool: &PgPool,
    id: i64,
    purged: i32,
    kept: i32,
    state: ReplayState,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE purges SET purged = $2, kept = $3, state = $4, finished_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(purged)
    .bind(kept)
    .bind(state.as_str())
    .execute(pool)
    .await?;
    Ok(())
}

/// What an operator did with a parked message.
#[derive(Debug, Clone, Copy)]
pub enum ParkedOutcome {
    /// Moved by replay record `id`.
    Replayed(i64),
    /// Deleted by purge record `id`.
    Purged(i64),
}

/// Marks the oldest open `parked_messages` row with this body as replayed
/// or purged; `false` when there is none (parked before the table existed,
/// or already marked).
pub async fn mark_parked(pool: &PgPool, body: &[u8], outcome: ParkedOutcome) -> sqlx::Result<bool> {
    let (set, id) = match outcome {
        ParkedOutcome::Replayed(id) => ("replayed_at = now(), replay_id = $2", id),
        ParkedOutcome::Purged(id) => ("purged_at = now(), purge_id = $2", id),
    };
    let sql = format!(
        "UPDATE parked_messages SET {set}
         WHERE id = (SELECT id FROM parked_messages
                     WHERE md5(body) = md5($1) AND body = $1
                       AND replayed_at IS NULL AND purged_at IS NULL
                     ORDER BY id LIMIT 1)"
    );
    let done = sqlx::query(&sql).bind(body).bind(id).execute(pool).await?;
    Ok(done.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_for_postgresql_has_no_nul() {
        assert_eq!(pg_text("plain"), "plain");
        assert_eq!(pg_text("a\0b"), "a\u{fffd}b");
        let v = serde_json::json!({"x\u{0}": ["\u{0}", 1, {"k": "v\u{0}"}]});
        assert!(!pg_json(&v).to_string().contains("\\u0000"));
        assert_eq!(pg_json(&v)["x\u{fffd}"][2]["k"], "v\u{fffd}");
    }
}
