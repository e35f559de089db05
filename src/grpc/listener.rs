//! The accept loop and the life of each client connection: what an unauthenticated or silent
//! peer can cost the server is decided here, before any call reaches a handler.
//!
//! - At most `max_connections` are open; one beyond that is closed as soon as it is accepted
//!   (a fast failure that a client retries elsewhere, rather than a hang in the kernel's queue).
//! - A connection is *pending* until it carries a call whose credential checks out
//!   ([`Peer::mark_identified`]). At most `max_pending` are pending; a new connection beyond
//!   that closes the oldest pending one, so a flood of silent or unauthenticated connections
//!   cannot keep real callers out. A pending connection with no call open is closed once the
//!   handshake timeout has passed since it was accepted (TLS, the HTTP/2 preface and a first
//!   identified call must all fit in it).
//! - An identified connection without a call for the idle timeout is closed with a GOAWAY, so
//!   clients reconnect cleanly; HTTP/2 pings find dead peers in between.
//! - Accept errors that mean the process is out of resources (file descriptors, memory) back
//!   off instead of spinning, and are counted, so readiness can report them.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::Instant;
use tonic::body::Body;
use tonic::codegen::http;
use tower::Service;

use super::socket::Coalesced;
use super::tls::TlsAcceptor;

/// How connections are accepted and kept.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most connections open at once that have not carried an identified call.
    pub max_pending: usize,
    /// Time from accept to the first identified call.
    pub handshake_timeout: Duration,
    /// Time without a call after which a connection is closed.
    pub idle_timeout: Duration,
    /// Time between HTTP/2 pings.
    pub keepalive_interval: Duration,
    /// Time a peer has to answer a ping.
    pub keepalive_timeout: Duration,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS.
    pub max_streams: u32,
    /// HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE.
    pub max_header_list_bytes: u32,
    /// How long connections may finish their calls once the server stops.
    pub shutdown_grace: Duration,
    /// Whether HTTP/1.1 is accepted (for gRPC-Web, or the AuthZEN API) besides HTTP/2.
    pub http1: bool,
    /// Whether HTTP/1.1 answers carry a Date header (an HTTP API's do; gRPC-Web's need none).
    pub date_header: bool,
}

/// How long a connection told to go away may finish its calls before it is dropped.
const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// The longest pause after an accept error; the first is a few milliseconds.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Counters of the listener, read by metrics and readiness.
#[derive(Debug, Default)]
pub struct ListenerStats {
    open: AtomicUsize,
    pending: AtomicUsize,
    refused: AtomicU64,
    evicted: AtomicU64,
    timed_out: AtomicU64,
    accept_errors: AtomicU64,
    /// Milliseconds since the listener started, of the last accept error (0: none).
    last_accept_error: AtomicU64,
    capacity: AtomicUsize,
    started: std::sync::OnceLock<Instant>,
}

/// A copy of the listener's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerSnapshot {
    pub open: usize,
    /// Of those, connections that have not carried an identified call.
    pub pending: usize,
    /// The most connections that may be open.
    pub capacity: usize,
    /// Connections closed at accept because `capacity` were open.
    pub refused: u64,
    /// Pending connections closed to make room for a new one.
    pub evicted: u64,
    /// Connections closed by the handshake or idle timeout.
    pub timed_out: u64,
    /// Accept calls that failed for lack of resources.
    pub accept_errors: u64,
    /// Whether an accept failed for lack of resources within the last two seconds.
    pub accept_failing: bool,
}

impl ListenerStats {
    fn elapsed_ms(&self) -> u64 {
        let started = self.started.get_or_init(Instant::now);
        // Never 0, which means "no error yet".
        started.elapsed().as_millis() as u64 + 1
    }

    /// The counters now.
    pub fn snapshot(&self) -> ListenerSnapshot {
        let last_error = self.last_accept_error.load(Ordering::Relaxed);
        ListenerSnapshot {
            open: self.open.load(Ordering::Relaxed),
            pending: self.pending.load(Ordering::Relaxed),
            capacity: self.capacity.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
            timed_out: self.timed_out.load(Ordering::Relaxed),
            accept_errors: self.accept_errors.load(Ordering::Relaxed),
            accept_failing: last_error != 0 && self.elapsed_ms().saturating_sub(last_error) < 2000,
        }
    }
}

/// What a call knows about its connection; a request extension set for every call.
#[derive(Clone, Debug)]
pub struct Peer {
    /// The client's address.
    pub remote: SocketAddr,
    /// Whether the client presented a TLS certificate that chains to `--tls-client-ca` (the TLS
    /// layer refuses any other).
    pub client_certificate: bool,
    conn: Arc<Activity>,
}

impl Peer {
    /// Records that the connection carried a call with a valid credential: it is no longer
    /// pending (neither evicted for newcomers nor held to the handshake timeout).
    pub fn mark_identified(&self) {
        let conn = &self.conn;
        if conn.state.load(Ordering::Relaxed) == PENDING && conn.leave_pending(IDENTIFIED) {
            conn.wake.notify_one();
        }
    }

    /// Notes a call starting on the connection; the guard notes its end when dropped.
    pub fn call_started(&self) -> CallOnConnection {
        self.conn.open_calls.fetch_add(1, Ordering::Relaxed);
        self.conn.carried_call.store(true, Ordering::Relaxed);
        CallOnConnection(self.conn.clone())
    }
}

/// A call open on a connection; see [`Peer::call_started`].
pub struct CallOnConnection(Arc<Activity>);

impl Drop for CallOnConnection {
    fn drop(&mut self) {
        let activity = &self.0;
        activity.last_call_end.store(activity.stats.elapsed_ms(), Ordering::Relaxed);
        activity.open_calls.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection that has not carried an identified call.
const PENDING: u8 = 0;
/// A connection that has carried an identified call.
const IDENTIFIED: u8 = 1;
/// A connection that closed, or was told to close, while pending.
const GONE: u8 = 2;

/// The shared state of one connection.
#[derive(Debug)]
struct Activity {
    /// [`PENDING`], [`IDENTIFIED`] or [`GONE`]; only ever leaves [`PENDING`], once.
    state: AtomicU8,
    open_calls: AtomicU32,
    /// Whether any call has started on it, and so its HTTP/2 handshake is done.
    carried_call: AtomicBool,
    /// Milliseconds (see [`ListenerStats::elapsed_ms`]) when the last call ended.
    last_call_end: AtomicU64,
    /// Woken when the connection is identified or evicted.
    wake: Notify,
    stats: Arc<ListenerStats>,
}

impl Activity {
    fn is_pending(&self) -> bool {
        self.state.load(Ordering::Relaxed) == PENDING
    }

    /// Moves a pending connection to `to`; false if it was no longer pending. The pending
    /// count drops exactly once per connection, whichever way it leaves.
    fn leave_pending(&self, to: u8) -> bool {
        let left =
            self.state.compare_exchange(PENDING, to, Ordering::AcqRel, Ordering::Acquire).is_ok();
        if left {
            self.stats.pending.fetch_sub(1, Ordering::Relaxed);
        }
        left
    }
}

/// Connections that have not carried an identified call, oldest first.
#[derive(Default)]
struct PendingQueue {
    queue: Mutex<VecDeque<Arc<Activity>>>,
}

impl PendingQueue {
    /// Adds a new connection; if more than `max` are pending, closes the oldest.
    fn admit(&self, activity: &Arc<Activity>, max: usize) {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        // Identified or closed connections leave lazily; sweep them when they pile up.
        if queue.len() >= 2 * max {
            queue.retain(|a| a.is_pending());
        }
        queue.push_back(activity.clone());
        let mut pending = queue.iter().filter(|a| a.is_pending()).count();
        while pending > max {
            let Some(oldest) = queue.pop_front() else { break };
            if oldest.leave_pending(GONE) {
                oldest.wake.notify_one();
                oldest.stats.evicted.fetch_add(1, Ordering::Relaxed);
                pending -= 1;
            }
        }
    }
}

/// Accepts connections until `stop` turns true, then lets open connections finish their calls
/// (each is told to go away) and returns once they are closed.
pub async fn serve<S>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    service: S,
    settings: ListenerSettings,
    stats: Arc<ListenerStats>,
    mut stop: watch::Receiver<bool>,
) where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let settings = Arc::new(settings);
    stats.started.get_or_init(Instant::now);
    stats.capacity.store(settings.max_connections, Ordering::Relaxed);
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let pending = Arc::new(PendingQueue::default());
    let builder = Arc::new(http_builder(&settings));
    // Every connection holds a receiver; all are gone once every connection has closed.
    let (closing, connections) = watch::channel(false);
    let mut backoff = Duration::ZERO;
    let mut other_errors = 0u32;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        let (stream, remote) = match accepted {
            Ok(accepted) => {
                backoff = Duration::ZERO;
                other_errors = 0;
                accepted
            }
            Err(err) if is_resource_exhaustion(&err) => {
                stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                stats.last_accept_error.store(stats.elapsed_ms(), Ordering::Relaxed);
                backoff = (backoff * 2).clamp(Duration::from_millis(5), MAX_ACCEPT_BACKOFF);
                tracing::warn!(error = %err, pause_ms = backoff.as_millis() as u64, "cannot accept connections: out of resources; pausing");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => continue,
                    _ = stop.wait_for(|stop| *stop) => break,
                }
            }
            // The peer gave up between connecting and the accept: nothing to do. Should such
            // errors come without end, a millisecond between them keeps this from spinning.
            Err(err) => {
                tracing::debug!(error = %err, "accept failed");
                other_errors += 1;
                if other_errors > 100 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%remote, "refusing a connection: at --max-connections");
            drop(stream);
            continue;
        };
        // Small replies must not wait for Nagle's algorithm (40 ms tails otherwise).
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity {
            state: AtomicU8::new(PENDING),
            open_calls: AtomicU32::new(0),
            carried_call: AtomicBool::new(false),
            // Idle since it was accepted.
            last_call_end: AtomicU64::new(stats.elapsed_ms()),
            wake: Notify::new(),
            stats: stats.clone(),
        });
        stats.open.fetch_add(1, Ordering::Relaxed);
        stats.pending.fetch_add(1, Ordering::Relaxed);
        pending.admit(&activity, settings.max_pending);
        let connection = Connection {
            activity,
            remote,
            settings: settings.clone(),
            builder: builder.clone(),
            closing: connections.clone(),
        };
        let (tls, service) = (tls.clone(), service.clone());
        tokio::spawn(async move {
            let _slot = slot;
            connection.run(stream, tls, service).await;
        });
    }
    // Closes the listening socket at once: new clients are refused rather than left waiting.
    drop(listener);
    drop(connections);
    let _ = closing.send(true);
    closing.closed().await;
}

/// Whether an accept error means the process ran out of something, as opposed to one peer's
/// connection failing.
fn is_resource_exhaustion(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
        || err.kind() == io::ErrorKind::OutOfMemory
}

fn http_builder(settings: &ListenerSettings) -> auto::Builder<TokioExecutor> {
    // HTTP/1.1 is accepted for gRPC-Web (browsers) on the main port, where anything else over
    // it is refused by the web layer before identification, and for the AuthZEN API.
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if !settings.http1 {
        builder = builder.http2_only();
    }
    builder
        .http1()
        .timer(TokioTimer::new())
        // A peer dribbling its headers is cut off, as one slow through its handshake is.
        .header_read_timeout(settings.handshake_timeout)
        // Headers beyond the HTTP/2 bound are refused here as well (hyper needs at least 8 KiB).
        .max_buf_size((settings.max_header_list_bytes as usize).max(8 * 1024))
        .max_headers(100)
        // An HTTP API's answers carry the Date RFC 9110 asks for; gRPC-Web needs none.
        .auto_date_header(settings.date_header);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_streams)
        .max_header_list_size(settings.max_header_list_bytes)
        .keep_alive_interval(settings.keepalive_interval)
        .keep_alive_timeout(settings.keepalive_timeout)
        // Clients that open streams and reset them at once are cut off (CVE-2023-44487).
        .max_pending_accept_reset_streams(64)
        // gRPC has no use for the Date header, which costs a little on every reply; an HTTP
        // API's answers carry it.
        .auto_date_header(settings.date_header);
    builder
}

/// One accepted connection until it closes.
struct Connection {
    activity: Arc<Activity>,
    remote: SocketAddr,
    settings: Arc<ListenerSettings>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    closing: watch::Receiver<bool>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.activity.stats.open.fetch_sub(1, Ordering::Relaxed);
        self.activity.leave_pending(GONE);
    }
}

impl Connection {
    async fn run<S>(self, stream: TcpStream, tls: Option<TlsAcceptor>, service: S)
    where
        S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let accepted = Instant::now();
        let handshake_deadline = accepted + self.settings.handshake_timeout;
        match tls {
            None => self.serve(Coalesced::new(stream), false, service, handshake_deadline).await,
            Some(acceptor) => {
                let handshake = tokio::select! {
                    done = tokio::time::timeout_at(handshake_deadline, acceptor.accept(stream)) => done,
                    _ = self.evicted() => return,
                };
                match handshake {
                    Ok(Ok(stream)) => {
                        let client_certificate = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .is_some_and(|certs| !certs.is_empty());
                        self.serve(
                            Coalesced::new(stream),
                            client_certificate,
                            service,
                            handshake_deadline,
                        )
                        .await;
                    }
                    Ok(Err(err)) => {
                        tracing::debug!(remote = %self.remote, error = %err, "TLS handshake failed")
                    }
                    Err(_) => {
                        self.activity.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(remote = %self.remote, "TLS handshake timed out");
                    }
                }
            }
        }
    }

    /// Completes once the connection has been evicted from the pending queue.
    async fn evicted(&self) {
        loop {
            let woken = self.activity.wake.notified();
            if self.activity.state.load(Ordering::Relaxed) == GONE {
                return;
            }
            woken.await;
        }
    }

    async fn serve<IO, S>(
        &self,
        io: IO,
        client_certificate: bool,
        service: S,
        handshake_deadline: Instant,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let peer = Peer { remote: self.remote, client_certificate, conn: self.activity.clone() };
        let service = TowerToHyperService::new(WithPeer { inner: service, peer });
        let mut connection = pin!(self.builder.serve_connection(TokioIo::new(io), service));
        let mut closing = self.closing.clone();
        let activity = &self.activity;
        let mut identified = false;
        // Whether the connection was told to go away; the timer then ends the drain.
        let mut draining = false;
        let timer = tokio::time::sleep_until(handshake_deadline);
        let mut timer = pin!(timer);
        loop {
            let woken = activity.wake.notified();
            tokio::select! {
                finished = connection.as_mut() => {
                    if let Err(err) = finished {
                        tracing::debug!(remote = %self.remote, error = %err, "connection ended with an error");
                    }
                    break;
                }
                _ = timer.as_mut() => {
                    if draining {
                        tracing::debug!(remote = %self.remote, "connection did not drain in time; dropping it");
                        break;
                    }
                    match self.next_check() {
                        Some(at) => timer.as_mut().reset(at),
                        // Never identified and no call yet: maybe not even through its HTTP/2
                        // handshake, which a GOAWAY would wait for. Closed at once.
                        None if activity.is_pending() && !activity.carried_call.load(Ordering::Relaxed) => {
                            activity.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(remote = %self.remote, "closing a connection that never identified itself");
                            break;
                        }
                        // Calls without a credential, such as a load balancer's health checks:
                        // told to go away, so that its checks move to a new connection rather
                        // than fail, and given no longer to drain than it had to identify.
                        None if activity.is_pending() => {
                            activity.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(remote = %self.remote, "moving a connection that never identified itself");
                            connection.as_mut().graceful_shutdown();
                            draining = true;
                            let grace = self.settings.handshake_timeout.min(DRAIN_GRACE);
                            timer.as_mut().reset(Instant::now() + grace);
                        }
                        None => {
                            activity.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                            connection.as_mut().graceful_shutdown();
                            draining = true;
                            timer.as_mut().reset(Instant::now() + DRAIN_GRACE);
                        }
                    }
                }
                _ = woken => match activity.state.load(Ordering::Relaxed) {
                    GONE => {
                        tracing::debug!(remote = %self.remote, "closing a pending connection to make room");
                        break;
                    }
                    IDENTIFIED if !identified => {
                        identified = true;
                        if !draining {
                            timer.as_mut().reset(Instant::now() + self.settings.idle_timeout);
                        }
                    }
                    _ => {}
                },
                _ = closing.wait_for(|closing| *closing), if !draining => {
                    connection.as_mut().graceful_shutdown();
                    draining = true;
                    timer.as_mut().reset(Instant::now() + self.settings.shutdown_grace);
                }
            }
        }
    }

    /// When the connection's timer should next look, or `None` if it must close now.
    fn next_check(&self) -> Option<Instant> {
        let activity = &self.activity;
        let now = Instant::now();
        // A connection that never presented a credential gets no more time for having calls
        // open: health Watch streams need none and never end by themselves.
        if activity.state.load(Ordering::Relaxed) != IDENTIFIED {
            return None;
        }
        if activity.open_calls.load(Ordering::Relaxed) > 0 {
            // Busy: look again later.
            return Some(now + self.settings.idle_timeout);
        }
        let ended = activity.last_call_end.load(Ordering::Relaxed);
        let idle_ms = activity.stats.elapsed_ms().saturating_sub(ended);
        let idle = Duration::from_millis(idle_ms);
        if idle >= self.settings.idle_timeout {
            return None;
        }
        Some(now + (self.settings.idle_timeout - idle))
    }
}

/// Gives every request of a connection its [`Peer`] and the body type the services take.
#[derive(Clone)]
struct WithPeer<S> {
    inner: S,
    peer: Peer,
}

impl<S> Service<http::Request<Incoming>> for WithPeer<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible> + Clone,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Incoming>) -> Self::Future {
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(self.peer.clone());
        self.inner.call(request)
    }
}

/// File descriptors kept free of client connections: the database pool, the metrics port, mail,
/// files, and the listening socket itself.
const RESERVED_FILES: usize = 256;

/// The connection cap that fits the process's file-descriptor limit: the soft limit is first
/// raised as far as the hard one allows, and the cap lowered to leave [`RESERVED_FILES`] free,
/// so that accepts never fail with EMFILE because of client connections alone.
pub fn fit_to_file_limit(max_connections: usize) -> usize {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    let soft = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return max_connections;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
        limit.rlim_cur
    };
    let available = usize::try_from(soft).unwrap_or(usize::MAX).saturating_sub(RESERVED_FILES);
    if available < max_connections {
        tracing::warn!(
            max_connections,
            file_limit = soft,
            lowered_to = available.max(1),
            "--max-connections exceeds what the file-descriptor limit leaves; lowering it"
        );
        return available.max(1);
    }
    max_connections
}
