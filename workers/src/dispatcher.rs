//! The dispatcher (SPEC §3): validate a request, resolve it to content ids
//! in place when small, or split it into a job of partition tasks when large.

use std::sync::Arc;

use fleet_shared::broker::Outgoing;
use fleet_shared::config::{Config, FieldRule};
use fleet_shared::db::{self, NewJob, NewTask};
use fleet_shared::kv::Kv;
use fleet_shared::message::{
    new_request_id, now_millis, IndexKey, InvalidationRequest, PartitionTask, CURRENT_VERSION,
};
use fleet_shared::runtime::{Classify, Context, Handler, HandlerError, Incoming};
use fleet_shared::search::{group_partitions, terms_query, Search, SearchError};
use fleet_shared::telemetry;
use fleet_shared::topology::names;
use futures::StreamExt;
use sqlx::PgPool;
use uuid::Uuid;

use crate::batcher::{Batcher, Origin};

/// Idempotency scope of processed requests in Redis.
pub const REQUEST_SCOPE: &str = "request";

/// Namespace of job ids: a job id is derived from the request id and index
/// key, so a redelivered request finds its job instead of creating another.
const JOB_NAMESPACE: Uuid = Uuid::from_u128(0x6a0f_2f4e_83b1_4c59_9a51_0e2b_7d3c_11f0);

pub fn job_id(request_id: &str, index_key: IndexKey) -> Uuid {
    Uuid::new_v5(
        &JOB_NAMESPACE,
        format!("{request_id}/{index_key}").as_bytes(),
    )
}

pub struct Dispatcher {
    pub ctx: Context,
    pub search: Search,
    pub db: PgPool,
    pub kv: Kv,
    pub batcher: Batcher,
}

/// A request that passed validation, with what the allow-list says of its field.
#[derive(Debug, Clone)]
pub struct Validated {
    pub request: InvalidationRequest,
    pub request_id: String,
    pub index_keys: Vec<IndexKey>,
    pub rule: FieldRule,
}

/// Checks a request against the configuration; every failure is permanent.
pub fn validate(
    config: &Config,
    mut request: InvalidationRequest,
) -> Result<Validated, HandlerError> {
    let d = &config.dispatcher;
    if request.parameter_ids.is_empty() {
        return Err(HandlerError::permanent(
            "empty_ids",
            "parameterIds is empty",
        ));
    }
    if request.parameter_ids.len() > d.max_ids {
        return Err(HandlerError::permanent(
            "too_many_ids",
            format!(
                "{} parameterIds; at most {} are allowed per request (dispatcher.max_ids)",
                request.parameter_ids.len(),
                d.max_ids
            ),
        ));
    }
    let Some(rule) = d.fields.get(&request.parameter_name).cloned() else {
        let allowed: Vec<&str> = d.fields.keys().map(String::as_str).collect();
        return Err(HandlerError::permanent(
            "forbidden_field",
            format!(
                "parameterName {:?} is not on the allow-list ({})",
                request.parameter_name,
                allowed.join(", ")
            ),
        ));
    };
    for k in &request.index_keys {
        if !d.index_keys.contains(k) {
            return Err(HandlerError::permanent(
                "unknown_index_key",
                format!("index key {k} is not served by this fleet (dispatcher.index_keys)"),
            ));
        }
    }
    let index_keys = if request.index_keys.is_empty() {
        d.index_keys.clone()
    } else {
        let mut keys = request.index_keys.clone();
        keys.dedup();
        keys
    };
    let request_id = match &request.request_id {
        Some(id) if !id.is_empty() => id.clone(),
        _ => {
            let id = new_request_id();
            request.request_id = Some(id.clone());
            id
        }
    };
    Ok(Validated {
        request,
        request_id,
        index_keys,
        rule,
    })
}

/// The nested path of a field, when the allow-list says it is nested.
pub fn nested_path(rule: &FieldRule) -> Option<&str> {
    if rule.nested {
        rule.path.as_deref()
    } else {
        None
    }
}

pub fn search_error(e: SearchError) -> HandlerError {
    if e.is_transient() {
        HandlerError::transient(e.class(), e)
    } else {
        HandlerError::permanent(e.class(), e)
    }
}

impl Handler for Dispatcher {
    async fn handle(&self, msg: &Incoming) -> Result<(), HandlerError> {
        let request = InvalidationRequest::decode(msg.body())
            .map_err(|e| HandlerError::permanent(e.class(), e))?;
        let v = validate(&self.ctx.config, request)?;
        // A retry must keep the request id generated at first sight.
        let tag = |e: HandlerError| match e {
            HandlerError::Transient { .. } => e.with_body(v.request.encode()),
            permanent => permanent,
        };
        // Requests naming content ids cost one publish: a duplicate only
        // repeats ids downstream, which is harmless, and is cheaper than the
        // Redis round trip that would prevent it. Requests that search are
        // remembered in Redis so a redelivery does not search again.
        let remembered = v.request.parameter_name != "id";
        if remembered
            && self
                .kv
                .is_done(REQUEST_SCOPE, &v.request_id)
                .await
                .transient("redis")
                .map_err(tag)?
        {
            tracing::debug!(request_id = %v.request_id, "Request already processed; acking the duplicate.");
            return Ok(());
        }
        self.dispatch(&v).await.map_err(tag)?;
        if remembered {
            // The outputs are confirmed and the delivery is acked next; the
            // mark only guards against a later duplicate, so it need not
            // hold up the ack.
            let kv = self.kv.clone();
            let request_id = v.request_id.clone();
            tokio::spawn(async move {
                if let Err(error) = kv.mark_done(REQUEST_SCOPE, &request_id).await {
                    tracing::warn!(%error, %request_id, "Could not record the request as done.");
                }
            });
        }
        Ok(())
    }
}

impl Dispatcher {
    pub fn new(ctx: Context, search: Search, db: PgPool, kv: Kv) -> Arc<Self> {
        let batcher = Batcher::for_context(&ctx);
        Arc::new(Self {
            ctx,
            search,
            db,
            kv,
            batcher,
        })
    }

    async fn dispatch(&self, v: &Validated) -> Result<(), HandlerError> {
        let r = &v.request;
        let time = r.invalidation_time.unwrap_or_else(now_millis);
        let max_in_flight = self.ctx.config.partition.max_in_flight_batches.max(4);
        if r.parameter_name == "id" {
            // The ids are the content ids: no search.
            let mut sink = self.batcher.sink(max_in_flight);
            for &key in &v.index_keys {
                let origin = self.origin(v, key, time);
                sink.push(&origin, &r.parameter_ids).await?;
            }
            sink.finish().await?;
            return Ok(());
        }
        for &key in &v.index_keys {
            let index = self.search.config().index_for(key).to_string();
            let query = terms_query(&r.parameter_name, &r.parameter_ids, nested_path(&v.rule));
            let count = self
                .search
                .count(&index, &query)
                .await
                .map_err(search_error)?;
            if count == 0 {
                continue;
            }
            if count <= self.ctx.config.dispatcher.split_limit {
                let origin = self.origin(v, key, time);
                let mut sink = self.batcher.sink(max_in_flight);
                let mut pages = std::pin::pin!(self.search.scan(&index, query));
                let mut without_id = 0;
                while let Some(page) = pages.next().await {
                    let page = page.map_err(search_error)?;
                    without_id += page.missing_ids;
                    sink.push(&origin, &page.ids).await?;
                }
                sink.finish().await?;
                telemetry::hits_without_id(
                    &self.ctx.identity.worker,
                    &v.request_id,
                    &index,
                    without_id,
                );
            } else {
                self.split(v, key, &index, &query, count, time).await?;
            }
        }
        Ok(())
    }

    fn origin(&self, v: &Validated, key: IndexKey, time: i64) -> Origin {
        Origin {
            invalidation_type: v.request.invalidation_type,
            index_key: key,
            request_id: v.request_id.clone(),
            invalidation_time: time,
        }
    }

    /// Over the split limit: histogram, groups, a job with its tasks, then one
    /// task message per group. The job is committed before the request is acked.
    async fn split(
        &self,
        v: &Validated,
        key: IndexKey,
        index: &str,
        query: &serde_json::Value,
        count: u64,
        time: i64,
    ) -> Result<(), HandlerError> {
        let buckets = self
            .search
            .partition_histogram(index, query)
            .await
            .map_err(search_error)?;
        let groups = group_partitions(&buckets, self.ctx.config.dispatcher.split_limit);
        let tasks: Vec<NewTask> = groups
            .iter()
            .map(|g| NewTask {
                from: g.from,
                to: g.to,
                expected_hits: g.hits as i64,
            })
            .collect();
        let mut stored = v.request.clone();
        stored.invalidation_time = Some(time);
        let job = NewJob {
            id: job_id(&v.request_id, key),
            request_id: v.request_id.clone(),
            invalidation_type: v.request.invalidation_type.to_string(),
            index_key: key.to_string(),
            parameter_name: v.request.parameter_name.clone(),
            request: serde_json::to_value(&stored).unwrap_or_default(),
            total_hits: count as i64,
        };
        let pending = db::create_job(&self.db, &job, &tasks)
            .await
            .transient("database")?;
        tracing::info!(job_id = %job.id, request_id = %v.request_id, index_key = %key, hits = count, tasks = tasks.len(), "Split a large request into partition tasks.");
        telemetry::request_split(tasks.len());
        for t in &pending {
            let task = task_message(job.id, &v.request_id, &v.request, key, time, t);
            publish_task(&self.ctx, &task).await?;
        }
        Ok(())
    }
}

/// The message of one partition task of a job: the request's query restricted
/// to the task row's `searchPartition` range.
pub fn task_message(
    job_id: Uuid,
    request_id: &str,
    request: &InvalidationRequest,
    index_key: IndexKey,
    invalidation_time: i64,
    row: &db::TaskRow,
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

/// Publishes one partition task (confirmed).
pub async fn publish_task(ctx: &Context, task: &PartitionTask) -> Result<(), HandlerError> {
    // `unwrap`: plain data serialises.
    let body = serde_json::to_vec(task).unwrap();
    let mut msg = Outgoing::json(names::PARTITIONS, names::PARTITION_KEY, &body);
    msg.properties = msg
        .properties
        .with_message_id(format!("{}/{}", task.job_id, task.task_no).into());
    ctx.publisher.publish(msg).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_shared::message::InvalidationType;

    fn req(name: &str, ids: Vec<i64>) -> InvalidationRequest {
        InvalidationRequest {
            v: 1,
            request_id: None,
            parameter_ids: ids,
            parameter_name: name.into(),
            is_nested_type: false,
            nested_path_name: None,
            invalidation_type: InvalidationType::Price,
            index_keys: vec![],
            invalidation_time: None,
        }
    }

    #[test]
    fn validation_refuses_what_the_allow_list_does_not_allow() {
        let c = Config::default();
        let class = |r| validate(&c, r).unwrap_err().class().to_string();
        assert_eq!(class(req("price.amount", vec![1])), "forbidden_field");
        assert_eq!(class(req("brand.id", vec![])), "empty_ids");
        assert_eq!(class(req("id", (0..10_001).collect())), "too_many_ids");
        let ok = validate(&c, req("listings.merchantId", vec![1])).unwrap();
        assert!(ok.rule.nested);
        assert_eq!(ok.index_keys.len(), 7);
        assert!(ok.request.request_id.is_some());
    }

    #[test]
    fn job_ids_are_stable_per_request_and_key() {
        assert_eq!(job_id("r", IndexKey::TrTr), job_id("r", IndexKey::TrTr));
        assert_ne!(job_id("r", IndexKey::TrTr), job_id("r", IndexKey::DeDe));
    }
}
