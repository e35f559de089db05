//! Faults: the mail server down, the process killed mid-burst, and what ends up in logs.

use std::time::Duration;

use roster::pb::{self, DeliveryState, InvitationState, OrganizationRole as R};
use tokio::net::TcpListener;
use tonic::transport::Channel;

use crate::common::process::{Server, free_port};
use crate::common::{
    Backend, SmtpSink, User, create_org_with, drop_database, fresh_database, list_invitations,
    spawn_app_with,
};
use crate::db_tests;

db_tests!(
    an_smtp_outage_loses_no_email,
    a_killed_server_keeps_every_acknowledged_invitation_and_delivers_it,
    logs_hold_no_token_and_no_invitee_address,
    each_authorize_call_names_its_calling_service_in_the_log,
);

async fn an_smtp_outage_loses_no_email(backend: Backend) {
    let port = free_port();
    let app = spawn_app_with(backend, |config| {
        config.smtp_url = Some(format!("smtp://127.0.0.1:{port}"));
        // Retried until the mail server is back, however long the test takes to bring it.
        config.mail_max_attempts = 1000;
    })
    .await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let addresses: Vec<String> = (0..5).map(|i| format!("person{i}@example.com")).collect();
    for address in &addresses {
        app.invite(&owner, &org, address, R::Member, &[])
            .await
            .expect("invitations succeed while SMTP is down");
    }
    let mut team = app.team.clone();
    let mut retrying = false;
    for _ in 0..200 {
        let listed = list_invitations(&mut team, &owner, &org, InvitationState::Unspecified).await;
        if listed.iter().all(|i| {
            i.delivery_state == DeliveryState::Retrying as i32 && !i.last_delivery_error.is_empty()
        }) {
            retrying = true;
            println!(
                "while SMTP is down the invitations show: {:?}",
                listed[0].last_delivery_error
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(retrying, "every invitation shows a retrying delivery with its error");

    // The mail server comes back on its port: every email arrives.
    let sink = SmtpSink::serve(TcpListener::bind(("127.0.0.1", port)).await.unwrap());
    for address in &addresses {
        let email = sink.wait_for(address, 1).await;
        assert!(email.token().is_some());
    }
    let mut sent = false;
    for _ in 0..200 {
        let listed = list_invitations(&mut team, &owner, &org, InvitationState::Unspecified).await;
        if listed.iter().all(|i| {
            i.delivery_state == DeliveryState::Sent as i32 && i.last_delivery_error.is_empty()
        }) {
            sent = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(sent, "every invitation shows its email as sent");
    app.stop().await;
}

async fn a_killed_server_keeps_every_acknowledged_invitation_and_delivers_it(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (database_url, pg_database) = fresh_database(backend, dir.path()).await;
    let sink = SmtpSink::start().await;
    let log = dir.path().join("server.log");
    let server = Server::start(&database_url, sink.port, &log).await;
    let owner = User::new("owner");
    let mut team = server.team().await;
    let org = create_org_with(&mut team, &owner, "Acme").await;

    // A burst of invitations; the server is killed with SIGKILL while they are in flight.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut burst = tokio::task::JoinSet::new();
    for i in 0..60 {
        let (mut team, owner, org, done) =
            (team.clone(), owner.clone(), org.clone(), done_tx.clone());
        burst.spawn(async move {
            let email = format!("burst{i}@example.com");
            let result = team
                .create_invitation(owner.req(pb::CreateInvitationRequest {
                    organization_id: org,
                    email: email.clone(),
                    role: R::Member as i32,
                    workspace_grants: vec![],
                    ..Default::default()
                }))
                .await;
            let _ = done.send(());
            (email, result.is_ok())
        });
    }
    for _ in 0..15 {
        done_rx.recv().await;
    }
    server.kill_hard();
    let mut acknowledged = Vec::new();
    while let Some(outcome) = burst.join_next().await {
        let (email, ok) = outcome.unwrap();
        if ok {
            acknowledged.push(email);
        }
    }
    println!("{} of 60 invitations were acknowledged before SIGKILL", acknowledged.len());
    assert!(acknowledged.len() >= 15);

    let server = Server::start(&database_url, sink.port, &log).await;
    let mut team = server.team().await;
    let stored = list_invitations(&mut team, &owner, &org, InvitationState::Unspecified).await;
    for email in &acknowledged {
        assert!(
            stored.iter().any(|i| &i.email == email && i.state == InvitationState::Pending as i32),
            "{email} was acknowledged, so it is stored"
        );
        assert!(sink.wait_for(email, 1).await.token().is_some(), "{email} is delivered");
    }
    // At least once: an email sent but not recorded before the kill goes out again after the
    // lease, with a new token, and the latest token is the one that works.
    for _ in 0..400 {
        let listed = list_invitations(&mut team, &owner, &org, InvitationState::Unspecified).await;
        let settled = acknowledged.iter().all(|email| {
            listed
                .iter()
                .any(|i| &i.email == email && i.delivery_state == DeliveryState::Sent as i32)
        });
        if settled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let received = sink.all().await;
    let mut duplicates = 0;
    for email in &acknowledged {
        let copies: Vec<_> = received.iter().filter(|m| m.recipients.contains(email)).collect();
        duplicates += copies.len() - 1;
        let latest = copies.last().and_then(|m| m.token()).expect("a token");
        let invitee = User { id: email.replace('@', "-"), email: email.clone() };
        team.accept_invitation(
            invitee.req(pb::AcceptInvitationRequest { token: latest, ..Default::default() }),
        )
        .await
        .unwrap_or_else(|status| panic!("{email}: the latest token works: {status:?}"));
    }
    println!("{duplicates} email(s) were delivered twice after the kill (at-least-once delivery)");
    server.stop();
    drop_database(pg_database).await;
}

async fn logs_hold_no_token_and_no_invitee_address(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (database_url, pg_database) = fresh_database(backend, dir.path()).await;
    let sink = SmtpSink::start().await;
    let log = dir.path().join("server.log");
    let server = Server::start(&database_url, sink.port, &log).await;
    let owner = User::new("owner");
    let invitee = User { id: "invitee".into(), email: "secret.invitee@example.com".into() };
    let mut team = server.team().await;
    let org = create_org_with(&mut team, &owner, "Acme").await;
    let invitation = team
        .create_invitation(owner.req(pb::CreateInvitationRequest {
            organization_id: org.clone(),
            email: invitee.email.clone(),
            role: R::Member as i32,
            workspace_grants: vec![],
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .invitation
        .unwrap();
    let first = sink.wait_for(&invitee.email, 1).await.token().unwrap();
    team.resend_invitation(owner.req(pb::ResendInvitationRequest {
        organization_id: org.clone(),
        invitation_id: invitation.id,
        ..Default::default()
    }))
    .await
    .unwrap();
    let second = sink.wait_for(&invitee.email, 2).await.token().unwrap();
    let _ = team
        .accept_invitation(
            invitee.req(pb::AcceptInvitationRequest { token: first.clone(), ..Default::default() }),
        )
        .await;
    team.accept_invitation(
        invitee.req(pb::AcceptInvitationRequest { token: second.clone(), ..Default::default() }),
    )
    .await
    .unwrap();
    server.stop();

    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("invitation created"), "the log has the invitation events");
    assert!(logs.contains("s***@example.com"), "the invitee appears only redacted");
    assert!(!logs.contains(&first) && !logs.contains(&second), "a token is in the log");
    assert!(!logs.contains("secret.invitee@example.com"), "the invitee's address is in the log");
    drop_database(pg_database).await;
}

async fn each_authorize_call_names_its_calling_service_in_the_log(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (database_url, pg_database) = fresh_database(backend, dir.path()).await;
    let sink = SmtpSink::start().await;
    let log = dir.path().join("server.log");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "a-test-secret-of-at-least-thirty-two-bytes").unwrap();
    let (token, line) = roster::grpc::auth::new_service_token("scheduler").unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{line}\n")).unwrap();
    let args = [
        "--auth",
        "jwt",
        "--jwt-secret-file",
        secret.to_str().unwrap(),
        "--jwt-issuer",
        "https://login.example.com/",
        "--jwt-audience",
        "roster",
        "--service-tokens-file",
        tokens.to_str().unwrap(),
    ];
    let server =
        Server::start_with(&database_url, sink.port, &log, &args, Some("info,roster=debug")).await;
    let channel =
        Channel::from_shared(format!("http://{}", server.addr)).unwrap().connect().await.unwrap();
    let mut access = roster::pb::access_service_client::AccessServiceClient::new(channel);
    let mut request = tonic::Request::new(pb::AuthorizeRequest {
        consistency: None,
        user_id: "someone".into(),
        organization_id: "01900000-0000-7000-8000-000000000000".into(),
        workspace_id: String::new(),
        permission: "organization.read".into(),
    });
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    access.authorize(request).await.unwrap();
    server.stop();
    let logs = std::fs::read_to_string(&log).unwrap();
    let decided = logs
        .lines()
        .find(|l| l.contains("decided"))
        .unwrap_or_else(|| panic!("the decision is logged at debug:\n{logs}"));
    assert!(decided.contains("caller=scheduler"), "{decided}");
    assert!(!logs.contains(&token), "the service token is in the log");
    drop_database(pg_database).await;
}
