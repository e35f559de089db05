//! TeamService use-cases, acting for an end user.

use serde_json::json;
use tracing::instrument;

use super::page::{self, PageRequest};
use super::token;
use super::{Actor, Changed, Services};
use crate::domain::invitation::{self as lifecycle, InviteRefusal, Transition};
use crate::domain::rules::{self, Refusal, RoleChange};
use crate::domain::{
    Access, AuditEvent, AuditEventId, ChangeToken, DeliveryState, Delta, DisplayName, Email, Grant,
    Invitation, InvitationId, InvitationState, InvitationTtl, Member, Organization, OrganizationId,
    Pass, Permission, Role, Timestamp, UserId, Workspace, WorkspaceFacts, WorkspaceId,
};
use crate::error::Error;
use crate::index::AuthzIndex;
use crate::storage::changelog::{Declared, OrgChange};
use crate::storage::repo;

/// A page of results and the token of the next one (empty on the last page).
pub type Page<T> = (Vec<T>, String);

/// Fields of an organization to change; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct OrganizationChanges {
    /// New name.
    pub display_name: Option<DisplayName>,
    /// New invitation validity.
    pub invitation_ttl: Option<InvitationTtl>,
}

/// A validated CreateInvitation request.
#[derive(Debug)]
pub struct NewInvitation {
    /// The invitee.
    pub email: Email,
    /// Role on acceptance.
    pub role: Role,
    /// Grants on acceptance, one per workspace.
    pub workspace_grants: Vec<(WorkspaceId, Access)>,
}

fn denied(message: &str) -> Error {
    Error::PermissionDenied(message.to_owned())
}

/// The actor's email, which `to` needs.
fn caller_email(actor: &Actor, to: &str) -> Result<Email, Error> {
    actor
        .email
        .clone()
        .map_err(|why| Error::Unauthenticated(format!("your email is needed to {to}, but {why}")))
}

/// Refuses an actor whose email is not proven theirs (jwt mode: `email_verified` is not true),
/// before anything is read: founding organizations, inviting and accepting put that email to
/// use, so an unverified one could name anyone.
fn require_verified_email(actor: &Actor, to: &str) -> Result<(), Error> {
    if actor.email_verified {
        return Ok(());
    }
    Err(Error::PermissionDenied(format!(
        "your email address is not verified, which is needed to {to}: verify your email with \
         your identity provider, then sign in again"
    )))
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

/// Checks a permission for a member and mints the pass storage writes need.
fn require(member: &Member, permission: Permission) -> Result<Pass, Error> {
    Pass::check(member.organization_id, member.user_id.clone(), Some(member.role), permission)
        .map_err(|_| {
            Error::PermissionDenied(format!(
                "your role does not include the permission {}",
                permission.name()
            ))
        })
}

/// Opens a change to an organization: takes its lock and next revision first, so that
/// concurrent changes to it serialize, then checks the actor's permission on the state as of
/// the lock.
async fn begin_on(
    services: &Services,
    org: OrganizationId,
    actor: &Actor,
    permission: Permission,
) -> Result<(OrgChange, Member, Pass), Error> {
    let change =
        OrgChange::begin(&services.store, org).await?.ok_or(Error::NotFound("organization"))?;
    let me = membership(&*change, org, actor).await?;
    let pass = require(&me, permission)?;
    Ok((change, me, pass))
}

/// Writes the change's audit event; its id goes into the change log.
async fn audit(
    change: &OrgChange,
    actor: &UserId,
    action: &str,
    target: String,
    details: serde_json::Value,
    now: Timestamp,
) -> Result<AuditEventId, Error> {
    let id = AuditEventId::generate();
    repo::insert_audit(
        &**change,
        &AuditEvent {
            id,
            organization_id: change.organization(),
            actor_user_id: actor.clone(),
            action: action.to_owned(),
            target,
            details,
            create_time: now,
        },
    )
    .await?;
    Ok(id)
}

/// What a change did, for its log row.
fn declared(actor: &Actor, audit_event_id: AuditEventId, deltas: Vec<Delta>) -> Declared {
    Declared { actor: actor.user_id.clone(), audit_event_id: Some(audit_event_id), deltas }
}

impl Services {
    // -----------------------------------------------------------------------------------------
    // Organizations

    /// Creates an organization with the actor as its first Owner.
    #[instrument(skip_all, fields(actor = %actor.user_id))]
    pub async fn create_organization(
        &self,
        actor: &Actor,
        display_name: DisplayName,
    ) -> Result<Changed<Organization>, Error> {
        let email = caller_email(actor, "create an organization")?;
        require_verified_email(actor, "create an organization")?;
        let taken = self.limits.take_organization(&actor.user_id)?;
        let now = Timestamp::now();
        let org = Organization {
            id: OrganizationId::generate(),
            display_name,
            invitation_ttl: InvitationTtl::DEFAULT,
            create_time: now,
            update_time: now,
        };
        let change = OrgChange::create(&self.store, org.id).await?;
        repo::insert_organization(&*change, &org).await?;
        repo::insert_founder(
            &*change,
            &Member {
                organization_id: org.id,
                user_id: actor.user_id.clone(),
                email: email.clone(),
                role: Role::Owner,
                create_time: now,
            },
        )
        .await?;
        let details = json!({ "display_name": org.display_name.as_str() });
        let event = audit(
            &change,
            &actor.user_id,
            "organization.created",
            format!("organization/{}", org.id),
            details,
            now,
        )
        .await?;
        let deltas = vec![
            Delta::OrganizationCreated { display_name: org.display_name.clone() },
            Delta::MemberAdded { user: actor.user_id.clone(), email, role: Role::Owner },
        ];
        // Kept before the commit: a commit that fails after the database took it must not
        // give the creation back.
        taken.keep();
        let token = self.commit(change, declared(actor, event, deltas)).await?;
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
        let me = membership(db, org, actor).await?;
        require(&me, Permission::OrganizationRead)?;
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
    #[instrument(skip_all, fields(actor = %actor.user_id, organization = %org))]
    pub async fn update_organization(
        &self,
        actor: &Actor,
        org: OrganizationId,
        changes: OrganizationChanges,
    ) -> Result<Changed<Organization>, Error> {
        let (tx, _, pass) = begin_on(self, org, actor, Permission::OrganizationUpdate).await?;
        let current =
            repo::find_organization(&*tx, org).await?.ok_or(Error::NotFound("organization"))?;
        let now = Timestamp::now();
        let display_name = changes.display_name.unwrap_or_else(|| current.display_name.clone());
        let ttl = changes.invitation_ttl.unwrap_or(current.invitation_ttl);
        if display_name == current.display_name && ttl == current.invitation_ttl {
            return Ok(Changed { value: current, token: tx.unchanged().await? });
        }
        repo::update_organization(&*tx, &pass, &display_name, ttl, now).await?;
        let details = json!({
            "display_name": display_name.as_str(),
            "invitation_ttl_secs": ttl.as_secs(),
        });
        let event = audit(
            &tx,
            &actor.user_id,
            "organization.updated",
            format!("organization/{org}"),
            details,
            now,
        )
        .await?;
        // A name or a setting: nothing Authorize decides on.
        let token = self.commit(tx, declared(actor, event, Vec::new())).await?;
        let value = Organization { display_name, invitation_ttl: ttl, update_time: now, ..current };
        Ok(Changed { value, token })
    }

    /// Deletes an organization and everything in it.
    #[instrument(skip_all, fields(actor = %actor.user_id, organization = %org))]
    pub async fn delete_organization(
        &self,
        actor: &Actor,
        org: OrganizationId,
    ) -> Result<Changed<()>, Error> {
        let (tx, _, pass) = begin_on(self, org, actor, Permission::OrganizationDelete).await?;
        let now = Timestamp::now();
        repo::delete_organization(&*tx, &pass).await?;
        let event = audit(
            &tx,
            &actor.user_id,
            "organization.deleted",
            format!("organization/{org}"),
            json!({}),
            now,
        )
        .await?;
        let deltas = vec![Delta::OrganizationDeleted];
        let token = self.commit(tx, declared(actor, event, deltas)).await?;
        Ok(Changed { value: (), token })
    }

    // -----------------------------------------------------------------------------------------
    // Members

    /// Lists members.
    #[instrument(skip_all, fields(actor = %actor.user_id, organization = %org))]
    pub async fn list_members(
        &self,
        actor: &Actor,
        org: OrganizationId,
        page: PageRequest,
    ) -> Result<Page<Member>, Error> {
        let db = self.store.reader();
        let me = membership(db, org, actor).await?;
        require(&me, Permission::MembersRead)?;
        let members = repo::list_members(db, org, page.after.as_deref(), page.size + 1).await?;
        Ok(page::finish("members", members, page.size, |m| m.user_id.to_string()))
    }

    /// Returns a member.
    #[instrument(skip_all, fields(actor = %actor.user_id, organization = %org))]
    pub async fn get_member(
        &self,
        actor: &Actor,
        org: OrganizationId,
        user: &UserId,
    ) -> Result<Member, Error> {
        let db = self.store.reader();
        let me = membership(db, org, actor).await?;
        require(&me, Permission::MembersRead)?;
        repo::find_member(db, org, user).await?.ok_or(Error::NotFound("member"))
    }

    /// Changes a member's role (rules 1 and 2).
    #[instrument(skip_all, fields(actor = %actor.user_id, organization = %org, user = %user))]
    pub async fn update_member_role(
        &self,
        actor: &Actor,
        org: OrganizationId,
        user: &UserId,
        role: Role,
    ) -> Result<Changed<Member>, Error> {
        let (tx, me, pass) = begin_on(self, org, actor, Permission::MembersUpdateRole).await?;
        let target = repo::find_member(&*tx, org, user).await?.ok_or(Error::NotFound("member"))?;
        let owners = repo::count_owners(&*tx, org).await?;
        match rules::change_role(me.role, target.role, role, owners)
            .map_err(|r| refused(r, "demote"))?
        {
            RoleChange::Unchanged => {
                return Ok(Changed { value: target, token: tx.unchanged().await? });
            }
            RoleChange::Apply => {}
        }
        let now = Timestamp::now();
        repo::update_member_role(&*tx, &pass, user, role).await?;
        let details = json!({ "old_role": target.role.as_str(), "new_role": role.as_str() });
        let event = audit(
            &tx,
            &actor.user_id,
            "member.role_updated",
            format!("member/{user}"),
            details,
            now,
        )
        .await?;
        let deltas = vec![Delta::RoleChanged { user: user.clone(), old: target.role, new: role }];
        let token = self.commit(tx, declared(actor, event, deltas)).await?;
        Ok(Changed { value: Member { role, ..target }, token })
    }

    /// Removes a member and their grants (rules 1, 2 and 4).
    #[instrument(skip_all, fields(actor = %actor.user_id, organization = %org, user = %user))]
    pub async fn remove_member(
        &self,
        actor: &Actor,
        org: OrganizationId,
        user: &UserId,
    ) -> Result<Changed<()>, Error> {
        let (tx, me, pass) = begin_on(self, org, actor, Permission::MembersRemove).await?;
        let target = repo::find_member(&*tx, org, user).await?.ok_or(Error::NotFound("member"))?;
        let owners = repo::count_owners(&*tx, org).await?;
        rules::remove(me.role, target.role, owners).map_err(|r| refused(r, "remove"))?;
        let now = Timestamp::now();
        let grants = repo::delete_member(&*tx, &pass, user).await?;
        let details = json!({ "role": target.role.as_str() });
        let event =
            audit(&tx, &actor.user_id, "member.removed", format!("member/{user}"), details, now)
                .await?;
        let deltas = removal(user, target.role, grants);
        let token = self.commit(tx, declared(actor, event, deltas)).await?;
        Ok(Changed { value: (), token })
    }

    /// Removes the actor from an organization (rule 2).
    #[instrument(skip_all, fields(actor = %actor.user_id, organization = %org))]
    pub async fn leave_organization(
        &self,
        actor: &Actor,
        org: OrganizationId,
    ) -> Result<Changed<()>, Error> {
        // Every member may leave: organization.read is held by every role.
        let (tx, me, pass) = begin_on(self, org, actor, Permission::OrganizationRead).await?;
        let owners = repo::count_owners(&*tx, org).await?;
        rules::leave(me.role, owners).map_err(|r| refused(r, "leave as"))?;
        let now = Timestamp::now();
        let grants = repo::delete_member(&*tx, &pass, &actor.user_id).await?;
        let details = json!({ "role": me.role.as_str() });
        let event = audit(
            &tx,
            &actor.user_id,
            "member.left",
            format!("member/{}", actor.user_id),
            details,
            now,
        )
        .await?;
        let deltas = removal(&actor.user_id, me.role, grants);
        let token = self.commit(tx, declared(actor, event, deltas)).await?;
        Ok(Changed { value: (), token })
    }

    /// Makes another member Owner and the calling Owner an Admin (rule 3).
    #[instrument(skip_all, fields(actor = %actor.user_id, organization = %org, user = %new_owner))]
    pub async fn transfer_ownership(
        &self,
        actor: &Actor,
        org: OrganizationId,
        new_owner: &UserId,
    ) -> Result<Changed<(Member, Member)>, Error> {
        if *new_owner == actor.user_id {
            return Err(Error::invalid(
                "new_owner_user_id",
                "must name another member than yourself",
            ));
        }
        let (tx, me, pass) =
            begin_on(self, org, actor, Permission::OrganizationTransferOwnership).await?;
        let target =
            repo::find_member(&*tx, org, new_owner).await?.ok_or(Error::NotFound("member"))?;
        let now = Timestamp::now();
        repo::update_member_role(&*tx, &pass, new_owner, Role::Owner).await?;
        repo::update_member_role(&*tx, &pass, &actor.user_id, Role::Admin).await?;
        let details = json!({ "new_owner": new_owner.as_str(), "new_owner_previous_role": target.role.as_str() });
        let event = audit(
            &tx,
            &actor.user_id,
            "organization.ownership_transferred",
            format!("member/{new_owner}"),
            details,
            now,
        )
        .await?;
        let deltas = vec![
            Delta::OwnershipTransferred { from: actor.user_id.clone(), to: new_owner.clone() },
            Delta::RoleChanged { user: new_owner.clone(), old: target.role, new: Role::Owner },
            Delta::RoleChanged { user: actor.user_id.clone(), old: me.role, new: Role::Admin },
        ];
        let token = self.commit(tx, declared(actor, event, deltas)).await?;
        let value = (Member { role: Role::Admin, ..me }, Member { role: Role::Owner, ..target });
        Ok(Changed { value, token })
    }

    // -----------------------------------------------------------------------------------------
    // Workspaces

    /// Creates a workspace.
    #[instrument(skip_all, fields(actor = %actor.user_id, organization = %org))]
    pub async fn create_workspace(
        &self,
        actor: &Actor,
        org: OrganizationId,
        display_name: DisplayName,
    ) -> Result<Changed<Workspace>, Error> {
        let (tx, _, pass) = begin_on(self, org, actor, Permission::WorkspacesCreate).await?;
        let now = Timestamp::now();
        let ws = repo::insert_workspace(&*tx, &pass, WorkspaceId::generate(), &display_name, now)
            .await?;
        let details = json!({ "display_name": display_name.as_str() });
        let event = audit(
            &tx,
            &actor.user_id,
            "workspace.created",
            format!("workspace/{}", ws.id),
            details,
            now,
        )
        .await?;
        let deltas =
            vec![Delta::WorkspaceCreated { workspace: ws.id, display_name: display_name.clone() }];
        let token = self.commit(tx, declared(actor, event, deltas)).await?;
        Ok(Changed { value: ws, token })
    }

    /// Returns a workspace the actor may see.
    #[instrument(skip_all, fields(actor = %actor.user_id, organization = %org, workspace = %id))]
    pub async fn get_workspace(
        &self,
        actor: &Actor,
        org: OrganizationId,
        id: WorkspaceId,
    ) -> Result<Workspace, Error> {
        let db = self.store.reader();
        let me = membership(db, org, actor).await?;
        let ws = repo::find_workspace(db, org, id).await?.ok_or(Error::NotFound("workspace"))?;
        if !rules::sees_every_workspace(me.role)
            && repo::find_grant(db, org, id, &actor.user_id).await?.is_none()
        {
            // Billing and Member users see only workspaces they hold a grant on.
            return Err(Error::NotFound("workspace"));
        }
        Ok(ws)
    }

    /// Lists the workspaces the actor may see.
    #[instrument(skip_all, fields(actor = %actor.user_id, organization = %org))]
    pub async fn list_workspaces(
        &self,
        actor: &Actor,
        org: OrganizationId,
        page: PageRequest,
    ) -> Result<Page<Workspace>, Error> {
        let db = self.store.reader();
        let me = membership(db, org, actor).await?;
        let after = page::uuid_cursor(page.after, WorkspaceId::parse)?;
        let granted_to =
            (!rules::sees_every_workspace(me.role)).then_some((&actor.user_id, Access::Read));
        let items = repo::list_workspaces(db, org, granted_to, after, page.size + 1).await?;
        Ok(page::finish("workspaces", items, page.size, |w| w.id.to_string()))
    }

    /// Renames a workspace.
    #[instrument(skip_all, fields(actor = %actor.user_id, organization = %org, workspace = %id))]
    pub async fn update_workspace(
        &self,
        actor: &Actor,
        org: OrganizationId,
        id: WorkspaceId,
        display_name: DisplayName,
    ) -> Result<Changed<Workspace>, Error> {
        let (tx, _, pass) = begin_on(self, org, actor, Permission::WorkspacesUpdate).await?;
        let ws = repo::find_workspace(&*tx, org, id).await?.ok_or(Error::NotFound("workspace"))?;
        if ws.display_name == display_name {
            return Ok(Changed { value: ws, token: tx.unchanged().await? });
        }
        let now = Timestamp::now();
        repo::update_workspace_name(&*tx, &pass, id, &display_name).await?;
        let details = json!({ "old_display_name": ws.display_name.as_str(), "display_name": display_name.as_str() });
        let event = audit(
            &tx,
            &actor.user_id,
            "workspace.updated",
            format!("workspace/{id}"),
            details,
            now,
        )
        .await?;
        // A name: nothing Authorize decides on.
        let token = self.commit(tx, declared(actor, event, Vec::new())).await?;
        Ok(Changed { value: Workspace { display_name, ..ws }, token })
    }

    /// Deletes a workspace and its grants.
    #[instrument(skip_all, fields(actor = %actor.user_id, organization = %org, workspace = %id))]
    pub async fn delete_workspace(
        &self,
        actor: &Actor,
        org: OrganizationId,
        id: WorkspaceId,
    ) -> Result<Changed<()>, Error> {
        let (tx, _, pass) = begin_on(self, org, actor, Permission::WorkspacesDelete).await?;
        let ws = repo::find_workspace(&*tx, org, id).await?.ok_or(Error::NotFound("workspace"))?;
        let now = Timestamp::now();
        let grants = repo::delete_workspace(&*tx, &pass, id).await?;
        let details = json!({ "display_name": ws.display_name.as_str() });
        let event = audit(
            &tx,
            &actor.user_id,
            "workspace.deleted",
            format!("workspace/{id}"),
            details,
            now,
        )
        .await?;
        // Rule 4: the workspace's grants go with it, each spelled out.
        let deltas = std::iter::once(Delta::WorkspaceDeleted { workspace: id })
            .chain(grants.into_iter().map(|(user, access)| Delta::GrantChanged {
                user,
                workspace: id,
                old: Some(access),
                new: None,
            }))
            .collect();
        let token = self.commit(tx, declared(actor, event, deltas)).await?;
        Ok(Changed { value: (), token })
    }

    /// Grants, changes or (with `None`) removes a member's access to a workspace.
    #[instrument(skip_all, fields(actor = %actor.user_id, organization = %org, workspace = %workspace_id, user = %user))]
    pub async fn set_workspace_access(
        &self,
        actor: &Actor,
        org: OrganizationId,
        workspace_id: WorkspaceId,
        user: &UserId,
        access: Option<Access>,
    ) -> Result<Changed<Grant>, Error> {
        let (tx, _, pass) = begin_on(self, org, actor, Permission::WorkspaceAccessManage).await?;
        // The workspace, the member and their current grant, in one statement.
        let facts = repo::authorization_facts(&*tx, org, user.into(), Some(workspace_id)).await?;
        let previous = match facts {
            (_, WorkspaceFacts::Missing | WorkspaceFacts::NotApplicable) => {
                return Err(Error::NotFound("workspace"));
            }
            (None, _) => return Err(Error::NotFound("member")),
            // Owners hold WRITE on every workspace whatever their grants say; a grant to one
            // would change nothing now and surface only if they stopped being an Owner.
            (Some(Role::Owner), WorkspaceFacts::Present(_)) if access.is_some() => {
                return Err(Error::FailedPrecondition(
                    "the member is an Owner, who holds WRITE on every workspace; grants apply to \
                     Admin, Billing and Member users"
                        .to_owned(),
                ));
            }
            (Some(_), WorkspaceFacts::Present(access)) => access,
        };
        let grant = Grant { organization_id: org, workspace_id, user_id: user.clone(), access };
        if previous == access {
            return Ok(Changed { value: grant, token: tx.unchanged().await? });
        }
        let now = Timestamp::now();
        let action = match access {
            Some(access) => {
                repo::upsert_grant(&*tx, &pass, workspace_id, user, access).await?;
                "workspace_access.set"
            }
            None => {
                repo::delete_grant(&*tx, &pass, workspace_id, user).await?;
                "workspace_access.removed"
            }
        };
        let details = json!({
            "workspace_id": workspace_id.to_string(),
            "old_access": previous.map(Access::as_str),
            "new_access": access.map(Access::as_str),
        });
        let event =
            audit(&tx, &actor.user_id, action, format!("member/{user}"), details, now).await?;
        let deltas = vec![Delta::GrantChanged {
            user: user.clone(),
            workspace: workspace_id,
            old: previous,
            new: access,
        }];
        let token = self.commit(tx, declared(actor, event, deltas)).await?;
        Ok(Changed { value: grant, token })
    }

    /// Lists grants; Billing and Member users see only their own.
    #[instrument(skip_all, fields(actor = %actor.user_id, organization = %org))]
    pub async fn list_workspace_access(
        &self,
        actor: &Actor,
        org: OrganizationId,
        workspace_id: Option<WorkspaceId>,
        user: Option<UserId>,
        page: PageRequest,
    ) -> Result<Page<Grant>, Error> {
        let db = self.store.reader();
        let me = membership(db, org, actor).await?;
        let user = if rules::sees_every_workspace(me.role) {
            user
        } else {
            match user {
                Some(other) if other != actor.user_id => {
                    return Err(denied("you can list only your own workspace access"));
                }
                _ => Some(actor.user_id.clone()),
            }
        };
        let after = match page.after {
            None => None,
            Some(text) => {
                let forged = || {
                    Error::invalid(
                        "page_token",
                        "is not a token returned by this list; start again without it",
                    )
                };
                let (ws, user) = text.split_once('/').ok_or_else(forged)?;
                Some((WorkspaceId::parse(ws).map_err(|_| forged())?, user.to_owned()))
            }
        };
        // A workspace that does not exist is not found; so is one a Billing or Member user holds
        // no grant on, as in GetWorkspace, whether it exists or not.
        if let Some(id) = workspace_id {
            let visible = if rules::sees_every_workspace(me.role) {
                repo::find_workspace(db, org, id).await?.is_some()
            } else {
                repo::find_grant(db, org, id, &actor.user_id).await?.is_some()
            };
            if !visible {
                return Err(Error::NotFound("workspace"));
            }
        }
        let grants =
            repo::list_grants(db, org, workspace_id, user.as_ref(), after, page.size + 1).await?;
        Ok(page::finish("grants", grants, page.size, |g| {
            format!("{}/{}", g.workspace_id, g.user_id)
        }))
    }

    // -----------------------------------------------------------------------------------------
    // Invitations

    /// Invites an email address and queues the email.
    #[instrument(skip_all, fields(actor = %actor.user_id, organization = %org))]
    pub async fn create_invitation(
        &self,
        actor: &Actor,
        org: OrganizationId,
        new: NewInvitation,
    ) -> Result<Changed<Invitation>, Error> {
        require_verified_email(actor, "invite")?;
        let (tx, me, pass) = begin_on(self, org, actor, Permission::MembersInvite).await?;
        lifecycle::may_invite(Some(me.role), new.role).map_err(refuse_inviting)?;
        if new.role == Role::Owner && !new.workspace_grants.is_empty() {
            return Err(Error::invalid(
                "workspace_grants",
                "must be empty for an Owner, who holds WRITE on every workspace",
            ));
        }
        // Given back unless the invitation is committed.
        let taken = self.limits.take_invitation(&actor.user_id, org)?;
        for (i, (workspace_id, _)) in new.workspace_grants.iter().enumerate() {
            if repo::find_workspace(&*tx, org, *workspace_id).await?.is_none() {
                return Err(Error::invalid(
                    format!("workspace_grants[{i}].workspace_id"),
                    "names no workspace of this organization",
                ));
            }
        }
        if repo::find_member_by_email(&*tx, org, &new.email).await?.is_some() {
            return Err(Error::AlreadyExists(
                "this email belongs to a member of the organization already".to_owned(),
            ));
        }
        let now = Timestamp::now();
        if let Some(pending) = repo::find_pending_invitation_for(&*tx, org, &new.email).await? {
            if pending.state_at(now) == InvitationState::Pending {
                return Err(repo::pending_exists());
            }
            // Expired without a sweep: record it, so the new invitation is the pending one.
            repo::update_invitation_state(&*tx, org, pending.id, InvitationState::Expired, now)
                .await?;
        }
        let organization =
            repo::find_organization(&*tx, org).await?.ok_or(Error::NotFound("organization"))?;
        let invitation = Invitation {
            id: InvitationId::generate(),
            organization_id: org,
            email: new.email,
            role: new.role,
            stored_state: InvitationState::Pending,
            workspace_grants: new.workspace_grants,
            inviter_user_id: actor.user_id.clone(),
            create_time: now,
            expire_time: now.plus(organization.invitation_ttl.duration()),
            send_count: 1,
            delivery_state: DeliveryState::Queued,
            last_delivery_error: None,
        };
        // No token yet: the worker mints it when it sends the email, so none is ever stored.
        repo::insert_invitation(&*tx, &pass, &invitation).await?;
        repo::insert_outbox(&*tx, &invitation, now).await?;
        let details = json!({
            "email": invitation.email.as_str(),
            "role": invitation.role.as_str(),
            "workspace_grants": invitation.workspace_grants.len(),
        });
        let event = audit(
            &tx,
            &actor.user_id,
            "invitation.created",
            format!("invitation/{}", invitation.id),
            details,
            now,
        )
        .await?;
        // Nothing Authorize decides on until it is accepted.
        // Kept before the commit: one whose outcome is unknown may still send an email.
        taken.keep();
        let token = self.commit(tx, declared(actor, event, Vec::new())).await?;
        self.outbox_signal.notify_one();
        tracing::info!(invitation = %invitation.id, invitee = %invitation.email.redacted(), "invitation created");
        Ok(Changed { value: invitation, token })
    }

    /// Commits a change with what it did: its log row (and, on PostgreSQL, the notification
    /// other replicas follow) travels in the transaction, and this replica's index holds the
    /// change before the RPC returns (rule 4).
    async fn commit(&self, tx: OrgChange, declared: Declared) -> Result<ChangeToken, Error> {
        let org = tx.organization();
        // A call cut off (by its deadline, or a client going away) may stop anywhere below,
        // maybe after the commit: the organization is then dropped rather than left behind.
        let unsettled = ForgetOnDrop { index: &self.index, org };
        // Whether a failed commit committed is unknown: the guard forgets the organization.
        let record = tx.commit(declared).await?;
        self.index.committed(&record).await;
        std::mem::forget(unsettled);
        match record.position {
            Some(position) => {
                self.log_head.send_if_modified(|head| {
                    let newer = position > *head;
                    if newer {
                        *head = position;
                    }
                    newer
                });
            }
            None => self.unplaced.notify_one(),
        }
        Ok(record.token())
    }

    /// Lists invitations, optionally by state.
    #[instrument(skip_all, fields(actor = %actor.user_id, organization = %org))]
    pub async fn list_invitations(
        &self,
        actor: &Actor,
        org: OrganizationId,
        state: Option<InvitationState>,
        page: PageRequest,
    ) -> Result<Page<Invitation>, Error> {
        let db = self.store.reader();
        let me = membership(db, org, actor).await?;
        require(&me, Permission::InvitationsRead)?;
        let after = page::uuid_cursor(page.after, InvitationId::parse)?;
        let items =
            repo::list_invitations(db, org, state, Timestamp::now(), after, page.size + 1).await?;
        Ok(page::finish("invitations", items, page.size, |i| i.id.to_string()))
    }

    /// Issues a fresh expiry and email (with a fresh token) for a PENDING or EXPIRED
    /// invitation; the token already mailed stops working at once, and the actor becomes the
    /// inviter.
    #[instrument(skip_all, fields(actor = %actor.user_id, organization = %org, invitation = %id))]
    pub async fn resend_invitation(
        &self,
        actor: &Actor,
        org: OrganizationId,
        id: InvitationId,
    ) -> Result<Changed<Invitation>, Error> {
        require_verified_email(actor, "invite")?;
        let (tx, me, pass) = begin_on(self, org, actor, Permission::MembersInvite).await?;
        let invitation =
            repo::find_invitation(&*tx, org, id).await?.ok_or(Error::NotFound("invitation"))?;
        lifecycle::may_invite(Some(me.role), invitation.role).map_err(|refusal| match refusal {
            InviteRefusal::OwnerRoleNeedsOwner => {
                denied("only an Owner can resend an invitation to become Owner")
            }
            other => refuse_inviting(other),
        })?;
        let now = Timestamp::now();
        if let Transition::Refuse(why) = lifecycle::resend(invitation.state_at(now)) {
            return Err(Error::FailedPrecondition(why.to_owned()));
        }
        let taken = self.limits.take_invitation(&actor.user_id, org)?;
        if repo::find_member_by_email(&*tx, org, &invitation.email).await?.is_some() {
            return Err(Error::FailedPrecondition(
                "this email belongs to a member of the organization already".to_owned(),
            ));
        }
        let organization =
            repo::find_organization(&*tx, org).await?.ok_or(Error::NotFound("organization"))?;
        let expire_time = now.plus(organization.invitation_ttl.duration());
        repo::update_invitation_for_resend(&*tx, &pass, id, &actor.user_id, expire_time, now)
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
        let details = json!({ "send_count": resent.send_count });
        let event = audit(
            &tx,
            &actor.user_id,
            "invitation.resent",
            format!("invitation/{id}"),
            details,
            now,
        )
        .await?;
        // Kept before the commit: one whose outcome is unknown may still send an email.
        taken.keep();
        let token = self.commit(tx, declared(actor, event, Vec::new())).await?;
        self.outbox_signal.notify_one();
        Ok(Changed { value: resent, token })
    }

    /// Revokes a PENDING or EXPIRED invitation; revoking again succeeds without a change. An
    /// email not yet sent is never sent.
    #[instrument(skip_all, fields(actor = %actor.user_id, organization = %org, invitation = %id))]
    pub async fn revoke_invitation(
        &self,
        actor: &Actor,
        org: OrganizationId,
        id: InvitationId,
    ) -> Result<Changed<Invitation>, Error> {
        let (tx, _, _pass) = begin_on(self, org, actor, Permission::MembersInvite).await?;
        let invitation =
            repo::find_invitation(&*tx, org, id).await?.ok_or(Error::NotFound("invitation"))?;
        let now = Timestamp::now();
        match lifecycle::revoke(invitation.state_at(now)) {
            Transition::Refuse(why) => Err(Error::FailedPrecondition(why.to_owned())),
            Transition::NoOp => Ok(Changed { value: invitation, token: tx.unchanged().await? }),
            Transition::Apply => {
                repo::update_invitation_state(&*tx, org, id, InvitationState::Revoked, now).await?;
                let why = "not sent: the invitation was revoked";
                repo::cancel_outbox_of(&*tx, org, id, why).await?;
                let event = audit(
                    &tx,
                    &actor.user_id,
                    "invitation.revoked",
                    format!("invitation/{id}"),
                    json!({}),
                    now,
                )
                .await?;
                let token = self.commit(tx, declared(actor, event, Vec::new())).await?;
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
        presented: &str,
    ) -> Result<Changed<Member>, Error> {
        let email = caller_email(actor, "accept an invitation")?;
        require_verified_email(actor, "accept an invitation")?;
        if !token::is_well_formed(presented) {
            return Err(Error::invalid(
                "token",
                "is not an invitation token; copy it whole from the email",
            ));
        }
        let presented_hash = token::hash(presented);
        let Some((found, _)) =
            repo::find_invitation_by_token_hash(self.store.reader(), &presented_hash).await?
        else {
            return Err(Error::NotFound("invitation"));
        };
        let org = found.organization_id;
        let Some(tx) = OrgChange::begin(&self.store, org).await? else {
            return Err(Error::NotFound("invitation"));
        };
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
            return Err(denied("this invitation was sent to another email address"));
        }
        if repo::find_member(&*tx, org, &actor.user_id).await?.is_some() {
            return Err(Error::AlreadyExists(
                "you are already a member of this organization".to_owned(),
            ));
        }
        let now = Timestamp::now();
        if let Transition::Refuse(why) = lifecycle::accept(invitation.state_at(now)) {
            return Err(Error::FailedPrecondition(why.to_owned()));
        }
        if repo::find_member_by_email(&*tx, org, &email).await?.is_some() {
            return Err(Error::AlreadyExists(
                "another account with this email address is already a member of this organization"
                    .to_owned(),
            ));
        }
        // The invitation grants no more than its inviter still could (rule 1, as of now).
        let inviter = repo::find_member(&*tx, org, &invitation.inviter_user_id).await?;
        lifecycle::may_invite(inviter.map(|m| m.role), invitation.role)
            .map_err(|refusal| Error::FailedPrecondition(void_invitation(refusal).to_owned()))?;
        let member = Member {
            organization_id: org,
            user_id: actor.user_id.clone(),
            email,
            role: invitation.role,
            create_time: now,
        };
        repo::insert_invited_member(&*tx, &invitation, &member).await?;
        repo::insert_invited_grants(&*tx, &invitation, &actor.user_id).await?;
        repo::update_invitation_state(&*tx, org, invitation.id, InvitationState::Accepted, now)
            .await?;
        repo::cancel_outbox_of(&*tx, org, invitation.id, "not sent: the invitation was accepted")
            .await?;
        let details =
            json!({ "invitation_id": invitation.id.to_string(), "role": invitation.role.as_str() });
        let event = audit(
            &tx,
            &actor.user_id,
            "invitation.accepted",
            format!("member/{}", actor.user_id),
            details,
            now,
        )
        .await?;
        let added = Delta::MemberAdded {
            user: actor.user_id.clone(),
            email: member.email.clone(),
            role: member.role,
        };
        let deltas = std::iter::once(added)
            .chain(invitation.workspace_grants.iter().map(|(workspace, access)| {
                Delta::GrantChanged {
                    user: actor.user_id.clone(),
                    workspace: *workspace,
                    old: None,
                    new: Some(*access),
                }
            }))
            .collect();
        let token = self.commit(tx, declared(actor, event, deltas)).await?;
        Ok(Changed { value: member, token })
    }

    // -----------------------------------------------------------------------------------------
    // Audit

    /// Lists audit events, newest first.
    #[instrument(skip_all, fields(actor = %actor.user_id, organization = %org))]
    pub async fn list_audit_events(
        &self,
        actor: &Actor,
        org: OrganizationId,
        page: PageRequest,
    ) -> Result<Page<AuditEvent>, Error> {
        let db = self.store.reader();
        let me = membership(db, org, actor).await?;
        require(&me, Permission::AuditRead)?;
        let before = page::uuid_cursor(page.after, AuditEventId::parse)?;
        let events = repo::list_audit(db, org, before, page.size + 1).await?;
        Ok(page::finish("audit", events, page.size, |e| e.id.to_string()))
    }
}

/// Drops an organization's index unless defused with `mem::forget`.
struct ForgetOnDrop<'a> {
    index: &'a AuthzIndex,
    org: OrganizationId,
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        self.index.forget(self.org);
    }
}

/// PERMISSION_DENIED for an inviter who may not offer the role (rule 1).
fn refuse_inviting(refusal: InviteRefusal) -> Error {
    match refusal {
        InviteRefusal::OwnerRoleNeedsOwner => denied("only an Owner can invite an Owner"),
        // Unreachable past `begin_on`, which checked membership and members.invite.
        InviteRefusal::NotAMember | InviteRefusal::CannotInvite => {
            denied("your role does not include the permission members.invite")
        }
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

/// What removing a member does: the removal, then each grant it took with it (rule 4).
fn removal(user: &UserId, role: Role, grants: Vec<(WorkspaceId, Access)>) -> Vec<Delta> {
    std::iter::once(Delta::MemberRemoved { user: user.clone(), role })
        .chain(grants.into_iter().map(|(workspace, access)| Delta::GrantChanged {
            user: user.clone(),
            workspace,
            old: Some(access),
            new: None,
        }))
        .collect()
}

/// The error for a refusal by the rules about roles; `verb` says what the last Owner cannot do.
fn refused(refusal: Refusal, verb: &str) -> Error {
    match refusal {
        Refusal::OwnerRoleNeedsOwner => denied("only an Owner can change an Owner's role"),
        Refusal::MakingOwnerNeedsOwner => denied("only an Owner can make a member Owner"),
        Refusal::RemovingOwnerNeedsOwner => denied("only an Owner can remove an Owner"),
        Refusal::LastOwner => Error::FailedPrecondition(format!(
            "cannot {verb} the last Owner; make another member Owner first"
        )),
    }
}
