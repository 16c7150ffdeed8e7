//! The fleet under test: one `fleet run <kind>` subprocess per slot (two
//! partition workers, one of each other kind), each under a supervisor that
//! restarts it when it exits by itself — what systemd's `Restart=always` or
//! Kubernetes does in production (a worker that cannot reach PostgreSQL at
//! start-up exits with a message; it is not expected to wait forever). The
//! suite's own SIGKILLs go through the supervisor too, so it restarts the
//! worker after the planned pause and counts planned and unplanned exits
//! apart.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::services::signal;

/// How to start a worker process.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The `fleet` binary, or `None` for this binary (`<exe> fleet run …`).
    pub fleet_bin: Option<PathBuf>,
    /// The environment (`Config::to_env` of the run's configuration).
    pub env: Vec<(String, String)>,
    /// Where each slot's stderr goes (`<slot>.log`, appended across restarts).
    pub logs: PathBuf,
}

impl Launch {
    fn command(&self, kind: &str) -> anyhow::Result<Command> {
        let mut cmd = match &self.fleet_bin {
            Some(bin) => Command::new(bin),
            None => {
                let exe = std::env::current_exe().context("locating this binary")?;
                let mut cmd = Command::new(exe);
                cmd.arg(crate::FLEET);
                cmd
            }
        };
        cmd.args(["run", kind]).envs(self.env.iter().cloned());
        Ok(cmd)
    }

    fn spawn(&self, slot: &str, kind: &str) -> anyhow::Result<Child> {
        let log = self.logs.join(format!("{slot}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut cmd = self.command(kind)?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .kill_on_drop(true);
        cmd.spawn()
            .with_context(|| format!("starting `fleet run {kind}` ({slot})"))
    }
}

/// A planned kill, answered with when the worker died and when it was back.
struct Kill {
    pause: Duration,
    done: oneshot::Sender<(Instant, Instant)>,
}

enum Order {
    Kill(Kill),
    /// SIGTERM, then SIGKILL after the grace; answered once the process is gone.
    Stop(Duration, oneshot::Sender<()>),
}

/// What a slot's supervisor saw.
#[derive(Debug, Clone, Default)]
pub struct SlotStats {
    pub slot: String,
    pub kind: String,
    /// Processes started (first start and every restart).
    pub starts: u32,
    /// Exits the suite did not cause (restarted after a second).
    pub unplanned_exits: u32,
    /// The exit statuses of the unplanned exits, for the report.
    pub exit_notes: Vec<String>,
}

struct Slot {
    name: String,
    kind: String,
    tx: mpsc::Sender<Order>,
    handle: JoinHandle<SlotStats>,
}

/// Every worker process of the run.
pub struct Fleet {
    slots: Vec<Slot>,
    /// Round-robin position per kind, so kills alternate between replicas.
    next_victim: std::collections::HashMap<String, usize>,
}

impl Fleet {
    /// Starts `slots` (`(slot name, worker kind)`).
    pub fn start(launch: &Launch, slots: &[(&str, &str)]) -> anyhow::Result<Fleet> {
        let mut out = Vec::new();
        for (name, kind) in slots {
            let child = launch.spawn(name, kind)?;
            let (tx, rx) = mpsc::channel(4);
            let handle = tokio::spawn(supervise(
                launch.clone(),
                name.to_string(),
                kind.to_string(),
                child,
                rx,
            ));
            out.push(Slot {
                name: name.to_string(),
                kind: kind.to_string(),
                tx,
                handle,
            });
        }
        Ok(Fleet {
            slots: out,
            next_victim: Default::default(),
        })
    }

    /// The slots, in start order.
    pub fn slot_names(&self) -> Vec<String> {
        self.slots.iter().map(|s| s.name.clone()).collect()
    }

    /// SIGKILLs one worker of `kind` (replicas in turn), restarts it after
    /// `pause`; returns the slot, when it died and when it was started again.
    pub async fn kill(
        &mut self,
        kind: &str,
        pause: Duration,
    ) -> anyhow::Result<(String, Instant, Instant)> {
        let replicas: Vec<&Slot> = self.slots.iter().filter(|s| s.kind == kind).collect();
        anyhow::ensure!(!replicas.is_empty(), "no {kind} worker in the fleet");
        let turn = self.next_victim.entry(kind.to_string()).or_default();
        let slot = replicas[*turn % replicas.len()];
        *turn += 1;
        let (done, answer) = oneshot::channel();
        slot.tx
            .send(Order::Kill(Kill { pause, done }))
            .await
            .map_err(|_| anyhow::anyhow!("the supervisor of {} stopped", slot.name))?;
        let (died, back) = answer
            .await
            .map_err(|_| anyhow::anyhow!("the supervisor of {} stopped", slot.name))?;
        Ok((slot.name.clone(), died, back))
    }

    /// Stops every worker gracefully (SIGTERM; SIGKILL after `grace`) and
    /// returns what each supervisor saw.
    pub async fn stop(self, grace: Duration) -> Vec<SlotStats> {
        let mut waits = Vec::new();
        for slot in &self.slots {
            let (done, answer) = oneshot::channel();
            if slot.tx.send(Order::Stop(grace, done)).await.is_ok() {
                waits.push(answer);
            }
        }
        for w in waits {
            let _ = w.await;
        }
        let mut stats = Vec::new();
        for slot in self.slots {
            match slot.handle.await {
                Ok(s) => stats.push(s),
                Err(_) => stats.push(SlotStats {
                    slot: slot.name,
                    kind: slot.kind,
                    ..SlotStats::default()
                }),
            }
        }
        stats
    }
}

async fn supervise(
    launch: Launch,
    slot: String,
    kind: String,
    first: Child,
    mut rx: mpsc::Receiver<Order>,
) -> SlotStats {
    let mut stats = SlotStats {
        slot: slot.clone(),
        kind: kind.clone(),
        starts: 1,
        ..SlotStats::default()
    };
    let mut child = Some(first);
    loop {
        let running = child.as_mut();
        let cmd = match running {
            Some(c) => tokio::select! {
                status = c.wait() => {
                    stats.unplanned_exits += 1;
                    let note = match status {
                        Ok(s) => s.to_string(),
                        Err(e) => e.to_string(),
                    };
                    stats.exit_notes.push(note);
                    // Restart=always, with systemd's default pause.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    child = respawn(&launch, &slot, &kind, &mut stats);
                    continue;
                }
                cmd = rx.recv() => cmd,
            },
            None => {
                // The last start failed; try again unless told otherwise.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {
                        child = respawn(&launch, &slot, &kind, &mut stats);
                        continue;
                    }
                    cmd = rx.recv() => cmd,
                }
            }
        };
        match cmd {
            Some(Order::Kill(k)) => {
                if let Some(mut c) = child.take() {
                    let _ = c.kill().await;
                }
                let died = Instant::now();
                tokio::time::sleep(k.pause).await;
                child = respawn(&launch, &slot, &kind, &mut stats);
                let _ = k.done.send((died, Instant::now()));
            }
            Some(Order::Stop(grace, done)) => {
                if let Some(mut c) = child.take() {
                    stop_child(&mut c, grace).await;
                }
                let _ = done.send(());
                return stats;
            }
            None => {
                if let Some(mut c) = child.take() {
                    let _ = c.kill().await;
                }
                return stats;
            }
        }
    }
}

fn respawn(launch: &Launch, slot: &str, kind: &str, stats: &mut SlotStats) -> Option<Child> {
    match launch.spawn(slot, kind) {
        Ok(c) => {
            stats.starts += 1;
            Some(c)
        }
        Err(e) => {
            stats.exit_notes.push(format!("could not start: {e:#}"));
            None
        }
    }
}

async fn stop_child(c: &mut Child, grace: Duration) {
    if let Some(pid) = c.id() {
        signal(pid, libc::SIGTERM);
    }
    if tokio::time::timeout(grace, c.wait()).await.is_err() {
        let _ = c.kill().await;
    }
}
