//! A grant that ends grants nothing from its end on, answered by the index and by the database
//! alike, at once (nothing has to record the end first). The end is written straight into the
//! grant's row here, as the database holds it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use roster::pb::{self, DecisionReason as Why, OrganizationRole as R, WorkspaceAccess as A};
use tonic::Code;

use crate::common::{Backend, TestApp, User, check, set_access, spawn_app, timestamp};
use crate::db_tests;

db_tests!(
    an_ended_grant_grants_nothing_on_any_path_from_its_end_on,
    a_grant_set_with_an_end_grants_until_then_and_setting_it_again_replaces_it,
    a_grant_end_in_the_past_without_a_reason_or_on_a_removal_is_refused,
    the_organization_bounds_how_long_a_grant_may_last,
    an_invitations_grant_ends_at_the_instant_fixed_when_it_was_made,
    the_end_of_a_grant_is_recorded_once_in_the_change_log_and_the_audit_log,
);

/// The audit events of `action` the organization holds: (actor, time in microseconds).
async fn audited(app: &TestApp, owner: &User, org: &str, action: &str) -> Vec<(String, i64)> {
    let events = app
        .team
        .clone()
        .list_audit_events(owner.req(pb::ListAuditEventsRequest {
            organization_id: org.to_owned(),
            page_size: 1000,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .events;
    events
        .into_iter()
        .filter(|e| e.action == action)
        .map(|e| {
            let t = e.create_time.unwrap();
            (e.actor_user_id, t.seconds * 1_000_000 + i64::from(t.nanos / 1000))
        })
        .collect()
}

async fn the_end_of_a_grant_is_recorded_once_in_the_change_log_and_the_audit_log(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let engineer = User::new("engineer");
    let org = app.create_org(&owner, "Acme").await;
    let prod = app.create_workspace(&owner, &org, "prod").await;
    app.join(&owner, &org, &engineer, R::Member, &[]).await;
    let end = micros_from_now(Duration::from_millis(3000));
    app.team
        .clone()
        .set_workspace_access(set_until(
            &owner,
            &org,
            &prod,
            &engineer,
            A::Write,
            Some(end),
            "incident",
        ))
        .await
        .unwrap();
    // Recorded within a second or two of the end (never before it: the event's time, below,
    // says when), by no user, and then never again.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while audited(&app, &owner, &org, "workspace_access.expired").await.is_empty() {
        assert!(std::time::Instant::now() < deadline, "the end was never recorded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let events = audited(&app, &owner, &org, "workspace_access.expired").await;
    assert_eq!(events.len(), 1, "recorded once: {events:?}");
    let (actor, at) = &events[0];
    assert_eq!(actor, "", "no user acted");
    assert!(*at >= end, "recorded at or after the end ({at} < {end})");
    let logged = app.count("change_log WHERE deltas LIKE '%grant_expired%'").await;
    assert_eq!(logged, 1, "one change records the end");
    // The decision still says why access is gone.
    let decision = app.authorize(&engineer.id, &org, &prod, "sources.create").await;
    assert_eq!((decision.allowed, decision.reason), (false, Why::DeniedGrantExpired as i32));
    app.stop().await;
}

fn offered(ws: &str, access: A, end: Option<i64>, reason: &str) -> pb::InvitationWorkspaceGrant {
    pb::InvitationWorkspaceGrant {
        workspace_id: ws.to_owned(),
        access: access as i32,
        expire_time: end.map(timestamp),
        reason: reason.to_owned(),
    }
}

async fn an_invitations_grant_ends_at_the_instant_fixed_when_it_was_made(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let (engineer, late) = (User::new("engineer"), User::new("late"));
    let org = app.create_org(&owner, "Acme").await;
    let prod = app.create_workspace(&owner, &org, "prod").await;
    let staging = app.create_workspace(&owner, &org, "staging").await;
    let mut team = app.team.clone();
    let invite = |email: &str, grants: Vec<pb::InvitationWorkspaceGrant>| {
        owner.req(pb::CreateInvitationRequest {
            organization_id: org.clone(),
            email: email.to_owned(),
            role: R::Member as i32,
            workspace_grants: grants,
            ..Default::default()
        })
    };
    // Refused, naming the grant's field, with nothing written.
    let before = app.snapshot().await;
    let past = micros_from_now(Duration::ZERO) - 1_000_000;
    let refused = team
        .create_invitation(invite(&engineer.email, vec![offered(&prod, A::Write, Some(past), "x")]))
        .await;
    crate::common::assert_code(
        refused,
        Code::InvalidArgument,
        Some("workspace_grants[0].expire_time"),
    );
    let soon = micros_from_now(Duration::from_secs(600));
    let unexplained = team
        .create_invitation(invite(
            &engineer.email,
            vec![offered(&staging, A::Read, None, ""), offered(&prod, A::Write, Some(soon), "")],
        ))
        .await;
    crate::common::assert_code(
        unexplained,
        Code::InvalidArgument,
        Some("workspace_grants[1].reason"),
    );
    assert_eq!(app.snapshot().await, before);

    // WRITE on production until an end fixed now, READ on staging for good.
    let end = micros_from_now(Duration::from_millis(6000));
    let created = team
        .create_invitation(invite(
            &engineer.email,
            vec![
                offered(&prod, A::Write, Some(end), "migration"),
                offered(&staging, A::Read, None, ""),
            ],
        ))
        .await
        .unwrap()
        .into_inner()
        .invitation
        .unwrap();
    assert_eq!(created.workspace_grants[0].expire_time, Some(timestamp(end)));
    assert_eq!(created.workspace_grants[0].reason, "migration");
    let token = app.smtp.wait_for(&engineer.email, 1).await.token().unwrap();
    app.accept(&engineer, &token).await.unwrap();
    assert!(app.allowed(&engineer.id, &org, &prod, "sources.create").await);
    while micros_from_now(Duration::ZERO) <= end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ended = app.authorize(&engineer.id, &org, &prod, "sources.create").await;
    assert_eq!((ended.allowed, ended.reason), (false, Why::DeniedGrantExpired as i32));
    assert!(app.allowed(&engineer.id, &org, &staging, "sources.read").await);

    // Accepted after its grant's end: the member joins without that grant.
    let short = micros_from_now(Duration::from_millis(2000));
    team.create_invitation(invite(
        &late.email,
        vec![offered(&prod, A::Write, Some(short), "call")],
    ))
    .await
    .unwrap();
    let token = app.smtp.wait_for(&late.email, 1).await.token().unwrap();
    while micros_from_now(Duration::ZERO) <= short {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.accept(&late, &token).await.unwrap();
    let decision = app.authorize(&late.id, &org, &prod, "sources.read").await;
    assert_eq!(decision.reason, Why::DeniedNoWorkspaceAccess as i32);
    let held = app.count(&format!("workspace_grants WHERE user_id = '{}'", late.id)).await;
    assert_eq!(held, 0, "an ended grant is not applied");
    app.stop().await;
}

fn set_until(
    owner: &User,
    org: &str,
    ws: &str,
    user: &User,
    access: A,
    end: Option<i64>,
    reason: &str,
) -> tonic::Request<pb::SetWorkspaceAccessRequest> {
    owner.req(pb::SetWorkspaceAccessRequest {
        organization_id: org.to_owned(),
        workspace_id: ws.to_owned(),
        user_id: user.id.clone(),
        access: access as i32,
        expire_time: end.map(timestamp),
        reason: reason.to_owned(),
        ..Default::default()
    })
}

async fn a_grant_set_with_an_end_grants_until_then_and_setting_it_again_replaces_it(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let engineer = User::new("engineer");
    let org = app.create_org(&owner, "Acme").await;
    let prod = app.create_workspace(&owner, &org, "prod").await;
    app.join(&owner, &org, &engineer, R::Member, &[]).await;
    // Loaded before the grant, so that the grant reaches the index as a change.
    assert!(!app.allowed(&engineer.id, &org, &prod, "sources.create").await);
    let mut team = app.team.clone();

    let end = micros_from_now(Duration::from_millis(5000));
    let set = team
        .set_workspace_access(set_until(
            &owner,
            &org,
            &prod,
            &engineer,
            A::Write,
            Some(end),
            "incident 4711",
        ))
        .await
        .unwrap()
        .into_inner();
    let grant = set.grant.unwrap();
    assert_eq!(grant.expire_time, Some(timestamp(end)));
    assert_eq!(grant.reason, "incident 4711");
    assert!(app.allowed(&engineer.id, &org, &prod, "sources.create").await);
    // The same grant again changes nothing.
    let again = team
        .set_workspace_access(set_until(
            &owner,
            &org,
            &prod,
            &engineer,
            A::Write,
            Some(end),
            "incident 4711",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.consistency_token, set.consistency_token);
    // Listed with its end and reason while it is in force.
    let listed = team
        .list_workspace_access(owner.req(pb::ListWorkspaceAccessRequest {
            organization_id: org.clone(),
            workspace_id: prod.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .grants;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].expire_time, listed[0].reason.as_str()),
        (Some(timestamp(end)), "incident 4711")
    );

    while micros_from_now(Duration::ZERO) <= end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let decision = app.authorize(&engineer.id, &org, &prod, "sources.create").await;
    assert_eq!((decision.allowed, decision.reason), (false, Why::DeniedGrantExpired as i32));

    // Extended: granted again until later; then made permanent.
    let later = micros_from_now(Duration::from_secs(3600));
    team.set_workspace_access(set_until(
        &owner,
        &org,
        &prod,
        &engineer,
        A::Read,
        Some(later),
        "audit",
    ))
    .await
    .unwrap();
    let read = app.authorize(&engineer.id, &org, &prod, "sources.read").await;
    assert_eq!((read.allowed, read.reason), (true, Why::AllowedByWorkspaceAccess as i32));
    let permanent = team
        .set_workspace_access(set_until(&owner, &org, &prod, &engineer, A::Read, None, ""))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();
    assert_eq!((permanent.expire_time, permanent.reason.as_str()), (None, ""));
    assert_eq!(app.count("workspace_grants WHERE expire_time IS NOT NULL").await, 0);
    app.stop().await;
}

async fn a_grant_end_in_the_past_without_a_reason_or_on_a_removal_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let engineer = User::new("engineer");
    let org = app.create_org(&owner, "Acme").await;
    let prod = app.create_workspace(&owner, &org, "prod").await;
    app.join(&owner, &org, &engineer, R::Member, &[]).await;
    let mut team = app.team.clone();
    let soon = micros_from_now(Duration::from_secs(600));
    let past = micros_from_now(Duration::ZERO) - 1_000_000;
    let long = "x".repeat(501);
    let before = app.snapshot().await;
    let cases: [(Option<i64>, &str, A, &str); 4] = [
        (Some(past), "late", A::Write, "expire_time"),
        (Some(soon), "", A::Write, "reason"),
        (Some(soon), &long, A::Write, "reason"),
        (Some(soon), "removal", A::None, "expire_time"),
    ];
    for (end, reason, access, field) in cases {
        let refused = team
            .set_workspace_access(set_until(&owner, &org, &prod, &engineer, access, end, reason))
            .await;
        crate::common::assert_code(refused, Code::InvalidArgument, Some(field));
    }
    assert_eq!(app.snapshot().await, before, "a refused grant changed something");
    app.stop().await;
}

async fn the_organization_bounds_how_long_a_grant_may_last(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let engineer = User::new("engineer");
    let org = app.create_org(&owner, "Acme").await;
    let prod = app.create_workspace(&owner, &org, "prod").await;
    app.join(&owner, &org, &engineer, R::Member, &[]).await;
    let mut team = app.team.clone();
    let bound = |seconds: Option<i64>| {
        owner.req(pb::UpdateOrganizationRequest {
            organization: Some(pb::Organization {
                id: org.clone(),
                max_grant_duration: seconds
                    .map(|seconds| prost_types::Duration { seconds, nanos: 0 }),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["maxGrantDuration".into()] }),
            ..Default::default()
        })
    };
    let updated = team.update_organization(bound(Some(3600))).await.unwrap().into_inner();
    assert_eq!(updated.organization.unwrap().max_grant_duration.map(|d| d.seconds), Some(3600));
    let before = app.snapshot().await;
    let permanent = team
        .set_workspace_access(set_until(&owner, &org, &prod, &engineer, A::Write, None, ""))
        .await;
    crate::common::assert_code(permanent, Code::InvalidArgument, Some("expire_time"));
    let too_long = micros_from_now(Duration::from_secs(7200));
    let refused = team
        .set_workspace_access(set_until(
            &owner,
            &org,
            &prod,
            &engineer,
            A::Write,
            Some(too_long),
            "migration",
        ))
        .await;
    crate::common::assert_code(refused, Code::InvalidArgument, Some("expire_time"));
    assert_eq!(app.snapshot().await, before);
    let within = micros_from_now(Duration::from_secs(1800));
    team.set_workspace_access(set_until(
        &owner,
        &org,
        &prod,
        &engineer,
        A::Write,
        Some(within),
        "migration",
    ))
    .await
    .unwrap();
    // Removing needs no end; a bound out of range is refused; unset with the path: no bound.
    team.set_workspace_access(set_until(&owner, &org, &prod, &engineer, A::None, None, ""))
        .await
        .unwrap();
    let wrong = team.update_organization(bound(Some(30))).await;
    crate::common::assert_code(
        wrong,
        Code::InvalidArgument,
        Some("organization.max_grant_duration"),
    );
    let cleared = team.update_organization(bound(None)).await.unwrap().into_inner();
    assert_eq!(cleared.organization.unwrap().max_grant_duration, None);
    team.set_workspace_access(set_until(&owner, &org, &prod, &engineer, A::Read, None, ""))
        .await
        .unwrap();
    app.stop().await;
}

fn micros_from_now(offset: Duration) -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    i64::try_from((now + offset).as_micros()).unwrap()
}

/// Every answer about `user` on `ws` that a grant decides, as (Authorize from the index,
/// Authorize from the database, BatchAuthorize, ListGrantedPermissions, ListAccessibleWorkspaces,
/// ListWorkspaceAccess, GetWorkspace as the user).
async fn answers(app: &TestApp, owner: &User, user: &User, org: &str, ws: &str) -> Vec<String> {
    let mut access = app.access.clone();
    let mut out = Vec::new();
    let index = app.authorize(&user.id, org, ws, "sources.create").await;
    out.push(format!("index {} {}", index.allowed, index.reason));
    let mut full = check(&user.id, org, ws, "sources.create");
    full.consistency = Some(pb::Consistency {
        requirement: pb::ConsistencyRequirement::FullyConsistent as i32,
        at_least_as_fresh: String::new(),
    });
    let database = access.authorize(full).await.unwrap().into_inner();
    out.push(format!("database {} {}", database.allowed, database.reason));
    let batch = access
        .batch_authorize(pb::BatchAuthorizeRequest {
            consistency: None,
            checks: vec![check(&user.id, org, ws, "sources.read")],
        })
        .await
        .unwrap()
        .into_inner();
    out.push(format!("batch {} {}", batch.results[0].allowed, batch.results[0].reason));
    let granted = access
        .list_granted_permissions(pb::ListGrantedPermissionsRequest {
            consistency: None,
            user_id: user.id.clone(),
            organization_id: org.to_owned(),
            workspace_id: ws.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .permissions;
    out.push(format!("granted {}", granted.len()));
    let accessible = access
        .list_accessible_workspaces(pb::ListAccessibleWorkspacesRequest {
            consistency: None,
            user_id: user.id.clone(),
            organization_id: org.to_owned(),
            permission: "sources.read".into(),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .workspaces;
    out.push(format!("accessible {}", accessible.len()));
    let listed = app
        .team
        .clone()
        .list_workspace_access(owner.req(pb::ListWorkspaceAccessRequest {
            organization_id: org.to_owned(),
            workspace_id: ws.to_owned(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .grants;
    out.push(format!("listed {}", listed.iter().filter(|g| g.user_id == user.id).count()));
    let seen = app
        .team
        .clone()
        .get_workspace(user.req(pb::GetWorkspaceRequest {
            organization_id: org.to_owned(),
            workspace_id: ws.to_owned(),
        }))
        .await;
    out.push(format!(
        "visible {}",
        seen.map(|_| true).unwrap_or_else(|s| s.code() != Code::NotFound)
    ));
    out
}

async fn an_ended_grant_grants_nothing_on_any_path_from_its_end_on(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let engineer = User::new("engineer");
    let org = app.create_org(&owner, "Acme").await;
    let prod = app.create_workspace(&owner, &org, "prod").await;
    app.join(&owner, &org, &engineer, R::Member, &[(&prod, A::Write)]).await;
    // Nothing has asked about the organization yet: its first check loads it, end included.
    let end = micros_from_now(Duration::from_millis(5000));
    app.execute(&format!("UPDATE workspace_grants SET expire_time = {end}")).await;

    let allowed = |reason: Why| format!("{} {}", true, reason as i32);
    let before = answers(&app, &owner, &engineer, &org, &prod).await;
    assert_eq!(
        before,
        [
            format!("index {}", allowed(Why::AllowedByWorkspaceAccess)),
            format!("database {}", allowed(Why::AllowedByWorkspaceAccess)),
            format!("batch {}", allowed(Why::AllowedByWorkspaceAccess)),
            "granted 17".to_owned(),
            "accessible 1".to_owned(),
            "listed 1".to_owned(),
            "visible true".to_owned(),
        ]
    );

    // From the end on; the test waits on the server's clock, which is this machine's.
    while micros_from_now(Duration::ZERO) <= end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let expired = |what: &str| format!("{what} false {}", Why::DeniedGrantExpired as i32);
    let after = answers(&app, &owner, &engineer, &org, &prod).await;
    assert_eq!(
        after,
        [
            expired("index"),
            expired("database"),
            expired("batch"),
            "granted 0".to_owned(),
            "accessible 0".to_owned(),
            "listed 0".to_owned(),
            "visible false".to_owned(),
        ]
    );
    let decision = app.authorize(&engineer.id, &org, &prod, "sources.read").await;
    assert_eq!(decision.workspace_access, A::None as i32, "an ended grant holds no access");
    // An Owner's WRITE is the role's: nothing about grants ends it.
    assert!(app.allowed(&owner.id, &org, &prod, "sources.create").await);

    // Setting the grant again makes it permanent, in the index and in the row.
    app.team
        .clone()
        .set_workspace_access(set_access(&owner, &org, &prod, &engineer, A::Read))
        .await
        .unwrap();
    let again = app.authorize(&engineer.id, &org, &prod, "sources.read").await;
    assert_eq!((again.allowed, again.reason), (true, Why::AllowedByWorkspaceAccess as i32));
    assert_eq!(app.count("workspace_grants WHERE expire_time IS NOT NULL").await, 0);
    app.stop().await;
}
