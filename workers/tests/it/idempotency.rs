//! Every id, and only the right ids, at the edges of idempotency: request
//! ids reused for other requests, requests without an id, events larger
//! than a request may be, repeated index keys, and Redis going away.

use std::time::Duration;

use fleet_shared::db;
use fleet_shared::topology::names;
use fleet_workers::app::WorkerKind;

use crate::common::*;

fn request(t: &str, field: &str, ids: &[i64], keys: &[&str], request_id: Option<&str>) -> Vec<u8> {
    let mut r = serde_json::json!({
        "v": 1, "parameterIds": ids, "parameterName": field,
        "invalidationType": t, "indexKeys": keys,
    });
    if let Some(id) = request_id {
        r["requestId"] = id.into();
    }
    serde_json::to_vec(&r).unwrap()
}

/// Waits until the queue stays empty for a moment and returns every id
/// that arrived on it (with duplicates).
async fn drain_ids(env: &TestEnv, queue: &str, at_least: usize) -> Vec<i64> {
    let mut ids = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut quiet_since = std::time::Instant::now();
    loop {
        let got = env.take(queue, 0, Duration::ZERO).await;
        if got.is_empty() {
            if ids.len() >= at_least && quiet_since.elapsed() > Duration::from_millis(1500) {
                return ids;
            }
        } else {
            quiet_since = std::time::Instant::now();
        }
        for m in got {
            let b = fleet_shared::message::OutboundBatch::decode(&m.body).unwrap();
            ids.extend(b.content_ids);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{queue}: only {} of {at_least} ids",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_reused_request_id_with_other_content_is_processed_as_its_own_request() {
    let env = TestEnv::with_catalogue(|_| {}).await;
    let fleet = env.start(&[WorkerKind::Dispatcher]);
    let brand = expected_ids(|d| d.brand.id == 40);
    assert!(
        !brand.is_empty() && brand.len() < 400,
        "in place: {}",
        brand.len()
    );
    env.publish(
        names::REQUESTS,
        "price",
        &request("PRICE", "brand.id", &[40], &["trTR"], Some("reuse-1")),
    )
    .await;
    let price = drain_ids(&env, "productcontent_price_tr_tr", brand.len()).await;
    assert_eq!(
        price
            .iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        brand
    );
    // Another team reuses the id for a stock change of the same brand: it
    // is another request, processed in full.
    let stock_body = request("STOCK", "brand.id", &[40], &["trTR"], Some("reuse-1"));
    env.publish(names::REQUESTS, "stock", &stock_body).await;
    let stock = drain_ids(&env, "productcontent_stock_tr_tr", brand.len()).await;
    assert_eq!(
        stock
            .iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        brand
    );
    // The very same stock request again is a redelivery: done once.
    env.publish(names::REQUESTS, "stock", &stock_body).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.depth("productcontent_stock_tr_tr").await, 0);
    fleet.stop().await.unwrap();
}

#[tokio::test]
async fn two_split_requests_with_one_id_get_a_job_each() {
    let env = TestEnv::with_catalogue(|_| {}).await;
    let fleet = env.start(&[WorkerKind::Dispatcher, WorkerKind::Partition]);
    let category = expected_ids(|d| d.category.id == 1);
    let brand = expected_ids(|d| d.brand.id == 1);
    assert!(category.len() > 400 && brand.len() > 400, "both split");
    env.publish(
        names::REQUESTS,
        "assortment",
        &request("ASSORTMENT", "category.id", &[1], &["trTR"], Some("twin")),
    )
    .await;
    env.publish(
        names::REQUESTS,
        "supplier",
        &request("SUPPLIER", "brand.id", &[1], &["trTR"], Some("twin")),
    )
    .await;
    let (a, _) = env
        .collect_ids(
            "productcontent_assortment_tr_tr",
            category.len(),
            Duration::from_secs(60),
        )
        .await;
    let (s, _) = env
        .collect_ids(
            "productcontent_supplier_tr_tr",
            brand.len(),
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(a, category);
    assert_eq!(s, brand);
    let pool = env.db().await;
    let jobs = eventually(Duration::from_secs(30), "both jobs to complete", || async {
        let jobs = db::jobs_of_request(&pool, "twin").await.unwrap();
        (jobs.len() == 2 && jobs.iter().all(|j| j.state == "completed")).then_some(jobs)
    })
    .await;
    for j in &jobs {
        let expected = if j.invalidation_type == "ASSORTMENT" {
            category.len()
        } else {
            brand.len()
        };
        assert_eq!(j.total_hits as usize, expected, "{j:?}");
        let hits: i64 = db::tasks(&pool, j.id)
            .await
            .unwrap()
            .iter()
            .filter_map(|t| t.hits)
            .sum();
        assert_eq!(hits as usize, expected, "each job ran its own query");
    }
    fleet.stop().await.unwrap();
}

#[tokio::test]
async fn a_request_without_an_id_redelivered_is_one_job_not_two() {
    let env = TestEnv::with_catalogue(|_| {}).await;
    let body = request("ASSORTMENT", "brand.id", &[1], &["trTR"], None);
    // The same message twice, as a redelivery after a crash would bring it.
    env.publish(names::REQUESTS, "assortment", &body).await;
    env.publish(names::REQUESTS, "assortment", &body).await;
    let fleet = env.start(&[WorkerKind::Dispatcher, WorkerKind::Partition]);
    let brand = expected_ids(|d| d.brand.id == 1);
    let (ids, _) = env
        .collect_ids(
            "productcontent_assortment_tr_tr",
            brand.len(),
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(ids, brand);
    let pool = env.db().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let jobs: Vec<(String,)> = sqlx::query_as("SELECT request_id FROM jobs")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert!(jobs[0].0.starts_with("auto-"), "{jobs:?}");
    fleet.stop().await.unwrap();
}

#[tokio::test]
async fn a_large_source_event_becomes_several_requests_within_the_limit() {
    let env = TestEnv::with(|c| c.dispatcher.max_ids = 10).await;
    let ids: Vec<i64> = (1..=25).collect();
    let event = serde_json::to_vec(&serde_json::json!({
        "contentIds": ids, "indexKeys": ["trTR"],
    }))
    .unwrap();
    // Ingest alone first: the requests it makes, twice for a redelivery.
    let ingest = env.start(&[WorkerKind::Ingest]);
    env.publish("source.promotion", "", &event).await;
    let first = env.take(names::FAST_LANE, 3, Duration::from_secs(15)).await;
    env.publish("source.promotion", "", &event).await;
    let second = env.take(names::FAST_LANE, 3, Duration::from_secs(15)).await;
    ingest.stop().await.unwrap();
    let ids_of = |ms: &[Taken]| -> Vec<String> {
        ms.iter()
            .map(|m| m.json()["requestId"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(first.len(), 3);
    assert_eq!(ids_of(&first), ids_of(&second), "a redelivery repeats them");
    for m in &first {
        assert!(m.json()["parameterIds"].as_array().unwrap().len() <= 10);
    }
    // Through the dispatcher: every id arrives, nothing is dead-lettered.
    let fleet = env.start(&[WorkerKind::Ingest, WorkerKind::Dispatcher]);
    env.publish("source.promotion", "", &event).await;
    let (got, _) = env
        .collect_ids(
            "productcontent_promotion_tr_tr",
            ids.len(),
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(got, ids.iter().copied().collect());
    assert_eq!(env.depth(&names::dlq(names::FAST_LANE)).await, 0);
    fleet.stop().await.unwrap();
}

#[tokio::test]
async fn repeated_index_keys_run_once() {
    let env = TestEnv::new().await;
    let fleet = env.start(&[WorkerKind::Dispatcher]);
    env.publish(
        names::REQUESTS,
        "price",
        &request(
            "PRICE",
            "id",
            &[1, 2, 3],
            &["trTR", "deDE", "trTR"],
            Some("keys-1"),
        ),
    )
    .await;
    let tr = drain_ids(&env, "productcontent_price_tr_tr", 3).await;
    let mut sorted = tr.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, [1, 2, 3], "each id once on trTR");
    let de = drain_ids(&env, "productcontent_price_de_de", 3).await;
    assert_eq!(de.len(), 3);
    fleet.stop().await.unwrap();
}

#[tokio::test]
async fn without_redis_a_searching_request_goes_out_without_de_duplication() {
    // A Redis of this test's own, taken away once the workers run.
    let port = free_port();
    let mut redis = tokio::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server");
    eventually(Duration::from_secs(10), "redis to listen", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
    })
    .await;
    let env = TestEnv::with_catalogue(|c| c.redis.url = format!("redis://127.0.0.1:{port}")).await;
    let fleet = env.start(&[WorkerKind::Dispatcher]);
    env.consumed(names::FAST_LANE).await;
    redis.kill().await.unwrap();
    let brand = expected_ids(|d| d.brand.id == 40);
    env.publish(
        names::REQUESTS,
        "price",
        &request("PRICE", "brand.id", &[40], &["trTR"], Some("no-redis")),
    )
    .await;
    let ids = drain_ids(&env, "productcontent_price_tr_tr", brand.len()).await;
    assert_eq!(
        ids.iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        brand
    );
    assert_eq!(env.depth(names::RETRY_DELAY).await, 0, "not sent to retry");
    fleet.stop().await.unwrap();
}
