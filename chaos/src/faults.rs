//! The faults: what each one does, the schedule, and the record of each
//! occurrence (start and end, as the suite saw them).

use std::time::{Duration, Instant};

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// SIGKILL a dispatcher; start it again after a pause.
    KillDispatcher,
    /// SIGKILL one of the partition workers (in turn).
    KillPartition,
    KillRetry,
    KillIngest,
    KillSweeper,
    /// Stop the RabbitMQ node cleanly, wait, start it again.
    BrokerRestart,
    /// The search server unreachable (refused, open connections reset) for
    /// longer than the retry delay.
    SearchAway,
    /// `pg_ctlcluster … restart`: every database connection is cut.
    PostgresRestart,
    /// SIGKILL redis-server (no persistence: every key is lost), start it again.
    RedisRestart,
    /// A burst of heavy concurrent queries against the search server.
    SearchOverload,
}

impl FaultKind {
    /// The order within one round of the schedule: worker kills between
    /// service faults, so each service fault meets a fleet that just lost a
    /// process too.
    pub const ROUND: &'static [FaultKind] = &[
        FaultKind::KillDispatcher,
        FaultKind::SearchAway,
        FaultKind::KillPartition,
        FaultKind::BrokerRestart,
        FaultKind::KillRetry,
        FaultKind::PostgresRestart,
        FaultKind::KillIngest,
        FaultKind::RedisRestart,
        FaultKind::KillSweeper,
        FaultKind::SearchOverload,
    ];

    pub fn label(self) -> &'static str {
        match self {
            FaultKind::KillDispatcher => "SIGKILL dispatcher",
            FaultKind::KillPartition => "SIGKILL partition worker",
            FaultKind::KillRetry => "SIGKILL retry handler",
            FaultKind::KillIngest => "SIGKILL ingest",
            FaultKind::KillSweeper => "SIGKILL sweeper",
            FaultKind::BrokerRestart => "RabbitMQ node stop + start",
            FaultKind::SearchAway => "search server away",
            FaultKind::PostgresRestart => "PostgreSQL restart",
            FaultKind::RedisRestart => "Redis kill + start",
            FaultKind::SearchOverload => "search overload burst",
        }
    }

    /// The worker kind a kill fault hits.
    pub fn worker(self) -> Option<&'static str> {
        match self {
            FaultKind::KillDispatcher => Some("dispatcher"),
            FaultKind::KillPartition => Some("partition"),
            FaultKind::KillRetry => Some("retry"),
            FaultKind::KillIngest => Some("ingest"),
            FaultKind::KillSweeper => Some("sweeper"),
            _ => None,
        }
    }

    /// A rough length, for spreading the load over the faults.
    pub fn estimate(self, t: &Timings) -> Duration {
        match self {
            FaultKind::BrokerRestart => Duration::from_secs(30) + t.broker_down,
            FaultKind::SearchAway => t.search_down,
            FaultKind::PostgresRestart => Duration::from_secs(5),
            FaultKind::RedisRestart => t.redis_down + Duration::from_secs(1),
            FaultKind::SearchOverload => t.overload_for,
            _ => t.worker_down + Duration::from_millis(200),
        }
    }
}

/// How long faults last and how far apart they are.
#[derive(Debug, Clone)]
pub struct Timings {
    /// A killed worker stays dead this long before it is started again.
    pub worker_down: Duration,
    /// Between a broker stop completing and the start command.
    pub broker_down: Duration,
    /// How long the search server stays away (longer than the retry delay).
    pub search_down: Duration,
    /// Between killing Redis and starting it again.
    pub redis_down: Duration,
    /// Length of an overload burst.
    pub overload_for: Duration,
    /// Concurrent heavy queries during a burst.
    pub overload_clients: usize,
    /// Pause after each fault's end before the next one starts (the
    /// window in which recovery is measured).
    pub gap: Duration,
}

/// The faults in the order they are injected: `rounds[kind]` occurrences of
/// each kind, interleaved round by round.
pub fn schedule(counts: &[(FaultKind, usize)]) -> Vec<FaultKind> {
    let max = counts.iter().map(|(_, n)| *n).max().unwrap_or(0);
    let mut out = Vec::new();
    for round in 0..max {
        for kind in FaultKind::ROUND {
            if counts.iter().any(|(k, n)| k == kind && *n > round) {
                out.push(*kind);
            }
        }
    }
    out
}

/// One fault as it happened.
#[derive(Debug, Clone)]
pub struct FaultRecord {
    pub kind: FaultKind,
    /// What was hit (`partition-2`, the node name, …).
    pub target: String,
    /// When the fault began (the kill, the stop command, the proxy closing).
    pub started: Instant,
    /// When the faulted part was back (process started again, node answering,
    /// proxy open, server answering, burst over).
    pub ended: Instant,
    /// Anything worth saying (`rabbitmq start took 14 s`, queries sent).
    pub note: String,
    /// The fault could not be injected or undone as planned.
    pub error: Option<String>,
}

impl FaultRecord {
    pub fn down(&self) -> Duration {
        self.ended.saturating_duration_since(self.started)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_interleaves_rounds() {
        let s = schedule(&[
            (FaultKind::KillDispatcher, 2),
            (FaultKind::BrokerRestart, 1),
            (FaultKind::SearchOverload, 2),
        ]);
        assert_eq!(
            s,
            vec![
                FaultKind::KillDispatcher,
                FaultKind::BrokerRestart,
                FaultKind::SearchOverload,
                FaultKind::KillDispatcher,
                FaultKind::SearchOverload,
            ]
        );
    }
}
