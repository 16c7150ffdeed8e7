//! The RabbitMQ management HTTP API: the one module that talks to it.
//!
//! Callers get typed methods (queues, exchanges, bindings, connections,
//! consumers, vhosts and permissions, closing a connection, importing
//! definitions); every URL is built here, with each path segment
//! percent-encoded, so no caller ever writes a management path by hand.
//!
//! Queue depths and consumer counts here come from the broker's *statistics*,
//! which lag by its collection interval (5 s by default). Whoever needs an
//! exact count asks the broker itself (`broker::inspect_queue`, a passive
//! declare); this API is for rates, definitions and who is connected.
//!
//! Not `rabbitmq_http_client`: its 0.72.0 (the last on reqwest 0.12) depends
//! on `rbase64`, which installs mimalloc as the process's global allocator —
//! every worker's allocator would change with a CLI helper dependency.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, Url};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::Service;
use crate::tls::{self, Trust};

/// How long one management call may take. The API answers in milliseconds
/// when healthy; a hung node must not hang `status` or a topology plan.
const TIMEOUT: Duration = Duration::from_secs(15);

/// What went wrong talking to the management API.
#[derive(Debug, thiserror::Error)]
pub enum MgmtError {
    /// The configured management URL does not parse.
    #[error("bad management URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    /// The HTTP client could not be built (TLS set-up).
    #[error("cannot set up the management API client: {0}")]
    Client(#[source] reqwest::Error),
    /// The trust for an `https://` management URL could not be loaded
    /// (`SSL_CERT_FILE` unreadable …).
    #[error("cannot set up TLS for the RabbitMQ management API: {0}")]
    Tls(String),
    /// No answer: connection refused, DNS, timeout, a failed TLS handshake.
    #[error("cannot reach the RabbitMQ management API at {base} ({what}): {reason}. {advice}")]
    Unreachable {
        base: String,
        what: String,
        /// The last node's failure with its causes (the TLS reason included).
        reason: String,
        /// What to do: the TLS fix when TLS failed, else how to enable the API.
        advice: String,
    },
    /// The API answered with an error status.
    #[error("management API {what}: {status}: {body}")]
    Status {
        what: String,
        status: u16,
        body: String,
    },
    /// The API answered 2xx with a body of another shape than expected.
    #[error("management API {what}: unexpected answer: {reason}")]
    Decode { what: String, reason: String },
}

impl MgmtError {
    /// The vhost, queue, connection … does not exist (HTTP 404).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// The HTTP status of an error answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            MgmtError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// One queue as `GET /api/queues/<vhost>` reports it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct QueueInfo {
    pub name: String,
    /// `classic`, `quorum` or `stream`.
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub durable: bool,
    /// The queue's declared arguments (`x-message-ttl`, `x-queue-type`, …).
    #[serde(default)]
    pub arguments: Map<String, Value>,
    /// Ready plus unacknowledged (statistics: lags; absent on a fresh queue).
    #[serde(default)]
    pub messages: Option<u64>,
    /// Ready messages (statistics: lags).
    #[serde(default)]
    pub messages_ready: Option<u64>,
    /// Delivered and not yet acknowledged (statistics: lags).
    #[serde(default)]
    pub messages_unacknowledged: Option<u64>,
    /// Consumers attached (statistics: lags).
    #[serde(default)]
    pub consumers: Option<u64>,
    /// Publish and delivery rates, when the broker has any to report.
    #[serde(default)]
    pub message_stats: MessageStats,
    /// Quorum queues: the node that leads the queue (where its writes go).
    #[serde(default)]
    pub leader: Option<String>,
    /// Quorum queues: the nodes that hold a replica. (Which of them are up
    /// comes from [`Management::nodes`]: 3.10 sends the queue's `online`
    /// key twice, the second time with every member.)
    #[serde(default)]
    pub members: Vec<String>,
}

impl QueueInfo {
    /// Messages published per second (recent average).
    pub fn publish_rate(&self) -> f64 {
        rate(&self.message_stats.publish_details)
    }

    /// Messages delivered or fetched per second (recent average).
    pub fn deliver_rate(&self) -> f64 {
        self.message_stats
            .deliver_get_details
            .as_ref()
            .or(self.message_stats.deliver_details.as_ref())
            .map_or(0.0, |r| r.rate)
    }

    /// `x-delivery-limit` of a quorum queue.
    pub fn delivery_limit(&self) -> Option<u64> {
        self.arguments.get("x-delivery-limit")?.as_u64()
    }
}

fn rate(r: &Option<Rate>) -> f64 {
    r.as_ref().map_or(0.0, |r| r.rate)
}

/// A queue's message rates.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct MessageStats {
    #[serde(default)]
    pub publish_details: Option<Rate>,
    #[serde(default)]
    pub deliver_get_details: Option<Rate>,
    #[serde(default)]
    pub deliver_details: Option<Rate>,
}

/// One rate of `message_stats`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Rate {
    /// Per second, averaged over the broker's sample window.
    #[serde(default)]
    pub rate: f64,
}

/// One cluster node as `GET /api/nodes` reports it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct NodeInfo {
    /// `rabbit@host`.
    pub name: String,
    /// Whether the node is up (a stopped member of the cluster is listed too).
    #[serde(default)]
    pub running: bool,
}

/// One exchange as `GET /api/exchanges/<vhost>` reports it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ExchangeInfo {
    /// Empty for the default exchange.
    pub name: String,
    /// `topic`, `direct`, `fanout`, `headers`.
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub durable: bool,
    #[serde(default)]
    pub arguments: Map<String, Value>,
}

/// One binding as `GET /api/bindings/<vhost>` reports it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct BindingInfo {
    /// The exchange; empty for the default exchange's implicit bindings.
    pub source: String,
    pub destination: String,
    /// `queue` or `exchange`.
    #[serde(default)]
    pub destination_type: String,
    #[serde(default)]
    pub routing_key: String,
    #[serde(default)]
    pub arguments: Map<String, Value>,
}

/// One client connection as `GET /api/vhosts/<vhost>/connections` reports it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ConnectionInfo {
    /// The broker's name for it (`peer -> host`); what [`Management::close_connection`] takes.
    pub name: String,
    /// What the client sent, including its own `connection_name`.
    #[serde(default)]
    pub client_properties: Map<String, Value>,
    #[serde(default)]
    pub peer_host: Option<String>,
    #[serde(default)]
    pub peer_port: Option<u64>,
    /// `running`, `blocked`, … (statistics: absent on a brand-new connection).
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub channels: Option<u64>,
    /// Milliseconds since the epoch.
    #[serde(default)]
    pub connected_at: Option<i64>,
}

impl ConnectionInfo {
    /// The name the client gave itself (`fleet-<worker>@<host> …`).
    pub fn client_name(&self) -> Option<&str> {
        self.client_properties.get("connection_name")?.as_str()
    }
}

/// One consumer as `GET /api/consumers/<vhost>` reports it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ConsumerInfo {
    #[serde(default)]
    pub consumer_tag: String,
    #[serde(default)]
    pub queue: NameRef,
    #[serde(default)]
    pub channel_details: ChannelRef,
    #[serde(default)]
    pub prefetch_count: u64,
    #[serde(default)]
    pub ack_required: bool,
}

/// A reference by name (`{"name": …, "vhost": …}`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct NameRef {
    pub name: String,
}

/// The channel a consumer lives on.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ChannelRef {
    /// The broker's name of the connection (matches [`ConnectionInfo::name`]).
    #[serde(default)]
    pub connection_name: String,
}

/// A client of a broker's management API: one node, or the nodes of a
/// cluster (the first that answers serves; the one that last answered goes
/// first next time).
#[derive(Clone)]
pub struct Management {
    http: reqwest::Client,
    /// One entry per node, in the configured order.
    nodes: Vec<Node>,
    /// The node that answered last.
    current: Arc<AtomicUsize>,
}

/// One node's management API.
#[derive(Clone)]
struct Node {
    /// `http://host:port` without credentials.
    base: Url,
    user: String,
    password: String,
}

impl Management {
    /// `url` carries the credentials: `http://guest:guest@127.0.0.1:15672`
    /// (`guest`/`guest` when it has none); several such URLs, comma-separated,
    /// for the nodes of a cluster.
    pub fn new(url: &str) -> Result<Self, MgmtError> {
        let mut nodes = Vec::new();
        for one in crate::config::split_list(url) {
            nodes.push(Node::parse(one)?);
        }
        if nodes.is_empty() {
            return Err(MgmtError::BadUrl {
                url: crate::broker::redact(url),
                reason: "no URL".into(),
            });
        }
        let mut builder = reqwest::Client::builder().timeout(TIMEOUT);
        if nodes.iter().any(|n| n.base.scheme() == "https") {
            // The fleet's trust (platform store plus SSL_CERT_FILE), the same
            // for every client: reqwest's own would let SSL_CERT_FILE replace
            // the platform store.
            let trust = Trust::get().map_err(MgmtError::Tls)?;
            builder = builder.use_preconfigured_tls((*trust.client_config()).clone());
        }
        let http = builder.build().map_err(MgmtError::Client)?;
        Ok(Self {
            http,
            nodes,
            current: Arc::default(),
        })
    }

    /// The user this client authenticates as (on the first node).
    pub fn user(&self) -> &str {
        &self.nodes[0].user
    }

    // ------------------------------------------------------------- queues …

    /// Every queue of `vhost`.
    pub async fn queues(&self, vhost: &str) -> Result<Vec<QueueInfo>, MgmtError> {
        self.get(&["queues", vhost]).await
    }

    /// One queue.
    pub async fn queue(&self, vhost: &str, name: &str) -> Result<QueueInfo, MgmtError> {
        self.get(&["queues", vhost, name]).await
    }

    /// Every exchange of `vhost` (the default and `amq.*` ones included).
    pub async fn exchanges(&self, vhost: &str) -> Result<Vec<ExchangeInfo>, MgmtError> {
        self.get(&["exchanges", vhost]).await
    }

    /// Every binding of `vhost` (the default exchange's implicit ones included).
    pub async fn bindings(&self, vhost: &str) -> Result<Vec<BindingInfo>, MgmtError> {
        self.get(&["bindings", vhost]).await
    }

    /// The client connections to `vhost`.
    pub async fn connections(&self, vhost: &str) -> Result<Vec<ConnectionInfo>, MgmtError> {
        self.get(&["vhosts", vhost, "connections"]).await
    }

    /// The consumers in `vhost`.
    pub async fn consumers(&self, vhost: &str) -> Result<Vec<ConsumerInfo>, MgmtError> {
        self.get(&["consumers", vhost]).await
    }

    /// Closes one connection by the broker's name for it ([`ConnectionInfo::name`]).
    pub async fn close_connection(&self, name: &str, reason: &str) -> Result<(), MgmtError> {
        self.send(Method::DELETE, &["connections", name], |r| {
            r.header("X-Reason", reason)
        })
        .await
        .map(drop)
    }

    /// The nodes of the cluster, running or not.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, MgmtError> {
        self.get(&["nodes"]).await
    }

    // ------------------------------------------------------------- vhosts

    /// Whether `vhost` exists (`false` on HTTP 404).
    pub async fn vhost_exists(&self, vhost: &str) -> Result<bool, MgmtError> {
        match self.get::<Value>(&["vhosts", vhost]).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates `vhost` and gives this client's user full permissions on it.
    pub async fn create_vhost(&self, vhost: &str) -> Result<(), MgmtError> {
        self.put(&["vhosts", vhost], &serde_json::json!({})).await?;
        self.grant_all(vhost, self.user()).await
    }

    /// Deletes `vhost` with everything in it.
    pub async fn delete_vhost(&self, vhost: &str) -> Result<(), MgmtError> {
        self.send(Method::DELETE, &["vhosts", vhost], |r| r)
            .await
            .map(drop)
    }

    /// Creates (or updates) a user with a password and tags (`management`,
    /// `administrator`, or none).
    pub async fn put_user(&self, user: &str, password: &str, tags: &str) -> Result<(), MgmtError> {
        self.put(
            &["users", user],
            &serde_json::json!({"password": password, "tags": tags}),
        )
        .await
    }

    /// Deletes a user.
    pub async fn delete_user(&self, user: &str) -> Result<(), MgmtError> {
        self.send(Method::DELETE, &["users", user], |r| r)
            .await
            .map(drop)
    }

    /// Sets `user`'s configure, write and read patterns on `vhost`.
    pub async fn set_permissions(
        &self,
        vhost: &str,
        user: &str,
        configure: &str,
        write: &str,
        read: &str,
    ) -> Result<(), MgmtError> {
        self.put(
            &["permissions", vhost, user],
            &serde_json::json!({"configure": configure, "write": write, "read": read}),
        )
        .await
    }

    /// Gives `user` configure, write and read permissions on everything in `vhost`.
    pub async fn grant_all(&self, vhost: &str, user: &str) -> Result<(), MgmtError> {
        self.put(
            &["permissions", vhost, user],
            &serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"}),
        )
        .await
    }

    /// Imports a definitions document (the management UI's import; what
    /// exists is left as it is).
    pub async fn import_definitions(&self, doc: &Value) -> Result<(), MgmtError> {
        self.send(Method::POST, &["definitions"], |r| r.json(doc))
            .await
            .map(drop)
    }

    // ------------------------------------------------------------- plumbing

    /// `/api/<segment>/<segment>…`, every segment percent-encoded.
    fn path(segments: &[&str]) -> String {
        let mut out = String::from("/api");
        for s in segments {
            out.push('/');
            out.push_str(&enc(s));
        }
        out
    }

    /// One authenticated call; `build` adds a body or headers. An error
    /// status is an error, with the API's own explanation. A node that does
    /// not answer (refused, timed out) is skipped for the next one.
    async fn send(
        &self,
        method: Method,
        segments: &[&str],
        build: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, MgmtError> {
        let path = Self::path(segments);
        let what = format!("{method} {path}");
        let first = self.current.load(Ordering::Relaxed);
        let mut last_error = None;
        for k in 0..self.nodes.len() {
            let i = (first + k) % self.nodes.len();
            let node = &self.nodes[i];
            let url = format!("{}{path}", node.base.as_str().trim_end_matches('/'));
            let req = self
                .http
                .request(method.clone(), url)
                .basic_auth(&node.user, Some(&node.password));
            match build(req).send().await {
                Ok(res) => {
                    self.current.store(i, Ordering::Relaxed);
                    if !res.status().is_success() {
                        let status = res.status().as_u16();
                        let body = res.text().await.unwrap_or_default();
                        return Err(MgmtError::Status { what, status, body });
                    }
                    return Ok(res);
                }
                Err(source) => last_error = Some(source),
            }
        }
        // `expect`: `new` refuses an empty node list, so the loop ran.
        let reason = tls::error_chain(&last_error.expect("at least one node was asked"));
        let advice = match tls::hint(Service::Management, &reason) {
            Some(h) => h,
            None => "Enable it with `rabbitmq-plugins enable rabbitmq_management` or set \
                     RABBITMQ_MANAGEMENT_URL"
                .into(),
        };
        Err(MgmtError::Unreachable {
            base: self
                .nodes
                .iter()
                .map(|n| n.base.as_str().trim_end_matches('/'))
                .collect::<Vec<_>>()
                .join(", "),
            what,
            reason,
            advice,
        })
    }

    async fn get<T: DeserializeOwned>(&self, segments: &[&str]) -> Result<T, MgmtError> {
        let res = self.send(Method::GET, segments, |r| r).await?;
        let decode = |reason: String| MgmtError::Decode {
            what: format!("GET {}", Self::path(segments)),
            reason,
        };
        let bytes = res.bytes().await.map_err(|e| decode(e.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| decode(e.to_string()))
    }

    async fn put(&self, segments: &[&str], body: &Value) -> Result<(), MgmtError> {
        self.send(Method::PUT, segments, |r| r.json(body))
            .await
            .map(drop)
    }
}
impl Node {
    fn parse(url: &str) -> Result<Node, MgmtError> {
        let mut base = Url::parse(url).map_err(|e| MgmtError::BadUrl {
            url: crate::broker::redact(url),
            reason: e.to_string(),
        })?;
        if base.cannot_be_a_base() || !matches!(base.scheme(), "http" | "https") {
            return Err(MgmtError::BadUrl {
                url: crate::broker::redact(url),
                reason: "not an http(s) URL".into(),
            });
        }
        let user = match base.username() {
            "" => "guest".to_string(),
            u => percent_decode(u),
        };
        let password = base.password().map_or("guest".into(), percent_decode);
        // Infallible on a base URL (checked above); the credentials go in a header instead.
        let _ = base.set_username("");
        let _ = base.set_password(None);
        Ok(Node {
            base,
            user,
            password,
        })
    }
}

/// Percent-encodes one path segment (a vhost `/` is `%2F`).
fn enc(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The vhost an AMQP URL names (`/` when it names none); of a cluster's
/// node list, the first node's (the configuration checks they agree).
pub fn vhost_of(amqp_url: &str) -> String {
    let first = crate::config::split_list(amqp_url)
        .first()
        .copied()
        .unwrap_or_default();
    let Ok(url) = Url::parse(first) else {
        return "/".into();
    };
    let path = url.path().trim_start_matches('/');
    if path.is_empty() {
        return "/".into();
    }
    percent_decode(path)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vhosts_are_read_from_amqp_urls() {
        assert_eq!(vhost_of("amqp://guest:guest@127.0.0.1:5672/%2f"), "/");
        assert_eq!(vhost_of("amqp://guest:guest@127.0.0.1:5672"), "/");
        assert_eq!(vhost_of("amqp://127.0.0.1:5672/test-1"), "test-1");
        assert_eq!(vhost_of("amqp://a:5701/t%2Fx, amqp://b:5702/t%2Fx"), "t/x");
    }

    #[test]
    fn every_path_segment_is_encoded() {
        let m = Management::new("http://u:p%40ss@127.0.0.1:15672/").unwrap();
        assert_eq!(m.user(), "u");
        assert_eq!(m.nodes[0].password, "p@ss");
        assert_eq!(
            Management::path(&["queues", "/", "a b.dlq"]),
            "/api/queues/%2F/a%20b.dlq"
        );
        assert_eq!(
            Management::path(&["connections", "127.0.0.1:5 -> 127.0.0.1:5672"]),
            "/api/connections/127.0.0.1%3A5%20-%3E%20127.0.0.1%3A5672"
        );
        assert!(matches!(
            Management::new("not a url"),
            Err(MgmtError::BadUrl { .. })
        ));
    }

    #[test]
    fn queues_decode_with_and_without_statistics() {
        let q: QueueInfo = serde_json::from_value(serde_json::json!({
            "name": "invalidation.requests.fast", "type": "quorum", "durable": true,
            "arguments": {"x-delivery-limit": 50}, "messages": 7, "messages_ready": 5,
            "messages_unacknowledged": 2, "consumers": 3,
            "message_stats": {"publish_details": {"rate": 12.5}, "deliver_get_details": {"rate": 4.0}}
        }))
        .unwrap();
        assert_eq!((q.messages, q.consumers), (Some(7), Some(3)));
        assert_eq!((q.publish_rate(), q.deliver_rate()), (12.5, 4.0));
        assert_eq!(q.delivery_limit(), Some(50));
        // A queue the statistics have not reached yet.
        let fresh: QueueInfo = serde_json::from_value(serde_json::json!({"name": "q"})).unwrap();
        assert_eq!((fresh.messages, fresh.publish_rate()), (None, 0.0));
        let e = MgmtError::Status {
            what: "GET queues/x/y".into(),
            status: 404,
            body: String::new(),
        };
        assert!(e.is_not_found());
    }
}
