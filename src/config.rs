//! Configuration: defaults < `ROSTER_*` environment variables < command-line flags.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::storage::redact_url;

/// Roster: team management and access control over gRPC.
#[derive(Debug, Parser)]
#[command(name = "roster", version, about)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings shared by every command.
    #[command(flatten)]
    pub config: Config,
}

/// Subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Apply migrations, then serve gRPC (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Print a new service token for AccessService callers, and the line that allows it in
    /// `--service-tokens-file`.
    ServiceToken {
        /// Name of the calling service, recorded with each of its Authorize calls.
        name: String,
    },
    /// For development and tests only: print an end-user JWT signed with the HS256 secret of
    /// `--jwt-secret-file`, for `--jwt-issuer` and `--jwt-audience`, as a server in jwt mode
    /// with the same flags accepts it. Real users get their tokens from the identity provider.
    DevToken {
        /// The user id (the `sub` claim).
        user_id: String,
        /// The user's email (the `email` claim); omitted when not given.
        #[arg(long)]
        email: Option<String>,
        /// Leave `email_verified` out, as an identity provider that has not verified the email
        /// would (it is `true` otherwise).
        #[arg(long)]
        unverified: bool,
        /// How long the token is valid, in seconds.
        #[arg(long, default_value_t = 3600)]
        valid_secs: u64,
    },
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// How callers are identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// Trust the `x-user-id` and `x-user-email` metadata. For loopback use and tests only.
    Dev,
    /// End users present `authorization: Bearer <JWT>`; services a service token or a TLS client
    /// certificate.
    Jwt,
}

/// Every setting of the server.
#[derive(Clone, Args)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "ROSTER_LISTEN", default_value = "127.0.0.1:50051", global = true)]
    pub listen: SocketAddr,

    /// Address to serve Prometheus metrics on, at `/metrics` over plain HTTP; off when unset.
    #[arg(long, env = "ROSTER_METRICS_LISTEN", global = true)]
    pub metrics_listen: Option<SocketAddr>,

    /// Database URL: `sqlite://FILE?mode=rwc` or `postgres://USER:PASSWORD@HOST/DB`.
    #[arg(
        long,
        env = "ROSTER_DATABASE_URL",
        default_value = "sqlite://roster.db?mode=rwc",
        global = true
    )]
    pub database_url: String,

    /// Folder where invitation emails are written as `.eml` files when no SMTP URL is set.
    #[arg(long, env = "ROSTER_MAIL_DIR", default_value = "mail", global = true)]
    pub mail_dir: PathBuf,

    /// SMTP server for invitation emails, e.g. `smtp://mail:25` or `smtps://user:pass@host`.
    #[arg(long, env = "ROSTER_SMTP_URL", global = true)]
    pub smtp_url: Option<String>,

    /// Sender of invitation emails.
    #[arg(
        long,
        env = "ROSTER_MAIL_FROM",
        default_value = "Roster <roster@localhost>",
        global = true
    )]
    pub mail_from: String,

    /// Accept-link template; `{token}` is replaced by the invitation token.
    #[arg(
        long,
        env = "ROSTER_INVITE_URL",
        default_value = "http://localhost:3000/invitations/accept?token={token}",
        global = true
    )]
    pub invite_url: String,

    /// Delay before the first retry of a failed email, in milliseconds; doubles per failure.
    #[arg(long, env = "ROSTER_MAIL_RETRY_BASE_MS", default_value_t = 2000, global = true)]
    pub mail_retry_base_ms: u64,

    /// Longest delay between email retries, in milliseconds.
    #[arg(long, env = "ROSTER_MAIL_RETRY_MAX_MS", default_value_t = 300_000, global = true)]
    pub mail_retry_max_ms: u64,

    /// Attempts before an email is marked failed.
    #[arg(long, env = "ROSTER_MAIL_MAX_ATTEMPTS", default_value_t = 12, global = true)]
    pub mail_max_attempts: i32,

    /// Seconds a worker reserves an email it is sending; if the process dies meanwhile, another
    /// attempt follows after this lease (delivery is at least once).
    #[arg(long, env = "ROSTER_MAIL_CLAIM_LEASE_SECS", default_value_t = 60, global = true)]
    pub mail_claim_lease_secs: u64,

    /// How callers are identified.
    #[arg(long, env = "ROSTER_AUTH", value_enum, default_value = "dev", global = true)]
    pub auth: AuthMode,

    /// HS256 shared secret for end-user JWTs: the file's bytes as they are, but for one line
    /// ending at the end; at least 32 bytes.
    #[arg(long, env = "ROSTER_JWT_SECRET_FILE", global = true)]
    pub jwt_secret_file: Option<PathBuf>,

    /// PEM public key (RSA, P-256 or Ed25519) verifying end-user JWTs.
    #[arg(long, env = "ROSTER_JWT_PUBLIC_KEY_FILE", global = true)]
    pub jwt_public_key_file: Option<PathBuf>,

    /// JWKS document whose keys, chosen by `kid`, verify end-user JWTs.
    #[arg(long, env = "ROSTER_JWT_JWKS_FILE", global = true)]
    pub jwt_jwks_file: Option<PathBuf>,

    /// Required `iss` of end-user JWTs.
    #[arg(long, env = "ROSTER_JWT_ISSUER", global = true)]
    pub jwt_issuer: Option<String>,

    /// Required `aud` of end-user JWTs.
    #[arg(long, env = "ROSTER_JWT_AUDIENCE", global = true)]
    pub jwt_audience: Option<String>,

    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[arg(long, env = "ROSTER_JWT_LEEWAY_SECS", default_value_t = 30, global = true)]
    pub jwt_leeway_secs: u64,

    /// Treat an end-user JWT without an `email_verified` claim as verified, for identity
    /// providers that never send the claim. Only a missing claim: `email_verified: false` is
    /// always refused. Without it, founding organizations, inviting and accepting invitations
    /// need `email_verified: true`. Logged as a warning at start.
    #[arg(long, env = "ROSTER_JWT_ALLOW_MISSING_EMAIL_VERIFIED", global = true)]
    pub jwt_allow_missing_email_verified: bool,

    /// File of `NAME SHA256HEX` lines: hashes of the bearer tokens services use on AccessService.
    #[arg(long, env = "ROSTER_SERVICE_TOKENS_FILE", global = true)]
    pub service_tokens_file: Option<PathBuf>,

    /// Server certificate chain (PEM); with --tls-key, the listener speaks TLS.
    #[arg(long, env = "ROSTER_TLS_CERT", global = true, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "ROSTER_TLS_KEY", global = true, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// CA certificate (PEM) that signs the client certificates services may present instead of a
    /// token; requires TLS.
    #[arg(long, env = "ROSTER_TLS_CLIENT_CA", global = true)]
    pub tls_client_ca: Option<PathBuf>,

    /// Allow `--auth dev` on an address other than loopback. Dev mode trusts whatever user id a
    /// caller sends, so on a reachable address anyone can act as anyone.
    #[arg(long, env = "ROSTER_INSECURE_DEV_AUTH_ON_NETWORK", global = true)]
    pub insecure_dev_auth_on_network: bool,

    /// Log format.
    #[arg(long, env = "ROSTER_LOG_FORMAT", value_enum, default_value = "text", global = true)]
    pub log_format: LogFormat,

    /// Most calls served at once; calls beyond it are refused at once with RESOURCE_EXHAUSTED.
    #[arg(long, env = "ROSTER_MAX_IN_FLIGHT", default_value_t = 1024, global = true)]
    pub max_in_flight: usize,

    /// Longest a call may run, in milliseconds, before it is answered DEADLINE_EXCEEDED; a
    /// shorter `grpc-timeout` sent by the client applies instead.
    #[arg(long, env = "ROSTER_REQUEST_TIMEOUT_MS", default_value_t = 10_000, global = true)]
    pub request_timeout_ms: u64,

    /// Longest a request's message may take to arrive after its headers, in milliseconds;
    /// then the call is answered DEADLINE_EXCEEDED and its buffered bytes are freed.
    #[arg(long, env = "ROSTER_REQUEST_BODY_TIMEOUT_MS", default_value_t = 5_000, global = true)]
    pub request_body_timeout_ms: u64,

    /// Largest request message, in bytes, of every method but BatchAuthorize (Authorize has a
    /// fixed limit of 4 KiB, which its longest valid request fits); a larger one is refused
    /// with RESOURCE_EXHAUSTED before it is read.
    #[arg(long, env = "ROSTER_MAX_REQUEST_BYTES", default_value_t = 64 * 1024, global = true)]
    pub max_request_bytes: usize,

    /// Largest BatchAuthorize request message, in bytes: room for 1,000 checks with the longest
    /// valid ids.
    #[arg(
        long,
        env = "ROSTER_MAX_BATCH_REQUEST_BYTES",
        default_value_t = 2 * 1024 * 1024,
        global = true
    )]
    pub max_batch_request_bytes: usize,

    /// Request bytes the whole process may hold at once while messages arrive; a message that
    /// does not fit is refused with RESOURCE_EXHAUSTED (retry with backoff).
    #[arg(
        long,
        env = "ROSTER_MAX_BUFFERED_REQUEST_BYTES",
        default_value_t = 32 * 1024 * 1024,
        global = true
    )]
    pub max_buffered_request_bytes: usize,

    /// Most client connections open at once; a connection beyond it is closed as soon as it is
    /// accepted. Lowered at start to fit the process's file-descriptor limit.
    #[arg(long, env = "ROSTER_MAX_CONNECTIONS", default_value_t = 4096, global = true)]
    pub max_connections: usize,

    /// Most connections that have not yet carried a call with a valid credential; a new
    /// connection beyond it closes the oldest of them, so that silent or unauthenticated peers
    /// cannot keep callers out.
    #[arg(long, env = "ROSTER_MAX_PENDING_CONNECTIONS", default_value_t = 256, global = true)]
    pub max_pending_connections: usize,

    /// Time a new connection has, in milliseconds, to finish its TLS and HTTP/2 handshakes and
    /// send a call with a valid credential; otherwise it is closed.
    #[arg(long, env = "ROSTER_HANDSHAKE_TIMEOUT_MS", default_value_t = 5_000, global = true)]
    pub handshake_timeout_ms: u64,

    /// Seconds a connection may stay without a call before it is closed (with an HTTP/2
    /// GOAWAY, so clients reconnect cleanly).
    #[arg(long, env = "ROSTER_IDLE_TIMEOUT_SECS", default_value_t = 300, global = true)]
    pub idle_timeout_secs: u64,

    /// Seconds between HTTP/2 pings on a connection that has been quiet, to find dead peers.
    #[arg(long, env = "ROSTER_HTTP2_KEEPALIVE_INTERVAL_SECS", default_value_t = 30, global = true)]
    pub http2_keepalive_interval_secs: u64,

    /// Seconds a peer has to answer a ping before its connection is closed.
    #[arg(long, env = "ROSTER_HTTP2_KEEPALIVE_TIMEOUT_SECS", default_value_t = 10, global = true)]
    pub http2_keepalive_timeout_secs: u64,

    /// Most calls one connection may have open at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS).
    #[arg(long, env = "ROSTER_MAX_STREAMS_PER_CONNECTION", default_value_t = 256, global = true)]
    pub max_streams_per_connection: u32,

    /// Envoy ext_authz: the key, inside the metadata namespace `envoy.filters.http.jwt_authn`,
    /// of the JWT payload Envoy verified (the provider's `payload_in_metadata`); its `sub` is
    /// the user checked.
    #[arg(
        long,
        env = "ROSTER_EXT_AUTHZ_PAYLOAD_KEY",
        default_value = "jwt_payload",
        global = true
    )]
    pub ext_authz_payload_key: String,

    /// Serve gRPC-Web (HTTP/1.1 or HTTP/2, `application/grpc-web`) on the main port besides
    /// native gRPC; `false` serves HTTP/2 gRPC only.
    #[arg(
        long,
        env = "ROSTER_GRPC_WEB",
        default_value_t = true,
        action = clap::ArgAction::Set,
        global = true
    )]
    pub grpc_web: bool,

    /// A browser origin (`https://app.example.com`) whose pages may call the server with
    /// gRPC-Web; repeat the flag (or separate with commas) for several. None by default: no
    /// CORS headers are sent, so no page of another origin can call or read an answer.
    #[arg(
        long = "cors-allowed-origin",
        env = "ROSTER_CORS_ALLOWED_ORIGINS",
        value_delimiter = ',',
        global = true
    )]
    pub cors_allowed_origins: Vec<String>,

    /// Address to serve the AuthZEN 1.0 Authorization API on (HTTP/JSON, `/access/v1/...`),
    /// to service credentials; off when unset. Uses the main port's TLS settings.
    #[arg(long, env = "ROSTER_AUTHZEN_LISTEN", global = true)]
    pub authzen_listen: Option<SocketAddr>,

    /// The AuthZEN Policy Decision Point identifier, a scheme and a host
    /// (`https://pdp.example.com`), published in `/.well-known/authzen-configuration`, for a
    /// server reached through a proxy; by default it is formed from the scheme and the
    /// request's Host.
    #[arg(long, env = "ROSTER_AUTHZEN_BASE_URL", global = true)]
    pub authzen_base_url: Option<String>,

    /// Largest block of request headers (metadata), in bytes (HTTP/2
    /// SETTINGS_MAX_HEADER_LIST_SIZE).
    #[arg(long, env = "ROSTER_MAX_HEADER_LIST_BYTES", default_value_t = 16 * 1024, global = true)]
    pub max_header_list_bytes: u32,

    /// Invitations (created or resent) one organization may send at once, before the rate applies.
    #[arg(long, env = "ROSTER_INVITE_BURST", default_value_t = 20, global = true)]
    pub invite_burst: u32,

    /// Invitations (created or resent) per hour and organization after the burst, per replica.
    #[arg(long, env = "ROSTER_INVITE_RATE_PER_HOUR", default_value_t = 100, global = true)]
    pub invite_rate_per_hour: u32,

    /// Invitations (created or resent) one user may send at once, across all their
    /// organizations, before the rate applies.
    #[arg(long, env = "ROSTER_INVITE_USER_BURST", default_value_t = 20, global = true)]
    pub invite_user_burst: u32,

    /// Invitations (created or resent) per hour and user after the burst, across all their
    /// organizations, per replica.
    #[arg(long, env = "ROSTER_INVITE_USER_RATE_PER_HOUR", default_value_t = 100, global = true)]
    pub invite_user_rate_per_hour: u32,

    /// Invitations (created or resent) one replica may send at once, whoever sends them, before
    /// the rate applies.
    #[arg(long, env = "ROSTER_INVITE_REPLICA_BURST", default_value_t = 200, global = true)]
    pub invite_replica_burst: u32,

    /// Invitations (created or resent) per hour one replica may send after the burst, whoever
    /// sends them.
    #[arg(
        long,
        env = "ROSTER_INVITE_REPLICA_RATE_PER_HOUR",
        default_value_t = 2000,
        global = true
    )]
    pub invite_replica_rate_per_hour: u32,

    /// Organizations one user may create at once, before the rate applies.
    #[arg(long, env = "ROSTER_ORG_CREATE_BURST", default_value_t = 10, global = true)]
    pub org_create_burst: u32,

    /// Organizations per hour one user may create after the burst, per replica.
    #[arg(long, env = "ROSTER_ORG_CREATE_RATE_PER_HOUR", default_value_t = 20, global = true)]
    pub org_create_rate_per_hour: u32,

    /// Rows (members, workspaces and grants) the in-memory Authorize index may hold, about 25
    /// bytes each on average (a grant takes 4, a member about 120); 0 disables it. An organization larger than this is always read from the
    /// database.
    #[arg(long, env = "ROSTER_AUTHZ_CACHE_ENTRIES", default_value_t = 2_000_000, global = true)]
    pub authz_cache_entries: usize,

    /// How long the change log keeps a change for WatchService, as a number and a unit (`s`,
    /// `m`, `h` or `d`); older changes are removed, and a Watch that starts before them is
    /// OUT_OF_RANGE.
    #[arg(
        long,
        env = "ROSTER_CHANGE_RETENTION",
        default_value = "7d",
        value_parser = parse_duration,
        global = true
    )]
    pub change_retention: Duration,

    /// Most WatchService streams (Watch and Snapshot) open at once; one beyond it is refused
    /// with RESOURCE_EXHAUSTED. Streams take no slot of --max-in-flight and have no deadline.
    #[arg(long, env = "ROSTER_MAX_WATCH_STREAMS", default_value_t = 1024, global = true)]
    pub max_watch_streams: usize,

    /// Changes a Watch stream may hold for a consumer that has not read them yet; a live
    /// stream whose consumer falls further behind ends with RESOURCE_EXHAUSTED and the token to
    /// resume from.
    #[arg(long, env = "ROSTER_WATCH_BUFFER", default_value_t = 10_000, global = true)]
    pub watch_buffer: usize,

    /// Seconds to let in-flight calls finish after SIGINT or SIGTERM.
    #[arg(long, env = "ROSTER_SHUTDOWN_GRACE_SECS", default_value_t = 30, global = true)]
    pub shutdown_grace_secs: u64,
}

impl Config {
    /// Checks what clap cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !self.invite_url.contains("{token}") {
            anyhow::bail!("--invite-url must contain {{token}}, where the invitation token goes");
        }
        if self.auth == AuthMode::Dev
            && !self.listen.ip().is_loopback()
            && !self.insecure_dev_auth_on_network
        {
            anyhow::bail!(
                "--auth dev trusts the x-user-id header of every caller and is refused on {}; \
                 listen on 127.0.0.1, or pass --insecure-dev-auth-on-network if you really mean it",
                self.listen
            );
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            anyhow::bail!(
                "--tls-client-ca needs TLS on the listener: set --tls-cert and --tls-key"
            );
        }
        if self.max_in_flight == 0 || self.request_timeout_ms == 0 {
            anyhow::bail!("--max-in-flight and --request-timeout-ms must be positive");
        }
        for origin in &self.cors_allowed_origins {
            check_origin(origin)?;
        }
        if !self.grpc_web && !self.cors_allowed_origins.is_empty() {
            anyhow::bail!("--cors-allowed-origin needs gRPC-Web: drop it or set --grpc-web true");
        }
        if let Some(addr) = self.authzen_listen
            && self.auth == AuthMode::Dev
            && !addr.ip().is_loopback()
            && !self.insecure_dev_auth_on_network
        {
            anyhow::bail!(
                "--auth dev lets every caller of --authzen-listen in and is refused on {addr}; \
                 listen on 127.0.0.1, or pass --insecure-dev-auth-on-network if you really mean it"
            );
        }
        if let Some(base) = &self.authzen_base_url {
            if self.authzen_listen.is_none() {
                anyhow::bail!("--authzen-base-url needs --authzen-listen");
            }
            let rest = base.strip_prefix("https://").or_else(|| base.strip_prefix("http://"));
            // Scheme and host only: the API is served at the root of the listener, where the
            // metadata's well-known path and every endpoint's default path begin.
            let fine = rest.is_some_and(|host| {
                host.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'[')
                    && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
            });
            if !fine {
                anyhow::bail!(
                    "--authzen-base-url {base:?} must be a scheme and a host, without a path, \
                     such as https://pdp.example.com"
                );
            }
        }
        for (flag, value) in [
            ("--request-body-timeout-ms", self.request_body_timeout_ms),
            ("--handshake-timeout-ms", self.handshake_timeout_ms),
            ("--idle-timeout-secs", self.idle_timeout_secs),
            ("--http2-keepalive-interval-secs", self.http2_keepalive_interval_secs),
            ("--http2-keepalive-timeout-secs", self.http2_keepalive_timeout_secs),
            ("--max-streams-per-connection", u64::from(self.max_streams_per_connection)),
            ("--max-connections", self.max_connections as u64),
            ("--max-pending-connections", self.max_pending_connections as u64),
        ] {
            if value == 0 {
                anyhow::bail!("{flag} must be positive");
            }
        }
        if self.max_pending_connections >= self.max_connections {
            // Otherwise silent peers could hold every slot: newcomers would be refused at
            // accept rather than push the oldest pending connection out.
            anyhow::bail!("--max-pending-connections must be less than --max-connections");
        }
        if self.max_request_bytes < 1024 || self.max_batch_request_bytes < self.max_request_bytes {
            anyhow::bail!(
                "--max-request-bytes must be at least 1024 and --max-batch-request-bytes at least as large"
            );
        }
        if self.max_buffered_request_bytes < self.max_batch_request_bytes {
            anyhow::bail!(
                "--max-buffered-request-bytes must hold at least one message of --max-batch-request-bytes"
            );
        }
        // An AuthZEN boxcar is charged four times its size, for its parsed form.
        if self.authzen_listen.is_some()
            && self.max_buffered_request_bytes / 4 < self.max_batch_request_bytes
        {
            anyhow::bail!(
                "--authzen-listen needs --max-buffered-request-bytes of at least four times \
                 --max-batch-request-bytes: an AuthZEN body is held with its parsed form"
            );
        }
        if self.max_header_list_bytes < 1024 {
            anyhow::bail!("--max-header-list-bytes must be at least 1024");
        }
        for (name, value) in [
            ("--invite-burst", self.invite_burst),
            ("--invite-rate-per-hour", self.invite_rate_per_hour),
            ("--invite-user-burst", self.invite_user_burst),
            ("--invite-user-rate-per-hour", self.invite_user_rate_per_hour),
            ("--invite-replica-burst", self.invite_replica_burst),
            ("--invite-replica-rate-per-hour", self.invite_replica_rate_per_hour),
            ("--org-create-burst", self.org_create_burst),
            ("--org-create-rate-per-hour", self.org_create_rate_per_hour),
        ] {
            if value == 0 {
                anyhow::bail!("{name} must be positive");
            }
        }
        if self.max_watch_streams == 0 || self.watch_buffer == 0 {
            anyhow::bail!("--max-watch-streams and --watch-buffer must be positive");
        }
        if self.change_retention < Duration::from_secs(1) {
            anyhow::bail!("--change-retention must be at least 1s");
        }
        if self.mail_claim_lease_secs == 0 {
            anyhow::bail!("--mail-claim-lease-secs must be at least 1");
        }
        if self.mail_max_attempts < 1 {
            anyhow::bail!("--mail-max-attempts must be at least 1");
        }
        if self.mail_retry_base_ms == 0 || self.mail_retry_max_ms < self.mail_retry_base_ms {
            anyhow::bail!("--mail-retry-base-ms must be positive and at most --mail-retry-max-ms");
        }
        Ok(())
    }

    /// Delay before the first retry.
    pub fn mail_retry_base(&self) -> Duration {
        Duration::from_millis(self.mail_retry_base_ms)
    }

    /// Longest retry delay.
    pub fn mail_retry_max(&self) -> Duration {
        Duration::from_millis(self.mail_retry_max_ms)
    }
}

/// Reads a duration written as a whole number and a unit: `30s`, `15m`, `12h`, `7d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let problem =
        || format!("{text:?} is not a duration: write a number and s, m, h or d, like 7d");
    let unit_at = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(problem)?;
    let (digits, unit) = text.split_at(unit_at);
    let amount: u64 = digits.parse().map_err(|_| problem())?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(problem()),
    };
    amount.checked_mul(seconds).map(Duration::from_secs).ok_or_else(problem)
}

/// Writes a duration as [`parse_duration`] reads it, in the largest unit that divides it.
pub fn format_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if seconds >= size && seconds.is_multiple_of(size) {
            return format!("{}{unit}", seconds / size);
        }
    }
    format!("{seconds}s")
}

impl fmt::Debug for Config {
    // Database and SMTP URLs may hold passwords.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("metrics_listen", &self.metrics_listen)
            .field("database_url", &redact_url(&self.database_url))
            .field("mail_dir", &self.mail_dir)
            .field("smtp_url", &self.smtp_url.as_deref().map(redact_url))
            .field("mail_from", &self.mail_from)
            .field("invite_url", &self.invite_url)
            .field("auth", &self.auth)
            .field("log_format", &self.log_format)
            .finish_non_exhaustive()
    }
}

/// An origin as a browser sends it: scheme and host (and port), nothing after; `*` is refused
/// because it would let every page on the web act for a signed-in user.
fn check_origin(origin: &str) -> anyhow::Result<()> {
    let rest = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://"));
    let host_ok = rest.is_some_and(|host| {
        !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
    });
    if !host_ok {
        anyhow::bail!(
            "--cors-allowed-origin {origin:?} is not an origin: give scheme and host, such as \
             https://app.example.com or http://127.0.0.1:8080, without a path or a trailing slash"
        );
    }
    Ok(())
}

/// The configuration reference as a Markdown table, generated from the flags themselves: the
/// README and docs/operations.md carry it between `<!-- config-reference -->` markers, and a
/// test keeps them equal to it.
pub fn reference_markdown() -> String {
    use clap::CommandFactory as _;
    let command = Cli::command();
    let mut table = String::from("| flag | variable | default | meaning |\n|---|---|---|---|\n");
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "help" | "version") {
            continue;
        }
        let env = arg.get_env().map_or("".to_owned(), |e| format!("`{}`", e.to_string_lossy()));
        let defaults: Vec<String> =
            arg.get_default_values().iter().map(|v| v.to_string_lossy().into_owned()).collect();
        let default = match defaults.as_slice() {
            [] if !arg.get_action().takes_values() => "off".to_owned(),
            [] => "none".to_owned(),
            values => format!("`{}`", values.join(",")),
        };
        let possible: Vec<String> =
            arg.get_possible_values().iter().map(|v| format!("`{}`", v.get_name())).collect();
        let mut meaning = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        if !meaning.ends_with('.') {
            meaning.push('.');
        }
        if !possible.is_empty() && arg.get_action().takes_values() {
            meaning.push_str(&format!(" One of {}.", possible.join(", ")));
        }
        let meaning = meaning.replace('|', "\\|").replace('\n', " ");
        table.push_str(&format!("| `--{long}` | {env} | {default} | {meaning} |\n"));
    }
    table
}

impl Config {
    /// The defaults, as if no flag or variable were given.
    pub fn defaults() -> Self {
        Cli::parse_from(["roster"]).config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the text between the config-reference markers of a Markdown file starts and ends.
    fn reference_span(path: &str, text: &str) -> std::ops::Range<usize> {
        let start = "<!-- config-reference:start -->\n";
        let end = "<!-- config-reference:end -->";
        let from =
            text.find(start).unwrap_or_else(|| panic!("{path} has no {start}")) + start.len();
        let to = text[from..].find(end).unwrap_or_else(|| panic!("{path} has no {end}")) + from;
        from..to
    }

    #[test]
    fn the_documented_configuration_reference_is_generated_from_the_flags() {
        // Regenerate with: ROSTER_WRITE_CONFIG_REFERENCE=1 cargo test --lib config
        let generated = reference_markdown();
        for path in ["README.md", "docs/operations.md"] {
            let path = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
            let mut text = std::fs::read_to_string(&path).unwrap();
            if std::env::var_os("ROSTER_WRITE_CONFIG_REFERENCE").is_some() {
                text.replace_range(reference_span(&path, &text), &generated);
                std::fs::write(&path, &text).unwrap();
            }
            assert_eq!(
                text[reference_span(&path, &text)],
                generated,
                "{path} is out of date; regenerate it with ROSTER_WRITE_CONFIG_REFERENCE=1 cargo test --lib config"
            );
        }
    }

    #[test]
    fn only_origins_may_be_allowed_to_call_from_a_browser() {
        let mut config = Config::defaults();
        config.cors_allowed_origins =
            vec!["https://app.example.com".to_owned(), "http://127.0.0.1:8080".to_owned()];
        assert!(config.validate().is_ok());
        for bad in ["*", "app.example.com", "https://app.example.com/", "https://", "ftp://x"] {
            config.cors_allowed_origins = vec![bad.to_owned()];
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains("--cors-allowed-origin"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_authzen_listener_takes_a_base_url_only_of_its_own_shape() {
        let mut config = Config::defaults();
        config.authzen_base_url = Some("https://pdp.example.com".to_owned());
        assert!(config.validate().unwrap_err().to_string().contains("--authzen-listen"));
        config.authzen_listen = Some("127.0.0.1:8181".parse().unwrap());
        assert!(config.validate().is_ok());
        config.authzen_base_url = Some("https://pdp.example.com:8443".to_owned());
        assert!(config.validate().is_ok());
        for bad in [
            "pdp.example.com",
            "https://pdp.example.com/",
            "https://pdp.example.com/authz",
            "https://x?a=b",
            "https://",
            "https://:",
        ] {
            config.authzen_base_url = Some(bad.to_owned());
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains("--authzen-base-url"), "{bad}: {err}");
        }
        config.authzen_base_url = None;
        config.authzen_listen = Some("0.0.0.0:8181".parse().unwrap());
        assert!(config.validate().unwrap_err().to_string().contains("--authzen-listen"));
    }

    #[test]
    fn debug_output_redacts_passwords() {
        let mut config = Config::defaults();
        config.database_url = "postgres://roster:hunter2@db/roster".to_owned();
        config.smtp_url = Some("smtps://mailer:pa55@smtp.example.com".to_owned());
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"));
        assert!(!shown.contains("pa55"));
    }

    #[test]
    fn dev_auth_is_refused_off_loopback_unless_forced() {
        let mut config = Config::defaults();
        assert!(config.validate().is_ok());
        config.listen = "0.0.0.0:50051".parse().unwrap();
        assert!(config.validate().is_err());
        config.insecure_dev_auth_on_network = true;
        assert!(config.validate().is_ok());
    }

    #[test]
    fn durations_read_with_their_unit_and_write_back_alike() {
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        for bad in ["", "7", "d", "7w", "-1d", "1.5h", "7 d", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_duration(Duration::from_secs(7 * 86_400)), "7d");
        assert_eq!(format_duration(Duration::from_secs(5400)), "90m");
        assert_eq!(format_duration(Duration::from_secs(61)), "61s");
        assert_eq!(Config::defaults().change_retention, Duration::from_secs(604_800));
    }

    #[test]
    fn flags_work_before_and_after_the_subcommand() {
        let cli = Cli::parse_from(["roster", "migrate", "--database-url", "sqlite://x.db"]);
        assert!(matches!(cli.command, Some(Command::Migrate)));
        assert_eq!(cli.config.database_url, "sqlite://x.db");
    }
}
