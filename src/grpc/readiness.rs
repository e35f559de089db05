//! What the health service reports for each of Roster's services: SERVING only while the server
//! can answer. Checked every second; a change is logged with its reason. The server's own status
//! (the empty service name) stays SERVING while the process runs: it is what liveness probes
//! ask, and restarting a process because its database is down would not bring the database
//! back.
//!
//! The server cannot serve when its database does not answer (every change, and on PostgreSQL
//! every check once the invalidation feed is down, needs it), when it cannot take connections
//! (accepts failing for lack of file descriptors or memory, or every connection slot taken), or
//! when every in-flight slot is taken and calls are being shed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use super::listener::ListenerStats;
use crate::storage::Store;

/// How often readiness is re-evaluated.
const PERIOD: Duration = Duration::from_secs(1);
/// How long the database may take to answer before it counts as down.
const DATABASE_WAIT: Duration = Duration::from_secs(2);

/// What readiness is read from.
pub struct Signals {
    pub store: Store,
    pub listener: Arc<ListenerStats>,
    /// Calls shed at the in-flight limit so far.
    pub shed: Arc<AtomicU64>,
    /// Free in-flight slots now.
    pub free_slots: Box<dyn Fn() -> usize + Send + Sync>,
}

/// Consecutive unanswered pings before the database counts as down: one slow answer (a
/// checkpoint, a failover's first second) must not take every replica out of rotation at once.
const DATABASE_MISSES_BEFORE_DOWN: u32 = 3;

/// Why the server cannot serve, if it cannot. `database_misses` counts unanswered pings in a row.
async fn trouble(
    signals: &Signals,
    shed_before: u64,
    database_misses: &mut u32,
) -> Option<&'static str> {
    let connections = signals.listener.snapshot();
    if connections.accept_failing {
        return Some("accepting connections fails for lack of resources");
    }
    if connections.capacity > 0 && connections.open >= connections.capacity {
        return Some("every connection slot (--max-connections) is taken");
    }
    if signals.shed.load(Ordering::Relaxed) > shed_before && (signals.free_slots)() == 0 {
        return Some("every in-flight slot (--max-in-flight) is taken and calls are shed");
    }
    match tokio::time::timeout(DATABASE_WAIT, signals.store.ping()).await {
        Ok(Ok(())) => *database_misses = 0,
        Ok(Err(_)) | Err(_) => *database_misses += 1,
    }
    (*database_misses >= DATABASE_MISSES_BEFORE_DOWN).then_some("the database does not answer")
}

/// Sets the health of `services`, and `ready` (what the metrics listener's `/readyz` answers),
/// until `stop` turns true; `ready` is false from then on.
pub async fn watch(
    reporter: HealthReporter,
    services: Vec<&'static str>,
    signals: Signals,
    ready: Arc<AtomicBool>,
    mut stop: watch::Receiver<bool>,
) {
    ready.store(true, Ordering::Relaxed);
    let mut serving = true;
    let mut shed_before = signals.shed.load(Ordering::Relaxed);
    let mut database_misses = 0;
    let mut ticks = tokio::time::interval(PERIOD);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.wait_for(|stop| *stop) => {
                ready.store(false, Ordering::Relaxed);
                return;
            }
        }
        let found = trouble(&signals, shed_before, &mut database_misses).await;
        shed_before = signals.shed.load(Ordering::Relaxed);
        let now_serving = found.is_none();
        if now_serving == serving {
            continue;
        }
        serving = now_serving;
        ready.store(serving, Ordering::Relaxed);
        let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
        match found {
            Some(reason) => tracing::warn!(reason, "health: not serving"),
            None => tracing::info!("health: serving again"),
        }
        for service in &services {
            reporter.set_service_status(*service, status).await;
        }
    }
}
