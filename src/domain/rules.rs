//! The SPEC's rules about roles, beyond the permission tables, as pure functions: rule 1 (only
//! an Owner touches an Owner or makes one), rule 2 (an organization always keeps an Owner), and
//! who sees every workspace. The use-cases call them under the organization's lock with the
//! facts read in that transaction, so concurrent requests are decided one after another.

use super::values::Role;

/// Why a change of membership is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Rule 1: only an Owner may change an Owner's role.
    OwnerRoleNeedsOwner,
    /// Rule 1: only an Owner may make a member Owner.
    MakingOwnerNeedsOwner,
    /// Rule 1: only an Owner may remove an Owner.
    RemovingOwnerNeedsOwner,
    /// Rule 2: the change would leave the organization without an Owner.
    LastOwner,
}

/// What a role change does once allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleChange {
    /// The member already holds the role.
    Unchanged,
    /// The role changes.
    Apply,
}

/// Rules 1 and 2 for changing `target`'s role to `new`, by a member whose role is `actor`,
/// in an organization with `owners` Owners.
pub fn change_role(
    actor: Role,
    target: Role,
    new: Role,
    owners: u64,
) -> Result<RoleChange, Refusal> {
    if actor != Role::Owner {
        if target == Role::Owner {
            return Err(Refusal::OwnerRoleNeedsOwner);
        }
        if new == Role::Owner {
            return Err(Refusal::MakingOwnerNeedsOwner);
        }
    }
    if target == new {
        return Ok(RoleChange::Unchanged);
    }
    if target == Role::Owner && owners <= 1 {
        return Err(Refusal::LastOwner);
    }
    Ok(RoleChange::Apply)
}

/// Rules 1 and 2 for removing a member whose role is `target`, by a member whose role is
/// `actor`, in an organization with `owners` Owners.
pub fn remove(actor: Role, target: Role, owners: u64) -> Result<(), Refusal> {
    if target == Role::Owner && actor != Role::Owner {
        return Err(Refusal::RemovingOwnerNeedsOwner);
    }
    leave(target, owners)
}

/// Rule 2 for a member whose role is `role` leaving an organization with `owners` Owners.
pub fn leave(role: Role, owners: u64) -> Result<(), Refusal> {
    if role == Role::Owner && owners <= 1 {
        return Err(Refusal::LastOwner);
    }
    Ok(())
}

/// Who sees every workspace and every grant of their organization in TeamService; Billing and
/// Member users see only the workspaces they hold a grant on, and only their own grants.
pub fn sees_every_workspace(role: Role) -> bool {
    matches!(role, Role::Owner | Role::Admin)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const ROLES: [Role; 4] = [Role::Owner, Role::Admin, Role::Billing, Role::Member];

    #[test]
    fn rule_1_an_admin_never_touches_an_owner_or_makes_one() {
        // Billing and Member never get here (they lack members.update_role and members.remove),
        // but the rule holds for them too.
        for actor in [Role::Admin, Role::Billing, Role::Member] {
            for new in ROLES {
                assert_eq!(
                    change_role(actor, Role::Owner, new, 2),
                    Err(Refusal::OwnerRoleNeedsOwner),
                    "{actor:?} changing an Owner to {new:?}"
                );
            }
            for target in [Role::Admin, Role::Billing, Role::Member] {
                assert_eq!(
                    change_role(actor, target, Role::Owner, 2),
                    Err(Refusal::MakingOwnerNeedsOwner),
                    "{actor:?} making a {target:?} Owner"
                );
            }
            assert_eq!(remove(actor, Role::Owner, 2), Err(Refusal::RemovingOwnerNeedsOwner));
        }
        // An Admin manages everyone else.
        assert_eq!(change_role(Role::Admin, Role::Member, Role::Billing, 1), Ok(RoleChange::Apply));
        assert_eq!(
            change_role(Role::Admin, Role::Member, Role::Member, 1),
            Ok(RoleChange::Unchanged)
        );
        assert_eq!(remove(Role::Admin, Role::Admin, 1), Ok(()));
    }

    #[test]
    fn rule_2_the_last_owner_stays() {
        for new in [Role::Admin, Role::Billing, Role::Member] {
            assert_eq!(change_role(Role::Owner, Role::Owner, new, 1), Err(Refusal::LastOwner));
            assert_eq!(change_role(Role::Owner, Role::Owner, new, 2), Ok(RoleChange::Apply));
        }
        assert_eq!(
            change_role(Role::Owner, Role::Owner, Role::Owner, 1),
            Ok(RoleChange::Unchanged)
        );
        assert_eq!(remove(Role::Owner, Role::Owner, 1), Err(Refusal::LastOwner));
        assert_eq!(remove(Role::Owner, Role::Owner, 2), Ok(()));
        assert_eq!(leave(Role::Owner, 1), Err(Refusal::LastOwner));
        assert_eq!(leave(Role::Owner, 2), Ok(()));
        for role in [Role::Admin, Role::Billing, Role::Member] {
            assert_eq!(leave(role, 1), Ok(()));
        }
    }

    #[test]
    fn only_owners_and_admins_see_every_workspace() {
        let seeing: Vec<Role> = ROLES.into_iter().filter(|r| sees_every_workspace(*r)).collect();
        assert_eq!(seeing, [Role::Owner, Role::Admin]);
    }

    /// One request against a model organization: who acts, on whom, and what.
    #[derive(Debug, Clone)]
    enum Step {
        ChangeRole { actor: usize, target: usize, new: Role },
        Remove { actor: usize, target: usize },
        Leave { member: usize },
    }

    fn step() -> impl Strategy<Value = Step> {
        let role = prop::sample::select(ROLES.to_vec());
        prop_oneof![
            (0..8usize, 0..8usize, role).prop_map(|(actor, target, new)| Step::ChangeRole {
                actor,
                target,
                new
            }),
            (0..8usize, 0..8usize).prop_map(|(actor, target)| Step::Remove { actor, target }),
            (0..8usize).prop_map(|member| Step::Leave { member }),
        ]
    }

    proptest! {
        /// Whatever sequence of role changes, removals and departures is asked for, applying
        /// the allowed ones never leaves the organization without an Owner, and an Owner is
        /// only ever made, demoted or removed by an Owner.
        #[test]
        fn an_organization_always_keeps_an_owner(
            roles in prop::collection::vec(prop::sample::select(ROLES.to_vec()), 1..8),
            steps in prop::collection::vec(step(), 0..60),
        ) {
            // Member i holds roles[i]; the first is the founding Owner.
            let mut members: Vec<Option<Role>> = roles.iter().map(|r| Some(*r)).collect();
            members[0] = Some(Role::Owner);
            let owners = |m: &[Option<Role>]| m.iter().filter(|r| **r == Some(Role::Owner)).count() as u64;
            for step in steps {
                match step {
                    Step::ChangeRole { actor, target, new } => {
                        let (Some(Some(a)), Some(Some(t))) = (members.get(actor), members.get(target)) else { continue };
                        let (a, t) = (*a, *t);
                        if let Ok(RoleChange::Apply) = change_role(a, t, new, owners(&members)) {
                            prop_assert!(a == Role::Owner || (t != Role::Owner && new != Role::Owner));
                            members[target] = Some(new);
                        }
                    }
                    Step::Remove { actor, target } => {
                        let (Some(Some(a)), Some(Some(t))) = (members.get(actor), members.get(target)) else { continue };
                        if remove(*a, *t, owners(&members)).is_ok() {
                            prop_assert!(*a == Role::Owner || *t != Role::Owner);
                            members[target] = None;
                        }
                    }
                    Step::Leave { member } => {
                        let Some(Some(role)) = members.get(member) else { continue };
                        if leave(*role, owners(&members)).is_ok() {
                            members[member] = None;
                        }
                    }
                }
                prop_assert!(owners(&members) >= 1, "no Owner left: {members:?}");
            }
        }
    }
}
