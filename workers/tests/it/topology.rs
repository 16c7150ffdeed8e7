//! Topology as data against a live broker.

use std::process::Command;

use fleet_shared::lapin::options::QueueDeclareOptions;
use fleet_shared::lapin::types::{AMQPValue, FieldTable};
use fleet_shared::mgmt::{Management, QueueInfo};
use fleet_shared::topology::{self, names, Topology};
use serde_json::Value;

use crate::common::*;

#[tokio::test]
async fn apply_twice_is_a_no_op() {
    let env = TestEnv::new().await;
    let topo = Topology::load(&env.config).unwrap();
    let plan = topology::plan(&env.mgmt, &env.vhost, &topo).await.unwrap();
    assert!(plan.is_empty(), "after apply, plan shows {plan:?}");
    let queues_before = env.mgmt.queues(&env.vhost).await.unwrap().len();
    env.apply_topology().await;
    let plan = topology::plan(&env.mgmt, &env.vhost, &topo).await.unwrap();
    assert!(plan.is_empty(), "after a second apply, plan shows {plan:?}");
    assert_eq!(
        env.mgmt.queues(&env.vhost).await.unwrap().len(),
        queues_before
    );
    assert_eq!(queues_before, topo.queues.len());
}

#[tokio::test]
async fn a_queue_with_other_arguments_gives_a_clear_error() {
    let env = TestEnv::bare().await;
    // Someone created the delay queue by hand with another TTL.
    let (_c, ch) = env.channel().await;
    let mut args = FieldTable::default();
    args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(5000));
    ch.queue_declare(
        names::RETRY_DELAY.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap();

    let ctx = fleet_workers::app::context(&std::sync::Arc::new(env.config.clone()), "test")
        .await
        .unwrap();
    let err = fleet_workers::app::apply_topology(&ctx)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("queue 'invalidation.retry.delay'"), "{err}");
    assert!(err.contains("x-message-ttl"), "{err}");
    assert!(
        err.contains("5000") && err.contains("1000"),
        "both values must be named: {err}"
    );
    assert!(!err.starts_with("PRECONDITION_FAILED"), "{err}");

    // `plan` reports the same conflict and exits non-zero.
    let out = Command::new(fleet_bin())
        .args(["topology", "plan"])
        .envs(env.env_vars())
        .env("FLEET_RETRY_DELAY", "1s")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(stdout.contains("! conflict queue 'invalidation.retry.delay' already exists with x-message-ttl = 5000, but the topology wants 1000"), "{stdout}");

    // A worker started against it stops with the same explanation instead of crash-looping.
    let out = Command::new(fleet_bin())
        .args(["run", "retry"])
        .envs(env.env_vars())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("x-message-ttl = 5000, but the topology wants 1000"),
        "{stderr}"
    );
}

#[tokio::test]
async fn export_imports_into_a_fresh_vhost_with_the_same_objects() {
    let source = TestEnv::new().await;
    let target = TestEnv::bare().await;
    let topo = Topology::load(&source.config).unwrap();
    let out = Command::new(fleet_bin())
        .args(["topology", "export", "--vhost", &target.vhost])
        .envs(source.env_vars())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    // The broker's own import (the same endpoint the management UI uses).
    target.mgmt.import_definitions(&doc).await.unwrap();

    let plan = topology::plan(&target.mgmt, &target.vhost, &topo)
        .await
        .unwrap();
    assert!(plan.is_empty(), "imported vhost differs: {plan:?}");
    let names = |list: Vec<QueueInfo>| {
        let mut v: Vec<String> = list.into_iter().map(|q| q.name).collect();
        v.sort();
        v
    };
    assert_eq!(
        names(source.mgmt.queues(&source.vhost).await.unwrap()),
        names(target.mgmt.queues(&target.vhost).await.unwrap())
    );
    let bindings = |m: &Management, vh: &str| {
        let m = m.clone();
        let vh = vh.to_string();
        async move {
            let mut v: Vec<(String, String, String)> = m
                .bindings(&vh)
                .await
                .unwrap()
                .into_iter()
                .filter(|b| !b.source.is_empty())
                .map(|b| (b.source, b.destination, b.routing_key))
                .collect();
            v.sort();
            v
        }
    };
    assert_eq!(
        bindings(&source.mgmt, &source.vhost).await,
        bindings(&target.mgmt, &target.vhost).await
    );
}

#[tokio::test]
async fn quorum_queues_are_declared_with_explicit_limits() {
    let env = TestEnv::with(|c| c.topology.queue_type = Some("quorum".into())).await;
    let q = env.mgmt.queue(&env.vhost, names::FAST_LANE).await.unwrap();
    assert_eq!(q.kind, "quorum");
    assert_eq!(q.delivery_limit(), Some(50));
    assert_eq!(q.arguments["x-dead-letter-exchange"], names::DLX);
    let topo = Topology::load(&env.config).unwrap();
    assert!(topology::plan(&env.mgmt, &env.vhost, &topo)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_quorum_queue_made_before_leader_placement_is_applied_and_planned_without_conflict() {
    let env = TestEnv::bare().await;
    let mut config = env.config.clone();
    config.topology.queue_type = Some("quorum".into());
    let topo = Topology::load(&config).unwrap();
    // The fast lane as an older release declared it: every argument but the locator.
    let mut older = topo.queue(names::FAST_LANE).unwrap().arguments.clone();
    assert!(older.remove(topology::LEADER_LOCATOR).is_some());
    let mut args = FieldTable::default();
    for (k, v) in &older {
        let v = match v {
            topology::Arg::Int(i) => AMQPValue::LongLongInt(*i),
            topology::Arg::Str(s) => AMQPValue::LongString(s.as_str().into()),
        };
        args.insert(k.as_str().into(), v);
    }
    let (_c, ch) = env.channel().await;
    ch.queue_declare(
        names::FAST_LANE.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap();

    let ctx = fleet_workers::app::context(&std::sync::Arc::new(config.clone()), "test")
        .await
        .unwrap();
    let report = fleet_workers::app::apply_topology(&ctx).await.unwrap();
    assert_eq!(report.queues, topo.queues.len());
    assert!(topology::plan(&env.mgmt, &env.vhost, &topo)
        .await
        .unwrap()
        .is_empty());
    // The new queues carry the locator; the old one keeps what it had.
    let q = env.mgmt.queue(&env.vhost, names::BULK_LANE).await.unwrap();
    assert_eq!(q.arguments[topology::LEADER_LOCATOR], "balanced");
    let q = env.mgmt.queue(&env.vhost, names::FAST_LANE).await.unwrap();
    assert!(!q.arguments.contains_key(topology::LEADER_LOCATOR));
}
