//! The one consumer loop every worker runs, and the failure paths of SPEC §6.
//!
//! A delivery ends in exactly one of: done (acked after the handler's
//! effects were confirmed), retried later (republished to the retry delay
//! queue, confirmed, then acked), dead-lettered (republished to the queue's
//! dead-letter queue with headers that say why, confirmed, then acked), or
//! returned to the broker unacked (shutdown timeout, lost connection, or a
//! failure path that itself could not publish). Nothing is acked before its
//! outputs are confirmed; nothing is dropped.
//!
//! Ingress hygiene (SPEC §11): the origin, counter and diagnosis headers
//! are the fleet's own. Only on the queues the fleet itself feeds
//! ([`fleet_fed`]: the retry-ready and partition queues) are they read as
//! they arrive; on every other queue the origin of a failure is the
//! delivery's own exchange and routing key and the count starts again
//! (unless the broker vouches that the fleet published the message, see
//! [`broker::counters_trusted`]). Every failure copy records a new
//! diagnosis; what the message carried before moves into `x-history`.
//! Bodies over `worker.max_body_bytes` are dead-lettered before any handler
//! decodes them.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_lapin::lapin::message::Delivery;
use deadpool_lapin::lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use deadpool_lapin::lapin::types::{FieldTable, ShortString};
use deadpool_lapin::lapin::BasicProperties;
use futures::{FutureExt, StreamExt};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::access::{queue_resource, Refusal};
use crate::acks::Acks;
use crate::broker::{
    self, counters_trusted, header_i64, header_text, headers, supersede, HeaderValue, Identity,
    Outgoing, PublishError, Publisher,
};
use crate::config::Config;
use crate::message::{now_millis, RequestEvent};
use crate::telemetry;
use crate::topology::names;

/// How a handler failed: decides the failure path.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HandlerError {
    /// Bad input; retrying cannot help. Goes to the queue's dead-letter queue.
    #[error("{class}: {message}")]
    Permanent {
        /// A stable, snake_case name of the failure (`forbidden_field`):
        /// the `x-error-class` header, a metric label, a replay filter.
        class: &'static str,
        message: String,
    },
    /// A dependency failed; try again after the retry delay.
    #[error("{class}: {message}")]
    Transient {
        /// See [`HandlerError::Permanent`]'s `class`.
        class: &'static str,
        message: String,
        /// A body to retry instead of the original (e.g. with the request id
        /// generated at first sight, so the retry keeps it).
        body: Option<Vec<u8>>,
    },
}

impl HandlerError {
    pub fn permanent(class: &'static str, message: impl ToString) -> Self {
        HandlerError::Permanent {
            class,
            message: message.to_string(),
        }
    }

    pub fn transient(class: &'static str, message: impl ToString) -> Self {
        HandlerError::Transient {
            class,
            message: message.to_string(),
            body: None,
        }
    }

    /// Attaches the body to retry with (transient errors only).
    pub fn with_body(self, new_body: Vec<u8>) -> Self {
        match self {
            HandlerError::Transient { class, message, .. } => HandlerError::Transient {
                class,
                message,
                body: Some(new_body),
            },
            other => other,
        }
    }

    pub fn class(&self) -> &'static str {
        match self {
            HandlerError::Permanent { class, .. } | HandlerError::Transient { class, .. } => class,
        }
    }
}

/// Classifies a publish failure: an unroutable message is a topology problem
/// and a refused one (ACCESS_REFUSED) a permissions problem, both for an
/// operator to fix; everything else is a passing broker problem. All are
/// retried: nothing is lost while the operator fixes the topology or the rights.
impl From<PublishError> for HandlerError {
    fn from(e: PublishError) -> Self {
        let class = match e {
            PublishError::Unroutable { .. } | PublishError::TooLong { .. } => "unroutable",
            PublishError::AccessRefused(_) => "access_refused",
            _ => "broker",
        };
        HandlerError::transient(class, e)
    }
}

/// Tags an error at the call site: `search.count(..).await.transient("search")?`.
pub trait Classify<T> {
    fn transient(self, class: &'static str) -> Result<T, HandlerError>;
    fn permanent(self, class: &'static str) -> Result<T, HandlerError>;
}

impl<T, E: std::fmt::Display> Classify<T> for Result<T, E> {
    fn transient(self, class: &'static str) -> Result<T, HandlerError> {
        self.map_err(|e| HandlerError::transient(class, e))
    }
    fn permanent(self, class: &'static str) -> Result<T, HandlerError> {
        self.map_err(|e| HandlerError::permanent(class, e))
    }
}

/// One delivery as handlers see it.
pub struct Incoming {
    /// The queue it was consumed from.
    pub queue: String,
    pub delivery: Delivery,
    /// An end other than `done` that the handler reached itself (the retry
    /// handler parks): the outcome the metrics and logs report.
    outcome: std::sync::OnceLock<&'static str>,
    /// An event to publish once the delivery is acked (a park).
    event: std::sync::OnceLock<RequestEvent>,
}

impl Incoming {
    pub fn new(queue: impl Into<String>, delivery: Delivery) -> Self {
        Self {
            queue: queue.into(),
            delivery,
            outcome: std::sync::OnceLock::new(),
            event: std::sync::OnceLock::new(),
        }
    }

    /// Records that the handler parked the message (its `Ok` is not `done`).
    pub fn mark_parked(&self) {
        self.mark_outcome("parked");
    }

    /// Records the end the handler's `Ok` stands for when it is not `done`
    /// (`parked`, `rerouted`): the outcome metrics and logs report.
    pub fn mark_outcome(&self, outcome: &'static str) {
        let _ = self.outcome.set(outcome);
    }

    /// Publishes `event` on `invalidation.events` after the delivery is
    /// acked, i.e. after the handler's outputs (the parked copy) were
    /// confirmed. A failed publish is logged and counted, never fatal.
    pub fn announce_after_ack(&self, event: RequestEvent) {
        let _ = self.event.set(event);
    }

    /// The event of this message's end: where it is now, why, and where it
    /// came from.
    pub fn request_event(
        &self,
        ctx: &Context,
        event: &'static str,
        class: &str,
        message: &str,
        queue: &str,
        origin: (Option<String>, Option<String>),
    ) -> RequestEvent {
        RequestEvent {
            v: crate::message::CURRENT_VERSION,
            event: event.into(),
            request_id: RequestEvent::request_id_of(self.body()),
            class: class.into(),
            message: message.into(),
            queue: queue.into(),
            original_queue: self.queue.clone(),
            original_exchange: origin.0,
            original_routing_key: origin.1,
            message_id: self
                .delivery
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.to_string()),
            worker: ctx.identity.label(),
            time: now_millis(),
        }
    }

    pub fn body(&self) -> &[u8] {
        &self.delivery.data
    }

    pub fn headers(&self) -> Option<&FieldTable> {
        self.delivery.properties.headers().as_ref()
    }

    /// A header as received. On a queue producers feed (see [`fleet_fed`])
    /// the origin, counter and diagnosis headers are the producer's, not
    /// the fleet's: the failure paths do not believe them, nor should a handler.
    pub fn header(&self, key: &str) -> Option<String> {
        header_text(self.headers(), key)
    }
}

/// What a worker does with one delivery.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, msg: &Incoming) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// What every worker of a process shares.
#[derive(Clone)]
pub struct Context {
    pub config: Arc<Config>,
    pub identity: Identity,
    pub publisher: Publisher,
    /// Which queues this process consumes right now: the readiness check
    /// reads it, so a consumer the broker cancelled shows.
    pub consumers: Consumers,
}

/// The consuming state of every queue a process's consumer loops serve.
#[derive(Clone, Default)]
pub struct Consumers {
    state: Arc<std::sync::Mutex<std::collections::BTreeMap<String, bool>>>,
}

impl Consumers {
    fn set(&self, queues: &[String], consuming: bool) {
        // `unwrap`: the lock is never held across a panic.
        let mut state = self.state.lock().unwrap();
        for q in queues {
            state.insert(q.clone(), consuming);
        }
    }

    /// The queues expected to be consumed that are not, right now.
    pub fn idle(&self) -> Vec<String> {
        // `unwrap`: the lock is never held across a panic.
        let state = self.state.lock().unwrap();
        state
            .iter()
            .filter(|(_, consuming)| !**consuming)
            .map(|(q, _)| q.clone())
            .collect()
    }
}

/// Acks or nacks a delivery exactly once; a second call is a bug and is
/// refused. Acks go through the channel's [`Acks`], which coalesces them.
struct AckOnce {
    acker: deadpool_lapin::lapin::Acker,
    tag: u64,
    acks: Acks,
    done: AtomicBool,
}

impl AckOnce {
    fn claim(&self) -> Result<(), &'static str> {
        if self.done.swap(true, Ordering::SeqCst) {
            Err("delivery already acknowledged")
        } else {
            Ok(())
        }
    }

    async fn ack(&self) {
        if let Err(e) = self.claim() {
            tracing::error!(error = %e, "Refused a second ack.");
            return;
        }
        match self.acks.ack(self.tag, &self.acker).await {
            Ok(true) => {}
            // The channel died after the work was confirmed: the broker will
            // redeliver, and the handlers are idempotent.
            Ok(false) => {
                tracing::warn!("Ack not delivered (channel closed); the broker will redeliver.")
            }
            Err(error) => tracing::warn!(%error, "Ack failed; the broker will redeliver."),
        }
    }

    async fn requeue(&self) {
        self.nack(true).await
    }

    /// Rejects without requeue: the queue's own dead-letter exchange takes
    /// the message to `<queue>.dlq`, where `x-death` says where it was.
    async fn reject(&self) {
        self.nack(false).await
    }

    async fn nack(&self, requeue: bool) {
        if self.claim().is_err() {
            return;
        }
        let _ = self.acks.nack(self.tag, &self.acker, requeue).await;
    }
}

/// Consumes `queues` until `shutdown`, reconnecting with backoff.
pub async fn consume<H: Handler>(
    ctx: Context,
    queues: Vec<String>,
    handler: Arc<H>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(250);
    let max_backoff = ctx.config.amqp.reconnect_max_backoff;
    let worker = ctx.identity.worker.clone();
    ctx.consumers.set(&queues, false);
    let mut redeclare = false;
    // The cluster's nodes; `node` is the one to try first. After a lost
    // session the next node goes first: the lost one may be down, or wedged
    // (then trying it first would cost the connect timeout each time).
    let nodes = broker::Nodes::from(&ctx.config.amqp);
    let mut node = 0;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let conn = match nodes.connect_from(&ctx.identity, "consumer", node).await {
            Ok((c, i)) => {
                node = i;
                c
            }
            Err(error) => {
                tracing::warn!(%error, ?backoff, worker, "Broker unreachable; retrying.");
                if sleep_or_shutdown(backoff, &shutdown).await {
                    return;
                }
                backoff = (backoff * 2).min(max_backoff);
                continue;
            }
        };
        if redeclare {
            // The queue was gone (deleted, or a node that lost its
            // definitions): declare the whole topology again, idempotently.
            match redeclare_topology(&ctx, &conn).await {
                Ok(()) => {
                    tracing::warn!(
                        worker,
                        "Re-applied the topology after a queue went missing."
                    );
                    redeclare = false;
                }
                Err(RedeclareError::Refused(error)) => {
                    // A least-privilege user may not declare (no configure
                    // right, by design): the queue must come back from an
                    // operator's `fleet topology apply`.
                    tracing::error!(%error, worker, "A queue this worker consumes is missing and this user may not declare the topology: run `fleet topology apply` as an administrator. Retrying.");
                }
                Err(RedeclareError::Other(error)) => {
                    tracing::warn!(%error, worker, "Could not re-apply the topology; retrying.")
                }
            }
        }
        let session = run_session(&ctx, &conn, &queues, handler.clone(), &shutdown).await;
        ctx.consumers.set(&queues, false);
        // Bounded: a node that stopped answering never sends close-ok.
        let _ = tokio::time::timeout(
            ctx.config.amqp.connect_timeout,
            conn.close(200, "worker stopping".into()),
        )
        .await;
        if nodes.len() > 1 && !matches!(session, Ok(SessionEnd::Shutdown)) {
            tracing::info!(worker, lost = %nodes.shown(node), "Trying the next broker node first.");
            node = (node + 1) % nodes.len();
        }
        match session {
            Ok(SessionEnd::Shutdown) => return,
            Ok(SessionEnd::Lost) => {
                tracing::warn!(worker, "Lost the broker connection; reconnecting.");
                backoff = Duration::from_millis(250);
            }
            Ok(SessionEnd::Refused(refusal)) => {
                // Loud, and tried again with backoff (not a crash loop): a
                // fixed permission is picked up by the next session.
                tracing::error!(error = %refusal, worker, ?backoff, "The broker refused this worker's consumer; retrying.");
                if sleep_or_shutdown(backoff, &shutdown).await {
                    return;
                }
                backoff = (backoff * 2).min(max_backoff);
            }
            Ok(SessionEnd::Cancelled(queue)) => {
                tracing::warn!(worker, %queue, "The broker cancelled the consumer (queue deleted, or its node went down); reconnecting.");
                redeclare = true;
                backoff = Duration::from_millis(250);
            }
            Err(error) => {
                // NOT_FOUND: the queue to consume does not exist.
                if broker::is_not_found(&error) {
                    redeclare = true;
                }
                tracing::warn!(%error, worker, "Consumer failed; reconnecting.");
                if sleep_or_shutdown(backoff, &shutdown).await {
                    return;
                }
                backoff = (backoff * 2).min(max_backoff);
            }
        }
    }
}

enum SessionEnd {
    Shutdown,
    Lost,
    /// The broker cancelled the consumer of this queue.
    Cancelled(String),
    /// The user may not consume a queue (ACCESS_REFUSED).
    Refused(Refusal),
}

enum RedeclareError {
    /// The user may not declare (no configure right).
    Refused(String),
    Other(String),
}

async fn redeclare_topology(
    ctx: &Context,
    conn: &deadpool_lapin::lapin::Connection,
) -> Result<(), RedeclareError> {
    let topology = crate::topology::Topology::load(&ctx.config)
        .map_err(|e| RedeclareError::Other(e.to_string()))?;
    crate::topology::apply(conn, &topology)
        .await
        .map(|_| ())
        .map_err(|e| match e {
            crate::topology::TopologyError::AccessRefused(r) => {
                RedeclareError::Refused(r.to_string())
            }
            other => RedeclareError::Other(other.to_string()),
        })
}

async fn sleep_or_shutdown(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = shutdown.cancelled() => true,
    }
}

async fn run_session<H: Handler>(
    ctx: &Context,
    conn: &deadpool_lapin::lapin::Connection,
    queues: &[String],
    handler: Arc<H>,
    shutdown: &CancellationToken,
) -> Result<SessionEnd, deadpool_lapin::lapin::Error> {
    // One channel per queue: delivery tags count per channel, so a slow
    // delivery on one queue never keeps another queue's acks from being
    // coalesced (see `acks`). The prefetch applies to each consumer.
    let prefetch = ctx.config.amqp.prefetch_for(&ctx.identity.worker);
    let mut streams = Vec::new();
    let mut consumers = Vec::new();
    for q in queues {
        let channel = conn.create_channel().await?;
        // Re-applied on every (re)connection: recovery does not restore it.
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let tag = ctx.identity.consumer_tag(q);
        let consumer = match channel
            .basic_consume(
                q.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
        {
            Ok(c) => c,
            Err(e) if broker::is_access_refused(&e) => {
                for (channel, _) in &consumers {
                    close_channel(channel).await;
                }
                close_channel(&channel).await;
                return Ok(SessionEnd::Refused(Refusal::new(
                    "consume from",
                    queue_resource(q),
                    fleet_user(ctx),
                    e.to_string(),
                )));
            }
            Err(e) => return Err(e),
        };
        consumers.push((channel, tag));
        let acks = Acks::start();
        let end_acks = acks.clone();
        let queue = q.clone();
        let ended = q.clone();
        // A consumer stream ends when the broker cancels it (its queue was
        // deleted, or the node holding it went down). The marker makes that
        // end visible: merged, it would silently drop out of the select.
        streams.push(
            consumer
                .map(move |d| (queue.clone(), acks.clone(), Some(d)))
                .chain(futures::stream::once(
                    async move { (ended, end_acks, None) },
                ))
                .boxed(),
        );
    }
    ctx.consumers.set(queues, true);
    tracing::info!(worker = %ctx.identity.worker, queues = ?queues, prefetch, "Consuming.");
    let mut merged = futures::stream::select_all(streams);
    let tracker = TaskTracker::new();
    let end = loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break SessionEnd::Shutdown,
            next = merged.next() => match next {
                Some((queue, acks, Some(Ok(delivery)))) => {
                    let ctx = ctx.clone();
                    let handler = handler.clone();
                    acks.delivered(delivery.delivery_tag);
                    tracker.spawn(async move {
                        let msg = Incoming::new(queue, delivery);
                        let span = message_span(&ctx, &msg);
                        process(&ctx, handler.as_ref(), msg, acks).instrument(span).await;
                    });
                }
                Some((_, _, Some(Err(error)))) => {
                    tracing::warn!(%error, "Consumer stream failed.");
                    break SessionEnd::Lost;
                }
                Some((queue, _, None)) => break SessionEnd::Cancelled(queue),
                None => break SessionEnd::Lost,
            }
        }
    };
    if matches!(end, SessionEnd::Shutdown) {
        // Stop new deliveries first, then let in-flight ones finish.
        for (channel, tag) in &consumers {
            let _ = channel
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await;
        }
    }
    tracker.close();
    let grace = ctx.config.worker.shutdown_grace;
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            in_flight = tracker.len(),
            ?grace,
            "Shutdown grace over; returning in-flight messages to the broker unacknowledged."
        );
    }
    for (channel, _) in &consumers {
        close_channel(channel).await;
    }
    Ok(end)
}

async fn close_channel(channel: &deadpool_lapin::lapin::Channel) {
    let _ = channel.close(200, "worker stopping".into()).await;
}

/// The span every line about one message is logged in. Handlers fill in
/// what they learn from the body (`request_id`, `job_id`, `task`).
fn message_span(ctx: &Context, msg: &Incoming) -> tracing::Span {
    // A producer's own counter is not believed here either. Saturating: a
    // counter of i64::MAX must not panic here, outside the handler's
    // panic guard, where it would strand the delivery unacked.
    // The belief is only worked out for a message that carries a counter.
    let attempt = match header_i64(msg.headers(), headers::ATTEMPTS) {
        Some(n) if belief(ctx, msg).counters => n.saturating_add(1),
        _ => 1,
    };
    let message_id = msg
        .delivery
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.to_string());
    tracing::info_span!(
        "message",
        worker = %ctx.identity.worker,
        queue = %msg.queue,
        attempt,
        message_id,
        request_id = tracing::field::Empty,
        job_id = tracing::field::Empty,
        task = tracing::field::Empty,
    )
}

/// Records what a handler learnt about its message on the message's span,
/// so every line logged about it from then on carries it.
pub fn record_request(request_id: &str) {
    tracing::Span::current().record("request_id", request_id);
}

/// Like [`record_request`], for a partition task.
pub fn record_task(request_id: &str, job_id: &uuid::Uuid, task: i32) {
    let span = tracing::Span::current();
    span.record("request_id", request_id);
    span.record("job_id", tracing::field::display(job_id));
    span.record("task", task);
}

/// Runs the handler and takes the delivery down exactly one path.
async fn process<H: Handler>(ctx: &Context, handler: &H, msg: Incoming, acks: Acks) {
    let started = std::time::Instant::now();
    // A bug that panics in a handler must not strand the delivery unacked
    // until the connection drops: it takes the transient path instead, and
    // is parked once the retry window is over.
    let result = if let Err(too_large) = check_body_size(&ctx.config, msg.body()) {
        // Refused before any handler decodes it.
        Err(too_large)
    } else {
        match std::panic::AssertUnwindSafe(handler.handle(&msg))
            .catch_unwind()
            .await
        {
            Ok(result) => result,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                Err(HandlerError::transient(
                    "panic",
                    format!("handler panicked: {what}"),
                ))
            }
        }
    };
    let ack = AckOnce {
        acker: msg.delivery.acker.clone(),
        tag: msg.delivery.delivery_tag,
        acks,
        done: AtomicBool::new(false),
    };
    let worker = ctx.identity.worker.as_str();
    let outcome = match result {
        Ok(()) => {
            ack.ack().await;
            if let Some(event) = msg.event.get() {
                publish_event(ctx, event).await;
            }
            msg.outcome.get().copied().unwrap_or("done")
        }
        Err(HandlerError::Permanent { class, message }) => {
            tracing::warn!(worker, queue = %msg.queue, error_class = %class, error = %message, "Message failed permanently; dead-lettering it.");
            match dead_letter_copy(ctx, &msg, class, &message).await {
                Ok(table) => {
                    ack.ack().await;
                    // After the dead letter is confirmed and the delivery
                    // acked: the event can neither lose nor repeat it.
                    let origin = (
                        header_text(Some(&table), headers::ORIGINAL_EXCHANGE),
                        header_text(Some(&table), headers::ORIGINAL_ROUTING_KEY),
                    );
                    let event = msg.request_event(
                        ctx,
                        RequestEvent::DEAD_LETTERED,
                        class,
                        &message,
                        &names::dlq(&msg.queue),
                        origin,
                    );
                    publish_event(ctx, &event).await;
                    "dead_lettered"
                }
                Err(error) => {
                    tracing::error!(%error, "Could not dead-letter the message.");
                    settle_failed(&msg, &ack).await
                }
            }
        }
        Err(HandlerError::Transient {
            class,
            message,
            body,
        }) => {
            tracing::warn!(worker, queue = %msg.queue, error_class = %class, error = %message, "Message failed transiently; sending it to the retry delay queue.");
            match send_to_retry(ctx, &msg, class, &message, body).await {
                Ok(()) => {
                    ack.ack().await;
                    "retried"
                }
                Err(error) => {
                    tracing::error!(%error, "Could not schedule the retry.");
                    settle_failed(&msg, &ack).await
                }
            }
        }
    };
    telemetry::message_outcome(worker, &msg.queue, outcome, started.elapsed());
}

/// A body over `worker.max_body_bytes` is refused before anything decodes
/// it (`body_too_large`, permanent). `fleet publish` checks the same.
pub fn check_body_size(config: &Config, body: &[u8]) -> Result<(), HandlerError> {
    let max_body = config.worker.max_body_bytes;
    if body.len() > max_body {
        return Err(HandlerError::permanent(
            "body_too_large",
            format!(
                "the body has {} bytes; at most {max_body} are accepted (worker.max_body_bytes)",
                body.len()
            ),
        ));
    }
    Ok(())
}

/// The failure path itself could not publish. The first time, the message
/// goes back to the broker (after a pause) for another try; a message that
/// was already redelivered is rejected instead, and the queue's dead-letter
/// exchange takes it to `<queue>.dlq` (its `x-death` names the origin). So a
/// message whose copies the broker keeps refusing cannot hold a prefetch
/// slot forever, and nothing is lost.
async fn settle_failed(msg: &Incoming, ack: &AckOnce) -> &'static str {
    if msg.delivery.redelivered {
        tracing::error!(queue = %msg.queue, "Already redelivered once; rejecting it to the queue's dead-letter exchange.");
        ack.reject().await;
        "rejected"
    } else {
        tracing::warn!(queue = %msg.queue, "Returning the message to the broker for one more try.");
        // Give the broker or the failing dependency a moment first.
        tokio::time::sleep(Duration::from_millis(500)).await;
        ack.requeue().await;
        "returned"
    }
}

/// Whether `queue` is fed only by the fleet itself — the retry-ready queue
/// (the delay queue's expiries) and the partition queue (the job module's
/// task messages) — so that the fleet-only headers of its deliveries were
/// written by the fleet. Every other queue (lanes, source queues, anything
/// producers publish to) is not.
pub fn fleet_fed(queue: &str) -> bool {
    queue == names::RETRY_READY || queue == names::PARTITIONS
}

/// The AMQP user the fleet publishes as (see [`broker::amqp_user`]).
pub fn fleet_user(ctx: &Context) -> Option<String> {
    broker::amqp_user(&ctx.config.amqp.url)
}

/// Which of a delivery's fleet-only headers the runtime believes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Belief {
    /// `x-original-*` (and the diagnosis): only from a fleet-fed queue.
    origin: bool,
    /// `x-retry-attempts`, `x-first-failure-time`: from a fleet-fed queue,
    /// or on a message the broker vouches the fleet published.
    counters: bool,
}

fn belief(ctx: &Context, msg: &Incoming) -> Belief {
    if fleet_fed(&msg.queue) {
        return Belief {
            origin: true,
            counters: true,
        };
    }
    let props = &msg.delivery.properties;
    // Another worker type's own user (least privilege) is the fleet too.
    let other_worker = props.user_id().as_ref().is_some_and(|u| {
        crate::config::split_list(&ctx.config.amqp.fleet_users).contains(&u.as_str())
    });
    Belief {
        origin: false,
        counters: other_worker || counters_trusted(props, fleet_user(ctx).as_deref()),
    }
}

/// The headers of a failure copy (dead letter or retry): this failure's
/// diagnosis and origin, and for a retry its counters. The diagnosis the
/// message carried (`x-error-*`, `x-park-reason`, the broker's `x-death`)
/// and whatever fleet-only header is not believed move into `x-history`
/// first, so list, peek and filters only ever read this failure.
fn failure_headers(
    ctx: &Context,
    msg: &Incoming,
    class: &str,
    message: &str,
    retry: Option<Option<i64>>,
) -> FieldTable {
    let b = belief(ctx, msg);
    let received = msg.headers();
    let mut moved: Vec<&str> = headers::DIAGNOSIS.to_vec();
    moved.extend_from_slice(headers::BROKER_DEATH);
    if !b.origin {
        moved.extend_from_slice(headers::ORIGIN);
    }
    if !b.counters {
        moved.extend_from_slice(headers::COUNTERS);
    }
    let mut set: Vec<(&str, HeaderValue)> = vec![
        (headers::ERROR_CLASS, class.into()),
        (headers::ERROR_MESSAGE, truncate(message, 1000).into()),
        (headers::ERROR_WORKER, ctx.identity.label().into()),
        (headers::ERROR_TIME, chrono::Utc::now().to_rfc3339().into()),
        (headers::ORIGINAL_QUEUE, msg.queue.clone().into()),
    ];
    // Keep the first origin: a message that already went through the retry
    // path must go back to where it originally came from. From a queue
    // producers feed, the origin is always the delivery's own.
    if !(b.origin && header_text(received, headers::ORIGINAL_EXCHANGE).is_some()) {
        set.push((
            headers::ORIGINAL_EXCHANGE,
            msg.delivery.exchange.as_str().into(),
        ));
        set.push((
            headers::ORIGINAL_ROUTING_KEY,
            msg.delivery.routing_key.as_str().into(),
        ));
    }
    if let Some(invalidation_time) = retry {
        let now = now_millis();
        let counted = |key| b.counters.then(|| header_i64(received, key)).flatten();
        // A negative count is nonsense; count from zero.
        let attempts = counted(headers::ATTEMPTS)
            .unwrap_or(0)
            .max(0)
            .saturating_add(1);
        let first_failure = counted(headers::FIRST_FAILURE)
            .or(invalidation_time)
            .unwrap_or(now);
        set.push((headers::ATTEMPTS, attempts.into()));
        set.push((headers::FIRST_FAILURE, first_failure.into()));
    }
    supersede(received, &moved, &set)
}

/// The headers of a parked copy: the park reason joins the current
/// diagnosis (the `x-error-*` of the failure that was retried until now);
/// an earlier park reason and the broker's `x-death` move into `x-history`.
pub fn park_headers(msg: &Incoming, reason: &str) -> FieldTable {
    let mut moved = vec![headers::PARK_REASON];
    moved.extend_from_slice(headers::BROKER_DEATH);
    supersede(
        msg.headers(),
        &moved,
        &[(headers::PARK_REASON, reason.into())],
    )
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A copy of a message's properties with `headers`, persistent. Every other
/// property (content type and encoding, correlation id, reply-to, priority,
/// message id, timestamp, type, app id, cluster id) is kept, except two the
/// broker would act on: `expiration` (it would drop a dead letter, or cut
/// the retry delay short) and a `user_id` other than `publisher_user` (the
/// broker refuses a message whose `user_id` is not the publishing
/// connection's user).
pub fn copy_properties(
    p: &BasicProperties,
    headers: FieldTable,
    publisher_user: Option<&str>,
) -> BasicProperties {
    let mut out = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers);
    if let Some(v) = p.content_type() {
        out = out.with_content_type(v.clone());
    }
    if let Some(v) = p.content_encoding() {
        out = out.with_content_encoding(v.clone());
    }
    if let Some(v) = p.priority() {
        out = out.with_priority(*v);
    }
    if let Some(v) = p.correlation_id() {
        out = out.with_correlation_id(v.clone());
    }
    if let Some(v) = p.reply_to() {
        out = out.with_reply_to(v.clone());
    }
    if let Some(v) = p.message_id() {
        out = out.with_message_id(v.clone());
    }
    if let Some(v) = p.timestamp() {
        out = out.with_timestamp(*v);
    }
    if let Some(v) = p.kind() {
        out = out.with_type(v.clone());
    }
    if let Some(v) = p.user_id() {
        if publisher_user == Some(v.as_str()) {
            out = out.with_user_id(v.clone());
        }
    }
    if let Some(v) = p.app_id() {
        out = out.with_app_id(v.clone());
    }
    if let Some(v) = p.cluster_id() {
        out = out.with_cluster_id(v.clone());
    }
    out
}

/// Permanent failure: the body byte-for-byte to `<queue>.dlq`, with headers that say why.
pub async fn dead_letter(
    ctx: &Context,
    msg: &Incoming,
    class: &str,
    message: &str,
) -> Result<(), PublishError> {
    dead_letter_copy(ctx, msg, class, message).await.map(|_| ())
}

/// [`dead_letter`], returning the headers the confirmed copy carries.
async fn dead_letter_copy(
    ctx: &Context,
    msg: &Incoming,
    class: &str,
    message: &str,
) -> Result<FieldTable, PublishError> {
    let table = failure_headers(ctx, msg, class, message, None);
    let props = copy_properties(
        &msg.delivery.properties,
        table.clone(),
        fleet_user(ctx).as_deref(),
    );
    ctx.publisher
        .publish(Outgoing {
            exchange: names::DLX,
            routing_key: &msg.queue,
            body: msg.body(),
            properties: props,
            mandatory: true,
        })
        .await?;
    Ok(table)
}

/// Publishes a request event on `invalidation.events` (routing key = its
/// `event`), with a confirm. Called only after the message's own copy was
/// confirmed and its delivery acked, so the event can neither lose nor
/// duplicate the message; a failure is logged and counted, never fatal.
pub async fn publish_event(ctx: &Context, event: &RequestEvent) {
    let name: &'static str = if event.event == RequestEvent::PARKED {
        RequestEvent::PARKED
    } else {
        RequestEvent::DEAD_LETTERED
    };
    // `unwrap`: a struct of strings and numbers always serialises.
    let body = serde_json::to_vec(event).unwrap();
    let mut out = Outgoing::json(names::EVENTS, name, &body);
    out.properties = out
        .properties
        .with_timestamp(u64::try_from(event.time / 1000).unwrap_or(0));
    // `event_id` is bounded to a short string; never a panic here (outside
    // the handler's guard, after the ack) if that ever changed.
    if let Ok(id) = ShortString::try_new(event.event_id()) {
        out.properties = out.properties.with_message_id(id);
    }
    match ctx.publisher.publish(out).await {
        Ok(()) => telemetry::request_event(name, true),
        Err(error) => {
            telemetry::request_event(name, false);
            tracing::warn!(%error, event = name, request_id = %event.request_id, "Could not publish the request's event; the message itself is in its queue.");
        }
    }
}

/// Transient failure: to the retry delay queue with `invalidationTime` set if
/// absent and the attempt counter incremented. `x-window-start`, if any, is
/// kept: the retry handler's window counts from it.
pub async fn send_to_retry(
    ctx: &Context,
    msg: &Incoming,
    class: &str,
    message: &str,
    body: Option<Vec<u8>>,
) -> Result<(), PublishError> {
    let body = body.unwrap_or_else(|| msg.body().to_vec());
    let (body, invalidation_time) = stamp_invalidation_time(&body, now_millis());
    let table = failure_headers(ctx, msg, class, message, Some(invalidation_time));
    let props = copy_properties(&msg.delivery.properties, table, fleet_user(ctx).as_deref());
    ctx.publisher
        .publish(Outgoing {
            exchange: names::RETRY_EXCHANGE,
            routing_key: names::RETRY_DELAY_KEY,
            body: &body,
            properties: props,
            mandatory: true,
        })
        .await
}

/// Sets `invalidationTime` on a JSON object body when it is absent; returns
/// the body to send and the message's invalidation time, if it has one.
pub fn stamp_invalidation_time(body: &[u8], now: i64) -> (Vec<u8>, Option<i64>) {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(mut map)) => match map.get("invalidationTime") {
            Some(Value::Number(n)) => (body.to_vec(), n.as_i64()),
            // Something the producer wrote that is not a time: leave it
            // alone (the body is theirs); the first-failure header counts.
            Some(v) if !v.is_null() => (body.to_vec(), None),
            _ => {
                map.insert("invalidationTime".into(), Value::from(now));
                // `unwrap`: a map that was just parsed serialises again.
                (serde_json::to_vec(&Value::Object(map)).unwrap(), Some(now))
            }
        },
        // Not a JSON object: the first-failure header carries the time.
        _ => (body.to_vec(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_keep_every_property_the_broker_does_not_act_on() {
        let p = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("gzip".into())
            .with_priority(7)
            .with_correlation_id("c".into())
            .with_reply_to("r".into())
            .with_expiration("1000".into())
            .with_message_id("m".into())
            .with_timestamp(1)
            .with_type("t".into())
            .with_user_id("pricing".into())
            .with_app_id("a".into())
            .with_cluster_id("k".into())
            .with_delivery_mode(1);
        let h = broker::with_headers(None, &[("x-a", "b".into())]);
        let copy = copy_properties(&p, h.clone(), Some("fleet"));
        let expected = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("gzip".into())
            .with_priority(7)
            .with_correlation_id("c".into())
            .with_reply_to("r".into())
            .with_message_id("m".into())
            .with_timestamp(1)
            .with_type("t".into())
            .with_app_id("a".into())
            .with_cluster_id("k".into())
            .with_delivery_mode(2)
            .with_headers(h.clone());
        assert_eq!(copy, expected);
        // Our own user id stays: the broker accepts it.
        let ours = copy_properties(&p, h, Some("pricing"));
        assert_eq!(ours.user_id().as_ref().map(|u| u.as_str()), Some("pricing"));
    }

    #[test]
    fn only_the_queues_the_fleet_feeds_are_trusted() {
        assert!(fleet_fed(names::RETRY_READY));
        assert!(fleet_fed(names::PARTITIONS));
        for q in [
            names::FAST_LANE,
            names::BULK_LANE,
            "source.stock",
            names::RETRY_DELAY,
            "anything",
        ] {
            assert!(!fleet_fed(q), "{q}");
        }
    }

    #[test]
    fn invalidation_time_is_set_once() {
        let (b, t) = stamp_invalidation_time(br#"{"a":1}"#, 42);
        assert_eq!(t, Some(42));
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["invalidationTime"], 42);
        assert_eq!(v["a"], 1);
        let (b2, t2) = stamp_invalidation_time(&b, 99);
        assert_eq!((b2, t2), (b, Some(42)));
        let (b3, t3) = stamp_invalidation_time(b"not json", 7);
        assert_eq!((b3.as_slice(), t3), (b"not json".as_slice(), None));
    }
}
