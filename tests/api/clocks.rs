//! Grant ends against the servers' own clocks: the real binary under libfaketime, whose wall
//! clock the test moves across an end; a server that was down when a grant ended; replicas
//! whose clocks disagree; and checks racing an end on the replica that set the grant and on
//! another.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use roster::pb::access_service_client::AccessServiceClient;
use roster::pb::team_service_client::TeamServiceClient;
use roster::pb::watch_service_client::WatchServiceClient;
use roster::pb::{self, DecisionReason as Why, OrganizationRole as R, WorkspaceAccess as A};
use sea_orm::ConnectionTrait;
use tonic::Code;
use tonic::transport::Channel;

use crate::common::process::Server;
use crate::common::{
    Backend, SmtpSink, User, assert_code, check, create_org_with, drop_database, fresh_database,
    timestamp, try_create_workspace_with,
};
use crate::db_tests;

db_tests!(
    a_server_whose_clock_passes_a_grants_end_denies_at_once_and_records_the_end_once,
    a_server_down_when_a_grant_ended_denies_at_start_and_records_the_end,
    no_check_after_a_grants_end_is_allowed_while_checks_race_it,
);

/// Where Debian's `faketime` package puts the multi-threaded library.
fn libfaketime() -> PathBuf {
    let candidates = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/faketime/libfaketimeMT.so.1",
    ];
    candidates.iter().map(PathBuf::from).find(|p| p.exists()).unwrap_or_else(|| {
        panic!("libfaketime is missing: install the Debian package faketime (.ci/test does)")
    })
}

/// A wall clock the test sets for a server: an offset from the real time, in a file
/// libfaketime reads on every call.
struct Clock {
    file: PathBuf,
}

impl Clock {
    fn new(dir: &Path, name: &str, offset: &str) -> Clock {
        let clock = Clock { file: dir.join(format!("{name}.clock")) };
        clock.set(offset);
        clock
    }

    /// Moves the server's wall clock to the real time plus `offset` ("+0", "+2h", "-10m").
    fn set(&self, offset: &str) {
        std::fs::write(&self.file, format!("{offset}\n")).unwrap();
    }

    /// The environment that puts a process's wall clock under this file. The monotonic clock
    /// stays real, so timers, timeouts and backoffs run at their real pace.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("LD_PRELOAD", libfaketime().display().to_string()),
            ("FAKETIME_TIMESTAMP_FILE", self.file.display().to_string()),
            ("FAKETIME_NO_CACHE", "1".into()),
            ("DONT_FAKE_MONOTONIC", "1".into()),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1".into()),
        ]
    }
}

async fn start_on_clock(url: &str, sink: &SmtpSink, log: &Path, clock: &Clock) -> Server {
    let env = clock.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start_with_env(url, sink.port, log, &[], None, &env).await
}

fn now_micros() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros()).unwrap()
}

/// An organization with a `prod` workspace, owned by `owner`.
async fn organization(team: &mut TeamServiceClient<Channel>, owner: &User) -> (String, String) {
    let org = create_org_with(team, owner, "Acme").await;
    let prod = try_create_workspace_with(team, owner, &org, "prod").await.unwrap();
    (org, prod)
}

/// Makes `user` a Member through an invitation accepted by the link in its email.
async fn join(
    team: &mut TeamServiceClient<Channel>,
    sink: &SmtpSink,
    owner: &User,
    org: &str,
    user: &User,
) {
    team.create_invitation(owner.req(pb::CreateInvitationRequest {
        organization_id: org.to_owned(),
        email: user.email.clone(),
        role: R::Member as i32,
        ..Default::default()
    }))
    .await
    .unwrap();
    // A replica whose clock runs ahead may find the sending replica's lease on the email over
    // and send it again with a fresh token, which replaces the first: the newest one counts.
    for sent in 1..=3 {
        let token = sink.wait_for(&user.email, sent).await.token().unwrap();
        let request = user.req(pb::AcceptInvitationRequest { token, ..Default::default() });
        match team.accept_invitation(request).await {
            Ok(_) => return,
            Err(status) if status.code() == tonic::Code::NotFound => continue,
            Err(status) => panic!("accept: {status:?}"),
        }
    }
    panic!("no invitation token of {} was accepted", user.email);
}

/// Gives `user` WRITE on `ws` until `end` (microseconds); the change's consistency token.
async fn write_until(
    team: &mut TeamServiceClient<Channel>,
    owner: &User,
    org: &str,
    ws: &str,
    user: &User,
    end: i64,
) -> Result<String, tonic::Status> {
    let set = team
        .set_workspace_access(owner.req(pb::SetWorkspaceAccessRequest {
            organization_id: org.to_owned(),
            workspace_id: ws.to_owned(),
            user_id: user.id.clone(),
            access: A::Write as i32,
            expire_time: Some(timestamp(end)),
            reason: "incident 4711".into(),
            ..Default::default()
        }))
        .await?;
    Ok(set.into_inner().consistency_token)
}

async fn decision(
    access: &mut AccessServiceClient<Channel>,
    user: &User,
    org: &str,
    ws: &str,
) -> (bool, i32) {
    let d =
        access.authorize(check(&user.id, org, ws, "sources.create")).await.unwrap().into_inner();
    (d.allowed, d.reason)
}

/// How many times the organization's records say a grant ended: (audit events, changes).
async fn ends_recorded(url: &str) -> (i64, i64) {
    let db = sea_orm::Database::connect(url).await.unwrap();
    let mut counts = Vec::new();
    for (table, filter) in [
        ("audit_events", "action = 'workspace_access.expired'"),
        ("change_log", "deltas LIKE '%grant_expired%'"),
    ] {
        let sql = format!("SELECT COUNT(*) AS n FROM {table} WHERE {filter}");
        let statement = sea_orm::Statement::from_string(db.get_database_backend(), sql);
        let row = db.query_one_raw(statement).await.unwrap().unwrap();
        counts.push(row.try_get::<i64>("", "n").unwrap());
    }
    db.close().await.unwrap();
    (counts[0], counts[1])
}

/// Reads the organization's Watch stream from `token` for `for_at_least`, and at least until
/// one grant end arrived (at most ten seconds); every `grant_expired` delta seen.
async fn watched_ends(
    watch: &mut WatchServiceClient<Channel>,
    org: &str,
    token: &str,
    for_at_least: Duration,
) -> Vec<pb::GrantExpired> {
    let mut stream = watch
        .watch(pb::WatchRequest {
            start_token: token.to_owned(),
            organization_id: org.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let started = Instant::now();
    let mut ends = Vec::new();
    while started.elapsed() < Duration::from_secs(10)
        && (ends.is_empty() || started.elapsed() < for_at_least)
    {
        let Ok(message) = tokio::time::timeout(Duration::from_millis(200), stream.message()).await
        else {
            continue;
        };
        for change in message.unwrap().expect("the stream stays open").changes {
            for delta in change.deltas {
                if let Some(pb::access_delta::Delta::GrantExpired(end)) = delta.delta {
                    ends.push(end);
                }
            }
        }
    }
    ends
}

async fn a_server_whose_clock_passes_a_grants_end_denies_at_once_and_records_the_end_once(
    backend: Backend,
) {
    let dir = tempfile::tempdir().unwrap();
    let (url, database) = fresh_database(backend, dir.path()).await;
    let sink = SmtpSink::start().await;
    let clock = Clock::new(dir.path(), "server", "+0");
    let server = start_on_clock(&url, &sink, &dir.path().join("server.log"), &clock).await;
    let (owner, engineer) = (User::new("owner"), User::new("engineer"));
    let mut team = server.team().await;
    let (org, prod) = organization(&mut team, &owner).await;
    join(&mut team, &sink, &owner, &org, &engineer).await;
    let end = now_micros() + 3_600_000_000;
    let token = write_until(&mut team, &owner, &org, &prod, &engineer, end).await.unwrap();
    let mut access = server.access().await;
    let allowed = decision(&mut access, &engineer, &org, &prod).await;
    assert_eq!(allowed, (true, Why::AllowedByWorkspaceAccess as i32));

    // Two hours later by the server's clock, one hour past the end: denied with the first
    // check (the recorder may or may not have run yet; decisions never wait for it).
    clock.set("+2h");
    let denied = decision(&mut access, &engineer, &org, &prod).await;
    assert_eq!(denied, (false, Why::DeniedGrantExpired as i32));
    let granted = access
        .list_granted_permissions(pb::ListGrantedPermissionsRequest {
            user_id: engineer.id.clone(),
            organization_id: org.clone(),
            workspace_id: prod.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .permissions;
    assert!(granted.is_empty(), "an ended grant grants nothing: {granted:?}");

    // The end is recorded once: one Watch event, one audit event, one change.
    let ends = watched_ends(&mut server.watch().await, &org, &token, Duration::from_secs(2)).await;
    assert_eq!(ends.len(), 1, "Watch shows the end once: {ends:?}");
    assert_eq!((ends[0].user_id.as_str(), ends[0].workspace_id.as_str()), (&*engineer.id, &*prod));
    assert_eq!(ends[0].expire_time, Some(timestamp(end)));
    assert_eq!(ends_recorded(&url).await, (1, 1));
    server.stop();
    drop_database(database).await;
}

async fn a_server_down_when_a_grant_ended_denies_at_start_and_records_the_end(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (url, database) = fresh_database(backend, dir.path()).await;
    let sink = SmtpSink::start().await;
    let clock = Clock::new(dir.path(), "server", "+0");
    let log = dir.path().join("server.log");
    let server = start_on_clock(&url, &sink, &log, &clock).await;
    let (owner, engineer) = (User::new("owner"), User::new("engineer"));
    let mut team = server.team().await;
    let (org, prod) = organization(&mut team, &owner).await;
    join(&mut team, &sink, &owner, &org, &engineer).await;
    let end = now_micros() + 3_600_000_000;
    let token = write_until(&mut team, &owner, &org, &prod, &engineer, end).await.unwrap();
    server.stop();

    // The end passes while no server runs; nothing records it.
    clock.set("+2h");
    assert_eq!(ends_recorded(&url).await, (0, 0));
    let server = start_on_clock(&url, &sink, &log, &clock).await;
    let denied = decision(&mut server.access().await, &engineer, &org, &prod).await;
    assert_eq!(denied, (false, Why::DeniedGrantExpired as i32));
    let ends = watched_ends(&mut server.watch().await, &org, &token, Duration::from_secs(1)).await;
    assert_eq!(ends.len(), 1, "recorded when the server is back: {ends:?}");
    assert_eq!(ends_recorded(&url).await, (1, 1));
    server.stop();
    drop_database(database).await;
}

/// Two replicas, B's clock ten minutes ahead of A's. A grant that ends in five minutes by A's
/// clock has ended by B's: B denies it (and refuses to set it), and records the end; A keeps
/// allowing until its own clock reaches the end, whatever B recorded. The skew is the whole of
/// the disagreement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas_whose_clocks_disagree_disagree_about_an_end_by_their_skew() {
    let dir = tempfile::tempdir().unwrap();
    let (url, database) = fresh_database(Backend::Postgres, dir.path()).await;
    let sink = SmtpSink::start().await;
    let clock_a = Clock::new(dir.path(), "a", "+0");
    let clock_b = Clock::new(dir.path(), "b", "+10m");
    let a = start_on_clock(&url, &sink, &dir.path().join("a.log"), &clock_a).await;
    let b = start_on_clock(&url, &sink, &dir.path().join("b.log"), &clock_b).await;
    let (owner, engineer) = (User::new("owner"), User::new("engineer"));
    let mut team = a.team().await;
    let (org, prod) = organization(&mut team, &owner).await;
    join(&mut team, &sink, &owner, &org, &engineer).await;
    let end = now_micros() + 5 * 60 * 1_000_000;

    // By B's clock the end is in the past: B refuses it, naming the field.
    let through_b = write_until(&mut b.team().await, &owner, &org, &prod, &engineer, end).await;
    assert_code(through_b, Code::InvalidArgument, Some("expire_time"));
    let token = write_until(&mut team, &owner, &org, &prod, &engineer, end).await.unwrap();
    let mut access_b = b.access().await;
    let mut fresh = check(&engineer.id, &org, &prod, "sources.create");
    fresh.consistency = Some(pb::Consistency {
        requirement: pb::ConsistencyRequirement::AtLeastAsFresh as i32,
        at_least_as_fresh: token.clone(),
    });
    let on_b = access_b.authorize(fresh).await.unwrap().into_inner();
    assert_eq!((on_b.allowed, on_b.reason), (false, Why::DeniedGrantExpired as i32));

    // B records the end by its clock; A, whose clock has not reached it, still allows.
    let ends = watched_ends(&mut a.watch().await, &org, &token, Duration::from_secs(1)).await;
    assert_eq!(ends.len(), 1, "the end is recorded once: {ends:?}");
    let mut access_a = a.access().await;
    let on_a = decision(&mut access_a, &engineer, &org, &prod).await;
    assert_eq!(on_a, (true, Why::AllowedByWorkspaceAccess as i32));

    // Once A's clock passes the end, A denies too.
    clock_a.set("+6m");
    let on_a = decision(&mut access_a, &engineer, &org, &prod).await;
    assert_eq!(on_a, (false, Why::DeniedGrantExpired as i32));
    assert_eq!(ends_recorded(&url).await, (1, 1));
    a.stop();
    b.stop();
    drop_database(database).await;
}

/// What one checker saw: the user, when the check was sent and when its answer came back
/// (microseconds), and the answer.
struct Seen {
    user: usize,
    sent: i64,
    answered: i64,
    allowed: bool,
    reason: i32,
}

/// Engineers get WRITE ending at random instants two to four seconds ahead; checkers on every
/// given replica ask about all of them without pause until every end has passed. No check
/// sent at or after an engineer's end is allowed, every one answered before it is, and each
/// denial says the grant ended.
async fn checks_race_ends(
    team: &mut TeamServiceClient<Channel>,
    sink: &SmtpSink,
    replicas: &[&Server],
) {
    let owner = User::new("owner");
    let (org, prod) = organization(team, &owner).await;
    let engineers: Vec<User> = (0..6).map(|i| User::new(&format!("engineer{i}"))).collect();
    for engineer in &engineers {
        join(team, sink, &owner, &org, engineer).await;
    }
    let mut runner = TestRunner::deterministic();
    let offsets = proptest::collection::vec(2_000_000i64..4_000_000, engineers.len())
        .new_tree(&mut runner)
        .unwrap()
        .current();
    let base = now_micros();
    let ends: Vec<i64> = offsets.iter().map(|offset| base + offset).collect();
    let mut token = String::new();
    for (engineer, end) in engineers.iter().zip(&ends) {
        token = write_until(team, &owner, &org, &prod, engineer, *end).await.unwrap();
    }
    // Every replica holds every grant before the race starts.
    for replica in replicas {
        let mut access = replica.access().await;
        for engineer in &engineers {
            let mut fresh = check(&engineer.id, &org, &prod, "sources.create");
            fresh.consistency = Some(pb::Consistency {
                requirement: pb::ConsistencyRequirement::AtLeastAsFresh as i32,
                at_least_as_fresh: token.clone(),
            });
            access.authorize(fresh).await.unwrap();
        }
    }
    let last_end = *ends.iter().max().unwrap();
    let mut checkers = Vec::new();
    for (n, replica) in replicas.iter().flat_map(|r| [r, r, r]).enumerate() {
        let mut access = replica.access().await;
        let requests: Vec<_> =
            engineers.iter().map(|e| check(&e.id, &org, &prod, "sources.create")).collect();
        checkers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut user = n % requests.len();
            while now_micros() < last_end + 300_000 {
                let sent = now_micros();
                let d = access.authorize(requests[user].clone()).await.unwrap().into_inner();
                let answered = now_micros();
                seen.push(Seen { user, sent, answered, allowed: d.allowed, reason: d.reason });
                user = (user + 1) % requests.len();
            }
            seen
        }));
    }
    let (mut before, mut after) = (0, 0);
    for checker in checkers {
        for s in checker.await.unwrap() {
            let end = ends[s.user];
            if s.sent >= end {
                after += 1;
                assert!(!s.allowed, "allowed {}µs after the end", s.sent - end);
                assert_eq!(s.reason, Why::DeniedGrantExpired as i32);
            } else if s.answered < end {
                before += 1;
                assert!(s.allowed, "denied {}µs before the end", end - s.answered);
            }
        }
    }
    // Both sides of every end were exercised, many times.
    assert!(before > 100 && after > 100, "checks before the ends {before}, after {after}");
}

async fn no_check_after_a_grants_end_is_allowed_while_checks_race_it(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (url, database) = fresh_database(backend, dir.path()).await;
    let sink = SmtpSink::start().await;
    let server = Server::start(&url, sink.port, &dir.path().join("s.log")).await;
    checks_race_ends(&mut server.team().await, &sink, &[&server]).await;
    server.stop();
    drop_database(database).await;
}

/// The same race with the grants set through replica A and checked on A and on B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_check_after_a_grants_end_is_allowed_on_either_of_two_postgres_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let (url, database) = fresh_database(Backend::Postgres, dir.path()).await;
    let sink = SmtpSink::start().await;
    let a = Server::start(&url, sink.port, &dir.path().join("a.log")).await;
    let b = Server::start(&url, sink.port, &dir.path().join("b.log")).await;
    checks_race_ends(&mut a.team().await, &sink, &[&a, &b]).await;
    a.stop();
    b.stop();
    drop_database(database).await;
}
