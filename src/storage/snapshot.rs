//! An in-memory cache of the facts Authorize decides on: a user's role in an organization and,
//! per workspace, whether it exists there and the user's grant. Bounded by an entry limit, with
//! hit and miss counters.
//!
//! Freshness: every committed change to an organization invalidates that organization here before
//! its RPC returns; other replicas invalidate when PostgreSQL delivers the change's NOTIFY. A fill
//! whose database read may have started before an invalidation is discarded (a global generation
//! guards it), so an old answer can never be cached after the change that made it old. While the
//! notification feed is down the cache is bypassed.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::domain::{OrganizationId, Role, UserId, WorkspaceFacts, WorkspaceId};

const SHARDS: usize = 16;

/// The facts of one check.
pub type Facts = (Option<Role>, WorkspaceFacts);

type OrgFacts = HashMap<(UserId, Option<WorkspaceId>), Facts>;

/// Counters of the cache's use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Answers served from memory.
    pub hits: u64,
    /// Answers read from the database.
    pub misses: u64,
    /// Entries held.
    pub entries: usize,
}

/// A ticket taken before a database read; the fill is kept only if nothing was invalidated since.
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

/// The cache.
pub struct AuthzCache {
    capacity: usize,
    trusted: AtomicBool,
    generation: AtomicU64,
    entries: AtomicUsize,
    hits: AtomicU64,
    misses: AtomicU64,
    hasher: std::collections::hash_map::RandomState,
    shards: Vec<RwLock<HashMap<OrganizationId, OrgFacts>>>,
}

impl AuthzCache {
    /// A cache of at most `capacity` entries (0 disables it), trusted from the start.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            trusted: AtomicBool::new(true),
            generation: AtomicU64::new(0),
            entries: AtomicUsize::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            hasher: Default::default(),
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, org: OrganizationId) -> &RwLock<HashMap<OrganizationId, OrgFacts>> {
        &self.shards[(self.hasher.hash_one(org) as usize) % SHARDS]
    }

    /// The cached facts, if the cache may be used and holds them.
    pub fn get(
        &self,
        org: OrganizationId,
        user: &UserId,
        workspace: Option<WorkspaceId>,
    ) -> Option<Facts> {
        if self.capacity == 0 || !self.trusted.load(Ordering::Acquire) {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let shard = self.shard(org).read().unwrap_or_else(|p| p.into_inner());
        let found =
            shard.get(&org).and_then(|facts| facts.get(&(user.clone(), workspace)).copied());
        match found {
            Some(_) => self.hits.fetch_add(1, Ordering::Relaxed),
            None => self.misses.fetch_add(1, Ordering::Relaxed),
        };
        found
    }

    /// Counts a read that bypassed the cache.
    pub fn count_bypass(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes a ticket before reading the database.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.generation.load(Ordering::Acquire))
    }

    /// Stores facts read from the database, unless an invalidation happened since `ticket`.
    pub fn fill(
        &self,
        ticket: Ticket,
        org: OrganizationId,
        user: &UserId,
        workspace: Option<WorkspaceId>,
        facts: Facts,
    ) {
        if self.capacity == 0 || !self.trusted.load(Ordering::Acquire) {
            return;
        }
        let mut shard = self.shard(org).write().unwrap_or_else(|p| p.into_inner());
        // Checked under the shard lock, which invalidation also takes after bumping the
        // generation: either this fill sees the bump, or the invalidation sees this entry.
        if self.generation.load(Ordering::Acquire) != ticket.0 {
            return;
        }
        if self.entries.load(Ordering::Relaxed) >= self.capacity {
            // Full: drop this shard's entries rather than grow.
            let dropped: usize = shard.values().map(HashMap::len).sum();
            shard.clear();
            self.entries.fetch_sub(dropped, Ordering::Relaxed);
        }
        let previous = shard.entry(org).or_default().insert((user.clone(), workspace), facts);
        if previous.is_none() {
            self.entries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Forgets everything about an organization; called after its change commits.
    pub fn invalidate(&self, org: OrganizationId) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let mut shard = self.shard(org).write().unwrap_or_else(|p| p.into_inner());
        if let Some(facts) = shard.remove(&org) {
            self.entries.fetch_sub(facts.len(), Ordering::Relaxed);
        }
    }

    /// Forgets everything.
    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        for shard in &self.shards {
            let mut shard = shard.write().unwrap_or_else(|p| p.into_inner());
            let dropped: usize = shard.values().map(HashMap::len).sum();
            shard.clear();
            self.entries.fetch_sub(dropped, Ordering::Relaxed);
        }
    }

    /// Stops using the cache (the invalidation feed is down) or starts again from empty.
    pub fn set_trusted(&self, trusted: bool) {
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Access;

    fn facts(role: Role) -> Facts {
        (Some(role), WorkspaceFacts::Present(Some(Access::Read)))
    }

    #[test]
    fn a_fill_after_an_invalidation_is_discarded() {
        let cache = AuthzCache::new(100);
        let (org, user) = (OrganizationId::generate(), UserId::parse("u").unwrap());
        let stale = cache.ticket();
        cache.invalidate(org);
        cache.fill(stale, org, &user, None, facts(Role::Owner));
        assert_eq!(cache.get(org, &user, None), None);
        let fresh = cache.ticket();
        cache.fill(fresh, org, &user, None, facts(Role::Member));
        assert_eq!(cache.get(org, &user, None), Some(facts(Role::Member)));
        cache.invalidate(org);
        assert_eq!(cache.get(org, &user, None), None);
        assert_eq!(cache.stats().entries, 0);
    }

    #[test]
    fn the_entry_limit_holds_and_untrusted_means_bypass() {
        let cache = AuthzCache::new(10);
        let org = OrganizationId::generate();
        for i in 0..100 {
            let user = UserId::parse(&format!("u{i}")).unwrap();
            cache.fill(cache.ticket(), org, &user, None, facts(Role::Member));
            assert!(cache.stats().entries <= 10);
        }
        let user = UserId::parse("u99").unwrap();
        assert!(cache.get(org, &user, None).is_some());
        cache.set_trusted(false);
        assert_eq!(cache.get(org, &user, None), None);
        cache.fill(cache.ticket(), org, &user, None, facts(Role::Member));
        assert_eq!(cache.stats().entries, 0);
        cache.set_trusted(true);
        assert_eq!(cache.get(org, &user, None), None);
        let stats = cache.stats();
        assert!(stats.hits >= 1 && stats.misses >= 1);
    }
}
