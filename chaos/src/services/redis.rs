//! A `redis-server` of the suite's own on a free port, without persistence:
//! killing it loses every key (idempotency keys, the sweeper lock), which is
//! the fault the fleet must survive.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{free_port, wait_until};

pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    /// TLS only (`--port 0 --tls-port`): the CA, certificate and key files.
    tls: Option<[PathBuf; 3]>,
    child: Option<tokio::process::Child>,
}

impl RedisServer {
    /// Starts a server on a free port, its log in `dir`.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut r = RedisServer {
            port: free_port()?,
            dir: dir.to_path_buf(),
            tls: None,
            child: None,
        };
        r.spawn().await?;
        Ok(r)
    }

    /// Starts a server that speaks TLS only, on a free port (`rediss://`),
    /// with the certificate and key given; clients are not asked for one.
    pub async fn start_tls(dir: &Path, ca: &Path, cert: &Path, key: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut r = RedisServer {
            port: free_port()?,
            dir: dir.to_path_buf(),
            tls: Some([ca.to_path_buf(), cert.to_path_buf(), key.to_path_buf()]),
            child: None,
        };
        r.spawn().await?;
        Ok(r)
    }

    /// `redis://127.0.0.1:<port>/`, or `rediss://` for a TLS server.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }

    /// Starts the process again (after [`kill`](Self::kill)) on the same port.
    pub async fn spawn(&mut self) -> anyhow::Result<()> {
        let port = self.port.to_string();
        let log = self.dir.join("redis.log");
        let mut command = tokio::process::Command::new("redis-server");
        match &self.tls {
            None => command.args(["--port", &port]),
            Some([ca, cert, key]) => command
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port,
                    "--tls-auth-clients",
                    "no",
                ])
                .arg("--tls-ca-cert-file")
                .arg(ca)
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key),
        };
        let child = command
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting redis-server (is it installed? scripts/services.sh)")?;
        self.child = Some(child);
        // A TLS server is ready when it listens (PING would need a TLS client).
        let (tls, port) = (self.tls.is_some(), self.port);
        let ready = || async move {
            if tls {
                super::port_open(port).await
            } else {
                ping(port).await
            }
        };
        if !wait_until(Duration::from_secs(20), ready).await {
            bail!(
                "redis-server on port {} did not answer PING (see {})",
                self.port,
                log.display()
            );
        }
        Ok(())
    }

    /// SIGKILL: the server and all its keys are gone.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }
}

/// `PING` → `+PONG`.
async fn ping(port: u16) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if s.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), s.read_exact(&mut buf)).await,
        Ok(Ok(_)) if &buf == b"+PONG\r\n"
    )
}
