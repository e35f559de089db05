//! Concurrent requests that must not break the rules.

use std::collections::HashSet;

use roster::pb::{self, OrganizationRole as R};
use tonic::Code;

use crate::common::{Backend, TestApp, User, spawn_app};
use crate::db_tests;

db_tests!(
    at_least_one_owner_remains_under_concurrent_demote_remove_and_leave,
    two_concurrent_accepts_of_one_token_make_one_member,
    concurrent_invitations_of_one_email_make_one_pending_invitation,
    resend_racing_accept_leaves_a_consistent_state,
);

/// Codes a racing request may legitimately get; anything else (INTERNAL, UNKNOWN) is a bug.
fn acceptable(code: Code) -> bool {
    matches!(
        code,
        Code::Ok
            | Code::FailedPrecondition
            | Code::NotFound
            | Code::PermissionDenied
            | Code::AlreadyExists
    )
}

async fn owners(app: &TestApp, org: &str) -> i64 {
    use sea_orm::ConnectionTrait;
    let backend = app.db.get_database_backend();
    let row = app
        .db
        .query_one_raw(sea_orm::Statement::from_string(
            backend,
            format!(
                "SELECT COUNT(*) AS n FROM members WHERE role = 'owner' AND organization_id = {}",
                match backend {
                    sea_orm::DbBackend::Postgres => format!("'{org}'"),
                    _ => format!("X'{}'", org.replace('-', "")),
                }
            ),
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get("", "n").unwrap()
}

async fn at_least_one_owner_remains_under_concurrent_demote_remove_and_leave(backend: Backend) {
    let app = spawn_app(backend).await;
    let first = User::new("first");
    let second = User::new("second");
    let mut codes = HashSet::new();
    for round in 0..4 {
        let org = app.create_org(&first, &format!("Round {round}")).await;
        app.join(&first, &org, &second, R::Owner, &[]).await;
        assert_eq!(owners(&app, &org).await, 2);

        let mut calls = tokio::task::JoinSet::new();
        for i in 0..24 {
            let (actor, other) = if i % 2 == 0 { (&first, &second) } else { (&second, &first) };
            let (actor, other, org) = (actor.clone(), other.clone(), org.clone());
            let mut team = app.team.clone();
            calls.spawn(async move {
                let result = match i % 6 {
                    0 | 1 => team
                        .update_member_role(actor.req(pb::UpdateMemberRoleRequest {
                            organization_id: org,
                            user_id: other.id,
                            role: R::Admin as i32,
                            ..Default::default()
                        }))
                        .await
                        .map(|_| ()),
                    2 | 3 => team
                        .remove_member(actor.req(pb::RemoveMemberRequest {
                            organization_id: org,
                            user_id: other.id,
                            ..Default::default()
                        }))
                        .await
                        .map(|_| ()),
                    _ => team
                        .leave_organization(actor.req(pb::LeaveOrganizationRequest {
                            organization_id: org,
                            ..Default::default()
                        }))
                        .await
                        .map(|_| ()),
                };
                match result {
                    Ok(()) => Code::Ok,
                    Err(status) => status.code(),
                }
            });
        }
        while let Some(code) = calls.join_next().await {
            let code = code.unwrap();
            assert!(acceptable(code), "a racing request got {code:?}");
            codes.insert(code);
        }
        let remaining = owners(&app, &org).await;
        println!("round {round}: {remaining} owner(s) remain after 24 concurrent requests");
        assert!(remaining >= 1, "round {round}: the organization lost its last Owner");
    }
    // The race was real: some requests won and some were refused by rule 2.
    assert!(codes.contains(&Code::Ok));
    assert!(codes.contains(&Code::FailedPrecondition) || codes.contains(&Code::NotFound));
    app.stop().await;
}

async fn two_concurrent_accepts_of_one_token_make_one_member(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let ws = app.create_workspace(&owner, &org, "prod").await;
    for round in 0..3 {
        let user = User { id: format!("kim-{round}"), email: format!("kim{round}@example.com") };
        app.invite(&owner, &org, &user.email, R::Member, &[(&ws, pb::WorkspaceAccess::Read)])
            .await
            .unwrap();
        let token = app.smtp.wait_for(&user.email, 1).await.token().unwrap();
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (app_team, user, token) = (app.team.clone(), user.clone(), token.clone());
            calls.spawn(async move {
                let mut team = app_team;
                team.accept_invitation(
                    user.req(pb::AcceptInvitationRequest { token, ..Default::default() }),
                )
                .await
                .map(|_| ())
            });
        }
        let mut won = 0;
        while let Some(result) = calls.join_next().await {
            match result.unwrap() {
                Ok(()) => won += 1,
                Err(status) => assert!(
                    matches!(status.code(), Code::AlreadyExists | Code::FailedPrecondition),
                    "a losing accept got {status:?}"
                ),
            }
        }
        assert_eq!(won, 1, "exactly one accept wins");
    }
    assert_eq!(app.count("members").await, 4);
    assert_eq!(app.count("workspace_grants").await, 3);
    app.stop().await;
}

async fn concurrent_invitations_of_one_email_make_one_pending_invitation(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..12 {
        let (team, owner, org) = (app.team.clone(), owner.clone(), org.clone());
        calls.spawn(async move {
            let mut team = team;
            team.create_invitation(owner.req(pb::CreateInvitationRequest {
                organization_id: org,
                email: if i % 2 == 0 {
                    "Lee@Example.com".into()
                } else {
                    "lee@example.com ".into()
                },
                role: R::Member as i32,
                workspace_grants: vec![],
                ..Default::default()
            }))
            .await
            .map(|_| ())
        });
    }
    let mut created = 0;
    while let Some(result) = calls.join_next().await {
        match result.unwrap() {
            Ok(()) => created += 1,
            Err(status) => assert_eq!(status.code(), Code::AlreadyExists, "{status:?}"),
        }
    }
    assert_eq!(created, 1);
    assert_eq!(app.count("invitations").await, 1);
    assert_eq!(app.count("outbox").await, 1);
    app.stop().await;
}

async fn resend_racing_accept_leaves_a_consistent_state(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let mut outcomes = HashSet::new();
    for round in 0..6 {
        let user =
            User { id: format!("racer-{round}"), email: format!("racer{round}@example.com") };
        let invitation = app.invite(&owner, &org, &user.email, R::Member, &[]).await.unwrap();
        let token = app.smtp.wait_for(&user.email, 1).await.token().unwrap();
        let (mut team_a, mut team_b) = (app.team.clone(), app.team.clone());
        let resend = owner.req(pb::ResendInvitationRequest {
            organization_id: org.clone(),
            invitation_id: invitation.id.clone(),
            ..Default::default()
        });
        let accept = user.req(pb::AcceptInvitationRequest { token, ..Default::default() });
        let (resent, accepted) =
            tokio::join!(team_a.resend_invitation(resend), team_b.accept_invitation(accept));
        let is_member = app
            .team
            .clone()
            .get_member(owner.req(pb::GetMemberRequest {
                organization_id: org.clone(),
                user_id: user.id.clone(),
            }))
            .await
            .is_ok();
        let listed = app
            .team
            .clone()
            .list_invitations(owner.req(pb::ListInvitationsRequest {
                organization_id: org.clone(),
                page_size: 1000,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner()
            .invitations;
        let stored = listed.iter().find(|i| i.id == invitation.id).unwrap();
        match (resent, accepted) {
            // Accept first: the member exists and the resend was refused.
            (Err(resend_error), Ok(_)) => {
                assert_eq!(resend_error.code(), Code::FailedPrecondition);
                assert!(is_member);
                assert_eq!(stored.state, pb::InvitationState::Accepted as i32);
                outcomes.insert("accept won");
            }
            // Resend first: the old token stopped working, nobody joined, a new email went out.
            (Ok(_), Err(accept_error)) => {
                assert_eq!(accept_error.code(), Code::NotFound);
                assert!(!is_member);
                assert_eq!(stored.state, pb::InvitationState::Pending as i32);
                assert_eq!(stored.send_count, 2);
                outcomes.insert("resend won");
            }
            (resent, accepted) => panic!("inconsistent outcome: {resent:?} / {accepted:?}"),
        }
    }
    println!("outcomes seen: {outcomes:?}");
    app.stop().await;
}
