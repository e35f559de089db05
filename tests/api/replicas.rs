//! Two Roster processes on one PostgreSQL database. A change made through one is seen by the
//! other at once with its consistency token or FULLY_CONSISTENT, and within the feed's bound
//! without them; a replica whose notification connection is killed serves no stale allow.

use std::time::{Duration, Instant};

use roster::pb::access_service_client::AccessServiceClient;
use roster::pb::{
    self, ConsistencyRequirement as Req, OrganizationRole as R, WorkspaceAccess as A,
};
use sea_orm::ConnectionTrait;
use tonic::transport::Channel;

use crate::common::process::{Server, free_port};
use crate::common::{
    Backend, SmtpSink, User, create_org_with, drop_database, fresh_database, sample, scrape,
    try_create_workspace_with, wait_for_sample,
};

struct Replicas {
    a: Server,
    b: Server,
    /// Replica B's metrics page.
    b_metrics: std::net::SocketAddr,
    org: String,
    workspace: String,
    engineer: User,
    owner: User,
    database_url: String,
    database: Option<String>,
    /// Holds the database file and both replicas' logs.
    dir: tempfile::TempDir,
}

fn check(user: &User, org: &str, ws: &str, requirement: Req, token: &str) -> pb::AuthorizeRequest {
    pb::AuthorizeRequest {
        user_id: user.id.clone(),
        organization_id: org.to_owned(),
        workspace_id: ws.to_owned(),
        permission: "sources.create".into(),
        consistency: Some(pb::Consistency {
            requirement: requirement as i32,
            at_least_as_fresh: token.to_owned(),
        }),
    }
}

/// Two replicas, an organization with an engineer holding WRITE on a workspace, and replica B's
/// cache warmed with the engineer's allow.
async fn replicas() -> Replicas {
    let dir = tempfile::tempdir().unwrap();
    let (database_url, database) = fresh_database(Backend::Postgres, dir.path()).await;
    let sink = SmtpSink::start().await;
    let a = Server::start(&database_url, sink.port, &dir.path().join("a.log")).await;
    let b_metrics: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let b = Server::start_with(
        &database_url,
        sink.port,
        &dir.path().join("b.log"),
        &["--metrics-listen", &b_metrics.to_string()],
        None,
    )
    .await;
    let (owner, engineer) = (User::new("owner"), User::new("engineer"));
    let mut team = a.team().await;
    let org = create_org_with(&mut team, &owner, "Acme").await;
    let workspace = try_create_workspace_with(&mut team, &owner, &org, "prod").await.unwrap();
    team.create_invitation(owner.req(pb::CreateInvitationRequest {
        organization_id: org.clone(),
        email: engineer.email.clone(),
        role: R::Member as i32,
        workspace_grants: vec![pb::InvitationWorkspaceGrant {
            workspace_id: workspace.clone(),
            access: A::Write as i32,
            ..Default::default()
        }],
        ..Default::default()
    }))
    .await
    .unwrap();
    // Both replicas send mail under a one-second lease: on a busy machine B may find A's lease
    // over and send the email again with a fresh token, which replaces the first.
    let mut accepted = false;
    for sent in 1..=3 {
        let token = sink.wait_for(&engineer.email, sent).await.token().unwrap();
        let request = engineer.req(pb::AcceptInvitationRequest { token, ..Default::default() });
        match team.accept_invitation(request).await {
            Ok(_) => {
                accepted = true;
                break;
            }
            Err(status) if status.code() == tonic::Code::NotFound => continue,
            Err(status) => panic!("accept: {status:?}"),
        }
    }
    assert!(accepted, "no invitation token of the engineer was accepted");
    // B is subscribed once its heartbeat goes round, when its index is in use; then its cache
    // serves the engineer's allow.
    let mut access = b.access().await;
    let in_use = "roster_authz_index_in_use";
    assert!(wait_for_sample(b_metrics, in_use, 1.0, Duration::from_secs(30)).await, "B's feed");
    for _ in 0..3 {
        let decision = access
            .authorize(check(&engineer, &org, &workspace, Req::MinimizeLatency, ""))
            .await
            .unwrap();
        assert!(decision.into_inner().allowed);
    }
    Replicas { a, b, b_metrics, org, workspace, engineer, owner, database_url, database, dir }
}

impl Replicas {
    async fn remove_engineer_through_a(&self) -> String {
        self.a
            .team()
            .await
            .remove_member(self.owner.req(pb::RemoveMemberRequest {
                organization_id: self.org.clone(),
                user_id: self.engineer.id.clone(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner()
            .consistency_token
    }

    async fn finish(self) {
        self.a.stop();
        self.b.stop();
        drop_database(self.database).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_through_one_replica_is_seen_by_the_other() {
    let r = replicas().await;
    let mut b = r.b.access().await;
    let token = r.remove_engineer_through_a().await;
    let removed_at = Instant::now();
    let parsed = roster::domain::ChangeToken::parse(&token).expect("a change token");
    assert_eq!(
        parsed.organization.map(|(org, _)| org.to_string()),
        Some(r.org.clone()),
        "the token names the organization"
    );

    // With the change's token, or asking for full consistency: denied at once.
    let fresh = b
        .authorize(check(&r.engineer, &r.org, &r.workspace, Req::AtLeastAsFresh, &token))
        .await
        .unwrap();
    assert!(!fresh.get_ref().allowed);
    assert_eq!(fresh.get_ref().reason, pb::DecisionReason::DeniedNotAMember as i32);
    let full = b
        .authorize(check(&r.engineer, &r.org, &r.workspace, Req::FullyConsistent, ""))
        .await
        .unwrap();
    assert!(!full.into_inner().allowed);

    // Without them: denied once the notification arrives, within the documented bound.
    let mut delay = None;
    while removed_at.elapsed() < roster::storage::feed::MAX_SILENCE {
        let decision = b
            .authorize(check(&r.engineer, &r.org, &r.workspace, Req::MinimizeLatency, ""))
            .await
            .unwrap();
        if !decision.into_inner().allowed {
            delay = Some(removed_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let delay = delay.expect("replica B denies within the staleness bound");
    println!("replica B denied {delay:?} after the removal returned on replica A");

    // A malformed token is refused, not ignored.
    let forged = b
        .authorize(check(&r.engineer, &r.org, &r.workspace, Req::AtLeastAsFresh, "yesterday"))
        .await;
    assert_eq!(forged.unwrap_err().code(), tonic::Code::InvalidArgument);
    r.finish().await;
}

/// A grant that ends, set through replica A, ends on replica B at the same instant: B decides
/// by its own clock from the end the change carried, with nothing recording the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_set_to_end_through_one_replica_ends_on_the_other_from_its_index() {
    let r = replicas().await;
    let mut b = r.b.access().await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    // Far enough ahead for the set through A and the fresh check on B on a busy machine.
    let end = now + Duration::from_millis(6000);
    let set =
        r.a.team()
            .await
            .set_workspace_access(r.owner.req(pb::SetWorkspaceAccessRequest {
                organization_id: r.org.clone(),
                workspace_id: r.workspace.clone(),
                user_id: r.engineer.id.clone(),
                access: A::Write as i32,
                expire_time: Some(prost_types::Timestamp {
                    seconds: end.as_secs() as i64,
                    nanos: end.subsec_nanos() as i32,
                }),
                reason: "incident 4711".into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
    // B holds the change (its token says so) and still allows before the end.
    let fresh = b
        .authorize(check(
            &r.engineer,
            &r.org,
            &r.workspace,
            Req::AtLeastAsFresh,
            &set.consistency_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(fresh.allowed, "{fresh:?}");
    while std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap() <= end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = b
        .authorize(check(&r.engineer, &r.org, &r.workspace, Req::MinimizeLatency, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (after.allowed, after.reason),
        (false, pb::DecisionReason::DeniedGrantExpired as i32)
    );
    // Both replicas look for ended grants; the end is recorded once, and stays so while both
    // go on looking.
    let db = sea_orm::Database::connect(&r.database_url).await.unwrap();
    let count = |table: &str, filter: &str| {
        let sql = format!("SELECT COUNT(*) AS n FROM {table} WHERE {filter}");
        let statement = sea_orm::Statement::from_string(sea_orm::DbBackend::Postgres, sql);
        let db = &db;
        async move {
            let row = db.query_one_raw(statement).await.unwrap().unwrap();
            row.try_get::<i64>("", "n").unwrap()
        }
    };
    let expired = ("audit_events", "action = 'workspace_access.expired'");
    let started = Instant::now();
    while count(expired.0, expired.1).await == 0 {
        assert!(started.elapsed() < Duration::from_secs(30), "the end was never recorded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for (table, filter) in [expired, ("change_log", "deltas LIKE '%grant_expired%'")] {
        assert_eq!(count(table, filter).await, 1, "{table}: the end recorded once");
    }
    db.close().await.unwrap();
    r.finish().await;
}

/// Asks replica B until it answers `expected` (within the feed's bound); returns how long that
/// took.
async fn until_b_answers(
    b: &mut AccessServiceClient<Channel>,
    request: pb::AuthorizeRequest,
    expected: pb::DecisionReason,
) -> Duration {
    let started = Instant::now();
    while started.elapsed() < roster::storage::feed::MAX_SILENCE {
        let decision = b.authorize(request.clone()).await.unwrap().into_inner();
        if decision.reason == expected as i32 {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("replica B did not answer {expected:?} within the bound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_through_one_replica_are_patched_into_the_others_index_without_a_reload() {
    use pb::DecisionReason as D;
    let r = replicas().await;
    let counters = |text: &str| {
        (
            sample(text, "roster_authz_index_misses_total").unwrap(),
            sample(text, "roster_authz_index_patches_total").unwrap(),
        )
    };
    let (misses, patches) = counters(&scrape(r.b_metrics).await);
    let mut team = r.a.team().await;
    let mut b = r.b.access().await;
    let engineer_on = |ws: &str| check(&r.engineer, &r.org, ws, Req::MinimizeLatency, "");
    let set_access = |ws: &str, access: A| {
        r.owner.req(pb::SetWorkspaceAccessRequest {
            organization_id: r.org.clone(),
            workspace_id: ws.to_owned(),
            user_id: r.engineer.id.clone(),
            access: access as i32,
            ..Default::default()
        })
    };

    team.set_workspace_access(set_access(&r.workspace, A::Read)).await.unwrap();
    let mut delays =
        vec![until_b_answers(&mut b, engineer_on(&r.workspace), D::DeniedReadOnly).await];
    let second = try_create_workspace_with(&mut team, &r.owner, &r.org, "staging").await.unwrap();
    // Each change waits for B to follow it, so that B applies it alone: two changes read from
    // the log in one go are one patch.
    delays.push(until_b_answers(&mut b, engineer_on(&second), D::DeniedNoWorkspaceAccess).await);
    team.set_workspace_access(set_access(&second, A::Write)).await.unwrap();
    delays.push(until_b_answers(&mut b, engineer_on(&second), D::AllowedByWorkspaceAccess).await);
    team.delete_workspace(r.owner.req(pb::DeleteWorkspaceRequest {
        organization_id: r.org.clone(),
        workspace_id: second.clone(),
        ..Default::default()
    }))
    .await
    .unwrap();
    delays.push(until_b_answers(&mut b, engineer_on(&second), D::DeniedWorkspaceNotFound).await);
    r.remove_engineer_through_a().await;
    delays.push(until_b_answers(&mut b, engineer_on(&r.workspace), D::DeniedNotAMember).await);
    println!("replica B followed each change after {delays:?}");

    // Five changes, each applied to B's index; none made B load the organization again.
    let (misses_after, patches_after) = counters(&scrape(r.b_metrics).await);
    assert_eq!(misses_after, misses, "replica B reloaded the organization");
    assert_eq!(patches_after - patches, 5.0);

    // A notification with nothing new in the log (this replica's own come back like that)
    // leaves B's index as it is.
    let admin = sea_orm::Database::connect(&r.database_url).await.unwrap();
    admin
        .execute_unprepared(&format!("SELECT pg_notify('roster_invalidate', '{}')", r.org))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    b.authorize(engineer_on(&r.workspace)).await.unwrap();
    assert_eq!(counters(&scrape(r.b_metrics).await).0, misses, "B kept its index");
    // A change described as the previous release describes it, which writes no change log,
    // drops B's index: the next check loads it again.
    let described = format!("change/1\n{}\nmembers\n{}", r.org, r.engineer.id);
    admin
        .execute_unprepared(&format!("SELECT pg_notify('roster_invalidate', '{described}')"))
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        b.authorize(engineer_on(&r.workspace)).await.unwrap();
        if counters(&scrape(r.b_metrics).await).0 > misses {
            break;
        }
        assert!(started.elapsed() < roster::storage::feed::MAX_SILENCE, "B kept its index");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    admin.close().await.unwrap();
    r.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_notification_connection_never_yields_a_stale_allow() {
    let r = replicas().await;
    // B has handled the loss once it has subscribed again: it does so only after a loss,
    // which drops what it cached.
    let log = r.dir.path().join("b.log");
    let subscribed = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("invalidation feed: subscribed; index in use")
            .count()
    };
    let before = subscribed();
    let admin = sea_orm::Database::connect(&r.database_url).await.unwrap();
    let killed = admin
        .execute_unprepared(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND query ILIKE 'LISTEN%roster_invalidate%'",
        )
        .await
        .unwrap();
    println!("terminated {} notification connection(s)", killed.rows_affected());
    assert!(killed.rows_affected() >= 1, "B's notification connection was found");
    let started = Instant::now();
    while subscribed() <= before {
        assert!(started.elapsed() < Duration::from_secs(30), "B never subscribed again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A change whose notification B never receives: written straight into the database, as if
    // it had been sent while B's connection was down.
    admin
        .execute_unprepared(
            "DELETE FROM workspace_grants WHERE user_id = 'engineer'; \
             DELETE FROM members WHERE user_id = 'engineer'",
        )
        .await
        .unwrap();

    // B lost its feed, so it dropped what it had cached: no stale allow.
    let mut b = r.b.access().await;
    let started = Instant::now();
    let mut calls = 0;
    while started.elapsed() < Duration::from_secs(4) {
        let decision = b
            .authorize(check(&r.engineer, &r.org, &r.workspace, Req::MinimizeLatency, ""))
            .await
            .unwrap();
        assert!(
            !decision.into_inner().allowed,
            "a stale allow after the notification connection died"
        );
        calls += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("{calls} checks on replica B after the kill: all denied");
    admin.close().await.unwrap();
    r.finish().await;
}
