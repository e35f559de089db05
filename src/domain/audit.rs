//! What an audit event records: the action and what it was done to.

use std::fmt;

use super::ids::{InvitationId, OrganizationId, UserId, WorkspaceId};

macro_rules! actions {
    ($($variant:ident => $name:literal, $about:literal;)*) => {
        /// An action recorded in the audit log.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum AuditAction {
            $(#[doc = $about] $variant,)*
        }

        impl AuditAction {
            /// Every action.
            pub const ALL: &'static [AuditAction] = &[$(AuditAction::$variant),*];

            /// The stored and wire spelling, for example `member.removed`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(AuditAction::$variant => $name,)*
                }
            }
        }
    };
}

actions! {
    OrganizationCreated => "organization.created", "An organization was founded.";
    OrganizationUpdated => "organization.updated", "Its name or settings changed.";
    OrganizationDeleted => "organization.deleted", "It was deleted with everything in it.";
    OwnershipTransferred => "organization.ownership_transferred", "An Owner made another member Owner in their place.";
    MemberRoleUpdated => "member.role_updated", "A member's role changed.";
    MemberRemoved => "member.removed", "A member was removed.";
    MemberLeft => "member.left", "A member left.";
    WorkspaceCreated => "workspace.created", "A workspace was created.";
    WorkspaceUpdated => "workspace.updated", "A workspace was renamed.";
    WorkspaceDeleted => "workspace.deleted", "A workspace was deleted with its grants.";
    WorkspaceAccessSet => "workspace_access.set", "A member's access to a workspace was granted or changed.";
    WorkspaceAccessRemoved => "workspace_access.removed", "A member's access to a workspace was removed.";
    WorkspaceAccessExpired => "workspace_access.expired", "A member's grant on a workspace reached its end (recorded by Roster, no user acting).";
    InvitationCreated => "invitation.created", "An email address was invited.";
    InvitationResent => "invitation.resent", "An invitation was sent again with a fresh token.";
    InvitationRevoked => "invitation.revoked", "An invitation was revoked.";
    InvitationAccepted => "invitation.accepted", "An invitation was accepted; the invitee is a member.";
}

impl AuditAction {
    /// Parses the stored spelling.
    pub fn from_stored(text: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|action| action.as_str() == text)
    }
}

/// What an audited action was done to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditTarget {
    /// The organization itself.
    Organization(OrganizationId),
    /// A member (or, for an acceptance, the new member).
    Member(UserId),
    /// A workspace.
    Workspace(WorkspaceId),
    /// An invitation.
    Invitation(InvitationId),
}

impl fmt::Display for AuditTarget {
    /// The stored and wire spelling: `kind/id`, for example `member/u123`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuditTarget::Organization(id) => write!(f, "organization/{id}"),
            AuditTarget::Member(id) => write!(f, "member/{id}"),
            AuditTarget::Workspace(id) => write!(f, "workspace/{id}"),
            AuditTarget::Invitation(id) => write!(f, "invitation/{id}"),
        }
    }
}

impl AuditTarget {
    /// Parses the stored spelling.
    pub fn from_stored(text: &str) -> Option<Self> {
        let (kind, id) = text.split_once('/')?;
        Some(match kind {
            "organization" => AuditTarget::Organization(OrganizationId::parse(id).ok()?),
            "member" => AuditTarget::Member(UserId::parse(id).ok()?),
            "workspace" => AuditTarget::Workspace(WorkspaceId::parse(id).ok()?),
            "invitation" => AuditTarget::Invitation(InvitationId::parse(id).ok()?),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_round_trip_and_are_unique() {
        let mut names: Vec<_> = AuditAction::ALL.iter().map(|a| a.as_str()).collect();
        for action in AuditAction::ALL {
            assert_eq!(AuditAction::from_stored(action.as_str()), Some(*action));
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), AuditAction::ALL.len());
        assert_eq!(AuditAction::from_stored("member.promoted"), None);
    }

    #[test]
    fn targets_round_trip() {
        let targets = [
            AuditTarget::Organization(OrganizationId::generate()),
            AuditTarget::Member(UserId::parse("auth0|42").unwrap()),
            AuditTarget::Workspace(WorkspaceId::generate()),
            AuditTarget::Invitation(InvitationId::generate()),
        ];
        for target in targets {
            assert_eq!(AuditTarget::from_stored(&target.to_string()), Some(target));
        }
        assert_eq!(AuditTarget::from_stored("member"), None);
        assert_eq!(AuditTarget::from_stored("group/1"), None);
    }
}
