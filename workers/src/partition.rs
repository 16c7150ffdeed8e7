//! The partition worker (SPEC §3): runs one partition query, streams its
//! content ids out in batches, marks its own task row done, and — when it was
//! the last task of the job — publishes the job's one completion event.

use std::sync::Arc;

use fleet_shared::message::PartitionTask;
use fleet_shared::runtime::{self, Context, Handler, HandlerError, Incoming};
use fleet_shared::search::{terms_query, with_partition_range, Search};
use fleet_shared::telemetry;
use futures::StreamExt;
use sqlx::PgPool;

use crate::batcher::{Batcher, Origin};
use crate::job;

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
        runtime::record_task(&task.request_id, &task.job_id, task.task_no);
        match job::start_task(&self.ctx, &self.db, &task).await? {
            job::Start::AlreadyDone => {
                tracing::debug!(job_id = %task.job_id, task_no = task.task_no, "Task already done; acking the duplicate.");
                return Ok(());
            }
            job::Start::Run(attempt) => {
                tracing::debug!(job_id = %task.job_id, task_no = task.task_no, attempt, "Running a partition task.");
            }
        }
        let _alive = job::Heartbeat::start(&self.ctx, &self.db, &task);
        match self.run(&task).await {
            Ok(s) => job::finish_task(&self.ctx, &self.db, &task, s.hits, s.without_id).await,
            Err(error) => {
                // The row says where the message goes next, so the sweeper
                // re-publishes neither a dead letter nor a waiting retry. A
                // database failure here is only logged: the message's own
                // path matters more, and the sweeper's horizon covers it.
                let noted = match error {
                    HandlerError::Permanent { .. } => job::fail_task(&self.db, &task, &error).await,
                    HandlerError::Transient { .. } => {
                        job::retry_task(&self.db, &task, &error).await
                    }
                };
                if let Err(db_error) = noted {
                    tracing::warn!(error = %db_error, job_id = %task.job_id, task_no = task.task_no, "Could not record the task's setback.");
                }
                Err(error)
            }
        }
    }
}

/// What one task's scan did.
struct Streamed {
    /// Ids published (confirmed).
    hits: u64,
    /// Hits without a usable `id`: counted, never published (`jobs show`).
    without_id: u64,
}

impl PartitionWorker {
    /// Streams the task's ids out.
    async fn run(&self, task: &PartitionTask) -> Result<Streamed, HandlerError> {
        let Some(rule) = self.ctx.config.dispatcher.fields.get(&task.parameter_name) else {
            return Err(HandlerError::permanent(
                "forbidden_field",
                format!(
                    "parameterName {:?} is not on the allow-list",
                    task.parameter_name
                ),
            ));
        };
        let index = self.search.config().index_for(task.index_key).to_string();
        let query = with_partition_range(
            &terms_query(
                &task.parameter_name,
                &task.parameter_ids,
                rule.nested_path(),
            ),
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
            let page = page?;
            without_id += page.missing_ids;
            sink.push(&origin, &page.ids).await?;
        }
        let hits = sink.finish().await?;
        telemetry::hits_without_id(
            &self.ctx.identity.worker,
            &task.request_id,
            &index,
            without_id,
        );
        telemetry::partition_hits(hits);
        Ok(Streamed { hits, without_id })
    }
}
