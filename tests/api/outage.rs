//! The database becomes unreachable under traffic: calls fail with UNAVAILABLE (Authorize too:
//! never a guess) and succeed again once it is back, without restarting Roster. The outage is a
//! TCP proxy in front of PostgreSQL that drops every connection and refuses new ones, which is
//! what clients see when the server restarts; the shared test server itself keeps running.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use roster::pb;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tonic::Code;

use crate::common::{Backend, User, postgres_admin_url, spawn_app_with};

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
    })
    .await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let authorize = || pb::AuthorizeRequest {
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
    let decision = app.access.clone().authorize(authorize()).await;
    assert_eq!(decision.unwrap_err().code(), Code::Unavailable, "Authorize fails closed, not open");
    let write = app
        .team
        .clone()
        .create_workspace(owner.req(pb::CreateWorkspaceRequest {
            organization_id: org.clone(),
            display_name: "x".into(),
        }))
        .await;
    assert_eq!(write.unwrap_err().code(), Code::Unavailable);
    println!("answered UNAVAILABLE for {:?} of outage", down_since.elapsed());

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
    println!("recovered {:?} after the database came back", back_since.elapsed());
    app.team
        .clone()
        .create_workspace(owner.req(pb::CreateWorkspaceRequest {
            organization_id: org.clone(),
            display_name: "after".into(),
        }))
        .await
        .unwrap();
    app.stop().await;
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
