//! Workspaces. Owners and Admins see every workspace; Billing and Member users only those they
//! hold a grant on.

use serde_json::json;
use tracing::instrument;

use super::membership;
use crate::domain::capability as cap;
use crate::domain::rules;
use crate::domain::{
    Access, AuditAction, AuditTarget, Delta, DisplayName, OrganizationId, Timestamp, Workspace,
    WorkspaceId,
};
use crate::error::Error;
use crate::service::page::{self, Page, PageRequest};
use crate::service::team::change::Audited;
use crate::service::{Actor, Changed, Services};
use crate::storage::repo;

/// What CreateWorkspace asks, every field checked.
#[derive(Debug)]
pub struct CreateWorkspace {
    pub organization_id: OrganizationId,
    pub display_name: DisplayName,
}

/// One workspace of an organization, as GetWorkspace and DeleteWorkspace name it.
#[derive(Debug)]
pub struct WorkspaceRef {
    pub organization_id: OrganizationId,
    pub workspace_id: WorkspaceId,
}

/// What ListWorkspaces asks, every field checked.
#[derive(Debug)]
pub struct ListWorkspaces {
    pub organization_id: OrganizationId,
    pub page: PageRequest,
}

/// What UpdateWorkspace asks, every field checked.
#[derive(Debug)]
pub struct UpdateWorkspace {
    pub organization_id: OrganizationId,
    pub workspace_id: WorkspaceId,
    pub display_name: DisplayName,
}

impl Services {
    /// Creates a workspace.
    #[instrument(skip_all, fields(actor = %actor.user_id, organization = %command.organization_id))]
    pub async fn create_workspace(
        &self,
        actor: &Actor,
        command: CreateWorkspace,
    ) -> Result<Changed<Workspace>, Error> {
        let CreateWorkspace { organization_id: org, display_name } = command;
        let checked = self.begin::<cap::WorkspacesCreate>(org, actor).await?;
        let now = Timestamp::now();
        let id = WorkspaceId::generate();
        let ws =
            repo::insert_workspace(&*checked.tx, &checked.pass, id, &display_name, now).await?;
        let audited = Audited {
            action: AuditAction::WorkspaceCreated,
            target: AuditTarget::Workspace(ws.id),
            details: json!({ "display_name": display_name.as_str() }),
        };
        let deltas = vec![Delta::WorkspaceCreated { workspace: ws.id, display_name }];
        let token = self.finish(checked.tx, actor, audited, deltas, now).await?;
        Ok(Changed { value: ws, token })
    }

    /// Returns a workspace the actor may see.
    #[instrument(skip_all, fields(actor = %actor.user_id, organization = %command.organization_id, workspace = %command.workspace_id))]
    pub async fn get_workspace(
        &self,
        actor: &Actor,
        command: WorkspaceRef,
    ) -> Result<Workspace, Error> {
        let WorkspaceRef { organization_id: org, workspace_id: id } = command;
        let db = self.store.reader();
        let me = membership(db, org, actor).await?;
        let ws = repo::find_workspace(db, org, id).await?.ok_or(Error::NotFound("workspace"))?;
        if !rules::sees_every_workspace(me.role)
            && repo::find_grant(db, org, id, &actor.user_id).await?.is_none()
        {
            // Billing and Member users see only workspaces they hold a grant on.
            return Err(Error::NotFound("workspace"));
        }
        Ok(ws)
    }

    /// Lists the workspaces the actor may see.
    #[instrument(skip_all, fields(actor = %actor.user_id, organization = %command.organization_id))]
    pub async fn list_workspaces(
        &self,
        actor: &Actor,
        command: ListWorkspaces,
    ) -> Result<Page<Workspace>, Error> {
        let (org, page) = (command.organization_id, command.page);
        let db = self.store.reader();
        let me = membership(db, org, actor).await?;
        let after = page::uuid_cursor(page.after, WorkspaceId::parse)?;
        let granted_to =
            (!rules::sees_every_workspace(me.role)).then_some((&actor.user_id, Access::Read));
        let items = repo::list_workspaces(db, org, granted_to, after, page.size + 1).await?;
        Ok(page::finish("workspaces", items, page.size, |w| w.id.to_string()))
    }

    /// Renames a workspace.
    #[instrument(skip_all, fields(actor = %actor.user_id, organization = %command.organization_id, workspace = %command.workspace_id))]
    pub async fn update_workspace(
        &self,
        actor: &Actor,
        command: UpdateWorkspace,
    ) -> Result<Changed<Workspace>, Error> {
        let UpdateWorkspace { organization_id: org, workspace_id: id, display_name } = command;
        let checked = self.begin::<cap::WorkspacesUpdate>(org, actor).await?;
        let tx = checked.tx;
        let ws = repo::find_workspace(&*tx, org, id).await?.ok_or(Error::NotFound("workspace"))?;
        if ws.display_name == display_name {
            return Ok(Changed { value: ws, token: self.unchanged(tx, actor).await? });
        }
        let now = Timestamp::now();
        repo::update_workspace_name(&*tx, &checked.pass, id, &display_name).await?;
        let audited = Audited {
            action: AuditAction::WorkspaceUpdated,
            target: AuditTarget::Workspace(id),
            details: json!({
                "old_display_name": ws.display_name.as_str(),
                "display_name": display_name.as_str(),
            }),
        };
        // A name: nothing Authorize decides on.
        let token = self.finish(tx, actor, audited, Vec::new(), now).await?;
        Ok(Changed { value: Workspace { display_name, ..ws }, token })
    }

    /// Deletes a workspace and its grants.
    #[instrument(skip_all, fields(actor = %actor.user_id, organization = %command.organization_id, workspace = %command.workspace_id))]
    pub async fn delete_workspace(
        &self,
        actor: &Actor,
        command: WorkspaceRef,
    ) -> Result<Changed<()>, Error> {
        let WorkspaceRef { organization_id: org, workspace_id: id } = command;
        let checked = self.begin::<cap::WorkspacesDelete>(org, actor).await?;
        let tx = checked.tx;
        let ws = repo::find_workspace(&*tx, org, id).await?.ok_or(Error::NotFound("workspace"))?;
        let now = Timestamp::now();
        let grants = repo::delete_workspace(&*tx, &checked.pass, id).await?;
        let audited = Audited {
            action: AuditAction::WorkspaceDeleted,
            target: AuditTarget::Workspace(id),
            details: json!({ "display_name": ws.display_name.as_str() }),
        };
        // Rule 4: the workspace's grants go with it, each spelled out.
        let deltas = std::iter::once(Delta::WorkspaceDeleted { workspace: id })
            .chain(grants.into_iter().map(|(user, access)| Delta::GrantChanged {
                user,
                workspace: id,
                old: Some(access),
                new: None,
                expire_time: None,
            }))
            .collect();
        let token = self.finish(tx, actor, audited, deltas, now).await?;
        Ok(Changed { value: (), token })
    }
}
