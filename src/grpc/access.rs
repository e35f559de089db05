//! AccessService handlers.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::batch::{BatchChecks, CheckFields};
use super::convert;
use super::identify;
use crate::domain::ids::IdError;
use crate::domain::{OrganizationId, Permission, Scope, UserIdRef, WorkspaceId};
use crate::error::{Error, Violations};
use crate::index::{Check, Freshness};
use crate::metrics::Metrics;
use crate::pb::{self, access_service_server::AccessService};
use crate::service::{Services, page};

/// Most checks one BatchAuthorize may carry.
pub const MAX_BATCH_CHECKS: usize = 1000;

/// Serves AccessService; callers are identified before a handler runs (see [`identify`]).
pub struct AccessApi {
    services: Services,
    metrics: Arc<Metrics>,
}

impl AccessApi {
    /// A handler set over the use-cases, counting decisions in `metrics`.
    pub fn new(services: Services, metrics: Arc<Metrics>) -> Self {
        Self { services, metrics }
    }
}

type Reply<T> = Result<Response<T>, Status>;

fn permission(v: &mut Violations, field: &str, name: &str) -> Option<Permission> {
    if name.is_empty() {
        v.add(field, "is required, for example sources.read; ListPermissions lists them all");
        return None;
    }
    let found = Permission::from_name(name);
    if found.is_none() {
        v.add(field, "is not in the permission catalogue; ListPermissions lists them all");
    }
    found
}

/// Validates one check; `prefix` names its place in a batch.
pub(super) fn check<'a>(
    v: &mut Violations,
    prefix: &str,
    req: CheckFields<'a>,
) -> Option<Check<'a>> {
    let user_id =
        v.check(&format!("{prefix}user_id"), UserIdRef::parse(req.user_id).map_err(|IdError(e)| e));
    let organization_id =
        convert::organization_id(v, &format!("{prefix}organization_id"), req.organization_id);
    let permission = permission(v, &format!("{prefix}permission"), req.permission);
    let workspace_field = format!("{prefix}workspace_id");
    let workspace_id = match permission.map(Permission::scope) {
        Some(Scope::Workspace) if req.workspace_id.is_empty() => {
            v.add(workspace_field, "is required for a workspace permission");
            None
        }
        Some(Scope::Organization) if !req.workspace_id.is_empty() => {
            v.add(workspace_field, "must be empty for an organization permission");
            None
        }
        _ => convert::optional_workspace_id(v, &workspace_field, req.workspace_id),
    };
    let field = format!("{prefix}consistency");
    let freshness = convert::consistency(v, &field, req.consistency)
        .and_then(|r| r.for_organization(v, &field, organization_id));
    Some(Check {
        user_id: user_id?,
        organization_id: organization_id?,
        workspace_id: workspace_id?,
        permission: permission?,
        freshness: freshness?,
    })
}

/// A well-formed check without its own consistency requirement, read without allocating or
/// building field names; `None` if anything is off. Checks are read this way first; [`check`]
/// names the problems only when there is one.
fn parse_quickly(req: CheckFields<'_>) -> Option<Check<'_>> {
    let permission = Permission::from_name(req.permission)?;
    let workspace_id = match (permission.scope(), req.workspace_id.is_empty()) {
        (Scope::Workspace, false) => Some(WorkspaceId::parse(req.workspace_id).ok()?),
        (Scope::Organization, true) => None,
        _ => return None,
    };
    if req.consistency.is_some() {
        return None;
    }
    Some(Check {
        user_id: UserIdRef::parse(req.user_id).ok()?,
        organization_id: OrganizationId::parse(req.organization_id).ok()?,
        workspace_id,
        permission,
        freshness: Freshness::MinimizeLatency,
    })
}

#[tonic::async_trait]
impl AccessService for AccessApi {
    async fn authorize(
        &self,
        mut request: Request<pb::AuthorizeRequest>,
    ) -> Reply<pb::AuthorizeResponse> {
        identify::service(&mut request)?;
        let req = request.into_inner();
        let fields = CheckFields::from(&req);
        let check = match parse_quickly(fields) {
            Some(check) => check,
            None => {
                let mut v = Violations::new();
                let Some(check) = check(&mut v, "", fields) else {
                    return Err(v.into_error().into());
                };
                check
            }
        };
        let span = tracing::Span::current();
        span.record("organization_id", tracing::field::display(check.organization_id));
        let decision = self.services.authorize(&check).await?;
        self.metrics.record_decision(check.permission, decision.allowed);
        span.record("decision", if decision.allowed { "allowed" } else { "denied" });
        Ok(Response::new(convert::decision(decision)))
    }

    async fn batch_authorize(
        &self,
        mut request: Request<BatchChecks>,
    ) -> Reply<pb::BatchAuthorizeResponse> {
        identify::service(&mut request)?;
        let req = request.into_inner();
        if req.is_empty() {
            return Err(Error::invalid("checks", "must hold at least one check").into());
        }
        if req.len() > MAX_BATCH_CHECKS {
            return Err(
                Error::invalid("checks", "must hold at most 1000 checks; split the batch").into()
            );
        }
        let mut v = Violations::new();
        let requirement = convert::consistency(&mut v, "consistency", req.consistency.as_ref());
        let parsed: Option<Vec<Check<'_>>> = req.iter().map(parse_quickly).collect();
        let checks = parsed.or_else(|| {
            let named: Vec<Option<Check<'_>>> = req
                .iter()
                .enumerate()
                .map(|(i, c)| check(&mut v, &format!("checks[{i}]."), c))
                .collect();
            named.into_iter().collect()
        });
        v.finish()?;
        let (Some(mut checks), Some(requirement)) = (checks, requirement) else {
            return Err(Error::invalid("checks", "holds a malformed check").into());
        };
        // The batch's requirement applies to every check in it; a token names one organization,
        // which every check must be in.
        let mut v = Violations::new();
        for check in &mut checks {
            let org = Some(check.organization_id);
            match requirement.for_organization(&mut v, "consistency", org) {
                Some(freshness) => check.freshness = freshness,
                None => break,
            }
        }
        v.finish()?;
        let span = tracing::Span::current();
        let decisions = self.services.batch_authorize(&checks).await?;
        let mut allowed = 0;
        for (check, decision) in checks.iter().zip(&decisions) {
            self.metrics.record_decision(check.permission, decision.allowed);
            allowed += usize::from(decision.allowed);
        }
        span.record(
            "decision",
            tracing::field::display(format_args!("{allowed} of {} allowed", decisions.len())),
        );
        Ok(Response::new(pb::BatchAuthorizeResponse {
            results: decisions.into_iter().map(convert::decision).collect(),
        }))
    }

    async fn list_permissions(
        &self,
        mut request: Request<pb::ListPermissionsRequest>,
    ) -> Reply<pb::ListPermissionsResponse> {
        identify::service(&mut request)?;
        Ok(Response::new(pb::ListPermissionsResponse {
            permissions: Permission::ALL.iter().copied().map(convert::permission).collect(),
        }))
    }

    async fn list_granted_permissions(
        &self,
        mut request: Request<pb::ListGrantedPermissionsRequest>,
    ) -> Reply<pb::ListGrantedPermissionsResponse> {
        identify::service(&mut request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let user = convert::user_id(&mut v, "user_id", &req.user_id);
        let org = convert::organization_id(&mut v, "organization_id", &req.organization_id);
        let ws = convert::optional_workspace_id(&mut v, "workspace_id", &req.workspace_id);
        let requirement = convert::consistency(&mut v, "consistency", req.consistency.as_ref());
        let freshness = requirement.and_then(|r| r.for_organization(&mut v, "consistency", org));
        let (Some(user), Some(org), Some(ws), Some(freshness)) = (user, org, ws, freshness) else {
            return Err(v.into_error().into());
        };
        let permissions = self.services.list_granted_permissions(&user, org, ws, freshness).await?;
        Ok(Response::new(pb::ListGrantedPermissionsResponse {
            permissions: permissions.into_iter().map(|p| p.name().to_owned()).collect(),
        }))
    }

    async fn list_accessible_workspaces(
        &self,
        mut request: Request<pb::ListAccessibleWorkspacesRequest>,
    ) -> Reply<pb::ListAccessibleWorkspacesResponse> {
        identify::service(&mut request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let user = convert::user_id(&mut v, "user_id", &req.user_id);
        let org = convert::organization_id(&mut v, "organization_id", &req.organization_id);
        let permission = permission(&mut v, "permission", &req.permission);
        if permission.is_some_and(|p| p.scope() != Scope::Workspace) {
            v.add("permission", "must be a workspace permission, such as sources.read");
        }
        let page = v.absorb(page::parse("accessible", req.page_size, &req.page_token));
        // Read from the database in any case; the requirement is validated all the same.
        let requirement = convert::consistency(&mut v, "consistency", req.consistency.as_ref());
        let _ = requirement.and_then(|r| r.for_organization(&mut v, "consistency", org));
        let (Some(user), Some(org), Some(permission), Some(page)) = (user, org, permission, page)
        else {
            return Err(v.into_error().into());
        };
        v.finish()?;
        let page = self.services.list_accessible_workspaces(&user, org, permission, page).await?;
        Ok(Response::new(pb::ListAccessibleWorkspacesResponse {
            workspaces: page.items.into_iter().map(convert::workspace).collect(),
            next_page_token: page.next_page_token,
        }))
    }
}
