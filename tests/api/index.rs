//! The Authorize index under pressure: organization ids nobody created, eviction by recency,
//! and the rows it reports holding against what a reload of the same organizations holds.

use std::collections::HashMap;
use std::time::Duration;

use roster::domain::OrganizationId;
use roster::pb::{self, DecisionReason as Why, OrganizationRole as R, WorkspaceAccess as A};
use sea_orm::{
    ActiveValue::Set, ConnectionTrait, Database, DatabaseConnection, EntityTrait, Statement,
};

use crate::common::{
    Backend, TestApp, User, check, fresh_database, sample, scrape, spawn_app_with, wait_for_sample,
};
use crate::db_tests;

db_tests!(
    a_flood_of_made_up_organization_ids_leaves_the_organizations_in_use_loaded,
    eviction_keeps_the_organizations_in_use_loaded,
    an_organization_created_with_an_id_remembered_as_absent_is_found,
    after_many_patches_the_index_counts_what_a_reload_counts,
);

/// How long the index may take to be in use (on PostgreSQL, until the feed is subscribed).
const IN_USE: Duration = Duration::from_secs(10);

async fn spawn_with_metrics(backend: Backend, cache_entries: usize) -> TestApp {
    let app = spawn_app_with(backend, |c| {
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        c.authz_cache_entries = cache_entries;
    })
    .await;
    let metrics = app.metrics_addr.unwrap();
    assert!(wait_for_sample(metrics, "roster_authz_index_in_use", 1.0, IN_USE).await);
    app
}

/// The index's hit and miss counters.
async fn counters(app: &TestApp) -> (f64, f64) {
    let text = scrape(app.metrics_addr.unwrap()).await;
    (
        sample(&text, "roster_authz_index_hits_total").unwrap(),
        sample(&text, "roster_authz_index_misses_total").unwrap(),
    )
}

/// A gauge of the index.
async fn gauge(app: &TestApp, name: &str) -> f64 {
    let text = scrape(app.metrics_addr.unwrap()).await;
    sample(&text, name).unwrap_or_else(|| panic!("{name} is exposed: {text}"))
}

/// Asserts that the owner's check on `org` is answered from memory, without a load.
async fn assert_answered_from_memory(app: &TestApp, owner: &User, org: &str, when: &str) {
    let (hits, misses) = counters(app).await;
    assert!(app.allowed(&owner.id, org, "", "organization.update").await, "{when}");
    let (hits_after, misses_after) = counters(app).await;
    assert_eq!(misses_after, misses, "{when}: the organization in use was reloaded");
    assert_eq!(hits_after, hits + 1.0, "{when}");
}

async fn a_flood_of_made_up_organization_ids_leaves_the_organizations_in_use_loaded(
    backend: Backend,
) {
    // Small enough that, were every made-up id held as an organization, the flood would evict
    // the one in use many times over.
    let app = spawn_with_metrics(backend, 2_000).await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    app.create_workspace(&owner, &org, "prod").await;
    assert!(app.allowed(&owner.id, &org, "", "organization.update").await);
    // The organization, its owner and its workspace.
    assert_eq!(gauge(&app, "roster_authz_index_entries").await, 3.0);

    // An id that does not exist: learnt once, then answered from memory.
    let made_up = OrganizationId::generate().to_string();
    let denied = app.authorize("intruder", &made_up, "", "organization.read").await;
    assert_eq!(denied.reason, Why::DeniedNotAMember as i32);
    let (hits, misses) = counters(&app).await;
    let denied = app.authorize("intruder", &made_up, "", "organization.read").await;
    assert_eq!(denied.reason, Why::DeniedNotAMember as i32);
    assert_eq!(counters(&app).await, (hits + 1.0, misses), "a remembered absent id is a hit");

    let mut access = app.access.clone();
    for batch in 0..10 {
        let checks: Vec<pb::AuthorizeRequest> = (0..1_000)
            .map(|_| {
                let id = OrganizationId::generate().to_string();
                check("intruder", &id, "", "organization.read")
            })
            .collect();
        let results = access
            .batch_authorize(pb::BatchAuthorizeRequest { checks, consistency: None })
            .await
            .unwrap()
            .into_inner()
            .results;
        assert_eq!(results.len(), 1_000);
        for result in &results {
            assert!(!result.allowed);
            assert_eq!(result.reason, Why::DeniedNotAMember as i32, "{result:?}");
        }
        assert_answered_from_memory(&app, &owner, &org, &format!("after batch {batch}")).await;
    }
    // Made-up ids hold no rows, and at most one absent id is remembered per 16 rows of the limit.
    assert_eq!(gauge(&app, "roster_authz_index_entries").await, 3.0);
    let absent = gauge(&app, "roster_authz_index_absent_organizations").await;
    assert!(absent > 0.0 && absent <= 2_000.0 / 16.0, "{absent} absent ids remembered");
    app.stop().await;
}

async fn eviction_keeps_the_organizations_in_use_loaded(backend: Backend) {
    // Room for the organization in use (3 rows) and one of the others (16 rows each), not two:
    // each load of another organization evicts something.
    let app = spawn_with_metrics(backend, 30).await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "In use").await;
    app.create_workspace(&owner, &org, "prod").await;
    assert!(app.allowed(&owner.id, &org, "", "organization.update").await);
    let mut others = Vec::new();
    for i in 0..16 {
        let other_owner = User::new(&format!("other{i}"));
        let other = app.create_org(&other_owner, &format!("Other {i}")).await;
        for w in 0..14 {
            app.create_workspace(&other_owner, &other, &format!("ws{w}")).await;
        }
        others.push((other_owner, other));
    }
    for (i, (other_owner, other)) in others.iter().enumerate() {
        let (_, misses) = counters(&app).await;
        assert!(app.allowed(&other_owner.id, other, "", "organization.update").await);
        assert_eq!(counters(&app).await.1, misses + 1.0, "organization {i} is loaded");
        assert_answered_from_memory(&app, &owner, &org, &format!("after loading {i}")).await;
        assert!(gauge(&app, "roster_authz_index_entries").await <= 30.0);
    }
    app.stop().await;
}

/// Writes an organization and its Owner straight into the database, as if it had been created
/// with `id` (ids are made by the server, so only a test can choose one).
async fn forge_organization(app: &TestApp, id: &str, owner: &User) {
    use roster::domain::{DisplayName, Email, OrganizationId, Role, UserId};
    use roster::storage::entity::{member, organization};
    let id = OrganizationId::parse(id).unwrap();
    organization::Entity::insert(organization::ActiveModel {
        id: Set(id),
        display_name: Set(DisplayName::parse("Forged").unwrap()),
        invitation_ttl_secs: Set(3_600),
        create_time: Set(0),
        update_time: Set(0),
        revision: Set(0),
        max_grant_secs: Set(None),
    })
    .exec_without_returning(&app.db)
    .await
    .unwrap();
    member::Entity::insert(member::ActiveModel {
        organization_id: Set(id),
        user_id: Set(UserId::parse(&owner.id).unwrap()),
        email: Set(Email::parse(&owner.email).unwrap()),
        role: Set(Role::Owner),
        create_time: Set(0),
    })
    .exec_without_returning(&app.db)
    .await
    .unwrap();
}

/// Remembers `id` as absent, then forges it into existence behind the server's back; the
/// server still answers from its mark.
async fn remembered_then_forged(app: &TestApp, id: &str, owner: &User) {
    let denied = app.authorize(&owner.id, id, "", "organization.update").await;
    assert_eq!(denied.reason, Why::DeniedNotAMember as i32);
    forge_organization(app, id, owner).await;
    let (_, misses) = counters(app).await;
    let stale = app.authorize(&owner.id, id, "", "organization.update").await;
    assert_eq!(stale.reason, Why::DeniedNotAMember as i32, "the mark answers");
    assert_eq!(counters(app).await.1, misses, "from memory");
}

async fn an_organization_created_with_an_id_remembered_as_absent_is_found(backend: Backend) {
    let app = spawn_with_metrics(backend, 2_000).await;
    let owner = User::new("owner");

    // A change committed through this replica proves the organization exists.
    let id = OrganizationId::generate().to_string();
    remembered_then_forged(&app, &id, &owner).await;
    let ws = app.create_workspace(&owner, &id, "prod").await;
    assert!(app.allowed(&owner.id, &id, "", "organization.update").await);
    assert!(app.allowed(&owner.id, &id, &ws, "sources.create").await);

    if backend == Backend::Postgres {
        // Creating an organization on another replica notifies its id alone: that too forgets
        // the mark.
        let id = OrganizationId::generate().to_string();
        remembered_then_forged(&app, &id, &owner).await;
        app.db
            .execute_raw(Statement::from_sql_and_values(
                sea_orm::DbBackend::Postgres,
                "SELECT pg_notify($1, $2)",
                [roster::storage::feed::CHANNEL.into(), id.clone().into()],
            ))
            .await
            .unwrap();
        let started = std::time::Instant::now();
        while !app.allowed(&owner.id, &id, "", "organization.update").await {
            assert!(started.elapsed() < roster::storage::feed::MAX_SILENCE, "still absent");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    app.stop().await;
}

/// What loading the organization reads, in rows: itself, its members, workspaces and grants
/// (the database holds this one organization only).
async fn rows_of_the_organization(db: &DatabaseConnection) -> f64 {
    let mut rows = 0;
    for table in ["organizations", "members", "workspaces", "workspace_grants"] {
        let sql = format!("SELECT COUNT(*) AS n FROM {table}");
        let row = db.query_one_raw(Statement::from_string(db.get_database_backend(), sql));
        rows += row.await.unwrap().unwrap().try_get::<i64>("", "n").unwrap();
    }
    rows as f64
}

async fn after_many_patches_the_index_counts_what_a_reload_counts(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (url, pg_database) = fresh_database(backend, dir.path()).await;
    let spawn = || {
        spawn_app_with(backend, |c| {
            c.database_url = url.clone();
            c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        })
    };
    let app = spawn().await;
    let db = Database::connect(&url).await.unwrap();
    let metrics = app.metrics_addr.unwrap();
    assert!(wait_for_sample(metrics, "roster_authz_index_in_use", 1.0, IN_USE).await);
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let mut workspaces = Vec::new();
    for w in 0..3 {
        workspaces.push(app.create_workspace(&owner, &org, &format!("ws{w}")).await);
    }
    let members = [User::new("engineer"), User::new("analyst")];
    for member in &members {
        app.join(&owner, &org, member, R::Member, &[(&workspaces[0], A::Read)]).await;
    }
    assert!(app.allowed(&owner.id, &org, "", "organization.update").await);
    let entries = || async { gauge(&app, "roster_authz_index_entries").await };
    assert_eq!(entries().await, rows_of_the_organization(&db).await);

    let mut team = app.team.clone();
    let patches = gauge(&app, "roster_authz_index_patches_total").await;
    let accesses = [A::Read, A::Write, A::None, A::Write, A::Read];
    let roles = [R::Admin, R::Billing, R::Member];
    // Grants as they stand, to tell a change from a request that changes nothing.
    let mut granted: HashMap<(usize, String), A> =
        (0..members.len()).map(|m| ((m, workspaces[0].clone()), A::Read)).collect();
    let mut changes = 0;
    for step in 0..60usize {
        let m = step % 2;
        let member = &members[m];
        match step % 10 {
            // A role changes.
            7 => {
                team.update_member_role(owner.req(pb::UpdateMemberRoleRequest {
                    organization_id: org.clone(),
                    user_id: member.id.clone(),
                    role: roles[step / 10 % 3] as i32,
                    ..Default::default()
                }))
                .await
                .unwrap();
                changes += 1;
            }
            // A workspace comes and, with its grants, goes.
            8 => {
                workspaces.push(app.create_workspace(&owner, &org, &format!("new{step}")).await);
                changes += 1;
            }
            9 => {
                let gone = workspaces.remove(1);
                granted.retain(|(_, ws), _| *ws != gone);
                team.delete_workspace(owner.req(pb::DeleteWorkspaceRequest {
                    organization_id: org.clone(),
                    workspace_id: gone,
                    ..Default::default()
                }))
                .await
                .unwrap();
                changes += 1;
            }
            // Grants are added, flipped and removed.
            _ => {
                let ws = workspaces[step * 7 % workspaces.len()].clone();
                let access = accesses[step % accesses.len()];
                let before = granted.get(&(m, ws.clone())).copied().unwrap_or(A::None);
                if access == A::None {
                    granted.remove(&(m, ws.clone()));
                } else {
                    granted.insert((m, ws.clone()), access);
                }
                changes += u32::from(before != access);
                let request = pb::SetWorkspaceAccessRequest {
                    organization_id: org.clone(),
                    workspace_id: ws,
                    user_id: member.id.clone(),
                    access: access as i32,
                    ..Default::default()
                };
                team.set_workspace_access(owner.req(request)).await.unwrap();
            }
        }
        assert_eq!(entries().await, rows_of_the_organization(&db).await, "after step {step}");
    }
    // Every change was patched into the loaded index, none reloaded it.
    let patched = gauge(&app, "roster_authz_index_patches_total").await - patches;
    assert_eq!(patched, f64::from(changes));
    assert_eq!(counters(&app).await.1, 1.0, "only the first check loaded the organization");
    let held = entries().await;
    app.stop().await;

    // A fresh server loads the same organization from the database.
    let app = spawn().await;
    let metrics = app.metrics_addr.unwrap();
    assert!(wait_for_sample(metrics, "roster_authz_index_in_use", 1.0, IN_USE).await);
    assert!(app.allowed(&owner.id, &org, "", "organization.update").await);
    assert_eq!(gauge(&app, "roster_authz_index_entries").await, held, "a reload counts as many");
    app.stop().await;
    db.close().await.unwrap();
    crate::common::drop_database(pg_database).await;
}
