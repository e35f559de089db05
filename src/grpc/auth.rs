//! Who is calling. In `dev` mode the end user is named by the `x-user-id` and `x-user-email`
//! metadata, trusted as sent; this mode is meant for loopback use and tests.

use tonic::metadata::MetadataMap;

use crate::domain::{Email, UserId};
use crate::error::Error;
use crate::service::Actor;

/// Metadata key naming the end user in dev mode.
pub const USER_ID_HEADER: &str = "x-user-id";
/// Metadata key carrying the end user's email in dev mode.
pub const USER_EMAIL_HEADER: &str = "x-user-email";

/// Reads the actor from request metadata.
pub fn actor(metadata: &MetadataMap) -> Result<Actor, Error> {
    let Some(raw) = metadata.get(USER_ID_HEADER) else {
        return Err(Error::Unauthenticated(format!(
            "no caller identity: send the {USER_ID_HEADER} metadata"
        )));
    };
    let text = raw
        .to_str()
        .map_err(|_| Error::Unauthenticated(format!("{USER_ID_HEADER} must be printable ASCII")))?;
    let user_id = UserId::parse(text)
        .map_err(|e| Error::Unauthenticated(format!("{USER_ID_HEADER} {}", e.0)))?;
    let email = match metadata.get(USER_EMAIL_HEADER) {
        None => None,
        Some(raw) => {
            let text = raw.to_str().map_err(|_| {
                Error::Unauthenticated(format!("{USER_EMAIL_HEADER} must be printable ASCII"))
            })?;
            Some(
                Email::parse(text)
                    .map_err(|e| Error::Unauthenticated(format!("{USER_EMAIL_HEADER} {e}")))?,
            )
        }
    };
    Ok(Actor { user_id, email })
}
