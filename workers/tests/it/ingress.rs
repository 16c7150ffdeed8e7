//! Ingress hygiene (SPEC §11): what a producer sends cannot steer the fleet.
//! Fleet-only headers are not trusted from producers, a retried message only
//! returns where the topology allows, oversized bodies and insane times are
//! permanent errors, and attempts have a cap that counts across returns.

use std::time::Duration;

use fleet_shared::broker::headers;
use fleet_shared::lapin::types::{AMQPValue, FieldTable};
use fleet_shared::lapin::BasicProperties;
use fleet_shared::message::now_millis;
use fleet_shared::topology::names;
use fleet_workers::app::WorkerKind;

use crate::common::*;

const HISTORY: &str = "x-history";
const WINDOW_START: &str = "x-window-start";

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(v.into())
}

/// What a hostile or confused producer sets: another destination, counters, a diagnosis.
fn forged_headers() -> FieldTable {
    let mut h = FieldTable::default();
    h.insert(headers::ORIGINAL_EXCHANGE.into(), s(names::OUTBOUND));
    h.insert(headers::ORIGINAL_ROUTING_KEY.into(), s("price.tr_tr"));
    h.insert(
        headers::ORIGINAL_QUEUE.into(),
        s("productcontent_price_tr_tr"),
    );
    h.insert(headers::ATTEMPTS.into(), AMQPValue::LongLongInt(100));
    h.insert(headers::FIRST_FAILURE.into(), AMQPValue::LongLongInt(1));
    h.insert(headers::ERROR_CLASS.into(), s("forged_class"));
    h.insert(headers::PARK_REASON.into(), s("forged park reason"));
    h
}

fn props(h: FieldTable) -> BasicProperties {
    BasicProperties::default()
        .with_headers(h)
        .with_delivery_mode(2)
}

/// A request that needs the search cluster (down in these tests): it fails transiently.
const SEARCHING: &[u8] = br#"{"parameterIds":[5],"parameterName":"brand.id","invalidationType":"PRICE","indexKeys":["trTR"]}"#;

#[tokio::test]
async fn origin_counters_and_diagnosis_set_by_a_producer_are_not_trusted() {
    let env = TestEnv::with(|c| c.retry.delay = Duration::from_secs(60)).await;
    let workers = env.start(&[WorkerKind::Dispatcher]);
    env.publish_with(names::REQUESTS, "price", SEARCHING, props(forged_headers()))
        .await;
    let m = env
        .take(names::RETRY_DELAY, 1, Duration::from_secs(20))
        .await
        .remove(0);
    workers.stop().await.unwrap();
    // The origin is where the delivery really came from.
    assert_eq!(header(&m, headers::ORIGINAL_EXCHANGE), names::REQUESTS);
    assert_eq!(header(&m, headers::ORIGINAL_ROUTING_KEY), "price");
    assert_eq!(header(&m, headers::ORIGINAL_QUEUE), names::FAST_LANE);
    // Counters start from this failure.
    assert_eq!(header(&m, headers::ATTEMPTS), "1", "{:?}", m.headers);
    assert_ne!(header(&m, headers::FIRST_FAILURE), "1");
    // The diagnosis is the fleet's; the producer's is kept only as inert history.
    assert_eq!(header(&m, headers::ERROR_CLASS), "search_unavailable");
    assert!(
        header(&m, headers::PARK_REASON).is_empty(),
        "{:?}",
        m.headers
    );
    let history = header(&m, HISTORY);
    assert!(
        history.contains("forged_class") && history.contains(names::OUTBOUND),
        "{history}"
    );
}

#[tokio::test]
async fn a_producer_cannot_steer_a_retried_request_to_another_destination() {
    let env = TestEnv::with(|c| c.retry.delay = Duration::from_secs(1)).await;
    let workers = env.start(&[WorkerKind::Dispatcher]);
    env.publish_with(names::REQUESTS, "price", SEARCHING, props(forged_headers()))
        .await;
    eventually(Duration::from_secs(20), "the failed request", || async {
        (env.depth(names::RETRY_READY).await == 1).then_some(())
    })
    .await;
    workers.stop().await.unwrap();
    // The retry handler sends it back where it came from, not where the producer said.
    let workers = env.start(&[WorkerKind::Retry]);
    let back = env.take(names::FAST_LANE, 1, Duration::from_secs(15)).await;
    workers.stop().await.unwrap();
    assert_eq!(back.len(), 1, "back on its lane");
    assert_eq!(back[0].exchange, names::REQUESTS);
    assert_eq!(back[0].routing_key, "price");
    assert_eq!(back[0].json()["parameterIds"], serde_json::json!([5]));
    assert_eq!(env.depth("productcontent_price_tr_tr").await, 0);
}

#[tokio::test]
async fn attempts_count_across_returns_to_the_lane_but_a_producers_count_is_ignored() {
    let env = TestEnv::with(|c| {
        c.retry.delay = Duration::from_secs(1);
        c.retry.window = Duration::from_secs(120);
        c.retry.max_attempts = Some(3);
    })
    .await;
    let workers = env.start(&[WorkerKind::Dispatcher, WorkerKind::Retry]);
    let mut h = FieldTable::default();
    h.insert(headers::ATTEMPTS.into(), AMQPValue::LongLongInt(100));
    env.publish_with(names::REQUESTS, "price", SEARCHING, props(h))
        .await;
    let parked = env.take(names::PARKED, 1, Duration::from_secs(40)).await;
    workers.stop().await.unwrap();
    assert_eq!(parked.len(), 1);
    let p = &parked[0];
    assert!(
        header(p, headers::PARK_REASON).starts_with("max_attempts_reached"),
        "{:?}",
        p.headers
    );
    assert_eq!(
        header(p, headers::ATTEMPTS),
        "3",
        "three real attempts, counted across returns to the lane: {:?}",
        p.headers
    );
    let db = env.db().await;
    let rows = fleet_shared::db::parked(&db, 10).await.unwrap();
    assert_eq!(rows[0].attempts, 3);
}

fn failed(exchange: &str, routing_key: &str) -> BasicProperties {
    let mut h = FieldTable::default();
    h.insert(headers::ORIGINAL_EXCHANGE.into(), s(exchange));
    h.insert(headers::ORIGINAL_ROUTING_KEY.into(), s(routing_key));
    h.insert(headers::ATTEMPTS.into(), AMQPValue::LongLongInt(1));
    h.insert(headers::ERROR_CLASS.into(), s("search_unavailable"));
    props(h)
}

#[tokio::test]
async fn the_retry_handler_only_returns_messages_where_the_topology_allows() {
    let env = TestEnv::with(|c| c.retry.delay = Duration::from_secs(1)).await;
    let workers = env.start(&[WorkerKind::Retry]);
    let now = now_millis();
    let body = |seq: usize| {
        format!(
            r#"{{"seq":{seq},"parameterIds":[1],"parameterName":"id","invalidationType":"PRICE","invalidationTime":{now}}}"#
        )
        .into_bytes()
    };
    // Somebody who may publish to the retry exchange (it is not a producer's
    // exchange, but permissions are often broad).
    let forbidden = [
        (names::OUTBOUND, "price.tr_tr"),
        ("", "productcontent_price_tr_tr"),
        (names::EVENTS, names::JOB_COMPLETED),
        (names::PARKED_EXCHANGE, ""),
    ];
    // A key no lane has reaches the unroutable queue, which the dispatcher
    // consumes: it re-routes by type or dead-letters (the lane rule).
    let allowed = [
        (names::REQUESTS, "price"),
        ("", names::BULK_LANE),
        (names::REQUESTS, "refund"),
    ];
    for (i, (exchange, key)) in forbidden.iter().chain(allowed.iter()).enumerate() {
        env.publish_with(
            names::RETRY_EXCHANGE,
            names::RETRY_DELAY_KEY,
            &body(i),
            failed(exchange, key),
        )
        .await;
    }
    let dlq = names::dlq(names::RETRY_READY);
    let refused = env
        .take(&dlq, forbidden.len(), Duration::from_secs(20))
        .await;
    let fast = env.take(names::FAST_LANE, 1, Duration::from_secs(10)).await;
    let bulk = env.take(names::BULK_LANE, 1, Duration::from_secs(10)).await;
    let unrouted = env
        .take(names::UNROUTABLE, 1, Duration::from_secs(10))
        .await;
    workers.stop().await.unwrap();
    assert_eq!(unrouted.len(), 1);
    assert_eq!(refused.len(), forbidden.len(), "{refused:?}");
    for m in &refused {
        assert_eq!(header(m, headers::ERROR_CLASS), "forbidden_destination");
        let seq = m.json()["seq"].as_u64().unwrap() as usize;
        let (exchange, key) = forbidden[seq];
        let why = header(m, headers::ERROR_MESSAGE);
        assert!(why.contains(exchange) && why.contains(key), "{why}");
    }
    assert_eq!(fast.len(), 1);
    assert_eq!(bulk.len(), 1);
    // The events log holds only the announcements of the refusals, never
    // the forged job.completed.
    let events = env
        .take(names::EVENTS_LOG, forbidden.len(), Duration::from_secs(5))
        .await;
    assert_eq!(events.len(), forbidden.len());
    assert!(events
        .iter()
        .all(|e| e.routing_key == names::REQUEST_DEAD_LETTERED));
    for q in [
        "productcontent_price_tr_tr",
        names::EVENTS_LOG,
        names::UNROUTABLE,
        names::PARKED,
    ] {
        assert_eq!(env.depth(q).await, 0, "{q}");
    }
}

#[tokio::test]
async fn an_oversized_body_is_dead_lettered_before_it_is_decoded() {
    let env = TestEnv::new().await;
    let workers = env.start(&[WorkerKind::Dispatcher, WorkerKind::Ingest]);
    // Valid messages, just too large (the default limit is 1 MiB).
    let padding = "x".repeat(1_100_000);
    let request = format!(
        r#"{{"parameterIds":[1],"parameterName":"id","invalidationType":"PRICE","indexKeys":["trTR"],"padding":"{padding}"}}"#
    );
    let event = format!(r#"{{"contentId":1,"padding":"{padding}"}}"#);
    env.publish(names::REQUESTS, "price", request.as_bytes())
        .await;
    env.publish("source.product", "", event.as_bytes()).await;
    let dead = env
        .take(&names::dlq(names::FAST_LANE), 1, Duration::from_secs(20))
        .await;
    let dead_event = env
        .take("source.product.dlq", 1, Duration::from_secs(20))
        .await;
    workers.stop().await.unwrap();
    assert_eq!(dead.len(), 1, "the request is dead-lettered");
    assert_eq!(header(&dead[0], headers::ERROR_CLASS), "body_too_large");
    assert!(
        header(&dead[0], headers::ERROR_MESSAGE).contains("max_body_bytes"),
        "{:?}",
        dead[0].headers
    );
    assert_eq!(dead[0].body, request.as_bytes(), "byte for byte");
    assert_eq!(dead_event.len(), 1, "the source event too");
    assert_eq!(
        header(&dead_event[0], headers::ERROR_CLASS),
        "body_too_large"
    );
    assert_eq!(env.depth("productcontent_price_tr_tr").await, 0);
    assert_eq!(env.depth(names::BULK_LANE).await, 0);
}

#[tokio::test]
async fn an_invalidation_time_outside_the_sane_range_is_a_permanent_error() {
    let env = TestEnv::new().await;
    let workers = env.start(&[WorkerKind::Dispatcher, WorkerKind::Ingest]);
    let now = now_millis();
    let hour = 3_600_000i64;
    let request = |id: i64, time: i64| {
        format!(
            r#"{{"parameterIds":[{id}],"parameterName":"id","invalidationType":"PRICE","indexKeys":["trTR"],"invalidationTime":{time}}}"#
        )
        .into_bytes()
    };
    let window_start = |at: i64| {
        let mut h = FieldTable::default();
        h.insert(WINDOW_START.into(), AMQPValue::LongLongInt(at));
        props(h)
    };
    let bad: Vec<(i64, i64, Option<i64>)> = vec![
        (1, now + 24 * hour, None), // a day ahead
        (2, 1_700_000_000, None),   // seconds, not milliseconds: January 1970
        (3, now - 3 * hour, None),  // older than the window: it could only be parked
        (4, i64::MIN, None),        // extremes must not overflow anywhere
        (5, i64::MAX, None),
        (6, -1, Some(now)),              // before the epoch, whatever the window
        (7, now, Some(now + 24 * hour)), // a window that starts tomorrow
        (8, now, Some(i64::MAX)),
    ];
    let good: Vec<(i64, i64, Option<i64>)> = vec![
        (101, now, None),
        (102, now - 60_000, None),
        (103, now + 60_000, None), // within the clock slack
        // Replayed with a reset: judged from its new window, not its old time.
        (104, now - 3 * hour, Some(now)),
    ];
    for (id, time, ws) in bad.iter().chain(good.iter()) {
        let p = match ws {
            Some(at) => window_start(*at),
            None => props(FieldTable::default()),
        };
        env.publish_with(names::REQUESTS, "price", &request(*id, *time), p)
            .await;
    }
    // A source event with a time in seconds: caught where it enters.
    env.publish(
        "source.product",
        "",
        br#"{"contentId":1,"eventTime":1700000000}"#,
    )
    .await;
    let dead = env
        .take(
            &names::dlq(names::FAST_LANE),
            bad.len(),
            Duration::from_secs(20),
        )
        .await;
    let (ids, _) = env
        .collect_ids(
            "productcontent_price_tr_tr",
            good.len(),
            Duration::from_secs(20),
        )
        .await;
    let dead_event = env
        .take("source.product.dlq", 1, Duration::from_secs(20))
        .await;
    workers.stop().await.unwrap();
    assert_eq!(dead.len(), bad.len(), "{dead:?}");
    let mut dead_ids: Vec<i64> = dead
        .iter()
        .map(|m| {
            assert_eq!(
                header(m, headers::ERROR_CLASS),
                "bad_invalidation_time",
                "{:?}",
                m.headers
            );
            m.json()["parameterIds"][0].as_i64().unwrap()
        })
        .collect();
    dead_ids.sort();
    assert_eq!(dead_ids, (1..=8).collect::<Vec<i64>>());
    assert_eq!(
        ids.into_iter().collect::<Vec<_>>(),
        vec![101, 102, 103, 104]
    );
    assert_eq!(dead_event.len(), 1);
    assert_eq!(
        header(&dead_event[0], headers::ERROR_CLASS),
        "bad_invalidation_time"
    );
}
