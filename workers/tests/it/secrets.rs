//! No password ever shows: every command and a running worker, with a
//! password in every URL, and everything they print, log and serve is
//! searched for it.

use std::process::Stdio;
use std::time::Duration;

use fleet_shared::broker::redact;
use fleet_shared::topology::names;

use crate::common::*;

#[test]
fn redact_hides_the_password_of_good_broken_and_listed_urls() {
    for (url, secret) in [
        ("amqp://u:Pw1@host:5672/vh", "Pw1"),
        ("amqp://u:Pw2@a:5672/vh,amqp://u:Pw3@b:5672/vh", "Pw2"),
        ("amqp://u:Pw2@a:5672/vh,amqp://u:Pw3@b:5672/vh", "Pw3"),
        ("http://u:Pw4@[broken:9200", "Pw4"),
        (
            "postgres://postgres:Pw5@127.0.0.1:5432/db?sslmode=require",
            "Pw5",
        ),
    ] {
        let shown = redact(url);
        assert!(!shown.contains(secret), "{url} -> {shown}");
        assert!(shown.contains("***"), "{url} -> {shown}");
    }
    assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
}

#[tokio::test]
async fn no_command_or_worker_shows_a_password() {
    let env = TestEnv::with_catalogue(|_| {}).await;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let rabbit_pw = format!("RmqS3cret{}", &tag[..8]);
    let pg_pw = format!("PgS3cret{}", &tag[8..16]);
    let redis_pw = format!("RedisS3cret{}", &tag[16..24]);
    let search_pw = format!("EsS3cret{}", &tag[24..32]);
    let secrets = [&rabbit_pw, &pg_pw, &redis_pw, &search_pw];

    // A broker user of this test's own, with a password to hide.
    let user = format!("fleet-secret-{}", &tag[..8]);
    env.mgmt
        .put_user(&user, &rabbit_pw, "administrator")
        .await
        .unwrap();
    env.mgmt.grant_all(&env.vhost, &user).await.unwrap();

    let mut config = env.config.clone();
    let with_password = |url: &str, user: &str, pw: &str| -> String {
        let mut u = reqwest::Url::parse(url).unwrap();
        u.set_username(user).unwrap();
        u.set_password(Some(pw)).unwrap();
        u.to_string()
    };
    config.amqp.url = with_password(&config.amqp.url, &user, &rabbit_pw);
    config.amqp.management_url = with_password(MGMT_URL, &user, &rabbit_pw);
    // PostgreSQL trusts loopback and Redis's default user has no password,
    // so any password works and must still never be shown.
    config.database.url = with_password(&config.database.url, "postgres", &pg_pw);
    config.redis.url = with_password(&config.redis.url, "default", &redis_pw);
    config.search.url = with_password(&config.search.url, "elastic", &search_pw);
    let vars = config.to_env();

    let mut outputs: Vec<(String, String)> = Vec::new();
    let run = |args: Vec<String>| {
        let vars = vars.clone();
        async move {
            let out = tokio::process::Command::new(fleet_bin())
                .args(&args)
                .envs(vars)
                .env("FLEET_LOG", "debug,lapin=info")
                .stdin(Stdio::null())
                .output()
                .await
                .unwrap();
            (
                args.join(" "),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            )
        }
    };
    let commands: Vec<Vec<&str>> = vec![
        vec!["config"],
        vec!["topology", "plan"],
        vec!["dlq", "list"],
        vec!["status"],
        vec!["status", "--json"],
        vec!["dlq", "list", "--all", "--json"],
        vec!["jobs", "list"],
        vec!["requests", "show", "no-such-request"],
        vec!["topology", "export", "--users"],
        vec!["dlq", "peek", "invalidation.parked"],
        vec![
            "publish",
            "--type",
            "PRICE",
            "--param",
            "id",
            "--ids",
            "1,2",
            "--index-keys",
            "trTR",
        ],
        // Errors must not echo the URL either.
        vec![
            "--database-url",
            "postgres://postgres:PgBadS3cret@127.0.0.1:1/x",
            "jobs",
            "list",
        ],
        vec![
            "--search-url",
            "http://u:EsBadS3cret@[broken",
            "run",
            "dispatcher",
        ],
        vec![
            "--management-url",
            "http://u:MgmtBadS3cret@[broken",
            "status",
        ],
        vec![
            "--amqp-url",
            "amqp://u:AmqpBadS3cret@127.0.0.1:1/x",
            "dlq",
            "list",
        ],
    ];
    for args in commands {
        outputs.push(run(args.into_iter().map(String::from).collect()).await);
    }

    // A running worker: its log while it handles a request, its metrics
    // and its probes.
    let addr = format!("127.0.0.1:{}", free_port());
    let child = tokio::process::Command::new(fleet_bin())
        .args(["run", "dispatcher", "partition", "retry", "sweeper"])
        .envs(vars.clone())
        .env("FLEET_WORKER_METRICS_LISTEN", &addr)
        .env("FLEET_LOG", "debug,lapin=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    env.consumed(names::FAST_LANE).await;
    env.publish(
        names::REQUESTS,
        "price",
        br#"{"requestId": "secret-1", "parameterIds": [40], "parameterName": "brand.id", "invalidationType": "PRICE", "indexKeys": ["trTR"]}"#,
    )
    .await;
    env.take("productcontent_price_tr_tr", 1, Duration::from_secs(20))
        .await;
    let http = reqwest::Client::new();
    for path in ["metrics", "livez", "readyz"] {
        let body = http
            .get(format!("http://{addr}/{path}"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        outputs.push((format!("GET /{path}"), body));
    }
    let mut child = child;
    child.start_kill().unwrap();
    let out = child.wait_with_output().await.unwrap();
    outputs.push((
        "run dispatcher partition retry sweeper".into(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ));

    let all_secrets: Vec<&str> = secrets
        .iter()
        .map(|s| s.as_str())
        .chain([
            "PgBadS3cret",
            "EsBadS3cret",
            "MgmtBadS3cret",
            "AmqpBadS3cret",
        ])
        .collect();
    for (what, text) in &outputs {
        assert!(
            !text.is_empty() || what.starts_with("GET"),
            "{what} said nothing"
        );
        for s in &all_secrets {
            assert!(!text.contains(s), "`{what}` shows a password:\n{text}");
        }
    }
    // The commands really ran with these URLs (not a silent failure).
    let config_out = &outputs[0].1;
    assert!(config_out.contains(&user), "{config_out}");
    assert!(config_out.contains("***"), "{config_out}");
    env.mgmt.delete_user(&user).await.unwrap();
}
