//! Queries, and splitting one by `searchPartition` (SPEC §3 step 4).

use serde_json::{json, Value};

/// The query of a request for one index: `terms` on the field, wrapped in a
/// `nested` query when the field is nested.
pub fn terms_query(field: &str, ids: &[i64], nested_path: Option<&str>) -> Value {
    let terms = json!({ "terms": { field: ids } });
    match nested_path {
        Some(path) => json!({ "nested": { "path": path, "query": terms } }),
        None => terms,
    }
}

/// `query` restricted to one partition range, `from <= searchPartition < to`.
///
/// An open lower bound (the first group) is written as "not
/// `searchPartition >= to`", so it also takes the documents without
/// `searchPartition`; the ranges of [`group_partitions`] then tile every
/// document, with or without the field, exactly once.
pub fn with_partition_range(query: &Value, from: Option<i64>, to: Option<i64>) -> Value {
    match (from, to) {
        (None, None) => query.clone(),
        (None, Some(t)) => json!({ "bool": {
            "filter": [ query ],
            "must_not": [ { "range": { "searchPartition": { "gte": t } } } ]
        } }),
        (Some(f), to) => {
            let mut range = serde_json::Map::new();
            range.insert("gte".into(), json!(f));
            if let Some(t) = to {
                range.insert("lt".into(), json!(t));
            }
            json!({ "bool": { "filter": [ query, { "range": { "searchPartition": range } } ] } })
        }
    }
}

/// How the documents of a query spread over `searchPartition`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    /// `(value, documents)` for every value the query matches, sorted by
    /// value, without gaps in what was read (every bucket of the server's
    /// answer, however many pages it took).
    pub buckets: Vec<(i64, u64)>,
    /// Documents without a `searchPartition` value: the first group takes them.
    pub missing: u64,
}

impl Histogram {
    /// Documents the histogram accounts for.
    pub fn total(&self) -> u64 {
        self.missing + self.buckets.iter().map(|b| b.1).sum::<u64>()
    }
}

impl From<Vec<(i64, u64)>> for Histogram {
    fn from(buckets: Vec<(i64, u64)>) -> Self {
        Histogram {
            buckets,
            missing: 0,
        }
    }
}

/// One partition of a split query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionGroup {
    /// Inclusive lower bound; `None` for the first group (from the minimum,
    /// and the documents without `searchPartition`).
    pub from: Option<i64>,
    /// Exclusive upper bound; `None` for the last group (to the maximum).
    pub to: Option<i64>,
    /// Documents the histogram counted in the group.
    pub hits: u64,
    /// The first and last bucket keys the group was built from; `None` for a
    /// group of only documents without `searchPartition`.
    pub first_key: Option<i64>,
    pub last_key: Option<i64>,
}

/// Groups consecutive histogram buckets (sorted by key) so that no group
/// holds more than `limit` documents unless one bucket alone does (the
/// documents without `searchPartition` count as one bucket before the first).
///
/// The ranges tile the whole `searchPartition` domain: the first starts at the
/// minimum (and takes the documents without the field), each ends just before
/// the next begins, the last is open-ended. So the union of the partition
/// queries is exactly the original query, even for documents that appear
/// between the aggregation and the partition queries.
pub fn group_partitions(histogram: &Histogram, limit: u64) -> Vec<PartitionGroup> {
    let mut groups: Vec<PartitionGroup> = Vec::new();
    if histogram.missing > 0 {
        groups.push(PartitionGroup {
            from: None,
            to: None,
            hits: histogram.missing,
            first_key: None,
            last_key: None,
        });
    }
    for &(key, count) in &histogram.buckets {
        match groups.last_mut() {
            Some(g) if g.hits + count <= limit => {
                g.hits += count;
                g.first_key.get_or_insert(key);
                g.last_key = Some(key);
            }
            _ => groups.push(PartitionGroup {
                from: Some(key),
                to: None,
                hits: count,
                first_key: Some(key),
                last_key: Some(key),
            }),
        }
    }
    let starts: Vec<Option<i64>> = groups.iter().map(|g| g.from).collect();
    for (i, g) in groups.iter_mut().enumerate() {
        if i == 0 {
            g.from = None;
        }
        // Every group after the first starts at a bucket key.
        g.to = starts.get(i + 1).copied().flatten();
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ranges(g: &[PartitionGroup]) -> Vec<(Option<i64>, Option<i64>, u64)> {
        g.iter().map(|g| (g.from, g.to, g.hits)).collect()
    }

    fn group(buckets: &[(i64, u64)], limit: u64) -> Vec<PartitionGroup> {
        group_partitions(&Histogram::from(buckets.to_vec()), limit)
    }

    /// Whether a value (or, for `None`, a document without the field) falls in
    /// a group's range, as the query of [`with_partition_range`] decides.
    fn contains(g: &PartitionGroup, v: Option<i64>) -> bool {
        match v {
            None => g.from.is_none(),
            Some(v) => g.from.is_none_or(|f| v >= f) && g.to.is_none_or(|t| v < t),
        }
    }

    #[test]
    fn the_spec_example_groups_without_passing_the_limit() {
        let buckets = [(0, 2600), (1, 7000), (2, 500), (3, 1000), (4, 8900)];
        let g = group(&buckets, 10_000);
        // [min, 1], [2, 3], [4, max] — as half-open ranges.
        assert_eq!(
            ranges(&g),
            vec![
                (None, Some(2), 9600),
                (Some(2), Some(4), 1500),
                (Some(4), None, 8900)
            ]
        );
    }

    #[test]
    fn a_single_huge_bucket_stands_alone() {
        let g = group(&[(0, 10), (1, 50_000), (2, 10)], 100);
        assert_eq!(
            ranges(&g),
            vec![
                (None, Some(1), 10),
                (Some(1), Some(2), 50_000),
                (Some(2), None, 10)
            ]
        );
    }

    #[test]
    fn groups_tile_the_domain_over_gaps() {
        let g = group(&[(5, 60), (17, 60), (900, 60)], 100);
        assert_eq!(
            ranges(&g),
            vec![
                (None, Some(17), 60),
                (Some(17), Some(900), 60),
                (Some(900), None, 60)
            ]
        );
        // Every possible value falls in exactly one group.
        for v in -5..1200 {
            let n = g.iter().filter(|g| contains(g, Some(v))).count();
            assert_eq!(n, 1, "value {v}");
        }
    }

    #[test]
    fn documents_without_the_field_join_the_first_group() {
        let h = Histogram {
            buckets: vec![(1, 30), (2, 30), (3, 30)],
            missing: 50,
        };
        assert_eq!(
            ranges(&group_partitions(&h, 100)),
            vec![(None, Some(2), 50 + 30), (Some(2), None, 60)]
        );
        // More of them than the limit: a group of their own, like one bucket.
        let h = Histogram {
            buckets: vec![(1, 30), (2, 30)],
            missing: 500,
        };
        let g = group_partitions(&h, 100);
        assert_eq!(ranges(&g), vec![(None, Some(1), 500), (Some(1), None, 60)]);
        assert_eq!(g[0].first_key, None);
        // Only documents without it: one group, the whole query.
        let h = Histogram {
            buckets: vec![],
            missing: 7,
        };
        assert_eq!(ranges(&group_partitions(&h, 100)), vec![(None, None, 7)]);
    }

    #[test]
    fn the_first_range_also_matches_documents_without_the_field() {
        let q = terms_query("listings.merchantId", &[1, 2], Some("listings"));
        assert_eq!(q["nested"]["path"], "listings");
        assert_eq!(
            q["nested"]["query"]["terms"]["listings.merchantId"],
            json!([1, 2])
        );
        let first = with_partition_range(&q, None, Some(10));
        assert_eq!(first["bool"]["filter"][0], q);
        assert_eq!(
            first["bool"]["must_not"][0]["range"]["searchPartition"],
            json!({"gte": 10})
        );
        let middle = with_partition_range(&q, Some(10), Some(20));
        assert_eq!(
            middle["bool"]["filter"][1]["range"]["searchPartition"],
            json!({"gte": 10, "lt": 20})
        );
        let last = with_partition_range(&q, Some(20), None);
        assert_eq!(
            last["bool"]["filter"][1]["range"]["searchPartition"],
            json!({"gte": 20})
        );
        assert_eq!(with_partition_range(&q, None, None), q);
    }

    fn histogram() -> impl Strategy<Value = Histogram> {
        (
            proptest::collection::btree_map(-3000i64..3000, 1u64..400, 0..60),
            prop_oneof![Just(0u64), 1u64..600],
        )
            .prop_map(|(m, missing)| Histogram {
                buckets: m.into_iter().collect(),
                missing,
            })
    }

    proptest! {
        /// Every bucket layout: the ranges tile the domain (each value, and a
        /// document without the field, in exactly one group), each group
        /// counts exactly the buckets its range holds, no group passes the
        /// limit unless it is a single bucket (or only the documents without
        /// the field), and no two neighbours could have been one group.
        #[test]
        fn every_layout_tiles_and_respects_the_limit(h in histogram(), limit in 1u64..1000) {
            let g = group_partitions(&h, limit);
            prop_assert_eq!(g.is_empty(), h.total() == 0);
            if g.is_empty() {
                return Ok(());
            }
            prop_assert!(g[0].from.is_none());
            prop_assert!(g.last().unwrap().to.is_none());
            for pair in g.windows(2) {
                prop_assert!(pair[1].from.is_some());
                prop_assert_eq!(pair[0].to, pair[1].from);
            }
            let lo = h.buckets.first().map_or(0, |b| b.0) - 3;
            let hi = h.buckets.last().map_or(0, |b| b.0) + 3;
            let probes = (lo..=hi).map(Some).chain([None, Some(i64::MIN), Some(i64::MAX)]);
            for v in probes {
                let n = g.iter().filter(|g| contains(g, v)).count();
                prop_assert_eq!(n, 1, "value {:?} in {} groups: {:?}", v, n, g);
            }
            for grp in &g {
                let mut counted = h.buckets.iter().filter(|b| contains(grp, Some(b.0))).map(|b| b.1).sum::<u64>();
                let buckets = h.buckets.iter().filter(|b| contains(grp, Some(b.0))).count();
                if grp.from.is_none() {
                    counted += h.missing;
                }
                prop_assert_eq!(grp.hits, counted, "{:?}", grp);
                let single = (buckets == 1 && (grp.from.is_some() || h.missing == 0))
                    || (buckets == 0 && grp.from.is_none());
                prop_assert!(grp.hits <= limit || single, "{:?} over {} ({} buckets)", grp, limit, buckets);
            }
            for pair in g.windows(2) {
                let next_first = h.buckets.iter().find(|b| Some(b.0) == pair[1].first_key).unwrap().1;
                prop_assert!(pair[0].hits + next_first > limit, "{:?} could take the next bucket", pair);
            }
            prop_assert_eq!(g.iter().map(|g| g.hits).sum::<u64>(), h.total());
        }
    }
}
