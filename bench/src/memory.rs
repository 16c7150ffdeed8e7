//! (c) Memory: peak RSS of one partition worker subprocess streaming
//! 100,000 ids (one task) and then 1,000,000 ids (one task after another,
//! each its own bulk type and outbound queue, over the same index — a million
//! ids as many requests, as CRATES.md advises for osmem-server). A worker
//! that streams keeps the same peak at both sizes; one that collects grows
//! with the stream.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use fleet_shared::db::{self, NewJob, NewTask};
use fleet_shared::lapin::{Channel, Connection};
use fleet_shared::message::{
    now_millis, outbound_queue, InvalidationType, PartitionTask, CURRENT_VERSION,
};
use fleet_shared::runtime::Context;
use fleet_shared::search::{with_partition_range, Search};
use fleet_shared::topology::names;
use uuid::Uuid;

use crate::counter::{join_counter, outbound_ids, start_counter};
use crate::fanout::{fanout_query, fanout_request};
use crate::report::{mib, thousands, Memory, MemoryPhase};
use crate::run::{Options, KEY};
use crate::setup::BenchEnv;
use crate::worker::{read_status_kib, wait_for_consumer, PeakRss, Worker};

/// One partition task of a phase: its type (its outbound queue) and range.
struct TaskPlan {
    invalidation_type: InvalidationType,
    to: Option<i64>,
    expected: u64,
}

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
    let whole = search.count(&index, &query).await?;
    anyhow::ensure!(
        whole > 0,
        "the memory tasks' query matches nothing in {index}"
    );
    // searchPartition is spread evenly over 0..1000, so `< p` selects p/1000.
    let small_to = ((opts.memory_small_ids * 1000).div_ceil(whole) as i64).clamp(1, 1000);
    let small = search
        .count(&index, &with_partition_range(&query, None, Some(small_to)))
        .await?;
    let large_tasks = opts.memory_large_ids.div_ceil(whole).max(1) as usize;
    let types: Vec<InvalidationType> = InvalidationType::ALL
        .iter()
        .copied()
        .filter(|t| !InvalidationType::DEFAULT_FAST.contains(t))
        .collect();
    anyhow::ensure!(
        large_tasks <= types.len(),
        "{} ids need {large_tasks} tasks of {} ids, more than the {} bulk types; \
         load more --docs or ask for fewer --memory-large-ids",
        opts.memory_large_ids,
        whole,
        types.len()
    );
    let phases = [
        vec![TaskPlan {
            invalidation_type: types[0],
            to: Some(small_to),
            expected: small,
        }],
        types[..large_tasks]
            .iter()
            .map(|&t| TaskPlan {
                invalidation_type: t,
                to: None,
                expected: whole,
            })
            .collect(),
    ];
    eprintln!(
        "\n(c) memory: one `fleet run partition` subprocess streams {} ids (one task, \
         searchPartition < {small_to}), then {} ids ({large_tasks} tasks of {} ids, one \
         after another, each its own type).",
        thousands(small as f64),
        thousands((whole * large_tasks as u64) as f64),
        thousands(whole as f64),
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
        let mut measured = Vec::new();
        for plan in &phases {
            let sampler = PeakRss::start(worker.pid);
            let t = Instant::now();
            let streamed = async {
                let mut ids = 0;
                for task in plan {
                    ids += stream_task(env, ctx, conn, &pool, task, &supplier_ids).await?;
                }
                anyhow::Ok(ids)
            }
            .await;
            let peak = sampler.finish().await;
            let ids = streamed?;
            let secs = t.elapsed().as_secs_f64();
            let hwm = read_status_kib(worker.pid, "VmHWM").unwrap_or(0);
            eprintln!(
                "  {} ids in {} task(s), {secs:.2} s, peak RSS {} (VmHWM {}).",
                thousands(ids as f64),
                plan.len(),
                mib(peak),
                mib(hwm)
            );
            measured.push(MemoryPhase {
                ids,
                tasks: plan.len(),
                secs,
                // The sampler reads every 20 ms and can miss a short spike;
                // the kernel's high-water mark cannot. That mark is the
                // process's, so for the second phase it is at least the
                // first's peak: the larger figure can only overstate a
                // phase's memory, never understate it.
                peak_kib: peak.max(hwm),
                hwm_kib: hwm,
            });
        }
        pool.close().await;
        let large = measured.pop().expect("two phases");
        let small = measured.pop().expect("two phases");
        anyhow::Ok(Memory {
            idle_kib: idle,
            small,
            large,
        })
    }
    .await;
    worker.stop().await;
    result
}

/// Creates the job of one partition task, publishes the task and waits until
/// its ids all reached the outbound queue; returns how many arrived.
async fn stream_task(
    env: &BenchEnv,
    ctx: &Context,
    conn: &Connection,
    pool: &sqlx::PgPool,
    plan: &TaskPlan,
    supplier_ids: &[i64],
) -> anyhow::Result<u64> {
    let job = Uuid::new_v4();
    let request_id = format!("bench-memory-{job}");
    let mut request = fanout_request(&request_id, supplier_ids.to_vec());
    request.invalidation_type = plan.invalidation_type;
    let tasks = db::create_job(
        pool,
        &NewJob {
            id: job,
            request_id: request_id.clone(),
            invalidation_type: plan.invalidation_type.to_string(),
            index_key: KEY.to_string(),
            parameter_name: "supplier.id".into(),
            request: serde_json::to_value(&request)?,
            total_hits: plan.expected as i64,
        },
        &[NewTask {
            from: None,
            to: plan.to,
            expected_hits: plan.expected as i64,
        }],
        env.config().redis.idempotency_ttl,
    )
    .await
    .context("creating the memory job")?;
    let task_no = tasks.first().map(|t| t.task_no).unwrap_or(0);
    let queue = outbound_queue(plan.invalidation_type, KEY);
    let counter = start_counter(
        conn,
        &queue,
        plan.expected,
        Duration::from_secs(120),
        outbound_ids,
    )
    .await?;
    let task = PartitionTask {
        v: CURRENT_VERSION,
        job_id: job,
        task_no,
        request_id,
        invalidation_type: plan.invalidation_type,
        index_key: KEY,
        parameter_name: "supplier.id".into(),
        parameter_ids: supplier_ids.to_vec(),
        partition_from: None,
        partition_to: plan.to,
        invalidation_time: now_millis(),
    };
    fleet_workers::job::publish_task(ctx, &task)
        .await
        .map_err(|e| anyhow::anyhow!("publishing the partition task: {e}"))?;
    Ok(join_counter(counter).await?.distinct)
}
