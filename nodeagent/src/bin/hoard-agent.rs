//! Stand-alone agent binary for testing; production runs `hoard agent`.

use clap::Parser;

#[derive(Parser)]
#[command(name = "hoard-agent", about = "Hoard's node agent")]
struct Cli {
    #[command(flatten)]
    agent: nodeagent::Args,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    nodeagent::run(Cli::parse().agent)
}
