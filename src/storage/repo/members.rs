//! Members: founding Owner, invitees, roles, removal (rule 4: grants go with the member).

use super::*;

pub(super) fn to_member(m: member::Model) -> Member {
    Member {
        organization_id: m.organization_id,
        role: m.role,
        user_id: m.user_id,
        email: m.email,
        create_time: Timestamp::from_micros(m.create_time),
    }
}

/// Finds a membership.
pub async fn find_member(
    db: &impl ConnectionTrait,
    org: OrganizationId,
    user: &UserId,
) -> Result<Option<Member>, Error> {
    Ok(member::Entity::find_by_id((org, user.clone())).one(db).await?.map(to_member))
}

/// Finds a member by email (normalized), for "already a member" checks.
pub async fn find_member_by_email(
    db: &impl ConnectionTrait,
    org: OrganizationId,
    email: &Email,
) -> Result<Option<Member>, Error> {
    Ok(member::Entity::find()
        .filter(member::Column::OrganizationId.eq(org.as_uuid()))
        .filter(member::Column::Email.eq(email.as_str()))
        .one(db)
        .await?
        .map(to_member))
}

/// Inserts the founding Owner of a new organization (no pass exists before the first member).
pub async fn insert_founder(db: &impl ConnectionTrait, founder: &Member) -> Result<(), Error> {
    insert_member_row(db, founder).await
}

/// Makes the invitee of an accepted invitation a member with its grants, and records the
/// invitation ACCEPTED; the lifecycle's [`Admitted`] is the authority.
pub async fn insert_accepted(db: &impl ConnectionTrait, admitted: &Admitted) -> Result<(), Error> {
    let member = admitted.member();
    insert_member_row(db, member).await?;
    for grant in admitted.workspace_grants() {
        let (org, user) = (member.organization_id, &member.user_id);
        let (end, reason) = (grant.expire_time, grant.reason.clone());
        upsert_grant_row(db, org, grant.workspace_id, user, grant.access, end, reason).await?;
    }
    set_invitation_state(
        db,
        member.organization_id,
        admitted.invitation_id(),
        InvitationState::Accepted,
        member.create_time,
    )
    .await
}

pub(super) async fn insert_member_row(db: &impl ConnectionTrait, m: &Member) -> Result<(), Error> {
    let result = member::Entity::insert(member::ActiveModel {
        organization_id: Set(m.organization_id),
        user_id: Set(m.user_id.clone()),
        email: Set(m.email.clone()),
        role: Set(m.role),
        create_time: Set(m.create_time.as_micros()),
    })
    .exec_without_returning(db)
    .await;
    match result {
        Ok(_) => Ok(()),
        Err(err) if violates(&err, Unique::Membership) => Err(Error::refused(
            ErrorReason::AlreadyMember,
            "the user is already a member of this organization",
        )),
        Err(err) => Err(err.into()),
    }
}

/// Changes a member's role.
pub async fn update_member_role(
    db: &impl ConnectionTrait,
    pass: &Pass<cap::MembersUpdateRole>,
    user: &UserId,
    role: Role,
) -> Result<(), Error> {
    set_member_role(db, pass.organization_id(), user, role).await
}

/// Makes `new_owner` an Owner and the Owner who passed the check an Admin (rule 3).
pub async fn update_ownership(
    db: &impl ConnectionTrait,
    pass: &Pass<cap::OrganizationTransferOwnership>,
    new_owner: &UserId,
) -> Result<(), Error> {
    set_member_role(db, pass.organization_id(), new_owner, Role::Owner).await?;
    set_member_role(db, pass.organization_id(), pass.actor(), Role::Admin).await
}

pub(super) async fn set_member_role(
    db: &impl ConnectionTrait,
    org: OrganizationId,
    user: &UserId,
    role: Role,
) -> Result<(), Error> {
    member::Entity::update_many()
        .col_expr(member::Column::Role, Expr::value(role.as_str()))
        .filter(member::Column::OrganizationId.eq(org.as_uuid()))
        .filter(member::Column::UserId.eq(user.as_str()))
        .exec(db)
        .await?;
    Ok(())
}

/// Removes a member and their workspace grants (rule 4); returns the grants removed.
pub async fn delete_member(
    db: &impl ConnectionTrait,
    pass: &Pass<cap::MembersRemove>,
    user: &UserId,
) -> Result<Vec<(WorkspaceId, Access)>, Error> {
    delete_member_rows(db, pass.organization_id(), user).await
}

/// Removes the member who passed the check, leaving, and their grants (rule 4); returns the
/// grants removed.
pub async fn delete_own_membership(
    db: &impl ConnectionTrait,
    pass: &Pass<cap::Membership>,
) -> Result<Vec<(WorkspaceId, Access)>, Error> {
    delete_member_rows(db, pass.organization_id(), pass.actor()).await
}

pub(super) async fn delete_member_rows(
    db: &impl ConnectionTrait,
    org: OrganizationId,
    user: &UserId,
) -> Result<Vec<(WorkspaceId, Access)>, Error> {
    let org = org.as_uuid();
    let removed = workspace_grant::Entity::delete_many()
        .filter(workspace_grant::Column::OrganizationId.eq(org))
        .filter(workspace_grant::Column::UserId.eq(user.as_str()))
        .exec_with_returning(db)
        .await?;
    member::Entity::delete_many()
        .filter(member::Column::OrganizationId.eq(org))
        .filter(member::Column::UserId.eq(user.as_str()))
        .exec(db)
        .await?;
    removed.into_iter().map(|g| Ok((g.workspace_id, g.access))).collect()
}

/// Counts the Owners of an organization.
pub async fn count_owners(db: &impl ConnectionTrait, org: OrganizationId) -> Result<u64, Error> {
    use sea_orm::PaginatorTrait;
    Ok(member::Entity::find()
        .filter(member::Column::OrganizationId.eq(org.as_uuid()))
        .filter(member::Column::Role.eq(Role::Owner.as_str()))
        .count(db)
        .await?)
}

/// Lists members by user id after a cursor.
pub async fn list_members(
    db: &impl ConnectionTrait,
    org: OrganizationId,
    after: Option<&str>,
    limit: u64,
) -> Result<Vec<Member>, Error> {
    let mut query = member::Entity::find().filter(member::Column::OrganizationId.eq(org.as_uuid()));
    if let Some(after) = after {
        query = query.filter(member::Column::UserId.gt(after));
    }
    Ok(query
        .order_by_asc(member::Column::UserId)
        .limit(limit)
        .all(db)
        .await?
        .into_iter()
        .map(to_member)
        .collect())
}
