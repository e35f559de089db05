//! Envoy's ext_authz Check, with CheckRequests shaped as Envoy builds them (sent through
//! Roster's client of its own declaration of Envoy's API): the user from the verified JWT
//! payload only, the permission and scope from the route's context extensions or the request's
//! headers, Authorize's decision as an HTTP answer.

use std::collections::HashMap;

use prost_types::{Struct, Value, value::Kind};
use roster::pb::envoy::{
    self as envoy, AttributeContext, CheckRequest, Metadata, attribute_context,
    authorization_client::AuthorizationClient, check_response::HttpResponse,
};
use roster::pb::{OrganizationRole as R, WorkspaceAccess as A};

use crate::common::{Backend, User, spawn_app};
use crate::db_tests;

db_tests!(envoy_checks_are_decided_as_authorize_decides_them_and_answered_as_http);

fn string(text: &str) -> Value {
    Value { kind: Some(Kind::StringValue(text.to_owned())) }
}

/// A check of `extensions` for the request with `headers`, with a payload verified for `sub`.
fn check(sub: Option<&str>, extensions: &[(&str, &str)], headers: &[(&str, &str)]) -> CheckRequest {
    let metadata = sub.map(|sub| {
        let payload = Struct { fields: [("sub".to_owned(), string(sub))].into() };
        let namespace = Struct {
            fields: [("jwt_payload".to_owned(), Value { kind: Some(Kind::StructValue(payload)) })]
                .into(),
        };
        Metadata {
            filter_metadata: [("envoy.filters.http.jwt_authn".to_owned(), namespace)].into(),
        }
    });
    let own = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: "GET".into(),
                    path: "/sources".into(),
                    headers: own(headers),
                    ..Default::default()
                }),
            }),
            context_extensions: own(extensions),
            metadata_context: metadata,
        }),
    }
}

/// The HTTP status Envoy would answer with (200 when let through), and the headers it adds
/// or answers with, and those it removes.
fn outcome(response: envoy::CheckResponse) -> (u16, HashMap<String, String>, Vec<String>, String) {
    let pairs = |headers: Vec<envoy::HeaderValueOption>| {
        use envoy::header_value_option::HeaderAppendAction;
        // Every header Roster sets replaces one the client may have sent.
        for h in &headers {
            assert_eq!(h.append_action, HeaderAppendAction::OverwriteIfExistsOrAdd as i32);
        }
        headers.into_iter().filter_map(|h| h.header).map(|h| (h.key, h.value)).collect()
    };
    match response.http_response {
        Some(HttpResponse::OkResponse(ok)) => {
            assert_eq!(response.status.unwrap().code, 0);
            (200, pairs(ok.headers), ok.headers_to_remove, String::new())
        }
        Some(HttpResponse::DeniedResponse(denied)) => {
            let http = denied.status.unwrap().code as u16;
            // The gRPC code Envoy reads alongside: UNAUTHENTICATED, PERMISSION_DENIED or
            // INVALID_ARGUMENT.
            let expected = match http {
                401 => 16,
                403 => 7,
                400 => 3,
                other => panic!("unexpected HTTP status {other}"),
            };
            assert_eq!(response.status.unwrap().code, expected);
            (http, pairs(denied.headers), vec![], denied.body)
        }
        None => panic!("no HTTP answer"),
    }
}

async fn envoy_checks_are_decided_as_authorize_decides_them_and_answered_as_http(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let prod = app.create_workspace(&owner, &org, "production").await;
    let analyst = User::new("analyst");
    app.join(&owner, &org, &analyst, R::Member, &[(&prod, A::Read)]).await;
    let envoy = AuthorizationClient::new(app.channel());
    let ask = |request: CheckRequest| {
        let mut envoy = envoy.clone();
        async move { outcome(envoy.check(request).await.unwrap().into_inner()) }
    };
    let route = |permission: &'static str| {
        vec![
            ("permission", permission),
            ("organization_id", org.as_str()),
            ("workspace_id", prod.as_str()),
        ]
    };

    // Allowed: through, with the role, access and the checked scope set, whatever the client
    // sent under those names.
    let spoofed = [
        ("x-roster-role", "owner"),
        ("x-roster-workspace-access", "write"),
        ("x-organization-id", "01900000-0000-7000-8000-00000000abcd"),
        ("x-workspace-id", "01900000-0000-7000-8000-00000000abce"),
    ];
    let (status, added, _, _) = ask(check(Some("owner"), &route("sources.create"), &spoofed)).await;
    assert_eq!(status, 200);
    assert_eq!(added["x-roster-role"], "owner");
    assert_eq!(added["x-roster-workspace-access"], "write");
    assert_eq!(added["x-roster-decision-reason"], "DECISION_REASON_ALLOWED_BY_OWNER");
    assert_eq!(added["x-roster-user-id"], "owner");
    assert_eq!(added["x-organization-id"], org, "the route's scope wins over the header");
    assert_eq!(added["x-workspace-id"], prod);
    let (status, added, _, _) = ask(check(Some("analyst"), &route("sources.read"), &spoofed)).await;
    assert_eq!((status, added["x-roster-role"].as_str()), (200, "member"));
    let (status, added, _, _) = ask(check(Some("analyst"), &route("sources.read"), &[])).await;
    assert_eq!((status, added["x-roster-workspace-access"].as_str()), (200, "read"));

    // Denied: 403 with the reason.
    let (status, headers, _, _) = ask(check(Some("analyst"), &route("sources.create"), &[])).await;
    assert_eq!(status, 403);
    assert_eq!(headers["x-roster-decision-reason"], "DECISION_REASON_DENIED_READ_ONLY");
    let (status, headers, _, _) = ask(check(Some("stranger"), &route("sources.read"), &[])).await;
    assert_eq!(
        (status, headers["x-roster-decision-reason"].as_str()),
        (403, "DECISION_REASON_DENIED_NOT_A_MEMBER")
    );

    // The user comes only from the verified payload: a header naming one is no identity.
    let (status, _, _, _) =
        ask(check(None, &route("sources.read"), &[("x-user-id", "owner"), ("sub", "owner")])).await;
    assert_eq!(status, 401);
    let mut elsewhere = check(Some("owner"), &route("sources.read"), &[]);
    let metadata = elsewhere.attributes.as_mut().unwrap().metadata_context.as_mut().unwrap();
    let payload = metadata.filter_metadata.remove("envoy.filters.http.jwt_authn").unwrap();
    metadata.filter_metadata.insert("some.other.filter".to_owned(), payload);
    assert_eq!(ask(elsewhere).await.0, 401, "only the JWT filter's namespace counts");
    let mut in_route = route("sources.read");
    in_route.push(("sub", "owner"));
    assert_eq!(ask(check(None, &in_route, &[])).await.0, 401);

    // Organization and workspace from the headers when the route does not fix them; an
    // organization permission sets no workspace access, and removes any the client sent.
    // A stray workspace header does not spoil an organization check.
    let headers = [
        ("x-organization-id", org.as_str()),
        ("x-workspace-id", prod.as_str()),
        ("x-roster-workspace-access", "write"),
    ];
    let (status, added, removed, _) =
        ask(check(Some("analyst"), &[("permission", "members.read")], &headers)).await;
    assert_eq!((status, added["x-roster-role"].as_str()), (200, "member"));
    assert!(removed.contains(&"x-roster-workspace-access".to_owned()), "{removed:?}");
    assert!(removed.contains(&"x-workspace-id".to_owned()), "{removed:?}");
    let from_headers = [("x-organization-id", org.as_str()), ("x-workspace-id", prod.as_str())];
    let (status, _, _, _) =
        ask(check(Some("analyst"), &[("permission", "sources.read")], &from_headers)).await;
    assert_eq!(status, 200);

    // Malformed: 400, saying what is wrong.
    let (status, _, _, body) = ask(check(Some("owner"), &route("sources.teleport"), &[])).await;
    assert_eq!(status, 400);
    assert!(body.contains("permission"), "{body}");
    let (status, _, _, body) = ask(check(
        Some("owner"),
        &[("permission", "sources.read"), ("organization_id", "nope")],
        &[],
    ))
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("organization_id"), "{body}");
    app.stop().await;
}
