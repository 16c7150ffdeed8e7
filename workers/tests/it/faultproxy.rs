//! A small fault-injecting HTTP proxy in front of osmem-server: it forwards
//! every request, records what it saw, and on request breaks answers the way
//! a real cluster does — a 200 with a failed shard or `timed_out`, or a 429,
//! 503, 400 … with a recorded error body — so the search client's handling of
//! them is tested against the real server behind it.
//!
//! With [`FaultProxy::speak_elasticsearch`] it also translates the
//! Elasticsearch point-in-time endpoints (`POST /<index>/_pit` → `id`,
//! `DELETE /_pit`) to osmem's OpenSearch ones, so the Elasticsearch dialect
//! of the client runs against a real point in time too.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};

/// What to do to a matching request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Forward, then turn the 200 into a partial answer: one failed shard,
    /// half the hits and buckets, a total of 0.
    FailedShard,
    /// Forward, then mark the answer `timed_out: true`.
    TimedOut,
    /// Answer this status and body without forwarding.
    Respond(u16, String),
    /// Forward after this long (a slow or wedged node).
    Delay(Duration),
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub method: Option<Method>,
    /// The request's path and query contain this.
    pub path: String,
    /// The request body contains this (e.g. `search_after` for later pages).
    pub body: Option<String>,
    pub fault: Fault,
    /// How many matching requests to break; `None` is every one.
    pub times: Option<usize>,
}

impl Rule {
    pub fn new(path: &str, fault: Fault) -> Self {
        Rule {
            method: None,
            path: path.into(),
            body: None,
            fault,
            times: None,
        }
    }
    pub fn times(mut self, n: usize) -> Self {
        self.times = Some(n);
        self
    }
    pub fn body_contains(mut self, s: &str) -> Self {
        self.body = Some(s.into());
        self
    }
    pub fn method(mut self, m: Method) -> Self {
        self.method = Some(m);
        self
    }
}

/// One request the proxy saw, as the client sent it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    /// Path and query.
    pub path: String,
    pub body: String,
    /// What the client got back.
    pub status: u16,
    /// Whether a rule broke it.
    pub faulted: bool,
}

struct Shared {
    upstream: String,
    http: reqwest::Client,
    rules: Mutex<Vec<Rule>>,
    seen: Mutex<Vec<Seen>>,
    elasticsearch: Mutex<bool>,
}

pub struct FaultProxy {
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A recorded error body from `shared/tests/fixtures/search_errors/`.
pub fn error_body(name: &str) -> String {
    let path = format!(
        "{}/../shared/tests/fixtures/search_errors/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: &str) -> FaultProxy {
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
            rules: Mutex::new(Vec::new()),
            seen: Mutex::new(Vec::new()),
            elasticsearch: Mutex::new(false),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FaultProxy { url, shared, task }
    }

    /// Answer the Elasticsearch point-in-time endpoints (see the module doc).
    pub fn speak_elasticsearch(&self) {
        *self.shared.elasticsearch.lock().unwrap() = true;
    }

    pub fn inject(&self, rule: Rule) {
        self.shared.rules.lock().unwrap().push(rule);
    }

    pub fn clear_faults(&self) {
        self.shared.rules.lock().unwrap().clear();
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    pub fn forget_seen(&self) {
        self.shared.seen.lock().unwrap().clear();
    }
}

/// The first rule matching the request, used up by one.
fn take_fault(shared: &Shared, method: &Method, path: &str, body: &str) -> Option<Fault> {
    let mut rules = shared.rules.lock().unwrap();
    let i = rules.iter().position(|r| {
        r.method.as_ref().is_none_or(|m| m == method)
            && path.contains(&r.path)
            && r.body.as_ref().is_none_or(|b| body.contains(b.as_str()))
            && r.times != Some(0)
    })?;
    let rule = &mut rules[i];
    if let Some(n) = &mut rule.times {
        *n -= 1;
    }
    Some(rule.fault.clone())
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    let path = uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_else(|| "/".into());
    let text = String::from_utf8_lossy(&body).to_string();
    let fault = take_fault(&shared, &method, &path, &text);
    let (status, answer) = match &fault {
        Some(Fault::Respond(status, body)) => (*status, body.clone().into_bytes()),
        other => {
            if let Some(Fault::Delay(d)) = other {
                tokio::time::sleep(*d).await;
            }
            let (status, answer) = forward(&shared, &method, &path, body).await;
            match other {
                Some(Fault::FailedShard) if status == 200 => (200, partial(&answer, false)),
                Some(Fault::TimedOut) if status == 200 => (200, partial(&answer, true)),
                _ => (status, answer),
            }
        }
    };
    shared.seen.lock().unwrap().push(Seen {
        method,
        path,
        body: text,
        status,
        faulted: fault.is_some(),
    });
    let mut res = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        answer,
    )
        .into_response();
    res.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    res
}

/// Sends the request on to osmem (translating the Elasticsearch point in
/// time when asked) and returns its status and body.
async fn forward(shared: &Shared, method: &Method, path: &str, body: Bytes) -> (u16, Vec<u8>) {
    let es = *shared.elasticsearch.lock().unwrap();
    let (bare, query) = path.split_once('?').unwrap_or((path, ""));
    let mut target = path.to_string();
    let mut body = body.to_vec();
    let mut opened_pit = false;
    if es && *method == Method::POST && bare.ends_with("/_pit") {
        let index = bare.trim_end_matches("/_pit");
        target = format!("{index}/_search/point_in_time?{query}");
        opened_pit = true;
    } else if es && *method == Method::DELETE && bare == "/_pit" {
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        target = "/_search/point_in_time".into();
        body = serde_json::to_vec(&json!({ "pit_id": [v["id"]] })).unwrap();
    }
    let m = reqwest::Method::from_bytes(method.as_str().as_bytes()).unwrap();
    let res = shared
        .http
        .request(m, format!("{}{target}", shared.upstream))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    let Ok(res) = res else {
        return (502, b"{\"error\":\"upstream unreachable\"}".to_vec());
    };
    let status = res.status().as_u16();
    let mut answer = res.bytes().await.unwrap_or_default().to_vec();
    if opened_pit && status == 200 {
        let v: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
        answer =
            serde_json::to_vec(&json!({ "id": v["pit_id"], "_shards": v["_shards"] })).unwrap();
    }
    (status, answer)
}

/// The answer a cluster gives when a shard failed (or time ran out) and
/// partial results are allowed: still a 200, with less in it.
fn partial(answer: &[u8], timed_out: bool) -> Vec<u8> {
    let Ok(mut v) = serde_json::from_slice::<Value>(answer) else {
        return answer.to_vec();
    };
    if timed_out {
        v["timed_out"] = json!(true);
    } else {
        v["_shards"] = json!({
            "total": 2, "successful": 1, "skipped": 0, "failed": 1,
            "failures": [{
                "shard": 1, "index": "content", "node": "node-2",
                "reason": { "type": "node_disconnected_exception", "reason": "[node-2] disconnected" }
            }]
        });
    }
    if let Some(hits) = v["hits"]["hits"].as_array_mut() {
        let half = hits.len() / 2;
        hits.truncate(half);
    }
    if v["hits"]["total"]["value"].is_u64() {
        v["hits"]["total"]["value"] = json!(0);
    }
    if v["count"].is_u64() {
        v["count"] = json!(0);
    }
    if let Some(aggs) = v["aggregations"].as_object_mut() {
        for agg in aggs.values_mut() {
            if let Some(buckets) = agg["buckets"].as_array_mut() {
                let half = buckets.len() / 2;
                buckets.truncate(half);
            }
        }
    }
    serde_json::to_vec(&v).unwrap()
}
