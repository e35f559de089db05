//! The `roster` binary: parse configuration, set up logging, run the chosen command.

use clap::Parser;
use roster::config::{Cli, Command};
use roster::{app, telemetry};

// Requests are decoded on one worker thread and often freed on another; mimalloc frees across
// threads without the arena lock contention the system allocator shows under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = cli.config;
    let telemetry = telemetry::init(config.log_format)?;
    let outcome = run(cli.command, config, telemetry.exports_traces()).await;
    // The exporter's flush blocks; keep it off the runtime's worker threads.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    outcome
}

async fn run(
    command: Option<Command>,
    config: roster::config::Config,
    exports_traces: bool,
) -> anyhow::Result<()> {
    match command.unwrap_or(Command::Serve) {
        Command::ServiceToken { name } => {
            let (token, line) = roster::grpc::auth::new_service_token(&name)?;
            println!("token (give it to the service; it is shown only now):\n{token}\n");
            println!("line for --service-tokens-file:\n{line}");
        }
        Command::DevToken { user_id, email, unverified, valid_secs } => {
            println!("{}", dev_token(&config, user_id, email, unverified, valid_secs)?);
        }
        Command::Migrate => {
            app::open_store(&config).await?.close().await;
            tracing::info!("migrations applied");
        }
        Command::Serve => {
            tracing::info!(?config, exports_traces, "starting");
            let running = app::start(&config).await?;
            let grace = std::time::Duration::from_secs(config.shutdown_grace_secs);
            running.run_until(app::shutdown_signal(), grace).await?;
            tracing::info!("stopped");
        }
    }
    Ok(())
}

fn dev_token(
    config: &roster::config::Config,
    user_id: String,
    email: Option<String>,
    unverified: bool,
    valid_secs: u64,
) -> anyhow::Result<String> {
    use anyhow::Context as _;
    use roster::grpc::jwt;
    let secret_file = config
        .jwt_secret_file
        .as_deref()
        .context("dev-token signs with --jwt-secret-file; name the server's secret file")?;
    let issuer = config.jwt_issuer.as_deref().context("dev-token needs --jwt-issuer")?;
    let audience = config.jwt_audience.as_deref().context("dev-token needs --jwt-audience")?;
    let secret = jwt::read_secret_file(secret_file)?;
    let claims = jwt::Claims { sub: user_id, email, email_verified: (!unverified).then_some(true) };
    jwt::sign_dev_token(
        &secret,
        issuer,
        audience,
        &claims,
        std::time::Duration::from_secs(valid_secs),
    )
}
