//! Generated protobuf and gRPC code, and the descriptor set served by reflection.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("roster.v1");
include!(concat!(env!("OUT_DIR"), "/server/roster.v1.rs"));

/// The encoded descriptor set of `roster.v1`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("roster_descriptor");

/// Envoy's external authorization API, as far as Roster serves it (see
/// `proto/envoy/service/auth/v3/external_auth.proto`).
pub mod envoy {
    tonic::include_proto!("envoy.service.auth.v3");
    include!(concat!(env!("OUT_DIR"), "/server/envoy.service.auth.v3.rs"));
}
