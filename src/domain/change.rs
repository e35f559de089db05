//! Changes to who may do what: every change to an organization commits as the organization's next
//! [`Revision`], at the next [`LogPosition`] of one change log ordered by commit, with the
//! [`Delta`]s it caused. A [`ChangeToken`] names such a point for clients.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use uuid::Uuid;

use super::email::Email;
use super::ids::{AuditEventId, OrganizationId, UserId, WorkspaceId};
use super::model::Timestamp;
use super::values::{Access, DisplayName, Role};

/// An organization's revision: 1 for its creation, one more for each change after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision(pub u64);

impl Revision {
    /// The revision after this one.
    pub fn next(self) -> Self {
        Self(self.0 + 1)
    }
}

/// A change's place in the change log of every organization: later commits have larger
/// positions, and no position is skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LogPosition(pub u64);

/// One effect of a change on who may do what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delta {
    /// The organization was created (its founder is added by a [`Delta::MemberAdded`]).
    OrganizationCreated { display_name: DisplayName },
    /// The organization was deleted with everything in it.
    OrganizationDeleted,
    /// A user became a member.
    MemberAdded { user: UserId, email: Email, role: Role },
    /// A member left or was removed; their grants' removals are deltas of their own.
    MemberRemoved {
        /// The former member.
        user: UserId,
        /// The role they held.
        role: Role,
    },
    /// A member's role changed.
    RoleChanged { user: UserId, old: Role, new: Role },
    /// A grant was added (`old` none), changed, or removed (`new` none).
    GrantChanged {
        user: UserId,
        workspace: WorkspaceId,
        old: Option<Access>,
        new: Option<Access>,
        /// When the grant after the change ends; `None`: it is permanent (or there is none).
        expire_time: Option<Timestamp>,
    },
    /// A grant's end was recorded: it had granted nothing since its end, and stays, ended.
    GrantExpired {
        user: UserId,
        workspace: WorkspaceId,
        /// The access it had granted.
        access: Access,
        expire_time: Timestamp,
    },
    /// A workspace was created.
    WorkspaceCreated { workspace: WorkspaceId, display_name: DisplayName },
    /// A workspace was deleted; its grants' removals are deltas of their own.
    WorkspaceDeleted { workspace: WorkspaceId },
    /// Ownership moved (the two role changes are deltas of their own).
    OwnershipTransferred {
        /// The Owner who handed it over.
        from: UserId,
        /// The new Owner.
        to: UserId,
    },
}

impl Delta {
    /// Whether this may change `user`'s access: their membership, role or grants, or the
    /// organization as a whole.
    pub fn touches_user(&self, user: &UserId) -> bool {
        match self {
            Delta::OrganizationCreated { .. } | Delta::OrganizationDeleted => true,
            Delta::MemberAdded { user: u, .. }
            | Delta::MemberRemoved { user: u, .. }
            | Delta::RoleChanged { user: u, .. }
            | Delta::GrantChanged { user: u, .. }
            | Delta::GrantExpired { user: u, .. } => u == user,
            Delta::OwnershipTransferred { from, to } => from == user || to == user,
            // Nobody holds a grant on a new workspace; a deleted one's grants are listed.
            Delta::WorkspaceCreated { .. } | Delta::WorkspaceDeleted { .. } => false,
        }
    }

    /// Whether this may change anyone's access to `workspace`: its grants, its creation or
    /// deletion, and whatever changes every workspace (Owners hold WRITE on all of them).
    pub fn touches_workspace(&self, workspace: WorkspaceId) -> bool {
        match self {
            Delta::OrganizationCreated { .. } | Delta::OrganizationDeleted => true,
            Delta::GrantChanged { workspace: w, .. }
            | Delta::GrantExpired { workspace: w, .. }
            | Delta::WorkspaceCreated { workspace: w, .. }
            | Delta::WorkspaceDeleted { workspace: w } => *w == workspace,
            Delta::MemberAdded { role, .. } | Delta::MemberRemoved { role, .. } => {
                *role == Role::Owner
            }
            Delta::RoleChanged { old, new, .. } => *old == Role::Owner || *new == Role::Owner,
            Delta::OwnershipTransferred { .. } => true,
        }
    }
}

/// One committed change, as the change log holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRecord {
    pub organization_id: OrganizationId,
    /// The organization's revision after the change.
    pub revision: Revision,
    /// The change's place in the log of every organization; `None` on PostgreSQL for a
    /// change just committed, whose place is given right after its commit (see
    /// [`crate::storage::changelog::place`]).
    pub position: Option<LogPosition>,
    pub commit_time: Timestamp,
    /// The end user who made the change; `None` for one Roster made itself (recording that a
    /// grant ended).
    pub actor: Option<UserId>,
    /// The audit event it wrote, if any.
    pub audit_event_id: Option<AuditEventId>,
    /// What it did to access, in order; empty for a change Authorize does not see (a rename,
    /// an invitation).
    pub deltas: Vec<Delta>,
}

impl ChangeRecord {
    /// The token naming this change.
    pub fn token(&self) -> ChangeToken {
        ChangeToken {
            organization: Some((self.organization_id, self.revision)),
            position: self.position,
        }
    }
}

/// A point in the change log, as clients hold it: a position in the log of every organization,
/// and for a point within one organization, that organization and its revision there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeToken {
    /// The organization and its revision, when the token names a point of one organization.
    pub organization: Option<(OrganizationId, Revision)>,
    /// The position in the log: everything up to it has been seen. `None` in the token of a
    /// change that had no position yet when it was issued (the reply to a change on
    /// PostgreSQL), which the organization and revision then stand for.
    pub position: Option<LogPosition>,
}

/// Why a token was refused; the caller names the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Not a token Roster issued.
    Malformed,
    /// A token of the previous format, which named a time rather than a revision.
    Legacy,
}

/// The version byte of the current token format.
const TOKEN_VERSION: u8 = 2;
/// Set in the flags byte when the token names an organization.
const WITH_ORGANIZATION: u8 = 1;
/// Set in the flags byte when the token holds a position.
const WITH_POSITION: u8 = 2;

impl ChangeToken {
    /// The opaque text given to clients: base64url of a version byte, flags, the organization's
    /// UUID (zero when none), the revision and the position (zero when none).
    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(34);
        bytes.push(TOKEN_VERSION);
        let (flags, org, revision) = match self.organization {
            Some((org, revision)) => (WITH_ORGANIZATION, org.as_uuid(), revision.0),
            None => (0, Uuid::nil(), 0),
        };
        let (flags, position) = match self.position {
            Some(position) => (flags | WITH_POSITION, position.0),
            None => (flags, 0),
        };
        bytes.push(flags);
        bytes.extend_from_slice(org.as_bytes());
        bytes.extend_from_slice(&revision.to_be_bytes());
        bytes.extend_from_slice(&position.to_be_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Reads a token made by [`ChangeToken::encode`].
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        // The previous release's tokens: `v1.` and the reply's time in microseconds.
        if let Some(micros) = text.strip_prefix("v1.") {
            return if !micros.is_empty() && micros.bytes().all(|b| b.is_ascii_digit()) {
                Err(TokenError::Legacy)
            } else {
                Err(TokenError::Malformed)
            };
        }
        if text.len() != 46 {
            return Err(TokenError::Malformed);
        }
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| TokenError::Malformed)?;
        let [version, flags, rest @ ..] = bytes.as_slice() else {
            return Err(TokenError::Malformed);
        };
        if *version != TOKEN_VERSION
            || rest.len() != 32
            || flags & !(WITH_ORGANIZATION | WITH_POSITION) != 0
        {
            return Err(TokenError::Malformed);
        }
        let org = Uuid::from_slice(&rest[..16]).map_err(|_| TokenError::Malformed)?;
        let number =
            |at: usize| u64::from_be_bytes(rest[at..at + 8].try_into().unwrap_or_default());
        let (revision, position) = (number(16), number(24));
        let organization = if flags & WITH_ORGANIZATION != 0 {
            // Revision 0 is that of an organization made before the change log, unchanged since.
            if org.is_nil() {
                return Err(TokenError::Malformed);
            }
            Some((OrganizationId::from_uuid(org), Revision(revision)))
        } else {
            if !org.is_nil() || revision != 0 {
                return Err(TokenError::Malformed);
            }
            None
        };
        let position = if flags & WITH_POSITION != 0 {
            Some(LogPosition(position))
        } else if position != 0 || organization.is_none() {
            // A token names a position, an organization's revision, or both.
            return Err(TokenError::Malformed);
        } else {
            None
        };
        Ok(Self { organization, position })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserId {
        UserId::parse(name).unwrap()
    }

    #[test]
    fn tokens_read_back_as_themselves_and_nothing_else_is_a_token() {
        let org = OrganizationId::generate();
        for token in [
            ChangeToken { organization: Some((org, Revision(7))), position: Some(LogPosition(42)) },
            ChangeToken { organization: Some((org, Revision(7))), position: None },
            ChangeToken { organization: None, position: Some(LogPosition(0)) },
            ChangeToken { organization: None, position: Some(LogPosition(u64::MAX)) },
        ] {
            assert_eq!(ChangeToken::parse(&token.encode()), Ok(token));
        }
        assert_eq!(ChangeToken::parse("v1.1795816967416924"), Err(TokenError::Legacy));
        let good =
            ChangeToken { organization: Some((org, Revision(1))), position: Some(LogPosition(1)) }
                .encode();
        // Neither an organization nor a position: version 2, no flags, zeros.
        let empty = URL_SAFE_NO_PAD.encode([&[2u8, 0][..], &[0; 32]].concat());
        for bad in [
            String::new(),
            "v1.".to_owned(),
            "v1.12a".to_owned(),
            "x".repeat(46),
            good[..45].to_owned(),
            format!("{good}A"),
            // Another version byte.
            format!("B{}", &good[1..]),
            empty,
        ] {
            assert_eq!(ChangeToken::parse(&bad), Err(TokenError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn filters_keep_what_may_change_a_users_or_a_workspaces_access() {
        let (ada, bob) = (user("ada"), user("bob"));
        let (ws, other) = (WorkspaceId::generate(), WorkspaceId::generate());
        let grant = Delta::GrantChanged {
            user: ada.clone(),
            workspace: ws,
            old: None,
            new: Some(Access::Read),
            expire_time: None,
        };
        assert!(grant.touches_user(&ada) && !grant.touches_user(&bob));
        assert!(grant.touches_workspace(ws) && !grant.touches_workspace(other));
        let promoted = Delta::RoleChanged { user: bob.clone(), old: Role::Admin, new: Role::Owner };
        assert!(promoted.touches_workspace(other), "an Owner holds WRITE everywhere");
        let demoted = Delta::RoleChanged { user: bob.clone(), old: Role::Admin, new: Role::Member };
        assert!(!demoted.touches_workspace(other) && demoted.touches_user(&bob));
        let created = Delta::WorkspaceCreated {
            workspace: ws,
            display_name: DisplayName::parse("prod").unwrap(),
        };
        assert!(!created.touches_user(&ada) && created.touches_workspace(ws));
        assert!(Delta::OrganizationDeleted.touches_user(&ada));
        assert!(Delta::OrganizationDeleted.touches_workspace(other));
    }
}
