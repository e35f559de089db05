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
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;
use tonic::body::Body;
use tonic::codegen::http::{self, HeaderValue, Method, StatusCode, header};
use tower::Service;

use crate::domain::{Decision, Permission, UserIdRef};
use crate::error::{Error, Kind};
use crate::grpc::auth::Identity;
use crate::grpc::body::{ByteBudget, HeldBytes};
use crate::grpc::listener::Peer;
use crate::index::Check;
use crate::metrics::Metrics;
use crate::service::Services;
use crate::service::page::{self, PageRequest};
use request::{Evaluation, Id, Object, Parts, Problem, Semantic};

/// The paths of the API, as the specification names them.
pub mod paths {
    pub const EVALUATION: &str = "/access/v1/evaluation";
    pub const EVALUATIONS: &str = "/access/v1/evaluations";
    pub const SEARCH_SUBJECT: &str = "/access/v1/search/subject";
    pub const SEARCH_RESOURCE: &str = "/access/v1/search/resource";
    pub const SEARCH_ACTION: &str = "/access/v1/search/action";
    pub const METADATA: &str = "/.well-known/authzen-configuration";
}

/// Most evaluations one boxcar may carry, as BatchAuthorize.
pub const MAX_EVALUATIONS: usize = crate::grpc::access::MAX_BATCH_CHECKS;

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
    /// Most requests served at once; beyond it they are refused with 503.
    pub max_in_flight: usize,
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

struct Inner {
    services: Services,
    metrics: Arc<Metrics>,
    identity: Arc<Identity>,
    budget: Arc<ByteBudget>,
    permits: Semaphore,
    settings: Settings,
}

impl AuthzenApi {
    /// The API over the use-cases, identifying callers with `identity` and holding request
    /// bodies within `budget` (the main port's).
    pub fn new(
        services: Services,
        metrics: Arc<Metrics>,
        identity: Arc<Identity>,
        budget: Arc<ByteBudget>,
        settings: Settings,
    ) -> Self {
        let permits = Semaphore::new(settings.max_in_flight);
        Self { inner: Arc::new(Inner { services, metrics, identity, budget, permits, settings }) }
    }
}

/// Which endpoint a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Evaluation,
    Evaluations,
    SearchSubject,
    SearchResource,
    SearchAction,
    Metadata,
}

impl Endpoint {
    fn of(path: &str) -> Option<Self> {
        Some(match path {
            paths::EVALUATION => Endpoint::Evaluation,
            paths::EVALUATIONS => Endpoint::Evaluations,
            paths::SEARCH_SUBJECT => Endpoint::SearchSubject,
            paths::SEARCH_RESOURCE => Endpoint::SearchResource,
            paths::SEARCH_ACTION => Endpoint::SearchAction,
            paths::METADATA => Endpoint::Metadata,
            _ => return None,
        })
    }

    /// The metric label.
    fn label(self) -> &'static str {
        match self {
            Endpoint::Evaluation => "evaluation",
            Endpoint::Evaluations => "evaluations",
            Endpoint::SearchSubject => "search_subject",
            Endpoint::SearchResource => "search_resource",
            Endpoint::SearchAction => "search_action",
            Endpoint::Metadata => "metadata",
        }
    }
}

/// An answer: a status and a JSON body, or an error message.
struct Answer {
    status: StatusCode,
    body: Result<Value, String>,
    /// `Allow` for a 405, `Retry-After` for a 503, `WWW-Authenticate` for a 401.
    extra: Option<(header::HeaderName, &'static str)>,
}

impl Answer {
    fn json(body: Value) -> Self {
        Answer { status: StatusCode::OK, body: Ok(body), extra: None }
    }

    fn error(status: StatusCode, message: impl Into<String>) -> Self {
        Answer { status, body: Err(message.into()), extra: None }
    }

    fn bad(problem: Problem) -> Self {
        Answer::error(StatusCode::BAD_REQUEST, problem.0)
    }

    fn with(mut self, name: header::HeaderName, value: &'static str) -> Self {
        self.extra = Some((name, value));
        self
    }

    /// The answer for a failure of Roster's own use-cases.
    fn failed(err: Error) -> Self {
        let status = match &err {
            Error::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "AuthZEN request failed");
                return Answer::error(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
            }
            Error::Refused { reason, .. } => match reason.kind() {
                Kind::Unauthenticated => StatusCode::UNAUTHORIZED,
                Kind::PermissionDenied => StatusCode::FORBIDDEN,
                Kind::ResourceExhausted | Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                Kind::DeadlineExceeded => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_REQUEST,
            },
        };
        let answer = Answer::error(status, err.to_string());
        if status == StatusCode::SERVICE_UNAVAILABLE {
            answer.with(header::RETRY_AFTER, "1")
        } else {
            answer
        }
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

/// Whether a Content-Type is JSON (`application/json`, with any parameters).
fn is_json(value: Option<&HeaderValue>) -> bool {
    let Some(text) = value.and_then(|v| v.to_str().ok()) else { return false };
    let essence = text.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
}

impl Inner {
    async fn answer(&self, request: http::Request<Body>) -> http::Response<Body> {
        let id = request_id(&request);
        let endpoint = Endpoint::of(request.uri().path());
        let span = tracing::debug_span!(
            "authzen",
            endpoint = endpoint.map_or("other", Endpoint::label),
            request_id = id.to_str().unwrap_or_default(),
            caller = tracing::field::Empty,
            status = tracing::field::Empty,
        );
        let answer =
            tracing::Instrument::instrument(self.route(endpoint, request), span.clone()).await;
        span.record("status", answer.status.as_u16());
        self.metrics.record_authzen(endpoint.map_or("other", Endpoint::label), answer.status);
        if answer.status.is_server_error() {
            tracing::warn!(
                request_id = id.to_str().unwrap_or_default(),
                status = answer.status.as_u16(),
                message = answer.body.as_ref().err().map(String::as_str).unwrap_or_default(),
                "AuthZEN request failed"
            );
        }
        respond(answer, id)
    }

    async fn route(&self, endpoint: Option<Endpoint>, request: http::Request<Body>) -> Answer {
        let Some(endpoint) = endpoint else {
            return Answer::error(StatusCode::NOT_FOUND, "no such endpoint of the AuthZEN API");
        };
        if endpoint == Endpoint::Metadata {
            // Discovery needs no credential: it tells nothing a caller could not guess.
            if request.method() != Method::GET && request.method() != Method::HEAD {
                return Answer::error(StatusCode::METHOD_NOT_ALLOWED, "use GET")
                    .with(header::ALLOW, "GET, HEAD");
            }
            return Answer::json(self.metadata(&request));
        }
        if request.method() != Method::POST {
            return Answer::error(StatusCode::METHOD_NOT_ALLOWED, "use POST")
                .with(header::ALLOW, "POST");
        }
        // The credential, from the headers alone, before anything is taken for the request.
        let peer = request.extensions().get::<Peer>();
        let certificate = peer.is_some_and(|p| p.client_certificate);
        let caller = match self.identity.service(request.headers(), certificate) {
            Ok(caller) => caller,
            Err(err) => {
                let answer = Answer::failed(err);
                return if answer.status == StatusCode::UNAUTHORIZED {
                    answer.with(header::WWW_AUTHENTICATE, "Bearer")
                } else {
                    answer
                };
            }
        };
        if let Some(peer) = peer {
            peer.mark_identified();
        }
        tracing::Span::current().record("caller", tracing::field::display(&caller));
        let Ok(_permit) = self.permits.try_acquire() else {
            return Answer::error(StatusCode::SERVICE_UNAVAILABLE, "overloaded: retry shortly")
                .with(header::RETRY_AFTER, "1");
        };
        if !is_json(request.headers().get(header::CONTENT_TYPE)) {
            return Answer::error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Type must be application/json",
            );
        }
        let limit = if endpoint == Endpoint::Evaluations {
            self.settings.max_batch_request_bytes
        } else {
            self.settings.max_request_bytes
        };
        let (body, _held) = match self.read_body(request.into_body(), limit).await {
            Ok(read) => read,
            Err(answer) => return answer,
        };
        let body = match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(body)) => body,
            Ok(_) => {
                return Answer::error(StatusCode::BAD_REQUEST, "the body must be a JSON object");
            }
            Err(err) if err.is_eof() && body.iter().all(u8::is_ascii_whitespace) => {
                return Answer::error(
                    StatusCode::BAD_REQUEST,
                    "the body is empty: send a JSON object",
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
            match endpoint {
                Endpoint::Evaluation => self.evaluation(&body).await,
                Endpoint::Evaluations => self.evaluations(&body).await,
                Endpoint::SearchSubject => self.search_subject(&body).await,
                Endpoint::SearchResource => self.search_resource(&body).await,
                Endpoint::SearchAction => self.search_action(&body).await,
                Endpoint::Metadata => unreachable!("answered above"),
            }
        };
        match tokio::time::timeout(self.settings.request_timeout, work).await {
            Ok(answer) => answer,
            Err(_) => Answer::error(StatusCode::SERVICE_UNAVAILABLE, "the request timed out")
                .with(header::RETRY_AFTER, "1"),
        }
    }

    /// The body, read within `limit` bytes, the body timeout and the byte budget.
    async fn read_body(
        &self,
        mut body: Body,
        limit: usize,
    ) -> Result<(Vec<u8>, HeldBytes), Answer> {
        let too_large = || {
            Answer::error(StatusCode::PAYLOAD_TOO_LARGE, format!("the body exceeds {limit} bytes"))
        };
        let mut held = HeldBytes::default();
        let mut bytes = Vec::new();
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
            if !self.budget.grow(&mut held, data.len()) {
                return Err(Answer::error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the server holds too many request bytes: retry shortly",
                )
                .with(header::RETRY_AFTER, "1"));
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
        let check = match Parts::read(body, "").and_then(|p| p.over(Parts::default(), "")) {
            Ok(evaluation) => evaluation.check(),
            Err(problem) => return Answer::bad(problem),
        };
        let check = match check {
            Ok(check) => check,
            Err(problem) => return Answer::bad(problem),
        };
        match self.services.authorize(&check).await {
            Ok(decision) => {
                self.metrics.record_decision(check.permission, decision.allowed);
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
        let defaults = match Parts::read(body, "") {
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
            match Parts::read(item, place).and_then(|p| p.over(defaults, place)) {
                Ok(evaluation) => evaluations.push(evaluation),
                Err(problem) => return Answer::bad(problem),
            }
        }
        // Each evaluation that cannot be checked is denied with its error; the rest are
        // decided together.
        let checks: Vec<Result<Check<'_>, Problem>> =
            evaluations.iter().map(Evaluation::check).collect();
        let valid: Vec<Check<'_>> =
            checks.iter().filter_map(|c| c.as_ref().ok()).cloned().collect();
        let decisions = match self.services.batch_authorize(&valid).await {
            Ok(decisions) => decisions,
            Err(err) => return Answer::failed(err),
        };
        let mut decided = valid.iter().zip(decisions);
        let mut results = Vec::with_capacity(checks.len());
        for check in &checks {
            let (result, allowed) = match check {
                Ok(_) => {
                    let Some((check, decision)) = decided.next() else { break };
                    self.metrics.record_decision(check.permission, decision.allowed);
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
            match semantic {
                Semantic::DenyOnFirstDeny if !allowed => break,
                Semantic::PermitOnFirstPermit if allowed => break,
                _ => {}
            }
        }
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
            let permission = request::permission(action.unwrap_or_default(), "action", true)?;
            let asked = request::page(body)?;
            Ok((user, org, permission, asked))
        };
        let (user, org, permission, asked) = match read() {
            Ok(read) => read,
            Err(problem) => return Answer::bad(problem),
        };
        let binding =
            format!("resource|{}|{org}|{}|{}", user.as_str(), permission.name(), asked.limit);
        let page = match open_page(&binding, "accessible", asked) {
            Ok(page) => page,
            Err(answer) => return answer,
        };
        let user = user.to_user_id();
        match self.services.list_accessible_workspaces(&user, org, permission, page).await {
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
                search_answer(&binding, results, &found.next_page_token)
            }
            Err(err) => Answer::failed(err),
        }
    }

    async fn search_subject(&self, body: &Object) -> Answer {
        let read = || -> Result<_, Problem> {
            let (subject, action, resource) = search_parts(body, Id::Ignored, Id::Required)?;
            request::user(&subject, "subject")?;
            let target = request::target(&resource, "resource")?;
            let permission = request::permission(
                action.unwrap_or_default(),
                "action",
                target.workspace_id.is_some(),
            )?;
            let context = request::object(body, "context", "context")?;
            let freshness = request::freshness(context, "context", target.organization_id)?;
            let asked = request::page(body)?;
            Ok((target, permission, freshness, asked))
        };
        let (target, permission, freshness, asked) = match read() {
            Ok(read) => read,
            Err(problem) => return Answer::bad(problem),
        };
        let binding = format!(
            "subject|{}|{}|{}|{}",
            target.organization_id,
            target.workspace_id.map(|w| w.to_string()).unwrap_or_default(),
            permission.name(),
            asked.limit
        );
        let page = match open_page(&binding, "subjects", asked) {
            Ok(page) => page,
            Err(answer) => return answer,
        };
        let found = self
            .services
            .search_subjects(
                target.organization_id,
                target.workspace_id,
                permission,
                freshness,
                page,
            )
            .await;
        match found {
            Ok(found) => {
                let results: Vec<Value> = found
                    .items
                    .iter()
                    .map(|user| json!({"type": request::USER, "id": user.as_str()}))
                    .collect();
                search_answer(&binding, results, &found.next_page_token)
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
            let asked = request::page(body)?;
            Ok((user, target, freshness, asked))
        };
        let (user, target, freshness, asked) = match read() {
            Ok(read) => read,
            Err(problem) => return Answer::bad(problem),
        };
        let binding = format!(
            "action|{}|{}|{}|{}",
            user.as_str(),
            target.organization_id,
            target.workspace_id.map(|w| w.to_string()).unwrap_or_default(),
            asked.limit
        );
        let page = match open_page(&binding, "actions", asked) {
            Ok(page) => page,
            Err(answer) => return answer,
        };
        let user = user.to_user_id();
        let granted = self
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
            Some(last) => match granted.iter().position(|p| p.name() == last) {
                Some(i) => i + 1,
                None => match Permission::from_name(last) {
                    // Taken away since the last page: go on after where it stood.
                    Some(gone) => {
                        granted.iter().take_while(|p| (**p as usize) < gone as usize).count()
                    }
                    None => return Answer::error(StatusCode::BAD_REQUEST, STALE_TOKEN),
                },
            },
        };
        let rest: Vec<Permission> = granted.into_iter().skip(start).collect();
        let found = page::finish("actions", rest, page.size, |p| p.name().to_owned());
        let results: Vec<Value> = found.items.iter().map(|p| json!({"name": p.name()})).collect();
        search_answer(&binding, results, &found.next_page_token)
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
) -> Result<(request::Entity<'a>, Option<&'a str>, request::Entity<'a>), Problem> {
    let subject = request::entity(required_object(body, "subject")?, "subject", subject_id)?;
    let action = request::action(required_object(body, "action")?, "action")?;
    let resource = request::entity(required_object(body, "resource")?, "resource", resource_id)?;
    Ok((subject, Some(action), resource))
}

/// The first bytes of a digest of what a search asks, bound into its page tokens, so that a
/// token is refused with anything but the request it came from.
fn fingerprint(binding: &str) -> String {
    let digest = Sha256::digest(binding.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The page a search asks for: its size, and where the previous page ended.
fn open_page(
    binding: &str,
    kind: &str,
    asked: request::PageAsked<'_>,
) -> Result<PageRequest, Answer> {
    let size = i32::try_from(asked.limit).unwrap_or(i32::MAX);
    if asked.token.is_empty() {
        return page::parse(kind, size, "").map_err(Answer::failed);
    }
    let stale = || Answer::error(StatusCode::BAD_REQUEST, STALE_TOKEN);
    let decoded = URL_SAFE_NO_PAD.decode(asked.token).map_err(|_| stale())?;
    let text = String::from_utf8(decoded).map_err(|_| stale())?;
    let (print, inner) = text.split_once('.').ok_or_else(stale)?;
    if print != fingerprint(binding) {
        return Err(stale());
    }
    page::parse(kind, size, inner).map_err(|_| stale())
}

/// A search's answer: the page first, as the specification recommends, then the results.
fn search_answer(binding: &str, results: Vec<Value>, inner_token: &str) -> Answer {
    let next_token = if inner_token.is_empty() {
        String::new()
    } else {
        URL_SAFE_NO_PAD.encode(format!("{}.{inner_token}", fingerprint(binding)))
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
    // Decisions change with the team: no cache may keep one.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-request-id", id);
    if let Some((name, value)) = answer.extra {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}
