//! The invitation lifecycle: PENDING → ACCEPTED | REVOKED | EXPIRED, with resend bringing a
//! PENDING or EXPIRED invitation back to PENDING with a fresh token; who may invite to which
//! role; and whether a queued email may still go out.

use super::email::Email;
use super::ids::{InvitationId, UserId};
use super::model::{Invitation, InvitedGrant, Member, Timestamp};
use super::permission::Permission;
use super::values::Role;

/// An invitation's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InvitationState {
    /// Waiting to be accepted.
    Pending,
    /// Accepted; the invitee is a member.
    Accepted,
    /// Revoked for good.
    Revoked,
    /// Not accepted before its expiry.
    Expired,
}

impl InvitationState {
    /// Every state.
    pub const ALL: [InvitationState; 4] = [
        InvitationState::Pending,
        InvitationState::Accepted,
        InvitationState::Revoked,
        InvitationState::Expired,
    ];

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            InvitationState::Pending => "pending",
            InvitationState::Accepted => "accepted",
            InvitationState::Revoked => "revoked",
            InvitationState::Expired => "expired",
        }
    }

    /// Parses the stored spelling.
    pub fn from_stored(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// The state a reader sees: a pending invitation past its expiry reads as expired whether or
    /// not anything has swept it yet.
    pub fn effective(self, expire_time_micros: i64, now_micros: i64) -> Self {
        match self {
            InvitationState::Pending if expire_time_micros <= now_micros => {
                InvitationState::Expired
            }
            other => other,
        }
    }
}

/// How an invitation that can no longer be used ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Someone accepted it.
    Accepted,
    /// A member revoked it.
    Revoked,
    /// Its expiry passed first.
    Expired,
}

/// What a lifecycle request may do from a given effective state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Apply the change.
    Apply,
    /// Succeed without changing anything (revoking a revoked invitation).
    NoOp,
    /// Refuse: how the invitation ended, and what to tell the caller.
    Refuse(Ended, &'static str),
}

/// Resend: PENDING or EXPIRED get a fresh token; ACCEPTED and REVOKED are final.
pub fn resend(state: InvitationState) -> Transition {
    match state {
        InvitationState::Pending | InvitationState::Expired => Transition::Apply,
        InvitationState::Accepted => {
            Transition::Refuse(Ended::Accepted, "the invitation was already accepted")
        }
        InvitationState::Revoked => Transition::Refuse(
            Ended::Revoked,
            "the invitation was revoked; create a new invitation instead",
        ),
    }
}

/// Revoke: PENDING or EXPIRED become REVOKED; revoking again is a no-op; ACCEPTED is final.
pub fn revoke(state: InvitationState) -> Transition {
    match state {
        InvitationState::Pending | InvitationState::Expired => Transition::Apply,
        InvitationState::Revoked => Transition::NoOp,
        InvitationState::Accepted => Transition::Refuse(
            Ended::Accepted,
            "the invitation was already accepted; remove the member instead",
        ),
    }
}

/// Accept: only PENDING can be accepted.
pub fn accept(state: InvitationState) -> Transition {
    match state {
        InvitationState::Pending => Transition::Apply,
        InvitationState::Expired => Transition::Refuse(
            Ended::Expired,
            "the invitation has expired; ask for it to be resent",
        ),
        InvitationState::Revoked => {
            Transition::Refuse(Ended::Revoked, "the invitation was revoked")
        }
        InvitationState::Accepted => {
            Transition::Refuse(Ended::Accepted, "the invitation was already accepted")
        }
    }
}

/// Why an inviter may not offer a role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InviteRefusal {
    /// The inviter is not a member of the organization.
    NotAMember,
    /// The inviter's role lacks `members.invite`.
    CannotInvite,
    /// Only an Owner may offer the Owner role (rule 1).
    OwnerRoleNeedsOwner,
}

/// Rule 1 for invitations: a member whose role holds `members.invite` may invite to any role
/// but Owner, which only an Owner may offer. `inviter` is the inviter's current role, `None` if
/// they are no longer a member. Checked when an invitation is created or resent, and again when
/// it is accepted, so that an invitation never grants more than its inviter still could.
pub fn may_invite(inviter: Option<Role>, invited: Role) -> Result<(), InviteRefusal> {
    let Some(inviter) = inviter else {
        return Err(InviteRefusal::NotAMember);
    };
    if !Permission::MembersInvite.held_by_role(inviter) {
        return Err(InviteRefusal::CannotInvite);
    }
    if invited == Role::Owner && inviter != Role::Owner {
        return Err(InviteRefusal::OwnerRoleNeedsOwner);
    }
    Ok(())
}

/// Why an invitation cannot be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptRefusal {
    /// Its state as of now is not PENDING: how it ended, and what to tell the caller.
    State(Ended, &'static str),
    /// Its inviter may no longer offer its role.
    Inviter(InviteRefusal),
}

/// An invitation the lifecycle let through: the only authority for adding a member without a
/// [`Pass`](super::authz::Pass). Made only by [`admit`], so storage cannot add a member from an
/// invitation that was never checked.
#[derive(Debug)]
pub struct Admitted {
    invitation_id: InvitationId,
    member: Member,
    workspace_grants: Vec<InvitedGrant>,
}

impl Admitted {
    /// The invitation accepted.
    pub fn invitation_id(&self) -> InvitationId {
        self.invitation_id
    }

    /// The member it makes.
    pub fn member(&self) -> &Member {
        &self.member
    }

    /// The grants the new member receives.
    pub fn workspace_grants(&self) -> &[InvitedGrant] {
        &self.workspace_grants
    }
}

/// Accepting `invitation` as `user` with `email` at `now`, when its inviter's role is now
/// `inviter` (`None`: no longer a member): allowed only for a PENDING invitation whose inviter
/// may still offer its role (rule 1, as of now). Whether the token and the email match is the
/// caller's to check first.
pub fn admit(
    invitation: Invitation,
    user: UserId,
    email: Email,
    inviter: Option<Role>,
    now: Timestamp,
) -> Result<Admitted, AcceptRefusal> {
    if let Transition::Refuse(ended, why) = accept(invitation.state_at(now)) {
        return Err(AcceptRefusal::State(ended, why));
    }
    may_invite(inviter, invitation.role).map_err(AcceptRefusal::Inviter)?;
    Ok(Admitted {
        invitation_id: invitation.id,
        member: Member {
            organization_id: invitation.organization_id,
            user_id: user,
            email,
            role: invitation.role,
            create_time: now,
        },
        // A grant whose end has passed by now grants nothing: it is not applied.
        workspace_grants: invitation
            .workspace_grants
            .into_iter()
            .filter(|grant| grant.expire_time.is_none_or(|end| end > now))
            .collect(),
    })
}

/// What the outbox worker does with a queued email it has claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Issue a fresh token and send.
    Send,
    /// A later send of the same invitation replaced this one: forget it.
    Supersede,
    /// The invitation can no longer be accepted: never send, and say why.
    Cancel(&'static str),
}

/// Whether the email for send number `this_send` of an invitation may go out now: only the
/// latest send of a PENDING invitation whose inviter may still offer its role. A token is minted
/// only after this says Send, so a revoked, accepted or expired invitation is never mailed.
pub fn delivery(
    state: InvitationState,
    latest_send: i32,
    this_send: i32,
    inviter: Option<Role>,
    invited: Role,
) -> Delivery {
    match state {
        InvitationState::Revoked => {
            return Delivery::Cancel("not sent: the invitation was revoked");
        }
        InvitationState::Accepted => {
            return Delivery::Cancel("not sent: the invitation was accepted");
        }
        InvitationState::Expired => return Delivery::Cancel("not sent: the invitation expired"),
        InvitationState::Pending => {}
    }
    if this_send != latest_send {
        return Delivery::Supersede;
    }
    match may_invite(inviter, invited) {
        Ok(()) => Delivery::Send,
        Err(_) => Delivery::Cancel("not sent: the inviter may no longer invite to this role"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use InvitationState::*;

    #[test]
    fn a_past_expiry_reads_as_expired() {
        assert_eq!(Pending.effective(100, 99), Pending);
        assert_eq!(Pending.effective(100, 100), Expired);
        assert_eq!(Accepted.effective(100, 200), Accepted);
        assert_eq!(Revoked.effective(100, 200), Revoked);
    }

    #[test]
    fn lifecycle_table() {
        assert_eq!(resend(Pending), Transition::Apply);
        assert_eq!(resend(Expired), Transition::Apply);
        assert!(matches!(resend(Accepted), Transition::Refuse(..)));
        assert!(matches!(resend(Revoked), Transition::Refuse(..)));
        assert_eq!(revoke(Pending), Transition::Apply);
        assert_eq!(revoke(Expired), Transition::Apply);
        assert_eq!(revoke(Revoked), Transition::NoOp);
        assert!(matches!(revoke(Accepted), Transition::Refuse(..)));
        assert_eq!(accept(Pending), Transition::Apply);
        for state in [Expired, Revoked, Accepted] {
            assert!(matches!(accept(state), Transition::Refuse(..)));
        }
    }

    #[test]
    fn who_may_invite_to_which_role() {
        use InviteRefusal::*;
        use Role::{Admin, Billing, Member, Owner};
        // (inviter, invited, outcome); None: the inviter is no longer a member.
        let table = [
            (Some(Owner), Owner, Ok(())),
            (Some(Owner), Admin, Ok(())),
            (Some(Owner), Billing, Ok(())),
            (Some(Owner), Member, Ok(())),
            (Some(Admin), Owner, Err(OwnerRoleNeedsOwner)),
            (Some(Admin), Admin, Ok(())),
            (Some(Admin), Billing, Ok(())),
            (Some(Admin), Member, Ok(())),
            (Some(Billing), Member, Err(CannotInvite)),
            (Some(Billing), Owner, Err(CannotInvite)),
            (Some(Member), Member, Err(CannotInvite)),
            (Some(Member), Admin, Err(CannotInvite)),
            (None, Member, Err(NotAMember)),
            (None, Owner, Err(NotAMember)),
        ];
        for (inviter, invited, outcome) in table {
            assert_eq!(may_invite(inviter, invited), outcome, "{inviter:?} inviting {invited:?}");
        }
        // Whoever may invite at all holds members.invite, as the permission table says.
        for inviter in Role::ALL {
            assert_eq!(
                may_invite(Some(inviter), Role::Member).is_ok(),
                Permission::MembersInvite.held_by_role(inviter)
            );
        }
    }

    fn invitation(state: InvitationState, role: Role, expire_micros: i64) -> Invitation {
        use crate::domain::{DeliveryState, OrganizationId};
        Invitation {
            id: InvitationId::generate(),
            organization_id: OrganizationId::generate(),
            email: Email::parse("ada@example.com").unwrap(),
            role,
            stored_state: state,
            workspace_grants: vec![
                InvitedGrant {
                    workspace_id: crate::domain::WorkspaceId::generate(),
                    access: crate::domain::Access::Write,
                    expire_time: None,
                    reason: None,
                },
                // Ends at 1,500: after the instant the tests accept at, 1,000.
                InvitedGrant {
                    workspace_id: crate::domain::WorkspaceId::generate(),
                    access: crate::domain::Access::Read,
                    expire_time: Some(Timestamp::from_micros(1_500)),
                    reason: crate::domain::GrantReason::parse("audit").ok(),
                },
                // Ended before the acceptance: not applied.
                InvitedGrant {
                    workspace_id: crate::domain::WorkspaceId::generate(),
                    access: crate::domain::Access::Write,
                    expire_time: Some(Timestamp::from_micros(900)),
                    reason: crate::domain::GrantReason::parse("incident").ok(),
                },
            ],
            inviter_user_id: UserId::parse("inviter").unwrap(),
            create_time: Timestamp::from_micros(0),
            expire_time: Timestamp::from_micros(expire_micros),
            send_count: 1,
            delivery_state: DeliveryState::Sent,
            last_delivery_error: None,
        }
    }

    #[test]
    fn only_a_pending_invitation_whose_inviter_still_may_offer_its_role_admits() {
        use Role::{Admin, Member, Owner};
        let now = Timestamp::from_micros(1_000);
        let ada = || UserId::parse("ada").unwrap();
        let email = || Email::parse("ada@example.com").unwrap();
        let live = invitation(Pending, Member, 2_000);
        let (org, grants) = (live.organization_id, live.workspace_grants[..2].to_vec());
        let accepted = admit(live, ada(), email(), Some(Admin), now).unwrap();
        assert_eq!(accepted.member().organization_id, org);
        assert_eq!(accepted.member().role, Member);
        assert_eq!(accepted.member().create_time, now);
        assert_eq!(accepted.workspace_grants(), grants.as_slice());
        // Past its expiry, whether or not anything recorded it.
        let expired = invitation(Pending, Member, 1_000);
        let refusal = admit(expired, ada(), email(), Some(Owner), now).unwrap_err();
        assert!(matches!(refusal, AcceptRefusal::State(Ended::Expired, _)));
        for state in [Accepted, Revoked, Expired] {
            let dead = invitation(state, Member, 2_000);
            assert!(matches!(
                admit(dead, ada(), email(), Some(Owner), now),
                Err(AcceptRefusal::State(..))
            ));
        }
        // Rule 1 as of acceptance: an inviter demoted from Owner no longer offers Owner.
        let to_owner = invitation(Pending, Owner, 2_000);
        assert_eq!(
            admit(to_owner, ada(), email(), Some(Admin), now).unwrap_err(),
            AcceptRefusal::Inviter(InviteRefusal::OwnerRoleNeedsOwner)
        );
        let gone = invitation(Pending, Member, 2_000);
        assert_eq!(
            admit(gone, ada(), email(), None, now).unwrap_err(),
            AcceptRefusal::Inviter(InviteRefusal::NotAMember)
        );
    }

    #[test]
    fn only_the_latest_send_of_a_live_invitation_goes_out() {
        use Role::{Admin, Member, Owner};
        assert_eq!(delivery(Pending, 1, 1, Some(Owner), Member), Delivery::Send);
        assert_eq!(delivery(Pending, 3, 3, Some(Admin), Admin), Delivery::Send);
        assert_eq!(delivery(Pending, 2, 1, Some(Owner), Member), Delivery::Supersede);
        for (state, why) in [(Revoked, "revoked"), (Accepted, "accepted"), (Expired, "expired")] {
            // Older sends of a dead invitation are cancelled too: nothing of it is mailed.
            for this_send in [1, 2] {
                let Delivery::Cancel(reason) = delivery(state, 2, this_send, Some(Owner), Member)
                else {
                    panic!("{state:?} must not be mailed");
                };
                assert!(reason.contains(why), "{reason}");
            }
        }
        for (inviter, invited) in [(Some(Admin), Owner), (Some(Member), Member), (None, Member)] {
            assert!(
                matches!(delivery(Pending, 1, 1, inviter, invited), Delivery::Cancel(_)),
                "{inviter:?} inviting {invited:?}"
            );
        }
    }
}
