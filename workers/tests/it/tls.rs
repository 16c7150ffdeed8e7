//! TLS on every client (SPEC §11): `amqps://`, PostgreSQL
//! `sslmode=verify-full`, `rediss://` and `https://` (search and the
//! management API), each against a real server with TLS on this machine and
//! a private CA made by the test (`fleet_testkit::tls`). The machine's
//! shared services are never reconfigured: TLS servers are the test's own
//! (a RabbitMQ node, a PostgreSQL cluster, a redis-server) or a `socat`
//! terminator in front of a plaintext one.
//!
//! The test process itself never has `SSL_CERT_FILE` set: its in-process
//! clients trust only the platform store, so every private CA is unknown to
//! them. `fleet` subprocesses get `SSL_CERT_FILE`, the way an operator gives it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use fleet_chaos::services::{PgCluster, RabbitNode, RedisServer};
use fleet_shared::broker::{self, Identity};
use fleet_shared::config::RedisConfig;
use fleet_shared::kv::Kv;
use fleet_shared::mgmt::Management;
use fleet_shared::search::Search;
use fleet_shared::topology::names;
use fleet_testkit::tls::{TestCa, TlsProxy};
use serde_json::Value;

use crate::common::*;

/// The shared plaintext broker, management API and osmem-server (tests).
const SHARED_AMQP_PORT: u16 = 5672;
const SHARED_MGMT_PORT: u16 = 15672;

/// A directory removed on drop (declared before what lives in it, so it
/// goes last).
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let random = uuid::Uuid::new_v4().simple().to_string();
        let dir = std::env::temp_dir().join(format!(
            "fleet-tls-{name}-{}-{}",
            std::process::id(),
            &random[..8]
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `ssl = on` with `ca`'s server certificate (the key a copy PostgreSQL owns).
fn pg_tls_conf(ca: &TestCa) -> String {
    let key = ca.key_for("postgres").unwrap();
    format!(
        "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
        ca.cert.display(),
        key.display()
    )
}

/// Asserts that `text` says `what`, and shows no password.
fn assert_says(text: &str, what: &[&str]) {
    for w in what {
        assert!(text.contains(w), "expected {w:?} in: {text}");
    }
    for secret in ["guest:guest", "S3cret"] {
        assert!(!text.contains(secret), "a password is shown: {text}");
    }
}

/// The port and path of a URL (an osmem clone: `http://127.0.0.1:<port>/<clone>`).
fn port_and_path(url: &str) -> (u16, String) {
    let u = reqwest::Url::parse(url).unwrap();
    let path = u.path().trim_end_matches('/').to_string();
    (u.port().unwrap(), path)
}

/// Runs `fleet <args>` with `vars`; returns success and stdout plus stderr.
async fn fleet(args: &[&str], vars: &[(String, String)]) -> (bool, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(fleet_bin())
            .args(args)
            .env_remove("SSL_CERT_FILE")
            .env_remove("SSL_CERT_DIR")
            .envs(vars.iter().cloned())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("fleet {args:?} did not finish within 60 s"))
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn amqps_to_a_plaintext_port_fails_and_never_falls_back_to_plaintext() {
    // The shared broker's plaintext listener, dialled as amqps://.
    let url = format!("amqps://guest:guest@127.0.0.1:{SHARED_AMQP_PORT}/%2f");
    let err = broker::connect(url.as_str(), &Identity::new("test"), "tls-test")
        .await
        .expect_err("amqps:// to a plaintext port must fail, never talk plaintext");
    assert_says(
        &err.to_string(),
        &["does not speak TLS", "amqps://guest:***@127.0.0.1"],
    );

    // The same from the command line: a clear error and a non-zero exit.
    let vars = vec![("AMQP_URL".to_string(), url)];
    let (ok, out) = fleet(&["topology", "apply"], &vars).await;
    assert!(
        !ok,
        "fleet topology apply over amqps:// to a plaintext port succeeded: {out}"
    );
    assert_says(&out, &["RabbitMQ", "does not speak TLS"]);

    // https:// to a plaintext HTTP server (the management API's) is refused
    // the same way.
    let search = Search::new(&fleet_shared::config::SearchConfig {
        url: format!("https://127.0.0.1:{SHARED_MGMT_PORT}"),
        ..Default::default()
    })
    .unwrap();
    let err = search.check_startup().await.unwrap_err().to_string();
    assert_says(&err, &["search cluster", "does not speak TLS"]);
}

#[tokio::test]
async fn each_client_refuses_a_certificate_from_an_unknown_ca_and_says_how_to_trust_it() {
    let dir = TempDir::new("unknown-ca");
    let ca = TestCa::create("unknown").unwrap();
    let identity = Identity::new("test");

    // RabbitMQ: TLS in front of the shared broker.
    let amqps = TlsProxy::start(&ca, SHARED_AMQP_PORT).unwrap();
    let url = format!("amqps://guest:guest@127.0.0.1:{}/%2f", amqps.port);
    let err = broker::connect(url.as_str(), &identity, "tls-test")
        .await
        .expect_err("an unknown CA must be refused")
        .to_string();
    assert_says(
        &err,
        &[
            "RabbitMQ",
            "certificate not trusted",
            "SSL_CERT_FILE",
            "amqps://guest:***@",
        ],
    );

    // The management API over https.
    let mgmt_tls = TlsProxy::start(&ca, SHARED_MGMT_PORT).unwrap();
    let mgmt =
        Management::new(&format!("https://guest:guest@127.0.0.1:{}", mgmt_tls.port)).unwrap();
    let err = mgmt.queues("/").await.unwrap_err().to_string();
    assert_says(
        &err,
        &["management API", "certificate not trusted", "SSL_CERT_FILE"],
    );

    // The search client over https, by host name (the certificate names
    // localhost); the handshake fails before any HTTP, so the terminator
    // may front any HTTP server.
    let search = Search::new(&fleet_shared::config::SearchConfig {
        url: format!("https://u:S3cret@localhost:{}", mgmt_tls.port),
        ..Default::default()
    })
    .unwrap();
    let err = search.check_startup().await.unwrap_err().to_string();
    assert_says(
        &err,
        &["search cluster", "certificate not trusted", "SSL_CERT_FILE"],
    );

    // Redis: a TLS-only redis-server of the test's own.
    let mut redis = RedisServer::start_tls(&dir.0, &ca.ca, &ca.cert, &ca.key)
        .await
        .unwrap();
    let err = Kv::connect(&RedisConfig {
        url: redis.url().replace("rediss://", "rediss://:S3cret@"),
        ..Default::default()
    })
    .await
    .err()
    .expect("an unknown CA must be refused")
    .to_string();
    assert_says(
        &err,
        &[
            "Redis",
            "certificate not trusted",
            "SSL_CERT_FILE",
            "rediss://",
        ],
    );
    redis.kill().await;
}

#[tokio::test]
async fn postgres_verify_full_trusts_sslrootcert_and_refuses_an_unknown_ca() {
    let ca = TestCa::create("pg").unwrap();
    let mut pg = PgCluster::create_with(&pg_tls_conf(&ca)).await.unwrap();
    let base = format!("postgres://postgres@localhost:{}/postgres", pg.port);

    // With the CA in the URL: verified, and the session is encrypted.
    let good = format!("{base}?sslmode=verify-full&sslrootcert={}", ca.ca.display());
    let pool = fleet_shared::db::connect(&good, 1)
        .await
        .unwrap_or_else(|e| panic!("verify-full with sslrootcert: {e}"));
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(ssl, "the session is not encrypted");
    pool.close().await;

    // Without it: the cluster's own CA is unknown (Debian's snakeoil, which
    // the system trusts, is not what this cluster serves).
    let err = fleet_shared::db::connect(&format!("{base}?sslmode=verify-full"), 1)
        .await
        .expect_err("an unknown CA must be refused")
        .to_string();
    assert_says(
        &err,
        &["PostgreSQL", "certificate not trusted", "sslrootcert"],
    );
    pg.remove().await;
}

/// The ids of `queue` until `expected` arrived (or 60 s passed).
async fn ids_of(env: &Sandbox, queue: &str, expected: usize) -> BTreeSet<i64> {
    env.collect_ids(queue, expected, Duration::from_secs(60))
        .await
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_runs_over_tls_to_every_service_with_a_private_ca() {
    // Declared first, dropped last: the node's files outlive the node.
    let node_dir = TempDir::new("rabbit");
    let redis_dir = TempDir::new("redis");
    let ca = TestCa::create("fleet").unwrap();

    let mut node =
        RabbitNode::prepare(&node_dir.0, &format!("fleettls{}", std::process::id())).unwrap();
    // The CA's files are world-readable: the `rabbitmq` user reads them.
    node.enable_tls(&ca.ca, &ca.cert, &ca.key).unwrap();
    // The slow starts side by side: the node, the cluster, the catalogue.
    let pg_conf = pg_tls_conf(&ca);
    let (started, pg, clone) = tokio::join!(
        node.start(),
        PgCluster::create_with(&pg_conf),
        catalogue_clone()
    );
    started.unwrap_or_else(|e| panic!("starting the TLS RabbitMQ node: {e:#}"));
    let mut pg = pg.unwrap();
    let mut redis = RedisServer::start_tls(&redis_dir.0, &ca.ca, &ca.cert, &ca.key)
        .await
        .unwrap();
    let (osmem_port, clone_path) = port_and_path(&clone);
    let search_tls = TlsProxy::start(&ca, osmem_port).unwrap();

    // The test's own view: the node's and cluster's plaintext listeners.
    let mut base = test_config();
    base.amqp.url = node.amqp_url();
    base.amqp.management_url = node.management_url();
    base.database.url = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port);
    let mut env = Sandbox::open(&base, "fleet-tls").await.unwrap();
    env.apply_topology().await;

    // The fleet's view: TLS only, the private CA given the usual ways.
    let mut tls = env.config.clone();
    tls.amqp.url = format!(
        "amqps://guest:guest@127.0.0.1:{}/{}",
        node.amqps_port.unwrap(),
        env.vhost
    );
    tls.amqp.management_url = format!(
        "https://guest:guest@localhost:{}",
        node.mgmt_tls_port.unwrap()
    );
    let db_url = format!("postgres://postgres@localhost:{}/{}", pg.port, env.db_name);
    tls.database.url = format!(
        "{db_url}?sslmode=verify-full&sslrootcert={}",
        ca.ca.display()
    );
    tls.redis.url = redis.url();
    tls.search.url = format!("https://localhost:{}{clone_path}", search_tls.port);
    let mut vars = tls.to_env();
    vars.push(("FLEET_LOG".into(), "info,lapin=off".into()));
    let mut trusted = vars.clone();
    trusted.push(("SSL_CERT_FILE".into(), ca.ca.display().to_string()));

    let log_path = node_dir.0.join("fleet.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut fleet_run = tokio::process::Command::new(fleet_bin())
        .args(["run", "dispatcher", "partition", "retry", "sweeper"])
        .env_remove("SSL_CERT_DIR")
        .envs(trusted.iter().cloned())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let log_text = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    tokio::select! {
        _ = env.consumed(names::FAST_LANE) => {}
        status = fleet_run.wait() => panic!(
            "fleet run exited ({status:?}): {}", log_text(&log_path)
        ),
    }

    // A split request (over the split limit: a job and its tasks in
    // PostgreSQL, done-marks in Redis, every page over https) and a small one.
    let split = expected_ids(|d| d.brand.id == 1);
    let small = expected_ids(|d| d.brand.id == 40);
    assert!(split.len() > 400, "brand 1 must be over the split limit");
    for (t, brand, id) in [("ASSORTMENT", 1, "tls-split"), ("PRICE", 40, "tls-small")] {
        let body = serde_json::to_vec(&serde_json::json!({
            "v": 1, "requestId": id, "parameterIds": [brand], "parameterName": "brand.id",
            "invalidationType": t, "indexKeys": ["trTR"],
        }))
        .unwrap();
        env.publish(names::REQUESTS, &t.to_ascii_lowercase(), &body)
            .await;
    }
    let got = ids_of(&env, "productcontent_assortment_tr_tr", split.len()).await;
    assert_eq!(
        got,
        split,
        "split request over TLS; fleet log: {}",
        log_text(&log_path)
    );
    let got = ids_of(&env, "productcontent_price_tr_tr", small.len()).await;
    assert_eq!(
        got,
        small,
        "small request over TLS; fleet log: {}",
        log_text(&log_path)
    );

    // The servers agree it was TLS: every fleet connection to the node (the
    // management API lists connections from its statistics, seconds late)…
    let http = reqwest::Client::new();
    let fleet_conns: Vec<Value> = eventually(
        Duration::from_secs(30),
        "the fleet's connections in the management API",
        || async {
            let conns: Vec<Value> = http
                .get(format!(
                    "http://127.0.0.1:{}/api/vhosts/{}/connections",
                    node.mgmt_port, env.vhost
                ))
                .basic_auth("guest", Some("guest"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let fleet: Vec<Value> = conns
                .into_iter()
                .filter(|c| {
                    let name = c["client_properties"]["connection_name"]
                        .as_str()
                        .unwrap_or("");
                    name.starts_with("fleet-") && !name.starts_with("fleet-test")
                })
                .collect();
            (!fleet.is_empty()).then_some(fleet)
        },
    )
    .await;
    assert!(
        fleet_conns.iter().all(|c| c["ssl"] == Value::Bool(true)),
        "a fleet connection without TLS: {fleet_conns:?}"
    );
    // …and every session on the fleet's database.
    let admin = sqlx::PgPool::connect(&base.database.url).await.unwrap();
    let (encrypted, all): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_activity a \
         JOIN pg_stat_ssl s USING (pid) WHERE a.datname = $1",
    )
    .bind(&env.db_name)
    .fetch_one(&admin)
    .await
    .unwrap();
    admin.close().await;
    assert!(
        all > 0 && encrypted == all,
        "{encrypted} of {all} database sessions use TLS"
    );

    // The management API over https (fleet status: amqps + https).
    // (Its exit status says whether the fleet is healthy: 2 here, as no
    // ingest worker consumes the source queues. What counts is that every
    // dependency answered over TLS.)
    let (_, out) = fleet(&["status"], &trusted).await;
    for dep in ["broker", "management", "postgresql", "redis", "search"] {
        assert!(
            out.lines().any(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.len() >= 2 && w[0] == dep && w[1] == "ok"
            }),
            "fleet status over TLS: {dep} not ok: {out}"
        );
    }
    // PostgreSQL trusting SSL_CERT_FILE alone (no sslrootcert in the URL).
    let mut ssl_cert_file_only = trusted.clone();
    ssl_cert_file_only.push((
        "DATABASE_URL".into(),
        format!("{db_url}?sslmode=verify-full"),
    ));
    let (ok, out) = fleet(&["jobs", "list"], &ssl_cert_file_only).await;
    assert!(ok, "fleet jobs list trusting SSL_CERT_FILE: {out}");

    // Without SSL_CERT_FILE the same URLs are refused, each with its fix.
    let (ok, out) = fleet(&["status"], &vars).await;
    assert!(!ok, "fleet status trusted an unknown CA: {out}");
    assert_says(&out, &["certificate not trusted", "SSL_CERT_FILE"]);
    let mut untrusted_db = vars.clone();
    untrusted_db.push((
        "DATABASE_URL".into(),
        format!("{db_url}?sslmode=verify-full"),
    ));
    let (ok, out) = fleet(&["jobs", "list"], &untrusted_db).await;
    assert!(!ok, "fleet jobs list trusted an unknown CA: {out}");
    assert_says(
        &out,
        &["PostgreSQL", "certificate not trusted", "sslrootcert"],
    );

    fleet_run.start_kill().unwrap();
    let _ = fleet_run.wait().await;
    let failed = env.remove().await;
    assert!(failed.is_empty(), "sandbox removal: {failed:?}");
    drop(search_tls);
    redis.kill().await;
    pg.remove().await;
    node.remove().await;
}
