//! Repository functions, one module per aggregate. Verbs: `get_*` fails when missing, `find_*`
//! returns an option, `list_*` pages, `insert_*`/`update_*`/`delete_*` write. Writes a member's
//! request makes take the [`Pass`] of the permission they need and use its organization id, so
//! they cannot run without that check or cross organizations; adding an invitee takes the
//! lifecycle's [`Admitted`]. Writes that time or the email worker make (an invitation found
//! expired, an email canceled or sent) take the organization id: no member acts in them.

use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, ExprTrait, QueryFilter,
    QueryOrder, QuerySelect, QueryTrait, SqlErr, Statement, Value,
};

use super::entity::{
    audit_event, invitation, invitation_grant, member, organization, outbox, workspace,
    workspace_grant,
};
use crate::domain::invitation::Admitted;
use crate::domain::{
    Access, AuditEvent, AuditEventId, AuditTarget, DeliveryState, DisplayName, Email, Grant,
    GrantReason, Invitation, InvitationId, InvitationState, InvitationTtl, InvitedGrant,
    MaxGrantDuration, Member, Organization, OrganizationId, Pass, Role, Timestamp, UserId,
    UserIdRef, Workspace, WorkspaceFacts, WorkspaceId, capability as cap,
};
use crate::error::{Error, ErrorReason};

/// The unique constraints a write may meet and answer for: any other violation is a bug and
/// stays an internal error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unique {
    /// One membership per user and organization (the members primary key).
    Membership,
    /// One pending invitation per email and organization.
    OnePendingInvitation,
    /// One change per caller and request id.
    RequestId,
}

impl Unique {
    /// The constraint's name on PostgreSQL.
    fn name(self) -> &'static str {
        match self {
            Unique::Membership => "members_pkey",
            Unique::OnePendingInvitation => "invitations_one_pending_per_email",
            Unique::RequestId => "request_ids_pkey",
        }
    }

    /// How SQLite names it: it reports the columns, not the index.
    fn sqlite_columns(self) -> &'static str {
        match self {
            Unique::Membership => "members.organization_id, members.user_id",
            Unique::OnePendingInvitation => "invitations.organization_id, invitations.email",
            Unique::RequestId => "request_ids.user_id, request_ids.request_id",
        }
    }
}

/// Whether `err` is a violation of the unique constraint `which`: PostgreSQL's message names
/// the constraint, SQLite's the columns.
fn violates(err: &sea_orm::DbErr, which: Unique) -> bool {
    let Some(SqlErr::UniqueConstraintViolation(message)) = err.sql_err() else {
        return false;
    };
    message.contains(&format!("\"{}\"", which.name()))
        || message.ends_with(&format!("UNIQUE constraint failed: {}", which.sqlite_columns()))
}

fn corrupt(what: &str, value: &str) -> Error {
    Error::internal(anyhow::anyhow!("stored {what} {value:?} is not valid"))
}

mod audit;
mod emails;
mod facts;
mod invitations;
mod members;
mod organizations;
mod requests;
mod workspaces;

pub use audit::*;
pub use emails::*;
pub use facts::*;
pub use invitations::*;
pub use members::*;
pub use organizations::*;
pub use requests::*;
pub use workspaces::*;
