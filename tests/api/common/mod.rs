//! Test harness: starts the real server on an ephemeral loopback port with its own database
//! (a SQLite file or a fresh PostgreSQL database) and a real SMTP sink, and hands out typed
//! clients and fixtures named by role.

pub mod attack;
pub mod otlp;
pub mod postgres;
pub mod process;
pub mod smtp;
pub mod web;

use std::sync::atomic::{AtomicU64, Ordering};

use roster::app::{self, Running};
use roster::config::Config;
use roster::pb::access_service_client::AccessServiceClient;
use roster::pb::team_service_client::TeamServiceClient;
use roster::pb::{self, OrganizationRole, WorkspaceAccess};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

pub use smtp::SmtpSink;

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in a temporary folder.
    Sqlite,
    /// A fresh database on the PostgreSQL server named by `ROSTER_TEST_POSTGRES_URL`.
    Postgres,
}

/// Runs each listed async test function once on SQLite and once on PostgreSQL.
#[macro_export]
macro_rules! db_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Postgres).await
                }
            )*
        }
    };
}

/// The PostgreSQL server tests create their databases on.
pub fn postgres_admin_url() -> String {
    std::env::var("ROSTER_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A user of the tests, with dev-mode credentials.
#[derive(Debug, Clone)]
pub struct User {
    /// The user id.
    pub id: String,
    /// The email.
    pub email: String,
}

impl User {
    /// A user named `name`, with the email `name@example.com`.
    pub fn new(name: &str) -> Self {
        User { id: name.to_owned(), email: format!("{name}@example.com") }
    }

    /// Wraps a message with this user's credentials.
    pub fn req<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.metadata_mut().insert("x-user-id", self.id.parse().unwrap());
        request.metadata_mut().insert("x-user-email", self.email.parse().unwrap());
        request
    }
}

/// The running server and everything a test needs around it.
pub struct TestApp {
    /// Where the server listens.
    pub addr: std::net::SocketAddr,
    /// The channel the clients share.
    channel: Channel,
    /// TeamService client.
    pub team: TeamServiceClient<Channel>,
    /// AccessService client.
    pub access: AccessServiceClient<Channel>,
    /// The SMTP server receiving invitation emails.
    pub smtp: SmtpSink,
    /// Direct access to the server's database, for assertions.
    pub db: DatabaseConnection,
    /// Where Prometheus metrics are served, when the test asked for them.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Where the AuthZEN API is served, when the test asked for it.
    pub authzen_addr: Option<std::net::SocketAddr>,
    running: Option<Running>,
    pg_database: Option<String>,
    _dir: tempfile::TempDir,
}

/// A fresh database URL for `backend`, and the PostgreSQL database name to drop afterwards.
pub async fn fresh_database(backend: Backend, dir: &std::path::Path) -> (String, Option<String>) {
    match backend {
        Backend::Sqlite => {
            let path = dir.join("roster.db");
            (format!("sqlite://{}?mode=rwc", path.display()), None)
        }
        Backend::Postgres => {
            let admin_url = postgres_admin_url();
            let name =
                format!("roster_t_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
            let admin = Database::connect(&admin_url).await.unwrap_or_else(|err| {
                panic!(
                    "PostgreSQL is not reachable at {} ({err}). Start it (for \
                         example `sudo service postgresql start`, or `docker run -d -p \
                         5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust -e POSTGRES_DB=test \
                         postgres`), name another server with ROSTER_TEST_POSTGRES_URL, or \
                         run without it: .ci/test -- --skip postgres --skip replicas:: \
                         --skip one_replica",
                    roster::storage::redact_url(&admin_url)
                )
            });
            admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name}")).await.unwrap();
            admin.execute_unprepared(&format!("CREATE DATABASE {name}")).await.unwrap();
            admin.close().await.unwrap();
            let base = admin_url.rsplit_once('/').map(|(base, _)| base).unwrap_or(&admin_url);
            (format!("{base}/{name}"), Some(name))
        }
    }
}

/// Drops a PostgreSQL database made by [`fresh_database`]; `None` (SQLite) does nothing.
pub async fn drop_database(name: Option<String>) {
    if let Some(name) = name
        && let Ok(admin) = Database::connect(&postgres_admin_url()).await
    {
        let _ =
            admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
        let _ = admin.close().await;
    }
}

/// Every item of a paged list: `fetch` gets a page token and returns a page and the next token;
/// each page must hold at most `page_size` items.
pub async fn all_pages<T, F, Fut>(page_size: usize, mut fetch: F) -> Vec<T>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = (Vec<T>, String)>,
{
    let mut items = Vec::new();
    let mut token = String::new();
    loop {
        let (page, next) = fetch(token).await;
        assert!(page.len() <= page_size, "a page holds {} items", page.len());
        items.extend(page);
        if next.is_empty() {
            return items;
        }
        token = next;
    }
}

/// An Authorize request with the default consistency; `workspace` empty for an organization
/// permission.
pub fn check(user: &str, org: &str, workspace: &str, permission: &str) -> pb::AuthorizeRequest {
    pb::AuthorizeRequest {
        consistency: None,
        user_id: user.to_owned(),
        organization_id: org.to_owned(),
        workspace_id: workspace.to_owned(),
        permission: permission.to_owned(),
    }
}

/// A wire timestamp of `micros` since the epoch, converted as the server converts it.
pub fn timestamp(micros: i64) -> prost_types::Timestamp {
    roster::grpc::convert::timestamp(roster::domain::Timestamp::from_micros(micros))
}

/// The response to a plain HTTP/1.1 GET of `path` on `addr`: status line, headers and body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

/// The metrics page served at `addr`.
pub async fn scrape(addr: std::net::SocketAddr) -> String {
    let response = http_get(addr, "/metrics").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// The value of the sample `series` (name and labels exactly as exposed) in a metrics page.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Whether the metrics page at `addr` shows `series` at `value` within `within` (read every
/// 50 ms).
pub async fn wait_for_sample(
    addr: std::net::SocketAddr,
    series: &str,
    value: f64,
    within: std::time::Duration,
) -> bool {
    let deadline = std::time::Instant::now() + within;
    loop {
        if sample(&scrape(addr).await, series) == Some(value) {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Starts a server on `backend` with the default test configuration.
pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

/// Sends the in-process servers' logs to the test's captured output, which libtest shows when
/// the test fails: warnings and errors by default, or what `TEST_LOG` names (a level such as
/// `debug`, or a filter such as `roster::grpc=trace`).
fn init_test_log() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let filter = std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".to_owned());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .with_ansi(false)
            .try_init();
    });
}

/// Starts a server on `backend`, letting the test adjust the configuration.
pub async fn spawn_app_with(backend: Backend, adjust: impl FnOnce(&mut Config)) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let (database_url, pg_database) = fresh_database(backend, dir.path()).await;
    spawn_app_on(dir, database_url, pg_database, adjust).await
}

/// Starts a server on a database the test prepared (`pg_database` is dropped when it stops),
/// keeping its mail folder in `dir`.
pub async fn spawn_app_on(
    dir: tempfile::TempDir,
    database_url: String,
    pg_database: Option<String>,
    adjust: impl FnOnce(&mut Config),
) -> TestApp {
    init_test_log();
    let smtp = SmtpSink::start().await;
    let mut config = Config::defaults();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.database_url = database_url.clone();
    config.mail_dir = dir.path().join("mail");
    config.smtp_url = Some(format!("smtp://127.0.0.1:{}", smtp.port));
    config.mail_retry_base_ms = 50;
    config.mail_retry_max_ms = 500;
    config.invite_url = "https://app.example.com/accept?token={token}".to_owned();
    adjust(&mut config);
    let running = app::start(&config).await.expect("server starts");
    let endpoint = format!("http://{}", running.addr);
    // Lazy, so that a TLS server (whose tests bring their own channels) starts all the same.
    let channel = Channel::from_shared(endpoint).unwrap().connect_lazy();
    let db = Database::connect(&database_url).await.unwrap();
    let addr = running.addr;
    let metrics_addr = running.metrics_addr;
    TestApp {
        metrics_addr,
        authzen_addr: running.authzen_addr,
        addr,
        team: TeamServiceClient::new(channel.clone()),
        access: AccessServiceClient::new(channel.clone()),
        channel,
        smtp,
        db,
        running: Some(running),
        pg_database,
        _dir: dir,
    }
}

impl TestApp {
    /// The PostgreSQL database the server runs on, if it runs on one.
    pub fn database_name(&self) -> Option<&str> {
        self.pg_database.as_deref()
    }

    /// A channel to the server, for clients of other services.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Stops the server and drops its PostgreSQL database (a test that fails before calling
    /// this drops it all the same, see the `Drop` below).
    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await.unwrap();
        }
        let _ = self.db.clone().close().await;
        drop_database(self.pg_database.take()).await;
    }

    /// Creates an organization owned by `owner`; returns its id.
    pub async fn create_org(&self, owner: &User, name: &str) -> String {
        create_org_with(&mut self.team.clone(), owner, name).await
    }

    /// Creates a workspace; returns its id.
    pub async fn create_workspace(&self, actor: &User, org: &str, name: &str) -> String {
        self.try_create_workspace(actor, org, name).await.expect("create workspace")
    }

    /// Asks to create a workspace; its id, or the call's status.
    pub async fn try_create_workspace(
        &self,
        actor: &User,
        org: &str,
        name: &str,
    ) -> Result<String, Status> {
        try_create_workspace_with(&mut self.team.clone(), actor, org, name).await
    }

    /// Invites `email`.
    pub async fn invite(
        &self,
        inviter: &User,
        org: &str,
        email: &str,
        role: OrganizationRole,
        grants: &[(&str, WorkspaceAccess)],
    ) -> Result<pb::Invitation, Status> {
        self.team
            .clone()
            .create_invitation(
                inviter.req(pb::CreateInvitationRequest {
                    organization_id: org.to_owned(),
                    email: email.to_owned(),
                    role: role as i32,
                    workspace_grants: grants
                        .iter()
                        .map(|(ws, access)| pb::InvitationWorkspaceGrant {
                            workspace_id: (*ws).to_owned(),
                            access: *access as i32,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }),
            )
            .await
            .map(|r| r.into_inner().invitation.unwrap())
    }

    /// Every invitation of `org` in `state` (UNSPECIFIED: all), as `actor` lists them.
    pub async fn invitations(
        &self,
        actor: &User,
        org: &str,
        state: pb::InvitationState,
    ) -> Vec<pb::Invitation> {
        list_invitations(&mut self.team.clone(), actor, org, state).await
    }

    /// Accepts with a token as `user`.
    pub async fn accept(&self, user: &User, token: &str) -> Result<pb::Member, Status> {
        self.team
            .clone()
            .accept_invitation(
                user.req(pb::AcceptInvitationRequest {
                    token: token.to_owned(),
                    ..Default::default()
                }),
            )
            .await
            .map(|r| r.into_inner().member.unwrap())
    }

    /// Invites `user`, waits for the email over SMTP, and accepts with its token.
    pub async fn join(
        &self,
        inviter: &User,
        org: &str,
        user: &User,
        role: OrganizationRole,
        grants: &[(&str, WorkspaceAccess)],
    ) -> pb::Member {
        let already = self.emails_to(&user.email).await;
        self.invite(inviter, org, &user.email, role, grants).await.expect("invite");
        let email = self.smtp.wait_for(&user.email, already + 1).await;
        let token = email.token().expect("the email carries a token");
        self.accept(user, &token).await.expect("accept")
    }

    /// How many emails `address` has received.
    pub async fn emails_to(&self, address: &str) -> usize {
        self.smtp.all().await.iter().filter(|m| m.recipients.iter().any(|r| r == address)).count()
    }

    /// Calls Authorize.
    pub async fn authorize(
        &self,
        user: &str,
        org: &str,
        workspace: &str,
        permission: &str,
    ) -> pb::AuthorizeResponse {
        self.access
            .clone()
            .authorize(check(user, org, workspace, permission))
            .await
            .unwrap_or_else(|s| panic!("authorize {user} {permission}: {s:?}"))
            .into_inner()
    }

    /// Whether `user` may use `permission` (on `workspace`, if not empty).
    pub async fn allowed(&self, user: &str, org: &str, workspace: &str, permission: &str) -> bool {
        self.authorize(user, org, workspace, permission).await.allowed
    }

    /// Row count of a table.
    pub async fn count(&self, table: &str) -> i64 {
        let backend = self.db.get_database_backend();
        let row = self
            .db
            .query_one_raw(Statement::from_string(
                backend,
                format!("SELECT COUNT(*) AS n FROM {table}"),
            ))
            .await
            .unwrap()
            .unwrap();
        row.try_get::<i64>("", "n").unwrap()
    }

    /// Row counts of every table, to show that a failed call changed nothing.
    pub async fn snapshot(&self) -> Vec<(&'static str, i64)> {
        let mut counts = Vec::new();
        for table in [
            "organizations",
            "members",
            "workspaces",
            "workspace_grants",
            "invitations",
            "invitation_grants",
            "outbox",
            "audit_events",
            "request_ids",
        ] {
            counts.push((table, self.count(table).await));
        }
        counts.push((
            "member roles",
            self.checksum("SELECT user_id || role AS v FROM members").await,
        ));
        counts.push((
            "grant levels",
            self.checksum("SELECT user_id || access AS v FROM workspace_grants").await,
        ));
        counts.push((
            "invitation states",
            self.checksum("SELECT state || send_count AS v FROM invitations").await,
        ));
        counts.push(("names", self.checksum("SELECT display_name AS v FROM organizations UNION ALL SELECT display_name AS v FROM workspaces").await));
        counts
    }

    async fn checksum(&self, sql: &str) -> i64 {
        let backend = self.db.get_database_backend();
        let rows =
            self.db.query_all_raw(Statement::from_string(backend, sql.to_owned())).await.unwrap();
        let mut values: Vec<String> =
            rows.iter().map(|r| r.try_get::<String>("", "v").unwrap()).collect();
        values.sort();
        let joined = values.join("\u{1}");
        joined.bytes().fold(17i64, |acc, b| acc.wrapping_mul(31).wrapping_add(b as i64))
    }

    /// Every text value stored in every table of the server's database, as (table, column,
    /// value): what a reader of the database (or of a backup) would see.
    pub async fn stored_texts(&self) -> Vec<(String, String, String)> {
        stored_texts(&self.db).await
    }

    /// Runs a statement on the server's database (to age an invitation, for example).
    pub async fn execute(&self, sql: &str) {
        self.db.execute_unprepared(sql).await.unwrap();
    }
}

impl Drop for TestApp {
    /// A test that panicked never reached `stop`: its PostgreSQL database is dropped here, on a
    /// thread of its own since the test's runtime may be unwinding. FORCE ends the connections
    /// of the server that is still running.
    fn drop(&mut self) {
        if let Some(name) = self.pg_database.take() {
            let dropped = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
                if let Ok(runtime) = runtime {
                    runtime.block_on(drop_database(Some(name)));
                }
            });
            let _ = dropped.join();
        }
    }
}

/// Creates an organization through any TeamService client; returns its id.
pub async fn create_org_with(
    team: &mut roster::pb::team_service_client::TeamServiceClient<tonic::transport::Channel>,
    owner: &User,
    name: &str,
) -> String {
    team.create_organization(
        owner.req(pb::CreateOrganizationRequest {
            display_name: name.to_owned(),
            ..Default::default()
        }),
    )
    .await
    .expect("create organization")
    .into_inner()
    .organization
    .expect("an organization")
    .id
}

/// Asks any TeamService client to create a workspace; its id, or the call's status.
pub async fn try_create_workspace_with(
    team: &mut roster::pb::team_service_client::TeamServiceClient<tonic::transport::Channel>,
    actor: &User,
    org: &str,
    name: &str,
) -> Result<String, Status> {
    let response = team
        .create_workspace(actor.req(pb::CreateWorkspaceRequest {
            organization_id: org.to_owned(),
            display_name: name.to_owned(),
            ..Default::default()
        }))
        .await?;
    Ok(response.into_inner().workspace.unwrap().id)
}

/// Asserts a gRPC failure's code, and for INVALID_ARGUMENT that a BadRequest names `field`.
pub fn assert_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, field: Option<&str>) {
    let status = match result {
        Ok(value) => panic!("expected {code:?}, got success: {value:?}"),
        Err(status) => status,
    };
    assert_eq!(status.code(), code, "unexpected status: {status:?}");
    assert!(!status.message().is_empty(), "the message says what to fix");
    if let Some(field) = field {
        use tonic_types::StatusExt;
        let details = status.get_error_details();
        let bad_request = details.bad_request().expect("a google.rpc.BadRequest detail");
        assert!(
            bad_request.field_violations.iter().any(|v| v.field == field),
            "BadRequest names {field}: {bad_request:?}"
        );
    }
}

/// A SetWorkspaceAccess request by `actor` for `user` (NONE removes the grant).
pub fn set_access(
    actor: &User,
    org: &str,
    ws: &str,
    user: &User,
    access: WorkspaceAccess,
) -> tonic::Request<pb::SetWorkspaceAccessRequest> {
    actor.req(pb::SetWorkspaceAccessRequest {
        organization_id: org.to_owned(),
        workspace_id: ws.to_owned(),
        user_id: user.id.clone(),
        access: access as i32,
        ..Default::default()
    })
}

/// Every invitation of `org` in `state` (UNSPECIFIED: all), as `actor` lists them.
pub async fn list_invitations(
    team: &mut TeamServiceClient<Channel>,
    actor: &User,
    org: &str,
    state: pb::InvitationState,
) -> Vec<pb::Invitation> {
    team.list_invitations(actor.req(pb::ListInvitationsRequest {
        organization_id: org.to_owned(),
        state: state as i32,
        page_size: 1000,
        ..Default::default()
    }))
    .await
    .expect("list invitations")
    .into_inner()
    .invitations
}

/// The ErrorInfo of a failed call: its reason and metadata; asserts the domain and that the
/// reason is one the proto's ErrorReason documents.
pub fn error_info(status: &Status) -> (String, std::collections::HashMap<String, String>) {
    use tonic_types::StatusExt;
    let details = status.get_error_details();
    let info = details.error_info().unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.domain, "roster");
    assert!(
        pb::ErrorReason::from_str_name(&info.reason).is_some(),
        "{} is not an ErrorReason of the proto",
        info.reason
    );
    (info.reason.clone(), info.metadata.clone())
}

/// Asserts a failure's code and ErrorInfo reason.
pub fn assert_reason<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, reason: &str) {
    let status = result.expect_err(&format!("expected {code:?} {reason}"));
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(error_info(&status).0, reason, "{status:?}");
}

/// Every text value stored in every table of `db`, as (table, column, value).
pub async fn stored_texts(db: &DatabaseConnection) -> Vec<(String, String, String)> {
    let backend = db.get_database_backend();
    let columns_sql = match backend {
        sea_orm::DbBackend::Postgres => {
            "SELECT table_name::text AS t, column_name::text AS c FROM information_schema.columns \
             WHERE table_schema = 'public' \
             AND data_type IN ('text', 'character varying', 'character', 'json', 'jsonb')"
        }
        _ => {
            "SELECT m.name AS t, p.name AS c FROM sqlite_master m, pragma_table_info(m.name) p \
             WHERE m.type = 'table' AND (upper(p.type) LIKE '%TEXT%' \
             OR upper(p.type) LIKE '%CHAR%' OR upper(p.type) LIKE '%CLOB%' OR p.type = '')"
        }
    };
    let columns =
        db.query_all_raw(Statement::from_string(backend, columns_sql.to_owned())).await.unwrap();
    assert!(!columns.is_empty(), "the database has text columns");
    let mut texts = Vec::new();
    for row in columns {
        let table: String = row.try_get("", "t").unwrap();
        let column: String = row.try_get("", "c").unwrap();
        let sql = format!("SELECT CAST(\"{column}\" AS TEXT) AS v FROM \"{table}\"");
        for value_row in db.query_all_raw(Statement::from_string(backend, sql)).await.unwrap() {
            if let Ok(Some(value)) = value_row.try_get::<Option<String>>("", "v") {
                texts.push((table.clone(), column.clone(), value));
            }
        }
    }
    texts
}
