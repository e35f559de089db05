//! Erases every email body stored in the outbox: they held invitation tokens, which must exist
//! nowhere at rest, and voids those tokens. From this release on the worker renders each email
//! when it sends it, with a token minted then (see `email::worker`), so an email that was
//! waiting goes out with a new token. On SQLite the erasure runs with secure delete on, so that the freed space of an
//! upgraded database file is zeroed rather than left holding old tokens.
//!
//! The columns stay, unused, so that processes of the previous release can run beside this one
//! during a rollout (they still write bodies, which this release's worker erases when it claims
//! the row); a later release drops them.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    // One transaction, so that on SQLite the update runs on the connection with secure delete.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let sqlite = manager.get_database_backend() == sea_orm::DbBackend::Sqlite;
        if sqlite {
            db.execute_unprepared("PRAGMA secure_delete = ON").await?;
        }
        // A body is left only on an invitation's latest, unsent email, whose token exists
        // nowhere else: it stops working. A waiting email goes out with a new token; a failed
        // one needs a resend, as it did before.
        let id_text = if sqlite { "lower(hex(id))" } else { "id::text" };
        db.execute_unprepared(&format!(
            "UPDATE invitations SET token_hash = 'none:' || {id_text} WHERE id IN \
             (SELECT invitation_id FROM outbox WHERE body_text IS NOT NULL OR body_html IS NOT NULL)"
        ))
        .await?;
        db.execute_unprepared(
            "UPDATE outbox SET body_text = NULL, body_html = NULL \
             WHERE body_text IS NOT NULL OR body_html IS NOT NULL",
        )
        .await?;
        if sqlite {
            // Back to the default for this pooled connection, like every other.
            db.execute_unprepared("PRAGMA secure_delete = OFF").await?;
        }
        Ok(())
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        // Nothing to undo: erased bodies cannot come back, and the schema did not change. A
        // previous release skips waiting emails without a body; resend those invitations.
        Ok(())
    }
}
