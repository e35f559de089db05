//! Gives positions to committed changes on PostgreSQL (see [`changelog::place`]). Every
//! process runs one placer: woken by its own commits, it places them (and whatever other
//! processes committed meanwhile) at once, so that Watch streams see a change about one commit
//! after it; once a second besides, it places what a process that died between its commit and
//! its placing left behind.

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

/// Starts the placer. `wake` is signalled after each commit of this process; `log_head` is
/// moved to each new end of the log, which wakes this process's Watch streams (the others
/// learn of it from the notification the placing sends).
pub fn spawn(
    store: Store,
    wake: Arc<Notify>,
    log_head: Arc<watch::Sender<LogPosition>>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            let stopping = tokio::select! {
                _ = wake.notified() => false,
                _ = tokio::time::sleep(SWEEP) => false,
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
