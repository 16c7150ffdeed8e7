//! The hostile corpus's file format (`workers/tests/corpus/hostile/`).
//!
//! One case is one message: where it is published (exchange and routing
//! key), its headers, its body as raw bytes, and the end the fleet must
//! give it. Hand-written cases are one JSON file each under `cases/`; the
//! generated ones are one JSON object per line in `generated.jsonl`
//! (written by [`super::generate`], checked up to date by a test).
//!
//! The body is given exactly one way: `body` (UTF-8 text, byte for byte),
//! `body_hex` (any bytes: invalid UTF-8, NUL, BOMs) or `body_repeat`
//! (`prefix` + `unit` × `times` + `suffix`: how the oversized bodies and huge
//! arrays stay a few bytes on disk).
//!
//! Nothing ends in `invalidation.unroutable` any more: the dispatcher
//! consumes it (the lane rule), re-routing by type or dead-lettering to
//! `invalidation.unroutable.dlq` (`unknown_routing_key`).
//!
//! Header values: JSON strings are AMQP long strings, integers long-long
//! ints, floats doubles, booleans booleans, `null` void, arrays field
//! arrays, objects field tables — except `{"$hex": ".."}`, a long string
//! of any bytes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fleet_shared::lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One hostile (or tolerated) message and what must become of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Unique across the corpus; the message id the case is published
    /// with, so its dead letter (or parked copy) is matched back to it.
    pub id: String,
    /// What the case tries, for people.
    pub about: String,
    pub exchange: String,
    pub routing_key: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_hex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_repeat: Option<Repeat>,
    pub expect: Expect,
}

/// A large body, short on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Repeat {
    pub prefix: String,
    pub unit: String,
    pub times: usize,
    pub suffix: String,
}

/// The one end a case must reach.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case", deny_unknown_fields)]
pub enum Expect {
    /// Dead-lettered by the fleet to `queue` (a `<queue>.dlq`) with
    /// `x-error-class` = `class`, the body byte for byte.
    DeadLetter { queue: String, class: String },
    /// Parked by the retry handler (`invalidation.parked`), with an
    /// `x-park-reason` starting with `reason`.
    Parked { reason: String },
    /// Re-published once by the lane rule to `invalidation.requests` with
    /// routing key `key` (its type's; for a body without a readable type,
    /// its routing key in lower case) — from the other lane, or from
    /// `invalidation.unroutable`, where the request exchange's alternate
    /// exchange (or the retry handler returning it to a key no lane binds)
    /// put it — and then ending on that key's lane as `then` says
    /// (`accepted` or `dead_letter`, the dead letter's origin naming `key`
    /// and `x-rerouted-from` saying where it was).
    Rerouted { key: String, then: Box<Expect> },
    /// Tolerated (SPEC §4: unknown fields are ignored) and done. When
    /// `queue` is given, every id of `ids` arrives there.
    Accepted {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        queue: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ids: Vec<i64>,
    },
}

impl Case {
    /// The end the case reaches at last: for a re-routed one, its end on
    /// the lane it was re-routed to.
    pub fn end(&self) -> &Expect {
        let mut e = &self.expect;
        while let Expect::Rerouted { then, .. } = e {
            e = then;
        }
        e
    }

    /// The body's bytes.
    pub fn bytes(&self) -> Vec<u8> {
        match (&self.body, &self.body_hex, &self.body_repeat) {
            (Some(text), None, None) => text.as_bytes().to_vec(),
            (None, Some(hex), None) => from_hex(hex).unwrap_or_else(|e| panic!("{}: {e}", self.id)),
            (None, None, Some(r)) => {
                let mut out =
                    String::with_capacity(r.prefix.len() + r.unit.len() * r.times + r.suffix.len());
                out.push_str(&r.prefix);
                for _ in 0..r.times {
                    out.push_str(&r.unit);
                }
                out.push_str(&r.suffix);
                out.into_bytes()
            }
            _ => panic!(
                "{}: give the body exactly one way (body, body_hex or body_repeat)",
                self.id
            ),
        }
    }

    /// The AMQP headers.
    pub fn field_table(&self) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in &self.headers {
            t.insert(k.as_str().into(), amqp(v));
        }
        t
    }

    /// The queue the case is consumed from first (by exchange and key).
    pub fn queue(&self) -> &str {
        match self.exchange.as_str() {
            "" => &self.routing_key,
            "invalidation.partitions" => "invalidation.partitions",
            "invalidation.retry" => "invalidation.retry.ready",
            "invalidation.requests" => {
                if super::generate::FAST_KEYS.contains(&self.routing_key.as_str()) {
                    "invalidation.requests.fast"
                } else if super::generate::BULK_KEYS.contains(&self.routing_key.as_str()) {
                    "invalidation.requests.bulk"
                } else {
                    "invalidation.unroutable"
                }
            }
            source => source,
        }
    }
}

/// A header value from its JSON form (see the module docs).
pub fn amqp(v: &Value) -> AMQPValue {
    match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes().to_vec())),
        Value::Array(a) => {
            AMQPValue::FieldArray(FieldArray::from(a.iter().map(amqp).collect::<Vec<_>>()))
        }
        Value::Object(o) => {
            if let (1, Some(Value::String(hex))) = (o.len(), o.get("$hex")) {
                // `unwrap`: the corpus's own tests check every hex string.
                return AMQPValue::LongString(LongString::from(from_hex(hex).unwrap()));
            }
            let mut t = FieldTable::default();
            for (k, v) in o {
                t.insert(k.as_str().into(), amqp(v));
            }
            AMQPValue::FieldTable(t)
        }
    }
}

pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn from_hex(hex: &str) -> Result<Vec<u8>, String> {
    if !hex.len().is_multiple_of(2) {
        return Err(format!("odd-length hex ({} digits)", hex.len()));
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|e| format!("bad hex at {i}: {e}")))
        .collect()
}

/// `workers/tests/corpus/hostile/`.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/hostile")
}

/// The committed generated cases.
pub fn generated_path() -> PathBuf {
    dir().join("generated.jsonl")
}

/// The hand-written cases, sorted by file name.
pub fn hand_written() -> Vec<Case> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir().join("cases"))
        .expect("the hand-written cases")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        })
        .collect()
}

/// The committed generated cases, as they are on disk.
pub fn committed_generated() -> Vec<Case> {
    let text = std::fs::read_to_string(generated_path()).expect("generated.jsonl");
    text.lines()
        .enumerate()
        .map(|(n, line)| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("generated.jsonl line {}: {e}", n + 1))
        })
        .collect()
}

/// Every case: hand-written first, then generated.
pub fn all() -> Vec<Case> {
    let mut cases = hand_written();
    cases.extend(committed_generated());
    cases
}

/// One line per case, in order: the file `generated.jsonl` holds exactly this.
pub fn render_jsonl(cases: &[Case]) -> String {
    let mut out = String::new();
    for c in cases {
        // `unwrap`: plain data serialises.
        out.push_str(&serde_json::to_string(c).unwrap());
        out.push('\n');
    }
    out
}
