//! A browser's side of gRPC-Web, spoken over HTTP/1.1 by hand: framing, headers and trailers as
//! a page's client sends and reads them.

use std::net::SocketAddr;

use http_body_util::BodyExt as _;
use hyper::http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use hyper_util::rt::TokioIo;

/// What came back from one HTTP request.
#[derive(Debug)]
pub struct Reply {
    /// The HTTP status code.
    pub status: u16,
    /// The response headers.
    pub headers: HeaderMap,
    /// The response body.
    pub body: Vec<u8>,
}

impl Reply {
    /// A response header as text, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends one HTTP/1.1 request on a fresh connection.
pub async fn http1(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Reply {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let mut request = Request::builder().method(method).uri(path).header("host", addr.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(http_body_util::Full::new(hyper::body::Bytes::from(body))).unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes().to_vec();
    Reply { status, headers, body }
}

/// A gRPC-Web call's answer: the messages and the trailers (grpc-status and the rest), which
/// gRPC-Web carries in the body, or in the headers when there is no body.
#[derive(Debug)]
pub struct WebReply {
    /// The HTTP answer as it came.
    pub http: Reply,
    /// The messages, undecoded.
    pub messages: Vec<Vec<u8>>,
    /// The trailers, merged with any status sent in the headers.
    pub trailers: HeaderMap,
}

impl WebReply {
    /// The call's gRPC status code.
    pub fn code(&self) -> tonic::Code {
        let code = self.trailers.get("grpc-status").and_then(|v| v.to_str().ok());
        tonic::Code::from_i32(code.and_then(|c| c.parse().ok()).expect("a grpc-status"))
    }

    /// The call's status, as a client library would build it from the trailers.
    pub fn status(&self) -> tonic::Status {
        let message = self.trailers.get("grpc-message").and_then(|v| v.to_str().ok());
        let details = self
            .trailers
            .get("grpc-status-details-bin")
            .map(|v| {
                use base64::Engine as _;
                let text = v.to_str().unwrap();
                base64::engine::general_purpose::STANDARD_NO_PAD
                    .decode(text.trim_end_matches('='))
                    .unwrap()
            })
            .unwrap_or_default();
        tonic::Status::with_details(self.code(), message.unwrap_or_default(), details.into())
    }

    /// The single response message, decoded.
    pub fn message<M: prost::Message + Default>(&self) -> M {
        assert_eq!(self.messages.len(), 1, "one message: {self:?}");
        M::decode(&self.messages[0][..]).unwrap()
    }
}

/// Calls `path` (`/roster.v1.TeamService/CreateOrganization`) with gRPC-Web over HTTP/1.1, with
/// `headers` (credentials, origin, request id) and one message.
pub async fn call(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    message: &impl prost::Message,
) -> WebReply {
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.encoded_len() as u32).to_be_bytes());
    message.encode(&mut body).unwrap();
    let mut all = vec![("content-type", "application/grpc-web+proto"), ("x-grpc-web", "1")];
    all.extend_from_slice(headers);
    let http = http1(addr, Method::POST, path, &all, body).await;
    let framed = http.header("content-type").is_some_and(|t| t.starts_with("application/grpc-web"));
    let (messages, mut trailers) =
        if framed { frames(&http.body) } else { (Vec::new(), HeaderMap::new()) };
    for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        if let Some(value) = http.headers.get(name) {
            trailers.insert(name, value.clone());
        }
    }
    WebReply { http, messages, trailers }
}

/// Splits a gRPC-Web body into its messages and its trailer frame.
fn frames(mut body: &[u8]) -> (Vec<Vec<u8>>, HeaderMap) {
    let mut messages = Vec::new();
    let mut trailers = HeaderMap::new();
    while body.len() >= 5 {
        let flag = body[0];
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        let payload = &body[5..5 + len];
        if flag & 0x80 != 0 {
            for line in String::from_utf8_lossy(payload).split("\r\n").filter(|l| !l.is_empty()) {
                let (name, value) = line.split_once(':').unwrap();
                trailers.insert(
                    HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes()).unwrap(),
                    HeaderValue::from_str(value.trim()).unwrap(),
                );
            }
        } else {
            messages.push(payload.to_vec());
        }
        body = &body[5 + len..];
    }
    assert!(body.is_empty(), "a partial frame at the end of the body");
    (messages, trailers)
}
