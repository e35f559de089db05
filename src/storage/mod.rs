//! Persistence: SeaORM entities, migrations and the repository functions the services call.

pub mod changes;
pub mod entity;
pub mod feed;
pub mod migration;
pub mod repo;
pub mod snapshot;

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, Database, DatabaseConnection, DatabaseTransaction, DbBackend, TransactionTrait,
};
use sea_orm_migration::MigratorTrait;
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::error::Error;

/// The database behind Roster: a SQLite file or PostgreSQL.
#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
    /// SQLite allows one writer at a time; serializing write transactions in the process avoids
    /// `SQLITE_BUSY` when a transaction that began by reading later wants to write.
    sqlite_writer: Option<Arc<Mutex<()>>>,
}

/// The PostgreSQL advisory lock key that serializes migrations ("roster" in ASCII).
const MIGRATION_LOCK: i64 = 0x726f_7374_6572;

/// A snapshot of the connection pool.
#[derive(Debug, Clone, Copy)]
pub struct PoolUse {
    /// Connections open, idle or lent out.
    pub open: u32,
    /// Open connections nobody is using.
    pub idle: u32,
    /// The most the pool will open.
    pub max: u32,
}

/// A write transaction. Dropping it without [`WriteTx::commit`] rolls it back.
pub struct WriteTx {
    tx: DatabaseTransaction,
    _writer: Option<OwnedMutexGuard<()>>,
}

impl Deref for WriteTx {
    type Target = DatabaseTransaction;

    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl WriteTx {
    /// Commits the transaction.
    pub async fn commit(self) -> Result<(), Error> {
        self.tx.commit().await.map_err(Error::from)
    }
}

impl Store {
    /// Connects to `url` (`sqlite://path?mode=rwc` or `postgres://…`).
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let mut options = ConnectOptions::new(url.to_owned());
        options
            .sqlx_logging(false)
            .acquire_timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(5));
        let is_sqlite = url.starts_with("sqlite:");
        if is_sqlite {
            options
                // Readers never wait for the writer in WAL mode, so reads can use several
                // connections while writes are serialized.
                .max_connections(8)
                .min_connections(1)
                .map_sqlx_sqlite_opts(|opts| {
                    opts.journal_mode(SqliteJournalMode::Wal)
                        .synchronous(SqliteSynchronous::Normal)
                        .busy_timeout(Duration::from_secs(10))
                        .foreign_keys(true)
                        .create_if_missing(true)
                });
        } else {
            options.max_connections(20).min_connections(1);
        }
        let db = Database::connect(options)
            .await
            .with_context(|| format!("cannot open the database at {}", redact_url(url)))?;
        Ok(Self { db, sqlite_writer: is_sqlite.then(|| Arc::new(Mutex::new(()))) })
    }

    /// Applies every pending migration.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        if self.backend() != DbBackend::Postgres {
            return migration::Migrator::up(&self.db, None).await.context("applying migrations");
        }
        // Replicas starting together (or several `roster migrate` init containers) take turns:
        // the first applies what is pending, the others then find nothing to do.
        let mut lock = self
            .db
            .get_postgres_connection_pool()
            .acquire()
            .await
            .context("connecting to take the migration lock")?;
        sea_orm::sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *lock)
            .await
            .context("taking the migration lock")?;
        let applied = migration::Migrator::up(&self.db, None).await.context("applying migrations");
        let _ = sea_orm::sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *lock)
            .await;
        applied
    }

    /// The connection for reads outside a transaction.
    pub fn reader(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Which database this is.
    pub fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    /// Begins a write transaction.
    pub async fn begin_write(&self) -> Result<WriteTx, Error> {
        let writer = match &self.sqlite_writer {
            Some(lock) => Some(lock.clone().lock_owned().await),
            None => None,
        };
        let tx = self.db.begin().await?;
        Ok(WriteTx { tx, _writer: writer })
    }

    /// How the connection pool is used right now.
    pub fn pool_use(&self) -> PoolUse {
        macro_rules! read {
            ($pool:expr) => {{
                let pool = $pool;
                PoolUse {
                    open: pool.size(),
                    idle: u32::try_from(pool.num_idle()).unwrap_or(u32::MAX),
                    max: pool.options().get_max_connections(),
                }
            }};
        }
        // The getters panic on the other backend, hence the match.
        match self.backend() {
            DbBackend::Sqlite => read!(self.db.get_sqlite_connection_pool()),
            _ => read!(self.db.get_postgres_connection_pool()),
        }
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), Error> {
        self.db.ping().await.map_err(Error::from)
    }

    /// Closes the pool.
    pub async fn close(self) {
        let _ = self.db.close().await;
    }
}

/// The URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            super::redact_url("postgres://roster:s3cret@db:5432/roster"),
            "postgres://roster:***@db:5432/roster"
        );
        assert_eq!(super::redact_url("sqlite://roster.db?mode=rwc"), "sqlite://roster.db?mode=rwc");
    }
}
