//! Organizations, and their audit log.

use serde_json::json;
use tracing::instrument;

use super::change::{Audited, require};
use super::{caller_email, membership, require_verified_email};
use crate::domain::capability as cap;
use crate::domain::{
    AuditAction, AuditEvent, AuditEventId, AuditTarget, Delta, DisplayName, InvitationTtl,
    MaxGrantDuration, Member, Organization, OrganizationId, Role, Timestamp,
};
use crate::error::Error;
use crate::service::page::{self, Page, PageRequest};
use crate::service::{Actor, Changed, Services};
use crate::storage::changelog::OrgChange;
use crate::storage::repo;

/// What CreateOrganization asks, every field checked.
#[derive(Debug)]
pub struct CreateOrganization {
    pub display_name: DisplayName,
}

/// What UpdateOrganization asks, every field checked; `None` leaves a field as it is.
#[derive(Debug)]
pub struct UpdateOrganization {
    pub organization_id: OrganizationId,
    pub display_name: Option<DisplayName>,
    pub invitation_ttl: Option<InvitationTtl>,
    /// `Some(None)` removes the bound.
    pub max_grant_duration: Option<Option<MaxGrantDuration>>,
}

/// What ListAuditEvents asks, every field checked.
#[derive(Debug)]
pub struct ListAuditEvents {
    pub organization_id: OrganizationId,
    pub page: PageRequest,
}

impl Services {
    /// Creates an organization with the actor as its first Owner.
    #[instrument(skip_all, fields(actor = %actor.user_id))]
    pub async fn create_organization(
        &self,
        actor: &Actor,
        command: CreateOrganization,
    ) -> Result<Changed<Organization>, Error> {
        let email = caller_email(actor, "create an organization")?;
        require_verified_email(actor, "create an organization")?;
        let taken = self.limits.take_organization(&actor.user_id)?;
        let now = Timestamp::now();
        let org = Organization {
            id: OrganizationId::generate(),
            display_name: command.display_name,
            invitation_ttl: InvitationTtl::DEFAULT,
            max_grant_duration: None,
            create_time: now,
            update_time: now,
        };
        let tx = OrgChange::create(&self.store, org.id).await?;
        repo::insert_organization(&*tx, &org).await?;
        let founder = Member {
            organization_id: org.id,
            user_id: actor.user_id.clone(),
            email: email.clone(),
            role: Role::Owner,
            create_time: now,
        };
        repo::insert_founder(&*tx, &founder).await?;
        let audited = Audited {
            action: AuditAction::OrganizationCreated,
            target: AuditTarget::Organization(org.id),
            details: json!({ "display_name": org.display_name.as_str() }),
        };
        let deltas = vec![
            Delta::OrganizationCreated { display_name: org.display_name.clone() },
            Delta::MemberAdded { user: actor.user_id.clone(), email, role: Role::Owner },
        ];
        // Kept before the commit: a commit that fails after the database took it must not
        // give the creation back.
        taken.keep();
        let token = self.finish(tx, actor, audited, deltas, now).await?;
        Ok(Changed { value: org, token })
    }

    /// Returns an organization the actor belongs to.
    #[instrument(skip_all, fields(actor = %actor.user_id, organization = %org))]
    pub async fn get_organization(
        &self,
        actor: &Actor,
        org: OrganizationId,
    ) -> Result<Organization, Error> {
        let db = self.store.reader();
        require::<cap::OrganizationRead>(&membership(db, org, actor).await?)?;
        repo::find_organization(db, org).await?.ok_or(Error::NotFound("organization"))
    }

    /// Lists the actor's organizations.
    #[instrument(skip_all, fields(actor = %actor.user_id))]
    pub async fn list_organizations(
        &self,
        actor: &Actor,
        page: PageRequest,
    ) -> Result<Page<Organization>, Error> {
        let after = page::uuid_cursor(page.after, OrganizationId::parse)?;
        let orgs =
            repo::list_organizations_of(self.store.reader(), &actor.user_id, after, page.size + 1)
                .await?;
        Ok(page::finish("organizations", orgs, page.size, |o| o.id.to_string()))
    }

    /// Changes an organization's name and settings.
    #[instrument(skip_all, fields(actor = %actor.user_id, organization = %command.organization_id))]
    pub async fn update_organization(
        &self,
        actor: &Actor,
        command: UpdateOrganization,
    ) -> Result<Changed<Organization>, Error> {
        let org = command.organization_id;
        let checked = self.begin::<cap::OrganizationUpdate>(org, actor).await?;
        let tx = checked.tx;
        let current =
            repo::find_organization(&*tx, org).await?.ok_or(Error::NotFound("organization"))?;
        let now = Timestamp::now();
        let value = Organization {
            display_name: command.display_name.unwrap_or_else(|| current.display_name.clone()),
            invitation_ttl: command.invitation_ttl.unwrap_or(current.invitation_ttl),
            max_grant_duration: command.max_grant_duration.unwrap_or(current.max_grant_duration),
            update_time: now,
            ..current.clone()
        };
        let same = Organization { update_time: current.update_time, ..value.clone() } == current;
        if same {
            return Ok(Changed { value: current, token: self.unchanged(tx, actor).await? });
        }
        repo::update_organization(&*tx, &checked.pass, &value, now).await?;
        let audited = Audited {
            action: AuditAction::OrganizationUpdated,
            target: AuditTarget::Organization(org),
            details: json!({
                "display_name": value.display_name.as_str(),
                "invitation_ttl_secs": value.invitation_ttl.as_secs(),
                "max_grant_duration_secs": value.max_grant_duration.map(MaxGrantDuration::as_secs),
            }),
        };
        // A name or a setting: nothing Authorize decides on (a bound applies to grants set
        // from now on).
        let token = self.finish(tx, actor, audited, Vec::new(), now).await?;
        Ok(Changed { value, token })
    }

    /// Deletes an organization and everything in it.
    #[instrument(skip_all, fields(actor = %actor.user_id, organization = %org))]
    pub async fn delete_organization(
        &self,
        actor: &Actor,
        org: OrganizationId,
    ) -> Result<Changed<()>, Error> {
        let checked = self.begin::<cap::OrganizationDelete>(org, actor).await?;
        let now = Timestamp::now();
        repo::delete_organization(&*checked.tx, &checked.pass).await?;
        let audited = Audited {
            action: AuditAction::OrganizationDeleted,
            target: AuditTarget::Organization(org),
            details: json!({}),
        };
        let deltas = vec![Delta::OrganizationDeleted];
        let token = self.finish(checked.tx, actor, audited, deltas, now).await?;
        Ok(Changed { value: (), token })
    }

    /// Lists audit events, newest first.
    #[instrument(skip_all, fields(actor = %actor.user_id, organization = %command.organization_id))]
    pub async fn list_audit_events(
        &self,
        actor: &Actor,
        command: ListAuditEvents,
    ) -> Result<Page<AuditEvent>, Error> {
        let (org, page) = (command.organization_id, command.page);
        let db = self.store.reader();
        require::<cap::AuditRead>(&membership(db, org, actor).await?)?;
        let before = page::uuid_cursor(page.after, AuditEventId::parse)?;
        let events = repo::list_audit(db, org, before, page.size + 1).await?;
        Ok(page::finish("audit", events, page.size, |e| e.id.to_string()))
    }
}
