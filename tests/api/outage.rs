//! The database becomes unreachable under traffic: calls fail with UNAVAILABLE (Authorize too:
//! never a guess) and succeed again once it is back, without restarting Roster. Two outages: a
//! real restart of a private PostgreSQL server the test runs itself (so the shared test server
//! keeps serving the other tests), and a network cut through a TCP proxy.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use roster::pb;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tonic::Code;
use tonic_health::ServingStatus;

use crate::common::postgres::PrivatePostgres;
use crate::common::{Backend, User, postgres_admin_url, spawn_app_with, wait_for_sample};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_under_traffic_is_unavailable_then_recovers_without_restarting_roster() {
    let postgres = PrivatePostgres::start();
    let url = postgres.url();
    let app = spawn_app_with(Backend::Postgres, |config| config.database_url = url).await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let check = pb::AuthorizeRequest {
        consistency: None,
        user_id: owner.id.clone(),
        organization_id: org.clone(),
        workspace_id: String::new(),
        permission: "organization.update".into(),
    };

    // Steady Authorize traffic throughout the restart.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (mut access, check, stop) = (app.access.clone(), check.clone(), stop.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let outcome = match access.authorize(check.clone()).await {
                    Ok(decision) if decision.get_ref().allowed => "allowed",
                    Ok(_) => "denied",
                    Err(status) if status.code() == Code::Unavailable => "unavailable",
                    Err(status) => panic!("during the restart Authorize answered {status:?}"),
                };
                seen.push(outcome);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            seen
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    postgres.down();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let write = app.try_create_workspace(&owner, &org, "x").await;
    assert_eq!(write.unwrap_err().code(), Code::Unavailable);
    // Authorize may answer from memory for as long as the replica has not noticed that its
    // invalidation feed is gone (nothing can change while the database is down, so those answers
    // are right); once it notices, it stops trusting the cache and answers UNAVAILABLE.
    let mut unavailable = false;
    let deadline = Instant::now() + roster::storage::feed::MAX_SILENCE + Duration::from_secs(2);
    while Instant::now() < deadline {
        match app.access.clone().authorize(check.clone()).await {
            Ok(decision) => {
                assert!(decision.into_inner().allowed, "a wrong decision during the outage")
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable);
                unavailable = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(unavailable, "the replica stops trusting its cache once the feed is gone");

    postgres.up();
    let back = Instant::now();
    let mut recovered = false;
    for _ in 0..150 {
        if app.access.clone().authorize(check.clone()).await.is_ok_and(|d| d.into_inner().allowed) {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "Authorize succeeds again after PostgreSQL restarts");
    println!("recovered {:?} after PostgreSQL was back", back.elapsed());
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::SeqCst);
    let seen = traffic.await.unwrap();
    let count = |what: &str| seen.iter().filter(|s| **s == what).count();
    println!(
        "traffic during the restart: {} allowed, {} unavailable, {} denied",
        count("allowed"),
        count("unavailable"),
        count("denied")
    );
    assert_eq!(count("denied"), 0, "an outage never turns into a wrong decision");
    // Calls in flight during the outage may wait for the database and then succeed, so the
    // traffic need not see UNAVAILABLE itself; the explicit calls above did.
    assert!(count("allowed") > 0);
    app.create_workspace(&owner, &org, "after").await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_is_unavailable_then_recovers_without_restart() {
    let target = postgres_admin_url()
        .rsplit_once('@')
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(host, _)| host.to_owned())
        .expect("the PostgreSQL URL names host:port");
    let proxy = Proxy::start(target.clone()).await;
    let proxied = proxy.addr.clone();
    let app = spawn_app_with(Backend::Postgres, |config| {
        config.database_url = config.database_url.replace(&target, &proxied);
        config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let metrics = app.metrics_addr.unwrap();
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let authorize = || pb::AuthorizeRequest {
        consistency: None,
        user_id: owner.id.clone(),
        organization_id: org.clone(),
        workspace_id: String::new(),
        permission: "organization.read".into(),
    };
    assert!(app.access.clone().authorize(authorize()).await.unwrap().into_inner().allowed);

    proxy.set_up(false);
    let down_since = Instant::now();
    let get = app
        .team
        .clone()
        .get_organization(owner.req(pb::GetOrganizationRequest { organization_id: org.clone() }))
        .await;
    assert_eq!(get.unwrap_err().code(), Code::Unavailable);
    // Until the replica has seen its notification connection drop, checks may still be answered
    // from its index (no change can commit meanwhile); from then on they read the database.
    let bypassed =
        wait_for_sample(metrics, "roster_authz_index_in_use", 0.0, Duration::from_secs(5)).await;
    assert!(bypassed, "the index is bypassed once the notification connection is lost");
    let decision = app.access.clone().authorize(authorize()).await;
    assert_eq!(decision.unwrap_err().code(), Code::Unavailable, "Authorize fails closed, not open");
    let write = app.try_create_workspace(&owner, &org, "x").await;
    assert_eq!(write.unwrap_err().code(), Code::Unavailable);
    println!("answered UNAVAILABLE for {:?} of outage", down_since.elapsed());
    // Readiness tells the truth: this replica cannot serve.
    let mut health = tonic_health::pb::health_client::HealthClient::new(app.channel());
    assert!(
        health_becomes(&mut health, ServingStatus::NotServing).await,
        "health reports NOT_SERVING while the database is unreachable"
    );
    // So do the HTTP probes, for probes that cannot speak gRPC over TLS; the process is alive.
    let readyz = crate::common::http_get(metrics, "/readyz").await;
    assert!(readyz.starts_with("HTTP/1.1 503"), "{readyz}");
    let livez = crate::common::http_get(metrics, "/livez").await;
    assert!(livez.starts_with("HTTP/1.1 200"), "{livez}");

    proxy.set_up(true);
    let back_since = Instant::now();
    let mut recovered = false;
    for _ in 0..100 {
        if let Ok(decision) = app.access.clone().authorize(authorize()).await {
            assert!(decision.into_inner().allowed);
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "calls succeed again once the database is back");
    assert!(
        health_becomes(&mut health, ServingStatus::Serving).await,
        "health reports SERVING again once the database is back"
    );
    let readyz = crate::common::http_get(metrics, "/readyz").await;
    assert!(readyz.starts_with("HTTP/1.1 200"), "{readyz}");
    println!("recovered {:?} after the database came back", back_since.elapsed());
    app.create_workspace(&owner, &org, "after").await;
    app.stop().await;
}

/// Whether the health of both services reaches `status` within 10 s.
async fn health_becomes(
    health: &mut tonic_health::pb::health_client::HealthClient<tonic::transport::Channel>,
    status: ServingStatus,
) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let mut all = true;
        for service in ["roster.v1.AccessService", "roster.v1.TeamService"] {
            let request = tonic_health::pb::HealthCheckRequest { service: service.to_owned() };
            let answer = health.check(request).await.expect("health answers");
            let wanted = tonic_health::pb::health_check_response::ServingStatus::from(status);
            all &= answer.into_inner().status == wanted as i32;
        }
        if all {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A TCP proxy that can drop all its connections and refuse new ones.
struct Proxy {
    addr: String,
    up: Arc<AtomicBool>,
    kill: watch::Sender<u64>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let up = Arc::new(AtomicBool::new(true));
        let (kill, _) = watch::channel(0u64);
        let (up_flag, kill_tx) = (up.clone(), kill.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up_flag.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let target = target.clone();
                let mut killed = kill_tx.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = killed.changed() => {}
                    }
                });
            }
        });
        Proxy { addr, up, kill }
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        if !up {
            self.kill.send_modify(|generation| *generation += 1);
        }
    }
}
