//! `fleet dlq`: list, peek, replay and purge against the real broker and database.
//!
//! Messages are put in a dead-letter queue the way the runtime does it:
//! published to the dead-letter exchange with routing key = the source queue,
//! with the error headers.

use std::process::{Output, Stdio};
use std::time::Duration;

use fleet_shared::broker::headers;
use fleet_shared::lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions};
use fleet_shared::lapin::types::{AMQPValue, FieldTable};
use fleet_shared::lapin::BasicProperties;
use fleet_shared::runtime::{self, Incoming};
use fleet_shared::topology::names;
use serde_json::Value;

use crate::common::*;

/// The dead-letter queue of the fast lane, where every test puts its messages.
fn fast_dlq() -> String {
    names::dlq(names::FAST_LANE)
}

/// Properties of a dead letter: error class and message, time, and the origin when given.
fn dead_props(class: &str, origin: Option<(&str, &str)>, attempts: Option<i64>) -> BasicProperties {
    let mut h = FieldTable::default();
    let text = |s: &str| AMQPValue::LongString(s.into());
    h.insert(headers::ERROR_CLASS.into(), text(class));
    h.insert(
        headers::ERROR_MESSAGE.into(),
        text(&format!("{class}: something about it")),
    );
    h.insert(headers::ERROR_WORKER.into(), text("dispatcher@test"));
    h.insert(
        headers::ERROR_TIME.into(),
        text(&(chrono::Utc::now() - chrono::Duration::minutes(5)).to_rfc3339()),
    );
    h.insert(headers::ORIGINAL_QUEUE.into(), text(names::FAST_LANE));
    if let Some((exchange, key)) = origin {
        h.insert(headers::ORIGINAL_EXCHANGE.into(), text(exchange));
        h.insert(headers::ORIGINAL_ROUTING_KEY.into(), text(key));
    }
    if let Some(a) = attempts {
        h.insert(headers::ATTEMPTS.into(), AMQPValue::LongLongInt(a));
        h.insert(
            headers::FIRST_FAILURE.into(),
            AMQPValue::LongLongInt(1_700_000_000_000),
        );
    }
    BasicProperties::default()
        .with_headers(h)
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
}

/// A request body numbered `seq`, of type `ty`.
fn request(seq: usize, ty: &str) -> Vec<u8> {
    format!(
        r#"{{"seq":{seq},"parameterIds":[{seq}],"parameterName":"id","invalidationType":"{ty}","invalidationTime":1700000000000}}"#
    )
    .into_bytes()
}

/// Dead-letters every message as if it failed on the fast lane; one channel, each confirmed.
async fn dead_letter_all(env: &TestEnv, messages: &[(Vec<u8>, BasicProperties)]) {
    let (_conn, ch) = env.channel().await;
    for (body, props) in messages {
        let confirm = ch
            .basic_publish(
                names::DLX.into(),
                names::FAST_LANE.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                props.clone(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack(), "dead letter not confirmed");
        assert!(confirm.take_message().is_none(), "dead letter unroutable");
    }
}

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

/// Everything left in a queue, in order (drains it: call at the end).
async fn drain(env: &TestEnv, queue: &str) -> Vec<Taken> {
    env.take(queue, 0, Duration::ZERO).await
}

fn seq(t: &Taken) -> i64 {
    t.json()["seq"].as_i64().expect("a numbered body")
}

/// Body and headers without the ones a replay adds: what "unchanged" means.
fn contents(ts: &[Taken]) -> Vec<(Vec<u8>, std::collections::BTreeMap<String, String>)> {
    ts.iter()
        .map(|t| (t.body.clone(), t.headers.clone()))
        .collect()
}

#[tokio::test]
async fn peek_shows_messages_and_leaves_the_queue_exactly_as_it_was() {
    let env = TestEnv::new().await;
    let mut messages: Vec<(Vec<u8>, BasicProperties)> = (0..20)
        .map(|i| {
            (
                request(i, "PRICE"),
                dead_props("forbidden_field", Some((names::REQUESTS, "price")), None),
            )
        })
        .collect();
    // Not JSON, not even UTF-8: shown escaped.
    messages.insert(
        3,
        (
            b"\xff\xfenot json\n".to_vec(),
            dead_props("malformed_json", None, None),
        ),
    );
    dead_letter_all(&env, &messages).await;
    let queue = fast_dlq();

    // A partial peek (the head only), then one past the end, then text output.
    let out = fleet(&env, &["dlq", "peek", &queue, "--limit", "5", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let docs: Vec<Value> = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
    assert_eq!(docs.len(), 5);
    assert_eq!(docs[0]["body"]["seq"], 0);
    assert_eq!(docs[0]["headers"][headers::ERROR_CLASS], "forbidden_field");
    assert_eq!(docs[0]["headers"][headers::ORIGINAL_ROUTING_KEY], "price");
    assert_eq!(docs[3]["bodyIsJson"], false);
    assert_eq!(
        docs[3]["body"], "fffe6e6f74206a736f6e0a",
        "bytes that are not UTF-8, as hex"
    );
    assert_eq!(docs[3]["bodyEncoding"], "hex");
    assert_eq!(docs[4]["body"]["seq"], 3);

    let out = fleet(&env, &["dlq", "peek", &queue, "--limit", "100", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let docs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(docs.len(), 21, "every message, in order");

    let out = fleet(&env, &["dlq", "peek", &queue, "--limit", "2"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains("x-error-class: forbidden_field"), "{shown}");
    assert!(
        shown.contains("\"invalidationType\": \"PRICE\""),
        "pretty JSON: {shown}"
    );
    assert!(shown.contains("nothing was removed"), "{shown}");

    assert_eq!(env.depth(&queue).await, 21);
    let after = drain(&env, &queue).await;
    let bodies: Vec<Vec<u8>> = after.iter().map(|t| t.body.clone()).collect();
    let sent: Vec<Vec<u8>> = messages.iter().map(|(b, _)| b.clone()).collect();
    assert_eq!(
        bodies, sent,
        "same messages in the same order after three peeks"
    );
    assert_eq!(header(&after[0], headers::ERROR_CLASS), "forbidden_field");
}

#[tokio::test]
async fn a_filtered_replay_moves_exactly_the_matching_messages_and_keeps_the_rest_in_order() {
    let env = TestEnv::new().await;
    let mut messages = Vec::new();
    for i in 0..30 {
        let (ty, class) = match i % 3 {
            0 => ("PRICE", "search_unavailable"),
            1 => ("STOCK", "search_unavailable"),
            _ => ("PRICE", "forbidden_field"),
        };
        let key = if ty == "PRICE" { "price" } else { "stock" };
        messages.push((
            request(i, ty),
            dead_props(class, Some((names::REQUESTS, key)), Some(2)),
        ));
    }
    // Matches the filter but has no origin: kept and reported.
    messages.insert(
        7,
        (
            request(100, "PRICE"),
            dead_props("search_unavailable", None, None),
        ),
    );
    dead_letter_all(&env, &messages).await;
    let queue = fast_dlq();

    let out = fleet(
        &env,
        &[
            "dlq",
            "replay",
            &queue,
            "--filter",
            "type=PRICE",
            "--filter",
            "class=search_unavailable",
        ],
    )
    .await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("moved 10, kept 21"), "{stdout}");
    assert!(stdout.contains("1 without origin"), "{stdout}");
    assert!(stdout.contains("no x-original-exchange header"), "{stdout}");

    // The matching ones are back on the fast lane, in their order, with the replay stamped.
    let moved = drain(&env, names::FAST_LANE).await;
    let moved_seqs: Vec<i64> = moved.iter().map(seq).collect();
    let expected: Vec<i64> = (0..30).filter(|i| i % 3 == 0).collect();
    assert_eq!(moved_seqs, expected);
    for m in &moved {
        assert_eq!(m.routing_key, "price");
        assert_eq!(m.exchange, names::REQUESTS);
        assert_eq!(header(m, headers::REPLAY_COUNT), "1");
        assert!(!header(m, headers::REPLAYED_AT).is_empty());
        assert_eq!(
            header(m, headers::ATTEMPTS),
            "2",
            "counters kept by default"
        );
        assert_eq!(
            m.body,
            request(seq(m) as usize, "PRICE"),
            "body byte for byte"
        );
    }
    // The rest stayed, in the original order, untouched.
    let left = drain(&env, &queue).await;
    let left_seqs: Vec<i64> = left.iter().map(seq).collect();
    let mut expected_left: Vec<i64> = (0..30).filter(|i| i % 3 != 0).collect();
    expected_left.insert(expected_left.iter().position(|&s| s > 6).unwrap(), 100);
    assert_eq!(left_seqs, expected_left);
    assert!(left
        .iter()
        .all(|m| header(m, headers::REPLAY_COUNT).is_empty()));

    // And the run is on record.
    let db = env.db().await;
    let (target, filter, moved_n, kept_n, dry): (String, Option<String>, i32, i32, bool) =
        sqlx::query_as("SELECT target, filter, moved, kept, dry_run FROM replays WHERE queue = $1")
            .bind(&queue)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(target, "origin");
    assert_eq!(
        filter.as_deref(),
        Some("type=PRICE class=search_unavailable")
    );
    assert_eq!((moved_n, kept_n, dry), (10, 21, false));
}

#[tokio::test]
async fn replay_with_limit_reset_retries_and_to_is_recorded() {
    let env = TestEnv::new().await;
    let messages: Vec<_> = (0..6)
        .map(|i| {
            (
                request(i, "STOCK"),
                dead_props(
                    "search_unavailable",
                    Some((names::REQUESTS, "stock")),
                    Some(5),
                ),
            )
        })
        .collect();
    dead_letter_all(&env, &messages).await;
    let queue = fast_dlq();
    // Straight into the bulk lane through the default exchange, two at most, fresh counters.
    let to = format!(":{}", names::BULK_LANE);
    let out = fleet(
        &env,
        &[
            "dlq",
            "replay",
            &queue,
            "--to",
            &to,
            "--limit",
            "2",
            "--reset-retries",
        ],
    )
    .await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let id: i64 = stdout
        .rsplit("replay record #")
        .next()
        .and_then(|s| s.trim().trim_end_matches('.').parse().ok())
        .unwrap_or_else(|| panic!("summary names the record: {stdout}"));

    let moved = drain(&env, names::BULK_LANE).await;
    assert_eq!(moved.iter().map(seq).collect::<Vec<_>>(), vec![0, 1]);
    for m in &moved {
        assert!(header(m, headers::ATTEMPTS).is_empty(), "{:?}", m.headers);
        assert!(header(m, headers::FIRST_FAILURE).is_empty());
        assert_eq!(header(m, headers::REPLAY_COUNT), "1");
        assert_eq!(
            header(m, headers::ORIGINAL_EXCHANGE),
            names::REQUESTS,
            "history kept"
        );
        assert_eq!(m.json()["invalidationTime"], 1_700_000_000_000i64);
    }
    let left = drain(&env, &queue).await;
    assert_eq!(left.iter().map(seq).collect::<Vec<_>>(), vec![2, 3, 4, 5]);

    let db = env.db().await;
    let (q, target, moved_n, kept_n, dry, operator, host): (
        String,
        String,
        i32,
        i32,
        bool,
        String,
        String,
    ) = sqlx::query_as(
        "SELECT queue, target, moved, kept, dry_run, operator, host FROM replays WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(q, queue);
    assert_eq!(target, to);
    assert_eq!((moved_n, kept_n, dry), (2, 4, false));
    assert!(!operator.is_empty() && !host.is_empty());

    // Replaying a message that was replayed before counts up; an origin of
    // "" is the default exchange (the routing key names the queue).
    let _ = drain(&env, &queue).await;
    let mut h = FieldTable::default();
    h.insert(
        headers::ORIGINAL_EXCHANGE.into(),
        AMQPValue::LongString("".into()),
    );
    h.insert(
        headers::ORIGINAL_ROUTING_KEY.into(),
        AMQPValue::LongString(names::BULK_LANE.into()),
    );
    h.insert(headers::REPLAY_COUNT.into(), AMQPValue::LongLongInt(1));
    let again = (
        moved[0].body.clone(),
        BasicProperties::default().with_headers(h),
    );
    dead_letter_all(&env, &[again]).await;
    let out = fleet(&env, &["dlq", "replay", &queue]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let back = drain(&env, names::BULK_LANE).await;
    assert_eq!(back.len(), 1);
    assert_eq!(header(&back[0], headers::REPLAY_COUNT), "2");
    assert_eq!(env.depth(&queue).await, 0);
}

#[tokio::test]
async fn a_dry_run_changes_nothing_and_is_recorded() {
    let env = TestEnv::new().await;
    let messages: Vec<_> = (0..12)
        .map(|i| {
            let ty = if i % 2 == 0 { "PRICE" } else { "STOCK" };
            (
                request(i, ty),
                dead_props(
                    "search_unavailable",
                    Some((names::REQUESTS, "price")),
                    Some(1),
                ),
            )
        })
        .collect();
    dead_letter_all(&env, &messages).await;
    let queue = fast_dlq();
    let out = fleet(
        &env,
        &[
            "dlq",
            "replay",
            &queue,
            "--filter",
            "type=STOCK",
            "--dry-run",
        ],
    )
    .await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("would move 6, would keep 6"), "{stdout}");
    assert!(stdout.contains("dry run: nothing changed"), "{stdout}");
    // Exactly what would move, one line each.
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("would move #"))
        .collect();
    assert_eq!(lines.len(), 6, "{stdout}");
    assert!(
        lines[0].starts_with("would move #2 → \"invalidation.requests\" / \"price\""),
        "{stdout}"
    );

    assert_eq!(env.depth(names::FAST_LANE).await, 0, "nothing published");
    let after = drain(&env, &queue).await;
    let before: Vec<_> = messages.iter().map(|(b, _)| b.clone()).collect();
    assert_eq!(
        after.iter().map(|t| t.body.clone()).collect::<Vec<_>>(),
        before
    );
    assert!(contents(&after)
        .iter()
        .all(|(_, h)| !h.contains_key(headers::REPLAY_COUNT) && h[headers::ATTEMPTS] == "1"));

    let db = env.db().await;
    let (moved_n, kept_n, dry, filter): (i32, i32, bool, Option<String>) =
        sqlx::query_as("SELECT moved, kept, dry_run, filter FROM replays")
            .fetch_one(&db)
            .await
            .unwrap();
    // The record says what the run would have done.
    assert_eq!((moved_n, kept_n, dry), (6, 6, true));
    assert_eq!(filter.as_deref(), Some("type=STOCK"));
}

#[tokio::test]
async fn a_replay_killed_midway_loses_nothing() {
    let env = TestEnv::new().await;
    const N: usize = 4000;
    let messages: Vec<_> = (0..N)
        .map(|i| {
            (
                request(i, "PRICE"),
                dead_props("search_unavailable", Some((names::REQUESTS, "price")), None),
            )
        })
        .collect();
    dead_letter_all(&env, &messages).await;
    let queue = fast_dlq();
    let mut child = tokio::process::Command::new(fleet_bin())
        .args(["dlq", "replay", &queue])
        .envs(env.env_vars())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    eventually(
        Duration::from_secs(60),
        "the replay to get going",
        || async { (env.depth(names::FAST_LANE).await >= 200).then_some(()) },
    )
    .await;
    child.kill().await.unwrap(); // SIGKILL: no clean-up of any kind
                                 // The broker returns the dead connection's unacked message.
    let total = eventually(
        Duration::from_secs(10),
        "every message accounted for",
        || async {
            let n = env.depth(names::FAST_LANE).await + env.depth(&queue).await;
            (n as usize >= N).then_some(n)
        },
    )
    .await;
    let moved = drain(&env, names::FAST_LANE).await;
    let left = drain(&env, &queue).await;
    assert!(
        !left.is_empty(),
        "the kill must land mid-replay for this test to mean anything"
    );
    assert!(total as usize <= N + 1, "{total} messages for {N}");
    let mut all: Vec<i64> = moved.iter().chain(left.iter()).map(seq).collect();
    all.sort();
    let duplicates = all.len() - {
        let mut d = all.clone();
        d.dedup();
        d.len()
    };
    all.dedup();
    assert_eq!(all, (0..N as i64).collect::<Vec<_>>(), "nothing lost");
    assert!(duplicates <= 1, "{duplicates} duplicates");
    // Moved ones went in order; the rest is still in order.
    let moved_seqs: Vec<i64> = moved.iter().map(seq).collect();
    assert!(moved_seqs.windows(2).all(|w| w[0] < w[1]), "moved in order");
    let left_seqs: Vec<i64> = left.iter().map(seq).collect();
    assert!(left_seqs.windows(2).all(|w| w[0] < w[1]), "rest in order");
}

#[tokio::test]
async fn purge_refuses_without_confirmation_and_only_empties_operator_queues() {
    let env = TestEnv::new().await;
    let messages: Vec<_> = (0..3)
        .map(|i| {
            (
                request(i, "PRICE"),
                dead_props("malformed_json", None, None),
            )
        })
        .collect();
    dead_letter_all(&env, &messages).await;
    env.publish(names::REQUESTS, "price", b"{}").await;
    let queue = fast_dlq();

    let out = fleet(&env, &["dlq", "purge", &queue]).await;
    assert!(!out.status.success(), "stdin is not a terminal: refuse");
    let err = text(&out.stderr);
    assert!(
        err.contains("not a terminal") && err.contains("--yes"),
        "{err}"
    );
    assert_eq!(env.depth(&queue).await, 3, "nothing purged");

    let out = fleet(&env, &["dlq", "purge", names::FAST_LANE, "--yes"]).await;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("only operator queues")
            && err.contains(names::PARKED)
            && err.contains(names::UNROUTABLE)
            && err.contains(&queue),
        "{err}"
    );
    assert_eq!(
        env.depth(names::FAST_LANE).await,
        1,
        "a lane is never purged"
    );

    let out = fleet(
        &env,
        &["dlq", "purge", "invalidation.request.fast.dlq", "--yes"],
    )
    .await;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("no queue invalidation.request.fast.dlq")
            && err.contains(&format!("did you mean {queue}?")),
        "{err}"
    );

    let out = fleet(&env, &["dlq", "purge", &queue, "--yes"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("Purged 3 message(s)"));
    assert_eq!(env.depth(&queue).await, 0);
}

#[tokio::test]
async fn list_shows_depth_age_and_top_reasons_without_taking_anything() {
    let env = TestEnv::new().await;
    let mut messages: Vec<_> = (0..4)
        .map(|i| {
            (
                request(i, "PRICE"),
                dead_props("malformed_json", Some((names::REQUESTS, "price")), None),
            )
        })
        .collect();
    messages.push((
        request(9, "PRICE"),
        dead_props("forbidden_field", None, None),
    ));
    dead_letter_all(&env, &messages).await;
    env.publish(names::REQUESTS, "refund", br#"{"seq": 1}"#)
        .await;
    let queue = fast_dlq();
    // No waiting: `list` counts with the broker's own numbers, not the
    // management API's statistics.
    let out = fleet(&env, &["dlq", "list"]).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let row = stdout
        .lines()
        .find(|l| l.contains(&queue))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(row.contains(" 5 "), "{row}");
    assert!(row.contains("malformed_json ×4"), "{row}");
    assert!(row.contains("forbidden_field ×1"), "{row}");
    assert!(
        row.contains("5m"),
        "age of the oldest (failed five minutes ago): {row}"
    );
    let unroutable = stdout
        .lines()
        .find(|l| l.contains(names::UNROUTABLE))
        .unwrap();
    assert!(
        unroutable.contains("routing key \"refund\""),
        "{unroutable}"
    );
    assert!(
        !stdout.contains(&names::dlq(names::BULK_LANE)),
        "empty queues hidden: {stdout}"
    );
    let out = fleet(&env, &["dlq", "list", "--all"]).await;
    assert!(text(&out.stdout).contains(&names::dlq(names::BULK_LANE)));

    let left = drain(&env, &queue).await;
    assert_eq!(
        left.iter().map(seq).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 9]
    );
}

#[tokio::test]
async fn list_counts_a_dead_letter_the_moment_it_lands() {
    let env = TestEnv::new().await;
    // A malformed request reaches the fast lane like any producer's ...
    env.publish(names::REQUESTS, "price", b"{not json").await;
    let ctx = fleet_workers::app::context(&std::sync::Arc::new(env.config.clone()), "dispatcher")
        .await
        .unwrap();
    let (_conn, ch) = env.channel().await;
    let got = ch
        .basic_get(names::FAST_LANE.into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("the request is in the fast lane");
    // ... and fails permanently: the runtime's own dead-letter path, then the ack.
    let msg = Incoming::new(names::FAST_LANE, got.delivery);
    runtime::dead_letter(&ctx, &msg, "malformed_json", "expected value at line 1")
        .await
        .unwrap();
    msg.delivery.ack(BasicAckOptions::default()).await.unwrap();

    // At once: no waiting for the management API's statistics to catch up.
    let out = fleet(&env, &["dlq", "list"]).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let queue = fast_dlq();
    let row = stdout
        .lines()
        .find(|l| l.contains(&queue))
        .unwrap_or_else(|| panic!("{queue} is not listed right after a dead letter:\n{stdout}"));
    // Table cells are separated by `│` at the edges and `┆` inside.
    let depth: u64 = row
        .split(['│', '┆'])
        .nth(2)
        .and_then(|cell| cell.trim().parse().ok())
        .unwrap_or_else(|| panic!("no depth in {row:?}"));
    assert!(depth >= 1, "{row}");
    assert!(row.contains("malformed_json ×1"), "{row}");
}

#[tokio::test]
async fn peek_and_a_filtered_replay_keep_the_order_of_a_quorum_queue() {
    let env = TestEnv::with(|c| c.topology.queue_type = Some("quorum".into())).await;
    let messages: Vec<_> = (0..10)
        .map(|i| {
            let ty = if i % 2 == 0 { "PRICE" } else { "STOCK" };
            (
                request(i, ty),
                dead_props("search_unavailable", Some((names::REQUESTS, "price")), None),
            )
        })
        .collect();
    dead_letter_all(&env, &messages).await;
    let queue = fast_dlq();
    let out = fleet(&env, &["dlq", "peek", &queue, "--limit", "3", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let docs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(docs.len(), 3);
    assert!(
        text(&out.stderr).contains("quorum queue"),
        "the delivery-limit note"
    );
    let out = fleet(&env, &["dlq", "replay", &queue, "--filter", "type=STOCK"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let moved = drain(&env, names::FAST_LANE).await;
    assert_eq!(
        moved.iter().map(seq).collect::<Vec<_>>(),
        vec![1, 3, 5, 7, 9]
    );
    let left = drain(&env, &queue).await;
    assert_eq!(
        left.iter().map(seq).collect::<Vec<_>>(),
        vec![0, 2, 4, 6, 8]
    );
}
