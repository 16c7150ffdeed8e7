//! SPEC §7: the operators' `fleet jobs` and `fleet publish`, run as the
//! binary an operator runs, against real services.

use std::process::{Output, Stdio};
use std::time::Duration;

use fleet_shared::db::{self, NewJob, NewTask};
use fleet_shared::topology::names;
use fleet_workers::app::WorkerKind;
use tokio::io::AsyncWriteExt;

use crate::common::*;

/// Runs `fleet <args>` against `env`, with `stdin` fed when given.
async fn fleet(env: &TestEnv, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = tokio::process::Command::new(fleet_bin())
        .args(args)
        .envs(env.env_vars())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn fleet");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(input).await.expect("write stdin");
        drop(pipe);
    }
    tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("fleet finishes within 60 s")
        .expect("fleet output")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn jobs_resume_republishes_purged_tasks_and_the_job_completes_exactly() {
    let mut env = TestEnv::new().await;
    env.config.search.url = catalogue_clone().await;
    let pool = env.db().await;
    let expected = expected_ids(|d| d.brand.id == 1);
    assert!(
        expected.len() > 10,
        "brand 1 is a big brand in the catalogue"
    );
    let now = fleet_shared::message::now_millis();
    let request = serde_json::json!({
        "parameterIds": [1], "parameterName": "brand.id", "invalidationType": "PRICE",
        "indexKeys": ["trTR"], "requestId": "r1", "invalidationTime": now
    });
    let job_id = uuid::Uuid::new_v4();
    let job = NewJob {
        id: job_id,
        request_id: "r1".into(),
        invalidation_type: "PRICE".into(),
        index_key: "trTR".into(),
        parameter_name: "brand.id".into(),
        request,
        total_hits: expected.len() as i64,
    };
    // The task messages were "purged": the tasks exist only in PostgreSQL.
    let tasks = [
        NewTask {
            from: None,
            to: Some(500),
            expected_hits: 0,
        },
        NewTask {
            from: Some(500),
            to: None,
            expected_hits: 0,
        },
    ];
    let pending = db::create_job(&pool, &job, &tasks, Duration::from_secs(86_400))
        .await
        .unwrap();
    assert_eq!(pending.len(), 2);

    let workers = env.start(&[WorkerKind::Partition]);
    // Nothing happens on its own: no sweeper runs, no task message exists.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(env.depth("productcontent_price_tr_tr").await, 0);
    assert_eq!(
        db::job(&pool, job_id).await.unwrap().unwrap().state,
        "running"
    );

    let shown = fleet(&env, &["jobs", "show", &job_id.to_string()], None).await;
    assert!(shown.status.success(), "{}", text(&shown.stderr));
    let shown = text(&shown.stdout);
    assert!(shown.contains("[min, 500)"), "{shown}");
    assert!(shown.contains("[500, max]"), "{shown}");
    assert!(shown.contains("0/2 done"), "{shown}");

    let resumed = fleet(&env, &["jobs", "resume", &job_id.to_string()], None).await;
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));
    assert!(
        text(&resumed.stdout).contains("Re-published 2 task(s)"),
        "{}",
        text(&resumed.stdout)
    );

    eventually(Duration::from_secs(60), "the job to complete", || async {
        let j = db::job(&pool, job_id).await.ok()??;
        (j.state == "completed").then_some(())
    })
    .await;
    let (ids, _) = env
        .collect_ids(
            "productcontent_price_tr_tr",
            expected.len(),
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(ids, expected, "exactly brand 1's contents, nothing missed");
    let rows = db::tasks(&pool, job_id).await.unwrap();
    assert!(rows.iter().all(|t| t.status == "done"), "{rows:?}");
    assert_eq!(
        rows.iter().filter_map(|t| t.hits).sum::<i64>(),
        expected.len() as i64
    );

    let listed = fleet(&env, &["jobs", "list"], None).await;
    let listed = text(&listed.stdout);
    let line = listed
        .lines()
        .find(|l| l.contains(&job_id.to_string()))
        .unwrap_or_else(|| panic!("job listed:\n{listed}"));
    assert!(line.contains("completed") && line.contains("2/2"), "{line}");

    let again = fleet(&env, &["jobs", "resume", &job_id.to_string()], None).await;
    assert!(again.status.success());
    assert!(
        text(&again.stdout).contains("nothing re-published"),
        "{}",
        text(&again.stdout)
    );
    let unknown = uuid::Uuid::new_v4().to_string();
    let missing = fleet(&env, &["jobs", "show", &unknown], None).await;
    assert!(!missing.status.success());
    assert!(
        text(&missing.stderr).contains(&format!("no job with id {unknown}")),
        "{}",
        text(&missing.stderr)
    );
    workers.stop().await.unwrap();
}

#[tokio::test]
async fn publish_sends_valid_requests_and_source_events_and_refuses_bad_ones() {
    let env = TestEnv::new().await;

    // From flags: routed by type, request id printed and carried.
    let out = fleet(
        &env,
        &[
            "publish",
            "--type",
            "PRICE",
            "--param",
            "brand.id",
            "--ids",
            "1,2",
            "--index-keys",
            "trTR,deDE",
        ],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    assert!(!id.is_empty());
    let got = env.take(names::FAST_LANE, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].routing_key, "price");
    assert_eq!(got[0].exchange, names::REQUESTS);
    let v = got[0].json();
    assert_eq!(v["requestId"], serde_json::json!(id));
    assert_eq!(v["parameterIds"], serde_json::json!([1, 2]));
    assert_eq!(v["parameterName"], "brand.id");
    assert_eq!(v["indexKeys"], serde_json::json!(["trTR", "deDE"]));

    // From standard input, a bulk-lane type with a two-word routing key; the
    // producer's own request id and unknown fields are kept.
    let body = br#"{"parameterIds":[7],"parameterName":"category.id","invalidationType":"BRAND_CATEGORY","requestId":"mine-1","producer":"tests"}"#;
    let out = fleet(&env, &["publish", "--file", "-"], Some(body)).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "mine-1");
    let got = env.take(names::BULK_LANE, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].routing_key, "brand_category");
    assert_eq!(got[0].json()["producer"], "tests");

    // A bad file is refused with the reason, and nothing is sent.
    let dir = std::env::temp_dir().join(format!("fleet-publish-{}", env.vhost));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.json");
    std::fs::write(&bad, br#"{"parameterIds":[1],"invalidationType":"PRICE"}"#).unwrap();
    let out = fleet(&env, &["publish", "--file", bad.to_str().unwrap()], None).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("parameterName"),
        "{}",
        text(&out.stderr)
    );
    let out = fleet(&env, &["publish", "--type", "REFUND", "--ids", "1"], None).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("BRAND_CATEGORY"),
        "valid types listed: {}",
        text(&out.stderr)
    );

    // A source event goes to its exchange byte for byte.
    let event = r#"{"contentId": 1, "event": "created", "quantity": 5}"#;
    let out = fleet(
        &env,
        &["publish", "--source", "stock", "--json", event],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got = env.take("source.stock", 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, event.as_bytes());
    assert_eq!(got[0].exchange, "source.stock");
    let out = fleet(
        &env,
        &["publish", "--source", "stok", "--json", event],
        None,
    )
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("price, stock, promotion"),
        "valid kinds listed: {}",
        text(&out.stderr)
    );
    let out = fleet(
        &env,
        &["publish", "--source", "stock", "--json", "not json"],
        None,
    )
    .await;
    assert!(!out.status.success());
    let _ = std::fs::remove_dir_all(&dir);

    assert_eq!(
        env.depth(names::FAST_LANE).await,
        0,
        "nothing else was sent"
    );
    assert_eq!(env.depth(names::BULK_LANE).await, 0);
    assert_eq!(env.depth("source.stock").await, 0);
    assert_eq!(env.depth(names::UNROUTABLE).await, 0);
}
