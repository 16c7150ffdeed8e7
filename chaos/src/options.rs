//! How big a run is: the full run (the README's table) and the CI variant.

use std::path::PathBuf;
use std::time::Duration;

use fleet_workers::catalogue::Spec;

use crate::faults::{FaultKind, Timings};
use crate::load::LoadSize;

/// Everything a run needs to know.
#[derive(Debug, Clone)]
pub struct Options {
    /// `full` or `ci`, for the report.
    pub variant: &'static str,
    pub load: LoadSize,
    /// How many times each fault kind happens.
    pub faults: Vec<(FaultKind, usize)>,
    pub timings: Timings,
    /// `retry.delay` of the fleet (the TTL of the retry delay queue).
    pub retry_delay: Duration,
    /// `sweeper.stall_after` of the fleet.
    pub stall_after: Duration,
    /// Load before the first fault.
    pub warmup: Duration,
    /// How long the fleet may take after the last fault to deliver everything.
    pub settle_timeout: Duration,
    /// The `fleet` binary of the workers; `None`: this binary (`fleet-chaos fleet run …`).
    pub fleet_bin: Option<PathBuf>,
    /// Keep the work directory (worker, server logs) even when the run passes.
    pub keep_logs: bool,
    /// Seed of the load plan.
    pub seed: u64,
    /// Stop and clean up on Ctrl-C and SIGTERM. The command line does; a
    /// test does not (a handler, once installed, would keep Ctrl-C from
    /// stopping the rest of the test run).
    pub handle_signals: bool,
}

fn catalogue(docs: u64) -> Spec {
    Spec {
        docs,
        first_id: 1,
        brands: 500,
        categories: 200,
        // Few suppliers: osmem-server evaluates a `terms` query in time
        // proportional to documents × terms, and the split requests name them all.
        suppliers: 20,
        seed: 42,
    }
}

impl Options {
    /// The full run: 100,000 documents, every worker kind killed three
    /// times, every service fault twice.
    pub fn full() -> Options {
        let kills = 3;
        let services = 2;
        Options {
            variant: "full",
            load: LoadSize {
                catalogue: catalogue(100_000),
                split_limit: 10_000,
                fast_requests: 400,
                brand_requests: 200,
                source_events: 100,
                ignored_events: 50,
            },
            faults: vec![
                (FaultKind::KillDispatcher, kills),
                (FaultKind::KillPartition, kills + 1),
                (FaultKind::KillRetry, kills),
                (FaultKind::KillIngest, kills),
                (FaultKind::KillSweeper, kills),
                (FaultKind::BrokerRestart, services),
                (FaultKind::SearchAway, services),
                (FaultKind::PostgresRestart, services),
                (FaultKind::RedisRestart, services),
                (FaultKind::SearchOverload, services),
            ],
            timings: Timings {
                worker_down: Duration::from_millis(1500),
                broker_down: Duration::from_secs(3),
                search_down: Duration::from_secs(12),
                redis_down: Duration::from_secs(2),
                overload_for: Duration::from_secs(12),
                overload_clients: 16,
                gap: Duration::from_secs(8),
            },
            retry_delay: Duration::from_secs(4),
            stall_after: Duration::from_secs(6),
            warmup: Duration::from_secs(10),
            settle_timeout: Duration::from_secs(600),
            fleet_bin: None,
            keep_logs: false,
            seed: 7,
            handle_signals: true,
        }
    }

    /// The CI variant (a few minutes on a 2-core machine): 20,000
    /// documents, each fault once, a lighter load.
    pub fn ci() -> Options {
        let full = Options::full();
        Options {
            variant: "ci",
            load: LoadSize {
                catalogue: catalogue(20_000),
                // Small partitions: at 20,000 documents a job still has ~5-20 tasks.
                split_limit: 1_000,
                fast_requests: 150,
                brand_requests: 60,
                source_events: 30,
                ignored_events: 20,
            },
            faults: full.faults.iter().map(|(k, _)| (*k, 1)).collect(),
            timings: Timings {
                search_down: Duration::from_secs(8),
                overload_for: Duration::from_secs(8),
                overload_clients: 8,
                gap: Duration::from_secs(5),
                ..full.timings
            },
            warmup: Duration::from_secs(5),
            settle_timeout: Duration::from_secs(180),
            ..full
        }
    }

    /// The faults' expected length: the load is spread over it.
    pub fn span(&self) -> Duration {
        let faults = crate::faults::schedule(&self.faults);
        self.warmup
            + faults
                .iter()
                .map(|k| k.estimate(&self.timings) + self.timings.gap)
                .sum::<Duration>()
    }
}
