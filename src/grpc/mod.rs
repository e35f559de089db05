//! The gRPC edge: handlers for each service, conversions, status mapping and caller identity.

pub mod access;
pub mod auth;
pub mod batch;
pub mod body;
pub mod codec;
pub mod commands;
pub mod convert;
pub mod ext_authz;
pub mod identify;
pub mod jwt;
pub mod limits;
pub mod listener;
pub mod observe;
pub mod readiness;
pub mod retry;
pub mod router;
pub mod socket;
pub mod status;
pub mod team;
pub mod tls;
pub mod watch;
pub mod web;

/// Takes the service a middleware just made ready, leaving a fresh clone for the next call:
/// tower only promises readiness for the instance `poll_ready` was called on.
pub(crate) fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}
