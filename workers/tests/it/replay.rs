//! `fleet dlq replay` does what it says (bugs found by trying it as a new
//! user): a reset gives a whole new window, a message is listed by its
//! newest failure, nothing is "moved" straight back through an alternate
//! exchange, what the broker dead-lettered itself replays by its `x-death`,
//! every run is on record from its start, and failure copies keep every
//! AMQP property.

use std::process::{Output, Stdio};
use std::time::Duration;

use fleet_shared::broker::headers;
use fleet_shared::lapin::message::Delivery;
use fleet_shared::lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, BasicRejectOptions,
};
use fleet_shared::lapin::types::{AMQPValue, FieldTable};
use fleet_shared::lapin::BasicProperties;
use fleet_shared::message::now_millis;
use fleet_shared::topology::names;
use fleet_workers::app::WorkerKind;
use serde_json::{json, Value};

use crate::common::*;

/// The header a `--reset-retries` replay stamps: the new window's start.
const WINDOW_START: &str = "x-window-start";
/// Earlier diagnoses of a message, newest first.
const HISTORY: &str = "x-history";

/// Runs `fleet` with this test's services and stdin closed (not a terminal).
async fn fleet(env: &TestEnv, args: &[&str]) -> Output {
    tokio::process::Command::new(fleet_bin())
        .args(args)
        .envs(env.env_vars())
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(v.into())
}

/// Headers of a message the retry handler parked: origin, counters, reason.
fn parked_headers(routing_key: &str, attempts: i64, first_failure: i64) -> FieldTable {
    let mut h = FieldTable::default();
    h.insert(headers::ORIGINAL_EXCHANGE.into(), s(names::REQUESTS));
    h.insert(headers::ORIGINAL_ROUTING_KEY.into(), s(routing_key));
    h.insert(headers::ORIGINAL_QUEUE.into(), s(names::FAST_LANE));
    h.insert(headers::ATTEMPTS.into(), AMQPValue::LongLongInt(attempts));
    h.insert(
        headers::FIRST_FAILURE.into(),
        AMQPValue::LongLongInt(first_failure),
    );
    h.insert(headers::ERROR_CLASS.into(), s("search_unavailable"));
    h.insert(
        headers::ERROR_MESSAGE.into(),
        s("search cluster unreachable: connection refused"),
    );
    h.insert(
        headers::ERROR_TIME.into(),
        s(&chrono::Utc::now().to_rfc3339()),
    );
    h.insert(
        headers::PARK_REASON.into(),
        s("retry_window_exceeded: first failed 3h ago, longer than the retry window of 2h"),
    );
    h
}

async fn park(env: &TestEnv, body: &[u8], h: FieldTable) {
    env.publish_with(
        names::PARKED_EXCHANGE,
        "",
        body,
        BasicProperties::default()
            .with_headers(h)
            .with_delivery_mode(2)
            .with_content_type("application/json".into()),
    )
    .await;
}

/// One message off `queue` with all its properties (acked), waiting up to `wait`.
async fn get(env: &TestEnv, queue: &str, wait: Duration) -> Option<Delivery> {
    let ch = env.shared_channel().await;
    let deadline = std::time::Instant::now() + wait;
    loop {
        let got = ch
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await
            .unwrap();
        if let Some(m) = got {
            let d = m.delivery;
            d.ack(BasicAckOptions::default()).await.unwrap();
            return Some(d);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_reset_replay_gives_a_parked_message_a_whole_new_window_and_a_fresh_count() {
    let env = TestEnv::with(|c| {
        c.retry.delay = Duration::from_secs(1);
        // Room for several attempts even on a busy machine.
        c.retry.window = Duration::from_secs(10);
    })
    .await;
    // Parked three hours after its invalidation time, after 13 attempts.
    let old = now_millis() - 3 * 3600 * 1000;
    let body = format!(
        r#"{{"requestId":"outage-1","parameterIds":[5],"parameterName":"brand.id","invalidationType":"PRICE","indexKeys":["trTR"],"invalidationTime":{old}}}"#
    );
    park(&env, body.as_bytes(), parked_headers("price", 13, old)).await;
    // The search cluster is still down (nothing listens at the test's search URL).
    let workers = env.start(&[WorkerKind::Dispatcher, WorkerKind::Retry]);
    let out = fleet(&env, &["dlq", "replay", names::PARKED, "--reset-retries"]).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("moved 1,"), "{stdout}");

    // Parked again only once its new window is over: several attempts, not one.
    let parked = env.take(names::PARKED, 1, Duration::from_secs(60)).await;
    workers.stop().await.unwrap();
    assert_eq!(parked.len(), 1, "parked again when the new window ended");
    let p = &parked[0];
    assert!(
        header(p, headers::PARK_REASON).starts_with("retry_window_exceeded"),
        "{:?}",
        p.headers
    );
    let attempts: i64 = header(p, headers::ATTEMPTS).parse().unwrap();
    assert!(
        attempts >= 2,
        "the reset gave {attempts} attempt(s), not a whole new window: {:?}",
        p.headers
    );
    let start: i64 = header(p, WINDOW_START)
        .parse()
        .unwrap_or_else(|_| panic!("the window start travels with it: {:?}", p.headers));
    assert!(start > old + 3 * 3600 * 1000 - 60_000, "{start}");
    // The window moved, the producer's time did not: no replay rewrites it.
    assert_eq!(p.json()["invalidationTime"], old, "{}", text(&p.body));
    assert_eq!(p.json()["requestId"], "outage-1");
    let db = env.db().await;
    let rows = fleet_shared::db::parked(&db, 10).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].attempts >= 2, "{}", rows[0].attempts);
}

#[tokio::test]
async fn the_tasks_of_a_reset_replayed_split_request_inherit_its_new_window() {
    let url = catalogue_clone().await;
    let env = TestEnv::with(|c| c.search.url = url).await;
    let old = now_millis() - 3 * 3600 * 1000;
    let body = serde_json::to_vec(&json!({
        "v": 1, "requestId": "split-outage", "parameterIds": [1], "parameterName": "brand.id",
        "invalidationType": "ASSORTMENT", "indexKeys": ["trTR"], "invalidationTime": old,
    }))
    .unwrap();
    park(&env, &body, parked_headers("assortment", 13, old)).await;
    let before = now_millis();
    let out = fleet(&env, &["dlq", "replay", names::PARKED, "--reset-retries"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Only the dispatcher: the task messages stay in the partition queue.
    let workers = env.start(&[WorkerKind::Dispatcher]);
    eventually(Duration::from_secs(60), "the split", || async {
        (env.depth(names::PARTITIONS).await >= 2).then_some(())
    })
    .await;
    // A graceful stop lets the dispatcher publish every task of the job
    // before it acks the request; only then is the count final.
    workers.stop().await.unwrap();
    let tasks = env.depth(names::PARTITIONS).await;
    let taken = env
        .take(names::PARTITIONS, tasks as usize, Duration::from_secs(5))
        .await;
    assert_eq!(taken.len(), tasks as usize);
    let mut window_start = None;
    for t in &taken {
        assert_eq!(
            t.json()["invalidationTime"],
            old,
            "a task keeps the request's invalidation time"
        );
        let ws: i64 = header(t, WINDOW_START).parse().unwrap_or_else(|_| {
            panic!(
                "a task of a reset replay carries the replay's window: {:?}",
                t.headers
            )
        });
        assert!(ws >= before, "{ws} < {before}");
        window_start = Some(ws);
    }

    // The job remembers it: tasks re-published later (sweeper, `jobs resume`) carry it too.
    let db = env.db().await;
    let job = fleet_shared::db::jobs_of_request(&db, "split-outage")
        .await
        .unwrap()
        .remove(0);
    let out = fleet(&env, &["jobs", "resume", &job.id.to_string()]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let again = env
        .take(names::PARTITIONS, tasks as usize, Duration::from_secs(10))
        .await;
    assert_eq!(again.len(), tasks as usize);
    for t in &again {
        assert_eq!(
            header(t, WINDOW_START).parse::<i64>().ok(),
            window_start,
            "{:?}",
            t.headers
        );
    }
}

#[tokio::test]
async fn a_replayed_message_that_fails_again_is_listed_by_its_new_reason() {
    let env = TestEnv::new().await;
    let now = now_millis();
    // Parked during an outage; the request itself is bad too.
    let body = format!(
        r#"{{"parameterIds":[1],"parameterName":"price.amount","invalidationType":"PRICE","invalidationTime":{now}}}"#
    );
    park(&env, body.as_bytes(), parked_headers("price", 13, now)).await;
    let workers = env.start(&[WorkerKind::Dispatcher]);
    let out = fleet(&env, &["dlq", "replay", names::PARKED]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dlq = names::dlq(names::FAST_LANE);
    eventually(Duration::from_secs(20), "the dead letter", || async {
        (env.depth(&dlq).await == 1).then_some(())
    })
    .await;
    workers.stop().await.unwrap();

    let out = fleet(&env, &["dlq", "list"]).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let row = stdout
        .lines()
        .find(|l| l.contains(&dlq))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(row.contains("forbidden_field ×1"), "{row}");
    assert!(
        !row.contains("parked"),
        "the old park reason is history: {row}"
    );

    // Filters read the current reason only.
    let out = fleet(
        &env,
        &[
            "dlq",
            "replay",
            &dlq,
            "--filter",
            "reason=retry_window",
            "--dry-run",
        ],
    )
    .await;
    assert!(
        text(&out.stdout).contains("would move 0,"),
        "{}",
        text(&out.stdout)
    );
    let out = fleet(
        &env,
        &[
            "dlq",
            "replay",
            &dlq,
            "--filter",
            "reason=allow-list",
            "--dry-run",
        ],
    )
    .await;
    assert!(
        text(&out.stdout).contains("would move 1,"),
        "{}",
        text(&out.stdout)
    );

    // The earlier diagnosis is kept, as history.
    let out = fleet(&env, &["dlq", "peek", &dlq, "--json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let docs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let h = &docs[0]["headers"];
    assert_eq!(h[headers::ERROR_CLASS], "forbidden_field");
    assert!(h.get(headers::PARK_REASON).is_none(), "{h}");
    assert!(
        h[HISTORY].to_string().contains("retry_window_exceeded"),
        "{h}"
    );
    let left = env.take(&dlq, 1, Duration::from_secs(1)).await;
    assert_eq!(left[0].body, body.as_bytes());
}

#[tokio::test]
async fn replaying_the_unroutable_queue_to_where_it_came_from_is_refused_with_the_key_to_use() {
    let env = TestEnv::new().await;
    let body = br#"{"parameterIds":[1],"parameterName":"id","invalidationType":"PRICE"}"#;
    // A producer used the wrong routing key: the alternate exchange caught it.
    env.publish(names::REQUESTS, "refund", body).await;
    assert_eq!(env.depth(names::UNROUTABLE).await, 1);

    let out = fleet(&env, &["dlq", "replay", names::UNROUTABLE]).await;
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("moved 0,"),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(
        stdout.contains("--to invalidation.requests:price"),
        "says which routing key to use: {stdout}"
    );
    assert_eq!(env.depth(names::UNROUTABLE).await, 1, "it stays");
    assert_eq!(env.depth(names::FAST_LANE).await, 0);

    // A --to that routes back here is refused the same way.
    let out = fleet(
        &env,
        &[
            "dlq",
            "replay",
            names::UNROUTABLE,
            "--to",
            "invalidation.requests:refnd",
        ],
    )
    .await;
    assert!(
        text(&out.stdout).contains("moved 0,"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(env.depth(names::UNROUTABLE).await, 1);

    let out = fleet(
        &env,
        &[
            "dlq",
            "replay",
            names::UNROUTABLE,
            "--to",
            "invalidation.requests:price",
        ],
    )
    .await;
    assert!(
        text(&out.stdout).contains("moved 1,"),
        "{}",
        text(&out.stdout)
    );
    let moved = env.take(names::FAST_LANE, 1, Duration::from_secs(5)).await;
    assert_eq!(moved.len(), 1);
    assert_eq!(moved[0].body, body);
    assert_eq!(env.depth(names::UNROUTABLE).await, 0);
}

/// Takes the head of `queue` and rejects it without requeue, as an indexer
/// (or the runtime's reject-after-redelivery) does: the broker dead-letters it.
async fn broker_reject(env: &TestEnv, queue: &str) {
    let ch = env.shared_channel().await;
    let m = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("a message to reject");
    m.delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
}

#[tokio::test]
async fn what_the_broker_dead_lettered_itself_is_listed_and_replayed_by_its_x_death() {
    let env = TestEnv::new().await;
    let request = br#"{"parameterIds":[1],"parameterName":"id","invalidationType":"PRICE"}"#;
    env.publish(names::REQUESTS, "price", request).await;
    broker_reject(&env, names::FAST_LANE).await;
    let batch = br#"{"v":1,"requestId":"r","invalidationType":"PRICE","indexKey":"trTR","contentIds":[1],"invalidationTime":1}"#;
    env.publish(names::OUTBOUND, "price.tr_tr", batch).await;
    broker_reject(&env, "productcontent_price_tr_tr").await;
    let lane_dlq = names::dlq(names::FAST_LANE);
    let out_dlq = names::dlq("productcontent_price_tr_tr");
    assert_eq!(env.depth(&lane_dlq).await, 1);
    assert_eq!(env.depth(&out_dlq).await, 1);

    let out = fleet(&env, &["dlq", "list"]).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    for q in [&lane_dlq, &out_dlq] {
        let row = stdout
            .lines()
            .find(|l| l.contains(q.as_str()))
            .unwrap_or_else(|| panic!("{stdout}"));
        assert!(row.contains("broker: rejected ×1"), "{row}");
        assert!(
            !row.contains("unknown"),
            "the age comes from x-death: {row}"
        );
    }
    let out = fleet(&env, &["dlq", "peek", &lane_dlq]).await;
    let shown = text(&out.stdout);
    assert!(
        shown.contains("rejected") && shown.contains(names::REQUESTS),
        "{shown}"
    );

    // Back to where x-death says they were published, by default.
    for (q, back_to, exchange, key) in [
        (&lane_dlq, names::FAST_LANE, names::REQUESTS, "price"),
        (
            &out_dlq,
            "productcontent_price_tr_tr",
            names::OUTBOUND,
            "price.tr_tr",
        ),
    ] {
        let out = fleet(&env, &["dlq", "replay", q]).await;
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
        assert!(stdout.contains("moved 1,"), "{stdout}");
        let back = env.take(back_to, 1, Duration::from_secs(5)).await;
        assert_eq!(back.len(), 1, "{q}");
        assert_eq!(back[0].exchange, exchange);
        assert_eq!(back[0].routing_key, key);
        assert_eq!(env.depth(q).await, 0);
    }
}

/// Dead letters of the fast lane with an origin, numbered.
async fn fill_fast_dlq(env: &TestEnv, n: usize) {
    let ch = env.shared_channel().await;
    let mut confirms = Vec::new();
    for i in 0..n {
        let mut h = FieldTable::default();
        h.insert(headers::ERROR_CLASS.into(), s("search_unavailable"));
        h.insert(headers::ORIGINAL_EXCHANGE.into(), s(names::REQUESTS));
        h.insert(headers::ORIGINAL_ROUTING_KEY.into(), s("price"));
        let body = format!(
            r#"{{"seq":{i},"parameterIds":[{i}],"parameterName":"id","invalidationType":"PRICE"}}"#
        );
        confirms.push(
            ch.basic_publish(
                names::DLX.into(),
                names::FAST_LANE.into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default()
                    .with_headers(h)
                    .with_delivery_mode(2),
            )
            .await
            .unwrap(),
        );
    }
    for c in confirms {
        assert!(c.await.unwrap().is_ack());
    }
}

/// Every replay record, oldest first: (state, finished, moved, kept).
async fn records(db: &sqlx::PgPool) -> Vec<(String, bool, i32, i32)> {
    sqlx::query_as("SELECT state, finished_at IS NOT NULL, moved, kept FROM replays ORDER BY id")
        .fetch_all(db)
        .await
        .expect("the replays table has a state")
}

#[tokio::test]
async fn every_replay_is_on_record_from_its_start_and_a_killed_one_shows_as_incomplete() {
    let env = TestEnv::new().await;
    const N: usize = 3000;
    fill_fast_dlq(&env, N).await;
    let dlq = names::dlq(names::FAST_LANE);
    let spawn = || {
        tokio::process::Command::new(fleet_bin())
            .args(["dlq", "replay", &dlq])
            .envs(env.env_vars())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let db = env.db().await;

    // Killed (SIGKILL: no clean-up of any kind) mid-way.
    let mut child = spawn();
    eventually(
        Duration::from_secs(60),
        "the replay to get going",
        || async { (env.depth(names::FAST_LANE).await >= 300).then_some(()) },
    )
    .await;
    child.kill().await.unwrap();
    let rows = records(&db).await;
    assert_eq!(rows.len(), 1, "the killed run is on record: {rows:?}");
    let (state, finished, moved, _) = &rows[0];
    assert_eq!(state, "running", "{rows:?}");
    assert!(!finished, "{rows:?}");
    assert!(*moved > 0, "the record follows the run: {rows:?}");
    assert!(env.depth(&dlq).await > 0, "the kill landed mid-replay");

    // Interrupted (Ctrl-C): it stops, and says so in its record.
    let already = env.depth(names::FAST_LANE).await;
    let mut child = spawn();
    eventually(
        Duration::from_secs(60),
        "the second run to move",
        || async { (env.depth(names::FAST_LANE).await >= already + 200).then_some(()) },
    )
    .await;
    let pid = child.id().unwrap();
    std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("an interrupted replay exits")
        .unwrap();
    assert_eq!(status.code(), Some(130), "{status:?}");
    let rows = records(&db).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    let (state, finished, moved, _) = &rows[1];
    assert_eq!(state, "interrupted", "{rows:?}");
    assert!(finished, "{rows:?}");
    assert!(*moved >= 200, "{rows:?}");

    // A run that completes says so.
    let out = fleet(&env, &["dlq", "replay", &dlq]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows = records(&db).await;
    let (state, finished, _, kept) = &rows[2];
    assert_eq!((state.as_str(), *finished, *kept), ("finished", true, 0));
    assert_eq!(env.depth(&dlq).await, 0);
}

/// A producer's message with every AMQP property set.
fn rich_properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("identity".into())
        .with_correlation_id("corr-42".into())
        .with_reply_to("replies.pricing".into())
        .with_priority(7)
        .with_message_id("msg-42".into())
        .with_timestamp(1_700_000_000)
        .with_type("invalidation.request".into())
        .with_app_id("pricing-service".into())
        .with_delivery_mode(1)
}

fn assert_same_properties(copy: &BasicProperties, what: &str) {
    let p = rich_properties();
    assert_eq!(copy.content_type(), p.content_type(), "{what}");
    assert_eq!(copy.content_encoding(), p.content_encoding(), "{what}");
    assert_eq!(copy.correlation_id(), p.correlation_id(), "{what}");
    assert_eq!(copy.reply_to(), p.reply_to(), "{what}");
    assert_eq!(copy.priority(), p.priority(), "{what}");
    assert_eq!(copy.message_id(), p.message_id(), "{what}");
    assert_eq!(copy.timestamp(), p.timestamp(), "{what}");
    assert_eq!(copy.kind(), p.kind(), "{what}");
    assert_eq!(copy.app_id(), p.app_id(), "{what}");
    assert_eq!(
        *copy.delivery_mode(),
        Some(2),
        "{what}: copies are persistent"
    );
}

#[tokio::test]
async fn retry_and_dead_letter_copies_keep_every_amqp_property() {
    let env = TestEnv::with(|c| c.retry.delay = Duration::from_secs(60)).await;
    let workers = env.start(&[WorkerKind::Dispatcher]);
    // Permanent: not JSON.
    env.publish_with(names::REQUESTS, "price", b"{nope", rich_properties())
        .await;
    // Transient: needs the search cluster, which is down.
    let body = br#"{"parameterIds":[5],"parameterName":"brand.id","invalidationType":"PRICE","indexKeys":["trTR"]}"#;
    env.publish_with(names::REQUESTS, "price", body, rich_properties())
        .await;
    let dead = get(&env, &names::dlq(names::FAST_LANE), Duration::from_secs(20))
        .await
        .expect("the dead letter");
    let waiting = get(&env, names::RETRY_DELAY, Duration::from_secs(20))
        .await
        .expect("the retry copy");
    workers.stop().await.unwrap();
    assert_eq!(dead.data, b"{nope");
    assert_same_properties(&dead.properties, "dead-letter copy");
    assert_same_properties(&waiting.properties, "retry copy");
}
