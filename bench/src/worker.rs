//! The worker subprocesses the fleet is measured in, and reading their memory.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use fleet_shared::lapin::Channel;
use tokio::process::Child;

use crate::run::{Concurrency, RSS_SAMPLE_EVERY};
use crate::setup::BenchEnv;

/// A `fleet run …` subprocess.
pub struct Worker {
    child: Child,
    /// Its process id, for reading its memory from `/proc`.
    pub pid: u32,
    /// Its stderr, named in errors.
    pub log: PathBuf,
    /// Its `/metrics` URL.
    pub metrics_url: String,
}

impl Worker {
    /// Starts `fleet run <kinds>` in the run's sandbox, logging to
    /// `<label>.log`, with its search concurrency set to `concurrency`
    /// (`None`: as the run's configuration says) and its metrics on a free
    /// loopback port.
    pub async fn spawn(
        env: &BenchEnv,
        kinds: &[&str],
        label: &str,
        concurrency: Option<Concurrency>,
    ) -> anyhow::Result<Self> {
        let mut config = env.config().clone();
        let listen = format!("127.0.0.1:{}", fleet_testkit::free_port());
        config.worker.metrics_listen = listen.clone();
        match concurrency {
            Some(Concurrency::Adaptive) => config.search.concurrency = None,
            Some(Concurrency::Fixed(n)) => config.search.concurrency = Some(n),
            None => {}
        }
        let (mut cmd, log) = env.worker_command(kinds, label, &config)?;
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .kill_on_drop(true);
        let child = cmd.spawn().with_context(|| {
            let program = cmd.as_std().get_program().to_string_lossy().into_owned();
            format!("starting a fleet worker subprocess ({program})")
        })?;
        let pid = child.id().context("the worker exited at once")?;
        Ok(Self {
            child,
            pid,
            log,
            metrics_url: format!("http://{listen}/metrics"),
        })
    }

    /// Fails when the worker already exited (its log says why).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "the worker subprocess exited ({status}); see {}",
                self.log.display()
            );
        }
        Ok(())
    }

    /// Stops the worker with SIGTERM (graceful), SIGKILL after 20 s.
    pub async fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        if tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Lines of a worker log at WARN or ERROR level, and the first of them.
pub fn log_warnings(log: &std::path::Path) -> (usize, Option<String>) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut bad = text
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "));
    let first = bad.next().map(str::to_string);
    (bad.count() + usize::from(first.is_some()), first)
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`).
pub fn read_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// Samples a process's `VmRSS` every [`RSS_SAMPLE_EVERY`] until stopped,
/// keeping the peak.
pub struct PeakRss {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<u64>,
}

impl PeakRss {
    pub fn start(pid: u32) -> Self {
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut peak = 0u64;
                let mut tick = tokio::time::interval(RSS_SAMPLE_EVERY);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tick.tick() => {
                            if let Some(kib) = read_status_kib(pid, "VmRSS") {
                                peak = peak.max(kib);
                            }
                        }
                    }
                }
                peak
            }
        });
        Self { stop, task }
    }

    /// The highest sample, in KiB.
    pub async fn finish(self) -> u64 {
        self.stop.cancel();
        self.task.await.unwrap_or(0)
    }
}

/// Waits until `queue` has at least one consumer.
pub async fn wait_for_consumer(
    ch: &Channel,
    queue: &str,
    worker: &mut Worker,
    wait: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + wait;
    loop {
        worker.check_alive()?;
        let q = fleet_shared::broker::inspect_queue(ch, queue)
            .await
            .with_context(|| format!("checking queue {queue}"))?;
        if q.consumer_count() > 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "no consumer on {queue} after {wait:?}; see {}",
                worker.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_parse() {
        let me = std::process::id();
        assert!(read_status_kib(me, "VmRSS").unwrap_or(0) > 0);
        assert!(read_status_kib(me, "NoSuchField").is_none());
    }
}
