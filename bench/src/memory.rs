//! (c) Memory: peak RSS of a partition worker subprocess streaming a small
//! and a large partition task (it must stream, not collect).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use fleet_shared::db::{self, NewJob, NewTask};
use fleet_shared::lapin::{Channel, Connection};
use fleet_shared::message::{now_millis, outbound_queue, PartitionTask, CURRENT_VERSION};
use fleet_shared::runtime::Context;
use fleet_shared::search::{with_partition_range, Search};
use fleet_shared::topology::names;
use uuid::Uuid;

use crate::counter::{join_counter, outbound_ids, start_counter};
use crate::fanout::{fanout_query, fanout_request};
use crate::report::{mib, thousands, Memory};
use crate::run::{Options, FANOUT_TYPE, KEY, RSS_SAMPLE_EVERY};
use crate::setup::BenchEnv;
use crate::worker::{read_status_kib, wait_for_consumer, Worker};

pub async fn memory(
    env: &BenchEnv,
    opts: &Options,
    search: &Search,
    ctx: &Context,
    conn: &Connection,
    control: &Channel,
) -> anyhow::Result<Memory> {
    let index = env.config().search.index_for(KEY).to_string();
    let (supplier_ids, query) = fanout_query(opts);
    let small_to = opts.small_partitions;
    let small = search
        .count(&index, &with_partition_range(&query, None, Some(small_to)))
        .await?;
    let large = search.count(&index, &query).await?;
    eprintln!(
        "\n(c) memory: one `fleet run partition` subprocess streams a task of {} ids \
         (searchPartition < {small_to}), then one of {} ids (no range).",
        thousands(small as f64),
        thousands(large as f64)
    );
    let mut worker = Worker::spawn(env, &["partition"], "memory-partition", None).await?;
    let result = async {
        wait_for_consumer(
            control,
            names::PARTITIONS,
            &mut worker,
            Duration::from_secs(60),
        )
        .await?;
        // Let start-up allocations settle before the idle reading.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let idle = read_status_kib(worker.pid, "VmRSS").context("reading the worker's RSS")?;
        eprintln!("  idle worker RSS {}.", mib(idle));
        let pool = db::connect(&env.config().database.url, 1).await?;
        let mut out = Vec::new();
        for (label, to, expected) in [("small", Some(small_to), small), ("large", None, large)] {
            let job = Uuid::new_v4();
            let request_id = format!("bench-memory-{label}-{job}");
            let tasks = db::create_job(
                &pool,
                &NewJob {
                    id: job,
                    request_id: request_id.clone(),
                    invalidation_type: FANOUT_TYPE.to_string(),
                    index_key: KEY.to_string(),
                    parameter_name: "supplier.id".into(),
                    request: serde_json::to_value(fanout_request(
                        &request_id,
                        supplier_ids.clone(),
                    ))?,
                    total_hits: expected as i64,
                },
                &[NewTask {
                    from: None,
                    to,
                    expected_hits: expected as i64,
                }],
                env.config().redis.idempotency_ttl,
            )
            .await
            .context("creating the memory job")?;
            let task_no = tasks.first().map(|t| t.task_no).unwrap_or(0);
            let queue = outbound_queue(FANOUT_TYPE, KEY);
            let counter = start_counter(
                conn,
                &queue,
                expected,
                Duration::from_secs(120),
                outbound_ids,
            )
            .await?;
            let pid = worker.pid;
            let sampling = tokio_util::sync::CancellationToken::new();
            let sampler = tokio::spawn({
                let stop = sampling.clone();
                async move {
                    let mut peak = 0u64;
                    let mut tick = tokio::time::interval(RSS_SAMPLE_EVERY);
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tick.tick() => {
                                if let Some(kib) = read_status_kib(pid, "VmRSS") {
                                    peak = peak.max(kib);
                                }
                            }
                        }
                    }
                    peak
                }
            });
            let task = PartitionTask {
                v: CURRENT_VERSION,
                job_id: job,
                task_no,
                request_id,
                invalidation_type: FANOUT_TYPE,
                index_key: KEY,
                parameter_name: "supplier.id".into(),
                parameter_ids: supplier_ids.clone(),
                partition_from: None,
                partition_to: to,
                invalidation_time: now_millis(),
            };
            let t = Instant::now();
            fleet_workers::job::publish_task(ctx, &task)
                .await
                .map_err(|e| anyhow::anyhow!("publishing the partition task: {e}"))?;
            let counted = join_counter(counter).await;
            sampling.cancel();
            let peak = sampler.await.context("the RSS sampler panicked")?;
            let counted = counted?;
            let secs = counted.last_new.duration_since(t).as_secs_f64();
            let hwm = read_status_kib(worker.pid, "VmHWM").unwrap_or(0);
            eprintln!(
                "  {label}: {} ids in {:.2} s, peak RSS {} (VmHWM {}).",
                thousands(counted.distinct as f64),
                secs,
                mib(peak),
                mib(hwm)
            );
            out.push((counted.distinct, secs, peak, hwm));
        }
        pool.close().await;
        let (small, large) = (out[0], out[1]);
        anyhow::Ok(Memory {
            idle_kib: idle,
            small_ids: small.0,
            small_secs: small.1,
            small_peak_kib: small.2,
            small_hwm_kib: small.3,
            large_ids: large.0,
            large_secs: large.1,
            large_peak_kib: large.2,
            large_hwm_kib: large.3,
        })
    }
    .await;
    worker.stop().await;
    result
}
