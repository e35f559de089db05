use roster::pb::{self, OrganizationRole as R, WorkspaceAccess as A};
use tonic::Code;

use crate::common::{Backend, TestApp, User, assert_code, set_access, spawn_app};
use crate::db_tests;

db_tests!(
    billing_and_member_users_see_only_workspaces_they_hold_a_grant_on,
    set_workspace_access_grants_changes_and_removes,
    deleting_a_workspace_deletes_its_grants,
    a_workspace_of_another_organization_is_never_reachable,
    owners_hold_write_on_workspaces_created_later,
    a_grant_to_an_owner_is_refused_and_listing_an_unseen_workspace_is_not_found,
);

async fn visible(app: &TestApp, user: &User, org: &str) -> Vec<String> {
    app.team
        .clone()
        .list_workspaces(user.req(pb::ListWorkspacesRequest {
            organization_id: org.to_owned(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .workspaces
        .into_iter()
        .map(|w| w.id)
        .collect()
}

async fn billing_and_member_users_see_only_workspaces_they_hold_a_grant_on(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let admin = User::new("admin");
    let billing = User::new("billing");
    let member = User::new("member");
    let org = app.create_org(&owner, "Acme").await;
    let prod = app.create_workspace(&owner, &org, "prod").await;
    let staging = app.create_workspace(&owner, &org, "staging").await;
    app.join(&owner, &org, &admin, R::Admin, &[]).await;
    app.join(&owner, &org, &billing, R::Billing, &[]).await;
    app.join(&owner, &org, &member, R::Member, &[(&staging, A::Read)]).await;

    assert_eq!(visible(&app, &owner, &org).await, vec![prod.clone(), staging.clone()]);
    assert_eq!(visible(&app, &admin, &org).await, vec![prod.clone(), staging.clone()]);
    assert!(visible(&app, &billing, &org).await.is_empty());
    assert_eq!(visible(&app, &member, &org).await, vec![staging.clone()]);

    let mut team = app.team.clone();
    let hidden = team
        .get_workspace(member.req(pb::GetWorkspaceRequest {
            organization_id: org.clone(),
            workspace_id: prod.clone(),
        }))
        .await;
    assert_code(hidden, Code::NotFound, None);
    let shown = team
        .get_workspace(member.req(pb::GetWorkspaceRequest {
            organization_id: org.clone(),
            workspace_id: staging.clone(),
        }))
        .await
        .unwrap();
    assert_eq!(shown.into_inner().workspace.unwrap().display_name, "staging");

    // Grants: managers see all, others only their own.
    team.set_workspace_access(set_access(&owner, &org, &prod, &admin, A::Write)).await.unwrap();
    // Lists grants as `user`, optionally for one user or one workspace.
    let grants = |user: &User, of_user: &str, workspace: &str| {
        let request = user.req(pb::ListWorkspaceAccessRequest {
            organization_id: org.clone(),
            user_id: of_user.to_owned(),
            workspace_id: workspace.to_owned(),
            ..Default::default()
        });
        let mut team = team.clone();
        async move { team.list_workspace_access(request).await.map(|r| r.into_inner().grants) }
    };
    assert_eq!(grants(&admin, "", "").await.unwrap().len(), 2);
    let own = grants(&member, "", "").await.unwrap();
    assert_eq!(own.len(), 1);
    assert_eq!(own[0].user_id, member.id);
    assert_code(grants(&member, &admin.id, "").await, Code::PermissionDenied, None);
    let by_workspace = grants(&owner, "", &prod).await.unwrap();
    assert_eq!(by_workspace.len(), 1);
    assert_eq!(by_workspace[0].user_id, admin.id);
    app.stop().await;
}

async fn set_workspace_access_grants_changes_and_removes(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let admin = User::new("admin");
    let analyst = User::new("analyst");
    let org = app.create_org(&owner, "Acme").await;
    let prod = app.create_workspace(&owner, &org, "prod").await;
    app.join(&owner, &org, &admin, R::Admin, &[]).await;
    app.join(&owner, &org, &analyst, R::Member, &[]).await;
    let mut team = app.team.clone();

    assert!(!app.allowed(&analyst.id, &org, &prod, "datasets.read").await);
    let grant = team
        .set_workspace_access(set_access(&admin, &org, &prod, &analyst, A::Read))
        .await
        .unwrap();
    assert_eq!(grant.into_inner().grant.unwrap().access, A::Read as i32);
    assert!(app.allowed(&analyst.id, &org, &prod, "datasets.read").await);
    assert!(!app.allowed(&analyst.id, &org, &prod, "datasets.configure").await);
    team.set_workspace_access(set_access(&admin, &org, &prod, &analyst, A::Write)).await.unwrap();
    assert!(app.allowed(&analyst.id, &org, &prod, "datasets.configure").await);
    let removed = team
        .set_workspace_access(set_access(&admin, &org, &prod, &analyst, A::None))
        .await
        .unwrap();
    assert_eq!(removed.into_inner().grant.unwrap().access, A::None as i32);
    let decision = app.authorize(&analyst.id, &org, &prod, "datasets.read").await;
    assert_eq!(decision.reason, pb::DecisionReason::DeniedNoWorkspaceAccess as i32);
    assert_eq!(decision.workspace_access, A::None as i32);

    let before = app.snapshot().await;
    let unspecified =
        team.set_workspace_access(set_access(&admin, &org, &prod, &analyst, A::Unspecified)).await;
    assert_code(unspecified, Code::InvalidArgument, Some("access"));
    let stranger = team
        .set_workspace_access(set_access(&admin, &org, &prod, &User::new("stranger"), A::Read))
        .await;
    assert_code(stranger, Code::NotFound, None);
    let by_member =
        team.set_workspace_access(set_access(&analyst, &org, &prod, &analyst, A::Write)).await;
    assert_code(by_member, Code::PermissionDenied, None);
    assert_eq!(app.snapshot().await, before);
    app.stop().await;
}

async fn deleting_a_workspace_deletes_its_grants(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let engineer = User::new("engineer");
    let org = app.create_org(&owner, "Acme").await;
    let prod = app.create_workspace(&owner, &org, "prod").await;
    let staging = app.create_workspace(&owner, &org, "staging").await;
    app.join(&owner, &org, &engineer, R::Member, &[(&prod, A::Write), (&staging, A::Write)]).await;
    let mut team = app.team.clone();

    let renamed = team
        .update_workspace(owner.req(pb::UpdateWorkspaceRequest {
            organization_id: org.clone(),
            workspace_id: prod.clone(),
            display_name: "production".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(renamed.into_inner().workspace.unwrap().display_name, "production");

    team.delete_workspace(owner.req(pb::DeleteWorkspaceRequest {
        organization_id: org.clone(),
        workspace_id: prod.clone(),
        ..Default::default()
    }))
    .await
    .unwrap();
    let decision = app.authorize(&engineer.id, &org, &prod, "sources.read").await;
    assert!(!decision.allowed);
    assert_eq!(decision.reason, pb::DecisionReason::DeniedWorkspaceNotFound as i32);
    assert!(app.allowed(&engineer.id, &org, &staging, "sources.delete").await);
    assert_eq!(app.count("workspace_grants").await, 1);
    let again = team
        .delete_workspace(owner.req(pb::DeleteWorkspaceRequest {
            organization_id: org.clone(),
            workspace_id: prod.clone(),
            ..Default::default()
        }))
        .await;
    assert_code(again, Code::NotFound, None);
    app.stop().await;
}

async fn a_workspace_of_another_organization_is_never_reachable(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = User::new("alice");
    let mallory = User::new("mallory");
    let acme = app.create_org(&alice, "Acme").await;
    let evil = app.create_org(&mallory, "Evil").await;
    let acme_prod = app.create_workspace(&alice, &acme, "prod").await;
    let before = app.snapshot().await;
    let mut team = app.team.clone();

    // Mallory owns Evil and names Acme's workspace through her own organization.
    let decision = app.authorize(&mallory.id, &evil, &acme_prod, "sources.read").await;
    assert!(!decision.allowed);
    assert_eq!(decision.reason, pb::DecisionReason::DeniedWorkspaceNotFound as i32);
    let get = team
        .get_workspace(mallory.req(pb::GetWorkspaceRequest {
            organization_id: evil.clone(),
            workspace_id: acme_prod.clone(),
        }))
        .await;
    assert_code(get, Code::NotFound, None);
    let grant = team
        .set_workspace_access(set_access(&mallory, &evil, &acme_prod, &mallory, A::Write))
        .await;
    assert_code(grant, Code::NotFound, None);
    let rename = team
        .update_workspace(mallory.req(pb::UpdateWorkspaceRequest {
            organization_id: evil.clone(),
            workspace_id: acme_prod.clone(),
            display_name: "pwned".into(),
            ..Default::default()
        }))
        .await;
    assert_code(rename, Code::NotFound, None);
    let delete = team
        .delete_workspace(mallory.req(pb::DeleteWorkspaceRequest {
            organization_id: evil.clone(),
            workspace_id: acme_prod.clone(),
            ..Default::default()
        }))
        .await;
    assert_code(delete, Code::NotFound, None);
    let invite = app
        .invite(&mallory, &evil, "mallory2@example.com", R::Member, &[(&acme_prod, A::Write)])
        .await;
    assert_code(invite, Code::InvalidArgument, Some("workspace_grants[0].workspace_id"));
    assert_eq!(app.snapshot().await, before);
    assert!(!app.allowed(&mallory.id, &acme, &acme_prod, "sources.read").await);
    app.stop().await;
}

async fn owners_hold_write_on_workspaces_created_later(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let admin = User::new("admin");
    let org = app.create_org(&owner, "Acme").await;
    app.join(&owner, &org, &admin, R::Admin, &[]).await;
    let later = app.create_workspace(&admin, &org, "created by the admin").await;
    let decision = app.authorize(&owner.id, &org, &later, "syncs.trigger").await;
    assert!(decision.allowed);
    assert_eq!(decision.reason, pb::DecisionReason::AllowedByOwner as i32);
    assert_eq!(decision.workspace_access, A::Write as i32);
    // The Admin who created it holds no access to its contents without a grant.
    let decision = app.authorize(&admin.id, &org, &later, "sources.read").await;
    assert_eq!(decision.reason, pb::DecisionReason::DeniedNoWorkspaceAccess as i32);
    app.stop().await;
}

async fn a_grant_to_an_owner_is_refused_and_listing_an_unseen_workspace_is_not_found(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let other_owner = User::new("other-owner");
    let member = User::new("member");
    let org = app.create_org(&owner, "Acme").await;
    let prod = app.create_workspace(&owner, &org, "prod").await;
    let staging = app.create_workspace(&owner, &org, "staging").await;
    app.join(&owner, &org, &other_owner, R::Owner, &[]).await;
    app.join(&owner, &org, &member, R::Member, &[(&prod, A::Read)]).await;
    let mut team = app.team.clone();
    let before = app.snapshot().await;
    // An Owner holds WRITE everywhere: a grant would say otherwise and change nothing.
    let granted =
        team.set_workspace_access(set_access(&owner, &org, &prod, &other_owner, A::Read)).await;
    assert_code(granted, Code::FailedPrecondition, None);
    assert_eq!(app.snapshot().await, before, "a refused grant writes nothing");
    // Removing one (there is none) still answers with no grant.
    let removed =
        team.set_workspace_access(set_access(&owner, &org, &prod, &other_owner, A::None)).await;
    assert_eq!(removed.unwrap().into_inner().grant.unwrap().access, A::None as i32);

    let list = |user: &User, ws: &str| {
        user.req(pb::ListWorkspaceAccessRequest {
            organization_id: org.clone(),
            workspace_id: ws.to_owned(),
            ..Default::default()
        })
    };
    let unknown = "0190c3b2-7d1e-7a3c-9f00-5b1d2c3e4f50";
    assert_code(team.list_workspace_access(list(&owner, unknown)).await, Code::NotFound, None);
    assert_code(team.list_workspace_access(list(&member, unknown)).await, Code::NotFound, None);
    // A Member sees only what they hold a grant on, as GetWorkspace does.
    assert_code(team.list_workspace_access(list(&member, &staging)).await, Code::NotFound, None);
    let own = team.list_workspace_access(list(&member, &prod)).await.unwrap().into_inner();
    assert_eq!(own.grants.len(), 1);
    let none_yet = team.list_workspace_access(list(&owner, &staging)).await.unwrap().into_inner();
    assert!(none_yet.grants.is_empty());
    app.stop().await;
}
