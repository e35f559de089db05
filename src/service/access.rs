//! AccessService use-cases: decisions for internal services, answered by the Authorize index.

use tracing::instrument;

use super::Services;
use super::page::{self, Page, PageRequest};
use crate::domain::authz;
use crate::domain::{
    Decision, OrganizationId, Permission, Role, Scope, UserId, Workspace, WorkspaceFacts,
    WorkspaceId,
};
use crate::error::Error;
use crate::index::{Check, Freshness};
use crate::storage::repo;

impl Services {
    /// Decides one check.
    // Debug level: at the default level a span per check would cost more than the check.
    #[instrument(level = "debug", skip_all, fields(organization = %check.organization_id, permission = check.permission.name()))]
    pub async fn authorize(&self, check: &Check<'_>) -> Result<Decision, Error> {
        self.index.decide(check).await
    }

    /// Decides several checks, in order.
    #[instrument(level = "debug", skip_all, fields(checks = checks.len()))]
    pub async fn batch_authorize(&self, checks: &[Check<'_>]) -> Result<Vec<Decision>, Error> {
        self.index.decide_batch(checks).await
    }

    /// The permissions a user holds in an organization or one of its workspaces.
    #[instrument(skip_all, fields(organization = %org))]
    pub async fn list_granted_permissions(
        &self,
        user: &UserId,
        org: OrganizationId,
        workspace_id: Option<WorkspaceId>,
        freshness: Freshness,
    ) -> Result<Vec<Permission>, Error> {
        let (role, facts) = self.index.facts(org, user.into(), workspace_id, freshness).await?;
        let scope = if workspace_id.is_some() { Scope::Workspace } else { Scope::Organization };
        Ok(Permission::ALL
            .iter()
            .copied()
            .filter(|p| p.scope() == scope && authz::decide(role, facts, *p).allowed)
            .collect())
    }

    /// The workspaces on which a user holds a workspace permission.
    #[instrument(skip_all, fields(organization = %org, permission = permission.name()))]
    pub async fn list_accessible_workspaces(
        &self,
        user: &UserId,
        org: OrganizationId,
        permission: Permission,
        page: PageRequest,
    ) -> Result<Page<Workspace>, Error> {
        let Some(needed) = permission.required_access() else {
            return Err(Error::invalid(
                "permission",
                "must be a workspace permission, such as sources.read",
            ));
        };
        let db = self.store.reader();
        let (role, _) = repo::authorization_facts(db, org, user.into(), None).await?;
        let after = page::uuid_cursor(page.after, WorkspaceId::parse)?;
        let items = match role {
            None => Vec::new(),
            Some(Role::Owner) => {
                // Owners hold WRITE everywhere; confirm with the decision function all the same.
                debug_assert!(
                    authz::decide(Some(Role::Owner), WorkspaceFacts::Present(None), permission)
                        .allowed
                );
                repo::list_workspaces(db, org, None, after, page.size + 1).await?
            }
            Some(_) => {
                repo::list_workspaces(db, org, Some((user, needed)), after, page.size + 1).await?
            }
        };
        Ok(page::finish("accessible", items, page.size, |w| w.id.to_string()))
    }
}
