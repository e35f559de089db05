//! Roster: organizations, members, workspaces, invitations and the `Authorize` decision, served
//! over gRPC.

pub mod app;
pub mod authzen;
pub mod config;
pub mod domain;
pub mod email;
pub mod error;
pub mod grpc;
pub mod index;
pub mod metrics;
pub mod pb;
pub mod service;
pub mod storage;
pub mod telemetry;
