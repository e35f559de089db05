//! Persistence: SeaORM entities, migrations and the repository functions the services call.

pub mod authz;
pub mod changelog;
mod columns;
pub mod entity;
pub mod feed;
pub mod migration;
pub mod placer;
pub mod repo;

use std::io::{Read as _, Write as _};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
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
    /// The lock that makes a SQLite file this process's alone, until [`Store::close`] or the
    /// process ends.
    sqlite_lock: Option<Arc<std::sync::Mutex<Option<std::fs::File>>>>,
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
        // Before the file is opened: a second process must not even migrate it.
        let sqlite_lock = match is_sqlite.then(|| sqlite_file(url)).flatten() {
            Some(path) => Some(Arc::new(std::sync::Mutex::new(Some(lock_sqlite_file(&path)?)))),
            None => None,
        };
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
        Ok(Self { db, sqlite_writer: is_sqlite.then(|| Arc::new(Mutex::new(()))), sqlite_lock })
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

    /// Closes the pool, and lets another process have the SQLite file.
    pub async fn close(self) {
        let _ = self.db.close().await;
        // Every clone shares the closed pool, so none can use the file any more.
        if let Some(lock) = self.sqlite_lock {
            lock.lock().unwrap_or_else(|p| p.into_inner()).take();
        }
    }
}

/// The database file a SQLite URL names; `None` for an in-memory database, which no other
/// process can open.
fn sqlite_file(url: &str) -> Option<PathBuf> {
    let options = SqliteConnectOptions::from_str(url).ok()?;
    let in_memory = url
        .split_once('?')
        .is_some_and(|(_, query)| query.split('&').any(|pair| pair == "mode=memory"))
        || options.get_filename().to_string_lossy().starts_with("file:sqlx-in-memory-");
    (!in_memory).then(|| options.get_filename().to_path_buf())
}

/// Takes the advisory lock that keeps a SQLite file to one Roster process, on a file beside
/// it (`roster.db.lock` for `roster.db`). Several processes on one file would each answer
/// Authorize from an index that the others' changes never reach, so a second one must not
/// start. The operating system drops the lock with the process, however it ends. Not the
/// database file itself: SQLite's own POSIX locks on it are dropped whenever any descriptor of
/// this process on that file closes, so Roster keeps its hands off it.
fn lock_sqlite_file(database: &Path) -> anyhow::Result<std::fs::File> {
    // The same file by whatever path it is named: the database itself once it exists, or the
    // folder it will be created in.
    let database = std::fs::canonicalize(database).unwrap_or_else(|_| {
        match (database.parent().map(std::fs::canonicalize), database.file_name()) {
            (Some(Ok(folder)), Some(name)) => folder.join(name),
            _ => database.to_path_buf(),
        }
    });
    let mut name = database.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    let path = database.with_file_name(name);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim().parse::<u32>() {
                Ok(pid) => format!("process {pid}"),
                Err(_) => "another process".to_owned(),
            };
            anyhow::bail!(
                "the SQLite database {} is in use by another Roster process ({holder} holds \
                 the lock on {}). A SQLite file serves one process at a time: stop the other \
                 one first, or use PostgreSQL (--database-url postgres://...) to run several \
                 replicas on one database",
                database.display(),
                path.display()
            );
        }
        Err(std::fs::TryLockError::Error(err)) => {
            return Err(err).with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    // For the message above, in the next process that tries; the lock is what counts.
    let _ = file.set_len(0).and_then(|()| write!(file, "{}", std::process::id()));
    Ok(file)
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
    use std::path::Path;

    #[test]
    fn a_sqlite_url_names_its_file_unless_in_memory() {
        assert_eq!(
            super::sqlite_file("sqlite://roster.db?mode=rwc").as_deref(),
            Some(Path::new("roster.db"))
        );
        assert_eq!(
            super::sqlite_file("sqlite:/var/lib/r.db").as_deref(),
            Some(Path::new("/var/lib/r.db"))
        );
        assert_eq!(super::sqlite_file("sqlite::memory:"), None);
        assert_eq!(super::sqlite_file("sqlite://x.db?mode=memory"), None);
    }

    #[test]
    fn one_sqlite_file_is_locked_once_by_whatever_path_it_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let database = dir.path().join("data/roster.db");
        let held = super::lock_sqlite_file(&database).unwrap();
        let other_spelling = dir.path().join("data/../data/roster.db");
        let refused = super::lock_sqlite_file(&other_spelling).unwrap_err().to_string();
        assert!(refused.contains("in use by another Roster process"), "{refused}");
        assert!(refused.contains(&format!("process {}", std::process::id())), "{refused}");
        assert!(dir.path().join("data/roster.db.lock").exists());
        drop(held);
        super::lock_sqlite_file(&other_spelling).expect("free once the holder is gone");
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            super::redact_url("postgres://roster:s3cret@db:5432/roster"),
            "postgres://roster:***@db:5432/roster"
        );
        assert_eq!(super::redact_url("sqlite://roster.db?mode=rwc"), "sqlite://roster.db?mode=rwc");
    }
}
