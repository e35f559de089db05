//! Gives positions to committed changes on PostgreSQL (see [`changelog::place`]). Only Watch
//! needs positions, so a process places at once only while it has Watch streams open: then
//! each commit anywhere (its own, or another's notification) wakes it, and streams see a change
//! about one statement after its commit. Once a second besides, every placer places whatever
//! is waiting, which keeps the backlog small and covers a process that died between its commit
//! and its placing; a Watch or Snapshot call that needs a position places first.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::{Store, changelog};
use crate::domain::LogPosition;

/// How often a placer looks for changes nobody placed.
const SWEEP: Duration = Duration::from_secs(1);
/// How long a placer waits after a failure before trying again.
const RETRY: Duration = Duration::from_millis(200);

/// Starts the placer. `wake` is signalled after each commit of this process and each change
/// another process notifies; it places then if `watched` says this process has streams.
/// `log_head` is moved to each new end of the log, which wakes this process's Watch streams
/// (the others learn of it from the notification the placing sends).
pub fn spawn(
    store: Store,
    wake: Arc<Notify>,
    watched: impl Fn() -> bool + Send + 'static,
    log_head: Arc<watch::Sender<LogPosition>>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut failing = false;
        let mut sweep = tokio::time::interval(SWEEP);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                _ = wake.notified() => {
                    if !watched() {
                        continue;
                    }
                    false
                }
                _ = sweep.tick() => false,
                _ = stop.wait_for(|stop| *stop) => true,
            };
            if stopping {
                // The calls still draining place their commits when the server has stopped
                // (see `Running::stop`).
                return;
            }
            // Until nothing is left: one call places at most a batch.
            loop {
                match changelog::place(store.reader()).await {
                    Ok(Some(head)) => {
                        failing = false;
                        log_head.send_if_modified(|known| {
                            let newer = head > *known;
                            if newer {
                                *known = head;
                            }
                            newer
                        });
                    }
                    Ok(None) => {
                        if failing {
                            tracing::info!("change log: placing changes again");
                        }
                        failing = false;
                        break;
                    }
                    Err(err) => {
                        if !failing {
                            tracing::warn!(error = %err, "change log: cannot place changes; retrying");
                        }
                        failing = true;
                        tokio::time::sleep(RETRY).await;
                        break;
                    }
                }
            }
        }
    })
}
