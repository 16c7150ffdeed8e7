//! SPEC §9: `compose.yaml` (and the cluster variant) describe a stack the
//! `fleet` binary can actually run in. Containers cannot run here, so these
//! tests read the files the way Compose and the binary would: every service
//! the fleet needs, one service per worker kind running `fleet run <kind>`,
//! every connection variable set and pointing at a service of the file, and
//! every `FLEET_*` variable accepted by the real configuration loader.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use fleet_shared::config::{split_list, Config, SearchFlavor, URL_VARIABLES};
use fleet_workers::app::WorkerKind;
use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workers crate sits inside the workspace")
        .to_path_buf()
}

/// Parses a compose file, resolving anchors and `<<` merge keys as Compose does.
fn load(name: &str) -> Value {
    let path = repo_root().join(name);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut yaml: serde_norway::Value =
        serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{name} is not YAML: {e}"));
    yaml.apply_merge()
        .unwrap_or_else(|e| panic!("{name}: merge keys: {e}"));
    serde_json::to_value(&yaml).unwrap_or_else(|e| panic!("{name}: not JSON-shaped: {e}"))
}

fn services(doc: &Value) -> &serde_json::Map<String, Value> {
    doc["services"].as_object().expect("a `services` mapping")
}

/// A service's environment, from either the mapping or the `KEY=VALUE` list form.
fn environment(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect(),
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv.to_string(), String::new()),
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

fn command(service: &Value) -> Vec<String> {
    match &service["command"] {
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

fn image(service: &Value) -> &str {
    service["image"].as_str().unwrap_or_default()
}

/// The services a worker waits for, with their conditions.
fn depends_on(service: &Value) -> BTreeMap<String, String> {
    match &service["depends_on"] {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| {
                let c = v["condition"].as_str().unwrap_or("service_started");
                (k.clone(), c.to_string())
            })
            .collect(),
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .map(|s| (s.to_string(), "service_started".to_string()))
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// The worker services, keyed by the worker kind they run.
fn workers(doc: &Value) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, s) in services(doc) {
        let cmd = command(s);
        if cmd.len() >= 2 && cmd[0] == "fleet" && cmd[1] == "run" {
            for kind in &cmd[2..] {
                out.entry(kind.clone()).or_default().push(name.clone());
            }
        }
    }
    out
}

/// Checks shared by both files; returns the problems found (empty = fine).
fn problems(file: &str, doc: &Value) -> Vec<String> {
    let svc = services(doc);
    let names: BTreeSet<&str> = svc.keys().map(String::as_str).collect();
    let mut bad = Vec::new();

    // The backing services, each with a health check workers can wait on.
    for (what, prefix) in [
        (
            "Elasticsearch 8",
            "docker.elastic.co/elasticsearch/elasticsearch:8",
        ),
        ("RabbitMQ", "rabbitmq:"),
        ("PostgreSQL 16", "postgres:16"),
        ("Redis 7", "redis:7"),
    ] {
        let found: Vec<(&String, &Value)> = svc
            .iter()
            .filter(|(_, s)| image(s).starts_with(prefix))
            .collect();
        if found.is_empty() {
            bad.push(format!("{file}: no {what} service (image {prefix}…)"));
        }
        for (n, s) in found {
            if s["healthcheck"]["test"].is_null() {
                bad.push(format!("{file}: service {n} ({what}) has no health check"));
            }
            if prefix == "rabbitmq:" && !image(s).contains("management") {
                bad.push(format!(
                    "{file}: service {n} lacks the management plugin image"
                ));
            }
        }
    }

    let by_kind = workers(doc);
    for kind in WorkerKind::ALL {
        if !by_kind.contains_key(kind.name()) {
            bad.push(format!(
                "{file}: no service runs `fleet run {}`",
                kind.name()
            ));
        }
    }
    let known: BTreeSet<&str> = WorkerKind::ALL.iter().map(|k| k.name()).collect();
    for (kind, services) in &by_kind {
        if !known.contains(kind.as_str()) {
            bad.push(format!(
                "{file}: {services:?} run unknown worker kind {kind:?}"
            ));
        }
    }

    for service_name in by_kind.values().flatten() {
        let s = &svc[service_name];
        let env = environment(s);
        let deps = depends_on(s);
        if s["build"].is_null() && !image(s).starts_with("fleet") {
            bad.push(format!(
                "{file}: worker {service_name} neither builds nor uses the fleet image"
            ));
        }
        for (var, _, _) in URL_VARIABLES {
            let Some(list) = env.get(*var) else {
                bad.push(format!("{file}: worker {service_name} does not set {var}"));
                continue;
            };
            // The broker's variables may list a cluster's nodes.
            for url in split_list(list) {
                let host = match reqwest::Url::parse(url) {
                    Ok(u) => u.host_str().unwrap_or_default().to_string(),
                    Err(e) => {
                        bad.push(format!(
                            "{file}: worker {service_name}: {var}={url:?} is not a URL: {e}"
                        ));
                        continue;
                    }
                };
                if !names.contains(host.as_str()) {
                    bad.push(format!(
                        "{file}: worker {service_name}: {var} points at host {host:?}, which is no service of the file"
                    ));
                }
            }
        }
        for (dep, condition) in &deps {
            match svc.get(dep) {
                None => bad.push(format!("{file}: worker {service_name} depends on missing service {dep}")),
                Some(d) if !d["healthcheck"]["test"].is_null() && condition != "service_healthy" => {
                    bad.push(format!(
                        "{file}: worker {service_name} waits for {dep} with {condition}, not service_healthy"
                    ))
                }
                Some(_) => {}
            }
        }
        // The broker is the one dependency every worker has (every node of it).
        let amqp = env.get("AMQP_URL").cloned().unwrap_or_default();
        for node in split_list(&amqp) {
            let Ok(url) = reqwest::Url::parse(node) else {
                continue;
            };
            let host = url.host_str().unwrap_or_default();
            if !deps.contains_key(host) {
                bad.push(format!(
                    "{file}: worker {service_name} does not wait for the broker {host}"
                ));
            }
        }
        // The real loader: a FLEET_* typo or a bad value fails here as it
        // would fail the container at start-up.
        match Config::load_from(None, env.clone()) {
            Ok(c) => {
                if c.search.flavor != SearchFlavor::Elasticsearch {
                    bad.push(format!("{file}: worker {service_name} does not set FLEET_SEARCH_FLAVOR=elasticsearch"));
                }
                if !c.worker.metrics_listen.starts_with("0.0.0.0:") {
                    bad.push(format!(
                        "{file}: worker {service_name} serves /metrics on {:?}, unreachable from other containers",
                        c.worker.metrics_listen
                    ));
                }
            }
            Err(e) => bad.push(format!(
                "{file}: worker {service_name}: configuration refused: {e}"
            )),
        }
    }
    bad
}

#[test]
fn compose_yaml_runs_every_worker_against_services_it_defines() {
    let doc = load("compose.yaml");
    let bad = problems("compose.yaml", &doc);
    assert!(bad.is_empty(), "compose.yaml:\n  {}", bad.join("\n  "));
    // Scale-out where it makes sense: the busy, stateless workers.
    for name in ["dispatcher", "partition"] {
        let replicas = services(&doc)[name]["deploy"]["replicas"]
            .as_u64()
            .unwrap_or(1);
        assert!(replicas >= 2, "{name} runs {replicas} replica(s)");
    }
}

#[test]
fn the_cluster_file_forms_a_three_node_cluster_and_uses_quorum_queues() {
    let doc = load("compose.cluster.yaml");
    let bad = problems("compose.cluster.yaml", &doc);
    assert!(
        bad.is_empty(),
        "compose.cluster.yaml:\n  {}",
        bad.join("\n  ")
    );
    let svc = services(&doc);
    let nodes: Vec<(&String, &Value)> = svc
        .iter()
        .filter(|(_, s)| image(s).starts_with("rabbitmq:"))
        .collect();
    assert_eq!(nodes.len(), 3, "three RabbitMQ nodes");
    let cookies: BTreeSet<String> = nodes
        .iter()
        .map(|(_, s)| {
            environment(s)
                .get("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS")
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(cookies.len(), 1, "one shared Erlang cookie: {cookies:?}");
    assert!(
        cookies.iter().all(|c| c.contains("-setcookie")),
        "{cookies:?}"
    );
    // Classic peer discovery names exactly the three nodes by their host names.
    let conf = doc["configs"]["rabbitmq-conf"]["content"]
        .as_str()
        .expect("an inline rabbitmq.conf");
    assert!(conf.contains("cluster_formation.peer_discovery_backend = classic_config"));
    let listed: BTreeSet<String> = conf
        .lines()
        .filter(|l| {
            l.trim_start()
                .starts_with("cluster_formation.classic_config.nodes.")
        })
        .filter_map(|l| l.split_once('=').map(|(_, v)| v.trim().to_string()))
        .collect();
    let hosts: BTreeSet<String> = nodes
        .iter()
        .map(|(n, s)| format!("rabbit@{}", s["hostname"].as_str().unwrap_or(n)))
        .collect();
    assert_eq!(listed, hosts, "peer discovery lists the nodes");
    for (n, s) in &nodes {
        let mounted = s["configs"].as_array().into_iter().flatten().any(|c| {
            c["source"] == "rabbitmq-conf" && c["target"] == "/etc/rabbitmq/rabbitmq.conf"
        });
        assert!(mounted, "node {n} mounts rabbitmq.conf");
    }
    for service_name in workers(&doc).values().flatten() {
        let env = environment(&svc[service_name]);
        let c = Config::load_from(None, env).expect("checked above");
        assert_eq!(
            c.topology.queue_type.as_deref(),
            Some("quorum"),
            "{service_name} declares quorum queues"
        );
        // Every node, so a worker moves on by itself when it loses one.
        let listed: BTreeSet<String> = c
            .amqp
            .nodes()
            .iter()
            .filter_map(|u| reqwest::Url::parse(u).ok())
            .filter_map(|u| u.host_str().map(|h| format!("rabbit@{h}")))
            .collect();
        assert_eq!(listed, hosts, "{service_name}'s AMQP_URL lists every node");
    }
    for (n, s) in &nodes {
        assert!(
            s["ulimits"]["nofile"]["soft"].as_u64().unwrap_or(0) >= 20_000,
            "node {n} raises its open-files limit"
        );
    }
}

#[test]
fn a_typo_in_a_fleet_variable_is_caught() {
    // The check above is only worth something if the loader refuses typos.
    let mut doc = load("compose.yaml");
    doc["services"]["retry"]["environment"]["FLEET_RETRY_DELAYY"] = Value::String("5s".into());
    let bad = problems("compose.yaml", &doc);
    assert!(
        bad.iter().any(|p| p.contains("FLEET_RETRY_DELAYY")),
        "{bad:?}"
    );
    let mut doc = load("compose.yaml");
    doc["services"]["ingest"]["environment"]["AMQP_URL"] =
        Value::String("amqp://fleet:fleet@rabbit:5672/%2f".into());
    let bad = problems("compose.yaml", &doc);
    assert!(bad.iter().any(|p| p.contains("\"rabbit\"")), "{bad:?}");
}

#[test]
fn the_dockerfile_builds_the_fleet_binary_into_a_slim_image() {
    let path = repo_root().join("Dockerfile");
    let text = std::fs::read_to_string(&path).expect("a Dockerfile at the repository root");
    assert!(text.contains("FROM rust:1.95-bookworm AS build"), "{text}");
    assert!(text.contains("cargo build --release"), "{text}");
    assert!(text.contains("-p fleet-workers --bin fleet"), "{text}");
    // The benchmark and the test kit are development crates, not in the image.
    assert!(!text.contains("fleet-bench"), "{text}");
    assert!(text.contains("FROM debian:bookworm-slim"), "{text}");
    assert!(text.contains("ca-certificates"), "{text}");
    assert!(text.contains("/usr/local/bin/fleet"), "{text}");
    // Every worker service health-checks with curl, so the image must ship it.
    assert!(text.contains(" curl"), "{text}");
}
