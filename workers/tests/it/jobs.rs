//! The split job's lifecycle under faults: the narrow windows between two
//! writes that used to strand a job, and tasks that end other than `done`
//! (dead-lettered, parked, retrying, attempts exhausted), which the sweeper
//! must neither lose nor re-publish forever.

use std::time::Duration;

use fleet_shared::config::Config;
use fleet_shared::db;
use fleet_shared::message::{now_millis, IndexKey, JobCompleted};
use fleet_shared::topology::names;
use fleet_workers::app::WorkerKind;
use fleet_workers::job;
use fleet_workers::sweeper::Sweeper;

use crate::common::*;

/// A job recorded straight in the database (as the dispatcher would have
/// left it), on brand 3 of the Turkish index, with `tasks` ranges.
async fn seed_job(
    pool: &sqlx::PgPool,
    request_id: &str,
    field: &str,
    ranges: &[(Option<i64>, Option<i64>)],
) -> db::JobRow {
    let request = serde_json::json!({
        "v": 1, "requestId": request_id, "parameterIds": [3], "parameterName": field,
        "invalidationType": "ASSORTMENT", "indexKeys": ["trTR"], "invalidationTime": now_millis(),
    });
    let id = job::id_of(
        &serde_json::from_value(request.clone()).unwrap(),
        IndexKey::TrTr,
    );
    let new = db::NewJob {
        id,
        request_id: request_id.into(),
        invalidation_type: "ASSORTMENT".into(),
        index_key: "trTR".into(),
        parameter_name: field.into(),
        request,
        total_hits: 0,
    };
    let tasks: Vec<db::NewTask> = ranges
        .iter()
        .map(|&(from, to)| db::NewTask {
            from,
            to,
            expected_hits: 0,
        })
        .collect();
    db::create_job(pool, &new, &tasks, Duration::from_secs(86_400))
        .await
        .unwrap();
    db::job(pool, id).await.unwrap().unwrap()
}

/// The task messages of a job, as the dispatcher publishes them.
async fn task_bodies(pool: &sqlx::PgPool, job: &db::JobRow) -> Vec<Vec<u8>> {
    let request: fleet_shared::message::InvalidationRequest =
        serde_json::from_value(job.request.clone()).unwrap();
    db::tasks(pool, job.id)
        .await
        .unwrap()
        .iter()
        .map(|t| {
            let m = job::task_message(
                job.id,
                &job.request_id,
                &request,
                IndexKey::TrTr,
                now_millis(),
                t,
            );
            serde_json::to_vec(&m).unwrap()
        })
        .collect()
}

async fn sweeper(env: &TestEnv) -> Sweeper {
    let config = std::sync::Arc::new(env.config.clone());
    let kv = fleet_shared::kv::Kv::connect(&config.redis).await.unwrap();
    Sweeper::new(
        fleet_workers::app::context(&config, "sweeper")
            .await
            .unwrap(),
        env.db().await,
        kv,
    )
}

/// Every completion event so far (drains the log queue).
async fn events(env: &TestEnv) -> Vec<JobCompleted> {
    env.take(names::EVENTS_LOG, 0, Duration::ZERO)
        .await
        .iter()
        // The log also carries request.dead_lettered / request.parked.
        .filter(|m| m.routing_key == names::JOB_COMPLETED)
        .map(|m| serde_json::from_slice::<JobCompleted>(&m.body).unwrap())
        .collect()
}

async fn status_of(pool: &sqlx::PgPool, job_id: uuid::Uuid, task_no: i32) -> db::TaskRow {
    db::tasks(pool, job_id)
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.task_no == task_no)
        .unwrap()
}

/// A TCP server that accepts connections and never answers: a wedged
/// search node. Dropping it closes the listener.
async fn silent_server() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let handle = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    (url, handle)
}

#[tokio::test]
async fn a_job_whose_finisher_died_between_its_last_task_and_completion_still_completes_once() {
    let env = TestEnv::with_catalogue(|c: &mut Config| {
        c.sweeper.stall_after = Duration::from_millis(500);
    })
    .await;
    let pool = env.db().await;
    let ranges = [(None, Some(500)), (Some(500), None)];

    // 1. The partition worker marked every task done and died before
    // completing the job. A duplicate task message arrives later.
    let stranded = seed_job(&pool, "stranded-dup", "brand.id", &ranges).await;
    let bodies = task_bodies(&pool, &stranded).await;
    for t in 0..2 {
        assert!(db::finish_task(&pool, stranded.id, t, 1, 0).await.unwrap());
    }
    let fleet = env.start(&[WorkerKind::Partition]);
    env.publish(names::PARTITIONS, names::PARTITION_KEY, &bodies[0])
        .await;
    eventually(
        Duration::from_secs(20),
        "the duplicate to complete the job",
        || async {
            db::job(&pool, stranded.id)
                .await
                .unwrap()
                .filter(|j| j.state == "completed" && j.event_published_at.is_some())
        },
    )
    .await;
    fleet.stop().await.unwrap();

    // 2. The same, with no duplicate ever coming: the sweeper completes it.
    let quiet = seed_job(&pool, "stranded-quiet", "brand.id", &ranges).await;
    for t in 0..2 {
        assert!(db::finish_task(&pool, quiet.id, t, 1, 0).await.unwrap());
    }
    let sweep = sweeper(&env).await.sweep_once().await.unwrap().unwrap();
    assert_eq!(sweep.jobs_completed, 1, "{sweep:?}");
    let job = db::job(&pool, quiet.id).await.unwrap().unwrap();
    assert_eq!(job.state, "completed");
    assert!(job.event_published_at.is_some());

    // Each job announced exactly once, the stranded one included.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = events(&env).await;
    for id in [stranded.id, quiet.id] {
        assert_eq!(
            events.iter().filter(|e| e.job_id == id).count(),
            1,
            "{events:?}"
        );
    }
}

#[tokio::test]
async fn a_dead_lettered_task_ends_failed_and_the_sweeper_leaves_it_alone() {
    let env = TestEnv::with_catalogue(|c: &mut Config| {
        c.sweeper.stall_after = Duration::from_millis(800);
    })
    .await;
    let pool = env.db().await;
    // A task on a field the allow-list refuses: permanently bad.
    let bad = seed_job(&pool, "bad-field", "price.amount", &[(None, None)]).await;
    let bodies = task_bodies(&pool, &bad).await;
    let fleet = env.start(&[WorkerKind::Partition]);
    env.publish(names::PARTITIONS, names::PARTITION_KEY, &bodies[0])
        .await;
    let dead = env
        .take("invalidation.partitions.dlq", 1, Duration::from_secs(20))
        .await;
    assert_eq!(header(&dead[0], "x-error-class"), "forbidden_field");
    fleet.stop().await.unwrap();
    let row = status_of(&pool, bad.id, 0).await;
    assert_eq!(row.status, "failed");
    assert!(
        row.error
            .as_deref()
            .unwrap_or("")
            .contains("forbidden_field"),
        "{row:?}"
    );

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let sweep = sweeper(&env).await.sweep_once().await.unwrap().unwrap();
    assert_eq!(sweep.tasks_republished, 0, "{sweep:?}");
    assert_eq!(env.depth(names::PARTITIONS).await, 0);
    assert_eq!(status_of(&pool, bad.id, 0).await.status, "failed");
}

#[tokio::test]
async fn a_slow_task_keeps_its_heartbeat_and_a_retrying_one_is_given_its_delay() {
    // Search that takes connections and never answers: the task hangs in
    // its first search call until `search.timeout`.
    let (url, server) = silent_server().await;
    let env = TestEnv::with(|c: &mut Config| {
        c.search.url = url;
        c.search.timeout = Duration::from_secs(4);
        c.partition.heartbeat = Duration::from_millis(200);
        c.sweeper.stall_after = Duration::from_millis(1000);
        c.retry.delay = Duration::from_secs(60);
    })
    .await;
    let pool = env.db().await;
    let slow = seed_job(&pool, "slow-1", "brand.id", &[(None, None)]).await;
    let bodies = task_bodies(&pool, &slow).await;
    let fleet = env.start(&[WorkerKind::Partition]);
    env.publish(names::PARTITIONS, names::PARTITION_KEY, &bodies[0])
        .await;
    eventually(Duration::from_secs(10), "the task to start", || async {
        (status_of(&pool, slow.id, 0).await.status == "running").then_some(())
    })
    .await;
    let sweeper = sweeper(&env).await;
    // Well past `stall_after`, still inside the search timeout: alive.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(status_of(&pool, slow.id, 0).await.status, "running");
    let sweep = sweeper.sweep_once().await.unwrap().unwrap();
    assert_eq!(sweep.tasks_republished, 0, "a live task is not stalled");

    // The search times out: the message waits in the retry delay queue and
    // the row says so; the sweeper gives it the retry delay to come back.
    let row = eventually(
        Duration::from_secs(30),
        "the task to be retrying",
        || async { Some(status_of(&pool, slow.id, 0).await).filter(|t| t.status == "retrying") },
    )
    .await;
    assert!(row.error.is_some());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let sweep = sweeper.sweep_once().await.unwrap().unwrap();
    assert_eq!(sweep.tasks_republished, 0, "a retrying task is not stalled");
    assert_eq!(env.depth(names::PARTITIONS).await, 0);
    assert_eq!(env.depth(names::RETRY_DELAY).await, 1);
    fleet.stop().await.unwrap();
    server.abort();
}

#[tokio::test]
async fn a_task_that_keeps_failing_ends_failed_after_its_attempts() {
    let env = TestEnv::with(|c: &mut Config| {
        c.search.url = refused_url();
        c.retry.delay = Duration::from_millis(500);
        c.retry.window = Duration::from_secs(600);
        c.partition.max_attempts = 2;
    })
    .await;
    let pool = env.db().await;
    let doomed = seed_job(&pool, "doomed-1", "brand.id", &[(None, None)]).await;
    let bodies = task_bodies(&pool, &doomed).await;
    let fleet = env.start(&[WorkerKind::Partition, WorkerKind::Retry]);
    env.publish(names::PARTITIONS, names::PARTITION_KEY, &bodies[0])
        .await;
    let dead = env
        .take("invalidation.partitions.dlq", 1, Duration::from_secs(60))
        .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(header(&dead[0], "x-error-class"), "task_attempts_exhausted");
    fleet.stop().await.unwrap();
    let row = status_of(&pool, doomed.id, 0).await;
    assert_eq!(row.status, "failed");
    assert_eq!(row.attempts, 3);
}

#[tokio::test]
async fn a_parked_task_is_marked_parked_and_jobs_show_says_how_to_replay_it() {
    let env = TestEnv::with(|c: &mut Config| {
        c.search.url = refused_url();
        c.retry.delay = Duration::from_millis(500);
        c.retry.window = Duration::from_millis(200);
        c.sweeper.stall_after = Duration::from_millis(500);
    })
    .await;
    let pool = env.db().await;
    let parked = seed_job(&pool, "parked-1", "brand.id", &[(None, None)]).await;
    let bodies = task_bodies(&pool, &parked).await;
    let fleet = env.start(&[WorkerKind::Partition, WorkerKind::Retry]);
    env.publish(names::PARTITIONS, names::PARTITION_KEY, &bodies[0])
        .await;
    let row = eventually(Duration::from_secs(30), "the task to be parked", || async {
        Some(status_of(&pool, parked.id, 0).await).filter(|t| t.status == "parked")
    })
    .await;
    assert!(
        row.error
            .as_deref()
            .unwrap_or("")
            .contains("retry_window_exceeded"),
        "{row:?}"
    );
    fleet.stop().await.unwrap();
    assert_eq!(env.depth(names::PARKED).await, 1);

    tokio::time::sleep(Duration::from_millis(800)).await;
    let sweep = sweeper(&env).await.sweep_once().await.unwrap().unwrap();
    assert_eq!(sweep.tasks_republished, 0, "{sweep:?}");

    let out = tokio::process::Command::new(fleet_bin())
        .args(["jobs", "show", &parked.id.to_string()])
        .envs(env.env_vars())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("fleet dlq replay invalidation.parked"),
        "{stdout}"
    );
    let out = tokio::process::Command::new(fleet_bin())
        .args(["jobs", "resume", &parked.id.to_string()])
        .envs(env.env_vars())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Left alone"), "{stdout}");
    assert_eq!(env.depth(names::PARTITIONS).await, 0, "resume leaves it");
}

#[tokio::test]
async fn one_broken_job_does_not_stop_the_sweep_for_the_others() {
    let env = TestEnv::with_catalogue(|c: &mut Config| {
        c.sweeper.stall_after = Duration::from_millis(500);
    })
    .await;
    let pool = env.db().await;
    // Two jobs whose task messages were lost; the first one's stored
    // request cannot be read back (a row written by a broken release).
    let broken = seed_job(&pool, "broken-1", "brand.id", &[(None, None)]).await;
    sqlx::query("UPDATE jobs SET request = '{\"not\": \"a request\"}' WHERE id = $1")
        .bind(broken.id)
        .execute(&pool)
        .await
        .unwrap();
    let fine = seed_job(&pool, "fine-1", "brand.id", &[(None, None)]).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let sweep = sweeper(&env).await.sweep_once().await.unwrap().unwrap();
    assert_eq!(sweep.failures, 1, "{sweep:?}");
    assert_eq!(sweep.tasks_republished, 1, "the good job's task: {sweep:?}");
    let tasks = env.take(names::PARTITIONS, 1, Duration::from_secs(5)).await;
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].json()["jobId"], fine.id.to_string());
}

async fn fleet_out(env: &TestEnv, args: &[&str], vars: &[(&str, &str)]) -> (bool, String, String) {
    let out = tokio::process::Command::new(fleet_bin())
        .args(args)
        .envs(env.env_vars())
        .envs(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn jobs_are_found_by_request_id_or_id_prefix_and_listed_by_state_as_json() {
    let env = TestEnv::new().await;
    let pool = env.db().await;
    let job = seed_job(&pool, "find-me-1", "brand.id", &[(None, None)]).await;
    let prefix = &job.id.to_string()[..8];
    for key in ["find-me-1", prefix] {
        let (ok, out, err) = fleet_out(&env, &["jobs", "show", key], &[]).await;
        assert!(ok, "{err}");
        assert!(out.contains(&job.id.to_string()), "{out}");
    }
    let (ok, out, err) =
        fleet_out(&env, &["jobs", "list", "--state", "running", "--json"], &[]).await;
    assert!(ok, "{err}");
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["request_id"], "find-me-1");
    assert!(err.contains("PostgreSQL:"), "names what it reads: {err}");
    let (ok, out, _) = fleet_out(
        &env,
        &["jobs", "list", "--state", "completed", "--json"],
        &[],
    )
    .await;
    assert!(ok && out.trim().is_empty(), "{out}");
    // Pointed at a database without the fleet's tables, it says so rather
    // than "no jobs", and creates nothing there.
    let (ok, _, err) = fleet_out(
        &env,
        &["jobs", "list"],
        &[(
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/postgres",
        )],
    )
    .await;
    assert!(!ok, "{err}");
    assert!(err.contains("no fleet tables"), "{err}");
}
