//! (a) Fan-out: one request matching the whole catalogue through the
//! dispatcher and partition workers, against raw scans of the same query
//! (the partition queries summed, and unsplit).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use fleet_shared::broker::Outgoing;
use fleet_shared::db;
use fleet_shared::lapin::Connection;
use fleet_shared::message::{outbound_queue, InvalidationRequest, CURRENT_VERSION};
use fleet_shared::runtime::Context;
use fleet_shared::search::{group_partitions, terms_query, with_partition_range, Search};
use fleet_shared::topology::names;
use futures::StreamExt;
use serde_json::Value;
use uuid::Uuid;

use crate::counter::{join_counter, outbound_ids, start_counter};
use crate::report::{rate, thousands, Fanout};
use crate::run::{Options, FANOUT_MIN_HITS, FANOUT_TYPE, KEY};
use crate::setup::BenchEnv;
use crate::worker::{read_status_kib, Worker};

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
    worker: &mut Worker,
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

    // The fleet: one request, split by the dispatcher subprocess.
    worker.check_alive()?;
    let queue = outbound_queue(FANOUT_TYPE, KEY);
    let counter = start_counter(conn, &queue, hits, Duration::from_secs(120), outbound_ids).await?;
    let request_id = format!("bench-fanout-{}", Uuid::new_v4());
    let request = fanout_request(&request_id, supplier_ids);
    eprintln!("  fleet: publishing the request, counting ids on {queue}…");
    let body = request.encode();
    let routing_key = request.routing_key();
    let t = Instant::now();
    ctx.publisher
        .publish(Outgoing::json(names::REQUESTS, &routing_key, &body))
        .await
        .context("publishing the fan-out request")?;
    let counted = join_counter(counter).await?;
    let fleet_secs = counted.last_new.duration_since(t).as_secs_f64();
    let worker_hwm_kib = read_status_kib(worker.pid, "VmHWM").unwrap_or(0);
    let pool = db::connect(&env.config().database.url, 1).await?;
    let tasks = db::job(&pool, fleet_workers::job::id_of(&request, KEY))
        .await?
        .map(|j| j.task_count as usize)
        .unwrap_or(0);
    pool.close().await;
    eprintln!(
        "  fleet: {} distinct ids ({} delivered in {} messages, {tasks} partition tasks) in {:.2} s ({} ids/s).",
        thousands(counted.distinct as f64),
        thousands(counted.ids as f64),
        counted.messages,
        fleet_secs,
        thousands(rate(counted.distinct, fleet_secs))
    );
    Ok(Fanout {
        hits: counted.distinct,
        tasks,
        groups: groups.len(),
        fleet_secs,
        fleet_messages: counted.messages,
        fleet_delivered: counted.ids,
        worker_hwm_kib,
        partition_scan_secs,
        partition_scan_ids,
        histogram_secs,
        unsplit_secs,
        unsplit_ids,
        unsplit_capped,
    })
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
