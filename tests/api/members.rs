use roster::pb::{self, OrganizationRole as R, WorkspaceAccess as A};
use tonic::Code;

use crate::common::{Backend, TestApp, User, all_pages, assert_code, spawn_app};
use crate::db_tests;

db_tests!(
    admin_cannot_invite_promote_demote_or_remove_an_owner,
    the_last_owner_cannot_leave_be_demoted_or_removed,
    transfer_ownership_makes_the_target_owner_and_the_caller_admin,
    removing_a_member_removes_their_grants_and_access_at_once,
    members_are_listed_in_pages,
    a_forged_page_token_with_control_characters_is_invalid_argument,
    role_changes_are_audited_and_no_op_changes_are_not,
    a_stored_row_that_does_not_read_back_fails_the_list_rather_than_vanishing_from_it,
);

async fn a_stored_row_that_does_not_read_back_fails_the_list_rather_than_vanishing_from_it(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let member = User::new("member");
    let org = app.create_org(&owner, "Acme").await;
    app.join(&owner, &org, &member, R::Member, &[]).await;
    // A role no release ever wrote, as a bad manual edit or a newer release's would be.
    app.execute("UPDATE members SET role = 'emperor' WHERE user_id = 'member'").await;
    let listed = app
        .team
        .clone()
        .list_members(
            owner
                .req(pb::ListMembersRequest { organization_id: org.clone(), ..Default::default() }),
        )
        .await;
    let status = listed.expect_err("a list without the member would be a wrong answer");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(!status.message().contains("emperor"), "no stored values in the answer");
    app.stop().await;
}

async fn role_of(app: &TestApp, actor: &User, org: &str, user: &str) -> i32 {
    app.team
        .clone()
        .get_member(actor.req(pb::GetMemberRequest {
            organization_id: org.to_owned(),
            user_id: user.to_owned(),
        }))
        .await
        .unwrap()
        .into_inner()
        .member
        .unwrap()
        .role
}

fn set_role(
    actor: &User,
    org: &str,
    user: &User,
    role: R,
) -> tonic::Request<pb::UpdateMemberRoleRequest> {
    actor.req(pb::UpdateMemberRoleRequest {
        organization_id: org.to_owned(),
        user_id: user.id.clone(),
        role: role as i32,
        ..Default::default()
    })
}

fn remove(actor: &User, org: &str, user: &User) -> tonic::Request<pb::RemoveMemberRequest> {
    actor.req(pb::RemoveMemberRequest {
        organization_id: org.to_owned(),
        user_id: user.id.clone(),
        ..Default::default()
    })
}

async fn admin_cannot_invite_promote_demote_or_remove_an_owner(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let admin = User::new("admin");
    let member = User::new("member");
    let org = app.create_org(&owner, "Acme").await;
    app.join(&owner, &org, &admin, R::Admin, &[]).await;
    app.join(&owner, &org, &member, R::Member, &[]).await;
    let before = app.snapshot().await;
    let mut team = app.team.clone();

    assert_code(
        app.invite(&admin, &org, "boss@example.com", R::Owner, &[]).await,
        Code::PermissionDenied,
        None,
    );
    assert_code(
        team.update_member_role(set_role(&admin, &org, &member, R::Owner)).await,
        Code::PermissionDenied,
        None,
    );
    assert_code(
        team.update_member_role(set_role(&admin, &org, &admin, R::Owner)).await,
        Code::PermissionDenied,
        None,
    );
    assert_code(
        team.update_member_role(set_role(&admin, &org, &owner, R::Member)).await,
        Code::PermissionDenied,
        None,
    );
    assert_code(
        team.remove_member(remove(&admin, &org, &owner)).await,
        Code::PermissionDenied,
        None,
    );
    assert_code(
        team.transfer_ownership(admin.req(pb::TransferOwnershipRequest {
            organization_id: org.clone(),
            new_owner_user_id: member.id.clone(),
            ..Default::default()
        }))
        .await,
        Code::PermissionDenied,
        None,
    );
    assert_eq!(app.snapshot().await, before);

    // What an Admin may do: manage non-Owners.
    let updated =
        team.update_member_role(set_role(&admin, &org, &member, R::Billing)).await.unwrap();
    assert_eq!(updated.into_inner().member.unwrap().role, R::Billing as i32);
    team.remove_member(remove(&admin, &org, &member)).await.unwrap();
    assert_code(
        team.get_member(owner.req(pb::GetMemberRequest {
            organization_id: org.clone(),
            user_id: member.id.clone(),
        }))
        .await,
        Code::NotFound,
        None,
    );
    app.stop().await;
}

async fn the_last_owner_cannot_leave_be_demoted_or_removed(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let second = User::new("second");
    let org = app.create_org(&owner, "Acme").await;
    let before = app.snapshot().await;
    let mut team = app.team.clone();

    let leave = team
        .leave_organization(owner.req(pb::LeaveOrganizationRequest {
            organization_id: org.clone(),
            ..Default::default()
        }))
        .await;
    assert_code(leave, Code::FailedPrecondition, None);
    assert_code(
        team.update_member_role(set_role(&owner, &org, &owner, R::Admin)).await,
        Code::FailedPrecondition,
        None,
    );
    assert_code(
        team.remove_member(remove(&owner, &org, &owner)).await,
        Code::FailedPrecondition,
        None,
    );
    assert_eq!(app.snapshot().await, before);

    // With a second Owner, the first may step down, and then the second is the last.
    app.join(&owner, &org, &second, R::Owner, &[]).await;
    team.update_member_role(set_role(&owner, &org, &owner, R::Admin)).await.unwrap();
    let leave = team
        .leave_organization(second.req(pb::LeaveOrganizationRequest {
            organization_id: org.clone(),
            ..Default::default()
        }))
        .await;
    assert_code(leave, Code::FailedPrecondition, None);
    assert_eq!(role_of(&app, &second, &org, &second.id).await, R::Owner as i32);
    // The former Owner, now an Admin, can leave.
    team.leave_organization(
        owner.req(pb::LeaveOrganizationRequest {
            organization_id: org.clone(),
            ..Default::default()
        }),
    )
    .await
    .unwrap();
    assert!(!app.allowed(&owner.id, &org, "", "organization.read").await);
    app.stop().await;
}

async fn transfer_ownership_makes_the_target_owner_and_the_caller_admin(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let heir = User::new("heir");
    let org = app.create_org(&owner, "Acme").await;
    app.join(&owner, &org, &heir, R::Member, &[]).await;
    let mut team = app.team.clone();

    let to_self = team
        .transfer_ownership(owner.req(pb::TransferOwnershipRequest {
            organization_id: org.clone(),
            new_owner_user_id: owner.id.clone(),
            ..Default::default()
        }))
        .await;
    assert_code(to_self, Code::InvalidArgument, Some("new_owner_user_id"));
    let to_stranger = team
        .transfer_ownership(owner.req(pb::TransferOwnershipRequest {
            organization_id: org.clone(),
            new_owner_user_id: "stranger".into(),
            ..Default::default()
        }))
        .await;
    assert_code(to_stranger, Code::NotFound, None);

    let response = team
        .transfer_ownership(owner.req(pb::TransferOwnershipRequest {
            organization_id: org.clone(),
            new_owner_user_id: heir.id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.previous_owner.unwrap().role, R::Admin as i32);
    assert_eq!(response.new_owner.unwrap().role, R::Owner as i32);
    assert_eq!(role_of(&app, &heir, &org, &owner.id).await, R::Admin as i32);
    assert_eq!(role_of(&app, &heir, &org, &heir.id).await, R::Owner as i32);
    assert!(app.allowed(&heir.id, &org, "", "organization.delete").await);
    assert!(!app.allowed(&owner.id, &org, "", "organization.delete").await);
    app.stop().await;
}

async fn removing_a_member_removes_their_grants_and_access_at_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let engineer = User::new("engineer");
    let org = app.create_org(&owner, "Acme").await;
    let prod = app.create_workspace(&owner, &org, "prod").await;
    let staging = app.create_workspace(&owner, &org, "staging").await;
    app.join(&owner, &org, &engineer, R::Member, &[(&prod, A::Write), (&staging, A::Read)]).await;
    assert!(app.allowed(&engineer.id, &org, &prod, "sources.create").await);
    assert_eq!(app.count("workspace_grants").await, 2);

    app.team.clone().remove_member(remove(&owner, &org, &engineer)).await.unwrap();
    let decision = app.authorize(&engineer.id, &org, &prod, "sources.read").await;
    assert!(!decision.allowed);
    assert_eq!(decision.reason, pb::DecisionReason::DeniedNotAMember as i32);
    assert_eq!(app.count("workspace_grants").await, 0);

    // Coming back does not restore old grants.
    app.join(&owner, &org, &engineer, R::Member, &[]).await;
    let decision = app.authorize(&engineer.id, &org, &prod, "sources.read").await;
    assert_eq!(decision.reason, pb::DecisionReason::DeniedNoWorkspaceAccess as i32);
    app.stop().await;
}

async fn members_are_listed_in_pages(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let mut expected = vec![owner.id.clone()];
    for i in 0..4 {
        let user = User::new(&format!("member{i}"));
        app.join(&owner, &org, &user, R::Member, &[]).await;
        expected.push(user.id);
    }
    expected.sort();
    let seen: Vec<String> = all_pages(2, |page_token| {
        let request = owner.req(pb::ListMembersRequest {
            organization_id: org.clone(),
            page_size: 2,
            page_token,
        });
        let mut team = app.team.clone();
        async move {
            let page = team.list_members(request).await.unwrap().into_inner();
            (page.members.into_iter().map(|m| m.user_id).collect(), page.next_page_token)
        }
    })
    .await;
    assert_eq!(seen, expected);
    app.stop().await;
}

async fn a_forged_page_token_with_control_characters_is_invalid_argument(backend: Backend) {
    use base64::Engine as _;
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let before = app.snapshot().await;
    for cursor in ["\0", "a\0b", "x\u{1}", "\n"] {
        let token =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("members:{cursor}"));
        let listed = app
            .team
            .clone()
            .list_members(owner.req(pb::ListMembersRequest {
                organization_id: org.clone(),
                page_size: 2,
                page_token: token,
            }))
            .await;
        assert_code(listed, Code::InvalidArgument, Some("page_token"));
    }
    assert_eq!(app.snapshot().await, before);
    app.stop().await;
}

async fn role_changes_are_audited_and_no_op_changes_are_not(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let member = User::new("member");
    let org = app.create_org(&owner, "Acme").await;
    app.join(&owner, &org, &member, R::Member, &[]).await;
    let events_before = app.count("audit_events").await;
    let mut team = app.team.clone();
    team.update_member_role(set_role(&owner, &org, &member, R::Billing)).await.unwrap();
    assert_eq!(app.count("audit_events").await, events_before + 1);
    team.update_member_role(set_role(&owner, &org, &member, R::Billing)).await.unwrap();
    assert_eq!(app.count("audit_events").await, events_before + 1);
    let events = team
        .list_audit_events(owner.req(pb::ListAuditEventsRequest {
            organization_id: org.clone(),
            page_size: 1,
            page_token: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(events.events[0].action, "member.role_updated");
    assert_eq!(events.events[0].target, "member/member");
    assert!(events.events[0].details_json.contains("\"new_role\":\"billing\""));
    assert!(!events.next_page_token.is_empty());
    app.stop().await;
}
