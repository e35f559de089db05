//! What every TeamService mutation shares: it opens an [`OrgChange`] (the organization's lock
//! and next revision first), checks the caller inside it, writes one audit event and commits
//! with what it did to access.

use serde_json::Value as Json;

use super::membership;
use crate::domain::capability::Capability;
use crate::domain::{
    AuditAction, AuditEvent, AuditEventId, AuditTarget, ChangeToken, Delta, Member, OrganizationId,
    Pass, Timestamp, UserId,
};
use crate::error::Error;
use crate::index::AuthzIndex;
use crate::service::{Actor, Services};
use crate::storage::changelog::{Declared, OrgChange};
use crate::storage::repo;

/// A change in progress, the caller's membership as of the lock, and the proof of its check.
pub(super) struct Checked<C: Capability> {
    pub tx: OrgChange,
    pub me: Member,
    pub pass: Pass<C>,
}

/// The audit event a change writes.
pub(super) struct Audited {
    pub action: AuditAction,
    pub target: AuditTarget,
    pub details: Json,
}

/// Refuses a retry of a change already made (by the call that held the organization's lock
/// before this one) with REQUEST_IN_PROGRESS, which the edge answers with the first call's
/// response: made again, the change could undo a later one.
pub(super) async fn not_made_yet(tx: &OrgChange, actor: &Actor) -> Result<(), Error> {
    if let Some(key) = &actor.retry
        && repo::find_request(&**tx, &key.user_id, key.request_id).await?.is_some()
    {
        return Err(repo::in_progress());
    }
    Ok(())
}

/// Checks `C` for a member and mints the proof storage writes need.
pub(super) fn require<C: Capability>(member: &Member) -> Result<Pass<C>, Error> {
    Pass::check(member.organization_id, member.user_id.clone(), Some(member.role))
        .map_err(|_| Error::permission_missing(C::NAME))
}

impl Services {
    /// Opens a change to an organization: takes its lock and next revision first, so that
    /// concurrent changes to it serialize, then checks `C` for the actor on the state as of
    /// the lock.
    pub(super) async fn begin<C: Capability>(
        &self,
        org: OrganizationId,
        actor: &Actor,
    ) -> Result<Checked<C>, Error> {
        let tx =
            OrgChange::begin(&self.store, org).await?.ok_or(Error::NotFound("organization"))?;
        not_made_yet(&tx, actor).await?;
        let me = membership(&*tx, org, actor).await?;
        let pass = require::<C>(&me)?;
        Ok(Checked { tx, me, pass })
    }

    /// Ends a change that changed nothing: its token and, for a named request, the record that
    /// it was answered. Nothing commits for a no-op, so the id is recorded on its own, by a task
    /// a cut-off call cannot stop before the id is kept: otherwise a retry arriving after a
    /// later change could apply what the first call found already done. A concurrent call
    /// that recorded the id first is the one whose answer counts.
    pub(super) async fn unchanged(
        &self,
        tx: OrgChange,
        actor: &Actor,
    ) -> Result<ChangeToken, Error> {
        let token = tx.unchanged().await?;
        if let Some(key) = actor.retry.clone() {
            let store = self.store.clone();
            let recorded = tokio::spawn(async move {
                let tx = store.begin_write().await?;
                let recorded = repo::insert_request_if_absent(&*tx, &key, Timestamp::now()).await?;
                tx.commit().await?;
                Ok::<bool, Error>(recorded)
            })
            .await
            .map_err(Error::internal)??;
            if !recorded {
                return Err(repo::in_progress());
            }
        }
        Ok(token)
    }

    /// Writes the change's audit event and commits it with `deltas`, what it did to access
    /// (empty for a change Authorize does not see).
    pub(super) async fn finish(
        &self,
        tx: OrgChange,
        actor: &Actor,
        mut audited: Audited,
        deltas: Vec<Delta>,
        now: Timestamp,
    ) -> Result<ChangeToken, Error> {
        // Ties the event to the call's logs and trace.
        if let (Some(id), Json::Object(details)) = (&actor.request_id, &mut audited.details) {
            details.insert("request_id".to_owned(), Json::String(id.as_str().to_owned()));
        }
        if let Some(key) = &actor.retry {
            repo::insert_request(&*tx, key, now).await?;
        }
        self.finish_as(tx, Some(&actor.user_id), audited, deltas, now).await
    }

    /// [`Services::finish`] for a change `actor` made, or Roster itself (`None`).
    pub(super) async fn finish_as(
        &self,
        tx: OrgChange,
        actor: Option<&UserId>,
        audited: Audited,
        deltas: Vec<Delta>,
        now: Timestamp,
    ) -> Result<ChangeToken, Error> {
        let id = AuditEventId::generate();
        let event = AuditEvent {
            id,
            organization_id: tx.organization(),
            actor_user_id: actor.cloned(),
            action: audited.action,
            target: audited.target,
            details: audited.details,
            create_time: now,
        };
        repo::insert_audit(&*tx, &event).await?;
        let declared = Declared { actor: actor.cloned(), audit_event_id: Some(id), deltas };
        self.commit(tx, declared).await
    }

    /// Commits a change with what it did: its log row (and, on PostgreSQL, the notification
    /// other replicas follow) travels in the transaction, and this replica's index holds the
    /// change before the RPC returns (rule 4).
    async fn commit(&self, tx: OrgChange, declared: Declared) -> Result<ChangeToken, Error> {
        let org = tx.organization();
        // A call cut off (by its deadline, or a client going away) may stop anywhere below,
        // maybe after the commit: the organization is then dropped rather than left behind.
        let unsettled = ForgetOnDrop { index: &self.index, org };
        // Whether a failed commit committed is unknown: the guard forgets the organization.
        let record = tx.commit(declared).await?;
        self.index.committed(&record).await;
        std::mem::forget(unsettled);
        match record.position {
            Some(position) => {
                self.log_head.send_if_modified(|head| {
                    let newer = position > *head;
                    if newer {
                        *head = position;
                    }
                    newer
                });
            }
            None => self.unplaced.notify_one(),
        }
        Ok(record.token())
    }
}

/// Drops an organization's index unless defused with `mem::forget`.
struct ForgetOnDrop<'a> {
    index: &'a AuthzIndex,
    org: OrganizationId,
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        self.index.forget(self.org);
    }
}
