//! Invitation email: rendering, the transports, and the outbox worker.

pub mod mailer;
pub mod render;
pub mod worker;
