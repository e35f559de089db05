//! TeamService requests converted into the use-cases' commands. Each conversion checks every
//! field and reports all bad ones at once, naming each (INVALID_ARGUMENT with a BadRequest).

use super::convert;
use crate::domain::{
    DisplayName, Email, GrantReason, InvitationTtl, InvitedGrant, MaxGrantDuration, OrganizationId,
    Timestamp,
};
use crate::error::{Error, Violations};
use crate::pb;
use crate::service::page::{self, PageRequest};
use crate::service::team::{
    AcceptInvitation, BatchCreateInvitations, CreateInvitation, CreateOrganization,
    CreateWorkspace, InvitationRef, ListAuditEvents, ListInvitations, ListMembers,
    ListMyPermissions, ListWorkspaceAccess, ListWorkspaces, MemberRef, SetWorkspaceAccess,
    TransferOwnership, UpdateMemberRole, UpdateOrganization, UpdateWorkspace, WorkspaceRef,
};

/// Longest accepted invitation token field, before any lookup.
const MAX_TOKEN_CHARS: usize = 512;
/// Most workspace grants one invitation may carry.
const MAX_INVITATION_GRANTS: usize = 1000;

/// Reads a grant's `expire_time` and `reason` (fields under `prefix`, such as
/// `workspace_grants[0].`): a reason is required with an end; whether the end lies in the future
/// and within the organization's bound is the use-case's to check, against its own clock.
fn grant_end(
    v: &mut Violations,
    prefix: &str,
    expire_time: Option<prost_types::Timestamp>,
    reason: &str,
) -> (Option<Option<Timestamp>>, Option<Option<GrantReason>>) {
    let end = match expire_time {
        None => Some(None),
        Some(t) => v.check(&format!("{prefix}expire_time"), convert::timestamp_in(t)).map(Some),
    };
    let reason = if reason.is_empty() {
        Some(None)
    } else {
        v.check(&format!("{prefix}reason"), GrantReason::parse(reason)).map(Some)
    };
    if let (Some(Some(_)), Some(None)) = (end, &reason) {
        v.add(format!("{prefix}reason"), "is required with expire_time: say why the grant ends");
    }
    (end, reason)
}

/// Requests that name only an organization.
macro_rules! organization_only {
    ($($request:ty),*) => {$(
        impl TryFrom<$request> for OrganizationId {
            type Error = Error;
            fn try_from(req: $request) -> Result<Self, Error> {
                convert::sole_organization_id(&req.organization_id)
            }
        }
    )*};
}

organization_only!(
    pb::GetOrganizationRequest,
    pb::DeleteOrganizationRequest,
    pb::LeaveOrganizationRequest
);

impl TryFrom<pb::CreateOrganizationRequest> for CreateOrganization {
    type Error = Error;
    fn try_from(req: pb::CreateOrganizationRequest) -> Result<Self, Error> {
        let mut v = Violations::new();
        match v.check("display_name", DisplayName::parse(&req.display_name)) {
            Some(display_name) => Ok(Self { display_name }),
            None => Err(v.into_error()),
        }
    }
}

impl TryFrom<pb::ListOrganizationsRequest> for PageRequest {
    type Error = Error;
    fn try_from(req: pb::ListOrganizationsRequest) -> Result<Self, Error> {
        page::parse("organizations", req.page_size, &req.page_token)
    }
}

impl TryFrom<pb::UpdateOrganizationRequest> for UpdateOrganization {
    type Error = Error;
    fn try_from(req: pb::UpdateOrganizationRequest) -> Result<Self, Error> {
        let mut v = Violations::new();
        let Some(body) = req.organization else {
            return Err(Error::invalid("organization", "is required, with its id"));
        };
        let organization_id = convert::organization_id(&mut v, "organization.id", &body.id);
        let paths = match req.update_mask {
            Some(mask) if !mask.paths.is_empty() => mask.paths,
            // No mask: every field that is set.
            _ => {
                let set = [
                    (!body.display_name.is_empty()).then_some("display_name"),
                    body.invitation_ttl.is_some().then_some("invitation_ttl"),
                    body.max_grant_duration.is_some().then_some("max_grant_duration"),
                ];
                set.into_iter().flatten().map(str::to_owned).collect()
            }
        };
        if paths.is_empty() {
            v.add(
                "update_mask",
                "names no field to change: use display_name, invitation_ttl and/or \
                 max_grant_duration",
            );
        }
        let (mut display_name, mut invitation_ttl, mut max_grant_duration) = (None, None, None);
        for path in &paths {
            // Protobuf's JSON mapping spells the paths in lowerCamelCase; tools that send the
            // mask as written in JSON (grpcurl's `-d`, for one) pass those names through.
            match path.as_str() {
                "display_name" | "displayName" => {
                    let name = DisplayName::parse(&body.display_name);
                    display_name = v.check("organization.display_name", name);
                }
                "invitation_ttl" | "invitationTtl" => {
                    let ttl = invitation_ttl_of(body.invitation_ttl);
                    invitation_ttl = v.check("organization.invitation_ttl", ttl);
                }
                // Unset in the body with the path in the mask: no bound.
                "max_grant_duration" | "maxGrantDuration" => {
                    let bound = body.max_grant_duration.map(max_grant_duration_of).transpose();
                    max_grant_duration = v.check("organization.max_grant_duration", bound);
                }
                other => v.add(
                    "update_mask",
                    format!(
                        "names {other:?}, which cannot be changed: use display_name, \
                         invitation_ttl and/or max_grant_duration"
                    ),
                ),
            }
        }
        let Some(organization_id) = organization_id else { return Err(v.into_error()) };
        v.finish()?;
        Ok(Self { organization_id, display_name, invitation_ttl, max_grant_duration })
    }
}

fn max_grant_duration_of(bound: prost_types::Duration) -> Result<MaxGrantDuration, &'static str> {
    if bound.seconds < 0 || bound.nanos != 0 {
        return Err("must be a whole, positive number of seconds between 1 minute and 366 days");
    }
    MaxGrantDuration::parse(std::time::Duration::from_secs(bound.seconds as u64))
}

fn invitation_ttl_of(ttl: Option<prost_types::Duration>) -> Result<InvitationTtl, &'static str> {
    match ttl {
        None => Err("is required when update_mask names it"),
        Some(d) if d.seconds < 0 || d.nanos != 0 => {
            Err("must be a whole, positive number of seconds between 1 hour and 30 days")
        }
        Some(d) => InvitationTtl::parse(std::time::Duration::from_secs(d.seconds as u64)),
    }
}

impl TryFrom<pb::ListMembersRequest> for ListMembers {
    type Error = Error;
    fn try_from(req: pb::ListMembersRequest) -> Result<Self, Error> {
        let mut v = Violations::new();
        let org = convert::organization_id(&mut v, "organization_id", &req.organization_id);
        let page = v.absorb(page::parse("members", req.page_size, &req.page_token));
        let (Some(organization_id), Some(page)) = (org, page) else { return Err(v.into_error()) };
        Ok(Self { organization_id, page })
    }
}

/// Reads an organization id and a user id, the two fields of GetMember and RemoveMember.
fn member_ref(org: &str, user: &str) -> Result<MemberRef, Error> {
    let mut v = Violations::new();
    let org = convert::organization_id(&mut v, "organization_id", org);
    let user = convert::user_id(&mut v, "user_id", user);
    let (Some(organization_id), Some(user_id)) = (org, user) else { return Err(v.into_error()) };
    Ok(MemberRef { organization_id, user_id })
}

impl TryFrom<pb::GetMemberRequest> for MemberRef {
    type Error = Error;
    fn try_from(req: pb::GetMemberRequest) -> Result<Self, Error> {
        member_ref(&req.organization_id, &req.user_id)
    }
}

impl TryFrom<pb::RemoveMemberRequest> for MemberRef {
    type Error = Error;
    fn try_from(req: pb::RemoveMemberRequest) -> Result<Self, Error> {
        member_ref(&req.organization_id, &req.user_id)
    }
}

impl TryFrom<pb::UpdateMemberRoleRequest> for UpdateMemberRole {
    type Error = Error;
    fn try_from(req: pb::UpdateMemberRoleRequest) -> Result<Self, Error> {
        let mut v = Violations::new();
        let org = convert::organization_id(&mut v, "organization_id", &req.organization_id);
        let user = convert::user_id(&mut v, "user_id", &req.user_id);
        let role = convert::role(&mut v, "role", req.role);
        let (Some(organization_id), Some(user_id), Some(role)) = (org, user, role) else {
            return Err(v.into_error());
        };
        Ok(Self { organization_id, user_id, role })
    }
}

impl TryFrom<pb::TransferOwnershipRequest> for TransferOwnership {
    type Error = Error;
    fn try_from(req: pb::TransferOwnershipRequest) -> Result<Self, Error> {
        let mut v = Violations::new();
        let org = convert::organization_id(&mut v, "organization_id", &req.organization_id);
        let user = convert::user_id(&mut v, "new_owner_user_id", &req.new_owner_user_id);
        let (Some(organization_id), Some(new_owner)) = (org, user) else {
            return Err(v.into_error());
        };
        Ok(Self { organization_id, new_owner })
    }
}

impl TryFrom<pb::CreateWorkspaceRequest> for CreateWorkspace {
    type Error = Error;
    fn try_from(req: pb::CreateWorkspaceRequest) -> Result<Self, Error> {
        let mut v = Violations::new();
        let org = convert::organization_id(&mut v, "organization_id", &req.organization_id);
        let name = v.check("display_name", DisplayName::parse(&req.display_name));
        let (Some(organization_id), Some(display_name)) = (org, name) else {
            return Err(v.into_error());
        };
        Ok(Self { organization_id, display_name })
    }
}

/// Reads an organization id and a workspace id, the two fields of GetWorkspace and
/// DeleteWorkspace.
fn workspace_ref(org: &str, workspace: &str) -> Result<WorkspaceRef, Error> {
    let mut v = Violations::new();
    let org = convert::organization_id(&mut v, "organization_id", org);
    let ws = convert::workspace_id(&mut v, "workspace_id", workspace);
    let (Some(organization_id), Some(workspace_id)) = (org, ws) else {
        return Err(v.into_error());
    };
    Ok(WorkspaceRef { organization_id, workspace_id })
}

impl TryFrom<pb::GetWorkspaceRequest> for WorkspaceRef {
    type Error = Error;
    fn try_from(req: pb::GetWorkspaceRequest) -> Result<Self, Error> {
        workspace_ref(&req.organization_id, &req.workspace_id)
    }
}

impl TryFrom<pb::DeleteWorkspaceRequest> for WorkspaceRef {
    type Error = Error;
    fn try_from(req: pb::DeleteWorkspaceRequest) -> Result<Self, Error> {
        workspace_ref(&req.organization_id, &req.workspace_id)
    }
}

impl TryFrom<pb::ListWorkspacesRequest> for ListWorkspaces {
    type Error = Error;
    fn try_from(req: pb::ListWorkspacesRequest) -> Result<Self, Error> {
        let mut v = Violations::new();
        let org = convert::organization_id(&mut v, "organization_id", &req.organization_id);
        let page = v.absorb(page::parse("workspaces", req.page_size, &req.page_token));
        let (Some(organization_id), Some(page)) = (org, page) else { return Err(v.into_error()) };
        Ok(Self { organization_id, page })
    }
}

impl TryFrom<pb::UpdateWorkspaceRequest> for UpdateWorkspace {
    type Error = Error;
    fn try_from(req: pb::UpdateWorkspaceRequest) -> Result<Self, Error> {
        let mut v = Violations::new();
        let org = convert::organization_id(&mut v, "organization_id", &req.organization_id);
        let ws = convert::workspace_id(&mut v, "workspace_id", &req.workspace_id);
        let name = v.check("display_name", DisplayName::parse(&req.display_name));
        let (Some(organization_id), Some(workspace_id), Some(display_name)) = (org, ws, name)
        else {
            return Err(v.into_error());
        };
        Ok(Self { organization_id, workspace_id, display_name })
    }
}

impl TryFrom<pb::SetWorkspaceAccessRequest> for SetWorkspaceAccess {
    type Error = Error;
    fn try_from(req: pb::SetWorkspaceAccessRequest) -> Result<Self, Error> {
        let mut v = Violations::new();
        let org = convert::organization_id(&mut v, "organization_id", &req.organization_id);
        let ws = convert::workspace_id(&mut v, "workspace_id", &req.workspace_id);
        let user = convert::user_id(&mut v, "user_id", &req.user_id);
        let access = convert::access(&mut v, "access", req.access, true);
        let (expire_time, reason) = grant_end(&mut v, "", req.expire_time, &req.reason);
        if let (Some(None), Some(Some(_))) = (access, expire_time) {
            v.add("expire_time", "must be unset with WORKSPACE_ACCESS_NONE: a removal has no end");
        }
        let (
            Some(organization_id),
            Some(workspace_id),
            Some(user_id),
            Some(access),
            Some(expire_time),
            Some(reason),
        ) = (org, ws, user, access, expire_time, reason)
        else {
            return Err(v.into_error());
        };
        v.finish()?;
        Ok(Self { organization_id, workspace_id, user_id, access, expire_time, reason })
    }
}

impl TryFrom<pb::ListWorkspaceAccessRequest> for ListWorkspaceAccess {
    type Error = Error;
    fn try_from(req: pb::ListWorkspaceAccessRequest) -> Result<Self, Error> {
        let mut v = Violations::new();
        let org = convert::organization_id(&mut v, "organization_id", &req.organization_id);
        let ws = convert::optional_workspace_id(&mut v, "workspace_id", &req.workspace_id);
        let user = if req.user_id.is_empty() {
            Some(None)
        } else {
            convert::user_id(&mut v, "user_id", &req.user_id).map(Some)
        };
        let page = v.absorb(page::parse("grants", req.page_size, &req.page_token));
        let (Some(organization_id), Some(workspace_id), Some(user_id), Some(page)) =
            (org, ws, user, page)
        else {
            return Err(v.into_error());
        };
        Ok(Self { organization_id, workspace_id, user_id, page })
    }
}

impl TryFrom<pb::ListMyPermissionsRequest> for ListMyPermissions {
    type Error = Error;
    fn try_from(req: pb::ListMyPermissionsRequest) -> Result<Self, Error> {
        let mut v = Violations::new();
        let org = convert::organization_id(&mut v, "organization_id", &req.organization_id);
        let ws = convert::optional_workspace_id(&mut v, "workspace_id", &req.workspace_id);
        let (Some(organization_id), Some(workspace_id)) = (org, ws) else {
            return Err(v.into_error());
        };
        Ok(Self { organization_id, workspace_id })
    }
}

impl TryFrom<pb::CreateInvitationRequest> for CreateInvitation {
    type Error = Error;
    fn try_from(req: pb::CreateInvitationRequest) -> Result<Self, Error> {
        let mut v = Violations::new();
        let org = convert::organization_id(&mut v, "organization_id", &req.organization_id);
        let email = v.check("email", Email::parse(&req.email));
        let role = convert::role(&mut v, "role", req.role);
        let mut grants = Vec::with_capacity(req.workspace_grants.len().min(MAX_INVITATION_GRANTS));
        if req.workspace_grants.len() > MAX_INVITATION_GRANTS {
            v.add("workspace_grants", "must hold at most 1000 grants");
        } else {
            for (i, g) in req.workspace_grants.iter().enumerate() {
                let field = |name: &str| format!("workspace_grants[{i}].{name}");
                let ws = convert::workspace_id(&mut v, &field("workspace_id"), &g.workspace_id);
                let access = convert::access(&mut v, &field("access"), g.access, false);
                let prefix = format!("workspace_grants[{i}].");
                let (end, reason) = grant_end(&mut v, &prefix, g.expire_time, &g.reason);
                if let (Some(ws), Some(Some(access)), Some(expire_time), Some(reason)) =
                    (ws, access, end, reason)
                {
                    if grants.iter().any(|seen: &InvitedGrant| seen.workspace_id == ws) {
                        v.add(
                            field("workspace_id"),
                            "names a workspace listed earlier; give each workspace once",
                        );
                    }
                    grants.push(InvitedGrant { workspace_id: ws, access, expire_time, reason });
                }
            }
        }
        let (Some(organization_id), Some(email), Some(role)) = (org, email, role) else {
            return Err(v.into_error());
        };
        v.finish()?;
        Ok(Self { organization_id, email, role, workspace_grants: grants })
    }
}

/// Most invitations one BatchCreateInvitations may carry. Item errors keep the item's own field
/// names here; the handler puts them under `invitations[i].`.
const MAX_BATCH_INVITATIONS: usize = 100;

impl TryFrom<pb::BatchCreateInvitationsRequest> for BatchCreateInvitations {
    type Error = Error;
    fn try_from(req: pb::BatchCreateInvitationsRequest) -> Result<Self, Error> {
        let mut v = Violations::new();
        let org = convert::organization_id(&mut v, "organization_id", &req.organization_id);
        if req.invitations.is_empty() {
            v.add("invitations", "must hold at least one invitation");
        } else if req.invitations.len() > MAX_BATCH_INVITATIONS {
            v.add(
                "invitations",
                "must hold at most 100 invitations; send the rest in another batch",
            );
        }
        for (i, item) in req.invitations.iter().enumerate().take(MAX_BATCH_INVITATIONS) {
            if !item.organization_id.is_empty() && item.organization_id != req.organization_id {
                v.add(
                    format!("invitations[{i}].organization_id"),
                    "must be empty or the batch's organization_id",
                );
            }
            if !item.request_id.is_empty() {
                v.add(
                    format!("invitations[{i}].request_id"),
                    "must be empty: the batch's own request_id makes every item safe to retry",
                );
            }
        }
        let Some(organization_id) = org else { return Err(v.into_error()) };
        v.finish()?;
        let items = req
            .invitations
            .into_iter()
            .map(|mut item| {
                item.organization_id.clone_from(&req.organization_id);
                CreateInvitation::try_from(item)
            })
            .collect();
        Ok(Self { organization_id, items })
    }
}

impl TryFrom<pb::ListInvitationsRequest> for ListInvitations {
    type Error = Error;
    fn try_from(req: pb::ListInvitationsRequest) -> Result<Self, Error> {
        let mut v = Violations::new();
        let org = convert::organization_id(&mut v, "organization_id", &req.organization_id);
        let state = convert::state_filter(&mut v, "state", req.state);
        let page = v.absorb(page::parse("invitations", req.page_size, &req.page_token));
        let (Some(organization_id), Some(state), Some(page)) = (org, state, page) else {
            return Err(v.into_error());
        };
        Ok(Self { organization_id, state, page })
    }
}

/// Reads an organization id and an invitation id, the two fields of ResendInvitation and
/// RevokeInvitation.
fn invitation_ref(org: &str, invitation: &str) -> Result<InvitationRef, Error> {
    let mut v = Violations::new();
    let org = convert::organization_id(&mut v, "organization_id", org);
    let id = convert::invitation_id(&mut v, "invitation_id", invitation);
    let (Some(organization_id), Some(invitation_id)) = (org, id) else {
        return Err(v.into_error());
    };
    Ok(InvitationRef { organization_id, invitation_id })
}

impl TryFrom<pb::ResendInvitationRequest> for InvitationRef {
    type Error = Error;
    fn try_from(req: pb::ResendInvitationRequest) -> Result<Self, Error> {
        invitation_ref(&req.organization_id, &req.invitation_id)
    }
}

impl TryFrom<pb::RevokeInvitationRequest> for InvitationRef {
    type Error = Error;
    fn try_from(req: pb::RevokeInvitationRequest) -> Result<Self, Error> {
        invitation_ref(&req.organization_id, &req.invitation_id)
    }
}

impl TryFrom<pb::AcceptInvitationRequest> for AcceptInvitation {
    type Error = Error;
    fn try_from(req: pb::AcceptInvitationRequest) -> Result<Self, Error> {
        if req.token.is_empty() {
            return Err(Error::invalid("token", "is required: copy it from the invitation email"));
        }
        if req.token.len() > MAX_TOKEN_CHARS {
            return Err(Error::invalid("token", "is too long to be an invitation token"));
        }
        Ok(Self { token: req.token })
    }
}

impl TryFrom<pb::ListAuditEventsRequest> for ListAuditEvents {
    type Error = Error;
    fn try_from(req: pb::ListAuditEventsRequest) -> Result<Self, Error> {
        let mut v = Violations::new();
        let org = convert::organization_id(&mut v, "organization_id", &req.organization_id);
        let page = v.absorb(page::parse("audit", req.page_size, &req.page_token));
        let (Some(organization_id), Some(page)) = (org, page) else { return Err(v.into_error()) };
        Ok(Self { organization_id, page })
    }
}
