//! An in-memory index of what Authorize decides on, one organization at a time: its members'
//! roles, its workspaces, and every grant. The first check that names an organization loads it
//! whole (three indexed queries); every later check is a memory lookup, whatever the data size.
//! Bounded by an entry limit, over which the least recently used organizations are dropped,
//! with hit and miss counters. An organization that does not exist costs one query, and is
//! then remembered in 16 bytes (a bounded number of them) until a change shows it exists.
//!
//! Freshness: every committed change to an organization reaches its index here before the RPC
//! returns: a change to one member's role or grants, or a workspace created or deleted, is
//! patched into a copy of the loaded index that replaces it (checks never wait for it); anything
//! else drops the index and the next check reloads it. Other replicas do the same when
//! PostgreSQL delivers the change's notification (see [`super::feed`]). A load that raced a
//! change is never kept: the change removes the load's slot. While the notification feed is down the index is bypassed and checks read the
//! database.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hashbrown::HashTable;
use tokio::sync::OnceCell;

use crate::domain::{Access, OrganizationId, Role, UserId, UserIdRef, WorkspaceFacts, WorkspaceId};

const SHARDS: usize = 16;

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
}

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

/// A committed change that can be applied to a loaded index without reloading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Patch {
    /// A user's role (none once they are not a member) and every grant they hold, as committed.
    Member {
        /// Whose.
        user: UserId,
        /// Their role now.
        role: Option<Role>,
        /// Every grant they hold now.
        grants: Vec<(WorkspaceId, Access)>,
    },
    /// A new workspace, without grants.
    WorkspaceCreated(WorkspaceId),
    /// A deleted workspace, whose grants went with it.
    WorkspaceDeleted(WorkspaceId),
}

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
        Self { hasher, users, workspaces, grants: packed.into_boxed_slice(), next_ordinal, entries }
    }

    /// A copy of this index with one committed change applied: what a reload would build,
    /// without reading the whole organization again. `None` when the change names a workspace
    /// this index does not hold (one created on another replica whose notification has not
    /// arrived yet): only a reload can bring the index up to the change then.
    pub fn patched(&self, patch: &Patch) -> Option<Self> {
        if let Patch::Member { grants, .. } = patch
            && grants.iter().any(|(ws, _)| !self.workspaces.contains_key(ws))
        {
            return None;
        }
        let mut workspaces = self.workspaces.clone();
        let mut next_ordinal = self.next_ordinal;
        let mut deleted = None;
        match patch {
            Patch::WorkspaceCreated(id) => {
                if !workspaces.contains_key(id) && next_ordinal <= MAX_ORDINAL {
                    workspaces.insert(*id, next_ordinal);
                    next_ordinal += 1;
                }
            }
            Patch::WorkspaceDeleted(id) => deleted = workspaces.remove(id),
            Patch::Member { .. } => {}
        }
        // Every user's grants are copied into a fresh array, leaving out a deleted workspace's
        // (the database deleted them with it).
        let mut users = self.users.clone();
        let mut packed = Vec::with_capacity(self.grants.len() + 16);
        for entry in users.iter_mut() {
            let start = entry.grants_start as usize;
            let own = self.grants.get(start..start + entry.grants_len as usize).unwrap_or(&[]);
            let from = packed.len();
            packed.extend(own.iter().filter(|g| Some(*g >> 1) != deleted));
            // Within u32: the copy holds no more grants than the original.
            entry.grants_start = from as u32;
            entry.grants_len = (packed.len() - from) as u32;
        }
        if let Patch::Member { user, role, grants } = patch {
            let mut own: Vec<u32> = grants
                .iter()
                .filter_map(|(ws, access)| workspaces.get(ws).map(|o| pack_grant(*o, *access)))
                .collect();
            own.sort_unstable();
            let id = user.as_str().as_bytes();
            let hash = self.hasher.hash_one(id);
            let found = users.find_entry(hash, |e| e.id.as_bytes() == id);
            if role.is_none() && own.is_empty() {
                // Gone from the organization: no entry, as a reload would leave none.
                if let Ok(entry) = found {
                    entry.remove();
                }
            } else if let (Ok(grants_start), Ok(grants_len)) =
                (u32::try_from(packed.len()), u32::try_from(own.len()))
            {
                // The user's old grants stay in the array unread until the next patch compacts it.
                packed.extend(own);
                let fresh =
                    UserEntry { id: UserKey::new(id), role: *role, grants_start, grants_len };
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
        }
        Located { index: self, user, ordinal }
    }

    fn find(&self, user: UserIdRef<'_>) -> Option<&UserEntry> {
        let id = user.as_str().as_bytes();
        self.users.find(self.hasher.hash_one(id), |e| e.id.as_bytes() == id)
    }

    fn grant(&self, user: &UserEntry, ordinal: u32) -> Option<Access> {
        let start = user.grants_start as usize;
        let grants = self.grants.get(start..start + user.grants_len as usize)?;
        let at = grants.binary_search_by_key(&ordinal, |g| g >> 1).ok()?;
        Some(unpack_access(grants[at]))
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
            Ok(Some(ordinal)) => (
                role,
                WorkspaceFacts::Present(self.user.and_then(|u| self.index.grant(u, ordinal))),
            ),
        }
    }
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

/// Where an organization's index is, or is being loaded.
#[derive(Debug, Default)]
pub struct SlotCell {
    /// The index once loaded (concurrent checks wait for one load); `None` when the
    /// organization alone is larger than the limit and its checks read the database.
    pub index: OnceCell<Option<Arc<OrgIndex>>>,
    /// Rows counted against the limit for this slot.
    accounted: AtomicUsize,
    /// The cache's clock when a check last used this index, for eviction by recency.
    used: AtomicU64,
}

impl SlotCell {
    /// Records a use at clock reading `now`. Written at most once per tick of the clock (the
    /// clock moves once per load), so checks on a busy organization read this word but almost
    /// never write it, and do not contend for its cache line.
    fn touch(&self, now: u64) {
        if self.used.load(Ordering::Relaxed) < now {
            self.used.fetch_max(now, Ordering::Relaxed);
        }
    }
}

/// A shared handle on a slot.
pub type Slot = Arc<SlotCell>;

/// Counters of the index's use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Checks answered from memory without loading anything.
    pub hits: u64,
    /// Checks that loaded an organization or read the database.
    pub misses: u64,
    /// Rows held in memory.
    pub entries: usize,
    /// Organization ids remembered as not existing.
    pub absent: usize,
    /// Committed changes applied to a loaded index in place of reloading it.
    pub patches: u64,
    /// Whether checks may be answered from memory now (enabled, and the feed is up).
    pub in_use: bool,
}

/// Organization ids known not to exist, so that checks naming them cost no query: sorted, 16
/// bytes each in an array grown by a quarter at a time (so at most 36 bytes per id held), and
/// never more than a fixed number. When full, a new id replaces one chosen at random: a
/// remembered id forgotten merely costs one query again.
#[derive(Debug, Default)]
struct AbsentIds {
    ids: Vec<u128>,
    limit: usize,
}

impl AbsentIds {
    fn new(limit: usize) -> Self {
        Self { ids: Vec::new(), limit }
    }

    fn contains(&self, org: OrganizationId) -> bool {
        self.ids.binary_search(&org.as_uuid().as_u128()).is_ok()
    }

    /// Remembers `org`; `random` picks the id it replaces when full.
    fn insert(&mut self, org: OrganizationId, random: u64) {
        let id = org.as_uuid().as_u128();
        let Err(at) = self.ids.binary_search(&id) else { return };
        let len = self.ids.len();
        if len >= self.limit {
            let Some(victim) = usize::try_from(random).ok().and_then(|r| r.checked_rem(len)) else {
                // Nothing may be held at all.
                return;
            };
            // Out with the victim, in with the new id, in order, in one pass.
            if victim < at {
                self.ids[victim..at].rotate_left(1);
                self.ids[at - 1] = id;
            } else {
                self.ids[at..=victim].rotate_right(1);
                self.ids[at] = id;
            }
            return;
        }
        if len == self.ids.capacity() {
            // A quarter at a time rather than doubling, which could leave half the array empty.
            self.ids.reserve_exact((len / 4).clamp(1, self.limit - len));
        }
        self.ids.insert(at, id);
    }

    fn remove(&mut self, org: OrganizationId) {
        if let Ok(at) = self.ids.binary_search(&org.as_uuid().as_u128()) {
            self.ids.remove(at);
            if self.ids.capacity() > 2 * self.ids.len() + 8 {
                self.ids.shrink_to(self.ids.len() + self.ids.len() / 4);
            }
        }
    }

    fn clear(&mut self) {
        self.ids = Vec::new();
    }

    fn len(&self) -> usize {
        self.ids.len()
    }
}

/// One shard of the cache: the organizations loaded or being loaded, and ids known absent.
#[derive(Debug, Default)]
struct Shard {
    orgs: HashMap<OrganizationId, Slot>,
    absent: AbsentIds,
}

/// The index of every organization loaded so far.
pub struct AuthzCache {
    capacity: usize,
    trusted: AtomicBool,
    entries: AtomicUsize,
    hits: AtomicU64,
    misses: AtomicU64,
    patches: AtomicU64,
    /// Moves once per load; a slot's `used` is its reading at the slot's last use.
    clock: AtomicU64,
    /// Held while organizations are evicted, so that two loads do not both evict for one excess.
    evicting: Mutex<()>,
    /// What a check on an organization that does not exist answers from: nobody is a member.
    empty: Arc<OrgIndex>,
    // SipHash: organization ids here come straight from callers, who may name any id.
    hasher: std::collections::hash_map::RandomState,
    shards: Vec<RwLock<Shard>>,
    /// Taken while a change is patched in, one per shard: patches of one organization then
    /// read the database and replace its index one after another, each from newer rows.
    patching: Vec<tokio::sync::Mutex<()>>,
    /// Notifications of this replica's own committed changes, not yet come back: the sending
    /// session's process id, the organization, and when the change was announced.
    echoes: Mutex<Vec<(u32, OrganizationId, Instant)>>,
}

/// How long an announced change is awaited back. A notification comes back within
/// milliseconds while the feed is up, and a broken feed forgets every awaited one; the limit
/// keeps a stray entry from outliving the session whose process id it names.
const ECHO_WAIT: Duration = Duration::from_secs(10);

/// Rows of the limit per remembered absent id: their memory stays under a tenth of the rows'.
const ROWS_PER_ABSENT_ID: usize = 16;

/// The most absent ids remembered whatever the limit (1 MiB of them).
const MAX_ABSENT_IDS: usize = 65_536;

/// Where an organization stands when a change to it is to be patched in.
pub enum Held {
    /// Not held: the next check loads it, with the change.
    Absent,
    /// Loaded: the change may be patched into this index, which is in this slot.
    Loaded(Slot, Arc<OrgIndex>),
    /// Being loaded (maybe from rows older than the change), or too large to hold: only
    /// dropping it is safe.
    Unsettled,
}

impl AuthzCache {
    /// An index of at most `capacity` rows (0 disables it), trusted from the start. It also
    /// remembers the ids of organizations that do not exist: one per 16 rows of `capacity`,
    /// 65,536 at most.
    pub fn new(capacity: usize) -> Self {
        let absent_per_shard =
            (capacity / ROWS_PER_ABSENT_ID).clamp(SHARDS, MAX_ABSENT_IDS) / SHARDS;
        Self {
            capacity,
            trusted: AtomicBool::new(true),
            entries: AtomicUsize::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            patches: AtomicU64::new(0),
            clock: AtomicU64::new(1),
            evicting: Mutex::new(()),
            empty: Arc::new(OrgIndex::new(Vec::new(), Vec::new(), Vec::new())),
            hasher: Default::default(),
            shards: (0..SHARDS)
                .map(|_| {
                    RwLock::new(Shard {
                        orgs: HashMap::new(),
                        absent: AbsentIds::new(absent_per_shard),
                    })
                })
                .collect(),
            patching: (0..SHARDS).map(|_| tokio::sync::Mutex::new(())).collect(),
            echoes: Mutex::new(Vec::new()),
        }
    }

    fn shard_of(&self, org: OrganizationId) -> usize {
        (self.hasher.hash_one(org) as usize) % SHARDS
    }

    fn shard(&self, org: OrganizationId) -> &RwLock<Shard> {
        &self.shards[self.shard_of(org)]
    }

    fn read(&self, org: OrganizationId) -> std::sync::RwLockReadGuard<'_, Shard> {
        self.shard(org).read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self, org: OrganizationId) -> std::sync::RwLockWriteGuard<'_, Shard> {
        self.shard(org).write().unwrap_or_else(|p| p.into_inner())
    }

    /// Serializes the patches of an organization; hold it from [`AuthzCache::held`] until
    /// [`AuthzCache::replace`].
    pub async fn lock_patches(&self, org: OrganizationId) -> tokio::sync::MutexGuard<'_, ()> {
        self.patching[self.shard_of(org)].lock().await
    }

    /// Where the organization's index stands. A change to an organization remembered as absent
    /// proves that it exists now: the mark is forgotten, and the next check loads it.
    pub fn held(&self, org: OrganizationId) -> Held {
        if !self.usable() {
            return Held::Absent;
        }
        let shard = self.read(org);
        let Some(slot) = shard.orgs.get(&org) else {
            let marked = shard.absent.contains(org);
            drop(shard);
            if marked {
                self.write(org).absent.remove(org);
            }
            return Held::Absent;
        };
        match slot.index.get() {
            Some(Some(index)) => Held::Loaded(slot.clone(), index.clone()),
            _ => Held::Unsettled,
        }
    }

    /// Puts a patched index in place of the one in `slot`. If that slot was dropped meanwhile
    /// (by another replica's change, eviction or the feed), nothing is put back: the drop came
    /// after this change committed, so whatever loads next already holds it.
    pub fn replace(&self, org: OrganizationId, slot: &Slot, index: OrgIndex) {
        let fresh = Slot::default();
        let fits = self.fits(&index);
        if fits {
            fresh.accounted.store(index.entries(), Ordering::Release);
            let _ = fresh.index.set(Some(Arc::new(index)));
        }
        {
            let mut shard = self.write(org);
            if !shard.orgs.get(&org).is_some_and(|current| Arc::ptr_eq(current, slot)) {
                return;
            }
            self.release(slot);
            if !fits {
                // Grown past the limit: its checks read the database, as after a reload.
                shard.orgs.remove(&org);
                return;
            }
            // A change is no use: the organization keeps its place in the order of recency.
            fresh.used.store(slot.used.load(Ordering::Relaxed), Ordering::Relaxed);
            self.entries.fetch_add(fresh.accounted.load(Ordering::Acquire), Ordering::AcqRel);
            shard.orgs.insert(org, fresh);
            self.patches.fetch_add(1, Ordering::Relaxed);
        }
        self.make_room(org);
    }

    /// Whether answers may come from the index at all: it is enabled and the feed is up.
    fn usable(&self) -> bool {
        self.capacity != 0 && self.is_trusted()
    }

    /// The organization's index if it is loaded and may be used now, or an empty one for an
    /// organization remembered as absent; `None` sends the caller down [`AuthzCache::slot`]'s
    /// path (load, wait for a load, or read the database). The path nearly every check takes:
    /// one shared lock, no waiting, and no write but a rare note of the use.
    pub fn loaded(&self, org: OrganizationId) -> Option<Arc<OrgIndex>> {
        if !self.usable() {
            return None;
        }
        let shard = self.read(org);
        match shard.orgs.get(&org) {
            Some(slot) => {
                let index = slot.index.get()?.clone()?;
                slot.touch(self.clock.load(Ordering::Relaxed));
                Some(index)
            }
            None => shard.absent.contains(org).then(|| self.empty.clone()),
        }
    }

    /// The slot of an organization, created empty if missing; `None` when the index may not be
    /// used (disabled, or the feed is down). An organization remembered as absent gets a slot
    /// of its own, answered already and held nowhere.
    pub fn slot(&self, org: OrganizationId) -> Option<Slot> {
        if !self.usable() {
            return None;
        }
        if let Some(slot) = self.read(org).orgs.get(&org) {
            return Some(slot.clone());
        }
        let mut shard = self.write(org);
        if !shard.orgs.contains_key(&org) && shard.absent.contains(org) {
            let answered = Slot::default();
            let _ = answered.index.set(Some(self.empty.clone()));
            return Some(answered);
        }
        Some(shard.orgs.entry(org).or_default().clone())
    }

    /// Remembers that the organization of `slot` does not exist, as its load found, and lets
    /// the slot go. Not if a change removed the slot during the load: the organization may
    /// have been created since (here, or on another replica, whose notification removes it).
    pub fn mark_absent(&self, org: OrganizationId, slot: &Slot) {
        let random = self.hasher.hash_one((org, self.clock.load(Ordering::Relaxed)));
        let mut shard = self.write(org);
        if !shard.orgs.get(&org).is_some_and(|current| Arc::ptr_eq(current, slot)) {
            return;
        }
        shard.orgs.remove(&org);
        self.release(slot);
        shard.absent.insert(org, random);
    }

    /// What a check on an organization that does not exist answers from.
    pub fn absent_index(&self) -> Arc<OrgIndex> {
        self.empty.clone()
    }

    /// Records a check answered from memory.
    pub fn count_hit(&self) {
        self.count_hits(1);
    }

    /// Records `n` checks answered from memory.
    pub fn count_hits(&self, n: u64) {
        self.hits.fetch_add(n, Ordering::Relaxed);
    }

    /// Records a check that loaded or read the database.
    pub fn count_miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether an organization of this size may be held at all.
    pub fn fits(&self, index: &OrgIndex) -> bool {
        index.entries() <= self.capacity
    }

    /// Accounts for a freshly loaded organization and makes room under the limit.
    pub fn admit(&self, org: OrganizationId, slot: &Slot, index: &OrgIndex) {
        {
            let shard = self.write(org);
            // A change during the load already removed this slot: nothing to account for.
            if !shard.orgs.get(&org).is_some_and(|current| Arc::ptr_eq(current, slot)) {
                return;
            }
            // Every use from now on reads a later clock than this load's.
            slot.used.store(self.clock.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
            slot.accounted.store(index.entries(), Ordering::Release);
            self.entries.fetch_add(index.entries(), Ordering::AcqRel);
        }
        self.make_room(org);
    }

    /// Drops the least recently used organizations other than `keep` while the limit is
    /// exceeded, down to a sixteenth below it, so that a full index looks over its slots once
    /// per many loads rather than at each.
    fn make_room(&self, keep: OrganizationId) {
        if self.entries.load(Ordering::Acquire) <= self.capacity {
            return;
        }
        // Another load is evicting already, down to below the limit with this one counted.
        let _evicting = match self.evicting.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        let target = self.capacity - self.capacity / 16;
        let mut candidates: Vec<(u64, OrganizationId, Slot)> = Vec::new();
        for shard in &self.shards {
            let shard = shard.read().unwrap_or_else(|p| p.into_inner());
            candidates.extend(
                shard
                    .orgs
                    .iter()
                    // Slots still loading, or too large to hold, hold no rows.
                    .filter(|(org, slot)| {
                        **org != keep && slot.accounted.load(Ordering::Acquire) > 0
                    })
                    .map(|(org, slot)| (slot.used.load(Ordering::Relaxed), *org, slot.clone())),
            );
        }
        candidates.sort_unstable_by_key(|(used, _, _)| *used);
        for (used, org, slot) in candidates {
            if self.entries.load(Ordering::Acquire) <= target {
                break;
            }
            let mut shard = self.write(org);
            // Unless replaced, or used, since it was looked at.
            if shard.orgs.get(&org).is_some_and(|current| Arc::ptr_eq(current, &slot))
                && slot.used.load(Ordering::Relaxed) == used
            {
                shard.orgs.remove(&org);
                self.release(&slot);
            }
        }
    }

    fn release(&self, slot: &Slot) {
        let accounted = slot.accounted.swap(0, Ordering::AcqRel);
        self.entries.fetch_sub(accounted, Ordering::AcqRel);
    }

    /// Forgets an organization, and that it was absent; called once its change has committed
    /// (creating an organization is one). A load in progress keeps serving only the checks
    /// that were already waiting for it.
    pub fn invalidate(&self, org: OrganizationId) {
        let removed = {
            let mut shard = self.write(org);
            shard.absent.remove(org);
            shard.orgs.remove(&org)
        };
        if let Some(slot) = removed {
            self.release(&slot);
        }
    }

    /// Notes that this replica announced a change to `org` from the database session `sender`,
    /// and will apply it to its own index itself. Call before the change commits (its
    /// notification may come back at once), and [`AuthzCache::forget_echo`] if it does not.
    pub fn expect_echo(&self, sender: u32, org: OrganizationId) {
        let mut echoes = self.echoes.lock().unwrap_or_else(|p| p.into_inner());
        echoes.retain(|(_, _, at)| at.elapsed() < ECHO_WAIT);
        echoes.push((sender, org, Instant::now()));
    }

    /// Withdraws one [`AuthzCache::expect_echo`] (the change did not commit).
    pub fn forget_echo(&self, sender: u32, org: OrganizationId) {
        self.take_echo(sender, org);
    }

    /// Whether a notification about `org` from session `sender` is one of this replica's own
    /// (each counts once); anything else must invalidate.
    pub fn take_echo(&self, sender: u32, org: OrganizationId) -> bool {
        let mut echoes = self.echoes.lock().unwrap_or_else(|p| p.into_inner());
        let found = echoes
            .iter()
            .position(|(s, o, at)| *s == sender && *o == org && at.elapsed() < ECHO_WAIT);
        found.map(|at| echoes.swap_remove(at)).is_some()
    }

    /// Forgets everything.
    pub fn clear(&self) {
        for shard in &self.shards {
            let drained: Vec<Slot> = {
                let mut shard = shard.write().unwrap_or_else(|p| p.into_inner());
                shard.absent.clear();
                shard.orgs.drain().map(|(_, s)| s).collect()
            };
            for slot in drained {
                self.release(&slot);
            }
        }
    }

    /// Stops using the index (the invalidation feed is down), or starts again from empty.
    pub fn set_trusted(&self, trusted: bool) {
        // Notifications sent while the feed was down are lost: none is awaited any more, and any
        // that does come back invalidates, which is merely a reload.
        self.echoes.lock().unwrap_or_else(|p| p.into_inner()).clear();
        if trusted {
            self.clear();
            self.trusted.store(true, Ordering::Release);
        } else {
            self.trusted.store(false, Ordering::Release);
            self.clear();
        }
    }

    /// Whether answers may come from memory now.
    pub fn is_trusted(&self) -> bool {
        self.trusted.load(Ordering::Acquire)
    }

    /// The counters.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: self.entries.load(Ordering::Relaxed),
            absent: self
                .shards
                .iter()
                .map(|shard| shard.read().unwrap_or_else(|p| p.into_inner()).absent.len())
                .sum(),
            patches: self.patches.load(Ordering::Relaxed),
            in_use: self.usable(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserId {
        UserId::parse(name).unwrap()
    }

    fn index(members: usize) -> OrgIndex {
        let ws = WorkspaceId::generate();
        OrgIndex::new(
            (0..members).map(|i| (user(&format!("u{i}")), Role::Member)).collect(),
            vec![ws],
            vec![(ws, user("u0"), Access::Read)],
        )
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

    /// Rows as the database holds them, for checking an index against.
    #[derive(Default)]
    struct Rows {
        roles: HashMap<UserId, Role>,
        workspaces: Vec<WorkspaceId>,
        grants: HashMap<(UserId, WorkspaceId), Access>,
    }

    impl Rows {
        fn index(&self) -> OrgIndex {
            OrgIndex::new(
                self.roles.iter().map(|(u, r)| (u.clone(), *r)).collect(),
                self.workspaces.clone(),
                self.grants.iter().map(|((u, w), a)| (*w, u.clone(), *a)).collect(),
            )
        }

        fn member_patch(&self, user: &UserId) -> Patch {
            Patch::Member {
                user: user.clone(),
                role: self.roles.get(user).copied(),
                grants: self
                    .grants
                    .iter()
                    .filter(|((u, _), _)| u == user)
                    .map(|((_, w), a)| (*w, *a))
                    .collect(),
            }
        }
    }

    proptest::proptest! {
        /// An index patched change by change answers exactly as one reloaded after them.
        #[test]
        fn a_patched_index_answers_as_a_reload_would(
            users in proptest::collection::hash_set("[a-z]{1,3}|[a-z]{39,41}", 1..30),
            initial in proptest::collection::vec((0usize..30, 0usize..6, 0u8..7), 0..60),
            changes in proptest::collection::vec((0usize..30, 0usize..8, 0u8..10), 1..40),
            queries in proptest::collection::vec((0usize..34, 0usize..9), 1..60),
        ) {
            let users: Vec<UserId> = users.iter().map(|u| user(u)).collect();
            let roles = [Role::Owner, Role::Admin, Role::Billing, Role::Member];
            let mut rows = Rows {
                workspaces: (0..4).map(|_| WorkspaceId::generate()).collect(),
                ..Rows::default()
            };
            let set = |rows: &mut Rows, u: &UserId, w: usize, code: u8| match code {
                0..=3 => {
                    rows.roles.insert(u.clone(), roles[usize::from(code)]);
                }
                // Grants, as in the database, only for members on existing workspaces.
                4 | 5 if rows.roles.contains_key(u) && w < rows.workspaces.len() => {
                    let access = if code == 4 { Access::Read } else { Access::Write };
                    rows.grants.insert((u.clone(), rows.workspaces[w]), access);
                }
                6 if w < rows.workspaces.len() => {
                    rows.grants.remove(&(u.clone(), rows.workspaces[w]));
                }
                _ => {}
            };
            for (u, w, code) in initial {
                if let Some(u) = users.get(u) {
                    set(&mut rows, u, w, code);
                }
            }
            let mut index = rows.index();
            for (u, w, code) in changes {
                let who = &users[u % users.len()];
                let patch = match code {
                    // A member removed, with their grants.
                    7 => {
                        rows.roles.remove(who);
                        rows.grants.retain(|(u, _), _| u != who);
                        rows.member_patch(who)
                    }
                    8 => {
                        let ws = WorkspaceId::generate();
                        rows.workspaces.push(ws);
                        Patch::WorkspaceCreated(ws)
                    }
                    9 if !rows.workspaces.is_empty() => {
                        let ws = rows.workspaces.remove(w % rows.workspaces.len());
                        rows.grants.retain(|(_, g), _| *g != ws);
                        Patch::WorkspaceDeleted(ws)
                    }
                    _ => {
                        set(&mut rows, who, w, code);
                        rows.member_patch(who)
                    }
                };
                index = index.patched(&patch).expect("every workspace is held");
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
        let index = index.patched(&Patch::WorkspaceDeleted(ws)).unwrap();
        assert_eq!(index.facts(&user("a"), Some(ws)).1, WorkspaceFacts::Missing);
        // A new workspace must not inherit the deleted one's grant through its ordinal.
        let next = WorkspaceId::generate();
        let index = index.patched(&Patch::WorkspaceCreated(next)).unwrap();
        assert_eq!(index.facts(&user("a"), Some(next)).1, WorkspaceFacts::Present(None));
    }

    #[test]
    fn a_grant_on_a_workspace_the_index_lacks_cannot_be_patched_in() {
        let ws = WorkspaceId::generate();
        let index = OrgIndex::new(vec![(user("a"), Role::Member)], vec![ws], vec![]);
        // Created on another replica, granted here before that replica's notice arrived.
        let elsewhere = WorkspaceId::generate();
        let patch = Patch::Member {
            user: user("a"),
            role: Some(Role::Member),
            grants: vec![(ws, Access::Read), (elsewhere, Access::Write)],
        };
        assert!(index.patched(&patch).is_none(), "a reload is needed");
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
        // A grant on a workspace created between the load's queries is left out, and counted
        // out: a later patch, which counts what is held, must find the same number.
        let late = WorkspaceId::generate();
        let index = OrgIndex::new(
            vec![(user("a"), Role::Member)],
            vec![ws],
            vec![(ws, user("a"), Access::Read), (late, user("a"), Access::Write)],
        );
        assert_eq!(index.entries(), 4, "the organization, a member, a workspace, a grant");
        let patch = Patch::Member {
            user: user("a"),
            role: Some(Role::Member),
            grants: vec![(ws, Access::Read)],
        };
        assert_eq!(index.patched(&patch).unwrap().entries(), index.entries());
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

    /// Heap bytes held by the current thread, so that a test can weigh what it builds.
    mod heap {
        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        thread_local! {
            static LIVE: Cell<isize> = const { Cell::new(0) };
        }

        fn add(bytes: isize) {
            // No destructor is registered for a const-initialized Cell, so this never fails;
            // `try_with` all the same, since an allocator must not panic.
            let _ = LIVE.try_with(|live| live.set(live.get() + bytes));
        }

        /// The bytes allocated and not yet freed by this thread.
        pub fn live() -> isize {
            LIVE.with(Cell::get)
        }

        struct Counting;

        // SAFETY: every call is passed to the system allocator unchanged; the counting around
        // it touches only a thread-local integer.
        unsafe impl GlobalAlloc for Counting {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                // SAFETY: the caller's guarantees, forwarded.
                let p = unsafe { System.alloc(layout) };
                if !p.is_null() {
                    add(layout.size() as isize);
                }
                p
            }

            unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
                // SAFETY: the caller's guarantees, forwarded.
                let p = unsafe { System.alloc_zeroed(layout) };
                if !p.is_null() {
                    add(layout.size() as isize);
                }
                p
            }

            unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
                // SAFETY: the caller's guarantees, forwarded.
                unsafe { System.dealloc(p, layout) };
                add(-(layout.size() as isize));
            }

            unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
                // SAFETY: the caller's guarantees, forwarded.
                let q = unsafe { System.realloc(p, layout, new_size) };
                if !q.is_null() {
                    add(new_size as isize - layout.size() as isize);
                }
                q
            }
        }

        #[global_allocator]
        static COUNTING: Counting = Counting;
    }

    /// What a check naming an organization that does not exist leaves in the cache: its load
    /// finds no such organization.
    fn remember_absent(cache: &AuthzCache, org: OrganizationId) {
        let slot = cache.slot(org).unwrap();
        cache.mark_absent(org, &slot);
    }

    #[test]
    fn absent_organizations_take_at_most_40_bytes_each_and_their_number_is_bounded() {
        for (capacity, flood) in [(2_000_000, 100_000), (2_000, 1_000), (2_000_000, 3)] {
            let cache = AuthzCache::new(capacity);
            // Every shard's table of organizations, which a load allocates once and keeps
            // whatever it finds, is allocated before the weighing starts.
            let mut warm = [false; SHARDS];
            while warm.contains(&false) {
                let org = OrganizationId::generate();
                warm[cache.shard_of(org)] = true;
                drop(cache.slot(org));
                cache.invalidate(org);
            }
            let before = heap::live();
            for _ in 0..flood {
                remember_absent(&cache, OrganizationId::generate());
            }
            let held = heap::live() - before;
            let remembered = cache.stats().absent;
            let bound = (capacity / ROWS_PER_ABSENT_ID).min(MAX_ABSENT_IDS);
            assert!(remembered <= bound, "{remembered} remembered, at most {bound}");
            assert!(remembered >= bound.min(flood) / 2, "{remembered} remembered of {flood}");
            println!("limit {capacity}: {remembered} absent ids in {held} bytes");
            assert!(
                held <= 40 * remembered as isize,
                "{held} bytes for {remembered} absent ids (capacity {capacity})"
            );
            assert_eq!(cache.stats().entries, 0, "absent ids hold no rows");
        }
    }

    #[test]
    fn an_absent_mark_answers_until_a_change_or_a_creation_forgets_it() {
        let cache = AuthzCache::new(1_000);
        let org = OrganizationId::generate();
        assert!(cache.loaded(org).is_none(), "unknown: the first check loads");
        remember_absent(&cache, org);
        let answered = cache.loaded(org).expect("answered from memory");
        assert_eq!(answered.facts(&user("a"), None), (None, WorkspaceFacts::NotApplicable));
        let slot = cache.slot(org).unwrap();
        assert!(slot.index.get().is_some(), "a slot answered already, nothing to load");

        // Creating the organization (here, or a notification of it) invalidates it.
        cache.invalidate(org);
        assert!(cache.loaded(org).is_none());
        assert_eq!(cache.stats().absent, 0);

        // Any other committed change proves that it exists too.
        remember_absent(&cache, org);
        assert!(matches!(cache.held(org), Held::Absent));
        assert!(cache.loaded(org).is_none());
        assert_eq!(cache.stats().absent, 0);

        // A load that found nothing, raced by the creation, leaves no mark.
        let slot = cache.slot(org).unwrap();
        cache.invalidate(org);
        cache.mark_absent(org, &slot);
        assert!(cache.loaded(org).is_none());
        assert_eq!(cache.stats().absent, 0);

        // And a feed that goes down forgets every mark.
        remember_absent(&cache, org);
        cache.set_trusted(false);
        cache.set_trusted(true);
        assert!(cache.loaded(org).is_none());
    }

    proptest::proptest! {
        /// Absent ids behave as a set that never grows past its limit, losing only what a full
        /// set had to give up.
        #[test]
        fn absent_ids_are_a_bounded_set(
            limit in 0usize..12,
            ops in proptest::collection::vec((0u8..3, 0u128..24, proptest::num::u64::ANY), 0..200),
        ) {
            let mut set = AbsentIds::new(limit);
            let mut model = std::collections::BTreeSet::new();
            for (op, id, random) in ops {
                let org = OrganizationId::from_uuid(uuid::Uuid::from_u128(id));
                match op {
                    0 | 1 => {
                        set.insert(org, random);
                        if limit > 0 {
                            model.insert(id);
                        }
                        model.retain(|id| set.ids.binary_search(id).is_ok());
                        proptest::prop_assert!(limit == 0 || set.contains(org));
                    }
                    _ => {
                        set.remove(org);
                        model.remove(&id);
                        proptest::prop_assert!(!set.contains(org));
                    }
                }
                proptest::prop_assert!(set.len() <= limit);
                proptest::prop_assert!(set.ids.windows(2).all(|w| w[0] < w[1]), "sorted");
                proptest::prop_assert_eq!(set.ids.to_vec(),
                    model.iter().copied().collect::<Vec<_>>());
            }
        }
    }

    /// Loads an index of `rows` rows (at least 4) for `org`, as a check's load does.
    fn load(cache: &AuthzCache, org: OrganizationId, rows: usize) {
        let slot = cache.slot(org).unwrap();
        let loaded = Arc::new(index(rows - 3));
        let _ = slot.index.set(Some(loaded.clone()));
        cache.admit(org, &slot, &loaded);
    }

    #[test]
    fn eviction_drops_the_least_recently_used_organizations_first() {
        let cache = AuthzCache::new(100);
        // In the shard a sweep in table order would empty first.
        let in_use = std::iter::repeat_with(OrganizationId::generate)
            .find(|org| cache.shard_of(*org) == 0)
            .unwrap();
        load(&cache, in_use, 12);
        let mut others = Vec::new();
        for i in 0..50 {
            let org = OrganizationId::generate();
            load(&cache, org, 12);
            others.push(org);
            assert!(cache.loaded(in_use).is_some(), "the organization in use stays ({i})");
            assert!(cache.stats().entries <= 100, "{:?}", cache.stats());
        }
        // Besides it, the ones loaded last are held and the first ones are gone.
        let held: Vec<bool> = others.iter().map(|org| cache.loaded(*org).is_some()).collect();
        assert!(held[45..].iter().all(|h| *h), "{held:?}");
        assert!(held[..40].iter().all(|h| !*h), "{held:?}");
    }

    #[test]
    fn invalidation_replaces_the_slot_and_the_limit_holds() {
        let cache = AuthzCache::new(25);
        let org = OrganizationId::generate();
        let slot = cache.slot(org).unwrap();
        let loaded = Arc::new(index(10));
        let _ = slot.index.set(Some(loaded.clone()));
        cache.admit(org, &slot, &loaded);
        assert!(Arc::ptr_eq(&slot, &cache.slot(org).unwrap()));
        cache.invalidate(org);
        assert!(!Arc::ptr_eq(&slot, &cache.slot(org).unwrap()), "a new slot after invalidation");
        assert_eq!(cache.stats().entries, 0);

        for _ in 0..5 {
            let org = OrganizationId::generate();
            let slot = cache.slot(org).unwrap();
            let loaded = Arc::new(index(10));
            let _ = slot.index.set(Some(loaded.clone()));
            cache.admit(org, &slot, &loaded);
            assert!(cache.stats().entries <= 25, "{:?}", cache.stats());
        }
        assert!(!cache.fits(&index(100)));
        cache.set_trusted(false);
        assert!(cache.slot(org).is_none());
        assert_eq!(cache.stats().entries, 0);
    }
}
