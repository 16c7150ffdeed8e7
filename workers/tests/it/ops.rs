//! The CLI at 3 a.m. (issue 14): `dlq peek` shows what a message is and who
//! sent it; replay and purge filters say when a key is wrong; purges and
//! replays of parked messages are on record with the operator's name;
//! `status` says what is unhealthy and exits non-zero; start-up errors give
//! the fix that fits the cause; topology conflicts name the configuration
//! key and the way out.

use std::process::{Output, Stdio};
use std::time::Duration;

use fleet_shared::broker::headers;
use fleet_shared::db::{self, Parked};
use fleet_shared::lapin::options::{BasicGetOptions, BasicPublishOptions, BasicRejectOptions};
use fleet_shared::lapin::types::{AMQPValue, FieldTable};
use fleet_shared::lapin::BasicProperties;
use fleet_shared::topology::names;
use fleet_workers::app::WorkerKind;
use serde_json::Value;

use crate::common::*;

/// Runs `fleet` with this test's services (plus `extra` variables) and stdin closed.
async fn fleet_with(env: &TestEnv, extra: &[(&str, &str)], args: &[&str]) -> Output {
    tokio::process::Command::new(fleet_bin())
        .args(args)
        .envs(env.env_vars())
        .envs(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap()
}

async fn fleet(env: &TestEnv, args: &[&str]) -> Output {
    fleet_with(env, &[], args).await
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(v.into())
}

fn request(seq: usize, ty: &str, key: &str) -> Vec<u8> {
    format!(
        r#"{{"seq":{seq},"requestId":"req-{seq}","parameterIds":[{seq}],"parameterName":"id","invalidationType":"{ty}","invalidationTime":1700000000000,"k":"{key}"}}"#
    )
    .into_bytes()
}

/// Properties of a message the fleet dead-lettered from the fast lane.
fn dead_props(class: &str, routing_key: &str) -> BasicProperties {
    let mut h = FieldTable::default();
    h.insert(headers::ERROR_CLASS.into(), s(class));
    h.insert(
        headers::ERROR_MESSAGE.into(),
        s(&format!("{class}: details")),
    );
    h.insert(headers::ORIGINAL_QUEUE.into(), s(names::FAST_LANE));
    h.insert(headers::ORIGINAL_EXCHANGE.into(), s(names::REQUESTS));
    h.insert(headers::ORIGINAL_ROUTING_KEY.into(), s(routing_key));
    BasicProperties::default()
        .with_headers(h)
        .with_delivery_mode(2)
}

/// Publishes to `exchange` with a confirm.
async fn put(env: &TestEnv, exchange: &str, key: &str, body: &[u8], props: BasicProperties) {
    let ch = env.shared_channel().await;
    let confirm = ch
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            props,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack() && confirm.take_message().is_none());
}

fn seqs(ts: &[Taken]) -> Vec<i64> {
    ts.iter()
        .map(|t| t.json()["seq"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn peek_decodes_x_death_shows_who_sent_it_abbreviates_arrays_and_shows_raw_bodies() {
    let env = TestEnv::new().await;
    // A 1,000-id request from the orders team, rejected by a consumer: the
    // broker dead-letters it with an x-death header.
    let ids: Vec<u32> = (1..=1000).collect();
    let big = serde_json::json!({"parameterIds": ids, "parameterName": "id", "invalidationType": "PRICE"});
    let props = BasicProperties::default()
        .with_app_id("orders-team".into())
        .with_message_id("msg-42".into())
        .with_correlation_id("corr-7".into())
        .with_timestamp(1_800_000_000)
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_type("invalidation".into())
        .with_expiration("600000".into());
    put(
        &env,
        names::REQUESTS,
        "price",
        &serde_json::to_vec(&big).unwrap(),
        props,
    )
    .await;
    let ch = env.shared_channel().await;
    let m = ch
        .basic_get(names::FAST_LANE.into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("the request on the fast lane");
    m.delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    let dlq = names::dlq(names::FAST_LANE);
    eventually(
        Duration::from_secs(5),
        "the broker's dead letter",
        || async { (env.depth(&dlq).await == 1).then_some(()) },
    )
    .await;
    // Then a body that is text but not JSON, and one that is not UTF-8.
    put(
        &env,
        names::DLX,
        names::FAST_LANE,
        br#"{"a": "b\"c"#,
        dead_props("malformed_json", "price"),
    )
    .await;
    put(
        &env,
        names::DLX,
        names::FAST_LANE,
        b"\xff\xfenot json\n",
        dead_props("malformed_json", "price"),
    )
    .await;
    eventually(Duration::from_secs(5), "three dead letters", || async {
        (env.depth(&dlq).await == 3).then_some(())
    })
    .await;

    let out = fleet(&env, &["dlq", "peek", &dlq]).await;
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{shown}\n{}", text(&out.stderr));
    assert!(
        shown.contains(&format!(
            "x-death[1]: 1× rejected from queue {} (published to exchange \"{}\" with routing key [price])",
            names::FAST_LANE,
            names::REQUESTS
        )),
        "x-death decoded: {shown}"
    );
    assert!(
        !shown.contains("FieldTable") && !shown.contains("LongString"),
        "{shown}"
    );
    for line in [
        "app_id: orders-team",
        "message_id: msg-42",
        "correlation_id: corr-7",
        "timestamp: 2027-01-15T08:00:00+00:00",
        "content_type: application/json",
        "delivery_mode: 2 (persistent)",
        "type: invalidation",
    ] {
        assert!(shown.contains(line), "{line} in {shown}");
    }
    assert!(
        shown.contains("\"parameterIds\": [1, 2, 3, 4, 5, … 995 more]"),
        "{shown}"
    );
    assert!(shown.lines().count() < 80, "1,000 ids on one line: {shown}");
    assert!(
        shown.contains("not JSON") && shown.contains(r#"{"a": "b\"c"#),
        "text that is not JSON is shown as received: {shown}"
    );
    assert!(
        shown.contains("11 bytes, not UTF-8") && shown.contains("ff fe 6e 6f"),
        "bytes as hex: {shown}"
    );
    let full = text(
        &fleet(&env, &["dlq", "peek", &dlq, "--limit", "1", "--full"])
            .await
            .stdout,
    );
    assert!(full.contains("999, 1000]"), "{full}");

    let out = fleet(&env, &["dlq", "peek", &dlq, "--json"]).await;
    let docs: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(docs[0]["properties"]["appId"], "orders-team");
    assert_eq!(
        docs[0]["properties"]["timestamp"],
        "2027-01-15T08:00:00+00:00"
    );
    assert_eq!(docs[0]["deaths"][0]["reason"], "rejected");
    assert_eq!(docs[0]["deaths"][0]["routingKeys"][0], "price");
    assert_eq!(
        docs[0]["body"]["parameterIds"].as_array().unwrap().len(),
        1000
    );
    assert_eq!(docs[1]["bodyEncoding"], "text");
    assert_eq!(docs[1]["body"], r#"{"a": "b\"c"#);
    assert_eq!(docs[2]["bodyEncoding"], "hex");
    assert_eq!(docs[2]["body"], "fffe6e6f74206a736f6e0a");
    assert_eq!(env.depth(&dlq).await, 3, "peek takes nothing");
}

#[tokio::test]
async fn replay_filters_refuse_unknown_keys_match_ids_and_keys_regardless_of_case_and_summarise() {
    let env = TestEnv::new().await;
    let dlq = names::dlq(names::FAST_LANE);
    for i in 0..30 {
        let (ty, key) = if i % 2 == 0 {
            ("PRICE", "price")
        } else {
            ("STOCK", "stock")
        };
        put(
            &env,
            names::DLX,
            names::FAST_LANE,
            &request(i, ty, key),
            dead_props("forbidden_field", key),
        )
        .await;
    }
    // A typo is an error that names the key to use; nothing moves.
    let out = fleet(&env, &["dlq", "replay", &dlq, "--filter", "typ=PRICE"]).await;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("unknown filter key `typ`; did you mean `type`? valid keys: type, class, reason, request-id, routing-key"),
        "{err}"
    );
    assert_eq!(env.depth(&dlq).await, 30);

    // Over 20 messages: a summary by outcome, class and destination, not 30 lines.
    let out = fleet(
        &env,
        &[
            "dlq",
            "replay",
            &dlq,
            "--filter",
            "class=FORBIDDEN_FIELD",
            "--dry-run",
        ],
    )
    .await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains("would move 30"),
        "classes match regardless of case: {stdout}"
    );
    assert!(
        stdout
            .contains("15 × would move → \"invalidation.requests\" / \"price\" [forbidden_field]")
            && stdout.contains(
                "15 × would move → \"invalidation.requests\" / \"stock\" [forbidden_field]"
            ),
        "{stdout}"
    );
    assert!(stdout.lines().count() < 10, "{stdout}");
    let verbose = fleet(&env, &["dlq", "replay", &dlq, "--dry-run", "--verbose"]).await;
    assert!(text(&verbose.stdout).lines().count() >= 30);

    // One request by id, then the stock ones by routing key (in capitals).
    let out = fleet_with(
        &env,
        &[("FLEET_OPERATOR", "alice")],
        &["dlq", "replay", &dlq, "--filter", "request-id=req-7"],
    )
    .await;
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("moved 1, kept 29"),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    let out = fleet(
        &env,
        &[
            "dlq",
            "replay",
            &dlq,
            "--filter",
            "routing-key=STOCK",
            "--operator",
            "bob",
        ],
    )
    .await;
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("moved 14, kept 15"),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    let moved = env.take(names::FAST_LANE, 0, Duration::ZERO).await;
    assert_eq!(
        seqs(&moved),
        [7, 1, 3, 5, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29]
    );

    let pool = env.db().await;
    let ops: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT operator, filter FROM replays WHERE NOT dry_run ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        ops,
        [
            ("alice".to_string(), Some("request-id=req-7".to_string())),
            ("bob".to_string(), Some("routing-key=STOCK".to_string()))
        ]
    );
    let dry: String = sqlx::query_scalar("SELECT operator FROM replays WHERE dry_run LIMIT 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(!dry.is_empty() && !dry.starts_with("uid "), "{dry}");
}

/// Parks `body` as the retry handler does: a row, then the message.
async fn park(env: &TestEnv, pool: &sqlx::PgPool, seq: usize, ty: &str) {
    let key = ty.to_lowercase();
    let body = request(seq, ty, &key);
    db::park(
        pool,
        &Parked {
            message_key: format!("park-{seq}"),
            reason: "retry_window_exceeded: 3h".into(),
            original_exchange: names::REQUESTS.into(),
            original_routing_key: key.clone(),
            attempts: 13,
            invalidation_time: None,
            headers: serde_json::json!({}),
            body: body.clone(),
        },
    )
    .await
    .unwrap();
    let mut h = FieldTable::default();
    h.insert(headers::ORIGINAL_EXCHANGE.into(), s(names::REQUESTS));
    h.insert(headers::ORIGINAL_ROUTING_KEY.into(), s(&key));
    h.insert(headers::ERROR_CLASS.into(), s("search_unavailable"));
    h.insert(headers::PARK_REASON.into(), s("retry_window_exceeded: 3h"));
    put(
        env,
        names::PARKED_EXCHANGE,
        "",
        &body,
        BasicProperties::default().with_headers(h),
    )
    .await;
}

#[tokio::test]
async fn purge_takes_filters_keeps_the_rest_in_order_and_is_recorded_with_the_parked_rows() {
    let env = TestEnv::new().await;
    let pool = env.db().await;
    for i in 0..8 {
        park(&env, &pool, i, if i % 2 == 0 { "PRICE" } else { "STOCK" }).await;
    }
    eventually(Duration::from_secs(5), "8 parked", || async {
        (env.depth(names::PARKED).await == 8).then_some(())
    })
    .await;
    let out = fleet_with(
        &env,
        &[("FLEET_OPERATOR", "carol")],
        &[
            "dlq",
            "purge",
            names::PARKED,
            "--filter",
            "type=stock",
            "--yes",
        ],
    )
    .await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains("Purged 4 message(s)") && stdout.contains("kept 4"),
        "{stdout}"
    );
    // A replay of one price message marks its row too.
    let out = fleet(
        &env,
        &[
            "dlq",
            "replay",
            names::PARKED,
            "--filter",
            "request-id=req-2",
        ],
    )
    .await;
    assert!(
        text(&out.stdout).contains("moved 1"),
        "{}",
        text(&out.stdout)
    );
    let left = env.take(names::PARKED, 0, Duration::ZERO).await;
    assert_eq!(seqs(&left), [0, 4, 6], "the rest, in order");

    let (operator, queue, filter, purged, kept, state): (
        String,
        String,
        Option<String>,
        i32,
        i32,
        String,
    ) = sqlx::query_as("SELECT operator, queue, filter, purged, kept, state FROM purges")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        (
            operator.as_str(),
            queue.as_str(),
            filter.as_deref(),
            purged,
            kept,
            state.as_str()
        ),
        ("carol", names::PARKED, Some("type=stock"), 4, 4, "finished")
    );
    let rows: Vec<(String, bool, bool)> = sqlx::query_as(
        "SELECT message_key, purged_at IS NOT NULL AND purge_id IS NOT NULL, \
                replayed_at IS NOT NULL AND replay_id IS NOT NULL
         FROM parked_messages ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let purged: Vec<&str> = rows.iter().filter(|r| r.1).map(|r| r.0.as_str()).collect();
    let replayed: Vec<&str> = rows.iter().filter(|r| r.2).map(|r| r.0.as_str()).collect();
    assert_eq!(purged, ["park-1", "park-3", "park-5", "park-7"]);
    assert_eq!(replayed, ["park-2"]);
}

#[tokio::test]
async fn status_marks_a_lane_without_its_consumer_shows_dependencies_counts_processes_and_fails() {
    let env = TestEnv::new().await;
    let running = env.start(&[WorkerKind::Ingest]);
    env.consumed("source.price").await;
    // Work waits on the fast lane and nobody consumes it.
    env.publish(names::REQUESTS, "price", &request(1, "PRICE", "price"))
        .await;

    // The fleet's tables exist (the workers that use the database make them).
    let _ = env.db().await;
    // The management API lists a new connection within its statistics interval.
    let doc: Value = eventually(
        Duration::from_secs(30),
        "the worker's connections listed",
        || async {
            let out = fleet(&env, &["status", "--json"]).await;
            assert_eq!(
                out.status.code(),
                Some(2),
                "unhealthy: {}",
                text(&out.stderr)
            );
            let doc: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
            // Its consumers come with the channel statistics, which can
            // lag the connection by an interval.
            let procs = doc["processes"].as_array()?;
            (!procs.is_empty() && procs[0]["consumers"].as_u64()? >= 1).then_some(doc)
        },
    )
    .await;
    assert_eq!(doc["healthy"], false);
    let dep = |name: &str| {
        doc["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {doc}"))
    };
    for name in ["broker", "management", "postgresql", "redis"] {
        assert_eq!(dep(name)["ok"], true, "{name}: {doc}");
        assert!(dep(name)["latency_ms"].is_u64());
    }
    assert!(dep("search")["ok"].is_boolean());
    let fast = doc["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == names::FAST_LANE)
        .unwrap();
    assert_eq!(
        (fast["ready"].as_u64(), fast["consumers"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(fast["expects"], "dispatcher");
    let problems = doc["problems"].to_string();
    assert!(
        problems.contains("have no consumer") && problems.contains(names::FAST_LANE),
        "{problems}"
    );
    let processes = doc["processes"].as_array().unwrap();
    assert_eq!(
        processes.len(),
        1,
        "one process, however many connections: {doc}"
    );
    assert!(processes[0]["workers"].to_string().contains("ingest"));
    assert!(processes[0]["consumers"].as_u64().unwrap() >= 1);

    let out = fleet(&env, &["status"]).await;
    let shown = text(&out.stdout);
    assert_eq!(out.status.code(), Some(2));
    assert!(shown.contains("⚠ NONE (expects dispatcher)"), "{shown}");
    assert!(shown.contains("Worker processes: 1"), "{shown}");
    assert!(shown.contains("UNHEALTHY"), "{shown}");

    // `dlq list --json`: one object per queue and line.
    let out = fleet(&env, &["dlq", "list", "--all", "--json"]).await;
    let rows: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(rows
        .iter()
        .any(|r| r["queue"] == names::PARKED && r["messages"] == 0));
    running.stop().await.unwrap();

    // A vhost that does not exist: one error with the fix, not a row per queue.
    let url = env.config.amqp.url.rsplit_once('/').unwrap().0.to_string() + "/no-such-vhost-14";
    let out = fleet_with(&env, &[("AMQP_URL", url.as_str())], &["status"]).await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(text(&out.stdout).is_empty(), "{}", text(&out.stdout));
    assert!(
        err.contains("\"no-such-vhost-14\" does not exist")
            && err.contains("rabbitmqctl add_vhost"),
        "{err}"
    );
    assert!(err.lines().count() <= 2, "{err}");
}

#[tokio::test]
async fn start_up_errors_give_the_fix_that_fits_the_cause() {
    let env = TestEnv::new().await;
    let base = env.config.amqp.url.rsplit_once('/').unwrap().0.to_string();
    // A vhost that does not exist.
    let url = format!("{base}/no-such-vhost-14");
    let out = fleet_with(&env, &[("AMQP_URL", url.as_str())], &["dlq", "list"]).await;
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("vhost \"no-such-vhost-14\" does not exist")
            && err.contains("rabbitmqctl add_vhost no-such-vhost-14")
            && err.contains("fleet topology apply")
            && !err.contains("rabbitmq-server -detached"),
        "{err}"
    );
    // Wrong credentials.
    let wrong = env.config.amqp.url.replacen("://", "://nobody14:wrong@", 1);
    let wrong = match wrong.split_once('@') {
        // The URL had credentials already: keep only ours.
        Some((ours, rest)) if rest.contains('@') => {
            format!("{ours}@{}", rest.split_once('@').unwrap().1)
        }
        _ => wrong,
    };
    let out = fleet_with(&env, &[("AMQP_URL", wrong.as_str())], &["dlq", "list"]).await;
    let err = text(&out.stderr);
    assert!(
        err.contains("refused the login of user \"nobody14\"")
            && !err.contains("rabbitmq-server -detached"),
        "{err}"
    );
    // Nothing listening: the start hint stays.
    let refused = refused_url().replace("http://", "amqp://");
    let out = fleet_with(&env, &[("AMQP_URL", refused.as_str())], &["dlq", "list"]).await;
    assert!(
        text(&out.stderr).contains("rabbitmq-server -detached"),
        "{}",
        text(&out.stderr)
    );
    // A database that does not exist.
    let db_url = env
        .config
        .database
        .url
        .rsplit_once('/')
        .unwrap()
        .0
        .to_string()
        + "/no_such_db_14";
    let out = fleet_with(
        &env,
        &[("DATABASE_URL", db_url.as_str())],
        &["jobs", "list"],
    )
    .await;
    let err = text(&out.stderr);
    assert!(
        err.contains("database \"no_such_db_14\" does not exist")
            && err.contains("createdb")
            && !err.contains("pg_ctlcluster"),
        "{err}"
    );
    // An exchange that does not exist on replay: said so, with the fix.
    let dlq = names::dlq(names::FAST_LANE);
    put(
        &env,
        names::DLX,
        names::FAST_LANE,
        &request(1, "PRICE", "price"),
        dead_props("forbidden_field", "price"),
    )
    .await;
    let out = fleet(&env, &["dlq", "replay", &dlq, "--to", "no.such.exchange"]).await;
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("exchange \"no.such.exchange\" (from --to) does not exist")
            && err.contains("fleet topology apply")
            && !err.contains("broker unavailable"),
        "{err}"
    );
    // … and as a recorded origin (the broker's 404 on publish).
    let mut props = dead_props("forbidden_field", "price");
    if let Some(h) = props.headers().clone() {
        let mut h = h;
        h.insert(headers::ORIGINAL_EXCHANGE.into(), s("gone.exchange"));
        props = props.with_headers(h);
    }
    put(
        &env,
        names::DLX,
        names::FAST_LANE,
        &request(2, "PRICE", "price"),
        props,
    )
    .await;
    let out = fleet(
        &env,
        &["dlq", "replay", &dlq, "--filter", "request-id=req-2"],
    )
    .await;
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("exchange \"gone.exchange\" does not exist")
            && !stdout.contains("broker unavailable"),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert_eq!(env.depth(&dlq).await, 2, "nothing lost");
}

#[tokio::test]
async fn topology_conflicts_name_the_configuration_key_and_collapse_by_kind() {
    let env = TestEnv::new().await;
    let out = fleet_with(&env, &[("FLEET_RETRY_DELAY", "3s")], &["topology", "plan"]).await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains("x-message-ttl = 2000") || stdout.contains("x-message-ttl ="),
        "{stdout}"
    );
    assert!(
        stdout.contains("(from configuration key retry.delay, FLEET_RETRY_DELAY)")
            && stdout.contains(
                "to keep the existing queues, run every worker and command with FLEET_RETRY_DELAY="
            )
            && stdout.contains("fleet dlq replay QUEUE --to :QUEUE.migrate"),
        "{stdout}"
    );
    let out = fleet_with(
        &env,
        &[("FLEET_TOPOLOGY_QUEUE_TYPE", "quorum")],
        &["topology", "plan"],
    )
    .await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    let conflicts = stdout
        .lines()
        .filter(|l| l.starts_with("! conflict"))
        .count();
    assert!(
        (1..=10).contains(&conflicts),
        "collapsed by kind ({conflicts} lines): {stdout}"
    );
    assert!(
        stdout.contains("263 queue(s) exist with x-queue-type = \"classic\", but the topology (from configuration key topology.queue_type, FLEET_TOPOLOGY_QUEUE_TYPE) wants \"quorum\"")
            && stdout.contains("FLEET_TOPOLOGY_QUEUE_TYPE=classic"),
        "{stdout}"
    );
}
