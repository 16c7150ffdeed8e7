//! SPEC §8: a worker process serves `/metrics` and `/healthz`, and the
//! management UI names its connections and consumers after the worker.

use std::process::Stdio;
use std::time::Duration;

use fleet_shared::topology::names;

use crate::common::*;

/// The value of `metric{labels…}` in Prometheus text where every `(k, v)`
/// of `want` is among the labels; `None` when no such series exists.
fn sample(text: &str, metric: &str, want: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(metric)?.strip_prefix('{')?;
            let (labels, value) = rest.split_once('}')?;
            let has = |k: &str, v: &str| labels.split(',').any(|kv| kv == format!("{k}=\"{v}\""));
            want.iter()
                .all(|(k, v)| has(k, v))
                .then(|| value.trim().parse::<f64>().ok())
                .flatten()
        })
        .next()
}

#[tokio::test]
async fn an_ingest_process_counts_its_outcomes_and_reports_healthy() {
    let env = TestEnv::new().await;
    const VALID: usize = 5;
    const INVALID: usize = 3;
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = tokio::process::Command::new(fleet_bin())
        .args(["run", "ingest"])
        .envs(env.env_vars())
        .env("FLEET_WORKER_METRICS_LISTEN", &addr)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn fleet run ingest");
    for i in 0..VALID {
        let body = format!(
            r#"{{"contentId": {}, "event": "created", "quantity": 5}}"#,
            1 + i
        );
        env.publish("source.stock", "", body.as_bytes()).await;
    }
    for _ in 0..INVALID {
        env.publish("source.stock", "", b"not json").await;
    }
    let http = reqwest::Client::new();
    let metrics_url = format!("http://{addr}/metrics");
    let want = |outcome: &'static str| {
        [
            ("worker", "ingest"),
            ("queue", "source.stock"),
            ("outcome", outcome),
        ]
    };
    // Processed: every event became a request or a dead letter, and the counters caught up.
    let text = eventually(
        Duration::from_secs(30),
        "ingest to process every source event",
        || async {
            let dead = env.depth(&names::dlq("source.stock")).await as usize;
            let requests = env.depth(names::FAST_LANE).await as usize;
            if dead < INVALID || requests < VALID {
                return None;
            }
            let text = http
                .get(&metrics_url)
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            let done = sample(&text, "fleet_messages_total", &want("done")).unwrap_or(0.0);
            let dl = sample(&text, "fleet_messages_total", &want("dead_lettered")).unwrap_or(0.0);
            (done + dl >= (VALID + INVALID) as f64).then_some(text)
        },
    )
    .await;
    assert_eq!(
        sample(&text, "fleet_messages_total", &want("done")),
        Some(VALID as f64),
        "done counter:\n{text}"
    );
    assert_eq!(
        sample(&text, "fleet_messages_total", &want("dead_lettered")),
        Some(INVALID as f64),
        "dead_lettered counter:\n{text}"
    );
    assert_eq!(
        sample(&text, "fleet_messages_total", &want("retried")),
        None,
        "nothing was retried"
    );
    assert!(
        text.contains("fleet_message_handling_seconds_bucket"),
        "handling-time histogram is exported"
    );
    assert_eq!(env.depth(names::FAST_LANE).await as usize, VALID);
    assert_eq!(
        env.depth(&names::dlq("source.stock")).await as usize,
        INVALID
    );

    let health = http
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .expect("GET /healthz");
    assert_eq!(health.status().as_u16(), 200);
    let report: serde_json::Value = health.json().await.expect("/healthz answers JSON");
    assert_eq!(report["ok"], serde_json::json!(true), "{report}");
    assert_eq!(
        report["checks"]["broker"]["ok"],
        serde_json::json!(true),
        "{report}"
    );

    // The management UI tells who is connected and who consumes.
    let vhost = env.vhost.clone();
    let (connections, consumers) = eventually(
        Duration::from_secs(20),
        "the management API to list the ingest connection and consumers",
        || async {
            let conns = env.mgmt.connections(&vhost).await.ok()?;
            let consumers = env.mgmt.consumers(&vhost).await.ok()?;
            let names: Vec<String> = conns
                .iter()
                .filter_map(|c| c.client_name())
                .map(str::to_string)
                .collect();
            let tags: Vec<String> = consumers.into_iter().map(|c| c.consumer_tag).collect();
            (names.iter().any(|n| n.starts_with("fleet-ingest@")) && !tags.is_empty())
                .then_some((names, tags))
        },
    )
    .await;
    let ours: Vec<&String> = connections
        .iter()
        .filter(|n| !n.starts_with("fleet-test "))
        .collect();
    assert!(
        ours.iter().all(|n| n.starts_with("fleet-ingest@")),
        "every worker connection is named after the worker: {ours:?}"
    );
    assert!(
        consumers.iter().all(|t| t.starts_with("fleet-ingest@")),
        "every consumer tag names the worker: {consumers:?}"
    );
    assert!(
        consumers.iter().any(|t| t.ends_with(":source.stock")),
        "a consumer tag names its queue: {consumers:?}"
    );

    // `fleet status` shows the same picture once the management API's
    // statistics (emitted every few seconds) caught up.
    // Table cells are separated by `│` at the edges and `┆` inside.
    let cells = |l: &str| -> Vec<String> {
        l.split(['│', '┆'])
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect()
    };
    let find_row = |out: &str, queue: &str| {
        out.lines()
            .map(cells)
            .find(|c| c.first().map(String::as_str) == Some(queue))
    };
    let consumers = fleet_workers::ingest::Ingest::queues().len().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let stdout = loop {
        let out = tokio::process::Command::new(fleet_bin())
            .arg("status")
            .envs(env.env_vars())
            .output()
            .await
            .expect("run fleet status");
        // Exit 2 is status's "unhealthy" (only ingest runs here, so the
        // other workers' queues have no consumer); its report is printed.
        assert!(
            out.status.success() || out.status.code() == Some(2),
            "fleet status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        // Each queue's and connection's numbers arrive separately: wait for all.
        let caught_up = find_row(&stdout, "source.stock.dlq")
            .is_some_and(|dlq| dlq[1] == INVALID.to_string())
            && find_row(&stdout, "source.stock").is_some_and(|q| q[4] == "1")
            && stdout
                .lines()
                .map(cells)
                .any(|c| c.len() >= 5 && c[2] == "ingest" && c[4] == consumers);
        if caught_up || std::time::Instant::now() > deadline {
            break stdout;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let row = |queue: &str| find_row(&stdout, queue);
    let dlq = row("source.stock.dlq").unwrap_or_else(|| panic!("dlq row in:\n{stdout}"));
    assert_eq!(dlq[1], INVALID.to_string(), "dlq depth in:\n{stdout}");
    let source = row("source.stock").unwrap_or_else(|| panic!("source row in:\n{stdout}"));
    assert_eq!(source[1], "0", "source queue drained:\n{stdout}");
    assert_eq!(source[4], "1", "one consumer on source.stock:\n{stdout}");
    // A lane whose worker does not run is marked, and named under UNHEALTHY.
    let bulk = stdout
        .lines()
        .map(cells)
        .find(|c| {
            c.first()
                .is_some_and(|n| n == "⚠ invalidation.requests.bulk")
        })
        .unwrap_or_else(|| panic!("the bulk lane without its dispatcher is marked:\n{stdout}"));
    assert!(bulk[4].contains("expects dispatcher"), "{stdout}");
    assert!(stdout.contains("UNHEALTHY:"), "{stdout}");
    // One worker process: its workers and its consumers, one per source queue.
    let process = stdout
        .lines()
        .map(cells)
        .find(|c| c.len() >= 5 && c[2] == "ingest")
        .unwrap_or_else(|| panic!("the ingest process is listed:\n{stdout}"));
    assert_eq!(
        process[4], consumers,
        "one consumer per source queue in the process:\n{stdout}"
    );
    assert!(stdout.contains("Worker processes: 1"), "{stdout}");

    child.kill().await.expect("stop the ingest process");
}

/// Runs `promtool check metrics` on a Prometheus text page.
async fn promtool_check(text: &str) -> (bool, String) {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; scripts/services.sh installs it)");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

#[tokio::test]
async fn a_dispatcher_logs_each_message_with_its_request_and_serves_probes_and_valid_metrics() {
    // Search is nowhere: the dispatcher is alive but not ready.
    let env = TestEnv::with(|c| c.search.url = format!("http://127.0.0.1:{}", free_port())).await;
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = tokio::process::Command::new(fleet_bin())
        .args(["--log-format", "json", "run", "dispatcher"])
        .envs(env.env_vars())
        .env("FLEET_WORKER_METRICS_LISTEN", &addr)
        .env("FLEET_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn fleet run dispatcher");
    let forbidden = br#"{"requestId": "log-me-1", "parameterIds": [1], "parameterName": "price.amount", "invalidationType": "PRICE"}"#;
    env.publish(names::REQUESTS, "price", forbidden).await;
    env.take(&names::dlq(names::FAST_LANE), 1, Duration::from_secs(20))
        .await;

    let http = reqwest::Client::new();
    let live = http
        .get(format!("http://{addr}/livez"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status().as_u16(), 200, "alive although search is down");
    let ready = http
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 503, "not ready: search is down");
    let report: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(
        report["checks"]["search"]["ok"],
        serde_json::json!(false),
        "{report}"
    );
    assert_eq!(
        report["checks"]["broker"]["ok"],
        serde_json::json!(true),
        "{report}"
    );

    let text = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("# HELP fleet_messages_total"), "{text}");
    // The dispatcher's two search limits are reported apart: an operator
    // sees the fast lane's bound, not whichever limiter wrote last.
    let initial = env.config.search.concurrency_bounds().initial as f64;
    for limiter in ["shared", "fast_lane"] {
        let want = [("limiter", limiter)];
        assert_eq!(
            sample(&text, "fleet_search_concurrency_limit", &want),
            Some(initial),
            "{limiter}: {text}"
        );
        assert_eq!(
            sample(&text, "fleet_search_in_flight", &want),
            Some(0.0),
            "{limiter}: {text}"
        );
    }
    let (ok, said) = promtool_check(&text).await;
    assert!(ok, "promtool check metrics: {said}\n{text}");

    // The log: JSON lines, no colour codes, and the line about the dead
    // letter names the request it was about.
    child.start_kill().unwrap();
    let out = child.wait_with_output().await.unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        !log.contains('\u{1b}'),
        "no ANSI colour when not a terminal"
    );
    let line: serde_json::Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["error_class"] == "forbidden_field")
        .unwrap_or_else(|| panic!("no JSON line about the dead letter in:\n{log}"));
    assert_eq!(line["span"]["request_id"], "log-me-1", "{line}");
    assert_eq!(line["span"]["attempt"], 1, "{line}");
    assert_eq!(line["span"]["queue"], names::FAST_LANE, "{line}");
}
