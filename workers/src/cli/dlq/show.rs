//! How `peek` (and the one-line previews of `replay` and `purge`) shows a
//! message to a person at 3 a.m.: `x-death` decoded into one line per
//! entry, the AMQP properties that say who sent it, long arrays abbreviated,
//! and a body that is not JSON shown as what it is — text as received, or a
//! hex dump of bytes that are not UTF-8 — never escaped as if the producer
//! had double-encoded it.

use chrono::{DateTime, Utc};
use fleet_shared::broker::{self, header_tables, headers};
use fleet_shared::lapin::types::{AMQPValue, FieldTable};
use fleet_shared::lapin::BasicProperties;
use serde_json::{json, Map, Value};

/// Arrays longer than this are abbreviated (without `--full`).
const ARRAY_LONG: usize = 10;
/// How many items of an abbreviated array are shown.
const ARRAY_SHOWN: usize = 5;
/// Bytes of a non-UTF-8 body shown as hex (without `--full`).
const HEX_SHOWN: usize = 256;

/// The set AMQP properties that say who sent a message and how, in a fixed
/// order; the timestamp as RFC 3339.
pub(super) fn property_pairs(p: &BasicProperties) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let mut text = |name: &'static str, v: Option<String>| {
        if let Some(v) = v {
            out.push((name, v));
        }
    };
    let s = |v: &Option<fleet_shared::lapin::types::ShortString>| {
        v.as_ref().map(|s| s.as_str().to_string())
    };
    text("app_id", s(p.app_id()));
    text("message_id", s(p.message_id()));
    text("correlation_id", s(p.correlation_id()));
    text("timestamp", p.timestamp().map(timestamp_text));
    text("type", s(p.kind()));
    text("user_id", s(p.user_id()));
    text("content_type", s(p.content_type()));
    text("content_encoding", s(p.content_encoding()));
    text(
        "delivery_mode",
        p.delivery_mode().map(|m| match m {
            2 => "2 (persistent)".to_string(),
            1 => "1 (transient)".to_string(),
            other => other.to_string(),
        }),
    );
    text("priority", p.priority().map(|v| v.to_string()));
    text("expiration", s(p.expiration()).map(|e| format!("{e} ms")));
    text("reply_to", s(p.reply_to()));
    out
}

/// The same properties as a JSON object (timestamp as RFC 3339, numbers as numbers).
pub(super) fn properties_json(p: &BasicProperties) -> Value {
    let mut m = Map::new();
    let s = |v: &Option<fleet_shared::lapin::types::ShortString>| {
        v.as_ref().map(|s| Value::String(s.as_str().to_string()))
    };
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.insert(k.to_string(), v);
        }
    };
    put("appId", s(p.app_id()));
    put("messageId", s(p.message_id()));
    put("correlationId", s(p.correlation_id()));
    put(
        "timestamp",
        p.timestamp().map(|t| Value::String(timestamp_text(t))),
    );
    put("type", s(p.kind()));
    put("userId", s(p.user_id()));
    put("contentType", s(p.content_type()));
    put("contentEncoding", s(p.content_encoding()));
    put("deliveryMode", p.delivery_mode().map(Value::from));
    put("priority", p.priority().map(Value::from));
    put("expiration", s(p.expiration()));
    put("replyTo", s(p.reply_to()));
    Value::Object(m)
}

/// Seconds since the epoch as RFC 3339 (the number itself when out of range).
fn timestamp_text(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| DateTime::from_timestamp(s, 0))
        .map(|t| t.to_rfc3339())
        .unwrap_or_else(|| secs.to_string())
}

/// One entry of the broker's `x-death` header: why and where the broker
/// dead-lettered the message, and how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Death {
    pub count: Option<i64>,
    pub reason: Option<String>,
    pub queue: Option<String>,
    pub exchange: Option<String>,
    pub routing_keys: Vec<String>,
    pub time: Option<DateTime<Utc>>,
}

impl Death {
    fn from_table(t: &FieldTable) -> Self {
        let text = |k: &str| broker::header_text(Some(t), k);
        let routing_keys = match t.inner().get("routing-keys") {
            Some(AMQPValue::FieldArray(a)) => {
                a.as_slice().iter().filter_map(broker::value_text).collect()
            }
            _ => Vec::new(),
        };
        Death {
            count: text("count").and_then(|c| c.parse().ok()),
            reason: text("reason"),
            queue: text("queue"),
            exchange: text("exchange"),
            routing_keys,
            time: text("time")
                .and_then(|t| t.parse::<i64>().ok())
                .and_then(|t| DateTime::from_timestamp(t, 0)),
        }
    }

    /// `3× rejected from queue q (published to exchange "e" with routing keys [price]) at 2026-…`.
    pub fn line(&self) -> String {
        let count = self.count.map_or(String::new(), |c| format!("{c}× "));
        let mut s = format!(
            "{count}{} from queue {}",
            self.reason.as_deref().unwrap_or("dead-lettered"),
            self.queue.as_deref().unwrap_or("?")
        );
        s.push_str(&format!(
            " (published to exchange {:?} with routing key{} [{}])",
            self.exchange.as_deref().unwrap_or_default(),
            if self.routing_keys.len() == 1 {
                ""
            } else {
                "s"
            },
            self.routing_keys.join(", ")
        ));
        if let Some(t) = self.time {
            s.push_str(&format!(", last at {}", t.to_rfc3339()));
        }
        s
    }

    pub fn json(&self) -> Value {
        json!({
            "count": self.count,
            "reason": self.reason,
            "queue": self.queue,
            "exchange": self.exchange,
            "routingKeys": self.routing_keys,
            "time": self.time.map(|t| t.to_rfc3339()),
        })
    }
}

/// The decoded `x-death` entries, newest first.
pub(super) fn deaths(h: Option<&FieldTable>) -> Vec<Death> {
    header_tables(h, headers::DEATH)
        .iter()
        .map(Death::from_table)
        .collect()
}

/// Every header as lines for people: scalars as `name: value`, `x-death`
/// one decoded line per entry, other arrays of tables (`x-history`) one
/// `key=value, …` line per entry.
pub(super) fn header_lines(h: Option<&FieldTable>) -> Vec<String> {
    let mut out = Vec::new();
    let Some(t) = h else { return out };
    for (k, v) in t.inner() {
        let k = k.as_str();
        if k == headers::DEATH {
            for (i, d) in deaths(h).iter().enumerate() {
                out.push(format!("{k}[{}]: {}", i + 1, d.line()));
            }
            continue;
        }
        match v {
            AMQPValue::FieldArray(a) => {
                let items = a.as_slice();
                if items.is_empty() {
                    out.push(format!("{k}: []"));
                }
                for (i, item) in items.iter().enumerate() {
                    let text = match item {
                        AMQPValue::FieldTable(t) => t
                            .inner()
                            .iter()
                            .map(|(k, v)| format!("{}={}", k.as_str(), value_text(v)))
                            .collect::<Vec<_>>()
                            .join(", "),
                        other => value_text(other),
                    };
                    out.push(format!("{k}[{}]: {text}", i + 1));
                }
            }
            other => out.push(format!("{k}: {}", value_text(other))),
        }
    }
    out
}

/// A header value as text: strings as they are, timestamps as RFC 3339,
/// nested tables as compact JSON.
fn value_text(v: &AMQPValue) -> String {
    match v {
        AMQPValue::Timestamp(t) => timestamp_text(*t),
        other => broker::value_text(other).unwrap_or_else(|| broker::value_json(other).to_string()),
    }
}

/// What a body is.
pub(super) enum Body {
    Json(Value),
    /// UTF-8 text that does not parse as JSON (why not).
    Text(String, String),
    /// Bytes that are not UTF-8.
    Bytes,
}

pub(super) fn classify(body: &[u8]) -> Body {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => Body::Json(v),
        Err(e) => match std::str::from_utf8(body) {
            Ok(s) => Body::Text(s.to_string(), e.to_string()),
            Err(_) => Body::Bytes,
        },
    }
}

/// The heading and lines of a body for people: JSON pretty-printed with
/// long arrays abbreviated (unless `full`); text that is not JSON as
/// received (only control characters escaped); bytes that are not UTF-8 as
/// a hex dump.
pub(super) fn body_lines(body: &[u8], full: bool) -> (String, Vec<String>) {
    let n = body.len();
    match classify(body) {
        Body::Json(v) => (
            format!("body ({n} bytes, JSON):"),
            pretty(&v, full).lines().map(str::to_string).collect(),
        ),
        Body::Text(s, why) => (
            format!("body ({n} bytes, not JSON: {why}; the text as received):"),
            s.lines().map(escape_controls).collect(),
        ),
        Body::Bytes => {
            let shown = if full { n } else { n.min(HEX_SHOWN) };
            let mut lines = hexdump(&body[..shown]);
            if shown < n {
                lines.push(format!("… {} more bytes (--full shows all)", n - shown));
            }
            (
                format!("body ({n} bytes, not UTF-8, so not JSON; hex dump):"),
                lines,
            )
        }
    }
}

/// The body's fields of `peek --json`: `body` (JSON as JSON, text as a
/// string, other bytes as hex), `bodyIsJson`, `bodyEncoding`
/// (`json` | `text` | `hex`) and, when it is not JSON, `bodyError`.
pub(super) fn body_json(body: &[u8]) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("bodyBytes".into(), body.len().into());
    match classify(body) {
        Body::Json(v) => {
            m.insert("bodyIsJson".into(), true.into());
            m.insert("bodyEncoding".into(), "json".into());
            m.insert("body".into(), v);
        }
        Body::Text(s, why) => {
            m.insert("bodyIsJson".into(), false.into());
            m.insert("bodyEncoding".into(), "text".into());
            m.insert("bodyError".into(), format!("not JSON: {why}").into());
            m.insert("body".into(), s.into());
        }
        Body::Bytes => {
            m.insert("bodyIsJson".into(), false.into());
            m.insert("bodyEncoding".into(), "hex".into());
            m.insert("bodyError".into(), "not UTF-8".into());
            m.insert("body".into(), hex(body).into());
        }
    }
    m
}

/// The body on one line for previews, at most 100 characters.
pub(super) fn preview(body: &[u8]) -> String {
    let text = match classify(body) {
        Body::Json(v) => v.to_string(),
        Body::Text(s, _) => format!("(not JSON) {}", escape_controls(&s)),
        Body::Bytes => format!("(not UTF-8, {} bytes) {}", body.len(), hex(body)),
    };
    let mut out: String = text.chars().take(100).collect();
    if text.chars().count() > 100 {
        out.push('…');
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `0000  ff fe 6e …  |..n…|`, 16 bytes a line.
fn hexdump(bytes: &[u8]) -> Vec<String> {
    bytes
        .chunks(16)
        .enumerate()
        .map(|(i, chunk)| {
            let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
            let ascii: String = chunk
                .iter()
                .map(|&b| {
                    if b.is_ascii_graphic() || b == b' ' {
                        b as char
                    } else {
                        '.'
                    }
                })
                .collect();
            format!("{:04x}  {:<47}  |{ascii}|", i * 16, hex.join(" "))
        })
        .collect()
}

/// Control characters (other than tab) as `\u{..}`; everything else as is.
fn escape_controls(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Pretty JSON with arrays of scalars on one line, and arrays longer than
/// [`ARRAY_LONG`] cut to their first [`ARRAY_SHOWN`] items and a count
/// (unless `full`): `[1, 2, 3, 4, 5, … 995 more]`.
pub(super) fn pretty(v: &Value, full: bool) -> String {
    let mut out = String::new();
    write_pretty(v, full, 0, &mut out);
    out
}

fn write_pretty(v: &Value, full: bool, indent: usize, out: &mut String) {
    let pad = |n: usize| " ".repeat(n);
    let cut = |len: usize| {
        if !full && len > ARRAY_LONG {
            ARRAY_SHOWN
        } else {
            len
        }
    };
    match v {
        Value::Object(m) if m.is_empty() => out.push_str("{}"),
        Value::Object(m) => {
            out.push_str("{\n");
            for (i, (k, v)) in m.iter().enumerate() {
                out.push_str(&pad(indent + 2));
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(": ");
                write_pretty(v, full, indent + 2, out);
                if i + 1 < m.len() {
                    out.push(',');
                }
                out.push('\n');
            }
            out.push_str(&pad(indent));
            out.push('}');
        }
        Value::Array(a) if a.iter().all(|x| !x.is_object() && !x.is_array()) => {
            let shown = cut(a.len());
            let mut items: Vec<String> = a[..shown].iter().map(Value::to_string).collect();
            if shown < a.len() {
                items.push(format!("… {} more", a.len() - shown));
            }
            out.push('[');
            out.push_str(&items.join(", "));
            out.push(']');
        }
        Value::Array(a) => {
            let shown = cut(a.len());
            out.push_str("[\n");
            for (i, v) in a[..shown].iter().enumerate() {
                out.push_str(&pad(indent + 2));
                write_pretty(v, full, indent + 2, out);
                if i + 1 < a.len() {
                    out.push(',');
                }
                out.push('\n');
            }
            if shown < a.len() {
                out.push_str(&format!("{}… {} more\n", pad(indent + 2), a.len() - shown));
            }
            out.push_str(&pad(indent));
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_arrays_are_abbreviated_unless_full() {
        let ids: Vec<u32> = (1..=1000).collect();
        let v = json!({"parameterIds": ids, "parameterName": "id"});
        let short = pretty(&v, false);
        assert_eq!(
            short,
            "{\n  \"parameterIds\": [1, 2, 3, 4, 5, … 995 more],\n  \"parameterName\": \"id\"\n}"
        );
        assert!(pretty(&v, true).contains("999, 1000]"));
        assert_eq!(
            pretty(&json!({"a": [1, 2]}), false),
            "{\n  \"a\": [1, 2]\n}"
        );
    }

    #[test]
    fn bodies_that_are_not_json_are_shown_as_they_are() {
        let (head, lines) = body_lines(b"{\"a\": \"b\\\"c\"", false);
        assert!(head.contains("not JSON"), "{head}");
        assert_eq!(lines, vec!["{\"a\": \"b\\\"c\"".to_string()], "no escaping");
        let (head, lines) = body_lines(b"\xff\xfenot json\n", false);
        assert!(head.contains("11 bytes, not UTF-8"), "{head}");
        assert_eq!(
            lines,
            vec![format!(
                "0000  {:<47}  |..not json.|",
                "ff fe 6e 6f 74 20 6a 73 6f 6e 0a"
            )]
        );
        let m = body_json(b"\xff\xfe");
        assert_eq!(m["body"], "fffe");
        assert_eq!(m["bodyEncoding"], "hex");
    }

    #[test]
    fn x_death_is_decoded() {
        let mut d = FieldTable::default();
        d.insert("count".into(), AMQPValue::LongLongInt(3));
        d.insert("reason".into(), AMQPValue::LongString("rejected".into()));
        d.insert("queue".into(), AMQPValue::LongString("q".into()));
        d.insert("exchange".into(), AMQPValue::LongString("e".into()));
        d.insert(
            "routing-keys".into(),
            AMQPValue::FieldArray(vec![AMQPValue::LongString("price".into())].into()),
        );
        d.insert("time".into(), AMQPValue::Timestamp(1_800_000_000));
        let mut h = FieldTable::default();
        h.insert(
            headers::DEATH.into(),
            AMQPValue::FieldArray(vec![AMQPValue::FieldTable(d)].into()),
        );
        assert_eq!(
            header_lines(Some(&h)),
            vec![
                "x-death[1]: 3× rejected from queue q (published to exchange \"e\" with routing key \
                 [price]), last at 2027-01-15T08:00:00+00:00"
                    .to_string()
            ]
        );
    }
}
