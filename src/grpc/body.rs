//! What a request's body may cost: every call's message is read through a guard that knows the
//! gRPC framing (a 5-byte prefix: a compressed flag and a length, then the message) and
//!
//! - refuses a message larger than its method allows as soon as its length is announced,
//!   before any of it is buffered (RESOURCE_EXHAUSTED);
//! - counts the bytes of every message still arriving against one budget for the whole
//!   process, so that many slow or partial bodies cannot fill memory (RESOURCE_EXHAUSTED);
//! - gives the message a deadline from the request's headers (DEADLINE_EXCEEDED);
//! - answers framing errors as the client's (INVALID_ARGUMENT): a compressed flag without a
//!   `grpc-encoding`, a flag that is neither 0 nor 1, a body that ends inside a message, a call
//!   with no message or with more than one where the method takes one.
//!
//! Only identified calls get here (see [`super::identify`]); a refused call's body is never
//! read at all.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Frame, SizeHint};
use prost::bytes::Bytes;
use tokio::time::{Instant, Sleep};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http;
use tower::{Layer, Service};

use super::identify::Credentialed;
use crate::error::ErrorReason;

/// The largest Authorize request: its longest valid fields (a 255-character user id of up to
/// four bytes per character, two UUIDs, a permission name, a consistency token) fit well within.
pub const MAX_CHECK_REQUEST_BYTES: usize = 4 * 1024;

/// The largest message of a call that needs no credential (health, reflection): their requests
/// are a few dozen bytes.
pub const MAX_OPEN_REQUEST_BYTES: usize = 4 * 1024;

/// Request bytes that calls needing no credential may hold at once, all together: apart from
/// the budget of identified calls, so that they can never take it.
pub const OPEN_BUDGET_BYTES: usize = 1024 * 1024;

/// Request bytes the whole process holds while messages arrive.
#[derive(Debug)]
pub struct ByteBudget {
    held: AtomicUsize,
    max: usize,
}

impl ByteBudget {
    /// A budget of `max` bytes.
    pub fn new(max: usize) -> Self {
        Self { held: AtomicUsize::new(0), max }
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    fn reserve(&self, bytes: usize) -> bool {
        // Never above the limit, not even for a moment, so that a reservation that fits is not
        // refused because another that does not was briefly counted.
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|total| *total <= self.max)
            })
            .is_ok()
    }

    fn release(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Bytes held of a [`ByteBudget`] by one reader of a request that is not a gRPC message (the
/// AuthZEN listener's JSON bodies); given back when dropped.
#[derive(Debug)]
pub struct HeldBytes {
    budget: Arc<ByteBudget>,
    bytes: usize,
}

impl HeldBytes {
    /// Nothing held yet of `budget`.
    pub fn new(budget: Arc<ByteBudget>) -> Self {
        Self { budget, bytes: 0 }
    }

    /// Holds `bytes` more until dropped; `false` (nothing taken) when they do not fit.
    pub fn grow(&mut self, bytes: usize) -> bool {
        if !self.budget.reserve(bytes) {
            return false;
        }
        self.bytes += bytes;
        true
    }
}

impl Drop for HeldBytes {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

/// The limits every request body is read under.
#[derive(Debug, Clone)]
pub struct BodyLimits {
    /// Largest message of most methods.
    pub max_request_bytes: usize,
    /// Largest BatchAuthorize message.
    pub max_batch_request_bytes: usize,
    /// Time from the headers to the end of the body.
    pub timeout: Duration,
    /// Bytes the bodies of identified calls may hold at once.
    pub budget: Arc<ByteBudget>,
    /// Bytes the bodies of calls that need no credential may hold at once.
    pub open_budget: Arc<ByteBudget>,
}

impl BodyLimits {
    /// The method at `path` (named for messages), its largest message, and whether it takes a
    /// stream of messages.
    fn for_path(&self, path: &str) -> (&'static str, usize, bool) {
        // The hot paths by name, without a lookup.
        const AUTHORIZE: &str = "/roster.v1.AccessService/Authorize";
        const BATCH: &str = "/roster.v1.AccessService/BatchAuthorize";
        const EXT_AUTHZ: &str = "/envoy.service.auth.v3.Authorization/Check";
        match path {
            AUTHORIZE => (AUTHORIZE, MAX_CHECK_REQUEST_BYTES.min(self.max_request_bytes), false),
            BATCH => (BATCH, self.max_batch_request_bytes, false),
            // Envoy's check repeats the client's headers (up to 60 KiB in Envoy's defaults) and
            // the verified token; refusing it would be an ext_authz failure, not a denial.
            EXT_AUTHZ => (EXT_AUTHZ, self.max_batch_request_bytes, false),
            // Reflection is the one method whose client sends a stream of requests.
            _ => {
                let many = path.starts_with("/grpc.reflection.");
                (crate::metrics::method_label(path), self.max_request_bytes, many)
            }
        }
    }
}

/// Adds [`Guard`] to a server.
#[derive(Clone)]
pub struct BodyGuardLayer {
    limits: Arc<BodyLimits>,
}

impl BodyGuardLayer {
    /// Reads every body under `limits`.
    pub fn new(limits: BodyLimits) -> Self {
        Self { limits: Arc::new(limits) }
    }
}

impl<S> Layer<S> for BodyGuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Guard { inner, limits: self.limits.clone() }
    }
}

/// The middleware itself.
#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    limits: Arc<BodyLimits>,
}

impl<S> Service<http::Request<Body>> for Guard<S>
where
    S: Service<http::Request<Body>> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let mut inner = super::take_ready(&mut self.inner);
        let path = request.uri().path();
        let (method, mut limit, many) = self.limits.for_path(path);
        let credentialed = request.extensions().get::<Credentialed>().is_some();
        if !credentialed {
            limit = limit.min(MAX_OPEN_REQUEST_BYTES);
        }
        let encoded = request.headers().get("grpc-encoding").is_some_and(|v| v != "identity");
        let limits = self.limits.clone();
        inner.call(request.map(|body| {
            Body::new(Guarded {
                inner: body,
                method,
                limit,
                many,
                encoded,
                header: [0; 5],
                header_len: 0,
                length: 0,
                remaining: 0,
                reserved: 0,
                messages: 0,
                started: Instant::now(),
                deadline: None,
                limits,
                credentialed,
                failed: false,
            })
        }))
    }
}

/// A request body read under its method's limits.
struct Guarded {
    inner: Body,
    method: &'static str,
    limit: usize,
    /// Whether the method takes a stream of messages.
    many: bool,
    /// Whether the call names an encoding, without which no message may be compressed.
    encoded: bool,
    header: [u8; 5],
    header_len: usize,
    /// The length of the current message.
    length: usize,
    /// Bytes of the current message still to come.
    remaining: usize,
    /// Bytes of the budget held for the current message.
    reserved: usize,
    messages: u32,
    started: Instant,
    /// Armed only once the body has to be waited for: most bodies come with their headers.
    deadline: Option<Pin<Box<Sleep>>>,
    limits: Arc<BodyLimits>,
    /// Whether the call's credential checked out: which budget it draws on.
    credentialed: bool,
    failed: bool,
}

impl Guarded {
    fn budget(&self) -> &ByteBudget {
        if self.credentialed { &self.limits.budget } else { &self.limits.open_budget }
    }

    /// Follows the framing through one chunk of the body.
    fn inspect(&mut self, mut data: &[u8]) -> Result<(), Status> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let taken = self.remaining.min(data.len());
                self.remaining -= taken;
                data = &data[taken..];
                if self.remaining == 0 {
                    self.release();
                }
                continue;
            }
            if self.many && self.header_len == 0 {
                // The first byte of a message of a stream: its deadline starts now.
                self.started = Instant::now();
            }
            let taken = (5 - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + taken].copy_from_slice(&data[..taken]);
            self.header_len += taken;
            data = &data[taken..];
            if self.header_len == 5 {
                self.header_len = 0;
                self.start_message()?;
            }
        }
        // A message that is still arriving is held (by the decoder) until its last byte: that
        // is what the budget counts. One that came whole is decoded at once and costs nothing.
        if self.remaining > 0 && self.reserved == 0 {
            let held = self.length + 5;
            if !self.budget().reserve(held) {
                return Err(super::status::refused(
                    ErrorReason::RequestBytesExhausted,
                    "the server holds too many request bytes at once; retry with backoff",
                ));
            }
            self.reserved = held;
        }
        Ok(())
    }

    fn start_message(&mut self) -> Result<(), Status> {
        if self.messages > 0 && !self.many {
            return Err(super::status::refused(
                ErrorReason::MalformedMessage,
                format!("{} takes one request message; the call sent more", short(self.method)),
            ));
        }
        match self.header[0] {
            0 => {}
            1 if self.encoded => {}
            1 => {
                return Err(super::status::refused(
                    ErrorReason::MalformedMessage,
                    "the request message is marked compressed, but the call names no grpc-encoding",
                ));
            }
            flag => {
                return Err(super::status::refused(
                    ErrorReason::MalformedMessage,
                    format!("the request message's compressed flag is {flag}; it must be 0 or 1"),
                ));
            }
        }
        let len =
            u32::from_be_bytes([self.header[1], self.header[2], self.header[3], self.header[4]])
                as usize;
        if len > self.limit {
            return Err(super::status::refused(
                ErrorReason::MessageTooLarge,
                format!(
                    "the request message is {len} bytes; {} accepts at most {}",
                    short(self.method),
                    self.limit
                ),
            ));
        }
        self.messages += 1;
        self.length = len;
        self.remaining = len;
        Ok(())
    }

    fn release(&mut self) {
        if self.reserved > 0 {
            self.budget().release(self.reserved);
            self.reserved = 0;
        }
    }

    fn fail(&mut self, status: Status) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.failed = true;
        self.release();
        Poll::Ready(Some(Err(status)))
    }

    /// What a body that ended says about the call, if it was malformed.
    fn at_end(&self) -> Option<Status> {
        if self.header_len > 0 || self.remaining > 0 {
            return Some(super::status::refused(
                ErrorReason::MalformedMessage,
                "the request ended inside a message: it is truncated",
            ));
        }
        if self.messages == 0 && !self.many {
            return Some(super::status::refused(
                ErrorReason::MalformedMessage,
                format!("{} takes a request message; the call sent none", short(self.method)),
            ));
        }
        None
    }
}

/// A method's name without its package, for messages.
fn short(method: &str) -> &str {
    method.rsplit('/').next().filter(|m| !m.is_empty()).unwrap_or("this method")
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && let Err(status) = this.inspect(data)
                {
                    return this.fail(status);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => match this.at_end() {
                Some(status) => this.fail(status),
                None => Poll::Ready(None),
            },
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err))),
            Poll::Pending => {
                // A stream of messages (reflection) may wait between them as long as it likes;
                // each message has the deadline, from its first byte.
                if this.many && this.header_len == 0 && this.remaining == 0 {
                    this.deadline = None;
                    return Poll::Pending;
                }
                let at = this.started + this.limits.timeout;
                let deadline =
                    this.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                match deadline.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) => this.fail(super::status::refused(
                        ErrorReason::MessageTimedOut,
                        format!(
                            "the request message did not arrive within {} ms of its headers",
                            this.limits.timeout.as_millis()
                        ),
                    )),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // A body that ended malformed is not at its end until its error has been read.
        self.failed || (self.inner.is_end_stream() && self.at_end().is_none())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guarded(limit: usize, many: bool, encoded: bool, budget: usize) -> Guarded {
        Guarded {
            inner: Body::empty(),
            method: "/roster.v1.AccessService/Authorize",
            limit,
            many,
            encoded,
            header: [0; 5],
            header_len: 0,
            length: 0,
            remaining: 0,
            reserved: 0,
            messages: 0,
            started: Instant::now(),
            deadline: None,
            limits: Arc::new(BodyLimits {
                max_request_bytes: limit,
                max_batch_request_bytes: limit,
                timeout: Duration::from_secs(1),
                budget: Arc::new(ByteBudget::new(budget)),
                open_budget: Arc::new(ByteBudget::new(0)),
            }),
            credentialed: true,
            failed: false,
        }
    }

    fn frame(flag: u8, len: u32) -> Vec<u8> {
        let mut header = vec![flag];
        header.extend_from_slice(&len.to_be_bytes());
        header
    }

    #[test]
    fn messages_are_followed_across_chunks_and_only_waiting_ones_hold_the_budget() {
        let mut body = guarded(100, false, false, 1000);
        let mut message = frame(0, 10);
        message.extend_from_slice(&[7; 10]);
        // Whole in one chunk: nothing held.
        body.inspect(&message).unwrap();
        assert_eq!((body.messages, body.remaining, body.reserved), (1, 0, 0));
        assert!(body.at_end().is_none());

        let mut body = guarded(100, false, false, 1000);
        body.inspect(&message[..3]).unwrap();
        assert_eq!(body.reserved, 0, "a header still arriving holds nothing");
        body.inspect(&message[3..9]).unwrap();
        assert_eq!(body.limits.budget.held(), 15, "a message still arriving is held whole");
        assert!(body.at_end().is_some(), "ending now would be a truncated message");
        body.inspect(&message[9..]).unwrap();
        assert_eq!(body.limits.budget.held(), 0, "released once it is complete");
        assert!(body.at_end().is_none());
    }

    #[test]
    fn framing_errors_are_the_clients() {
        let cases: [(Vec<u8>, bool, tonic::Code); 4] = [
            (frame(1, 0), false, tonic::Code::InvalidArgument),
            (frame(2, 0), true, tonic::Code::InvalidArgument),
            (frame(0, 101), false, tonic::Code::ResourceExhausted),
            ([frame(0, 0), frame(0, 0)].concat(), false, tonic::Code::InvalidArgument),
        ];
        for (bytes, encoded, code) in cases {
            let mut body = guarded(100, false, encoded, 1000);
            let status = body.inspect(&bytes).unwrap_err();
            assert_eq!(status.code(), code, "{bytes:?}: {status:?}");
        }
        // A compressed message is the codec's business once an encoding is named.
        guarded(100, false, true, 1000).inspect(&frame(1, 0)).unwrap();
        // Reflection takes a stream of messages.
        guarded(100, true, false, 1000).inspect(&[frame(0, 0), frame(0, 0)].concat()).unwrap();
        let empty = guarded(100, false, false, 1000);
        assert_eq!(empty.at_end().map(|s| s.code()), Some(tonic::Code::InvalidArgument));
    }

    #[test]
    fn a_message_that_does_not_fit_the_budget_is_refused() {
        let mut body = guarded(1000, false, false, 100);
        let status = body.inspect(&frame(0, 500)).unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(body.limits.budget.held(), 0);
        let mut fits = guarded(1000, false, false, 100);
        fits.inspect(&frame(0, 90)).unwrap();
        assert_eq!(fits.limits.budget.held(), 95);
        drop(fits);
    }
}
