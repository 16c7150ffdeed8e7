//! The README tells the truth: every command example runs, every
//! configuration row is a real key (and every key has a row), every metric
//! of the Monitoring section is one a worker exports (and every exported
//! metric is there), and the error-class table names every class the code
//! can put in `x-error-class`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_shared::config::{Config, URL_VARIABLES};
use fleet_workers::app::WorkerKind;

use crate::common::*;

/// Command lines of the README's `sh` blocks that a test cannot run, each
/// with why (matched as a prefix of the line).
const NOT_RUN: &[(&str, &str)] = &[
    (
        "scripts/run.sh",
        "installs and starts the machine's services, then runs the fleet until stopped",
    ),
    (
        "scripts/test.sh",
        "runs the whole test suite, this test included",
    ),
    (
        "cargo run --release -p fleet-chaos",
        "the fault suite: minutes long, with its own services (its CI variant is chaos::the_fleet_loses_nothing_while_every_part_of_it_fails)",
    ),
    (
        "cargo run --release -p fleet-bench",
        "the benchmark: minutes long, with its own osmem-server",
    ),
    ("fleet run", "runs workers until Ctrl-C (the tests run them in-process)"),
];

/// Variables that are the process's, not configuration keys.
const PROCESS_VARIABLES: &[&str] = &[
    "FLEET_CONFIG",
    "FLEET_LOG",
    "FLEET_LOG_FORMAT",
    "FLEET_OPERATOR",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn readme() -> String {
    std::fs::read_to_string(root().join("README.md")).unwrap()
}

/// The text of the `## title` section (up to the next `## `).
fn section(text: &str, title: &str) -> String {
    let start = text
        .find(&format!("\n## {title}\n"))
        .unwrap_or_else(|| panic!("README has no section {title:?}"));
    let rest = &text[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    rest[..end].to_string()
}

/// The lines of every ```sh block, comments and prompts removed.
fn sh_commands(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("```") {
            inside = !inside && t == "```sh";
            continue;
        }
        if !inside {
            continue;
        }
        let code = match t.find(" #") {
            Some(i) => &t[..i],
            None if t.starts_with('#') => "",
            None => t,
        };
        let code = code.trim().trim_start_matches("$ ").trim();
        if !code.is_empty() {
            out.push(code.to_string());
        }
    }
    out
}

/// Splits a command line the way sh would for these examples (quotes, no
/// expansions).
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true
            }
            (None, c) if c.is_whitespace() => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (None, c) => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Whether a README example ran as documented: exit 0, or for `fleet
/// status` the documented 2 ("something is unhealthy": in this sandbox only
/// a dispatcher runs, so the other workers' queues have no consumer) with its
/// report printed.
fn accepted(words: &[String], out: &std::process::Output) -> bool {
    out.status.success()
        || (words.get(1).map(String::as_str) == Some("status")
            && out.status.code() == Some(2)
            && String::from_utf8_lossy(&out.stdout).contains("UNHEALTHY"))
}

#[tokio::test]
async fn every_command_example_in_the_readme_runs() {
    let env = TestEnv::with_catalogue(|_| {}).await;
    let fleet = env.start(&[WorkerKind::Dispatcher]);
    env.consumed(fleet_shared::topology::names::FAST_LANE).await;
    let mut ran = Vec::new();
    let mut skipped = Vec::new();
    for line in sh_commands(&readme()) {
        if let Some((_, why)) = NOT_RUN.iter().find(|(prefix, _)| line.starts_with(prefix)) {
            skipped.push(format!("{line}  ({why})"));
            continue;
        }
        let w = words(&line);
        assert!(
            w[0] == "fleet" || w[0].ends_with("/fleet"),
            "README example {line:?} is neither a fleet command nor in NOT_RUN with a reason"
        );
        // An example may look at what an earlier one published: give the
        // dispatcher a few seconds to get there.
        let mut tries = 0;
        let out = loop {
            let out = tokio::process::Command::new(fleet_bin())
                .args(&w[1..])
                .envs(env.env_vars())
                .output()
                .await
                .unwrap();
            tries += 1;
            if accepted(&w, &out) || tries == 20 {
                break out;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        assert!(
            accepted(&w, &out),
            "README example {line:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ran.push(line);
        // Let the dispatcher take what an example published before the
        // next example looks at it.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    println!(
        "ran {} README examples; skipped:\n  {}",
        ran.len(),
        skipped.join("\n  ")
    );
    assert!(ran.len() >= 5, "{ran:?}");
    fleet.stop().await.unwrap();
}

/// `FLEET_SECTION_KEY` (or its URL variable) of every configuration key.
fn config_variables() -> BTreeSet<String> {
    let value = serde_json::to_value(Config::default()).unwrap();
    let mut out = BTreeSet::new();
    for (section, keys) in value.as_object().unwrap() {
        for key in keys.as_object().unwrap().keys() {
            let var = URL_VARIABLES
                .iter()
                .find(|(_, s, k)| s == section && k == key)
                .map(|(v, _, _)| v.to_string())
                .unwrap_or_else(|| format!("FLEET_{section}_{key}").to_ascii_uppercase());
            out.insert(var);
        }
    }
    out
}

/// The backticked variables of a piece of text; `` `_MAX` `` after
/// `` `FLEET_SEARCH_CONCURRENCY_MIN` `` stands for `FLEET_SEARCH_CONCURRENCY_MAX`.
fn variables(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (i, part) in text.split('`').enumerate() {
        if i % 2 == 0 {
            continue;
        }
        let is_var = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        };
        if part.starts_with('_') && is_var(part) {
            if let Some(prev) = out.last() {
                let stem = &prev[..prev.rfind('_').unwrap()];
                out.push(format!("{stem}{part}"));
            }
        } else if is_var(part) && part.contains('_') {
            out.push(part.to_string());
        }
    }
    out
}

#[test]
fn every_configuration_row_is_a_key_and_every_key_has_a_row() {
    let text = section(&readme(), "Configuration");
    let keys = config_variables();
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("| `")).collect();
    let mut documented = BTreeSet::new();
    for row in &rows {
        let first = row.split('|').nth(1).unwrap();
        for var in variables(first) {
            assert!(
                keys.contains(&var) || PROCESS_VARIABLES.contains(&var.as_str()),
                "the Configuration table's row {var} is not a configuration key (`fleet config` lists them)"
            );
            documented.insert(var);
        }
    }
    // The connection variables are documented in the section's prose.
    documented.extend(variables(&text));
    let missing: Vec<&String> = keys.iter().filter(|k| !documented.contains(*k)).collect();
    assert!(
        missing.is_empty(),
        "configuration keys without a row in the README's Configuration table: {missing:?}"
    );
}

/// `fleet_…` names in a text.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("fleet_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit()))
            .unwrap_or(tail.len());
        // `fleet_…` in prose is no name.
        if !tail[..end].ends_with('_') {
            out.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    out
}

/// Every `metrics::counter!("fleet_…")` (gauge, histogram) call in the code.
fn emitted_in_code() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for dir in ["shared/src", "workers/src"] {
        for file in rust_files(&root().join(dir)) {
            let text = std::fs::read_to_string(&file).unwrap();
            for macro_name in ["counter!(", "gauge!(", "histogram!("] {
                for (i, _) in text.match_indices(macro_name) {
                    let after = text[i + macro_name.len()..].trim_start();
                    if let Some(lit) = after.strip_prefix('"') {
                        let name = &lit[..lit.find('"').unwrap()];
                        out.insert(name.to_string());
                    }
                }
            }
        }
    }
    out
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn every_metric_of_the_monitoring_section_is_exported_and_every_exported_one_is_documented() {
    let documented = metric_names(&section(&readme(), "Monitoring"));
    let described: BTreeSet<String> = fleet_shared::telemetry::METRICS
        .iter()
        .map(|m| m.name.to_string())
        .collect();
    assert_eq!(
        emitted_in_code(),
        described,
        "every metric the code records is described (telemetry::METRICS), and only those"
    );
    assert_eq!(
        documented, described,
        "the README's Monitoring section names exactly the metrics a worker exports"
    );
    // A real worker's /metrics: nothing there the README does not name.
    let env = TestEnv::new().await;
    let port = free_port();
    let mut vars = env.env_vars();
    vars.retain(|(k, _)| k != "FLEET_WORKER_METRICS_LISTEN");
    vars.push((
        "FLEET_WORKER_METRICS_LISTEN".into(),
        format!("127.0.0.1:{port}"),
    ));
    let mut child = tokio::process::Command::new(fleet_bin())
        .args(["run", "dispatcher"])
        .envs(vars)
        .kill_on_drop(true)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    env.consumed(fleet_shared::topology::names::FAST_LANE).await;
    env.publish(
        fleet_shared::topology::names::REQUESTS,
        "price",
        br#"{"parameterIds": [1], "parameterName": "id", "invalidationType": "PRICE"}"#,
    )
    .await;
    env.publish(fleet_shared::topology::names::REQUESTS, "price", b"{bad")
        .await;
    let page = eventually(
        Duration::from_secs(20),
        "/metrics with outcomes",
        || async {
            let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            (text.contains("dead_lettered") && text.contains("outcome=\"done\"")).then_some(text)
        },
    )
    .await;
    let exported = metric_names(&page);
    let exported: BTreeSet<String> = exported
        .into_iter()
        .map(|n| {
            // Histogram series carry suffixes of their own.
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s).filter(|b| described.contains(*b)))
                .map(str::to_string)
                .unwrap_or(n)
        })
        .collect();
    let undocumented: Vec<&String> = exported.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "exported but not in the README's Monitoring section: {undocumented:?}"
    );
    let _ = child.kill().await;
}

/// The error classes the code can put in `x-error-class`: the literal or
/// constant given to `HandlerError::permanent`/`transient` and the
/// `Classify` helpers, and the classes of the decoder, search errors and
/// publish failures.
fn classes_in_code() -> BTreeSet<String> {
    let files: Vec<(PathBuf, String)> = ["shared/src", "workers/src"]
        .iter()
        .flat_map(|d| rust_files(&root().join(d)))
        .filter(|f| !f.ends_with("telemetry.rs"))
        .map(|f| {
            let t = std::fs::read_to_string(&f).unwrap();
            (f, t)
        })
        .collect();
    let constant = |name: &str| -> Option<String> {
        let pat = format!("const {name}: &str = \"");
        files.iter().find_map(|(_, t)| {
            let i = t.find(&pat)? + pat.len();
            Some(t[i..i + t[i..].find('"')?].to_string())
        })
    };
    let mut out = BTreeSet::new();
    for (file, text) in &files {
        for call in ["permanent(", "transient(", "Refuse("] {
            for (i, _) in text.match_indices(call) {
                let arg = text[i + call.len()..].trim_start();
                if let Some(lit) = arg.strip_prefix('"') {
                    out.insert(lit[..lit.find('"').unwrap()].to_string());
                } else {
                    let ident: String = arg
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                        .collect();
                    let last = ident.rsplit("::").next().unwrap_or_default();
                    if !last.is_empty() && last.chars().all(|c| c.is_ascii_uppercase() || c == '_')
                    {
                        out.insert(
                            constant(last)
                                .unwrap_or_else(|| panic!("{last} in {}", file.display())),
                        );
                    }
                }
            }
        }
        // `fn class(&self)` of the decoder and of search errors, and the
        // class of a failed publish.
        for marker in [
            "pub fn class(&self) -> &'static str {",
            "let class = match e {",
        ] {
            if let Some(i) = text.find(marker) {
                let block = &text[i..i + text[i..].find("\n    }\n").unwrap_or(400)];
                for (j, _) in block.match_indices("=> \"") {
                    let lit = &block[j + 4..];
                    out.insert(lit[..lit.find('"').unwrap()].to_string());
                }
            }
        }
    }
    out
}

#[test]
fn the_error_class_table_names_every_class_the_code_can_emit() {
    let text = readme();
    let failures = section(&text, "Failures");
    let code = classes_in_code();
    for expected in [
        "forbidden_field",
        "unsupported_version",
        "search_rejected",
        "invalid_job",
        "unknown_source",
        "missing_origin",
        "wrong_lane",
        "unknown_routing_key",
        "search_unavailable",
    ] {
        assert!(
            code.contains(expected),
            "{expected} not found in the code: {code:?}"
        );
    }
    let missing: Vec<&String> = code
        .iter()
        .filter(|c| !failures.contains(&format!("`{c}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "error classes the code can emit that the README's Failures section does not name: {missing:?}"
    );
}
