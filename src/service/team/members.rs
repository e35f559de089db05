//! Members: their roles, removal, leaving and the transfer of ownership (rules 1 to 4).

use serde_json::json;
use tracing::instrument;

use super::change::{Audited, require};
use super::{membership, owner_only};
use crate::domain::capability as cap;
use crate::domain::rules::{self, Refusal, RoleChange};
use crate::domain::{
    Access, AuditAction, AuditTarget, Delta, Member, OrganizationId, Role, Timestamp, UserId,
    WorkspaceId,
};
use crate::error::{Error, ErrorReason};
use crate::service::page::{self, Page, PageRequest};
use crate::service::{Actor, Changed, Services};
use crate::storage::repo;

/// What ListMembers asks, every field checked.
#[derive(Debug)]
pub struct ListMembers {
    pub organization_id: OrganizationId,
    pub page: PageRequest,
}

/// One member of an organization, as GetMember and RemoveMember name it.
#[derive(Debug)]
pub struct MemberRef {
    pub organization_id: OrganizationId,
    pub user_id: UserId,
}

/// What UpdateMemberRole asks, every field checked.
#[derive(Debug)]
pub struct UpdateMemberRole {
    pub organization_id: OrganizationId,
    pub user_id: UserId,
    pub role: Role,
}

/// What TransferOwnership asks, every field checked.
#[derive(Debug)]
pub struct TransferOwnership {
    pub organization_id: OrganizationId,
    pub new_owner: UserId,
}

impl Services {
    /// Lists members.
    #[instrument(skip_all, fields(actor = %actor.user_id, organization = %command.organization_id))]
    pub async fn list_members(
        &self,
        actor: &Actor,
        command: ListMembers,
    ) -> Result<Page<Member>, Error> {
        let (org, page) = (command.organization_id, command.page);
        let db = self.store.reader();
        require::<cap::MembersRead>(&membership(db, org, actor).await?)?;
        let members = repo::list_members(db, org, page.after.as_deref(), page.size + 1).await?;
        Ok(page::finish("members", members, page.size, |m| m.user_id.to_string()))
    }

    /// Returns a member.
    #[instrument(skip_all, fields(actor = %actor.user_id, organization = %command.organization_id))]
    pub async fn get_member(&self, actor: &Actor, command: MemberRef) -> Result<Member, Error> {
        let org = command.organization_id;
        let db = self.store.reader();
        require::<cap::MembersRead>(&membership(db, org, actor).await?)?;
        repo::find_member(db, org, &command.user_id).await?.ok_or(Error::NotFound("member"))
    }

    /// Changes a member's role (rules 1 and 2).
    #[instrument(skip_all, fields(actor = %actor.user_id, organization = %command.organization_id, user = %command.user_id))]
    pub async fn update_member_role(
        &self,
        actor: &Actor,
        command: UpdateMemberRole,
    ) -> Result<Changed<Member>, Error> {
        let UpdateMemberRole { organization_id: org, user_id: user, role } = command;
        let checked = self.begin::<cap::MembersUpdateRole>(org, actor).await?;
        let tx = checked.tx;
        let target = repo::find_member(&*tx, org, &user).await?.ok_or(Error::NotFound("member"))?;
        let owners = repo::count_owners(&*tx, org).await?;
        match rules::change_role(checked.me.role, target.role, role, owners)
            .map_err(|r| refused(r, "demote"))?
        {
            RoleChange::Unchanged => {
                return Ok(Changed { value: target, token: self.unchanged(tx, actor).await? });
            }
            RoleChange::Apply => {}
        }
        let now = Timestamp::now();
        repo::update_member_role(&*tx, &checked.pass, &user, role).await?;
        let audited = Audited {
            action: AuditAction::MemberRoleUpdated,
            target: AuditTarget::Member(user.clone()),
            details: json!({ "old_role": target.role.as_str(), "new_role": role.as_str() }),
        };
        let deltas = vec![Delta::RoleChanged { user, old: target.role, new: role }];
        let token = self.finish(tx, actor, audited, deltas, now).await?;
        Ok(Changed { value: Member { role, ..target }, token })
    }

    /// Removes a member and their grants (rules 1, 2 and 4).
    #[instrument(skip_all, fields(actor = %actor.user_id, organization = %command.organization_id, user = %command.user_id))]
    pub async fn remove_member(
        &self,
        actor: &Actor,
        command: MemberRef,
    ) -> Result<Changed<()>, Error> {
        let MemberRef { organization_id: org, user_id: user } = command;
        let checked = self.begin::<cap::MembersRemove>(org, actor).await?;
        let tx = checked.tx;
        let target = repo::find_member(&*tx, org, &user).await?.ok_or(Error::NotFound("member"))?;
        let owners = repo::count_owners(&*tx, org).await?;
        rules::remove(checked.me.role, target.role, owners).map_err(|r| refused(r, "remove"))?;
        let now = Timestamp::now();
        let grants = repo::delete_member(&*tx, &checked.pass, &user).await?;
        let audited = Audited {
            action: AuditAction::MemberRemoved,
            target: AuditTarget::Member(user.clone()),
            details: json!({ "role": target.role.as_str() }),
        };
        let deltas = removal(&user, target.role, grants);
        let token = self.finish(tx, actor, audited, deltas, now).await?;
        Ok(Changed { value: (), token })
    }

    /// Removes the actor from an organization (rule 2).
    #[instrument(skip_all, fields(actor = %actor.user_id, organization = %org))]
    pub async fn leave_organization(
        &self,
        actor: &Actor,
        org: OrganizationId,
    ) -> Result<Changed<()>, Error> {
        let checked = self.begin::<cap::Membership>(org, actor).await?;
        let (tx, me) = (checked.tx, checked.me);
        let owners = repo::count_owners(&*tx, org).await?;
        rules::leave(me.role, owners).map_err(|r| refused(r, "leave as"))?;
        let now = Timestamp::now();
        let grants = repo::delete_own_membership(&*tx, &checked.pass).await?;
        let audited = Audited {
            action: AuditAction::MemberLeft,
            target: AuditTarget::Member(actor.user_id.clone()),
            details: json!({ "role": me.role.as_str() }),
        };
        let deltas = removal(&actor.user_id, me.role, grants);
        let token = self.finish(tx, actor, audited, deltas, now).await?;
        Ok(Changed { value: (), token })
    }

    /// Makes another member Owner and the calling Owner an Admin (rule 3); returns the previous
    /// Owner, then the new one.
    #[instrument(skip_all, fields(actor = %actor.user_id, organization = %command.organization_id, user = %command.new_owner))]
    pub async fn transfer_ownership(
        &self,
        actor: &Actor,
        command: TransferOwnership,
    ) -> Result<Changed<(Member, Member)>, Error> {
        let TransferOwnership { organization_id: org, new_owner } = command;
        if new_owner == actor.user_id {
            return Err(Error::invalid(
                "new_owner_user_id",
                "must name another member than yourself",
            ));
        }
        let checked = self.begin::<cap::OrganizationTransferOwnership>(org, actor).await?;
        let (tx, me) = (checked.tx, checked.me);
        let target =
            repo::find_member(&*tx, org, &new_owner).await?.ok_or(Error::NotFound("member"))?;
        let now = Timestamp::now();
        repo::update_ownership(&*tx, &checked.pass, &new_owner).await?;
        let audited = Audited {
            action: AuditAction::OwnershipTransferred,
            target: AuditTarget::Member(new_owner.clone()),
            details: json!({
                "new_owner": new_owner.as_str(),
                "new_owner_previous_role": target.role.as_str(),
            }),
        };
        let deltas = vec![
            Delta::OwnershipTransferred { from: actor.user_id.clone(), to: new_owner.clone() },
            Delta::RoleChanged { user: new_owner, old: target.role, new: Role::Owner },
            Delta::RoleChanged { user: actor.user_id.clone(), old: me.role, new: Role::Admin },
        ];
        let token = self.finish(tx, actor, audited, deltas, now).await?;
        let value = (Member { role: Role::Admin, ..me }, Member { role: Role::Owner, ..target });
        Ok(Changed { value, token })
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
            expire_time: None,
        }))
        .collect()
}

/// The error for a refusal by the rules about roles; `verb` says what the last Owner cannot do.
fn refused(refusal: Refusal, verb: &str) -> Error {
    match refusal {
        Refusal::OwnerRoleNeedsOwner => owner_only("only an Owner can change an Owner's role"),
        Refusal::MakingOwnerNeedsOwner => owner_only("only an Owner can make a member Owner"),
        Refusal::RemovingOwnerNeedsOwner => owner_only("only an Owner can remove an Owner"),
        Refusal::LastOwner => Error::refused(
            ErrorReason::LastOwner,
            format!("cannot {verb} the last Owner; make another member Owner first"),
        ),
    }
}
