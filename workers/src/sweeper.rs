//! The sweeper (SPEC §6, seed `004_…`): re-publishes partition tasks that
//! stalled (not done, untouched for `sweeper.stall_after`) and completion
//! events that were never confirmed. A Redis lock with expiry keeps one
//! sweeper active at a time, however many replicas run.

use std::time::Duration;

use fleet_shared::broker;
use fleet_shared::db;
use fleet_shared::kv::Kv;
use fleet_shared::runtime::{Context, HandlerError};
use fleet_shared::topology::names;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::job;

pub const LOCK: &str = "sweeper";

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    pub tasks_republished: usize,
    pub events_published: usize,
    /// Jobs completed because every task was done but nobody completed them.
    pub jobs_completed: usize,
    /// Jobs this pass could not handle (logged; tried again next pass).
    pub failures: usize,
}

pub struct Sweeper {
    pub ctx: Context,
    pub db: PgPool,
    pub kv: Kv,
    /// Unique per process: only the holder may extend or release the lock.
    pub token: String,
}

impl Sweeper {
    pub fn new(ctx: Context, db: PgPool, kv: Kv) -> Self {
        let token = format!("{}:{}", ctx.identity.label(), uuid::Uuid::new_v4());
        Self { ctx, db, kv, token }
    }

    /// Takes or extends the lock; `true` while this process is the active sweeper.
    pub async fn hold_lock(&self) -> anyhow::Result<bool> {
        let ttl = self.ctx.config.sweeper.lock_ttl;
        if self.kv.extend_lock(LOCK, &self.token, ttl).await? {
            return Ok(true);
        }
        Ok(self.kv.try_lock(LOCK, &self.token, ttl).await?)
    }

    /// One pass; does nothing unless this process holds the lock. One job
    /// that fails (a bad row, a publish error) is logged and skipped: it
    /// never stops the pass for the others.
    pub async fn sweep_once(&self) -> anyhow::Result<Option<Sweep>> {
        if !self.hold_lock().await? {
            return Ok(None);
        }
        let mut sweep = Sweep::default();
        // Jobs whose tasks are all done but that never completed: the
        // finisher died between marking its task and completing the job.
        for job_id in db::finished_open_jobs(&self.db, 100).await? {
            match job::complete_if_done(&self.ctx, &self.db, job_id).await {
                Ok(()) => sweep.jobs_completed += 1,
                Err(error) => {
                    tracing::warn!(%error, %job_id, "Could not complete a finished job; trying again next sweep.");
                    sweep.failures += 1;
                }
            }
        }
        let cfg = &self.ctx.config;
        let stall = db::Stall {
            after: cfg.sweeper.stall_after,
            pending_too: self.partition_backlog().await? == 0,
            retry_after: cfg.retry.delay + cfg.sweeper.stall_after,
        };
        let stalled = db::claim_stalled_tasks(&self.db, stall, 500).await?;
        let mut by_job: std::collections::BTreeMap<uuid::Uuid, Vec<db::TaskRow>> =
            Default::default();
        for t in stalled {
            by_job.entry(t.job_id).or_default().push(t);
        }
        for (job_id, tasks) in by_job {
            let result = match db::job(&self.db, job_id).await {
                Ok(Some(job)) => job::republish_pending(&self.ctx, &job, &tasks).await,
                Ok(None) => continue,
                Err(error) => Err(HandlerError::transient("database", error)),
            };
            match result {
                Ok(n) => {
                    tracing::warn!(%job_id, tasks = n, "Re-published stalled partition tasks.");
                    sweep.tasks_republished += n;
                }
                Err(error) => {
                    tracing::warn!(%error, %job_id, "Could not re-publish a job's stalled tasks; trying again next sweep.");
                    sweep.failures += 1;
                }
            }
        }
        for job in db::unannounced_jobs(&self.db, cfg.sweeper.stall_after).await? {
            match job::announce(&self.ctx, &self.db, &job).await {
                Ok(()) => sweep.events_published += 1,
                Err(error) => {
                    tracing::warn!(%error, job_id = %job.id, "Could not announce a completed job; trying again next sweep.");
                    sweep.failures += 1;
                }
            }
        }
        Ok(Some(sweep))
    }

    /// Task messages ready in the partition queue. While there is a backlog,
    /// a pending task's message may simply be waiting in it.
    async fn partition_backlog(&self) -> anyhow::Result<u32> {
        let conn = self.ctx.publisher.connection().await?;
        let ch = conn.create_channel().await?;
        let q = broker::inspect_queue(&ch, names::PARTITIONS).await?;
        let _ = ch.close(200, "sweeper done".into()).await;
        Ok(q.message_count())
    }

    /// Sweeps every `sweeper.interval` until shutdown, then releases the lock.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let interval: Duration = self.ctx.config.sweeper.interval;
        tracing::info!(?interval, stall_after = ?self.ctx.config.sweeper.stall_after, "Sweeper started.");
        loop {
            match self.sweep_once().await {
                Ok(Some(s)) if s != Sweep::default() => tracing::info!(
                    tasks_republished = s.tasks_republished,
                    events_published = s.events_published,
                    jobs_completed = s.jobs_completed,
                    failures = s.failures,
                    "Sweep done."
                ),
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "Sweep failed; trying again next interval."),
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        let _ = self.kv.unlock(LOCK, &self.token).await;
        Ok(())
    }
}
