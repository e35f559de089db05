//! The one mapping from [`Error`] to a gRPC status.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::error::Error;

/// Field violations sent with one error. Every client reads the details from the trailers,
/// and gRPC's C-core clients refuse trailers beyond 8–16 KiB as RESOURCE_EXHAUSTED (a code that
/// invites a retry): a BatchAuthorize of a thousand bad checks would otherwise need 255 KB.
pub const MAX_VIOLATIONS: usize = 20;

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match err {
            Error::InvalidArgument(mut violations) => {
                let message = err_message(&violations);
                if violations.len() > MAX_VIOLATIONS {
                    let more = violations.len() - MAX_VIOLATIONS;
                    let first = violations[0].field.clone();
                    violations.truncate(MAX_VIOLATIONS);
                    // Named after the first field's top level (`checks`, say), for the rest.
                    let field = first.split(['.', '[']).next().unwrap_or("request").to_owned();
                    violations.push(crate::error::FieldViolation {
                        field,
                        description: format!(
                            "has {more} more invalid fields, not listed; fix those named and retry"
                        ),
                    });
                }
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

/// Fields named in the message itself; the details name the rest.
const FIELDS_IN_MESSAGE: usize = 3;

fn err_message(violations: &[crate::error::FieldViolation]) -> String {
    let fields: Vec<String> = violations
        .iter()
        .take(FIELDS_IN_MESSAGE)
        .map(|v| format!("{} {}", v.field, v.description))
        .collect();
    let mut message = format!("invalid request: {}", fields.join("; "));
    if violations.len() > FIELDS_IN_MESSAGE {
        let more = violations.len() - FIELDS_IN_MESSAGE;
        message.push_str(&format!("; and {more} more invalid fields (see the BadRequest details)"));
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Violations;

    #[test]
    fn a_thousand_bad_fields_are_reported_as_twenty_and_a_count() {
        let mut v = Violations::new();
        for i in 0..1000 {
            v.add(format!("checks[{i}].user_id"), "is required");
        }
        let status = Status::from(v.into_error());
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let fields = &details.bad_request().unwrap().field_violations;
        assert_eq!(fields.len(), MAX_VIOLATIONS + 1);
        assert_eq!(fields[0].field, "checks[0].user_id");
        assert_eq!(fields[MAX_VIOLATIONS].field, "checks");
        assert!(fields[MAX_VIOLATIONS].description.contains("980 more"), "{fields:?}");
        // What goes on the wire: the message and the encoded details, well under 8 KiB.
        let size = status.message().len() + status.details().len();
        assert!(size < 4096, "{size} bytes");
    }
}
