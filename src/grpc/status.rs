//! The one mapping from [`Error`] to a gRPC status.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::error::{Error, ErrorReason, Kind};

/// The `domain` of every ErrorInfo Roster sends.
pub const ERROR_DOMAIN: &str = "roster";

/// The status code a reason is sent with.
pub fn code(kind: Kind) -> Code {
    match kind {
        Kind::InvalidArgument => Code::InvalidArgument,
        Kind::DeadlineExceeded => Code::DeadlineExceeded,
        Kind::Unimplemented => Code::Unimplemented,
        Kind::OutOfRange => Code::OutOfRange,
        Kind::Unauthenticated => Code::Unauthenticated,
        Kind::PermissionDenied => Code::PermissionDenied,
        Kind::AlreadyExists => Code::AlreadyExists,
        Kind::FailedPrecondition => Code::FailedPrecondition,
        Kind::ResourceExhausted => Code::ResourceExhausted,
        Kind::Unavailable => Code::Unavailable,
    }
}

/// A status for a refusal, with its reason as ErrorInfo; for the layers that answer before a
/// handler runs.
pub fn refused(reason: ErrorReason, message: impl Into<String>) -> Status {
    Status::from(Error::refused(reason, message))
}

fn error_info(reason: &str, metadata: HashMap<String, String>) -> ErrorDetails {
    ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata)
}

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
                let mut details = error_info("INVALID_ARGUMENT", HashMap::new());
                details.set_bad_request(
                    violations
                        .into_iter()
                        .map(|v| FieldViolation::new(v.field, v.description))
                        .collect::<Vec<_>>(),
                );
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            Error::NotFound(what) => {
                // The same answer whether the resource is absent or hidden from the caller.
                let metadata = HashMap::from([("resource".to_owned(), what.to_owned())]);
                let details = error_info("NOT_FOUND", metadata);
                Status::with_error_details(Code::NotFound, format!("{what} not found"), details)
            }
            Error::Refused { reason, message, metadata } => {
                let metadata = metadata.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
                let details = error_info(reason.as_str(), metadata);
                Status::with_error_details(code(reason.kind()), message, details)
            }
            Error::Internal(cause) => {
                // Logged once here with its chain; the client gets no internals.
                tracing::error!(error = ?cause, "internal error");
                let details = error_info("INTERNAL", HashMap::new());
                Status::with_error_details(
                    Code::Internal,
                    "internal error; it has been logged",
                    details,
                )
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

    #[test]
    fn each_reason_is_documented_in_the_proto_with_the_code_it_is_sent_with() {
        // Each value of ErrorReason with the status code its comment begins with.
        let proto = include_str!("../../proto/roster/v1/errors.proto");
        let mut documented = HashMap::new();
        let mut comment = String::new();
        for line in proto.lines().map(str::trim) {
            if let Some(text) = line.strip_prefix("// ") {
                if comment.is_empty() {
                    comment = text.to_owned();
                }
            } else if let Some((name, _)) = line
                .split_once(" = ")
                .filter(|(name, _)| name.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
            {
                let code = comment.split(':').next().unwrap_or_default().to_owned();
                documented.insert(name.to_owned(), code);
                comment.clear();
            } else {
                comment.clear();
            }
        }
        for reason in ErrorReason::ALL {
            let name = reason.as_str();
            assert!(crate::pb::ErrorReason::from_str_name(name).is_some(), "{name} in the enum");
            let code = format!("{:?}", code(reason.kind()));
            let expected = documented.get(name).map(|c| c.replace('_', "").to_lowercase());
            assert_eq!(expected, Some(code.to_lowercase()), "{name}'s comment names its code");
        }
        for sent in ["INVALID_ARGUMENT", "NOT_FOUND", "INTERNAL"] {
            assert!(crate::pb::ErrorReason::from_str_name(sent).is_some(), "{sent}");
        }
        // Nothing documented that is never sent.
        assert_eq!(documented.len(), ErrorReason::ALL.len() + 4, "{documented:?}");
    }
}
