//! Logging and tracing: human-readable or JSON lines on standard error, filtered by `RUST_LOG`
//! (default `info`), and OpenTelemetry traces over OTLP/gRPC when the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set.

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::{LevelFilter, filter_fn};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::LogFormat;

/// What was installed; [`Telemetry::shutdown`] flushes spans still buffered.
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported over OTLP.
    pub fn exports_traces(&self) -> bool {
        self.tracer_provider.is_some()
    }

    /// Sends buffered spans and stops the exporter. Call once, before the process exits.
    pub fn shutdown(self) {
        if let Some(provider) = self.tracer_provider
            && let Err(err) = provider.shutdown()
        {
            eprintln!("roster: could not flush traces: {err}");
        }
    }
}

/// True when the OpenTelemetry environment asks for trace export.
fn otlp_requested() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Builds the OTLP pipeline. Needs a Tokio runtime: the gRPC exporter runs on it.
fn tracer_provider() -> anyhow::Result<SdkTracerProvider> {
    for name in ["OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] {
        if let Ok(protocol) = std::env::var(name)
            && protocol != "grpc"
        {
            anyhow::bail!("{name}={protocol:?} is not supported; Roster exports OTLP over grpc");
        }
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .context("cannot set up the OTLP span exporter (check OTEL_EXPORTER_OTLP_ENDPOINT)")?;
    // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES are read by the default resource; the
    // service is called "roster" unless they say otherwise.
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("roster");
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// Installs the global subscriber, and the OTLP exporter if the environment asks for it.
pub fn init(format: LogFormat) -> anyhow::Result<Telemetry> {
    use std::io::IsTerminal as _;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let tracer_provider = otlp_requested().then(tracer_provider).transpose()?;
    let otel = tracer_provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("roster")));
    // Colours only for a person at a terminal; files and log collectors get plain text.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    // Below debug, logs leave out the per-call span, which is there for the trace exporter: the
    // formatter would render its fields on every call (and the JSON one re-parse them on every
    // recorded field), which costs more than the call itself. Internal failures log their method
    // instead. At debug, where every decision is logged anyway, log lines carry the call's span.
    let verbose = filter.max_level_hint().is_some_and(|level| level >= LevelFilter::DEBUG);
    let not_per_call = filter_fn(move |meta| {
        verbose
            || !(crate::grpc::observe::is_call_span(meta) || crate::authzen::is_request_span(meta))
    });
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let _ = match format {
        LogFormat::Text => registry.with(fmt.with_filter(not_per_call)).try_init(),
        LogFormat::Json => {
            registry.with(fmt.json().flatten_event(true).with_filter(not_per_call)).try_init()
        }
    };
    Ok(Telemetry { tracer_provider })
}
