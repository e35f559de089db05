//! BatchCreateInvitations: up to 100 invitations in one call, each a change of its own with its
//! own result, each counted against the invitation limits, one email per invitation made.

use roster::pb::batch_create_invitations_result::Result as Item;
use roster::pb::{self, OrganizationRole as R, WorkspaceAccess as A};
use tonic::Code;
use tonic_types::StatusExt as _;

use crate::common::{Backend, TestApp, User, assert_code, spawn_app_with};
use crate::db_tests;

db_tests!(
    a_batch_makes_each_invitation_it_can_and_says_why_for_each_other,
    a_malformed_batch_or_a_caller_who_may_not_invite_is_refused_whole,
    each_item_of_a_batch_counts_against_the_invitation_limits,
    a_retried_batch_returns_its_first_answer_and_mails_no_one_twice,
    a_batch_cut_off_half_way_is_finished_by_its_retry_and_refused_with_other_items,
);

fn item(email: &str, role: R) -> pb::CreateInvitationRequest {
    pb::CreateInvitationRequest { email: email.into(), role: role as i32, ..Default::default() }
}

fn batch(org: &str, items: Vec<pb::CreateInvitationRequest>) -> pb::BatchCreateInvitationsRequest {
    pb::BatchCreateInvitationsRequest {
        organization_id: org.into(),
        invitations: items,
        ..Default::default()
    }
}

/// An item's status as a client library decodes a call's error.
fn status_of(result: &pb::BatchCreateInvitationsResult) -> tonic::Status {
    let Some(Item::Status(status)) = &result.result else { panic!("a refusal: {result:?}") };
    let encoded = prost::Message::encode_to_vec(status);
    tonic::Status::with_details(Code::from_i32(status.code), status.message.clone(), encoded.into())
}

fn invitation_of(result: &pb::BatchCreateInvitationsResult) -> &pb::Invitation {
    let Some(Item::Invitation(invitation)) = &result.result else { panic!("made: {result:?}") };
    invitation
}

async fn app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |config| {
        config.invite_burst = 200;
        config.invite_user_burst = 200;
    })
    .await
}

async fn a_batch_makes_each_invitation_it_can_and_says_why_for_each_other(backend: Backend) {
    let app = app(backend).await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let prod = app.create_workspace(&owner, &org, "production").await;
    let audit_before = app.count("audit_events").await;
    let mut senior = item("senior@example.com", R::Member);
    senior.workspace_grants = vec![pb::InvitationWorkspaceGrant {
        workspace_id: prod.clone(),
        access: A::Write as i32,
        ..Default::default()
    }];
    let items = vec![
        item("admin@example.com", R::Admin),
        item("not-an-email", R::Member),
        senior,
        item(&owner.email, R::Member),
        item("analyst@example.com", R::Member),
        item("ANALYST@example.com", R::Member),
    ];
    let answer = app
        .team
        .clone()
        .batch_create_invitations(owner.req(batch(&org, items)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.results.len(), 6);
    assert_eq!(invitation_of(&answer.results[0]).email, "admin@example.com");
    let bad = status_of(&answer.results[1]);
    assert_eq!(bad.code(), Code::InvalidArgument);
    let fields: Vec<_> = bad
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(fields, ["invitations[1].email"]);
    let senior = invitation_of(&answer.results[2]);
    assert_eq!(senior.workspace_grants.len(), 1);
    let member = status_of(&answer.results[3]);
    assert_eq!(member.code(), Code::AlreadyExists);
    assert_eq!(crate::common::error_info(&member).0, "EMAIL_ALREADY_MEMBER");
    invitation_of(&answer.results[4]);
    let twice = status_of(&answer.results[5]);
    assert_eq!(twice.code(), Code::AlreadyExists, "the same email, differently cased");
    assert_eq!(crate::common::error_info(&twice).0, "INVITATION_PENDING");
    assert!(!answer.consistency_token.is_empty());

    assert_eq!(app.count("invitations").await, 3);
    assert_eq!(app.count("audit_events").await, audit_before + 3, "one audit event per invitation");
    for email in ["admin@example.com", "senior@example.com", "analyst@example.com"] {
        app.smtp.wait_for(email, 1).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for email in ["admin@example.com", "senior@example.com", "analyst@example.com"] {
        assert_eq!(app.emails_to(email).await, 1, "{email}");
    }
    app.stop().await;
}

async fn a_malformed_batch_or_a_caller_who_may_not_invite_is_refused_whole(backend: Backend) {
    let app = app(backend).await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let other = app.create_org(&owner, "Other").await;
    let billing = User::new("billing");
    app.join(&owner, &org, &billing, R::Billing, &[]).await;
    let before = app.snapshot().await;
    let call = |user: &User, request: pb::BatchCreateInvitationsRequest| {
        let mut team = app.team.clone();
        let request = user.req(request);
        async move { team.batch_create_invitations(request).await }
    };
    assert_code(
        call(&owner, batch(&org, vec![])).await,
        Code::InvalidArgument,
        Some("invitations"),
    );
    let many = (0..101).map(|i| item(&format!("p{i}@example.com"), R::Member)).collect();
    assert_code(call(&owner, batch(&org, many)).await, Code::InvalidArgument, Some("invitations"));
    let mut elsewhere = item("x@example.com", R::Member);
    elsewhere.organization_id = other.clone();
    assert_code(
        call(&owner, batch(&org, vec![item("y@example.com", R::Member), elsewhere])).await,
        Code::InvalidArgument,
        Some("invitations[1].organization_id"),
    );
    let mut named = item("x@example.com", R::Member);
    named.request_id = "0190c3b2-7d1e-7a3c-9f00-5b1d2c3e4f50".into();
    assert_code(
        call(&owner, batch(&org, vec![named])).await,
        Code::InvalidArgument,
        Some("invitations[0].request_id"),
    );
    let one = || batch(&org, vec![item("z@example.com", R::Member)]);
    assert_code(call(&billing, one()).await, Code::PermissionDenied, None);
    assert_code(call(&User::new("outsider"), one()).await, Code::NotFound, None);
    assert_eq!(app.snapshot().await, before, "nothing made, nothing mailed");
    app.stop().await;
}

async fn each_item_of_a_batch_counts_against_the_invitation_limits(backend: Backend) {
    let app = spawn_app_with(backend, |config| {
        config.invite_burst = 3;
        config.invite_user_burst = 100;
    })
    .await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let items = (0..5).map(|i| item(&format!("p{i}@example.com"), R::Member)).collect();
    let answer = app
        .team
        .clone()
        .batch_create_invitations(owner.req(batch(&org, items)))
        .await
        .unwrap()
        .into_inner();
    let made = answer.results.iter().filter(|r| matches!(r.result, Some(Item::Invitation(_))));
    assert_eq!(made.count(), 3, "{answer:?}");
    for refused in &answer.results[3..] {
        let status = status_of(refused);
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(crate::common::error_info(&status).0, "RATE_LIMITED");
    }
    assert_eq!(app.count("invitations").await, 3);
    app.stop().await;
}

async fn a_retried_batch_returns_its_first_answer_and_mails_no_one_twice(backend: Backend) {
    let app = app(backend).await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let request = || {
        let mut request =
            batch(&org, vec![item("a@example.com", R::Member), item("b@example.com", R::Admin)]);
        request.request_id = "0190c3b2-7d1e-7a3c-9f00-5b1d2c3e4f52".into();
        owner.req(request)
    };
    let first = app.team.clone().batch_create_invitations(request()).await.unwrap().into_inner();
    app.smtp.wait_for("b@example.com", 1).await;
    let before = app.snapshot().await;
    let again = app.team.clone().batch_create_invitations(request()).await.unwrap().into_inner();
    assert_eq!(again, first);
    assert_eq!(app.snapshot().await, before);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(app.emails_to("a@example.com").await, 1);
    assert_eq!(app.emails_to("b@example.com").await, 1);
    app.stop().await;
}

async fn a_batch_cut_off_half_way_is_finished_by_its_retry_and_refused_with_other_items(
    backend: Backend,
) {
    let app = spawn_app_with(backend, |config| {
        config.invite_burst = 2;
        config.invite_rate_per_hour = 3600;
        config.invite_user_burst = 100;
    })
    .await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let items =
        || (0..3).map(|i| item(&format!("p{i}@example.com"), R::Member)).collect::<Vec<_>>();
    let named = |items: Vec<pb::CreateInvitationRequest>| {
        let mut request = batch(&org, items);
        request.request_id = "0190c3b2-7d1e-7a3c-9f00-5b1d2c3e4f53".into();
        owner.req(request)
    };
    // The budget lets two through: the third item is refused for a reason that may pass.
    let first =
        app.team.clone().batch_create_invitations(named(items())).await.unwrap().into_inner();
    let status = status_of(&first.results[2]);
    assert_eq!(crate::common::error_info(&status).0, "RATE_LIMITED");
    for email in ["p0@example.com", "p1@example.com"] {
        app.smtp.wait_for(email, 1).await;
    }
    // The same id with other items is refused, even though the first answer was not final.
    let mut other = items();
    other[2].email = "someone-else@example.com".into();
    let reused = app.team.clone().batch_create_invitations(named(other)).await;
    crate::common::assert_reason(reused, Code::FailedPrecondition, "REQUEST_ID_REUSED");
    // Once the budget refills, the retry finishes the batch: the two made are answered as
    // they were (no second email), the third is made.
    let mut retried = None;
    for _ in 0..40 {
        let answer =
            app.team.clone().batch_create_invitations(named(items())).await.unwrap().into_inner();
        if matches!(answer.results[2].result, Some(Item::Invitation(_))) {
            retried = Some(answer);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let retried = retried.expect("the third item is made once the budget allows");
    assert_eq!(retried.results[0], first.results[0]);
    assert_eq!(retried.results[1], first.results[1]);
    assert_eq!(app.count("invitations").await, 3);
    app.smtp.wait_for("p2@example.com", 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for email in ["p0@example.com", "p1@example.com", "p2@example.com"] {
        assert_eq!(app.emails_to(email).await, 1, "{email}");
    }
    // Now final: a further retry is the same answer, with nothing made.
    let before = app.snapshot().await;
    let again =
        app.team.clone().batch_create_invitations(named(items())).await.unwrap().into_inner();
    assert_eq!(again, retried);
    assert_eq!(app.snapshot().await, before);
    app.stop().await;
}
