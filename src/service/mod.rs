//! Use-cases. Each mutation checks the actor's permission inside its transaction, applies the
//! change, and writes its audit event (and outbox email) in that same transaction.

pub mod access;
pub mod page;
pub mod ratelimit;
pub mod team;
pub mod token;

use std::sync::Arc;

use tokio::sync::Notify;

use crate::domain::{Email, UserId};
use crate::storage::Store;
use crate::storage::snapshot::AuthzCache;

/// The end user on whose behalf a TeamService call runs.
#[derive(Debug, Clone)]
pub struct Actor {
    /// The user's id.
    pub user_id: UserId,
    /// The user's email, when the credentials carry one.
    pub email: Option<Email>,
    /// Whether the identity provider verified that email, when it says.
    pub email_verified: Option<bool>,
}

/// Settings the use-cases need.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// Accept-link template with a `{token}` placeholder.
    pub invite_url: String,
    /// Invitations an organization may send at once.
    pub invite_burst: u32,
    /// Invitations per hour and organization after the burst.
    pub invite_rate_per_hour: u32,
    /// Entries the Authorize cache may hold (0 disables it).
    pub authz_cache_entries: usize,
}

/// Shared state of the use-cases.
#[derive(Clone)]
pub struct Services {
    pub(crate) store: Store,
    pub(crate) settings: Arc<ServiceSettings>,
    /// Wakes the outbox worker when an email is queued.
    pub(crate) outbox_signal: Arc<Notify>,
    /// Limits invitation emails per organization.
    pub(crate) invite_limiter: Arc<ratelimit::RateLimiter>,
    /// What Authorize has read recently.
    pub(crate) authz_cache: Arc<AuthzCache>,
}

impl Services {
    /// Builds the use-cases over a store.
    pub fn new(store: Store, settings: ServiceSettings, outbox_signal: Arc<Notify>) -> Self {
        let invite_limiter = Arc::new(ratelimit::RateLimiter::new(
            settings.invite_burst,
            settings.invite_rate_per_hour,
        ));
        let authz_cache = Arc::new(AuthzCache::new(settings.authz_cache_entries));
        Self { store, settings: Arc::new(settings), outbox_signal, invite_limiter, authz_cache }
    }

    /// The Authorize cache, for the invalidation feed and for reporting.
    pub fn authz_cache(&self) -> Arc<AuthzCache> {
        self.authz_cache.clone()
    }
}
