//! The AuthZEN 1.0 Authorization API on `--authzen-listen`, over real HTTP: decisions as
//! Authorize makes them, boxcars with their defaults and semantics, the three searches paged
//! under concurrent changes, the metadata, and the specification's error cases. Every request
//! the tests send as valid, and every answer, is checked against the shapes the specification
//! gives (the schemas below, written from its text).

use std::sync::atomic::Ordering;

use serde_json::{Value, json};
use tonic::codegen::http::Method;

use crate::auth::{JwtSetup, SECRET, claims, sign_hs};
use crate::common::web::{Reply, http1};
use crate::common::{Backend, TestApp, User, sample, scrape, set_access, spawn_app_with};
use crate::db_tests;
use crate::scenario::{EXPECTED, ORGANIZATION_EXPECTED};
use roster::pb::{self, OrganizationRole as R, WorkspaceAccess as A};

db_tests!(
    evaluations_are_decided_as_authorize_decides_them_for_every_role,
    boxcars_take_top_level_defaults_and_honour_each_semantic,
    each_malformed_request_is_refused_with_the_status_the_specification_gives,
    searches_page_through_every_result_exactly_once_while_the_team_changes,
    a_sparse_subject_search_of_a_large_organization_ends_its_pages_early,
    action_search_lists_what_the_user_holds_and_metadata_names_every_endpoint,
    only_service_credentials_may_ask,
);

/// The shapes of the specification (AuthZEN Authorization API 1.0, sections 5 to 9 and 10.2),
/// as JSON Schema: what a request and an answer of each endpoint must hold.
mod schema {
    use serde_json::{Value, json};

    fn entity(id_required: bool) -> Value {
        let required = if id_required { json!(["type", "id"]) } else { json!(["type"]) };
        json!({
            "type": "object",
            "required": required,
            "properties": {
                "type": {"type": "string"},
                "id": {"type": "string"},
                "properties": {"type": "object"},
            },
        })
    }

    fn action() -> Value {
        json!({
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string"}, "properties": {"type": "object"}},
        })
    }

    fn page_request() -> Value {
        json!({
            "type": "object",
            "properties": {
                "token": {"type": "string"},
                "limit": {"type": "integer", "minimum": 0},
                "properties": {"type": "object"},
            },
        })
    }

    pub fn evaluation_request() -> Value {
        json!({
            "type": "object",
            "required": ["subject", "action", "resource"],
            "properties": {
                "subject": entity(true),
                "action": action(),
                "resource": entity(true),
                "context": {"type": "object"},
            },
        })
    }

    pub fn decision() -> Value {
        json!({
            "type": "object",
            "required": ["decision"],
            "properties": {"decision": {"type": "boolean"}, "context": {"type": "object"}},
        })
    }

    pub fn evaluations_request() -> Value {
        json!({
            "type": "object",
            "properties": {
                "subject": entity(true),
                "action": action(),
                "resource": entity(true),
                "context": {"type": "object"},
                "options": {
                    "type": "object",
                    "properties": {
                        "evaluations_semantic": {
                            "enum": ["execute_all", "deny_on_first_deny", "permit_on_first_permit"],
                        },
                    },
                },
                "evaluations": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "subject": entity(true),
                            "action": action(),
                            "resource": entity(true),
                            "context": {"type": "object"},
                        },
                    },
                },
            },
        })
    }

    pub fn evaluations_response() -> Value {
        json!({
            "type": "object",
            "required": ["evaluations"],
            "properties": {"evaluations": {"type": "array", "items": decision()}},
        })
    }

    pub fn subject_search() -> Value {
        json!({
            "type": "object",
            "required": ["subject", "action", "resource"],
            "properties": {
                "subject": entity(false),
                "action": action(),
                "resource": entity(true),
                "context": {"type": "object"},
                "page": page_request(),
            },
        })
    }

    pub fn resource_search() -> Value {
        json!({
            "type": "object",
            "required": ["subject", "action", "resource"],
            "properties": {
                "subject": entity(true),
                "action": action(),
                "resource": entity(false),
                "context": {"type": "object"},
                "page": page_request(),
            },
        })
    }

    pub fn action_search() -> Value {
        json!({
            "type": "object",
            "required": ["subject", "resource"],
            "properties": {
                "subject": entity(true),
                "resource": entity(true),
                "context": {"type": "object"},
                "page": page_request(),
            },
        })
    }

    /// A search answer holding `results` of the given shape.
    pub fn search_response(result: Value) -> Value {
        json!({
            "type": "object",
            "required": ["results"],
            "properties": {
                "page": {
                    "type": "object",
                    "required": ["next_token"],
                    "properties": {
                        "next_token": {"type": "string"},
                        "count": {"type": "integer", "minimum": 0},
                        "total": {"type": "integer", "minimum": 0},
                        "properties": {"type": "object"},
                    },
                },
                "context": {"type": "object"},
                "results": {"type": "array", "items": result},
            },
        })
    }

    pub fn entity_result() -> Value {
        entity(true)
    }

    pub fn action_result() -> Value {
        action()
    }

    pub fn metadata() -> Value {
        let url = json!({"type": "string", "pattern": "^https?://"});
        json!({
            "type": "object",
            "required": ["policy_decision_point", "access_evaluation_endpoint"],
            "properties": {
                "policy_decision_point": url,
                "access_evaluation_endpoint": url,
                "access_evaluations_endpoint": url,
                "search_subject_endpoint": url,
                "search_resource_endpoint": url,
                "search_action_endpoint": url,
                "capabilities": {"type": "array", "items": {"type": "string"}},
            },
        })
    }

    /// Checks `value` against the subset of JSON Schema the schemas above use; the first
    /// problem, named by its path.
    pub fn check(schema: &Value, value: &Value, at: &str) -> Result<(), String> {
        if let Some(kind) = schema.get("type").and_then(Value::as_str) {
            let fits = match kind {
                "object" => value.is_object(),
                "array" => value.is_array(),
                "string" => value.is_string(),
                "boolean" => value.is_boolean(),
                "integer" => value.is_u64() || value.is_i64(),
                other => return Err(format!("the schema uses the unknown type {other}")),
            };
            if !fits {
                return Err(format!("{at} must be of type {kind}: {value}"));
            }
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
            && !allowed.contains(value)
        {
            return Err(format!("{at} must be one of {allowed:?}: {value}"));
        }
        if let Some(minimum) = schema.get("minimum").and_then(Value::as_i64)
            && value.as_i64().is_some_and(|n| n < minimum)
        {
            return Err(format!("{at} must be at least {minimum}"));
        }
        if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
            // The one pattern used: a URL's scheme.
            assert_eq!(pattern, "^https?://");
            let text = value.as_str().unwrap_or_default();
            if !(text.starts_with("http://") || text.starts_with("https://")) {
                return Err(format!("{at} must be an http(s) URL: {value}"));
            }
        }
        if let Some(required) = schema.get("required").and_then(Value::as_array) {
            for key in required.iter().filter_map(Value::as_str) {
                if value.get(key).is_none() {
                    return Err(format!("{at}.{key} is required"));
                }
            }
        }
        if let (Some(properties), Some(object)) =
            (schema.get("properties").and_then(Value::as_object), value.as_object())
        {
            for (key, inner) in properties {
                if let Some(member) = object.get(key) {
                    check(inner, member, &format!("{at}.{key}"))?;
                }
            }
        }
        if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
            for (i, item) in array.iter().enumerate() {
                check(items, item, &format!("{at}[{i}]"))?;
            }
        }
        Ok(())
    }

    #[test]
    fn the_checker_refuses_what_the_schemas_forbid() {
        let request = evaluation_request();
        let good = json!({
            "subject": {"type": "user", "id": "a"},
            "action": {"name": "read"},
            "resource": {"type": "doc", "id": "1"},
        });
        assert_eq!(check(&request, &good, "$"), Ok(()));
        let mut no_id = good.clone();
        no_id["subject"].as_object_mut().unwrap().remove("id");
        assert_eq!(check(&request, &no_id, "$"), Err("$.subject.id is required".to_owned()));
        let mut wrong = good.clone();
        wrong["action"]["name"] = json!(3);
        assert!(check(&request, &wrong, "$").is_err());
        assert!(check(&decision(), &json!({"decision": "yes"}), "$").is_err());
        assert!(check(&search_response(entity_result()), &json!({"page": {}}), "$").is_err());
        let bad_semantic = json!({"options": {"evaluations_semantic": "all"}});
        assert!(check(&evaluations_request(), &bad_semantic, "$").is_err());
    }
}

async fn app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |config| {
        config.authzen_listen = Some("127.0.0.1:0".parse().unwrap());
        config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        // Small enough for a test to cross: a boxcar's limit, and a body's time to arrive.
        config.max_batch_request_bytes = 256 * 1024;
        config.request_body_timeout_ms = 300;
    })
    .await
}

/// Posts `body` to `path` with `headers`, as it is.
async fn post_raw(app: &TestApp, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Reply {
    http1(app.authzen_addr.expect("the AuthZEN listener"), Method::POST, path, headers, body).await
}

/// A valid request: checked against `request_schema` first, sent as JSON, answered 200 with a
/// body that fits `response_schema`.
async fn ask(
    app: &TestApp,
    path: &str,
    request_schema: Value,
    response_schema: Value,
    body: Value,
) -> Value {
    schema::check(&request_schema, &body, "request").unwrap_or_else(|e| panic!("{e}"));
    let reply = post_raw(
        app,
        path,
        &[("content-type", "application/json")],
        serde_json::to_vec(&body).unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200, "{path} {body}: {}", String::from_utf8_lossy(&reply.body));
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let answer: Value = serde_json::from_slice(&reply.body).expect("a JSON answer");
    schema::check(&response_schema, &answer, "answer").unwrap_or_else(|e| panic!("{e}: {answer}"));
    answer
}

async fn evaluate(app: &TestApp, body: Value) -> Value {
    ask(app, "/access/v1/evaluation", schema::evaluation_request(), schema::decision(), body).await
}

async fn evaluations(app: &TestApp, body: Value) -> Vec<Value> {
    let answer = ask(
        app,
        "/access/v1/evaluations",
        schema::evaluations_request(),
        schema::evaluations_response(),
        body,
    )
    .await;
    answer["evaluations"].as_array().unwrap().clone()
}

fn user(id: &str) -> Value {
    json!({"type": "user", "id": id})
}

fn workspace(org: &str, id: &str) -> Value {
    json!({"type": "workspace", "id": id, "properties": {"organization_id": org}})
}

fn organization(id: &str) -> Value {
    json!({"type": "organization", "id": id})
}

fn action(name: &str) -> Value {
    json!({"name": name})
}

/// The production-environment team: owner, admin, senior (WRITE), junior and analyst (READ).
struct Team {
    org: String,
    production: String,
    people: [User; 5],
}

async fn team(app: &TestApp) -> Team {
    let people = ["owner", "admin", "senior", "junior", "analyst"].map(User::new);
    let [owner, admin, senior, junior, analyst] = &people;
    let org = app.create_org(owner, "Acme Data").await;
    let production = app.create_workspace(owner, &org, "production").await;
    app.join(owner, &org, admin, R::Admin, &[]).await;
    app.join(admin, &org, senior, R::Member, &[(&production, A::Write)]).await;
    app.join(admin, &org, junior, R::Member, &[(&production, A::Read)]).await;
    app.join(admin, &org, analyst, R::Member, &[(&production, A::Read)]).await;
    Team { org, production, people }
}

async fn evaluations_are_decided_as_authorize_decides_them_for_every_role(backend: Backend) {
    let app = app(backend).await;
    let Team { org, production, people } = team(&app).await;
    let tables = EXPECTED
        .iter()
        .map(|(p, e)| (p, e, workspace(&org, &production), production.as_str()))
        .chain(ORGANIZATION_EXPECTED.iter().map(|(p, e)| (p, e, organization(&org), "")));
    let mut asked = 0;
    for (permission, expected, resource, ws) in tables {
        for (person, allowed) in people.iter().zip(expected) {
            let answer = evaluate(
                &app,
                json!({"subject": user(&person.id), "action": action(permission), "resource": resource}),
            )
            .await;
            assert_eq!(answer["decision"], json!(allowed), "{} / {permission}", person.id);
            // The same decision Authorize makes, with its reason and the role.
            let authorized = app.authorize(&person.id, &org, ws, permission).await;
            let reason = pb::DecisionReason::try_from(authorized.reason).unwrap().as_str_name();
            assert_eq!(answer["context"]["reason"], json!(reason));
            asked += 1;
        }
    }
    assert_eq!(asked, 5 * (EXPECTED.len() + ORGANIZATION_EXPECTED.len()));
    let admin_view = evaluate(
        &app,
        json!({"subject": user("admin"), "action": action("members.invite"), "resource": organization(&org)}),
    )
    .await;
    assert_eq!(admin_view["context"]["role"], json!("admin"));
    let junior_write = json!({
        "subject": user("junior"),
        "action": action("sources.create"),
        "resource": workspace(&org, &production),
    });
    let denied = evaluate(&app, junior_write.clone()).await;
    assert_eq!(denied["context"]["reason"], json!("DECISION_REASON_DENIED_READ_ONLY"));
    assert_eq!(denied["context"]["workspace_access"], json!("read"));

    // Counted in Authorize's decision metric: AuthZEN's own evaluations, none other meanwhile.
    let series =
        "roster_authorize_decisions_total{permission=\"sources.create\",decision=\"denied\"}";
    let before = sample(&scrape(app.metrics_addr.unwrap()).await, series).unwrap_or(0.0);
    for _ in 0..3 {
        evaluate(&app, junior_write.clone()).await;
    }
    let after = sample(&scrape(app.metrics_addr.unwrap()).await, series).unwrap_or(0.0);
    assert_eq!(after - before, 3.0);

    // A consistency token in the context: the answer includes the change it names.
    let owner = &people[0];
    let raised = app
        .team
        .clone()
        .set_workspace_access(set_access(owner, &org, &production, &people[3], A::Write))
        .await
        .unwrap()
        .into_inner();
    let mut fresh = junior_write.clone();
    fresh["context"] = json!({"consistency_token": raised.consistency_token});
    assert_eq!(evaluate(&app, fresh).await["decision"], json!(true));

    // A token must be one of a change of the resource's organization.
    let other_org = app.create_org(owner, "Other").await;
    let elsewhere = app
        .team
        .clone()
        .create_workspace(owner.req(pb::CreateWorkspaceRequest {
            organization_id: other_org.clone(),
            display_name: "elsewhere".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .consistency_token;
    for (token, words) in [
        (elsewhere.as_str(), "another organization"),
        ("not-a-token", "consistency_token returned by a TeamService change"),
    ] {
        let mut body = junior_write.clone();
        body["context"] = json!({"consistency_token": token});
        let (status, message) = refused(
            &app,
            "/access/v1/evaluation",
            Some("application/json"),
            &serde_json::to_vec(&body).unwrap(),
        )
        .await;
        assert_eq!(status, 400, "{message}");
        assert!(message.starts_with("context.consistency_token"), "{message}");
        assert!(message.contains(words), "{message}");
    }

    // The listener's own metric, by endpoint and status.
    let metrics = scrape(app.metrics_addr.unwrap()).await;
    let count = |status: u16| {
        let series =
            format!("roster_authzen_requests_total{{endpoint=\"evaluation\",status=\"{status}\"}}");
        sample(&metrics, &series)
    };
    assert_eq!(count(200), Some((asked + 6) as f64));
    assert_eq!(count(400), Some(2.0));

    // The listener's connections, apart from the gRPC port's: one that says nothing is open
    // and pending until it is closed.
    let metrics = app.metrics_addr.unwrap();
    let pending = |port: &'static str| async move {
        let text = scrape(metrics).await;
        let series = format!("roster_{port}connections_pending");
        (sample(&text, &series).unwrap_or(-1.0), text)
    };
    let until_pending = |port: &'static str, expected: f64| async move {
        let started = std::time::Instant::now();
        loop {
            let (now, text) = pending(port).await;
            if now == expected {
                return text;
            }
            assert!(started.elapsed().as_secs() < 10, "{port}pending {now}, not {expected}");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    let (grpc_before, _) = pending("").await;
    let (before, _) = pending("authzen_").await;
    let silent = tokio::net::TcpStream::connect(app.authzen_addr.unwrap()).await.unwrap();
    let text = until_pending("authzen_", before + 1.0).await;
    assert_eq!(sample(&text, "roster_connections_pending"), Some(grpc_before), "{text}");
    let open = sample(&text, "roster_authzen_connections_open").unwrap();
    assert!(open >= before + 1.0, "{text}");
    assert!(sample(&text, "roster_authzen_connections_max").is_some_and(|max| max > 0.0));
    drop(silent);
    until_pending("authzen_", before).await;
    app.stop().await;
}

async fn boxcars_take_top_level_defaults_and_honour_each_semantic(backend: Backend) {
    let app = app(backend).await;
    let Team { org, production, .. } = team(&app).await;
    let ws = workspace(&org, &production);
    // For the junior: read allowed, create denied, read allowed, a malformed one, delete denied.
    let items = json!([
        {"action": action("sources.read")},
        {"action": action("sources.create")},
        {"action": action("datasets.read")},
        {"action": action("sources.launch")},
        {"action": action("sources.delete")},
    ]);
    let boxcar = |semantic: Option<&str>, items: &Value| {
        let mut body = json!({"subject": user("junior"), "resource": ws, "evaluations": items});
        if let Some(semantic) = semantic {
            body["options"] = json!({"evaluations_semantic": semantic});
        }
        body
    };
    let decisions = |results: &[Value]| -> Vec<bool> {
        results.iter().map(|r| r["decision"].as_bool().unwrap()).collect()
    };
    for semantic in [None, Some("execute_all")] {
        let results = evaluations(&app, boxcar(semantic, &items)).await;
        assert_eq!(decisions(&results), [true, false, true, false, false], "{semantic:?}");
        // The malformed one fails alone, with its error in its context.
        assert_eq!(results[3]["context"]["error"]["status"], json!(400));
        let message = results[3]["context"]["error"]["message"].as_str().unwrap();
        assert!(message.starts_with("evaluations[3].action.name"), "{message}");
    }
    let results = evaluations(&app, boxcar(Some("deny_on_first_deny"), &items)).await;
    assert_eq!(decisions(&results), [true, false]);
    let results = evaluations(&app, boxcar(Some("permit_on_first_permit"), &items)).await;
    assert_eq!(decisions(&results), [true]);
    let denials_first = json!([
        {"action": action("sources.create")},
        {"action": action("sources.launch")},
        {"action": action("datasets.read")},
        {"action": action("sources.read")},
    ]);
    let results = evaluations(&app, boxcar(Some("permit_on_first_permit"), &denials_first)).await;
    assert_eq!(decisions(&results), [false, false, true]);
    // A failure is a denial for deny_on_first_deny.
    let failure_first =
        json!([{"action": action("sources.launch")}, {"action": action("sources.read")}]);
    let results = evaluations(&app, boxcar(Some("deny_on_first_deny"), &failure_first)).await;
    assert_eq!(decisions(&results), [false]);

    // Each member of an evaluation overrides the top level's: other subjects, other resources.
    let results = evaluations(
        &app,
        json!({
            "subject": user("junior"),
            "action": action("organization.delete"),
            "resource": organization(&org),
            "evaluations": [
                {},
                {"subject": user("owner")},
                {"action": action("sources.read"), "resource": ws},
                {"subject": user("outsider"), "action": action("sources.read"), "resource": ws},
            ],
        }),
    )
    .await;
    assert_eq!(decisions(&results), [false, true, true, false]);
    assert_eq!(results[3]["context"]["reason"], json!("DECISION_REASON_DENIED_NOT_A_MEMBER"));

    // Without evaluations, the request is one evaluation, answered as one.
    let single = ask(
        &app,
        "/access/v1/evaluations",
        schema::evaluations_request(),
        schema::decision(),
        json!({"subject": user("senior"), "action": action("sources.create"), "resource": ws, "evaluations": []}),
    )
    .await;
    assert_eq!(single["decision"], json!(true));
    app.stop().await;
}

/// The status and message of a refused request.
async fn refused(
    app: &TestApp,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> (u16, String) {
    let headers: Vec<(&str, &str)> =
        content_type.map(|c| ("content-type", c)).into_iter().collect();
    let reply = post_raw(app, path, &headers, body.to_vec()).await;
    let message = String::from_utf8_lossy(&reply.body).into_owned();
    assert_ne!(reply.status, 200, "{path} {}: {message}", String::from_utf8_lossy(body));
    assert!(reply.header("content-type").unwrap().starts_with("text/plain"), "{message}");
    (reply.status, message)
}

async fn each_malformed_request_is_refused_with_the_status_the_specification_gives(
    backend: Backend,
) {
    let app = app(backend).await;
    let Team { org, production, .. } = team(&app).await;
    let before = app.snapshot().await;
    let good = json!({
        "subject": user("junior"),
        "action": action("sources.read"),
        "resource": workspace(&org, &production),
    });
    let json_type = Some("application/json");
    let send = |body: &Value| serde_json::to_vec(body).unwrap();

    // Each required member left out, at each level: 400, naming it.
    for path in [
        "subject",
        "action",
        "resource",
        "subject.type",
        "subject.id",
        "action.name",
        "resource.type",
        "resource.id",
        "resource.properties.organization_id",
    ] {
        let body = at_path(&good, path, None);
        assert!(
            schema::check(&schema::evaluation_request(), &body, "$").is_err()
                || path.contains("properties")
        );
        refused_naming(&app, "/access/v1/evaluation", &body, path).await;
    }
    // Wrong types: 400, naming the member.
    for (path, value) in [
        ("subject", json!("junior")),
        ("subject.id", json!(42)),
        ("subject.type", json!(["user"])),
        ("subject.properties", json!("x")),
        ("action.name", json!(true)),
        ("resource.id", json!(null)),
        ("context", json!([1])),
    ] {
        let body = at_path(&good, path, Some(value));
        assert!(schema::check(&schema::evaluation_request(), &body, "$").is_err(), "{path}");
        refused_naming(&app, "/access/v1/evaluation", &body, path).await;
    }
    // Well shaped, but nothing Roster can check: 400 for a single evaluation.
    for (path, value) in [
        ("subject.type", json!("group")),
        ("resource.type", json!("document")),
        ("resource.id", json!("not-a-uuid")),
        ("action.name", json!("organization.delete")),
    ] {
        refused_naming(&app, "/access/v1/evaluation", &at_path(&good, path, Some(value)), path)
            .await;
    }
    // Content types, bodies that are not JSON objects.
    let good_bytes = send(&good);
    for content_type in [None, Some("text/plain"), Some("application/x-www-form-urlencoded")] {
        let (status, _) = refused(&app, "/access/v1/evaluation", content_type, &good_bytes).await;
        assert_eq!(status, 415, "{content_type:?}");
    }
    let reply = post_raw(
        &app,
        "/access/v1/evaluation",
        &[("content-type", "Application/JSON; charset=utf-8")],
        good_bytes.clone(),
    )
    .await;
    assert_eq!(reply.status, 200, "a JSON content type with a parameter is JSON");
    for (body, words) in [
        (&b""[..], "empty"),
        (b"   ", "empty"),
        (b"{\"subject\": ", "not valid JSON"),
        (b"{'subject': 1}", "not valid JSON"),
        (b"[]", "JSON object"),
        (b"\"text\"", "JSON object"),
        (b"null", "JSON object"),
        (br#"{"subject": {"type": "user", "id": "owner"}, "subject": {"type": "user", "id": "x"}}"#, "appears twice"),
        (br#"{"resource": {"type": "organization", "id": "a", "id": "b"}}"#, "appears twice"),
    ] {
        let (status, message) = refused(&app, "/access/v1/evaluation", json_type, body).await;
        assert_eq!(status, 400, "{body:?}");
        assert!(message.contains(words), "{body:?}: {message}");
    }
    // Boxcars: a missing member with no default, an item that is not an object, an unknown
    // semantic, too many evaluations.
    for (body, words) in [
        (
            json!({"evaluations": [{"action": action("sources.read")}]}),
            "evaluations[0].subject is required",
        ),
        (
            json!({"subject": user("junior"), "resource": organization(&org), "evaluations": [7]}),
            "evaluations[0] must be an object",
        ),
        (json!({"evaluations": {}}), "evaluations must be an array"),
        (
            json!({"evaluations": [good], "options": {"evaluations_semantic": "all"}}),
            "options.evaluations_semantic",
        ),
        (json!({"evaluations": vec![good.clone(); 1001]}), "at most 1000"),
        (
            json!({"evaluations": [{"context": [1], "subject": user("junior"), "action": action("sources.read"), "resource": organization(&org)}]}),
            "evaluations[0].context must be an object",
        ),
        // A default of the wrong shape is named once, at the top level.
        (json!({"subject": "junior", "evaluations": [good]}), "subject must be an object"),
        (
            json!({"subject": {"type": "user"}, "evaluations": [{"action": action("sources.read"), "resource": organization(&org)}]}),
            "subject.id is required",
        ),
        (json!({"evaluations": [good], "options": 3}), "options must be an object"),
        (
            json!({"evaluations": [good], "options": {"evaluations_semantic": 1}}),
            "options.evaluations_semantic must be a string",
        ),
    ] {
        let (status, message) =
            refused(&app, "/access/v1/evaluations", json_type, &send(&body)).await;
        assert_eq!(status, 400, "{words}: {message}");
        assert!(message.contains(words), "{words}: {message}");
    }
    // Searches: missing members and bad pages.
    let resource_search = json!({
        "subject": user("junior"),
        "action": action("sources.read"),
        "resource": {"type": "workspace", "properties": {"organization_id": org}},
    });
    for (mutate, words) in [
        (json!({"subject": null}), "subject"),
        (json!({"action": null}), "action"),
        (json!({"resource": {"type": "workspace"}}), "resource.properties.organization_id"),
        (json!({"page": {"limit": -1}}), "page.limit"),
        (json!({"page": {"limit": "3"}}), "page.limit"),
        (json!({"page": {"token": "forged"}}), "page.token"),
        (json!({"page": "first"}), "page must be an object"),
        (json!({"page": {"token": 5}}), "page.token must be a string"),
        (json!({"context": {"consistency_token": "nope"}}), "context.consistency_token"),
        (json!({"context": "fresh"}), "context must be an object"),
    ] {
        let body = with_members(&resource_search, &mutate);
        refused_naming(&app, "/access/v1/search/resource", &body, words).await;
    }
    // The subject search: a subject type and no id, a resource with one.
    let subject_search = json!({
        "subject": {"type": "user"},
        "action": action("sources.read"),
        "resource": workspace(&org, &production),
    });
    for (mutate, words) in [
        (json!({"subject": {}}), "subject.type is required"),
        (json!({"subject": {"type": "group"}}), "subject.type must be \"user\""),
        (json!({"action": null}), "action is required"),
        (
            json!({"resource": {"type": "workspace", "properties": {"organization_id": org}}}),
            "resource.id is required",
        ),
        (
            json!({"resource": {"type": "workspace", "id": production}}),
            "resource.properties.organization_id",
        ),
        (
            json!({"resource": {"type": "organization", "id": org}}),
            "action.name is a workspace permission",
        ),
    ] {
        let body = with_members(&subject_search, &mutate);
        refused_naming(&app, "/access/v1/search/subject", &body, words).await;
    }
    // The action search: a subject and a resource, both with ids.
    for (body, words) in [
        (json!({"resource": organization(&org)}), "subject is required"),
        (json!({"subject": user("junior")}), "resource is required"),
        (
            json!({"subject": user("junior"), "resource": {"type": "document", "id": "1"}}),
            "resource.type",
        ),
        (
            json!({"subject": user("junior"), "resource": {"type": "organization"}}),
            "resource.id is required",
        ),
    ] {
        refused_naming(&app, "/access/v1/search/action", &body, words).await;
    }
    // The method, the path, the body's size, its time to arrive; each answer echoes the id.
    let addr = app.authzen_addr.unwrap();
    let id = [("x-request-id", "req-1")];
    let reply = http1(addr, Method::GET, "/access/v1/evaluation", &id, vec![]).await;
    assert_eq!((reply.status, reply.header("allow")), (405, Some("POST")));
    assert_eq!(reply.header("x-request-id"), Some("req-1"));
    let reply = http1(addr, Method::POST, "/access/v2/evaluation", &id, good_bytes.clone()).await;
    assert_eq!((reply.status, reply.header("x-request-id")), (404, Some("req-1")));
    let huge = format!("{{\"context\": {{\"pad\": \"{}\"}}}}", "x".repeat(70 * 1024));
    let (status, _) = refused(&app, "/access/v1/evaluation", json_type, huge.as_bytes()).await;
    assert_eq!(status, 413);
    // A boxcar may be larger, up to its own limit (256 KiB here).
    let (status, _) = refused(&app, "/access/v1/evaluations", json_type, huge.as_bytes()).await;
    assert_eq!(status, 400, "a 70 KiB boxcar is read, and found wanting");
    let huger = format!("{{\"context\": {{\"pad\": \"{}\"}}}}", "x".repeat(300 * 1024));
    let (status, _) = refused(&app, "/access/v1/evaluations", json_type, huger.as_bytes()).await;
    assert_eq!(status, 413);
    assert_eq!(slow_body_status(addr).await, 408);

    assert_eq!(app.snapshot().await, before, "a refused request changes nothing");
    app.stop().await;
}

/// `body` with the member at the dotted `path` set to `value`, or removed.
fn at_path(body: &Value, path: &str, value: Option<Value>) -> Value {
    let mut body = body.clone();
    let (parent, key) = match path.rsplit_once('.') {
        Some((parent, key)) => (parent.split('.').fold(&mut body, |v, k| &mut v[k]), key),
        None => (&mut body, path),
    };
    match value {
        Some(value) => parent[key] = value,
        None => {
            parent.as_object_mut().unwrap().remove(key);
        }
    }
    body
}

/// `body` with each top-level member of `changes` set, or removed where it is null.
fn with_members(body: &Value, changes: &Value) -> Value {
    let mut body = body.clone();
    for (key, value) in changes.as_object().unwrap() {
        if value.is_null() {
            body.as_object_mut().unwrap().remove(key);
        } else {
            body[key] = value.clone();
        }
    }
    body
}

/// Asserts that `body` sent to `path` is refused with 400 and a message starting with `words`
/// (the member at fault).
async fn refused_naming(app: &TestApp, path: &str, body: &Value, words: &str) {
    let (status, message) =
        refused(app, path, Some("application/json"), &serde_json::to_vec(body).unwrap()).await;
    assert_eq!(status, 400, "{path} {words}: {message}");
    assert!(message.starts_with(words), "{path} {words}: {message}");
}

/// The status of an evaluation whose body stops arriving half-way (the test server waits
/// 300 ms for a body).
async fn slow_body_status(addr: std::net::SocketAddr) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /access/v1/evaluation HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"subject\":"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0; 1024];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("answered before the test's own limit")
        .unwrap();
    let text = String::from_utf8_lossy(&answer[..read]);
    text.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0)
}

/// Every result of a search, page after page of `limit`, as (type, id) pairs. With `churn`,
/// a count of changes made meanwhile, the second page is asked only once it has moved, so that
/// the team changes while the pages are read however busy the machine is.
async fn every_page(
    app: &TestApp,
    path: &str,
    request_schema: Value,
    mut body: Value,
    limit: u64,
    churn: Option<&std::sync::atomic::AtomicUsize>,
) -> Vec<String> {
    let mut first = true;
    body["page"] = json!({"limit": limit});
    let mut seen = Vec::new();
    for _ in 0..1000 {
        let answer = ask(
            app,
            path,
            request_schema.clone(),
            schema::search_response(schema::entity_result()),
            body.clone(),
        )
        .await;
        let results = answer["results"].as_array().unwrap();
        assert!(results.len() as u64 <= limit, "{answer}");
        assert_eq!(answer["page"]["count"], json!(results.len()));
        seen.extend(results.iter().map(|r| r["id"].as_str().unwrap().to_owned()));
        let next = answer["page"]["next_token"].as_str().unwrap();
        if next.is_empty() {
            return seen;
        }
        // Later pages send the token alone, as the specification's example does: the limit
        // is the first page's. A pause lets the team change between pages.
        body["page"] = json!({"token": next});
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        if let Some(churn) = churn.filter(|_| first) {
            let (seen_then, started) = (churn.load(Ordering::Relaxed), std::time::Instant::now());
            while churn.load(Ordering::Relaxed) == seen_then {
                assert!(started.elapsed().as_secs() < 30, "the team stopped changing");
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
        first = false;
    }
    panic!("the search never ended");
}

async fn searches_page_through_every_result_exactly_once_while_the_team_changes(backend: Backend) {
    let app = app(backend).await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let analyst = User::new("analyst");
    app.join(&owner, &org, &analyst, R::Member, &[]).await;
    let mut stable = Vec::new();
    for i in 0..9 {
        let ws = app.create_workspace(&owner, &org, &format!("stable-{i}")).await;
        app.team
            .clone()
            .set_workspace_access(set_access(&owner, &org, &ws, &analyst, A::Read))
            .await
            .unwrap();
        stable.push(ws);
    }
    let hub = stable[0].clone();
    let mut readers = vec![owner.id.clone(), analyst.id.clone()];
    for i in 0..7 {
        let reader = User::new(&format!("reader-{i}"));
        app.join(&owner, &org, &reader, R::Member, &[(&hub, A::Read)]).await;
        readers.push(reader.id);
    }
    let bystanders: Vec<User> = (0..4).map(|i| User::new(&format!("bystander-{i}"))).collect();
    for bystander in &bystanders {
        app.join(&owner, &org, bystander, R::Member, &[]).await;
    }
    // Readers who leave while the searches page: their ids sort before and after the others.
    let leavers: Vec<User> =
        ["a-leaver", "b-leaver", "y-leaver", "z-leaver"].map(User::new).to_vec();
    for leaver in &leavers {
        app.join(&owner, &org, leaver, R::Member, &[(&hub, A::Read)]).await;
    }

    // Meanwhile: workspaces the analyst can read come and go, bystanders gain and lose access
    // to the hub, and the leavers are removed one by one.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rounds_done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let churn = {
        let (team, org, owner, analyst, hub, stop) = (
            app.team.clone(),
            org.clone(),
            owner.clone(),
            analyst.clone(),
            hub.clone(),
            stop.clone(),
        );
        let (bystanders, leavers, rounds_done) =
            (bystanders.clone(), leavers.clone(), rounds_done.clone());
        tokio::spawn(async move {
            let mut made = Vec::new();
            let mut round = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && round < 2000 {
                let mut team = team.clone();
                let ws = crate::common::try_create_workspace_with(
                    &mut team,
                    &owner,
                    &org,
                    &format!("churn-{round}"),
                )
                .await
                .unwrap();
                team.set_workspace_access(set_access(&owner, &org, &ws, &analyst, A::Read))
                    .await
                    .unwrap();
                // Ten stay; the rest go again at once, so the list stays finite to page through.
                if round % 2 == 1 || round >= 20 {
                    let request = pb::DeleteWorkspaceRequest {
                        organization_id: org.clone(),
                        workspace_id: ws.clone(),
                        ..Default::default()
                    };
                    team.delete_workspace(owner.req(request)).await.unwrap();
                } else {
                    made.push(ws);
                }
                let bystander = &bystanders[round % bystanders.len()];
                let access = if round % 4 < 2 { A::Write } else { A::None };
                team.set_workspace_access(set_access(&owner, &org, &hub, bystander, access))
                    .await
                    .unwrap();
                if round % 3 == 2
                    && let Some(leaver) = leavers.get(round / 3)
                {
                    let request = pb::RemoveMemberRequest {
                        organization_id: org.clone(),
                        user_id: leaver.id.clone(),
                        ..Default::default()
                    };
                    team.remove_member(owner.req(request)).await.unwrap();
                }
                round += 1;
                rounds_done.store(round, std::sync::atomic::Ordering::Relaxed);
            }
            (made, round)
        })
    };
    let mut rounds = 0;
    for limit in [1, 2, 4] {
        let churned_before = rounds_done.load(std::sync::atomic::Ordering::Relaxed);
        let found = every_page(
            &app,
            "/access/v1/search/resource",
            schema::resource_search(),
            json!({
                "subject": user(&analyst.id),
                "action": action("sources.read"),
                "resource": {"type": "workspace", "properties": {"organization_id": org}},
            }),
            limit,
            Some(&rounds_done),
        )
        .await;
        assert_unique_and_covering(&found, &stable, "workspaces");
        let found = every_page(
            &app,
            "/access/v1/search/subject",
            schema::subject_search(),
            json!({
                "subject": {"type": "user"},
                "action": action("sources.read"),
                "resource": workspace(&org, &hub),
            }),
            limit,
            Some(&rounds_done),
        )
        .await;
        assert_unique_and_covering(&found, &readers, "readers");
        let transient = |id: &String| id.starts_with("bystander-") || id.ends_with("-leaver");
        assert!(found.iter().all(|id| readers.contains(id) || transient(id)), "{found:?}");
        // The team did change while these pages were read.
        let churned_after = rounds_done.load(std::sync::atomic::Ordering::Relaxed);
        assert!(churned_after > churned_before, "no change during the paging at limit {limit}");
        rounds += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (made, churned) = churn.await.unwrap();
    assert!(churned > 0 && rounds == 3);

    // Once still, a search finds exactly what Authorize allows.
    let mut expected: Vec<String> = stable.iter().chain(&made).cloned().collect();
    expected.sort();
    let mut found = every_page(
        &app,
        "/access/v1/search/resource",
        schema::resource_search(),
        json!({
            "subject": user(&analyst.id),
            "action": action("sources.read"),
            "resource": {"type": "workspace", "properties": {"organization_id": org}},
        }),
        3,
        None,
    )
    .await;
    found.sort();
    assert_eq!(found, expected);
    for ws in &found {
        assert!(app.allowed(&analyst.id, &org, ws, "sources.read").await);
    }
    // Write on the hub: the Owner and the bystanders holding WRITE now.
    let mut writers = vec![owner.id.clone()];
    for bystander in &bystanders {
        if app.allowed(&bystander.id, &org, &hub, "sources.create").await {
            writers.push(bystander.id.clone());
        }
    }
    writers.sort();
    let mut found = every_page(
        &app,
        "/access/v1/search/subject",
        schema::subject_search(),
        json!({"subject": {"type": "user"}, "action": action("sources.create"), "resource": workspace(&org, &hub)}),
        2,
        None,
    )
    .await;
    found.sort();
    assert_eq!(found, writers);
    // A token is bound to its search: another action with it is refused.
    let first = ask(
        &app,
        "/access/v1/search/subject",
        schema::subject_search(),
        schema::search_response(schema::entity_result()),
        json!({"subject": {"type": "user"}, "action": action("sources.read"), "resource": workspace(&org, &hub), "page": {"limit": 1}}),
    )
    .await;
    let token = first["page"]["next_token"].as_str().unwrap();
    assert!(!token.is_empty());
    let other = json!({"subject": {"type": "user"}, "action": action("sources.create"), "resource": workspace(&org, &hub), "page": {"limit": 1, "token": token}});
    let (status, message) = refused(
        &app,
        "/access/v1/search/subject",
        Some("application/json"),
        &serde_json::to_vec(&other).unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(message.starts_with("page.token"), "{message}");
    // Nor with another limit than its first page's, nor on another search.
    let same = |page: Value| json!({"subject": {"type": "user"}, "action": action("sources.read"), "resource": workspace(&org, &hub), "page": page});
    let again = ask(
        &app,
        "/access/v1/search/subject",
        schema::subject_search(),
        schema::search_response(schema::entity_result()),
        same(json!({"limit": 1, "token": token})),
    )
    .await;
    assert_eq!(again["results"].as_array().unwrap().len(), 1);
    for (path, body) in [
        ("/access/v1/search/subject", same(json!({"limit": 2, "token": token}))),
        (
            "/access/v1/search/resource",
            json!({"subject": user(&analyst.id), "action": action("sources.read"),
                   "resource": {"type": "workspace", "properties": {"organization_id": org}},
                   "page": {"token": token}}),
        ),
    ] {
        let (status, message) =
            refused(&app, path, Some("application/json"), &serde_json::to_vec(&body).unwrap())
                .await;
        assert_eq!(status, 400, "{path}");
        assert!(message.starts_with("page.token"), "{message}");
    }
    app.stop().await;
}

async fn a_sparse_subject_search_of_a_large_organization_ends_its_pages_early(backend: Backend) {
    let app = app(backend).await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let ws = app.create_workspace(&owner, &org, "production").await;
    // 10,050 members without access, m100001 to m110050, sorting before the Owner.
    app.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10050) \
         INSERT INTO members (organization_id, user_id, email, role, create_time) \
         SELECT m.organization_id, 'm' || (100000 + i), 'm' || i || '@example.com', 'member', \
         m.create_time FROM n, members m WHERE m.user_id = 'owner'",
    )
    .await;
    // One of them, past the first 10,000, may read the workspace.
    let reader = User::new("m110040");
    app.team
        .clone()
        .set_workspace_access(set_access(&owner, &org, &ws, &reader, A::Read))
        .await
        .unwrap();
    let search = |page: Value| {
        json!({"subject": {"type": "user"}, "action": action("sources.read"),
               "resource": workspace(&org, &ws), "page": page})
    };
    let ask_page = |page: Value| {
        ask(
            &app,
            "/access/v1/search/subject",
            schema::subject_search(),
            schema::search_response(schema::entity_result()),
            search(page),
        )
    };
    // The first page looks at 10,000 members, finds nobody, and says where to go on.
    let first = ask_page(json!({"limit": 10})).await;
    assert_eq!(first["results"], json!([]));
    let token = first["page"]["next_token"].as_str().unwrap().to_owned();
    assert!(!token.is_empty());
    let second = ask_page(json!({"token": token})).await;
    let ids: Vec<&str> =
        second["results"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["m110040", "owner"]);
    assert_eq!(second["page"]["next_token"], json!(""));
    app.stop().await;
}

fn assert_unique_and_covering(found: &[String], stable: &[String], what: &str) {
    let mut sorted = found.to_vec();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), found.len(), "{what}: a result came twice: {found:?}");
    for id in stable {
        assert!(found.contains(id), "{what}: {id} was never returned: {found:?}");
    }
}

async fn action_search_lists_what_the_user_holds_and_metadata_names_every_endpoint(
    backend: Backend,
) {
    let app = app(backend).await;
    let Team { org, production, .. } = team(&app).await;
    let search = |subject: &str, resource: Value, limit: Option<u64>, token: Option<String>| {
        let mut body = json!({"subject": user(subject), "resource": resource});
        if let Some(limit) = limit {
            body["page"] = json!({"limit": limit});
        }
        if let Some(token) = token {
            body["page"]["token"] = json!(token);
        }
        body
    };
    for (subject, resource, ws) in [
        ("junior", workspace(&org, &production), production.as_str()),
        ("senior", workspace(&org, &production), production.as_str()),
        ("admin", organization(&org), ""),
        ("owner", organization(&org), ""),
    ] {
        let mut names = Vec::new();
        let mut token = None;
        loop {
            let answer = ask(
                &app,
                "/access/v1/search/action",
                schema::action_search(),
                schema::search_response(schema::action_result()),
                search(subject, resource.clone(), Some(3), token.clone()),
            )
            .await;
            names.extend(
                answer["results"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["name"].as_str().unwrap().to_owned()),
            );
            let next = answer["page"]["next_token"].as_str().unwrap().to_owned();
            if next.is_empty() {
                break;
            }
            token = Some(next);
        }
        let granted = app
            .access
            .clone()
            .list_granted_permissions(pb::ListGrantedPermissionsRequest {
                user_id: subject.to_owned(),
                organization_id: org.clone(),
                workspace_id: ws.to_owned(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .permissions;
        assert!(!granted.is_empty(), "{subject}");
        assert_eq!(names, granted, "{subject}");
        // Each listed action, evaluated, is allowed.
        for name in &names {
            let answer = evaluate(
                &app,
                json!({"subject": user(subject), "action": action(name), "resource": resource}),
            )
            .await;
            assert_eq!(answer["decision"], json!(true), "{subject} {name}");
        }
    }
    let outsider = ask(
        &app,
        "/access/v1/search/action",
        schema::action_search(),
        schema::search_response(schema::action_result()),
        search("outsider", organization(&org), None, None),
    )
    .await;
    assert_eq!(outsider["results"], json!([]));

    // The metadata: every endpoint, under the identifier formed from the request.
    let addr = app.authzen_addr.unwrap();
    let reply = http1(addr, Method::GET, "/.well-known/authzen-configuration", &[], vec![]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let metadata: Value = serde_json::from_slice(&reply.body).unwrap();
    schema::check(&schema::metadata(), &metadata, "metadata").unwrap();
    let base = metadata["policy_decision_point"].as_str().unwrap();
    assert_eq!(base, format!("http://{addr}"));
    for (key, path) in [
        ("access_evaluation_endpoint", "/access/v1/evaluation"),
        ("access_evaluations_endpoint", "/access/v1/evaluations"),
        ("search_subject_endpoint", "/access/v1/search/subject"),
        ("search_resource_endpoint", "/access/v1/search/resource"),
        ("search_action_endpoint", "/access/v1/search/action"),
    ] {
        assert_eq!(metadata[key], json!(format!("{base}{path}")));
    }
    // X-Request-ID: the caller's echoed as sent, one made when none came.
    let body = serde_json::to_vec(&json!({
        "subject": user("junior"), "action": action("sources.read"), "resource": workspace(&org, &production),
    }))
    .unwrap();
    let sent = "bfe9eb29 ab87/4ca3:be83";
    let reply = post_raw(
        &app,
        "/access/v1/evaluation",
        &[("content-type", "application/json"), ("x-request-id", sent)],
        body.clone(),
    )
    .await;
    assert_eq!((reply.status, reply.header("x-request-id")), (200, Some(sent)));
    let reply = post_raw(
        &app,
        "/access/v1/evaluation",
        &[("content-type", "text/plain"), ("x-request-id", sent)],
        body.clone(),
    )
    .await;
    assert_eq!((reply.status, reply.header("x-request-id")), (415, Some(sent)));
    let reply =
        post_raw(&app, "/access/v1/evaluation", &[("content-type", "application/json")], body)
            .await;
    let made = reply.header("x-request-id").unwrap();
    assert!(uuid::Uuid::parse_str(made).is_ok(), "{made}");
    app.stop().await;
}

async fn only_service_credentials_may_ask(backend: Backend) {
    let setup = JwtSetup::new();
    let secret = setup.dir.path().join("secret");
    let app = setup
        .spawn(backend, |config| {
            config.jwt_secret_file = Some(secret);
            config.authzen_listen = Some("127.0.0.1:0".parse().unwrap());
            // As behind a proxy: the identifier the metadata publishes is the configured one.
            config.authzen_base_url = Some("https://pdp.example.com".to_owned());
        })
        .await;
    let body = serde_json::to_vec(&json!({
        "subject": user("someone"),
        "action": action("organization.read"),
        "resource": organization("01900000-0000-7000-8000-000000000001"),
    }))
    .unwrap();
    let service = format!("Bearer {}", setup.service_token);
    let reply = post_raw(
        &app,
        "/access/v1/evaluation",
        &[("content-type", "application/json"), ("authorization", &service)],
        body.clone(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));

    let user_token =
        format!("Bearer {}", sign_hs(&claims("someone", "someone@example.com"), SECRET));
    for (credential, status) in [
        (None, 401),
        (Some("Bearer rst_not-a-token"), 401),
        (Some("Basic c2VydmljZTpwYXNz"), 401),
        (Some(user_token.as_str()), 403),
    ] {
        let mut headers = vec![("content-type", "application/json")];
        headers.extend(credential.map(|c| ("authorization", c)));
        let reply = post_raw(&app, "/access/v1/evaluation", &headers, body.clone()).await;
        assert_eq!(
            reply.status,
            status,
            "{credential:?}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        if status == 401 {
            assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
        }
    }
    // Refusals echo the caller's request id too.
    let reply = post_raw(
        &app,
        "/access/v1/evaluation",
        &[("content-type", "application/json"), ("x-request-id", "who-am-i")],
        body.clone(),
    )
    .await;
    assert_eq!((reply.status, reply.header("x-request-id")), (401, Some("who-am-i")));
    // Discovery needs no credential, and names the configured identifier.
    let addr = app.authzen_addr.unwrap();
    let reply = http1(addr, Method::GET, "/.well-known/authzen-configuration", &[], vec![]).await;
    assert_eq!(reply.status, 200);
    let metadata: Value = serde_json::from_slice(&reply.body).unwrap();
    schema::check(&schema::metadata(), &metadata, "metadata").unwrap();
    assert_eq!(metadata["policy_decision_point"], json!("https://pdp.example.com"));
    assert_eq!(
        metadata["search_subject_endpoint"],
        json!("https://pdp.example.com/access/v1/search/subject")
    );
    // A stranger's body is never read: refused on its headers alone, even a huge one.
    let huge = vec![b' '; 100 * 1024];
    let reply =
        post_raw(&app, "/access/v1/evaluation", &[("content-type", "application/json")], huge)
            .await;
    assert_eq!(reply.status, 401);
    app.stop().await;
}
