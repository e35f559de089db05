//! The gRPC edge: handlers for each service, conversions, status mapping and caller identity.

pub mod access;
pub mod auth;
pub mod codec;
pub mod convert;
pub mod jwt;
pub mod limits;
pub mod observe;
pub mod status;
pub mod team;
pub mod tls;
