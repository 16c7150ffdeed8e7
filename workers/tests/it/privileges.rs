//! Least privilege (SPEC §11): every worker type runs as its own RabbitMQ
//! user with exactly the rights `fleet topology export --users` gives it,
//! through every path (fast lane, split, ingest, retry); a publish or a
//! consume outside those rights is refused, and the worker says so in
//! words that name the operation, the exchange or queue, the user and the
//! fix, without crashing.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_shared::access::{self, DEFAULT_EXCHANGE};
use fleet_shared::broker::{Outgoing, PublishError, Publisher};
use fleet_shared::runtime::HandlerError;
use fleet_shared::topology::{names, Topology};
use fleet_workers::app::WorkerKind;
use fleet_workers::privileges;
use serde_json::Value;
use tokio::io::AsyncBufReadExt;

use crate::common::*;

/// A `fleet run <worker>` subprocess whose output is kept for the test.
struct Worker {
    child: tokio::process::Child,
    log: Arc<Mutex<String>>,
}

impl Worker {
    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the output contains `text`; panics with the output after `wait`.
    async fn wait_for(&self, text: &str, wait: Duration) {
        let deadline = std::time::Instant::now() + wait;
        while !self.log().contains(text) {
            assert!(
                std::time::Instant::now() < deadline,
                "no {text:?} in the worker's output after {wait:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Runs `fleet run <kind>` in the sandbox, connected as `user`: every
/// broker URL (AMQP and management) carries that user's credentials.
fn spawn(
    env: &TestEnv,
    kind: WorkerKind,
    user: &str,
    password: &str,
    extra: &[(&str, String)],
) -> Worker {
    let mut mgmt = reqwest::Url::parse(MGMT_URL).unwrap();
    mgmt.set_username(user).unwrap();
    mgmt.set_password(Some(password)).unwrap();
    let mut child = tokio::process::Command::new(fleet_bin())
        .args(["run", kind.name()])
        .envs(env.env_vars())
        .env("AMQP_URL", env.amqp_url_as(user, password))
        .env("RABBITMQ_MANAGEMENT_URL", mgmt.to_string())
        .envs(extra.iter().map(|(k, v)| (k.to_string(), v.clone())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn fleet run");
    let log = Arc::new(Mutex::new(String::new()));
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    for stream in [
        Box::new(out) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        Box::new(err),
    ] {
        let log = log.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut l = log.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
    }
    Worker { child, log }
}

fn request(t: &str, field: &str, ids: &[i64], keys: &[&str], request_id: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "v": 1, "requestId": request_id, "parameterIds": ids, "parameterName": field,
        "invalidationType": t, "indexKeys": keys,
    }))
    .unwrap()
}

/// One password per worker user, unique to this test.
fn passwords() -> BTreeMap<&'static str, String> {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    WorkerKind::ALL
        .iter()
        .map(|k| (k.name(), format!("Pw-{}-{}", k.name(), &tag[..12])))
        .collect()
}

fn password_vars(pw: &BTreeMap<&'static str, String>) -> Vec<(String, String)> {
    WorkerKind::ALL
        .iter()
        .map(|k| (privileges::password_variable(*k), pw[k.name()].clone()))
        .collect()
}

#[tokio::test]
async fn every_worker_runs_as_its_own_user_through_every_path() {
    let mut env = TestEnv::with_catalogue(|_| {}).await;
    // Users are global to the broker: named after the sandbox's vhost.
    let prefix = format!("{}-", env.vhost);
    let pw = passwords();

    // Exported as an operator would, passwords hashed from the environment.
    let out = tokio::process::Command::new(fleet_bin())
        .args(["topology", "export", "--users", "--passwords-from-env"])
        .args(["--user-prefix", &prefix])
        .envs(env.env_vars())
        .envs(password_vars(&pw))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    for p in pw.values() {
        assert!(!stdout.contains(p.as_str()) && !stderr.contains(p.as_str()));
    }
    let doc: Value = serde_json::from_str(&stdout).unwrap();
    let users = doc["users"].as_array().unwrap();
    let permissions = doc["permissions"].as_array().unwrap();
    assert_eq!(users.len(), WorkerKind::ALL.len());
    assert_eq!(permissions.len(), WorkerKind::ALL.len());
    for u in users {
        let name = u["name"].as_str().unwrap();
        assert!(name.starts_with(&prefix), "{name}");
        assert_eq!(u["hashing_algorithm"], access::HASHING_ALGORITHM);
        assert!(!u["password_hash"].as_str().unwrap().is_empty());
        env.delete_user_on_drop(name);
    }
    for p in permissions {
        assert_eq!(p["vhost"], env.vhost.as_str());
        assert_eq!(p["configure"], "^$", "{p}");
    }
    // The whole document imports (topology included: nothing changes).
    env.mgmt.import_definitions(&doc).await.unwrap();
    // What the broker holds is what the code derived.
    let topo = Topology::load(&env.config).unwrap();
    for u in privileges::users(&topo, &prefix) {
        let live: Value = reqwest::Client::new()
            .get(format!(
                "http://127.0.0.1:15672/api/permissions/{}/{}",
                env.vhost, u.name
            ))
            .basic_auth("guest", Some("guest"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let p = u.rights.patterns();
        assert_eq!(
            (
                live["configure"].as_str(),
                live["write"].as_str(),
                live["read"].as_str()
            ),
            (
                Some(p.configure.as_str()),
                Some(p.write.as_str()),
                Some(p.read.as_str())
            ),
            "{}",
            u.name
        );
    }

    let user = |k: WorkerKind| format!("{prefix}{}", k.name());
    // Each worker believes the others' `user_id` (the retry handler's returns).
    let fleet_users = WorkerKind::ALL
        .iter()
        .map(|k| user(*k))
        .collect::<Vec<_>>()
        .join(",");
    let extra = |more: &[(&'static str, String)]| {
        let mut v: Vec<(&'static str, String)> =
            vec![("FLEET_AMQP_FLEET_USERS", fleet_users.clone())];
        v.extend_from_slice(more);
        v
    };
    let run = |k: WorkerKind, more: &[(&'static str, String)]| {
        spawn(&env, k, &user(k), &pw[k.name()], &extra(more))
    };

    // The retry path first: a dispatcher that cannot search fails the
    // request transiently (to the delay queue, as its own user); the retry
    // handler sends it back (as its own user) until a good dispatcher runs.
    let retry = run(WorkerKind::Retry, &[]);
    let mut failing = run(WorkerKind::Dispatcher, &[("SEARCH_URL", refused_url())]);
    failing
        .wait_for("Consuming.", Duration::from_secs(30))
        .await;
    let retried = expected_ids(|d| d.brand.id == 61);
    assert!(!retried.is_empty());
    env.publish(
        names::REQUESTS,
        "campaign",
        &request("CAMPAIGN", "brand.id", &[61], &["deDE"], "priv-retry"),
    )
    .await;
    // attempts=2: the lane believed the retry handler's stamp, so the
    // counter went on across the return (FLEET_AMQP_FLEET_USERS).
    retry.wait_for("attempts=2", Duration::from_secs(60)).await;
    failing.child.kill().await.unwrap();

    let mut workers = vec![
        run(WorkerKind::Dispatcher, &[]),
        run(WorkerKind::Partition, &[]),
        run(WorkerKind::Ingest, &[]),
        run(WorkerKind::Sweeper, &[]),
    ];
    // A fast-lane request resolved in place.
    let fast = expected_ids(|d| d.brand.id == 60);
    assert!(!fast.is_empty() && fast.len() <= 400);
    env.publish(
        names::REQUESTS,
        "price",
        &request("PRICE", "brand.id", &[60], &["trTR"], "priv-fast"),
    )
    .await;
    // A split request (bulk lane → job → partition tasks → job.completed).
    let split = expected_ids(|d| d.brand.id == 1);
    assert!(split.len() > 3 * 400);
    env.publish(
        names::REQUESTS,
        "assortment",
        &request("ASSORTMENT", "brand.id", &[1], &["trTR"], "priv-split"),
    )
    .await;
    // A source event through ingest.
    env.publish(
        "source.stock",
        "",
        br#"{"contentId": 8, "event": "updated", "quantity": 2, "indexKeys": ["deDE"]}"#,
    )
    .await;

    for (queue, expected) in [
        ("productcontent_price_tr_tr", &fast),
        ("productcontent_assortment_tr_tr", &split),
        ("productcontent_campaign_de_de", &retried),
        (
            "productcontent_stock_de_de",
            &std::collections::BTreeSet::from([8]),
        ),
    ] {
        let (ids, _) = env
            .collect_ids(queue, expected.len(), Duration::from_secs(90))
            .await;
        let logs: Vec<String> = workers.iter().map(Worker::log).collect();
        assert_eq!(&ids, expected, "{queue}; logs:\n{}", logs.join("\n---\n"));
    }
    let events = eventually(Duration::from_secs(30), "job.completed", || async {
        let e = env.take(names::EVENTS_LOG, 0, Duration::ZERO).await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(events[0].json()["requestId"], "priv-split");
    assert_eq!(env.depth(names::PARKED).await, 0);

    // Each worker tried the start-up declare, was refused (no configure
    // right), said so once and went on; nothing else was refused.
    workers.push(retry);
    for w in &mut workers {
        let log = w.log();
        assert!(
            log.contains("may not declare the topology"),
            "no word about the refused declare:\n{log}"
        );
        for line in log.lines().filter(|l| l.contains("ACCESS_REFUSED")) {
            assert!(
                line.contains("may not declare the topology"),
                "refused outside the topology declare: {line}"
            );
        }
        assert!(
            w.child.try_wait().unwrap().is_none(),
            "the worker is still running:\n{log}"
        );
        w.child.kill().await.unwrap();
    }
}

#[tokio::test]
async fn a_publish_outside_a_workers_rights_is_refused_with_a_clear_error() {
    let mut env = TestEnv::new().await;
    let prefix = format!("{}-", env.vhost);
    let pw = passwords();
    // Made through the other path: `topology apply --users` (management API).
    let out = tokio::process::Command::new(fleet_bin())
        .args(["topology", "apply", "--users", "--user-prefix", &prefix])
        .envs(env.env_vars())
        .envs(password_vars(&pw))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    for k in WorkerKind::ALL {
        env.delete_user_on_drop(&format!("{prefix}{}", k.name()));
    }
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(pw.values().all(|p| !stdout.contains(p.as_str())));
    let partition_user = format!("{prefix}partition");

    // The partition worker's credentials: its own outputs go through ...
    let publisher = Publisher::connect(
        env.amqp_url_as(&partition_user, &pw["partition"]).as_str(),
        &identity(),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let batch =
        br#"{"v":1,"requestId":"r","invalidationType":"PRICE","indexKey":"trTR","contentIds":[1]}"#;
    publisher
        .publish(Outgoing::json(names::OUTBOUND, "price.tr_tr", batch))
        .await
        .expect("the partition worker may publish outbound batches");
    // ... anything else is refused, in words that say what and why.
    for (exchange, key, shown) in [
        (
            names::REQUESTS,
            "price",
            format!("exchange {:?}", names::REQUESTS),
        ),
        (
            "",
            names::FAST_LANE,
            format!("exchange {DEFAULT_EXCHANGE:?}"),
        ),
        (
            names::PARKED_EXCHANGE,
            "",
            format!("exchange {:?}", names::PARKED_EXCHANGE),
        ),
    ] {
        let err = publisher
            .publish(Outgoing::json(exchange, key, b"{}"))
            .await
            .expect_err("outside the partition worker's rights");
        let PublishError::AccessRefused(refusal) = &err else {
            panic!("not an access refusal: {err:?}");
        };
        assert_eq!(refusal.user.as_deref(), Some(partition_user.as_str()));
        let text = err.to_string();
        for part in [
            "permission",
            "publish to",
            shown.as_str(),
            partition_user.as_str(),
            "ACCESS_REFUSED",
            "fleet topology export --users",
        ] {
            assert!(text.contains(part), "{part:?} missing from: {text}");
        }
        // A handler that hits it takes the retry path with its own class.
        assert_eq!(HandlerError::from(err).class(), "access_refused");
    }
    // Nothing got through to the lane.
    assert_eq!(env.depth(names::FAST_LANE).await, 0);

    // A worker run as a user without the right to consume its queues (the
    // partition user running ingest) says so, again and again, and stays up.
    let ingest_as_partition = spawn(
        &env,
        WorkerKind::Ingest,
        &partition_user,
        &pw["partition"],
        &[],
    );
    ingest_as_partition
        .wait_for("may not declare the topology", Duration::from_secs(30))
        .await;
    ingest_as_partition
        .wait_for("consume from queue \"source.", Duration::from_secs(30))
        .await;
    let log = ingest_as_partition.log();
    assert!(log.contains(&format!("user \"{partition_user}\"")), "{log}");
    assert!(log.contains("permissions problem"), "{log}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut w = ingest_as_partition;
    assert!(
        w.child.try_wait().unwrap().is_none(),
        "no crash: it keeps trying, with backoff:\n{}",
        w.log()
    );
    assert!(
        w.log().matches("refused this worker's consumer").count() >= 2,
        "it keeps saying so:\n{}",
        w.log()
    );
    w.child.kill().await.unwrap();

    // An ingest worker whose user lost the right to publish requests: the
    // refusal is logged in those words, and the event is not lost: it takes
    // the retry path (class access_refused) until the right is back.
    let topo = Topology::load(&env.config).unwrap();
    let mut rights = privileges::rights(WorkerKind::Ingest, &topo);
    assert!(rights.write.remove(names::REQUESTS));
    let crippled = format!("{prefix}ingest-no-requests");
    env.delete_user_on_drop(&crippled);
    env.mgmt
        .put_user(&crippled, &pw["ingest"], "")
        .await
        .unwrap();
    let p = rights.patterns();
    env.mgmt
        .set_permissions(&env.vhost, &crippled, &p.configure, &p.write, &p.read)
        .await
        .unwrap();
    let mut w = spawn(
        &env,
        WorkerKind::Ingest,
        &crippled,
        &pw["ingest"],
        &[("FLEET_WORKER_APPLY_TOPOLOGY", "false".into())],
    );
    w.wait_for("Consuming.", Duration::from_secs(30)).await;
    env.publish(
        "source.stock",
        "",
        br#"{"contentId": 8, "event": "created", "quantity": 5}"#,
    )
    .await;
    let ready = env
        .take(names::RETRY_READY, 1, Duration::from_secs(30))
        .await;
    assert_eq!(ready.len(), 1, "{}", w.log());
    assert_eq!(header(&ready[0], "x-error-class"), "access_refused");
    let message = header(&ready[0], "x-error-message");
    assert!(
        message.contains("publish to exchange \"invalidation.requests\"")
            && message.contains(&crippled),
        "{message}"
    );
    w.wait_for("permissions problem", Duration::from_secs(10))
        .await;
    assert!(
        !w.log().contains("may not declare the topology"),
        "FLEET_WORKER_APPLY_TOPOLOGY=false skips the attempt"
    );
    assert!(w.child.try_wait().unwrap().is_none());
    w.child.kill().await.unwrap();
}
