//! Where each organization's index is held: loaded (with the revision it is at), being loaded,
//! too large to hold, or remembered as absent. Bounded by a row limit, over which the least
//! recently used organizations are dropped. Every step here is a short critical section under
//! one shard's lock; the reading of rows happens outside, in [`super::AuthzIndex`].

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::OnceCell;

use super::org::OrgIndex;
use crate::domain::{OrganizationId, Revision};

const SHARDS: usize = 16;

/// Rows of the limit per remembered absent id: their memory stays under a tenth of the rows'.
const ROWS_PER_ABSENT_ID: usize = 16;

/// The most absent ids remembered whatever the limit (1 MiB of them).
const MAX_ABSENT_IDS: usize = 65_536;

/// A loaded organization.
#[derive(Debug)]
pub(super) struct Held {
    pub index: Arc<OrgIndex>,
    /// The revision the index is at: every change up to it is in, none after it.
    pub revision: Revision,
    /// Rows counted against the limit.
    accounted: usize,
    /// The clock when a check last used it, for eviction by recency.
    used: AtomicU64,
}

impl Held {
    /// Records a use at clock reading `now`. Written at most once per tick of the clock (the
    /// clock moves once per load), so checks on a busy organization read this word but almost
    /// never write it, and do not contend for its cache line.
    fn touch(&self, now: u64) {
        if self.used.load(Ordering::Relaxed) < now {
            self.used.fetch_max(now, Ordering::Relaxed);
        }
    }
}

/// An organization being loaded. Checks that find it wait for the one load.
#[derive(Debug, Default)]
pub(super) struct Load {
    /// What the waiting checks answer from: an index, or `None` when they must read the
    /// database (the organization is larger than the limit, or the load failed).
    pub done: OnceCell<Option<Arc<OrgIndex>>>,
    /// The latest revision this replica committed while the load ran.
    known: AtomicU64,
    /// Changes notified while the load ran (their revision is not in the notification).
    pokes: AtomicU64,
}

impl Load {
    /// What the load must have caught up with before it may publish: the latest revision
    /// committed here, and the notifications counted so far.
    pub fn seen(&self) -> (Revision, u64) {
        (Revision(self.known.load(Ordering::Acquire)), self.pokes.load(Ordering::Acquire))
    }
}

#[derive(Debug)]
enum Entry {
    Loaded(Arc<Held>),
    Loading(Arc<Load>),
    /// Larger than the whole limit: its checks read the database.
    Oversized,
}

/// Where an organization stands, for a slow path.
pub(super) enum Standing {
    /// The index may not be used now (disabled, or the feed is down).
    Unusable,
    /// Not held; remembered as absent, or not.
    NotHeld { absent: bool },
    /// Loaded.
    Loaded(Arc<Held>),
    /// Being loaded.
    Loading(Arc<Load>),
    /// Too large to hold.
    Oversized,
}

/// What became of a load's attempt to publish.
pub(super) enum Published {
    /// In place; checks answer from it.
    Yes,
    /// Not yet: a change came meanwhile that the load must catch up with first.
    Behind,
    /// Dropped meanwhile (a change that could not be applied, eviction, the feed): the load
    /// serves only the checks already waiting for it.
    Gone,
    /// Larger than the whole limit: its checks read the database.
    Oversized,
}

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
    /// Committed changes to members, workspaces or grants applied to a loaded index in place of
    /// reloading it.
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

/// One shard: the organizations held or being loaded, and ids known absent.
#[derive(Debug, Default)]
struct Shard {
    orgs: HashMap<OrganizationId, Entry>,
    absent: AbsentIds,
}

/// Every organization's place in the index.
pub(super) struct Cache {
    capacity: usize,
    trusted: AtomicBool,
    entries: AtomicUsize,
    hits: AtomicU64,
    misses: AtomicU64,
    patches: AtomicU64,
    /// Moves once per load; a held organization's `used` is its reading at its last use.
    clock: AtomicU64,
    /// Held while organizations are evicted, so that two loads do not both evict for one excess.
    evicting: Mutex<()>,
    /// What a check on an organization that does not exist answers from: nobody is a member.
    empty: Arc<OrgIndex>,
    // SipHash: organization ids here come straight from callers, who may name any id.
    hasher: std::collections::hash_map::RandomState,
    shards: Vec<RwLock<Shard>>,
}

impl Cache {
    /// At most `capacity` rows (0 disables the index), trusted from the start; and one absent
    /// id per 16 rows of `capacity`, 65,536 at most.
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
        }
    }

    fn shard_of(&self, org: OrganizationId) -> usize {
        (self.hasher.hash_one(org) as usize) % SHARDS
    }

    fn read(&self, org: OrganizationId) -> RwLockReadGuard<'_, Shard> {
        self.shards[self.shard_of(org)].read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self, org: OrganizationId) -> RwLockWriteGuard<'_, Shard> {
        self.shards[self.shard_of(org)].write().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether answers may come from the index at all: it is enabled and the feed is up.
    pub fn usable(&self) -> bool {
        self.capacity != 0 && self.trusted()
    }

    /// Whether the feed is trusted.
    pub fn trusted(&self) -> bool {
        self.trusted.load(Ordering::Acquire)
    }

    /// The organization's index if it is loaded and may be used now, or an empty one for an
    /// organization remembered as absent; `None` sends the caller down the slow path. The path
    /// nearly every check takes: one shared lock, no waiting, and no write but a rare note of
    /// the use.
    pub fn loaded(&self, org: OrganizationId) -> Option<Arc<OrgIndex>> {
        if !self.usable() {
            return None;
        }
        let shard = self.read(org);
        match shard.orgs.get(&org) {
            Some(Entry::Loaded(held)) => {
                held.touch(self.clock.load(Ordering::Relaxed));
                Some(held.index.clone())
            }
            Some(_) => None,
            None => shard.absent.contains(org).then(|| self.empty.clone()),
        }
    }

    /// What a check on an organization that does not exist answers from.
    pub fn empty(&self) -> Arc<OrgIndex> {
        self.empty.clone()
    }

    /// Where the organization stands, starting a load when it is not held (and not known to be
    /// absent).
    pub fn standing_or_load(&self, org: OrganizationId) -> Standing {
        if !self.usable() {
            return Standing::Unusable;
        }
        if let Some(standing) = self.standing_of(&self.read(org), org) {
            return standing;
        }
        let mut shard = self.write(org);
        if let Some(standing) = self.standing_of(&shard, org) {
            return standing;
        }
        let load = Arc::new(Load::default());
        shard.orgs.insert(org, Entry::Loading(load.clone()));
        Standing::Loading(load)
    }

    /// Where the organization stands, if it is held or known to be absent.
    fn standing_of(&self, shard: &Shard, org: OrganizationId) -> Option<Standing> {
        match shard.orgs.get(&org) {
            Some(Entry::Loaded(held)) => Some(Standing::Loaded(held.clone())),
            Some(Entry::Loading(load)) => Some(Standing::Loading(load.clone())),
            Some(Entry::Oversized) => Some(Standing::Oversized),
            None if shard.absent.contains(org) => Some(Standing::NotHeld { absent: true }),
            None => None,
        }
    }

    /// Notes a change to `org` at `revision` (committed here), or of unknown revision (notified
    /// by another replica), before the caller brings a loaded index up to it: a load in progress
    /// catches up with it before it publishes, and a change shows that an organization
    /// remembered as absent exists. Returns where the organization stands.
    pub fn note_change(&self, org: OrganizationId, revision: Option<Revision>) -> Standing {
        if !self.usable() {
            return Standing::Unusable;
        }
        let mut shard = self.write(org);
        match shard.orgs.get(&org) {
            Some(Entry::Loaded(held)) => Standing::Loaded(held.clone()),
            Some(Entry::Loading(load)) => {
                // Under the shard's lock, which the load's publication takes too: either the
                // load sees this, or it has published already and the caller was told Loaded.
                match revision {
                    Some(revision) => {
                        load.known.fetch_max(revision.0, Ordering::AcqRel);
                    }
                    None => {
                        load.pokes.fetch_add(1, Ordering::AcqRel);
                    }
                }
                Standing::Loading(load.clone())
            }
            Some(Entry::Oversized) => Standing::Oversized,
            None => {
                shard.absent.remove(org);
                Standing::NotHeld { absent: false }
            }
        }
    }

    /// Puts a loaded index in place of its load, unless the load is behind what it was told of
    /// since it noted `seen` (see [`Load::seen`]) or was dropped.
    pub fn publish(
        &self,
        org: OrganizationId,
        load: &Arc<Load>,
        index: &Arc<OrgIndex>,
        revision: Revision,
        seen: (Revision, u64),
    ) -> Published {
        let fits = index.entries() <= self.capacity;
        {
            let mut shard = self.write(org);
            if !matches!(shard.orgs.get(&org), Some(Entry::Loading(current)) if Arc::ptr_eq(current, load))
            {
                return Published::Gone;
            }
            let (known, pokes) = load.seen();
            if known > revision || pokes != seen.1 {
                return Published::Behind;
            }
            if !fits {
                shard.orgs.insert(org, Entry::Oversized);
                return Published::Oversized;
            }
            let accounted = index.entries();
            // Every use from now on reads a later clock than this load's.
            let used = AtomicU64::new(self.clock.fetch_add(1, Ordering::Relaxed));
            let held = Held { index: index.clone(), revision, accounted, used };
            shard.orgs.insert(org, Entry::Loaded(Arc::new(held)));
            self.entries.fetch_add(accounted, Ordering::AcqRel);
        }
        self.make_room(org);
        Published::Yes
    }

    /// Ends a load that found no such organization: it is remembered as absent, unless a change
    /// came during the load (its creation, say) or the load was dropped.
    pub fn finish_absent(&self, org: OrganizationId, load: &Arc<Load>, seen: (Revision, u64)) {
        let random = self.hasher.hash_one((org, self.clock.load(Ordering::Relaxed)));
        let mut shard = self.write(org);
        if !matches!(shard.orgs.get(&org), Some(Entry::Loading(current)) if Arc::ptr_eq(current, load))
        {
            return;
        }
        shard.orgs.remove(&org);
        if load.seen() == seen && seen == (Revision(0), 0) {
            shard.absent.insert(org, random);
        }
    }

    /// Ends a load that failed: the next check loads again.
    pub fn abandon(&self, org: OrganizationId, load: &Arc<Load>) {
        let mut shard = self.write(org);
        if matches!(shard.orgs.get(&org), Some(Entry::Loading(current)) if Arc::ptr_eq(current, load))
        {
            shard.orgs.remove(&org);
        }
    }

    /// Puts `index` at `revision` in place of `old` (or, with `None`, moves `old`'s index to
    /// `revision` unchanged: a change Authorize does not see). False if `old` is no longer
    /// there: the caller looks again.
    pub fn replace(
        &self,
        org: OrganizationId,
        old: &Arc<Held>,
        index: Option<Arc<OrgIndex>>,
        revision: Revision,
    ) -> bool {
        let structural = index.is_some();
        let index = index.unwrap_or_else(|| old.index.clone());
        let fits = index.entries() <= self.capacity;
        {
            let mut shard = self.write(org);
            if !matches!(shard.orgs.get(&org), Some(Entry::Loaded(current)) if Arc::ptr_eq(current, old))
            {
                return false;
            }
            self.entries.fetch_sub(old.accounted, Ordering::AcqRel);
            if !fits {
                // Grown past the limit: its checks read the database, as after a reload.
                shard.orgs.insert(org, Entry::Oversized);
                return true;
            }
            let accounted = index.entries();
            // A change is no use: the organization keeps its place in the order of recency.
            let used = AtomicU64::new(old.used.load(Ordering::Relaxed));
            let held = Held { index, revision, accounted, used };
            shard.orgs.insert(org, Entry::Loaded(Arc::new(held)));
            self.entries.fetch_add(accounted, Ordering::AcqRel);
            if structural {
                self.patches.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.make_room(org);
        true
    }

    /// Drops the least recently used organizations other than `keep` while the limit is
    /// exceeded, down to a sixteenth below it, so that a full index looks over its entries once
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
        let mut candidates: Vec<(u64, OrganizationId, Arc<Held>)> = Vec::new();
        for shard in &self.shards {
            let shard = shard.read().unwrap_or_else(|p| p.into_inner());
            candidates.extend(shard.orgs.iter().filter_map(|(org, entry)| match entry {
                Entry::Loaded(held) if *org != keep => {
                    Some((held.used.load(Ordering::Relaxed), *org, held.clone()))
                }
                _ => None,
            }));
        }
        candidates.sort_unstable_by_key(|(used, _, _)| *used);
        for (used, org, held) in candidates {
            if self.entries.load(Ordering::Acquire) <= target {
                break;
            }
            let mut shard = self.write(org);
            // Unless replaced, or used, since it was looked at.
            if matches!(shard.orgs.get(&org), Some(Entry::Loaded(current)) if Arc::ptr_eq(current, &held))
                && held.used.load(Ordering::Relaxed) == used
            {
                shard.orgs.remove(&org);
                self.entries.fetch_sub(held.accounted, Ordering::AcqRel);
            }
        }
    }

    fn release(&self, entry: &Entry) {
        if let Entry::Loaded(held) = entry {
            self.entries.fetch_sub(held.accounted, Ordering::AcqRel);
        }
    }

    /// Forgets an organization, and that it was absent. A load in progress keeps serving only
    /// the checks that were already waiting for it.
    pub fn invalidate(&self, org: OrganizationId) {
        let removed = {
            let mut shard = self.write(org);
            shard.absent.remove(org);
            shard.orgs.remove(&org)
        };
        if let Some(entry) = removed {
            self.release(&entry);
        }
    }

    /// Forgets everything.
    fn clear(&self) {
        for shard in &self.shards {
            let drained: Vec<Entry> = {
                let mut shard = shard.write().unwrap_or_else(|p| p.into_inner());
                shard.absent.clear();
                shard.orgs.drain().map(|(_, e)| e).collect()
            };
            for entry in drained {
                self.release(&entry);
            }
        }
    }

    /// Stops using the index (the feed is down: changes may go unnoticed), or starts again from
    /// empty.
    pub fn set_trusted(&self, trusted: bool) {
        if trusted {
            self.clear();
            self.trusted.store(true, Ordering::Release);
        } else {
            self.trusted.store(false, Ordering::Release);
            self.clear();
        }
    }

    /// Records `n` checks answered from memory.
    pub fn count_hits(&self, n: u64) {
        self.hits.fetch_add(n, Ordering::Relaxed);
    }

    /// Records a check that loaded or read the database.
    pub fn count_miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
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
