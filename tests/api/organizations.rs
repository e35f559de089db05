use roster::pb;
use tonic::Code;

use crate::common::{Backend, User, all_pages, assert_code, spawn_app};
use crate::db_tests;

db_tests!(
    creating_an_organization_makes_the_caller_its_owner,
    an_outsider_gets_not_found_whether_or_not_the_organization_exists,
    a_member_without_the_permission_gets_permission_denied_and_nothing_changes,
    bad_input_names_the_field_and_changes_nothing,
    update_organization_follows_the_mask_and_validates_the_ttl,
    only_an_owner_deletes_an_organization_and_everything_goes_with_it,
    list_organizations_pages_through_the_callers_organizations,
    a_call_without_identity_is_unauthenticated,
);

async fn creating_an_organization_makes_the_caller_its_owner(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "  Acme Data ").await;

    let got = app
        .team
        .clone()
        .get_organization(owner.req(pb::GetOrganizationRequest { organization_id: org.clone() }))
        .await
        .unwrap()
        .into_inner()
        .organization
        .unwrap();
    assert_eq!(got.display_name, "Acme Data");
    assert_eq!(got.invitation_ttl.unwrap().seconds, 7 * 24 * 3600);

    let member =
        app.team
            .clone()
            .get_member(owner.req(pb::GetMemberRequest {
                organization_id: org.clone(),
                user_id: owner.id.clone(),
            }))
            .await
            .unwrap()
            .into_inner()
            .member
            .unwrap();
    assert_eq!(member.role, pb::OrganizationRole::Owner as i32);
    assert_eq!(member.email, "owner@example.com");

    let decision = app.authorize(&owner.id, &org, "", "organization.delete").await;
    assert!(decision.allowed);
    assert_eq!(decision.role, pb::OrganizationRole::Owner as i32);

    let events =
        app.team
            .clone()
            .list_audit_events(owner.req(pb::ListAuditEventsRequest {
                organization_id: org.clone(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner()
            .events;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].action, "organization.created");
    assert_eq!(events[0].actor_user_id, "owner");
    app.stop().await;
}

async fn an_outsider_gets_not_found_whether_or_not_the_organization_exists(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let outsider = User::new("outsider");
    let org = app.create_org(&owner, "Acme").await;
    let ws = app.create_workspace(&owner, &org, "prod").await;
    let missing = "01900000-0000-7000-8000-000000000000".to_owned();

    for target in [org.clone(), missing.clone()] {
        let mut team = app.team.clone();
        let get = team
            .get_organization(
                outsider.req(pb::GetOrganizationRequest { organization_id: target.clone() }),
            )
            .await;
        assert_code(get, Code::NotFound, None);
        let members = team
            .list_members(outsider.req(pb::ListMembersRequest {
                organization_id: target.clone(),
                ..Default::default()
            }))
            .await;
        assert_code(members, Code::NotFound, None);
        let workspace = team
            .get_workspace(outsider.req(pb::GetWorkspaceRequest {
                organization_id: target.clone(),
                workspace_id: ws.clone(),
            }))
            .await;
        assert_code(workspace, Code::NotFound, None);
        let create = team
            .create_workspace(outsider.req(pb::CreateWorkspaceRequest {
                organization_id: target.clone(),
                display_name: "sneaky".into(),
                ..Default::default()
            }))
            .await;
        assert_code(create, Code::NotFound, None);
        let invite = team
            .create_invitation(outsider.req(pb::CreateInvitationRequest {
                organization_id: target.clone(),
                email: "x@example.com".into(),
                role: pb::OrganizationRole::Member as i32,
                workspace_grants: vec![],
                ..Default::default()
            }))
            .await;
        assert_code(invite, Code::NotFound, None);
        let leave = team
            .leave_organization(outsider.req(pb::LeaveOrganizationRequest {
                organization_id: target.clone(),
                ..Default::default()
            }))
            .await;
        assert_code(leave, Code::NotFound, None);
    }
    let not_a_member = app.authorize(&outsider.id, &org, &ws, "workspace.read").await;
    assert!(!not_a_member.allowed);
    assert_eq!(not_a_member.reason, pb::DecisionReason::DeniedNotAMember as i32);
    app.stop().await;
}

async fn a_member_without_the_permission_gets_permission_denied_and_nothing_changes(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let member = User::new("member");
    let billing = User::new("billing");
    let org = app.create_org(&owner, "Acme").await;
    app.join(&owner, &org, &member, pb::OrganizationRole::Member, &[]).await;
    app.join(&owner, &org, &billing, pb::OrganizationRole::Billing, &[]).await;
    let before = app.snapshot().await;
    let mut team = app.team.clone();

    for user in [&member, &billing] {
        let create = team
            .create_workspace(user.req(pb::CreateWorkspaceRequest {
                organization_id: org.clone(),
                display_name: "mine".into(),
                ..Default::default()
            }))
            .await;
        assert_code(create, Code::PermissionDenied, None);
        let rename = team
            .update_organization(user.req(pb::UpdateOrganizationRequest {
                organization: Some(pb::Organization {
                    id: org.clone(),
                    display_name: "Hijacked".into(),
                    ..Default::default()
                }),
                update_mask: None,
                ..Default::default()
            }))
            .await;
        assert_code(rename, Code::PermissionDenied, None);
        let invite =
            app.invite(user, &org, "friend@example.com", pb::OrganizationRole::Member, &[]).await;
        assert_code(invite, Code::PermissionDenied, None);
        let audit = team
            .list_audit_events(user.req(pb::ListAuditEventsRequest {
                organization_id: org.clone(),
                ..Default::default()
            }))
            .await;
        assert_code(audit, Code::PermissionDenied, None);
        let remove = team
            .remove_member(user.req(pb::RemoveMemberRequest {
                organization_id: org.clone(),
                user_id: owner.id.clone(),
                ..Default::default()
            }))
            .await;
        assert_code(remove, Code::PermissionDenied, None);
    }
    assert_eq!(app.snapshot().await, before);
    app.stop().await;
}

async fn bad_input_names_the_field_and_changes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let before = app.snapshot().await;
    let mut team = app.team.clone();

    let empty_name = team
        .create_organization(owner.req(pb::CreateOrganizationRequest {
            display_name: "   ".into(),
            ..Default::default()
        }))
        .await;
    assert_code(empty_name, Code::InvalidArgument, Some("display_name"));
    let long_name = team
        .create_organization(owner.req(pb::CreateOrganizationRequest {
            display_name: "x".repeat(201),
            ..Default::default()
        }))
        .await;
    assert_code(long_name, Code::InvalidArgument, Some("display_name"));
    let bad_id = team
        .get_organization(owner.req(pb::GetOrganizationRequest {
            organization_id: "acme'; DROP TABLE members;--".into(),
        }))
        .await;
    assert_code(bad_id, Code::InvalidArgument, Some("organization_id"));
    let two_bad = team
        .update_member_role(owner.req(pb::UpdateMemberRoleRequest {
            organization_id: org.clone(),
            user_id: String::new(),
            role: 0,
            ..Default::default()
        }))
        .await;
    assert_code(two_bad, Code::InvalidArgument, Some("user_id"));
    let unknown_role = team
        .update_member_role(owner.req(pb::UpdateMemberRoleRequest {
            organization_id: org.clone(),
            user_id: owner.id.clone(),
            role: 42,
            ..Default::default()
        }))
        .await;
    assert_code(unknown_role, Code::InvalidArgument, Some("role"));
    let huge_page = team
        .list_members(owner.req(pb::ListMembersRequest {
            organization_id: org.clone(),
            page_size: 1001,
            page_token: String::new(),
        }))
        .await;
    assert_code(huge_page, Code::InvalidArgument, Some("page_size"));
    let negative_page = team
        .list_members(owner.req(pb::ListMembersRequest {
            organization_id: org.clone(),
            page_size: -5,
            page_token: String::new(),
        }))
        .await;
    assert_code(negative_page, Code::InvalidArgument, Some("page_size"));
    let forged = team
        .list_workspaces(owner.req(pb::ListWorkspacesRequest {
            organization_id: org.clone(),
            page_size: 10,
            page_token: "d29ya3NwYWNlczpub3QtYS11dWlk".into(),
        }))
        .await;
    assert_code(forged, Code::InvalidArgument, Some("page_token"));
    let bad_email =
        app.invite(&owner, &org, "not-an-email", pb::OrganizationRole::Member, &[]).await;
    assert_code(bad_email, Code::InvalidArgument, Some("email"));
    let no_role =
        app.invite(&owner, &org, "ok@example.com", pb::OrganizationRole::Unspecified, &[]).await;
    assert_code(no_role, Code::InvalidArgument, Some("role"));
    let unknown_workspace = app
        .invite(
            &owner,
            &org,
            "ok@example.com",
            pb::OrganizationRole::Member,
            &[("01900000-0000-7000-8000-000000000000", pb::WorkspaceAccess::Read)],
        )
        .await;
    assert_code(unknown_workspace, Code::InvalidArgument, Some("workspace_grants[0].workspace_id"));
    let bad_token = app.accept(&User::new("someone"), "short").await;
    assert_code(bad_token, Code::InvalidArgument, Some("token"));
    assert_eq!(app.snapshot().await, before);
    app.stop().await;
}

async fn update_organization_follows_the_mask_and_validates_the_ttl(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let mut team = app.team.clone();
    let update = |name: &str, ttl: Option<i64>, paths: &[&str]| {
        owner.req(pb::UpdateOrganizationRequest {
            organization: Some(pb::Organization {
                id: org.clone(),
                display_name: name.to_owned(),
                invitation_ttl: ttl.map(|seconds| prost_types::Duration { seconds, nanos: 0 }),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            }),
            ..Default::default()
        })
    };
    // Only the named field changes.
    let renamed = team
        .update_organization(update("Acme Corp", Some(7200), &["display_name"]))
        .await
        .unwrap()
        .into_inner()
        .organization
        .unwrap();
    assert_eq!(renamed.display_name, "Acme Corp");
    assert_eq!(renamed.invitation_ttl.unwrap().seconds, 7 * 24 * 3600);
    let ttl = team
        .update_organization(update("", Some(3600), &["invitation_ttl"]))
        .await
        .unwrap()
        .into_inner()
        .organization
        .unwrap();
    assert_eq!(ttl.invitation_ttl.unwrap().seconds, 3600);
    assert_eq!(ttl.display_name, "Acme Corp");
    // The JSON names of the fields, as a mask written in JSON carries them, work too.
    let camel = team
        .update_organization(update("Acme Data", Some(7200), &["displayName", "invitationTtl"]))
        .await
        .unwrap()
        .into_inner()
        .organization
        .unwrap();
    assert_eq!(camel.display_name, "Acme Data");
    assert_eq!(camel.invitation_ttl.unwrap().seconds, 7200);

    let before = app.snapshot().await;
    let too_short = team.update_organization(update("", Some(3599), &["invitation_ttl"])).await;
    assert_code(too_short, Code::InvalidArgument, Some("organization.invitation_ttl"));
    let too_long =
        team.update_organization(update("", Some(31 * 86400), &["invitation_ttl"])).await;
    assert_code(too_long, Code::InvalidArgument, Some("organization.invitation_ttl"));
    let unknown_path = team.update_organization(update("X", None, &["id"])).await;
    assert_code(unknown_path, Code::InvalidArgument, Some("update_mask"));
    assert_eq!(app.snapshot().await, before);
    app.stop().await;
}

async fn only_an_owner_deletes_an_organization_and_everything_goes_with_it(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let admin = User::new("admin");
    let org = app.create_org(&owner, "Acme").await;
    let other_org = app.create_org(&owner, "Other").await;
    let ws = app.create_workspace(&owner, &org, "prod").await;
    app.join(
        &owner,
        &org,
        &admin,
        pb::OrganizationRole::Admin,
        &[(&ws, pb::WorkspaceAccess::Write)],
    )
    .await;
    app.invite(
        &owner,
        &org,
        "pending@example.com",
        pb::OrganizationRole::Member,
        &[(&ws, pb::WorkspaceAccess::Read)],
    )
    .await
    .unwrap();
    let mut team = app.team.clone();

    let by_admin = team
        .delete_organization(admin.req(pb::DeleteOrganizationRequest {
            organization_id: org.clone(),
            ..Default::default()
        }))
        .await;
    assert_code(by_admin, Code::PermissionDenied, None);
    team.delete_organization(
        owner.req(pb::DeleteOrganizationRequest {
            organization_id: org.clone(),
            ..Default::default()
        }),
    )
    .await
    .unwrap();
    let gone = team
        .get_organization(owner.req(pb::GetOrganizationRequest { organization_id: org.clone() }))
        .await;
    assert_code(gone, Code::NotFound, None);
    assert!(!app.allowed(&admin.id, &org, &ws, "workspace.read").await);
    assert_eq!(app.count("members").await, 1, "only the other organization's owner remains");
    assert_eq!(app.count("workspaces").await, 0);
    assert_eq!(app.count("workspace_grants").await, 0);
    assert_eq!(app.count("invitations").await, 0);
    assert_eq!(app.count("invitation_grants").await, 0);
    assert!(app.allowed(&owner.id, &other_org, "", "organization.update").await);
    app.stop().await;
}

async fn list_organizations_pages_through_the_callers_organizations(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let someone_else = User::new("someone-else");
    let mut mine = Vec::new();
    for i in 0..5 {
        mine.push(app.create_org(&owner, &format!("Org {i}")).await);
    }
    app.create_org(&someone_else, "Not mine").await;
    let seen: Vec<String> = all_pages(2, |page_token| {
        let request = owner.req(pb::ListOrganizationsRequest { page_size: 2, page_token });
        let mut team = app.team.clone();
        async move {
            let page = team.list_organizations(request).await.unwrap().into_inner();
            (page.organizations.into_iter().map(|o| o.id).collect(), page.next_page_token)
        }
    })
    .await;
    assert_eq!(seen, mine);
    app.stop().await;
}

async fn a_call_without_identity_is_unauthenticated(backend: Backend) {
    let app = spawn_app(backend).await;
    let result = app
        .team
        .clone()
        .create_organization(tonic::Request::new(pb::CreateOrganizationRequest {
            display_name: "Acme".into(),
            ..Default::default()
        }))
        .await;
    assert_code(result, Code::Unauthenticated, None);
    let mut bad = tonic::Request::new(pb::ListOrganizationsRequest::default());
    bad.metadata_mut().insert("x-user-id", "x".repeat(300).parse().unwrap());
    assert_code(app.team.clone().list_organizations(bad).await, Code::Unauthenticated, None);
    assert_eq!(app.count("organizations").await, 0);
    app.stop().await;
}
