//! Workspace grants: who holds READ or WRITE on which workspace.

use serde_json::json;
use tracing::instrument;

use super::change::Audited;
use super::{check_end, membership};
use crate::domain::capability as cap;
use crate::domain::rules;
use crate::domain::{
    Access, AuditAction, AuditTarget, Delta, Grant, GrantReason, OrganizationId, Role, Timestamp,
    UserId, WorkspaceFacts, WorkspaceId,
};
use crate::error::{Error, ErrorReason};
use crate::service::page::{self, Page, PageRequest};
use crate::service::{Actor, Changed, Services};
use crate::storage::changelog::OrgChange;
use crate::storage::repo;

/// A validated SetWorkspaceAccess request; `access` `None` removes the grant.
#[derive(Debug)]
pub struct SetWorkspaceAccess {
    pub organization_id: OrganizationId,
    pub workspace_id: WorkspaceId,
    pub user_id: UserId,
    pub access: Option<Access>,
    /// When the grant ends; `None`: permanent. Always `None` with no access.
    pub expire_time: Option<Timestamp>,
    /// Why; present whenever `expire_time` is.
    pub reason: Option<GrantReason>,
}

/// A validated ListWorkspaceAccess request; each filter is optional.
#[derive(Debug)]
pub struct ListWorkspaceAccess {
    pub organization_id: OrganizationId,
    pub workspace_id: Option<WorkspaceId>,
    pub user_id: Option<UserId>,
    pub page: PageRequest,
}

/// How often a process looks for grants whose end has passed and records them.
const RECORD_ENDS_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// How long a change's request id is remembered: at least a day, as promised to callers.
const REQUEST_IDS_KEPT: std::time::Duration = std::time::Duration::from_secs(48 * 3600);
/// Ticks of the recorder between sweeps of old request ids (ten minutes).
const SWEEP_REQUEST_IDS_EVERY_TICKS: u64 = 1200;

/// Starts the task that records ended grants (see [`Services::record_ended_grants`]) every
/// half second until `stop`; every replica runs one, and each grant's end is recorded once.
pub fn spawn_recorder(
    services: Services,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(RECORD_ENDS_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        let mut ticks: u64 = 0;
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
            // Old request ids go with the same task, far less often.
            if ticks.is_multiple_of(SWEEP_REQUEST_IDS_EVERY_TICKS)
                && let Err(err) = services.forget_request_ids_older_than(REQUEST_IDS_KEPT).await
            {
                tracing::warn!(error = %err, "cannot forget old request ids yet; retrying later");
            }
            ticks += 1;
            match services.record_ended_grants().await {
                Ok(_) => failing = false,
                // Decisions do not wait for the record; it is written once the database answers.
                Err(err) if !failing => {
                    failing = true;
                    tracing::warn!(error = %err, "cannot record ended grants yet; retrying");
                }
                Err(_) => {}
            }
        }
    })
}

impl Services {
    /// Grants, changes or removes a member's access to a workspace.
    #[instrument(skip_all, fields(actor = %actor.user_id, organization = %command.organization_id, workspace = %command.workspace_id, user = %command.user_id))]
    pub async fn set_workspace_access(
        &self,
        actor: &Actor,
        command: SetWorkspaceAccess,
    ) -> Result<Changed<Grant>, Error> {
        let SetWorkspaceAccess {
            organization_id: org,
            workspace_id,
            user_id: user,
            access,
            expire_time,
            reason,
        } = command;
        let checked = self.begin::<cap::WorkspaceAccessManage>(org, actor).await?;
        let tx = checked.tx;
        // One instant for the bounds below and for what the grant held before.
        let now = Timestamp::now();
        // The workspace, the member and their current grant, in one statement.
        let facts =
            repo::authorization_facts(&*tx, org, (&user).into(), Some(workspace_id)).await?;
        let previous = match facts {
            (_, WorkspaceFacts::Missing | WorkspaceFacts::NotApplicable) => {
                return Err(Error::NotFound("workspace"));
            }
            (None, _) => return Err(Error::NotFound("member")),
            // Owners hold WRITE on every workspace whatever their grants say; a grant to one
            // would change nothing now and surface only if they stopped being an Owner.
            (Some(Role::Owner), WorkspaceFacts::Present(_) | WorkspaceFacts::Ended(_))
                if access.is_some() =>
            {
                return Err(Error::refused(
                    ErrorReason::OwnerHoldsEveryWorkspace,
                    "the member is an Owner, who holds WRITE on every workspace; grants apply to \
                     Admin, Billing and Member users",
                ));
            }
            (Some(_), WorkspaceFacts::Present(access)) => access,
            // An ended grant holds nothing: setting one replaces it.
            (Some(_), WorkspaceFacts::Ended(_)) => None,
        };
        if access.is_some() {
            let organization =
                repo::find_organization(&*tx, org).await?.ok_or(Error::NotFound("organization"))?;
            check_end("expire_time", expire_time, organization.max_grant_duration, now)?;
        }
        let grant = Grant {
            organization_id: org,
            workspace_id,
            user_id: user.clone(),
            access,
            expire_time,
            reason: reason.clone(),
        };
        // The same access again changes nothing only with the same end and reason, which the
        // facts above do not carry: the row is read for them only then.
        let unchanged = previous == access
            && match access {
                None => true,
                Some(_) => repo::find_stored_grant(&*tx, org, workspace_id, &user)
                    .await?
                    .is_some_and(|s| s.expire_time == expire_time && s.reason == reason),
            };
        if unchanged {
            return Ok(Changed { value: grant, token: self.unchanged(tx, actor).await? });
        }
        let action = match access {
            Some(held) => {
                repo::upsert_grant(&*tx, &checked.pass, &grant, held).await?;
                AuditAction::WorkspaceAccessSet
            }
            None => {
                repo::delete_grant(&*tx, &checked.pass, workspace_id, &user).await?;
                AuditAction::WorkspaceAccessRemoved
            }
        };
        let mut details = json!({
            "workspace_id": workspace_id.to_string(),
            "old_access": previous.map(Access::as_str),
            "new_access": access.map(Access::as_str),
        });
        // A grant that ends, or comes with a reason, says so; other details stay as they were.
        if let Some(end) = expire_time {
            details["expire_time"] = json!(end.to_rfc3339());
        }
        if let Some(reason) = &reason {
            details["reason"] = json!(reason.as_str());
        }
        let audited = Audited { action, target: AuditTarget::Member(user.clone()), details };
        let deltas = vec![Delta::GrantChanged {
            user,
            workspace: workspace_id,
            old: previous,
            new: access,
            expire_time,
        }];
        let token = self.finish(tx, actor, audited, deltas, now).await?;
        Ok(Changed { value: grant, token })
    }

    /// Records grants whose end has passed: each becomes a change of its own (a revision, a
    /// GrantExpired delta, an audit event `workspace_access.expired` with no user acting; the
    /// row stays, marked, so that decisions keep saying the grant ended),
    /// made under the organization's lock by whichever replica gets there first; the others
    /// find the grant gone and change nothing. Decisions never wait for this: an ended grant
    /// grants nothing from its end on. Returns how many it recorded.
    pub async fn record_ended_grants(&self) -> Result<usize, Error> {
        let now = Timestamp::now();
        let ended = repo::list_ended_grants(self.store.reader(), now, 100).await?;
        let mut recorded = 0;
        for (org, workspace_id, user) in ended {
            // One that fails is retried on the next round; it holds up none of the others.
            match self.record_ended_grant(org, workspace_id, user, now).await {
                Ok(true) => recorded += 1,
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(organization = %org, error = %err, "cannot record an ended grant yet");
                }
            }
        }
        Ok(recorded)
    }

    /// Records one grant's end; `false` when another replica, or a new grant, came first.
    async fn record_ended_grant(
        &self,
        org: OrganizationId,
        workspace_id: WorkspaceId,
        user: UserId,
        now: Timestamp,
    ) -> Result<bool, Error> {
        let Some(tx) = OrgChange::begin(&self.store, org).await? else { return Ok(false) };
        // Read again under the lock: another replica, or a new grant, may have come first.
        let Some(grant) =
            repo::update_ended_grant_recorded(&*tx, org, workspace_id, &user, now).await?
        else {
            return Ok(false);
        };
        let (Some(access), Some(end)) = (grant.access, grant.expire_time) else {
            return Ok(false);
        };
        let audited = Audited {
            action: AuditAction::WorkspaceAccessExpired,
            target: AuditTarget::Member(user.clone()),
            details: json!({
                "workspace_id": workspace_id.to_string(),
                "access": access.as_str(),
                "expire_time": end.to_rfc3339(),
                "reason": grant.reason.as_ref().map(GrantReason::as_str),
            }),
        };
        let deltas =
            vec![Delta::GrantExpired { user, workspace: workspace_id, access, expire_time: end }];
        self.finish_as(tx, None, audited, deltas, now).await?;
        Ok(true)
    }

    /// Lists grants; Billing and Member users see only their own.
    #[instrument(skip_all, fields(actor = %actor.user_id, organization = %command.organization_id))]
    pub async fn list_workspace_access(
        &self,
        actor: &Actor,
        command: ListWorkspaceAccess,
    ) -> Result<Page<Grant>, Error> {
        let ListWorkspaceAccess { organization_id: org, workspace_id, user_id: user, page } =
            command;
        let db = self.store.reader();
        let me = membership(db, org, actor).await?;
        let user = if rules::sees_every_workspace(me.role) {
            user
        } else {
            match user {
                Some(other) if other != actor.user_id => {
                    return Err(Error::refused(
                        ErrorReason::OwnAccessOnly,
                        "you can list only your own workspace access",
                    ));
                }
                _ => Some(actor.user_id.clone()),
            }
        };
        let after = match page.after {
            None => None,
            Some(text) => {
                let forged = || {
                    Error::invalid(
                        "page_token",
                        "is not a token returned by this list; start again without it",
                    )
                };
                let (ws, user) = text.split_once('/').ok_or_else(forged)?;
                Some((WorkspaceId::parse(ws).map_err(|_| forged())?, user.to_owned()))
            }
        };
        // A workspace that does not exist is not found; so is one a Billing or Member user holds
        // no grant on, as in GetWorkspace, whether it exists or not.
        if let Some(id) = workspace_id {
            let visible = if rules::sees_every_workspace(me.role) {
                repo::find_workspace(db, org, id).await?.is_some()
            } else {
                repo::find_grant(db, org, id, &actor.user_id).await?.is_some()
            };
            if !visible {
                return Err(Error::NotFound("workspace"));
            }
        }
        let grants =
            repo::list_grants(db, org, workspace_id, user.as_ref(), after, page.size + 1).await?;
        Ok(page::finish("grants", grants, page.size, |g| {
            format!("{}/{}", g.workspace_id, g.user_id)
        }))
    }
}
