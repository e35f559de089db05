//! The decision function. Pure and total: role, workspace facts and permission in, an allow or
//! deny with its reason out. Every data condition is a denial, never an error.

use std::marker::PhantomData;

use super::ids::{OrganizationId, UserId};
use super::permission::capability::Capability;
use super::permission::{Holders, Permission, Scope};
use super::values::{Access, Role};

/// Why a check was allowed or denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The user is an Owner, who holds WRITE on every workspace.
    AllowedByOwner,
    /// The user's role includes the organization permission.
    AllowedByRole,
    /// The user's workspace grant includes the permission.
    AllowedByWorkspaceAccess,
    /// The user is not a member (or the organization does not exist).
    DeniedNotAMember,
    /// The role does not include the organization permission.
    DeniedByRole,
    /// No grant on the workspace.
    DeniedNoWorkspaceAccess,
    /// A READ grant where WRITE is needed.
    DeniedReadOnly,
    /// No such workspace in the organization.
    DeniedWorkspaceNotFound,
    /// The user's grant would allow the check, but it has ended.
    DeniedGrantExpired,
}

/// What is known about the workspace named by a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkspaceFacts {
    /// The check is organization-scoped and names no workspace.
    NotApplicable,
    /// The workspace does not exist in the organization.
    Missing,
    /// The workspace exists; the user's explicit grant on it, if any.
    Present(Option<Access>),
    /// The workspace exists, and the user's grant on it (of this access) has ended: it grants
    /// nothing, whether or not anything has recorded the end yet.
    Ended(Access),
}

/// The outcome of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the user may do it.
    pub allowed: bool,
    pub reason: Reason,
    /// The user's role, if a member.
    pub role: Option<Role>,
    /// The user's effective access to the workspace: `None` for organization checks;
    /// `Some(None)` when the user holds none.
    pub workspace_access: Option<Option<Access>>,
}

/// Decides whether a user with `role` (None: not a member) may use `permission`, given what is
/// known of the workspace the check names.
pub fn decide(role: Option<Role>, workspace: WorkspaceFacts, permission: Permission) -> Decision {
    let Some(role) = role else {
        // A non-member learns nothing, not even whether the workspace exists.
        return Decision {
            allowed: false,
            reason: Reason::DeniedNotAMember,
            role: None,
            workspace_access: match permission.scope() {
                Scope::Organization => None,
                Scope::Workspace => Some(None),
            },
        };
    };
    let needed = match permission.holders() {
        Holders::Roles(roles) => {
            let allowed = roles.contains(&role);
            return Decision {
                allowed,
                reason: if allowed { Reason::AllowedByRole } else { Reason::DeniedByRole },
                role: Some(role),
                workspace_access: None,
            };
        }
        Holders::Grant(needed) => needed,
    };
    let (grant, ended) = match workspace {
        WorkspaceFacts::Present(grant) => (grant, None),
        WorkspaceFacts::Ended(was) => (None, Some(was)),
        WorkspaceFacts::Missing | WorkspaceFacts::NotApplicable => {
            return Decision {
                allowed: false,
                reason: Reason::DeniedWorkspaceNotFound,
                role: Some(role),
                workspace_access: Some(None),
            };
        }
    };
    if role == Role::Owner {
        return Decision {
            allowed: true,
            reason: Reason::AllowedByOwner,
            role: Some(role),
            workspace_access: Some(Some(Access::Write)),
        };
    }
    let (allowed, reason) = match (grant, ended) {
        (Some(held), _) if held >= needed => (true, Reason::AllowedByWorkspaceAccess),
        (Some(_), _) => (false, Reason::DeniedReadOnly),
        // Said only when the ended grant would have allowed it: the caller learns why access
        // it had is gone, not what it never held.
        (None, Some(was)) if was >= needed => (false, Reason::DeniedGrantExpired),
        (None, _) => (false, Reason::DeniedNoWorkspaceAccess),
    };
    Decision { allowed, reason, role: Some(role), workspace_access: Some(grant) }
}

/// Proof that an actor passed the check `C` in an organization (an organization permission of
/// the catalogue, or membership). Storage calls that change an organization take the proof of
/// the check they need and use its organization id, so a write without that check, or to
/// another organization than the one checked, does not compile.
#[derive(Debug)]
pub struct Pass<C: Capability> {
    organization_id: OrganizationId,
    actor: UserId,
    role: Role,
    capability: PhantomData<C>,
}

impl<C: Capability> Pass<C> {
    /// Checks `C` for a member (`role` is `None` for a non-member) and mints the proof, or
    /// returns the denial. Crate-private: the use-cases call it with the role they read under
    /// the organization's lock.
    pub(crate) fn check(
        organization_id: OrganizationId,
        actor: UserId,
        role: Option<Role>,
    ) -> Result<Self, Reason> {
        match role {
            None => Err(Reason::DeniedNotAMember),
            Some(role) if C::held_by(role) => {
                Ok(Pass { organization_id, actor, role, capability: PhantomData })
            }
            Some(_) => Err(Reason::DeniedByRole),
        }
    }

    /// The organization the check passed in.
    pub fn organization_id(&self) -> OrganizationId {
        self.organization_id
    }

    /// The actor who passed it.
    pub fn actor(&self) -> &UserId {
        &self.actor
    }

    /// The actor's role at the time of the check.
    pub fn role(&self) -> Role {
        self.role
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Written from SPEC's organization table, row by row: the roles holding each permission.
    const ORGANIZATION_TABLE: &[(&str, &[&str])] = &[
        ("organization.read", &["owner", "admin", "billing", "member"]),
        ("members.read", &["owner", "admin", "billing", "member"]),
        ("organization.update", &["owner", "admin"]),
        ("organization.delete", &["owner"]),
        ("organization.transfer_ownership", &["owner"]),
        ("members.invite", &["owner", "admin"]),
        ("members.remove", &["owner", "admin"]),
        ("members.update_role", &["owner", "admin"]),
        ("invitations.read", &["owner", "admin"]),
        ("workspaces.create", &["owner", "admin"]),
        ("workspaces.update", &["owner", "admin"]),
        ("workspaces.delete", &["owner", "admin"]),
        ("workspace_access.manage", &["owner", "admin"]),
        ("audit.read", &["owner", "admin"]),
        ("billing.read", &["owner", "billing"]),
        ("billing.manage", &["owner", "billing"]),
    ];

    // Written from SPEC's workspace table: the access levels holding each permission.
    const WORKSPACE_TABLE: &[(&str, &[&str])] = &[
        ("workspace.read", &["read", "write"]),
        ("sources.read", &["read", "write"]),
        ("destinations.read", &["read", "write"]),
        ("schedules.read", &["read", "write"]),
        ("datasets.read", &["read", "write"]),
        ("executions.read", &["read", "write"]),
        ("sources.create", &["write"]),
        ("sources.update", &["write"]),
        ("sources.delete", &["write"]),
        ("destinations.create", &["write"]),
        ("destinations.update", &["write"]),
        ("destinations.delete", &["write"]),
        ("schedules.create", &["write"]),
        ("schedules.update", &["write"]),
        ("schedules.delete", &["write"]),
        ("datasets.configure", &["write"]),
        ("syncs.trigger", &["write"]),
    ];

    #[test]
    fn the_tables_cover_the_whole_catalogue() {
        let listed = ORGANIZATION_TABLE.len() + WORKSPACE_TABLE.len();
        assert_eq!(listed, Permission::ALL.len());
        for (name, _) in ORGANIZATION_TABLE {
            let p = Permission::from_name(name).expect(name);
            assert_eq!(p.scope(), Scope::Organization, "{name}");
        }
        for (name, _) in WORKSPACE_TABLE {
            let p = Permission::from_name(name).expect(name);
            assert_eq!(p.scope(), Scope::Workspace, "{name}");
        }
    }

    #[test]
    fn every_role_and_organization_permission_matches_the_table() {
        for (name, holders) in ORGANIZATION_TABLE {
            let permission = Permission::from_name(name).unwrap();
            for role in Role::ALL {
                let expected = holders.contains(&role.as_str());
                let decision = decide(Some(role), WorkspaceFacts::NotApplicable, permission);
                assert_eq!(decision.allowed, expected, "{role:?} / {name}");
                let reason = if expected { Reason::AllowedByRole } else { Reason::DeniedByRole };
                assert_eq!(decision.reason, reason, "{role:?} / {name}");
                assert_eq!(decision.role, Some(role));
            }
            let outsider = decide(None, WorkspaceFacts::NotApplicable, permission);
            assert!(!outsider.allowed);
            assert_eq!(outsider.reason, Reason::DeniedNotAMember);
        }
    }

    #[test]
    fn every_role_access_and_workspace_permission_matches_the_table() {
        let grants = [None, Some(Access::Read), Some(Access::Write)];
        for (name, holders) in WORKSPACE_TABLE {
            let permission = Permission::from_name(name).unwrap();
            for role in Role::ALL {
                for grant in grants {
                    let decision = decide(Some(role), WorkspaceFacts::Present(grant), permission);
                    if role == Role::Owner {
                        // Owners hold WRITE on every workspace, granted or not.
                        assert!(decision.allowed, "owner / {grant:?} / {name}");
                        assert_eq!(decision.reason, Reason::AllowedByOwner);
                        assert_eq!(decision.workspace_access, Some(Some(Access::Write)));
                        continue;
                    }
                    let expected = grant.is_some_and(|g| holders.contains(&g.as_str()));
                    assert_eq!(decision.allowed, expected, "{role:?} / {grant:?} / {name}");
                    let reason = match (expected, grant) {
                        (true, _) => Reason::AllowedByWorkspaceAccess,
                        (false, None) => Reason::DeniedNoWorkspaceAccess,
                        (false, Some(_)) => Reason::DeniedReadOnly,
                    };
                    assert_eq!(decision.reason, reason, "{role:?} / {grant:?} / {name}");
                    assert_eq!(decision.workspace_access, Some(grant));
                }
                let missing = decide(Some(role), WorkspaceFacts::Missing, permission);
                assert!(!missing.allowed);
                assert_eq!(missing.reason, Reason::DeniedWorkspaceNotFound);
            }
            for facts in [WorkspaceFacts::Missing, WorkspaceFacts::Present(Some(Access::Write))] {
                let outsider = decide(None, facts, permission);
                assert!(!outsider.allowed);
                assert_eq!(outsider.reason, Reason::DeniedNotAMember);
            }
        }
    }

    #[test]
    fn an_ended_grant_grants_nothing_and_says_so_when_it_would_have_allowed() {
        for (name, holders) in WORKSPACE_TABLE {
            let permission = Permission::from_name(name).unwrap();
            for role in Role::ALL {
                for was in Access::ALL {
                    let decision = decide(Some(role), WorkspaceFacts::Ended(was), permission);
                    if role == Role::Owner {
                        // An Owner's WRITE is the role's, never a grant's: nothing ends it.
                        assert!(decision.allowed, "owner / {was:?} / {name}");
                        continue;
                    }
                    assert!(!decision.allowed, "{role:?} / ended {was:?} / {name}");
                    let would_have = holders.contains(&was.as_str());
                    let reason = if would_have {
                        Reason::DeniedGrantExpired
                    } else {
                        Reason::DeniedNoWorkspaceAccess
                    };
                    assert_eq!(decision.reason, reason, "{role:?} / ended {was:?} / {name}");
                    assert_eq!(decision.workspace_access, Some(None), "an ended grant holds none");
                }
            }
            let outsider = decide(None, WorkspaceFacts::Ended(Access::Write), permission);
            assert_eq!(outsider.reason, Reason::DeniedNotAMember);
        }
        // Organization permissions never read a grant.
        let billing = decide(
            Some(Role::Billing),
            WorkspaceFacts::Ended(Access::Write),
            Permission::BillingRead,
        );
        assert_eq!(billing.reason, Reason::AllowedByRole);
    }

    #[test]
    fn write_grants_everything_read_grants() {
        for permission in Permission::ALL {
            for role in Role::ALL {
                let read =
                    decide(Some(role), WorkspaceFacts::Present(Some(Access::Read)), *permission);
                let write =
                    decide(Some(role), WorkspaceFacts::Present(Some(Access::Write)), *permission);
                assert!(!read.allowed || write.allowed, "{role:?} / {}", permission.name());
            }
        }
    }

    #[test]
    fn a_pass_is_minted_only_for_allowed_checks() {
        use crate::domain::permission::capability::{MembersInvite, Membership, OrganizationRead};
        let org = OrganizationId::generate();
        let actor = UserId::parse("u1").unwrap();
        let pass = Pass::<MembersInvite>::check(org, actor.clone(), Some(Role::Admin));
        assert_eq!(pass.unwrap().organization_id(), org);
        let denied = Pass::<MembersInvite>::check(org, actor.clone(), Some(Role::Member));
        assert_eq!(denied.unwrap_err(), Reason::DeniedByRole);
        let outsider = Pass::<OrganizationRead>::check(org, actor.clone(), None);
        assert_eq!(outsider.unwrap_err(), Reason::DeniedNotAMember);
        for role in Role::ALL {
            assert!(Pass::<Membership>::check(org, actor.clone(), Some(role)).is_ok());
        }
    }

    #[test]
    fn each_capability_passes_exactly_for_the_roles_spec_lists() {
        use crate::domain::permission::capability::CHECKS;
        // One capability per organization permission, each checked against SPEC's table rather
        // than against the catalogue it is generated from.
        assert_eq!(CHECKS.len(), ORGANIZATION_TABLE.len());
        for (name, held_by) in CHECKS {
            let (_, holders) = ORGANIZATION_TABLE.iter().find(|(n, _)| n == name).expect(name);
            for role in Role::ALL {
                assert_eq!(held_by(role), holders.contains(&role.as_str()), "{role:?} / {name}");
            }
        }
    }
}
