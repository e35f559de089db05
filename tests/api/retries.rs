//! Safe retries (AIP-155): a change named by a `request_id` is made once. A retry gets the
//! first answer (same ids, same consistency token) and changes nothing, not even after later
//! changes; the same id on another request is refused; concurrent calls with one id make one
//! change.

use roster::pb::{self, OrganizationRole as R, WorkspaceAccess as A};
use tonic::{Code, Request};

use crate::common::{Backend, TestApp, User, assert_code, assert_reason, check, spawn_app_with};
use crate::db_tests;

db_tests!(
    a_retry_returns_the_first_answer_and_makes_no_second_change_or_email,
    a_retried_grant_does_not_undo_a_later_removal,
    a_retried_change_that_changed_nothing_does_not_apply_after_a_later_change,
    the_same_request_id_on_another_request_is_refused_and_changes_nothing,
    concurrent_calls_with_one_request_id_make_one_change,
    a_failed_call_is_not_remembered_and_a_malformed_request_id_is_refused,
    a_retried_deletion_gets_its_first_answer_not_a_not_found,
    a_retry_whose_first_answer_was_lost_is_told_so_and_changes_nothing,
);

async fn app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |config| {
        config.org_create_burst = 100;
        config.invite_user_burst = 100;
    })
    .await
}

const ID: &str = "0190c3b2-7d1e-7a3c-9f00-5b1d2c3e4f50";
const OTHER_ID: &str = "0190c3b2-7d1e-7a3c-9f00-5b1d2c3e4f51";

fn invite(org: &str, email: &str, request_id: &str) -> pb::CreateInvitationRequest {
    pb::CreateInvitationRequest {
        organization_id: org.to_owned(),
        email: email.to_owned(),
        role: R::Member as i32,
        request_id: request_id.to_owned(),
        ..Default::default()
    }
}

fn new_org(name: &str, request_id: &str) -> pb::CreateOrganizationRequest {
    pb::CreateOrganizationRequest { display_name: name.into(), request_id: request_id.into() }
}

fn new_workspace(org: &str, name: &str, request_id: &str) -> pb::CreateWorkspaceRequest {
    pb::CreateWorkspaceRequest {
        organization_id: org.to_owned(),
        display_name: name.into(),
        request_id: request_id.into(),
    }
}

/// An UpdateMemberRole request; `request_id` empty for none.
fn new_role(org: &str, user: &str, role: R, request_id: &str) -> pb::UpdateMemberRoleRequest {
    pb::UpdateMemberRoleRequest {
        organization_id: org.to_owned(),
        user_id: user.into(),
        role: role as i32,
        request_id: request_id.into(),
    }
}

async fn a_retry_returns_the_first_answer_and_makes_no_second_change_or_email(backend: Backend) {
    let app = app(backend).await;
    let owner = User::new("owner");
    let create = || owner.req(new_org("Acme", ID));
    let first = app.team.clone().create_organization(create()).await.unwrap().into_inner();
    let again = app.team.clone().create_organization(create()).await.unwrap().into_inner();
    assert_eq!(first, again, "the first answer, ids and token included");
    assert_eq!(app.count("organizations").await, 1);
    let org = first.organization.unwrap().id;

    let before = app.snapshot().await;
    let first = app
        .team
        .clone()
        .create_invitation(owner.req(invite(&org, "dana@example.com", OTHER_ID)))
        .await
        .unwrap()
        .into_inner();
    app.smtp.wait_for("dana@example.com", 1).await;
    let after_first = app.snapshot().await;
    assert_ne!(after_first, before);
    for _ in 0..3 {
        let again = app
            .team
            .clone()
            .create_invitation(owner.req(invite(&org, "dana@example.com", OTHER_ID)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again, first);
    }
    assert_eq!(app.snapshot().await, after_first, "no second invitation, audit event or email");
    // The outbox would deliver a second email within moments; there is none to deliver.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(app.emails_to("dana@example.com").await, 1);
    app.stop().await;
}

async fn a_retried_grant_does_not_undo_a_later_removal(backend: Backend) {
    let app = app(backend).await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let prod = app.create_workspace(&owner, &org, "production").await;
    let bob = User::new("bob");
    app.join(&owner, &org, &bob, R::Member, &[]).await;
    let grant = || {
        owner.req(pb::SetWorkspaceAccessRequest {
            organization_id: org.clone(),
            workspace_id: prod.clone(),
            user_id: "bob".into(),
            access: A::Write as i32,
            request_id: ID.into(),
            ..Default::default()
        })
    };
    let first = app.team.clone().set_workspace_access(grant()).await.unwrap().into_inner();
    assert!(app.allowed("bob", &org, &prod, "sources.create").await);
    // Removed by a later change; then the first call's retry arrives (its answer was lost).
    app.team
        .clone()
        .set_workspace_access(owner.req(pb::SetWorkspaceAccessRequest {
            organization_id: org.clone(),
            workspace_id: prod.clone(),
            user_id: "bob".into(),
            access: A::None as i32,
            ..Default::default()
        }))
        .await
        .unwrap();
    let before = app.snapshot().await;
    let retried = app.team.clone().set_workspace_access(grant()).await.unwrap().into_inner();
    assert_eq!(retried, first);
    assert_eq!(app.snapshot().await, before);
    assert!(!app.allowed("bob", &org, &prod, "sources.read").await, "the removal stands");
    let decision = app
        .access
        .clone()
        .authorize(Request::new(check("bob", &org, &prod, "sources.read")))
        .await
        .unwrap()
        .into_inner();
    assert!(!decision.allowed);
    app.stop().await;
}

async fn a_retried_change_that_changed_nothing_does_not_apply_after_a_later_change(
    backend: Backend,
) {
    let app = app(backend).await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let carol = User::new("carol");
    app.join(&owner, &org, &carol, R::Member, &[]).await;
    let keep_member = || owner.req(new_role(&org, "carol", R::Member, ID));
    // Carol is a Member already: the first call changes nothing.
    let first = app.team.clone().update_member_role(keep_member()).await.unwrap().into_inner();
    app.team
        .clone()
        .update_member_role(owner.req(new_role(&org, "carol", R::Admin, "")))
        .await
        .unwrap();
    let retried = app.team.clone().update_member_role(keep_member()).await.unwrap().into_inner();
    assert_eq!(retried, first);
    let now =
        app.team
            .clone()
            .get_member(owner.req(pb::GetMemberRequest {
                organization_id: org.clone(),
                user_id: "carol".into(),
            }))
            .await
            .unwrap()
            .into_inner();
    assert_eq!(now.member.unwrap().role, R::Admin as i32, "the later change stands");
    app.stop().await;
}

async fn the_same_request_id_on_another_request_is_refused_and_changes_nothing(backend: Backend) {
    let app = app(backend).await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let workspace = |name: &str, request_id: &str| owner.req(new_workspace(&org, name, request_id));
    app.team.clone().create_workspace(workspace("a", ID)).await.unwrap();
    let before = app.snapshot().await;
    let reused = app.team.clone().create_workspace(workspace("b", ID)).await;
    assert_reason(reused, Code::FailedPrecondition, "REQUEST_ID_REUSED");
    // On another method too.
    let reused =
        app.team.clone().create_invitation(owner.req(invite(&org, "e@example.com", ID))).await;
    assert_reason(reused, Code::FailedPrecondition, "REQUEST_ID_REUSED");
    assert_eq!(app.snapshot().await, before);
    // Ids are each caller's own: another user's same id is another request.
    let other = User::new("other");
    let theirs = app
        .team
        .clone()
        .create_organization(other.req(new_org("Theirs", ID)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(theirs.organization.unwrap().display_name, "Theirs");
    app.stop().await;
}

async fn concurrent_calls_with_one_request_id_make_one_change(backend: Backend) {
    let app = app(backend).await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let before_audit = app.count("audit_events").await;
    let mut calls = Vec::new();
    for _ in 0..8 {
        let mut team = app.team.clone();
        let request = owner.req(invite(&org, "erin@example.com", ID));
        calls.push(tokio::spawn(async move { team.create_invitation(request).await }));
    }
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap().expect("every call gets the one answer").into_inner());
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    assert_eq!(app.count("invitations").await, 1);
    assert_eq!(app.count("audit_events").await, before_audit + 1);

    let mut calls = Vec::new();
    for _ in 0..8 {
        let mut team = app.team.clone();
        let request = owner.req(new_org("Twin", OTHER_ID));
        calls.push(tokio::spawn(async move { team.create_organization(request).await }));
    }
    let mut ids = Vec::new();
    for call in calls {
        ids.push(call.await.unwrap().expect("one answer").into_inner().organization.unwrap().id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(app.count("organizations").await, 2);
    app.stop().await;
}

async fn a_failed_call_is_not_remembered_and_a_malformed_request_id_is_refused(backend: Backend) {
    let app = app(backend).await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let admin = User::new("admin");
    app.join(&owner, &org, &admin, R::Member, &[]).await;
    let create = || admin.req(new_workspace(&org, "staging", ID));
    // Refused (a Member may not create workspaces): nothing is remembered...
    assert_code(app.team.clone().create_workspace(create()).await, Code::PermissionDenied, None);
    app.team
        .clone()
        .update_member_role(owner.req(new_role(&org, "admin", R::Admin, "")))
        .await
        .unwrap();
    // ...so the same request, once allowed, is made.
    let made = app.team.clone().create_workspace(create()).await.unwrap().into_inner();
    assert_eq!(made.workspace.unwrap().display_name, "staging");

    let before = app.snapshot().await;
    let malformed =
        app.team.clone().create_workspace(owner.req(new_workspace(&org, "x", "retry-1"))).await;
    assert_code(malformed, Code::InvalidArgument, Some("request_id"));
    assert_eq!(app.snapshot().await, before);
    app.stop().await;
}

async fn a_retried_deletion_gets_its_first_answer_not_a_not_found(backend: Backend) {
    let app = app(backend).await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let delete = || {
        owner.req(pb::DeleteOrganizationRequest {
            organization_id: org.clone(),
            request_id: ID.into(),
        })
    };
    // Two at once, then a late retry: one deletion, and every call gets its answer.
    let (mut one, mut two) = (app.team.clone(), app.team.clone());
    let (a, b) = tokio::join!(one.delete_organization(delete()), two.delete_organization(delete()));
    let (a, b) = (a.unwrap().into_inner(), b.unwrap().into_inner());
    assert_eq!(a, b);
    let late = app.team.clone().delete_organization(delete()).await.unwrap().into_inner();
    assert_eq!(late, a);
    assert_eq!(app.count("organizations").await, 0);
    // Without a request id, the organization is gone as before.
    let again = app
        .team
        .clone()
        .delete_organization(owner.req(pb::DeleteOrganizationRequest {
            organization_id: org.clone(),
            ..Default::default()
        }))
        .await;
    assert_code(again, Code::NotFound, None);
    app.stop().await;
}

async fn a_retry_whose_first_answer_was_lost_is_told_so_and_changes_nothing(backend: Backend) {
    let app = app(backend).await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let create = || owner.req(new_workspace(&org, "prod", ID));
    app.team.clone().create_workspace(create()).await.unwrap();
    // As if the first call had been cut off between its commit and keeping its answer, long ago.
    app.execute("UPDATE request_ids SET response = NULL, create_time = 0").await;
    let before = app.snapshot().await;
    let retried = app.team.clone().create_workspace(create()).await;
    assert_reason(retried, Code::FailedPrecondition, "REQUEST_ANSWER_LOST");
    assert_eq!(app.snapshot().await, before, "the change is not made twice");
    assert_eq!(app.count("workspaces").await, 1);
    app.stop().await;
}
