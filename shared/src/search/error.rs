//! What can go wrong with a search call, classified where it happens: from
//! the HTTP status first, then the error body's `error.type`,
//! `root_cause[].type` and `caused_by.type` (Elasticsearch 8 and OpenSearch
//! answer with the same shape, `{"error": {...}, "status": N}`).

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SearchError {
    /// The cluster is down or answered something unusable (connection
    /// refused, a 5xx that is not about load, an unreadable body): try again
    /// later.
    #[error("search cluster unavailable: {0}")]
    Unavailable(String),
    /// The cluster pushed back or was too slow: a request timeout, 429
    /// (`es_rejected_execution_exception`, `rejected_execution_exception`, a
    /// transient `circuit_breaking_exception`), 502/503/504. Backed off and
    /// retried locally first; surfaced (transient) only when that did not help.
    #[error("search cluster overloaded: {0}")]
    Overloaded(String),
    /// An HTTP 200 that is not the whole answer: `_shards.failed > 0` or
    /// `timed_out: true`. Hits or counts from it are never used.
    #[error("search cluster gave a partial answer: {0}")]
    Partial(String),
    /// The point in time of a scan expired or vanished
    /// (`search_context_missing_exception`). A scan reopens one and goes on
    /// from where it was; this surfaces only when that fails too.
    #[error("search point in time expired: {0}")]
    PitExpired(String),
    /// No such index or endpoint (HTTP 404): an index being rebuilt, or a
    /// server without the endpoint. Retried like an outage.
    #[error("search cluster has no such index or endpoint: {0}")]
    NotFound(String),
    /// The cluster refused the query itself (HTTP 400, or a circuit breaker
    /// that says the request can never fit): retrying cannot help.
    #[error("search cluster rejected the query: {0}")]
    Rejected(String),
    /// The query cannot be split by `searchPartition`: its documents match
    /// but the histogram has no usable buckets (the field is not an integer,
    /// or nothing carries it). Splitting anyway would lose documents, so this
    /// is permanent: an operator has to look at the mapping.
    #[error("cannot split the query by searchPartition: {0}")]
    Unsplittable(String),
}

impl SearchError {
    /// Worth trying again later (the retry path); the others are permanent.
    pub fn is_transient(&self) -> bool {
        !matches!(
            self,
            SearchError::Rejected(_) | SearchError::Unsplittable(_)
        )
    }

    /// The cluster said it is overloaded or too slow: the concurrency limit
    /// shrinks, and the call backs off and retries locally.
    pub fn is_overload(&self) -> bool {
        matches!(self, SearchError::Overloaded(_))
    }

    /// The error class that failure headers, parking reasons and metrics carry.
    pub fn class(&self) -> &'static str {
        match self {
            SearchError::Unavailable(_) | SearchError::NotFound(_) => "search_unavailable",
            SearchError::Overloaded(_) => "search_overloaded",
            SearchError::Partial(_) => "partial_results",
            SearchError::PitExpired(_) => "pit_expired",
            SearchError::Rejected(_) => "search_rejected",
            SearchError::Unsplittable(_) => "unsplittable",
        }
    }
}

/// Error types that mean "too busy right now" wherever they appear in a body.
const OVERLOAD_TYPES: &[&str] = &[
    "es_rejected_execution_exception",
    "rejected_execution_exception",
];

/// Classifies a non-2xx answer of `path` from its status and body.
pub fn classify(status: u16, path: &str, body: &str) -> SearchError {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let err = &v["error"];
    let types = error_types(err);
    let has = |t: &str| types.contains(&t);
    let what = format!("{path}: HTTP {status}: {}", summary(err, body));
    if has("search_context_missing_exception") && status != 400 {
        return SearchError::PitExpired(what);
    }
    match status {
        400 => SearchError::Rejected(what),
        404 | 405 => SearchError::NotFound(what),
        429 if has("circuit_breaking_exception") && permanent_breaker(err) => {
            SearchError::Rejected(what)
        }
        429 | 502 | 503 | 504 => SearchError::Overloaded(what),
        _ if OVERLOAD_TYPES.iter().any(|t| has(t)) => SearchError::Overloaded(what),
        _ => SearchError::Unavailable(what),
    }
}

/// `error.type`, then every `root_cause[].type`, `caused_by.type` (nested)
/// and the failed shards' reasons.
fn error_types<'a>(err: &'a Value) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut push = |v: &'a Value| {
        if let Some(t) = v["type"].as_str() {
            out.push(t);
        }
    };
    push(err);
    for c in err["root_cause"].as_array().into_iter().flatten() {
        push(c);
    }
    let mut cause = &err["caused_by"];
    while cause.is_object() {
        push(cause);
        cause = &cause["caused_by"];
    }
    for f in err["failed_shards"].as_array().into_iter().flatten() {
        push(&f["reason"]);
    }
    out
}

/// A circuit breaker that says the request can never fit (`durability:
/// PERMANENT`) rather than "not now" (`TRANSIENT`, or unsaid).
fn permanent_breaker(err: &Value) -> bool {
    let durable = |v: &Value| v["durability"].as_str() == Some("PERMANENT");
    durable(err)
        || err["root_cause"]
            .as_array()
            .into_iter()
            .flatten()
            .any(durable)
}

/// `type: reason` of the most specific cause, else the start of the body.
fn summary(err: &Value, body: &str) -> String {
    let first_root = &err["root_cause"][0];
    let pick = if first_root.is_object() {
        first_root
    } else {
        err
    };
    match (pick["type"].as_str(), pick["reason"].as_str()) {
        (Some(t), Some(r)) => format!("{t}: {r}"),
        (Some(t), None) => t.to_string(),
        _ => body.chars().take(300).collect(),
    }
}

/// A search failure as a handler failure: an outage or overload is retried
/// later, a query the cluster refuses (or an index that cannot be split) is
/// the request's fault. The class names the failure (`partial_results`, …).
impl From<SearchError> for crate::runtime::HandlerError {
    fn from(e: SearchError) -> Self {
        if e.is_transient() {
            Self::transient(e.class(), e)
        } else {
            Self::permanent(e.class(), e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recorded answers of Elasticsearch 8 and OpenSearch 2 (trimmed of
    /// stack traces), with the verdict each must get.
    fn fixture(name: &str) -> String {
        let path = format!(
            "{}/tests/fixtures/search_errors/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn verdict(status: u16, name: &str) -> SearchError {
        classify(status, "/idx/_search", &fixture(name))
    }

    #[test]
    fn rejections_under_load_are_overload_in_both_dialects() {
        for name in ["es8_429_rejected_execution", "os_429_rejected_execution"] {
            let e = verdict(429, name);
            assert!(e.is_overload() && e.is_transient(), "{name}: {e:?}");
            assert!(
                e.to_string().contains("rejected_execution_exception"),
                "{e}"
            );
        }
        // Wrapped in a 500 by an older node: still load.
        let e = verdict(500, "es8_429_rejected_execution");
        assert!(e.is_overload(), "{e:?}");
    }

    #[test]
    fn a_transient_circuit_breaker_is_overload_a_permanent_one_is_rejected() {
        let e = verdict(429, "es8_429_circuit_breaking_transient");
        assert!(e.is_overload(), "{e:?}");
        let e = verdict(429, "es8_429_circuit_breaking_permanent");
        assert!(matches!(e, SearchError::Rejected(_)), "{e:?}");
        assert!(!e.is_transient());
    }

    #[test]
    fn no_shard_available_is_overload() {
        for name in ["es8_503_no_shard_available", "os_503_no_shard_available"] {
            let e = verdict(503, name);
            assert!(e.is_overload(), "{name}: {e:?}");
        }
    }

    #[test]
    fn a_bad_query_is_permanent() {
        for name in [
            "es8_400_parsing_exception",
            "es8_400_x_content_parse_exception",
            "os_400_parsing_exception",
        ] {
            let e = verdict(400, name);
            assert!(matches!(e, SearchError::Rejected(_)), "{name}: {e:?}");
            assert_eq!(e.class(), "search_rejected");
        }
    }

    #[test]
    fn a_missing_index_is_transient_and_an_expired_pit_is_its_own_kind() {
        for name in ["es8_404_index_not_found", "os_404_index_not_found"] {
            let e = verdict(404, name);
            assert!(matches!(e, SearchError::NotFound(_)), "{name}: {e:?}");
            assert!(e.is_transient() && !e.is_overload());
        }
        for name in [
            "es8_404_search_context_missing",
            "os_404_search_context_missing",
        ] {
            let e = verdict(404, name);
            assert!(matches!(e, SearchError::PitExpired(_)), "{name}: {e:?}");
            assert!(e.is_transient());
        }
    }

    #[test]
    fn bodies_that_are_not_json_still_classify_by_status() {
        assert!(classify(503, "/x", "<html>Service Unavailable</html>").is_overload());
        assert!(classify(502, "/x", "").is_overload());
        assert!(matches!(
            classify(500, "/x", "boom"),
            SearchError::Unavailable(_)
        ));
        assert!(matches!(classify(400, "/x", ""), SearchError::Rejected(_)));
    }

    #[test]
    fn classes_are_the_documented_labels() {
        let all = [
            (
                SearchError::Unavailable(String::new()),
                "search_unavailable",
            ),
            (SearchError::NotFound(String::new()), "search_unavailable"),
            (SearchError::Overloaded(String::new()), "search_overloaded"),
            (SearchError::Partial(String::new()), "partial_results"),
            (SearchError::PitExpired(String::new()), "pit_expired"),
            (SearchError::Rejected(String::new()), "search_rejected"),
            (SearchError::Unsplittable(String::new()), "unsplittable"),
        ];
        for (e, class) in all {
            assert_eq!(e.class(), class);
        }
    }
}
