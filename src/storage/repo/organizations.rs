//! Organizations.

use super::*;

pub(super) fn to_organization(m: organization::Model) -> Organization {
    Organization {
        id: m.id,
        display_name: m.display_name,
        invitation_ttl: InvitationTtl::from_stored_secs(m.invitation_ttl_secs),
        max_grant_duration: m.max_grant_secs.map(MaxGrantDuration::from_stored_secs),
        create_time: Timestamp::from_micros(m.create_time),
        update_time: Timestamp::from_micros(m.update_time),
    }
}

/// Inserts a new organization.
pub async fn insert_organization(
    db: &impl ConnectionTrait,
    org: &Organization,
) -> Result<(), Error> {
    organization::Entity::insert(organization::ActiveModel {
        id: Set(org.id),
        display_name: Set(org.display_name.clone()),
        invitation_ttl_secs: Set(org.invitation_ttl.as_secs()),
        create_time: Set(org.create_time.as_micros()),
        update_time: Set(org.update_time.as_micros()),
        // Its creation is its first change.
        revision: Set(1),
        max_grant_secs: Set(org.max_grant_duration.map(MaxGrantDuration::as_secs)),
    })
    .exec_without_returning(db)
    .await?;
    Ok(())
}

/// Finds an organization by id.
pub async fn find_organization(
    db: &impl ConnectionTrait,
    id: OrganizationId,
) -> Result<Option<Organization>, Error> {
    Ok(organization::Entity::find_by_id(id).one(db).await?.map(to_organization))
}

/// Takes the organization's row lock for the rest of the transaction, so that concurrent
/// changes to one organization's members run one after another (rule 2 under races). Returns
/// false when the organization does not exist.
pub async fn lock_organization(
    db: &impl ConnectionTrait,
    id: OrganizationId,
) -> Result<bool, Error> {
    let result = organization::Entity::update_many()
        .col_expr(organization::Column::Id, Expr::col(organization::Column::Id))
        .filter(organization::Column::Id.eq(id.as_uuid()))
        .exec(db)
        .await?;
    Ok(result.rows_affected == 1)
}

/// Writes an organization's name and settings.
pub async fn update_organization(
    db: &impl ConnectionTrait,
    pass: &Pass<cap::OrganizationUpdate>,
    changed: &Organization,
    now: Timestamp,
) -> Result<(), Error> {
    let max_grant_secs = changed.max_grant_duration.map(MaxGrantDuration::as_secs);
    organization::Entity::update_many()
        .col_expr(organization::Column::DisplayName, Expr::value(changed.display_name.as_str()))
        .col_expr(
            organization::Column::InvitationTtlSecs,
            Expr::value(changed.invitation_ttl.as_secs()),
        )
        .col_expr(organization::Column::MaxGrantSecs, Expr::value(max_grant_secs))
        .col_expr(organization::Column::UpdateTime, Expr::value(now.as_micros()))
        .filter(organization::Column::Id.eq(pass.organization_id().as_uuid()))
        .exec(db)
        .await?;
    Ok(())
}

/// Deletes an organization; members, workspaces, grants and invitations go with it.
pub async fn delete_organization(
    db: &impl ConnectionTrait,
    pass: &Pass<cap::OrganizationDelete>,
) -> Result<(), Error> {
    let org = pass.organization_id().as_uuid();
    // Children are deleted explicitly too, so the outcome does not hang on cascade settings.
    workspace_grant::Entity::delete_many()
        .filter(workspace_grant::Column::OrganizationId.eq(org))
        .exec(db)
        .await?;
    invitation::Entity::delete_many()
        .filter(invitation::Column::OrganizationId.eq(org))
        .exec(db)
        .await?;
    workspace::Entity::delete_many()
        .filter(workspace::Column::OrganizationId.eq(org))
        .exec(db)
        .await?;
    member::Entity::delete_many().filter(member::Column::OrganizationId.eq(org)).exec(db).await?;
    organization::Entity::delete_by_id(pass.organization_id()).exec(db).await?;
    Ok(())
}

/// Lists the organizations a user belongs to, in id (creation) order, after a cursor.
pub async fn list_organizations_of(
    db: &impl ConnectionTrait,
    user: &UserId,
    after: Option<OrganizationId>,
    limit: u64,
) -> Result<Vec<Organization>, Error> {
    let mut ids = member::Entity::find()
        .select_only()
        .column(member::Column::OrganizationId)
        .filter(member::Column::UserId.eq(user.as_str()));
    if let Some(after) = after {
        ids = ids.filter(member::Column::OrganizationId.gt(after.as_uuid()));
    }
    let ids: Vec<uuid::Uuid> =
        ids.order_by_asc(member::Column::OrganizationId).limit(limit).into_tuple().all(db).await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let orgs = organization::Entity::find()
        .filter(organization::Column::Id.is_in(ids))
        .order_by_asc(organization::Column::Id)
        .all(db)
        .await?;
    Ok(orgs.into_iter().map(to_organization).collect())
}
