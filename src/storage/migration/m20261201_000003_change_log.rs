//! The change log: every organization gets a revision, and every change a row with the
//! organization, its revision, a position in one order of commits across organizations, the
//! actor, the audit event and what the change did to access.
//!
//! Rows do not reference their organization: a deleted organization's last change must outlive
//! it for consumers to learn of the deletion; retention removes old rows.
//!
//! Positions follow commit order, and have no gaps. On SQLite the one writer commits in the
//! order positions are taken (AUTOINCREMENT never reuses one). On PostgreSQL a position taken
//! before commit could not promise that: a change that took 7 may commit after the one that
//! took 8, and a reader that saw 8 would never look back for 7. So there a change commits its
//! row without a position (its `id` only orders rows of one organization), and the function
//! `roster_place_changes` gives positions afterwards to every committed row that has none, in
//! `id` order, continuing from `change_log_head`, whose row lock makes one call wait for
//! another. A row gets its position only once it is visible, so a reader never sees a later
//! position before an earlier one. Changes to one organization keep their revision order:
//! the next one takes its `id` only after the previous one committed, under the
//! organization's lock.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Organizations {
    Table,
    Revision,
}

#[derive(DeriveIden)]
enum ChangeLog {
    Table,
    Id,
    Position,
    OrganizationId,
    Revision,
    CommitTime,
    ActorUserId,
    AuditEventId,
    Deltas,
}

#[derive(DeriveIden)]
enum ChangeLogHead {
    Table,
    Id,
    Position,
    PrunedThrough,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Organizations::Table)
                    // Organizations made before the log start at 0: the state before any
                    // logged change.
                    .add_column(
                        ColumnDef::new(Organizations::Revision).big_integer().not_null().default(0),
                    )
                    .to_owned(),
            )
            .await?;
        let postgres = manager.get_database_backend() == sea_orm::DbBackend::Postgres;
        let mut table = Table::create();
        table.table(ChangeLog::Table);
        if postgres {
            table
                .col(ColumnDef::new(ChangeLog::Id).big_integer().auto_increment().primary_key())
                .col(ColumnDef::new(ChangeLog::Position).big_integer().null().unique_key());
        } else {
            table.col(ColumnDef::new(ChangeLog::Position).integer().auto_increment().primary_key());
        }
        manager
            .create_table(
                table
                    .col(ColumnDef::new(ChangeLog::OrganizationId).uuid().not_null())
                    .col(ColumnDef::new(ChangeLog::Revision).big_integer().not_null())
                    .col(ColumnDef::new(ChangeLog::CommitTime).big_integer().not_null())
                    .col(ColumnDef::new(ChangeLog::ActorUserId).text().not_null())
                    .col(ColumnDef::new(ChangeLog::AuditEventId).uuid().null())
                    .col(ColumnDef::new(ChangeLog::Deltas).text().not_null())
                    .to_owned(),
            )
            .await?;
        // One row per revision; also what an organization's changes are read by.
        manager
            .create_index(
                Index::create()
                    .name("change_log_by_revision")
                    .table(ChangeLog::Table)
                    .col(ChangeLog::OrganizationId)
                    .col(ChangeLog::Revision)
                    .unique()
                    .to_owned(),
            )
            .await?;
        // Retention removes rows by age.
        manager
            .create_index(
                Index::create()
                    .name("change_log_by_time")
                    .table(ChangeLog::Table)
                    .col(ChangeLog::CommitTime)
                    .to_owned(),
            )
            .await?;
        if postgres {
            let db = manager.get_connection();
            // What the placing function looks for.
            db.execute_unprepared(
                "CREATE INDEX change_log_unplaced ON change_log (id) WHERE position IS NULL",
            )
            .await?;
            db.execute_unprepared(PLACE_CHANGES).await?;
        }
        manager
            .create_table(
                Table::create()
                    .table(ChangeLogHead::Table)
                    .col(ColumnDef::new(ChangeLogHead::Id).small_integer().not_null().primary_key())
                    .col(ColumnDef::new(ChangeLogHead::Position).big_integer().not_null())
                    .col(ColumnDef::new(ChangeLogHead::PrunedThrough).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .exec_stmt(
                Query::insert()
                    .into_table(ChangeLogHead::Table)
                    .columns([
                        ChangeLogHead::Id,
                        ChangeLogHead::Position,
                        ChangeLogHead::PrunedThrough,
                    ])
                    .values_panic([1.into(), 0.into(), 0.into()])
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == sea_orm::DbBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared("DROP FUNCTION IF EXISTS roster_place_changes(text, integer)")
                .await?;
        }
        manager.drop_table(Table::drop().table(ChangeLogHead::Table).to_owned()).await?;
        manager.drop_table(Table::drop().table(ChangeLog::Table).to_owned()).await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Organizations::Table)
                    .drop_column(Organizations::Revision)
                    .to_owned(),
            )
            .await
    }
}

/// Gives positions to up to `batch` committed changes that have none, and returns the last
/// position given (NULL when there was nothing to place); when it placed any, notifies
/// `channel` with `placed:` and that position. Each statement of a PL/pgSQL function sees what committed before it began, so the rows
/// read after the head's lock was granted include those placed by the call it waited for.
const PLACE_CHANGES: &str = "
CREATE FUNCTION roster_place_changes(channel text, batch integer) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    head bigint;
    placed bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM change_log WHERE position IS NULL) THEN
        RETURN NULL;
    END IF;
    SELECT position INTO head FROM change_log_head WHERE id = 1 FOR UPDATE;
    WITH waiting AS (
        SELECT id, row_number() OVER (ORDER BY id) AS n FROM change_log
        WHERE position IS NULL ORDER BY id LIMIT batch
    )
    UPDATE change_log SET position = head + waiting.n
    FROM waiting WHERE change_log.id = waiting.id;
    GET DIAGNOSTICS placed = ROW_COUNT;
    IF placed = 0 THEN
        RETURN NULL;
    END IF;
    UPDATE change_log_head SET position = head + placed WHERE id = 1;
    PERFORM pg_notify(channel, 'placed:' || (head + placed));
    RETURN head + placed;
END
$$";
