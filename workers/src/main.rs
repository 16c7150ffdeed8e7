//! `fleet`: the invalidation fleet's one binary. Parses the command line and
//! hands over to the library; everything else lives in `fleet_workers`.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = fleet_workers::cli::Cli::parse();
    fleet_workers::cli::main(cli).await
}
