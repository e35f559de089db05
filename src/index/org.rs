//! One organization's index: its members' roles, its workspaces and every grant, laid out for
//! the lookup a check makes, and the deltas of a committed change applied to a copy of it.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;

use hashbrown::HashTable;

use crate::domain::{
    Access, Delta, Role, Timestamp, UserId, UserIdRef, WorkspaceFacts, WorkspaceId,
};

/// The facts of one check.
pub type Facts = (Option<Role>, WorkspaceFacts);

/// A fast hasher with a per-process random seed: the index is on the hot path, and its keys come
/// from the database rather than straight from callers.
pub type Fast = foldhash::fast::RandomState;

/// One organization, whole.
///
/// Laid out for the lookup a check makes, so that it touches few cache lines even when millions
/// of grants are held: the workspace id becomes a small ordinal (from a table small enough to
/// stay cached), one probe finds the user's entry, which holds the user id itself when it is
/// short enough, and the user's grants are a few packed words in one shared array.
pub struct OrgIndex {
    hasher: Fast,
    users: HashTable<UserEntry>,
    /// Every workspace, with its ordinal in the organization.
    workspaces: HashMap<WorkspaceId, u32, Fast>,
    /// Every user's grants, each `ordinal << 1 | write`, sorted per user.
    grants: Box<[u32]>,
    /// The ordinal the next workspace gets; ordinals are never reused, so a deleted workspace's
    /// stray grant could never be read as another's.
    next_ordinal: u32,
    entries: usize,
    /// When each grant ends, in microseconds, beside it: `ends[i]` is the end of `grants[i]`,
    /// [`NEVER`] for one that does not end. Empty for an organization without a grant that ends,
    /// so that a check there reads no clock and the organization pays no memory for it.
    ends: Box<[i64]>,
}

/// The end of a grant that does not end.
const NEVER: i64 = i64::MAX;

impl std::fmt::Debug for OrgIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrgIndex")
            .field("users", &self.users.len())
            .field("workspaces", &self.workspaces.len())
            .field("grants", &self.grants.len())
            .finish()
    }
}

/// A user's role (none for a non-member) and where their grants are.
#[derive(Clone)]
struct UserEntry {
    id: UserKey,
    role: Option<Role>,
    grants_start: u32,
    grants_len: u32,
}

/// User ids up to this many bytes sit inside their table entry; identity providers' subjects
/// (UUIDs, numeric ids, `provider|id`) mostly do.
const INLINE_ID: usize = 38;

/// A user id, inline when short so that matching it reads no other memory.
#[derive(Clone)]
enum UserKey {
    Inline { len: u8, bytes: [u8; INLINE_ID] },
    Heap(Box<[u8]>),
}

impl UserKey {
    fn new(id: &[u8]) -> Self {
        match u8::try_from(id.len()) {
            Ok(len) if id.len() <= INLINE_ID => {
                let mut bytes = [0; INLINE_ID];
                bytes[..id.len()].copy_from_slice(id);
                Self::Inline { len, bytes }
            }
            _ => Self::Heap(id.into()),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Self::Heap(bytes) => bytes,
        }
    }
}

/// The largest workspace ordinal: one bit of a grant word holds the access.
const MAX_ORDINAL: u32 = u32::MAX >> 1;

/// What a patch leaves each user it touches with: a role, and grants as ordinal -> access.
type Touched = HashMap<UserId, (Option<Role>, BTreeMap<u32, Access>), Fast>;

fn pack_grant(ordinal: u32, access: Access) -> u32 {
    ordinal << 1 | u32::from(access == Access::Write)
}

fn unpack_access(grant: u32) -> Access {
    if grant & 1 == 1 { Access::Write } else { Access::Read }
}

impl OrgIndex {
    /// Builds the index from the organization's rows.
    pub fn new(
        members: Vec<(UserId, Role)>,
        workspaces: Vec<WorkspaceId>,
        grants: Vec<(WorkspaceId, UserId, Access)>,
    ) -> Self {
        let member_rows = members.len();
        let hasher = Fast::default();
        // Ordinals leave one bit of a grant word for the access; an organization with more
        // workspaces than that (far beyond any memory limit) would answer "no such workspace"
        // for the rest, a denial.
        let workspaces: HashMap<WorkspaceId, u32, Fast> =
            workspaces.into_iter().zip(0..=MAX_ORDINAL).collect::<HashMap<_, _, _>>();
        let next_ordinal = u32::try_from(workspaces.len()).unwrap_or(MAX_ORDINAL);
        // A user's role and grants while rows are read; grants are sorted once all are in.
        type Loading = (Option<Role>, Vec<u32>);
        let mut by_user: HashMap<UserId, Loading, Fast> =
            HashMap::with_capacity_and_hasher(members.len(), Fast::default());
        for (user, role) in members {
            by_user.entry(user).or_default().0 = Some(role);
        }
        let mut held = 0;
        // Grants are keyed by member, so each belongs to a member row; a grant read without
        // its member (a row added between the loading queries) still answers as a non-member.
        // A grant on a workspace read after the workspace query is left out: that workspace
        // answers as missing in any case.
        for (workspace, user, access) in grants {
            if let Some(ordinal) = workspaces.get(&workspace) {
                by_user.entry(user).or_default().1.push(pack_grant(*ordinal, access));
                held += 1;
            }
        }
        let mut packed = Vec::with_capacity(held);
        let mut users = HashTable::with_capacity(by_user.len());
        for (user, (role, mut grants)) in by_user {
            grants.sort_unstable();
            // Within u32 because every grant is an entry and the entry limit is checked before
            // an index is kept; past it the positions would be wrong, so the user is left out
            // (a non-member, a denial) rather than answered from another user's grants.
            let (Ok(grants_start), Ok(grants_len)) =
                (u32::try_from(packed.len()), u32::try_from(grants.len()))
            else {
                continue;
            };
            packed.extend(grants);
            let id = UserKey::new(user.as_str().as_bytes());
            let hash = hasher.hash_one(id.as_bytes());
            users.insert_unique(hash, UserEntry { id, role, grants_start, grants_len }, |e| {
                hasher.hash_one(e.id.as_bytes())
            });
        }
        // One more for the organization itself, so that even an empty one counts against the
        // limit. Grants left out above are not counted, as a patch would not count them.
        let entries = 1 + member_rows + workspaces.len() + held;
        let grants = packed.into_boxed_slice();
        Self { hasher, users, workspaces, grants, next_ordinal, entries, ends: Box::default() }
    }

    /// This index with the ends of the grants that end: (workspace, user, end in microseconds).
    /// An end of a grant the index does not hold is left out.
    pub fn with_ends(mut self, ends: Vec<(WorkspaceId, UserId, i64)>) -> Self {
        let mut beside = vec![NEVER; self.grants.len()];
        for (workspace, user, end) in ends {
            let Some(ordinal) = self.workspaces.get(&workspace).copied() else { continue };
            let at = self.find((&user).into()).and_then(|entry| self.grant(entry, ordinal));
            if let Some((_, at)) = at {
                beside[at] = end;
            }
        }
        self.ends = sealed(beside);
        self
    }

    /// A copy of this index with a committed change's deltas applied, in order: what a reload
    /// after the change would build, without reading the organization again. `None` when the
    /// deltas do not fit this index (a grant on a workspace it does not hold): only a reload
    /// can bring the index up to the change then. Deltas that change no row Authorize reads
    /// (the organization's creation, an ownership transfer, whose role changes are deltas of
    /// their own) change nothing here; the organization's deletion is the caller's to handle.
    pub fn patched(&self, deltas: &[Delta]) -> Option<Self> {
        let mut workspaces = self.workspaces.clone();
        let mut next_ordinal = self.next_ordinal;
        let mut deleted: Vec<u32> = Vec::new();
        // What each touched user ends up with: their role, and their grants as ordinal ->
        // access, starting from what the index holds.
        let mut touched: Touched = HashMap::default();
        // The grants set again or removed, with the end each now has (NEVER for none): whatever
        // end they had before is gone with them.
        let mut fresh: HashMap<(Box<[u8]>, u32), i64> = HashMap::new();
        for delta in deltas {
            match delta {
                Delta::WorkspaceCreated { workspace, .. } => {
                    if !workspaces.contains_key(workspace) && next_ordinal <= MAX_ORDINAL {
                        workspaces.insert(*workspace, next_ordinal);
                        next_ordinal += 1;
                    }
                }
                Delta::WorkspaceDeleted { workspace } => {
                    if let Some(ordinal) = workspaces.remove(workspace) {
                        deleted.push(ordinal);
                        for (_, grants) in touched.values_mut() {
                            grants.remove(&ordinal);
                        }
                    }
                }
                Delta::MemberAdded { user, role, .. } => {
                    self.touch(&mut touched, user, &deleted).0 = Some(*role)
                }
                Delta::RoleChanged { user, new, .. } => {
                    self.touch(&mut touched, user, &deleted).0 = Some(*new)
                }
                Delta::MemberRemoved { user, .. } => {
                    self.touch(&mut touched, user, &deleted).0 = None
                }
                Delta::GrantChanged { user, workspace, new, expire_time, .. } => {
                    if let Some(ordinal) = workspaces.get(workspace) {
                        let key: (Box<[u8]>, u32) = (user.as_str().as_bytes().into(), *ordinal);
                        let end = match (new, expire_time) {
                            (Some(_), Some(end)) => end.as_micros(),
                            _ => NEVER,
                        };
                        fresh.insert(key, end);
                    }
                    match (workspaces.get(workspace).copied(), new) {
                        (Some(ordinal), Some(access)) => {
                            self.touch(&mut touched, user, &deleted).1.insert(ordinal, *access);
                        }
                        (Some(ordinal), None) => {
                            self.touch(&mut touched, user, &deleted).1.remove(&ordinal);
                        }
                        // Removed with a workspace already gone from the index: nothing held.
                        (None, None) => {}
                        (None, Some(_)) => return None,
                    }
                }
                // The record of an end the index already decides by: the grant and its end stay,
                // as they stay in the row.
                Delta::GrantExpired { .. }
                | Delta::OrganizationCreated { .. }
                | Delta::OrganizationDeleted
                | Delta::OwnershipTransferred { .. } => {}
            }
        }
        // Every untouched user's grants are copied into a fresh array, leaving out a deleted
        // workspace's (the database deleted them with it).
        let mut users = self.users.clone();
        let mut packed = Vec::with_capacity(self.grants.len() + 16);
        // Ends are carried beside the grants only where some grant ends, before or after.
        let track = !self.ends.is_empty() || fresh.values().any(|end| *end != NEVER);
        let mut packed_ends = Vec::with_capacity(if track { packed.capacity() } else { 0 });
        for entry in users.iter_mut() {
            let start = entry.grants_start as usize;
            let len = entry.grants_len as usize;
            let own = self.grants.get(start..start + len).unwrap_or(&[]);
            let from = packed.len();
            for (i, grant) in own.iter().enumerate() {
                if !deleted.contains(&(grant >> 1)) {
                    packed.push(*grant);
                    if track {
                        packed_ends.push(self.ends.get(start + i).copied().unwrap_or(NEVER));
                    }
                }
            }
            // Within u32: the copy holds no more grants than the original.
            entry.grants_start = from as u32;
            entry.grants_len = (packed.len() - from) as u32;
        }
        for (user, (role, grants)) in touched {
            let id = user.as_str().as_bytes();
            let hash = self.hasher.hash_one(id);
            let found = users.find_entry(hash, |e| e.id.as_bytes() == id);
            // Sorted by ordinal, as the map iterates.
            let own: Vec<u32> = grants.iter().map(|(o, a)| pack_grant(*o, *a)).collect();
            let old = self.find_bytes(id);
            if role.is_none() && own.is_empty() {
                // Gone from the organization: no entry, as a reload would leave none.
                if let Ok(entry) = found {
                    entry.remove();
                }
            } else if let (Ok(grants_start), Ok(grants_len)) =
                (u32::try_from(packed.len()), u32::try_from(own.len()))
            {
                // The user's old grants stay in the array unread until the next patch compacts it.
                if track {
                    // A grant set again ends as the change says; one the change left alone
                    // keeps its end (its user was touched for another reason).
                    for ordinal in grants.keys() {
                        let key = (Box::<[u8]>::from(id), *ordinal);
                        let end = fresh.get(&key).copied().unwrap_or_else(|| {
                            old.and_then(|entry| self.grant(entry, *ordinal))
                                .and_then(|(_, at)| self.ends.get(at).copied())
                                .unwrap_or(NEVER)
                        });
                        packed_ends.push(end);
                    }
                }
                packed.extend(own);
                let fresh = UserEntry { id: UserKey::new(id), role, grants_start, grants_len };
                match found {
                    Ok(mut entry) => *entry.get_mut() = fresh,
                    Err(_) => {
                        users.insert_unique(hash, fresh, |e| self.hasher.hash_one(e.id.as_bytes()));
                    }
                }
            } else if let Ok(entry) = found {
                // Past u32 positions (beyond any entry limit): a non-member, a denial.
                entry.remove();
            }
        }
        let members = users.iter().filter(|e| e.role.is_some()).count();
        let held: usize = users.iter().map(|e| e.grants_len as usize).sum();
        let entries = 1 + members + workspaces.len() + held;
        Some(Self {
            hasher: self.hasher.clone(),
            users,
            workspaces,
            grants: packed.into_boxed_slice(),
            next_ordinal,
            entries,
            ends: sealed(packed_ends),
        })
    }

    /// The entry of `user` in `touched`, started from what this index holds for them, without
    /// grants on the `deleted` workspaces.
    fn touch<'t>(
        &self,
        touched: &'t mut Touched,
        user: &UserId,
        deleted: &[u32],
    ) -> &'t mut (Option<Role>, BTreeMap<u32, Access>) {
        touched.entry(user.clone()).or_insert_with(|| match self.find(user.into()) {
            None => (None, BTreeMap::new()),
            Some(entry) => {
                let start = entry.grants_start as usize;
                let own = self.grants.get(start..start + entry.grants_len as usize).unwrap_or(&[]);
                let grants = own
                    .iter()
                    .filter(|g| !deleted.contains(&(*g >> 1)))
                    .map(|g| (g >> 1, unpack_access(*g)))
                    .collect();
                (entry.role, grants)
            }
        })
    }

    /// The facts of a check, from memory.
    pub fn facts<'u>(
        &self,
        user: impl Into<UserIdRef<'u>>,
        workspace: Option<WorkspaceId>,
    ) -> Facts {
        self.locate(user.into(), workspace).facts()
    }

    /// The first half of [`OrgIndex::facts`]: finds the user's entry and the workspace's
    /// ordinal, and starts loading the user's grants into the cache without waiting for them.
    /// A batch locates all its checks before it reads any grant, so that at millions of grants
    /// the cache misses of one check overlap those of the others instead of following them.
    pub fn locate(&self, user: UserIdRef<'_>, workspace: Option<WorkspaceId>) -> Located<'_> {
        let ordinal = match workspace {
            None => Ok(None),
            Some(id) => self.workspaces.get(&id).map(|o| Some(*o)).ok_or(()),
        };
        let user = self.find(user);
        if let (Some(entry), Ok(Some(_))) = (user, ordinal) {
            let start = entry.grants_start as usize;
            if let Some(first) = self.grants.get(start) {
                prefetch(first);
            }
            if let Some(first) = self.ends.get(start) {
                prefetch(first);
            }
        }
        Located { index: self, user, ordinal }
    }

    fn find(&self, user: UserIdRef<'_>) -> Option<&UserEntry> {
        self.find_bytes(user.as_str().as_bytes())
    }

    fn find_bytes(&self, id: &[u8]) -> Option<&UserEntry> {
        self.users.find(self.hasher.hash_one(id), |e| e.id.as_bytes() == id)
    }

    /// `user`'s grant on the workspace of `ordinal`, and its position in `grants`.
    fn grant(&self, user: &UserEntry, ordinal: u32) -> Option<(Access, usize)> {
        let start = user.grants_start as usize;
        let grants = self.grants.get(start..start + user.grants_len as usize)?;
        let at = grants.binary_search_by_key(&ordinal, |g| g >> 1).ok()?;
        Some((unpack_access(grants[at]), start + at))
    }

    /// Rows held.
    pub fn entries(&self) -> usize {
        self.entries
    }
}

/// A check's user and workspace, found in an index; [`Located::facts`] completes it.
pub struct Located<'a> {
    index: &'a OrgIndex,
    user: Option<&'a UserEntry>,
    /// The workspace's ordinal, none for an organization permission, or an error when the
    /// organization has no such workspace.
    ordinal: Result<Option<u32>, ()>,
}

impl Located<'_> {
    /// The facts of the check.
    pub fn facts(&self) -> Facts {
        let role = self.user.and_then(|u| u.role);
        match self.ordinal {
            Err(()) => (role, WorkspaceFacts::Missing),
            Ok(None) => (role, WorkspaceFacts::NotApplicable),
            Ok(Some(ordinal)) => {
                let Some(user) = self.user else { return (role, WorkspaceFacts::Present(None)) };
                let Some((access, at)) = self.index.grant(user, ordinal) else {
                    return (role, WorkspaceFacts::Present(None));
                };
                // Decided by this process's clock at the instant of the check: an ended grant
                // grants nothing from its end on, whether or not the end is recorded yet.
                if let Some(end) = self.index.ends.get(at)
                    && *end != NEVER
                    && *end <= Timestamp::now().as_micros()
                {
                    return (role, WorkspaceFacts::Ended(access));
                }
                (role, WorkspaceFacts::Present(Some(access)))
            }
        }
    }
}

/// Ends kept beside the grants, or none at all when no grant ends.
fn sealed(ends: Vec<i64>) -> Box<[i64]> {
    if ends.iter().all(|end| *end == NEVER) { Box::default() } else { ends.into_boxed_slice() }
}

/// Asks the processor to start loading `value`'s cache line; a hint that changes no result.
#[inline(always)]
fn prefetch<T>(value: &T) {
    // SAFETY: SSE is part of every x86_64 processor, and a prefetch only hints; it reads
    // nothing into the program and cannot fault (here the address is a live reference anyway).
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            (value as *const T).cast::<i8>(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{DisplayName, Email};

    fn user(name: &str) -> UserId {
        UserId::parse(name).unwrap()
    }

    #[test]
    fn a_grant_is_ended_from_its_end_on_and_present_before_it() {
        let ws = WorkspaceId::generate();
        let members = vec![
            (user("ended"), Role::Member),
            (user("later"), Role::Member),
            (user("permanent"), Role::Member),
        ];
        let grants = vec![
            (ws, user("ended"), Access::Write),
            (ws, user("later"), Access::Read),
            (ws, user("permanent"), Access::Write),
        ];
        let now = Timestamp::now().as_micros();
        let index = OrgIndex::new(members, vec![ws], grants).with_ends(vec![
            (ws, user("ended"), now),
            (ws, user("later"), now + 3_600_000_000),
            // No such grant: left out.
            (ws, user("nobody"), 0),
        ]);
        let member = Some(Role::Member);
        assert_eq!(
            index.facts(&user("ended"), Some(ws)),
            (member, WorkspaceFacts::Ended(Access::Write))
        );
        assert_eq!(
            index.facts(&user("later"), Some(ws)),
            (member, WorkspaceFacts::Present(Some(Access::Read)))
        );
        assert_eq!(
            index.facts(&user("permanent"), Some(ws)),
            (member, WorkspaceFacts::Present(Some(Access::Write)))
        );
        assert_eq!(index.facts(&user("nobody"), Some(ws)), (None, WorkspaceFacts::Present(None)));
        // Organization checks read no grant.
        assert_eq!(index.facts(&user("ended"), None), (member, WorkspaceFacts::NotApplicable));
    }

    #[test]
    fn a_patch_keeps_the_ends_it_leaves_alone_and_drops_those_of_grants_it_changes() {
        let (ws, other) = (WorkspaceId::generate(), WorkspaceId::generate());
        let names = ["set", "untouched", "kept", "gone", "deleted"];
        let members = names.iter().map(|n| (user(n), Role::Member)).collect();
        let mut grants: Vec<_> = names[..4].iter().map(|n| (ws, user(n), Access::Write)).collect();
        grants.push((other, user("deleted"), Access::Write));
        let ends = grants.iter().map(|(w, u, _)| (*w, u.clone(), 0)).collect();
        let index = OrgIndex::new(members, vec![ws, other], grants).with_ends(ends);
        let patched = index
            .patched(&[
                // Set again: permanent now.
                Delta::GrantChanged {
                    user: user("set"),
                    workspace: ws,
                    old: Some(Access::Write),
                    new: Some(Access::Read),
                    expire_time: None,
                },
                // Touched for its role: its grant keeps its end.
                Delta::RoleChanged { user: user("kept"), old: Role::Member, new: Role::Admin },
                Delta::MemberRemoved { user: user("gone"), role: Role::Member },
                Delta::GrantChanged {
                    user: user("gone"),
                    workspace: ws,
                    old: Some(Access::Write),
                    new: None,
                    expire_time: None,
                },
                Delta::WorkspaceDeleted { workspace: other },
            ])
            .unwrap();
        let facts = |name: &str, w: WorkspaceId| patched.facts(&user(name), Some(w)).1;
        assert_eq!(facts("set", ws), WorkspaceFacts::Present(Some(Access::Read)));
        assert_eq!(facts("kept", ws), WorkspaceFacts::Ended(Access::Write));
        assert_eq!(patched.facts(&user("kept"), None).0, Some(Role::Admin));
        assert_eq!(facts("untouched", ws), WorkspaceFacts::Ended(Access::Write));
        assert_eq!(facts("gone", ws), WorkspaceFacts::Present(None));
        assert_eq!(facts("deleted", other), WorkspaceFacts::Missing);
        // Counted over the grants users hold; replaced copies stay in the array unread.
        let ending: usize = patched
            .users
            .iter()
            .map(|e| e.grants_start as usize..(e.grants_start + e.grants_len) as usize)
            .map(|held| patched.ends[held].iter().filter(|end| **end != NEVER).count())
            .sum();
        assert_eq!(ending, 2, "only the ends of grants left alone remain");
        assert_eq!(patched.ends.len(), patched.grants.len(), "each end sits beside its grant");
    }

    #[test]
    fn an_index_answers_from_its_rows() {
        let ws = WorkspaceId::generate();
        let other = WorkspaceId::generate();
        let index = OrgIndex::new(
            vec![(user("a"), Role::Admin), (user("b"), Role::Member)],
            vec![ws, other],
            vec![(ws, user("b"), Access::Write)],
        );
        assert_eq!(
            index.facts(&user("b"), Some(ws)),
            (Some(Role::Member), WorkspaceFacts::Present(Some(Access::Write)))
        );
        assert_eq!(
            index.facts(&user("a"), Some(ws)),
            (Some(Role::Admin), WorkspaceFacts::Present(None))
        );
        assert_eq!(
            index.facts(&user("b"), Some(WorkspaceId::generate())).1,
            WorkspaceFacts::Missing
        );
        assert_eq!(index.facts(&user("z"), None), (None, WorkspaceFacts::NotApplicable));
    }

    #[test]
    fn a_user_with_many_grants_finds_each_and_only_those() {
        let workspaces: Vec<WorkspaceId> = (0..200).map(|_| WorkspaceId::generate()).collect();
        let grants = workspaces
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 3 != 0)
            .map(|(i, w)| (*w, user("many"), if i % 2 == 0 { Access::Write } else { Access::Read }))
            .collect();
        let index = OrgIndex::new(vec![(user("many"), Role::Member)], workspaces.clone(), grants);
        for (i, w) in workspaces.iter().enumerate() {
            let expected = match (i % 3, i % 2) {
                (0, _) => None,
                (_, 0) => Some(Access::Write),
                _ => Some(Access::Read),
            };
            assert_eq!(
                index.facts(&user("many"), Some(*w)),
                (Some(Role::Member), WorkspaceFacts::Present(expected)),
                "workspace {i}"
            );
        }
    }

    proptest::proptest! {
        /// The compact layout answers exactly as plain maps of the same rows would.
        #[test]
        fn the_index_answers_as_maps_of_its_rows(
            users in proptest::collection::hash_set("[a-zA-Z0-9|@._-]{1,40}", 0..120),
            workspace_count in 0usize..12,
            cells in proptest::collection::vec((0usize..120, 0usize..12, 0u8..6), 0..400),
            queries in proptest::collection::vec((0usize..140, 0usize..14), 1..200),
        ) {
            let users: Vec<UserId> = users.iter().map(|u| user(u)).collect();
            let workspaces: Vec<WorkspaceId> =
                (0..workspace_count).map(|_| WorkspaceId::generate()).collect();
            let roles = [Role::Owner, Role::Admin, Role::Billing, Role::Member];
            let mut role_of = HashMap::new();
            let mut grant_of = HashMap::new();
            for (u, w, code) in cells {
                let Some(user) = users.get(u) else { continue };
                match (code, workspaces.get(w)) {
                    (0..=3, _) => {
                        role_of.insert(user.clone(), roles[usize::from(code)]);
                    }
                    (4, Some(ws)) => {
                        grant_of.insert((user.clone(), *ws), Access::Read);
                    }
                    (_, Some(ws)) => {
                        grant_of.insert((user.clone(), *ws), Access::Write);
                    }
                    _ => {}
                }
            }
            let index = OrgIndex::new(
                role_of.iter().map(|(u, r)| (u.clone(), *r)).collect(),
                workspaces.clone(),
                grant_of.iter().map(|((u, w), a)| (*w, u.clone(), *a)).collect(),
            );
            for (u, w) in queries {
                // Indexes past the generated ones ask about strangers and unknown workspaces.
                let who = users.get(u).cloned().unwrap_or_else(|| user(&format!("stranger{u}")));
                let workspace = match w {
                    13 => None,
                    _ => Some(workspaces.get(w).copied().unwrap_or_else(WorkspaceId::generate)),
                };
                let expected_facts = match workspace {
                    None => WorkspaceFacts::NotApplicable,
                    Some(ws) if !workspaces.contains(&ws) => WorkspaceFacts::Missing,
                    Some(ws) => WorkspaceFacts::Present(grant_of.get(&(who.clone(), ws)).copied()),
                };
                proptest::prop_assert_eq!(
                    index.facts(&who, workspace),
                    (role_of.get(&who).copied(), expected_facts)
                );
            }
        }
    }

    /// Rows as the database holds them, changed as the use-cases change them: each change
    /// returns the deltas it records.
    #[derive(Default)]
    struct Rows {
        roles: HashMap<UserId, Role>,
        workspaces: Vec<WorkspaceId>,
        grants: HashMap<(UserId, WorkspaceId), Access>,
        /// The ends of the grants that end, in microseconds.
        ends: HashMap<(UserId, WorkspaceId), i64>,
    }

    impl Rows {
        fn index(&self) -> OrgIndex {
            OrgIndex::new(
                self.roles.iter().map(|(u, r)| (u.clone(), *r)).collect(),
                self.workspaces.clone(),
                self.grants.iter().map(|((u, w), a)| (*w, u.clone(), *a)).collect(),
            )
            .with_ends(self.ends.iter().map(|((u, w), end)| (*w, u.clone(), *end)).collect())
        }

        fn set_role(&mut self, user: &UserId, role: Role) -> Vec<Delta> {
            match self.roles.insert(user.clone(), role) {
                None => vec![Delta::MemberAdded {
                    user: user.clone(),
                    email: Email::parse("x@example.com").unwrap(),
                    role,
                }],
                Some(old) => vec![Delta::RoleChanged { user: user.clone(), old, new: role }],
            }
        }

        fn set_grant(&mut self, user: &UserId, w: usize, access: Option<Access>) -> Vec<Delta> {
            self.set_grant_ending(user, w, access, None)
        }

        /// Sets a grant again, ending at `end` (microseconds) or never.
        fn set_grant_ending(
            &mut self,
            user: &UserId,
            w: usize,
            access: Option<Access>,
            end: Option<i64>,
        ) -> Vec<Delta> {
            // Grants, as in the database, only for members on existing workspaces.
            let Some(ws) = self.workspaces.get(w).copied() else { return Vec::new() };
            if !self.roles.contains_key(user) {
                return Vec::new();
            }
            let old = match access {
                Some(access) => self.grants.insert((user.clone(), ws), access),
                None => self.grants.remove(&(user.clone(), ws)),
            };
            match (access, end) {
                (Some(_), Some(end)) => self.ends.insert((user.clone(), ws), end),
                _ => self.ends.remove(&(user.clone(), ws)),
            };
            vec![Delta::GrantChanged {
                user: user.clone(),
                workspace: ws,
                old,
                new: access,
                expire_time: end.filter(|_| access.is_some()).map(Timestamp::from_micros),
            }]
        }

        fn remove(&mut self, user: &UserId) -> Vec<Delta> {
            let Some(role) = self.roles.remove(user) else { return Vec::new() };
            let mut deltas = vec![Delta::MemberRemoved { user: user.clone(), role }];
            let gone: Vec<_> = self.grants.keys().filter(|(u, _)| u == user).cloned().collect();
            for key in gone {
                let old = self.grants.remove(&key);
                self.ends.remove(&key);
                deltas.push(Delta::GrantChanged {
                    user: key.0,
                    workspace: key.1,
                    old,
                    new: None,
                    expire_time: None,
                });
            }
            deltas
        }

        fn create_workspace(&mut self) -> Vec<Delta> {
            let ws = WorkspaceId::generate();
            self.workspaces.push(ws);
            vec![Delta::WorkspaceCreated {
                workspace: ws,
                display_name: DisplayName::parse("w").unwrap(),
            }]
        }

        fn delete_workspace(&mut self, w: usize) -> Vec<Delta> {
            if self.workspaces.is_empty() {
                return Vec::new();
            }
            let ws = self.workspaces.remove(w % self.workspaces.len());
            let mut deltas = vec![Delta::WorkspaceDeleted { workspace: ws }];
            let gone: Vec<_> = self.grants.keys().filter(|(_, g)| *g == ws).cloned().collect();
            for key in gone {
                let old = self.grants.remove(&key);
                self.ends.remove(&key);
                deltas.push(Delta::GrantChanged {
                    user: key.0,
                    workspace: ws,
                    old,
                    new: None,
                    expire_time: None,
                });
            }
            deltas
        }
    }

    proptest::proptest! {
        /// An index patched change by change, each change's deltas at once, answers exactly as
        /// one reloaded after them, with the same number of rows.
        #[test]
        fn a_patched_index_answers_as_a_reload_would(
            users in proptest::collection::hash_set("[a-z]{1,3}|[a-z]{39,41}", 1..30),
            initial in proptest::collection::vec((0usize..30, 0usize..6, 0u8..9), 0..60),
            changes in proptest::collection::vec(
                proptest::collection::vec((0usize..30, 0usize..8, 0u8..12), 1..4),
                1..30,
            ),
            queries in proptest::collection::vec((0usize..34, 0usize..9), 1..60),
        ) {
            let users: Vec<UserId> = users.iter().map(|u| user(u)).collect();
            let roles = [Role::Owner, Role::Admin, Role::Billing, Role::Member];
            let mut rows = Rows::default();
            for _ in 0..4 {
                rows.create_workspace();
            }
            // Grants that have ended, and grants that end later: both must keep their ends
            // through every patch, and only their own.
            let later = Timestamp::now().as_micros() + 3_600_000_000;
            let apply = |rows: &mut Rows, u: &UserId, w: usize, code: u8| match code {
                0..=3 => rows.set_role(u, roles[usize::from(code)]),
                4 => rows.set_grant(u, w, Some(Access::Read)),
                5 => rows.set_grant(u, w, Some(Access::Write)),
                6 => rows.set_grant(u, w, None),
                7 => rows.set_grant_ending(u, w, Some(Access::Write), Some(0)),
                8 => rows.set_grant_ending(u, w, Some(Access::Read), Some(later)),
                9 => rows.remove(u),
                10 => rows.create_workspace(),
                _ => rows.delete_workspace(w),
            };
            for (u, w, code) in initial {
                if let Some(u) = users.get(u) {
                    apply(&mut rows, u, w, code % 9);
                }
            }
            let mut index = rows.index();
            // Several steps in one change, as a removal or a transfer makes.
            for change in changes {
                let mut deltas = Vec::new();
                for (u, w, code) in change {
                    deltas.extend(apply(&mut rows, &users[u % users.len()], w, code));
                }
                index = index.patched(&deltas).expect("every workspace is held");
            }
            let reloaded = rows.index();
            proptest::prop_assert_eq!(index.entries(), reloaded.entries());
            for (u, w) in queries {
                let who = users.get(u).cloned().unwrap_or_else(|| user(&format!("stranger{u}")));
                let workspace = match w {
                    8 => None,
                    _ => Some(rows.workspaces.get(w).copied().unwrap_or_else(WorkspaceId::generate)),
                };
                proptest::prop_assert_eq!(index.facts(&who, workspace), reloaded.facts(&who, workspace));
            }
        }
    }

    #[test]
    fn a_deleted_workspace_stays_missing_and_new_ones_get_fresh_ordinals() {
        let ws = WorkspaceId::generate();
        let index = OrgIndex::new(
            vec![(user("a"), Role::Member)],
            vec![ws],
            vec![(ws, user("a"), Access::Write)],
        );
        let index = index.patched(&[Delta::WorkspaceDeleted { workspace: ws }]).unwrap();
        assert_eq!(index.facts(&user("a"), Some(ws)).1, WorkspaceFacts::Missing);
        // A new workspace must not inherit the deleted one's grant through its ordinal.
        let next = WorkspaceId::generate();
        let created = Delta::WorkspaceCreated {
            workspace: next,
            display_name: DisplayName::parse("next").unwrap(),
        };
        let index = index.patched(&[created]).unwrap();
        assert_eq!(index.facts(&user("a"), Some(next)).1, WorkspaceFacts::Present(None));
    }

    #[test]
    fn a_grant_on_a_workspace_the_index_lacks_cannot_be_patched_in() {
        let ws = WorkspaceId::generate();
        let index = OrgIndex::new(vec![(user("a"), Role::Member)], vec![ws], vec![]);
        let elsewhere = WorkspaceId::generate();
        let grant = Delta::GrantChanged {
            user: user("a"),
            workspace: elsewhere,
            old: None,
            new: Some(Access::Write),
            expire_time: None,
        };
        assert!(index.patched(&[grant]).is_none(), "a reload is needed");
    }

    #[test]
    fn user_ids_match_exactly_at_every_length() {
        let ws = WorkspaceId::generate();
        // Ids on both sides of the inline limit, each with a twin that differs only at the end.
        let mut members = Vec::new();
        let mut grants = Vec::new();
        for len in [1, INLINE_ID - 1, INLINE_ID, INLINE_ID + 1, UserId::MAX_CHARS] {
            let stem = "u".repeat(len - 1);
            members.push((user(&format!("{stem}a")), Role::Member));
            grants.push((ws, user(&format!("{stem}a")), Access::Write));
            members.push((user(&format!("{stem}b")), Role::Billing));
        }
        let index = OrgIndex::new(members, vec![ws], grants);
        for len in [1, INLINE_ID - 1, INLINE_ID, INLINE_ID + 1, UserId::MAX_CHARS] {
            let stem = "u".repeat(len - 1);
            assert_eq!(
                index.facts(&user(&format!("{stem}a")), Some(ws)),
                (Some(Role::Member), WorkspaceFacts::Present(Some(Access::Write))),
                "length {len}"
            );
            assert_eq!(
                index.facts(&user(&format!("{stem}b")), Some(ws)),
                (Some(Role::Billing), WorkspaceFacts::Present(None)),
                "length {len}"
            );
            assert_eq!(index.facts(&user(&format!("{stem}c")), None).0, None, "length {len}");
            if len < UserId::MAX_CHARS {
                assert_eq!(index.facts(&user(&format!("{stem}ac")), None).0, None, "length {len}");
            }
        }
    }

    #[test]
    fn a_load_counts_only_the_rows_it_holds_as_a_patch_does() {
        let ws = WorkspaceId::generate();
        // A grant on a workspace the load did not find is left out, and counted out: a
        // later patch, which counts what is held, must find the same number.
        let late = WorkspaceId::generate();
        let index = OrgIndex::new(
            vec![(user("a"), Role::Member)],
            vec![ws],
            vec![(ws, user("a"), Access::Read), (late, user("a"), Access::Write)],
        );
        assert_eq!(index.entries(), 4, "the organization, a member, a workspace, a grant");
        let unchanged =
            Delta::RoleChanged { user: user("a"), old: Role::Member, new: Role::Member };
        assert_eq!(index.patched(&[unchanged]).unwrap().entries(), index.entries());
    }

    #[test]
    fn a_grant_without_its_member_row_answers_as_a_non_member() {
        let ws = WorkspaceId::generate();
        let index = OrgIndex::new(vec![], vec![ws], vec![(ws, user("late"), Access::Write)]);
        assert_eq!(
            index.facts(&user("late"), Some(ws)),
            (None, WorkspaceFacts::Present(Some(Access::Write)))
        );
    }
}
