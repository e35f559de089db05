//! A grant that ends grants nothing from its end on, answered by the index and by the database
//! alike, at once (nothing has to record the end first). The end is written straight into the
//! grant's row here, as the database holds it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use roster::pb::{self, DecisionReason as Why, OrganizationRole as R, WorkspaceAccess as A};
use tonic::Code;

use crate::common::{Backend, TestApp, User, check, set_access, spawn_app};
use crate::db_tests;

db_tests!(an_ended_grant_grants_nothing_on_any_path_from_its_end_on);

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
    let end = micros_from_now(Duration::from_millis(1500));
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
