//! The integration tests' catalogue: small enough to seed in seconds, skewed
//! enough to split.

use std::collections::BTreeSet;

use fleet_workers::catalogue::{self, Spec};

/// Documents per index in the shared test catalogue.
pub const CATALOGUE_DOCS: u64 = 8000;
/// The indices the shared test server holds (the default `search.indices`).
pub const INDICES: &[&str] = &["content_tr", "content_intl"];

/// The generator settings of the shared test catalogue.
pub fn catalogue_spec() -> Spec {
    Spec {
        docs: CATALOGUE_DOCS,
        brands: 300,
        categories: 120,
        suppliers: 800,
        ..Spec::default()
    }
}

/// The content ids of the shared catalogue matching `pred`, computed from
/// the generator itself (independent of the search server).
pub fn expected_ids(pred: impl Fn(&catalogue::Content) -> bool) -> BTreeSet<i64> {
    catalogue::documents(&catalogue_spec())
        .filter(|d| pred(d))
        .map(|d| d.id)
        .collect()
}
