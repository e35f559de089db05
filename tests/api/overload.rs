//! Overload: calls beyond the in-flight limit are shed at once, slow calls hit the deadline,
//! and invitations are rate limited per organization.

use std::time::{Duration, Instant};

use roster::pb::{self, OrganizationRole as R};
use sea_orm::{ConnectionTrait, TransactionTrait};
use tonic::Code;

use crate::common::{Backend, User, assert_code, spawn_app, spawn_app_with};
use crate::db_tests;

db_tests!(
    invitations_are_rate_limited_per_organization,
    one_user_cannot_spread_invitations_over_many_organizations,
    refused_invitations_give_their_budget_back,
    organizations_are_rate_limited_per_user,
    every_invitation_of_a_replica_counts_against_its_limit,
    excess_calls_are_shed_and_slow_calls_hit_the_deadline,
);

async fn invitations_are_rate_limited_per_organization(backend: Backend) {
    let app = spawn_app_with(backend, |config| {
        config.invite_burst = 3;
        config.invite_rate_per_hour = 1;
    })
    .await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let other = app.create_org(&owner, "Other").await;
    let mut last = None;
    for i in 0..3 {
        last = Some(
            app.invite(&owner, &org, &format!("p{i}@example.com"), R::Member, &[]).await.unwrap(),
        );
    }
    let before = app.snapshot().await;
    let status = app.invite(&owner, &org, "p3@example.com", R::Member, &[]).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("retry in"), "{}", status.message());
    let resend = app
        .team
        .clone()
        .resend_invitation(owner.req(pb::ResendInvitationRequest {
            organization_id: org.clone(),
            invitation_id: last.unwrap().id,
            ..Default::default()
        }))
        .await;
    assert_code(resend, Code::ResourceExhausted, None);
    assert_eq!(app.snapshot().await, before);
    app.invite(&owner, &other, "p3@example.com", R::Member, &[])
        .await
        .expect("another organization has its own budget");
    app.stop().await;
}

/// The default budget of one inviting user, across all their organizations.
const USER_INVITE_BURST: usize = 20;

async fn one_user_cannot_spread_invitations_over_many_organizations(backend: Backend) {
    let app = spawn_app(backend).await;
    let spammer = User::new("spammer");
    let mut orgs = Vec::new();
    for name in ["Spam 1", "Spam 2", "Spam 3"] {
        orgs.push(app.create_org(&spammer, name).await);
    }
    for i in 0..USER_INVITE_BURST {
        let org = &orgs[i % 2];
        app.invite(&spammer, org, &format!("stranger{i}@example.com"), R::Member, &[])
            .await
            .unwrap();
    }
    let before = app.snapshot().await;
    let status = app.invite(&spammer, &orgs[2], "one.more@example.com", R::Member, &[]).await;
    let status = status.expect_err("the user's budget is spent, whatever the organization");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("you have sent"), "{}", status.message());
    assert!(status.message().contains("retry in"), "{}", status.message());
    assert_eq!(app.snapshot().await, before, "a refused invitation changed something");
    // Another user keeps a budget of their own.
    let other = User::new("other");
    let theirs = app.create_org(&other, "Theirs").await;
    app.invite(&other, &theirs, "friend@example.com", R::Member, &[]).await.unwrap();
    app.stop().await;
}

async fn refused_invitations_give_their_budget_back(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let other = app.create_org(&owner, "Other").await;
    let foreign_ws = app.create_workspace(&owner, &other, "theirs").await;
    app.invite(&owner, &org, "carol@example.com", R::Member, &[]).await.unwrap();
    let before = app.snapshot().await;
    for _ in 0..10 {
        let pending = app.invite(&owner, &org, "carol@example.com", R::Admin, &[]).await;
        assert_code(pending, Code::AlreadyExists, None);
        let member = app.invite(&owner, &org, &owner.email, R::Member, &[]).await;
        assert_code(member, Code::AlreadyExists, None);
        let grant = app
            .invite(
                &owner,
                &org,
                "dan@example.com",
                R::Member,
                &[(&foreign_ws, pb::WorkspaceAccess::Read)],
            )
            .await;
        assert_code(grant, Code::InvalidArgument, Some("workspace_grants[0].workspace_id"));
    }
    assert_eq!(app.snapshot().await, before);
    // Thirty refusals later, the whole budget but the one invitation made is left.
    for i in 1..USER_INVITE_BURST {
        app.invite(&owner, &org, &format!("p{i}@example.com"), R::Member, &[])
            .await
            .unwrap_or_else(|status| panic!("invitation {i}: {status:?}"));
    }
    let spent = app.invite(&owner, &org, "last@example.com", R::Member, &[]).await;
    assert_code(spent, Code::ResourceExhausted, None);
    app.stop().await;
}

/// The default number of organizations one user may create at once.
const ORGANIZATION_BURST: usize = 10;

async fn organizations_are_rate_limited_per_user(backend: Backend) {
    let app = spawn_app(backend).await;
    let founder = User::new("founder");
    for i in 0..ORGANIZATION_BURST {
        app.create_org(&founder, &format!("Org {i}")).await;
    }
    let before = app.snapshot().await;
    let status = app
        .team
        .clone()
        .create_organization(founder.req(pb::CreateOrganizationRequest {
            display_name: "One more".into(),
            ..Default::default()
        }))
        .await
        .expect_err("the founder's budget is spent");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("retry in"), "{}", status.message());
    assert_eq!(app.snapshot().await, before);
    app.create_org(&User::new("someone-else"), "Theirs").await;
    app.stop().await;
}

async fn every_invitation_of_a_replica_counts_against_its_limit(backend: Backend) {
    let app = spawn_app_with(backend, |config| config.invite_replica_burst = 3).await;
    let mut orgs = Vec::new();
    for name in ["a", "b", "c", "d"] {
        let owner = User::new(name);
        let org = app.create_org(&owner, name).await;
        orgs.push((owner, org));
    }
    for (owner, org) in &orgs[..3] {
        app.invite(owner, org, &format!("guest-of-{}@example.com", owner.id), R::Member, &[])
            .await
            .unwrap();
    }
    let before = app.snapshot().await;
    let (owner, org) = &orgs[3];
    let status = app.invite(owner, org, "guest-of-d@example.com", R::Member, &[]).await;
    let status = status.expect_err("the replica's budget is spent, whoever asks");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("this server"), "{}", status.message());
    assert!(status.message().contains("retry in"), "{}", status.message());
    assert_eq!(app.snapshot().await, before);
    app.stop().await;
}

async fn excess_calls_are_shed_and_slow_calls_hit_the_deadline(backend: Backend) {
    let app = spawn_app_with(backend, |config| {
        config.max_in_flight = 1;
        config.request_timeout_ms = 3000;
    })
    .await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let workspaces_before = app.count("workspaces").await;

    // Another client holds a write lock on the organization, so Roster's next write waits.
    let blocker = app.db.begin().await.unwrap();
    blocker
        .execute_unprepared("UPDATE organizations SET display_name = display_name")
        .await
        .unwrap();

    // The slow call goes over a connection of its own, so it is in flight independently of the
    // calls below.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let team = roster::pb::team_service_client::TeamServiceClient::new(channel);
    // Send the slow call until it is the one holding the slot: with a single slot, a call that
    // arrives while another holds it is itself shed at once.
    let mut started;
    let slow = loop {
        let slow_request = owner.req(pb::CreateWorkspaceRequest {
            organization_id: org.clone(),
            display_name: "slow".into(),
            ..Default::default()
        });
        let mut client = team.clone();
        started = Instant::now();
        let slow = tokio::spawn(async move { client.create_workspace(slow_request).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        if !slow.is_finished() {
            break slow;
        }
        let refused = slow.await.unwrap();
        assert_code(refused, Code::ResourceExhausted, None);
    };

    // The one slot is taken: the next call is refused at once, not queued.
    let mut shed = None;
    let mut shed_started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        shed_started = Instant::now();
        let result = app
            .team
            .clone()
            .get_organization(
                owner.req(pb::GetOrganizationRequest { organization_id: org.clone() }),
            )
            .await;
        if let Err(status) = result {
            shed = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let shed = shed.expect("a call is shed while the slot is taken");
    assert_eq!(shed.code(), Code::ResourceExhausted, "{shed:?}");
    println!("shed answered in {:?}", shed_started.elapsed());
    // Health is exempt, so probes still answer.
    let mut health = tonic_health::pb::health_client::HealthClient::new(app.channel());
    health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();

    let slow = slow.await.unwrap();
    assert_code(slow, Code::DeadlineExceeded, None);
    println!("the blocked call was cut off after {:?}", started.elapsed());
    blocker.rollback().await.unwrap();

    // Once the lock is gone, calls succeed again, and the cut-off call left nothing behind.
    let mut ok = false;
    for _ in 0..50 {
        if app.try_create_workspace(&owner, &org, "fast").await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "calls succeed again after the lock is released");
    assert_eq!(app.count("workspaces").await, workspaces_before + 1);
    app.stop().await;
}
