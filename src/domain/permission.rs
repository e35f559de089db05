//! The permission catalogue: every name `Authorize` understands, its scope, who holds it and
//! what it allows. A permission is added here and nowhere else: the decision function, the
//! listing and the proof types all follow from this table.

use super::values::{Access, Role};

/// Whether a permission is checked against an organization or one of its workspaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Checked against the organization; no workspace is named.
    Organization,
    /// Checked against one workspace, which must be named.
    Workspace,
}

/// Who holds a permission (SPEC's two tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holders {
    /// An organization permission: the roles that hold it.
    Roles(&'static [Role]),
    /// A workspace permission: the least grant that holds it. Owners hold it on every workspace
    /// whatever their grants.
    Grant(Access),
}

macro_rules! catalogue {
    (
        organization { $($org:ident => $org_name:literal, [$($role:ident),+], $org_about:literal;)* }
        workspace { $($ws:ident => $ws_name:literal, $access:ident, $ws_about:literal;)* }
    ) => {
        /// A permission from the catalogue.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Permission {
            $(#[doc = $org_about] $org,)*
            $(#[doc = $ws_about] $ws,)*
        }

        impl Permission {
            /// The whole catalogue, in the order it is listed to clients.
            pub const ALL: &'static [Permission] =
                &[$(Permission::$org,)* $(Permission::$ws,)*];

            /// The wire name, for example `sources.create`.
            pub fn name(self) -> &'static str {
                match self {
                    $(Permission::$org => $org_name,)*
                    $(Permission::$ws => $ws_name,)*
                }
            }

            /// Looks a permission up by its wire name; `None` for a name outside the catalogue.
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $($org_name => Some(Permission::$org),)*
                    $($ws_name => Some(Permission::$ws),)*
                    _ => None,
                }
            }

            /// Who holds it.
            pub fn holders(self) -> Holders {
                match self {
                    $(Permission::$org => Holders::Roles(&[$(Role::$role),+]),)*
                    $(Permission::$ws => Holders::Grant(Access::$access),)*
                }
            }

            /// What the permission allows, for ListPermissions.
            pub fn description(self) -> &'static str {
                match self {
                    $(Permission::$org => $org_about,)*
                    $(Permission::$ws => $ws_about,)*
                }
            }
        }

        /// One type per organization permission, naming it in a [`Pass`](super::authz::Pass):
        /// a storage call that needs `members.remove` takes a `Pass<MembersRemove>`, which
        /// only a passed check of that permission makes.
        pub mod capability {
            use super::Permission;

            /// A check a [`Pass`](crate::domain::authz::Pass) can stand for.
            pub trait Capability {
                /// The name in denials, for example `members.remove`.
                const NAME: &'static str;
                /// Whether a member with `role` passes; rules beyond the tables are the
                /// use-case's.
                fn held_by(role: crate::domain::Role) -> bool;
            }

            $(
                #[doc = concat!("`", $org_name, "`: ", $org_about)]
                #[derive(Debug)]
                pub enum $org {}

                impl Capability for $org {
                    const NAME: &'static str = $org_name;
                    fn held_by(role: crate::domain::Role) -> bool {
                        Permission::$org.held_by_role(role)
                    }
                }
            )*

            /// Every catalogue capability's name and check, for the tests against SPEC's table.
            #[cfg(test)]
            pub(crate) const CHECKS: &[(&str, fn(crate::domain::Role) -> bool)] =
                &[$(($org_name, <$org as Capability>::held_by),)*];

            /// Being a member, whatever the role: what leaving an organization needs.
            #[derive(Debug)]
            pub enum Membership {}

            impl Capability for Membership {
                const NAME: &'static str = "membership";
                fn held_by(_: crate::domain::Role) -> bool {
                    true
                }
            }
        }
    };
}

impl Permission {
    /// Whether a check of it names a workspace, from who holds it.
    pub fn scope(self) -> Scope {
        match self.holders() {
            Holders::Roles(_) => Scope::Organization,
            Holders::Grant(_) => Scope::Workspace,
        }
    }

    /// Whether `role` holds this organization permission; workspace permissions are never
    /// held through a role alone.
    pub fn held_by_role(self, role: Role) -> bool {
        match self.holders() {
            Holders::Roles(roles) => roles.contains(&role),
            Holders::Grant(_) => false,
        }
    }

    /// The least grant a workspace permission needs; `None` for organization permissions.
    pub fn required_access(self) -> Option<Access> {
        match self.holders() {
            Holders::Roles(_) => None,
            Holders::Grant(access) => Some(access),
        }
    }
}

catalogue! {
    organization {
        OrganizationRead => "organization.read", [Owner, Admin, Billing, Member], "Read the organization and its settings.";
        OrganizationUpdate => "organization.update", [Owner, Admin], "Change the organization's name and settings.";
        OrganizationDelete => "organization.delete", [Owner], "Delete the organization and everything in it.";
        OrganizationTransferOwnership => "organization.transfer_ownership", [Owner], "Make another member Owner in the caller's place.";
        MembersRead => "members.read", [Owner, Admin, Billing, Member], "List and read members.";
        MembersInvite => "members.invite", [Owner, Admin], "Invite people by email and manage invitations.";
        MembersRemove => "members.remove", [Owner, Admin], "Remove members.";
        MembersUpdateRole => "members.update_role", [Owner, Admin], "Change members' roles.";
        InvitationsRead => "invitations.read", [Owner, Admin], "List and read invitations.";
        WorkspacesCreate => "workspaces.create", [Owner, Admin], "Create workspaces.";
        WorkspacesUpdate => "workspaces.update", [Owner, Admin], "Rename workspaces.";
        WorkspacesDelete => "workspaces.delete", [Owner, Admin], "Delete workspaces.";
        WorkspaceAccessManage => "workspace_access.manage", [Owner, Admin], "Grant, change and remove members' workspace access.";
        AuditRead => "audit.read", [Owner, Admin], "Read the audit log.";
        BillingRead => "billing.read", [Owner, Billing], "Read billing information, invoices, payment history, usage and costs.";
        BillingManage => "billing.manage", [Owner, Billing], "Manage payment methods.";
    }
    workspace {
        WorkspaceRead => "workspace.read", Read, "Read the workspace.";
        SourcesRead => "sources.read", Read, "Read sources.";
        DestinationsRead => "destinations.read", Read, "Read destinations.";
        SchedulesRead => "schedules.read", Read, "Read schedules.";
        DatasetsRead => "datasets.read", Read, "Read datasets.";
        ExecutionsRead => "executions.read", Read, "Read execution history.";
        SourcesCreate => "sources.create", Write, "Create sources.";
        SourcesUpdate => "sources.update", Write, "Change sources.";
        SourcesDelete => "sources.delete", Write, "Delete sources.";
        DestinationsCreate => "destinations.create", Write, "Create destinations.";
        DestinationsUpdate => "destinations.update", Write, "Change destinations.";
        DestinationsDelete => "destinations.delete", Write, "Delete destinations.";
        SchedulesCreate => "schedules.create", Write, "Create schedules.";
        SchedulesUpdate => "schedules.update", Write, "Change schedules.";
        SchedulesDelete => "schedules.delete", Write, "Delete schedules.";
        DatasetsConfigure => "datasets.configure", Write, "Configure datasets.";
        SyncsTrigger => "syncs.trigger", Write, "Trigger syncs.";
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_round_trip() {
        for permission in Permission::ALL {
            assert_eq!(Permission::from_name(permission.name()), Some(*permission));
        }
        let mut names: Vec<_> = Permission::ALL.iter().map(|p| p.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Permission::ALL.len());
        assert_eq!(Permission::from_name("sources.launch"), None);
        assert_eq!(Permission::from_name("Sources.Read"), None);
    }
}
