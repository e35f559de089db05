//! Time-bound access: a workspace grant (and an invitation's grant) may carry the instant it
//! ends and why it was given, and an organization may bound how long a grant may last. Every
//! new column is nullable or false: a grant without an end is permanent, as every grant was
//! before. An ended grant's row stays, marked once its end is recorded, so that decisions can
//! keep saying why access is gone.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum WorkspaceGrants {
    Table,
    ExpireTime,
    Reason,
    EndRecorded,
}

#[derive(DeriveIden)]
enum InvitationGrants {
    Table,
    ExpireTime,
    Reason,
}

#[derive(DeriveIden)]
enum Organizations {
    Table,
    MaxGrantSecs,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one at a time.
        let add = |table: DynIden, column: DynIden, big: bool| {
            let mut def = ColumnDef::new(column);
            if big {
                def.big_integer()
            } else {
                def.text()
            };
            Table::alter().table(table).add_column(def.null()).to_owned()
        };
        manager
            .alter_table(add(
                WorkspaceGrants::Table.into_iden(),
                WorkspaceGrants::ExpireTime.into_iden(),
                true,
            ))
            .await?;
        manager
            .alter_table(add(
                WorkspaceGrants::Table.into_iden(),
                WorkspaceGrants::Reason.into_iden(),
                false,
            ))
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(WorkspaceGrants::Table)
                    .add_column(
                        ColumnDef::new(WorkspaceGrants::EndRecorded)
                            .boolean()
                            .not_null()
                            .default(false),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(add(
                InvitationGrants::Table.into_iden(),
                InvitationGrants::ExpireTime.into_iden(),
                true,
            ))
            .await?;
        manager
            .alter_table(add(
                InvitationGrants::Table.into_iden(),
                InvitationGrants::Reason.into_iden(),
                false,
            ))
            .await?;
        manager
            .alter_table(add(
                Organizations::Table.into_iden(),
                Organizations::MaxGrantSecs.into_iden(),
                true,
            ))
            .await?;
        // The grants whose end is yet to be recorded, in the order they end: what the recorder
        // reads twice a second, which must not grow with the ends already recorded.
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE INDEX workspace_grants_by_end ON workspace_grants (expire_time) \
                 WHERE expire_time IS NOT NULL AND NOT end_recorded",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("DROP INDEX IF EXISTS workspace_grants_by_end").await?;
        let drop = |table: DynIden, column: DynIden| {
            Table::alter().table(table).drop_column(column).to_owned()
        };
        manager
            .alter_table(drop(
                Organizations::Table.into_iden(),
                Organizations::MaxGrantSecs.into_iden(),
            ))
            .await?;
        manager
            .alter_table(drop(
                InvitationGrants::Table.into_iden(),
                InvitationGrants::Reason.into_iden(),
            ))
            .await?;
        manager
            .alter_table(drop(
                InvitationGrants::Table.into_iden(),
                InvitationGrants::ExpireTime.into_iden(),
            ))
            .await?;
        manager
            .alter_table(drop(
                WorkspaceGrants::Table.into_iden(),
                WorkspaceGrants::EndRecorded.into_iden(),
            ))
            .await?;
        manager
            .alter_table(drop(
                WorkspaceGrants::Table.into_iden(),
                WorkspaceGrants::Reason.into_iden(),
            ))
            .await?;
        manager
            .alter_table(drop(
                WorkspaceGrants::Table.into_iden(),
                WorkspaceGrants::ExpireTime.into_iden(),
            ))
            .await?;
        Ok(())
    }
}
