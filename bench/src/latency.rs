//! (d) Latency under load: fast-lane requests offered at fixed rates (25 %,
//! 50 % and 80 % of the maximum measured first, in the same fleet), once
//! with the fleet otherwise idle and once with the bulk lane saturated; each
//! request's latency runs from the moment it was due to be published (not
//! when the publisher got to it, so a stalled publisher cannot hide
//! latency) to the arrival of its content id in the outbound queue.
//!
//! Two kinds of fast-lane request, both PRICE:
//! - **single-id**: `parameterName: "id"`, a fresh content id each (no search);
//! - **search**: `parameterName: "listings.id"` (nested), one listing each,
//!   resolved by a search on a second, small index (`--latency-docs`
//!   documents with one listing each) of the run's search server.
//!
//! The bulk lane is saturated by a driver that keeps the bulk queue topped
//! up with BRAND_CATEGORY requests resolved in place (a brand with between
//! a tenth of and the whole split limit of documents, searched and streamed
//! by the dispatcher) and keeps one huge SUPPLIER request (the fan-out
//! request, split into partition tasks) running: a new one is published
//! whenever the partition queue has run dry.
//!
//! The fleet is one `fleet run --all` subprocess; its peak RSS over the
//! whole part is the fleet's peak under the mixed load.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use fleet_shared::broker::{self, Outgoing, Publisher};
use fleet_shared::lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use fleet_shared::lapin::{BasicProperties, Channel, Confirmation, Connection};
use fleet_shared::message::{
    now_millis, outbound_queue, IndexKey, InvalidationRequest, InvalidationType, CURRENT_VERSION,
};
use fleet_shared::runtime::Context;
use fleet_shared::topology::names;
use fleet_workers::catalogue;
use uuid::Uuid;

use crate::counter::{join_counter_partial, outbound_ids, start_counter_with, Arrivals};
use crate::fanout::{fanout_query, fanout_request};
use crate::fastlane::{publish, publish_pipelined, Published};
use crate::report::{thousands, Latency, LatencyRow, Load, RequestKind};
use crate::run::{Options, FAST_TYPE, KEY};
use crate::setup::{bench_spec, BenchEnv};
use crate::worker::{wait_for_consumer, PeakRss, Worker};

/// The index key of the search kind's small index.
pub const SEARCH_KEY: IndexKey = IndexKey::DeDe;
/// The bulk lane's in-place requests.
const BULK_TYPE: InvalidationType = InvalidationType::BrandCategory;
/// First content id of the single-id requests (no document has it: they
/// need none).
const SINGLE_FIRST_ID: i64 = 1_000_000_000;
/// The offered rates, in percent of the measured maximum.
pub const PERCENTS: [u32; 3] = [25, 50, 80];

/// Numbers requests of both kinds so no two in one phase share an id.
struct Ids {
    next_single: i64,
    search_docs: i64,
    search_first: i64,
    next_search: i64,
}

impl Ids {
    /// `n` requests of `kind`, with the content id each must produce.
    fn requests(&mut self, kind: RequestKind, n: u64, run: &str) -> (Vec<Vec<u8>>, Vec<i64>) {
        let now = now_millis();
        (0..n)
            .map(|i| {
                let (content, request) = match kind {
                    RequestKind::Single => {
                        self.next_single += 1;
                        let id = self.next_single;
                        (id, request(run, i, "id", vec![id], None, KEY, now))
                    }
                    RequestKind::Search => {
                        let doc = self.search_first + self.next_search % self.search_docs;
                        self.next_search += 1;
                        // The catalogue's first listing of document `d` is `d * 10`.
                        (
                            doc,
                            request(
                                run,
                                i,
                                "listings.id",
                                vec![doc * 10],
                                Some("listings"),
                                SEARCH_KEY,
                                now,
                            ),
                        )
                    }
                };
                (request.encode(), content)
            })
            .unzip()
    }
}

fn request(
    run: &str,
    i: u64,
    parameter_name: &str,
    parameter_ids: Vec<i64>,
    nested: Option<&str>,
    key: IndexKey,
    time: i64,
) -> InvalidationRequest {
    InvalidationRequest {
        v: CURRENT_VERSION,
        request_id: Some(format!("bench-latency-{run}-{i}")),
        parameter_ids,
        parameter_name: parameter_name.into(),
        is_nested_type: nested.is_some(),
        nested_path_name: nested.map(str::to_string),
        invalidation_type: FAST_TYPE,
        index_keys: vec![key],
        invalidation_time: Some(time),
    }
}

fn out_queue(kind: RequestKind) -> String {
    match kind {
        RequestKind::Single => outbound_queue(FAST_TYPE, KEY),
        RequestKind::Search => outbound_queue(FAST_TYPE, SEARCH_KEY),
    }
}

/// The fleet's maximum for `kind`: `n` requests published as fast as the
/// channel takes them, first output to last id.
async fn maximum(
    conn: &Connection,
    ids: &mut Ids,
    kind: RequestKind,
    n: u64,
) -> anyhow::Result<f64> {
    let run = Uuid::new_v4().simple().to_string();
    let (bodies, _) = ids.requests(kind, n, &run);
    let counter = start_counter_with(
        conn,
        &out_queue(kind),
        n,
        Duration::from_secs(60),
        outbound_ids,
        Arrivals::Skip,
    )
    .await?;
    publish_pipelined(conn, names::REQUESTS, &FAST_TYPE.snake(), bodies).await?;
    let counted = join_counter_partial(counter).await?;
    if let Some(why) = counted.stalled {
        bail!("measuring the maximum of {kind} requests: {why}");
    }
    Ok(counted.output_rate())
}

/// One offered rate: publishes `secs` worth of requests at `rate` and
/// measures each one's latency.
#[allow(clippy::too_many_arguments)]
async fn phase(
    url: &str,
    metrics_url: &str,
    conn: &Connection,
    ids: &mut Ids,
    kind: RequestKind,
    load: Load,
    percent: u32,
    rate: f64,
    secs: f64,
) -> anyhow::Result<LatencyRow> {
    let mut n = (rate * secs).round().max(1.0) as u64;
    if kind == RequestKind::Search {
        // Each request of a phase needs its own document.
        n = n.min(ids.search_docs as u64);
    }
    let run = Uuid::new_v4().simple().to_string();
    let (bodies, contents) = ids.requests(kind, n, &run);
    let counter = start_counter_with(
        conn,
        &out_queue(kind),
        n,
        Duration::from_secs(60),
        outbound_ids,
        Arrivals::Record,
    )
    .await?;
    let http = crate::local_http(Duration::from_secs(30))?;
    let before = crate::metrics::scrape(&http, metrics_url).await?;
    let probe_conn = broker::connect(url, &broker::Identity::new("bench-probe"), "probe").await?;
    let stop_probe = tokio_util::sync::CancellationToken::new();
    let probe = tokio::spawn(probe_confirms(
        probe_conn.create_channel().await?,
        stop_probe.clone(),
    ));
    // Each request is timed from when it was due, so a publisher that falls
    // behind cannot hide latency.
    let offered = publish(
        conn,
        names::REQUESTS,
        &FAST_TYPE.snake(),
        bodies,
        Some(rate),
    )
    .await;
    let counted = match &offered {
        Ok(_) => join_counter_partial(counter).await,
        Err(e) => Err(anyhow::anyhow!("offering the requests: {e:#}")),
    };
    stop_probe.cancel();
    let mut probe_rtts = probe.await.context("the confirm probe panicked")??;
    let _ = probe_conn.close(200, "probed".into()).await;
    probe_rtts.sort();
    let Published { due, worst_lag } = offered?;
    let counted = counted?;
    // The fleet's own account: from a fast-lane delivery to its ack. What
    // the row's latency has beyond it was spent before the delivery (in the
    // producer's connection and the queue) or after the outbound publish.
    let after = crate::metrics::scrape(&http, metrics_url).await?;
    let in_fleet_p99 = crate::metrics::quantile_bound(
        &before,
        &after,
        "fleet_message_handling_seconds",
        &[&format!("queue=\"{}\"", names::FAST_LANE)],
        0.99,
    );
    let mut latencies: Vec<Duration> = Vec::with_capacity(contents.len());
    let mut lost = 0u64;
    for (id, due) in contents.iter().zip(&due) {
        match counted.arrivals.get(id) {
            Some(at) => latencies.push(at.saturating_duration_since(*due)),
            None => lost += 1,
        }
    }
    latencies.sort();
    let pick = |q: f64| quantile_ms(&latencies, q);
    let row = LatencyRow {
        kind,
        load,
        percent,
        rate,
        requests: n,
        lost,
        p50_ms: pick(0.50),
        p99_ms: pick(0.99),
        max_ms: pick(1.0),
        probe_p50_ms: quantile_ms(&probe_rtts, 0.50),
        probe_p99_ms: quantile_ms(&probe_rtts, 0.99),
        in_fleet_p99_ms: in_fleet_p99.map(|s| s * 1000.0),
    };
    eprintln!(
        "  {kind}, {load}, {percent} % ({} requests/s, {} requests): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
         in the fleet p99 ≤ {}; broker confirm probe p50 {:.1} ms, p99 {:.1} ms; publisher at worst {:.1} ms behind{}",
        thousands(rate),
        thousands(n as f64),
        row.p50_ms,
        row.p99_ms,
        row.max_ms,
        crate::report::bound_ms(row.in_fleet_p99_ms),
        row.probe_p50_ms,
        row.probe_p99_ms,
        worst_lag.as_secs_f64() * 1000.0,
        if lost > 0 {
            format!(", {lost} NEVER ARRIVED")
        } else {
            String::new()
        }
    );
    Ok(row)
}

/// The broker's own publish-confirm round trip while a row runs: a small
/// persistent message to a scratch durable queue every 20 ms, each confirm
/// awaited before the next. It tells the broker's latency (its disk, its
/// queue processes) from the fleet's: if the probe is fast while the fast
/// lane is slow, the time is spent in the fleet.
pub const PROBE_QUEUE: &str = "fleet-bench.probe";

async fn probe_confirms(
    ch: Channel,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<Vec<Duration>> {
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let props = BasicProperties::default().with_delivery_mode(2);
    let mut rtts = Vec::new();
    while !stop.is_cancelled() {
        let t = Instant::now();
        let confirm = ch
            .basic_publish(
                "".into(),
                PROBE_QUEUE.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                b"probe",
                props.clone(),
            )
            .await?
            .await?;
        if !matches!(confirm, Confirmation::Ack(None)) {
            bail!("a probe publish was not confirmed: {confirm:?}");
        }
        rtts.push(t.elapsed());
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    let _ = ch.queue_purge(PROBE_QUEUE.into(), Default::default()).await;
    let _ = ch.close(200, "probed".into()).await;
    Ok(rtts)
}

/// The `q` quantile of sorted durations, in milliseconds (NaN when empty).
fn quantile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

/// What the bulk driver published.
#[derive(Debug, Default, Clone, Copy)]
pub struct BulkLoad {
    pub in_place: u64,
    pub split: u64,
}

/// Keeps the bulk lane saturated until `stop` (see the module's description).
async fn drive_bulk(
    conn: Connection,
    publisher: Publisher,
    brands: Vec<i64>,
    suppliers: Vec<i64>,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<BulkLoad> {
    let ch = conn.create_channel().await?;
    let mut published = BulkLoad::default();
    let mut last_split: Option<Instant> = None;
    let mut i = 0usize;
    let publish = |r: InvalidationRequest| {
        let publisher = publisher.clone();
        async move {
            publisher
                .publish(Outgoing::json(
                    names::REQUESTS,
                    &r.routing_key(),
                    &r.encode(),
                ))
                .await
                .map_err(|e| anyhow::anyhow!("publishing a bulk request: {e}"))
        }
    };
    while !stop.is_cancelled() {
        let lane = broker::inspect_queue(&ch, names::BULK_LANE).await?;
        if lane.message_count() < 20 {
            for _ in 0..50 {
                let brand = brands[i % brands.len()];
                i += 1;
                let mut r = fanout_request(&format!("bench-bulk-{}", Uuid::new_v4()), vec![brand]);
                r.parameter_name = "brand.id".into();
                r.invalidation_type = BULK_TYPE;
                publish(r).await?;
                published.in_place += 1;
            }
        }
        let tasks = broker::inspect_queue(&ch, names::PARTITIONS).await?;
        let settled = last_split.is_none_or(|t| t.elapsed() > Duration::from_secs(20));
        if tasks.message_count() == 0 && settled {
            let r = fanout_request(
                &format!("bench-split-{}", Uuid::new_v4()),
                suppliers.clone(),
            );
            publish(r).await?;
            published.split += 1;
            last_split = Some(Instant::now());
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    let _ = ch.close(200, "bulk done".into()).await;
    Ok(published)
}

/// Brands with between a tenth of and the whole split limit of documents
/// in the generated catalogue (counted from the generator, not the server).
fn in_place_brands(opts: &Options) -> Vec<i64> {
    let mut counts: HashMap<i64, u64> = HashMap::new();
    for doc in catalogue::documents(&bench_spec(opts)) {
        *counts.entry(doc.brand.id).or_default() += 1;
    }
    let mut brands: Vec<i64> = counts
        .into_iter()
        .filter(|&(_, n)| n >= opts.split_limit / 10 && n <= opts.split_limit)
        .map(|(b, _)| b)
        .collect();
    brands.sort_unstable();
    brands
}

pub async fn latency(
    env: &mut BenchEnv,
    opts: &Options,
    ctx: &Context,
    conn: &Connection,
    control: &Channel,
) -> anyhow::Result<Latency> {
    eprintln!(
        "\n(d) latency under load: loading the search kind's index ({} documents, one listing each)…",
        thousands(opts.latency_docs as f64)
    );
    let (first, docs) = env
        .load_latency_index(SEARCH_KEY, opts.latency_docs)
        .await?;
    let brands = in_place_brands(opts);
    if brands.is_empty() {
        bail!(
            "no brand of the catalogue has between {} and {} documents to resolve in place; \
             use more --docs",
            opts.split_limit / 10,
            opts.split_limit
        );
    }
    let mut ids = Ids {
        next_single: SINGLE_FIRST_ID,
        search_docs: docs as i64,
        search_first: first,
        next_search: 0,
    };
    // The search server shares the two cores with the broker and the fleet
    // here; in production it has machines of its own. At the lowest
    // priority (its process and its session's group, see
    // `Osmem::lower_priority`) it still gets every cycle the others leave,
    // but a saturating bulk scan no longer takes a core from the broker and
    // the fleet.
    if let (Some(osmem), true) = (env.osmem(), opts.latency_nice_search) {
        for failure in osmem.lower_priority() {
            eprintln!("  note: could not lower osmem-server's priority: {failure}.");
        }
    }
    let mut worker = Worker::spawn(env, &["--all"], "latency-fleet", None).await?;
    let sampler = PeakRss::start(worker.pid);
    let stop = tokio_util::sync::CancellationToken::new();
    let mut bulk = None;
    let result = async {
        for q in [names::FAST_LANE, names::BULK_LANE, names::PARTITIONS] {
            wait_for_consumer(control, q, &mut worker, Duration::from_secs(60)).await?;
        }
        let secs = opts.latency_secs as f64;
        let url = env.config().amqp.url.clone();
        crate::fastlane::declare(control, PROBE_QUEUE).await?;
        let mut rows = Vec::new();
        let mut maxima = Vec::new();
        for kind in [RequestKind::Single, RequestKind::Search] {
            let n = match kind {
                RequestKind::Single => opts.fast_requests as u64,
                RequestKind::Search => (opts.fast_requests as u64 / 10).min(docs),
            };
            let max = maximum(conn, &mut ids, kind, n).await?;
            eprintln!(
                "  {kind}: maximum {} requests/s ({} requests published at once).",
                thousands(max),
                thousands(n as f64)
            );
            maxima.push((kind, max));
        }
        for load in [Load::Alone, Load::BulkSaturated] {
            if load == Load::BulkSaturated {
                let (suppliers, _) = fanout_query(opts);
                let conn = broker::connect(
                    &env.config().amqp.url,
                    &broker::Identity::new("bench-bulk"),
                    "bulk",
                )
                .await?;
                bulk = Some(tokio::spawn(drive_bulk(
                    conn,
                    ctx.publisher.clone(),
                    brands.clone(),
                    suppliers,
                    stop.clone(),
                )));
                // Let the bulk lane fill and the split request start.
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            for &(kind, max) in &maxima {
                for percent in PERCENTS {
                    worker.check_alive()?;
                    let rate = max * f64::from(percent) / 100.0;
                    rows.push(
                        phase(
                            &url,
                            &worker.metrics_url,
                            conn,
                            &mut ids,
                            kind,
                            load,
                            percent,
                            rate,
                            secs,
                        )
                        .await?,
                    );
                }
            }
        }
        anyhow::Ok((rows, maxima))
    }
    .await;
    stop.cancel();
    let bulk = match bulk {
        Some(task) => task.await.context("the bulk driver panicked")?,
        None => Ok(BulkLoad::default()),
    };
    let fleet_peak_kib = sampler.finish().await;
    worker.stop().await;
    let (rows, maxima) = result?;
    Ok(Latency {
        rows,
        maxima,
        bulk: bulk?,
        fleet_peak_kib,
        secs: opts.latency_secs,
        search_docs: docs,
    })
}
