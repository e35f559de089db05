//! Use-cases. Each mutation checks the actor's permission inside its transaction, applies the
//! change, and writes its audit event (and outbox email) in that same transaction.

pub mod access;
pub mod page;
pub mod ratelimit;
pub mod team;
pub mod token;
pub mod watch;

use std::sync::Arc;

use tokio::sync::Notify;

use crate::config::Config;
use crate::domain::{ChangeRequestId, ChangeToken, Email, LogPosition, RequestId, UserId};
use crate::index::AuthzIndex;
use crate::storage::Store;

/// The end user on whose behalf a TeamService call runs.
#[derive(Debug, Clone)]
pub struct Actor {
    pub user_id: UserId,
    /// The user's email, or why the credentials give none that can be used: a call that needs
    /// no email still works for a user whose token carries a malformed one.
    pub email: Result<Email, String>,
    /// Whether that email is proven to be the user's: in jwt mode the token's `email_verified`
    /// claim is true (or absent, if configured to tolerate that); dev mode trusts its headers.
    pub email_verified: bool,
    /// The call's request id, kept in the details of the audit event the call writes.
    pub request_id: Option<RequestId>,
    /// The change's own request id, when the caller named one: the change records it in its
    /// transaction, and a change that finds it recorded is not made again.
    pub retry: Option<RequestKey>,
}

impl RequestKey {
    /// The key of item `index` of a batch named by this key: each item is a change of its own,
    /// recorded with its own derived id, so that a retry of a batch cut off half-way makes only
    /// the items the first call did not.
    pub fn item(&self, index: usize) -> RequestKey {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        hash.update(self.fingerprint);
        hash.update(self.request_id.as_uuid().as_bytes());
        hash.update((index as u64).to_be_bytes());
        let fingerprint: [u8; 32] = hash.finalize().into();
        let mut id = [0u8; 16];
        id.copy_from_slice(&fingerprint[..16]);
        RequestKey {
            user_id: self.user_id.clone(),
            request_id: ChangeRequestId::from_uuid(uuid::Uuid::from_bytes(id)),
            method: self.method,
            fingerprint,
        }
    }
}

/// A TeamService change named by its caller for safe retries (AIP-155).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestKey {
    /// Whose id it is: ids are the caller's own.
    pub user_id: UserId,
    /// The caller's id for the change.
    pub request_id: ChangeRequestId,
    /// The RPC, such as `CreateWorkspace`.
    pub method: &'static str,
    /// SHA-256 of the method and the request's encoding: what tells a retry from another
    /// request under the same id.
    pub fingerprint: [u8; 32],
}

/// Settings the use-cases need.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// Invitations an organization may send at once.
    pub invite_burst: u32,
    /// Invitations per hour and organization after the burst.
    pub invite_rate_per_hour: u32,
    /// Invitations one user may send at once, across organizations.
    pub invite_user_burst: u32,
    /// Invitations per hour and user after the burst.
    pub invite_user_rate_per_hour: u32,
    /// Invitations this process may send at once.
    pub invite_replica_burst: u32,
    /// Invitations per hour of this process after the burst.
    pub invite_replica_rate_per_hour: u32,
    /// Organizations one user may create at once.
    pub org_create_burst: u32,
    /// Organizations per hour and user after the burst.
    pub org_create_rate_per_hour: u32,
    /// Entries the Authorize cache may hold (0 disables it).
    pub authz_cache_entries: usize,
}

impl ServiceSettings {
    /// The settings as configured.
    pub fn from_config(config: &Config) -> Self {
        Self {
            invite_burst: config.invite_burst,
            invite_rate_per_hour: config.invite_rate_per_hour,
            invite_user_burst: config.invite_user_burst,
            invite_user_rate_per_hour: config.invite_user_rate_per_hour,
            invite_replica_burst: config.invite_replica_burst,
            invite_replica_rate_per_hour: config.invite_replica_rate_per_hour,
            org_create_burst: config.org_create_burst,
            org_create_rate_per_hour: config.org_create_rate_per_hour,
            authz_cache_entries: config.authz_cache_entries,
        }
    }
}

/// Shared state of the use-cases.
#[derive(Clone)]
pub struct Services {
    pub(crate) store: Store,
    /// Wakes the outbox worker when an email is queued.
    pub(crate) outbox_signal: Arc<Notify>,
    /// Limits invitation emails and new organizations.
    pub(crate) limits: Arc<ratelimit::Limits>,
    /// What Authorize decides on, in memory.
    pub(crate) index: Arc<AuthzIndex>,
    /// The newest position this process knows the change log has reached: moved by its own
    /// commits and by other replicas' notifications, so that Watch streams wake up.
    pub(crate) log_head: Arc<tokio::sync::watch::Sender<LogPosition>>,
    /// Wakes the placer (PostgreSQL) when a change committed without a position.
    pub(crate) unplaced: Arc<Notify>,
}

/// A use-case's result together with the token of the state it leaves: the change it committed,
/// or, when it changed nothing, the latest change it found.
#[derive(Debug, Clone)]
pub struct Changed<T> {
    pub value: T,
    /// Names the state; `consistency_token` in the reply.
    pub token: ChangeToken,
}

impl Services {
    /// Builds the use-cases over a store.
    pub fn new(store: Store, settings: ServiceSettings, outbox_signal: Arc<Notify>) -> Self {
        use ratelimit::RateLimiter;
        let limits = Arc::new(ratelimit::Limits {
            invitations_per_user: RateLimiter::new(
                settings.invite_user_burst,
                settings.invite_user_rate_per_hour,
            ),
            invitations_per_organization: RateLimiter::new(
                settings.invite_burst,
                settings.invite_rate_per_hour,
            ),
            invitations_per_replica: RateLimiter::new(
                settings.invite_replica_burst,
                settings.invite_replica_rate_per_hour,
            ),
            organizations_per_user: RateLimiter::new(
                settings.org_create_burst,
                settings.org_create_rate_per_hour,
            ),
        });
        // On PostgreSQL other replicas' changes arrive through the feed, which must be up first.
        let wait_for_feed = store.backend() == sea_orm::DbBackend::Postgres;
        let source = Arc::new(store.clone());
        let index = Arc::new(AuthzIndex::new(source, settings.authz_cache_entries, wait_for_feed));
        let (log_head, _) = tokio::sync::watch::channel(LogPosition::default());
        Self {
            store,
            outbox_signal,
            limits,
            index,
            log_head: Arc::new(log_head),
            unplaced: Arc::new(Notify::new()),
        }
    }

    /// What wakes the placer of the change log (see [`crate::storage::placer`]).
    pub fn unplaced(&self) -> Arc<Notify> {
        self.unplaced.clone()
    }

    /// The newest log position this process knows of (see [`Services::log_head`]).
    pub fn log_head(&self) -> Arc<tokio::sync::watch::Sender<LogPosition>> {
        self.log_head.clone()
    }

    /// The Authorize index, for the notification feed and for reporting.
    pub fn index(&self) -> Arc<AuthzIndex> {
        self.index.clone()
    }
}
