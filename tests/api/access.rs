use roster::domain::{Permission, Scope};
use roster::pb::{self, DecisionReason as Why, OrganizationRole as R, WorkspaceAccess as A};
use tonic::Code;

use crate::common::{
    Backend, User, assert_code, check, sample, scrape, spawn_app, spawn_app_with, wait_for_sample,
};
use crate::db_tests;

db_tests!(
    authorize_rejects_malformed_checks_naming_the_field,
    batch_authorize_answers_in_order_and_bounds_its_size,
    list_permissions_is_the_whole_catalogue,
    list_granted_permissions_follows_role_and_grant,
    list_accessible_workspaces_follows_grants_and_ownership,
    data_conditions_are_denials_not_errors,
    each_change_is_answered_at_once_from_the_index_without_reloading_it,
);

async fn authorize_rejects_malformed_checks_naming_the_field(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let ws = app.create_workspace(&owner, &org, "prod").await;
    let mut access = app.access.clone();
    let cases = [
        (check("", &org, "", "organization.read"), "user_id"),
        (check("owner", "", "", "organization.read"), "organization_id"),
        (check("owner", "nope", "", "organization.read"), "organization_id"),
        (check("owner", &org, "", "sources.launch"), "permission"),
        (check("owner", &org, "", ""), "permission"),
        (check("owner", &org, "", "sources.read"), "workspace_id"),
        (check("owner", &org, &ws, "billing.read"), "workspace_id"),
        (check("owner", &org, "not-a-uuid", "sources.read"), "workspace_id"),
        (check(&"u".repeat(256), &org, "", "organization.read"), "user_id"),
    ];
    for (request, field) in cases {
        assert_code(access.authorize(request).await, Code::InvalidArgument, Some(field));
    }
    app.stop().await;
}

async fn batch_authorize_answers_in_order_and_bounds_its_size(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let reader = User::new("reader");
    let org = app.create_org(&owner, "Acme").await;
    let ws = app.create_workspace(&owner, &org, "prod").await;
    app.join(&owner, &org, &reader, R::Member, &[(&ws, A::Read)]).await;
    let other = app.create_org(&reader, "Reader's own").await;
    let mut access = app.access.clone();
    // Checks on two organizations, one of them read from the database, answered in order.
    let fully_consistent = pb::Consistency {
        requirement: pb::ConsistencyRequirement::FullyConsistent as i32,
        at_least_as_fresh: String::new(),
    };
    let checks = vec![
        check("reader", &org, &ws, "sources.read"),
        check("reader", &other, "", "billing.read"),
        pb::AuthorizeRequest {
            consistency: Some(fully_consistent),
            ..check("reader", &org, &ws, "sources.create")
        },
        check("owner", &org, &ws, "sources.create"),
        check("reader", &org, "", "billing.read"),
        check("owner", &other, "", "organization.read"),
        check("stranger", &org, "", "organization.read"),
    ];
    let results = access
        .batch_authorize(pb::BatchAuthorizeRequest { consistency: None, checks })
        .await
        .unwrap()
        .into_inner()
        .results;
    let reasons: Vec<i32> = results.iter().map(|r| r.reason).collect();
    assert_eq!(
        reasons,
        vec![
            Why::AllowedByWorkspaceAccess as i32,
            Why::AllowedByRole as i32,
            Why::DeniedReadOnly as i32,
            Why::AllowedByOwner as i32,
            Why::DeniedByRole as i32,
            Why::DeniedNotAMember as i32,
            Why::DeniedNotAMember as i32,
        ]
    );
    assert_eq!(
        results.iter().map(|r| r.allowed).collect::<Vec<_>>(),
        vec![true, true, false, true, false, false, false]
    );

    let full = vec![check("reader", &org, &ws, "sources.read"); 1000];
    let answered = access
        .batch_authorize(pb::BatchAuthorizeRequest { consistency: None, checks: full })
        .await
        .unwrap();
    assert_eq!(answered.into_inner().results.len(), 1000);
    let too_many = vec![check("reader", &org, &ws, "sources.read"); 1001];
    assert_code(
        access
            .batch_authorize(pb::BatchAuthorizeRequest { consistency: None, checks: too_many })
            .await,
        Code::InvalidArgument,
        Some("checks"),
    );
    assert_code(
        access
            .batch_authorize(pb::BatchAuthorizeRequest { consistency: None, checks: vec![] })
            .await,
        Code::InvalidArgument,
        Some("checks"),
    );
    let one_bad =
        vec![check("reader", &org, &ws, "sources.read"), check("reader", &org, "", "sources.read")];
    assert_code(
        access
            .batch_authorize(pb::BatchAuthorizeRequest { consistency: None, checks: one_bad })
            .await,
        Code::InvalidArgument,
        Some("checks[1].workspace_id"),
    );
    app.stop().await;
}

async fn list_permissions_is_the_whole_catalogue(backend: Backend) {
    let app = spawn_app(backend).await;
    let permissions = app
        .access
        .clone()
        .list_permissions(pb::ListPermissionsRequest {})
        .await
        .unwrap()
        .into_inner()
        .permissions;
    // The whole catalogue, in its order, each with its scope.
    let listed: Vec<_> = permissions.iter().map(|p| (p.name.as_str(), p.scope)).collect();
    let catalogue: Vec<_> = Permission::ALL
        .iter()
        .map(|p| {
            let scope = match p.scope() {
                Scope::Organization => pb::PermissionScope::Organization,
                Scope::Workspace => pb::PermissionScope::Workspace,
            };
            (p.name(), scope as i32)
        })
        .collect();
    assert_eq!(listed, catalogue);
    let find = |name: &str| {
        permissions.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("{name}"))
    };
    assert_eq!(find("billing.manage").scope, pb::PermissionScope::Organization as i32);
    assert_eq!(find("syncs.trigger").scope, pb::PermissionScope::Workspace as i32);
    assert!(permissions.iter().all(|p| !p.description.is_empty()));
    app.stop().await;
}

async fn list_granted_permissions_follows_role_and_grant(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let billing = User::new("billing");
    let org = app.create_org(&owner, "Acme").await;
    let ws = app.create_workspace(&owner, &org, "prod").await;
    app.join(&owner, &org, &billing, R::Billing, &[(&ws, A::Read)]).await;
    let mut access = app.access.clone();
    let granted = |user: &str, ws: &str| pb::ListGrantedPermissionsRequest {
        consistency: None,
        user_id: user.to_owned(),
        organization_id: org.clone(),
        workspace_id: ws.to_owned(),
    };
    let org_level = access
        .list_granted_permissions(granted("billing", ""))
        .await
        .unwrap()
        .into_inner()
        .permissions;
    assert_eq!(
        org_level,
        vec!["organization.read", "members.read", "billing.read", "billing.manage"]
    );
    let ws_level = access
        .list_granted_permissions(granted("billing", &ws))
        .await
        .unwrap()
        .into_inner()
        .permissions;
    assert_eq!(
        ws_level,
        vec![
            "workspace.read",
            "sources.read",
            "destinations.read",
            "schedules.read",
            "datasets.read",
            "executions.read"
        ]
    );
    let owner_ws = access
        .list_granted_permissions(granted("owner", &ws))
        .await
        .unwrap()
        .into_inner()
        .permissions;
    // An Owner holds every workspace permission of the catalogue.
    let workspace_permissions: Vec<_> = Permission::ALL
        .iter()
        .filter(|p| p.scope() == Scope::Workspace)
        .map(|p| p.name())
        .collect();
    assert_eq!(owner_ws, workspace_permissions);
    let stranger = access
        .list_granted_permissions(granted("stranger", ""))
        .await
        .unwrap()
        .into_inner()
        .permissions;
    assert!(stranger.is_empty());
    app.stop().await;
}

async fn list_accessible_workspaces_follows_grants_and_ownership(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let dev = User::new("dev");
    let org = app.create_org(&owner, "Acme").await;
    let mut all = Vec::new();
    for name in ["a", "b", "c", "d"] {
        all.push(app.create_workspace(&owner, &org, name).await);
    }
    app.join(
        &owner,
        &org,
        &dev,
        R::Member,
        &[(&all[0], A::Read), (&all[2], A::Write), (&all[3], A::Write)],
    )
    .await;
    let mut access = app.access.clone();
    let list = |user: &str, permission: &str, page_size: i32, page_token: String| {
        pb::ListAccessibleWorkspacesRequest {
            consistency: None,
            user_id: user.to_owned(),
            organization_id: org.clone(),
            permission: permission.to_owned(),
            page_size,
            page_token,
        }
    };
    let ids = |r: pb::ListAccessibleWorkspacesResponse| {
        r.workspaces.into_iter().map(|w| w.id).collect::<Vec<_>>()
    };
    let readable = access
        .list_accessible_workspaces(list("dev", "sources.read", 0, String::new()))
        .await
        .unwrap();
    assert_eq!(ids(readable.into_inner()), vec![all[0].clone(), all[2].clone(), all[3].clone()]);
    let first = access
        .list_accessible_workspaces(list("dev", "sources.create", 1, String::new()))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.next_page_token.is_empty());
    let token = first.next_page_token.clone();
    let mut writable = ids(first);
    let second = access
        .list_accessible_workspaces(list("dev", "sources.create", 1, token))
        .await
        .unwrap()
        .into_inner();
    writable.extend(ids(second));
    assert_eq!(writable, vec![all[2].clone(), all[3].clone()]);
    let owner_all = access
        .list_accessible_workspaces(list("owner", "syncs.trigger", 0, String::new()))
        .await
        .unwrap();
    assert_eq!(ids(owner_all.into_inner()), all);
    let stranger = access
        .list_accessible_workspaces(list("stranger", "sources.read", 0, String::new()))
        .await
        .unwrap();
    assert!(stranger.into_inner().workspaces.is_empty());
    let org_permission =
        access.list_accessible_workspaces(list("dev", "billing.read", 0, String::new())).await;
    assert_code(org_permission, Code::InvalidArgument, Some("permission"));
    app.stop().await;
}

async fn data_conditions_are_denials_not_errors(backend: Backend) {
    let app = spawn_app(backend).await;
    let missing_org = "01900000-0000-7000-8000-000000000000";
    let missing_ws = "01900000-0000-7000-8000-000000000001";
    let decision = app.authorize("nobody", missing_org, missing_ws, "sources.read").await;
    assert!(!decision.allowed);
    assert_eq!(decision.reason, Why::DeniedNotAMember as i32);
    assert_eq!(decision.role, R::Unspecified as i32);
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let decision = app.authorize("owner", &org, missing_ws, "sources.read").await;
    assert_eq!(decision.reason, Why::DeniedWorkspaceNotFound as i32);
    let decision = app.authorize("owner", &org, "", "billing.manage").await;
    assert_eq!(decision.reason, Why::AllowedByRole as i32);
    assert_eq!(decision.workspace_access, A::Unspecified as i32);
    app.stop().await;
}

/// Rule 4 on the replica that made each change, for every kind of change; and the index that
/// answers is the one loaded by the first check, changed in place (one miss in all).
async fn each_change_is_answered_at_once_from_the_index_without_reloading_it(backend: Backend) {
    let app =
        spawn_app_with(backend, |c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let owner = User::new("owner");
    let heir = User::new("heir");
    let engineer = User::new("engineer");
    let org = app.create_org(&owner, "Acme").await;
    let prod = app.create_workspace(&owner, &org, "prod").await;
    let reason = |r: pb::AuthorizeResponse| Why::try_from(r.reason).unwrap();
    let metrics = app.metrics_addr.unwrap();
    // On PostgreSQL the index is used once the invalidation feed is subscribed.
    let in_use = std::time::Duration::from_secs(10);
    wait_for_sample(metrics, "roster_authz_index_in_use", 1.0, in_use).await;
    // The first check loads the organization.
    assert!(app.allowed(&owner.id, &org, &prod, "sources.read").await);
    let mut team = app.team.clone();

    let staging = app.create_workspace(&owner, &org, "staging").await;
    assert_eq!(
        reason(app.authorize(&owner.id, &org, &staging, "syncs.trigger").await),
        Why::AllowedByOwner
    );

    app.join(&owner, &org, &engineer, R::Member, &[(&prod, A::Read)]).await;
    let on_prod = app.authorize(&engineer.id, &org, &prod, "sources.read").await;
    assert_eq!(reason(on_prod), Why::AllowedByWorkspaceAccess);
    let on_prod = app.authorize(&engineer.id, &org, &prod, "sources.create").await;
    assert_eq!(reason(on_prod), Why::DeniedReadOnly);
    let on_staging = app.authorize(&engineer.id, &org, &staging, "sources.read").await;
    assert_eq!(reason(on_staging), Why::DeniedNoWorkspaceAccess);

    let grant = |ws: &str, access: A| {
        owner.req(pb::SetWorkspaceAccessRequest {
            organization_id: org.clone(),
            workspace_id: ws.to_owned(),
            user_id: engineer.id.clone(),
            access: access as i32,
            ..Default::default()
        })
    };
    team.set_workspace_access(grant(&staging, A::Write)).await.unwrap();
    assert!(app.allowed(&engineer.id, &org, &staging, "sources.create").await);
    team.set_workspace_access(grant(&prod, A::None)).await.unwrap();
    let on_prod = app.authorize(&engineer.id, &org, &prod, "sources.read").await;
    assert_eq!(reason(on_prod), Why::DeniedNoWorkspaceAccess);

    team.update_member_role(owner.req(pb::UpdateMemberRoleRequest {
        organization_id: org.clone(),
        user_id: engineer.id.clone(),
        role: R::Admin as i32,
        ..Default::default()
    }))
    .await
    .unwrap();
    assert!(app.allowed(&engineer.id, &org, "", "members.invite").await);

    app.join(&owner, &org, &heir, R::Member, &[]).await;
    team.transfer_ownership(owner.req(pb::TransferOwnershipRequest {
        organization_id: org.clone(),
        new_owner_user_id: heir.id.clone(),
        ..Default::default()
    }))
    .await
    .unwrap();
    assert!(app.allowed(&heir.id, &org, "", "organization.delete").await);
    let demoted = app.authorize(&owner.id, &org, "", "organization.delete").await;
    assert_eq!(reason(demoted), Why::DeniedByRole);

    team.delete_workspace(heir.req(pb::DeleteWorkspaceRequest {
        organization_id: org.clone(),
        workspace_id: staging.clone(),
        ..Default::default()
    }))
    .await
    .unwrap();
    let gone = app.authorize(&engineer.id, &org, &staging, "sources.read").await;
    assert_eq!(reason(gone), Why::DeniedWorkspaceNotFound);

    team.remove_member(heir.req(pb::RemoveMemberRequest {
        organization_id: org.clone(),
        user_id: engineer.id.clone(),
        ..Default::default()
    }))
    .await
    .unwrap();
    let removed = app.authorize(&engineer.id, &org, "", "organization.read").await;
    assert_eq!(reason(removed), Why::DeniedNotAMember);
    team.leave_organization(
        owner.req(pb::LeaveOrganizationRequest {
            organization_id: org.clone(),
            ..Default::default()
        }),
    )
    .await
    .unwrap();
    let left = app.authorize(&owner.id, &org, &prod, "sources.read").await;
    assert_eq!(reason(left), Why::DeniedNotAMember);

    // On PostgreSQL each change's notification also comes back to this replica, which must know
    // it as its own rather than drop the index: give them time to arrive, then check again.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(app.allowed(&heir.id, &org, &prod, "sources.delete").await);
    let text = scrape(metrics).await;
    let misses = sample(&text, "roster_authz_index_misses_total").unwrap();
    let hits = sample(&text, "roster_authz_index_hits_total").unwrap();
    assert_eq!(misses, 1.0, "only the first check loads the organization: {text}");
    assert_eq!(hits, 13.0, "{text}");
    // Ten changes reached the index: a workspace created and one deleted, two acceptances, two
    // grants, a role, a transfer, a removal and a departure.
    assert_eq!(sample(&text, "roster_authz_index_patches_total"), Some(10.0), "{text}");
    assert_eq!(sample(&text, "roster_authz_index_in_use"), Some(1.0), "{text}");
    app.stop().await;
}
