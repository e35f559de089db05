//! Schema migrations, one set for SQLite and PostgreSQL. A merged migration is never edited;
//! changes come as new migrations.

use sea_orm_migration::prelude::*;

mod m20261127_000001_initial_schema;
mod m20261201_000002_erase_outbox_bodies;
mod m20261201_000003_change_log;
mod m20261202_000004_grant_ends;
mod m20261202_000005_request_ids;

/// Runs Roster's migrations.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261127_000001_initial_schema::Migration),
            Box::new(m20261201_000002_erase_outbox_bodies::Migration),
            Box::new(m20261201_000003_change_log::Migration),
            Box::new(m20261202_000004_grant_ends::Migration),
            Box::new(m20261202_000005_request_ids::Migration),
        ]
    }
}
