//! The change log. A change to an organization is an [`OrgChange`]: a write transaction that
//! holds the organization's row lock and its next revision from its first statement, and whose
//! only way to commit is [`OrgChange::commit`] with what it did to access ([`Declared`]). The
//! commit writes the log row and, on PostgreSQL, the notification that other replicas follow
//! (see [`super::feed`]). A row's position follows commit order: on SQLite it is taken at the
//! insert, on PostgreSQL given after the commit by [`place`] (see the migration
//! `m20261201_000003_change_log`), so that changes to different organizations never wait for
//! each other.

use std::ops::Deref;

use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, QueryResult, Statement, Value};
use serde_json::{Value as Json, json};

use super::{Store, WriteTx, feed};
use crate::domain::{
    Access, AuditEventId, ChangeRecord, ChangeToken, Delta, DisplayName, Email, LogPosition,
    OrganizationId, Revision, Role, Timestamp, UserId, WorkspaceId,
};
use crate::error::Error;

/// What a change did, declared by the use-case that made it: nothing commits without it.
#[derive(Debug, Clone)]
pub struct Declared {
    /// Who made the change; `None` when Roster itself did (recording a grant's end).
    pub actor: Option<UserId>,
    /// The audit event it wrote.
    pub audit_event_id: Option<AuditEventId>,
    /// What it did to access, in order; empty for a change Authorize does not see.
    pub deltas: Vec<Delta>,
}

/// A change to one organization, in progress. Dropping it rolls the change back.
pub struct OrgChange {
    tx: WriteTx,
    organization: OrganizationId,
    revision: Revision,
}

impl Deref for OrgChange {
    type Target = DatabaseTransaction;

    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl OrgChange {
    /// Begins a change to an existing organization: takes its row lock, so that changes to one
    /// organization run one after another, and its next revision, in one statement. `None`
    /// when the organization does not exist.
    pub async fn begin(store: &Store, organization: OrganizationId) -> Result<Option<Self>, Error> {
        let tx = store.begin_write().await?;
        let backend = tx.get_database_backend();
        let sql = match backend {
            DbBackend::Postgres => {
                "UPDATE organizations SET revision = revision + 1 WHERE id = $1 RETURNING revision"
            }
            _ => "UPDATE organizations SET revision = revision + 1 WHERE id = ? RETURNING revision",
        };
        let row = tx
            .query_one_raw(Statement::from_sql_and_values(
                backend,
                sql,
                [organization.as_uuid().into()],
            ))
            .await?;
        let Some(row) = row else { return Ok(None) };
        let revision = revision_of(&row, "revision")?;
        Ok(Some(Self { tx, organization, revision }))
    }

    /// Begins the change that creates an organization, whose row the caller inserts at
    /// revision 1 (see [`Revision`]).
    pub async fn create(store: &Store, organization: OrganizationId) -> Result<Self, Error> {
        let tx = store.begin_write().await?;
        Ok(Self { tx, organization, revision: Revision(1) })
    }

    /// The organization changed.
    pub fn organization(&self) -> OrganizationId {
        self.organization
    }

    /// The revision the change commits as.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// Writes the change's log row and commits. On SQLite the row takes its position; on
    /// PostgreSQL it gets one after the commit, from [`place`], and the notification that wakes
    /// the other replicas travels in the same statement.
    pub async fn commit(self, declared: Declared) -> Result<ChangeRecord, Error> {
        let now = Timestamp::now();
        let backend = self.tx.get_database_backend();
        let deltas = encode_deltas(&declared.deltas);
        let values: Vec<Value> = vec![
            self.organization.as_uuid().into(),
            i64::try_from(self.revision.0).unwrap_or(i64::MAX).into(),
            now.as_micros().into(),
            // Stored empty when no user acted.
            declared.actor.as_ref().map(|a| a.as_str().to_owned()).unwrap_or_default().into(),
            declared.audit_event_id.map(|id| id.as_uuid()).into(),
            deltas.into(),
        ];
        let position = match backend {
            DbBackend::Postgres => {
                let mut values = values;
                values.push(feed::CHANNEL.into());
                values.push(self.organization.to_string().into());
                let statement = Statement::from_sql_and_values(
                    backend,
                    "WITH logged AS (
                         INSERT INTO change_log (organization_id, revision, commit_time,
                             actor_user_id, audit_event_id, deltas)
                         VALUES ($1, $2, $3, $4, $5, $6)
                         RETURNING id
                     )
                     SELECT pg_notify($7, $8)::text AS notified FROM logged",
                    values,
                );
                self.tx.query_one_raw(statement).await?.ok_or_else(unwritten)?;
                None
            }
            _ => {
                let statement = Statement::from_sql_and_values(
                    backend,
                    "INSERT INTO change_log (organization_id, revision, commit_time, actor_user_id,
                         audit_event_id, deltas)
                     VALUES (?, ?, ?, ?, ?, ?) RETURNING position",
                    values,
                );
                let row = self.tx.query_one_raw(statement).await?.ok_or_else(unwritten)?;
                Some(position_of(&row, "position")?)
            }
        };
        self.tx.commit().await?;
        Ok(ChangeRecord {
            organization_id: self.organization,
            revision: self.revision,
            position,
            commit_time: now,
            actor: declared.actor,
            audit_event_id: declared.audit_event_id,
            deltas: declared.deltas,
        })
    }
}

fn unwritten() -> Error {
    Error::internal(anyhow::anyhow!("the change log row was not written"))
}

/// Most rows one call of [`place`] gives positions to.
const PLACE_BATCH: i32 = 10_000;

/// Gives positions, in commit order, to the committed changes that have none yet (PostgreSQL
/// only; on SQLite every change has one from its insert). Returns the log's new end when it
/// placed any. Any process may call it at any time: calls wait for each other, and a call
/// that finds nothing to place changes nothing.
pub async fn place(db: &impl ConnectionTrait) -> Result<Option<LogPosition>, Error> {
    let backend = db.get_database_backend();
    if backend != DbBackend::Postgres {
        return Ok(None);
    }
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            backend,
            "SELECT roster_place_changes($1, $2) AS head",
            [feed::CHANNEL.into(), PLACE_BATCH.into()],
        ))
        .await?;
    let head: Option<i64> = match row {
        Some(row) => row.try_get("", "head")?,
        None => None,
    };
    head.map(|head| {
        u64::try_from(head)
            .map(LogPosition)
            .map_err(|_| corrupt(format!("a negative log position {head}")))
    })
    .transpose()
}

impl OrgChange {
    /// Ends a request that changed nothing (rolling the transaction back), with the token of
    /// the state it found: the organization's latest committed change.
    pub async fn unchanged(self) -> Result<ChangeToken, Error> {
        let current = Revision(self.revision.0.saturating_sub(1));
        let position = position_of_revision(&*self.tx, self.organization, current).await?;
        Ok(ChangeToken {
            organization: Some((self.organization, current)),
            // A revision before the log began (0) is the point before every logged change.
            position: if current.0 == 0 { Some(LogPosition(0)) } else { position.flatten() },
        })
    }
}

/// The position of the organization's change that made `revision`: `None` when the log does
/// not hold that change, `Some(None)` while it waits for its position.
pub async fn position_of_revision(
    db: &impl ConnectionTrait,
    organization: OrganizationId,
    revision: Revision,
) -> Result<Option<Option<LogPosition>>, Error> {
    let backend = db.get_database_backend();
    let sql = format!(
        "SELECT position FROM change_log WHERE organization_id = {} AND revision = {}",
        placeholder(backend, 1),
        placeholder(backend, 2)
    );
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            backend,
            sql,
            [organization.as_uuid().into(), i64::try_from(revision.0).unwrap_or(i64::MAX).into()],
        ))
        .await?;
    row.map(|row| optional_position(&row, "position")).transpose()
}

fn revision_of(row: &QueryResult, column: &str) -> Result<Revision, Error> {
    let value: i64 = row.try_get("", column)?;
    u64::try_from(value).map(Revision).map_err(|_| corrupt(format!("a negative revision {value}")))
}

fn optional_position(row: &QueryResult, column: &str) -> Result<Option<LogPosition>, Error> {
    let value: Option<i64> = row.try_get("", column)?;
    value
        .map(|value| {
            u64::try_from(value)
                .map(LogPosition)
                .map_err(|_| corrupt(format!("a negative log position {value}")))
        })
        .transpose()
}

fn position_of(row: &QueryResult, column: &str) -> Result<LogPosition, Error> {
    let value: i64 = row.try_get("", column)?;
    u64::try_from(value)
        .map(LogPosition)
        .map_err(|_| corrupt(format!("a negative log position {value}")))
}

fn corrupt(what: String) -> Error {
    Error::internal(anyhow::anyhow!("the change log holds {what}"))
}

/// The organization's latest revision and the position of the change that made it (`None`
/// while that change waits for its position; 0 before the log began or once retention removed
/// it); `None` when the organization does not exist.
pub async fn latest(
    db: &impl ConnectionTrait,
    organization: OrganizationId,
) -> Result<Option<(Revision, Option<LogPosition>)>, Error> {
    let backend = db.get_database_backend();
    let sql = format!(
        // No row for the latest revision: before the log began (revision 0), or removed by
        // retention, and in both cases before every position the log still holds.
        "SELECT o.revision, \
             CASE WHEN o.revision = 0 OR l.organization_id IS NULL THEN 0 ELSE l.position END \
             AS position \
         FROM organizations o \
         LEFT JOIN change_log l ON l.organization_id = o.id AND l.revision = o.revision \
         WHERE o.id = {}",
        placeholder(backend, 1)
    );
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            backend,
            sql,
            [organization.as_uuid().into()],
        ))
        .await?;
    row.map(|row| Ok((revision_of(&row, "revision")?, optional_position(&row, "position")?)))
        .transpose()
}

/// The organization's changes after revision `after`, in order.
pub async fn read_organization(
    db: &impl ConnectionTrait,
    organization: OrganizationId,
    after: Revision,
) -> Result<Vec<ChangeRecord>, Error> {
    let backend = db.get_database_backend();
    let sql = format!(
        "SELECT {COLUMNS} FROM change_log WHERE organization_id = {} AND revision > {} \
         ORDER BY revision",
        placeholder(backend, 1),
        placeholder(backend, 2)
    );
    let after = i64::try_from(after.0).unwrap_or(i64::MAX);
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            backend,
            sql,
            [organization.as_uuid().into(), after.into()],
        ))
        .await?;
    rows.iter().map(to_record).collect()
}

/// The organization's changes after revision `after`, in order, as [`read_organization`]
/// reads them; `None` when the organization does not exist (any more), in the same statement.
pub async fn read_organization_if_exists(
    db: &impl ConnectionTrait,
    organization: OrganizationId,
    after: Revision,
) -> Result<Option<Vec<ChangeRecord>>, Error> {
    let backend = db.get_database_backend();
    let sql = format!(
        "SELECT l.position, l.organization_id, l.revision, l.commit_time, l.actor_user_id, \
         l.audit_event_id, l.deltas FROM organizations o LEFT JOIN change_log l \
         ON l.organization_id = o.id AND l.revision > {} WHERE o.id = {} ORDER BY l.revision",
        placeholder(backend, 1),
        placeholder(backend, 2)
    );
    let after = i64::try_from(after.0).unwrap_or(i64::MAX);
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            backend,
            sql,
            [after.into(), organization.as_uuid().into()],
        ))
        .await?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut records = Vec::with_capacity(rows.len());
    for row in &rows {
        // The organization's row alone: no change after `after`.
        let revision: Option<i64> = row.try_get("", "revision")?;
        if revision.is_some() {
            records.push(to_record(row)?);
        }
    }
    Ok(Some(records))
}

/// Up to `limit` changes after position `after`, in commit order, of one organization or all.
pub async fn read_after(
    db: &impl ConnectionTrait,
    after: LogPosition,
    organization: Option<OrganizationId>,
    limit: u64,
) -> Result<Vec<ChangeRecord>, Error> {
    let backend = db.get_database_backend();
    let after = i64::try_from(after.0).unwrap_or(i64::MAX);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let (sql, values): (String, Vec<Value>) = match organization {
        Some(org) => (
            format!(
                "SELECT {COLUMNS} FROM change_log WHERE position > {} AND organization_id = {} \
                 ORDER BY position LIMIT {}",
                placeholder(backend, 1),
                placeholder(backend, 2),
                placeholder(backend, 3)
            ),
            vec![after.into(), org.as_uuid().into(), limit.into()],
        ),
        None => (
            format!(
                "SELECT {COLUMNS} FROM change_log WHERE position > {} ORDER BY position LIMIT {}",
                placeholder(backend, 1),
                placeholder(backend, 2)
            ),
            vec![after.into(), limit.into()],
        ),
    };
    let rows = db.query_all_raw(Statement::from_sql_and_values(backend, sql, values)).await?;
    rows.iter().map(to_record).collect()
}

/// The last position given to a change, and the last one retention removed (changes up to it
/// are gone).
pub async fn head(db: &impl ConnectionTrait) -> Result<(LogPosition, LogPosition), Error> {
    let backend = db.get_database_backend();
    // On SQLite positions come from AUTOINCREMENT rather than from the head row.
    let sql = match backend {
        DbBackend::Postgres => "SELECT position, pruned_through FROM change_log_head WHERE id = 1",
        _ => {
            "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'change_log'), 0)
                 AS position, pruned_through FROM change_log_head WHERE id = 1"
        }
    };
    let row = db
        .query_one_raw(Statement::from_string(backend, sql.to_owned()))
        .await?
        .ok_or_else(|| corrupt("no head row".to_owned()))?;
    Ok((position_of(&row, "position")?, position_of(&row, "pruned_through")?))
}

const COLUMNS: &str =
    "position, organization_id, revision, commit_time, actor_user_id, audit_event_id, deltas";

fn placeholder(backend: DbBackend, n: usize) -> String {
    match backend {
        DbBackend::Postgres => format!("${n}"),
        _ => "?".to_owned(),
    }
}

fn to_record(row: &QueryResult) -> Result<ChangeRecord, Error> {
    let organization: uuid::Uuid = row.try_get("", "organization_id")?;
    let actor: String = row.try_get("", "actor_user_id")?;
    let audit: Option<uuid::Uuid> = row.try_get("", "audit_event_id")?;
    let deltas: String = row.try_get("", "deltas")?;
    Ok(ChangeRecord {
        organization_id: OrganizationId::from_uuid(organization),
        revision: revision_of(row, "revision")?,
        position: optional_position(row, "position")?,
        commit_time: Timestamp::from_micros(row.try_get("", "commit_time")?),
        actor: match actor.is_empty() {
            true => None,
            false => Some(
                UserId::parse_owned(actor)
                    .map_err(|e| corrupt(format!("an actor that {}", e.0)))?,
            ),
        },
        audit_event_id: audit.map(AuditEventId::from_uuid),
        deltas: decode_deltas(&deltas)?,
    })
}

// ---------------------------------------------------------------------------------------------
// Deltas as stored: a JSON array of objects, each with its kind in `k`.

fn access(access: Option<Access>) -> Json {
    access.map_or(Json::Null, |a| Json::from(a.as_str()))
}

/// The stored form of a change's deltas.
pub fn encode_deltas(deltas: &[Delta]) -> String {
    let encoded: Vec<Json> = deltas
        .iter()
        .map(|delta| match delta {
            Delta::OrganizationCreated { display_name } => {
                json!({ "k": "organization_created", "name": display_name.as_str() })
            }
            Delta::OrganizationDeleted => json!({ "k": "organization_deleted" }),
            Delta::MemberAdded { user, email, role } => json!({
                "k": "member_added", "user": user.as_str(), "email": email.as_str(),
                "role": role.as_str(),
            }),
            Delta::MemberRemoved { user, role } => {
                json!({ "k": "member_removed", "user": user.as_str(), "role": role.as_str() })
            }
            Delta::RoleChanged { user, old, new } => json!({
                "k": "role_changed", "user": user.as_str(), "old": old.as_str(),
                "new": new.as_str(),
            }),
            Delta::GrantChanged { user, workspace, old, new, expire_time } => {
                let mut item = json!({
                    "k": "grant_changed", "user": user.as_str(), "workspace": workspace.to_string(),
                    "old": access(*old), "new": access(*new),
                });
                // Only a grant that ends says so, so that rows of permanent grants stay as
                // they were written before grants could end.
                if let Some(end) = expire_time {
                    item["end"] = json!(end.as_micros());
                }
                item
            }
            Delta::GrantExpired { user, workspace, access: held, expire_time } => json!({
                "k": "grant_expired", "user": user.as_str(), "workspace": workspace.to_string(),
                "access": held.as_str(), "end": expire_time.as_micros(),
            }),
            Delta::WorkspaceCreated { workspace, display_name } => json!({
                "k": "workspace_created", "workspace": workspace.to_string(),
                "name": display_name.as_str(),
            }),
            Delta::WorkspaceDeleted { workspace } => {
                json!({ "k": "workspace_deleted", "workspace": workspace.to_string() })
            }
            Delta::OwnershipTransferred { from, to } => {
                json!({ "k": "ownership_transferred", "from": from.as_str(), "to": to.as_str() })
            }
        })
        .collect();
    Json::Array(encoded).to_string()
}

/// Reads what [`encode_deltas`] wrote.
pub fn decode_deltas(text: &str) -> Result<Vec<Delta>, Error> {
    let bad = |what: &str| corrupt(format!("a malformed delta ({what})"));
    let parsed: Json = serde_json::from_str(text).map_err(|_| bad("not JSON"))?;
    let Json::Array(items) = parsed else { return Err(bad("not an array")) };
    items
        .iter()
        .map(|item| {
            let text = |key: &str| item.get(key).and_then(Json::as_str).ok_or_else(|| bad(key));
            let user = |key: &str| UserId::parse(text(key)?).map_err(|_| bad(key));
            let role = |key: &str| Role::from_stored(text(key)?).ok_or_else(|| bad(key));
            let workspace = |key: &str| WorkspaceId::parse(text(key)?).map_err(|_| bad(key));
            let level = |key: &str| match item.get(key) {
                Some(Json::Null) => Ok(None),
                Some(Json::String(s)) => Access::from_stored(s).map(Some).ok_or_else(|| bad(key)),
                _ => Err(bad(key)),
            };
            Ok(match text("k")? {
                "organization_created" => Delta::OrganizationCreated {
                    display_name: DisplayName::from_stored(text("name")?.to_owned()),
                },
                "organization_deleted" => Delta::OrganizationDeleted,
                "member_added" => Delta::MemberAdded {
                    user: user("user")?,
                    email: Email::from_stored(text("email")?.to_owned()),
                    role: role("role")?,
                },
                "member_removed" => {
                    Delta::MemberRemoved { user: user("user")?, role: role("role")? }
                }
                "role_changed" => {
                    Delta::RoleChanged { user: user("user")?, old: role("old")?, new: role("new")? }
                }
                "grant_changed" => Delta::GrantChanged {
                    user: user("user")?,
                    workspace: workspace("workspace")?,
                    old: level("old")?,
                    new: level("new")?,
                    expire_time: match item.get("end") {
                        None => None,
                        Some(end) => {
                            Some(Timestamp::from_micros(end.as_i64().ok_or_else(|| bad("end"))?))
                        }
                    },
                },
                "grant_expired" => Delta::GrantExpired {
                    user: user("user")?,
                    workspace: workspace("workspace")?,
                    access: level("access")?.ok_or_else(|| bad("access"))?,
                    expire_time: Timestamp::from_micros(
                        item.get("end").and_then(Json::as_i64).ok_or_else(|| bad("end"))?,
                    ),
                },
                "workspace_created" => Delta::WorkspaceCreated {
                    workspace: workspace("workspace")?,
                    display_name: DisplayName::from_stored(text("name")?.to_owned()),
                },
                "workspace_deleted" => {
                    Delta::WorkspaceDeleted { workspace: workspace("workspace")? }
                }
                "ownership_transferred" => {
                    Delta::OwnershipTransferred { from: user("from")?, to: user("to")? }
                }
                _ => return Err(bad("unknown kind")),
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Reading the log for Watch, and retention.

/// Up to `limit` changes with positions in `(after, through]`, in commit order, of one
/// organization or all.
pub async fn read_between(
    db: &impl ConnectionTrait,
    after: LogPosition,
    through: LogPosition,
    organization: Option<OrganizationId>,
    limit: u64,
) -> Result<Vec<ChangeRecord>, Error> {
    let backend = db.get_database_backend();
    let number = |n: u64| -> Value { i64::try_from(n).unwrap_or(i64::MAX).into() };
    let mut values = vec![number(after.0), number(through.0)];
    let mut sql = format!(
        "SELECT {COLUMNS} FROM change_log WHERE position > {} AND position <= {}",
        placeholder(backend, 1),
        placeholder(backend, 2)
    );
    if let Some(org) = organization {
        values.push(org.as_uuid().into());
        sql.push_str(&format!(" AND organization_id = {}", placeholder(backend, values.len())));
    }
    values.push(number(limit));
    sql.push_str(&format!(" ORDER BY position LIMIT {}", placeholder(backend, values.len())));
    let rows = db.query_all_raw(Statement::from_sql_and_values(backend, sql, values)).await?;
    rows.iter().map(to_record).collect()
}

/// The organization's revision as of position `at`: that of its last change at or before it.
/// `None` when the log holds no such change (none was made, or retention removed them).
pub async fn revision_at(
    db: &impl ConnectionTrait,
    organization: OrganizationId,
    at: LogPosition,
) -> Result<Option<Revision>, Error> {
    let backend = db.get_database_backend();
    let sql = format!(
        "SELECT revision FROM change_log WHERE organization_id = {} AND position <= {} \
         ORDER BY position DESC LIMIT 1",
        placeholder(backend, 1),
        placeholder(backend, 2)
    );
    let at = i64::try_from(at.0).unwrap_or(i64::MAX);
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            backend,
            sql,
            [organization.as_uuid().into(), at.into()],
        ))
        .await?;
    row.map(|row| revision_of(&row, "revision")).transpose()
}

/// The oldest change the log still holds: its position and when it committed.
pub async fn oldest(db: &impl ConnectionTrait) -> Result<Option<(LogPosition, Timestamp)>, Error> {
    let backend = db.get_database_backend();
    let sql = "SELECT position, commit_time FROM change_log WHERE position IS NOT NULL \
               ORDER BY position LIMIT 1";
    let row = db.query_one_raw(Statement::from_string(backend, sql.to_owned())).await?;
    row.map(|row| {
        Ok((
            position_of(&row, "position")?,
            Timestamp::from_micros(row.try_get("", "commit_time")?),
        ))
    })
    .transpose()
}

/// Removes the changes committed before `cutoff`, at most `chunk` rows per transaction, and
/// records how far it went in `change_log_head.pruned_through`; returns that position when
/// anything was removed. Rows go by position, up to the last one committed before the cutoff,
/// so that the log always holds every change after `pruned_through` (a change that took its
/// clock reading earlier but committed later goes with the older ones).
pub async fn prune(
    store: &Store,
    cutoff: Timestamp,
    chunk: u64,
) -> Result<Option<LogPosition>, Error> {
    let db = store.reader();
    let backend = db.get_database_backend();
    let sql = format!(
        "SELECT MAX(position) AS position FROM change_log WHERE commit_time < {}",
        placeholder(backend, 1)
    );
    let row = db
        .query_one_raw(Statement::from_sql_and_values(backend, sql, [cutoff.as_micros().into()]))
        .await?;
    let target: Option<i64> = match row {
        Some(row) => row.try_get("", "position")?,
        None => None,
    };
    let Some(target) = target.and_then(|t| u64::try_from(t).ok()) else { return Ok(None) };
    let mut pruned = head(db).await?.1;
    let mut moved = None;
    while pruned.0 < target {
        let through = target.min(pruned.0.saturating_add(chunk.max(1)));
        let tx = store.begin_write().await?;
        let through_value: Value = i64::try_from(through).unwrap_or(i64::MAX).into();
        tx.execute_raw(Statement::from_sql_and_values(
            backend,
            format!("DELETE FROM change_log WHERE position <= {}", placeholder(backend, 1)),
            [through_value.clone()],
        ))
        .await?;
        // Last, so that on PostgreSQL the head row (which every commit takes) is held briefly;
        // another replica pruning the same rows never moves the mark back.
        tx.execute_raw(Statement::from_sql_and_values(
            backend,
            format!(
                "UPDATE change_log_head SET pruned_through = {} WHERE id = 1 AND pruned_through < {}",
                placeholder(backend, 1),
                placeholder(backend, 2)
            ),
            [through_value.clone(), through_value],
        ))
        .await?;
        tx.commit().await?;
        pruned = LogPosition(through);
        moved = Some(pruned);
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_delta_reads_back_as_itself() {
        let user = |s: &str| UserId::parse(s).unwrap();
        let ws = WorkspaceId::generate();
        let deltas = vec![
            Delta::OrganizationCreated { display_name: DisplayName::parse("Acme").unwrap() },
            Delta::MemberAdded {
                user: user("ada|1"),
                email: Email::parse("ada@example.com").unwrap(),
                role: Role::Owner,
            },
            Delta::RoleChanged { user: user("bob"), old: Role::Member, new: Role::Admin },
            Delta::GrantChanged {
                user: user("bob"),
                workspace: ws,
                old: None,
                new: Some(Access::Read),
                expire_time: None,
            },
            Delta::GrantChanged {
                user: user("bob"),
                workspace: ws,
                old: Some(Access::Read),
                new: None,
                expire_time: None,
            },
            Delta::GrantExpired {
                user: user("carol"),
                workspace: ws,
                access: Access::Write,
                expire_time: Timestamp::from_micros(1_800_000_000_123_456),
            },
            Delta::GrantChanged {
                user: user("carol"),
                workspace: ws,
                old: None,
                new: Some(Access::Write),
                expire_time: Some(Timestamp::from_micros(1_800_000_000_123_456)),
            },
            Delta::WorkspaceCreated {
                workspace: ws,
                display_name: DisplayName::parse("prod").unwrap(),
            },
            Delta::WorkspaceDeleted { workspace: ws },
            Delta::MemberRemoved { user: user("bob"), role: Role::Admin },
            Delta::OwnershipTransferred { from: user("ada|1"), to: user("bob") },
            Delta::OrganizationDeleted,
        ];
        assert_eq!(decode_deltas(&encode_deltas(&deltas)).unwrap(), deltas);
        assert_eq!(decode_deltas("[]").unwrap(), vec![]);
        for bad in ["", "{}", "[{}]", r#"[{"k":"nope"}]"#, r#"[{"k":"member_removed","user":""}]"#]
        {
            assert!(decode_deltas(bad).is_err(), "{bad:?}");
        }
    }
}
