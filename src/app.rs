//! Binds the listener, runs migrations, serves the gRPC services with health and reflection,
//! runs the outbox worker, and stops gracefully.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt as _;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity as TlsIdentity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;

use crate::config::Config;
use crate::email::mailer::Mailer;
use crate::email::worker::{self, WorkerSettings};
use crate::grpc::access::AccessApi;
use crate::grpc::auth::Identity;
use crate::grpc::limits::LimitLayer;
use crate::grpc::observe::ObserveLayer;
use crate::grpc::socket::Coalesced;
use crate::grpc::team::TeamApi;
use crate::metrics::{self, Metrics};
use crate::pb::access_service_server::AccessServiceServer;
use crate::pb::team_service_server::TeamServiceServer;
use crate::service::{ServiceSettings, Services};
use crate::storage::snapshot::AuthzCache;
use crate::storage::{Store, feed};

/// Largest request Roster decodes; a full BatchAuthorize of 1000 checks fits well within it.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// A running server.
pub struct Running {
    /// The address actually bound (useful with port 0).
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    worker: JoinHandle<()>,
    feed: Option<JoinHandle<()>>,
    metrics_server: Option<JoinHandle<()>>,
    /// Where Prometheus metrics are served, if they are.
    pub metrics_addr: Option<SocketAddr>,
    cache: Arc<AuthzCache>,
    store: Store,
}

impl Running {
    /// Stops accepting calls, lets in-flight calls finish, stops the worker.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.server.await.context("server task")?.context("serving")?;
        let _ = self.worker.await;
        if let Some(feed) = self.feed {
            let _ = feed.await;
        }
        if let Some(metrics) = self.metrics_server {
            let _ = metrics.await;
        }
        let stats = self.cache.stats();
        tracing::info!(
            hits = stats.hits,
            misses = stats.misses,
            entries = stats.entries,
            patches = stats.patches,
            "authorization cache"
        );
        self.store.close().await;
        Ok(())
    }

    /// Serves until `signal` completes, then stops within `grace`.
    pub async fn run_until(
        self,
        signal: impl Future<Output = ()>,
        grace: Duration,
    ) -> anyhow::Result<()> {
        signal.await;
        tracing::info!("shutting down; finishing in-flight calls");
        match tokio::time::timeout(grace, self.stop()).await {
            Ok(result) => result,
            Err(_) => anyhow::bail!("in-flight calls did not finish within {grace:?}"),
        }
    }
}

/// Connects to the database and applies migrations.
pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    let store = Store::connect(&config.database_url).await?;
    store.migrate().await?;
    Ok(store)
}

/// Starts serving on `config.listen` and returns once migrations are applied and health
/// reports SERVING.
pub async fn start(config: &Config) -> anyhow::Result<Running> {
    config.validate()?;
    let identity = Arc::new(Identity::from_config(config)?);
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", ServingStatus::NotServing).await;

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // So that clients can decode the google.rpc.BadRequest details of errors.
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let store = open_store(config).await?;
    let mailer = match &config.smtp_url {
        Some(url) => Mailer::smtp(url)?,
        None => Mailer::files(config.mail_dir.clone())?,
    };
    let from = config
        .mail_from
        .parse()
        .with_context(|| format!("--mail-from {:?} is not a valid mailbox", config.mail_from))?;
    let signal = Arc::new(Notify::new());
    let metrics = Arc::new(Metrics::new());
    let services =
        Services::new(store.clone(), ServiceSettings::from_config(config), signal.clone());

    let (stop, stopped) = watch::channel(false);
    let worker = tokio::spawn(worker::run(
        store.clone(),
        mailer,
        WorkerSettings {
            from,
            retry_base: config.mail_retry_base(),
            retry_max: config.mail_retry_max(),
            max_attempts: config.mail_max_attempts,
            poll_interval: Duration::from_secs(1),
            claim_lease: Duration::from_secs(config.mail_claim_lease_secs),
            metrics: metrics.clone(),
            invite_url: config.invite_url.clone(),
        },
        signal,
        stopped.clone(),
    ));

    let cache = services.authz_cache();
    let feed = (store.backend() == sea_orm::DbBackend::Postgres)
        .then(|| feed::spawn(store.clone(), cache.clone(), stopped.clone()));
    let (metrics_addr, metrics_server) = match config.metrics_listen {
        Some(addr) => {
            let sources = metrics::Sources { store: store.clone(), cache: cache.clone() };
            let (bound, task) =
                metrics::serve(addr, metrics.clone(), sources, stopped.clone()).await?;
            (Some(bound), Some(task))
        }
        None => (None, None),
    };

    health.set_serving::<TeamServiceServer<TeamApi>>().await;
    health.set_serving::<AccessServiceServer<AccessApi>>().await;
    health.set_service_status("", ServingStatus::Serving).await;

    let team = TeamServiceServer::new(TeamApi::new(services.clone(), identity.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let access = AccessServiceServer::new(AccessApi::new(services, identity, metrics.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let mut shutdown = stopped;
    let mut builder = Server::builder();
    if let Some(tls) = tls_config(config)? {
        builder = builder.tls_config(tls).context("configuring TLS")?;
    }
    let limits =
        LimitLayer::new(config.max_in_flight, Duration::from_millis(config.request_timeout_ms));
    let server = tokio::spawn(
        builder
            // Outermost, so that calls shed by the limits are counted and traced too.
            .layer(ObserveLayer::new(metrics))
            .layer(limits)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(team)
            .add_service(access)
            // Small gRPC replies must not wait for Nagle's algorithm (40 ms tails otherwise).
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener)
                    .with_nodelay(Some(true))
                    .map(|accepted| accepted.map(Coalesced::new)),
                async move {
                    let _ = shutdown.wait_for(|stop| *stop).await;
                },
            ),
    );
    if config.auth == crate::config::AuthMode::Dev {
        tracing::warn!(
            "dev auth: callers are trusted to name themselves with x-user-id; do not expose this port"
        );
    }
    tracing::info!(%addr, "serving gRPC");
    Ok(Running { addr, stop, server, worker, feed, metrics_server, metrics_addr, cache, store })
}

/// The listener's TLS settings, if TLS is configured. Client certificates are optional (end
/// users connect without one) but, when presented, must be signed by --tls-client-ca.
fn tls_config(config: &Config) -> anyhow::Result<Option<ServerTlsConfig>> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))
    };
    let mut tls = ServerTlsConfig::new()
        .identity(TlsIdentity::from_pem(read(cert, "--tls-cert")?, read(key, "--tls-key")?));
    if let Some(ca) = &config.tls_client_ca {
        tls = tls
            .client_ca_root(Certificate::from_pem(read(ca, "--tls-client-ca")?))
            .client_auth_optional(true);
    }
    Ok(Some(tls))
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
}
