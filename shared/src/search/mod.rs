//! The search side: turning a request into a query, counting it, the
//! `searchPartition` histogram and split, and streaming content ids with
//! `search_after` (inside a point in time where the server offers one).
//!
//! Elasticsearch 8 and OpenSearch differ only in the point-in-time endpoints;
//! `search.flavor` picks them. Everything else is the same search API.
//!
//! Every answer used is complete: counts, aggregations and pages ask for
//! `allow_partial_search_results=false`, and an HTTP 200 that still reports a
//! failed shard or `timed_out` is an error ([`SearchError::Partial`]), never
//! a smaller result. Every call (count, histogram page, scan page, point in
//! time open and close) takes a slot of the process's adaptive concurrency
//! limit ([`limiter`]) and backs off locally when the cluster pushes back.

mod error;
pub mod limiter;
mod split;

use crate::error::{Service, ServiceError};
use std::ops::Deref;
use std::time::{Duration, Instant};

use elasticsearch::cert::{Certificate, CertificateValidation};
use elasticsearch::http::headers::HeaderMap;
use elasticsearch::http::request::JsonBody;
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::http::{Method, Url};
use elasticsearch::Elasticsearch;
use futures::Stream;
use rand::Rng;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::broker::redact;
use crate::config::{SearchConfig, SearchFlavor};
use crate::telemetry;

pub use error::{classify, SearchError};
pub use limiter::Limiter;
pub use split::{group_partitions, terms_query, with_partition_range, Histogram, PartitionGroup};

/// Added to every count, aggregation and page: a shard that fails makes the
/// whole request fail instead of answering with fewer hits.
const COMPLETE: &str = "allow_partial_search_results=false";

/// Buckets per page of the `searchPartition` composite aggregation.
const HISTOGRAM_PAGE: usize = 1000;

/// One page of a scan: the content ids of its hits, in `id` order, and how
/// many hits had no usable `id` (absent, not an integer, several values).
/// Those are never published (SPEC §6: ids are never invented); callers
/// report them. A page reads as its ids (`Deref<Target = [i64]>`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    pub ids: Vec<i64>,
    pub missing_ids: u64,
}

impl Deref for Page {
    type Target = [i64];
    fn deref(&self) -> &[i64] {
        &self.ids
    }
}

impl IntoIterator for Page {
    type Item = i64;
    type IntoIter = std::vec::IntoIter<i64>;
    fn into_iter(self) -> Self::IntoIter {
        self.ids.into_iter()
    }
}

/// An answer that can say it is not the whole answer.
trait Answer: DeserializeOwned {
    /// Why the answer is partial, if it is.
    fn incomplete(&self) -> Option<String>;
}

impl Answer for IgnoredAny {
    fn incomplete(&self) -> Option<String> {
        None
    }
}

impl Answer for Value {
    fn incomplete(&self) -> Option<String> {
        let shards: Shards = serde_json::from_value(self["_shards"].clone()).unwrap_or_default();
        shards.incomplete(self["timed_out"].as_bool().unwrap_or(false))
    }
}

/// The `_shards` header of an answer.
#[derive(Debug, Default, Deserialize)]
struct Shards {
    #[serde(default)]
    total: u64,
    #[serde(default)]
    failed: u64,
    #[serde(default)]
    failures: Vec<Value>,
}

impl Shards {
    fn incomplete(&self, timed_out: bool) -> Option<String> {
        if self.failed > 0 {
            let reason = self
                .failures
                .first()
                .map(|f| {
                    let r = &f["reason"];
                    format!(
                        " (first: {}: {})",
                        r["type"].as_str().unwrap_or("?"),
                        r["reason"].as_str().unwrap_or("?")
                    )
                })
                .unwrap_or_default();
            Some(format!(
                "{} of {} shards failed{reason}",
                self.failed, self.total
            ))
        } else if timed_out {
            Some("the search timed out on the server (timed_out: true)".into())
        } else {
            None
        }
    }
}

/// One `search_after` page, decoded into just what the scan needs: the
/// other fields of each hit are skipped while parsing, not materialised.
#[derive(Deserialize)]
struct ScanPage {
    #[serde(default)]
    pit_id: Option<String>,
    #[serde(default)]
    timed_out: bool,
    #[serde(default, rename = "_shards")]
    shards: Shards,
    hits: ScanHits,
}

impl Answer for ScanPage {
    fn incomplete(&self) -> Option<String> {
        self.shards.incomplete(self.timed_out)
    }
}

#[derive(Deserialize)]
struct ScanHits {
    hits: Vec<ScanHit>,
}

#[derive(Deserialize)]
struct ScanHit {
    /// `[id]`, plus the shard tiebreaker inside an Elasticsearch point in
    /// time: only for `search_after`. A hit without `id` sorts last with a
    /// placeholder value, so the id itself comes from `fields`.
    #[serde(default)]
    sort: Vec<Value>,
    /// The `docvalue_fields` asked for: just `id`.
    #[serde(default)]
    fields: HitFields,
}

#[derive(Default, Deserialize)]
struct HitFields {
    #[serde(default)]
    id: Vec<Value>,
}

impl ScanHit {
    /// The content id, when the document has exactly one integer `id`.
    fn content_id(&self) -> Option<i64> {
        match self.fields.id.as_slice() {
            [v] => v.as_i64().or_else(|| v.as_str()?.trim().parse().ok()),
            _ => None,
        }
    }
}

/// The jittered exponential back-off before local attempt `attempt` (1, 2, …):
/// between half and all of `initial * 2^(attempt-1)`, capped at `max`.
pub fn backoff_delay(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let exp = initial
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(max);
    let half = exp / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

#[derive(Clone)]
pub struct Search {
    client: Elasticsearch,
    cfg: SearchConfig,
    /// Shared by every clone: one bound per process, except where a lane
    /// takes its own ([`with_own_limit`](Self::with_own_limit)).
    limiter: Limiter,
}

impl Search {
    pub fn new(cfg: &SearchConfig) -> Result<Self, ServiceError> {
        // The URL is shown redacted: it may carry a password.
        let bad = |e: &dyn std::fmt::Display| {
            ServiceError::new(
                Service::Search,
                format!("bad SEARCH_URL {}: {e}", redact(&cfg.url)),
            )
        };
        let url = Url::parse(&cfg.url).map_err(|e| bad(&e))?;
        let https = url.scheme() == "https";
        let mut transport = TransportBuilder::new(SingleNodeConnectionPool::new(url))
            .timeout(cfg.timeout)
            .disable_proxy();
        if https {
            // The fleet's trust ([`crate::tls`]): with extra CAs configured,
            // the platform roots plus them, given explicitly (reqwest's own
            // platform store would let SSL_CERT_FILE replace the platform's).
            let trust = crate::tls::Trust::for_service(Service::Search)?;
            if let Some(pem) = trust.bundle_pem() {
                let roots = Certificate::from_pem(pem).map_err(|e| bad(&e))?;
                transport = transport.cert_validation(CertificateValidation::Full(roots));
            }
        }
        let transport = transport.build().map_err(|e| bad(&e))?;
        Ok(Self {
            client: Elasticsearch::new(transport),
            cfg: cfg.clone(),
            limiter: Limiter::new(Self::SHARED_LIMIT, cfg.concurrency_bounds()),
        })
    }

    /// The `limiter` label of the process-wide limit.
    pub const SHARED_LIMIT: &'static str = "shared";

    /// This client (the same connections) under a search limit of its own,
    /// reported as `limiter="<name>"`: calls through it never wait for a
    /// permit the shared limit's calls hold, nor hold one they wait for.
    pub fn with_own_limit(&self, name: &'static str) -> Self {
        Self {
            client: self.client.clone(),
            cfg: self.cfg.clone(),
            limiter: Limiter::new(name, self.cfg.concurrency_bounds()),
        }
    }

    pub fn config(&self) -> &SearchConfig {
        &self.cfg
    }

    /// The concurrency limit this process applies to search calls.
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    /// Checks the cluster answers; the error says how to start one. A health
    /// check, so it neither waits for a concurrency slot nor backs off.
    pub async fn ping(&self) -> Result<(), SearchError> {
        let started = Instant::now();
        let result = self.send::<IgnoredAny>(Method::Get, "/", None).await;
        telemetry::search_latency("ping", started.elapsed(), result.is_ok());
        result.map(|_| ())
    }

    /// Like [`ping`](Self::ping), with start-up advice.
    pub async fn check_startup(&self) -> Result<(), ServiceError> {
        self.ping().await.map_err(|e| {
            // A TLS failure already carries its fix (see `transport_error`).
            let advice = match crate::tls::hint(Service::Search, &e.to_string()) {
                Some(_) => "Fix the TLS set-up named above (SEARCH_URL, SSL_CERT_FILE).",
                None => {
                    "Start one with `scripts/services.sh` (osmem-server, development) \
                     or point SEARCH_URL at Elasticsearch."
                }
            };
            ServiceError::new(
                Service::Search,
                format!(
                    "cannot reach the search cluster at {}: {e}. {advice}",
                    redact(&self.cfg.url)
                ),
            )
        })
    }

    /// One search call under the concurrency limit. Overload (429, 503, a
    /// timeout …) shrinks the limit and is tried again after a jittered
    /// back-off, `search.backoff_attempts` times, before it is returned.
    async fn call<T: Answer>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        op: &'static str,
    ) -> Result<T, SearchError> {
        self.call_with(method, path, body, op, self.cfg.backoff_attempts)
            .await
    }

    async fn call_with<T: Answer>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        op: &'static str,
        attempts: u32,
    ) -> Result<T, SearchError> {
        let mut attempt = 0;
        loop {
            let permit = self.limiter.acquire().await;
            let started = Instant::now();
            let result = self.send::<T>(method, path, body.as_ref()).await;
            let took = started.elapsed();
            telemetry::search_latency(op, took, result.is_ok());
            permit.finish(match &result {
                Ok(_) => limiter::Outcome::Success(took),
                Err(e) if e.is_overload() => limiter::Outcome::Overload,
                Err(_) => limiter::Outcome::Neutral,
            });
            match result {
                Err(e) if e.is_overload() && attempt < attempts => {
                    attempt += 1;
                    let wait =
                        backoff_delay(attempt, self.cfg.backoff_initial, self.cfg.backoff_max);
                    telemetry::search_backoff(op, e.class());
                    tracing::debug!(operation = op, attempt, ?wait, error = %e, "The search cluster pushed back; trying again after a back-off.");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    telemetry::search_error(op, e.class());
                    return Err(e);
                }
                Ok(answer) => return Ok(answer),
            }
        }
    }

    /// One HTTP exchange, classified.
    async fn send<T: Answer>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, SearchError> {
        let res = self
            .client
            .send::<JsonBody<Value>, ()>(
                method,
                path,
                HeaderMap::new(),
                None,
                body.cloned().map(JsonBody::new),
                Some(self.cfg.timeout),
            )
            .await
            .map_err(|e| self.transport_error(path, &e))?;
        let status = res.status_code();
        if status.is_success() {
            let answer = res.json::<T>().await.map_err(|e| {
                if e.is_timeout() {
                    self.transport_error(path, &e)
                } else {
                    SearchError::Unavailable(format!("{path}: unreadable response: {e}"))
                }
            })?;
            return match answer.incomplete() {
                Some(why) => Err(SearchError::Partial(format!("{path}: {why}"))),
                None => Ok(answer),
            };
        }
        let text = res.text().await.unwrap_or_default();
        Err(classify(status.as_u16(), path, &text))
    }

    fn transport_error(&self, path: &str, e: &elasticsearch::Error) -> SearchError {
        // With its causes: the TLS reason (an untrusted certificate …) is one.
        let mut text = crate::tls::explain(Service::Search, &crate::tls::error_chain(e));
        if let Ok(url) = Url::parse(&self.cfg.url) {
            if let Some(p) = url.password().filter(|p| !p.is_empty()) {
                text = text.replace(p, "***");
            }
        }
        if e.is_timeout() {
            SearchError::Overloaded(format!(
                "{path}: no answer within {:?} (search.timeout): {text}",
                self.cfg.timeout
            ))
        } else {
            SearchError::Unavailable(format!("{path}: {text}"))
        }
    }

    /// Documents matching `query` (exact: `track_total_hits`).
    ///
    /// Asked through `_search` with `size: 0` rather than `_count`: `_count`
    /// accepts no `allow_partial_search_results` (Elasticsearch and osmem
    /// refuse the parameter there with a 400).
    pub async fn count(&self, index: &str, query: &Value) -> Result<u64, SearchError> {
        let v: Value = self
            .call(
                Method::Post,
                &format!("/{index}/_search?{COMPLETE}"),
                Some(json!({ "size": 0, "track_total_hits": true, "query": query })),
                "count",
            )
            .await?;
        let total = &v["hits"]["total"];
        match (total["value"].as_u64(), total["relation"].as_str()) {
            (Some(n), Some("eq") | None) => Ok(n),
            _ => total.as_u64().ok_or_else(|| {
                SearchError::Unavailable(format!("count answer without an exact total: {total}"))
            }),
        }
    }

    /// Documents per `searchPartition` value, sorted by key, plus the
    /// documents without one.
    ///
    /// A `composite` aggregation paged with `after` until every key is read
    /// (a `terms` aggregation stops at its size and leaves the rest in
    /// `sum_other_doc_count`), and a `missing` aggregation. A key that is not
    /// an integer (`searchPartition` mapped as keyword, whose ranges would
    /// not tile numerically), or no bucket at all while documents match, is
    /// [`SearchError::Unsplittable`]: never an empty split.
    pub async fn partition_histogram(
        &self,
        index: &str,
        query: &Value,
    ) -> Result<Histogram, SearchError> {
        let path = format!("/{index}/_search?{COMPLETE}");
        let mut histogram = Histogram::default();
        let mut total = 0;
        let mut after: Option<Value> = None;
        loop {
            let mut composite = json!({
                "size": HISTOGRAM_PAGE,
                "sources": [ { "p": { "terms": { "field": "searchPartition", "order": "asc" } } } ]
            });
            let first = after.is_none();
            if let Some(a) = &after {
                composite["after"] = a.clone();
            }
            let mut body = json!({
                "size": 0,
                "track_total_hits": first,
                "query": query,
                "aggs": { "partitions": { "composite": composite } }
            });
            if first {
                body["aggs"]["no_partition"] = json!({ "missing": { "field": "searchPartition" } });
            }
            let v: Value = self
                .call(Method::Post, &path, Some(body), "histogram")
                .await?;
            let aggs = &v["aggregations"];
            if first {
                total = v["hits"]["total"]["value"].as_u64().unwrap_or(0);
                histogram.missing =
                    aggs["no_partition"]["doc_count"].as_u64().ok_or_else(|| {
                        SearchError::Unavailable(format!(
                            "aggregation answer without the missing count: {aggs}"
                        ))
                    })?;
            }
            let buckets = aggs["partitions"]["buckets"].as_array().ok_or_else(|| {
                SearchError::Unavailable(format!("aggregation answer without buckets: {aggs}"))
            })?;
            for b in buckets {
                let key = &b["key"]["p"];
                let Some(k) = key.as_i64() else {
                    return Err(SearchError::Unsplittable(format!(
                        "index {index}: searchPartition value {key} is not an integer \
                         (is the field mapped as keyword?); its ranges cannot be split"
                    )));
                };
                let n = b["doc_count"].as_u64().ok_or_else(|| {
                    SearchError::Unavailable(format!("bucket without doc_count: {b}"))
                })?;
                histogram.buckets.push((k, n));
            }
            match aggs["partitions"].get("after_key") {
                Some(key) if buckets.len() >= HISTOGRAM_PAGE => after = Some(key.clone()),
                _ => break,
            }
        }
        histogram.buckets.sort_unstable();
        if histogram.total() == 0 {
            return Err(if total > 0 {
                SearchError::Unsplittable(format!(
                    "index {index}: {total} documents match but the searchPartition histogram \
                     has no bucket"
                ))
            } else {
                // Matched at count time, gone now: a retry counts again.
                SearchError::Unavailable(format!(
                    "index {index}: the documents counted a moment ago no longer match"
                ))
            });
        }
        Ok(histogram)
    }

    async fn open_pit(&self, index: &str) -> Result<Option<String>, SearchError> {
        if !self.cfg.point_in_time {
            return Ok(None);
        }
        let keep = format!("{}s", self.cfg.pit_keep_alive.as_secs().max(1));
        let (path, field) = match self.cfg.flavor {
            SearchFlavor::Elasticsearch => (format!("/{index}/_pit?keep_alive={keep}"), "id"),
            SearchFlavor::Opensearch => (
                format!("/{index}/_search/point_in_time?keep_alive={keep}"),
                "pit_id",
            ),
        };
        match self
            .call::<Value>(Method::Post, &path, None, "open_pit")
            .await
        {
            Ok(v) => Ok(v[field].as_str().map(str::to_string)),
            // A server without point in time (or the other dialect's
            // endpoint): page without one rather than fail every request.
            Err(e @ (SearchError::Rejected(_) | SearchError::NotFound(_))) => {
                tracing::warn!(error = %e, flavor = ?self.cfg.flavor, "No point in time on this server; paging without one (check search.flavor).");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    async fn close_pit(&self, pit: &str) {
        let (path, body) = match self.cfg.flavor {
            SearchFlavor::Elasticsearch => ("/_pit", json!({ "id": pit })),
            SearchFlavor::Opensearch => ("/_search/point_in_time", json!({ "pit_id": [pit] })),
        };
        if let Err(error) = self
            .call_with::<IgnoredAny>(Method::Delete, path, Some(body), "close_pit", 0)
            .await
        {
            tracing::debug!(%error, "Could not close a point in time; it expires by itself.");
        }
    }

    /// Streams the content ids matching `query`, one page at a time, sorted by
    /// `id` with `search_after`. Memory stays at one page whatever the result
    /// size. The stream ends after its first error. Its point in time is
    /// closed on every exit: the last page, an error, or the stream dropped
    /// half-way (the close is then spawned).
    pub fn scan(
        &self,
        index: &str,
        query: Value,
    ) -> impl Stream<Item = Result<Page, SearchError>> + Send + 'static {
        let scan = Scan {
            search: self.clone(),
            index: index.to_string(),
            query,
            pit: PitGuard {
                search: self.clone(),
                id: None,
            },
            opened: false,
            after: None,
            done: false,
        };
        futures::stream::unfold(scan, |mut scan| async move {
            match scan.next_page().await {
                Ok(Some(page)) => Some((Ok(page), scan)),
                Ok(None) => None,
                Err(e) => {
                    scan.done = true;
                    scan.pit.close().await;
                    Some((Err(e), scan))
                }
            }
        })
    }
}

/// Closes its point in time when dropped (by a spawned request), unless it
/// was closed already.
struct PitGuard {
    search: Search,
    id: Option<String>,
}

impl PitGuard {
    async fn close(&mut self) {
        if let Some(id) = self.id.take() {
            self.search.close_pit(&id).await;
        }
    }
}

impl Drop for PitGuard {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let search = self.search.clone();
                rt.spawn(async move { search.close_pit(&id).await });
            }
            Err(_) => {
                tracing::debug!(
                    "A scan was dropped outside a runtime; its point in time expires by itself."
                );
            }
        }
    }
}

/// The state of one [`Search::scan`].
struct Scan {
    search: Search,
    index: String,
    query: Value,
    pit: PitGuard,
    opened: bool,
    /// The sort values of the last hit of the previous page.
    after: Option<Vec<Value>>,
    done: bool,
}

impl Scan {
    fn request(&self) -> (String, Value) {
        let cfg = &self.search.cfg;
        let mut body = json!({
            "size": cfg.page_size,
            "_source": false,
            "docvalue_fields": ["id"],
            "track_total_hits": false,
            "query": self.query,
            "sort": [{ "id": { "order": "asc", "missing": "_last" } }],
        });
        match &self.pit.id {
            Some(pit) => {
                let keep = format!("{}s", cfg.pit_keep_alive.as_secs().max(1));
                body["pit"] = json!({ "id": pit, "keep_alive": keep });
                if let Some(after) = &self.after {
                    body["search_after"] = json!(after);
                }
                (format!("/_search?{COMPLETE}"), body)
            }
            None => {
                // Without a point in time the sort is `id` alone.
                if let Some(after) = &self.after {
                    body["search_after"] = json!(&after[..1.min(after.len())]);
                }
                (format!("/{}/_search?{COMPLETE}", self.index), body)
            }
        }
    }

    async fn next_page(&mut self) -> Result<Option<Page>, SearchError> {
        if self.done {
            return Ok(None);
        }
        if !self.opened {
            self.pit.id = self.search.open_pit(&self.index).await?;
            self.opened = true;
        }
        let mut reopened = false;
        let page: ScanPage = loop {
            let (path, body) = self.request();
            match self
                .search
                .call(Method::Post, &path, Some(body), "scan_page")
                .await
            {
                Ok(page) => break page,
                // The point in time expired between two pages (a slow
                // consumer, a long back-off): open another and go on from
                // the same `search_after`. Once per page.
                Err(SearchError::PitExpired(why)) if self.pit.id.is_some() && !reopened => {
                    tracing::info!(index = %self.index, %why, "Point in time expired mid-scan; reopening and going on from the last page.");
                    // Usually gone already; closing costs one request and
                    // frees it if the server only lost track for a moment.
                    self.pit.close().await;
                    self.pit.id = self.search.open_pit(&self.index).await?;
                    reopened = true;
                }
                Err(e) => return Err(e),
            }
        };
        if self.pit.id.is_some() {
            if let Some(id) = page.pit_id {
                self.pit.id = Some(id);
            }
        }
        let hits = page.hits.hits;
        let mut out = Page::default();
        for h in &hits {
            match h.content_id() {
                Some(id) => out.ids.push(id),
                None => out.missing_ids += 1,
            }
        }
        if hits.len() < self.search.cfg.page_size {
            self.done = true;
            self.pit.close().await;
        } else {
            match hits
                .last()
                .map(|h| h.sort.clone())
                .filter(|s| !s.is_empty())
            {
                Some(sort) => self.after = Some(sort),
                None => {
                    return Err(SearchError::Unavailable(
                        "a full page whose last hit has no sort values; cannot page on".into(),
                    ))
                }
            }
        }
        if hits.is_empty() {
            return Ok(None);
        }
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(v: Value) -> ScanHit {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_hit_yields_its_id_only_when_it_has_exactly_one_integer_id() {
        let id = |v| hit(v).content_id();
        assert_eq!(id(json!({"sort": [7], "fields": {"id": [7]}})), Some(7));
        assert_eq!(id(json!({"sort": ["7"], "fields": {"id": ["7"]}})), Some(7));
        // The sort value of a missing field is a placeholder, never an id.
        assert_eq!(id(json!({"sort": [i64::MAX]})), None);
        assert_eq!(id(json!({"sort": [1], "fields": {}})), None);
        assert_eq!(id(json!({"sort": [1], "fields": {"id": [1, 2]}})), None);
        assert_eq!(id(json!({"sort": [1.5], "fields": {"id": [1.5]}})), None);
        assert_eq!(id(json!({"sort": ["x"], "fields": {"id": ["x"]}})), None);
    }

    #[test]
    fn a_page_with_a_failed_shard_or_a_timeout_is_incomplete() {
        let page = |v: Value| -> ScanPage { serde_json::from_value(v).unwrap() };
        let ok = page(json!({"_shards": {"total": 2, "failed": 0}, "hits": {"hits": []}}));
        assert_eq!(ok.incomplete(), None);
        let failed = page(json!({
            "_shards": {"total": 2, "successful": 1, "failed": 1, "failures": [
                {"shard": 1, "index": "i", "reason": {"type": "node_disconnected_exception", "reason": "gone"}}
            ]},
            "hits": {"hits": [{"sort": [1], "fields": {"id": [1]}}]}
        }));
        let why = failed.incomplete().unwrap();
        assert!(
            why.contains("1 of 2 shards failed") && why.contains("node_disconnected_exception"),
            "{why}"
        );
        let slow = page(json!({"timed_out": true, "hits": {"hits": []}}));
        assert!(slow.incomplete().unwrap().contains("timed_out"));
        // The generic answers (count, aggregations, point in time) too.
        let v = json!({"_shards": {"total": 3, "failed": 2}, "count": 0});
        assert!(v.incomplete().unwrap().contains("2 of 3"));
        assert!(json!({"timed_out": true}).incomplete().is_some());
        assert!(json!({"took": 1}).incomplete().is_none());
    }

    #[test]
    fn back_off_grows_with_jitter_and_stays_under_the_cap() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for attempt in 1..20 {
            let exp = (initial * 2u32.pow((attempt - 1).min(10))).min(max);
            for _ in 0..50 {
                let d = backoff_delay(attempt, initial, max);
                assert!(
                    d >= exp / 2 && d <= exp,
                    "attempt {attempt}: {d:?} vs {exp:?}"
                );
            }
        }
    }

    #[test]
    fn a_page_reads_as_its_ids() {
        let p = Page {
            ids: vec![1, 2],
            missing_ids: 3,
        };
        assert_eq!(p.len(), 2);
        assert_eq!(&p[..], &[1, 2]);
        assert_eq!(p.into_iter().collect::<Vec<_>>(), vec![1, 2]);
    }
}
