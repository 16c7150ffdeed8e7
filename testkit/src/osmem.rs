//! osmem-server processes: one per benchmark, one shared by the integration
//! tests (seeded with the test catalogue) with a copy-on-write clone per test.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use fleet_workers::catalogue;
use serde_json::Value;
use tokio::io::AsyncBufReadExt;
use tokio::sync::OnceCell;

use crate::catalogue::{catalogue_spec, INDICES};

/// The osmem-server binary: `OSMEM_SERVER_BIN`, else the one bundled in the
/// `osmem-server` Python wheel.
pub fn find_osmem_binary() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("OSMEM_SERVER_BIN") {
        return Ok(p.into());
    }
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import osmem_server; print(osmem_server.resolve_binary())",
        ])
        .output()
        .context("running python3 to find osmem-server")?;
    if !out.status.success() {
        bail!(
            "osmem-server is not installed: run `pip install osmem-server` \
             (scripts/test.sh does) or set OSMEM_SERVER_BIN"
        );
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

/// [`find_osmem_binary`] for tests: panics with the reason.
pub fn osmem_binary() -> PathBuf {
    find_osmem_binary().unwrap_or_else(|e| panic!("{e:#}"))
}

/// How to start an osmem-server.
#[derive(Debug, Clone)]
pub struct OsmemOptions {
    /// A `--seed` directory (one sub-directory per index) loaded at start.
    pub seed: Option<PathBuf>,
    /// Listen address; port 0 picks a free port.
    pub addr: String,
    /// A file for the server's stderr; discarded when `None`.
    pub log: Option<PathBuf>,
    /// A soft heap limit in MiB (`GOMEMLIMIT`; osmem-server is a Go program):
    /// the collector works harder as the data grows instead of doubling the heap.
    pub memory_limit_mib: Option<u64>,
    /// How long the server may take to print its address (loading a seed
    /// directory happens before that).
    pub start_timeout: Duration,
    /// Start the server in a session of its own, so that its CPU priority
    /// can be lowered against every other process ([`Osmem::lower_priority`]).
    pub own_session: bool,
}

impl Default for OsmemOptions {
    fn default() -> Self {
        Self {
            seed: None,
            addr: "127.0.0.1:0".into(),
            log: None,
            memory_limit_mib: None,
            start_timeout: Duration::from_secs(180),
            own_session: false,
        }
    }
}

/// A running osmem-server process. It is killed when dropped, and exits by
/// itself when the process that started it does (`--parent-pid`).
pub struct Osmem {
    /// Base URL, as the server printed it.
    pub url: String,
    /// Process id, for reading its memory from `/proc`.
    pub pid: u32,
    own_session: bool,
    child: tokio::process::Child,
}

impl Osmem {
    /// Starts a server on `addr` (port 0 = any) seeded from `seed_dir`;
    /// panics when it cannot (tests).
    pub async fn start(seed_dir: Option<&Path>, addr: &str) -> Osmem {
        let opts = OsmemOptions {
            seed: seed_dir.map(Path::to_path_buf),
            addr: addr.into(),
            ..OsmemOptions::default()
        };
        Self::launch(&opts)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Starts a server and waits for the address it prints on its first line.
    pub async fn launch(opts: &OsmemOptions) -> anyhow::Result<Osmem> {
        let binary = find_osmem_binary()?;
        let mut cmd = tokio::process::Command::new(&binary);
        cmd.args([
            "--addr",
            &opts.addr,
            "--no-ja",
            "--parent-pid",
            &std::process::id().to_string(),
            "--no-stdin-watch",
        ]);
        if let Some(dir) = &opts.seed {
            cmd.arg("--seed").arg(dir);
        }
        if let Some(mib) = opts.memory_limit_mib {
            cmd.env("GOMEMLIMIT", format!("{mib}MiB"));
        }
        let stderr = match &opts.log {
            Some(path) => Stdio::from(
                std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?,
            ),
            None => Stdio::null(),
        };
        #[cfg(unix)]
        if opts.own_session {
            // SAFETY: `setsid` is async-signal-safe and touches nothing of
            // the parent's; it runs in the child between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::setsid() == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = child.id().unwrap_or(0);
        let stdout = child
            .stdout
            .take()
            .context("osmem-server has no stdout pipe")?;
        let see_log = match &opts.log {
            Some(path) => format!(" (see {})", path.display()),
            None => String::new(),
        };
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(opts.start_timeout, lines.next_line())
            .await
            .with_context(|| {
                format!(
                    "osmem-server did not start within {} s{see_log}",
                    opts.start_timeout.as_secs()
                )
            })?
            .context("reading osmem-server's first line")?
            .with_context(|| format!("osmem-server exited at start-up{see_log}"))?;
        let v: Value = serde_json::from_str(&line)
            .with_context(|| format!("osmem-server's first line is not JSON: {line}"))?;
        let url = v["url"]
            .as_str()
            .with_context(|| format!("osmem-server's first line has no url: {line}"))?
            .to_string();
        Ok(Osmem {
            url,
            pid,
            own_session: opts.own_session,
            child,
        })
    }

    /// Lowers the server's CPU priority as far as it goes (nice 19), so it
    /// gets the cycles the broker, the fleet and the bench leave: a search
    /// cluster on machines of its own, as far as one machine can pretend.
    ///
    /// The nice value alone is not enough where the kernel groups processes
    /// by session (`kernel.sched_autogroup_enabled`, on by default in
    /// Debian): nice then orders processes only within a session, and the
    /// CPU is shared between sessions as equals, so a broker started in
    /// another session would still split the machine with the server. A
    /// server started with `own_session` has its session's group lowered
    /// too. Returns what could not be done, in words.
    pub fn lower_priority(&self) -> Vec<String> {
        let mut failed = Vec::new();
        // SAFETY: changing another process's priority; no memory is shared.
        let reniced = unsafe { libc::setpriority(libc::PRIO_PROCESS, self.pid as libc::id_t, 19) };
        if reniced != 0 {
            failed.push(format!("nice 19: {}", std::io::Error::last_os_error()));
        }
        if self.own_session {
            let path = format!("/proc/{}/autogroup", self.pid);
            // Absent without autogroup support: nothing to lower then.
            if std::path::Path::new(&path).exists() {
                if let Err(e) = std::fs::write(&path, "19") {
                    failed.push(format!("its session's group ({path}): {e}"));
                }
            }
        }
        failed
    }

    /// Stops the server and waits for it to exit.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
        let _ = self.child.wait().await;
    }
}

static SHARED: OnceCell<Osmem> = OnceCell::const_new();

/// The shared server with the test catalogue in both indices (started on
/// first use, for the rest of the test process).
pub async fn shared_osmem() -> &'static Osmem {
    SHARED
        .get_or_init(|| async {
            let dir =
                std::env::temp_dir().join(format!("fleet-test-catalogue-{}", std::process::id()));
            catalogue::write_seed_dir(&dir, INDICES, &catalogue_spec()).unwrap();
            let s = Osmem::start(Some(&dir), "127.0.0.1:0").await;
            let _ = std::fs::remove_dir_all(&dir);
            s
        })
        .await
}

/// A private copy-on-write clone of the shared catalogue; returns its URL.
pub async fn catalogue_clone() -> String {
    let base = shared_osmem().await;
    let v: Value = reqwest::Client::new()
        .post(format!("{}/_osmem/clones", base.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["url"].as_str().expect("clone url").to_string()
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::{Osmem, OsmemOptions};

    /// The nice value of `pid`: field 19 of `/proc/<pid>/stat`, counted
    /// after the command name (which may hold spaces) ends with `)`.
    fn nice_of(pid: u32) -> i32 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        after_name.split(' ').nth(16).unwrap().parse().unwrap()
    }

    #[tokio::test]
    async fn a_server_in_its_own_session_is_lowered_with_its_session() {
        let ours_before = nice_of(std::process::id());
        let server = Osmem::launch(&OsmemOptions {
            own_session: true,
            ..OsmemOptions::default()
        })
        .await
        .unwrap();
        // SAFETY: reading process attributes.
        let (its_session, ours) =
            unsafe { (libc::getsid(server.pid as libc::pid_t), libc::getsid(0)) };
        assert_eq!(its_session, server.pid as libc::pid_t, "it leads a session");
        assert_ne!(its_session, ours);
        assert_eq!(server.lower_priority(), Vec::<String>::new());
        assert_eq!(nice_of(server.pid), 19);
        let group = format!("/proc/{}/autogroup", server.pid);
        if let Ok(text) = std::fs::read_to_string(&group) {
            assert!(text.trim_end().ends_with("nice 19"), "{group}: {text}");
        }
        // The test's own process keeps its priority.
        assert_eq!(nice_of(std::process::id()), ours_before);
        server.kill().await;
    }
}
