//! Every TeamService RPC, called as each role, as a non-member and without credentials. The
//! expected outcome of each cell is written from SPEC's permission tables and visibility rules.

use roster::pb::{self, OrganizationRole as R, WorkspaceAccess as A};
use sea_orm::{ConnectionTrait, DbBackend};
use tonic::{Code, Request, Status};

use crate::common::{Backend, TestApp, User, spawn_app_with};
use crate::db_tests;

db_tests!(every_team_rpc_answers_each_kind_of_caller_as_the_tables_say);

/// The methods TeamService declares, read from the descriptor set the server serves for
/// reflection: a method added to the proto without a row in [`MATRIX`] fails the test below.
fn team_service_methods() -> Vec<String> {
    use prost::Message;
    let set = prost_types::FileDescriptorSet::decode(roster::pb::FILE_DESCRIPTOR_SET).unwrap();
    let service = set
        .file
        .iter()
        .flat_map(|file| &file.service)
        .find(|service| service.name() == "TeamService")
        .expect("TeamService in the descriptor set");
    service.method.iter().map(|method| method.name().to_owned()).collect()
}

#[test]
fn the_matrix_has_a_row_for_every_team_service_method() {
    let methods = team_service_methods();
    // These name no organization; tests/api/organizations.rs and invitations.rs cover them.
    let exempt = ["CreateOrganization", "ListOrganizations", "AcceptInvitation"];
    for method in &methods {
        let rows = MATRIX.iter().filter(|(rpc, _)| rpc == method).count();
        let expected = usize::from(!exempt.contains(&method.as_str()));
        assert_eq!(rows, expected, "{method}: rows in MATRIX");
    }
    for (rpc, _) in MATRIX {
        assert!(methods.iter().any(|m| m == rpc), "{rpc} is not a TeamService method");
    }
}

/// What one organization holds for a matrix cell.
struct Fixture {
    org: String,
    workspace: String,
    invitation: String,
}

const OWNER: &str = "owner";
const ADMIN: &str = "admin";
const BILLING: &str = "billing";
const MEMBER: &str = "member";
const TARGET: &str = "target";

/// Builds an organization with one member of each role, a Member "target" to act on, a
/// workspace on which "member" holds READ, and a pending invitation.
async fn fixture(app: &TestApp, name: &str) -> Fixture {
    let owner = User::new(OWNER);
    let org = app.create_org(&owner, name).await;
    let literal = match app.db.get_database_backend() {
        DbBackend::Postgres => format!("'{org}'"),
        _ => format!("X'{}'", org.replace('-', "")),
    };
    for (user, role) in
        [(ADMIN, "admin"), (BILLING, "billing"), (MEMBER, "member"), (TARGET, "member")]
    {
        // Members are inserted directly: the matrix needs many organizations, and joining by
        // invitation is covered elsewhere.
        app.db
            .execute_unprepared(&format!(
                "INSERT INTO members (organization_id, user_id, email, role, create_time) \
                 VALUES ({literal}, '{user}', '{user}@example.com', '{role}', 0)"
            ))
            .await
            .unwrap();
    }
    let workspace = app.create_workspace(&owner, &org, "prod").await;
    app.team
        .clone()
        .set_workspace_access(owner.req(pb::SetWorkspaceAccessRequest {
            organization_id: org.clone(),
            workspace_id: workspace.clone(),
            user_id: MEMBER.into(),
            access: A::Read as i32,
            ..Default::default()
        }))
        .await
        .unwrap();
    let invitation =
        app.invite(&owner, &org, "pending@example.com", R::Member, &[]).await.unwrap().id;
    Fixture { org, workspace, invitation }
}

fn wrap<T>(actor: Option<&User>, message: T) -> Request<T> {
    match actor {
        Some(user) => user.req(message),
        None => Request::new(message),
    }
}

fn done<T>(result: Result<T, Status>) -> Result<(), Status> {
    result.map(|_| ())
}

/// Calls `rpc` as `actor` against organization `org` (which may be another id than the
/// fixture's, to probe existence hiding).
async fn call(
    app: &TestApp,
    fx: &Fixture,
    org: &str,
    rpc: &str,
    actor: Option<&User>,
) -> Result<(), Status> {
    let mut team = app.team.clone();
    let org = org.to_owned();
    let ws = fx.workspace.clone();
    let inv = fx.invitation.clone();
    match rpc {
        "GetOrganization" => done(
            team.get_organization(wrap(actor, pb::GetOrganizationRequest { organization_id: org }))
                .await,
        ),
        "UpdateOrganization" => done(
            team.update_organization(wrap(
                actor,
                pb::UpdateOrganizationRequest {
                    organization: Some(pb::Organization {
                        id: org,
                        display_name: "Renamed".into(),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["display_name".into()],
                    }),
                    ..Default::default()
                },
            ))
            .await,
        ),
        "DeleteOrganization" => done(
            team.delete_organization(wrap(
                actor,
                pb::DeleteOrganizationRequest { organization_id: org, ..Default::default() },
            ))
            .await,
        ),
        "ListMembers" => done(
            team.list_members(wrap(
                actor,
                pb::ListMembersRequest { organization_id: org, ..Default::default() },
            ))
            .await,
        ),
        "GetMember" => done(
            team.get_member(wrap(
                actor,
                pb::GetMemberRequest { organization_id: org, user_id: TARGET.into() },
            ))
            .await,
        ),
        "UpdateMemberRole" => done(
            team.update_member_role(wrap(
                actor,
                pb::UpdateMemberRoleRequest {
                    organization_id: org,
                    user_id: TARGET.into(),
                    role: R::Billing as i32,
                    ..Default::default()
                },
            ))
            .await,
        ),
        "RemoveMember" => done(
            team.remove_member(wrap(
                actor,
                pb::RemoveMemberRequest {
                    organization_id: org,
                    user_id: TARGET.into(),
                    ..Default::default()
                },
            ))
            .await,
        ),
        "LeaveOrganization" => done(
            team.leave_organization(wrap(
                actor,
                pb::LeaveOrganizationRequest { organization_id: org, ..Default::default() },
            ))
            .await,
        ),
        "TransferOwnership" => done(
            team.transfer_ownership(wrap(
                actor,
                pb::TransferOwnershipRequest {
                    organization_id: org,
                    new_owner_user_id: TARGET.into(),
                    ..Default::default()
                },
            ))
            .await,
        ),
        "CreateWorkspace" => done(
            team.create_workspace(wrap(
                actor,
                pb::CreateWorkspaceRequest {
                    organization_id: org,
                    display_name: "new".into(),
                    ..Default::default()
                },
            ))
            .await,
        ),
        "GetWorkspace" => done(
            team.get_workspace(wrap(
                actor,
                pb::GetWorkspaceRequest { organization_id: org, workspace_id: ws },
            ))
            .await,
        ),
        "ListWorkspaces" => done(
            team.list_workspaces(wrap(
                actor,
                pb::ListWorkspacesRequest { organization_id: org, ..Default::default() },
            ))
            .await,
        ),
        "UpdateWorkspace" => done(
            team.update_workspace(wrap(
                actor,
                pb::UpdateWorkspaceRequest {
                    organization_id: org,
                    workspace_id: ws,
                    display_name: "renamed".into(),
                    ..Default::default()
                },
            ))
            .await,
        ),
        "DeleteWorkspace" => done(
            team.delete_workspace(wrap(
                actor,
                pb::DeleteWorkspaceRequest {
                    organization_id: org,
                    workspace_id: ws,
                    ..Default::default()
                },
            ))
            .await,
        ),
        "SetWorkspaceAccess" => done(
            team.set_workspace_access(wrap(
                actor,
                pb::SetWorkspaceAccessRequest {
                    organization_id: org,
                    workspace_id: ws,
                    user_id: TARGET.into(),
                    access: A::Write as i32,
                    ..Default::default()
                },
            ))
            .await,
        ),
        "ListWorkspaceAccess" => done(
            team.list_workspace_access(wrap(
                actor,
                pb::ListWorkspaceAccessRequest { organization_id: org, ..Default::default() },
            ))
            .await,
        ),
        "BatchCreateInvitations" => done(
            team.batch_create_invitations(wrap(
                actor,
                pb::BatchCreateInvitationsRequest {
                    organization_id: org,
                    invitations: vec![pb::CreateInvitationRequest {
                        email: "batched@example.com".into(),
                        role: R::Member as i32,
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ))
            .await,
        ),
        "CreateInvitation" => done(
            team.create_invitation(wrap(
                actor,
                pb::CreateInvitationRequest {
                    organization_id: org,
                    email: "newcomer@example.com".into(),
                    role: R::Member as i32,
                    workspace_grants: vec![],
                    ..Default::default()
                },
            ))
            .await,
        ),
        "ListInvitations" => done(
            team.list_invitations(wrap(
                actor,
                pb::ListInvitationsRequest { organization_id: org, ..Default::default() },
            ))
            .await,
        ),
        "ResendInvitation" => done(
            team.resend_invitation(wrap(
                actor,
                pb::ResendInvitationRequest {
                    organization_id: org,
                    invitation_id: inv,
                    ..Default::default()
                },
            ))
            .await,
        ),
        "RevokeInvitation" => done(
            team.revoke_invitation(wrap(
                actor,
                pb::RevokeInvitationRequest {
                    organization_id: org,
                    invitation_id: inv,
                    ..Default::default()
                },
            ))
            .await,
        ),
        "ListAuditEvents" => done(
            team.list_audit_events(wrap(
                actor,
                pb::ListAuditEventsRequest { organization_id: org, ..Default::default() },
            ))
            .await,
        ),
        "ListMyPermissions" => done(
            team.list_my_permissions(wrap(
                actor,
                pb::ListMyPermissionsRequest { organization_id: org, workspace_id: String::new() },
            ))
            .await,
        ),
        other => panic!("no call for {other}"),
    }
}

use Code::{FailedPrecondition as Fp, NotFound as Nf, Ok as Y, PermissionDenied as Pd};

/// Expected code for (owner, admin, billing, member), from SPEC.
const MATRIX: &[(&str, [Code; 4])] = &[
    ("GetOrganization", [Y, Y, Y, Y]), // organization.read: every role
    ("UpdateOrganization", [Y, Y, Pd, Pd]), // organization.update
    ("DeleteOrganization", [Y, Pd, Pd, Pd]), // organization.delete
    ("ListMembers", [Y, Y, Y, Y]),     // members.read
    ("GetMember", [Y, Y, Y, Y]),       // members.read
    ("UpdateMemberRole", [Y, Y, Pd, Pd]), // members.update_role
    ("RemoveMember", [Y, Y, Pd, Pd]),  // members.remove
    ("LeaveOrganization", [Fp, Y, Y, Y]), // anyone; never the last Owner
    ("TransferOwnership", [Y, Pd, Pd, Pd]), // organization.transfer_ownership
    ("CreateWorkspace", [Y, Y, Pd, Pd]), // workspaces.create
    ("GetWorkspace", [Y, Y, Nf, Y]),   // Billing holds no grant: hidden
    ("ListWorkspaces", [Y, Y, Y, Y]),  // filtered by grants
    ("UpdateWorkspace", [Y, Y, Pd, Pd]), // workspaces.update
    ("DeleteWorkspace", [Y, Y, Pd, Pd]), // workspaces.delete
    ("SetWorkspaceAccess", [Y, Y, Pd, Pd]), // workspace_access.manage
    ("ListWorkspaceAccess", [Y, Y, Y, Y]), // filtered to one's own grants
    ("CreateInvitation", [Y, Y, Pd, Pd]), // members.invite
    ("BatchCreateInvitations", [Y, Y, Pd, Pd]), // members.invite
    ("ListInvitations", [Y, Y, Pd, Pd]), // invitations.read
    ("ResendInvitation", [Y, Y, Pd, Pd]), // members.invite
    ("RevokeInvitation", [Y, Y, Pd, Pd]), // members.invite
    ("ListAuditEvents", [Y, Y, Pd, Pd]), // audit.read
    ("ListMyPermissions", [Y, Y, Y, Y]), // any member
];

async fn every_team_rpc_answers_each_kind_of_caller_as_the_tables_say(backend: Backend) {
    // One Owner founds and invites in every cell's organization: more than one user's default
    // budget of new organizations and invitations.
    let app = spawn_app_with(backend, |config| {
        config.org_create_burst = 1000;
        config.invite_user_burst = 1000;
    })
    .await;
    let shared = fixture(&app, "shared").await;
    let missing_org = "01900000-0000-7000-8000-00000000abcd";
    let outsider = User::new("outsider");
    let mut cells = 0;
    for (rpc, expected) in MATRIX {
        for (role, code) in [OWNER, ADMIN, BILLING, MEMBER].into_iter().zip(expected) {
            let actor = User::new(role);
            if *code == Code::Ok {
                // A successful call changes things: give it an organization of its own.
                let own = fixture(&app, &format!("{rpc} as {role}")).await;
                let result = call(&app, &own, &own.org.clone(), rpc, Some(&actor)).await;
                assert!(result.is_ok(), "{rpc} as {role}: {result:?}");
            } else {
                let before = app.snapshot().await;
                let result = call(&app, &shared, &shared.org, rpc, Some(&actor)).await;
                let status = result.expect_err(&format!("{rpc} as {role} must fail"));
                assert_eq!(status.code(), *code, "{rpc} as {role}: {status:?}");
                assert_eq!(app.snapshot().await, before, "{rpc} as {role} changed something");
            }
            cells += 1;
        }
        // A non-member gets the same NOT_FOUND whether the organization exists or not, and
        // a caller without credentials is UNAUTHENTICATED; neither changes anything.
        let before = app.snapshot().await;
        for org in [shared.org.as_str(), missing_org] {
            let status = call(&app, &shared, org, rpc, Some(&outsider)).await.expect_err(rpc);
            assert_eq!(status.code(), Code::NotFound, "{rpc} as outsider on {org}: {status:?}");
            assert_eq!(
                status.message(),
                "organization not found",
                "{rpc}: the answer must not depend on existence"
            );
            let status = call(&app, &shared, org, rpc, None).await.expect_err(rpc);
            assert_eq!(status.code(), Code::Unauthenticated, "{rpc} without credentials");
        }
        assert_eq!(app.snapshot().await, before, "{rpc} by an outsider changed something");
        cells += 2;
    }
    println!("{cells} cells of the authorization matrix checked");
    app.stop().await;
}
