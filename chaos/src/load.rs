//! The mixed load and what it must deliver.
//!
//! Every item is a message the suite publishes (a request or a source
//! event) together with the ids it must bring to which outbound queue,
//! computed from the catalogue generator itself (like
//! `fleet_testkit::expected_ids`), never from the search server. Each kind
//! of item has outbound queues of its own, so a queue's expected ids are
//! exactly the union of its items' ids and anything else on it is an
//! invented id:
//!
//! | path | what | outbound queues |
//! | --- | --- | --- |
//! | probe | one IMMEDIATELY `id` request a second during the faults | `immediately_tr_tr` |
//! | fast | PRICE `id` requests, 1-5 known ids each | `price_tr_tr`, `price_de_de` |
//! | search | PRICE `brand.id` requests on brands small enough to resolve in place | `price_en_at` |
//! | source | stock created / updated (critical and not) and price events | `stock_en_be`, `price_en_hr` |
//! | split | bulk requests over most of the catalogue, split into partition tasks | one type each |

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::bail;
use fleet_shared::lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use fleet_shared::lapin::{BasicProperties, Channel, Connection};
use fleet_shared::message::{outbound_queue, IndexKey, InvalidationType};
use fleet_shared::topology::names;
use fleet_workers::catalogue::{self, Spec};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;

/// Which way an item goes through the fleet; recovery times are per path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Path {
    /// Fast-lane `id` requests published once a second (dispatcher only).
    Probe,
    /// Fast-lane `id` requests of the load.
    Fast,
    /// Fast-lane `brand.id` requests resolved in place (dispatcher, Redis, search).
    Search,
    /// Source events (ingest, then the dispatcher).
    Source,
    /// Split requests (dispatcher, PostgreSQL, search, partition workers).
    Split,
}

impl Path {
    pub const ALL: &'static [Path] = &[
        Path::Probe,
        Path::Fast,
        Path::Search,
        Path::Source,
        Path::Split,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Path::Probe => "probe (fast lane, id)",
            Path::Fast => "fast lane, id",
            Path::Search => "fast lane, brand.id in place",
            Path::Source => "source events (ingest)",
            Path::Split => "split requests",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Path::Probe => "probe",
            Path::Fast => "fast",
            Path::Search => "search",
            Path::Source => "source",
            Path::Split => "split",
        }
    }
}

/// One message of the load.
#[derive(Debug, Clone)]
pub struct Item {
    pub path: Path,
    pub exchange: String,
    pub routing_key: String,
    pub body: Vec<u8>,
    /// The ids it must deliver, per outbound queue (none for an ignored event).
    pub expects: Vec<(String, Vec<i64>)>,
    /// When to publish it, from the start of the load.
    pub at: Duration,
    /// A split request: its id and index keys (one job each).
    pub split: Option<(String, Vec<IndexKey>)>,
}

/// How big the load is.
#[derive(Debug, Clone)]
pub struct LoadSize {
    pub catalogue: Spec,
    pub split_limit: u64,
    pub fast_requests: usize,
    pub brand_requests: usize,
    /// Stock-created, stock-updated (critical) and price events, each.
    pub source_events: usize,
    /// Stock updates above the critical quantity: they must invalidate nothing.
    pub ignored_events: usize,
}

/// The planned load.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Published at their `at`.
    pub items: Vec<Item>,
    /// Split requests, published one at the start and one shortly before
    /// each fault, so that every fault meets a job in progress.
    pub splits: Vec<Item>,
}

fn request(
    request_id: &str,
    t: InvalidationType,
    field: &str,
    ids: &[i64],
    keys: &[IndexKey],
) -> Vec<u8> {
    let keys: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
    serde_json::to_vec(&json!({
        "v": 1, "requestId": request_id, "parameterIds": ids, "parameterName": field,
        "invalidationType": t.as_str(), "indexKeys": keys,
    }))
    .expect("a JSON value serialises")
}

fn request_item(
    path: Path,
    request_id: &str,
    t: InvalidationType,
    field: &str,
    ids: &[i64],
    keys: &[IndexKey],
    content: &[i64],
) -> Item {
    Item {
        path,
        exchange: names::REQUESTS.into(),
        routing_key: t.snake(),
        body: request(request_id, t, field, ids, keys),
        expects: keys
            .iter()
            .map(|k| (outbound_queue(t, *k), content.to_vec()))
            .collect(),
        at: Duration::ZERO,
        split: None,
    }
}

/// The probe number `n`: one id on its own queue.
pub fn probe(run: &str, n: u64, docs: u64) -> Item {
    let id = 1 + (n % docs) as i64;
    request_item(
        Path::Probe,
        &format!("{run}-probe-{n}"),
        InvalidationType::Immediately,
        "id",
        &[id],
        &[IndexKey::TrTr],
        &[id],
    )
}

/// Ids per brand, category and supplier of the catalogue.
struct Index {
    brand: HashMap<i64, Vec<i64>>,
    category: HashMap<i64, Vec<i64>>,
    supplier: HashMap<i64, Vec<i64>>,
}

impl Index {
    fn of(spec: &Spec) -> Index {
        let mut ix = Index {
            brand: HashMap::new(),
            category: HashMap::new(),
            supplier: HashMap::new(),
        };
        for d in catalogue::documents(spec) {
            ix.brand.entry(d.brand.id).or_default().push(d.id);
            ix.category.entry(d.category.id).or_default().push(d.id);
            ix.supplier.entry(d.supplier.id).or_default().push(d.id);
        }
        ix
    }

    fn matching(&self, field: &str, values: &[i64]) -> Vec<i64> {
        let map = match field {
            "brand.id" => &self.brand,
            "category.id" => &self.category,
            _ => &self.supplier,
        };
        let mut ids: Vec<i64> = values
            .iter()
            .flat_map(|v| map.get(v).into_iter().flatten().copied())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// Plans the load over `span` (the faults' expected length) and
/// `n_splits` split requests. Deterministic for a given `seed`; request ids
/// start with `run`.
pub fn plan(
    size: &LoadSize,
    span: Duration,
    run: &str,
    seed: u64,
    n_splits: usize,
) -> anyhow::Result<Plan> {
    let spec = &size.catalogue;
    let ix = Index::of(spec);
    let mut rng = StdRng::seed_from_u64(seed);
    let at = |rng: &mut StdRng| span.mul_f64(rng.random::<f64>());
    let mut items = Vec::new();

    // Content ids for the id requests and events: distinct, from the catalogue.
    let mut pool: Vec<i64> = (0..spec.docs as i64).map(|i| spec.first_id + i).collect();
    pool.shuffle(&mut rng);
    let mut pool = pool.into_iter();
    let mut take = |n: usize| -> anyhow::Result<Vec<i64>> {
        let ids: Vec<i64> = pool.by_ref().take(n).collect();
        if ids.len() < n {
            bail!("the catalogue has too few documents for the planned load");
        }
        Ok(ids)
    };

    for n in 0..size.fast_requests {
        let ids = take(rng.random_range(1..=5))?;
        items.push(Item {
            at: at(&mut rng),
            ..request_item(
                Path::Fast,
                &format!("{run}-fast-{n}"),
                InvalidationType::Price,
                "id",
                &ids,
                &[IndexKey::TrTr, IndexKey::DeDe],
                &ids,
            )
        });
    }

    let mut brands: Vec<i64> = ix
        .brand
        .iter()
        .filter(|(_, ids)| (ids.len() as u64) <= size.split_limit)
        .map(|(b, _)| *b)
        .collect();
    brands.sort_unstable();
    brands.shuffle(&mut rng);
    if brands.len() < size.brand_requests {
        bail!(
            "only {} brands resolve in place; {} brand requests planned",
            brands.len(),
            size.brand_requests
        );
    }
    for (n, b) in brands.iter().take(size.brand_requests).enumerate() {
        let content = ix.matching("brand.id", &[*b]);
        items.push(Item {
            at: at(&mut rng),
            ..request_item(
                Path::Search,
                &format!("{run}-brand-{n}"),
                InvalidationType::Price,
                "brand.id",
                &[*b],
                &[IndexKey::EnAt],
                &content,
            )
        });
    }

    let stock_q = outbound_queue(InvalidationType::Stock, IndexKey::EnBe);
    let price_q = outbound_queue(InvalidationType::Price, IndexKey::EnHr);
    let event =
        |body: serde_json::Value, exchange: &str, expects: Vec<(String, Vec<i64>)>, t| Item {
            path: Path::Source,
            exchange: exchange.into(),
            routing_key: String::new(),
            body: serde_json::to_vec(&body).expect("a JSON value serialises"),
            expects,
            at: t,
            split: None,
        };
    for _ in 0..size.source_events {
        let ids = take(3)?;
        let t = [at(&mut rng), at(&mut rng), at(&mut rng)];
        items.push(event(
            json!({"contentId": ids[0], "event": "created", "quantity": 40, "indexKeys": ["enBE"]}),
            "source.stock",
            vec![(stock_q.clone(), vec![ids[0]])],
            t[0],
        ));
        items.push(event(
            json!({"contentId": ids[1], "event": "updated", "quantity": 1, "indexKeys": ["enBE"]}),
            "source.stock",
            vec![(stock_q.clone(), vec![ids[1]])],
            t[1],
        ));
        items.push(event(
            json!({"contentId": ids[2], "indexKeys": ["enHR"]}),
            "source.price",
            vec![(price_q.clone(), vec![ids[2]])],
            t[2],
        ));
    }
    for _ in 0..size.ignored_events {
        let id = take(1)?[0];
        let t = at(&mut rng);
        items.push(event(
            json!({"contentId": id, "event": "updated", "quantity": 50, "indexKeys": ["enBE"]}),
            "source.stock",
            vec![],
            t,
        ));
    }

    let splits = plan_splits(size, &ix, run, n_splits)?;
    items.sort_by_key(|i| i.at);
    Ok(Plan { items, splits })
}

/// The bulk-lane types: split requests use these, each (type, index key)
/// pair once, so every split request has an outbound queue of its own
/// (the other paths use fast-lane types).
const BULK: &[InvalidationType] = &[
    InvalidationType::Supplier,
    InvalidationType::Assortment,
    InvalidationType::Product,
    InvalidationType::BrandCategory,
    InvalidationType::Content,
    InvalidationType::Label,
    InvalidationType::Tag,
    InvalidationType::ContentScore,
    InvalidationType::RatingScore,
    InvalidationType::FitRatio,
    InvalidationType::Translation,
];

/// `n` split requests of four sizes in turn: every supplier (the whole
/// catalogue), the three biggest brands, half the suppliers, a tenth of the
/// categories — each over the split limit.
fn plan_splits(size: &LoadSize, ix: &Index, run: &str, n: usize) -> anyhow::Result<Vec<Item>> {
    let spec = &size.catalogue;
    let suppliers: Vec<i64> = (1..=spec.suppliers as i64).collect();
    let half_suppliers: Vec<i64> = (1..=(spec.suppliers as i64 / 2).max(1)).collect();
    let some_categories: Vec<i64> = (1..=(spec.categories as i64 / 10).max(1)).collect();
    let shapes: [(&str, Vec<i64>); 4] = [
        ("supplier.id", suppliers),
        ("brand.id", vec![1, 2, 3]),
        ("supplier.id", half_suppliers),
        ("category.id", some_categories),
    ];
    let pairs = BULK.len() * IndexKey::ALL.len();
    if n > pairs {
        bail!("at most {pairs} split requests (one per bulk type and index key)");
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t = BULK[i % BULK.len()];
        let key = IndexKey::ALL[(i / BULK.len()) % IndexKey::ALL.len()];
        let (field, values) = &shapes[i % shapes.len()];
        let content = ix.matching(field, values);
        if content.len() as u64 <= size.split_limit {
            bail!(
                "split request {i} ({} on {field}) matches {} documents, not over the split limit {}",
                t.as_str(),
                content.len(),
                size.split_limit
            );
        }
        let request_id = format!("{run}-split-{i}");
        let mut item = request_item(Path::Split, &request_id, t, field, values, &[key], &content);
        item.split = Some((request_id, vec![key]));
        out.push(item);
    }
    Ok(out)
}

/// A confirmed publisher that outlives broker restarts: it reconnects and
/// publishes again until the broker confirms (a message whose confirm was
/// lost may go twice; that is the producer's at-least-once, as in production).
pub struct Producer {
    url: String,
    conn: Option<(Connection, Channel)>,
}

impl Producer {
    pub fn new(url: &str) -> Self {
        Producer {
            url: url.into(),
            conn: None,
        }
    }

    async fn channel(&mut self) -> anyhow::Result<&Channel> {
        if self
            .conn
            .as_ref()
            .is_some_and(|(c, ch)| !c.status().connected() || !ch.status().connected())
        {
            self.conn = None;
        }
        if self.conn.is_none() {
            let identity = fleet_shared::broker::Identity::new("chaos");
            let conn = fleet_shared::broker::connect(&self.url, &identity, "producer").await?;
            let ch = conn.create_channel().await?;
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            self.conn = Some((conn, ch));
        }
        Ok(&self.conn.as_ref().expect("set above").1)
    }

    async fn try_publish(&mut self, item: &Item) -> anyhow::Result<()> {
        let ch = self.channel().await?;
        let confirm = ch
            .basic_publish(
                item.exchange.as_str().into(),
                item.routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &item.body,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into()),
            )
            .await?;
        let confirmation = tokio::time::timeout(Duration::from_secs(10), confirm).await??;
        if !confirmation.is_ack() {
            bail!("the broker refused the message (nack)");
        }
        if confirmation.take_message().is_some() {
            bail!("the message was returned unroutable");
        }
        Ok(())
    }

    /// Publishes until confirmed or `deadline`; returns when the successful
    /// attempt began and how many attempts it took.
    pub async fn publish(
        &mut self,
        item: &Item,
        deadline: Instant,
    ) -> anyhow::Result<(Instant, u32)> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let began = Instant::now();
            match self.try_publish(item).await {
                Ok(()) => return Ok((began, attempts)),
                Err(e) => {
                    self.conn = None;
                    if Instant::now() > deadline {
                        bail!("could not publish after {attempts} attempts: {e:#}");
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

/// An item as it was published.
#[derive(Debug, Clone)]
pub struct Sent {
    pub item: Item,
    /// When the confirmed attempt began (`None`: never confirmed).
    pub at: Option<Instant>,
    pub attempts: u32,
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::options::Options;

    #[test]
    fn every_split_request_has_its_own_queue_and_no_path_shares_one() {
        let opts = Options::ci();
        let plan = plan(&opts.load, Duration::from_secs(60), "t", 1, 11).unwrap();
        let mut owner: HashMap<String, Path> = HashMap::new();
        let mut split_queues = HashSet::new();
        for item in plan.items.iter().chain(&plan.splits) {
            for (q, _) in &item.expects {
                let first = *owner.entry(q.clone()).or_insert(item.path);
                assert_eq!(first, item.path, "{q} is used by two paths");
                if item.path == Path::Split {
                    assert!(
                        split_queues.insert(q.clone()),
                        "{q} holds two split requests"
                    );
                }
            }
        }
        assert_eq!(split_queues.len(), 11);
    }

    #[test]
    fn in_place_requests_stay_under_the_split_limit_and_splits_go_over_it() {
        let opts = Options::ci();
        let plan = plan(&opts.load, Duration::from_secs(60), "t", 1, 4).unwrap();
        for item in &plan.items {
            for (_, ids) in &item.expects {
                assert!(ids.len() as u64 <= opts.load.split_limit);
            }
        }
        for item in &plan.splits {
            assert!(item.expects[0].1.len() as u64 > opts.load.split_limit);
        }
        assert_eq!(
            plan.items.iter().filter(|i| i.path == Path::Search).count(),
            60
        );
        // Ignored stock updates expect nothing; every other item something.
        let silent = plan.items.iter().filter(|i| i.expects.is_empty()).count();
        assert_eq!(silent, opts.load.ignored_events);
    }
}
