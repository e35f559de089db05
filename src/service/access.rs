//! AccessService use-cases: decisions for internal services.

use tracing::instrument;

use super::Services;
use super::page::{self, PageRequest};
use super::team::Page;
use crate::domain::authz::{self, WorkspaceFacts};
use crate::domain::{
    Decision, OrganizationId, Permission, Role, Scope, UserId, UserIdRef, Workspace, WorkspaceId,
};
use crate::error::Error;
use crate::storage::changes::{self, Change};
use crate::storage::repo;
use crate::storage::snapshot::{Facts, Fast, OrgIndex};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// One validated check: the permission's scope and the presence of a workspace agree.
#[derive(Debug, Clone)]
pub struct Check<'a> {
    /// Who.
    pub user_id: UserIdRef<'a>,
    /// Where.
    pub organization_id: OrganizationId,
    /// Which workspace, for a workspace permission.
    pub workspace_id: Option<WorkspaceId>,
    /// What.
    pub permission: Permission,
    /// Read the database rather than the cache (FULLY_CONSISTENT, or AT_LEAST_AS_FRESH).
    pub fresh: bool,
}

impl Services {
    /// Brings this replica's index of `org` up to a change that has just committed, before the
    /// change's RPC returns (see [`changes::apply`]).
    pub(super) async fn index_committed(&self, org: OrganizationId, change: Change<'_>) {
        changes::apply(&self.store, &self.authz_cache, org, change).await;
    }

    /// Decides one check with one indexed lookup.
    // Debug level: at the default level a span per check would cost more than the check.
    #[instrument(level = "debug", skip_all, fields(organization = %check.organization_id, permission = check.permission.name()))]
    pub async fn authorize(&self, check: &Check<'_>) -> Result<Decision, Error> {
        self.decide_check(check).await
    }

    async fn decide_check(&self, check: &Check<'_>) -> Result<Decision, Error> {
        let (role, facts) = self
            .facts(check.organization_id, check.user_id, check.workspace_id, check.fresh)
            .await?;
        let decision = authz::decide(role, facts, check.permission);
        tracing::debug!(allowed = decision.allowed, reason = ?decision.reason, "decided");
        Ok(decision)
    }

    /// Decides several checks, in order.
    #[instrument(level = "debug", skip_all, fields(checks = checks.len()))]
    pub async fn batch_authorize(&self, checks: &[Check<'_>]) -> Result<Vec<Decision>, Error> {
        // One index lookup per organization of the batch, not per check; a batch may span many
        // organizations, hence a map rather than a list to search.
        let mut indexes: HashMap<OrganizationId, Option<Arc<OrgIndex>>, Fast> =
            HashMap::with_capacity_and_hasher(checks.len().min(64), Fast::default());
        let mut hits = 0;
        for check in checks.iter().filter(|c| !c.fresh) {
            let org = check.organization_id;
            match indexes.get(&org) {
                Some(index) => hits += u64::from(index.is_some()),
                None => {
                    let index = self.counted_index(org).await?;
                    indexes.insert(org, index);
                }
            }
        }
        // One update of the shared counter per batch rather than one per check.
        self.authz_cache.count_hits(hits);
        // Every check answered from memory is located before any is decided (see
        // `OrgIndex::locate`); the others read the database in the last pass.
        let located: Vec<_> = checks
            .iter()
            .map(|check| {
                let index = indexes.get(&check.organization_id)?.as_ref()?;
                (!check.fresh).then(|| index.locate(check.user_id, check.workspace_id))
            })
            .collect();
        let mut decisions = Vec::with_capacity(checks.len());
        for (check, located) in checks.iter().zip(located) {
            decisions.push(match located {
                Some(located) => {
                    let (role, facts) = located.facts();
                    authz::decide(role, facts, check.permission)
                }
                None => self.decide_check(check).await?,
            });
        }
        Ok(decisions)
    }

    /// The organization's index for a check, counted as a hit, or as a miss if this call loaded
    /// it; `None` when the database must answer (that read counts itself).
    async fn counted_index(&self, org: OrganizationId) -> Result<Option<Arc<OrgIndex>>, Error> {
        // Nearly every check: loaded already, no waiting.
        if let Some(index) = self.authz_cache.loaded(org) {
            self.authz_cache.count_hit();
            return Ok(Some(index));
        }
        let (index, loaded) = self.index_for(org).await?;
        if index.is_some() {
            if loaded { self.authz_cache.count_miss() } else { self.authz_cache.count_hit() }
        }
        Ok(index)
    }

    /// The organization's in-memory index, loading it on first use, and whether this call
    /// loaded it; `None` when checks must read the database (the index is bypassed, or the
    /// organization is larger than its limit).
    async fn index_for(&self, org: OrganizationId) -> Result<(Option<Arc<OrgIndex>>, bool), Error> {
        let cache = &self.authz_cache;
        let Some(slot) = cache.slot(org) else { return Ok((None, false)) };
        let loaded = AtomicBool::new(false);
        let index = slot
            .index
            .get_or_try_init(|| async {
                loaded.store(true, Ordering::Relaxed);
                let Some(index) = repo::load_organization_index(self.store.reader(), org).await?
                else {
                    // No such organization: its next checks cost nothing (until a change says
                    // it exists), and nobody is a member of it.
                    cache.mark_absent(org, &slot);
                    return Ok(Some(cache.absent_index()));
                };
                if !cache.fits(&index) {
                    tracing::warn!(organization = %org, rows = index.entries(), "organization larger than --authz-cache-entries; its checks read the database");
                    return Ok::<_, Error>(None);
                }
                let index = Arc::new(index);
                cache.admit(org, &slot, &index);
                Ok(Some(index))
            })
            .await;
        match index {
            Ok(index) => Ok((index.clone(), loaded.load(Ordering::Relaxed))),
            Err(err) => {
                // Leave no empty slot behind a failed load.
                cache.invalidate(org);
                Err(err)
            }
        }
    }

    /// The facts of a check: from the organization's in-memory index when it may be used, else
    /// from the database.
    async fn facts(
        &self,
        org: OrganizationId,
        user: UserIdRef<'_>,
        workspace_id: Option<WorkspaceId>,
        fresh: bool,
    ) -> Result<Facts, Error> {
        if !fresh && let Some(index) = self.counted_index(org).await? {
            return Ok(index.facts(user, workspace_id));
        }
        self.authz_cache.count_miss();
        repo::authorization_facts(self.store.reader(), org, user, workspace_id).await
    }

    /// The permissions a user holds in an organization or one of its workspaces.
    #[instrument(skip_all, fields(organization = %org))]
    pub async fn list_granted_permissions(
        &self,
        user: &UserId,
        org: OrganizationId,
        workspace_id: Option<WorkspaceId>,
        fresh: bool,
    ) -> Result<Vec<Permission>, Error> {
        let (role, facts) = self.facts(org, user.into(), workspace_id, fresh).await?;
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
        let Some(needed) = authz::required_access(permission) else {
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
