//! Safe retries (AIP-155): the request ids callers put on TeamService changes, each with what
//! the request was and, once it is ready, the answer to give a retry. Keyed by the caller, so
//! that one user's id never replays another user's answer. Rows do not reference an
//! organization: a retried DeleteOrganization must still find its answer.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum RequestIds {
    Table,
    UserId,
    RequestId,
    Method,
    Fingerprint,
    Response,
    CreateTime,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(RequestIds::Table)
                    .col(ColumnDef::new(RequestIds::UserId).text().not_null())
                    .col(ColumnDef::new(RequestIds::RequestId).uuid().not_null())
                    .col(ColumnDef::new(RequestIds::Method).text().not_null())
                    // SHA-256 of the method and the request's encoding.
                    .col(ColumnDef::new(RequestIds::Fingerprint).binary().not_null())
                    // The encoded response; empty until the change's answer is ready.
                    .col(ColumnDef::new(RequestIds::Response).binary().null())
                    .col(ColumnDef::new(RequestIds::CreateTime).big_integer().not_null())
                    .primary_key(Index::create().col(RequestIds::UserId).col(RequestIds::RequestId))
                    .to_owned(),
            )
            .await?;
        // What the sweep of old ids reads.
        manager
            .create_index(
                Index::create()
                    .name("request_ids_by_time")
                    .table(RequestIds::Table)
                    .col(RequestIds::CreateTime)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(RequestIds::Table).to_owned()).await
    }
}
