//! The permission catalogue: every name `Authorize` understands, its scope and what it allows.

/// Whether a permission is checked against an organization or one of its workspaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Checked against the organization; no workspace is named.
    Organization,
    /// Checked against one workspace, which must be named.
    Workspace,
}

macro_rules! catalogue {
    ($($variant:ident => $name:literal, $scope:ident, $description:literal;)*) => {
        /// A permission from the catalogue.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Permission {
            $(
                #[doc = $description]
                $variant,
            )*
        }

        impl Permission {
            /// The whole catalogue, in the order it is listed to clients.
            pub const ALL: &'static [Permission] = &[$(Permission::$variant),*];

            /// The wire name, for example `sources.create`.
            pub fn name(self) -> &'static str {
                match self {
                    $(Permission::$variant => $name,)*
                }
            }

            /// Looks a permission up by its wire name; `None` for a name outside the catalogue.
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $($name => Some(Permission::$variant),)*
                    _ => None,
                }
            }

            /// Organization or workspace.
            pub fn scope(self) -> Scope {
                match self {
                    $(Permission::$variant => Scope::$scope,)*
                }
            }

            /// What the permission allows, for ListPermissions.
            pub fn description(self) -> &'static str {
                match self {
                    $(Permission::$variant => $description,)*
                }
            }
        }
    };
}

catalogue! {
    OrganizationRead => "organization.read", Organization, "Read the organization and its settings.";
    OrganizationUpdate => "organization.update", Organization, "Change the organization's name and settings.";
    OrganizationDelete => "organization.delete", Organization, "Delete the organization and everything in it.";
    OrganizationTransferOwnership => "organization.transfer_ownership", Organization, "Make another member Owner in the caller's place.";
    MembersRead => "members.read", Organization, "List and read members.";
    MembersInvite => "members.invite", Organization, "Invite people by email and manage invitations.";
    MembersRemove => "members.remove", Organization, "Remove members.";
    MembersUpdateRole => "members.update_role", Organization, "Change members' roles.";
    InvitationsRead => "invitations.read", Organization, "List and read invitations.";
    WorkspacesCreate => "workspaces.create", Organization, "Create workspaces.";
    WorkspacesUpdate => "workspaces.update", Organization, "Rename workspaces.";
    WorkspacesDelete => "workspaces.delete", Organization, "Delete workspaces.";
    WorkspaceAccessManage => "workspace_access.manage", Organization, "Grant, change and remove members' workspace access.";
    AuditRead => "audit.read", Organization, "Read the audit log.";
    BillingRead => "billing.read", Organization, "Read billing information, invoices, payment history, usage and costs.";
    BillingManage => "billing.manage", Organization, "Manage payment methods.";
    WorkspaceRead => "workspace.read", Workspace, "Read the workspace.";
    SourcesRead => "sources.read", Workspace, "Read sources.";
    DestinationsRead => "destinations.read", Workspace, "Read destinations.";
    SchedulesRead => "schedules.read", Workspace, "Read schedules.";
    DatasetsRead => "datasets.read", Workspace, "Read datasets.";
    ExecutionsRead => "executions.read", Workspace, "Read execution history.";
    SourcesCreate => "sources.create", Workspace, "Create sources.";
    SourcesUpdate => "sources.update", Workspace, "Change sources.";
    SourcesDelete => "sources.delete", Workspace, "Delete sources.";
    DestinationsCreate => "destinations.create", Workspace, "Create destinations.";
    DestinationsUpdate => "destinations.update", Workspace, "Change destinations.";
    DestinationsDelete => "destinations.delete", Workspace, "Delete destinations.";
    SchedulesCreate => "schedules.create", Workspace, "Create schedules.";
    SchedulesUpdate => "schedules.update", Workspace, "Change schedules.";
    SchedulesDelete => "schedules.delete", Workspace, "Delete schedules.";
    DatasetsConfigure => "datasets.configure", Workspace, "Configure datasets.";
    SyncsTrigger => "syncs.trigger", Workspace, "Trigger syncs.";
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
