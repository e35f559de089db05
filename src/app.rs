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
use tonic_health::ServingStatus;
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

use crate::authzen::{self, AuthzenApi};
use crate::config::Config;
use crate::email::mailer::Mailer;
use crate::email::worker::{self, WorkerSettings};
use crate::grpc::access::AccessApi;
use crate::grpc::auth::Identity;
use crate::grpc::body::{BodyGuardLayer, BodyLimits, ByteBudget};
use crate::grpc::ext_authz::ExtAuthzApi;
use crate::grpc::identify::IdentifyLayer;
use crate::grpc::limits::LimitLayer;
use crate::grpc::listener::{self, ListenerSettings, ListenerStats};
use crate::grpc::observe::ObserveLayer;
use crate::grpc::readiness;
use crate::grpc::router::Router;
use crate::grpc::team::TeamApi;
use crate::grpc::tls::TlsAcceptor;
use crate::grpc::watch::WatchApi;
use crate::grpc::web::{AllowedOrigins, WebLayer};
use crate::index::AuthzIndex;
use crate::metrics::{self, Metrics};
use crate::pb::access_service_server::AccessServiceServer;
use crate::pb::envoy::authorization_server::AuthorizationServer;
use crate::pb::team_service_server::TeamServiceServer;
use crate::pb::watch_service_server::WatchServiceServer;
use crate::service::watch::{Hub, WatchSettings};
use crate::service::{ServiceSettings, Services};
use crate::storage::{Store, feed, placer};

/// A running server.
pub struct Running {
    /// The address actually bound (useful with port 0).
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
    worker: JoinHandle<()>,
    readiness: JoinHandle<()>,
    feed: Option<JoinHandle<()>>,
    placer: Option<JoinHandle<()>>,
    /// Records grants whose end has passed.
    ends: JoinHandle<()>,
    watch: JoinHandle<()>,
    metrics_server: Option<JoinHandle<()>>,
    authzen_server: Option<JoinHandle<()>>,
    /// Where the AuthZEN API is served, if it is.
    pub authzen_addr: Option<SocketAddr>,
    /// Where Prometheus metrics are served, if they are.
    pub metrics_addr: Option<SocketAddr>,
    index: Arc<AuthzIndex>,
    store: Store,
}

impl Running {
    /// Stops accepting calls, lets in-flight calls finish, stops the worker.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.server.await.context("server task")?;
        if let Some(authzen) = self.authzen_server {
            authzen.await.context("AuthZEN server task")?;
        }
        let _ = self.worker.await;
        let _ = self.readiness.await;
        let _ = self.ends.await;
        if let Some(placer) = self.placer {
            let _ = placer.await;
            // Calls that finished during the drain committed after the placer stopped: place
            // them now, so that no other process must sweep them up.
            let _ = crate::storage::changelog::place(self.store.reader()).await;
        }
        if let Some(feed) = self.feed {
            let _ = feed.await;
        }
        let _ = self.watch.await;
        if let Some(metrics) = self.metrics_server {
            let _ = metrics.await;
        }
        let stats = self.index.stats();
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
    let tls = TlsAcceptor::from_config(config)?;
    // With the AuthZEN listener, both listeners' caps together must fit the file limit.
    let listeners = if config.authzen_listen.is_some() { 2 } else { 1 };
    let max_connections =
        (listener::fit_to_file_limit(config.max_connections.saturating_mul(listeners)) / listeners)
            .max(1);
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let authzen_listener = match config.authzen_listen {
        Some(at) => Some(
            TcpListener::bind(at)
                .await
                .with_context(|| format!("cannot listen on {at} (--authzen-listen)"))?,
        ),
        None => None,
    };

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

    let index = services.index();
    let postgres = store.backend() == sea_orm::DbBackend::Postgres;
    let feed = postgres.then(|| {
        feed::spawn(
            store.clone(),
            index.clone(),
            services.log_head(),
            services.unplaced(),
            stopped.clone(),
        )
    });

    let (hub, watch) = Hub::start(
        store.clone(),
        services.log_head(),
        services.unplaced(),
        WatchSettings { buffer: config.watch_buffer, retention: config.change_retention },
        stopped.clone(),
    )
    .await
    .context("reading the change log")?;
    let ends = crate::service::team::grants::spawn_recorder(services.clone(), stopped.clone());
    let placer = postgres.then(|| {
        let hub = hub.clone();
        placer::spawn(
            store.clone(),
            services.unplaced(),
            move || hub.watched(),
            services.log_head(),
            stopped.clone(),
        )
    });

    let limits = LimitLayer::new(
        config.max_in_flight,
        Duration::from_millis(config.request_timeout_ms),
        config.max_watch_streams,
    );
    let budget = Arc::new(ByteBudget::new(config.max_buffered_request_bytes));
    let listener_stats = Arc::new(ListenerStats::default());
    let authzen_stats = authzen_listener.as_ref().map(|_| Arc::new(ListenerStats::default()));
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (metrics_addr, metrics_server) = match config.metrics_listen {
        Some(addr) => {
            let sources = metrics::Sources {
                store: store.clone(),
                index: index.clone(),
                edge: metrics::EdgeSources {
                    listener: listener_stats.clone(),
                    authzen_listener: authzen_stats.clone(),
                    budget: budget.clone(),
                    shed: limits.shed_counter(),
                },
                watch: metrics::WatchSources {
                    stats: hub.stats(),
                    refused: limits.streams_refused_counter(),
                },
                ready: ready.clone(),
            };
            let (bound, task) =
                metrics::serve(addr, metrics.clone(), sources, stopped.clone()).await?;
            (Some(bound), Some(task))
        }
        None => (None, None),
    };

    health.set_serving::<TeamServiceServer<TeamApi>>().await;
    health.set_serving::<AccessServiceServer<AccessApi>>().await;
    health.set_serving::<WatchServiceServer<WatchApi>>().await;
    health.set_serving::<AuthorizationServer<ExtAuthzApi>>().await;
    health.set_service_status("", ServingStatus::Serving).await;
    let readiness = {
        let free_slots = {
            let limits = limits.clone();
            Box::new(move || limits.free_slots())
        };
        let signals = readiness::Signals {
            store: store.clone(),
            listener: listener_stats.clone(),
            shed: limits.shed_counter(),
            free_slots,
        };
        let served = vec![
            <TeamServiceServer<TeamApi> as tonic::server::NamedService>::NAME,
            <AccessServiceServer<AccessApi> as tonic::server::NamedService>::NAME,
            <WatchServiceServer<WatchApi> as tonic::server::NamedService>::NAME,
            <AuthorizationServer<ExtAuthzApi> as tonic::server::NamedService>::NAME,
        ];
        tokio::spawn(readiness::watch(health, served, signals, ready, stopped.clone()))
    };

    let largest = config.max_batch_request_bytes;
    let router = Router {
        access: AccessServiceServer::new(AccessApi::new(services.clone(), metrics.clone()))
            .max_decoding_message_size(largest),
        ext_authz: AuthorizationServer::new(ExtAuthzApi::new(
            services.clone(),
            metrics.clone(),
            config.ext_authz_payload_key.clone(),
        ))
        .max_decoding_message_size(largest),
        team: TeamServiceServer::new(TeamApi::new(services.clone()))
            .max_decoding_message_size(largest),
        watch: WatchServiceServer::new(WatchApi::new(hub)),
        health: BoxCloneSyncService::new(health_service),
        reflection_v1: BoxCloneSyncService::new(reflection_v1),
        reflection_v1alpha: BoxCloneSyncService::new(reflection_v1alpha),
    };
    let authzen_parts = authzen::Parts {
        services,
        metrics: metrics.clone(),
        identity: identity.clone(),
        budget: budget.clone(),
        permits: limits.permits(),
        shed: limits.shed_counter(),
    };
    let body_limits = BodyLimits {
        max_request_bytes: config.max_request_bytes,
        max_batch_request_bytes: config.max_batch_request_bytes,
        timeout: Duration::from_millis(config.request_body_timeout_ms),
        budget,
        open_budget: Arc::new(ByteBudget::new(crate::grpc::body::OPEN_BUDGET_BYTES)),
    };
    let stack = ServiceBuilder::new()
        // Outermost: a gRPC-Web call is translated before anything else sees it, so that every
        // layer below guards it as it guards a native call.
        .option_layer(config.grpc_web.then(|| {
            WebLayer::new(AllowedOrigins::new(&config.cors_allowed_origins), metrics.clone())
        }))
        // Then, so that refused and shed calls are counted and traced too.
        .layer(ObserveLayer::new(metrics))
        // Before anything is taken for the call: its slot, its body.
        .layer(IdentifyLayer::new(identity.clone()))
        .layer(limits)
        .layer(BodyGuardLayer::new(body_limits))
        .service(router);
    let listener_settings = |http1: bool, date_header: bool| ListenerSettings {
        max_connections,
        // Below the cap even when the file-descriptor limit lowered it, so that newcomers can
        // always push a pending connection out.
        max_pending: config.max_pending_connections.min(max_connections / 2).max(1),
        handshake_timeout: Duration::from_millis(config.handshake_timeout_ms),
        idle_timeout: Duration::from_secs(config.idle_timeout_secs),
        keepalive_interval: Duration::from_secs(config.http2_keepalive_interval_secs),
        keepalive_timeout: Duration::from_secs(config.http2_keepalive_timeout_secs),
        max_streams: config.max_streams_per_connection,
        max_header_list_bytes: config.max_header_list_bytes,
        shutdown_grace: Duration::from_secs(config.shutdown_grace_secs),
        http1,
        date_header,
    };
    let (authzen_addr, authzen_server) = match authzen_listener {
        Some(bound) => {
            let api = AuthzenApi::new(
                authzen_parts,
                authzen::Settings {
                    max_request_bytes: config.max_request_bytes,
                    max_batch_request_bytes: config.max_batch_request_bytes,
                    body_timeout: Duration::from_millis(config.request_body_timeout_ms),
                    request_timeout: Duration::from_millis(config.request_timeout_ms),
                    base_url: config.authzen_base_url.clone(),
                    tls: tls.is_some(),
                },
            );
            let at = bound.local_addr()?;
            tracing::info!(addr = %at, "serving the AuthZEN API");
            if tls.is_none() && !at.ip().is_loopback() {
                tracing::warn!(
                    addr = %at,
                    "the AuthZEN API is served without TLS off loopback: service tokens cross the network in clear text"
                );
            }
            let task = tokio::spawn(listener::serve(
                bound,
                tls.as_ref().map(TlsAcceptor::with_http1),
                api,
                listener_settings(true, true),
                authzen_stats.clone().expect("made with the AuthZEN listener"),
                stopped.clone(),
            ));
            (Some(at), Some(task))
        }
        None => (None, None),
    };
    let server = tokio::spawn(listener::serve(
        listener,
        tls,
        stack,
        listener_settings(config.grpc_web, false),
        listener_stats,
        stopped,
    ));
    if config.auth == crate::config::AuthMode::Dev {
        tracing::warn!(
            "dev auth: callers are trusted to name themselves with x-user-id; do not expose this port"
        );
    }
    tracing::info!(%addr, "serving gRPC");
    Ok(Running {
        addr,
        stop,
        server,
        worker,
        readiness,
        feed,
        placer,
        ends,
        watch,
        metrics_server,
        metrics_addr,
        authzen_server,
        authzen_addr,
        index,
        store,
    })
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
