//! One span and one set of metrics per call. The span continues the caller's trace when the
//! request carries a W3C `traceparent`, and stays open until the last byte of the response, when
//! the status code is known (in the trailers, or in the headers of an error-only response).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, http};
use tower::{Layer, Service};
use tracing::Instrument as _;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::listener::{CallOnConnection, Peer};
use crate::domain::RequestId;
use crate::metrics::Metrics;

/// Adds [`Observe`] to a server.
#[derive(Clone)]
pub struct ObserveLayer {
    metrics: Arc<Metrics>,
}

impl ObserveLayer {
    /// Records calls into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe { inner, metrics: self.metrics.clone() }
    }
}

/// The middleware itself.
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// Reads propagation headers out of the request.
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

impl<S, ReqBody> Service<http::Request<ReqBody>> for Observe<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let started = Instant::now();
        let mut inner = super::take_ready(&mut self.inner);
        let method = crate::metrics::method_label(request.uri().path());
        let full_name = method.trim_start_matches('/');
        let (service, name) = full_name.split_once('/').unwrap_or(("", full_name));
        // Field names follow OpenTelemetry's conventions for gRPC servers; `otel.*` fields are
        // read by the exporter. organization_id, caller and decision are filled in by handlers.
        let request_id = request_id(request.headers());
        let span = tracing::info_span!(
            CALL_SPAN,
            otel.name = full_name,
            otel.kind = "server",
            otel.status_code = Empty,
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = name,
            rpc.grpc.status_code = Empty,
            organization_id = Empty,
            caller = Empty,
            decision = Empty,
            request_id = request_id.0.as_str(),
        );
        if let Some(parent) = caller_trace(request.headers()) {
            // Fails only when no OpenTelemetry layer is installed; the span then stays local.
            let _ = span.set_parent(parent);
        }
        let metrics = self.metrics.clone();
        let known = method != crate::metrics::OTHER_METHOD;
        let open = request.extensions().get::<Peer>().map(Peer::call_started);
        let (request_id, echoed) = request_id;
        let mut request = request;
        request.extensions_mut().insert(request_id);
        Box::pin(
            async move {
                // The router would answer an unknown path with an empty UNIMPLEMENTED.
                let response = if known {
                    inner.call(request).await?
                } else {
                    super::status::refused(
                        crate::error::ErrorReason::UnknownMethod,
                        "no such method on this server; server reflection lists the services",
                    )
                    .into_http()
                };
                let mut response = response;
                response.headers_mut().insert(REQUEST_ID_HEADER, echoed.clone());
                let header_code = status_in(response.headers());
                let span = tracing::Span::current();
                Ok(response.map(|body| {
                    Body::new(Observed {
                        inner: body,
                        code: header_code,
                        finished: false,
                        record: Some(Finish {
                            method,
                            started,
                            metrics,
                            span,
                            request_id: echoed,
                            _open: open,
                        }),
                    })
                }))
            }
            .instrument(span),
        )
    }
}

/// The metadata key of a call's request id, taken from the request and echoed in the response.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The call's request id, and the header value that echoes it: the caller's own when usable
/// (see [`RequestId::parse`]), else a random UUID. Ids are for correlation only; nothing is
/// decided by them.
fn request_id(headers: &http::HeaderMap) -> (RequestId, http::HeaderValue) {
    if let Some(value) = headers.get(REQUEST_ID_HEADER)
        && let Some(id) = value.to_str().ok().and_then(RequestId::parse)
    {
        return (id, value.clone());
    }
    // From the thread's generator rather than the operating system's: one per call on the
    // hot path, and it needs to be unique, not secret.
    let id = RequestId::from_uuid(uuid::Builder::from_random_bytes(rand::random()).into_uuid());
    let echoed = http::HeaderValue::from_str(id.as_str())
        .unwrap_or_else(|_| http::HeaderValue::from_static("unknown"));
    (id, echoed)
}

/// The caller's trace, when the request carries a W3C `traceparent`.
pub fn caller_trace(headers: &http::HeaderMap) -> Option<opentelemetry::Context> {
    headers
        .contains_key("traceparent")
        .then(|| TraceContextPropagator::new().extract(&Headers(headers)))
}

/// The name of the per-call span.
const CALL_SPAN: &str = "rpc";

/// Whether `meta` describes the per-call span, which logs leave out (see `telemetry`).
pub fn is_call_span(meta: &tracing::Metadata<'_>) -> bool {
    meta.is_span() && meta.name() == CALL_SPAN && meta.target() == module_path!()
}

/// The `grpc-status` in a header map, if any.
fn status_in(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
}

/// What is recorded when the response is done.
struct Finish {
    method: &'static str,
    started: Instant,
    metrics: Arc<Metrics>,
    span: tracing::Span,
    /// For the log line of a failed call, which leaves the span out (see `telemetry`).
    request_id: http::HeaderValue,
    /// Keeps the call counted as open on its connection (see the listener's idle timeout)
    /// until the response is done.
    _open: Option<CallOnConnection>,
}

/// A response body that notes the status code in its trailers and records the call when it is
/// dropped: after the last frame, or earlier if the client went away.
struct Observed {
    inner: Body,
    code: Option<tonic::Code>,
    finished: bool,
    record: Option<Finish>,
}

impl http_body::Body for Observed {
    type Data = <Body as http_body::Body>::Data;
    type Error = <Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_in) {
                    self.code = Some(code);
                }
            }
            Poll::Ready(None) => self.finished = true,
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        let Some(finish) = self.record.take() else { return };
        // A body dropped before its end without a status: the client cancelled the call.
        let code = match self.code {
            Some(code) => code,
            None if self.finished || http_body::Body::is_end_stream(&self.inner) => {
                tonic::Code::Unknown
            }
            None => tonic::Code::Cancelled,
        };
        finish.metrics.record_call(finish.method, code, finish.started.elapsed());
        finish.span.record("rpc.grpc.status_code", code as i32);
        if is_server_error(code) {
            finish.span.record("otel.status_code", "ERROR");
        }
        // The cause is logged where it arose; this names the call, which logs otherwise leave
        // out. Only for bugs: an outage's UNAVAILABLE calls would flood the log.
        if matches!(code, tonic::Code::Internal | tonic::Code::Unknown) {
            let request_id = finish.request_id.to_str().unwrap_or_default();
            tracing::error!(rpc.method = finish.method, code = ?code, request_id, "call failed");
        }
    }
}

/// Codes that mean the server failed, as OpenTelemetry's gRPC conventions list them; the others
/// (a denied or invalid call, say) are the caller's outcome and leave the span's status unset.
fn is_server_error(code: tonic::Code) -> bool {
    use tonic::Code;
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Mutex;

    /// Log output kept in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_usable_request_id_is_taken_and_any_other_is_replaced() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(request_id(&headers).0.as_str().len(), 36, "made up: a UUID");
        headers.insert(REQUEST_ID_HEADER, http::HeaderValue::from_static("page-42/retry-1"));
        let (id, echoed) = request_id(&headers);
        assert_eq!((id.as_str(), echoed.to_str().unwrap()), ("page-42/retry-1", "page-42/retry-1"));
        for unusable in ["", "two words", &"x".repeat(129)] {
            headers.insert(REQUEST_ID_HEADER, http::HeaderValue::from_str(unusable).unwrap());
            let (id, echoed) = request_id(&headers);
            assert_ne!(id.as_str(), unusable);
            assert_eq!(id.as_str(), echoed.to_str().unwrap(), "the echo is the id used");
        }
    }

    /// What ending a call with `code` logs at info.
    fn logged_on_finish(code: tonic::Code) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            drop(Observed {
                inner: Body::empty(),
                code: Some(code),
                finished: true,
                record: Some(Finish {
                    method: "/roster.v1.AccessService/Authorize",
                    started: Instant::now(),
                    metrics: Arc::new(Metrics::new()),
                    span: tracing::Span::none(),
                    request_id: http::HeaderValue::from_static("request-7"),
                    _open: None,
                }),
            });
        });
        String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn an_internal_failure_logs_its_method_and_request_id_and_a_denial_logs_nothing() {
        let failed = logged_on_finish(tonic::Code::Internal);
        assert!(failed.contains("call failed"), "{failed}");
        assert!(failed.contains("/roster.v1.AccessService/Authorize"), "{failed}");
        assert!(failed.contains("request-7"), "{failed}");
        assert_eq!(logged_on_finish(tonic::Code::PermissionDenied), "");
        assert_eq!(logged_on_finish(tonic::Code::Ok), "");
    }
}
