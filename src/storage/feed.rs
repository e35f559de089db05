//! Cross-replica freshness through PostgreSQL: every committed change to an organization
//! sends notifications on `roster_invalidate` inside its transaction, so they are delivered
//! exactly when the change commits, and each replica LISTENs:
//!
//! - first the change described (see [`changes::describe`]): another replica applies it to its
//!   index as the replica that made it did (re-reading the affected members' rows), so its
//!   checks keep answering from memory instead of waiting for a reload;
//! - then the organization's id alone, which drops that organization's index. A replica that
//!   has just applied the description skips this one; older replicas, which ignore
//!   descriptions, act on it, so replicas of both versions can run side by side.
//!
//! A transaction's notifications reach listeners together and in order (PostgreSQL serializes
//! committing notifiers), so the id always follows its description directly. Were it ever
//! otherwise, the id would only drop an index in vain.
//!
//! A replica's own changes come back to it too; those are already in its index (patched before
//! the change returned), so it knows them by the sending session's process id and keeps its
//! index.
//!
//! Each replica also notifies itself once a second. A connection that breaks, or goes silent for
//! three seconds, makes the replica stop trusting its cache (every check then reads the
//! database) until its own heartbeat comes through again on a fresh subscription.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sea_orm::sqlx::postgres::PgListener;
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::Store;
use super::changes::{self, Change, Described};
use super::snapshot::AuthzCache;
use crate::domain::{LogPosition, OrganizationId};
use crate::error::Error;

/// The notification channel.
pub const CHANNEL: &str = "roster_invalidate";
/// How often a replica pings itself through the feed.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// Silence after which the feed is considered broken.
pub const MAX_SILENCE: Duration = Duration::from_secs(3);
/// Other replicas' described changes that may wait to be applied.
const APPLY_QUEUE: usize = 32;

/// Announces a change to `org`; call inside the change's transaction. Returns the process id
/// of the database session that sent it, by which this replica knows the notifications when
/// they come back. No-op on SQLite, where a single process owns the database.
pub async fn notify(
    db: &impl ConnectionTrait,
    org: OrganizationId,
    change: Change<'_>,
) -> Result<Option<u32>, Error> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Ok(None);
    }
    let statement = match changes::describe(org, change) {
        // The description first: the id that follows tells replicas that applied it nothing.
        Some(description) => Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_notify($1, $2)::text AS described, pg_notify($1, $3)::text AS sent, \
             pg_backend_pid() AS pid",
            [CHANNEL.into(), description.into(), org.to_string().into()],
        ),
        None => Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_notify($1, $2)::text AS sent, pg_backend_pid() AS pid",
            [CHANNEL.into(), org.to_string().into()],
        ),
    };
    let row = db.query_one_raw(statement).await?;
    let pid = match row {
        Some(row) => row.try_get::<i32>("", "pid")?,
        None => return Ok(None),
    };
    Ok(u32::try_from(pid).ok())
}

enum Event {
    /// A notification and the process id of the session that sent it.
    Payload(u32, String),
    Lost,
}

/// Starts listening; the cache is bypassed until the first heartbeat arrives. Every change
/// notification also wakes whoever waits on `log_head` (Watch streams), since the change log
/// has grown.
pub fn spawn(
    store: Store,
    cache: Arc<AuthzCache>,
    log_head: Arc<watch::Sender<LogPosition>>,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    cache.set_trusted(false);
    let (events, received) = mpsc::channel(1024);
    let reader = tokio::spawn(read(store.clone(), events, stop.clone()));
    // Described changes are applied one after another, in the order they committed: a grant on
    // a new workspace needs the workspace in the index first. Few may wait, since each waiting
    // one is served stale until its turn; beyond that, organizations are dropped instead.
    let (to_apply, mut applying) = mpsc::channel::<(OrganizationId, Described)>(APPLY_QUEUE);
    let applier = {
        let (store, cache) = (store.clone(), cache.clone());
        tokio::spawn(async move {
            while let Some((org, change)) = applying.recv().await {
                change.apply(&store, &cache, org).await;
            }
        })
    };
    tokio::spawn(async move {
        coordinate(store, cache, received, to_apply, log_head, stop).await;
        reader.abort();
        applier.abort();
    })
}

/// Holds the LISTEN connection and forwards what arrives.
async fn read(store: Store, events: mpsc::Sender<Event>, mut stop: watch::Receiver<bool>) {
    let pool = store.reader().get_postgres_connection_pool().clone();
    let mut backoff = Duration::from_millis(100);
    loop {
        if *stop.borrow() {
            return;
        }
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(err) => {
                tracing::warn!(error = %err, "invalidation feed: cannot connect; retrying");
                let _ = events.send(Event::Lost).await;
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if let Err(err) = listener.listen(CHANNEL).await {
            tracing::warn!(error = %err, "invalidation feed: LISTEN failed; retrying");
            let _ = events.send(Event::Lost).await;
            tokio::time::sleep(backoff).await;
            continue;
        }
        backoff = Duration::from_millis(100);
        loop {
            let next = tokio::select! {
                next = listener.try_recv() => next,
                _ = stop.changed() => return,
            };
            match next {
                Ok(Some(notification)) => {
                    let event = Event::Payload(
                        notification.process_id(),
                        notification.payload().to_owned(),
                    );
                    if events.send(event).await.is_err() {
                        return;
                    }
                }
                // The connection dropped; notifications sent meanwhile are lost.
                Ok(None) | Err(_) => {
                    tracing::warn!(
                        "invalidation feed: connection lost; bypassing the cache until resynced"
                    );
                    let _ = events.send(Event::Lost).await;
                    break;
                }
            }
        }
    }
}

/// Applies invalidations, sends heartbeats, and decides whether the cache may be trusted.
async fn coordinate(
    store: Store,
    cache: Arc<AuthzCache>,
    mut received: mpsc::Receiver<Event>,
    to_apply: mpsc::Sender<(OrganizationId, Described)>,
    log_head: Arc<watch::Sender<LogPosition>>,
    mut stop: watch::Receiver<bool>,
) {
    let replica = uuid::Uuid::new_v4().simple().to_string();
    let own_ping = format!("ping:{replica}");
    let mut last_ping: Option<Instant> = None;
    // The sender and organization of the description just applied: the id that follows it
    // (the next notification) is skipped.
    let mut described: Option<(u32, OrganizationId)> = None;
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            event = received.recv() => match event {
                None => return,
                Some(Event::Lost) => {
                    last_ping = None;
                    described = None;
                    cache.set_trusted(false);
                }
                Some(Event::Payload(sender, payload)) => {
                    if !payload.starts_with("ping:") {
                        // The position is not in the payload: waiters read the log to learn it.
                        log_head.send_modify(|_| {});
                    }
                    let follows = described.take();
                    if let Some((org, change)) = Described::parse(&payload) {
                        described = Some((sender, org));
                        // This replica's own changes are in its index already. Others are
                        // applied off this loop (a patch reads the database); if too many are
                        // waiting, the organization is dropped instead.
                        if !cache.take_echo(sender, org)
                            && to_apply.try_send((org, change)).is_err()
                        {
                            cache.invalidate(org);
                        }
                    } else if payload == own_ping {
                        last_ping = Some(Instant::now());
                        if !cache.is_trusted() {
                            cache.set_trusted(true);
                            tracing::info!("invalidation feed: subscribed; cache in use");
                        }
                    } else if let Ok(org) = OrganizationId::parse(&payload) {
                        // Applied from its description just now, or this replica's own change
                        // (creating or deleting an organization sends the id alone); anything
                        // else drops the index.
                        if follows != Some((sender, org)) && !cache.take_echo(sender, org) {
                            cache.invalidate(org);
                        }
                    }
                }
            },
            _ = heartbeat.tick() => {
                if cache.is_trusted() && last_ping.is_none_or(|at| at.elapsed() > MAX_SILENCE) {
                    tracing::warn!("invalidation feed: silent; bypassing the cache until resynced");
                    cache.set_trusted(false);
                }
                let ping = Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "SELECT pg_notify($1, $2)",
                    [CHANNEL.into(), own_ping.clone().into()],
                );
                if let Err(err) = store.reader().execute_raw(ping).await {
                    tracing::debug!(error = %err, "invalidation feed: heartbeat not sent");
                }
            }
        }
    }
}
