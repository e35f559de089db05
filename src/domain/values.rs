//! Validated values: roles, access levels, names, emails and settings.

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

/// An email address, trimmed and lower-cased so that comparisons ignore case.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    /// Longest accepted address, in bytes (RFC 5321 path limit).
    pub const MAX_LEN: usize = 254;

    /// Trims, validates and normalizes an address: at most 254 characters, exactly one `@`, a
    /// non-empty local part and a dotted domain without empty labels.
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err("is required");
        }
        if trimmed.len() > Self::MAX_LEN {
            return Err("must be at most 254 characters");
        }
        if trimmed
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>' || c == ',')
        {
            return Err("must be a single address without spaces, commas or angle brackets");
        }
        let mut parts = trimmed.split('@');
        let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err("must contain exactly one @");
        };
        if local.is_empty() {
            return Err("must have a name before the @");
        }
        let labels: Vec<&str> = domain.split('.').collect();
        if labels.len() < 2 || labels.iter().any(|label| label.is_empty()) {
            return Err("must have a dotted domain after the @, such as example.com");
        }
        Ok(Self(trimmed.to_lowercase()))
    }

    /// Wraps a stored, already normalized address.
    pub fn from_stored(text: String) -> Self {
        Self(text)
    }

    /// The address as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A form fit for logs: the first character of the local part and the domain.
    pub fn redacted(&self) -> String {
        match self.0.split_once('@') {
            Some((local, domain)) => {
                let first: String = local.chars().take(1).collect();
                format!("{first}***@{domain}")
            }
            None => "***".to_owned(),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_trimmed_lowercased_and_validated() {
        assert_eq!(Email::parse("  Ada@Example.COM ").unwrap().as_str(), "ada@example.com");
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "ada@@example.com",
            "a@b@example.com",
            "ada@example..com",
            "ada@.com",
            "ada lovelace@example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        let long_local = "a".repeat(250);
        assert!(Email::parse(&format!("{long_local}@x.io")).is_err());
    }

    #[test]
    fn redacted_email_hides_the_local_part() {
        let email = Email::parse("grace.hopper@navy.mil").unwrap();
        assert_eq!(email.redacted(), "g***@navy.mil");
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
