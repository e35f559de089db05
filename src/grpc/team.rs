//! TeamService handlers: each converts its request into a command (see [`super::commands`])
//! with the caller identified once, calls the use-case and converts the result back.

use tonic::{Request, Response, Status};

use super::convert;
use super::identify;
use super::retry;
use crate::error::Error;
use crate::pb::{self, team_service_server::TeamService};
use crate::service::team::BatchCreateInvitations;
use crate::service::{Actor, Services};

/// Serves TeamService; callers are identified before a handler runs (see [`identify`]).
pub struct TeamApi {
    services: Services,
}

/// A refused batch item's status, encoded as a call's error would be (`google.rpc.Status`,
/// whose fields `BatchItemStatus` shares).
fn item_status(err: Error) -> pb::BatchItemStatus {
    let status = Status::from(err);
    match prost::Message::decode(status.details()) {
        Ok(encoded) if !status.details().is_empty() => encoded,
        _ => pb::BatchItemStatus {
            code: status.code() as i32,
            message: status.message().to_owned(),
            details: Vec::new(),
        },
    }
}

impl TeamApi {
    /// A handler set over the use-cases.
    pub fn new(services: Services) -> Self {
        Self { services }
    }
}

type Reply<T> = Result<Response<T>, Status>;

/// The caller and the command of a request. The caller comes first: a call without an
/// identity is UNAUTHENTICATED whatever its fields.
fn command<R, C: TryFrom<R, Error = Error>>(mut request: Request<R>) -> Result<(Actor, C), Status> {
    let actor = identify::actor(&mut request)?;
    Ok((actor, C::try_from(request.into_inner())?))
}

impl TeamApi {
    /// Runs a change once per request id (see [`retry::once`]).
    async fn once<R, C, T, F, Fut>(
        &self,
        method: &'static str,
        request: Request<R>,
        run: F,
    ) -> Reply<T>
    where
        R: retry::Retryable,
        C: TryFrom<R, Error = Error>,
        T: retry::Answer,
        F: FnOnce(Actor, C) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let kind = if method == "BatchCreateInvitations" {
            retry::Once::Batch
        } else {
            retry::Once::Change
        };
        retry::once(&self.services, method, kind, request, run).await
    }
}

#[tonic::async_trait]
impl TeamService for TeamApi {
    async fn create_organization(
        &self,
        request: Request<pb::CreateOrganizationRequest>,
    ) -> Reply<pb::CreateOrganizationResponse> {
        self.once("CreateOrganization", request, |actor, command| async move {
            let changed = self.services.create_organization(&actor, command).await?;
            Ok(pb::CreateOrganizationResponse {
                organization: Some(convert::organization(changed.value)),
                consistency_token: changed.token.encode(),
            })
        })
        .await
    }

    async fn get_organization(
        &self,
        request: Request<pb::GetOrganizationRequest>,
    ) -> Reply<pb::GetOrganizationResponse> {
        let (actor, command) = command(request)?;
        let found = self.services.get_organization(&actor, command).await?;
        Ok(Response::new(pb::GetOrganizationResponse {
            organization: Some(convert::organization(found)),
        }))
    }

    async fn list_organizations(
        &self,
        request: Request<pb::ListOrganizationsRequest>,
    ) -> Reply<pb::ListOrganizationsResponse> {
        let (actor, command) = command(request)?;
        let page = self.services.list_organizations(&actor, command).await?;
        Ok(Response::new(pb::ListOrganizationsResponse {
            organizations: page.items.into_iter().map(convert::organization).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn update_organization(
        &self,
        request: Request<pb::UpdateOrganizationRequest>,
    ) -> Reply<pb::UpdateOrganizationResponse> {
        self.once("UpdateOrganization", request, |actor, command| async move {
            let changed = self.services.update_organization(&actor, command).await?;
            Ok(pb::UpdateOrganizationResponse {
                organization: Some(convert::organization(changed.value)),
                consistency_token: changed.token.encode(),
            })
        })
        .await
    }

    async fn delete_organization(
        &self,
        request: Request<pb::DeleteOrganizationRequest>,
    ) -> Reply<pb::DeleteOrganizationResponse> {
        self.once("DeleteOrganization", request, |actor, command| async move {
            let changed = self.services.delete_organization(&actor, command).await?;
            Ok(pb::DeleteOrganizationResponse { consistency_token: changed.token.encode() })
        })
        .await
    }

    async fn list_members(
        &self,
        request: Request<pb::ListMembersRequest>,
    ) -> Reply<pb::ListMembersResponse> {
        let (actor, command) = command(request)?;
        let page = self.services.list_members(&actor, command).await?;
        Ok(Response::new(pb::ListMembersResponse {
            members: page.items.into_iter().map(convert::member).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn get_member(
        &self,
        request: Request<pb::GetMemberRequest>,
    ) -> Reply<pb::GetMemberResponse> {
        let (actor, command) = command(request)?;
        let found = self.services.get_member(&actor, command).await?;
        Ok(Response::new(pb::GetMemberResponse { member: Some(convert::member(found)) }))
    }

    async fn update_member_role(
        &self,
        request: Request<pb::UpdateMemberRoleRequest>,
    ) -> Reply<pb::UpdateMemberRoleResponse> {
        self.once("UpdateMemberRole", request, |actor, command| async move {
            let changed = self.services.update_member_role(&actor, command).await?;
            Ok(pb::UpdateMemberRoleResponse {
                member: Some(convert::member(changed.value)),
                consistency_token: changed.token.encode(),
            })
        })
        .await
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Reply<pb::RemoveMemberResponse> {
        self.once("RemoveMember", request, |actor, command| async move {
            let changed = self.services.remove_member(&actor, command).await?;
            Ok(pb::RemoveMemberResponse { consistency_token: changed.token.encode() })
        })
        .await
    }

    async fn leave_organization(
        &self,
        request: Request<pb::LeaveOrganizationRequest>,
    ) -> Reply<pb::LeaveOrganizationResponse> {
        self.once("LeaveOrganization", request, |actor, command| async move {
            let changed = self.services.leave_organization(&actor, command).await?;
            Ok(pb::LeaveOrganizationResponse { consistency_token: changed.token.encode() })
        })
        .await
    }

    async fn transfer_ownership(
        &self,
        request: Request<pb::TransferOwnershipRequest>,
    ) -> Reply<pb::TransferOwnershipResponse> {
        self.once("TransferOwnership", request, |actor, command| async move {
            let changed = self.services.transfer_ownership(&actor, command).await?;
            Ok(pb::TransferOwnershipResponse {
                previous_owner: Some(convert::member(changed.value.0)),
                new_owner: Some(convert::member(changed.value.1)),
                consistency_token: changed.token.encode(),
            })
        })
        .await
    }

    async fn create_workspace(
        &self,
        request: Request<pb::CreateWorkspaceRequest>,
    ) -> Reply<pb::CreateWorkspaceResponse> {
        self.once("CreateWorkspace", request, |actor, command| async move {
            let changed = self.services.create_workspace(&actor, command).await?;
            Ok(pb::CreateWorkspaceResponse {
                workspace: Some(convert::workspace(changed.value)),
                consistency_token: changed.token.encode(),
            })
        })
        .await
    }

    async fn get_workspace(
        &self,
        request: Request<pb::GetWorkspaceRequest>,
    ) -> Reply<pb::GetWorkspaceResponse> {
        let (actor, command) = command(request)?;
        let found = self.services.get_workspace(&actor, command).await?;
        Ok(Response::new(pb::GetWorkspaceResponse { workspace: Some(convert::workspace(found)) }))
    }

    async fn list_workspaces(
        &self,
        request: Request<pb::ListWorkspacesRequest>,
    ) -> Reply<pb::ListWorkspacesResponse> {
        let (actor, command) = command(request)?;
        let page = self.services.list_workspaces(&actor, command).await?;
        Ok(Response::new(pb::ListWorkspacesResponse {
            workspaces: page.items.into_iter().map(convert::workspace).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn update_workspace(
        &self,
        request: Request<pb::UpdateWorkspaceRequest>,
    ) -> Reply<pb::UpdateWorkspaceResponse> {
        self.once("UpdateWorkspace", request, |actor, command| async move {
            let changed = self.services.update_workspace(&actor, command).await?;
            Ok(pb::UpdateWorkspaceResponse {
                workspace: Some(convert::workspace(changed.value)),
                consistency_token: changed.token.encode(),
            })
        })
        .await
    }

    async fn delete_workspace(
        &self,
        request: Request<pb::DeleteWorkspaceRequest>,
    ) -> Reply<pb::DeleteWorkspaceResponse> {
        self.once("DeleteWorkspace", request, |actor, command| async move {
            let changed = self.services.delete_workspace(&actor, command).await?;
            Ok(pb::DeleteWorkspaceResponse { consistency_token: changed.token.encode() })
        })
        .await
    }

    async fn set_workspace_access(
        &self,
        request: Request<pb::SetWorkspaceAccessRequest>,
    ) -> Reply<pb::SetWorkspaceAccessResponse> {
        self.once("SetWorkspaceAccess", request, |actor, command| async move {
            let changed = self.services.set_workspace_access(&actor, command).await?;
            Ok(pb::SetWorkspaceAccessResponse {
                grant: Some(convert::grant(changed.value)),
                consistency_token: changed.token.encode(),
            })
        })
        .await
    }

    async fn list_workspace_access(
        &self,
        request: Request<pb::ListWorkspaceAccessRequest>,
    ) -> Reply<pb::ListWorkspaceAccessResponse> {
        let (actor, command) = command(request)?;
        let page = self.services.list_workspace_access(&actor, command).await?;
        Ok(Response::new(pb::ListWorkspaceAccessResponse {
            grants: page.items.into_iter().map(convert::grant).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn create_invitation(
        &self,
        request: Request<pb::CreateInvitationRequest>,
    ) -> Reply<pb::CreateInvitationResponse> {
        self.once("CreateInvitation", request, |actor, command| async move {
            let changed = self.services.create_invitation(&actor, command).await?;
            Ok(pb::CreateInvitationResponse {
                invitation: Some(convert::invitation(changed.value)),
                consistency_token: changed.token.encode(),
            })
        })
        .await
    }

    async fn batch_create_invitations(
        &self,
        request: Request<pb::BatchCreateInvitationsRequest>,
    ) -> Reply<pb::BatchCreateInvitationsResponse> {
        self.once("BatchCreateInvitations", request, |actor, command| async move {
            let BatchCreateInvitations { organization_id, items } = command;
            self.services.may_invite(&actor, organization_id).await?;
            let mut results = Vec::with_capacity(items.len());
            let mut consistency_token = String::new();
            for (i, item) in items.into_iter().enumerate() {
                let key = actor.retry.as_ref().map(|batch| batch.item(i));
                let created = retry::item(&self.services, key, |key| {
                    let actor = Actor { retry: key, ..actor.clone() };
                    async move {
                        let changed = self.services.create_invitation(&actor, item?).await?;
                        Ok(pb::CreateInvitationResponse {
                            invitation: Some(convert::invitation(changed.value)),
                            consistency_token: changed.token.encode(),
                        })
                    }
                })
                .await;
                let result = match created {
                    Ok(created) => {
                        consistency_token = created.consistency_token;
                        pb::batch_create_invitations_result::Result::Invitation(
                            created.invitation.unwrap_or_default(),
                        )
                    }
                    Err(err) => pb::batch_create_invitations_result::Result::Status(item_status(
                        err.within(&format!("invitations[{i}].")),
                    )),
                };
                results.push(pb::BatchCreateInvitationsResult { result: Some(result) });
            }
            Ok(pb::BatchCreateInvitationsResponse { results, consistency_token })
        })
        .await
    }

    async fn list_invitations(
        &self,
        request: Request<pb::ListInvitationsRequest>,
    ) -> Reply<pb::ListInvitationsResponse> {
        let (actor, command) = command(request)?;
        let page = self.services.list_invitations(&actor, command).await?;
        Ok(Response::new(pb::ListInvitationsResponse {
            invitations: page.items.into_iter().map(convert::invitation).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn resend_invitation(
        &self,
        request: Request<pb::ResendInvitationRequest>,
    ) -> Reply<pb::ResendInvitationResponse> {
        self.once("ResendInvitation", request, |actor, command| async move {
            let changed = self.services.resend_invitation(&actor, command).await?;
            Ok(pb::ResendInvitationResponse {
                invitation: Some(convert::invitation(changed.value)),
                consistency_token: changed.token.encode(),
            })
        })
        .await
    }

    async fn revoke_invitation(
        &self,
        request: Request<pb::RevokeInvitationRequest>,
    ) -> Reply<pb::RevokeInvitationResponse> {
        self.once("RevokeInvitation", request, |actor, command| async move {
            let changed = self.services.revoke_invitation(&actor, command).await?;
            Ok(pb::RevokeInvitationResponse {
                invitation: Some(convert::invitation(changed.value)),
                consistency_token: changed.token.encode(),
            })
        })
        .await
    }

    async fn accept_invitation(
        &self,
        request: Request<pb::AcceptInvitationRequest>,
    ) -> Reply<pb::AcceptInvitationResponse> {
        self.once("AcceptInvitation", request, |actor, command| async move {
            let changed = self.services.accept_invitation(&actor, command).await?;
            Ok(pb::AcceptInvitationResponse {
                member: Some(convert::member(changed.value)),
                consistency_token: changed.token.encode(),
            })
        })
        .await
    }

    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Reply<pb::ListAuditEventsResponse> {
        let (actor, command) = command(request)?;
        let page = self.services.list_audit_events(&actor, command).await?;
        Ok(Response::new(pb::ListAuditEventsResponse {
            events: page.items.into_iter().map(convert::audit_event).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn list_my_permissions(
        &self,
        request: Request<pb::ListMyPermissionsRequest>,
    ) -> Reply<pb::ListMyPermissionsResponse> {
        let (actor, command) = command(request)?;
        let mine = self.services.list_my_permissions(&actor, command).await?;
        Ok(Response::new(pb::ListMyPermissionsResponse {
            role: convert::role_pb(mine.role).into(),
            workspace_access: match mine.workspace_access {
                Some(access) => convert::access_pb(access).into(),
                None => pb::WorkspaceAccess::Unspecified.into(),
            },
            permissions: mine.permissions.iter().map(|p| p.name().to_owned()).collect(),
        }))
    }
}
