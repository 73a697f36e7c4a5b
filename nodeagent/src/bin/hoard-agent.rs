//! Stand-alone agent binary for testing; production runs `hoard agent`.

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(name = "hoard-agent", about = "Hoard's node agent")]
struct Cli {
    #[command(flatten)]
    agent: nodeagent::Args,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match nodeagent::run(Cli::parse().agent) {
        Ok(()) => ExitCode::SUCCESS,
        // already logged as one line and written to --termination-log
        Err(_) => ExitCode::FAILURE,
    }
}
