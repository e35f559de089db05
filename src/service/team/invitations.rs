//! Invitations: create, resend, revoke and accept (the lifecycle is
//! [`crate::domain::invitation`]); each email goes out through the outbox.

use serde_json::json;
use tracing::instrument;

use super::change::{Audited, require};
use super::{caller_email, check_end, membership, owner_only, require_verified_email};
use crate::domain::capability as cap;
use crate::domain::invitation::{
    self as lifecycle, AcceptRefusal, Ended, InviteRefusal, Transition,
};
use crate::domain::{
    AuditAction, AuditTarget, DeliveryState, Delta, Email, Invitation, InvitationId,
    InvitationState, InvitedGrant, Member, OrganizationId, Permission, Role, Timestamp,
};
use crate::error::{Error, ErrorReason};
use crate::service::page::{self, Page, PageRequest};
use crate::service::token;
use crate::service::{Actor, Changed, Services};
use crate::storage::changelog::OrgChange;
use crate::storage::repo;

/// What BatchCreateInvitations asks: the organization, and each item as checked on its own
/// (an item's bad fields refuse that item only).
#[derive(Debug)]
pub struct BatchCreateInvitations {
    pub organization_id: OrganizationId,
    pub items: Vec<Result<CreateInvitation, Error>>,
}

/// What CreateInvitation asks, every field checked.
#[derive(Debug)]
pub struct CreateInvitation {
    pub organization_id: OrganizationId,
    pub email: Email,
    /// Role on acceptance.
    pub role: Role,
    /// Grants on acceptance, one per workspace.
    pub workspace_grants: Vec<InvitedGrant>,
}

/// A validated ListInvitations request; `state` `None` lists every state.
#[derive(Debug)]
pub struct ListInvitations {
    pub organization_id: OrganizationId,
    pub state: Option<InvitationState>,
    pub page: PageRequest,
}

/// One invitation of an organization, as ResendInvitation and RevokeInvitation name it.
#[derive(Debug)]
pub struct InvitationRef {
    pub organization_id: OrganizationId,
    pub invitation_id: InvitationId,
}

/// A validated AcceptInvitation request: the token as mailed, checked for length only.
#[derive(Debug)]
pub struct AcceptInvitation {
    pub token: String,
}

impl Services {
    /// Checks, before a batch of invitations, that the actor may invite at all: a non-member
    /// gets NOT_FOUND and a member without `members.invite` PERMISSION_DENIED for the whole
    /// batch, as for one invitation. Each item is checked again in its own change.
    pub async fn may_invite(&self, actor: &Actor, org: OrganizationId) -> Result<(), Error> {
        require::<cap::MembersInvite>(&membership(self.store.reader(), org, actor).await?)?;
        Ok(())
    }

    /// Invites an email address and queues the email.
    #[instrument(skip_all, fields(actor = %actor.user_id, organization = %command.organization_id))]
    pub async fn create_invitation(
        &self,
        actor: &Actor,
        command: CreateInvitation,
    ) -> Result<Changed<Invitation>, Error> {
        let org = command.organization_id;
        require_verified_email(actor, "invite")?;
        let checked = self.begin::<cap::MembersInvite>(org, actor).await?;
        let tx = checked.tx;
        lifecycle::may_invite(Some(checked.me.role), command.role).map_err(refuse_inviting)?;
        if command.role == Role::Owner && !command.workspace_grants.is_empty() {
            return Err(Error::invalid(
                "workspace_grants",
                "must be empty for an Owner, who holds WRITE on every workspace",
            ));
        }
        // Given back unless the invitation is committed.
        let taken = self.limits.take_invitation(&actor.user_id, org)?;
        let now = Timestamp::now();
        let organization =
            repo::find_organization(&*tx, org).await?.ok_or(Error::NotFound("organization"))?;
        for (i, grant) in command.workspace_grants.iter().enumerate() {
            // The end is an instant fixed now; it must lie ahead and within the bound.
            let field = format!("workspace_grants[{i}].expire_time");
            check_end(&field, grant.expire_time, organization.max_grant_duration, now)?;
            if repo::find_workspace(&*tx, org, grant.workspace_id).await?.is_none() {
                return Err(Error::invalid(
                    format!("workspace_grants[{i}].workspace_id"),
                    "names no workspace of this organization",
                ));
            }
        }
        if repo::find_member_by_email(&*tx, org, &command.email).await?.is_some() {
            return Err(Error::refused(
                ErrorReason::EmailAlreadyMember,
                "this email belongs to a member of the organization already",
            ));
        }
        if let Some(pending) = repo::find_pending_invitation_for(&*tx, org, &command.email).await? {
            if pending.state_at(now) == InvitationState::Pending {
                return Err(repo::pending_exists());
            }
            // Expired without a sweep: record it, so the new invitation is the pending one.
            repo::update_invitation_expired(&*tx, org, pending.id, now).await?;
        }
        let invitation = Invitation {
            id: InvitationId::generate(),
            organization_id: org,
            email: command.email,
            role: command.role,
            stored_state: InvitationState::Pending,
            workspace_grants: command.workspace_grants,
            inviter_user_id: actor.user_id.clone(),
            create_time: now,
            expire_time: now.plus(organization.invitation_ttl.duration()),
            send_count: 1,
            delivery_state: DeliveryState::Queued,
            last_delivery_error: None,
        };
        // No token yet: the worker mints it when it sends the email, so none is ever stored.
        repo::insert_invitation(&*tx, &checked.pass, &invitation).await?;
        repo::insert_outbox(&*tx, &invitation, now).await?;
        let audited = Audited {
            action: AuditAction::InvitationCreated,
            target: AuditTarget::Invitation(invitation.id),
            details: json!({
                "email": invitation.email.as_str(),
                "role": invitation.role.as_str(),
                "workspace_grants": invitation.workspace_grants.len(),
            }),
        };
        // Kept before the commit: one whose outcome is unknown may still send an email.
        taken.keep();
        // Nothing Authorize decides on until it is accepted.
        let token = self.finish(tx, actor, audited, Vec::new(), now).await?;
        self.outbox_signal.notify_one();
        tracing::info!(invitation = %invitation.id, invitee = %invitation.email.redacted(), "invitation created");
        Ok(Changed { value: invitation, token })
    }

    /// Lists invitations, optionally by state.
    #[instrument(skip_all, fields(actor = %actor.user_id, organization = %command.organization_id))]
    pub async fn list_invitations(
        &self,
        actor: &Actor,
        command: ListInvitations,
    ) -> Result<Page<Invitation>, Error> {
        let ListInvitations { organization_id: org, state, page } = command;
        let db = self.store.reader();
        require::<cap::InvitationsRead>(&membership(db, org, actor).await?)?;
        let after = page::uuid_cursor(page.after, InvitationId::parse)?;
        let items =
            repo::list_invitations(db, org, state, Timestamp::now(), after, page.size + 1).await?;
        Ok(page::finish("invitations", items, page.size, |i| i.id.to_string()))
    }

    /// Issues a fresh expiry and email (with a fresh token) for a PENDING or EXPIRED
    /// invitation; the token already mailed stops working at once, and the actor becomes the
    /// inviter.
    #[instrument(skip_all, fields(actor = %actor.user_id, organization = %command.organization_id, invitation = %command.invitation_id))]
    pub async fn resend_invitation(
        &self,
        actor: &Actor,
        command: InvitationRef,
    ) -> Result<Changed<Invitation>, Error> {
        let InvitationRef { organization_id: org, invitation_id: id } = command;
        require_verified_email(actor, "invite")?;
        let checked = self.begin::<cap::MembersInvite>(org, actor).await?;
        let tx = checked.tx;
        let invitation =
            repo::find_invitation(&*tx, org, id).await?.ok_or(Error::NotFound("invitation"))?;
        lifecycle::may_invite(Some(checked.me.role), invitation.role).map_err(|refusal| {
            match refusal {
                InviteRefusal::OwnerRoleNeedsOwner => {
                    owner_only("only an Owner can resend an invitation to become Owner")
                }
                other => refuse_inviting(other),
            }
        })?;
        let now = Timestamp::now();
        if let Transition::Refuse(ended, why) = lifecycle::resend(invitation.state_at(now)) {
            return Err(Error::refused(ended_reason(ended), why));
        }
        let taken = self.limits.take_invitation(&actor.user_id, org)?;
        if repo::find_member_by_email(&*tx, org, &invitation.email).await?.is_some() {
            return Err(Error::refused(
                ErrorReason::InviteeAlreadyMember,
                "this email belongs to a member of the organization already",
            ));
        }
        let organization =
            repo::find_organization(&*tx, org).await?.ok_or(Error::NotFound("organization"))?;
        let expire_time = now.plus(organization.invitation_ttl.duration());
        repo::update_invitation_for_resend(
            &*tx,
            &checked.pass,
            id,
            &actor.user_id,
            expire_time,
            now,
        )
        .await?;
        let resent = Invitation {
            stored_state: InvitationState::Pending,
            inviter_user_id: actor.user_id.clone(),
            expire_time,
            send_count: invitation.send_count + 1,
            delivery_state: DeliveryState::Queued,
            last_delivery_error: None,
            ..invitation
        };
        repo::insert_outbox(&*tx, &resent, now).await?;
        let audited = Audited {
            action: AuditAction::InvitationResent,
            target: AuditTarget::Invitation(id),
            details: json!({ "send_count": resent.send_count }),
        };
        // Kept before the commit: one whose outcome is unknown may still send an email.
        taken.keep();
        let token = self.finish(tx, actor, audited, Vec::new(), now).await?;
        self.outbox_signal.notify_one();
        Ok(Changed { value: resent, token })
    }

    /// Revokes a PENDING or EXPIRED invitation; revoking again succeeds without a change. An
    /// email not yet sent is never sent.
    #[instrument(skip_all, fields(actor = %actor.user_id, organization = %command.organization_id, invitation = %command.invitation_id))]
    pub async fn revoke_invitation(
        &self,
        actor: &Actor,
        command: InvitationRef,
    ) -> Result<Changed<Invitation>, Error> {
        let InvitationRef { organization_id: org, invitation_id: id } = command;
        let checked = self.begin::<cap::MembersInvite>(org, actor).await?;
        let tx = checked.tx;
        let invitation =
            repo::find_invitation(&*tx, org, id).await?.ok_or(Error::NotFound("invitation"))?;
        let now = Timestamp::now();
        match lifecycle::revoke(invitation.state_at(now)) {
            Transition::Refuse(ended, why) => Err(Error::refused(ended_reason(ended), why)),
            Transition::NoOp => {
                Ok(Changed { value: invitation, token: self.unchanged(tx, actor).await? })
            }
            Transition::Apply => {
                repo::update_invitation_revoked(&*tx, &checked.pass, id, now).await?;
                repo::cancel_outbox_of(&*tx, org, id, "not sent: the invitation was revoked")
                    .await?;
                let audited = Audited {
                    action: AuditAction::InvitationRevoked,
                    target: AuditTarget::Invitation(id),
                    details: json!({}),
                };
                let token = self.finish(tx, actor, audited, Vec::new(), now).await?;
                // Read back: the delivery state may have changed with the revocation.
                let revoked = repo::find_invitation(self.store.reader(), org, id).await?;
                let value = revoked
                    .unwrap_or(Invitation { stored_state: InvitationState::Revoked, ..invitation });
                Ok(Changed { value, token })
            }
        }
    }

    /// Accepts an invitation with its token: the member, the grants and the ACCEPTED state in
    /// one transaction.
    #[instrument(skip_all, fields(actor = %actor.user_id))]
    pub async fn accept_invitation(
        &self,
        actor: &Actor,
        command: AcceptInvitation,
    ) -> Result<Changed<Member>, Error> {
        let presented = command.token;
        let email = caller_email(actor, "accept an invitation")?;
        require_verified_email(actor, "accept an invitation")?;
        if !token::is_well_formed(&presented) {
            return Err(Error::invalid(
                "token",
                "is not an invitation token; copy it whole from the email",
            ));
        }
        let presented_hash = token::hash(&presented);
        let Some((found, _)) =
            repo::find_invitation_by_token_hash(self.store.reader(), &presented_hash).await?
        else {
            return Err(Error::NotFound("invitation"));
        };
        let org = found.organization_id;
        let Some(tx) = OrgChange::begin(&self.store, org).await? else {
            return Err(Error::NotFound("invitation"));
        };
        super::change::not_made_yet(&tx, actor).await?;
        // Read again under the lock: a concurrent accept, resend or revoke may have won.
        let Some((invitation, stored_hash)) =
            repo::find_invitation_by_token_hash(&*tx, &presented_hash).await?
        else {
            return Err(Error::NotFound("invitation"));
        };
        if !token::hashes_match(&presented_hash, &stored_hash) {
            return Err(Error::NotFound("invitation"));
        }
        if invitation.email != email {
            return Err(Error::refused(
                ErrorReason::InvitationForAnotherEmail,
                "this invitation was sent to another email address",
            ));
        }
        if repo::find_member(&*tx, org, &actor.user_id).await?.is_some() {
            return Err(Error::refused(
                ErrorReason::AlreadyMember,
                "you are already a member of this organization",
            ));
        }
        let now = Timestamp::now();
        // `admit` decides; asked first here so that a dead invitation says so before anything
        // about the accounts involved.
        if let Transition::Refuse(ended, why) = lifecycle::accept(invitation.state_at(now)) {
            return Err(Error::refused(ended_reason(ended), why));
        }
        if repo::find_member_by_email(&*tx, org, &email).await?.is_some() {
            return Err(Error::refused(
                ErrorReason::EmailAlreadyMember,
                "another account with this email address is already a member of this organization",
            ));
        }
        let inviter = repo::find_member(&*tx, org, &invitation.inviter_user_id).await?;
        let invitation_id = invitation.id;
        let accepted = lifecycle::admit(
            invitation,
            actor.user_id.clone(),
            email,
            inviter.map(|m| m.role),
            now,
        )
        .map_err(|refusal| match refusal {
            AcceptRefusal::State(ended, why) => Error::refused(ended_reason(ended), why),
            AcceptRefusal::Inviter(refusal) => {
                Error::refused(ErrorReason::InviterMayNoLongerInvite, void_invitation(refusal))
            }
        })?;
        repo::insert_accepted(&*tx, &accepted).await?;
        repo::cancel_outbox_of(&*tx, org, invitation_id, "not sent: the invitation was accepted")
            .await?;
        let member = accepted.member().clone();
        let audited = Audited {
            action: AuditAction::InvitationAccepted,
            target: AuditTarget::Member(actor.user_id.clone()),
            details: json!({
                "invitation_id": invitation_id.to_string(),
                "role": member.role.as_str(),
            }),
        };
        let added = Delta::MemberAdded {
            user: actor.user_id.clone(),
            email: member.email.clone(),
            role: member.role,
        };
        let deltas = std::iter::once(added)
            .chain(accepted.workspace_grants().iter().map(|grant| Delta::GrantChanged {
                user: actor.user_id.clone(),
                workspace: grant.workspace_id,
                old: None,
                new: Some(grant.access),
                expire_time: grant.expire_time,
            }))
            .collect();
        let token = self.finish(tx, actor, audited, deltas, now).await?;
        Ok(Changed { value: member, token })
    }
}

/// PERMISSION_DENIED for an inviter who may not offer the role (rule 1).
fn refuse_inviting(refusal: InviteRefusal) -> Error {
    match refusal {
        InviteRefusal::OwnerRoleNeedsOwner => owner_only("only an Owner can invite an Owner"),
        // Unreachable past `begin`, which checked membership and members.invite.
        InviteRefusal::NotAMember | InviteRefusal::CannotInvite => {
            Error::permission_missing(Permission::MembersInvite.name())
        }
    }
}

/// The reason sent for an invitation that ended.
fn ended_reason(ended: Ended) -> ErrorReason {
    match ended {
        Ended::Accepted => ErrorReason::InvitationAccepted,
        Ended::Revoked => ErrorReason::InvitationRevoked,
        Ended::Expired => ErrorReason::InvitationExpired,
    }
}

/// Why an invitation no longer stands once its inviter may not offer its role.
fn void_invitation(refusal: InviteRefusal) -> &'static str {
    match refusal {
        InviteRefusal::NotAMember => {
            "the member who invited you has left the organization, so the invitation no longer \
             stands; ask an Owner or Admin to invite you again"
        }
        InviteRefusal::CannotInvite => {
            "the member who invited you may no longer invite members, so the invitation no \
             longer stands; ask an Owner or Admin to invite you again"
        }
        InviteRefusal::OwnerRoleNeedsOwner => {
            "the member who invited you to be Owner is no longer an Owner, so the invitation no \
             longer stands; ask an Owner to invite you again"
        }
    }
}
