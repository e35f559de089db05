//! Envoy's external authorization (`envoy.service.auth.v3.Authorization/Check`): a gateway asks
//! whether a request may go on, and Roster answers with Authorize's decision, from the same
//! index, counted and traced as Authorize is.
//!
//! The check is built from what Envoy describes: the user is the `sub` of the JWT payload that
//! Envoy's `jwt_authn` filter verified (never a plain header, which a client could set); the
//! permission, organization and workspace come from the route's `context_extensions`, the
//! latter two falling back to the `x-organization-id` and `x-workspace-id` headers.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::access;
use super::batch::CheckFields;
use super::identify;
use crate::domain::Access;
use crate::error::Violations;
use crate::metrics::Metrics;
use crate::pb;
use crate::pb::envoy::{self as envoy, authorization_server::Authorization};
use crate::service::Services;

/// The metadata namespace Envoy's JWT filter writes verified payloads to.
pub const JWT_AUTHN_NAMESPACE: &str = "envoy.filters.http.jwt_authn";

/// Serves ext_authz Check to service callers (the gateway).
pub struct ExtAuthzApi {
    services: Services,
    metrics: Arc<Metrics>,
    /// The key of the verified payload inside [`JWT_AUTHN_NAMESPACE`] (`payload_in_metadata`
    /// of the JWT filter's provider).
    payload_key: String,
}

impl ExtAuthzApi {
    /// Checks over the use-cases, reading payloads under `payload_key`.
    pub fn new(services: Services, metrics: Arc<Metrics>, payload_key: String) -> Self {
        Self { services, metrics, payload_key }
    }
}

/// The `sub` claim of the payload the JWT filter verified, if there is one.
fn verified_subject(metadata: Option<&envoy::Metadata>, payload_key: &str) -> Option<String> {
    use prost_types::value::Kind;
    let namespace = metadata?.filter_metadata.get(JWT_AUTHN_NAMESPACE)?;
    let Some(Kind::StructValue(payload)) = &namespace.fields.get(payload_key)?.kind else {
        return None;
    };
    match &payload.fields.get("sub")?.kind {
        Some(Kind::StringValue(sub)) if !sub.is_empty() => Some(sub.clone()),
        _ => None,
    }
}

fn header(name: &str, value: &str) -> envoy::HeaderValueOption {
    envoy::HeaderValueOption {
        header: Some(envoy::HeaderValue { key: name.to_owned(), value: value.to_owned() }),
        // Replaces any header of that name the client sent.
        append_action: envoy::header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd
            as i32,
    }
}

/// A denial Envoy answers with `status`, the reason in a header and in the body.
fn denied(
    status: envoy::http_status::StatusCode,
    grpc: tonic::Code,
    reason: &str,
    body: String,
) -> envoy::CheckResponse {
    envoy::CheckResponse {
        status: Some(envoy::RpcStatus {
            code: grpc as i32,
            message: body.clone(),
            details: vec![],
        }),
        http_response: Some(envoy::check_response::HttpResponse::DeniedResponse(
            envoy::DeniedHttpResponse {
                status: Some(envoy::HttpStatus { code: status as i32 }),
                headers: vec![header("x-roster-decision-reason", reason)],
                body,
            },
        )),
    }
}

fn access_name(access: Option<Access>) -> &'static str {
    match access {
        None => "none",
        Some(Access::Read) => "read",
        Some(Access::Write) => "write",
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthzApi {
    async fn check(
        &self,
        mut request: Request<envoy::CheckRequest>,
    ) -> Result<Response<envoy::CheckResponse>, Status> {
        use envoy::http_status::StatusCode as Http;
        identify::service(&mut request)?;
        let attributes = request.into_inner().attributes.unwrap_or_default();
        let headers =
            attributes.request.and_then(|r| r.http).map(|h| h.headers).unwrap_or_default();
        let Some(user) = verified_subject(attributes.metadata_context.as_ref(), &self.payload_key)
        else {
            return Ok(Response::new(denied(
                Http::Unauthorized,
                tonic::Code::Unauthenticated,
                "NO_VERIFIED_TOKEN",
                "no verified token: the request needs a valid bearer token\n".to_owned(),
            )));
        };
        let extensions = &attributes.context_extensions;
        let pick = |extension: &str, header_name: &str| {
            extensions
                .get(extension)
                .or_else(|| headers.get(header_name))
                .map_or("", String::as_str)
        };
        let permission = extensions.get("permission").map_or("", String::as_str);
        // The workspace header counts only for a workspace permission: a client's stray
        // header must not turn an organization check into a malformed one.
        let workspace_scoped = crate::domain::Permission::from_name(permission)
            .is_some_and(|p| p.scope() == crate::domain::Scope::Workspace);
        let workspace = match extensions.get("workspace_id") {
            Some(fixed) => fixed.as_str(),
            None if workspace_scoped => headers.get("x-workspace-id").map_or("", String::as_str),
            None => "",
        };
        let consistency = headers.get("x-consistency-token").map(|token| pb::Consistency {
            requirement: pb::ConsistencyRequirement::AtLeastAsFresh as i32,
            at_least_as_fresh: token.clone(),
        });
        let fields = CheckFields {
            user_id: &user,
            organization_id: pick("organization_id", "x-organization-id"),
            workspace_id: workspace,
            permission,
            consistency: consistency.as_ref(),
        };
        let mut v = Violations::new();
        let Some(check) = access::check(&mut v, "", fields) else {
            let body = match v.into_error() {
                crate::error::Error::InvalidArgument(violations) => {
                    violations.iter().map(|f| format!("{}: {}\n", f.field, f.description)).collect()
                }
                other => format!("{other}\n"),
            };
            return Ok(Response::new(denied(
                Http::BadRequest,
                tonic::Code::InvalidArgument,
                "MALFORMED_CHECK",
                body,
            )));
        };
        let span = tracing::Span::current();
        span.record("organization_id", tracing::field::display(check.organization_id));
        let decision = self.services.authorize(&check).await?;
        self.metrics.record_decision(check.permission, decision.allowed);
        span.record("decision", if decision.allowed { "allowed" } else { "denied" });
        let reason = crate::grpc::convert::reason_name(decision);
        if !decision.allowed {
            return Ok(Response::new(denied(
                Http::Forbidden,
                tonic::Code::PermissionDenied,
                reason,
                format!("denied: {reason}\n"),
            )));
        }
        // Roster's headers reach the upstream only as Roster sets them: ones it does not set
        // are removed, so a client cannot send its own.
        // The scope headers are set to the scope checked, so that the upstream never acts on
        // one that was not.
        let organization = check.organization_id.to_string();
        let mut added = vec![
            header("x-roster-decision-reason", reason),
            header("x-roster-user-id", &user),
            header("x-organization-id", &organization),
        ];
        let mut removed = Vec::new();
        match check.workspace_id {
            Some(workspace) => added.push(header("x-workspace-id", &workspace.to_string())),
            None => removed.push("x-workspace-id".to_owned()),
        }
        match decision.role {
            Some(role) => added.push(header("x-roster-role", role.as_str())),
            None => removed.push("x-roster-role".to_owned()),
        }
        match decision.workspace_access {
            Some(access) => added.push(header("x-roster-workspace-access", access_name(access))),
            None => removed.push("x-roster-workspace-access".to_owned()),
        }
        Ok(Response::new(envoy::CheckResponse {
            status: Some(envoy::RpcStatus { code: 0, message: String::new(), details: vec![] }),
            http_response: Some(envoy::check_response::HttpResponse::OkResponse(
                envoy::OkHttpResponse { headers: added, headers_to_remove: removed },
            )),
        }))
    }
}
