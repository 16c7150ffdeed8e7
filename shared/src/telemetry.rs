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

use crate::error::{Service, ServiceError};

/// Sets up tracing. `json` gives one JSON object per line. The default filter
/// keeps lapin's chatter at warnings.
pub fn init_tracing(json: bool) {
    let filter = EnvFilter::try_from_env("FLEET_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| {
            EnvFilter::new("info,lapin=warn,lapin::channel=off,sqlx=warn,hyper=warn,reqwest=warn")
        });
    // Colour only for a person at a terminal: log files and shippers get
    // plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = if json {
        // One object per line; the message span's fields (`request_id`,
        // `job_id`, `task`, `attempt`, …) come along under `span`.
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
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
        let documents = [
            0.0,
            10.0,
            100.0,
            1_000.0,
            5_000.0,
            10_000.0,
            50_000.0,
            100_000.0,
            1_000_000.0,
        ];
        // Every histogram gets buckets: a summary's quantiles drop to zero
        // when idle, which is useless to alert on.
        let builder = PrometheusBuilder::new()
            .set_buckets(&latency)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("fleet_job_duration_seconds".into()),
                    &durations,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full("fleet_partition_hits".into()), &documents)
            })
            .expect("bucket lists are non-empty");
        let handle = match builder.install_recorder() {
            Ok(h) => h,
            // Another recorder is installed (a test harness); render from a fresh one.
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        };
        describe();
        handle
    })
}

/// What kind of series a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric the fleet exports: its name, kind and `# HELP` text.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: MetricKind,
    /// Measured in seconds (the unit shown beside the help).
    pub seconds: bool,
    pub help: &'static str,
}

/// Every metric a worker exports, with its `# HELP`: the one list the
/// recorder describes, the README's Monitoring section documents and the
/// docs test compares with both the README and the code's call sites.
pub const METRICS: &[Metric] = &[
    Metric {
        name: "fleet_messages_total",
        kind: MetricKind::Counter,
        seconds: false,
        help: "Messages that reached their end, by worker, queue and outcome (done, retried, parked, dead_lettered, returned, rejected).",
    },
    Metric {
        name: "fleet_message_handling_seconds",
        kind: MetricKind::Histogram,
        seconds: true,
        help: "Time from delivery to the message's end, by worker, queue and outcome (the fast and the bulk lane apart).",
    },
    Metric {
        name: "fleet_content_ids_published_total",
        kind: MetricKind::Counter,
        seconds: false,
        help: "Content ids confirmed on an outbound queue, by worker and invalidation type.",
    },
    Metric {
        name: "fleet_outbound_batches_total",
        kind: MetricKind::Counter,
        seconds: false,
        help: "Outbound messages (batches of content ids) confirmed, by worker.",
    },
    Metric {
        name: "fleet_search_latency_seconds",
        kind: MetricKind::Histogram,
        seconds: true,
        help: "Latency of search requests, by operation and whether they succeeded.",
    },
    Metric {
        name: "fleet_partition_hits",
        kind: MetricKind::Histogram,
        seconds: false,
        help: "Documents one finished partition task streamed.",
    },
    Metric {
        name: "fleet_partition_tasks_done_total",
        kind: MetricKind::Counter,
        seconds: false,
        help: "Partition tasks finished by this process.",
    },
    Metric {
        name: "fleet_jobs_completed_total",
        kind: MetricKind::Counter,
        seconds: false,
        help: "Split jobs completed (all their tasks done) and announced.",
    },
    Metric {
        name: "fleet_job_duration_seconds",
        kind: MetricKind::Histogram,
        seconds: true,
        help: "Time from a split job's creation to its completion.",
    },
    Metric {
        name: "fleet_jobs_created_total",
        kind: MetricKind::Counter,
        seconds: false,
        help: "Split jobs created.",
    },
    Metric {
        name: "fleet_partition_tasks_created_total",
        kind: MetricKind::Counter,
        seconds: false,
        help: "Partition tasks created by splits.",
    },
    Metric {
        name: "fleet_parked_total",
        kind: MetricKind::Counter,
        seconds: false,
        help: "Messages parked by the retry handler, by reason.",
    },
    Metric {
        name: "fleet_request_id_reused_total",
        kind: MetricKind::Counter,
        seconds: false,
        help: "Requests whose requestId an earlier, different request used; each was processed as its own request.",
    },
    Metric {
        name: "fleet_hits_without_id_total",
        kind: MetricKind::Counter,
        seconds: false,
        help: "Search hits without a usable `id`: counted, never published, by worker.",
    },
    Metric {
        name: "fleet_search_errors_total",
        kind: MetricKind::Counter,
        seconds: false,
        help: "Failed search calls, by operation and class (search_unavailable, search_overloaded, partial_results, …).",
    },
    Metric {
        name: "fleet_search_backoffs_total",
        kind: MetricKind::Counter,
        seconds: false,
        help: "Search calls retried in place after the cluster pushed back, by operation and class.",
    },
    Metric {
        name: "fleet_search_concurrency_limit",
        kind: MetricKind::Gauge,
        seconds: false,
        help: "The adaptive bound on concurrent search requests, by limiter: `shared` (every search call of the process) and, in a dispatcher, `fast_lane` (the fast lane's own).",
    },
    Metric {
        name: "fleet_search_in_flight",
        kind: MetricKind::Gauge,
        seconds: false,
        help: "Search requests running now, by limiter (`shared`, `fast_lane`).",
    },
    Metric {
        name: "fleet_events_published_total",
        kind: MetricKind::Counter,
        seconds: false,
        help: "request.dead_lettered and request.parked events confirmed on invalidation.events, by event.",
    },
    Metric {
        name: "fleet_events_failed_total",
        kind: MetricKind::Counter,
        seconds: false,
        help: "request.dead_lettered and request.parked events that could not be published (the message itself is safe in its queue), by event.",
    },
    Metric {
        name: "fleet_dedup_skipped_total",
        kind: MetricKind::Counter,
        seconds: false,
        help: "Requests processed without de-duplication because Redis did not answer.",
    },
];

/// `# HELP` and units for every metric (promtool requires them; operators
/// read them in Grafana's metric browser).
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    for m in METRICS {
        match (m.kind, m.seconds) {
            (MetricKind::Counter, _) => describe_counter!(m.name, m.help),
            (MetricKind::Gauge, _) => describe_gauge!(m.name, m.help),
            (MetricKind::Histogram, true) => describe_histogram!(m.name, Unit::Seconds, m.help),
            (MetricKind::Histogram, false) => describe_histogram!(m.name, m.help),
        }
    }
}

/// One message reached its end: done, retried, parked, dead_lettered, returned.
pub fn message_outcome(worker: &str, queue: &str, outcome: &'static str, elapsed: Duration) {
    metrics::counter!("fleet_messages_total", "worker" => worker.to_string(), "queue" => queue.to_string(), "outcome" => outcome).increment(1);
    metrics::histogram!("fleet_message_handling_seconds", "worker" => worker.to_string(), "queue" => queue.to_string(), "outcome" => outcome).record(elapsed.as_secs_f64());
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

/// The adaptive bound of one search limiter, and how many of its requests
/// run now.
pub fn search_concurrency(limiter: &'static str, limit: usize, in_flight: usize) {
    metrics::gauge!("fleet_search_concurrency_limit", "limiter" => limiter).set(limit as f64);
    metrics::gauge!("fleet_search_in_flight", "limiter" => limiter).set(in_flight as f64);
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

/// A request arrived with the id of an earlier, different request; it was
/// processed as its own request.
pub fn request_id_reused() {
    metrics::counter!("fleet_request_id_reused_total").increment(1);
}

/// De-duplication was skipped because Redis did not answer; the request
/// was processed anyway (a redelivery may repeat ids downstream).
pub fn dedup_skipped() {
    metrics::counter!("fleet_dedup_skipped_total").increment(1);
}

/// A request event was published (`ok`) or could not be.
pub fn request_event(event: &'static str, ok: bool) {
    if ok {
        metrics::counter!("fleet_events_published_total", "event" => event).increment(1);
    } else {
        metrics::counter!("fleet_events_failed_total", "event" => event).increment(1);
    }
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

async fn live_route() -> impl IntoResponse {
    axum::Json(serde_json::json!({"ok": true}))
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
) -> Result<std::net::SocketAddr, ServiceError> {
    metrics_handle();
    let cannot = |e: std::io::Error| {
        ServiceError::new(
            Service::Metrics,
            format!("cannot listen on {listen} for /metrics: {e}; set FLEET_WORKER_METRICS_LISTEN"),
        )
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(cannot)?;
    let addr = listener.local_addr().map_err(cannot)?;
    // `/livez`: the process serves (a liveness probe: restart only a process
    // that stopped answering). `/readyz`: every dependency this process uses
    // answers and every queue it should consume is consumed (a readiness
    // probe and alerting; a search outage is no reason to restart a worker,
    // the retry path absorbs it). `/healthz` is `/readyz` under its old name.
    let app = Router::new()
        .route("/metrics", get(metrics_route))
        .route("/livez", get(live_route))
        .route("/readyz", get(health_route))
        .route("/healthz", get(health_route))
        .with_state(health);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    tracing::info!(%addr, "Serving /metrics, /livez and /readyz.");
    Ok(addr)
}
