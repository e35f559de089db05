//! WatchService handlers: validate, start the stream, convert what it yields. Callers are
//! services, identified before a handler runs (see [`identify`]).

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};

use super::convert;
use super::identify;
use crate::domain::change::TokenError;
use crate::domain::{ChangeRecord, ChangeToken, Delta, Timestamp};
use crate::error::{Error, ErrorReason, Violations};
use crate::pb::{self, access_delta::Delta as PbDelta, watch_service_server::WatchService};
use crate::service::watch::{
    Ended, Hub, MAX_SNAPSHOT_PAGE, Pruned, Refused, SnapshotPage, Update, WatchFilter,
};

/// ErrorInfo metadata key: the token to resume from.
pub const LAST_TOKEN: &str = "last_token";
/// ErrorInfo metadata key: the oldest token the change log still serves.
pub const OLDEST_TOKEN: &str = "oldest_token";

/// Serves WatchService over the process's change log [`Hub`].
pub struct WatchApi {
    hub: Arc<Hub>,
}

impl WatchApi {
    /// Handlers over the hub.
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }
}

type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl WatchService for WatchApi {
    type WatchStream = Streamed<pb::WatchResponse>;
    type SnapshotStream = Streamed<pb::SnapshotResponse>;

    async fn watch(
        &self,
        mut request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        identify::service(&mut request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let start = start_token(&mut v, &req.start_token);
        let organization = if req.organization_id.is_empty() {
            Some(None)
        } else {
            convert::organization_id(&mut v, "organization_id", &req.organization_id).map(Some)
        };
        let user = if req.user_id.is_empty() {
            Some(None)
        } else {
            convert::user_id(&mut v, "user_id", &req.user_id).map(Some)
        };
        let workspace = convert::optional_workspace_id(&mut v, "workspace_id", &req.workspace_id);
        let (Some(start), Some(organization), Some(user), Some(workspace)) =
            (start, organization, user, workspace)
        else {
            return Err(v.into_error().into());
        };
        if let Some(org) = organization {
            tracing::Span::current().record("organization_id", tracing::field::display(org));
        }
        let filter = WatchFilter { start, organization, user, workspace };
        let outlet = self.hub.watch(filter).await.map_err(refused)?;
        let stream = outlet.map(|item| match item {
            Ok(update) => Ok(watch_response(update)),
            Err(ended) => Err(ended_status(ended)),
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn snapshot(
        &self,
        mut request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        identify::service(&mut request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let org = convert::organization_id(&mut v, "organization_id", &req.organization_id);
        let page_size = match usize::try_from(req.page_size) {
            Ok(0) => Some(MAX_SNAPSHOT_PAGE),
            Ok(size) if size <= MAX_SNAPSHOT_PAGE => Some(size),
            _ => {
                v.add("page_size", "must be from 1 to 1000, or 0 for 1000");
                None
            }
        };
        let (Some(org), Some(page_size)) = (org, page_size) else {
            return Err(v.into_error().into());
        };
        tracing::Span::current().record("organization_id", tracing::field::display(org));
        let outlet = self.hub.snapshot(org, page_size).await.map_err(refused)?;
        let stream = outlet.map(|item| match item {
            Ok(page) => Ok(snapshot_response(page)),
            Err(ended) => Err(ended_status(ended)),
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Reads `start_token`: empty for now.
fn start_token(v: &mut Violations, text: &str) -> Option<Option<ChangeToken>> {
    if text.is_empty() {
        return Some(None);
    }
    let problem = match ChangeToken::parse(text) {
        Ok(token) => return Some(Some(token)),
        Err(TokenError::Legacy) => {
            "is a token of an earlier release, which names a time rather than a place in the \
             change log; use a token from a WatchResponse, a SnapshotResponse or a TeamService \
             change"
        }
        Err(TokenError::Malformed) => {
            "is not a token Roster issued: use a token from a WatchResponse, a SnapshotResponse \
             or a TeamService change, or leave it empty to start from now"
        }
    };
    v.add("start_token", problem);
    None
}

fn refused(refused: Refused) -> Status {
    match refused {
        Refused::Error(err) => Status::from(err),
        Refused::Pruned(pruned) => {
            pruned_status(&pruned, "start_token is older than the change log")
        }
    }
}

/// OUT_OF_RANGE, saying how far back the log goes and which token still works.
fn pruned_status(pruned: &Pruned, what: &str) -> Status {
    let oldest = ChangeToken { organization: None, position: Some(pruned.pruned_through) };
    let since = match pruned.oldest_commit {
        Some(time) => format!("changes committed since {}", rfc3339(time)),
        None => "no changes yet".to_owned(),
    };
    let retention = crate::config::format_duration(pruned.retention);
    let message = format!(
        "{what}: changes are kept for {retention}, and the log now holds {since} (positions after \
         {}); take a Snapshot and watch from its token, or start from the oldest token still \
         served, {}, knowing that what came before it is lost to this stream",
        pruned.pruned_through.0,
        oldest.encode()
    );
    let refused = Error::refused(ErrorReason::ChangeLogPruned, message)
        .with(OLDEST_TOKEN, oldest.encode())
        .with("retention_seconds", pruned.retention.as_secs().to_string());
    Status::from(refused)
}

/// A stream's end, with the token to resume from in the message and in an ErrorInfo.
fn ended_status(ended: Ended) -> Status {
    let with_token = |reason: ErrorReason, message: String, last: ChangeToken| {
        let token = last.encode();
        let message = format!("{message}; resume with start_token {token}");
        Status::from(Error::refused(reason, message).with(LAST_TOKEN, token))
    };
    match ended {
        Ended::FellBehind { last, buffer } => with_token(
            ErrorReason::WatchConsumerTooSlow,
            format!(
                "the stream's consumer fell behind: more than {buffer} changes were waiting for \
                 it to read them"
            ),
            last,
        ),
        Ended::Pruned(pruned) => pruned_status(
            &pruned,
            "retention removed changes this stream had yet to send (it fell behind by the whole \
             retention)",
        ),
        Ended::Stopping { last: Some(last) } => with_token(
            ErrorReason::ServerStopping,
            "the server is shutting down; another replica serves the same stream".to_owned(),
            last,
        ),
        Ended::Stopping { last: None } => super::status::refused(
            ErrorReason::ServerStopping,
            "the server is shutting down; take the snapshot again",
        ),
        // The failure's own reason, with the token to resume from.
        Ended::Failed { last, error } => {
            let token = last.encode();
            let status = Status::from(error.with(LAST_TOKEN, token.clone()));
            let message = format!("{}; resume with start_token {token}", status.message());
            Status::with_details(status.code(), message, status.details().to_vec().into())
        }
    }
}

fn rfc3339(time: Timestamp) -> String {
    chrono::DateTime::from_timestamp_micros(time.as_micros())
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| time.as_micros().to_string())
}

fn watch_response(update: Update) -> pb::WatchResponse {
    pb::WatchResponse {
        changes: update.changes.into_iter().map(|c| change(Arc::unwrap_or_clone(c))).collect(),
        token: update.token.encode(),
    }
}

/// A change to the wire.
pub fn change(record: ChangeRecord) -> pb::Change {
    pb::Change {
        consistency_token: record.token().encode(),
        organization_id: record.organization_id.to_string(),
        revision: i64::try_from(record.revision.0).unwrap_or(i64::MAX),
        commit_time: Some(convert::timestamp(record.commit_time)),
        actor_user_id: record.actor.map(|a| a.to_string()).unwrap_or_default(),
        audit_event_id: record.audit_event_id.map(|id| id.to_string()).unwrap_or_default(),
        deltas: record
            .deltas
            .into_iter()
            .map(|d| pb::AccessDelta { delta: Some(delta(d)) })
            .collect(),
    }
}

fn delta(delta: Delta) -> PbDelta {
    let role = |r| convert::role_pb(r) as i32;
    let access = |a| convert::access_pb(a) as i32;
    match delta {
        Delta::OrganizationCreated { display_name } => {
            PbDelta::OrganizationCreated(pb::OrganizationCreated {
                display_name: display_name.as_str().to_owned(),
            })
        }
        Delta::OrganizationDeleted => PbDelta::OrganizationDeleted(pb::OrganizationDeleted {}),
        Delta::MemberAdded { user, email, role: r } => PbDelta::MemberAdded(pb::MemberAdded {
            user_id: user.to_string(),
            email: email.as_str().to_owned(),
            role: role(r),
        }),
        Delta::MemberRemoved { user, role: r } => {
            PbDelta::MemberRemoved(pb::MemberRemoved { user_id: user.to_string(), role: role(r) })
        }
        Delta::RoleChanged { user, old, new } => {
            PbDelta::MemberRoleChanged(pb::MemberRoleChanged {
                user_id: user.to_string(),
                old_role: role(old),
                new_role: role(new),
            })
        }
        Delta::GrantChanged { user, workspace, old, new, expire_time } => {
            PbDelta::GrantChanged(pb::GrantChanged {
                user_id: user.to_string(),
                workspace_id: workspace.to_string(),
                old_access: access(old),
                new_access: access(new),
                new_expire_time: expire_time.map(convert::timestamp),
            })
        }
        Delta::GrantExpired { user, workspace, access: held, expire_time } => {
            PbDelta::GrantExpired(pb::GrantExpired {
                user_id: user.to_string(),
                workspace_id: workspace.to_string(),
                access: access(Some(held)),
                expire_time: Some(convert::timestamp(expire_time)),
            })
        }
        Delta::WorkspaceCreated { workspace, display_name } => {
            PbDelta::WorkspaceCreated(pb::WorkspaceCreated {
                workspace_id: workspace.to_string(),
                display_name: display_name.as_str().to_owned(),
            })
        }
        Delta::WorkspaceDeleted { workspace } => {
            PbDelta::WorkspaceDeleted(pb::WorkspaceDeleted { workspace_id: workspace.to_string() })
        }
        Delta::OwnershipTransferred { from, to } => {
            PbDelta::OwnershipTransferred(pb::OwnershipTransferred {
                previous_owner_user_id: from.to_string(),
                new_owner_user_id: to.to_string(),
            })
        }
    }
}

fn snapshot_response(page: SnapshotPage) -> pb::SnapshotResponse {
    let (revision, token) = match page.end {
        Some((revision, token)) => (i64::try_from(revision.0).unwrap_or(i64::MAX), token.encode()),
        None => (0, String::new()),
    };
    pb::SnapshotResponse {
        members: page.members.into_iter().map(convert::member).collect(),
        workspaces: page.workspaces.into_iter().map(convert::workspace).collect(),
        grants: page.grants.into_iter().map(convert::grant).collect(),
        token,
        revision,
    }
}
