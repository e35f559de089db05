//! Workspaces and workspace grants.

use super::*;

pub(super) fn to_workspace(m: workspace::Model) -> Workspace {
    Workspace {
        id: m.id,
        organization_id: m.organization_id,
        display_name: m.display_name,
        create_time: Timestamp::from_micros(m.create_time),
    }
}

pub(super) fn to_grant(m: workspace_grant::Model) -> Grant {
    Grant {
        organization_id: m.organization_id,
        workspace_id: m.workspace_id,
        access: Some(m.access),
        user_id: m.user_id,
        expire_time: m.expire_time.map(Timestamp::from_micros),
        reason: m.reason.map(GrantReason::from_stored),
    }
}

/// Inserts a workspace into the pass's organization.
pub async fn insert_workspace(
    db: &impl ConnectionTrait,
    pass: &Pass<cap::WorkspacesCreate>,
    id: WorkspaceId,
    name: &DisplayName,
    now: Timestamp,
) -> Result<Workspace, Error> {
    let model = workspace::ActiveModel {
        id: Set(id),
        organization_id: Set(pass.organization_id()),
        display_name: Set(name.clone()),
        create_time: Set(now.as_micros()),
    };
    workspace::Entity::insert(model).exec_without_returning(db).await?;
    Ok(Workspace {
        id,
        organization_id: pass.organization_id(),
        display_name: name.clone(),
        create_time: now,
    })
}

/// Finds a workspace of an organization; a workspace of another organization is not found.
pub async fn find_workspace(
    db: &impl ConnectionTrait,
    org: OrganizationId,
    id: WorkspaceId,
) -> Result<Option<Workspace>, Error> {
    Ok(workspace::Entity::find_by_id(id)
        .filter(workspace::Column::OrganizationId.eq(org.as_uuid()))
        .one(db)
        .await?
        .map(to_workspace))
}

/// Renames a workspace.
pub async fn update_workspace_name(
    db: &impl ConnectionTrait,
    pass: &Pass<cap::WorkspacesUpdate>,
    id: WorkspaceId,
    name: &DisplayName,
) -> Result<(), Error> {
    workspace::Entity::update_many()
        .col_expr(workspace::Column::DisplayName, Expr::value(name.as_str()))
        .filter(workspace::Column::Id.eq(id.as_uuid()))
        .filter(workspace::Column::OrganizationId.eq(pass.organization_id().as_uuid()))
        .exec(db)
        .await?;
    Ok(())
}

/// Deletes a workspace and every grant on it (rule 4).
pub async fn delete_workspace(
    db: &impl ConnectionTrait,
    pass: &Pass<cap::WorkspacesDelete>,
    id: WorkspaceId,
) -> Result<Vec<(UserId, Access)>, Error> {
    let org = pass.organization_id().as_uuid();
    let removed = workspace_grant::Entity::delete_many()
        .filter(workspace_grant::Column::OrganizationId.eq(org))
        .filter(workspace_grant::Column::WorkspaceId.eq(id.as_uuid()))
        .exec_with_returning(db)
        .await?;
    invitation_grant::Entity::delete_many()
        .filter(invitation_grant::Column::OrganizationId.eq(org))
        .filter(invitation_grant::Column::WorkspaceId.eq(id.as_uuid()))
        .exec(db)
        .await?;
    workspace::Entity::delete_many()
        .filter(workspace::Column::OrganizationId.eq(org))
        .filter(workspace::Column::Id.eq(id.as_uuid()))
        .exec(db)
        .await?;
    removed.into_iter().map(|g| Ok((g.user_id, g.access))).collect()
}

/// Lists an organization's workspaces in creation order after a cursor; with `granted_to`, only
/// those the user holds a grant on (optionally at least `min_access`).
pub async fn list_workspaces(
    db: &impl ConnectionTrait,
    org: OrganizationId,
    granted_to: Option<(&UserId, Access)>,
    after: Option<WorkspaceId>,
    limit: u64,
) -> Result<Vec<Workspace>, Error> {
    let mut query =
        workspace::Entity::find().filter(workspace::Column::OrganizationId.eq(org.as_uuid()));
    if let Some(after) = after {
        query = query.filter(workspace::Column::Id.gt(after.as_uuid()));
    }
    if let Some((user, min_access)) = granted_to {
        let levels: Vec<&str> =
            Access::ALL.iter().filter(|a| **a >= min_access).map(|a| a.as_str()).collect();
        let granted = workspace_grant::Entity::find()
            .select_only()
            .column(workspace_grant::Column::WorkspaceId)
            .filter(workspace_grant::Column::OrganizationId.eq(org.as_uuid()))
            .filter(workspace_grant::Column::UserId.eq(user.as_str()))
            .filter(workspace_grant::Column::Access.is_in(levels))
            .filter(in_force(Timestamp::now()))
            .into_query();
        query = query.filter(workspace::Column::Id.in_subquery(granted));
    }
    Ok(query
        .order_by_asc(workspace::Column::Id)
        .limit(limit)
        .all(db)
        .await?
        .into_iter()
        .map(to_workspace)
        .collect())
}

/// Grants that have not ended at `now`: an ended grant grants nothing from its end on, whether
/// or not anything has recorded the end, so every read that answers with access filters by
/// the same instant as a decision would.
pub(super) fn in_force(now: Timestamp) -> sea_orm::Condition {
    sea_orm::Condition::any()
        .add(workspace_grant::Column::ExpireTime.is_null())
        .add(workspace_grant::Column::ExpireTime.gt(now.as_micros()))
}

/// Grants whose end has passed at `now` and that nothing has recorded yet, oldest end first:
/// (organization, workspace, member).
pub async fn list_ended_grants(
    db: &impl ConnectionTrait,
    now: Timestamp,
    limit: u64,
) -> Result<Vec<(OrganizationId, WorkspaceId, UserId)>, Error> {
    Ok(workspace_grant::Entity::find()
        .select_only()
        .column(workspace_grant::Column::OrganizationId)
        .column(workspace_grant::Column::WorkspaceId)
        .column(workspace_grant::Column::UserId)
        .filter(workspace_grant::Column::ExpireTime.lte(now.as_micros()))
        .filter(workspace_grant::Column::EndRecorded.eq(false))
        .order_by_asc(workspace_grant::Column::ExpireTime)
        .limit(limit)
        .into_tuple()
        .all(db)
        .await?)
}

/// Marks a member's grant on a workspace as having its end recorded, if its end has passed at
/// `now` and nothing recorded it yet, returning it; a grant set again meanwhile (or removed, or
/// recorded by another replica) is left alone. The row stays: decisions keep saying the grant
/// ended. Time makes this write, not a member: it takes the organization id.
pub async fn update_ended_grant_recorded(
    db: &impl ConnectionTrait,
    org: OrganizationId,
    workspace_id: WorkspaceId,
    user: &UserId,
    now: Timestamp,
) -> Result<Option<Grant>, Error> {
    let marked = workspace_grant::Entity::update_many()
        .col_expr(workspace_grant::Column::EndRecorded, Expr::value(true))
        .filter(workspace_grant::Column::OrganizationId.eq(org.as_uuid()))
        .filter(workspace_grant::Column::WorkspaceId.eq(workspace_id.as_uuid()))
        .filter(workspace_grant::Column::UserId.eq(user.as_str()))
        .filter(workspace_grant::Column::ExpireTime.lte(now.as_micros()))
        .filter(workspace_grant::Column::EndRecorded.eq(false))
        .exec_with_returning(db)
        .await?;
    Ok(marked.into_iter().next().map(to_grant))
}

/// Finds a member's grant row on a workspace as stored, in force or ended.
pub async fn find_stored_grant(
    db: &impl ConnectionTrait,
    org: OrganizationId,
    workspace_id: WorkspaceId,
    user: &UserId,
) -> Result<Option<Grant>, Error> {
    let found = workspace_grant::Entity::find_by_id((workspace_id, user.clone()))
        .filter(workspace_grant::Column::OrganizationId.eq(org.as_uuid()))
        .one(db)
        .await?;
    Ok(found.map(to_grant))
}

/// Finds a member's grant on a workspace, if it is in force now.
pub async fn find_grant(
    db: &impl ConnectionTrait,
    org: OrganizationId,
    workspace_id: WorkspaceId,
    user: &UserId,
) -> Result<Option<Access>, Error> {
    let found = workspace_grant::Entity::find_by_id((workspace_id, user.clone()))
        .filter(workspace_grant::Column::OrganizationId.eq(org.as_uuid()))
        .filter(in_force(Timestamp::now()))
        .one(db)
        .await?;
    Ok(found.map(|m| m.access))
}

/// The grants in force now on a workspace of each of `users` that holds one.
pub async fn list_grants_of_members(
    db: &impl ConnectionTrait,
    org: OrganizationId,
    workspace_id: WorkspaceId,
    users: &[&str],
) -> Result<Vec<(UserId, Access)>, Error> {
    Ok(workspace_grant::Entity::find()
        .filter(workspace_grant::Column::OrganizationId.eq(org.as_uuid()))
        .filter(workspace_grant::Column::WorkspaceId.eq(workspace_id.as_uuid()))
        .filter(workspace_grant::Column::UserId.is_in(users.iter().copied()))
        .filter(in_force(Timestamp::now()))
        .all(db)
        .await?
        .into_iter()
        .map(|m| (m.user_id, m.access))
        .collect())
}

/// Creates or changes a grant.
pub async fn upsert_grant(
    db: &impl ConnectionTrait,
    pass: &Pass<cap::WorkspaceAccessManage>,
    grant: &Grant,
    access: Access,
) -> Result<(), Error> {
    debug_assert_eq!(grant.access, Some(access));
    let (org, ws, user) = (pass.organization_id(), grant.workspace_id, &grant.user_id);
    upsert_grant_row(db, org, ws, user, access, grant.expire_time, grant.reason.clone()).await
}

/// Writes a grant whole, its end and reason included, replacing whatever the row held.
pub(super) async fn upsert_grant_row(
    db: &impl ConnectionTrait,
    org: OrganizationId,
    workspace_id: WorkspaceId,
    user: &UserId,
    access: Access,
    end: Option<Timestamp>,
    reason: Option<GrantReason>,
) -> Result<(), Error> {
    let expire_time = end.map(Timestamp::as_micros);
    let reason = reason.map(|r| r.as_str().to_owned());
    workspace_grant::Entity::insert(workspace_grant::ActiveModel {
        organization_id: Set(org),
        workspace_id: Set(workspace_id),
        user_id: Set(user.clone()),
        access: Set(access),
        expire_time: Set(expire_time),
        reason: Set(reason),
        end_recorded: Set(false),
    })
    // Setting a grant replaces it whole: one that was to end becomes permanent.
    .on_conflict(
        OnConflict::columns([
            workspace_grant::Column::WorkspaceId,
            workspace_grant::Column::UserId,
        ])
        .update_columns([
            workspace_grant::Column::Access,
            workspace_grant::Column::ExpireTime,
            workspace_grant::Column::Reason,
            workspace_grant::Column::EndRecorded,
        ])
        .to_owned(),
    )
    .exec_without_returning(db)
    .await?;
    Ok(())
}

/// Removes a grant.
pub async fn delete_grant(
    db: &impl ConnectionTrait,
    pass: &Pass<cap::WorkspaceAccessManage>,
    workspace_id: WorkspaceId,
    user: &UserId,
) -> Result<(), Error> {
    workspace_grant::Entity::delete_many()
        .filter(workspace_grant::Column::OrganizationId.eq(pass.organization_id().as_uuid()))
        .filter(workspace_grant::Column::WorkspaceId.eq(workspace_id.as_uuid()))
        .filter(workspace_grant::Column::UserId.eq(user.as_str()))
        .exec(db)
        .await?;
    Ok(())
}

/// Lists grants by workspace then user, after a cursor, optionally filtered.
pub async fn list_grants(
    db: &impl ConnectionTrait,
    org: OrganizationId,
    workspace_id: Option<WorkspaceId>,
    user: Option<&UserId>,
    after: Option<(WorkspaceId, String)>,
    limit: u64,
) -> Result<Vec<Grant>, Error> {
    use sea_orm::Condition;
    let mut query = workspace_grant::Entity::find()
        .filter(workspace_grant::Column::OrganizationId.eq(org.as_uuid()))
        .filter(in_force(Timestamp::now()));
    if let Some(id) = workspace_id {
        query = query.filter(workspace_grant::Column::WorkspaceId.eq(id.as_uuid()));
    }
    if let Some(user) = user {
        query = query.filter(workspace_grant::Column::UserId.eq(user.as_str()));
    }
    if let Some((after_ws, after_user)) = after {
        query = query.filter(
            Condition::any().add(workspace_grant::Column::WorkspaceId.gt(after_ws.as_uuid())).add(
                Condition::all()
                    .add(workspace_grant::Column::WorkspaceId.eq(after_ws.as_uuid()))
                    .add(workspace_grant::Column::UserId.gt(after_user)),
            ),
        );
    }
    Ok(query
        .order_by_asc(workspace_grant::Column::WorkspaceId)
        .order_by_asc(workspace_grant::Column::UserId)
        .limit(limit)
        .all(db)
        .await?
        .into_iter()
        .map(to_grant)
        .collect())
}
