//! What Authorize decides on: one member's facts in one statement, and a whole
//! organization's snapshot for the index.

use super::*;

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
        let role: Option<Role> = match row {
            Some(row) => row.try_get("", "role")?,
            None => None,
        };
        return Ok((role, WorkspaceFacts::NotApplicable));
    };
    let ws_value: Value = workspace_id.as_uuid().into();
    let sql = "SELECT \
        (SELECT role FROM members WHERE organization_id = ? AND user_id = ?) AS role, \
        (SELECT COUNT(*) FROM workspaces WHERE organization_id = ? AND id = ?) AS workspace_count, \
        (SELECT access FROM workspace_grants \
            WHERE workspace_id = ? AND user_id = ? AND organization_id = ?) AS access, \
        (SELECT expire_time FROM workspace_grants \
            WHERE workspace_id = ? AND user_id = ? AND organization_id = ?) AS expire_time";
    let values = vec![
        org_value.clone(),
        user_value.clone(),
        org_value.clone(),
        ws_value.clone(),
        ws_value.clone(),
        user_value.clone(),
        org_value.clone(),
        ws_value,
        user_value,
        org_value,
    ];
    let Some(row) = db.query_one_raw(statement(backend, sql, values)).await? else {
        return Ok((None, WorkspaceFacts::Missing));
    };
    let role: Option<Role> = row.try_get("", "role")?;
    let workspace_count: i64 = row.try_get("", "workspace_count")?;
    let access: Option<Access> = row.try_get("", "access")?;
    let expire_time: Option<i64> = row.try_get("", "expire_time")?;
    // The end is this replica's clock's to judge, at the instant of the check, as the index
    // judges it.
    let now = Timestamp::now().as_micros();
    let facts = match (workspace_count, access, expire_time) {
        (0, _, _) => WorkspaceFacts::Missing,
        (_, Some(access), Some(end)) if end <= now => WorkspaceFacts::Ended(access),
        (_, access, _) => WorkspaceFacts::Present(access),
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
        let role: Option<Role> = row.try_get("", "role")?;
        if let (Some(user), Some(role)) = (user, role) {
            // Read as text: ids were validated when written, and a snapshot may hold millions.
            members.push((UserId::from_stored(user), role));
        }
    }
    let workspaces: Vec<WorkspaceId> = workspace::Entity::find()
        .select_only()
        .column(workspace::Column::Id)
        .filter(workspace::Column::OrganizationId.eq(org.as_uuid()))
        .into_tuple()
        .all(&tx)
        .await?;
    let grants: Vec<(WorkspaceId, String, Access, Option<i64>)> = workspace_grant::Entity::find()
        .select_only()
        .column(workspace_grant::Column::WorkspaceId)
        .column(workspace_grant::Column::UserId)
        .column(workspace_grant::Column::Access)
        .column(workspace_grant::Column::ExpireTime)
        .filter(workspace_grant::Column::OrganizationId.eq(org.as_uuid()))
        .into_tuple()
        .all(&tx)
        .await?;
    tx.commit().await?;
    let mut ends = Vec::new();
    let grants = grants
        .into_iter()
        .map(|(ws, user, access, end)| {
            let user = UserId::from_stored(user);
            if let Some(end) = end {
                ends.push((ws, user.clone(), end));
            }
            (ws, user, access)
        })
        .collect();
    Ok(Some(crate::index::Snapshot { revision, members, workspaces, grants, ends }))
}

/// Builds a raw statement written with `?` placeholders for either backend.
pub(super) fn statement(backend: DbBackend, sql: &str, values: Vec<Value>) -> Statement {
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
