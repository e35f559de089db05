//! Invitations and their grants.

use std::collections::HashMap;

use super::*;

pub(super) fn to_invitation(
    m: invitation::Model,
    grants: Vec<invitation_grant::Model>,
) -> Invitation {
    Invitation {
        id: m.id,
        organization_id: m.organization_id,
        role: m.role,
        stored_state: m.state,
        workspace_grants: grants
            .into_iter()
            .map(|g| InvitedGrant {
                workspace_id: g.workspace_id,
                access: g.access,
                expire_time: g.expire_time.map(Timestamp::from_micros),
                reason: g.reason.map(GrantReason::from_stored),
            })
            .collect(),
        delivery_state: m.delivery_state,
        email: m.email,
        inviter_user_id: m.inviter_user_id,
        create_time: Timestamp::from_micros(m.create_time),
        expire_time: Timestamp::from_micros(m.expire_time),
        send_count: m.send_count,
        last_delivery_error: m.last_delivery_error,
    }
}

/// What `token_hash` holds while an invitation has no token: the worker mints one when it sends
/// the email. Unique per invitation (the column is), and never the hash of anything, since a
/// hash is 64 hexadecimal digits. (Migration 2 writes the same prefix.)
pub(super) fn no_token(id: InvitationId) -> String {
    format!("none:{id}")
}

/// Inserts an invitation with its grants, and no token yet. A second pending invitation for the
/// same email is refused by a unique index, so concurrent invitations of one email make one.
pub async fn insert_invitation(
    db: &impl ConnectionTrait,
    pass: &Pass<cap::MembersInvite>,
    inv: &Invitation,
) -> Result<(), Error> {
    debug_assert_eq!(inv.organization_id, pass.organization_id());
    let result = invitation::Entity::insert(invitation::ActiveModel {
        id: Set(inv.id),
        organization_id: Set(pass.organization_id()),
        email: Set(inv.email.clone()),
        role: Set(inv.role),
        state: Set(inv.stored_state),
        token_hash: Set(no_token(inv.id)),
        inviter_user_id: Set(inv.inviter_user_id.clone()),
        create_time: Set(inv.create_time.as_micros()),
        expire_time: Set(inv.expire_time.as_micros()),
        send_count: Set(inv.send_count),
        delivery_state: Set(inv.delivery_state),
        last_delivery_error: Set(None),
        update_time: Set(inv.create_time.as_micros()),
    })
    .exec_without_returning(db)
    .await;
    match result {
        Ok(_) => {}
        Err(err) if violates(&err, Unique::OnePendingInvitation) => {
            return Err(pending_exists());
        }
        Err(err) => return Err(err.into()),
    }
    for grant in &inv.workspace_grants {
        invitation_grant::Entity::insert(invitation_grant::ActiveModel {
            invitation_id: Set(inv.id),
            organization_id: Set(pass.organization_id()),
            workspace_id: Set(grant.workspace_id),
            access: Set(grant.access),
            expire_time: Set(grant.expire_time.map(Timestamp::as_micros)),
            reason: Set(grant.reason.as_ref().map(|r| r.as_str().to_owned())),
        })
        .exec_without_returning(db)
        .await?;
    }
    Ok(())
}

/// The ALREADY_EXISTS answer for a second pending invitation.
pub fn pending_exists() -> Error {
    Error::refused(
        ErrorReason::InvitationPending,
        "a pending invitation for this email already exists; resend it instead",
    )
}

pub(super) async fn grants_of(
    db: &impl ConnectionTrait,
    id: InvitationId,
) -> Result<Vec<invitation_grant::Model>, Error> {
    Ok(invitation_grant::Entity::find()
        .filter(invitation_grant::Column::InvitationId.eq(id))
        .order_by_asc(invitation_grant::Column::WorkspaceId)
        .all(db)
        .await?)
}

/// Finds an invitation of an organization.
pub async fn find_invitation(
    db: &impl ConnectionTrait,
    org: OrganizationId,
    id: InvitationId,
) -> Result<Option<Invitation>, Error> {
    let Some(m) = invitation::Entity::find_by_id(id)
        .filter(invitation::Column::OrganizationId.eq(org.as_uuid()))
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    let grants = grants_of(db, m.id).await?;
    Ok(Some(to_invitation(m, grants)))
}

/// Finds an invitation by the hash of its current token, and the stored hash for the caller's
/// constant-time comparison.
pub async fn find_invitation_by_token_hash(
    db: &impl ConnectionTrait,
    token_hash: &str,
) -> Result<Option<(Invitation, String)>, Error> {
    let Some(m) = invitation::Entity::find()
        .filter(invitation::Column::TokenHash.eq(token_hash))
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    let stored_hash = m.token_hash.clone();
    let grants = grants_of(db, m.id).await?;
    Ok(Some((to_invitation(m, grants), stored_hash)))
}

/// Finds the stored-pending invitation for an email, expired or not.
pub async fn find_pending_invitation_for(
    db: &impl ConnectionTrait,
    org: OrganizationId,
    email: &Email,
) -> Result<Option<Invitation>, Error> {
    let Some(m) = invitation::Entity::find()
        .filter(invitation::Column::OrganizationId.eq(org.as_uuid()))
        .filter(invitation::Column::Email.eq(email.as_str()))
        .filter(invitation::Column::State.eq(InvitationState::Pending.as_str()))
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    let grants = grants_of(db, m.id).await?;
    Ok(Some(to_invitation(m, grants)))
}

/// Records a revoked invitation.
pub async fn update_invitation_revoked(
    db: &impl ConnectionTrait,
    pass: &Pass<cap::MembersInvite>,
    id: InvitationId,
    now: Timestamp,
) -> Result<(), Error> {
    set_invitation_state(db, pass.organization_id(), id, InvitationState::Revoked, now).await
}

/// Records as expired an invitation stored pending whose expiry has passed at `now`; one that
/// has not expired is left as it is.
pub async fn update_invitation_expired(
    db: &impl ConnectionTrait,
    org: OrganizationId,
    id: InvitationId,
    now: Timestamp,
) -> Result<(), Error> {
    invitation::Entity::update_many()
        .col_expr(invitation::Column::State, Expr::value(InvitationState::Expired.as_str()))
        .col_expr(invitation::Column::UpdateTime, Expr::value(now.as_micros()))
        .filter(invitation::Column::Id.eq(id.as_uuid()))
        .filter(invitation::Column::OrganizationId.eq(org.as_uuid()))
        .filter(invitation::Column::State.eq(InvitationState::Pending.as_str()))
        .filter(invitation::Column::ExpireTime.lte(now.as_micros()))
        .exec(db)
        .await?;
    Ok(())
}

pub(super) async fn set_invitation_state(
    db: &impl ConnectionTrait,
    org: OrganizationId,
    id: InvitationId,
    state: InvitationState,
    now: Timestamp,
) -> Result<(), Error> {
    invitation::Entity::update_many()
        .col_expr(invitation::Column::State, Expr::value(state.as_str()))
        .col_expr(invitation::Column::UpdateTime, Expr::value(now.as_micros()))
        .filter(invitation::Column::Id.eq(id.as_uuid()))
        .filter(invitation::Column::OrganizationId.eq(org.as_uuid()))
        .exec(db)
        .await?;
    Ok(())
}

/// Brings an invitation back to pending with a fresh expiry for a new email from `inviter`, and
/// counts the send. Its token is cleared at once, so the one already mailed stops working; the
/// worker mints the next when it sends.
pub async fn update_invitation_for_resend(
    db: &impl ConnectionTrait,
    pass: &Pass<cap::MembersInvite>,
    id: InvitationId,
    inviter: &UserId,
    expire_time: Timestamp,
    now: Timestamp,
) -> Result<(), Error> {
    let result = invitation::Entity::update_many()
        .col_expr(invitation::Column::State, Expr::value(InvitationState::Pending.as_str()))
        .col_expr(invitation::Column::TokenHash, Expr::value(no_token(id)))
        .col_expr(invitation::Column::InviterUserId, Expr::value(inviter.as_str()))
        .col_expr(invitation::Column::ExpireTime, Expr::value(expire_time.as_micros()))
        .col_expr(invitation::Column::SendCount, Expr::col(invitation::Column::SendCount).add(1))
        .col_expr(invitation::Column::DeliveryState, Expr::value(DeliveryState::Queued.as_str()))
        .col_expr(invitation::Column::LastDeliveryError, Expr::value(Option::<String>::None))
        .col_expr(invitation::Column::UpdateTime, Expr::value(now.as_micros()))
        .filter(invitation::Column::Id.eq(id.as_uuid()))
        .filter(invitation::Column::OrganizationId.eq(pass.organization_id().as_uuid()))
        .exec(db)
        .await;
    match result {
        Ok(_) => Ok(()),
        // An expired invitation coming back to pending meets a newer pending one for the email.
        Err(err) if violates(&err, Unique::OnePendingInvitation) => Err(Error::refused(
            ErrorReason::NewerInvitationPending,
            "another pending invitation exists for this email; resend that one",
        )),
        Err(err) => Err(err.into()),
    }
}

/// Lists invitations in creation order after a cursor, optionally only those whose state as of
/// `now` is `state`.
pub async fn list_invitations(
    db: &impl ConnectionTrait,
    org: OrganizationId,
    state: Option<InvitationState>,
    now: Timestamp,
    after: Option<InvitationId>,
    limit: u64,
) -> Result<Vec<Invitation>, Error> {
    let mut query =
        invitation::Entity::find().filter(invitation::Column::OrganizationId.eq(org.as_uuid()));
    let pending = InvitationState::Pending.as_str();
    query = match state {
        None => query,
        Some(InvitationState::Pending) => query
            .filter(invitation::Column::State.eq(pending))
            .filter(invitation::Column::ExpireTime.gt(now.as_micros())),
        Some(InvitationState::Expired) => query.filter(
            sea_orm::Condition::any()
                .add(invitation::Column::State.eq(InvitationState::Expired.as_str()))
                .add(
                    sea_orm::Condition::all()
                        .add(invitation::Column::State.eq(pending))
                        .add(invitation::Column::ExpireTime.lte(now.as_micros())),
                ),
        ),
        Some(other) => query.filter(invitation::Column::State.eq(other.as_str())),
    };
    if let Some(after) = after {
        query = query.filter(invitation::Column::Id.gt(after.as_uuid()));
    }
    let rows = query.order_by_asc(invitation::Column::Id).limit(limit).all(db).await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    // The page's grants in one query, however many invitations it holds.
    let mut grants: HashMap<InvitationId, Vec<invitation_grant::Model>> = HashMap::new();
    for grant in invitation_grant::Entity::find()
        .filter(invitation_grant::Column::InvitationId.is_in(rows.iter().map(|m| m.id)))
        .order_by_asc(invitation_grant::Column::InvitationId)
        .order_by_asc(invitation_grant::Column::WorkspaceId)
        .all(db)
        .await?
    {
        grants.entry(grant.invitation_id).or_default().push(grant);
    }
    Ok(rows
        .into_iter()
        .map(|m| {
            let own = grants.remove(&m.id).unwrap_or_default();
            to_invitation(m, own)
        })
        .collect())
}

/// A queued send of an invitation email. It holds no body and no token: the worker renders
/// the email when it sends it.
#[derive(Debug, Clone)]
pub struct OutboxEmail {
    pub id: uuid::Uuid,
    /// The invitation it belongs to.
    pub invitation_id: InvitationId,
    /// Which send of the invitation this is (its send_count when queued).
    pub send_number: i32,
    /// Attempts made so far.
    pub attempts: i32,
    /// When the row is next due; part of the claim.
    pub next_attempt_time: i64,
}
