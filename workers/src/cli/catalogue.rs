//! `fleet catalogue seed`: a generated catalogue for development and benchmarks.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::catalogue::{self, Spec};

#[derive(Debug, Subcommand)]
pub enum CatalogueCommand {
    /// Generate N content documents into the Turkish and the international index.
    ///
    /// With --out, writes an osmem-server seed directory (load it with
    /// `osmem-server --seed DIR`, much faster than _bulk); with --url, creates
    /// the indices on a running Elasticsearch/OpenSearch and bulk-loads them.
    Seed(SeedArgs),
}

#[derive(Debug, Args)]
pub struct SeedArgs {
    /// Documents per index.
    #[arg(long, default_value_t = 20_000)]
    pub docs: u64,
    /// Write an osmem-server seed directory here.
    #[arg(long, conflicts_with = "url", required_unless_present = "url")]
    pub out: Option<PathBuf>,
    /// Bulk-load into this cluster instead.
    #[arg(long)]
    pub url: Option<String>,
    /// Index names to fill.
    #[arg(long, value_delimiter = ',', default_value = "content_tr,content_intl")]
    pub indices: Vec<String>,
    /// Random seed (same seed, same documents).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

pub async fn run(cmd: CatalogueCommand) -> anyhow::Result<ExitCode> {
    let CatalogueCommand::Seed(a) = cmd;
    let spec = Spec {
        docs: a.docs,
        seed: a.seed,
        ..Spec::default()
    };
    let indices: Vec<&str> = a.indices.iter().map(String::as_str).collect();
    let n = match (&a.out, &a.url) {
        (Some(dir), _) => {
            let n = catalogue::write_seed_dir(dir, &indices, &spec)?;
            println!(
                "Wrote {n} documents ({} per index) to {}; start with: osmem-server --seed {}",
                a.docs,
                dir.display(),
                dir.display()
            );
            n
        }
        (None, Some(url)) => {
            let n = catalogue::bulk_load(url, &indices, &spec).await?;
            println!("Loaded {n} documents into {url} ({}).", indices.join(", "));
            n
        }
        // clap requires one of them.
        (None, None) => 0,
    };
    Ok(if n > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
