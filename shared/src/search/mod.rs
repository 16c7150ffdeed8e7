//! The search side: turning a request into a query, counting it, the
//! `searchPartition` histogram and split, and streaming content ids with
//! `search_after` (inside a point in time where the server offers one).
//!
//! Elasticsearch 8 and OpenSearch differ only in the point-in-time endpoints;
//! `search.flavor` picks them. Everything else is the same search API.

pub mod limiter;

use std::time::Instant;

use elasticsearch::http::headers::HeaderMap;
use elasticsearch::http::request::JsonBody;
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::http::{Method, Url};
use elasticsearch::Elasticsearch;
use futures::Stream;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::broker::redact;
use crate::config::{SearchConfig, SearchFlavor};
use crate::telemetry;

#[derive(Debug, Clone, thiserror::Error)]
pub enum SearchError {
    /// The cluster is down, slow or overloaded: try again later.
    #[error("search cluster unavailable: {0}")]
    Unavailable(String),
    /// The cluster refused the query itself (HTTP 400): retrying cannot help.
    #[error("search cluster rejected the query: {0}")]
    Rejected(String),
    /// No such index or endpoint (HTTP 404): an index being rebuilt, or a
    /// server without the endpoint. Retried like an outage.
    #[error("search cluster has no such index or endpoint: {0}")]
    NotFound(String),
}

impl SearchError {
    pub fn is_transient(&self) -> bool {
        matches!(self, SearchError::Unavailable(_) | SearchError::NotFound(_))
    }
}

/// The query of a request for one index: `terms` on the field, wrapped in a
/// `nested` query when the field is nested.
pub fn terms_query(field: &str, ids: &[i64], nested_path: Option<&str>) -> Value {
    let terms = json!({ "terms": { field: ids } });
    match nested_path {
        Some(path) => json!({ "nested": { "path": path, "query": terms } }),
        None => terms,
    }
}

/// `query` restricted to `from <= searchPartition < to` (either bound open).
pub fn with_partition_range(query: &Value, from: Option<i64>, to: Option<i64>) -> Value {
    if from.is_none() && to.is_none() {
        return query.clone();
    }
    let mut range = serde_json::Map::new();
    if let Some(f) = from {
        range.insert("gte".into(), json!(f));
    }
    if let Some(t) = to {
        range.insert("lt".into(), json!(t));
    }
    json!({ "bool": { "filter": [ query, { "range": { "searchPartition": range } } ] } })
}

/// One partition of a split query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionGroup {
    /// Inclusive lower bound; `None` for the first group (from the minimum).
    pub from: Option<i64>,
    /// Exclusive upper bound; `None` for the last group (to the maximum).
    pub to: Option<i64>,
    /// Documents the histogram counted in the group.
    pub hits: u64,
    /// The bucket keys the group was built from (first and last).
    pub first_key: i64,
    pub last_key: i64,
}

/// Groups consecutive histogram buckets (sorted by key) so that no group
/// holds more than `limit` documents unless one bucket alone does.
///
/// The ranges tile the whole `searchPartition` domain: the first starts at the
/// minimum, each ends just before the next begins, the last is open-ended. So
/// the union of the partition queries is exactly the original query, even for
/// documents that appear between the aggregation and the partition queries.
pub fn group_partitions(buckets: &[(i64, u64)], limit: u64) -> Vec<PartitionGroup> {
    let mut groups: Vec<PartitionGroup> = Vec::new();
    for &(key, count) in buckets {
        match groups.last_mut() {
            Some(g) if g.hits + count <= limit => {
                g.hits += count;
                g.last_key = key;
            }
            _ => groups.push(PartitionGroup {
                from: Some(key),
                to: None,
                hits: count,
                first_key: key,
                last_key: key,
            }),
        }
    }
    let starts: Vec<i64> = groups.iter().map(|g| g.first_key).collect();
    for (i, g) in groups.iter_mut().enumerate() {
        if i == 0 {
            g.from = None;
        }
        g.to = starts.get(i + 1).copied();
    }
    groups
}

/// One `search_after` page, decoded into just what the scan needs: the
/// other fields of each hit are skipped while parsing, not materialised.
#[derive(Deserialize)]
struct ScanPage {
    #[serde(default)]
    pit_id: Option<String>,
    hits: ScanHits,
}

#[derive(Deserialize)]
struct ScanHits {
    hits: Vec<ScanHit>,
}

#[derive(Deserialize)]
struct ScanHit {
    /// `[id]`, plus the shard tiebreaker inside an Elasticsearch point in time.
    sort: Vec<Value>,
}

#[derive(Clone)]
pub struct Search {
    client: Elasticsearch,
    cfg: SearchConfig,
}

impl Search {
    pub fn new(cfg: &SearchConfig) -> anyhow::Result<Self> {
        let url = Url::parse(&cfg.url)
            .map_err(|e| anyhow::anyhow!("bad SEARCH_URL {:?}: {e}", cfg.url))?;
        let transport = TransportBuilder::new(SingleNodeConnectionPool::new(url))
            .timeout(cfg.timeout)
            .disable_proxy()
            .build()?;
        Ok(Self {
            client: Elasticsearch::new(transport),
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &SearchConfig {
        &self.cfg
    }

    /// Checks the cluster answers; the error says how to start one.
    pub async fn ping(&self) -> Result<(), SearchError> {
        self.call::<serde::de::IgnoredAny>(Method::Get, "/", None, "ping")
            .await
            .map(|_| ())
    }

    /// Like [`ping`](Self::ping), with start-up advice.
    pub async fn check_startup(&self) -> anyhow::Result<()> {
        self.ping().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the search cluster at {}: {e}. Start one with `scripts/services.sh` \
                 (osmem-server, development) or point SEARCH_URL at Elasticsearch.",
                redact(&self.cfg.url)
            )
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        op: &'static str,
    ) -> Result<T, SearchError> {
        let started = Instant::now();
        let result = self.call_inner(method, path, body).await;
        telemetry::search_latency(op, started.elapsed(), result.is_ok());
        result
    }

    async fn call_inner<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<T, SearchError> {
        let res = self
            .client
            .send::<JsonBody<Value>, ()>(
                method,
                path,
                HeaderMap::new(),
                None,
                body.map(JsonBody::new),
                Some(self.cfg.timeout),
            )
            .await
            .map_err(|e| SearchError::Unavailable(e.to_string()))?;
        let status = res.status_code();
        if status.is_success() {
            return res
                .json::<T>()
                .await
                .map_err(|e| SearchError::Unavailable(format!("unreadable response: {e}")));
        }
        let text = res.text().await.unwrap_or_default();
        let short: String = text.chars().take(500).collect();
        if status.as_u16() == 400 {
            Err(SearchError::Rejected(format!("{status}: {short}")))
        } else if status.as_u16() == 404 || status.as_u16() == 405 {
            Err(SearchError::NotFound(format!("{path}: {status}: {short}")))
        } else {
            Err(SearchError::Unavailable(format!(
                "{path}: {status}: {short}"
            )))
        }
    }

    /// Documents matching `query`.
    pub async fn count(&self, index: &str, query: &Value) -> Result<u64, SearchError> {
        let v: Value = self
            .call(
                Method::Post,
                &format!("/{index}/_count"),
                Some(json!({ "query": query })),
                "count",
            )
            .await?;
        v["count"]
            .as_u64()
            .ok_or_else(|| SearchError::Unavailable(format!("count response without count: {v}")))
    }

    /// Documents per `searchPartition` value, sorted by key (one `terms`
    /// aggregation, size 1000).
    pub async fn partition_histogram(
        &self,
        index: &str,
        query: &Value,
    ) -> Result<Vec<(i64, u64)>, SearchError> {
        let body = json!({
            "size": 0,
            "track_total_hits": false,
            "query": query,
            "aggs": { "partitions": { "terms": {
                "field": "searchPartition", "size": 1000, "order": { "_key": "asc" }
            } } }
        });
        let v: Value = self
            .call(
                Method::Post,
                &format!("/{index}/_search"),
                Some(body),
                "histogram",
            )
            .await?;
        let buckets = v["aggregations"]["partitions"]["buckets"]
            .as_array()
            .ok_or_else(|| {
                SearchError::Unavailable(format!("aggregation response without buckets: {v}"))
            })?;
        let mut out: Vec<(i64, u64)> = buckets
            .iter()
            .filter_map(|b| Some((b["key"].as_i64()?, b["doc_count"].as_u64()?)))
            .collect();
        out.sort_unstable();
        Ok(out)
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
            .call::<serde::de::IgnoredAny>(Method::Delete, path, Some(body), "close_pit")
            .await
        {
            tracing::debug!(%error, "Could not close a point in time; it expires by itself.");
        }
    }

    /// Streams the content ids matching `query`, one page at a time, sorted by
    /// `id` with `search_after`. Memory stays at one page whatever the result size.
    pub fn scan(
        &self,
        index: &str,
        query: Value,
    ) -> impl Stream<Item = Result<Vec<i64>, SearchError>> + Send + 'static {
        let search = self.clone();
        let index = index.to_string();
        let page_size = self.cfg.page_size;
        let keep = format!("{}s", self.cfg.pit_keep_alive.as_secs().max(1));
        struct State {
            pit: Option<String>,
            opened: bool,
            after: Option<Value>,
            done: bool,
        }
        let init = State {
            pit: None,
            opened: false,
            after: None,
            done: false,
        };
        futures::stream::try_unfold(init, move |mut st| {
            let search = search.clone();
            let index = index.clone();
            let query = query.clone();
            let keep = keep.clone();
            async move {
                if st.done {
                    return Ok(None);
                }
                if !st.opened {
                    st.pit = search.open_pit(&index).await?;
                    st.opened = true;
                }
                let mut body = json!({
                    "size": page_size,
                    "_source": false,
                    "track_total_hits": false,
                    "query": query,
                    "sort": [{ "id": "asc" }],
                });
                if let Some(after) = &st.after {
                    body["search_after"] = after.clone();
                }
                let path = match &st.pit {
                    Some(pit) => {
                        body["pit"] = json!({ "id": pit, "keep_alive": keep });
                        "/_search".to_string()
                    }
                    None => format!("/{index}/_search"),
                };
                let result = search
                    .call(Method::Post, &path, Some(body), "scan_page")
                    .await;
                let page: ScanPage = match result {
                    Ok(page) => page,
                    Err(e) => {
                        if let Some(pit) = &st.pit {
                            search.close_pit(pit).await;
                        }
                        return Err(e);
                    }
                };
                if let Some(new_pit) = page.pit_id {
                    st.pit = Some(new_pit);
                }
                let hits = page.hits.hits;
                let ids: Vec<i64> = hits
                    .iter()
                    .filter_map(|h| h.sort.first().and_then(Value::as_i64))
                    .collect();
                if ids.len() != hits.len() {
                    return Err(SearchError::Unavailable(
                        "a hit without a numeric `id` sort value".into(),
                    ));
                }
                if hits.len() < page_size {
                    st.done = true;
                    if let Some(pit) = &st.pit {
                        search.close_pit(pit).await;
                    }
                } else {
                    st.after = hits.last().map(|h| Value::Array(h.sort.clone()));
                }
                if ids.is_empty() {
                    return Ok(None);
                }
                Ok(Some((ids, st)))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(g: &[PartitionGroup]) -> Vec<(Option<i64>, Option<i64>, u64)> {
        g.iter().map(|g| (g.from, g.to, g.hits)).collect()
    }

    #[test]
    fn the_spec_example_groups_without_passing_the_limit() {
        let buckets = [(0, 2600), (1, 7000), (2, 500), (3, 1000), (4, 8900)];
        let g = group_partitions(&buckets, 10_000);
        // [min, 1], [2, 3], [4, max] — as half-open ranges.
        assert_eq!(
            ranges(&g),
            vec![
                (None, Some(2), 9600),
                (Some(2), Some(4), 1500),
                (Some(4), None, 8900)
            ]
        );
    }

    #[test]
    fn a_single_huge_bucket_stands_alone() {
        let g = group_partitions(&[(0, 10), (1, 50_000), (2, 10)], 100);
        assert_eq!(
            ranges(&g),
            vec![
                (None, Some(1), 10),
                (Some(1), Some(2), 50_000),
                (Some(2), None, 10)
            ]
        );
    }

    #[test]
    fn groups_tile_the_domain_over_gaps() {
        let g = group_partitions(&[(5, 60), (17, 60), (900, 60)], 100);
        assert_eq!(
            ranges(&g),
            vec![
                (None, Some(17), 60),
                (Some(17), Some(900), 60),
                (Some(900), None, 60)
            ]
        );
        // Every possible value falls in exactly one group.
        for v in -5..1200 {
            let n = g
                .iter()
                .filter(|g| g.from.is_none_or(|f| v >= f) && g.to.is_none_or(|t| v < t))
                .count();
            assert_eq!(n, 1, "value {v}");
        }
    }

    #[test]
    fn nested_fields_get_a_nested_query() {
        let q = terms_query("listings.merchantId", &[1, 2], Some("listings"));
        assert_eq!(q["nested"]["path"], "listings");
        assert_eq!(
            q["nested"]["query"]["terms"]["listings.merchantId"],
            json!([1, 2])
        );
        let r = with_partition_range(&q, None, Some(10));
        assert_eq!(
            r["bool"]["filter"][1]["range"]["searchPartition"],
            json!({"lt": 10})
        );
    }
}
