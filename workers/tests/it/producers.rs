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
