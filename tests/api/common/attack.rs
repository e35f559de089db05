//! Hostile peers, written against HTTP/2 directly (the `h2` crate) so that they can do what no
//! well-behaved gRPC client does: open streams and never send their bodies, announce large
//! messages and stop one byte short, connect and say nothing. Every attack runs on loopback
//! until a deadline and then stops by itself.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use prost::bytes::{BufMut as _, Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tonic::codegen::http;

/// An HTTP/2 connection to `addr`, its driver spawned; the server's SETTINGS are in once this
/// returns. `None` if the server refused or closed the connection.
pub async fn connect(addr: SocketAddr) -> Option<h2::client::SendRequest<Bytes>> {
    let tcp = TcpStream::connect(addr).await.ok()?;
    let _ = tcp.set_nodelay(true);
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(16 << 20)
        .initial_connection_window_size(16 << 20)
        .handshake(tcp)
        .await
        .ok()?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    send.ready().await.ok()
}

/// A gRPC request's headers for `path`, with `metadata` added.
pub fn grpc_request(addr: SocketAddr, path: &str, metadata: &[(&str, &str)]) -> http::Request<()> {
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in metadata {
        request = request.header(*name, *value);
    }
    request.body(()).expect("a valid request")
}

/// A gRPC frame prefix: the compressed flag and the message length.
pub fn frame_prefix(flag: u8, len: u32) -> Bytes {
    let mut prefix = BytesMut::with_capacity(5);
    prefix.put_u8(flag);
    prefix.put_u32(len);
    prefix.freeze()
}

/// The gRPC status of a finished response (trailers, or headers of a trailers-only reply), and
/// the size of its `grpc-message` and `grpc-status-details-bin` values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawStatus {
    /// `grpc-status`.
    pub code: tonic::Code,
    /// `grpc-message`, percent-decoded.
    pub message: String,
    /// Bytes of the status headers on the wire: message and details.
    pub status_bytes: usize,
}

/// Sends one request with `body` (and ends the stream when `end`) and reads its status; `None`
/// when the stream or the connection failed before a status came.
pub async fn raw_call(
    send: &mut h2::client::SendRequest<Bytes>,
    request: http::Request<()>,
    body: Bytes,
    end: bool,
) -> Option<RawStatus> {
    let mut send = send.clone().ready().await.ok()?;
    let (response, mut stream) = send.send_request(request, body.is_empty() && end).ok()?;
    if !body.is_empty() {
        stream.reserve_capacity(body.len());
        stream.send_data(body, end).ok()?;
    }
    let response = tokio::time::timeout(Duration::from_secs(10), response).await.ok()?.ok()?;
    let (parts, mut body) = response.into_parts();
    if let Some(status) = status_of(&parts.headers) {
        return Some(status);
    }
    while let Some(chunk) = body.data().await {
        let chunk = chunk.ok()?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.ok()??;
    let status = status_of(&trailers);
    drop(stream);
    status
}

fn status_of(headers: &http::HeaderMap) -> Option<RawStatus> {
    let code = headers.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    let message = headers.get("grpc-message").map(|v| v.as_bytes().to_vec()).unwrap_or_default();
    let details = headers.get("grpc-status-details-bin").map_or(0, |v| v.len());
    Some(RawStatus {
        code: tonic::Code::from_i32(code),
        message: percent_decode(&message),
        status_bytes: message.len() + details,
    })
}

fn percent_decode(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(byte) = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Attack 1: one connection keeps up to `streams` calls open that send their headers without a
/// credential and never a body, and opens a new one whenever one ends, until `until`.
pub fn stalled_streams(addr: SocketAddr, streams: usize, until: Instant) -> JoinHandle<u64> {
    tokio::spawn(async move {
        let mut opened = 0u64;
        while Instant::now() < until {
            let Some(send) = connect(addr).await else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let mut open = tokio::task::JoinSet::new();
            loop {
                if Instant::now() >= until {
                    return opened;
                }
                while open.len() < streams {
                    let Ok(mut ready) = send.clone().ready().await else { break };
                    let request = grpc_request(addr, "/roster.v1.AccessService/Authorize", &[]);
                    let Ok((response, body)) = ready.send_request(request, false) else { break };
                    opened += 1;
                    open.spawn(async move {
                        // Holds the request open (its body unsent) until the server answers.
                        let _body = body;
                        let _ = tokio::time::timeout(Duration::from_secs(15), response).await;
                    });
                }
                if open.is_empty() {
                    break;
                }
                tokio::select! {
                    _ = open.join_next() => {}
                    _ = tokio::time::sleep_until(until.into()) => return opened,
                }
            }
        }
        opened
    })
}

/// Attack 2: `connections` × `streams` calls to `path` that each announce a message of
/// `announced` bytes and send all of it but the last byte, then hold on until `until`.
pub fn partial_bodies(
    addr: SocketAddr,
    path: &'static str,
    metadata: Vec<(String, String)>,
    connections: usize,
    streams: usize,
    announced: u32,
    until: Instant,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..connections {
            let metadata = metadata.clone();
            tasks.spawn(async move {
                let Some(send) = connect(addr).await else { return };
                let mut held = Vec::new();
                let metadata: Vec<(&str, &str)> =
                    metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                for _ in 0..streams {
                    let Ok(mut ready) = send.clone().ready().await else { break };
                    let request = grpc_request(addr, path, &metadata);
                    let Ok((response, mut body)) = ready.send_request(request, false) else {
                        break;
                    };
                    let mut payload = BytesMut::with_capacity(announced as usize + 4);
                    payload.extend_from_slice(&frame_prefix(0, announced));
                    payload.resize(announced as usize + 4, b'x');
                    let _ = body.send_data(payload.freeze(), false);
                    held.push((response, body));
                }
                tokio::time::sleep_until(until.into()).await;
                drop(held);
            });
        }
        while tasks.join_next().await.is_some() {}
    })
}

/// Attack 3: `count` TCP connections that never send a byte, opened as fast as the server
/// accepts them (a connect that takes longer than half a second is skipped).
pub async fn silent_connections(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        if let Ok(Ok(stream)) =
            tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr)).await
        {
            held.push(stream);
        }
    }
    held
}

/// Whether the server has closed a connection that sent nothing: reading what it sent (its
/// HTTP/2 settings, a GOAWAY) reaches the end, or a reset.
pub fn closed_by_server(stream: &TcpStream) -> bool {
    let mut buffer = [0u8; 4096];
    loop {
        match stream.try_read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

/// CPU time a process has used (user and system), from its scheduler accounting.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis((ticks(11) + ticks(12)) * 1000 / per_second)
}

/// Samples the resident memory of `pid` every 100 ms until `until`; the highest seen, in KiB.
pub fn watch_rss(pid: u32, until: Instant) -> JoinHandle<u64> {
    tokio::spawn(async move {
        let mut highest = 0;
        while Instant::now() < until {
            highest = highest.max(rss_kib(pid));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        highest.max(rss_kib(pid))
    })
}
