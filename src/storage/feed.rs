//! Cross-replica freshness through PostgreSQL. Every change commits with one notification on
//! `roster_invalidate` whose payload is the organization's id, sent in the change's transaction
//! (see [`super::changelog`]), so it is delivered exactly when the change commits; every replica
//! LISTENs. What changed is not in the notification: the replica reads the organization's
//! change log after the revision its index is at, and applies what it finds in revision order
//! (see [`crate::index`]). Its own notifications come back too, and find nothing new.
//!
//! Replicas of the previous release send the change described (`change/1\n…`) and the id after
//! it, and write no change log: a description drops that organization's index here, since there
//! is nothing to catch up from. They, in turn, drop an index on every id, so the two releases can
//! run side by side during an upgrade.
//!
//! Each replica also notifies itself once a second. A connection that breaks, or goes silent for
//! three seconds, makes the replica stop trusting its index (every check then reads the
//! database) until its own heartbeat comes through again on a fresh subscription.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sea_orm::sqlx::postgres::PgListener;
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use tokio::sync::{Mutex, Notify, mpsc, watch};
use tokio::task::JoinHandle;

use super::Store;
use crate::domain::{LogPosition, OrganizationId};
use crate::index::{AuthzIndex, FeedEvent};

/// The notification channel.
pub const CHANNEL: &str = "roster_invalidate";
/// How often a replica pings itself through the feed.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// Silence after which the feed is considered broken.
pub const MAX_SILENCE: Duration = Duration::from_secs(3);
/// Organizations whose notified changes may wait to be read at once; beyond that, the index
/// drops them instead, which keeps what is served stale short.
const WAITING: usize = 256;

/// Sent by [`super::changelog::place`] when it gave changes their positions, followed by the
/// new end of the log. The previous release ignores it.
const PLACED: &str = "placed:";
/// The previous release's described change.
const UNLOGGED_PREFIX: &str = "change/1\n";

enum Event {
    Payload(String),
    Lost,
}

/// Organizations with a notified change not yet read, each once, in the order notified.
#[derive(Default)]
struct Waiting {
    queue: Mutex<(Vec<OrganizationId>, HashSet<OrganizationId>)>,
    ready: Notify,
}

/// Starts listening. A notification that changes were placed wakes whoever waits on
/// `log_head` (Watch streams); one that an organization changed also pokes `unplaced`, this
/// process's placer, which places the change if this process has streams to feed.
pub fn spawn(
    store: Store,
    index: Arc<AuthzIndex>,
    log_head: Arc<watch::Sender<LogPosition>>,
    unplaced: Arc<Notify>,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let (events, received) = mpsc::channel(1024);
    let reader = tokio::spawn(read(store.clone(), events, stop.clone()));
    // Notified organizations are caught up one after another by one task, so that a burst of
    // notifications costs one read per organization, not one per notification.
    let waiting = Arc::new(Waiting::default());
    let applier = {
        let (index, waiting) = (index.clone(), waiting.clone());
        tokio::spawn(async move {
            loop {
                let next = {
                    let mut queue = waiting.queue.lock().await;
                    let next = (!queue.0.is_empty()).then(|| queue.0.remove(0));
                    if let Some(org) = next {
                        queue.1.remove(&org);
                    }
                    next
                };
                match next {
                    Some(org) => index.feed_event(FeedEvent::Changed(org)).await,
                    None => waiting.ready.notified().await,
                }
            }
        })
    };
    tokio::spawn(async move {
        coordinate(store, index, received, waiting, log_head, unplaced, stop).await;
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
                    if events.send(Event::Payload(notification.payload().to_owned())).await.is_err()
                    {
                        return;
                    }
                }
                // The connection dropped; notifications sent meanwhile are lost.
                Ok(None) | Err(_) => {
                    tracing::warn!(
                        "invalidation feed: connection lost; bypassing the index until resynced"
                    );
                    let _ = events.send(Event::Lost).await;
                    break;
                }
            }
        }
    }
}

/// Hands notifications to the index, sends heartbeats, and decides whether the index may be
/// trusted.
async fn coordinate(
    store: Store,
    index: Arc<AuthzIndex>,
    mut received: mpsc::Receiver<Event>,
    waiting: Arc<Waiting>,
    log_head: Arc<watch::Sender<LogPosition>>,
    unplaced: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let replica = uuid::Uuid::new_v4().simple().to_string();
    let own_ping = format!("ping:{replica}");
    let mut last_ping: Option<Instant> = None;
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            event = received.recv() => match event {
                None => return,
                Some(Event::Lost) => {
                    last_ping = None;
                    index.feed_event(FeedEvent::Lost).await;
                }
                Some(Event::Payload(payload)) => {
                    if payload == own_ping {
                        last_ping = Some(Instant::now());
                        if !index.trusted() {
                            index.feed_event(FeedEvent::Subscribed).await;
                            tracing::info!("invalidation feed: subscribed; index in use");
                        }
                    } else if let Some(head) = payload.strip_prefix(PLACED) {
                        // Changes got their positions, up to `head`: Watch streams read them,
                        // and the hub knows where the log ends without reading it.
                        let head = head.parse().map(LogPosition).unwrap_or(LogPosition(0));
                        log_head.send_modify(|known| *known = (*known).max(head));
                    } else if let Ok(org) = OrganizationId::parse(&payload) {
                        unplaced.notify_one();
                        // The organization's log grew: the index catches up.
                        let mut queue = waiting.queue.lock().await;
                        if queue.1.contains(&org) {
                            // Already waiting: one read will find both changes.
                        } else if queue.0.len() < WAITING {
                            queue.1.insert(org);
                            queue.0.push(org);
                            waiting.ready.notify_one();
                        } else {
                            drop(queue);
                            index.forget(org);
                        }
                    } else if let Some(org) = payload
                        .strip_prefix(UNLOGGED_PREFIX)
                        .and_then(|rest| rest.split('\n').next())
                        .and_then(|id| OrganizationId::parse(id).ok())
                    {
                        index.feed_event(FeedEvent::ChangedUnlogged(org)).await;
                    }
                }
            },
            _ = heartbeat.tick() => {
                if index.trusted() && last_ping.is_none_or(|at| at.elapsed() > MAX_SILENCE) {
                    tracing::warn!("invalidation feed: silent; bypassing the index until resynced");
                    index.feed_event(FeedEvent::Lost).await;
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
