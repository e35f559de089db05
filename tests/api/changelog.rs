//! The change log: every change commits as its organization's next revision with what it did to
//! access, in one order of commits across organizations, and its reply's token names it.

use roster::domain::{ChangeToken, Delta, LogPosition, OrganizationId, Revision};
use roster::pb::{self, OrganizationRole as R, WorkspaceAccess as A};
use roster::storage::changelog;
use tonic::Code;

use crate::common::{Backend, TestApp, User, spawn_app};
use crate::db_tests;

db_tests!(
    each_change_is_logged_with_its_revision_and_what_it_did_to_access,
    concurrent_changes_in_many_organizations_take_every_position_once,
);

/// The organization's changes as the log holds them.
async fn logged(app: &TestApp, org: &str) -> Vec<roster::domain::ChangeRecord> {
    let org = OrganizationId::parse(org).unwrap();
    changelog::read_organization(&app.db, org, Revision(0)).await.unwrap()
}

fn revision_of(token: &str) -> u64 {
    ChangeToken::parse(token).expect("a change token").organization.expect("an organization").1.0
}

async fn each_change_is_logged_with_its_revision_and_what_it_did_to_access(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let engineer = User::new("engineer");
    let org = app.create_org(&owner, "Acme").await;
    let ws = app.create_workspace(&owner, &org, "prod").await;
    let member = app.join(&owner, &org, &engineer, R::Member, &[(&ws, A::Read)]).await;
    assert_eq!(member.user_id, engineer.id);
    let mut team = app.team.clone();
    let set = |access: A| {
        owner.req(pb::SetWorkspaceAccessRequest {
            organization_id: org.clone(),
            workspace_id: ws.clone(),
            user_id: engineer.id.clone(),
            access: access as i32,
            ..Default::default()
        })
    };
    let written = team.set_workspace_access(set(A::Write)).await.unwrap().into_inner();
    // The same again changes nothing: its token names the state it found (and, on PostgreSQL,
    // may also carry the position that state has been given since).
    let again = team.set_workspace_access(set(A::Write)).await.unwrap().into_inner();
    let named = |token: &str| ChangeToken::parse(token).unwrap().organization;
    assert_eq!(named(&again.consistency_token), named(&written.consistency_token));
    // A refused call writes nothing.
    let refused = team
        .create_workspace(engineer.req(pb::CreateWorkspaceRequest {
            organization_id: org.clone(),
            display_name: "mine".into(),
            ..Default::default()
        }))
        .await;
    assert_eq!(refused.unwrap_err().code(), Code::PermissionDenied);
    let removed = team
        .remove_member(owner.req(pb::RemoveMemberRequest {
            organization_id: org.clone(),
            user_id: engineer.id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();

    // On PostgreSQL changes get their positions just after their commits; any process may give
    // them, this one included.
    changelog::place(&app.db).await.unwrap();
    let log = logged(&app, &org).await;
    let revisions: Vec<u64> = log.iter().map(|c| c.revision.0).collect();
    // Created, a workspace, invited, accepted, WRITE, removed.
    assert_eq!(revisions, vec![1, 2, 3, 4, 5, 6], "{log:#?}");
    assert_eq!(revision_of(&written.consistency_token), 5);
    assert_eq!(revision_of(&removed.consistency_token), 6);
    let positions: Vec<LogPosition> = log.iter().map(|c| c.position.expect("placed")).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    // On SQLite the reply's token holds the position; on PostgreSQL the change had none yet.
    let expected = match backend {
        Backend::Sqlite => log[5].position,
        Backend::Postgres => None,
    };
    assert_eq!(
        ChangeToken::parse(&removed.consistency_token).unwrap().position,
        expected,
        "the token names the change's place in the log, if it had one"
    );
    let kinds = |c: &roster::domain::ChangeRecord| -> Vec<&'static str> {
        c.deltas
            .iter()
            .map(|d| match d {
                Delta::OrganizationCreated { .. } => "organization_created",
                Delta::MemberAdded { .. } => "member_added",
                Delta::WorkspaceCreated { .. } => "workspace_created",
                Delta::GrantChanged { .. } => "grant_changed",
                Delta::MemberRemoved { .. } => "member_removed",
                _ => "other",
            })
            .collect()
    };
    assert_eq!(kinds(&log[0]), ["organization_created", "member_added"]);
    assert_eq!(kinds(&log[1]), ["workspace_created"]);
    assert!(log[2].deltas.is_empty(), "an invitation changes no access");
    assert_eq!(kinds(&log[3]), ["member_added", "grant_changed"]);
    // Removing the member spells out the grant it took with it (rule 4).
    assert_eq!(
        log[5].deltas,
        vec![
            Delta::MemberRemoved {
                user: roster::domain::UserId::parse(&engineer.id).unwrap(),
                role: roster::domain::Role::Member
            },
            Delta::GrantChanged {
                user: roster::domain::UserId::parse(&engineer.id).unwrap(),
                workspace: roster::domain::WorkspaceId::parse(&ws).unwrap(),
                old: Some(roster::domain::Access::Write),
                new: None,
                expire_time: None,
            },
        ]
    );
    assert!(log.iter().all(|c| c.audit_event_id.is_some()), "each change names its audit event");
    app.stop().await;
}

async fn concurrent_changes_in_many_organizations_take_every_position_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let mut orgs = Vec::new();
    for i in 0..4 {
        orgs.push(app.create_org(&owner, &format!("Org {i}")).await);
    }
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..8 {
        let (team, owner, org) = (app.team.clone(), owner.clone(), orgs[writer % 4].clone());
        writers.spawn(async move {
            let mut team = team;
            for i in 0..15 {
                team.create_workspace(owner.req(pb::CreateWorkspaceRequest {
                    organization_id: org.clone(),
                    display_name: format!("w{writer}-{i}"),
                    ..Default::default()
                }))
                .await
                .expect("create a workspace");
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.unwrap();
    }
    changelog::place(&app.db).await.unwrap();
    let all = changelog::read_after(&app.db, LogPosition(0), None, 10_000).await.unwrap();
    let positions: Vec<u64> = all.iter().map(|c| c.position.expect("placed").0).collect();
    let expected: Vec<u64> = (1..=4 + 8 * 15).collect();
    assert_eq!(positions, expected, "every position once, in order");
    for org in &orgs {
        let revisions: Vec<u64> = logged(&app, org).await.iter().map(|c| c.revision.0).collect();
        assert_eq!(revisions, (1..=31).collect::<Vec<u64>>(), "{org}");
    }
    let (head, pruned) = changelog::head(&app.db).await.unwrap();
    assert_eq!((head, pruned), (LogPosition(4 + 8 * 15), LogPosition(0)));
    app.stop().await;
}

/// On PostgreSQL a change's position is given after it commits, so a change that began first
/// but commits last comes after the ones that committed before it: a reader at the end of the
/// log never has a gap filled in behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_change_takes_its_position_after_it_commits() {
    use sea_orm::{ConnectionTrait, Statement, TransactionTrait};
    let app = spawn_app(Backend::Postgres).await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let org_id = OrganizationId::parse(&org).unwrap();
    changelog::place(&app.db).await.unwrap();
    let (before, _) = changelog::head(&app.db).await.unwrap();
    let insert = |revision: i64| {
        Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            "INSERT INTO change_log (organization_id, revision, commit_time, actor_user_id, deltas)
             VALUES ($1, $2, 0, 'owner', $3)",
            [org_id.as_uuid().into(), revision.into(), changelog::encode_deltas(&[]).into()],
        )
    };
    let first = app.db.begin().await.unwrap();
    first.execute_raw(insert(1000)).await.unwrap();
    let second = app.db.begin().await.unwrap();
    second.execute_raw(insert(1001)).await.unwrap();
    second.commit().await.unwrap();
    changelog::place(&app.db).await.unwrap();
    let db = &app.db;
    let position = |revision: u64| async move {
        changelog::position_of_revision(db, org_id, Revision(revision)).await.unwrap()
    };
    assert_eq!(position(1001).await, Some(Some(LogPosition(before.0 + 1))));
    // Not committed: invisible to the placer, and it holds no position back.
    assert_eq!(position(1000).await, None);
    assert_eq!(changelog::head(&app.db).await.unwrap().0, LogPosition(before.0 + 1));
    first.commit().await.unwrap();
    changelog::place(&app.db).await.unwrap();
    assert_eq!(position(1000).await, Some(Some(LogPosition(before.0 + 2))));
    let after = changelog::read_after(&app.db, before, None, 10).await.unwrap();
    let order: Vec<u64> = after.iter().map(|c| c.revision.0).collect();
    assert_eq!(order, [1001, 1000], "in the order they committed");
    app.stop().await;
}
