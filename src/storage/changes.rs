//! What a committed change did to the facts Authorize decides on, and how an organization's
//! index catches up with it: on the replica that made the change before its RPC returns, and on
//! the other replicas when the change's notification reaches them (see [`super::feed`]).

use std::fmt::Write as _;

use super::Store;
use super::repo;
use super::snapshot::{AuthzCache, Held, OrgIndex, Patch};
use crate::domain::{OrganizationId, UserId, WorkspaceId};

/// What a committed change did to the facts Authorize decides on.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    /// These members' roles or grants changed, or they joined or left.
    Members(&'a [&'a UserId]),
    /// A workspace was created.
    WorkspaceCreated(WorkspaceId),
    /// A workspace was deleted, with its grants.
    WorkspaceDeleted(WorkspaceId),
    /// The organization was created or deleted: its index is dropped and reloaded.
    Everything,
}

/// Brings this replica's index of `org` up to a change that has committed. A loaded index is
/// patched: a copy with the change replaces it, so checks keep answering from memory instead of
/// waiting for a reload. Anything that cannot be patched safely is dropped, as is the index when
/// the rows of a patch cannot be read (the change is committed, so this never fails).
///
/// A patch re-reads the affected members' current rows, so applying a change twice, or after
/// the index was loaded with it, changes nothing.
pub async fn apply(store: &Store, cache: &AuthzCache, org: OrganizationId, change: Change<'_>) {
    let one_workspace = match change {
        Change::Everything => return cache.invalidate(org),
        Change::WorkspaceCreated(id) => Some(Patch::WorkspaceCreated(id)),
        Change::WorkspaceDeleted(id) => Some(Patch::WorkspaceDeleted(id)),
        Change::Members(_) => None,
    };
    // One patch of an organization at a time, each reading rows after the previous one read
    // its own, so a later patch never puts older rows back.
    let _turn = cache.lock_patches(org).await;
    let (slot, current) = match cache.held(org) {
        Held::Absent => return,
        Held::Unsettled => {
            cache.invalidate(org);
            return;
        }
        Held::Loaded(slot, index) => (slot, index),
    };
    let mut patches = Vec::from_iter(one_workspace);
    if let Change::Members(users) = change {
        for user in users {
            match repo::load_member_index(store.reader(), org, user).await {
                Ok(patch) => patches.push(patch),
                Err(err) => {
                    tracing::warn!(organization = %org, error = %err, "rows for an index patch not read; dropping the organization's index");
                    return cache.invalidate(org);
                }
            }
        }
    }
    let mut patched: Option<OrgIndex> = None;
    for patch in &patches {
        match patched.as_ref().unwrap_or(&current).patched(patch) {
            Some(index) => patched = Some(index),
            None => return cache.invalidate(org),
        }
    }
    if let Some(index) = patched {
        cache.replace(org, &slot, index);
    }
}

/// Starts every described change's notification; older replicas ignore it (see
/// [`super::feed`]).
const PREFIX: &str = "change/1\n";
/// PostgreSQL refuses notification payloads of 8000 bytes or more.
const MAX_DESCRIPTION: usize = 7900;

/// A change as another replica can apply it: `None` for one that drops the whole index, or that
/// is too long to send.
pub fn describe(org: OrganizationId, change: Change<'_>) -> Option<String> {
    let mut text = format!("{PREFIX}{org}\n");
    match change {
        Change::Everything => return None,
        Change::WorkspaceCreated(id) => write!(text, "workspace-created\n{id}"),
        Change::WorkspaceDeleted(id) => write!(text, "workspace-deleted\n{id}"),
        // User ids hold no control characters, so a line feed separates them.
        Change::Members(users) => {
            text.push_str("members");
            users.iter().try_for_each(|user| write!(text, "\n{user}"))
        }
    }
    .ok()?;
    (text.len() <= MAX_DESCRIPTION).then_some(text)
}

/// A change read back from [`describe`]'s text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Described {
    /// See [`Change::Members`].
    Members(Vec<UserId>),
    /// See [`Change::WorkspaceCreated`].
    WorkspaceCreated(WorkspaceId),
    /// See [`Change::WorkspaceDeleted`].
    WorkspaceDeleted(WorkspaceId),
}

impl Described {
    /// Reads a notification payload; `None` unless [`describe`] wrote it.
    pub fn parse(payload: &str) -> Option<(OrganizationId, Described)> {
        let mut lines = payload.strip_prefix(PREFIX)?.split('\n');
        let org = OrganizationId::parse(lines.next()?).ok()?;
        let described = match lines.next()? {
            "members" => Described::Members(
                lines.map(|line| UserId::parse(line).ok()).collect::<Option<Vec<_>>>()?,
            ),
            kind => {
                let id = WorkspaceId::parse(lines.next()?).ok()?;
                if lines.next().is_some() {
                    return None;
                }
                match kind {
                    "workspace-created" => Described::WorkspaceCreated(id),
                    "workspace-deleted" => Described::WorkspaceDeleted(id),
                    _ => return None,
                }
            }
        };
        Some((org, described))
    }

    /// Applies the change to this replica's index, as [`apply`] does.
    pub async fn apply(&self, store: &Store, cache: &AuthzCache, org: OrganizationId) {
        match self {
            Described::Members(users) => {
                let users: Vec<&UserId> = users.iter().collect();
                apply(store, cache, org, Change::Members(&users)).await;
            }
            Described::WorkspaceCreated(id) => {
                apply(store, cache, org, Change::WorkspaceCreated(*id)).await;
            }
            Described::WorkspaceDeleted(id) => {
                apply(store, cache, org, Change::WorkspaceDeleted(*id)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_described_change_reads_back_as_itself() {
        let org = OrganizationId::generate();
        let ws = WorkspaceId::generate();
        let (a, b) = (UserId::parse("auth0|a b").unwrap(), UserId::parse("é").unwrap());
        let cases = [
            (Change::Members(&[&a, &b]), Described::Members(vec![a.clone(), b.clone()])),
            (Change::WorkspaceCreated(ws), Described::WorkspaceCreated(ws)),
            (Change::WorkspaceDeleted(ws), Described::WorkspaceDeleted(ws)),
        ];
        for (change, expected) in cases {
            let text = describe(org, change).unwrap();
            assert_eq!(Described::parse(&text), Some((org, expected)), "{text:?}");
        }
        assert_eq!(describe(org, Change::Everything), None);
    }

    #[test]
    fn anything_else_is_not_a_described_change() {
        let org = OrganizationId::generate();
        let ws = WorkspaceId::generate();
        for payload in [
            org.to_string(),
            format!("{PREFIX}{org}"),
            format!("{PREFIX}{org}\nmembers\n"),
            format!("{PREFIX}{org}\nmembers\n bad"),
            format!("{PREFIX}{org}\nworkspace-created"),
            format!("{PREFIX}{org}\nworkspace-created\n{ws}\n{ws}"),
            format!("{PREFIX}{org}\nworkspace-renamed\n{ws}"),
            format!("change/2\n{org}\nworkspace-created\n{ws}"),
        ] {
            assert_eq!(Described::parse(&payload), None, "{payload:?}");
        }
    }
}
