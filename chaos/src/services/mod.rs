//! The services the suite owns and faults: a RabbitMQ node, a PostgreSQL
//! cluster, a Redis server and an osmem-server behind a proxy. Never the
//! machine's shared ones: those serve other tests at the same time.
//!
//! Each one cleans up after itself twice over: an explicit async `stop`/
//! `remove` the run calls on every path, and a blocking `Drop` for the paths
//! that never reach it (a panic, Ctrl-C dropping the run's future).

use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

pub mod postgres;
pub mod rabbit;
pub mod redis;
pub mod search;

pub use postgres::PgCluster;
pub use rabbit::RabbitNode;
pub use redis::RedisServer;
pub use search::{SearchServer, SearchSpec};

/// A port nothing listens on right now, outside the kernel's ephemeral
/// range: these services are stopped and started again on the same port,
/// and no outgoing connection may take it meanwhile (see
/// `fleet_testkit::free_port`). Another test could still bind it first;
/// the service then fails to start and says so.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(fleet_testkit::free_port())
}

/// `n` consecutive free ports (for the RabbitMQ CLI tools' distribution range).
pub fn free_port_range(n: u16) -> anyhow::Result<u16> {
    for _ in 0..50 {
        let base = free_port()?;
        if base > u16::MAX - n {
            continue;
        }
        if (base..base + n).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return Ok(base);
        }
    }
    bail!("no {n} consecutive free ports found")
}

/// Whether something accepts TCP connections on `port`.
pub async fn port_open(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}

/// Runs a command to completion; its output becomes the error when it fails.
pub async fn run_cmd(program: &str, args: &[&str], what: &str) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("{what}: running {program}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!(
            "{what}: `{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            last_lines(&text, 12)
        );
    }
    Ok(text)
}

/// The same as [`run_cmd`], blocking: for `Drop`.
pub fn run_cmd_blocking(program: &str, args: &[&str]) -> bool {
    std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The last `n` lines of `text`, for error messages.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Polls `ready` every 250 ms until it is true or `wait` passed.
pub async fn wait_until<F, Fut>(wait: Duration, mut ready: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + wait;
    loop {
        if ready().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Sends `signal` to `pid` (no-op for pid 0).
pub fn signal(pid: u32, signal: libc::c_int) -> bool {
    if pid == 0 {
        return false;
    }
    // SAFETY: kill(2) has no memory effects; a stale pid at worst fails with ESRCH.
    unsafe { libc::kill(pid as libc::pid_t, signal) == 0 }
}

/// Creates `dir` and gives it to `user` (RabbitMQ runs as `rabbitmq`).
pub fn chown_tree(dir: &Path, user: &str) -> anyhow::Result<()> {
    let ok = run_cmd_blocking(
        "chown",
        &["-R", &format!("{user}:{user}"), &dir.to_string_lossy()],
    );
    if !ok {
        bail!("could not give {} to the {user} user", dir.display());
    }
    Ok(())
}
