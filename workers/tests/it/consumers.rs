//! The consumer loop under broker-side faults: a consumer the broker
//! cancels, a queue or a whole topology that disappears, and failure paths
//! that cannot publish.

use std::time::Duration;

use fleet_shared::lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use fleet_shared::topology::names;
use fleet_workers::app::WorkerKind;

use crate::common::*;

fn stock_event(content_id: i64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "event": "created", "contentId": content_id, "indexKeys": ["trTR"],
    }))
    .unwrap()
}

#[tokio::test]
async fn a_deleted_source_queue_is_declared_again_and_consumed_again() {
    let env = TestEnv::new().await;
    let fleet = env.start(&[WorkerKind::Ingest]);
    // Ingest consumes all six source queues; one of them disappears (an
    // operator's mistake, or a node that lost its definitions).
    env.publish("source.stock", "", &stock_event(1)).await;
    let first = env
        .take("invalidation.requests.fast", 1, Duration::from_secs(15))
        .await;
    assert_eq!(first.len(), 1, "ingest runs");
    let ch = env.shared_channel().await;
    ch.queue_delete("source.stock".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    // The worker sees its consumer cancelled, re-applies the topology
    // (queue and binding come back) and consumes it again.
    let requests = eventually(
        Duration::from_secs(30),
        "the stock queue to be consumed again",
        || async {
            env.publish("source.stock", "", &stock_event(2)).await;
            let got = env
                .take("invalidation.requests.fast", 1, Duration::from_millis(700))
                .await;
            (!got.is_empty()).then_some(got)
        },
    )
    .await;
    let body = requests[0].json();
    assert_eq!(body["parameterIds"], serde_json::json!([2]));
    // The other five source queues were never interrupted for long: a
    // price event goes through as well.
    env.publish(
        "source.price",
        "",
        &serde_json::to_vec(&serde_json::json!({"contentId": 7, "indexKeys": ["trTR"]})).unwrap(),
    )
    .await;
    let price = env
        .take("invalidation.requests.fast", 1, Duration::from_secs(15))
        .await;
    assert!(
        price
            .iter()
            .any(|m| m.json()["invalidationType"] == "PRICE"),
        "{:?}",
        price.iter().map(|m| m.json()).collect::<Vec<_>>()
    );
    fleet.stop().await.unwrap();
}

#[tokio::test]
async fn a_message_whose_retry_cannot_be_published_ends_in_the_dead_letter_queue_not_in_a_loop() {
    // Search refuses every call (a transient failure), and the retry
    // exchange is gone, so the retry copy can never be published.
    let env = TestEnv::with(|c| c.search.url = refused_url()).await;
    let fleet = env.start(&[WorkerKind::Dispatcher]);
    // Once the worker has applied the topology and consumes the lanes.
    env.consumed(names::FAST_LANE).await;
    env.shared_channel()
        .await
        .exchange_delete(
            names::RETRY_EXCHANGE.into(),
            ExchangeDeleteOptions::default(),
        )
        .await
        .unwrap();
    let request = serde_json::to_vec(&serde_json::json!({
        "v": 1, "requestId": "no-retry-1", "parameterIds": [3], "parameterName": "brand.id",
        "invalidationType": "PRICE", "indexKeys": ["trTR"],
    }))
    .unwrap();
    env.publish(names::REQUESTS, "price", &request).await;
    // Tried, returned once, then rejected to the lane's dead-letter queue by
    // the broker itself: bounded, and nothing lost.
    let dead = env
        .take(&names::dlq(names::FAST_LANE), 1, Duration::from_secs(20))
        .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].json()["requestId"], "no-retry-1");
    assert!(
        dead[0].headers.contains_key("x-death"),
        "dead-lettered by the broker: {:?}",
        dead[0].headers
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.depth(names::FAST_LANE).await, 0, "no loop");
    fleet.stop().await.unwrap();
}
