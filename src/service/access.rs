//! AccessService use-cases: decisions for internal services, answered by the Authorize index.

use std::collections::HashMap;

use tracing::instrument;

use super::Services;
use super::page::{self, Page, PageRequest};
use crate::domain::authz;
use crate::domain::{
    Access, Decision, OrganizationId, Permission, Role, Scope, UserId, Workspace, WorkspaceFacts,
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

/// Members read from the database per step of a subject search: one query for the members,
/// one for their grants on the workspace.
const SUBJECT_SEARCH_STEP: u64 = 500;
/// Members a subject search looks at for one page at most (20 steps); a page that did not fill
/// by then ends early with a token, so that a sparse search of a large organization costs a
/// bounded number of queries.
const SUBJECT_SEARCH_SCAN: usize = 10_000;

impl Services {
    /// The members of an organization who hold `permission` (on `workspace_id`, for a workspace
    /// permission), by user id; each is decided by the decision function on what the database
    /// holds now (grants in force), so it is at least as fresh as any consistency token.
    #[instrument(skip_all, fields(organization = %org, permission = permission.name()))]
    pub async fn search_subjects(
        &self,
        org: OrganizationId,
        workspace_id: Option<WorkspaceId>,
        permission: Permission,
        page: PageRequest,
    ) -> Result<Page<UserId>, Error> {
        let db = self.store.reader();
        if let Some(ws) = workspace_id
            && repo::find_workspace(db, org, ws).await?.is_none()
        {
            return Ok(Page { items: Vec::new(), next_page_token: String::new() });
        }
        let mut after = page.after;
        let mut found = Vec::new();
        let mut scanned = 0;
        loop {
            let step = repo::list_members(db, org, after.as_deref(), SUBJECT_SEARCH_STEP).await?;
            let last_step = (step.len() as u64) < SUBJECT_SEARCH_STEP;
            let grants: HashMap<UserId, Access> = match workspace_id {
                None => HashMap::new(),
                Some(ws) => {
                    let users: Vec<&str> = step.iter().map(|m| m.user_id.as_str()).collect();
                    repo::list_grants_of_members(db, org, ws, &users).await?.into_iter().collect()
                }
            };
            for member in step {
                scanned += 1;
                let facts = match workspace_id {
                    None => WorkspaceFacts::NotApplicable,
                    Some(_) => WorkspaceFacts::Present(grants.get(&member.user_id).copied()),
                };
                let allowed = authz::decide(Some(member.role), facts, permission).allowed;
                after = Some(member.user_id.as_str().to_owned());
                if allowed {
                    found.push(member.user_id);
                    // One more than the page, so that a full page knows whether more follow.
                    if found.len() as u64 > page.size {
                        return Ok(page::finish("subjects", found, page.size, |u| {
                            u.as_str().to_owned()
                        }));
                    }
                }
            }
            if last_step {
                return Ok(Page { items: found, next_page_token: String::new() });
            }
            if scanned >= SUBJECT_SEARCH_SCAN {
                // The page ends where the scan stopped: the next one goes on from there.
                let next_page_token =
                    after.map(|a| page::token("subjects", &a)).unwrap_or_default();
                return Ok(Page { items: found, next_page_token });
            }
        }
    }
}
