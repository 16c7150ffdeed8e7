//! The split job (SPEC §3 steps 4–5, §6 "stalled jobs"): the protocol and
//! lifecycle of a request that was too large to resolve in place.
//!
//! A job is one (request, index key) pair. It is created with its partition
//! tasks in one PostgreSQL transaction, then one task message per task is
//! published to `invalidation.partitions`. A partition worker starts a task,
//! streams its ids, and finishes it; the finisher of the last task completes
//! the job and announces it (`job.completed` on `invalidation.events`). The
//! sweeper and `fleet jobs resume` re-publish tasks that stalled and announce
//! completions that were never confirmed.
//!
//! Every step is idempotent, so a redelivered request, a duplicated task
//! message or a re-run after a crash does no double effect:
//! - the job id is derived from the request id and index key, and a job that
//!   exists is found, not created again;
//! - a task marks only its own row, under a `status <> 'done'` guard;
//! - the job completes under a `state <> 'completed'` guard, so one caller
//!   gets to announce it.
//!
//! The dispatcher, the partition worker, the sweeper and `fleet jobs` all go
//! through this module and never through each other.
//!
//! The window of a task: a task message carries the request's
//! `invalidationTime` in its body and, when the request was replayed with a
//! reset, the request's `x-window-start` as a header of its own (recorded on
//! the job, so re-published tasks carry it too). The retry window of a task
//! that fails then counts from the replay, not from the old time.

use fleet_shared::broker::{headers, with_headers, Outgoing};
use fleet_shared::db::{self, JobRow, NewJob, NewTask, Setback, TaskRow};
use fleet_shared::message::{
    IndexKey, InvalidationRequest, JobCompleted, PartitionTask, CURRENT_VERSION,
};
use fleet_shared::runtime::{Classify, Context, HandlerError};
use fleet_shared::search::PartitionGroup;
use fleet_shared::telemetry;
use fleet_shared::topology::names;
use sqlx::PgPool;
use uuid::Uuid;

/// Namespace of job ids: a job id is derived from the request id and index
/// key, so a redelivered request finds its job instead of creating another.
const JOB_NAMESPACE: Uuid = Uuid::from_u128(0x6a0f_2f4e_83b1_4c59_9a51_0e2b_7d3c_11f0);

/// The id of the job of a request on `index_key`: its request id, the
/// digest of its query ([`InvalidationRequest::query_digest`]) and the key.
/// A redelivery finds its job; another request reusing the id gets its own.
pub fn id(request_id: &str, query_digest: &str, index_key: IndexKey) -> Uuid {
    Uuid::new_v5(
        &JOB_NAMESPACE,
        format!("{request_id}/{query_digest}/{index_key}").as_bytes(),
    )
}

/// The job id of `request` (which carries its request id) on `index_key`.
pub fn id_of(request: &InvalidationRequest, index_key: IndexKey) -> Uuid {
    id(
        request.request_id.as_deref().unwrap_or_default(),
        &request.query_digest(),
        index_key,
    )
}

/// What the dispatcher knows when it splits a request on one index key.
pub struct Split<'a> {
    pub request_id: &'a str,
    pub request: &'a InvalidationRequest,
    pub index_key: IndexKey,
    /// The request's invalidation time (every task's `invalidationTime`).
    pub invalidation_time: i64,
    /// The request's `x-window-start` (a reset replay), if any.
    pub window_start: Option<i64>,
    /// The count of the unsplit query.
    pub total_hits: u64,
    /// The groups of `searchPartition` buckets, one task each.
    pub groups: &'a [PartitionGroup],
}

/// Records the job with its tasks (or finds it, when the request was seen
/// before) and publishes every task that is not done. Returns the job id and
/// how many task messages went out. The job is committed before any task
/// is published, and every publish is confirmed, so the caller may ack.
pub async fn create(
    ctx: &Context,
    pool: &PgPool,
    split: Split<'_>,
) -> Result<(Uuid, usize), HandlerError> {
    let job_id = id(
        split.request_id,
        &split.request.query_digest(),
        split.index_key,
    );
    let tasks: Vec<NewTask> = split
        .groups
        .iter()
        .map(|g| NewTask {
            from: g.from,
            to: g.to,
            expected_hits: g.hits as i64,
        })
        .collect();
    let mut stored = split.request.clone();
    stored.invalidation_time = Some(split.invalidation_time);
    let job = NewJob {
        id: job_id,
        request_id: split.request_id.to_string(),
        invalidation_type: split.request.invalidation_type.to_string(),
        index_key: split.index_key.to_string(),
        parameter_name: split.request.parameter_name.clone(),
        // `unwrap_or_default`: plain data serialises.
        request: serde_json::to_value(&stored).unwrap_or_default(),
        total_hits: split.total_hits as i64,
    };
    let horizon = ctx.config.redis.idempotency_ttl;
    let pending = db::create_job(pool, &job, &tasks, horizon)
        .await
        .transient("database")?;
    // A job found again (a redelivery, a replay) keeps the latest window.
    let window_start = db::widen_job_window(pool, job_id, split.window_start)
        .await
        .transient("database")?;
    tracing::info!(%job_id, request_id = %split.request_id, index_key = %split.index_key, hits = split.total_hits, tasks = tasks.len(), "Split a large request into partition tasks.");
    telemetry::request_split(tasks.len());
    for row in &pending {
        let task = task_message(
            job_id,
            split.request_id,
            split.request,
            split.index_key,
            split.invalidation_time,
            row,
        );
        publish_task_in_window(ctx, &task, window_start).await?;
    }
    Ok((job_id, pending.len()))
}

/// The message of one partition task of a job: the request's query restricted
/// to the task row's `searchPartition` range.
pub fn task_message(
    job_id: Uuid,
    request_id: &str,
    request: &InvalidationRequest,
    index_key: IndexKey,
    invalidation_time: i64,
    row: &TaskRow,
) -> PartitionTask {
    PartitionTask {
        v: CURRENT_VERSION,
        job_id,
        task_no: row.task_no,
        request_id: request_id.to_string(),
        invalidation_type: request.invalidation_type,
        index_key,
        parameter_name: request.parameter_name.clone(),
        parameter_ids: request.parameter_ids.clone(),
        partition_from: row.partition_from,
        partition_to: row.partition_to,
        invalidation_time,
    }
}

/// Publishes one partition task (confirmed). The message id names the job
/// and task, so duplicates are recognisable in the management UI.
pub async fn publish_task(ctx: &Context, task: &PartitionTask) -> Result<(), HandlerError> {
    publish_task_in_window(ctx, task, None).await
}

/// [`publish_task`] for a job whose request was replayed with a reset: the
/// task carries the window start as its `x-window-start` header.
pub async fn publish_task_in_window(
    ctx: &Context,
    task: &PartitionTask,
    window_start: Option<i64>,
) -> Result<(), HandlerError> {
    // `unwrap`: plain data serialises.
    let body = serde_json::to_vec(task).unwrap();
    let mut msg = Outgoing::json(names::PARTITIONS, names::PARTITION_KEY, &body);
    msg.properties = msg
        .properties
        .with_message_id(format!("{}/{}", task.job_id, task.task_no).into());
    if let Some(start) = window_start {
        msg.properties = msg
            .properties
            .with_headers(with_headers(None, &[(headers::WINDOW_START, start.into())]));
    }
    ctx.publisher.publish(msg).await?;
    Ok(())
}

/// What a partition worker should do with a task message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Run it: the row is `running` (this is attempt `n`).
    Run(i32),
    /// The task is done already (a duplicate message). The job was made
    /// sure to be completed; ack the message.
    AlreadyDone,
}

/// Starts a task: marks its row running and counts the attempt. A task done
/// already completes its job if nobody did (the finisher may have died
/// between marking its task and completing the job). A task started more
/// than `partition.max_attempts` times ends `failed` with a permanent error,
/// so its message is dead-lettered rather than looping forever.
pub async fn start_task(
    ctx: &Context,
    pool: &PgPool,
    task: &PartitionTask,
) -> Result<Start, HandlerError> {
    check_task(pool, task).await?;
    let Some(attempt) = db::start_task(pool, task.job_id, task.task_no)
        .await
        .transient("database")?
    else {
        complete_if_done(ctx, pool, task.job_id).await?;
        return Ok(Start::AlreadyDone);
    };
    let max = ctx.config.partition.max_attempts;
    if attempt > max as i32 {
        let error = HandlerError::permanent(
            "task_attempts_exhausted",
            format!(
                "task {}/{} was started {attempt} times without finishing; \
                 partition.max_attempts is {max}",
                task.job_id, task.task_no
            ),
        );
        fail_task(pool, task, &error).await?;
        return Err(error);
    }
    Ok(Start::Run(attempt))
}

/// Refuses a task message that no job of ours wrote: a task its job does
/// not have (the job never existed, or was deleted after its horizon) would
/// otherwise look "already done" and be acked without a trace, and a task
/// whose query differs from its row would run another query under the
/// job's name. Both are permanent (`invalid_job`); the task row, if any,
/// is left as it is, since the message is not the task's own.
async fn check_task(pool: &PgPool, task: &PartitionTask) -> Result<(), HandlerError> {
    let Some(row) = db::task_identity(pool, task.job_id, task.task_no)
        .await
        .transient("database")?
    else {
        return Err(HandlerError::permanent(
            "invalid_job",
            format!(
                "job {} has no task {}: the message was not written by this fleet, or its job is gone",
                task.job_id, task.task_no
            ),
        ));
    };
    let recorded_ids = row
        .request
        .get("parameterIds")
        .and_then(|ids| serde_json::from_value::<Vec<i64>>(ids.clone()).ok());
    let same_ids = |recorded: &[i64]| {
        let set = |ids: &[i64]| {
            ids.iter()
                .copied()
                .collect::<std::collections::BTreeSet<i64>>()
        };
        set(recorded) == set(&task.parameter_ids)
    };
    let differs = [
        ("requestId", row.request_id != task.request_id),
        (
            "invalidationType",
            row.invalidation_type != task.invalidation_type.as_str(),
        ),
        ("indexKey", row.index_key != task.index_key.as_str()),
        ("parameterName", row.parameter_name != task.parameter_name),
        (
            "parameterIds",
            recorded_ids.is_some_and(|ids| !same_ids(&ids)),
        ),
        ("partitionFrom", row.partition_from != task.partition_from),
        ("partitionTo", row.partition_to != task.partition_to),
    ];
    let wrong: Vec<&str> = differs
        .iter()
        .filter(|(_, d)| *d)
        .map(|(f, _)| *f)
        .collect();
    if !wrong.is_empty() {
        return Err(HandlerError::permanent(
            "invalid_job",
            format!(
                "task {} of job {} does not match its job: {} differ",
                task.task_no,
                task.job_id,
                wrong.join(", ")
            ),
        ));
    }
    Ok(())
}

/// Records that a task's message is being dead-lettered: the row ends
/// `failed` with the reason, so the sweeper leaves it alone and `jobs show`
/// says why.
pub async fn fail_task(
    pool: &PgPool,
    task: &PartitionTask,
    error: &HandlerError,
) -> Result<(), HandlerError> {
    set_back(pool, task, Setback::Failed, &error.to_string()).await
}

/// Records that a task failed transiently and waits in the retry delay
/// queue: the sweeper gives it `retry.delay` to come back by itself.
pub async fn retry_task(
    pool: &PgPool,
    task: &PartitionTask,
    error: &HandlerError,
) -> Result<(), HandlerError> {
    set_back(pool, task, Setback::Retrying, &error.to_string()).await
}

async fn set_back(
    pool: &PgPool,
    task: &PartitionTask,
    setback: Setback,
    error: &str,
) -> Result<(), HandlerError> {
    db::set_back_task(pool, task.job_id, task.task_no, setback, error)
        .await
        .transient("database")
}

/// Records that a task's message was parked (the retry handler gave up on it).
pub async fn park_task(
    pool: &PgPool,
    task: &PartitionTask,
    reason: &str,
) -> Result<(), HandlerError> {
    set_back(pool, task, Setback::Parked, reason).await
}

/// Keeps a running task's row fresh until dropped, so the sweeper can tell a
/// slow task (or one waiting for a search permit) from a dead one.
pub struct Heartbeat {
    /// Cancels the ticker when the heartbeat is dropped.
    _stop: tokio_util::sync::DropGuard,
}

impl Heartbeat {
    pub fn start(ctx: &Context, pool: &PgPool, task: &PartitionTask) -> Self {
        let token = tokio_util::sync::CancellationToken::new();
        let stop = token.clone();
        let (pool, job_id, task_no) = (pool.clone(), task.job_id, task.task_no);
        let every = ctx.config.partition.heartbeat;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(every) => {}
                }
                if let Err(error) = db::heartbeat(&pool, job_id, task_no).await {
                    tracing::warn!(%error, %job_id, task_no, "Could not record the task's heartbeat.");
                }
            }
        });
        Self {
            _stop: token.drop_guard(),
        }
    }
}

/// Marks a task done with its hit count, then completes and announces the
/// job if that was its last task.
pub async fn finish_task(
    ctx: &Context,
    pool: &PgPool,
    task: &PartitionTask,
    hits: u64,
    missing_ids: u64,
) -> Result<(), HandlerError> {
    db::finish_task(
        pool,
        task.job_id,
        task.task_no,
        hits as i64,
        missing_ids as i64,
    )
    .await
    .transient("database")?;
    // Whether or not this call flipped the row: a duplicate that finds the
    // task done must still complete a job whose finisher died in between.
    complete_if_done(ctx, pool, task.job_id).await
}

/// Completes the job when no task is left and announces it. Only the caller
/// whose update flipped the job's state announces.
pub async fn complete_if_done(
    ctx: &Context,
    pool: &PgPool,
    job_id: Uuid,
) -> Result<(), HandlerError> {
    if let Some(job) = db::complete_job_if_done(pool, job_id)
        .await
        .transient("database")?
    {
        announce(ctx, pool, &job).await?;
    }
    Ok(())
}

/// Publishes the completion event of a job and records that it was confirmed.
pub async fn announce(ctx: &Context, pool: &PgPool, job: &JobRow) -> Result<(), HandlerError> {
    let completed = job.completed_at.unwrap_or_else(chrono::Utc::now);
    let hits: i64 = db::tasks(pool, job.id)
        .await
        .transient("database")?
        .iter()
        .filter_map(|t| t.hits)
        .sum();
    let event = JobCompleted {
        v: CURRENT_VERSION,
        job_id: job.id,
        request_id: job.request_id.clone(),
        invalidation_type: job
            .invalidation_type
            .parse()
            .map_err(|e: String| HandlerError::permanent("invalid_job", e))?,
        index_key: job
            .index_key
            .parse()
            .map_err(|e: String| HandlerError::permanent("invalid_job", e))?,
        tasks: job.task_count,
        hits,
        created_at: job.created_at.timestamp_millis(),
        completed_at: completed.timestamp_millis(),
    };
    // `unwrap`: plain data serialises.
    let body = serde_json::to_vec(&event).unwrap();
    let mut msg = Outgoing::json(names::EVENTS, names::JOB_COMPLETED, &body);
    msg.properties = msg
        .properties
        .with_message_id(format!("job.completed/{}", job.id).into());
    ctx.publisher.publish(msg).await?;
    db::mark_event_published(pool, job.id)
        .await
        .transient("database")?;
    let took = (completed - job.created_at).to_std().unwrap_or_default();
    telemetry::job_completed(took);
    tracing::info!(job_id = %job.id, request_id = %job.request_id, hits, tasks = job.task_count, "Job completed.");
    Ok(())
}

/// Re-publishes the tasks of a job that are not done (sweeper and `jobs resume`).
pub async fn republish_pending(
    ctx: &Context,
    job: &JobRow,
    tasks: &[TaskRow],
) -> Result<usize, HandlerError> {
    let request: InvalidationRequest = serde_json::from_value(job.request.clone())
        .map_err(|e| HandlerError::permanent("invalid_job", e))?;
    let index_key = job
        .index_key
        .parse()
        .map_err(|e: String| HandlerError::permanent("invalid_job", e))?;
    let time = request
        .invalidation_time
        .unwrap_or_else(|| job.created_at.timestamp_millis());
    let mut n = 0;
    for t in tasks
        .iter()
        .filter(|t| matches!(t.status.as_str(), "pending" | "running" | "retrying"))
    {
        let task = task_message(job.id, &job.request_id, &request, index_key, time, t);
        publish_task_in_window(ctx, &task, job.window_start).await?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_stable_per_request_content_and_key() {
        assert_eq!(id("r", "d", IndexKey::TrTr), id("r", "d", IndexKey::TrTr));
        assert_ne!(id("r", "d", IndexKey::TrTr), id("r", "d", IndexKey::DeDe));
        assert_ne!(id("r", "d", IndexKey::TrTr), id("s", "d", IndexKey::TrTr));
        assert_ne!(id("r", "d", IndexKey::TrTr), id("r", "e", IndexKey::TrTr));
    }
}
