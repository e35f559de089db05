//! Every error carries a google.rpc.ErrorInfo whose reason a client can branch on; the reasons
//! are those the proto's ErrorReason documents.

use roster::pb::{self, OrganizationRole as R, WorkspaceAccess as A};
use tonic::{Code, Request};

use crate::common::{Backend, User, assert_reason, error_info, set_access, spawn_app};
use crate::db_tests;

db_tests!(
    refusals_carry_their_reason_and_facts,
    an_expired_invitation_meeting_a_newer_one_is_refused_by_the_constraint_it_meets
);

async fn refusals_carry_their_reason_and_facts(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let admin = User::new("admin");
    let member = User::new("member");
    let org = app.create_org(&owner, "Acme").await;
    let ws = app.create_workspace(&owner, &org, "prod").await;
    app.join(&owner, &org, &admin, R::Admin, &[]).await;
    app.join(&owner, &org, &member, R::Member, &[]).await;
    app.invite(&owner, &org, "dup@example.com", R::Member, &[]).await.unwrap();
    let mut team = app.team.clone();
    // Every call below is refused, and none changes anything.
    let before = app.snapshot().await;

    // The missing permission is named in the metadata, for a page to explain the refusal.
    let status = app.invite(&member, &org, "x@example.com", R::Member, &[]).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let (reason, metadata) = error_info(&status);
    assert_eq!(reason, "PERMISSION_MISSING");
    assert_eq!(metadata.get("permission").map(String::as_str), Some("members.invite"));

    let leave = team
        .leave_organization(owner.req(pb::LeaveOrganizationRequest {
            organization_id: org.clone(),
            ..Default::default()
        }))
        .await;
    assert_reason(leave, Code::FailedPrecondition, "LAST_OWNER");
    let remove = team
        .remove_member(admin.req(pb::RemoveMemberRequest {
            organization_id: org.clone(),
            user_id: owner.id.clone(),
            ..Default::default()
        }))
        .await;
    assert_reason(remove, Code::PermissionDenied, "OWNER_REQUIRED");
    let grant = team.set_workspace_access(set_access(&admin, &org, &ws, &owner, A::Read)).await;
    assert_reason(grant, Code::FailedPrecondition, "OWNER_HOLDS_EVERY_WORKSPACE");
    let again = app.invite(&owner, &org, "dup@example.com", R::Member, &[]).await;
    assert_reason(again, Code::AlreadyExists, "INVITATION_PENDING");
    let member_email = app.invite(&owner, &org, &member.email, R::Member, &[]).await;
    assert_reason(member_email, Code::AlreadyExists, "EMAIL_ALREADY_MEMBER");

    // Not found names the kind of resource, and hides existence: the same for an outsider.
    let outsider = User::new("outsider");
    let missing = "01900000-0000-7000-8000-00000000abcd";
    for org_id in [org.as_str(), missing] {
        let status = team
            .get_organization(
                outsider.req(pb::GetOrganizationRequest { organization_id: org_id.to_owned() }),
            )
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
        let (reason, metadata) = error_info(&status);
        assert_eq!(reason, "NOT_FOUND");
        assert_eq!(metadata.get("resource").map(String::as_str), Some("organization"));
    }

    // A malformed request carries the reason beside the BadRequest.
    let bad = team
        .get_organization(owner.req(pb::GetOrganizationRequest { organization_id: "x".into() }))
        .await
        .unwrap_err();
    assert_eq!(error_info(&bad).0, "INVALID_ARGUMENT");
    crate::common::assert_code::<()>(Err(bad), Code::InvalidArgument, Some("organization_id"));

    // Refused before any handler runs.
    let anonymous = team
        .get_organization(Request::new(pb::GetOrganizationRequest { organization_id: org.clone() }))
        .await;
    assert_reason(anonymous, Code::Unauthenticated, "CREDENTIALS_MISSING");
    assert_eq!(app.snapshot().await, before, "a refused call changed something");
    app.stop().await;
}

async fn an_expired_invitation_meeting_a_newer_one_is_refused_by_the_constraint_it_meets(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let old = app.invite(&owner, &org, "ivan@example.com", R::Member, &[]).await.unwrap();
    app.execute("UPDATE invitations SET expire_time = 0").await;
    // The new invitation records the old one expired and becomes the pending one.
    app.invite(&owner, &org, "ivan@example.com", R::Billing, &[]).await.unwrap();
    let before = app.snapshot().await;
    // Bringing the old one back to pending meets the unique index of pending invitations.
    let resend = app
        .team
        .clone()
        .resend_invitation(owner.req(pb::ResendInvitationRequest {
            organization_id: org.clone(),
            invitation_id: old.id,
            ..Default::default()
        }))
        .await;
    assert_reason(resend, Code::FailedPrecondition, "NEWER_INVITATION_PENDING");
    assert_eq!(app.snapshot().await, before, "the refused resend changed something");

    // The members' primary key, which the organization's lock keeps use-cases from meeting:
    // written twice straight through the repository, it is told apart by its name too.
    use roster::domain::{Email, Member, OrganizationId, Role, Timestamp, UserId};
    let again = Member {
        organization_id: OrganizationId::parse(&org).unwrap(),
        user_id: UserId::parse(&owner.id).unwrap(),
        email: Email::parse("other@example.com").unwrap(),
        role: Role::Member,
        create_time: Timestamp::now(),
    };
    let error = roster::storage::repo::insert_founder(&app.db, &again).await.unwrap_err();
    assert_eq!(error.reason(), Some(roster::error::ErrorReason::AlreadyMember), "{error:?}");
    app.stop().await;
}
