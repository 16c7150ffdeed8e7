//! Source events (SPEC §3 "ingest"): what upstream systems publish to the
//! `source.<kind>` exchanges, and how each becomes invalidation requests.
//!
//! Every kind shares one decoder shape ([`SourceEvent`]); which fields are
//! required depends on the kind and is checked in [`SourceKind::to_requests`].

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::message::{
    decode, digest, DecodeError, IndexKey, InvalidationRequest, InvalidationType, CURRENT_VERSION,
};

/// The source queues, one handler each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKind {
    Price,
    Stock,
    Promotion,
    Assortment,
    Product,
    Translation,
}

impl SourceKind {
    pub const ALL: &'static [SourceKind] = &[
        SourceKind::Price,
        SourceKind::Stock,
        SourceKind::Promotion,
        SourceKind::Assortment,
        SourceKind::Product,
        SourceKind::Translation,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Price => "price",
            SourceKind::Stock => "stock",
            SourceKind::Promotion => "promotion",
            SourceKind::Assortment => "assortment",
            SourceKind::Product => "product",
            SourceKind::Translation => "translation",
        }
    }

    /// `source.<kind>`: both the exchange and the queue.
    pub fn queue(self) -> String {
        format!("source.{}", self.as_str())
    }

    /// Turns one event into zero or more requests. Zero is a valid outcome
    /// (a non-critical stock update); a missing field is a permanent error.
    ///
    /// An event naming more ids than a request may carry (`max_ids`, the
    /// dispatcher's limit) becomes several requests within the limit. Every
    /// request id is derived from the event's bytes and the request's place
    /// among them, so a redelivered event repeats exactly the same requests
    /// (which the dispatcher then recognises as done).
    pub fn to_requests(
        self,
        body: &[u8],
        critical_stock: i64,
        default_keys: &[IndexKey],
        max_ids: usize,
    ) -> Result<Vec<InvalidationRequest>, DecodeError> {
        let whole = self.build(body, critical_stock, default_keys)?;
        let event = digest(body);
        let mut out = Vec::with_capacity(whole.len());
        for r in whole {
            for chunk in r.parameter_ids.chunks(max_ids.max(1)) {
                let mut part = r.clone();
                part.parameter_ids = chunk.to_vec();
                part.request_id = Some(format!("{}-{event}-{}", self.as_str(), out.len()));
                out.push(part);
            }
        }
        Ok(out)
    }

    fn build(
        self,
        body: &[u8],
        critical_stock: i64,
        default_keys: &[IndexKey],
    ) -> Result<Vec<InvalidationRequest>, DecodeError> {
        let e: SourceEvent = decode("source event", body)?;
        let shape = |message: &str| DecodeError::Shape {
            kind: "source event",
            message: format!("{} event: {message}", self.as_str()),
        };
        let keys = |explicit: &[IndexKey]| {
            if explicit.is_empty() {
                default_keys.to_vec()
            } else {
                explicit.to_vec()
            }
        };
        let content_ids = {
            let mut ids = e.content_ids.clone();
            ids.extend(e.content_id);
            ids
        };
        let by_content_or_listing =
            |t: InvalidationType| -> Result<InvalidationRequest, DecodeError> {
                if !content_ids.is_empty() {
                    Ok(request(
                        t,
                        "id",
                        content_ids.clone(),
                        keys(&e.index_keys),
                        e.event_time,
                    ))
                } else if let Some(listing) = e.listing_id {
                    let mut r = request(
                        t,
                        "listings.id",
                        vec![listing],
                        keys(&e.index_keys),
                        e.event_time,
                    );
                    r.is_nested_type = true;
                    r.nested_path_name = Some("listings".into());
                    Ok(r)
                } else {
                    Err(shape("needs `contentId`, `contentIds` or `listingId`"))
                }
            };
        match self {
            SourceKind::Price => {
                let t = if e.scheduled {
                    InvalidationType::Inventory
                } else {
                    InvalidationType::Price
                };
                Ok(vec![by_content_or_listing(t)?])
            }
            SourceKind::Stock => {
                let event = e
                    .event
                    .as_deref()
                    .ok_or_else(|| shape("needs `event` (created or updated)"))?;
                let critical = match event {
                    "created" => true,
                    "updated" => {
                        let q = e
                            .quantity
                            .ok_or_else(|| shape("an update needs `quantity`"))?;
                        q <= critical_stock
                    }
                    other => {
                        return Err(shape(&format!(
                            "unknown `event` {other:?}; expected created or updated"
                        )))
                    }
                };
                if critical {
                    Ok(vec![by_content_or_listing(InvalidationType::Stock)?])
                } else {
                    Ok(vec![])
                }
            }
            SourceKind::Promotion | SourceKind::Product => {
                if content_ids.is_empty() {
                    return Err(shape("needs `contentId` or `contentIds`"));
                }
                let t = if self == SourceKind::Promotion {
                    InvalidationType::Promotion
                } else {
                    InvalidationType::Product
                };
                Ok(vec![request(
                    t,
                    "id",
                    content_ids,
                    keys(&e.index_keys),
                    e.event_time,
                )])
            }
            SourceKind::Assortment => {
                let country = e
                    .country
                    .as_deref()
                    .ok_or_else(|| shape("needs `country`"))?;
                let country_keys = IndexKey::for_country(country);
                if country_keys.is_empty() {
                    return Err(shape(&format!("no index key serves country {country:?}")));
                }
                let mut out = Vec::new();
                if let Some(b) = e.brand_id {
                    out.push(request(
                        InvalidationType::Assortment,
                        "brand.id",
                        vec![b],
                        country_keys.clone(),
                        e.event_time,
                    ));
                }
                if let Some(c) = e.category_id {
                    out.push(request(
                        InvalidationType::Assortment,
                        "category.id",
                        vec![c],
                        country_keys,
                        e.event_time,
                    ));
                }
                if out.is_empty() {
                    return Err(shape("needs `brandId` or `categoryId`"));
                }
                Ok(out)
            }
            SourceKind::Translation => {
                let language = e
                    .language
                    .as_deref()
                    .ok_or_else(|| shape("needs `language`"))?;
                let lang_keys = IndexKey::for_language(language);
                if lang_keys.is_empty() {
                    return Err(shape(&format!("no index key serves language {language:?}")));
                }
                if content_ids.is_empty() {
                    return Err(shape("needs `contentId` or `contentIds`"));
                }
                Ok(vec![request(
                    InvalidationType::Translation,
                    "id",
                    content_ids,
                    lang_keys,
                    e.event_time,
                )])
            }
        }
    }
}

fn request(
    t: InvalidationType,
    field: &str,
    ids: Vec<i64>,
    keys: Vec<IndexKey>,
    time: Option<i64>,
) -> InvalidationRequest {
    InvalidationRequest {
        v: CURRENT_VERSION,
        // Named by `to_requests`, from the event.
        request_id: None,
        parameter_ids: ids,
        parameter_name: field.into(),
        is_nested_type: false,
        nested_path_name: None,
        invalidation_type: t,
        index_keys: keys,
        invalidation_time: time,
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SourceKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.strip_prefix("source.").unwrap_or(s);
        SourceKind::ALL
            .iter()
            .copied()
            .find(|k| k.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let all: Vec<&str> = SourceKind::ALL.iter().map(|k| k.as_str()).collect();
                format!(
                    "unknown source kind {s:?}; expected one of {}",
                    all.join(", ")
                )
            })
    }
}

/// One event from any source queue. Which fields a kind needs:
///
/// - price: `contentId`, `contentIds` or `listingId` (and `scheduled`);
/// - stock: the same, with `event` and `quantity`;
/// - promotion and product: `contentId` or `contentIds`;
/// - assortment: `brandId` or `categoryId`, with `country`;
/// - translation: `contentId` or `contentIds`, with `language`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "SourceEvent", extend("additionalProperties" = true))]
pub struct SourceEvent {
    #[serde(default)]
    pub content_id: Option<i64>,
    #[serde(default)]
    pub content_ids: Vec<i64>,
    #[serde(default)]
    pub listing_id: Option<i64>,
    /// Price: a scheduled price (reason INVENTORY) rather than an immediate one (PRICE).
    #[serde(default)]
    pub scheduled: bool,
    /// Stock: `created` or `updated`.
    #[serde(default)]
    pub event: Option<String>,
    /// Stock: the new quantity.
    #[serde(default)]
    pub quantity: Option<i64>,
    #[serde(default)]
    pub promotion_id: Option<i64>,
    #[serde(default)]
    pub brand_id: Option<i64>,
    #[serde(default)]
    pub category_id: Option<i64>,
    /// Assortment: ISO country code (`TR`, `DE`, `AT`, …).
    #[serde(default)]
    pub country: Option<String>,
    /// Translation: language code (`tr`, `de`, `en`).
    #[serde(default)]
    pub language: Option<String>,
    /// Explicit locales; every configured index key when absent.
    #[serde(default)]
    pub index_keys: Vec<IndexKey>,
    /// When the change happened, ms since the epoch; becomes `invalidationTime`.
    #[serde(default)]
    pub event_time: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn go(kind: SourceKind, body: &str) -> Result<Vec<InvalidationRequest>, DecodeError> {
        kind.to_requests(body.as_bytes(), 3, IndexKey::ALL, 10_000)
    }

    #[test]
    fn a_large_event_becomes_requests_within_the_limit_named_from_the_event() {
        let ids: Vec<i64> = (0..25).collect();
        let body = serde_json::to_vec(&serde_json::json!({ "contentIds": ids })).unwrap();
        let a = SourceKind::Promotion
            .to_requests(&body, 3, IndexKey::ALL, 10)
            .unwrap();
        assert_eq!(
            a.iter().map(|r| r.parameter_ids.len()).collect::<Vec<_>>(),
            [10, 10, 5]
        );
        let all: Vec<i64> = a.iter().flat_map(|r| r.parameter_ids.clone()).collect();
        assert_eq!(all, ids, "every id once, in order");
        // A redelivery names them the same; another event differently.
        let again = SourceKind::Promotion
            .to_requests(&body, 3, IndexKey::ALL, 10)
            .unwrap();
        let names = |rs: &[InvalidationRequest]| -> Vec<String> {
            rs.iter().map(|r| r.request_id.clone().unwrap()).collect()
        };
        assert_eq!(names(&a), names(&again));
        let mut distinct = names(&a);
        distinct.dedup();
        assert_eq!(distinct.len(), 3);
        let other = serde_json::to_vec(&serde_json::json!({ "contentIds": [1] })).unwrap();
        let b = SourceKind::Promotion
            .to_requests(&other, 3, IndexKey::ALL, 10)
            .unwrap();
        assert!(!names(&a).contains(&b[0].request_id.clone().unwrap()));
    }

    #[test]
    fn stock_updates_invalidate_only_at_or_below_the_critical_quantity() {
        assert_eq!(
            go(
                SourceKind::Stock,
                r#"{"contentId": 1, "event": "updated", "quantity": 99}"#
            )
            .unwrap()
            .len(),
            0
        );
        assert_eq!(
            go(
                SourceKind::Stock,
                r#"{"contentId": 1, "event": "updated", "quantity": 3}"#
            )
            .unwrap()
            .len(),
            1
        );
        let r = go(
            SourceKind::Stock,
            r#"{"contentId": 1, "event": "created", "quantity": 500}"#,
        )
        .unwrap();
        assert_eq!(r[0].invalidation_type, InvalidationType::Stock);
    }

    #[test]
    fn each_kind_maps_to_its_request() {
        let r = go(SourceKind::Price, r#"{"listingId": 7}"#).unwrap();
        assert_eq!(r[0].parameter_name, "listings.id");
        let r = go(SourceKind::Price, r#"{"contentId": 7, "scheduled": true}"#).unwrap();
        assert_eq!(r[0].invalidation_type, InvalidationType::Inventory);
        let r = go(
            SourceKind::Assortment,
            r#"{"brandId": 5, "categoryId": 6, "country": "DE"}"#,
        )
        .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].index_keys, vec![IndexKey::DeDe]);
        let r = go(
            SourceKind::Translation,
            r#"{"contentId": 5, "language": "en"}"#,
        )
        .unwrap();
        assert_eq!(r[0].index_keys.len(), 5);
        assert!(go(SourceKind::Translation, r#"{"contentId": 5}"#).is_err());
        assert!(go(SourceKind::Product, r#"{}"#).is_err());
    }
}
