//! The first schema: organizations, members, workspaces, grants, invitations, the email outbox
//! and the audit log. Times are microseconds since the Unix epoch in BIGINT columns, which compare
//! the same way on both databases.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Organizations {
    Table,
    Id,
    DisplayName,
    InvitationTtlSecs,
    CreateTime,
    UpdateTime,
}

#[derive(DeriveIden)]
enum Members {
    Table,
    OrganizationId,
    UserId,
    Email,
    Role,
    CreateTime,
}

#[derive(DeriveIden)]
enum Workspaces {
    Table,
    Id,
    OrganizationId,
    DisplayName,
    CreateTime,
}

#[derive(DeriveIden)]
enum WorkspaceGrants {
    Table,
    OrganizationId,
    WorkspaceId,
    UserId,
    Access,
}

#[derive(DeriveIden)]
enum Invitations {
    Table,
    Id,
    OrganizationId,
    Email,
    Role,
    State,
    TokenHash,
    InviterUserId,
    CreateTime,
    ExpireTime,
    SendCount,
    DeliveryState,
    LastDeliveryError,
    UpdateTime,
}

#[derive(DeriveIden)]
enum InvitationGrants {
    Table,
    InvitationId,
    OrganizationId,
    WorkspaceId,
    Access,
}

#[derive(DeriveIden)]
enum Outbox {
    Table,
    Id,
    InvitationId,
    SendNumber,
    Recipient,
    Subject,
    BodyText,
    BodyHtml,
    State,
    Attempts,
    NextAttemptTime,
    LastError,
    CreateTime,
}

#[derive(DeriveIden)]
enum AuditEvents {
    Table,
    Id,
    OrganizationId,
    ActorUserId,
    Action,
    Target,
    Details,
    CreateTime,
}

fn text(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).text().not_null().to_owned()
}

fn uuid(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).uuid().not_null().to_owned()
}

fn micros(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).big_integer().not_null().to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Organizations::Table)
                    .col(uuid(Organizations::Id).primary_key())
                    .col(text(Organizations::DisplayName))
                    .col(ColumnDef::new(Organizations::InvitationTtlSecs).big_integer().not_null())
                    .col(micros(Organizations::CreateTime))
                    .col(micros(Organizations::UpdateTime))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Members::Table)
                    .col(uuid(Members::OrganizationId))
                    .col(text(Members::UserId))
                    .col(text(Members::Email))
                    .col(text(Members::Role))
                    .col(micros(Members::CreateTime))
                    // One membership per user and organization.
                    .primary_key(Index::create().col(Members::OrganizationId).col(Members::UserId))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Members::Table, Members::OrganizationId)
                            .to(Organizations::Table, Organizations::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("members_by_user")
                    .table(Members::Table)
                    .col(Members::UserId)
                    .col(Members::OrganizationId)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Workspaces::Table)
                    .col(uuid(Workspaces::Id).primary_key())
                    .col(uuid(Workspaces::OrganizationId))
                    .col(text(Workspaces::DisplayName))
                    .col(micros(Workspaces::CreateTime))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Workspaces::Table, Workspaces::OrganizationId)
                            .to(Organizations::Table, Organizations::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // Lets grants reference (organization, workspace) so a grant can never cross organizations.
        manager
            .create_index(
                Index::create()
                    .name("workspaces_by_organization")
                    .table(Workspaces::Table)
                    .col(Workspaces::OrganizationId)
                    .col(Workspaces::Id)
                    .unique()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(WorkspaceGrants::Table)
                    .col(uuid(WorkspaceGrants::OrganizationId))
                    .col(uuid(WorkspaceGrants::WorkspaceId))
                    .col(text(WorkspaceGrants::UserId))
                    .col(text(WorkspaceGrants::Access))
                    .primary_key(
                        Index::create()
                            .col(WorkspaceGrants::WorkspaceId)
                            .col(WorkspaceGrants::UserId),
                    )
                    // Rule 4: grants go with their member...
                    .foreign_key(
                        ForeignKey::create()
                            .from(
                                WorkspaceGrants::Table,
                                (WorkspaceGrants::OrganizationId, WorkspaceGrants::UserId),
                            )
                            .to(Members::Table, (Members::OrganizationId, Members::UserId))
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    // ...and with their workspace, which must be in the same organization.
                    .foreign_key(
                        ForeignKey::create()
                            .from(
                                WorkspaceGrants::Table,
                                (WorkspaceGrants::OrganizationId, WorkspaceGrants::WorkspaceId),
                            )
                            .to(Workspaces::Table, (Workspaces::OrganizationId, Workspaces::Id))
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("workspace_grants_by_member")
                    .table(WorkspaceGrants::Table)
                    .col(WorkspaceGrants::OrganizationId)
                    .col(WorkspaceGrants::UserId)
                    .col(WorkspaceGrants::WorkspaceId)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Invitations::Table)
                    .col(uuid(Invitations::Id).primary_key())
                    .col(uuid(Invitations::OrganizationId))
                    .col(text(Invitations::Email))
                    .col(text(Invitations::Role))
                    .col(text(Invitations::State))
                    .col(text(Invitations::TokenHash))
                    .col(text(Invitations::InviterUserId))
                    .col(micros(Invitations::CreateTime))
                    .col(micros(Invitations::ExpireTime))
                    .col(ColumnDef::new(Invitations::SendCount).integer().not_null())
                    .col(text(Invitations::DeliveryState))
                    .col(ColumnDef::new(Invitations::LastDeliveryError).text().null())
                    .col(micros(Invitations::UpdateTime))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Invitations::Table, Invitations::OrganizationId)
                            .to(Organizations::Table, Organizations::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("invitations_by_token_hash")
                    .table(Invitations::Table)
                    .col(Invitations::TokenHash)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("invitations_by_organization")
                    .table(Invitations::Table)
                    .col(Invitations::OrganizationId)
                    .col(Invitations::Id)
                    .to_owned(),
            )
            .await?;
        // One pending invitation per email and organization, enforced even under races. The
        // statement is the same on SQLite and PostgreSQL.
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE UNIQUE INDEX invitations_one_pending_per_email \
                 ON invitations (organization_id, email) WHERE state = 'pending'",
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(InvitationGrants::Table)
                    .col(uuid(InvitationGrants::InvitationId))
                    .col(uuid(InvitationGrants::OrganizationId))
                    .col(uuid(InvitationGrants::WorkspaceId))
                    .col(text(InvitationGrants::Access))
                    .primary_key(
                        Index::create()
                            .col(InvitationGrants::InvitationId)
                            .col(InvitationGrants::WorkspaceId),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(InvitationGrants::Table, InvitationGrants::InvitationId)
                            .to(Invitations::Table, Invitations::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(
                                InvitationGrants::Table,
                                (InvitationGrants::OrganizationId, InvitationGrants::WorkspaceId),
                            )
                            .to(Workspaces::Table, (Workspaces::OrganizationId, Workspaces::Id))
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Outbox::Table)
                    .col(uuid(Outbox::Id).primary_key())
                    .col(uuid(Outbox::InvitationId))
                    .col(ColumnDef::new(Outbox::SendNumber).integer().not_null())
                    .col(text(Outbox::Recipient))
                    .col(text(Outbox::Subject))
                    // Bodies hold the token; they are cleared once the email is sent.
                    .col(ColumnDef::new(Outbox::BodyText).text().null())
                    .col(ColumnDef::new(Outbox::BodyHtml).text().null())
                    .col(text(Outbox::State))
                    .col(ColumnDef::new(Outbox::Attempts).integer().not_null())
                    .col(micros(Outbox::NextAttemptTime))
                    .col(ColumnDef::new(Outbox::LastError).text().null())
                    .col(micros(Outbox::CreateTime))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Outbox::Table, Outbox::InvitationId)
                            .to(Invitations::Table, Invitations::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("outbox_due")
                    .table(Outbox::Table)
                    .col(Outbox::State)
                    .col(Outbox::NextAttemptTime)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(AuditEvents::Table)
                    .col(uuid(AuditEvents::Id).primary_key())
                    // No foreign key: the record of an organization's deletion outlives it.
                    .col(uuid(AuditEvents::OrganizationId))
                    .col(text(AuditEvents::ActorUserId))
                    .col(text(AuditEvents::Action))
                    .col(text(AuditEvents::Target))
                    .col(text(AuditEvents::Details))
                    .col(micros(AuditEvents::CreateTime))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("audit_events_by_organization")
                    .table(AuditEvents::Table)
                    .col(AuditEvents::OrganizationId)
                    .col(AuditEvents::Id)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            AuditEvents::Table.into_iden(),
            Outbox::Table.into_iden(),
            InvitationGrants::Table.into_iden(),
            Invitations::Table.into_iden(),
            WorkspaceGrants::Table.into_iden(),
            Workspaces::Table.into_iden(),
            Members::Table.into_iden(),
            Organizations::Table.into_iden(),
        ] {
            manager.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}
