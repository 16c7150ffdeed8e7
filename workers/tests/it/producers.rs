//! The producer guide's publishers, run against the real broker: what the
//! README tells a producer team to do works, and what it warns about fails
//! the way it says.

use std::time::Duration;

use fleet_shared::topology::names;
use fleet_workers::app::WorkerKind;

use crate::common::*;

/// The README's Python publisher (`examples/producers/publish.py`).
fn python_publisher() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/producers/publish.py")
}

/// `AMQP_URL` of the sandbox, as a producer would be given it.
fn amqp_url(env: &TestEnv) -> String {
    env.config.amqp.url.clone()
}

#[tokio::test]
async fn the_python_publisher_of_the_producer_guide_gets_its_request_processed() {
    let env = TestEnv::with_catalogue(|_| {}).await;
    let fleet = env.start(&[WorkerKind::Dispatcher]);
    let out = tokio::process::Command::new("python3")
        .arg(python_publisher())
        .args(["PRICE", "brand.id", "40", "trTR", "py-producer-1"])
        .env("AMQP_URL", amqp_url(&env))
        .output()
        .await
        .expect("python3");
    assert!(
        out.status.success(),
        "publish.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "py-producer-1");
    let expected = expected_ids(|d| d.brand.id == 40);
    let (ids, batches) = env
        .collect_ids(
            "productcontent_price_tr_tr",
            expected.len(),
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(ids, expected);
    assert!(batches.iter().all(|b| b.request_id == "py-producer-1"));
    fleet.stop().await.unwrap();
}

#[tokio::test]
async fn declaring_the_request_exchange_without_its_arguments_fails_as_the_guide_warns() {
    let env = TestEnv::new().await;
    // What a kombu/pika producer does by default: declare the exchange it
    // publishes to, without the topology's alternate-exchange argument.
    let script = r#"
import os, sys, pika
conn = pika.BlockingConnection(pika.URLParameters(os.environ["AMQP_URL"]))
ch = conn.channel()
try:
    ch.exchange_declare("invalidation.requests", exchange_type="topic", durable=True)
except pika.exceptions.ChannelClosedByBroker as e:
    print(e.reply_code, e.reply_text)
    sys.exit(0)
print("declared")
"#;
    let out = tokio::process::Command::new("python3")
        .args(["-c", script])
        .env("AMQP_URL", amqp_url(&env))
        .output()
        .await
        .expect("python3");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("406") && said.contains("alternate-exchange"),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nothing changed: the exchange still has its alternate exchange.
    let unroutable =
        br#"{"parameterIds": [1], "parameterName": "id", "invalidationType": "PRICE"}"#;
    env.publish(names::REQUESTS, "no-such-type", unroutable)
        .await;
    let caught = env
        .take(names::UNROUTABLE, 1, Duration::from_secs(10))
        .await;
    assert_eq!(caught.len(), 1);
}

/// `fleet publish` with the given arguments in the sandbox: (success, stdout, stderr).
async fn fleet_publish(env: &TestEnv, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(fleet_bin())
        .arg("publish")
        .args(args)
        .envs(env.env_vars())
        .output()
        .await
        .expect("fleet publish");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `text` without serde's position suffixes (" at line L column C"): they
/// depend on the body's layout, not on what is wrong with it.
fn without_position(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(" at line ") {
        out.push_str(&rest[..at]);
        let after = &rest[at + " at line ".len()..];
        let line_end = after
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(after.len());
        let tail = &after[line_end..];
        match tail.strip_prefix(" column ") {
            Some(col) if line_end > 0 => {
                let col_end = col.find(|c: char| !c.is_ascii_digit()).unwrap_or(col.len());
                rest = &col[col_end..];
            }
            _ => {
                out.push_str(" at line ");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[test]
fn serde_positions_are_left_out_of_compared_reasons() {
    assert_eq!(
        without_position("unknown variant `price`, expected one of `PRICE` at line 1 column 90"),
        "unknown variant `price`, expected one of `PRICE`"
    );
    assert_eq!(
        without_position("a at line 2 column 3; b at line x"),
        "a; b at line x"
    );
}

#[tokio::test]
async fn the_cli_refuses_exactly_what_the_dispatcher_dead_letters_with_the_same_reason() {
    let env = TestEnv::new().await;
    let fleet = env.start(&[WorkerKind::Dispatcher]);
    env.consumed(names::FAST_LANE).await;
    // What the dispatcher makes of the same requests sent as bodies.
    let bodies: [&[u8]; 3] = [
        br#"{"parameterIds": [1], "parameterName": "brand.id", "invalidationType": "price"}"#,
        br#"{"parameterIds": [1], "parameterName": "price.amount", "invalidationType": "PRICE"}"#,
        br#"{"parameterIds": [], "parameterName": "id", "invalidationType": "PRICE"}"#,
    ];
    for body in bodies {
        env.publish(names::REQUESTS, "price", body).await;
    }
    let dead = env
        .take(&names::dlq(names::FAST_LANE), 3, Duration::from_secs(20))
        .await;
    assert_eq!(dead.len(), 3);
    let reason = |body: &[u8]| {
        let d = dead.iter().find(|d| d.body == body).expect("dead-lettered");
        (header(d, "x-error-class"), header(d, "x-error-message"))
    };
    let cases: [(&[&str], &[u8], &str); 3] = [
        (
            &["--type", "price", "--param", "brand.id", "--ids", "1"],
            bodies[0],
            "unknown_type",
        ),
        (
            &["--type", "PRICE", "--param", "price.amount", "--ids", "1"],
            bodies[1],
            "forbidden_field",
        ),
        (
            &["--json", std::str::from_utf8(bodies[2]).unwrap()],
            bodies[2],
            "empty_ids",
        ),
    ];
    for (args, body, expected) in cases {
        let (ok, stdout, stderr) = fleet_publish(&env, args).await;
        let (class, message) = reason(body);
        assert_eq!(class, expected, "{message}");
        assert!(!ok, "{args:?} was accepted: {stdout}");
        assert!(
            stderr.contains(&format!("{class}: ")) && stderr.contains("nothing was sent"),
            "{args:?}: {stderr}"
        );
        // The same reason, except where it names a derived request id, and
        // where serde says where in the body it stopped ("at line 1 column
        // N"): the CLI lays the body out its own way.
        if class != "invalid_message" {
            let message = without_position(&message);
            assert!(
                without_position(&stderr).contains(&message),
                "{args:?}: {stderr} lacks {message}"
            );
        }
    }
    let (_, _, stderr) = fleet_publish(&env, &["--type", "price", "--ids", "1"]).await;
    assert!(stderr.contains("write --type PRICE"), "{stderr}");
    // Nothing was sent by the refused commands.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.depth(&names::dlq(names::FAST_LANE)).await, 0);
    assert_eq!(env.depth(names::UNROUTABLE).await, 0);
    // What the dispatcher accepts, the CLI sends.
    let (ok, stdout, stderr) = fleet_publish(
        &env,
        &["--type", "PRICE", "--ids", "7", "--index-keys", "trTR"],
    )
    .await;
    assert!(ok, "{stderr}");
    let (ids, _) = env
        .collect_ids("productcontent_price_tr_tr", 1, Duration::from_secs(20))
        .await;
    assert_eq!(ids.into_iter().collect::<Vec<_>>(), vec![7], "{stdout}");
    fleet.stop().await.unwrap();
}

#[tokio::test]
async fn a_request_on_the_wrong_lane_is_rerouted_once_to_the_lane_of_its_type_and_validated_there()
{
    let env = TestEnv::new().await;
    let fleet = env.start(&[WorkerKind::Dispatcher]);
    env.consumed(names::FAST_LANE).await;
    // A BRAND_CATEGORY request published with routing key `price`: the fast
    // lane's dispatcher hands it to the bulk lane, where it runs.
    let body = br#"{"requestId": "lane-1", "parameterIds": [5], "parameterName": "id",
        "invalidationType": "BRAND_CATEGORY", "indexKeys": ["trTR"]}"#;
    env.publish(names::REQUESTS, "price", body).await;
    let (ids, batches) = env
        .collect_ids(
            "productcontent_brand_category_tr_tr",
            1,
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(ids.into_iter().collect::<Vec<_>>(), vec![5]);
    assert_eq!(batches[0].request_id, "lane-1");
    // Validation is not skipped: a bad one ends in the right lane's
    // dead-letter queue, saying where it was re-routed from.
    let bad = br#"{"parameterIds": [5], "parameterName": "price.amount", "invalidationType": "BRAND_CATEGORY"}"#;
    env.publish(names::REQUESTS, "price", bad).await;
    let dead = env
        .take(&names::dlq(names::BULK_LANE), 1, Duration::from_secs(20))
        .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body, bad);
    assert_eq!(header(&dead[0], "x-error-class"), "forbidden_field");
    assert!(
        header(&dead[0], "x-rerouted-from").contains(names::FAST_LANE),
        "{:?}",
        dead[0].headers
    );
    assert_eq!(header(&dead[0], "x-original-routing-key"), "brand_category");
    // Re-routed once and still on the wrong lane (bindings that differ
    // from the topology file): dead-lettered with the key to use, no loop.
    let props = fleet_shared::lapin::BasicProperties::default().with_headers(
        fleet_shared::broker::with_headers(None, &[("x-rerouted-from", "elsewhere".into())]),
    );
    env.publish_with(names::REQUESTS, "price", body, props)
        .await;
    let dead = env
        .take(&names::dlq(names::FAST_LANE), 1, Duration::from_secs(20))
        .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(header(&dead[0], "x-error-class"), "wrong_lane");
    assert!(
        header(&dead[0], "x-error-message").contains("routing key \"brand_category\""),
        "{:?}",
        dead[0].headers
    );
    assert_eq!(env.depth(names::BULK_LANE).await, 0);
    fleet.stop().await.unwrap();
}

#[tokio::test]
async fn routing_keys_in_any_case_reach_their_lane_and_unknown_keys_are_dead_lettered_with_the_keys_to_use(
) {
    let env = TestEnv::new().await;
    let fleet = env.start(&[WorkerKind::Dispatcher]);
    env.consumed(names::UNROUTABLE).await;
    // `PRICE`, as in the body: no binding matches, the alternate exchange
    // takes it, and the dispatcher puts it on the fast lane.
    let body = br#"{"requestId": "upper-1", "parameterIds": [9], "parameterName": "id",
        "invalidationType": "PRICE", "indexKeys": ["trTR"]}"#;
    env.publish(names::REQUESTS, "PRICE", body).await;
    let (ids, _) = env
        .collect_ids("productcontent_price_tr_tr", 1, Duration::from_secs(20))
        .await;
    assert_eq!(ids.into_iter().collect::<Vec<_>>(), vec![9]);
    // A key in another case with a body that is no request: the lane of the
    // key in lower case decides (and dead-letters it as malformed there).
    env.publish(names::REQUESTS, "Stock", b"{not json").await;
    let dead = env
        .take(&names::dlq(names::FAST_LANE), 1, Duration::from_secs(20))
        .await;
    assert_eq!(header(&dead[0], "x-error-class"), "malformed_json");
    // A key no lane has in any case, and no type: dead-lettered with the
    // keys to use, never left in the catch-all silently.
    env.publish(names::REQUESTS, "refund", b"{not json").await;
    let dead = env
        .take(&names::dlq(names::UNROUTABLE), 1, Duration::from_secs(20))
        .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(header(&dead[0], "x-error-class"), "unknown_routing_key");
    let why = header(&dead[0], "x-error-message");
    assert!(
        why.contains("\"refund\"") && why.contains("stock, price"),
        "{why}"
    );
    assert_eq!(header(&dead[0], "x-original-routing-key"), "refund");
    assert_eq!(env.depth(names::UNROUTABLE).await, 0);
    fleet.stop().await.unwrap();
}

/// The request events in `invalidation.events.log` so far (drains it).
async fn request_events(env: &TestEnv, min: usize) -> Vec<fleet_shared::message::RequestEvent> {
    env.take(names::EVENTS_LOG, min, Duration::from_secs(20))
        .await
        .iter()
        .filter(|m| m.routing_key.starts_with("request."))
        .map(|m| {
            let e = fleet_shared::message::RequestEvent::decode(&m.body).expect("an event");
            assert_eq!(e.event, m.routing_key);
            e
        })
        .collect()
}

#[tokio::test]
async fn dead_lettered_and_parked_requests_are_announced_on_the_events_exchange() {
    // The in-process workers count into the process's recorder from now on.
    fleet_shared::telemetry::metrics_handle();
    let env = TestEnv::with(|c| {
        c.retry.delay = Duration::from_secs(1);
        c.retry.window = Duration::from_secs(60);
    })
    .await;
    let fleet = env.start(&[WorkerKind::Dispatcher, WorkerKind::Retry]);
    env.consumed(names::FAST_LANE).await;
    env.consumed(names::RETRY_READY).await;
    let bad = br#"{"requestId": "ev-1", "parameterIds": [1], "parameterName": "price.amount", "invalidationType": "PRICE"}"#;
    env.publish_with(
        names::REQUESTS,
        "price",
        bad,
        fleet_shared::lapin::BasicProperties::default().with_message_id("m-ev-1".into()),
    )
    .await;
    let events = request_events(&env, 1).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e.event, "request.dead_lettered");
    assert_eq!(e.request_id, "ev-1");
    assert_eq!(e.class, "forbidden_field");
    assert!(e.message.contains("price.amount"), "{e:?}");
    assert_eq!(e.queue, names::dlq(names::FAST_LANE));
    assert_eq!(e.original_queue, names::FAST_LANE);
    assert_eq!(e.original_exchange.as_deref(), Some(names::REQUESTS));
    assert_eq!(e.original_routing_key.as_deref(), Some("price"));
    assert_eq!(e.message_id.as_deref(), Some("m-ev-1"));
    assert!(e.worker.starts_with("dispatcher@"), "{e:?}");
    // The dead letter itself: exactly once.
    let dead = env
        .take(&names::dlq(names::FAST_LANE), 1, Duration::from_secs(5))
        .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body, bad);

    // A request too old to retry is parked, and that is announced too.
    let old_time = fleet_shared::message::now_millis() - 3 * 3600 * 1000;
    let old = format!(
        r#"{{"requestId":"ev-2","parameterIds":[2],"parameterName":"id","invalidationType":"STOCK","invalidationTime":{old_time}}}"#
    );
    let origin = fleet_shared::broker::with_headers(
        None,
        &[
            ("x-original-exchange", names::REQUESTS.into()),
            ("x-original-routing-key", "stock".into()),
            ("x-retry-attempts", 3i64.into()),
        ],
    );
    env.publish_with(
        names::RETRY_EXCHANGE,
        names::RETRY_DELAY_KEY,
        old.as_bytes(),
        fleet_shared::lapin::BasicProperties::default().with_headers(origin),
    )
    .await;
    let events = request_events(&env, 1).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e.event, "request.parked");
    assert_eq!(e.request_id, "ev-2");
    assert_eq!(e.class, "retry_window_exceeded");
    assert!(e.message.starts_with("retry_window_exceeded: "), "{e:?}");
    assert_eq!(e.queue, names::PARKED);
    assert_eq!(e.original_queue, names::RETRY_READY);
    assert_eq!(e.original_routing_key.as_deref(), Some("stock"));
    assert_eq!(env.depth(names::PARKED).await, 1);

    // An event that cannot be published (its exchange is gone) costs the
    // event, never the dead letter, and the worker carries on.
    let ch = env.shared_channel().await;
    ch.exchange_delete(names::EVENTS.into(), Default::default())
        .await
        .unwrap();
    let bad2 = br#"{"requestId": "ev-3", "parameterIds": [], "parameterName": "id", "invalidationType": "PRICE"}"#;
    env.publish(names::REQUESTS, "price", bad2).await;
    env.publish(names::REQUESTS, "price", bad).await;
    let dead = env
        .take(&names::dlq(names::FAST_LANE), 2, Duration::from_secs(20))
        .await;
    assert_eq!(dead.len(), 2, "each dead-lettered exactly once");
    assert_eq!(dead[0].body, bad2);
    assert_eq!(header(&dead[0], "x-error-class"), "empty_ids");
    // The event is published after the dead letter is confirmed and its
    // delivery acked, so the dead letter can be read before the failed
    // event is counted: wait for the count.
    let failed = "fleet_events_failed_total{event=\"request.dead_lettered\"}";
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        let metrics = fleet_shared::telemetry::metrics_handle().render();
        if metrics.contains(failed) || std::time::Instant::now() > deadline {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(metrics.contains(failed), "{metrics}");
    fleet.stop().await.unwrap();
}

#[tokio::test]
async fn a_request_id_too_long_for_an_amqp_message_id_is_still_announced() {
    let env = TestEnv::new().await;
    let fleet = env.start(&[WorkerKind::Dispatcher]);
    env.consumed(names::FAST_LANE).await;
    // Refused (at most 256 bytes), and announced: the event's message id
    // once embedded the request id and panicked over 255 bytes.
    let id = "r".repeat(10_000);
    let body = format!(
        r#"{{"requestId": "{id}", "parameterIds": [1], "parameterName": "id", "invalidationType": "PRICE"}}"#
    );
    env.publish(names::REQUESTS, "price", body.as_bytes()).await;
    let got = env
        .take(names::EVENTS_LOG, 1, Duration::from_secs(20))
        .await;
    assert_eq!(got.len(), 1, "no event for the long request id");
    let e = fleet_shared::message::RequestEvent::decode(&got[0].body).unwrap();
    assert_eq!(e.request_id, id);
    assert_eq!(e.class, "invalid_message");
    let message_id = got[0].message_id.clone().expect("a message id");
    assert!(message_id.len() <= 255, "{message_id}");
    assert_eq!(message_id, e.event_id());
    // The dispatcher carries on.
    env.publish(
        names::REQUESTS,
        "price",
        br#"{"parameterIds": [3], "parameterName": "id", "invalidationType": "PRICE", "indexKeys": ["trTR"]}"#,
    )
    .await;
    let (ids, _) = env
        .collect_ids("productcontent_price_tr_tr", 1, Duration::from_secs(20))
        .await;
    assert_eq!(ids.into_iter().collect::<Vec<_>>(), vec![3]);
    fleet.stop().await.unwrap();
}

#[tokio::test]
async fn requests_show_tells_what_became_of_a_request_without_changing_anything() {
    let env = TestEnv::with_catalogue(|c| {
        c.retry.delay = Duration::from_secs(1);
        c.retry.window = Duration::from_secs(60);
    })
    .await;
    let fleet = env.start(&[WorkerKind::Dispatcher, WorkerKind::Retry]);
    env.consumed(names::FAST_LANE).await;
    env.consumed(names::RETRY_READY).await;
    // Done: a searching request, resolved in place.
    let done = br#"{"requestId": "rq-done", "parameterIds": [40], "parameterName": "brand.id",
        "invalidationType": "PRICE", "indexKeys": ["trTR"]}"#;
    env.publish(names::REQUESTS, "price", done).await;
    let expected = expected_ids(|d| d.brand.id == 40);
    env.collect_ids(
        "productcontent_price_tr_tr",
        expected.len(),
        Duration::from_secs(30),
    )
    .await;
    // Dead-lettered.
    let bad = br#"{"requestId": "rq-dead", "parameterIds": [1], "parameterName": "price.amount", "invalidationType": "PRICE"}"#;
    env.publish(names::REQUESTS, "price", bad).await;
    // Parked: too old to retry.
    let old_time = fleet_shared::message::now_millis() - 3 * 3600 * 1000;
    let old = format!(
        r#"{{"requestId":"rq-park","parameterIds":[2],"parameterName":"id","invalidationType":"STOCK","invalidationTime":{old_time}}}"#
    );
    let origin = fleet_shared::broker::with_headers(
        None,
        &[
            ("x-original-exchange", names::REQUESTS.into()),
            ("x-original-routing-key", "stock".into()),
        ],
    );
    env.publish_with(
        names::RETRY_EXCHANGE,
        names::RETRY_DELAY_KEY,
        old.as_bytes(),
        fleet_shared::lapin::BasicProperties::default().with_headers(origin),
    )
    .await;
    eventually(
        Duration::from_secs(20),
        "the dead letter and the park",
        || async {
            (env.depth(&names::dlq(names::FAST_LANE)).await == 1
                && env.depth(names::PARKED).await == 1
                && env.depth(names::EVENTS_LOG).await == 2)
                .then_some(())
        },
    )
    .await;
    // Split: a job of its own (seeded as the dispatcher records it).
    let pool = env.db().await;
    let request = serde_json::json!({"requestId": "rq-split", "parameterIds": [3],
        "parameterName": "brand.id", "invalidationType": "ASSORTMENT", "indexKeys": ["trTR"]});
    let job_id = fleet_workers::job::id_of(
        &serde_json::from_value(request.clone()).unwrap(),
        fleet_shared::message::IndexKey::TrTr,
    );
    fleet_shared::db::create_job(
        &pool,
        &fleet_shared::db::NewJob {
            id: job_id,
            request_id: "rq-split".into(),
            invalidation_type: "ASSORTMENT".into(),
            index_key: "trTR".into(),
            parameter_name: "brand.id".into(),
            request,
            total_hits: 0,
        },
        &[fleet_shared::db::NewTask {
            from: None,
            to: None,
            expected_hits: 0,
        }],
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    fleet.stop().await.unwrap();

    let show = |id: &'static str| {
        let vars = env.env_vars();
        async move {
            let out = tokio::process::Command::new(fleet_bin())
                .args(["requests", "show", id])
                .envs(vars)
                .output()
                .await
                .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        }
    };
    let (ok, out) = show("rq-done").await;
    assert!(ok, "{out}");
    assert!(out.contains("done, content digest"), "{out}");
    assert!(out.contains("not in any"), "{out}");
    let (ok, out) = show("rq-dead").await;
    assert!(ok, "{out}");
    let dlq = names::dlq(names::FAST_LANE);
    assert!(
        out.contains(&format!("in {dlq} (message #1): forbidden_field")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "event request.dead_lettered: forbidden_field in {dlq}"
        )),
        "{out}"
    );
    let (ok, out) = show("rq-park").await;
    assert!(ok, "{out}");
    assert!(out.contains("parked_messages row"), "{out}");
    assert!(
        out.contains("in invalidation.parked (message #1): retry_window_exceeded"),
        "{out}"
    );
    assert!(out.contains("event request.parked"), "{out}");
    let (ok, out) = show("rq-split").await;
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "job {job_id} (ASSORTMENT on trTR): running, 0/1 tasks done"
        )),
        "{out}"
    );
    let (ok, out) = show("rq-never").await;
    assert!(!ok, "{out}");
    assert!(out.contains("Nothing is known of this request"), "{out}");
    // Nothing was taken off any queue.
    assert_eq!(env.depth(&dlq).await, 1);
    assert_eq!(env.depth(names::PARKED).await, 1);
    assert_eq!(env.depth(names::EVENTS_LOG).await, 2);
}
