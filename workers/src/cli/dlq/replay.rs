//! `fleet dlq replay <queue>`: moves messages back to where they came from
//! (or `--to` elsewhere), each confirmed by the broker before it leaves the
//! queue.
//!
//! Two halves. [`Replayer`] moves messages, one at a time, and says what
//! happened to each ([`Outcome`]); it prints nothing. [`run`] shows the
//! outcomes (progress bar, per-message lines, summary) and records the run in
//! PostgreSQL — from its start, with its counts as it goes, so a run that
//! dies shows as `running` — ; it moves nothing.
//!
//! Where a message goes by default is where its current diagnosis says it
//! came from (`common::current`): the fleet's `x-original-*`, or for a
//! message the broker dead-lettered itself the `x-death` entry of the queue
//! it left. A destination the topology routes straight back into the queue
//! being replayed (an unroutable key caught again by the alternate
//! exchange) is refused per message, with the routing key to use instead.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use chrono::Utc;
use clap::Args;
use fleet_shared::broker::{
    self, header_i64, headers, with_headers, HeaderValue, Identity, Outgoing, Publisher,
};
use fleet_shared::config::Config;
use fleet_shared::db::{self, ParkedOutcome, Replay, ReplayState};
use fleet_shared::lapin::options::{BasicAckOptions, BasicGetOptions};
use fleet_shared::lapin::types::{AMQPValue, FieldTable, ShortString};
use fleet_shared::lapin::Channel;
use fleet_shared::message::{now_millis, InvalidationType};
use fleet_shared::runtime::copy_properties;
use fleet_shared::topology::{names, Topology};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::common::{
    body_preview, connect, current, exchange_exists, operator, parse_filters, queue_info, Current,
    Filter, Seen,
};
use super::peek::return_all;

/// Publish failures in a row after which `replay` stops (the target or the broker is broken).
const MAX_CONSECUTIVE_FAILURES: u32 = 5;

/// `fleet dlq replay` options.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The queue to replay, e.g. invalidation.requests.fast.dlq.
    pub queue: String,
    /// Send to EXCHANGE (with ROUTING_KEY, else each message's original
    /// routing key) instead of each message's origin. `--to :QUEUE` uses
    /// the default exchange: straight into QUEUE.
    #[arg(long, value_name = "EXCHANGE[:ROUTING_KEY]")]
    pub to: Option<String>,
    /// Only messages matching KEY=VALUE (repeatable; all must match):
    /// `type=PRICE` (the body's invalidationType), `class=malformed_json`
    /// (the error class, or the broker's reason), `reason=TEXT` (in the
    /// error message or park reason), `request-id=ID` (exact),
    /// `routing-key=price` (the origin's routing key), or a header name
    /// starting with `x-`, e.g. `x-original-queue=invalidation.partitions`.
    /// Values other than request ids match regardless of case; an unknown
    /// key is an error.
    #[arg(long = "filter", value_name = "KEY=VALUE")]
    pub filters: Vec<String>,
    /// Move at most this many messages.
    #[arg(long)]
    pub limit: Option<u64>,
    /// Show exactly what would move; change nothing (the run is still recorded).
    #[arg(long)]
    pub dry_run: bool,
    /// Give each message a whole new retry window and a fresh count: drops
    /// the retry counters (x-retry-attempts, x-first-failure-time) and
    /// stamps x-window-start = now, from which the window counts (and which
    /// the tasks of a split request inherit). The body is never changed.
    #[arg(long)]
    pub reset_retries: bool,
    /// Print counts per outcome, class and destination instead of one line
    /// per message (the default above 20 messages).
    #[arg(long, conflicts_with = "verbose")]
    pub summary: bool,
    /// Print one line per message, however many there are.
    #[arg(long)]
    pub verbose: bool,
    /// Who runs this, for the record (default: $SUDO_USER, $USER, the login name).
    #[arg(long, env = "FLEET_OPERATOR", value_name = "NAME")]
    pub operator: Option<String>,
}

/// Above this many messages a replay prints a summary rather than one line
/// per message (unless `--verbose`).
const SUMMARY_OVER: u64 = 20;

// ------------------------------------------------------------------ display

/// Runs a replay: checks everything up front, drives the [`Replayer`],
/// shows each outcome, records the run, prints the summary.
pub(super) async fn run(
    config: &Config,
    topo: &Topology,
    args: ReplayArgs,
) -> anyhow::Result<ExitCode> {
    let started_at = Utc::now();
    let rules = Rules::parse(&args)?;
    let queue = args.queue.as_str();
    // Everything that can fail up front fails before a message moves.
    let pool = db::connect(&config.database.url, 2).await?;
    let identity = Identity::new("cli");
    let conn = connect(config).await?;
    let info = queue_info(&conn, config, topo, queue).await?;
    if let Target::To { exchange, .. } = &rules.target {
        if !exchange_exists(&conn, exchange).await? {
            bail!(
                "exchange {exchange:?} (from --to) does not exist in vhost {:?}; nothing was moved. \
                 `fleet topology apply` declares the fleet's exchanges; `--to :QUEUE` sends \
                 straight to a queue.",
                fleet_shared::mgmt::vhost_of(&config.amqp.url)
            );
        }
    }
    if info.consumers > 0 {
        eprintln!(
            "note: {queue} has {} consumer(s); they may take messages during the replay.",
            info.consumers
        );
    }
    let publisher = if args.dry_run {
        None
    } else {
        Some(Publisher::connect(&config.amqp.url, &identity, config.amqp.confirm_timeout).await?)
    };
    let ch = conn.create_channel().await.context("open a channel")?;
    let stop = CancellationToken::new();
    crate::app::cancel_on_signals(stop.clone());

    // Only the messages present at the start: kept ones are not re-read, and
    // messages arriving meanwhile wait for the next replay.
    let depth = u64::from(info.messages);
    let count = |n: u64| i32::try_from(n).unwrap_or(i32::MAX);
    // On record before anything moves: a run that dies stays `running`.
    let record = Replay {
        queue: queue.to_string(),
        target: rules.target.describe(),
        filter: (!args.filters.is_empty()).then(|| args.filters.join(" ")),
        operator: operator(args.operator.as_deref()),
        host: identity.host.clone(),
        dry_run: args.dry_run,
        moved: 0,
        kept: count(depth),
        started_at,
    };
    let id = db::start_replay(&pool, &record)
        .await
        .context("cannot put the replay on record in PostgreSQL; nothing was moved")?;
    let user = broker::amqp_user(&config.amqp.url);
    let mut replayer = Replayer::new(
        ch,
        queue,
        rules,
        topo.clone(),
        publisher,
        user,
        depth,
        stop.clone(),
    );
    let per_message = args.verbose || (!args.summary && depth <= SUMMARY_OVER);
    let view = View::new(depth, args.dry_run, per_message);
    let mut tally = Tally::default();
    let mut progress = Progress::new(id);
    let parked_queue = queue == names::PARKED;
    let mut mark_warned = false;
    let stopped = loop {
        match replayer.next().await {
            Ok(Some(outcome)) => {
                if parked_queue && !args.dry_run && matches!(outcome, Outcome::Moved { .. }) {
                    // The parking record says what became of the message.
                    let marked =
                        db::mark_parked(&pool, replayer.last_body(), ParkedOutcome::Replayed(id))
                            .await;
                    if let Err(e) = marked {
                        if !mark_warned {
                            mark_warned = true;
                            view.say(&format!("warning: cannot mark parked_messages rows as replayed ({e}); the replay goes on"));
                        }
                    }
                }
                tally.add(&outcome);
                tally.group(&outcome, replayer.last_class(), args.dry_run);
                view.show(&outcome, &tally);
                progress
                    .note(
                        &pool,
                        &view,
                        count(tally.moved),
                        count(depth.saturating_sub(tally.moved)),
                    )
                    .await;
            }
            Ok(None) => break None,
            Err(stopped) => break Some(stopped),
        }
    };
    view.finish();
    // Everything not moved goes back to its original position, all at once.
    let returned = replayer.finish().await;
    let _ = conn.close(200, "replay done".into()).await;
    if let Err(e) = returned {
        // Not fatal for the messages: the broker returns unacked ones when the channel closes.
        eprintln!("warning: could not return the kept messages explicitly ({e}); the broker returns them as the channel closes.");
    }

    let kept = depth.saturating_sub(tally.moved);
    let state = match &stopped {
        None => ReplayState::Finished,
        Some(_) if stop.is_cancelled() => ReplayState::Interrupted,
        Some(_) => ReplayState::Failed,
    };
    db::finish_replay(&pool, id, count(tally.moved), count(kept), state)
        .await
        .with_context(|| {
            format!("the replay ran but its end could not be recorded (replay record #{id})")
        })?;

    if !per_message && !tally.groups.is_empty() {
        println!("By outcome, class and destination:");
        for line in tally.group_lines() {
            println!("  {line}");
        }
    }
    println!("{}", tally.summary(queue, depth, args.dry_run, id));
    for (e, n) in &tally.errors {
        println!("  {n} × {e}");
    }
    if let Some(e) = stopped {
        eprintln!("error: replay stopped early: {e}. Nothing was lost: what did not move is still in {queue}.");
        return Ok(ExitCode::from(if stop.is_cancelled() { 130 } else { 1 }));
    }
    if tally.failed > 0 {
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Keeps the run's record up to date as it goes: after a move, once
/// [`Progress::EVERY`] passed or [`Progress::EVERY_MOVED`] more messages
/// moved since the last update, so the database is not asked once per
/// message. A failed update is reported once and does not stop the replay
/// (the messages matter more than the record).
struct Progress {
    id: i64,
    last: Instant,
    last_moved: i32,
    warned: bool,
}

impl Progress {
    const EVERY: Duration = Duration::from_millis(500);
    const EVERY_MOVED: i32 = 100;

    fn new(id: i64) -> Self {
        Self {
            id,
            last: Instant::now(),
            last_moved: 0,
            warned: false,
        }
    }

    async fn note(&mut self, pool: &sqlx::PgPool, view: &View, moved: i32, kept: i32) {
        if moved == self.last_moved
            || (self.last.elapsed() < Self::EVERY && moved - self.last_moved < Self::EVERY_MOVED)
        {
            return;
        }
        self.last = Instant::now();
        self.last_moved = moved;
        if let Err(e) = db::replay_progress(pool, self.id, moved, kept).await {
            if !self.warned {
                self.warned = true;
                view.say(&format!(
                    "warning: cannot update replay record #{} ({e}); the replay goes on",
                    self.id
                ));
            }
        }
    }
}

/// How outcomes are shown: a progress bar on a terminal (with only the
/// lines that need attention above it), else one line per message.
struct View {
    bar: Option<ProgressBar>,
    dry_run: bool,
    /// One line per message (else only the grouped summary at the end).
    per_message: bool,
}

impl View {
    fn new(depth: u64, dry_run: bool, per_message: bool) -> Self {
        let bar = std::io::stdout().is_terminal().then(|| {
            let pb = ProgressBar::new(depth);
            if let Ok(style) =
                ProgressStyle::with_template("{spinner} {bar:40} {pos}/{len} examined {msg}")
            {
                pb.set_style(style);
            }
            pb
        });
        Self {
            bar,
            dry_run,
            per_message,
        }
    }

    fn show(&self, outcome: &Outcome, tally: &Tally) {
        let shown = self
            .per_message
            .then(|| line(outcome, self.dry_run, self.bar.is_some()))
            .flatten();
        if let Some(line) = shown {
            match &self.bar {
                Some(pb) => pb.println(line),
                None => println!("{line}"),
            }
        }
        if let Some(pb) = &self.bar {
            pb.inc(1);
            pb.set_message(format!("{} {}", verb(self.dry_run), tally.moved));
        }
    }

    fn finish(&self) {
        if let Some(pb) = &self.bar {
            pb.finish_and_clear();
        }
    }

    /// A line on stderr that does not tear the bar.
    fn say(&self, line: &str) {
        match &self.bar {
            Some(pb) => pb.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }
}

fn verb(dry_run: bool) -> &'static str {
    if dry_run {
        "would move"
    } else {
        "moved"
    }
}

/// The line shown for one outcome, if any. Under a progress bar a real move
/// is only counted (the bar says it); what would move, and what was kept for
/// a reason the operator can act on, is always shown.
fn line(outcome: &Outcome, dry_run: bool, under_bar: bool) -> Option<String> {
    match outcome {
        Outcome::Moved {
            position,
            exchange,
            routing_key,
            class,
            preview,
        } => (dry_run || !under_bar).then(|| {
            format!(
                "{} #{position} → {exchange:?} / {routing_key:?} [{class}] {preview}",
                verb(dry_run)
            )
        }),
        Outcome::NotMatching { .. } => None,
        Outcome::NoOrigin { position, preview } => Some(format!(
            "kept #{position}: no {} header; use --to EXCHANGE[:ROUTING_KEY] [{preview}]",
            headers::ORIGINAL_EXCHANGE
        )),
        Outcome::RoutesBack {
            position,
            exchange,
            routing_key,
            queue,
            hint,
            preview,
        } => Some(format!(
            "kept #{position}: exchange {exchange:?} routes routing key {routing_key:?} straight \
             back into {queue}; {hint} [{preview}]"
        )),
        Outcome::OriginRefused {
            position,
            exchange,
            routing_key,
            why,
            preview,
        } => Some(format!(
            "kept #{position}: not replayed to its recorded origin {exchange:?} / {routing_key:?}: \
             {why}; use --to EXCHANGE[:KEY] to send it somewhere on purpose [{preview}]"
        )),
        Outcome::Failed { position, error } => Some(format!("kept #{position}: {error}")),
    }
}

/// What happened to the messages of one replay.
#[derive(Debug, Default)]
struct Tally {
    examined: u64,
    moved: u64,
    not_matching: u64,
    no_origin: u64,
    routes_back: u64,
    origin_refused: u64,
    failed: u64,
    /// Publish errors by text, for the summary.
    errors: BTreeMap<String, u64>,
    /// Summary mode: what happened, by outcome, class and destination →
    /// (count, position of the first).
    groups: BTreeMap<String, (u64, u64)>,
}

impl Tally {
    fn add(&mut self, outcome: &Outcome) {
        self.examined += 1;
        match outcome {
            Outcome::Moved { .. } => self.moved += 1,
            Outcome::NotMatching { .. } => self.not_matching += 1,
            Outcome::NoOrigin { .. } => self.no_origin += 1,
            Outcome::RoutesBack { .. } => self.routes_back += 1,
            Outcome::OriginRefused { .. } => self.origin_refused += 1,
            Outcome::Failed { error, .. } => {
                self.failed += 1;
                *self.errors.entry(error.clone()).or_default() += 1;
            }
        }
    }

    /// Counts `outcome` (of a message whose current class is `class`) in its group.
    fn group(&mut self, outcome: &Outcome, class: &str, dry_run: bool) {
        let class = if class.is_empty() {
            "no class".to_string()
        } else {
            class.to_string()
        };
        let (position, text) = match outcome {
            Outcome::Moved {
                position,
                exchange,
                routing_key,
                ..
            } => (
                *position,
                format!(
                    "{} → {exchange:?} / {routing_key:?} [{class}]",
                    verb(dry_run)
                ),
            ),
            Outcome::NotMatching { position } => (
                *position,
                format!("kept: not matching the filter [{class}]"),
            ),
            Outcome::NoOrigin { position, .. } => (
                *position,
                format!(
                    "kept: no {} header; use --to EXCHANGE[:ROUTING_KEY] [{class}]",
                    headers::ORIGINAL_EXCHANGE
                ),
            ),
            Outcome::RoutesBack {
                position,
                exchange,
                routing_key,
                queue,
                hint,
                ..
            } => (
                *position,
                format!(
                    "kept: exchange {exchange:?} routes routing key {routing_key:?} straight back \
                     into {queue}; {hint} [{class}]"
                ),
            ),
            Outcome::OriginRefused {
                position,
                exchange,
                routing_key,
                why,
                ..
            } => (
                *position,
                format!(
                    "kept: not replayed to its recorded origin {exchange:?} / {routing_key:?}: \
                     {why} [{class}]"
                ),
            ),
            Outcome::Failed { position, error } => (*position, format!("kept: {error} [{class}]")),
        };
        let entry = self.groups.entry(text).or_insert((0, position));
        entry.0 += 1;
    }

    /// `"   10 × moved → … [class]"`, in the order each group first appeared.
    fn group_lines(&self) -> Vec<String> {
        let mut groups: Vec<(&String, &(u64, u64))> = self.groups.iter().collect();
        groups.sort_by_key(|(_, (_, first))| *first);
        groups
            .into_iter()
            .map(|(text, (n, _))| format!("{n:>6} × {text}"))
            .collect()
    }

    /// The one-line summary; `depth` is what the queue held at the start.
    fn summary(&self, queue: &str, depth: u64, dry_run: bool, record_id: i64) -> String {
        let kept = depth.saturating_sub(self.moved);
        let unexamined = depth.saturating_sub(self.examined);
        let (keep_verb, dry) = if dry_run {
            ("would keep", " (dry run: nothing changed)")
        } else {
            ("kept", "")
        };
        format!(
            "{queue}: {} {}, {keep_verb} {kept} ({} not matching the filter, {} without origin, \
             {} with a refused origin, {} routed back here, {} failed, {unexamined} not examined){dry}; \
             replay record #{record_id}.",
            verb(dry_run),
            self.moved,
            self.not_matching,
            self.no_origin,
            self.origin_refused,
            self.routes_back,
            self.failed
        )
    }
}

// ------------------------------------------------------------------ moving

/// What happened to one examined message.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Outcome {
    /// Published to its destination and confirmed, then acked (in a dry
    /// run: would have been).
    Moved {
        /// 1-based position among the messages examined.
        position: u64,
        exchange: String,
        routing_key: String,
        /// x-error-class, empty when absent.
        class: String,
        preview: String,
    },
    /// Kept: does not match the filters.
    NotMatching { position: u64 },
    /// Kept: no origin header and no `--to`.
    NoOrigin { position: u64, preview: String },
    /// Kept: the destination routes it straight back into the queue being
    /// replayed (typically: no binding matches the routing key, and the
    /// exchange's alternate exchange feeds this queue).
    RoutesBack {
        position: u64,
        exchange: String,
        routing_key: String,
        queue: String,
        /// What to do instead, e.g. `use --filter type=PRICE --to invalidation.requests:price`.
        hint: String,
        preview: String,
    },
    /// Kept: its recorded origin is neither the queue it was dead-lettered
    /// from nor one of the fleet's input queues (see [`origin_allowed`]).
    OriginRefused {
        position: u64,
        exchange: String,
        routing_key: String,
        why: String,
        preview: String,
    },
    /// Kept: the publish failed.
    Failed { position: u64, error: String },
}

/// Why a replay ended before it examined everything. Nothing is lost
/// either way: what did not move is still in the queue.
#[derive(Debug, thiserror::Error)]
pub(super) enum Stopped {
    #[error("interrupted")]
    Interrupted,
    #[error("cannot read from {queue}: {source}")]
    Read {
        queue: String,
        source: fleet_shared::lapin::Error,
    },
    #[error(
        "message #{position} was delivered to {exchange:?} but could not be acked; it stays in \
         {queue} too (a duplicate): {source}"
    )]
    Ack {
        position: u64,
        exchange: String,
        queue: String,
        source: fleet_shared::lapin::Error,
    },
    #[error("{count} publishes in a row failed; stopped (last: {last})")]
    Failing { count: u32, last: String },
}

/// What to move and where: the parsed options.
pub(super) struct Rules {
    filters: Vec<Filter>,
    target: Target,
    /// Move at most this many.
    limit: u64,
    reset_retries: bool,
}

impl Rules {
    fn parse(args: &ReplayArgs) -> anyhow::Result<Self> {
        Ok(Self {
            filters: parse_filters(&args.filters)?,
            target: Target::parse(args.to.as_deref()),
            limit: args.limit.unwrap_or(u64::MAX),
            reset_retries: args.reset_retries,
        })
    }
}

/// Moves the messages of one queue, one at a time, in order: each is
/// published with a confirm and only then acked; every message it does not
/// move stays unacked on its channel until [`finish`](Self::finish)
/// returns them all at once, at their original positions.
pub(super) struct Replayer {
    ch: Channel,
    queue: String,
    rules: Rules,
    /// Where messages came from (dead-letter sources) and where a
    /// destination routes (loops back into `queue`).
    topo: Topology,
    /// `None` in a dry run: nothing is published or acked.
    publisher: Option<Publisher>,
    /// The AMQP user the replay publishes as: a copy keeps a message's
    /// `user_id` only when it is this one (the broker refuses others).
    user: Option<String>,
    /// Messages in the queue at the start: only that many are examined.
    depth: u64,
    stop: CancellationToken,
    examined: u64,
    moved: u64,
    consecutive_failures: u32,
    /// The newest delivery kept unacked; one nack up to it returns them all.
    last_held: Option<u64>,
    /// Why the run ends, once the outcome that ended it has been yielded.
    stopping: Option<Stopped>,
    /// Nothing more to examine.
    done: bool,
    /// The current error class of the message last examined.
    last_class: String,
    /// The body of the message last moved (to mark its parking record).
    last_body: Vec<u8>,
}

impl Replayer {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        ch: Channel,
        queue: &str,
        rules: Rules,
        topo: Topology,
        publisher: Option<Publisher>,
        user: Option<String>,
        depth: u64,
        stop: CancellationToken,
    ) -> Self {
        Self {
            ch,
            queue: queue.to_string(),
            rules,
            topo,
            publisher,
            user,
            depth,
            stop,
            examined: 0,
            moved: 0,
            consecutive_failures: 0,
            last_held: None,
            stopping: None,
            done: false,
            last_class: String::new(),
            last_body: Vec::new(),
        }
    }

    /// The body of the message last moved.
    pub(super) fn last_body(&self) -> &[u8] {
        &self.last_body
    }

    /// The current error class of the message [`next`](Self::next) last
    /// examined (empty when it has none), for the summary's groups.
    pub(super) fn last_class(&self) -> &str {
        &self.last_class
    }

    /// Examines the next message: `Ok(None)` when the replay is complete
    /// (every message present at the start examined, `--limit` reached or
    /// the queue empty), `Err` when it must stop early.
    pub(super) async fn next(&mut self) -> Result<Option<Outcome>, Stopped> {
        if let Some(stopped) = self.stopping.take() {
            self.done = true;
            return Err(stopped);
        }
        if self.done || self.examined >= self.depth || self.moved >= self.rules.limit {
            self.done = true;
            return Ok(None);
        }
        if self.stop.is_cancelled() {
            self.done = true;
            return Err(Stopped::Interrupted);
        }
        let got = self
            .ch
            .basic_get(
                self.queue.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await;
        let d = match got {
            Ok(Some(m)) => m.delivery,
            Ok(None) => {
                self.done = true;
                return Ok(None);
            }
            Err(source) => {
                self.done = true;
                return Err(Stopped::Read {
                    queue: self.queue.clone(),
                    source,
                });
            }
        };
        self.examined += 1;
        let position = self.examined;
        let tag = d.delivery_tag;
        let hdrs = d.properties.headers().as_ref();
        let seen = Seen {
            headers: hdrs,
            exchange: d.exchange.as_str(),
            routing_key: d.routing_key.as_str(),
            timestamp: *d.properties.timestamp(),
        };
        let now = current(&self.topo, &self.queue, &seen);
        self.last_class = now.class.clone().unwrap_or_default();
        if !self
            .rules
            .filters
            .iter()
            .all(|f| f.matches(&now, &seen, &d.data))
        {
            self.last_held = Some(tag);
            return Ok(Some(Outcome::NotMatching { position }));
        }
        let Some((exchange, routing_key)) =
            self.rules.target.destination(&now, d.routing_key.as_str())
        else {
            self.last_held = Some(tag);
            return Ok(Some(Outcome::NoOrigin {
                position,
                preview: body_preview(&d.data),
            }));
        };
        if self
            .topo
            .route(&exchange, &routing_key)
            .is_some_and(|queues| queues.contains(&self.queue))
        {
            self.last_held = Some(tag);
            return Ok(Some(Outcome::RoutesBack {
                position,
                hint: route_hint(&self.topo, &self.queue, &exchange, &d.data),
                exchange,
                routing_key,
                queue: self.queue.clone(),
                preview: body_preview(&d.data),
            }));
        }
        if self.rules.target == Target::Origin {
            if let Err(why) = origin_allowed(&self.topo, &self.queue, &exchange, &routing_key) {
                self.last_held = Some(tag);
                return Ok(Some(Outcome::OriginRefused {
                    position,
                    exchange,
                    routing_key,
                    why,
                    preview: body_preview(&d.data),
                }));
            }
        }
        let moved = |exchange: String, routing_key: String| Outcome::Moved {
            position,
            exchange,
            routing_key,
            class: now.class.clone().unwrap_or_default(),
            preview: body_preview(&d.data),
        };
        let Some(publisher) = &self.publisher else {
            // Dry run: counted as it would go, and kept.
            self.moved += 1;
            self.last_held = Some(tag);
            return Ok(Some(moved(exchange, routing_key)));
        };
        let published = publisher
            .publish(Outgoing {
                exchange: &exchange,
                routing_key: &routing_key,
                body: &d.data,
                properties: copy_properties(
                    &d.properties,
                    replay_headers(hdrs, self.rules.reset_retries, now_millis()),
                    self.user.as_deref(),
                ),
                mandatory: true,
            })
            .await;
        match published {
            Ok(()) => {
                self.moved += 1;
                self.last_body = d.data.clone();
                // Confirmed: only now may it leave the queue.
                match self.ch.basic_ack(tag, BasicAckOptions::default()).await {
                    Ok(()) => self.consecutive_failures = 0,
                    Err(source) => {
                        self.stopping = Some(Stopped::Ack {
                            position,
                            exchange: exchange.clone(),
                            queue: self.queue.clone(),
                            source,
                        });
                    }
                }
                Ok(Some(moved(exchange, routing_key)))
            }
            Err(e) => {
                self.consecutive_failures += 1;
                self.last_held = Some(tag);
                if self.consecutive_failures >= MAX_CONSECUTIVE_FAILURES {
                    self.stopping = Some(Stopped::Failing {
                        count: self.consecutive_failures,
                        last: e.to_string(),
                    });
                }
                Ok(Some(Outcome::Failed {
                    position,
                    error: e.to_string(),
                }))
            }
        }
    }

    /// Returns every message not moved to its original position (one nack)
    /// and closes the channel.
    pub(super) async fn finish(self) -> Result<(), fleet_shared::lapin::Error> {
        let returned = return_all(&self.ch, self.last_held).await;
        let _ = self.ch.close(200, "replay done".into()).await;
        returned
    }
}

/// Whether a message's recorded origin may be its destination by default
/// (without `--to`): back into the queue it was dead-lettered from, or else
/// only to the fleet's own input queues, as the retry handler would
/// (`Topology::allows_return`). A recorded origin is data from a message:
/// one the retry handler refused (`forbidden_destination`) must not go
/// there with an operator's permissions just because nobody typed `--to`.
fn origin_allowed(
    topo: &Topology,
    queue: &str,
    exchange: &str,
    routing_key: &str,
) -> Result<(), String> {
    let Some(reached) = topo.route(exchange, routing_key) else {
        // Not in the topology: the broker decides (unroutable fails the publish).
        return Ok(());
    };
    let source = topo.queue(queue).and_then(|q| q.dead_letters_of.as_deref());
    if source.is_some_and(|src| reached.contains(src)) {
        return Ok(());
    }
    topo.allows_return(exchange, routing_key)
}

/// What to do instead of a replay that routes straight back: the routing
/// key of the body's `invalidationType` when the exchange routes it
/// elsewhere, else the general form.
fn route_hint(topo: &Topology, queue: &str, exchange: &str, body: &[u8]) -> String {
    let ty = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["invalidationType"].as_str().map(str::to_string))
        .and_then(|t| InvalidationType::from_str(&t).ok());
    if let Some(ty) = ty {
        let key = ty.snake();
        if topo
            .route(exchange, &key)
            .is_some_and(|qs| !qs.is_empty() && !qs.contains(queue))
        {
            return format!("use --filter type={ty} --to {exchange}:{key}");
        }
    }
    format!("use --to {exchange}:KEY with a routing key one of its bindings matches, or --to EXCHANGE[:KEY]")
}

/// Where messages go.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// Each message's x-original-exchange / x-original-routing-key.
    Origin,
    /// `--to EXCHANGE[:ROUTING_KEY]`.
    To {
        exchange: String,
        routing_key: Option<String>,
    },
}

impl Target {
    fn parse(to: Option<&str>) -> Target {
        match to {
            None => Target::Origin,
            Some(s) => match s.split_once(':') {
                Some((e, k)) => Target::To {
                    exchange: e.into(),
                    routing_key: Some(k.into()),
                },
                None => Target::To {
                    exchange: s.into(),
                    routing_key: None,
                },
            },
        }
    }

    fn describe(&self) -> String {
        match self {
            Target::Origin => "origin".into(),
            Target::To {
                exchange,
                routing_key: Some(k),
            } => format!("{exchange}:{k}"),
            Target::To {
                exchange,
                routing_key: None,
            } => exchange.clone(),
        }
    }

    /// The exchange and routing key of one message (whose current diagnosis
    /// is `now`, delivered with `delivered_key`); `None` when it has no origin.
    fn destination(&self, now: &Current, delivered_key: &str) -> Option<(String, String)> {
        match self {
            Target::To {
                exchange,
                routing_key,
            } => Some((
                exchange.clone(),
                routing_key
                    .clone()
                    .or_else(|| now.origin.as_ref().map(|(_, k)| k.clone()))
                    .unwrap_or_else(|| delivered_key.to_string()),
            )),
            Target::Origin => now.origin.clone(),
        }
    }
}

/// The headers of a replayed message: replay stamped; with a reset, the
/// counters dropped and a new window started at `now` (`x-window-start`).
fn replay_headers(original: Option<&FieldTable>, reset_retries: bool, now: i64) -> FieldTable {
    let count = header_i64(original, headers::REPLAY_COUNT)
        .unwrap_or(0)
        .max(0)
        .saturating_add(1);
    let mut base: BTreeMap<ShortString, AMQPValue> =
        original.map(|t| t.inner().clone()).unwrap_or_default();
    let mut set = vec![
        (headers::REPLAYED_AT, Utc::now().to_rfc3339().into()),
        (headers::REPLAY_COUNT, HeaderValue::Int(count)),
    ];
    if reset_retries {
        for h in headers::COUNTERS {
            base.remove(*h);
        }
        set.push((headers::WINDOW_START, HeaderValue::Int(now)));
    }
    with_headers(Some(&FieldTable::from(base)), &set)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_shared::broker::header_text;
    use fleet_shared::config::Config;

    /// What `current` reads of `h` for a message in the fast lane's dlq.
    fn now_of(h: Option<&FieldTable>) -> Current {
        let topo = Topology::load(&Config::default()).unwrap();
        current(
            &topo,
            &names::dlq(names::FAST_LANE),
            &Seen {
                headers: h,
                exchange: names::DLX,
                routing_key: names::FAST_LANE,
                timestamp: None,
            },
        )
    }

    #[test]
    fn filters_parse_and_match() {
        let mut h = FieldTable::default();
        h.insert(
            headers::ERROR_CLASS.into(),
            AMQPValue::LongString("malformed_json".into()),
        );
        h.insert(
            headers::ERROR_MESSAGE.into(),
            AMQPValue::LongString("EOF while parsing".into()),
        );
        let body = br#"{"invalidationType":"PRICE"}"#;
        let now = now_of(Some(&h));
        let seen = Seen {
            headers: Some(&h),
            exchange: names::DLX,
            routing_key: names::FAST_LANE,
            timestamp: None,
        };
        let m = |f: &str| Filter::parse(f).unwrap().matches(&now, &seen, body);
        assert!(m("type=price"));
        assert!(!m("type=STOCK"));
        assert!(m("class=malformed_json"));
        assert!(
            m("class=MALFORMED_JSON"),
            "classes match regardless of case"
        );
        assert!(!m("class=malformed"));
        assert!(m("reason=eof"));
        assert!(m("x-error-class=malformed_json"));
        assert!(!m("x-original-exchange=x"));
        assert!(!m("request-id=r1"));
        assert!(Filter::parse("nokey").is_err());
        let typo = Filter::parse("typ=PRICE").unwrap_err().to_string();
        assert!(
            typo.starts_with(
                "unknown filter key `typ`; did you mean `type`? valid keys: type, class"
            ),
            "{typo}"
        );
        let with_id = br#"{"requestId":"R-1","invalidationType":"PRICE"}"#;
        assert!(Filter::parse("request-id=R-1")
            .unwrap()
            .matches(&now, &seen, with_id));
        assert!(!Filter::parse("request-id=r-1")
            .unwrap()
            .matches(&now, &seen, with_id));
    }

    #[test]
    fn targets_and_replay_headers() {
        let mut h = FieldTable::default();
        h.insert(
            headers::ORIGINAL_EXCHANGE.into(),
            AMQPValue::LongString("invalidation.requests".into()),
        );
        h.insert(
            headers::ORIGINAL_ROUTING_KEY.into(),
            AMQPValue::LongString("price".into()),
        );
        h.insert(headers::ATTEMPTS.into(), AMQPValue::LongLongInt(3));
        h.insert(headers::REPLAY_COUNT.into(), AMQPValue::LongLongInt(1));
        let d = names::FAST_LANE;
        let now = now_of(Some(&h));
        assert_eq!(
            Target::parse(None).destination(&now, d),
            Some(("invalidation.requests".into(), "price".into()))
        );
        assert_eq!(Target::parse(None).destination(&now_of(None), d), None);
        assert_eq!(
            Target::parse(Some("x:y")).destination(&now, d),
            Some(("x".into(), "y".into()))
        );
        assert_eq!(
            Target::parse(Some("x")).destination(&now, d),
            Some(("x".into(), "price".into()))
        );
        let kept = replay_headers(Some(&h), false, 42);
        assert_eq!(header_i64(Some(&kept), headers::ATTEMPTS), Some(3));
        assert_eq!(header_i64(Some(&kept), headers::REPLAY_COUNT), Some(2));
        assert!(header_text(Some(&kept), headers::REPLAYED_AT).is_some());
        assert_eq!(header_i64(Some(&kept), headers::WINDOW_START), None);
        let reset = replay_headers(Some(&h), true, 42);
        assert_eq!(header_i64(Some(&reset), headers::ATTEMPTS), None);
        assert_eq!(
            header_i64(Some(&reset), headers::WINDOW_START),
            Some(42),
            "a reset starts a new window"
        );
        assert_eq!(
            header_text(Some(&reset), headers::ORIGINAL_EXCHANGE).as_deref(),
            Some("invalidation.requests")
        );
    }

    #[test]
    fn a_recorded_origin_is_only_a_default_where_the_message_may_go() {
        let topo = Topology::load(&Config::default()).unwrap();
        let fast_dlq = names::dlq(names::FAST_LANE);
        let out_dlq = names::dlq("productcontent_price_tr_tr");
        let ready_dlq = names::dlq(names::RETRY_READY);
        // Back where it was dead-lettered from, or to a fleet input queue.
        assert_eq!(
            origin_allowed(&topo, &fast_dlq, names::REQUESTS, "price"),
            Ok(())
        );
        assert_eq!(
            origin_allowed(&topo, &out_dlq, names::OUTBOUND, "price.tr_tr"),
            Ok(())
        );
        assert_eq!(
            origin_allowed(&topo, &ready_dlq, names::REQUESTS, "stock"),
            Ok(())
        );
        assert_eq!(
            origin_allowed(
                &topo,
                names::PARKED,
                names::PARTITIONS,
                names::PARTITION_KEY
            ),
            Ok(())
        );
        // What the retry handler refused is not sent there by default either.
        assert!(origin_allowed(&topo, &ready_dlq, names::OUTBOUND, "price.tr_tr").is_err());
        assert!(origin_allowed(&topo, names::PARKED, names::OUTBOUND, "price.tr_tr").is_err());
        assert!(origin_allowed(&topo, &fast_dlq, names::EVENTS, "job.completed").is_err());
    }

    #[test]
    fn outcomes_are_tallied_and_shown() {
        let moved = Outcome::Moved {
            position: 1,
            exchange: "invalidation.requests".into(),
            routing_key: "price".into(),
            class: "malformed_json".into(),
            preview: "{}".into(),
        };
        let outcomes = [
            moved.clone(),
            Outcome::NotMatching { position: 2 },
            Outcome::NoOrigin {
                position: 3,
                preview: "{}".into(),
            },
            Outcome::Failed {
                position: 4,
                error: "nacked".into(),
            },
            Outcome::RoutesBack {
                position: 5,
                exchange: "invalidation.requests".into(),
                routing_key: "refund".into(),
                queue: "invalidation.unroutable".into(),
                hint: "use --filter type=PRICE --to invalidation.requests:price".into(),
                preview: "{}".into(),
            },
        ];
        let mut tally = Tally::default();
        for o in &outcomes {
            tally.add(o);
        }
        assert_eq!(
            (
                tally.examined,
                tally.moved,
                tally.not_matching,
                tally.no_origin,
                tally.routes_back,
                tally.failed
            ),
            (5, 1, 1, 1, 1, 1)
        );
        assert_eq!(
            tally.summary("q.dlq", 7, false, 7),
            "q.dlq: moved 1, kept 6 (1 not matching the filter, 1 without origin, 0 with a \
             refused origin, 1 routed back here, 1 failed, 2 not examined); replay record #7."
        );
        assert!(tally
            .summary("q.dlq", 7, true, 7)
            .contains("would move 1, would keep 6"));
        assert_eq!(
            line(&outcomes[4], false, true).as_deref(),
            Some(
                "kept #5: exchange \"invalidation.requests\" routes routing key \"refund\" straight \
                 back into invalidation.unroutable; use --filter type=PRICE --to \
                 invalidation.requests:price [{}]"
            )
        );
        // Under a bar a real move is only counted; a dry run always names what would move.
        assert_eq!(line(&moved, false, true), None);
        assert_eq!(
            line(&moved, true, true).as_deref(),
            Some("would move #1 → \"invalidation.requests\" / \"price\" [malformed_json] {}")
        );
        assert_eq!(line(&outcomes[1], false, false), None);
        assert_eq!(
            line(&outcomes[3], false, true).as_deref(),
            Some("kept #4: nacked")
        );
        assert!(line(&outcomes[2], false, true)
            .unwrap()
            .contains("no x-original-exchange header"));
    }
}
