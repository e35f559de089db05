//! Drains the outbox: sends each queued email, retries failures with exponential backoff, and
//! records the outcome on the invitation. Several replicas may run it at once; a claim with a
//! lease makes one of them send each email. Delivery is at least once: a process killed between
//! sending and recording sends that email again after the lease.

use std::sync::Arc;
use std::time::Duration;

use lettre::message::Mailbox;
use tokio::sync::{Notify, watch};

use super::mailer::Mailer;
use crate::domain::{DeliveryState, Timestamp};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::storage::Store;
use crate::storage::repo::{self, OutboxEmail};

/// How the worker paces itself.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Sender of every email.
    pub from: Mailbox,
    /// Delay before the first retry; doubles on each failure.
    pub retry_base: Duration,
    /// Longest delay between retries.
    pub retry_max: Duration,
    /// Attempts before an email is marked failed.
    pub max_attempts: i32,
    /// How often the outbox is polled when nothing signals new mail.
    pub poll_interval: Duration,
    /// How long a claimed email is reserved for its worker before another may retry it.
    pub claim_lease: Duration,
    /// Where failed attempts are counted.
    pub metrics: Arc<Metrics>,
}

/// The delay before the attempt after `attempts` failed ones.
pub fn backoff(settings: &WorkerSettings, attempts: i32) -> Duration {
    let exponent = attempts.clamp(1, 20) as u32 - 1;
    settings.retry_base.saturating_mul(2u32.saturating_pow(exponent)).min(settings.retry_max)
}

/// Runs until `shutdown` turns true.
pub async fn run(
    store: Store,
    mailer: Mailer,
    settings: WorkerSettings,
    signal: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        match drain(&store, &mailer, &settings).await {
            Ok(sent) if sent > 0 => continue,
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "outbox: cannot read the queue; will retry"),
        }
        tokio::select! {
            _ = signal.notified() => {}
            _ = tokio::time::sleep(settings.poll_interval) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

/// Sends every due email once; returns how many were attempted.
async fn drain(store: &Store, mailer: &Mailer, settings: &WorkerSettings) -> Result<usize, Error> {
    let now = Timestamp::now();
    let due = repo::list_due_outbox(store.reader(), now, 20).await?;
    let mut attempted = 0;
    for email in due {
        // Long enough for one SMTP conversation; after it, another worker may retry.
        let lease = now.plus(settings.claim_lease);
        if !claim(store, &email, lease).await? {
            continue;
        }
        attempted += 1;
        let outcome = mailer
            .send(
                &settings.from,
                &email.recipient,
                &email.subject,
                email.body_text.clone(),
                email.body_html.clone(),
            )
            .await;
        let tx = store.begin_write().await?;
        match outcome {
            Ok(()) => {
                repo::record_delivery(&*tx, &email, DeliveryState::Sent, None, Timestamp::now())
                    .await?;
                tracing::info!(invitation = %email.invitation_id, send = email.send_number, "invitation email sent");
            }
            Err(err) => {
                settings.metrics.record_delivery_failure();
                let attempts = email.attempts + 1;
                let message = format!("{err:#}");
                let (state, next) = if attempts >= settings.max_attempts {
                    (DeliveryState::Failed, Timestamp::now())
                } else {
                    (DeliveryState::Retrying, Timestamp::now().plus(backoff(settings, attempts)))
                };
                repo::record_delivery(&*tx, &email, state, Some(&message), next).await?;
                tracing::warn!(invitation = %email.invitation_id, attempts, error = %message, "invitation email not sent");
            }
        }
        tx.commit().await?;
    }
    Ok(attempted)
}

async fn claim(store: &Store, email: &OutboxEmail, lease: Timestamp) -> Result<bool, Error> {
    let tx = store.begin_write().await?;
    let claimed = repo::claim_outbox(&*tx, email, lease).await?;
    tx.commit().await?;
    Ok(claimed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let settings = WorkerSettings {
            from: "Roster <roster@localhost>".parse().unwrap(),
            retry_base: Duration::from_secs(2),
            retry_max: Duration::from_secs(60),
            max_attempts: 10,
            poll_interval: Duration::from_secs(1),
            claim_lease: Duration::from_secs(60),
            metrics: Arc::default(),
        };
        assert_eq!(backoff(&settings, 1), Duration::from_secs(2));
        assert_eq!(backoff(&settings, 2), Duration::from_secs(4));
        assert_eq!(backoff(&settings, 5), Duration::from_secs(32));
        assert_eq!(backoff(&settings, 6), Duration::from_secs(60));
        assert_eq!(backoff(&settings, 100), Duration::from_secs(60));
    }
}
