//! Logs, metrics and the `/metrics` + `/healthz` listener.
//!
//! Every notable outcome is one function here that both logs (where the
//! caller does not) and bumps a counter, so metric names live in one place.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Sets up tracing. `json` gives one JSON object per line. The default filter
/// keeps lapin's chatter at warnings.
pub fn init_tracing(json: bool) {
    let filter = EnvFilter::try_from_env("FLEET_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| {
            EnvFilter::new("info,lapin=warn,lapin::channel=off,sqlx=warn,hyper=warn,reqwest=warn")
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder once per process.
pub fn metrics_handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let latency = [
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ];
        let durations = [0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0];
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("fleet_job_duration_seconds".into()),
                    &durations,
                )
            })
            .expect("bucket lists are non-empty");
        match builder.install_recorder() {
            Ok(h) => h,
            // Another recorder is installed (a test harness); render from a fresh one.
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        }
    })
}

/// One message reached its end: done, retried, parked, dead_lettered, returned.
pub fn message_outcome(worker: &str, queue: &str, outcome: &'static str, elapsed: Duration) {
    metrics::counter!("fleet_messages_total", "worker" => worker.to_string(), "queue" => queue.to_string(), "outcome" => outcome).increment(1);
    metrics::histogram!("fleet_message_handling_seconds", "worker" => worker.to_string(), "outcome" => outcome).record(elapsed.as_secs_f64());
}

/// Content ids confirmed on an outbound queue.
pub fn ids_published(worker: &str, invalidation_type: &str, count: usize) {
    metrics::counter!("fleet_content_ids_published_total", "worker" => worker.to_string(), "invalidation_type" => invalidation_type.to_string()).increment(count as u64);
    metrics::counter!("fleet_outbound_batches_total", "worker" => worker.to_string()).increment(1);
}

/// One search request and how long it took.
pub fn search_latency(operation: &'static str, elapsed: Duration, ok: bool) {
    metrics::histogram!("fleet_search_latency_seconds", "operation" => operation, "ok" => if ok { "true" } else { "false" }).record(elapsed.as_secs_f64());
}

/// A search call that failed for good (after any local back-off), by error
/// class: `search_unavailable`, `search_overloaded`, `partial_results`,
/// `pit_expired`, `search_rejected`, `unsplittable`.
pub fn search_error(operation: &'static str, class: &'static str) {
    metrics::counter!("fleet_search_errors_total", "operation" => operation, "class" => class)
        .increment(1);
}

/// A search call the cluster pushed back on, about to be tried again locally
/// after a jittered back-off instead of going to the retry queue.
pub fn search_backoff(operation: &'static str, class: &'static str) {
    metrics::counter!("fleet_search_backoffs_total", "operation" => operation, "class" => class)
        .increment(1);
}

/// The adaptive bound on concurrent search requests of this process, and
/// how many run now.
pub fn search_concurrency(limit: usize, in_flight: usize) {
    metrics::gauge!("fleet_search_concurrency_limit").set(limit as f64);
    metrics::gauge!("fleet_search_in_flight").set(in_flight as f64);
}

/// Hits of one request's scan that had no usable `id`: counted and reported,
/// never published (SPEC §6, "never invented").
pub fn hits_without_id(worker: &str, request_id: &str, index: &str, count: u64) {
    if count == 0 {
        return;
    }
    metrics::counter!("fleet_hits_without_id_total", "worker" => worker.to_string())
        .increment(count);
    tracing::warn!(%request_id, %index, count, "Search hits without a usable `id` were skipped, not published; check the index's documents.");
}

/// Hits of one finished partition task.
pub fn partition_hits(hits: u64) {
    metrics::histogram!("fleet_partition_hits", "unit" => "documents").record(hits as f64);
    metrics::counter!("fleet_partition_tasks_done_total").increment(1);
}

/// A job finished (all its partition tasks are done).
pub fn job_completed(duration: Duration) {
    metrics::counter!("fleet_jobs_completed_total").increment(1);
    metrics::histogram!("fleet_job_duration_seconds").record(duration.as_secs_f64());
}

pub fn request_split(tasks: usize) {
    metrics::counter!("fleet_jobs_created_total").increment(1);
    metrics::counter!("fleet_partition_tasks_created_total").increment(tasks as u64);
}

pub fn parked(reason: &'static str) {
    metrics::counter!("fleet_parked_total", "reason" => reason).increment(1);
}

/// A dependency check for `/healthz`.
pub type Check =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

#[derive(Clone, Default)]
pub struct Health {
    pub checks: Vec<(&'static str, Check)>,
}

impl Health {
    pub fn add<F, Fut>(&mut self, name: &'static str, f: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks.push((name, Arc::new(move || Box::pin(f()))));
    }

    /// Runs every check (each bounded to 3 s); `(all ok, JSON report)`.
    pub async fn report(&self) -> (bool, serde_json::Value) {
        let mut ok = true;
        let mut map = serde_json::Map::new();
        for (name, check) in &self.checks {
            let result = match tokio::time::timeout(Duration::from_secs(3), check()).await {
                Ok(r) => r,
                Err(_) => Err("timed out after 3s".into()),
            };
            let v = match result {
                Ok(()) => serde_json::json!({"ok": true}),
                Err(e) => {
                    ok = false;
                    serde_json::json!({"ok": false, "error": e})
                }
            };
            map.insert(name.to_string(), v);
        }
        (ok, serde_json::Value::Object(map))
    }
}

async fn metrics_route() -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        metrics_handle().render(),
    )
}

async fn health_route(State(health): State<Health>) -> impl IntoResponse {
    let (ok, report) = health.report().await;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(serde_json::json!({"ok": ok, "checks": report})),
    )
}

/// Serves `/metrics` and `/healthz` on `listen` until `shutdown`; returns the bound address.
pub async fn serve(
    listen: &str,
    health: Health,
    shutdown: CancellationToken,
) -> anyhow::Result<std::net::SocketAddr> {
    metrics_handle();
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {listen} for /metrics: {e}; set FLEET_WORKER_METRICS_LISTEN"
        )
    })?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics_route))
        .route("/healthz", get(health_route))
        .with_state(health);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    tracing::info!(%addr, "Serving /metrics and /healthz.");
    Ok(addr)
}
