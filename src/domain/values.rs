//! Validated values: roles, access levels, names and settings.

use std::time::Duration;

/// A member's role in an organization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Full control, WRITE on every workspace.
    Owner,
    /// Manages members, workspaces and invitations; not Owners, not billing.
    Admin,
    /// Reads the organization and manages billing.
    Billing,
    /// Reads the organization.
    Member,
}

impl Role {
    /// Every role, in order of decreasing power.
    pub const ALL: [Role; 4] = [Role::Owner, Role::Admin, Role::Billing, Role::Member];

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Billing => "billing",
            Role::Member => "member",
        }
    }

    /// Parses the stored spelling.
    pub fn from_stored(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|role| role.as_str() == text)
    }
}

/// A grant's level of access to one workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Access {
    /// Read everything in the workspace.
    Read,
    /// Read and change everything in the workspace.
    Write,
}

impl Access {
    /// Both levels.
    pub const ALL: [Access; 2] = [Access::Read, Access::Write];

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
        }
    }

    /// Parses the stored spelling.
    pub fn from_stored(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|access| access.as_str() == text)
    }
}

/// A human-readable name of an organization or workspace: 1 to 200 characters after trimming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    /// Longest accepted name, in characters.
    pub const MAX_CHARS: usize = 200;

    /// Trims and validates a name.
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err("is required and must not be blank");
        }
        if trimmed.chars().count() > Self::MAX_CHARS {
            return Err("must be at most 200 characters");
        }
        if trimmed.chars().any(char::is_control) {
            return Err("must not contain control characters");
        }
        Ok(Self(trimmed.to_owned()))
    }

    /// Wraps a stored name.
    pub fn from_stored(text: String) -> Self {
        Self(text)
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How long invitations of an organization stay valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvitationTtl(Duration);

impl InvitationTtl {
    /// Shortest allowed validity.
    pub const MIN: Duration = Duration::from_secs(60 * 60);
    /// Longest allowed validity.
    pub const MAX: Duration = Duration::from_secs(30 * 24 * 60 * 60);
    /// The validity of a new organization.
    pub const DEFAULT: InvitationTtl = InvitationTtl(Duration::from_secs(7 * 24 * 60 * 60));

    /// Validates a validity between one hour and 30 days, in whole seconds.
    pub fn parse(duration: Duration) -> Result<Self, &'static str> {
        if duration.subsec_nanos() != 0 {
            return Err("must be a whole number of seconds");
        }
        if duration < Self::MIN || duration > Self::MAX {
            return Err("must be between 1 hour and 30 days");
        }
        Ok(Self(duration))
    }

    /// Wraps a stored number of seconds.
    pub fn from_stored_secs(secs: i64) -> Self {
        Self(Duration::from_secs(secs.max(0) as u64))
    }

    /// The validity.
    pub fn duration(self) -> Duration {
        self.0
    }

    /// The validity in seconds, for storage.
    pub fn as_secs(self) -> i64 {
        self.0.as_secs() as i64
    }
}

/// Why a grant that ends was given: 1 to 500 characters after trimming, for the audit log and
/// the people who read the grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantReason(String);

impl GrantReason {
    /// Longest accepted reason, in characters.
    pub const MAX_CHARS: usize = 500;

    /// Trims and validates a reason.
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err("must not be blank");
        }
        if trimmed.chars().count() > Self::MAX_CHARS {
            return Err("must be at most 500 characters");
        }
        if trimmed.chars().any(|c| c.is_control() && c != '\n') {
            return Err("must not contain control characters other than line breaks");
        }
        Ok(Self(trimmed.to_owned()))
    }

    /// Wraps a stored reason.
    pub fn from_stored(text: String) -> Self {
        Self(text)
    }

    /// The reason as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The id that ties a call's logs, trace and audit event together (`x-request-id`): the
/// caller's own when it sends a usable one, else one the server makes up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    /// Longest id taken from a caller; a longer one is replaced, not cut, so that two callers'
    /// ids never merge into one.
    pub const MAX_LEN: usize = 128;

    /// A caller's id: 1 to 128 visible ASCII characters, so that it can go into a header, a log
    /// line and JSON as it is.
    pub fn parse(text: &str) -> Option<Self> {
        let usable = !text.is_empty()
            && text.len() <= Self::MAX_LEN
            && text.bytes().all(|b| b.is_ascii_graphic());
        usable.then(|| Self(text.to_owned()))
    }

    /// An id made up by the server: a random UUID.
    pub fn from_uuid(id: uuid::Uuid) -> Self {
        Self(id.to_string())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The longest a grant of an organization may last from when it is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxGrantDuration(Duration);

impl MaxGrantDuration {
    /// Shortest allowed bound.
    pub const MIN: Duration = Duration::from_secs(60);
    /// Longest allowed bound.
    pub const MAX: Duration = Duration::from_secs(366 * 24 * 60 * 60);

    /// Validates a bound between one minute and 366 days, in whole seconds.
    pub fn parse(duration: Duration) -> Result<Self, &'static str> {
        if duration.subsec_nanos() != 0 {
            return Err("must be a whole number of seconds");
        }
        if duration < Self::MIN || duration > Self::MAX {
            return Err("must be between 1 minute and 366 days");
        }
        Ok(Self(duration))
    }

    /// Wraps a stored number of seconds.
    pub fn from_stored_secs(secs: i64) -> Self {
        Self(Duration::from_secs(secs.max(0) as u64))
    }

    /// The bound.
    pub fn duration(self) -> Duration {
        self.0
    }

    /// The bound in seconds, for storage.
    pub fn as_secs(self) -> i64 {
        self.0.as_secs() as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_reasons_and_bounds_are_validated() {
        assert_eq!(GrantReason::parse("  incident 4711 ").unwrap().as_str(), "incident 4711");
        assert!(GrantReason::parse(" ").is_err());
        assert!(GrantReason::parse(&"é".repeat(500)).is_ok());
        assert!(GrantReason::parse(&"é".repeat(501)).is_err());
        assert!(GrantReason::parse("a\u{7}b").is_err());
        assert!(MaxGrantDuration::parse(Duration::from_secs(59)).is_err());
        assert!(MaxGrantDuration::parse(Duration::from_secs(3600)).is_ok());
        assert!(MaxGrantDuration::parse(Duration::from_millis(3_600_500)).is_err());
        assert!(MaxGrantDuration::parse(MaxGrantDuration::MAX + Duration::from_secs(1)).is_err());
    }

    #[test]
    fn display_names_are_trimmed_and_bounded() {
        assert_eq!(DisplayName::parse("  Acme ").unwrap().as_str(), "Acme");
        assert!(DisplayName::parse("   ").is_err());
        assert!(DisplayName::parse(&"é".repeat(200)).is_ok());
        assert!(DisplayName::parse(&"é".repeat(201)).is_err());
    }

    #[test]
    fn invitation_ttl_is_between_one_hour_and_thirty_days() {
        assert!(InvitationTtl::parse(Duration::from_secs(3600)).is_ok());
        assert!(InvitationTtl::parse(Duration::from_secs(3599)).is_err());
        assert!(InvitationTtl::parse(Duration::from_secs(30 * 86400)).is_ok());
        assert!(InvitationTtl::parse(Duration::from_secs(30 * 86400 + 1)).is_err());
    }

    #[test]
    fn stored_spellings_round_trip() {
        for role in Role::ALL {
            assert_eq!(Role::from_stored(role.as_str()), Some(role));
        }
        for access in Access::ALL {
            assert_eq!(Access::from_stored(access.as_str()), Some(access));
        }
    }
}
