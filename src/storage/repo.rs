//! Repository functions. Verbs: `get_*` fails when missing, `find_*` returns an option, `list_*`
//! pages, `insert_*`/`update_*`/`delete_*` write. Writes that change an organization take the
//! [`Pass`] of the permission they need and use its organization id, so they cannot run without
//! that check or cross organizations; adding an invitee takes the lifecycle's [`Admitted`].

use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, ExprTrait, QueryFilter,
    QueryOrder, QuerySelect, QueryTrait, Statement, Value,
};

use super::entity::{
    audit_event, invitation, invitation_grant, member, organization, outbox, workspace,
    workspace_grant,
};
use crate::domain::invitation::Admitted;
use crate::domain::{
    Access, AuditAction, AuditEvent, AuditEventId, AuditTarget, DeliveryState, DisplayName, Email,
    Grant, Invitation, InvitationId, InvitationState, InvitationTtl, Member, Organization,
    OrganizationId, Pass, Role, Timestamp, UserId, UserIdRef, Workspace, WorkspaceFacts,
    WorkspaceId, capability as cap,
};
use crate::error::{Error, Reason};

/// The unique constraints a write may meet and answer for: any other violation is a bug and
/// stays an internal error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unique {
    /// One membership per user and organization (the members primary key).
    Membership,
    /// One pending invitation per email and organization.
    OnePendingInvitation,
}

impl Unique {
    /// The constraint's name on PostgreSQL.
    fn name(self) -> &'static str {
        match self {
            Unique::Membership => "members_pkey",
            Unique::OnePendingInvitation => "invitations_one_pending_per_email",
        }
    }

    /// How SQLite names it: it reports the columns, not the index.
    fn sqlite_columns(self) -> &'static str {
        match self {
            Unique::Membership => "members.organization_id, members.user_id",
            Unique::OnePendingInvitation => "invitations.organization_id, invitations.email",
        }
    }
}

/// Whether `err` is a violation of the unique constraint `which`.
fn violates(err: &sea_orm::DbErr, which: Unique) -> bool {
    use sea_orm::{DbErr, RuntimeErr};
    let (DbErr::Exec(RuntimeErr::SqlxError(sqlx)) | DbErr::Query(RuntimeErr::SqlxError(sqlx))) =
        err
    else {
        return false;
    };
    let sea_orm::sqlx::Error::Database(db) = sqlx.as_ref() else {
        return false;
    };
    if db.kind() != sea_orm::sqlx::error::ErrorKind::UniqueViolation {
        return false;
    }
    match db.constraint() {
        Some(name) => name == which.name(),
        None => db
            .message()
            .strip_prefix("UNIQUE constraint failed: ")
            .is_some_and(|columns| columns == which.sqlite_columns()),
    }
}

fn corrupt(what: &str, value: &str) -> Error {
    Error::internal(anyhow::anyhow!("stored {what} {value:?} is not valid"))
}

fn role_of(text: &str) -> Result<Role, Error> {
    Role::from_stored(text).ok_or_else(|| corrupt("role", text))
}

fn access_of(text: &str) -> Result<Access, Error> {
    Access::from_stored(text).ok_or_else(|| corrupt("access", text))
}

// ---------------------------------------------------------------------------------------------
// Organizations

fn to_organization(m: organization::Model) -> Organization {
    Organization {
        id: OrganizationId::from_uuid(m.id),
        display_name: DisplayName::from_stored(m.display_name),
        invitation_ttl: InvitationTtl::from_stored_secs(m.invitation_ttl_secs),
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
        id: Set(org.id.as_uuid()),
        display_name: Set(org.display_name.as_str().to_owned()),
        invitation_ttl_secs: Set(org.invitation_ttl.as_secs()),
        create_time: Set(org.create_time.as_micros()),
        update_time: Set(org.update_time.as_micros()),
        // Its creation is its first change.
        revision: Set(1),
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
    Ok(organization::Entity::find_by_id(id.as_uuid()).one(db).await?.map(to_organization))
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
    display_name: &DisplayName,
    ttl: InvitationTtl,
    now: Timestamp,
) -> Result<(), Error> {
    organization::Entity::update_many()
        .col_expr(organization::Column::DisplayName, Expr::value(display_name.as_str()))
        .col_expr(organization::Column::InvitationTtlSecs, Expr::value(ttl.as_secs()))
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
    organization::Entity::delete_by_id(org).exec(db).await?;
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

// ---------------------------------------------------------------------------------------------
// Members

fn to_member(m: member::Model) -> Result<Member, Error> {
    Ok(Member {
        organization_id: OrganizationId::from_uuid(m.organization_id),
        role: role_of(&m.role)?,
        user_id: UserId::from_stored(m.user_id),
        email: Email::from_stored(m.email),
        create_time: Timestamp::from_micros(m.create_time),
    })
}

/// Finds a membership.
pub async fn find_member(
    db: &impl ConnectionTrait,
    org: OrganizationId,
    user: &UserId,
) -> Result<Option<Member>, Error> {
    member::Entity::find_by_id((org.as_uuid(), user.as_str().to_owned()))
        .one(db)
        .await?
        .map(to_member)
        .transpose()
}

/// Finds a member by email (normalized), for "already a member" checks.
pub async fn find_member_by_email(
    db: &impl ConnectionTrait,
    org: OrganizationId,
    email: &Email,
) -> Result<Option<Member>, Error> {
    member::Entity::find()
        .filter(member::Column::OrganizationId.eq(org.as_uuid()))
        .filter(member::Column::Email.eq(email.as_str()))
        .one(db)
        .await?
        .map(to_member)
        .transpose()
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
    for (workspace_id, access) in admitted.workspace_grants() {
        upsert_grant_row(db, member.organization_id, *workspace_id, &member.user_id, *access)
            .await?;
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

async fn insert_member_row(db: &impl ConnectionTrait, m: &Member) -> Result<(), Error> {
    let result = member::Entity::insert(member::ActiveModel {
        organization_id: Set(m.organization_id.as_uuid()),
        user_id: Set(m.user_id.as_str().to_owned()),
        email: Set(m.email.as_str().to_owned()),
        role: Set(m.role.as_str().to_owned()),
        create_time: Set(m.create_time.as_micros()),
    })
    .exec_without_returning(db)
    .await;
    match result {
        Ok(_) => Ok(()),
        Err(err) if violates(&err, Unique::Membership) => Err(Error::refused(
            Reason::AlreadyMember,
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
pub async fn transfer_ownership(
    db: &impl ConnectionTrait,
    pass: &Pass<cap::OrganizationTransferOwnership>,
    new_owner: &UserId,
) -> Result<(), Error> {
    set_member_role(db, pass.organization_id(), new_owner, Role::Owner).await?;
    set_member_role(db, pass.organization_id(), pass.actor(), Role::Admin).await
}

async fn set_member_role(
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

async fn delete_member_rows(
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
    removed
        .into_iter()
        .map(|g| Ok((WorkspaceId::from_uuid(g.workspace_id), access_of(&g.access)?)))
        .collect()
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
    query
        .order_by_asc(member::Column::UserId)
        .limit(limit)
        .all(db)
        .await?
        .into_iter()
        .map(to_member)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Workspaces and grants

fn to_workspace(m: workspace::Model) -> Workspace {
    Workspace {
        id: WorkspaceId::from_uuid(m.id),
        organization_id: OrganizationId::from_uuid(m.organization_id),
        display_name: DisplayName::from_stored(m.display_name),
        create_time: Timestamp::from_micros(m.create_time),
    }
}

fn to_grant(m: workspace_grant::Model) -> Result<Grant, Error> {
    Ok(Grant {
        organization_id: OrganizationId::from_uuid(m.organization_id),
        workspace_id: WorkspaceId::from_uuid(m.workspace_id),
        access: Some(access_of(&m.access)?),
        user_id: UserId::from_stored(m.user_id),
    })
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
        id: Set(id.as_uuid()),
        organization_id: Set(pass.organization_id().as_uuid()),
        display_name: Set(name.as_str().to_owned()),
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
    Ok(workspace::Entity::find_by_id(id.as_uuid())
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
    removed
        .into_iter()
        .map(|g| Ok((UserId::from_stored(g.user_id), access_of(&g.access)?)))
        .collect()
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

/// Finds a member's grant on a workspace.
pub async fn find_grant(
    db: &impl ConnectionTrait,
    org: OrganizationId,
    workspace_id: WorkspaceId,
    user: &UserId,
) -> Result<Option<Access>, Error> {
    let found =
        workspace_grant::Entity::find_by_id((workspace_id.as_uuid(), user.as_str().to_owned()))
            .filter(workspace_grant::Column::OrganizationId.eq(org.as_uuid()))
            .one(db)
            .await?;
    found.map(|m| access_of(&m.access)).transpose()
}

/// Creates or changes a grant.
pub async fn upsert_grant(
    db: &impl ConnectionTrait,
    pass: &Pass<cap::WorkspaceAccessManage>,
    workspace_id: WorkspaceId,
    user: &UserId,
    access: Access,
) -> Result<(), Error> {
    upsert_grant_row(db, pass.organization_id(), workspace_id, user, access).await
}

async fn upsert_grant_row(
    db: &impl ConnectionTrait,
    org: OrganizationId,
    workspace_id: WorkspaceId,
    user: &UserId,
    access: Access,
) -> Result<(), Error> {
    workspace_grant::Entity::insert(workspace_grant::ActiveModel {
        organization_id: Set(org.as_uuid()),
        workspace_id: Set(workspace_id.as_uuid()),
        user_id: Set(user.as_str().to_owned()),
        access: Set(access.as_str().to_owned()),
    })
    .on_conflict(
        OnConflict::columns([
            workspace_grant::Column::WorkspaceId,
            workspace_grant::Column::UserId,
        ])
        .update_column(workspace_grant::Column::Access)
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
        .filter(workspace_grant::Column::OrganizationId.eq(org.as_uuid()));
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
    query
        .order_by_asc(workspace_grant::Column::WorkspaceId)
        .order_by_asc(workspace_grant::Column::UserId)
        .limit(limit)
        .all(db)
        .await?
        .into_iter()
        .map(to_grant)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Authorization facts

/// Everything `decide` needs about one check, read in a single statement of indexed lookups:
/// the user's role and, for a workspace check, whether the workspace exists in the organization
/// and the user's grant on it.
pub async fn authorization_facts(
    db: &impl ConnectionTrait,
    org: OrganizationId,
    user: UserIdRef<'_>,
    workspace_id: Option<WorkspaceId>,
) -> Result<(Option<Role>, WorkspaceFacts), Error> {
    let backend = db.get_database_backend();
    let org_value: Value = org.as_uuid().into();
    let user_value: Value = user.as_str().into();
    let Some(workspace_id) = workspace_id else {
        let sql =
            "SELECT (SELECT role FROM members WHERE organization_id = ? AND user_id = ?) AS role";
        let row = db.query_one_raw(statement(backend, sql, vec![org_value, user_value])).await?;
        let role: Option<String> = match row {
            Some(row) => row.try_get("", "role")?,
            None => None,
        };
        let role = role.as_deref().map(role_of).transpose()?;
        return Ok((role, WorkspaceFacts::NotApplicable));
    };
    let ws_value: Value = workspace_id.as_uuid().into();
    let sql = "SELECT \
        (SELECT role FROM members WHERE organization_id = ? AND user_id = ?) AS role, \
        (SELECT COUNT(*) FROM workspaces WHERE organization_id = ? AND id = ?) AS workspace_count, \
        (SELECT access FROM workspace_grants \
            WHERE workspace_id = ? AND user_id = ? AND organization_id = ?) AS access";
    let values = vec![
        org_value.clone(),
        user_value.clone(),
        org_value.clone(),
        ws_value.clone(),
        ws_value,
        user_value,
        org_value,
    ];
    let Some(row) = db.query_one_raw(statement(backend, sql, values)).await? else {
        return Ok((None, WorkspaceFacts::Missing));
    };
    let role: Option<String> = row.try_get("", "role")?;
    let workspace_count: i64 = row.try_get("", "workspace_count")?;
    let access: Option<String> = row.try_get("", "access")?;
    let role = role.as_deref().map(role_of).transpose()?;
    let facts = if workspace_count == 0 {
        WorkspaceFacts::Missing
    } else {
        WorkspaceFacts::Present(access.as_deref().map(access_of).transpose()?)
    };
    Ok((role, facts))
}

/// An organization as one consistent read finds it, for the Authorize index: its revision,
/// members, workspaces and grants; `None` when it does not exist. On PostgreSQL the reads share
/// one REPEATABLE READ snapshot; on SQLite one read transaction, which sees one state in WAL
/// mode.
pub async fn load_organization_snapshot(
    store: &crate::storage::Store,
    org: OrganizationId,
) -> Result<Option<crate::index::Snapshot>, Error> {
    use sea_orm::{AccessMode, IsolationLevel, TransactionTrait};
    let db = store.reader();
    let backend = db.get_database_backend();
    let tx = match backend {
        DbBackend::Postgres => {
            db.begin_with_config(Some(IsolationLevel::RepeatableRead), Some(AccessMode::ReadOnly))
                .await?
        }
        _ => db.begin().await?,
    };
    // One row per member, or a single row without one for an organization that has none, or
    // no row at all when the organization does not exist.
    let sql = "SELECT o.revision AS revision, m.user_id AS user_id, m.role AS role \
        FROM organizations o LEFT JOIN members m ON m.organization_id = o.id WHERE o.id = ?";
    let rows = tx.query_all_raw(statement(backend, sql, vec![org.as_uuid().into()])).await?;
    let Some(first) = rows.first() else { return Ok(None) };
    let revision: i64 = first.try_get("", "revision")?;
    let revision = crate::domain::Revision(
        u64::try_from(revision).map_err(|_| corrupt("revision", &revision.to_string()))?,
    );
    let mut members = Vec::with_capacity(rows.len());
    for row in &rows {
        let user: Option<String> = row.try_get("", "user_id")?;
        let role: Option<String> = row.try_get("", "role")?;
        if let (Some(user), Some(role)) = (user, role) {
            members.push((UserId::from_stored(user), role_of(&role)?));
        }
    }
    let workspaces: Vec<uuid::Uuid> = workspace::Entity::find()
        .select_only()
        .column(workspace::Column::Id)
        .filter(workspace::Column::OrganizationId.eq(org.as_uuid()))
        .into_tuple()
        .all(&tx)
        .await?;
    let grants: Vec<(uuid::Uuid, String, String)> = workspace_grant::Entity::find()
        .select_only()
        .column(workspace_grant::Column::WorkspaceId)
        .column(workspace_grant::Column::UserId)
        .column(workspace_grant::Column::Access)
        .filter(workspace_grant::Column::OrganizationId.eq(org.as_uuid()))
        .into_tuple()
        .all(&tx)
        .await?;
    tx.commit().await?;
    let grants = grants
        .into_iter()
        .map(|(ws, user, access)| {
            Ok((WorkspaceId::from_uuid(ws), UserId::from_stored(user), access_of(&access)?))
        })
        .collect::<Result<Vec<_>, Error>>()?;
    Ok(Some(crate::index::Snapshot {
        revision,
        members,
        workspaces: workspaces.into_iter().map(WorkspaceId::from_uuid).collect(),
        grants,
    }))
}

/// Builds a raw statement written with `?` placeholders for either backend.
fn statement(backend: DbBackend, sql: &str, values: Vec<Value>) -> Statement {
    let sql = match backend {
        DbBackend::Postgres => {
            let mut numbered = String::with_capacity(sql.len() + 8);
            let mut n = 0;
            for ch in sql.chars() {
                if ch == '?' {
                    n += 1;
                    numbered.push('$');
                    numbered.push_str(&n.to_string());
                } else {
                    numbered.push(ch);
                }
            }
            numbered
        }
        _ => sql.to_owned(),
    };
    Statement::from_sql_and_values(backend, sql, values)
}

// ---------------------------------------------------------------------------------------------
// Invitations and their outbox

fn to_invitation(
    m: invitation::Model,
    grants: Vec<invitation_grant::Model>,
) -> Result<Invitation, Error> {
    Ok(Invitation {
        id: InvitationId::from_uuid(m.id),
        organization_id: OrganizationId::from_uuid(m.organization_id),
        role: role_of(&m.role)?,
        stored_state: InvitationState::from_stored(&m.state)
            .ok_or_else(|| corrupt("state", &m.state))?,
        workspace_grants: grants
            .into_iter()
            .map(|g| Ok((WorkspaceId::from_uuid(g.workspace_id), access_of(&g.access)?)))
            .collect::<Result<_, Error>>()?,
        delivery_state: DeliveryState::from_stored(&m.delivery_state)
            .ok_or_else(|| corrupt("delivery state", &m.delivery_state))?,
        email: Email::from_stored(m.email),
        inviter_user_id: UserId::from_stored(m.inviter_user_id),
        create_time: Timestamp::from_micros(m.create_time),
        expire_time: Timestamp::from_micros(m.expire_time),
        send_count: m.send_count,
        last_delivery_error: m.last_delivery_error,
    })
}

/// What `token_hash` holds while an invitation has no token: the worker mints one when it sends
/// the email. Unique per invitation (the column is), and never the hash of anything, since a
/// hash is 64 hexadecimal digits. (Migration 2 writes the same prefix.)
fn no_token(id: InvitationId) -> String {
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
        id: Set(inv.id.as_uuid()),
        organization_id: Set(pass.organization_id().as_uuid()),
        email: Set(inv.email.as_str().to_owned()),
        role: Set(inv.role.as_str().to_owned()),
        state: Set(inv.stored_state.as_str().to_owned()),
        token_hash: Set(no_token(inv.id)),
        inviter_user_id: Set(inv.inviter_user_id.as_str().to_owned()),
        create_time: Set(inv.create_time.as_micros()),
        expire_time: Set(inv.expire_time.as_micros()),
        send_count: Set(inv.send_count),
        delivery_state: Set(inv.delivery_state.as_str().to_owned()),
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
    for (workspace_id, access) in &inv.workspace_grants {
        invitation_grant::Entity::insert(invitation_grant::ActiveModel {
            invitation_id: Set(inv.id.as_uuid()),
            organization_id: Set(pass.organization_id().as_uuid()),
            workspace_id: Set(workspace_id.as_uuid()),
            access: Set(access.as_str().to_owned()),
        })
        .exec_without_returning(db)
        .await?;
    }
    Ok(())
}

/// The ALREADY_EXISTS answer for a second pending invitation.
pub fn pending_exists() -> Error {
    Error::refused(
        Reason::InvitationPending,
        "a pending invitation for this email already exists; resend it instead",
    )
}

async fn grants_of(
    db: &impl ConnectionTrait,
    id: uuid::Uuid,
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
    let Some(m) = invitation::Entity::find_by_id(id.as_uuid())
        .filter(invitation::Column::OrganizationId.eq(org.as_uuid()))
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    let grants = grants_of(db, m.id).await?;
    to_invitation(m, grants).map(Some)
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
    Ok(Some((to_invitation(m, grants)?, stored_hash)))
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
    to_invitation(m, grants).map(Some)
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

async fn set_invitation_state(
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
            Reason::NewerInvitationPending,
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
    let mut out = Vec::with_capacity(rows.len());
    for m in rows {
        let grants = grants_of(db, m.id).await?;
        out.push(to_invitation(m, grants)?);
    }
    Ok(out)
}

/// A queued send of an invitation email. It holds no body and no token: the worker renders
/// the email when it sends it.
#[derive(Debug, Clone)]
pub struct OutboxEmail {
    /// Row id.
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

/// States of a row whose email may still be sent.
const WAITING: [DeliveryState; 2] = [DeliveryState::Queued, DeliveryState::Retrying];

fn waiting() -> [&'static str; 2] {
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
        invitation_id: Set(invitation.id.as_uuid()),
        send_number: Set(invitation.send_count),
        recipient: Set(invitation.email.as_str().to_owned()),
        subject: Set(String::new()),
        body_text: Set(None),
        body_html: Set(None),
        state: Set(DeliveryState::Queued.as_str().to_owned()),
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
            invitation_id: InvitationId::from_uuid(m.invitation_id),
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
    let Some(m) = invitation::Entity::find_by_id(email.invitation_id.as_uuid()).one(db).await?
    else {
        return Ok(None);
    };
    let grants = grants_of(db, m.id).await?;
    to_invitation(m, grants).map(Some)
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

// ---------------------------------------------------------------------------------------------
// Audit

/// Writes an audit event; called inside the transaction of the change it records (rule 5).
pub async fn insert_audit(db: &impl ConnectionTrait, event: &AuditEvent) -> Result<(), Error> {
    audit_event::Entity::insert(audit_event::ActiveModel {
        id: Set(event.id.as_uuid()),
        organization_id: Set(event.organization_id.as_uuid()),
        actor_user_id: Set(event.actor_user_id.as_str().to_owned()),
        action: Set(event.action.as_str().to_owned()),
        target: Set(event.target.to_string()),
        details: Set(event.details.to_string()),
        create_time: Set(event.create_time.as_micros()),
    })
    .exec_without_returning(db)
    .await?;
    Ok(())
}

/// Lists audit events newest first, before a cursor.
pub async fn list_audit(
    db: &impl ConnectionTrait,
    org: OrganizationId,
    before: Option<AuditEventId>,
    limit: u64,
) -> Result<Vec<AuditEvent>, Error> {
    let mut query =
        audit_event::Entity::find().filter(audit_event::Column::OrganizationId.eq(org.as_uuid()));
    if let Some(before) = before {
        query = query.filter(audit_event::Column::Id.lt(before.as_uuid()));
    }
    let rows = query.order_by_desc(audit_event::Column::Id).limit(limit).all(db).await?;
    rows.into_iter()
        .map(|m| {
            Ok(AuditEvent {
                id: AuditEventId::from_uuid(m.id),
                organization_id: OrganizationId::from_uuid(m.organization_id),
                actor_user_id: UserId::from_stored(m.actor_user_id),
                action: AuditAction::from_stored(&m.action)
                    .ok_or_else(|| corrupt("audit action", &m.action))?,
                target: AuditTarget::from_stored(&m.target)
                    .ok_or_else(|| corrupt("audit target", &m.target))?,
                details: serde_json::from_str(&m.details)
                    .map_err(|_| corrupt("audit details", &m.details))?,
                create_time: Timestamp::from_micros(m.create_time),
            })
        })
        .collect()
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
