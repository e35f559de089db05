//! The database as the Authorize index reads it (see [`crate::index::Source`]).

use async_trait::async_trait;

use super::{Store, changelog, repo};
use crate::domain::{ChangeRecord, OrganizationId, Revision, UserIdRef, WorkspaceId};
use crate::error::Error;
use crate::index::{Facts, Snapshot, Source};

#[async_trait]
impl Source for Store {
    async fn load(&self, org: OrganizationId) -> Result<Option<Snapshot>, Error> {
        repo::load_organization_snapshot(self, org).await
    }

    async fn changes(
        &self,
        org: OrganizationId,
        after: Revision,
    ) -> Result<Option<Vec<ChangeRecord>>, Error> {
        changelog::read_organization_if_exists(self.reader(), org, after).await
    }

    async fn facts(
        &self,
        org: OrganizationId,
        user: UserIdRef<'_>,
        workspace: Option<WorkspaceId>,
    ) -> Result<Facts, Error> {
        repo::authorization_facts(self.reader(), org, user, workspace).await
    }
}
