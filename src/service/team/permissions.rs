//! What the caller may do in an organization or one of its workspaces, for a front end that
//! shows or hides each button from it. Decided by the same rules as Authorize, from the database
//! (a page load is not the hot path, and it should see the caller's own changes from any replica).

use tracing::instrument;

use crate::domain::authz::{self, WorkspaceFacts};
use crate::domain::rules;
use crate::domain::{Access, OrganizationId, Permission, Role, Scope, WorkspaceId};
use crate::error::Error;
use crate::service::{Actor, Services};
use crate::storage::repo;

/// What ListMyPermissions asks, every field checked.
#[derive(Debug)]
pub struct ListMyPermissions {
    pub organization_id: OrganizationId,
    /// The workspace asked about; none asks about the organization.
    pub workspace_id: Option<WorkspaceId>,
}

/// The caller's standing in an organization, or in one of its workspaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MyPermissions {
    pub role: Role,
    /// The caller's effective access to the workspace asked about (an Owner's implicit WRITE
    /// included, an ended grant not); none when no workspace was named.
    pub workspace_access: Option<Option<Access>>,
    /// The permissions of the asked scope the caller holds, in catalogue order.
    pub permissions: Vec<Permission>,
}

impl Services {
    /// The caller's role and permissions in an organization, or in one of its workspaces. A
    /// workspace the caller may not see (Billing and Member users see only those they hold a
    /// grant on) answers NOT_FOUND, as GetWorkspace does.
    #[instrument(skip_all, fields(actor = %actor.user_id, organization = %command.organization_id))]
    pub async fn list_my_permissions(
        &self,
        actor: &Actor,
        command: ListMyPermissions,
    ) -> Result<MyPermissions, Error> {
        let ListMyPermissions { organization_id: org, workspace_id } = command;
        tracing::Span::current().record("organization_id", tracing::field::display(org));
        let db = self.store.reader();
        let (role, facts) =
            repo::authorization_facts(db, org, (&actor.user_id).into(), workspace_id).await?;
        let Some(role) = role else { return Err(Error::NotFound("organization")) };
        let visible = match facts {
            WorkspaceFacts::NotApplicable => true,
            WorkspaceFacts::Missing => false,
            // The grant's row is there, ended or not, as GetWorkspace sees it.
            WorkspaceFacts::Present(grant) => grant.is_some() || rules::sees_every_workspace(role),
            WorkspaceFacts::Ended(_) => true,
        };
        if !visible {
            return Err(Error::NotFound("workspace"));
        }
        let scope = if workspace_id.is_some() { Scope::Workspace } else { Scope::Organization };
        let permissions = Permission::ALL
            .iter()
            .copied()
            .filter(|p| p.scope() == scope && authz::decide(Some(role), facts, *p).allowed)
            .collect();
        let workspace_access = workspace_id
            .map(|_| authz::decide(Some(role), facts, Permission::WorkspaceRead).workspace_access)
            .map(Option::flatten);
        Ok(MyPermissions { role, workspace_access, permissions })
    }
}
