//! The Authorize index: what checks are decided on, one organization at a time (its members'
//! roles, its workspaces and every grant), in memory, brought up to each committed change in
//! revision order. The first check that names an organization loads it whole, as of one
//! revision, in one consistent read; every later check is a memory lookup. This is the one
//! place that knows how; the rest of the server sees only [`AuthzIndex`]: decide a check,
//! decide a batch, take a committed change, take a feed event, report stats.
//!
//! # Invariants
//!
//! 1. **Own writes are visible before the reply.** A change committed through this replica is
//!    applied ([`AuthzIndex::committed`]) before its RPC returns; a call cut off in between
//!    drops the organization instead ([`AuthzIndex::forget`]). Tested by
//!    `access::each_change_is_answered_at_once_from_the_index_without_reloading_it`.
//! 2. **Changes apply once and in order.** An index records the revision it is at; a change at
//!    or below it is skipped, the next one is applied, and a gap is filled from the change log
//!    before anything after it. Tested by
//!    `index::tests::notifications_in_any_order_leave_the_index_as_a_reload_would`.
//! 3. **A load that raced a change is never kept behind it.** A load reads the organization as
//!    of one revision; before it publishes, it catches up with every change committed here or
//!    notified while it ran (both are noted under the lock its publication takes). Tested by
//!    `index::tests::a_load_raced_by_changes_catches_up_before_it_publishes`.
//! 4. **A lost feed means no trust.** While the notification feed is down, the index is not
//!    used and checks read the database; when it comes back, the index starts empty. Tested by
//!    `replicas::a_killed_notification_connection_never_yields_a_stale_allow` and
//!    `outage::postgres_outage_is_unavailable_then_recovers_without_restart`.
//! 5. **AT_LEAST_AS_FRESH is met.** A check that names a revision is answered from an index at
//!    that revision or later (catching up from the log first if needed), else from the
//!    database. Tested by `replicas::a_removal_through_one_replica_is_seen_by_the_other`.

mod cache;
mod org;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;

pub use cache::CacheStats;
pub use org::{Facts, Fast, OrgIndex};

use crate::domain::authz;
use crate::domain::{
    ChangeRecord, Decision, Delta, OrganizationId, Permission, Revision, Role, UserId, UserIdRef,
    WorkspaceId,
};
use crate::error::Error;
use cache::{Cache, Published, Standing};

/// How fresh a check's answer must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Freshness {
    /// From this replica's index when it can: as of its own changes, and of other replicas'
    /// once their notifications arrived.
    MinimizeLatency,
    /// From a state that includes this revision of the check's organization.
    AtLeast(Revision),
    /// From the database.
    Full,
}

/// One validated check: the permission's scope and the presence of a workspace agree.
#[derive(Debug, Clone)]
pub struct Check<'a> {
    pub user_id: UserIdRef<'a>,
    pub organization_id: OrganizationId,
    /// Which workspace, for a workspace permission.
    pub workspace_id: Option<WorkspaceId>,
    pub permission: Permission,
    pub freshness: Freshness,
}

/// What the notification feed tells the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedEvent {
    /// Another replica (or this one) committed a change to the organization.
    Changed(OrganizationId),
    /// A replica of the previous release changed the organization; it writes no change log,
    /// so the index cannot catch up and drops the organization.
    ChangedUnlogged(OrganizationId),
    /// The feed is down: changes may go unnoticed.
    Lost,
    /// The feed is up again.
    Subscribed,
}

/// An organization as one consistent read found it.
#[derive(Debug)]
pub struct Snapshot {
    /// The revision the rows are at.
    pub revision: Revision,
    /// Members and their roles.
    pub members: Vec<(UserId, Role)>,
    pub workspaces: Vec<WorkspaceId>,
    pub grants: Vec<(WorkspaceId, UserId, crate::domain::Access)>,
    /// The grants above that end: (workspace, user, end in microseconds since the epoch).
    pub ends: Vec<(WorkspaceId, UserId, i64)>,
}

/// Where the index reads what it does not hold: the database.
#[async_trait]
pub trait Source: Send + Sync {
    /// The organization as of one revision, in one consistent read; `None` if it does not
    /// exist.
    async fn load(&self, org: OrganizationId) -> Result<Option<Snapshot>, Error>;
    /// The organization's changes after `after`, in order; `None` if it does not exist.
    async fn changes(
        &self,
        org: OrganizationId,
        after: Revision,
    ) -> Result<Option<Vec<ChangeRecord>>, Error>;
    /// The facts of one check, read from the database.
    async fn facts(
        &self,
        org: OrganizationId,
        user: UserIdRef<'_>,
        workspace: Option<WorkspaceId>,
    ) -> Result<Facts, Error>;
}

/// The index of every organization checked recently.
pub struct AuthzIndex {
    cache: Cache,
    source: Arc<dyn Source>,
}

/// Loads applied before a load gives up catching up and publishes nothing: changes arriving
/// faster than it can read them.
const MAX_CATCH_UPS: usize = 8;

impl AuthzIndex {
    /// An index of at most `capacity` rows (0 disables it), reading from `source`; not used
    /// until a feed event says so when `wait_for_feed` (other replicas' changes arrive through
    /// the feed).
    pub fn new(source: Arc<dyn Source>, capacity: usize, wait_for_feed: bool) -> Self {
        let cache = Cache::new(capacity);
        if wait_for_feed {
            cache.set_trusted(false);
        }
        Self { cache, source }
    }

    /// Decides one check.
    pub async fn decide(&self, check: &Check<'_>) -> Result<Decision, Error> {
        let (role, facts) = self
            .facts(check.organization_id, check.user_id, check.workspace_id, check.freshness)
            .await?;
        let decision = authz::decide(role, facts, check.permission);
        tracing::debug!(allowed = decision.allowed, reason = ?decision.reason, "decided");
        Ok(decision)
    }

    /// Decides several checks, in order.
    pub async fn decide_batch(&self, checks: &[Check<'_>]) -> Result<Vec<Decision>, Error> {
        // One index lookup per organization (and freshness) of the batch, not per check; a
        // batch may span many organizations, hence a map rather than a list to search.
        let mut indexes: HashMap<(OrganizationId, Freshness), Option<Arc<OrgIndex>>, Fast> =
            HashMap::with_capacity_and_hasher(checks.len().min(64), Fast::default());
        let mut hits = 0;
        for check in checks.iter().filter(|c| c.freshness != Freshness::Full) {
            let key = (check.organization_id, check.freshness);
            match indexes.get(&key) {
                Some(index) => hits += u64::from(index.is_some()),
                None => {
                    let index = self.index(check.organization_id, check.freshness).await?;
                    indexes.insert(key, index);
                }
            }
        }
        // One update of the shared counter per batch rather than one per check.
        self.cache.count_hits(hits);
        // Every check answered from memory is located before any is decided (see
        // `OrgIndex::locate`); the others read the database in the last pass.
        let located: Vec<_> = checks
            .iter()
            .map(|check| {
                let index = indexes.get(&(check.organization_id, check.freshness))?.as_ref()?;
                Some(index.locate(check.user_id, check.workspace_id))
            })
            .collect();
        let mut decisions = Vec::with_capacity(checks.len());
        for (check, located) in checks.iter().zip(located) {
            decisions.push(match located {
                Some(located) => {
                    let (role, facts) = located.facts();
                    authz::decide(role, facts, check.permission)
                }
                None => self.decide(check).await?,
            });
        }
        Ok(decisions)
    }

    /// The facts of a check: from the organization's index when the freshness allows, else
    /// from the database.
    pub async fn facts(
        &self,
        org: OrganizationId,
        user: UserIdRef<'_>,
        workspace: Option<WorkspaceId>,
        freshness: Freshness,
    ) -> Result<Facts, Error> {
        if freshness != Freshness::Full
            && let Some(index) = self.index(org, freshness).await?
        {
            return Ok(index.facts(user, workspace));
        }
        self.cache.count_miss();
        self.source.facts(org, user, workspace).await
    }

    /// The organization's index, counted as a hit, or as a miss if this call loaded it or
    /// caught it up; `None` when the database must answer (the index is bypassed, the
    /// organization is larger than the limit, or it could not be brought to `freshness`).
    async fn index(
        &self,
        org: OrganizationId,
        freshness: Freshness,
    ) -> Result<Option<Arc<OrgIndex>>, Error> {
        if freshness == Freshness::MinimizeLatency {
            // Nearly every check: loaded already, no waiting.
            if let Some(index) = self.cache.loaded(org) {
                self.cache.count_hits(1);
                return Ok(Some(index));
            }
        }
        let wanted = match freshness {
            Freshness::AtLeast(revision) => revision,
            _ => Revision(0),
        };
        for attempt in 0..2 {
            match self.cache.standing_or_load(org) {
                Standing::Unusable | Standing::Oversized => return Ok(None),
                Standing::NotHeld { absent: true } => {
                    // Remembered as absent; a token naming a revision of it proves otherwise.
                    if wanted == Revision(0) {
                        self.cache.count_hits(1);
                        return Ok(Some(self.cache.empty()));
                    }
                    self.cache.invalidate(org);
                }
                Standing::NotHeld { absent: false } => {}
                Standing::Loaded(held) => {
                    if held.revision >= wanted {
                        self.cache.count_hits(1);
                        return Ok(Some(held.index.clone()));
                    }
                    // Behind the caller's token: catch up from the log rather than wait for the
                    // notification, then look again.
                    if attempt == 0 {
                        self.catch_up(org, None).await?;
                        continue;
                    }
                    return Ok(None);
                }
                Standing::Loading(load) => {
                    let loaded_here = std::sync::atomic::AtomicBool::new(false);
                    let index = load
                        .done
                        .get_or_try_init(|| async {
                            loaded_here.store(true, std::sync::atomic::Ordering::Relaxed);
                            self.cache.count_miss();
                            self.load(org, &load).await
                        })
                        .await;
                    let index = match index {
                        Ok(index) => index.clone(),
                        Err(err) => {
                            // Leave no load behind that failed.
                            self.cache.abandon(org, &load);
                            return Err(err);
                        }
                    };
                    if wanted > Revision(0) {
                        // Whether the load reached the token: look at what it published.
                        continue;
                    }
                    // Checks that waited for another's load answer from memory too.
                    if !loaded_here.load(std::sync::atomic::Ordering::Relaxed) && index.is_some() {
                        self.cache.count_hits(1);
                    }
                    return Ok(index);
                }
            }
        }
        Ok(None)
    }

    /// Runs a load: reads the organization, catches up with what came meanwhile, publishes.
    /// Returns what the checks waiting for it answer from.
    async fn load(
        &self,
        org: OrganizationId,
        load: &Arc<cache::Load>,
    ) -> Result<Option<Arc<OrgIndex>>, Error> {
        let mut seen = load.seen();
        let Some(snapshot) = self.source.load(org).await? else {
            self.cache.finish_absent(org, load, seen);
            return Ok(Some(self.cache.empty()));
        };
        let mut at = Applied::Index(
            Arc::new(
                OrgIndex::new(snapshot.members, snapshot.workspaces, snapshot.grants)
                    .with_ends(snapshot.ends),
            ),
            snapshot.revision,
        );
        for _ in 0..MAX_CATCH_UPS {
            let (index, revision) = match at {
                Applied::Index(index, revision) => (index, revision),
                Applied::Deleted => {
                    self.cache.abandon(org, load);
                    return Ok(Some(self.cache.empty()));
                }
                Applied::Inconsistent => break,
            };
            match self.cache.publish(org, load, &index, revision, seen) {
                Published::Yes => return Ok(Some(index)),
                Published::Oversized => {
                    tracing::warn!(organization = %org, rows = index.entries(), "organization larger than --authz-cache-entries; its checks read the database");
                    return Ok(None);
                }
                // Dropped meanwhile: the checks waiting for it were there before.
                Published::Gone => return Ok(Some(index)),
                Published::Behind => {
                    // Changes came while it loaded: read them from the log and apply them.
                    seen = load.seen();
                    at = match self.source.changes(org, revision).await? {
                        None => Applied::Deleted,
                        Some(changes) => apply(index, revision, &changes),
                    };
                }
            }
        }
        // Changes faster than it can catch up, or a log it cannot follow: publish nothing.
        self.cache.abandon(org, load);
        Ok(None)
    }

    /// Brings the organization's loaded index up to the log: the changes after its revision, or
    /// up to `record` when that is the next one (no read then). Anything it cannot apply drops
    /// the organization; a load in progress is told instead.
    async fn catch_up(
        &self,
        org: OrganizationId,
        record: Option<&ChangeRecord>,
    ) -> Result<(), Error> {
        for _ in 0..MAX_CATCH_UPS {
            let held = match self.cache.note_change(org, record.map(|r| r.revision)) {
                Standing::Loaded(held) => held,
                // Nothing held (a load in progress catches up by itself), or nothing to keep.
                _ => return Ok(()),
            };
            if record.is_some_and(|r| r.revision <= held.revision) {
                return Ok(());
            }
            let next = match record {
                Some(record) if record.revision == held.revision.next() => {
                    apply(held.index.clone(), held.revision, std::slice::from_ref(record))
                }
                _ => match self.source.changes(org, held.revision).await? {
                    None => Applied::Deleted,
                    Some(changes) if changes.is_empty() => return Ok(()),
                    Some(changes) => apply(held.index.clone(), held.revision, &changes),
                },
            };
            let replaced = match next {
                Applied::Index(_, revision) if revision == held.revision => return Ok(()),
                Applied::Index(index, revision) => {
                    // The same index at a later revision when the changes touched no row.
                    let changed = (!Arc::ptr_eq(&index, &held.index)).then_some(index);
                    self.cache.replace(org, &held, changed, revision)
                }
                Applied::Deleted | Applied::Inconsistent => {
                    self.cache.invalidate(org);
                    return Ok(());
                }
            };
            if replaced {
                return Ok(());
            }
            // Replaced meanwhile by another change's catch-up: look again.
        }
        self.cache.invalidate(org);
        Ok(())
    }

    /// Brings this replica's index up to a change it committed, before the change's RPC
    /// returns (invariant 1).
    pub async fn committed(&self, record: &ChangeRecord) {
        let org = record.organization_id;
        if record.deltas.iter().any(|d| matches!(d, Delta::OrganizationDeleted)) {
            self.cache.invalidate(org);
            return;
        }
        if let Err(err) = self.catch_up(org, Some(record)).await {
            // The change is committed; only reading what came before it failed.
            tracing::warn!(organization = %org, error = %err, "an index could not catch up with a change; dropping it");
            self.cache.invalidate(org);
        }
    }

    /// Drops an organization: a change whose outcome is unknown, or that was cut off before it
    /// reached the index.
    pub fn forget(&self, org: OrganizationId) {
        self.cache.invalidate(org);
    }

    /// Takes what the notification feed says.
    pub async fn feed_event(&self, event: FeedEvent) {
        match event {
            FeedEvent::Changed(org) => {
                if let Err(err) = self.catch_up(org, None).await {
                    tracing::warn!(organization = %org, error = %err, "an index could not catch up with a notified change; dropping it");
                    self.cache.invalidate(org);
                }
            }
            FeedEvent::ChangedUnlogged(org) => self.cache.invalidate(org),
            FeedEvent::Lost => self.cache.set_trusted(false),
            FeedEvent::Subscribed => self.cache.set_trusted(true),
        }
    }

    /// Whether the feed is trusted now (see [`FeedEvent`]).
    pub fn trusted(&self) -> bool {
        self.cache.trusted()
    }

    /// The counters.
    pub fn stats(&self) -> CacheStats {
        self.cache.stats()
    }
}

/// An index brought forward through changes.
enum Applied {
    /// At this revision.
    Index(Arc<OrgIndex>, Revision),
    /// The organization was deleted.
    Deleted,
    /// The changes do not follow on from the index (a gap, or a grant on a workspace it lacks):
    /// only a reload brings it up to date.
    Inconsistent,
}

/// Applies `changes` (in revision order) to `index` at `revision`: those at or below it are
/// skipped, each next one applied in turn (invariant 2).
fn apply(mut index: Arc<OrgIndex>, mut revision: Revision, changes: &[ChangeRecord]) -> Applied {
    for change in changes {
        if change.revision <= revision {
            continue;
        }
        if change.revision != revision.next() {
            return Applied::Inconsistent;
        }
        if change.deltas.iter().any(|d| matches!(d, Delta::OrganizationDeleted)) {
            return Applied::Deleted;
        }
        // A change that only records ends the index already decides by leaves it as it is.
        let rows = change.deltas.iter().any(|d| !matches!(d, Delta::GrantExpired { .. }));
        if rows {
            match index.patched(&change.deltas) {
                Some(patched) => index = Arc::new(patched),
                None => return Applied::Inconsistent,
            }
        }
        revision = change.revision;
    }
    Applied::Index(index, revision)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::domain::{Access, DisplayName, Email, LogPosition, Timestamp, WorkspaceFacts};

    /// The database, as far as the index sees it: an organization's rows, and its change log.
    #[derive(Default)]
    struct Rows {
        roles: HashMap<UserId, Role>,
        workspaces: Vec<WorkspaceId>,
        grants: HashMap<(UserId, WorkspaceId), Access>,
    }

    impl Rows {
        fn snapshot(&self, revision: Revision) -> Snapshot {
            Snapshot {
                revision,
                members: self.roles.iter().map(|(u, r)| (u.clone(), *r)).collect(),
                workspaces: self.workspaces.clone(),
                grants: self.grants.iter().map(|((u, w), a)| (*w, u.clone(), *a)).collect(),
                ends: Vec::new(),
            }
        }

        fn facts(&self, user: &UserId, workspace: Option<WorkspaceId>) -> Facts {
            let role = self.roles.get(user).copied();
            let facts = match workspace {
                None => WorkspaceFacts::NotApplicable,
                Some(ws) if !self.workspaces.contains(&ws) => WorkspaceFacts::Missing,
                Some(ws) => WorkspaceFacts::Present(self.grants.get(&(user.clone(), ws)).copied()),
            };
            (role, facts)
        }
    }

    #[derive(Default)]
    struct Database {
        rows: Rows,
        log: Vec<ChangeRecord>,
    }

    /// A source over an in-memory database; a load can be held half-way, so that a test can
    /// commit changes while it runs.
    #[derive(Default)]
    struct Fake {
        db: Mutex<Database>,
        hold_load: tokio::sync::Mutex<()>,
    }

    #[async_trait]
    impl Source for Fake {
        async fn load(&self, _: OrganizationId) -> Result<Option<Snapshot>, Error> {
            // The snapshot is taken first; the load then waits, as one whose reads are slow.
            let snapshot = {
                let db = self.db.lock().unwrap();
                db.rows.snapshot(Revision(db.log.len() as u64))
            };
            let _held = self.hold_load.lock().await;
            Ok(Some(snapshot))
        }

        async fn changes(
            &self,
            _: OrganizationId,
            after: Revision,
        ) -> Result<Option<Vec<ChangeRecord>>, Error> {
            let db = self.db.lock().unwrap();
            Ok(Some(db.log.iter().filter(|c| c.revision > after).cloned().collect()))
        }

        async fn facts(
            &self,
            _: OrganizationId,
            user: UserIdRef<'_>,
            workspace: Option<WorkspaceId>,
        ) -> Result<Facts, Error> {
            Ok(self.db.lock().unwrap().rows.facts(&user.to_user_id(), workspace))
        }
    }

    impl Fake {
        /// Commits one change made of `steps` (user index, workspace index, kind); returns its
        /// record and the rows as of it.
        fn commit(
            &self,
            org: OrganizationId,
            users: &[UserId],
            steps: &[(usize, usize, u8)],
        ) -> ChangeRecord {
            let mut db = self.db.lock().unwrap();
            let roles = [Role::Owner, Role::Admin, Role::Billing, Role::Member];
            let mut deltas = Vec::new();
            for &(u, w, kind) in steps {
                let user = users[u % users.len()].clone();
                let rows = &mut db.rows;
                match kind {
                    0..=3 => {
                        let role = roles[usize::from(kind)];
                        deltas.push(match rows.roles.insert(user.clone(), role) {
                            None => Delta::MemberAdded {
                                user,
                                email: Email::parse("x@example.com").unwrap(),
                                role,
                            },
                            Some(old) => Delta::RoleChanged { user, old, new: role },
                        });
                    }
                    4..=6 if rows.roles.contains_key(&user) && !rows.workspaces.is_empty() => {
                        let ws = rows.workspaces[w % rows.workspaces.len()];
                        let new = match kind {
                            4 => Some(Access::Read),
                            5 => Some(Access::Write),
                            _ => None,
                        };
                        let old = match new {
                            Some(access) => rows.grants.insert((user.clone(), ws), access),
                            None => rows.grants.remove(&(user.clone(), ws)),
                        };
                        deltas.push(Delta::GrantChanged {
                            user,
                            workspace: ws,
                            old,
                            new,
                            expire_time: None,
                        });
                    }
                    7 => {
                        if let Some(role) = rows.roles.remove(&user) {
                            deltas.push(Delta::MemberRemoved { user: user.clone(), role });
                            let gone: Vec<_> =
                                rows.grants.keys().filter(|(u, _)| *u == user).cloned().collect();
                            for key in gone {
                                let old = rows.grants.remove(&key);
                                deltas.push(Delta::GrantChanged {
                                    user: key.0,
                                    workspace: key.1,
                                    old,
                                    new: None,
                                    expire_time: None,
                                });
                            }
                        }
                    }
                    8 => {
                        let ws = WorkspaceId::generate();
                        rows.workspaces.push(ws);
                        let display_name = DisplayName::parse("w").unwrap();
                        deltas.push(Delta::WorkspaceCreated { workspace: ws, display_name });
                    }
                    9 if !rows.workspaces.is_empty() => {
                        let ws = rows.workspaces.remove(w % rows.workspaces.len());
                        deltas.push(Delta::WorkspaceDeleted { workspace: ws });
                        let gone: Vec<_> =
                            rows.grants.keys().filter(|(_, g)| *g == ws).cloned().collect();
                        for key in gone {
                            let old = rows.grants.remove(&key);
                            deltas.push(Delta::GrantChanged {
                                user: key.0,
                                workspace: ws,
                                old,
                                new: None,
                                expire_time: None,
                            });
                        }
                    }
                    // A change Authorize does not see (a rename, an invitation).
                    _ => {}
                }
            }
            let revision = Revision(db.log.len() as u64 + 1);
            let record = ChangeRecord {
                organization_id: org,
                revision,
                position: Some(LogPosition(revision.0)),
                commit_time: Timestamp::now(),
                actor: Some(users[0].clone()),
                audit_event_id: None,
                deltas,
            };
            db.log.push(record.clone());
            record
        }
    }

    fn queries(
        index: &AuthzIndex,
        fake: &Fake,
        org: OrganizationId,
        users: &[UserId],
    ) -> (Vec<Facts>, Vec<Facts>) {
        let db = fake.db.lock().unwrap();
        let mut from_index = Vec::new();
        let mut from_rows = Vec::new();
        let held = match index.cache.standing_or_load(org) {
            Standing::Loaded(held) => held,
            _ => return (from_index, from_rows),
        };
        let mut workspaces: Vec<Option<WorkspaceId>> =
            db.rows.workspaces.iter().copied().map(Some).collect();
        workspaces.push(None);
        workspaces.push(Some(WorkspaceId::generate()));
        for user in users {
            for ws in &workspaces {
                from_index.push(held.index.facts(user, *ws));
                from_rows.push(db.rows.facts(user, *ws));
            }
        }
        (from_index, from_rows)
    }

    fn users() -> Vec<UserId> {
        ["a", "b", "c", "dddddddddddddddddddddddddddddddddddddddddddd"]
            .iter()
            .map(|u| UserId::parse(u).unwrap())
            .collect()
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(64))]
        /// Changes committed here and notified from elsewhere, in any order, some twice and some
        /// never: once one notification after the last change is taken, the index answers as
        /// a reload would, and it never answers from a mix of two revisions.
        #[test]
        fn notifications_in_any_order_leave_the_index_as_a_reload_would(
            changes in proptest::collection::vec(
                proptest::collection::vec((0usize..4, 0usize..4, 0u8..11), 1..4), 1..25),
            // For each change: 0 never told, 1 committed here, 2 notified, 3 both, 4 notified twice.
            telling in proptest::collection::vec(0u8..5, 25),
            order in proptest::collection::vec(proptest::num::usize::ANY, 50),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            runtime.block_on(async {
                let fake = Arc::new(Fake::default());
                let org = OrganizationId::generate();
                let users = users();
                for _ in 0..2 {
                    fake.commit(org, &users, &[(0, 0, 8)]);
                }
                let index = AuthzIndex::new(fake.clone(), 10_000, false);
                // Loaded before the changes.
                index.facts(org, (&users[0]).into(), None, Freshness::MinimizeLatency).await.unwrap();
                let mut events = Vec::new();
                for (i, steps) in changes.iter().enumerate() {
                    let record = fake.commit(org, &users, steps);
                    match telling[i] {
                        1 => events.push(Some(record)),
                        2 => events.push(None),
                        3 => { events.push(Some(record)); events.push(None); }
                        4 => { events.push(None); events.push(None); }
                        _ => {}
                    }
                }
                // Shuffle what was told.
                for (i, j) in order.iter().enumerate() {
                    let len = events.len();
                    if len > 1 {
                        events.swap(i % len, j % len);
                    }
                }
                for event in events {
                    match event {
                        Some(record) => index.committed(&record).await,
                        None => index.feed_event(FeedEvent::Changed(org)).await,
                    }
                    // Whatever revision it is at, it answers as of exactly that revision.
                    if let Standing::Loaded(held) = index.cache.standing_or_load(org) {
                        // What a reload at that revision would hold: the log replayed to it.
                        let rows: Vec<ChangeRecord> = fake.db.lock().unwrap().log
                            [..held.revision.0 as usize]
                            .to_vec();
                        let reload = OrgIndex::new(Vec::new(), Vec::new(), Vec::new());
                        let reload = match apply(Arc::new(reload), Revision(0), &rows) {
                            Applied::Index(index, _) => index,
                            _ => panic!("the log replays"),
                        };
                        for user in &users {
                            assert_eq!(held.index.facts(user, None), reload.facts(user, None));
                        }
                    }
                }
                index.feed_event(FeedEvent::Changed(org)).await;
                let (from_index, from_rows) = queries(&index, &fake, org, &users);
                assert!(!from_index.is_empty(), "the organization stays loaded");
                assert_eq!(from_index, from_rows);
            });
        }
    }

    #[tokio::test]
    async fn a_load_raced_by_changes_catches_up_before_it_publishes() {
        let fake = Arc::new(Fake::default());
        let org = OrganizationId::generate();
        let users = users();
        fake.commit(org, &users, &[(1, 0, 3), (0, 0, 8)]);
        let index = Arc::new(AuthzIndex::new(fake.clone(), 10_000, false));
        // The load takes its snapshot and is held before it publishes.
        let held = fake.hold_load.lock().await;
        let loading = {
            let index = index.clone();
            let user = users[1].clone();
            tokio::spawn(async move {
                index.facts(org, (&user).into(), None, Freshness::MinimizeLatency).await
            })
        };
        tokio::task::yield_now().await;
        while !matches!(index.cache.standing_or_load(org), Standing::Loading(_)) {
            tokio::task::yield_now().await;
        }
        // Meanwhile: b becomes Admin here, then is removed on another replica.
        let promoted = fake.commit(org, &users, &[(1, 0, 1)]);
        index.committed(&promoted).await;
        fake.commit(org, &users, &[(1, 0, 7)]);
        index.feed_event(FeedEvent::Changed(org)).await;
        drop(held);
        // The checks that waited for the load answer from the state they waited from...
        loading.await.unwrap().unwrap();
        // ...but what it publishes has both changes.
        let (from_index, from_rows) = queries(&index, &fake, org, &users);
        assert!(!from_index.is_empty());
        assert_eq!(from_index, from_rows);
        let Standing::Loaded(held) = index.cache.standing_or_load(org) else { panic!("loaded") };
        assert_eq!(held.revision, Revision(3));
        assert_eq!(held.index.facts(&users[1], None).0, None, "b was removed");
    }

    #[tokio::test]
    async fn at_least_as_fresh_catches_up_from_the_log_before_it_answers() {
        let fake = Arc::new(Fake::default());
        let org = OrganizationId::generate();
        let users = users();
        fake.commit(org, &users, &[(1, 0, 3)]);
        let index = AuthzIndex::new(fake.clone(), 10_000, false);
        let b: UserIdRef<'_> = (&users[1]).into();
        let latency = Freshness::MinimizeLatency;
        assert_eq!(index.facts(org, b, None, latency).await.unwrap().0, Some(Role::Member));
        // Removed on another replica whose notification has not arrived.
        let removed = fake.commit(org, &users, &[(1, 0, 7)]);
        assert_eq!(index.facts(org, b, None, latency).await.unwrap().0, Some(Role::Member));
        let fresh = Freshness::AtLeast(removed.revision);
        assert_eq!(index.facts(org, b, None, fresh).await.unwrap().0, None);
        // And the index itself is now at that revision.
        assert_eq!(index.facts(org, b, None, latency).await.unwrap().0, None);
    }
}
