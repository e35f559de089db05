//! Identifier newtypes, so that an organization id can never be passed where a workspace id is
//! expected.

use std::fmt;

use uuid::Uuid;

/// Why an identifier was rejected; the caller names the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdError(pub &'static str);

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        impl $name {
            /// A new time-ordered id, so that ordering by id is ordering by creation.
            pub fn generate() -> Self {
                Self(Uuid::now_v7())
            }

            /// Wraps a stored UUID.
            pub fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }

            /// Parses the canonical hyphenated form sent by clients.
            pub fn parse(text: &str) -> Result<Self, IdError> {
                if text.is_empty() {
                    return Err(IdError("is required"));
                }
                // Only the hyphenated form: one spelling per id keeps ids comparable as text.
                if text.len() != 36 {
                    return Err(IdError("must be a UUID such as 0190c3b2-7d1e-7a3c-9f00-5b1d2c3e4f50"));
                }
                Uuid::try_parse(text)
                    .map(Self)
                    .map_err(|_| IdError("must be a UUID such as 0190c3b2-7d1e-7a3c-9f00-5b1d2c3e4f50"))
            }

            /// The UUID, for storage.
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }
    };
}

uuid_id!(
    /// Identifies an organization.
    OrganizationId
);
uuid_id!(
    /// Identifies a workspace.
    WorkspaceId
);
uuid_id!(
    /// Identifies an invitation.
    InvitationId
);
uuid_id!(
    /// Identifies an audit event.
    AuditEventId
);
uuid_id!(
    /// A caller's name for one TeamService change (`request_id`, AIP-155), so that a retry of
    /// it is answered instead of applied again.
    ChangeRequestId
);

/// The identity provider's stable subject for a user: 1 to 255 printable characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(String);

impl UserId {
    /// Longest accepted user id, in characters.
    pub const MAX_CHARS: usize = 255;

    /// Validates a user id sent by a client or read from credentials.
    pub fn parse(text: &str) -> Result<Self, IdError> {
        Self::validate(text)?;
        Ok(Self(text.to_owned()))
    }

    /// Validates a user id the caller already owns, without copying it.
    pub fn parse_owned(text: String) -> Result<Self, IdError> {
        Self::validate(&text)?;
        Ok(Self(text))
    }

    /// Checks a user id without keeping it.
    pub fn validate(text: &str) -> Result<(), IdError> {
        // Most subjects are short printable ASCII; those pass in one pass over the bytes.
        if Self::is_plain_ascii(text) {
            return Ok(());
        }
        Self::validate_any(text)
    }

    /// Printable ASCII, 1 to 255 bytes, no space at either end: valid by every rule below.
    fn is_plain_ascii(text: &str) -> bool {
        let bytes = text.as_bytes();
        (1..=Self::MAX_CHARS).contains(&bytes.len())
            && bytes.iter().all(|b| (b' '..=b'~').contains(b))
            && bytes.first() != Some(&b' ')
            && bytes.last() != Some(&b' ')
    }

    fn validate_any(text: &str) -> Result<(), IdError> {
        if text.is_empty() {
            return Err(IdError("is required"));
        }
        if text.chars().count() > Self::MAX_CHARS {
            return Err(IdError("must be at most 255 characters"));
        }
        // Printable: no control characters and no surrounding blanks that would make two
        // spellings of one subject.
        if text.chars().any(char::is_control) || text.trim() != text {
            return Err(IdError("must be printable characters without leading or trailing spaces"));
        }
        Ok(())
    }

    /// Wraps a user id known to be valid: read from the database, or already checked with
    /// [`UserId::validate`].
    pub fn from_stored(text: String) -> Self {
        Self(text)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A valid user id borrowed from a request or a [`UserId`], for checks that need not own it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserIdRef<'a>(&'a str);

impl<'a> UserIdRef<'a> {
    /// Validates a user id sent by a client, without copying it.
    pub fn parse(text: &'a str) -> Result<Self, IdError> {
        UserId::validate(text)?;
        Ok(Self(text))
    }

    /// The id as text.
    pub fn as_str(self) -> &'a str {
        self.0
    }

    /// An owned copy.
    pub fn to_user_id(self) -> UserId {
        UserId(self.0.to_owned())
    }
}

impl<'a> From<&'a UserId> for UserIdRef<'a> {
    fn from(id: &'a UserId) -> Self {
        Self(&id.0)
    }
}

impl fmt::Display for UserIdRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_only_the_hyphenated_form() {
        let id = OrganizationId::generate();
        assert_eq!(OrganizationId::parse(&id.to_string()), Ok(id));
        assert!(OrganizationId::parse(&id.as_uuid().simple().to_string()).is_err());
        assert!(OrganizationId::parse("").is_err());
        assert!(OrganizationId::parse("not-a-uuid-but-36-characters-long!!!").is_err());
    }

    #[test]
    fn user_ids_reject_control_characters_and_overlong_values() {
        assert!(UserId::parse("auth0|1234").is_ok());
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse("a\u{0}b").is_err());
        assert!(UserId::parse(" padded").is_err());
        assert!(UserId::parse(&"x".repeat(255)).is_ok());
        assert!(UserId::parse(&"x".repeat(256)).is_err());
        assert!(UserId::parse("trailing ").is_err());
        assert!(UserId::parse("inner space").is_ok());
        assert!(UserId::parse(&"é".repeat(255)).is_ok());
        assert!(UserId::parse(&"é".repeat(256)).is_err());
    }

    proptest::proptest! {
        /// The ASCII shortcut accepts only what the full rules accept.
        #[test]
        fn the_ascii_shortcut_agrees_with_the_full_rules(
            text in proptest::prop_oneof![
                proptest::string::string_regex("[ -~]{0,260}").unwrap(),
                proptest::string::string_regex(" ?[!-~]{0,20} ?").unwrap(),
                proptest::string::string_regex("[ -~\\t\\x00\\x7f\\u{a0}\\u{2028}é]{0,30}").unwrap(),
            ]
        ) {
            if UserId::is_plain_ascii(&text) {
                proptest::prop_assert_eq!(UserId::validate_any(&text), Ok(()));
            }
            proptest::prop_assert_eq!(
                UserId::validate(&text).is_ok(),
                UserId::validate_any(&text).is_ok()
            );
        }
    }
}
