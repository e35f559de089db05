//! End users' emails in jwt mode: a look-alike address is not the address it imitates, and an
//! email the identity provider has not said it verified does not let its holder found
//! organizations, invite, or accept invitations.

use roster::pb::{self, OrganizationRole as R};
use serde_json::json;
use tonic::Code;

use crate::auth::{AUDIENCE, ISSUER, JwtSetup, SECRET, bearer, claims, create_org, sign_hs};
use crate::common::process::Server;
use crate::common::{Backend, SmtpSink, TestApp, drop_database, fresh_database};
use crate::db_tests;

db_tests!(
    a_look_alike_email_cannot_accept_someone_elses_invitation,
    a_token_without_email_verified_cannot_found_invite_or_accept,
    the_loud_flag_excuses_only_a_missing_email_verified_claim,
    a_malformed_email_claim_blocks_only_the_calls_that_need_the_email,
);

fn invite(email: &str, org: &str) -> pb::CreateInvitationRequest {
    pb::CreateInvitationRequest {
        organization_id: org.to_owned(),
        email: email.to_owned(),
        role: R::Admin as i32,
        workspace_grants: vec![],
        ..Default::default()
    }
}

async fn accept(app: &TestApp, jwt: &str, token: &str) -> Result<pb::Member, tonic::Status> {
    app.team
        .clone()
        .accept_invitation(bearer(
            jwt,
            pb::AcceptInvitationRequest { token: token.to_owned(), ..Default::default() },
        ))
        .await
        .map(|r| r.into_inner().member.unwrap())
}

async fn a_look_alike_email_cannot_accept_someone_elses_invitation(backend: Backend) {
    let setup = JwtSetup::new();
    let app = setup.spawn_hs(backend).await;
    let owner = sign_hs(&claims("owner", "owner@victim.example"), SECRET);
    let org = create_org(&app, &owner).await.unwrap();
    app.team
        .clone()
        .create_invitation(bearer(&owner, invite("kate@victim.example", &org)))
        .await
        .unwrap();
    let token = app.smtp.wait_for("kate@victim.example", 1).await.token().unwrap();
    let before = app.snapshot().await;

    // KELVIN SIGN, FULLWIDTH K and a zero-width space: none of them is Kate's mailbox.
    for (impostor, character) in [
        ("\u{212A}ate@victim.example", "U+212A"),
        ("\u{FF2B}ate@victim.example", "U+FF2B"),
        ("ka\u{200B}te@victim.example", "U+200B"),
    ] {
        let jwt = sign_hs(&claims("mallory", impostor), SECRET);
        let status = accept(&app, &jwt, &token).await.expect_err(impostor);
        assert_eq!(status.code(), Code::Unauthenticated, "{impostor:?}: {status:?}");
        assert!(status.message().contains(character), "{impostor:?}: {:?}", status.message());
    }
    assert_eq!(app.snapshot().await, before, "a look-alike changed something");

    let kate = sign_hs(&claims("kate", "Kate@Victim.example"), SECRET);
    let member = accept(&app, &kate, &token).await.unwrap();
    assert_eq!((member.user_id.as_str(), member.role), ("kate", R::Admin as i32));
    app.stop().await;
}

async fn a_token_without_email_verified_cannot_found_invite_or_accept(backend: Backend) {
    let setup = JwtSetup::new();
    let app = setup.spawn_hs(backend).await;
    let unverified = |sub: &str, email: &str, verified: Option<bool>| {
        let mut claims = claims(sub, email);
        match verified {
            None => claims.as_object_mut().unwrap().remove("email_verified"),
            Some(value) => {
                claims.as_object_mut().unwrap().insert("email_verified".into(), json!(value))
            }
        };
        sign_hs(&claims, SECRET)
    };
    let owner = sign_hs(&claims("owner", "owner@example.com"), SECRET);
    let org = create_org(&app, &owner).await.unwrap();
    let invitation = app
        .team
        .clone()
        .create_invitation(bearer(&owner, invite("frank@example.com", &org)))
        .await
        .unwrap()
        .into_inner()
        .invitation
        .unwrap();
    let token = app.smtp.wait_for("frank@example.com", 1).await.token().unwrap();
    let before = app.snapshot().await;

    let denied = |status: tonic::Status| {
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains("verify your email"), "{:?}", status.message());
    };
    for verified in [None, Some(false)] {
        let founder = unverified("someone", "someone@example.com", verified);
        denied(create_org(&app, &founder).await.unwrap_err());
        // The Owner's own token, without the claim: the email it names is not proven theirs.
        let inviter = unverified("owner", "owner@example.com", verified);
        let mut team = app.team.clone();
        denied(
            team.create_invitation(bearer(&inviter, invite("grace@example.com", &org)))
                .await
                .unwrap_err(),
        );
        denied(
            team.resend_invitation(bearer(
                &inviter,
                pb::ResendInvitationRequest {
                    organization_id: org.clone(),
                    invitation_id: invitation.id.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err(),
        );
        let frank = unverified("frank", "frank@example.com", verified);
        denied(accept(&app, &frank, &token).await.unwrap_err());
    }
    assert_eq!(app.snapshot().await, before, "a refused call changed something");

    let frank = sign_hs(&claims("frank", "frank@example.com"), SECRET);
    let member = accept(&app, &frank, &token).await.unwrap();
    assert_eq!(member.user_id, "frank");
    app.stop().await;
}

async fn the_loud_flag_excuses_only_a_missing_email_verified_claim(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (database_url, pg_database) = fresh_database(backend, dir.path()).await;
    let sink = SmtpSink::start().await;
    let log = dir.path().join("server.log");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let (_, line) = roster::grpc::auth::new_service_token("scheduler").unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{line}\n")).unwrap();
    let args = [
        "--auth",
        "jwt",
        "--jwt-secret-file",
        secret.to_str().unwrap(),
        "--jwt-issuer",
        ISSUER,
        "--jwt-audience",
        AUDIENCE,
        "--service-tokens-file",
        tokens.to_str().unwrap(),
        "--jwt-allow-missing-email-verified",
    ];
    let server = Server::start_with(&database_url, sink.port, &log, &args, None).await;
    let mut team = server.team().await;
    let token = |sub: &str, verified: Option<bool>| {
        let mut claims = claims(sub, &format!("{sub}@example.com"));
        match verified {
            None => claims.as_object_mut().unwrap().remove("email_verified"),
            Some(value) => {
                claims.as_object_mut().unwrap().insert("email_verified".into(), json!(value))
            }
        };
        sign_hs(&claims, SECRET)
    };
    let found = |jwt: String| {
        bearer(
            &jwt,
            pb::CreateOrganizationRequest { display_name: "Acme".into(), ..Default::default() },
        )
    };

    // The provider never sends the claim: tolerated.
    let org = team.create_organization(found(token("owner", None))).await.unwrap().into_inner();
    let org = org.organization.unwrap().id;
    team.create_invitation(bearer(&token("owner", None), invite("hank@example.com", &org)))
        .await
        .unwrap();
    let invitation = sink.wait_for("hank@example.com", 1).await.token().unwrap();
    // An explicit false is never excused.
    let refused = team.create_organization(found(token("other", Some(false)))).await;
    assert_eq!(refused.unwrap_err().code(), Code::PermissionDenied);
    let accept = |jwt: String| {
        bearer(
            &jwt,
            pb::AcceptInvitationRequest { token: invitation.clone(), ..Default::default() },
        )
    };
    let refused = team.accept_invitation(accept(token("hank", Some(false)))).await;
    assert_eq!(refused.unwrap_err().code(), Code::PermissionDenied);
    team.accept_invitation(accept(token("hank", None))).await.unwrap();
    server.stop();

    let logs = std::fs::read_to_string(&log).unwrap();
    let warning = logs
        .lines()
        .find(|l| l.contains("--jwt-allow-missing-email-verified"))
        .unwrap_or_else(|| panic!("the flag is warned about at start:\n{logs}"));
    assert!(warning.contains("WARN"), "{warning}");
    drop_database(pg_database).await;
}

async fn a_malformed_email_claim_blocks_only_the_calls_that_need_the_email(backend: Backend) {
    let setup = JwtSetup::new();
    let app = setup.spawn_hs(backend).await;
    let owner = sign_hs(&claims("owner", "owner@example.com"), SECRET);
    let org = create_org(&app, &owner).await.unwrap();
    app.team
        .clone()
        .create_invitation(bearer(&owner, invite("ivan@example.com", &org)))
        .await
        .unwrap();
    let token = app.smtp.wait_for("ivan@example.com", 1).await.token().unwrap();

    // The owner's provider later sends an address these rules refuse (two @).
    let garbled = sign_hs(&claims("owner", "owner@@example.com"), SECRET);
    let listed = app
        .team
        .clone()
        .list_organizations(bearer(&garbled, pb::ListOrganizationsRequest::default()))
        .await
        .expect("reading needs no email")
        .into_inner();
    assert_eq!(listed.organizations.len(), 1);
    let before = app.snapshot().await;
    let status = create_org(&app, &garbled).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("email claim"), "{:?}", status.message());
    let status = accept(&app, &garbled, &token).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("accept an invitation"), "{:?}", status.message());
    assert_eq!(app.snapshot().await, before, "a refused call changed something");
    app.stop().await;
}
