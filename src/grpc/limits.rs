//! Overload protection for the whole server: a cap on calls in flight that sheds the excess at
//! once with RESOURCE_EXHAUSTED (never a queue that hangs), and a deadline per call that answers
//! DEADLINE_EXCEEDED. Health and reflection are exempt, so probes keep answering under load.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Semaphore;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, http};
use tower::{Layer, Service};

/// Adds [`Limit`] to a server.
#[derive(Clone)]
pub struct LimitLayer {
    permits: Arc<Semaphore>,
    timeout: Duration,
}

impl LimitLayer {
    /// At most `max_in_flight` calls at once, each cut off after `timeout`.
    pub fn new(max_in_flight: usize, timeout: Duration) -> Self {
        Self { permits: Arc::new(Semaphore::new(max_in_flight)), timeout }
    }
}

impl<S> Layer<S> for LimitLayer {
    type Service = Limit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Limit { inner, permits: self.permits.clone(), timeout: self.timeout }
    }
}

/// The middleware itself.
#[derive(Clone)]
pub struct Limit<S> {
    inner: S,
    permits: Arc<Semaphore>,
    timeout: Duration,
}

fn exempt(path: &str) -> bool {
    path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.")
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
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            tracing::warn!(path = request.uri().path(), "shedding a call: too many in flight");
            let status = Status::resource_exhausted(
                "the server is at its limit of calls in flight; retry with backoff",
            );
            return Box::pin(async move { Ok(status.into_http()) });
        };
        let timeout = self.timeout;
        Box::pin(async move {
            let _permit = permit;
            match tokio::time::timeout(timeout, inner.call(request)).await {
                Ok(result) => result,
                Err(_) => Ok(Status::deadline_exceeded(format!(
                    "the call did not finish within the server's limit of {} ms",
                    timeout.as_millis()
                ))
                .into_http()),
            }
        })
    }
}
