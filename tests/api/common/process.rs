//! The real `roster` binary as a child process, for tests that kill, restart or run several.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use roster::pb::access_service_client::AccessServiceClient;
use roster::pb::team_service_client::TeamServiceClient;
use roster::pb::watch_service_client::WatchServiceClient;
use tonic::transport::Channel;

/// A free loopback port.
pub fn free_port() -> u16 {
    // Below Linux's ephemeral range (32768 and up by default), where the kernel never hands
    // out a port of its own (to a bind to port 0 or to a connection) between this check and
    // the program's bind.
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    // Each at most once in this process: a port handed out may be unbound for a while (a mail
    // server that is down on purpose).
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    if range > 11000 {
        let mut given = GIVEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for _ in 0..100 {
            let port = rand::random_range(10000..range);
            if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                given.push(port);
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The real binary, run as a child process.
pub struct Server {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Server {
    /// Starts the binary with the test settings.
    pub async fn start(database_url: &str, smtp_port: u16, log: &std::path::Path) -> Server {
        Self::start_with(database_url, smtp_port, log, &[], None).await
    }

    /// Starts the binary with extra flags and a log filter.
    pub async fn start_with(
        database_url: &str,
        smtp_port: u16,
        log: &std::path::Path,
        extra: &[&str],
        rust_log: Option<&str>,
    ) -> Server {
        Self::start_with_env(database_url, smtp_port, log, extra, rust_log, &[]).await
    }

    /// Starts the binary with extra flags, a log filter and extra environment variables.
    pub async fn start_with_env(
        database_url: &str,
        smtp_port: u16,
        log: &std::path::Path,
        extra: &[&str],
        rust_log: Option<&str>,
        env: &[(&str, &str)],
    ) -> Server {
        Self::start_limited(database_url, smtp_port, log, extra, rust_log, env, None).await
    }

    /// Starts the binary as [`Server::start_with_env`] does, with its file-descriptor limit
    /// (soft and hard) set to `open_files` when given.
    pub async fn start_limited(
        database_url: &str,
        smtp_port: u16,
        log: &std::path::Path,
        extra: &[&str],
        rust_log: Option<&str>,
        env: &[(&str, &str)],
        open_files: Option<u64>,
    ) -> Server {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_roster"));
        if let Some(limit) = open_files {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: between fork and exec the closure only calls setrlimit, which is
            // async-signal-safe, on a struct it owns.
            unsafe {
                command.pre_exec(move || {
                    let rlimit = libc::rlimit { rlim_cur: limit, rlim_max: limit };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        match rust_log {
            Some(filter) => command.env("RUST_LOG", filter),
            None => command.env_remove("RUST_LOG"),
        };
        let child = command
            .envs(env.iter().copied())
            .args(["--listen", &addr.to_string(), "--database-url", database_url])
            .args(["--smtp-url", &format!("smtp://127.0.0.1:{smtp_port}")])
            .args([
                "--mail-retry-base-ms",
                "50",
                "--mail-retry-max-ms",
                "500",
                "--mail-claim-lease-secs",
                "1",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let server = Server { child, addr };
        // A debug build migrating a fresh database on a busy machine takes a while.
        for _ in 0..1200 {
            if let Ok(channel) =
                Channel::from_shared(format!("http://{addr}")).unwrap().connect().await
            {
                let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
                let check = health
                    .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
                    .await;
                if check.is_ok_and(|r| r.into_inner().status == 1) {
                    return server;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the server did not become ready");
    }

    /// A TeamService client.
    pub async fn team(&self) -> TeamServiceClient<Channel> {
        TeamServiceClient::new(
            Channel::from_shared(format!("http://{}", self.addr)).unwrap().connect().await.unwrap(),
        )
    }

    /// SIGKILL.
    pub fn kill_hard(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    /// SIGTERM, and a clean exit.
    pub fn stop(mut self) {
        let status =
            Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "graceful stop exits cleanly: {exit:?}");
    }
}

impl Server {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A WatchService client.
    pub async fn watch(&self) -> WatchServiceClient<Channel> {
        WatchServiceClient::new(
            Channel::from_shared(format!("http://{}", self.addr)).unwrap().connect().await.unwrap(),
        )
    }

    /// An AccessService client.
    pub async fn access(&self) -> AccessServiceClient<Channel> {
        AccessServiceClient::new(
            Channel::from_shared(format!("http://{}", self.addr)).unwrap().connect().await.unwrap(),
        )
    }
}

impl Drop for Server {
    // A test that fails half-way must not leave its servers running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
