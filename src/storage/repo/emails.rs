//! The outbox of invitation emails, drained by the worker.

use super::*;

/// States of a row whose email may still be sent.
pub(super) const WAITING: [DeliveryState; 2] = [DeliveryState::Queued, DeliveryState::Retrying];

pub(super) fn waiting() -> [&'static str; 2] {
    WAITING.map(DeliveryState::as_str)
}

/// Queues the email for the invitation's current send in its transaction, dropping any older
/// unsent email of the same invitation (superseded by this one).
pub async fn insert_outbox(
    db: &impl ConnectionTrait,
    invitation: &Invitation,
    now: Timestamp,
) -> Result<(), Error> {
    outbox::Entity::delete_many()
        .filter(outbox::Column::InvitationId.eq(invitation.id.as_uuid()))
        .filter(outbox::Column::State.is_in(waiting()))
        .exec(db)
        .await?;
    outbox::Entity::insert(outbox::ActiveModel {
        id: Set(uuid::Uuid::now_v7()),
        invitation_id: Set(invitation.id),
        send_number: Set(invitation.send_count),
        recipient: Set(invitation.email.clone()),
        subject: Set(String::new()),
        body_text: Set(None),
        body_html: Set(None),
        state: Set(DeliveryState::Queued),
        attempts: Set(0),
        next_attempt_time: Set(now.as_micros()),
        last_error: Set(None),
        create_time: Set(now.as_micros()),
    })
    .exec_without_returning(db)
    .await?;
    Ok(())
}

/// Emails due for an attempt, oldest first.
pub async fn list_due_outbox(
    db: &impl ConnectionTrait,
    now: Timestamp,
    limit: u64,
) -> Result<Vec<OutboxEmail>, Error> {
    let rows = outbox::Entity::find()
        .filter(outbox::Column::State.is_in(waiting()))
        .filter(outbox::Column::NextAttemptTime.lte(now.as_micros()))
        .order_by_asc(outbox::Column::NextAttemptTime)
        .limit(limit)
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|m| OutboxEmail {
            id: m.id,
            invitation_id: m.invitation_id,
            send_number: m.send_number,
            attempts: m.attempts,
            next_attempt_time: m.next_attempt_time,
        })
        .collect())
}

/// Finds the invitation an outbox row belongs to, whatever its organization: the worker learns
/// from it which organization to lock.
pub async fn find_invitation_of_outbox(
    db: &impl ConnectionTrait,
    email: &OutboxEmail,
) -> Result<Option<Invitation>, Error> {
    let Some(m) = invitation::Entity::find_by_id(email.invitation_id).one(db).await? else {
        return Ok(None);
    };
    let grants = grants_of(db, m.id).await?;
    Ok(Some(to_invitation(m, grants)))
}

/// Claims a due email for `lease` so that one worker among several replicas sends it. Returns
/// false when another worker claimed it first, or it no longer waits.
pub async fn claim_outbox(
    db: &impl ConnectionTrait,
    email: &OutboxEmail,
    lease_until: Timestamp,
) -> Result<bool, Error> {
    let result = outbox::Entity::update_many()
        .col_expr(outbox::Column::NextAttemptTime, Expr::value(lease_until.as_micros()))
        // A process of the previous release, beside this one during a rollout, still writes
        // bodies with a token in them; the email sent now carries another.
        .col_expr(outbox::Column::BodyText, Expr::value(Option::<String>::None))
        .col_expr(outbox::Column::BodyHtml, Expr::value(Option::<String>::None))
        .filter(outbox::Column::Id.eq(email.id))
        .filter(outbox::Column::NextAttemptTime.eq(email.next_attempt_time))
        .filter(outbox::Column::State.is_in(waiting()))
        .exec(db)
        .await?;
    Ok(result.rows_affected == 1)
}

/// Stores the hash of the token about to be mailed for send `send_number`, replacing any
/// earlier one, provided that send is still the invitation's latest and the invitation pending.
/// Returns false otherwise.
pub async fn update_invitation_token(
    db: &impl ConnectionTrait,
    org: OrganizationId,
    email: &OutboxEmail,
    token_hash: &str,
) -> Result<bool, Error> {
    let result = invitation::Entity::update_many()
        .col_expr(invitation::Column::TokenHash, Expr::value(token_hash))
        .filter(invitation::Column::Id.eq(email.invitation_id.as_uuid()))
        .filter(invitation::Column::OrganizationId.eq(org.as_uuid()))
        .filter(invitation::Column::SendCount.eq(email.send_number))
        .filter(invitation::Column::State.eq(InvitationState::Pending.as_str()))
        .exec(db)
        .await?;
    Ok(result.rows_affected == 1)
}

/// Forgets a queued email: its invitation is gone, or a later send replaced it.
pub async fn delete_outbox(db: &impl ConnectionTrait, email: &OutboxEmail) -> Result<(), Error> {
    outbox::Entity::delete_by_id(email.id).exec(db).await?;
    Ok(())
}

/// Marks every waiting email of an invitation as never to be sent, saying why, and shows that
/// on the invitation if its latest email was among them. Called in the transaction that revokes
/// or accepts it, and by the worker when it finds an invitation that can no longer be accepted.
pub async fn cancel_outbox_of(
    db: &impl ConnectionTrait,
    org: OrganizationId,
    id: InvitationId,
    reason: &str,
) -> Result<(), Error> {
    let canceled = outbox::Entity::update_many()
        .col_expr(outbox::Column::State, Expr::value(DeliveryState::Canceled.as_str()))
        .col_expr(outbox::Column::LastError, Expr::value(reason))
        .filter(outbox::Column::InvitationId.eq(id.as_uuid()))
        .filter(outbox::Column::State.is_in(waiting()))
        .exec(db)
        .await?;
    if canceled.rows_affected > 0 {
        invitation::Entity::update_many()
            .col_expr(
                invitation::Column::DeliveryState,
                Expr::value(DeliveryState::Canceled.as_str()),
            )
            .col_expr(invitation::Column::LastDeliveryError, Expr::value(reason))
            .filter(invitation::Column::Id.eq(id.as_uuid()))
            .filter(invitation::Column::OrganizationId.eq(org.as_uuid()))
            .filter(invitation::Column::DeliveryState.is_in(waiting()))
            .exec(db)
            .await?;
    }
    Ok(())
}

/// Records the outcome of an attempt on the email and, if it is the invitation's latest email,
/// on the invitation. A failure is recorded only on an email still waiting: one cancelled
/// while it was being sent stays cancelled.
pub async fn record_delivery(
    db: &impl ConnectionTrait,
    email: &OutboxEmail,
    state: DeliveryState,
    error: Option<&str>,
    next_attempt: Timestamp,
) -> Result<(), Error> {
    let sent = state == DeliveryState::Sent;
    let mut on_invitation = invitation::Entity::update_many()
        .col_expr(invitation::Column::DeliveryState, Expr::value(state.as_str()))
        .col_expr(invitation::Column::LastDeliveryError, Expr::value(error.map(str::to_owned)))
        .filter(invitation::Column::Id.eq(email.invitation_id.as_uuid()))
        .filter(invitation::Column::SendCount.eq(email.send_number));
    let mut on_outbox = outbox::Entity::update_many()
        .col_expr(outbox::Column::State, Expr::value(state.as_str()))
        .col_expr(outbox::Column::Attempts, Expr::value(email.attempts + 1))
        .col_expr(outbox::Column::NextAttemptTime, Expr::value(next_attempt.as_micros()))
        .col_expr(outbox::Column::LastError, Expr::value(error.map(str::to_owned)))
        .filter(outbox::Column::Id.eq(email.id));
    if !sent {
        on_invitation = on_invitation.filter(invitation::Column::DeliveryState.is_in(waiting()));
        on_outbox = on_outbox.filter(outbox::Column::State.is_in(waiting()));
    }
    on_invitation.exec(db).await?;
    on_outbox.exec(db).await?;
    Ok(())
}

/// How many emails wait in each unfinished state (queued, retrying) or have failed for good.
pub async fn count_outbox_by_state(
    db: &impl ConnectionTrait,
) -> Result<Vec<(DeliveryState, i64)>, Error> {
    let states = [DeliveryState::Queued, DeliveryState::Retrying, DeliveryState::Failed];
    let rows: Vec<(String, i64)> = outbox::Entity::find()
        .select_only()
        .column(outbox::Column::State)
        .column_as(outbox::Column::Id.count(), "count")
        .filter(outbox::Column::State.is_in(states.map(DeliveryState::as_str)))
        .group_by(outbox::Column::State)
        .into_tuple()
        .all(db)
        .await?;
    Ok(states
        .into_iter()
        .map(|state| {
            let count = rows.iter().find(|(s, _)| s == state.as_str()).map_or(0, |(_, n)| *n);
            (state, count)
        })
        .collect())
}
