//! Overload protection for the whole server: a cap on calls in flight that sheds the excess at
//! once with RESOURCE_EXHAUSTED (never a queue that hangs), and a deadline per call that answers
//! DEADLINE_EXCEEDED: the server's, or the client's `grpc-timeout` when that is sooner. Health
//! and reflection are exempt, so probes keep answering under load.
//!
//! WatchService streams are long-lived by design: they take no in-flight slot and have no
//! deadline, but one of their own, fewer, slots, held until the stream's last byte is sent or
//! its client goes away; beyond that they are refused with RESOURCE_EXHAUSTED.
//!
//! Calls reach this layer only once their credential has been checked (see
//! [`super::identify`]), so a slot is never taken by a caller who could not be identified.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Frame, SizeHint};
use prost::bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, http};
use tower::{Layer, Service};

use crate::error::ErrorReason;

/// Adds [`Limit`] to a server.
#[derive(Clone)]
pub struct LimitLayer {
    permits: Arc<Semaphore>,
    streams: Arc<Semaphore>,
    max_streams: usize,
    timeout: Duration,
    shed: Arc<AtomicU64>,
    streams_refused: Arc<AtomicU64>,
}

impl LimitLayer {
    /// At most `max_in_flight` calls at once, each cut off after `timeout`, and besides them
    /// at most `max_streams` WatchService streams.
    pub fn new(max_in_flight: usize, timeout: Duration, max_streams: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max_in_flight)),
            streams: Arc::new(Semaphore::new(max_streams)),
            max_streams,
            timeout,
            shed: Arc::new(AtomicU64::new(0)),
            streams_refused: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The in-flight slots, shared with the AuthZEN listener so that both ports together stay
    /// within `--max-in-flight`.
    pub fn permits(&self) -> Arc<Semaphore> {
        self.permits.clone()
    }

    /// Streams refused at the stream limit so far, for metrics.
    pub fn streams_refused_counter(&self) -> Arc<AtomicU64> {
        self.streams_refused.clone()
    }

    /// Calls shed so far, for readiness and metrics.
    pub fn shed_counter(&self) -> Arc<AtomicU64> {
        self.shed.clone()
    }

    /// Slots free now, for readiness.
    pub fn free_slots(&self) -> usize {
        self.permits.available_permits()
    }
}

impl<S> Layer<S> for LimitLayer {
    type Service = Limit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Limit {
            inner,
            permits: self.permits.clone(),
            streams: self.streams.clone(),
            max_streams: self.max_streams,
            timeout: self.timeout,
            shed: self.shed.clone(),
            streams_refused: self.streams_refused.clone(),
        }
    }
}

/// The middleware itself.
#[derive(Clone)]
pub struct Limit<S> {
    inner: S,
    permits: Arc<Semaphore>,
    streams: Arc<Semaphore>,
    max_streams: usize,
    timeout: Duration,
    shed: Arc<AtomicU64>,
    streams_refused: Arc<AtomicU64>,
}

fn exempt(path: &str) -> bool {
    path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.")
}

fn streaming(path: &str) -> bool {
    path.starts_with("/roster.v1.WatchService/")
}

impl<S, ReqBody> Service<http::Request<ReqBody>> for Limit<S>
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
        let mut inner = super::take_ready(&mut self.inner);
        if exempt(request.uri().path()) {
            return Box::pin(inner.call(request));
        }
        if streaming(request.uri().path()) {
            let Ok(permit) = self.streams.clone().try_acquire_owned() else {
                self.streams_refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(path = request.uri().path(), "refusing a stream: too many open");
                let status = super::status::refused(
                    ErrorReason::StreamsExhausted,
                    format!(
                        "the server has its limit of {} WatchService streams open; retry with \
                         backoff, or on another replica",
                        self.max_streams
                    ),
                );
                return Box::pin(async move { Ok(status.into_http()) });
            };
            return Box::pin(async move {
                let response = inner.call(request).await?;
                Ok(response.map(|body| Body::new(Holding { body, _permit: permit })))
            });
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            self.shed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(path = request.uri().path(), "shedding a call: too many in flight");
            let status = super::status::refused(
                ErrorReason::Overloaded,
                "the server is at its limit of calls in flight; retry with backoff",
            );
            return Box::pin(async move { Ok(status.into_http()) });
        };
        let timeout = match client_timeout(request.headers()) {
            Some(client) if client < self.timeout => client,
            _ => self.timeout,
        };
        Box::pin(async move {
            let _permit = permit;
            match tokio::time::timeout(timeout, inner.call(request)).await {
                Ok(result) => result,
                Err(_) => Ok(super::status::refused(
                    ErrorReason::CallTimedOut,
                    format!(
                        "the call did not finish within the server's limit of {} ms",
                        timeout.as_millis()
                    ),
                )
                .into_http()),
            }
        })
    }
}

/// A response body that holds a stream's slot until it ends or is dropped.
struct Holding {
    body: Body,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for Holding {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The deadline a client sent in `grpc-timeout`: up to eight digits and a unit (H, M, S, m, u,
/// n). A malformed value is ignored, leaving the server's own deadline.
fn client_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.as_bytes();
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout_of(value: &str) -> Option<Duration> {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-timeout", value.parse().unwrap());
        client_timeout(&headers)
    }

    #[test]
    fn client_timeouts_are_read_in_every_unit_and_malformed_ones_ignored() {
        assert_eq!(timeout_of("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(timeout_of("3M"), Some(Duration::from_secs(180)));
        assert_eq!(timeout_of("10S"), Some(Duration::from_secs(10)));
        assert_eq!(timeout_of("250m"), Some(Duration::from_millis(250)));
        assert_eq!(timeout_of("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(timeout_of("5n"), Some(Duration::from_nanos(5)));
        for bad in ["", "S", "123456789S", "10s", "-1S", "1.5S", "10"] {
            assert_eq!(timeout_of(bad), None, "{bad:?}");
        }
        assert_eq!(client_timeout(&http::HeaderMap::new()), None);
    }
}
