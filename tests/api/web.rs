//! What a browser's page needs: gRPC-Web over HTTP/1.1 on the main port behind every guarding
//! layer, CORS for allowed origins only, request ids echoed and audited, and the caller's own
//! permissions to show or hide each button.

use roster::pb::{self, OrganizationRole as R, WorkspaceAccess as A};
use tonic::Code;
use tonic::codegen::http::Method;
use tonic_types::StatusExt as _;

use crate::common::web::{self, http1};
use crate::common::{
    Backend, TestApp, User, assert_code, sample, scrape, spawn_app_with, wait_for_sample,
};
use crate::db_tests;

db_tests!(
    a_grpc_web_call_over_http1_is_answered_with_its_messages_and_status,
    a_grpc_web_error_carries_its_bad_request_details_to_the_page,
    grpc_web_calls_pass_the_same_identity_limits_and_metrics_as_native_ones,
    only_allowed_origins_get_cors_answers_and_others_are_refused_before_anything_runs,
    a_request_id_is_echoed_and_kept_in_the_audit_event_of_the_change,
    list_my_permissions_tells_each_role_what_it_may_do_and_hides_the_rest,
    with_grpc_web_off_the_port_speaks_http2_only,
);

const PAGE: &str = "http://127.0.0.1:8080";

async fn app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |config| {
        config.cors_allowed_origins = vec![PAGE.to_owned()];
        config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await
}

fn dev_headers(user: &User) -> [(&str, &str); 2] {
    [("x-user-id", user.id.as_str()), ("x-user-email", user.email.as_str())]
}

/// How long a test waits for what the server does after answering.
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

const CREATE_ORG: &str = "/roster.v1.TeamService/CreateOrganization";

async fn a_grpc_web_call_over_http1_is_answered_with_its_messages_and_status(backend: Backend) {
    let app = app(backend).await;
    let owner = User::new("owner");
    let mut headers = dev_headers(&owner).to_vec();
    headers.push(("origin", PAGE));
    let request =
        pb::CreateOrganizationRequest { display_name: "Acme".into(), ..Default::default() };
    let reply = web::call(app.addr, CREATE_ORG, &headers, &request).await;
    assert_eq!(reply.http.status, 200, "{reply:?}");
    assert_eq!(reply.code(), Code::Ok, "{reply:?}");
    assert!(reply.http.header("content-type").unwrap().starts_with("application/grpc-web"));
    let created: pb::CreateOrganizationResponse = reply.message();
    let org = created.organization.unwrap();
    assert_eq!(org.display_name, "Acme");
    assert!(!created.consistency_token.is_empty());
    // The change is real: the native client sees it.
    let got = app
        .team
        .clone()
        .get_organization(owner.req(pb::GetOrganizationRequest { organization_id: org.id }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.organization.unwrap().display_name, "Acme");
    app.stop().await;
}

async fn a_grpc_web_error_carries_its_bad_request_details_to_the_page(backend: Backend) {
    let app = app(backend).await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let mut headers = dev_headers(&owner).to_vec();
    headers.push(("origin", PAGE));
    let before = app.snapshot().await;
    let reply = web::call(
        app.addr,
        "/roster.v1.TeamService/CreateWorkspace",
        &headers,
        &pb::CreateWorkspaceRequest {
            organization_id: org,
            display_name: "  ".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(reply.http.status, 200, "gRPC-Web answers errors in its own status: {reply:?}");
    let status = reply.status();
    assert_eq!(status.code(), Code::InvalidArgument, "{reply:?}");
    let fields: Vec<String> = status
        .get_details_bad_request()
        .expect("a BadRequest detail")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(fields, ["display_name"]);
    // The page may read the status and its details across origins.
    let exposed = reply.http.header("access-control-expose-headers").unwrap();
    for name in ["grpc-status", "grpc-message", "grpc-status-details-bin", "x-request-id"] {
        assert!(exposed.contains(name), "{name} exposed: {exposed}");
    }
    assert_eq!(reply.http.header("access-control-allow-origin"), Some(PAGE));
    assert_eq!(app.snapshot().await, before, "a refused call changes nothing");
    app.stop().await;
}

async fn grpc_web_calls_pass_the_same_identity_limits_and_metrics_as_native_ones(backend: Backend) {
    let app = app(backend).await;
    let request =
        pb::CreateOrganizationRequest { display_name: "Acme".into(), ..Default::default() };
    // No credential: refused as a native call is, and nothing is made.
    let reply = web::call(app.addr, CREATE_ORG, &[("origin", PAGE)], &request).await;
    assert_eq!(reply.code(), Code::Unauthenticated, "{reply:?}");
    assert_eq!(app.count("organizations").await, 0);
    // A body beyond the request limit: refused by the body guard.
    let owner = User::new("owner");
    let huge = pb::CreateOrganizationRequest {
        display_name: "x".repeat(128 * 1024),
        ..Default::default()
    };
    let reply = web::call(app.addr, CREATE_ORG, &dev_headers(&owner), &huge).await;
    assert_eq!(reply.code(), Code::ResourceExhausted, "{reply:?}");
    assert_eq!(app.count("organizations").await, 0);
    // Counted under the method, with its code, like any call.
    let ok = web::call(app.addr, CREATE_ORG, &dev_headers(&owner), &request).await;
    assert_eq!(ok.code(), Code::Ok);
    let series = |code: &str| {
        format!(
            "roster_rpc_calls_total{{method=\"/roster.v1.TeamService/CreateOrganization\",code=\"{code}\"}}"
        )
    };
    // Counted once its last byte is sent, which may be just after the page has read it.
    for code in ["OK", "UNAUTHENTICATED"] {
        let series = series(code);
        let counted = wait_for_sample(app.metrics_addr.unwrap(), &series, 1.0, PATIENCE).await;
        assert!(counted, "{series}");
    }
    let metrics = scrape(app.metrics_addr.unwrap()).await;
    assert_eq!(sample(&metrics, &series("OK")), Some(1.0), "{metrics}");
    assert_eq!(sample(&metrics, &series("UNAUTHENTICATED")), Some(1.0), "{metrics}");
    // Plain HTTP/1.1 that is not gRPC-Web is refused before identification.
    let plain =
        http1(app.addr, Method::POST, CREATE_ORG, &[("content-type", "application/grpc")], vec![])
            .await;
    assert_eq!(plain.status, 415, "{plain:?}");
    app.stop().await;
}

async fn only_allowed_origins_get_cors_answers_and_others_are_refused_before_anything_runs(
    backend: Backend,
) {
    let app = app(backend).await;
    let preflight = |origin: &'static str| {
        let addr = app.addr;
        async move {
            http1(
                addr,
                Method::OPTIONS,
                CREATE_ORG,
                &[
                    ("origin", origin),
                    ("access-control-request-method", "POST"),
                    (
                        "access-control-request-headers",
                        "content-type,x-grpc-web,authorization,x-request-id",
                    ),
                ],
                vec![],
            )
            .await
        }
    };
    let allowed = preflight(PAGE).await;
    assert_eq!(allowed.status, 204, "{allowed:?}");
    assert_eq!(allowed.header("access-control-allow-origin"), Some(PAGE));
    assert_eq!(allowed.header("access-control-allow-methods"), Some("POST"));
    let headers = allowed.header("access-control-allow-headers").unwrap();
    for name in ["content-type", "x-grpc-web", "authorization", "x-request-id"] {
        assert!(headers.contains(name), "{name} allowed: {headers}");
    }
    assert!(allowed.header("vary").is_some_and(|v| v.contains("origin")), "{allowed:?}");

    let stranger = preflight("http://evil.example").await;
    assert_eq!(stranger.status, 403, "{stranger:?}");
    assert_eq!(stranger.header("access-control-allow-origin"), None);

    // A stranger's call is refused even though its browser would only hide the answer: the
    // organization must not be made.
    let owner = User::new("owner");
    let mut headers = dev_headers(&owner).to_vec();
    headers.push(("origin", "http://evil.example"));
    let request =
        pb::CreateOrganizationRequest { display_name: "Acme".into(), ..Default::default() };
    let refused = web::call(app.addr, CREATE_ORG, &headers, &request).await;
    assert_eq!(refused.http.status, 403, "{refused:?}");
    assert_eq!(app.count("organizations").await, 0);
    // Without an Origin (not a browser) gRPC-Web works, and gets no CORS header.
    let tool = web::call(app.addr, CREATE_ORG, &dev_headers(&owner), &request).await;
    assert_eq!(tool.code(), Code::Ok);
    assert_eq!(tool.http.header("access-control-allow-origin"), None);
    // An OPTIONS that is no preflight, and HTTP/1.1 that is not gRPC-Web.
    let bare = http1(app.addr, Method::OPTIONS, CREATE_ORG, &[], vec![]).await;
    assert_eq!(bare.status, 400, "{bare:?}");
    let page = http1(app.addr, Method::GET, "/", &[], vec![]).await;
    assert_eq!(page.status, 415, "{page:?}");
    // Each refusal is counted by its reason, for an operator to see what pages run into.
    let metrics = scrape(app.metrics_addr.unwrap()).await;
    for (reason, count) in [
        ("origin_not_allowed", 1.0),
        ("preflight_refused", 1.0),
        ("not_a_preflight", 1.0),
        ("not_grpc", 1.0),
    ] {
        let series = format!("roster_http_refused_total{{reason=\"{reason}\"}}");
        assert_eq!(sample(&metrics, &series), Some(count), "{series}: {metrics}");
    }
    app.stop().await;

    // With no origin configured (the default), no page of any origin gets a CORS answer.
    let closed = spawn_app_with(backend, |_| {}).await;
    let reply = http1(
        closed.addr,
        Method::OPTIONS,
        CREATE_ORG,
        &[("origin", PAGE), ("access-control-request-method", "POST")],
        vec![],
    )
    .await;
    assert_eq!(reply.status, 403, "{reply:?}");
    assert_eq!(reply.header("access-control-allow-origin"), None);
    closed.stop().await;
}

async fn a_request_id_is_echoed_and_kept_in_the_audit_event_of_the_change(backend: Backend) {
    let app = app(backend).await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    // Native: the caller's id is echoed and audited.
    let mut request = owner.req(pb::CreateWorkspaceRequest {
        organization_id: org.clone(),
        display_name: "prod".into(),
        ..Default::default()
    });
    request.metadata_mut().insert("x-request-id", "page-7f3a/retry-0".parse().unwrap());
    let response = app.team.clone().create_workspace(request).await.unwrap();
    assert_eq!(response.metadata().get("x-request-id").unwrap(), "page-7f3a/retry-0");
    // gRPC-Web without an id: one is made up, echoed and audited.
    let reply = web::call(
        app.addr,
        "/roster.v1.TeamService/CreateWorkspace",
        &dev_headers(&owner),
        &pb::CreateWorkspaceRequest {
            organization_id: org.clone(),
            display_name: "dev".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(reply.code(), Code::Ok);
    let made_up = reply.http.header("x-request-id").expect("an id is made up").to_owned();
    assert!(uuid::Uuid::parse_str(&made_up).is_ok(), "{made_up}");
    // A failed call echoes its id too.
    let mut bad = owner.req(pb::GetOrganizationRequest { organization_id: "nope".into() });
    bad.metadata_mut().insert("x-request-id", "bad-1".parse().unwrap());
    let err = app.team.clone().get_organization(bad).await.unwrap_err();
    assert_eq!(err.metadata().get("x-request-id").unwrap(), "bad-1");

    let events = app
        .team
        .clone()
        .list_audit_events(
            owner.req(pb::ListAuditEventsRequest { organization_id: org, ..Default::default() }),
        )
        .await
        .unwrap()
        .into_inner()
        .events;
    let ids: Vec<String> = events
        .iter()
        .filter(|e| e.action == "workspace.created")
        .map(|e| {
            let details: serde_json::Value = serde_json::from_str(&e.details_json).unwrap();
            details["request_id"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    assert_eq!(ids, [made_up.as_str(), "page-7f3a/retry-0"], "newest first");
    app.stop().await;
}

async fn list_my_permissions_tells_each_role_what_it_may_do_and_hides_the_rest(backend: Backend) {
    let app = app(backend).await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let prod = app.create_workspace(&owner, &org, "production").await;
    let (admin, billing, member) = (User::new("admin"), User::new("billing"), User::new("member"));
    app.join(&owner, &org, &admin, R::Admin, &[]).await;
    app.join(&owner, &org, &billing, R::Billing, &[]).await;
    app.join(&owner, &org, &member, R::Member, &[(&prod, A::Read)]).await;

    let mine = |user: &User, workspace: &str| {
        let request = user.req(pb::ListMyPermissionsRequest {
            organization_id: org.clone(),
            workspace_id: workspace.to_owned(),
        });
        let mut team = app.team.clone();
        async move { team.list_my_permissions(request).await.map(|r| r.into_inner()) }
    };
    let organization = |user: &User| {
        let fut = mine(user, "");
        async move {
            let answer = fut.await.unwrap();
            assert_eq!(answer.workspace_access, A::Unspecified as i32);
            (answer.role, answer.permissions)
        }
    };
    let everything_but_billing: Vec<&str> = vec![
        "organization.read",
        "organization.update",
        "members.read",
        "members.invite",
        "members.remove",
        "members.update_role",
        "invitations.read",
        "workspaces.create",
        "workspaces.update",
        "workspaces.delete",
        "workspace_access.manage",
        "audit.read",
    ];
    let (role, held) = organization(&owner).await;
    assert_eq!(role, R::Owner as i32);
    for name in everything_but_billing.iter().chain(&[
        "organization.delete",
        "organization.transfer_ownership",
        "billing.read",
        "billing.manage",
    ]) {
        assert!(held.iter().any(|p| p == name), "owner holds {name}: {held:?}");
    }
    let (role, held) = organization(&admin).await;
    assert_eq!(role, R::Admin as i32);
    let mut expected = everything_but_billing.clone();
    expected.sort();
    let mut sorted = held.clone();
    sorted.sort();
    assert_eq!(sorted, expected, "admin");
    let (role, mut held) = organization(&billing).await;
    assert_eq!(role, R::Billing as i32);
    held.sort();
    assert_eq!(held, ["billing.manage", "billing.read", "members.read", "organization.read"]);
    let (role, mut held) = organization(&member).await;
    assert_eq!(role, R::Member as i32);
    held.sort();
    assert_eq!(held, ["members.read", "organization.read"]);

    // In the workspace: the Owner's implicit WRITE, the Member's READ, the Admin's nothing.
    let owner_ws = mine(&owner, &prod).await.unwrap();
    assert_eq!(owner_ws.workspace_access, A::Write as i32);
    assert!(owner_ws.permissions.iter().any(|p| p == "sources.create"), "{owner_ws:?}");
    let member_ws = mine(&member, &prod).await.unwrap();
    assert_eq!(member_ws.workspace_access, A::Read as i32);
    assert!(member_ws.permissions.iter().any(|p| p == "sources.read"), "{member_ws:?}");
    assert!(!member_ws.permissions.iter().any(|p| p == "sources.create"), "{member_ws:?}");
    assert!(member_ws.permissions.iter().all(|p| !p.starts_with("members.")), "{member_ws:?}");
    let admin_ws = mine(&admin, &prod).await.unwrap();
    assert_eq!((admin_ws.workspace_access, admin_ws.permissions.len()), (A::None as i32, 0));
    // Billing holds no grant there and may not see it: as GetWorkspace answers.
    assert_code(mine(&billing, &prod).await, Code::NotFound, None);

    // An outsider, another organization's workspace, a bad id.
    assert_code(mine(&User::new("outsider"), "").await, Code::NotFound, None);
    let other = app.create_org(&owner, "Other").await;
    let elsewhere = app.create_workspace(&owner, &other, "elsewhere").await;
    assert_code(mine(&owner, &elsewhere).await, Code::NotFound, None);
    assert_code(mine(&owner, "not-a-uuid").await, Code::InvalidArgument, Some("workspace_id"));
    app.stop().await;
}

async fn with_grpc_web_off_the_port_speaks_http2_only(backend: Backend) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let app = spawn_app_with(backend, |config| config.grpc_web = false).await;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let request = format!(
        "POST {CREATE_ORG} HTTP/1.1\r\nHost: {}\r\ncontent-type: application/grpc-web+proto\r\n\
         content-length: 0\r\n\r\n",
        app.addr
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ =
        tokio::time::timeout(std::time::Duration::from_secs(5), stream.read_to_end(&mut answer))
            .await
            .expect("the server closes the connection");
    assert!(!answer.starts_with(b"HTTP/1.1"), "{:?}", String::from_utf8_lossy(&answer));
    // Native gRPC is served as ever.
    app.create_org(&User::new("owner"), "Acme").await;
    app.stop().await;
}
