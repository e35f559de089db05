//! The records Roster keeps, as the services see them.

use super::audit::{AuditAction, AuditTarget};
use super::email::Email;
use super::ids::{AuditEventId, InvitationId, OrganizationId, UserId, WorkspaceId};
use super::invitation::InvitationState;
use super::values::{Access, DisplayName, GrantReason, InvitationTtl, MaxGrantDuration, Role};

/// A point in time, in microseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        Self(chrono::Utc::now().timestamp_micros())
    }

    /// Wraps stored microseconds.
    pub fn from_micros(micros: i64) -> Self {
        Self(micros)
    }

    /// Microseconds since the epoch.
    pub fn as_micros(self) -> i64 {
        self.0
    }

    /// RFC 3339 in UTC, with as many fractional digits as it needs; the plain microseconds
    /// for a time chrono cannot represent.
    pub fn to_rfc3339(self) -> String {
        chrono::DateTime::from_timestamp_micros(self.0)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
            .unwrap_or_else(|| self.0.to_string())
    }

    /// This time plus a duration, saturating.
    pub fn plus(self, duration: std::time::Duration) -> Self {
        let micros = i64::try_from(duration.as_micros()).unwrap_or(i64::MAX);
        Self(self.0.saturating_add(micros))
    }
}

/// An organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Organization {
    pub id: OrganizationId,
    pub display_name: DisplayName,
    /// Validity of its invitations.
    pub invitation_ttl: InvitationTtl,
    /// The longest a grant may last from when it is set; `None`: no bound.
    pub max_grant_duration: Option<MaxGrantDuration>,
    pub create_time: Timestamp,
    /// Last change of name or settings.
    pub update_time: Timestamp,
}

/// A membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub organization_id: OrganizationId,
    pub user_id: UserId,
    /// The user's email when they joined.
    pub email: Email,
    pub role: Role,
    pub create_time: Timestamp,
}

/// A workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    pub id: WorkspaceId,
    pub organization_id: OrganizationId,
    pub display_name: DisplayName,
    pub create_time: Timestamp,
}

/// A member's access to a workspace; `access` None reports a removed grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub organization_id: OrganizationId,
    pub workspace_id: WorkspaceId,
    pub user_id: UserId,
    /// The access held, if any.
    pub access: Option<Access>,
    /// When the grant ends; `None`: it is permanent.
    pub expire_time: Option<Timestamp>,
    /// Why a grant that ends was given.
    pub reason: Option<GrantReason>,
}

/// How far an invitation's latest email has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Waiting for its first attempt.
    Queued,
    /// Failed at least once; will be retried.
    Retrying,
    /// Delivered to the transport.
    Sent,
    /// Given up after every retry.
    Failed,
    /// Never to be sent: the invitation was revoked, accepted or expired, or its inviter lost
    /// the right to invite to its role, before the email went out.
    Canceled,
}

impl DeliveryState {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Queued => "queued",
            DeliveryState::Retrying => "retrying",
            DeliveryState::Sent => "sent",
            DeliveryState::Failed => "failed",
            DeliveryState::Canceled => "canceled",
        }
    }

    /// Parses the stored spelling.
    pub fn from_stored(text: &str) -> Option<Self> {
        [Self::Queued, Self::Retrying, Self::Sent, Self::Failed, Self::Canceled]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// A grant an invitation applies when it is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvitedGrant {
    pub workspace_id: WorkspaceId,
    pub access: Access,
    /// When the grant ends, an instant fixed when the invitation is made: a grant whose end
    /// has passed by the acceptance is not applied. `None`: permanent.
    pub expire_time: Option<Timestamp>,
    /// Why a grant that ends is offered.
    pub reason: Option<GrantReason>,
}

/// An invitation, with its state as stored (see [`Invitation::state_at`] for what readers see).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invitation {
    pub id: InvitationId,
    pub organization_id: OrganizationId,
    /// The invitee's normalized email.
    pub email: Email,
    /// Role on acceptance.
    pub role: Role,
    /// The stored state.
    pub stored_state: InvitationState,
    /// Grants applied on acceptance.
    pub workspace_grants: Vec<InvitedGrant>,
    /// Who sent the latest email: the member who created the invitation or last resent it.
    pub inviter_user_id: UserId,
    pub create_time: Timestamp,
    /// When the current token expires.
    pub expire_time: Timestamp,
    /// Emails queued so far.
    pub send_count: i32,
    /// Latest email's delivery state.
    pub delivery_state: DeliveryState,
    /// Latest email's last delivery error.
    pub last_delivery_error: Option<String>,
}

impl Invitation {
    /// The state as seen at `now`: a pending invitation past its expiry is expired.
    pub fn state_at(&self, now: Timestamp) -> InvitationState {
        self.stored_state.effective(self.expire_time.as_micros(), now.as_micros())
    }
}

/// One audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub id: AuditEventId,
    pub organization_id: OrganizationId,
    /// The end user who acted; `None` when Roster did (recording that a grant ended).
    pub actor_user_id: Option<UserId>,
    pub action: AuditAction,
    pub target: AuditTarget,
    /// Details as a JSON object.
    pub details: serde_json::Value,
    pub create_time: Timestamp,
}
