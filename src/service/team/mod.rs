//! TeamService use-cases, acting for an end user, one module per aggregate. Each takes the
//! command its RPC was converted into; `change` holds what every mutation shares: the
//! organization's lock, the caller's check, the audit event and the commit.

mod change;
pub mod grants;
pub mod invitations;
pub mod members;
pub mod organizations;
pub mod permissions;
mod retries;
pub mod workspaces;

use super::Actor;
use crate::domain::{Email, MaxGrantDuration, Member, OrganizationId, Timestamp};
use crate::error::{Error, ErrorReason};
use crate::storage::repo;

pub use grants::{ListWorkspaceAccess, SetWorkspaceAccess};
pub use invitations::{
    AcceptInvitation, BatchCreateInvitations, CreateInvitation, InvitationRef, ListInvitations,
};
pub use members::{ListMembers, MemberRef, TransferOwnership, UpdateMemberRole};
pub use organizations::{CreateOrganization, ListAuditEvents, UpdateOrganization};
pub use permissions::{ListMyPermissions, MyPermissions};
pub use workspaces::{CreateWorkspace, ListWorkspaces, UpdateWorkspace, WorkspaceRef};

/// Rule 1: only an Owner may do this.
fn owner_only(message: &str) -> Error {
    Error::refused(ErrorReason::OwnerRequired, message)
}

/// The actor's email, which `to` needs.
fn caller_email(actor: &Actor, to: &str) -> Result<Email, Error> {
    actor.email.clone().map_err(|why| {
        Error::refused(
            ErrorReason::EmailUnusable,
            format!("your email is needed to {to}, but {why}"),
        )
    })
}

/// Refuses an actor whose email is not proven theirs (jwt mode: `email_verified` is not true),
/// before anything is read: founding organizations, inviting and accepting put that email to
/// use, so an unverified one could name anyone.
fn require_verified_email(actor: &Actor, to: &str) -> Result<(), Error> {
    if actor.email_verified {
        return Ok(());
    }
    Err(Error::refused(
        ErrorReason::EmailNotVerified,
        format!(
            "your email address is not verified, which is needed to {to}: verify your email \
             with your identity provider, then sign in again"
        ),
    ))
}

/// Checks a grant's end against `now` and the organization's bound: an end must lie ahead, and
/// with a bound every grant needs one no further ahead than the bound. `field` names the end in
/// the request.
fn check_end(
    field: &str,
    expire_time: Option<Timestamp>,
    bound: Option<MaxGrantDuration>,
    now: Timestamp,
) -> Result<(), Error> {
    if let Some(end) = expire_time
        && end <= now
    {
        return Err(Error::invalid(field, "must lie in the future"));
    }
    let Some(bound) = bound else { return Ok(()) };
    match expire_time {
        None => Err(Error::invalid(
            field,
            format!(
                "is required: the organization's max_grant_duration ({} s) bounds every grant",
                bound.as_secs()
            ),
        )),
        Some(end) if end > now.plus(bound.duration()) => Err(Error::invalid(
            field,
            format!(
                "must be at most the organization's max_grant_duration ({} s) from now",
                bound.as_secs()
            ),
        )),
        Some(_) => Ok(()),
    }
}

/// The caller's membership, or NOT_FOUND as if the organization did not exist.
async fn membership(
    db: &impl sea_orm::ConnectionTrait,
    org: OrganizationId,
    actor: &Actor,
) -> Result<Member, Error> {
    // Every organization-scoped call passes here: name the organization in the call's span.
    tracing::Span::current().record("organization_id", tracing::field::display(org));
    repo::find_member(db, org, &actor.user_id).await?.ok_or(Error::NotFound("organization"))
}
