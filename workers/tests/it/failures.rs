//! The failure paths of SPEC §6, through real workers.

use std::process::Stdio;
use std::time::Duration;

use fleet_shared::broker::headers;
use fleet_shared::lapin::types::{AMQPValue, FieldTable};
use fleet_shared::lapin::BasicProperties;
use fleet_shared::topology::names;
use fleet_workers::app::WorkerKind;

use crate::common::*;

#[tokio::test]
async fn a_malformed_request_lands_in_the_dead_letter_queue_with_its_reason() {
    let env = TestEnv::new().await;
    let fleet = env.start(&[WorkerKind::Dispatcher]);
    let body = b"{\"parameterIds\": [1, 2], \"parameterName\": \"id\", \"invalidationType\": ";
    env.publish(names::REQUESTS, "price", body).await;
    let forbidden =
        br#"{"parameterIds": [1], "parameterName": "price.amount", "invalidationType": "PRICE"}"#;
    env.publish(names::REQUESTS, "price", forbidden).await;
    let dead = env
        .take(&names::dlq(names::FAST_LANE), 2, Duration::from_secs(15))
        .await;
    assert_eq!(dead.len(), 2, "both bad requests are dead-lettered");
    let malformed = dead
        .iter()
        .find(|m| m.body == body)
        .expect("body kept byte for byte");
    assert_eq!(header(malformed, headers::ERROR_CLASS), "malformed_json");
    assert!(
        header(malformed, headers::ERROR_MESSAGE).contains("EOF"),
        "{:?}",
        malformed.headers
    );
    assert!(header(malformed, headers::ERROR_WORKER).starts_with("dispatcher@"));
    assert_eq!(
        header(malformed, headers::ORIGINAL_EXCHANGE),
        names::REQUESTS
    );
    assert_eq!(header(malformed, headers::ORIGINAL_ROUTING_KEY), "price");
    assert!(!header(malformed, headers::ERROR_TIME).is_empty());
    let other = dead.iter().find(|m| m.body == forbidden).unwrap();
    assert_eq!(header(other, headers::ERROR_CLASS), "forbidden_field");
    assert!(header(other, headers::ERROR_MESSAGE).contains("price.amount"));
    // Nothing else went anywhere.
    assert_eq!(env.depth(names::FAST_LANE).await, 0);
    assert_eq!(env.depth("productcontent_price_tr_tr").await, 0);
    fleet.stop().await.unwrap();
}

#[tokio::test]
async fn an_unroutable_request_is_caught_not_dropped() {
    let env = TestEnv::new().await;
    env.publish(
        names::REQUESTS,
        "refund",
        br#"{"invalidationType": "REFUND"}"#,
    )
    .await;
    let caught = env.take(names::UNROUTABLE, 1, Duration::from_secs(5)).await;
    assert_eq!(caught.len(), 1);
    assert_eq!(caught[0].routing_key, "refund");
}

fn failed_props(exchange: &str, routing_key: &str, attempts: i64) -> BasicProperties {
    let mut h = FieldTable::default();
    h.insert(
        headers::ORIGINAL_EXCHANGE.into(),
        AMQPValue::LongString(exchange.into()),
    );
    h.insert(
        headers::ORIGINAL_ROUTING_KEY.into(),
        AMQPValue::LongString(routing_key.into()),
    );
    h.insert(headers::ATTEMPTS.into(), AMQPValue::LongLongInt(attempts));
    BasicProperties::default()
        .with_headers(h)
        .with_delivery_mode(2)
}

#[tokio::test]
async fn a_failed_message_comes_back_after_the_delay_and_is_parked_once_too_old() {
    let env = TestEnv::with(|c| {
        c.retry.delay = Duration::from_secs(1);
        c.retry.window = Duration::from_secs(60);
    })
    .await;
    let fleet = env.start(&[WorkerKind::Retry]);
    let now = fleet_shared::message::now_millis();
    // Young: goes back to its original exchange and routing key (the fast
    // lane, which has no consumer in this test) after the delay.
    let young = format!(
        r#"{{"parameterIds":[1],"parameterName":"id","invalidationType":"PRICE","invalidationTime":{now}}}"#
    );
    let sent = std::time::Instant::now();
    env.publish_with(
        names::RETRY_EXCHANGE,
        names::RETRY_DELAY_KEY,
        young.as_bytes(),
        failed_props(names::REQUESTS, "price", 1),
    )
    .await;
    // Old: failed first three hours ago, outside the window.
    let old_time = now - 3 * 3600 * 1000;
    let old = format!(
        r#"{{"parameterIds":[2],"parameterName":"id","invalidationType":"STOCK","invalidationTime":{old_time}}}"#
    );
    env.publish_with(
        names::RETRY_EXCHANGE,
        names::RETRY_DELAY_KEY,
        old.as_bytes(),
        failed_props(names::REQUESTS, "stock", 7),
    )
    .await;

    let back = env.take(names::FAST_LANE, 1, Duration::from_secs(15)).await;
    assert_eq!(back.len(), 1);
    assert!(
        sent.elapsed() >= Duration::from_millis(900),
        "came back before the delay: {:?}",
        sent.elapsed()
    );
    assert_eq!(back[0].body, young.as_bytes());
    assert_eq!(back[0].routing_key, "price");
    assert_eq!(header(&back[0], headers::ATTEMPTS), "1");

    let parked = env.take(names::PARKED, 1, Duration::from_secs(15)).await;
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].body, old.as_bytes());
    assert!(header(&parked[0], headers::PARK_REASON).starts_with("retry_window_exceeded"));
    let db = env.db().await;
    let rows = fleet_shared::db::parked(&db, 10).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].body, old.as_bytes());
    assert_eq!(rows[0].original_routing_key, "stock");
    assert_eq!(rows[0].attempts, 7);
    assert!(
        rows[0].reason.contains("retry window"),
        "{}",
        rows[0].reason
    );
    // The headers are stored as JSON a query can reach into: the delay
    // queue's x-death an array of objects, not JSON text in a string.
    let (kind, reason): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT jsonb_typeof(headers->'x-death'), headers->'x-death'->0->>'reason' FROM parked_messages",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(
        (kind.as_deref(), reason.as_deref()),
        (Some("array"), Some("expired"))
    );
    fleet.stop().await.unwrap();
}

#[tokio::test]
async fn a_transient_failure_goes_through_the_delay_queue_with_time_and_counter() {
    // The search cluster is unreachable: the dispatcher fails transiently.
    let env = TestEnv::with(|c| c.retry.delay = Duration::from_secs(60)).await;
    let fleet = env.start(&[WorkerKind::Dispatcher]);
    let body = br#"{"parameterIds":[5],"parameterName":"brand.id","invalidationType":"PRICE","indexKeys":["trTR"]}"#;
    env.publish(names::REQUESTS, "price", body).await;
    eventually(
        Duration::from_secs(20),
        "the request in the delay queue",
        || async { (env.depth(names::RETRY_DELAY).await == 1).then_some(()) },
    )
    .await;
    fleet.stop().await.unwrap();
    // Purge-free inspection: a 60 s TTL leaves time to take it.
    let m = env
        .take(names::RETRY_DELAY, 1, Duration::from_secs(5))
        .await
        .remove(0);
    let v = m.json();
    assert!(
        v["invalidationTime"].as_i64().unwrap() > 0,
        "invalidationTime set at first failure"
    );
    assert!(
        v["requestId"].as_str().is_some(),
        "request id generated at first sight is kept"
    );
    assert_eq!(header(&m, headers::ATTEMPTS), "1");
    assert_eq!(header(&m, headers::ERROR_CLASS), "search_unavailable");
    assert_eq!(header(&m, headers::ORIGINAL_EXCHANGE), names::REQUESTS);
    assert_eq!(header(&m, headers::ORIGINAL_ROUTING_KEY), "price");
}

#[tokio::test]
async fn sigterm_during_work_loses_nothing() {
    let env = TestEnv::new().await;
    const EVENTS: i64 = 400;
    for i in 0..EVENTS {
        let body = format!(
            r#"{{"contentId": {}, "event": "created", "quantity": 5}}"#,
            1_000_000 + i
        );
        env.publish("source.stock", "", body.as_bytes()).await;
    }
    let spawn = || {
        tokio::process::Command::new(fleet_bin())
            .args(["run", "ingest"])
            .envs(env.env_vars())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let mut child = spawn();
    // Let it get going, then ask it to stop mid-stream.
    eventually(
        Duration::from_secs(30),
        "ingest to start publishing",
        || async { (env.depth(names::FAST_LANE).await > 0).then_some(()) },
    )
    .await;
    let pid = child.id().unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("worker exits within the shutdown bound")
        .unwrap();
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");
    // Whatever it did not finish is still in the source queue; a new worker finishes it.
    let mut child = spawn();
    let requests = env
        .take(names::FAST_LANE, EVENTS as usize, Duration::from_secs(60))
        .await;
    child.kill().await.unwrap();
    let mut seen: Vec<i64> = requests
        .iter()
        .map(|m| m.json()["parameterIds"][0].as_i64().unwrap())
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen.len() as i64,
        EVENTS,
        "every stock event became a request"
    );
    assert_eq!(env.depth("source.stock").await, 0);
    assert_eq!(env.depth("source.stock.dlq").await, 0);
}

#[tokio::test]
async fn a_worker_reconnects_after_its_connections_are_closed() {
    let env = TestEnv::new().await;
    let fleet = env.start(&[WorkerKind::Ingest]);
    env.publish("source.product", "", br#"{"contentId": 1}"#)
        .await;
    assert_eq!(
        env.take(names::BULK_LANE, 1, Duration::from_secs(10))
            .await
            .len(),
        1
    );

    // An operator (or a broker restart) closes every connection of the worker.
    let conns = eventually(
        Duration::from_secs(10),
        "the worker's connections",
        || async {
            let list = env.mgmt.connections(&env.vhost).await.ok()?;
            let names: Vec<String> = list
                .into_iter()
                .filter(|c| {
                    c.client_name()
                        .is_some_and(|n| n.starts_with("fleet-ingest@"))
                })
                .map(|c| c.name)
                .collect();
            (names.len() >= 2).then_some(names)
        },
    )
    .await;
    for name in conns {
        let _ = env
            .mgmt
            .close_connection(&name, "test: a broker restart")
            .await;
    }
    // It comes back by itself, with its prefetch re-applied, and nothing is lost.
    for i in 2..=20 {
        env.publish(
            "source.product",
            "",
            format!(r#"{{"contentId": {i}}}"#).as_bytes(),
        )
        .await;
    }
    let got = env
        .take(names::BULK_LANE, 19, Duration::from_secs(30))
        .await;
    let mut ids: Vec<i64> = got
        .iter()
        .map(|m| m.json()["parameterIds"][0].as_i64().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids, (2..=20).collect::<Vec<i64>>());
    let consumers = eventually(
        Duration::from_secs(10),
        "the consumer to be back",
        || async {
            let q = env.mgmt.queue(&env.vhost, "source.product").await.ok()?;
            (q.consumers == Some(1)).then_some(q)
        },
    )
    .await;
    assert_eq!(consumers.consumers, Some(1));
    // The management API's consumer list lags by a stats interval.
    let prefetch = eventually(
        Duration::from_secs(15),
        "the consumer's details",
        || async {
            let details = env.mgmt.consumers(&env.vhost).await.ok()?;
            details
                .into_iter()
                .find(|c| c.queue.name == "source.product")
                .map(|c| c.prefetch_count)
        },
    )
    .await;
    assert_eq!(
        prefetch,
        u64::from(env.config.amqp.prefetch),
        "prefetch re-applied after reconnect"
    );
    fleet.stop().await.unwrap();
}

#[tokio::test]
async fn a_missing_service_at_start_up_is_named_with_how_to_start_it() {
    let env = TestEnv::new().await;
    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cases = [
        (
            "retry",
            "AMQP_URL",
            format!("amqp://guest:guest@127.0.0.1:{dead}/%2f"),
            "RabbitMQ",
            "rabbitmq-server -detached",
        ),
        (
            "retry",
            "DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:{dead}/test"),
            "PostgreSQL",
            "pg_ctlcluster",
        ),
        (
            "sweeper",
            "REDIS_URL",
            format!("redis://127.0.0.1:{dead}/"),
            "Redis",
            "redis-server",
        ),
    ];
    for (worker, var, url, service, how) in cases {
        let out = tokio::process::Command::new(fleet_bin())
            .args(["run", worker])
            .envs(env.env_vars())
            .env(var, &url)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{worker} must not start without {service}"
        );
        assert!(
            stderr.contains(&format!("cannot connect to {service}")),
            "{stderr}"
        );
        assert!(stderr.contains(how), "{stderr}");
        assert!(
            !stderr.contains("guest:guest@"),
            "passwords are redacted: {stderr}"
        );
    }
}

/// A handler with a bug.
struct Panics;

impl fleet_shared::runtime::Handler for Panics {
    async fn handle(
        &self,
        _msg: &fleet_shared::runtime::Incoming,
    ) -> Result<(), fleet_shared::runtime::HandlerError> {
        panic!("index out of bounds");
    }
}

#[tokio::test]
async fn a_panicking_handler_sends_the_message_to_the_retry_path_instead_of_stranding_it() {
    let env = TestEnv::with(|c| c.retry.delay = Duration::from_secs(60)).await;
    let ctx = fleet_workers::app::context(&std::sync::Arc::new(env.config.clone()), "test")
        .await
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let worker = tokio::spawn(fleet_shared::runtime::consume(
        ctx,
        vec!["source.product".into()],
        std::sync::Arc::new(Panics),
        stop.clone(),
    ));
    env.publish("source.product", "", br#"{"contentId": 1}"#)
        .await;
    let waiting = env
        .take(names::RETRY_DELAY, 1, Duration::from_secs(15))
        .await;
    stop.cancel();
    worker.await.unwrap();
    assert_eq!(waiting.len(), 1);
    assert_eq!(header(&waiting[0], headers::ERROR_CLASS), "panic");
    assert!(header(&waiting[0], headers::ERROR_MESSAGE).contains("index out of bounds"));
    assert_eq!(
        env.depth("source.product").await,
        0,
        "nothing stranded unacked"
    );
}
