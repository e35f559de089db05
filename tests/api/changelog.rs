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
        })
    };
    let written = team.set_workspace_access(set(A::Write)).await.unwrap().into_inner();
    // The same again changes nothing: its token names the state it found.
    let again = team.set_workspace_access(set(A::Write)).await.unwrap().into_inner();
    assert_eq!(again.consistency_token, written.consistency_token);
    // A refused call writes nothing.
    let refused = team
        .create_workspace(engineer.req(pb::CreateWorkspaceRequest {
            organization_id: org.clone(),
            display_name: "mine".into(),
        }))
        .await;
    assert_eq!(refused.unwrap_err().code(), Code::PermissionDenied);
    let removed = team
        .remove_member(owner.req(pb::RemoveMemberRequest {
            organization_id: org.clone(),
            user_id: engineer.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();

    let log = logged(&app, &org).await;
    let revisions: Vec<u64> = log.iter().map(|c| c.revision.0).collect();
    // Created, a workspace, invited, accepted, WRITE, removed.
    assert_eq!(revisions, vec![1, 2, 3, 4, 5, 6], "{log:#?}");
    assert_eq!(revision_of(&written.consistency_token), 5);
    assert_eq!(revision_of(&removed.consistency_token), 6);
    let positions: Vec<LogPosition> = log.iter().map(|c| c.position).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    assert_eq!(
        ChangeToken::parse(&removed.consistency_token).unwrap().position,
        log[5].position,
        "the token names the change's place in the log"
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
                }))
                .await
                .expect("create a workspace");
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.unwrap();
    }
    let all = changelog::read_after(&app.db, LogPosition(0), None, 10_000).await.unwrap();
    let positions: Vec<u64> = all.iter().map(|c| c.position.0).collect();
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
