use roster::pb::{self, InvitationState as S, OrganizationRole as R, WorkspaceAccess as A};
use tonic::Code;

use crate::common::{Backend, TestApp, User, assert_code, spawn_app};
use crate::db_tests;

db_tests!(
    an_invitation_is_emailed_and_accepting_it_makes_the_member_with_grants,
    duplicate_invitations_and_invitations_of_members_are_refused,
    resend_issues_a_fresh_token_and_the_old_one_stops_working,
    revoke_is_final_and_idempotent,
    accept_checks_email_token_and_membership,
    a_past_expiry_reads_as_expired_everywhere,
    no_token_is_kept_in_the_database_or_returned,
    invitations_are_listed_by_state,
    an_invitation_is_void_once_its_inviter_may_no_longer_grant_its_role,
    a_listed_page_gives_each_invitation_its_own_grants,
);

async fn a_listed_page_gives_each_invitation_its_own_grants(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let prod = app.create_workspace(&owner, &org, "prod").await;
    let staging = app.create_workspace(&owner, &org, "staging").await;
    let offers: [(&str, Vec<(&str, A)>); 4] = [
        ("a@example.com", vec![(&prod, A::Write)]),
        ("b@example.com", vec![]),
        ("c@example.com", vec![(&prod, A::Read), (&staging, A::Write)]),
        ("d@example.com", vec![(&staging, A::Read)]),
    ];
    for (email, grants) in &offers {
        app.invite(&owner, &org, email, R::Member, grants).await.unwrap();
    }
    let listed = app.invitations(&owner, &org, S::Unspecified).await;
    assert_eq!(listed.len(), offers.len());
    for (email, grants) in &offers {
        let invitation = listed.iter().find(|i| i.email == *email).unwrap();
        let mut got: Vec<(String, i32)> = invitation
            .workspace_grants
            .iter()
            .map(|g| (g.workspace_id.clone(), g.access))
            .collect();
        let mut expected: Vec<(String, i32)> =
            grants.iter().map(|(ws, access)| ((*ws).to_owned(), *access as i32)).collect();
        got.sort();
        expected.sort();
        assert_eq!(got, expected, "{email}");
    }
    app.stop().await;
}

/// Waits until every invitation of `org` shows its email as sent.
async fn wait_until_sent(app: &TestApp, owner: &User, org: &str) {
    for _ in 0..100 {
        let listed = app.invitations(owner, org, S::Unspecified).await;
        if listed.iter().all(|i| i.delivery_state == pb::DeliveryState::Sent as i32) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the invitations never showed their emails as sent");
}

fn resend(actor: &User, org: &str, id: &str) -> tonic::Request<pb::ResendInvitationRequest> {
    actor.req(pb::ResendInvitationRequest {
        organization_id: org.to_owned(),
        invitation_id: id.to_owned(),
        ..Default::default()
    })
}

fn revoke(actor: &User, org: &str, id: &str) -> tonic::Request<pb::RevokeInvitationRequest> {
    actor.req(pb::RevokeInvitationRequest {
        organization_id: org.to_owned(),
        invitation_id: id.to_owned(),
        ..Default::default()
    })
}

async fn an_invitation_is_emailed_and_accepting_it_makes_the_member_with_grants(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let bob = User::new("bob");
    let org = app.create_org(&owner, "Acme Data").await;
    let prod = app.create_workspace(&owner, &org, "prod").await;
    let invitation = app
        .invite(&owner, &org, "  Bob@Example.COM ", R::Admin, &[(&prod, A::Write)])
        .await
        .unwrap();
    assert_eq!(invitation.email, "bob@example.com");
    assert_eq!(invitation.state, S::Pending as i32);
    assert_eq!(invitation.send_count, 1);
    assert_eq!(invitation.inviter_user_id, "owner");
    assert_eq!(invitation.workspace_grants.len(), 1);
    let ttl = invitation.expire_time.unwrap().seconds - invitation.create_time.unwrap().seconds;
    assert_eq!(ttl, 7 * 24 * 3600);

    let email = app.smtp.wait_for("bob@example.com", 1).await;
    assert!(email.data.contains("Subject: owner@example.com invited you to join Acme Data"));
    assert!(email.data.contains("multipart/alternative"));
    assert!(email.data.contains("text/plain") && email.data.contains("text/html"));
    assert!(email.data.contains("as Admin"));
    assert!(email.data.contains("expires on"));
    assert!(email.data.contains("https://app.example.com/accept?token="));
    let token = email.token().unwrap();
    assert_eq!(token.len(), 43);

    wait_until_sent(&app, &owner, &org).await;

    let member = app.accept(&bob, &token).await.unwrap();
    assert_eq!(member.role, R::Admin as i32);
    assert_eq!(member.user_id, "bob");
    assert!(app.allowed(&bob.id, &org, &prod, "schedules.delete").await);
    assert!(app.allowed(&bob.id, &org, "", "members.invite").await);
    let accepted = app.invitations(&owner, &org, S::Accepted).await;
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].id, invitation.id);

    // Single use.
    let again = app.accept(&bob, &token).await;
    assert_code(again, Code::AlreadyExists, None);
    // Another account with the same address is told the invitation is used, not that it is a
    // member.
    let other_bob = User { id: "bob-second-account".into(), email: bob.email.clone() };
    let status = app.accept(&other_bob, &token).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("already accepted"), "{status:?}");
    app.stop().await;
}

async fn duplicate_invitations_and_invitations_of_members_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let member = User::new("member");
    let org = app.create_org(&owner, "Acme").await;
    app.join(&owner, &org, &member, R::Member, &[]).await;
    app.invite(&owner, &org, "carol@example.com", R::Member, &[]).await.unwrap();
    let before = app.snapshot().await;

    let duplicate = app.invite(&owner, &org, " CAROL@example.com", R::Admin, &[]).await;
    let status = duplicate.as_ref().unwrap_err().clone();
    assert_code(duplicate, Code::AlreadyExists, None);
    assert!(status.message().contains("resend"), "{}", status.message());
    let existing = app.invite(&owner, &org, "Member@Example.com", R::Member, &[]).await;
    assert_code(existing, Code::AlreadyExists, None);
    assert_eq!(app.snapshot().await, before);
    // An Owner holds WRITE everywhere: grants in an Owner invitation would say otherwise.
    let ws = app.create_workspace(&owner, &org, "prod").await;
    let before = app.snapshot().await;
    let owner_grants =
        app.invite(&owner, &org, "dana@example.com", R::Owner, &[(&ws, A::Read)]).await;
    assert_code(owner_grants, Code::InvalidArgument, Some("workspace_grants"));
    assert_eq!(app.snapshot().await, before);

    // Another organization may invite the same email.
    let other = app.create_org(&owner, "Other").await;
    app.invite(&owner, &other, "carol@example.com", R::Member, &[]).await.unwrap();
    app.stop().await;
}

async fn resend_issues_a_fresh_token_and_the_old_one_stops_working(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let dave = User::new("dave");
    let org = app.create_org(&owner, "Acme").await;
    let invitation = app.invite(&owner, &org, &dave.email, R::Member, &[]).await.unwrap();
    let first = app.smtp.wait_for(&dave.email, 1).await.token().unwrap();

    let resent =
        app.team.clone().resend_invitation(resend(&owner, &org, &invitation.id)).await.unwrap();
    let resent = resent.into_inner().invitation.unwrap();
    assert_eq!(resent.send_count, 2);
    assert_eq!(resent.state, S::Pending as i32);
    assert!(resent.expire_time.unwrap().seconds >= invitation.expire_time.unwrap().seconds);
    let second = app.smtp.wait_for(&dave.email, 2).await.token().unwrap();
    assert_ne!(first, second);

    assert_code(app.accept(&dave, &first).await, Code::NotFound, None);
    app.accept(&dave, &second).await.unwrap();
    let after_accept =
        app.team.clone().resend_invitation(resend(&owner, &org, &invitation.id)).await;
    assert_code(after_accept, Code::FailedPrecondition, None);
    let unknown = app
        .team
        .clone()
        .resend_invitation(resend(&owner, &org, "01900000-0000-7000-8000-000000000000"))
        .await;
    assert_code(unknown, Code::NotFound, None);
    app.stop().await;
}

async fn revoke_is_final_and_idempotent(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let erin = User::new("erin");
    let frank = User::new("frank");
    let org = app.create_org(&owner, "Acme").await;
    let invitation = app.invite(&owner, &org, &erin.email, R::Member, &[]).await.unwrap();
    let token = app.smtp.wait_for(&erin.email, 1).await.token().unwrap();
    let mut team = app.team.clone();

    let revoked = team.revoke_invitation(revoke(&owner, &org, &invitation.id)).await.unwrap();
    assert_eq!(revoked.into_inner().invitation.unwrap().state, S::Revoked as i32);
    let events = app.count("audit_events").await;
    let twice = team.revoke_invitation(revoke(&owner, &org, &invitation.id)).await.unwrap();
    assert_eq!(twice.into_inner().invitation.unwrap().state, S::Revoked as i32);
    assert_eq!(app.count("audit_events").await, events, "a no-op writes no audit event");

    let accept = app.accept(&erin, &token).await;
    let status = accept.as_ref().unwrap_err().clone();
    assert_code(accept, Code::FailedPrecondition, None);
    assert!(status.message().contains("revoked"));
    assert_code(
        team.resend_invitation(resend(&owner, &org, &invitation.id)).await,
        Code::FailedPrecondition,
        None,
    );

    // An accepted invitation cannot be revoked.
    app.join(&owner, &org, &frank, R::Member, &[]).await;
    let accepted = app.invitations(&owner, &org, S::Accepted).await;
    let revoke_accepted = team.revoke_invitation(revoke(&owner, &org, &accepted[0].id)).await;
    assert_code(revoke_accepted, Code::FailedPrecondition, None);
    app.stop().await;
}

async fn accept_checks_email_token_and_membership(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let grace = User::new("grace");
    let org = app.create_org(&owner, "Acme").await;
    app.invite(&owner, &org, &grace.email, R::Member, &[]).await.unwrap();
    let token = app.smtp.wait_for(&grace.email, 1).await.token().unwrap();
    let before = app.snapshot().await;

    let impostor = User::new("impostor");
    assert_code(app.accept(&impostor, &token).await, Code::PermissionDenied, None);
    let unknown = "A".repeat(43);
    assert_code(app.accept(&grace, &unknown).await, Code::NotFound, None);
    let no_email = app
        .team
        .clone()
        .accept_invitation({
            let mut r = tonic::Request::new(pb::AcceptInvitationRequest {
                token: token.clone(),
                ..Default::default()
            });
            r.metadata_mut().insert("x-user-id", "grace".parse().unwrap());
            r
        })
        .await;
    assert_code(no_email, Code::Unauthenticated, None);
    assert_eq!(app.snapshot().await, before);

    // The email matches case-insensitively.
    let shouting = User { id: "grace".into(), email: "GRACE@EXAMPLE.COM".into() };
    app.accept(&shouting, &token).await.unwrap();
    // The owner is a member already: a fresh invitation of the owner's email is refused.
    let owner_invite = app.invite(&owner, &org, &owner.email, R::Member, &[]).await;
    assert_code(owner_invite, Code::AlreadyExists, None);
    app.stop().await;
}

async fn a_past_expiry_reads_as_expired_everywhere(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let heidi = User::new("heidi");
    let org = app.create_org(&owner, "Acme").await;
    let invitation = app.invite(&owner, &org, &heidi.email, R::Member, &[]).await.unwrap();
    let token = app.smtp.wait_for(&heidi.email, 1).await.token().unwrap();
    // Age the invitation by moving its expiry into the past, as time would.
    app.execute("UPDATE invitations SET expire_time = expire_time - 691200000000").await;

    assert_eq!(app.invitations(&owner, &org, S::Expired).await.len(), 1);
    assert!(app.invitations(&owner, &org, S::Pending).await.is_empty());
    let accept = app.accept(&heidi, &token).await;
    let status = accept.as_ref().unwrap_err().clone();
    assert_code(accept, Code::FailedPrecondition, None);
    assert!(status.message().contains("expired"), "{}", status.message());

    // An expired invitation can be resent, and the new token works.
    let resent =
        app.team.clone().resend_invitation(resend(&owner, &org, &invitation.id)).await.unwrap();
    assert_eq!(resent.into_inner().invitation.unwrap().state, S::Pending as i32);
    let fresh = app.smtp.wait_for(&heidi.email, 2).await.token().unwrap();
    app.accept(&heidi, &fresh).await.unwrap();

    // An expired invitation does not block a new one for the same email.
    let ivan = User::new("ivan");
    app.invite(&owner, &org, &ivan.email, R::Member, &[]).await.unwrap();
    app.execute("UPDATE invitations SET expire_time = 0 WHERE email = 'ivan@example.com'").await;
    let again = app.invite(&owner, &org, &ivan.email, R::Billing, &[]).await.unwrap();
    assert_eq!(again.state, S::Pending as i32);
    let states: Vec<i32> = app
        .invitations(&owner, &org, S::Unspecified)
        .await
        .into_iter()
        .filter(|i| i.email == ivan.email)
        .map(|i| i.state)
        .collect();
    assert_eq!(states, vec![S::Expired as i32, S::Pending as i32]);
    app.stop().await;
}

async fn no_token_is_kept_in_the_database_or_returned(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let judy = User::new("judy");
    let org = app.create_org(&owner, "Acme").await;
    let created = app.invite(&owner, &org, &judy.email, R::Member, &[]).await.unwrap();
    let email = app.smtp.wait_for(&judy.email, 1).await;
    let token = email.token().unwrap();
    assert!(!format!("{created:?}").contains(&token));
    let listed = app.invitations(&owner, &org, S::Unspecified).await;
    assert!(!format!("{listed:?}").contains(&token));
    app.accept(&judy, &token).await.unwrap();
    wait_until_sent(&app, &owner, &org).await;

    // Nothing stored holds the token: read every text column of every table.
    let texts = app.stored_texts().await;
    assert!(texts.iter().any(|(_, _, value)| value.contains(&judy.email)), "the scan reads rows");
    let holding: Vec<_> = texts
        .iter()
        .filter(|(_, _, value)| value.contains(&token))
        .map(|(t, c, _)| (t, c))
        .collect();
    assert!(holding.is_empty(), "the token is stored in {holding:?}");
    app.stop().await;
}

async fn invitations_are_listed_by_state(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let mut ids = Vec::new();
    for name in ["a", "b", "c"] {
        ids.push(
            app.invite(&owner, &org, &format!("{name}@example.com"), R::Member, &[])
                .await
                .unwrap()
                .id,
        );
    }
    app.team.clone().revoke_invitation(revoke(&owner, &org, &ids[1])).await.unwrap();
    let pending: Vec<String> =
        app.invitations(&owner, &org, S::Pending).await.into_iter().map(|i| i.id).collect();
    assert_eq!(pending, vec![ids[0].clone(), ids[2].clone()]);
    let revoked: Vec<String> =
        app.invitations(&owner, &org, S::Revoked).await.into_iter().map(|i| i.id).collect();
    assert_eq!(revoked, vec![ids[1].clone()]);
    assert_eq!(app.invitations(&owner, &org, S::Unspecified).await.len(), 3);
    let bad_state = app
        .team
        .clone()
        .list_invitations(owner.req(pb::ListInvitationsRequest {
            organization_id: org.clone(),
            state: 99,
            ..Default::default()
        }))
        .await;
    assert_code(bad_state, Code::InvalidArgument, Some("state"));
    app.stop().await;
}

async fn an_invitation_is_void_once_its_inviter_may_no_longer_grant_its_role(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let co_owner = User::new("co-owner");
    let demoted_admin = User::new("demoted-admin");
    let removed_admin = User::new("removed-admin");
    let org = app.create_org(&owner, "Acme").await;
    app.join(&owner, &org, &co_owner, R::Owner, &[]).await;
    app.join(&owner, &org, &demoted_admin, R::Admin, &[]).await;
    app.join(&owner, &org, &removed_admin, R::Admin, &[]).await;

    // Each invitation is sent while its inviter may grant its role.
    let invitee = |name: &str| User::new(name);
    let (as_owner, as_member, as_removed, still_fine) =
        (invitee("future-owner"), invitee("via-demoted"), invitee("via-removed"), invitee("fine"));
    let mut tokens = Vec::new();
    for (inviter, user, role) in [
        (&co_owner, &as_owner, R::Owner),
        (&demoted_admin, &as_member, R::Member),
        (&removed_admin, &as_removed, R::Member),
        (&co_owner, &still_fine, R::Member),
    ] {
        app.invite(inviter, &org, &user.email, role, &[]).await.unwrap();
        tokens.push(app.smtp.wait_for(&user.email, 1).await.token().unwrap());
    }
    let mut team = app.team.clone();
    for (user, role) in [(&co_owner, R::Admin), (&demoted_admin, R::Member)] {
        team.update_member_role(owner.req(pb::UpdateMemberRoleRequest {
            organization_id: org.clone(),
            user_id: user.id.clone(),
            role: role as i32,
            ..Default::default()
        }))
        .await
        .unwrap();
    }
    team.remove_member(owner.req(pb::RemoveMemberRequest {
        organization_id: org.clone(),
        user_id: removed_admin.id.clone(),
        ..Default::default()
    }))
    .await
    .unwrap();
    let before = app.snapshot().await;

    for (user, token) in
        [(&as_owner, &tokens[0]), (&as_member, &tokens[1]), (&as_removed, &tokens[2])]
    {
        let accepted = app.accept(user, token).await;
        let message = accepted.as_ref().err().map(|s| s.message().to_owned()).unwrap_or_default();
        assert_code(accepted, Code::FailedPrecondition, None);
        assert!(message.contains("invited you"), "{}: {message:?}", user.id);
    }
    assert_eq!(app.snapshot().await, before, "a void invitation changed something");
    // A demoted Owner is still an Admin, who may invite Members: that invitation stands.
    let member = app.accept(&still_fine, &tokens[3]).await.unwrap();
    assert_eq!(member.role, R::Member as i32);
    app.stop().await;
}
