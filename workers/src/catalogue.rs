//! A generated content catalogue for development, tests and benchmarks.
//!
//! Documents have `id`, `searchPartition = id % 1000`, `brand.id`,
//! `category.id`, `supplier.id`, `tags` and a nested `listings` array, with
//! realistic skew: a few huge brands and categories, a long tail of small
//! ones. Generation is deterministic for a given seed, so a test can rebuild
//! the exact documents it loaded.
//!
//! osmem-server loads a seed directory (`<index>.index.json` +
//! `<index>.ndjson`) at start-up much faster than through `_bulk`, so the
//! usual path is [`write_seed_dir`]; [`bulk_load`] feeds a running
//! Elasticsearch/OpenSearch instead.

use std::io::{BufWriter, Write};
use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};

/// What to generate.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Documents per index.
    pub docs: u64,
    /// First content id; ids are `first_id .. first_id + docs`.
    pub first_id: i64,
    pub brands: u32,
    pub categories: u32,
    pub suppliers: u32,
    pub seed: u64,
}

impl Default for Spec {
    fn default() -> Self {
        Self {
            docs: 10_000,
            first_id: 1,
            brands: 500,
            categories: 200,
            suppliers: 2000,
            seed: 42,
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Listing {
    pub id: i64,
    pub merchant_id: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct IdRef {
    pub id: i64,
}

/// One content document.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Content {
    pub id: i64,
    pub search_partition: i64,
    pub brand: IdRef,
    pub category: IdRef,
    pub supplier: IdRef,
    pub tags: Vec<String>,
    pub listings: Vec<Listing>,
}

/// A skewed pick in `1..=n`: low numbers are much more likely (about a
/// quarter of all documents fall in the first 1 % of values).
fn skewed(rng: &mut StdRng, n: u32, power: f64) -> i64 {
    let u: f64 = rng.random();
    1 + ((n as f64) * u.powf(power)).floor().min(n as f64 - 1.0) as i64
}

const TAGS: &[&str] = &[
    "new",
    "sale",
    "eco",
    "bestseller",
    "limited",
    "gift",
    "premium",
];

/// The documents of `spec`, generated lazily (never all in memory).
pub fn documents(spec: &Spec) -> impl Iterator<Item = Content> + '_ {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    (0..spec.docs).map(move |i| {
        let id = spec.first_id + i as i64;
        let n_listings = rng.random_range(1..=3);
        let listings = (0..n_listings)
            .map(|j| Listing {
                id: id * 10 + j,
                merchant_id: skewed(&mut rng, 5000, 3.0),
            })
            .collect();
        let n_tags = rng.random_range(0..=2);
        let tags = (0..n_tags)
            .map(|_| TAGS[rng.random_range(0..TAGS.len())].to_string())
            .collect();
        Content {
            id,
            search_partition: id.rem_euclid(1000),
            brand: IdRef {
                id: skewed(&mut rng, spec.brands, 4.0),
            },
            category: IdRef {
                id: skewed(&mut rng, spec.categories, 3.0),
            },
            supplier: IdRef {
                id: skewed(&mut rng, spec.suppliers, 2.0),
            },
            tags,
            listings,
        }
    })
}

/// The index settings and mapping the fleet's queries need.
pub fn index_body() -> Value {
    json!({
        "settings": { "number_of_shards": 1, "number_of_replicas": 0 },
        "mappings": {
            "dynamic": "strict",
            "properties": {
                "id": { "type": "long" },
                "searchPartition": { "type": "integer" },
                "brand": { "properties": { "id": { "type": "long" } } },
                "category": { "properties": { "id": { "type": "long" } } },
                "supplier": { "properties": { "id": { "type": "long" } } },
                "tags": { "type": "keyword" },
                "listings": { "type": "nested", "properties": {
                    "id": { "type": "long" },
                    "merchantId": { "type": "long" }
                } }
            }
        }
    })
}

/// Writes an osmem-server seed directory: one index per name in `indices`,
/// each with the documents of `spec`.
pub fn write_seed_dir(dir: &Path, indices: &[&str], spec: &Spec) -> std::io::Result<u64> {
    std::fs::create_dir_all(dir)?;
    let mut written = 0;
    for index in indices {
        std::fs::write(
            dir.join(format!("{index}.index.json")),
            serde_json::to_vec_pretty(&index_body())?,
        )?;
        let mut out = BufWriter::new(std::fs::File::create(dir.join(format!("{index}.ndjson")))?);
        for doc in documents(spec) {
            writeln!(out, "{{\"index\":{{\"_id\":\"{}\"}}}}", doc.id)?;
            serde_json::to_writer(&mut out, &doc)?;
            out.write_all(b"\n")?;
            written += 1;
        }
        out.flush()?;
    }
    Ok(written)
}

/// Creates the indices on a running cluster and loads the documents through `_bulk`.
pub async fn bulk_load(url: &str, indices: &[&str], spec: &Spec) -> anyhow::Result<u64> {
    let http = reqwest::Client::new();
    let base = url.trim_end_matches('/');
    let mut loaded = 0;
    for index in indices {
        let res = http
            .put(format!("{base}/{index}"))
            .json(&index_body())
            .send()
            .await?;
        if !res.status().is_success() {
            let text = res.text().await.unwrap_or_default();
            if !text.contains("already_exists") {
                anyhow::bail!("creating index {index}: {text}");
            }
        }
        let mut body = String::new();
        let mut n = 0;
        let mut docs = documents(spec).peekable();
        while let Some(doc) = docs.next() {
            body.push_str(&format!("{{\"index\":{{\"_id\":\"{}\"}}}}\n", doc.id));
            body.push_str(&serde_json::to_string(&doc)?);
            body.push('\n');
            n += 1;
            if n % 5000 == 0 || docs.peek().is_none() {
                let res = http
                    .post(format!("{base}/{index}/_bulk?refresh=false"))
                    .header("content-type", "application/x-ndjson")
                    .body(std::mem::take(&mut body))
                    .send()
                    .await?;
                let v: Value = res.json().await?;
                if v["errors"] == json!(true) {
                    anyhow::bail!(
                        "bulk load into {index} had errors: {}",
                        v.to_string().chars().take(500).collect::<String>()
                    );
                }
            }
        }
        http.post(format!("{base}/{index}/_refresh")).send().await?;
        loaded += n;
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_skewed() {
        let spec = Spec {
            docs: 20_000,
            ..Spec::default()
        };
        let a: Vec<Content> = documents(&spec).take(50).collect();
        let b: Vec<Content> = documents(&spec).take(50).collect();
        assert_eq!(a, b);
        let mut per_brand = std::collections::HashMap::<i64, u64>::new();
        for d in documents(&spec) {
            assert_eq!(d.search_partition, d.id % 1000);
            *per_brand.entry(d.brand.id).or_default() += 1;
        }
        let biggest = per_brand.values().max().copied().unwrap();
        let median = {
            let mut v: Vec<u64> = per_brand.values().copied().collect();
            v.sort();
            v[v.len() / 2]
        };
        assert!(
            biggest > 50 * median,
            "biggest brand {biggest}, median {median}"
        );
    }
}
