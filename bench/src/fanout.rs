//! (a) Fan-out: one request matching the whole catalogue through the
//! dispatcher and partition workers, against raw scans of the same query
//! (the partition queries summed, and unsplit). The fleet runs once per
//! search concurrency setting (`--concurrency`, by default the adaptive
//! limit and fixed limits 1, 2, 4, 8, 16), each in its own worker
//! subprocess, over the same index and the same request; each run is checked
//! for transient failures (retried or failed tasks, search errors and
//! back-offs, messages in the retry, parked and dead-letter queues, warnings
//! in the worker's log).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use fleet_shared::broker::{self, Outgoing};
use fleet_shared::db;
use fleet_shared::lapin::{Channel, Connection};
use fleet_shared::message::{outbound_queue, InvalidationRequest, CURRENT_VERSION};
use fleet_shared::runtime::Context;
use fleet_shared::search::{group_partitions, terms_query, with_partition_range, Search};
use fleet_shared::topology::names;
use futures::StreamExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::counter::{join_counter_partial, outbound_ids, start_counter};
use crate::metrics;
use crate::report::{rate, thousands, Fanout, FleetRun, Health};
use crate::run::{Concurrency, Options, FANOUT_MIN_HITS, FANOUT_TYPE, KEY};
use crate::setup::BenchEnv;
use crate::worker::{log_warnings, read_status_kib, wait_for_consumer, Worker};

/// The fan-out request's query: every supplier.
pub fn fanout_query(opts: &Options) -> (Vec<i64>, Value) {
    let ids: Vec<i64> = (1..=i64::from(opts.suppliers)).collect();
    let q = terms_query("supplier.id", &ids, None);
    (ids, q)
}

pub async fn fanout(
    env: &BenchEnv,
    opts: &Options,
    search: &Search,
    ctx: &Context,
    conn: &Connection,
    control: &Channel,
) -> anyhow::Result<Fanout> {
    let index = env.config().search.index_for(KEY).to_string();
    let (supplier_ids, query) = fanout_query(opts);
    let hits = search.count(&index, &query).await?;
    eprintln!(
        "\n(a) fan-out: SUPPLIER request naming {} suppliers matches {} documents in {index}.",
        supplier_ids.len(),
        thousands(hits as f64)
    );
    if hits < FANOUT_MIN_HITS {
        eprintln!(
            "  note: fewer than {} documents (a quick run); the issue's target needs --docs 250000.",
            thousands(FANOUT_MIN_HITS as f64)
        );
    }

    // Baseline 1: the partition queries the dispatcher would make, scanned
    // one after the other by a single client.
    let t = Instant::now();
    let buckets = search.partition_histogram(&index, &query).await?;
    let histogram_secs = t.elapsed().as_secs_f64();
    let groups = group_partitions(&buckets, opts.split_limit);
    eprintln!(
        "  baseline: raw scans of {} partition queries (split limit {}), sequential…",
        groups.len(),
        opts.split_limit
    );
    let mut partition_scan_secs = 0.0;
    let mut partition_scan_ids = 0u64;
    for g in &groups {
        let q = with_partition_range(&query, g.from, g.to);
        let t = Instant::now();
        let mut pages = std::pin::pin!(search.scan(&index, q));
        while let Some(page) = pages.next().await {
            partition_scan_ids += page?.len() as u64;
        }
        partition_scan_secs += t.elapsed().as_secs_f64();
    }
    eprintln!(
        "  baseline: {} ids in {:.2} s summed ({} ids/s).",
        thousands(partition_scan_ids as f64),
        partition_scan_secs,
        thousands(rate(partition_scan_ids, partition_scan_secs))
    );

    // Baseline 2: the same query unsplit, one `search_after` stream.
    let cap = opts.unsplit_limit.unwrap_or(u64::MAX);
    eprintln!(
        "  baseline: raw unsplit search_after scan{}…",
        if cap < hits {
            format!(" (first {} ids)", thousands(cap as f64))
        } else {
            String::new()
        }
    );
    let t = Instant::now();
    let mut unsplit_ids = 0u64;
    let mut unsplit_capped = false;
    {
        let mut pages = std::pin::pin!(search.scan(&index, query.clone()));
        let mut last_note = Instant::now();
        while let Some(page) = pages.next().await {
            unsplit_ids += page?.len() as u64;
            if (unsplit_ids >= cap || t.elapsed() > opts.unsplit_max) && unsplit_ids < hits {
                unsplit_capped = true;
                break;
            }
            if last_note.elapsed() > Duration::from_secs(15) {
                last_note = Instant::now();
                eprintln!(
                    "    {} ids after {:.0} s",
                    thousands(unsplit_ids as f64),
                    t.elapsed().as_secs_f64()
                );
            }
        }
    }
    let unsplit_secs = t.elapsed().as_secs_f64();
    eprintln!(
        "  baseline: {} ids in {:.2} s ({} ids/s).",
        thousands(unsplit_ids as f64),
        unsplit_secs,
        thousands(rate(unsplit_ids, unsplit_secs))
    );

    // The fleet: one request, split by a dispatcher + partition subprocess,
    // once per search concurrency setting.
    let mut runs = Vec::new();
    for &setting in &opts.concurrency {
        runs.push(fleet_run(env, ctx, conn, control, setting, hits, &supplier_ids).await?);
    }
    Ok(Fanout {
        hits,
        groups: groups.len(),
        partition_prefetch: env.config().amqp.prefetch_for("partition"),
        adaptive: env.config().search.concurrency_bounds(),
        runs,
        partition_scan_secs,
        partition_scan_ids,
        histogram_secs,
        unsplit_secs,
        unsplit_ids,
        unsplit_capped,
    })
}

/// Queues a failed or unfinished piece of work ends up in.
const FAILURE_QUEUES: &[&str] = &[
    names::RETRY_DELAY,
    names::RETRY_READY,
    names::PARKED,
    "invalidation.partitions.dlq",
    "invalidation.requests.bulk.dlq",
];

/// Empties the queues a fan-out run uses, so nothing of an earlier
/// (possibly unfinished) run reaches the next worker or its checks.
async fn purge_work_queues(control: &Channel) -> anyhow::Result<()> {
    for q in [names::BULK_LANE, names::PARTITIONS]
        .iter()
        .chain(FAILURE_QUEUES)
    {
        control
            .queue_purge((*q).into(), Default::default())
            .await
            .with_context(|| format!("purging {q}"))?;
    }
    Ok(())
}

/// One fan-out through a fresh `fleet run dispatcher partition` subprocess
/// whose search concurrency is `setting`. A run that stalls is reported as
/// such (with what it delivered), not as an error of the benchmark.
async fn fleet_run(
    env: &BenchEnv,
    ctx: &Context,
    conn: &Connection,
    control: &Channel,
    setting: Concurrency,
    hits: u64,
    supplier_ids: &[i64],
) -> anyhow::Result<FleetRun> {
    purge_work_queues(control).await?;
    let label = format!("fanout-{}", setting.to_string().replace(' ', "-"));
    let mut worker =
        Worker::spawn(env, &["dispatcher", "partition"], &label, Some(setting)).await?;
    let run = async {
        for q in [names::BULK_LANE, names::PARTITIONS] {
            wait_for_consumer(control, q, &mut worker, Duration::from_secs(60)).await?;
        }
        let queue = outbound_queue(FANOUT_TYPE, KEY);
        let counter =
            start_counter(conn, &queue, hits, Duration::from_secs(120), outbound_ids).await?;
        let request_id = format!("bench-fanout-{}", Uuid::new_v4());
        let request = fanout_request(&request_id, supplier_ids.to_vec());
        eprintln!(
            "  fleet, search concurrency {setting} (pid {}): publishing the request, counting ids on {queue}…",
            worker.pid
        );
        let stop_sampling = CancellationToken::new();
        let sampler = metrics::sample_limit(worker.metrics_url.clone(), stop_sampling.clone());
        let t = Instant::now();
        ctx.publisher
            .publish(Outgoing::json(
                names::REQUESTS,
                &request.routing_key(),
                &request.encode(),
            ))
            .await
            .context("publishing the fan-out request")?;
        let counted = join_counter_partial(counter).await?;
        let secs = counted.last_new.duration_since(t).as_secs_f64();
        let job_id = fleet_workers::job::id_of(&request, KEY);
        // The job completes (its last task acked) just after its last ids.
        let pool = db::connect(&env.config().database.url, 1).await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let job = loop {
            let job = db::job(&pool, job_id).await?;
            let done = job.as_ref().is_some_and(|j| j.state == "completed");
            if done || counted.stalled.is_some() || Instant::now() > deadline {
                break job;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let tasks = db::tasks(&pool, job_id).await?;
        pool.close().await;
        stop_sampling.cancel();
        let limit = sampler.await.context("the metrics sampler panicked")?;
        let http = crate::local_http(Duration::from_secs(30))?;
        let scrape = metrics::scrape(&http, &worker.metrics_url)
            .await
            .with_context(|| format!("reading {}", worker.metrics_url))?;
        let mut failure_queue_messages = 0u32;
        for q in FAILURE_QUEUES {
            failure_queue_messages += broker::inspect_queue(control, q)
                .await
                .with_context(|| format!("checking {q}"))?
                .message_count();
        }
        let (warnings, first_warning) = log_warnings(&worker.log);
        let health = Health {
            job_state: job.map(|j| j.state).unwrap_or_else(|| "none".into()),
            tasks: tasks.len(),
            tasks_not_done: tasks.iter().filter(|t| t.status != "done").count(),
            task_starts: tasks.iter().map(|t| i64::from(t.attempts)).sum(),
            not_done_messages: scrape.sum("fleet_messages_total", &[], &["outcome=\"done\""]),
            search_errors: scrape.sum("fleet_search_errors_total", &[], &[]),
            backoffs: scrape.sum("fleet_search_backoffs_total", &[], &[]),
            failure_queue_messages,
            warnings,
            first_warning,
        };
        let run = FleetRun {
            setting,
            stalled: counted.stalled.clone(),
            distinct: counted.distinct,
            secs,
            messages: counted.messages,
            delivered: counted.ids,
            worker_hwm_kib: read_status_kib(worker.pid, "VmHWM").unwrap_or(0),
            limit,
            health,
        };
        eprintln!("    {}", run.summary());
        anyhow::Ok(run)
    }
    .await;
    worker.stop().await;
    run
}

/// The fan-out request: every supplier, one index key.
pub fn fanout_request(request_id: &str, supplier_ids: Vec<i64>) -> InvalidationRequest {
    InvalidationRequest {
        v: CURRENT_VERSION,
        request_id: Some(request_id.to_string()),
        parameter_ids: supplier_ids,
        parameter_name: "supplier.id".into(),
        is_nested_type: false,
        nested_path_name: None,
        invalidation_type: FANOUT_TYPE,
        index_keys: vec![KEY],
        invalidation_time: None,
    }
}
