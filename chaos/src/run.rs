//! The run: services up, fleet up, load and faults, settle, check, clean up
//! whatever happened.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use fleet_shared::broker::{self, Identity};
use fleet_shared::config::Config;
use fleet_shared::message::{outbound_queue, IndexKey, InvalidationType};
use fleet_shared::source::SourceKind;
use fleet_shared::topology::names;
use fleet_testkit::Sandbox;
use tokio_util::sync::CancellationToken;

use crate::check::{self, Observed};
use crate::counter::Counter;
use crate::faults::{schedule, FaultKind, FaultRecord};
use crate::fleet::{Fleet, Launch};
use crate::load::{self, Producer, Sent};
use crate::options::Options;
use crate::report::Report;
use crate::services::search::{self, INDEX};
use crate::services::{rabbit, PgCluster, RabbitNode, RedisServer, SearchServer, SearchSpec};

/// The worker processes: two partition workers, one of each other kind.
pub const SLOTS: &[(&str, &str)] = &[
    ("dispatcher", "dispatcher"),
    ("partition-1", "partition"),
    ("partition-2", "partition"),
    ("retry", "retry"),
    ("ingest", "ingest"),
    ("sweeper", "sweeper"),
];

/// How long before a fault its split request is published: long enough
/// for the dispatcher to have split it, so partition tasks are running.
const SPLIT_LEAD: Duration = Duration::from_secs(1);

/// The log filter of the worker subprocesses.
const WORKER_LOG: &str = "info,lapin=warn,lapin::channel=off";

/// Everything the run started, for the clean-up.
struct Env {
    dir: PathBuf,
    rabbit: Option<RabbitNode>,
    pg: Option<PgCluster>,
    redis: Option<RedisServer>,
    search: Option<SearchServer>,
    sandbox: Option<Sandbox>,
    fleet: Option<Fleet>,
    counter: Option<Counter>,
}

impl Env {
    async fn cleanup(&mut self, remove_dir: bool) {
        if let Some(fleet) = self.fleet.take() {
            fleet.stop(Duration::from_secs(5)).await;
        }
        if let Some(c) = self.counter.take() {
            c.drain_and_stop(Duration::ZERO, Duration::ZERO).await;
        }
        if let Some(mut s) = self.sandbox.take() {
            // The vhost, database and keys go with their servers right
            // after; removing them first only keeps the servers' shutdown
            // clean. Bounded, and not retried on drop: the servers are gone then.
            let _ = tokio::time::timeout(Duration::from_secs(30), s.remove()).await;
            std::mem::forget(s);
        }
        if let Some(mut s) = self.search.take() {
            s.remove().await;
        }
        if let Some(mut r) = self.redis.take() {
            r.kill().await;
        }
        if let Some(mut pg) = self.pg.take() {
            pg.remove().await;
        }
        if let Some(mut node) = self.rabbit.take() {
            node.remove().await;
        }
        if remove_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("Logs and data kept in {}.", self.dir.display());
        }
    }
}

/// Runs the suite; everything it started is stopped and removed before it
/// returns, also after an error, Ctrl-C or SIGTERM.
pub async fn run(opts: &Options) -> anyhow::Result<Report> {
    rabbit::check_available()?;
    let dir = std::env::temp_dir().join(format!(
        "fleet-chaos-{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    std::fs::create_dir_all(dir.join("logs"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let mut env = Env {
        dir,
        rabbit: None,
        pg: None,
        redis: None,
        search: None,
        sandbox: None,
        fleet: None,
        counter: None,
    };
    let outcome = if opts.handle_signals {
        let mut sigterm =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = body(&mut env, opts) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted; cleaning up")),
            _ = sigterm.recv() => Err(anyhow::anyhow!("terminated; cleaning up")),
        }
    } else {
        body(&mut env, opts).await
    };
    let passed = outcome.as_ref().is_ok_and(|r| r.passed());
    env.cleanup(passed && !opts.keep_logs).await;
    outcome
}

fn base_config(
    opts: &Options,
    node: &RabbitNode,
    pg: &PgCluster,
    redis: &RedisServer,
    search_url: &str,
) -> Config {
    let mut c = Config::default();
    c.amqp.url = node.amqp_url();
    c.amqp.management_url = node.management_url();
    c.amqp.prefetch = 16;
    c.amqp.reconnect_max_backoff = Duration::from_secs(2);
    c.amqp.confirm_timeout = Duration::from_secs(10);
    c.database.url = pg.admin_url();
    c.database.max_connections = 4;
    c.redis.url = redis.url();
    c.redis.idempotency_ttl = Duration::from_secs(3600);
    c.search.url = search_url.into();
    c.search.timeout = Duration::from_secs(10);
    c.search.page_size = opts.load.split_limit as usize;
    c.search.indices = [("trTR".to_string(), INDEX.to_string())].into();
    c.search.default_index = INDEX.into();
    c.retry.delay = opts.retry_delay;
    // Long enough that nothing is parked for being old during the run.
    c.retry.window = Duration::from_secs(3600);
    c.dispatcher.split_limit = opts.load.split_limit;
    c.partition.heartbeat = opts.stall_after / 4;
    c.sweeper.stall_after = opts.stall_after;
    c.sweeper.interval = Duration::from_secs(1);
    c.sweeper.lock_ttl = opts.stall_after;
    c.worker.shutdown_grace = Duration::from_secs(5);
    c.worker.metrics_listen = String::new();
    c
}

/// Every outbound queue of the topology (17 types × 7 index keys).
fn outbound_queues() -> Vec<String> {
    InvalidationType::ALL
        .iter()
        .flat_map(|t| IndexKey::ALL.iter().map(move |k| outbound_queue(*t, *k)))
        .collect()
}

async fn body(env: &mut Env, opts: &Options) -> anyhow::Result<Report> {
    let started = Instant::now();
    let logs = env.dir.join("logs");
    eprintln!(
        "Fault suite ({} variant); work directory {}.",
        opts.variant,
        env.dir.display()
    );

    // Services: the node, the database cluster and the search load take
    // the longest; they start side by side.
    let node = env.rabbit.insert(RabbitNode::prepare(
        &env.dir.join("rabbit"),
        &format!("chaos{}", std::process::id()),
    )?);
    let spec = SearchSpec {
        catalogue: opts.load.catalogue.clone(),
    };
    let (node_started, pg, search) = tokio::join!(
        node.start(),
        PgCluster::create(),
        SearchServer::start(&spec, &logs),
    );
    let pg = env.pg.insert(pg?);
    let search = env.search.insert(search?);
    let node_took = node_started?;
    let node = env.rabbit.as_ref().expect("set above");
    let redis = env
        .redis
        .insert(RedisServer::start(&env.dir.join("redis")).await?);
    eprintln!(
        "RabbitMQ node {} on :{} (management :{}, started in {:.0} s); PostgreSQL {} {} on :{}; \
         redis-server on :{}; search proxy {} → {}.",
        node.node,
        node.amqp_port,
        node.mgmt_port,
        node_took.as_secs_f64(),
        pg.version,
        pg.name,
        pg.port,
        redis.port,
        search.url,
        search.direct_url
    );
    let base = base_config(opts, node, pg, redis, &search.url);
    let sandbox = env.sandbox.insert(Sandbox::open(&base, "chaos").await?);
    sandbox.try_apply_topology().await?;
    let config = sandbox.config.clone();
    let amqp_url = config.amqp.url.clone();

    let run_id = format!("chaos-{}", &sandbox.vhost[sandbox.vhost.len() - 6..]);
    let span = opts.span();
    let faults = schedule(&opts.faults);
    let plan = load::plan(&opts.load, span, &run_id, opts.seed, faults.len() + 1)?;
    eprintln!(
        "Load: {} requests and events over about {:.0} s, {} split requests; {} faults.",
        plan.items.len(),
        span.as_secs_f64(),
        plan.splits.len(),
        faults.len()
    );

    env.counter = Some(Counter::start(&amqp_url, outbound_queues()));
    let mut worker_env = config.to_env();
    worker_env.push(("FLEET_LOG".into(), WORKER_LOG.into()));
    let launch = Launch {
        fleet_bin: opts.fleet_bin.clone(),
        env: worker_env,
        logs: logs.clone(),
    };
    env.fleet = Some(Fleet::start(&launch, SLOTS)?);
    wait_for_consumers(&amqp_url, Duration::from_secs(180)).await?;
    eprintln!("Fleet consuming ({} worker processes).", SLOTS.len());

    // Load and probes run beside the faults.
    let load_start = Instant::now();
    let driver = {
        let items = plan.items.clone();
        let url = amqp_url.clone();
        tokio::spawn(async move {
            let mut producer = Producer::new(&url);
            let mut sent = Vec::with_capacity(items.len());
            for item in items {
                tokio::time::sleep_until((load_start + item.at).into()).await;
                let deadline = Instant::now() + Duration::from_secs(300);
                let r = producer.publish(&item, deadline).await;
                let (at, attempts) = match r {
                    Ok((at, attempts)) => (Some(at), attempts),
                    Err(e) => {
                        eprintln!("warning: {e:#}");
                        (None, 0)
                    }
                };
                sent.push(Sent { item, at, attempts });
            }
            sent
        })
    };
    let stop_probes = CancellationToken::new();
    let prober = {
        let url = amqp_url.clone();
        let stop = stop_probes.clone();
        let run = run_id.clone();
        let docs = opts.load.catalogue.docs;
        tokio::spawn(async move {
            let mut producer = Producer::new(&url);
            let mut sent = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            for n in 0.. {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let item = load::probe(&run, n, docs);
                let r = producer
                    .publish(&item, Instant::now() + Duration::from_secs(300))
                    .await;
                let (at, attempts) = r.map(|(a, n)| (Some(a), n)).unwrap_or((None, 0));
                sent.push(Sent { item, at, attempts });
            }
            sent
        })
    };

    // One split request at the start and one shortly before each fault, so
    // every fault meets a job in progress.
    let mut splitter = Producer::new(&amqp_url);
    let mut splits = plan.splits.clone().into_iter();
    let mut split_sent = Vec::new();
    let mut publish_split = async |splitter: &mut Producer, sent: &mut Vec<Sent>| {
        if let Some(item) = splits.next() {
            let r = splitter
                .publish(&item, Instant::now() + Duration::from_secs(120))
                .await;
            let (at, attempts) = r.map(|(a, n)| (Some(a), n)).unwrap_or((None, 0));
            sent.push(Sent { item, at, attempts });
        }
    };
    publish_split(&mut splitter, &mut split_sent).await;
    tokio::time::sleep(opts.warmup.saturating_sub(SPLIT_LEAD)).await;
    let mut records = Vec::new();
    for (i, kind) in faults.iter().enumerate() {
        publish_split(&mut splitter, &mut split_sent).await;
        tokio::time::sleep(SPLIT_LEAD).await;
        let record = inject(env, *kind, opts).await;
        eprintln!(
            "[{:>4.0} s] fault {}/{}: {} ({}) for {:.1} s{}{}",
            load_start.elapsed().as_secs_f64(),
            i + 1,
            faults.len(),
            kind.label(),
            record.target,
            record.down().as_secs_f64(),
            if record.note.is_empty() {
                String::new()
            } else {
                format!("; {}", record.note)
            },
            record
                .error
                .as_deref()
                .map(|e| format!("; FAILED: {e}"))
                .unwrap_or_default(),
        );
        let fatal = record.error.is_some() && matches!(kind, FaultKind::BrokerRestart);
        records.push(record);
        if fatal {
            bail!("the broker did not come back; the run cannot go on");
        }
        tokio::time::sleep(opts.timings.gap.saturating_sub(SPLIT_LEAD)).await;
    }
    let faults_done = Instant::now();
    stop_probes.cancel();
    let mut sent = driver.await.context("the load driver panicked")?;
    sent.extend(prober.await.context("the prober panicked")?);
    sent.extend(split_sent);
    eprintln!(
        "Faults over after {:.0} s; waiting for the fleet to deliver everything (at most {:.0} s)…",
        load_start.elapsed().as_secs_f64(),
        opts.settle_timeout.as_secs_f64()
    );

    let expected = check::expected(&sent);
    let jobs_expected: Vec<(String, IndexKey)> = sent
        .iter()
        .filter_map(|s| s.item.split.clone())
        .flat_map(|(id, keys)| keys.into_iter().map(move |k| (id.clone(), k)))
        .collect();
    let db = fleet_shared::db::connect_existing(&config.database.url, 2).await?;
    let settled = settle(env, &expected, jobs_expected.len(), &db, &amqp_url, opts).await;
    let settle_took = faults_done.elapsed();
    // Late duplicates (a retry that was already in flight) still count.
    tokio::time::sleep(opts.retry_delay + Duration::from_secs(2)).await;

    let slot_stats = env
        .fleet
        .take()
        .expect("started above")
        .stop(Duration::from_secs(10))
        .await;
    let tally = env
        .counter
        .take()
        .expect("started above")
        .drain_and_stop(Duration::from_secs(2), Duration::from_secs(20))
        .await;
    let observed = Observed::gather(&config, &db, &jobs_expected, &outbound_queues()).await?;
    db.close().await;
    let report = Report::build(
        opts,
        check::Inputs {
            sent,
            faults: records,
            tally,
            expected,
            observed,
            slots: slot_stats,
            settled,
            settle_took,
            load_start,
            total: started.elapsed(),
        },
    );
    if let Err(e) = report.write_details(&env.dir) {
        eprintln!("warning: could not write the run's details: {e:#}");
    }
    Ok(report)
}

/// Injects one fault and undoes it; the record says what happened.
async fn inject(env: &mut Env, kind: FaultKind, opts: &Options) -> FaultRecord {
    let t = &opts.timings;
    let started = Instant::now();
    let mut target = String::new();
    let mut note = String::new();
    let result: anyhow::Result<Option<Instant>> = async {
        if let Some(worker) = kind.worker() {
            let fleet = env.fleet.as_mut().context("no fleet")?;
            let (slot, _died, back) = fleet.kill(worker, t.worker_down).await?;
            target = slot;
            return Ok(Some(back));
        }
        match kind {
            FaultKind::BrokerRestart => {
                let node = env.rabbit.as_mut().context("no node")?;
                target = node.node.clone();
                let t0 = Instant::now();
                node.stop().await?;
                let stopped = t0.elapsed();
                tokio::time::sleep(t.broker_down).await;
                let took = node.start().await?;
                note = format!(
                    "stop took {:.0} s, start {:.0} s",
                    stopped.as_secs_f64(),
                    took.as_secs_f64()
                );
            }
            FaultKind::SearchAway => {
                let s = env.search.as_mut().context("no search")?;
                target = s.url.clone();
                s.take_away();
                tokio::time::sleep(t.search_down).await;
                s.bring_back().await?;
            }
            FaultKind::PostgresRestart => {
                let pg = env.pg.as_ref().context("no PostgreSQL")?;
                target = format!("{} {}", pg.version, pg.name);
                pg.restart().await?;
            }
            FaultKind::RedisRestart => {
                let r = env.redis.as_mut().context("no Redis")?;
                target = format!("redis-server :{}", r.port);
                r.kill().await;
                tokio::time::sleep(t.redis_down).await;
                r.spawn().await?;
            }
            FaultKind::SearchOverload => {
                let s = env.search.as_ref().context("no search")?;
                target = format!("{} ({} clients)", s.direct_url, t.overload_clients);
                let burst =
                    search::overload(&s.direct_url, t.overload_clients, t.overload_for).await;
                note = format!(
                    "{} heavy queries sent, {} answered",
                    burst.sent, burst.answered
                );
            }
            _ => unreachable!("worker kills are handled above"),
        }
        Ok(None)
    }
    .await;
    let (ended, error) = match result {
        Ok(back) => (back.unwrap_or_else(Instant::now), None),
        Err(e) => (Instant::now(), Some(format!("{e:#}"))),
    };
    FaultRecord {
        kind,
        target,
        started,
        ended,
        note,
        error,
    }
}

/// Waits until every consumed queue has its consumer.
async fn wait_for_consumers(url: &str, wait: Duration) -> anyhow::Result<()> {
    let mut queues: Vec<String> = vec![
        names::FAST_LANE.into(),
        names::BULK_LANE.into(),
        names::PARTITIONS.into(),
        names::RETRY_READY.into(),
    ];
    queues.extend(SourceKind::ALL.iter().map(|k| k.queue()));
    let conn = broker::connect(url, &Identity::new("chaos"), "control").await?;
    let deadline = Instant::now() + wait;
    loop {
        let counts = broker::queue_counts(&conn, &queues).await?;
        let idle: Vec<&String> = queues
            .iter()
            .zip(&counts)
            .filter(|(_, c)| c.is_none_or(|c| c.consumers == 0))
            .map(|(q, _)| q)
            .collect();
        if idle.is_empty() {
            let _ = conn.close(200, "ready".into()).await;
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no consumer on {idle:?} after {wait:?}; see the worker logs");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until every expected id arrived, every job completed and the
/// working queues are empty, or `settle_timeout`; returns whether it settled.
async fn settle(
    env: &Env,
    expected: &check::Expected,
    jobs: usize,
    db: &sqlx::PgPool,
    amqp_url: &str,
    opts: &Options,
) -> bool {
    let deadline = Instant::now() + opts.settle_timeout;
    let working: Vec<String> = check::working_queues();
    let mut last_note = Instant::now();
    loop {
        let missing = env
            .counter
            .as_ref()
            .map(|c| c.read(|t| expected.missing(t)))
            .unwrap_or(usize::MAX);
        let completed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE state = 'completed' AND event_published_at IS NOT NULL",
        )
        .fetch_one(db)
        .await
        .unwrap_or(-1);
        let busy = async {
            let conn = broker::connect(amqp_url, &Identity::new("chaos"), "control")
                .await
                .ok()?;
            let counts = broker::queue_counts(&conn, &working).await.ok()?;
            let _ = conn.close(200, "checked".into()).await;
            Some(counts.iter().flatten().map(|c| c.ready as u64).sum::<u64>())
        }
        .await;
        if missing == 0 && completed == jobs as i64 && busy == Some(0) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        if last_note.elapsed() > Duration::from_secs(15) {
            last_note = Instant::now();
            eprintln!(
                "  {missing} ids not delivered yet, {completed}/{jobs} jobs completed, {} messages in working queues",
                busy.map(|b| b.to_string()).unwrap_or_else(|| "?".into())
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
