//! The boundary stays up: hostile peers against the real binary on loopback. Each attack runs for
//! a few seconds and stops by itself; legitimate calls run beside it and must go through, and
//! the server's memory and CPU are read from /proc.

use std::time::{Duration, Instant};

use roster::pb;
use tonic::transport::Channel;
use tonic::{Code, Request};

use crate::common::attack::{self, frame_prefix, grpc_request, raw_call};
use crate::common::process::Server;
use crate::common::{SmtpSink, check};

/// A server in jwt mode, with a service token for AccessService.
struct Guarded {
    server: Server,
    token: String,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
    _smtp: SmtpSink,
}

impl Guarded {
    async fn start(extra: &[&str], open_files: Option<u64>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "a-test-secret-of-at-least-thirty-two-bytes").unwrap();
        let (token, line) = roster::grpc::auth::new_service_token("scheduler").unwrap();
        let tokens = dir.path().join("service-tokens");
        std::fs::write(&tokens, format!("{line}\n")).unwrap();
        let database = format!("sqlite://{}?mode=rwc", dir.path().join("roster.db").display());
        let log = dir.path().join("server.log");
        let smtp = SmtpSink::start().await;
        let mut flags = vec![
            "--auth",
            "jwt",
            "--jwt-secret-file",
            secret.to_str().unwrap(),
            "--jwt-issuer",
            "https://login.example.com/",
            "--jwt-audience",
            "roster",
            "--service-tokens-file",
            tokens.to_str().unwrap(),
        ];
        flags.extend_from_slice(extra);
        let server =
            Server::start_limited(&database, smtp.port, &log, &flags, None, &[], open_files).await;
        Guarded { server, token, log, _dir: dir, _smtp: smtp }
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.server.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Authorize calls with the service token on `channel` until `until`, and on until at
    /// least `at_least` were made (a slow machine makes fewer in the time).
    async fn legitimate_calls(&self, channel: Channel, until: Instant, at_least: u32) -> Calls {
        let mut access = pb::access_service_client::AccessServiceClient::new(channel);
        let mut calls = Calls::default();
        // Only keeps a failing test from running on.
        let bound = until + Duration::from_secs(60);
        while Instant::now() < until || (calls.made() < at_least && Instant::now() < bound) {
            let mut request = Request::new(check(
                "alice",
                "0190c3b2-7d1e-7a3c-9f00-5b1d2c3e4f50",
                "",
                "organization.read",
            ));
            request.metadata_mut().insert("authorization", self.bearer().parse().unwrap());
            request.set_timeout(Duration::from_secs(5));
            match access.authorize(request).await {
                Ok(_) => {
                    calls.ok += 1;
                    calls.ok_in_time += u32::from(Instant::now() < until);
                }
                Err(status) => calls.failed.push(status.code()),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        calls
    }
}

/// What legitimate calls came to.
#[derive(Debug, Default)]
struct Calls {
    ok: u32,
    /// Of those, the ones that succeeded before the time given (while an attack ran).
    ok_in_time: u32,
    /// The codes of the failed ones.
    failed: Vec<Code>,
}

impl Calls {
    fn made(&self) -> u32 {
        self.ok + self.failed.len() as u32
    }
}

/// The fewest legitimate calls a test judges by.
const ENOUGH_CALLS: u32 = 50;

/// The fewest of them that must succeed while an attack of a few seconds runs; a call that
/// waited out its 5 s deadline, or most of it, would leave far fewer.
const IN_TIME: u32 = 10;

/// Asserts that at least 99 % of the calls succeeded, at least `in_time` of them while the
/// attack ran: callers kept waiting would make only a few.
fn assert_nearly_all(calls: &Calls, in_time: u32) {
    let (ok, total) = (calls.ok, calls.made());
    assert!(total >= ENOUGH_CALLS, "too few calls made: {total}");
    assert!(calls.ok_in_time >= in_time, "only {} calls succeeded in time", calls.ok_in_time);
    assert!(
        f64::from(ok) >= 0.99 * f64::from(total),
        "{ok} of {total} legitimate calls succeeded; failures: {:?}",
        calls.failed
    );
    println!("{ok} of {total} legitimate calls succeeded, {} in time", calls.ok_in_time);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_without_a_credential_take_no_slot_from_legitimate_callers() {
    let app = Guarded::start(&["--max-in-flight", "64"], None).await;
    let addr = app.server.addr;
    // The server says how many streams a connection may open (known once a call is through).
    let mut probe = attack::connect(addr).await.expect("an HTTP/2 connection");
    let health = grpc_request(addr, "/grpc.health.v1.Health/Check", &[]);
    raw_call(&mut probe, health, frame_prefix(0, 0), true).await.expect("health answers");
    assert_eq!(probe.current_max_send_streams(), 256, "SETTINGS_MAX_CONCURRENT_STREAMS");
    let channel = app.channel().await;
    let until = Instant::now() + Duration::from_secs(4);
    let attack = attack::stalled_streams(addr, 500, until);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls = app.legitimate_calls(channel, until, ENOUGH_CALLS).await;
    let opened = attack.await.unwrap();
    println!("the attacker opened {opened} streams");
    assert!(opened >= 500, "the attack ran: {opened} streams");
    assert_nearly_all(&calls, IN_TIME);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partial_bodies_without_a_credential_are_never_buffered() {
    let metrics: std::net::SocketAddr =
        format!("127.0.0.1:{}", crate::common::process::free_port()).parse().unwrap();
    let app = Guarded::start(&["--metrics-listen", &metrics.to_string()], None).await;
    let pid = app.server.pid();
    let before = attack::rss_kib(pid);
    let until = Instant::now() + Duration::from_secs(4);
    let rss = attack::watch_rss(pid, until);
    // The process-wide count of request bytes held, read all along.
    let buffered = tokio::spawn(async move {
        let mut highest = 0.0f64;
        while Instant::now() < until {
            let page = crate::common::scrape(metrics).await;
            let held = crate::common::sample(&page, "roster_request_bytes_buffered").unwrap();
            highest = highest.max(held);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        highest
    });
    // 4 connections × 40 calls, each announcing a 4 MiB message and sending all of it but
    // its last byte.
    let attack = attack::partial_bodies(
        app.server.addr,
        "/roster.v1.AccessService/BatchAuthorize",
        Vec::new(),
        4,
        40,
        4 << 20,
        until,
    );
    attack.await.unwrap();
    let peak = rss.await.unwrap();
    println!("server RSS {before} KiB before, {peak} KiB at most during the attack");
    assert_eq!(buffered.await.unwrap(), 0.0, "request bytes held for calls without a credential");
    assert!(peak < before + 32 * 1024, "the server buffered {} KiB", peak - before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partial_bodies_with_a_credential_are_bounded_by_the_byte_budget() {
    let app = Guarded::start(&[], None).await;
    let pid = app.server.pid();
    let until = Instant::now() + Duration::from_secs(4);
    let rss = attack::watch_rss(pid, until);
    // As large as BatchAuthorize allows, so that only the process-wide budget can refuse them.
    let metadata = vec![("authorization".to_owned(), app.bearer())];
    let attack = attack::partial_bodies(
        app.server.addr,
        "/roster.v1.AccessService/BatchAuthorize",
        metadata,
        4,
        40,
        (2 << 20) - 64,
        until,
    );
    let calls = app.legitimate_calls(app.channel().await, until, ENOUGH_CALLS).await;
    attack.await.unwrap();
    let peak = rss.await.unwrap();
    println!("server RSS at most {peak} KiB during the attack");
    assert!(peak < 160 * 1024, "RSS reached {peak} KiB");
    assert_nearly_all(&calls, IN_TIME);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_connections_are_closed_and_cost_little() {
    let app = Guarded::start(&[], None).await;
    let pid = app.server.pid();
    let before = attack::rss_kib(pid);
    let started = Instant::now();
    let silent = attack::silent_connections(app.server.addr, 3000).await;
    let opened = Instant::now();
    let during = attack::rss_kib(pid);
    println!(
        "{} silent connections opened in {:?}; server RSS {before} -> {during} KiB",
        silent.len(),
        started.elapsed()
    );
    assert!(silent.len() >= 2500, "the attack ran: {} connections", silent.len());
    assert!(during < before + 48 * 1024, "RSS grew by {} KiB", during - before);
    // A legitimate caller still gets through while they are open.
    let calls = app
        .legitimate_calls(
            app.channel().await,
            Instant::now() + Duration::from_secs(1),
            ENOUGH_CALLS,
        )
        .await;
    // One second of calls: fewer are asked for in it.
    assert_nearly_all(&calls, IN_TIME / 2);
    // None outlives the handshake timeout (5 s by default) by much.
    tokio::time::sleep_until((opened + Duration::from_secs(7)).into()).await;
    let open = silent.iter().filter(|s| !attack::closed_by_server(s)).count();
    assert_eq!(open, 0, "{open} silent connections are still open 7 s after the last one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_the_file_descriptor_limit_the_server_neither_spins_nor_goes_silent() {
    let app = Guarded::start(&[], Some(600)).await;
    let pid = app.server.pid();
    // An identified connection (it carried a call with a credential), so that it is not one a
    // newcomer may push out.
    let channel = app.channel().await;
    app.legitimate_calls(channel.clone(), Instant::now() + Duration::from_millis(50), 1).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let silent = attack::silent_connections(app.server.addr, 900).await;
    println!("{} connections opened against a limit of 600 files", silent.len());
    let cpu_before = attack::cpu_time(pid);
    let watched = Instant::now();
    let mut answered = 0;
    let mut not_serving = 0;
    while watched.elapsed() < Duration::from_secs(3) {
        let status = health_status(&mut health).await;
        answered += 1;
        not_serving += u32::from(status == 2);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cpu = attack::cpu_time(pid) - cpu_before;
    println!("over {:?}: {cpu:?} of CPU, {answered} health answers", watched.elapsed());
    assert!(cpu < Duration::from_millis(1500), "the server used {cpu:?} of CPU in 3 s");
    // New connections push out the oldest pending ones, so the server can still take callers.
    assert_eq!(not_serving, 0, "health reported NOT_SERVING {not_serving} times");
}

/// AccessService's health status (readiness), asked on `health`.
async fn health_status(health: &mut tonic_health::pb::health_client::HealthClient<Channel>) -> i32 {
    let service = "roster.v1.AccessService".to_owned();
    let mut request = Request::new(tonic_health::pb::HealthCheckRequest { service });
    request.set_timeout(Duration::from_secs(2));
    health.check(request).await.expect("health answers").into_inner().status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_says_not_serving_while_every_connection_slot_is_taken() {
    let app =
        Guarded::start(&["--max-connections", "40", "--max-pending-connections", "10"], None).await;
    // Connections that carried a call with a credential hold their slots: 40 of them fill the
    // server.
    let mut channels = Vec::new();
    for _ in 0..40 {
        let channel = app.channel().await;
        let mut access = pb::access_service_client::AccessServiceClient::new(channel.clone());
        let mut request = Request::new(check(
            "alice",
            "0190c3b2-7d1e-7a3c-9f00-5b1d2c3e4f50",
            "",
            "organization.read",
        ));
        request.metadata_mut().insert("authorization", app.bearer().parse().unwrap());
        access.authorize(request).await.expect("a slot while there are some");
        channels.push(channel);
    }
    let mut health = tonic_health::pb::health_client::HealthClient::new(channels[0].clone());
    let mut seen = Vec::new();
    for _ in 0..30 {
        seen.push(health_status(&mut health).await);
        if seen.last() == Some(&2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen.last(), Some(&2), "NOT_SERVING while no connection can be taken: {seen:?}");
    channels.truncate(1);
    let mut serving = false;
    for _ in 0..50 {
        if health_status(&mut health).await == 1 {
            serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(serving, "SERVING again once connections are free");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_attacks_at_once_leave_legitimate_calls_and_memory_unharmed() {
    let app = Guarded::start(&[], None).await;
    let (addr, pid) = (app.server.addr, app.server.pid());
    let channel = app.channel().await;
    let until = Instant::now() + Duration::from_secs(6);
    let rss = attack::watch_rss(pid, until);
    let streams = attack::stalled_streams(addr, 1030, until);
    let bodies = attack::partial_bodies(
        addr,
        "/roster.v1.AccessService/BatchAuthorize",
        Vec::new(),
        4,
        40,
        4 << 20,
        until,
    );
    let silent = tokio::spawn(attack::silent_connections(addr, 4000));
    let calls = app.legitimate_calls(channel, until, ENOUGH_CALLS).await;
    let peak = rss.await.unwrap();
    streams.await.unwrap();
    bodies.await.unwrap();
    let silent = silent.await.unwrap();
    println!("{} silent connections; server RSS at most {peak} KiB", silent.len());
    assert_nearly_all(&calls, IN_TIME);
    assert!(peak < 160 * 1024, "RSS reached {peak} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_framing_errors_are_invalid_argument_and_not_logged_as_errors() {
    let app = Guarded::start(&[], None).await;
    let addr = app.server.addr;
    let mut send = attack::connect(addr).await.unwrap();
    let bearer = app.bearer();
    let authorize =
        || grpc_request(addr, "/roster.v1.AccessService/Authorize", &[("authorization", &bearer)]);
    let message = prost::Message::encode_to_vec(&check(
        "alice",
        "0190c3b2-7d1e-7a3c-9f00-5b1d2c3e4f50",
        "",
        "organization.read",
    ));
    let framed = |flag: u8, body: &[u8]| {
        let mut bytes = frame_prefix(flag, body.len() as u32).to_vec();
        bytes.extend_from_slice(body);
        prost::bytes::Bytes::from(bytes)
    };
    let cases = [
        ("a compressed flag without grpc-encoding", framed(1, &message), Code::InvalidArgument),
        ("a compressed flag of 2", framed(2, &message), Code::InvalidArgument),
        (
            "a truncated message",
            framed(0, &message).slice(..message.len() - 2),
            Code::InvalidArgument,
        ),
        ("a truncated prefix", frame_prefix(0, 10).slice(..3), Code::InvalidArgument),
        ("no message at all", prost::bytes::Bytes::new(), Code::InvalidArgument),
        (
            "two messages on a unary call",
            [framed(0, &message), framed(0, &message)].concat().into(),
            Code::InvalidArgument,
        ),
        ("a 5 MiB announcement", frame_prefix(0, 5 << 20), Code::ResourceExhausted),
    ];
    for (what, body, code) in cases {
        let status = raw_call(&mut send, authorize(), body, true).await;
        let status = status.unwrap_or_else(|| panic!("{what}: no status"));
        assert_eq!(status.code, code, "{what}: {status:?}");
        assert!(!status.message.is_empty(), "{what}: the message says what is wrong");
    }
    // The well-formed call on the same connection still works.
    let status = raw_call(&mut send, authorize(), framed(0, &message), true).await.unwrap();
    assert_eq!(status.code, Code::Ok, "{status:?}");
    let log = std::fs::read_to_string(&app.log).unwrap();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.is_empty(), "client mistakes logged as errors: {errors:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_malformed_checks_give_a_bounded_error() {
    let app = Guarded::start(&[], None).await;
    let mut send = attack::connect(app.server.addr).await.unwrap();
    let bearer = app.bearer();
    let request = grpc_request(
        app.server.addr,
        "/roster.v1.AccessService/BatchAuthorize",
        &[("authorization", &bearer)],
    );
    let batch = pb::BatchAuthorizeRequest {
        checks: (0..1000).map(|i| check(&format!(" bad{i} "), "not-a-uuid", "", "nope")).collect(),
        consistency: None,
    };
    let message = prost::Message::encode_to_vec(&batch);
    let mut body = frame_prefix(0, message.len() as u32).to_vec();
    body.extend_from_slice(&message);
    let status = raw_call(&mut send, request, body.into(), true).await.expect("a status");
    assert_eq!(status.code, Code::InvalidArgument, "{status:?}");
    println!("status headers: {} bytes", status.status_bytes);
    assert!(status.status_bytes < 8 * 1024, "{} bytes of status", status.status_bytes);
    assert!(status.message.contains("more invalid fields"), "{}", status.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_does_not_arrive_in_time_is_cut_off() {
    let app = crate::common::spawn_app_with(crate::common::Backend::Sqlite, |config| {
        config.request_body_timeout_ms = 500;
    })
    .await;
    let mut send = attack::connect(app.addr).await.unwrap();
    let request = grpc_request(app.addr, "/roster.v1.AccessService/Authorize", &[]);
    // Ten bytes of a hundred announced, and then nothing.
    let mut body = frame_prefix(0, 100).to_vec();
    body.extend_from_slice(&[0x0a; 10]);
    let started = Instant::now();
    let status = raw_call(&mut send, request, body.into(), false).await.expect("a status");
    assert_eq!(status.code, Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "cut off after {:?}", started.elapsed());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_clients_reconnect() {
    let app = crate::common::spawn_app_with(crate::common::Backend::Sqlite, |config| {
        config.idle_timeout_secs = 1;
        config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let metrics = app.metrics_addr.unwrap();
    let owner = crate::common::User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    assert!(app.allowed(&owner.id, &org, "", "organization.read").await);
    let closed = crate::common::wait_for_sample(
        metrics,
        "roster_connections_timed_out_total",
        1.0,
        Duration::from_secs(5),
    )
    .await;
    assert!(closed, "the idle connection is closed");
    // The client's channel reconnects on its next call.
    assert!(app.allowed(&owner.id, &org, "", "organization.read").await);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_with_a_call_open_is_never_idle() {
    let app = crate::common::spawn_app_with(crate::common::Backend::Sqlite, |config| {
        config.idle_timeout_secs = 1;
        config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let metrics = app.metrics_addr.unwrap();
    let timed_out = "roster_connections_timed_out_total";
    // Up for longer than the idle timeout before its first connection.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let owner = crate::common::User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(app.channel());
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap().expect("the current status");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let page = crate::common::scrape(metrics).await;
    assert_eq!(crate::common::sample(&page, timed_out), Some(0.0), "closed while a call was open");
    assert!(app.allowed(&owner.id, &org, "", "organization.read").await);
    drop(watch);
    let closed =
        crate::common::wait_for_sample(metrics, timed_out, 1.0, Duration::from_secs(5)).await;
    assert!(closed, "closed once idle");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_that_need_no_credential_cannot_take_the_request_byte_budget() {
    let app = Guarded::start(&[], None).await;
    let until = Instant::now() + Duration::from_secs(4);
    // Reflection and health need no credential: 3 × 200 of their calls, each announcing 60 kB
    // and sending all of it but the last byte.
    let attack = attack::partial_bodies(
        app.server.addr,
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        Vec::new(),
        3,
        200,
        60_000,
        until,
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Batches large enough to arrive in several pieces, which is when a message holds budget.
    let mut access = pb::access_service_client::AccessServiceClient::new(app.channel().await);
    for i in 0..5 {
        let batch = pb::BatchAuthorizeRequest {
            checks: (0..300)
                .map(|_| {
                    check("alice", "0190c3b2-7d1e-7a3c-9f00-5b1d2c3e4f50", "", "organization.read")
                })
                .collect(),
            consistency: None,
        };
        let mut request = Request::new(batch);
        request.metadata_mut().insert("authorization", app.bearer().parse().unwrap());
        let answered = access.batch_authorize(request).await;
        assert!(answered.is_ok(), "batch {i}: {answered:?}");
    }
    attack.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_a_credential_is_closed_even_while_a_call_is_open() {
    let app = Guarded::start(&["--handshake-timeout-ms", "1000"], None).await;
    let addr = app.server.addr;
    let mut send = attack::connect(addr).await.unwrap();
    // A health Watch needs no credential and never ends by itself.
    let mut ready = send.clone().ready().await.unwrap();
    let request = grpc_request(addr, "/grpc.health.v1.Health/Watch", &[]);
    let (response, mut body) = ready.send_request(request, false).unwrap();
    body.send_data(frame_prefix(0, 0), true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let health = grpc_request(addr, "/grpc.health.v1.Health/Check", &[]);
    let status = raw_call(&mut send, health, frame_prefix(0, 0), true).await;
    assert!(
        status.is_none(),
        "the connection still answers after 3 handshake timeouts: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_checker_without_a_credential_is_told_to_go_away_rather_than_cut_off() {
    // A load balancer checks health over one long-lived connection with no credential. That
    // connection is still held to the handshake timeout, but it gets a GOAWAY, which tells the
    // client to move its next checks to a new connection, instead of a reset that fails the
    // checks it has in flight.
    let app = Guarded::start(&["--handshake-timeout-ms", "500"], None).await;
    let addr = app.server.addr;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let health = grpc_request(addr, "/grpc.health.v1.Health/Check", &[]);
    let status = raw_call(&mut send, health, frame_prefix(0, 0), true).await;
    assert_eq!(status.map(|s| s.code), Some(Code::Ok), "the check is answered");
    let refused = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match send.clone().ready().await {
                Ok(ready) => send = ready,
                Err(err) => break err,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the connection is closed after the handshake timeout");
    assert!(
        refused.is_go_away() && refused.reason() == Some(h2::Reason::NO_ERROR),
        "closed without a GOAWAY: {refused:?}"
    );
    let ended = tokio::time::timeout(Duration::from_secs(3), connection).await;
    assert!(matches!(ended, Ok(Ok(Ok(())))), "the connection ends cleanly: {ended:?}");
}
