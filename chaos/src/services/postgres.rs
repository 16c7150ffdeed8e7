//! A PostgreSQL cluster of the suite's own (`pg_createcluster <ver>
//! chaos-<port>`), with trust authentication on loopback, dropped at the end.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::{free_port, run_cmd, run_cmd_blocking, wait_until};

pub struct PgCluster {
    /// The installed major version (the highest under /usr/lib/postgresql).
    pub version: String,
    /// `chaos-<port>`.
    pub name: String,
    pub port: u16,
    /// Whether the cluster exists (Drop drops it then).
    created: bool,
}

impl PgCluster {
    /// Creates and starts a cluster on a free port.
    pub async fn create() -> anyhow::Result<Self> {
        Self::create_with("").await
    }

    /// Like [`create`](Self::create), with `conf` (postgresql.conf lines,
    /// e.g. `ssl = on`) in the cluster's `conf.d` before it starts.
    pub async fn create_with(conf: &str) -> anyhow::Result<Self> {
        let version = installed_version()?;
        let port = free_port()?;
        let mut pg = PgCluster {
            version,
            name: format!("chaos-{port}"),
            port,
            created: false,
        };
        pg.created = true;
        run_cmd(
            "pg_createcluster",
            &[
                &pg.version,
                &pg.name,
                "-p",
                &port.to_string(),
                "--",
                "--auth-local=trust",
                "--auth-host=trust",
            ],
            "creating the PostgreSQL cluster",
        )
        .await?;
        if !conf.is_empty() {
            let dir = format!("/etc/postgresql/{}/{}/conf.d", pg.version, pg.name);
            std::fs::create_dir_all(&dir)?;
            std::fs::write(format!("{dir}/fleet.conf"), conf)
                .with_context(|| format!("writing {dir}/fleet.conf"))?;
        }
        run_cmd(
            "pg_ctlcluster",
            &[&pg.version, &pg.name, "start"],
            "starting the PostgreSQL cluster",
        )
        .await?;
        pg.await_ready(Duration::from_secs(60)).await?;
        Ok(pg)
    }

    /// The administrative URL (its `postgres` database); sandboxes create theirs from it.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// `pg_ctlcluster … restart` (fast shutdown: open connections are cut),
    /// then waits until it accepts connections again.
    pub async fn restart(&self) -> anyhow::Result<()> {
        run_cmd(
            "pg_ctlcluster",
            &[&self.version, &self.name, "restart"],
            "restarting the PostgreSQL cluster",
        )
        .await?;
        self.await_ready(Duration::from_secs(60)).await
    }

    async fn await_ready(&self, wait: Duration) -> anyhow::Result<()> {
        let url = self.admin_url();
        let t = Instant::now();
        let ok = wait_until(wait, || async {
            let conn = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(2))
                .connect(&url)
                .await;
            match conn {
                Ok(pool) => {
                    pool.close().await;
                    true
                }
                Err(_) => false,
            }
        })
        .await;
        if !ok {
            bail!(
                "PostgreSQL cluster {} {} did not accept connections within {:?}",
                self.version,
                self.name,
                t.elapsed()
            );
        }
        Ok(())
    }

    /// Stops and drops the cluster (data and configuration).
    pub async fn remove(&mut self) {
        if !self.created {
            return;
        }
        if let Err(e) = run_cmd(
            "pg_dropcluster",
            &["--stop", &self.version, &self.name],
            "dropping the PostgreSQL cluster",
        )
        .await
        {
            eprintln!("warning: {e:#}");
        }
        self.created = false;
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.created {
            run_cmd_blocking("pg_dropcluster", &["--stop", &self.version, &self.name]);
        }
    }
}

/// The highest PostgreSQL major version installed.
fn installed_version() -> anyhow::Result<String> {
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no /usr/lib/postgresql: is PostgreSQL installed? (scripts/services.sh)")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|v| v.to_string())
        .context("no PostgreSQL version under /usr/lib/postgresql")
}
