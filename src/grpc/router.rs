//! Sends each call to its service by the service name in its path.

use std::convert::Infallible;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::{BoxFuture, http};
use tower::Service;
use tower::util::BoxCloneSyncService;

use super::access::AccessApi;
use super::ext_authz::ExtAuthzApi;
use super::team::TeamApi;
use super::watch::WatchApi;
use crate::pb::access_service_server::AccessServiceServer;
use crate::pb::envoy::authorization_server::AuthorizationServer;
use crate::pb::team_service_server::TeamServiceServer;
use crate::pb::watch_service_server::WatchServiceServer;

/// A service off the hot path (health, reflection), behind one box.
pub type Boxed = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, Infallible>;

/// Every service of the main port.
#[derive(Clone)]
pub struct Router {
    /// `roster.v1.AccessService`.
    pub access: AccessServiceServer<AccessApi>,
    /// `roster.v1.TeamService`.
    pub team: TeamServiceServer<TeamApi>,
    /// `roster.v1.WatchService`.
    pub watch: WatchServiceServer<WatchApi>,
    /// `envoy.service.auth.v3.Authorization` (Envoy's ext_authz).
    pub ext_authz: AuthorizationServer<ExtAuthzApi>,
    /// `grpc.health.v1.Health`.
    pub health: Boxed,
    /// `grpc.reflection.v1.ServerReflection`.
    pub reflection_v1: Boxed,
    /// `grpc.reflection.v1alpha.ServerReflection`.
    pub reflection_v1alpha: Boxed,
}

impl Service<http::Request<Body>> for Router {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Every service here is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let path = request.uri().path();
        let service = path.get(1..).and_then(|p| p.split_once('/')).map_or("", |(s, _)| s);
        match service {
            "roster.v1.AccessService" => self.access.call(request),
            "roster.v1.TeamService" => self.team.call(request),
            "roster.v1.WatchService" => self.watch.call(request),
            "envoy.service.auth.v3.Authorization" => self.ext_authz.call(request),
            "grpc.health.v1.Health" => self.health.call(request),
            "grpc.reflection.v1.ServerReflection" => self.reflection_v1.call(request),
            "grpc.reflection.v1alpha.ServerReflection" => self.reflection_v1alpha.call(request),
            _ => Box::pin(async {
                Ok(super::status::refused(
                    crate::error::ErrorReason::UnknownMethod,
                    "no such service on this server; server reflection lists the services",
                )
                .into_http())
            }),
        }
    }
}
