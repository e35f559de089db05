//! "Production environment control": an Owner, an Admin, a senior engineer with WRITE, and a
//! junior engineer and an analyst with READ on the production workspace, all joined through
//! emailed invitations.

use roster::pb::{OrganizationRole as R, WorkspaceAccess as A};

use crate::common::{Backend, User, spawn_app};
use crate::db_tests;

db_tests!(production_environment_control);

/// Who may do what on production, straight from the product's permission tables.
pub(crate) const EXPECTED: &[(&str, [bool; 5])] = &[
    // permission               owner  admin  senior junior analyst
    ("workspace.read", [true, false, true, true, true]),
    ("sources.read", [true, false, true, true, true]),
    ("executions.read", [true, false, true, true, true]),
    ("datasets.read", [true, false, true, true, true]),
    ("sources.create", [true, false, true, false, false]),
    ("sources.delete", [true, false, true, false, false]),
    ("destinations.update", [true, false, true, false, false]),
    ("schedules.create", [true, false, true, false, false]),
    ("datasets.configure", [true, false, true, false, false]),
    ("syncs.trigger", [true, false, true, false, false]),
];

pub(crate) const ORGANIZATION_EXPECTED: &[(&str, [bool; 5])] = &[
    ("organization.read", [true, true, true, true, true]),
    ("members.invite", [true, true, false, false, false]),
    ("workspace_access.manage", [true, true, false, false, false]),
    ("organization.delete", [true, false, false, false, false]),
    ("billing.read", [true, false, false, false, false]),
    ("audit.read", [true, true, false, false, false]),
];

async fn production_environment_control(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("olivia-owner");
    let admin = User::new("adam-admin");
    let senior = User::new("sam-senior");
    let junior = User::new("jo-junior");
    let analyst = User::new("ana-analyst");
    let org = app.create_org(&owner, "Acme Data").await;
    let production = app.create_workspace(&owner, &org, "production").await;
    let sandbox = app.create_workspace(&owner, &org, "sandbox").await;

    app.join(&owner, &org, &admin, R::Admin, &[]).await;
    // The Admin brings in the engineers and the analyst.
    app.join(&admin, &org, &senior, R::Member, &[(&production, A::Write), (&sandbox, A::Write)])
        .await;
    app.join(&admin, &org, &junior, R::Member, &[(&production, A::Read), (&sandbox, A::Write)])
        .await;
    app.join(&admin, &org, &analyst, R::Member, &[(&production, A::Read)]).await;

    let people = [&owner, &admin, &senior, &junior, &analyst];
    for (permission, expected) in EXPECTED {
        for (user, allowed) in people.iter().zip(expected) {
            assert_eq!(
                app.allowed(&user.id, &org, &production, permission).await,
                *allowed,
                "{} / {permission} on production",
                user.id
            );
        }
    }
    for (permission, expected) in ORGANIZATION_EXPECTED {
        for (user, allowed) in people.iter().zip(expected) {
            assert_eq!(
                app.allowed(&user.id, &org, "", permission).await,
                *allowed,
                "{} / {permission}",
                user.id
            );
        }
    }
    // The junior engineer experiments freely in the sandbox; the analyst cannot see it.
    assert!(app.allowed(&junior.id, &org, &sandbox, "syncs.trigger").await);
    assert!(!app.allowed(&analyst.id, &org, &sandbox, "workspace.read").await);

    // The junior engineer is promoted to WRITE on production by the Admin.
    app.team
        .clone()
        .set_workspace_access(admin.req(roster::pb::SetWorkspaceAccessRequest {
            organization_id: org.clone(),
            workspace_id: production.clone(),
            user_id: junior.id.clone(),
            access: A::Write as i32,
            ..Default::default()
        }))
        .await
        .unwrap();
    assert!(app.allowed(&junior.id, &org, &production, "syncs.trigger").await);
    assert_eq!(app.count("members").await, 5);
    app.stop().await;
}
