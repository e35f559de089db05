//! The one error type of Roster's services and storage. The gRPC edge maps each variant to a
//! status code in `grpc::status`.

use sea_orm::DbErr;

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field's path in the request, for example `workspace_grants[1].access`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub description: String,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; each bad field is named.
    #[error("invalid request: {}", describe(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// No credentials, or credentials that do not verify.
    #[error("{0}")]
    Unauthenticated(String),
    /// The actor is known and may see the resource, but may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The named resource does not exist, or the actor may not know that it does.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The resource to create exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The resource is not in a state that allows the request.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A limit was reached; retrying later may succeed.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The database or another dependency is unreachable; retrying later may succeed.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected failure; the cause is logged, never sent to clients.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

fn describe(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{} {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    /// A request with one bad field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Error::InvalidArgument(vec![FieldViolation {
            field: field.into(),
            description: description.into(),
        }])
    }

    /// An unexpected failure with its cause.
    pub fn internal(cause: impl Into<anyhow::Error>) -> Self {
        Error::Internal(cause.into())
    }
}

/// Collects every bad field of a request before failing, so a client fixes them in one go.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// An empty collection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a bad field.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation { field: field.into(), description: description.into() });
    }

    /// Takes the value of a check, recording the field on failure.
    pub fn check<T, E: Into<String>>(&mut self, field: &str, result: Result<T, E>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(description) => {
                self.add(field, description);
                None
            }
        }
    }

    /// Takes the value of a validation that reports its own fields.
    pub fn absorb<T>(&mut self, result: Result<T, Error>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(Error::InvalidArgument(violations)) => {
                self.0.extend(violations);
                None
            }
            Err(other) => {
                self.add("request", other.to_string());
                None
            }
        }
    }

    /// The error for the recorded fields; called when a check returned `None`, which means a
    /// field was recorded.
    pub fn into_error(self) -> Error {
        Error::InvalidArgument(self.0)
    }

    /// Fails if any field was bad.
    pub fn finish(self) -> Result<(), Error> {
        if self.0.is_empty() { Ok(()) } else { Err(Error::InvalidArgument(self.0)) }
    }
}

impl From<DbErr> for Error {
    fn from(err: DbErr) -> Self {
        match &err {
            DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => {
                Error::Unavailable("the database is unavailable; retry later".to_owned())
            }
            _ if is_connection_failure(&err) => {
                Error::Unavailable("the database is unavailable; retry later".to_owned())
            }
            _ if is_transient_conflict(&err) => {
                Error::Unavailable("a concurrent change conflicted with this one; retry".to_owned())
            }
            _ => Error::Internal(anyhow::Error::new(err).context("database")),
        }
    }
}

/// Whether PostgreSQL aborted the statement to resolve a deadlock or a serialization conflict,
/// which a retry resolves.
fn is_transient_conflict(err: &DbErr) -> bool {
    use sea_orm::RuntimeErr;
    let (DbErr::Exec(RuntimeErr::SqlxError(sqlx)) | DbErr::Query(RuntimeErr::SqlxError(sqlx))) =
        err
    else {
        return false;
    };
    match sqlx.as_ref() {
        sea_orm::sqlx::Error::Database(db) => {
            matches!(db.code().as_deref(), Some("40P01") | Some("40001"))
        }
        _ => false,
    }
}

/// Whether a query failed because the database could not be reached, as opposed to a failure
/// of the statement itself.
fn is_connection_failure(err: &DbErr) -> bool {
    use sea_orm::RuntimeErr;
    use sea_orm::sqlx::Error as SqlxError;
    let runtime = match err {
        DbErr::Exec(runtime) | DbErr::Query(runtime) => runtime,
        _ => return false,
    };
    match runtime {
        RuntimeErr::SqlxError(sqlx) => matches!(
            sqlx.as_ref(),
            SqlxError::Io(_)
                | SqlxError::PoolTimedOut
                | SqlxError::PoolClosed
                | SqlxError::WorkerCrashed
                | SqlxError::Tls(_)
        ),
        _ => false,
    }
}
