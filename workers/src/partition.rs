//! The partition worker (SPEC §3): runs one partition query, streams its
//! content ids out in batches, marks its own task row done, and — when it was
//! the last task of the job — publishes the job's one completion event.

use std::sync::Arc;

use fleet_shared::message::PartitionTask;
use fleet_shared::runtime::{Context, Handler, HandlerError, Incoming};
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
        let Some(rule) = self.ctx.config.dispatcher.fields.get(&task.parameter_name) else {
            return Err(HandlerError::permanent(
                "forbidden_field",
                format!(
                    "parameterName {:?} is not on the allow-list",
                    task.parameter_name
                ),
            ));
        };
        if !job::start_task(&self.db, &task).await? {
            tracing::debug!(job_id = %task.job_id, task_no = task.task_no, "Task already done; acking the duplicate.");
            return Ok(());
        }
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
        while let Some(page) = pages.next().await {
            sink.push(&origin, &page?).await?;
        }
        let hits = sink.finish().await?;
        telemetry::partition_hits(hits);
        job::finish_task(&self.ctx, &self.db, &task, hits).await
    }
}
