//! The change log: every organization gets a revision, and every change a row with the
//! organization, its revision, a position in one order of commits across organizations, the
//! actor, the audit event and what the change did to access.
//!
//! Rows do not reference their organization: a deleted organization's last change must outlive
//! it for consumers to learn of the deletion; retention removes old rows.
//!
//! Positions follow commit order. On SQLite the one writer commits in the order positions are
//! taken (AUTOINCREMENT never reuses one); on PostgreSQL each change takes its position from
//! `change_log_head` in its last statement and holds that row's lock until it commits, so the
//! next change's position is taken only after it committed.

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
        let mut position = ColumnDef::new(ChangeLog::Position);
        if manager.get_database_backend() == sea_orm::DbBackend::Sqlite {
            position.integer().auto_increment().primary_key();
        } else {
            position.big_integer().not_null().primary_key();
        }
        manager
            .create_table(
                Table::create()
                    .table(ChangeLog::Table)
                    .col(position)
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
