//! The search client against real osmem-server, through a fault-injecting
//! proxy where a failure must be staged: complete answers only, back-off on
//! push-back, point-in-time hygiene, histogram splits that tile every
//! document, and no invented ids. Then the same failures through the
//! dispatcher, to see where the message ends up.

use std::collections::BTreeSet;
use std::time::Duration;

use fleet_shared::broker::headers;
use fleet_shared::config::{SearchConfig, SearchFlavor};
use fleet_shared::search::{
    group_partitions, terms_query, with_partition_range, Search, SearchError,
};
use fleet_shared::topology::names;
use fleet_workers::app::WorkerKind;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::common::*;
use crate::faultproxy::{error_body, Fault, FaultProxy, Rule};

fn config(url: &str, flavor: SearchFlavor) -> SearchConfig {
    SearchConfig {
        url: url.into(),
        flavor,
        page_size: 50,
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        ..Default::default()
    }
}

const FLAVORS: [SearchFlavor; 2] = [SearchFlavor::Opensearch, SearchFlavor::Elasticsearch];

/// A clone of the catalogue behind a fresh proxy that speaks `flavor`.
async fn proxied(flavor: SearchFlavor) -> (String, FaultProxy) {
    let clone = catalogue_clone().await;
    let proxy = FaultProxy::start(&clone).await;
    if flavor == SearchFlavor::Elasticsearch {
        proxy.speak_elasticsearch();
    }
    (clone, proxy)
}

/// Every page of a scan: `(ids, hits without id)`, or the first error with
/// what came before it.
async fn scan(
    search: &Search,
    index: &str,
    query: Value,
) -> Result<(Vec<i64>, u64), (Vec<i64>, SearchError)> {
    let mut ids = Vec::new();
    let mut missing = 0;
    let mut pages = std::pin::pin!(search.scan(index, query));
    while let Some(page) = pages.next().await {
        match page {
            Ok(p) => {
                missing += p.missing_ids;
                ids.extend(p.ids);
            }
            Err(e) => {
                assert!(pages.next().await.is_none(), "a scan ends after its error");
                return Err((ids, e));
            }
        }
    }
    Ok((ids, missing))
}

/// Points in time open on an osmem server (OpenSearch's list endpoint).
async fn open_pits(url: &str) -> usize {
    let v: Value = reqwest::get(format!("{url}/_search/point_in_time/_all"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["pits"].as_array().map_or(0, Vec::len)
}

async fn no_open_pits(url: &str) {
    eventually(
        Duration::from_secs(5),
        "every point in time closed",
        || async { (open_pits(url).await == 0).then_some(()) },
    )
    .await;
}

/// Creates `index` on `url` (`searchPartition` of type `partition_type`)
/// and loads `docs`.
async fn load(url: &str, index: &str, partition_type: &str, docs: &[Value]) {
    let http = reqwest::Client::new();
    let res = http
        .put(format!("{url}/{index}"))
        .json(&json!({
            "settings": { "number_of_shards": 1, "number_of_replicas": 0 },
            "mappings": { "properties": {
                "id": { "type": "long" },
                "searchPartition": { "type": partition_type },
                "brand": { "properties": { "id": { "type": "long" } } }
            } }
        }))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.text().await.unwrap());
    let mut body = String::new();
    for (n, d) in docs.iter().enumerate() {
        body.push_str(&format!("{{\"index\":{{\"_id\":\"d{n}\"}}}}\n{d}\n"));
    }
    let v: Value = http
        .post(format!("{url}/{index}/_bulk?refresh=true"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["errors"], json!(false), "{v}");
}

/// A brand small enough to resolve in place (at most the test split limit).
fn small_brand() -> (i64, BTreeSet<i64>) {
    (2..300)
        .map(|b| (b, expected_ids(|d| d.brand.id == b)))
        .find(|(_, ids)| (20..=300).contains(&ids.len()))
        .expect("the catalogue has brands of a few dozen documents")
}

fn brand_one() -> (Value, BTreeSet<i64>) {
    (
        terms_query("brand.id", &[1], None),
        expected_ids(|d| d.brand.id == 1),
    )
}

#[tokio::test]
async fn every_count_aggregation_and_page_asks_for_a_complete_answer() {
    for flavor in FLAVORS {
        let (clone, proxy) = proxied(flavor).await;
        let search = Search::new(&config(&proxy.url, flavor)).unwrap();
        let (query, expected) = brand_one();
        assert_eq!(
            search.count("content_tr", &query).await.unwrap(),
            expected.len() as u64
        );
        let h = search
            .partition_histogram("content_tr", &query)
            .await
            .unwrap();
        assert_eq!(h.total(), expected.len() as u64);
        let (ids, missing) = scan(&search, "content_tr", query).await.unwrap();
        assert_eq!(missing, 0);
        assert_eq!(ids.len(), expected.len(), "no id twice");
        assert_eq!(ids.into_iter().collect::<BTreeSet<_>>(), expected);
        let seen = proxy.seen();
        let searches: Vec<_> = seen
            .iter()
            .filter(|s| s.path.contains("_search?"))
            .collect();
        assert!(searches.len() >= 3, "{flavor:?}: {seen:?}");
        for s in &searches {
            assert!(
                s.path.contains("allow_partial_search_results=false"),
                "{flavor:?}: {} asks for partial results",
                s.path
            );
            assert_eq!(s.status, 200, "osmem accepts the parameter: {s:?}");
        }
        // The scan ran in a point in time of the flavour's dialect, and closed it.
        let (open, close) = match flavor {
            SearchFlavor::Opensearch => ("/_search/point_in_time?", "/_search/point_in_time"),
            SearchFlavor::Elasticsearch => ("/content_tr/_pit?", "/_pit"),
        };
        assert!(
            seen.iter()
                .any(|s| s.path.contains(open) && s.status == 200),
            "{flavor:?}: {seen:?}"
        );
        assert!(
            seen.iter()
                .any(|s| s.method == "DELETE" && s.path == close && s.status == 200),
            "{flavor:?}: {seen:?}"
        );
        no_open_pits(&clone).await;
    }
}

#[tokio::test]
async fn a_failed_shard_or_a_server_timeout_is_an_error_never_a_smaller_answer() {
    for flavor in FLAVORS {
        for fault in [Fault::FailedShard, Fault::TimedOut] {
            let (clone, proxy) = proxied(flavor).await;
            let search = Search::new(&config(&proxy.url, flavor)).unwrap();
            let (query, expected) = brand_one();
            proxy.inject(Rule::new("_search?", fault.clone()));
            let what = format!("{flavor:?} {fault:?}");
            let e = search.count("content_tr", &query).await.unwrap_err();
            assert!(matches!(e, SearchError::Partial(_)), "{what}: count: {e:?}");
            assert!(e.is_transient() && e.class() == "partial_results");
            let e = search
                .partition_histogram("content_tr", &query)
                .await
                .unwrap_err();
            assert!(
                matches!(e, SearchError::Partial(_)),
                "{what}: histogram: {e:?}"
            );
            let (ids, e) = scan(&search, "content_tr", query.clone())
                .await
                .unwrap_err();
            assert!(matches!(e, SearchError::Partial(_)), "{what}: page: {e:?}");
            assert!(ids.is_empty(), "{what}: no id of a partial page goes out");
            // A partial answer is not pushed back on: one request each.
            let faulted = proxy.seen().iter().filter(|s| s.faulted).count();
            assert_eq!(faulted, 3, "{what}");

            // A later page is partial: the pages before it stand, the
            // partial one never comes out, the point in time is closed.
            proxy.clear_faults();
            proxy.inject(Rule::new("_search?", fault.clone()).body_contains("search_after"));
            let (ids, e) = scan(&search, "content_tr", query).await.unwrap_err();
            assert!(matches!(e, SearchError::Partial(_)), "{what}: {e:?}");
            assert_eq!(ids.len(), 50, "{what}: exactly the first page");
            assert!(ids.iter().all(|id| expected.contains(id)));
            no_open_pits(&clone).await;
        }
    }
}

#[tokio::test]
async fn push_back_is_absorbed_locally_and_shrinks_the_concurrency_limit() {
    let (_clone, proxy) = proxied(SearchFlavor::Opensearch).await;
    let search = Search::new(&config(&proxy.url, SearchFlavor::Opensearch)).unwrap();
    let initial = search.limiter().limit();
    let (query, expected) = brand_one();
    let count = |proxy: &FaultProxy| {
        proxy
            .seen()
            .iter()
            .filter(|s| s.path.contains("_search?"))
            .count()
    };

    // Two 429s (the recorded Elasticsearch body), then an answer.
    proxy.inject(
        Rule::new(
            "_search?",
            Fault::Respond(429, error_body("es8_429_rejected_execution")),
        )
        .times(2),
    );
    assert_eq!(
        search.count("content_tr", &query).await.unwrap(),
        expected.len() as u64
    );
    assert_eq!(count(&proxy), 3, "two rejections and the answer");
    assert!(search.limiter().limit() < initial, "the limit shrank");

    // A 503 that lasts: 1 + backoff_attempts tries, then a transient error.
    proxy.forget_seen();
    proxy.inject(Rule::new(
        "_search?",
        Fault::Respond(503, error_body("os_503_no_shard_available")),
    ));
    let e = search.count("content_tr", &query).await.unwrap_err();
    assert!(
        matches!(e, SearchError::Overloaded(_)) && e.is_transient(),
        "{e:?}"
    );
    assert_eq!(count(&proxy), 1 + search.config().backoff_attempts as usize);
    assert_eq!(search.limiter().limit(), 1, "halved down to the minimum");

    // Permanent answers are not tried again.
    for (status, body, permanent) in [
        (400, "es8_400_parsing_exception", true),
        (400, "es8_400_x_content_parse_exception", true),
        (429, "es8_429_circuit_breaking_permanent", true),
        (404, "es8_404_index_not_found", false),
    ] {
        proxy.clear_faults();
        proxy.forget_seen();
        proxy.inject(Rule::new(
            "_search?",
            Fault::Respond(status, error_body(body)),
        ));
        let e = search.count("content_tr", &query).await.unwrap_err();
        assert_eq!(e.is_transient(), !permanent, "{body}: {e:?}");
        assert!(!e.is_overload(), "{body}");
        assert_eq!(count(&proxy), 1, "{body}: not retried in place");
    }

    // A node that does not answer in time is overload too.
    proxy.clear_faults();
    proxy.forget_seen();
    let mut cfg = config(&proxy.url, SearchFlavor::Opensearch);
    cfg.timeout = Duration::from_millis(300);
    cfg.backoff_attempts = 1;
    let slow = Search::new(&cfg).unwrap();
    proxy.inject(Rule::new("_search?", Fault::Delay(Duration::from_secs(2))));
    let e = slow.count("content_tr", &query).await.unwrap_err();
    assert!(matches!(e, SearchError::Overloaded(_)), "{e:?}");
    assert!(e.to_string().contains("no answer within"), "{e}");
}

#[tokio::test]
async fn an_expired_point_in_time_is_reopened_and_the_scan_goes_on() {
    for flavor in FLAVORS {
        let (clone, proxy) = proxied(flavor).await;
        let search = Search::new(&config(&proxy.url, flavor)).unwrap();
        let (query, expected) = brand_one();
        let body = match flavor {
            SearchFlavor::Opensearch => error_body("os_404_search_context_missing"),
            SearchFlavor::Elasticsearch => error_body("es8_404_search_context_missing"),
        };
        proxy.inject(
            Rule::new("_search?", Fault::Respond(404, body))
                .body_contains("search_after")
                .times(1),
        );
        let (ids, _) = scan(&search, "content_tr", query).await.unwrap();
        assert_eq!(ids.len(), expected.len(), "{flavor:?}: nothing twice");
        assert_eq!(
            ids.into_iter().collect::<BTreeSet<_>>(),
            expected,
            "{flavor:?}"
        );
        let opens = proxy
            .seen()
            .iter()
            .filter(|s| {
                s.method == "POST"
                    && (s.path.contains("/_pit?") || s.path.contains("point_in_time?"))
            })
            .count();
        assert_eq!(opens, 2, "{flavor:?}: one reopen");
        no_open_pits(&clone).await;
    }
}

#[tokio::test]
async fn a_point_in_time_is_closed_on_every_exit() {
    for flavor in FLAVORS {
        let (clone, proxy) = proxied(flavor).await;
        let search = Search::new(&config(&proxy.url, flavor)).unwrap();
        let (query, _) = brand_one();
        // Dropped after the first page (a publish failed in the caller).
        {
            let mut pages = std::pin::pin!(search.scan("content_tr", query.clone()));
            assert_eq!(pages.next().await.unwrap().unwrap().len(), 50);
            assert_eq!(open_pits(&clone).await, 1, "{flavor:?}: a scan holds one");
        }
        no_open_pits(&clone).await;
        // A later page is refused.
        proxy.inject(
            Rule::new(
                "_search?",
                Fault::Respond(400, error_body("es8_400_parsing_exception")),
            )
            .body_contains("search_after")
            .times(1),
        );
        let (_, e) = scan(&search, "content_tr", query.clone())
            .await
            .unwrap_err();
        assert!(matches!(e, SearchError::Rejected(_)), "{e:?}");
        no_open_pits(&clone).await;
        // A later page cannot be read.
        proxy.inject(
            Rule::new("_search?", Fault::Respond(200, "{\"hits\": 7}".into()))
                .body_contains("search_after")
                .times(1),
        );
        let (_, e) = scan(&search, "content_tr", query).await.unwrap_err();
        assert!(matches!(e, SearchError::Unavailable(_)), "{e:?}");
        no_open_pits(&clone).await;
        let closes = proxy.seen().iter().filter(|s| s.method == "DELETE").count();
        assert_eq!(closes, 3, "{flavor:?}: one close per scan");
    }
}

#[tokio::test]
async fn a_split_delivers_every_document_exactly_once_with_or_without_search_partition() {
    let url = catalogue_clone().await;
    // 3,400 documents of brand 1: ~2,450 distinct keys from 1 to 2,500 (more
    // than one page of buckets), 3 buckets far above 999, one bucket of 392
    // (over the limit alone), and 68 without searchPartition. Plus brand 2.
    let mut docs = Vec::new();
    let mut expected = BTreeSet::new();
    for id in 1..=3400i64 {
        let mut d = json!({ "id": id, "brand": { "id": 1 } });
        if id % 50 != 0 {
            d["searchPartition"] = json!(match id {
                ..=2500 => id,
                2501..=3000 => 50_000 + id % 3,
                _ => 70_000,
            });
        }
        docs.push(d);
        expected.insert(id);
    }
    for id in 5000..5100i64 {
        docs.push(json!({ "id": id, "brand": { "id": 2 }, "searchPartition": id % 7 }));
    }
    load(&url, "split_test", "integer", &docs).await;
    let mut cfg = config(&url, SearchFlavor::Opensearch);
    cfg.page_size = 500;
    let search = Search::new(&cfg).unwrap();
    let query = terms_query("brand.id", &[1], None);

    let h = search
        .partition_histogram("split_test", &query)
        .await
        .unwrap();
    assert_eq!(h.missing, 68);
    assert!(
        h.buckets.len() > 1000,
        "every key, past the first page: {}",
        h.buckets.len()
    );
    assert_eq!(h.buckets.last(), Some(&(70_000, 392)));
    assert_eq!(h.total(), 3400);

    let limit = 300;
    let groups = group_partitions(&h, limit);
    let (unsplit, _) = scan(&search, "split_test", query.clone()).await.unwrap();
    assert_eq!(unsplit.iter().copied().collect::<BTreeSet<_>>(), expected);
    let mut union = Vec::new();
    for g in &groups {
        let (ids, _) = scan(
            &search,
            "split_test",
            with_partition_range(&query, g.from, g.to),
        )
        .await
        .unwrap();
        assert_eq!(
            ids.len() as u64,
            g.hits,
            "{g:?}: the group holds what the histogram said"
        );
        let single_bucket = g.first_key == g.last_key && g.from.is_some();
        assert!(g.hits <= limit || single_bucket, "{g:?} passes the limit");
        union.extend(ids);
    }
    assert_eq!(union.len(), unsplit.len(), "nothing twice");
    assert_eq!(
        union.into_iter().collect::<BTreeSet<_>>(),
        expected,
        "nothing missed"
    );
    assert!(
        groups[0].hits >= 68,
        "the first group takes the documents without the field"
    );
}

#[tokio::test]
async fn a_histogram_without_usable_buckets_is_unsplittable() {
    let url = catalogue_clone().await;
    let docs: Vec<Value> = (1..=30i64)
        .map(|id| json!({ "id": id, "brand": { "id": 1 }, "searchPartition": (id % 12).to_string() }))
        .collect();
    load(&url, "keyword_partition", "keyword", &docs).await;
    let search = Search::new(&config(&url, SearchFlavor::Opensearch)).unwrap();
    let query = terms_query("brand.id", &[1], None);
    let e = search
        .partition_histogram("keyword_partition", &query)
        .await
        .unwrap_err();
    assert!(matches!(e, SearchError::Unsplittable(_)), "{e:?}");
    assert!(!e.is_transient() && e.class() == "unsplittable");
    assert!(e.to_string().contains("keyword"), "{e}");

    // Documents match, and the aggregation comes back empty.
    let proxy = FaultProxy::start(&url).await;
    let empty = json!({
        "_shards": { "total": 1, "successful": 1, "failed": 0 }, "timed_out": false,
        "hits": { "total": { "value": 30, "relation": "eq" }, "hits": [] },
        "aggregations": { "partitions": { "buckets": [] }, "no_partition": { "doc_count": 0 } }
    });
    proxy.inject(Rule::new(
        "_search?",
        Fault::Respond(200, empty.to_string()),
    ));
    let search = Search::new(&config(&proxy.url, SearchFlavor::Opensearch)).unwrap();
    let e = search
        .partition_histogram("content_tr", &query)
        .await
        .unwrap_err();
    assert!(matches!(e, SearchError::Unsplittable(_)), "{e:?}");
}

#[tokio::test]
async fn hits_without_an_id_are_counted_never_invented() {
    let url = catalogue_clone().await;
    let mut docs: Vec<Value> = (1..=100i64)
        .map(|id| json!({ "id": id, "brand": { "id": 1 }, "searchPartition": id % 10 }))
        .collect();
    for n in 0..20 {
        docs.push(json!({ "brand": { "id": 1 }, "searchPartition": n % 10 }));
    }
    load(&url, "no_ids", "integer", &docs).await;
    for flavor in FLAVORS {
        for pit in [true, false] {
            let mut cfg = config(&url, flavor);
            cfg.point_in_time = pit;
            let search = Search::new(&cfg).unwrap();
            let (ids, missing) = scan(&search, "no_ids", terms_query("brand.id", &[1], None))
                .await
                .unwrap();
            assert_eq!(ids, (1..=100).collect::<Vec<_>>(), "{flavor:?} pit={pit}");
            assert_eq!(missing, 20, "{flavor:?} pit={pit}");
        }
    }
}

// ------------------------------------------------------------ through the fleet

fn request(field: &str, ids: &[i64], request_id: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "v": 1, "requestId": request_id, "parameterIds": ids, "parameterName": field,
        "invalidationType": "PRICE", "indexKeys": ["trTR"],
    }))
    .unwrap()
}

const OUTBOUND: &str = "productcontent_price_tr_tr";

#[tokio::test]
async fn a_partial_count_sends_the_request_to_the_retry_path_and_nothing_out() {
    let (_clone, proxy) = proxied(SearchFlavor::Opensearch).await;
    proxy.inject(Rule::new("_search?", Fault::FailedShard));
    let env = TestEnv::with(|c| {
        c.search.url = proxy.url.clone();
        c.retry.delay = Duration::from_secs(60);
    })
    .await;
    let fleet = env.start(&[WorkerKind::Dispatcher]);
    let (brand, _) = small_brand();
    env.publish(
        names::REQUESTS,
        "price",
        &request("brand.id", &[brand], "partial-1"),
    )
    .await;
    eventually(
        Duration::from_secs(20),
        "the request in the delay queue",
        || async { (env.depth(names::RETRY_DELAY).await == 1).then_some(()) },
    )
    .await;
    fleet.stop().await.unwrap();
    let m = env
        .take(names::RETRY_DELAY, 1, Duration::from_secs(5))
        .await
        .remove(0);
    assert_eq!(header(&m, headers::ERROR_CLASS), "partial_results");
    assert_eq!(
        env.depth(OUTBOUND).await,
        0,
        "no id of a partial answer went out"
    );
}

#[tokio::test]
async fn a_couple_of_429s_are_absorbed_without_the_retry_path() {
    let (_clone, proxy) = proxied(SearchFlavor::Opensearch).await;
    proxy.inject(
        Rule::new(
            "_search?",
            Fault::Respond(429, error_body("os_429_rejected_execution")),
        )
        .times(2),
    );
    let env = TestEnv::with(|c| {
        c.search.url = proxy.url.clone();
        c.search.backoff_initial = Duration::from_millis(20);
    })
    .await;
    let fleet = env.start(&[WorkerKind::Dispatcher]);
    let (brand, expected) = small_brand();
    env.publish(
        names::REQUESTS,
        "price",
        &request("brand.id", &[brand], "pushback-1"),
    )
    .await;
    let (ids, _) = env
        .collect_ids(OUTBOUND, expected.len(), Duration::from_secs(30))
        .await;
    assert_eq!(ids, expected);
    assert_eq!(
        env.depth(names::RETRY_DELAY).await,
        0,
        "nothing took the retry path"
    );
    assert_eq!(env.depth(names::RETRY_READY).await, 0);
    assert_eq!(proxy.seen().iter().filter(|s| s.faulted).count(), 2);
    fleet.stop().await.unwrap();
}

#[tokio::test]
async fn a_split_without_usable_buckets_is_dead_lettered_not_an_empty_job() {
    let url = catalogue_clone().await;
    let docs: Vec<Value> = (1..=450i64)
        .map(
            |id| json!({ "id": id, "brand": { "id": 1 }, "searchPartition": (id % 9).to_string() }),
        )
        .collect();
    load(&url, "kw_content", "keyword", &docs).await;
    let env = TestEnv::with(|c| {
        c.search.url = url.clone();
        c.search.indices.insert("trTR".into(), "kw_content".into());
    })
    .await;
    assert!(env.config.dispatcher.split_limit < 450);
    let fleet = env.start(&[WorkerKind::Dispatcher]);
    env.publish(names::REQUESTS, "price", &request("brand.id", &[1], "kw-1"))
        .await;
    let dead = env
        .take(&names::dlq(names::FAST_LANE), 1, Duration::from_secs(20))
        .await;
    fleet.stop().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(header(&dead[0], headers::ERROR_CLASS), "unsplittable");
    let pool = env.db().await;
    let jobs = fleet_shared::db::jobs_of_request(&pool, "kw-1")
        .await
        .unwrap();
    assert!(jobs.is_empty(), "no job was recorded: {jobs:?}");
    assert_eq!(env.depth(OUTBOUND).await, 0);
}

#[tokio::test]
async fn the_fleet_publishes_no_invented_id_and_counts_the_hits_without_one() {
    let url = catalogue_clone().await;
    let mut docs: Vec<Value> = (1..=60i64)
        .map(|id| json!({ "id": id, "brand": { "id": 1 }, "searchPartition": id % 10 }))
        .collect();
    for _ in 0..7 {
        docs.push(json!({ "brand": { "id": 1 }, "searchPartition": 3 }));
    }
    load(&url, "tr_no_ids", "integer", &docs).await;
    let metrics = fleet_shared::telemetry::metrics_handle();
    let env = TestEnv::with(|c| {
        c.search.url = url.clone();
        c.search.indices.insert("trTR".into(), "tr_no_ids".into());
    })
    .await;
    let fleet = env.start(&[WorkerKind::Dispatcher]);
    env.publish(
        names::REQUESTS,
        "price",
        &request("brand.id", &[1], "noid-1"),
    )
    .await;
    let (ids, _) = env.collect_ids(OUTBOUND, 60, Duration::from_secs(20)).await;
    fleet.stop().await.unwrap();
    assert_eq!(
        ids,
        (1..=60).collect::<BTreeSet<_>>(),
        "only real ids, no placeholder"
    );
    let counted: f64 = metrics
        .render()
        .lines()
        .filter(|l| l.starts_with("fleet_hits_without_id_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(counted >= 7.0, "counted {counted}");
}
