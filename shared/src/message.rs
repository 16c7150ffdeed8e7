//! The messages on the wire (SPEC §4): JSON, camelCase, versioned by `v`.
//!
//! Compatibility rules (seed `004_…`): unknown fields are ignored, optional
//! fields take defaults when missing, and `v` selects the decoder, so a
//! producer's old and new messages both work. `fleet schema` prints the JSON
//! Schema of each kind for producers.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// The newest message version this build writes.
pub const CURRENT_VERSION: u32 = 1;

fn version_one() -> u32 {
    CURRENT_VERSION
}

/// Why a message was rejected; always a permanent failure.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("body is not valid JSON: {0}")]
    Json(String),
    #[error("body is valid JSON but not a {kind}: {message}")]
    Shape { kind: &'static str, message: String },
    #[error("unsupported message version v={0}; this worker reads v=1")]
    Version(u64),
    /// An `invalidationType` this fleet does not know (wrong spelling or a
    /// type newer than this build): its own class, so operators can filter.
    #[error("body is a {kind} with an unknown invalidation type: {message}")]
    UnknownType { kind: &'static str, message: String },
    /// An index key this fleet does not know.
    #[error("body is a {kind} with an unknown index key: {message}")]
    UnknownIndexKey { kind: &'static str, message: String },
}

/// Every class [`DecodeError::class`] can give, for callers that check a
/// refusal's class against the documented set (the fuzz targets).
pub const DECODE_CLASSES: &[&str] = &[
    "malformed_json",
    "invalid_message",
    "unsupported_version",
    "unknown_type",
    "unknown_index_key",
];

impl DecodeError {
    /// Short machine-readable class, used in dead-letter headers and metrics.
    pub fn class(&self) -> &'static str {
        match self {
            DecodeError::Json(_) => "malformed_json",
            DecodeError::Shape { .. } => "invalid_message",
            DecodeError::Version(_) => "unsupported_version",
            DecodeError::UnknownType { .. } => "unknown_type",
            DecodeError::UnknownIndexKey { .. } => "unknown_index_key",
        }
    }
}

/// Decodes a message of kind `T`, checking the version first.
///
/// The class of a refusal says whose fault it is and never lies about the
/// body: bytes that are not JSON (not UTF-8 — RFC 8259 §8.1 —, a syntax
/// error, a number no JSON reader could hold, nesting past the recursion
/// limit) are `malformed_json` wherever the fault is, even in a field the
/// decoder would ignore; valid JSON that is not a JSON object (`null`,
/// `[..]`, which serde would otherwise read positionally as a struct) or has
/// the wrong shape is `invalid_message`; an unknown `invalidationType` or
/// index key has a class of its own.
pub fn decode<T: serde::de::DeserializeOwned>(
    kind: &'static str,
    body: &[u8],
) -> Result<T, DecodeError> {
    /// Only the version: every other field is skipped, not built.
    #[derive(Deserialize)]
    struct Version {
        #[serde(default)]
        v: Option<Value>,
    }
    // serde_json skips the strings of ignored fields without checking
    // their UTF-8, so check the whole body once.
    if let Err(e) = std::str::from_utf8(body) {
        return Err(DecodeError::Json(format!("the body is not UTF-8: {e}")));
    }
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        // Checked before reading it as a struct: serde would read an array
        // positionally. Still malformed when it is not JSON at all.
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                Ok(_) => DecodeError::Shape {
                    kind,
                    message: "expected a JSON object".into(),
                },
                Err(e) => DecodeError::Json(e.to_string()),
            },
        );
    }
    // The first pass reads the whole body (skipping every value but `v`
    // without building it): its syntax errors are the body's.
    let version: Version = serde_json::from_slice(body).map_err(|e| {
        if matches!(
            e.classify(),
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof
        ) {
            DecodeError::Json(e.to_string())
        } else {
            DecodeError::Shape {
                kind,
                message: e.to_string(),
            }
        }
    })?;
    match version.v {
        None | Some(Value::Null) => {}
        Some(v) => match v.as_u64() {
            Some(1) => {}
            Some(other) => return Err(DecodeError::Version(other)),
            None => {
                return Err(DecodeError::Shape {
                    kind,
                    message: format!("`v` must be a number, found {v}"),
                })
            }
        },
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // What only reading a value finds (a number out of range, a bad
        // escape) shows now. serde_json also calls a wrong type where an
        // enum belongs a syntax error, so its category is no guide in this
        // pass: its words are.
        let malformed = LEXICAL.iter().any(|m| inner.contains(m));
        let message = if path == "." {
            inner
        } else {
            format!("{path}: {inner}")
        };
        let unknown = message.contains("unknown variant");
        if malformed {
            DecodeError::Json(message)
        } else if unknown && path == "invalidationType" {
            DecodeError::UnknownType { kind, message }
        } else if unknown && (path == "indexKey" || path.starts_with("indexKeys[")) {
            DecodeError::UnknownIndexKey { kind, message }
        } else {
            DecodeError::Shape { kind, message }
        }
    })
}

/// serde_json's messages for input that is not JSON, as opposed to JSON of
/// the wrong shape (checked by `the_class_never_lies_about_the_body`).
const LEXICAL: &[&str] = &[
    "number out of range",
    "invalid number",
    "invalid escape",
    "invalid unicode code point",
    "lone leading surrogate",
    "unexpected end of hex escape",
    "control character",
    "recursion limit exceeded",
];

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $wire:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
        pub enum $name {
            $(#[serde(rename = $wire)] $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The value as it is spelt on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $wire,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $name::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str().eq_ignore_ascii_case(s) || v.snake() == s.to_ascii_lowercase())
                    .ok_or_else(|| {
                        let all: Vec<&str> = $name::ALL.iter().map(|v| v.as_str()).collect();
                        format!("unknown {} {s:?}; expected one of {}", stringify!($name), all.join(", "))
                    })
            }
        }
    };
}

string_enum! {
    /// Why contents must be rebuilt; decides the lane and the outbound queue.
    InvalidationType {
        Promotion => "PROMOTION",
        Assortment => "ASSORTMENT",
        BrandCategory => "BRAND_CATEGORY",
        Supplier => "SUPPLIER",
        Tag => "TAG",
        Label => "LABEL",
        ContentScore => "CONTENT_SCORE",
        RatingScore => "RATING_SCORE",
        FitRatio => "FIT_RATIO",
        Stock => "STOCK",
        Price => "PRICE",
        Inventory => "INVENTORY",
        Product => "PRODUCT",
        Campaign => "CAMPAIGN",
        Content => "CONTENT",
        Immediately => "IMMEDIATELY",
        Translation => "TRANSLATION",
    }
}

string_enum! {
    /// A country and language; selects the index and the outbound queue.
    IndexKey {
        TrTr => "trTR",
        DeDe => "deDE",
        EnAt => "enAT",
        EnBe => "enBE",
        EnBg => "enBG",
        EnHr => "enHR",
        EnCz => "enCZ",
    }
}

impl InvalidationType {
    /// Types the shipped topology binds to the fast lane (SPEC §4); the lanes
    /// themselves are bindings in `topology/fleet.toml`.
    pub const DEFAULT_FAST: &'static [InvalidationType] = &[
        InvalidationType::Price,
        InvalidationType::Stock,
        InvalidationType::Inventory,
        InvalidationType::Immediately,
        InvalidationType::Campaign,
        InvalidationType::Promotion,
    ];

    /// Lower snake case: `brand_category`. Routing key on the request exchange
    /// and the `<type>` part of outbound names.
    pub fn snake(self) -> String {
        self.as_str().to_ascii_lowercase()
    }
}

impl IndexKey {
    /// Lower snake case: `tr_tr`.
    pub fn snake(self) -> String {
        let s = self.as_str();
        format!("{}_{}", &s[..2], s[2..].to_ascii_lowercase())
    }

    /// The index keys of a country code (`TR`, `DE`, `AT`, …).
    pub fn for_country(country: &str) -> Vec<IndexKey> {
        let c = country.to_ascii_uppercase();
        IndexKey::ALL
            .iter()
            .copied()
            .filter(|k| k.as_str()[2..] == c)
            .collect()
    }

    /// The index keys of a language code (`tr`, `de`, `en`).
    pub fn for_language(language: &str) -> Vec<IndexKey> {
        let l = language.to_ascii_lowercase();
        IndexKey::ALL
            .iter()
            .copied()
            .filter(|k| k.as_str()[..2] == l)
            .collect()
    }
}

/// Outbound routing key: `<type>.<index_key>`, e.g. `price.tr_tr`.
pub fn outbound_routing_key(t: InvalidationType, k: IndexKey) -> String {
    format!("{}.{}", t.snake(), k.snake())
}

/// Outbound queue name: `productcontent_<type>_<index_key>`.
pub fn outbound_queue(t: InvalidationType, k: IndexKey) -> String {
    format!("productcontent_{}_{}", t.snake(), k.snake())
}

/// "These contents must be rebuilt, for this reason, in these locales."
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "InvalidationRequest", extend("additionalProperties" = true))]
pub struct InvalidationRequest {
    /// Message version; 1 when absent.
    #[serde(default = "version_one")]
    pub v: u32,
    /// Idempotency key; generated at first sight when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Content ids when `parameterName` is `id`, otherwise ids of
    /// `parameterName`: 1 to `dispatcher.max_ids` (10,000 by default) of
    /// them; outside that the request is dead-lettered (`empty_ids`,
    /// `too_many_ids`).
    #[schemars(length(min = 1, max = 10000))]
    pub parameter_ids: Vec<i64>,
    /// The index field the ids belong to; must be on the allow-list.
    pub parameter_name: String,
    /// The field is inside a nested object (informational: the allow-list decides).
    #[serde(default)]
    pub is_nested_type: bool,
    /// Nested path of the field (informational: the allow-list decides).
    #[serde(default)]
    pub nested_path_name: Option<String>,
    /// Why the contents changed.
    pub invalidation_type: InvalidationType,
    /// Locales to invalidate; every configured index key when absent or empty.
    #[serde(default)]
    pub index_keys: Vec<IndexKey>,
    /// Milliseconds since the epoch; set by the first worker that fails the
    /// request when absent. The retry window counts from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalidation_time: Option<i64>,
}

impl InvalidationRequest {
    pub const KIND: &'static str = "invalidation request";

    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        decode(Self::KIND, body)
    }

    /// Routing key on the request exchange.
    pub fn routing_key(&self) -> String {
        self.invalidation_type.snake()
    }

    pub fn encode(&self) -> Vec<u8> {
        // `unwrap`: the struct has only string keys and plain values.
        serde_json::to_vec(self).unwrap()
    }

    /// A digest of the query the request asks for on one index: type,
    /// field, ids (as a set) and nested path. Part of every split job's id,
    /// so a producer that reuses a request id for another request gets a
    /// job of its own.
    pub fn query_digest(&self) -> String {
        let mut ids = self.parameter_ids.clone();
        ids.sort_unstable();
        ids.dedup();
        let mut text = format!(
            "{}|{}|{}|{}|",
            self.invalidation_type,
            self.parameter_name,
            self.is_nested_type,
            self.nested_path_name.as_deref().unwrap_or("")
        );
        for id in ids {
            text.push_str(&id.to_string());
            text.push(',');
        }
        digest(text.as_bytes())
    }

    /// A digest of everything the request asks: its query and the index keys
    /// it runs on (as a set). The de-duplication key of a request is its id
    /// together with this digest.
    pub fn content_digest(&self, index_keys: &[IndexKey]) -> String {
        let mut keys: Vec<&str> = index_keys.iter().map(|k| k.as_str()).collect();
        keys.sort_unstable();
        keys.dedup();
        digest(format!("{}|{}", self.query_digest(), keys.join(",")).as_bytes())
    }
}

/// The namespace of digests and derived ids (UUID v5, which is SHA-1 based
/// and stable across builds and platforms, unlike `std`'s hashers).
const DIGEST_NAMESPACE: Uuid = Uuid::from_u128(0x0b7c_51de_4e4f_4f0e_8a6c_2d1e_9f3a_7c55);

/// A short, stable digest of `bytes` (16 hex digits).
pub fn digest(bytes: &[u8]) -> String {
    let id = Uuid::new_v5(&DIGEST_NAMESPACE, bytes);
    // `unwrap`: a simple UUID has 32 hex digits.
    id.simple().to_string().get(..16).unwrap().to_string()
}

/// The request id of a request that came without one: derived from the
/// message body, so a redelivery of the same message gets the same id.
pub fn derived_request_id(body: &[u8]) -> String {
    format!("auto-{}", digest(body))
}

/// A batch of content ids for one type and index key: what downstream indexers read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "OutboundBatch", extend("additionalProperties" = true))]
pub struct OutboundBatch {
    #[serde(default = "version_one")]
    pub v: u32,
    /// The request these ids come from (the first one when several small
    /// requests share the batch; all of them are in `requestIds`).
    pub request_id: String,
    /// Every request that contributed ids, when more than one did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_ids: Vec<String>,
    pub invalidation_type: InvalidationType,
    pub index_key: IndexKey,
    /// At most `dispatcher.batch_size` ids; duplicates across batches are possible and harmless.
    pub content_ids: Vec<i64>,
    /// The earliest `invalidationTime` of the contributing requests.
    pub invalidation_time: i64,
}

impl OutboundBatch {
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        decode("outbound batch", body)
    }
}

/// One partition of a split request: the original query restricted to a
/// `searchPartition` range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "PartitionTask", extend("additionalProperties" = true))]
pub struct PartitionTask {
    #[serde(default = "version_one")]
    pub v: u32,
    pub job_id: Uuid,
    pub task_no: i32,
    pub request_id: String,
    pub invalidation_type: InvalidationType,
    pub index_key: IndexKey,
    pub parameter_name: String,
    pub parameter_ids: Vec<i64>,
    /// Inclusive lower bound on `searchPartition`; unbounded when absent.
    #[serde(default)]
    pub partition_from: Option<i64>,
    /// Exclusive upper bound on `searchPartition`; unbounded when absent.
    #[serde(default)]
    pub partition_to: Option<i64>,
    pub invalidation_time: i64,
}

impl PartitionTask {
    pub const KIND: &'static str = "partition task";

    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        decode(Self::KIND, body)
    }
}

/// Published once on `invalidation.events` with routing key `job.completed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "JobCompleted", extend("additionalProperties" = true))]
pub struct JobCompleted {
    #[serde(default = "version_one")]
    pub v: u32,
    pub job_id: Uuid,
    pub request_id: String,
    pub invalidation_type: InvalidationType,
    pub index_key: IndexKey,
    pub tasks: i32,
    pub hits: i64,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    pub completed_at: i64,
}

/// A request's end that its producer must hear of: published on
/// `invalidation.events` with routing key `request.dead_lettered` or
/// `request.parked` once the dead letter or parked copy is confirmed (and
/// the delivery acked). Best effort: a failed publish is logged and counted
/// (`fleet_events_failed_total`), never fatal to the message, which is safe
/// in its queue either way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "RequestEvent", extend("additionalProperties" = true))]
pub struct RequestEvent {
    #[serde(default = "version_one")]
    pub v: u32,
    /// `request.dead_lettered` or `request.parked` (also the routing key).
    pub event: String,
    /// The body's `requestId`; for a body without one, the id the
    /// dispatcher derives from it (`auto-<digest of the body>`).
    pub request_id: String,
    /// The error class (`forbidden_field`, …) or park reason
    /// (`retry_window_exceeded`, `max_attempts_reached`).
    pub class: String,
    /// What went wrong, in words (the `x-error-message` or park reason).
    pub message: String,
    /// Where the message is now: `<queue>.dlq` or `invalidation.parked`.
    pub queue: String,
    /// The queue it failed on.
    pub original_queue: String,
    /// Where it was published: replay sends it back there.
    #[serde(default)]
    pub original_exchange: Option<String>,
    #[serde(default)]
    pub original_routing_key: Option<String>,
    /// The AMQP `message_id` the producer gave it, if any.
    #[serde(default)]
    pub message_id: Option<String>,
    /// The worker that dead-lettered or parked it (`dispatcher@host`).
    pub worker: String,
    /// Milliseconds since the epoch.
    pub time: i64,
}

impl RequestEvent {
    pub const DEAD_LETTERED: &'static str = "request.dead_lettered";
    pub const PARKED: &'static str = "request.parked";

    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        decode("request event", body)
    }

    /// The request id of a failed message's body: its `requestId`, or the
    /// one the dispatcher derives for a request without one.
    pub fn request_id_of(body: &[u8]) -> String {
        #[derive(Deserialize)]
        struct Id {
            #[serde(rename = "requestId")]
            request_id: Option<String>,
        }
        serde_json::from_slice::<Id>(body)
            .ok()
            .and_then(|b| b.request_id)
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| derived_request_id(body))
    }

    /// The event's AMQP message id, for consumers that de-duplicate. An
    /// AMQP short string (at most [`MAX_MESSAGE_ID`] bytes) whatever the
    /// producer put in `requestId`: a request id that would make it longer
    /// (a dead-lettered body may carry any) is replaced by its digest.
    pub fn event_id(&self) -> String {
        let id = format!("{}/{}/{}", self.event, self.request_id, self.time);
        if id.len() <= MAX_MESSAGE_ID {
            return id;
        }
        format!(
            "{}/digest-{}/{}",
            self.event,
            digest(self.request_id.as_bytes()),
            self.time
        )
    }
}

/// The longest AMQP short string (a message id, a routing key): 255 bytes.
pub const MAX_MESSAGE_ID: usize = 255;

/// Milliseconds since the epoch, now.
pub fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A fresh request id (time-ordered, so ids sort by first sight).
pub fn new_request_id() -> String {
    Uuid::now_v7().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_id_is_a_short_string_whatever_the_request_id() {
        let event = |request_id: String| RequestEvent {
            v: 1,
            event: RequestEvent::DEAD_LETTERED.into(),
            request_id,
            class: "invalid_message".into(),
            message: "requestId too long".into(),
            queue: "invalidation.requests.fast.dlq".into(),
            original_queue: "invalidation.requests.fast".into(),
            original_exchange: None,
            original_routing_key: None,
            message_id: None,
            worker: "dispatcher@host".into(),
            time: i64::MIN,
        };
        assert_eq!(
            event("r-1".into()).event_id(),
            format!("request.dead_lettered/r-1/{}", i64::MIN)
        );
        // A 10,000-character requestId (the hostile corpus's) once made
        // the event's message id panic in `ShortString::from`.
        for n in [200, 255, 256, 10_000] {
            let long = event("r".repeat(n));
            let id = long.event_id();
            assert!(id.len() <= MAX_MESSAGE_ID, "{n}: {} bytes", id.len());
            assert!(
                crate::lapin::types::ShortString::try_new(id.clone()).is_ok(),
                "{n}"
            );
            // Still one id per request: stable, and distinct from another's.
            assert_eq!(id, long.event_id());
            assert_ne!(id, event("s".repeat(n)).event_id());
        }
    }

    #[test]
    fn decodes_the_seed_example_and_ignores_unknown_fields() {
        let body = br#"{"v": 1, "requestId": "r1", "parameterIds": [100, 200], "parameterName": "brand.id",
            "isNestedType": false, "nestedPathName": null, "invalidationType": "PRICE",
            "indexKeys": ["trTR", "deDE"], "invalidationTime": 1763856000000, "someNewField": {"x": 1}}"#;
        let r = InvalidationRequest::decode(body).unwrap();
        assert_eq!(r.parameter_ids, vec![100, 200]);
        assert_eq!(r.index_keys, vec![IndexKey::TrTr, IndexKey::DeDe]);
        assert_eq!(r.invalidation_time, Some(1763856000000));
    }

    #[test]
    fn an_old_producer_without_v_or_optional_fields_still_works() {
        let body = br#"{"parameterIds": [1], "parameterName": "id", "invalidationType": "STOCK"}"#;
        let r = InvalidationRequest::decode(body).unwrap();
        assert_eq!(r.v, 1);
        assert!(r.request_id.is_none() && r.index_keys.is_empty() && r.invalidation_time.is_none());
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert_eq!(
            InvalidationRequest::decode(b"{nope").unwrap_err().class(),
            "malformed_json"
        );
        let e = InvalidationRequest::decode(
            br#"{"parameterIds": [1], "parameterName": "id", "invalidationType": "REFUND"}"#,
        )
        .unwrap_err();
        assert_eq!(e.class(), "unknown_type");
        assert!(e.to_string().contains("invalidationType"), "{e}");
        let e = InvalidationRequest::decode(
            br#"{"parameterIds": [1], "parameterName": "id", "invalidationType": "PRICE", "indexKeys": ["trTR", "xxXX"]}"#,
        )
        .unwrap_err();
        assert_eq!(e.class(), "unknown_index_key");
        assert!(e.to_string().contains("indexKeys[1]"), "{e}");
        let e = InvalidationRequest::decode(
            br#"{"parameterIds": 7, "parameterName": "id", "invalidationType": "PRICE"}"#,
        )
        .unwrap_err();
        assert_eq!(e.class(), "invalid_message");
        let e = InvalidationRequest::decode(br#"{"v": 7}"#).unwrap_err();
        assert_eq!(e, DecodeError::Version(7));
    }

    #[test]
    fn the_class_never_lies_about_the_body() {
        let class = |b: &[u8]| InvalidationRequest::decode(b).unwrap_err().class();
        let good = r#""parameterIds": [1], "parameterName": "id", "invalidationType": "PRICE""#;
        // Valid JSON of the wrong shape, including a positional array that
        // serde would otherwise read as a request.
        for b in ["null", "[]", "42", "\"PRICE\"", "true"] {
            assert_eq!(class(b.as_bytes()), "invalid_message", "{b}");
        }
        let positional = br#"[1, "r", [5], "id", false, null, "PRICE", ["trTR"], null]"#;
        assert_eq!(class(positional), "invalid_message");
        assert_eq!(class(b"[1, "), "malformed_json");
        for wrong in ["11", "null", "[\"PRICE\"]"] {
            let b = format!(r#"{{{good}, "indexKeys": [{wrong}]}}"#);
            assert_eq!(class(b.as_bytes()), "invalid_message", "{b}");
        }
        // Not JSON, wherever the fault is: an ignored field's invalid UTF-8
        // or lone surrogate, a known field's out-of-range number.
        let mut b = format!(r#"{{{good}, "note": "x"#).into_bytes();
        b.extend_from_slice(b"\xff\"}");
        assert_eq!(class(&b), "malformed_json");
        let b = format!(r#"{{{good}, "invalidationTime": 1e400}}"#);
        assert_eq!(class(b.as_bytes()), "malformed_json");
        let b = format!(r#"{{{good}, "requestId": "\ud800"}}"#);
        assert_eq!(class(b.as_bytes()), "malformed_json");
        let b = format!(
            r#"{{"v": {}1{}, {good}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        assert_eq!(class(b.as_bytes()), "malformed_json");
        // Deep nesting in an ignored field is skipped without recursion.
        let b = format!(
            r#"{{"x": {}1{}, {good}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(InvalidationRequest::decode(b.as_bytes()).is_ok());
    }

    #[test]
    fn names_follow_the_public_contract() {
        assert_eq!(
            outbound_queue(InvalidationType::Price, IndexKey::TrTr),
            "productcontent_price_tr_tr"
        );
        assert_eq!(
            outbound_routing_key(InvalidationType::BrandCategory, IndexKey::DeDe),
            "brand_category.de_de"
        );
        assert_eq!(
            "brand_category".parse::<InvalidationType>(),
            Ok(InvalidationType::BrandCategory)
        );
        assert_eq!(IndexKey::for_language("en").len(), 5);
        assert_eq!(IndexKey::for_country("de"), vec![IndexKey::DeDe]);
    }
}
