//! The hostile corpus (`workers/tests/corpus/hostile/`, issue 8 item 4):
//! over a thousand broken, oversized, mistyped, injected, mistimed and
//! spoofed messages for every queue the fleet consumes, fed to the real
//! `fleet` workers interleaved with good messages. Each bad message must end
//! where its case says (a dead-letter queue with its reason, the parking
//! queue, or re-routed to another lane), each tolerated one must be done, every
//! good message must complete, and no worker may panic, stall, leave a
//! message unacked or grow past its memory bound. A message the lane rule
//! re-routes (from the other lane, or from `invalidation.unroutable`, which
//! the dispatcher consumes) is followed to its end on its type's lane.
//!
//! Regenerate the generated part after changing the generator:
//! `HOSTILE_CORPUS_BLESS=1 cargo test -p fleet-workers --test it hostile::corpus_files_are_up_to_date`
//! (it also rewrites the fuzz seeds taken from the corpus, `fuzz/seeds/`).

mod corpus;
mod generate;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use fleet_shared::broker::{header_text, headers};
use fleet_shared::config::Config;
use fleet_shared::lapin::options::BasicPublishOptions;
use fleet_shared::lapin::BasicProperties;
use fleet_shared::message::now_millis;
use fleet_shared::message::InvalidationRequest;
use fleet_shared::source::SourceKind;
use fleet_shared::topology::names;
use fleet_shared::topology::Topology;
use fleet_shared::window;
use fleet_workers::dispatcher::{admit, validate};
use fleet_workers::lanes::{Lanes, Verdict};
use fleet_workers::unroutable;

use crate::common::*;
use corpus::{Case, Expect};

/// The queues the fleet consumes: every one must be covered by the corpus.
const CONSUMED: &[&str] = &[
    "invalidation.requests.fast",
    "invalidation.requests.bulk",
    "invalidation.unroutable",
    "invalidation.partitions",
    "invalidation.retry.ready",
    "source.price",
    "source.stock",
    "source.promotion",
    "source.assortment",
    "source.product",
    "source.translation",
];

/// The workers, one `fleet run` process each, and what they consume.
const WORKERS: &[(&str, &[&str])] = &[
    (
        "dispatcher",
        &[
            "invalidation.requests.fast",
            "invalidation.requests.bulk",
            "invalidation.unroutable",
        ],
    ),
    ("partition", &["invalidation.partitions"]),
    ("retry", &["invalidation.retry.ready"]),
    (
        "ingest",
        &[
            "source.price",
            "source.stock",
            "source.promotion",
            "source.assortment",
            "source.product",
            "source.translation",
        ],
    ),
];

/// The memory bound of one worker process (its peak resident set,
/// `VmHWM`). A worker holds at most its prefetch of deliveries per queue
/// (in the tests 32, the partition worker 4, the dispatcher 256 on each of
/// its three queues; a body over `worker.max_body_bytes` = 1 MiB is
/// refused before decoding, though the broker has sent it whole) plus the
/// decoded requests; measured peaks are printed by the test (the
/// dispatcher ~75 MiB, the others ~55 MiB). A worker that panics with
/// `RUST_BACKTRACE` set symbolises its backtrace from the debug binary,
/// which alone took the dispatcher to ~300 MiB: the bound catches that too.
const MEMORY_BOUND_KIB: u64 = 256 * 1024;

// ------------------------------------------------------------ the files

fn bless() -> bool {
    std::env::var_os("HOSTILE_CORPUS_BLESS").is_some_and(|v| v != "0")
}

/// `fuzz/seeds/` at the repository root.
fn seeds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds")
}

/// The fuzz seeds the corpus gives each target (file name → bytes): small
/// bodies of every kind, so the fuzzers start from the shapes that matter.
fn fuzz_seeds(cases: &[Case]) -> BTreeMap<(String, String), Vec<u8>> {
    let mut out = BTreeMap::new();
    // Every hand-written case, every sixth generated one per queue.
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for c in cases {
        let body = c.bytes();
        if body.len() > 4096 {
            continue;
        }
        let n = seen.entry(c.queue()).or_default();
        *n += 1;
        if c.id.starts_with("gen-") && *n % 6 != 1 {
            continue;
        }
        let q = c.queue();
        let name = c.id.clone();
        if q.starts_with("invalidation.requests.") {
            out.insert(("request".to_string(), name.clone()), body.clone());
            // The validation target reads one byte of settings first.
            let mut v = vec![name.len() as u8];
            v.extend_from_slice(&body);
            out.insert(("validate".to_string(), name), v);
        } else if q == names::PARTITIONS {
            out.insert(("task".to_string(), name), body);
        } else if let Some(kind) = q.strip_prefix("source.") {
            // The source-event target reads the kind from the first byte.
            let k = SourceKind::ALL
                .iter()
                .position(|s| s.as_str() == kind)
                .unwrap() as u8;
            let mut v = vec![k];
            v.extend_from_slice(&body);
            out.insert(("source_event".to_string(), name), v);
        }
    }
    out
}

fn read_seeds() -> BTreeMap<(String, String), Vec<u8>> {
    let mut out = BTreeMap::new();
    let Ok(targets) = std::fs::read_dir(seeds_dir()) else {
        return out;
    };
    for t in targets {
        let t = t.unwrap();
        let target = t.file_name().to_string_lossy().into_owned();
        for f in std::fs::read_dir(t.path()).unwrap() {
            let f = f.unwrap();
            let name = f.file_name().to_string_lossy().into_owned();
            // Hand-made seeds live beside the corpus's own (`hand-…`, `gen-…`).
            if name.starts_with("hand-") || name.starts_with("gen-") {
                out.insert((target.clone(), name), std::fs::read(f.path()).unwrap());
            }
        }
    }
    out
}

#[test]
fn corpus_files_are_up_to_date() {
    let generated = generate::generate();
    let rendered = corpus::render_jsonl(&generated);
    let mut all = corpus::hand_written();
    all.extend(generated);
    let seeds = fuzz_seeds(&all);
    if bless() {
        std::fs::write(corpus::generated_path(), &rendered).unwrap();
        for ((target, name), _) in read_seeds() {
            std::fs::remove_file(seeds_dir().join(target).join(name)).unwrap();
        }
        for ((target, name), bytes) in &seeds {
            let dir = seeds_dir().join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        return;
    }
    let committed = std::fs::read_to_string(corpus::generated_path()).unwrap_or_default();
    assert!(
        committed == rendered,
        "generated.jsonl is not the generator's output; run with HOSTILE_CORPUS_BLESS=1 and commit"
    );
    assert!(
        read_seeds() == seeds,
        "fuzz/seeds/ does not hold the corpus's seeds; run with HOSTILE_CORPUS_BLESS=1 and commit"
    );
}

#[test]
fn corpus_is_large_well_formed_and_covers_every_consumed_queue() {
    let cases = corpus::all();
    assert!(cases.len() >= 1000, "{} cases", cases.len());
    let mut ids = BTreeSet::new();
    let mut per_queue: BTreeMap<&str, usize> = BTreeMap::new();
    let max_body = Config::default().worker.max_body_bytes;
    let mut oversized = 0;
    for c in &cases {
        assert!(ids.insert(c.id.clone()), "duplicate case id {}", c.id);
        let body = c.bytes();
        oversized += usize::from(body.len() > max_body);
        if let Expect::DeadLetter { class, .. } = &c.expect {
            assert_eq!(
                class == "body_too_large",
                body.len() > max_body,
                "{}: body_too_large exactly when over the limit",
                c.id
            );
        }
        let _ = c.field_table();
        *per_queue.entry(c.queue()).or_default() += 1;
    }
    for q in CONSUMED {
        let n = per_queue.get(q).copied().unwrap_or(0);
        assert!(n >= 40, "only {n} cases for {q}");
    }
    assert!(oversized >= CONSUMED.len(), "{oversized} oversized bodies");
}

/// The end a case reaches, computed with the same functions the workers
/// call (no broker, no database): where that is decidable offline, the
/// corpus's expectation must agree with it. With the routing key the lane
/// rule re-routes it with, if it does.
fn offline_end(
    c: &Case,
    config: &Config,
    lanes: &Lanes,
    now: i64,
) -> Option<(Option<String>, Result<(), String>)> {
    let body = c.bytes();
    let queue = c.queue();
    let rerouted = c.headers.contains_key(headers::REROUTED_FROM);
    if body.len() > config.worker.max_body_bytes && CONSUMED.contains(&queue) {
        return Some((None, Err("body_too_large".into())));
    }
    let admitted = || {
        admit(config, &body, None, now, |_| {})
            .map(|_| ())
            .map_err(|e| e.class().to_string())
    };
    if queue == names::UNROUTABLE {
        return match unroutable::verdict(lanes, &c.routing_key, &body, rerouted) {
            Verdict::Reroute(key) => Some((Some(key), admitted())),
            Verdict::Refuse(class, _) => Some((None, Err(class.to_string()))),
            Verdict::Here => Some((None, Err("no verdict".into()))),
        };
    }
    if queue.starts_with("invalidation.requests.") {
        // The dispatcher decodes first, then applies the lane rule.
        if let Ok(r) = InvalidationRequest::decode(&body) {
            match lanes.on_lane(queue, r.invalidation_type, rerouted) {
                Verdict::Reroute(key) => return Some((Some(key), admitted())),
                Verdict::Refuse(class, _) => return Some((None, Err(class.to_string()))),
                Verdict::Here => {}
            }
        }
    }
    offline_on_queue(c, config, now).map(|end| (None, end))
}

/// What the worker of the case's first queue makes of it.
fn offline_on_queue(c: &Case, config: &Config, now: i64) -> Option<Result<(), String>> {
    let body = c.bytes();
    let queue = c.queue();
    let window_start = header_text(Some(&c.field_table()), headers::WINDOW_START)
        .and_then(|t| t.parse::<i64>().ok());
    let check_time = |t: Option<i64>| {
        window::check(
            t,
            window_start,
            now,
            config.retry.window,
            config.retry.clock_slack,
        )
        .map_err(|_| window::BAD_TIME.to_string())
    };
    if body.len() > config.worker.max_body_bytes
        && (CONSUMED.contains(&queue) || queue.starts_with("invalidation.requests."))
    {
        return Some(Err("body_too_large".into()));
    }
    if queue.starts_with("invalidation.requests.") {
        return Some(
            admit(config, &body, window_start, now, |_| {})
                .map(|_| ())
                .map_err(|e| e.class().to_string()),
        );
    }
    if let Some(kind) = queue.strip_prefix("source.") {
        let kind: SourceKind = kind.parse().unwrap();
        let d = &config.dispatcher;
        let requests = match kind.to_requests(
            &body,
            config.ingest.critical_stock,
            &d.index_keys,
            d.max_ids,
        ) {
            Ok(r) => r,
            Err(e) => return Some(Err(e.class().into())),
        };
        for r in requests {
            if let Err(e) = check_time(r.invalidation_time) {
                return Some(Err(e));
            }
            // What ingest publishes must pass the dispatcher.
            if let Err(e) = validate(config, r.clone(), &r.encode()) {
                return Some(Err(format!(
                    "ingest made a request the dispatcher refuses: {e}"
                )));
            }
        }
        return Some(Ok(()));
    }
    if queue == names::PARTITIONS {
        return match fleet_shared::message::PartitionTask::decode(&body) {
            Err(e) => Some(Err(e.class().into())),
            // Decided against the database: no job of ours has it.
            Ok(_) => None,
        };
    }
    None
}

#[test]
fn corpus_expectations_agree_with_the_decoders_and_validation() {
    let config = test_config();
    let lanes = Lanes::new(Topology::load(&config).unwrap());
    let now = now_millis();
    let mut wrong = Vec::new();
    let mut checked = 0;
    for c in corpus::all() {
        let Some((key, end)) = offline_end(&c, &config, &lanes, now) else {
            continue;
        };
        checked += 1;
        let expected_key = match &c.expect {
            Expect::Rerouted { key, .. } => Some(key.clone()),
            _ => None,
        };
        if key != expected_key {
            wrong.push(format!(
                "{} ({}): expected re-routing to {expected_key:?}, the lane rule says {key:?}",
                c.id, c.about
            ));
            continue;
        }
        let expected = match c.end() {
            Expect::DeadLetter { class, .. } => Err(class.clone()),
            Expect::Accepted { .. } => Ok(()),
            other => {
                wrong.push(format!("{}: {other:?} on {}", c.id, c.queue()));
                continue;
            }
        };
        if end != expected {
            wrong.push(format!(
                "{} ({}): expected {expected:?}, the decoders say {end:?}",
                c.id, c.about
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {checked}:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert!(checked > 700, "{checked}");
}

// ------------------------------------------------------------ the run

/// A `fleet run <worker>` subprocess with its log in a file.
struct Worker {
    name: &'static str,
    child: tokio::process::Child,
    log: PathBuf,
}

impl Worker {
    fn spawn(env: &TestEnv, name: &'static str) -> Worker {
        let log = std::env::temp_dir().join(format!("{}-{name}.log", env.vhost));
        let file = std::fs::File::create(&log).unwrap();
        let child = tokio::process::Command::new(fleet_bin())
            .args(["run", name])
            .envs(env.env_vars_logging("warn,lapin=off"))
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Worker { name, child, log }
    }

    fn pid(&self) -> i32 {
        self.child.id().expect("running") as i32
    }

    /// A `/proc/<pid>/status` value in KiB.
    fn status_kib(&self, key: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find(|l| l.starts_with(key))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }
}

/// A good message: where it goes and which ids must arrive where.
struct Good {
    exchange: String,
    routing_key: String,
    body: Vec<u8>,
    expect: BTreeMap<String, BTreeSet<i64>>,
}

fn good_messages() -> Vec<Good> {
    let mut out = Vec::new();
    let keys = ["trTR", "deDE", "enAT", "enCZ"];
    let types = [
        ("price", "PRICE"),
        ("stock", "STOCK"),
        ("assortment", "ASSORTMENT"),
        ("product", "PRODUCT"),
    ];
    for i in 0..160i64 {
        let (rk, t) = types[i as usize % types.len()];
        let key = keys[(i as usize / types.len()) % keys.len()];
        let ids: Vec<i64> = (0..3).map(|j| 50_000_000 + i * 10 + j).collect();
        let body = serde_json::json!({
            "requestId": format!("good-{i}"),
            "parameterIds": ids,
            "parameterName": "id",
            "invalidationType": t,
            "indexKeys": [key],
        });
        let queue = format!(
            "productcontent_{rk}_{}_{}",
            &key[..2],
            key[2..].to_ascii_lowercase()
        );
        out.push(Good {
            exchange: names::REQUESTS.into(),
            routing_key: rk.into(),
            body: serde_json::to_vec(&body).unwrap(),
            expect: BTreeMap::from([(queue, ids.into_iter().collect())]),
        });
    }
    for i in 0..30i64 {
        let ids: Vec<i64> = (0..2).map(|j| 51_000_000 + i * 10 + j).collect();
        out.push(Good {
            exchange: "source.product".into(),
            routing_key: String::new(),
            body: serde_json::to_vec(
                &serde_json::json!({"contentIds": ids, "indexKeys": ["enBE"]}),
            )
            .unwrap(),
            expect: BTreeMap::from([(
                "productcontent_product_en_be".to_string(),
                ids.into_iter().collect(),
            )]),
        });
    }
    // Searching requests: small ones resolved in place, and one over the
    // split limit that runs through the partition worker.
    type Matches = fn(&fleet_workers::catalogue::Content, i64) -> bool;
    let searches: [(&str, &str, &str, i64, Matches); 4] = [
        ("price", "PRICE", "brand.id", 60, |d, v| d.brand.id == v),
        ("assortment", "ASSORTMENT", "category.id", 60, |d, v| {
            d.category.id == v
        }),
        ("stock", "STOCK", "supplier.id", 5, |d, v| {
            d.supplier.id == v
        }),
        ("assortment", "ASSORTMENT", "brand.id", 1, |d, v| {
            d.brand.id == v
        }),
    ];
    for (n, (rk, t, field, value, pred)) in searches.into_iter().enumerate() {
        let body = serde_json::json!({
            "requestId": format!("good-search-{n}"),
            "parameterIds": [value],
            "parameterName": field,
            "invalidationType": t,
            "indexKeys": ["trTR"],
        });
        out.push(Good {
            exchange: names::REQUESTS.into(),
            routing_key: rk.into(),
            body: serde_json::to_vec(&body).unwrap(),
            expect: BTreeMap::from([(
                format!("productcontent_{rk}_tr_tr"),
                expected_ids(|d| pred(d, value)),
            )]),
        });
    }
    out
}

/// Drains `queues` until every id of `expected` arrived or `wait` passed;
/// returns what arrived per queue.
async fn collect_outbound(
    env: &TestEnv,
    expected: &BTreeMap<String, BTreeSet<i64>>,
    wait: Duration,
) -> BTreeMap<String, BTreeSet<i64>> {
    let deadline = Instant::now() + wait;
    let mut got: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    loop {
        for q in expected.keys() {
            for m in env.take(q, 0, Duration::ZERO).await {
                let b = fleet_shared::message::OutboundBatch::decode(&m.body)
                    .expect("outbound batches decode");
                got.entry(q.clone()).or_default().extend(b.content_ids);
            }
        }
        let done = expected
            .iter()
            .all(|(q, ids)| got.get(q).is_some_and(|g| g.is_superset(ids)));
        if done || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn every_hostile_message_ends_where_its_case_says_and_the_fleet_keeps_working() {
    let started = Instant::now();
    let cases = corpus::all();
    let env = TestEnv::with_catalogue(|_| {}).await;
    let mut workers: Vec<Worker> = WORKERS
        .iter()
        .map(|(name, _)| Worker::spawn(&env, name))
        .collect();
    for (_, queues) in WORKERS {
        for q in *queues {
            env.consumed(q).await;
        }
    }

    let ready = started.elapsed();
    // Interleave: a good message after every fifth case.
    let goods = good_messages();
    let mut expected_out: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    for g in &goods {
        for (q, ids) in &g.expect {
            expected_out.entry(q.clone()).or_default().extend(ids);
        }
    }
    let ch = env.shared_channel().await;
    let mut confirms = Vec::new();
    let mut good = goods.iter().enumerate();
    for (i, c) in cases.iter().enumerate() {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(c.id.as_str().into())
            .with_headers(c.field_table());
        confirms.push(
            ch.basic_publish(
                c.exchange.as_str().into(),
                c.routing_key.as_str().into(),
                BasicPublishOptions::default(),
                &c.bytes(),
                props,
            )
            .await
            .unwrap(),
        );
        if i % 5 == 4 {
            if let Some((n, g)) = good.next() {
                let props = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_message_id(format!("good-{n}").into());
                confirms.push(
                    ch.basic_publish(
                        g.exchange.as_str().into(),
                        g.routing_key.as_str().into(),
                        BasicPublishOptions::default(),
                        &g.body,
                        props,
                    )
                    .await
                    .unwrap(),
                );
            }
        }
        if let Expect::Accepted {
            queue: Some(q),
            ids,
        } = c.end()
        {
            expected_out.entry(q.clone()).or_default().extend(ids);
        }
    }
    // The rest of the good messages after the last case.
    for (n, g) in good {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(format!("good-{n}").into());
        confirms.push(
            ch.basic_publish(
                g.exchange.as_str().into(),
                g.routing_key.as_str().into(),
                BasicPublishOptions::default(),
                &g.body,
                props,
            )
            .await
            .unwrap(),
        );
    }
    for c in confirms {
        assert!(c.await.unwrap().is_ack());
    }
    let published = started.elapsed();

    // Where each case must end.
    let mut dead: BTreeMap<String, usize> = BTreeMap::new();
    let mut parked = 0;
    for c in &cases {
        match c.end() {
            Expect::DeadLetter { queue, .. } => *dead.entry(queue.clone()).or_default() += 1,
            Expect::Parked { .. } => parked += 1,
            Expect::Accepted { .. } | Expect::Rerouted { .. } => {}
        }
    }
    // Every dead-letter queue is read, expected or not: a good message
    // there is a failure too.
    for q in CONSUMED {
        dead.entry(names::dlq(q)).or_default();
    }
    let mut arrived: BTreeMap<String, (String, Taken)> = BTreeMap::new();
    let mut failures: Vec<String> = Vec::new();
    let mut take_all = |queue: String, got: Vec<Taken>| {
        for m in got {
            let key = m
                .message_id
                .clone()
                .unwrap_or_else(|| format!("<no id> {:?}", m.headers));
            if let Some((q, _)) = arrived.insert(key.clone(), (queue.clone(), m)) {
                failures.push(format!("{key}: arrived twice ({q}, {queue})"));
            }
        }
    };
    for (q, n) in &dead {
        let got = env.take(q, *n, Duration::from_secs(60)).await;
        take_all(q.clone(), got);
    }
    let got = env
        .take(names::PARKED, parked, Duration::from_secs(30))
        .await;
    take_all(names::PARKED.into(), got);
    let outbound = collect_outbound(&env, &expected_out, Duration::from_secs(60)).await;
    let settled = started.elapsed();

    // Nothing left behind: the consumed queues drain, nothing waits for a retry.
    let drained = || async {
        let mut left = BTreeMap::new();
        for q in CONSUMED.iter().chain([&names::RETRY_DELAY]) {
            let n = env.depth(q).await;
            if n > 0 {
                left.insert(*q, n);
            }
        }
        left
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = drained().await;
        if left.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            failures.push(format!("queues not drained after 30 s: {left:?}"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Memory, then a clean stop: SIGTERM, exit 0, nothing returned unacked.
    let mut memory = Vec::new();
    for w in &workers {
        let hwm = w.status_kib("VmHWM").unwrap_or(0);
        memory.push((w.name, hwm));
    }
    for w in &workers {
        // SAFETY: signalling our own child process by its pid.
        unsafe { libc::kill(w.pid(), libc::SIGTERM) };
    }
    for w in workers.iter_mut() {
        let status = tokio::time::timeout(Duration::from_secs(20), w.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not stop within 20 s of SIGTERM", w.name))
            .unwrap();
        if !status.success() {
            failures.push(format!("{} exited with {status}", w.name));
        }
    }
    for q in CONSUMED {
        let n = env.depth(q).await;
        if n > 0 {
            failures.push(format!("{q}: {n} messages returned unacked at shutdown"));
        }
    }
    for w in &workers {
        let log = std::fs::read_to_string(&w.log).unwrap_or_default();
        for line in log.lines().filter(|l| l.contains("panicked")) {
            failures.push(format!("{} panicked: {line}", w.name));
        }
        let _ = std::fs::remove_file(&w.log);
    }

    // Each case where it belongs.
    let mut per_queue: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &cases {
        *per_queue.entry(c.queue()).or_default() += 1;
        let got = arrived.remove(&c.id);
        let body = c.bytes();
        // Where a dead letter says it was published: where the case was,
        // or, once re-routed, the request exchange with the key of its lane.
        let (origin_exchange, origin_key, rerouted) = match &c.expect {
            Expect::Rerouted { key, .. } => (names::REQUESTS, key.as_str(), true),
            _ => (c.exchange.as_str(), c.routing_key.as_str(), false),
        };
        match (c.end(), got) {
            (Expect::DeadLetter { queue, class }, Some((q, m))) => {
                let got_class = header(&m, headers::ERROR_CLASS);
                if &q != queue || &got_class != class {
                    failures.push(format!(
                        "{} ({}): expected {queue} [{class}], got {q} [{got_class}] {}",
                        c.id,
                        c.about,
                        header(&m, headers::ERROR_MESSAGE)
                    ));
                } else if m.body != body {
                    failures.push(format!("{}: dead letter body changed", c.id));
                } else if rerouted && header(&m, headers::REROUTED_FROM).is_empty() {
                    failures.push(format!(
                        "{}: dead-lettered on its lane without x-rerouted-from",
                        c.id
                    ));
                } else if c.queue() != names::RETRY_READY
                    && (header(&m, headers::ORIGINAL_EXCHANGE) != origin_exchange
                        || header(&m, headers::ORIGINAL_ROUTING_KEY) != origin_key)
                {
                    failures.push(format!(
                        "{}: origin headers {:?} / {:?} are not where it was published",
                        c.id,
                        header(&m, headers::ORIGINAL_EXCHANGE),
                        header(&m, headers::ORIGINAL_ROUTING_KEY)
                    ));
                }
            }
            (Expect::Parked { reason }, Some((q, m))) => {
                let got = header(&m, headers::PARK_REASON);
                if q != names::PARKED || !got.starts_with(reason.as_str()) {
                    failures.push(format!(
                        "{} ({}): expected parked [{reason}], got {q} [{}] [{got}]",
                        c.id,
                        c.about,
                        header(&m, headers::ERROR_CLASS)
                    ));
                }
            }
            (Expect::Accepted { queue, ids }, None) => {
                if let Some(q) = queue {
                    let missing: Vec<&i64> = ids
                        .iter()
                        .filter(|i| !outbound.get(q).is_some_and(|g| g.contains(i)))
                        .collect();
                    if !missing.is_empty() {
                        failures.push(format!(
                            "{} ({}): ids {missing:?} never reached {q}",
                            c.id, c.about
                        ));
                    }
                }
            }
            (expect, got) => failures.push(format!(
                "{} ({}): expected {expect:?}, got {}",
                c.id,
                c.about,
                match got {
                    Some((q, m)) => format!(
                        "{q} [{}] {}",
                        header(&m, headers::ERROR_CLASS),
                        header(&m, headers::ERROR_MESSAGE)
                    ),
                    None => "nothing (not dead-lettered or parked)".into(),
                }
            )),
        }
    }
    for (id, (q, m)) in &arrived {
        failures.push(format!(
            "{id}: unexpected in {q} [{}] {}",
            header(m, headers::ERROR_CLASS),
            header(m, headers::ERROR_MESSAGE)
        ));
    }
    // Every good message completed.
    for g in &goods {
        for (q, ids) in &g.expect {
            let missing = ids
                .iter()
                .filter(|i| !outbound.get(q).is_some_and(|got| got.contains(i)))
                .count();
            if missing > 0 {
                failures.push(format!(
                    "good message {} on {}: {missing} of {} ids never reached {q}",
                    String::from_utf8_lossy(&g.body[..g.body.len().min(80)]),
                    g.routing_key,
                    ids.len()
                ));
            }
        }
    }
    for (name, hwm) in &memory {
        if *hwm == 0 || *hwm > MEMORY_BOUND_KIB {
            failures.push(format!(
                "{name}: peak memory {hwm} KiB, bound {MEMORY_BOUND_KIB} KiB"
            ));
        }
    }
    eprintln!(
        "hostile corpus: {} cases ({}), {} good messages; workers ready after {:.1} s, all published \
         after {:.1} s, all settled after {:.1} s; peak memory (VmHWM, KiB): {}",
        cases.len(),
        per_queue
            .iter()
            .map(|(q, n)| format!("{q} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        goods.len(),
        ready.as_secs_f64(),
        published.as_secs_f64(),
        settled.as_secs_f64(),
        memory
            .iter()
            .map(|(n, k)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
