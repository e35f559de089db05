//! Load benchmark for Authorize. Seeds a data set of a chosen size, starts the `roster` binary on
//! it, drives a closed-loop load of Health/Check, an Authorize mix (about 90 % allowed) and
//! BatchAuthorize of 100 checks, and prints throughput, latency percentiles, the ratios the
//! targets are judged by, and the server's resident memory.
//!
//! The floor is the same Authorize mix sent to a plain tonic server that this program starts
//! (`--serve-floor`, on the same CPU and with the same HTTP/2 settings and allocator), whose
//! Authorize decodes the request and answers at once: Authorize / floor is what Roster's own
//! work costs on top of gRPC itself.
//!
//! `--watch` measures WatchService instead: how fast one stream replays a long change log, and
//! how long a committed change takes to reach a Watch stream on another replica (two servers on
//! one PostgreSQL database; on SQLite, which serves one process, the same one).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};
use rand::{Rng as _, SeedableRng as _};
use roster::pb::access_service_client::AccessServiceClient;
use roster::pb::envoy::{self, authorization_client::AuthorizationClient};
use roster::pb::team_service_client::TeamServiceClient;
use roster::pb::watch_service_client::WatchServiceClient;
use roster::pb::{self, WorkspaceAccess};
use sea_orm::{ConnectionTrait, Database, TransactionTrait};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use uuid::Uuid;

// The server allocates with mimalloc; so does the floor server this binary runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BackendKind {
    Sqlite,
    Postgres,
}

/// Authorize benchmark.
#[derive(Debug, Parser)]
#[command(name = "roster-bench")]
struct Args {
    /// Database to run on.
    #[arg(long, value_enum, default_value = "sqlite")]
    backend: BackendKind,
    /// PostgreSQL server (databases `roster_bench*` are created there, replacing any old ones,
    /// and dropped when the run ends).
    #[arg(
        long,
        env = "ROSTER_TEST_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    postgres_url: String,
    /// Organizations to seed.
    #[arg(long, default_value_t = Shape::SMALL.organizations)]
    organizations: usize,
    /// Members per organization (the first is its Owner, the second an Admin).
    #[arg(long, default_value_t = Shape::SMALL.members)]
    members: usize,
    /// Workspaces per organization.
    #[arg(long, default_value_t = Shape::SMALL.workspaces)]
    workspaces: usize,
    /// Workspace grants per member (total grants = organizations × members × this).
    #[arg(long, default_value_t = Shape::SMALL.grants_per_member)]
    grants_per_member: usize,
    /// Share of the seeded grants (0 to 1) that end, a day after seeding, so that every check
    /// of a grant compares its end with the clock.
    #[arg(long, default_value_t = 0.0, value_parser = share)]
    time_bound_share: f64,
    /// Concurrent callers.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// HTTP/2 connections the callers share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Seconds each phase runs.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Seconds of warm-up before each phase.
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// Times to run the three phases in turn (warm-up only in the first); the figures and
    /// ratios are then those of all rounds together. Short interleaved rounds expose every
    /// phase alike to a shared machine's slow and fast moments.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Grant changes per second made through TeamService while Authorize runs (0 = none).
    #[arg(long, default_value_t = 0)]
    write_rate: u32,
    /// Rows the server's Authorize index may hold (its --authz-cache-entries); server default if
    /// unset.
    #[arg(long)]
    cache_entries: Option<usize>,
    /// Whether the server serves gRPC-Web besides native gRPC (its `--grpc-web`), to measure
    /// what the web layer costs a native call.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    grpc_web: bool,
    /// Pin the server to CPU 1 and the load generator to CPU 0 (with `taskset`), so that the
    /// two do not trade cores between runs; figures then repeat within a few percent.
    #[arg(long)]
    pin: bool,
    /// Also seed the default data set (1,000 grants) into a second database with a server of
    /// its own, run every round on both, and report how Authorize and BatchAuthorize changed
    /// from that size to this one within the same run.
    #[arg(long)]
    compare_small: bool,
    /// Folder for the SQLite file and server log (a temporary one by default).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Measure what a grant change costs instead of the read phases: this many callers change
    /// grants (SetWorkspaceAccess) as fast as the server answers, for `--duration-secs`, and the
    /// server CPU per change is printed.
    #[arg(long)]
    write_cost: Option<usize>,
    /// Measure WatchService instead of Authorize: a replay of `--watch-history` changes on one
    /// stream, then the delay from a change's reply to its event on another replica while
    /// grant changes are made at `--write-rate` (100 per second when 0) for `--duration-secs`.
    #[arg(long)]
    watch: bool,
    /// Changes written straight into the change log before the servers start, for the replay.
    #[arg(long, default_value_t = 100_000)]
    watch_history: u64,
    /// Measure the standard ways to ask instead of the read phases: Envoy's ext_authz Check
    /// (gRPC) and AuthZEN's access evaluation (HTTP/1.1 JSON, on the server's
    /// `--authzen-listen`), each against Authorize on the same checks, in server CPU per call.
    #[arg(long)]
    standard_apis: bool,
    /// Serve the floor on this address instead of benchmarking (started by the benchmark
    /// itself).
    #[arg(long, hide = true)]
    serve_floor: Option<std::net::SocketAddr>,
}

/// How large a data set is.
#[derive(Debug, Clone, Copy)]
struct Shape {
    organizations: usize,
    members: usize,
    workspaces: usize,
    grants_per_member: usize,
    /// Share of the grants that end.
    time_bound_share: f64,
}

fn share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
        _ => Err(format!("{text} is not a share from 0 to 1")),
    }
}

impl Shape {
    /// The default data set: 1,000 grants.
    const SMALL: Shape = Shape {
        organizations: 10,
        members: 100,
        workspaces: 100,
        grants_per_member: 1,
        time_bound_share: 0.0,
    };
}

/// The seeded ids, and who holds what, so that requests can aim at allowed checks.
struct DataSet {
    orgs: Vec<Uuid>,
    workspaces: Vec<Vec<Uuid>>,
    members: usize,
    grants_per_member: usize,
    /// Grants seeded.
    grants: i64,
}

impl DataSet {
    fn user(org: usize, member: usize) -> String {
        format!("user-{org}-{member}")
    }

    /// The grant seeded for member `m` on workspace `w`, if any.
    fn seeded(&self, org: usize, m: usize, w: usize) -> Option<WorkspaceAccess> {
        (0..self.grants_per_member)
            .map(|slot| self.grant(org, m, slot))
            .find(|g| g.0 == w)
            .map(|g| g.1)
    }

    /// The workspaces member `m` holds grants on: a deterministic spread, WRITE on even slots.
    fn grant(&self, org: usize, m: usize, slot: usize) -> (usize, WorkspaceAccess) {
        let count = self.workspaces[org].len();
        let index = (m * 7 + slot * 13) % count;
        let access =
            if slot.is_multiple_of(2) { WorkspaceAccess::Write } else { WorkspaceAccess::Read };
        (index, access)
    }
}

/// Inserts `rows` into `into` ("table (columns)") a few hundred rows per statement.
async fn insert_rows(
    db: &impl ConnectionTrait,
    into: &str,
    rows: Vec<Vec<sea_orm::Value>>,
) -> anyhow::Result<()> {
    let backend = db.get_database_backend();
    for chunk in rows.chunks(500) {
        let mut values = Vec::new();
        let mut tuples = Vec::new();
        for row in chunk {
            let mut marks = Vec::new();
            for value in row {
                values.push(value.clone());
                marks.push(match backend {
                    sea_orm::DbBackend::Postgres => format!("${}", values.len()),
                    _ => "?".to_owned(),
                });
            }
            tuples.push(format!("({})", marks.join(", ")));
        }
        let sql = format!("INSERT INTO {into} VALUES {}", tuples.join(", "));
        db.execute_raw(sea_orm::Statement::from_sql_and_values(backend, sql, values)).await?;
    }
    Ok(())
}

async fn seed(url: &str, shape: Shape) -> anyhow::Result<DataSet> {
    let db = Database::connect(url).await.context("connecting to the benchmark database")?;
    let orgs: Vec<Uuid> = (0..shape.organizations).map(|_| Uuid::now_v7()).collect();
    let workspaces: Vec<Vec<Uuid>> =
        orgs.iter().map(|_| (0..shape.workspaces).map(|_| Uuid::now_v7()).collect()).collect();
    let mut data = DataSet {
        orgs,
        workspaces,
        members: shape.members,
        grants_per_member: shape.grants_per_member,
        grants: 0,
    };
    let started = Instant::now();
    let day_ahead = chrono::Utc::now().timestamp_micros() + 86_400_000_000;
    let mut time_bound = 0usize;
    let tx = db.begin().await?;
    // Plain SQL against the schema the server migrated: the benchmark uses no internals.
    for (o, org) in data.orgs.iter().enumerate() {
        // Seeded rows, as if made before the change log (revision 0).
        let organization =
            vec![(*org).into(), format!("Org {o}").into(), (7 * 86400i64).into(), 0i64.into()];
        insert_rows(
            &tx,
            "organizations (id, display_name, invitation_ttl_secs, create_time, update_time, \
             revision)",
            vec![[organization, vec![0i64.into(), 0i64.into()]].concat()],
        )
        .await?;
        let members = (0..shape.members).map(|m| {
            let role = match m {
                0 => "owner",
                1 => "admin",
                _ => "member",
            };
            let user = DataSet::user(o, m);
            let email = format!("{user}@bench.example");
            vec![(*org).into(), user.into(), email.into(), role.into(), 0i64.into()]
        });
        insert_rows(
            &tx,
            "members (organization_id, user_id, email, role, create_time)",
            members.collect(),
        )
        .await?;
        let workspaces = data.workspaces[o]
            .iter()
            .map(|ws| vec![(*ws).into(), (*org).into(), "ws".into(), 0i64.into()]);
        insert_rows(
            &tx,
            "workspaces (id, organization_id, display_name, create_time)",
            workspaces.collect(),
        )
        .await?;
        let mut grants = Vec::new();
        for m in 0..shape.members {
            let mut seen = std::collections::HashSet::new();
            for slot in 0..shape.grants_per_member {
                let (index, access) = data.grant(o, m, slot);
                if !seen.insert(index) {
                    continue;
                }
                let access = if access == WorkspaceAccess::Write { "write" } else { "read" };
                // A spread over members and slots, so that every organization holds both kinds.
                let ends = ((m * 37 + slot * 11 + o) % 100)
                    < (shape.time_bound_share * 100.0).round() as usize;
                let (end, reason) = if ends {
                    time_bound += 1;
                    (Some(day_ahead), Some("benchmark".to_owned()))
                } else {
                    (None, None)
                };
                grants.push(vec![
                    (*org).into(),
                    data.workspaces[o][index].into(),
                    DataSet::user(o, m).into(),
                    access.into(),
                    end.into(),
                    reason.into(),
                ]);
            }
        }
        insert_rows(
            &tx,
            "workspace_grants (organization_id, workspace_id, user_id, access, expire_time, reason)",
            grants,
        )
        .await?;
    }
    tx.commit().await?;
    data.grants = {
        let row = db
            .query_one_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                "SELECT COUNT(*) AS n FROM workspace_grants",
            ))
            .await?
            .context("count")?;
        row.try_get("", "n")?
    };
    println!(
        "seeded {} organizations, {} members, {} workspaces, {} grants ({} of them ending) in \
         {:.1?}",
        shape.organizations,
        shape.organizations * shape.members,
        shape.organizations * shape.workspaces,
        data.grants,
        time_bound,
        started.elapsed()
    );
    db.close().await?;
    Ok(data)
}

const READS: &[&str] = &["workspace.read", "sources.read", "datasets.read", "executions.read"];
const WRITES: &[&str] = &["sources.create", "syncs.trigger", "datasets.configure"];

fn random_check(data: &DataSet, rng: &mut impl rand::Rng) -> pb::AuthorizeRequest {
    let o = rng.random_range(0..data.orgs.len());
    let m = rng.random_range(0..data.members);
    let (workspace, permission) = if rng.random_bool(0.9) && data.grants_per_member > 0 {
        // A workspace the member holds a grant on, with a permission its level allows.
        let slot = rng.random_range(0..data.grants_per_member);
        let (index, access) = data.grant(o, m, slot);
        let permission = if access == WorkspaceAccess::Write && rng.random_bool(0.5) {
            WRITES[rng.random_range(0..WRITES.len())]
        } else {
            READS[rng.random_range(0..READS.len())]
        };
        (data.workspaces[o][index], permission)
    } else {
        let index = rng.random_range(0..data.workspaces[o].len());
        (data.workspaces[o][index], WRITES[rng.random_range(0..WRITES.len())])
    };
    pb::AuthorizeRequest {
        consistency: None,
        user_id: DataSet::user(o, m),
        organization_id: data.orgs[o].to_string(),
        workspace_id: workspace.to_string(),
        permission: permission.to_owned(),
    }
}

#[derive(Clone, Copy)]
enum Phase {
    Health,
    Authorize,
    Batch,
    /// Authorize sent to the floor server.
    Floor,
    /// The same checks as Envoy's ext_authz Check.
    ExtAuthz,
    /// The same checks as AuthZEN access evaluations.
    Authzen,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Health => "health",
            Phase::Authorize => "authorize",
            Phase::Batch => "batch(100)",
            Phase::Floor => "floor",
            Phase::ExtAuthz => "ext_authz",
            Phase::Authzen => "authzen",
        }
    }
}

struct Outcome {
    requests: usize,
    allowed: usize,
    decisions: usize,
    errors: usize,
    latencies_us: Vec<u64>,
    elapsed: Duration,
    /// Grant changes made during the phase.
    writes: usize,
    /// CPU time the server spent during the phase.
    server_cpu: Duration,
}

impl Outcome {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let index = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[index] as f64 / 1000.0
    }

    /// Both measurements as one: their requests over their summed time.
    fn merge(mut self, other: Outcome) -> Outcome {
        self.requests += other.requests;
        self.allowed += other.allowed;
        self.decisions += other.decisions;
        self.errors += other.errors;
        self.latencies_us.extend(other.latencies_us);
        self.latencies_us.sort_unstable();
        self.elapsed += other.elapsed;
        self.writes += other.writes;
        self.server_cpu += other.server_cpu;
        self
    }

    /// Server CPU time per request, in microseconds: what a request costs the server whether
    /// or not the load generator kept it busy.
    fn cpu_per_request_us(&self) -> f64 {
        self.server_cpu.as_secs_f64() * 1e6 / self.requests as f64
    }

    fn print(&self, name: &str) {
        println!(
            "{name:<11} {:>9.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  p99.9 {:>7.3} ms  server CPU {:>6.1} µs/req  errors {}{}{}",
            self.rps(),
            self.percentile(0.50),
            self.percentile(0.99),
            self.percentile(0.999),
            self.cpu_per_request_us(),
            self.errors,
            if self.decisions > 0 {
                format!("  allowed {:.1} %", 100.0 * self.allowed as f64 / self.decisions as f64)
            } else {
                String::new()
            },
            if self.writes > 0 { format!("  writes {}", self.writes) } else { String::new() },
        );
    }
}

/// Requests built before the load starts, so that the load generator, which shares the machine
/// with the server, spends its time sending rather than formatting ids.
struct Pools {
    checks: Vec<pb::AuthorizeRequest>,
    batches: Vec<pb::BatchAuthorizeRequest>,
    /// The first checks as Envoy sends them, with `--standard-apis`.
    envoy: Vec<envoy::CheckRequest>,
    /// The first checks as AuthZEN evaluation bodies, with `--standard-apis`.
    authzen: Vec<Vec<u8>>,
    /// Where AuthZEN is served, with `--standard-apis`.
    authzen_addr: Option<String>,
}

/// A check as Envoy's ext_authz filter sends it for a route guarded by its permission: the
/// user in the JWT filter's verified payload, the scope in the route's context extensions.
fn envoy_check(check: &pb::AuthorizeRequest) -> envoy::CheckRequest {
    use prost_types::{Struct, Value, value::Kind};
    let text = |s: &str| Value { kind: Some(Kind::StringValue(s.to_owned())) };
    let payload = Struct { fields: [("sub".to_owned(), text(&check.user_id))].into() };
    let namespace = Struct {
        fields: [("jwt_payload".to_owned(), Value { kind: Some(Kind::StructValue(payload)) })]
            .into(),
    };
    envoy::CheckRequest {
        attributes: Some(envoy::AttributeContext {
            request: Some(envoy::attribute_context::Request {
                http: Some(envoy::attribute_context::HttpRequest {
                    method: "GET".into(),
                    path: "/sources".into(),
                    ..Default::default()
                }),
            }),
            context_extensions: [
                ("permission".to_owned(), check.permission.clone()),
                ("organization_id".to_owned(), check.organization_id.clone()),
                ("workspace_id".to_owned(), check.workspace_id.clone()),
            ]
            .into(),
            metadata_context: Some(envoy::Metadata {
                filter_metadata: [("envoy.filters.http.jwt_authn".to_owned(), namespace)].into(),
            }),
        }),
    }
}

/// A check as an AuthZEN access evaluation body.
fn authzen_body(check: &pb::AuthorizeRequest) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "subject": {"type": "user", "id": check.user_id},
        "action": {"name": check.permission},
        "resource": {
            "type": "workspace",
            "id": check.workspace_id,
            "properties": {"organization_id": check.organization_id},
        },
    }))
    .unwrap_or_default()
}

fn build_pools(data: &DataSet) -> Pools {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let checks: Vec<pb::AuthorizeRequest> =
        (0..100_000).map(|_| random_check(data, &mut rng)).collect();
    let batches = (0..1000)
        .map(|b| pb::BatchAuthorizeRequest {
            consistency: None,
            checks: checks[b * 100..(b + 1) * 100].to_vec(),
        })
        .collect();
    Pools { checks, batches, envoy: Vec::new(), authzen: Vec::new(), authzen_addr: None }
}

/// Checks of the standard ways to ask, built from the first of `pools`' checks.
fn add_standard_pools(pools: &mut Pools, authzen_addr: String) {
    let some = &pools.checks[..20_000.min(pools.checks.len())];
    pools.envoy = some.iter().map(envoy_check).collect();
    pools.authzen = some.iter().map(authzen_body).collect();
    pools.authzen_addr = Some(authzen_addr);
}

/// An HTTP/1.1 connection to the AuthZEN listener, kept open between requests.
async fn authzen_connection(
    addr: &str,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<http_body_util::Full<hyper::body::Bytes>>>
{
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// One AuthZEN evaluation on `sender`; its decision, or `None` for a failure.
async fn authzen_evaluate(
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Full<hyper::body::Bytes>>,
    addr: &str,
    body: &[u8],
) -> Option<bool> {
    use http_body_util::BodyExt as _;
    sender.ready().await.ok()?;
    let request = hyper::Request::post("/access/v1/evaluation")
        .header("host", addr)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(hyper::body::Bytes::copy_from_slice(body)))
        .ok()?;
    let response = sender.send_request(request).await.ok()?;
    if response.status() != hyper::StatusCode::OK {
        return None;
    }
    let bytes = response.into_body().collect().await.ok()?.to_bytes();
    let answer: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    answer.get("decision")?.as_bool()
}

/// Whether the server's metrics at `addr` say its Authorize index is in use.
async fn index_in_use(addr: &str) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else { return false };
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut page = String::new();
    let _ = stream.read_to_string(&mut page).await;
    page.lines().any(|line| line == "roster_authz_index_in_use 1")
}

/// Sends one check to every organization, so that the server has loaded its whole index before
/// anything is measured (a cold load is a one-off cost, reported on its own, which a short
/// warm-up of random checks might not finish). Returns how long that took.
async fn load_index(channel: &Channel, orgs: &[Uuid]) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut access = AccessServiceClient::new(channel.clone());
    for org in orgs {
        let request = pb::AuthorizeRequest {
            user_id: DataSet::user(0, 0),
            organization_id: org.to_string(),
            workspace_id: String::new(),
            permission: "organization.read".to_owned(),
            consistency: None,
        };
        access.authorize(request).await.context("loading the index")?;
    }
    Ok(started.elapsed())
}

async fn drive(
    phase: Phase,
    channels: &[Channel],
    pools: &Arc<Pools>,
    args: &Args,
    measure: Duration,
) -> Outcome {
    let deadline = Instant::now() + measure;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..args.concurrency {
        let channel = channels[worker % channels.len()].clone();
        let pools = pools.clone();
        tasks.spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(worker as u64 + 1);
            let mut health = HealthClient::new(channel.clone());
            let mut envoy = AuthorizationClient::new(channel.clone());
            let mut access = AccessServiceClient::new(channel);
            let authzen_addr = pools.authzen_addr.clone().unwrap_or_default();
            let mut authzen = match phase {
                Phase::Authzen => authzen_connection(&authzen_addr).await.ok(),
                _ => None,
            };
            let (mut latencies, mut allowed, mut decisions, mut errors) = (Vec::new(), 0, 0, 0);
            while Instant::now() < deadline {
                let started = Instant::now();
                let ok = match phase {
                    Phase::Health => {
                        health.check(HealthCheckRequest { service: String::new() }).await.is_ok()
                    }
                    Phase::Authorize | Phase::Floor => match access
                        .authorize(pools.checks[rng.random_range(0..pools.checks.len())].clone())
                        .await
                    {
                        // The floor decides nothing.
                        Ok(r) if matches!(phase, Phase::Authorize) => {
                            decisions += 1;
                            allowed += usize::from(r.into_inner().allowed);
                            true
                        }
                        Ok(_) => true,
                        Err(_) => false,
                    },
                    Phase::ExtAuthz => {
                        let check = pools.envoy[rng.random_range(0..pools.envoy.len())].clone();
                        match envoy.check(check).await {
                            Ok(r) => {
                                decisions += 1;
                                let ok = matches!(
                                    r.into_inner().http_response,
                                    Some(envoy::check_response::HttpResponse::OkResponse(_))
                                );
                                allowed += usize::from(ok);
                                true
                            }
                            Err(_) => false,
                        }
                    }
                    Phase::Authzen => {
                        let body = &pools.authzen[rng.random_range(0..pools.authzen.len())];
                        let decided = match authzen.as_mut() {
                            Some(sender) => authzen_evaluate(sender, &authzen_addr, body).await,
                            None => None,
                        };
                        if decided.is_none() {
                            // A broken connection is replaced for the next request.
                            authzen = authzen_connection(&authzen_addr).await.ok();
                        }
                        decisions += usize::from(decided.is_some());
                        allowed += usize::from(decided == Some(true));
                        decided.is_some()
                    }
                    Phase::Batch => {
                        let batch = pools.batches[rng.random_range(0..pools.batches.len())].clone();
                        match access.batch_authorize(batch).await {
                            Ok(r) => {
                                let results = r.into_inner().results;
                                decisions += results.len();
                                allowed += results.iter().filter(|d| d.allowed).count();
                                true
                            }
                            Err(_) => false,
                        }
                    }
                };
                latencies.push(started.elapsed().as_micros() as u64);
                errors += usize::from(!ok);
            }
            (latencies, allowed, decisions, errors)
        });
    }
    let started = Instant::now();
    let mut outcome = Outcome {
        requests: 0,
        allowed: 0,
        decisions: 0,
        errors: 0,
        latencies_us: Vec::new(),
        elapsed: Duration::ZERO,
        writes: 0,
        server_cpu: Duration::ZERO,
    };
    while let Some(result) = tasks.join_next().await {
        let (latencies, allowed, decisions, errors) = result.expect("a load task panicked");
        outcome.requests += latencies.len();
        outcome.latencies_us.extend(latencies);
        outcome.allowed += allowed;
        outcome.decisions += decisions;
        outcome.errors += errors;
    }
    outcome.elapsed = started.elapsed().max(measure);
    outcome.latencies_us.sort_unstable();
    outcome
}

/// Grants as the writer has left them, keyed by organization, member and workspace index;
/// anything absent is as seeded.
type Written = std::sync::Mutex<HashMap<(usize, usize, usize), WorkspaceAccess>>;

/// Changes grants at `rate` per second until stopped; returns how many changes committed. Every
/// request changes a grant (READ becomes WRITE and back, a missing one becomes READ), so that
/// each is a real write however many phases have run.
async fn writer(
    addr: String,
    data: Arc<DataSet>,
    written: Arc<Written>,
    seed: u64,
    rate: u32,
    stop: Arc<AtomicBool>,
) -> usize {
    let Ok(channel) = Channel::from_shared(addr).expect("address").connect().await else {
        return 0;
    };
    let mut team = TeamServiceClient::new(channel);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Rate 0: as fast as the server answers.
    let mut interval =
        (rate > 0).then(|| tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate))));
    let mut writes = 0;
    while !stop.load(Ordering::Relaxed) {
        if let Some(interval) = &mut interval {
            interval.tick().await;
        }
        let o = rng.random_range(0..data.orgs.len());
        let m = rng.random_range(2..data.members.max(3));
        // One of the member's seeded grants, so that every write flips a grant that exists and
        // the data set keeps its size.
        let slot = rng.random_range(0..data.grants_per_member.max(1));
        let w = data.grant(o, m, slot).0;
        let access = {
            let mut written = written.lock().unwrap_or_else(|p| p.into_inner());
            let current = written.get(&(o, m, w)).copied().or_else(|| data.seeded(o, m, w));
            let next = match current {
                Some(WorkspaceAccess::Read) => WorkspaceAccess::Write,
                _ => WorkspaceAccess::Read,
            };
            written.insert((o, m, w), next);
            next
        };
        let mut request = tonic::Request::new(pb::SetWorkspaceAccessRequest {
            organization_id: data.orgs[o].to_string(),
            workspace_id: data.workspaces[o][w].to_string(),
            user_id: DataSet::user(o, m),
            access: access as i32,
            ..Default::default()
        });
        request.metadata_mut().insert("x-user-id", DataSet::user(o, 0).parse().expect("ascii"));
        if team.set_workspace_access(request).await.is_ok() {
            writes += 1;
        }
    }
    writes
}

/// Time process `pid` has spent on a CPU, summed over its threads (from the scheduler's
/// nanosecond counters, finer than the tick-based utime and stime).
fn server_cpu(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Duration::ZERO };
    let nanos = tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(nanos)
}

fn resident_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Pins this process to `cpu`.
fn pin_self(cpu: u32) -> anyhow::Result<()> {
    let pid = std::process::id();
    let status = Command::new("taskset")
        .args(["--all-tasks", "--pid", "--cpu-list", &cpu.to_string(), &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .context("running taskset (from util-linux) for --pin")?;
    if !status.success() {
        bail!("taskset could not pin process {pid} to CPU {cpu}");
    }
    Ok(())
}

fn start_server(
    database_url: &str,
    addr: &str,
    metrics: &str,
    dir: &std::path::Path,
    args: &Args,
    cpu: Option<u32>,
    authzen: Option<&str>,
) -> anyhow::Result<Child> {
    let binary = std::env::current_exe()?.with_file_name("roster");
    if !binary.exists() {
        bail!("{} not found; build it with `cargo build --release`", binary.display());
    }
    let log = std::fs::File::create(dir.join("server.log"))?;
    // Started on its CPU (taskset execs the server, so the pid is the server's) rather than
    // moved there later, so that its runtime sizes itself to that CPU.
    let mut command = match cpu {
        Some(cpu) => {
            let mut taskset = Command::new("taskset");
            taskset.args(["--cpu-list", &cpu.to_string()]).arg(binary);
            taskset
        }
        None => Command::new(binary),
    };
    if let Some(entries) = args.cache_entries {
        command.args(["--authz-cache-entries", &entries.to_string()]);
    }
    command.args(["--grpc-web", &args.grpc_web.to_string()]);
    if let Some(authzen) = authzen {
        command.args(["--authzen-listen", authzen]);
    }
    command
        .args(["--listen", addr, "--metrics-listen", metrics])
        .args(["--database-url", database_url, "--mail-dir"])
        .arg(dir.join("mail"))
        .args(["--log-format", "json", "--max-in-flight", "100000"])
        .env("RUST_LOG", "warn,roster::app=info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting the server (with taskset, from util-linux, for --pin)")
}

/// AccessService answering every Authorize at once with an empty decision: the work of gRPC
/// alone, for the floor.
struct FloorService;

#[tonic::async_trait]
impl pb::access_service_server::AccessService for FloorService {
    async fn authorize(
        &self,
        _request: tonic::Request<pb::AuthorizeRequest>,
    ) -> Result<tonic::Response<pb::AuthorizeResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::AuthorizeResponse::default()))
    }

    async fn batch_authorize(
        &self,
        _request: tonic::Request<roster::grpc::batch::BatchChecks>,
    ) -> Result<tonic::Response<pb::BatchAuthorizeResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("the floor serves Authorize only"))
    }

    async fn list_permissions(
        &self,
        _request: tonic::Request<pb::ListPermissionsRequest>,
    ) -> Result<tonic::Response<pb::ListPermissionsResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("the floor serves Authorize only"))
    }

    async fn list_granted_permissions(
        &self,
        _request: tonic::Request<pb::ListGrantedPermissionsRequest>,
    ) -> Result<tonic::Response<pb::ListGrantedPermissionsResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("the floor serves Authorize only"))
    }

    async fn list_accessible_workspaces(
        &self,
        _request: tonic::Request<pb::ListAccessibleWorkspacesRequest>,
    ) -> Result<tonic::Response<pb::ListAccessibleWorkspacesResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("the floor serves Authorize only"))
    }
}

/// Serves the floor until killed, with the HTTP/2 settings Roster's listener uses by default.
async fn serve_floor(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let defaults = roster::config::Config::defaults();
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .max_concurrent_streams(defaults.max_streams_per_connection)
        .http2_keepalive_interval(Some(Duration::from_secs(defaults.http2_keepalive_interval_secs)))
        .http2_keepalive_timeout(Some(Duration::from_secs(defaults.http2_keepalive_timeout_secs)))
        .http2_max_header_list_size(defaults.max_header_list_bytes)
        .add_service(pb::access_service_server::AccessServiceServer::new(FloorService))
        .serve(addr)
        .await
        .context("serving the floor")
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(addr) = args.serve_floor {
        return tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(serve_floor(addr));
    }
    // Pinned before the runtime starts, so that it sizes its worker pool to the one CPU it has
    // (as it would under a container's CPU limit) instead of two threads taking turns on it.
    if args.pin {
        pin_self(0)?;
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(async {
        let postgres =
            matches!(args.backend, BackendKind::Postgres).then(|| args.postgres_url.clone());
        let outcome = run(args).await;
        // The servers are stopped by now (their handles were dropped); the data sets go too, so
        // that runs leave nothing behind on a shared server.
        if let Some(url) = postgres {
            drop_databases(&url).await;
        }
        outcome
    })
}

/// Drops the databases the benchmark creates, those that exist.
async fn drop_databases(url: &str) {
    let Ok(admin) = Database::connect(url).await else { return };
    for database in BENCH_DATABASES {
        let dropped = admin
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
            .await;
        if let Err(err) = dropped {
            eprintln!("could not drop the database {database}: {err}");
        }
    }
    let _ = admin.close().await;
}

/// Every database the benchmark creates on PostgreSQL.
const BENCH_DATABASES: [&str; 3] = ["roster_bench", "roster_bench_small", "roster_bench_watch"];

/// The floor server and the connections to it.
struct Floor {
    server: Child,
    channels: Vec<Channel>,
    total: Option<Outcome>,
}

impl Floor {
    async fn start(args: &Args) -> anyhow::Result<Self> {
        let addr = format!(
            "127.0.0.1:{}",
            std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()
        );
        let binary = std::env::current_exe()?;
        let mut command = if args.pin {
            let mut taskset = Command::new("taskset");
            taskset.args(["--cpu-list", "1"]).arg(binary);
            taskset
        } else {
            Command::new(binary)
        };
        let mut server = command
            .args(["--serve-floor", &addr])
            .stdout(Stdio::null())
            .spawn()
            .context("starting the floor server")?;
        let endpoint = format!("http://{addr}");
        let mut channels = Vec::new();
        for _ in 0..100 {
            if let Ok(channel) = Channel::from_shared(endpoint.clone())?.connect().await {
                channels.push(channel);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if channels.is_empty() {
            let _ = server.kill();
            bail!("the floor server did not start");
        }
        for _ in 1..args.connections.max(1) {
            channels.push(Channel::from_shared(endpoint.clone())?.connect().await?);
        }
        Ok(Floor { server, channels, total: None })
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// A seeded database and the server started on it.
struct Target {
    data: Arc<DataSet>,
    pools: Arc<Pools>,
    server: Child,
    endpoint: String,
    channels: Vec<Channel>,
    written: Arc<Written>,
    dir: PathBuf,
    /// Each phase's outcomes over all rounds.
    totals: [Option<Outcome>; 3],
}

impl Target {
    fn name(&self) -> String {
        // Thousands separated, as the README writes them.
        let digits = self.data.grants.to_string();
        let mut grouped = String::new();
        for (i, digit) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(digit);
        }
        format!("{grouped} grants")
    }

    /// Seeds a database of `shape` (a SQLite file in `dir`, or the PostgreSQL database
    /// `database`), starts a server on it and connects to it.
    async fn start(
        args: &Args,
        shape: Shape,
        dir: PathBuf,
        database: &str,
    ) -> anyhow::Result<Self> {
        let database_url = fresh_database(args, &dir, database).await?;
        let data = Arc::new(seed(&database_url, shape).await?);
        let mut pools = build_pools(&data);

        let free_port = || -> anyhow::Result<u16> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
        };
        let addr = format!("127.0.0.1:{}", free_port()?);
        let metrics = format!("127.0.0.1:{}", free_port()?);
        let cpu = args.pin.then_some(1);
        let authzen = format!("127.0.0.1:{}", free_port()?);
        let authzen = args.standard_apis.then_some(authzen.as_str());
        let mut server = start_server(&database_url, &addr, &metrics, &dir, args, cpu, authzen)?;
        if let Some(authzen) = authzen {
            add_standard_pools(&mut pools, authzen.to_owned());
        }
        let pools = Arc::new(pools);
        let endpoint = format!("http://{addr}");
        let mut channels = Vec::new();
        for _ in 0..100 {
            if let Ok(channel) = Channel::from_shared(endpoint.clone())?.connect().await {
                channels.push(channel);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if channels.is_empty() {
            let _ = server.kill();
            bail!("the server did not start; see {}", dir.join("server.log").display());
        }
        for _ in 1..args.connections.max(1) {
            channels.push(Channel::from_shared(endpoint.clone())?.connect().await?);
        }
        // On PostgreSQL the index is bypassed until the server's notification feed is up;
        // checks sent before that read the database and load nothing.
        let started = Instant::now();
        while !index_in_use(&metrics).await {
            if started.elapsed() > Duration::from_secs(30) {
                let _ = server.kill();
                bail!("the server's index did not come into use within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let loaded = load_index(&channels[0], &data.orgs).await?;
        println!(
            "index: {} organizations loaded by their first checks in {:.1?}",
            data.orgs.len(),
            loaded
        );
        // Health checks carry no credential, and the server moves a connection that has carried
        // only such calls to a new one after its handshake timeout; a check on each connection
        // identifies it, as a real caller's first call would.
        for channel in &channels[1..] {
            load_index(channel, &data.orgs[..1]).await?;
        }
        Ok(Target {
            data,
            pools,
            server,
            endpoint,
            channels,
            written: Arc::new(Written::default()),
            dir,
            totals: Default::default(),
        })
    }

    /// Prints the figures of all rounds and the ratios the targets are judged by, then stops
    /// the server.
    fn report(&mut self, rounds: usize, floor: &Outcome) -> anyhow::Result<()> {
        let [Some(health), Some(authorize), Some(batch)] = &self.totals else {
            bail!("no phase ran");
        };
        if rounds > 1 {
            println!("all rounds, {}:", self.name());
            for (phase, outcome) in PHASES.iter().zip([health, authorize, batch]) {
                outcome.print(phase.name());
            }
        }
        println!(
            "ratio authorize/floor throughput:  {:.2} (target >= 0.85, goal 0.90); server CPU per request {:.1} µs against {:.1} µs",
            authorize.rps() / floor.rps(),
            authorize.cpu_per_request_us(),
            floor.cpu_per_request_us(),
        );
        println!(
            "ratio authorize/health throughput: {:.2} (target >= 0.85)",
            authorize.rps() / health.rps()
        );
        println!(
            "ratio authorize/health p99:        {:.2} (target <= 1.5)",
            authorize.percentile(0.99) / health.percentile(0.99)
        );
        println!(
            "batch checks/s over authorize/s:   {:.1} (target >= 20; {:.0} checks/s)",
            batch.rps() * 100.0 / authorize.rps(),
            batch.rps() * 100.0
        );
        // The same comparisons in server CPU time, which the generator's share of the machine
        // does not move: what the server would do with a CPU to itself.
        println!(
            "server CPU per request: health {:.1} µs, authorize {:.1} µs ({:.2}), per batched check {:.2} µs ({:.1}x less than single)",
            health.cpu_per_request_us(),
            authorize.cpu_per_request_us(),
            health.cpu_per_request_us() / authorize.cpu_per_request_us(),
            batch.cpu_per_request_us() / 100.0,
            authorize.cpu_per_request_us() * 100.0 / batch.cpu_per_request_us(),
        );
        match resident_mib(self.server.id()) {
            Some(mib) => println!("server resident memory: {mib:.1} MiB"),
            None => println!("server resident memory: unavailable"),
        }
        // A graceful stop makes the server log its index counters.
        let _ = Command::new("kill").args(["-TERM", &self.server.id().to_string()]).status();
        let _ = self.server.wait();
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        match log.lines().find(|line| line.contains("authorization cache")) {
            Some(line) => println!("server index counters: {line}"),
            None => println!("server index counters: not logged"),
        }
        Ok(())
    }
}

// A run that fails half-way must not leave its servers running.
impl Drop for Target {
    fn drop(&mut self) {
        if matches!(self.server.try_wait(), Ok(None)) {
            let _ = self.server.kill();
            let _ = self.server.wait();
        }
    }
}

const PHASES: [Phase; 3] = [Phase::Health, Phase::Authorize, Phase::Batch];

/// How much `to` differs from `from`, in percent.
fn change(from: f64, to: f64) -> f64 {
    (to / from - 1.0) * 100.0
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.watch {
        return run_watch(args).await;
    }
    let temp = tempfile_dir()?;
    let dir = args.work_dir.clone().unwrap_or_else(|| temp.clone());
    let shape = Shape {
        organizations: args.organizations,
        members: args.members,
        workspaces: args.workspaces,
        grants_per_member: args.grants_per_member,
        time_bound_share: args.time_bound_share,
    };
    let mut targets = Vec::new();
    if args.compare_small {
        targets.push(
            Target::start(&args, Shape::SMALL, dir.join("small"), "roster_bench_small").await?,
        );
    }
    targets.push(Target::start(&args, shape, dir, "roster_bench").await?);
    if let Some(callers) = args.write_cost {
        return write_cost(&mut targets, callers, Duration::from_secs(args.duration_secs)).await;
    }
    if args.standard_apis {
        return standard_apis(&mut targets, &args).await;
    }
    let mut floor = Floor::start(&args).await?;
    println!(
        "load: {} callers over {} HTTP/2 connections, {} s per phase after {} s warm-up, {} grant writes/s{}",
        args.concurrency,
        args.connections,
        args.duration_secs,
        args.warmup_secs,
        args.write_rate,
        if args.pin { ", servers on CPU 1 and load generator on CPU 0" } else { "" }
    );
    if targets.len() > 1 {
        println!("each round runs on both data sets in turn");
    }

    let measure = Duration::from_secs(args.duration_secs);
    let warmup = Duration::from_secs(args.warmup_secs);
    let labelled = targets.len() > 1;
    for round in 1..=args.rounds.max(1) {
        let floor_pools = &targets[0].pools;
        if round == 1 && !warmup.is_zero() {
            drive(Phase::Floor, &floor.channels, floor_pools, &args, warmup).await;
        }
        let cpu_before = server_cpu(floor.server.id());
        let mut outcome = drive(Phase::Floor, &floor.channels, floor_pools, &args, measure).await;
        outcome.server_cpu = server_cpu(floor.server.id()).saturating_sub(cpu_before);
        if args.rounds > 1 {
            print!("round {round:<3} ");
        }
        if labelled {
            print!("{:>17}  ", "");
        }
        outcome.print(Phase::Floor.name());
        floor.total = Some(match floor.total.take() {
            Some(sum) => sum.merge(outcome),
            None => outcome,
        });
        for target in &mut targets {
            let name = target.name();
            for (phase, total) in PHASES.into_iter().zip(&mut target.totals) {
                let stop = Arc::new(AtomicBool::new(false));
                let writes = (args.write_rate > 0 && !matches!(phase, Phase::Health)).then(|| {
                    tokio::spawn(writer(
                        target.endpoint.clone(),
                        target.data.clone(),
                        target.written.clone(),
                        // A different sequence in every phase of every round.
                        (round * PHASES.len() + phase as usize) as u64,
                        args.write_rate,
                        stop.clone(),
                    ))
                });
                // Later rounds find the server and connections warm.
                if round == 1 && !warmup.is_zero() {
                    drive(phase, &target.channels, &target.pools, &args, warmup).await;
                }
                let cpu_before = server_cpu(target.server.id());
                let mut outcome =
                    drive(phase, &target.channels, &target.pools, &args, measure).await;
                outcome.server_cpu = server_cpu(target.server.id()).saturating_sub(cpu_before);
                stop.store(true, Ordering::Relaxed);
                if let Some(task) = writes {
                    outcome.writes = task.await.unwrap_or(0);
                }
                if args.rounds > 1 {
                    print!("round {round:<3} ");
                }
                if labelled {
                    print!("{name:>17}  ");
                }
                outcome.print(phase.name());
                *total = Some(match total.take() {
                    Some(sum) => sum.merge(outcome),
                    None => outcome,
                });
            }
        }
    }
    let Some(floor_total) = floor.total.take() else { bail!("the floor phase did not run") };
    if args.rounds > 1 {
        println!("all rounds:");
        floor_total.print(Phase::Floor.name());
    }
    for target in &mut targets {
        if labelled {
            println!("== {}", target.name());
        }
        target.report(args.rounds, &floor_total)?;
    }
    if let [small, large] = &targets[..]
        && let ([_, Some(small_authorize), Some(small_batch)], [_, Some(authorize), Some(batch)]) =
            (&small.totals, &large.totals)
    {
        println!("== from {} to {} (targets: within ±20 %)", small.name(), large.name());
        println!(
            "authorize throughput {:+.1} %, p99 {:+.1} %; batch checks/s {:+.1} %, p99 {:+.1} %",
            change(small_authorize.rps(), authorize.rps()),
            change(small_authorize.percentile(0.99), authorize.percentile(0.99)),
            change(small_batch.rps(), batch.rps()),
            change(small_batch.percentile(0.99), batch.percentile(0.99)),
        );
    }
    Ok(())
}

/// Runs Authorize, ext_authz Check and AuthZEN evaluation on the same mix of checks (the latter
/// two on the first 20,000 of Authorize's), in turn for each round, and prints what each costs
/// the server against Authorize.
async fn standard_apis(targets: &mut [Target], args: &Args) -> anyhow::Result<()> {
    let measure = Duration::from_secs(args.duration_secs);
    let warmup = Duration::from_secs(args.warmup_secs);
    let phases = [Phase::Authorize, Phase::ExtAuthz, Phase::Authzen];
    for target in targets {
        let mut totals: [Option<Outcome>; 3] = Default::default();
        for round in 1..=args.rounds.max(1) {
            for (phase, total) in phases.into_iter().zip(&mut totals) {
                if round == 1 && !warmup.is_zero() {
                    drive(phase, &target.channels, &target.pools, args, warmup).await;
                }
                let cpu_before = server_cpu(target.server.id());
                let mut outcome =
                    drive(phase, &target.channels, &target.pools, args, measure).await;
                outcome.server_cpu = server_cpu(target.server.id()).saturating_sub(cpu_before);
                if args.rounds > 1 {
                    print!("round {round:<3} ");
                }
                outcome.print(phase.name());
                *total = Some(match total.take() {
                    Some(sum) => sum.merge(outcome),
                    None => outcome,
                });
            }
        }
        let [Some(authorize), Some(ext_authz), Some(authzen)] = &totals else {
            bail!("no phase ran");
        };
        if args.rounds > 1 {
            println!("all rounds, {}:", target.name());
            for (phase, outcome) in phases.iter().zip([authorize, ext_authz, authzen]) {
                outcome.print(phase.name());
            }
        }
        println!(
            "ratio ext_authz/authorize server CPU per call: {:.2} ({:.1} µs against {:.1} µs; target about 1)",
            ext_authz.cpu_per_request_us() / authorize.cpu_per_request_us(),
            ext_authz.cpu_per_request_us(),
            authorize.cpu_per_request_us(),
        );
        println!(
            "ratio authzen/authorize server CPU per call:   {:.2} ({:.1} µs against {:.1} µs, HTTP/1.1 JSON against gRPC)",
            authzen.cpu_per_request_us() / authorize.cpu_per_request_us(),
            authzen.cpu_per_request_us(),
            authorize.cpu_per_request_us(),
        );
    }
    Ok(())
}

/// Drives grant changes as fast as the server takes them and prints what each cost the server.
async fn write_cost(
    targets: &mut [Target],
    callers: usize,
    measure: Duration,
) -> anyhow::Result<()> {
    for target in targets {
        let stop = Arc::new(AtomicBool::new(false));
        let cpu_before = server_cpu(target.server.id());
        let started = Instant::now();
        let tasks: Vec<_> = (0..callers.max(1))
            .map(|i| {
                tokio::spawn(writer(
                    target.endpoint.clone(),
                    target.data.clone(),
                    target.written.clone(),
                    1_000 + i as u64,
                    0,
                    stop.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(measure).await;
        stop.store(true, Ordering::Relaxed);
        let mut writes = 0;
        for task in tasks {
            writes += task.await.unwrap_or(0);
        }
        let elapsed = started.elapsed();
        let cpu = server_cpu(target.server.id()).saturating_sub(cpu_before);
        println!(
            "{}: {writes} grant changes by {callers} callers in {elapsed:.1?} ({:.0}/s); server CPU per change {:.0} µs",
            target.name(),
            writes as f64 / elapsed.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / writes.max(1) as f64,
        );
    }
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("roster-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A fresh database for the benchmark: a SQLite file in `dir`, or the PostgreSQL database
/// `database` (replacing any old one); migrated.
async fn fresh_database(
    args: &Args,
    dir: &std::path::Path,
    database: &str,
) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir)?;
    let url = match args.backend {
        BackendKind::Sqlite => {
            let path = dir.join("bench.db");
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
            format!("sqlite://{}?mode=rwc", path.display())
        }
        BackendKind::Postgres => {
            let admin =
                Database::connect(&args.postgres_url).await.context("connecting to PostgreSQL")?;
            admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
                .await?;
            admin.execute_unprepared(&format!("CREATE DATABASE {database}")).await?;
            admin.close().await?;
            let base =
                args.postgres_url.rsplit_once('/').map(|(b, _)| b).unwrap_or(&args.postgres_url);
            format!("{base}/{database}")
        }
    };
    roster::app::open_store(&roster::config::Config {
        database_url: url.clone(),
        ..roster::config::Config::defaults()
    })
    .await?
    .close()
    .await;
    Ok(url)
}

/// Writes `count` changes of one made-up organization straight into the change log, each a
/// grant change, as if they had been committed one after another.
async fn seed_history(url: &str, count: u64) -> anyhow::Result<()> {
    use sea_orm::{Statement, Value};
    let db = Database::connect(url).await.context("connecting to the benchmark database")?;
    let backend = db.get_database_backend();
    let org = Uuid::now_v7();
    let workspace = Uuid::now_v7();
    let deltas = format!(
        r#"[{{"k":"grant_changed","user":"user-0-2","workspace":"{workspace}","old":"read","new":"write"}}]"#
    );
    let now = chrono::Utc::now().timestamp_micros();
    let started = Instant::now();
    let tx = db.begin().await?;
    let chunk = 1000u64;
    let mut next = 1u64;
    while next <= count {
        let last = count.min(next + chunk - 1);
        let mut values: Vec<Value> = Vec::new();
        let mut rows = Vec::new();
        for position in next..=last {
            let at = values.len();
            let mark = |n: usize| match backend {
                sea_orm::DbBackend::Postgres => format!("${}", at + n),
                _ => "?".to_owned(),
            };
            rows.push(format!(
                "({}, {}, {}, {}, {}, {})",
                mark(1),
                mark(2),
                mark(3),
                mark(4),
                mark(5),
                mark(6)
            ));
            let position = i64::try_from(position)?;
            values.extend([
                position.into(),
                org.into(),
                position.into(),
                now.into(),
                "bench".to_owned().into(),
                deltas.clone().into(),
            ]);
        }
        let sql = format!(
            "INSERT INTO change_log (position, organization_id, revision, commit_time, \
             actor_user_id, deltas) VALUES {}",
            rows.join(", ")
        );
        tx.execute_raw(Statement::from_sql_and_values(backend, sql, values)).await?;
        next = last + 1;
    }
    if backend == sea_orm::DbBackend::Postgres {
        tx.execute_raw(Statement::from_sql_and_values(
            backend,
            "UPDATE change_log_head SET position = $1 WHERE id = 1",
            [i64::try_from(count)?.into()],
        ))
        .await?;
    }
    tx.commit().await?;
    db.close().await?;
    println!("seeded {count} changes into the change log in {:.1?}", started.elapsed());
    Ok(())
}

/// A `roster` process of the Watch benchmark.
struct WatchServer {
    server: Child,
    channel: Channel,
    metrics: String,
}

impl WatchServer {
    async fn start(database_url: &str, dir: &std::path::Path, args: &Args) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let free_port = || -> anyhow::Result<u16> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
        };
        let addr = format!("127.0.0.1:{}", free_port()?);
        let metrics = format!("127.0.0.1:{}", free_port()?);
        let mut server = start_server(database_url, &addr, &metrics, dir, args, None, None)?;
        for _ in 0..100 {
            if let Ok(channel) = Channel::from_shared(format!("http://{addr}"))?.connect().await {
                return Ok(Self { server, channel, metrics });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = server.kill();
        bail!("the server did not start; see {}", dir.join("server.log").display())
    }

    /// Waits until the server hears other replicas' notifications (its index is in use only
    /// once its own heartbeat came through the feed).
    async fn wait_for_feed(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        while !index_in_use(&self.metrics).await {
            if started.elapsed() > Duration::from_secs(30) {
                bail!("the server's notification feed did not come up within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

impl Drop for WatchServer {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.server.id().to_string()]).status();
        let _ = self.server.wait();
    }
}

/// A change, as the benchmark tells changes apart.
type ChangeKey = (uuid::Uuid, u64);

/// The change a token names: its organization and revision (replies on PostgreSQL carry no
/// position, since a change gets its position just after it commits).
fn token_change(token: &str) -> Option<ChangeKey> {
    let token = roster::domain::ChangeToken::parse(token).ok()?;
    token.organization.map(|(org, revision)| (org.as_uuid(), revision.0))
}

/// Follows every organization's changes from now until `stop`; when each change arrived.
async fn follow(
    channel: Channel,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<HashMap<ChangeKey, Instant>> {
    let mut client = WatchServiceClient::new(channel);
    let request = pb::WatchRequest::default();
    let mut stream = client.watch(request).await.context("opening a Watch stream")?.into_inner();
    let mut seen = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        let Ok(message) = tokio::time::timeout(Duration::from_millis(100), stream.message()).await
        else {
            continue;
        };
        let Some(response) = message.context("the Watch stream failed")? else { break };
        let now = Instant::now();
        for change in response.changes {
            if let Some(key) = token_change(&change.consistency_token) {
                seen.insert(key, now);
            }
        }
    }
    Ok(seen)
}

/// Changes grants through `channel` at `rate` per second for `duration`; when each change's
/// reply came, by change, and how many calls failed.
async fn write_changes(
    channel: Channel,
    data: Arc<DataSet>,
    rate: u32,
    duration: Duration,
) -> (Vec<(Option<ChangeKey>, Instant)>, usize) {
    let mut team = TeamServiceClient::new(channel);
    let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    let mut written = Vec::new();
    let mut failed = 0;
    let started = Instant::now();
    // Each call flips a grant, so that each is a change.
    let mut held: HashMap<(usize, usize), WorkspaceAccess> = HashMap::new();
    let mut n = 0usize;
    while started.elapsed() < duration {
        interval.tick().await;
        let o = n % data.orgs.len();
        let m = 2 + (n / data.orgs.len()) % (data.members.max(3) - 2);
        let w = data.workspaces[o].len() - 1;
        n += 1;
        let current = held.get(&(o, m)).copied().or_else(|| data.seeded(o, m, w));
        let access = match current {
            Some(WorkspaceAccess::Read) => WorkspaceAccess::Write,
            _ => WorkspaceAccess::Read,
        };
        held.insert((o, m), access);
        let mut request = tonic::Request::new(pb::SetWorkspaceAccessRequest {
            organization_id: data.orgs[o].to_string(),
            workspace_id: data.workspaces[o][w].to_string(),
            user_id: DataSet::user(o, m),
            access: access as i32,
            ..Default::default()
        });
        request.metadata_mut().insert("x-user-id", DataSet::user(o, 0).parse().expect("ascii"));
        match team.set_workspace_access(request).await {
            Ok(reply) => {
                let replied = Instant::now();
                written.push((token_change(&reply.into_inner().consistency_token), replied));
            }
            Err(_) => failed += 1,
        }
    }
    (written, failed)
}

/// Delay percentiles of `written` as seen in `seen`; prints them under `label`. Returns how
/// many changes never arrived.
fn report_delays(
    label: &str,
    written: &[(Option<ChangeKey>, Instant)],
    seen: &HashMap<ChangeKey, Instant>,
) -> usize {
    let mut delays: Vec<f64> = Vec::new();
    let mut early = 0;
    let mut missing = 0;
    for (change, replied) in written {
        match change.and_then(|change| seen.get(&change)) {
            Some(arrived) => {
                if arrived < replied {
                    early += 1;
                }
                delays.push(arrived.saturating_duration_since(*replied).as_secs_f64() * 1000.0);
            }
            None => missing += 1,
        }
    }
    delays.sort_by(f64::total_cmp);
    let at = |p: f64| -> f64 {
        if delays.is_empty() {
            return f64::NAN;
        }
        delays[((delays.len() - 1) as f64 * p).round() as usize]
    };
    println!(
        "{label}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {} changes ({} arrived before their reply); missing {missing}",
        at(0.5),
        at(0.99),
        at(1.0),
        delays.len(),
        early,
    );
    missing
}

async fn run_watch(args: Args) -> anyhow::Result<()> {
    let temp = tempfile_dir()?;
    let dir = args.work_dir.clone().unwrap_or_else(|| temp.clone());
    let database_url = fresh_database(&args, &dir, "roster_bench_watch").await?;
    let data = Arc::new(seed(&database_url, Shape::SMALL).await?);
    seed_history(&database_url, args.watch_history).await?;
    let a = WatchServer::start(&database_url, &dir.join("a"), &args).await?;
    // One process per SQLite file: there the stream is on the writing replica itself.
    let b = match args.backend {
        BackendKind::Postgres => {
            Some(WatchServer::start(&database_url, &dir.join("b"), &args).await?)
        }
        BackendKind::Sqlite => None,
    };
    let watcher = b.as_ref().unwrap_or(&a);

    // Replay: one stream from the start of the log to its end.
    let start = roster::domain::ChangeToken {
        organization: None,
        position: Some(roster::domain::LogPosition(0)),
    };
    let mut client = WatchServiceClient::new(watcher.channel.clone());
    let started = Instant::now();
    let request = pb::WatchRequest { start_token: start.encode(), ..Default::default() };
    let mut stream = client.watch(request).await.context("opening the replay")?.into_inner();
    let mut replayed = 0u64;
    while replayed < args.watch_history {
        let Some(response) = stream.message().await.context("the replay failed")? else {
            bail!("the replay ended after {replayed} changes");
        };
        replayed += response.changes.len() as u64;
    }
    let took = started.elapsed();
    drop(stream);
    println!(
        "watch replay: {replayed} changes on one stream in {took:.2?}: {:.0} changes/s",
        replayed as f64 / took.as_secs_f64()
    );

    // Delay: a writer on A, a stream on A and one on B.
    if let Some(b) = &b {
        b.wait_for_feed().await?;
    }
    a.wait_for_feed().await.ok();
    let stop = Arc::new(AtomicBool::new(false));
    let on_a = tokio::spawn(follow(a.channel.clone(), stop.clone()));
    let on_b = b.as_ref().map(|b| tokio::spawn(follow(b.channel.clone(), stop.clone())));
    // Streams open before the first write.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rate = if args.write_rate == 0 { 100 } else { args.write_rate };
    let duration = Duration::from_secs(args.duration_secs.max(1));
    let (written, failed) = write_changes(a.channel.clone(), data, rate, duration).await;
    // Stragglers.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let seen_a = on_a.await.context("the stream on A")??;
    println!("watch delay: {} grant changes at {rate}/s through replica A", written.len());
    let mut missing =
        report_delays("watch delay, reply -> event on the same replica", &written, &seen_a);
    if let Some(on_b) = on_b {
        let seen_b = on_b.await.context("the stream on B")??;
        missing +=
            report_delays("watch delay, reply -> event on another replica", &written, &seen_b);
    }
    // The CI smoke run looks for this line.
    println!("watch: errors {}", failed + missing);
    drop(a);
    drop(b);
    Ok(())
}
