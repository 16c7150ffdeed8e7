//! The sweeper (SPEC §6, seed `004_…`): re-publishes partition tasks that
//! stalled (not done, untouched for `sweeper.stall_after`) and completion
//! events that were never confirmed. A Redis lock with expiry keeps one
//! sweeper active at a time, however many replicas run.

use std::time::Duration;

use fleet_shared::db;
use fleet_shared::kv::Kv;
use fleet_shared::runtime::Context;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::job::{announce, republish_pending};

pub const LOCK: &str = "sweeper";

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    pub tasks_republished: usize,
    pub events_published: usize,
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

    /// One pass; does nothing unless this process holds the lock.
    pub async fn sweep_once(&self) -> anyhow::Result<Option<Sweep>> {
        if !self.hold_lock().await? {
            return Ok(None);
        }
        let mut sweep = Sweep::default();
        let stall = self.ctx.config.sweeper.stall_after;
        let stalled = db::claim_stalled_tasks(&self.db, stall, 500).await?;
        let mut by_job: std::collections::BTreeMap<uuid::Uuid, Vec<db::TaskRow>> =
            Default::default();
        for t in stalled {
            by_job.entry(t.job_id).or_default().push(t);
        }
        for (job_id, tasks) in by_job {
            let Some(job) = db::job(&self.db, job_id).await? else {
                continue;
            };
            let n = republish_pending(&self.ctx, &job, &tasks)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            tracing::warn!(%job_id, tasks = n, "Re-published stalled partition tasks.");
            sweep.tasks_republished += n;
        }
        for job in db::unannounced_jobs(&self.db, stall).await? {
            announce(&self.ctx, &self.db, &job)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            sweep.events_published += 1;
        }
        Ok(Some(sweep))
    }

    /// Sweeps every `sweeper.interval` until shutdown, then releases the lock.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let interval: Duration = self.ctx.config.sweeper.interval;
        tracing::info!(?interval, stall_after = ?self.ctx.config.sweeper.stall_after, "Sweeper started.");
        loop {
            match self.sweep_once().await {
                Ok(Some(s)) if s != Sweep::default() => tracing::info!(?s, "Sweep done."),
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
