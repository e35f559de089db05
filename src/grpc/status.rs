//! The one mapping from [`Error`] to a gRPC status.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::error::Error;

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match err {
            Error::InvalidArgument(violations) => {
                let message = err_message(&violations);
                let details = ErrorDetails::with_bad_request(
                    violations
                        .into_iter()
                        .map(|v| FieldViolation::new(v.field, v.description))
                        .collect::<Vec<_>>(),
                );
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            Error::Unauthenticated(message) => Status::unauthenticated(message),
            Error::PermissionDenied(message) => Status::permission_denied(message),
            Error::NotFound(what) => Status::not_found(format!("{what} not found")),
            Error::AlreadyExists(message) => Status::already_exists(message),
            Error::FailedPrecondition(message) => Status::failed_precondition(message),
            Error::ResourceExhausted(message) => Status::resource_exhausted(message),
            Error::Unavailable(message) => Status::unavailable(message),
            Error::Internal(cause) => {
                // Logged once here with its chain; the client gets no internals.
                tracing::error!(error = ?cause, "internal error");
                Status::internal("internal error; it has been logged")
            }
        }
    }
}

fn err_message(violations: &[crate::error::FieldViolation]) -> String {
    let fields: Vec<String> =
        violations.iter().map(|v| format!("{} {}", v.field, v.description)).collect();
    format!("invalid request: {}", fields.join("; "))
}
