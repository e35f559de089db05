//! TeamService handlers: read the actor, validate, call the use-case, convert back.

use tonic::{Request, Response, Status};

use super::convert;
use super::identify;
use crate::domain::{DisplayName, Email, InvitationTtl};
use crate::error::{Error, Violations};
use crate::pb::{self, team_service_server::TeamService};
use crate::service::Services;
use crate::service::page;
use crate::service::team::{NewInvitation, OrganizationChanges};

/// Serves TeamService; callers are identified before a handler runs (see [`identify`]).
pub struct TeamApi {
    services: Services,
}

impl TeamApi {
    /// A handler set over the use-cases.
    pub fn new(services: Services) -> Self {
        Self { services }
    }
}

/// Longest accepted invitation token field, before any lookup.
const MAX_TOKEN_CHARS: usize = 512;
/// Most workspace grants one invitation may carry.
const MAX_INVITATION_GRANTS: usize = 1000;

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl TeamService for TeamApi {
    async fn create_organization(
        &self,
        mut request: Request<pb::CreateOrganizationRequest>,
    ) -> Reply<pb::CreateOrganizationResponse> {
        let actor = identify::actor(&mut request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let Some(name) = v.check("display_name", DisplayName::parse(&req.display_name)) else {
            return Err(v.into_error().into());
        };
        let changed = self.services.create_organization(&actor, name).await?;
        Ok(Response::new(pb::CreateOrganizationResponse {
            organization: Some(convert::organization(changed.value)),
            consistency_token: changed.token.encode(),
        }))
    }

    async fn get_organization(
        &self,
        mut request: Request<pb::GetOrganizationRequest>,
    ) -> Reply<pb::GetOrganizationResponse> {
        let actor = identify::actor(&mut request)?;
        let org = convert::sole_organization_id(&request.into_inner().organization_id)?;
        let org = self.services.get_organization(&actor, org).await?;
        Ok(Response::new(pb::GetOrganizationResponse {
            organization: Some(convert::organization(org)),
        }))
    }

    async fn list_organizations(
        &self,
        mut request: Request<pb::ListOrganizationsRequest>,
    ) -> Reply<pb::ListOrganizationsResponse> {
        let actor = identify::actor(&mut request)?;
        let req = request.into_inner();
        let page = page::parse("organizations", req.page_size, &req.page_token)?;
        let (orgs, next_page_token) = self.services.list_organizations(&actor, page).await?;
        Ok(Response::new(pb::ListOrganizationsResponse {
            organizations: orgs.into_iter().map(convert::organization).collect(),
            next_page_token,
        }))
    }

    async fn update_organization(
        &self,
        mut request: Request<pb::UpdateOrganizationRequest>,
    ) -> Reply<pb::UpdateOrganizationResponse> {
        let actor = identify::actor(&mut request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let Some(body) = req.organization else {
            return Err(Error::invalid("organization", "is required, with its id").into());
        };
        let org = convert::organization_id(&mut v, "organization.id", &body.id);
        let paths: Vec<String> = match req.update_mask {
            Some(mask) if !mask.paths.is_empty() => mask.paths,
            // No mask: every field that is set.
            _ => {
                let mut paths = Vec::new();
                if !body.display_name.is_empty() {
                    paths.push("display_name".to_owned());
                }
                if body.invitation_ttl.is_some() {
                    paths.push("invitation_ttl".to_owned());
                }
                paths
            }
        };
        if paths.is_empty() {
            v.add(
                "update_mask",
                "names no field to change: use display_name and/or invitation_ttl",
            );
        }
        let mut changes = OrganizationChanges::default();
        for path in &paths {
            // Protobuf's JSON mapping spells the paths in lowerCamelCase; tools that send the
            // mask as written in JSON (grpcurl's `-d`, for one) pass those names through.
            match path.as_str() {
                "display_name" | "displayName" => {
                    changes.display_name = v.check("organization.display_name", DisplayName::parse(&body.display_name));
                }
                "invitation_ttl" | "invitationTtl" => {
                    let ttl = match body.invitation_ttl {
                        None => Err("is required when update_mask names it"),
                        Some(d) if d.seconds < 0 || d.nanos != 0 => {
                            Err("must be a whole, positive number of seconds between 1 hour and 30 days")
                        }
                        Some(d) => InvitationTtl::parse(std::time::Duration::from_secs(d.seconds as u64)),
                    };
                    changes.invitation_ttl = v.check("organization.invitation_ttl", ttl);
                }
                other => v.add(
                    "update_mask",
                    format!("names {other:?}, which cannot be changed: use display_name and/or invitation_ttl"),
                ),
            }
        }
        let Some(org) = org else { return Err(v.into_error().into()) };
        v.finish()?;
        let changed = self.services.update_organization(&actor, org, changes).await?;
        Ok(Response::new(pb::UpdateOrganizationResponse {
            organization: Some(convert::organization(changed.value)),
            consistency_token: changed.token.encode(),
        }))
    }

    async fn delete_organization(
        &self,
        mut request: Request<pb::DeleteOrganizationRequest>,
    ) -> Reply<pb::DeleteOrganizationResponse> {
        let actor = identify::actor(&mut request)?;
        let org = convert::sole_organization_id(&request.into_inner().organization_id)?;
        let changed = self.services.delete_organization(&actor, org).await?;
        Ok(Response::new(pb::DeleteOrganizationResponse {
            consistency_token: changed.token.encode(),
        }))
    }

    async fn list_members(
        &self,
        mut request: Request<pb::ListMembersRequest>,
    ) -> Reply<pb::ListMembersResponse> {
        let actor = identify::actor(&mut request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let org = convert::organization_id(&mut v, "organization_id", &req.organization_id);
        let page = v.absorb(page::parse("members", req.page_size, &req.page_token));
        let (Some(org), Some(page)) = (org, page) else { return Err(v.into_error().into()) };
        let (members, next_page_token) = self.services.list_members(&actor, org, page).await?;
        Ok(Response::new(pb::ListMembersResponse {
            members: members.into_iter().map(convert::member).collect(),
            next_page_token,
        }))
    }

    async fn get_member(
        &self,
        mut request: Request<pb::GetMemberRequest>,
    ) -> Reply<pb::GetMemberResponse> {
        let actor = identify::actor(&mut request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let org = convert::organization_id(&mut v, "organization_id", &req.organization_id);
        let user = convert::user_id(&mut v, "user_id", &req.user_id);
        let (Some(org), Some(user)) = (org, user) else { return Err(v.into_error().into()) };
        let member = self.services.get_member(&actor, org, &user).await?;
        Ok(Response::new(pb::GetMemberResponse { member: Some(convert::member(member)) }))
    }

    async fn update_member_role(
        &self,
        mut request: Request<pb::UpdateMemberRoleRequest>,
    ) -> Reply<pb::UpdateMemberRoleResponse> {
        let actor = identify::actor(&mut request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let org = convert::organization_id(&mut v, "organization_id", &req.organization_id);
        let user = convert::user_id(&mut v, "user_id", &req.user_id);
        let role = convert::role(&mut v, "role", req.role);
        let (Some(org), Some(user), Some(role)) = (org, user, role) else {
            return Err(v.into_error().into());
        };
        let changed = self.services.update_member_role(&actor, org, &user, role).await?;
        Ok(Response::new(pb::UpdateMemberRoleResponse {
            member: Some(convert::member(changed.value)),
            consistency_token: changed.token.encode(),
        }))
    }

    async fn remove_member(
        &self,
        mut request: Request<pb::RemoveMemberRequest>,
    ) -> Reply<pb::RemoveMemberResponse> {
        let actor = identify::actor(&mut request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let org = convert::organization_id(&mut v, "organization_id", &req.organization_id);
        let user = convert::user_id(&mut v, "user_id", &req.user_id);
        let (Some(org), Some(user)) = (org, user) else { return Err(v.into_error().into()) };
        let changed = self.services.remove_member(&actor, org, &user).await?;
        Ok(Response::new(pb::RemoveMemberResponse { consistency_token: changed.token.encode() }))
    }

    async fn leave_organization(
        &self,
        mut request: Request<pb::LeaveOrganizationRequest>,
    ) -> Reply<pb::LeaveOrganizationResponse> {
        let actor = identify::actor(&mut request)?;
        let org = convert::sole_organization_id(&request.into_inner().organization_id)?;
        let changed = self.services.leave_organization(&actor, org).await?;
        Ok(Response::new(pb::LeaveOrganizationResponse {
            consistency_token: changed.token.encode(),
        }))
    }

    async fn transfer_ownership(
        &self,
        mut request: Request<pb::TransferOwnershipRequest>,
    ) -> Reply<pb::TransferOwnershipResponse> {
        let actor = identify::actor(&mut request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let org = convert::organization_id(&mut v, "organization_id", &req.organization_id);
        let user = convert::user_id(&mut v, "new_owner_user_id", &req.new_owner_user_id);
        let (Some(org), Some(user)) = (org, user) else { return Err(v.into_error().into()) };
        let changed = self.services.transfer_ownership(&actor, org, &user).await?;
        let (previous, new) = changed.value;
        Ok(Response::new(pb::TransferOwnershipResponse {
            previous_owner: Some(convert::member(previous)),
            new_owner: Some(convert::member(new)),
            consistency_token: changed.token.encode(),
        }))
    }

    async fn create_workspace(
        &self,
        mut request: Request<pb::CreateWorkspaceRequest>,
    ) -> Reply<pb::CreateWorkspaceResponse> {
        let actor = identify::actor(&mut request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let org = convert::organization_id(&mut v, "organization_id", &req.organization_id);
        let name = v.check("display_name", DisplayName::parse(&req.display_name));
        let (Some(org), Some(name)) = (org, name) else { return Err(v.into_error().into()) };
        let changed = self.services.create_workspace(&actor, org, name).await?;
        Ok(Response::new(pb::CreateWorkspaceResponse {
            workspace: Some(convert::workspace(changed.value)),
            consistency_token: changed.token.encode(),
        }))
    }

    async fn get_workspace(
        &self,
        mut request: Request<pb::GetWorkspaceRequest>,
    ) -> Reply<pb::GetWorkspaceResponse> {
        let actor = identify::actor(&mut request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let org = convert::organization_id(&mut v, "organization_id", &req.organization_id);
        let ws = convert::workspace_id(&mut v, "workspace_id", &req.workspace_id);
        let (Some(org), Some(ws)) = (org, ws) else { return Err(v.into_error().into()) };
        let ws = self.services.get_workspace(&actor, org, ws).await?;
        Ok(Response::new(pb::GetWorkspaceResponse { workspace: Some(convert::workspace(ws)) }))
    }

    async fn list_workspaces(
        &self,
        mut request: Request<pb::ListWorkspacesRequest>,
    ) -> Reply<pb::ListWorkspacesResponse> {
        let actor = identify::actor(&mut request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let org = convert::organization_id(&mut v, "organization_id", &req.organization_id);
        let page = v.absorb(page::parse("workspaces", req.page_size, &req.page_token));
        let (Some(org), Some(page)) = (org, page) else { return Err(v.into_error().into()) };
        let (items, next_page_token) = self.services.list_workspaces(&actor, org, page).await?;
        Ok(Response::new(pb::ListWorkspacesResponse {
            workspaces: items.into_iter().map(convert::workspace).collect(),
            next_page_token,
        }))
    }

    async fn update_workspace(
        &self,
        mut request: Request<pb::UpdateWorkspaceRequest>,
    ) -> Reply<pb::UpdateWorkspaceResponse> {
        let actor = identify::actor(&mut request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let org = convert::organization_id(&mut v, "organization_id", &req.organization_id);
        let ws = convert::workspace_id(&mut v, "workspace_id", &req.workspace_id);
        let name = v.check("display_name", DisplayName::parse(&req.display_name));
        let (Some(org), Some(ws), Some(name)) = (org, ws, name) else {
            return Err(v.into_error().into());
        };
        let changed = self.services.update_workspace(&actor, org, ws, name).await?;
        Ok(Response::new(pb::UpdateWorkspaceResponse {
            workspace: Some(convert::workspace(changed.value)),
            consistency_token: changed.token.encode(),
        }))
    }

    async fn delete_workspace(
        &self,
        mut request: Request<pb::DeleteWorkspaceRequest>,
    ) -> Reply<pb::DeleteWorkspaceResponse> {
        let actor = identify::actor(&mut request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let org = convert::organization_id(&mut v, "organization_id", &req.organization_id);
        let ws = convert::workspace_id(&mut v, "workspace_id", &req.workspace_id);
        let (Some(org), Some(ws)) = (org, ws) else { return Err(v.into_error().into()) };
        let changed = self.services.delete_workspace(&actor, org, ws).await?;
        Ok(Response::new(pb::DeleteWorkspaceResponse { consistency_token: changed.token.encode() }))
    }

    async fn set_workspace_access(
        &self,
        mut request: Request<pb::SetWorkspaceAccessRequest>,
    ) -> Reply<pb::SetWorkspaceAccessResponse> {
        let actor = identify::actor(&mut request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let org = convert::organization_id(&mut v, "organization_id", &req.organization_id);
        let ws = convert::workspace_id(&mut v, "workspace_id", &req.workspace_id);
        let user = convert::user_id(&mut v, "user_id", &req.user_id);
        let access = convert::access(&mut v, "access", req.access, true);
        let (Some(org), Some(ws), Some(user), Some(access)) = (org, ws, user, access) else {
            return Err(v.into_error().into());
        };
        let changed = self.services.set_workspace_access(&actor, org, ws, &user, access).await?;
        Ok(Response::new(pb::SetWorkspaceAccessResponse {
            grant: Some(convert::grant(changed.value)),
            consistency_token: changed.token.encode(),
        }))
    }

    async fn list_workspace_access(
        &self,
        mut request: Request<pb::ListWorkspaceAccessRequest>,
    ) -> Reply<pb::ListWorkspaceAccessResponse> {
        let actor = identify::actor(&mut request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let org = convert::organization_id(&mut v, "organization_id", &req.organization_id);
        let ws = convert::optional_workspace_id(&mut v, "workspace_id", &req.workspace_id);
        let user = if req.user_id.is_empty() {
            Some(None)
        } else {
            convert::user_id(&mut v, "user_id", &req.user_id).map(Some)
        };
        let page = v.absorb(page::parse("grants", req.page_size, &req.page_token));
        let (Some(org), Some(ws), Some(user), Some(page)) = (org, ws, user, page) else {
            return Err(v.into_error().into());
        };
        let (grants, next_page_token) =
            self.services.list_workspace_access(&actor, org, ws, user, page).await?;
        Ok(Response::new(pb::ListWorkspaceAccessResponse {
            grants: grants.into_iter().map(convert::grant).collect(),
            next_page_token,
        }))
    }

    async fn create_invitation(
        &self,
        mut request: Request<pb::CreateInvitationRequest>,
    ) -> Reply<pb::CreateInvitationResponse> {
        let actor = identify::actor(&mut request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let org = convert::organization_id(&mut v, "organization_id", &req.organization_id);
        let email = v.check("email", Email::parse(&req.email));
        let role = convert::role(&mut v, "role", req.role);
        let mut grants = Vec::with_capacity(req.workspace_grants.len().min(MAX_INVITATION_GRANTS));
        if req.workspace_grants.len() > MAX_INVITATION_GRANTS {
            v.add("workspace_grants", "must hold at most 1000 grants");
        } else {
            for (i, g) in req.workspace_grants.iter().enumerate() {
                let ws = convert::workspace_id(
                    &mut v,
                    &format!("workspace_grants[{i}].workspace_id"),
                    &g.workspace_id,
                );
                let access = convert::access(
                    &mut v,
                    &format!("workspace_grants[{i}].access"),
                    g.access,
                    false,
                );
                if let (Some(ws), Some(Some(access))) = (ws, access) {
                    if grants.iter().any(|(seen, _)| *seen == ws) {
                        v.add(
                            format!("workspace_grants[{i}].workspace_id"),
                            "names a workspace listed earlier; give each workspace once",
                        );
                    }
                    grants.push((ws, access));
                }
            }
        }
        let (Some(org), Some(email), Some(role)) = (org, email, role) else {
            return Err(v.into_error().into());
        };
        v.finish()?;
        let new = NewInvitation { email, role, workspace_grants: grants };
        let changed = self.services.create_invitation(&actor, org, new).await?;
        Ok(Response::new(pb::CreateInvitationResponse {
            invitation: Some(convert::invitation(changed.value)),
            consistency_token: changed.token.encode(),
        }))
    }

    async fn list_invitations(
        &self,
        mut request: Request<pb::ListInvitationsRequest>,
    ) -> Reply<pb::ListInvitationsResponse> {
        let actor = identify::actor(&mut request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let org = convert::organization_id(&mut v, "organization_id", &req.organization_id);
        let state = convert::state_filter(&mut v, "state", req.state);
        let page = v.absorb(page::parse("invitations", req.page_size, &req.page_token));
        let (Some(org), Some(state), Some(page)) = (org, state, page) else {
            return Err(v.into_error().into());
        };
        let (items, next_page_token) =
            self.services.list_invitations(&actor, org, state, page).await?;
        Ok(Response::new(pb::ListInvitationsResponse {
            invitations: items.into_iter().map(convert::invitation).collect(),
            next_page_token,
        }))
    }

    async fn resend_invitation(
        &self,
        mut request: Request<pb::ResendInvitationRequest>,
    ) -> Reply<pb::ResendInvitationResponse> {
        let actor = identify::actor(&mut request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let org = convert::organization_id(&mut v, "organization_id", &req.organization_id);
        let id = convert::invitation_id(&mut v, "invitation_id", &req.invitation_id);
        let (Some(org), Some(id)) = (org, id) else { return Err(v.into_error().into()) };
        let changed = self.services.resend_invitation(&actor, org, id).await?;
        Ok(Response::new(pb::ResendInvitationResponse {
            invitation: Some(convert::invitation(changed.value)),
            consistency_token: changed.token.encode(),
        }))
    }

    async fn revoke_invitation(
        &self,
        mut request: Request<pb::RevokeInvitationRequest>,
    ) -> Reply<pb::RevokeInvitationResponse> {
        let actor = identify::actor(&mut request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let org = convert::organization_id(&mut v, "organization_id", &req.organization_id);
        let id = convert::invitation_id(&mut v, "invitation_id", &req.invitation_id);
        let (Some(org), Some(id)) = (org, id) else { return Err(v.into_error().into()) };
        let changed = self.services.revoke_invitation(&actor, org, id).await?;
        Ok(Response::new(pb::RevokeInvitationResponse {
            invitation: Some(convert::invitation(changed.value)),
            consistency_token: changed.token.encode(),
        }))
    }

    async fn accept_invitation(
        &self,
        mut request: Request<pb::AcceptInvitationRequest>,
    ) -> Reply<pb::AcceptInvitationResponse> {
        let actor = identify::actor(&mut request)?;
        let req = request.into_inner();
        if req.token.is_empty() {
            return Err(
                Error::invalid("token", "is required: copy it from the invitation email").into()
            );
        }
        if req.token.len() > MAX_TOKEN_CHARS {
            return Err(Error::invalid("token", "is too long to be an invitation token").into());
        }
        let changed = self.services.accept_invitation(&actor, &req.token).await?;
        Ok(Response::new(pb::AcceptInvitationResponse {
            member: Some(convert::member(changed.value)),
            consistency_token: changed.token.encode(),
        }))
    }

    async fn list_audit_events(
        &self,
        mut request: Request<pb::ListAuditEventsRequest>,
    ) -> Reply<pb::ListAuditEventsResponse> {
        let actor = identify::actor(&mut request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let org = convert::organization_id(&mut v, "organization_id", &req.organization_id);
        let page = v.absorb(page::parse("audit", req.page_size, &req.page_token));
        let (Some(org), Some(page)) = (org, page) else { return Err(v.into_error().into()) };
        let (events, next_page_token) = self.services.list_audit_events(&actor, org, page).await?;
        Ok(Response::new(pb::ListAuditEventsResponse {
            events: events.into_iter().map(convert::audit_event).collect(),
            next_page_token,
        }))
    }
}
