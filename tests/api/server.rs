//! The server's plumbing: health, reflection (both versions) and the default mail folder.

use roster::pb::{self, OrganizationRole as R};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::{v1, v1alpha};

use crate::common::{Backend, User, spawn_app, spawn_app_with};
use crate::db_tests;

db_tests!(
    health_reports_serving_for_the_server_and_each_service,
    reflection_lists_the_services_in_both_protocol_versions,
    without_smtp_invitation_emails_are_written_as_files,
);

/// A test that fails ends without `stop`; its database must not outlive it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_app_dropped_without_stopping_drops_its_postgres_database() {
    use sea_orm::{ConnectionTrait, Database, Statement};
    let app = spawn_app(Backend::Postgres).await;
    let name = app.database_name().expect("a PostgreSQL database").to_owned();
    let owner = User::new("owner");
    app.create_org(&owner, "Acme").await;
    let admin = Database::connect(&crate::common::postgres_admin_url()).await.unwrap();
    let exists = async |name: &str| {
        let sql = Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            "SELECT 1 FROM pg_database WHERE datname = $1",
            [name.into()],
        );
        admin.query_one_raw(sql).await.unwrap().is_some()
    };
    assert!(exists(&name).await, "the database is there while the test runs");
    drop(app);
    assert!(!exists(&name).await, "{name} outlived its test");
}

/// PostgreSQL only: replicas share a database there, while a SQLite file belongs to one process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_on_postgresql_migrate_one_at_a_time() {
    let backend = Backend::Postgres;
    let dir = tempfile::tempdir().unwrap();
    let (url, pg_database) = crate::common::fresh_database(backend, dir.path()).await;
    let starts = (0..4).map(|_| {
        let url = url.clone();
        tokio::spawn(async move {
            let store = roster::storage::Store::connect(&url).await?;
            let migrated = store.migrate().await;
            store.close().await;
            migrated
        })
    });
    for started in futures_join(starts).await {
        started.unwrap().expect("every replica finds the schema current");
    }
    let app = spawn_app_with(backend, |c| c.database_url = url.clone()).await;
    let owner = User::new("owner");
    app.create_org(&owner, "Acme").await;
    app.stop().await;
    crate::common::drop_database(pg_database).await;
}

async fn futures_join<T>(
    handles: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<Result<T, tokio::task::JoinError>> {
    let mut results = Vec::new();
    for handle in handles.collect::<Vec<_>>() {
        results.push(handle.await);
    }
    results
}

async fn health_reports_serving_for_the_server_and_each_service(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut health = HealthClient::new(app.channel());
    for service in ["", "roster.v1.TeamService", "roster.v1.AccessService"] {
        let response = health
            .check(tonic_health::pb::HealthCheckRequest { service: service.to_owned() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.status, ServingStatus::Serving as i32, "{service:?}");
    }
    app.stop().await;
}

async fn list_v1(channel: Channel) -> Vec<String> {
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel);
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut stream =
        client.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let response = stream.message().await.unwrap().unwrap();
    match response.message_response {
        Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

async fn list_v1alpha(channel: Channel) -> Vec<String> {
    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1alpha::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut stream =
        client.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let response = stream.message().await.unwrap().unwrap();
    match response.message_response {
        Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

async fn reflection_lists_the_services_in_both_protocol_versions(backend: Backend) {
    let app = spawn_app(backend).await;
    for services in [list_v1(app.channel()).await, list_v1alpha(app.channel()).await] {
        for expected in
            ["roster.v1.TeamService", "roster.v1.AccessService", "grpc.health.v1.Health"]
        {
            assert!(services.iter().any(|s| s == expected), "{expected} in {services:?}");
        }
    }
    app.stop().await;
}

async fn without_smtp_invitation_emails_are_written_as_files(backend: Backend) {
    let mail = tempfile::tempdir().unwrap();
    let folder = mail.path().to_owned();
    let app = spawn_app_with(backend, |config| {
        config.smtp_url = None;
        config.mail_dir = folder.clone();
    })
    .await;
    let owner = User::new("owner");
    let newcomer = User::new("newcomer");
    let org = app.create_org(&owner, "Acme").await;
    app.invite(&owner, &org, &newcomer.email, R::Member, &[]).await.unwrap();
    let mut file = None;
    for _ in 0..100 {
        let found: Vec<_> = std::fs::read_dir(&folder)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
            .collect();
        if let Some(entry) = found.first() {
            file = Some(std::fs::read_to_string(entry.path()).unwrap());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let content = file.expect("an .eml file appears in the mail folder");
    assert!(content.contains("To: newcomer@example.com"));
    let email = crate::common::smtp::ReceivedEmail { recipients: vec![], data: content };
    let token = email.token().expect("the file carries the token");
    let member = app.accept(&newcomer, &token).await.unwrap();
    assert_eq!(member.role, pb::OrganizationRole::Member as i32);
    app.stop().await;
}
