//! Browsers on the main port: gRPC-Web (translated to gRPC by tonic-web, so that every layer
//! behind this one sees an ordinary call) and the CORS answers that let a page of an allowed
//! origin make such calls and read their status.
//!
//! Native gRPC passes through untouched: one header comparison, no boxing, so that Authorize
//! costs what it cost before.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::http::{self, HeaderValue, Method, StatusCode, header};
use tower::{Layer, Service};

use crate::metrics::{HttpRefusal, Metrics};

/// Request headers a page may send: what Connect-ES and grpc-web clients send, the caller's
/// credentials (a bearer token, or dev mode's user headers), a request id and a trace parent.
const ALLOWED_HEADERS: &str = "authorization, content-type, x-grpc-web, x-user-agent, \
    grpc-timeout, grpc-encoding, grpc-accept-encoding, x-request-id, traceparent, tracestate, \
    x-user-id, x-user-email, x-consistency-token";

/// Response headers a page may read: the status of a call (with its BadRequest details) and
/// its request id.
const EXPOSED_HEADERS: &str = "grpc-status, grpc-message, grpc-status-details-bin, x-request-id";

/// How long a browser may keep a preflight answer, in seconds.
const PREFLIGHT_MAX_AGE: &str = "7200";

/// The origins whose pages may call the server, exactly as a browser sends them.
#[derive(Debug, Clone, Default)]
pub struct AllowedOrigins(Vec<HeaderValue>);

impl AllowedOrigins {
    /// Origins as configured (`https://app.example.com`); validated with the configuration.
    pub fn new(origins: &[String]) -> Self {
        Self(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(&o.to_ascii_lowercase()).ok())
                .collect(),
        )
    }

    fn allows(&self, origin: &HeaderValue) -> bool {
        // Browsers send scheme and host in lower case; any other spelling is not a browser's.
        self.0.iter().any(|allowed| allowed == origin)
    }
}

/// Adds [`Web`] to a server.
#[derive(Clone)]
pub struct WebLayer {
    origins: Arc<AllowedOrigins>,
    metrics: Arc<Metrics>,
}

impl WebLayer {
    /// Serves gRPC-Web, and CORS to pages of `origins`; counts refusals into `metrics`.
    pub fn new(origins: AllowedOrigins, metrics: Arc<Metrics>) -> Self {
        Self { origins: Arc::new(origins), metrics }
    }
}

impl<S> Layer<S> for WebLayer {
    type Service = Web<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Web { inner, origins: self.origins.clone(), metrics: self.metrics.clone() }
    }
}

/// The middleware itself.
#[derive(Clone)]
pub struct Web<S> {
    inner: S,
    origins: Arc<AllowedOrigins>,
    metrics: Arc<Metrics>,
}

/// What kind of request arrived.
enum Kind {
    /// Native gRPC, or anything else over HTTP/2 (the router answers what it is not).
    Native,
    /// A gRPC-Web call.
    GrpcWeb,
    /// A browser asking whether it may make a call (CORS preflight).
    Preflight,
    /// HTTP/1.1 that is not gRPC-Web: nothing here speaks it.
    Unsupported,
}

fn kind<B>(request: &http::Request<B>) -> Kind {
    // The four content types tonic-web translates; any other goes on as what it is.
    let grpc_web = request.headers().get(header::CONTENT_TYPE).is_some_and(|t| {
        matches!(
            t.as_bytes(),
            b"application/grpc-web"
                | b"application/grpc-web+proto"
                | b"application/grpc-web-text"
                | b"application/grpc-web-text+proto"
        )
    });
    if grpc_web {
        Kind::GrpcWeb
    } else if request.method() == Method::OPTIONS {
        Kind::Preflight
    } else if request.version() == http::Version::HTTP_2 {
        Kind::Native
    } else {
        Kind::Unsupported
    }
}

impl<S> Service<http::Request<Body>> for Web<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + Unpin + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = WebFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        match kind(&request) {
            Kind::Native => WebFuture::Native(self.inner.call(request)),
            Kind::Preflight => {
                let (answer, refused) = preflight(&self.origins, &request);
                if let Some(reason) = refused {
                    self.metrics.record_http_refusal(reason);
                }
                WebFuture::Ready(Some(answer))
            }
            Kind::Unsupported => {
                self.metrics.record_http_refusal(HttpRefusal::NotGrpc);
                WebFuture::Ready(Some(plain(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "this port speaks gRPC over HTTP/2, and gRPC-Web (application/grpc-web) over \
                     HTTP/1.1 or HTTP/2\n",
                )))
            }
            Kind::GrpcWeb => {
                let origin = request.headers().get(header::ORIGIN).cloned();
                // A page of an origin not allowed is refused before anything runs: its browser
                // would hide the answer, but the change would still be made.
                if let Some(origin) = &origin
                    && !self.origins.allows(origin)
                {
                    self.metrics.record_http_refusal(HttpRefusal::OriginNotAllowed);
                    return WebFuture::Ready(Some(plain(
                        StatusCode::FORBIDDEN,
                        "this origin may not call the server; see --cors-allowed-origin\n",
                    )));
                }
                let inner = super::take_ready(&mut self.inner);
                let call = tonic_web::GrpcWebLayer::new().layer(inner).call(request);
                WebFuture::Web(Box::pin(async move {
                    let mut response = call.await?;
                    if let Some(origin) = origin {
                        allow(response.headers_mut(), origin);
                        response
                            .headers_mut()
                            .insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, exposed());
                    }
                    Ok(response)
                }))
            }
        }
    }
}

/// The answer to a CORS preflight: the origin, method and headers a call may use; or a refusal
/// without any CORS header, and why, when the origin is not allowed or the method is not POST.
fn preflight(
    origins: &AllowedOrigins,
    request: &http::Request<Body>,
) -> (http::Response<Body>, Option<HttpRefusal>) {
    let headers = request.headers();
    let Some(origin) = headers.get(header::ORIGIN) else {
        let answer =
            plain(StatusCode::BAD_REQUEST, "an OPTIONS request here must be a CORS preflight\n");
        return (answer, Some(HttpRefusal::NotAPreflight));
    };
    let method_ok =
        headers.get(header::ACCESS_CONTROL_REQUEST_METHOD).is_some_and(|m| m.as_bytes() == b"POST");
    if !origins.allows(origin) || !method_ok {
        let answer = plain(
            StatusCode::FORBIDDEN,
            "this origin may not call the server, or not with this method; see \
             --cors-allowed-origin\n",
        );
        return (answer, Some(HttpRefusal::PreflightRefused));
    }
    let mut response = http::Response::new(Body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let out = response.headers_mut();
    allow(out, origin.clone());
    out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("POST"));
    out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(ALLOWED_HEADERS));
    out.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(PREFLIGHT_MAX_AGE));
    out.append(
        header::VARY,
        HeaderValue::from_static("access-control-request-method, access-control-request-headers"),
    );
    (response, None)
}

/// Names `origin` as allowed; caches must keep answers to different origins apart.
fn allow(headers: &mut http::HeaderMap, origin: HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.append(header::VARY, HeaderValue::from_static("origin"));
}

fn exposed() -> HeaderValue {
    HeaderValue::from_static(EXPOSED_HEADERS)
}

fn plain(status: StatusCode, text: &'static str) -> http::Response<Body> {
    let mut response = http::Response::new(Body::new(text.to_owned()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// A call's answer: the native service's own future, a gRPC-Web call's, or an answer made here.
pub enum WebFuture<F> {
    /// Native gRPC, unchanged.
    Native(F),
    /// A gRPC-Web call.
    Web(Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>),
    /// Answered here; taken when polled.
    Ready(Option<http::Response<Body>>),
}

impl<F> Future for WebFuture<F>
where
    F: Future<Output = Result<http::Response<Body>, Infallible>> + Unpin,
{
    type Output = Result<http::Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            WebFuture::Native(inner) => Pin::new(inner).poll(cx),
            WebFuture::Web(call) => call.as_mut().poll(cx),
            WebFuture::Ready(answer) => Poll::Ready(Ok(answer.take().unwrap_or_else(|| {
                plain(StatusCode::INTERNAL_SERVER_ERROR, "answer polled after it completed\n")
            }))),
        }
    }
}
