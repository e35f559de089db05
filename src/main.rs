//! The `roster` binary: parse configuration, set up logging, run the chosen command.

use clap::Parser;
use roster::config::{Cli, Command};
use roster::{app, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = cli.config;
    telemetry::init(config.log_format);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Migrate => {
            app::open_store(&config).await?.close().await;
            tracing::info!("migrations applied");
        }
        Command::Serve => {
            tracing::info!(?config, "starting");
            let running = app::start(&config).await?;
            let grace = std::time::Duration::from_secs(config.shutdown_grace_secs);
            running.run_until(app::shutdown_signal(), grace).await?;
            tracing::info!("stopped");
        }
    }
    Ok(())
}
