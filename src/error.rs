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
    /// The named resource does not exist, or the actor may not know that it does.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A refusal a client can act on. The reason decides the status code and travels to the
    /// client as `google.rpc.ErrorInfo`; the message is for people.
    #[error("{message}")]
    Refused {
        /// What a client branches on.
        reason: ErrorReason,
        /// What a person reads.
        message: String,
        /// Facts for the client, sent as the ErrorInfo's metadata (for example the permission
        /// that was missing).
        metadata: Vec<(&'static str, String)>,
    },
    /// A bug or an unexpected failure; the cause is logged, never sent to clients.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

macro_rules! reasons {
    ($($code:ident { $($variant:ident => $name:literal,)* })*) => {
        /// The machine-readable reason of a refusal: `ErrorReason` in the proto, whose comments
        /// say what each means (the variants are those names in CamelCase). Grouped by the
        /// status code each is sent with.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorReason {
            $($($variant,)*)*
        }

        /// The status code a reason is sent with, named as in gRPC.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Kind {
            $($code,)*
        }

        impl ErrorReason {
            /// Every reason.
            pub const ALL: &'static [ErrorReason] = &[$($(ErrorReason::$variant,)*)*];

            /// The ErrorInfo reason, for example `LAST_OWNER`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($(ErrorReason::$variant => $name,)*)*
                }
            }

            /// The status code it is sent with.
            pub fn kind(self) -> Kind {
                match self {
                    $($(ErrorReason::$variant => Kind::$code,)*)*
                }
            }
        }
    };
}

reasons! {
    InvalidArgument {
        MalformedMessage => "MALFORMED_MESSAGE",
    }
    DeadlineExceeded {
        CallTimedOut => "CALL_TIMED_OUT",
        MessageTimedOut => "MESSAGE_TIMED_OUT",
    }
    Unimplemented {
        UnknownMethod => "UNKNOWN_METHOD",
    }
    OutOfRange {
        ChangeLogPruned => "CHANGE_LOG_PRUNED",
    }
    Unauthenticated {
        CredentialsMissing => "CREDENTIALS_MISSING",
        CredentialsInvalid => "CREDENTIALS_INVALID",
        EmailUnusable => "EMAIL_UNUSABLE",
    }
    PermissionDenied {
        WrongCredentialKind => "WRONG_CREDENTIAL_KIND",
        PermissionMissing => "PERMISSION_MISSING",
        OwnerRequired => "OWNER_REQUIRED",
        EmailNotVerified => "EMAIL_NOT_VERIFIED",
        InvitationForAnotherEmail => "INVITATION_FOR_ANOTHER_EMAIL",
        OwnAccessOnly => "OWN_ACCESS_ONLY",
    }
    AlreadyExists {
        AlreadyMember => "ALREADY_MEMBER",
        EmailAlreadyMember => "EMAIL_ALREADY_MEMBER",
        InvitationPending => "INVITATION_PENDING",
    }
    FailedPrecondition {
        LastOwner => "LAST_OWNER",
        InvitationAccepted => "INVITATION_ACCEPTED",
        InvitationRevoked => "INVITATION_REVOKED",
        InvitationExpired => "INVITATION_EXPIRED",
        InviterMayNoLongerInvite => "INVITER_MAY_NO_LONGER_INVITE",
        InviteeAlreadyMember => "INVITEE_ALREADY_MEMBER",
        NewerInvitationPending => "NEWER_INVITATION_PENDING",
        OwnerHoldsEveryWorkspace => "OWNER_HOLDS_EVERY_WORKSPACE",
        RequestIdReused => "REQUEST_ID_REUSED",
        RequestAnswerLost => "REQUEST_ANSWER_LOST",
    }
    ResourceExhausted {
        RateLimited => "RATE_LIMITED",
        Overloaded => "OVERLOADED",
        StreamsExhausted => "STREAMS_EXHAUSTED",
        MessageTooLarge => "MESSAGE_TOO_LARGE",
        RequestBytesExhausted => "REQUEST_BYTES_EXHAUSTED",
        WatchConsumerTooSlow => "WATCH_CONSUMER_TOO_SLOW",
    }
    Unavailable {
        DatabaseUnavailable => "DATABASE_UNAVAILABLE",
        ConcurrentChange => "CONCURRENT_CHANGE",
        ChangeLogBehind => "CHANGE_LOG_BEHIND",
        ServerStopping => "SERVER_STOPPING",
        RequestInProgress => "REQUEST_IN_PROGRESS",
    }
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

    /// A refusal for `reason`, explained by `message`.
    pub fn refused(reason: ErrorReason, message: impl Into<String>) -> Self {
        Error::Refused { reason, message: message.into(), metadata: Vec::new() }
    }

    /// Adds a fact to a refusal's ErrorInfo metadata; other errors carry none.
    pub fn with(mut self, key: &'static str, value: impl Into<String>) -> Self {
        if let Error::Refused { metadata, .. } = &mut self {
            metadata.push((key, value.into()));
        }
        self
    }

    /// PERMISSION_MISSING: the caller's role does not hold `permission`.
    pub fn permission_missing(permission: &'static str) -> Self {
        Error::Refused {
            reason: ErrorReason::PermissionMissing,
            message: format!("your role does not include the permission {permission}"),
            metadata: vec![("permission", permission.to_owned())],
        }
    }

    /// This error of one item of a batch, with each bad field named by its path in the batch
    /// (`prefix` such as `invitations[2].`).
    pub fn within(self, prefix: &str) -> Self {
        match self {
            Error::InvalidArgument(violations) => Error::InvalidArgument(
                violations
                    .into_iter()
                    .map(|v| FieldViolation { field: format!("{prefix}{}", v.field), ..v })
                    .collect(),
            ),
            other => other,
        }
    }

    /// An unexpected failure with its cause.
    pub fn internal(cause: impl Into<anyhow::Error>) -> Self {
        Error::Internal(cause.into())
    }

    /// The refusal's reason, if it is one.
    pub fn reason(&self) -> Option<ErrorReason> {
        match self {
            Error::Refused { reason, .. } => Some(*reason),
            Error::InvalidArgument(_) | Error::NotFound(_) | Error::Internal(_) => None,
        }
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
            DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => unavailable(),
            _ if is_connection_failure(&err) => unavailable(),
            _ if is_transient_conflict(&err) => Error::refused(
                ErrorReason::ConcurrentChange,
                "a concurrent change conflicted with this one; retry",
            ),
            _ => Error::Internal(anyhow::Error::new(err).context("database")),
        }
    }
}

fn unavailable() -> Error {
    Error::refused(ErrorReason::DatabaseUnavailable, "the database is unavailable; retry later")
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
