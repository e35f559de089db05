//! A SQLite file belongs to one process: a second server, or `roster migrate`, on a file in use
//! refuses to start rather than serve decisions the first one's changes never reach. SQLite
//! only: PostgreSQL is where several replicas share a database.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use roster::pb;

use crate::common::process::{Server, free_port};
use crate::common::{Backend, SmtpSink, User, create_org_with, fresh_database, spawn_app_with};

/// Runs the binary with `args` on `database_url` until it exits (within 15 s); its exit status
/// and what it wrote to stderr.
fn run_to_exit(
    dir: &std::path::Path,
    database_url: &str,
    args: &[&str],
) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_roster"))
        .env_remove("RUST_LOG")
        .args(args)
        .args(["--database-url", database_url])
        .arg("--mail-dir")
        .arg(dir.join("mail"))
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("roster {args:?} kept running on a SQLite file in use");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status, stderr)
}

fn assert_refused(status: std::process::ExitStatus, stderr: &str) {
    assert!(!status.success(), "exits non-zero: {status:?}\n{stderr}");
    assert!(stderr.contains("in use by another Roster process"), "says why: {stderr}");
    assert!(stderr.contains("PostgreSQL"), "says what to do: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_a_sqlite_file_in_use_refuses_to_start_until_the_first_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let (database_url, _) = fresh_database(Backend::Sqlite, dir.path()).await;
    let sink = SmtpSink::start().await;
    let log = dir.path().join("server.log");
    let first = Server::start(&database_url, sink.port, &log).await;
    let owner = User::new("owner");
    let org = create_org_with(&mut first.team().await, &owner, "Acme").await;

    let (status, stderr) = run_to_exit(dir.path(), &database_url, &[]);
    assert_refused(status, &stderr);
    // Migrating under a running server is refused too: its schema must not change beneath it.
    let (status, stderr) = run_to_exit(dir.path(), &database_url, &["migrate"]);
    assert_refused(status, &stderr);
    // The first server was not disturbed.
    let mut access = first.access().await;
    let decision = access
        .authorize(crate::common::check(&owner.id, &org, "", "organization.update"))
        .await
        .unwrap();
    assert!(decision.into_inner().allowed);

    // SIGKILL runs no clean-up; the lock goes with the process all the same.
    first.kill_hard();
    let second = Server::start(&database_url, sink.port, &log).await;
    let found = second
        .team()
        .await
        .get_organization(owner.req(pb::GetOrganizationRequest { organization_id: org.clone() }))
        .await
        .unwrap();
    assert_eq!(found.into_inner().organization.unwrap().id, org);
    second.stop();
    let (status, stderr) = run_to_exit(dir.path(), &database_url, &["migrate"]);
    assert!(status.success(), "migrates once no server runs: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_in_one_process_on_a_sqlite_file_in_use_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let (database_url, _) = fresh_database(Backend::Sqlite, dir.path()).await;
    let spawn = || spawn_app_with(Backend::Sqlite, |c| c.database_url = database_url.clone());
    let app = spawn().await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;

    let mut config = roster::config::Config::defaults();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.database_url = database_url.clone();
    config.mail_dir = dir.path().join("mail");
    let refused = match roster::app::start(&config).await {
        Ok(_) => panic!("a second server started on a SQLite file in use"),
        Err(err) => format!("{err:#}"),
    };
    assert!(refused.contains("in use by another Roster process"), "{refused}");
    assert!(refused.contains("PostgreSQL"), "{refused}");
    // Nor may a bare store open it.
    assert!(roster::storage::Store::connect(&database_url).await.is_err());

    // A server stopped gracefully lets the next one in.
    app.stop().await;
    let app = spawn().await;
    assert!(app.allowed(&owner.id, &org, "", "organization.update").await);
    app.stop().await;
}
