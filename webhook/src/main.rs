use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    webhook::tls::install_default_provider();
    webhook::args::run(webhook::args::Args::parse()).await
}
