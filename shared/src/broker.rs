//! RabbitMQ plumbing every worker shares: named connections to the first
//! node of a cluster that answers, a confirming publisher, and headers
//! helpers.
//!
//! Invariants:
//! - every publish waits for the broker's confirm (`confirm_select` is done
//!   when a channel is created, never forgotten), and a returned (unroutable)
//!   message is an error, not a success;
//! - no channel outlives its connection: the publisher re-creates its channel
//!   from the pool after any failure instead of holding a dead one;
//! - no connection attempt waits longer than the connect timeout (TCP connect
//!   and AMQP handshake together), and every connection has the heartbeat
//!   on: a node that accepts and never answers costs seconds, never forever.
//! - an `amqps://` node is always dialled with TLS (the fleet's trust,
//!   [`crate::tls`]), never in plaintext: the TLS handshake is done here,
//!   not left to a library feature that falls back to a plain socket.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_lapin::lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use deadpool_lapin::lapin::tcp::{AMQPUriTcpExt, AsyncTcpStream, RustlsConnector};
use deadpool_lapin::lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use deadpool_lapin::lapin::uri::{AMQPScheme, AMQPUri};
use deadpool_lapin::lapin::Confirmation;
use deadpool_lapin::lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::sync::Mutex;

use crate::config::{split_list, AmqpConfig};
use crate::error::{Service, ServiceError};
use crate::tls::{self, Trust};

/// Who is talking to the broker: shows in the management UI as the
/// connection name and in every consumer tag.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Worker kind: `dispatcher`, `partition`, `retry`, `ingest`, `sweeper`, `cli`.
    pub worker: String,
    pub host: String,
    pub pid: u32,
}

impl Identity {
    pub fn new(worker: &str) -> Self {
        let host = hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "unknown-host".into());
        Self {
            worker: worker.into(),
            host,
            pid: std::process::id(),
        }
    }

    /// `fleet-dispatcher@host (pid 42)`.
    pub fn connection_name(&self, role: &str) -> String {
        format!(
            "fleet-{}@{} ({role}, pid {})",
            self.worker, self.host, self.pid
        )
    }

    /// `fleet-dispatcher@host:42:invalidation.requests.fast`; unique per process and queue.
    pub fn consumer_tag(&self, queue: &str) -> String {
        format!("fleet-{}@{}:{}:{}", self.worker, self.host, self.pid, queue)
    }

    /// `dispatcher@host`, as written in error headers.
    pub fn label(&self) -> String {
        format!("{}@{}", self.worker, self.host)
    }
}

/// Hides the password of a URL for messages.
pub fn redact(url: &str) -> String {
    // A node list (`amqp://a,amqp://b`) is redacted node by node.
    if url.contains(',') {
        return url.split(',').map(redact).collect::<Vec<_>>().join(",");
    }
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(_) => url.to_string(),
        // Not a URL the parser takes (a typo, a stray bracket): mask whatever
        // stands between `user:` and `@`, so even a broken URL never shows
        // its password.
        Err(_) => {
            let start = url.find("://").map_or(0, |i| i + 3);
            match url[start..].rfind('@').map(|at| start + at) {
                Some(at) => match url[start..at].find(':') {
                    Some(colon) => format!("{}:***{}", &url[..start + colon], &url[at..]),
                    None => url.to_string(),
                },
                None => url.to_string(),
            }
        }
    }
}

fn properties(identity: &Identity, role: &str) -> ConnectionProperties {
    ConnectionProperties::default()
        .with_connection_name(identity.connection_name(role).into())
        .with_client_property("product".into(), "fleet".into())
}

/// The broker nodes a process may use (`amqp.url`: one URL, or the nodes of
/// a cluster comma-separated), and how long one attempt at one node may take.
#[derive(Debug, Clone)]
pub struct Nodes {
    urls: Vec<String>,
    connect_timeout: Duration,
    heartbeat: u16,
}

impl Nodes {
    /// `list`: node URLs, comma-separated. A URL's own `heartbeat` and
    /// `connection_timeout` (milliseconds) queries win over the arguments.
    pub fn new(list: &str, connect_timeout: Duration, heartbeat: Duration) -> Self {
        Self {
            urls: split_list(list).into_iter().map(str::to_string).collect(),
            connect_timeout,
            heartbeat: heartbeat.as_secs().clamp(1, u16::MAX.into()) as u16,
        }
    }

    /// How many nodes there are.
    pub fn len(&self) -> usize {
        self.urls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// Node `i`'s URL without its password, for messages.
    pub fn shown(&self, i: usize) -> String {
        self.urls.get(i).map(|u| redact(u)).unwrap_or_default()
    }

    /// Tries every node once, in order from node `start` (wrapping round),
    /// each attempt bounded by the connect timeout. Returns the connection
    /// and the index of its node; the error names every node and what
    /// happened there.
    pub async fn connect_from(
        &self,
        identity: &Identity,
        role: &str,
        start: usize,
    ) -> Result<(Connection, usize), ServiceError> {
        let mut failures = Vec::new();
        for k in 0..self.urls.len() {
            let i = (start + k) % self.urls.len();
            match self.connect_node(i, properties(identity, role)).await {
                Ok(conn) => {
                    if !failures.is_empty() {
                        let skipped: Vec<String> = failures
                            .iter()
                            .map(|f: &NodeFailure| f.text.clone())
                            .collect();
                        tracing::warn!(
                            node = %self.shown(i),
                            skipped = %skipped.join("; "),
                            role,
                            "Connected to another broker node."
                        );
                    }
                    return Ok((conn, i));
                }
                Err(why) => {
                    let cause = if tls::hint(Service::RabbitMq, &why.text).is_some() {
                        ConnectCause::Tls
                    } else {
                        why.cause
                    };
                    failures.push(NodeFailure {
                        text: format!(
                            "{} {}",
                            self.shown(i),
                            tls::explain(Service::RabbitMq, &why.text)
                        ),
                        cause,
                    });
                }
            }
        }
        Err(ServiceError::new(
            Service::RabbitMq,
            self.failure_message(&failures),
        ))
    }

    /// Why no node could be used, with the hint that fits the cause: a
    /// missing vhost or refused credentials are fixed with `rabbitmqctl`
    /// or AMQP_URL, never by starting a broker that is already running.
    fn failure_message(&self, failures: &[NodeFailure]) -> String {
        let what = if self.urls.len() == 1 {
            "RabbitMQ".to_string()
        } else {
            format!("any of the {} RabbitMQ nodes", self.urls.len())
        };
        if failures.is_empty() {
            return format!("cannot connect to {what}: AMQP_URL names no node.");
        }
        let detail = failures
            .iter()
            .map(|f| f.text.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        let uri: Option<AMQPUri> = self.urls.first().and_then(|u| u.parse().ok());
        let vhost = uri
            .as_ref()
            .map(|u| u.vhost.clone())
            .unwrap_or_else(|| "/".into());
        let user = uri
            .as_ref()
            .map(|u| u.authority.userinfo.username.clone())
            .unwrap_or_default();
        let any = |c: ConnectCause| failures.iter().any(|f| f.cause == c);
        if any(ConnectCause::Tls) {
            return format!(
                "cannot connect to {what}: {detail}. Fix the TLS set-up named above (AMQP_URL, \
                 SSL_CERT_FILE)."
            );
        }
        if any(ConnectCause::VhostMissing) {
            return format!(
                "cannot connect to {what}: vhost {vhost:?} does not exist ({detail}). The broker \
                 is running; create the vhost with `rabbitmqctl add_vhost {vhost}` and \
                 `rabbitmqctl set_permissions -p {vhost} {user} '.*' '.*' '.*'`, then declare the \
                 fleet's queues with `fleet topology apply`; or fix the vhost in AMQP_URL (the \
                 path after the host, `%2f` for \"/\")."
            );
        }
        if any(ConnectCause::VhostForbidden) {
            return format!(
                "cannot connect to {what}: user {user:?} may not use vhost {vhost:?} ({detail}). \
                 Grant it with `rabbitmqctl set_permissions -p {vhost} {user} '.*' '.*' '.*'`, or \
                 use a user that may."
            );
        }
        if any(ConnectCause::AccessRefused) {
            return format!(
                "cannot connect to {what}: the broker refused the login of user {user:?} \
                 ({detail}): wrong user name or password in AMQP_URL. List users with \
                 `rabbitmqctl list_users`; set a password with `rabbitmqctl change_password \
                 {user} …`."
            );
        }
        format!(
            "cannot connect to {what}: {detail}. Is it running? Start it with \
             `rabbitmq-server -detached` (or `scripts/services.sh`), or point AMQP_URL at it."
        )
    }

    /// One attempt at node `i`: the TCP connect and the AMQP handshake
    /// together within the connect timeout, with the heartbeat on.
    async fn connect_node(
        &self,
        i: usize,
        props: ConnectionProperties,
    ) -> Result<Connection, NodeFailure> {
        let mut uri: AMQPUri = self.urls[i].parse().map_err(|e| NodeFailure {
            text: format!("is not an AMQP URL ({e})"),
            cause: ConnectCause::Other,
        })?;
        if uri.query.heartbeat.is_none() {
            uri.query.heartbeat = Some(self.heartbeat);
        }
        let limit = uri
            .query
            .connection_timeout
            .map(Duration::from_millis)
            .unwrap_or(self.connect_timeout);
        // `amqps://`: TLS with the fleet's trust (platform store plus
        // SSL_CERT_FILE), over the TCP connection made below.
        let tls = match uri.scheme {
            AMQPScheme::AMQPS => Some(RustlsConnector::from(
                Trust::get()
                    .map_err(|e| NodeFailure {
                        text: format!("cannot set up TLS: {e}"),
                        cause: ConnectCause::Tls,
                    })?
                    .client_config(),
            )),
            AMQPScheme::AMQP => None,
        };
        let runtime =
            deadpool_lapin::lapin::runtime::default_runtime().map_err(|e| NodeFailure {
                text: e.to_string(),
                cause: ConnectCause::Other,
            })?;
        // lapin drives the connection from a thread of its own, which a
        // dropped handshake does not stop: it would wait on a node that never
        // answers for as long as the node keeps the socket open. A copy of
        // the socket lets a timed-out attempt shut it, which ends that thread.
        let socket: Arc<std::sync::Mutex<Option<std::net::TcpStream>>> = Arc::default();
        let slot = socket.clone();
        let attempt = Connection::connector(
            uri,
            runtime,
            async move |uri: AMQPUri, runtime| {
                // The TCP connection alone (the scheme decides TLS below).
                let mut tcp = uri.clone();
                tcp.scheme = AMQPScheme::AMQP;
                let stream = AMQPUriTcpExt::connect_async(&tcp, &runtime)
                    .await
                    .map_err(deadpool_lapin::lapin::Error::from)?;
                if let AsyncTcpStream::Plain(plain) = &stream {
                    if let Ok(fd) = plain.get_ref().as_fd().try_clone_to_owned() {
                        // `unwrap`: the lock is never held across a panic.
                        *slot.lock().unwrap() = Some(std::net::TcpStream::from(fd));
                    }
                }
                match &tls {
                    Some(connector) => stream
                        .into_rustls(connector, &uri.authority.host)
                        .await
                        .map_err(deadpool_lapin::lapin::Error::from),
                    None => Ok(stream),
                }
            },
            props,
        );
        let result = tokio::time::timeout(limit, attempt).await;
        // `unwrap`: the lock is never held across a panic.
        let copy = socket.lock().unwrap().take();
        match result {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(NodeFailure {
                cause: ConnectCause::of(&e),
                text: format!("failed: {}", tls::error_chain(&e)),
            }),
            Err(_) => {
                if let Some(s) = copy {
                    let _ = s.shutdown(std::net::Shutdown::Both);
                }
                Err(NodeFailure {
                    text: format!(
                        "did not answer within {} (TCP connect and AMQP handshake)",
                        humantime::format_duration(limit)
                    ),
                    cause: ConnectCause::Unreachable,
                })
            }
        }
    }
}

/// What went wrong at one node, and why (for the hint).
#[derive(Debug, Clone)]
struct NodeFailure {
    text: String,
    cause: ConnectCause,
}

/// Why a connection attempt failed, as far as the hint is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectCause {
    /// Nothing answered (refused, no route, timed out): start the broker.
    Unreachable,
    /// 530 NOT_ALLOWED "vhost … not found".
    VhostMissing,
    /// 530 NOT_ALLOWED "access to vhost … refused for user …".
    VhostForbidden,
    /// 403 ACCESS_REFUSED at login: user name or password.
    AccessRefused,
    /// The TLS handshake failed (untrusted CA, host name, plaintext port).
    Tls,
    Other,
}

impl ConnectCause {
    /// Reads the broker's reply code and text (lapin reports a refused
    /// open as a protocol error; some versions only as text).
    pub fn of(e: &deadpool_lapin::lapin::Error) -> Self {
        use deadpool_lapin::lapin::ErrorKind;
        let code = match e.kind() {
            ErrorKind::ProtocolError(p) => Some(p.get_id()),
            _ => None,
        };
        let text = e.to_string();
        if code == Some(530) || text.contains("NOT_ALLOWED") {
            if text.contains("not found") {
                return ConnectCause::VhostMissing;
            }
            return ConnectCause::VhostForbidden;
        }
        if code == Some(403) || text.contains("ACCESS_REFUSED") {
            return ConnectCause::AccessRefused;
        }
        if matches!(e.kind(), ErrorKind::IOError(_)) || text.contains("refused") {
            return ConnectCause::Unreachable;
        }
        ConnectCause::Other
    }
}

impl From<&AmqpConfig> for Nodes {
    fn from(c: &AmqpConfig) -> Self {
        Nodes::new(&c.url, c.connect_timeout, c.heartbeat)
    }
}

/// A bare URL list takes the default connect timeout and heartbeat.
impl From<&str> for Nodes {
    fn from(list: &str) -> Self {
        let d = AmqpConfig::default();
        Nodes::new(list, d.connect_timeout, d.heartbeat)
    }
}

impl From<&String> for Nodes {
    fn from(list: &String) -> Self {
        Nodes::from(list.as_str())
    }
}

impl From<&Nodes> for Nodes {
    fn from(n: &Nodes) -> Self {
        n.clone()
    }
}

/// Opens a named connection to the first node that answers (`target`: the
/// `amqp` configuration, or a URL list with the default timeouts); the error
/// names every node, what happened there, and how to start a broker.
pub async fn connect(
    target: impl Into<Nodes>,
    identity: &Identity,
    role: &str,
) -> Result<Connection, ServiceError> {
    target
        .into()
        .connect_from(identity, role, 0)
        .await
        .map(|(conn, _)| conn)
}

/// Makes the publisher's pooled connections: each goes to the node the
/// last one reached (or the next ones, when that node is gone).
pub struct NodeManager {
    nodes: Nodes,
    identity: Identity,
    /// The node the last connection reached.
    current: AtomicUsize,
}

impl deadpool::managed::Manager for NodeManager {
    type Type = Connection;
    type Error = ServiceError;

    async fn create(&self) -> Result<Connection, ServiceError> {
        let start = self.current.load(Ordering::Relaxed);
        let (conn, i) = self
            .nodes
            .connect_from(&self.identity, "publisher", start)
            .await?;
        self.current.store(i, Ordering::Relaxed);
        Ok(conn)
    }

    async fn recycle(
        &self,
        conn: &mut Connection,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<ServiceError> {
        if conn.status().connected() {
            Ok(())
        } else {
            Err(deadpool::managed::RecycleError::message(
                "connection lost; a new one is made",
            ))
        }
    }
}

/// A connection of the publisher's pool (derefs to a lapin `Connection`).
pub type PooledConnection = deadpool::managed::Object<NodeManager>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    #[error("broker unavailable: {0}")]
    Broker(String),
    #[error("broker refused the message (nack) for {exchange}/{routing_key}")]
    Nacked {
        exchange: String,
        routing_key: String,
    },
    #[error("no queue is bound to exchange {exchange:?} with routing key {routing_key:?}")]
    Unroutable {
        exchange: String,
        routing_key: String,
    },
    #[error("no publisher confirm within {0:?}")]
    Timeout(Duration),
    /// The broker closed the channel with 404 NOT_FOUND: the exchange does
    /// not exist in this vhost (a topology problem, not an outage).
    #[error(
        "exchange {exchange:?} does not exist in this vhost (404 NOT_FOUND); `fleet topology \
         apply` declares the fleet's exchanges, or send elsewhere"
    )]
    NoExchange { exchange: String },
    /// The user may not publish to the exchange (ACCESS_REFUSED): a
    /// permissions problem an operator must fix, said in plain words.
    #[error("{0}")]
    AccessRefused(crate::access::Refusal),
    /// An exchange name or routing key over AMQP's 255 bytes: nothing was
    /// sent (the broker could not route it anywhere).
    #[error("the {what} has {len} bytes; AMQP allows at most 255, so nothing was sent")]
    TooLong { what: &'static str, len: usize },
}

impl PublishError {
    /// A lapin error of a publish to `exchange`, classified.
    fn of(exchange: &str, e: &deadpool_lapin::lapin::Error) -> Self {
        let text = e.to_string();
        let not_found = matches!(e.kind(), deadpool_lapin::lapin::ErrorKind::ProtocolError(p) if p.get_id() == 404)
            || text.contains("NOT_FOUND");
        if not_found && text.contains("exchange") {
            return PublishError::NoExchange {
                exchange: exchange.to_string(),
            };
        }
        PublishError::Broker(text)
    }
}

/// A message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub body: &'a [u8],
    pub properties: BasicProperties,
    /// Fail when no queue receives the message (instead of dropping it).
    pub mandatory: bool,
}

impl<'a> Outgoing<'a> {
    /// A persistent JSON message, mandatory routing.
    pub fn json(exchange: &'a str, routing_key: &'a str, body: &'a [u8]) -> Self {
        Self {
            exchange,
            routing_key,
            body,
            properties: BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2),
            mandatory: true,
        }
    }
}

/// Publishes with confirms over a pooled connection. Cheap to clone; many
/// tasks may publish at once (confirms are pipelined on one channel).
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<PublisherInner>,
}

struct PublisherInner {
    pool: deadpool::managed::Pool<NodeManager>,
    channel: Mutex<Option<Channel>>,
    confirm_timeout: Duration,
    /// The AMQP user the nodes' URLs name, for the words of a refusal.
    user: Option<String>,
}

impl Publisher {
    /// Creates the pool and checks a broker node answers (`target`: the
    /// `amqp` configuration, or a URL list with the default timeouts).
    pub async fn connect(
        target: impl Into<Nodes>,
        identity: &Identity,
        confirm_timeout: Duration,
    ) -> Result<Self, ServiceError> {
        let nodes = target.into();
        let user = nodes.urls.first().and_then(|u| amqp_user(u));
        let manager = NodeManager {
            nodes,
            identity: identity.clone(),
            current: AtomicUsize::new(0),
        };
        let pool = deadpool::managed::Pool::builder(manager)
            .max_size(2)
            .build()
            .map_err(|e| ServiceError::new(Service::RabbitMq, format!("publisher pool: {e}")))?;
        let publisher = Self {
            inner: Arc::new(PublisherInner {
                pool,
                channel: Mutex::new(None),
                confirm_timeout,
                user,
            }),
        };
        // Check the broker answers now, so a missing one is reported at
        // start-up in plain words rather than at the first publish.
        drop(publisher.connection().await?);
        publisher.channel().await.map_err(|e| {
            ServiceError::new(
                Service::RabbitMq,
                format!("RabbitMQ answered but refused a publisher channel: {e}"),
            )
        })?;
        Ok(publisher)
    }

    /// The current confirm-mode channel, re-created when it died.
    async fn channel(&self) -> Result<Channel, PublishError> {
        let mut slot = self.inner.channel.lock().await;
        if let Some(ch) = slot.as_ref() {
            if ch.status().connected() {
                return Ok(ch.clone());
            }
        }
        *slot = None;
        let conn = self
            .connection()
            .await
            .map_err(|e| PublishError::Broker(e.to_string()))?;
        let ch = conn
            .create_channel()
            .await
            .map_err(|e| PublishError::Broker(e.to_string()))?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| PublishError::Broker(e.to_string()))?;
        *slot = Some(ch.clone());
        Ok(ch)
    }

    /// Publishes and waits for the broker's confirm. An exchange name or
    /// routing key longer than AMQP allows (255 bytes) is an error, never a
    /// panic: a routing key may come from a message's headers.
    pub async fn publish(&self, msg: Outgoing<'_>) -> Result<(), PublishError> {
        let too_long = |what: &'static str, name: &str| PublishError::TooLong {
            what,
            len: name.len(),
        };
        let exchange =
            ShortString::try_new(msg.exchange).map_err(|_| too_long("exchange", msg.exchange))?;
        let routing_key = ShortString::try_new(msg.routing_key)
            .map_err(|_| too_long("routing key", msg.routing_key))?;
        let ch = self.channel().await?;
        let confirm = ch
            .basic_publish(
                exchange,
                routing_key,
                BasicPublishOptions {
                    mandatory: msg.mandatory,
                    ..Default::default()
                },
                msg.body,
                msg.properties,
            )
            .await
            .map_err(|e| self.publish_error(msg.exchange, e))?;
        let confirmation = tokio::time::timeout(self.inner.confirm_timeout, confirm)
            .await
            .map_err(|_| PublishError::Timeout(self.inner.confirm_timeout))?
            .map_err(|e| self.publish_error(msg.exchange, e))?;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_returned)) => Err(PublishError::Unroutable {
                exchange: msg.exchange.into(),
                routing_key: msg.routing_key.into(),
            }),
            Confirmation::Nack(_) => Err(PublishError::Nacked {
                exchange: msg.exchange.into(),
                routing_key: msg.routing_key.into(),
            }),
            // `confirm_select` is always done in `channel()`, so this would be a bug.
            Confirmation::NotRequested => Err(PublishError::Broker(
                "publisher confirms were not enabled on the channel".into(),
            )),
        }
    }

    /// A refusal for lack of rights in plain words; any other error as the broker put it.
    fn publish_error(&self, exchange: &str, e: deadpool_lapin::lapin::Error) -> PublishError {
        if is_access_refused(&e) {
            PublishError::AccessRefused(crate::access::Refusal::new(
                "publish to",
                crate::access::exchange_resource(exchange),
                self.inner.user.clone(),
                e.to_string(),
            ))
        } else {
            PublishError::of(exchange, &e)
        }
    }

    /// The AMQP user this publisher connects as (`None` with certificates).
    pub fn user(&self) -> Option<&str> {
        self.inner.user.as_deref()
    }

    /// A live connection from the pool (for topology declares and health
    /// checks); a lost one is replaced, on another node if need be.
    pub async fn connection(&self) -> Result<PooledConnection, ServiceError> {
        self.inner.pool.get().await.map_err(|e| match e {
            deadpool::managed::PoolError::Backend(e) => e,
            other => ServiceError::new(Service::RabbitMq, format!("publisher pool: {other}")),
        })
    }
}

/// A queue's depth and consumer count, by a passive declare. A missing queue
/// fails with NOT_FOUND and closes `ch`: ask on a channel you can lose.
pub async fn inspect_queue(
    ch: &Channel,
    queue: &str,
) -> Result<deadpool_lapin::lapin::Queue, deadpool_lapin::lapin::Error> {
    ch.queue_declare(
        queue.into(),
        deadpool_lapin::lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
}

/// Whether the broker answered NOT_FOUND (no such queue or exchange).
pub fn is_not_found(e: &deadpool_lapin::lapin::Error) -> bool {
    matches!(e.kind(), deadpool_lapin::lapin::ErrorKind::ProtocolError(p) if p.get_id() == 404)
}

/// Whether the broker refused an operation for lack of rights
/// (ACCESS_REFUSED, 403: the user's configure / write / read pattern does
/// not cover the exchange or queue).
pub fn is_access_refused(e: &deadpool_lapin::lapin::Error) -> bool {
    matches!(e.kind(), deadpool_lapin::lapin::ErrorKind::ProtocolError(p) if p.get_id() == 403)
}

/// A queue's counts as the broker itself reports them (a passive declare):
/// exact the moment a message lands, unlike the management API's
/// statistics, which lag by their collection interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// Messages ready for delivery (delivered-but-unacked ones not included).
    pub ready: u32,
    /// Consumers attached.
    pub consumers: u32,
}

/// [`QueueCounts`] of each of `queues`, in order, by passive declares over
/// `conn`; `None` for a queue the broker does not have. A missing queue
/// closes the channel it was asked on, so the next question gets a new one.
pub async fn queue_counts<S: AsRef<str>>(
    conn: &Connection,
    queues: &[S],
) -> Result<Vec<Option<QueueCounts>>, deadpool_lapin::lapin::Error> {
    let mut out = Vec::with_capacity(queues.len());
    let mut ch: Option<Channel> = None;
    for queue in queues {
        let channel = match &ch {
            Some(c) => c,
            None => ch.insert(conn.create_channel().await?),
        };
        match inspect_queue(channel, queue.as_ref()).await {
            Ok(q) => out.push(Some(QueueCounts {
                ready: q.message_count(),
                consumers: q.consumer_count(),
            })),
            Err(e) if is_not_found(&e) => {
                out.push(None);
                ch = None;
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(c) = ch {
        let _ = c.close(200, "queues inspected".into()).await;
    }
    Ok(out)
}

/// Header names the fleet writes. Readers accept their absence.
///
/// Who may set what (SPEC §11, "Ingress hygiene"): the origin, counter and
/// diagnosis headers are the fleet's own. On a queue producers feed (lanes,
/// source queues) the runtime treats them as absent: the origin is the
/// delivery's own exchange and routing key, the count starts again (unless
/// the fleet itself returned the message, see [`counters_trusted`]), and
/// what the producer sent is kept only as inert history ([`HISTORY`]).
pub mod headers {
    pub const ERROR_CLASS: &str = "x-error-class";
    pub const ERROR_MESSAGE: &str = "x-error-message";
    pub const ERROR_WORKER: &str = "x-error-worker";
    pub const ERROR_TIME: &str = "x-error-time";
    pub const ORIGINAL_EXCHANGE: &str = "x-original-exchange";
    pub const ORIGINAL_ROUTING_KEY: &str = "x-original-routing-key";
    pub const ORIGINAL_QUEUE: &str = "x-original-queue";
    pub const ATTEMPTS: &str = "x-retry-attempts";
    pub const FIRST_FAILURE: &str = "x-first-failure-time";
    pub const PARK_REASON: &str = "x-park-reason";
    /// Where the fleet re-routed a request from (the lane rule): a message
    /// carrying it is never re-routed again.
    pub const REROUTED_FROM: &str = "x-rerouted-from";
    pub const REPLAYED_AT: &str = "x-replayed-at";
    pub const REPLAY_COUNT: &str = "x-replay-count";
    /// Milliseconds since the epoch from which the retry window counts when
    /// that is later than the body's `invalidationTime`: stamped by `fleet
    /// dlq replay --reset-retries`, kept on retry copies, copied onto the
    /// partition tasks of a split request. The body is never rewritten.
    pub const WINDOW_START: &str = "x-window-start";
    /// Earlier diagnoses, newest first: an array of tables, each holding the
    /// headers one failure (or the broker's `x-death`) had set, under their
    /// own names. History is never read to decide anything.
    pub const HISTORY: &str = "x-history";
    /// The broker's record of its own dead-letterings (newest first).
    pub const DEATH: &str = "x-death";

    /// Where a message came from, as the fleet recorded it.
    pub const ORIGIN: &[&str] = &[ORIGINAL_EXCHANGE, ORIGINAL_ROUTING_KEY, ORIGINAL_QUEUE];
    /// The retry counters.
    pub const COUNTERS: &[&str] = &[ATTEMPTS, FIRST_FAILURE];
    /// Why a message failed, as the fleet diagnosed it.
    pub const DIAGNOSIS: &[&str] = &[
        ERROR_CLASS,
        ERROR_MESSAGE,
        ERROR_WORKER,
        ERROR_TIME,
        PARK_REASON,
    ];
    /// Why the broker dead-lettered a message (it writes these itself).
    pub const BROKER_DEATH: &[&str] = &[
        DEATH,
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
    ];
    /// History entries kept at most; older ones are dropped.
    pub const HISTORY_LIMIT: usize = 10;
}

/// The AMQP user of `url` (the first node of a comma-separated list) when
/// the connection authenticates with a user name and password; `None` for
/// EXTERNAL (certificate) and ANONYMOUS authentication, whose user name the
/// URL does not say. The broker checks a message's `user_id` property against the
/// publishing connection's user, so `user_id` = this user proves the fleet
/// published the message.
pub fn amqp_user(url: &str) -> Option<String> {
    use deadpool_lapin::lapin::uri::{AMQPUri, SASLMechanism};
    let first = url.split(',').next().unwrap_or(url).trim();
    let uri: AMQPUri = first.parse().ok()?;
    match uri.query.auth_mechanism {
        Some(SASLMechanism::External | SASLMechanism::Anonymous) => None,
        _ => Some(uri.authority.userinfo.username),
    }
}

/// Whether the counters of a delivery from a queue producers feed can be
/// believed: only when the fleet itself published it, which the broker
/// vouches for through the `user_id` property (RabbitMQ refuses a
/// `user_id` other than the publishing connection's user). The retry
/// handler stamps it on every message it returns to a lane, so attempts
/// count across returns while a producer's own `x-retry-attempts` is ignored.
pub fn counters_trusted(props: &BasicProperties, fleet_user: Option<&str>) -> bool {
    match (props.user_id(), fleet_user) {
        (Some(u), Some(f)) => u.as_str() == f,
        _ => false,
    }
}

/// Moves the headers of `received` named in `moved` (when present) into one
/// new entry at the head of [`headers::HISTORY`] (keeping at most
/// [`headers::HISTORY_LIMIT`] entries), then sets `set`. What a message
/// carried is never lost and never read again as current.
pub fn supersede(
    received: Option<&FieldTable>,
    moved: &[&str],
    set: &[(&str, HeaderValue)],
) -> FieldTable {
    let mut map: BTreeMap<ShortString, AMQPValue> =
        received.map(|t| t.inner().clone()).unwrap_or_default();
    let mut entry: BTreeMap<ShortString, AMQPValue> = BTreeMap::new();
    for name in moved {
        if let Some(v) = map.remove(*name) {
            entry.insert((*name).into(), v);
        }
    }
    if !entry.is_empty() {
        let mut history = vec![AMQPValue::FieldTable(FieldTable::from(entry))];
        if let Some(AMQPValue::FieldArray(old)) = map.remove(headers::HISTORY) {
            history.extend(old.as_slice().iter().cloned());
        }
        history.truncate(headers::HISTORY_LIMIT);
        map.insert(
            headers::HISTORY.into(),
            AMQPValue::FieldArray(history.into()),
        );
    }
    with_headers(Some(&FieldTable::from(map)), set)
}

/// The tables of an array header (`x-history`, `x-death`), newest first.
pub fn header_tables(table: Option<&FieldTable>, key: &str) -> Vec<FieldTable> {
    match table.and_then(|t| t.inner().get(key)) {
        Some(AMQPValue::FieldArray(a)) => a
            .as_slice()
            .iter()
            .filter_map(|v| match v {
                AMQPValue::FieldTable(t) => Some(t.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// A header value as JSON: strings as strings, tables as objects, arrays as
/// arrays, timestamps as seconds.
pub fn value_json(v: &AMQPValue) -> serde_json::Value {
    use serde_json::Value;
    match v {
        AMQPValue::FieldTable(t) => Value::Object(
            t.inner()
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), value_json(v)))
                .collect(),
        ),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value_json).collect()),
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::LongLongInt(i) => Value::from(*i),
        AMQPValue::LongInt(i) => Value::from(*i),
        AMQPValue::LongUInt(i) => Value::from(*i),
        AMQPValue::ShortInt(i) => Value::from(*i),
        AMQPValue::ShortUInt(i) => Value::from(*i),
        AMQPValue::ShortShortInt(i) => Value::from(*i),
        AMQPValue::ShortShortUInt(i) => Value::from(*i),
        AMQPValue::Timestamp(t) => Value::from(*t),
        AMQPValue::Void => Value::Null,
        // RabbitMQ's byte arrays: text when they are UTF-8, else hex.
        AMQPValue::ByteArray(b) => Value::String(match std::str::from_utf8(b.as_slice()) {
            Ok(s) => s.to_string(),
            Err(_) => b.as_slice().iter().map(|x| format!("{x:02x}")).collect(),
        }),
        other => value_text(other)
            .map(Value::String)
            .unwrap_or_else(|| Value::String(format!("{other:?}"))),
    }
}

/// A header value as text: strings arrive as bytes, numbers as numbers.
pub fn header_text(table: Option<&FieldTable>, key: &str) -> Option<String> {
    let v = table?.inner().get(key)?;
    value_text(v)
}

pub fn value_text(v: &AMQPValue) -> Option<String> {
    Some(match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_string(),
        AMQPValue::LongLongInt(i) => i.to_string(),
        AMQPValue::LongInt(i) => i.to_string(),
        AMQPValue::LongUInt(i) => i.to_string(),
        AMQPValue::ShortInt(i) => i.to_string(),
        AMQPValue::ShortUInt(i) => i.to_string(),
        AMQPValue::ShortShortInt(i) => i.to_string(),
        AMQPValue::ShortShortUInt(i) => i.to_string(),
        AMQPValue::Timestamp(t) => t.to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::Double(d) => d.to_string(),
        AMQPValue::Float(f) => f.to_string(),
        _ => return None,
    })
}

pub fn header_i64(table: Option<&FieldTable>, key: &str) -> Option<i64> {
    header_text(table, key)?.parse().ok()
}

/// The headers as one JSON object: scalars as text (strings arrive as
/// bytes), `x-death` and `x-history` as arrays of objects. This is the form
/// `peek --json` shows and `parked_messages.headers` stores: readable, and
/// a query can reach inside (`headers->'x-death'->0->>'reason'`).
pub fn headers_json(table: Option<&FieldTable>) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    if let Some(t) = table {
        for (k, v) in t.inner() {
            let value = match v {
                AMQPValue::FieldTable(_) | AMQPValue::FieldArray(_) => value_json(v),
                other => value_text(other)
                    .map(serde_json::Value::String)
                    .unwrap_or_else(|| value_json(other)),
            };
            out.insert(k.as_str().to_string(), value);
        }
    }
    out
}

/// Every header as `name → text` (nested tables and arrays as JSON text).
pub fn headers_map(table: Option<&FieldTable>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(t) = table {
        for (k, v) in t.inner() {
            let text = value_text(v).unwrap_or_else(|| value_json(v).to_string());
            out.insert(k.as_str().to_string(), text);
        }
    }
    out
}

/// Builds a header table from a copy of `base` plus `set`.
pub fn with_headers(base: Option<&FieldTable>, set: &[(&str, HeaderValue)]) -> FieldTable {
    let mut map: BTreeMap<ShortString, AMQPValue> =
        base.map(|t| t.inner().clone()).unwrap_or_default();
    for (k, v) in set {
        let value = match v {
            HeaderValue::Text(s) => AMQPValue::LongString(LongString::from(s.as_bytes().to_vec())),
            HeaderValue::Int(i) => AMQPValue::LongLongInt(*i),
        };
        map.insert((*k).into(), value);
    }
    FieldTable::from(map)
}

/// A header to set.
#[derive(Debug, Clone)]
pub enum HeaderValue {
    Text(String),
    Int(i64),
}

impl From<&str> for HeaderValue {
    fn from(s: &str) -> Self {
        HeaderValue::Text(s.into())
    }
}

impl From<String> for HeaderValue {
    fn from(s: String) -> Self {
        HeaderValue::Text(s)
    }
}

impl From<i64> for HeaderValue {
    fn from(i: i64) -> Self {
        HeaderValue::Int(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_diagnosis_moves_the_old_one_into_history() {
        let first = with_headers(
            None,
            &[
                (headers::ERROR_CLASS, "search_unavailable".into()),
                (headers::PARK_REASON, "retry_window_exceeded: 3h".into()),
                ("x-keep", "kept".into()),
            ],
        );
        let second = supersede(
            Some(&first),
            headers::DIAGNOSIS,
            &[(headers::ERROR_CLASS, "forbidden_field".into())],
        );
        assert_eq!(
            header_text(Some(&second), headers::ERROR_CLASS).as_deref(),
            Some("forbidden_field")
        );
        assert_eq!(header_text(Some(&second), headers::PARK_REASON), None);
        assert_eq!(
            header_text(Some(&second), "x-keep").as_deref(),
            Some("kept")
        );
        let history = header_tables(Some(&second), headers::HISTORY);
        assert_eq!(history.len(), 1);
        assert_eq!(
            header_text(Some(&history[0]), headers::PARK_REASON).as_deref(),
            Some("retry_window_exceeded: 3h")
        );
        // Newest first, and bounded.
        let mut t = second;
        for i in 0..20 {
            t = supersede(
                Some(&t),
                headers::DIAGNOSIS,
                &[(headers::ERROR_CLASS, format!("class{i}").into())],
            );
        }
        let history = header_tables(Some(&t), headers::HISTORY);
        assert_eq!(history.len(), headers::HISTORY_LIMIT);
        assert_eq!(
            header_text(Some(&history[0]), headers::ERROR_CLASS).as_deref(),
            Some("class18")
        );
        // Nothing to move: no empty entry.
        let plain = supersede(None, headers::DIAGNOSIS, &[("x-a", "b".into())]);
        assert!(header_tables(Some(&plain), headers::HISTORY).is_empty());
        let json = value_json(plain.inner().get("x-a").unwrap());
        assert_eq!(json, serde_json::json!("b"));
        let shown = headers_map(Some(&t));
        assert!(shown[headers::HISTORY].starts_with("[{"), "{shown:?}");
    }

    #[test]
    fn the_fleet_user_comes_from_the_url_and_vouches_for_counters() {
        assert_eq!(
            amqp_user("amqp://fleet:secret@h:5672/v").as_deref(),
            Some("fleet")
        );
        assert_eq!(amqp_user("amqp://h:5672/v").as_deref(), Some("guest"));
        assert_eq!(
            amqp_user("amqp://a:b@n1:5672/v,amqp://a:b@n2:5672/v").as_deref(),
            Some("a")
        );
        assert_eq!(amqp_user("amqps://h:5671/v?auth_mechanism=external"), None);
        let ours = BasicProperties::default().with_user_id("fleet".into());
        let theirs = BasicProperties::default().with_user_id("pricing".into());
        assert!(counters_trusted(&ours, Some("fleet")));
        assert!(!counters_trusted(&theirs, Some("fleet")));
        assert!(!counters_trusted(
            &BasicProperties::default(),
            Some("fleet")
        ));
        assert!(!counters_trusted(&ours, None));
    }
}
