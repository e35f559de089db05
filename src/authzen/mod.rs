//! The OpenID AuthZEN Authorization API 1.0 over HTTP/JSON, on a listener of its own
//! (`--authzen-listen`): access evaluations, single and boxcarred, the three searches, and the
//! Policy Decision Point metadata. Decisions are Authorize's, from the same index and counted
//! in the same metric.
//!
//! A request is answered in the order that keeps a stranger cheap: its path and method, then
//! its service credential from the headers alone, then an in-flight slot, then its body, read
//! within a size limit, a time limit and the process's byte budget.

mod request;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;
use tonic::body::Body;
use tonic::codegen::http::{self, HeaderValue, Method, StatusCode, header};
use tower::Service;

use crate::domain::{Decision, Permission, UserIdRef, WorkspaceId};
use crate::error::{Error, Kind};
use crate::grpc::access::MAX_BATCH_CHECKS;
use crate::grpc::auth::Identity;
use crate::grpc::body::{ByteBudget, HeldBytes};
use crate::grpc::listener::Peer;
use crate::index::Check;
use crate::metrics::Metrics;
use crate::service::Services;
use crate::service::page::{self, PageRequest};
use request::{Evaluation, Id, Object, Parts as EvaluationParts, Problem, Semantic};

/// The paths of the API, as the specification names them.
pub mod paths {
    pub const EVALUATION: &str = "/access/v1/evaluation";
    pub const EVALUATIONS: &str = "/access/v1/evaluations";
    pub const SEARCH_SUBJECT: &str = "/access/v1/search/subject";
    pub const SEARCH_RESOURCE: &str = "/access/v1/search/resource";
    pub const SEARCH_ACTION: &str = "/access/v1/search/action";
    pub const METADATA: &str = "/.well-known/authzen-configuration";
}

/// The name of the per-request span.
const REQUEST_SPAN: &str = "http";

/// Whether `meta` describes the per-request span, which logs leave out as they leave out the
/// per-call span of gRPC (see `telemetry`).
pub fn is_request_span(meta: &tracing::Metadata<'_>) -> bool {
    meta.is_span() && meta.name() == REQUEST_SPAN && meta.target() == module_path!()
}

/// Most evaluations one boxcar may carry, as BatchAuthorize.
pub const MAX_EVALUATIONS: usize = MAX_BATCH_CHECKS;

/// The byte budget is charged this many times a body's size: the parsed JSON tree is larger
/// than its text (about four times for a boxcar of evaluations).
const PARSED_SIZE_FACTOR: usize = 4;

/// What the listener is bound by.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Largest body of every request but a boxcar.
    pub max_request_bytes: usize,
    /// Largest body of a boxcar of evaluations.
    pub max_batch_request_bytes: usize,
    /// Longest a body may take to arrive.
    pub body_timeout: Duration,
    /// Longest a request may take as a whole.
    pub request_timeout: Duration,
    /// The Policy Decision Point identifier; formed from each request when `None`.
    pub base_url: Option<String>,
    /// Whether the listener speaks TLS, for the identifier formed from a request.
    pub tls: bool,
}

/// Serves the API; cheap to clone (one per connection).
#[derive(Clone)]
pub struct AuthzenApi {
    inner: Arc<Inner>,
}

/// What the listener shares with the main port: the use-cases, the metrics, how callers are
/// identified, and the limits both ports stay within together.
pub struct Parts {
    pub services: Services,
    pub metrics: Arc<Metrics>,
    pub identity: Arc<Identity>,
    /// The request byte budget (`--max-buffered-request-bytes`).
    pub budget: Arc<ByteBudget>,
    /// The in-flight slots (`--max-in-flight`).
    pub permits: Arc<Semaphore>,
    /// Requests refused for want of a slot (`roster_calls_shed_total`).
    pub shed: Arc<AtomicU64>,
}

struct Inner {
    parts: Parts,
    settings: Settings,
}

impl AuthzenApi {
    /// The API over the main port's use-cases and limits.
    pub fn new(parts: Parts, settings: Settings) -> Self {
        Self { inner: Arc::new(Inner { parts, settings }) }
    }
}

/// Which endpoint a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    /// One of the POST endpoints.
    Ask(Question),
    Metadata,
}

/// The POST endpoints: the questions a caller asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Question {
    Evaluation,
    Evaluations,
    SearchSubject,
    SearchResource,
    SearchAction,
}

impl Endpoint {
    fn of(path: &str) -> Option<Self> {
        Some(match path {
            paths::EVALUATION => Endpoint::Ask(Question::Evaluation),
            paths::EVALUATIONS => Endpoint::Ask(Question::Evaluations),
            paths::SEARCH_SUBJECT => Endpoint::Ask(Question::SearchSubject),
            paths::SEARCH_RESOURCE => Endpoint::Ask(Question::SearchResource),
            paths::SEARCH_ACTION => Endpoint::Ask(Question::SearchAction),
            paths::METADATA => Endpoint::Metadata,
            _ => return None,
        })
    }

    /// The path, as the span's route.
    fn path(self) -> &'static str {
        match self {
            Endpoint::Ask(Question::Evaluation) => paths::EVALUATION,
            Endpoint::Ask(Question::Evaluations) => paths::EVALUATIONS,
            Endpoint::Ask(Question::SearchSubject) => paths::SEARCH_SUBJECT,
            Endpoint::Ask(Question::SearchResource) => paths::SEARCH_RESOURCE,
            Endpoint::Ask(Question::SearchAction) => paths::SEARCH_ACTION,
            Endpoint::Metadata => paths::METADATA,
        }
    }

    /// The span's name: the method and route for the endpoint's own method, `HTTP` for any
    /// other, as OpenTelemetry names a request whose name would tell nothing more.
    fn span_name(self, method: &Method) -> &'static str {
        let (own, name) = match self {
            Endpoint::Ask(Question::Evaluation) => (Method::POST, "POST /access/v1/evaluation"),
            Endpoint::Ask(Question::Evaluations) => (Method::POST, "POST /access/v1/evaluations"),
            Endpoint::Ask(Question::SearchSubject) => {
                (Method::POST, "POST /access/v1/search/subject")
            }
            Endpoint::Ask(Question::SearchResource) => {
                (Method::POST, "POST /access/v1/search/resource")
            }
            Endpoint::Ask(Question::SearchAction) => {
                (Method::POST, "POST /access/v1/search/action")
            }
            Endpoint::Metadata => (Method::GET, "GET /.well-known/authzen-configuration"),
        };
        if *method == own { name } else { "HTTP" }
    }

    /// The metric label.
    fn label(self) -> &'static str {
        match self {
            Endpoint::Ask(Question::Evaluation) => "evaluation",
            Endpoint::Ask(Question::Evaluations) => "evaluations",
            Endpoint::Ask(Question::SearchSubject) => "search_subject",
            Endpoint::Ask(Question::SearchResource) => "search_resource",
            Endpoint::Ask(Question::SearchAction) => "search_action",
            Endpoint::Metadata => "metadata",
        }
    }
}

/// An answer: a status and a JSON body, or an error message.
struct Answer {
    status: StatusCode,
    body: Result<Value, String>,
    /// Headers an answer of this status carries: `Allow` for a 405, `Retry-After` for a 503,
    /// `WWW-Authenticate` for a 401, caching for the metadata.
    extra: Vec<(header::HeaderName, &'static str)>,
    /// The cause of a 500, logged once with the request id; never sent.
    cause: Option<String>,
}

impl Answer {
    fn json(body: Value) -> Self {
        Answer { status: StatusCode::OK, body: Ok(body), extra: Vec::new(), cause: None }
    }

    fn error(status: StatusCode, message: impl Into<String>) -> Self {
        let extra = match status {
            StatusCode::SERVICE_UNAVAILABLE => vec![(header::RETRY_AFTER, "1")],
            StatusCode::UNAUTHORIZED => vec![(header::WWW_AUTHENTICATE, "Bearer")],
            _ => Vec::new(),
        };
        Answer { status, body: Err(message.into()), extra, cause: None }
    }

    fn bad(problem: Problem) -> Self {
        Answer::error(StatusCode::BAD_REQUEST, problem.0)
    }

    fn with(mut self, name: header::HeaderName, value: &'static str) -> Self {
        self.extra.push((name, value));
        self
    }

    /// The answer for a failure of Roster's own use-cases, by the kind of its reason.
    fn failed(err: Error) -> Self {
        let status = match &err {
            Error::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Internal(cause) => {
                let mut answer = Answer::error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error; it has been logged",
                );
                answer.cause = Some(format!("{cause:#}"));
                return answer;
            }
            Error::Refused { reason, .. } => match reason.kind() {
                Kind::InvalidArgument | Kind::OutOfRange | Kind::FailedPrecondition => {
                    StatusCode::BAD_REQUEST
                }
                Kind::Unauthenticated => StatusCode::UNAUTHORIZED,
                Kind::PermissionDenied => StatusCode::FORBIDDEN,
                Kind::AlreadyExists => StatusCode::CONFLICT,
                Kind::Unimplemented => StatusCode::NOT_FOUND,
                Kind::DeadlineExceeded | Kind::ResourceExhausted | Kind::Unavailable => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            },
        };
        Answer::error(status, err.to_string())
    }
}

impl Service<http::Request<Body>> for AuthzenApi {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move { Ok(inner.answer(request).await) })
    }
}

/// The caller's `X-Request-ID`, echoed as sent (the specification asks for the same value);
/// one is made when none came, so that every answer can be matched to its log lines.
fn request_id(request: &http::Request<Body>) -> HeaderValue {
    match request.headers().get("x-request-id") {
        Some(sent) if !sent.is_empty() => sent.clone(),
        _ => HeaderValue::try_from(uuid::Uuid::new_v4().to_string())
            .unwrap_or(HeaderValue::from_static("-")),
    }
}

/// The longest request id a span carries; a longer one is echoed but not traced.
const MAX_TRACED_ID: usize = 128;

/// A method as OpenTelemetry records it: one of HTTP's own, or `_OTHER`.
fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::CONNECT => "CONNECT",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::PATCH => "PATCH",
        _ => "_OTHER",
    }
}

/// Whether a Content-Type is JSON (`application/json`, with any parameters).
fn is_json(value: Option<&HeaderValue>) -> bool {
    let Some(text) = value.and_then(|v| v.to_str().ok()) else { return false };
    let essence = text.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
}

impl Inner {
    async fn answer(&self, request: http::Request<Body>) -> http::Response<Body> {
        let started = Instant::now();
        let id = request_id(&request);
        let endpoint = Endpoint::of(request.uri().path());
        let label = endpoint.map_or("other", Endpoint::label);
        // Field names follow OpenTelemetry's conventions for HTTP servers; `otel.*` fields are
        // read by the exporter. caller, organization_id and decision are filled in on the way.
        // Every value is one of a known few, or the request id, bounded: the span is made
        // before the caller is identified.
        let method = request.method();
        let span = tracing::info_span!(
            REQUEST_SPAN,
            otel.name = endpoint.map_or("HTTP", |e| e.span_name(method)),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            http.request.method = method_name(method),
            http.route = endpoint.map(Endpoint::path),
            http.response.status_code = tracing::field::Empty,
            url.scheme = if self.settings.tls { "https" } else { "http" },
            request_id = id.to_str().ok().filter(|id| id.len() <= MAX_TRACED_ID).unwrap_or("-"),
            caller = tracing::field::Empty,
            organization_id = tracing::field::Empty,
            decision = tracing::field::Empty,
        );
        if let Some(parent) = crate::grpc::observe::caller_trace(request.headers()) {
            // Fails only when no OpenTelemetry layer is installed; the span then stays local.
            let _ = tracing_opentelemetry::OpenTelemetrySpanExt::set_parent(&span, parent);
        }
        let answer =
            tracing::Instrument::instrument(self.route(endpoint, request), span.clone()).await;
        span.record("http.response.status_code", answer.status.as_u16());
        if answer.status.is_server_error() {
            span.record("otel.status_code", "ERROR");
        }
        self.parts.metrics.record_authzen(label, answer.status, started.elapsed());
        if answer.status.is_server_error() {
            let message = answer.body.as_ref().err().map(String::as_str).unwrap_or_default();
            let request_id = id.to_str().unwrap_or_default();
            match &answer.cause {
                Some(cause) => tracing::error!(
                    request_id,
                    endpoint = label,
                    error = cause.as_str(),
                    "AuthZEN request failed"
                ),
                None => tracing::warn!(
                    request_id,
                    endpoint = label,
                    status = answer.status.as_u16(),
                    message,
                    "AuthZEN request refused"
                ),
            }
        }
        respond(answer, id)
    }

    async fn route(&self, endpoint: Option<Endpoint>, request: http::Request<Body>) -> Answer {
        let question = match endpoint {
            None => {
                return Answer::error(StatusCode::NOT_FOUND, "no such endpoint of the AuthZEN API");
            }
            Some(Endpoint::Metadata) => {
                // Discovery needs no credential: it tells nothing a caller could not guess.
                if request.method() != Method::GET && request.method() != Method::HEAD {
                    return Answer::error(StatusCode::METHOD_NOT_ALLOWED, "use GET")
                        .with(header::ALLOW, "GET, HEAD");
                }
                // Metadata may be cached, as the specification expects of it; formed from the
                // request's Host unless configured, it varies with it.
                return Answer::json(self.metadata(&request))
                    .with(header::CACHE_CONTROL, "max-age=300")
                    .with(header::VARY, "host");
            }
            Some(Endpoint::Ask(question)) => question,
        };
        if request.method() != Method::POST {
            return Answer::error(StatusCode::METHOD_NOT_ALLOWED, "use POST")
                .with(header::ALLOW, "POST");
        }
        // The credential, from the headers alone, before anything is taken for the request.
        let peer = request.extensions().get::<Peer>();
        let certificate = peer.is_some_and(|p| p.client_certificate);
        let caller = match self.parts.identity.service(request.headers(), certificate) {
            Ok(caller) => caller,
            Err(err) => return Answer::failed(err),
        };
        if let Some(peer) = peer {
            peer.mark_identified();
        }
        tracing::Span::current().record("caller", tracing::field::display(&caller));
        let Ok(_permit) = self.parts.permits.try_acquire() else {
            self.parts.shed.fetch_add(1, Ordering::Relaxed);
            return Answer::error(StatusCode::SERVICE_UNAVAILABLE, "overloaded: retry shortly");
        };
        if !is_json(request.headers().get(header::CONTENT_TYPE)) {
            return Answer::error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Type must be application/json",
            );
        }
        let limit = if question == Question::Evaluations {
            self.settings.max_batch_request_bytes
        } else {
            self.settings.max_request_bytes
        };
        let (body, _held) = match self.read_body(request.into_body(), limit).await {
            Ok(read) => read,
            Err(answer) => return answer,
        };
        let body = match serde_json::from_slice::<request::Unique>(&body) {
            Ok(request::Unique(Value::Object(body))) => body,
            Ok(_) => {
                return Answer::error(StatusCode::BAD_REQUEST, "the body must be a JSON object");
            }
            Err(err) if err.is_eof() && body.iter().all(u8::is_ascii_whitespace) => {
                return Answer::error(
                    StatusCode::BAD_REQUEST,
                    "the body is empty: send a JSON object",
                );
            }
            Err(err) if err.is_data() => {
                return Answer::error(
                    StatusCode::BAD_REQUEST,
                    format!("the body is refused: {err}"),
                );
            }
            Err(err) => {
                return Answer::error(
                    StatusCode::BAD_REQUEST,
                    format!("the body is not valid JSON: {err}"),
                );
            }
        };
        let work = async {
            match question {
                Question::Evaluation => self.evaluation(&body).await,
                Question::Evaluations => self.evaluations(&body).await,
                Question::SearchSubject => self.search_subject(&body).await,
                Question::SearchResource => self.search_resource(&body).await,
                Question::SearchAction => self.search_action(&body).await,
            }
        };
        match tokio::time::timeout(self.settings.request_timeout, work).await {
            Ok(answer) => answer,
            Err(_) => Answer::error(StatusCode::SERVICE_UNAVAILABLE, "the request timed out"),
        }
    }

    /// The body, read within `limit` bytes, the body timeout and the byte budget, which is
    /// charged for the parsed tree as well.
    async fn read_body(
        &self,
        mut body: Body,
        limit: usize,
    ) -> Result<(Vec<u8>, HeldBytes), Answer> {
        use http_body::Body as _;
        let too_large = || {
            Answer::error(StatusCode::PAYLOAD_TOO_LARGE, format!("the body exceeds {limit} bytes"))
        };
        let declared = body.size_hint().exact().and_then(|n| usize::try_from(n).ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let mut held = HeldBytes::new(self.parts.budget.clone());
        // Not more room ahead than a small body needs: the rest is taken as it is charged.
        let mut bytes = Vec::with_capacity(declared.unwrap_or(0).min(16 * 1024));
        let deadline = tokio::time::Instant::now() + self.settings.body_timeout;
        loop {
            let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) => {
                    return Err(Answer::error(
                        StatusCode::REQUEST_TIMEOUT,
                        "the body did not arrive in time",
                    ));
                }
                Ok(None) => return Ok((bytes, held)),
                Ok(Some(Err(_))) => {
                    return Err(Answer::error(StatusCode::BAD_REQUEST, "the body was cut off"));
                }
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else { continue };
            if bytes.len() + data.len() > limit {
                return Err(too_large());
            }
            if !held.grow(data.len() * PARSED_SIZE_FACTOR) {
                return Err(Answer::error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the server holds too many request bytes: retry shortly",
                ));
            }
            bytes.extend_from_slice(&data);
        }
    }

    fn metadata(&self, request: &http::Request<Body>) -> Value {
        let base = match &self.settings.base_url {
            Some(base) => base.clone(),
            None => {
                let host = request
                    .uri()
                    .authority()
                    .map(|a| a.as_str().to_owned())
                    .or_else(|| {
                        request.headers().get(header::HOST)?.to_str().ok().map(str::to_owned)
                    })
                    .unwrap_or_else(|| "localhost".to_owned());
                let scheme = if self.settings.tls { "https" } else { "http" };
                format!("{scheme}://{host}")
            }
        };
        json!({
            "policy_decision_point": base,
            "access_evaluation_endpoint": format!("{base}{}", paths::EVALUATION),
            "access_evaluations_endpoint": format!("{base}{}", paths::EVALUATIONS),
            "search_subject_endpoint": format!("{base}{}", paths::SEARCH_SUBJECT),
            "search_resource_endpoint": format!("{base}{}", paths::SEARCH_RESOURCE),
            "search_action_endpoint": format!("{base}{}", paths::SEARCH_ACTION),
        })
    }

    async fn evaluation(&self, body: &Object) -> Answer {
        let check = EvaluationParts::read(body, "")
            .and_then(|p| p.over(EvaluationParts::default(), ""))
            .and_then(|evaluation| evaluation.check());
        let check = match check {
            Ok(check) => check,
            Err(problem) => return Answer::bad(problem),
        };
        let span = tracing::Span::current();
        span.record("organization_id", tracing::field::display(check.organization_id));
        match self.parts.services.authorize(&check).await {
            Ok(decision) => {
                self.parts.metrics.record_decision(check.permission, decision.allowed);
                span.record("decision", if decision.allowed { "allowed" } else { "denied" });
                Answer::json(decision_json(decision))
            }
            Err(err) => Answer::failed(err),
        }
    }

    async fn evaluations(&self, body: &Object) -> Answer {
        let items = match body.get("evaluations") {
            None => None,
            Some(Value::Array(items)) if items.is_empty() => None,
            Some(Value::Array(items)) => Some(items),
            Some(_) => {
                return Answer::error(StatusCode::BAD_REQUEST, "evaluations must be an array");
            }
        };
        // Without evaluations the request is a single evaluation, answered as one.
        let Some(items) = items else { return self.evaluation(body).await };
        if items.len() > MAX_EVALUATIONS {
            return Answer::error(
                StatusCode::BAD_REQUEST,
                format!("evaluations must hold at most {MAX_EVALUATIONS}; split the request"),
            );
        }
        let semantic = match request::semantic(body) {
            Ok(semantic) => semantic,
            Err(problem) => return Answer::bad(problem),
        };
        // The defaults' shapes are checked once, and named at the top level.
        let defaults = match EvaluationParts::read(body, "").and_then(|d| d.checked_defaults()) {
            Ok(defaults) => defaults,
            Err(problem) => return Answer::bad(problem),
        };
        let places: Vec<String> = (0..items.len()).map(|i| format!("evaluations[{i}].")).collect();
        let mut evaluations: Vec<Evaluation<'_>> = Vec::with_capacity(items.len());
        for (item, place) in items.iter().zip(&places) {
            let Value::Object(item) = item else {
                return Answer::error(
                    StatusCode::BAD_REQUEST,
                    format!("{} must be an object", place.trim_end_matches('.')),
                );
            };
            match EvaluationParts::read(item, place).and_then(|p| p.over(defaults, place)) {
                Ok(evaluation) => evaluations.push(evaluation),
                Err(problem) => return Answer::bad(problem),
            }
        }
        // Each evaluation that cannot be checked is denied with its error.
        let checks: Vec<Result<Check<'_>, Problem>> =
            evaluations.iter().map(Evaluation::check).collect();
        let decided = match semantic {
            // Decided together, as BatchAuthorize decides.
            Semantic::ExecuteAll => {
                let valid: Vec<Check<'_>> =
                    checks.iter().filter_map(|c| c.as_ref().ok()).cloned().collect();
                match self.parts.services.batch_authorize(&valid).await {
                    Ok(decisions) if decisions.len() == valid.len() => decisions,
                    Ok(_) => {
                        return Answer::failed(Error::internal(anyhow::anyhow!(
                            "a batch of checks was answered with another number of decisions"
                        )));
                    }
                    Err(err) => return Answer::failed(err),
                }
            }
            // In order, up to the first that decides the answer: nothing after it is read.
            Semantic::DenyOnFirstDeny | Semantic::PermitOnFirstPermit => {
                let stop_at = semantic == Semantic::PermitOnFirstPermit;
                let mut decisions = Vec::new();
                for check in &checks {
                    let Ok(check) = check else {
                        if !stop_at {
                            break;
                        }
                        continue;
                    };
                    match self.parts.services.authorize(check).await {
                        Ok(decision) => {
                            decisions.push(decision);
                            if decision.allowed == stop_at {
                                break;
                            }
                        }
                        Err(err) => return Answer::failed(err),
                    }
                }
                decisions
            }
        };
        let mut decided = decided.into_iter();
        let mut results = Vec::with_capacity(checks.len());
        let mut permitted = 0;
        for check in &checks {
            let (result, allowed) = match check {
                Ok(check) => {
                    // Only a short-circuited evaluation has no decision: the answer ends before it.
                    let Some(decision) = decided.next() else { break };
                    self.parts.metrics.record_decision(check.permission, decision.allowed);
                    (decision_json(decision), decision.allowed)
                }
                Err(problem) => (
                    json!({
                        "decision": false,
                        "context": {"error": {"status": 400, "message": problem.0}},
                    }),
                    false,
                ),
            };
            results.push(result);
            permitted += usize::from(allowed);
            match semantic {
                Semantic::DenyOnFirstDeny if !allowed => break,
                Semantic::PermitOnFirstPermit if allowed => break,
                _ => {}
            }
        }
        tracing::Span::current().record(
            "decision",
            tracing::field::display(format_args!("{permitted} of {} allowed", results.len())),
        );
        Answer::json(json!({ "evaluations": results }))
    }

    async fn search_resource(&self, body: &Object) -> Answer {
        let read = || -> Result<_, Problem> {
            let (subject, action, resource) = search_parts(body, Id::Required, Id::Ignored)?;
            let user = required_user(&subject)?;
            if resource.kind != request::WORKSPACE {
                return Err(Problem("resource.type must be \"workspace\"".to_owned()));
            }
            let org = request::organization_of(&resource, "resource")?;
            let permission = request::permission(action, "action", true)?;
            // The workspaces are read from the database, which is at least as fresh as any
            // token; a token is still checked, as everywhere.
            let context = request::object(body, "context", "context")?;
            request::freshness(context, "context", org)?;
            Ok((user, org, permission, request::consistency_text(context), request::page(body)?))
        };
        let (user, org, permission, token, asked) = match read() {
            Ok(read) => read,
            Err(problem) => return Answer::bad(problem),
        };
        let binding = format!("resource|{}|{org}|{}|{token}", user.as_str(), permission.name());
        let (page, size) = match open_page(&binding, "accessible", asked) {
            Ok(page) => page,
            Err(answer) => return answer,
        };
        // The cursor is a workspace id; anything else came from a forged token.
        if page.after.as_deref().is_some_and(|a| WorkspaceId::parse(a).is_err()) {
            return Answer::error(StatusCode::BAD_REQUEST, STALE_TOKEN);
        }
        let user = user.to_user_id();
        match self.parts.services.list_accessible_workspaces(&user, org, permission, page).await {
            Ok(found) => {
                let results: Vec<Value> = found
                    .items
                    .iter()
                    .map(|w| {
                        json!({
                            "type": request::WORKSPACE,
                            "id": w.id.to_string(),
                            "properties": {"organization_id": org.to_string()},
                        })
                    })
                    .collect();
                search_answer(&binding, size, results, &found.next_page_token)
            }
            Err(err) => Answer::failed(err),
        }
    }

    async fn search_subject(&self, body: &Object) -> Answer {
        let read = || -> Result<_, Problem> {
            let (subject, action, resource) = search_parts(body, Id::Ignored, Id::Required)?;
            request::user(&subject, "subject")?;
            let target = request::target(&resource, "resource")?;
            let permission = request::permission(action, "action", target.workspace_id.is_some())?;
            // Decided on what the database holds now, at least as fresh as any token.
            let context = request::object(body, "context", "context")?;
            request::freshness(context, "context", target.organization_id)?;
            Ok((target, permission, request::consistency_text(context), request::page(body)?))
        };
        let (target, permission, token, asked) = match read() {
            Ok(read) => read,
            Err(problem) => return Answer::bad(problem),
        };
        let binding = format!(
            "subject|{}|{}|{}|{token}",
            target.organization_id,
            target.workspace_id.map(|w| w.to_string()).unwrap_or_default(),
            permission.name(),
        );
        let (page, size) = match open_page(&binding, "subjects", asked) {
            Ok(page) => page,
            Err(answer) => return answer,
        };
        // The cursor is a user id; anything else came from a forged token.
        if page.after.as_deref().is_some_and(|a| UserIdRef::parse(a).is_err()) {
            return Answer::error(StatusCode::BAD_REQUEST, STALE_TOKEN);
        }
        let found = self
            .parts
            .services
            .search_subjects(target.organization_id, target.workspace_id, permission, page)
            .await;
        match found {
            Ok(found) => {
                let results: Vec<Value> = found
                    .items
                    .iter()
                    .map(|user| json!({"type": request::USER, "id": user.as_str()}))
                    .collect();
                search_answer(&binding, size, results, &found.next_page_token)
            }
            Err(err) => Answer::failed(err),
        }
    }

    async fn search_action(&self, body: &Object) -> Answer {
        let read = || -> Result<_, Problem> {
            let subject = required_object(body, "subject")?;
            let subject = request::entity(subject, "subject", Id::Required)?;
            let resource = required_object(body, "resource")?;
            let resource = request::entity(resource, "resource", Id::Required)?;
            let user = required_user(&subject)?;
            let target = request::target(&resource, "resource")?;
            let context = request::object(body, "context", "context")?;
            let freshness = request::freshness(context, "context", target.organization_id)?;
            let token = request::consistency_text(context);
            Ok((user, target, freshness, token, request::page(body)?))
        };
        let (user, target, freshness, token, asked) = match read() {
            Ok(read) => read,
            Err(problem) => return Answer::bad(problem),
        };
        let binding = format!(
            "action|{}|{}|{}|{token}",
            user.as_str(),
            target.organization_id,
            target.workspace_id.map(|w| w.to_string()).unwrap_or_default(),
        );
        let (page, size) = match open_page(&binding, "actions", asked) {
            Ok(page) => page,
            Err(answer) => return answer,
        };
        let user = user.to_user_id();
        let granted = self
            .parts
            .services
            .list_granted_permissions(&user, target.organization_id, target.workspace_id, freshness)
            .await;
        let granted = match granted {
            Ok(granted) => granted,
            Err(err) => return Answer::failed(err),
        };
        // The catalogue is small: a page is a stretch of it after the last name returned.
        let start = match page.after.as_deref() {
            None => 0,
            Some(last) => match Permission::from_name(last) {
                // Whether or not it is still held, the page goes on after where it stands.
                Some(last) => {
                    granted.iter().take_while(|p| (**p as usize) <= last as usize).count()
                }
                None => return Answer::error(StatusCode::BAD_REQUEST, STALE_TOKEN),
            },
        };
        let rest: Vec<Permission> = granted.into_iter().skip(start).collect();
        let found = page::finish("actions", rest, page.size, |p| p.name().to_owned());
        let results: Vec<Value> = found.items.iter().map(|p| json!({"name": p.name()})).collect();
        search_answer(&binding, size, results, &found.next_page_token)
    }
}

const STALE_TOKEN: &str = "page.token is not a token of this search: repeat the first request's members and page.limit, or start again without a token";

fn required_user<'a>(subject: &request::Entity<'a>) -> Result<UserIdRef<'a>, Problem> {
    request::user(subject, "subject")?.ok_or_else(|| Problem("subject.id is required".to_owned()))
}

fn required_object<'a>(body: &'a Object, key: &str) -> Result<&'a Object, Problem> {
    request::object(body, key, key)?.ok_or_else(|| Problem(format!("{key} is required")))
}

/// The subject, action name and resource of a subject or resource search.
fn search_parts<'a>(
    body: &'a Object,
    subject_id: Id,
    resource_id: Id,
) -> Result<(request::Entity<'a>, &'a str, request::Entity<'a>), Problem> {
    let subject = request::entity(required_object(body, "subject")?, "subject", subject_id)?;
    let action = request::action(required_object(body, "action")?, "action")?;
    let resource = request::entity(required_object(body, "resource")?, "resource", resource_id)?;
    Ok((subject, action, resource))
}

/// The first bytes of a digest of what a search asks, put in its page tokens so that a token
/// sent with another search (other members, or another consistency token) is refused, as the
/// specification asks. It is a guard against mistakes, not a secret: a token is only a place
/// in a list the caller may read whole.
fn fingerprint(binding: &str) -> String {
    let digest = Sha256::digest(binding.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The page a search asks for and its size: a later page keeps the first one's `page.limit`,
/// which it may repeat or leave out.
fn open_page(
    binding: &str,
    kind: &str,
    asked: request::PageAsked<'_>,
) -> Result<(PageRequest, u64), Answer> {
    let stale = || Answer::error(StatusCode::BAD_REQUEST, STALE_TOKEN);
    let (limit, inner) = if asked.token.is_empty() {
        (asked.limit.unwrap_or(0), String::new())
    } else {
        let decoded = URL_SAFE_NO_PAD.decode(asked.token).map_err(|_| stale())?;
        let text = String::from_utf8(decoded).map_err(|_| stale())?;
        let mut fields = text.splitn(3, '.');
        let (Some(print), Some(limit), Some(inner)) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(stale());
        };
        let limit: u64 = limit.parse().map_err(|_| stale())?;
        if print != fingerprint(binding) || asked.limit.is_some_and(|asked| asked != limit) {
            return Err(stale());
        }
        (limit, inner.to_owned())
    };
    let size = i32::try_from(limit).unwrap_or(i32::MAX);
    let page = page::parse(kind, size, &inner).map_err(|err| match inner.is_empty() {
        true => Answer::failed(err),
        false => stale(),
    })?;
    Ok((page, limit))
}

/// A search's answer: the page first, as the specification recommends, then the results.
fn search_answer(binding: &str, limit: u64, results: Vec<Value>, inner_token: &str) -> Answer {
    let next_token = if inner_token.is_empty() {
        String::new()
    } else {
        URL_SAFE_NO_PAD.encode(format!("{}.{limit}.{inner_token}", fingerprint(binding)))
    };
    Answer::json(json!({
        "page": {"next_token": next_token, "count": results.len()},
        "results": results,
    }))
}

/// A decision as the specification shapes it; Roster's reason, the user's role and their
/// access to the workspace ride in its context.
fn decision_json(decision: Decision) -> Value {
    let mut context = serde_json::Map::new();
    context.insert("reason".to_owned(), crate::grpc::convert::reason_name(decision).into());
    if let Some(role) = decision.role {
        context.insert("role".to_owned(), role.as_str().into());
    }
    // For a workspace check: the user's access there, `none` without a grant.
    if let Some(access) = decision.workspace_access {
        let name = access.map_or("none", |a| a.as_str());
        context.insert("workspace_access".to_owned(), name.into());
    }
    json!({"decision": decision.allowed, "context": context})
}

fn respond(answer: Answer, id: HeaderValue) -> http::Response<Body> {
    let (content_type, bytes) = match &answer.body {
        Ok(value) => ("application/json", serde_json::to_vec(value).unwrap_or_default()),
        Err(message) => ("text/plain; charset=utf-8", format!("{message}\n").into_bytes()),
    };
    let mut response =
        http::Response::new(Body::new(http_body_util::Full::new(prost::bytes::Bytes::from(bytes))));
    *response.status_mut() = answer.status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Decisions change with the team: no cache may keep one (the metadata says otherwise).
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-request-id", id);
    for (name, value) in answer.extra {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}
