//! Metrics scraped from `--metrics-listen` and traces received by a real OTLP receiver.

use std::time::Duration;

use roster::pb::{self, OrganizationRole as R};
use tonic::Code;

use crate::common::otlp::{OtlpReceiver, attribute};
use crate::common::process::{Server, free_port};
use crate::common::smtp::SmtpSink;
use crate::common::{
    Backend, User, assert_code, check, drop_database, fresh_database, http_get, sample, scrape,
    spawn_app_with, wait_for_sample,
};
use crate::db_tests;

db_tests!(
    metrics_count_calls_decisions_index_pool_and_outbox,
    metrics_count_failed_email_deliveries,
    the_metrics_port_drops_a_client_that_never_finishes_its_request,
    spans_reach_an_otlp_receiver_inside_the_callers_trace,
);

async fn metrics_count_calls_decisions_index_pool_and_outbox(backend: Backend) {
    let app =
        spawn_app_with(backend, |c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let metrics = app.metrics_addr.expect("metrics are served");
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let ws = app.create_workspace(&owner, &org, "prod").await;
    let mut access = app.access.clone();
    access.authorize(check("owner", &org, &ws, "sources.read")).await.unwrap();
    access.authorize(check("owner", &org, &ws, "sources.read")).await.unwrap();
    access.authorize(check("stranger", &org, &ws, "sources.read")).await.unwrap();
    assert_code(
        access.authorize(check("owner", &org, &ws, "sources.launch")).await,
        Code::InvalidArgument,
        Some("permission"),
    );
    let batch = pb::BatchAuthorizeRequest {
        checks: vec![check("owner", &org, "", "billing.read"); 3],
        consistency: None,
    };
    access.batch_authorize(batch).await.unwrap();
    app.invite(&owner, &org, "new@example.com", R::Member, &[]).await.unwrap();
    // A path no service has is counted under one label, whatever the caller sends.
    let mut raw = tonic::client::Grpc::new(app.channel());
    raw.ready().await.unwrap();
    let unknown = raw
        .unary(
            tonic::Request::new(()),
            tonic::codegen::http::uri::PathAndQuery::from_static("/made.Up/Path123"),
            tonic_prost::ProstCodec::<(), ()>::default(),
        )
        .await;
    assert_code(unknown, Code::Unimplemented, None);

    // A call is counted when its last byte is sent, which may come just after the client has
    // read it: the last one is waited for.
    let last = r#"roster_rpc_calls_total{method="other",code="UNIMPLEMENTED"}"#;
    assert!(wait_for_sample(metrics, last, 1.0, Duration::from_secs(10)).await, "{last}");
    let text = scrape(metrics).await;
    // Without --authzen-listen there is no AuthZEN port to count.
    assert!(text.contains("roster_connections_open"), "{text}");
    assert!(!text.contains("roster_authzen_connections"), "{text}");
    let authorize = r#"method="/roster.v1.AccessService/Authorize""#;
    let calls = |code: &str| {
        sample(&text, &format!("roster_rpc_calls_total{{{authorize},code=\"{code}\"}}"))
    };
    assert_eq!(calls("OK"), Some(3.0), "{text}");
    assert_eq!(calls("INVALID_ARGUMENT"), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, &format!("roster_rpc_duration_seconds_count{{{authorize},code=\"OK\"}}")),
        Some(3.0),
        "{text}"
    );
    let decided = |permission: &str, decision: &str| {
        sample(
            &text,
            &format!(
                "roster_authorize_decisions_total{{permission=\"{permission}\",decision=\"{decision}\"}}"
            ),
        )
    };
    assert_eq!(decided("sources.read", "allowed"), Some(2.0), "{text}");
    assert_eq!(decided("sources.read", "denied"), Some(1.0), "{text}");
    assert_eq!(decided("billing.read", "allowed"), Some(3.0), "{text}");
    assert_eq!(decided("sources.create", "allowed"), Some(0.0), "every pair is exposed: {text}");
    assert!(
        sample(
            &text,
            r#"roster_rpc_calls_total{method="/roster.v1.TeamService/CreateOrganization",code="OK"}"#
        ) == Some(1.0),
        "{text}"
    );
    // Five checks went through the index (one batch of three counts three).
    let hits = sample(&text, "roster_authz_index_hits_total").expect("index hits");
    let misses = sample(&text, "roster_authz_index_misses_total").expect("index misses");
    assert_eq!(hits + misses, 6.0, "{text}");
    assert!(misses >= 1.0, "the first check loads the organization: {text}");
    assert!(sample(&text, "roster_db_pool_connections_open").unwrap() >= 1.0, "{text}");
    assert!(sample(&text, "roster_db_pool_connections_max").unwrap() >= 1.0, "{text}");
    assert!(sample(&text, "roster_db_pool_connections_in_use").is_some(), "{text}");
    for state in ["queued", "retrying", "failed"] {
        assert!(
            sample(&text, &format!("roster_outbox_emails{{state=\"{state}\"}}")).is_some(),
            "{state}: {text}"
        );
    }
    assert_eq!(sample(&text, "roster_outbox_delivery_failures_total"), Some(0.0), "{text}");
    assert_eq!(
        sample(&text, r#"roster_rpc_calls_total{method="other",code="UNIMPLEMENTED"}"#),
        Some(1.0),
        "{text}"
    );
    assert!(!text.contains("made.Up"), "{text}");
    assert!(text.trim_end().ends_with("# EOF"), "{text}");

    assert!(http_get(metrics, "/").await.starts_with("HTTP/1.1 404"));
    // HTTP probes beside the metrics, for probes that cannot speak gRPC over TLS.
    assert!(http_get(metrics, "/readyz").await.starts_with("HTTP/1.1 200"));
    assert!(http_get(metrics, "/livez").await.starts_with("HTTP/1.1 200"));
    app.stop().await;
}

async fn metrics_count_failed_email_deliveries(backend: Backend) {
    // Nothing listens on this port: every attempt fails and is retried.
    let closed = free_port();
    let app = spawn_app_with(backend, |c| {
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        c.smtp_url = Some(format!("smtp://127.0.0.1:{closed}"));
    })
    .await;
    let metrics = app.metrics_addr.unwrap();
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    app.invite(&owner, &org, "new@example.com", R::Member, &[]).await.unwrap();
    let mut text = String::new();
    for _ in 0..100 {
        text = scrape(metrics).await;
        if sample(&text, "roster_outbox_delivery_failures_total").unwrap_or(0.0) >= 1.0
            && sample(&text, r#"roster_outbox_emails{state="retrying"}"#) == Some(1.0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(sample(&text, "roster_outbox_delivery_failures_total").unwrap() >= 1.0, "{text}");
    assert_eq!(sample(&text, r#"roster_outbox_emails{state="retrying"}"#), Some(1.0), "{text}");
    assert_eq!(sample(&text, r#"roster_outbox_emails{state="queued"}"#), Some(0.0), "{text}");
    app.stop().await;
}

async fn the_metrics_port_drops_a_client_that_never_finishes_its_request(backend: Backend) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let app =
        spawn_app_with(backend, |c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let mut stream = tokio::net::TcpStream::connect(app.metrics_addr.unwrap()).await.unwrap();
    // Headers that never end.
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut rest = Vec::new();
    // The bound only keeps a failing test from hanging; the server closes after 5 s.
    let closed = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the connection is still open after 30 s");
    assert!(
        !String::from_utf8_lossy(&rest).contains("roster_"),
        "no metrics for a partial request"
    );
    // The port still serves everyone else.
    assert!(scrape(app.metrics_addr.unwrap()).await.contains("roster_db_pool_connections_open"));
    app.stop().await;
}

async fn spans_reach_an_otlp_receiver_inside_the_callers_trace(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (database_url, pg_database) = fresh_database(backend, dir.path()).await;
    let sink = SmtpSink::start().await;
    let receiver = OtlpReceiver::start().await;
    let log = dir.path().join("roster.log");
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
        ("OTEL_SERVICE_NAME", "roster-under-test"),
    ];
    let authzen = format!("127.0.0.1:{}", free_port());
    let extra = ["--authzen-listen", authzen.as_str()];
    let server = Server::start_with_env(&database_url, sink.port, &log, &extra, None, &env).await;
    let owner = User::new("owner");
    let mut team = server.team().await;
    let org = crate::common::create_org_with(&mut team, &owner, "Acme").await;

    // The caller's trace: a W3C traceparent as another service's gRPC client sends it.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let mut request = tonic::Request::new(check("owner", &org, "", "billing.read"));
    request
        .metadata_mut()
        .insert("traceparent", format!("00-{trace_id}-{parent_id}-01").parse().unwrap());
    let mut access = server.access().await;
    assert!(access.authorize(request).await.unwrap().into_inner().allowed);
    let mut denied = tonic::Request::new(check("stranger", &org, "", "billing.read"));
    denied
        .metadata_mut()
        .insert("traceparent", format!("00-{trace_id}-{parent_id}-01").parse().unwrap());
    assert!(!access.authorize(denied).await.unwrap().into_inner().allowed);
    // An AuthZEN evaluation joins the caller's trace the same way.
    let evaluation = serde_json::json!({
        "subject": {"type": "user", "id": "owner"},
        "action": {"name": "billing.read"},
        "resource": {"type": "organization", "id": org},
    });
    let traceparent = format!("00-{trace_id}-{parent_id}-01");
    let post =
        |method: &'static [u8], path: &'static str, body: serde_json::Value, id: &'static str| {
            let (authzen, traceparent) = (authzen.parse().unwrap(), traceparent.clone());
            async move {
                crate::common::web::http1(
                    authzen,
                    tonic::codegen::http::Method::from_bytes(method).unwrap(),
                    path,
                    &[
                        ("content-type", "application/json"),
                        ("traceparent", &traceparent),
                        ("x-request-id", id),
                    ],
                    serde_json::to_vec(&body).unwrap(),
                )
                .await
            }
        };
    let reply = post(b"POST", "/access/v1/evaluation", evaluation.clone(), "evaluation-1").await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    // A boxcar says how many of its evaluations were allowed.
    let stranger = serde_json::json!({"subject": {"type": "user", "id": "stranger"}});
    let boxcar = serde_json::json!({
        "action": evaluation["action"],
        "resource": evaluation["resource"],
        "evaluations": [{"subject": evaluation["subject"]}, stranger],
    });
    let reply = post(b"POST", "/access/v1/evaluations", boxcar, "boxcar-1").await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    // A method of a stranger's making names no span and no attribute.
    let reply = post(b"BREW", "/access/v1/evaluation", evaluation.clone(), "brew-1").await;
    assert_eq!(reply.status, 405, "{}", String::from_utf8_lossy(&reply.body));
    // A graceful stop flushes what the batch exporter still holds.
    server.stop();

    let spans = receiver.spans();
    let (ours, http): (Vec<_>, Vec<_>) = spans
        .iter()
        .filter(|s| hex(&s.trace_id) == trace_id)
        .partition(|s| s.name.starts_with("roster.v1."));
    assert_eq!(ours.len(), 2, "both Authorize calls join the caller's trace: {spans:#?}");
    let named = |name: &str| {
        let found: Vec<_> = http.iter().filter(|s| s.name == name).collect();
        assert_eq!(found.len(), 1, "one {name} span in the caller's trace: {spans:#?}");
        found[0]
    };
    let boxcar = named("POST /access/v1/evaluations");
    assert_eq!(attribute(boxcar, "decision").as_deref(), Some("1 of 2 allowed"), "{boxcar:#?}");
    let brewed = named("HTTP");
    assert_eq!(attribute(brewed, "http.request.method").as_deref(), Some("_OTHER"));
    assert_eq!(attribute(brewed, "http.response.status_code").as_deref(), Some("405"));
    assert_eq!(http.len(), 3, "{http:#?}");
    let evaluation = named("POST /access/v1/evaluation");
    assert_eq!(hex(&evaluation.parent_span_id), parent_id, "{evaluation:#?}");
    assert_eq!(evaluation.kind, 2, "{evaluation:#?}");
    for (key, value) in [
        ("http.request.method", "POST"),
        ("http.route", "/access/v1/evaluation"),
        ("http.response.status_code", "200"),
        ("url.scheme", "http"),
        ("request_id", "evaluation-1"),
        ("organization_id", org.as_str()),
        ("decision", "allowed"),
    ] {
        assert_eq!(attribute(evaluation, key).as_deref(), Some(value), "{key}: {evaluation:#?}");
    }
    assert!(attribute(evaluation, "caller").is_some(), "{evaluation:#?}");
    for span in &ours {
        assert_eq!(hex(&span.parent_span_id), parent_id, "{span:#?}");
        assert_eq!(span.name, "roster.v1.AccessService/Authorize");
        // SPAN_KIND_SERVER
        assert_eq!(span.kind, 2, "{span:#?}");
        assert_eq!(attribute(span, "rpc.system").as_deref(), Some("grpc"));
        assert_eq!(attribute(span, "rpc.service").as_deref(), Some("roster.v1.AccessService"));
        assert_eq!(attribute(span, "rpc.method").as_deref(), Some("Authorize"));
        assert_eq!(attribute(span, "rpc.grpc.status_code").as_deref(), Some("0"), "{span:#?}");
        assert_eq!(attribute(span, "organization_id").as_deref(), Some(org.as_str()));
        assert!(attribute(span, "caller").is_some(), "{span:#?}");
    }
    let mut decisions: Vec<_> = ours.iter().filter_map(|s| attribute(s, "decision")).collect();
    decisions.sort();
    assert_eq!(decisions, ["allowed", "denied"]);
    // A call without traceparent starts a trace of its own.
    let create = spans
        .iter()
        .find(|s| s.name == "roster.v1.TeamService/CreateOrganization")
        .expect("CreateOrganization is traced");
    assert!(create.parent_span_id.is_empty(), "{create:#?}");
    assert_ne!(hex(&create.trace_id), trace_id);
    drop_database(pg_database).await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
