//! `fleet`: the invalidation fleet's one binary. Parses the command line and
//! hands over to the library; everything else lives in `fleet_workers`.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // `fleet dlq peek … | head` must end quietly, as other Unix tools do,
    // instead of panicking on a closed stdout.
    // SAFETY: restoring the default disposition of a signal at start-up,
    // before any thread writes to stdout.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = fleet_workers::cli::Cli::parse();
    fleet_workers::cli::main(cli).await
}
