//! The invitation lifecycle: PENDING → ACCEPTED | REVOKED | EXPIRED, with resend bringing a
//! PENDING or EXPIRED invitation back to PENDING with a fresh token.

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

/// What a lifecycle request may do from a given effective state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Apply the change.
    Apply,
    /// Succeed without changing anything (revoking a revoked invitation).
    NoOp,
    /// Refuse with a reason for the caller.
    Refuse(&'static str),
}

/// Resend: PENDING or EXPIRED get a fresh token; ACCEPTED and REVOKED are final.
pub fn resend(state: InvitationState) -> Transition {
    match state {
        InvitationState::Pending | InvitationState::Expired => Transition::Apply,
        InvitationState::Accepted => Transition::Refuse("the invitation was already accepted"),
        InvitationState::Revoked => {
            Transition::Refuse("the invitation was revoked; create a new invitation instead")
        }
    }
}

/// Revoke: PENDING or EXPIRED become REVOKED; revoking again is a no-op; ACCEPTED is final.
pub fn revoke(state: InvitationState) -> Transition {
    match state {
        InvitationState::Pending | InvitationState::Expired => Transition::Apply,
        InvitationState::Revoked => Transition::NoOp,
        InvitationState::Accepted => {
            Transition::Refuse("the invitation was already accepted; remove the member instead")
        }
    }
}

/// Accept: only PENDING can be accepted.
pub fn accept(state: InvitationState) -> Transition {
    match state {
        InvitationState::Pending => Transition::Apply,
        InvitationState::Expired => {
            Transition::Refuse("the invitation has expired; ask for it to be resent")
        }
        InvitationState::Revoked => Transition::Refuse("the invitation was revoked"),
        InvitationState::Accepted => Transition::Refuse("the invitation was already accepted"),
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
        assert!(matches!(resend(Accepted), Transition::Refuse(_)));
        assert!(matches!(resend(Revoked), Transition::Refuse(_)));
        assert_eq!(revoke(Pending), Transition::Apply);
        assert_eq!(revoke(Expired), Transition::Apply);
        assert_eq!(revoke(Revoked), Transition::NoOp);
        assert!(matches!(revoke(Accepted), Transition::Refuse(_)));
        assert_eq!(accept(Pending), Transition::Apply);
        for state in [Expired, Revoked, Accepted] {
            assert!(matches!(accept(state), Transition::Refuse(_)));
        }
    }
}
