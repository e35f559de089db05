//! Identification at the edge: a call's credential is checked from its headers alone, before its
//! body is read and before it takes an in-flight slot or any buffer, so a peer without a valid
//! credential costs the server one header block per call and nothing it could hold on to.
//!
//! TeamService calls carry an end user ([`Actor`]); AccessService and WatchService calls a
//! service ([`ServiceCaller`]). The identity found is handed to the handler as a request extension;
//! health and reflection need none.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::http;
use tonic::{Request, Status};
use tower::{Layer, Service};

use super::auth::{Identity, ServiceCaller};
use super::listener::Peer;
use crate::domain::RequestId;
use crate::service::Actor;

/// Who must identify themselves on a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Audience {
    /// An end user: TeamService.
    User,
    /// An internal service: AccessService, WatchService, and any other service.
    Service,
    /// Nobody: health and reflection.
    Open,
}

/// Who must identify on `path`. Only health and reflection are open; every other service,
/// including one added later and not listed here, needs a service credential, so a new service
/// can never be served to anyone by mistake.
fn audience(path: &str) -> Audience {
    if path.starts_with("/roster.v1.TeamService/") {
        Audience::User
    } else if path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.") {
        Audience::Open
    } else {
        Audience::Service
    }
}

/// Marks a call whose credential checked out (a request extension), so that later layers can
/// tell it from one that needed none.
#[derive(Debug, Clone, Copy)]
pub struct Credentialed;

/// Adds [`Identify`] to a server.
#[derive(Clone)]
pub struct IdentifyLayer {
    identity: Arc<Identity>,
}

impl IdentifyLayer {
    /// Identifies callers with `identity`.
    pub fn new(identity: Arc<Identity>) -> Self {
        Self { identity }
    }
}

impl<S> Layer<S> for IdentifyLayer {
    type Service = Identify<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Identify { inner, identity: self.identity.clone() }
    }
}

/// The middleware itself.
#[derive(Clone)]
pub struct Identify<S> {
    inner: S,
    identity: Arc<Identity>,
}

impl<S> Service<http::Request<Body>> for Identify<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone,
    S::Future: Unpin,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Answer<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let mut inner = super::take_ready(&mut self.inner);
        let peer = request.extensions().get::<Peer>();
        let checked = match audience(request.uri().path()) {
            Audience::Open => return Answer::Inner(inner.call(request)),
            Audience::User => self.identity.actor(request.headers()).map(Identified::User),
            Audience::Service => {
                let certificate = peer.is_some_and(|p| p.client_certificate);
                self.identity.service(request.headers(), certificate).map(Identified::Service)
            }
        };
        match checked {
            Ok(identified) => {
                if let Some(peer) = peer {
                    peer.mark_identified();
                }
                request.extensions_mut().insert(Credentialed);
                match identified {
                    Identified::User(mut actor) => {
                        actor.request_id = request.extensions().get::<RequestId>().cloned();
                        request.extensions_mut().insert(actor);
                    }
                    Identified::Service(caller) => {
                        tracing::Span::current().record("caller", tracing::field::display(&caller));
                        request.extensions_mut().insert(caller);
                    }
                }
                Answer::Inner(inner.call(request))
            }
            // The body is dropped unread with the request.
            Err(err) => Answer::Refused(Some(Status::from(err).into_http())),
        }
    }
}

enum Identified {
    User(Actor),
    Service(ServiceCaller),
}

/// The inner service's answer, or the refusal of a call whose credential did not check out.
pub enum Answer<F> {
    /// The call went on.
    Inner(F),
    /// The call was refused; taken when polled.
    Refused(Option<http::Response<Body>>),
}

impl<F, E> Future for Answer<F>
where
    F: Future<Output = Result<http::Response<Body>, E>> + Unpin,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Answer::Inner(inner) => Pin::new(inner).poll(cx),
            Answer::Refused(refusal) => Poll::Ready(Ok(refusal.take().unwrap_or_else(|| {
                Status::internal("a refused call was polled after it completed").into_http()
            }))),
        }
    }
}

/// The end user the identification layer found for a TeamService call. Without one (a server
/// wired without that layer) the call is refused rather than run for nobody.
pub fn actor<T>(request: &mut Request<T>) -> Result<Actor, Status> {
    request.extensions_mut().remove::<Actor>().ok_or_else(|| {
        super::status::refused(
            crate::error::ErrorReason::CredentialsMissing,
            "no caller identity was established for this call",
        )
    })
}

/// The service the identification layer found for an AccessService or WatchService call; see
/// [`actor`].
pub fn service<T>(request: &mut Request<T>) -> Result<ServiceCaller, Status> {
    request.extensions_mut().remove::<ServiceCaller>().ok_or_else(|| {
        super::status::refused(
            crate::error::ErrorReason::CredentialsMissing,
            "no caller identity was established for this call",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_path_names_who_must_identify() {
        assert_eq!(audience("/roster.v1.AccessService/Authorize"), Audience::Service);
        assert_eq!(audience("/roster.v1.TeamService/CreateOrganization"), Audience::User);
        assert_eq!(audience("/roster.v1.WatchService/Watch"), Audience::Service);
        assert_eq!(audience("/roster.v1.WatchService/Snapshot"), Audience::Service);
        assert_eq!(audience("/envoy.service.auth.v3.Authorization/Check"), Audience::Service);
        assert_eq!(audience("/grpc.health.v1.Health/Check"), Audience::Open);
        assert_eq!(audience("/grpc.reflection.v1.ServerReflection/Info"), Audience::Open);
        // Anything else needs a service credential, whatever it is.
        assert_eq!(audience("/roster.v1.AccessServiceX/Authorize"), Audience::Service);
        assert_eq!(audience("/roster.v1.TeamService"), Audience::Service);
        assert_eq!(audience("/grpc.healthx/Check"), Audience::Service);
    }
}
