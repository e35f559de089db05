//! Prometheus metrics, served in the text exposition format on `--metrics-listen` at `/metrics`.
//!
//! Counters on the hot path are plain atomics created up front; values that live elsewhere (the
//! authorization index's counters, the outbox, the connection pool) are read at scrape time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::domain::Permission;
use crate::index::AuthzIndex;
use crate::storage::{Store, repo};

/// Labels of the per-call metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    /// The full gRPC method, `/package.Service/Method`, or `other` for a path no service has.
    method: &'static str,
    /// The gRPC status code name, for example `OK` or `PERMISSION_DENIED`.
    code: &'static str,
}

/// Labels of the decision counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    permission: &'static str,
    decision: &'static str,
}

/// A request latency histogram: 50 µs to about 3 s, so that a decision answered from memory
/// sits in the first buckets.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.5, 13))
}

/// Every metric Roster keeps in memory.
pub struct Metrics {
    registry: Registry,
    calls: Family<CallLabels, Counter>,
    call_seconds: Family<CallLabels, Histogram>,
    /// Indexed by the permission's position in [`Permission::ALL`], then denied (0) / allowed (1).
    decisions: Vec<[Counter; 2]>,
    delivery_failures: Counter,
    authzen: Family<AuthzenLabels, Counter>,
    authzen_seconds: Family<AuthzenLabels, Histogram>,
    /// Indexed by [`HttpRefusal`].
    http_refused: [Counter; HttpRefusal::ALL.len()],
}

/// Why the main port answered an HTTP request before any gRPC call began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpRefusal {
    /// A gRPC-Web call from a page of an origin not in `--cors-allowed-origin`.
    OriginNotAllowed,
    /// A CORS preflight refused: its origin is not allowed, or it asks for a method other
    /// than POST.
    PreflightRefused,
    /// An OPTIONS request without an Origin: no browser's preflight.
    NotAPreflight,
    /// HTTP/1.1 that is not gRPC-Web.
    NotGrpc,
}

impl HttpRefusal {
    const ALL: [HttpRefusal; 4] = [
        HttpRefusal::OriginNotAllowed,
        HttpRefusal::PreflightRefused,
        HttpRefusal::NotAPreflight,
        HttpRefusal::NotGrpc,
    ];

    /// Its place in [`HttpRefusal::ALL`].
    fn index(self) -> usize {
        match self {
            HttpRefusal::OriginNotAllowed => 0,
            HttpRefusal::PreflightRefused => 1,
            HttpRefusal::NotAPreflight => 2,
            HttpRefusal::NotGrpc => 3,
        }
    }

    /// The metric label.
    fn label(self) -> &'static str {
        match self {
            HttpRefusal::OriginNotAllowed => "origin_not_allowed",
            HttpRefusal::PreflightRefused => "preflight_refused",
            HttpRefusal::NotAPreflight => "not_a_preflight",
            HttpRefusal::NotGrpc => "not_grpc",
        }
    }
}

/// Labels of the HTTP refusals metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    reason: &'static str,
}

/// Labels of the AuthZEN requests metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthzenLabels {
    /// The endpoint, such as `evaluation` or `search_subject`, or `other`.
    endpoint: &'static str,
    /// The HTTP status code.
    status: u16,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates the registry with every metric at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("roster");
        let calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "rpc_calls",
            "gRPC calls finished, by method and status code",
            calls.clone(),
        );
        let call_seconds = Family::<CallLabels, Histogram>::new_with_constructor(latency);
        registry.register(
            "rpc_duration_seconds",
            "Time from a call's arrival to its last response byte, by method and status code",
            call_seconds.clone(),
        );
        let decision_family = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "authorize_decisions",
            "Authorization decisions (Authorize and each check of BatchAuthorize), by permission and outcome",
            decision_family.clone(),
        );
        let decisions = Permission::ALL
            .iter()
            .map(|p| {
                [false, true].map(|allowed| {
                    decision_family
                        .get_or_create(&DecisionLabels {
                            permission: p.name(),
                            decision: if allowed { "allowed" } else { "denied" },
                        })
                        .clone()
                })
            })
            .collect();
        let delivery_failures = Counter::default();
        registry.register(
            "outbox_delivery_failures",
            "Invitation email attempts that failed in this process (each is retried or marked failed)",
            delivery_failures.clone(),
        );
        let authzen = Family::<AuthzenLabels, Counter>::default();
        registry.register(
            "authzen_requests",
            "AuthZEN API requests answered, by endpoint and HTTP status",
            authzen.clone(),
        );
        let authzen_seconds = Family::<AuthzenLabels, Histogram>::new_with_constructor(latency);
        registry.register(
            "authzen_request_duration_seconds",
            "Time from an AuthZEN request's arrival to its answer, by endpoint and HTTP status",
            authzen_seconds.clone(),
        );
        let refusals = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "http_refused",
            "HTTP requests the main port answered before any gRPC call began, by reason: CORS and gRPC-Web refusals",
            refusals.clone(),
        );
        let http_refused = HttpRefusal::ALL.map(|reason| {
            refusals.get_or_create(&RefusalLabels { reason: reason.label() }).clone()
        });
        Self {
            registry,
            calls,
            call_seconds,
            decisions,
            delivery_failures,
            authzen,
            authzen_seconds,
            http_refused,
        }
    }

    /// Records an answered AuthZEN request and how long it took.
    pub fn record_authzen(
        &self,
        endpoint: &'static str,
        status: tonic::codegen::http::StatusCode,
        elapsed: Duration,
    ) {
        let labels = AuthzenLabels { endpoint, status: status.as_u16() };
        self.authzen.get_or_create(&labels).inc();
        self.authzen_seconds.get_or_create(&labels).observe(elapsed.as_secs_f64());
    }

    /// Records an HTTP request refused before any gRPC call began.
    pub fn record_http_refusal(&self, reason: HttpRefusal) {
        self.http_refused[reason.index()].inc();
    }

    /// Records a finished call of `method`, a label from [`method_label`].
    pub fn record_call(&self, method: &'static str, code: tonic::Code, elapsed: Duration) {
        let labels = CallLabels { method, code: code_name(code) };
        self.calls.get_or_create(&labels).inc();
        self.call_seconds.get_or_create(&labels).observe(elapsed.as_secs_f64());
    }

    /// Records one authorization decision.
    pub fn record_decision(&self, permission: Permission, allowed: bool) {
        self.decisions[permission as usize][usize::from(allowed)].inc();
    }

    /// Records a failed email attempt.
    pub fn record_delivery_failure(&self) {
        self.delivery_failures.inc();
    }

    /// The exposition text, with the values read from `sources` at this moment.
    pub async fn render(&self, sources: &Sources) -> String {
        let outbox = repo::count_outbox_by_state(sources.store.reader()).await;
        let snapshot = Snapshot {
            cache: sources.index.stats(),
            pool: sources.store.pool_use(),
            outbox: match outbox {
                Ok(counts) => Some(counts.into_iter().map(|(s, n)| (s.as_str(), n)).collect()),
                Err(err) => {
                    tracing::warn!(error = %err, "metrics: cannot count the outbox");
                    None
                }
            },
            connections: sources.edge.listener.snapshot(),
            authzen_connections: sources.edge.authzen_listener.as_ref().map(|l| l.snapshot()),
            buffered_request_bytes: sources.edge.budget.held(),
            shed: sources.edge.shed.load(std::sync::atomic::Ordering::Relaxed),
            watch: WatchSnapshot::read(&sources.watch),
        };
        let mut text = String::new();
        let encoded = prometheus_client::encoding::text::encode_registry(&mut text, &self.registry)
            .and_then(|()| {
                let mut scraped = Registry::with_prefix("roster");
                scraped.register_collector(Box::new(snapshot));
                prometheus_client::encoding::text::encode_registry(&mut text, &scraped)
            })
            .and_then(|()| prometheus_client::encoding::text::encode_eof(&mut text));
        if let Err(err) = encoded {
            tracing::warn!(error = %err, "metrics: cannot encode");
        }
        text
    }
}

/// Where the scrape-time values come from.
#[derive(Clone)]
pub struct Sources {
    /// The database, for the outbox and the pool.
    pub store: Store,
    /// The Authorize index, for its counters.
    pub index: Arc<AuthzIndex>,
    /// The server's edge: connections, request bytes, shed calls.
    pub edge: EdgeSources,
    /// WatchService's streams.
    pub watch: WatchSources,
    /// Whether the server can serve, as its health service reports for Roster's services.
    pub ready: Arc<std::sync::atomic::AtomicBool>,
}

/// WatchService's counters, read at scrape time.
#[derive(Clone)]
pub struct WatchSources {
    /// The change log hub's counters.
    pub stats: Arc<crate::service::watch::WatchStats>,
    /// Streams refused at --max-watch-streams.
    pub refused: Arc<std::sync::atomic::AtomicU64>,
}

/// The counters of the server's edge, read at scrape time.
#[derive(Clone)]
pub struct EdgeSources {
    /// The gRPC listener's connection counters.
    pub listener: Arc<crate::grpc::listener::ListenerStats>,
    /// The AuthZEN listener's, when it is served.
    pub authzen_listener: Option<Arc<crate::grpc::listener::ListenerStats>>,
    /// Request bytes held while messages arrive.
    pub budget: Arc<crate::grpc::body::ByteBudget>,
    /// Calls shed at the in-flight limit.
    pub shed: Arc<std::sync::atomic::AtomicU64>,
}

/// Values read for one scrape.
#[derive(Debug)]
struct Snapshot {
    cache: crate::index::CacheStats,
    pool: crate::storage::PoolUse,
    outbox: Option<Vec<(&'static str, i64)>>,
    connections: crate::grpc::listener::ListenerSnapshot,
    authzen_connections: Option<crate::grpc::listener::ListenerSnapshot>,
    buffered_request_bytes: usize,
    shed: u64,
    watch: WatchSnapshot,
}

/// WatchService's counters for one scrape.
#[derive(Debug)]
struct WatchSnapshot {
    streams: i64,
    refused: u64,
    changes_sent: u64,
    cut_off: u64,
    tail_position: u64,
    pruned_through: u64,
}

impl WatchSnapshot {
    fn read(sources: &WatchSources) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = &sources.stats;
        Self {
            streams: stats.streams.load(Relaxed),
            refused: sources.refused.load(Relaxed),
            changes_sent: stats.changes_sent.load(Relaxed),
            cut_off: stats.cut_off.load(Relaxed),
            tail_position: stats.tail_position.load(Relaxed),
            pruned_through: stats.pruned_through.load(Relaxed),
        }
    }
}

/// Encodes one value read at scrape time as a metric of its own.
fn encode_one(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: impl EncodeMetric,
) -> std::fmt::Result {
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// A listener's connection counters, as `{prefix}connections_*`.
fn encode_connections(
    encoder: &mut DescriptorEncoder,
    prefix: &str,
    port: &str,
    connections: &crate::grpc::listener::ListenerSnapshot,
) -> std::fmt::Result {
    let gauge = |n: usize| ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX));
    let name = |what: &str| format!("{prefix}connections_{what}");
    encode_one(
        encoder,
        &name("open"),
        &format!("Client connections open on {port}"),
        gauge(connections.open),
    )?;
    encode_one(
        encoder,
        &name("pending"),
        &format!(
            "Open connections on {port} that have not yet carried a request with a valid credential"
        ),
        gauge(connections.pending),
    )?;
    encode_one(
        encoder,
        &name("max"),
        &format!(
            "The most client connections that may be open on {port} (--max-connections, within the file-descriptor limit)"
        ),
        gauge(connections.capacity),
    )?;
    encode_one(
        encoder,
        &name("refused"),
        &format!("Connections to {port} closed at accept because --max-connections were open"),
        ConstCounter::new(connections.refused),
    )?;
    encode_one(
        encoder,
        &name("evicted"),
        &format!(
            "Pending connections to {port} closed to make room for a new one (--max-pending-connections)"
        ),
        ConstCounter::new(connections.evicted),
    )?;
    encode_one(
        encoder,
        &name("timed_out"),
        &format!("Connections to {port} closed by the handshake or idle timeout"),
        ConstCounter::new(connections.timed_out),
    )?;
    encode_one(
        encoder,
        &format!("{prefix}accept_errors"),
        &format!("Accepts on {port} that failed for lack of resources (file descriptors, memory)"),
        ConstCounter::new(connections.accept_errors),
    )
}

impl prometheus_client::collector::Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let (cache, pool) = (&self.cache, &self.pool);
        encode_one(
            &mut encoder,
            "authz_index_hits",
            "Checks answered from the in-memory authorization index",
            ConstCounter::new(cache.hits),
        )?;
        encode_one(
            &mut encoder,
            "authz_index_misses",
            "Checks that loaded an organization into the index or read the database",
            ConstCounter::new(cache.misses),
        )?;
        encode_one(
            &mut encoder,
            "authz_index_entries",
            "Rows held in the in-memory authorization index",
            ConstGauge::new(i64::try_from(cache.entries).unwrap_or(i64::MAX)),
        )?;
        encode_one(
            &mut encoder,
            "authz_index_absent_organizations",
            "Organization ids the authorization index remembers as not existing, so that checks naming them cost no query",
            ConstGauge::new(i64::try_from(cache.absent).unwrap_or(i64::MAX)),
        )?;
        encode_one(
            &mut encoder,
            "authz_index_patches",
            "Committed changes applied to a loaded organization's index in place of reloading it",
            ConstCounter::new(cache.patches),
        )?;
        encode_one(
            &mut encoder,
            "authz_index_in_use",
            "1 while checks may be answered from the index; 0 while it is disabled or bypassed because the invalidation feed is down",
            ConstGauge::new(i64::from(cache.in_use)),
        )?;
        encode_one(
            &mut encoder,
            "db_pool_connections_open",
            "Database connections open",
            ConstGauge::new(i64::from(pool.open)),
        )?;
        encode_one(
            &mut encoder,
            "db_pool_connections_in_use",
            "Database connections lent out to a query or transaction",
            ConstGauge::new(i64::from(pool.open.saturating_sub(pool.idle))),
        )?;
        encode_one(
            &mut encoder,
            "db_pool_connections_max",
            "The most connections the pool opens",
            ConstGauge::new(i64::from(pool.max)),
        )?;
        encode_connections(&mut encoder, "", "the gRPC port", &self.connections)?;
        if let Some(authzen) = &self.authzen_connections {
            encode_connections(&mut encoder, "authzen_", "the AuthZEN port", authzen)?;
        }
        let gauge = |n: usize| ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX));
        encode_one(
            &mut encoder,
            "request_bytes_buffered",
            "Bytes of request messages held while they arrive (bounded by --max-buffered-request-bytes)",
            gauge(self.buffered_request_bytes),
        )?;
        encode_one(
            &mut encoder,
            "calls_shed",
            "Calls refused at the in-flight limit (--max-in-flight)",
            ConstCounter::new(self.shed),
        )?;
        let watch = &self.watch;
        let position = |p: u64| ConstGauge::new(i64::try_from(p).unwrap_or(i64::MAX));
        encode_one(
            &mut encoder,
            "watch_streams_open",
            "WatchService streams (Watch and Snapshot) open",
            ConstGauge::new(watch.streams),
        )?;
        encode_one(
            &mut encoder,
            "watch_streams_refused",
            "WatchService streams refused because --max-watch-streams were open",
            ConstCounter::new(watch.refused),
        )?;
        encode_one(
            &mut encoder,
            "watch_changes_sent",
            "Changes sent on Watch streams",
            ConstCounter::new(watch.changes_sent),
        )?;
        encode_one(
            &mut encoder,
            "watch_streams_cut_off",
            "Watch streams ended because their consumer fell more than --watch-buffer changes behind",
            ConstCounter::new(watch.cut_off),
        )?;
        encode_one(
            &mut encoder,
            "change_log_tail_position",
            "The change log position this process's Watch streams are fed up to (the log's end as this process knows it while no stream is open)",
            position(watch.tail_position),
        )?;
        encode_one(
            &mut encoder,
            "change_log_pruned_through",
            "Change log positions up to this one were removed by retention (--change-retention)",
            position(watch.pruned_through),
        )?;
        if let Some(outbox) = &self.outbox {
            let mut family = encoder.encode_descriptor(
                "outbox_emails",
                "Invitation emails queued, waiting to retry, or failed for good (all replicas)",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for (state, count) in outbox {
                let labels = [("state", *state)];
                ConstGauge::new(*count).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// The label of every path that is not a method of Roster's.
pub const OTHER_METHOD: &str = "other";

/// The label for a request path: the path itself for a method Roster serves, `other` for any
/// other path, so that callers cannot grow label sets or span names without bound.
pub fn method_label(path: &str) -> &'static str {
    static METHODS: OnceLock<HashMap<String, &'static str>> = OnceLock::new();
    let methods = METHODS.get_or_init(|| {
        use prost::Message as _;
        let mut methods = HashMap::new();
        for set in [
            crate::pb::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ] {
            let Ok(set) = prost_types::FileDescriptorSet::decode(set) else { continue };
            for file in set.file {
                for service in &file.service {
                    for method in &service.method {
                        let path =
                            format!("/{}.{}/{}", file.package(), service.name(), method.name());
                        // Leaked once per process: a few dozen short strings.
                        let label: &'static str = Box::leak(path.clone().into_boxed_str());
                        methods.insert(path, label);
                    }
                }
            }
        }
        methods
    });
    methods.get(path).copied().unwrap_or(OTHER_METHOD)
}

/// The canonical upper-case name of a status code, as gRPC documents it.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Serves `GET /metrics`, `/livez` and `/readyz` on `addr` until `stopped` turns true. Returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    sources: Sources,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stopped.wait_for(|stop| *stop) => break,
            };
            let Ok((stream, _)) = accepted else {
                // Out of file descriptors, say: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let metrics = metrics.clone();
            let sources = sources.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let metrics = metrics.clone();
                    let sources = sources.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            respond(request, &metrics, &sources).await,
                        )
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                // A scraper sends its request at once; a client that dribbles headers is cut off.
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(5))
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    tracing::info!(addr = %bound, "serving metrics at /metrics");
    Ok((bound, task))
}

async fn respond(
    request: hyper::Request<hyper::body::Incoming>,
    metrics: &Metrics,
    sources: &Sources,
) -> hyper::Response<String> {
    let reply = |status: u16, content_type: &str, body: String| {
        hyper::Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(body)
            .unwrap_or_default()
    };
    match (request.method(), request.uri().path()) {
        (&hyper::Method::GET, "/metrics") => reply(
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(sources).await,
        ),
        // For probes that cannot speak gRPC over TLS (the kubelet's gRPC probes send
        // plaintext): the same answers as grpc.health.v1.Health.
        (&hyper::Method::GET, "/livez") => reply(200, "text/plain", "serving\n".into()),
        (&hyper::Method::GET, "/readyz") => {
            if sources.ready.load(std::sync::atomic::Ordering::Relaxed) {
                reply(200, "text/plain", "serving\n".into())
            } else {
                reply(503, "text/plain", "not serving\n".into())
            }
        }
        (_, "/metrics" | "/livez" | "/readyz") => {
            reply(405, "text/plain", "only GET is served\n".into())
        }
        _ => reply(
            404,
            "text/plain",
            "metrics are at /metrics; probes at /livez and /readyz\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_methods_keep_their_path_and_anything_else_is_other() {
        assert_eq!(
            method_label("/roster.v1.AccessService/Authorize"),
            "/roster.v1.AccessService/Authorize"
        );
        assert_eq!(method_label("/grpc.health.v1.Health/Check"), "/grpc.health.v1.Health/Check");
        assert_eq!(method_label("/roster.v1.AccessService/Nope"), "other");
        assert_eq!(method_label(&"/x".repeat(1000)), "other");
    }

    #[test]
    fn each_http_refusal_is_counted_under_its_own_reason() {
        let metrics = Metrics::new();
        for (i, reason) in HttpRefusal::ALL.into_iter().enumerate() {
            for _ in 0..=i {
                metrics.record_http_refusal(reason);
            }
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &metrics.registry).unwrap();
        for (i, reason) in HttpRefusal::ALL.into_iter().enumerate() {
            let line =
                format!("roster_http_refused_total{{reason=\"{}\"}} {}", reason.label(), i + 1);
            assert!(text.contains(&line), "{line}: {text}");
        }
    }

    #[test]
    fn decisions_are_counted_per_permission_and_outcome() {
        let metrics = Metrics::new();
        metrics.record_decision(Permission::SourcesRead, true);
        metrics.record_decision(Permission::SourcesRead, true);
        metrics.record_decision(Permission::BillingManage, false);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &metrics.registry).unwrap();
        assert!(text.contains(
            "roster_authorize_decisions_total{permission=\"sources.read\",decision=\"allowed\"} 2"
        ));
        assert!(text.contains(
            "roster_authorize_decisions_total{permission=\"billing.manage\",decision=\"denied\"} 1"
        ));
    }
}
