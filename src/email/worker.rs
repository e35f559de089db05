//! Drains the outbox: sends each queued email, retries failures with exponential backoff, and
//! records the outcome on the invitation. Several replicas may run it at once; a claim with a
//! lease makes one of them send each email.
//!
//! No token exists at rest. An outbox row names only which send of which invitation is due; the
//! worker, in the transaction that claims the row, reads the invitation again and, only if it is
//! still pending, this row is its latest send and its inviter may still invite to its role,
//! mints a fresh token and stores its hash on the invitation. The email is rendered and sent
//! from memory. Delivery is at least once: a process killed between sending and recording sends
//! again after the lease, with another token, and only the latest token works.

use std::sync::Arc;
use std::time::Duration;

use lettre::message::Mailbox;
use tokio::sync::{Notify, watch};

use super::mailer::Mailer;
use super::render;
use crate::domain::invitation::{self as lifecycle, Delivery};
use crate::domain::{DeliveryState, Invitation, Timestamp};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::service::token::Token;
use crate::storage::repo::{self, OutboxEmail};
use crate::storage::{Store, WriteTx};

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
    /// Accept-link template with a `{token}` placeholder.
    pub invite_url: String,
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

/// An email claimed for sending, with everything needed to render it. The token lives only
/// here and in the email.
struct Claimed {
    invitation: Invitation,
    organization: String,
    inviter: String,
    token: Token,
}

/// What became of a due row.
enum Claim {
    /// Another worker has it, or it no longer waits.
    Taken,
    /// Nothing to send: the row is gone or cancelled.
    Settled,
    /// This worker sends it.
    Send(Box<Claimed>),
}

/// Handles every due email once; returns how many rows it settled or attempted.
async fn drain(store: &Store, mailer: &Mailer, settings: &WorkerSettings) -> Result<usize, Error> {
    let now = Timestamp::now();
    let due = repo::list_due_outbox(store.reader(), now, 20).await?;
    let mut handled = 0;
    for email in due {
        // Long enough for one SMTP conversation; after it, another worker may retry. Counted
        // from this claim, not from the start of the batch, which earlier sends have used up.
        let lease = Timestamp::now().plus(settings.claim_lease);
        let claimed = match claim(store, &email, lease).await? {
            Claim::Taken => continue,
            Claim::Settled => {
                handled += 1;
                continue;
            }
            Claim::Send(claimed) => claimed,
        };
        handled += 1;
        let url = render::accept_url(&settings.invite_url, claimed.token.expose());
        let rendered = render::invitation(&render::InvitationEmail {
            organization: &claimed.organization,
            inviter: &claimed.inviter,
            role: claimed.invitation.role,
            expire_time: claimed.invitation.expire_time,
            accept_url: &url,
            token: claimed.token.expose(),
        });
        let outcome = mailer
            .send(
                &settings.from,
                claimed.invitation.email.as_str(),
                &rendered.subject,
                rendered.text,
                rendered.html,
            )
            .await;
        drop(claimed.token);
        let tx = locked(store, &claimed.invitation).await?;
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
    Ok(handled)
}

/// A write transaction holding the lock of the invitation's organization, so that the worker's
/// writes serialize with resends, revocations and acceptances of it.
async fn locked(store: &Store, invitation: &Invitation) -> Result<WriteTx, Error> {
    let tx = store.begin_write().await?;
    repo::lock_organization(&*tx, invitation.organization_id).await?;
    Ok(tx)
}

/// Claims a due row and decides, on the invitation as of the claim, whether it is sent: if so,
/// the fresh token's hash replaces the invitation's in the same transaction.
async fn claim(store: &Store, email: &OutboxEmail, lease: Timestamp) -> Result<Claim, Error> {
    let Some(found) = repo::find_invitation_of_outbox(store.reader(), email).await? else {
        // Its invitation went with its organization.
        let tx = store.begin_write().await?;
        repo::delete_outbox(&*tx, email).await?;
        tx.commit().await?;
        return Ok(Claim::Settled);
    };
    let tx = locked(store, &found).await?;
    if !repo::claim_outbox(&*tx, email, lease).await? {
        return Ok(Claim::Taken);
    }
    let org = found.organization_id;
    // Read again under the lock: a resend, revocation or acceptance may have come first.
    let Some(invitation) = repo::find_invitation(&*tx, org, found.id).await? else {
        repo::delete_outbox(&*tx, email).await?;
        tx.commit().await?;
        return Ok(Claim::Settled);
    };
    let inviter = repo::find_member(&*tx, org, &invitation.inviter_user_id).await?;
    let now = Timestamp::now();
    match lifecycle::delivery(
        invitation.state_at(now),
        invitation.send_count,
        email.send_number,
        inviter.as_ref().map(|m| m.role),
        invitation.role,
    ) {
        Delivery::Supersede => {
            repo::delete_outbox(&*tx, email).await?;
            tx.commit().await?;
            Ok(Claim::Settled)
        }
        Delivery::Cancel(why) => {
            repo::cancel_outbox_of(&*tx, org, invitation.id, why).await?;
            tx.commit().await?;
            tracing::info!(invitation = %invitation.id, reason = why, "invitation email canceled");
            Ok(Claim::Settled)
        }
        Delivery::Send => {
            let (Some(inviter), Some(organization)) =
                (inviter, repo::find_organization(&*tx, org).await?)
            else {
                return Err(Error::internal(anyhow::anyhow!(
                    "invitation {} lost its inviter or organization under the lock",
                    invitation.id
                )));
            };
            let token = Token::generate().map_err(Error::internal)?;
            if !repo::update_invitation_token(&*tx, org, email, &token.hash()).await? {
                return Err(Error::internal(anyhow::anyhow!(
                    "invitation {} changed under the lock",
                    invitation.id
                )));
            }
            tx.commit().await?;
            Ok(Claim::Send(Box::new(Claimed {
                organization: organization.display_name.as_str().to_owned(),
                inviter: inviter.email.as_str().to_owned(),
                invitation,
                token,
            })))
        }
    }
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
            invite_url: "https://app.example/accept?token={token}".to_owned(),
        };
        assert_eq!(backoff(&settings, 1), Duration::from_secs(2));
        assert_eq!(backoff(&settings, 2), Duration::from_secs(4));
        assert_eq!(backoff(&settings, 5), Duration::from_secs(32));
        assert_eq!(backoff(&settings, 6), Duration::from_secs(60));
        assert_eq!(backoff(&settings, 100), Duration::from_secs(60));
    }
}
