//! The partition worker (SPEC §3): runs one partition query, streams its
//! content ids out in batches, marks its own task row done, and — when it was
//! the last task of the job — publishes the job's one completion event.

use std::sync::Arc;

use fleet_shared::broker::Outgoing;
use fleet_shared::db::{self, JobRow};
use fleet_shared::message::{JobCompleted, PartitionTask, CURRENT_VERSION};
use fleet_shared::runtime::{Classify, Context, Handler, HandlerError, Incoming};
use fleet_shared::search::{terms_query, with_partition_range, Search};
use fleet_shared::telemetry;
use fleet_shared::topology::names;
use futures::StreamExt;
use sqlx::PgPool;

use crate::batcher::{Batcher, Origin};
use crate::dispatcher::{nested_path, search_error};

pub struct PartitionWorker {
    pub ctx: Context,
    pub search: Search,
    pub db: PgPool,
    pub batcher: Batcher,
}

impl PartitionWorker {
    pub fn new(ctx: Context, search: Search, db: PgPool) -> Arc<Self> {
        let batcher = Batcher::for_context(&ctx);
        Arc::new(Self {
            ctx,
            search,
            db,
            batcher,
        })
    }
}

impl Handler for PartitionWorker {
    async fn handle(&self, msg: &Incoming) -> Result<(), HandlerError> {
        let task =
            PartitionTask::decode(msg.body()).map_err(|e| HandlerError::permanent(e.class(), e))?;
        let Some(rule) = self.ctx.config.dispatcher.fields.get(&task.parameter_name) else {
            return Err(HandlerError::permanent(
                "forbidden_field",
                format!(
                    "parameterName {:?} is not on the allow-list",
                    task.parameter_name
                ),
            ));
        };
        if !db::start_task(&self.db, task.job_id, task.task_no)
            .await
            .transient("database")?
        {
            tracing::debug!(job_id = %task.job_id, task_no = task.task_no, "Task already done; acking the duplicate.");
            return Ok(());
        }
        let index = self.search.config().index_for(task.index_key).to_string();
        let query = with_partition_range(
            &terms_query(&task.parameter_name, &task.parameter_ids, nested_path(rule)),
            task.partition_from,
            task.partition_to,
        );
        let origin = Origin {
            invalidation_type: task.invalidation_type,
            index_key: task.index_key,
            request_id: task.request_id.clone(),
            invalidation_time: task.invalidation_time,
        };
        let mut sink = self
            .batcher
            .sink(self.ctx.config.partition.max_in_flight_batches);
        let mut pages = std::pin::pin!(self.search.scan(&index, query));
        let mut without_id = 0;
        while let Some(page) = pages.next().await {
            let page = page.map_err(search_error)?;
            without_id += page.missing_ids;
            sink.push(&origin, &page.ids).await?;
        }
        let hits = sink.finish().await?;
        // TODO(job): report missing ids in jobs show (the task row's figure).
        telemetry::hits_without_id(
            &self.ctx.identity.worker,
            &task.request_id,
            &index,
            without_id,
        );
        telemetry::partition_hits(hits);
        if db::finish_task(&self.db, task.job_id, task.task_no, hits as i64)
            .await
            .transient("database")?
        {
            if let Some(job) = db::complete_job_if_done(&self.db, task.job_id)
                .await
                .transient("database")?
            {
                announce(&self.ctx, &self.db, &job).await?;
            }
        }
        Ok(())
    }
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
    tasks: &[db::TaskRow],
) -> Result<usize, HandlerError> {
    let request: fleet_shared::message::InvalidationRequest =
        serde_json::from_value(job.request.clone())
            .map_err(|e| HandlerError::permanent("invalid_job", e))?;
    let index_key = job
        .index_key
        .parse()
        .map_err(|e: String| HandlerError::permanent("invalid_job", e))?;
    let time = request
        .invalidation_time
        .unwrap_or_else(|| job.created_at.timestamp_millis());
    let mut n = 0;
    for t in tasks.iter().filter(|t| t.status != "done") {
        let task =
            crate::dispatcher::task_message(job.id, &job.request_id, &request, index_key, time, t);
        crate::dispatcher::publish_task(ctx, &task).await?;
        n += 1;
    }
    Ok(n)
}
