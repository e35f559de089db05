//! The rules of Roster with no I/O: identifiers, values, the permission catalogue and the
//! decision function, the rules about roles, and the invitation state machine.

pub mod audit;
pub mod authz;
pub mod change;
pub mod email;
pub mod ids;
pub mod invitation;
pub mod model;
pub mod permission;
pub mod rules;
pub mod values;

pub use audit::{AuditAction, AuditTarget};
pub use authz::{Decision, Pass, Reason, WorkspaceFacts, decide};
pub use change::{ChangeRecord, ChangeToken, Delta, LogPosition, Revision};
pub use email::Email;
pub use ids::{
    AuditEventId, ChangeRequestId, InvitationId, OrganizationId, UserId, UserIdRef, WorkspaceId,
};
pub use invitation::InvitationState;
pub use model::{
    AuditEvent, DeliveryState, Grant, Invitation, InvitedGrant, Member, Organization, Timestamp,
    Workspace,
};
pub use permission::{Holders, Permission, Scope, capability};
pub use values::{
    Access, DisplayName, GrantReason, InvitationTtl, MaxGrantDuration, RequestId, Role,
};
