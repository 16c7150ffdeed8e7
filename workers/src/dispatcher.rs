//! The dispatcher (SPEC §3): validate a request, resolve it to content ids
//! in place when small, or split it into a job of partition tasks when large.

use std::sync::Arc;

use fleet_shared::broker::headers;
use fleet_shared::config::{Config, FieldRule};
use fleet_shared::kv::Kv;
use fleet_shared::message::{derived_request_id, now_millis, IndexKey, InvalidationRequest};
use fleet_shared::runtime::{self, Context, Handler, HandlerError, Incoming};
use fleet_shared::search::{group_partitions, terms_query, Search};
use fleet_shared::telemetry;
use fleet_shared::window;
use futures::StreamExt;
use sqlx::PgPool;

use crate::batcher::{Batcher, Origin};
use crate::job;
use crate::lanes::{self, Lanes, Verdict};

/// Idempotency scope of processed requests in Redis.
pub const REQUEST_SCOPE: &str = "request";

pub struct Dispatcher {
    pub ctx: Context,
    pub search: Search,
    pub db: PgPool,
    pub kv: Kv,
    pub batcher: Batcher,
    /// Which lane each request type belongs on (the topology's bindings).
    pub lanes: Lanes,
}

/// A request that passed validation, with what the allow-list says of its field.
#[derive(Debug, Clone)]
pub struct Validated {
    pub request: InvalidationRequest,
    pub request_id: String,
    pub index_keys: Vec<IndexKey>,
    pub rule: FieldRule,
}

/// The longest `requestId` or `nestedPathName` accepted, in bytes.
pub const MAX_TEXT_BYTES: usize = 256;

/// Checks a request against the configuration; every failure is permanent.
pub fn validate(
    config: &Config,
    mut request: InvalidationRequest,
    body: &[u8],
) -> Result<Validated, HandlerError> {
    let d = &config.dispatcher;
    // Free text that is stored (job rows, Redis keys, logs): PostgreSQL
    // refuses NUL in text and jsonb, so such a request would fail on every
    // retry as if the database were down. Refused once, here.
    for (field, value) in [
        ("requestId", request.request_id.as_deref()),
        ("nestedPathName", request.nested_path_name.as_deref()),
    ] {
        if let Some(v) = value {
            if v.len() > MAX_TEXT_BYTES || v.chars().any(char::is_control) {
                return Err(HandlerError::permanent(
                    "invalid_message",
                    format!(
                        "{field} must be at most {MAX_TEXT_BYTES} bytes without control characters"
                    ),
                ));
            }
        }
    }
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
        // Each key once, in the order first given: `[trTR, deDE, trTR]`
        // must not run trTR twice.
        let mut keys: Vec<IndexKey> = Vec::with_capacity(request.index_keys.len());
        for &k in &request.index_keys {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        keys
    };
    let request_id = match &request.request_id {
        Some(id) if !id.is_empty() => id.clone(),
        _ => {
            // Derived from the message, so a redelivery gets the same id.
            let id = derived_request_id(body);
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

/// Everything the dispatcher checks of a request body before it does any
/// work, in the order it checks it: the body's size, its decoding, the
/// sanity of its time (from `window_start`, an operator's reset replay) and
/// [`validate`]. `fleet publish` calls this too, so the CLI refuses exactly
/// what the dispatcher would dead-letter, with the same class and reason.
pub fn check(
    config: &Config,
    body: &[u8],
    window_start: Option<i64>,
) -> Result<Validated, HandlerError> {
    runtime::check_body_size(config, body)?;
    admit(config, body, window_start, now_millis(), |_| {})
}

/// [`check`] after the size check, at time `now`: decode, the sanity of its
/// time (judged from the window start, so a request replayed with a reset
/// passes with its old time), validation. `decoded` sees the request as
/// soon as it decodes. The fuzz target `validate` calls exactly this.
pub fn admit(
    config: &Config,
    body: &[u8],
    window_start: Option<i64>,
    now: i64,
    decoded: impl FnOnce(&InvalidationRequest),
) -> Result<Validated, HandlerError> {
    let request = decode(body)?;
    decoded(&request);
    check_decoded(config, request, body, window_start, now)
}

/// Decodes a request body; a failure is permanent, classed by the decoder.
fn decode(body: &[u8]) -> Result<InvalidationRequest, HandlerError> {
    InvalidationRequest::decode(body).map_err(|e| HandlerError::permanent(e.class(), e))
}

/// [`admit`] after decoding.
fn check_decoded(
    config: &Config,
    request: InvalidationRequest,
    body: &[u8],
    window_start: Option<i64>,
    now: i64,
) -> Result<Validated, HandlerError> {
    window::check(
        request.invalidation_time,
        window_start,
        now,
        config.retry.window,
        config.retry.clock_slack,
    )
    .map_err(|e| HandlerError::permanent(window::BAD_TIME, e))?;
    validate(config, request, body)
}

impl Handler for Dispatcher {
    async fn handle(&self, msg: &Incoming) -> Result<(), HandlerError> {
        // The body's size was checked by the runtime before this handler.
        let request = decode(msg.body())?;
        let named = request
            .request_id
            .as_deref()
            .is_some_and(|id| !id.is_empty());
        if let Some(id) = request.request_id.as_deref() {
            runtime::record_request(id);
        }
        // An operator's reset replay: the window counts from here.
        let window_start = msg
            .header(headers::WINDOW_START)
            .and_then(|t| t.parse::<i64>().ok());
        // The lane rule: a request on a lane its type does not belong to
        // goes to the right one, where it is validated like any other.
        match self
            .lanes
            .on_lane(&msg.queue, request.invalidation_type, lanes::rerouted(msg))
        {
            Verdict::Here => {}
            Verdict::Reroute(key) => return lanes::reroute(&self.ctx, msg, &key).await,
            Verdict::Refuse(class, why) => return Err(HandlerError::permanent(class, why)),
        }
        let v = check_decoded(
            &self.ctx.config,
            request,
            msg.body(),
            window_start,
            now_millis(),
        )?;
        if !named {
            // The id generated for a request that came without one.
            runtime::record_request(&v.request_id);
        }
        // A retry must keep the request id generated at first sight.
        let tag = |e: HandlerError| match e {
            HandlerError::Transient { .. } => e.with_body(v.request.encode()),
            permanent => permanent,
        };
        // Requests naming content ids cost one publish: a duplicate only
        // repeats ids downstream, which is harmless, and is cheaper than the
        // Redis round trip that would prevent it. Requests that search are
        // remembered in Redis so a redelivery does not search again.
        //
        // The de-duplication key is the request id with a digest of what
        // the request asks: a producer that reuses an id for another
        // request gets that request processed, never silently dropped.
        let digest =
            (v.request.parameter_name != "id").then(|| v.request.content_digest(&v.index_keys));
        if let Some(digest) = &digest {
            match self.kv.done(REQUEST_SCOPE, &v.request_id).await {
                Ok(Some(done)) if &done == digest => {
                    tracing::debug!(request_id = %v.request_id, "Request already processed; acking the duplicate.");
                    return Ok(());
                }
                Ok(Some(_)) => {
                    tracing::warn!(request_id = %v.request_id, invalidation_type = %v.request.invalidation_type, parameter_name = %v.request.parameter_name, "Request id reused by a different request; processing it as a request of its own.");
                    telemetry::request_id_reused();
                }
                Ok(None) => {}
                Err(error) => {
                    // Redis only prevents repeated work; without it the
                    // request still goes out (a redelivery may repeat ids
                    // downstream, which is harmless).
                    tracing::warn!(%error, request_id = %v.request_id, "Redis unavailable; processing the request without de-duplication.");
                    telemetry::dedup_skipped();
                }
            }
        }
        self.dispatch(&v, window_start).await.map_err(tag)?;
        if let Some(digest) = digest {
            // The outputs are confirmed and the delivery is acked next; the
            // mark only guards against a later duplicate, so it need not
            // hold up the ack.
            let kv = self.kv.clone();
            let request_id = v.request_id.clone();
            tokio::spawn(async move {
                if let Err(error) = kv.mark_done(REQUEST_SCOPE, &request_id, &digest).await {
                    tracing::warn!(%error, %request_id, "Could not record the request as done.");
                }
            });
        }
        Ok(())
    }
}

impl Dispatcher {
    pub fn new(ctx: Context, search: Search, db: PgPool, kv: Kv, lanes: Lanes) -> Arc<Self> {
        let batcher = Batcher::for_context(&ctx);
        Arc::new(Self {
            ctx,
            search,
            db,
            kv,
            batcher,
            lanes,
        })
    }

    async fn dispatch(&self, v: &Validated, window_start: Option<i64>) -> Result<(), HandlerError> {
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
            let query = terms_query(&r.parameter_name, &r.parameter_ids, v.rule.nested_path());
            let count = self.search.count(&index, &query).await?;
            if count == 0 {
                continue;
            }
            if count <= self.ctx.config.dispatcher.split_limit {
                let origin = self.origin(v, key, time);
                let mut sink = self.batcher.sink(max_in_flight);
                let mut pages = std::pin::pin!(self.search.scan(&index, query));
                let mut without_id = 0;
                while let Some(page) = pages.next().await {
                    let page = page?;
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
                self.split(v, key, &index, &query, count, (time, window_start))
                    .await?;
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
        (time, window_start): (i64, Option<i64>),
    ) -> Result<(), HandlerError> {
        let buckets = self.search.partition_histogram(index, query).await?;
        let groups = group_partitions(&buckets, self.ctx.config.dispatcher.split_limit);
        job::create(
            &self.ctx,
            &self.db,
            job::Split {
                request_id: &v.request_id,
                request: &v.request,
                index_key: key,
                invalidation_time: time,
                window_start,
                total_hits: count,
                groups: &groups,
            },
        )
        .await?;
        Ok(())
    }
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
        let class = |r| validate(&c, r, b"{}").unwrap_err().class().to_string();
        assert_eq!(class(req("price.amount", vec![1])), "forbidden_field");
        assert_eq!(class(req("brand.id", vec![])), "empty_ids");
        assert_eq!(class(req("id", (0..10_001).collect())), "too_many_ids");
        let mut r = req("brand.id", vec![1]);
        r.request_id = Some("evil\u{0}id".into());
        assert_eq!(class(r), "invalid_message");
        let mut r = req("brand.id", vec![1]);
        r.nested_path_name = Some("x".repeat(MAX_TEXT_BYTES + 1));
        assert_eq!(class(r), "invalid_message");
        let ok = validate(&c, req("listings.merchantId", vec![1]), b"{}").unwrap();
        assert!(ok.rule.nested);
        assert_eq!(ok.index_keys.len(), 7);
        assert!(ok.request.request_id.is_some());
    }
}
