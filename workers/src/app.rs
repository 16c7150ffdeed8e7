//! Process wiring: connect what the chosen workers need (failing fast with a
//! message that names the missing service), apply the topology, serve
//! `/metrics` + `/healthz`, run the workers until shutdown.

use std::sync::Arc;

use clap::ValueEnum;
use fleet_shared::broker::{Identity, Publisher};
use fleet_shared::config::Config;
use fleet_shared::kv::Kv;
use fleet_shared::runtime::{consume, Context};
use fleet_shared::search::Search;
use fleet_shared::telemetry::{self, Health};
use fleet_shared::topology::{self, names, Topology};
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::dispatcher::Dispatcher;
use crate::ingest::Ingest;
use crate::lanes::Lanes;
use crate::partition::PartitionWorker;
use crate::retry::RetryHandler;
use crate::sweeper::Sweeper;
use crate::unroutable::Unroutable;

/// The long-running workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
pub enum WorkerKind {
    /// Validates requests from both lanes; resolves small ones, splits large
    /// ones; puts requests on the lane of their type (also from
    /// `invalidation.unroutable`).
    Dispatcher,
    /// Runs partition tasks of split requests.
    Partition,
    /// Sends failed messages back after the delay, or parks them.
    Retry,
    /// Turns source events into invalidation requests.
    Ingest,
    /// Re-publishes stalled partition tasks (one active instance).
    Sweeper,
}

impl WorkerKind {
    pub const ALL: &'static [WorkerKind] = &[
        WorkerKind::Dispatcher,
        WorkerKind::Partition,
        WorkerKind::Retry,
        WorkerKind::Ingest,
        WorkerKind::Sweeper,
    ];

    pub fn name(self) -> &'static str {
        match self {
            WorkerKind::Dispatcher => "dispatcher",
            WorkerKind::Partition => "partition",
            WorkerKind::Retry => "retry",
            WorkerKind::Ingest => "ingest",
            WorkerKind::Sweeper => "sweeper",
        }
    }

    fn needs_db(self) -> bool {
        !matches!(self, WorkerKind::Ingest)
    }

    fn needs_search(self) -> bool {
        matches!(self, WorkerKind::Dispatcher | WorkerKind::Partition)
    }

    fn needs_kv(self) -> bool {
        matches!(self, WorkerKind::Dispatcher | WorkerKind::Sweeper)
    }
}

/// The shared clients of one process.
#[derive(Clone)]
pub struct Services {
    pub config: Arc<Config>,
    pub db: Option<PgPool>,
    pub kv: Option<Kv>,
    pub search: Option<Search>,
}

impl Services {
    /// Connects to what `kinds` need, in the order an operator would check them.
    pub async fn connect(config: Arc<Config>, kinds: &[WorkerKind]) -> anyhow::Result<Self> {
        let db = if kinds.iter().any(|k| k.needs_db()) {
            Some(
                fleet_shared::db::connect(&config.database.url, config.database.max_connections)
                    .await?,
            )
        } else {
            None
        };
        let kv = if kinds.iter().any(|k| k.needs_kv()) {
            Some(Kv::connect(&config.redis).await?)
        } else {
            None
        };
        let search = if kinds.iter().any(|k| k.needs_search()) {
            let s = Search::new(&config.search)?;
            // A search outage is a transient failure the retry path absorbs:
            // refusing to start would turn it into a crash loop. Say it loudly.
            if let Err(error) = s.check_startup().await {
                tracing::warn!(%error, "Starting without the search cluster; requests that need it will be retried.");
            }
            Some(s)
        } else {
            None
        };
        Ok(Self {
            config,
            db,
            kv,
            search,
        })
    }
}

/// Builds a worker's context: its own named publisher connection.
pub async fn context(config: &Arc<Config>, worker: &str) -> anyhow::Result<Context> {
    let identity = Identity::new(worker);
    let publisher =
        Publisher::connect(&config.amqp, &identity, config.amqp.confirm_timeout).await?;
    Ok(Context {
        config: config.clone(),
        identity,
        publisher,
        consumers: Default::default(),
    })
}

/// Applies the topology over a fresh connection.
pub async fn apply_topology(ctx: &Context) -> anyhow::Result<topology::ApplyReport> {
    let topo = Topology::load(&ctx.config)?;
    let conn = ctx.publisher.connection().await?;
    Ok(topology::apply(&conn, &topo).await?)
}

/// Runs `kinds` until `shutdown`; returns when every worker stopped.
pub async fn run(
    config: Config,
    kinds: &[WorkerKind],
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let first = context(&config, kinds.first().map(|k| k.name()).unwrap_or("fleet")).await?;
    if config.worker.apply_topology {
        match apply_topology(&first).await {
            Ok(report) => tracing::info!(
                exchanges = report.exchanges,
                queues = report.queues,
                bindings = report.bindings,
                "Topology applied."
            ),
            // A least-privilege user (`fleet topology export --users`) has
            // no configure right by design. Refusing to start would be a
            // crash loop over a topology an operator applies anyway: say
            // so once and go on; a missing queue then shows as a consumer
            // that cannot start, with its own clear error.
            Err(e) => match e.downcast_ref::<topology::TopologyError>() {
                Some(topology::TopologyError::AccessRefused(refusal)) => tracing::warn!(
                    error = %refusal,
                    "This worker's user may not declare the topology (least privilege); going on with the topology an operator applied (`fleet topology apply` as an administrator). FLEET_WORKER_APPLY_TOPOLOGY=false skips this attempt."
                ),
                _ => return Err(e),
            },
        }
    }
    if !config.worker.metrics_listen.is_empty() {
        // The recorder first: what connecting sets (each search limit's
        // starting bound) is reported from the start, not from first use.
        telemetry::metrics_handle();
    }
    let services = Services::connect(config.clone(), kinds).await?;
    // Every consumer loop of this process reports here; a queue the broker
    // stopped delivering from fails the health check until it is back.
    let consumers = fleet_shared::runtime::Consumers::default();
    let mut health = Health::default();
    {
        let consumers = consumers.clone();
        health.add("consumers", move || {
            let idle = consumers.idle();
            async move {
                if idle.is_empty() {
                    Ok(())
                } else {
                    Err(format!("not consuming {}", idle.join(", ")))
                }
            }
        });
    }
    {
        let p = first.publisher.clone();
        health.add("broker", move || {
            let p = p.clone();
            async move { p.connection().await.map(|_| ()).map_err(|e| e.to_string()) }
        });
    }
    if let Some(db) = services.db.clone() {
        health.add("database", move || {
            let db = db.clone();
            async move {
                sqlx::query("SELECT 1")
                    .execute(&db)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        });
    }
    if let Some(kv) = services.kv.clone() {
        health.add("redis", move || {
            let kv = kv.clone();
            async move { kv.ping().await.map_err(|e| e.to_string()) }
        });
    }
    if let Some(search) = services.search.clone() {
        health.add("search", move || {
            let s = search.clone();
            async move { s.ping().await.map_err(|e| e.to_string()) }
        });
    }
    if !config.worker.metrics_listen.is_empty() {
        telemetry::serve(&config.worker.metrics_listen, health, shutdown.clone()).await?;
    }

    let mut tasks = JoinSet::new();
    for &kind in kinds {
        let mut ctx = if kind == kinds[0] {
            first.clone()
        } else {
            context(&config, kind.name()).await?
        };
        ctx.consumers = consumers.clone();
        let s = services.clone();
        let stop = shutdown.clone();
        // `expect`s below: `Services::connect` connected what each kind needs.
        match kind {
            WorkerKind::Dispatcher => {
                let lanes = Lanes::load(&config)?;
                let h = Dispatcher::new(
                    ctx.clone(),
                    s.search.clone().expect("search"),
                    s.db.clone().expect("db"),
                    s.kv.clone().expect("kv"),
                    lanes.clone(),
                );
                // The fast lane shares nothing with the bulk lane that bulk
                // work could fill: its own publisher connection and batcher
                // (bulk chunks of 1,000 ids never queue ahead of its
                // batches) and its own search limit (a bulk scan never holds
                // the permit a single-listing search waits for).
                let mut fast_ctx = context(&config, kind.name()).await?;
                fast_ctx.consumers = consumers.clone();
                let fast = Dispatcher::new(
                    fast_ctx.clone(),
                    s.search
                        .as_ref()
                        .expect("search")
                        .with_own_limit("fast_lane"),
                    s.db.clone().expect("db"),
                    s.kv.clone().expect("kv"),
                    lanes.clone(),
                );
                // The request exchange's alternate exchange: requests whose
                // routing key no lane is bound to go to their type's lane.
                tasks.spawn(until_stopped(consume(
                    ctx.clone(),
                    vec![names::UNROUTABLE.into()],
                    Unroutable::new(ctx.clone(), lanes),
                    stop.clone(),
                )));
                // One consumer per lane, each on its own connection and
                // prefetch: a slow bulk request never holds up the fast lane.
                tasks.spawn(until_stopped(consume(
                    fast_ctx,
                    vec![names::FAST_LANE.into()],
                    fast,
                    stop.clone(),
                )));
                tasks.spawn(until_stopped(consume(
                    ctx,
                    vec![names::BULK_LANE.into()],
                    h,
                    stop,
                )));
            }
            WorkerKind::Partition => {
                let h = PartitionWorker::new(
                    ctx.clone(),
                    s.search.clone().expect("search"),
                    s.db.clone().expect("db"),
                );
                tasks.spawn(until_stopped(consume(
                    ctx,
                    vec![names::PARTITIONS.into()],
                    h,
                    stop,
                )));
            }
            WorkerKind::Retry => {
                let h = RetryHandler::new(ctx.clone(), s.db.clone().expect("db"))?;
                tasks.spawn(until_stopped(consume(
                    ctx,
                    vec![names::RETRY_READY.into()],
                    h,
                    stop,
                )));
            }
            WorkerKind::Ingest => {
                tasks.spawn(until_stopped(consume(
                    ctx.clone(),
                    Ingest::queues(),
                    Ingest::new(ctx),
                    stop,
                )));
            }
            WorkerKind::Sweeper => {
                let sw = Sweeper::new(ctx, s.db.clone().expect("db"), s.kv.clone().expect("kv"));
                tasks.spawn(sw.run(stop));
            }
        }
    }
    let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
    tracing::info!(workers = ?names, "Fleet running; Ctrl-C or SIGTERM stops it.");
    let mut result = Ok(());
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "A worker stopped with an error; stopping the others.");
                shutdown.cancel();
                result = Err(e);
            }
            Err(e) => {
                shutdown.cancel();
                result = Err(anyhow::anyhow!("a worker task panicked: {e}"));
            }
        }
    }
    tracing::info!("Fleet stopped.");
    result
}

/// A consumer runs until shutdown; as a worker task it never fails.
async fn until_stopped(consumer: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    consumer.await;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM, then cancels `token`; a second signal exits at once.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("Shutdown requested; finishing in-flight messages.");
        token.cancel();
        wait_for_signal().await;
        tracing::warn!("Second signal; exiting now (unacked messages return to the broker).");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::WorkerKind;

    #[test]
    fn every_worker_type_can_have_its_own_prefetch() {
        let names: Vec<&str> = WorkerKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names, fleet_shared::config::WORKER_TYPES);
    }
}
