//! Conversions between protobuf messages and domain values. Proto types stop here.

use crate::domain::change::TokenError;
use crate::domain::ids::IdError;
use crate::domain::{
    self, Access, AuditEvent, ChangeToken, Decision, DeliveryState, Grant, Invitation,
    InvitationId, InvitationState, Member, Organization, OrganizationId, Reason, Role, Timestamp,
    UserId, Workspace, WorkspaceId,
};
use crate::error::{Error, Violations};
use crate::index::Freshness;
use crate::pb;

/// Reads a required organization id.
pub fn organization_id(v: &mut Violations, field: &str, text: &str) -> Option<OrganizationId> {
    v.check(field, OrganizationId::parse(text).map_err(|IdError(e)| e))
}

/// Reads `organization_id` of a request that carries nothing else to check.
pub fn sole_organization_id(text: &str) -> Result<OrganizationId, Error> {
    let mut v = Violations::new();
    organization_id(&mut v, "organization_id", text).ok_or_else(|| v.into_error())
}

/// Reads a required workspace id.
pub fn workspace_id(v: &mut Violations, field: &str, text: &str) -> Option<WorkspaceId> {
    v.check(field, WorkspaceId::parse(text).map_err(|IdError(e)| e))
}

/// Reads an optional workspace id (empty means none).
pub fn optional_workspace_id(
    v: &mut Violations,
    field: &str,
    text: &str,
) -> Option<Option<WorkspaceId>> {
    if text.is_empty() { Some(None) } else { workspace_id(v, field, text).map(Some) }
}

/// Reads a required invitation id.
pub fn invitation_id(v: &mut Violations, field: &str, text: &str) -> Option<InvitationId> {
    v.check(field, InvitationId::parse(text).map_err(|IdError(e)| e))
}

/// Reads a required user id.
pub fn user_id(v: &mut Violations, field: &str, text: &str) -> Option<UserId> {
    v.check(field, UserId::parse(text).map_err(|IdError(e)| e))
}

/// Reads a required role.
pub fn role(v: &mut Violations, field: &str, value: i32) -> Option<Role> {
    let role = match pb::OrganizationRole::try_from(value) {
        Ok(pb::OrganizationRole::Owner) => Ok(Role::Owner),
        Ok(pb::OrganizationRole::Admin) => Ok(Role::Admin),
        Ok(pb::OrganizationRole::Billing) => Ok(Role::Billing),
        Ok(pb::OrganizationRole::Member) => Ok(Role::Member),
        Ok(pb::OrganizationRole::Unspecified) => {
            Err("is required: ORGANIZATION_ROLE_OWNER, _ADMIN, _BILLING or _MEMBER")
        }
        Err(_) => {
            Err("is not a known role: use ORGANIZATION_ROLE_OWNER, _ADMIN, _BILLING or _MEMBER")
        }
    };
    v.check(field, role)
}

/// Reads a workspace access level; NONE reads as `None` when `allow_none`.
pub fn access(
    v: &mut Violations,
    field: &str,
    value: i32,
    allow_none: bool,
) -> Option<Option<Access>> {
    let access = match pb::WorkspaceAccess::try_from(value) {
        Ok(pb::WorkspaceAccess::Read) => Ok(Some(Access::Read)),
        Ok(pb::WorkspaceAccess::Write) => Ok(Some(Access::Write)),
        Ok(pb::WorkspaceAccess::None) if allow_none => Ok(None),
        Ok(pb::WorkspaceAccess::None) => {
            Err("must be WORKSPACE_ACCESS_READ or WORKSPACE_ACCESS_WRITE")
        }
        Ok(pb::WorkspaceAccess::Unspecified) | Err(_) if allow_none => {
            Err("must be WORKSPACE_ACCESS_READ, WORKSPACE_ACCESS_WRITE or WORKSPACE_ACCESS_NONE")
        }
        Ok(pb::WorkspaceAccess::Unspecified) | Err(_) => {
            Err("must be WORKSPACE_ACCESS_READ or WORKSPACE_ACCESS_WRITE")
        }
    };
    v.check(field, access)
}

/// Reads an invitation state filter; UNSPECIFIED means all.
pub fn state_filter(
    v: &mut Violations,
    field: &str,
    value: i32,
) -> Option<Option<InvitationState>> {
    let state = match pb::InvitationState::try_from(value) {
        Ok(pb::InvitationState::Unspecified) => Ok(None),
        Ok(pb::InvitationState::Pending) => Ok(Some(InvitationState::Pending)),
        Ok(pb::InvitationState::Accepted) => Ok(Some(InvitationState::Accepted)),
        Ok(pb::InvitationState::Revoked) => Ok(Some(InvitationState::Revoked)),
        Ok(pb::InvitationState::Expired) => Ok(Some(InvitationState::Expired)),
        Err(_) => Err("is not a known invitation state"),
    };
    v.check(field, state)
}

/// A timestamp from the wire: whole microseconds are kept (the nanoseconds below are dropped),
/// between 1970 and 9999.
pub fn timestamp_in(t: prost_types::Timestamp) -> Result<Timestamp, &'static str> {
    const LATEST: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    if t.seconds < 0 || t.seconds > LATEST || !(0..1_000_000_000).contains(&t.nanos) {
        return Err("must be a valid time between 1970 and 9999");
    }
    Ok(Timestamp::from_micros(t.seconds * 1_000_000 + i64::from(t.nanos / 1000)))
}

/// A timestamp on the wire.
pub fn timestamp(t: Timestamp) -> prost_types::Timestamp {
    let micros = t.as_micros();
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

/// Role to the wire.
pub fn role_pb(role: Role) -> pb::OrganizationRole {
    match role {
        Role::Owner => pb::OrganizationRole::Owner,
        Role::Admin => pb::OrganizationRole::Admin,
        Role::Billing => pb::OrganizationRole::Billing,
        Role::Member => pb::OrganizationRole::Member,
    }
}

/// Workspace access to the wire; none is WORKSPACE_ACCESS_NONE.
pub fn access_pb(access: Option<Access>) -> pb::WorkspaceAccess {
    match access {
        None => pb::WorkspaceAccess::None,
        Some(Access::Read) => pb::WorkspaceAccess::Read,
        Some(Access::Write) => pb::WorkspaceAccess::Write,
    }
}

/// Organization to the wire.
pub fn organization(o: Organization) -> pb::Organization {
    pb::Organization {
        id: o.id.to_string(),
        display_name: o.display_name.as_str().to_owned(),
        invitation_ttl: Some(prost_types::Duration {
            seconds: o.invitation_ttl.as_secs(),
            nanos: 0,
        }),
        create_time: Some(timestamp(o.create_time)),
        update_time: Some(timestamp(o.update_time)),
        max_grant_duration: o
            .max_grant_duration
            .map(|bound| prost_types::Duration { seconds: bound.as_secs(), nanos: 0 }),
    }
}

/// Member to the wire.
pub fn member(m: Member) -> pb::Member {
    pb::Member {
        organization_id: m.organization_id.to_string(),
        user_id: m.user_id.to_string(),
        email: m.email.as_str().to_owned(),
        role: role_pb(m.role) as i32,
        create_time: Some(timestamp(m.create_time)),
    }
}

/// Workspace to the wire.
pub fn workspace(w: Workspace) -> pb::Workspace {
    pb::Workspace {
        id: w.id.to_string(),
        organization_id: w.organization_id.to_string(),
        display_name: w.display_name.as_str().to_owned(),
        create_time: Some(timestamp(w.create_time)),
    }
}

/// Grant to the wire.
pub fn grant(g: Grant) -> pb::WorkspaceGrant {
    pb::WorkspaceGrant {
        organization_id: g.organization_id.to_string(),
        workspace_id: g.workspace_id.to_string(),
        user_id: g.user_id.to_string(),
        access: access_pb(g.access) as i32,
        expire_time: g.expire_time.map(timestamp),
        reason: g.reason.map(|r| r.as_str().to_owned()).unwrap_or_default(),
    }
}

/// Invitation to the wire, with its state as of now.
pub fn invitation(i: Invitation) -> pb::Invitation {
    let state = match i.state_at(Timestamp::now()) {
        InvitationState::Pending => pb::InvitationState::Pending,
        InvitationState::Accepted => pb::InvitationState::Accepted,
        InvitationState::Revoked => pb::InvitationState::Revoked,
        InvitationState::Expired => pb::InvitationState::Expired,
    };
    let delivery_state = match i.delivery_state {
        DeliveryState::Queued => pb::DeliveryState::Queued,
        DeliveryState::Retrying => pb::DeliveryState::Retrying,
        DeliveryState::Sent => pb::DeliveryState::Sent,
        DeliveryState::Failed => pb::DeliveryState::Failed,
        DeliveryState::Canceled => pb::DeliveryState::Canceled,
    };
    pb::Invitation {
        id: i.id.to_string(),
        organization_id: i.organization_id.to_string(),
        email: i.email.as_str().to_owned(),
        role: role_pb(i.role) as i32,
        state: state as i32,
        workspace_grants: i
            .workspace_grants
            .into_iter()
            .map(|grant| pb::InvitationWorkspaceGrant {
                workspace_id: grant.workspace_id.to_string(),
                access: access_pb(Some(grant.access)) as i32,
                expire_time: grant.expire_time.map(timestamp),
                reason: grant.reason.map(|r| r.as_str().to_owned()).unwrap_or_default(),
            })
            .collect(),
        inviter_user_id: i.inviter_user_id.to_string(),
        create_time: Some(timestamp(i.create_time)),
        expire_time: Some(timestamp(i.expire_time)),
        send_count: i.send_count,
        delivery_state: delivery_state as i32,
        last_delivery_error: i.last_delivery_error.unwrap_or_default(),
    }
}

/// Audit event to the wire.
pub fn audit_event(e: AuditEvent) -> pb::AuditEvent {
    pb::AuditEvent {
        id: e.id.to_string(),
        organization_id: e.organization_id.to_string(),
        actor_user_id: e.actor_user_id.map(|a| a.to_string()).unwrap_or_default(),
        action: e.action.as_str().to_owned(),
        target: e.target.to_string(),
        create_time: Some(timestamp(e.create_time)),
        details_json: e.details.to_string(),
    }
}

/// Decision to the wire.
pub fn decision(d: Decision) -> pb::AuthorizeResponse {
    let reason = match d.reason {
        Reason::AllowedByOwner => pb::DecisionReason::AllowedByOwner,
        Reason::AllowedByRole => pb::DecisionReason::AllowedByRole,
        Reason::AllowedByWorkspaceAccess => pb::DecisionReason::AllowedByWorkspaceAccess,
        Reason::DeniedNotAMember => pb::DecisionReason::DeniedNotAMember,
        Reason::DeniedByRole => pb::DecisionReason::DeniedByRole,
        Reason::DeniedNoWorkspaceAccess => pb::DecisionReason::DeniedNoWorkspaceAccess,
        Reason::DeniedReadOnly => pb::DecisionReason::DeniedReadOnly,
        Reason::DeniedWorkspaceNotFound => pb::DecisionReason::DeniedWorkspaceNotFound,
        Reason::DeniedGrantExpired => pb::DecisionReason::DeniedGrantExpired,
    };
    pb::AuthorizeResponse {
        allowed: d.allowed,
        reason: reason as i32,
        role: d.role.map(role_pb).unwrap_or(pb::OrganizationRole::Unspecified) as i32,
        workspace_access: match d.workspace_access {
            None => pb::WorkspaceAccess::Unspecified as i32,
            Some(access) => access_pb(access) as i32,
        },
    }
}

/// The wire name of a decision's reason (`DECISION_REASON_DENIED_READ_ONLY`), as Envoy's
/// headers and AuthZEN decisions carry it.
pub fn reason_name(d: Decision) -> &'static str {
    pb::DecisionReason::try_from(decision(d).reason)
        .map_or("DECISION_REASON_UNSPECIFIED", |r| r.as_str_name())
}

/// Permission to the wire.
pub fn permission(p: domain::Permission) -> pb::Permission {
    pb::Permission {
        name: p.name().to_owned(),
        scope: match p.scope() {
            domain::Scope::Organization => pb::PermissionScope::Organization,
            domain::Scope::Workspace => pb::PermissionScope::Workspace,
        } as i32,
        description: p.description().to_owned(),
    }
}

/// A consistency requirement as read from a request: how fresh, and for AT_LEAST_AS_FRESH the
/// organization its token names, which must be the check's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requirement {
    /// How fresh the answer must be.
    pub freshness: Freshness,
    /// The organization the token names.
    pub organization: Option<OrganizationId>,
}

impl Requirement {
    /// The freshness for a check of `org`; a token of another organization is recorded as a
    /// violation of `field` (the requirement's own field name).
    pub fn for_organization(
        self,
        v: &mut Violations,
        field: &str,
        org: Option<OrganizationId>,
    ) -> Option<Freshness> {
        match (self.organization, org) {
            (Some(named), Some(org)) if named != org => {
                v.add(
                    format!("{field}.at_least_as_fresh"),
                    "names a change of another organization than the check's; use a token of that organization",
                );
                None
            }
            _ => Some(self.freshness),
        }
    }
}

/// The requirement of a consistency token (AT_LEAST_AS_FRESH, or AuthZEN's
/// `context.consistency_token`): a state that includes the change it names.
pub fn at_least_as_fresh(token: &str) -> Result<Requirement, &'static str> {
    match ChangeToken::parse(token) {
        Ok(ChangeToken { organization: Some((org, revision)), .. }) => {
            Ok(Requirement { freshness: Freshness::AtLeast(revision), organization: Some(org) })
        }
        Ok(ChangeToken { organization: None, .. }) => Err(
            "names no organization: use a consistency_token from a change, or a token from a Watch of one organization",
        ),
        // The previous release's tokens named a time; the database answers them.
        Err(TokenError::Legacy) => {
            Ok(Requirement { freshness: Freshness::Full, organization: None })
        }
        Err(TokenError::Malformed) => {
            Err("must be a consistency_token returned by a TeamService change")
        }
    }
}

/// Reads a consistency requirement.
pub fn consistency(
    v: &mut Violations,
    field: &str,
    value: Option<&pb::Consistency>,
) -> Option<Requirement> {
    let minimize = Requirement { freshness: Freshness::MinimizeLatency, organization: None };
    let Some(value) = value else { return Some(minimize) };
    let requirement = pb::ConsistencyRequirement::try_from(value.requirement);
    let read = match requirement {
        Ok(
            pb::ConsistencyRequirement::Unspecified | pb::ConsistencyRequirement::MinimizeLatency,
        ) => Ok(minimize),
        Ok(pb::ConsistencyRequirement::FullyConsistent) => {
            Ok(Requirement { freshness: Freshness::Full, organization: None })
        }
        Ok(pb::ConsistencyRequirement::AtLeastAsFresh) => {
            let token_field = format!("{field}.at_least_as_fresh");
            return v.check(&token_field, at_least_as_fresh(&value.at_least_as_fresh));
        }
        Err(_) => Err("is not a known consistency requirement"),
    };
    v.check(&format!("{field}.requirement"), read)
}
