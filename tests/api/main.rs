//! Behaviour tests: the real server on loopback, called through the generated clients, each test
//! on a SQLite file and on PostgreSQL.

mod common;

mod access;
mod auth;
mod authzen;
mod batch_invitations;
mod boundary;
mod changelog;
mod clocks;
mod errors;
mod ext_authz;
mod faults;
mod grant_ends;
mod hostile;
mod identity;
mod index;
mod invitations;
mod mailboxes;
mod matrix;
mod members;
mod observability;
mod organizations;
mod outage;
mod outbox;
mod overload;
mod races;
mod replicas;
mod retries;
mod scenario;
mod server;
mod sqlite_file;
mod tls;
mod watch;
mod web;
mod workspaces;
